//! The post-norm encoder stack of BERT-like families: per layer, fused QKV → attention →
//! output projection + residual + norm → MLP (plain or gated) + residual + norm.
//!
//! Families differ in names, embeddings and attention extras (relative bias, RoPE); they load
//! their layers with the helpers in `families/mod.rs` and run them here.

use crate::model::batch::PackedBatch;
use crate::model::layers::{Activation, Attention, Backend, Epilogue, Post, Rope};
use crate::model::ModelError;

pub struct EncoderLayer<B: Backend> {
    /// `[(heads + 2 kv_heads) · head_dim, hidden]`: queries, keys, values in one product.
    pub qkv: B::Linear,
    pub attn_out: B::Linear,
    pub attn_norm: B::Norm,
    /// `[intermediate, hidden]`, or `[2 · intermediate, hidden]` gate first for a gated MLP.
    pub mlp_in: B::Linear,
    pub mlp_out: B::Linear,
    pub mlp_norm: B::Norm,
}

/// Where a post-norm layer's weights sit under its layer prefix: the checkpoint names are all
/// that BERT, DistilBERT and MPNet layers differ in.
pub struct LayerNames {
    /// Query, key and value, stacked into one product.
    pub qkv: [&'static str; 3],
    pub attn_out: &'static str,
    pub attn_norm: &'static str,
    pub mlp_in: &'static str,
    pub mlp_out: &'static str,
    pub mlp_norm: &'static str,
}

impl<B: Backend> EncoderLayer<B> {
    /// The layer at `prefix` (`encoder.layer.3`), named as `names` says.
    pub fn load(
        b: &B,
        w: &super::Weights,
        prefix: &str,
        names: &LayerNames,
        (hidden, intermediate, eps): (usize, usize, f64),
    ) -> Result<Self, ModelError> {
        use super::{layer_norm, linear};
        let at = |n: &str| format!("{prefix}.{n}");
        Ok(Self {
            qkv: linear(b, w, &names.qkv.map(at), hidden, hidden)?,
            attn_out: linear(b, w, &[at(names.attn_out)], hidden, hidden)?,
            attn_norm: layer_norm(b, w, &at(names.attn_norm), hidden, eps)?,
            mlp_in: linear(b, w, &[at(names.mlp_in)], hidden, intermediate)?,
            mlp_out: linear(b, w, &[at(names.mlp_out)], intermediate, hidden)?,
            mlp_norm: layer_norm(b, w, &at(names.mlp_norm), hidden, eps)?,
        })
    }
}

pub struct Encoder<B: Backend> {
    pub layers: Vec<EncoderLayer<B>>,
    pub heads: usize,
    pub head_dim: usize,
    /// The MLP's activation (`Glu(_)` for gated MLPs).
    pub activation: Activation,
    pub rope: Option<Rope>,
    /// A relative position bias shared by every layer (MPNet).
    pub bias: Option<B::Bias>,
}

impl<B: Backend> Encoder<B> {
    /// Runs every layer on the embeddings `x`.
    pub fn forward(
        &self,
        b: &B,
        plan: &B::Plan,
        _batch: &PackedBatch,
        x: B::Act,
        at_yield: &mut dyn FnMut(),
    ) -> Result<B::Act, ModelError> {
        let rope = match &self.rope {
            Some(r) => Some(b.rope(plan, r)?),
            None => None,
        };
        let spec = Attention {
            rope: rope.as_ref(),
            bias: self.bias.as_ref(),
            ..Attention::full(self.heads, self.head_dim)
        };
        let mut x = x;
        for layer in &self.layers {
            let qkv = b.linear(&x, &layer.qkv, Epilogue::plain())?;
            let ctx = b.attention(qkv, plan, &spec)?;
            // Yield points split each layer at its products (the MLP's are a third of the
            // layer each): a waiting online request never waits for a whole layer.
            at_yield();
            let h1 = b.linear(
                &ctx,
                &layer.attn_out,
                Epilogue::post(Post::ResidualNorm(&x, &layer.attn_norm)),
            )?;
            at_yield();
            let inter = b.linear(&h1, &layer.mlp_in, Epilogue::act(self.activation))?;
            at_yield();
            x = b.linear(
                &inter,
                &layer.mlp_out,
                Epilogue::post(Post::ResidualNorm(&h1, &layer.mlp_norm)),
            )?;
            at_yield();
        }
        Ok(x)
    }
}

/// Word (+ token type) embeddings then a norm, without a position table: the embeddings of
/// the RoPE encoders (NomicBERT, GTE).
pub struct TokenEmbeddings<B: Backend> {
    pub word: B::Table,
    pub token_type: Option<B::Table>,
    /// Type ids are used when the table has at least two rows; else row 0 for every token.
    pub type_vocab_size: usize,
    pub norm: B::Norm,
}

impl<B: Backend> TokenEmbeddings<B> {
    pub fn forward(
        &self,
        b: &B,
        plan: &B::Plan,
        batch: &PackedBatch,
    ) -> Result<B::Act, ModelError> {
        let zeros: Vec<u32>;
        let mut parts = vec![(&self.word, batch.ids.as_slice())];
        if let Some(t) = &self.token_type {
            let ids = if self.type_vocab_size < 2 {
                zeros = vec![0; batch.ids.len()];
                &zeros
            } else {
                &batch.type_ids
            };
            parts.push((t, ids));
        }
        b.embed(plan, &parts, None, Some(&self.norm))
    }
}

/// [`TokenEmbeddings`] + the post-norm encoder with RoPE.
pub struct RotaryEncoder<B: Backend> {
    pub embeddings: TokenEmbeddings<B>,
    pub encoder: Encoder<B>,
}

impl<B: Backend> super::Backbone<B> for RotaryEncoder<B> {
    fn forward(
        &self,
        b: &B,
        plan: &B::Plan,
        batch: &PackedBatch,
        at_yield: &mut dyn FnMut(),
    ) -> Result<B::Act, ModelError> {
        let x = self.embeddings.forward(b, plan, batch)?;
        self.encoder.forward(b, plan, batch, x, at_yield)
    }
}
