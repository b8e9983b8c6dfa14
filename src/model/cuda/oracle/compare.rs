//! Element-wise comparison of a kernel output against its reference.

use std::fmt;

/// Pass iff `|got - want| <= atol + rtol * |want|` for every element (and `got` is finite
/// wherever `want` is).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

impl Tolerance {
    pub fn scaled(self, k: f64) -> Self {
        Tolerance {
            atol: self.atol * k,
            rtol: self.rtol * k,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub n: usize,
    pub max_abs: f64,
    /// Largest `|got - want| / |want|` over elements with `|want| > atol` (relative error of
    /// values near zero says nothing).
    pub max_rel: f64,
    /// Elements outside the tolerance (NaN / Inf included).
    pub failures: usize,
    /// First failing element: (index, got, want).
    pub first_failure: Option<(usize, f32, f32)>,
    pub tol: Tolerance,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        self.failures == 0
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} max_abs={:.3e} max_rel={:.3e} (atol {:.1e} rtol {:.1e})",
            self.n, self.max_abs, self.max_rel, self.tol.atol, self.tol.rtol
        )?;
        if let Some((i, g, w)) = self.first_failure {
            write!(f, " {} bad, first at {i}: got {g} want {w}", self.failures)?;
        }
        Ok(())
    }
}

pub fn compare(got: &[f32], want: &[f32], tol: Tolerance) -> Comparison {
    let mut c = Comparison {
        n: want.len(),
        max_abs: 0.0,
        max_rel: 0.0,
        failures: 0,
        first_failure: None,
        tol,
    };
    if got.len() != want.len() {
        c.failures = got.len().abs_diff(want.len()).max(1);
        c.first_failure = Some((got.len().min(want.len()), f32::NAN, f32::NAN));
        return c;
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g64, w64) = (f64::from(g), f64::from(w));
        let err = (g64 - w64).abs();
        let ok = if w64.is_finite() {
            g64.is_finite() && err <= tol.atol + tol.rtol * w64.abs()
        } else {
            g64 == w64 || (g64.is_nan() && w64.is_nan())
        };
        if err.is_finite() {
            c.max_abs = c.max_abs.max(err);
            if w64.abs() > tol.atol {
                c.max_rel = c.max_rel.max(err / w64.abs());
            }
        } else if !ok {
            c.max_abs = f64::INFINITY;
        }
        if !ok {
            c.failures += 1;
            if c.first_failure.is_none() {
                c.first_failure = Some((i, g, w));
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance {
        atol: 1e-3,
        rtol: 1e-2,
    };

    #[test]
    fn passes_within_and_fails_outside_tolerance() {
        let c = compare(&[1.0, 100.5, 0.0005], &[1.0, 100.0, 0.0], TOL);
        assert!(c.passed(), "{c}");
        assert!((c.max_abs - 0.5).abs() < 1e-9);
        let c = compare(&[1.0, 102.0], &[1.0, 100.0], TOL);
        assert!(!c.passed());
        assert_eq!(c.first_failure, Some((1, 102.0, 100.0)));
    }

    #[test]
    fn nan_and_length_mismatch_fail() {
        assert!(!compare(&[f32::NAN], &[1.0], TOL).passed());
        assert!(!compare(&[f32::INFINITY], &[1.0], TOL).passed());
        assert!(!compare(&[1.0], &[1.0, 2.0], TOL).passed());
        assert!(compare(&[f32::NEG_INFINITY], &[f32::NEG_INFINITY], TOL).passed());
    }
}
