//! `spotinfer plan` end to end: from a local folder, and from a Hub mirror on loopback where it
//! must read only config.json and the safetensors header (range requests), never the weights.
//! The generated kustomize Components committed under deploy/ must be exactly what plan prints
//! for all-MiniLM-L6-v2: no number in the manifests is typed by hand.

mod common;

use std::process::Command;

use common::hub_mirror::HubMirror;
use common::*;

const REPO: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn plan(args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotinfer"));
    cmd.arg("plan")
        .args(args)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT")
        .env_remove("MODEL_ID")
        .env_remove("DTYPE")
        .env_remove("DEVICE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run spotinfer plan");
    assert!(
        out.status.success(),
        "spotinfer plan {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn plan_counts_minilm_from_a_local_folder() {
    let dir = test_model_dir();
    let out = plan(
        &["--model-id", dir.to_str().unwrap(), "--output", "json"],
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("plan --output json");
    // 22.7 M parameters: the safetensors header, position_ids (an I64 buffer) left out.
    assert_eq!(v["model"]["weights"]["parameters"], 22_713_216);
    assert_eq!(v["model"]["parameters_from"], "safetensors headers");
    assert_eq!(v["host_memory"]["weights_bytes"], 22_713_216 * 2);
    assert_eq!(v["gpu_memory"]["fits"], true);
    let text = plan(&["--model-id", dir.to_str().unwrap()], &[]);
    assert!(text.contains("22713216 (22.7 M)"), "{text}");
}

#[test]
fn plan_reads_only_headers_from_the_hub_and_matches_the_committed_manifests() {
    let mirror = HubMirror::start(REPO, test_model_dir());
    let endpoint = mirror.url.clone();
    let cache = std::env::temp_dir().join(format!("spotinfer-plan-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let envs = [
        ("HF_ENDPOINT", endpoint.as_str()),
        ("HF_TOKEN", "test-token"),
    ];
    // (committed file, plan flags): the base (one replica per A10G), the time-sliced overlay
    // (four replicas, a lower token budget) and the CPU overlay.
    let cases: [(&str, &[&str]); 3] = [
        ("deploy/base/plan/kustomization.yaml", &[]),
        (
            "deploy/overlays/time-sliced/plan/kustomization.yaml",
            &["--replicas-per-gpu", "4", "--max-batch-tokens", "8192"],
        ),
        (
            "deploy/overlays/cpu/plan/kustomization.yaml",
            &["--device", "cpu"],
        ),
    ];
    for (file, flags) in cases {
        let mut args = vec![
            "--model-id",
            REPO,
            "--output",
            "kustomize",
            "--huggingface-hub-cache",
            cache.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        let got = plan(&args, &envs);
        if std::env::var_os("SPOTINFER_BLESS").is_some() {
            // Regenerate: SPOTINFER_BLESS=1 cargo test --test plan
            let path = repo_root().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &got).unwrap();
        }
        let committed = std::fs::read_to_string(repo_root().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            got, committed,
            "{file} is stale: regenerate it with the command in its first lines"
        );
    }
    // config.json, the tokenizer-free header reads: far less than the 90 MB of weights.
    let bytes = mirror.served();
    assert!(bytes < 200_000, "plan downloaded {bytes} bytes");
    let weights = cache.join("models--sentence-transformers--all-MiniLM-L6-v2");
    let blobs: u64 = std::fs::read_dir(weights.join("blobs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert!(blobs < 200_000, "the cache holds {blobs} bytes");
    drop(mirror);
    let _ = std::fs::remove_dir_all(&cache);
}
