//! Plain CPU references for the fused GPU kernels (`src/model/cuda/kernels/*.cu`).
//!
//! Compiled with and without the `cuda` feature, so `cargo test` checks the references
//! themselves against naive formulas on any machine; the GPU self-test
//! (`model::cuda::selftest`) then compares every kernel against them.
//!
//! Conventions shared with the kernels:
//! - activations are packed varlen rows `[T, width]`, sequence `s` being rows
//!   `cu_seqlens[s] .. cu_seqlens[s + 1]`;
//! - inputs are F32 values that are already representable in the storage dtype (the test
//!   rounds them before uploading), math is F64, and the references apply exactly the
//!   intermediate roundings the kernels document (e.g. the residual-stream sum of the fused
//!   norm is rounded to the storage type before the statistics);
//! - weights are `[out, in]` row-major as checkpoints store them.

pub mod act;
pub mod attention;
pub mod compare;
pub mod gemm;
pub mod norm;
pub mod pool;
pub mod rope;

pub use compare::{compare, Comparison, Tolerance};

/// Storage type of the activations (the kernels compute in F32 and store this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dt {
    F16,
    BF16,
}

impl Dt {
    pub const ALL: [Dt; 2] = [Dt::F16, Dt::BF16];

    /// `x` stored as this type and read back (round to nearest even, like `__float2half_rn`).
    pub fn round(self, x: f32) -> f32 {
        match self {
            Dt::F16 => half::f16::from_f32(x).to_f32(),
            Dt::BF16 => half::bf16::from_f32(x).to_f32(),
        }
    }

    pub fn round_all(self, v: &mut [f32]) {
        for x in v {
            *x = self.round(*x);
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dt::F16 => "f16",
            Dt::BF16 => "bf16",
        }
    }

    /// Tolerance for a kernel output that went through one final rounding to this type plus
    /// F32 arithmetic: a few units in the last place of the type.
    pub fn tolerance(self) -> Tolerance {
        match self {
            Dt::F16 => Tolerance {
                atol: 2e-3,
                rtol: 4e-3,
            },
            Dt::BF16 => Tolerance {
                atol: 1.6e-2,
                rtol: 1.6e-2,
            },
        }
    }
}

/// Validates packed-sequence offsets: `n + 1` non-decreasing values starting at 0.
/// Returns (number of sequences, total tokens, longest sequence).
pub fn check_cu_seqlens(cu: &[u32]) -> Result<(usize, usize, usize), String> {
    if cu.is_empty() {
        return Err("cu_seqlens is empty (needs n + 1 offsets)".into());
    }
    if cu[0] != 0 {
        return Err(format!("cu_seqlens[0] = {} (must be 0)", cu[0]));
    }
    let mut max_len = 0usize;
    for (i, w) in cu.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(format!(
                "cu_seqlens decreases at {}: {} -> {}",
                i, w[0], w[1]
            ));
        }
        max_len = max_len.max((w[1] - w[0]) as usize);
    }
    Ok((cu.len() - 1, cu[cu.len() - 1] as usize, max_len))
}

/// Deterministic generator for test data (SplitMix64): the same seed gives the same inputs on
/// every machine, so a failing self-test case can be replayed.
#[derive(Debug, Clone)]
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-a, a).
    pub fn sym(&mut self, a: f32) -> f32 {
        ((self.unit() * 2.0 - 1.0) * f64::from(a)) as f32
    }

    /// Uniform integer in [lo, hi] (inclusive).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// `n` values uniform in [-a, a), rounded to `dt`.
    pub fn vec(&mut self, n: usize, a: f32, dt: Dt) -> Vec<f32> {
        (0..n).map(|_| dt.round(self.sym(a))).collect()
    }
}

/// Sequence index of packed row `t` (binary search over the offsets).
pub fn seq_of_row(cu: &[u32], t: usize) -> usize {
    // The last s with cu[s] <= t.
    cu.partition_point(|&c| c as usize <= t) - 1
}

/// Offsets from sequence lengths.
pub fn cu_from_lengths(lengths: &[usize]) -> Vec<u32> {
    let mut cu = Vec::with_capacity(lengths.len() + 1);
    cu.push(0u32);
    let mut acc = 0usize;
    for &l in lengths {
        acc += l;
        cu.push(acc as u32);
    }
    cu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cu_seqlens_are_validated() {
        assert_eq!(check_cu_seqlens(&[0, 3, 3, 10]), Ok((3, 10, 7)));
        assert_eq!(check_cu_seqlens(&[0]), Ok((0, 0, 0)));
        assert!(check_cu_seqlens(&[]).is_err());
        assert!(check_cu_seqlens(&[1, 2]).is_err());
        assert!(check_cu_seqlens(&[0, 5, 4]).is_err());
    }

    #[test]
    fn rows_map_to_their_sequence() {
        let cu = cu_from_lengths(&[2, 0, 3]);
        assert_eq!(cu, vec![0, 2, 2, 5]);
        let seqs: Vec<usize> = (0..5).map(|t| seq_of_row(&cu, t)).collect();
        assert_eq!(seqs, vec![0, 0, 2, 2, 2]);
    }

    #[test]
    fn rounding_matches_the_storage_types() {
        assert_eq!(Dt::F16.round(1.0 + 1.0 / 4096.0), 1.0); // below half an f16 ulp
        assert_eq!(Dt::F16.round(65519.0), 65504.0);
        assert!(Dt::F16.round(65520.0).is_infinite());
        assert_eq!(Dt::BF16.round(1.0 + 1.0 / 512.0), 1.0);
        assert_eq!(Dt::BF16.round(1.0 + 3.0 / 512.0), 1.0 + 1.0 / 128.0);
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = TestRng::new(7);
        let mut b = TestRng::new(7);
        for _ in 0..1000 {
            let x = a.sym(2.0);
            assert_eq!(x, b.sym(2.0));
            assert!((-2.0..2.0).contains(&x));
            let r = a.range(3, 5);
            b.range(3, 5);
            assert!((3..=5).contains(&r));
        }
    }
}
