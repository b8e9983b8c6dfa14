"""A BERT-large-shaped model (24 layers, hidden 1024, 16 heads, 335 M parameters) with random
weights, stored as F16, with MiniLM's tokenizer files: the GPU scripts' heavy model.

usage: make_bert_large.py OUT_DIR MINILM_DIR
"""
import shutil
import sys

import torch
from transformers import BertConfig, BertModel

out, minilm = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
cfg = BertConfig(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                 intermediate_size=4096, max_position_embeddings=512)
BertModel(cfg).half().save_pretrained(out, safe_serialization=True)
for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]:
    try:
        shutil.copy(f"{minilm}/{f}", out)
    except FileNotFoundError:
        pass
print("bert-large-random written")
