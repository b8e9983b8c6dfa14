"""The GPU peer, measured in the same run as spotinfer: sentence-transformers `encode()` in-process
on the same corpus, FP16 on CUDA, at several batch sizes (encode sorts texts by length itself).

usage: peer_st.py MODEL_DIR CORPUS_JSONL MAX_SEQ_LENGTH  ->  one JSON object on stdout
"""
import json
import sys
import time

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

model_dir, corpus_path, max_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = [json.loads(line)["text"] for line in open(corpus_path) if line.strip()]
model = SentenceTransformer(model_dir, device="cuda")
model.half()
model.max_seq_length = max_len
result = {
    "peer": "sentence-transformers encode(), fp16, in-process",
    "sentence_transformers": sentence_transformers.__version__,
    "torch": torch.__version__,
    "texts": len(texts),
    "max_seq_length": max_len,
    "runs": [],
}
for batch_size in (32, 128, 512):
    model.encode(texts[:1024], batch_size=batch_size)  # warm-up: kernels, allocator, tokenizer
    torch.cuda.synchronize()
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    best = min(times)
    result["runs"].append({"batch_size": batch_size, "seconds": [round(t, 3) for t in times],
                           "sentences_per_s": round(len(texts) / best, 1)})
result["best_sentences_per_s"] = max(r["sentences_per_s"] for r in result["runs"])
print(json.dumps(result))
