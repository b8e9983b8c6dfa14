//! Element-wise CPU kernels for the native forward pass: fused bias + activation, gated
//! activations, scaled softmax, layer and RMS norm. Written as plain loops over slices that LLVM
//! vectorises, compiled once per instruction set (AVX-512, AVX2+FMA, baseline) and picked at
//! run time under the `--cpu-kernel` cap, with our own polynomial `exp`/`erf` so no scalar libm
//! call sits in the inner loop.
//!
//! Accuracy: `exp` and the `2^y` used by softmax and `erf` have relative errors below 3e-7 on
//! the range used; `erf` follows Abramowitz & Stegun 7.1.26 (absolute error below 1e-6 in f32),
//! far inside the 1e-4 cosine budget.

use super::simd::Simd;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x for x in about [-87, 88]; smaller inputs flush to 0, as softmax wants.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest through the 1.5 * 2^23 trick: one add and one subtract that vectorise,
    // where `f32::round` becomes a libm call that keeps the loop scalar.
    const SHIFT: f32 = 12_582_912.0;
    let n = x.mul_add(LOG2E, SHIFT) - SHIFT;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    // Minimax polynomial for e^r on [-ln2/2, ln2/2] (Cephes expf). `mul_add` becomes one FMA
    // instruction in the AVX2/AVX-512 copies (Rust never fuses `a * b + c` by itself).
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 5e-1);
    let p = (p * r).mul_add(r, r) + 1.0;
    // 2^n through the exponent bits. `as i32` would saturate and check for NaN lane by lane,
    // which keeps the loop scalar; after the clamp n is a whole number in [-126, 127].
    // SAFETY: n is finite and in i32 range (see the clamp above).
    let ni: i32 = unsafe { n.to_int_unchecked() };
    let bits = ((ni + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// 2^y for y <= 0 (softmax's exponents, once the row maximum is subtracted); below -126 it
/// returns 2^-126 (about 1e-38: nothing next to the maximum's 1). Cheaper than `exp` (no
/// Cody-Waite split, a degree-5 polynomial): relative error below 3e-7.
#[inline(always)]
fn exp2_nonpositive(y: f32) -> f32 {
    // `max` also maps NaN to -126, so the conversion below always sees a whole number in range.
    let y = y.max(-126.0);
    const SHIFT: f32 = 12_582_912.0;
    let n = (y + SHIFT) - SHIFT;
    let f = y - n;
    // Minimax (relative error) for 2^f on [-1/2, 1/2].
    let p = 1.326_821_5e-3_f32
        .mul_add(f, 9.671_511e-3)
        .mul_add(f, 5.550_722e-2)
        .mul_add(f, 2.402_224_2e-1)
        .mul_add(f, std::f32::consts::LN_2)
        .mul_add(f, 1.0);
    // SAFETY: n is a whole number in [-126, 1] (y <= 0 up to rounding).
    let ni: i32 = unsafe { n.to_int_unchecked() };
    p * f32::from_bits(((ni + 127) as u32) << 23)
}

/// erf(x), Abramowitz & Stegun 7.1.26.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.061_405_4_f32
        .mul_add(t, -1.453_152_1)
        .mul_add(t, 1.421_413_8)
        .mul_add(t, -0.284_496_74)
        .mul_add(t, 0.254_829_6)
        * t;
    // e^(-a²) = 2^(-a² log2 e), an exponent that is never positive.
    let r = (-y).mul_add(exp2_nonpositive(-a * a * LOG2E), 1.0);
    r.copysign(x)
}

/// Sum with 16 independent accumulators, so the loop vectorises (a single running sum is a
/// dependency chain LLVM may not reorder).
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// `row = e^((row - max(row)) * scale)` in place; returns the new row's sum.
#[inline(always)]
fn exp_shifted(row: &mut [f32], scale: f32) -> f32 {
    // e^((v - max) * scale) = 2^(v * c - max * c): one FMA before the power of two.
    let c = scale * LOG2E;
    let m = max_lanes(row) * c;
    for v in row.iter_mut() {
        *v = exp2_nonpositive(v.mul_add(c, -m));
    }
    sum_lanes(row)
}

/// Defines `$name` dispatching at run time to copies of `$body` compiled for AVX-512, AVX2+FMA
/// or the baseline target, never above the `--cpu-kernel` cap (`Simd::detect`).
macro_rules! multiversion {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident : $ty:ty),*) $body:block) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn imp($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) { imp($($arg),*) }
                let level = Simd::detect();
                if level >= Simd::Avx512 && std::arch::is_x86_feature_detected!("avx512vl") {
                    // SAFETY: `detect` reports AVX-512F only where the CPU has it; VL checked.
                    return unsafe { v4($($arg),*) };
                }
                if level >= Simd::Avx2 {
                    // SAFETY: `detect` reports AVX2 only with AVX2 and FMA present.
                    return unsafe { v3($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

/// An element-wise activation (the gated ones are [`glu`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pointwise {
    None,
    Relu,
    Gelu,
    GeluTanh,
    Silu,
    Tanh,
    Log1pRelu,
}

#[inline(always)]
fn gelu(y: f32) -> f32 {
    0.5 * y * (1.0 + erf(y * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_tanh(y: f32) -> f32 {
    let u = 0.797_884_6 * (y + 0.044_715 * y * y * y);
    // tanh(u) = 1 - 2 / (e^{2u} + 1)
    0.5 * y * (2.0 - 2.0 / (exp(2.0 * u) + 1.0))
}

#[inline(always)]
fn silu(y: f32) -> f32 {
    y / (1.0 + exp(-y))
}

#[inline(always)]
fn tanh(y: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * y) + 1.0)
}

/// ln(1 + x) for x >= 0 (SPLADE's weights; off the hot path, so libm).
#[inline(always)]
fn log1p_relu(y: f32) -> f32 {
    y.max(0.0).ln_1p()
}

/// Applies `f` to `x + bias` row by row (`bias` empty: no bias).
#[inline(always)]
fn map_bias(x: &mut [f32], bias: &[f32], f: impl Fn(f32) -> f32) {
    if bias.is_empty() {
        for v in x.iter_mut() {
            *v = f(*v);
        }
    } else {
        for row in x.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v = f(*v + b);
            }
        }
    }
}

multiversion! {
    /// `x = act(x + bias)` row by row (`bias.len()` columns; empty: no bias).
    pub fn bias_act(x: &mut [f32], bias: &[f32], act: Pointwise) {
        match act {
            Pointwise::None => map_bias(x, bias, |y| y),
            Pointwise::Relu => map_bias(x, bias, |y| y.max(0.0)),
            Pointwise::Gelu => map_bias(x, bias, gelu),
            Pointwise::GeluTanh => map_bias(x, bias, gelu_tanh),
            Pointwise::Silu => map_bias(x, bias, silu),
            Pointwise::Tanh => map_bias(x, bias, tanh),
            Pointwise::Log1pRelu => map_bias(x, bias, log1p_relu),
        }
    }
}

multiversion! {
    /// Gated activation: each row of `src` (`2 * width`) becomes `gate(first half) * second
    /// half` in `dst` (`width`).
    pub fn glu(dst: &mut [f32], src: &[f32], width: usize, gate: Pointwise) {
        for (out, row) in dst.chunks_exact_mut(width).zip(src.chunks_exact(2 * width)) {
            let (a, b) = row.split_at(width);
            match gate {
                Pointwise::Gelu => out.iter_mut().zip(a).zip(b).for_each(|((o, a), b)| *o = gelu(*a) * b),
                Pointwise::GeluTanh => out.iter_mut().zip(a).zip(b).for_each(|((o, a), b)| *o = gelu_tanh(*a) * b),
                Pointwise::Silu => out.iter_mut().zip(a).zip(b).for_each(|((o, a), b)| *o = silu(*a) * b),
                _ => out.iter_mut().zip(a).zip(b).for_each(|((o, a), b)| *o = a * b),
            }
        }
    }
}

multiversion! {
    /// Each row of `x` (rows `ld` apart, the first `cols` values used): softmax(row * scale), in
    /// place.
    pub fn scaled_softmax_rows(x: &mut [f32], cols: usize, ld: usize, scale: f32) {
        for row in x.chunks_exact_mut(ld) {
            let row = &mut row[..cols];
            let inv = 1.0 / exp_shifted(row, scale);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

multiversion! {
    /// Each row of `x` (rows `ld` apart, the first `cols` values used): `exp((v - max) * scale)`
    /// in place, unnormalised; row `i`'s sum goes to `sums[i]`. Attention divides its output
    /// rows by the sums instead (fewer values than the probabilities).
    pub fn scaled_exp_rows(x: &mut [f32], cols: usize, ld: usize, scale: f32, sums: &mut [f32]) {
        for (row, sum) in x.chunks_exact_mut(ld).zip(sums.iter_mut()) {
            *sum = exp_shifted(&mut row[..cols], scale);
        }
    }
}

multiversion! {
    /// `x *= factor`.
    pub fn scale(x: &mut [f32], factor: f32) {
        for v in x.iter_mut() {
            *v *= factor;
        }
    }
}

multiversion! {
    /// Layer norm of each row of `x` (`gamma.len()` wide), in place; `beta` empty: no bias.
    pub fn layer_norm_rows(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let n = gamma.len() as f32;
        for row in x.chunks_exact_mut(gamma.len()) {
            let mean = sum_lanes(row) / n;
            let mut sq = [0f32; 16];
            let chunks = row.chunks_exact(16);
            let rest: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
            for c in chunks {
                for i in 0..16 {
                    sq[i] += (c[i] - mean) * (c[i] - mean);
                }
            }
            let var = (sq.iter().sum::<f32>() + rest) / n;
            let inv = 1.0 / (var + eps).sqrt();
            if beta.is_empty() {
                for (v, g) in row.iter_mut().zip(gamma) {
                    *v = (*v - mean) * inv * g;
                }
            } else {
                for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                    *v = (*v - mean) * inv * g + b;
                }
            }
        }
    }
}

multiversion! {
    /// RMS norm of each row of `x` (`weight.len()` wide), in place: `x / rms(x) * (offset + w)`.
    pub fn rms_norm_rows(x: &mut [f32], weight: &[f32], eps: f32, offset: f32) {
        let n = weight.len() as f32;
        for row in x.chunks_exact_mut(weight.len()) {
            let mut sq = [0f32; 16];
            let chunks = row.chunks_exact(16);
            let rest: f32 = chunks.remainder().iter().map(|v| v * v).sum();
            for c in chunks {
                for i in 0..16 {
                    sq[i] += c[i] * c[i];
                }
            }
            let inv = 1.0 / ((sq.iter().sum::<f32>() + rest) / n + eps).sqrt();
            for (v, w) in row.iter_mut().zip(weight) {
                *v = *v * inv * (offset + w);
            }
        }
    }
}

multiversion! {
    /// `x += bias + residual` row by row (`residual` empty: bias only; `bias` empty: none).
    pub fn add_bias_residual(x: &mut [f32], bias: &[f32], residual: &[f32]) {
        match (bias.is_empty(), residual.is_empty()) {
            (true, true) => {}
            (false, true) => {
                for row in x.chunks_exact_mut(bias.len()) {
                    for (v, b) in row.iter_mut().zip(bias) {
                        *v += b;
                    }
                }
            }
            (true, false) => {
                for (v, r) in x.iter_mut().zip(residual) {
                    *v += r;
                }
            }
            (false, false) => {
                let w = bias.len();
                for (row, res) in x.chunks_exact_mut(w).zip(residual.chunks_exact(w)) {
                    for ((v, b), r) in row.iter_mut().zip(bias).zip(res) {
                        *v += b + r;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -8000..=8000 {
            let x = i as f32 / 100.0;
            let e = f64::from(exp(x));
            let want = f64::from(x).exp();
            worst_exp = worst_exp.max(((e - want) / want).abs());
            let x = i as f32 / 1000.0;
            worst_erf = worst_erf.max((f64::from(erf(x)) - libm_erf(f64::from(x))).abs());
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 1e-6, "erf absolute error {worst_erf}");
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(-87.0) < 1e-37);
    }

    #[test]
    fn softmax_exponentials_are_accurate() {
        let mut worst = 0f64;
        for i in 0..=126_000 {
            let y = -(i as f32) / 1000.0;
            let got = f64::from(exp2_nonpositive(y));
            let want = 2f64.powf(f64::from(y));
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "2^y relative error {worst}");
        assert_eq!(exp2_nonpositive(-1000.0), exp2_nonpositive(-126.0));
        assert_eq!(exp2_nonpositive(f32::NAN), exp2_nonpositive(-126.0));
        // Rows against f64, with padding past `cols` left alone.
        let (cols, ld, scale) = (37, 48, 0.17);
        let mut x: Vec<f32> = (0..2 * ld)
            .map(|i| ((i * 7919) % 113) as f32 - 50.0)
            .collect();
        let orig = x.clone();
        let mut sums = [0f32; 2];
        scaled_exp_rows(&mut x, cols, ld, scale, &mut sums);
        for r in 0..2 {
            let row = &orig[r * ld..r * ld + cols];
            let max = row.iter().fold(f32::MIN, |m, &v| m.max(v));
            let mut sum = 0f64;
            for j in 0..cols {
                let want = (f64::from(row[j] - max) * f64::from(scale)).exp();
                sum += want;
                let got = f64::from(x[r * ld + j]);
                assert!(
                    ((got - want) / want).abs() < 2e-6,
                    "row {r} col {j}: {got} vs {want}"
                );
            }
            assert!((f64::from(sums[r]) - sum).abs() / sum < 2e-6);
            assert_eq!(
                x[r * ld + cols..(r + 1) * ld],
                orig[r * ld + cols..(r + 1) * ld]
            );
        }
    }

    /// erf in f64 from its series / continued fraction, as a reference.
    pub(crate) fn libm_erf(x: f64) -> f64 {
        // erf(x) = 2/sqrt(pi) * sum_{n} (-1)^n x^(2n+1) / (n! (2n+1)) converges for |x| <= 8
        // slowly; use erfc's continued fraction above 3.
        if x.abs() > 3.0 {
            let a = x.abs();
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
            return (1.0 - erfc).copysign(x);
        }
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..200 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn fused_kernels_match_plain_math() {
        let mut x = vec![-3.0, -0.5, 0.0, 0.7, 2.0, 5.0];
        bias_act(&mut x, &[0.0, 0.0, 0.0], Pointwise::Gelu);
        let gelu = |v: f64| 0.5 * v * (1.0 + libm_erf(v / std::f64::consts::SQRT_2));
        for (g, v) in x.iter().zip([-3.0, -0.5, 0.0, 0.7, 2.0, 5.0]) {
            assert!((f64::from(*g) - gelu(v)).abs() < 1e-6, "{g} vs {}", gelu(v));
        }
        let mut s = vec![1.0, 2.0, 3.0, -1e9, 0.0, 0.0];
        scaled_softmax_rows(&mut s, 3, 3, 1.0);
        assert!((s[0..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((s[2] - 0.665_240_9).abs() < 1e-6);
        assert!(s[3] < 1e-30 && (s[4] - 0.5).abs() < 1e-6);
        let mut l = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm_rows(&mut l, &[1.0, 1.0], &[0.0, 1.0], 1e-12);
        assert!((l[0] + 1.0).abs() < 1e-5 && (l[1] - 2.0).abs() < 1e-5);
        let mut d = vec![0.0; 4];
        add_bias_residual(&mut d, &[1.0, 2.0], &[10.0, 20.0, 30.0, 40.0]);
        assert_eq!(d, vec![11.0, 22.0, 31.0, 42.0]);
        add_bias_residual(&mut d, &[], &[1.0, 1.0, 1.0, 1.0]);
        assert_eq!(d, vec![12.0, 23.0, 32.0, 43.0]);
        let mut r = vec![3.0, 4.0];
        rms_norm_rows(&mut r, &[1.0, 0.0], 0.0, 1.0);
        let rms = (12.5f32).sqrt();
        assert!((r[0] - 6.0 / rms).abs() < 1e-6 && (r[1] - 4.0 / rms).abs() < 1e-6);
    }

    #[test]
    fn activations_and_gates_match_plain_math() {
        let xs = [-4.0f32, -1.0, -0.1, 0.0, 0.3, 1.0, 3.5];
        let check = |act: Pointwise, f: &dyn Fn(f64) -> f64| {
            let mut x = xs.to_vec();
            bias_act(&mut x, &[], act);
            for (g, v) in x.iter().zip(xs) {
                let want = f(f64::from(v));
                assert!(
                    (f64::from(*g) - want).abs() < 2e-6,
                    "{act:?}({v}) = {g}, want {want}"
                );
            }
        };
        check(Pointwise::Silu, &|v| v / (1.0 + (-v).exp()));
        check(Pointwise::Tanh, &|v| v.tanh());
        check(Pointwise::GeluTanh, &|v| {
            0.5 * v * (1.0 + (0.797_884_560_802_865_4 * (v + 0.044_715 * v * v * v)).tanh())
        });
        check(Pointwise::Log1pRelu, &|v| v.max(0.0).ln_1p());
        check(Pointwise::Relu, &|v| v.max(0.0));
        let src = [1.0f32, -2.0, 3.0, 4.0, 0.5, 2.0, -1.0, 1.0];
        let mut dst = [0f32; 4];
        glu(&mut dst, &src, 2, Pointwise::Silu);
        let silu = |v: f32| v / (1.0 + (-v).exp());
        assert!((dst[0] - silu(1.0) * 3.0).abs() < 1e-6);
        assert!((dst[3] - silu(2.0) * 1.0).abs() < 1e-6);
    }
}
