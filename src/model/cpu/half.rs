//! Dense products in FP16 with AVX512-FP16 (`--dtype float16` on the native CPU backend).
//!
//! Why: `vfmadd231ph` does 32 multiply-adds per instruction on both FMA ports, twice
//! `vfmadd231ps`. On the 2-core Xeon VM without AMX (one core, 12 independent chains):
//! F32 FMA 181.6 GFLOP/s, FP16 FMA 398.6, BF16 dot (`vdpbf16ps`, one port) 87.4 — so FP16 is
//! the one narrower format that is faster there, and it is what the GPU path runs by default.
//!
//! Accuracy: weights are rounded to FP16 once at load; each row of A is scaled by a power of
//! two (exact) so its largest value lies in [8, 16), rounded to FP16 and multiplied in FP16,
//! except for a few outlier features per row (beyond 8x the row's rms), which are added in F32
//! (`convert_row` says why). An FP16 accumulator lane holds only `CHUNK_PAIRS` products
//! before it is widened and added into F32, so the sum over the whole depth is F32.
//! Attention, norms, activations and the epilogues stay F32. all-mpnet-base-v2 over 512
//! corpus texts: cosine to float32 at least 0.999994 (0.99963 before the outlier split; the
//! reference backend's float16 on a CPU: 0.99987 on the same worst text).
//!
//! Layout: `vfmadd231ph` can only broadcast one FP16 from memory, so a kernel that took A
//! that way loaded 26 times per 24 FMAs (two FMAs per row, each with its own broadcast). W
//! is stored in pairs of rows instead, `(w[2r][j], w[2r+1][j])` side by side, and A's pair
//! `(a[2r], a[2r+1])` is broadcast once as one 32-bit value (`vbroadcastss`, a plain load)
//! for both FMAs: 14 loads per 24 FMAs. Each lane multiplies its own half of the pair, even
//! and odd depths accumulate in neighbouring lanes, and the two are added in F32 at the end.
//! A micro-kernel call is 12 rows x 32 columns (24 accumulators of 16 columns x 2 depths);
//! A is laid out strip by strip, pair-major, so the kernel reads it as one stream. One core,
//! depth 768, in L2, best of runs on the shared VM: 282-309 GFLOP/s against 207 for the
//! one-FP16-broadcast kernel (F32 FMA peak 182, FP16 FMA peak 399).
//!
//! One concern, over 500 lines on purpose: packing, kernel and row scaling are one piece of
//! arithmetic, and the accuracy argument above covers all of them together.

use std::cell::RefCell;

/// Columns of a panel (two vectors of 16 column pairs).
pub const PANEL: usize = 32;
/// Rows of a micro-kernel call (the kernel's registers and `convert_row`'s scatter assume 12).
pub const ROWS: usize = 12;
const _: () = assert!(ROWS == 12);
/// Products an FP16 accumulator lane holds before it is added into F32 (a chunk is twice as
/// deep: two lanes per column); `k` must be a multiple of `2 * CHUNK_PAIRS`. 32: at 64 the
/// kernel alone ran 9 % faster (one core, depth 768), but `spotinfer batch` showed no
/// difference through the VM's noise (23.6 / 24.4 against 26.3 / 22.8 sentences/s) and the
/// worst cosine to float32 fell from 0.999994 to 0.999981.
pub const CHUNK_PAIRS: usize = 32;
/// Largest |weight| kept in FP16 (see `HalfWeights::new`).
const MAX_WEIGHT: f32 = 64.0;
/// Bytes of W one group of panels may take, so the group stays in L2 while every strip of
/// the rows passes over it (the AMX kernel's figure; a panel of depth 768 is 96 KiB).
const GROUP_BYTES: usize = 512 * 1024;
/// Deepest pass of the kernel: 12 rows of 768 FP16 values are 18 KiB, well inside L1.
const MAX_DEPTH_BLOCK: usize = 768;

/// A weight matrix `[k, n]` in FP16 panels.
pub struct HalfWeights {
    k: usize,
    n: usize,
    /// For each 32-column panel, `k / 2` row pairs of 32 interleaved column pairs.
    w: Vec<u16>,
}

impl HalfWeights {
    /// From `w` row-major `[k, n]` (as `from_rows`).
    pub fn new(w: &[f32], k: usize, n: usize) -> Option<Self> {
        assert_eq!(w.len(), k * n, "weight size");
        Self::from_rows(&super::transpose(w, k, n), k, n)
    }

    /// From `rows`, each output feature's `k` weights (`[n, k]`, a checkpoint's layout);
    /// None where AVX512-FP16 is missing or the shape does not fit the kernel (`k` a multiple
    /// of 64, `n` of `PANEL`): those layers stay F32.
    pub fn from_rows(rows: &[f32], k: usize, n: usize) -> Option<Self> {
        assert_eq!(rows.len(), k * n, "weight size");
        if !available() || k == 0 || !k.is_multiple_of(2 * CHUNK_PAIRS) || !n.is_multiple_of(PANEL)
        {
            return None;
        }
        // A's values reach 16: weights beyond 64 could overflow a chunk's FP16 sum (65,504).
        if rows.iter().any(|v| v.is_nan() || v.abs() > MAX_WEIGHT) {
            return None;
        }
        // Rounded in one vectorised pass (a scalar pass added 0.8 s to loading
        // all-mpnet-base-v2). A row's depths 2r and 2r + 1 are already side by side, so the
        // panels are a transpose of these pairs, done in blocks of 32 pairs (building them from
        // a transposed F32 matrix was half of the load time).
        let mut plain = vec![0u16; k * n];
        convert(rows, &mut plain);
        let pairs = k / 2;
        let mut out = vec![0u16; k * n];
        for (p, panel) in out.chunks_exact_mut(k * PANEL).enumerate() {
            for r0 in (0..pairs).step_by(32) {
                let r1 = (r0 + 32).min(pairs);
                for jj in 0..PANEL {
                    let row = &plain[(p * PANEL + jj) * k..][..k];
                    for r in r0..r1 {
                        let at = (r * PANEL + jj) * 2;
                        panel[at] = row[2 * r];
                        panel[at + 1] = row[2 * r + 1];
                    }
                }
            }
        }
        Some(Self { k, n, w: out })
    }

    pub fn bytes(&self) -> usize {
        self.w.len() * 2
    }
}

/// Panels of `w` (32 columns each).
pub fn panels(w: &HalfWeights) -> usize {
    w.n / PANEL
}

/// Whether this CPU has AVX512-FP16 (and the AVX-512 F/BW/VL the rest of the kernel uses).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512fp16")
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// `x` rounded to the nearest FP16 (ties to even), as bits; overflow gives ±inf, NaN stays NaN.
fn to_half(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xFF) as i32;
    let man = b & 0x7F_FFFF;
    if exp == 0xFF {
        return sign | 0x7C00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1F {
        return sign | 0x7C00;
    }
    if e <= 0 {
        // Subnormal (or zero): shift the full mantissa down, round to nearest even.
        if e < -10 {
            return sign;
        }
        let full = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = full >> shift;
        let rest = full & ((1 << shift) - 1);
        let mid = 1 << (shift - 1);
        let up = rest > mid || (rest == mid && half & 1 == 1);
        return sign | (half + u32::from(up)) as u16;
    }
    let half = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1FFF;
    let up = rest > 0x1000 || (rest == 0x1000 && half & 1 == 1);
    // A carry out of the mantissa moves into the exponent, up to inf: what rounding wants.
    sign | (half + u32::from(up)) as u16
}

/// A block of A as the kernel reads it, reused between calls by each thread (a fresh
/// allocation per call would be fresh pages, i.e. page faults).
#[derive(Default)]
struct HalfA {
    /// FP16 pairs in strip order: pair p of a strip's row i at `p * 12 + i`.
    pairs: Vec<u32>,
    /// Each row's scale (the FP16 values are A / scale).
    scales: Vec<f32>,
    /// Entries kept out of the FP16 product, `(depth, value)`, row by row...
    outliers: Vec<(u32, f32)>,
    /// ...row r's at `outliers[starts[r]..starts[r + 1]]`.
    starts: Vec<usize>,
}

thread_local! {
    static HALF_A: RefCell<HalfA> = RefCell::new(HalfA::default());
}

/// `c[rows, 32 * panels] = a[rows, k] · w[:, 32 * panels]`: the panels `panels` of the
/// product (`a` row-major with stride `k`, `c` with stride `w.n`). Every row gets the same
/// arithmetic whatever else is in the batch or however the panels are split.
///
/// # Safety
/// `available()` must have returned true; `c` must point to `rows` rows of `w.n` floats
/// whose columns in `panels` no one else reads or writes meanwhile.
pub unsafe fn product(
    c: *mut f32,
    a: &[f32],
    rows: usize,
    w: &HalfWeights,
    panels: std::ops::Range<usize>,
) {
    let (k, n) = (w.k, w.n);
    assert!(
        a.len() >= rows * k && panels.end <= n / PANEL,
        "buffer sizes"
    );
    let strips = rows.div_ceil(ROWS);
    if strips == 0 {
        return;
    }
    HALF_A.with_borrow_mut(|half_a| {
        let HalfA {
            pairs: ah,
            scales,
            outliers,
            starts,
        } = half_a;
        ah.resize(strips * ROWS * k / 2, 0);
        // Padding rows of a short last strip: zeros (their results are never stored).
        let last = &mut ah[(strips - 1) * ROWS * k / 2..];
        for i in rows - (strips - 1) * ROWS..ROWS {
            for p in 0..k / 2 {
                last[p * ROWS + i] = 0;
            }
        }
        scales.resize(strips * ROWS, 1.0);
        outliers.clear();
        starts.clear();
        starts.push(0);
        for r in 0..rows {
            // Strip-major: pair p of the strip's row i at p * 12 + i, so the kernel reads A
            // as one sequential stream (twelve row streams ran the depth-3072 product at 78 %
            // of the rate of depth 768).
            let (s, i) = (r / ROWS, r % ROWS);
            let strip = &mut ah[s * ROWS * k / 2..(s + 1) * ROWS * k / 2];
            scales[r] = convert_row(&a[r * k..(r + 1) * k], strip, i, outliers);
            starts.push(outliers.len());
        }
        for sc in &mut scales[rows..] {
            *sc = 1.0;
        }
        // Depth in blocks whose strip (12 rows) stays in L1 across the panels of a group: a
        // strip of depth 3072 (72 KiB) did not, and ran at 77 % of the rate of depth 768.
        let depth = depth_block(k);
        let blocks = k / depth;
        let group = (GROUP_BYTES / (depth * PANEL * 2)).max(1);
        for b in 0..blocks {
            for g0 in panels.clone().step_by(group) {
                for s in 0..strips {
                    let r0 = s * ROWS;
                    let a_block = ah[(r0 * k + b * depth * ROWS) / 2..].as_ptr();
                    let s_strip = &scales[r0..r0 + ROWS];
                    for p in g0..(g0 + group).min(panels.end) {
                        let wp = w.w[p * k * PANEL..].as_ptr();
                        // SAFETY: the caller vouches for c and AVX512-FP16; the strip holds 12
                        // rows of k FP16 values, the panel k * 32, block b their depths b *
                        // depth.. (b + 1) * depth; only the strip's real rows are stored.
                        unsafe {
                            strip_times_panel(
                                depth,
                                a_block,
                                s_strip,
                                wp.add(b * depth * PANEL),
                                c.add(r0 * n + p * PANEL),
                                n,
                                ROWS.min(rows - r0),
                                b > 0,
                            );
                            if b + 1 < blocks {
                                continue;
                            }
                            for r in r0..(r0 + ROWS).min(rows) {
                                let row_outliers = &outliers[starts[r]..starts[r + 1]];
                                if !row_outliers.is_empty() {
                                    add_outliers(c.add(r * n + p * PANEL), wp, row_outliers);
                                }
                            }
                        };
                    }
                }
            }
        }
    });
}

/// The 24 FP16 accumulators of a chunk, spilled to be widened from memory.
#[repr(C, align(64))]
struct Spilled([u16; ROWS * PANEL * 2]);

/// The depth of one pass of the kernel: `k` itself up to `MAX_DEPTH_BLOCK`, else its largest
/// divisor within that which the kernel takes (a multiple of `2 * CHUNK_PAIRS`).
fn depth_block(k: usize) -> usize {
    (1..=k / (2 * CHUNK_PAIRS))
        .rev()
        .map(|chunks| chunks * 2 * CHUNK_PAIRS)
        .find(|&d| d <= MAX_DEPTH_BLOCK && k.is_multiple_of(d))
        .unwrap_or(k)
}

/// A 12 x 32 result tile in F32 before its column pairs are added: each row holds 32
/// `(even depth, odd depth)` pairs.
#[repr(C, align(64))]
struct Staging([f32; ROWS * PANEL * 2]);

/// Writes row `x` as FP16 pairs into row `i` of `strip` (pair p at `p * 12 + i`), scaled by
/// a power of two, and returns the scale `s` (the FP16 values ≈ x / s). Entries beyond `OUTLIER` times the row's rms, where there are at most
/// `k / 64` of them, are written as zero and pushed to `outliers` instead (the caller adds
/// them in F32): one feature of 100 among values of 0.5 raised the error of the other terms
/// 20-fold, first by pushing them below FP16's normal range, then by swamping the FP16
/// partial sums it is part of. The rest are scaled so their maximum lies in [8, 16): well
/// inside FP16's normal range, and far from its maximum even summed over a chunk.
fn convert_row(x: &[f32], strip: &mut [u32], i: usize, outliers: &mut Vec<(u32, f32)>) -> f32 {
    assert!(i < ROWS && strip.len() >= x.len() / 2 * ROWS, "a strip row");
    #[cfg(target_arch = "x86_64")]
    {
        assert!(available(), "FP16 rows without AVX512-FP16");
        // SAFETY: AVX-512F/BW/VL checked by `available`; the strip holds x.len() / 2 pairs
        // of 12 rows.
        unsafe { convert_row_avx512(x, strip, i, outliers) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, strip, i, outliers);
        unreachable!("AVX512-FP16 is only detected on x86_64")
    }
}

/// How many times the row's rms makes an entry an outlier.
const OUTLIER: f32 = 8.0;

/// The power of two that puts `max` in [8, 16) (1 for a zero row); inf / NaN pass through,
/// so the row's results are non-finite and refused downstream.
fn row_scale(max: f32) -> f32 {
    if max > 0.0 && max.is_finite() {
        let e = max.log2().floor() as i32;
        // log2 can round across an integer: settle on 2^e <= max < 2^(e+1) exactly.
        let e = if 2f32.powi(e) > max {
            e - 1
        } else if 2f32.powi(e + 1) <= max {
            e + 1
        } else {
            e
        };
        2f32.powi(e - 3)
    } else if max == 0.0 {
        1.0
    } else {
        max
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn convert_row_avx512(
    x: &[f32],
    strip: &mut [u32],
    row: usize,
    outliers: &mut Vec<(u32, f32)>,
) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len();
    assert!(n.is_multiple_of(16), "rows are whole vectors");
    let load = |i: usize| {
        // SAFETY: i + 16 <= n.
        unsafe { _mm512_loadu_ps(x.as_ptr().add(i)) }
    };
    let (mut max, mut sq) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for i in (0..n).step_by(16) {
        let v = load(i);
        max = _mm512_max_ps(max, _mm512_abs_ps(v));
        sq = _mm512_fmadd_ps(v, v, sq);
    }
    let mut m = _mm512_reduce_max_ps(max);
    let threshold = OUTLIER * (_mm512_reduce_add_ps(sq) / n as f32).sqrt();
    let thr = _mm512_set1_ps(threshold);
    // Outliers: none in most rows (one compare of the max), a few features in some.
    let mut keep_all = true;
    if m > threshold && threshold > 0.0 {
        let (start, cap) = (outliers.len(), n / 64);
        let mut rest = _mm512_setzero_ps();
        for i in (0..n).step_by(16) {
            let v = load(i);
            let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(v), thr);
            rest = _mm512_mask_max_ps(rest, !big, rest, _mm512_abs_ps(v));
            let mut bits = big;
            while bits != 0 {
                let j = bits.trailing_zeros() as usize;
                outliers.push(((i + j) as u32, x[i + j]));
                bits &= bits - 1;
            }
            if outliers.len() - start > cap {
                break;
            }
        }
        if outliers.len() - start <= cap {
            keep_all = false;
            m = _mm512_reduce_max_ps(rest);
        } else {
            outliers.truncate(start);
        }
    }
    // A NaN is skipped by the max but still converts to an FP16 NaN, which reaches the output.
    let s = row_scale(m);
    let inv = _mm512_set1_ps(1.0 / s);
    let gaps = _mm256_setr_epi32(0, 12, 24, 36, 48, 60, 72, 84);
    for j in (0..n).step_by(16) {
        let v = load(j);
        let scaled = if keep_all {
            _mm512_mul_ps(v, inv)
        } else {
            let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(v), thr);
            _mm512_maskz_mul_ps(!big, v, inv)
        };
        let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(scaled);
        // Eight pairs to their places 12 apart.
        // SAFETY: pairs j / 2 .. j / 2 + 8 of row `row` are inside the strip (caller).
        unsafe {
            _mm256_i32scatter_epi32::<4>(strip.as_mut_ptr().add(j / 2 * ROWS + row).cast(), gaps, h)
        };
    }
    s
}

/// `c[0..32] += value * w[depth, 0..32]` for each outlier of one row, from the panel's FP16
/// weights (their rounding is 2^-11 relative, the inputs' is avoided).
///
/// # Safety
/// AVX512-FP16 is available; `w` is one panel of `k` depths, every depth below `k`; `c` has
/// 32 writable floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn add_outliers(c: *mut f32, w: *const u16, outliers: &[(u32, f32)]) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's guarantee: 64 u16 per depth pair, 32 floats of c.
    unsafe {
        let (mut lo, mut hi) = (_mm512_loadu_ps(c), _mm512_loadu_ps(c.add(16)));
        for &(depth, value) in outliers {
            let pair = w.add(depth as usize / 2 * 2 * PANEL);
            let (a, b) = (
                _mm512_loadu_si512(pair.cast()),
                _mm512_loadu_si512(pair.add(32).cast()),
            );
            // Even depths are the low half of each 32-bit lane, odd ones the high half.
            let (a, b) = if depth % 2 == 0 {
                (a, b)
            } else {
                (_mm512_srli_epi32::<16>(a), _mm512_srli_epi32::<16>(b))
            };
            let v = _mm512_set1_ps(value);
            lo = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(a)), v, lo);
            hi = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(b)), v, hi);
        }
        _mm512_storeu_ps(c, lo);
        _mm512_storeu_ps(c.add(16), hi);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn add_outliers(_: *mut f32, _: *const u16, _: &[(u32, f32)]) {
    unreachable!("AVX512-FP16 is only detected on x86_64")
}

/// `x` rounded to FP16 into `out` (the same bits as `to_half`).
fn convert(x: &[f32], out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX-512F/BW/VL checked by `available`.
        return unsafe { convert_avx512(x, out) };
    }
    for (o, v) in out.iter_mut().zip(x) {
        *o = to_half(*v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn convert_avx512(x: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = x.len().min(out.len());
    let body = n / 16 * 16;
    for i in (0..body).step_by(16) {
        // SAFETY: i + 16 <= n for both buffers.
        unsafe {
            let v = _mm512_loadu_ps(x.as_ptr().add(i));
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), h);
        }
    }
    for (o, v) in out[body..n].iter_mut().zip(&x[body..n]) {
        *o = to_half(*v);
    }
}

/// `c[..stored, 0..32] = scales ⊙ (a[12, k] · w[k, 32])`, or `+=` that where `accumulate`:
/// `a` is the strip's `k / 2` FP16 pairs of each of 12 rows, pair-major (`a[p * 12 + i]`),
/// `w` one panel, `c` F32 rows at stride `ldc` floats; only the first `stored` rows are
/// written.
///
/// # Safety
/// AVX512-FP16 is available; `k` is a non-zero multiple of `2 * CHUNK_PAIRS`; `scales` has 12
/// values; the pointers hold what is described.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16")]
#[allow(clippy::too_many_arguments)]
unsafe fn strip_times_panel(
    k: usize,
    a: *const u32,
    scales: &[f32],
    w: *const u16,
    c: *mut f32,
    ldc: usize,
    stored: usize,
    accumulate: bool,
) {
    use std::arch::asm;
    use std::arch::x86_64::*;
    let mut st = Staging([0.0; ROWS * PANEL * 2]);
    let mut spilled = Spilled([0; ROWS * PANEL * 2]);
    // SAFETY: the caller's guarantee; the kernel reads 12 * k / 2 pairs from a, k * 32 FP16
    // from w, and writes only st and spilled.
    unsafe {
        // Row pair (a[2r], a[2r+1]) of one row broadcast into zmm`b`, times both vectors.
        macro_rules! fma_row {
            ($x:literal, $y:literal, $b:literal, $addr:literal) => {
                concat!(
                    "vbroadcastss zmm",
                    $b,
                    ", dword ptr [",
                    $addr,
                    "]\n",
                    "vfmadd231ph zmm",
                    $x,
                    ", zmm",
                    $b,
                    ", zmm24\n",
                    "vfmadd231ph zmm",
                    $y,
                    ", zmm",
                    $b,
                    ", zmm25\n"
                )
            };
        }
        // Accumulator `acc` stored as FP16 at byte offset `h` of the spill area: the memory
        // form of `vcvtph2ps` below widens without the shuffle uop the register form takes
        // on the FMA ports (7 to 4 of those per accumulator; the kernel ran 0-5 % faster).
        macro_rules! spill {
            ($acc:literal, $h:literal) => {
                concat!("vmovdqa64 zmmword ptr [{h} + ", $h, "], zmm", $acc, "\n")
            };
        }
        // The 32 FP16 sums at `h` widened to F32 and added into st at byte offset `off`.
        macro_rules! flush {
            ($h:literal, $h2:literal, $off:literal, $off2:literal) => {
                concat!(
                    "vcvtph2ps zmm26, ymmword ptr [{h} + ",
                    $h,
                    "]\n",
                    "vcvtph2ps zmm27, ymmword ptr [{h} + ",
                    $h2,
                    "]\n",
                    "vaddps zmm26, zmm26, zmmword ptr [{st} + ",
                    $off,
                    "]\n",
                    "vmovaps zmmword ptr [{st} + ",
                    $off,
                    "], zmm26\n",
                    "vaddps zmm27, zmm27, zmmword ptr [{st} + ",
                    $off2,
                    "]\n",
                    "vmovaps zmmword ptr [{st} + ",
                    $off2,
                    "], zmm27\n"
                )
            };
        }
        asm!(
            "2:",
            "vpxord zmm0, zmm0, zmm0", "vpxord zmm1, zmm1, zmm1",
            "vpxord zmm2, zmm2, zmm2", "vpxord zmm3, zmm3, zmm3",
            "vpxord zmm4, zmm4, zmm4", "vpxord zmm5, zmm5, zmm5",
            "vpxord zmm6, zmm6, zmm6", "vpxord zmm7, zmm7, zmm7",
            "vpxord zmm8, zmm8, zmm8", "vpxord zmm9, zmm9, zmm9",
            "vpxord zmm10, zmm10, zmm10", "vpxord zmm11, zmm11, zmm11",
            "vpxord zmm12, zmm12, zmm12", "vpxord zmm13, zmm13, zmm13",
            "vpxord zmm14, zmm14, zmm14", "vpxord zmm15, zmm15, zmm15",
            "vpxord zmm16, zmm16, zmm16", "vpxord zmm17, zmm17, zmm17",
            "vpxord zmm18, zmm18, zmm18", "vpxord zmm19, zmm19, zmm19",
            "vpxord zmm20, zmm20, zmm20", "vpxord zmm21, zmm21, zmm21",
            "vpxord zmm22, zmm22, zmm22", "vpxord zmm23, zmm23, zmm23",
            "mov {t}, {chunk}",
            "3:",
            "vmovups zmm24, zmmword ptr [{w}]",
            "vmovups zmm25, zmmword ptr [{w} + 64]",
            // W streams from L2 (a panel of depth 768 fills L1): asked for 8 steps ahead,
            // where the stalls sat on its loads (5-10 % faster at depth 768).
            "prefetcht0 [{w} + 1024]",
            "prefetcht0 [{w} + 1088]",
            fma_row!("0", "1", "26", "{a} + 0"),
            fma_row!("2", "3", "27", "{a} + 4"),
            fma_row!("4", "5", "28", "{a} + 8"),
            fma_row!("6", "7", "29", "{a} + 12"),
            fma_row!("8", "9", "26", "{a} + 16"),
            fma_row!("10", "11", "27", "{a} + 20"),
            fma_row!("12", "13", "28", "{a} + 24"),
            fma_row!("14", "15", "29", "{a} + 28"),
            fma_row!("16", "17", "26", "{a} + 32"),
            fma_row!("18", "19", "27", "{a} + 36"),
            fma_row!("20", "21", "28", "{a} + 40"),
            fma_row!("22", "23", "29", "{a} + 44"),
            "add {w}, 128",
            "add {a}, 48",
            "dec {t}",
            "jnz 3b",
            spill!("0", "0"),
            spill!("1", "64"),
            spill!("2", "128"),
            spill!("3", "192"),
            spill!("4", "256"),
            spill!("5", "320"),
            spill!("6", "384"),
            spill!("7", "448"),
            spill!("8", "512"),
            spill!("9", "576"),
            spill!("10", "640"),
            spill!("11", "704"),
            spill!("12", "768"),
            spill!("13", "832"),
            spill!("14", "896"),
            spill!("15", "960"),
            spill!("16", "1024"),
            spill!("17", "1088"),
            spill!("18", "1152"),
            spill!("19", "1216"),
            spill!("20", "1280"),
            spill!("21", "1344"),
            spill!("22", "1408"),
            spill!("23", "1472"),
            flush!("0", "32", "0", "64"),
            flush!("64", "96", "128", "192"),
            flush!("128", "160", "256", "320"),
            flush!("192", "224", "384", "448"),
            flush!("256", "288", "512", "576"),
            flush!("320", "352", "640", "704"),
            flush!("384", "416", "768", "832"),
            flush!("448", "480", "896", "960"),
            flush!("512", "544", "1024", "1088"),
            flush!("576", "608", "1152", "1216"),
            flush!("640", "672", "1280", "1344"),
            flush!("704", "736", "1408", "1472"),
            flush!("768", "800", "1536", "1600"),
            flush!("832", "864", "1664", "1728"),
            flush!("896", "928", "1792", "1856"),
            flush!("960", "992", "1920", "1984"),
            flush!("1024", "1056", "2048", "2112"),
            flush!("1088", "1120", "2176", "2240"),
            flush!("1152", "1184", "2304", "2368"),
            flush!("1216", "1248", "2432", "2496"),
            flush!("1280", "1312", "2560", "2624"),
            flush!("1344", "1376", "2688", "2752"),
            flush!("1408", "1440", "2816", "2880"),
            flush!("1472", "1504", "2944", "3008"),
            "dec {chunks}",
            "jnz 2b",
            a = inout(reg) a => _,
            w = inout(reg) w => _,
            st = in(reg) st.0.as_mut_ptr(),
            h = in(reg) spilled.0.as_mut_ptr(),
            chunks = inout(reg) k / (2 * CHUNK_PAIRS) => _,
            chunk = const CHUNK_PAIRS,
            t = out(reg) _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
            out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
            out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
            out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
            out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
            out("zmm28") _, out("zmm29") _,
            options(nostack),
        );
        // Each row's 32 (even, odd) pairs → 32 columns, times the row's scale.
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        for (r, &scale) in scales.iter().enumerate().take(stored) {
            let row = st.0.as_ptr().add(r * PANEL * 2);
            let s = _mm512_set1_ps(scale);
            for half in 0..2 {
                let lo = _mm512_load_ps(row.add(half * 32));
                let hi = _mm512_load_ps(row.add(half * 32 + 16));
                let sum = _mm512_add_ps(
                    _mm512_permutex2var_ps(lo, even, hi),
                    _mm512_permutex2var_ps(lo, odd, hi),
                );
                let out = c.add(r * ldc + half * 16);
                let sum = if accumulate {
                    _mm512_fmadd_ps(sum, s, _mm512_loadu_ps(out))
                } else {
                    _mm512_mul_ps(sum, s)
                };
                _mm512_storeu_ps(out, sum);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn strip_times_panel(
    _: usize,
    _: *const u32,
    _: &[f32],
    _: *const u16,
    _: *mut f32,
    _: usize,
    _: usize,
    _: bool,
) {
    unreachable!("AVX512-FP16 is only detected on x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect()
    }

    fn half_to_f32(h: u16) -> f32 {
        let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
        let e = i32::from((h >> 10) & 0x1F);
        let m = f32::from(h & 0x3FF);
        sign * match e {
            0 => m * 2f32.powi(-24),
            0x1F if m == 0.0 => f32::INFINITY,
            0x1F => f32::NAN,
            _ => (1.0 + m / 1024.0) * 2f32.powi(e - 15),
        }
    }

    #[test]
    fn rounding_to_half_is_to_nearest_even() {
        for &(x, want) in &[
            (1.0f32, 0x3C00u16),
            (-2.0, 0xC000),
            (65_504.0, 0x7BFF),
            (65_520.0, 0x7C00),
            (1e9, 0x7C00),
            (0.0, 0),
            (-0.0, 0x8000),
            (6.103_515_6e-5, 0x0400),
            (5.960_464_5e-8, 0x0001),
            (2.0e-8, 0),
            (1.000_488_3, 0x3C00),
            (1.001_464_8, 0x3C02),
        ] {
            assert_eq!(to_half(x), want, "{x}");
        }
        assert!(half_to_f32(to_half(f32::NAN)).is_nan());
        // Every FP16 value round-trips through f32.
        for h in 0u16..=0xFFFF {
            let x = half_to_f32(h);
            if !x.is_nan() {
                assert_eq!(to_half(x), h, "{h:#x}");
            }
        }
    }

    #[test]
    fn vector_rounding_gives_the_scalar_bits() {
        let mut x = values(1000, 3);
        x.extend([65_520.0, -1e9, 1e-7, 3e-5, f32::INFINITY, -0.0]);
        let mut fast = vec![0u16; x.len()];
        convert(&x, &mut fast);
        for (v, h) in x.iter().zip(&fast) {
            assert_eq!(*h, to_half(*v), "{v}");
        }
    }

    #[test]
    fn rows_scale_into_eight_to_sixteen_and_keep_outliers_out() {
        assert_eq!(row_scale(1.0), 0.125);
        assert_eq!(row_scale(15.99), 1.0);
        assert_eq!(row_scale(16.0), 2.0);
        assert_eq!(row_scale(0.0), 1.0);
        if !available() {
            return;
        }
        // Row 5 of a strip, read back as FP16 values in depth order; the other rows untouched.
        let convert = |x: &[f32], outliers: &mut Vec<(u32, f32)>| {
            let mut strip = vec![7u32; x.len() / 2 * ROWS];
            let s = convert_row(x, &mut strip, 5, outliers);
            for (p, pair) in strip.iter().enumerate() {
                if p % ROWS != 5 {
                    assert_eq!(*pair, 7, "pair {p} of another row");
                }
            }
            let out: Vec<u16> = strip
                .iter()
                .skip(5)
                .step_by(ROWS)
                .flat_map(|pair| [*pair as u16, (*pair >> 16) as u16])
                .collect();
            (s, out)
        };
        let mut x = values(128, 7);
        x[3] = 5.0;
        x[100] = -90.0;
        let mut outliers = Vec::new();
        let (s, out) = convert(&x, &mut outliers);
        // rms about 8: the threshold is about 64, so -90 is an outlier and 5 is not.
        assert_eq!(outliers, vec![(100, -90.0)]);
        assert_eq!(out[100], 0);
        // The rest (max 5) scale to [8, 16).
        assert_eq!(s, 0.5);
        assert_eq!(out[3], to_half(10.0));
        for (j, v) in x.iter().enumerate().filter(|(j, _)| *j != 100) {
            assert_eq!(out[j], to_half(v / s), "depth {j}");
        }
        // Many large entries are the row's signal, not outliers: all stay in FP16.
        let wide: Vec<f32> = (0..128)
            .map(|i| if i % 8 == 0 { 50.0 } else { 0.1 })
            .collect();
        outliers.clear();
        let (s, _) = convert(&wide, &mut outliers);
        assert!(outliers.is_empty());
        assert_eq!(s, 4.0);
        assert_eq!(convert(&[0.0; 32], &mut outliers).0, 1.0);
    }

    /// On a CPU without AVX512-FP16: checks that no FP16 layout is made (so every layer stays
    /// F32), says so, and returns true.
    fn without_fp16() -> bool {
        if available() {
            return false;
        }
        assert!(HalfWeights::new(&[0.0; 64 * 32], 64, 32).is_none());
        eprintln!("no AVX512-FP16 on this CPU: checked that no FP16 layout is made");
        true
    }

    fn rms(x: &[f64]) -> f64 {
        (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
    }

    fn reference(a: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
        let (mut c, mut mag) = (vec![0f64; m * n], vec![0f64; m * n]);
        for i in 0..m {
            for kk in 0..k {
                let x = f64::from(a[i * k + kk]);
                for j in 0..n {
                    let t = x * f64::from(w[kk * n + j]);
                    c[i * n + j] += t;
                    mag[i * n + j] += t.abs();
                }
            }
        }
        (c, mag)
    }

    /// Products at full and short strips, one and several panel groups, large-magnitude
    /// rows, against f64: the error stays within 4e-3 of Σ|terms|.
    #[test]
    fn panels_hold_each_columns_depth_pairs() {
        let (k, n) = (128, 64);
        let w = values(k * n, 11);
        let Some(half) = HalfWeights::new(&w, k, n) else {
            assert!(without_fp16(), "a shape the kernel takes");
            return;
        };
        // Depths (2r, 2r + 1) of column j = 32 p + jj at u16 ((p * k / 2 + r) * 32 + jj) * 2.
        for p in 0..n / PANEL {
            for r in 0..k / 2 {
                for jj in 0..PANEL {
                    let at = ((p * k / 2 + r) * PANEL + jj) * 2;
                    let j = p * PANEL + jj;
                    assert_eq!(half.w[at], to_half(w[2 * r * n + j]), "({p}, {r}, {jj})");
                    assert_eq!(half.w[at + 1], to_half(w[(2 * r + 1) * n + j]));
                }
            }
        }
    }

    #[test]
    fn deep_products_run_in_blocks_the_kernel_takes() {
        for (k, want) in [
            (64, 64),
            (768, 768),
            (1024, 512),
            (1536, 768),
            (3072, 768),
            (4096, 512),
        ] {
            assert_eq!(depth_block(k), want, "depth {k}");
        }
    }

    #[test]
    fn products_match_f64_within_half_precision() {
        if without_fp16() {
            return;
        }
        for &(m, k, n) in &[
            (12, 64, 32),
            (1, 64, 64),
            (13, 128, 96),
            (30, 768, 192),
            (7, 3072, 32),
            (25, 1024, 64),
            (40, 64, 32 * 180),
        ] {
            let mut a = values(m * k, (m * 31 + k) as u64);
            // Rows of very different magnitudes: each gets its own scale.
            for (i, row) in a.chunks_mut(k).enumerate() {
                let f = 10f32.powi(i as i32 % 7 - 3);
                row.iter_mut().for_each(|v| *v *= f);
                // Outliers, added in F32, on every third row (at even and odd depths).
                if i % 3 == 0 {
                    row[k / 3] *= 60.0;
                    row[k / 2 + 1] *= -45.0;
                }
            }
            let w: Vec<f32> = values(k * n, (k * 17 + n) as u64)
                .iter()
                .map(|v| v * 0.1)
                .collect();
            let hw = HalfWeights::new(&w, k, n).expect("fits the kernel");
            let mut c = vec![f32::NAN; m * n];
            // SAFETY: available() checked; c holds m rows of n.
            unsafe { product(c.as_mut_ptr(), &a, m, &hw, 0..panels(&hw)) };
            let (want, mag) = reference(&a, &w, m, k, n);
            let worst = c
                .iter()
                .zip(want.iter().zip(&mag))
                .map(|(&g, (&e, &s))| (f64::from(g) - e).abs() / s.max(1e-30))
                .fold(0f64, f64::max);
            assert!(worst < 4e-3, "{m}x{k}x{n}: worst {worst:e}");
        }
    }

    /// What the FP16 accumulators cost on top of rounding the inputs: the kernel's rms error
    /// against a product in F64 of the same FP16-rounded inputs, depth 3072 (measured 3.1x
    /// the inputs' rounding alone at `CHUNK_PAIRS` 32; a larger chunk would break the bound).
    #[test]
    fn chunk_error_is_within_four_times_the_rounding_of_inputs() {
        if without_fp16() {
            return;
        }
        let (m, k, n) = (24, 3072, 64);
        let a = values(m * k, 11);
        let w: Vec<f32> = values(k * n, 12).iter().map(|v| v * 0.05).collect();
        let hw = HalfWeights::new(&w, k, n).expect("fits");
        let mut c = vec![0f32; m * n];
        // SAFETY: available() checked; c holds m rows of n.
        unsafe { product(c.as_mut_ptr(), &a, m, &hw, 0..panels(&hw)) };
        let round =
            |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| half_to_f32(to_half(x))).collect() };
        let (want, _) = reference(&a, &w, m, k, n);
        let (rounded, _) = reference(&round(&a), &round(&w), m, k, n);
        let got_err: Vec<f64> = c
            .iter()
            .zip(&want)
            .map(|(&g, e)| f64::from(g) - e)
            .collect();
        let input_err: Vec<f64> = rounded.iter().zip(&want).map(|(r, e)| r - e).collect();
        let (g, i) = (rms(&got_err), rms(&input_err));
        assert!(
            g <= 4.0 * i,
            "kernel rms error {g:e}, inputs' rounding alone {i:e}"
        );
    }

    /// One large feature in every row leaves the error of the product where it is without
    /// it (before the split, a feature of 100 raised it 20-fold).
    #[test]
    fn an_outlier_feature_does_not_raise_the_error() {
        if without_fp16() {
            return;
        }
        let (k, n) = (768, 256);
        let w: Vec<f32> = values(k * n, 21).iter().map(|v| v * 0.05).collect();
        let hw = HalfWeights::new(&w, k, n).expect("fits");
        let error = |outlier: f32| {
            let mut a: Vec<f32> = values(12 * k, 22).iter().map(|v| v * 0.5).collect();
            for row in a.chunks_mut(k) {
                row[77] = outlier;
            }
            let mut c = vec![0f32; 12 * n];
            // SAFETY: available() checked; c holds 12 rows of n.
            unsafe { product(c.as_mut_ptr(), &a, 12, &hw, 0..panels(&hw)) };
            let (want, _) = reference(&a, &w, 12, k, n);
            let err: Vec<f64> = c
                .iter()
                .zip(&want)
                .map(|(&g, e)| f64::from(g) - e)
                .collect();
            rms(&err) / rms(&want)
        };
        let (plain, spiked) = (error(0.0), error(100.0));
        assert!(
            spiked <= 2.0 * plain,
            "error {spiked:e} with the outlier, {plain:e} without"
        );
    }

    #[test]
    fn a_row_gets_the_same_bits_in_any_batch() {
        if without_fp16() {
            return;
        }
        let (k, n) = (128, 128);
        let mut a = values(25 * k, 5);
        a[11 * k + 5] = 80.0;
        let w = values(k * n, 6);
        let hw = HalfWeights::new(&w, k, n).expect("fits");
        let mut all = vec![0f32; 25 * n];
        // SAFETY: available() checked; buffers hold the rows described.
        unsafe { product(all.as_mut_ptr(), &a, 25, &hw, 0..panels(&hw)) };
        for r in [0, 11, 12, 24] {
            let mut one = vec![0f32; n];
            // SAFETY: as above, one row.
            unsafe { product(one.as_mut_ptr(), &a[r * k..(r + 1) * k], 1, &hw, 0..1) };
            unsafe { product(one.as_mut_ptr(), &a[r * k..(r + 1) * k], 1, &hw, 1..4) };
            assert_eq!(&one[..], &all[r * n..(r + 1) * n], "row {r}");
        }
    }

    #[test]
    fn shapes_the_kernel_cannot_take_stay_f32() {
        assert!(HalfWeights::new(&vec![0.0; 96 * 64], 96, 64).is_none());
        assert!(HalfWeights::new(&vec![0.0; 64 * 48], 64, 48).is_none());
        assert_eq!(
            HalfWeights::new(&vec![0.0; 64 * 32], 64, 32).is_some(),
            available()
        );
    }
}
