"""The HTTP peer: sentence-transformers behind a small micro-batching HTTP server, so that
`spotinfer bench --url ...` drives it exactly as it drives `spotinfer serve`.

Usage: python st_http_peer.py MODEL_DIR PORT [MAX_BATCH]

Listens on 127.0.0.1:PORT only (stdlib ThreadingHTTPServer, HTTP/1.1 keep-alive). One worker
thread owns the model: it takes every request queued at that moment, up to MAX_BATCH texts
(default 32, encode's batch size), runs one `encode(texts, batch_size=MAX_BATCH)` over them
and answers each request. While it computes, new requests queue up for the next batch: the
same dynamic batching a TEI-style server does, with torch using every core.

Routes, the subset `spotinfer bench` uses:
  GET  /info            {"max_input_length": ...}
  POST /tokenize        {"inputs": [...]} -> [[id, ...], ...] (truncated at max_seq_length)
  POST /v1/embeddings   {"input": str | [str]} -> OpenAI shape, with usage.prompt_tokens
  POST /embed           {"inputs": str | [str]} -> [[float, ...], ...] (TEI shape)
  GET  /health, /ready  200
Anything else is 404 (so /metrics gauges are simply absent).
"""
import json
import os
import queue
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from sentence_transformers import SentenceTransformer

model_dir, port = sys.argv[1], int(sys.argv[2])
max_batch = int(sys.argv[3]) if len(sys.argv) > 3 else 32
torch.set_num_threads(os.cpu_count() or 1)
model = SentenceTransformer(model_dir, device="cpu")
max_len = model.max_seq_length
tokenizer = model.tokenizer
# Warm up the shapes once before serving.
model.encode(["warm up"] * 4, batch_size=max_batch)

jobs = queue.Queue()
# The fast tokenizer must not be used from two threads at once ("Already borrowed"): the worker
# holds this lock over each batch (encode, token counts) and /tokenize takes it too.
model_lock = threading.Lock()


class Job:
    __slots__ = ("texts", "done", "vectors", "tokens", "error")

    def __init__(self, texts):
        self.texts = texts
        self.done = threading.Event()
        self.vectors = None
        self.tokens = 0
        self.error = None


def worker():
    while True:
        batch = [jobs.get()]
        n = len(batch[0].texts)
        while n < max_batch:
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                break
            batch.append(job)
            n += len(job.texts)
        texts = [t for job in batch for t in job.texts]
        try:
            with model_lock:
                vectors = model.encode(texts, batch_size=max_batch, convert_to_numpy=True)
                counts = [len(ids) for ids in token_ids(texts)]
            i = 0
            for job in batch:
                job.vectors = vectors[i : i + len(job.texts)].tolist()
                job.tokens = sum(counts[i : i + len(job.texts)])
                i += len(job.texts)
        except Exception as e:  # answered as a 500 to every request of the batch
            for job in batch:
                job.error = repr(e)
        for job in batch:
            job.done.set()


def token_ids(texts):
    return tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/info":
            self.reply(200, {"model_id": model_dir, "max_input_length": max_len,
                             "backend": "sentence-transformers " + torch.__version__,
                             "max_batch": max_batch})
        elif self.path in ("/health", "/ready"):
            self.reply(200, {})
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.reply(400, {"error": "bad json"})
            return
        if self.path == "/tokenize":
            texts = body.get("inputs")
            texts = [texts] if isinstance(texts, str) else texts
            with model_lock:
                ids = token_ids(texts)
            self.reply(200, ids)
            return
        if self.path not in ("/v1/embeddings", "/embed"):
            self.reply(404, {"error": "not found"})
            return
        texts = body.get("input" if self.path == "/v1/embeddings" else "inputs")
        texts = [texts] if isinstance(texts, str) else texts
        if not texts or not all(isinstance(t, str) for t in texts):
            self.reply(422, {"error": "input must be text"})
            return
        job = Job(texts)
        jobs.put(job)
        job.done.wait()
        if job.error:
            self.reply(500, {"error": job.error})
        elif self.path == "/embed":
            self.reply(200, job.vectors)
        else:
            tokens = job.tokens
            self.reply(200, {
                "object": "list",
                "model": model_dir,
                "data": [{"object": "embedding", "index": i, "embedding": v}
                         for i, v in enumerate(job.vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            })


threading.Thread(target=worker, daemon=True).start()
ThreadingHTTPServer.request_queue_size = 256  # listen backlog: 32+ clients connect at once
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
print(f"listening on http://127.0.0.1:{port}", flush=True)
server.serve_forever()
