//! ModernBERT (`modernbert`): a pre-norm encoder. Embeddings = `tok_embeddings` → norm (no
//! position table); per layer `x += Wo(attn(Wqkv(attn_norm(x))))` (layer 0 has no
//! `attn_norm`), `x += mlp.Wo(GeGLU(mlp.Wi(mlp_norm(x))))`; then `final_norm`. Layers alternate
//! global attention (RoPE base `global_rope_theta`) and a local window of ±`local_attention / 2`
//! tokens (base `local_rope_theta`). LayerNorms and linears have no biases unless
//! `norm_bias` / `attention_bias` / `mlp_bias` say so.
//!
//! Both config forms load: the Hub's (`global_attn_every_n_layers`, `global_rope_theta`,
//! `local_rope_theta`) and transformers 5's (`layer_types`, `rope_parameters` per layer type).

use serde::Deserialize;
use serde_json::Value;

use super::{layer_norm, table, tensor, Backbone, Facts, FamilySpec};
use crate::model::batch::PackedBatch;
use crate::model::heads::{Classifier, Dense};
use crate::model::layers::{Activation, Attention, Backend, Epilogue, Mask, Post, Rope};
use crate::model::weights::Weights;
use crate::model::{ModelError, Pooling};

#[derive(Debug, Clone, Deserialize)]
struct Raw {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    norm_eps: f64,
    #[serde(default)]
    norm_bias: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    classifier_bias: bool,
    #[serde(default = "default_act")]
    hidden_activation: String,
    #[serde(default = "default_act")]
    classifier_activation: String,
    #[serde(default = "default_pooling")]
    classifier_pooling: String,
    #[serde(default = "default_every")]
    global_attn_every_n_layers: usize,
    #[serde(default = "default_window")]
    local_attention: usize,
    #[serde(default)]
    global_rope_theta: Option<f64>,
    #[serde(default)]
    local_rope_theta: Option<f64>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    rope_parameters: Option<Value>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu".into()
}
fn default_pooling() -> String {
    "cls".into()
}
fn default_every() -> usize {
    3
}
fn default_window() -> usize {
    128
}

/// The config resolved to what the forward needs, whichever form it came in.
#[derive(Debug, Clone, PartialEq)]
struct ModernBertConfig {
    vocab_size: usize,
    hidden: usize,
    intermediate: usize,
    heads: usize,
    max_positions: usize,
    eps: f64,
    attention_bias: bool,
    mlp_bias: bool,
    norm_bias: bool,
    classifier_bias: bool,
    gate: crate::model::layers::Gate,
    classifier_activation: Activation,
    classifier_pooling: Pooling,
    /// Per layer: global (true) or local.
    global: Vec<bool>,
    /// Keys each local query sees on either side.
    half_window: usize,
    global_theta: f64,
    local_theta: f64,
}

/// `rope_theta` of one `rope_parameters` entry, refusing scaled RoPE types.
fn rope_theta(p: &Value, what: &str) -> Result<Option<f64>, ModelError> {
    if let Some(kind) = p.get("rope_type").and_then(Value::as_str) {
        if kind != "default" {
            return Err(ModelError::Unsupported(format!(
                "ModernBERT rope_parameters{what}.rope_type `{kind}` (only default)"
            )));
        }
    }
    Ok(p.get("rope_theta").and_then(Value::as_f64))
}

impl ModernBertConfig {
    fn parse(cfg: &Value) -> Result<Self, ModelError> {
        let r: Raw = serde_json::from_value(cfg.clone()).map_err(|e| ModelError::Corrupt {
            file: "config.json".into(),
            reason: e.to_string(),
        })?;
        let unsupported =
            |what: String| Err(ModelError::Unsupported(format!("ModernBERT: {what}")));
        if r.num_attention_heads == 0 || !r.hidden_size.is_multiple_of(r.num_attention_heads) {
            return unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                r.hidden_size, r.num_attention_heads
            ));
        }
        let global = match &r.layer_types {
            Some(types) => {
                if types.len() != r.num_hidden_layers {
                    return unsupported(format!(
                        "layer_types has {} entries for {} layers",
                        types.len(),
                        r.num_hidden_layers
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "full_attention" => Ok(true),
                        "sliding_attention" => Ok(false),
                        other => Err(ModelError::Unsupported(format!(
                            "ModernBERT layer type `{other}` (full_attention, sliding_attention)"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => {
                if r.global_attn_every_n_layers == 0 {
                    return unsupported("global_attn_every_n_layers 0".into());
                }
                (0..r.num_hidden_layers)
                    .map(|i| i % r.global_attn_every_n_layers == 0)
                    .collect()
            }
        };
        // transformers 5: {full_attention: {rope_theta}, sliding_attention: {rope_theta}}, or
        // one flat entry for every layer.
        let (mut global_theta, mut local_theta) = (None, None);
        if let Some(p) = &r.rope_parameters {
            if p.get("full_attention").is_some() || p.get("sliding_attention").is_some() {
                if let Some(f) = p.get("full_attention") {
                    global_theta = rope_theta(f, ".full_attention")?;
                }
                if let Some(s) = p.get("sliding_attention") {
                    local_theta = rope_theta(s, ".sliding_attention")?;
                }
            } else {
                global_theta = rope_theta(p, "")?;
                local_theta = global_theta;
            }
        }
        let global_theta = global_theta.or(r.global_rope_theta).unwrap_or(160_000.0);
        // transformers falls back to the global base when the local one is unset.
        let local_theta = local_theta.or(r.local_rope_theta).unwrap_or(global_theta);
        let classifier_pooling = match r.classifier_pooling.as_str() {
            "cls" => Pooling::Cls,
            "mean" => Pooling::Mean,
            other => return unsupported(format!("classifier_pooling `{other}` (cls, mean)")),
        };
        Ok(Self {
            vocab_size: r.vocab_size,
            hidden: r.hidden_size,
            intermediate: r.intermediate_size,
            heads: r.num_attention_heads,
            max_positions: r.max_position_embeddings,
            eps: r.norm_eps,
            attention_bias: r.attention_bias,
            mlp_bias: r.mlp_bias,
            norm_bias: r.norm_bias,
            classifier_bias: r.classifier_bias,
            gate: Activation::from_name(&r.hidden_activation)?.as_gate()?,
            classifier_activation: Activation::from_name(&r.classifier_activation)?,
            classifier_pooling,
            global,
            half_window: r.local_attention / 2,
            global_theta,
            local_theta,
        })
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// ModernBERT in the family table.
pub struct Spec;

impl FamilySpec for Spec {
    fn facts(cfg: &Value) -> Result<Facts, ModelError> {
        let c = ModernBertConfig::parse(cfg)?;
        Ok(Facts {
            hidden: c.hidden,
            max_positions: c.max_positions,
            vocab: c.vocab_size,
        })
    }

    fn backbone<B: Backend>(
        b: &B,
        w: &mut Weights,
        cfg: &Value,
    ) -> Result<Box<dyn Backbone<B>>, ModelError> {
        let c = ModernBertConfig::parse(cfg)?;
        if !w.use_prefix(&["", "model."], "embeddings.tok_embeddings.weight") {
            return Err(ModelError::Unsupported(
                "no embeddings.tok_embeddings.weight (with or without a `model.` prefix): not a \
                 ModernBERT checkpoint"
                    .into(),
            ));
        }
        let (h, i) = (c.hidden, c.intermediate);
        let mut layers = Vec::with_capacity(c.global.len());
        for (l, &global) in c.global.iter().enumerate() {
            let p = format!("layers.{l}");
            layers.push(Layer {
                // transformers makes layer 0's attention norm an identity (the embeddings are
                // normalised already).
                attn_norm: if l == 0 {
                    None
                } else {
                    Some(norm(b, w, &c, &format!("{p}.attn_norm"))?)
                },
                qkv: linear(b, w, &format!("{p}.attn.Wqkv"), h, 3 * h, c.attention_bias)?,
                attn_out: linear(b, w, &format!("{p}.attn.Wo"), h, h, c.attention_bias)?,
                mlp_norm: norm(b, w, &c, &format!("{p}.mlp_norm"))?,
                mlp_in: linear(b, w, &format!("{p}.mlp.Wi"), h, 2 * i, c.mlp_bias)?,
                mlp_out: linear(b, w, &format!("{p}.mlp.Wo"), i, h, c.mlp_bias)?,
                global,
            });
        }
        let d = c.head_dim();
        Ok(Box::new(ModernBert {
            word: table(b, w, "embeddings.tok_embeddings.weight", c.vocab_size, h)?,
            embed_norm: norm(b, w, &c, "embeddings.norm")?,
            layers,
            final_norm: norm(b, w, &c, "final_norm")?,
            heads: c.heads,
            head_dim: d,
            gate: c.gate,
            half_window: c.half_window,
            global_rope: Rope::new(c.global_theta, d),
            local_rope: Rope::new(c.local_theta, d),
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

/// `{p}.weight` `[out, inp]`, with `{p}.bias` exactly when the config says there is one.
fn linear<B: Backend>(
    b: &B,
    w: &Weights,
    p: &str,
    inp: usize,
    out: usize,
    bias: bool,
) -> Result<B::Linear, ModelError> {
    let weight = tensor(w, &format!("{p}.weight"), &[out, inp])?;
    let l = if bias {
        let bias = tensor(w, &format!("{p}.bias"), &[out])?;
        b.load_linear(&[weight], Some(&[bias]))?
    } else {
        b.load_linear(&[weight], None)?
    };
    w.release(&format!("{p}.weight"));
    w.release(&format!("{p}.bias"));
    Ok(l)
}

/// A LayerNorm whose bias follows `norm_bias`.
fn norm<B: Backend>(
    b: &B,
    w: &Weights,
    c: &ModernBertConfig,
    p: &str,
) -> Result<B::Norm, ModelError> {
    if c.norm_bias {
        layer_norm(b, w, p, c.hidden, c.eps)
    } else {
        let weight = tensor(w, &format!("{p}.weight"), &[c.hidden])?;
        b.load_norm(
            crate::model::layers::NormKind::Layer { eps: c.eps as f32 },
            c.hidden,
            Some(weight),
            None,
        )
    }
}

struct Layer<B: Backend> {
    attn_norm: Option<B::Norm>,
    /// `[3 · hidden, hidden]`: queries, keys, values.
    qkv: B::Linear,
    attn_out: B::Linear,
    mlp_norm: B::Norm,
    /// `[2 · intermediate, hidden]`: `input | gate` in the file, where `input` is the half
    /// that goes through the activation: the seam's gate-first order already.
    mlp_in: B::Linear,
    mlp_out: B::Linear,
    global: bool,
}

pub struct ModernBert<B: Backend> {
    word: B::Table,
    embed_norm: B::Norm,
    layers: Vec<Layer<B>>,
    final_norm: B::Norm,
    heads: usize,
    head_dim: usize,
    gate: crate::model::layers::Gate,
    half_window: usize,
    global_rope: Rope,
    local_rope: Rope,
}

impl<B: Backend> Backbone<B> for ModernBert<B> {
    fn forward(
        &self,
        b: &B,
        plan: &B::Plan,
        batch: &PackedBatch,
        at_yield: &mut dyn FnMut(),
    ) -> Result<B::Act, ModelError> {
        let global_rope = b.rope(plan, &self.global_rope)?;
        let local_rope = b.rope(plan, &self.local_rope)?;
        let global = Attention {
            rope: Some(&global_rope),
            ..Attention::full(self.heads, self.head_dim)
        };
        let local = Attention {
            rope: Some(&local_rope),
            mask: Mask::window(self.half_window),
            ..Attention::full(self.heads, self.head_dim)
        };
        let mut x = b.embed(
            plan,
            &[(&self.word, &batch.ids)],
            None,
            Some(&self.embed_norm),
        )?;
        for layer in &self.layers {
            let normed;
            let input = match &layer.attn_norm {
                Some(n) => {
                    normed = b.norm(&x, n)?;
                    &normed
                }
                None => &x,
            };
            let qkv = b.linear(input, &layer.qkv, Epilogue::plain())?;
            let spec = if layer.global { &global } else { &local };
            let ctx = b.attention(qkv, plan, spec)?;
            at_yield();
            x = b.linear(&ctx, &layer.attn_out, Epilogue::post(Post::Residual(&x)))?;
            let m = b.norm(&x, &layer.mlp_norm)?;
            at_yield();
            let inter = b.linear(&m, &layer.mlp_in, Epilogue::act(Activation::Glu(self.gate)))?;
            at_yield();
            x = b.linear(&inter, &layer.mlp_out, Epilogue::post(Post::Residual(&x)))?;
            at_yield();
        }
        b.norm(&x, &self.final_norm)
    }
}

/// `ModernBertForSequenceClassification`: pool (`classifier_pooling`) → `head.dense` → act →
/// `head.norm` → `classifier`.
fn classifier<B: Backend>(
    b: &B,
    w: &Weights,
    cfg: &Value,
    labels: Vec<String>,
) -> Result<Classifier<B>, ModelError> {
    let c = ModernBertConfig::parse(cfg)?;
    let h = c.hidden;
    let mut head = Dense::new(
        linear(b, w, "head.dense", h, h, c.classifier_bias)?,
        c.classifier_activation,
    );
    head.norm = Some(norm(b, w, &c, "head.norm")?);
    let out = linear(b, w, "classifier", h, labels.len(), true)?;
    Ok(Classifier {
        pooling: c.classifier_pooling,
        steps: vec![head, Dense::new(out, Activation::None)],
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_config(name: &str) -> Value {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny-modernbert")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    #[test]
    fn hub_and_transformers5_configs_agree() {
        let hub = ModernBertConfig::parse(&fixture_config("config.json")).unwrap();
        let tf5 = ModernBertConfig::parse(&fixture_config("config.transformers5.json")).unwrap();
        assert_eq!(hub, tf5);
        assert_eq!(hub.global, vec![true, false, true]);
        assert_eq!(hub.half_window, 8);
        assert_eq!((hub.global_theta, hub.local_theta), (160_000.0, 10_000.0));
    }

    #[test]
    fn unsupported_options_are_named() {
        let mut cfg = fixture_config("config.transformers5.json");
        cfg["rope_parameters"]["sliding_attention"]["rope_type"] = "yarn".into();
        let err = ModernBertConfig::parse(&cfg).unwrap_err().to_string();
        assert!(err.contains("rope_type `yarn`"), "{err}");
        let mut cfg = fixture_config("config.json");
        cfg["classifier_pooling"] = "max".into();
        let err = ModernBertConfig::parse(&cfg).unwrap_err().to_string();
        assert!(err.contains("classifier_pooling `max`"), "{err}");
    }
}
