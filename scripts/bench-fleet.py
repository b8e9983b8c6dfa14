#!/usr/bin/env python3
"""One batch job on 1 vs N replicas sharing a job store: the fleet speed-up (docs/BENCHMARKS.md).

The device workers are slowed by a fixed delay per device batch (--test-batch-delay-ms) and
device batches are capped (--max-batch-requests), so each replica is bound by that delay, not by
the CPU cores the replicas share: the figure measures how the job spreads over replicas
(segments, leases, assembly), as it would over GPU pods. Standard library only.

The store is a local folder, or (`--store s3`, or `s3:N` in --replicas) a bucket on moto's S3
server on loopback (the venv of scripts/make-s3-venv.sh), one fresh server per run; its request
log gives the requests the job made to S3, by kind, from the job's creation to its completion.

  scripts/bench-fleet.py [--binary target/debug/spotinfer] [--replicas 1,3] [--lines 6000]
  scripts/bench-fleet.py --replicas dir:1,s3:1,s3:3 --lines 100000 --segment-lines 2000 ...
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
import threading
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def request(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


class S3Server:
    """moto's S3 server on a free loopback port with one bucket; counts the requests it logs."""

    LOG = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/[\d.]+" (\d+)')

    def __init__(self):
        python = subprocess.run(["bash", os.path.join(ROOT, "scripts/make-s3-venv.sh")],
                                check=True, capture_output=True, text=True).stdout.split()[-1]
        self.proc = subprocess.Popen([python, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lock = threading.Lock()
        self.counts = {}
        for line in self.proc.stderr:
            m = re.search(r"Running on (http://\S+)", line)
            if m:
                self.endpoint = m.group(1)
                break
        else:
            sys.exit("moto's S3 server exited before listening")
        threading.Thread(target=self._read, daemon=True).start()
        self.bucket = "bench"
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT"),
                               timeout=60)

    def _read(self):
        for line in self.proc.stderr:
            m = self.LOG.search(line)
            if not m:
                continue
            verb, path = m.group(1), m.group(2)
            kind = "LIST" if verb == "GET" and "list-type=" in path else verb
            with self.lock:
                self.counts[kind] = self.counts.get(kind, 0) + 1

    def snapshot(self):
        with self.lock:
            return dict(self.counts)

    def env(self):
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_REGION": "us-east-1"}

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def start(args, state, env=None):
    cmd = [args.binary, "serve", "--hostname", "127.0.0.1", "--port", "0",
           "--prometheus-port", "0", "--model-id", args.model, "--state-dir", state,
           "--batch-segment-lines", str(args.segment_lines),
           "--batch-chunk-lines", str(args.chunk_lines),
           "--batch-backlog-interval", str(args.backlog_interval), "--drain-delay", "0",
           "--max-batch-requests", str(args.max_batch_requests),
           "--test-batch-delay-ms", str(args.delay_ms)]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                         env={**os.environ, "RUST_LOG": "warn,spotinfer=info", **(env or {})})
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


def run(args, store, replicas, input_path):
    local = tempfile.mkdtemp(prefix="spotinfer-bench-fleet-")
    s3 = S3Server() if store == "s3" else None
    state = f"s3://{s3.bucket}/fleet" if s3 else local
    procs = []
    try:
        for _ in range(replicas):
            procs.append(start(args, state, s3.env() if s3 else None))
        base = procs[0][1]
        file_id = upload(base, input_path)
        before = s3.snapshot() if s3 else {}
        t0 = time.time()
        job = request("POST", base + "/v1/batches",
                      json.dumps({"input_file_id": file_id, "endpoint": "/v1/embeddings",
                                  "completion_window": "24h"}).encode(),
                      {"Content-Type": "application/json"})
        while job["status"] not in ("completed", "failed", "cancelled"):
            time.sleep(args.poll)
            job = request("GET", f"{base}/v1/batches/{job['id']}")
        secs = time.time() - t0
        after = s3.snapshot() if s3 else {}
        assert job["status"] == "completed", job
        assert job["request_counts"]["completed"] == args.lines, job
        per_replica = []
        for _, b in procs:
            text = urllib.request.urlopen(b + "/metrics", timeout=10).read().decode()
            m = re.search(r'^inference_batch_lines_total\{outcome="succeeded"\} (\S+)', text, re.M)
            per_replica.append(int(float(m.group(1))) if m else 0)
        kilo = args.lines / 1000
        requests = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after)}
        requests = {k: v for k, v in requests.items() if v}
        return {"store": store, "replicas": replicas, "seconds": round(secs, 2),
                "lines_per_second": round(args.lines / secs, 1),
                "seconds_per_1000_lines": round(secs / kilo, 3),
                "s3_requests": requests or None,
                "s3_requests_per_1000_lines": round(sum(requests.values()) / kilo, 1) if s3 else None,
                "lines_per_replica": per_replica,
                "device_seconds": float(job["metadata"]["spotinfer_device_seconds"])}
    finally:
        for p, _ in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        if s3:
            s3.stop()
        shutil.rmtree(local, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/debug/spotinfer"))
    ap.add_argument("--model", default=os.path.join(ROOT, "tests/fixtures/tiny-bert"))
    ap.add_argument("--replicas", default="1,3",
                    help="runs: replica counts, each N or STORE:N (dir or s3)")
    ap.add_argument("--store", choices=["dir", "s3"], default="dir",
                    help="the store of runs given as a bare N")
    ap.add_argument("--backlog-interval", type=float, default=0.5,
                    help="--batch-backlog-interval: each replica's coordinator tick (one listing)")
    ap.add_argument("--poll", type=float, default=0.05,
                    help="seconds between polls of the job (each poll reads the store)")
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
    runs = []
    for spec in args.replicas.split(","):
        store, _, n = spec.rpartition(":")
        runs.append((store or args.store, int(n)))
    results = []
    for store, n in runs:
        results.append(run(args, store, n, path))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    # Speed-up against the first single-replica run on the same store.
    ones = {}
    for r in results:
        if r["replicas"] == 1:
            ones.setdefault(r["store"], r["seconds"])
    print(f"{'store':>5} {'replicas':>8} {'seconds':>8} {'lines/s':>8} {'s/1k':>6} "
          f"{'speed-up':>8} {'S3 req/1k':>9}  lines per replica; S3 requests")
    for r in results:
        base = ones.get(r["store"], results[0]["seconds"])
        r["speedup"] = round(base / r["seconds"], 2)
        per_k = r["s3_requests_per_1000_lines"]
        print(f"{r['store']:>5} {r['replicas']:>8} {r['seconds']:>8} {r['lines_per_second']:>8} "
              f"{r['seconds_per_1000_lines']:>6} {r['speedup']:>7}x "
              f"{per_k if per_k is not None else '-':>9}  {r['lines_per_replica']}"
              f"{'; ' + str(r['s3_requests']) if r['s3_requests'] else ''}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
