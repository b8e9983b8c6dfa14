"""Cohere embed (v1 and v2) through the official `cohere` SDK against a running spotinfer, with
every `embedding_types` value checked against sentence-transformers' `quantize_embeddings`.

Usage: python cohere_embed.py BASE_URL MODE ST_WHEEL [ARGS_JSON]
MODE `minilm`: ARGS has `reference` (minilm_reference.json) and `ranges` (the server's
--quantization-ranges file). MODE `prompts`: a model with sentence-transformers prompts, no
ranges file (the default per-vector range). Asserts; prints a JSON summary of what it checked.
"""
import base64
import json
import sys
import types
import urllib.request
import zipfile

import numpy as np

import cohere
from cohere.core.api_error import ApiError

base, mode, wheel = sys.argv[1], sys.argv[2], sys.argv[3]
args = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
ALL_TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
checked = []


def load_quantize_embeddings(wheel_path):
    """sentence_transformers/quantization.py, unchanged, from the pinned wheel. Its only
    non-numpy import is `from torch import Tensor` (for isinstance checks on tensors); numpy
    arrays are passed, so a stand-in class keeps torch out of the test environment."""
    src = zipfile.ZipFile(wheel_path).read("sentence_transformers/quantization.py").decode()
    if "torch" not in sys.modules:
        torch = types.ModuleType("torch")
        torch.Tensor = type("Tensor", (), {})
        sys.modules["torch"] = torch
    mod = types.ModuleType("st_quantization")
    exec(compile(src, "sentence_transformers/quantization.py", "exec"), mod.__dict__)
    return mod.quantize_embeddings


quantize_embeddings = load_quantize_embeddings(wheel)


def post(path, body):
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def f32(rows):
    return np.array(rows, dtype=np.float32)


def same(name, got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.array_equal(got, want), f"{name}: {np.argwhere(got != want)[:5]} differ"
    checked.append(name)


def close(name, got, want, tol=1e-6):
    """Across requests: batches differ, so the last float bits may too."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.abs(got - want).max() <= tol, f"{name}: max diff {np.abs(got - want).max()}"
    checked.append(name)


def status_of(call):
    try:
        call()
    except ApiError as e:
        return e.status_code
    return 200


def check_by_type(tag, emb, floats, ranges):
    """Every type of one by-type response against the float vectors it came with."""
    x = f32(floats)
    same(f"{tag} float", f32(emb.float_), x)
    decoded = [np.frombuffer(base64.b64decode(s), dtype="<f4") for s in emb.base64]
    same(f"{tag} base64", np.stack(decoded), x)
    same(f"{tag} binary", emb.binary, quantize_embeddings(x, "binary"))
    same(f"{tag} ubinary", emb.ubinary, quantize_embeddings(x, "ubinary"))
    for precision in ("int8", "uint8"):
        got = getattr(emb, precision)
        if ranges is not None:
            want = quantize_embeddings(x, precision, ranges=ranges)
        else:
            # The default range: each vector's own [-max|x|, max|x|].
            want = np.concatenate([
                quantize_embeddings(
                    v[None], precision,
                    ranges=np.stack([np.full_like(v, -np.abs(v).max()), np.full_like(v, np.abs(v).max())]),
                )
                for v in x
            ])
        same(f"{tag} {precision}", got, want)
    for name in ("int8", "binary"):
        assert all(-128 <= b <= 127 for row in getattr(emb, name) for b in row)
    for name in ("uint8", "ubinary"):
        assert all(0 <= b <= 255 for row in getattr(emb, name) for b in row)


v1 = cohere.Client(api_key="not-needed", base_url=base)
v2 = cohere.ClientV2(api_key="not-needed", base_url=base)

if mode == "minilm":
    ref = json.load(open(args["reference"]))
    items = [i for i in ref["items"] if not i["truncated"]]
    texts = [i["text"] for i in items]
    ranges = f32(json.load(open(args["ranges"])))

    # v1 without embedding_types: the plain float list.
    r = v1.embed(texts=texts, model="spotinfer", input_type="search_document")
    assert r.response_type == "embeddings_floats", r.response_type
    assert list(r.texts) == texts and r.id
    assert r.meta.api_version.version == "1"
    assert r.meta.billed_units.input_tokens == sum(i["num_tokens"] for i in items)
    floats = f32(r.embeddings)
    reference = f32([i["mean"] for i in items])
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    cos = (floats * reference).sum(axis=1)
    assert cos.min() > 0.9999, cos.min()
    checked.append("v1 floats vs reference")
    # binary/ubinary of the reference vectors themselves, except signs too close to zero to
    # survive the float differences between implementations.
    ref_bits = np.unpackbits(quantize_embeddings(reference, "ubinary"), axis=1)

    # v1 and v2 with every type.
    r1 = v1.embed(texts=texts, model="spotinfer", input_type="search_document", embedding_types=ALL_TYPES)
    assert r1.response_type == "embeddings_by_type", r1.response_type
    check_by_type("v1", r1.embeddings, r1.embeddings.float_, ranges)
    close("v1 by-type float = v1 floats", f32(r1.embeddings.float_), floats)
    r2 = v2.embed(texts=texts, model="spotinfer", input_type="search_query", embedding_types=ALL_TYPES)
    assert list(r2.texts) == texts and r2.meta.api_version.version == "2"
    check_by_type("v2", r2.embeddings, r2.embeddings.float_, ranges)
    close("v2 float = v1 floats (no prompts)", f32(r2.embeddings.float_), floats)
    got_bits = np.unpackbits(np.array(r2.embeddings.ubinary, dtype=np.uint8), axis=1)
    clear = np.abs(reference) > 1e-3
    same("v2 ubinary = quantize_embeddings(reference)", got_bits[clear], ref_bits[clear])
    checked.append(f"{int((~clear).sum())} near-zero reference signs skipped")

    # v2 `inputs` is the same as `texts`.
    r3 = v2.embed(
        inputs=[{"content": [{"type": "text", "text": t}]} for t in texts[:3]],
        model="spotinfer", input_type="search_query", embedding_types=["float"],
    )
    close("v2 inputs = texts", f32(r3.embeddings.float_), floats[:3])

    # v2 default types: float only.
    r4 = v2.embed(texts=texts[:2], model="spotinfer", input_type="search_query")
    close("v2 default float", f32(r4.embeddings.float_), floats[:2])
    assert r4.embeddings.int8 is None

    # output_dimension: Matryoshka truncation, then unit length.
    r5 = v2.embed(
        texts=texts, model="spotinfer", input_type="search_query", output_dimension=128,
        embedding_types=["float", "binary", "ubinary"],
    )
    cut = floats[:, :128] / np.linalg.norm(floats[:, :128], axis=1, keepdims=True)
    assert np.abs(f32(r5.embeddings.float_) - cut).max() < 1e-6
    assert len(r5.embeddings.binary[0]) == 16
    same("output_dimension binary", r5.embeddings.ubinary, quantize_embeddings(f32(r5.embeddings.float_), "ubinary"))
    # The ranges file covers 384 dimensions, not 128.
    s = status_of(lambda: v2.embed(
        texts=texts[:1], model="spotinfer", input_type="search_query", output_dimension=128,
        embedding_types=["int8"],
    ))
    assert s == 422, s
    checked.append("int8 at another width: 422")

    # truncate: NONE rejects an over-long input, START and END cut different ends.
    long_text = " ".join(f"word{i}" for i in range(400))
    s = status_of(lambda: v2.embed(texts=[long_text], model="spotinfer", input_type="search_query", truncate="NONE"))
    assert s == 422, s
    end = f32(v2.embed(texts=[long_text], model="spotinfer", input_type="search_query", truncate="END").embeddings.float_)
    start = f32(v2.embed(texts=[long_text], model="spotinfer", input_type="search_query", truncate="START").embeddings.float_)
    dflt = f32(v1.embed(texts=[long_text], model="spotinfer").embeddings)
    assert not np.allclose(end, start), "START and END gave the same vector"
    close("truncate default = END", dflt, end)
    checked.append("truncate NONE 422, START != END")

    # Bad values are 422 with a JSON body.
    s, body = post("/v2/embed", {"texts": ["a"], "input_type": "search_query", "embedding_types": ["int4"]})
    assert s == 422 and "embedding_types" in body["error"], (s, body)
    s, body = post("/v2/embed", {"texts": ["a"], "input_type": "nonsense"})
    assert s == 422 and "input_type" in body["error"], (s, body)
    s, body = post("/v1/embed", {"texts": []})
    assert s == 400, (s, body)
    checked.append("bad values")

    # The same types on TEI's /embed and OpenAI's /v1/embeddings, against floats of the same
    # four inputs (the same batch, so the same bits).
    s, four = post("/embed", {"inputs": texts[:4]})
    four = f32(four)
    s, tei_int8 = post("/embed", {"inputs": texts[:4], "embedding_type": "int8"})
    assert s == 200, tei_int8
    same("TEI /embed int8", tei_int8, quantize_embeddings(four, "int8", ranges=ranges))
    s, tei_ub = post("/embed", {"inputs": texts[:4], "embedding_type": "ubinary"})
    same("TEI /embed ubinary", tei_ub, quantize_embeddings(four, "ubinary"))
    from openai import OpenAI

    oa = OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0)
    o = oa.embeddings.create(model="spotinfer", input=texts[:4], encoding_format="uint8")
    same("OpenAI uint8", [d.embedding for d in o.data], quantize_embeddings(four, "uint8", ranges=ranges))
    o = oa.embeddings.create(model="spotinfer", input=texts[:4], encoding_format="binary")
    same("OpenAI binary", [d.embedding for d in o.data], quantize_embeddings(four, "binary"))
    # The SDK's own default (base64, decoded by the SDK) is unchanged.
    o = oa.embeddings.create(model="spotinfer", input=texts[:4])
    close("OpenAI default", f32([d.embedding for d in o.data]), four)

elif mode == "prompts":
    texts = ["What is Deep Learning?", "The quick brown fox", "Ein kurzer Satz."]
    plain = f32(v1.embed(texts=texts, model="spotinfer").embeddings)
    prompts = args["prompts"]  # input_type -> the prompt name it must select
    for input_type, prompt_name in prompts.items():
        r = v2.embed(texts=texts, model="spotinfer", input_type=input_type, embedding_types=ALL_TYPES)
        s, tei = post("/embed", {"inputs": texts, "prompt_name": prompt_name})
        assert s == 200, tei
        close(f"{input_type} = prompt {prompt_name}", f32(r.embeddings.float_), f32(tei))
        assert not np.allclose(f32(r.embeddings.float_), plain), f"{input_type} applied no prompt"
        check_by_type(f"{input_type}", r.embeddings, r.embeddings.float_, None)
        v1r = v1.embed(texts=texts, model="spotinfer", input_type=input_type)
        close(f"v1 {input_type}", f32(v1r.embeddings), f32(tei))
else:
    raise SystemExit(f"unknown mode {mode}")

print(json.dumps({"checked": checked}))
