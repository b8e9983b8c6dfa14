//! `spotinfer plan` end to end: from a local folder, and from a Hub mirror on loopback where it
//! must read only config.json and the safetensors header (range requests), never the weights.
//! The generated kustomize Components committed under deploy/ must be exactly what plan prints
//! for all-MiniLM-L6-v2: no number in the manifests is typed by hand.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::hub_mirror::HubMirror;
use common::*;

const REPO: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn run_plan(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotinfer"));
    cmd.arg("plan").args(args);
    // The env vars plan shares with serve: none may leak in from the caller's shell.
    for var in [
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "MODEL_ID",
        "REVISION",
        "DTYPE",
        "DEVICE",
        "MAX_BATCH_TOKENS",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run spotinfer plan")
}

fn plan(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = run_plan(args, envs);
    assert!(
        out.status.success(),
        "spotinfer plan {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A plan that must fail: its stderr.
fn plan_error(args: &[&str]) -> String {
    let out = run_plan(args, &[]);
    assert!(
        !out.status.success(),
        "spotinfer plan {args:?} should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
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

const MIB: u64 = 1 << 20;

fn minilm_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384,
        "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
        "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2
    })
}

/// Qwen3-Embedding-0.6B's config.json: a bfloat16 checkpoint.
fn qwen3_small_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "hidden_size": 1024, "num_hidden_layers": 28, "intermediate_size": 3072,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 151669, "max_position_embeddings": 32768,
        "tie_word_embeddings": true, "torch_dtype": "bfloat16"
    })
}

fn strings(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn plan_on_a_t4_runs_a_bfloat16_checkpoint_in_float16() {
    let qwen = config_only("qwen3-t4", qwen3_small_config());
    let v = plan_json(&qwen, &["--device", "cuda", "--gpu", "t4"]);
    let g = &v["gpu_memory"]["gpu"];
    assert_eq!(g["id"], "t4");
    assert_eq!(g["name"], "NVIDIA T4");
    assert_eq!(g["memory_bytes"], 15_109 * MIB, "{g:#}");
    assert_eq!(g["fp16_tflops"], 65.0);
    assert!(g["bf16_tflops"].is_null(), "the T4 has no BF16: {g:#}");
    assert_eq!(g["resource"], "nvidia.com/gpu");
    assert!(
        strings(&g["nodes"]["aws"]).contains(&"g4dn.xlarge"),
        "{g:#}"
    );
    assert!(strings(&g["nodes"]["azure"]).contains(&"Standard_NC4as_T4_v3"));
    assert!(strings(&g["nodes"]["gcp"])[0].contains("nvidia-tesla-t4"));
    // The checkpoint is bfloat16: on a T4 plan sizes (and the component sets) float16.
    assert_eq!(v["dtype"], "float16", "{v:#}");
    let notes = strings(&v["notes"]).join("\n");
    assert!(notes.contains("no BF16"), "{notes}");
    assert_eq!(
        v["gpu_memory"]["budget_per_replica_bytes"],
        (15_109.0 * MIB as f64 * 0.85) as u64
    );
    let text = plan(
        &[
            "--model-id",
            qwen.to_str().unwrap(),
            "--device",
            "cuda",
            "--gpu",
            "T4",
        ],
        &[],
    );
    assert!(text.contains("NVIDIA T4 (--gpu t4)"), "{text}");
    assert!(text.contains("no BF16"), "{text}");
    assert!(text.contains("g4dn.xlarge"), "{text}");
    // Asked for bfloat16 explicitly, plan refuses instead of sizing what cannot run.
    let err = plan_error(&[
        "--model-id",
        qwen.to_str().unwrap(),
        "--device",
        "cuda",
        "--gpu",
        "t4",
        "--dtype",
        "bfloat16",
    ]);
    assert!(err.contains("--dtype float16"), "{err}");
    let _ = std::fs::remove_dir_all(&qwen);
}

#[test]
fn plan_on_an_l40s_and_an_h200_reports_their_memory_peaks_and_nodes() {
    let qwen = config_only("qwen3-l40s", qwen3_small_config());
    let v = plan_json(&qwen, &["--device", "cuda", "--gpu", "l40s"]);
    let g = &v["gpu_memory"]["gpu"];
    assert_eq!(g["memory_bytes"], 46_068 * MIB, "{g:#}");
    assert_eq!(g["fp16_tflops"], 362.05);
    assert_eq!(g["bf16_tflops"], 362.05);
    assert_eq!(v["dtype"], "bfloat16");
    assert_eq!(g["peak_tflops"], 362.05);
    assert!(strings(&g["nodes"]["aws"]).contains(&"g6e.xlarge"), "{g:#}");
    assert_eq!(v["gpu_memory"]["fits"], true);
    let _ = std::fs::remove_dir_all(&qwen);

    // Qwen3-Embedding-8B on an H200: the 16384-token budget fits with room to spare.
    let big = config_only(
        "qwen3-8b-h200",
        serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "hidden_size": 4096, "num_hidden_layers": 36, "intermediate_size": 12288,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "vocab_size": 151665, "max_position_embeddings": 40960,
            "tie_word_embeddings": false, "torch_dtype": "bfloat16"
        }),
    );
    let h = plan_json(&big, &["--device", "cuda", "--gpu", "h200"]);
    let g = &h["gpu_memory"]["gpu"];
    assert_eq!(g["name"], "NVIDIA H200");
    assert_eq!(g["memory_bytes"], 143_771 * MIB, "{g:#}");
    assert_eq!(g["bf16_tflops"], 989.5);
    assert_eq!(h["gpu_memory"]["fits"], true, "{h:#}");
    assert_eq!(h["max_batch_tokens"], 16384);
    assert!(strings(&g["nodes"]["aws"]).contains(&"p5e.48xlarge (8)"));
    assert!(strings(&g["nodes"]["gcp"]).contains(&"a3-ultragpu-8g (8)"));
    assert!(strings(&g["nodes"]["azure"]).contains(&"Standard_ND96isr_H200_v5 (8)"));
    // Twice the memory of an H100 at the same peak: the same compute bound.
    let h100 = plan_json(&big, &["--device", "cuda", "--gpu", "h100-80gb"]);
    assert_eq!(
        h["keda"]["compute_bound_per_pod"],
        h100["keda"]["compute_bound_per_pod"]
    );
    assert!(
        h["gpu_memory"]["budget_per_replica_bytes"].as_u64()
            > h100["gpu_memory"]["budget_per_replica_bytes"].as_u64()
    );
    let _ = std::fs::remove_dir_all(&big);
}

/// A Hub-cache snapshot folder (`models--org--name/snapshots/<commit>`) holding config.json.
fn hub_snapshot_folder(name: &str, repo: &str, commit: &str) -> (PathBuf, PathBuf) {
    let root = std::env::temp_dir().join(format!("spotinfer-plan-{name}-{}", std::process::id()));
    let dir = root
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(commit);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), minilm_config().to_string()).unwrap();
    (root, dir)
}

#[test]
fn plan_on_a_mig_slice_requests_the_mig_resource_and_serves_the_snapshots_repo() {
    let commit = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf";
    let (root, dir) = hub_snapshot_folder("mig", REPO, commit);
    let args = |gpu: &'static str, output: &'static str| {
        vec![
            "--model-id".to_string(),
            dir.to_str().unwrap().to_string(),
            "--device".into(),
            "cuda".into(),
            "--gpu".into(),
            gpu.into(),
            "--output".into(),
            output.into(),
        ]
    };
    let run = |a: Vec<String>| plan(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);

    let v: serde_json::Value = serde_json::from_str(&run(args("h100-1g.10gb", "json"))).unwrap();
    let g = &v["gpu_memory"]["gpu"];
    assert_eq!(g["id"], "h100-80gb-1g.10gb");
    // nvidia-smi mig -lgip: 9.62 GiB of the card's 81559 MiB, a seventh of its 989.5 TFLOP/s.
    assert_eq!(g["memory_bytes"], 9_856 * MIB, "{g:#}");
    assert_eq!(g["mig"]["profile"], "1g.10gb");
    assert_eq!(g["mig"]["parent"], "h100-80gb");
    assert_eq!(g["mig"]["compute_slices"], 1);
    let peak = g["fp16_tflops"].as_f64().unwrap();
    assert!((peak - 989.5 / 7.0).abs() < 1e-9, "{peak}");
    assert_eq!(g["resource"], "nvidia.com/mig-1g.10gb");
    assert!(strings(&g["nodes"]["aws"]).contains(&"p5.48xlarge (8)"));
    assert_eq!(v["gpu_memory"]["fits"], true);
    // The JSON names what the pods serve: the snapshot's repository at its commit.
    assert_eq!(v["model"]["serves"]["model_id"], REPO);
    assert_eq!(v["model"]["serves"]["revision"], commit);

    let yaml = run(args("h100-80gb-1g.10gb", "kustomize"));
    assert!(
        yaml.contains(&format!(
            "- name: MODEL_ID\n                    value: \"{REPO}\"\n                  - name: REVISION\n                    value: \"{commit}\""
        )),
        "{yaml}"
    );
    // The slice replaces the base's whole-GPU request and limit.
    let requests = yaml.split("requests:").nth(1).unwrap();
    let (requests, limits) = requests.split_once("limits:").unwrap();
    for part in [requests, limits] {
        assert!(part.contains("nvidia.com/gpu: null"), "{yaml}");
        assert!(part.contains("nvidia.com/mig-1g.10gb: \"1\""), "{yaml}");
    }
    assert!(
        yaml.contains("# nodes AWS        p5.4xlarge, p5.48xlarge (8)"),
        "{yaml}"
    );
    assert!(
        yaml.contains("--gpu h100-80gb-1g.10gb --replicas-per-gpu 1"),
        "{yaml}"
    );

    // The A100 80GB's 1g.10gb: its own memory figure, inside the card's 80 GB.
    let a: serde_json::Value =
        serde_json::from_str(&run(args("a100-80gb-1g.10gb", "json"))).unwrap();
    let a = &a["gpu_memory"]["gpu"];
    assert_eq!(a["memory_bytes"], 9_728 * MIB, "{a:#}");
    assert!(a["memory_bytes"].as_u64() < Some(81_920 * MIB));
    assert_eq!(a["resource"], "nvidia.com/mig-1g.10gb");
    assert!((a["fp16_tflops"].as_f64().unwrap() - 312.0 / 7.0).abs() < 1e-9);

    // A MIG slice is not time-sliced.
    let err = plan_error(&[
        "--model-id",
        dir.to_str().unwrap(),
        "--device",
        "cuda",
        "--gpu",
        "h100-1g.10gb",
        "--replicas-per-gpu",
        "2",
    ]);
    assert!(err.contains("not time-sliced"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_plain_folder_plans_as_text_but_is_refused_for_kustomize() {
    let dir = config_only("plain", minilm_config());
    let text = plan(&["--model-id", dir.to_str().unwrap()], &[]);
    assert!(text.contains("serves           unknown"), "{text}");
    let v = plan_json(&dir, &[]);
    assert!(v["model"]["serves"].is_null(), "{v:#}");
    let err = plan_error(&["--model-id", dir.to_str().unwrap(), "--output", "kustomize"]);
    assert!(err.contains("local folder"), "{err}");
    assert!(err.contains("--served-model-id"), "{err}");
    // Named explicitly, the component carries it (and the revision given).
    let yaml = plan(
        &[
            "--model-id",
            dir.to_str().unwrap(),
            "--served-model-id",
            "org/minilm-finetuned",
            "--revision",
            "v2",
            "--output",
            "kustomize",
        ],
        &[],
    );
    assert!(
        yaml.contains("- name: MODEL_ID\n                    value: \"org/minilm-finetuned\"\n                  - name: REVISION\n                    value: \"v2\""),
        "{yaml}"
    );
    assert!(
        yaml.contains("--served-model-id org/minilm-finetuned"),
        "{yaml}"
    );
    // A whole GPU keeps the base's nvidia.com/gpu request untouched.
    let patch = yaml.split_once("kind: Component").unwrap().1;
    assert!(!patch.contains("nvidia.com/"), "{yaml}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plan_reads_serves_env_vars_and_lists_its_gpus() {
    let dir = config_only("env", minilm_config());
    // MAX_BATCH_TOKENS, DTYPE and MODEL_ID mean what they mean to serve.
    let v: serde_json::Value = serde_json::from_str(&plan(
        &["--output", "json"],
        &[
            ("MODEL_ID", dir.to_str().unwrap()),
            ("MAX_BATCH_TOKENS", "4096"),
            ("DTYPE", "float32"),
        ],
    ))
    .unwrap();
    assert_eq!(v["max_batch_tokens"], 4096, "{v:#}");
    assert_eq!(v["dtype"], "float32");
    assert_eq!(v["model"]["model_id"], dir.to_str().unwrap());
    let _ = std::fs::remove_dir_all(&dir);

    let list = plan(&["--gpu", "list"], &[]);
    for id in [
        "t4",
        "a10 ",
        "a10g",
        "l40s",
        "b200",
        "a100-40gb-1g.5gb",
        "h100-80gb-7g.80gb",
    ] {
        assert!(list.contains(id), "{id}: {list}");
    }
    assert!(list.contains("nvidia.com/mig-3g.40gb"), "{list}");
    let err = plan_error(&["--gpu", "v100"]);
    assert!(err.contains("valid values: t4, a10, a10g"), "{err}");
}
