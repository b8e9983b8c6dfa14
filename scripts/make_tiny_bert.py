#!/usr/bin/env python3
"""Build tests/fixtures/tiny-bert/: a tiny, randomly initialised BERT in Hugging Face
hub-folder layout, plus reference outputs computed with `transformers`.

Layout written:
  config.json                 BertConfig (hidden 32, 2 layers, 4 heads, intermediate 64,
                              max_position_embeddings 64, hidden_act gelu, vocab 2000)
  model.safetensors           F32 weights, tensor names exactly as BertModel.save_pretrained
                              writes them (no "bert." prefix), fixed seed
  tokenizer.json              WordPiece tokenizer (BertNormalizer lowercase, BertPreTokenizer,
                              [CLS] $A [SEP] template); vocab = 2000 entries picked from
                              all-MiniLM-L6-v2's vocab.txt; special ids re-numbered:
                              [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 (deliberately NOT
                              MiniLM's 100..103, so hard-coded ids are caught).
                              Like MiniLM's file, it ships truncation max_length=128 and
                              padding Fixed(128): loaders must override both (truncate at
                              max_seq_length=64, no padding), or positions >= 64 overflow.
  tokenizer_config.json, sentence_bert_config.json (max_seq_length 64),
  modules.json (Transformer -> Pooling), 1_Pooling/config.json (CLS pooling),
  reference.json              per text: input_ids, raw cls / mean / last-token vectors.

Run with the venv of scripts/make-ref-venv.sh:
    VENV="$(scripts/make-ref-venv.sh | tail -n1)"
    "$VENV/bin/python" scripts/make_tiny_bert.py [--minilm-vocab PATH]
The vocab is taken from all-MiniLM-L6-v2 (scripts/fetch-test-model.sh fetches it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from sentence_transformers import SentenceTransformer, models  # noqa: E402
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors  # noqa: E402
from tokenizers.models import WordPiece  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR_DEFAULT = REPO_ROOT / "tests" / "fixtures" / "tiny-bert"

SEED = 20240517
VOCAB_SIZE = 2000
MAX_SEQ = 64
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Tokenizer-file settings copied from the shape of all-MiniLM-L6-v2's tokenizer.json.
SHIPPED_TRUNCATION = 128
SHIPPED_PADDING = 128

TEXTS = [
    ("tei_query", "What is Deep Learning?"),
    ("hello", "hello world"),
    ("sentence", "The quick brown fox jumps over the lazy dog."),
    ("unicode", "Crème brûlée, 深度学习 and pizza 🍕 ok"),
    ("single_char", "a"),
    (
        "long",
        "Text embeddings map a piece of text to a fixed-size vector, so that texts with similar "
        "meaning end up close to each other. They power semantic search, clustering and "
        "retrieval. A server tokenizes sentences, pads them to a common length, runs a BERT "
        "encoder, and pools the hidden states into one vector per sentence.",
    ),
]


def sig(values, digits=9) -> list[float]:
    return [float(f"{float(v):.{digits}g}") for v in values]


def minilm_vocab_path(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "fetch-test-model.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1]) / "vocab.txt"


def build_vocab(minilm_vocab: Path) -> dict[str, int]:
    src = minilm_vocab.read_text(encoding="utf-8").splitlines()
    assert src[0] == "[PAD]" and src[100] == "[UNK]" and src[101] == "[CLS]", "unexpected MiniLM vocab"
    out: list[str] = list(SPECIALS)
    seen = set(out)

    def add(tok: str) -> None:
        if tok not in seen and len(out) < VOCAB_SIZE:
            seen.add(tok)
            out.append(tok)

    # 1) every single-character entry of MiniLM (ids 999..1995: punctuation, digits,
    #    letters, accented/Greek/Cyrillic/CJK/kana/hangul characters, ...).
    for tok in src[999:1996]:
        add(tok)
    # 2) continuation pieces for ascii letters/digits so any ascii word tokenizes
    #    without [UNK] (possibly into many pieces).
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        assert f"##{ch}" in src
        add(f"##{ch}")
    # 3) fill up with MiniLM's most frequent whole words / pieces (ids 1996+ are
    #    roughly frequency ordered).
    for tok in src[1996:]:
        if tok.startswith("[unused"):
            continue
        add(tok)
    assert len(out) == VOCAB_SIZE
    return {tok: i for i, tok in enumerate(out)}


def build_tokenizer(vocab: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens(SPECIALS)
    tok.enable_truncation(max_length=SHIPPED_TRUNCATION)
    tok.enable_padding(length=SHIPPED_PADDING, pad_id=vocab["[PAD]"], pad_token="[PAD]")
    return tok


def randomize_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-draw every parameter with a larger spread than BERT's 0.02 init, so attention
    is far from uniform, GELU sees inputs of order 1 (erf vs tanh GELU differ), and
    LayerNorm gamma/beta and all biases are non-trivial (catches swapped tensors)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias") or "LayerNorm.bias" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT_DIR_DEFAULT)
    ap.add_argument("--minilm-vocab", type=Path, default=None, help="all-MiniLM-L6-v2 vocab.txt")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    vocab = build_vocab(minilm_vocab_path(args.minilm_vocab))
    tok = build_tokenizer(vocab)

    config = transformers.BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=MAX_SEQ,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=vocab["[PAD]"],
        position_embedding_type="absolute",
        architectures=["BertModel"],
    )
    torch.manual_seed(SEED)
    model = transformers.BertModel(config, add_pooling_layer=True)
    randomize_(model, torch.Generator().manual_seed(SEED))
    model.eval()

    out = args.out
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "tiny-bert"
        stage.mkdir()
        model.save_pretrained(stage, safe_serialization=True)
        tok.save(str(stage / "tokenizer.json"))
        (stage / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "BertTokenizer",
                    "do_lower_case": True,
                    "tokenize_chinese_chars": True,
                    "strip_accents": None,
                    "do_basic_tokenize": True,
                    "never_split": None,
                    "unk_token": "[UNK]",
                    "sep_token": "[SEP]",
                    "pad_token": "[PAD]",
                    "cls_token": "[CLS]",
                    "mask_token": "[MASK]",
                    "model_max_length": MAX_SEQ,
                },
                indent=2,
            )
            + "\n"
        )
        (stage / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": MAX_SEQ, "do_lower_case": False}, indent=2) + "\n"
        )
        (stage / "modules.json").write_text(
            json.dumps(
                [
                    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                ],
                indent=2,
            )
            + "\n"
        )
        (stage / "1_Pooling").mkdir()
        models.Pooling(config.hidden_size, pooling_mode="cls").save(str(stage / "1_Pooling"))

        # ---- reference outputs -------------------------------------------------
        with safe_open(str(stage / "model.safetensors"), "pt") as f:
            names = sorted(f.keys())
            dtypes = {str(f.get_tensor(n).dtype) for n in names}
        assert dtypes == {"torch.float32"}, dtypes
        prefix_bert = any(n.startswith("bert.") for n in names)

        loaded32 = transformers.AutoModel.from_pretrained(str(stage)).eval()
        loaded64 = transformers.AutoModel.from_pretrained(str(stage)).double().eval()
        tanh32 = transformers.AutoModel.from_pretrained(str(stage), hidden_act="gelu_pytorch_tanh").eval()
        hf_tok = transformers.AutoTokenizer.from_pretrained(str(stage))
        assert hf_tok.is_fast and hf_tok.cls_token_id == vocab["[CLS]"], hf_tok
        raw_tok = Tokenizer.from_file(str(stage / "tokenizer.json"))
        raw_tok.enable_truncation(MAX_SEQ)
        raw_tok.no_padding()
        st = SentenceTransformer(str(stage), device="cpu").eval()
        assert st[0].max_seq_length == MAX_SEQ, st[0].max_seq_length
        assert st[1].pooling_mode_cls_token

        cases = []
        max_f32_dev = 0.0
        max_tanh_dev = 0.0
        for case_id, text in TEXTS:
            enc = hf_tok(text, truncation=True, max_length=MAX_SEQ, return_tensors="pt")
            ids = enc["input_ids"][0].tolist()
            assert raw_tok.encode(text).ids == ids, case_id
            assert ids[0] == vocab["[CLS]"] and ids[-1] == vocab["[SEP]"]
            with torch.no_grad():
                h64 = loaded64(**enc).last_hidden_state[0].numpy()
                h32 = loaded32(**enc).last_hidden_state[0].numpy()
                ht = tanh32(**enc).last_hidden_state[0].numpy()
            cls, mean, last = h64[0], h64.mean(0), h64[len(ids) - 1]
            max_f32_dev = max(max_f32_dev, float(np.abs(h32 - h64).max()))
            max_tanh_dev = max(max_tanh_dev, float(np.abs(ht.mean(0) - mean).max()), float(np.abs(ht[0] - cls).max()))
            st_vec = st.encode([text], convert_to_numpy=True)[0]
            assert np.allclose(st_vec, cls, atol=1e-5), (case_id, np.abs(st_vec - cls).max())
            n_untrunc = len(hf_tok(text, truncation=False)["input_ids"])
            cases.append(
                {
                    "id": case_id,
                    "text": text,
                    "num_tokens": len(ids),
                    "num_tokens_untruncated": n_untrunc,
                    "truncated": n_untrunc > len(ids),
                    "input_ids": ids,
                    "tokens": hf_tok.convert_ids_to_tokens(ids),
                    "cls": sig(cls),
                    "mean": sig(mean),
                    "last": sig(last),
                }
            )
            print(f"{case_id:12s} tokens={len(ids):2d} (untruncated {n_untrunc})", file=sys.stderr)
        assert any(c["truncated"] and c["num_tokens"] == MAX_SEQ for c in cases)
        assert max_f32_dev < 1e-4, max_f32_dev

        # Padded batch must give the same per-text vectors (attention-mask sanity check).
        batch = hf_tok([t for _, t in TEXTS], truncation=True, max_length=MAX_SEQ, padding=True, return_tensors="pt")
        with torch.no_grad():
            hb = loaded64(**batch).last_hidden_state.numpy()
        for i, c in enumerate(cases):
            assert np.allclose(hb[i, 0], c["cls"], atol=1e-6)

        ref = {
            "description": (
                "Reference outputs for the random tiny BERT in this folder. Vectors are RAW (not "
                "normalized) last-layer hidden states computed by transformers.BertModel in float64 "
                "(model.double()) on CPU, one text at a time (no padding): 'cls' = token 0, 'mean' = mean "
                "over all tokens (attention mask all ones), 'last' = last non-pad token (the [SEP]). "
                "input_ids include [CLS]/[SEP], truncated at max_seq_length=64 (62 word pieces + 2). "
                "Floats have 9 significant digits."
            ),
            "max_seq_length": MAX_SEQ,
            "special_token_ids": {s: vocab[s] for s in SPECIALS},
            "tokenizer_json_ships": {
                "truncation_max_length": SHIPPED_TRUNCATION,
                "padding_fixed_length": SHIPPED_PADDING,
                "note": "like all-MiniLM-L6-v2's tokenizer.json: override to truncation=max_seq_length, no padding",
            },
            "safetensors_names_have_bert_prefix": prefix_bert,
            "pooling": "cls (1_Pooling/config.json)",
            "checks": {
                "max_abs_diff_float32_vs_float64_hidden": float(f"{max_f32_dev:.3g}"),
                "max_abs_diff_if_tanh_gelu": float(f"{max_tanh_dev:.3g}"),
                "sentence_transformers_cls_matches": True,
                "padded_batch_matches": True,
            },
            "compute": {
                "seed": SEED,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "sentence_transformers": sentence_transformers.__version__,
                "tokenizers": tokenizers.__version__,
            },
            "command": 'VENV="$(scripts/make-ref-venv.sh | tail -n1)" && "$VENV/bin/python" scripts/make_tiny_bert.py',
            "items": cases,
        }
        (stage / "reference.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        (stage / "README.md").write_text(
            "# tiny-bert test fixture\n\n"
            "Random-weight BERT (hidden 32, 2 layers, 4 heads, intermediate 64, max_position_embeddings 64,\n"
            "vocab 2000) in Hugging Face hub-folder layout, for fast unit tests. NOT a meaningful model.\n"
            "Generated by `scripts/make_tiny_bert.py` (see its docstring); do not edit by hand.\n\n"
            f"- special ids: {', '.join(f'{s}={vocab[s]}' for s in SPECIALS)} (differ from MiniLM's 0/100/101/102/103)\n"
            f"- safetensors tensor names: BertModel.save_pretrained style, "
            f"{'WITH' if prefix_bert else 'no'} `bert.` prefix (e.g. `{names[0]}`); F32; no `embeddings.position_ids`\n"
            f"- tokenizer.json ships truncation max_length={SHIPPED_TRUNCATION} and padding Fixed({SHIPPED_PADDING}) "
            "(same shape as all-MiniLM-L6-v2's); loaders must truncate at max_seq_length=64 and not pad\n"
            "- pooling: CLS (1_Pooling/config.json); modules.json has no Normalize module\n"
            "- reference.json: raw cls / mean / last-token vectors (float64 compute), token ids\n"
        )

        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(stage, out)
    for p in out.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)

    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"tensor names ({len(names)}), bert. prefix: {prefix_bert}", file=sys.stderr)
    print("\n".join("  " + n for n in names), file=sys.stderr)
    print(f"f32-vs-f64 max diff {max_f32_dev:.3g}; tanh-GELU max diff {max_tanh_dev:.3g}", file=sys.stderr)
    print(f"wrote {out} ({total} bytes)", file=sys.stderr)
    assert total < 500_000, total
    return 0


if __name__ == "__main__":
    sys.exit(main())
