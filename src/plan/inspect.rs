//! What plan learns about a model: its shape and its weights' headers, found where
//! `model::resolve::locate` says they are (a local folder, the Hub cache, the Hub).

use std::path::Path;

use serde::Serialize;

use super::headers::{add_header, corrupt, header_len, range, read_local_header, WeightsSummary};
use super::shape::ModelShape;
use crate::config::PlanArgs;
use crate::model::resolve::{locate, ResolveOptions, WeightFiles};
use crate::model::ModelError;

/// Everything plan learned about the model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelFacts {
    pub model_id: String,
    pub revision: String,
    pub shape: ModelShape,
    pub weights: WeightsSummary,
    /// `safetensors headers` or `config.json estimate`.
    pub parameters_from: String,
}

fn read_config(path: &Path) -> Result<ModelShape, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let cfg: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| corrupt(&path.display().to_string(), &e.to_string()))?;
    ModelShape::from_config(&cfg).map_err(|e| corrupt(&path.display().to_string(), &e))
}

fn finish(args: &PlanArgs, shape: ModelShape, weights: WeightsSummary) -> ModelFacts {
    let (weights, parameters_from) = if weights.files > 0 {
        (weights, "safetensors headers")
    } else {
        let parameters = shape.estimated_parameters();
        (
            WeightsSummary {
                parameters,
                stored_bytes: parameters * 4,
                largest_file_bytes: parameters * 4,
                files: 0,
                stored_dtypes: vec!["F32 (assumed)".into()],
                unloaded_parameters: shape.lm_head_parameters(),
            },
            "config.json estimate",
        )
    };
    ModelFacts {
        model_id: args.model.model_id.clone(),
        revision: args.model.revision.clone(),
        shape,
        weights,
        parameters_from: parameters_from.into(),
    }
}

/// Reads config.json and the safetensors headers (see `locate`: the weights are never
/// downloaded).
pub async fn inspect(args: &PlanArgs) -> Result<ModelFacts, ModelError> {
    let located = locate(&ResolveOptions {
        model_id: args.model.model_id.clone(),
        revision: args.model.revision.clone(),
        cache_dir: args.model.huggingface_hub_cache.clone(),
        progress: false,
    })
    .await?;
    let shape = read_config(&located.config)?;
    let mut sum = WeightsSummary::default();
    match located.weights {
        WeightFiles::Local(paths) => {
            for p in paths {
                read_local_header(&p, &mut sum)?;
            }
        }
        WeightFiles::Remote { names, urls, token } => {
            let client = reqwest::Client::builder()
                .user_agent(concat!("spotinfer/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| ModelError::Hub(e.to_string()))?;
            for (name, url) in names.iter().zip(&urls) {
                let first = range(&client, url, token.as_deref(), 0, 8).await?;
                let n = header_len(&first, name)?;
                let json = range(&client, url, token.as_deref(), 8, n).await?;
                add_header(&mut sum, &json).map_err(|e| ModelError::Corrupt {
                    file: name.clone(),
                    reason: e,
                })?;
            }
        }
    }
    Ok(finish(args, shape, sum))
}
