//! DistilBERT (`distilbert`): BERT's post-norm encoder under other names (`dim`, `n_heads`,
//! `transformer.layer.{i}.attention.q_lin`, `sa_layer_norm`, `ffn.lin1`, ...), word +
//! position embeddings without token types. Classifier: `pre_classifier` → ReLU →
//! `classifier` on the first token.

use serde::Deserialize;

use super::bert::{BertConfig, BertLike, Embeddings};
use super::encoder::{Encoder, EncoderLayer, LayerNames};
use super::{Backbone, Facts, FamilySpec};
use crate::model::heads::Classifier;
use crate::model::layers::{Activation, Backend};
use crate::model::weights::Weights;
use crate::model::ModelError;

/// DistilBERT's LayerNorms are built with this eps, whatever the config says.
const EPS: f64 = 1e-12;

#[derive(Debug, Clone, Deserialize)]
struct DistilBertConfig {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    #[serde(default = "default_act")]
    activation: String,
    max_position_embeddings: usize,
}

fn default_act() -> String {
    "gelu".into()
}

impl DistilBertConfig {
    fn parse(cfg: &serde_json::Value) -> Result<Self, ModelError> {
        let c: Self = serde_json::from_value(cfg.clone()).map_err(|e| ModelError::Corrupt {
            file: "config.json".into(),
            reason: e.to_string(),
        })?;
        if c.n_heads == 0 || !c.dim.is_multiple_of(c.n_heads) {
            return Err(ModelError::Unsupported(format!(
                "dim {} is not a multiple of n_heads {}",
                c.dim, c.n_heads
            )));
        }
        Ok(c)
    }

    /// The embeddings as BERT's loader reads them (no token types). Sinusoidal position
    /// tables (`sinusoidal_pos_embds`) are saved in the checkpoint like learned ones.
    fn as_bert(&self) -> BertConfig {
        BertConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.dim,
            num_hidden_layers: self.n_layers,
            num_attention_heads: self.n_heads,
            intermediate_size: self.hidden_dim,
            hidden_act: self.activation.clone(),
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: 0,
            layer_norm_eps: EPS,
            position_embedding_type: None,
            pad_token_id: None,
        }
    }
}

/// DistilBERT in the family table.
pub struct Spec;

impl FamilySpec for Spec {
    fn facts(cfg: &serde_json::Value) -> Result<Facts, ModelError> {
        let c = DistilBertConfig::parse(cfg)?;
        Ok(Facts {
            hidden: c.dim,
            max_positions: c.max_position_embeddings,
            vocab: c.vocab_size,
        })
    }

    fn backbone<B: Backend>(
        b: &B,
        w: &mut Weights,
        cfg: &serde_json::Value,
    ) -> Result<Box<dyn Backbone<B>>, ModelError> {
        let c = DistilBertConfig::parse(cfg)?;
        if !w.use_prefix(&["", "distilbert."], "embeddings.word_embeddings.weight") {
            return Err(ModelError::Unsupported(
                "no embeddings.word_embeddings.weight (with or without a `distilbert.` prefix): not \
                 a DistilBERT checkpoint"
                    .into(),
            ));
        }
        Ok(Box::new(BertLike {
            embeddings: Embeddings::load(b, w, &c.as_bert(), 0)?,
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
}

const LAYER: LayerNames = LayerNames {
    qkv: ["attention.q_lin", "attention.k_lin", "attention.v_lin"],
    attn_out: "attention.out_lin",
    attn_norm: "sa_layer_norm",
    mlp_in: "ffn.lin1",
    mlp_out: "ffn.lin2",
    mlp_norm: "output_layer_norm",
};

fn encoder<B: Backend>(b: &B, w: &Weights, c: &DistilBertConfig) -> Result<Encoder<B>, ModelError> {
    let (h, i) = (c.dim, c.hidden_dim);
    let mut layers = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let p = format!("transformer.layer.{l}");
        layers.push(EncoderLayer::load(b, w, &p, &LAYER, (h, i, EPS))?);
    }
    Ok(Encoder {
        layers,
        heads: c.n_heads,
        head_dim: h / c.n_heads,
        activation: Activation::from_name(&c.activation)?,
        rope: None,
        bias: None,
    })
}

/// `DistilBertForSequenceClassification`: first token → pre_classifier → ReLU → classifier.
fn classifier<B: Backend>(
    b: &B,
    w: &Weights,
    cfg: &serde_json::Value,
    labels: Vec<String>,
) -> Result<Classifier<B>, ModelError> {
    let c = DistilBertConfig::parse(cfg)?;
    super::first_token_head(
        b,
        w,
        "pre_classifier",
        Activation::Relu,
        "classifier",
        c.dim,
        labels,
    )
}
