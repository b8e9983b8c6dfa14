//! BERT (`bert`: BERT, MiniLM, BGE, E5, GTE-small style configs) and its heads: the pooler +
//! classifier of `BertForSequenceClassification`, and the masked-LM head SPLADE runs.
//!
//! [`Embeddings`] + [`BertLike`] also carry RoBERTa / XLM-R / CamemBERT (`xlm_roberta.rs`):
//! the same encoder with positions counted from `pad_token_id + 1` and one token type.

use serde::Deserialize;

use super::encoder::{Encoder, EncoderLayer, LayerNames};
use super::{layer_norm, linear, table, Backbone, Facts, FamilySpec};
use crate::model::batch::PackedBatch;
use crate::model::heads::{Classifier, Dense, Splade};
use crate::model::layers::{Activation, Backend};
use crate::model::weights::Weights;
use crate::model::ModelError;

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    pub fn parse(cfg: &serde_json::Value) -> Result<Self, ModelError> {
        let c: Self = serde_json::from_value(cfg.clone()).map_err(|e| ModelError::Corrupt {
            file: "config.json".into(),
            reason: e.to_string(),
        })?;
        if let Some(kind) = &c.position_embedding_type {
            if kind != "absolute" {
                return Err(ModelError::Unsupported(format!(
                    "position_embedding_type `{kind}` (only absolute is supported)"
                )));
            }
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(ModelError::Unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        Ok(c)
    }
}

/// Word + absolute position (+ token type) embeddings, then layer norm.
pub struct Embeddings<B: Backend> {
    pub word: B::Table,
    pub position: B::Table,
    /// None where the model has one token type (its row is added to every token).
    pub token_type: Option<B::Table>,
    pub norm: B::Norm,
    /// Added to each 0-based position (RoBERTa: `pad_token_id + 1`).
    pub position_offset: u32,
    /// Valid type ids (ids past it, e.g. a pair's 1 on a one-type model, count as 0).
    pub type_vocab_size: usize,
}

impl<B: Backend> Embeddings<B> {
    /// Loads `embeddings.*` (word, position, token type, LayerNorm).
    pub fn load(
        b: &B,
        w: &Weights,
        c: &BertConfig,
        position_offset: u32,
    ) -> Result<Self, ModelError> {
        let h = c.hidden_size;
        Ok(Self {
            word: table(b, w, "embeddings.word_embeddings.weight", c.vocab_size, h)?,
            position: table(
                b,
                w,
                "embeddings.position_embeddings.weight",
                c.max_position_embeddings,
                h,
            )?,
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
            norm: layer_norm(b, w, "embeddings.LayerNorm", h, c.layer_norm_eps)?,
            position_offset,
            type_vocab_size: c.type_vocab_size,
        })
    }

    pub fn forward(
        &self,
        b: &B,
        plan: &B::Plan,
        batch: &PackedBatch,
    ) -> Result<B::Act, ModelError> {
        let positions: Vec<u32>;
        let positions = if self.position_offset == 0 {
            &batch.positions
        } else {
            positions = batch
                .positions
                .iter()
                .map(|p| p + self.position_offset)
                .collect();
            &positions
        };
        let types: Vec<u32>;
        let mut parts = vec![
            (&self.word, batch.ids.as_slice()),
            (&self.position, positions),
        ];
        if let Some(t) = &self.token_type {
            let ids = if self.type_vocab_size < 2 || batch.type_ids.iter().all(|&t| t == 0) {
                types = vec![0; batch.ids.len()];
                &types
            } else {
                &batch.type_ids
            };
            parts.push((t, ids));
        }
        b.embed(plan, &parts, None, Some(&self.norm))
    }
}

/// Embeddings + the post-norm encoder.
pub struct BertLike<B: Backend> {
    pub embeddings: Embeddings<B>,
    pub encoder: Encoder<B>,
}

impl<B: Backend> Backbone<B> for BertLike<B> {
    fn forward(
        &self,
        b: &B,
        plan: &B::Plan,
        batch: &PackedBatch,
        at_yield: &mut dyn FnMut(),
    ) -> Result<B::Act, ModelError> {
        let x = self.embeddings.forward(b, plan, batch)?;
        self.encoder.forward(b, plan, batch, x, at_yield)
    }
}

const LAYER: LayerNames = LayerNames {
    qkv: [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
    ],
    attn_out: "attention.output.dense",
    attn_norm: "attention.output.LayerNorm",
    mlp_in: "intermediate.dense",
    mlp_out: "output.dense",
    mlp_norm: "output.LayerNorm",
};

/// The encoder layers `encoder.layer.{i}.*` as BERT names them.
pub fn encoder<B: Backend>(b: &B, w: &Weights, c: &BertConfig) -> Result<Encoder<B>, ModelError> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        layers.push(EncoderLayer::load(
            b,
            w,
            &p,
            &LAYER,
            (h, i, c.layer_norm_eps),
        )?);
    }
    Ok(Encoder {
        layers,
        heads: c.num_attention_heads,
        head_dim: h / c.num_attention_heads,
        activation: Activation::from_name(&c.hidden_act)?,
        rope: None,
        bias: None,
    })
}

/// sentence-transformers saves the encoder without a prefix; transformers' `Bert*`
/// checkpoints use `bert.`.
pub fn use_prefix(w: &mut Weights) -> Result<(), ModelError> {
    if w.use_prefix(&["", "bert."], "embeddings.word_embeddings.weight") {
        Ok(())
    } else {
        Err(ModelError::Unsupported(
            "no embeddings.word_embeddings.weight (with or without a `bert.` prefix): not a \
             BERT checkpoint"
                .into(),
        ))
    }
}

/// BERT in the family table.
pub struct Spec;

impl FamilySpec for Spec {
    fn facts(cfg: &serde_json::Value) -> Result<Facts, ModelError> {
        let c = BertConfig::parse(cfg)?;
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
        let c = BertConfig::parse(cfg)?;
        use_prefix(w)?;
        Ok(Box::new(BertLike {
            embeddings: Embeddings::load(b, w, &c, 0)?,
            encoder: encoder(b, w, &c)?,
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

    fn splade<B: Backend>(
        b: &B,
        w: &Weights,
        cfg: &serde_json::Value,
    ) -> Option<Result<Splade<B>, ModelError>> {
        Some(splade(b, w, cfg))
    }
}

/// `BertForSequenceClassification`: CLS → pooler (dense + tanh) → classifier.
fn classifier<B: Backend>(
    b: &B,
    w: &Weights,
    cfg: &serde_json::Value,
    labels: Vec<String>,
) -> Result<Classifier<B>, ModelError> {
    let c = BertConfig::parse(cfg)?;
    super::first_token_head(
        b,
        w,
        "pooler.dense",
        Activation::Tanh,
        "classifier",
        c.hidden_size,
        labels,
    )
}

/// `BertForMaskedLM`'s head for SPLADE: `cls.predictions.transform` then the decoder, tied to
/// the word embeddings when the checkpoint has no decoder weight.
fn splade<B: Backend>(
    b: &B,
    w: &Weights,
    cfg: &serde_json::Value,
) -> Result<Splade<B>, ModelError> {
    let c = BertConfig::parse(cfg)?;
    let h = c.hidden_size;
    let t = "cls.predictions.transform";
    let mut transform = Dense::new(
        linear(b, w, &[format!("{t}.dense")], h, h)?,
        Activation::from_name(&c.hidden_act)?,
    );
    transform.norm = Some(layer_norm(
        b,
        w,
        &format!("{t}.LayerNorm"),
        h,
        c.layer_norm_eps,
    )?);
    let decoder_weight = if w.contains("cls.predictions.decoder.weight") {
        "cls.predictions.decoder.weight"
    } else {
        "embeddings.word_embeddings.weight"
    };
    let bias_name = ["cls.predictions.bias", "cls.predictions.decoder.bias"]
        .into_iter()
        .find(|n| w.contains(n));
    let weight = w.get(decoder_weight, &[c.vocab_size, h])?;
    let bias = match bias_name {
        Some(n) => Some(vec![w.get(n, &[c.vocab_size])?]),
        None => None,
    };
    Ok(Splade {
        transform,
        decoder: b.load_linear(&[weight], bias.as_deref())?,
    })
}
