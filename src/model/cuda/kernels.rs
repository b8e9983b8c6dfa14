//! Launch wrappers for the kernels in `src/model/cuda/kernels/*.cu`.
//!
//! Every wrapper checks buffer sizes, shapes and alignment before launching (an error, never a
//! launch that could read or write out of bounds), passes one `#[repr(C)]` parameter struct,
//! and launches on the stream of the candle device the kernels were loaded for. Buffers are
//! cudarc views (`CudaSlice::as_view()`, `.slice(a..b)`); the read/write guards cudarc hands
//! out are held until the launch is queued, so cudarc's event tracking stays correct when on.
//!
//! Over 500 lines on purpose: one checked launch wrapper per `.cu` kernel, each a parameter
//! struct and its bounds checks; splitting by kernel would repeat the shared checks.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut,
    DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::CudaDevice;

use super::params::*;
use super::{invalid, unsupported, CudaKernelError, Result};
use crate::model::cuda::oracle::act::Act;
use crate::model::cuda::oracle::attention::{expand_relative_bias, AttentionConfig};
use crate::model::cuda::oracle::norm::NormKind;
use crate::model::cuda::oracle::pool::PoolMode;
use crate::model::cuda::oracle::rope::RopeConfig;
use crate::model::cuda::oracle::{check_cu_seqlens, Dt};

const PTX_ATTENTION: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
const PTX_NORM: &str = include_str!(concat!(env!("OUT_DIR"), "/norm.ptx"));
const PTX_ROPE: &str = include_str!(concat!(env!("OUT_DIR"), "/rope.ptx"));
const PTX_ACT: &str = include_str!(concat!(env!("OUT_DIR"), "/act.ptx"));
const PTX_POOL: &str = include_str!(concat!(env!("OUT_DIR"), "/pool.ptx"));

/// Head dims of the tensor-core attention (register tiles are sized at compile time).
pub const MMA_HEAD_DIMS: [usize; 3] = [32, 64, 128];
/// Head dims of the simple attention.
pub const SIMPLE_HEAD_DIMS: [usize; 4] = [32, 64, 128, 256];
/// Widest row the norm and embedding kernels take (8 chunks of 8 per thread, 128 threads).
pub const MAX_NORM_WIDTH: usize = 8192;
/// Widest head the RoPE / q-k norm kernel stages in shared memory.
pub const MAX_ROPE_HEAD_DIM: usize = 256;

/// Storage types the kernels are instantiated for.
pub trait KernelFloat:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static
{
    const DT: Dt;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    fn to_bits(self) -> u16;
    fn from_bits(b: u16) -> Self;
}

impl KernelFloat for half::f16 {
    const DT: Dt = Dt::F16;
    fn from_f32(x: f32) -> Self {
        half::f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn to_bits(self) -> u16 {
        half::f16::to_bits(self)
    }
    fn from_bits(b: u16) -> Self {
        half::f16::from_bits(b)
    }
}

impl KernelFloat for half::bf16 {
    const DT: Dt = Dt::BF16;
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn to_bits(self) -> u16 {
        half::bf16::to_bits(self)
    }
    fn from_bits(b: u16) -> Self {
        half::bf16::from_bits(b)
    }
}

/// Element types the non-finite scan reads.
pub trait ScanElem: DeviceRepr {
    const BYTES: i32;
    /// Exponent bits; all set means Inf or NaN.
    const EXP_MASK: u32;
}
impl ScanElem for half::f16 {
    const BYTES: i32 = 2;
    const EXP_MASK: u32 = 0x7c00;
}
impl ScanElem for half::bf16 {
    const BYTES: i32 = 2;
    const EXP_MASK: u32 = 0x7f80;
}
impl ScanElem for f32 {
    const BYTES: i32 = 4;
    const EXP_MASK: u32 = 0x7f80_0000;
}

fn sfx(dt: Dt) -> &'static str {
    dt.name()
}

/// Which attention implementation to launch (same parameters and semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttentionVariant {
    /// FlashAttention-2 style, tensor cores (`mma.sync` m16n8k16): 64 query rows x 64 keys.
    TensorCore,
    /// One warp per query row, F32 FMAs: slow, simple, the fallback.
    Simple,
}

impl AttentionVariant {
    pub fn name(self) -> &'static str {
        match self {
            AttentionVariant::TensorCore => "tensor-core",
            AttentionVariant::Simple => "simple",
        }
    }

    pub fn supports_head_dim(self, d: usize) -> bool {
        match self {
            AttentionVariant::TensorCore => MMA_HEAD_DIMS.contains(&d),
            AttentionVariant::Simple => SIMPLE_HEAD_DIMS.contains(&d),
        }
    }
}

/// Packed-sequence offsets on the host and on the device, validated once per batch and shared
/// by every kernel of the batch (attention, pooling).
pub struct SeqLayout {
    host: Vec<u32>,
    dev: CudaSlice<u32>,
    n_seqs: usize,
    total: usize,
    max_len: usize,
}

impl SeqLayout {
    /// Validates `cu_seqlens` (n + 1 non-decreasing offsets from 0) and uploads it.
    pub fn upload(stream: &Arc<CudaStream>, cu_seqlens: &[u32]) -> Result<Self> {
        let (n_seqs, total, max_len) =
            check_cu_seqlens(cu_seqlens).map_err(|m| invalid("SeqLayout", m))?;
        let dev = stream.clone_htod(cu_seqlens)?;
        Ok(SeqLayout {
            host: cu_seqlens.to_vec(),
            dev,
            n_seqs,
            total,
            max_len,
        })
    }

    /// From offsets the caller uploaded itself (into a buffer at least as long: the kernels
    /// read `n_seqs + 1` offsets, `n_seqs` from the host copy; the fused backend passes a
    /// pooled buffer).
    ///
    /// # Safety
    /// The first `host.len()` elements of `dev` must hold exactly the values of `host` (the
    /// kernels trust the device copy for their bounds; the wrappers check buffer sizes against
    /// the host copy).
    pub unsafe fn from_parts(host: Vec<u32>, dev: CudaSlice<u32>) -> Result<Self> {
        let (n_seqs, total, max_len) =
            check_cu_seqlens(&host).map_err(|m| invalid("SeqLayout", m))?;
        if dev.len() < host.len() {
            return Err(invalid(
                "SeqLayout",
                format!("device copy has {} offsets, host {}", dev.len(), host.len()),
            ));
        }
        Ok(SeqLayout {
            host,
            dev,
            n_seqs,
            total,
            max_len,
        })
    }

    pub fn n_seqs(&self) -> usize {
        self.n_seqs
    }
    pub fn total_tokens(&self) -> usize {
        self.total
    }
    pub fn max_len(&self) -> usize {
        self.max_len
    }
    pub fn host(&self) -> &[u32] {
        &self.host
    }
    /// The host offsets and the device buffer (to reuse it).
    pub fn into_parts(self) -> (Vec<u32>, CudaSlice<u32>) {
        (self.host, self.dev)
    }
    pub fn device(&self) -> &CudaSlice<u32> {
        &self.dev
    }
}

/// A relative position bias (MPNet / T5 buckets) expanded per distance on the device:
/// `[n_heads, 2 * max_distance + 1]` F32.
pub struct RelativeBias {
    table: CudaSlice<f32>,
    n_heads: usize,
    max_distance: usize,
}

impl RelativeBias {
    /// `table_head_major` is `[n_heads, num_buckets]` (transpose MPNet's checkpoint tensor
    /// `relative_attention_bias.weight`, which is `[num_buckets, n_heads]`).
    pub fn upload(
        stream: &Arc<CudaStream>,
        table_head_major: &[f32],
        n_heads: usize,
        num_buckets: usize,
        max_distance: usize,
    ) -> Result<Self> {
        if max_distance > 1 << 20 {
            return Err(invalid(
                "RelativeBias",
                format!("max_distance {max_distance} too large"),
            ));
        }
        let expanded = expand_relative_bias(table_head_major, n_heads, num_buckets, max_distance)
            .map_err(|m| invalid("RelativeBias", m))?;
        Ok(RelativeBias {
            table: stream.clone_htod(&expanded)?,
            n_heads,
            max_distance,
        })
    }

    /// An already expanded table (`[n_heads, 2 * max_distance + 1]`).
    pub fn from_expanded(
        stream: &Arc<CudaStream>,
        expanded: &[f32],
        n_heads: usize,
        max_distance: usize,
    ) -> Result<Self> {
        if max_distance > 1 << 20 || expanded.len() != n_heads * (2 * max_distance + 1) {
            return Err(invalid(
                "RelativeBias",
                format!(
                    "{} values for {n_heads} heads and max distance {max_distance}",
                    expanded.len()
                ),
            ));
        }
        Ok(RelativeBias {
            table: stream.clone_htod(expanded)?,
            n_heads,
            max_distance,
        })
    }

    pub fn n_heads(&self) -> usize {
        self.n_heads
    }
    pub fn max_distance(&self) -> usize {
        self.max_distance
    }
}

/// One device `i32` the kernels OR error bits into (embedding ids out of range, non-finite
/// values). Zero it with [`DeviceFlag::reset`], read it (synchronising) with [`DeviceFlag::read`].
pub struct DeviceFlag {
    buf: CudaSlice<i32>,
    stream: Arc<CudaStream>,
}

impl DeviceFlag {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        Ok(DeviceFlag {
            buf: stream.alloc_zeros::<i32>(1)?,
            stream: stream.clone(),
        })
    }
    pub fn reset(&mut self) -> Result<()> {
        self.stream.memset_zeros(&mut self.buf)?;
        Ok(())
    }
    /// Waits for the stream's queued work and returns the flag.
    pub fn read(&self) -> Result<i32> {
        let v = self.stream.clone_dtoh(&self.buf)?;
        Ok(v.first().copied().unwrap_or(0))
    }
}

/// Per-head RMSNorm weights for q and k (`[head_dim]` each, model dtype).
pub struct QkNorm<'a, T> {
    pub q_weight: &'a CudaView<'a, T>,
    pub k_weight: &'a CudaView<'a, T>,
    pub eps: f32,
    /// Gemma-style `(1 + w)`.
    pub unit_offset: bool,
}

/// Weights of a fused norm (`[width]` each, model dtype).
pub struct NormWeights<'a, T> {
    pub gamma: &'a CudaView<'a, T>,
    /// LayerNorm only (added after scaling if given).
    pub beta: Option<&'a CudaView<'a, T>>,
    pub kind: NormKind,
    pub eps: f32,
}

/// LayerNorm after the embedding sum (`[width]` weights, model dtype).
pub struct EmbedLayerNorm<'a, T> {
    pub gamma: &'a CudaView<'a, T>,
    pub beta: Option<&'a CudaView<'a, T>>,
    pub eps: f32,
}

/// Embedding tables, all `[rows, width]`.
pub struct EmbeddingTables<'a, T> {
    pub word: &'a CudaView<'a, T>,
    pub position: Option<&'a CudaView<'a, T>>,
    pub token_type: Option<&'a CudaView<'a, T>>,
    pub width: usize,
}

/// The loaded kernels of one device.
pub struct FusedKernels {
    stream: Arc<CudaStream>,
    funcs: HashMap<String, CudaFunction>,
}

fn entry_names() -> Vec<(&'static str, &'static str, Vec<String>)> {
    let mut attn = Vec::new();
    let mut norm = Vec::new();
    let mut rope = Vec::new();
    let mut act = Vec::new();
    let mut pool = vec!["nonfinite_scan".to_string()];
    for dt in Dt::ALL {
        let s = sfx(dt);
        attn.extend(MMA_HEAD_DIMS.iter().map(|d| format!("attn_mma_{s}_d{d}")));
        attn.extend(
            SIMPLE_HEAD_DIMS
                .iter()
                .map(|d| format!("attn_simple_{s}_d{d}")),
        );
        for v in [1, 2, 4, 8] {
            norm.push(format!("fused_norm_{s}_v{v}"));
            norm.push(format!("embed_norm_{s}_v{v}"));
        }
        rope.push(format!("rope_qk_{s}"));
        act.push(format!("glu_{s}"));
        act.push(format!("bias_act_{s}"));
        pool.push(format!("pool_{s}"));
    }
    vec![
        ("attention", PTX_ATTENTION, attn),
        ("norm", PTX_NORM, norm),
        ("rope", PTX_ROPE, rope),
        ("act", PTX_ACT, act),
        ("pool", PTX_POOL, pool),
    ]
}

fn aligned16(ptr: u64) -> bool {
    ptr.is_multiple_of(16)
}

fn need(op: &'static str, what: &str, have: usize, want: usize) -> Result<()> {
    if have < want {
        return Err(invalid(
            op,
            format!("{what} has {have} elements, needs {want}"),
        ));
    }
    Ok(())
}

fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| invalid(op, format!("{what} = {v} does not fit the kernel's int")))
}

/// Elementwise launches: 256 threads, one 8-element chunk each, grid-stride beyond 2^16 blocks.
fn elementwise_grid(chunks: usize) -> u32 {
    chunks.div_ceil(256).clamp(1, 1 << 16) as u32
}

impl FusedKernels {
    /// Loads every module (the driver JIT-compiles the PTX for this GPU on first load; the
    /// result is cached in `~/.nv/ComputeCache` / `$CUDA_CACHE_PATH`) and every entry point.
    pub fn load(dev: &CudaDevice) -> Result<Self> {
        Self::load_on(dev.cuda_stream())
    }

    /// Same, on an explicit stream (its context is the one loaded into).
    pub fn load_on(stream: Arc<CudaStream>) -> Result<Self> {
        let ctx = stream.context().clone();
        let mut funcs = HashMap::new();
        for (module, ptx, names) in entry_names() {
            let m =
                ctx.load_module(Ptx::from_src(ptx))
                    .map_err(|source| CudaKernelError::Load {
                        module,
                        what: "the module".into(),
                        source,
                    })?;
            for name in names {
                let f = m
                    .load_function(&name)
                    .map_err(|source| CudaKernelError::Load {
                        module,
                        what: format!("entry point `{name}`"),
                        source,
                    })?;
                funcs.insert(name, f);
            }
        }
        Ok(FusedKernels { stream, funcs })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Registers / local memory per thread of one entry point as the driver compiled it
    /// (for logs: the JIT may differ from the offline ptxas table).
    pub fn resource_usage(&self, name: &str) -> Result<(i32, i32)> {
        let f = self.func(name)?;
        Ok((f.num_regs()?, f.local_size_bytes()?))
    }

    fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| CudaKernelError::MissingKernel(name.to_string()))
    }

    fn launch<P: DeviceRepr>(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        params: &P,
    ) -> Result<()> {
        let f = self.func(name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(params);
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `params` is the kernel's one by-value argument with the layout asserted in
        // params.rs; every pointer in it was checked by the caller to cover what the kernel
        // touches for these sizes, and the caller holds cudarc's guards of those buffers
        // until this returns (the launch is queued on the buffers' stream).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Attention
    // -----------------------------------------------------------------------------------

    /// Attention over a fused QKV buffer `[T, (Hq + 2 Hkv) D]` into `out [T, Hq D]`, T =
    /// `seqs.total_tokens()`. See [`AttentionConfig`] / [`crate::model::cuda::Window`] for the
    /// semantics; `bias` adds a relative position bias (MPNet) to the scaled scores.
    pub fn attention<T: KernelFloat>(
        &self,
        variant: AttentionVariant,
        qkv: &CudaView<'_, T>,
        out: &mut CudaViewMut<'_, T>,
        seqs: &SeqLayout,
        cfg: &AttentionConfig,
        bias: Option<&RelativeBias>,
    ) -> Result<()> {
        const OP: &str = "attention";
        cfg.validate().map_err(|m| invalid(OP, m))?;
        let d = cfg.head_dim;
        if !variant.supports_head_dim(d) {
            return Err(unsupported(
                OP,
                format!("head_dim {d} in the {} variant", variant.name()),
            ));
        }
        let t = seqs.total_tokens();
        need(OP, "qkv", qkv.len(), t * cfg.qkv_width())?;
        need(OP, "out", out.len(), t * cfg.out_width())?;
        let window = |w: Option<usize>| -> Result<i32> {
            match w {
                None => Ok(-1),
                Some(v) if v <= 1 << 30 => Ok(v as i32),
                Some(v) => Err(invalid(
                    OP,
                    format!("window distance {v} too large (use None)"),
                )),
            }
        };
        let (left, right) = (window(cfg.window.left)?, window(cfg.window.right)?);
        if let Some(b) = bias {
            if b.n_heads != cfg.n_q_heads {
                return Err(invalid(
                    OP,
                    format!("bias has {} heads, attention {}", b.n_heads, cfg.n_q_heads),
                ));
            }
        }
        if seqs.n_seqs() > 65535 || cfg.n_q_heads > 65535 {
            return Err(unsupported(
                OP,
                format!(
                    "{} sequences x {} heads (grid limit 65535 each)",
                    seqs.n_seqs(),
                    cfg.n_q_heads
                ),
            ));
        }
        if t == 0 || seqs.max_len() == 0 {
            return Ok(());
        }
        to_i32(OP, "total tokens", t)?;
        let stream = &*self.stream;
        let (qkv_ptr, _g1) = qkv.device_ptr(stream);
        let (out_ptr, _g2) = out.device_ptr_mut(stream);
        let (cu_ptr, _g3) = seqs.dev.device_ptr(stream);
        let bias_guard = bias.map(|b| b.table.device_ptr(stream));
        let bias_ptr = bias_guard.as_ref().map_or(0, |g| g.0);
        if variant == AttentionVariant::TensorCore
            && !(aligned16(qkv_ptr) && out_ptr.is_multiple_of(4))
        {
            return Err(unsupported(
                OP,
                "tensor-core attention needs a 16-byte aligned qkv and 4-byte aligned out",
            ));
        }
        let es = std::mem::size_of::<T>() as u64;
        let p = AttnParams {
            q: qkv_ptr,
            k: qkv_ptr + (cfg.n_q_heads * d) as u64 * es,
            v: qkv_ptr + ((cfg.n_q_heads + cfg.n_kv_heads) * d) as u64 * es,
            o: out_ptr,
            cu_seqlens: cu_ptr,
            rel_bias: bias_ptr,
            q_stride: cfg.qkv_width() as i64,
            k_stride: cfg.qkv_width() as i64,
            v_stride: cfg.qkv_width() as i64,
            o_stride: cfg.out_width() as i64,
            n_seqs: seqs.n_seqs() as i32,
            n_q_heads: cfg.n_q_heads as i32,
            n_kv_heads: cfg.n_kv_heads as i32,
            window_left: left,
            window_right: right,
            rel_max_distance: bias.map_or(0, |b| b.max_distance as i32),
            scale: cfg.scale,
            reserved: 0,
        };
        let (name, rows_per_block) = match variant {
            AttentionVariant::TensorCore => (format!("attn_mma_{}_d{d}", sfx(T::DT)), 64),
            AttentionVariant::Simple => (format!("attn_simple_{}_d{d}", sfx(T::DT)), 4),
        };
        let gx = seqs.max_len().div_ceil(rows_per_block) as u32;
        self.launch(
            &name,
            (gx, cfg.n_q_heads as u32, seqs.n_seqs() as u32),
            128,
            &p,
        )
    }

    // -----------------------------------------------------------------------------------
    // RoPE and per-head RMSNorm
    // -----------------------------------------------------------------------------------

    /// RoPE in place on the q and k heads of `rows` rows of `qkv` (row stride `row_stride`
    /// elements; q heads from column 0, then k heads), optionally after the per-head RMSNorm.
    /// `positions [rows]` (0-based within each sequence), `inv_freq [rotary_dim / 2]` F32.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_qk<T: KernelFloat>(
        &self,
        qkv: &mut CudaViewMut<'_, T>,
        rows: usize,
        row_stride: usize,
        positions: &CudaView<'_, u32>,
        inv_freq: &CudaView<'_, f32>,
        cfg: &RopeConfig,
        norm: Option<&QkNorm<'_, T>>,
    ) -> Result<()> {
        const OP: &str = "rope_qk";
        if !cfg.rotary_dim.is_multiple_of(2) || cfg.rotary_dim > cfg.head_dim {
            return Err(invalid(
                OP,
                format!(
                    "rotary_dim {} must be even and <= head_dim {}",
                    cfg.rotary_dim, cfg.head_dim
                ),
            ));
        }
        need(
            OP,
            "positions",
            positions.len(),
            if cfg.rotary_dim > 0 { rows } else { 0 },
        )?;
        need(OP, "inv_freq", inv_freq.len(), cfg.rotary_dim / 2)?;
        let (pos_ptr, _g1) = positions.device_ptr(&self.stream);
        let (inv_ptr, _g2) = inv_freq.device_ptr(&self.stream);
        self.rope_raw(OP, qkv, rows, row_stride, pos_ptr, inv_ptr, cfg, norm)
    }

    /// Per-head RMSNorm of q and k alone (Qwen3's q_norm / k_norm without the rotation).
    #[allow(clippy::too_many_arguments)]
    pub fn head_rms_norm<T: KernelFloat>(
        &self,
        qkv: &mut CudaViewMut<'_, T>,
        rows: usize,
        row_stride: usize,
        n_q_heads: usize,
        n_k_heads: usize,
        head_dim: usize,
        norm: &QkNorm<'_, T>,
    ) -> Result<()> {
        let cfg = RopeConfig {
            n_q_heads,
            n_k_heads,
            head_dim,
            rotary_dim: 0,
            interleaved: false,
            attention_scaling: 1.0,
        };
        self.rope_raw(
            "head_rms_norm",
            qkv,
            rows,
            row_stride,
            0,
            0,
            &cfg,
            Some(norm),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn rope_raw<T: KernelFloat>(
        &self,
        op: &'static str,
        qkv: &mut CudaViewMut<'_, T>,
        rows: usize,
        row_stride: usize,
        pos_ptr: u64,
        inv_ptr: u64,
        cfg: &RopeConfig,
        norm: Option<&QkNorm<'_, T>>,
    ) -> Result<()> {
        let d = cfg.head_dim;
        let nh = cfg.n_q_heads + cfg.n_k_heads;
        if d == 0 || d > MAX_ROPE_HEAD_DIM {
            return Err(unsupported(
                op,
                format!("head_dim {d} (1..={MAX_ROPE_HEAD_DIM})"),
            ));
        }
        if nh * d > row_stride {
            return Err(invalid(
                op,
                format!("{nh} heads of {d} do not fit a row of {row_stride}"),
            ));
        }
        if rows == 0 || nh == 0 || (cfg.rotary_dim == 0 && norm.is_none()) {
            return Ok(());
        }
        need(op, "qkv", qkv.len(), (rows - 1) * row_stride + nh * d)?;
        let items = rows
            .checked_mul(nh)
            .ok_or_else(|| invalid(op, "rows x heads overflows"))?;
        let blocks = u32::try_from(items.div_ceil(4))
            .map_err(|_| invalid(op, "too many rows x heads for one grid"))?;
        let stream = &*self.stream;
        let norm_guards = match norm {
            Some(n) => {
                need(op, "q_norm weight", n.q_weight.len(), d)?;
                need(op, "k_norm weight", n.k_weight.len(), d)?;
                Some((n.q_weight.device_ptr(stream), n.k_weight.device_ptr(stream)))
            }
            None => None,
        };
        let (qn, kn) = norm_guards.as_ref().map_or((0, 0), |(q, k)| (q.0, k.0));
        let (qkv_ptr, _g) = qkv.device_ptr_mut(stream);
        let p = RopeParams {
            qkv: qkv_ptr,
            positions: pos_ptr,
            inv_freq: inv_ptr,
            q_norm: qn,
            k_norm: kn,
            rows: rows as i64,
            row_stride: row_stride as i64,
            n_q_heads: to_i32(op, "n_q_heads", cfg.n_q_heads)?,
            n_k_heads: to_i32(op, "n_k_heads", cfg.n_k_heads)?,
            head_dim: d as i32,
            rotary_dim: cfg.rotary_dim as i32,
            interleaved: cfg.interleaved as i32,
            norm_unit_offset: norm.is_some_and(|n| n.unit_offset) as i32,
            attn_scaling: cfg.attention_scaling,
            eps: norm.map_or(0.0, |n| n.eps),
        };
        self.launch(&format!("rope_qk_{}", sfx(T::DT)), (blocks, 1, 1), 128, &p)
    }

    // -----------------------------------------------------------------------------------
    // Norms
    // -----------------------------------------------------------------------------------

    /// `out = norm(x + bias + residual)` over `[rows, width]`; `sum_out` (optional) receives the
    /// pre-norm sum rounded to T (the residual stream of a pre-norm block).
    #[allow(clippy::too_many_arguments)]
    pub fn fused_norm<T: KernelFloat>(
        &self,
        x: &CudaView<'_, T>,
        bias: Option<&CudaView<'_, T>>,
        residual: Option<&CudaView<'_, T>>,
        w: &NormWeights<'_, T>,
        out: &mut CudaViewMut<'_, T>,
        sum_out: Option<&mut CudaViewMut<'_, T>>,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        let s = &*self.stream;
        let (xp, _g1) = x.device_ptr(s);
        let bg = bias.map(|b| (b.device_ptr(s), b.len()));
        let rg = residual.map(|r| (r.device_ptr(s), r.len()));
        let out_len = out.len();
        let (op_, _g2) = out.device_ptr_mut(s);
        let sg = sum_out.map(|o| {
            let len = o.len();
            (o.device_ptr_mut(s), len)
        });
        self.norm_raw(
            x.len(),
            xp,
            bg.as_ref().map(|((p, _), l)| (*p, *l)),
            rg.as_ref().map(|((p, _), l)| (*p, *l)),
            w,
            (op_, out_len),
            sg.as_ref().map(|((p, _), l)| (*p, *l)),
            rows,
            width,
        )
    }

    /// Pre-norm residual step in place: `residual = x + bias + residual`, `out = norm(residual)`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_norm_residual_inplace<T: KernelFloat>(
        &self,
        x: &CudaView<'_, T>,
        bias: Option<&CudaView<'_, T>>,
        residual: &mut CudaViewMut<'_, T>,
        w: &NormWeights<'_, T>,
        out: &mut CudaViewMut<'_, T>,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        let s = &*self.stream;
        let (xp, _g1) = x.device_ptr(s);
        let bg = bias.map(|b| (b.device_ptr(s), b.len()));
        let rl = residual.len();
        let (rp, _g2) = residual.device_ptr_mut(s);
        let ol = out.len();
        let (op_, _g3) = out.device_ptr_mut(s);
        self.norm_raw(
            x.len(),
            xp,
            bg.as_ref().map(|((p, _), l)| (*p, *l)),
            Some((rp, rl)),
            w,
            (op_, ol),
            Some((rp, rl)),
            rows,
            width,
        )
    }

    /// Post-norm step in place on x: `x = norm(x + bias + residual)` (BERT's add & norm).
    pub fn add_norm_inplace<T: KernelFloat>(
        &self,
        x: &mut CudaViewMut<'_, T>,
        bias: Option<&CudaView<'_, T>>,
        residual: Option<&CudaView<'_, T>>,
        w: &NormWeights<'_, T>,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        let s = &*self.stream;
        let bg = bias.map(|b| (b.device_ptr(s), b.len()));
        let rg = residual.map(|r| (r.device_ptr(s), r.len()));
        let xl = x.len();
        let (xp, _g) = x.device_ptr_mut(s);
        self.norm_raw(
            xl,
            xp,
            bg.as_ref().map(|((p, _), l)| (*p, *l)),
            rg.as_ref().map(|((p, _), l)| (*p, *l)),
            w,
            (xp, xl),
            None,
            rows,
            width,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn norm_raw<T: KernelFloat>(
        &self,
        x_len: usize,
        x: u64,
        bias: Option<(u64, usize)>,
        residual: Option<(u64, usize)>,
        w: &NormWeights<'_, T>,
        out: (u64, usize),
        sum_out: Option<(u64, usize)>,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        const OP: &str = "fused_norm";
        if width == 0 || width > MAX_NORM_WIDTH {
            return Err(unsupported(
                OP,
                format!("width {width} (1..={MAX_NORM_WIDTH})"),
            ));
        }
        let n = rows * width;
        need(OP, "x", x_len, n)?;
        need(OP, "out", out.1, n)?;
        need(OP, "gamma", w.gamma.len(), width)?;
        if let Some((_, l)) = bias {
            need(OP, "bias", l, width)?;
        }
        if let Some((_, l)) = residual {
            need(OP, "residual", l, n)?;
        }
        if let Some((_, l)) = sum_out {
            need(OP, "sum_out", l, n)?;
        }
        if let Some(b) = w.beta {
            need(OP, "beta", b.len(), width)?;
        }
        if !(w.eps.is_finite() && w.eps >= 0.0) {
            return Err(invalid(OP, format!("eps {}", w.eps)));
        }
        if rows == 0 {
            return Ok(());
        }
        let grid = u32::try_from(rows)
            .ok()
            .filter(|&r| r < i32::MAX as u32)
            .ok_or_else(|| invalid(OP, "too many rows"))?;
        let s = &*self.stream;
        let (g, _g1) = w.gamma.device_ptr(s);
        let bg = w.beta.map(|b| b.device_ptr(s));
        let beta = bg.as_ref().map_or(0, |b| b.0);
        let ptrs = [
            Some(x),
            bias.map(|b| b.0),
            residual.map(|r| r.0),
            Some(g),
            bg.as_ref().map(|b| b.0),
            Some(out.0),
            sum_out.map(|s| s.0),
        ];
        let vec_ok = width.is_multiple_of(8) && ptrs.iter().flatten().all(|&p| aligned16(p));
        let (mode, unit) = match w.kind {
            NormKind::LayerNorm => (0, 0),
            NormKind::RmsNorm { unit_offset } => (1, unit_offset as i32),
        };
        let p = NormParams {
            x,
            bias: bias.map_or(0, |b| b.0),
            residual: residual.map_or(0, |r| r.0),
            gamma: g,
            beta,
            out: out.0,
            sum_out: sum_out.map_or(0, |s| s.0),
            rows: rows as i64,
            width: width as i32,
            mode,
            unit_offset: unit,
            vec_ok: vec_ok as i32,
            eps: w.eps,
            reserved: 0,
        };
        let name = format!("fused_norm_{}_v{}", sfx(T::DT), norm_vectors(width));
        self.launch(&name, (grid, 1, 1), 128, &p)
    }

    /// Embedding gather for `rows` tokens: `word[ids] (+ type[type_ids]) (+ position[position_ids])`,
    /// times `scale`, then the LayerNorm if given, into `out [rows, width]`.
    /// Ids out of range are clamped to the last row and OR bits into `err` (1 word, 2 position,
    /// 4 token type); `type_ids = None` means type 0 everywhere.
    #[allow(clippy::too_many_arguments)]
    pub fn embed<T: KernelFloat>(
        &self,
        tables: &EmbeddingTables<'_, T>,
        ids: &CudaView<'_, u32>,
        position_ids: Option<&CudaView<'_, u32>>,
        type_ids: Option<&CudaView<'_, u32>>,
        scale: f32,
        layer_norm: Option<&EmbedLayerNorm<'_, T>>,
        out: &mut CudaViewMut<'_, T>,
        err: &mut DeviceFlag,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "embed";
        let w = tables.width;
        if w == 0 || w > MAX_NORM_WIDTH {
            return Err(unsupported(OP, format!("width {w} (1..={MAX_NORM_WIDTH})")));
        }
        let table_rows = |t: &CudaView<'_, T>| t.len() / w;
        let vocab = table_rows(tables.word);
        if vocab == 0 {
            return Err(invalid(OP, "empty word table"));
        }
        need(OP, "ids", ids.len(), rows)?;
        need(OP, "out", out.len(), rows * w)?;
        if tables.position.is_some() != position_ids.is_some() {
            return Err(invalid(OP, "position table and position ids go together"));
        }
        if let Some(p) = position_ids {
            need(OP, "position ids", p.len(), rows)?;
        }
        if let Some(t) = type_ids {
            need(OP, "type ids", t.len(), rows)?;
        }
        let n_pos = tables.position.map_or(0, table_rows);
        let n_type = tables.token_type.map_or(0, table_rows);
        if (tables.position.is_some() && n_pos == 0) || (tables.token_type.is_some() && n_type == 0)
        {
            return Err(invalid(OP, "empty position or token type table"));
        }
        if let Some(ln) = layer_norm {
            need(OP, "gamma", ln.gamma.len(), w)?;
            if let Some(b) = ln.beta {
                need(OP, "beta", b.len(), w)?;
            }
            if !(ln.eps.is_finite() && ln.eps >= 0.0) {
                return Err(invalid(OP, format!("eps {}", ln.eps)));
            }
        }
        if rows == 0 {
            return Ok(());
        }
        let grid = u32::try_from(rows)
            .ok()
            .filter(|&r| r < i32::MAX as u32)
            .ok_or_else(|| invalid(OP, "too many rows"))?;
        let s = &*self.stream;
        let (wp, _g1) = tables.word.device_ptr(s);
        let pg = tables.position.map(|t| t.device_ptr(s));
        let tg = tables.token_type.map(|t| t.device_ptr(s));
        let (ip, _g2) = ids.device_ptr(s);
        let pig = position_ids.map(|t| t.device_ptr(s));
        let tig = type_ids.map(|t| t.device_ptr(s));
        let lng = layer_norm.map(|ln| (ln.gamma.device_ptr(s), ln.beta.map(|b| b.device_ptr(s))));
        let (op_, _g3) = out.device_ptr_mut(s);
        let (ep, _g4) = err.buf.device_ptr_mut(s);
        let first = |g: &Option<(u64, _)>| g.as_ref().map_or(0, |g| g.0);
        let gamma = lng.as_ref().map_or(0, |(g, _)| g.0);
        let beta = lng
            .as_ref()
            .and_then(|(_, b)| b.as_ref())
            .map_or(0, |b| b.0);
        let vec_ok = w.is_multiple_of(8)
            && [wp, first(&pg), first(&tg), gamma, beta, op_]
                .iter()
                .all(|&p| p == 0 || aligned16(p));
        let p = EmbedParams {
            word: wp,
            pos: first(&pg),
            typ: first(&tg),
            ids: ip,
            pos_ids: first(&pig),
            type_ids: first(&tig),
            gamma,
            beta,
            out: op_,
            err: ep,
            rows: rows as i64,
            width: w as i32,
            vocab: to_i32(OP, "vocab", vocab)?,
            n_pos: to_i32(OP, "positions", n_pos)?,
            n_type: to_i32(OP, "token types", n_type)?,
            scale,
            eps: layer_norm.map_or(0.0, |l| l.eps),
            do_ln: layer_norm.is_some() as i32,
            vec_ok: vec_ok as i32,
        };
        let name = format!("embed_norm_{}_v{}", sfx(T::DT), norm_vectors(w));
        self.launch(&name, (grid, 1, 1), 128, &p)
    }

    // -----------------------------------------------------------------------------------
    // Activations
    // -----------------------------------------------------------------------------------

    /// `out [rows, inter] = act(gate) * up` from `x [rows, 2 inter]`; the gate is the first half
    /// when `gate_first` (Llama, ModernBERT), the second otherwise (GTE).
    pub fn glu<T: KernelFloat>(
        &self,
        x: &CudaView<'_, T>,
        out: &mut CudaViewMut<'_, T>,
        rows: usize,
        inter: usize,
        act: Act,
        gate_first: bool,
    ) -> Result<()> {
        const OP: &str = "glu";
        need(OP, "x", x.len(), rows * 2 * inter)?;
        need(OP, "out", out.len(), rows * inter)?;
        to_i32(OP, "inter", 2 * inter)?;
        if rows == 0 || inter == 0 {
            return Ok(());
        }
        let s = &*self.stream;
        let (xp, _g1) = x.device_ptr(s);
        let (op_, _g2) = out.device_ptr_mut(s);
        let p = GluParams {
            x: xp,
            out: op_,
            rows: rows as i64,
            inter: inter as i32,
            act: act.code(),
            gate_first: gate_first as i32,
            vec_ok: (inter.is_multiple_of(8) && aligned16(xp) && aligned16(op_)) as i32,
        };
        let grid = elementwise_grid(rows * inter.div_ceil(8));
        self.launch(&format!("glu_{}", sfx(T::DT)), (grid, 1, 1), 256, &p)
    }

    /// `out = act(x + bias)` over `[rows, width]` (bias `[width]` optional).
    pub fn bias_act<T: KernelFloat>(
        &self,
        x: &CudaView<'_, T>,
        bias: Option<&CudaView<'_, T>>,
        out: &mut CudaViewMut<'_, T>,
        rows: usize,
        width: usize,
        act: Act,
    ) -> Result<()> {
        let s = &*self.stream;
        let (xp, _g1) = x.device_ptr(s);
        let bg = bias.map(|b| (b.device_ptr(s), b.len()));
        let ol = out.len();
        let (op_, _g2) = out.device_ptr_mut(s);
        self.bias_act_raw::<T>(
            x.len(),
            xp,
            bg.as_ref().map(|((p, _), l)| (*p, *l)),
            (op_, ol),
            rows,
            width,
            act,
        )
    }

    /// In place: `x = act(x + bias)`.
    pub fn bias_act_inplace<T: KernelFloat>(
        &self,
        x: &mut CudaViewMut<'_, T>,
        bias: Option<&CudaView<'_, T>>,
        rows: usize,
        width: usize,
        act: Act,
    ) -> Result<()> {
        let s = &*self.stream;
        let bg = bias.map(|b| (b.device_ptr(s), b.len()));
        let xl = x.len();
        let (xp, _g) = x.device_ptr_mut(s);
        self.bias_act_raw::<T>(
            xl,
            xp,
            bg.as_ref().map(|((p, _), l)| (*p, *l)),
            (xp, xl),
            rows,
            width,
            act,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn bias_act_raw<T: KernelFloat>(
        &self,
        x_len: usize,
        x: u64,
        bias: Option<(u64, usize)>,
        out: (u64, usize),
        rows: usize,
        width: usize,
        act: Act,
    ) -> Result<()> {
        const OP: &str = "bias_act";
        need(OP, "x", x_len, rows * width)?;
        need(OP, "out", out.1, rows * width)?;
        if let Some((_, l)) = bias {
            need(OP, "bias", l, width)?;
        }
        to_i32(OP, "width", width)?;
        if rows == 0 || width == 0 {
            return Ok(());
        }
        let vec_ok = width.is_multiple_of(8)
            && aligned16(x)
            && aligned16(out.0)
            && bias.is_none_or(|b| aligned16(b.0));
        let p = BiasActParams {
            x,
            bias: bias.map_or(0, |b| b.0),
            out: out.0,
            rows: rows as i64,
            width: width as i32,
            act: act.code(),
            vec_ok: vec_ok as i32,
            reserved: 0,
        };
        let grid = elementwise_grid(rows * width.div_ceil(8));
        self.launch(&format!("bias_act_{}", sfx(T::DT)), (grid, 1, 1), 256, &p)
    }

    // -----------------------------------------------------------------------------------
    // Pooling and the non-finite scan
    // -----------------------------------------------------------------------------------

    /// `out [n_seqs, width]` F32 from `x [T, width]`, one launch for every sequence.
    pub fn pool<T: KernelFloat>(
        &self,
        x: &CudaView<'_, T>,
        seqs: &SeqLayout,
        width: usize,
        mode: PoolMode,
        out: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        const OP: &str = "pool";
        need(OP, "x", x.len(), seqs.total_tokens() * width)?;
        need(OP, "out", out.len(), seqs.n_seqs() * width)?;
        to_i32(OP, "width", width)?;
        if seqs.n_seqs() == 0 || width == 0 {
            return Ok(());
        }
        let gx = u32::try_from(seqs.n_seqs()).map_err(|_| invalid(OP, "too many sequences"))?;
        let gy = width.div_ceil(32);
        if gy > 65535 {
            return Err(unsupported(OP, format!("width {width}")));
        }
        let s = &*self.stream;
        let (xp, _g1) = x.device_ptr(s);
        let (cu, _g2) = seqs.dev.device_ptr(s);
        let (op_, _g3) = out.device_ptr_mut(s);
        let p = PoolParams {
            x: xp,
            cu_seqlens: cu,
            out: op_,
            x_stride: width as i64,
            n_seqs: gx as i32,
            width: width as i32,
            mode: mode.code(),
            reserved: 0,
        };
        self.launch(&format!("pool_{}", sfx(T::DT)), (gx, gy as u32, 1), 256, &p)
    }

    /// ORs 1 into `flag` if any element of `x` is NaN or infinite (F16 overflow must never be
    /// served). The flag is not cleared here; one flag can collect several scans.
    pub fn scan_nonfinite<E: ScanElem>(
        &self,
        x: &CudaView<'_, E>,
        flag: &mut DeviceFlag,
    ) -> Result<()> {
        if x.is_empty() {
            return Ok(());
        }
        let s = &*self.stream;
        let (xp, _g1) = x.device_ptr(s);
        let (fp, _g2) = flag.buf.device_ptr_mut(s);
        let per_chunk = 16 / E::BYTES as usize;
        let p = ScanParams {
            x: xp,
            flag: fp,
            n: x.len() as i64,
            elem_bytes: E::BYTES,
            exp_mask: E::EXP_MASK,
            vec_ok: aligned16(xp) as i32,
            reserved: 0,
        };
        let grid = elementwise_grid(x.len().div_ceil(per_chunk)).min(1024);
        self.launch("nonfinite_scan", (grid, 1, 1), 256, &p)
    }
}

/// Register chunks per thread for a row of `width` (1, 2, 4 or 8; width <= 8192).
fn norm_vectors(width: usize) -> usize {
    match width.div_ceil(8 * 128) {
        0 | 1 => 1,
        2 => 2,
        3 | 4 => 4,
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_vector_choice_covers_the_width() {
        for w in [1, 7, 8, 1024, 1025, 2048, 2049, 4096, 4097, 8192] {
            let v = norm_vectors(w);
            assert!(v * 8 * 128 >= w, "width {w} -> {v}");
        }
        assert_eq!(norm_vectors(384), 1);
        assert_eq!(norm_vectors(3072), 4);
    }

    /// The loader's names are exactly the `.entry` points of the embedded PTX.
    #[test]
    fn entry_points_match_the_ptx() {
        for (module, ptx, names) in entry_names() {
            let mut entries: Vec<&str> = ptx
                .lines()
                .filter_map(|l| l.trim_start().strip_prefix(".visible .entry "))
                .map(|r| r.split('(').next().unwrap_or("").trim())
                .collect();
            entries.sort_unstable();
            let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
            want.sort_unstable();
            assert_eq!(entries, want, "{module}.ptx");
        }
    }

    #[test]
    fn every_module_lists_entry_points() {
        for (m, _, names) in entry_names() {
            assert!(!names.is_empty(), "{m}");
        }
    }
}
