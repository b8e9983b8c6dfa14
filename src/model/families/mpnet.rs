//! MPNet (`mpnet`, all-mpnet-base-v2): BERT's post-norm encoder plus a T5-style bucketed
//! relative position bias (`encoder.relative_attention_bias`, `[buckets, heads]`), loaded once
//! and added to the scores of every layer. Absolute positions start at `pad_token_id + 1`; no
//! token types; Q/K/V/O are `attention.attn.{q,k,v,o}`.

use super::bert::{BertConfig, BertLike, Embeddings};
use super::encoder::{Encoder, EncoderLayer, LayerNames};
use super::{field, tensor, Backbone, Facts, FamilySpec};
use crate::model::heads::Classifier;
use crate::model::layers::{Activation, Backend, Buckets};
use crate::model::weights::Weights;
use crate::model::ModelError;

/// MPNet hard-codes the bias's largest distance (`relative_position_bucket(max_distance=128)`).
const MAX_DISTANCE: usize = 128;

fn pad_id(c: &BertConfig) -> u32 {
    c.pad_token_id.unwrap_or(1)
}

fn config(cfg: &serde_json::Value) -> Result<(BertConfig, usize), ModelError> {
    let mut c = BertConfig::parse(cfg)?;
    c.type_vocab_size = 0;
    if c.max_position_embeddings <= pad_id(&c) as usize + 1 {
        return Err(ModelError::Unsupported(format!(
            "max_position_embeddings {} leaves no position after pad_token_id {}",
            c.max_position_embeddings,
            pad_id(&c)
        )));
    }
    let buckets = field(cfg, &["relative_attention_num_buckets"]).unwrap_or(32);
    if buckets < 4 {
        return Err(ModelError::Unsupported(format!(
            "relative_attention_num_buckets {buckets} (at least 4)"
        )));
    }
    Ok((c, buckets))
}

/// MPNet in the family table.
pub struct Spec;

impl FamilySpec for Spec {
    fn facts(cfg: &serde_json::Value) -> Result<Facts, ModelError> {
        let (c, _) = config(cfg)?;
        Ok(Facts {
            hidden: c.hidden_size,
            max_positions: c.max_position_embeddings - pad_id(&c) as usize - 1,
            vocab: c.vocab_size,
        })
    }

    fn backbone<B: Backend>(
        b: &B,
        w: &mut Weights,
        cfg: &serde_json::Value,
    ) -> Result<Box<dyn Backbone<B>>, ModelError> {
        let (c, buckets) = config(cfg)?;
        if !w.use_prefix(&["", "mpnet."], "embeddings.word_embeddings.weight") {
            return Err(ModelError::Unsupported(
                "no embeddings.word_embeddings.weight (with or without an `mpnet.` prefix): not an \
                 MPNet checkpoint"
                    .into(),
            ));
        }
        Ok(Box::new(BertLike {
            embeddings: Embeddings::load(b, w, &c, pad_id(&c) + 1)?,
            encoder: encoder(b, w, &c, buckets)?,
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
    qkv: ["attention.attn.q", "attention.attn.k", "attention.attn.v"],
    attn_out: "attention.attn.o",
    attn_norm: "attention.LayerNorm",
    mlp_in: "intermediate.dense",
    mlp_out: "output.dense",
    mlp_norm: "output.LayerNorm",
};

fn encoder<B: Backend>(
    b: &B,
    w: &Weights,
    c: &BertConfig,
    buckets: usize,
) -> Result<Encoder<B>, ModelError> {
    let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        layers.push(EncoderLayer::load(b, w, &p, &LAYER, (h, i, eps))?);
    }
    let name = "encoder.relative_attention_bias.weight";
    let table = tensor(w, name, &[buckets, c.num_attention_heads])?;
    let bias = b.load_bias(
        table,
        Buckets {
            num_buckets: buckets,
            max_distance: MAX_DISTANCE,
        },
    )?;
    w.release(name);
    Ok(Encoder {
        layers,
        heads: c.num_attention_heads,
        head_dim: h / c.num_attention_heads,
        activation: Activation::from_name(&c.hidden_act)?,
        rope: None,
        bias: Some(bias),
    })
}

/// `MPNetForSequenceClassification`: RoBERTa's head (`classifier.dense` → tanh →
/// `classifier.out_proj` on the first token).
fn classifier<B: Backend>(
    b: &B,
    w: &Weights,
    cfg: &serde_json::Value,
    labels: Vec<String>,
) -> Result<Classifier<B>, ModelError> {
    let (c, _) = config(cfg)?;
    super::xlm_roberta::classification_head(b, w, c.hidden_size, labels)
}
