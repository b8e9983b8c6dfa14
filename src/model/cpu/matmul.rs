//! Dense layers on the CPU: `C = epilogue(A · W)` with `W` packed once at load time
//! (`packed.rs`) and the bias / activation / residual / norm applied to each block of rows
//! while it is still in cache.
//!
//! Why not a general GEMM library call per layer: a library packs `W` again on every call (for a
//! short query that packing costs more than the arithmetic), and its output then needs separate
//! passes over memory for bias, GELU, residual and layer norm. Here:
//! - a micro-kernel (`microkernel.rs`) does the arithmetic: 12 x 32 with AVX-512F, else 6 x 16
//!   with AVX2+FMA, on the same packed panels; AMX tiles (`amx.rs`) where the CPU has them;
//!   FP16 panels (`half.rs`) for `--dtype float16` on CPUs with AVX512-FP16;
//! - rows are processed in blocks of `MC`; each block gets its whole epilogue right after its
//!   product, while it is in L2;
//! - blocks run in parallel on rayon's threads (columns are split too when there are few rows).
//!
//! CPUs without AVX2+FMA, and widths not a multiple of 16, use the `gemm` crate and separate
//! epilogue passes: slower, same results.

use rayon::prelude::*;

use super::amx;
use super::elementwise::{self as ew, Pointwise};
use super::half;
use super::microkernel::tile;
use super::packed::{PackedWeights, KC};
use super::simd::{Simd, MR512, NR};
use crate::model::layers::NormKind;

const MC: usize = 72;
/// Rows per AMX task: four 32-row strips pass over each L2-sized group of W's columns.
const MC_AMX: usize = 128;
/// Rows per FP16 task: twelve 12-row strips.
const MC_HALF: usize = 144;

/// A norm applied row by row in an epilogue.
#[derive(Clone, Copy)]
pub struct RowNorm<'a> {
    pub kind: NormKind,
    pub weight: &'a [f32],
    /// Empty: no bias.
    pub bias: &'a [f32],
}

impl RowNorm<'_> {
    pub fn apply(&self, rows: &mut [f32]) {
        match self.kind {
            NormKind::Layer { eps } => ew::layer_norm_rows(rows, self.weight, self.bias, eps),
            NormKind::Rms { eps, offset } => ew::rms_norm_rows(rows, self.weight, eps, offset),
        }
    }
}

/// What happens to each output row after the product: `+ bias`, the activation, then the
/// residual and the norm in the family's order.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    /// Empty: no bias.
    pub bias: &'a [f32],
    pub activation: Pointwise,
    /// `[m, n]`, the transformer's skip connection.
    pub residual: Option<&'a [f32]>,
    pub norm: Option<RowNorm<'a>>,
    /// `residual + norm(y)` (Gemma) instead of `norm(y + residual)` (BERT).
    pub norm_first: bool,
}

impl<'a> Epilogue<'a> {
    /// Bias only; the other steps are added with struct update syntax.
    pub fn bias(bias: &'a [f32]) -> Self {
        Self {
            bias,
            activation: Pointwise::None,
            residual: None,
            norm: None,
            norm_first: false,
        }
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
    assert!(epi.bias.is_empty() || epi.bias.len() == n, "bias width");
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
    if w.packed.is_empty() && w.amx.is_none() && w.half.is_none() {
        fallback(c, a, m, w);
        row_blocks(c, m, n, threads, MR512, MC)
            .into_par_iter()
            .for_each(|(r0, rows)| {
                epilogue(rows, r0, n, &epi);
            });
        return;
    }
    if let Some(half) = &w.half {
        // SAFETY: FP16 panels are only made where half::available(); each call writes the
        // rows and panels it is given.
        let run = |c: *mut f32, a: &[f32], rows: usize, panels: std::ops::Range<usize>| unsafe {
            half::product(c, a, rows, half, panels)
        };
        by_strips(
            c,
            a,
            m,
            k,
            n,
            threads,
            &epi,
            half::ROWS,
            MC_HALF,
            half::panels(half),
            run,
        );
        return;
    }
    if let (Simd::Amx, Some(tiles)) = (simd, &w.amx) {
        // SAFETY: Simd::Amx is only detected with AMX granted; each call writes the rows and
        // column pairs it is given.
        let run = |c: *mut f32, a: &[f32], rows: usize, pairs: std::ops::Range<usize>| unsafe {
            amx::product(c, a, rows, tiles, pairs)
        };
        by_strips(
            c,
            a,
            m,
            k,
            n,
            threads,
            &epi,
            amx::TILE,
            MC_AMX,
            amx::pairs(tiles),
            run,
        );
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

/// Runs a kernel that takes whole strips of `tile` rows and column units (`units` of them,
/// AMX pairs or FP16 panels) for every batch size, so a text gets the same vector alone or in
/// any batch: many rows go in blocks of `max` rows per task, each block's epilogue right
/// after; few rows split the column units across threads, then the epilogue.
#[allow(clippy::too_many_arguments)]
fn by_strips(
    c: &mut [f32],
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    threads: usize,
    epi: &Epilogue<'_>,
    tile: usize,
    max: usize,
    units: usize,
    run: impl Fn(*mut f32, &[f32], usize, std::ops::Range<usize>) + Sync,
) {
    if m.div_ceil(max) >= 2 * threads || threads == 1 {
        row_blocks(c, m, n, threads, tile, max)
            .into_par_iter()
            .for_each(|(r0, rows)| {
                let mr = rows.len() / n;
                run(rows.as_mut_ptr(), &a[r0 * k..], mr, 0..units);
                epilogue(rows, r0, n, epi);
            });
    } else {
        let (per, cptr) = (units.div_ceil(threads), SendPtr(c.as_mut_ptr()));
        (0..threads).into_par_iter().for_each(|t| {
            let range = (t * per).min(units)..((t + 1) * per).min(units);
            if !range.is_empty() {
                // Each task writes only its own column units.
                run(cptr.get(), a, m, range);
            }
        });
        row_blocks(c, m, n, threads, MR512, MC)
            .into_par_iter()
            .for_each(|(r0, rows)| {
                epilogue(rows, r0, n, epi);
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
    match (epi.activation, residual, epi.norm_first) {
        // Post-norm encoders: bias and residual in one pass, then the norm.
        (Pointwise::None, Some(r), false) => ew::add_bias_residual(rows, epi.bias, r),
        (act, r, norm_first) => {
            if act != Pointwise::None || !epi.bias.is_empty() {
                ew::bias_act(rows, epi.bias, act);
            }
            if let (Some(r), false) = (r, norm_first) {
                ew::add_bias_residual(rows, &[], r);
            }
            if norm_first {
                if let Some(norm) = &epi.norm {
                    norm.apply(rows);
                }
                if let Some(r) = r {
                    ew::add_bias_residual(rows, &[], r);
                }
                return;
            }
        }
    }
    if let Some(norm) = &epi.norm {
        norm.apply(rows);
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

    use crate::model::cpu::test_values as values;

    /// Each case with each kernel.
    fn every<T: Copy>(kernels: &[Simd], cases: &[T]) -> Vec<(Simd, T)> {
        kernels
            .iter()
            .flat_map(|&s| cases.iter().map(move |&c| (s, c)))
            .collect()
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
                    activation: Pointwise::Gelu,
                    ..Epilogue::bias(&bias)
                },
            );
            for i in 0..m * n {
                let v = want[i] + f64::from(bias[i % n]);
                let expect = 0.5 * v * (1.0 + ew::tests::libm_erf(v / std::f64::consts::SQRT_2));
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
                activation: Pointwise::Relu,
                norm: Some(RowNorm {
                    kind: NormKind::Layer { eps: 1e-5 },
                    weight: &gamma,
                    bias: &beta,
                }),
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
