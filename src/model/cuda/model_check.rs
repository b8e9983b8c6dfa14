//! The whole-model half of `spotinfer selftest`: each model loaded on the fused backend and on
//! the reference backend on the same GPU, at F16 and BF16 (and the reference at F32, the
//! yardstick), one batch of mixed lengths through each, and the cosine of every token's hidden
//! state and every pooled vector (or score row) against the F32 reference.
//!
//! Pass: the fused backend loaded as itself (no fallback) and its worst cosine is at least
//! `min(threshold, reference at the same dtype - slack)`: as close to F32 as 0.9999 (F16) /
//! 0.999 (BF16), or no further from it than candle at the same dtype. The fused backend with
//! cuBLASLt's tanh-GELU epilogue is measured too (F16; reported, not required).

use std::fmt;

use candle_core::{DType, Device};

use crate::model::cuda::host::steps::GeluMode;
use crate::model::{
    self, GpuBackend, LoadOptions, Model, ModelError, ModelFiles, Output, PackedBatch,
    SentenceTransformerConfig, Want,
};

/// One model to check.
pub struct ModelCase {
    pub name: String,
    pub files: ModelFiles,
    pub st: SentenceTransformerConfig,
}

/// Worst cosines of one dtype.
#[derive(Debug, Clone, Default)]
pub struct DtypeCheck {
    pub dtype: &'static str,
    /// The fused backend against the F32 reference.
    pub fused: f64,
    /// The reference backend at this dtype against F32 (what candle achieves).
    pub reference: f64,
    /// The fused backend against the reference at the same dtype.
    pub fused_vs_reference: f64,
    /// The fused backend with the tanh-GELU epilogue against F32 (F16 only).
    pub fused_tanh: Option<f64>,
    pub required: f64,
    pub error: Option<String>,
}

impl DtypeCheck {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.fused >= self.required
    }
}

#[derive(Debug, Clone, Default)]
pub struct ModelResult {
    pub name: String,
    pub tokens: usize,
    pub sequences: usize,
    pub dtypes: Vec<DtypeCheck>,
    pub error: Option<String>,
}

impl ModelResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && !self.dtypes.is_empty() && self.dtypes.iter().all(|d| d.passed())
    }
}

#[derive(Debug, Clone, Default)]
pub struct ModelCheckReport {
    pub models: Vec<ModelResult>,
    pub setup_error: Option<String>,
}

impl ModelCheckReport {
    pub fn passed(&self) -> bool {
        self.setup_error.is_none()
            && !self.models.is_empty()
            && self.models.iter().all(ModelResult::passed)
    }

    /// The worst fused cosine of a dtype over every model (None if none ran).
    pub fn worst(&self, dtype: &str) -> Option<f64> {
        self.models
            .iter()
            .flat_map(|m| &m.dtypes)
            .filter(|d| d.dtype == dtype && d.error.is_none())
            .map(|d| d.fused)
            .reduce(f64::min)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let models: Vec<serde_json::Value> = self
            .models
            .iter()
            .map(|m| {
                let dtypes: Vec<serde_json::Value> = m
                    .dtypes
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "dtype": d.dtype, "fused_min_cos": d.fused,
                            "reference_min_cos": d.reference,
                            "fused_vs_reference_min_cos": d.fused_vs_reference,
                            "fused_tanh_min_cos": d.fused_tanh, "required": d.required,
                            "error": d.error, "passed": d.passed(),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": m.name, "tokens": m.tokens, "sequences": m.sequences,
                    "dtypes": dtypes, "error": m.error, "passed": m.passed(),
                })
            })
            .collect();
        serde_json::json!({
            "models": models, "setup_error": self.setup_error, "passed": self.passed(),
            "worst_fused_f16": self.worst("float16"), "worst_fused_bf16": self.worst("bfloat16"),
        })
    }
}

impl fmt::Display for ModelCheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "whole-model check: fused vs reference backend, worst cosine vs F32"
        )?;
        if let Some(e) = &self.setup_error {
            writeln!(f, "SETUP FAILED: {e}")?;
        }
        for m in &self.models {
            if let Some(e) = &m.error {
                writeln!(f, "FAIL {:<34} {e}", m.name)?;
                continue;
            }
            for d in &m.dtypes {
                let status = if d.passed() { "ok  " } else { "FAIL" };
                write!(
                    f,
                    "{status} {:<34} {:<8} fused {:.6}  reference {:.6}  fused-vs-ref {:.6}  (need {:.6}; {} seqs, {} tokens)",
                    m.name, d.dtype, d.fused, d.reference, d.fused_vs_reference, d.required,
                    m.sequences, m.tokens
                )?;
                if let Some(t) = d.fused_tanh {
                    write!(f, "  tanh-GELU {t:.6}")?;
                }
                if let Some(e) = &d.error {
                    write!(f, "  error: {e}")?;
                }
                writeln!(f)?;
            }
        }
        writeln!(
            f,
            "{} models: {}",
            self.models.len(),
            if self.passed() { "PASSED" } else { "FAILED" }
        )
    }
}

/// Sequence lengths of the check batch (capped at the model's maximum).
const LENGTHS: [usize; 9] = [1, 7, 64, 65, 130, 3, 33, 200, 511];

fn batch(max_len: usize, vocab: usize) -> PackedBatch {
    let mut b = PackedBatch::with_capacity(LENGTHS.len(), 1024);
    let mut s = 0x5eed_u64;
    for &l in &LENGTHS {
        let ids: Vec<u32> = (0..l.clamp(1, max_len.max(1)))
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % vocab.max(1) as u64) as u32
            })
            .collect();
        b.push(&ids, &[]);
    }
    b
}

/// Every compared row of a batch's outputs: each token's hidden state, then each pooled
/// vector or score row.
fn rows(out: &[Output], width_tokens: usize) -> Vec<Vec<f32>> {
    let mut v = Vec::new();
    for o in out {
        if let Some(t) = &o.tokens {
            v.extend(t.chunks(width_tokens.max(1)).map(<[f32]>::to_vec));
        }
        if let Some(p) = o.pooled.as_ref().or(o.scores.as_ref()) {
            v.push(p.clone());
        }
    }
    v
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if a.len() != b.len() || !ab.is_finite() || !aa.is_finite() || !bb.is_finite() {
        return f64::NAN;
    }
    if aa == 0.0 && bb == 0.0 {
        return 1.0;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
}

/// Worst cosine over paired rows (NaN, which fails every threshold, when they do not pair).
fn worst(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::NAN;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| cosine(x, y))
        .fold(1.0, |m: f64, c| {
            if m.is_nan() || c.is_nan() {
                f64::NAN
            } else {
                m.min(c)
            }
        })
}

fn load(
    case: &ModelCase,
    device: &Device,
    dtype: DType,
    gpu: GpuBackend,
    gelu: GeluMode,
) -> Result<Box<dyn Model>, ModelError> {
    let opts = LoadOptions {
        device: device.clone(),
        dtype,
        gpu_backend: gpu,
        fused_gelu: gelu,
        ..LoadOptions::cpu()
    };
    model::load(&case.files, &case.st, &opts)
}

fn forward(m: &dyn Model, b: &PackedBatch) -> Result<Vec<Vec<f32>>, ModelError> {
    let a = m.summary().available;
    let want = Want {
        tokens: a.tokens,
        pooled: a.pooled,
        scores: a.scores && !a.pooled,
        ..Want::NONE
    };
    let out = m.run(b, &vec![want; b.len()], &mut || {})?;
    Ok(rows(&out, m.summary().hidden_size))
}

fn fused_rows(
    case: &ModelCase,
    device: &Device,
    dtype: DType,
    gelu: GeluMode,
    b: &PackedBatch,
) -> Result<Vec<Vec<f32>>, ModelError> {
    let m = load(case, device, dtype, GpuBackend::Fused, gelu)?;
    if m.summary().backend != "fused-cuda" {
        return Err(ModelError::Unsupported(format!(
            "the fused backend refused the model (loaded on `{}`; the log says why)",
            m.summary().backend
        )));
    }
    forward(m.as_ref(), b)
}

fn check_dtype(
    case: &ModelCase,
    device: &Device,
    dtype: DType,
    b: &PackedBatch,
    yardstick: &[Vec<f32>],
) -> DtypeCheck {
    let (name, threshold, slack): (&'static str, f64, f64) = match dtype {
        DType::BF16 => ("bfloat16", 0.999, 5e-3),
        _ => ("float16", 0.9999, 5e-4),
    };
    let mut d = DtypeCheck {
        dtype: name,
        ..Default::default()
    };
    let mut run = || -> Result<(), ModelError> {
        let reference = {
            let m = load(case, device, dtype, GpuBackend::Reference, GeluMode::Exact)?;
            forward(m.as_ref(), b)?
        };
        d.reference = worst(&reference, yardstick);
        d.required = threshold.min(d.reference - slack);
        let fused = fused_rows(case, device, dtype, GeluMode::Exact, b)?;
        d.fused = worst(&fused, yardstick);
        d.fused_vs_reference = worst(&fused, &reference);
        if dtype == DType::F16 {
            let tanh = fused_rows(case, device, dtype, GeluMode::Tanh, b)?;
            d.fused_tanh = Some(worst(&tanh, yardstick));
        }
        Ok(())
    };
    if let Err(e) = run() {
        d.error = Some(e.to_string());
    }
    d
}

/// Runs every case on GPU `ordinal`; never panics on a model that fails (it is reported).
pub fn check_models(ordinal: usize, cases: &[ModelCase]) -> ModelCheckReport {
    let mut report = ModelCheckReport::default();
    let device = match Device::new_cuda(ordinal) {
        Ok(d) => d,
        Err(e) => {
            report.setup_error = Some(format!("opening cuda:{ordinal}: {e}"));
            return report;
        }
    };
    for case in cases {
        let mut r = ModelResult {
            name: case.name.clone(),
            ..Default::default()
        };
        let f32_rows = load(
            case,
            &device,
            DType::F32,
            GpuBackend::Reference,
            GeluMode::Exact,
        )
        .and_then(|m| {
            let s = m.summary();
            let b = batch(s.max_positions.min(512), s.vocab_size);
            r.tokens = b.tokens();
            r.sequences = b.len();
            Ok((forward(m.as_ref(), &b)?, b))
        });
        match f32_rows {
            Ok((yardstick, b)) => {
                for dtype in [DType::F16, DType::BF16] {
                    r.dtypes
                        .push(check_dtype(case, &device, dtype, &b, &yardstick));
                }
            }
            Err(e) => r.error = Some(format!("the F32 reference: {e}")),
        }
        report.models.push(r);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosines_pair_rows_and_fail_on_nan() {
        let a = vec![vec![1.0, 0.0], vec![0.0, 2.0]];
        let b = vec![vec![2.0, 0.0], vec![0.0, 1.0]];
        assert!((worst(&a, &b) - 1.0).abs() < 1e-12);
        let c = vec![vec![1.0, 0.0], vec![f32::NAN, 1.0]];
        assert!(worst(&a, &c).is_nan());
        let first_nan = vec![vec![f32::NAN, 0.0], vec![0.0, 1.0]];
        assert!(worst(&a, &first_nan).is_nan(), "a NaN is never forgotten");
        assert!(worst(&a, &a[..1]).is_nan());
        let d = vec![vec![1.0, 0.0], vec![1.0, 1.0]];
        assert!((worst(&a, &d) - 0.5f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn the_batch_mixes_lengths_within_the_model() {
        let b = batch(128, 100);
        assert_eq!(b.len(), LENGTHS.len());
        assert_eq!(b.longest(), 128);
        assert!(b.ids.iter().all(|&i| i < 100));
    }
}
