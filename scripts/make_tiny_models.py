#!/usr/bin/env python3
"""Build the tiny random-weight model fixtures under tests/fixtures/<name>/ (one Hugging Face
hub-style folder each) plus their reference.json, for every model family spotinfer serves.

    VENV="$(scripts/make-fixture-venv.sh | tail -n1)"
    "$VENV/bin/python" scripts/make_tiny_models.py            # all fixtures
    "$VENV/bin/python" scripts/make_tiny_models.py --only tiny-qwen3 tiny-gte

Deterministic: fixed seeds, tokenizers built from a fixed corpus (scripts/tiny_corpus.py) with
deterministic training (scripts/tiny_tokenizers.py), fixed JSON formatting. Running it twice
gives byte-identical folders (for the same pinned package versions).

Each fixture is staged in a temp folder, then loaded BACK from disk (transformers /
sentence-transformers, HF_HUB_OFFLINE=1, or the hand-written forwards for the remote-code
families) to compute reference.json (scripts/tiny_compute.py), float64, eager attention, each
input alone; float32 is computed too and its max deviation recorded. See tests/fixtures/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_models_lib as L  # noqa: E402  (sets HF_HUB_OFFLINE before transformers is imported)

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import tiny_compute as C  # noqa: E402
import tiny_tokenizers as T  # noqa: E402
from tiny_corpus import PAIRS, TEXTS  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
BASE_SEED = 20250601
MAX_LEN = 128
SIZE_LIMIT = 700_000

QWEN_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
RERANK_TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
RERANK_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


# fixtures whose config.json transformers 5 serializes differently (RoPE: rope_parameters, layer_types)
TF5_CONFIG_FIXTURES = {"tiny-modernbert", "tiny-modernbert-reranker", "tiny-qwen3", "tiny-qwen2", "tiny-mistral",
                       "tiny-llama", "tiny-gemma3", "tiny-qwen3-reranker"}


def tf5_python() -> str:
    """The transformers-5 side venv's python (scripts/make-fixture-venv.sh builds <venv>-tf5)."""
    cand = os.environ.get("TF5_PYTHON") or str(Path(sys.prefix + "-tf5") / "bin" / "python")
    if not Path(cand).exists():
        raise SystemExit(f"transformers-5 python not found at {cand}: build the venv with scripts/make-fixture-venv.sh "
                         "(it creates <venv>-tf5) or set TF5_PYTHON")
    return cand


def write_tf5_config(stage: Path) -> None:
    subprocess.run([tf5_python(), str(Path(__file__).resolve().parent / "tf5_config.py"), str(stage)], check=True)


# ======================================================================================
# small helpers
# ======================================================================================
def gen_for(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(BASE_SEED + zlib.crc32(name.encode()) % 100_000)


def text_items():
    return [{"id": i, "text": t} for i, t in TEXTS]


def pair_items():
    return [{"id": i, "text": q, "text_pair": d} for i, q, d in PAIRS]


def save_tokenizer(stage: Path, tok, tok_config: dict, max_len: int = MAX_LEN) -> None:
    tok.save(str(stage / "tokenizer.json"))
    L.write_json(stage / "tokenizer_config.json", {**tok_config, "model_max_length": max_len})


def save_hf(model, stage: Path, **config_overrides) -> None:
    model.save_pretrained(str(stage), safe_serialization=True)
    if config_overrides:
        patch_config(stage, **config_overrides)


def patch_config(stage: Path, **changes) -> None:
    p = stage / "config.json"
    cfg = json.loads(p.read_text())
    for k, v in changes.items():
        if v is None and k.startswith("-"):
            cfg.pop(k[1:], None)
        else:
            cfg[k] = v
    L.write_json(p, dict(sorted(cfg.items())))


def bert_tok_config(ids, cls="BertTokenizer"):
    return {"tokenizer_class": cls, "do_lower_case": True, "tokenize_chinese_chars": True, "strip_accents": None,
            "clean_up_tokenization_spaces": True, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
            "cls_token": "[CLS]", "mask_token": "[MASK]"}


def roberta_like_tok_config(cls):
    c = {"tokenizer_class": cls, "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
         "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>", "clean_up_tokenization_spaces": True}
    if cls == "RobertaTokenizer":
        c.update({"add_prefix_space": False, "trim_offsets": True, "errors": "replace"})
    if cls == "MPNetTokenizer":
        c.update({"do_lower_case": True, "tokenize_chinese_chars": True, "strip_accents": None})
    return c


def qwen_tok_config():
    # As Qwen3-Embedding: pad <|endoftext|>, eos_token <|im_end|>, left padding; the post-processor
    # (tokenizer.json) is what appends <|endoftext|>, not eos_token.
    return {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
            "unk_token": None, "padding_side": "left", "clean_up_tokenization_spaces": False, "errors": "replace",
            "split_special_tokens": False}


# ======================================================================================
# encoders
# ======================================================================================
def xlmr_config(tok, arch, **kw):
    return transformers.XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, hidden_act="gelu", max_position_embeddings=MAX_LEN + 2, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, architectures=[arch], **kw)


def build_xlm_roberta(name, stage):
    tok, ids = T.unigram_xlmr()
    model = transformers.XLMRobertaModel(xlmr_config(tok, "XLMRobertaModel"))
    L.randomize_(model, gen_for(name))
    save_hf(model, stage)
    save_tokenizer(stage, tok, roberta_like_tok_config("XLMRobertaTokenizer"))
    L.write_st_files(stage, [("Transformer", ""), ("Pooling", "1_Pooling")], MAX_LEN)
    L.write_pooling(stage / "1_Pooling", 32, "mean")
    return dict(family="xlm-roberta", architecture="XLMRobertaModel", task="embed", reference_kind="encoder",
                special_token_ids=ids, items=text_items(), pooling="mean", normalize=False,
                notes="RoBERTa position ids: padding_idx + 1 + cumulative count of non-pad tokens, i.e. 2, 3, ... "
                      "for an unpadded text (pad_token_id = 1). type_vocab_size = 1: every token uses token-type row 0. "
                      "Unigram + Metaspace tokenizer; the unicode text contains a character outside the vocab (-> <unk> = 3).")


def build_xlm_roberta_reranker(name, stage):
    tok, ids = T.unigram_xlmr()
    model = transformers.XLMRobertaForSequenceClassification(
        xlmr_config(tok, "XLMRobertaForSequenceClassification", num_labels=1, id2label={0: "LABEL_0"}, label2id={"LABEL_0": 0}))
    L.randomize_(model, gen_for(name))
    save_hf(model, stage)
    save_tokenizer(stage, tok, roberta_like_tok_config("XLMRobertaTokenizer"))
    return dict(family="xlm-roberta", architecture="XLMRobertaForSequenceClassification", task="rerank",
                reference_kind="seqcls", special_token_ids=ids, items=pair_items(), id2label={"0": "LABEL_0"},
                notes="bge-reranker shape: one label -> score = sigmoid(logit). Pair template <s> A </s></s> B </s>, "
                      "all token types 0. Head: classifier.dense -> tanh -> classifier.out_proj on token 0 (no pooler).")


def build_roberta_classifier(name, stage):
    tok, ids = T.bpe_roberta()
    id2label = {0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"}
    cfg = transformers.RobertaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_act="gelu", max_position_embeddings=MAX_LEN + 2, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, layer_norm_eps=1e-5, num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()},
        architectures=["RobertaForSequenceClassification"])
    model = transformers.RobertaForSequenceClassification(cfg)
    L.randomize_(model, gen_for(name))
    save_hf(model, stage)
    save_tokenizer(stage, tok, roberta_like_tok_config("RobertaTokenizer"))
    return dict(family="roberta", architecture="RobertaForSequenceClassification", task="classify",
                reference_kind="seqcls", special_token_ids=ids, items=text_items() + pair_items(),
                id2label={str(k): v for k, v in id2label.items()},
                notes="Byte-level BPE with RobertaProcessing (pair <s> A </s></s> B </s>). scores = softmax(logits). "
                      "Position ids start at 2 (pad_token_id 1).")


def distilbert_config(tok, ids, arch, **kw):
    return transformers.DistilBertConfig(
        vocab_size=tok.get_vocab_size(), dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=MAX_LEN,
        activation="gelu", sinusoidal_pos_embds=False, pad_token_id=ids["[PAD]"], architectures=[arch], **kw)


def build_distilbert(name, stage):
    tok, ids = T.wordpiece_bert()
    model = transformers.DistilBertModel(distilbert_config(tok, ids, "DistilBertModel"))
    L.randomize_(model, gen_for(name))
    save_hf(model, stage)
    save_tokenizer(stage, tok, bert_tok_config(ids, "DistilBertTokenizer"))
    L.write_st_files(stage, [("Transformer", ""), ("Pooling", "1_Pooling")], MAX_LEN)
    L.write_pooling(stage / "1_Pooling", 32, "mean")
    return dict(family="distilbert", architecture="DistilBertModel", task="embed", reference_kind="encoder",
                special_token_ids=ids, items=text_items(), pooling="mean", normalize=False,
                notes="No token types (the tokenizer still produces type ids for pairs; the model has no table for them). "
                      "Absolute learned positions from 0.")


def build_distilbert_classifier(name, stage):
    tok, ids = T.wordpiece_bert()
    id2label = {0: "NEGATIVE", 1: "POSITIVE"}
    model = transformers.DistilBertForSequenceClassification(distilbert_config(
        tok, ids, "DistilBertForSequenceClassification", num_labels=2, id2label=id2label,
        label2id={v: k for k, v in id2label.items()}))
    L.randomize_(model, gen_for(name))
    save_hf(model, stage)
    save_tokenizer(stage, tok, bert_tok_config(ids, "DistilBertTokenizer"))
    return dict(family="distilbert", architecture="DistilBertForSequenceClassification", task="classify",
                reference_kind="seqcls", special_token_ids=ids, items=text_items() + pair_items(),
                id2label={str(k): v for k, v in id2label.items()},
                notes="Head: pre_classifier -> ReLU -> classifier on token 0. scores = softmax(logits).")


def build_mpnet(name, stage):
    tok, ids = T.wordpiece_mpnet()
    cfg = transformers.MPNetConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_act="gelu", max_position_embeddings=MAX_LEN + 2, relative_attention_num_buckets=32, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, architectures=["MPNetModel"])
    model = transformers.MPNetModel(cfg)
    L.randomize_(model, gen_for(name))
    save_hf(model, stage)
    save_tokenizer(stage, tok, roberta_like_tok_config("MPNetTokenizer"))
    L.write_st_files(stage, [("Transformer", ""), ("Pooling", "1_Pooling"), ("Normalize", "2_Normalize")], MAX_LEN)
    L.write_pooling(stage / "1_Pooling", 32, "mean")
    return dict(family="mpnet", architecture="MPNetModel", task="embed", reference_kind="encoder",
                special_token_ids=ids, items=text_items(), pooling="mean", normalize=True,
                notes="all-mpnet-base-v2 shape: mean pooling + Normalize. Absolute positions start at padding_idx + 1 = 2; "
                      "relative position bias: 32 buckets, max distance 128, bidirectional T5 bucketing, computed once "
                      "(encoder.relative_attention_bias) and added in every layer.")


def modernbert_config(tok, ids, arch, **kw):
    return transformers.ModernBertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        hidden_activation="gelu", max_position_embeddings=512, norm_eps=1e-5, norm_bias=False,
        pad_token_id=ids["[PAD]"], eos_token_id=ids["[SEP]"], bos_token_id=ids["[CLS]"], cls_token_id=ids["[CLS]"],
        sep_token_id=ids["[SEP]"], global_rope_theta=160000.0, local_rope_theta=10000.0, global_attn_every_n_layers=2,
        local_attention=16, attention_bias=False, mlp_bias=False, classifier_bias=False, classifier_activation="gelu",
        architectures=[arch], **kw)


MODERNBERT_NOTES = (
    "3 layers, global_attn_every_n_layers=2: layers 0 and 2 global (RoPE base global_rope_theta=160000), layer 1 local "
    "(RoPE base local_rope_theta=10000) with local_attention=16: token i attends to j iff |i-j| <= 8. Pre-norm, "
    "LayerNorm without bias, no linear biases; layer 0 has no attn_norm; embeddings = tok_embeddings -> norm; "
    "final_norm at the end (last_hidden_state is after final_norm). GeGLU: Wi -> split(input | gate) -> gelu(input) * gate -> Wo. "
    "config.json is in the Hub form transformers 4.x writes (global_rope_theta / local_rope_theta / "
    "global_attn_every_n_layers / local_attention); transformers 5 would write rope_parameters / layer_types instead.")


def build_modernbert(name, stage):
    tok, ids = T.bpe_modernbert()
    model = transformers.ModernBertModel(modernbert_config(tok, ids, "ModernBertModel"))
    L.randomize_(model, gen_for(name))
    save_hf(model, stage)
    save_tokenizer(stage, tok, {"tokenizer_class": "PreTrainedTokenizerFast", "cls_token": "[CLS]", "sep_token": "[SEP]",
                                "pad_token": "[PAD]", "mask_token": "[MASK]", "unk_token": "[UNK]",
                                "clean_up_tokenization_spaces": True, "model_input_names": ["input_ids", "attention_mask"]})
    L.write_st_files(stage, [("Transformer", ""), ("Pooling", "1_Pooling")], MAX_LEN)
    L.write_pooling(stage / "1_Pooling", 32, "cls")
    return dict(family="modernbert", architecture="ModernBertModel", task="embed", reference_kind="encoder",
                special_token_ids=ids, items=text_items(), pooling="cls", normalize=False, notes=MODERNBERT_NOTES)


def build_modernbert_reranker(name, stage):
    tok, ids = T.bpe_modernbert()
    model = transformers.ModernBertForSequenceClassification(modernbert_config(
        tok, ids, "ModernBertForSequenceClassification", num_labels=1, id2label={0: "LABEL_0"}, label2id={"LABEL_0": 0},
        classifier_pooling="mean"))
    L.randomize_(model, gen_for(name))
    save_hf(model, stage)
    save_tokenizer(stage, tok, {"tokenizer_class": "PreTrainedTokenizerFast", "cls_token": "[CLS]", "sep_token": "[SEP]",
                                "pad_token": "[PAD]", "mask_token": "[MASK]", "unk_token": "[UNK]",
                                "clean_up_tokenization_spaces": True, "model_input_names": ["input_ids", "attention_mask"]})
    return dict(family="modernbert", architecture="ModernBertForSequenceClassification", task="rerank",
                reference_kind="seqcls", special_token_ids=ids, items=pair_items(), id2label={"0": "LABEL_0"},
                notes=MODERNBERT_NOTES + " Head (prefix model. for the backbone): classifier_pooling=mean (masked mean of "
                      "last_hidden_state) -> head.dense (no bias) -> gelu -> head.norm (no bias) -> classifier (with bias). "
                      "score = sigmoid(logit). Pair template [CLS] A [SEP] B [SEP].")


# --------------------------------------------------------------------------------------
def randn(gen, *shape, std=0.2):
    return std * torch.randn(shape, generator=gen)


def build_nomic(name, stage):
    tok, ids = T.wordpiece_bert()
    V, E, H, I, NL = 1024, 32, 4, 256, 2
    assert tok.get_vocab_size() <= V
    cfg = {
        "_name_or_path": "nomic-ai/nomic-bert-2048", "activation_function": "swiglu", "architectures": ["NomicBertModel"],
        "attn_pdrop": 0.0,
        "auto_map": {"AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
                     "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel",
                     "AutoModelForMaskedLM": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertForPreTraining"},
        "bos_token_id": None, "causal": False, "dense_seq_output": True, "embd_pdrop": 0.0, "eos_token_id": None,
        "fused_bias_fc": True, "fused_dropout_add_ln": True, "initializer_range": 0.02, "layer_norm_epsilon": 1e-12,
        "max_trained_positions": 2048, "mlp_fc1_bias": False, "mlp_fc2_bias": False, "model_type": "nomic_bert",
        "n_embd": E, "n_head": H, "n_inner": I, "n_layer": NL, "n_positions": 8192, "pad_vocab_size_multiple": 64,
        "parallel_block": False, "parallel_block_tied_norm": False, "prenorm": False, "qkv_proj_bias": False,
        "reorder_and_upcast_attn": False, "resid_pdrop": 0.0, "rotary_emb_base": 1000, "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False, "rotary_emb_scale_base": None, "rotary_scaling_factor": None,
        "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True, "summary_activation": None,
        "summary_first_dropout": 0.0, "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
        "torch_dtype": "float32", "transformers_version": "4.34.0", "type_vocab_size": 2, "use_cache": True,
        "use_flash_attn": True, "use_rms_norm": False, "use_xentropy": True, "vocab_size": V,
    }
    g = gen_for(name)
    sd = {"embeddings.word_embeddings.weight": randn(g, V, E), "embeddings.token_type_embeddings.weight": randn(g, 2, E),
          "emb_ln.weight": 1 + randn(g, E), "emb_ln.bias": randn(g, E, std=0.1)}
    for i in range(NL):
        p = f"encoder.layers.{i}."
        sd[p + "attn.Wqkv.weight"] = randn(g, 3 * E, E)
        sd[p + "attn.out_proj.weight"] = randn(g, E, E)
        sd[p + "mlp.fc11.weight"] = randn(g, I, E)
        sd[p + "mlp.fc12.weight"] = randn(g, I, E)
        sd[p + "mlp.fc2.weight"] = randn(g, E, I, std=0.1)
        for n in ("norm1", "norm2"):
            sd[p + n + ".weight"] = 1 + randn(g, E)
            sd[p + n + ".bias"] = randn(g, E, std=0.1)
    save_file({k: v.contiguous() for k, v in sorted(sd.items())}, str(stage / "model.safetensors"), metadata={"format": "pt"})
    L.write_json(stage / "config.json", cfg)
    save_tokenizer(stage, tok, bert_tok_config(ids))
    prompts = {"search_query": "search_query: ", "search_document": "search_document: ",
               "classification": "classification: ", "clustering": "clustering: "}
    L.write_st_files(stage, [("Transformer", ""), ("Pooling", "1_Pooling")], MAX_LEN, prompts=prompts)
    L.write_pooling(stage / "1_Pooling", E, "mean")
    items = text_items() + [
        {"id": "query_prompted", "text": "search_query: what is deep learning?", "prompt_name": "search_query",
         "text_without_prompt": "what is deep learning?"},
        {"id": "document_prompted", "text": "search_document: " + PAIRS[0][2], "prompt_name": "search_document",
         "text_without_prompt": PAIRS[0][2]},
    ]
    return dict(family="nomic_bert", architecture="NomicBertModel", task="embed", reference_kind="remote_code",
                uses_token_type_ids=True, special_token_ids=ids, items=items, pooling="mean", normalize=False,
                notes="Remote-code model (no transformers class): reference = hand-written forward (scripts/tiny_models_lib.py "
                      "nomic_forward). vocab_size 1024 (padded to pad_vocab_size_multiple 64) > tokenizer vocab. "
                      "n_inner 256 (the remote code rounds n_inner up to a multiple of 256). No position table: RoPE base "
                      "rotary_emb_base=1000, non-interleaved (rotate_half), positions 0.. ; token type row 0 added; emb_ln; "
                      "post-norm; SwiGLU fc2(fc11(x) * silu(fc12(x))); no linear biases. Prompt items: 'text' already "
                      "contains the prompt prefix (prompts in config_sentence_transformers.json).")


def build_gte(name, stage):
    tok, ids = T.wordpiece_bert()
    V, E, H, I, NL = 1024, 32, 4, 64, 2
    cfg = {
        "architectures": ["NewModel"], "attention_probs_dropout_prob": 0.0,
        "auto_map": {"AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig",
                     "AutoModel": "Alibaba-NLP/new-impl--modeling.NewModel",
                     "AutoModelForMaskedLM": "Alibaba-NLP/new-impl--modeling.NewForMaskedLM",
                     "AutoModelForSequenceClassification": "Alibaba-NLP/new-impl--modeling.NewForSequenceClassification"},
        "classifier_dropout": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": E,
        "initializer_range": 0.02, "intermediate_size": I, "layer_norm_eps": 1e-12, "layer_norm_type": "layer_norm",
        "logn_attention_clip1": False, "logn_attention_scale": False, "max_position_embeddings": 512, "model_type": "new",
        "num_attention_heads": H, "num_hidden_layers": NL, "pack_qkv": True, "pad_token_id": ids["[PAD]"],
        "position_embedding_type": "rope", "rope_scaling": {"factor": 2.0, "type": "ntk"}, "rope_theta": 160000,
        "torch_dtype": "float32", "transformers_version": "4.39.1", "type_vocab_size": 1, "unpad_inputs": False,
        "use_memory_efficient_attention": False, "vocab_size": V,
    }
    g = gen_for(name)
    sd = {"embeddings.word_embeddings.weight": randn(g, V, E), "embeddings.token_type_embeddings.weight": randn(g, 1, E),
          "embeddings.LayerNorm.weight": 1 + randn(g, E), "embeddings.LayerNorm.bias": randn(g, E, std=0.1)}
    for i in range(NL):
        p = f"encoder.layer.{i}."
        sd[p + "attention.qkv_proj.weight"] = randn(g, 3 * E, E)
        sd[p + "attention.qkv_proj.bias"] = randn(g, 3 * E, std=0.1)
        sd[p + "attention.o_proj.weight"] = randn(g, E, E)
        sd[p + "attention.o_proj.bias"] = randn(g, E, std=0.1)
        sd[p + "mlp.up_gate_proj.weight"] = randn(g, 2 * I, E)
        sd[p + "mlp.down_proj.weight"] = randn(g, E, I)
        sd[p + "mlp.down_proj.bias"] = randn(g, E, std=0.1)
        for n in ("attn_ln", "mlp_ln"):
            sd[p + n + ".weight"] = 1 + randn(g, E)
            sd[p + n + ".bias"] = randn(g, E, std=0.1)
    save_file({k: v.contiguous() for k, v in sorted(sd.items())}, str(stage / "model.safetensors"), metadata={"format": "pt"})
    L.write_json(stage / "config.json", cfg)
    save_tokenizer(stage, tok, bert_tok_config(ids))
    L.write_st_files(stage, [("Transformer", ""), ("Pooling", "1_Pooling")], MAX_LEN)
    L.write_pooling(stage / "1_Pooling", E, "cls")
    return dict(family="gte", architecture="NewModel", task="embed", reference_kind="remote_code",
                uses_token_type_ids=True, special_token_ids=ids, items=text_items(), pooling="cls", normalize=False,
                notes="Remote-code model (model_type 'new', no transformers class): reference = hand-written forward "
                      "(scripts/tiny_models_lib.py gte_forward). No name prefix (NewModel). Post-norm; fused qkv_proj WITH "
                      "bias split q|k|v; RoPE rotate_half with NTK scaling rope_scaling={type: ntk, factor: 2}: the remote "
                      "code builds its table for max_position_embeddings*factor > max_position_embeddings, so the scaling "
                      "ALWAYS applies: base = rope_theta * 2 = 320000 and inv_freq /= 2^(2/head_dim). type_vocab_size 1 "
                      "(row 0 added to every token); GLU MLP: up_gate_proj (no bias) -> split(up | gate) -> "
                      "down_proj(gelu_erf(gate) * up). CLS pooling. vocab_size 1024 > tokenizer vocab.")


def bert_config(tok, ids, arch, **kw):
    return transformers.BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_act="gelu", max_position_embeddings=MAX_LEN, type_vocab_size=2, pad_token_id=ids["[PAD]"],
        layer_norm_eps=1e-12, architectures=[arch], **kw)


def build_bert_classifier(name, stage):
    tok, ids = T.wordpiece_bert()
    id2label = {0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"}
    model = transformers.BertForSequenceClassification(bert_config(
        tok, ids, "BertForSequenceClassification", num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()}))
    L.randomize_(model, gen_for(name))
    save_hf(model, stage)
    save_tokenizer(stage, tok, bert_tok_config(ids))
    return dict(family="bert", architecture="BertForSequenceClassification", task="classify", reference_kind="seqcls",
                uses_token_type_ids=True, special_token_ids=ids, items=text_items() + pair_items(),
                id2label={str(k): v for k, v in id2label.items()},
                notes="Head: bert.pooler (dense + tanh on token 0) -> classifier. scores = softmax(logits). Pairs use "
                      "token_type_ids 1 for B and its [SEP].")


def build_bert_reranker(name, stage):
    tok, ids = T.wordpiece_bert()
    model = transformers.BertForSequenceClassification(bert_config(
        tok, ids, "BertForSequenceClassification", num_labels=1, id2label={0: "LABEL_0"}, label2id={"LABEL_0": 0}))
    L.randomize_(model, gen_for(name))
    save_hf(model, stage)
    save_tokenizer(stage, tok, bert_tok_config(ids))
    return dict(family="bert", architecture="BertForSequenceClassification", task="rerank", reference_kind="seqcls",
                uses_token_type_ids=True, special_token_ids=ids, items=pair_items(), id2label={"0": "LABEL_0"},
                notes="ms-marco cross-encoder shape: one label -> score = sigmoid(logit). [CLS] A [SEP] B [SEP] with "
                      "token_type_ids 0 for [CLS] A [SEP] and 1 for B [SEP].")


def build_splade(name, stage):
    tok, ids = T.wordpiece_bert()
    model = transformers.BertForMaskedLM(bert_config(tok, ids, "BertForMaskedLM", tie_word_embeddings=True))
    L.randomize_(model, gen_for(name))
    model.tie_weights()
    save_hf(model, stage)
    with safe_open(str(stage / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "cls.predictions.bias" in names and "cls.predictions.decoder.weight" not in names, sorted(names)
    assert "cls.predictions.decoder.bias" not in names
    save_tokenizer(stage, tok, bert_tok_config(ids))
    L.write_json(stage / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": L.ST_TYPES["MLMTransformer"]},
        {"idx": 1, "name": "1", "path": "1_SpladePooling", "type": L.ST_TYPES["SpladePooling"]}])
    L.write_json(stage / "sentence_bert_config.json", {"max_seq_length": MAX_LEN, "do_lower_case": False})
    L.write_json(stage / "config_sentence_transformers.json", {
        "model_type": "SparseEncoder",
        "__version__": {"sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
                        "pytorch": torch.__version__},
        "prompts": {"query": "", "document": ""}, "default_prompt_name": None, "similarity_fn_name": "dot"})
    L.write_json(stage / "1_SpladePooling" / "config.json",
                 {"pooling_strategy": "max", "activation_function": "relu", "word_embedding_dimension": tok.get_vocab_size()})
    return dict(family="bert", architecture="BertForMaskedLM", task="sparse", reference_kind="splade",
                uses_token_type_ids=True, special_token_ids=ids, items=text_items(),
                notes="SPLADE: MLM head cls.predictions.transform (dense -> gelu -> LayerNorm) -> decoder TIED to "
                      "bert.embeddings.word_embeddings (the checkpoint has NO cls.predictions.decoder.weight) + "
                      "cls.predictions.bias. sparse[v] = max over ALL tokens (incl. [CLS]/[SEP]) of log(1 + relu(logit[t, v])); "
                      "non-zero entries, sorted by id. Matches sentence-transformers SparseEncoder (MLMTransformer + "
                      "SpladePooling max/relu), which drops no special tokens and applies no top-k (max_active_dims unset).")


def build_bge_m3(name, stage):
    tok, ids = T.unigram_xlmr()
    model = transformers.XLMRobertaModel(xlmr_config(tok, "XLMRobertaModel"))
    g = gen_for(name)
    L.randomize_(model, g)
    save_hf(model, stage)
    save_tokenizer(stage, tok, roberta_like_tok_config("XLMRobertaTokenizer"))
    sparse_linear, colbert_linear = torch.nn.Linear(32, 1), torch.nn.Linear(32, 32)
    L.randomize_(sparse_linear, g, std=0.3)
    L.randomize_(colbert_linear, g)
    with torch.no_grad():
        sparse_linear.bias.add_(0.2)  # so that most, but not all, token weights are > 0
    torch.save(sparse_linear.state_dict(), str(stage / "sparse_linear.pt"))
    torch.save(colbert_linear.state_dict(), str(stage / "colbert_linear.pt"))
    L.write_st_files(stage, [("Transformer", ""), ("Pooling", "1_Pooling"), ("Normalize", "2_Normalize")], MAX_LEN)
    L.write_pooling(stage / "1_Pooling", 32, "cls")
    return dict(family="xlm-roberta", architecture="XLMRobertaModel", task="multi", reference_kind="bge_m3",
                special_token_ids=ids, items=text_items(), pooling="cls", normalize=True,
                notes="bge-m3 shape. sparse_linear.pt = torch.save(Linear(32, 1).state_dict()) {weight [1,32], bias [1]}, "
                      "colbert_linear.pt = torch.save(Linear(32, 32).state_dict()) {weight [32,32], bias [32]} (torch zip "
                      "pickles). embedding (dense) = L2-normalized CLS; sparse = relu(h W_s^T + b_s) per token, max per token "
                      "id, ids of <s>/</s>/<pad>/<unk> (0/2/1/3) dropped, weights > 0 kept, sorted by id; colbert = "
                      "normalize(h[1:] W_c^T + b_c): one vector per token after <s>, INCLUDING the final </s>. As FlagEmbedding "
                      "1.4.2 M3Embedder.encode(return_dense, return_sparse, return_colbert_vecs).")


def build_bert_dense(name, stage):
    tok, ids = T.wordpiece_bert()
    model = transformers.BertModel(bert_config(tok, ids, "BertModel"))
    g = gen_for(name)
    L.randomize_(model, g)
    save_hf(model, stage)
    save_tokenizer(stage, tok, bert_tok_config(ids))
    L.write_st_files(stage, [("Transformer", ""), ("Pooling", "1_Pooling"), ("Dense", "2_Dense"), ("Normalize", "3_Normalize")],
                     MAX_LEN)
    L.write_pooling(stage / "1_Pooling", 32, "mean")
    L.write_dense(stage / "2_Dense", randn(g, 16, 32, std=0.3), randn(g, 16, std=0.1), "tanh")
    return dict(family="bert", architecture="BertModel", task="embed", reference_kind="encoder", uses_token_type_ids=True,
                special_token_ids=ids, items=text_items(), pooling="mean", normalize=True,
                notes="sentence-transformers pipeline Transformer -> Pooling(mean) -> Dense(32 -> 16, bias, Tanh; "
                      "2_Dense/model.safetensors: linear.weight [16,32], linear.bias [16]) -> Normalize. "
                      "embedding = normalize(tanh(mean @ W^T + b)).")


# ======================================================================================
# decoders
# ======================================================================================
def decoder_st(stage, max_len, prompts=None):
    L.write_st_files(stage, [("Transformer", ""), ("Pooling", "1_Pooling"), ("Normalize", "2_Normalize")], max_len,
                     prompts=prompts)
    L.write_pooling(stage / "1_Pooling", 32, "lasttoken")


def build_qwen3(name, stage):
    tok, ids = T.bpe_qwen()
    eot = ids["<|endoftext|>"]
    cfg = transformers.Qwen3Config(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, hidden_act="silu", max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True, attention_bias=False, use_sliding_window=False,
        bos_token_id=eot, eos_token_id=eot)
    model = transformers.Qwen3Model(cfg)
    L.randomize_(model, gen_for(name))
    save_hf(model, stage, architectures=["Qwen3ForCausalLM"])
    save_tokenizer(stage, tok, qwen_tok_config())
    decoder_st(stage, MAX_LEN, prompts={"query": QWEN_QUERY_PROMPT, "document": ""})
    items = text_items() + [{"id": "query_prompted", "text": QWEN_QUERY_PROMPT + "what is deep learning?",
                             "prompt_name": "query", "text_without_prompt": "what is deep learning?"}]
    return dict(family="qwen3", architecture="Qwen3ForCausalLM", task="embed", reference_kind="encoder",
                special_token_ids=ids, items=items, pooling="lasttoken", normalize=True,
                notes="Qwen3-Embedding shape: config.json declares architectures ['Qwen3ForCausalLM'] (as the Hub's "
                      "Qwen3-Embedding checkpoints do) but the weights are a bare Qwen3Model: no 'model.' prefix, no lm_head. "
                      "GQA 4 query / 2 kv heads, head_dim 16 (q_proj 32 -> 64, != hidden/heads), per-head q_norm/k_norm "
                      "RMSNorm before RoPE, rope_theta 1e6, SwiGLU, causal. Tokenizer APPENDS <|endoftext|> (post-processor; "
                      "tokenizer_config's eos_token is <|im_end|>, padding_side left); no BOS. Pooling: last token "
                      "(= the <|endoftext|>), then L2 normalize. Prompts: query = 'Instruct: ...\\nQuery:' (no trailing "
                      "space), document = ''.")


def build_qwen2(name, stage):
    tok, ids = T.bpe_qwen()
    eot = ids["<|endoftext|>"]
    cfg = transformers.Qwen2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, hidden_act="silu", max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=False, use_sliding_window=False, bos_token_id=eot, eos_token_id=eot, architectures=["Qwen2Model"])
    model = transformers.Qwen2Model(cfg)
    L.randomize_(model, gen_for(name))
    save_hf(model, stage)
    save_tokenizer(stage, tok, qwen_tok_config())
    decoder_st(stage, MAX_LEN)
    return dict(family="qwen2", architecture="Qwen2Model", task="embed", reference_kind="encoder", special_token_ids=ids,
                items=text_items(), pooling="lasttoken", normalize=True,
                notes="gte-Qwen2 shape: q/k/v projections WITH bias, o_proj without; GQA 4/2 heads, head_dim 8, rope_theta 1e6, "
                      "causal; no q/k norm. Tokenizer appends <|endoftext|>. Last-token pooling + L2 normalize.")


def build_mistral(name, stage):
    tok, ids = T.bpe_llama(bos="<s>", eos="</s>")
    cfg = transformers.MistralConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, hidden_act="silu", max_position_embeddings=512, rms_norm_eps=1e-5,
        rope_theta=10000.0, sliding_window=16, tie_word_embeddings=False, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
        architectures=["MistralModel"])
    model = transformers.MistralModel(cfg)
    L.randomize_(model, gen_for(name))
    save_hf(model, stage)
    save_tokenizer(stage, tok, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                                "pad_token": "</s>", "padding_side": "right", "clean_up_tokenization_spaces": False})
    decoder_st(stage, MAX_LEN)
    return dict(family="mistral", architecture="MistralModel", task="embed", reference_kind="encoder", special_token_ids=ids,
                items=text_items(), pooling="lasttoken", normalize=True,
                notes="e5-mistral shape (bare MistralModel, no prefix). sliding_window=16: causal AND i - j < 16 (a token sees "
                      "itself and the 15 before it); the long texts are longer than that, and the reference (eager attention) "
                      "differs from full causal attention (checks.sliding_window_changes_output). GQA 4/2, rope_theta 1e4. "
                      "Tokenizer prepends <s> and appends </s>. Last-token pooling (= </s>) + L2 normalize.")


def build_llama(name, stage):
    tok, ids = T.bpe_llama()
    cfg = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, hidden_act="silu", max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|end_of_text|>"], architectures=["LlamaModel"])
    model = transformers.LlamaModel(cfg)
    L.randomize_(model, gen_for(name))
    save_hf(model, stage)
    save_tokenizer(stage, tok, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                                "eos_token": "<|end_of_text|>", "pad_token": "<|end_of_text|>", "padding_side": "right",
                                "clean_up_tokenization_spaces": False})
    decoder_st(stage, MAX_LEN)
    return dict(family="llama", architecture="LlamaModel", task="embed", reference_kind="encoder", special_token_ids=ids,
                items=text_items(), pooling="lasttoken", normalize=True,
                notes="rope_scaling llama3 (factor 8, low 1, high 4, original_max_position_embeddings 8192) on rope_theta 5e5, "
                      "head_dim 8: inv_freq = 5e5^(-k/8), k = 0, 2, 4, 6 -> wavelengths 6.3, 167, 4443, 118000: the first two "
                      "are kept, the third is smoothed, the fourth divided by 8 (all three llama3 regimes). GQA 4/2. "
                      "Tokenizer prepends <|begin_of_text|> and appends <|end_of_text|>. Last-token pooling + L2 normalize.")


def build_gemma3(name, stage):
    tok, ids = T.bpe_gemma()
    H_SW = 16
    cfg = transformers.Gemma3TextConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=H_SW,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"], rope_theta=1000000.0,
        rope_local_base_freq=10000.0, max_position_embeddings=512, use_bidirectional_attention=True,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, pad_token_id=ids["<pad>"], eos_token_id=ids["<eos>"],
        bos_token_id=ids["<bos>"], attn_logit_softcapping=None, final_logit_softcapping=None, tie_word_embeddings=True,
        architectures=["Gemma3TextModel"])
    assert cfg.sliding_window == H_SW // 2 + 1  # transformers' in-memory form (exclusive bound for bidirectional)
    model = transformers.Gemma3TextModel(cfg)
    g = gen_for(name)
    L.randomize_(model, g, norm_offset=0.0)
    # Hub form: the sliding_window the checkpoint declares (512 in EmbeddingGemma), not the derived 9.
    save_hf(model, stage, sliding_window=H_SW)
    save_tokenizer(stage, tok, {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
                                "pad_token": "<pad>", "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": True,
                                "padding_side": "right", "clean_up_tokenization_spaces": False})
    prompts = {"query": "task: search result | query: ", "document": "title: none | text: ",
               "Clustering": "task: clustering | query: ", "Classification": "task: classification | query: "}
    L.write_st_files(stage, [("Transformer", ""), ("Pooling", "1_Pooling"), ("Dense", "2_Dense"), ("Dense", "3_Dense"),
                             ("Normalize", "4_Normalize")], MAX_LEN, prompts=prompts)
    L.write_pooling(stage / "1_Pooling", 32, "mean")
    L.write_dense(stage / "2_Dense", randn(g, 128, 32, std=0.2), None, "identity")
    L.write_dense(stage / "3_Dense", randn(g, 32, 128, std=0.1), None, "identity")
    items = text_items() + [
        {"id": "query_prompted", "text": "task: search result | query: what is deep learning?", "prompt_name": "query",
         "text_without_prompt": "what is deep learning?"},
        {"id": "document_prompted", "text": "title: none | text: " + PAIRS[0][2], "prompt_name": "document",
         "text_without_prompt": PAIRS[0][2]}]
    return dict(family="gemma3_text", architecture="Gemma3TextModel", task="embed", reference_kind="encoder",
                special_token_ids=ids, items=items, pooling="mean", normalize=True,
                notes="EmbeddingGemma shape. use_bidirectional_attention: true -> NO causal mask. config.json sliding_window=16 "
                      "(Hub form); transformers turns it into 16//2+1 = 9 internally and masks |i-j| < 9, i.e. a "
                      "sliding layer lets token i see j iff |i - j| <= 8 (EmbeddingGemma: 512 -> |i-j| <= 256). layer_types: "
                      "sliding, sliding, full. Sliding layers use RoPE base rope_local_base_freq=1e4, the full layer rope_theta=1e6. "
                      "Embeddings * sqrt(hidden)=sqrt(32); RMSNorm scales by (1 + w); 4 norms per layer (input, post_attention, "
                      "pre_feedforward, post_feedforward) + q_norm/k_norm; attention scale query_pre_attn_scalar^-0.5 = 24^-0.5 "
                      "(NOT head_dim 16); GQA 4/2; MLP down(gelu_tanh(gate) * up). Then mean pooling -> Dense 32->128 (no bias, "
                      "identity) -> Dense 128->32 (no bias, identity) -> Normalize. Tokenizer: <bos> A <eos>.")


def build_qwen3_reranker(name, stage):
    tok, ids = T.bpe_qwen()
    eot = ids["<|endoftext|>"]
    cfg = transformers.Qwen3Config(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, hidden_act="silu", max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True, attention_bias=False, use_sliding_window=False,
        bos_token_id=eot, eos_token_id=ids["<|im_end|>"], architectures=["Qwen3ForCausalLM"])
    model = transformers.Qwen3ForCausalLM(cfg)
    L.randomize_(model, gen_for(name))
    model.tie_weights()
    save_hf(model, stage)
    with safe_open(str(stage / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    save_tokenizer(stage, tok, qwen_tok_config(), max_len=256)
    yes_id, no_id = tok.token_to_id("yes"), tok.token_to_id("no")
    inst = RERANK_DEFAULT_INSTRUCTION
    # 5 of the pairs (prompts are ~130-210 tokens; per-token states for all would exceed the size budget)
    items = [{"id": i, "query": q, "document": d, "instruction": inst} for i, q, d in PAIRS
             if i in ("relevant", "irrelevant", "short", "unicode")]
    items.append({"id": "custom_instruction", "query": "capital of france", "document": PAIRS[1][2],
                  "instruction": "Given a question, retrieve passages that answer it"})
    for it in items:
        it["text"] = RERANK_PREFIX + RERANK_TEMPLATE.format(instruction=it["instruction"], query=it["query"],
                                                            doc=it["document"]) + RERANK_SUFFIX
    return dict(family="qwen3", architecture="Qwen3ForCausalLM", task="rerank", reference_kind="qwen3_reranker",
                special_token_ids=ids, items=items, max_length=256, yes_token_id=yes_id, no_token_id=no_id,
                prompt={"prefix": RERANK_PREFIX, "template": RERANK_TEMPLATE, "suffix": RERANK_SUFFIX,
                        "default_instruction": RERANK_DEFAULT_INSTRUCTION},
                notes="Qwen3-Reranker shape: Qwen3ForCausalLM, weights WITH 'model.' prefix, LM head tied to "
                      "model.embed_tokens (no lm_head.weight tensor). input_ids = encode(prefix) + encode(template.format("
                      "instruction, query, doc)) + encode(suffix), EACH PART tokenized separately with "
                      "add_special_tokens=False (so the post-processor's <|endoftext|> is NOT appended), as Qwen's reference "
                      "code does (it tokenizes the middle part alone and concatenates ids). logits = [l_yes - l_no] at the last "
                      "position, scores = sigmoid(l_yes - l_no) = hidden_last . (E[yes] - E[no]) through sigmoid; "
                      "yes_no_logits are the raw LM logits. 'text' is the full prompt string (informational).")


FIXTURE_BUILDERS = {
    "tiny-xlm-roberta": build_xlm_roberta,
    "tiny-xlm-roberta-reranker": build_xlm_roberta_reranker,
    "tiny-roberta-classifier": build_roberta_classifier,
    "tiny-distilbert": build_distilbert,
    "tiny-distilbert-classifier": build_distilbert_classifier,
    "tiny-mpnet": build_mpnet,
    "tiny-modernbert": build_modernbert,
    "tiny-modernbert-reranker": build_modernbert_reranker,
    "tiny-nomic": build_nomic,
    "tiny-gte": build_gte,
    "tiny-bert-classifier": build_bert_classifier,
    "tiny-bert-reranker": build_bert_reranker,
    "tiny-splade": build_splade,
    "tiny-bge-m3": build_bge_m3,
    "tiny-bert-dense": build_bert_dense,
    "tiny-qwen3": build_qwen3,
    "tiny-qwen2": build_qwen2,
    "tiny-mistral": build_mistral,
    "tiny-llama": build_llama,
    "tiny-gemma3": build_gemma3,
    "tiny-qwen3-reranker": build_qwen3_reranker,
}

TASK_OUTPUTS = {
    "embed": "tokens, cls, mean, last (raw), embedding (sentence-transformers encode() output)",
    "classify": "tokens (raw backbone last_hidden_state), logits (raw), scores = softmax(logits)",
    "rerank": "tokens (raw backbone last_hidden_state), logits (raw, one), scores = sigmoid(logits)",
    "sparse": "tokens (raw backbone last_hidden_state), sparse {indices, values}",
    "multi": "tokens, cls, mean, last (raw), embedding (dense), sparse {indices, values}, colbert",
}


# ======================================================================================
def generator_info() -> dict:
    return {"script": "scripts/make_tiny_models.py", "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "sentence_transformers": sentence_transformers.__version__,
            "tokenizers": tokenizers.__version__, "numpy": np.__version__, "seed": BASE_SEED}


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def compare_items(a, b) -> float:
    """max abs diff over every float output (sparse compared on the union of indices)."""
    worst = 0.0
    for x, y in zip(a, b):
        for k, v in x["outputs"].items():
            w = y["outputs"][k]
            if k == "sparse":
                dv, dw = dict(zip(v["indices"], v["values"])), dict(zip(w["indices"], w["values"]))
                keys = set(dv) | set(dw)
                worst = max(worst, max((abs(dv.get(i, 0.0) - dw.get(i, 0.0)) for i in keys), default=0.0))
            elif k == "yes_no_logits":
                worst = max(worst, max(abs(v[t] - w[t]) for t in v))
            else:
                worst = max(worst, max_abs(v, w))
    return worst


def extra_checks(name: str, stage: Path, meta: dict) -> dict:
    """Fixture-specific sanity checks (recorded in reference.json["checks"])."""
    out = {}
    if name == "tiny-mistral":
        # the sliding window must matter for the long texts
        cfg = transformers.AutoConfig.from_pretrained(str(stage))
        cfg.sliding_window = None
        hf_tok = L.hf_tokenizer(stage)
        with L.exact_float64(), torch.no_grad():
            m1 = L.promote_float64_(transformers.AutoModel.from_pretrained(str(stage), attn_implementation="eager").eval())
            m2 = L.promote_float64_(transformers.AutoModel.from_pretrained(str(stage), config=cfg, attn_implementation="eager").eval())
            enc = hf_tok(meta["items"][5]["text"], return_tensors="pt")
            d = max_abs(m1(**enc).last_hidden_state.numpy(), m2(**enc).last_hidden_state.numpy())
        assert d > 1e-3, d
        out["sliding_window_changes_output"] = float(f"{d:.3g}")
    if name in ("tiny-modernbert", "tiny-gemma3"):
        # local layers must matter: compare against a config where every layer is global
        cfg = transformers.AutoConfig.from_pretrained(str(stage))
        if name == "tiny-modernbert":
            cfg.global_attn_every_n_layers = 1
        else:
            cfg.layer_types = ["full_attention"] * cfg.num_hidden_layers
        hf_tok = L.hf_tokenizer(stage)
        with L.exact_float64(), torch.no_grad():
            m1 = L.promote_float64_(transformers.AutoModel.from_pretrained(str(stage), attn_implementation="eager").eval())
            m2 = L.promote_float64_(transformers.AutoModel.from_pretrained(str(stage), config=cfg, attn_implementation="eager").eval())
            enc = hf_tok(meta["items"][5]["text"], return_tensors="pt")
            d = max_abs(m1(**enc).last_hidden_state.numpy(), m2(**enc).last_hidden_state.numpy())
        assert d > 1e-3, d
        out["local_attention_changes_output"] = float(f"{d:.3g}")
    return out


def build_one(name: str, out_root: Path) -> int:
    builder = FIXTURE_BUILDERS[name]
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        torch.manual_seed(BASE_SEED)
        meta = builder(name, stage)
        meta.setdefault("max_length", MAX_LEN)
        if name in TF5_CONFIG_FIXTURES:
            write_tf5_config(stage)
        with safe_open(str(stage / "model.safetensors"), "pt") as f:
            dtypes = {str(f.get_tensor(n).dtype) for n in f.keys()}
            tensor_names = sorted(f.keys())
        assert dtypes == {"torch.float32"}, dtypes

        items64, checks = C.compute(stage, meta, "f64", batch_check=True)
        items32, _ = C.compute(stage, meta, "f32")
        checks = {k: float(f"{v:.3g}") for k, v in checks.items()}
        checks["max_abs_diff_float32_vs_float64"] = float(f"{compare_items(items64, items32):.3g}")
        checks.update(extra_checks(name, stage, meta))
        for k, v in checks.items():
            if "diff" in k and k != "max_abs_diff_float32_vs_float64":
                # CrossEncoder.predict returns float32 scores; everything else is float64 vs float64
                assert v < (1e-6 if k.startswith("cross_encoder") else 1e-9), (name, k, v)
        assert checks["max_abs_diff_float32_vs_float64"] < 2e-4, checks

        items = []
        for inp, res in zip(meta["items"], items64):
            row = dict(inp)
            row["input_ids"] = res["input_ids"]
            if "token_type_ids" in res:
                row["token_type_ids"] = res["token_type_ids"]
            row["num_tokens"] = len(res["input_ids"])
            row["outputs"] = L.round_outputs(res["outputs"])
            items.append(row)

        ref = {
            "description": (
                f"Reference outputs for the random-weight tiny {meta['architecture']} in this folder (NOT a meaningful "
                f"model). Computed in float64 (model.double(), with transformers' float32 RMSNorm/RoPE/softmax steps kept "
                f"in float64) with eager attention, each input ALONE (batch of one, no padding), after loading this "
                f"folder back from disk. Outputs: {TASK_OUTPUTS[meta['task']]}. 'tokens' is the raw last_hidden_state "
                f"per token (before pooling); cls = token 0, mean = mean over all tokens, last = last token. input_ids "
                f"include the special tokens the tokenizer.json post-processor adds. Floats have 9 significant digits."),
            "generator": generator_info(),
            "family": meta["family"],
            "architecture": meta["architecture"],
            "task": meta["task"],
            "max_length": meta["max_length"],
        }
        if "id2label" in meta:
            ref["id2label"] = meta["id2label"]
        ref["special_token_ids"] = meta["special_token_ids"]
        for k in ("pooling", "normalize", "uses_token_type_ids", "yes_token_id", "no_token_id", "prompt"):
            if k in meta:
                ref[k] = meta[k]
        ref["reference_kind"] = meta["reference_kind"]
        ref["tokenizer_json_ships"] = T.shipped_settings_note(
            json.loads((stage / "tokenizer.json").read_text())["padding"]["direction"].lower())
        ref["safetensors_tensor_names"] = tensor_names
        if (stage / "config.transformers5.json").exists():
            v5 = json.loads((stage / "config.transformers5.json").read_text())["transformers_version"]
            ref["config_transformers5"] = (
                f"config.transformers5.json = this config.json loaded and re-saved by transformers {v5} "
                "(rope_parameters / layer_types instead of rope_theta, rope_scaling, global_rope_theta, local_rope_theta); "
                "same model, both forms must load identically")
        ref["notes"] = meta["notes"]
        ref["checks"] = checks
        ref["command"] = 'VENV="$(scripts/make-fixture-venv.sh | tail -n1)" && "$VENV/bin/python" scripts/make_tiny_models.py'
        ref["items"] = items
        L.write_json(stage / "reference.json", ref, compact=True)

        out = out_root / name
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(stage, out)
    for p in sorted(out.rglob("*")):
        p.chmod(0o755 if p.is_dir() else 0o644)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{name:28s} {total:8d} bytes  checks={checks}", file=sys.stderr)
    assert total < SIZE_LIMIT, (name, total)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="fixture names (default: all)")
    ap.add_argument("--out-root", type=Path, default=FIXTURES)
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic reductions
    names = args.only or list(FIXTURE_BUILDERS)
    for n in names:
        if n not in FIXTURE_BUILDERS:
            ap.error(f"unknown fixture {n}; known: {', '.join(FIXTURE_BUILDERS)}")
    for n in names:
        build_one(n, args.out_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
