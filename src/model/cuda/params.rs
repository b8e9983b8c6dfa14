//! `#[repr(C)]` twins of the kernels' parameter structs (passed by value as the one kernel
//! argument). Field order, types and total size must match the `.cu` definitions; both sides
//! assert the same `sizeof`, and the self-test exercises every field.

use candle_core::cuda_backend::cudarc::driver::DeviceRepr;

/// attention.cu `AttnParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AttnParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub cu_seqlens: u64,
    pub rel_bias: u64,
    pub q_stride: i64,
    pub k_stride: i64,
    pub v_stride: i64,
    pub o_stride: i64,
    pub n_seqs: i32,
    pub n_q_heads: i32,
    pub n_kv_heads: i32,
    pub window_left: i32,
    pub window_right: i32,
    pub rel_max_distance: i32,
    pub scale: f32,
    pub reserved: i32,
}
const _: () = assert!(std::mem::size_of::<AttnParams>() == 112);

/// norm.cu `NormParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NormParams {
    pub x: u64,
    pub bias: u64,
    pub residual: u64,
    pub gamma: u64,
    pub beta: u64,
    pub out: u64,
    pub sum_out: u64,
    pub rows: i64,
    pub width: i32,
    pub mode: i32,
    pub unit_offset: i32,
    pub vec_ok: i32,
    pub eps: f32,
    pub reserved: i32,
}
const _: () = assert!(std::mem::size_of::<NormParams>() == 88);

/// norm.cu `EmbedParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EmbedParams {
    pub word: u64,
    pub pos: u64,
    pub typ: u64,
    pub ids: u64,
    pub pos_ids: u64,
    pub type_ids: u64,
    pub gamma: u64,
    pub beta: u64,
    pub out: u64,
    pub err: u64,
    pub rows: i64,
    pub width: i32,
    pub vocab: i32,
    pub n_pos: i32,
    pub n_type: i32,
    pub scale: f32,
    pub eps: f32,
    pub do_ln: i32,
    pub vec_ok: i32,
}
const _: () = assert!(std::mem::size_of::<EmbedParams>() == 120);

/// rope.cu `RopeParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RopeParams {
    pub qkv: u64,
    pub positions: u64,
    pub inv_freq: u64,
    pub q_norm: u64,
    pub k_norm: u64,
    pub rows: i64,
    pub row_stride: i64,
    pub n_q_heads: i32,
    pub n_k_heads: i32,
    pub head_dim: i32,
    pub rotary_dim: i32,
    pub interleaved: i32,
    pub norm_unit_offset: i32,
    pub attn_scaling: f32,
    pub eps: f32,
}
const _: () = assert!(std::mem::size_of::<RopeParams>() == 88);

/// act.cu `GluParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GluParams {
    pub x: u64,
    pub out: u64,
    pub rows: i64,
    pub inter: i32,
    pub act: i32,
    pub gate_first: i32,
    pub vec_ok: i32,
}
const _: () = assert!(std::mem::size_of::<GluParams>() == 40);

/// act.cu `BiasActParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BiasActParams {
    pub x: u64,
    pub bias: u64,
    pub out: u64,
    pub rows: i64,
    pub width: i32,
    pub act: i32,
    pub vec_ok: i32,
    pub reserved: i32,
}
const _: () = assert!(std::mem::size_of::<BiasActParams>() == 48);

/// pool.cu `PoolParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PoolParams {
    pub x: u64,
    pub cu_seqlens: u64,
    pub out: u64,
    pub x_stride: i64,
    pub n_seqs: i32,
    pub width: i32,
    pub mode: i32,
    pub reserved: i32,
}
const _: () = assert!(std::mem::size_of::<PoolParams>() == 48);

/// pool.cu `ScanParams`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ScanParams {
    pub x: u64,
    pub flag: u64,
    pub n: i64,
    pub elem_bytes: i32,
    pub exp_mask: u32,
    pub vec_ok: i32,
    pub reserved: i32,
}
const _: () = assert!(std::mem::size_of::<ScanParams>() == 40);

// SAFETY: plain-old-data structs of integers and floats with C layout, exactly the kernels'
// parameter types; cuLaunchKernel copies `size_of` bytes from the pointer cudarc passes.
unsafe impl DeviceRepr for AttnParams {}
unsafe impl DeviceRepr for NormParams {}
unsafe impl DeviceRepr for EmbedParams {}
unsafe impl DeviceRepr for RopeParams {}
unsafe impl DeviceRepr for GluParams {}
unsafe impl DeviceRepr for BiasActParams {}
unsafe impl DeviceRepr for PoolParams {}
unsafe impl DeviceRepr for ScanParams {}
