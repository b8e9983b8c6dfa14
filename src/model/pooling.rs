//! How token vectors become one vector, and the host-side finishing steps that depend on the
//! request: Matryoshka truncation and L2 normalisation.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    Cls,
    Mean,
    LastToken,
    Max,
    /// Masked-LM logits, `log(1 + relu)`, max over tokens: a sparse vector (`/embed_sparse`).
    Splade,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::LastToken => "last-token",
            Pooling::Max => "max",
            Pooling::Splade => "splade",
        }
    }
}

/// Truncates to `dimensions` (Matryoshka) and then L2-normalises if asked, in place.
pub fn finish_embedding(mut v: Vec<f32>, dimensions: Option<usize>, normalize: bool) -> Vec<f32> {
    if let Some(d) = dimensions {
        v.truncate(d);
    }
    if normalize {
        super::heads::normalize(&mut v);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matryoshka_truncates_before_normalising() {
        let v = finish_embedding(vec![3.0, 4.0, 12.0], Some(2), true);
        assert_eq!(v, vec![0.6, 0.8]);
        let raw = finish_embedding(vec![3.0, 4.0, 12.0], None, false);
        assert_eq!(raw, vec![3.0, 4.0, 12.0]);
        let zero = finish_embedding(vec![0.0, 0.0], None, true);
        assert_eq!(zero, vec![0.0, 0.0]);
    }
}
