//! Segmented pooling over packed sequences, and the non-finite scan.

/// Pooling of each sequence's rows into one F32 vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolMode {
    /// The first token (BERT's [CLS]).
    Cls = 0,
    Mean = 1,
    LastToken = 2,
    Max = 3,
}

impl PoolMode {
    pub const ALL: [PoolMode; 4] = [
        PoolMode::Cls,
        PoolMode::Mean,
        PoolMode::LastToken,
        PoolMode::Max,
    ];

    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn name(self) -> &'static str {
        match self {
            PoolMode::Cls => "cls",
            PoolMode::Mean => "mean",
            PoolMode::LastToken => "last",
            PoolMode::Max => "max",
        }
    }
}

/// `[n, width]` from `x [T, width]`; an empty sequence pools to zeros.
pub fn pool(x: &[f32], cu_seqlens: &[u32], width: usize, mode: PoolMode) -> Vec<f32> {
    let n = cu_seqlens.len().saturating_sub(1);
    let mut out = vec![0f32; n * width];
    for s in 0..n {
        let (a, b) = (cu_seqlens[s] as usize, cu_seqlens[s + 1] as usize);
        if a == b {
            continue;
        }
        for c in 0..width {
            let col = (a..b).map(|r| f64::from(x[r * width + c]));
            out[s * width + c] = match mode {
                PoolMode::Cls => x[a * width + c],
                PoolMode::LastToken => x[(b - 1) * width + c],
                PoolMode::Mean => (col.sum::<f64>() / (b - a) as f64) as f32,
                PoolMode::Max => col.fold(f64::NEG_INFINITY, f64::max) as f32,
            };
        }
    }
    out
}

pub fn any_nonfinite(x: &[f32]) -> bool {
    x.iter().any(|v| !v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_each_segment() {
        // Sequences: rows 0..2, (empty), 2..3; width 2.
        let x = [1.0, -1.0, 3.0, 5.0, 7.0, 0.0];
        let cu = [0, 2, 2, 3];
        assert_eq!(
            pool(&x, &cu, 2, PoolMode::Cls),
            vec![1.0, -1.0, 0.0, 0.0, 7.0, 0.0]
        );
        assert_eq!(
            pool(&x, &cu, 2, PoolMode::LastToken),
            vec![3.0, 5.0, 0.0, 0.0, 7.0, 0.0]
        );
        assert_eq!(
            pool(&x, &cu, 2, PoolMode::Mean),
            vec![2.0, 2.0, 0.0, 0.0, 7.0, 0.0]
        );
        assert_eq!(
            pool(&x, &cu, 2, PoolMode::Max),
            vec![3.0, 5.0, 0.0, 0.0, 7.0, 0.0]
        );
    }

    #[test]
    fn finds_nan_and_inf() {
        assert!(!any_nonfinite(&[1.0, -2.0]));
        assert!(any_nonfinite(&[1.0, f32::NAN]));
        assert!(any_nonfinite(&[f32::NEG_INFINITY]));
    }
}
