//! Dense layers on the CPU: `C = epilogue(A · W)` with `W` packed once at load time and the
//! bias / residual / activation / layer norm applied to each block of rows while it is still in
//! cache.
//!
//! Why not a general GEMM library call per layer: a library packs `W` again on every call (for a
//! short query that packing costs more than the arithmetic), and its output then needs separate
//! passes over memory for bias, GELU, residual and layer norm. Here:
//! - `W` is packed at load into 16-column panels, `KC` rows deep (the layout the kernel reads);
//! - a micro-kernel does the arithmetic: 12 x 32 with AVX-512F (24 of its 32 zmm registers
//!   accumulate; two panels per call), else 6 x 16 with AVX2+FMA (12 of 16 ymm registers).
//!   Both read the same packed panels; `Simd::detect` picks one at run time;
//! - rows are processed in blocks of `MC`; each block gets its whole epilogue right after its
//!   product, while it is in L2;
//! - blocks run in parallel on rayon's threads (columns are split too when there are few rows).
//!
//! CPUs without AVX2+FMA, and widths not a multiple of 16, use the `gemm` crate and separate
//! epilogue passes: slower, same results. CPUs with AMX run the products on its tiles instead
//! (`amx.rs`), at F32 accuracy, with the same row blocks and epilogues.

use rayon::prelude::*;

use super::amx::{self, AmxWeights};
use super::kernels;

const MR: usize = 6;
/// Rows of the AVX-512 kernel (12 x 32: 24 of the 32 vector registers accumulate).
const MR512: usize = 12;
const NR: usize = 16;
/// Depth of a packed block: 384 = a whole BERT-base-or-smaller hidden size, so the products
/// over it (QKV, attention output, FFN up) finish in one pass with no reload of C. The B panels
/// then come from L2, which feeds the kernel's two loads per 24 FMAs easily. Measured against
/// 256 on the Sapphire Rapids VM (`spotinfer batch`, 2,048 corpus lines, three alternating
/// pairs): 116.0 / 99.2 / 112.2 sentences/s → 123.3 / 103.0 / 117.2.
const KC: usize = 384;
const MC: usize = 72;
/// Rows per AMX task: four 32-row strips pass over each L2-sized group of W's columns.
const MC_AMX: usize = 128;

/// What happens to each output row after the product.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Activation {
    None,
    Gelu,
    GeluTanh,
    Relu,
}

#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: &'a [f32],
    /// `[m, n]`, added after the bias (the transformer's skip connection).
    pub residual: Option<&'a [f32]>,
    pub activation: Activation,
    /// Layer norm (gamma, beta, eps) last.
    pub norm: Option<(&'a [f32], &'a [f32], f32)>,
}

impl<'a> Epilogue<'a> {
    /// Bias only; the other steps are added with struct update syntax.
    pub fn bias(bias: &'a [f32]) -> Self {
        Self {
            bias,
            residual: None,
            activation: Activation::None,
            norm: None,
        }
    }
}

/// A weight matrix `[k, n]` (input features x output features) packed for the micro-kernel.
pub struct PackedWeights {
    pub k: usize,
    pub n: usize,
    /// Row-major `[k, n]`, kept for the fallback path.
    plain: Vec<f32>,
    /// For each KC block of rows, each 16-column panel, `kc x 16` values row by row.
    packed: Vec<f32>,
    /// AMX's layout instead of `packed`, where the kernel is `Simd::Amx` and the shape fits.
    amx: Option<AmxWeights>,
}

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
    fn tile_rows(self) -> usize {
        match self {
            Simd::Avx512 | Simd::Amx => MR512,
            _ => MR,
        }
    }

    /// 16-column panels of one micro-kernel call.
    fn tile_panels(self) -> usize {
        match self {
            Simd::Avx512 | Simd::Amx => 2,
            _ => 1,
        }
    }

    /// Every level this CPU can run (for tests comparing them).
    #[cfg(test)]
    fn available() -> Vec<Self> {
        [Simd::None, Simd::Avx2, Simd::Avx512, Simd::Amx]
            .into_iter()
            .filter(|s| *s <= Self::detect())
            .collect()
    }
}

/// The `--cpu-kernel` cap, where one was set.
static CAP: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();

fn simd_ok() -> bool {
    Simd::detect() != Simd::None
}

impl PackedWeights {
    /// From `w` row-major `[k, n]`, for the best kernel this CPU has.
    pub fn new(w: Vec<f32>, k: usize, n: usize) -> Self {
        Self::new_for(Simd::detect(), w, k, n)
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
        }
    }

    pub fn bytes(&self) -> usize {
        (self.plain.len() + self.packed.len()) * 4 + self.amx.as_ref().map_or(0, |a| a.bytes())
    }
}

/// `c[m, n] = epilogue(a[m, k] · w)`.
pub fn linear(c: &mut [f32], a: &[f32], m: usize, w: &PackedWeights, epi: Epilogue<'_>) {
    linear_on(Simd::detect(), c, a, m, w, epi)
}

/// `linear` with the given kernel (`simd` must be supported by this CPU and `w` made for it).
pub fn linear_on(
    simd: Simd,
    c: &mut [f32],
    a: &[f32],
    m: usize,
    w: &PackedWeights,
    epi: Epilogue<'_>,
) {
    let (k, n) = (w.k, w.n);
    assert!(c.len() >= m * n && a.len() >= m * k, "buffer sizes");
    assert_eq!(epi.bias.len(), n, "bias width");
    if let Some(r) = epi.residual {
        assert!(r.len() >= m * n, "residual size");
    }
    let c = &mut c[..m * n];
    let threads = rayon::current_num_threads().max(1);
    // Weights keep only the layout of the kernel they were made for.
    assert!(
        w.packed.is_empty() || simd != Simd::None,
        "packed weights without a SIMD kernel"
    );
    assert!(
        w.amx.is_none() || simd == Simd::Amx,
        "AMX weights need the AMX kernel"
    );
    if w.packed.is_empty() && w.amx.is_none() {
        fallback(c, a, m, w);
        row_blocks(c, m, n, threads, MR512, MC)
            .into_par_iter()
            .for_each(|(r0, rows)| {
                epilogue(rows, r0, n, &epi);
            });
        return;
    }
    if let (Simd::Amx, Some(tiles)) = (simd, &w.amx) {
        // AMX for every batch size, so a text gets the same vector alone or in any batch.
        if m.div_ceil(MC_AMX) >= 2 * threads || threads == 1 {
            // Many rows: a block of strips per task, each block's epilogue right after.
            row_blocks(c, m, n, threads, amx::TILE, MC_AMX)
                .into_par_iter()
                .for_each(|(r0, rows)| {
                    let mr = rows.len() / n;
                    // SAFETY: Simd::Amx is only detected with AMX granted; a and rows hold mr
                    // rows, all of whose columns this task owns.
                    unsafe {
                        amx::product(
                            rows.as_mut_ptr(),
                            &a[r0 * k..],
                            mr,
                            tiles,
                            0..amx::pairs(tiles),
                        )
                    };
                    epilogue(rows, r0, n, &epi);
                });
        } else {
            // Few rows: the column pairs split across threads, then the epilogue.
            let (pairs, cptr) = (amx::pairs(tiles), SendPtr(c.as_mut_ptr()));
            let per = pairs.div_ceil(threads);
            (0..threads).into_par_iter().for_each(|t| {
                let range = (t * per).min(pairs)..((t + 1) * per).min(pairs);
                if !range.is_empty() {
                    // SAFETY: as above; each task writes only its own column pairs.
                    unsafe { amx::product(cptr.get(), a, m, tiles, range) };
                }
            });
            row_blocks(c, m, n, threads, MR512, MC)
                .into_par_iter()
                .for_each(|(r0, rows)| {
                    epilogue(rows, r0, n, &epi);
                });
        }
        return;
    }
    if m.div_ceil(MC) >= 2 * threads || threads == 1 {
        // Many rows: one task per row block, product and epilogue back to back (L2-hot).
        row_blocks(c, m, n, threads, MR512, MC)
            .into_par_iter()
            .for_each(|(r0, rows)| {
                let mr = rows.len() / n;
                // SAFETY: `rows` holds mr rows of n.
                unsafe { product(simd, rows.as_mut_ptr(), &a[r0 * k..], mr, w, 0, n) };
                epilogue(rows, r0, n, &epi);
            });
    } else {
        // Few rows (a short query): split the columns across threads, then the epilogue.
        let panels = n / NR;
        // Whole kernel calls per task (panel pairs for the AVX-512 kernel).
        let per = panels
            .div_ceil(threads)
            .next_multiple_of(simd.tile_panels());
        let cptr = SendPtr(c.as_mut_ptr());
        (0..threads).into_par_iter().for_each(|t| {
            let (j0, j1) = (t * per * NR, ((t + 1) * per * NR).min(n));
            if j0 >= j1 {
                return;
            }
            // SAFETY: c holds m rows of n; each task writes only its own columns j0..j1.
            unsafe { product(simd, cptr.get(), a, m, w, j0, j1) };
        });
        row_blocks(c, m, n, threads, MR512, MC)
            .into_par_iter()
            .for_each(|(r0, rows)| {
                epilogue(rows, r0, n, &epi);
            });
    }
}

/// Splits `c` (`m` rows of `n`) into blocks of at most `max` rows, as equal as whole kernel
/// tiles (`tile` rows) allow, their count a multiple of `threads`: each task is `(first row,
/// rows)`.
///
/// Why not fixed `MC`-row chunks: a short batch has few blocks, and 5 equal blocks on 2
/// threads leave one core idle for a fifth of the product. Online batches are short: over a
/// `spotinfer bench` run at concurrency 8-128, 55 % of device batches carried 257-2,048
/// tokens (4-28 blocks) and 43 % at most 256.
fn row_blocks(
    c: &mut [f32],
    m: usize,
    n: usize,
    threads: usize,
    tile: usize,
    max: usize,
) -> Vec<(usize, &mut [f32])> {
    let groups = m.div_ceil(tile);
    let tasks = groups.div_ceil(max / tile).next_multiple_of(threads).max(1);
    let mut blocks = Vec::with_capacity(tasks);
    let mut rest = c;
    let mut r0 = 0;
    for t in 0..tasks {
        let r1 = ((t + 1) * groups / tasks * tile).min(m);
        if r1 > r0 {
            let (block, tail) = std::mem::take(&mut rest).split_at_mut((r1 - r0) * n);
            blocks.push((r0, block));
            rest = tail;
            r0 = r1;
        }
    }
    blocks
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only where tasks write disjoint columns (see `linear`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// A method call (not `.0`) so closures capture the whole Send wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn epilogue(rows: &mut [f32], r0: usize, n: usize, epi: &Epilogue<'_>) {
    let mr = rows.len() / n;
    let residual = epi.residual.map(|r| &r[r0 * n..(r0 + mr) * n]);
    // Bias rides along with the activation (one pass); the residual only ever comes without one.
    match (epi.activation, residual) {
        (Activation::None, r) => kernels::add_bias_residual(rows, epi.bias, r.unwrap_or(&[])),
        (act, r) => {
            if let Some(r) = r {
                kernels::add_bias_residual(rows, &vec![0.0; n], r);
            }
            match act {
                Activation::Gelu => kernels::bias_gelu(rows, epi.bias),
                Activation::GeluTanh => kernels::bias_gelu_tanh(rows, epi.bias),
                Activation::Relu => kernels::bias_relu(rows, epi.bias),
                Activation::None => {}
            }
        }
    }
    if let Some((g, b, eps)) = epi.norm {
        kernels::layer_norm_rows(rows, g, b, eps);
    }
}

/// `c[:, j0..j1] = a · w[:, j0..j1]` for `m` rows (`c` row stride `n`).
///
/// `a` is read in place, not packed: the kernel broadcasts from one pointer per row. Measured
/// against a packed copy of each `MC x KC` block (`cargo bench --bench micro -- linear`): the
/// same speed, without the copy.
///
/// # Safety
/// `c` must point to `m * w.n` writable floats that no one else reads or writes in columns
/// `j0..j1` meanwhile; `w` must be packed and `simd` (not `None`) supported by this CPU.
unsafe fn product(
    simd: Simd,
    c: *mut f32,
    a: &[f32],
    m: usize,
    w: &PackedWeights,
    j0: usize,
    j1: usize,
) {
    let (k, n) = (w.k, w.n);
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        let bblock = &w.packed[pc * n..];
        for i0 in (0..m).step_by(MC) {
            let mc = MC.min(m - i0);
            let mut jr = j0;
            while jr < j1 {
                // j1 - jr is whole panels (n and every task's columns are multiples of NR).
                let panels = simd.tile_panels().min((j1 - jr) / NR);
                let bpanel = bblock[(jr / NR) * kc * NR..].as_ptr();
                for ir in (0..mc).step_by(simd.tile_rows()) {
                    // SAFETY: a holds m rows of k, so each of these rows has kc values from pc;
                    // the block holds each panel's kc*NR values one after another from bpanel;
                    // c has the rows of stride n from (i0+ir, jr); simd is the caller's.
                    unsafe {
                        tile(
                            simd,
                            kc,
                            a.as_ptr().add((i0 + ir) * k + pc),
                            k,
                            simd.tile_rows().min(mc - ir),
                            bpanel,
                            NR,
                            kc * NR,
                            panels,
                            c.add((i0 + ir) * n + jr),
                            n,
                            pc > 0,
                        )
                    };
                }
                jr += panels * NR;
            }
        }
    }
}

/// One call of `simd`'s micro-kernel: `c[rows, 16 * panels] (+)= a[rows, kc] · b[kc, 16 *
/// panels]`, panel `p` of `b` at `b + p * panel_stride`; `rows` and `panels` at most
/// `simd.tile_rows()` and `simd.tile_panels()`.
///
/// # Safety
/// As the kernels: the addresses readable / writable as described, `simd` not `None` and
/// supported by this CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    simd: Simd,
    kc: usize,
    a: *const f32,
    lda: usize,
    rows: usize,
    b: *const f32,
    ldb: usize,
    panel_stride: usize,
    panels: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: the caller's guarantee.
    unsafe {
        match (simd, panels) {
            (Simd::Avx512 | Simd::Amx, 2) => {
                kernel_12x16n::<2>(kc, a, lda, rows, b, ldb, panel_stride, c, ldc, accumulate)
            }
            (Simd::Avx512 | Simd::Amx, _) => {
                kernel_12x16n::<1>(kc, a, lda, rows, b, ldb, 0, c, ldc, accumulate)
            }
            (Simd::Avx2, _) => kernel_6x16(kc, a, lda, rows, b, ldb, c, ldc, accumulate),
            (Simd::None, _) => unreachable!("no micro-kernel without SIMD"),
        }
    }
}

/// `c = a · b` for attention's small products (one sequence and head), nothing packed:
/// `a` has `m` rows of `k` values at row stride `lda`; `b` is `panels` panels of 16 columns,
/// panel `p` starting at `b + p * panel_stride` with `k` rows of 16 values at row stride `ldb`;
/// `c` gets `m` rows of `16 * panels` values at row stride `ldc`. Returns false (and does
/// nothing) with `Simd::None`: the caller then uses the `gemm` crate.
/// `simd` picks the kernel (`Simd::detect()`; another level only where this CPU supports it).
///
/// # Safety
/// Every address described above must be readable (`a`, `b`) or writable (`c`), and no one
/// else may touch those `c` values meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn small_product(
    simd: Simd,
    c: *mut f32,
    ldc: usize,
    a: *const f32,
    lda: usize,
    m: usize,
    k: usize,
    b: *const f32,
    ldb: usize,
    panel_stride: usize,
    panels: usize,
) -> bool {
    if simd == Simd::None {
        return false;
    }
    for i in (0..m).step_by(simd.tile_rows()) {
        let mut p = 0;
        while p < panels {
            let np = simd.tile_panels().min(panels - p);
            // SAFETY: the caller vouches for these addresses and for simd (not None here).
            unsafe {
                tile(
                    simd,
                    k,
                    a.add(i * lda),
                    lda,
                    simd.tile_rows().min(m - i),
                    b.add(p * panel_stride),
                    ldb,
                    panel_stride,
                    np,
                    c.add(i * ldc + p * NR),
                    ldc,
                    false,
                )
            };
            p += np;
        }
    }
    true
}

/// Lays out `len` keys as the `b` operand of `small_product`: `d` features by 16 keys per panel
/// (panel `p`, row `kk`, lane `j` = feature `kk` of key `16p + j`; zero past `len`). Key `j`'s
/// features are `d` contiguous values at `keys + j * stride`. 8 x 8 blocks are transposed in
/// registers: the scalar loop this replaces stored one float per cycle at a 64-byte stride.
/// Returns false (and does nothing) without AVX2+FMA or when `d` is not a multiple of 8.
///
/// # Safety
/// `keys` must be readable as described and `panels` writable for `d * len.next_multiple_of(16)`
/// floats.
pub unsafe fn pack_key_panels(
    panels: *mut f32,
    keys: *const f32,
    stride: usize,
    len: usize,
    d: usize,
) -> bool {
    if !simd_ok() || !d.is_multiple_of(8) {
        return false;
    }
    // SAFETY: the caller's guarantee; SIMD checked above.
    unsafe { pack_key_panels_avx(panels, keys, stride, len, d) };
    true
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_key_panels_avx(
    panels: *mut f32,
    keys: *const f32,
    stride: usize,
    len: usize,
    d: usize,
) {
    use std::arch::x86_64::*;
    let padded = len.next_multiple_of(16);
    for j0 in (0..padded).step_by(8) {
        let dst = panels.add((j0 / 16) * d * 16 + j0 % 16);
        for f0 in (0..d).step_by(8) {
            let r: [__m256; 8] = std::array::from_fn(|j| {
                if j0 + j < len {
                    _mm256_loadu_ps(keys.add((j0 + j) * stride + f0))
                } else {
                    _mm256_setzero_ps()
                }
            });
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            // Row f of the block: feature f0 + f of keys j0..j0+8.
            let out = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (f, v) in out.iter().enumerate() {
                _mm256_storeu_ps(dst.add((f0 + f) * 16), *v);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_key_panels_avx(_: *mut f32, _: *const f32, _: usize, _: usize, _: usize) {
    unreachable!("the SIMD paths are only taken on x86_64 with AVX2")
}

/// `c[rows, 16] (+)= a[rows, kc] · b[kc, 16]`: row `r` of `a` at `a + r * lda` (contiguous
/// along k), row `kk` of `b` at `b + kk * ldb`, row `r` of `c` at `c + r * ldc`. Rows past
/// `rows` re-read the first row and are not stored.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_6x16(
    kc: usize,
    a: *const f32,
    lda: usize,
    rows: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let ar: [*const f32; MR] = std::array::from_fn(|r| a.add(if r < rows { r * lda } else { 0 }));
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for kk in 0..kc {
        let b0 = _mm256_loadu_ps(b.add(kk * ldb));
        let b1 = _mm256_loadu_ps(b.add(kk * ldb + 8));
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*ar[r].add(kk));
            accr[0] = _mm256_fmadd_ps(av, b0, accr[0]);
            accr[1] = _mm256_fmadd_ps(av, b1, accr[1]);
        }
    }
    for (r, accr) in acc.iter().enumerate().take(rows) {
        let cr = c.add(r * ldc);
        let (mut v0, mut v1) = (accr[0], accr[1]);
        if accumulate {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cr));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cr.add(8)));
        }
        _mm256_storeu_ps(cr, v0);
        _mm256_storeu_ps(cr.add(8), v1);
    }
}

/// `c[rows, 16 * NP] (+)= a[rows, kc] · b[kc, 16 * NP]` with AVX-512: as `kernel_6x16`, up
/// to 12 rows, and `NP` panels of 16 columns, panel `p` at `b + p * panel_stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_12x16n<const NP: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    rows: usize,
    b: *const f32,
    ldb: usize,
    panel_stride: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let ar: [*const f32; MR512] =
        std::array::from_fn(|r| a.add(if r < rows { r * lda } else { 0 }));
    let mut acc = [[_mm512_setzero_ps(); NP]; MR512];
    for kk in 0..kc {
        let mut bv = [_mm512_setzero_ps(); NP];
        for (p, v) in bv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(b.add(p * panel_stride + kk * ldb));
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ar[r].add(kk));
            for (x, v) in accr.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(av, *v, *x);
            }
        }
    }
    for (r, accr) in acc.iter().enumerate().take(rows) {
        let cr = c.add(r * ldc);
        for (p, x) in accr.iter().enumerate() {
            let dst = cr.add(p * NR);
            let v = if accumulate {
                _mm512_add_ps(*x, _mm512_loadu_ps(dst))
            } else {
                *x
            };
            _mm512_storeu_ps(dst, v);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_12x16n<const NP: usize>(
    _: usize,
    _: *const f32,
    _: usize,
    _: usize,
    _: *const f32,
    _: usize,
    _: usize,
    _: *mut f32,
    _: usize,
    _: bool,
) {
    unreachable!("the SIMD paths are only taken on x86_64 with AVX-512")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_6x16(
    _: usize,
    _: *const f32,
    _: usize,
    _: usize,
    _: *const f32,
    _: usize,
    _: *mut f32,
    _: usize,
    _: bool,
) {
    unreachable!("the SIMD paths are only taken on x86_64 with AVX2")
}

fn fallback(c: &mut [f32], a: &[f32], m: usize, w: &PackedWeights) {
    let (k, n) = (w.k, w.n);
    let par = if m * n * k >= 2_000_000 && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: c is m*n, a is m*k and plain is k*n, all row-major.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            w.plain.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(a: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for kk in 0..k {
                for j in 0..n {
                    c[i * n + j] += f64::from(a[i * k + kk]) * f64::from(w[kk * n + j]);
                }
            }
        }
        c
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = crate::bench::corpus::SplitMix64::new(seed);
        (0..n)
            .map(|_| (s.next_u64() % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Each case with each kernel.
    fn every<T: Copy>(kernels: &[Simd], cases: &[T]) -> Vec<(Simd, T)> {
        kernels
            .iter()
            .flat_map(|&s| cases.iter().map(move |&c| (s, c)))
            .collect()
    }

    #[test]
    fn small_product_matches_reference_with_strides() {
        // Attention's shapes: a few rows, k = head_dim or sequence length, 1-4 panels, every
        // operand inside a wider buffer (row strides larger than the rows).
        let cases = [
            (1, 32, 2),
            (5, 3, 1),
            (7, 45, 2),
            (17, 64, 4),
            (6, 1, 3),
            (25, 40, 5),
        ];
        for (simd, (m, k, panels)) in every(&Simd::available(), &cases) {
            let n = 16 * panels;
            let (lda, ldb, ldc) = (k + 3, n + 5, n + 7);
            let a = values(m * lda, 11);
            let b = values(k * ldb, 12);
            let mut c = vec![f32::NAN; m * ldc];
            // SAFETY: a has m rows of lda >= k, b k rows of ldb >= n, c m rows of ldc >= n.
            let done = unsafe {
                small_product(
                    simd,
                    c.as_mut_ptr(),
                    ldc,
                    a.as_ptr(),
                    lda,
                    m,
                    k,
                    b.as_ptr(),
                    ldb,
                    16,
                    panels,
                )
            };
            if !done {
                assert_eq!(simd, Simd::None, "a SIMD level this CPU has refused");
                continue; // callers use the gemm crate
            }
            let dense_a: Vec<f32> = (0..m)
                .flat_map(|i| a[i * lda..i * lda + k].to_vec())
                .collect();
            let dense_b: Vec<f32> = (0..k)
                .flat_map(|r| b[r * ldb..r * ldb + n].to_vec())
                .collect();
            let want = reference(&dense_a, &dense_b, m, k, n);
            for i in 0..m {
                for j in 0..ldc {
                    let got = c[i * ldc + j];
                    if j < n {
                        assert!(
                            (f64::from(got) - want[i * n + j]).abs() < 1e-4,
                            "{simd:?} {m}x{k}x{n} at {i},{j}"
                        );
                    } else {
                        assert!(got.is_nan(), "wrote past the panels at {i},{j}");
                    }
                }
            }
        }
    }

    #[test]
    fn key_panels_are_the_transposed_keys_zero_padded() {
        for &(len, d) in &[(1, 8), (7, 32), (16, 32), (17, 64), (45, 16), (64, 32)] {
            let stride = 3 * d + 5;
            let keys = values(len * stride, 21);
            let padded = len.next_multiple_of(16);
            let mut panels = vec![f32::NAN; d * padded];
            // SAFETY: keys holds len rows of stride >= d; panels holds d * padded.
            if !unsafe { pack_key_panels(panels.as_mut_ptr(), keys.as_ptr(), stride, len, d) } {
                return; // no AVX2+FMA: callers use the gemm crate
            }
            for j in 0..padded {
                for kk in 0..d {
                    let got = panels[(j / 16) * d * 16 + kk * 16 + j % 16];
                    let want = if j < len { keys[j * stride + kk] } else { 0.0 };
                    assert_eq!(got, want, "len {len} d {d}: key {j} feature {kk}");
                }
            }
        }
    }

    #[test]
    fn row_blocks_are_balanced_and_cover_every_row() {
        for &(m, threads) in &[
            (1, 2),
            (5, 2),
            (360, 2),
            (432, 2),
            (864, 2),
            (433, 2),
            (16384, 2),
            (100, 3),
            (7, 1),
        ] {
            let n = 3;
            let mut c = vec![0f32; m * n];
            let blocks = row_blocks(&mut c, m, n, threads, MR512, MC);
            let mut next = 0;
            for (r0, rows) in &blocks {
                assert_eq!(*r0, next, "m={m}: blocks are contiguous");
                assert!(rows.len() / n <= MC, "m={m}: a block fits MC rows");
                next += rows.len() / n;
            }
            assert_eq!(next, m, "m={m}: every row once");
            let sizes: Vec<usize> = blocks.iter().map(|(_, r)| r.len() / n).collect();
            let (lo, hi) = (sizes.iter().min(), sizes.iter().max());
            if blocks.len() > 1 && m % MR512 == 0 {
                assert!(
                    hi.unwrap_or(&0) - lo.unwrap_or(&0) <= MR512,
                    "m={m}: {sizes:?}"
                );
                assert_eq!(blocks.len() % threads, 0, "m={m}: {sizes:?}");
            }
        }
    }

    #[test]
    fn packed_product_matches_reference_at_awkward_shapes() {
        let shapes = [
            (1, 5, 16),
            (7, 300, 32),
            (73, 513, 48),
            (150, 40, 16),
            (13, 260, 20),
            (433, 64, 32),
            (301, 300, 80),
            // AMX's shapes (k, n multiples of 32, 32+ rows): whole strips, a short last strip,
            // several column groups (k = 1536), and the model's own widths.
            (64, 64, 64),
            (77, 96, 96),
            (45, 1536, 64),
            (161, 384, 1152),
        ];
        // Every SIMD kernel this CPU has, on the same packed weights (without one, or at a
        // width not a multiple of 16, the weights stay plain and the gemm crate runs).
        let kernels: Vec<Simd> = match Simd::available().as_slice() {
            [Simd::None] => vec![Simd::None],
            all => all.iter().copied().filter(|s| *s != Simd::None).collect(),
        };
        for (simd, (m, k, n)) in every(&kernels, &shapes) {
            let a = values(m * k, 1);
            let wv = values(k * n, 2);
            let w = PackedWeights::new_for(simd, wv.clone(), k, n);
            let bias = values(n, 3);
            let residual = values(m * n, 4);
            let mut c = vec![f32::NAN; m * n];
            linear_on(
                simd,
                &mut c,
                &a,
                m,
                &w,
                Epilogue {
                    residual: Some(&residual),
                    ..Epilogue::bias(&bias)
                },
            );
            let want = reference(&a, &wv, m, k, n);
            // AMX's split BF16 products are good to ~1e-5 of the sum of |terms| (~k/4 here).
            let tol = 1e-3f64.max(2e-5 * k as f64 / 4.0);
            for i in 0..m * n {
                let expect = want[i] + f64::from(bias[i % n]) + f64::from(residual[i]);
                assert!(
                    (f64::from(c[i]) - expect).abs() < tol,
                    "{simd:?} ({m},{k},{n}) at {i}: {} vs {expect}",
                    c[i]
                );
            }
            // The same product with the FFN's exact-GELU epilogue.
            c.fill(f32::NAN);
            linear_on(
                simd,
                &mut c,
                &a,
                m,
                &w,
                Epilogue {
                    activation: Activation::Gelu,
                    ..Epilogue::bias(&bias)
                },
            );
            for i in 0..m * n {
                let v = want[i] + f64::from(bias[i % n]);
                let expect =
                    0.5 * v * (1.0 + kernels::tests::libm_erf(v / std::f64::consts::SQRT_2));
                assert!(
                    (f64::from(c[i]) - expect).abs() < tol,
                    "{simd:?} GELU ({m},{k},{n}) at {i}: {} vs {expect}",
                    c[i]
                );
            }
        }
    }

    #[test]
    fn epilogue_applies_activation_then_norm() {
        let (m, k, n) = (9, 20, 32);
        let a = values(m * k, 5);
        let wv = values(k * n, 6);
        let w = PackedWeights::new(wv.clone(), k, n);
        let bias = values(n, 7);
        let gamma = vec![1.0; n];
        let beta = vec![0.0; n];
        let mut c = vec![0f32; m * n];
        linear(
            &mut c,
            &a,
            m,
            &w,
            Epilogue {
                activation: Activation::Relu,
                norm: Some((&gamma, &beta, 1e-5)),
                ..Epilogue::bias(&bias)
            },
        );
        let raw = reference(&a, &wv, m, k, n);
        for i in 0..m {
            let row: Vec<f64> = (0..n)
                .map(|j| (raw[i * n + j] + f64::from(bias[j])).max(0.0))
                .collect();
            let mean = row.iter().sum::<f64>() / n as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            for j in 0..n {
                let want = (row[j] - mean) / (var + 1e-5).sqrt();
                assert!((f64::from(c[i * n + j]) - want).abs() < 1e-3);
            }
        }
    }
}
