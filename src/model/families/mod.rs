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
use super::{ModelError, Pooling};

/// What every family's config tells the rest of the server.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub hidden: usize,
    /// Longest input the positions allow.
    pub max_positions: usize,
    pub vocab: usize,
}

/// What a family's file gives the loader. Encoder files implement it; decoder files implement
/// [`decoder::DecoderSpec`] (their options) and get the rest from `decoder.rs`. [`with_spec`]
/// is the one place that maps a [`Family`] to its file.
pub trait FamilySpec {
    /// An embedder's pooling when neither the checkpoint nor the user names one.
    const POOLING: Pooling = Pooling::Mean;

    fn facts(cfg: &serde_json::Value) -> Result<Facts, ModelError>;

    fn backbone<B: Backend>(
        b: &B,
        w: &mut Weights,
        cfg: &serde_json::Value,
    ) -> Result<Box<dyn Backbone<B>>, ModelError>;

    /// The `*ForSequenceClassification` head; `None`: the family has none.
    fn classifier<B: Backend>(
        _b: &B,
        _w: &Weights,
        _cfg: &serde_json::Value,
        _labels: Vec<String>,
    ) -> Option<Result<Classifier<B>, ModelError>> {
        None
    }

    /// A causal LM as a reranker (Qwen3-Reranker): one logit, logit("yes") − logit("no") at
    /// the last token, from two rows of the LM head; `ids` are the tokenizer's ids of the
    /// words. `None`: not a causal LM.
    fn lm_reranker<B: Backend>(
        _b: &B,
        _w: &Weights,
        _cfg: &serde_json::Value,
        _ids: (u32, u32),
    ) -> Option<Result<Classifier<B>, ModelError>> {
        None
    }

    /// The masked-LM head SPLADE runs; `None`: not supported for the family.
    fn splade<B: Backend>(
        _b: &B,
        _w: &Weights,
        _cfg: &serde_json::Value,
    ) -> Option<Result<Splade<B>, ModelError>> {
        None
    }
}

/// Something to do with a family's [`FamilySpec`] (the spec is a type, so the operation is
/// generic over it).
trait Visit {
    type Out;
    fn visit<S: FamilySpec>(self) -> Self::Out;
}

/// The family table: each [`Family`]'s file.
fn with_spec<V: Visit>(family: Family, v: V) -> V::Out {
    match family {
        Family::Bert => v.visit::<bert::Spec>(),
        Family::XlmRoberta => v.visit::<xlm_roberta::Spec>(),
        Family::DistilBert => v.visit::<distilbert::Spec>(),
        Family::MpNet => v.visit::<mpnet::Spec>(),
        Family::ModernBert => v.visit::<modernbert::Spec>(),
        Family::NomicBert => v.visit::<nomic::Spec>(),
        Family::Gte => v.visit::<gte::Spec>(),
        Family::Qwen3 => v.visit::<qwen3::Spec>(),
        Family::Qwen2 => v.visit::<qwen2::Spec>(),
        Family::Mistral => v.visit::<mistral::Spec>(),
        Family::Llama => v.visit::<llama::Spec>(),
        Family::Gemma3 => v.visit::<gemma3::Spec>(),
    }
}

pub fn facts(family: Family, cfg: &serde_json::Value) -> Result<Facts, ModelError> {
    struct Op<'a>(&'a serde_json::Value);
    impl Visit for Op<'_> {
        type Out = Result<Facts, ModelError>;
        fn visit<S: FamilySpec>(self) -> Self::Out {
            S::facts(self.0)
        }
    }
    with_spec(family, Op(cfg))
}

/// An embedder's pooling when neither the checkpoint nor the user names one: decoders pool
/// their last token, encoders (and bidirectional EmbeddingGemma) the mean.
pub fn default_pooling(family: Family) -> Pooling {
    struct Op;
    impl Visit for Op {
        type Out = Pooling;
        fn visit<S: FamilySpec>(self) -> Pooling {
            S::POOLING
        }
    }
    with_spec(family, Op)
}

pub fn backbone<B: Backend>(
    family: Family,
    b: &B,
    w: &mut Weights,
    cfg: &serde_json::Value,
) -> Result<Box<dyn Backbone<B>>, ModelError> {
    struct Op<'a, B>(&'a B, &'a mut Weights, &'a serde_json::Value);
    impl<B: Backend> Visit for Op<'_, B> {
        type Out = Result<Box<dyn Backbone<B>>, ModelError>;
        fn visit<S: FamilySpec>(self) -> Self::Out {
            S::backbone(self.0, self.1, self.2)
        }
    }
    with_spec(family, Op(b, w, cfg))
}

/// The `*ForSequenceClassification` head (or another task's scoring head).
pub fn classifier<B: Backend>(
    arch: &Architecture,
    b: &B,
    w: &Weights,
    cfg: &serde_json::Value,
    labels: Vec<String>,
) -> Result<Classifier<B>, ModelError> {
    struct Op<'a, B>(&'a B, &'a Weights, &'a serde_json::Value, Vec<String>);
    impl<B: Backend> Visit for Op<'_, B> {
        type Out = Option<Result<Classifier<B>, ModelError>>;
        fn visit<S: FamilySpec>(self) -> Self::Out {
            S::classifier(self.0, self.1, self.2, self.3)
        }
    }
    with_spec(arch.family, Op(b, w, cfg, labels)).unwrap_or_else(|| {
        Err(ModelError::Unsupported(format!(
            "{}: only the causal-LM yes/no reranker head (--task rerank)",
            arch.name
        )))
    })
}

/// A causal LM as a reranker (Qwen3-Reranker), see [`FamilySpec::lm_reranker`].
pub fn lm_reranker<B: Backend>(
    arch: &Architecture,
    b: &B,
    w: &Weights,
    cfg: &serde_json::Value,
    ids: (u32, u32),
) -> Result<Classifier<B>, ModelError> {
    struct Op<'a, B>(&'a B, &'a Weights, &'a serde_json::Value, (u32, u32));
    impl<B: Backend> Visit for Op<'_, B> {
        type Out = Option<Result<Classifier<B>, ModelError>>;
        fn visit<S: FamilySpec>(self) -> Self::Out {
            S::lm_reranker(self.0, self.1, self.2, self.3)
        }
    }
    with_spec(arch.family, Op(b, w, cfg, ids)).unwrap_or_else(|| {
        Err(ModelError::Unsupported(format!(
            "{} is not a causal LM: no yes/no reranker head",
            arch.family.name()
        )))
    })
}

/// The masked-LM head SPLADE runs.
pub fn splade<B: Backend>(
    family: Family,
    b: &B,
    w: &Weights,
    cfg: &serde_json::Value,
) -> Result<Splade<B>, ModelError> {
    struct Op<'a, B>(&'a B, &'a Weights, &'a serde_json::Value);
    impl<B: Backend> Visit for Op<'_, B> {
        type Out = Option<Result<Splade<B>, ModelError>>;
        fn visit<S: FamilySpec>(self) -> Self::Out {
            S::splade(self.0, self.1, self.2)
        }
    }
    with_spec(family, Op(b, w, cfg)).unwrap_or_else(|| {
        Err(ModelError::Unsupported(format!(
            "--pooling splade with a {} masked-LM head (only BERT's is supported)",
            family.name()
        )))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoders_pool_their_last_token_and_the_rest_the_mean() {
        let pooling = |t: &str| Family::from_model_type(t).map(default_pooling);
        for t in ["qwen3", "qwen2", "mistral", "llama"] {
            assert_eq!(pooling(t), Some(Pooling::LastToken), "{t}");
        }
        // Bidirectional EmbeddingGemma mean-pools, as the encoders do.
        for t in [
            "gemma3_text",
            "bert",
            "roberta",
            "distilbert",
            "mpnet",
            "modernbert",
        ] {
            assert_eq!(pooling(t), Some(Pooling::Mean), "{t}");
        }
    }

    #[test]
    fn every_family_reads_its_facts_from_its_own_file() {
        // One config that every family's parser accepts: each file answers, none is a stub.
        let cfg = serde_json::json!({"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16,
            "max_position_embeddings": 64, "n_embd": 8, "n_positions": 64, "dim": 8,
            "n_layers": 1, "n_heads": 2, "hidden_dim": 16, "n_layer": 1, "n_head": 2,
            "n_inner": 16, "head_dim": 4, "global_attn_every_n_layers": 1,
            "local_attention": 8});
        for t in Family::supported().split(", ") {
            let family = Family::from_model_type(t).expect("a supported type");
            let f = facts(family, &cfg).unwrap_or_else(|e| panic!("{t}: {e}"));
            assert_eq!((f.hidden, f.vocab), (8, 10), "{t}");
        }
    }
}
