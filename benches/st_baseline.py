"""The peer in the same run: sentence-transformers encode() in-process on the same corpus.

Usage: python st_baseline.py MODEL_DIR CORPUS_JSONL
Prints one JSON object: sentences/s with encode(batch_size=32), and the FP32 GEMM rate torch
reaches on this machine (a [4096 x 1024] x [1024 x 1024] product); cpu_seconds is the process's
CPU time (all threads) over the timed encode.
"""
import json
import os
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

model_dir, corpus_path = sys.argv[1], sys.argv[2]
threads = os.cpu_count() or 1
torch.set_num_threads(threads)
texts = [json.loads(line)["text"] for line in open(corpus_path)]

def gemm_gflops(dtype):
    """torch's own GEMM rate at this dtype (bfloat16: would a narrower peer be faster here?)."""
    a, b = torch.randn(4096, 1024).to(dtype), torch.randn(1024, 1024).to(dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    return 2 * 4096 * 1024 * 1024 * 10 / (time.perf_counter() - t) / 1e9


gemm = gemm_gflops(torch.float32)
gemm_bf16 = gemm_gflops(torch.bfloat16)

model = SentenceTransformer(model_dir, device="cpu")
model.encode(texts[:64], batch_size=32)
t, cpu = time.perf_counter(), time.process_time()
model.encode(texts, batch_size=32)
seconds = time.perf_counter() - t
cpu_seconds = time.process_time() - cpu
print(json.dumps({
    "sentences_per_s": len(texts) / seconds,
    "seconds": seconds,
    "cpu_seconds": cpu_seconds,
    "texts": len(texts),
    "torch_gemm_gflops": gemm,
    "torch_gemm_gflops_bfloat16": gemm_bf16,
    "torch": torch.__version__,
    "threads": threads,
}))
