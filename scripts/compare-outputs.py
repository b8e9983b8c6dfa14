#!/usr/bin/env python3
"""Are two spotinfer binaries' answers bit-identical on every test fixture?

    python3 scripts/compare-outputs.py BEFORE_BINARY AFTER_BINARY [fixture ...]

Serves each model under tests/fixtures/ (or the ones named) with each binary, on both CPU
backends (native and reference), reads /info and asks every route a fixture may answer
(/embed, /embed_all, /predict, /rerank, /embed_sparse) the same inputs, and compares the response bodies byte for
byte. JSON floats are printed as the shortest text that reads back to the same f32, so equal
text is equal bits. Exits 1 when any answer differs. For refactors that must not change a
number: build the binary before and after the change (copy it aside) and run this.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["Hello world", "A somewhat longer sentence about spot instances and GPUs.", "x"]
REQUESTS = [
    ("/info", None),
    ("/embed", {"inputs": TEXTS}),
    ("/embed_all", {"inputs": TEXTS[:2]}),
    ("/predict", {"inputs": TEXTS}),
    ("/rerank", {"query": "gpu", "texts": TEXTS, "raw_scores": True}),
    ("/embed_sparse", {"inputs": TEXTS}),
]
# `candle` is the reference backend's older name; both old and new binaries accept it.
BACKENDS = ["native", "candle"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).read()


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        json.dumps(body).encode(),
        {"content-type": "application/json"},
    )
    try:
        return urllib.request.urlopen(req, timeout=60).read().decode()
    except urllib.error.HTTPError as e:
        # A route the model does not serve answers an error; that answer is compared too.
        return f"HTTP {e.code} {e.read().decode()}"


def answers(binary, fixture, backend):
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        proc = subprocess.Popen(
            [binary, "serve", "--model-id", os.path.join(ROOT, "tests/fixtures", fixture),
             "--hostname", "127.0.0.1", "--port", str(port), "--prometheus-port", "0",
             "--cpu-backend", backend, "--state-dir", state],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    return {"start": proc.stderr.read().decode()[-2000:]}
                try:
                    get(port, "/ready")
                    break
                except (urllib.error.URLError, ConnectionError, OSError):
                    if time.monotonic() > deadline:
                        return {"start": "not ready within 120 s"}
                    time.sleep(0.1)
            return {path: post(port, path, body) if body is not None else get(port, path).decode()
                    for path, body in REQUESTS}
        finally:
            proc.terminate()
            proc.wait()


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    before, after = sys.argv[1], sys.argv[2]
    fixtures = sys.argv[3:] or sorted(
        d for d in os.listdir(os.path.join(ROOT, "tests/fixtures"))
        if os.path.isfile(os.path.join(ROOT, "tests/fixtures", d, "config.json")))
    differing = 0
    for fixture in fixtures:
        for backend in BACKENDS:
            a, b = answers(before, fixture, backend), answers(after, fixture, backend)
            served = [p for p, v in a.items()
                      if p.startswith("/") and p != "/info" and not v.startswith("HTTP")]
            print(f"{fixture:28} {backend:7} {'identical' if a == b else 'DIFFERENT'}  "
                  f"answered: {', '.join(served) or 'nothing'}")
            if a != b:
                differing += 1
                for k in sorted(set(a) | set(b)):
                    if a.get(k) != b.get(k):
                        print(f"    {k}: {a.get(k, '')[:160]!r}\n    {' ' * len(k)}  {b.get(k, '')[:160]!r}")
    print(f"{differing} of {len(fixtures) * len(BACKENDS)} fixture x backend runs differ")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
