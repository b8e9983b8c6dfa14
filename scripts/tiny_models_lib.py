"""Shared helpers for scripts/make_tiny_models.py and scripts/check_fixtures.py.

* float64 "exactness" patches for transformers' decoder-style code paths,
* hand-written reference forwards for the remote-code families (NomicBERT, Alibaba GTE "new"),
* sentence-transformers folder writers (the Hub's file formats),
* compute_items(): load a fixture FOLDER from disk and compute every reference output.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

# ======================================================================================
# formatting
# ======================================================================================


def sig(values, digits: int = 9):
    """Round floats (or nested lists of floats) to `digits` significant digits."""
    if isinstance(values, (list, tuple)):
        return [sig(v, digits) for v in values]
    if isinstance(values, np.ndarray):
        return sig(values.tolist(), digits)
    return float(f"{float(values):.{digits}g}")


def _is_scalar_list(x) -> bool:
    return isinstance(x, list) and all(isinstance(v, (int, float, bool, str)) or v is None for v in x)


def dumps(obj, indent: int = 0, step: int = 1) -> str:
    """JSON with one line per list of scalars (vectors and id lists stay compact)."""
    pad = " " * (indent + step)
    end = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad}{json.dumps(str(k), ensure_ascii=False)}: {dumps(v, indent + step, step)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(obj, list):
        if _is_scalar_list(obj):
            return "[" + ", ".join(json.dumps(v) for v in obj) + "]"
        if not obj:
            return "[]"
        return "[\n" + ",\n".join(pad + dumps(v, indent + step, step) for v in obj) + "\n" + end + "]"
    return json.dumps(obj, ensure_ascii=False)


def write_json(path: Path, obj, compact: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(obj) if compact else json.dumps(obj, ensure_ascii=False, indent=2)
    path.write_text(text + "\n", encoding="utf-8")


def round_outputs(outputs: dict) -> dict:
    out = {}
    for k, v in outputs.items():
        if k == "sparse":
            out[k] = {"indices": [int(i) for i in v["indices"]], "values": sig(v["values"])}
        elif k == "yes_no_logits":
            out[k] = {kk: sig(vv) for kk, vv in v.items()}
        else:
            out[k] = sig(v)
    return out


# ======================================================================================
# random weights
# ======================================================================================


def randomize_(model: torch.nn.Module, gen: torch.Generator, norm_offset: float = 1.0, std: float = 0.2) -> None:
    """Re-draw every parameter with a larger spread than the 0.02 init so attention is far from
    uniform, activations see inputs of order 1 (erf vs tanh GELU differ), and norm gains / biases
    are non-trivial (catches swapped or ignored tensors). Norm weights: norm_offset + 0.2*N
    (Gemma's RMSNorm multiplies by 1 + w, so it uses norm_offset=0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            low = name.lower()
            if p.ndim == 1 and ("norm" in low or "layernorm" in low or low.endswith("ln.weight")) and name.endswith("weight"):
                p.copy_(norm_offset + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))


# ======================================================================================
# float64 exactness for transformers' decoder-style code
# ======================================================================================
# transformers computes RMSNorm, RoPE tables and the eager softmax in float32 even when the
# model is float64 (x.to(torch.float32), .float(), softmax(dtype=torch.float32)). Under
# exact_float64() those steps stay in float64 when the input is float64 (nothing changes for
# float32 inputs), and promote_float64_() recomputes the inverse RoPE frequencies in float64.

_ORIG: dict = {}


def _rms_forward(self, hidden_states):
    if hidden_states.dtype != torch.float64:
        return _ORIG[type(self)](self, hidden_states)
    var = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(var + self.variance_epsilon))


def _gemma_rms_forward(self, x):
    if x.dtype != torch.float64:
        return _ORIG[type(self)](self, x)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)


def _rope_forward(self, x, position_ids):
    if self.inv_freq.dtype != torch.float64:
        return _ORIG[type(self)](self, x, position_ids)
    inv = self.inv_freq[None, :, None].expand(position_ids.shape[0], -1, 1).to(x.device)
    pos = position_ids[:, None, :].to(torch.float64)
    freqs = (inv @ pos).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def _patch_targets():
    from transformers.models.gemma3 import modeling_gemma3 as g3
    from transformers.models.llama import modeling_llama as ll
    from transformers.models.mistral import modeling_mistral as mi
    from transformers.models.modernbert import modeling_modernbert as mb
    from transformers.models.qwen2 import modeling_qwen2 as q2
    from transformers.models.qwen3 import modeling_qwen3 as q3

    rms = [q3.Qwen3RMSNorm, q2.Qwen2RMSNorm, mi.MistralRMSNorm, ll.LlamaRMSNorm]
    rope = [q3.Qwen3RotaryEmbedding, q2.Qwen2RotaryEmbedding, mi.MistralRotaryEmbedding, ll.LlamaRotaryEmbedding,
            g3.Gemma3RotaryEmbedding, mb.ModernBertRotaryEmbedding]
    return rms, [g3.Gemma3RMSNorm], rope


@contextlib.contextmanager
def exact_float64():
    rms, grms, rope = _patch_targets()
    orig_softmax = torch.nn.functional.softmax

    def softmax(input, dim=None, _stacklevel=3, dtype=None):  # noqa: A002
        if dtype is torch.float32 and input.dtype == torch.float64:
            dtype = torch.float64
        return orig_softmax(input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

    for cls in rms + grms + rope:
        _ORIG[cls] = cls.forward
    try:
        torch.nn.functional.softmax = softmax
        for cls in rms:
            cls.forward = _rms_forward
        for cls in grms:
            cls.forward = _gemma_rms_forward
        for cls in rope:
            cls.forward = _rope_forward
        yield
    finally:
        torch.nn.functional.softmax = orig_softmax
        for cls in rms + grms + rope:
            cls.forward = _ORIG[cls]


def _inv_freq64(module) -> torch.Tensor:
    cfg = module.config
    n = module.inv_freq.shape[0]
    dim = 2 * n
    base = float(cfg.rope_theta)
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    rtype = getattr(module, "rope_type", "default")
    if rtype == "llama3":
        rs = cfg.rope_scaling
        factor, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        out = torch.where(wl > lo_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wl < hi_wl) * ~(wl > lo_wl)
        inv = torch.where(medium, smoothed, out)
    elif rtype != "default":
        raise ValueError(f"rope type {rtype} not handled")
    return inv


def promote_float64_(model: torch.nn.Module) -> torch.nn.Module:
    """model.double() plus float64 RoPE inverse frequencies and Gemma's float64 embed scale."""
    model.double()
    for mod in model.modules():
        if hasattr(mod, "inv_freq") and hasattr(mod, "rope_type"):
            inv = _inv_freq64(mod)
            assert torch.allclose(inv, mod.inv_freq.to(torch.float64), rtol=1e-6, atol=0), (type(mod), inv, mod.inv_freq)
            mod.inv_freq = inv
            mod.original_inv_freq = inv
        if type(mod).__name__ == "Gemma3TextScaledWordEmbedding":
            mod.embed_scale = torch.tensor(float(mod.embedding_dim) ** 0.5, dtype=torch.float64)
    return model


# ======================================================================================
# hand-written forwards for remote-code families
# ======================================================================================


def _ln(x, w, b, eps):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(seq_len: int, dim: int, base: float, scale_div: float = 1.0, dtype=torch.float64):
    """Non-interleaved (GPT-NeoX / rotate_half) RoPE tables, float64: inv_freq_k = base^(-2k/dim) / scale_div."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)) / scale_div
    t = torch.arange(seq_len, dtype=torch.float64)
    freqs = torch.outer(t, inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _attention(q, k, v, mask_bias, scale):
    # q, k, v: (B, H, L, D); mask_bias: (B, 1, 1, L) additive
    s = torch.matmul(q, k.transpose(-1, -2)) * scale + mask_bias
    return torch.matmul(torch.softmax(s, dim=-1), v)


def _mask_bias(attention_mask, dtype):
    m = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - m) * torch.finfo(dtype).min


def nomic_forward(sd: dict, cfg: dict, input_ids, attention_mask=None, token_type_ids=None, alt: bool = False):
    """NomicBERT (nomic-embed-text-v1/v1.5, remote code `modeling_hf_nomic_bert.py`), post-norm only:
    x = emb_ln(word_emb[ids] + type_emb[tt]);  per layer:
      qkv = x Wqkv^T (no bias) viewed as (3, H, D);  RoPE (rotate_half, base rotary_emb_base, full head dim)
      x = norm1(x + out_proj(softmax(q k^T / sqrt(D) + mask) v))
      x = norm2(x + fc2(fc11(x) * silu(fc12(x))))
    `alt=True` computes the same thing a second, independent way (complex-number RoPE, SDPA)."""
    assert not cfg.get("prenorm") and cfg["activation_function"] == "swiglu" and cfg["rotary_emb_fraction"] == 1.0
    assert not cfg.get("rotary_emb_interleaved") and not cfg.get("rotary_scaling_factor")
    dt = sd["embeddings.word_embeddings.weight"].dtype
    B, L = input_ids.shape
    H, E = cfg["n_head"], cfg["n_embd"]
    D = E // H
    eps = cfg["layer_norm_epsilon"]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    x = sd["embeddings.word_embeddings.weight"][input_ids] + sd["embeddings.token_type_embeddings.weight"][token_type_ids]
    x = _ln(x, sd["emb_ln.weight"], sd["emb_ln.bias"], eps)
    bias = _mask_bias(attention_mask, dt)
    cos, sin = rope_cos_sin(L, D, float(cfg["rotary_emb_base"]), dtype=dt)
    for i in range(cfg["n_layer"]):
        p = f"encoder.layers.{i}."
        qkv = x @ sd[p + "attn.Wqkv.weight"].T
        if cfg.get("qkv_proj_bias"):
            qkv = qkv + sd[p + "attn.Wqkv.bias"]
        qkv = qkv.view(B, L, 3, H, D)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # (B, H, L, D)
        if not alt:
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            ctx = _attention(q, k, v, bias, 1.0 / math.sqrt(D))
        else:
            q, k = _rope_complex(q, float(cfg["rotary_emb_base"])), _rope_complex(k, float(cfg["rotary_emb_base"]))
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        ctx = ctx.transpose(1, 2).reshape(B, L, E)
        a = ctx @ sd[p + "attn.out_proj.weight"].T
        if cfg.get("qkv_proj_bias"):
            a = a + sd[p + "attn.out_proj.bias"]
        x = _ln(x + a, sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        y = x @ sd[p + "mlp.fc11.weight"].T
        g = x @ sd[p + "mlp.fc12.weight"].T
        if cfg.get("mlp_fc1_bias"):
            y, g = y + sd[p + "mlp.fc11.bias"], g + sd[p + "mlp.fc12.bias"]
        m = (y * F.silu(g)) @ sd[p + "mlp.fc2.weight"].T
        if cfg.get("mlp_fc2_bias"):
            m = m + sd[p + "mlp.fc2.bias"]
        x = _ln(x + m, sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
    return x


def _rope_complex(x, base, scale_div: float = 1.0):
    """RoPE via complex multiplication: pair (j, j + D/2) rotated by angle pos * inv_freq_j."""
    B, H, L, D = x.shape
    h = D // 2
    inv = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)) / scale_div
    ang = torch.arange(L, dtype=torch.float64)[:, None] * inv[None, :]
    rot = torch.polar(torch.ones_like(ang), ang)
    z = torch.complex(x[..., :h].to(torch.float64), x[..., h:].to(torch.float64)) * rot
    return torch.cat((z.real, z.imag), dim=-1).to(x.dtype)


def gte_forward(sd: dict, cfg: dict, input_ids, attention_mask=None, token_type_ids=None, alt: bool = False):
    """Alibaba GTE "new" (remote code Alibaba-NLP/new-impl `modeling.py`, NewModel), post-norm:
    x = LayerNorm(word_emb[ids] + type_emb[tt])  (type_vocab_size > 0; no position table: RoPE)
    per layer: q|k|v = split(x Wqkv^T + b);  RoPE (rotate_half) with base rope_theta, NTK-scaled when
      rope_scaling = {type: ntk, factor: f}: base' = base * f, inv_freq /= f^(2/D);
      x = attn_ln(x + o_proj(softmax(q k^T / sqrt(D) + mask) v));
      up|gate = split(x W_up_gate^T) (no bias);  x = mlp_ln(x + down_proj(gelu(gate) * up))."""
    assert cfg["position_embedding_type"] == "rope" and cfg["layer_norm_type"] == "layer_norm"
    assert not cfg.get("logn_attention_scale") and cfg["hidden_act"] == "gelu"
    dt = sd["embeddings.word_embeddings.weight"].dtype
    B, L = input_ids.shape
    H, E, I = cfg["num_attention_heads"], cfg["hidden_size"], cfg["intermediate_size"]
    D = E // H
    eps = cfg["layer_norm_eps"]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    x = sd["embeddings.word_embeddings.weight"][input_ids]
    if cfg.get("type_vocab_size", 0) > 0:
        x = x + sd["embeddings.token_type_embeddings.weight"][token_type_ids]
    x = _ln(x, sd["embeddings.LayerNorm.weight"], sd["embeddings.LayerNorm.bias"], eps)
    base, div = float(cfg["rope_theta"]), 1.0
    rs = cfg.get("rope_scaling")
    if rs:
        assert rs["type"] == "ntk" and rs.get("mixed_b") is None
        base, div = base * rs["factor"], rs["factor"] ** (2.0 / D)
    cos, sin = rope_cos_sin(L, D, base, div, dtype=dt)
    bias = _mask_bias(attention_mask, dt)
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        qkv = x @ sd[p + "attention.qkv_proj.weight"].T + sd[p + "attention.qkv_proj.bias"]
        q, k, v = (t.reshape(B, L, H, D).transpose(1, 2) for t in qkv.split(E, dim=-1))
        if not alt:
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            ctx = _attention(q, k, v, bias, 1.0 / math.sqrt(D))
        else:
            q, k = _rope_complex(q, base, div), _rope_complex(k, base, div)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        ctx = ctx.transpose(1, 2).reshape(B, L, E)
        a = ctx @ sd[p + "attention.o_proj.weight"].T + sd[p + "attention.o_proj.bias"]
        x = _ln(x + a, sd[p + "attn_ln.weight"], sd[p + "attn_ln.bias"], eps)
        up, gate = (x @ sd[p + "mlp.up_gate_proj.weight"].T).split(I, dim=-1)
        gate = F.gelu(gate) if not alt else 0.5 * gate * (1.0 + torch.erf(gate / math.sqrt(2.0)))
        m = (gate * up) @ sd[p + "mlp.down_proj.weight"].T + sd[p + "mlp.down_proj.bias"]
        x = _ln(x + m, sd[p + "mlp_ln.weight"], sd[p + "mlp_ln.bias"], eps)
    return x


# ======================================================================================
# sentence-transformers files (the Hub's formats)
# ======================================================================================
ST_TYPES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Dense": "sentence_transformers.models.Dense",
    "Normalize": "sentence_transformers.models.Normalize",
    "MLMTransformer": "sentence_transformers.sparse_encoder.models.MLMTransformer",
    "SpladePooling": "sentence_transformers.sparse_encoder.models.SpladePooling",
}


def write_st_files(stage: Path, modules: list[tuple[str, str]], max_seq_length: int, *, prompts=None,
                   default_prompt_name=None, similarity="cosine", model_type=None) -> None:
    import sentence_transformers

    write_json(stage / "modules.json", [
        {"idx": i, "name": str(i), "path": path, "type": ST_TYPES[kind]} for i, (kind, path) in enumerate(modules)
    ])
    write_json(stage / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    cfg = {
        "__version__": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "pytorch": torch.__version__,
        },
        "prompts": prompts or {},
        "default_prompt_name": default_prompt_name,
        "similarity_fn_name": similarity,
    }
    if model_type:
        cfg["model_type"] = model_type
    write_json(stage / "config_sentence_transformers.json", cfg)


def write_pooling(dir_: Path, dim: int, mode: str) -> None:
    assert mode in ("cls", "mean", "max", "lasttoken")
    write_json(dir_ / "config.json", {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": mode == "lasttoken",
        "include_prompt": True,
    })


ACTIVATIONS = {"tanh": "torch.nn.modules.activation.Tanh", "identity": "torch.nn.modules.linear.Identity"}


def write_dense(dir_: Path, weight: torch.Tensor, bias: torch.Tensor | None, activation: str) -> None:
    write_json(dir_ / "config.json", {
        "in_features": int(weight.shape[1]),
        "out_features": int(weight.shape[0]),
        "bias": bias is not None,
        "activation_function": ACTIVATIONS[activation],
    })
    tensors = {"linear.weight": weight.contiguous().float()}
    if bias is not None:
        tensors["linear.bias"] = bias.contiguous().float()
    save_file(tensors, str(dir_ / "model.safetensors"), metadata={"format": "pt"})


def read_st_pipeline(folder: Path) -> list[dict]:
    """modules.json -> [{kind, path, config}] (the parts a Rust loader reads)."""
    mods = []
    p = folder / "modules.json"
    if not p.exists():
        return mods
    for m in json.loads(p.read_text()):
        kind = m["type"].rsplit(".", 1)[-1]
        conf = {}
        cpath = folder / m["path"] / "config.json"
        if m["path"] and cpath.exists():
            conf = json.loads(cpath.read_text())
        mods.append({"kind": kind, "path": m["path"], "config": conf})
    return mods


def apply_st_pipeline_manually(folder: Path, token_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The pipeline after the Transformer, written out by hand (independent of sentence-transformers):
    Pooling (cls | mean | max | lasttoken over mask), Dense (x W^T + b, activation), Normalize (L2)."""
    x = None
    for m in read_st_pipeline(folder):
        c = m["config"]
        if m["kind"] in ("Transformer", "MLMTransformer"):
            continue
        if m["kind"] == "Pooling":
            mf = mask.to(token_emb.dtype)[..., None]
            if c.get("pooling_mode_cls_token"):
                x = token_emb[:, 0]
            elif c.get("pooling_mode_mean_tokens"):
                x = (token_emb * mf).sum(1) / mf.sum(1)
            elif c.get("pooling_mode_lasttoken"):
                idx = mask.sum(1) - 1
                x = token_emb[torch.arange(token_emb.shape[0]), idx]
            else:
                raise ValueError(c)
        elif m["kind"] == "Dense":
            sd = load_file(str(folder / m["path"] / "model.safetensors"))
            x = x @ sd["linear.weight"].to(x.dtype).T
            if "linear.bias" in sd:
                x = x + sd["linear.bias"].to(x.dtype)
            act = c["activation_function"]
            if act.endswith("Tanh"):
                x = torch.tanh(x)
            else:
                assert act.endswith("Identity"), act
        elif m["kind"] == "Normalize":
            x = F.normalize(x, p=2, dim=-1)
        else:
            raise ValueError(m)
    return x


# ======================================================================================
# tokenization helpers
# ======================================================================================


def raw_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    """tokenizer.json as a Rust loader sees it, with the shipped truncation/padding overridden."""
    t = Tokenizer.from_file(str(folder / "tokenizer.json"))
    t.no_padding()
    t.enable_truncation(max_length)
    return t


def hf_tokenizer(folder: Path):
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert tok.is_fast
    return tok


def encode(hf_tok, raw_tok, text, text_pair=None, max_length=128, with_types=False):
    enc = hf_tok(text, text_pair, truncation=True, max_length=max_length, return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    r = raw_tok.encode(text, text_pair) if text_pair is not None else raw_tok.encode(text)
    assert r.ids == ids, (text, r.ids, ids)
    n_full = len(hf_tok(text, text_pair, truncation=False)["input_ids"])
    assert n_full == len(ids), f"text was truncated ({n_full} > {max_length}); keep test texts within limits"
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if with_types:
        tt = enc.get("token_type_ids")
        if tt is None:
            tt = torch.tensor([r.type_ids])
        assert tt[0].tolist() == r.type_ids
        inputs["token_type_ids"] = tt
    return inputs


def pooled(h: torch.Tensor) -> dict:
    """Raw pooled vectors of ONE unpadded sequence h (L, E)."""
    return {"cls": h[0], "mean": h.mean(0), "last": h[-1]}


def to_list(t: torch.Tensor):
    return t.detach().to(torch.float64).cpu().numpy().tolist()
