//! Rotary position embedding (NeoX rotate-half or GPT-J interleaved), optionally after a
//! per-head RMSNorm of q and k.

/// Geometry of the q/k heads inside a fused QKV row, and the rotation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    pub n_q_heads: usize,
    pub n_k_heads: usize,
    pub head_dim: usize,
    /// Rotated leading dimensions of each head (even, <= head_dim; 0 = no rotation).
    pub rotary_dim: usize,
    /// GPT-J pairs (2i, 2i+1) instead of NeoX pairs (i, i + rotary_dim / 2).
    pub interleaved: bool,
    /// Multiplies cos and sin (YaRN's attention_factor; 1 otherwise).
    pub attention_scaling: f32,
}

/// Per-head RMSNorm weights for q and k (`[head_dim]` each).
#[derive(Debug, Clone, Copy)]
pub struct QkNormRef<'a> {
    pub q_weight: &'a [f32],
    pub k_weight: &'a [f32],
    pub eps: f32,
    pub unit_offset: bool,
}

/// `inv_freq[i] = 1 / theta^(2i / rotary_dim)` in F32, HF's default rotary initialisation
/// (scaled variants adjust these on the host before upload).
pub fn default_inv_freq(theta: f64, rotary_dim: usize) -> Vec<f32> {
    (0..rotary_dim / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / rotary_dim as f32))
        .collect()
}

/// Applies norm + rotation in place to the q and k heads of every row (`row_stride` elements
/// apart). Math in F64 from the F32 angle `float(pos) * inv_freq[i]` the kernel also uses.
pub fn rope(
    qkv: &mut [f32],
    row_stride: usize,
    positions: &[u32],
    inv_freq: &[f32],
    cfg: &RopeConfig,
    norm: Option<QkNormRef<'_>>,
) {
    let d = cfg.head_dim;
    let half = cfg.rotary_dim / 2;
    let mut b = vec![0f64; d];
    for (r, &pos) in positions.iter().enumerate() {
        for head in 0..cfg.n_q_heads + cfg.n_k_heads {
            let x = &mut qkv[r * row_stride + head * d..][..d];
            for (bi, &xi) in b.iter_mut().zip(x.iter()) {
                *bi = f64::from(xi);
            }
            if let Some(n) = &norm {
                let w = if head < cfg.n_q_heads {
                    n.q_weight
                } else {
                    n.k_weight
                };
                let ms = b.iter().map(|v| v * v).sum::<f64>() / d as f64;
                let rstd = 1.0 / (ms + f64::from(n.eps)).sqrt();
                let unit = if n.unit_offset { 1.0 } else { 0.0 };
                for (bi, &wi) in b.iter_mut().zip(w) {
                    *bi *= rstd * (f64::from(wi) + unit);
                }
            }
            let mut y = b.clone();
            for (i, &f) in inv_freq.iter().enumerate().take(half) {
                let ang = f64::from(pos as f32 * f);
                let (s, c) = ang.sin_cos();
                let (c, s) = (
                    c * f64::from(cfg.attention_scaling),
                    s * f64::from(cfg.attention_scaling),
                );
                let (i1, i2) = if cfg.interleaved {
                    (2 * i, 2 * i + 1)
                } else {
                    (i, i + half)
                };
                y[i1] = b[i1] * c - b[i2] * s;
                y[i2] = b[i2] * c + b[i1] * s;
            }
            if norm.is_some() || half > 0 {
                for (xi, yi) in x.iter_mut().zip(&y) {
                    *xi = *yi as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_half_at_a_known_angle() {
        // One row, one q head of dim 4, no k heads; inv_freq = [1, 0] -> angle pos*1 for the
        // first pair (0, 2), 0 for the second pair (1, 3).
        let cfg = RopeConfig {
            n_q_heads: 1,
            n_k_heads: 0,
            head_dim: 4,
            rotary_dim: 4,
            interleaved: false,
            attention_scaling: 1.0,
        };
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 9.0];
        let pos = std::f32::consts::FRAC_PI_2;
        let inv = [pos, 0.0];
        rope(&mut x, 5, &[1], &inv, &cfg, None);
        // pair (1, 3) rotated by 90 degrees -> (-3, 1); pair (2, 4) by 0 -> unchanged.
        let want = [-3.0, 2.0, 1.0, 4.0, 9.0];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{x:?}");
        }
    }

    #[test]
    fn interleaved_partial_rotary_and_norm() {
        let cfg = RopeConfig {
            n_q_heads: 0,
            n_k_heads: 1,
            head_dim: 4,
            rotary_dim: 2,
            interleaved: true,
            attention_scaling: 2.0,
        };
        let mut x = vec![3.0, 4.0, 0.0, 0.0];
        rope(&mut x, 4, &[0], &[1.0], &cfg, None);
        assert_eq!(x, vec![6.0, 8.0, 0.0, 0.0]); // angle 0, scaled by 2; tail untouched
        let w = [1.0, 1.0, 1.0, 1.0];
        let norm = QkNormRef {
            q_weight: &w,
            k_weight: &[0.5; 4],
            eps: 0.0,
            unit_offset: false,
        };
        let mut x = vec![2.0, 2.0, 2.0, 2.0];
        let cfg = RopeConfig {
            rotary_dim: 0,
            ..cfg
        };
        rope(&mut x, 4, &[5], &[], &cfg, Some(norm));
        assert_eq!(x, vec![0.5; 4]); // k head: x / rms(x) * 0.5
    }

    #[test]
    fn default_frequencies() {
        let f = default_inv_freq(10000.0, 8);
        assert_eq!(f.len(), 4);
        assert_eq!(f[0], 1.0);
        assert!((f[2] - 0.01).abs() < 1e-7);
    }
}
