"""Real client SDKs, unchanged, against a running spotinfer: prints one JSON object per call.

Usage: python clients.py BASE_URL CALL [ARGS_JSON]
CALL is one of: hf_feature_extraction, hf_sentence_similarity, hf_text_classification,
cohere_rerank_v1, cohere_rerank_v2, openai_embeddings.
"""
import json
import sys

base, call = sys.argv[1], sys.argv[2]
args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}

if call.startswith("hf_"):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=base)
    if call == "hf_feature_extraction":
        out = client.feature_extraction(args["text"]).tolist()
    elif call == "hf_sentence_similarity":
        out = client.sentence_similarity(args["sentence"], other_sentences=args["others"])
    elif call == "hf_text_classification":
        # Against TEI's flat /predict list the client keeps only the top element.
        res = client.text_classification(args["text"])
        res = res if isinstance(res, list) else [res]
        out = [{"label": e.label, "score": e.score} for e in res]
elif call.startswith("cohere_"):
    import cohere

    if call == "cohere_rerank_v1":
        r = cohere.Client(api_key="not-needed", base_url=base).rerank(
            model="spotinfer", query=args["query"], documents=args["documents"],
            top_n=args.get("top_n"), return_documents=True,
        )
    else:
        r = cohere.ClientV2(api_key="not-needed", base_url=base).rerank(
            model="spotinfer", query=args["query"], documents=args["documents"], top_n=args.get("top_n"),
        )
    out = [{"index": x.index, "relevance_score": x.relevance_score} for x in r.results]
elif call == "openai_embeddings":
    from openai import OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0)
    r = client.embeddings.create(model="spotinfer", input=args["input"])
    out = [d.embedding for d in r.data]
else:
    raise SystemExit(f"unknown call {call}")
print(json.dumps(out))
