//! The Llama-style pre-norm decoder stack Qwen3, Qwen2, Mistral, Llama and Gemma3 share: per
//! layer `x += o_proj(attention(norm(x)))`, `x += down(glu(gate_up(norm(x))))`, then a final
//! norm. Families differ in what the config turns into [`DecoderOptions`]: masks per layer,
//! RoPE bases, q/k norms, Gemma's sandwich norms, (1 + w) RMSNorm and embedding scale.
//!
//! Names follow transformers' `*Model` (`embed_tokens`, `layers.{i}.self_attn.{q,k,v,o}_proj`,
//! `mlp.{gate,up,down}_proj`, `norm`), under `model.` in `*ForCausalLM` checkpoints or bare
//! in sentence-transformers exports.

use serde::Deserialize;

use super::rope::RopeParams;
use super::{linear, rms_norm, table, Backbone, Facts, FamilySpec};
use crate::model::batch::PackedBatch;
use crate::model::heads::{Classifier, Dense};
use crate::model::layers::{Activation, Attention, Backend, Epilogue, Gate, Mask, Post, Rope};
use crate::model::weights::{HostTensor, Weights};
use crate::model::{ModelError, Pooling};

/// The config keys every Llama-like decoder shares.
#[derive(Debug, Clone, Deserialize)]
pub struct DecoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// May differ from `hidden_size / num_attention_heads` (Qwen3, Gemma3).
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub intermediate_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// Gemma's name for it (some configs carry both; this one wins).
    #[serde(default)]
    pub hidden_activation: Option<String>,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// transformers 5 (and 4.5x Qwen / Gemma configs): one entry per layer.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Bidirectional decoders (EmbeddingGemma; `is_causal: false` in gte-Qwen2-like exports).
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    #[serde(default)]
    pub is_causal: Option<bool>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_positions() -> usize {
    2048
}

impl DecoderConfig {
    pub fn parse(cfg: &serde_json::Value) -> Result<Self, ModelError> {
        let c: Self = serde_json::from_value(cfg.clone()).map_err(|e| ModelError::Corrupt {
            file: "config.json".into(),
            reason: e.to_string(),
        })?;
        let kv = c.kv_heads();
        if c.num_attention_heads == 0 || kv == 0 || !c.num_attention_heads.is_multiple_of(kv) {
            return Err(ModelError::Unsupported(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                c.num_attention_heads
            )));
        }
        if let Some(t) = &c.layer_types {
            if t.len() != c.num_hidden_layers {
                return Err(ModelError::Corrupt {
                    file: "config.json".into(),
                    reason: format!("{} layer_types for {} layers", t.len(), c.num_hidden_layers),
                });
            }
        }
        Ok(c)
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn bidirectional(&self) -> bool {
        self.use_bidirectional_attention == Some(true) || self.is_causal == Some(false)
    }

    /// Whether layer `i` is a sliding-window layer: `layer_types` when the config has them,
    /// else the family's rule.
    pub fn is_sliding(&self, i: usize, default: impl Fn(usize) -> bool) -> bool {
        match &self.layer_types {
            Some(t) => t[i] == "sliding_attention",
            None => default(i),
        }
    }

    /// The MLP gate (`silu` unless the config says otherwise).
    pub fn gate(&self) -> Result<Gate, ModelError> {
        let name = self.hidden_activation.as_ref().or(self.hidden_act.as_ref());
        Activation::from_name(name.map_or("silu", String::as_str))?.as_gate()
    }

    pub fn facts(&self) -> Facts {
        Facts {
            hidden: self.hidden_size,
            max_positions: self.max_position_embeddings,
            vocab: self.vocab_size,
        }
    }
}

/// How one layer attends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerKind {
    pub mask: Mask,
    /// Index into [`DecoderOptions::ropes`].
    pub rope: usize,
}

/// What a family's config turns into.
#[derive(Debug, Clone)]
pub struct DecoderOptions {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub eps: f64,
    /// 1 for Gemma's `(1 + w)` RMSNorm.
    pub norm_offset: f32,
    pub gate: Gate,
    /// Multiplies Q·Kᵀ.
    pub scale: f32,
    /// Multiplies the token embeddings (Gemma: √hidden).
    pub embed_scale: Option<f32>,
    /// Per-head `q_norm` / `k_norm` (Qwen3, Gemma3).
    pub qk_norm: bool,
    /// Gemma's four norms per layer: `r + norm(attention)`, `r + norm(mlp)`.
    pub sandwich: bool,
    pub ropes: Vec<Rope>,
    /// One per layer.
    pub layers: Vec<LayerKind>,
}

impl DecoderOptions {
    /// The shapes of a Llama-like config, every layer `kind`, one rope.
    pub fn llama_like(
        c: &DecoderConfig,
        rope: Rope,
        kind: impl Fn(usize) -> Mask,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.kv_heads(),
            head_dim: c.head_dim(),
            intermediate: c.intermediate_size,
            vocab: c.vocab_size,
            eps: c.rms_norm_eps,
            norm_offset: 0.0,
            gate: c.gate()?,
            scale: 1.0 / (c.head_dim() as f32).sqrt(),
            embed_scale: None,
            qk_norm: false,
            sandwich: false,
            ropes: vec![rope],
            layers: (0..c.num_hidden_layers)
                .map(|i| LayerKind {
                    mask: kind(i),
                    rope: 0,
                })
                .collect(),
        })
    }
}

/// The rotation of `layer_type` layers from the config (either form), base 10,000 when the
/// config names none.
pub fn rope(
    cfg: &serde_json::Value,
    c: &DecoderConfig,
    layer_type: &str,
) -> Result<Rope, ModelError> {
    RopeParams::read(cfg, layer_type, 10_000.0).rope(cfg, c.head_dim(), c.max_position_embeddings)
}

/// A causal layer's mask: transformers' sliding window lets query `i` see keys `j` with
/// `i - j < window`.
pub fn causal(window: Option<usize>) -> Mask {
    Mask::causal(window.map(|w| w.saturating_sub(1)))
}

pub struct DecoderLayer<B: Backend> {
    pub input_norm: B::Norm,
    /// `q_proj`, `k_proj`, `v_proj` stacked: `[(heads + 2 kv_heads) · head_dim, hidden]`.
    pub qkv: B::Linear,
    pub qk_norm: Option<(B::Norm, B::Norm)>,
    pub o_proj: B::Linear,
    /// Gemma: the norm of the attention output before the residual.
    pub post_attention_norm: Option<B::Norm>,
    /// The norm before the MLP (`post_attention_layernorm`; Gemma `pre_feedforward_layernorm`).
    pub mlp_norm: B::Norm,
    /// `gate_proj` then `up_proj`: `[2 · intermediate, hidden]`.
    pub gate_up: B::Linear,
    pub down: B::Linear,
    /// Gemma: the norm of the MLP output before the residual.
    pub post_mlp_norm: Option<B::Norm>,
    pub kind: LayerKind,
}

pub struct Decoder<B: Backend> {
    pub embed: B::Table,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: B::Norm,
    pub opts: DecoderOptions,
}

impl<B: Backend> Decoder<B> {
    /// Loads the stack at the weights' prefix (set by [`use_prefix`]).
    pub fn load(b: &B, w: &Weights, opts: DecoderOptions) -> Result<Self, ModelError> {
        let o = &opts;
        let (h, d) = (o.hidden, o.head_dim);
        let norm = |name: &str, width: usize| rms_norm(b, w, name, width, o.eps, o.norm_offset);
        let mut layers = Vec::with_capacity(o.layers.len());
        for (l, kind) in o.layers.iter().enumerate() {
            let p = format!("layers.{l}");
            let a = format!("{p}.self_attn");
            // GQA: q, k and v differ in width, so `families::linear` cannot stack them.
            layers.push(DecoderLayer {
                input_norm: norm(&format!("{p}.input_layernorm"), h)?,
                qkv: stacked(
                    b,
                    w,
                    &[
                        (format!("{a}.q_proj"), o.heads * d),
                        (format!("{a}.k_proj"), o.kv_heads * d),
                        (format!("{a}.v_proj"), o.kv_heads * d),
                    ],
                    h,
                )?,
                qk_norm: if o.qk_norm {
                    Some((
                        norm(&format!("{a}.q_norm"), d)?,
                        norm(&format!("{a}.k_norm"), d)?,
                    ))
                } else {
                    None
                },
                o_proj: linear(b, w, &[format!("{a}.o_proj")], o.heads * d, h)?,
                post_attention_norm: if o.sandwich {
                    Some(norm(&format!("{p}.post_attention_layernorm"), h)?)
                } else {
                    None
                },
                mlp_norm: if o.sandwich {
                    norm(&format!("{p}.pre_feedforward_layernorm"), h)?
                } else {
                    norm(&format!("{p}.post_attention_layernorm"), h)?
                },
                gate_up: linear(
                    b,
                    w,
                    &["gate_proj", "up_proj"].map(|n| format!("{p}.mlp.{n}")),
                    h,
                    o.intermediate,
                )?,
                down: linear(b, w, &[format!("{p}.mlp.down_proj")], o.intermediate, h)?,
                post_mlp_norm: if o.sandwich {
                    Some(norm(&format!("{p}.post_feedforward_layernorm"), h)?)
                } else {
                    None
                },
                kind: *kind,
            });
        }
        Ok(Self {
            embed: table(b, w, "embed_tokens.weight", o.vocab, h)?,
            norm: norm("norm", h)?,
            layers,
            opts,
        })
    }
}

impl<B: Backend> Backbone<B> for Decoder<B> {
    fn forward(
        &self,
        b: &B,
        plan: &B::Plan,
        batch: &PackedBatch,
        at_yield: &mut dyn FnMut(),
    ) -> Result<B::Act, ModelError> {
        let o = &self.opts;
        let ropes = o
            .ropes
            .iter()
            .map(|r| b.rope(plan, r))
            .collect::<Result<Vec<_>, _>>()?;
        let mut x = b.embed(
            plan,
            &[(&self.embed, batch.ids.as_slice())],
            o.embed_scale,
            None,
        )?;
        for layer in &self.layers {
            let spec = Attention {
                heads: o.heads,
                kv_heads: o.kv_heads,
                head_dim: o.head_dim,
                scale: o.scale,
                mask: layer.kind.mask,
                rope: ropes.get(layer.kind.rope),
                qk_norm: layer.qk_norm.as_ref().map(|(q, k)| (q, k)),
                bias: None,
            };
            let h = b.norm(&x, &layer.input_norm)?;
            let qkv = b.linear(&h, &layer.qkv, Epilogue::plain())?;
            let ctx = b.attention(qkv, plan, &spec)?;
            at_yield();
            let post = match &layer.post_attention_norm {
                Some(n) => Post::NormResidual(n, &x),
                None => Post::Residual(&x),
            };
            x = b.linear(&ctx, &layer.o_proj, Epilogue::post(post))?;
            let h = b.norm(&x, &layer.mlp_norm)?;
            let inter = b.linear(&h, &layer.gate_up, Epilogue::act(Activation::Glu(o.gate)))?;
            at_yield();
            let post = match &layer.post_mlp_norm {
                Some(n) => Post::NormResidual(n, &x),
                None => Post::Residual(&x),
            };
            x = b.linear(&inter, &layer.down, Epilogue::post(post))?;
            at_yield();
        }
        b.norm(&x, &self.norm)
    }
}

/// `{p}.weight` `[out_p, inp]` for each `(p, out_p)` stacked along `out`, with biases when
/// every part has one (Qwen2's q/k/v), released from the mapping once loaded.
fn stacked<B: Backend>(
    b: &B,
    w: &Weights,
    parts: &[(String, usize)],
    inp: usize,
) -> Result<B::Linear, ModelError> {
    let weights = parts
        .iter()
        .map(|(p, out)| w.get(&format!("{p}.weight"), &[*out, inp]))
        .collect::<Result<Vec<_>, _>>()?;
    let bias = if parts.iter().all(|(p, _)| w.contains(&format!("{p}.bias"))) {
        Some(
            parts
                .iter()
                .map(|(p, out)| w.get(&format!("{p}.bias"), &[*out]))
                .collect::<Result<Vec<_>, _>>()?,
        )
    } else {
        None
    };
    let l = b.load_linear(&weights, bias.as_deref())?;
    for (p, _) in parts {
        w.release(&format!("{p}.weight"));
        w.release(&format!("{p}.bias"));
    }
    Ok(l)
}

/// What a decoder family's file gives: the options its config turns into. The rest of its
/// [`FamilySpec`] is the same for every decoder and lives here.
pub trait DecoderSpec {
    /// Decoders pool their last token by default (the EOS their tokenizer appends).
    const POOLING: Pooling = Pooling::LastToken;
    fn options(cfg: &serde_json::Value) -> Result<DecoderOptions, ModelError>;
}

impl<S: DecoderSpec> FamilySpec for S {
    const POOLING: Pooling = <S as DecoderSpec>::POOLING;

    fn facts(cfg: &serde_json::Value) -> Result<Facts, ModelError> {
        Ok(DecoderConfig::parse(cfg)?.facts())
    }

    fn backbone<B: Backend>(
        b: &B,
        w: &mut Weights,
        cfg: &serde_json::Value,
    ) -> Result<Box<dyn Backbone<B>>, ModelError> {
        let o = S::options(cfg)?;
        use_prefix(w)?;
        Ok(Box::new(Decoder::load(b, w, o)?))
    }

    fn lm_reranker<B: Backend>(
        b: &B,
        w: &Weights,
        cfg: &serde_json::Value,
        ids: (u32, u32),
    ) -> Option<Result<Classifier<B>, ModelError>> {
        Some(Self::facts(cfg).and_then(|f| yes_no(b, w, f.hidden, ids)))
    }
}

/// `*ForCausalLM` checkpoints nest the model under `model.`; sentence-transformers exports
/// and `*Model` checkpoints do not.
pub fn use_prefix(w: &mut Weights) -> Result<(), ModelError> {
    if w.use_prefix(&["", "model."], "embed_tokens.weight") {
        Ok(())
    } else {
        Err(ModelError::Unsupported(
            "no embed_tokens.weight (with or without a `model.` prefix): not a decoder checkpoint"
                .into(),
        ))
    }
}

/// Qwen3-Reranker's head: the LM head's "yes" row minus its "no" row, one logit
/// `hidden_last · (W[yes] − W[no])` = logit(yes) − logit(no) at the last token. `W` is
/// `lm_head.weight`, or the token embeddings when the head is tied (absent).
pub fn yes_no<B: Backend>(
    b: &B,
    w: &Weights,
    hidden: usize,
    (yes, no): (u32, u32),
) -> Result<Classifier<B>, ModelError> {
    let name = if w.contains("lm_head.weight") {
        "lm_head.weight"
    } else {
        "embed_tokens.weight"
    };
    let t = w.get_any_shape(name)?;
    let rows = t.shape.first().copied().unwrap_or(0);
    if t.shape.len() != 2 || t.shape[1] != hidden || yes as usize >= rows || no as usize >= rows {
        return Err(ModelError::Corrupt {
            file: name.into(),
            reason: format!(
                "shape {:?}: expected [vocab > {}, {hidden}]",
                t.shape,
                yes.max(no)
            ),
        });
    }
    let row = |id: u32| t.rows(id as usize, id as usize + 1)?.to_f32();
    let diff: Vec<f32> = row(yes)?.iter().zip(row(no)?).map(|(y, n)| y - n).collect();
    w.release(name);
    let weight = HostTensor::from_f32("yes-minus-no", vec![1, hidden], &diff);
    Ok(Classifier {
        pooling: Pooling::LastToken,
        steps: vec![Dense::new(
            b.load_linear(&[weight], None)?,
            Activation::None,
        )],
        labels: vec!["LABEL_0".into()],
    })
}
