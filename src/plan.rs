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

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hf_hub::api::tokio::ApiError;
use hf_hub::{Cache, Repo, RepoType};
use serde::Serialize;

use crate::config::{DTypeArg, DeviceArg, GpuKind, PlanArgs, PlanOutput};
use crate::model::resolve::{hub_api, hub_cache_dir, hub_offline, hub_token, shard_names};
use crate::model::ModelError;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The platform guide: weights must fit in host RAM before they reach the GPU, plus 30 %.
const HOST_WEIGHT_FACTOR: f64 = 1.3;
/// The process without weights: binary, tokenizer, async runtime, allocator slack.
const HOST_PROCESS_BYTES: u64 = 256 * MIB;
/// Host memory the CUDA driver takes: JIT-compiling candle's PTX kernels at load, pinned
/// staging buffers, the driver's own tables.
const HOST_CUDA_BYTES: u64 = GIB;
/// Device memory outside tensors: the CUDA context, the loaded kernel modules, cuBLAS workspace.
const GPU_CONTEXT_BYTES: u64 = 512 * MIB;
/// Inputs admitted at once (`--max-concurrent-requests`' default) and what each holds on the
/// host: its body (4 KiB), token ids / type ids / positions / offsets (16 B a token at the
/// model's longest input) and its pooled f32 embedding.
const BUFFERED_INPUTS: u64 = 512;
const BODY_BYTES: u64 = 4096;
/// The guide alerts at 85 % GPU memory: plan so the steady state stays below it.
const GPU_MEMORY_TARGET: f64 = 0.85;
/// Tokenizer, configs and sentence-transformers files beside the weights in the Hub cache.
const SMALL_FILES_BYTES: u64 = 32 * MIB;
/// Logs, /tmp and batch-job files on top of the model cache.
const SCRATCH_BYTES: u64 = GIB;
/// Typical embedding input for throughput and queue thresholds (a sentence or a short chunk).
const TOKENS_PER_INPUT: u64 = 128;
/// Fraction of the GPU's dense FP16 tensor rate a small-batch embedding server reaches: the
/// throughput estimate is an upper bound, to be replaced by a measured `--throughput`.
const MODEL_FLOPS_UTILISATION: f64 = 0.25;
/// HTTP + JSON + tokenization capacity of one core, in single-input requests a second:
/// measured with `wrk` on loopback against `/tokenize` of all-MiniLM-L6-v2 (an 88-token
/// input, 32 connections, the server pinned to one core of the 2-core CI machine): 1005/s.
/// The CPU side bounds small models: a GPU that could embed 6 000 inputs a second waits for
/// 4 cores.
const CPU_INPUTS_PER_CORE_SECOND: f64 = 1000.0;
/// Peak f32 rate of one x86-64 core with AVX2: 2 FMA units x 8 lanes x 2 FLOP x 3 GHz. Bounds
/// the model's compute in a CPU deployment (at the same utilisation as a GPU).
const CPU_GFLOPS_PER_CORE: f64 = 96.0;
/// CPU limit of the serving container in deploy/base (the guide: 2-4 cores).
const POD_CPU_CORES: f64 = 4.0;
/// Scale out at 70 % of a pod's throughput: the bottom of the guide's 70-85 % utilisation band,
/// leaving room for the minutes a new GPU node takes to arrive.
const TARGET_UTILISATION: f64 = 0.7;

/// What one GPU model offers.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GpuSpec {
    pub name: &'static str,
    /// Memory as `nvidia-smi` reports it.
    pub memory_bytes: u64,
    /// Dense FP16/BF16 tensor-core rate, TFLOP/s.
    pub fp16_tflops: f64,
}

pub fn gpu_spec(kind: GpuKind) -> GpuSpec {
    let (name, mib, fp16_tflops) = match kind {
        GpuKind::A10g => ("NVIDIA A10G (g5)", 23_028, 70.0),
        GpuKind::L4 => ("NVIDIA L4 (g6)", 23_034, 121.0),
        GpuKind::A100_40gb => ("NVIDIA A100 40GB (p4d)", 40_960, 312.0),
        GpuKind::A100_80gb => ("NVIDIA A100 80GB (p4de)", 81_920, 312.0),
        GpuKind::H100_80gb => ("NVIDIA H100 80GB (p5)", 81_559, 989.0),
    };
    GpuSpec {
        name,
        memory_bytes: mib * MIB,
        fp16_tflops,
    }
}

/// The shape numbers plan needs from config.json, under the names the common families use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelShape {
    pub model_type: String,
    pub hidden: u64,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub intermediate: u64,
    pub vocab: u64,
    pub max_positions: u64,
    pub type_vocab: u64,
    /// Gated MLP (llama, mistral, qwen2, gemma): three matrices instead of two.
    pub gated_mlp: bool,
    /// A separate output projection (causal LMs without tied embeddings).
    pub lm_head: bool,
}

fn field(cfg: &serde_json::Value, names: &[&str]) -> Option<u64> {
    names
        .iter()
        .find_map(|n| cfg.get(*n).and_then(|v| v.as_u64()))
}

impl ModelShape {
    pub fn from_config(cfg: &serde_json::Value) -> Result<Self, String> {
        let need = |names: &[&str]| {
            field(cfg, names).ok_or_else(|| format!("config.json has none of {names:?}"))
        };
        let model_type = cfg
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string();
        let hidden = need(&["hidden_size", "n_embd", "d_model", "dim"])?;
        let heads = need(&["num_attention_heads", "n_head", "num_heads", "n_heads"])?;
        let gated_mlp = matches!(
            model_type.as_str(),
            "llama" | "mistral" | "qwen2" | "qwen3" | "gemma" | "gemma2" | "gemma3_text"
        );
        let architectures: Vec<&str> = cfg
            .get("architectures")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let tied = cfg
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(!gated_mlp);
        Ok(Self {
            hidden,
            layers: need(&["num_hidden_layers", "n_layer", "num_layers", "n_layers"])?,
            heads,
            kv_heads: field(cfg, &["num_key_value_heads", "n_kv_heads"]).unwrap_or(heads),
            intermediate: field(cfg, &["intermediate_size", "n_inner", "ffn_dim", "d_ff"])
                .unwrap_or(4 * hidden),
            vocab: need(&["vocab_size"])?,
            max_positions: field(
                cfg,
                &["max_position_embeddings", "n_positions", "max_seq_len"],
            )
            .unwrap_or(512),
            type_vocab: field(cfg, &["type_vocab_size"]).unwrap_or(0),
            gated_mlp,
            lm_head: !tied && architectures.iter().any(|a| a.ends_with("ForCausalLM")),
            model_type,
        })
    }

    /// Parameters implied by the shape, for when no safetensors header is at hand and as a
    /// cross-check of the headers (BERT-style encoders and llama-style decoders).
    pub fn estimated_parameters(&self) -> u64 {
        let (h, i) = (self.hidden, self.intermediate);
        let kv = h / self.heads.max(1) * self.kv_heads;
        let per_layer = if self.gated_mlp {
            // q, o: h x h; k, v: h x kv; gate, up, down: h x i; two RMS norms.
            2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
        } else {
            // q, k, v, o and the two MLP matrices with biases; two layer norms.
            4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h
        };
        let mut embeddings = self.vocab * h;
        if !self.gated_mlp {
            // Learned positions, token types, the embedding layer norm, the pooler.
            embeddings += self.max_positions * h + self.type_vocab * h + 2 * h + (h * h + h);
        } else {
            embeddings += h; // final norm
        }
        let lm_head = if self.lm_head { self.vocab * h } else { 0 };
        embeddings + self.layers * per_layer + lm_head
    }

    /// FLOPs of one forward pass over one input of `tokens` tokens (matmuls only).
    pub fn flops_per_input(&self, tokens: u64) -> f64 {
        let dense = self
            .estimated_parameters()
            .saturating_sub(self.vocab * self.hidden);
        let attention = 4 * self.layers * tokens * tokens * self.hidden;
        2.0 * dense as f64 * tokens as f64 + attention as f64
    }

    /// Peak device bytes of the activations of one batch of `tokens` padded tokens: the dense
    /// layers run on the packed tokens (qkv, its padded copy, context, the MLP intermediate and
    /// its activation, residuals: 9h + 2i values a token) and attention holds scores and
    /// probabilities (2 x heads x L x L a sequence; n sequences of L tokens fill at most
    /// `tokens`, so at most 2 x heads x tokens x L with L the longest input).
    pub fn activation_bytes(&self, tokens: u64, dtype_bytes: u64) -> u64 {
        let dense = tokens * dtype_bytes * (9 * self.hidden + 2 * self.intermediate);
        let longest = self.max_positions.min(tokens);
        let attention = 2 * self.heads * tokens * longest * dtype_bytes;
        dense + attention
    }
}

/// What the safetensors headers say.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WeightsSummary {
    /// Floating-point parameters (integer buffers such as `position_ids` are not parameters).
    pub parameters: u64,
    /// Bytes of the files as stored (header + data): what the Hub cache holds.
    pub stored_bytes: u64,
    /// Largest single file: the mmaped pages the host holds at once while loading it.
    pub largest_file_bytes: u64,
    pub files: usize,
    pub stored_dtypes: Vec<String>,
}

/// Largest header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Adds one file's header (the JSON after the 8-byte length) to `sum`.
pub fn add_header(sum: &mut WeightsSummary, header_json: &[u8]) -> Result<(), String> {
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header_json).map_err(|e| format!("header is not JSON: {e}"))?;
    let mut data_end = 0u64;
    for (name, t) in &header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t
            .get("dtype")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("tensor {name} has no dtype"))?;
        let shape = t
            .get("shape")
            .and_then(|v| v.as_array())
            .ok_or_else(|| format!("tensor {name} has no shape"))?;
        let elements = shape.iter().try_fold(1u64, |acc, d| {
            d.as_u64()
                .and_then(|d| acc.checked_mul(d))
                .ok_or_else(|| format!("tensor {name} has a bad shape"))
        })?;
        let end = t
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .and_then(|o| o.get(1))
            .and_then(|v| v.as_u64())
            .ok_or_else(|| format!("tensor {name} has no data_offsets"))?;
        data_end = data_end.max(end);
        if matches!(
            dtype,
            "F64" | "F32" | "F16" | "BF16" | "F8_E4M3" | "F8_E5M2"
        ) {
            sum.parameters += elements;
        }
        if !sum.stored_dtypes.iter().any(|d| d == dtype) {
            sum.stored_dtypes.push(dtype.to_string());
        }
    }
    let file_bytes = 8 + header_json.len() as u64 + data_end;
    sum.stored_bytes += file_bytes;
    sum.largest_file_bytes = sum.largest_file_bytes.max(file_bytes);
    sum.files += 1;
    sum.stored_dtypes.sort();
    Ok(())
}

fn header_len(first8: &[u8], file: &str) -> Result<u64, ModelError> {
    let bytes: [u8; 8] = first8
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt(file, "shorter than 8 bytes"))?;
    let n = u64::from_le_bytes(bytes);
    if n == 0 || n > MAX_HEADER {
        return Err(corrupt(
            file,
            &format!("header length {n} is not plausible"),
        ));
    }
    Ok(n)
}

fn corrupt(file: &str, reason: &str) -> ModelError {
    ModelError::Corrupt {
        file: file.to_string(),
        reason: reason.to_string(),
    }
}

/// Reads the header of a local safetensors file (the length and the JSON, nothing more).
pub fn read_local_header(path: &Path, sum: &mut WeightsSummary) -> Result<(), ModelError> {
    use std::io::Read;
    let name = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut first = [0u8; 8];
    f.read_exact(&mut first)
        .map_err(|e| ModelError::io(path, e))?;
    let n = header_len(&first, &name)?;
    let mut json = vec![0u8; n as usize];
    f.read_exact(&mut json)
        .map_err(|e| ModelError::io(path, e))?;
    add_header(sum, &json).map_err(|e| corrupt(&name, &e))
}

/// Everything plan learned about the model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelFacts {
    pub model_id: String,
    pub revision: String,
    pub shape: ModelShape,
    pub weights: WeightsSummary,
    /// `safetensors headers` or `config.json estimate`.
    pub parameters_from: String,
}

fn weight_files_in(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return Ok(shard_names(&index)?
            .into_iter()
            .map(|n| dir.join(n))
            .collect());
    }
    let single = dir.join("model.safetensors");
    Ok(if single.is_file() {
        vec![single]
    } else {
        Vec::new()
    })
}

fn read_config(path: &Path) -> Result<ModelShape, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let cfg: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| corrupt(&path.display().to_string(), &e.to_string()))?;
    ModelShape::from_config(&cfg).map_err(|e| corrupt(&path.display().to_string(), &e))
}

fn finish(args: &PlanArgs, shape: ModelShape, weights: WeightsSummary) -> ModelFacts {
    let (weights, parameters_from) = if weights.files > 0 {
        (weights, "safetensors headers")
    } else {
        let parameters = shape.estimated_parameters();
        (
            WeightsSummary {
                parameters,
                stored_bytes: parameters * 4,
                largest_file_bytes: parameters * 4,
                files: 0,
                stored_dtypes: vec!["F32 (assumed)".into()],
            },
            "config.json estimate",
        )
    };
    ModelFacts {
        model_id: args.model.model_id.clone(),
        revision: args.model.revision.clone(),
        shape,
        weights,
        parameters_from: parameters_from.into(),
    }
}

/// Reads config.json and the safetensors headers: a local folder, else the Hub cache, else the
/// Hub itself with range requests (config.json and the shard index are small and are cached).
pub async fn inspect(args: &PlanArgs) -> Result<ModelFacts, ModelError> {
    let local = Path::new(&args.model.model_id);
    if local.is_dir() {
        let shape = read_config(&local.join("config.json"))?;
        let mut sum = WeightsSummary::default();
        for f in weight_files_in(local)? {
            read_local_header(&f, &mut sum)?;
        }
        return Ok(finish(args, shape, sum));
    }
    if args.model.model_id.starts_with('/') || args.model.model_id.starts_with('.') {
        return Err(ModelError::Missing {
            file: args.model.model_id.clone(),
            hint: "no such folder: give an existing local folder or a Hub repository id".into(),
        });
    }
    let cache = Cache::new(hub_cache_dir(args.model.huggingface_hub_cache.as_deref()));
    let repo = Repo::with_revision(
        args.model.model_id.clone(),
        RepoType::Model,
        args.model.revision.clone(),
    );
    // The cache first: a model already downloaded needs no network at all.
    let cached = cache.repo(repo.clone());
    if let Some(config) = cached.get("config.json") {
        let names = match cached.get("model.safetensors.index.json") {
            Some(index) => shard_names(&index)?,
            None => vec!["model.safetensors".to_string()],
        };
        let paths: Vec<Option<PathBuf>> = names.iter().map(|n| cached.get(n)).collect();
        if paths.iter().all(Option::is_some) {
            let shape = read_config(&config)?;
            let mut sum = WeightsSummary::default();
            for p in paths.into_iter().flatten() {
                read_local_header(&p, &mut sum)?;
            }
            return Ok(finish(args, shape, sum));
        }
    }
    if hub_offline() {
        return Err(ModelError::Missing {
            file: format!("{}/config.json", args.model.model_id),
            hint: "HF_HUB_OFFLINE is set and the cache lacks the model: unset it, or run \
                   `spotinfer download` first"
                .into(),
        });
    }
    let api = hub_api(&cache, false)?.repo(repo);
    let config = api
        .get("config.json")
        .await
        .map_err(|e| ModelError::Hub(format!("config.json: {e}")))?;
    let shape = read_config(&config)?;
    let names = match api.get("model.safetensors.index.json").await {
        Ok(index) => shard_names(&index)?,
        Err(ApiError::RequestError(e)) if e.status().map(|s| s.as_u16()) == Some(404) => {
            vec!["model.safetensors".to_string()]
        }
        Err(e) => {
            return Err(ModelError::Hub(format!(
                "model.safetensors.index.json: {e}"
            )))
        }
    };
    let client = reqwest::Client::builder()
        .user_agent(concat!("spotinfer/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ModelError::Hub(e.to_string()))?;
    let token = hub_token(&cache);
    let mut sum = WeightsSummary::default();
    for name in names {
        let url = api.url(&name);
        let first = range(&client, &url, token.as_deref(), 0, 8).await?;
        let n = header_len(&first, &name)?;
        let json = range(&client, &url, token.as_deref(), 8, n).await?;
        add_header(&mut sum, &json).map_err(|e| corrupt(&name, &e))?;
    }
    Ok(finish(args, shape, sum))
}

/// `len` bytes of `url` from `start`, with a Range request. A server that ignores Range gets
/// its body read only as far as needed, then dropped.
async fn range(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    start: u64,
    len: u64,
) -> Result<Vec<u8>, ModelError> {
    let hub = |e: String| ModelError::Hub(format!("{url}: {e}"));
    let mut req = client.get(url).header(
        reqwest::header::RANGE,
        format!("bytes={start}-{}", start + len - 1),
    );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let mut resp = req.send().await.map_err(|e| hub(e.to_string()))?;
    let status = resp.status();
    let mut skip = match status.as_u16() {
        206 => 0,
        200 => start,
        401 | 403 => {
            return Err(hub(format!(
                "{status}: a gated or private repository needs HF_TOKEN"
            )))
        }
        _ => return Err(hub(status.to_string())),
    };
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        let Some(chunk) = resp.chunk().await.map_err(|e| hub(e.to_string()))? else {
            break;
        };
        let mut chunk = &chunk[..];
        let dropped = skip.min(chunk.len() as u64);
        chunk = &chunk[dropped as usize..];
        skip -= dropped;
        let want = (len - out.len() as u64).min(chunk.len() as u64) as usize;
        out.extend_from_slice(&chunk[..want]);
    }
    if (out.len() as u64) < len {
        return Err(hub(format!("got {} of {len} header bytes", out.len())));
    }
    Ok(out)
}

/// What plan is asked to size for.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub dtype: DTypeArg,
    /// None: the CPU (no GPU, activations in host memory).
    pub gpu: Option<GpuKind>,
    pub replicas_per_gpu: u64,
    pub max_batch_tokens: u64,
    pub throughput: Option<f64>,
}

impl PlanOptions {
    pub fn from_args(args: &PlanArgs) -> Self {
        let cpu = args.model.device == DeviceArg::Cpu;
        Self {
            dtype: args.model.dtype.unwrap_or(if cpu {
                DTypeArg::Float32
            } else {
                DTypeArg::Float16
            }),
            gpu: (!cpu).then_some(args.gpu),
            replicas_per_gpu: args.replicas_per_gpu.max(1) as u64,
            max_batch_tokens: args.max_batch_tokens.max(1) as u64,
            throughput: args.throughput,
        }
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

#[derive(Debug, Clone, Serialize)]
pub struct HostMemory {
    pub weights_bytes: u64,
    pub runtime_bytes: u64,
    /// weights x 1.3 + runtime (+ activations on the CPU), rounded up to 64 MiB.
    pub request_bytes: u64,
    /// request + the largest safetensors file: its mmaped pages are charged to the pod while
    /// it loads.
    pub limit_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuMemory {
    pub gpu: GpuSpec,
    pub weights_bytes: u64,
    pub activation_bytes: u64,
    pub context_bytes: u64,
    /// weights + activations at the token budget + context: one replica's peak.
    pub needed_bytes: u64,
    pub replicas_per_gpu: u64,
    /// 85 % of the GPU's memory shared by the replicas.
    pub budget_per_replica_bytes: u64,
    pub fits: bool,
    /// Largest power-of-two `--max-batch-tokens` that fits the replicas (None: not even 256).
    pub max_batch_tokens_that_fit: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Storage {
    /// Model files in the Hub cache.
    pub cache_bytes: u64,
    /// cache + 1 GiB scratch, rounded up to 256 MiB.
    pub request_bytes: u64,
    /// Room for a second revision during an upgrade: 2 x cache + 2 GiB.
    pub limit_bytes: u64,
    /// The /data volume (Hub cache and state dir): 2 x cache + 1 GiB.
    pub volume_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Keda {
    /// Single-input requests a second one pod sustains.
    pub throughput_per_pod: f64,
    /// `given` (--throughput) or `estimate` (the lower of the compute and the CPU bound).
    pub throughput_from: String,
    /// The model's FLOPs against the GPU's (its time-sliced share) or the pod's cores.
    pub compute_bound_per_pod: f64,
    pub cpu_bound_per_pod: f64,
    /// Per-pod request rate to scale out at (70 % of the throughput).
    pub request_rate_threshold: u64,
    /// Waiting inputs per pod to scale out at: one full batch of typical inputs.
    pub queue_depth_threshold: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub model: ModelFacts,
    pub dtype: String,
    pub max_batch_tokens: u64,
    pub host_memory: HostMemory,
    pub gpu_memory: Option<GpuMemory>,
    pub ephemeral_storage: Storage,
    pub keda: Keda,
}

fn round_up(bytes: u64, step: u64) -> u64 {
    bytes.div_ceil(step) * step
}

fn gpu_needed(shape: &ModelShape, weights: u64, tokens: u64, dtype_bytes: u64) -> u64 {
    weights + shape.activation_bytes(tokens, dtype_bytes) + GPU_CONTEXT_BYTES
}

/// The arithmetic, separate from any I/O so it can be tested on synthetic models.
pub fn compute(facts: &ModelFacts, opts: &PlanOptions) -> Plan {
    let shape = &facts.shape;
    let b = dtype_bytes(opts.dtype);
    let weights = facts.weights.parameters * b;
    let buffering = BUFFERED_INPUTS * (BODY_BYTES + 16 * shape.max_positions + 4 * shape.hidden);
    let mut runtime = HOST_PROCESS_BYTES + buffering;
    let activations = shape.activation_bytes(opts.max_batch_tokens, b);
    match opts.gpu {
        Some(_) => runtime += HOST_CUDA_BYTES,
        None => runtime += activations,
    }
    let request = round_up(
        (weights as f64 * HOST_WEIGHT_FACTOR).ceil() as u64 + runtime,
        64 * MIB,
    );
    let host_memory = HostMemory {
        weights_bytes: weights,
        runtime_bytes: runtime,
        request_bytes: request,
        limit_bytes: round_up(request + facts.weights.largest_file_bytes, 64 * MIB),
    };

    let gpu_memory = opts.gpu.map(|kind| {
        let gpu = gpu_spec(kind);
        let budget =
            (gpu.memory_bytes as f64 * GPU_MEMORY_TARGET / opts.replicas_per_gpu as f64) as u64;
        let needed = gpu_needed(shape, weights, opts.max_batch_tokens, b);
        let max_batch_tokens_that_fit = (8..=16)
            .rev()
            .map(|p| 1u64 << p)
            .find(|&t| gpu_needed(shape, weights, t, b) <= budget);
        GpuMemory {
            gpu,
            weights_bytes: weights,
            activation_bytes: activations,
            context_bytes: GPU_CONTEXT_BYTES,
            needed_bytes: needed,
            replicas_per_gpu: opts.replicas_per_gpu,
            budget_per_replica_bytes: budget,
            fits: needed <= budget,
            max_batch_tokens_that_fit,
        }
    });

    let cache = facts.weights.stored_bytes + SMALL_FILES_BYTES;
    let ephemeral_storage = Storage {
        cache_bytes: cache,
        request_bytes: round_up(cache + SCRATCH_BYTES, 256 * MIB),
        limit_bytes: round_up(2 * cache + 2 * SCRATCH_BYTES, 256 * MIB),
        volume_bytes: round_up(2 * cache + SCRATCH_BYTES, 256 * MIB),
    };

    let flops = shape.flops_per_input(TOKENS_PER_INPUT);
    let compute_bound = match opts.gpu {
        Some(k) => {
            let share = 1.0 / opts.replicas_per_gpu as f64;
            gpu_spec(k).fp16_tflops * 1e12 * MODEL_FLOPS_UTILISATION * share / flops
        }
        None => POD_CPU_CORES * CPU_GFLOPS_PER_CORE * 1e9 * MODEL_FLOPS_UTILISATION / flops,
    };
    let cpu_bound = CPU_INPUTS_PER_CORE_SECOND * POD_CPU_CORES;
    let (throughput, from) = match opts.throughput {
        Some(t) => (t, "given"),
        None => (compute_bound.min(cpu_bound), "estimate"),
    };
    let keda = Keda {
        throughput_per_pod: throughput,
        throughput_from: from.into(),
        compute_bound_per_pod: compute_bound,
        cpu_bound_per_pod: cpu_bound,
        request_rate_threshold: ((throughput * TARGET_UTILISATION).floor() as u64).max(1),
        queue_depth_threshold: (opts.max_batch_tokens / TOKENS_PER_INPUT).max(1),
    };
    Plan {
        model: facts.clone(),
        dtype: dtype_name(opts.dtype).into(),
        max_batch_tokens: opts.max_batch_tokens,
        host_memory,
        gpu_memory,
        ephemeral_storage,
        keda,
    }
}

/// A Kubernetes quantity: whole GiB as `NGi`, else MiB.
pub fn quantity(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{}Gi", bytes / GIB)
    } else {
        format!("{}Mi", bytes.div_ceil(MIB))
    }
}

fn human(bytes: u64) -> String {
    if bytes >= GIB {
        format!(
            "{:.2} GiB ({:.1} GB)",
            bytes as f64 / GIB as f64,
            bytes as f64 / 1e9
        )
    } else {
        format!(
            "{:.1} MiB ({:.1} MB)",
            bytes as f64 / MIB as f64,
            bytes as f64 / 1e6
        )
    }
}

fn millions(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} B", n as f64 / 1e9)
    } else {
        format!("{:.1} M", n as f64 / 1e6)
    }
}

pub fn render_text(p: &Plan) -> String {
    let mut s = String::new();
    let m = &p.model;
    let w = &m.weights;
    let _ = writeln!(
        s,
        "model            {} @ {} ({})",
        m.model_id, m.revision, m.shape.model_type
    );
    let _ = writeln!(
        s,
        "parameters       {} ({}) from {}; {} file(s), {} stored as {}",
        w.parameters,
        millions(w.parameters),
        m.parameters_from,
        w.files,
        human(w.stored_bytes),
        w.stored_dtypes.join("+")
    );
    let h = &p.host_memory;
    let _ = writeln!(
        s,
        "weights          {} at {}",
        human(h.weights_bytes),
        p.dtype
    );
    let _ = writeln!(
        s,
        "memory request   {} = weights x {HOST_WEIGHT_FACTOR} + runtime {}",
        quantity(h.request_bytes),
        human(h.runtime_bytes)
    );
    let _ = writeln!(
        s,
        "memory limit     {} = request + largest safetensors file (mmaped while loading)",
        quantity(h.limit_bytes)
    );
    match &p.gpu_memory {
        Some(g) => {
            let _ = writeln!(
                s,
                "GPU memory       {} = weights + activations {} at {} batch tokens + context {}",
                human(g.needed_bytes),
                human(g.activation_bytes),
                p.max_batch_tokens,
                human(g.context_bytes)
            );
            let _ = writeln!(
                s,
                "GPU fit          {} x {} on one {} ({} each at {:.0} % of {}): {}",
                g.replicas_per_gpu,
                human(g.needed_bytes),
                g.gpu.name,
                human(g.budget_per_replica_bytes),
                GPU_MEMORY_TARGET * 100.0,
                human(g.gpu.memory_bytes),
                if g.fits { "fits" } else { "DOES NOT FIT" }
            );
            let _ = writeln!(
                s,
                "batch tokens     largest power of two that fits: {}",
                g.max_batch_tokens_that_fit
                    .map_or("none (even 256 does not fit)".to_string(), |t| t
                        .to_string())
            );
        }
        None => {
            let _ = writeln!(
                s,
                "GPU              none (CPU plan: activations are in the memory request)"
            );
        }
    }
    let e = &p.ephemeral_storage;
    let _ = writeln!(
        s,
        "ephemeral        request {} (cache {} + scratch), limit {}, /data volume {}",
        quantity(e.request_bytes),
        human(e.cache_bytes),
        quantity(e.limit_bytes),
        quantity(e.volume_bytes)
    );
    let k = &p.keda;
    let _ = writeln!(
        s,
        "throughput       {:.0} requests/s per pod, one input each ({}; compute bound {:.0}, HTTP and tokenization bound {:.0})",
        k.throughput_per_pod,
        k.throughput_from,
        k.compute_bound_per_pod,
        k.cpu_bound_per_pod
    );
    let _ = writeln!(
        s,
        "KEDA             request-rate threshold {} per pod ({:.0} % of throughput), queue-depth threshold {} inputs per pod",
        k.request_rate_threshold,
        TARGET_UTILISATION * 100.0,
        k.queue_depth_threshold
    );
    if k.throughput_from == "estimate" {
        let _ = writeln!(
            s,
            "note             throughput is an estimate: load-test one pod and pass --throughput"
        );
    }
    s
}

fn is_local(model_id: &str) -> bool {
    Path::new(model_id).is_dir() || model_id.starts_with('/') || model_id.starts_with('.')
}

/// The command line that reproduces this plan, for the generated file's header.
pub fn command_line(args: &PlanArgs, opts: &PlanOptions) -> String {
    let mut c = format!(
        "spotinfer plan --model-id {} --revision {} --dtype {}",
        args.model.model_id,
        args.model.revision,
        dtype_name(opts.dtype)
    );
    match opts.gpu {
        Some(g) => {
            let gpu = clap::ValueEnum::to_possible_value(&g)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default();
            let _ = write!(
                c,
                " --gpu {gpu} --replicas-per-gpu {}",
                opts.replicas_per_gpu
            );
        }
        None => c.push_str(" --device cpu"),
    }
    let _ = write!(c, " --max-batch-tokens {}", opts.max_batch_tokens);
    if let Some(t) = opts.throughput {
        let _ = write!(c, " --throughput {t}");
    }
    c.push_str(" --output kustomize");
    c
}

/// A kustomize Component patching deploy/base: the container's memory and ephemeral storage,
/// the /data volume, the dtype and token budget it was sized for, and the ScaledObject's
/// thresholds (trigger 0: request rate, trigger 1: queue depth).
pub fn render_kustomize(p: &Plan, command: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Generated by `spotinfer plan`; do not edit, regenerate with:"
    );
    let _ = writeln!(s, "#   {command}");
    for line in render_text(p).lines() {
        let _ = writeln!(s, "# {line}");
    }
    let h = &p.host_memory;
    let e = &p.ephemeral_storage;
    let mut env = String::new();
    if !is_local(&p.model.model_id) {
        let _ = write!(
            env,
            "                  - name: MODEL_ID\n                    value: {}\n                  - name: REVISION\n                    value: {}\n",
            yaml_str(&p.model.model_id),
            yaml_str(&p.model.revision)
        );
    }
    let _ = write!(
        env,
        "                  - name: DTYPE\n                    value: {}\n                  - name: MAX_BATCH_TOKENS\n                    value: \"{}\"\n",
        p.dtype, p.max_batch_tokens
    );
    let _ = write!(
        s,
        r#"apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: spotinfer
      spec:
        template:
          spec:
            containers:
              - name: spotinfer
                env:
{env}                resources:
                  requests:
                    memory: {mreq}
                    ephemeral-storage: {ereq}
                  limits:
                    memory: {mlim}
                    ephemeral-storage: {elim}
            volumes:
              - name: data
                emptyDir:
                  sizeLimit: {vol}
  - target:
      group: keda.sh
      kind: ScaledObject
      name: spotinfer
    patch: |-
      - op: replace
        path: /spec/triggers/0/metadata/threshold
        value: "{rate}"
      - op: replace
        path: /spec/triggers/1/metadata/threshold
        value: "{queue}"
"#,
        mreq = quantity(h.request_bytes),
        mlim = quantity(h.limit_bytes),
        ereq = quantity(e.request_bytes),
        elim = quantity(e.limit_bytes),
        vol = quantity(e.volume_bytes),
        rate = p.keda.request_rate_threshold,
        queue = p.keda.queue_depth_threshold,
    );
    s
}

/// A YAML scalar that stays a string whatever the model id looks like.
fn yaml_str(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

/// `spotinfer plan`.
pub async fn run(args: PlanArgs) -> anyhow::Result<()> {
    let facts = inspect(&args).await?;
    let opts = PlanOptions::from_args(&args);
    let plan = compute(&facts, &opts);
    let out = match args.output {
        PlanOutput::Text => render_text(&plan),
        PlanOutput::Json => serde_json::to_string_pretty(&plan)? + "\n",
        PlanOutput::Kustomize => render_kustomize(&plan, &command_line(&args, &opts)),
    };
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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
            shape,
            weights,
            parameters_from: "test".into(),
        }
    }

    fn gpu_opts(dtype: DTypeArg) -> PlanOptions {
        PlanOptions {
            dtype,
            gpu: Some(GpuKind::A10g),
            replicas_per_gpu: 1,
            max_batch_tokens: 16384,
            throughput: None,
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
        let yaml = render_kustomize(&plan, "spotinfer plan ...");
        assert!(yaml.contains("kind: Component"));
        assert!(yaml.contains("value: \"8192\""));
        // A Hub id is pinned in the manifests, a local folder never lands there.
        assert!(yaml.contains("- name: MODEL_ID\n                    value: \"x\""));
        let mut local = plan.clone();
        local.model.model_id = "./models/minilm".into();
        assert!(!render_kustomize(&local, "").contains("MODEL_ID"));
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
