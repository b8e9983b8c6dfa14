//! Finds a model's files: a local folder, or a Hub repository through `hf-hub` and its cache.
//!
//! Environment honoured (the same names as the Python `huggingface_hub`): `HF_ENDPOINT` (a
//! mirror), `HF_HOME` and `HUGGINGFACE_HUB_CACHE`/`HF_HUB_CACHE` (cache location), `HF_TOKEN`
//! (gated or private repos), `HF_HUB_OFFLINE=1` (cache only, never the network).
//!
//! One concern, over 500 lines on purpose: the one path from a `--model-id` to files on disk
//! (folder, cache, a Hub download with its progress bar).

use std::path::{Path, PathBuf};

use hf_hub::api::tokio::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;

use super::ModelError;

/// Paths of everything a model needs, all local once resolved.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    /// One file, or every shard listed in model.safetensors.index.json.
    pub weights: Vec<PathBuf>,
    /// Sentence-transformers files, when the repo has them.
    pub modules: Option<PathBuf>,
    pub pooling_config: Option<PathBuf>,
    pub sentence_bert_config: Option<PathBuf>,
    pub st_config: Option<PathBuf>,
    /// sentence-transformers `Dense` modules after pooling, in pipeline order.
    pub dense: Vec<DenseFiles>,
    /// bge-m3's extra heads beside the weights, when present.
    pub sparse_linear: Option<PathBuf>,
    pub colbert_linear: Option<PathBuf>,
    /// Where they came from, for logs and /info.
    pub source: String,
}

/// One sentence-transformers `Dense` module: its config and weights.
#[derive(Debug, Clone)]
pub struct DenseFiles {
    pub config: PathBuf,
    /// `model.safetensors`, or an older `pytorch_model.bin`.
    pub weights: PathBuf,
}

/// What to resolve and how.
#[derive(Debug, Clone)]
pub struct ResolveOptions {
    pub model_id: String,
    pub revision: String,
    pub cache_dir: Option<PathBuf>,
    pub progress: bool,
}

const OPTIONAL_ST_FILES: &[&str] = &[
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

/// Folder of the Hub cache: the flag, then the standard environment variables.
pub fn hub_cache_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    for var in ["HUGGINGFACE_HUB_CACHE", "HF_HUB_CACHE"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(v);
        }
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    // hf-hub's own default panics without a home directory (distroless, odd UIDs): fall back
    // to a relative folder instead.
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
        .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"))
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// `HF_HUB_OFFLINE=1`: the cache only, never the network.
pub fn hub_offline() -> bool {
    env_flag("HF_HUB_OFFLINE")
}

/// The access token: `HF_TOKEN` (`--hf-token`; or the older `HUGGING_FACE_HUB_TOKEN`), else
/// the token file `huggingface-cli login` writes where huggingface_hub looks for it
/// (`$HF_TOKEN_PATH`, else `$HF_HOME/token`, else `~/.cache/huggingface/token`), else the one
/// beside the cache folder.
pub fn hub_token(cache: &Cache) -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .or_else(|| std::env::var("HUGGING_FACE_HUB_TOKEN").ok())
        .filter(|t| !t.is_empty())
        .or_else(|| token_file().and_then(|p| std::fs::read_to_string(p).ok()))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .or_else(|| cache.token())
}

fn token_file() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    var("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .or_else(|| var("HF_HOME").map(|h| PathBuf::from(h).join("token")))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/token")))
}

/// The Hub client with the environment's endpoint (`HF_ENDPOINT`) and token.
pub fn hub_api(cache: &Cache, progress: bool) -> Result<Api, ModelError> {
    let mut builder = ApiBuilder::from_cache(cache.clone())
        .with_progress(progress)
        .with_user_agent("spotinfer", env!("CARGO_PKG_VERSION"));
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    if let Some(token) = hub_token(cache) {
        builder = builder.with_token(Some(token));
    }
    builder
        .build()
        .map_err(|e| ModelError::Hub(format!("cannot start the Hub client: {e}")))
}

/// Resolves `model_id` to local files, downloading what the cache lacks unless offline.
pub async fn resolve(opts: &ResolveOptions) -> Result<ModelFiles, ModelError> {
    resolve_dense(opts, None).await
}

/// [`resolve`], with `dense_path` (`--dense-path`) as the folder of the one Dense module.
pub async fn resolve_dense(
    opts: &ResolveOptions,
    dense_path: Option<&str>,
) -> Result<ModelFiles, ModelError> {
    let local = Path::new(&opts.model_id);
    if local.is_dir() {
        return resolve_local_dense(local, dense_path);
    }
    if opts.model_id.starts_with('/') || opts.model_id.starts_with('.') {
        return Err(ModelError::Missing {
            file: opts.model_id.clone(),
            hint: "no such folder: give an existing local folder or a Hub repository id".into(),
        });
    }
    let cache = Cache::new(hub_cache_dir(opts.cache_dir.as_deref()));
    let repo = Repo::with_revision(
        opts.model_id.clone(),
        RepoType::Model,
        opts.revision.clone(),
    );
    let fetcher = if hub_offline() {
        Fetcher::Offline(cache.repo(repo))
    } else {
        Fetcher::Online(hub_api(&cache, opts.progress)?.repo(repo))
    };
    let files = resolve_with(&fetcher, &opts.model_id, dense_path).await?;
    Ok(ModelFiles {
        source: format!(
            "{}@{} ({})",
            opts.model_id,
            opts.revision,
            fetcher.describe()
        ),
        ..files
    })
}

/// The files of a local model folder (what [`resolve`] does for a path).
pub fn resolve_local(dir: &Path) -> Result<ModelFiles, ModelError> {
    resolve_local_dense(dir, None)
}

/// [`resolve_local`] with `--dense-path`.
pub fn resolve_local_dense(dir: &Path, dense_path: Option<&str>) -> Result<ModelFiles, ModelError> {
    let required = |name: &str| -> Result<PathBuf, ModelError> {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(ModelError::Missing {
                file: p.display().to_string(),
                hint: format!("the model folder must hold {name} (as on the Hub)"),
            })
        }
    };
    let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    let config = required("config.json")?;
    let tokenizer = required("tokenizer.json")?;
    let weights = if let Some(index) = optional("model.safetensors.index.json") {
        shard_names(&index)?
            .into_iter()
            .map(|n| required(&n))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![
            required("model.safetensors").map_err(|_| ModelError::Missing {
                file: dir.join("model.safetensors").display().to_string(),
                hint: "safetensors weights are required (model.safetensors or a sharded \
                   model.safetensors.index.json); convert pytorch_model.bin with \
                   `safetensors` first"
                    .into(),
            })?,
        ]
    };
    let modules = optional("modules.json");
    let pooling_config = pooling_dir(modules.as_deref())
        .map(|d| dir.join(d).join("config.json"))
        .or_else(|| Some(dir.join("1_Pooling/config.json")))
        .filter(|p| p.is_file());
    let mut dense = Vec::new();
    for d in dense_dirs(modules.as_deref(), dense_path)? {
        let weights = ["model.safetensors", "pytorch_model.bin"]
            .iter()
            .map(|f| dir.join(&d).join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| ModelError::Missing {
                file: dir.join(&d).join("model.safetensors").display().to_string(),
                hint: format!("modules.json lists a Dense module in {d}/ without its weights"),
            })?;
        dense.push(DenseFiles {
            config: required(&format!("{d}/config.json"))?,
            weights,
        });
    }
    Ok(ModelFiles {
        config,
        tokenizer,
        weights,
        modules,
        pooling_config,
        sentence_bert_config: optional("sentence_bert_config.json"),
        st_config: optional("config_sentence_transformers.json"),
        dense,
        sparse_linear: optional("sparse_linear.pt"),
        colbert_linear: optional("colbert_linear.pt"),
        source: format!("local folder {}", dir.display()),
    })
}

/// Hub access, online (cache first, then network) or offline (cache only).
enum Fetcher {
    Online(ApiRepo),
    Offline(hf_hub::CacheRepo),
}

impl Fetcher {
    fn describe(&self) -> &'static str {
        match self {
            Fetcher::Online(_) => "Hub",
            Fetcher::Offline(_) => "Hub cache, offline",
        }
    }

    /// `Ok(None)` when the repo does not have the file.
    async fn get(&self, name: &str) -> Result<Option<PathBuf>, ModelError> {
        match self {
            Fetcher::Offline(cache) => Ok(cache.get(name)),
            Fetcher::Online(repo) => match repo.get(name).await {
                Ok(p) => Ok(Some(p)),
                Err(ApiError::RequestError(e)) if e.status().map(|s| s.as_u16()) == Some(404) => {
                    Ok(None)
                }
                Err(e) => Err(ModelError::Hub(format!("downloading {name}: {e}"))),
            },
        }
    }

    /// Optional files never fail a load that has what it needs: a network error is a warning
    /// (the cache may hold everything required while the Hub is unreachable).
    async fn optional(&self, name: &str) -> Option<PathBuf> {
        match self.get(name).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(file = name, error = %e, "optional file unavailable; continuing without it");
                None
            }
        }
    }

    async fn require(&self, name: &str, model_id: &str) -> Result<PathBuf, ModelError> {
        self.get(name).await?.ok_or_else(|| {
            let hint = match self {
                Fetcher::Offline(_) => format!(
                    "HF_HUB_OFFLINE is set and the cache lacks it: run `spotinfer download \
                     --model-id {model_id}` with network access first"
                ),
                Fetcher::Online(_) => format!(
                    "the repository {model_id} has no {name}: is it a sentence-embedding model \
                     with safetensors weights?"
                ),
            };
            ModelError::Missing {
                file: name.to_string(),
                hint,
            }
        })
    }
}

async fn resolve_with(
    f: &Fetcher,
    model_id: &str,
    dense_path: Option<&str>,
) -> Result<ModelFiles, ModelError> {
    let config = f.require("config.json", model_id).await?;
    let tokenizer = f.require("tokenizer.json", model_id).await?;
    let weights = match f.optional("model.safetensors.index.json").await {
        Some(index) => {
            let mut out = Vec::new();
            for shard in shard_names(&index)? {
                out.push(f.require(&shard, model_id).await?);
            }
            out
        }
        None => vec![f.require("model.safetensors", model_id).await?],
    };
    let mut optional = Vec::new();
    for name in OPTIONAL_ST_FILES {
        optional.push(f.optional(name).await);
    }
    let [modules, sentence_bert_config, st_config]: [Option<PathBuf>; 3] = optional
        .try_into()
        .map_err(|_| ModelError::Hub("internal: optional file list".into()))?;
    let pooling_name = format!(
        "{}/config.json",
        pooling_dir(modules.as_deref()).unwrap_or_else(|| "1_Pooling".into())
    );
    let pooling_config = f.optional(&pooling_name).await;
    let mut dense = Vec::new();
    for d in dense_dirs(modules.as_deref(), dense_path)? {
        let weights = match f.optional(&format!("{d}/model.safetensors")).await {
            Some(p) => p,
            None => {
                f.require(&format!("{d}/pytorch_model.bin"), model_id)
                    .await?
            }
        };
        dense.push(DenseFiles {
            config: f.require(&format!("{d}/config.json"), model_id).await?,
            weights,
        });
    }
    Ok(ModelFiles {
        config,
        tokenizer,
        weights,
        modules,
        pooling_config,
        sentence_bert_config,
        st_config,
        dense,
        sparse_linear: f.optional("sparse_linear.pt").await,
        colbert_linear: f.optional("colbert_linear.pt").await,
        source: String::new(),
    })
}

/// Where a model's weight files are, without downloading them.
#[derive(Debug, Clone)]
pub enum WeightFiles {
    /// In a local folder or the Hub cache (possibly none: a folder with only config.json).
    Local(Vec<PathBuf>),
    /// On the Hub: their URLs, and the token a gated repository needs.
    Remote {
        names: Vec<String>,
        urls: Vec<String>,
        token: Option<String>,
    },
}

/// config.json (local) and where the weights are.
#[derive(Debug, Clone)]
pub struct Located {
    pub config: PathBuf,
    pub weights: WeightFiles,
}

fn weight_files_in(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return Ok(shard_names(&index)?
            .into_iter()
            .map(|n| dir.join(n))
            .collect());
    }
    let single = dir.join("model.safetensors");
    Ok(if single.is_file() {
        vec![single]
    } else {
        Vec::new()
    })
}

/// Like [`resolve`], but the weights stay where they are: a local folder, else the Hub cache,
/// else the Hub (only config.json and the shard index are fetched). For `spotinfer plan`,
/// which reads the weights' headers only.
pub async fn locate(opts: &ResolveOptions) -> Result<Located, ModelError> {
    let local = Path::new(&opts.model_id);
    if local.is_dir() {
        return Ok(Located {
            config: local.join("config.json"),
            weights: WeightFiles::Local(weight_files_in(local)?),
        });
    }
    if opts.model_id.starts_with('/') || opts.model_id.starts_with('.') {
        return Err(ModelError::Missing {
            file: opts.model_id.clone(),
            hint: "no such folder: give an existing local folder or a Hub repository id".into(),
        });
    }
    let cache = Cache::new(hub_cache_dir(opts.cache_dir.as_deref()));
    let repo = Repo::with_revision(
        opts.model_id.clone(),
        RepoType::Model,
        opts.revision.clone(),
    );
    // The cache first: a model already downloaded needs no network at all.
    let cached = cache.repo(repo.clone());
    if let Some(config) = cached.get("config.json") {
        let names = match cached.get("model.safetensors.index.json") {
            Some(index) => shard_names(&index)?,
            None => vec!["model.safetensors".to_string()],
        };
        let paths: Vec<Option<PathBuf>> = names.iter().map(|n| cached.get(n)).collect();
        if paths.iter().all(Option::is_some) {
            return Ok(Located {
                config,
                weights: WeightFiles::Local(paths.into_iter().flatten().collect()),
            });
        }
    }
    if hub_offline() {
        return Err(ModelError::Missing {
            file: format!("{}/config.json", opts.model_id),
            hint: "HF_HUB_OFFLINE is set and the cache lacks the model: unset it, or run \
                   `spotinfer download` first"
                .into(),
        });
    }
    let api = hub_api(&cache, opts.progress)?.repo(repo);
    let config = api
        .get("config.json")
        .await
        .map_err(|e| ModelError::Hub(format!("config.json: {e}")))?;
    let names = match api.get("model.safetensors.index.json").await {
        Ok(index) => shard_names(&index)?,
        Err(ApiError::RequestError(e)) if e.status().map(|s| s.as_u16()) == Some(404) => {
            vec!["model.safetensors".to_string()]
        }
        Err(e) => {
            return Err(ModelError::Hub(format!(
                "model.safetensors.index.json: {e}"
            )))
        }
    };
    let urls = names.iter().map(|n| api.url(n)).collect();
    Ok(Located {
        config,
        weights: WeightFiles::Remote {
            names,
            urls,
            token: hub_token(&cache),
        },
    })
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// The distinct shard file names of a sharded checkpoint, in order.
pub(crate) fn shard_names(index: &Path) -> Result<Vec<String>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let parsed: ShardIndex = serde_json::from_str(&text).map_err(|e| ModelError::Corrupt {
        file: index.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut names: Vec<String> = parsed.weight_map.into_values().collect();
    names.sort();
    names.dedup();
    if names.iter().any(|n| n.contains("..") || n.starts_with('/')) {
        return Err(ModelError::Corrupt {
            file: index.display().to_string(),
            reason: "a shard name points outside the model folder".into(),
        });
    }
    Ok(names)
}

#[derive(Deserialize)]
struct StModule {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

fn st_modules(modules: Option<&Path>) -> Vec<StModule> {
    modules
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<Vec<StModule>>(&t).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !m.path.contains("..") && !m.path.starts_with('/'))
        .collect()
}

/// The Pooling module's folder named in modules.json (usually `1_Pooling`).
fn pooling_dir(modules: Option<&Path>) -> Option<String> {
    st_modules(modules)
        .into_iter()
        .find(|m| m.kind.ends_with("Pooling"))
        .map(|m| m.path)
        .filter(|p| !p.is_empty())
}

/// The Dense module folders, in pipeline order. `--dense-path` replaces the one modules.json
/// names (TEI's meaning: another width, e.g. `2_Dense_1024`) or adds one where it names none;
/// with several there is no telling which it replaces, so it is refused.
fn dense_dirs(modules: Option<&Path>, dense_path: Option<&str>) -> Result<Vec<String>, ModelError> {
    let listed: Vec<String> = st_modules(modules)
        .into_iter()
        .filter(|m| m.kind.ends_with(".Dense") && !m.path.is_empty())
        .map(|m| m.path)
        .collect();
    let Some(over) = dense_path.map(|p| p.trim_matches('/')) else {
        return Ok(listed);
    };
    if over.is_empty() || over.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(ModelError::Unsupported(format!(
            "--dense-path `{over}` must be a folder inside the model, e.g. 2_Dense_1024"
        )));
    }
    if listed.len() > 1 {
        return Err(ModelError::Unsupported(format!(
            "--dense-path replaces the model's one Dense module, but modules.json lists {} \
             ({}): leave --dense-path out",
            listed.len(),
            listed.join(", ")
        )));
    }
    Ok(vec![over.to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_folder_missing_weights_names_the_file() {
        let dir = std::env::temp_dir().join(format!("spotinfer-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
        let err = resolve_local(&dir).unwrap_err().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn dense_path_replaces_the_one_dense_module() {
        let dir = std::env::temp_dir().join(format!("spotinfer-dense-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let modules = dir.join("modules.json");
        let module = |p: &str, t: &str| format!(r#"{{"path":"{p}","type":"{t}"}}"#);
        let st = "sentence_transformers.models";
        std::fs::write(
            &modules,
            format!(
                "[{}, {}]",
                module("1_Pooling", &format!("{st}.Pooling")),
                module("2_Dense", &format!("{st}.Dense"))
            ),
        )
        .unwrap();
        assert_eq!(dense_dirs(Some(&modules), None).unwrap(), ["2_Dense"]);
        assert_eq!(
            dense_dirs(Some(&modules), Some("2_Dense_1024/")).unwrap(),
            ["2_Dense_1024"]
        );
        assert_eq!(dense_dirs(None, Some("2_Dense")).unwrap(), ["2_Dense"]);
        assert!(dense_dirs(Some(&modules), Some("../x")).is_err());
        std::fs::write(
            &modules,
            format!(
                "[{}, {}]",
                module("2_Dense", &format!("{st}.Dense")),
                module("3_Dense", &format!("{st}.Dense"))
            ),
        )
        .unwrap();
        let err = dense_dirs(Some(&modules), Some("2_Dense_1024"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--dense-path") && err.contains("3_Dense"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn shard_index_lists_distinct_files() {
        let dir = std::env::temp_dir().join(format!("spotinfer-shards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let idx = dir.join("model.safetensors.index.json");
        std::fs::write(
            &idx,
            r#"{"metadata":{},"weight_map":{"a":"m-2.safetensors","b":"m-1.safetensors","c":"m-2.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(
            shard_names(&idx).unwrap(),
            vec!["m-1.safetensors", "m-2.safetensors"]
        );
        std::fs::write(&idx, r#"{"weight_map":{"a":"../../etc/passwd"}}"#).unwrap();
        assert!(shard_names(&idx).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn cache_dir_prefers_the_flag() {
        assert_eq!(
            hub_cache_dir(Some(Path::new("/x/y"))),
            PathBuf::from("/x/y")
        );
    }
}
