//! The sentence-transformers side files: pooling mode, max sequence length, prompts, and
//! whether the pipeline ends in a Normalize module.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::layers::Activation;
use super::{parse, read, ModelError, ModelFiles, Pooling};

/// What the sentence-transformers files say; every field optional, as the files are.
#[derive(Debug, Clone, Default)]
pub struct SentenceTransformerConfig {
    pub pooling: Option<Pooling>,
    pub max_seq_length: Option<usize>,
    pub prompts: HashMap<String, String>,
    pub default_prompt_name: Option<String>,
    /// modules.json ends in a Normalize module (the model is meant to be used normalised).
    pub normalize: bool,
    /// `Dense` modules after pooling, in order.
    pub dense: Vec<DenseModule>,
}

/// A sentence-transformers `Dense` module: `activation(x · Wᵀ + b)`, weights `linear.*`.
#[derive(Debug, Clone)]
pub struct DenseModule {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    pub activation: Activation,
    pub weights: std::path::PathBuf,
}

#[derive(Deserialize)]
struct DenseFile {
    in_features: usize,
    out_features: usize,
    #[serde(default = "yes")]
    bias: bool,
    #[serde(default)]
    activation_function: Option<String>,
}

fn yes() -> bool {
    true
}

/// torch's module path of the activation (`torch.nn.modules.activation.Tanh`).
fn dense_activation(name: Option<&str>, file: &Path) -> Result<Activation, ModelError> {
    let short = name
        .and_then(|n| n.rsplit('.').next())
        .unwrap_or("Identity");
    Ok(match short {
        "Identity" => Activation::None,
        "Tanh" => Activation::Tanh,
        "ReLU" => Activation::Relu,
        "GELU" => Activation::Gelu,
        "SiLU" => Activation::Silu,
        other => {
            return Err(ModelError::Unsupported(format!(
                "{}: Dense activation `{other}` (supported: Identity, Tanh, ReLU, GELU, SiLU)",
                file.display()
            )))
        }
    })
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    /// A sparse encoder's `SpladePooling` (`max` or `sum` over tokens).
    #[serde(default)]
    pooling_strategy: Option<String>,
}

#[derive(Deserialize)]
struct SbertFile {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct StFile {
    #[serde(default)]
    prompts: HashMap<String, String>,
    default_prompt_name: Option<String>,
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
}

impl SentenceTransformerConfig {
    pub fn read(files: &ModelFiles) -> Result<Self, ModelError> {
        let mut cfg = Self::default();
        if let Some(p) = &files.pooling_config {
            cfg.pooling = Some(pooling_from(p)?);
        }
        if let Some(p) = &files.sentence_bert_config {
            let f: SbertFile = parse(p, &read(p)?)?;
            cfg.max_seq_length = f.max_seq_length;
        }
        if let Some(p) = &files.st_config {
            let f: StFile = parse(p, &read(p)?)?;
            cfg.prompts = f.prompts;
            cfg.default_prompt_name = f.default_prompt_name;
        }
        if let Some(p) = &files.modules {
            let modules: Vec<Module> = parse(p, &read(p)?)?;
            cfg.normalize = modules.iter().any(|m| m.kind.ends_with("Normalize"));
        }
        for d in &files.dense {
            let f: DenseFile = parse(&d.config, &read(&d.config)?)?;
            cfg.dense.push(DenseModule {
                in_features: f.in_features,
                out_features: f.out_features,
                bias: f.bias,
                activation: dense_activation(f.activation_function.as_deref(), &d.config)?,
                weights: d.weights.clone(),
            });
        }
        Ok(cfg)
    }
}

fn pooling_from(path: &Path) -> Result<Pooling, ModelError> {
    let f: PoolingFile = parse(path, &read(path)?)?;
    if let Some(strategy) = &f.pooling_strategy {
        return match strategy.as_str() {
            "max" => Ok(Pooling::Splade),
            other => Err(ModelError::Unsupported(format!(
                "{}: SPLADE pooling strategy `{other}` (supported: max)",
                path.display()
            ))),
        };
    }
    if f.pooling_mode_cls_token {
        Ok(Pooling::Cls)
    } else if f.pooling_mode_lasttoken {
        Ok(Pooling::LastToken)
    } else if f.pooling_mode_mean_tokens {
        Ok(Pooling::Mean)
    } else if f.pooling_mode_max_tokens {
        Ok(Pooling::Max)
    } else if f.pooling_mode_mean_sqrt_len_tokens {
        Err(ModelError::Unsupported(format!(
            "{}: mean-sqrt-len pooling is not supported; pass --pooling cls|mean|last-token|max",
            path.display()
        )))
    } else {
        Err(ModelError::Corrupt {
            file: path.display().to_string(),
            reason: "no pooling mode is enabled".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes_parse() {
        let dir = std::env::temp_dir().join(format!("spotinfer-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.json");
        std::fs::write(&p, r#"{"word_embedding_dimension":384,"pooling_mode_cls_token":false,"pooling_mode_mean_tokens":true}"#).unwrap();
        assert_eq!(pooling_from(&p).unwrap(), Pooling::Mean);
        std::fs::write(&p, r#"{"pooling_mode_cls_token":true}"#).unwrap();
        assert_eq!(pooling_from(&p).unwrap(), Pooling::Cls);
        std::fs::write(&p, r#"{"pooling_mode_lasttoken":true}"#).unwrap();
        assert_eq!(pooling_from(&p).unwrap(), Pooling::LastToken);
        std::fs::write(&p, r#"{"pooling_mode_max_tokens":true}"#).unwrap();
        assert_eq!(pooling_from(&p).unwrap(), Pooling::Max);
        std::fs::write(
            &p,
            r#"{"pooling_strategy":"max","activation_function":"relu"}"#,
        )
        .unwrap();
        assert_eq!(pooling_from(&p).unwrap(), Pooling::Splade);
        std::fs::write(&p, r#"{"pooling_mode_mean_sqrt_len_tokens":true}"#).unwrap();
        assert!(pooling_from(&p)
            .unwrap_err()
            .to_string()
            .contains("--pooling"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
