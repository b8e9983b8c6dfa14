//! Dense products on Intel AMX tiles (Sapphire Rapids and later) at F32 accuracy.
//!
//! AMX multiplies BF16 (8-bit mantissa) into F32 accumulators. One BF16 product would cost the
//! model three decimal digits, so each F32 value `x` is split in two BF16s: `hi` (x rounded to
//! BF16) and `lo` (x - hi, rounded), which together carry 17 of its 24 mantissa bits.
//! `a·b ≈ hi_a·hi_b + hi_a·lo_b + lo_a·hi_b`: the dropped `lo_a·lo_b` and the rounding of `lo`
//! are ~2^-18 relative, so three tile products give what the F32 kernel gives to a few 1e-6 of
//! Σ|a·b| (the tests bound it at 1e-5; over 2,048 corpus texts the embeddings kept a cosine of
//! at least 0.9999999998 to the AVX-512 kernel's).
//!
//! Why: three BF16 tile products still outrun one F32 FMA pass. On the 2-core Sapphire Rapids
//! VM, `spotinfer batch` over 2,048 corpus lines, same binary, alternating with
//! `--cpu-kernel avx512`: 161.6 / 160.4 / 143.5 / 141.9 / 143.3 against 98.2 / 123.9 / 99.1 /
//! 106.9 / 106.9 sentences/s.
//!
//! Layout: a "strip" is 32 rows of A, a "pair" 32 columns of W; a 2 x 2 block of 16 x 16 tiles
//! accumulates a strip times a pair over the whole depth `k` in tiles 0-3 (C stays in the tiles,
//! no reload), tiles 4-5 hold A's two 16-row halves and 6-7 W's two 16-column halves, 32 deep.
//! W is split and laid out once at load; A is split per call into a per-thread buffer.

use std::cell::RefCell;

/// Rows of a strip, columns of a pair, and the depth of one tile step.
pub const TILE: usize = 32;

/// Bytes of W one column group may take: the group's pairs stay in L2 while every strip of a
/// row block passes over them. `spotinfer batch` over 2,048 corpus lines, three alternating
/// rounds: 512 KiB 154.7 / 187.6 / 192.7 sentences/s, 256 KiB 208.8 / 201.6 / 202.3; 128 KiB
/// (179.1 / 183.3 / 178.2 beside 165.6 / 171.1 / 195.3 for 256) and 256-row blocks showed no
/// consistent difference.
const GROUP_BYTES: usize = 256 * 1024;

/// A weight matrix `[k, n]` split into BF16 `hi` / `lo` parts in AMX's B layout: for each
/// 16-column panel, `k / 2` rows of 16 column-pairs `(w[2r][j], w[2r+1][j])`.
pub struct AmxWeights {
    k: usize,
    n: usize,
    hi: Vec<u16>,
    lo: Vec<u16>,
}

impl AmxWeights {
    /// From `w` row-major `[k, n]`; None where AMX is missing or `k`, `n` are not multiples
    /// of 32.
    pub fn new(w: &[f32], k: usize, n: usize) -> Option<Self> {
        if !available() || !k.is_multiple_of(TILE) || !n.is_multiple_of(TILE) {
            return None;
        }
        let mut hi = vec![0u16; k * n];
        let mut lo = vec![0u16; k * n];
        for p in 0..n / 16 {
            for kk in 0..k {
                for j in 0..16 {
                    let (h, l) = split(w[kk * n + p * 16 + j]);
                    let at = p * k * 16 + (kk / 2) * 32 + j * 2 + kk % 2;
                    hi[at] = h;
                    lo[at] = l;
                }
            }
        }
        Some(Self { k, n, hi, lo })
    }

    pub fn bytes(&self) -> usize {
        (self.hi.len() + self.lo.len()) * 2
    }
}

/// `x ≈ hi + lo` as BF16 bit patterns, both rounded to nearest: truncation biases every term
/// toward zero (this module's test: worst error 2.0e-5 of Σ|terms| truncated, 3.1e-6 rounded).
fn split(x: f32) -> (u16, u16) {
    let hi = bf16_bits(x);
    let lo = bf16_bits(x - f32::from_bits(hi));
    ((hi >> 16) as u16, (lo >> 16) as u16)
}

/// `x` rounded to the nearest BF16 (ties to even), as F32 bits with the low half zero.
fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000
}

/// Whether this CPU and kernel let us use AMX-BF16 (checked once: CPUID, then asking Linux
/// for the tile state, which it grants per process).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // SAFETY: CPUID exists on every x86_64 CPU (newer Rust marks it safe, hence the allow).
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
    if !(amx_bf16
        && amx_tile
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw"))
    {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments; it fails cleanly on kernels without AMX.
    let granted = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    granted == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

thread_local! {
    /// A's hi and lo parts for the block a thread is working on, reused between calls (a fresh
    /// allocation of this size per call would be fresh pages, i.e. page faults).
    static SPLIT_A: RefCell<(Vec<u16>, Vec<u16>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `c[rows, 32 * pairs] = a[rows, k] · w[:, 32 * pairs]`: the column pairs `pairs` of the
/// product (`a` row-major with stride `k`, `c` with stride `w.n`). Every row gets the same
/// arithmetic whatever else is in the batch or however the columns are split.
///
/// # Safety
/// `available()` must have returned true; `a` must hold `rows` rows; `c` must point to `rows`
/// rows of `w.n` floats whose columns in `pairs` no one else reads or writes meanwhile.
pub unsafe fn product(
    c: *mut f32,
    a: &[f32],
    rows: usize,
    w: &AmxWeights,
    pairs: std::ops::Range<usize>,
) {
    let (k, n) = (w.k, w.n);
    assert!(a.len() >= rows * k && pairs.end <= n / TILE, "buffer sizes");
    let strips = rows.div_ceil(TILE);
    SPLIT_A.with_borrow_mut(|(ah, al)| {
        let len = strips * TILE * k;
        ah.resize(len, 0);
        al.resize(len, 0);
        for r in 0..strips * TILE {
            let (h, l) = (&mut ah[r * k..(r + 1) * k], &mut al[r * k..(r + 1) * k]);
            if r < rows {
                split_row(&a[r * k..(r + 1) * k], h, l);
            } else {
                // Padding rows of the last strip: zeros, their results are never stored.
                h.fill(0);
                l.fill(0);
            }
        }
        let group = (GROUP_BYTES / (k * TILE * 4)).max(1);
        // SAFETY: the caller vouches for AMX and c; every other pointer stays inside ah / al
        // (strips * 32 rows of k) and w (n / 16 panels of k * 16); a short last strip goes
        // through the scratch tile.
        unsafe {
            load_tile_config();
            let mut scratch = Scratch([0.0; TILE * TILE]);
            for g0 in pairs.clone().step_by(group) {
                for s in 0..strips {
                    let r0 = s * TILE;
                    let (a_hi, a_lo) = (ah.as_ptr().add(r0 * k), al.as_ptr().add(r0 * k));
                    for p in g0..(g0 + group).min(pairs.end) {
                        let hi = w.hi.as_ptr().add(p * 2 * k * 16);
                        let lo = w.lo.as_ptr().add(p * 2 * k * 16);
                        let out = c.add(r0 * n + p * TILE);
                        if r0 + TILE <= rows {
                            strip_times_pair::<true>(k, a_hi, a_lo, hi, lo, out, n);
                        } else {
                            // A short last strip: half the tile products where 16 rows do (a
                            // short query); the same arithmetic per row either way.
                            let run = if rows - r0 <= TILE / 2 {
                                strip_times_pair::<false>
                            } else {
                                strip_times_pair::<true>
                            };
                            run(k, a_hi, a_lo, hi, lo, scratch.0.as_mut_ptr(), TILE);
                            for r in 0..rows - r0 {
                                std::ptr::copy_nonoverlapping(
                                    scratch.0.as_ptr().add(r * TILE),
                                    out.add(r * n),
                                    TILE,
                                );
                            }
                        }
                    }
                }
            }
            release_tiles();
        }
    });
}

/// Column pairs of `w` (32 columns each).
pub fn pairs(w: &AmxWeights) -> usize {
    w.n / TILE
}

/// One 32 x 32 result tile block, 64-byte aligned for the tile stores.
#[repr(C, align(64))]
struct Scratch([f32; TILE * TILE]);

/// `split` over a row, compiled for AVX-512 (16 values a step; AMX implies it): the baseline
/// SSE2 build of this loop took 6 % of a `spotinfer batch` profile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn split_row_avx512(x: &[f32], hi: &mut [u16], lo: &mut [u16]) {
    for ((x, h), l) in x.iter().zip(hi).zip(lo) {
        (*h, *l) = split(*x);
    }
}

fn split_row(x: &[f32], hi: &mut [u16], lo: &mut [u16]) {
    // SAFETY: only reached with AMX available, whose detection requires AVX-512F and BW.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        split_row_avx512(x, hi, lo)
    }
    #[cfg(not(target_arch = "x86_64"))]
    for ((x, h), l) in x.iter().zip(hi).zip(lo) {
        (*h, *l) = split(*x);
    }
}

#[cfg(target_arch = "x86_64")]
mod tiles {
    use super::TILE;
    use std::arch::asm;

    /// Palette 1, all eight tiles 16 rows x 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    const CONFIG: TileConfig = {
        let mut b = [0u8; 64];
        b[0] = 1;
        let mut t = 0;
        while t < 8 {
            b[16 + 2 * t] = 64;
            b[48 + t] = 16;
            t += 1;
        }
        TileConfig(b)
    };

    /// Tile state is per thread: each call configures its own.
    ///
    /// # Safety
    /// AMX must be available and granted.
    pub unsafe fn load_tile_config() {
        static CFG: TileConfig = CONFIG;
        // SAFETY: CFG is 64 readable bytes, 64-aligned; the caller vouches for AMX.
        unsafe { asm!("ldtilecfg [{}]", in(reg) CFG.0.as_ptr(), options(nostack, readonly)) };
    }

    /// Hands the tile state back so context switches stop saving 8 KB for this thread.
    ///
    /// # Safety
    /// AMX must be available and granted.
    pub unsafe fn release_tiles() {
        // SAFETY: the caller vouches for AMX.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    macro_rules! load {
        ($t:literal, $p:expr, $stride:expr) => {
            asm!(concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"), p = in(reg) $p, s = in(reg) $stride,
                 options(nostack, readonly))
        };
    }
    macro_rules! store {
        ($t:literal, $p:expr, $stride:expr) => {
            asm!(concat!("tilestored [{p} + {s}*1], tmm", $t), p = in(reg) $p, s = in(reg) $stride,
                 options(nostack))
        };
    }
    macro_rules! dot {
        ($c:literal, $a:literal, $b:literal) => {
            asm!(
                concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
                options(nostack, nomem)
            )
        };
    }

    /// `c[32, 32] = a[32, k] · w[k, 32]` from the split parts (`FULL`), or its first 16 rows
    /// only (half the tile products, for a short query; the same order of products per result
    /// either way): `a_hi` / `a_lo` are the rows at stride `k` BF16s, `w_hi` / `w_lo` two
    /// 16-column panels of `k * 16` BF16s one after the other, `c` the rows at stride `ldc`.
    ///
    /// # Safety
    /// The tile config is loaded; the addresses hold what is described.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strip_times_pair<const FULL: bool>(
        k: usize,
        a_hi: *const u16,
        a_lo: *const u16,
        w_hi: *const u16,
        w_lo: *const u16,
        c: *mut f32,
        ldc: usize,
    ) {
        let (sa, sw, sc) = (k * 2, 64usize, ldc * 4);
        let half_a = 16 * k;
        let panel = k * 16;
        // SAFETY: the caller's guarantee; every load reads 16 rows of 64 bytes inside it.
        unsafe {
            // Tiles 0-3 accumulate rows 0-15 / 16-31 x columns 0-15 / 16-31.
            macro_rules! dots {
                () => {
                    dot!(0, 4, 6);
                    dot!(1, 4, 7);
                    if FULL {
                        dot!(2, 5, 6);
                        dot!(3, 5, 7);
                    }
                };
            }
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            for s in (0..k).step_by(TILE) {
                // lo(a)·hi(w), then hi(a)·hi(w), then hi(a)·lo(w): 8 loads for 12 products.
                load!(4, a_lo.add(s), sa);
                if FULL {
                    load!(5, a_lo.add(half_a + s), sa);
                }
                load!(6, w_hi.add(s * 16), sw);
                load!(7, w_hi.add(panel + s * 16), sw);
                dots!();
                load!(4, a_hi.add(s), sa);
                if FULL {
                    load!(5, a_hi.add(half_a + s), sa);
                }
                dots!();
                load!(6, w_lo.add(s * 16), sw);
                load!(7, w_lo.add(panel + s * 16), sw);
                dots!();
            }
            store!(0, c, sc);
            store!(1, c.add(16), sc);
            if FULL {
                store!(2, c.add(16 * ldc), sc);
                store!(3, c.add(16 * ldc + 16), sc);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
use tiles::{load_tile_config, release_tiles, strip_times_pair};

#[cfg(not(target_arch = "x86_64"))]
unsafe fn load_tile_config() {
    unreachable!("AMX is only detected on x86_64")
}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn release_tiles() {}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn strip_times_pair<const FULL: bool>(
    _: usize,
    _: *const u16,
    _: *const u16,
    _: *const u16,
    _: *const u16,
    _: *mut f32,
    _: usize,
) {
    unreachable!("AMX is only detected on x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_parts_carry_seventeen_bits() {
        for &x in &[
            1.0f32,
            -2.718_281_7e3,
            1e-3,
            65_504.0,
            0.0,
            -0.0,
            1.234_567_9e-20,
        ] {
            let (h, l) = split(x);
            let back = f32::from_bits(u32::from(h) << 16) + f32::from_bits(u32::from(l) << 16);
            assert!((back - x).abs() <= x.abs() * 2f32.powi(-17), "{x}: {back}");
        }
    }

    /// Products at full and short strips, one and several column groups, against f64: the
    /// error stays within 1e-5 of the sum of |terms| (measured worst 3.1e-6).
    #[test]
    fn tile_products_match_f64_to_sixteen_bits() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 20_001) as f32 / 10_000.0 - 1.0
        };
        for &(m, k, n) in &[
            (32, 32, 32),
            (77, 96, 96),
            (45, 1536, 64),
            (130, 384, 1152),
            (9, 384, 96),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let Some(tiles) = AmxWeights::new(&w, k, n) else {
                assert!(!available(), "AMX present but {k} x {n} weights refused");
                return;
            };
            let mut c = vec![f32::NAN; m * n];
            // Two column ranges, as the short-batch path splits them between threads.
            let half = pairs(&tiles) / 2;
            for range in [0..half, half..pairs(&tiles)] {
                // SAFETY: AmxWeights exist only where AMX is granted; a and c hold m rows.
                unsafe { product(c.as_mut_ptr(), &a, m, &tiles, range) };
            }
            for i in 0..m {
                for j in 0..n {
                    let (mut exact, mut size) = (0f64, 0f64);
                    for kk in 0..k {
                        let t = f64::from(a[i * k + kk]) * f64::from(w[kk * n + j]);
                        exact += t;
                        size += t.abs();
                    }
                    let err = (f64::from(c[i * n + j]) - exact).abs();
                    assert!(
                        err <= 1e-5 * size,
                        "{m}x{k}x{n} at {i},{j}: {err} of {size}"
                    );
                }
            }
        }
    }

    /// A row's result does not depend on the rows around it: alone (a half strip), in a full
    /// strip, or in a short last strip, bit for bit.
    #[test]
    fn a_row_gets_the_same_bits_in_any_batch() {
        let (k, n) = (384, 64);
        let a: Vec<f32> = (0..70 * k)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104_729) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let Some(tiles) = AmxWeights::new(&w, k, n) else {
            assert!(!available());
            return;
        };
        let run = |rows: usize, first: usize| {
            let mut c = vec![0f32; rows * n];
            // SAFETY: AMX is granted (tiles exist); a holds rows rows from `first`.
            unsafe {
                product(
                    c.as_mut_ptr(),
                    &a[first * k..],
                    rows,
                    &tiles,
                    0..pairs(&tiles),
                )
            };
            c
        };
        let batch = run(70, 0);
        for (row, rows) in [(0, 1), (5, 3), (40, 20), (33, 37)] {
            let part = run(rows, row);
            assert_eq!(
                part[..n],
                batch[row * n..(row + 1) * n],
                "row {row} of {rows}"
            );
        }
    }

    #[test]
    fn weights_need_amx_and_whole_tiles() {
        let w = vec![0.5f32; 64 * 96];
        assert_eq!(AmxWeights::new(&w, 64, 96).is_some(), available());
        assert!(AmxWeights::new(&w[..48 * 96], 48, 96).is_none(), "k = 48");
        assert!(AmxWeights::new(&w[..64 * 80], 64, 80).is_none(), "n = 80");
    }
}
