//! End-to-end: the real binary serving all-MiniLM-L6-v2 on loopback, compared with TEI's own
//! snapshots and with sentence-transformers reference vectors.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::json;

fn tei_snapshot(name: &str) -> Vec<Vec<f32>> {
    let v = read_json(&shared_dir().join("tei_snapshots").join(name));
    as_matrix(&v["embeddings"])
}

#[test]
fn matches_tei_snapshots_and_reference_vectors() {
    let server = Server::start_minilm();

    // TEI backend snapshots: raw mean-pooled vectors (normalize=false).
    let single = tei_snapshot("test_bert__bert_single.json");
    let (status, body) = server.post_json(
        "/embed",
        json!({"inputs": "What is Deep Learning?", "normalize": false}),
    );
    assert_eq!(status, 200, "{body}");
    let got = as_matrix(&body);
    let c = cosine(&got[0], &single[0]);
    assert!(c > 0.9999, "single: cosine {c}");

    let batch = tei_snapshot("test_bert__bert_batch.json");
    let (status, body) = server.post_json(
        "/embed",
        json!({"inputs": ["What is Deep Learning?", "Deep Learning is...", "What is Deep Learning?"], "normalize": false}),
    );
    assert_eq!(status, 200);
    let got = as_matrix(&body);
    assert_eq!(got.len(), 3);
    for (g, want) in got.iter().zip(&batch) {
        let c = cosine(g, want);
        assert!(c > 0.9999, "batch: cosine {c}");
    }
    // The raw vector's norm is part of the snapshot too (7.58 for this text).
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm(&got[0]) - norm(&batch[0])).abs() < 1e-3);

    // TEI HTTP snapshots: Matryoshka 128 dims, then normalised; TEI's tolerance is 4e-3.
    for (file, inputs) in [
        ("test_http_embed__mrl_embeddings_single.json", json!("test")),
        (
            "test_http_embed__mrl_embeddings_batch.json",
            json!(["test", "test", "test"]),
        ),
    ] {
        let want = tei_snapshot(file);
        let (status, body) =
            server.post_json("/embed", json!({"inputs": inputs, "dimensions": 128}));
        assert_eq!(status, 200);
        let got = as_matrix(&body);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.len(), 128);
            let worst = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 4e-3, "{file}: max abs diff {worst}");
            assert!((norm(g) - 1.0).abs() < 1e-4);
        }
    }

    // sentence-transformers reference vectors (unicode, CJK, emoji, > 256 tokens).
    let reference = read_json(&repo_root().join("tests/fixtures/minilm_reference.json"));
    let items = reference["items"].as_array().expect("items");
    assert!(items.len() >= 25);
    let texts: Vec<String> = items
        .iter()
        .map(|i| i["text"].as_str().expect("text").to_string())
        .collect();
    let mut all = Vec::new();
    for chunk in texts.chunks(32) {
        let (status, body) =
            server.post_json("/embed", json!({"inputs": chunk, "normalize": false}));
        assert_eq!(status, 200, "{body}");
        all.extend(as_matrix(&body));
    }
    for (item, got) in items.iter().zip(&all) {
        let want = as_vec(&item["mean"]);
        let c = cosine(got, &want);
        assert!(c >= 0.9999, "{:?}: cosine {c}", item["text"]);
    }

    // Token counts agree with sentence-transformers' (after truncation at 256).
    for item in items {
        let (status, body) = server.post_json(
            "/v1/embeddings",
            json!({"input": item["text"], "model": "x"}),
        );
        assert_eq!(status, 200);
        assert_eq!(
            body["usage"]["prompt_tokens"], item["num_tokens"],
            "token count of {:?}",
            item["text"]
        );
    }

    // A text embedded in a batch equals the same text embedded alone.
    for (text, batched) in texts.iter().zip(&all) {
        let (_, body) = server.post_json("/embed", json!({"inputs": text, "normalize": false}));
        let alone = &as_matrix(&body)[0];
        let c = cosine(alone, batched);
        assert!(c >= 0.99999, "batched vs alone for {text:?}: cosine {c}");
    }
}

#[test]
fn openai_shapes_and_encodings() {
    let server = Server::start_minilm();
    let (status, body) = server.post_json(
        "/v1/embeddings",
        json!({"input": ["hello world", "goodbye"], "model": "all-MiniLM-L6-v2"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][0]["object"], "embedding");
    // Named by the repo id (here the folder's name), never by its path on this machine.
    let name = spotinfer::config::default_served_model_name(test_model_dir().to_str().unwrap());
    assert!(
        name.ends_with("all-MiniLM-L6-v2") && !name.starts_with('/'),
        "{name}"
    );
    assert_eq!(body["model"], name.as_str());
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() >= 4);
    assert_eq!(
        body["usage"]["prompt_tokens"],
        body["usage"]["total_tokens"]
    );
    let float = as_vec(&body["data"][0]["embedding"]);
    assert_eq!(float.len(), 384);
    let norm: f32 = float.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);

    // base64: little-endian f32, equal to the float form.
    let (status, body) = server.post_json(
        "/v1/embeddings",
        json!({"input": "hello world", "encoding_format": "base64"}),
    );
    assert_eq!(status, 200);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, float);

    // Matryoshka dimensions: the first 64 of the raw vector, renormalised.
    let (_, body) = server.post_json(
        "/v1/embeddings",
        json!({"input": "hello world", "dimensions": 64}),
    );
    let short = as_vec(&body["data"][0]["embedding"]);
    assert_eq!(short.len(), 64);
    let c = cosine(&short, &float[..64]);
    assert!(c > 0.99999, "{c}");

    // Token-id inputs: the ids of "hello world" give the same vector as the text.
    let (_, toks) = server.post_json("/tokenize", json!({"inputs": "hello world"}));
    let ids: Vec<u64> = toks[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.first(), Some(&101), "[CLS] first: {toks}");
    assert_eq!(toks[0][1]["text"], "hello");
    assert_eq!(toks[0][1]["start"], 0);
    assert_eq!(toks[0][1]["stop"], 5);
    assert_eq!(toks[0][0]["special"], true);
    let (status, body) = server.post_json("/v1/embeddings", json!({"input": ids}));
    assert_eq!(status, 200, "{body}");
    let c = cosine(&as_vec(&body["data"][0]["embedding"]), &float);
    assert!(c > 0.99999, "ids vs text: {c}");
    let (status, body) = server.post_json("/v1/embeddings", json!({"input": [ids.clone(), ids]}));
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 2);

    // /decode round-trips.
    let (status, body) = server.post_json("/decode", json!({"ids": [101, 7592, 2088, 102]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!(["hello world"]));

    // /info and /v1/models.
    let (status, info) = server.get_json("/info");
    assert_eq!(status, 200);
    assert_eq!(info["max_input_length"], 256);
    assert_eq!(info["model_dtype"], "float32");
    assert_eq!(info["model_type"]["embedding"]["pooling"], "mean");
    let (status, models) = server.get_json("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    let name = spotinfer::config::default_served_model_name(test_model_dir().to_str().unwrap());
    assert_eq!(info["served_model_name"], name.as_str());
    assert_eq!(
        models["data"][0]["id"],
        name.as_str(),
        "/v1/models agrees with /info"
    );

    // Metrics moved.
    let text = server.metrics_text();
    assert!(text.contains("inference_requests_total{code=\"200\",route=\"/v1/embeddings\"}"));
    assert!(
        !text.contains("inference_batch_size_count 0\n"),
        "batches were recorded"
    );
}
