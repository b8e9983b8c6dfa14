//! Model families, each written once on the layer seam (`layers.rs`): a config, the weight
//! names, and the forward pass as calls on a [`Backend`]. No device code lives here.
//!
//! `encoder.rs` is the post-norm encoder stack BERT-like families share (BERT, RoBERTa /
//! XLM-R, DistilBERT, MPNet, NomicBERT, GTE); each family file maps its checkpoint's names and
//! its embeddings onto it.

pub mod bert;
pub mod decoder;
pub mod distilbert;
pub mod encoder;
pub mod gemma3;
pub mod gte;
pub mod llama;
pub mod mistral;
pub mod modernbert;
pub mod mpnet;
pub mod nomic;
pub mod qwen2;
pub mod qwen3;
pub mod rope;
pub mod xlm_roberta;

use super::batch::PackedBatch;
use super::heads::{Classifier, Splade};
use super::layers::{Backend, NormKind};
use super::registry::{Architecture, Family};
use super::weights::{HostTensor, Weights};
use super::ModelError;

/// What every family's config tells the rest of the server.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub hidden: usize,
    /// Longest input the positions allow.
    pub max_positions: usize,
    pub vocab: usize,
}

// The registry: one arm per family in each of these.

pub fn facts(family: Family, cfg: &serde_json::Value) -> Result<Facts, ModelError> {
    match family {
        Family::Bert => bert::facts(cfg),
        Family::XlmRoberta => xlm_roberta::facts(cfg),
        Family::DistilBert => distilbert::facts(cfg),
        Family::MpNet => mpnet::facts(cfg),
        Family::ModernBert => modernbert::facts(cfg),
        Family::NomicBert => nomic::facts(cfg),
        Family::Gte => gte::facts(cfg),
        Family::Qwen3 => qwen3::facts(cfg),
        Family::Qwen2 => qwen2::facts(cfg),
        Family::Mistral => mistral::facts(cfg),
        Family::Llama => llama::facts(cfg),
        Family::Gemma3 => gemma3::facts(cfg),
    }
}

pub fn backbone<B: Backend>(
    family: Family,
    b: &B,
    w: &mut Weights,
    cfg: &serde_json::Value,
) -> Result<Box<dyn Backbone<B>>, ModelError> {
    match family {
        Family::Bert => bert::backbone(b, w, cfg),
        Family::XlmRoberta => xlm_roberta::backbone(b, w, cfg),
        Family::DistilBert => distilbert::backbone(b, w, cfg),
        Family::MpNet => mpnet::backbone(b, w, cfg),
        Family::ModernBert => modernbert::backbone(b, w, cfg),
        Family::NomicBert => nomic::backbone(b, w, cfg),
        Family::Gte => gte::backbone(b, w, cfg),
        Family::Qwen3 => qwen3::backbone(b, w, cfg),
        Family::Qwen2 => qwen2::backbone(b, w, cfg),
        Family::Mistral => mistral::backbone(b, w, cfg),
        Family::Llama => llama::backbone(b, w, cfg),
        Family::Gemma3 => gemma3::backbone(b, w, cfg),
    }
}

/// The `*ForSequenceClassification` head (or another task's scoring head).
pub fn classifier<B: Backend>(
    arch: &Architecture,
    b: &B,
    w: &Weights,
    cfg: &serde_json::Value,
    labels: Vec<String>,
) -> Result<Classifier<B>, ModelError> {
    match arch.family {
        Family::Bert => bert::classifier(b, w, cfg, labels),
        Family::XlmRoberta => xlm_roberta::classifier(b, w, cfg, labels),
        Family::DistilBert => distilbert::classifier(b, w, cfg, labels),
        Family::MpNet => mpnet::classifier(b, w, cfg, labels),
        Family::ModernBert => modernbert::classifier(b, w, cfg, labels),
        Family::NomicBert => nomic::classifier(b, w, cfg, labels),
        Family::Gte => gte::classifier(b, w, cfg, labels),
        Family::Qwen3 | Family::Qwen2 | Family::Mistral | Family::Llama | Family::Gemma3 => {
            Err(ModelError::Unsupported(format!(
                "{}: only the causal-LM yes/no reranker head (--task rerank)",
                arch.name
            )))
        }
    }
}

/// A causal LM as a reranker (Qwen3-Reranker): one logit, logit("yes") − logit("no") at the
/// last token, from two rows of the LM head; `yes_no` are the tokenizer's ids of the words.
pub fn lm_reranker<B: Backend>(
    arch: &Architecture,
    b: &B,
    w: &Weights,
    cfg: &serde_json::Value,
    yes_no: (u32, u32),
) -> Result<Classifier<B>, ModelError> {
    match arch.family {
        Family::Qwen3 | Family::Qwen2 | Family::Mistral | Family::Llama | Family::Gemma3 => {
            decoder::yes_no(b, w, facts(arch.family, cfg)?.hidden, yes_no)
        }
        other => Err(ModelError::Unsupported(format!(
            "{} is not a causal LM: no yes/no reranker head",
            other.name()
        ))),
    }
}

/// The masked-LM head SPLADE runs.
pub fn splade<B: Backend>(
    family: Family,
    b: &B,
    w: &Weights,
    cfg: &serde_json::Value,
) -> Result<Splade<B>, ModelError> {
    match family {
        Family::Bert => bert::splade(b, w, cfg),
        other => Err(ModelError::Unsupported(format!(
            "--pooling splade with a {} masked-LM head (only BERT's is supported)",
            other.name()
        ))),
    }
}

/// A family's network up to the last hidden states.
pub trait Backbone<B: Backend>: Send + Sync {
    /// `[tokens, hidden]` for the packed batch. `at_yield` runs between the layers' products
    /// so the worker can serve urgent inputs in the middle of a long offline batch.
    fn forward(
        &self,
        b: &B,
        plan: &B::Plan,
        batch: &PackedBatch,
        at_yield: &mut dyn FnMut(),
    ) -> Result<B::Act, ModelError>;
}

/// A tensor that must be `shape`, released from the host mapping once the backend has it.
pub(crate) fn tensor<'w>(
    w: &'w Weights,
    name: &str,
    shape: &[usize],
) -> Result<HostTensor<'w>, ModelError> {
    w.get(name, shape)
}

/// `{p}.weight` `[out_each, inp]` for each prefix stacked along `out`, with `{p}.bias` when the
/// checkpoint has them (all or none).
pub(crate) fn linear<B: Backend>(
    b: &B,
    w: &Weights,
    prefixes: &[String],
    inp: usize,
    out_each: usize,
) -> Result<B::Linear, ModelError> {
    let weights = prefixes
        .iter()
        .map(|p| tensor(w, &format!("{p}.weight"), &[out_each, inp]))
        .collect::<Result<Vec<_>, _>>()?;
    let has_bias = prefixes.iter().all(|p| w.contains(&format!("{p}.bias")));
    let bias = if has_bias {
        Some(
            prefixes
                .iter()
                .map(|p| tensor(w, &format!("{p}.bias"), &[out_each]))
                .collect::<Result<Vec<_>, _>>()?,
        )
    } else {
        None
    };
    let l = b.load_linear(&weights, bias.as_deref())?;
    for p in prefixes {
        w.release(&format!("{p}.weight"));
        w.release(&format!("{p}.bias"));
    }
    Ok(l)
}

/// The usual sequence-classification head: the first token → `dense` (hidden → hidden) →
/// `activation` → `out` (hidden → one logit per label). BERT (`pooler.dense`, tanh), DistilBERT
/// (`pre_classifier`, ReLU), RoBERTa and MPNet (`classifier.dense`, tanh) differ only in names.
pub(crate) fn first_token_head<B: Backend>(
    b: &B,
    w: &Weights,
    dense: &str,
    activation: super::layers::Activation,
    out: &str,
    hidden: usize,
    labels: Vec<String>,
) -> Result<Classifier<B>, ModelError> {
    use super::heads::Dense;
    Ok(Classifier {
        pooling: super::Pooling::Cls,
        steps: vec![
            Dense::new(linear(b, w, &[dense.into()], hidden, hidden)?, activation),
            Dense::new(
                linear(b, w, &[out.into()], hidden, labels.len())?,
                super::layers::Activation::None,
            ),
        ],
        labels,
    })
}

/// A layer norm at `prefix` (`weight`/`bias`, or old checkpoints' `gamma`/`beta`; the bias may
/// be absent).
pub(crate) fn layer_norm<B: Backend>(
    b: &B,
    w: &Weights,
    prefix: &str,
    width: usize,
    eps: f64,
) -> Result<B::Norm, ModelError> {
    let weight = w.get_first(
        &[&format!("{prefix}.weight"), &format!("{prefix}.gamma")],
        &[width],
    )?;
    let bias_names = [format!("{prefix}.bias"), format!("{prefix}.beta")];
    let bias = match bias_names.iter().find(|n| w.contains(n)) {
        Some(n) => Some(w.get(n, &[width])?),
        None => None,
    };
    b.load_norm(
        NormKind::Layer { eps: eps as f32 },
        width,
        Some(weight),
        bias,
    )
}

/// An RMS norm `{prefix}.weight` (`offset` 1 for Gemma's `1 + w`).
pub(crate) fn rms_norm<B: Backend>(
    b: &B,
    w: &Weights,
    prefix: &str,
    width: usize,
    eps: f64,
    offset: f32,
) -> Result<B::Norm, ModelError> {
    let weight = w.get(&format!("{prefix}.weight"), &[width])?;
    b.load_norm(
        NormKind::Rms {
            eps: eps as f32,
            offset,
        },
        width,
        Some(weight),
        None,
    )
}

/// An embedding table `[rows, width]`.
pub(crate) fn table<B: Backend>(
    b: &B,
    w: &Weights,
    name: &str,
    rows: usize,
    width: usize,
) -> Result<B::Table, ModelError> {
    let t = b.load_table(tensor(w, name, &[rows, width])?)?;
    w.release(name);
    Ok(t)
}

/// Reads a config field that checkpoints name differently (`hidden_size` / `n_embd` / `dim`).
pub(crate) fn field<T: serde::de::DeserializeOwned>(
    cfg: &serde_json::Value,
    names: &[&str],
) -> Option<T> {
    names
        .iter()
        .find_map(|n| cfg.get(n).cloned())
        .and_then(|v| serde_json::from_value(v).ok())
}
