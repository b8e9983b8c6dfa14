//! Llama (`llama`: Llama 2 / 3.x-based embedders such as LLM2Vec or NV-Embed-like exports):
//! the plain Llama-style decoder, causal, with the config's RoPE scaling (llama3 for 3.1+).

use super::decoder::{self, causal, Decoder, DecoderConfig, DecoderOptions};
use super::{Backbone, Facts};
use crate::model::layers::{Backend, Mask};
use crate::model::weights::Weights;
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

pub fn facts(cfg: &serde_json::Value) -> Result<Facts, ModelError> {
    Ok(DecoderConfig::parse(cfg)?.facts())
}

pub fn backbone<B: Backend>(
    b: &B,
    w: &mut Weights,
    cfg: &serde_json::Value,
) -> Result<Box<dyn Backbone<B>>, ModelError> {
    let o = options(cfg)?;
    decoder::use_prefix(w)?;
    Ok(Box::new(Decoder::load(b, w, o)?))
}
