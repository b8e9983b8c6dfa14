//! What turns a backbone's last hidden states into outputs, written once on the layer seam:
//! pooling (with sentence-transformers `Dense` modules after it), classifier and reranker
//! heads, SPLADE's masked-LM head, and bge-m3's sparse and ColBERT heads.

use super::batch::PackedBatch;
use super::layers::{Activation, Backend, Epilogue, Post};
use super::output::{Output, Want};
use super::{ModelError, Pooling};

/// One dense layer of a head: `norm(activation(x · Wᵀ + b))`.
pub struct Dense<B: Backend> {
    pub linear: B::Linear,
    pub activation: Activation,
    pub norm: Option<B::Norm>,
}

impl<B: Backend> Dense<B> {
    pub fn new(linear: B::Linear, activation: Activation) -> Self {
        Self {
            linear,
            activation,
            norm: None,
        }
    }

    fn apply(&self, b: &B, x: &B::Act) -> Result<B::Act, ModelError> {
        let post = match &self.norm {
            Some(n) => Post::Norm(n),
            None => Post::None,
        };
        b.linear(
            x,
            &self.linear,
            Epilogue {
                activation: self.activation,
                post,
            },
        )
    }
}

fn chain<B: Backend>(b: &B, x: B::Act, steps: &[Dense<B>]) -> Result<B::Act, ModelError> {
    let mut x = x;
    for s in steps {
        x = s.apply(b, &x)?;
    }
    Ok(x)
}

/// Logits from pooled hidden states (`*ForSequenceClassification`, Qwen3-Reranker's yes/no).
pub struct Classifier<B: Backend> {
    pub pooling: Pooling,
    pub steps: Vec<Dense<B>>,
    /// One name per logit (`id2label`); a reranker has one.
    pub labels: Vec<String>,
}

/// SPLADE: the masked-LM head, then `log(1 + relu)` and max over the sequence.
pub struct Splade<B: Backend> {
    /// `cls.predictions.transform`: dense, activation, layer norm.
    pub transform: Dense<B>,
    /// `[vocab, hidden]` (often the word embeddings) with the output bias.
    pub decoder: B::Linear,
}

/// bge-m3's extra heads on every token.
pub struct BgeM3<B: Backend> {
    /// `sparse_linear`: `[1, hidden]`, relu'd per token, max per token id.
    pub sparse: Option<B::Linear>,
    /// `colbert_linear`: one vector per token after the first, normalised.
    pub colbert: Option<B::Linear>,
    /// Token ids dropped from the sparse output (cls, eos, pad, unk).
    pub skip: Vec<u32>,
}

/// Every head a loaded model has.
pub struct Heads<B: Backend> {
    /// Pooled vector (None: the model does not embed, e.g. a classifier).
    pub pooling: Option<Pooling>,
    /// sentence-transformers Dense modules after pooling.
    pub dense: Vec<Dense<B>>,
    pub classifier: Option<Classifier<B>>,
    pub splade: Option<Splade<B>>,
    pub m3: Option<BgeM3<B>>,
}

impl<B: Backend> Heads<B> {
    pub fn pooling(pooling: Pooling) -> Self {
        Self {
            pooling: Some(pooling),
            dense: Vec::new(),
            classifier: None,
            splade: None,
            m3: None,
        }
    }

    pub fn classifier(classifier: Classifier<B>) -> Self {
        Self {
            pooling: None,
            dense: Vec::new(),
            classifier: Some(classifier),
            splade: None,
            m3: None,
        }
    }

    /// The outputs these heads can give.
    pub fn available(&self) -> Want {
        Want {
            pooled: self.pooling.is_some(),
            tokens: self.classifier.is_none() && self.splade.is_none(),
            sparse: self.splade.is_some() || self.m3.as_ref().is_some_and(|m| m.sparse.is_some()),
            multi_vector: self.m3.as_ref().is_some_and(|m| m.colbert.is_some()),
            scores: self.classifier.is_some(),
        }
    }

    /// Runs the heads the batch's inputs want on hidden states `x` `[tokens, hidden]`.
    pub fn run(
        &self,
        b: &B,
        plan: &B::Plan,
        batch: &PackedBatch,
        x: &B::Act,
        wants: &[Want],
    ) -> Result<Vec<Output>, ModelError> {
        let n = batch.len();
        let all = wants.iter().fold(Want::NONE, |a, w| a.union(*w));
        let mut out = vec![Output::default(); n];
        if all.pooled {
            let pooling = self
                .pooling
                .ok_or_else(|| ModelError::Unsupported("this model has no pooled output".into()))?;
            let pooled = chain(b, b.pool(x, plan, pooling)?, &self.dense)?;
            let (host, w) = b.to_host(&pooled)?;
            for (i, o) in out.iter_mut().enumerate() {
                if wants[i].pooled {
                    o.pooled = Some(host[i * w..(i + 1) * w].to_vec());
                }
            }
        }
        if all.scores {
            let c = self.classifier.as_ref().ok_or_else(|| {
                ModelError::Unsupported("this model has no classifier head".into())
            })?;
            let logits = chain(b, b.pool(x, plan, c.pooling)?, &c.steps)?;
            let (host, w) = b.to_host(&logits)?;
            for (i, o) in out.iter_mut().enumerate() {
                if wants[i].scores {
                    o.scores = Some(host[i * w..(i + 1) * w].to_vec());
                }
            }
        }
        if all.tokens {
            let (host, w) = b.to_host(x)?;
            for (i, o) in out.iter_mut().enumerate() {
                if wants[i].tokens {
                    let r = batch.range(i);
                    o.tokens = Some(host[r.start * w..r.end * w].to_vec());
                }
            }
        }
        if all.sparse {
            if let Some(s) = &self.splade {
                self.splade_run(b, s, batch, x, wants, &mut out)?;
            } else if let Some(sparse) = self.m3.as_ref().and_then(|m| m.sparse.as_ref()) {
                let skip = self.m3.as_ref().map(|m| m.skip.as_slice()).unwrap_or(&[]);
                let weights = b.linear(x, sparse, Epilogue::act(Activation::Relu))?;
                let (host, _) = b.to_host(&weights)?;
                for (i, o) in out.iter_mut().enumerate() {
                    if wants[i].sparse {
                        let r = batch.range(i);
                        o.sparse = Some(max_per_id(&batch.ids[r.clone()], &host[r], skip));
                    }
                }
            } else {
                return Err(ModelError::Unsupported(
                    "this model has no sparse head".into(),
                ));
            }
        }
        if all.multi_vector {
            let colbert = self
                .m3
                .as_ref()
                .and_then(|m| m.colbert.as_ref())
                .ok_or_else(|| ModelError::Unsupported("this model has no ColBERT head".into()))?;
            let v = b.linear(x, colbert, Epilogue::plain())?;
            let (host, w) = b.to_host(&v)?;
            for (i, o) in out.iter_mut().enumerate() {
                if wants[i].multi_vector {
                    let r = batch.range(i);
                    // The first token (CLS) carries the dense vector, not a ColBERT one.
                    let mut rows = host[(r.start + 1).min(r.end) * w..r.end * w].to_vec();
                    for row in rows.chunks_exact_mut(w) {
                        normalize(row);
                    }
                    o.multi_vector = Some(rows);
                }
            }
        }
        Ok(out)
    }

    /// The decoder is `[vocab, hidden]` on every token: run it on chunks of whole sequences so
    /// a full device batch never holds `tokens x vocab` values at once.
    fn splade_run(
        &self,
        b: &B,
        s: &Splade<B>,
        batch: &PackedBatch,
        x: &B::Act,
        wants: &[Want],
        out: &mut [Output],
    ) -> Result<(), ModelError> {
        const CHUNK_TOKENS: usize = 1024;
        let n = batch.len();
        let mut first = 0;
        while first < n {
            let mut last = first + 1;
            while last < n && batch.offsets[last + 1] - batch.offsets[first] <= CHUNK_TOKENS {
                last += 1;
            }
            let (start, end) = (batch.offsets[first], batch.offsets[last]);
            let mut sub = PackedBatch::with_capacity(last - first, end - start);
            for i in first..last {
                let r = batch.range(i);
                sub.push(&batch.ids[r.clone()], &batch.type_ids[r]);
            }
            let sub_plan = b.plan(&sub)?;
            let h = s.transform.apply(b, &b.rows(x, start, end)?)?;
            let logits = b.linear(&h, &s.decoder, Epilogue::act(Activation::Log1pRelu))?;
            let pooled = b.pool(&logits, &sub_plan, Pooling::Max)?;
            let (host, vocab) = b.to_host(&pooled)?;
            for (k, i) in (first..last).enumerate() {
                if wants[i].sparse {
                    let row = &host[k * vocab..(k + 1) * vocab];
                    out[i].sparse = Some(
                        row.iter()
                            .enumerate()
                            .filter(|(_, w)| **w > 0.0)
                            .map(|(id, w)| (id as u32, *w))
                            .collect(),
                    );
                }
            }
            first = last;
        }
        Ok(())
    }
}

/// The largest weight of each token id, ids ascending, zero weights and `skip` ids dropped.
fn max_per_id(ids: &[u32], weights: &[f32], skip: &[u32]) -> Vec<(u32, f32)> {
    let mut best = std::collections::BTreeMap::new();
    for (&id, &w) in ids.iter().zip(weights) {
        if skip.contains(&id) || w <= 0.0 {
            continue;
        }
        let e = best.entry(id).or_insert(w);
        if w > *e {
            *e = w;
        }
    }
    best.into_iter().collect()
}

/// L2-normalises `v` in place (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_weights_keep_the_max_per_token_and_skip_specials() {
        let got = max_per_id(&[0, 7, 5, 7, 2], &[9.0, 0.5, 0.0, 1.5, 0.25], &[0]);
        assert_eq!(got, vec![(2, 0.25), (7, 1.5)]);
    }
}
