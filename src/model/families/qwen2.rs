//! Qwen2 (`qwen2`: gte-Qwen2 and Qwen2 checkpoints): the Llama-style decoder with biases on
//! q/k/v (not o_proj). Sliding windows only with `use_sliding_window`, then on the layers
//! from `max_window_layers` on (or as `layer_types` says), as transformers' `Qwen2Config`.

use super::decoder::{self, causal, DecoderConfig, DecoderOptions, DecoderSpec};
use super::field;
use crate::model::layers::Mask;
use crate::model::ModelError;

/// Qwen2's shapes and masks; `qk_norm` for Qwen3, which shares the rest.
pub(crate) fn options(
    cfg: &serde_json::Value,
    qk_norm: bool,
) -> Result<DecoderOptions, ModelError> {
    let c = DecoderConfig::parse(cfg)?;
    let window = if field(cfg, &["use_sliding_window"]).unwrap_or(false) {
        c.sliding_window
    } else {
        None
    };
    // transformers' default when the config omits it.
    let first_sliding: usize = field(cfg, &["max_window_layers"]).unwrap_or(28);
    let bidirectional = c.bidirectional();
    let rope = decoder::rope(cfg, &c, "full_attention")?;
    let mut o = DecoderOptions::llama_like(&c, rope, |i| {
        let w = window.filter(|_| c.is_sliding(i, |i| i >= first_sliding));
        match (bidirectional, w) {
            (true, None) => Mask::FULL,
            (true, Some(w)) => Mask::window(w.saturating_sub(1)),
            (false, w) => causal(w),
        }
    })?;
    o.qk_norm = qk_norm;
    Ok(o)
}

/// Qwen2 in the family table.
pub struct Spec;

impl DecoderSpec for Spec {
    fn options(cfg: &serde_json::Value) -> Result<DecoderOptions, ModelError> {
        options(cfg, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 4,
            "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16,
            "sliding_window": 6, "max_window_layers": 2});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn windows_need_use_sliding_window_and_start_at_max_window_layers() {
        let off = options(&cfg(json!({})), false).unwrap();
        assert!(off.layers.iter().all(|l| l.mask == Mask::causal(None)));
        let on = options(&cfg(json!({"use_sliding_window": true})), true).unwrap();
        let masks: Vec<Mask> = on.layers.iter().map(|l| l.mask).collect();
        let (full, window) = (Mask::causal(None), Mask::causal(Some(5)));
        assert_eq!(masks, vec![full, full, window, window]);
        assert!(on.qk_norm && on.head_dim == 4 && on.kv_heads == 1);
        let typed = options(
            &cfg(
                json!({"use_sliding_window": true, "layer_types": ["sliding_attention",
                "full_attention", "full_attention", "full_attention"]}),
            ),
            false,
        )
        .unwrap();
        assert_eq!(typed.layers[0].mask, window);
        assert_eq!(typed.layers[3].mask, full);
    }
}
