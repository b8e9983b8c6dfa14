//! TEI's HTTP surface on the real binary with the tiny fixtures, against transformers'
//! references, and the clients users point at it unchanged: huggingface_hub's
//! `InferenceClient(base_url=…)`, the cohere SDK's `rerank` (v1 and v2) and the OpenAI SDK.

mod common;

use common::*;
use serde_json::{json, Value};

fn scores_of(item: &Value) -> Vec<f32> {
    as_vec(&item["outputs"]["scores"])
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-4, "{what}: {a} vs {b}");
}

#[test]
fn reranker_routes_and_the_cohere_sdk() {
    let (dir, r) = fixture("tiny-bert-reranker");
    let items = r["items"].as_array().expect("items").clone();
    let server = Server::builder(&dir).start();
    let info = server.get_json("/info").1;
    assert!(info["model_type"]["reranker"].is_object(), "{info}");

    // One query with two documents: scores match the reference, sorted highest first.
    let (q, a, b) = (&items[1], &items[1], &items[2]);
    assert_eq!(a["text"], b["text"]);
    let query = q["text"].as_str().expect("query");
    let docs = [a["text_pair"].clone(), b["text_pair"].clone()];
    let (status, ranked) = server.post_json(
        "/rerank",
        json!({"query": query, "texts": docs, "return_text": true}),
    );
    assert_eq!(status, 200, "{ranked}");
    let ranked = ranked.as_array().expect("array").clone();
    assert_eq!(ranked.len(), 2);
    assert!(ranked[0]["score"].as_f64() >= ranked[1]["score"].as_f64());
    for x in &ranked {
        let i = x["index"].as_u64().expect("index") as usize;
        let want = scores_of(if i == 0 { a } else { b })[0];
        close(
            x["score"].as_f64().expect("score"),
            want as f64,
            "rerank score",
        );
        assert_eq!(x["text"], docs[i]);
    }
    // raw_scores: the logit; POST / dispatches to rerank for a reranker.
    let (_, raw) = server.post_json(
        "/",
        json!({"query": query, "texts": [docs[0]], "raw_scores": true}),
    );
    let logit = as_vec(&a["outputs"]["logits"])[0];
    close(
        raw[0]["score"].as_f64().expect("score"),
        logit as f64,
        "raw score",
    );
    // Every pair against its own reference.
    for item in &items {
        let (_, one) = server.post_json(
            "/rerank",
            json!({"query": item["text"], "texts": [item["text_pair"]]}),
        );
        close(
            one[0]["score"].as_f64().expect("score"),
            scores_of(item)[0] as f64,
            "pair",
        );
    }
    // Cohere's shape over HTTP and through the SDK (v1 and v2).
    let (status, cohere) = server.post_json(
        "/v1/rerank",
        json!({"query": query, "documents": [docs[0], {"text": docs[1]}], "top_n": 1}),
    );
    assert_eq!(status, 200, "{cohere}");
    assert_eq!(cohere["results"].as_array().map(Vec::len), Some(1));
    assert!(
        cohere["results"][0]["document"]["text"].is_string(),
        "{cohere}"
    );
    for call in ["cohere_rerank_v1", "cohere_rerank_v2"] {
        let got = client_call(
            &server.base,
            call,
            json!({"query": query, "documents": docs}),
        );
        assert_eq!(got.as_array().map(Vec::len), Some(2), "{call}: {got}");
        for x in got.as_array().expect("results") {
            let i = x["index"].as_u64().expect("index") as usize;
            let want = scores_of(if i == 0 { a } else { b })[0];
            close(
                x["relevance_score"].as_f64().expect("score"),
                want as f64,
                call,
            );
        }
    }
    // Errors: no texts, too many, and routes this model does not serve (TEI's 424).
    assert_eq!(
        server
            .post_json("/rerank", json!({"query": "q", "texts": []}))
            .0,
        400
    );
    let many: Vec<String> = (0..40).map(|i| format!("doc {i}")).collect();
    assert_eq!(
        server
            .post_json("/rerank", json!({"query": "q", "texts": many}))
            .0,
        422
    );
    let (status, e) = server.post_json("/embed", json!({"inputs": "x"}));
    assert_eq!(status, 424, "{e}");
    assert_eq!(e["error_type"], "Backend");
}

#[test]
fn classifier_predict_and_huggingface_text_classification() {
    let (dir, r) = fixture("tiny-bert-classifier");
    let items = r["items"].as_array().expect("items").clone();
    let labels: Vec<String> = (0..3)
        .map(|i| {
            r["id2label"][i.to_string()]
                .as_str()
                .expect("label")
                .to_string()
        })
        .collect();
    let server = Server::builder(&dir).start();
    let check = |got: &Value, item: &Value| {
        let want = scores_of(item);
        let got = got.as_array().expect("label scores");
        assert_eq!(got.len(), 3);
        for w in got.windows(2) {
            assert!(
                w[0]["score"].as_f64() >= w[1]["score"].as_f64(),
                "sorted: {got:?}"
            );
        }
        for g in got {
            let i = labels
                .iter()
                .position(|l| g["label"] == *l)
                .expect("a known label");
            close(
                g["score"].as_f64().expect("score"),
                want[i] as f64,
                "predict score",
            );
        }
    };
    // Single text, a pair, and a batch of both.
    let single = &items[0];
    let pair = items
        .iter()
        .find(|i| i["text_pair"].is_string())
        .expect("a pair item");
    let (status, got) = server.post_json("/predict", json!({"inputs": single["text"]}));
    assert_eq!(status, 200, "{got}");
    check(&got, single);
    let (_, got) = server.post_json(
        "/predict",
        json!({"inputs": [pair["text"], pair["text_pair"]]}),
    );
    check(&got, pair);
    let (_, got) = server.post_json(
        "/predict",
        json!({"inputs": [[single["text"]], [pair["text"], pair["text_pair"]]]}),
    );
    check(&got[0], single);
    check(&got[1], pair);
    // huggingface_hub: text_classification posts to / and keeps the top element of TEI's list.
    let top = client_call(
        &server.base,
        "hf_text_classification",
        json!({"text": single["text"]}),
    );
    let want = scores_of(single);
    let best = (0..3)
        .max_by(|&a, &b| want[a].total_cmp(&want[b]))
        .expect("best");
    assert_eq!(top[0]["label"], labels[best], "{top}");
    assert_eq!(
        server
            .post_json("/rerank", json!({"query": "q", "texts": ["t"]}))
            .0,
        424
    );
}

#[test]
fn embedding_routes_headers_and_clients() {
    let (dir, r) = fixture("tiny-bert-dense");
    let items = r["items"].as_array().expect("items").clone();
    let server = Server::builder(&dir).start();
    let texts: Vec<&str> = items
        .iter()
        .map(|i| i["text"].as_str().expect("text"))
        .collect();
    let resp = blocking_client()
        .post(server.url("/embed"))
        .json(&json!({"inputs": texts}))
        .send()
        .expect("embed");
    for h in [
        "x-compute-type",
        "x-compute-time",
        "x-compute-tokens",
        "x-compute-characters",
        "x-total-time",
        "x-tokenization-time",
        "x-queue-time",
        "x-inference-time",
    ] {
        assert!(resp.headers().contains_key(h), "missing {h}");
    }
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    assert_eq!(
        resp.headers()["x-compute-characters"],
        chars.to_string().as_str()
    );
    let vectors = as_matrix(&resp.json::<Value>().expect("json"));
    for (v, item) in vectors.iter().zip(&items) {
        let c = cosine(v, &as_vec(&item["outputs"]["embedding"]));
        assert!(c >= 0.9999, "{}: cosine {c}", item["id"]);
    }
    // Per-token vectors.
    let (status, all) = server.post_json("/embed_all", json!({"inputs": texts[0]}));
    assert_eq!(status, 200, "{all}");
    let tokens = all[0].as_array().expect("tokens");
    let want = items[0]["outputs"]["tokens"]
        .as_array()
        .expect("ref tokens");
    assert_eq!(tokens.len(), want.len());
    for (t, w) in tokens.iter().zip(want) {
        assert!(cosine(&as_vec(t), &as_vec(w)) >= 0.9999);
    }
    // Similarity: TEI's body, and huggingface_hub's sentence_similarity through POST /.
    let (status, sims) = server.post_json(
        "/similarity",
        json!({"inputs": {"source_sentence": texts[0], "sentences": [texts[0], texts[3]]}}),
    );
    assert_eq!(status, 200, "{sims}");
    close(sims[0].as_f64().expect("self"), 1.0, "self-similarity");
    let want_sim = cosine(&vectors[0], &vectors[3]);
    close(sims[1].as_f64().expect("sim"), want_sim, "similarity");
    let hf_sims = client_call(
        &server.base,
        "hf_sentence_similarity",
        json!({"sentence": texts[0], "others": [texts[3]]}),
    );
    close(
        hf_sims[0].as_f64().expect("hf sim"),
        want_sim,
        "hf sentence_similarity",
    );
    let hf = client_call(
        &server.base,
        "hf_feature_extraction",
        json!({"text": texts[1]}),
    );
    let c = cosine(&as_vec(&hf[0]), &vectors[1]);
    assert!(c >= 0.9999, "feature_extraction cosine {c}");
    let oa = client_call(
        &server.base,
        "openai_embeddings",
        json!({"input": [texts[2]]}),
    );
    let c = cosine(&as_vec(&oa[0]), &vectors[2]);
    assert!(c >= 0.9999, "openai cosine {c}");
    // The sparse and classifier routes are not this model's.
    assert_eq!(
        server.post_json("/embed_sparse", json!({"inputs": "x"})).0,
        424
    );
    assert_eq!(server.post_json("/predict", json!({"inputs": "x"})).0, 424);
}

#[test]
fn splade_serves_sparse_vectors() {
    let (dir, r) = fixture("tiny-splade");
    let items = r["items"].as_array().expect("items").clone();
    let server = Server::builder(&dir).start();
    let texts: Vec<&str> = items
        .iter()
        .map(|i| i["text"].as_str().expect("text"))
        .collect();
    let (status, sparse) = server.post_json("/embed_sparse", json!({"inputs": texts}));
    assert_eq!(status, 200, "{sparse}");
    for (got, item) in sparse.as_array().expect("array").iter().zip(&items) {
        let want = &item["outputs"]["sparse"];
        let idx: Vec<u64> = want["indices"]
            .as_array()
            .expect("i")
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        let vals = as_vec(&want["values"]);
        let got: Vec<(u64, f64)> = got
            .as_array()
            .expect("pairs")
            .iter()
            .map(|p| {
                (
                    p["index"].as_u64().expect("index"),
                    p["value"].as_f64().expect("value"),
                )
            })
            .collect();
        for (i, v) in idx.iter().zip(&vals) {
            let g = got
                .iter()
                .find(|(gi, _)| gi == i)
                .map_or(0.0, |(_, gv)| *gv);
            close(g, *v as f64, "sparse weight");
        }
    }
    // POST / is /embed_sparse for a SPLADE model; /embed is not served.
    let (status, root) = server.post_json("/", json!({"inputs": texts[0]}));
    assert_eq!(status, 200, "{root}");
    assert_eq!(server.post_json("/embed", json!({"inputs": "x"})).0, 424);
    let info = server.get_json("/info").1;
    assert_eq!(
        info["model_type"]["embedding"]["pooling"], "splade",
        "{info}"
    );
}

#[test]
fn qwen3_reranker_prompt_and_yes_no_scores() {
    let (dir, r) = fixture("tiny-qwen3-reranker");
    let server = Server::builder(&dir).args(["--task", "rerank"]).start();
    let info = server.get_json("/info").1;
    assert!(info["model_type"]["reranker"].is_object(), "{info}");
    for item in r["items"].as_array().expect("items") {
        let default = item["instruction"] == r["prompt"]["default_instruction"];
        let mut body = json!({"query": item["query"], "texts": [item["document"]]});
        if !default {
            body["instruction"] = item["instruction"].clone();
        }
        let (status, got) = server.post_json("/rerank", body);
        assert_eq!(status, 200, "{got}");
        close(
            got[0]["score"].as_f64().expect("score"),
            scores_of(item)[0] as f64,
            &format!("qwen3 reranker {}", item["id"]),
        );
    }
}

/// The OpenAI SDK gets every embedding family's vectors (normalised, as OpenAI's are), with the
/// pooling each folder's sentence-transformers files name.
#[test]
fn openai_sdk_embeddings_for_every_family() {
    for name in [
        "tiny-xlm-roberta",
        "tiny-distilbert",
        "tiny-mpnet",
        "tiny-modernbert",
        "tiny-nomic",
        "tiny-gte",
        "tiny-bert-dense",
        "tiny-qwen3",
        "tiny-qwen2",
        "tiny-mistral",
        "tiny-llama",
        "tiny-gemma3",
        "tiny-bge-m3",
    ] {
        let (dir, r) = fixture(name);
        let items = r["items"].as_array().expect("items").clone();
        let server = Server::builder(&dir).start();
        let texts: Vec<&str> = items
            .iter()
            .map(|i| i["text"].as_str().expect("text"))
            .collect();
        let got = client_call(&server.base, "openai_embeddings", json!({"input": texts}));
        for (v, item) in got.as_array().expect("vectors").iter().zip(&items) {
            let c = cosine(&as_vec(v), &as_vec(&item["outputs"]["embedding"]));
            assert!(c >= 0.9999, "{name} {}: cosine {c}", item["id"]);
        }
    }
}

/// bge-m3's three outputs from one forward pass on `/embed_multi_vector`.
#[test]
fn bge_m3_dense_sparse_and_colbert_over_http() {
    let (dir, r) = fixture("tiny-bge-m3");
    let items = r["items"].as_array().expect("items").clone();
    let server = Server::builder(&dir).start();
    let texts: Vec<&str> = items
        .iter()
        .map(|i| i["text"].as_str().expect("text"))
        .collect();
    let (status, got) = server.post_json(
        "/embed_multi_vector",
        json!({"inputs": texts, "return_dense": true, "return_sparse": true}),
    );
    assert_eq!(status, 200, "{got}");
    for (g, item) in got.as_array().expect("array").iter().zip(&items) {
        let want = &item["outputs"];
        let c = cosine(&as_vec(&g["dense"]), &as_vec(&want["embedding"]));
        assert!(c >= 0.9999, "dense cosine {c}");
        let rows = g["multi_vector"].as_array().expect("colbert");
        let refs = want["colbert"].as_array().expect("ref colbert");
        assert_eq!(rows.len(), refs.len());
        for (a, b) in rows.iter().zip(refs) {
            assert!(cosine(&as_vec(a), &as_vec(b)) >= 0.9999);
        }
        let idx = want["sparse"]["indices"].as_array().expect("indices");
        let vals = as_vec(&want["sparse"]["values"]);
        let sparse = g["sparse"].as_array().expect("sparse");
        assert_eq!(sparse.len(), idx.len(), "{g}");
        for ((p, i), v) in sparse.iter().zip(idx).zip(&vals) {
            assert_eq!(&p["index"], i);
            close(p["value"].as_f64().expect("value"), *v as f64, "sparse");
        }
    }
    // The dense vector is also the model's /embed output.
    let (_, dense) = server.post_json("/embed", json!({"inputs": texts[0]}));
    let c = cosine(
        &as_vec(&dense[0]),
        &as_vec(&items[0]["outputs"]["embedding"]),
    );
    assert!(c >= 0.9999, "/embed cosine {c}");
}
