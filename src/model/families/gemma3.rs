//! Gemma3 text (`gemma3_text`: EmbeddingGemma, Gemma3 1B): the decoder with four norms per
//! layer (`r + norm(attention)`, `r + norm(mlp)`), RMSNorm scaling by `(1 + w)`, embeddings
//! × √hidden, q/k norms, Q·Kᵀ scaled by `query_pre_attn_scalar^-½`, a GELU-tanh gate, and
//! sliding-window layers (RoPE base `rope_local_base_freq`) between full ones (`rope_theta`
//! and its scaling).
//!
//! EmbeddingGemma is bidirectional (`use_bidirectional_attention`): transformers then turns
//! `sliding_window` `w` into `w / 2 + 1` and masks `|i - j| < w / 2 + 1`, so a sliding layer
//! sees `±w/2`. Causal Gemma3 sliding layers see `i - j < w`.

use super::decoder::{self, causal, DecoderConfig, DecoderOptions, DecoderSpec, LayerKind};
use super::field;
use super::rope::RopeParams;
use crate::model::layers::Mask;
use crate::model::{ModelError, Pooling};

fn options(cfg: &serde_json::Value) -> Result<DecoderOptions, ModelError> {
    let c = DecoderConfig::parse(cfg)?;
    if field::<f64>(cfg, &["attn_logit_softcapping"]).is_some() {
        return Err(ModelError::Unsupported(
            "gemma3 with attn_logit_softcapping".into(),
        ));
    }
    let d = c.head_dim();
    let global = decoder::rope(cfg, &c, "full_attention")?;
    let local = if RopeParams::has_layer_type(cfg, "sliding_attention") {
        decoder::rope(cfg, &c, "sliding_attention")?
    } else {
        // transformers 4: the local layers rotate with the default rule on their own base.
        RopeParams {
            theta: field(cfg, &["rope_local_base_freq"]).unwrap_or(10_000.0),
            scaling: None,
        }
        .rope(cfg, d, c.max_position_embeddings)?
    };
    let pattern: usize = field(cfg, &["_sliding_window_pattern", "sliding_window_pattern"])
        .unwrap_or(6)
        .max(1);
    let bidirectional = c.bidirectional();
    let scalar: f64 = field(cfg, &["query_pre_attn_scalar"]).unwrap_or(d as f64);
    let mut o = DecoderOptions::llama_like(&c, global, |_| Mask::FULL)?;
    o.ropes.push(local);
    o.layers = (0..c.num_hidden_layers)
        .map(|i| {
            let sliding = c.is_sliding(i, |i| (i + 1) % pattern != 0);
            let window = c.sliding_window.filter(|_| sliding);
            let mask = match (bidirectional, window) {
                (true, None) => Mask::FULL,
                (true, Some(w)) => Mask::window(w / 2),
                (false, w) => causal(w),
            };
            LayerKind {
                mask,
                rope: usize::from(sliding),
            }
        })
        .collect();
    o.norm_offset = 1.0;
    o.scale = scalar.powf(-0.5) as f32;
    o.embed_scale = Some((c.hidden_size as f32).sqrt());
    o.qk_norm = true;
    o.sandwich = true;
    Ok(o)
}

/// Gemma3 in the family table.
pub struct Spec;

impl DecoderSpec for Spec {
    /// EmbeddingGemma is bidirectional and mean-pools.
    const POOLING: Pooling = Pooling::Mean;

    fn options(cfg: &serde_json::Value) -> Result<DecoderOptions, ModelError> {
        options(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_sliding_pattern_without_layer_types() {
        // EmbeddingGemma's shape: five sliding layers per full one, window 512 -> ±256.
        let cfg = json!({"vocab_size": 10, "hidden_size": 16, "num_hidden_layers": 12,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
            "intermediate_size": 32, "hidden_activation": "gelu_pytorch_tanh",
            "sliding_window": 512, "_sliding_window_pattern": 6, "query_pre_attn_scalar": 16,
            "rope_theta": 1e6, "rope_local_base_freq": 1e4, "use_bidirectional_attention": true});
        let o = options(&cfg).unwrap();
        for (i, l) in o.layers.iter().enumerate() {
            let full = i == 5 || i == 11;
            assert_eq!(
                l.mask,
                if full { Mask::FULL } else { Mask::window(256) },
                "layer {i}"
            );
            assert_eq!(l.rope, usize::from(!full), "layer {i}");
        }
        assert_eq!(o.ropes[0].inv_freq[1], (1.0 / 1e6f64.powf(0.25)) as f32);
        assert_eq!(o.ropes[1].inv_freq[1], (1.0 / 1e4f64.powf(0.25)) as f32);
        assert_eq!(o.scale, 0.25);
        assert_eq!(o.embed_scale, Some(4.0));
        assert_eq!(o.gate, crate::model::layers::Gate::GeluTanh);
        assert!(o.sandwich && o.qk_norm && o.norm_offset == 1.0);
        // Causal Gemma3: a sliding layer sees i - j < window.
        let mut causal_cfg = cfg.clone();
        causal_cfg["use_bidirectional_attention"] = false.into();
        let o = options(&causal_cfg).unwrap();
        assert_eq!(o.layers[0].mask, Mask::causal(Some(511)));
        assert_eq!(o.layers[5].mask, Mask::causal(None));
    }
}
