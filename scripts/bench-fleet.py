#!/usr/bin/env python3
"""One batch job on 1 vs N replicas sharing a state dir: the fleet speed-up (docs/BENCHMARKS.md).

The device workers are slowed by a fixed delay per device batch (--test-batch-delay-ms) and
device batches are capped (--max-batch-requests), so each replica is bound by that delay, not by
the CPU cores the replicas share: the figure measures how the job spreads over replicas
(segments, leases, assembly), as it would over GPU pods. Standard library only.

  scripts/bench-fleet.py [--binary target/debug/spotinfer] [--replicas 1,3] [--lines 6000]
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def request(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def start(args, state):
    cmd = [args.binary, "serve", "--hostname", "127.0.0.1", "--port", "0",
           "--prometheus-port", "0", "--model-id", args.model, "--state-dir", state,
           "--batch-segment-lines", str(args.segment_lines),
           "--batch-chunk-lines", str(args.chunk_lines),
           "--batch-backlog-interval", "0.5", "--drain-delay", "0",
           "--max-batch-requests", str(args.max_batch_requests),
           "--test-batch-delay-ms", str(args.delay_ms)]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                         env={**os.environ, "RUST_LOG": "warn,spotinfer=info"})
    for line in p.stderr:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            base = m.group(1)
            break
    else:
        sys.exit("a replica exited before listening")
    # Keep draining its log so it never blocks on a full pipe.
    subprocess.Popen(["cat"], stdin=p.stderr, stdout=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "/ready", timeout=2)
            return p, base
        except Exception:
            time.sleep(0.1)
    sys.exit("a replica never became ready")


def upload(base, path):
    boundary = uuid.uuid4().hex
    data = open(path, "rb").read()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return request("POST", base + "/v1/files", body,
                   {"Content-Type": f"multipart/form-data; boundary={boundary}"})["id"]


def run(args, replicas, input_path):
    state = tempfile.mkdtemp(prefix="spotinfer-bench-fleet-")
    procs = []
    try:
        for _ in range(replicas):
            procs.append(start(args, state))
        base = procs[0][1]
        file_id = upload(base, input_path)
        t0 = time.time()
        job = request("POST", base + "/v1/batches",
                      json.dumps({"input_file_id": file_id, "endpoint": "/v1/embeddings",
                                  "completion_window": "24h"}).encode(),
                      {"Content-Type": "application/json"})
        while job["status"] not in ("completed", "failed", "cancelled"):
            time.sleep(0.05)
            job = request("GET", f"{base}/v1/batches/{job['id']}")
        secs = time.time() - t0
        assert job["status"] == "completed", job
        assert job["request_counts"]["completed"] == args.lines, job
        per_replica = []
        for _, b in procs:
            text = urllib.request.urlopen(b + "/metrics", timeout=10).read().decode()
            m = re.search(r'^inference_batch_lines_total\{outcome="succeeded"\} (\S+)', text, re.M)
            per_replica.append(int(float(m.group(1))) if m else 0)
        return {"replicas": replicas, "seconds": round(secs, 2),
                "lines_per_second": round(args.lines / secs, 1), "lines_per_replica": per_replica,
                "device_seconds": float(job["metadata"]["spotinfer_device_seconds"])}
    finally:
        for p, _ in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        shutil.rmtree(state, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/debug/spotinfer"))
    ap.add_argument("--model", default=os.path.join(ROOT, "tests/fixtures/tiny-bert"))
    ap.add_argument("--replicas", default="1,3")
    ap.add_argument("--lines", type=int, default=6000)
    ap.add_argument("--segment-lines", type=int, default=200)
    ap.add_argument("--chunk-lines", type=int, default=16)
    ap.add_argument("--delay-ms", type=int, default=40)
    ap.add_argument("--max-batch-requests", type=int, default=8)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="spotinfer-bench-input-")
    path = os.path.join(tmp, "in.jsonl")
    with open(path, "w") as f:
        for i in range(args.lines):
            f.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/embeddings",
                                "body": {"input": f"Benchmark line {i}: a note on spot capacity {i * 7 % 101}."}}) + "\n")
    results = [run(args, int(n), path) for n in args.replicas.split(",")]
    shutil.rmtree(tmp, ignore_errors=True)
    base = results[0]["seconds"]
    print(f"{'replicas':>8} {'seconds':>8} {'lines/s':>8} {'speed-up':>8}  lines per replica")
    for r in results:
        r["speedup"] = round(base / r["seconds"], 2)
        print(f"{r['replicas']:>8} {r['seconds']:>8} {r['lines_per_second']:>8} "
              f"{r['speedup']:>7}x  {r['lines_per_replica']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
