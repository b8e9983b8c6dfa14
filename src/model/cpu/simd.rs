//! Which SIMD level the native CPU kernels run at: detected once, capped by `--cpu-kernel`.

use super::amx;

/// Rows of the AVX2 micro-kernel (6 x 16).
pub const MR: usize = 6;
/// Rows of the AVX-512 kernel (12 x 32: 24 of the 32 vector registers accumulate).
pub const MR512: usize = 12;
/// Columns of a packed weight panel.
pub const NR: usize = 16;

/// The micro-kernel a CPU can run, best last. The AVX kernels read the same packed F32 panels;
/// AMX reads its own split-BF16 layout.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Simd {
    /// The `gemm` crate and scalar epilogues.
    None,
    /// 6 x 16 with AVX2+FMA.
    Avx2,
    /// 12 x 32 with AVX-512F: twice the width, twice the registers.
    Avx512,
    /// AMX-BF16 tiles for the dense layers (AVX-512F for attention's small products).
    Amx,
}

impl Simd {
    /// The best this CPU supports, capped by `limit_to`.
    pub fn detect() -> Self {
        static BEST: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
        let best = *BEST.get_or_init(Self::hardware);
        best.min(CAP.get().copied().unwrap_or(Simd::Amx))
    }

    /// Caps what `detect` returns for the rest of the process (`--cpu-kernel`); call before
    /// loading weights, which are laid out for the kernel. The first call wins.
    pub fn limit_to(cap: Simd) {
        let _ = CAP.set(cap);
    }

    fn hardware() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if amx::available() {
                return Simd::Amx;
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Simd::Avx2;
            }
        }
        Simd::None
    }

    /// Rows of one micro-kernel call.
    pub(crate) fn tile_rows(self) -> usize {
        match self {
            Simd::Avx512 | Simd::Amx => MR512,
            _ => MR,
        }
    }

    /// 16-column panels of one micro-kernel call.
    pub(crate) fn tile_panels(self) -> usize {
        match self {
            Simd::Avx512 | Simd::Amx => 2,
            _ => 1,
        }
    }

    /// Every level this CPU can run (for tests comparing them).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Self> {
        [Simd::None, Simd::Avx2, Simd::Avx512, Simd::Amx]
            .into_iter()
            .filter(|s| *s <= Self::detect())
            .collect()
    }
}

/// The `--cpu-kernel` cap, where one was set.
static CAP: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();

pub(crate) fn simd_ok() -> bool {
    Simd::detect() != Simd::None
}
