"""A gRPC client for spotinfer's tei.v1 API, generated at run time from proto/tei.proto with
grpcio-tools (nothing generated is kept in the repository). Prints one JSON object.

Usage: python grpc_client.py TARGET SCENARIO [ARGS_JSON]
TARGET is host:port. SCENARIO is one of: info, embedder, sparse, reranker, classifier, overload,
drain (see each function). Errors are reported as their gRPC code names.
"""
import json
import os
import queue
import signal
import sys
import tempfile
import time
import urllib.request

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generate():
    out = tempfile.mkdtemp(prefix="tei-grpc-")
    proto_dir = os.path.join(ROOT, "proto")
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(proto_dir, "tei.proto"),
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, out)


generate()
import tei_pb2 as pb  # noqa: E402
import tei_pb2_grpc as rpc  # noqa: E402

target, scenario = sys.argv[1], sys.argv[2]
args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
channel = grpc.insecure_channel(target)
grpc.channel_ready_future(channel).result(timeout=30)
TIMEOUT = 60


def code_of(call):
    """Runs `call`; its result, or {"code": NAME} for a gRPC error."""
    try:
        return call()
    except grpc.RpcError as e:
        return {"code": e.code().name, "message": e.details()}


def stream_codes(responses, convert):
    """Reads a response stream to its end: the answers and how it ended."""
    out = []
    try:
        for r in responses:
            out.append(convert(r))
        return {"answers": out, "code": "OK"}
    except grpc.RpcError as e:
        return {"answers": out, "code": e.code().name, "message": e.details()}


def meta(m):
    return {"compute_tokens": m.compute_tokens, "compute_chars": m.compute_chars,
            "total_time_ns": m.total_time_ns}


def info():
    i = rpc.InfoStub(channel).Info(pb.InfoRequest(), timeout=TIMEOUT)
    return {
        "model_id": i.model_id,
        "model_type": pb.ModelType.Name(i.model_type),
        "max_concurrent_requests": i.max_concurrent_requests,
        "max_input_length": i.max_input_length,
        "max_client_batch_size": i.max_client_batch_size,
        "version": i.version,
    }


def vec(r):
    return list(r.embeddings)


def embedder():
    """Every Embed and Tokenize method, unary and streaming, plus the errors of the others."""
    texts = args["texts"]
    embed = rpc.EmbedStub(channel)
    tok = rpc.TokenizeStub(channel)
    unary = [embed.Embed(pb.EmbedRequest(inputs=t), timeout=TIMEOUT) for t in texts]
    all_unary = [embed.EmbedAll(pb.EmbedAllRequest(inputs=t), timeout=TIMEOUT) for t in texts]
    tokens = lambda r: [
        {"id": t.id, "text": t.text, "special": t.special,
         "start": t.start if t.HasField("start") else None,
         "stop": t.stop if t.HasField("stop") else None}
        for t in r.tokens
    ]
    return {
        "info": info(),
        "embed": [vec(r) for r in unary],
        "metadata": meta(unary[0].metadata),
        "embed_dims": vec(embed.Embed(
            pb.EmbedRequest(inputs=texts[0], normalize=False, dimensions=4), timeout=TIMEOUT)),
        "embed_stream": stream_codes(
            embed.EmbedStream(iter([pb.EmbedRequest(inputs=t) for t in texts]), timeout=TIMEOUT),
            vec),
        "embed_all": [[list(t.embeddings) for t in r.token_embeddings] for r in all_unary],
        "embed_all_stream": stream_codes(
            embed.EmbedAllStream(iter([pb.EmbedAllRequest(inputs=t) for t in texts]),
                                 timeout=TIMEOUT),
            lambda r: [list(t.embeddings) for t in r.token_embeddings]),
        "tokenize": [tokens(tok.Tokenize(pb.EncodeRequest(inputs=t, add_special_tokens=True),
                                         timeout=TIMEOUT)) for t in texts],
        "tokenize_stream": stream_codes(
            tok.TokenizeStream(iter([pb.EncodeRequest(inputs=t, add_special_tokens=True)
                                     for t in texts]), timeout=TIMEOUT),
            tokens),
        "decode": tok.Decode(pb.DecodeRequest(ids=args["ids"], skip_special_tokens=True),
                             timeout=TIMEOUT).text,
        "decode_stream": stream_codes(
            tok.DecodeStream(iter([pb.DecodeRequest(ids=args["ids"], skip_special_tokens=True)]),
                             timeout=TIMEOUT),
            lambda r: r.text),
        "errors": {
            "embed_empty": code_of(lambda: embed.Embed(pb.EmbedRequest(inputs=""),
                                                       timeout=TIMEOUT)),
            "embed_stream_empty": stream_codes(
                embed.EmbedStream(iter([pb.EmbedRequest(inputs=texts[0]),
                                        pb.EmbedRequest(inputs="")]), timeout=TIMEOUT),
                vec),
            "embed_bad_dimensions": code_of(lambda: embed.Embed(
                pb.EmbedRequest(inputs=texts[0], dimensions=100000), timeout=TIMEOUT)),
            "embed_sparse": code_of(lambda: embed.EmbedSparse(
                pb.EmbedSparseRequest(inputs=texts[0]), timeout=TIMEOUT)),
            "predict": code_of(lambda: rpc.PredictStub(channel).Predict(
                pb.PredictRequest(inputs=texts[0]), timeout=TIMEOUT)),
            "rerank": code_of(lambda: rpc.RerankStub(channel).Rerank(
                pb.RerankRequest(query="q", texts=["a"]), timeout=TIMEOUT)),
        },
    }


def sparse():
    texts = args["texts"]
    embed = rpc.EmbedStub(channel)
    conv = lambda r: [[v.index, v.value] for v in r.sparse_embeddings]
    return {
        "info": info(),
        "embed_sparse": [conv(embed.EmbedSparse(pb.EmbedSparseRequest(inputs=t),
                                                timeout=TIMEOUT)) for t in texts],
        "embed_sparse_stream": stream_codes(
            embed.EmbedSparseStream(iter([pb.EmbedSparseRequest(inputs=t) for t in texts]),
                                    timeout=TIMEOUT),
            conv),
    }


def ranks(r):
    return [{"index": x.index, "score": x.score,
             "text": x.text if x.HasField("text") else None} for x in r.ranks]


def reranker():
    query, texts = args["query"], args["texts"]
    stub = rpc.RerankStub(channel)
    return {
        "info": info(),
        "rerank": ranks(stub.Rerank(pb.RerankRequest(query=query, texts=texts, return_text=True),
                                    timeout=TIMEOUT)),
        "rerank_raw": ranks(stub.Rerank(pb.RerankRequest(query=query, texts=texts,
                                                         raw_scores=True), timeout=TIMEOUT)),
        "rerank_stream": ranks(stub.RerankStream(
            iter([pb.RerankStreamRequest(query=query, text=t, return_text=True) for t in texts]),
            timeout=TIMEOUT)),
        "errors": {
            "rerank_no_texts": code_of(lambda: stub.Rerank(
                pb.RerankRequest(query=query, texts=[]), timeout=TIMEOUT)),
            "rerank_stream_empty": code_of(lambda: stub.RerankStream(iter([]), timeout=TIMEOUT)),
            "embed": code_of(lambda: rpc.EmbedStub(channel).Embed(
                pb.EmbedRequest(inputs=query), timeout=TIMEOUT)),
        },
    }


def preds(r):
    return [{"label": p.label, "score": p.score} for p in r.predictions]


def classifier():
    texts, pairs = args["texts"], args["pairs"]
    stub = rpc.PredictStub(channel)
    return {
        "info": info(),
        "predict": [preds(stub.Predict(pb.PredictRequest(inputs=t), timeout=TIMEOUT))
                    for t in texts],
        "predict_raw": preds(stub.Predict(pb.PredictRequest(inputs=texts[0], raw_scores=True),
                                          timeout=TIMEOUT)),
        "predict_pair": [preds(stub.PredictPair(pb.PredictPairRequest(inputs=p),
                                                timeout=TIMEOUT)) for p in pairs],
        "predict_stream": stream_codes(
            stub.PredictStream(iter([pb.PredictRequest(inputs=t) for t in texts]),
                               timeout=TIMEOUT),
            preds),
        "predict_pair_stream": stream_codes(
            stub.PredictPairStream(iter([pb.PredictPairRequest(inputs=p) for p in pairs]),
                                   timeout=TIMEOUT),
            preds),
        "errors": {
            "pair_of_three": code_of(lambda: stub.PredictPair(
                pb.PredictPairRequest(inputs=["a", "b", "c"]), timeout=TIMEOUT)),
            "rerank": code_of(lambda: rpc.RerankStub(channel).Rerank(
                pb.RerankRequest(query="q", texts=["a"]), timeout=TIMEOUT)),
        },
    }


def overload():
    """`n` concurrent Embed calls against a small --max-concurrent-requests: each call's code and
    its retry metadata."""
    embed = rpc.EmbedStub(channel)
    futures = [embed.Embed.future(pb.EmbedRequest(inputs=f"call {i}"), timeout=TIMEOUT)
               for i in range(args["n"])]
    out = []
    for f in futures:
        try:
            f.result()
            out.append({"code": "OK"})
        except grpc.RpcError as e:
            md = dict(e.trailing_metadata() or ())
            out.append({"code": e.code().name,
                        "retry_after": md.get("retry-after"),
                        "has_details": "grpc-status-details-bin" in md})
    return {"calls": out}


def inflight(metrics_url):
    text = urllib.request.urlopen(f"{metrics_url}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("inference_requests_inflight "):
            return float(line.split()[1])
    return 0.0


def drain():
    """An EmbedStream that is open when the server gets SIGTERM: one message answered first,
    then `n` more sent; once the server counts them in flight, SIGTERM. Reads the stream to
    its end and reports how many answers came and how the stream ended."""
    n = args["n"]
    requests = queue.Queue()

    def send():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    responses = rpc.EmbedStub(channel).EmbedStream(send(), timeout=TIMEOUT)
    requests.put(pb.EmbedRequest(inputs="first message"))
    answers = [len(next(responses).embeddings)]
    for i in range(n):
        requests.put(pb.EmbedRequest(inputs=f"message {i} before the drain"))
    # Bounded: at most 2000 looks over at most 30 s.
    deadline = time.monotonic() + 30
    seen = 0.0
    for _ in range(2000):
        seen = inflight(args["metrics"])
        if seen >= n or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    if seen < n:
        raise SystemExit(f"the server never had the {n} messages in flight (saw {seen})")
    os.kill(args["pid"], signal.SIGTERM)
    ended = stream_codes(responses, lambda r: len(r.embeddings))
    requests.put(None)
    return {"answers": answers + ended["answers"], "code": ended["code"],
            "message": ended.get("message"), "in_flight_at_sigterm": seen}


print(json.dumps({
    "info": info,
    "embedder": embedder,
    "sparse": sparse,
    "reranker": reranker,
    "classifier": classifier,
    "overload": overload,
    "drain": drain,
}[scenario]()))
