//! Alibaba GTE "new" (`new`: gte-*-en-v1.5, gte-multilingual; remote code `NewModel`):
//! post-norm encoder with a fused `qkv_proj` (with bias), RoPE (NTK-scaled when `rope_scaling`
//! says so), a GLU MLP `up_gate_proj` (no bias, `up | gate`) → `down_proj`, `attn_ln` /
//! `mlp_ln`; word (+ token type) embeddings and LayerNorm, no position table.

use serde::Deserialize;

use super::encoder::{Encoder, EncoderLayer, RotaryEncoder, TokenEmbeddings};
use super::{layer_norm, linear, table, tensor, Backbone, Facts, FamilySpec};
use crate::model::heads::{Classifier, Dense};
use crate::model::layers::{Activation, Backend, Rope};
use crate::model::weights::Weights;
use crate::model::{ModelError, Pooling};

#[derive(Debug, Clone, Deserialize)]
struct GteConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default)]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_norm_type")]
    layer_norm_type: String,
    #[serde(default = "default_position_type")]
    position_embedding_type: String,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    #[serde(default)]
    rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    logn_attention_scale: bool,
    #[serde(default)]
    logn_attention_clip1: bool,
    #[serde(default = "yes")]
    pack_qkv: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct RopeScaling {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    rope_type: Option<String>,
    factor: f64,
    #[serde(default)]
    mixed_b: Option<f64>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_norm_type() -> String {
    "layer_norm".into()
}
fn default_position_type() -> String {
    "rope".into()
}
fn default_theta() -> f64 {
    10_000.0
}
fn yes() -> bool {
    true
}

impl GteConfig {
    fn parse(cfg: &serde_json::Value) -> Result<Self, ModelError> {
        let c: Self = serde_json::from_value(cfg.clone()).map_err(|e| ModelError::Corrupt {
            file: "config.json".into(),
            reason: e.to_string(),
        })?;
        let unsupported = |what: String| Err(ModelError::Unsupported(what));
        if c.position_embedding_type != "rope" {
            return unsupported(format!(
                "position_embedding_type `{}` (GTE: only rope)",
                c.position_embedding_type
            ));
        }
        if c.layer_norm_type != "layer_norm" {
            return unsupported(format!(
                "layer_norm_type `{}` (GTE: only layer_norm)",
                c.layer_norm_type
            ));
        }
        if c.logn_attention_scale || c.logn_attention_clip1 {
            return unsupported("logn_attention_scale / logn_attention_clip1".into());
        }
        if !c.pack_qkv {
            return unsupported("pack_qkv false (separate q/k/v projections)".into());
        }
        if let Some(s) = &c.rope_scaling {
            let kind = s.kind.as_deref().or(s.rope_type.as_deref()).unwrap_or("");
            if kind != "ntk" || s.mixed_b.is_some() || s.factor <= 0.0 {
                return unsupported(format!(
                    "rope_scaling {s:?} (GTE: only {{type: ntk, factor}} without mixed_b)"
                ));
            }
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            ));
        }
        Ok(c)
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// NTK scaling as the remote code applies it (always, once `rope_scaling` is set: its
    /// table is built for `factor` times the trained length): base `θ·f`, frequencies
    /// divided by `f^(2/d)`.
    fn rope(&self) -> Rope {
        let d = self.head_dim();
        match &self.rope_scaling {
            Some(s) => {
                let mut r = Rope::new(self.rope_theta * s.factor, d);
                let div = s.factor.powf(2.0 / d as f64);
                r.inv_freq = r
                    .inv_freq
                    .iter()
                    .map(|&f| (f as f64 / div) as f32)
                    .collect();
                r
            }
            None => Rope::new(self.rope_theta, d),
        }
    }
}

/// GTE in the family table.
pub struct Spec;

impl FamilySpec for Spec {
    fn facts(cfg: &serde_json::Value) -> Result<Facts, ModelError> {
        let c = GteConfig::parse(cfg)?;
        Ok(Facts {
            hidden: c.hidden_size,
            max_positions: c.max_position_embeddings,
            vocab: c.vocab_size,
        })
    }

    fn backbone<B: Backend>(
        b: &B,
        w: &mut Weights,
        cfg: &serde_json::Value,
    ) -> Result<Box<dyn Backbone<B>>, ModelError> {
        let c = GteConfig::parse(cfg)?;
        if !w.use_prefix(&["", "new."], "embeddings.word_embeddings.weight") {
            return Err(ModelError::Unsupported(
                "no embeddings.word_embeddings.weight (with or without a `new.` prefix): not a GTE \
                 checkpoint"
                    .into(),
            ));
        }
        let h = c.hidden_size;
        let embeddings = TokenEmbeddings {
            word: table(b, w, "embeddings.word_embeddings.weight", c.vocab_size, h)?,
            token_type: match c.type_vocab_size {
                0 => None,
                n => Some(table(
                    b,
                    w,
                    "embeddings.token_type_embeddings.weight",
                    n,
                    h,
                )?),
            },
            type_vocab_size: c.type_vocab_size,
            norm: layer_norm(b, w, "embeddings.LayerNorm", h, c.layer_norm_eps)?,
        };
        let layers = (0..c.num_hidden_layers)
            .map(|l| layer(b, w, &c, l))
            .collect::<Result<Vec<_>, _>>()?;
        let gate = Activation::from_name(&c.hidden_act)?.as_gate()?;
        Ok(Box::new(RotaryEncoder {
            embeddings,
            encoder: Encoder {
                layers,
                heads: c.num_attention_heads,
                head_dim: c.head_dim(),
                activation: Activation::Glu(gate),
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

fn layer<B: Backend>(
    b: &B,
    w: &Weights,
    c: &GteConfig,
    l: usize,
) -> Result<EncoderLayer<B>, ModelError> {
    let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
    let p = format!("encoder.layer.{l}");
    // `up | gate` in the file; the seam wants the gate first.
    let name = format!("{p}.mlp.up_gate_proj.weight");
    let up_gate = tensor(w, &name, &[2 * i, h])?;
    let mlp_in = b.load_linear(&[up_gate.rows(i, 2 * i)?, up_gate.rows(0, i)?], None)?;
    w.release(&name);
    Ok(EncoderLayer {
        qkv: linear(b, w, &[format!("{p}.attention.qkv_proj")], h, 3 * h)?,
        attn_out: linear(b, w, &[format!("{p}.attention.o_proj")], h, h)?,
        attn_norm: layer_norm(b, w, &format!("{p}.attn_ln"), h, eps)?,
        mlp_in,
        mlp_out: linear(b, w, &[format!("{p}.mlp.down_proj")], i, h)?,
        mlp_norm: layer_norm(b, w, &format!("{p}.mlp_ln"), h, eps)?,
    })
}

/// `NewForSequenceClassification` (gte-multilingual-reranker): first token → pooler
/// (dense + tanh, when the checkpoint has one) → classifier.
fn classifier<B: Backend>(
    b: &B,
    w: &Weights,
    cfg: &serde_json::Value,
    labels: Vec<String>,
) -> Result<Classifier<B>, ModelError> {
    let c = GteConfig::parse(cfg)?;
    let h = c.hidden_size;
    let mut steps = Vec::new();
    if w.contains("pooler.dense.weight") {
        steps.push(Dense::new(
            linear(b, w, &["pooler.dense".into()], h, h)?,
            Activation::Tanh,
        ));
    }
    steps.push(Dense::new(
        linear(b, w, &["classifier".into()], h, labels.len())?,
        Activation::None,
    ));
    Ok(Classifier {
        pooling: Pooling::Cls,
        steps,
        labels,
    })
}
