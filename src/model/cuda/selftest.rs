//! GPU self-tests: every kernel (both attention variants) and the GEMM wrapper against the CPU
//! references of [`crate::model::cuda::oracle`] on random inputs at edge shapes.
//!
//! - [`selftest`]: the full matrix (1 token; 1 and 512 sequences; lengths 1, 7, 64, 511, 512,
//!   2048; head dims 32/64/128 (+256 simple); causal or not; GQA groups 1/2/4/8; windows;
//!   relative bias; F16 and BF16; each GEMM epilogue). Run by `spotinfer selftest` on a GPU.
//! - [`verified_kernels`]: a sub-second subset the fused backend runs at load; it uses the
//!   tensor-core attention only where it agrees with the reference, else the simple one, and
//!   reports when the fused backend must not be used at all.
//!
//! Every output buffer is surrounded by guard elements and pre-filled with NaN: an element the
//! kernel fails to write, or a write outside the output, fails the case. Inputs sit between NaN
//! guards too, so a read past an input's end poisons the result instead of passing silently.
//!
//! Over 500 lines on purpose: the case matrix and each kernel's check against its CPU
//! reference (one function per kernel); it runs only on a GPU and every case reports alone.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut};
use candle_core::cuda_backend::CudaDevice;

use super::blas::{Gemm, LinearShape};
use super::kernels::{
    AttentionVariant, DeviceFlag, EmbedLayerNorm, EmbeddingTables, FusedKernels, KernelFloat,
    NormWeights, QkNorm, RelativeBias, SeqLayout, MMA_HEAD_DIMS, SIMPLE_HEAD_DIMS,
};
use super::Result;
use crate::model::cuda::oracle::act::{self, Act};
use crate::model::cuda::oracle::attention::{self as attn_ref, AttentionConfig, RelBias, Window};
use crate::model::cuda::oracle::gemm::{self, Epilogue};
use crate::model::cuda::oracle::norm::{self, EmbedInputs, LayerNormRef, NormInputs, NormKind};
use crate::model::cuda::oracle::pool::{self, PoolMode};
use crate::model::cuda::oracle::rope::{self, QkNormRef, RopeConfig};
use crate::model::cuda::oracle::{compare, cu_from_lengths, Comparison, Dt, TestRng, Tolerance};

/// What [`selftest`] runs.
#[derive(Debug, Clone)]
pub struct SelftestOptions {
    /// Only the start-up subset ([`verified_kernels`]' cases).
    pub quick: bool,
    /// Run only cases whose name contains this.
    pub filter: Option<String>,
    /// Seed of the random inputs (cases are reproducible per seed).
    pub seed: u64,
    /// Include the cuBLASLt GEMM cases.
    pub gemm: bool,
}

impl Default for SelftestOptions {
    fn default() -> Self {
        SelftestOptions {
            quick: false,
            filter: None,
            seed: 0x5eed,
            gemm: true,
        }
    }
}

/// One case: a kernel configuration compared against its reference.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    /// Comparisons of each output (name, result).
    pub checks: Vec<(String, Comparison)>,
    /// Launch error, guard violation or other failure outside the numeric comparison.
    pub error: Option<String>,
    pub millis: f64,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && !self.checks.is_empty()
            && self.checks.iter().all(|(_, c)| c.passed())
    }
}

/// Everything a self-test run found; `Display` prints one line per case.
#[derive(Debug, Clone, Default)]
pub struct SelftestReport {
    pub device: String,
    /// Set when the run could not start (no device, the PTX failed to load, ...).
    pub setup_error: Option<String>,
    pub cases: Vec<CaseResult>,
    pub seconds: f64,
}

impl SelftestReport {
    pub fn passed(&self) -> bool {
        self.setup_error.is_none()
            && !self.cases.is_empty()
            && self.cases.iter().all(CaseResult::passed)
    }

    pub fn failed_cases(&self) -> impl Iterator<Item = &CaseResult> {
        self.cases.iter().filter(|c| !c.passed())
    }

    fn case_passed(&self, name: &str) -> bool {
        self.cases.iter().any(|c| c.name == name && c.passed())
    }
}

impl fmt::Display for SelftestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "spotinfer CUDA kernel self-test on {}", self.device)?;
        if let Some(e) = &self.setup_error {
            writeln!(f, "SETUP FAILED: {e}")?;
        }
        for c in &self.cases {
            let status = if c.passed() { "ok  " } else { "FAIL" };
            write!(f, "{status} {:<64} {:>8.1} ms", c.name, c.millis)?;
            for (what, cmp) in &c.checks {
                write!(
                    f,
                    "  [{what}: max_abs {:.2e} max_rel {:.2e}",
                    cmp.max_abs, cmp.max_rel
                )?;
                if !cmp.passed() {
                    write!(f, " {cmp}")?;
                }
                write!(f, "]")?;
            }
            if let Some(e) = &c.error {
                write!(f, "  error: {e}")?;
            }
            writeln!(f)?;
        }
        let failed = self.failed_cases().count();
        writeln!(
            f,
            "{} cases, {} failed, {:.1} s: {}",
            self.cases.len(),
            failed,
            self.seconds,
            if self.passed() { "PASSED" } else { "FAILED" }
        )
    }
}

/// Runs the self-test on GPU `device_ordinal` (its own stream). Never panics on a GPU fault:
/// a failing launch is reported in its case (and usually every later case, since a faulting
/// kernel poisons the CUDA context).
pub fn selftest(device_ordinal: usize, opts: &SelftestOptions) -> SelftestReport {
    let start = Instant::now();
    let mut report = SelftestReport {
        device: format!("cuda:{device_ordinal}"),
        ..Default::default()
    };
    let dev = match CudaDevice::new_with_stream(device_ordinal) {
        Ok(d) => d,
        Err(e) => {
            report.setup_error = Some(format!("opening cuda:{device_ordinal}: {e}"));
            return report;
        }
    };
    let stream = dev.cuda_stream();
    if let Ok(name) = stream.context().name() {
        let cc = stream
            .context()
            .compute_capability()
            .map_or(String::new(), |(a, b)| format!(" sm_{a}{b}"));
        report.device = format!("cuda:{device_ordinal} ({name}{cc})");
    }
    let kernels = match FusedKernels::load_on(stream.clone()) {
        Ok(k) => k,
        Err(e) => {
            report.setup_error = Some(e.to_string());
            return report;
        }
    };
    let gemm = if opts.gemm {
        match Gemm::new(stream.clone()) {
            Ok(g) => Some(g),
            Err(e) => {
                report.setup_error = Some(format!("cuBLASLt: {e}"));
                return report;
            }
        }
    } else {
        None
    };
    let cases = if opts.quick {
        quick_cases()
    } else {
        full_cases()
    };
    let ctx = Ctx {
        k: &kernels,
        gemm: gemm.as_ref(),
        stream,
    };
    run_cases(&ctx, &cases, opts, &mut report);
    report.seconds = start.elapsed().as_secs_f64();
    report
}

/// What the fused backend may use on this device, decided by [`verified_kernels`].
#[derive(Debug, Clone)]
pub struct KernelChoice {
    attention: HashMap<(Dt, usize), AttentionVariant>,
    /// Every non-attention kernel and the GEMM agreed with the reference.
    pub others_ok: bool,
    pub report: SelftestReport,
}

impl KernelChoice {
    /// The attention variant to use for this dtype and head dim, if any passed.
    pub fn attention_variant(&self, dt: Dt, head_dim: usize) -> Option<AttentionVariant> {
        self.attention.get(&(dt, head_dim)).copied()
    }

    /// Whether the fused backend may run a model with this dtype and head dim at all.
    pub fn usable(&self, dt: Dt, head_dim: usize) -> bool {
        self.others_ok && self.attention_variant(dt, head_dim).is_some()
    }
}

/// The start-up check (sub-second after the PTX is JIT-compiled): a few small shapes per kernel
/// and per (dtype, head dim) for both attention variants. Logs its choice.
pub fn verified_kernels(dev: &CudaDevice) -> KernelChoice {
    let start = Instant::now();
    let stream = dev.cuda_stream();
    let loaded =
        FusedKernels::load_on(stream.clone()).and_then(|k| Ok((k, Gemm::new(stream.clone())?)));
    let choice = match loaded {
        Ok((k, g)) => verified_kernels_with(&k, &g),
        Err(e) => KernelChoice {
            attention: HashMap::new(),
            others_ok: false,
            report: SelftestReport {
                device: "cuda".into(),
                setup_error: Some(e.to_string()),
                ..Default::default()
            },
        },
    };
    log_choice(&choice, start.elapsed().as_secs_f64());
    choice
}

/// [`verified_kernels`] with kernels and a GEMM the caller already loaded (and keeps using).
pub fn verified_kernels_with(kernels: &FusedKernels, gemm: &Gemm) -> KernelChoice {
    let start = Instant::now();
    let mut report = SelftestReport {
        device: "cuda".into(),
        ..Default::default()
    };
    let ctx = Ctx {
        k: kernels,
        gemm: Some(gemm),
        stream: kernels.stream().clone(),
    };
    let cases = quick_cases();
    run_cases(
        &ctx,
        &cases,
        &SelftestOptions {
            quick: true,
            ..Default::default()
        },
        &mut report,
    );
    report.seconds = start.elapsed().as_secs_f64();

    let mut attention = HashMap::new();
    let mut others_ok = report.setup_error.is_none();
    for case in &cases {
        if let Case::Attention(a) = case {
            continue_if_attention(&report, a, &mut attention);
        } else if !report.case_passed(&case.name()) {
            others_ok = false;
        }
    }
    KernelChoice {
        attention,
        others_ok,
        report,
    }
}

fn continue_if_attention(
    report: &SelftestReport,
    a: &AttnCase,
    chosen: &mut HashMap<(Dt, usize), AttentionVariant>,
) {
    // A (dtype, head dim) gets a variant only if every quick case of that variant passed.
    let key = (a.dt, a.head_dim);
    let passed = |v: AttentionVariant| {
        report
            .cases
            .iter()
            .filter(|c| c.name.starts_with(&attn_prefix(a.dt, a.head_dim, v)))
            .all(CaseResult::passed)
            && report
                .cases
                .iter()
                .any(|c| c.name.starts_with(&attn_prefix(a.dt, a.head_dim, v)))
    };
    let pick = if a.variants.contains(&AttentionVariant::TensorCore)
        && passed(AttentionVariant::TensorCore)
    {
        Some(AttentionVariant::TensorCore)
    } else if passed(AttentionVariant::Simple) {
        Some(AttentionVariant::Simple)
    } else {
        None
    };
    match pick {
        Some(v) => {
            chosen.insert(key, v);
        }
        None => {
            chosen.remove(&key);
        }
    }
}

/// Logs what [`verified_kernels_with`] decided (`verified_kernels` does it itself).
pub fn log_choice(choice: &KernelChoice, seconds: f64) {
    let mut picks: Vec<String> = choice
        .attention
        .iter()
        .map(|((dt, d), v)| format!("{}/d{d}={}", dt.name(), v.name()))
        .collect();
    picks.sort();
    if choice.others_ok && !choice.attention.is_empty() {
        tracing::info!(seconds, attention = %picks.join(" "), "fused CUDA kernels verified against the CPU reference");
    } else {
        tracing::warn!(seconds, attention = %picks.join(" "), "fused CUDA kernels failed verification; the fused backend must not be used");
    }
    for c in choice.report.failed_cases() {
        tracing::warn!(case = %c.name, error = ?c.error, checks = ?c.checks.iter().map(|(n, c)| format!("{n}: {c}")).collect::<Vec<_>>(), "kernel self-check failed");
    }
    if let Some(e) = &choice.report.setup_error {
        tracing::warn!(error = %e, "kernel self-check could not run");
    }
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct AttnCase {
    dt: Dt,
    head_dim: usize,
    n_q_heads: usize,
    n_kv_heads: usize,
    window: Window,
    bias: bool,
    lengths: Vec<usize>,
    label: &'static str,
    variants: Vec<AttentionVariant>,
}

#[derive(Debug, Clone)]
struct RopeCase {
    dt: Dt,
    cfg: RopeConfig,
    norm: bool,
    unit_offset: bool,
    rows: usize,
    max_pos: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NormMode {
    /// fused_norm with separate out (and sum_out when the case has a residual)
    Separate,
    /// add_norm_inplace (post-norm)
    InPlaceX,
    /// add_norm_residual_inplace (pre-norm)
    InPlaceResidual,
}

#[derive(Debug, Clone)]
struct NormCase {
    dt: Dt,
    kind: NormKind,
    rows: usize,
    width: usize,
    bias: bool,
    residual: bool,
    beta: bool,
    mode: NormMode,
    /// Start inputs one element past a 16-byte boundary (the scalar path).
    misalign: bool,
}

#[derive(Debug, Clone)]
struct EmbedCase {
    dt: Dt,
    width: usize,
    rows: usize,
    position: bool,
    token_type: bool,
    ln: bool,
    scale: f32,
    bad_ids: bool,
}

#[derive(Debug, Clone)]
enum Case {
    Attention(AttnCase),
    Rope(RopeCase),
    Norm(NormCase),
    Embed(EmbedCase),
    Glu {
        dt: Dt,
        rows: usize,
        inter: usize,
        act: Act,
        gate_first: bool,
    },
    BiasAct {
        dt: Dt,
        rows: usize,
        width: usize,
        act: Act,
        bias: bool,
        in_place: bool,
    },
    Pool {
        dt: Dt,
        lengths: Vec<usize>,
        width: usize,
        mode: PoolMode,
    },
    NonFinite {
        dt: Option<Dt>,
        n: usize,
        poison: Option<(usize, f32)>,
        misalign: bool,
    },
    Gemm {
        dt: Dt,
        shape: LinearShape,
        epilogue: Epilogue,
        accumulate: bool,
    },
}

fn attn_prefix(dt: Dt, d: usize, v: AttentionVariant) -> String {
    format!("attention/{}/{}/d{d}/", v.name(), dt.name())
}

fn window_name(w: Window) -> String {
    let side = |v: Option<usize>| v.map_or("inf".to_string(), |x| x.to_string());
    match (w.left, w.right) {
        (None, None) => "full".into(),
        (None, Some(0)) => "causal".into(),
        _ => format!("win{}-{}", side(w.left), side(w.right)),
    }
}

impl Case {
    /// Case names (one per attention variant for attention cases).
    fn names(&self) -> Vec<String> {
        match self {
            Case::Attention(a) => a
                .variants
                .iter()
                .map(|&v| {
                    format!(
                        "{}{}/h{}kv{}/{}{}",
                        attn_prefix(a.dt, a.head_dim, v),
                        a.label,
                        a.n_q_heads,
                        a.n_kv_heads,
                        window_name(a.window),
                        if a.bias { "/relbias" } else { "" }
                    )
                })
                .collect(),
            _ => vec![self.name()],
        }
    }

    fn name(&self) -> String {
        match self {
            Case::Attention(_) => self.names().join(","),
            Case::Rope(r) => format!(
                "rope/{}/h{}+{}/d{}/rot{}{}{}/rows{}",
                r.dt.name(),
                r.cfg.n_q_heads,
                r.cfg.n_k_heads,
                r.cfg.head_dim,
                r.cfg.rotary_dim,
                if r.cfg.interleaved { "/gptj" } else { "/neox" },
                if r.norm {
                    if r.unit_offset {
                        "/qknorm1p"
                    } else {
                        "/qknorm"
                    }
                } else {
                    ""
                },
                r.rows
            ),
            Case::Norm(n) => format!(
                "norm/{}/{}/{}x{}{}{}{}/{:?}{}",
                n.dt.name(),
                match n.kind {
                    NormKind::LayerNorm => "layernorm",
                    NormKind::RmsNorm { unit_offset: false } => "rmsnorm",
                    NormKind::RmsNorm { unit_offset: true } => "rmsnorm1p",
                },
                n.rows,
                n.width,
                if n.bias { "/bias" } else { "" },
                if n.residual { "/residual" } else { "" },
                if n.beta { "/beta" } else { "" },
                n.mode,
                if n.misalign { "/misaligned" } else { "" }
            ),
            Case::Embed(e) => format!(
                "embed/{}/{}x{}{}{}{}{}{}",
                e.dt.name(),
                e.rows,
                e.width,
                if e.position { "/pos" } else { "" },
                if e.token_type { "/type" } else { "" },
                if e.ln { "/ln" } else { "" },
                if e.scale != 1.0 { "/scaled" } else { "" },
                if e.bad_ids { "/bad-ids" } else { "" }
            ),
            Case::Glu {
                dt,
                rows,
                inter,
                act,
                gate_first,
            } => format!(
                "glu/{}/{rows}x{inter}/{}/{}",
                dt.name(),
                act.name(),
                if *gate_first {
                    "gate-first"
                } else {
                    "gate-second"
                }
            ),
            Case::BiasAct {
                dt,
                rows,
                width,
                act,
                bias,
                in_place,
            } => format!(
                "bias_act/{}/{rows}x{width}/{}{}{}",
                dt.name(),
                act.name(),
                if *bias { "/bias" } else { "" },
                if *in_place { "/in-place" } else { "" }
            ),
            Case::Pool {
                dt,
                lengths,
                width,
                mode,
            } => {
                format!(
                    "pool/{}/{}/n{}/w{width}/max_len{}",
                    dt.name(),
                    mode.name(),
                    lengths.len(),
                    lengths.iter().max().unwrap_or(&0)
                )
            }
            Case::NonFinite {
                dt,
                n,
                poison,
                misalign,
            } => format!(
                "nonfinite/{}/n{n}/{}{}",
                dt.map_or("f32", |d| d.name()),
                poison.map_or("clean".to_string(), |(i, v)| format!("{v}@{i}")),
                if *misalign { "/misaligned" } else { "" }
            ),
            Case::Gemm {
                dt,
                shape,
                epilogue,
                accumulate,
            } => format!(
                "gemm/{}/{}x{}x{}/{}{}",
                dt.name(),
                shape.rows,
                shape.in_features,
                shape.out_features,
                epilogue.name(),
                if *accumulate { "/accumulate" } else { "" }
            ),
        }
    }
}

fn mixed_lengths() -> Vec<usize> {
    vec![1, 7, 64, 65, 130, 511, 512, 3]
}

fn many_lengths(rng_seed: u64, n: usize, max: usize) -> Vec<usize> {
    let mut rng = TestRng::new(rng_seed);
    (0..n).map(|_| rng.range(1, max)).collect()
}

#[allow(clippy::too_many_arguments)]
fn attn(
    dt: Dt,
    d: usize,
    hq: usize,
    hkv: usize,
    window: Window,
    bias: bool,
    lengths: Vec<usize>,
    label: &'static str,
) -> Case {
    let variants = [AttentionVariant::TensorCore, AttentionVariant::Simple]
        .into_iter()
        .filter(|v| v.supports_head_dim(d))
        .collect();
    Case::Attention(AttnCase {
        dt,
        head_dim: d,
        n_q_heads: hq,
        n_kv_heads: hkv,
        window,
        bias,
        lengths,
        label,
        variants,
    })
}

fn quick_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in Dt::ALL {
        for d in SIMPLE_HEAD_DIMS {
            v.push(attn(
                dt,
                d,
                4,
                2,
                Window::FULL,
                false,
                vec![1, 7, 70, 3],
                "quick",
            ));
            v.push(attn(
                dt,
                d,
                4,
                1,
                Window::CAUSAL,
                true,
                vec![9, 66],
                "quick",
            ));
            v.push(attn(
                dt,
                d,
                2,
                2,
                Window {
                    left: Some(5),
                    right: Some(3),
                },
                false,
                vec![80],
                "quick",
            ));
        }
        v.push(Case::Rope(RopeCase {
            dt,
            cfg: RopeConfig {
                n_q_heads: 4,
                n_k_heads: 2,
                head_dim: 64,
                rotary_dim: 64,
                interleaved: false,
                attention_scaling: 1.0,
            },
            norm: true,
            unit_offset: false,
            rows: 9,
            max_pos: 4000,
        }));
        for (width, misalign) in [(384, false), (1000, true)] {
            v.push(Case::Norm(NormCase {
                dt,
                kind: NormKind::LayerNorm,
                rows: 5,
                width,
                bias: true,
                residual: true,
                beta: true,
                mode: NormMode::Separate,
                misalign,
            }));
        }
        v.push(Case::Norm(NormCase {
            dt,
            kind: NormKind::RmsNorm { unit_offset: false },
            rows: 3,
            width: 2048,
            bias: false,
            residual: true,
            beta: false,
            mode: NormMode::InPlaceResidual,
            misalign: false,
        }));
        v.push(Case::Embed(EmbedCase {
            dt,
            width: 384,
            rows: 11,
            position: true,
            token_type: true,
            ln: true,
            scale: 1.0,
            bad_ids: true,
        }));
        v.push(Case::Glu {
            dt,
            rows: 3,
            inter: 200,
            act: Act::Silu,
            gate_first: true,
        });
        v.push(Case::BiasAct {
            dt,
            rows: 3,
            width: 300,
            act: Act::GeluErf,
            bias: true,
            in_place: false,
        });
        v.push(Case::Pool {
            dt,
            lengths: vec![1, 0, 17, 40],
            width: 100,
            mode: PoolMode::Mean,
        });
        v.push(Case::NonFinite {
            dt: Some(dt),
            n: 1000,
            poison: Some((997, f32::INFINITY)),
            misalign: false,
        });
        v.push(Case::Gemm {
            dt,
            shape: LinearShape {
                rows: 9,
                in_features: 64,
                out_features: 96,
            },
            epilogue: Epilogue::Bias,
            accumulate: false,
        });
    }
    v
}

fn full_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let win = |l, r| Window {
        left: Some(l),
        right: Some(r),
    };
    for dt in Dt::ALL {
        // --- attention ---
        for d in MMA_HEAD_DIMS {
            v.push(attn(dt, d, 2, 1, Window::FULL, false, vec![1], "1tok"));
            v.push(attn(
                dt,
                d,
                4,
                4,
                Window::FULL,
                false,
                mixed_lengths(),
                "mixed",
            ));
            v.push(attn(
                dt,
                d,
                8,
                2,
                Window::CAUSAL,
                false,
                mixed_lengths(),
                "mixed",
            ));
            v.push(attn(
                dt,
                d,
                8,
                1,
                win(16, 16),
                true,
                mixed_lengths(),
                "mixed",
            ));
            v.push(attn(dt, d, 4, 2, Window::FULL, true, vec![7], "len7"));
        }
        v.push(attn(dt, 32, 8, 8, Window::FULL, false, vec![64], "len64"));
        v.push(attn(
            dt,
            32,
            4,
            4,
            Window::CAUSAL,
            true,
            vec![511],
            "len511",
        ));
        v.push(attn(
            dt,
            64,
            12,
            12,
            Window::FULL,
            true,
            vec![512],
            "len512",
        ));
        v.push(attn(
            dt,
            64,
            4,
            2,
            Window::CAUSAL,
            false,
            vec![2048],
            "len2048",
        ));
        v.push(attn(
            dt,
            64,
            4,
            4,
            Window::FULL,
            false,
            many_lengths(11, 512, 40),
            "512seqs",
        ));
        v.push(attn(
            dt,
            64,
            8,
            8,
            Window::FULL,
            true,
            many_lengths(12, 512, 130),
            "512seqs",
        ));
        v.push(attn(dt, 128, 4, 1, win(100, 0), false, vec![511], "len511"));
        v.push(attn(
            dt,
            128,
            2,
            2,
            Window::FULL,
            false,
            vec![2048],
            "len2048",
        ));
        v.push(attn(
            dt,
            128,
            8,
            4,
            win(0, 5),
            false,
            vec![300, 2],
            "len300",
        ));
        v.push(attn(
            dt,
            256,
            2,
            1,
            Window::FULL,
            false,
            mixed_lengths(),
            "mixed",
        ));
        v.push(attn(
            dt,
            256,
            4,
            2,
            Window::CAUSAL,
            false,
            vec![300],
            "len300",
        ));

        // --- rope ---
        let rc = |q, k, d, rot, inter, scale| RopeConfig {
            n_q_heads: q,
            n_k_heads: k,
            head_dim: d,
            rotary_dim: rot,
            interleaved: inter,
            attention_scaling: scale,
        };
        for (cfg, norm, unit, rows) in [
            (rc(8, 2, 64, 64, false, 1.0), false, false, 37),
            (rc(4, 4, 128, 64, false, 1.0), false, false, 5),
            (rc(4, 2, 64, 32, true, 1.0), false, false, 5),
            (rc(16, 8, 128, 128, false, 1.0), true, false, 33),
            (rc(4, 1, 256, 256, false, 1.25), true, true, 3),
            (rc(4, 2, 128, 0, false, 1.0), true, false, 7),
            (rc(2, 2, 80, 80, false, 1.0), false, false, 1),
        ] {
            v.push(Case::Rope(RopeCase {
                dt,
                cfg,
                norm,
                unit_offset: unit,
                rows,
                max_pos: 32767,
            }));
        }

        // --- norms ---
        for width in [1, 7, 384, 768, 1000, 1024, 1025, 3072, 4096, 8192] {
            let rows = if width >= 4096 { 3 } else { 17 };
            v.push(Case::Norm(NormCase {
                dt,
                kind: NormKind::LayerNorm,
                rows,
                width,
                bias: true,
                residual: true,
                beta: true,
                mode: NormMode::Separate,
                misalign: false,
            }));
            v.push(Case::Norm(NormCase {
                dt,
                kind: NormKind::RmsNorm { unit_offset: false },
                rows,
                width,
                bias: false,
                residual: true,
                beta: false,
                mode: NormMode::Separate,
                misalign: false,
            }));
        }
        v.push(Case::Norm(NormCase {
            dt,
            kind: NormKind::LayerNorm,
            rows: 1,
            width: 768,
            bias: false,
            residual: false,
            beta: false,
            mode: NormMode::Separate,
            misalign: false,
        }));
        v.push(Case::Norm(NormCase {
            dt,
            kind: NormKind::LayerNorm,
            rows: 9,
            width: 768,
            bias: true,
            residual: true,
            beta: true,
            mode: NormMode::Separate,
            misalign: true,
        }));
        v.push(Case::Norm(NormCase {
            dt,
            kind: NormKind::LayerNorm,
            rows: 9,
            width: 1024,
            bias: true,
            residual: true,
            beta: true,
            mode: NormMode::InPlaceX,
            misalign: false,
        }));
        v.push(Case::Norm(NormCase {
            dt,
            kind: NormKind::RmsNorm { unit_offset: true },
            rows: 9,
            width: 2304,
            bias: false,
            residual: true,
            beta: false,
            mode: NormMode::InPlaceResidual,
            misalign: false,
        }));
        v.push(Case::Norm(NormCase {
            dt,
            kind: NormKind::RmsNorm { unit_offset: false },
            rows: 4,
            width: 4000,
            bias: false,
            residual: false,
            beta: false,
            mode: NormMode::Separate,
            misalign: true,
        }));

        // --- embeddings ---
        v.push(Case::Embed(EmbedCase {
            dt,
            width: 384,
            rows: 70,
            position: true,
            token_type: true,
            ln: true,
            scale: 1.0,
            bad_ids: false,
        }));
        v.push(Case::Embed(EmbedCase {
            dt,
            width: 768,
            rows: 9,
            position: true,
            token_type: true,
            ln: true,
            scale: 1.0,
            bad_ids: true,
        }));
        v.push(Case::Embed(EmbedCase {
            dt,
            width: 1024,
            rows: 5,
            position: true,
            token_type: false,
            ln: true,
            scale: 1.0,
            bad_ids: false,
        }));
        v.push(Case::Embed(EmbedCase {
            dt,
            width: 640,
            rows: 9,
            position: false,
            token_type: false,
            ln: false,
            scale: dt.round(640f32.sqrt()),
            bad_ids: false,
        }));
        v.push(Case::Embed(EmbedCase {
            dt,
            width: 7,
            rows: 3,
            position: true,
            token_type: true,
            ln: true,
            scale: 1.0,
            bad_ids: true,
        }));

        // --- activations ---
        for act in [Act::GeluErf, Act::GeluTanh, Act::Silu] {
            v.push(Case::Glu {
                dt,
                rows: 37,
                inter: 1536,
                act,
                gate_first: true,
            });
        }
        v.push(Case::Glu {
            dt,
            rows: 5,
            inter: 7,
            act: Act::GeluTanh,
            gate_first: false,
        });
        v.push(Case::Glu {
            dt,
            rows: 1,
            inter: 3072,
            act: Act::Silu,
            gate_first: false,
        });
        for act in Act::ALL {
            v.push(Case::BiasAct {
                dt,
                rows: 9,
                width: 768,
                act,
                bias: true,
                in_place: false,
            });
        }
        v.push(Case::BiasAct {
            dt,
            rows: 5,
            width: 13,
            act: Act::GeluErf,
            bias: true,
            in_place: true,
        });
        v.push(Case::BiasAct {
            dt,
            rows: 3,
            width: 3072,
            act: Act::Relu,
            bias: false,
            in_place: true,
        });

        // --- pooling ---
        for mode in PoolMode::ALL {
            v.push(Case::Pool {
                dt,
                lengths: vec![1, 0, 7, 64, 511, 3],
                width: 384,
                mode,
            });
        }
        v.push(Case::Pool {
            dt,
            lengths: vec![2048],
            width: 1000,
            mode: PoolMode::Mean,
        });
        v.push(Case::Pool {
            dt,
            lengths: many_lengths(13, 512, 64),
            width: 7,
            mode: PoolMode::Max,
        });

        // --- non-finite scan ---
        v.push(Case::NonFinite {
            dt: Some(dt),
            n: 100_003,
            poison: None,
            misalign: false,
        });
        v.push(Case::NonFinite {
            dt: Some(dt),
            n: 100_003,
            poison: Some((100_001, f32::NAN)),
            misalign: false,
        });
        v.push(Case::NonFinite {
            dt: Some(dt),
            n: 4099,
            poison: Some((17, f32::NEG_INFINITY)),
            misalign: true,
        });
        v.push(Case::NonFinite {
            dt: Some(dt),
            n: 1,
            poison: Some((0, f32::INFINITY)),
            misalign: false,
        });

        // --- GEMM ---
        for rows in [1, 7, 64, 300] {
            for epilogue in Epilogue::ALL {
                v.push(Case::Gemm {
                    dt,
                    shape: LinearShape {
                        rows,
                        in_features: 384,
                        out_features: 1152,
                    },
                    epilogue,
                    accumulate: false,
                });
            }
            v.push(Case::Gemm {
                dt,
                shape: LinearShape {
                    rows,
                    in_features: 1024,
                    out_features: 1024,
                },
                epilogue: Epilogue::Bias,
                accumulate: true,
            });
        }
        v.push(Case::Gemm {
            dt,
            shape: LinearShape {
                rows: 5,
                in_features: 33,
                out_features: 17,
            },
            epilogue: Epilogue::GeluTanhBias,
            accumulate: false,
        });
        v.push(Case::Gemm {
            dt,
            shape: LinearShape {
                rows: 64,
                in_features: 4096,
                out_features: 1024,
            },
            epilogue: Epilogue::None,
            accumulate: true,
        });
    }
    v.push(Case::NonFinite {
        dt: None,
        n: 10_001,
        poison: None,
        misalign: false,
    });
    v.push(Case::NonFinite {
        dt: None,
        n: 10_001,
        poison: Some((10_000, f32::NAN)),
        misalign: true,
    });
    v
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

struct Ctx<'a> {
    k: &'a FusedKernels,
    gemm: Option<&'a Gemm>,
    stream: Arc<CudaStream>,
}

fn run_cases(ctx: &Ctx<'_>, cases: &[Case], opts: &SelftestOptions, report: &mut SelftestReport) {
    for (i, case) in cases.iter().enumerate() {
        let names = case.names();
        if let Some(f) = &opts.filter {
            if !names.iter().any(|n| n.contains(f.as_str())) {
                continue;
            }
        }
        if matches!(case, Case::Gemm { .. }) && ctx.gemm.is_none() {
            continue;
        }
        let seed = opts.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        let t0 = Instant::now();
        let results = run_case(ctx, case, seed);
        let per = t0.elapsed().as_secs_f64() * 1e3 / names.len().max(1) as f64;
        match results {
            Ok(rs) => {
                for (name, (checks, error)) in names.into_iter().zip(rs) {
                    report.cases.push(CaseResult {
                        name,
                        checks,
                        error,
                        millis: per,
                    });
                }
            }
            Err(e) => {
                for name in names {
                    report.cases.push(CaseResult {
                        name,
                        checks: Vec::new(),
                        error: Some(e.to_string()),
                        millis: per,
                    });
                }
            }
        }
    }
}

type Outcome = (Vec<(String, Comparison)>, Option<String>);

fn run_case(ctx: &Ctx<'_>, case: &Case, seed: u64) -> Result<Vec<Outcome>> {
    macro_rules! by_dt {
        ($dt:expr, $f:ident ( $($arg:expr),* )) => {
            match $dt {
                Dt::F16 => $f::<half::f16>($($arg),*),
                Dt::BF16 => $f::<half::bf16>($($arg),*),
            }
        };
    }
    let one = |r: Result<Outcome>| r.map(|o| vec![o]);
    match case {
        Case::Attention(a) => by_dt!(a.dt, run_attention(ctx, a, seed)),
        Case::Rope(r) => one(by_dt!(r.dt, run_rope(ctx, r, seed))),
        Case::Norm(n) => one(by_dt!(n.dt, run_norm(ctx, n, seed))),
        Case::Embed(e) => one(by_dt!(e.dt, run_embed(ctx, e, seed))),
        Case::Glu {
            dt,
            rows,
            inter,
            act,
            gate_first,
        } => one(by_dt!(
            *dt,
            run_glu(ctx, *rows, *inter, *act, *gate_first, seed)
        )),
        Case::BiasAct {
            dt,
            rows,
            width,
            act,
            bias,
            in_place,
        } => one(by_dt!(
            *dt,
            run_bias_act(ctx, *rows, *width, *act, *bias, *in_place, seed)
        )),
        Case::Pool {
            dt,
            lengths,
            width,
            mode,
        } => one(by_dt!(*dt, run_pool(ctx, lengths, *width, *mode, seed))),
        Case::NonFinite {
            dt,
            n,
            poison,
            misalign,
        } => one(match dt {
            Some(Dt::F16) => run_nonfinite::<half::f16>(ctx, *n, *poison, *misalign),
            Some(Dt::BF16) => run_nonfinite::<half::bf16>(ctx, *n, *poison, *misalign),
            None => run_nonfinite::<f32>(ctx, *n, *poison, *misalign),
        }),
        Case::Gemm {
            dt,
            shape,
            epilogue,
            accumulate,
        } => one(by_dt!(
            *dt,
            run_gemm(ctx, *shape, *epilogue, *accumulate, seed)
        )),
    }
}

/// Guard elements on each side of every test buffer (a multiple of 8: keeps 16-byte alignment).
const GUARD: usize = 64;
/// NaN in both F16 and BF16.
const SENTINEL: u16 = 0x7fff;

/// A device buffer of `n` elements between NaN guards, optionally starting one element past
/// the aligned position.
struct Buf<T> {
    s: CudaSlice<T>,
    off: usize,
    n: usize,
}

impl<T: KernelFloat> Buf<T> {
    fn new(
        stream: &Arc<CudaStream>,
        data: Option<&[f32]>,
        n: usize,
        misalign: bool,
    ) -> Result<Self> {
        let off = GUARD + misalign as usize;
        let mut host = vec![T::from_bits(SENTINEL); off + n + GUARD];
        if let Some(d) = data {
            for (h, &x) in host[off..off + n].iter_mut().zip(d) {
                *h = T::from_f32(x);
            }
        }
        Ok(Buf {
            s: stream.clone_htod(&host)?,
            off,
            n,
        })
    }
    fn input(stream: &Arc<CudaStream>, data: &[f32]) -> Result<Self> {
        Self::new(stream, Some(data), data.len(), false)
    }
    fn output(stream: &Arc<CudaStream>, n: usize) -> Result<Self> {
        Self::new(stream, None, n, false)
    }
    fn view(&self) -> CudaView<'_, T> {
        self.s.slice(self.off..self.off + self.n)
    }
    fn view_mut(&mut self) -> CudaViewMut<'_, T> {
        self.s.slice_mut(self.off..self.off + self.n)
    }
    /// The contents and whether the guards are intact.
    fn read(&self, stream: &Arc<CudaStream>) -> Result<(Vec<f32>, bool)> {
        let all = stream.clone_dtoh(&self.s)?;
        let guards_ok = all[..self.off]
            .iter()
            .chain(&all[self.off + self.n..])
            .all(|x| x.to_bits() == SENTINEL);
        Ok((
            all[self.off..self.off + self.n]
                .iter()
                .map(|x| x.to_f32())
                .collect(),
            guards_ok,
        ))
    }
}

fn guard_error(what: &str, ok: bool, error: &mut Option<String>) {
    if !ok && error.is_none() {
        *error = Some(format!("wrote outside `{what}`"));
    }
}

fn run_attention<T: KernelFloat>(ctx: &Ctx<'_>, a: &AttnCase, seed: u64) -> Result<Vec<Outcome>> {
    let mut rng = TestRng::new(seed);
    let cfg = AttentionConfig {
        n_q_heads: a.n_q_heads,
        n_kv_heads: a.n_kv_heads,
        head_dim: a.head_dim,
        scale: 1.0 / (a.head_dim as f32).sqrt(),
        window: a.window,
    };
    let cu = cu_from_lengths(&a.lengths);
    let total: usize = a.lengths.iter().sum();
    // q, k ~ U(-2, 2): logits with a standard deviation ~1.3, peaked enough that a missing or
    // extra key changes the output well beyond the tolerance.
    let qkv = rng.vec(total * cfg.qkv_width(), 2.0, a.dt);
    let (num_buckets, max_distance) = (32, 128);
    let table: Vec<f32> = (0..a.n_q_heads * num_buckets)
        .map(|_| rng.sym(2.0))
        .collect();
    let expanded = attn_ref::expand_relative_bias(&table, a.n_q_heads, num_buckets, max_distance)
        .map_err(|m| super::invalid("selftest", m))?;
    let bias_ref = a.bias.then_some(RelBias {
        table: &expanded,
        max_distance,
    });
    let want = attn_ref::attention(&qkv, &cu, &cfg, bias_ref);

    let seqs = SeqLayout::upload(&ctx.stream, &cu)?;
    let bias_dev = if a.bias {
        Some(RelativeBias::upload(
            &ctx.stream,
            &table,
            a.n_q_heads,
            num_buckets,
            max_distance,
        )?)
    } else {
        None
    };
    let qkv_dev = Buf::<T>::input(&ctx.stream, &qkv)?;
    let tol = a.dt.tolerance();
    let mut outcomes = Vec::new();
    for &variant in &a.variants {
        let mut out = Buf::<T>::output(&ctx.stream, total * cfg.out_width())?;
        let launched = ctx.k.attention(
            variant,
            &qkv_dev.view(),
            &mut out.view_mut(),
            &seqs,
            &cfg,
            bias_dev.as_ref(),
        );
        if let Err(e) = launched {
            outcomes.push((Vec::new(), Some(e.to_string())));
            continue;
        }
        ctx.stream.synchronize()?;
        let (got, guards) = out.read(&ctx.stream)?;
        let mut error = None;
        guard_error("out", guards, &mut error);
        outcomes.push((vec![("out".to_string(), compare(&got, &want, tol))], error));
    }
    Ok(outcomes)
}

fn run_rope<T: KernelFloat>(ctx: &Ctx<'_>, r: &RopeCase, seed: u64) -> Result<Outcome> {
    let mut rng = TestRng::new(seed);
    let cfg = r.cfg;
    let d = cfg.head_dim;
    // The fused QKV layout: q heads, k heads, then as many value heads as key heads.
    let stride = (cfg.n_q_heads + 2 * cfg.n_k_heads) * d;
    let mut qkv = rng.vec(r.rows * stride, 2.0, r.dt);
    let mut positions: Vec<u32> = (0..r.rows)
        .map(|_| rng.range(0, r.max_pos) as u32)
        .collect();
    if let Some(p) = positions.first_mut() {
        *p = 0;
    }
    let inv_freq = rope::default_inv_freq(10000.0, cfg.rotary_dim.max(2));
    let qw = rng.vec(d, 1.5, r.dt);
    let kw = rng.vec(d, 1.5, r.dt);
    let eps = 1e-6;
    let norm_ref = r.norm.then_some(QkNormRef {
        q_weight: &qw,
        k_weight: &kw,
        eps,
        unit_offset: r.unit_offset,
    });
    let input = qkv.clone();
    rope::rope(&mut qkv, stride, &positions, &inv_freq, &cfg, norm_ref);

    let mut buf = Buf::<T>::input(&ctx.stream, &input)?;
    let pos_dev = ctx.stream.clone_htod(&positions)?;
    let inv_dev = ctx.stream.clone_htod(&inv_freq)?;
    let qw_dev = Buf::<T>::input(&ctx.stream, &qw)?;
    let kw_dev = Buf::<T>::input(&ctx.stream, &kw)?;
    let (qv, kv) = (qw_dev.view(), kw_dev.view());
    let norm = QkNorm {
        q_weight: &qv,
        k_weight: &kv,
        eps,
        unit_offset: r.unit_offset,
    };
    let norm = r.norm.then_some(&norm);
    if cfg.rotary_dim == 0 {
        let n = norm.ok_or_else(|| super::invalid("selftest", "rotary_dim 0 without a norm"))?;
        ctx.k.head_rms_norm(
            &mut buf.view_mut(),
            r.rows,
            stride,
            cfg.n_q_heads,
            cfg.n_k_heads,
            d,
            n,
        )?;
    } else {
        ctx.k.rope_qk(
            &mut buf.view_mut(),
            r.rows,
            stride,
            &pos_dev.as_view(),
            &inv_dev.as_view(),
            &cfg,
            norm,
        )?;
    }
    ctx.stream.synchronize()?;
    let (got, guards) = buf.read(&ctx.stream)?;
    let mut error = None;
    guard_error("qkv", guards, &mut error);
    // Value heads must come back bit for bit.
    let v0 = (cfg.n_q_heads + cfg.n_k_heads) * d;
    if (0..r.rows).any(|row| {
        (v0..stride).any(|c| got[row * stride + c].to_bits() != input[row * stride + c].to_bits())
    }) {
        error.get_or_insert_with(|| "value heads were modified".to_string());
    }
    Ok((
        vec![("qkv".into(), compare(&got, &qkv, r.dt.tolerance()))],
        error,
    ))
}

fn run_norm<T: KernelFloat>(ctx: &Ctx<'_>, c: &NormCase, seed: u64) -> Result<Outcome> {
    let mut rng = TestRng::new(seed);
    let n = c.rows * c.width;
    let dt = c.dt;
    // A mean far from 0 (real pre-norm rows have one) exercises the mean subtraction.
    let x: Vec<f32> = (0..n).map(|_| dt.round(2.5 + rng.sym(3.0))).collect();
    let bias = rng.vec(c.width, 0.5, dt);
    let residual = rng.vec(n, 3.0, dt);
    let gamma = rng.vec(c.width, 1.5, dt);
    let beta = rng.vec(c.width, 0.5, dt);
    let eps = 1e-5;
    let inputs = NormInputs {
        x: &x,
        bias: c.bias.then_some(&bias[..]),
        residual: c.residual.then_some(&residual[..]),
        gamma: &gamma,
        beta: c.beta.then_some(&beta[..]),
        width: c.width,
        kind: c.kind,
        eps,
    };
    let (want, want_sum) = norm::fused_norm(dt, &inputs);

    let s = &ctx.stream;
    let mut x_dev = Buf::<T>::new(s, Some(&x), n, c.misalign)?;
    let b_dev = Buf::<T>::new(s, Some(&bias), c.width, c.misalign)?;
    let mut r_dev = Buf::<T>::new(s, Some(&residual), n, c.misalign)?;
    let g_dev = Buf::<T>::input(s, &gamma)?;
    let be_dev = Buf::<T>::input(s, &beta)?;
    let (gv, bev) = (g_dev.view(), be_dev.view());
    let w = NormWeights {
        gamma: &gv,
        beta: c.beta.then_some(&bev),
        kind: c.kind,
        eps,
    };
    let bv = b_dev.view();
    let bias_v = c.bias.then_some(&bv);
    let tol = dt.tolerance();
    let mut checks = Vec::new();
    let mut error = None;
    match c.mode {
        NormMode::Separate => {
            let mut out = Buf::<T>::new(s, None, n, c.misalign)?;
            let mut sum = Buf::<T>::output(s, n)?;
            let rv = r_dev.view();
            let mut sv = sum.view_mut();
            ctx.k.fused_norm(
                &x_dev.view(),
                bias_v,
                c.residual.then_some(&rv),
                &w,
                &mut out.view_mut(),
                c.residual.then_some(&mut sv),
                c.rows,
                c.width,
            )?;
            s.synchronize()?;
            let (got, ok) = out.read(s)?;
            guard_error("out", ok, &mut error);
            checks.push(("out".to_string(), compare(&got, &want, tol)));
            if c.residual {
                let (got, ok) = sum.read(s)?;
                guard_error("sum_out", ok, &mut error);
                // The stored sum is rounded exactly like the reference: demand equality.
                checks.push((
                    "sum_out".to_string(),
                    compare(
                        &got,
                        &want_sum,
                        Tolerance {
                            atol: 0.0,
                            rtol: 0.0,
                        },
                    ),
                ));
            }
        }
        NormMode::InPlaceX => {
            let rv = r_dev.view();
            ctx.k.add_norm_inplace(
                &mut x_dev.view_mut(),
                bias_v,
                c.residual.then_some(&rv),
                &w,
                c.rows,
                c.width,
            )?;
            s.synchronize()?;
            let (got, ok) = x_dev.read(s)?;
            guard_error("x", ok, &mut error);
            checks.push(("x".to_string(), compare(&got, &want, tol)));
        }
        NormMode::InPlaceResidual => {
            let mut out = Buf::<T>::output(s, n)?;
            ctx.k.add_norm_residual_inplace(
                &x_dev.view(),
                bias_v,
                &mut r_dev.view_mut(),
                &w,
                &mut out.view_mut(),
                c.rows,
                c.width,
            )?;
            s.synchronize()?;
            let (got, ok) = out.read(s)?;
            guard_error("out", ok, &mut error);
            checks.push(("out".to_string(), compare(&got, &want, tol)));
            let (got, ok) = r_dev.read(s)?;
            guard_error("residual", ok, &mut error);
            checks.push((
                "residual".to_string(),
                compare(
                    &got,
                    &want_sum,
                    Tolerance {
                        atol: 0.0,
                        rtol: 0.0,
                    },
                ),
            ));
        }
    }
    Ok((checks, error))
}

fn run_embed<T: KernelFloat>(ctx: &Ctx<'_>, e: &EmbedCase, seed: u64) -> Result<Outcome> {
    let mut rng = TestRng::new(seed);
    let (w, dt) = (e.width, e.dt);
    let (vocab, n_pos, n_type) = (1000, 512, 2);
    let word: Vec<f32> = (0..vocab * w)
        .map(|_| dt.round(1.5 + rng.sym(1.0)))
        .collect();
    let pos = rng.vec(n_pos * w, 0.5, dt);
    let typ = rng.vec(n_type * w, 0.5, dt);
    let gamma = rng.vec(w, 1.5, dt);
    let beta = rng.vec(w, 0.5, dt);
    let mut ids: Vec<u32> = (0..e.rows)
        .map(|_| rng.range(0, vocab - 1) as u32)
        .collect();
    let mut pos_ids: Vec<u32> = (0..e.rows).map(|i| (i % n_pos) as u32).collect();
    let mut type_ids: Vec<u32> = (0..e.rows).map(|_| rng.range(0, 1) as u32).collect();
    if e.bad_ids && e.rows >= 3 {
        ids[1] = vocab as u32 + 5;
        pos_ids[2] = u32::MAX;
        type_ids[0] = 2;
    }
    let eps = 1e-12;
    let inputs = EmbedInputs {
        word: &word,
        position: e.position.then_some(&pos[..]),
        token_type: e.token_type.then_some(&typ[..]),
        width: w,
        ids: &ids,
        position_ids: &pos_ids,
        type_ids: &type_ids,
        scale: e.scale,
        layer_norm: e.ln.then_some(LayerNormRef {
            gamma: &gamma,
            beta: Some(&beta),
            eps,
        }),
    };
    let (want, want_err) = norm::embed(dt, &inputs);

    let s = &ctx.stream;
    let (wd, pd, td, gd, bd) = (
        Buf::<T>::input(s, &word)?,
        Buf::<T>::input(s, &pos)?,
        Buf::<T>::input(s, &typ)?,
        Buf::<T>::input(s, &gamma)?,
        Buf::<T>::input(s, &beta)?,
    );
    let (wv, pv, tv, gv, bv) = (wd.view(), pd.view(), td.view(), gd.view(), bd.view());
    let tables = EmbeddingTables {
        word: &wv,
        position: e.position.then_some(&pv),
        token_type: e.token_type.then_some(&tv),
        width: w,
    };
    let ids_d = s.clone_htod(&ids)?;
    let pos_d = s.clone_htod(&pos_ids)?;
    let typ_d = s.clone_htod(&type_ids)?;
    let (iv, piv, tiv) = (ids_d.as_view(), pos_d.as_view(), typ_d.as_view());
    let mut out = Buf::<T>::output(s, e.rows * w)?;
    let mut flag = DeviceFlag::new(s)?;
    ctx.k.embed(
        &tables,
        &iv,
        e.position.then_some(&piv),
        e.token_type.then_some(&tiv),
        e.scale,
        e.ln.then_some(&EmbedLayerNorm {
            gamma: &gv,
            beta: Some(&bv),
            eps,
        }),
        &mut out.view_mut(),
        &mut flag,
        e.rows,
    )?;
    s.synchronize()?;
    let (got, ok) = out.read(s)?;
    let mut error = None;
    guard_error("out", ok, &mut error);
    let got_err = flag.read()?;
    if got_err != want_err {
        error.get_or_insert_with(|| format!("error flags {got_err:#x}, expected {want_err:#x}"));
    }
    Ok((
        vec![("out".into(), compare(&got, &want, dt.tolerance()))],
        error,
    ))
}

fn run_glu<T: KernelFloat>(
    ctx: &Ctx<'_>,
    rows: usize,
    inter: usize,
    a: Act,
    gate_first: bool,
    seed: u64,
) -> Result<Outcome> {
    let mut rng = TestRng::new(seed);
    let dt = T::DT;
    let x = rng.vec(rows * 2 * inter, 4.0, dt);
    let want = act::glu(&x, inter, a, gate_first);
    let s = &ctx.stream;
    let xd = Buf::<T>::input(s, &x)?;
    let mut out = Buf::<T>::output(s, rows * inter)?;
    ctx.k
        .glu(&xd.view(), &mut out.view_mut(), rows, inter, a, gate_first)?;
    s.synchronize()?;
    let (got, ok) = out.read(s)?;
    let mut error = None;
    guard_error("out", ok, &mut error);
    Ok((
        vec![("out".into(), compare(&got, &want, dt.tolerance()))],
        error,
    ))
}

#[allow(clippy::too_many_arguments)]
fn run_bias_act<T: KernelFloat>(
    ctx: &Ctx<'_>,
    rows: usize,
    width: usize,
    a: Act,
    bias: bool,
    in_place: bool,
    seed: u64,
) -> Result<Outcome> {
    let mut rng = TestRng::new(seed);
    let dt = T::DT;
    let x = rng.vec(rows * width, 4.0, dt);
    let b = rng.vec(width, 1.0, dt);
    let want = act::bias_act(dt, &x, bias.then_some(&b[..]), width, a);
    let s = &ctx.stream;
    let mut xd = Buf::<T>::input(s, &x)?;
    let bd = Buf::<T>::input(s, &b)?;
    let bv = bd.view();
    let mut error = None;
    let got = if in_place {
        ctx.k
            .bias_act_inplace(&mut xd.view_mut(), bias.then_some(&bv), rows, width, a)?;
        s.synchronize()?;
        let (got, ok) = xd.read(s)?;
        guard_error("x", ok, &mut error);
        got
    } else {
        let mut out = Buf::<T>::output(s, rows * width)?;
        ctx.k.bias_act(
            &xd.view(),
            bias.then_some(&bv),
            &mut out.view_mut(),
            rows,
            width,
            a,
        )?;
        s.synchronize()?;
        let (got, ok) = out.read(s)?;
        guard_error("out", ok, &mut error);
        got
    };
    Ok((
        vec![("out".into(), compare(&got, &want, dt.tolerance()))],
        error,
    ))
}

fn run_pool<T: KernelFloat>(
    ctx: &Ctx<'_>,
    lengths: &[usize],
    width: usize,
    mode: PoolMode,
    seed: u64,
) -> Result<Outcome> {
    let mut rng = TestRng::new(seed);
    let dt = T::DT;
    let cu = cu_from_lengths(lengths);
    let total: usize = lengths.iter().sum();
    let x = rng.vec(total * width, 4.0, dt);
    let want = pool::pool(&x, &cu, width, mode);
    let s = &ctx.stream;
    let xd = Buf::<T>::input(s, &x)?;
    let seqs = SeqLayout::upload(s, &cu)?;
    let n = lengths.len() * width;
    let mut out = s.clone_htod(&vec![f32::NAN; n + 2 * GUARD])?;
    ctx.k.pool(
        &xd.view(),
        &seqs,
        width,
        mode,
        &mut out.slice_mut(GUARD..GUARD + n),
    )?;
    s.synchronize()?;
    let all = s.clone_dtoh(&out)?;
    let mut error = None;
    guard_error(
        "out",
        all[..GUARD]
            .iter()
            .chain(&all[GUARD + n..])
            .all(|v| v.is_nan()),
        &mut error,
    );
    // F32 output: only the accumulation order differs from the F64 reference.
    let tol = Tolerance {
        atol: 1e-5,
        rtol: 1e-5,
    };
    Ok((
        vec![("out".into(), compare(&all[GUARD..GUARD + n], &want, tol))],
        error,
    ))
}

/// Element types of the non-finite scan test.
trait ScanTest:
    super::kernels::ScanElem
    + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits
    + Copy
    + 'static
{
    fn from_f32(x: f32) -> Self;
}
impl ScanTest for half::f16 {
    fn from_f32(x: f32) -> Self {
        half::f16::from_f32(x)
    }
}
impl ScanTest for half::bf16 {
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
}
impl ScanTest for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
}

fn run_nonfinite<E: ScanTest>(
    ctx: &Ctx<'_>,
    n: usize,
    poison: Option<(usize, f32)>,
    misalign: bool,
) -> Result<Outcome> {
    let s = &ctx.stream;
    let off = misalign as usize;
    // Finite values everywhere, including large ones just below the F16 maximum; NaN outside
    // the scanned range (the scan must not look there).
    let mut host: Vec<E> = (0..n + off + 8)
        .map(|i| E::from_f32(if i % 7 == 0 { 65504.0 } else { -1.5 }))
        .collect();
    host[off + n..]
        .iter_mut()
        .for_each(|v| *v = E::from_f32(f32::NAN));
    if off == 1 {
        host[0] = E::from_f32(f32::NAN);
    }
    if let Some((i, v)) = poison {
        host[off + i] = E::from_f32(v);
    }
    let d = s.clone_htod(&host)?;
    let mut flag = DeviceFlag::new(s)?;
    ctx.k.scan_nonfinite(&d.slice(off..off + n), &mut flag)?;
    let got = flag.read()?;
    let want = i32::from(poison.is_some());
    let error = (got != want).then(|| format!("flag {got}, expected {want}"));
    let exact = Tolerance {
        atol: 0.0,
        rtol: 0.0,
    };
    Ok((
        vec![("flag".into(), compare(&[got as f32], &[want as f32], exact))],
        error,
    ))
}

fn run_gemm<T: KernelFloat>(
    ctx: &Ctx<'_>,
    shape: LinearShape,
    epilogue: Epilogue,
    accumulate: bool,
    seed: u64,
) -> Result<Outcome> {
    let gemm = ctx
        .gemm
        .ok_or_else(|| super::invalid("selftest", "no GEMM"))?;
    let mut rng = TestRng::new(seed);
    let dt = T::DT;
    let LinearShape {
        rows,
        in_features: k,
        out_features: m,
    } = shape;
    let x = rng.vec(rows * k, 1.0, dt);
    // Weights ~ U(-a, a) with a = sqrt(3 / k): outputs of order 1, like a real layer.
    let w = rng.vec(m * k, (3.0 / k as f32).sqrt(), dt);
    let b = rng.vec(m, 0.5, dt);
    let c = rng.vec(rows * m, 1.0, dt);
    let want = gemm::linear(
        &x,
        &w,
        epilogue.has_bias().then_some(&b[..]),
        k,
        m,
        epilogue,
        accumulate.then_some((1.0, &c[..])),
    );
    let s = &ctx.stream;
    let (xd, wd, bd) = (
        Buf::<T>::input(s, &x)?,
        Buf::<T>::input(s, &w)?,
        Buf::<T>::input(s, &b)?,
    );
    let mut y = if accumulate {
        Buf::<T>::input(s, &c)?
    } else {
        Buf::<T>::output(s, rows * m)?
    };
    let bv = bd.view();
    let before = gemm.heuristic_calls();
    gemm.linear(
        &xd.view(),
        &wd.view(),
        epilogue.has_bias().then_some(&bv),
        &mut y.view_mut(),
        shape,
        epilogue,
        accumulate,
    )?;
    s.synchronize()?;
    let (got, ok) = y.read(s)?;
    let mut error = None;
    guard_error("y", ok, &mut error);
    // A second call with the same key must reuse the cached plan.
    if !accumulate {
        gemm.linear(
            &xd.view(),
            &wd.view(),
            epilogue.has_bias().then_some(&bv),
            &mut y.view_mut(),
            shape,
            epilogue,
            accumulate,
        )?;
        if gemm.heuristic_calls() > before + 1 {
            error.get_or_insert_with(|| {
                "the algorithm was searched again for the same shape".into()
            });
        }
    }
    // K-term F32 sums: allow for the rounding of the F16/BF16 output plus the accumulation.
    let tol = dt.tolerance().scaled(2.0);
    Ok((vec![("y".into(), compare(&got, &want, tol))], error))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full self-test on a real GPU (ignored by default: CI has none). Run on a GPU machine:
    /// `cargo test --release --features cuda --lib gpu_selftest -- --ignored --nocapture`
    /// (tests/gpu/selftest.sh). SPOTINFER_SELFTEST_DEVICE / _QUICK / _FILTER / _SEED adjust it.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_selftest() {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let ordinal = env("SPOTINFER_SELFTEST_DEVICE")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let opts = SelftestOptions {
            quick: env("SPOTINFER_SELFTEST_QUICK").is_some_and(|v| v != "0"),
            filter: env("SPOTINFER_SELFTEST_FILTER"),
            seed: env("SPOTINFER_SELFTEST_SEED")
                .and_then(|v| v.parse().ok())
                .unwrap_or(SelftestOptions::default().seed),
            gemm: true,
        };
        let report = selftest(ordinal, &opts);
        println!("{report}");
        assert!(report.passed(), "self-test failed");
    }

    #[test]
    fn case_names_are_unique() {
        for cases in [quick_cases(), full_cases()] {
            let mut names: Vec<String> = cases.iter().flat_map(Case::names).collect();
            let n = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), n, "duplicate case names");
            println!("{n} cases");
        }
    }

    #[test]
    fn full_matrix_covers_the_required_shapes() {
        let cases = full_cases();
        let attn: Vec<&AttnCase> = cases
            .iter()
            .filter_map(|c| {
                if let Case::Attention(a) = c {
                    Some(a)
                } else {
                    None
                }
            })
            .collect();
        for len in [1, 7, 64, 511, 512, 2048] {
            assert!(
                attn.iter().any(|a| a.lengths.contains(&len)),
                "length {len}"
            );
        }
        assert!(attn.iter().any(|a| a.lengths == [1]), "a single token");
        assert!(attn.iter().any(|a| a.lengths.len() == 512), "512 sequences");
        for d in [32, 64, 128] {
            assert!(
                attn.iter()
                    .any(|a| a.head_dim == d && a.variants.len() == 2),
                "head dim {d}"
            );
        }
        for g in [1, 2, 4, 8] {
            assert!(
                attn.iter().any(|a| a.n_q_heads / a.n_kv_heads == g),
                "GQA group {g}"
            );
        }
        for dt in Dt::ALL {
            assert!(attn.iter().any(|a| a.dt == dt && a.bias));
            assert!(attn
                .iter()
                .any(|a| a.dt == dt && a.window == Window::CAUSAL));
            assert!(attn.iter().any(|a| a.dt == dt && a.window.left.is_some()));
            for e in Epilogue::ALL {
                assert!(cases.iter().any(|c| matches!(c, Case::Gemm { dt: d, epilogue, .. } if *d == dt && *epilogue == e)));
            }
        }
    }
}
