//! Which family and task a checkpoint is, read from config.json (`model_type` and
//! `architectures`), with the rules TEI users expect: a `*ForSequenceClassification` with one
//! label is a reranker, with several a classifier; a `*ForMaskedLM` with `--pooling splade`
//! serves sparse vectors; everything else embeds. `--task` overrides where a checkpoint can do
//! several things (a `Qwen3ForCausalLM` is an embedder or, with `--task rerank`, a
//! Qwen3-Reranker).

use serde_json::Value;

use super::{ModelError, Pooling};

/// An architecture family: one file in `families/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    XlmRoberta,
    DistilBert,
    MpNet,
    ModernBert,
    NomicBert,
    Gte,
    Qwen3,
    Qwen2,
    Mistral,
    Llama,
    Gemma3,
}

impl Family {
    /// `model_type` values and the family each means.
    const TYPES: &'static [(&'static str, Family)] = &[
        ("bert", Family::Bert),
        ("xlm-roberta", Family::XlmRoberta),
        ("roberta", Family::XlmRoberta),
        ("camembert", Family::XlmRoberta),
        ("distilbert", Family::DistilBert),
        ("mpnet", Family::MpNet),
        ("modernbert", Family::ModernBert),
        ("nomic_bert", Family::NomicBert),
        // Alibaba's GTE v1.5 / multilingual (remote code `NewModel`).
        ("new", Family::Gte),
        ("qwen3", Family::Qwen3),
        ("qwen2", Family::Qwen2),
        ("mistral", Family::Mistral),
        ("llama", Family::Llama),
        ("gemma3_text", Family::Gemma3),
    ];

    pub fn from_model_type(model_type: &str) -> Option<Family> {
        Self::TYPES
            .iter()
            .find(|(t, _)| *t == model_type)
            .map(|(_, f)| *f)
    }

    pub fn name(self) -> &'static str {
        Self::TYPES
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(t, _)| *t)
            .unwrap_or("unknown")
    }

    /// Every supported `model_type`, for error messages and `--help`.
    pub fn supported() -> String {
        Self::TYPES
            .iter()
            .map(|(t, _)| *t)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The head a checkpoint was saved with, from its `architectures` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `BertModel`, `XLMRobertaModel`, … (or no `architectures` at all).
    Base,
    SequenceClassification,
    MaskedLm,
    CausalLm,
}

/// What a server runs a model for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Pooled vectors (`/embed`, `/v1/embeddings`), token vectors (`/embed_all`).
    Embed,
    /// Labels and scores (`/predict`).
    Classify,
    /// One relevance score per (query, text) pair (`/rerank`).
    Rerank,
    /// Term weights (`/embed_sparse`), SPLADE.
    Sparse,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Embed => "embed",
            Task::Classify => "classify",
            Task::Rerank => "rerank",
            Task::Sparse => "sparse",
        }
    }
}

/// A checkpoint's family, head and (for classifiers) labels.
#[derive(Debug, Clone)]
pub struct Architecture {
    pub family: Family,
    pub head: Head,
    /// `architectures[0]`, or the model type.
    pub name: String,
    /// `id2label` in id order (classification checkpoints).
    pub labels: Vec<String>,
}

impl Architecture {
    pub fn read(cfg: &Value) -> Result<Self, ModelError> {
        let model_type = cfg
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = cfg
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| model_type.clone());
        let family = Family::from_model_type(&model_type).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "model_type `{model_type}` ({name}); supported: {}",
                Family::supported()
            ))
        })?;
        let head = if name.ends_with("ForSequenceClassification") {
            Head::SequenceClassification
        } else if name.ends_with("ForMaskedLM") {
            Head::MaskedLm
        } else if name.ends_with("ForCausalLM") {
            Head::CausalLm
        } else {
            Head::Base
        };
        Ok(Self {
            family,
            head,
            name,
            labels: labels(cfg),
        })
    }

    /// The task: `requested` (`--task`) where the checkpoint supports it, else its own.
    pub fn task(
        &self,
        requested: Option<Task>,
        pooling: Option<Pooling>,
    ) -> Result<Task, ModelError> {
        let own = match self.head {
            Head::SequenceClassification if self.labels.len() == 1 => Task::Rerank,
            Head::SequenceClassification => Task::Classify,
            Head::MaskedLm if pooling == Some(Pooling::Splade) => Task::Sparse,
            Head::MaskedLm | Head::Base | Head::CausalLm => Task::Embed,
        };
        if pooling == Some(Pooling::Splade) && self.head != Head::MaskedLm {
            return Err(ModelError::Unsupported(format!(
                "--pooling splade needs a masked-LM checkpoint (*ForMaskedLM); {} is not one",
                self.name
            )));
        }
        if matches!(own, Task::Classify | Task::Rerank) && pooling.is_some() {
            return Err(ModelError::Unsupported(format!(
                "{} is a {} checkpoint: it has its own head, drop --pooling",
                self.name,
                own.as_str()
            )));
        }
        let Some(want) = requested else {
            return Ok(own);
        };
        let allowed: &[Task] = match self.head {
            Head::SequenceClassification => &[own],
            Head::MaskedLm => &[Task::Embed, Task::Sparse],
            Head::CausalLm => &[Task::Embed, Task::Rerank],
            Head::Base => &[Task::Embed],
        };
        if !allowed.contains(&want) {
            let names: Vec<&str> = allowed.iter().map(|t| t.as_str()).collect();
            return Err(ModelError::Unsupported(format!(
                "--task {} with {}: this checkpoint supports {}",
                want.as_str(),
                self.name,
                names.join(", ")
            )));
        }
        if want == Task::Sparse && pooling != Some(Pooling::Splade) {
            return Err(ModelError::Unsupported(
                "--task sparse needs --pooling splade".into(),
            ));
        }
        Ok(want)
    }
}

/// `id2label` values in id order (`num_labels` generic names when absent).
fn labels(cfg: &Value) -> Vec<String> {
    if let Some(map) = cfg.get("id2label").and_then(Value::as_object) {
        let mut pairs: Vec<(usize, String)> = map
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
            .collect();
        pairs.sort();
        if !pairs.is_empty() {
            return pairs.into_iter().map(|(_, v)| v).collect();
        }
    }
    let n = cfg.get("num_labels").and_then(Value::as_u64).unwrap_or(0);
    (0..n).map(|i| format!("LABEL_{i}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tasks_follow_the_architecture() {
        let emb =
            Architecture::read(&json!({"model_type": "bert", "architectures": ["BertModel"]}))
                .unwrap();
        assert_eq!(emb.task(None, None).unwrap(), Task::Embed);
        assert!(emb.task(Some(Task::Classify), None).is_err());
        let rerank = Architecture::read(&json!({"model_type": "bert",
            "architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}}))
        .unwrap();
        assert_eq!(rerank.task(None, None).unwrap(), Task::Rerank);
        let err = rerank
            .task(Some(Task::Embed), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("supports rerank"), "{err}");
        let cls = Architecture::read(&json!({"model_type": "bert",
            "architectures": ["BertForSequenceClassification"],
            "id2label": {"1": "POS", "0": "NEG", "2": "NEU"}}))
        .unwrap();
        assert_eq!(cls.task(None, None).unwrap(), Task::Classify);
        assert_eq!(cls.labels, vec!["NEG", "POS", "NEU"]);
        let mlm = Architecture::read(
            &json!({"model_type": "bert", "architectures": ["BertForMaskedLM"]}),
        )
        .unwrap();
        assert_eq!(mlm.task(None, Some(Pooling::Splade)).unwrap(), Task::Sparse);
        assert_eq!(mlm.task(None, None).unwrap(), Task::Embed);
        assert!(emb.task(None, Some(Pooling::Splade)).is_err());
        let err = Architecture::read(&json!({"model_type": "gpt2"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("supported: bert"), "{err}");
    }

    #[test]
    fn decoders_embed_or_rerank_as_causal_lms() {
        let qwen = Architecture::read(
            &json!({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}),
        )
        .unwrap();
        assert_eq!((qwen.family, qwen.head), (Family::Qwen3, Head::CausalLm));
        assert_eq!(qwen.task(None, None).unwrap(), Task::Embed);
        assert_eq!(qwen.task(Some(Task::Rerank), None).unwrap(), Task::Rerank);
        let gemma = Architecture::read(
            &json!({"model_type": "gemma3_text", "architectures": ["Gemma3TextModel"]}),
        )
        .unwrap();
        assert!(gemma.task(Some(Task::Rerank), None).is_err());
    }
}
