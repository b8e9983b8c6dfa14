//! The native CPU backend: F32 layers without a tensor library.
//!
//! Why not candle here: the profile of candle's CPU path (issue 6) spent most of its time outside
//! the matrix products — scalar `erf` and `exp`, one fresh zeroed allocation per op, unfused
//! element-wise maps. This backend:
//! - keeps the tokens of all sequences packed (no padding in any layer);
//! - packs each weight matrix once at load and applies bias, activation, residual and norm to
//!   each block of output rows while it is in cache (`matmul.rs`), on AVX2 / AVX-512 / AMX;
//! - fuses scale + softmax, with vectorised polynomial `exp`/`erf` (`elementwise.rs`);
//! - runs attention per sequence and head, reading Q, K and V in place (`attention.rs`);
//! - reuses its activation buffers across layers and batches (`buffers.rs`).
//!
//! Files: `simd` (which instruction set), `packed` (weight layouts), `microkernel` (the
//! per-ISA register kernels), `amx` (tiles), `matmul` (dense layers + epilogues),
//! `elementwise`, `attention`, `buffers`; this file implements [`Backend`] on them.
//!
//! Over 500 lines on purpose: the `Backend` impl is one trait impl (every layer op), each op a
//! call into `matmul.rs`, `attention.rs` or `elementwise.rs`.

pub mod amx;
pub mod attention;
pub mod buffers;
pub mod elementwise;
pub mod half;
pub mod matmul;
pub mod microkernel;
pub mod packed;
pub mod simd;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rayon::prelude::*;

use self::buffers::{Buf, Pool};
use self::elementwise::{self as ew, Pointwise};
use self::half::HalfWeights;
use self::matmul::{Epilogue as RowEpilogue, RowNorm};
use self::packed::PackedWeights;
use self::simd::Simd;
use super::batch::PackedBatch;
use super::layers::{
    Activation, Attention, Backend, Buckets, Epilogue, Gate, NormKind, Post, Rope,
};
use super::weights::HostTensor;
use super::{ModelError, Pooling};

/// Activations `[rows, cols]`, row-major, in a pooled buffer.
pub struct CpuAct {
    buf: Buf,
    rows: usize,
    cols: usize,
}

impl CpuAct {
    pub fn data(&self) -> &[f32] {
        &self.buf
    }
}

pub struct CpuLinear {
    w: PackedWeights,
    /// Empty: no bias.
    b: Vec<f32>,
}

pub struct CpuNorm {
    kind: NormKind,
    weight: Vec<f32>,
    /// Empty: no bias.
    bias: Vec<f32>,
}

impl CpuNorm {
    fn rows(&self) -> RowNorm<'_> {
        RowNorm {
            kind: self.kind,
            weight: &self.weight,
            bias: &self.bias,
        }
    }
}

pub struct CpuTable {
    data: Vec<f32>,
    rows: usize,
    width: usize,
}

pub struct CpuPlan {
    offsets: Vec<usize>,
    positions: Vec<u32>,
}

/// cos / sin of every token's angles, `[tokens, rotary_dim / 2]`.
pub struct CpuRope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    interleaved: bool,
}

pub struct CpuBias {
    /// `[buckets, heads]`.
    table: Vec<f32>,
    buckets: Buckets,
}

/// The native CPU backend: F32, or FP16 dense layers (`half.rs`) for `--dtype float16`.
pub struct Cpu {
    pool: Arc<Pool>,
    simd: Simd,
    /// Dense weights in FP16 where the CPU has AVX512-FP16 and the shape fits.
    half: bool,
    /// Bytes of everything loaded: with FP16 dense layers the tables and the layers the
    /// kernel cannot take stay F32, so the dtype alone does not say.
    loaded: AtomicUsize,
}

impl Default for Cpu {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpu {
    pub fn new() -> Self {
        Self {
            pool: Pool::new(),
            simd: Simd::detect(),
            half: false,
            loaded: AtomicUsize::new(0),
        }
    }

    /// FP16 dense layers; None where this CPU lacks AVX512-FP16 (or `--cpu-kernel` caps the
    /// kernels below AVX-512).
    pub fn half() -> Option<Self> {
        (half::available() && Simd::detect() >= Simd::Avx512).then(|| Self {
            half: true,
            ..Self::new()
        })
    }

    /// Counts `floats` F32 values and `extra` bytes as loaded.
    fn count(&self, floats: usize, extra: usize) {
        self.loaded.fetch_add(floats * 4 + extra, Ordering::Relaxed);
    }

    fn act(&self, rows: usize, cols: usize) -> CpuAct {
        CpuAct {
            buf: self.pool.take(rows * cols),
            rows,
            cols,
        }
    }
}

fn pointwise(a: Activation) -> Pointwise {
    match a {
        Activation::None | Activation::Glu(_) => Pointwise::None,
        Activation::Relu => Pointwise::Relu,
        Activation::Gelu => Pointwise::Gelu,
        Activation::GeluTanh => Pointwise::GeluTanh,
        Activation::Silu => Pointwise::Silu,
        Activation::Tanh => Pointwise::Tanh,
        Activation::Log1pRelu => Pointwise::Log1pRelu,
    }
}

fn gate(g: Gate) -> Pointwise {
    match g {
        Gate::Gelu => Pointwise::Gelu,
        Gate::GeluTanh => Pointwise::GeluTanh,
        Gate::Silu => Pointwise::Silu,
    }
}

/// `m` (`rows` x `cols`, row-major) transposed, in 32 x 32 blocks: a row-by-row transpose
/// wrote every value to a new cache line (a quarter of the time to load all-mpnet-base-v2).
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for r0 in (0..rows).step_by(32) {
        for c0 in (0..cols).step_by(32) {
            for r in r0..(r0 + 32).min(rows) {
                for c in c0..(c0 + 32).min(cols) {
                    t[c * rows + r] = m[r * cols + c];
                }
            }
        }
    }
    t
}

fn shape_error(what: &str, got: usize, want: usize) -> ModelError {
    ModelError::Device(format!("{what}: width {got}, expected {want}"))
}

/// Rotates the first `2 * half` features of `head` (NeoX halves or GPT-J pairs).
fn rotate(head: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = cos.len();
    if interleaved {
        for k in 0..half {
            let (a, b) = (head[2 * k], head[2 * k + 1]);
            head[2 * k] = a * cos[k] - b * sin[k];
            head[2 * k + 1] = b * cos[k] + a * sin[k];
        }
    } else {
        for k in 0..half {
            let (a, b) = (head[k], head[k + half]);
            head[k] = a * cos[k] - b * sin[k];
            head[k + half] = b * cos[k] + a * sin[k];
        }
    }
}

impl Backend for Cpu {
    type Act = CpuAct;
    type Linear = CpuLinear;
    type Norm = CpuNorm;
    type Table = CpuTable;
    type Plan = CpuPlan;
    type Rope = CpuRope;
    type Bias = CpuBias;

    fn name(&self) -> &'static str {
        "native-cpu"
    }

    fn dtype_name(&self) -> &'static str {
        if self.half {
            "float16"
        } else {
            "float32"
        }
    }

    fn pads_to_longest(&self) -> bool {
        false
    }

    fn weight_bytes(&self) -> Option<usize> {
        Some(self.loaded.load(Ordering::Relaxed))
    }

    fn load_linear(
        &self,
        weights: &[HostTensor<'_>],
        bias: Option<&[HostTensor<'_>]>,
    ) -> Result<CpuLinear, ModelError> {
        let inp = weights
            .first()
            .map_or(0, |w| w.shape.get(1).copied().unwrap_or(0));
        let out: usize = weights
            .iter()
            .map(|w| w.shape.first().copied().unwrap_or(0))
            .sum();
        // The parts' rows stacked: `[out, in]`, the checkpoint's layout.
        let mut rows = Vec::new();
        for part in weights {
            if part.shape.len() != 2 || part.shape[1] != inp {
                return Err(ModelError::Corrupt {
                    file: part.name.clone(),
                    reason: format!("shape {:?}, expected [_, {inp}]", part.shape),
                });
            }
            let values = part.to_f32()?;
            if rows.is_empty() {
                rows = values;
            } else {
                rows.extend(values);
            }
        }
        // FP16 panels are cut from the rows themselves; the F32 kernels' from `[in, out]`.
        let half = if self.half {
            HalfWeights::from_rows(&rows, inp, out)
        } else {
            None
        };
        let w = match half {
            Some(h) => PackedWeights::from_half(h, inp, out),
            None => PackedWeights::new(transpose(&rows, out, inp), inp, out),
        };
        let b = match bias {
            Some(parts) => {
                let mut b = Vec::with_capacity(out);
                for p in parts {
                    b.extend(p.to_f32()?);
                }
                if b.len() != out {
                    return Err(shape_error("linear bias", b.len(), out));
                }
                b
            }
            None => Vec::new(),
        };
        self.count(b.len(), w.bytes());
        Ok(CpuLinear { w, b })
    }

    fn load_norm(
        &self,
        kind: NormKind,
        width: usize,
        weight: Option<HostTensor<'_>>,
        bias: Option<HostTensor<'_>>,
    ) -> Result<CpuNorm, ModelError> {
        let weight = match weight {
            Some(w) => w.to_f32()?,
            // An absent RMS weight with Gemma's offset is (1 + 0); otherwise ones.
            None if matches!(kind, NormKind::Rms { offset, .. } if offset != 0.0) => {
                vec![0.0; width]
            }
            None => vec![1.0; width],
        };
        if weight.len() != width {
            return Err(shape_error("norm weight", weight.len(), width));
        }
        let bias = match bias {
            Some(b) => b.to_f32()?,
            None => Vec::new(),
        };
        self.count(weight.len() + bias.len(), 0);
        Ok(CpuNorm { kind, weight, bias })
    }

    fn load_table(&self, table: HostTensor<'_>) -> Result<CpuTable, ModelError> {
        let (rows, width) = match table.shape[..] {
            [r, w] => (r, w),
            _ => {
                return Err(ModelError::Corrupt {
                    file: table.name.clone(),
                    reason: format!("an embedding table of shape {:?}", table.shape),
                })
            }
        };
        let data = table.to_f32()?;
        self.count(data.len(), 0);
        Ok(CpuTable { data, rows, width })
    }

    fn load_bias(&self, table: HostTensor<'_>, buckets: Buckets) -> Result<CpuBias, ModelError> {
        let table = table.to_f32()?;
        self.count(table.len(), 0);
        Ok(CpuBias { table, buckets })
    }

    fn plan(&self, batch: &PackedBatch) -> Result<CpuPlan, ModelError> {
        Ok(CpuPlan {
            offsets: batch.offsets.clone(),
            positions: batch.positions.clone(),
        })
    }

    fn rope(&self, plan: &CpuPlan, rope: &Rope) -> Result<CpuRope, ModelError> {
        let half = rope.inv_freq.len();
        let (cos, sin) = rope.tables(&plan.offsets, &plan.positions);
        Ok(CpuRope {
            cos,
            sin,
            half,
            interleaved: rope.interleaved,
        })
    }

    fn embed(
        &self,
        plan: &CpuPlan,
        parts: &[(&CpuTable, &[u32])],
        scale: Option<f32>,
        norm: Option<&CpuNorm>,
    ) -> Result<CpuAct, ModelError> {
        let tokens = plan.positions.len();
        let width = parts.first().map_or(0, |(t, _)| t.width);
        let mut x = self.act(tokens, width);
        for (p, (table, ids)) in parts.iter().enumerate() {
            if table.width != width || ids.len() != tokens {
                return Err(shape_error("embedding part", table.width, width));
            }
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= table.rows) {
                return Err(ModelError::Unsupported(format!(
                    "index {bad} is outside an embedding table of {} rows",
                    table.rows
                )));
            }
            for (row, &id) in x.buf.chunks_exact_mut(width).zip(ids.iter()) {
                let src = &table.data[id as usize * width..(id as usize + 1) * width];
                if p == 0 {
                    row.copy_from_slice(src);
                } else {
                    row.iter_mut().zip(src).for_each(|(a, b)| *a += b);
                }
            }
        }
        if let Some(s) = scale {
            ew::scale(&mut x.buf, s);
        }
        if let Some(n) = norm {
            n.rows().apply(&mut x.buf);
        }
        Ok(x)
    }

    fn linear(
        &self,
        x: &CpuAct,
        w: &CpuLinear,
        epi: Epilogue<'_, Self>,
    ) -> Result<CpuAct, ModelError> {
        if x.cols != w.w.k {
            return Err(shape_error("linear input", x.cols, w.w.k));
        }
        let n = w.w.n;
        let out_cols = epi.activation.out_width(n);
        let (residual, norm, norm_first) = match epi.post {
            Post::None => (None, None, false),
            Post::Residual(r) => (Some(r), None, false),
            Post::Norm(n) => (None, Some(n), false),
            Post::ResidualNorm(r, n) => (Some(r), Some(n), false),
            Post::NormResidual(n, r) => (Some(r), Some(n), true),
        };
        if let Some(r) = residual {
            if r.cols != out_cols || r.rows != x.rows {
                return Err(shape_error("residual", r.cols, out_cols));
            }
        }
        let row_epi = RowEpilogue {
            bias: &w.b,
            activation: pointwise(epi.activation),
            residual: residual.map(|r| &r.buf[..]),
            norm: norm.map(CpuNorm::rows),
            norm_first,
        };
        match epi.activation {
            Activation::Glu(g) => {
                // The gate halves the width: product + bias into a scratch buffer, then the
                // gate, then whatever follows (never on the hot path of an encoder).
                let mut full = self.act(x.rows, n);
                matmul::linear(&mut full.buf, &x.buf, x.rows, &w.w, RowEpilogue::bias(&w.b));
                let mut out = self.act(x.rows, out_cols);
                ew::glu(&mut out.buf, &full.buf, out_cols, gate(g));
                let post = RowEpilogue {
                    bias: &[],
                    activation: Pointwise::None,
                    ..row_epi
                };
                if post.residual.is_some() || post.norm.is_some() {
                    apply_post(&mut out.buf, &post);
                }
                Ok(out)
            }
            _ => {
                let mut out = self.act(x.rows, n);
                matmul::linear(&mut out.buf, &x.buf, x.rows, &w.w, row_epi);
                Ok(out)
            }
        }
    }

    fn norm(&self, x: &CpuAct, norm: &CpuNorm) -> Result<CpuAct, ModelError> {
        if x.cols != norm.weight.len() {
            return Err(shape_error("norm input", x.cols, norm.weight.len()));
        }
        let mut out = self.act(x.rows, x.cols);
        out.buf.copy_from_slice(&x.buf);
        norm.rows().apply(&mut out.buf);
        Ok(out)
    }

    fn attention(
        &self,
        qkv: CpuAct,
        plan: &CpuPlan,
        spec: &Attention<'_, Self>,
    ) -> Result<CpuAct, ModelError> {
        let mut qkv = qkv;
        if qkv.cols != spec.qkv_width() {
            return Err(shape_error("attention qkv", qkv.cols, spec.qkv_width()));
        }
        let d = spec.head_dim;
        let rotated = spec.heads + spec.kv_heads;
        if spec.qk_norm.is_some() || spec.rope.is_some() {
            let cols = qkv.cols;
            qkv.buf
                .par_chunks_mut(cols)
                .enumerate()
                .for_each(|(t, row)| {
                    for (hd, head) in row[..rotated * d].chunks_exact_mut(d).enumerate() {
                        if let Some((qn, kn)) = spec.qk_norm {
                            let n = if hd < spec.heads { qn } else { kn };
                            n.rows().apply(head);
                        }
                        if let Some(r) = spec.rope {
                            let (c, s) = (
                                &r.cos[t * r.half..(t + 1) * r.half],
                                &r.sin[t * r.half..(t + 1) * r.half],
                            );
                            rotate(head, c, s, r.interleaved);
                        }
                    }
                });
        }
        let mut ctx = self.act(qkv.rows, spec.heads * d);
        let table;
        let bias = match spec.bias {
            Some(b) => {
                table = attention::Bias {
                    table: &b.table,
                    buckets: b.buckets,
                };
                Some(&table)
            }
            None => None,
        };
        attention::attention(
            self.simd,
            &qkv.buf,
            &mut ctx.buf,
            &plan.offsets,
            attention::Shape {
                heads: spec.heads,
                kv_heads: spec.kv_heads,
                head_dim: d,
                scale: spec.scale,
                mask: spec.mask,
            },
            bias,
        );
        Ok(ctx)
    }

    fn pool(&self, x: &CpuAct, plan: &CpuPlan, how: Pooling) -> Result<CpuAct, ModelError> {
        let h = x.cols;
        let n = plan.offsets.len().saturating_sub(1);
        let mut out = self.act(n, h);
        for (i, row) in out.buf.chunks_exact_mut(h).enumerate() {
            let (start, end) = (plan.offsets[i], plan.offsets[i + 1]);
            let rows = &x.buf[start * h..end * h];
            match how {
                Pooling::Cls => row.copy_from_slice(&rows[..h]),
                Pooling::LastToken => row.copy_from_slice(&rows[rows.len() - h..]),
                Pooling::Mean => {
                    row.fill(0.0);
                    for r in rows.chunks_exact(h) {
                        row.iter_mut().zip(r).for_each(|(a, v)| *a += v);
                    }
                    let len = (end - start).max(1) as f32;
                    row.iter_mut().for_each(|a| *a /= len);
                }
                Pooling::Max | Pooling::Splade => {
                    row.fill(f32::NEG_INFINITY);
                    for r in rows.chunks_exact(h) {
                        row.iter_mut().zip(r).for_each(|(a, v)| *a = a.max(*v));
                    }
                }
            }
        }
        Ok(out)
    }

    fn rows(&self, x: &CpuAct, start: usize, end: usize) -> Result<CpuAct, ModelError> {
        if start > end || end > x.rows {
            return Err(shape_error("rows", end, x.rows));
        }
        let mut out = self.act(end - start, x.cols);
        out.buf
            .copy_from_slice(&x.buf[start * x.cols..end * x.cols]);
        Ok(out)
    }

    fn to_host(&self, x: &CpuAct) -> Result<(Vec<f32>, usize), ModelError> {
        Ok((x.buf.to_vec(), x.cols))
    }
}

/// Residual and norm on rows already computed (after a gate).
fn apply_post(rows: &mut [f32], epi: &RowEpilogue<'_>) {
    let add = |rows: &mut [f32]| {
        if let Some(r) = epi.residual {
            ew::add_bias_residual(rows, &[], r);
        }
    };
    if epi.norm_first {
        if let Some(n) = &epi.norm {
            n.apply(rows);
        }
        add(rows);
    } else {
        add(rows);
        if let Some(n) = &epi.norm {
            n.apply(rows);
        }
    }
}

/// Deterministic values in [-1, 1] for kernel tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            // SplitMix64.
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_bytes_count_what_each_layer_holds() {
        let (k, n) = (64, 64);
        let w = HostTensor::from_f32("w", vec![n, k], &test_values(k * n, 1));
        let b = HostTensor::from_f32("b", vec![n], &test_values(n, 2));
        let table = HostTensor::from_f32("t", vec![10, k], &test_values(10 * k, 3));
        let cpu = Cpu::new();
        cpu.load_linear(std::slice::from_ref(&w), Some(std::slice::from_ref(&b)))
            .expect("linear");
        cpu.load_table(table.clone()).expect("table");
        assert_eq!(cpu.weight_bytes(), Some((k * n + n + 10 * k) * 4));
        // FP16 dense layers hold 2 bytes a weight; biases and tables stay F32.
        if let Some(half) = Cpu::half() {
            half.load_linear(std::slice::from_ref(&w), Some(std::slice::from_ref(&b)))
                .expect("linear");
            half.load_table(table).expect("table");
            assert_eq!(half.weight_bytes(), Some(k * n * 2 + (n + 10 * k) * 4));
        } else {
            assert!(!half::available() || Simd::detect() < Simd::Avx512);
        }
    }
}
