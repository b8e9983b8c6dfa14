//! Qwen3 (`qwen3`: Qwen3-Embedding, Qwen3-Reranker): Qwen2's decoder without biases, with
//! per-head `q_norm` / `k_norm` before the rotation and `head_dim` independent of
//! `hidden / heads`. Qwen3-Embedding checkpoints are bare `Qwen3Model`s although their
//! config says `Qwen3ForCausalLM`; the reranker's have the `model.` prefix and a tied head.

use super::decoder::{DecoderOptions, DecoderSpec};
use super::qwen2;
use crate::model::ModelError;

/// Qwen3 in the family table.
pub struct Spec;

impl DecoderSpec for Spec {
    fn options(cfg: &serde_json::Value) -> Result<DecoderOptions, ModelError> {
        qwen2::options(cfg, true)
    }
}
