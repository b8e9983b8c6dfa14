//! Picks the device and dtype once at start, and says why in the log.

use candle_core::{DType, Device};

use super::ModelError;
use crate::config::{DTypeArg, DeviceArg};

/// `auto` means the first CUDA device when this binary was built with `cuda` and one answers;
/// otherwise the CPU.
pub fn select_device(arg: DeviceArg) -> Result<Device, ModelError> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda(n) => cuda(n),
        DeviceArg::Auto => {
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

/// float16 on CUDA, float32 on CPU unless asked otherwise.
pub fn select_dtype(arg: Option<DTypeArg>, device: &Device) -> DType {
    match arg {
        Some(DTypeArg::Float32) => DType::F32,
        Some(DTypeArg::Float16) => DType::F16,
        Some(DTypeArg::Bfloat16) => DType::BF16,
        None if device.is_cuda() => DType::F16,
        None => DType::F32,
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
        let d = select_device(DeviceArg::Cpu).unwrap();
        assert_eq!(select_dtype(None, &d), DType::F32);
        assert_eq!(select_dtype(Some(DTypeArg::Float16), &d), DType::F16);
        assert_eq!(describe(&d), "cpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let err = select_device(DeviceArg::Cuda(0)).unwrap_err().to_string();
        assert!(err.contains("without the `cuda` feature"), "{err}");
        assert!(matches!(select_device(DeviceArg::Auto), Ok(Device::Cpu)));
    }
}
