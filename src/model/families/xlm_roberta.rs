//! RoBERTa, XLM-RoBERTa and CamemBERT (`roberta`, `xlm-roberta`, `camembert`): BERT's
//! embeddings and post-norm encoder with positions counted from `pad_token_id + 1` and one
//! token type; the `*ForSequenceClassification` head is `classifier.dense` → tanh →
//! `classifier.out_proj` on the first token (no pooler).

use super::bert::{self, BertConfig, BertLike, Embeddings};
use super::{Backbone, Facts, FamilySpec};
use crate::model::heads::Classifier;
use crate::model::layers::{Activation, Backend};
use crate::model::weights::Weights;
use crate::model::ModelError;

/// RoBERTa's `padding_idx` (1 in every released checkpoint).
fn pad_id(c: &BertConfig) -> u32 {
    c.pad_token_id.unwrap_or(1)
}

fn config(cfg: &serde_json::Value) -> Result<BertConfig, ModelError> {
    let mut c = BertConfig::parse(cfg)?;
    // Position rows 0..=pad are never used: the first token sits at pad + 1.
    let first = pad_id(&c) as usize + 1;
    if c.max_position_embeddings <= first {
        return Err(ModelError::Unsupported(format!(
            "max_position_embeddings {} leaves no position after pad_token_id {}",
            c.max_position_embeddings,
            pad_id(&c)
        )));
    }
    // A one-type model still ships a one-row table; a missing key means the same.
    if cfg.get("type_vocab_size").is_none() {
        c.type_vocab_size = 1;
    }
    Ok(c)
}

/// RoBERTa / XLM-R in the family table.
pub struct Spec;

impl FamilySpec for Spec {
    fn facts(cfg: &serde_json::Value) -> Result<Facts, ModelError> {
        let c = config(cfg)?;
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
        let c = config(cfg)?;
        use_prefix(w)?;
        Ok(Box::new(BertLike {
            embeddings: Embeddings::load(b, w, &c, pad_id(&c) + 1)?,
            encoder: bert::encoder(b, w, &c)?,
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

fn use_prefix(w: &mut Weights) -> Result<(), ModelError> {
    let prefixes = ["", "roberta.", "xlm-roberta.", "camembert."];
    if w.use_prefix(&prefixes, "embeddings.word_embeddings.weight") {
        Ok(())
    } else {
        Err(ModelError::Unsupported(
            "no embeddings.word_embeddings.weight (with no prefix or `roberta.`, `xlm-roberta.`, \
             `camembert.`): not a RoBERTa checkpoint"
                .into(),
        ))
    }
}

/// `RobertaClassificationHead`: first token → dense → tanh → out_proj. MPNet's
/// `*ForSequenceClassification` uses the same head and names.
pub fn classification_head<B: Backend>(
    b: &B,
    w: &Weights,
    hidden: usize,
    labels: Vec<String>,
) -> Result<Classifier<B>, ModelError> {
    super::first_token_head(
        b,
        w,
        "classifier.dense",
        Activation::Tanh,
        "classifier.out_proj",
        hidden,
        labels,
    )
}

fn classifier<B: Backend>(
    b: &B,
    w: &Weights,
    cfg: &serde_json::Value,
    labels: Vec<String>,
) -> Result<Classifier<B>, ModelError> {
    let c = config(cfg)?;
    classification_head(b, w, c.hidden_size, labels)
}
