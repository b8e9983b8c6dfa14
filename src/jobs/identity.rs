//! Which run a `spotinfer batch` output belongs to: the input file and the model, recorded in
//! `<output>.ckpt` so that a rerun resumes it, or reports it complete, only when it is the same
//! run (checkpoint.rs). Anything that changes the output lines is part of it; how they are
//! computed (device, CPU or GPU backend, kernels) is not, so a job preempted on one node
//! resumes on another.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::durable::{io_err, StoreError};
use crate::config::ModelArgs;
use crate::inference::ModelInfo;

/// How much of the input is hashed on every run: cheap, and it catches another file of the
/// same size.
pub const HEAD_BYTES: u64 = 64 * 1024;

/// What produced an output: recorded with every checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIdentity {
    pub input: InputIdentity,
    pub model: ModelRequest,
    pub loaded: LoadedModel,
}

/// The input file. Appending lines makes it another input (its size changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputIdentity {
    pub size: u64,
    /// Nanoseconds since the Unix epoch; None where the filesystem keeps none.
    pub mtime_ns: Option<u64>,
    /// SHA-256 of the first `HEAD_BYTES` (the whole file when shorter).
    pub head_sha256: String,
    /// SHA-256 of the whole file. Hashed on a fresh start, and on a rerun only when the mtime
    /// moved over the same size and head: an input downloaded again (a new pod after a
    /// preemption) still resumes, an edit past the head does not.
    pub sha256: String,
}

/// The model flags that change what the output holds, as given (known before the model loads,
/// so "already complete" needs no load).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRequest {
    /// A local folder canonicalised (another spelling of the same folder is the same model; a
    /// symlink moved to another folder is not), else the Hub repository id.
    pub model_id: String,
    /// None for a local folder, where `--revision` is ignored.
    pub revision: Option<String>,
    pub task: String,
    pub dtype: Option<String>,
    pub pooling: Option<String>,
    pub default_prompt_name: Option<String>,
    pub default_prompt: Option<String>,
    pub dense_path: Option<String>,
    /// SHA-256 of the `--quantization-ranges` file (int8 / uint8 outputs), not its path.
    pub quantization_ranges_sha256: Option<String>,
}

/// What loading resolved the flags to. A local folder is known by its path and by these; its
/// weights are not hashed (gigabytes), so retrained weights of the same shape put in the same
/// folder go unnoticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedModel {
    /// The commit a Hub revision resolved to (a branch such as `main` moves), from the cache.
    pub hub_commit: Option<String>,
    pub architecture: String,
    pub task: String,
    /// Resolved: without `--dtype` a GPU runs float16 and a CPU float32.
    pub dtype: String,
    pub pooling: Option<String>,
    pub output_size: usize,
    pub default_prompt: Option<String>,
}

/// One way in which this run is not the one that wrote the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub subject: Subject,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Input,
    Model,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = match self.subject {
            Subject::Input => "input",
            Subject::Model => "model",
        };
        write!(f, "{subject} differs: {}", self.detail)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hash in a message: enough hex digits to tell two apart.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn sha256_of(mut reader: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(hex(&hasher.finalize())),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn sha256_file(path: &Path) -> Result<String, StoreError> {
    File::open(path).and_then(sha256_of).map_err(io_err(path))
}

/// Size, mtime and head hash: what every run reads.
struct Probe {
    size: u64,
    mtime_ns: Option<u64>,
    head_sha256: String,
}

fn probe(path: &Path) -> Result<Probe, StoreError> {
    let f = File::open(path).map_err(io_err(path))?;
    let meta = f.metadata().map_err(io_err(path))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok());
    let head_sha256 = sha256_of(f.take(HEAD_BYTES)).map_err(io_err(path))?;
    Ok(Probe {
        size: meta.len(),
        mtime_ns,
        head_sha256,
    })
}

fn show_mtime(ns: Option<u64>) -> String {
    match ns {
        Some(ns) => {
            humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
        }
        None => "(unknown)".into(),
    }
}

/// This run's input against the recorded one.
#[derive(Debug, PartialEq, Eq)]
pub enum InputCheck {
    /// The same input, with its identity as of now (to record from here on).
    Same(InputIdentity),
    Differs(Vec<Difference>),
}

impl InputIdentity {
    /// The identity of a file never seen before: all of it is hashed.
    pub fn read(path: &Path) -> Result<Self, StoreError> {
        let p = probe(path)?;
        Ok(Self {
            size: p.size,
            mtime_ns: p.mtime_ns,
            head_sha256: p.head_sha256,
            sha256: sha256_file(path)?,
        })
    }

    /// Whether the file at `path` is still this input; hashes all of it only when size and
    /// head match but the mtime moved.
    pub fn check(&self, path: &Path) -> Result<InputCheck, StoreError> {
        let now = probe(path)?;
        let differs = |detail: String| {
            InputCheck::Differs(vec![Difference {
                subject: Subject::Input,
                detail,
            }])
        };
        if now.size != self.size {
            return Ok(differs(format!("size {} → {} bytes", self.size, now.size)));
        }
        if now.head_sha256 != self.head_sha256 {
            return Ok(differs(format!(
                "first {} KiB: sha256 {} → {}",
                HEAD_BYTES / 1024,
                short(&self.head_sha256),
                short(&now.head_sha256)
            )));
        }
        let sha256 = if now.mtime_ns == self.mtime_ns {
            self.sha256.clone()
        } else {
            let whole = sha256_file(path)?;
            if whole != self.sha256 {
                return Ok(differs(format!(
                    "content after the first {} KiB: sha256 {} → {} (same size; modified {} → {})",
                    HEAD_BYTES / 1024,
                    short(&self.sha256),
                    short(&whole),
                    show_mtime(self.mtime_ns),
                    show_mtime(now.mtime_ns)
                )));
            }
            tracing::info!(
                input = %path.display(),
                "the input was written again with the same content"
            );
            whole
        };
        Ok(InputCheck::Same(Self {
            size: now.size,
            mtime_ns: now.mtime_ns,
            head_sha256: now.head_sha256,
            sha256,
        }))
    }
}

/// A clap value as typed on the command line (`float16`, `last-token`).
fn flag_value<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_else(|| "?".into())
}

fn show(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("{s:?}"),
        None => "(not set)".into(),
    }
}

/// `label old → new` for every field that differs.
fn field_differences(fields: &[(&str, String, String)]) -> Vec<Difference> {
    fields
        .iter()
        .filter(|(_, was, now)| was != now)
        .map(|(label, was, now)| Difference {
            subject: Subject::Model,
            detail: format!("{label} {was} → {now}"),
        })
        .collect()
}

impl ModelRequest {
    pub fn from_args(args: &ModelArgs) -> Result<Self, StoreError> {
        let local = Path::new(&args.model_id);
        let (model_id, revision) = if local.is_dir() {
            let canonical = std::fs::canonicalize(local).map_err(io_err(local))?;
            (canonical.display().to_string(), None)
        } else {
            (args.model_id.clone(), Some(args.revision.clone()))
        };
        Ok(Self {
            model_id,
            revision,
            task: flag_value(&args.task),
            dtype: args.dtype.as_ref().map(flag_value),
            pooling: args.pooling.as_ref().map(flag_value),
            default_prompt_name: args.default_prompt_name.clone(),
            default_prompt: args.default_prompt.clone(),
            dense_path: args.dense_path.clone(),
            quantization_ranges_sha256: args
                .quantization_ranges
                .as_deref()
                .map(sha256_file)
                .transpose()?,
        })
    }

    /// How `now` differs from this (the recorded request), flag by flag.
    pub fn differences(&self, now: &Self) -> Vec<Difference> {
        let plain = |s: &String| s.clone();
        let hash =
            |v: &Option<String>| v.as_deref().map_or("(not set)".into(), |h| short(h).into());
        field_differences(&[
            ("--model-id", plain(&self.model_id), plain(&now.model_id)),
            ("--revision", show(&self.revision), show(&now.revision)),
            ("--task", plain(&self.task), plain(&now.task)),
            ("--dtype", show(&self.dtype), show(&now.dtype)),
            ("--pooling", show(&self.pooling), show(&now.pooling)),
            (
                "--default-prompt-name",
                show(&self.default_prompt_name),
                show(&now.default_prompt_name),
            ),
            (
                "--default-prompt",
                show(&self.default_prompt),
                show(&now.default_prompt),
            ),
            (
                "--dense-path",
                show(&self.dense_path),
                show(&now.dense_path),
            ),
            (
                "--quantization-ranges sha256",
                hash(&self.quantization_ranges_sha256),
                hash(&now.quantization_ranges_sha256),
            ),
        ])
    }
}

/// The commit a Hub revision points at in the cache (`refs/<revision>`), as loading left it.
fn hub_commit(args: &ModelArgs) -> Option<String> {
    if Path::new(&args.model_id).is_dir() {
        return None;
    }
    let cache = hf_hub::Cache::new(crate::model::resolve::hub_cache_dir(
        args.huggingface_hub_cache.as_deref(),
    ));
    let repo = cache.repo(hf_hub::Repo::with_revision(
        args.model_id.clone(),
        hf_hub::RepoType::Model,
        args.revision.clone(),
    ));
    // snapshots/<commit>/config.json: every model has a config.json.
    let config = repo.get("config.json")?;
    let commit = config.parent()?.file_name()?.to_str()?;
    Some(commit.to_string())
}

impl LoadedModel {
    pub fn of(info: &ModelInfo, args: &ModelArgs) -> Self {
        Self {
            hub_commit: hub_commit(args),
            architecture: info.model.architecture.clone(),
            task: info.model.task.as_str().to_string(),
            dtype: info.model.dtype.to_string(),
            pooling: info.model.pooling.map(|p| p.as_str().to_string()),
            output_size: info.model.output_size,
            default_prompt: info.default_prompt.clone(),
        }
    }

    /// How `now` differs from this (what the recorded run loaded).
    pub fn differences(&self, now: &Self) -> Vec<Difference> {
        let plain = |s: &String| s.clone();
        field_differences(&[
            ("Hub commit", show(&self.hub_commit), show(&now.hub_commit)),
            (
                "architecture",
                plain(&self.architecture),
                plain(&now.architecture),
            ),
            ("task", plain(&self.task), plain(&now.task)),
            ("dtype", plain(&self.dtype), plain(&now.dtype)),
            ("pooling", show(&self.pooling), show(&now.pooling)),
            (
                "output dimensions",
                self.output_size.to_string(),
                now.output_size.to_string(),
            ),
            (
                "default prompt",
                show(&self.default_prompt),
                show(&now.default_prompt),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;
    use std::io::Write;
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spotinfer-id-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn set_mtime(path: &Path, secs: u64) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    fn details(check: InputCheck) -> Vec<String> {
        match check {
            InputCheck::Differs(d) => d.iter().map(ToString::to_string).collect(),
            InputCheck::Same(_) => panic!("expected a difference"),
        }
    }

    #[test]
    fn the_same_input_is_the_same_even_copied_again() {
        let d = tmp("same");
        let p = d.join("in.jsonl");
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":2}\n").unwrap();
        set_mtime(&p, 1_700_000_000);
        let id = InputIdentity::read(&p).unwrap();
        assert_eq!(id.size, 16);
        assert_eq!(id.mtime_ns, Some(1_700_000_000_000_000_000));
        // sha256 of the 16 bytes, which are also the whole head.
        assert_eq!(id.sha256, id.head_sha256);
        assert_eq!(id.sha256.len(), 64);
        assert_eq!(id.check(&p).unwrap(), InputCheck::Same(id.clone()));
        // Written again with the same bytes (a fresh download): same input, new mtime.
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":2}\n").unwrap();
        set_mtime(&p, 1_800_000_000);
        let InputCheck::Same(now) = id.check(&p).unwrap() else {
            panic!("same content");
        };
        assert_eq!(now.mtime_ns, Some(1_800_000_000_000_000_000));
        assert_eq!(now.sha256, id.sha256);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn appended_lines_make_another_input() {
        let d = tmp("grown");
        let p = d.join("in.jsonl");
        std::fs::write(&p, b"{\"a\":1}\n").unwrap();
        let id = InputIdentity::read(&p).unwrap();
        File::options()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"b\":2}\n")
            .unwrap();
        assert_eq!(
            details(id.check(&p).unwrap()),
            ["input differs: size 8 → 16 bytes"]
        );
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn another_file_of_the_same_size_differs_in_its_head() {
        let d = tmp("head");
        let p = d.join("in.jsonl");
        std::fs::write(&p, b"{\"a\":1}\n").unwrap();
        let id = InputIdentity::read(&p).unwrap();
        std::fs::write(&p, b"{\"b\":2}\n").unwrap();
        let got = details(id.check(&p).unwrap());
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with(&format!(
                "input differs: first 64 KiB: sha256 {} → ",
                &id.head_sha256[..12]
            )),
            "{got:?}"
        );
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn an_edit_past_the_head_is_caught_by_the_whole_hash() {
        let d = tmp("tail");
        let p = d.join("in.jsonl");
        let mut body = vec![b'x'; HEAD_BYTES as usize + 10];
        std::fs::write(&p, &body).unwrap();
        set_mtime(&p, 1_700_000_000);
        let id = InputIdentity::read(&p).unwrap();
        assert_ne!(id.head_sha256, id.sha256);
        body[HEAD_BYTES as usize + 5] = b'y';
        std::fs::write(&p, &body).unwrap();
        set_mtime(&p, 1_700_000_001);
        let got = details(id.check(&p).unwrap());
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("input differs: content after the first 64 KiB: sha256 "),
            "{got:?}"
        );
        assert!(
            got[0].ends_with(
                "(same size; modified 2023-11-14T22:13:20.000000000Z → \
                 2023-11-14T22:13:21.000000000Z)"
            ),
            "{got:?}"
        );
        // With the mtime put back, only the head and size are compared: the cheap path.
        set_mtime(&p, 1_700_000_000);
        assert!(matches!(id.check(&p).unwrap(), InputCheck::Same(_)));
        std::fs::remove_dir_all(&d).ok();
    }

    fn model_args(extra: &[&str]) -> ModelArgs {
        let mut argv = vec!["spotinfer", "batch", "--input", "i", "--output", "o"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Batch(b) => b.model,
            _ => unreachable!(),
        }
    }

    #[test]
    fn model_flags_are_compared_one_by_one() {
        let d = tmp("flags");
        let first = ModelRequest::from_args(&model_args(&["--model-id", "org/a"])).unwrap();
        assert_eq!(first.revision.as_deref(), Some("main"));
        assert_eq!(first.task, "auto");
        assert_eq!(first.dtype, None);
        assert!(first.differences(&first.clone()).is_empty());
        let second = ModelRequest::from_args(&model_args(&[
            "--model-id",
            "org/b",
            "--dtype",
            "float16",
            "--pooling",
            "last-token",
            "--default-prompt",
            "query: ",
        ]))
        .unwrap();
        let got: Vec<String> = first
            .differences(&second)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "model differs: --model-id org/a → org/b",
                "model differs: --dtype (not set) → \"float16\"",
                "model differs: --pooling (not set) → \"last-token\"",
                "model differs: --default-prompt (not set) → \"query: \"",
            ]
        );
        // A local folder: another spelling of it is the same model, its revision ignored.
        let model = d.join("m");
        std::fs::create_dir_all(&model).unwrap();
        let plain = model.to_str().unwrap().to_string();
        let dotted = format!("{}/./../m", model.display());
        let a = ModelRequest::from_args(&model_args(&["--model-id", &plain])).unwrap();
        let b = ModelRequest::from_args(&model_args(&["--model-id", &dotted, "--revision", "x"]))
            .unwrap();
        assert_eq!(a.revision, None);
        assert_eq!(a, b);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn quantization_ranges_count_by_content() {
        let d = tmp("ranges");
        let (r1, r2) = (d.join("r1.json"), d.join("r2.json"));
        std::fs::write(&r1, b"[[0],[1]]").unwrap();
        std::fs::write(&r2, b"[[0],[1]]").unwrap();
        let args = |p: &Path| model_args(&["--quantization-ranges", p.to_str().unwrap()]);
        let a = ModelRequest::from_args(&args(&r1)).unwrap();
        assert_eq!(a, ModelRequest::from_args(&args(&r2)).unwrap());
        std::fs::write(&r2, b"[[0],[2]]").unwrap();
        let b = ModelRequest::from_args(&args(&r2)).unwrap();
        let got = a.differences(&b);
        assert_eq!(got.len(), 1);
        assert!(got[0]
            .to_string()
            .starts_with("model differs: --quantization-ranges sha256 "));
        let missing = ModelRequest::from_args(&args(&d.join("none.json")));
        assert!(missing.is_err());
        std::fs::remove_dir_all(&d).ok();
    }

    fn loaded() -> LoadedModel {
        LoadedModel {
            hub_commit: None,
            architecture: "BertModel".into(),
            task: "embed".into(),
            dtype: "float32".into(),
            pooling: Some("cls".into()),
            output_size: 32,
            default_prompt: None,
        }
    }

    #[test]
    fn loaded_models_name_what_changes_the_vectors() {
        let a = loaded();
        assert!(a.differences(&a.clone()).is_empty());
        let b = LoadedModel {
            dtype: "float16".into(),
            pooling: Some("mean".into()),
            output_size: 16,
            ..loaded()
        };
        let got: Vec<String> = a.differences(&b).iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "model differs: dtype float32 → float16",
                "model differs: pooling \"cls\" → \"mean\"",
                "model differs: output dimensions 32 → 16",
            ]
        );
    }

    #[test]
    fn a_hub_model_is_known_by_the_commit_its_revision_resolved_to() {
        let d = tmp("hub");
        let repo = d.join("models--org--name");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
        std::fs::create_dir_all(repo.join("snapshots/0123abcd")).unwrap();
        std::fs::write(repo.join("snapshots/0123abcd/config.json"), "{}").unwrap();
        let cache = d.to_str().unwrap();
        let args = |rev: &str| {
            model_args(&[
                "--model-id",
                "org/name",
                "--revision",
                rev,
                "--huggingface-hub-cache",
                cache,
            ])
        };
        assert_eq!(hub_commit(&args("main")).as_deref(), Some("0123abcd"));
        assert_eq!(hub_commit(&args("v2")), None, "not in the cache");
        let local = model_args(&["--model-id", cache]);
        assert_eq!(hub_commit(&local), None, "a local folder has no commit");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn identities_round_trip_through_json() {
        let id = RunIdentity {
            input: InputIdentity {
                size: 3,
                mtime_ns: None,
                head_sha256: "h".into(),
                sha256: "s".into(),
            },
            model: ModelRequest::from_args(&model_args(&[])).unwrap(),
            loaded: loaded(),
        };
        let back: RunIdentity = serde_json::from_str(&serde_json::to_string(&id).unwrap()).unwrap();
        assert_eq!(back, id);
        assert_eq!(show_mtime(None), "(unknown)");
    }
}
