//! Models: find the files, read the configs, load weights onto a backend, and run forward
//! passes on packed batches. Knows nothing of HTTP, queues or the command line.
//!
//! Families × backends (see `layers.rs`): a family (`families/`) is written once against the
//! layer seam; a backend (`cpu/` native F32 kernels, `reference/` candle ops) implements the
//! layers. [`load`] reads config.json, picks family and task (`registry.rs`), loads the
//! backbone and heads (`heads.rs`) on the chosen backend, and returns a [`Model`]: the one
//! object the device worker calls.
//!
//! Over 500 lines on purpose: this is the `Model` trait and the one `load` that wires every
//! family, head and backend together; the parts live in the submodules.

pub mod batch;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod error;
pub mod families;
pub mod heads;
pub mod layers;
pub mod output;
pub mod pooling;
pub mod reference;
pub mod registry;
pub mod resolve;
pub mod st_config;
pub mod template;
pub mod weights;

use std::path::Path;

use candle_core::{DType, Device};

pub use batch::PackedBatch;
pub use error::ModelError;
pub use output::{Output, Want};
pub use pooling::Pooling;
pub use registry::{Architecture, Family, Task};
pub use resolve::{resolve, resolve_dense, ModelFiles, ResolveOptions};
pub use st_config::SentenceTransformerConfig;

pub use device::DeviceMemory;
use families::Backbone;
use heads::{BgeM3, Dense, Heads};
use layers::Backend;
use weights::Weights;

/// What a loaded model is, for the queue, /info and logs (the one description of it: the
/// server's `ModelInfo` holds it whole).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelSummary {
    pub family: &'static str,
    pub architecture: String,
    pub task: Task,
    pub backend: &'static str,
    pub dtype: &'static str,
    pub hidden_size: usize,
    /// Width of the pooled vector (after any Dense module).
    pub output_size: usize,
    /// Longest input the position embeddings allow.
    #[serde(skip)]
    pub max_positions: usize,
    pub vocab_size: usize,
    pub parameter_bytes: usize,
    /// A batch costs `inputs x longest input`: the queue groups similar lengths.
    #[serde(skip)]
    pub pads_to_longest: bool,
    pub pooling: Option<Pooling>,
    /// Classifier labels in logit order (one for a reranker).
    pub labels: Vec<String>,
    /// The outputs inputs may ask for.
    #[serde(skip)]
    pub available: Want,
    /// How a reranker takes its pairs (`Pair` for every other task).
    #[serde(skip)]
    pub rerank_template: template::RerankTemplate,
}

/// A loaded model: the device worker's one handle on it.
pub trait Model: Send {
    /// Runs the backbone once over the packed batch and the heads each input wants.
    /// `at_yield` is called between the layers' products (preemption points for online work).
    fn run(
        &self,
        batch: &PackedBatch,
        wants: &[Want],
        at_yield: &mut dyn FnMut(),
    ) -> Result<Vec<Output>, ModelError>;
    fn summary(&self) -> &ModelSummary;
    /// The GPU's memory and the activation bytes per batch token (None on the CPU).
    fn device_memory(&self) -> Option<DeviceMemory> {
        None
    }
    /// Sizes activation buffers for batches of up to `tokens` tokens (after the warm-up).
    fn reserve_tokens(&self, _tokens: usize) -> Result<(), ModelError> {
        Ok(())
    }
}

/// Which implementation runs the layers on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuBackend {
    /// Our own F32 kernels (`cpu/`): the fast path.
    #[default]
    Native,
    /// The reference backend (`reference/`, candle's ops; the same one a GPU runs by default):
    /// any dtype; the oracle the native path is tested against.
    Reference,
}

/// Which implementation runs the layers on a CUDA GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuBackend {
    /// candle's CUDA ops (`reference/`): the default until the fused backend is verified on GPUs.
    #[default]
    Reference,
    /// spotinfer's own kernels and cuBLASLt (`cuda/fused/`); falls back to the reference
    /// backend (logging why) where its start-up self-check, the GPU, the dtype or the model
    /// does not allow it.
    Fused,
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    pub cpu_backend: CpuBackend,
    pub gpu_backend: GpuBackend,
    /// erf-GELU on the fused backend: exact, or cuBLASLt's tanh epilogue.
    pub fused_gelu: cuda::host::steps::GeluMode,
    /// `--pooling`: overrides the sentence-transformers config.
    pub pooling: Option<Pooling>,
    /// `--task`: where a checkpoint can do several things.
    pub task: Option<Task>,
}

impl LoadOptions {
    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            cpu_backend: CpuBackend::Native,
            gpu_backend: GpuBackend::Reference,
            fused_gelu: cuda::host::steps::GeluMode::Exact,
            pooling: None,
            task: None,
        }
    }
}

struct Loaded<B: Backend> {
    backend: B,
    backbone: Box<dyn Backbone<B>>,
    heads: Heads<B>,
    summary: ModelSummary,
    /// For the activation estimate of backends that do not measure theirs.
    shape: cuda::host::memory::Shape,
}

impl<B: Backend> Model for Loaded<B> {
    fn run(
        &self,
        batch: &PackedBatch,
        wants: &[Want],
        at_yield: &mut dyn FnMut(),
    ) -> Result<Vec<Output>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if wants.len() != batch.len() {
            return Err(ModelError::Device(format!(
                "{} wants for {} sequences",
                wants.len(),
                batch.len()
            )));
        }
        let plan = self.backend.plan(batch)?;
        let hidden = self
            .backbone
            .forward(&self.backend, &plan, batch, at_yield)?;
        self.heads.run(&self.backend, &plan, batch, &hidden, wants)
    }

    fn summary(&self) -> &ModelSummary {
        &self.summary
    }

    fn device_memory(&self) -> Option<DeviceMemory> {
        let mut m = self.backend.device_memory()?;
        if m.bytes_per_token.is_none() {
            m.bytes_per_token = Some(cuda::host::memory::reference_bytes_per_token(&self.shape));
        }
        Some(m)
    }

    fn reserve_tokens(&self, tokens: usize) -> Result<(), ModelError> {
        self.backend.reserve_tokens(tokens)
    }
}

/// The first of `keys` in config.json that is a number.
fn config_usize(cfg: &serde_json::Value, keys: &[&str]) -> Option<usize> {
    keys.iter()
        .find_map(|k| cfg.get(*k).and_then(serde_json::Value::as_u64))
        .map(|v| v as usize)
}

const HEAD_KEYS: [&str; 3] = ["num_attention_heads", "n_head", "n_heads"];

/// The attention head dim from config.json (explicit, or hidden / heads).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn head_dim(cfg: &serde_json::Value, hidden: usize) -> Option<usize> {
    config_usize(cfg, &["head_dim"])
        .or_else(|| config_usize(cfg, &HEAD_KEYS).and_then(|h| hidden.checked_div(h)))
}

/// Reads config.json, picks family, task and backend, and loads weights and heads.
pub fn load(
    files: &ModelFiles,
    st: &SentenceTransformerConfig,
    opts: &LoadOptions,
) -> Result<Box<dyn Model>, ModelError> {
    let text = read(&files.config)?;
    let cfg: serde_json::Value = parse(&files.config, &text)?;
    let arch = Architecture::read(&cfg)?;
    let pooling = opts.pooling.or(st.pooling);
    let task = arch.task(opts.task, pooling)?;
    if opts.device.is_cuda() && opts.gpu_backend == GpuBackend::Fused {
        if let Some(m) = load_fused(&arch, task, &cfg, files, st, pooling, opts) {
            return Ok(m);
        }
    }
    let native = opts.device.is_cpu() && opts.cpu_backend == CpuBackend::Native;
    if native && opts.dtype == DType::F32 {
        return load_on(cpu::Cpu::new(), &arch, task, &cfg, files, st, pooling);
    }
    if native && opts.dtype == DType::F16 {
        match cpu::Cpu::half() {
            Some(backend) => return load_on(backend, &arch, task, &cfg, files, st, pooling),
            None => tracing::warn!(
                "--dtype float16 on the native CPU backend needs AVX512-FP16 (Intel Sapphire \
                 Rapids or later) and --cpu-kernel auto, avx512 or amx: using the reference \
                 backend in float16, which is slow on a CPU; --dtype float32 is the fast \
                 choice here"
            ),
        }
    }
    load_on(
        reference::Reference::new(opts.device.clone(), opts.dtype),
        &arch,
        task,
        &cfg,
        files,
        st,
        pooling,
    )
}

/// The model on the fused CUDA backend, or `None` (logged) when it refuses: the caller loads
/// the reference backend instead. A two-sequence forward pass right after loading catches a
/// model the fused kernels cannot run (an unsupported layer, a non-finite output).
#[cfg(feature = "cuda")]
fn load_fused(
    arch: &Architecture,
    task: Task,
    cfg: &serde_json::Value,
    files: &ModelFiles,
    st: &SentenceTransformerConfig,
    pooling: Option<Pooling>,
    opts: &LoadOptions,
) -> Option<Box<dyn Model>> {
    use cuda::fused::{open, FusedOptions, Opened};
    let hidden = families::facts(arch.family, cfg).ok()?.hidden;
    let fused = FusedOptions {
        gelu: opts.fused_gelu,
    };
    let opened = match open(&opts.device, opts.dtype, head_dim(cfg, hidden), fused) {
        Ok(o) => o,
        Err(reason) => {
            tracing::warn!(%reason, "--gpu-backend fused refused: using the reference backend");
            return None;
        }
    };
    let loaded = match opened {
        Opened::F16(b) => load_on(b, arch, task, cfg, files, st, pooling),
        Opened::BF16(b) => load_on(b, arch, task, cfg, files, st, pooling),
    };
    match loaded.and_then(|m| probe(m.as_ref()).map(|()| m)) {
        Ok(m) => {
            tracing::info!(
                gelu = opts.fused_gelu.name(),
                "model on the fused CUDA backend"
            );
            Some(m)
        }
        Err(e) => {
            tracing::warn!(error = %e, "the fused backend cannot run this model: using the reference backend");
            None
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn load_fused(
    _: &Architecture,
    _: Task,
    _: &serde_json::Value,
    _: &ModelFiles,
    _: &SentenceTransformerConfig,
    _: Option<Pooling>,
    _: &LoadOptions,
) -> Option<Box<dyn Model>> {
    tracing::warn!("--gpu-backend fused needs the `cuda` feature: using the reference backend");
    None
}

/// Runs two short sequences through what the model always serves; refuses non-finite output.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn probe(m: &dyn Model) -> Result<(), ModelError> {
    let s = m.summary();
    let want = if s.available.pooled {
        Want::POOLED
    } else if s.available.scores {
        Want::SCORES
    } else {
        Want::SPARSE
    };
    let longest = s.max_positions.clamp(1, 5);
    let mut batch = PackedBatch::with_capacity(2, 8);
    batch.push(&vec![0; longest.min(3)], &[]);
    batch.push(&vec![0; longest], &[]);
    let out = m.run(&batch, &[want, want], &mut || {})?;
    if out.iter().any(Output::has_non_finite) {
        return Err(ModelError::NonFinite("the probe batch".into()));
    }
    Ok(())
}

fn load_on<B: Backend>(
    b: B,
    arch: &Architecture,
    task: Task,
    cfg: &serde_json::Value,
    files: &ModelFiles,
    st: &SentenceTransformerConfig,
    pooling: Option<Pooling>,
) -> Result<Box<dyn Model>, ModelError> {
    let f = families::facts(arch.family, cfg)?;
    let mut w = Weights::open(&files.weights)?;
    let parameters: usize = w.stored_bytes();
    let backbone: Box<dyn Backbone<B>> = families::backbone(arch.family, &b, &mut w, cfg)?;
    let heads = match task {
        Task::Embed => {
            let pooling = pooling.unwrap_or(families::default_pooling(arch.family));
            let mut h = Heads::pooling(pooling);
            h.dense = dense_modules(&b, st)?;
            h.m3 = bge_m3(&b, files, f.hidden)?;
            h
        }
        Task::Rerank if arch.head == registry::Head::CausalLm => {
            let id = |word: &str| vocab_id(&files.tokenizer, word);
            let yes_no = (id("yes")?, id("no")?);
            Heads::classifier(families::lm_reranker(arch, &b, &w, cfg, yes_no)?)
        }
        Task::Classify | Task::Rerank => {
            let labels = if arch.labels.is_empty() {
                vec!["LABEL_0".to_string()]
            } else {
                arch.labels.clone()
            };
            Heads::classifier(families::classifier(arch, &b, &w, cfg, labels)?)
        }
        Task::Sparse => {
            // sentence-transformers' SparseEncoder keeps every vocabulary entry (special
            // tokens included): so do we.
            let splade = families::splade(arch.family, &b, &w, cfg)?;
            // Sparse vectors only: TEI refuses /embed for a SPLADE model too.
            Heads {
                pooling: None,
                splade: Some(splade),
                ..Heads::pooling(Pooling::Splade)
            }
        }
    };
    let output_size = st.dense.last().map_or(f.hidden, |d| d.out_features);
    let element_bytes = match b.dtype_name() {
        "float32" => 4,
        _ => 2,
    };
    let summary = ModelSummary {
        family: arch.family.name(),
        architecture: arch.name.clone(),
        task,
        backend: b.name(),
        dtype: b.dtype_name(),
        hidden_size: f.hidden,
        output_size,
        max_positions: f.max_positions,
        vocab_size: f.vocab,
        // Counted by the backend where it can; else stored bytes (F32/F16/BF16) scaled to
        // the loaded element size.
        parameter_bytes: b
            .weight_bytes()
            .unwrap_or(parameters / w.element_bytes().max(1) * element_bytes),
        pads_to_longest: b.pads_to_longest(),
        pooling: match task {
            Task::Embed => heads.pooling,
            Task::Sparse => Some(Pooling::Splade),
            _ => None,
        },
        labels: heads
            .classifier
            .as_ref()
            .map(|c| c.labels.clone())
            .unwrap_or_default(),
        available: heads.available(),
        rerank_template: if task == Task::Rerank && arch.head == registry::Head::CausalLm {
            template::RerankTemplate::YesNoPrompt
        } else {
            template::RerankTemplate::Pair
        },
    };
    let shape = cuda::host::memory::Shape {
        hidden: f.hidden,
        intermediate: config_usize(
            cfg,
            &[
                "intermediate_size",
                "n_inner",
                "hidden_dim",
                "dim_feedforward",
            ],
        )
        .unwrap_or(4 * f.hidden),
        heads: config_usize(cfg, &HEAD_KEYS).unwrap_or((f.hidden / 64).max(1)),
        max_len: f.max_positions,
        dtype_bytes: element_bytes,
    };
    Ok(Box::new(Loaded {
        backend: b,
        backbone,
        heads,
        summary,
        shape,
    }))
}

/// sentence-transformers Dense modules, each from its own folder (`linear.weight/bias`).
fn dense_modules<B: Backend>(
    b: &B,
    st: &SentenceTransformerConfig,
) -> Result<Vec<Dense<B>>, ModelError> {
    let mut out = Vec::new();
    for d in &st.dense {
        let w = if d.weights.extension().is_some_and(|e| e == "safetensors") {
            Weights::open(std::slice::from_ref(&d.weights))?
        } else {
            let mut w = Weights::empty();
            w.add_pickle(&d.weights, "")?;
            w
        };
        let weight = w.get("linear.weight", &[d.out_features, d.in_features])?;
        let bias = if d.bias {
            Some(vec![w.get("linear.bias", &[d.out_features])?])
        } else {
            None
        };
        out.push(Dense::new(
            b.load_linear(&[weight], bias.as_deref())?,
            d.activation,
        ));
    }
    Ok(out)
}

/// bge-m3's `sparse_linear.pt` and `colbert_linear.pt`, when the folder has them.
fn bge_m3<B: Backend>(
    b: &B,
    files: &ModelFiles,
    hidden: usize,
) -> Result<Option<BgeM3<B>>, ModelError> {
    if files.sparse_linear.is_none() && files.colbert_linear.is_none() {
        return Ok(None);
    }
    let mut w = Weights::empty();
    let mut head = |path: &Option<std::path::PathBuf>,
                    name: &str,
                    out: usize|
     -> Result<Option<B::Linear>, ModelError> {
        let Some(p) = path else { return Ok(None) };
        w.add_pickle(p, name)?;
        let weight = w.get(&format!("{name}.weight"), &[out, hidden])?;
        let bias = if w.contains(&format!("{name}.bias")) {
            Some(vec![w.get(&format!("{name}.bias"), &[out])?])
        } else {
            None
        };
        Ok(Some(b.load_linear(&[weight], bias.as_deref())?))
    };
    let sparse = head(&files.sparse_linear, "sparse_linear", 1)?;
    let colbert = head(&files.colbert_linear, "colbert_linear", hidden)?;
    Ok(Some(BgeM3 {
        sparse,
        colbert,
        skip: m3_unused_ids(&files.tokenizer),
    }))
}

/// The ids FlagEmbedding drops from bge-m3's sparse output: the tokenizer's CLS, EOS, pad and
/// unknown tokens (not every special token: a literal `<mask>` keeps its weight). Read from
/// tokenizer.json: the post-processor's special tokens, the padding's and the model's ids.
fn m3_unused_ids(tokenizer: &Path) -> Vec<u32> {
    let Some(json) = std::fs::read_to_string(tokenizer)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    else {
        return Vec::new();
    };
    let tk = tokenizers::Tokenizer::from_file(tokenizer).ok();
    let id_of = |token: &str| tk.as_ref().and_then(|t| t.token_to_id(token));
    let mut ids = Vec::new();
    post_processor_ids(&json["post_processor"], &mut ids);
    let pad = json["padding"]["pad_id"]
        .as_u64()
        .map(|v| v as u32)
        .or_else(|| id_of("<pad>"));
    let model = &json["model"];
    let unk = model["unk_id"]
        .as_u64()
        .map(|v| v as u32)
        .or_else(|| model["unk_token"].as_str().and_then(id_of));
    ids.extend(pad.into_iter().chain(unk));
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The ids a post-processor adds (`TemplateProcessing` special tokens, `RobertaProcessing` /
/// `BertProcessing` cls and sep), through `Sequence`s.
fn post_processor_ids(p: &serde_json::Value, ids: &mut Vec<u32>) {
    if let Some(list) = p["processors"].as_array() {
        list.iter().for_each(|q| post_processor_ids(q, ids));
    }
    if let Some(map) = p["special_tokens"].as_object() {
        for t in map.values() {
            if let Some(v) = t["ids"].as_array() {
                ids.extend(v.iter().filter_map(|i| i.as_u64()).map(|i| i as u32));
            }
        }
    }
    for key in ["cls", "sep"] {
        if let Some(id) = p[key][1].as_u64() {
            ids.push(id as u32);
        }
    }
}

/// The id of `token` in the tokenizer's vocabulary (a Qwen3-Reranker's "yes" and "no"):
/// looked up, not encoded, as the reference code's `convert_tokens_to_ids`.
fn vocab_id(tokenizer: &Path, token: &str) -> Result<u32, ModelError> {
    let t = tokenizers::Tokenizer::from_file(tokenizer).map_err(|e| ModelError::Corrupt {
        file: tokenizer.display().to_string(),
        reason: e.to_string(),
    })?;
    t.token_to_id(token).ok_or_else(|| {
        ModelError::Unsupported(format!(
            "the tokenizer has no `{token}` token: not a yes/no reranker"
        ))
    })
}

pub(crate) fn read(path: &Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ModelError> {
    serde_json::from_str(text).map_err(|e| ModelError::Corrupt {
        file: path.display().to_string(),
        reason: e.to_string(),
    })
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bge_m3_drops_cls_eos_pad_and_unk_only() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bge-m3");
        // `<mask>` (1000) is special too, but FlagEmbedding keeps its weight.
        assert_eq!(m3_unused_ids(&dir.join("tokenizer.json")), vec![0, 1, 2, 3]);
    }
}
