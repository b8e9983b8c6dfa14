//! Attention on candle ops, per length bucket: sequences of similar length are gathered into a
//! padded `[b, heads, len, d]` view (one `index_select`), so the quadratic part never pads a
//! short query to a long passage's length while the dense layers stay on the packed tokens.
//!
//! Plain bidirectional attention (BERT-like encoders, the GPU path until the fused backend
//! lands) folds the padding mask into the Q·Kᵀ product: columns appended to q
//! (`[b, heads, max_len, 8]`, each row `[1, 0, …]`) and to k (`[mask, 0, …]`, mask 0 for a
//! token, -10000 for padding), so padded keys score -10000 with no broadcast add over the
//! `[b, heads, max_len, max_len]` scores: on an H200 (ncu, BERT-large, FP16) that add was half
//! of the GPU time. Eight columns keep the product's k dimension a multiple of 8.
//!
//! Everything else (causal, windows, grouped-query heads, a relative position bias) builds an
//! additive mask per bucket: the oracle for those families, not a fast path.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::model::layers::{Buckets, Mask};

/// Padding a bucket may carry: 20 % of its real tokens plus a little, so equal-ish lengths
/// share one kernel launch while a 5-token query never pads to 256.
fn may_join(count: usize, max_len: usize, real: usize, len: usize) -> bool {
    let padded = (count + 1) * max_len;
    let real = real + len;
    padded - real <= real / 5 + 16
}

/// Groups sequence indices by length (longest first).
pub fn bucket_sequences(lens: &[usize]) -> Vec<Vec<usize>> {
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

/// Sequences of similar length attended together, padded to the longest of them.
pub struct Bucket {
    pub batch: usize,
    pub max_len: usize,
    /// The sequences' lengths, in slot order.
    pub lens: Vec<usize>,
    /// Packed row for each padded slot (padding slots repeat a valid row and are masked);
    /// `None` when the bucket is the whole batch without padding.
    pub gather: Option<Tensor>,
    /// Padded slots holding real tokens, in order; `None` when there is no padding.
    pub valid: Option<Tensor>,
    /// 0 for a token, -10000 for padding, `[batch * max_len]` on the host.
    pub key_mask: Vec<f32>,
}

/// Folded key-mask columns (q's, k's) per (bucket, heads, dtype).
type FoldedCache = std::cell::RefCell<HashMap<(usize, usize, DType), (Tensor, Tensor)>>;

/// How a batch's packed tokens split into attention buckets.
pub struct AttentionPlan {
    pub buckets: Vec<Bucket>,
    /// Packed row order from the buckets' concatenated output; `None` if already in order.
    pub restore: Option<Tensor>,
    folded: FoldedCache,
    /// Relative position bias per (padded length, heads) — `[1, heads, len, len]`.
    bias: std::cell::RefCell<HashMap<(usize, usize), Tensor>>,
}

impl AttentionPlan {
    pub fn new(offsets: &[usize], device: &Device) -> candle_core::Result<Self> {
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
            let mut key_mask = Vec::with_capacity(group.len() * max_len);
            for (slot, &i) in group.iter().enumerate() {
                for j in 0..max_len {
                    if j < lens[i] {
                        gather.push((offsets[i] + j) as u32);
                        valid.push((slot * max_len + j) as u32);
                        key_mask.push(0f32);
                        restore_src[offsets[i] + j] = out_row;
                        out_row += 1;
                    } else {
                        gather.push(offsets[i] as u32);
                        key_mask.push(-10_000f32);
                    }
                }
            }
            let (n_gather, n_valid) = (gather.len(), valid.len());
            buckets.push(Bucket {
                batch: group.len(),
                max_len,
                lens: group.iter().map(|&i| lens[i]).collect(),
                gather: (!whole_batch)
                    .then(|| Tensor::from_vec(gather, n_gather, device))
                    .transpose()?,
                valid: (!no_padding)
                    .then(|| Tensor::from_vec(valid, n_valid, device))
                    .transpose()?,
                key_mask,
            });
        }
        let in_order = restore_src.iter().enumerate().all(|(k, &r)| k as u32 == r);
        let n_restore = restore_src.len();
        Ok(Self {
            buckets,
            restore: (!in_order)
                .then(|| Tensor::from_vec(restore_src, n_restore, device))
                .transpose()?,
            folded: Default::default(),
            bias: Default::default(),
        })
    }

    /// The q and k columns that carry bucket `b`'s key mask into the Q·Kᵀ product.
    fn folded(
        &self,
        b: usize,
        heads: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        let bucket = &self.buckets[b];
        if bucket.valid.is_none() {
            return Ok(None);
        }
        if let Some(hit) = self.folded.borrow().get(&(b, heads, dtype)) {
            return Ok(Some(hit.clone()));
        }
        const COLS: usize = 8;
        let (n, max_len) = (bucket.batch, bucket.max_len);
        let mut q_cols = vec![0f32; n * heads * max_len * COLS];
        let mut k_cols = vec![0f32; n * heads * max_len * COLS];
        for s in 0..n {
            for h in 0..heads {
                for j in 0..max_len {
                    let row = ((s * heads + h) * max_len + j) * COLS;
                    q_cols[row] = 1.0;
                    k_cols[row] = bucket.key_mask[s * max_len + j];
                }
            }
        }
        let shape = (n, heads, max_len, COLS);
        let cols = (
            Tensor::from_vec(q_cols, shape, device)?.to_dtype(dtype)?,
            Tensor::from_vec(k_cols, shape, device)?.to_dtype(dtype)?,
        );
        self.folded
            .borrow_mut()
            .insert((b, heads, dtype), cols.clone());
        Ok(Some(cols))
    }

    /// `[b, 1, len, len]`: 0 where query `i` may see key `j` of its sequence, -10000 elsewhere.
    fn mask(
        &self,
        b: usize,
        mask: Mask,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let bucket = &self.buckets[b];
        let l = bucket.max_len;
        let mut m = vec![-10_000f32; bucket.batch * l * l];
        for (s, &len) in bucket.lens.iter().enumerate() {
            for i in 0..l {
                // Padding queries see their sequence's first key (their rows are dropped).
                let (lo, hi) = if i < len { mask.keys(i, len) } else { (0, 1) };
                for j in lo..hi {
                    m[(s * l + i) * l + j] = 0.0;
                }
            }
        }
        Tensor::from_vec(m, (bucket.batch, 1, l, l), device)?.to_dtype(dtype)
    }

    /// `[1, heads, len, len]`: `table[bucket(j - i), h]`.
    fn bias(
        &self,
        len: usize,
        table: &[f32],
        heads: usize,
        buckets: Buckets,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(t) = self.bias.borrow().get(&(len, heads)) {
            return Ok(t.clone());
        }
        let mut v = vec![0f32; heads * len * len];
        for i in 0..len {
            for j in 0..len {
                let bkt = buckets.bucket(j as i64 - i as i64);
                for h in 0..heads {
                    v[(h * len + i) * len + j] = table[bkt * heads + h];
                }
            }
        }
        let t = Tensor::from_vec(v, (1, heads, len, len), device)?.to_dtype(dtype)?;
        self.bias.borrow_mut().insert((len, heads), t.clone());
        Ok(t)
    }
}

/// What one call attends with.
pub struct Spec<'a> {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f64,
    pub mask: Mask,
    /// `[buckets, heads]` on the host.
    pub bias: Option<(&'a [f32], Buckets)>,
}

/// Attention over packed `qkv` `[T, (heads + 2 kv_heads) d]`, the context `[T, heads d]` out.
pub fn attention(
    qkv: &Tensor,
    plan: &AttentionPlan,
    spec: &Spec<'_>,
) -> candle_core::Result<Tensor> {
    let mut parts = Vec::with_capacity(plan.buckets.len());
    for b in 0..plan.buckets.len() {
        parts.push(bucket_attention(qkv, plan, b, spec)?);
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

/// One bucket: gather its sequences, attend, and return the rows of its real tokens in the
/// bucket's order.
fn bucket_attention(
    qkv: &Tensor,
    plan: &AttentionPlan,
    b: usize,
    spec: &Spec<'_>,
) -> candle_core::Result<Tensor> {
    let bucket = &plan.buckets[b];
    let (n, l) = (bucket.batch, bucket.max_len);
    let (h, kv, d) = (spec.heads, spec.kv_heads, spec.head_dim);
    let padded = match &bucket.gather {
        Some(idx) => qkv.index_select(idx, 0)?,
        None => qkv.clone(),
    };
    let padded = padded.reshape((n, l, h + 2 * kv, d))?;
    let heads_of = |start: usize, count: usize| -> candle_core::Result<Tensor> {
        padded
            .narrow(2, start, count)?
            .transpose(1, 2)?
            .contiguous()
    };
    // Scale q (`[b, heads, len, d]`), not the `[b, heads, len, len]` scores.
    let q = (heads_of(0, h)? * spec.scale)?;
    let mut k = heads_of(h, kv)?;
    let mut v = heads_of(h + kv, kv)?;
    if kv != h {
        // Grouped-query attention: each key/value head serves `h / kv` query heads.
        let rep = h / kv;
        k = k
            .unsqueeze(2)?
            .expand((n, kv, rep, l, d))?
            .reshape((n, h, l, d))?;
        v = v
            .unsqueeze(2)?
            .expand((n, kv, rep, l, d))?
            .reshape((n, h, l, d))?;
    }
    let plain = spec.mask.is_full() && spec.bias.is_none();
    let scores = if plain {
        let (q, k) = match plan.folded(b, h, qkv.dtype(), qkv.device())? {
            Some((q_cols, k_cols)) => (
                Tensor::cat(&[&q, &q_cols], 3)?,
                Tensor::cat(&[&k, &k_cols], 3)?,
            ),
            None => (q, k),
        };
        q.matmul(&k.t()?)?
    } else {
        let mut s = q.matmul(&k.t()?)?;
        s = s.broadcast_add(&plan.mask(b, spec.mask, qkv.dtype(), qkv.device())?)?;
        if let Some((table, buckets)) = spec.bias {
            s = s.broadcast_add(&plan.bias(l, table, h, buckets, qkv.dtype(), qkv.device())?)?;
        }
        s
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((n * l, h * d))?;
    match &bucket.valid {
        Some(idx) => ctx.index_select(idx, 0),
        None => Ok(ctx),
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
        let plan = AttentionPlan::new(&offsets, &Device::Cpu).unwrap();
        let restore: Vec<u32> = plan.restore.unwrap().to_vec1().unwrap();
        // Buckets: [1 (len 5)], [2 (len 3), 0 (len 2)] -> output rows: seq1 0..5, seq2 5..8, seq0 8..10.
        assert_eq!(restore, vec![8, 9, 0, 1, 2, 3, 4, 5, 6, 7]);
        let single = AttentionPlan::new(&[0, 4], &Device::Cpu).unwrap();
        assert!(single.restore.is_none());
        assert!(single.buckets[0].gather.is_none() && single.buckets[0].valid.is_none());
    }
}
