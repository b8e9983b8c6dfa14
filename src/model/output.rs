//! What a caller asks of one input and what it gets back: the model computes the backbone once
//! per device batch and then only the heads its inputs want.

/// The outputs one input asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    /// The pooled vector (`/embed`, OpenAI embeddings), after any sentence-transformers Dense.
    pub pooled: bool,
    /// Every token's last hidden state (`/embed_all`).
    pub tokens: bool,
    /// Term weights (SPLADE, bge-m3's sparse head).
    pub sparse: bool,
    /// One normalised vector per token after the first (bge-m3's ColBERT head).
    pub multi_vector: bool,
    /// Classifier / reranker logits.
    pub scores: bool,
}

impl Want {
    pub const POOLED: Want = Want {
        pooled: true,
        tokens: false,
        sparse: false,
        multi_vector: false,
        scores: false,
    };
    pub const TOKENS: Want = Want {
        tokens: true,
        ..Want::NONE
    };
    pub const SPARSE: Want = Want {
        sparse: true,
        ..Want::NONE
    };
    pub const MULTI_VECTOR: Want = Want {
        multi_vector: true,
        ..Want::NONE
    };
    pub const SCORES: Want = Want {
        scores: true,
        ..Want::NONE
    };
    pub const NONE: Want = Want {
        pooled: false,
        tokens: false,
        sparse: false,
        multi_vector: false,
        scores: false,
    };

    pub fn union(self, o: Want) -> Want {
        Want {
            pooled: self.pooled || o.pooled,
            tokens: self.tokens || o.tokens,
            sparse: self.sparse || o.sparse,
            multi_vector: self.multi_vector || o.multi_vector,
            scores: self.scores || o.scores,
        }
    }

    /// Whether every output asked for is in `available`.
    pub fn within(self, available: Want) -> bool {
        (!self.pooled || available.pooled)
            && (!self.tokens || available.tokens)
            && (!self.sparse || available.sparse)
            && (!self.multi_vector || available.multi_vector)
            && (!self.scores || available.scores)
    }
}

/// One input's results, F32 on the host; each field is set when asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    pub pooled: Option<Vec<f32>>,
    /// `[tokens, hidden]` row-major.
    pub tokens: Option<Vec<f32>>,
    /// `(token id, weight)`, ids ascending, weights > 0.
    pub sparse: Option<Vec<(u32, f32)>>,
    /// `[tokens - 1, dim]` row-major.
    pub multi_vector: Option<Vec<f32>>,
    pub scores: Option<Vec<f32>>,
}

impl Output {
    /// Whether any value is NaN or infinite (an FP16 overflow): such outputs are never served.
    pub fn has_non_finite(&self) -> bool {
        let bad = |v: &[f32]| v.iter().any(|x| !x.is_finite());
        self.pooled.as_deref().is_some_and(bad)
            || self.tokens.as_deref().is_some_and(bad)
            || self.multi_vector.as_deref().is_some_and(bad)
            || self.scores.as_deref().is_some_and(bad)
            || self
                .sparse
                .as_ref()
                .is_some_and(|s| s.iter().any(|(_, w)| !w.is_finite()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wants_combine_and_check() {
        let both = Want::POOLED.union(Want::SPARSE);
        assert!(both.pooled && both.sparse && !both.scores);
        assert!(Want::POOLED.within(both));
        assert!(!Want::SCORES.within(both));
        let o = Output {
            pooled: Some(vec![1.0, f32::NAN]),
            ..Default::default()
        };
        assert!(o.has_non_finite());
        assert!(!Output::default().has_non_finite());
    }
}
