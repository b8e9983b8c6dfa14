//! RoPE frequencies from a config, as transformers' `ROPE_INIT_FUNCTIONS` compute them.
//!
//! Configs come in two forms: transformers 4 writes `rope_theta` beside a `rope_scaling` dict
//! (or null); transformers 5 writes `rope_parameters`, either one dict with `rope_theta` and the
//! scaling keys, or one dict per layer type (`full_attention`, `sliding_attention`). Both give
//! the same [`Rope`].
//!
//! Scaling types: `default`, `linear`, `dynamic` (NTK; equal to the default within
//! `max_position_embeddings`, the longest input the server accepts), `llama3`, `yarn`.

use serde_json::Value;

use super::field;
use crate::model::layers::Rope;
use crate::model::ModelError;

/// What the config says about the rotation of one layer type.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    pub theta: f64,
    /// The scaling dict (`rope_type` / `type` and its keys); `None` is the default rotation.
    pub scaling: Option<Value>,
}

impl RopeParams {
    /// The parameters of `layer_type` (`full_attention` / `sliding_attention`), with
    /// `default_theta` where the config names no base.
    pub fn read(cfg: &Value, layer_type: &str, default_theta: f64) -> Self {
        if let Some(p) = cfg.get("rope_parameters").filter(|p| p.is_object()) {
            let dict = p.get(layer_type).filter(|d| d.is_object()).unwrap_or(p);
            let theta = field(dict, &["rope_theta"])
                .or_else(|| field(cfg, &["rope_theta"]))
                .unwrap_or(default_theta);
            return Self {
                theta,
                scaling: Some(dict.clone()),
            };
        }
        Self {
            theta: field(cfg, &["rope_theta"]).unwrap_or(default_theta),
            scaling: cfg.get("rope_scaling").filter(|s| s.is_object()).cloned(),
        }
    }

    /// Whether the layer type has its own dict in a transformers-5 `rope_parameters`.
    pub fn has_layer_type(cfg: &Value, layer_type: &str) -> bool {
        cfg.get("rope_parameters")
            .and_then(|p| p.get(layer_type))
            .is_some_and(Value::is_object)
    }

    /// The rotation of a `head_dim`-wide head (`partial_rotary_factor` of it rotated);
    /// `max_positions` is the config's `max_position_embeddings`.
    pub fn rope(
        &self,
        cfg: &Value,
        head_dim: usize,
        max_positions: usize,
    ) -> Result<Rope, ModelError> {
        let partial: f64 = field(cfg, &["partial_rotary_factor"])
            .or_else(|| {
                self.scaling
                    .as_ref()
                    .and_then(|s| field(s, &["partial_rotary_factor"]))
            })
            .unwrap_or(1.0);
        let dim = (head_dim as f64 * partial) as usize;
        let kind = self
            .scaling
            .as_ref()
            .and_then(|s| field::<String>(s, &["rope_type", "type"]))
            .unwrap_or_else(|| "default".into());
        let s = self.scaling.clone().unwrap_or(Value::Null);
        let num = |key: &str| -> Result<f64, ModelError> {
            field(&s, &[key]).ok_or_else(|| ModelError::Corrupt {
                file: "config.json".into(),
                reason: format!("rope scaling `{kind}` needs `{key}`"),
            })
        };
        let base = default_freqs(self.theta, dim);
        let (inv_freq, scaling) = match kind.as_str() {
            "default" => (base, 1.0),
            "linear" => {
                let f = num("factor")?;
                (base.iter().map(|v| v / f).collect(), 1.0)
            }
            // transformers grows the base only once an input is longer than
            // max_position_embeddings, which the server never accepts.
            "dynamic" => (base, 1.0),
            "llama3" => (
                llama3(
                    &base,
                    num("factor")?,
                    num("low_freq_factor")?,
                    num("high_freq_factor")?,
                    num("original_max_position_embeddings")?,
                ),
                1.0,
            ),
            "yarn" => yarn(self.theta, dim, &s, max_positions)?,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "rope scaling `{other}` (supported: default, linear, dynamic, llama3, yarn)"
                )))
            }
        };
        Ok(Rope {
            inv_freq: inv_freq.into_iter().map(|v| v as f32).collect(),
            rotary_dim: dim,
            interleaved: false,
            scaling: scaling as f32,
            dynamic: None,
        })
    }
}

/// `1 / base^(2k/dim)`, in f64 (the references recompute them so).
fn default_freqs(base: f64, dim: usize) -> Vec<f64> {
    (0..dim / 2)
        .map(|k| 1.0 / base.powf(2.0 * k as f64 / dim as f64))
        .collect()
}

/// Llama 3.1: long wavelengths divided by `factor`, short ones kept, the band between
/// interpolated.
fn llama3(base: &[f64], factor: f64, low: f64, high: f64, old_context: f64) -> Vec<f64> {
    let low_wavelen = old_context / low;
    let high_wavelen = old_context / high;
    base.iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth = (old_context / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// YaRN: interpolated and extrapolated frequencies blended by a linear ramp over the
/// dimensions, and cos/sin scaled by the attention factor.
fn yarn(
    theta: f64,
    dim: usize,
    s: &Value,
    max_positions: usize,
) -> Result<(Vec<f64>, f64), ModelError> {
    let factor: f64 = field(s, &["factor"]).ok_or_else(|| ModelError::Corrupt {
        file: "config.json".into(),
        reason: "rope scaling `yarn` needs `factor`".into(),
    })?;
    let original: f64 =
        field::<f64>(s, &["original_max_position_embeddings"]).unwrap_or(max_positions as f64);
    let get_mscale = |scale: f64, m: f64| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    };
    let mscale: Option<f64> = field(s, &["mscale"]).filter(|m: &f64| *m != 0.0);
    let mscale_all: Option<f64> = field(s, &["mscale_all_dim"]).filter(|m: &f64| *m != 0.0);
    let attention = match (field::<f64>(s, &["attention_factor"]), mscale, mscale_all) {
        (Some(a), _, _) => a,
        (None, Some(m), Some(ma)) => get_mscale(factor, m) / get_mscale(factor, ma),
        _ => get_mscale(factor, 1.0),
    };
    let beta_fast: f64 = field(s, &["beta_fast"]).unwrap_or(32.0);
    let beta_slow: f64 = field(s, &["beta_slow"]).unwrap_or(1.0);
    let truncate: bool = field(s, &["truncate"]).unwrap_or(true);
    let d = dim as f64;
    let correction = |rotations: f64| {
        d * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
    if low == high {
        high += 0.001;
    }
    let freqs = (0..dim / 2)
        .map(|k| {
            let pos = theta.powf(2.0 * k as f64 / d);
            let (extrapolation, interpolation) = (1.0 / pos, 1.0 / (factor * pos));
            let ramp = ((k as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            interpolation * (1.0 - keep) + extrapolation * keep
        })
        .collect();
    Ok((freqs, attention))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_config_forms_give_the_same_rope() {
        let v4 = json!({"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3",
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}});
        let v5 = json!({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}});
        let a = RopeParams::read(&v4, "full_attention", 10_000.0);
        let b = RopeParams::read(&v5, "full_attention", 10_000.0);
        assert_eq!(a.theta, b.theta);
        let (ra, rb) = (
            a.rope(&v4, 8, 131_072).unwrap(),
            b.rope(&v5, 8, 131_072).unwrap(),
        );
        assert_eq!(ra, rb);
        // tiny-llama's note: wavelengths 6.3, 167 kept, 4443 smoothed, 118000 divided by 8.
        let plain = default_freqs(500_000.0, 8);
        let got: Vec<f64> = ra.inv_freq.iter().map(|&v| f64::from(v)).collect();
        assert!((got[0] - plain[0]).abs() < 1e-7 && (got[1] - plain[1]).abs() < 1e-9);
        assert!((got[3] - plain[3] / 8.0).abs() < 1e-12);
        let wavelen = 2.0 * std::f64::consts::PI / plain[2];
        let smooth = (8192.0 / wavelen - 1.0) / 3.0;
        let want = (1.0 - smooth) * plain[2] / 8.0 + smooth * plain[2];
        assert!((got[2] - want).abs() < 1e-9, "{} vs {want}", got[2]);
    }

    #[test]
    fn per_layer_type_parameters() {
        let cfg = json!({"rope_parameters": {
            "full_attention": {"rope_theta": 1e6, "rope_type": "default"},
            "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}});
        assert_eq!(RopeParams::read(&cfg, "sliding_attention", 1.0).theta, 1e4);
        assert_eq!(RopeParams::read(&cfg, "full_attention", 1.0).theta, 1e6);
        assert!(RopeParams::has_layer_type(&cfg, "sliding_attention"));
        assert!(!RopeParams::has_layer_type(
            &json!({"rope_theta": 1.0}),
            "sliding_attention"
        ));
    }

    #[test]
    fn linear_dynamic_and_yarn() {
        let lin = json!({"rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 4.0}});
        let r = RopeParams::read(&lin, "full_attention", 1.0)
            .rope(&lin, 8, 512)
            .unwrap();
        assert!((r.inv_freq[1] - 0.1 / 4.0).abs() < 1e-8);
        let dynamic =
            json!({"rope_theta": 1e4, "rope_scaling": {"type": "dynamic", "factor": 2.0}});
        let r = RopeParams::read(&dynamic, "x", 1.0)
            .rope(&dynamic, 8, 512)
            .unwrap();
        assert_eq!(r, Rope::new(1e4, 8));
        // Qwen's long-context recipe: factor 4 over 32768 positions.
        let y = json!({"rope_theta": 1e6, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 32768}});
        let r = RopeParams::read(&y, "full_attention", 1.0)
            .rope(&y, 128, 131_072)
            .unwrap();
        assert!((r.scaling - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        let plain = Rope::new(1e6, 128);
        // The fastest frequencies are kept, the slowest interpolated (÷ factor).
        assert_eq!(r.inv_freq[0], plain.inv_freq[0]);
        assert!((r.inv_freq[63] - plain.inv_freq[63] / 4.0).abs() <= plain.inv_freq[63] * 1e-6);
        let bad = json!({"rope_scaling": {"rope_type": "longrope"}});
        assert!(RopeParams::read(&bad, "x", 1.0).rope(&bad, 8, 512).is_err());
    }
}
