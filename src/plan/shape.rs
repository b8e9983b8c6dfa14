//! The model's shape from config.json.

use serde::Serialize;

/// The shape numbers plan needs from config.json, under the names the common families use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelShape {
    pub model_type: String,
    pub hidden: u64,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    /// Width of one attention head (`head_dim`; Qwen3 sets it apart from hidden / heads).
    pub head_dim: u64,
    pub intermediate: u64,
    pub vocab: u64,
    pub max_positions: u64,
    pub type_vocab: u64,
    /// Gated MLP (llama, mistral, qwen2, gemma): three matrices instead of two.
    pub gated_mlp: bool,
    /// A separate output projection (causal LMs without tied embeddings).
    pub lm_head: bool,
    /// config.json's `torch_dtype` (bfloat16 checkpoints default to bfloat16 on a GPU).
    pub saved_dtype: Option<String>,
}

fn field(cfg: &serde_json::Value, names: &[&str]) -> Option<u64> {
    names
        .iter()
        .find_map(|n| cfg.get(*n).and_then(|v| v.as_u64()))
}

impl ModelShape {
    pub fn from_config(cfg: &serde_json::Value) -> Result<Self, String> {
        let need = |names: &[&str]| {
            field(cfg, names).ok_or_else(|| format!("config.json has none of {names:?}"))
        };
        let model_type = cfg
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string();
        let hidden = need(&["hidden_size", "n_embd", "d_model", "dim"])?;
        let heads = need(&["num_attention_heads", "n_head", "num_heads", "n_heads"])?;
        let gated_mlp = matches!(
            model_type.as_str(),
            "llama" | "mistral" | "qwen2" | "qwen3" | "gemma" | "gemma2" | "gemma3_text"
        );
        let architectures: Vec<&str> = cfg
            .get("architectures")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let tied = cfg
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(!gated_mlp);
        Ok(Self {
            hidden,
            layers: need(&["num_hidden_layers", "n_layer", "num_layers", "n_layers"])?,
            heads,
            kv_heads: field(cfg, &["num_key_value_heads", "n_kv_heads"]).unwrap_or(heads),
            head_dim: field(cfg, &["head_dim"]).unwrap_or(hidden / heads.max(1)),
            intermediate: field(cfg, &["intermediate_size", "n_inner", "ffn_dim", "d_ff"])
                .unwrap_or(4 * hidden),
            vocab: need(&["vocab_size"])?,
            max_positions: field(
                cfg,
                &["max_position_embeddings", "n_positions", "max_seq_len"],
            )
            .unwrap_or(512),
            type_vocab: field(cfg, &["type_vocab_size"]).unwrap_or(0),
            gated_mlp,
            lm_head: !tied && architectures.iter().any(|a| a.ends_with("ForCausalLM")),
            saved_dtype: cfg
                .get("torch_dtype")
                .or_else(|| cfg.get("dtype"))
                .and_then(|v| v.as_str())
                .map(str::to_string),
            model_type,
        })
    }

    /// Parameters implied by the shape, for when no safetensors header is at hand and as a
    /// cross-check of the headers (BERT-style encoders and llama-style decoders).
    pub fn estimated_parameters(&self) -> u64 {
        let (h, i) = (self.hidden, self.intermediate);
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let per_layer = if self.gated_mlp {
            // q, o: h x q; k, v: h x kv; gate, up, down: h x i; two RMS norms; Qwen3's
            // q/k norms over one head; Qwen2's q, k, v biases.
            let qk_norm = if self.model_type == "qwen3" {
                2 * self.head_dim
            } else {
                0
            };
            let qkv_bias = if self.model_type == "qwen2" {
                q + 2 * kv
            } else {
                0
            };
            2 * h * q + 2 * h * kv + 3 * h * i + 2 * h + qk_norm + qkv_bias
        } else {
            // q, k, v, o and the two MLP matrices with biases; two layer norms.
            4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h
        };
        let mut embeddings = self.vocab * h;
        if !self.gated_mlp {
            // Learned positions, token types, the embedding layer norm, the pooler.
            embeddings += self.max_positions * h + self.type_vocab * h + 2 * h + (h * h + h);
        } else {
            embeddings += h; // final norm
        }
        embeddings + self.layers * per_layer + self.lm_head_parameters()
    }

    /// The separate output projection's parameters (stored, never loaded whole).
    pub fn lm_head_parameters(&self) -> u64 {
        if self.lm_head {
            self.vocab * self.hidden
        } else {
            0
        }
    }

    /// FLOPs of one forward pass over one input of `tokens` tokens (matmuls only).
    pub fn flops_per_input(&self, tokens: u64) -> f64 {
        let dense = self
            .estimated_parameters()
            .saturating_sub(self.vocab * self.hidden + self.lm_head_parameters());
        let attention = 4 * self.layers * tokens * tokens * self.hidden;
        2.0 * dense as f64 * tokens as f64 + attention as f64
    }

    /// Peak device bytes of the activations of one batch of `tokens` padded tokens: the dense
    /// layers run on the packed tokens (qkv, its padded copy, context, the MLP intermediate and
    /// its activation, residuals: 9h + 2i values a token) and attention holds scores and
    /// probabilities (2 x heads x L x L a sequence; n sequences of L tokens fill at most
    /// `tokens`, so at most 2 x heads x tokens x L with L the longest input).
    pub fn activation_bytes(&self, tokens: u64, dtype_bytes: u64) -> u64 {
        let dense = tokens * dtype_bytes * (9 * self.hidden + 2 * self.intermediate);
        let longest = self.max_positions.min(tokens);
        let attention = 2 * self.heads * tokens * longest * dtype_bytes;
        dense + attention
    }
}
