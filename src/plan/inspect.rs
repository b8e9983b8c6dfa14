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
    /// `--model-id` as given: a Hub id or a local folder.
    pub model_id: String,
    pub revision: String,
    /// The Hub repository and revision the pods serve (MODEL_ID and REVISION in the kustomize
    /// output); None for a local folder plan cannot trace to a repository.
    pub serves: Option<ServedModel>,
    pub shape: ModelShape,
    pub weights: WeightsSummary,
    /// `safetensors headers` or `config.json estimate`.
    pub parameters_from: String,
}

/// The model a Deployment's pods load, by Hub id: a pod never sees the planner's folders.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServedModel {
    pub model_id: String,
    pub revision: String,
    /// `the Hub id`, `the Hub-cache snapshot folder's path` or `--served-model-id`.
    pub from: String,
}

/// The repository and commit of a Hub-cache snapshot folder,
/// `<cache>/models--<org>--<name>/snapshots/<commit>` (the layout `spotinfer download` and
/// `huggingface_hub` write).
pub fn hub_snapshot(dir: &Path) -> Option<(String, String)> {
    fn parse(dir: &Path) -> Option<(String, String)> {
        let commit = dir.file_name()?.to_str()?;
        let snapshots = dir.parent()?;
        if snapshots.file_name()? != "snapshots" {
            return None;
        }
        let repo = snapshots.parent()?.file_name()?.to_str()?;
        // The Hub forbids `--` inside names, so it only ever separates the owner.
        let name = repo.strip_prefix("models--")?;
        (!name.is_empty() && !commit.is_empty() && !commit.starts_with('.'))
            .then(|| (name.replace("--", "/"), commit.to_string()))
    }
    parse(dir).or_else(|| parse(&std::fs::canonicalize(dir).ok()?))
}

/// What the pods serve: `--served-model-id` when given, else the Hub id, else the repository
/// of a Hub-cache snapshot folder; None for any other local folder.
pub fn served_model(model_id: &str, revision: &str, served: Option<&str>) -> Option<ServedModel> {
    let given = |id: &str, rev: &str, from: &str| ServedModel {
        model_id: id.to_string(),
        revision: rev.to_string(),
        from: from.to_string(),
    };
    if let Some(id) = served.filter(|s| !s.trim().is_empty()) {
        return Some(given(id.trim(), revision, "--served-model-id"));
    }
    let local = Path::new(model_id);
    if !local.is_dir() {
        return Some(given(model_id, revision, "the Hub id"));
    }
    hub_snapshot(local)
        .map(|(id, commit)| given(&id, &commit, "the Hub-cache snapshot folder's path"))
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
        serves: served_model(
            &args.model.model_id,
            &args.model.revision,
            args.served_model_id.as_deref(),
        ),
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
