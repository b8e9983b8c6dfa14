//! Picks the device and dtype once at start, and says why in the log.

use candle_core::{DType, Device};

use super::ModelError;

/// A GPU's memory as the token budget sees it (after the model is loaded and warmed up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// Device memory the backend already holds for activations and reuses (the fused
    /// backend's buffer pool): available to the budget too.
    pub reusable_bytes: u64,
    /// Activation bytes per batch token: as the backend measured them, or (`None` from the
    /// backend) as the model estimates them from its shape.
    pub bytes_per_token: Option<u64>,
    /// Whether `bytes_per_token` was measured by the backend rather than estimated.
    pub measured: bool,
}

/// Where to run: `Auto` is the first CUDA device when this binary was built with `cuda` and
/// one answers, otherwise the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

pub fn select_device(choice: DeviceChoice) -> Result<Device, ModelError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => cuda(n),
        DeviceChoice::Auto => {
            if !cfg!(feature = "cuda") {
                tracing::info!("device auto: this build has no CUDA support, using the CPU");
                return Ok(Device::Cpu);
            }
            match cuda(0) {
                Ok(d) => Ok(d),
                Err(e) => {
                    tracing::warn!(error = %e, "device auto: no usable CUDA device, using the CPU");
                    Ok(Device::Cpu)
                }
            }
        }
    }
}

fn cuda(n: usize) -> Result<Device, ModelError> {
    if !cfg!(feature = "cuda") {
        return Err(ModelError::Device(format!(
            "cuda:{n} asked for, but this binary was built without the `cuda` feature \
             (use the CUDA image, or build with scripts/cuda-build.sh)"
        )));
    }
    Device::new_cuda(n).map_err(|e| ModelError::Device(format!("cuda:{n}: {e}")))
}

/// The dtype to run at: the one asked for, else float32 on the CPU and, on CUDA, bfloat16 for
/// checkpoints saved in bfloat16 (Qwen3 and friends overflow in float16) and float16 otherwise.
pub fn select_dtype(requested: Option<DType>, device: &Device, saved: Option<DType>) -> DType {
    match requested {
        Some(d) => d,
        None if device.is_cuda() && saved == Some(DType::BF16) => DType::BF16,
        None if device.is_cuda() => DType::F16,
        None => DType::F32,
    }
}

/// config.json's `torch_dtype` (or transformers 5's `dtype`).
pub fn saved_dtype(cfg: &serde_json::Value) -> Option<DType> {
    let name = cfg
        .get("torch_dtype")
        .or_else(|| cfg.get("dtype"))
        .and_then(serde_json::Value::as_str)?;
    match name {
        "bfloat16" => Some(DType::BF16),
        "float16" => Some(DType::F16),
        "float32" => Some(DType::F32),
        _ => None,
    }
}

pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".to_string(),
        },
        Device::Metal(_) => "metal".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_defaults_to_f32() {
        let d = select_device(DeviceChoice::Cpu).unwrap();
        assert_eq!(select_dtype(None, &d, Some(DType::BF16)), DType::F32);
        assert_eq!(select_dtype(Some(DType::F16), &d, None), DType::F16);
        assert_eq!(describe(&d), "cpu");
        let cfg = serde_json::json!({"torch_dtype": "bfloat16"});
        assert_eq!(saved_dtype(&cfg), Some(DType::BF16));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let err = select_device(DeviceChoice::Cuda(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("without the `cuda` feature"), "{err}");
        assert!(matches!(select_device(DeviceChoice::Auto), Ok(Device::Cpu)));
    }
}
