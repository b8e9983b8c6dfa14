"""The GPU peer, measured in the same run as spotinfer: sentence-transformers `encode()` in-process
on the same corpus, FP16 (or BF16) on CUDA, at several batch sizes (encode sorts texts by length
itself).

usage: peer_st.py MODEL_DIR CORPUS_JSONL MAX_SEQ_LENGTH [--dtype float16|bfloat16]
                  [--batch-sizes 32,128,512] [--repeats 2] [--device cuda]
                  [--dump N FILE]                 ->  one JSON object on stdout

--dump N FILE writes the peer's vectors of the first N corpus texts to FILE (JSON: a list of
lists, unnormalised unless the model's own modules normalise), so the caller can compare them
with spotinfer's vectors of the same texts (cosine).
"""
import argparse
import json
import time

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

p = argparse.ArgumentParser()
p.add_argument("model_dir")
p.add_argument("corpus")
p.add_argument("max_seq_length", type=int)
p.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
p.add_argument("--batch-sizes", default="32,128,512")
p.add_argument("--repeats", type=int, default=2)
p.add_argument("--device", default="cuda")
p.add_argument("--dump", nargs=2, metavar=("N", "FILE"))
args = p.parse_args()

texts = [json.loads(line)["text"] for line in open(args.corpus) if line.strip()]
model = SentenceTransformer(args.model_dir, device=args.device)
# model.half() for float16, as before; .to(dtype) is the same for bfloat16 (Qwen3 overflows in FP16).
model.to(DTYPES[args.dtype])
model.max_seq_length = args.max_seq_length
cuda = args.device.startswith("cuda")


def sync():
    if cuda:
        torch.cuda.synchronize()


result = {
    "peer": f"sentence-transformers encode(), {args.dtype}, in-process",
    "sentence_transformers": sentence_transformers.__version__,
    "torch": torch.__version__,
    "dtype": args.dtype,
    "device": args.device,
    "texts": len(texts),
    "max_seq_length": args.max_seq_length,
    "runs": [],
}
try:
    import transformers

    result["transformers"] = transformers.__version__
except ImportError:
    pass
if args.dump:
    n, path = int(args.dump[0]), args.dump[1]
    vecs = model.encode(texts[:n], batch_size=64, convert_to_numpy=True)
    with open(path, "w") as f:
        json.dump([[float(x) for x in v] for v in vecs], f)
    result["dumped"] = {"texts": len(vecs), "file": path}
for batch_size in [int(b) for b in args.batch_sizes.split(",") if b]:
    model.encode(texts[:1024], batch_size=batch_size)  # warm-up: kernels, allocator, tokenizer
    sync()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
        sync()
        times.append(time.perf_counter() - t0)
    best = min(times)
    result["runs"].append({"batch_size": batch_size, "seconds": [round(t, 3) for t in times],
                           "sentences_per_s": round(len(texts) / best, 1)})
if cuda:
    result["max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
result["best_sentences_per_s"] = max(r["sentences_per_s"] for r in result["runs"])
print(json.dumps(result))
