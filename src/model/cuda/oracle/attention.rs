//! Varlen attention over a fused QKV buffer, and the T5 / MPNet relative position buckets.

use rayon::prelude::*;

/// Which keys a query may see, as maximum distances: key `j` is allowed for query `i` iff
/// `i - j <= left` and `j - i <= right` (`None` = unbounded). Bidirectional attention is
/// `FULL`, causal is `CAUSAL` (`right = 0`); a sliding window of `w` tokens each side is
/// `(Some(w), Some(w))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    pub left: Option<usize>,
    pub right: Option<usize>,
}

impl Window {
    pub const FULL: Window = Window {
        left: None,
        right: None,
    };
    pub const CAUSAL: Window = Window {
        left: None,
        right: Some(0),
    };

    pub fn allows(&self, i: usize, j: usize) -> bool {
        let left_ok = self.left.is_none_or(|l| j + l >= i);
        let right_ok = self.right.is_none_or(|r| j <= i + r);
        left_ok && right_ok
    }
}

/// Shape and semantics of one attention call.
///
/// The QKV buffer is `[T, (n_q_heads + 2 n_kv_heads) * head_dim]`: the query heads, then the
/// key heads, then the value heads; query head `h` reads kv head `h / (n_q_heads / n_kv_heads)`.
/// The output is `[T, n_q_heads * head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionConfig {
    pub n_q_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies `<q, k>` (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
    pub window: Window,
}

impl AttentionConfig {
    pub fn qkv_width(&self) -> usize {
        (self.n_q_heads + 2 * self.n_kv_heads) * self.head_dim
    }

    pub fn out_width(&self) -> usize {
        self.n_q_heads * self.head_dim
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.n_q_heads == 0 || self.n_kv_heads == 0 || self.head_dim == 0 {
            return Err(format!("attention with zero heads or head_dim: {self:?}"));
        }
        if !self.n_q_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "n_q_heads {} is not a multiple of n_kv_heads {}",
                self.n_q_heads, self.n_kv_heads
            ));
        }
        if !self.scale.is_finite() {
            return Err(format!("attention scale {} is not finite", self.scale));
        }
        Ok(())
    }
}

/// A relative position bias expanded per distance: `table[h * (2R + 1) + (j - i) + R]` for
/// `|j - i| <= R`; larger distances use the entry at `±R` (see [`expand_relative_bias`]).
#[derive(Debug, Clone, Copy)]
pub struct RelBias<'a> {
    pub table: &'a [f32],
    pub max_distance: usize,
}

impl RelBias<'_> {
    pub fn at(&self, h: usize, rel: i64) -> f32 {
        let r = self.max_distance as i64;
        let idx = rel.clamp(-r, r) + r;
        self.table[h * (2 * self.max_distance + 1) + idx as usize]
    }
}

/// T5's bidirectional relative position bucket, as MPNet computes it (`relative_position_bucket`
/// in HF's modeling_mpnet.py), for `rel = key position - query position`. The log term is
/// evaluated in F32 like PyTorch does, so distances on a bucket boundary land in the same bucket.
pub fn t5_bucket(rel: i64, num_buckets: usize, max_distance: usize) -> usize {
    let nb = num_buckets / 2;
    let n = -rel;
    let mut ret = if n < 0 { nb } else { 0 };
    let n = n.unsigned_abs() as usize;
    let max_exact = nb / 2;
    if n < max_exact {
        ret += n;
    } else {
        let ratio = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
        let v = ((n as f32 / max_exact as f32).ln() / ratio * (nb - max_exact) as f32) as usize;
        ret += (max_exact + v).min(nb - 1);
    }
    ret
}

/// Expands a bucket table `[n_heads, num_buckets]` (head-major; MPNet's checkpoint stores
/// `relative_attention_bias.weight` as `[num_buckets, n_heads]`, so transpose it first) into the
/// per-distance table the attention kernels read: `[n_heads, 2 * max_distance + 1]`. Exact:
/// every distance of `max_distance` or more falls into the last bucket of its direction.
pub fn expand_relative_bias(
    table: &[f32],
    n_heads: usize,
    num_buckets: usize,
    max_distance: usize,
) -> Result<Vec<f32>, String> {
    if table.len() != n_heads * num_buckets {
        return Err(format!(
            "relative bias table has {} values, expected {n_heads} heads x {num_buckets} buckets",
            table.len()
        ));
    }
    if num_buckets < 4 || max_distance < num_buckets / 4 || max_distance == 0 {
        return Err(format!(
            "unsupported relative bias parameters: num_buckets {num_buckets}, max_distance {max_distance}"
        ));
    }
    let w = 2 * max_distance + 1;
    let mut out = vec![0f32; n_heads * w];
    for h in 0..n_heads {
        for k in 0..w {
            let rel = k as i64 - max_distance as i64;
            out[h * w + k] = table[h * num_buckets + t5_bucket(rel, num_buckets, max_distance)];
        }
    }
    Ok(out)
}

/// Softmax attention for every packed row, F64 math. `qkv` is `[T, cfg.qkv_width()]`.
pub fn attention(
    qkv: &[f32],
    cu_seqlens: &[u32],
    cfg: &AttentionConfig,
    bias: Option<RelBias<'_>>,
) -> Vec<f32> {
    let (hq, hkv, d) = (cfg.n_q_heads, cfg.n_kv_heads, cfg.head_dim);
    let stride = cfg.qkv_width();
    let total = *cu_seqlens.last().unwrap_or(&0) as usize;
    let group = hq / hkv;
    let mut out = vec![0f32; total * hq * d];
    out.par_chunks_mut(hq * d)
        .enumerate()
        .for_each(|(t, orow)| {
            let s = super::seq_of_row(cu_seqlens, t);
            let start = cu_seqlens[s] as usize;
            let len = cu_seqlens[s + 1] as usize - start;
            let i = t - start;
            let keys: Vec<usize> = (0..len).filter(|&j| cfg.window.allows(i, j)).collect();
            let mut scores = vec![0f64; keys.len()];
            for h in 0..hq {
                let kvh = h / group;
                let q = &qkv[t * stride + h * d..][..d];
                for (sc, &j) in scores.iter_mut().zip(&keys) {
                    let k = &qkv[(start + j) * stride + (hq + kvh) * d..][..d];
                    let dot: f64 = q
                        .iter()
                        .zip(k)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum();
                    *sc = f64::from(cfg.scale) * dot;
                    if let Some(b) = &bias {
                        *sc += f64::from(b.at(h, j as i64 - i as i64));
                    }
                }
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut acc = vec![0f64; d];
                let mut l = 0f64;
                for (&sc, &j) in scores.iter().zip(&keys) {
                    let p = (sc - m).exp();
                    l += p;
                    let v = &qkv[(start + j) * stride + (hq + hkv + kvh) * d..][..d];
                    for (a, &x) in acc.iter_mut().zip(v) {
                        *a += p * f64::from(x);
                    }
                }
                for (o, a) in orow[h * d..(h + 1) * d].iter_mut().zip(&acc) {
                    *o = if l > 0.0 { (a / l) as f32 } else { 0.0 };
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::super::{cu_from_lengths, Dt, TestRng};
    use super::*;

    /// Textbook attention per sequence and head: the full L x L score matrix with -inf for
    /// masked pairs, softmax by rows, then P V.
    fn naive(
        qkv: &[f32],
        lens: &[usize],
        cfg: &AttentionConfig,
        bias: Option<RelBias<'_>>,
    ) -> Vec<f32> {
        let (hq, hkv, d) = (cfg.n_q_heads, cfg.n_kv_heads, cfg.head_dim);
        let stride = cfg.qkv_width();
        let total: usize = lens.iter().sum();
        let mut out = vec![0f32; total * hq * d];
        let mut start = 0;
        for &l in lens {
            for h in 0..hq {
                let kvh = h * hkv / hq;
                let q = |i: usize, e: usize| f64::from(qkv[(start + i) * stride + h * d + e]);
                let k =
                    |j: usize, e: usize| f64::from(qkv[(start + j) * stride + (hq + kvh) * d + e]);
                let v = |j: usize, e: usize| {
                    f64::from(qkv[(start + j) * stride + (hq + hkv + kvh) * d + e])
                };
                let mut s = vec![vec![f64::NEG_INFINITY; l]; l];
                for (i, row) in s.iter_mut().enumerate() {
                    for (j, x) in row.iter_mut().enumerate() {
                        let causal_ok = cfg
                            .window
                            .right
                            .is_none_or(|r| j as i64 - i as i64 <= r as i64);
                        let left_ok = cfg
                            .window
                            .left
                            .is_none_or(|w| i as i64 - j as i64 <= w as i64);
                        if causal_ok && left_ok {
                            *x = f64::from(cfg.scale)
                                * (0..d).map(|e| q(i, e) * k(j, e)).sum::<f64>();
                            if let Some(b) = &bias {
                                *x += f64::from(b.at(h, j as i64 - i as i64));
                            }
                        }
                    }
                }
                for (i, row) in s.iter().enumerate() {
                    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let p: Vec<f64> = row.iter().map(|&x| (x - m).exp()).collect();
                    let z: f64 = p.iter().sum();
                    for e in 0..d {
                        let o: f64 = (0..l).map(|j| p[j] * v(j, e)).sum::<f64>() / z;
                        out[(start + i) * hq * d + h * d + e] = o as f32;
                    }
                }
            }
            start += l;
        }
        out
    }

    fn check(lens: &[usize], cfg: AttentionConfig, with_bias: bool, seed: u64) {
        let mut rng = TestRng::new(seed);
        let total: usize = lens.iter().sum();
        let qkv = rng.vec(total * cfg.qkv_width(), 1.5, Dt::F16);
        let r = 6;
        let table: Vec<f32> = (0..cfg.n_q_heads * (2 * r + 1))
            .map(|_| rng.sym(1.0))
            .collect();
        let bias = with_bias.then_some(RelBias {
            table: &table,
            max_distance: r,
        });
        let cu = cu_from_lengths(lens);
        let got = attention(&qkv, &cu, &cfg, bias);
        let want = naive(&qkv, lens, &cfg, bias);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{cfg:?} bias={with_bias}: max error {worst}");
    }

    #[test]
    fn matches_textbook_attention() {
        let base = AttentionConfig {
            n_q_heads: 4,
            n_kv_heads: 4,
            head_dim: 8,
            scale: 0.35,
            window: Window::FULL,
        };
        let lens = [1, 7, 3, 12];
        check(&lens, base, false, 1);
        check(
            &lens,
            AttentionConfig {
                window: Window::CAUSAL,
                ..base
            },
            false,
            2,
        );
        check(
            &lens,
            AttentionConfig {
                n_kv_heads: 2,
                ..base
            },
            false,
            3,
        );
        check(
            &lens,
            AttentionConfig {
                n_kv_heads: 1,
                window: Window::CAUSAL,
                ..base
            },
            true,
            4,
        );
        let win = Window {
            left: Some(2),
            right: Some(3),
        };
        check(
            &lens,
            AttentionConfig {
                window: win,
                ..base
            },
            true,
            5,
        );
        let sliding_causal = Window {
            left: Some(4),
            right: Some(0),
        };
        check(
            &lens,
            AttentionConfig {
                window: sliding_causal,
                n_kv_heads: 2,
                ..base
            },
            false,
            6,
        );
        check(&[], base, false, 7);
    }

    #[test]
    fn one_token_attends_to_itself() {
        let cfg = AttentionConfig {
            n_q_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            scale: 1.0,
            window: Window::FULL,
        };
        let qkv: Vec<f32> = (0..cfg.qkv_width()).map(|x| x as f32).collect();
        let out = attention(&qkv, &[0, 1], &cfg, None);
        // Both query heads read the single value head (columns 12..16).
        assert_eq!(out, vec![12.0, 13.0, 14.0, 15.0, 12.0, 13.0, 14.0, 15.0]);
    }

    #[test]
    fn window_semantics() {
        assert!(
            Window::CAUSAL.allows(5, 5)
                && Window::CAUSAL.allows(5, 0)
                && !Window::CAUSAL.allows(5, 6)
        );
        let w = Window {
            left: Some(1),
            right: Some(2),
        };
        let allowed: Vec<usize> = (0..10).filter(|&j| w.allows(4, j)).collect();
        assert_eq!(allowed, vec![3, 4, 5, 6]);
    }

    /// MPNet's configuration: 32 buckets, max distance 128, computed by hand from
    /// bucket = 8 + floor(ln(n / 8) / ln(16) * 8) for n = |i - j| >= 8, + 16 when the key
    /// comes after the query.
    #[test]
    fn t5_buckets_match_a_hand_computed_table() {
        let table: [(i64, usize); 22] = [
            (0, 0),
            (-1, 1),
            (-7, 7),
            (-8, 8),
            (-11, 8),
            (-12, 9),
            (-16, 10),
            (-22, 10),
            (-23, 11),
            (-32, 12),
            (-45, 12),
            (-46, 13),
            (-90, 14),
            (-91, 15),
            (-127, 15),
            (-128, 15),
            (-1000, 15),
            (1, 17),
            (7, 23),
            (12, 25),
            (46, 29),
            (500, 31),
        ];
        for (rel, want) in table {
            assert_eq!(t5_bucket(rel, 32, 128), want, "rel {rel}");
        }
    }

    #[test]
    fn expanded_bias_equals_the_bucket_lookup_at_every_distance() {
        let (h, nb, md) = (3, 32, 128);
        let table: Vec<f32> = (0..h * nb).map(|x| x as f32).collect();
        let exp = expand_relative_bias(&table, h, nb, md).unwrap();
        let rb = RelBias {
            table: &exp,
            max_distance: md,
        };
        for head in 0..h {
            for rel in -600i64..600 {
                assert_eq!(
                    rb.at(head, rel),
                    table[head * nb + t5_bucket(rel, nb, md)],
                    "rel {rel}"
                );
            }
        }
        assert!(expand_relative_bias(&table[1..], h, nb, md).is_err());
    }
}
