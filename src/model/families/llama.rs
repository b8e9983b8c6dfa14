//! Llama (`llama`: Llama 2 / 3.x-based embedders such as LLM2Vec or NV-Embed-like exports):
//! the plain Llama-style decoder, causal, with the config's RoPE scaling (llama3 for 3.1+).

use super::decoder::{self, causal, DecoderConfig, DecoderOptions, DecoderSpec};
use crate::model::layers::Mask;
use crate::model::ModelError;

fn options(cfg: &serde_json::Value) -> Result<DecoderOptions, ModelError> {
    let c = DecoderConfig::parse(cfg)?;
    let rope = decoder::rope(cfg, &c, "full_attention")?;
    let mask = if c.bidirectional() {
        Mask::FULL
    } else {
        causal(None)
    };
    DecoderOptions::llama_like(&c, rope, |_| mask)
}

/// Llama in the family table.
pub struct Spec;

impl DecoderSpec for Spec {
    fn options(cfg: &serde_json::Value) -> Result<DecoderOptions, ModelError> {
        options(cfg)
    }
}
