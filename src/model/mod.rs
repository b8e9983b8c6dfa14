//! Models: find the files, read the configs, load safetensors onto a device at a dtype, and run
//! forward passes on packed batches. Knows nothing of HTTP or queues.
//!
//! Each architecture family is one file implementing [`EmbeddingModel`]; [`load`] picks it from
//! config.json's `model_type`.

pub mod bert;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[path = "cuda/reference/mod.rs"]
pub mod cuda_reference;
pub mod device;
pub mod pooling;
pub mod resolve;
pub mod st_config;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

pub use pooling::Pooling;
pub use resolve::{resolve, ModelFiles, ResolveOptions};
pub use st_config::SentenceTransformerConfig;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{file} is missing: {hint}")]
    Missing { file: String, hint: String },
    #[error("{file} is not valid: {reason}")]
    Corrupt { file: String, reason: String },
    #[error("cannot read {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Hugging Face Hub: {0}")]
    Hub(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("device: {0}")]
    Device(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            file: path.display().to_string(),
            source,
        }
    }
}

/// Sequences laid end to end: sequence `i` is `offsets[i]..offsets[i+1]` of each vector.
#[derive(Debug, Default, Clone)]
pub struct PackedBatch {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub offsets: Vec<usize>,
}

impl PackedBatch {
    pub fn with_capacity(seqs: usize, tokens: usize) -> Self {
        let mut offsets = Vec::with_capacity(seqs + 1);
        offsets.push(0);
        Self {
            ids: Vec::with_capacity(tokens),
            type_ids: Vec::with_capacity(tokens),
            positions: Vec::with_capacity(tokens),
            offsets,
        }
    }

    pub fn push(&mut self, ids: &[u32], type_ids: &[u32]) {
        self.ids.extend_from_slice(ids);
        if type_ids.len() == ids.len() {
            self.type_ids.extend_from_slice(type_ids);
        } else {
            self.type_ids.extend(std::iter::repeat_n(0, ids.len()));
        }
        self.positions.extend(0..ids.len() as u32);
        self.offsets.push(self.ids.len());
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn tokens(&self) -> usize {
        self.ids.len()
    }
}

/// One architecture family on one backend. Implementations own their weights on one device.
pub trait EmbeddingModel: Send {
    /// Forward and pool a packed batch: one F32 vector per sequence, on the host.
    fn embed(&self, batch: &PackedBatch, pooling: Pooling) -> Result<Vec<Vec<f32>>, ModelError>;
    /// Like `embed`, calling `at_yield_point` between the steps of each layer (each GEMM) so
    /// the caller can run urgent work (online requests) in the middle of a long offline batch.
    /// Backends whose batches are short anyway (the GPU) may ignore it.
    fn embed_preemptible(
        &self,
        batch: &PackedBatch,
        pooling: Pooling,
        at_yield_point: &mut dyn FnMut(),
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let _ = at_yield_point;
        self.embed(batch, pooling)
    }
    fn hidden_size(&self) -> usize;
    fn max_positions(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// Bytes the weights take at the loaded dtype.
    fn parameter_bytes(&self) -> usize;
    /// Whether a batch costs `inputs x longest input` (every sequence padded to the longest):
    /// then the queue groups similar lengths. Padding-free backends get first-come batches.
    fn pads_to_longest(&self) -> bool {
        true
    }
}

/// Forward and pool: `[n, hidden]` F32 on the host (empty batches are free).
pub fn embed(
    model: &dyn EmbeddingModel,
    batch: &PackedBatch,
    pooling: Pooling,
) -> Result<Vec<Vec<f32>>, ModelError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    model.embed(batch, pooling)
}

/// Which implementation runs a model on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuBackend {
    /// Our own F32 kernels (src/model/cpu): the fast path.
    #[default]
    Native,
    /// candle's CPU backend: any dtype; the reference the native path is tested against.
    Candle,
}

#[derive(Deserialize)]
struct ArchProbe {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
}

/// Reads config.json and loads the matching architecture: the native CPU path for F32 on the
/// CPU, candle otherwise.
pub fn load(
    files: &ModelFiles,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn EmbeddingModel>, ModelError> {
    load_with(files, device, dtype, CpuBackend::Native)
}

pub fn load_with(
    files: &ModelFiles,
    device: &Device,
    dtype: DType,
    cpu_backend: CpuBackend,
) -> Result<Box<dyn EmbeddingModel>, ModelError> {
    let text = read(&files.config)?;
    let probe: ArchProbe = parse(&files.config, &text)?;
    let kind = probe
        .model_type
        .clone()
        .or_else(|| probe.architectures.first().map(|a| a.to_lowercase()))
        .unwrap_or_default();
    check_safetensors(&files.weights)?;
    let native = device.is_cpu() && dtype == DType::F32 && cpu_backend == CpuBackend::Native;
    if native && matches!(kind.as_str(), "bert" | "bertmodel") {
        let cfg: bert::BertConfig = parse(&files.config, &text)?;
        return Ok(Box::new(cpu::bert::CpuBert::load(&files.weights, cfg)?));
    }
    // SAFETY: the files are mmaped read-only; a concurrent writer (a download replacing the
    // blob) could change them under us, which the Hub cache avoids by writing new blobs.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files.weights, dtype, device)? };
    match kind.as_str() {
        "bert" | "bertmodel" => {
            let cfg: bert::BertConfig = parse(&files.config, &text)?;
            Ok(Box::new(bert::BertModel::load(vb, cfg)?))
        }
        other => Err(ModelError::Unsupported(format!(
            "model_type `{other}` (supported: bert)"
        ))),
    }
}

/// Validates safetensors headers up front, so a truncated download is a clear error naming the
/// file rather than a failure deep inside the loader.
fn check_safetensors(paths: &[PathBuf]) -> Result<(), ModelError> {
    for p in paths {
        let file = std::fs::File::open(p).map_err(|e| ModelError::io(p, e))?;
        // SAFETY: read-only map of a file we do not modify.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(p, e))?;
        safetensors::SafeTensors::deserialize(&map).map_err(|e| ModelError::Corrupt {
            file: p.display().to_string(),
            reason: format!("{e}; delete it and download again"),
        })?;
    }
    Ok(())
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
    fn packed_batch_offsets_and_positions() {
        let mut b = PackedBatch::with_capacity(2, 5);
        b.push(&[101, 7, 102], &[]);
        b.push(&[101, 102], &[0, 0]);
        assert_eq!(b.offsets, vec![0, 3, 5]);
        assert_eq!(b.positions, vec![0, 1, 2, 0, 1]);
        assert_eq!(b.type_ids, vec![0; 5]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.tokens(), 5);
    }

    #[test]
    fn corrupt_safetensors_is_a_clear_error() {
        let p =
            std::env::temp_dir().join(format!("spotinfer-bad-{}.safetensors", std::process::id()));
        std::fs::write(&p, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
        let err = check_safetensors(std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not valid") && err.contains("download again"),
            "{err}"
        );
        std::fs::remove_file(&p).ok();
    }
}
