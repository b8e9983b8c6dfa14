//! What one linear layer `post(activation(x · Wᵀ + b))` becomes on the fused backend: the
//! cuBLASLt epilogue, whether the GEMM accumulates into a copy of the residual, an activation
//! pass, a GLU pass, and the residual / norm step, decided from the layer's [`Activation`],
//! [`Post`](crate::model::layers::Post) kind and bias alone, so the mapping is tested here
//! without a GPU.
//!
//! Why these choices: cuBLASLt fuses a bias and tanh-GELU (not erf-GELU, not a row
//! reduction), and `beta = 1` adds the previous contents of the output; everything else runs
//! on our kernels (`bias_act`, `glu`, the fused norms, whose stored residual sum doubles as a
//! plain residual add).

use crate::model::cuda::oracle::act::Act;
use crate::model::cuda::oracle::gemm::Epilogue;
use crate::model::layers::{Activation, Gate};

/// How erf-GELU ("gelu") layers run: exact by default (bias epilogue, then our erf kernel), or
/// cuBLASLt's tanh-GELU epilogue like TEI (one pass less; its accuracy cost is measured on the
/// GPU, `spotinfer selftest` and tests/gpu/run.sh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GeluMode {
    #[default]
    Exact,
    Tanh,
}

impl GeluMode {
    pub fn name(self) -> &'static str {
        match self {
            GeluMode::Exact => "exact",
            GeluMode::Tanh => "tanh",
        }
    }
}

/// The shape of a layer's `Post`, without its operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostKind {
    None,
    Residual,
    Norm,
    ResidualNorm,
    NormResidual,
}

/// What follows the GEMM (and the activation or GLU pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostStep {
    None,
    /// `out = norm(out (+ residual))` in place (`add_norm_inplace`).
    Norm {
        residual: bool,
    },
    /// `out = out + residual`: the pre-norm kernel's stored sum (its normalised output goes to
    /// a scratch buffer).
    AddResidual,
    /// `out = norm(out)`, then `out = out + residual` (Gemma's sandwich norm).
    NormThenAdd,
}

/// The launches of one linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearSteps {
    /// The GEMM's epilogue (`Bias` / `GeluTanhBias` need the layer's bias).
    pub gemm: Epilogue,
    /// Copy the residual into the output first and let the GEMM add it (`beta = 1`).
    pub accumulate: bool,
    /// An activation pass over the GEMM's output (bias already added).
    pub act: Option<Act>,
    /// A gated layer: the GEMM writes `[rows, 2 I]` to a scratch buffer, then `glu` (gate first)
    /// writes `[rows, I]` with this activation on the gate.
    pub glu: Option<Act>,
    pub post: PostStep,
}

/// Why a layer cannot run on the fused kernels (the backend reports it as unsupported).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the fused CUDA backend has no kernel for {0}")]
pub struct NoKernel(pub String);

fn pointwise(a: Activation, gelu: GeluMode) -> Result<Option<Act>, NoKernel> {
    Ok(match a {
        Activation::None => None,
        Activation::Relu => Some(Act::Relu),
        Activation::Gelu => Some(match gelu {
            GeluMode::Exact => Act::GeluErf,
            GeluMode::Tanh => Act::GeluTanh,
        }),
        Activation::GeluTanh => Some(Act::GeluTanh),
        Activation::Silu => Some(Act::Silu),
        Activation::Tanh => Some(Act::Tanh),
        Activation::Log1pRelu => return Err(NoKernel("log(1 + relu(x)) (SPLADE)".into())),
        Activation::Glu(_) => None,
    })
}

fn gate(g: Gate, gelu: GeluMode) -> Act {
    match g {
        Gate::Gelu if gelu == GeluMode::Tanh => Act::GeluTanh,
        Gate::Gelu => Act::GeluErf,
        Gate::GeluTanh => Act::GeluTanh,
        Gate::Silu => Act::Silu,
    }
}

/// The post step when the residual cannot be added inside the GEMM.
fn post_step(post: PostKind) -> PostStep {
    match post {
        PostKind::None => PostStep::None,
        PostKind::Residual => PostStep::AddResidual,
        PostKind::Norm => PostStep::Norm { residual: false },
        PostKind::ResidualNorm => PostStep::Norm { residual: true },
        PostKind::NormResidual => PostStep::NormThenAdd,
    }
}

/// The launches for `post(activation(x · Wᵀ + b))`.
pub fn linear_steps(
    activation: Activation,
    has_bias: bool,
    post: PostKind,
    gelu: GeluMode,
) -> Result<LinearSteps, NoKernel> {
    let bias_epilogue = if has_bias {
        Epilogue::Bias
    } else {
        Epilogue::None
    };
    if let Activation::Glu(g) = activation {
        return Ok(LinearSteps {
            gemm: bias_epilogue,
            accumulate: false,
            act: None,
            glu: Some(gate(g, gelu)),
            post: post_step(post),
        });
    }
    Ok(match pointwise(activation, gelu)? {
        // Identity: a lone residual is added inside the GEMM (beta = 1).
        None if post == PostKind::Residual => LinearSteps {
            gemm: bias_epilogue,
            accumulate: true,
            act: None,
            glu: None,
            post: PostStep::None,
        },
        None => LinearSteps {
            gemm: bias_epilogue,
            accumulate: false,
            act: None,
            glu: None,
            post: post_step(post),
        },
        // cuBLASLt's GELU epilogue is the tanh form and needs a bias.
        Some(Act::GeluTanh) if has_bias => LinearSteps {
            gemm: Epilogue::GeluTanhBias,
            accumulate: false,
            act: None,
            glu: None,
            post: post_step(post),
        },
        Some(a) => LinearSteps {
            gemm: bias_epilogue,
            accumulate: false,
            act: Some(a),
            glu: None,
            post: post_step(post),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(a: Activation, bias: bool, post: PostKind, gelu: GeluMode) -> LinearSteps {
        linear_steps(a, bias, post, gelu).unwrap()
    }

    #[test]
    fn bert_layers_map_to_bias_epilogues_and_fused_norms() {
        // QKV: a plain GEMM with the bias epilogue.
        let qkv = steps(Activation::None, true, PostKind::None, GeluMode::Exact);
        assert_eq!(qkv.gemm, Epilogue::Bias);
        assert!(!qkv.accumulate && qkv.act.is_none() && qkv.glu.is_none());
        assert_eq!(qkv.post, PostStep::None);
        // Attention output / FFN-2: bias epilogue, then residual + LayerNorm in one kernel.
        let out = steps(
            Activation::None,
            true,
            PostKind::ResidualNorm,
            GeluMode::Exact,
        );
        assert_eq!(out.gemm, Epilogue::Bias);
        assert_eq!(out.post, PostStep::Norm { residual: true });
        // FFN-1 with erf-GELU: exact by default (bias epilogue + our erf kernel) ...
        let ffn = steps(Activation::Gelu, true, PostKind::None, GeluMode::Exact);
        assert_eq!((ffn.gemm, ffn.act), (Epilogue::Bias, Some(Act::GeluErf)));
        // ... or cuBLASLt's tanh-GELU epilogue when asked (TEI's choice).
        let tanh = steps(Activation::Gelu, true, PostKind::None, GeluMode::Tanh);
        assert_eq!((tanh.gemm, tanh.act), (Epilogue::GeluTanhBias, None));
    }

    #[test]
    fn tanh_gelu_uses_the_epilogue_only_with_a_bias() {
        let with = steps(Activation::GeluTanh, true, PostKind::None, GeluMode::Exact);
        assert_eq!((with.gemm, with.act), (Epilogue::GeluTanhBias, None));
        let without = steps(Activation::GeluTanh, false, PostKind::None, GeluMode::Exact);
        assert_eq!(
            (without.gemm, without.act),
            (Epilogue::None, Some(Act::GeluTanh))
        );
    }

    #[test]
    fn a_lone_residual_accumulates_in_the_gemm_unless_an_activation_runs_first() {
        // ModernBERT / pre-norm decoders: `x = x + attn_out(ctx)`.
        let pre = steps(Activation::None, false, PostKind::Residual, GeluMode::Exact);
        assert!(pre.accumulate);
        assert_eq!((pre.gemm, pre.post), (Epilogue::None, PostStep::None));
        let pre_b = steps(Activation::None, true, PostKind::Residual, GeluMode::Exact);
        assert!(pre_b.accumulate);
        assert_eq!(pre_b.gemm, Epilogue::Bias);
        // The residual comes after the activation: it cannot be added inside the GEMM.
        let act = steps(Activation::Relu, true, PostKind::Residual, GeluMode::Exact);
        assert!(!act.accumulate);
        assert_eq!(act.act, Some(Act::Relu));
        assert_eq!(act.post, PostStep::AddResidual);
        let gelu = steps(
            Activation::GeluTanh,
            true,
            PostKind::Residual,
            GeluMode::Exact,
        );
        assert_eq!(gelu.gemm, Epilogue::GeluTanhBias);
        assert_eq!(gelu.post, PostStep::AddResidual);
    }

    #[test]
    fn every_post_kind_has_its_step() {
        for (post, want) in [
            (PostKind::None, PostStep::None),
            (PostKind::Norm, PostStep::Norm { residual: false }),
            (PostKind::ResidualNorm, PostStep::Norm { residual: true }),
            (PostKind::NormResidual, PostStep::NormThenAdd),
            (PostKind::Residual, PostStep::AddResidual),
        ] {
            let s = steps(Activation::Tanh, true, post, GeluMode::Exact);
            assert_eq!(s.post, want, "{post:?}");
            assert_eq!(s.act, Some(Act::Tanh));
        }
    }

    #[test]
    fn gated_layers_run_the_gemm_then_glu_gate_first() {
        for (g, gelu, want) in [
            (Gate::Silu, GeluMode::Exact, Act::Silu),
            (Gate::Gelu, GeluMode::Exact, Act::GeluErf),
            (Gate::Gelu, GeluMode::Tanh, Act::GeluTanh),
            (Gate::GeluTanh, GeluMode::Exact, Act::GeluTanh),
        ] {
            let s = steps(Activation::Glu(g), false, PostKind::None, gelu);
            assert_eq!(s.glu, Some(want));
            assert_eq!((s.gemm, s.act, s.accumulate), (Epilogue::None, None, false));
        }
        let res = steps(
            Activation::Glu(Gate::Silu),
            true,
            PostKind::Residual,
            GeluMode::Exact,
        );
        assert_eq!(res.gemm, Epilogue::Bias);
        assert_eq!(res.post, PostStep::AddResidual);
    }

    #[test]
    fn splade_log1p_relu_has_no_kernel() {
        let e = linear_steps(Activation::Log1pRelu, true, PostKind::None, GeluMode::Exact);
        assert!(e.unwrap_err().to_string().contains("SPLADE"));
    }
}
