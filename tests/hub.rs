//! The Hub download path, against a mirror on loopback in the Hub's URL layout
//! (`/{repo}/resolve/{revision}/{file}` with ETag, X-Repo-Commit and byte ranges): first load by
//! repo id through `HF_ENDPOINT`, then offline from the cache with the mirror gone.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::*;
use serde_json::json;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone)]
struct Mirror {
    repo: String,
    dir: PathBuf,
    requests: Arc<AtomicUsize>,
}

async fn resolve(
    State(m): State<Mirror>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    m.requests.fetch_add(1, Ordering::SeqCst);
    let prefix = format!("{}/resolve/", m.repo);
    let Some(rest) = path.strip_prefix(&prefix) else {
        return (StatusCode::NOT_FOUND, "Repository not found").into_response();
    };
    let Some((revision, file)) = rest.split_once('/') else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if revision != "main" && revision != COMMIT {
        return (StatusCode::NOT_FOUND, "Revision not found").into_response();
    }
    let Ok(bytes) = std::fs::read(m.dir.join(file)) else {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    let total = bytes.len();
    let (start, end) = headers
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .map(|(a, b)| (a, b.min(total.saturating_sub(1))))
        .unwrap_or((0, total.saturating_sub(1)));
    let etag = format!("\"{:x}-{}\"", total, file.len());
    (
        StatusCode::PARTIAL_CONTENT,
        [
            (header::ETAG, etag),
            (
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{total}"),
            ),
            (
                header::HeaderName::from_static("x-repo-commit"),
                COMMIT.to_string(),
            ),
        ],
        bytes[start..=end].to_vec(),
    )
        .into_response()
}

/// Runs the mirror on its own thread and runtime; dropping the sender stops it.
fn start_mirror(
    m: Mirror,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addr_tx
                .send(listener.local_addr().expect("addr"))
                .expect("send addr");
            let app = axum::Router::new()
                .route("/{*path}", axum::routing::get(resolve))
                .with_state(m);
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("mirror");
        });
    });
    let addr = addr_rx.recv().expect("mirror address");
    (format!("http://{addr}"), stop_tx, handle)
}

#[test]
fn loads_by_repo_id_through_a_mirror_then_offline_from_the_cache() {
    let repo = "sentence-transformers/all-MiniLM-L6-v2";
    let requests = Arc::new(AtomicUsize::new(0));
    let (endpoint, stop, mirror) = start_mirror(Mirror {
        repo: repo.into(),
        dir: test_model_dir(),
        requests: requests.clone(),
    });
    let cache = std::env::temp_dir().join(format!("spotinfer-hub-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let snapshot = read_json(&shared_dir().join("tei_snapshots/test_bert__bert_single.json"));
    let want = as_vec(&snapshot["embeddings"][0]);
    let embed = |server: &Server| {
        let (status, body) = server.post_json(
            "/embed",
            json!({"inputs": "What is Deep Learning?", "normalize": false}),
        );
        assert_eq!(status, 200, "{body}");
        cosine(&as_matrix(&body)[0], &want)
    };

    // 1. By repo id, through the mirror.
    {
        let server = Server::builder(std::path::Path::new(repo))
            .args(["--huggingface-hub-cache", cache.to_str().unwrap()])
            .env("HF_ENDPOINT", &endpoint)
            .start();
        assert!(embed(&server) > 0.9999);
        let (_, info) = server.get_json("/info");
        assert_eq!(info["model_id"], repo);
        assert!(info["source"].as_str().unwrap().contains("Hub"), "{info}");
    }
    assert!(
        requests.load(Ordering::SeqCst) >= 3,
        "files came from the mirror"
    );
    let blob_dir = cache.join("models--sentence-transformers--all-MiniLM-L6-v2");
    assert!(blob_dir
        .join("snapshots")
        .join(COMMIT)
        .join("model.safetensors")
        .exists());
    assert_eq!(
        std::fs::read_to_string(blob_dir.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );

    // 2. The mirror goes away.
    drop(stop);
    mirror.join().expect("mirror thread");
    let before = requests.load(Ordering::SeqCst);

    // 3. Offline by flag: from the cache, no network at all.
    {
        let server = Server::builder(std::path::Path::new(repo))
            .args(["--huggingface-hub-cache", cache.to_str().unwrap()])
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_ENDPOINT", &endpoint)
            .start();
        assert!(embed(&server) > 0.9999);
        let (_, info) = server.get_json("/info");
        assert!(
            info["source"].as_str().unwrap().contains("offline"),
            "{info}"
        );
    }
    // 4. Without the flag and with the mirror down: the cached files still suffice.
    {
        let server = Server::builder(std::path::Path::new(repo))
            .args(["--huggingface-hub-cache", cache.to_str().unwrap()])
            .env("HF_ENDPOINT", &endpoint)
            .start();
        assert!(embed(&server) > 0.9999);
    }
    assert_eq!(requests.load(Ordering::SeqCst), before);

    // 5. Offline with an empty cache: a clear error that says what to do, exit code 1.
    let empty = cache.with_extension("empty");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spotinfer"))
        .args([
            "serve",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            "--prometheus-port",
            "0",
        ])
        .args([
            "--model-id",
            repo,
            "--huggingface-hub-cache",
            empty.to_str().unwrap(),
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("STATE_DIR", cache.with_extension("state"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config.json") && stderr.contains("spotinfer download"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&cache);
    let _ = std::fs::remove_dir_all(cache.with_extension("state"));
}
