//! NomicBERT (`nomic_bert`: nomic-embed-text v1 / v1.5, remote code `NomicBertModel`): GPT-2
//! style config keys (`n_embd`, `n_head`, `n_inner`, `n_layer`, `n_positions`), word + token
//! type embeddings then `emb_ln`, a post-norm encoder with a fused `Wqkv`, RoPE (dynamic NTK
//! past `max_trained_positions` when `rotary_scaling_factor` is set) and a gated MLP
//! `fc2(fc11(x) * act(fc12(x)))`: `fc12` is the gate.

use serde::Deserialize;

use super::encoder::{Encoder, EncoderLayer, RotaryEncoder, TokenEmbeddings};
use super::{layer_norm, table, tensor, Backbone, Facts, FamilySpec};
use crate::model::heads::Classifier;
use crate::model::layers::{Activation, Backend, DynamicNtk, Gate, Rope};
use crate::model::weights::Weights;
use crate::model::ModelError;

#[derive(Debug, Clone, Deserialize)]
struct NomicConfig {
    vocab_size: usize,
    n_embd: usize,
    n_head: usize,
    n_inner: Option<usize>,
    n_layer: usize,
    n_positions: usize,
    #[serde(default = "default_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_act")]
    activation_function: String,
    #[serde(default)]
    prenorm: bool,
    #[serde(default)]
    parallel_block: bool,
    #[serde(default)]
    causal: bool,
    #[serde(default)]
    use_rms_norm: bool,
    #[serde(default)]
    qkv_proj_bias: bool,
    #[serde(default)]
    mlp_fc1_bias: bool,
    #[serde(default)]
    mlp_fc2_bias: bool,
    #[serde(default = "default_base")]
    rotary_emb_base: f64,
    #[serde(default = "one")]
    rotary_emb_fraction: f64,
    #[serde(default)]
    rotary_emb_interleaved: bool,
    #[serde(default)]
    rotary_emb_scale_base: Option<f64>,
    #[serde(default)]
    rotary_scaling_factor: Option<f64>,
    #[serde(default = "default_trained")]
    max_trained_positions: usize,
    #[serde(default)]
    moe_every_n_layers: Option<usize>,
    #[serde(default)]
    num_heads_kv: Option<usize>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_type_vocab() -> usize {
    2
}
fn default_act() -> String {
    "swiglu".into()
}
fn default_base() -> f64 {
    10_000.0
}
fn one() -> f64 {
    1.0
}
fn default_trained() -> usize {
    2048
}

/// The MLP `activation_function` asks for.
#[derive(Debug, Clone, Copy)]
enum Mlp {
    /// `fc2(fc11(x) * gate(fc12(x)))`.
    Gated(Gate),
    /// `fc2(act(fc1(x)))`.
    Plain(Activation),
}

impl NomicConfig {
    fn parse(cfg: &serde_json::Value) -> Result<Self, ModelError> {
        let c: Self = serde_json::from_value(cfg.clone()).map_err(|e| ModelError::Corrupt {
            file: "config.json".into(),
            reason: e.to_string(),
        })?;
        let unsupported = |what: &str| Err(ModelError::Unsupported(format!("NomicBERT: {what}")));
        if c.prenorm {
            return unsupported("prenorm (only the post-norm block is supported)");
        }
        if c.parallel_block {
            return unsupported("parallel_block");
        }
        if c.causal {
            return unsupported("causal attention");
        }
        if c.use_rms_norm {
            return unsupported("use_rms_norm");
        }
        if c.rotary_emb_scale_base.is_some() {
            return unsupported("rotary_emb_scale_base (xPos rotary scaling)");
        }
        if c.moe_every_n_layers.is_some_and(|n| n > 0) {
            return unsupported("moe_every_n_layers (mixture-of-experts layers)");
        }
        if c.num_heads_kv.is_some_and(|kv| kv != c.n_head) {
            return unsupported("num_heads_kv != n_head");
        }
        if c.n_head == 0 || !c.n_embd.is_multiple_of(c.n_head) {
            return unsupported("n_embd is not a multiple of n_head");
        }
        if c.type_vocab_size == 0 {
            return unsupported("type_vocab_size 0");
        }
        let rotary = c.rotary_dim();
        if rotary == 0 || !rotary.is_multiple_of(2) || rotary > c.head_dim() {
            return unsupported(&format!(
                "rotary_emb_fraction {} (a rotary width of {rotary} of {} head features)",
                c.rotary_emb_fraction,
                c.head_dim()
            ));
        }
        c.mlp()?;
        Ok(c)
    }

    fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    fn rotary_dim(&self) -> usize {
        (self.head_dim() as f64 * self.rotary_emb_fraction) as usize
    }

    fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    fn mlp(&self) -> Result<Mlp, ModelError> {
        Ok(match self.activation_function.as_str() {
            "swiglu" => Mlp::Gated(Gate::Silu),
            "geglu" => Mlp::Gated(Gate::Gelu),
            "gelu" => Mlp::Plain(Activation::Gelu),
            "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => Mlp::Plain(Activation::GeluTanh),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "NomicBERT activation_function `{other}` (supported: swiglu, geglu, gelu, \
                     gelu_new)"
                )))
            }
        })
    }

    fn rope(&self) -> Rope {
        let mut r = Rope::new(self.rotary_emb_base, self.rotary_dim());
        r.interleaved = self.rotary_emb_interleaved;
        r.dynamic = self.rotary_scaling_factor.map(|factor| DynamicNtk {
            base: self.rotary_emb_base,
            factor,
            trained: self.max_trained_positions,
        });
        r
    }
}

/// NomicBERT in the family table.
pub struct Spec;

impl FamilySpec for Spec {
    fn facts(cfg: &serde_json::Value) -> Result<Facts, ModelError> {
        let c = NomicConfig::parse(cfg)?;
        Ok(Facts {
            hidden: c.n_embd,
            max_positions: c.n_positions,
            vocab: c.vocab_size,
        })
    }

    fn backbone<B: Backend>(
        b: &B,
        w: &mut Weights,
        cfg: &serde_json::Value,
    ) -> Result<Box<dyn Backbone<B>>, ModelError> {
        let c = NomicConfig::parse(cfg)?;
        // NomicBertForPreTraining / *ForSequenceClassification keep the backbone under `bert.`.
        if !w.use_prefix(&["", "bert."], "embeddings.word_embeddings.weight") {
            return Err(ModelError::Unsupported(
                "no embeddings.word_embeddings.weight (with or without a `bert.` prefix): not a \
                 NomicBERT checkpoint"
                    .into(),
            ));
        }
        let h = c.n_embd;
        let embeddings = TokenEmbeddings {
            word: table(b, w, "embeddings.word_embeddings.weight", c.vocab_size, h)?,
            token_type: Some(table(
                b,
                w,
                "embeddings.token_type_embeddings.weight",
                c.type_vocab_size,
                h,
            )?),
            type_vocab_size: c.type_vocab_size,
            norm: layer_norm(b, w, "emb_ln", h, c.layer_norm_epsilon)?,
        };
        let layers = (0..c.n_layer)
            .map(|l| layer(b, w, &c, l))
            .collect::<Result<Vec<_>, _>>()?;
        let activation = match c.mlp()? {
            Mlp::Gated(g) => Activation::Glu(g),
            Mlp::Plain(a) => a,
        };
        Ok(Box::new(RotaryEncoder {
            embeddings,
            encoder: Encoder {
                layers,
                heads: c.n_head,
                head_dim: c.head_dim(),
                activation,
                rope: Some(c.rope()),
                bias: None,
            },
        }))
    }

    fn classifier<B: Backend>(
        b: &B,
        w: &Weights,
        cfg: &serde_json::Value,
        labels: Vec<String>,
    ) -> Option<Result<Classifier<B>, ModelError>> {
        Some(classifier(b, w, cfg, labels))
    }
}

/// `{p}.weight` (stacked in order) with `{p}.bias` when `bias` says the checkpoint has them.
fn linear<B: Backend>(
    b: &B,
    w: &Weights,
    prefixes: &[String],
    inp: usize,
    out_each: usize,
    bias: bool,
) -> Result<B::Linear, ModelError> {
    let get = |suffix: &str, shape: &[usize]| {
        prefixes
            .iter()
            .map(|p| tensor(w, &format!("{p}.{suffix}"), shape))
            .collect::<Result<Vec<_>, _>>()
    };
    let weights = get("weight", &[out_each, inp])?;
    let biases = if bias {
        Some(get("bias", &[out_each])?)
    } else {
        None
    };
    let l = b.load_linear(&weights, biases.as_deref())?;
    for p in prefixes {
        w.release(&format!("{p}.weight"));
        w.release(&format!("{p}.bias"));
    }
    Ok(l)
}

fn layer<B: Backend>(
    b: &B,
    w: &Weights,
    c: &NomicConfig,
    l: usize,
) -> Result<EncoderLayer<B>, ModelError> {
    let (h, i, eps) = (c.n_embd, c.inner(), c.layer_norm_epsilon);
    let p = format!("encoder.layers.{l}");
    let mlp_in = match c.mlp()? {
        // The gate first, as the seam's GLU wants it.
        Mlp::Gated(_) => linear(
            b,
            w,
            &[format!("{p}.mlp.fc12"), format!("{p}.mlp.fc11")],
            h,
            i,
            c.mlp_fc1_bias,
        )?,
        Mlp::Plain(_) => linear(b, w, &[format!("{p}.mlp.fc1")], h, i, c.mlp_fc1_bias)?,
    };
    Ok(EncoderLayer {
        qkv: linear(b, w, &[format!("{p}.attn.Wqkv")], h, 3 * h, c.qkv_proj_bias)?,
        // The remote code gives out_proj a bias exactly when Wqkv has one.
        attn_out: linear(b, w, &[format!("{p}.attn.out_proj")], h, h, c.qkv_proj_bias)?,
        attn_norm: layer_norm(b, w, &format!("{p}.norm1"), h, eps)?,
        mlp_in,
        mlp_out: linear(b, w, &[format!("{p}.mlp.fc2")], i, h, c.mlp_fc2_bias)?,
        mlp_norm: layer_norm(b, w, &format!("{p}.norm2"), h, eps)?,
    })
}

fn classifier<B: Backend>(
    _b: &B,
    _w: &Weights,
    _cfg: &serde_json::Value,
    _labels: Vec<String>,
) -> Result<Classifier<B>, ModelError> {
    Err(ModelError::Unsupported(
        "NomicBERT sequence classification heads are not supported (embedding models only)".into(),
    ))
}
