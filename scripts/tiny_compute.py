"""Reference computations for the tiny fixtures, shared by make_tiny_models.py (which writes
reference.json) and check_fixtures.py (which recomputes it from the committed folder).

Every function loads the fixture FOLDER from disk (transformers / sentence-transformers with
HF_HUB_OFFLINE=1, or the hand-written forwards for remote-code families) and computes, for each
input ALONE (batch of one, no padding), the raw last hidden state per token and whatever the
fixture's task needs. float64 by default (model.double() + tiny_models_lib.exact_float64()),
float32 (plain transformers, no patches) with dtype="f32" for the precision cross-check.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file

import tiny_models_lib as L


def _ctx(dtype):
    return L.exact_float64() if dtype == "f64" else contextlib.nullcontext()


def _prep(model, dtype):
    model.eval()
    return L.promote_float64_(model) if dtype == "f64" else model.float()


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def _st_model(folder: Path, dtype, cls_name="SentenceTransformer"):
    import sentence_transformers as st

    cls = getattr(st, cls_name)
    m = cls(str(folder), device="cpu", model_kwargs={"attn_implementation": "eager"} if cls_name != "SparseEncoder" else None)
    m.eval()
    if dtype == "f64":
        m.double()
        for mod in m.modules():
            if isinstance(mod, transformers.PreTrainedModel):
                L.promote_float64_(mod)
    return m


def st_embeddings(folder: Path, texts: list[str], dtype="f64", prompt_name=None) -> np.ndarray:
    with _ctx(dtype):
        m = _st_model(folder, dtype)
        out = [m.encode([t], convert_to_numpy=True, prompt_name=prompt_name, batch_size=1)[0] for t in texts]
    return np.stack(out).astype(np.float64)


# --------------------------------------------------------------------------------------
def encoder(folder: Path, ref: dict, dtype="f64", batch_check=False):
    """AutoModel encoders (BERT, RoBERTa, XLM-R, DistilBERT, MPNet, ModernBERT) and decoder
    embedders (Qwen3, Qwen2, Mistral, Llama, Gemma3): raw hidden states + cls/mean/last, and the
    sentence-transformers pipeline's encode() output where the folder is an ST model."""
    max_len = ref["max_length"]
    with_types = ref.get("uses_token_type_ids", False)
    hf_tok, raw = L.hf_tokenizer(folder), L.raw_tokenizer(folder, max_len)
    checks = {}
    with _ctx(dtype), torch.no_grad():
        model = _prep(transformers.AutoModel.from_pretrained(str(folder), attn_implementation="eager"), dtype)
        items = []
        for it in ref["items"]:
            inputs = L.encode(hf_tok, raw, it["text"], it.get("text_pair"), max_len, with_types)
            h = model(**inputs).last_hidden_state[0]
            out = {"tokens": L.to_list(h), **{k: L.to_list(v) for k, v in L.pooled(h).items()}}
            row = {"input_ids": inputs["input_ids"][0].tolist()}
            if with_types:
                row["token_type_ids"] = inputs["token_type_ids"][0].tolist()
            if (folder / "modules.json").exists():
                manual = L.apply_st_pipeline_manually(folder, h[None], inputs["attention_mask"])[0]
                out["embedding"] = L.to_list(manual)
            row["outputs"] = out
            items.append(row)
        if batch_check:
            checks["padded_batch_max_abs_diff"] = _batch_check(model, hf_tok, ref, items, with_types)
    if (folder / "modules.json").exists():
        # the real sentence-transformers pipeline must agree with the hand-applied one
        worst = 0.0
        for it, row in zip(ref["items"], items):
            pn = it.get("prompt_name")
            text = it["text_without_prompt"] if pn else it["text"]
            e = st_embeddings(folder, [text], dtype, prompt_name=pn)[0]
            worst = max(worst, _max_diff(e, row["outputs"]["embedding"]))
        checks["sentence_transformers_vs_manual_pipeline_max_abs_diff"] = worst
        assert worst < (1e-12 if dtype == "f64" else 1e-5), worst
    return items, checks


def _groups(ref):
    """indices of single-text items and of pair items (batched separately)."""
    singles = [i for i, it in enumerate(ref["items"]) if it.get("text_pair") is None]
    pairs = [i for i, it in enumerate(ref["items"]) if it.get("text_pair") is not None]
    return [g for g in (singles, pairs) if g]


def _batch_enc(hf_tok, ref, group, with_types):
    its = [ref["items"][i] for i in group]
    texts = [it["text"] for it in its]
    pairs = [it["text_pair"] for it in its] if its[0].get("text_pair") is not None else None
    enc = hf_tok(texts, pairs, padding=True, truncation=True, max_length=ref["max_length"], return_tensors="pt")
    if not with_types:
        enc.pop("token_type_ids", None)
    return enc


def _batch_check(model, hf_tok, ref, items, with_types) -> float:
    """All texts of the fixture in ONE padded batch (the tokenizer's padding side) must give the
    same per-token hidden states as each text alone."""
    worst = 0.0
    for group in _groups(ref):
        enc = _batch_enc(hf_tok, ref, group, with_types)
        hb = model(**enc).last_hidden_state
        for j, i in enumerate(group):
            m = enc["attention_mask"][j].bool()
            worst = max(worst, _max_diff(hb[j][m].numpy(), items[i]["outputs"]["tokens"]))
    return worst


# --------------------------------------------------------------------------------------
def seqcls(folder: Path, ref: dict, dtype="f64", batch_check=False):
    """*ForSequenceClassification: raw logits, scores (softmax for >1 label, sigmoid for 1),
    and the base model's raw last hidden state."""
    max_len = ref["max_length"]
    with_types = ref.get("uses_token_type_ids", False)
    hf_tok, raw = L.hf_tokenizer(folder), L.raw_tokenizer(folder, max_len)
    checks = {}
    with _ctx(dtype), torch.no_grad():
        model = _prep(transformers.AutoModelForSequenceClassification.from_pretrained(
            str(folder), attn_implementation="eager"), dtype)
        base = getattr(model, model.base_model_prefix)
        n = model.config.num_labels
        items = []
        for it in ref["items"]:
            inputs = L.encode(hf_tok, raw, it["text"], it.get("text_pair"), max_len, with_types)
            logits = model(**inputs).logits[0]
            h = base(**inputs).last_hidden_state[0]
            scores = torch.softmax(logits, -1) if n > 1 else torch.sigmoid(logits)
            row = {"input_ids": inputs["input_ids"][0].tolist()}
            if with_types:
                row["token_type_ids"] = inputs["token_type_ids"][0].tolist()
            row["outputs"] = {"tokens": L.to_list(h), "logits": L.to_list(logits), "scores": L.to_list(scores)}
            items.append(row)
        if batch_check:
            worst = 0.0
            for group in _groups(ref):
                lb = model(**_batch_enc(hf_tok, ref, group, with_types)).logits
                worst = max(worst, max(_max_diff(lb[j].numpy(), items[i]["outputs"]["logits"]) for j, i in enumerate(group)))
            checks["padded_batch_logits_max_abs_diff"] = worst
    if dtype == "f64" and n == 1:
        from sentence_transformers import CrossEncoder

        with _ctx(dtype):
            ce = CrossEncoder(str(folder), device="cpu")
            ce.model.double()
            L.promote_float64_(ce.model)
            got = ce.predict([(it["text"], it["text_pair"]) for it in ref["items"]], batch_size=len(items))
        checks["cross_encoder_predict_vs_scores_max_abs_diff"] = max(
            _max_diff([g], row["outputs"]["scores"]) for g, row in zip(got, items))
    return items, checks


# --------------------------------------------------------------------------------------
def _sparse_from_vec(vec: torch.Tensor) -> dict:
    idx = torch.nonzero(vec > 0).flatten()
    return {"indices": idx.tolist(), "values": vec[idx].tolist()}


def splade(folder: Path, ref: dict, dtype="f64", batch_check=False):
    """SPLADE: w_v = max over tokens of log(1 + relu(mlm_logits[t, v])) (all tokens, specials
    included, attention mask all ones); non-zero entries sorted by vocab id."""
    max_len = ref["max_length"]
    hf_tok, raw = L.hf_tokenizer(folder), L.raw_tokenizer(folder, max_len)
    checks = {}
    with _ctx(dtype), torch.no_grad():
        model = _prep(transformers.AutoModelForMaskedLM.from_pretrained(str(folder), attn_implementation="eager"), dtype)
        assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
        items = []
        for it in ref["items"]:
            inputs = L.encode(hf_tok, raw, it["text"], None, max_len, True)
            logits = model(**inputs).logits[0]
            h = model.bert(**inputs).last_hidden_state[0]
            vec = torch.log1p(torch.relu(logits)).max(0).values
            items.append({"input_ids": inputs["input_ids"][0].tolist(), "token_type_ids": inputs["token_type_ids"][0].tolist(),
                          "outputs": {"tokens": L.to_list(h), "sparse": _sparse_from_vec(vec)}})
    if dtype == "f64":
        from sentence_transformers import SparseEncoder

        with _ctx(dtype):
            se = _st_model(folder, dtype, "SparseEncoder")
            worst = 0.0
            for it, row in zip(ref["items"], items):
                e = se.encode([it["text"]], convert_to_tensor=True, batch_size=1)[0].to_dense().to(torch.float64)
                sp = _sparse_from_vec(e)
                assert sp["indices"] == row["outputs"]["sparse"]["indices"], it["id"]
                worst = max(worst, _max_diff(sp["values"], row["outputs"]["sparse"]["values"]))
        checks["sparse_encoder_vs_formula_max_abs_diff"] = worst
        assert worst < 1e-12, worst
    return items, checks


# --------------------------------------------------------------------------------------
def bge_m3(folder: Path, ref: dict, dtype="f64", batch_check=False):
    """bge-m3 exactly as FlagEmbedding 1.4.2's M3Embedder (inference) computes it:
    dense   = normalize(last_hidden[0])                                   (CLS, L2)
    sparse  = relu(sparse_linear(last_hidden)) per token; per token id keep the max; drop the ids
              of cls/eos/pad/unk tokens; keep w > 0  -> {token_id: weight}
    colbert = normalize(colbert_linear(last_hidden[1:]))  every token after CLS (incl. the final </s>)."""
    max_len = ref["max_length"]
    hf_tok, raw = L.hf_tokenizer(folder), L.raw_tokenizer(folder, max_len)
    unused = {hf_tok.convert_tokens_to_ids(hf_tok.special_tokens_map[t]) for t in ("cls_token", "eos_token", "pad_token", "unk_token")}
    tdt = torch.float64 if dtype == "f64" else torch.float32
    sp_sd = torch.load(str(folder / "sparse_linear.pt"), map_location="cpu", weights_only=True)
    cb_sd = torch.load(str(folder / "colbert_linear.pt"), map_location="cpu", weights_only=True)
    checks = {}
    with _ctx(dtype), torch.no_grad():
        model = _prep(transformers.AutoModel.from_pretrained(str(folder), attn_implementation="eager"), dtype)
        items = []
        for it in ref["items"]:
            inputs = L.encode(hf_tok, raw, it["text"], None, max_len, False)
            ids = inputs["input_ids"][0].tolist()
            h = model(**inputs).last_hidden_state[0]
            tw = torch.relu(h @ sp_sd["weight"].to(tdt).T + sp_sd["bias"].to(tdt))[:, 0]
            lw: dict[int, float] = {}
            for w, i in zip(tw.tolist(), ids):
                if i not in unused and w > 0 and w > lw.get(i, 0.0):
                    lw[i] = w
            keys = sorted(lw)
            colbert = F.normalize(h[1:] @ cb_sd["weight"].to(tdt).T + cb_sd["bias"].to(tdt), dim=-1)
            out = {"tokens": L.to_list(h), **{k: L.to_list(v) for k, v in L.pooled(h).items()},
                   "embedding": L.to_list(F.normalize(h[0], dim=-1)),
                   "sparse": {"indices": keys, "values": [lw[k] for k in keys]},
                   "colbert": L.to_list(colbert)}
            items.append({"input_ids": ids, "outputs": out})
    if (folder / "modules.json").exists():
        e = st_embeddings(folder, [it["text"] for it in ref["items"]], dtype)
        checks["sentence_transformers_dense_max_abs_diff"] = max(
            _max_diff(e[i], row["outputs"]["embedding"]) for i, row in enumerate(items))
    return items, checks


# --------------------------------------------------------------------------------------
def remote_code(folder: Path, ref: dict, dtype="f64", batch_check=False):
    """NomicBERT / GTE "new": no transformers class; hand-written forward on the safetensors."""
    fam = ref["family"]
    fwd = {"nomic_bert": L.nomic_forward, "gte": L.gte_forward}[fam]
    cfg = json.loads((folder / "config.json").read_text())
    tdt = torch.float64 if dtype == "f64" else torch.float32
    sd = {k: v.to(tdt) for k, v in load_file(str(folder / "model.safetensors")).items()}
    max_len = ref["max_length"]
    hf_tok, raw = L.hf_tokenizer(folder), L.raw_tokenizer(folder, max_len)
    items, checks, alt_worst = [], {}, 0.0
    with torch.no_grad():
        for it in ref["items"]:
            inputs = L.encode(hf_tok, raw, it["text"], None, max_len, True)
            h = fwd(sd, cfg, inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])[0]
            h_alt = fwd(sd, cfg, inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], alt=True)[0]
            alt_worst = max(alt_worst, _max_diff(h.numpy(), h_alt.numpy()))
            out = {"tokens": L.to_list(h), **{k: L.to_list(v) for k, v in L.pooled(h).items()}}
            out["embedding"] = L.to_list(L.apply_st_pipeline_manually(folder, h[None], inputs["attention_mask"])[0])
            items.append({"input_ids": inputs["input_ids"][0].tolist(), "token_type_ids": inputs["token_type_ids"][0].tolist(),
                          "outputs": out})
        checks["independent_formulation_max_abs_diff"] = alt_worst
        if batch_check:
            texts = [it["text"] for it in ref["items"]]
            enc = hf_tok(texts, padding=True, return_tensors="pt")
            hb = fwd(sd, cfg, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
            checks["padded_batch_max_abs_diff"] = max(
                _max_diff(hb[i][enc["attention_mask"][i].bool()].numpy(), row["outputs"]["tokens"]) for i, row in enumerate(items))
    return items, checks


# --------------------------------------------------------------------------------------
def qwen3_reranker(folder: Path, ref: dict, dtype="f64", batch_check=False):
    """Qwen3-Reranker: score = sigmoid(logit[yes] - logit[no]) at the LAST position of
    prefix_ids + encode(format(instruction, query, doc)) + suffix_ids, every part tokenized with
    add_special_tokens=False (the post-processor's <|endoftext|> is NOT appended)."""
    hf_tok = L.hf_tokenizer(folder)
    raw = Tokenizer_no_pad(folder)
    pr = ref["prompt"]
    prefix_ids = raw.encode(pr["prefix"], add_special_tokens=False).ids
    suffix_ids = raw.encode(pr["suffix"], add_special_tokens=False).ids
    assert prefix_ids == hf_tok.encode(pr["prefix"], add_special_tokens=False)
    assert suffix_ids == hf_tok.encode(pr["suffix"], add_special_tokens=False)
    yes_id, no_id = ref["yes_token_id"], ref["no_token_id"]
    assert hf_tok.convert_tokens_to_ids("yes") == yes_id and hf_tok.convert_tokens_to_ids("no") == no_id
    checks, items, worst_head, concat_differs = {}, [], 0.0, 0
    with _ctx(dtype), torch.no_grad():
        model = _prep(transformers.AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager"), dtype)
        W = model.get_output_embeddings().weight
        assert W.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "LM head must be tied"
        for it in ref["items"]:
            middle = pr["template"].format(instruction=it["instruction"], query=it["query"], doc=it["document"])
            mid_ids = raw.encode(middle, add_special_tokens=False).ids
            assert mid_ids == hf_tok.encode(middle, add_special_tokens=False)
            ids = prefix_ids + mid_ids + suffix_ids
            concat_differs += raw.encode(pr["prefix"] + middle + pr["suffix"], add_special_tokens=False).ids != ids
            assert len(ids) <= ref["max_length"]
            x = torch.tensor([ids])
            out = model(input_ids=x, output_hidden_states=True)
            h = model.model(input_ids=x).last_hidden_state[0]
            last = out.logits[0, -1]
            ly, ln = float(last[yes_id]), float(last[no_id])
            head = float(h[-1] @ (W[yes_id] - W[no_id]))
            worst_head = max(worst_head, abs(head - (ly - ln)))
            items.append({"input_ids": ids, "outputs": {
                "tokens": L.to_list(h), "last": L.to_list(h[-1]),
                "yes_no_logits": {"yes": ly, "no": ln},
                "logits": [ly - ln], "scores": [1.0 / (1.0 + np.exp(-(ly - ln)))]}})
        checks["one_label_head_equivalence_max_abs_diff"] = worst_head
        # informational: does tokenizing the whole prompt string at once give the same ids?
        checks["whole_prompt_string_tokenization_mismatching_items"] = concat_differs
    return items, checks


def Tokenizer_no_pad(folder: Path):
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(folder / "tokenizer.json"))
    t.no_padding()
    t.no_truncation()
    return t


KINDS = {"encoder": encoder, "seqcls": seqcls, "splade": splade, "bge_m3": bge_m3, "remote_code": remote_code,
         "qwen3_reranker": qwen3_reranker}


def compute(folder: Path, ref: dict, dtype="f64", batch_check=False):
    return KINDS[ref["reference_kind"]](folder, ref, dtype=dtype, batch_check=batch_check)
