//! What finding, loading or running a model fails with. Callers branch on the variants — the
//! device worker splits a batch on `OutOfMemory`, the memory cap halves its budget on it — so
//! each backend classifies its own failures here, from typed causes, never from error text.

use std::path::Path;

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
    /// The device could not allocate what the batch needs: worth retrying smaller.
    #[error("device out of memory: {0}")]
    OutOfMemory(String),
    /// The model produced NaN or infinity where it must not (the load-time probe).
    #[error("non-finite output: {0}")]
    NonFinite(String),
    #[error("device: {0}")]
    Device(String),
    #[error(transparent)]
    Candle(candle_core::Error),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            file: path.display().to_string(),
            source,
        }
    }
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        if candle_out_of_memory(&e) {
            ModelError::OutOfMemory(e.to_string())
        } else {
            ModelError::Candle(e)
        }
    }
}

/// Whether a candle error is, under its context and backtrace wrappers, the CUDA driver's
/// `CUDA_ERROR_OUT_OF_MEMORY` or cuBLAS's `CUBLAS_STATUS_ALLOC_FAILED`.
fn candle_out_of_memory(e: &candle_core::Error) -> bool {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            candle_out_of_memory(inner)
        }
        #[cfg(feature = "cuda")]
        E::Cuda(cause) => cause
            .downcast_ref::<candle_core::cuda_backend::CudaError>()
            .is_some_and(cuda::out_of_memory),
        _ => false,
    }
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    //! The typed out-of-memory codes of the CUDA libraries, for both GPU backends.
    use candle_core::cuda_backend::cudarc::{cublas, cublaslt, driver};
    use candle_core::cuda_backend::CudaError;

    pub(crate) fn out_of_memory(e: &CudaError) -> bool {
        match e {
            CudaError::Cuda(d) => driver_out_of_memory(d),
            CudaError::Cublas(b) => b.0 == cublas::sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED,
            _ => false,
        }
    }

    pub(crate) fn driver_out_of_memory(e: &driver::DriverError) -> bool {
        e.0 == driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
    }

    pub(crate) fn blas_out_of_memory(e: &cublaslt::result::CublasError) -> bool {
        e.0 == cublaslt::sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_never_makes_an_out_of_memory() {
        // A message that merely mentions memory is not the typed cause.
        let e = ModelError::from(candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY".into()));
        assert!(matches!(e, ModelError::Candle(_)), "{e:?}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn a_wrapped_driver_out_of_memory_is_typed() {
        use candle_core::cuda_backend::cudarc::driver::{sys::CUresult, DriverError};
        use candle_core::cuda_backend::CudaError;
        let oom: candle_core::Error =
            CudaError::Cuda(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY)).into();
        let wrapped = oom.context("allocating the attention scores");
        assert!(matches!(
            ModelError::from(wrapped),
            ModelError::OutOfMemory(_)
        ));
        let other: candle_core::Error =
            CudaError::Cuda(DriverError(CUresult::CUDA_ERROR_INVALID_VALUE)).into();
        assert!(matches!(ModelError::from(other), ModelError::Candle(_)));
    }
}
