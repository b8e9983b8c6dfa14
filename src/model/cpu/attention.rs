//! Self-attention on the CPU over packed tokens: every (sequence, head) pair is a task, Q, K
//! and V are read in place from the fused QKV rows through strides (no gathers, no padding, no
//! mask tensor), and the queries go in blocks so no `len x len` score matrix ever exists.
//!
//! - Scores `[block, keys]` come from the SIMD micro-kernel with the keys transposed into
//!   16-key panels (head dims that are multiples of 16), else from the `gemm` crate.
//! - The softmax is unnormalised (`exp(s - max)`); each output row is divided by its sum after
//!   the product with V (d values a row instead of the probabilities' `keys`).
//! - Masks (causal, sliding windows) bound the keys each block reads; keys outside a row's
//!   window score -inf. A relative position bias (MPNet) is added to the scaled scores.
//! - Grouped-query attention: query head `h` reads key/value head `h / (heads / kv_heads)`.
//!
//! A short sequence is one block, so BERT-length inputs run exactly as before the blocking.

use rayon::prelude::*;

use super::elementwise as ew;
use super::microkernel;
use super::simd::Simd;
use crate::model::layers::{Buckets, Mask};

/// Queries per block once a sequence is longer than [`WHOLE`] (or masked, or biased).
const BLOCK: usize = 64;
/// Unmasked sequences up to this many tokens are one block.
const WHOLE: usize = 512;

/// The shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub mask: Mask,
}

impl Shape {
    fn qkv_ld(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// A relative position bias: `[buckets, heads]`.
pub struct Bias<'a> {
    pub table: &'a [f32],
    pub buckets: Buckets,
}

/// Raw pointer that may cross threads: each task writes its own rows and columns.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: tasks write disjoint regions; see `attention`.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// A method call (not `.0`) so closures capture the whole Send wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// `ctx[T, heads * d]` = attention of every sequence (`offsets`) over `qkv[T, qkv_ld]`.
pub fn attention(
    simd: Simd,
    qkv: &[f32],
    ctx: &mut [f32],
    offsets: &[usize],
    shape: Shape,
    bias: Option<&Bias<'_>>,
) {
    attention_in_blocks(simd, qkv, ctx, offsets, shape, bias, BLOCK);
}

/// [`attention`] with `block` queries per block (a parameter so tests can show the result
/// does not depend on it).
#[doc(hidden)]
pub fn attention_in_blocks(
    simd: Simd,
    qkv: &[f32],
    ctx: &mut [f32],
    offsets: &[usize],
    shape: Shape,
    bias: Option<&Bias<'_>>,
    block: usize,
) {
    assert!(block > 0, "query block");
    assert!(
        shape.kv_heads > 0 && shape.heads.is_multiple_of(shape.kv_heads),
        "heads must be a multiple of kv_heads"
    );
    let tokens = offsets.last().copied().unwrap_or(0);
    assert!(qkv.len() >= tokens * shape.qkv_ld(), "qkv size");
    assert!(
        ctx.len() >= tokens * shape.heads * shape.head_dim,
        "ctx size"
    );
    let ctx_ptr = SharedMut(ctx.as_mut_ptr());
    let tasks: Vec<(usize, usize)> = (0..offsets.len().saturating_sub(1))
        .flat_map(|s| (0..shape.heads).map(move |h| (s, h)))
        .collect();
    tasks.par_iter().for_each(|&(s, h)| {
        let (start, len) = (offsets[s], offsets[s + 1] - offsets[s]);
        if len == 0 {
            return;
        }
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            // SAFETY: this task alone writes rows start..start+len, columns h*d..(h+1)*d of
            // ctx, and `qkv` holds this sequence's rows (checked above).
            unsafe {
                head(
                    simd,
                    qkv,
                    start,
                    len,
                    h,
                    shape,
                    bias,
                    block,
                    &mut scratch,
                    ctx_ptr.get(),
                )
            };
        });
    });
}

/// One sequence and head, block by block of queries.
///
/// # Safety
/// `ctx` must be writable for rows `start..start+len` (stride `heads * d`) in this head's
/// columns, untouched by anyone else meanwhile; `qkv` must hold those rows.
#[allow(clippy::too_many_arguments)]
unsafe fn head(
    simd: Simd,
    qkv: &[f32],
    start: usize,
    len: usize,
    h: usize,
    shape: Shape,
    bias: Option<&Bias<'_>>,
    block: usize,
    scratch: &mut Vec<f32>,
    ctx: *mut f32,
) {
    let d = shape.head_dim;
    let ld = shape.qkv_ld();
    let out_ld = shape.heads * d;
    let g = h / (shape.heads / shape.kv_heads);
    let q = qkv[start * ld + h * d..].as_ptr();
    let k = qkv[start * ld + (shape.heads + g) * d..].as_ptr();
    let v = qkv[start * ld + (shape.heads + shape.kv_heads + g) * d..].as_ptr();
    // SAFETY: the caller's.
    let out = unsafe { ctx.add(start * out_ld + h * d) };
    let simple = shape.mask.is_full() && bias.is_none();
    let block = if simple && len <= WHOLE { len } else { block };
    // The bias of every relative distance in this sequence, for this head: index rel + len - 1.
    let rel_bias: Vec<f32> = match bias {
        Some(b) => (0..2 * len - 1)
            .map(|i| {
                let rel = i as i64 - (len as i64 - 1);
                b.table[b.buckets.bucket(rel) * shape.heads + h]
            })
            .collect(),
        None => Vec::new(),
    };
    // The SIMD path needs whole 16-column panels for P·V (d) and 8-feature groups for K.
    let fast = simd != Simd::None && d.is_multiple_of(16);
    for i0 in (0..len).step_by(block) {
        let i1 = (i0 + block).min(len);
        let bq = i1 - i0;
        let (lo0, _) = shape.mask.keys(i0, len);
        let (_, hi1) = shape.mask.keys(i1 - 1, len);
        // Panels start on 16-key boundaries; keys before a row's window score -inf.
        let klo = if fast { lo0 / 16 * 16 } else { lo0 };
        let kn = hi1 - klo;
        let ldk = kn.next_multiple_of(16);
        let buf = take(scratch, bq * ldk + d * ldk + bq);
        let (scores, rest) = buf.split_at_mut(bq * ldk);
        let (kt, sums) = rest.split_at_mut(d * ldk);
        // SAFETY (whole block): q rows i0..i1, k and v rows klo..hi1 lie inside this
        // sequence's rows of qkv at stride ld; scores holds bq rows of ldk, kt d * ldk values.
        unsafe {
            let qb = q.add(i0 * ld);
            let kb = k.add(klo * ld);
            let vb = v.add(klo * ld);
            let packed = fast && microkernel::pack_key_panels(kt.as_mut_ptr(), kb, ld, kn, d);
            if packed {
                microkernel::small_product(
                    simd,
                    scores.as_mut_ptr(),
                    ldk,
                    qb,
                    ld,
                    bq,
                    d,
                    kt.as_ptr(),
                    16,
                    d * 16,
                    ldk / 16,
                );
            } else {
                // scores = q · kᵀ (k read with its strides swapped).
                product(bq, kn, d, scores.as_mut_ptr(), ldk, qb, ld, kb, 1, ld);
            }
            if simple {
                ew::scaled_exp_rows(scores, kn, ldk, shape.scale, sums);
            } else {
                for r in 0..bq {
                    let i = i0 + r;
                    let (lo, hi) = shape.mask.keys(i, len);
                    let row = &mut scores[r * ldk..r * ldk + kn];
                    // Keys outside lo..hi score -inf; inside, one contiguous pass (the bias
                    // of key `key` is at key + len - 1 - i), which vectorises: per score
                    // with the mask test inside, it was 4 % of an all-mpnet-base-v2 run.
                    let (a, b) = (lo.max(klo) - klo, hi.max(klo) - klo);
                    row[..a].fill(f32::NEG_INFINITY);
                    row[b..].fill(f32::NEG_INFINITY);
                    let inside = &mut row[a..b];
                    if rel_bias.is_empty() {
                        inside.iter_mut().for_each(|s| *s *= shape.scale);
                    } else {
                        let from = klo + a + len - 1 - i;
                        for (s, bias) in inside.iter_mut().zip(&rel_bias[from..]) {
                            *s = *s * shape.scale + bias;
                        }
                    }
                }
                ew::scaled_exp_rows(scores, kn, ldk, 1.0, sums);
            }
            let ob = out.add(i0 * out_ld);
            if packed {
                microkernel::small_product(
                    simd,
                    ob,
                    out_ld,
                    scores.as_ptr(),
                    ldk,
                    bq,
                    kn,
                    vb,
                    ld,
                    16,
                    d / 16,
                );
            } else {
                product(bq, d, kn, ob, out_ld, scores.as_ptr(), ldk, vb, ld, 1);
            }
            for (r, sum) in sums.iter().enumerate() {
                let row = std::slice::from_raw_parts_mut(ob.add(r * out_ld), d);
                ew::scale(row, 1.0 / sum);
            }
        }
    }
}

/// `c[m, n] = a[m, k] · b[k, n]` through the `gemm` crate, one thread: rows of `a` and `c` at
/// strides `lda`, `ldc`; element (kk, j) of `b` at `b[kk * b_row + j * b_col]`.
///
/// # Safety
/// Every address so described must be valid (`c` writable, untouched by others meanwhile).
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    b_row: usize,
    b_col: usize,
) {
    // SAFETY: the caller's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            false,
            a,
            1,
            lda as isize,
            b,
            b_col as isize,
            b_row as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu::test_values as values;

    /// softmax(scale · q·kᵀ + bias, masked) · v in f64, one sequence and head at a time.
    fn reference(qkv: &[f32], offsets: &[usize], s: Shape, bias: Option<&Bias<'_>>) -> Vec<f64> {
        let (d, ld) = (s.head_dim, s.qkv_ld());
        let tokens = *offsets.last().unwrap();
        let mut out = vec![0f64; tokens * s.heads * d];
        for w in offsets.windows(2) {
            let (start, len) = (w[0], w[1] - w[0]);
            for h in 0..s.heads {
                let g = h / (s.heads / s.kv_heads);
                for i in 0..len {
                    let (lo, hi) = s.mask.keys(i, len);
                    let q = &qkv[(start + i) * ld + h * d..][..d];
                    let mut scores = Vec::new();
                    for j in lo..hi {
                        let k = &qkv[(start + j) * ld + (s.heads + g) * d..][..d];
                        let dot: f64 = q
                            .iter()
                            .zip(k)
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum();
                        let b = bias.map_or(0.0, |b| {
                            f64::from(b.table[b.buckets.bucket(j as i64 - i as i64) * s.heads + h])
                        });
                        scores.push(dot * f64::from(s.scale) + b);
                    }
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for (jj, j) in (lo..hi).enumerate() {
                        let v = &qkv[(start + j) * ld + (s.heads + s.kv_heads + g) * d..][..d];
                        for f in 0..d {
                            out[(start + i) * s.heads * d + h * d + f] +=
                                e[jj] / sum * f64::from(v[f]);
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_mask_grouping_and_bias_matches_f64() {
        let table = values(32 * 4, 9);
        let bias = Bias {
            table: &table,
            buckets: Buckets {
                num_buckets: 32,
                max_distance: 128,
            },
        };
        // (heads, kv_heads, d, mask, lengths, biased)
        let cases: Vec<(usize, usize, usize, Mask, Vec<usize>, bool)> = vec![
            (4, 4, 32, Mask::FULL, vec![1, 7, 64, 3], false),
            (4, 4, 8, Mask::FULL, vec![5, 33], false),
            (4, 2, 16, Mask::causal(None), vec![9, 70, 1], false),
            (8, 1, 16, Mask::causal(Some(5)), vec![40], false),
            (4, 4, 32, Mask::window(6), vec![100, 2], false),
            (4, 4, 8, Mask::window(3), vec![30], false),
            (4, 4, 16, Mask::FULL, vec![600], false),
            (4, 4, 32, Mask::FULL, vec![20, 150], true),
            (4, 4, 8, Mask::FULL, vec![12], true),
        ];
        for (heads, kv_heads, d, mask, lens, biased) in cases {
            let shape = Shape {
                heads,
                kv_heads,
                head_dim: d,
                scale: 1.0 / (d as f32).sqrt(),
                mask,
            };
            let mut offsets = vec![0];
            for l in &lens {
                offsets.push(offsets.last().unwrap() + l);
            }
            let tokens = *offsets.last().unwrap();
            let qkv = values(tokens * shape.qkv_ld(), 3);
            let b = biased.then_some(&bias);
            let want = reference(&qkv, &offsets, shape, b);
            for simd in Simd::available() {
                // The default block, and an odd one that splits the 16-key panels.
                for block in [BLOCK, 7] {
                    let mut ctx = vec![f32::NAN; tokens * heads * d];
                    attention_in_blocks(simd, &qkv, &mut ctx, &offsets, shape, b, block);
                    for (i, (g, w)) in ctx.iter().zip(&want).enumerate() {
                        assert!(
                            (f64::from(*g) - w).abs() < 2e-5,
                            "{simd:?} {shape:?} {lens:?} bias {biased} block {block}: \
                             element {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
