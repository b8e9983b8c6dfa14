//! gRPC (`tei.v1`, proto/tei.proto) on the HTTP port, through a Python client generated from
//! the proto at test time (tests/python/grpc_client.py, grpcio-tools): every method, unary and
//! streaming, against an embedder, a SPLADE model, a reranker and a classifier, each answer
//! compared with the HTTP route's answer for the same input from the same server; the error
//! codes; overload; and a stream open across SIGTERM.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{fixture, metric_value, repo_root, script_result, Server};
use serde_json::{json, Value};

/// The pinned grpcio venv from scripts/make-grpc-venv.sh.
fn grpc_python() -> String {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| script_result("make-grpc-venv.sh", &[], "grpcio is needed"))
        .clone()
}

fn client() -> PathBuf {
    repo_root().join("tests/python/grpc_client.py")
}

/// host:port of the server's HTTP port (gRPC is served there too).
fn target(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Runs one scenario of the Python client against the HTTP port; its JSON result.
fn grpc_call(server: &Server, scenario: &str, args: Value) -> Value {
    grpc_call_at(server, &target(server), scenario, args)
}

fn grpc_call_at(server: &Server, target: &str, scenario: &str, args: Value) -> Value {
    let out = Command::new(grpc_python())
        .arg(client())
        .args([target, scenario, &args.to_string()])
        .output()
        .expect("run tests/python/grpc_client.py");
    assert!(
        out.status.success(),
        "{scenario} failed:\n{}\nserver logs:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{scenario}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// Equal as f32 (both sides went through JSON from an f32).
fn same(got: &Value, want: &Value, what: &str) {
    assert_eq!(floats(got), floats(want), "{what}");
}

/// Streamed messages may share a device batch with each other, so their last bits may differ
/// from a request computed alone.
fn close(got: &Value, want: &Value, what: &str) {
    let (g, w) = (floats(got), floats(want));
    assert_eq!(g.len(), w.len(), "{what}: lengths");
    for (a, b) in g.iter().zip(&w) {
        assert!((a - b).abs() <= 1e-5, "{what}: {a} vs {b}");
    }
}

fn post(server: &Server, path: &str, body: Value) -> Value {
    let (status, v) = server.post_json(path, body);
    assert_eq!(status, 200, "{path}: {v}");
    v
}

fn code(v: &Value) -> &str {
    v["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {v}"))
}

fn counted(server: &Server, route: &str, code: u16) -> f64 {
    metric_value(
        &server.metrics_text(),
        &format!("inference_requests_total{{code=\"{code}\",route=\"{route}\"}}"),
    )
    .unwrap_or(0.0)
}

const TEXTS: [&str; 3] = [
    "hello world",
    "a second, somewhat longer sentence about embeddings",
    "third",
];

#[test]
fn embedder_embed_and_tokenize_methods_match_http() {
    let (dir, _) = fixture("tiny-bert");
    let server = Server::builder(&dir).start();
    let ids = post(&server, "/tokenize", json!({"inputs": TEXTS[1]}))[0]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["id"].clone())
        .collect::<Vec<_>>();
    let g = grpc_call(&server, "embedder", json!({"texts": TEXTS, "ids": ids}));

    assert_eq!(
        g["info"]["model_type"], "MODEL_TYPE_EMBEDDING",
        "{}",
        g["info"]
    );
    let info = server.get_json("/info").1;
    assert_eq!(g["info"]["model_id"], info["model_id"]);
    assert_eq!(g["info"]["max_input_length"], info["max_input_length"]);
    assert!(
        g["metadata"]["compute_tokens"].as_u64() > Some(0),
        "{}",
        g["metadata"]
    );

    let stream = &g["embed_stream"];
    assert_eq!(stream["code"], "OK", "{stream}");
    let all_stream = &g["embed_all_stream"];
    assert_eq!(all_stream["code"], "OK", "{all_stream}");
    for (i, text) in TEXTS.iter().enumerate() {
        let http = &post(&server, "/embed", json!({"inputs": text}))[0];
        same(&g["embed"][i], http, "Embed");
        close(&stream["answers"][i], http, "EmbedStream");

        let http_all = post(&server, "/embed_all", json!({"inputs": text}));
        let tokens = http_all[0].as_array().expect("token vectors");
        for (t, want) in tokens.iter().enumerate() {
            same(&g["embed_all"][i][t], want, "EmbedAll");
            close(&all_stream["answers"][i][t], want, "EmbedAllStream");
        }
        assert_eq!(
            g["embed_all"][i].as_array().map(Vec::len),
            Some(tokens.len())
        );

        let http_tokens = post(
            &server,
            "/tokenize",
            json!({"inputs": text, "add_special_tokens": true}),
        );
        assert_eq!(g["tokenize"][i], http_tokens[0], "Tokenize");
        assert_eq!(
            g["tokenize_stream"]["answers"][i], http_tokens[0],
            "TokenizeStream"
        );
    }
    let dims = post(
        &server,
        "/embed",
        json!({"inputs": TEXTS[0], "normalize": false, "dimensions": 4}),
    );
    same(&g["embed_dims"], &dims[0], "Embed with dimensions");

    let decoded = post(
        &server,
        "/decode",
        json!({"ids": ids, "skip_special_tokens": true}),
    );
    assert_eq!(g["decode"], decoded[0]);
    assert_eq!(g["decode_stream"]["answers"][0], decoded[0]);
    assert_eq!(g["decode_stream"]["code"], "OK");

    let e = &g["errors"];
    assert_eq!(code(&e["embed_empty"]), "INVALID_ARGUMENT", "{e}");
    assert_eq!(code(&e["embed_bad_dimensions"]), "INVALID_ARGUMENT", "{e}");
    // A stream answers what came before the bad message, then ends with its status.
    assert_eq!(code(&e["embed_stream_empty"]), "INVALID_ARGUMENT", "{e}");
    assert_eq!(
        e["embed_stream_empty"]["answers"].as_array().map(Vec::len),
        Some(1)
    );
    // The model serves another task: FAILED_PRECONDITION, as TEI answers.
    for other in ["embed_sparse", "predict", "rerank"] {
        assert_eq!(code(&e[other]), "FAILED_PRECONDITION", "{other}: {e}");
    }

    // Counted in the HTTP metrics, by method path and HTTP-equivalent code.
    assert!(counted(&server, "/tei.v1.Embed/Embed", 200) >= 4.0);
    assert_eq!(counted(&server, "/tei.v1.Embed/Embed", 400), 1.0);
    assert_eq!(counted(&server, "/tei.v1.Embed/EmbedStream", 200), 4.0);
    assert_eq!(counted(&server, "/tei.v1.Embed/EmbedStream", 400), 1.0);
    assert_eq!(counted(&server, "/tei.v1.Predict/Predict", 424), 1.0);
}

#[test]
fn sparse_methods_match_http() {
    let (dir, _) = fixture("tiny-splade");
    let server = Server::builder(&dir).start();
    let g = grpc_call(&server, "sparse", json!({"texts": TEXTS}));
    assert_eq!(g["embed_sparse_stream"]["code"], "OK");
    for (i, text) in TEXTS.iter().enumerate() {
        let http = post(&server, "/embed_sparse", json!({"inputs": text}));
        let want: Vec<Value> = http[0]
            .as_array()
            .expect("sparse")
            .iter()
            .map(|v| json!([v["index"], v["value"]]))
            .collect();
        let got = g["embed_sparse"][i].as_array().expect("sparse");
        assert_eq!(got.len(), want.len(), "EmbedSparse {i}");
        let streamed = g["embed_sparse_stream"]["answers"][i]
            .as_array()
            .expect("sparse");
        assert_eq!(streamed.len(), want.len(), "EmbedSparseStream {i}");
        for ((g, s), w) in got.iter().zip(streamed).zip(&want) {
            assert_eq!(g[0], w[0], "index");
            assert_eq!(s[0], w[0], "index");
            same(&json!([g[1]]), &json!([w[1]]), "EmbedSparse value");
            close(&json!([s[1]]), &json!([w[1]]), "EmbedSparseStream value");
        }
    }
}

#[test]
fn reranker_methods_match_http() {
    let (dir, _) = fixture("tiny-bert-reranker");
    let server = Server::builder(&dir).start();
    let query = "what is an embedding?";
    let g = grpc_call(&server, "reranker", json!({"query": query, "texts": TEXTS}));
    assert_eq!(g["info"]["model_type"], "MODEL_TYPE_RERANKER");

    let http = post(
        &server,
        "/rerank",
        json!({"query": query, "texts": TEXTS, "return_text": true}),
    );
    let http = http.as_array().expect("ranks");
    let check = |got: &Value, exact: bool, what: &str| {
        let got = got.as_array().expect("ranks");
        assert_eq!(got.len(), http.len(), "{what}");
        for (g, h) in got.iter().zip(http) {
            assert_eq!(g["index"], h["index"], "{what}: order");
            assert_eq!(g["text"], h["text"], "{what}: text");
            if exact {
                same(&json!([g["score"]]), &json!([h["score"]]), what);
            } else {
                close(&json!([g["score"]]), &json!([h["score"]]), what);
            }
        }
    };
    check(&g["rerank"], true, "Rerank");
    check(&g["rerank_stream"], false, "RerankStream");

    let raw = post(
        &server,
        "/rerank",
        json!({"query": query, "texts": TEXTS, "raw_scores": true}),
    );
    for (g, h) in g["rerank_raw"]
        .as_array()
        .expect("ranks")
        .iter()
        .zip(raw.as_array().expect("ranks"))
    {
        assert_eq!(g["index"], h["index"]);
        assert_eq!(g["text"], Value::Null, "no text unless asked");
        same(&json!([g["score"]]), &json!([h["score"]]), "raw scores");
    }

    let e = &g["errors"];
    assert_eq!(code(&e["rerank_no_texts"]), "INVALID_ARGUMENT", "{e}");
    assert_eq!(code(&e["rerank_stream_empty"]), "INVALID_ARGUMENT", "{e}");
    assert_eq!(code(&e["embed"]), "FAILED_PRECONDITION", "{e}");
}

#[test]
fn classifier_methods_match_http() {
    let (dir, _) = fixture("tiny-bert-classifier");
    let server = Server::builder(&dir).start();
    let pairs = [["the first text", "its pair"], ["alone", "together"]];
    let g = grpc_call(
        &server,
        "classifier",
        json!({"texts": TEXTS, "pairs": pairs}),
    );
    assert_eq!(g["info"]["model_type"], "MODEL_TYPE_CLASSIFIER");
    let check = |got: &Value, want: &Value, exact: bool, what: &str| {
        let (got, want) = (
            got.as_array().expect("predictions"),
            want.as_array().expect("predictions"),
        );
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g["label"], w["label"], "{what}: label order");
            if exact {
                same(&json!([g["score"]]), &json!([w["score"]]), what);
            } else {
                close(&json!([g["score"]]), &json!([w["score"]]), what);
            }
        }
    };
    assert_eq!(g["predict_stream"]["code"], "OK");
    assert_eq!(g["predict_pair_stream"]["code"], "OK");
    for (i, text) in TEXTS.iter().enumerate() {
        let http = post(&server, "/predict", json!({"inputs": text}));
        check(&g["predict"][i], &http, true, "Predict");
        check(
            &g["predict_stream"]["answers"][i],
            &http,
            false,
            "PredictStream",
        );
    }
    let raw = post(
        &server,
        "/predict",
        json!({"inputs": TEXTS[0], "raw_scores": true}),
    );
    check(&g["predict_raw"], &raw, true, "Predict raw_scores");
    for (i, pair) in pairs.iter().enumerate() {
        let http = post(&server, "/predict", json!({"inputs": pair}));
        check(&g["predict_pair"][i], &http, true, "PredictPair");
        check(
            &g["predict_pair_stream"]["answers"][i],
            &http,
            false,
            "PredictPairStream",
        );
    }
    let e = &g["errors"];
    assert_eq!(code(&e["pair_of_three"]), "INVALID_ARGUMENT", "{e}");
    assert_eq!(code(&e["rerank"]), "FAILED_PRECONDITION", "{e}");
}

#[test]
fn a_flood_past_max_concurrent_requests_is_resource_exhausted_with_retry_info() {
    // Two inputs in flight at most, and each batch held for a while: of six concurrent calls
    // some are answered, the rest refused with RESOURCE_EXHAUSTED and when to retry.
    let (dir, _) = fixture("tiny-bert");
    let server = Server::builder(&dir)
        .args([
            "--max-concurrent-requests",
            "2",
            "--test-batch-delay-ms",
            "500",
        ])
        .start();
    let g = grpc_call(&server, "overload", json!({"n": 6}));
    let calls = g["calls"].as_array().expect("calls");
    assert!(calls.iter().any(|c| c["code"] == "OK"), "{g}");
    let refused: Vec<&Value> = calls
        .iter()
        .filter(|c| c["code"] == "RESOURCE_EXHAUSTED")
        .collect();
    assert!(!refused.is_empty(), "{g}");
    assert!(
        calls
            .iter()
            .all(|c| c["code"] == "OK" || c["code"] == "RESOURCE_EXHAUSTED"),
        "{g}"
    );
    for r in refused {
        assert_eq!(r["retry_after"], "1", "{r}");
        assert_eq!(r["has_details"], true, "google.rpc.RetryInfo: {r}");
    }
    assert!(
        counted(&server, "/tei.v1.Embed/Embed", 429) >= 1.0,
        "{}",
        server.metrics_text()
    );
}

#[test]
fn sigterm_mid_stream_answers_every_accepted_message_then_ends_cleanly() {
    // Each batch is held for a while, so the messages sent before SIGTERM are still in flight
    // when it arrives (the client waits until the server counts them in flight, then signals).
    let (dir, _) = fixture("tiny-bert");
    let mut server = Server::builder(&dir)
        .args(["--drain-delay", "0", "--drain-timeout", "20"])
        .args(["--test-batch-delay-ms", "300"])
        .start();
    let n = 4;
    let g = grpc_call(
        &server,
        "drain",
        json!({"n": n, "pid": server.pid(), "metrics": server.metrics_base}),
    );
    eprintln!("stream across SIGTERM: {g}");
    let answers = g["answers"].as_array().expect("answers");
    assert_eq!(
        answers.len(),
        n + 1,
        "every message sent before SIGTERM answered: {g}"
    );
    assert!(answers.iter().all(|a| a.as_u64() > Some(0)), "{g}");
    // Closed by the server once the accepted messages were answered: OK, or UNAVAILABLE
    // (the client had not finished sending), never a broken stream.
    assert!(g["code"] == "OK" || g["code"] == "UNAVAILABLE", "{g}");
    let (exit, _) = server.wait_exit(Duration::from_secs(30));
    assert_eq!(exit, Some(0), "{}", server.log_text());
    assert!(server.log_text().contains("drain complete"));
}

#[test]
fn grpc_port_serves_grpc_alone() {
    let (dir, _) = fixture("tiny-bert");
    let server = Server::builder(&dir).args(["--grpc-port", "0"]).start();
    let log = server.log_text();
    let grpc_url = log
        .split("gRPC-only port on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no gRPC port in the log:\n{log}"))
        .to_string();
    let g = grpc_call_at(
        &server,
        grpc_url.trim_start_matches("http://"),
        "info",
        json!({}),
    );
    assert_eq!(g["model_type"], "MODEL_TYPE_EMBEDDING", "{g}");
    // Plain HTTP on that port is told what it serves.
    let r = common::blocking_client()
        .post(format!("{grpc_url}/embed"))
        .json(&json!({"inputs": "x"}))
        .send()
        .expect("request");
    assert_eq!(r.status().as_u16(), 415);
}
