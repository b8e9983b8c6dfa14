//! Activations, GLU and bias + activation.

use super::Dt;

/// Element-wise activation (the kernels' `act` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    None = 0,
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` (BERT's "gelu").
    GeluErf = 1,
    /// Tanh approximation ("gelu_new", "gelu_pytorch_tanh").
    GeluTanh = 2,
    Relu = 3,
    /// `x * sigmoid(x)` ("silu", "swish").
    Silu = 4,
    Tanh = 5,
}

impl Act {
    pub const ALL: [Act; 6] = [
        Act::None,
        Act::GeluErf,
        Act::GeluTanh,
        Act::Relu,
        Act::Silu,
        Act::Tanh,
    ];

    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn name(self) -> &'static str {
        match self {
            Act::None => "none",
            Act::GeluErf => "gelu_erf",
            Act::GeluTanh => "gelu_tanh",
            Act::Relu => "relu",
            Act::Silu => "silu",
            Act::Tanh => "tanh",
        }
    }

    pub fn apply(self, x: f64) -> f64 {
        match self {
            Act::None => x,
            Act::GeluErf => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
            Act::GeluTanh => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
            }
            Act::Relu => x.max(0.0),
            Act::Silu => x / (1.0 + (-x).exp()),
            Act::Tanh => x.tanh(),
        }
    }
}

/// erf in F64: `2/sqrt(pi) e^{-x^2} sum_n x (2x^2)^n / (1 3 5 ... (2n+1))`, a series of positive
/// terms (no cancellation), accurate to ~1e-15; |x| >= 6 is +-1 to double precision.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    if a >= 6.0 {
        return x.signum();
    }
    let two_a2 = 2.0 * a * a;
    let mut term = a;
    let mut sum = a;
    let mut n = 0.0;
    while term > 1e-17 * sum {
        n += 1.0;
        term *= two_a2 / (2.0 * n + 1.0);
        sum += term;
    }
    (2.0 / std::f64::consts::PI.sqrt() * (-a * a).exp() * sum).copysign(x)
}

/// `x [rows, 2 inter] -> [rows, inter]`: `act(gate) * up`, the gate being the first half
/// when `gate_first`, else the second half.
pub fn glu(x: &[f32], inter: usize, act: Act, gate_first: bool) -> Vec<f32> {
    let rows = x.len().checked_div(2 * inter).unwrap_or(0);
    let mut out = vec![0f32; rows * inter];
    for r in 0..rows {
        let row = &x[r * 2 * inter..(r + 1) * 2 * inter];
        let (a, b) = row.split_at(inter);
        let (gate, up) = if gate_first { (a, b) } else { (b, a) };
        for i in 0..inter {
            out[r * inter + i] = (act.apply(f64::from(gate[i])) * f64::from(up[i])) as f32;
        }
    }
    out
}

/// `act(round(x + bias))` over `[rows, width]` (the sum is what a bias-only GEMM epilogue stores).
pub fn bias_act(dt: Dt, x: &[f32], bias: Option<&[f32]>, width: usize, act: Act) -> Vec<f32> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let s = match bias {
                Some(b) => dt.round(v + b[i % width]),
                None => v,
            };
            act.apply(f64::from(s)) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Abramowitz & Stegun table 7.1 / high-precision values.
        let known = [
            (0.0, 0.0),
            (0.1, 0.112_462_916_018_284_9),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (4.5, 0.999_999_999_803_383),
        ];
        for (x, want) in known {
            assert!(
                (erf(x) - want).abs() < 1e-14,
                "erf({x}) = {} want {want}",
                erf(x)
            );
            assert!((erf(-x) + want).abs() < 1e-14);
        }
        assert_eq!(erf(7.0), 1.0);
    }

    #[test]
    fn activations_at_known_points() {
        assert!((Act::GeluErf.apply(1.0) - 0.841_344_746_068_543).abs() < 1e-12);
        assert!((Act::GeluTanh.apply(1.0) - 0.841_191_990_607_477_5).abs() < 1e-12);
        assert!((Act::Silu.apply(2.0) - 2.0 / (1.0 + (-2f64).exp())).abs() < 1e-15);
        assert_eq!(Act::Relu.apply(-3.0), 0.0);
        assert_eq!(Act::None.apply(-3.0), -3.0);
        assert!((Act::Tanh.apply(0.5) - 0.5f64.tanh()).abs() < 1e-15);
    }

    #[test]
    fn glu_picks_the_gate_half() {
        let x = [1.0, -1.0, 2.0, 3.0]; // one row, inter 2: [1, -1 | 2, 3]
        assert_eq!(glu(&x, 2, Act::Relu, true), vec![2.0, 0.0]);
        assert_eq!(glu(&x, 2, Act::Relu, false), vec![2.0, -3.0]);
    }

    #[test]
    fn bias_act_rounds_the_sum() {
        let out = bias_act(
            Dt::F16,
            &[1.0, 2.0],
            Some(&[1.0 / 4096.0, -3.0]),
            2,
            Act::Relu,
        );
        assert_eq!(out, vec![1.0, 0.0]);
    }
}
