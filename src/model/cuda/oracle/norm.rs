//! Fused (bias +) residual + LayerNorm / RMSNorm, and the embedding gather + LayerNorm.

use super::Dt;

/// Which normalisation a fused norm applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `(s - mean) * rstd * gamma + beta`.
    LayerNorm,
    /// `s * rsqrt(mean(s^2) + eps) * w`, or `* (1 + w)` with `unit_offset` (Gemma).
    RmsNorm { unit_offset: bool },
}

/// Inputs of one fused norm over `[rows, width]`.
#[derive(Debug, Clone, Copy)]
pub struct NormInputs<'a> {
    pub x: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
    pub gamma: &'a [f32],
    pub beta: Option<&'a [f32]>,
    pub width: usize,
    pub kind: NormKind,
    pub eps: f32,
}

/// Returns (normalised output, pre-norm sum). The sum `x + bias + residual` is rounded to `dt`
/// (it is the residual stream the kernel stores) before the statistics, which are F64.
pub fn fused_norm(dt: Dt, p: &NormInputs<'_>) -> (Vec<f32>, Vec<f32>) {
    let w = p.width;
    let rows = p.x.len().checked_div(w).unwrap_or(0);
    let mut sum = vec![0f32; rows * w];
    let mut out = vec![0f32; rows * w];
    for r in 0..rows {
        let srow = &mut sum[r * w..(r + 1) * w];
        for (c, s) in srow.iter_mut().enumerate() {
            let mut v = p.x[r * w + c];
            if let Some(b) = p.bias {
                v += b[c];
            }
            if let Some(res) = p.residual {
                v += res[r * w + c];
            }
            *s = dt.round(v);
        }
        normalize(
            srow,
            &mut out[r * w..(r + 1) * w],
            p.gamma,
            p.beta,
            p.kind,
            p.eps,
        );
    }
    (out, sum)
}

fn normalize(
    s: &[f32],
    out: &mut [f32],
    gamma: &[f32],
    beta: Option<&[f32]>,
    kind: NormKind,
    eps: f32,
) {
    let n = s.len() as f64;
    let (mean, rstd, unit) = match kind {
        NormKind::LayerNorm => {
            let mean = s.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = s
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            (mean, 1.0 / (var + f64::from(eps)).sqrt(), 0.0)
        }
        NormKind::RmsNorm { unit_offset } => {
            let ms = s.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n;
            (
                0.0,
                1.0 / (ms + f64::from(eps)).sqrt(),
                if unit_offset { 1.0 } else { 0.0 },
            )
        }
    };
    for (c, o) in out.iter_mut().enumerate() {
        let mut y = (f64::from(s[c]) - mean) * rstd * (f64::from(gamma[c]) + unit);
        if let Some(b) = beta {
            y += f64::from(b[c]);
        }
        *o = y as f32;
    }
}

/// Embedding tables (all `[rows, width]` row-major).
#[derive(Debug, Clone, Copy)]
pub struct EmbedInputs<'a> {
    pub word: &'a [f32],
    pub position: Option<&'a [f32]>,
    pub token_type: Option<&'a [f32]>,
    pub width: usize,
    pub ids: &'a [u32],
    pub position_ids: &'a [u32],
    /// Empty: type 0 for every token.
    pub type_ids: &'a [u32],
    pub scale: f32,
    /// LayerNorm after the sum, or none.
    pub layer_norm: Option<LayerNormRef<'a>>,
}

/// LayerNorm weights (`[width]`) and epsilon.
#[derive(Debug, Clone, Copy)]
pub struct LayerNormRef<'a> {
    pub gamma: &'a [f32],
    pub beta: Option<&'a [f32]>,
    pub eps: f32,
}

/// Out-of-range id flags (bits of the kernel's error word).
pub const EMBED_BAD_WORD: i32 = 1;
pub const EMBED_BAD_POSITION: i32 = 2;
pub const EMBED_BAD_TYPE: i32 = 4;

/// `round(round(word + type) + position) * scale` (rounded), then the optional LayerNorm, like
/// HF's BertEmbeddings sums in the model dtype. Out-of-range ids are clamped to the last row
/// and reported in the returned flags.
pub fn embed(dt: Dt, p: &EmbedInputs<'_>) -> (Vec<f32>, i32) {
    let w = p.width;
    let rows_of = |t: &[f32]| t.len() / w.max(1);
    let mut err = 0;
    let mut out = vec![0f32; p.ids.len() * w];
    let mut s = vec![0f32; w];
    for (t, &id) in p.ids.iter().enumerate() {
        let mut pick = |table: &[f32], id: u32, bit: i32| -> usize {
            let n = rows_of(table);
            if id as usize >= n {
                err |= bit;
                n - 1
            } else {
                id as usize
            }
        };
        let wi = pick(p.word, id, EMBED_BAD_WORD);
        s.copy_from_slice(&p.word[wi * w..(wi + 1) * w]);
        if let Some(tt) = p.token_type {
            let ti = pick(tt, p.type_ids.get(t).copied().unwrap_or(0), EMBED_BAD_TYPE);
            for (c, v) in s.iter_mut().enumerate() {
                *v = dt.round(*v + tt[ti * w + c]);
            }
        }
        if let Some(pt) = p.position {
            let pi = pick(pt, p.position_ids[t], EMBED_BAD_POSITION);
            for (c, v) in s.iter_mut().enumerate() {
                *v = dt.round(*v + pt[pi * w + c]);
            }
        }
        if p.scale != 1.0 {
            for v in s.iter_mut() {
                *v = dt.round(*v * p.scale);
            }
        }
        let orow = &mut out[t * w..(t + 1) * w];
        match p.layer_norm {
            Some(ln) => normalize(&s, orow, ln.gamma, ln.beta, NormKind::LayerNorm, ln.eps),
            None => orow.copy_from_slice(&s),
        }
    }
    (out, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_of_a_known_row() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let g = [1.0, 1.0, 2.0, 1.0];
        let b = [0.0, 0.0, 0.0, 0.5];
        let p = NormInputs {
            x: &x,
            bias: None,
            residual: None,
            gamma: &g,
            beta: Some(&b),
            width: 4,
            kind: NormKind::LayerNorm,
            eps: 0.0,
        };
        let (out, sum) = fused_norm(Dt::F16, &p);
        let s = 1.25f32.sqrt(); // std of 1..4
        let want = [-1.5 / s, -0.5 / s, 2.0 * 0.5 / s, 1.5 / s + 0.5];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-6, "{out:?}");
        }
        assert_eq!(sum, x);
    }

    #[test]
    fn residual_and_bias_are_summed_and_rounded() {
        let x = [1.0, 1.0];
        let bias = [1.0 / 4096.0, 0.0];
        let res = [0.0, 2.0];
        let g = [1.0, 1.0];
        let p = NormInputs {
            x: &x,
            bias: Some(&bias),
            residual: Some(&res),
            gamma: &g,
            beta: None,
            width: 2,
            kind: NormKind::RmsNorm { unit_offset: false },
            eps: 0.0,
        };
        let (out, sum) = fused_norm(Dt::F16, &p);
        assert_eq!(sum, vec![1.0, 3.0]); // 1 + 2^-12 rounds to 1 in f16
        let rms = 5f32.sqrt();
        assert!((out[0] - 1.0 / rms).abs() < 1e-6 && (out[1] - 3.0 / rms).abs() < 1e-6);
        let p = NormInputs {
            kind: NormKind::RmsNorm { unit_offset: true },
            ..p
        };
        let (out, _) = fused_norm(Dt::F16, &p);
        assert!((out[1] - 2.0 * 3.0 / rms).abs() < 1e-6);
    }

    #[test]
    fn embedding_sum_clamps_bad_ids() {
        let word = [1.0, 2.0, 10.0, 20.0]; // 2 rows of width 2
        let pos = [0.5, 0.5];
        let typ = [100.0, 100.0, 200.0, 200.0];
        let p = EmbedInputs {
            word: &word,
            position: Some(&pos),
            token_type: Some(&typ),
            width: 2,
            ids: &[1, 5],
            position_ids: &[0, 3],
            type_ids: &[1, 0],
            scale: 1.0,
            layer_norm: None,
        };
        let (out, err) = embed(Dt::F16, &p);
        assert_eq!(out, vec![210.5, 220.5, 110.5, 120.5]);
        assert_eq!(err, EMBED_BAD_WORD | EMBED_BAD_POSITION);
        let p = EmbedInputs {
            ids: &[0],
            position_ids: &[0],
            type_ids: &[],
            scale: 2.0,
            ..p
        };
        let (out, err) = embed(Dt::F16, &p);
        assert_eq!((out, err), (vec![203.0, 205.0], 0));
    }
}
