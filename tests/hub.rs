//! The Hub download path, against a mirror on loopback in the Hub's URL layout
//! (`/{repo}/resolve/{revision}/{file}` with ETag, X-Repo-Commit and byte ranges): first load by
//! repo id through `HF_ENDPOINT`, then offline from the cache with the mirror gone.

mod common;

use common::hub_mirror::{HubMirror, COMMIT};
use common::*;
use serde_json::json;

#[test]
fn loads_by_repo_id_through_a_mirror_then_offline_from_the_cache() {
    let repo = "sentence-transformers/all-MiniLM-L6-v2";
    let mut mirror = HubMirror::start(repo, test_model_dir());
    let endpoint = mirror.url.clone();
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
    assert!(mirror.requests() >= 3, "files came from the mirror");
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
    mirror.stop();
    let before = mirror.requests();

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
    assert_eq!(mirror.requests(), before);

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
