//! Startup of the inference engine: resolve the model, read its configs, start the tokenizer pool
//! and the device worker, and expose one `embed` entry point to the server, the batch jobs and
//! the `batch` command.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::batching::{
    worker, BatchLimits, InferError, Priority, Queue, WorkerConfig, WorkerHealth,
};
use crate::config::ModelArgs;
use crate::metrics::Metrics;
use crate::model::{self, device, ModelError, Pooling, ResolveOptions, SentenceTransformerConfig};
use crate::tokenize::{EncodeOptions, Encoded, Input, TokenizeError, TokenizerPool, Tokenizers};

/// What the engine runs, for /info, logs and responses.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub model_id: String,
    pub served_model_name: String,
    pub revision: String,
    pub source: String,
    pub dtype: String,
    pub device: String,
    pub pooling: String,
    #[serde(skip)]
    pub pooling_mode: Pooling,
    pub max_input_length: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub parameter_bytes: usize,
    pub prompts: HashMap<String, String>,
    pub normalize_default: bool,
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub model: ModelArgs,
    pub served_model_name: Option<String>,
    pub limits: BatchLimits,
    pub tokenization_workers: usize,
    pub test_batch_delay: Duration,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error("configuration: {0}")]
    Config(String),
}

pub struct Engine {
    pub info: ModelInfo,
    pub tokenizers: TokenizerPool,
    pub queue: Arc<Queue>,
    pub health: Arc<WorkerHealth>,
}

impl Engine {
    /// Loads everything; returns once the model is on the device and warmed up. The queue is
    /// created by the caller so that shutdown can reach it even while the model loads.
    pub async fn start(
        opts: EngineOptions,
        queue: Arc<Queue>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, EngineError> {
        let files = model::resolve(&ResolveOptions {
            model_id: opts.model.model_id.clone(),
            revision: opts.model.revision.clone(),
            cache_dir: opts.model.huggingface_hub_cache.clone(),
            progress: opts.progress,
        })
        .await?;
        tracing::info!(source = %files.source, "model files resolved");
        let st = SentenceTransformerConfig::read(&files)?;
        let dev = device::select_device(opts.model.device)?;
        let dtype = device::select_dtype(opts.model.dtype, &dev);
        let pooling = opts
            .model
            .pooling
            .map(Pooling::from)
            .or(st.pooling)
            .unwrap_or(Pooling::Mean);
        let device_name = device::describe(&dev);
        tracing::info!(device = %device_name, dtype = model::dtype_name(dtype), pooling = pooling.as_str(), "loading model");

        {
            use crate::config::CpuKernelArg;
            use crate::model::cpu::matmul::Simd;
            Simd::limit_to(match opts.model.cpu_kernel {
                CpuKernelArg::Auto | CpuKernelArg::Amx => Simd::Amx,
                CpuKernelArg::Avx512 => Simd::Avx512,
                CpuKernelArg::Avx2 => Simd::Avx2,
                CpuKernelArg::Generic => Simd::None,
            });
            tracing::info!(kernel = ?Simd::detect(), "CPU kernel");
        }
        let cpu_backend = match opts.model.cpu_backend {
            crate::config::CpuBackendArg::Native => model::CpuBackend::Native,
            crate::config::CpuBackendArg::Candle => model::CpuBackend::Candle,
        };
        let load_files = files.clone();
        let load_dev = dev.clone();
        let (health, loaded) = worker::spawn(
            Box::new(move || model::load_with(&load_files, &load_dev, dtype, cpu_backend)),
            queue.clone(),
            metrics.clone(),
            WorkerConfig {
                pooling,
                warmup_lengths: vec![8, opts.limits.max_batch_tokens.min(512)],
                test_batch_delay: opts.test_batch_delay,
            },
        );
        let summary = loaded
            .await
            .map_err(|_| ModelError::Device("the device worker died while loading".into()))??;
        let max_input_length = st
            .max_seq_length
            .unwrap_or(summary.max_positions)
            .min(summary.max_positions);
        if opts.limits.max_batch_tokens < max_input_length {
            return Err(EngineError::Config(format!(
                "--max-batch-tokens ({}) must be at least the model's maximum input length ({max_input_length})",
                opts.limits.max_batch_tokens
            )));
        }
        let tokenizers =
            Tokenizers::from_file(&files.tokenizer, max_input_length, summary.vocab_size)?;
        let tokenizers = TokenizerPool::start(tokenizers, opts.tokenization_workers)?;
        let info = ModelInfo {
            served_model_name: opts
                .served_model_name
                .clone()
                .unwrap_or_else(|| opts.model.model_id.clone()),
            model_id: opts.model.model_id.clone(),
            revision: opts.model.revision.clone(),
            source: files.source.clone(),
            dtype: model::dtype_name(dtype).to_string(),
            device: device_name,
            pooling: pooling.as_str().to_string(),
            pooling_mode: pooling,
            max_input_length,
            hidden_size: summary.hidden_size,
            vocab_size: summary.vocab_size,
            parameter_bytes: summary.parameter_bytes,
            prompts: st.prompts,
            normalize_default: st.normalize,
        };
        tracing::info!(
            load_ms = summary.load_time.as_millis() as u64,
            weights_mb = summary.parameter_bytes / (1 << 20),
            max_input_length,
            hidden_size = summary.hidden_size,
            "model loaded and warmed up"
        );
        Ok(Self {
            info,
            tokenizers,
            queue,
            health,
        })
    }

    /// Tokenises `inputs` (one tokenizer job for the whole request) at `priority`.
    pub async fn encode(
        &self,
        inputs: Vec<Input>,
        opts: EncodeOptions,
        priority: Priority,
    ) -> Result<Vec<Encoded>, TokenizeError> {
        self.tokenizers.encode_all(inputs, opts, priority).await
    }

    /// Runs encoded inputs through the queue; one result per input, in order.
    pub async fn embed_encoded(
        &self,
        encoded: Vec<Encoded>,
        priority: Priority,
    ) -> Vec<Result<Vec<f32>, InferError>> {
        let receivers = self.queue.submit(encoded, priority);
        let mut out = Vec::with_capacity(receivers.len());
        for rx in receivers {
            out.push(rx.await.unwrap_or(Err(InferError::WorkerStopped)));
        }
        out
    }
}
