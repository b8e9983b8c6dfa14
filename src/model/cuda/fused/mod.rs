//! The fused CUDA backend: the layer seam (`model::layers::Backend`) on spotinfer's own kernels
//! (`cuda::kernels`) and cuBLASLt (`cuda::blas`), F16 or BF16, on packed tokens.
//!
//! - **Activations** are packed `[tokens, width]` device buffers from a pool (`buffers.rs`):
//!   the warm-up records the forward pass's working set, the worker then reserves it for the
//!   whole token budget (`Backend::reserve_tokens`), and no batch within the budget allocates.
//!   cudarc's event tracking is off (everything runs on the device's one stream).
//! - **Plan** = the batch's `cu_seqlens` (`SeqLayout`) and token positions, uploaded once per
//!   forward pass into pooled buffers; attention and pooling read them on the device.
//! - **Linear** = one cuBLASLt GEMM (bias / tanh-GELU + bias epilogue, or accumulating into a
//!   copy of the residual) and our kernels for the rest of the epilogue, as `cuda::host::steps`
//!   decides: erf-GELU / ReLU / SiLU / tanh by `bias_act`, GLU by `glu` (gate first), residual
//!   + LayerNorm / RMSNorm by the fused norm kernels (`linear.rs`).
//! - **Attention**: one launch over the fused QKV GEMM output read through strides (no copy),
//!   RoPE and the q/k RMSNorm in place first, the variant `verified_kernels` chose for this
//!   dtype and head dim (`attention.rs`).
//! - **Embeddings, pooling, outputs**: the embed kernel (gather + sum + LayerNorm), the pool
//!   kernel (all sequences in one launch, F32 out), F32 on the host (`io.rs`).
//!
//! [`open`] refuses (and the caller falls back to the reference backend, logging why) on a
//! pre-sm_80 GPU, a dtype other than F16 / BF16, kernels that fail the start-up self-check, or
//! a head dim without a verified attention kernel.

mod attention;
mod buffers;
mod io;
mod linear;
mod load;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::{DType, Device};
use half::{bf16, f16};

use self::buffers::{DevicePool, Lent, Pooled};
use super::kernels::{DeviceFlag, FusedKernels, KernelFloat, RelativeBias, SeqLayout};
use super::selftest::{log_choice, verified_kernels_with, KernelChoice};
use super::{CudaKernelError, Gemm, NormKind};
use crate::model::batch::PackedBatch;
use crate::model::cuda::host::steps::GeluMode;
use crate::model::cuda::oracle::Dt;
use crate::model::device::DeviceMemory;
use crate::model::layers::{
    Attention, Backend, Buckets, Epilogue, NormKind as LayerNormKind, Rope,
};
use crate::model::weights::HostTensor;
use crate::model::{ModelError, Pooling};

/// How the fused backend runs what has a choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FusedOptions {
    pub gelu: GeluMode,
}

/// The fused backend for storage type `T` (`half::f16` or `half::bf16`).
pub struct Fused<T: KernelFloat> {
    k: FusedKernels,
    gemm: Gemm,
    stream: Arc<CudaStream>,
    choice: KernelChoice,
    opts: FusedOptions,
    half: Arc<DevicePool<T>>,
    float: Arc<DevicePool<f32>>,
    index: Arc<DevicePool<u32>>,
    /// `[width]` ones: the weights of the norm whose stored sum is a plain residual add.
    ones: Mutex<HashMap<usize, Arc<CudaSlice<T>>>>,
    /// RoPE inverse frequencies on the device, by their bits (a few per model; dynamic NTK adds
    /// one per long sequence length).
    freqs: Mutex<HashMap<Vec<u32>, Arc<CudaSlice<f32>>>>,
    flag: Mutex<DeviceFlag>,
}

/// Activations `[rows, cols]`: the model dtype, or F32 (pooled rows).
pub struct FusedAct<T: KernelFloat> {
    data: Data<T>,
    rows: usize,
    cols: usize,
}

enum Data<T: KernelFloat> {
    Half(Pooled<T>),
    Float(Pooled<f32>),
}

pub struct FusedLinear<T> {
    /// `[out, in]` as checkpoints store it.
    w: CudaSlice<T>,
    b: Option<CudaSlice<T>>,
    inp: usize,
    out: usize,
}

pub struct FusedNorm<T> {
    kind: NormKind,
    eps: f32,
    /// RMS norms with an offset (Gemma's `1 + w`) hold `offset + w` already, like the
    /// reference backend.
    gamma: CudaSlice<T>,
    beta: Option<CudaSlice<T>>,
    width: usize,
}

pub struct FusedTable<T> {
    data: CudaSlice<T>,
    rows: usize,
    width: usize,
}

/// A batch's layout on the device; its buffers go back to the pool when dropped.
pub struct FusedPlan {
    layout: Option<SeqLayout>,
    lent: Option<Lent<u32>>,
    positions: Pooled<u32>,
    offsets: Vec<usize>,
    tokens: usize,
}

impl FusedPlan {
    fn layout(&self) -> Result<&SeqLayout, ModelError> {
        self.layout
            .as_ref()
            .ok_or_else(|| ModelError::Device("a released batch plan".into()))
    }
}

impl Drop for FusedPlan {
    fn drop(&mut self) {
        if let (Some(l), Some(lent)) = (self.layout.take(), self.lent.take()) {
            lent.give_back(l.into_parts().1);
        }
    }
}

/// RoPE for one plan: row ranges and the inverse frequencies each rotates with (one range
/// unless dynamic NTK gives long sequences their own).
pub struct FusedRope {
    segments: Vec<(std::ops::Range<usize>, Arc<CudaSlice<f32>>)>,
    rotary_dim: usize,
    interleaved: bool,
    scaling: f32,
}

pub struct FusedBias {
    table: RelativeBias,
}

pub(crate) fn kernel_error(e: CudaKernelError) -> ModelError {
    use crate::model::error::cuda::blas_out_of_memory;
    match e {
        CudaKernelError::Unsupported { .. } => ModelError::Unsupported(e.to_string()),
        CudaKernelError::Driver(d) => driver_error(d),
        CudaKernelError::Blas(ref b) if blas_out_of_memory(b) => {
            ModelError::OutOfMemory(e.to_string())
        }
        CudaKernelError::Candle(c) => ModelError::from(c),
        other => ModelError::Device(other.to_string()),
    }
}

fn driver_error(e: candle_core::cuda_backend::cudarc::driver::DriverError) -> ModelError {
    if crate::model::error::cuda::driver_out_of_memory(&e) {
        ModelError::OutOfMemory(format!("CUDA driver: {e}"))
    } else {
        ModelError::Device(format!("CUDA driver: {e}"))
    }
}

fn lock<M>(m: &Mutex<M>) -> MutexGuard<'_, M> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fused backend for one dtype, as [`open`] returns it.
pub enum Opened {
    F16(Fused<f16>),
    BF16(Fused<bf16>),
}

/// Opens the fused backend on `device`, or says why not (the caller falls back to the
/// reference backend). Runs the start-up kernel self-check (`verified_kernels`).
pub fn open(
    device: &Device,
    dtype: DType,
    head_dim: Option<usize>,
    opts: FusedOptions,
) -> Result<Opened, String> {
    let Device::Cuda(cd) = device else {
        return Err("the device is not a CUDA GPU".into());
    };
    let dt = match dtype {
        DType::F16 => Dt::F16,
        DType::BF16 => Dt::BF16,
        other => {
            return Err(format!(
                "the fused kernels run float16 and bfloat16, not {other:?}"
            ))
        }
    };
    let stream = cd.cuda_stream();
    let (major, minor) = stream
        .context()
        .compute_capability()
        .map_err(|e| format!("reading the compute capability: {e}"))?;
    if major < 8 {
        return Err(format!(
            "sm_{major}{minor}: the fused kernels need sm_80 or newer (A100, A10, L4, H100, ...)"
        ));
    }
    // SAFETY: every buffer of this device (ours and candle's, should the reference backend
    // take over) is used on the device's one stream from the device worker thread; called
    // before the GEMM workspace and any weight is allocated.
    unsafe { super::disable_event_tracking(cd) };
    let k = FusedKernels::load(cd).map_err(|e| e.to_string())?;
    let gemm = Gemm::new(stream.clone()).map_err(|e| format!("cuBLASLt: {e}"))?;
    let t0 = Instant::now();
    let choice = verified_kernels_with(&k, &gemm);
    log_choice(&choice, t0.elapsed().as_secs_f64());
    if !choice.others_ok {
        let failed: Vec<String> = choice
            .report
            .failed_cases()
            .map(|c| c.name.clone())
            .chain(choice.report.setup_error.clone())
            .collect();
        return Err(format!(
            "the kernel self-check failed: {}",
            failed.join(", ")
        ));
    }
    if let Some(d) = head_dim {
        if choice.attention_variant(dt, d).is_none() {
            return Err(format!(
                "no verified attention kernel for {} with head dim {d} (head dims 32, 64, 128, 256)",
                dt.name()
            ));
        }
    }
    Ok(match dt {
        Dt::F16 => Opened::F16(Fused::new(k, gemm, stream, choice, opts)?),
        Dt::BF16 => Opened::BF16(Fused::new(k, gemm, stream, choice, opts)?),
    })
}

impl<T: KernelFloat> Fused<T> {
    fn new(
        k: FusedKernels,
        gemm: Gemm,
        stream: Arc<CudaStream>,
        choice: KernelChoice,
        opts: FusedOptions,
    ) -> Result<Self, String> {
        let flag = DeviceFlag::new(&stream).map_err(|e| e.to_string())?;
        Ok(Fused {
            k,
            gemm,
            half: DevicePool::new(stream.clone()),
            float: DevicePool::new(stream.clone()),
            index: DevicePool::new(stream.clone()),
            stream,
            choice,
            opts,
            ones: Mutex::new(HashMap::new()),
            freqs: Mutex::new(HashMap::new()),
            flag: Mutex::new(flag),
        })
    }

    /// A pooled activation of the model dtype.
    fn act(&self, rows: usize, cols: usize) -> Result<FusedAct<T>, ModelError> {
        Ok(FusedAct {
            data: Data::Half(self.half.take(rows, cols)?),
            rows,
            cols,
        })
    }
}

impl<T: KernelFloat> FusedAct<T> {
    fn half(&self) -> Result<&Pooled<T>, ModelError> {
        match &self.data {
            Data::Half(p) => Ok(p),
            Data::Float(_) => Err(ModelError::Device(
                "an F32 (pooled) activation where the model dtype was expected".into(),
            )),
        }
    }

    fn half_mut(&mut self) -> Result<&mut Pooled<T>, ModelError> {
        match &mut self.data {
            Data::Half(p) => Ok(p),
            Data::Float(_) => Err(ModelError::Device(
                "an F32 (pooled) activation where the model dtype was expected".into(),
            )),
        }
    }
}

fn shape_error(what: &str, got: usize, want: usize) -> ModelError {
    ModelError::Device(format!("{what}: width {got}, expected {want}"))
}

impl<T: KernelFloat> Backend for Fused<T> {
    type Act = FusedAct<T>;
    type Linear = FusedLinear<T>;
    type Norm = FusedNorm<T>;
    type Table = FusedTable<T>;
    type Plan = FusedPlan;
    type Rope = FusedRope;
    type Bias = FusedBias;

    fn name(&self) -> &'static str {
        "fused-cuda"
    }

    fn dtype_name(&self) -> &'static str {
        match T::DT {
            Dt::F16 => "float16",
            Dt::BF16 => "bfloat16",
        }
    }

    /// Packed tokens everywhere (varlen attention): a batch costs its real tokens.
    fn pads_to_longest(&self) -> bool {
        false
    }

    fn load_linear(
        &self,
        weights: &[HostTensor<'_>],
        bias: Option<&[HostTensor<'_>]>,
    ) -> Result<FusedLinear<T>, ModelError> {
        self.load_linear_impl(weights, bias)
    }

    fn load_norm(
        &self,
        kind: LayerNormKind,
        width: usize,
        weight: Option<HostTensor<'_>>,
        bias: Option<HostTensor<'_>>,
    ) -> Result<FusedNorm<T>, ModelError> {
        self.load_norm_impl(kind, width, weight, bias)
    }

    fn load_table(&self, table: HostTensor<'_>) -> Result<FusedTable<T>, ModelError> {
        self.load_table_impl(table)
    }

    fn load_bias(&self, table: HostTensor<'_>, buckets: Buckets) -> Result<FusedBias, ModelError> {
        self.load_bias_impl(table, buckets)
    }

    fn plan(&self, batch: &PackedBatch) -> Result<FusedPlan, ModelError> {
        self.plan_impl(batch)
    }

    fn rope(&self, plan: &FusedPlan, rope: &Rope) -> Result<FusedRope, ModelError> {
        self.rope_impl(plan, rope)
    }

    fn embed(
        &self,
        plan: &FusedPlan,
        parts: &[(&FusedTable<T>, &[u32])],
        scale: Option<f32>,
        norm: Option<&FusedNorm<T>>,
    ) -> Result<FusedAct<T>, ModelError> {
        self.embed_impl(plan, parts, scale, norm)
    }

    fn linear(
        &self,
        x: &FusedAct<T>,
        w: &FusedLinear<T>,
        epilogue: Epilogue<'_, Self>,
    ) -> Result<FusedAct<T>, ModelError> {
        self.linear_impl(x, w, epilogue)
    }

    fn norm(&self, x: &FusedAct<T>, norm: &FusedNorm<T>) -> Result<FusedAct<T>, ModelError> {
        self.norm_impl(x, norm)
    }

    fn attention(
        &self,
        qkv: FusedAct<T>,
        plan: &FusedPlan,
        spec: &Attention<'_, Self>,
    ) -> Result<FusedAct<T>, ModelError> {
        self.attention_impl(qkv, plan, spec)
    }

    fn pool(
        &self,
        x: &FusedAct<T>,
        plan: &FusedPlan,
        how: Pooling,
    ) -> Result<FusedAct<T>, ModelError> {
        self.pool_impl(x, plan, how)
    }

    fn rows(&self, x: &FusedAct<T>, start: usize, end: usize) -> Result<FusedAct<T>, ModelError> {
        self.rows_impl(x, start, end)
    }

    fn to_host(&self, x: &FusedAct<T>) -> Result<(Vec<f32>, usize), ModelError> {
        self.to_host_impl(x)
    }

    fn device_memory(&self) -> Option<DeviceMemory> {
        let (free, total) = self.stream.context().mem_get_info().ok()?;
        let pools = [
            (self.half.bytes_per_row(), self.half.held_bytes()),
            (self.float.bytes_per_row(), self.float.held_bytes()),
            (self.index.bytes_per_row(), self.index.held_bytes()),
        ];
        Some(DeviceMemory {
            free_bytes: free as u64,
            total_bytes: total as u64,
            reusable_bytes: pools.iter().map(|p| p.1).sum(),
            bytes_per_token: Some(pools.iter().map(|p| p.0).sum::<u64>().max(1)),
            measured: true,
        })
    }

    fn reserve_tokens(&self, tokens: usize) -> Result<(), ModelError> {
        self.half.reserve(tokens)?;
        self.float.reserve(tokens)?;
        self.index.reserve(tokens)?;
        let allocations =
            self.half.allocations() + self.float.allocations() + self.index.allocations();
        tracing::info!(
            tokens,
            pool_mib =
                (self.half.held_bytes() + self.float.held_bytes() + self.index.held_bytes()) >> 20,
            allocations,
            gelu = self.opts.gelu.name(),
            "fused backend: activation buffers reserved"
        );
        Ok(())
    }
}
