//! Qwen3 (`qwen3`: Qwen3-Embedding, Qwen3-Reranker): Qwen2's decoder without biases, with
//! per-head `q_norm` / `k_norm` before the rotation and `head_dim` independent of
//! `hidden / heads`. Qwen3-Embedding checkpoints are bare `Qwen3Model`s although their
//! config says `Qwen3ForCausalLM`; the reranker's have the `model.` prefix and a tied head.

use super::decoder::{self, Decoder, DecoderConfig};
use super::{qwen2, Backbone, Facts};
use crate::model::layers::Backend;
use crate::model::weights::Weights;
use crate::model::ModelError;

pub fn facts(cfg: &serde_json::Value) -> Result<Facts, ModelError> {
    Ok(DecoderConfig::parse(cfg)?.facts())
}

pub fn backbone<B: Backend>(
    b: &B,
    w: &mut Weights,
    cfg: &serde_json::Value,
) -> Result<Box<dyn Backbone<B>>, ModelError> {
    let o = qwen2::options(cfg, true)?;
    decoder::use_prefix(w)?;
    Ok(Box::new(Decoder::load(b, w, o)?))
}
