//! Weight matrices laid out once at load for the micro-kernels: F32 panels for the AVX
//! kernels, split-BF16 tiles for AMX, FP16 panels for `--dtype float16`, or plain for the
//! `gemm` crate fallback.

use super::amx::AmxWeights;
use super::half::HalfWeights;
use super::simd::{Simd, NR};

/// Depth of a packed block: 384 = a whole BERT-base-or-smaller hidden size, so the products
/// over it (QKV, attention output, FFN up) finish in one pass with no reload of C. The B panels
/// then come from L2, which feeds the kernel's two loads per 24 FMAs easily. Measured against
/// 256 on the Sapphire Rapids VM (`spotinfer batch`, 2,048 corpus lines, three alternating
/// pairs): 116.0 / 99.2 / 112.2 sentences/s → 123.3 / 103.0 / 117.2.
pub const KC: usize = 384;

/// A weight matrix `[k, n]` (input features x output features) packed for the micro-kernel.
pub struct PackedWeights {
    pub k: usize,
    pub n: usize,
    /// Row-major `[k, n]`, kept for the fallback path.
    pub(crate) plain: Vec<f32>,
    /// For each KC block of rows, each 16-column panel, `kc x 16` values row by row.
    pub(crate) packed: Vec<f32>,
    /// AMX's layout instead of `packed`, where the kernel is `Simd::Amx` and the shape fits.
    pub(crate) amx: Option<AmxWeights>,
    /// FP16 panels instead of all the above, for `--dtype float16` where the CPU has
    /// AVX512-FP16 and the shape fits.
    pub(crate) half: Option<HalfWeights>,
}

impl PackedWeights {
    /// From `w` row-major `[k, n]`, for the best kernel this CPU has.
    pub fn new(w: Vec<f32>, k: usize, n: usize) -> Self {
        Self::new_for(Simd::detect(), w, k, n)
    }

    /// FP16 panels where the CPU and the shape allow (`half.rs`), else as `new`.
    pub fn new_half(w: Vec<f32>, k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "weight size");
        match HalfWeights::new(&w, k, n) {
            Some(half) => Self::from_half(half, k, n),
            None => Self::new(w, k, n),
        }
    }

    /// FP16 panels alone (`half.rs`).
    pub fn from_half(half: HalfWeights, k: usize, n: usize) -> Self {
        Self {
            k,
            n,
            plain: Vec::new(),
            packed: Vec::new(),
            amx: None,
            half: Some(half),
        }
    }

    /// For `simd`'s kernel: AMX's split-BF16 layout (where `k` and `n` are multiples of 32),
    /// else F32 panels (where `n` is a multiple of 16 and there is SIMD), else plain. Only one
    /// layout is kept: weights are most of the process's memory.
    pub fn new_for(simd: Simd, w: Vec<f32>, k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "weight size");
        let amx = if simd == Simd::Amx {
            AmxWeights::new(&w, k, n)
        } else {
            None
        };
        let packed = if amx.is_none() && n.is_multiple_of(NR) && simd != Simd::None {
            let mut p = Vec::with_capacity(k * n);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                for jr in (0..n).step_by(NR) {
                    for kk in 0..kc {
                        let row = (pc + kk) * n + jr;
                        p.extend_from_slice(&w[row..row + NR]);
                    }
                }
            }
            p
        } else {
            Vec::new()
        };
        // The fast paths read only their own layout; keep the plain one only for the fallback.
        let plain = if packed.is_empty() && amx.is_none() {
            w
        } else {
            Vec::new()
        };
        Self {
            k,
            n,
            plain,
            packed,
            amx,
            half: None,
        }
    }

    pub fn bytes(&self) -> usize {
        (self.plain.len() + self.packed.len()) * 4
            + self.amx.as_ref().map_or(0, |a| a.bytes())
            + self.half.as_ref().map_or(0, |h| h.bytes())
    }
}
