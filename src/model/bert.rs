//! The BERT family (BERT, MiniLM, BGE, E5, GTE-small style `bert` configs).
//!
//! Padding-free where it pays: the dense layers (QKV, attention output, feed-forward), which are
//! ~90 % of the work at embedding lengths, run on the packed `[total_tokens, hidden]` matrix of
//! all sequences laid end to end, so a batch mixing a 5-token query with a 256-token passage costs
//! 261 tokens, not 512. Attention runs per length bucket: sequences of similar length are
//! gathered into a padded `[b, heads, len, d]` view (one `index_select`), so the quadratic part
//! never pads a short query to a long passage's length.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::{EmbeddingModel, ModelError, PackedBatch, Pooling};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    Gelu,
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluApproximate,
    Relu,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: HiddenAct,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

pub struct BertModel {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    act: HiddenAct,
    dtype: DType,
    device: Device,
    config: BertConfig,
}

fn layer_norm(vb: &VarBuilder, size: usize, eps: f64) -> Result<LayerNorm, ModelError> {
    // Old TF-converted checkpoints name the parameters gamma/beta.
    let (w, b) = if vb.contains_tensor("weight") {
        ("weight", "bias")
    } else {
        ("gamma", "beta")
    };
    Ok(LayerNorm::new(vb.get(size, w)?, vb.get(size, b)?, eps))
}

fn linear(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<Linear, ModelError> {
    Ok(Linear::new(
        vb.get((out_dim, in_dim), "weight")?,
        Some(vb.get(out_dim, "bias")?),
    ))
}

impl BertModel {
    pub fn load(vb: VarBuilder, config: BertConfig) -> Result<Self, ModelError> {
        if let Some(kind) = &config.position_embedding_type {
            if kind != "absolute" {
                return Err(ModelError::Unsupported(format!(
                    "position_embedding_type `{kind}` (only absolute is supported for bert)"
                )));
            }
        }
        if !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
        {
            return Err(ModelError::Unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        // sentence-transformers saves the encoder without a prefix; transformers' BertModel
        // checkpoints use `bert.`.
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            return Err(ModelError::Unsupported(
                "no embeddings.word_embeddings.weight (with or without a `bert.` prefix) in the \
                 safetensors: not a BERT checkpoint"
                    .into(),
            ));
        };
        let h = config.hidden_size;
        let emb = vb.pp("embeddings");
        let word = Embedding::new(
            emb.get((config.vocab_size, h), "word_embeddings.weight")?,
            h,
        );
        let position = Embedding::new(
            emb.get(
                (config.max_position_embeddings, h),
                "position_embeddings.weight",
            )?,
            h,
        );
        let token_type = Embedding::new(
            emb.get((config.type_vocab_size, h), "token_type_embeddings.weight")?,
            h,
        );
        let emb_norm = layer_norm(&emb.pp("LayerNorm"), h, config.layer_norm_eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let lvb = vb.pp(format!("encoder.layer.{i}"));
            let att = lvb.pp("attention");
            let q = linear(&att.pp("self.query"), h, h)?;
            let k = linear(&att.pp("self.key"), h, h)?;
            let v = linear(&att.pp("self.value"), h, h)?;
            // One [3h, h] product instead of three: fewer passes over the activations.
            let qkv_w = Tensor::cat(&[q.weight(), k.weight(), v.weight()], 0)?;
            let qkv_b = Tensor::cat(
                &[
                    q.bias().ok_or(ModelError::Unsupported("bias".into()))?,
                    k.bias().ok_or(ModelError::Unsupported("bias".into()))?,
                    v.bias().ok_or(ModelError::Unsupported("bias".into()))?,
                ],
                0,
            )?;
            layers.push(Layer {
                qkv: Linear::new(qkv_w, Some(qkv_b)),
                attn_out: linear(&att.pp("output.dense"), h, h)?,
                attn_norm: layer_norm(&att.pp("output.LayerNorm"), h, config.layer_norm_eps)?,
                intermediate: linear(&lvb.pp("intermediate.dense"), h, config.intermediate_size)?,
                output: linear(&lvb.pp("output.dense"), config.intermediate_size, h)?,
                out_norm: layer_norm(&lvb.pp("output.LayerNorm"), h, config.layer_norm_eps)?,
            });
        }
        Ok(Self {
            word,
            position,
            token_type,
            emb_norm,
            layers,
            heads: config.num_attention_heads,
            head_dim: h / config.num_attention_heads,
            act: config.hidden_act,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            config,
        })
    }

    fn activation(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.act {
            HiddenAct::Gelu => x.gelu_erf(),
            HiddenAct::GeluApproximate => x.gelu(),
            HiddenAct::Relu => x.relu(),
        }
    }

    /// Attention over packed `qkv` `[T, 3h]`, returning the context `[T, h]`, one length
    /// bucket at a time so a short query never pays for a long passage's padding.
    fn attention(&self, qkv: &Tensor, plan: &AttentionPlan) -> candle_core::Result<Tensor> {
        let mut parts = Vec::with_capacity(plan.buckets.len());
        for bucket in &plan.buckets {
            parts.push(self.bucket_attention(qkv, bucket)?);
        }
        let ctx = if parts.len() == 1 {
            parts.pop().unwrap_or_else(|| qkv.clone())
        } else {
            Tensor::cat(&parts, 0)?
        };
        match &plan.restore {
            Some(idx) => ctx.index_select(idx, 0),
            None => Ok(ctx),
        }
    }

    /// One bucket: gather its sequences into `[b, heads, len, d]`, attend, and return the rows
    /// of its real tokens `[tokens, h]` in the bucket's order.
    fn bucket_attention(&self, qkv: &Tensor, bucket: &Bucket) -> candle_core::Result<Tensor> {
        let (b, l) = (bucket.batch, bucket.max_len);
        let h = self.heads * self.head_dim;
        let padded = match &bucket.gather {
            Some(idx) => qkv.index_select(idx, 0)?,
            None => qkv.clone(),
        };
        let qkv = padded.reshape((b, l, 3, self.heads, self.head_dim))?;
        let q = qkv
            .narrow(2, 0, 1)?
            .squeeze(2)?
            .transpose(1, 2)?
            .contiguous()?;
        let k = qkv
            .narrow(2, 1, 1)?
            .squeeze(2)?
            .transpose(1, 2)?
            .contiguous()?;
        let v = qkv
            .narrow(2, 2, 1)?
            .squeeze(2)?
            .transpose(1, 2)?
            .contiguous()?;
        // Scale q (`[b, heads, len, d]`), not the `[b, heads, len, len]` scores.
        let q = (q * (1.0 / (self.head_dim as f64).sqrt()))?;
        let (q, k) = match &bucket.key_mask {
            Some((q_cols, k_cols)) => (
                Tensor::cat(&[&q, q_cols], 3)?,
                Tensor::cat(&[&k, k_cols], 3)?,
            ),
            None => (q, k),
        };
        let scores = q.matmul(&k.t()?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * l, h))?;
        match &bucket.valid {
            Some(idx) => ctx.index_select(idx, 0),
            None => Ok(ctx),
        }
    }
}

/// Sequences of similar length attended together, padded to the longest of them.
struct Bucket {
    batch: usize,
    max_len: usize,
    /// Packed row for each padded slot (padding slots repeat a valid row and are masked);
    /// `None` when the bucket is the whole batch without padding.
    gather: Option<Tensor>,
    /// Padded slots holding real tokens, in order; `None` when there is no padding.
    valid: Option<Tensor>,
    /// The padding mask, folded into the Q·Kᵀ product: columns appended to q
    /// (`[b, heads, max_len, 8]`, each row `[1, 0, …]`) and to k (`[mask, 0, …]`, mask 0 for a
    /// token, -10000 for padding), so padded keys score -10000 with no broadcast add over the
    /// `[b, heads, max_len, max_len]` scores: on an H200 (ncu, BERT-large, FP16) that add was
    /// half of the GPU time. Eight columns keep the product's k dimension a multiple of 8.
    key_mask: Option<(Tensor, Tensor)>,
}

/// How a batch's packed tokens split into attention buckets.
struct AttentionPlan {
    buckets: Vec<Bucket>,
    /// Packed row order from the buckets' concatenated output; `None` if already in order.
    restore: Option<Tensor>,
}

/// Padding a bucket may carry: 20 % of its real tokens plus a little, so equal-ish lengths
/// share one kernel launch while a 5-token query never pads to 256.
fn may_join(count: usize, max_len: usize, real: usize, len: usize) -> bool {
    let padded = (count + 1) * max_len;
    let real = real + len;
    padded - real <= real / 5 + 16
}

/// Groups sequence indices by length (longest first).
fn bucket_sequences(lens: &[usize]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by(|&a, &b| lens[b].cmp(&lens[a]).then(a.cmp(&b)));
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut real = 0;
    for i in order {
        match buckets.last_mut() {
            Some(bucket) if may_join(bucket.len(), lens[bucket[0]], real, lens[i]) => {
                bucket.push(i);
                real += lens[i];
            }
            _ => {
                buckets.push(vec![i]);
                real = lens[i];
            }
        }
    }
    buckets
}

/// The q and k columns that carry `mask` (`n x max_len` values) into the Q·Kᵀ product.
fn key_mask_columns(
    mask: &[f32],
    n: usize,
    heads: usize,
    max_len: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    const COLS: usize = 8;
    let mut q_cols = vec![0f32; n * heads * max_len * COLS];
    let mut k_cols = vec![0f32; n * heads * max_len * COLS];
    for b in 0..n {
        for h in 0..heads {
            for j in 0..max_len {
                let row = ((b * heads + h) * max_len + j) * COLS;
                q_cols[row] = 1.0;
                k_cols[row] = mask[b * max_len + j];
            }
        }
    }
    let shape = (n, heads, max_len, COLS);
    Ok((
        Tensor::from_vec(q_cols, shape, device)?.to_dtype(dtype)?,
        Tensor::from_vec(k_cols, shape, device)?.to_dtype(dtype)?,
    ))
}

impl AttentionPlan {
    fn new(
        offsets: &[usize],
        heads: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let lens: Vec<usize> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
        let groups = bucket_sequences(&lens);
        let identity_order =
            groups.len() == 1 && groups[0].iter().enumerate().all(|(k, &i)| k == i);
        let mut restore_src = vec![0u32; offsets.last().copied().unwrap_or(0)];
        let mut out_row = 0u32;
        let mut buckets = Vec::with_capacity(groups.len());
        for group in &groups {
            let max_len = lens[group[0]];
            let no_padding = group.iter().all(|&i| lens[i] == max_len);
            let whole_batch = identity_order && no_padding;
            let mut gather = Vec::with_capacity(group.len() * max_len);
            let mut valid = Vec::new();
            let mut mask = Vec::with_capacity(group.len() * max_len);
            for (slot, &i) in group.iter().enumerate() {
                for j in 0..max_len {
                    if j < lens[i] {
                        gather.push((offsets[i] + j) as u32);
                        valid.push((slot * max_len + j) as u32);
                        mask.push(0f32);
                        restore_src[offsets[i] + j] = out_row;
                        out_row += 1;
                    } else {
                        gather.push(offsets[i] as u32);
                        mask.push(-10_000f32);
                    }
                }
            }
            let n = group.len();
            let (n_gather, n_valid) = (gather.len(), valid.len());
            buckets.push(Bucket {
                batch: n,
                max_len,
                gather: (!whole_batch)
                    .then(|| Tensor::from_vec(gather, n_gather, device))
                    .transpose()?,
                valid: (!no_padding)
                    .then(|| Tensor::from_vec(valid, n_valid, device))
                    .transpose()?,
                key_mask: (!no_padding)
                    .then(|| key_mask_columns(&mask, n, heads, max_len, dtype, device))
                    .transpose()?,
            });
        }
        let in_order = restore_src.iter().enumerate().all(|(k, &r)| k as u32 == r);
        let n_restore = restore_src.len();
        Ok(Self {
            buckets,
            restore: (!in_order)
                .then(|| Tensor::from_vec(restore_src, n_restore, device))
                .transpose()?,
        })
    }
}

impl BertModel {
    /// Last hidden states of a packed batch, `[total_tokens, hidden]` in the model dtype.
    pub fn forward(&self, batch: &PackedBatch) -> Result<Tensor, ModelError> {
        let t = batch.ids.len();
        let dev = &self.device;
        let ids = Tensor::from_slice(&batch.ids, t, dev)?;
        let types = Tensor::from_slice(&batch.type_ids, t, dev)?;
        let positions = Tensor::from_slice(&batch.positions, t, dev)?;
        let x = self
            .word
            .forward(&ids)?
            .add(&self.position.forward(&positions)?)?
            .add(&self.token_type.forward(&types)?)?;
        let mut x = self.emb_norm.forward(&x)?;
        let plan = AttentionPlan::new(&batch.offsets, self.heads, self.dtype, dev)?;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let ctx = self.attention(&qkv, &plan)?;
            let attn = layer.attn_out.forward(&ctx)?;
            x = layer.attn_norm.forward(&attn.add(&x)?)?;
            let inter = self.activation(&layer.intermediate.forward(&x)?)?;
            let out = layer.output.forward(&inter)?;
            x = layer.out_norm.forward(&out.add(&x)?)?;
        }
        debug_assert_eq!(x.dim(D::Minus1)?, self.config.hidden_size);
        Ok(x)
    }
}

impl EmbeddingModel for BertModel {
    fn embed(&self, batch: &PackedBatch, pooling: Pooling) -> Result<Vec<Vec<f32>>, ModelError> {
        let hidden = self.forward(batch)?;
        let pooled = super::pooling::pool_packed(&hidden, &batch.offsets, pooling)?;
        Ok(pooled.to_vec2::<f32>()?)
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn parameter_bytes(&self) -> usize {
        let c = &self.config;
        let h = c.hidden_size;
        let per_layer =
            4 * h * h + 4 * h + 2 * h * c.intermediate_size + c.intermediate_size + h + 4 * h;
        let emb = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * h + 2 * h;
        (emb + c.num_hidden_layers * per_layer) * self.dtype.size_in_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_short_queries_away_from_long_passages() {
        let lens = [8, 256, 10, 250, 9, 60];
        let b = bucket_sequences(&lens);
        assert_eq!(b, vec![vec![1, 3], vec![5], vec![2, 4, 0]]);
        // Equal lengths: one bucket.
        assert_eq!(bucket_sequences(&[5, 5, 5]), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn plan_restores_packed_order() {
        let offsets = [0, 2, 7, 10];
        let plan = AttentionPlan::new(&offsets, 2, DType::F32, &Device::Cpu).unwrap();
        let restore: Vec<u32> = plan.restore.unwrap().to_vec1().unwrap();
        // Buckets: [1 (len 5)], [2 (len 3), 0 (len 2)] -> output rows: seq1 0..5, seq2 5..8, seq0 8..10.
        assert_eq!(restore, vec![8, 9, 0, 1, 2, 3, 4, 5, 6, 7]);
        let single = AttentionPlan::new(&[0, 4], 2, DType::F32, &Device::Cpu).unwrap();
        assert!(single.restore.is_none());
        assert!(single.buckets[0].gather.is_none() && single.buckets[0].key_mask.is_none());
    }
}
