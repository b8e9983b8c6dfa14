//! `spotinfer plan`: right-sizing from the model alone, so no number in deploy/ is a guess.
//!
//! Reads config.json and the safetensors *headers* (a local folder's files, the Hub cache, or two
//! HTTP range requests per file against the Hub: never the weights), counts the parameters, and
//! turns them into the numbers a Deployment needs: host memory (weights at the dtype x 1.3 plus
//! the runtime, the platform guide's rule), GPU memory (weights + activation peak at the batch
//! token budget + the CUDA context), whether N time-sliced replicas fit one GPU, ephemeral
//! storage for the Hub cache, and KEDA thresholds from a measured or estimated per-pod
//! throughput. `--output kustomize` prints a kustomize Component that patches deploy/base.
//!
//! Every constant below is an assumption stated once, with its reason; change it here and the
//! manifests follow when regenerated.

mod compute;
mod gpus;
mod headers;
mod inspect;
mod render;
mod shape;

use crate::config::{DTypeArg, DeviceArg, PlanArgs, PlanOutput};

pub use compute::{compute, GpuMemory, HostMemory, Keda, Plan, Storage};
pub use gpus::{find as find_gpu, Gpu, GpuSpec, Mig, Nodes, CATALOGUE};
pub use headers::{add_header, read_local_header, WeightsSummary};
pub use inspect::{hub_snapshot, inspect, served_model, ModelFacts, ServedModel};
pub use render::{command_line, quantity, render_kustomize, render_text};
pub use shape::ModelShape;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What plan refuses, and what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "--gpu {given}: not in the catalogue; valid values: {valid} (`--gpu list` prints their \
         figures)"
    )]
    UnknownGpu { given: String, valid: String },
    #[error(
        "--dtype bfloat16 on the {gpu}: it has no BF16 (Turing); plan and serve with --dtype float16"
    )]
    NoBf16 { gpu: &'static str },
    #[error(
        "--replicas-per-gpu {replicas} on the MIG profile {gpu}: a MIG slice is not time-sliced \
         (its memory is its own); plan one replica on a smaller profile instead"
    )]
    MigReplicas { gpu: &'static str, replicas: usize },
    #[error(
        "--output kustomize: {folder} is a local folder, and the pods load their model by Hub id \
         (MODEL_ID), which this folder does not name; plan from the Hub id (--model-id org/name \
         --revision <commit>), from its Hub-cache snapshot folder \
         (.../models--org--name/snapshots/<commit>), or pass --served-model-id org/name"
    )]
    NoServedModel { folder: String },
}

/// What plan is asked to size for.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub dtype: DTypeArg,
    /// None: the CPU (no GPU, activations in host memory).
    pub gpu: Option<&'static Gpu>,
    pub replicas_per_gpu: u64,
    pub max_batch_tokens: u64,
    pub throughput: Option<f64>,
    /// What plan chose for the user (e.g. float16 for a bfloat16 checkpoint on a T4).
    pub notes: Vec<String>,
}

impl PlanOptions {
    /// The flags, with serve's defaults for what they leave out: float32 on the CPU; on a GPU
    /// bfloat16 for bfloat16 checkpoints (float16 on a GPU without BF16) and float16 otherwise;
    /// a token budget of 16384 or the model's longest input.
    pub fn from_args(
        args: &PlanArgs,
        gpu: &'static Gpu,
        shape: &ModelShape,
    ) -> Result<Self, PlanError> {
        let cpu = args.model.device == DeviceArg::Cpu;
        let bf16 = shape.saved_dtype.as_deref() == Some("bfloat16");
        let mut notes = Vec::new();
        let dtype = match (args.model.dtype, cpu) {
            (Some(DTypeArg::Bfloat16), false) if gpu.bf16_tflops.is_none() => {
                return Err(PlanError::NoBf16 { gpu: gpu.name })
            }
            (Some(d), _) => d,
            (None, true) => DTypeArg::Float32,
            (None, false) if bf16 && gpu.bf16_tflops.is_none() => {
                notes.push(format!(
                    "the checkpoint is bfloat16 and the {} has no BF16: planned at float16 \
                     (DTYPE=float16 in the kustomize output)",
                    gpu.name
                ));
                DTypeArg::Float16
            }
            (None, false) if bf16 => DTypeArg::Bfloat16,
            (None, false) => DTypeArg::Float16,
        };
        if !cpu && gpu.mig.is_some() && args.replicas_per_gpu > 1 {
            return Err(PlanError::MigReplicas {
                gpu: gpu.id,
                replicas: args.replicas_per_gpu,
            });
        }
        Ok(Self {
            dtype,
            gpu: (!cpu).then_some(gpu),
            replicas_per_gpu: args.replicas_per_gpu.max(1) as u64,
            max_batch_tokens: args
                .max_batch_tokens
                .unwrap_or_else(|| {
                    crate::config::DEFAULT_MAX_BATCH_TOKENS.max(shape.max_positions as usize)
                })
                .max(1) as u64,
            throughput: args.throughput,
            notes,
        })
    }
}

pub fn dtype_bytes(d: DTypeArg) -> u64 {
    match d {
        DTypeArg::Float32 => 4,
        DTypeArg::Float16 | DTypeArg::Bfloat16 => 2,
    }
}

pub fn dtype_name(d: DTypeArg) -> &'static str {
    match d {
        DTypeArg::Float32 => "float32",
        DTypeArg::Float16 => "float16",
        DTypeArg::Bfloat16 => "bfloat16",
    }
}

/// `spotinfer plan`.
pub async fn run(args: PlanArgs) -> anyhow::Result<()> {
    if args.gpu.trim().eq_ignore_ascii_case("list") {
        print!("{}", gpus::render_list());
        return Ok(());
    }
    // The GPU first: a typo fails before any network request.
    let gpu = gpus::find(&args.gpu).ok_or_else(|| PlanError::UnknownGpu {
        given: args.gpu.clone(),
        valid: gpus::ids(),
    })?;
    let facts = inspect(&args).await?;
    let mut opts = PlanOptions::from_args(&args, gpu, &facts.shape)?;
    let mut plan = compute(&facts, &opts);
    // Without --max-batch-tokens, serve on a GPU lowers its budget to what the memory left
    // after the weights holds (`batching::memory_cap`): plan the same budget.
    if args.max_batch_tokens.is_none() {
        if let Some(fit) = plan
            .gpu_memory
            .as_ref()
            .filter(|g| !g.fits)
            .and_then(|g| g.max_batch_tokens_that_fit)
        {
            opts.max_batch_tokens = fit;
            plan = compute(&facts, &opts);
        }
    }
    let out = match args.output {
        PlanOutput::Text => render_text(&plan),
        PlanOutput::Json => serde_json::to_string_pretty(&plan)? + "\n",
        PlanOutput::Kustomize => render_kustomize(&plan, &command_line(&args, &opts))?,
    };
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use compute::HOST_CUDA_BYTES;
    use headers::header_len;
    use serde_json::json;

    fn minilm_config() -> serde_json::Value {
        json!({"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 384,
               "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
               "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2})
    }

    fn llama7b_config() -> serde_json::Value {
        json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
               "intermediate_size": 11008, "vocab_size": 32000,
               "max_position_embeddings": 4096, "tie_word_embeddings": false})
    }

    /// A safetensors header in the llama layout, F16, as the Hub serves it for a 7B model.
    fn llama7b_header(shape: &ModelShape) -> Vec<u8> {
        let (h, i, v) = (shape.hidden, shape.intermediate, shape.vocab);
        let mut tensors: Vec<(String, Vec<u64>)> = vec![
            ("model.embed_tokens.weight".into(), vec![v, h]),
            ("model.norm.weight".into(), vec![h]),
            ("lm_head.weight".into(), vec![v, h]),
        ];
        for l in 0..shape.layers {
            for (n, s) in [
                ("self_attn.q_proj", vec![h, h]),
                ("self_attn.k_proj", vec![h, h]),
                ("self_attn.v_proj", vec![h, h]),
                ("self_attn.o_proj", vec![h, h]),
                ("mlp.gate_proj", vec![i, h]),
                ("mlp.up_proj", vec![i, h]),
                ("mlp.down_proj", vec![h, i]),
                ("input_layernorm", vec![h]),
                ("post_attention_layernorm", vec![h]),
            ] {
                tensors.push((format!("model.layers.{l}.{n}.weight"), s));
            }
        }
        let mut map = serde_json::Map::new();
        map.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut offset = 0u64;
        for (name, s) in tensors {
            let bytes = s.iter().product::<u64>() * 2;
            map.insert(
                name,
                json!({"dtype": "F16", "shape": s, "data_offsets": [offset, offset + bytes]}),
            );
            offset += bytes;
        }
        serde_json::to_vec(&map).unwrap()
    }

    fn facts(shape: ModelShape, weights: WeightsSummary) -> ModelFacts {
        ModelFacts {
            model_id: "x".into(),
            revision: "main".into(),
            serves: served_model("x", "main", None),
            shape,
            weights,
            parameters_from: "test".into(),
        }
    }

    fn gpu_opts(dtype: DTypeArg) -> PlanOptions {
        PlanOptions {
            dtype,
            gpu: find_gpu("a10g"),
            replicas_per_gpu: 1,
            max_batch_tokens: 16384,
            throughput: None,
            notes: Vec::new(),
        }
    }

    #[test]
    fn minilm_config_gives_22_7_million_parameters() {
        let shape = ModelShape::from_config(&minilm_config()).unwrap();
        assert_eq!(shape.estimated_parameters(), 22_713_216);
    }

    #[test]
    fn a_7b_header_needs_about_14_gb_at_fp16() {
        let shape = ModelShape::from_config(&llama7b_config()).unwrap();
        assert!(shape.gated_mlp && shape.lm_head);
        let header = llama7b_header(&shape);
        let mut sum = WeightsSummary::default();
        add_header(&mut sum, &header).unwrap();
        // Headers and config agree, and the guide's rule holds: 7B x 2 bytes ≈ 14 GB.
        assert_eq!(sum.parameters, shape.estimated_parameters());
        assert!(
            (6.6e9..7.0e9).contains(&(sum.parameters as f64)),
            "{}",
            sum.parameters
        );
        let plan = compute(&facts(shape, sum), &gpu_opts(DTypeArg::Float16));
        let gb = plan.host_memory.weights_bytes as f64 / 1e9;
        assert!((13.0..14.5).contains(&gb), "weights {gb} GB");
        // Host request: weights x 1.3 plus the runtime.
        let req = plan.host_memory.request_bytes as f64 / 1e9;
        assert!(
            (gb * 1.3..gb * 1.3 + 2.0).contains(&req),
            "request {req} GB"
        );
        // Naive attention at 16k tokens of 4k-token inputs cannot fit an A10G; plan says so
        // and names a budget that does.
        let g = plan.gpu_memory.unwrap();
        assert!(!g.fits);
        let t = g.max_batch_tokens_that_fit.expect("some budget fits 24 GB");
        assert!(t < 16384);
        // The throughput estimate is GPU-bound for a 7B model.
        assert!(plan.keda.throughput_per_pod < 50.0, "{:?}", plan.keda);
    }

    #[test]
    fn integer_buffers_are_not_parameters() {
        let header = json!({
            "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
            "embeddings.position_ids": {"dtype": "I64", "shape": [1, 512], "data_offsets": [24, 4120]},
        });
        let bytes = serde_json::to_vec(&header).unwrap();
        let mut sum = WeightsSummary::default();
        add_header(&mut sum, &bytes).unwrap();
        assert_eq!(sum.parameters, 6);
        assert_eq!(sum.stored_bytes, 8 + bytes.len() as u64 + 4120);
        assert_eq!(sum.stored_dtypes, vec!["F32", "I64"]);
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut sum = WeightsSummary::default();
        assert!(add_header(&mut sum, b"not json").is_err());
        assert!(add_header(&mut sum, br#"{"a":{"dtype":"F32","shape":[2]}}"#).is_err());
        assert!(header_len(&[0; 8], "f").is_err());
        assert!(header_len(&u64::MAX.to_le_bytes(), "f").is_err());
        assert_eq!(header_len(&16u64.to_le_bytes(), "f").unwrap(), 16);
    }

    #[test]
    fn minilm_on_a10g_fits_four_replicas() {
        let shape = ModelShape::from_config(&minilm_config()).unwrap();
        let p = shape.estimated_parameters();
        let sum = WeightsSummary {
            parameters: p,
            stored_bytes: p * 4,
            largest_file_bytes: p * 4,
            files: 1,
            stored_dtypes: vec!["F32".into()],
            unloaded_parameters: 0,
        };
        let mut opts = gpu_opts(DTypeArg::Float16);
        opts.replicas_per_gpu = 4;
        opts.max_batch_tokens = 8192;
        let plan = compute(&facts(shape, sum), &opts);
        let g = plan.gpu_memory.as_ref().unwrap();
        assert!(g.fits, "{g:?}");
        assert_eq!(plan.host_memory.weights_bytes, p * 2);
        assert_eq!(plan.keda.queue_depth_threshold, 64);
        // The estimate is the lower bound of the two, and 70 % of it is the threshold.
        let k = &plan.keda;
        assert_eq!(
            k.throughput_per_pod,
            k.compute_bound_per_pod.min(k.cpu_bound_per_pod)
        );
        assert_eq!(
            k.request_rate_threshold,
            (k.throughput_per_pod * 0.7) as u64
        );
        let yaml = render_kustomize(&plan, "spotinfer plan ...").unwrap();
        assert!(yaml.contains("kind: Component"));
        assert!(yaml.contains("value: \"8192\""));
        // A whole GPU keeps the base's nvidia.com/gpu request.
        let patch = yaml.split_once("kind: Component").unwrap().1;
        assert!(!patch.contains("nvidia.com/"), "{yaml}");
        // A Hub id is pinned in the manifests; a folder that names no repository is refused
        // rather than leaving the base's default model in the pods.
        assert!(yaml.contains("- name: MODEL_ID\n                    value: \"x\""));
        let mut local = plan.clone();
        local.model.model_id = "./models/minilm".into();
        local.model.serves = None;
        let err = render_kustomize(&local, "").unwrap_err().to_string();
        assert!(err.contains("--served-model-id"), "{err}");
        assert!(render_text(&local).contains("serves           unknown"));
    }

    #[test]
    fn a_mig_profile_gets_its_share_and_its_resource() {
        let shape = ModelShape::from_config(&minilm_config()).unwrap();
        let sum = WeightsSummary {
            parameters: shape.estimated_parameters(),
            files: 1,
            ..Default::default()
        };
        let f = facts(shape, sum);
        let whole = compute(&f, &gpu_opts(DTypeArg::Float16));
        let slice = compute(
            &f,
            &PlanOptions {
                gpu: find_gpu("h100-1g.10gb"),
                ..gpu_opts(DTypeArg::Float16)
            },
        );
        let g = slice.gpu_memory.as_ref().unwrap();
        assert_eq!(g.gpu.id, "h100-80gb-1g.10gb");
        assert_eq!(g.gpu.memory_bytes, 9_856 * MIB);
        assert_eq!(
            g.budget_per_replica_bytes,
            (9_856.0 * MIB as f64 * 0.85) as u64
        );
        assert!((g.gpu.peak_tflops - 989.5 / 7.0).abs() < 1e-9);
        // A seventh of an H100 out-computes an A10G's 70 TFLOP/s.
        assert!(slice.keda.compute_bound_per_pod > whole.keda.compute_bound_per_pod);
        let yaml = render_kustomize(&slice, "").unwrap();
        assert_eq!(yaml.matches("nvidia.com/gpu: null").count(), 2, "{yaml}");
        assert_eq!(
            yaml.matches("nvidia.com/mig-1g.10gb: \"1\"").count(),
            2,
            "{yaml}"
        );
        assert!(yaml.contains("p5.48xlarge"));
    }

    #[test]
    fn hub_cache_snapshot_folders_name_their_repository() {
        let p = std::path::Path::new(
            "/cache/hub/models--BAAI--bge-small-en-v1.5/snapshots/5c38ec7c405ec4b44b94cc5a9bb96e735b38267a",
        );
        assert_eq!(
            hub_snapshot(p),
            Some((
                "BAAI/bge-small-en-v1.5".into(),
                "5c38ec7c405ec4b44b94cc5a9bb96e735b38267a".into()
            ))
        );
        let legacy = std::path::Path::new("/c/models--bert-base-uncased/snapshots/abc/");
        assert_eq!(
            hub_snapshot(legacy),
            Some(("bert-base-uncased".into(), "abc".into()))
        );
        assert_eq!(hub_snapshot(std::path::Path::new("/models/minilm")), None);
        assert_eq!(
            hub_snapshot(std::path::Path::new("/c/datasets--a--b/snapshots/abc")),
            None
        );
        // A Hub id serves itself; --served-model-id wins over anything.
        let hub = served_model("org/name", "v1", None).unwrap();
        assert_eq!(
            (hub.model_id.as_str(), hub.revision.as_str()),
            ("org/name", "v1")
        );
        let named = served_model(".", "main", Some("org/other")).unwrap();
        assert_eq!(named.model_id, "org/other");
        assert_eq!(named.from, "--served-model-id");
    }

    #[test]
    fn cpu_plan_puts_activations_in_host_memory() {
        let shape = ModelShape::from_config(&minilm_config()).unwrap();
        let sum = WeightsSummary {
            parameters: shape.estimated_parameters(),
            files: 1,
            ..Default::default()
        };
        let f = facts(shape.clone(), sum);
        let cpu = compute(
            &f,
            &PlanOptions {
                gpu: None,
                ..gpu_opts(DTypeArg::Float32)
            },
        );
        assert!(cpu.gpu_memory.is_none());
        let act = shape.activation_bytes(16384, 4);
        assert!(cpu.host_memory.runtime_bytes >= act);
        assert!(cpu.host_memory.runtime_bytes < act + HOST_CUDA_BYTES);
        // On the CPU the model's own FLOPs bound the throughput, far below a GPU's.
        assert!(cpu.keda.throughput_per_pod < 100.0, "{:?}", cpu.keda);
    }

    #[test]
    fn quantities_are_kubernetes_units() {
        assert_eq!(quantity(2 * GIB), "2Gi");
        assert_eq!(quantity(1408 * MIB), "1408Mi");
        assert_eq!(quantity(MIB + 1), "2Mi");
    }
}
