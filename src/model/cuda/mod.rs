//! spotinfer's own CUDA kernels for the fused GPU backend, their launch wrappers, a cuBLASLt
//! GEMM wrapper, and the self-tests that decide at run time whether the kernels may be used.
//!
//! - [`kernels::FusedKernels`]: loads the PTX built by `build.rs` from
//!   `src/model/cuda/kernels/*.cu` and launches varlen attention (tensor-core and simple
//!   variants), RoPE (+ q/k RMSNorm), fused bias + residual + LayerNorm / RMSNorm, embedding
//!   gather + LayerNorm, GLU, bias + activation, segmented pooling and the non-finite scan on
//!   raw cudarc buffers, checking every size before launching.
//! - [`blas::Gemm`]: `y = x W^T (+ bias)` through cuBLASLt with cached algorithms.
//! - [`fused::Fused`]: the layer seam (`model::layers::Backend`) on these kernels; opened by
//!   `model::load` with `--gpu-backend fused`, which falls back to the reference backend when
//!   [`fused::open`] refuses.
//! - [`selftest::selftest`] (full, ~tens of seconds) and [`selftest::verified_kernels`]
//!   (sub-second, at model load): every kernel against the CPU references in
//!   [`crate::model::cuda::oracle`]; a kernel that disagrees is never used.
//!
//! - [`host`] and [`oracle`] are compiled on every machine, `cuda` feature or not: the fused
//!   backend's host-side arithmetic, and the kernels' plain CPU oracles, so `cargo test`
//!   checks both without a GPU. Everything else here needs the `cuda` feature.
//!
//! Contracts, launch geometry and measured register use: docs/CUDA-KERNELS.md.

pub mod host;
pub mod oracle;

#[cfg(feature = "cuda")]
pub mod blas;
#[cfg(feature = "cuda")]
pub mod fused;
#[cfg(feature = "cuda")]
pub mod kernels;
#[cfg(feature = "cuda")]
pub mod model_check;
#[cfg(feature = "cuda")]
mod params;
#[cfg(feature = "cuda")]
pub mod selftest;

#[cfg(feature = "cuda")]
pub use blas::{Gemm, LinearShape};
#[cfg(feature = "cuda")]
pub use kernels::{
    AttentionVariant, DeviceFlag, EmbedLayerNorm, EmbeddingTables, FusedKernels, KernelFloat,
    NormWeights, QkNorm, RelativeBias, ScanElem, SeqLayout,
};
#[cfg(feature = "cuda")]
pub use selftest::{selftest, verified_kernels, KernelChoice, SelftestOptions, SelftestReport};

#[cfg(feature = "cuda")]
pub use crate::model::cuda::oracle::act::Act;
#[cfg(feature = "cuda")]
pub use crate::model::cuda::oracle::attention::{AttentionConfig, Window};
#[cfg(feature = "cuda")]
pub use crate::model::cuda::oracle::gemm::Epilogue;
#[cfg(feature = "cuda")]
pub use crate::model::cuda::oracle::norm::NormKind;
#[cfg(feature = "cuda")]
pub use crate::model::cuda::oracle::pool::PoolMode;
#[cfg(feature = "cuda")]
pub use crate::model::cuda::oracle::rope::RopeConfig;
#[cfg(feature = "cuda")]
pub use crate::model::cuda::oracle::Dt;

#[cfg(feature = "cuda")]
use candle_core::cuda_backend::cudarc;

#[cfg(feature = "cuda")]
/// Errors of the fused kernels and the GEMM wrapper.
#[derive(Debug, thiserror::Error)]
pub enum CudaKernelError {
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("cuBLASLt: {0}")]
    Blas(#[from] cudarc::cublaslt::result::CublasError),
    #[error("loading {what} from the embedded {module}.ptx: {source}")]
    Load {
        module: &'static str,
        what: String,
        #[source]
        source: cudarc::driver::DriverError,
    },
    #[error("kernel `{0}` is not in the loaded modules")]
    MissingKernel(String),
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },
    #[error("{op}: not supported: {msg}")]
    Unsupported { op: &'static str, msg: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

#[cfg(feature = "cuda")]
pub type Result<T, E = CudaKernelError> = std::result::Result<T, E>;

#[cfg(feature = "cuda")]
pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> CudaKernelError {
    CudaKernelError::Invalid {
        op,
        msg: msg.into(),
    }
}

#[cfg(feature = "cuda")]
pub(crate) fn unsupported(op: &'static str, msg: impl Into<String>) -> CudaKernelError {
    CudaKernelError::Unsupported {
        op,
        msg: msg.into(),
    }
}

#[cfg(feature = "cuda")]
/// Turns off cudarc's per-buffer CUDA events for every buffer allocated on `dev` **after** this
/// call (candle 0.11 exposes it as `CudaDevice::disable_event_tracking`; cudarc 0.19 as
/// `CudaContext::disable_event_tracking`). With tracking on, every allocation creates two
/// events and every launch argument records one; the fused backend runs everything on the
/// device's one stream, where they only cost time.
///
/// # Safety
/// Only sound while every buffer of this context is used on a single stream (or the caller
/// synchronises streams itself): no buffer freed before a use on another stream finished, no
/// use on another stream before its allocation finished, no concurrent writes.
pub unsafe fn disable_event_tracking(dev: &candle_core::cuda_backend::CudaDevice) {
    // SAFETY: forwarded contract (see above).
    unsafe { dev.disable_event_tracking() }
}
