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

/// A folder with only config.json: what `plan` can say before the weights are fetched.
fn config_only(name: &str, config: serde_json::Value) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("spotinfer-plan-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

fn plan_json(dir: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--model-id", dir.to_str().unwrap(), "--output", "json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&plan(&args, &[])).expect("plan --output json")
}

#[test]
fn plan_sizes_qwen3_embedding_8b_and_a_7b_mistral_embedder_from_their_configs() {
    // Qwen3-Embedding-8B's config.json (a Qwen3ForCausalLM whose lm_head is not loaded).
    let qwen = config_only(
        "qwen3-8b",
        serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "hidden_size": 4096, "num_hidden_layers": 36, "intermediate_size": 12288,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "vocab_size": 151665, "max_position_embeddings": 40960,
            "tie_word_embeddings": false, "torch_dtype": "bfloat16"
        }),
    );
    let v = plan_json(&qwen, &["--device", "cuda", "--gpu", "h100-80gb"]);
    // 7,567,295,488: the parameter count the model card gives (7.6 B).
    let loaded = v["model"]["weights"]["parameters"].as_u64().unwrap()
        - v["model"]["weights"]["unloaded_parameters"]
            .as_u64()
            .unwrap();
    assert_eq!(loaded, 7_567_295_488, "{v:#}");
    assert_eq!(
        v["dtype"], "bfloat16",
        "a bfloat16 checkpoint stays bfloat16"
    );
    assert_eq!(v["host_memory"]["weights_bytes"], 7_567_295_488u64 * 2);
    let g = &v["gpu_memory"];
    assert_eq!(g["fits"], true, "{g:#}");
    assert_eq!(
        v["max_batch_tokens"], 16384,
        "the default budget when it fits"
    );
    // On a 24 GB A10G the weights fit, the default budget does not: plan lowers it as serve
    // does, and the lowered plan fits.
    let small = plan_json(&qwen, &["--device", "cuda", "--gpu", "a10g"]);
    assert_eq!(small["gpu_memory"]["fits"], true, "{small:#}");
    let budget = small["max_batch_tokens"].as_u64().unwrap();
    assert!((256..16384).contains(&budget), "{budget}");
    // Asked for explicitly, the budget is kept and reported as not fitting.
    let asked = plan_json(
        &qwen,
        &[
            "--device",
            "cuda",
            "--gpu",
            "a10g",
            "--max-batch-tokens",
            "32768",
        ],
    );
    assert_eq!(asked["gpu_memory"]["fits"], false);

    // e5-mistral-7b-instruct's config.json (a MistralModel stored as float16).
    let mistral = config_only(
        "mistral-7b",
        serde_json::json!({
            "architectures": ["MistralModel"], "model_type": "mistral",
            "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
            "max_position_embeddings": 32768, "torch_dtype": "float16"
        }),
    );
    let m = plan_json(&mistral, &["--device", "cuda", "--gpu", "a100-40gb"]);
    assert_eq!(m["model"]["weights"]["parameters"], 7_110_660_096u64);
    assert_eq!(m["dtype"], "float16");
    // The platform guide's rule of thumb: a 7B at FP16 needs about 14 GB of RAM to load.
    let request = m["host_memory"]["request_bytes"].as_u64().unwrap();
    assert!(
        (14_000_000_000..24_000_000_000).contains(&request),
        "{request}"
    );
    let text = plan(
        &["--model-id", mistral.to_str().unwrap(), "--device", "cuda"],
        &[],
    );
    assert!(
        text.contains("7110660096 (7.11 B) from config.json estimate"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&qwen);
    let _ = std::fs::remove_dir_all(&mistral);
}
