//! The micro-kernels: register-blocked products of a few rows of A with 16-column panels of B,
//! one copy per instruction set (6 x 16 AVX2+FMA, 12 x 32 AVX-512F), and the key transpose
//! attention feeds them with.

use super::simd::{simd_ok, Simd, MR, MR512, NR};

/// One call of `simd`'s micro-kernel: `c[rows, 16 * panels] (+)= a[rows, kc] · b[kc, 16 *
/// panels]`, panel `p` of `b` at `b + p * panel_stride`; `rows` and `panels` at most
/// `simd.tile_rows()` and `simd.tile_panels()`.
///
/// # Safety
/// As the kernels: the addresses readable / writable as described, `simd` not `None` and
/// supported by this CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu::test_values as values;

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
}
