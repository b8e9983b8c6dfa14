//! Dense layer `y = x W^T (+ bias)` with the cuBLASLt epilogues, on the host.

use rayon::prelude::*;

use super::act::Act;

/// What the GEMM does after the product (cuBLASLt epilogues).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Epilogue {
    None,
    Bias,
    /// Bias, then the tanh GELU approximation (cuBLASLt has no erf GELU).
    GeluTanhBias,
}

impl Epilogue {
    pub const ALL: [Epilogue; 3] = [Epilogue::None, Epilogue::Bias, Epilogue::GeluTanhBias];

    pub fn name(self) -> &'static str {
        match self {
            Epilogue::None => "none",
            Epilogue::Bias => "bias",
            Epilogue::GeluTanhBias => "gelu_tanh_bias",
        }
    }

    pub fn has_bias(self) -> bool {
        !matches!(self, Epilogue::None)
    }
}

/// `y[t, o] = act(sum_k x[t, k] w[o, k] + bias[o]) + beta * c[t, o]` in F64, with `x [rows, k]`,
/// `w [n, k]` (checkpoint layout), `c [rows, n]` (the previous contents of y for an
/// accumulating GEMM; only `Bias` / `None` epilogues accumulate).
pub fn linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    k: usize,
    n: usize,
    epilogue: Epilogue,
    beta_c: Option<(f32, &[f32])>,
) -> Vec<f32> {
    let rows = x.len().checked_div(k).unwrap_or(0);
    let mut y = vec![0f32; rows * n];
    y.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(t, yrow)| {
            let xr = &x[t * k..(t + 1) * k];
            for (o, yo) in yrow.iter_mut().enumerate() {
                let wr = &w[o * k..(o + 1) * k];
                let mut acc: f64 = xr
                    .iter()
                    .zip(wr)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                if let Some((beta, c)) = beta_c {
                    acc += f64::from(beta) * f64::from(c[t * n + o]);
                }
                if epilogue.has_bias() {
                    acc += bias.map_or(0.0, |b| f64::from(b[o]));
                }
                if epilogue == Epilogue::GeluTanhBias {
                    acc = Act::GeluTanh.apply(acc);
                }
                *yo = acc as f32;
            }
        });
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_product_with_each_epilogue() {
        // x [2, 3], w [2, 3] -> y [2, 2]
        let x = [1.0, 2.0, 3.0, -1.0, 0.0, 1.0];
        let w = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0];
        let b = [0.5, -0.5];
        assert_eq!(
            linear(&x, &w, None, 3, 2, Epilogue::None, None),
            vec![1.0, 5.0, -1.0, 1.0]
        );
        assert_eq!(
            linear(&x, &w, Some(&b), 3, 2, Epilogue::Bias, None),
            vec![1.5, 4.5, -0.5, 0.5]
        );
        let c = [10.0, 10.0, 10.0, 10.0];
        assert_eq!(
            linear(&x, &w, Some(&b), 3, 2, Epilogue::Bias, Some((1.0, &c))),
            vec![11.5, 14.5, 9.5, 10.5]
        );
        let g = linear(&x, &w, Some(&b), 3, 2, Epilogue::GeluTanhBias, None);
        assert!((f64::from(g[0]) - Act::GeluTanh.apply(1.5)).abs() < 1e-6);
    }
}
