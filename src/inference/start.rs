//! Start-up of the inference API: resolve the model, read its configs, start the device worker
//! (which loads and warms the model on its own thread) and the tokenizer pool.

use std::sync::Arc;
use std::time::Duration;

use candle_core::DType;

use super::{Inference, ModelInfo, RequestLimits};
use crate::batching::Admission;
use crate::batching::{worker, BatchLimits, Queue, WorkerConfig, WorkerHealth};
use crate::config::{
    CpuBackendArg, CpuKernelArg, DTypeArg, DeviceArg, FusedGeluArg, GpuBackendArg, ModelArgs,
    PoolingArg, TaskArg,
};
use crate::metrics::Metrics;
use crate::model::cpu::simd::Simd;
use crate::model::cuda::host::steps::GeluMode;
use crate::model::device::{self, DeviceChoice};
use crate::model::{
    self, CpuBackend, GpuBackend, LoadOptions, ModelError, Pooling, ResolveOptions,
    SentenceTransformerConfig, Task,
};
use crate::tokenize::{TokenizeError, TokenizerPool, Tokenizers};

/// Everything start-up needs beyond the model flags.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub model: ModelArgs,
    pub served_model_name: Option<String>,
    pub limits: BatchLimits,
    /// `--max-batch-tokens` was given (else the budget follows the model).
    pub explicit_budget: bool,
    pub request_limits: RequestLimits,
    pub max_concurrent_requests: usize,
    pub tokenization_workers: usize,
    pub test_batch_delay: Duration,
    pub progress: bool,
    /// Warm up on a long input too, so that the first requests do not pay for first use of
    /// the activation buffers (serving). A GPU always does: its working set is measured on
    /// it. An offline job on a CPU skips it: its first batch does the same at no extra cost.
    pub long_warm_up: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error("configuration: {0}")]
    Config(String),
}

fn device_choice(d: DeviceArg) -> DeviceChoice {
    match d {
        DeviceArg::Auto => DeviceChoice::Auto,
        DeviceArg::Cpu => DeviceChoice::Cpu,
        DeviceArg::Cuda(n) => DeviceChoice::Cuda(n),
    }
}

fn dtype(d: DTypeArg) -> DType {
    match d {
        DTypeArg::Float32 => DType::F32,
        DTypeArg::Float16 => DType::F16,
        DTypeArg::Bfloat16 => DType::BF16,
    }
}

pub fn pooling(p: PoolingArg) -> Pooling {
    match p {
        PoolingArg::Cls => Pooling::Cls,
        PoolingArg::Mean => Pooling::Mean,
        PoolingArg::LastToken => Pooling::LastToken,
        PoolingArg::Max => Pooling::Max,
        PoolingArg::Splade => Pooling::Splade,
    }
}

fn task(t: TaskArg) -> Option<Task> {
    match t {
        TaskArg::Auto => None,
        TaskArg::Embed => Some(Task::Embed),
        TaskArg::Classify => Some(Task::Classify),
        TaskArg::Rerank => Some(Task::Rerank),
        TaskArg::Sparse => Some(Task::Sparse),
    }
}

fn kernel_cap(k: CpuKernelArg) -> Simd {
    match k {
        CpuKernelArg::Auto | CpuKernelArg::Amx => Simd::Amx,
        CpuKernelArg::Avx512 => Simd::Avx512,
        CpuKernelArg::Avx2 => Simd::Avx2,
        CpuKernelArg::Generic => Simd::None,
    }
}

/// Loads everything; returns once the model is on the device and warmed up. The queue is
/// created by the caller so that shutdown can reach it even while the model loads.
pub async fn start(
    opts: StartOptions,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
) -> Result<Inference, StartError> {
    let args = &opts.model;
    if args.gpu_backend == GpuBackendArg::Fused && !cfg!(feature = "cuda") {
        return Err(StartError::Config(
            "--gpu-backend fused needs a binary built with the `cuda` feature (the CUDA image, \
             or scripts/cuda-build.sh); this one runs on the CPU only"
                .into(),
        ));
    }
    // Read before the (slow) load, so a bad file fails at once.
    let quantization_ranges = args
        .quantization_ranges
        .as_deref()
        .map(super::quantize::Ranges::read)
        .transpose()
        .map_err(|e| StartError::Config(e.to_string()))?;
    let files = model::resolve_dense(
        &ResolveOptions {
            model_id: args.model_id.clone(),
            revision: args.revision.clone(),
            cache_dir: args.huggingface_hub_cache.clone(),
            progress: opts.progress,
        },
        args.dense_path.as_deref(),
    )
    .await?;
    tracing::info!(source = %files.source, "model files resolved");
    let st = SentenceTransformerConfig::read(&files)?;
    let config: serde_json::Value = model::parse(&files.config, &model::read(&files.config)?)?;
    let dev = device::select_device(device_choice(args.device))?;
    let dtype = device::select_dtype(args.dtype.map(dtype), &dev, device::saved_dtype(&config));
    let device_name = device::describe(&dev);
    let long_warm_up = opts.long_warm_up || !dev.is_cpu();
    Simd::limit_to(kernel_cap(args.cpu_kernel));
    let load = LoadOptions {
        device: dev,
        dtype,
        cpu_backend: match args.cpu_backend {
            CpuBackendArg::Native => CpuBackend::Native,
            CpuBackendArg::Reference => CpuBackend::Reference,
        },
        gpu_backend: match args.gpu_backend {
            GpuBackendArg::Reference => GpuBackend::Reference,
            GpuBackendArg::Fused => GpuBackend::Fused,
        },
        fused_gelu: match args.fused_gelu {
            FusedGeluArg::Exact => GeluMode::Exact,
            FusedGeluArg::Tanh => GeluMode::Tanh,
        },
        pooling: args.pooling.map(pooling),
        task: task(args.task),
    };
    tracing::info!(
        device = %device_name,
        dtype = model::dtype_name(dtype),
        cpu_kernel = ?Simd::detect(),
        "loading model"
    );
    let load_files = files.clone();
    let load_st = st.clone();
    let (health, loaded): (Arc<WorkerHealth>, _) = worker::spawn(
        Box::new(move || model::load(&load_files, &load_st, &load)),
        queue.clone(),
        metrics.clone(),
        WorkerConfig {
            warmup_lengths: if long_warm_up {
                vec![8, opts.limits.max_batch_tokens.min(512)]
            } else {
                vec![8]
            },
            test_batch_delay: opts.test_batch_delay,
            max_seq_length: st.max_seq_length,
            raise_to_longest: !opts.explicit_budget,
        },
    );
    let loaded = loaded
        .await
        .map_err(|_| ModelError::Device("the device worker died while loading".into()))??;
    let summary = loaded.model;
    let max_input_length = st
        .max_seq_length
        .unwrap_or(summary.max_positions)
        .min(summary.max_positions);
    // Unset, the worker raised the budget to the longest input; given, it must cover it.
    if queue.token_budget() < max_input_length && opts.explicit_budget {
        return Err(StartError::Config(format!(
            "--max-batch-tokens ({}) must be at least the model's maximum input length \
             ({max_input_length}); raise it, or leave it unset",
            queue.token_budget()
        )));
    }
    let tokenizers = Tokenizers::from_file(&files.tokenizer, max_input_length, summary.vocab_size)?;
    let tokenizers = TokenizerPool::start(tokenizers, opts.tokenization_workers)?;
    let default_prompt = match (&args.default_prompt, &args.default_prompt_name) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(name)) => Some(st.prompts.get(name).cloned().ok_or_else(|| {
            StartError::Config(format!(
                "--default-prompt-name `{name}` is not in the model's prompts {:?}",
                st.prompts.keys().collect::<Vec<_>>()
            ))
        })?),
        (None, None) => st
            .default_prompt_name
            .as_ref()
            .and_then(|n| st.prompts.get(n).cloned()),
    };
    let info = ModelInfo {
        model: summary.clone(),
        served_model_name: opts
            .served_model_name
            .clone()
            .unwrap_or_else(|| crate::config::default_served_model_name(&args.model_id)),
        model_id: args.model_id.clone(),
        revision: args.revision.clone(),
        source: files.source.clone(),
        device: device_name,
        max_input_length,
        prompts: st.prompts,
        default_prompt,
        normalize_default: st.normalize,
    };
    tracing::info!(
        load_ms = loaded.load_time.as_millis() as u64,
        weights_mb = summary.parameter_bytes / (1 << 20),
        family = summary.family,
        architecture = %summary.architecture,
        task = summary.task.as_str(),
        backend = summary.backend,
        max_input_length,
        hidden_size = summary.hidden_size,
        max_batch_tokens = loaded.max_batch_tokens,
        "model loaded and warmed up"
    );
    Ok(Inference {
        info,
        tokenizers,
        queue,
        health,
        admission: Admission::new(
            opts.max_concurrent_requests,
            metrics.admitted_inputs.clone(),
        ),
        limits: opts.request_limits,
        metrics,
        quantization_ranges,
    })
}
