//! TEI's serving options beside the OpenAI and TEI routes: CORS (`--cors-allow-origin`), the
//! Unix socket (`--uds-path`), SageMaker's `/ping`, Vertex AI (`/vertex`, `AIP_PREDICT_ROUTE`,
//! `AIP_HEALTH_ROUTE`, `AIP_HTTP_PORT`), and TEI's health check on `GET /`.

mod common;

use std::process::Command;

use common::prometheus::free_port;
use common::*;
use serde_json::{json, Value};

/// A CORS preflight for `POST /embed` from `origin`: status and Access-Control-Allow-Origin.
fn preflight(server: &Server, origin: &str) -> (u16, Option<String>) {
    let r = blocking_client()
        .request(reqwest::Method::OPTIONS, server.url("/embed"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .expect("preflight");
    let allow = r
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    (r.status().as_u16(), allow)
}

#[test]
fn cors_allows_listed_origins_only() {
    let server = Server::builder(&tiny_model_dir())
        .args(["--cors-allow-origin", "https://app.example"])
        .env("CORS_ALLOW_ORIGIN", "https://ignored.example")
        .start();
    let (status, allow) = preflight(&server, "https://app.example");
    assert_eq!(status, 200);
    assert_eq!(allow.as_deref(), Some("https://app.example"));
    let (_, allow) = preflight(&server, "https://evil.example");
    assert_eq!(allow, None, "a refused origin gets no allow header");
    // The real request from an allowed origin carries the header too.
    let r = blocking_client()
        .post(server.url("/embed"))
        .header("Origin", "https://app.example")
        .json(&json!({"inputs": "hello"}))
        .send()
        .expect("embed");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[test]
fn cors_env_is_comma_separated_and_star_allows_any() {
    let server = Server::builder(&tiny_model_dir())
        .env("CORS_ALLOW_ORIGIN", "https://a.example,https://b.example")
        .start();
    assert_eq!(
        preflight(&server, "https://b.example").1.as_deref(),
        Some("https://b.example")
    );
    assert_eq!(preflight(&server, "https://c.example").1, None);
    drop(server);
    let server = Server::builder(&tiny_model_dir())
        .args(["--cors-allow-origin", "*"])
        .start();
    assert_eq!(
        preflight(&server, "https://c.example").1.as_deref(),
        Some("*")
    );
}

#[test]
fn no_cors_flag_means_no_cors_headers() {
    let server = Server::builder(&tiny_model_dir()).start();
    let (_, allow) = preflight(&server, "https://app.example");
    assert_eq!(allow, None);
}

#[test]
fn uds_path_serves_the_same_api() {
    let sock = std::env::temp_dir().join(format!("spotinfer-uds-{}.sock", std::process::id()));
    let server = Server::builder(&tiny_model_dir())
        .arg("--uds-path")
        .arg(sock.display().to_string())
        .start();
    assert!(server
        .log_text()
        .contains("also listening on a Unix socket"));
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--unix-socket"])
        .arg(&sock)
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"inputs": ["hello", "world"]}"#,
            "http://localhost/embed",
        ])
        .output()
        .expect("curl (needed for this test)");
    assert!(
        out.status.success(),
        "curl --unix-socket: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(as_matrix(&v).len(), 2);
    // The same vectors as over TCP.
    let (_, tcp) = server.post_json("/embed", json!({"inputs": ["hello", "world"]}));
    assert!(cosine(&as_matrix(&v)[0], &as_matrix(&tcp)[0]) > 0.9999);
    drop(server);
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn sagemaker_ping_and_tei_root_health() {
    let server = Server::builder(&tiny_model_dir()).start();
    let (status, body) = server.get_json("/ping");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    let (status, _) = server.get_json("/");
    assert_eq!(status, 200);
    // POST / is still the model's own route.
    let (status, v) = server.post_json("/", json!({"inputs": "hello"}));
    assert_eq!(status, 200);
    assert_eq!(as_matrix(&v).len(), 1);
}

#[test]
fn vertex_instances_are_the_model_routes_requests() {
    let server = Server::builder(&tiny_model_dir()).start();
    let (status, v) = server.post_json(
        "/vertex",
        json!({"instances": [{"inputs": "hello"}, {"inputs": ["a", "b"], "normalize": false}]}),
    );
    assert_eq!(status, 200, "{v}");
    let p = v["predictions"].as_array().expect("predictions");
    assert_eq!(p.len(), 2);
    assert_eq!(as_matrix(&p[0]).len(), 1);
    assert_eq!(as_matrix(&p[1]).len(), 2);
    let (_, direct) = server.post_json("/embed", json!({"inputs": "hello"}));
    assert!(cosine(&as_matrix(&p[0])[0], &as_matrix(&direct)[0]) > 0.9999);
    // A rerank body on an embedder: TEI's 424, not a silent embedding.
    let (status, v) = server.post_json(
        "/vertex",
        json!({"instances": [{"query": "q", "texts": ["a"]}]}),
    );
    assert_eq!(status, 424, "{v}");
    let (status, v) = server.post_json("/vertex", json!({"instances": []}));
    assert_eq!(status, 400, "{v}");

    let (dir, _) = fixture("tiny-bert-reranker");
    let reranker = Server::builder(&dir).start();
    let (status, v) = reranker.post_json(
        "/vertex",
        json!({"instances": [{"query": "q", "texts": ["a", "b"]}, {"inputs": ["q", "a"]}]}),
    );
    assert_eq!(status, 200, "{v}");
    let p = v["predictions"].as_array().expect("predictions");
    assert_eq!(p[0].as_array().expect("ranks").len(), 2);
    assert!(p[0][0]["index"].is_number() && p[0][0]["score"].is_number());
    assert!(p[1][0]["score"].is_number(), "a predict answer: {}", p[1]);
}

#[test]
fn vertex_env_sets_routes_and_port() {
    let port = free_port();
    let predict = "/v1/endpoints/e1/deployedModels/m1:predict";
    let server = Server::builder(&tiny_model_dir())
        .env("AIP_PREDICT_ROUTE", predict)
        .env("AIP_HEALTH_ROUTE", "/isalive")
        .env("AIP_HTTP_PORT", port.to_string())
        .start();
    assert!(
        server.base.ends_with(&format!(":{port}")),
        "AIP_HTTP_PORT must override --port: {}",
        server.base
    );
    let (status, _) = server.get_json("/isalive");
    assert_eq!(status, 200);
    let (status, v) = server.post_json(predict, json!({"instances": [{"inputs": "hello"}]}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(as_matrix(&v["predictions"][0]).len(), 1);
    // AIP_PREDICT_ROUTE on a path of ours takes it over.
    drop(server);
    let server = Server::builder(&tiny_model_dir())
        .env("AIP_PREDICT_ROUTE", "/predict")
        .start();
    let (status, v) = server.post_json("/predict", json!({"instances": [{"inputs": "hello"}]}));
    assert_eq!(status, 200, "{v}");
    assert!(v["predictions"].is_array());
}

#[test]
fn bad_vertex_port_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_spotinfer"))
        .args(["serve", "--model-id"])
        .arg(tiny_model_dir())
        .args(["--hostname", "127.0.0.1", "--prometheus-port", "0"])
        .env("AIP_HTTP_PORT", "eighty")
        .env(
            "STATE_DIR",
            std::env::temp_dir().join("spotinfer-aip-refused"),
        )
        .output()
        .expect("run spotinfer");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AIP_HTTP_PORT"), "{err}");
}

/// `spotinfer download` of a repo through a loopback Hub mirror; the Authorization headers the
/// mirror saw.
fn download_auth(args: &[&str], envs: &[(&str, &std::path::Path)]) -> Vec<String> {
    use common::hub_mirror::HubMirror;
    let repo = "org/tiny-bert";
    let mirror = HubMirror::start(repo, tiny_model_dir());
    let cache = std::env::temp_dir().join(format!(
        "spotinfer-token-cache-{}-{}",
        std::process::id(),
        args.len()
    ));
    let _ = std::fs::remove_dir_all(&cache);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotinfer"));
    cmd.args(["download", "--model-id", repo, "--huggingface-hub-cache"])
        .arg(&cache)
        .args(args)
        .env("HF_ENDPOINT", &mirror.url)
        .env_remove("HF_TOKEN")
        .env_remove("HF_API_TOKEN")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HF_HUB_OFFLINE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run spotinfer download");
    let _ = std::fs::remove_dir_all(&cache);
    assert!(
        out.status.success(),
        "download failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = mirror.counts.authorization.lock().expect("lock").clone();
    assert!(mirror.requests() >= 3, "files came from the mirror");
    seen
}

#[test]
fn hf_token_flag_and_token_file_reach_the_hub() {
    let home = std::env::temp_dir().join(format!("spotinfer-hf-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("HF_HOME");
    let seen = download_auth(&["--hf-token", "hf_flag"], &[("HF_HOME", home.as_path())]);
    assert!(
        !seen.is_empty() && seen.iter().all(|a| a == "Bearer hf_flag"),
        "{seen:?}"
    );
    // No flag, no variable: $HF_HOME/token, as huggingface-cli login writes it.
    std::fs::write(home.join("token"), "hf_file\n").expect("token file");
    let seen = download_auth(&[], &[("HF_HOME", home.as_path())]);
    assert!(
        !seen.is_empty() && seen.iter().all(|a| a == "Bearer hf_file"),
        "{seen:?}"
    );
    let _ = std::fs::remove_dir_all(&home);
}
