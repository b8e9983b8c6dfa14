//! Mistral (`mistral`: e5-mistral, SFR-Embedding): the Llama-style decoder with a sliding
//! window on every layer when `sliding_window` is set (a token sees itself and the
//! `window - 1` before it).

use super::decoder::{self, causal, DecoderConfig, DecoderOptions, DecoderSpec};
use crate::model::layers::Mask;
use crate::model::ModelError;

fn options(cfg: &serde_json::Value) -> Result<DecoderOptions, ModelError> {
    let c = DecoderConfig::parse(cfg)?;
    let rope = decoder::rope(cfg, &c, "full_attention")?;
    let bidirectional = c.bidirectional();
    DecoderOptions::llama_like(&c, rope, |i| {
        let w = c.sliding_window.filter(|_| c.is_sliding(i, |_| true));
        match (bidirectional, w) {
            (true, None) => Mask::FULL,
            (true, Some(w)) => Mask::window(w.saturating_sub(1)),
            (false, w) => causal(w),
        }
    })
}

/// Mistral in the family table.
pub struct Spec;

impl DecoderSpec for Spec {
    fn options(cfg: &serde_json::Value) -> Result<DecoderOptions, ModelError> {
        options(cfg)
    }
}
