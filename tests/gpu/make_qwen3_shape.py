"""A Qwen3-Embedding-0.6B-shaped model with random weights, stored as BF16: hidden 1024, 28 layers,
16 query / 8 kv heads, head_dim 128 (q_proj 1024 -> 2048), intermediate 3072, vocab 151669,
per-head q/k RMSNorm, RoPE theta 1e6, tied embeddings. The GPU scripts' decoder model.

No network on the GPU machine, so the tokenizer is tests/fixtures/tiny-qwen3's (a small BPE with
the Qwen special tokens at 1000-1002, appending <|endoftext|>); every id it makes is < 1003, well
inside the 151669 rows. Texts therefore tokenise into more (shorter) tokens than with the real
Qwen tokenizer; both spotinfer and the peer get the very same ids.

Laid out like the Hub's Qwen3-Embedding checkpoints (and tiny-qwen3): config.json says
Qwen3ForCausalLM, the weights are a bare Qwen3Model (no `model.` prefix, no lm_head), and the
sentence-transformers files (modules.json, 1_Pooling with last-token pooling, 2_Normalize,
sentence_bert_config.json) make SentenceTransformer(OUT_DIR) load the SAME random weights.

usage: make_qwen3_shape.py OUT_DIR [--layers 28] [--vocab 151669] [--max-seq-length 512]
                           [--device cuda|cpu] [--seed 0]
"""
import argparse
import json
import os
import shutil
import sys
import time

import torch
from transformers import Qwen3Config, Qwen3Model

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "fixtures", "tiny-qwen3")

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--layers", type=int, default=28)
p.add_argument("--vocab", type=int, default=151669)
p.add_argument("--max-seq-length", type=int, default=512)
p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--tiny", default=TINY, help="folder whose tokenizer and ST files are copied")
args = p.parse_args()
t0 = time.time()

# The tiny fixture's config (either config form loads), resized to the 0.6B shape.
cfg = Qwen3Config.from_pretrained(args.tiny)
shape = dict(hidden_size=1024, num_hidden_layers=args.layers, num_attention_heads=16,
             num_key_value_heads=8, head_dim=128, intermediate_size=3072, vocab_size=args.vocab,
             max_position_embeddings=32768, max_window_layers=args.layers,
             tie_word_embeddings=True, rms_norm_eps=1e-6, use_sliding_window=False,
             sliding_window=None)
for k, v in shape.items():
    setattr(cfg, k, v)
cfg.layer_types = ["full_attention"] * args.layers
with open(os.path.join(args.tiny, "tokenizer.json")) as f:
    tok = json.load(f)
ids = list(tok["model"]["vocab"].values()) + [t["id"] for t in tok.get("added_tokens", [])]
if max(ids) >= args.vocab:
    sys.exit(f"--vocab {args.vocab} does not cover the tokenizer's ids (max {max(ids)})")

torch.manual_seed(args.seed)
with torch.device(args.device):
    model = Qwen3Model(cfg)
model = model.to(torch.bfloat16).eval()
params = sum(t.numel() for t in model.parameters())
os.makedirs(args.out, exist_ok=True)
model.save_pretrained(args.out)
del model

# Hub layout of Qwen3-Embedding: the config names the causal LM, the weights are the bare model.
path = os.path.join(args.out, "config.json")
with open(path) as f:
    c = json.load(f)
c["architectures"] = ["Qwen3ForCausalLM"]
with open(path, "w") as f:
    json.dump(c, f, indent=2)

for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "config_sentence_transformers.json", "modules.json"]:
    src = os.path.join(args.tiny, name)
    if os.path.exists(src):
        shutil.copy(src, args.out)
for sub in ["1_Pooling", "2_Normalize"]:
    src = os.path.join(args.tiny, sub)
    if os.path.isdir(src):
        shutil.copytree(src, os.path.join(args.out, sub), dirs_exist_ok=True)
pool = os.path.join(args.out, "1_Pooling", "config.json")
with open(pool) as f:
    pc = json.load(f)
assert pc.get("pooling_mode_lasttoken") is True, pc
pc["word_embedding_dimension"] = 1024
with open(pool, "w") as f:
    json.dump(pc, f, indent=2)
with open(os.path.join(args.out, "sentence_bert_config.json"), "w") as f:
    json.dump({"max_seq_length": args.max_seq_length, "do_lower_case": False}, f, indent=2)
with open(os.path.join(args.out, "modules.json")) as f:
    kinds = [m["type"].rsplit(".", 1)[-1] for m in json.load(f)]
print(json.dumps({"written": args.out, "parameters": params, "layers": args.layers,
                  "vocab": args.vocab, "device": args.device, "modules": kinds,
                  "seconds": round(time.time() - t0, 1)}))
