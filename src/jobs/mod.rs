//! Offline batch jobs that survive preemption: OpenAI-compatible Files and Batches, stored under
//! `--state-dir`, run through the same queue as online requests at a lower priority, and
//! checkpointed after every chunk so each `custom_id` is answered exactly once whatever kills
//! the process.
//!
//! Layout of the state dir:
//! ```text
//! files/<file-id>.json            metadata ({"file": <OpenAI file object>, "data": <path>})
//! files/<file-id>.jsonl           uploaded content
//! batches/<batch-id>/batch.json   the OpenAI batch object (status, timestamps)
//! batches/<batch-id>/output.jsonl results, appended per chunk
//! batches/<batch-id>/errors.jsonl failed lines, appended per chunk
//! batches/<batch-id>/checkpoint.json  input offset + output lengths, rewritten atomically
//! batches/<batch-id>/lease.json   which replica runs it, until when
//! ```

pub mod lines;
pub mod offline;
pub mod runner;
pub mod store;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::metrics::Metrics;
pub use runner::JobRunner;
use store::{io_err, read_json, unix_now, write_json, Checkpoint, LeaseFile, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileObject {
    pub id: String,
    pub object: String,
    pub bytes: u64,
    pub created_at: u64,
    pub filename: String,
    pub purpose: String,
    pub status: String,
}

#[derive(Serialize, Deserialize)]
struct FileRecord {
    file: FileObject,
    /// Where the bytes are (an upload, or a batch's output).
    data: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    /// Still has work for a runner.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            BatchStatus::Validating
                | BatchStatus::InProgress
                | BatchStatus::Finalizing
                | BatchStatus::Cancelling
        )
    }
}

/// The OpenAI batch object, as stored and as returned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchObject {
    pub id: String,
    pub object: String,
    pub endpoint: String,
    pub errors: Option<Value>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: BatchStatus,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub request_counts: RequestCounts,
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}

fn random_id(prefix: &str) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..24)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// Ids are used as file names: only ids we could have made are accepted.
fn valid_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|t| {
        !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// The state dir: files and batch metadata. Cheap to clone.
#[derive(Clone)]
pub struct JobStore {
    root: PathBuf,
}

impl JobStore {
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for sub in ["files", "batches"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn file_meta(&self, id: &str) -> PathBuf {
        self.root.join("files").join(format!("{id}.json"))
    }

    pub fn batch_dir(&self, id: &str) -> PathBuf {
        self.root.join("batches").join(id)
    }

    /// Stores an upload that was streamed to `tmp` (inside the state dir) under a new id.
    pub fn add_file(
        &self,
        tmp: &Path,
        filename: &str,
        purpose: &str,
    ) -> Result<FileObject, StoreError> {
        let id = random_id("file-");
        let data = self.root.join("files").join(format!("{id}.jsonl"));
        let bytes = std::fs::metadata(tmp).map_err(io_err(tmp))?.len();
        std::fs::File::open(tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(tmp))?;
        std::fs::rename(tmp, &data).map_err(io_err(&data))?;
        let file = FileObject {
            id: id.clone(),
            object: "file".into(),
            bytes,
            created_at: unix_now(),
            filename: filename.to_string(),
            purpose: purpose.to_string(),
            status: "processed".into(),
        };
        write_json(
            &self.file_meta(&id),
            &FileRecord {
                file: file.clone(),
                data,
            },
        )?;
        Ok(file)
    }

    /// Registers an existing file (a batch's output) without copying it.
    fn register_file(
        &self,
        data: &Path,
        filename: &str,
        purpose: &str,
    ) -> Result<FileObject, StoreError> {
        let id = random_id("file-");
        let file = FileObject {
            id: id.clone(),
            object: "file".into(),
            bytes: std::fs::metadata(data).map_err(io_err(data))?.len(),
            created_at: unix_now(),
            filename: filename.to_string(),
            purpose: purpose.to_string(),
            status: "processed".into(),
        };
        write_json(
            &self.file_meta(&id),
            &FileRecord {
                file: file.clone(),
                data: data.to_path_buf(),
            },
        )?;
        Ok(file)
    }

    fn file_record(&self, id: &str) -> Result<FileRecord, StoreError> {
        let not_found = || StoreError::NotFound {
            kind: "file",
            id: id.to_string(),
        };
        if !valid_id(id, "file-") {
            return Err(not_found());
        }
        let p = self.file_meta(id);
        if !p.exists() {
            return Err(not_found());
        }
        read_json(&p)
    }

    pub fn file(&self, id: &str) -> Result<FileObject, StoreError> {
        Ok(self.file_record(id)?.file)
    }

    pub fn file_path(&self, id: &str) -> Result<PathBuf, StoreError> {
        Ok(self.file_record(id)?.data)
    }

    pub fn list_files(&self) -> Result<Vec<FileObject>, StoreError> {
        let dir = self.root.join("files");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(id) = name.strip_suffix(".json") {
                if let Ok(f) = self.file(id) {
                    out.push(f);
                }
            }
        }
        out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(out)
    }

    /// Deletes an upload. Batch outputs stay with their batch; only their record goes.
    pub fn delete_file(&self, id: &str) -> Result<(), StoreError> {
        let rec = self.file_record(id)?;
        let meta = self.file_meta(id);
        std::fs::remove_file(&meta).map_err(io_err(&meta))?;
        if rec.data.starts_with(self.root.join("files")) {
            let _ = std::fs::remove_file(&rec.data);
        }
        Ok(())
    }

    pub fn create_batch(
        &self,
        input_file_id: &str,
        endpoint: &str,
        completion_window: &str,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<BatchObject, JobError> {
        if !lines::ENDPOINTS.contains(&endpoint) {
            return Err(JobError::Invalid(format!(
                "endpoint must be /v1/embeddings (this server embeds), got `{endpoint}`"
            )));
        }
        if completion_window != "24h" {
            return Err(JobError::Invalid(format!(
                "completion_window must be `24h`, got `{completion_window}`"
            )));
        }
        let input = self.file(input_file_id)?;
        if input.purpose != "batch" {
            return Err(JobError::Invalid(format!(
                "file {input_file_id} has purpose `{}`, not `batch`",
                input.purpose
            )));
        }
        let id = random_id("batch_");
        let dir = self.batch_dir(&id);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let now = unix_now();
        let batch = BatchObject {
            id: id.clone(),
            object: "batch".into(),
            endpoint: endpoint.to_string(),
            errors: None,
            input_file_id: input_file_id.to_string(),
            completion_window: completion_window.to_string(),
            status: BatchStatus::Validating,
            output_file_id: None,
            error_file_id: None,
            created_at: now,
            in_progress_at: None,
            expires_at: Some(now + 24 * 3600),
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            request_counts: RequestCounts::default(),
            metadata,
        };
        self.save_batch(&batch)?;
        Ok(batch)
    }

    pub fn save_batch(&self, b: &BatchObject) -> Result<(), StoreError> {
        write_json(&self.batch_dir(&b.id).join("batch.json"), b)
    }

    /// The stored object with live counts from the checkpoint.
    pub fn batch(&self, id: &str) -> Result<BatchObject, StoreError> {
        let not_found = || StoreError::NotFound {
            kind: "batch",
            id: id.to_string(),
        };
        if !valid_id(id, "batch_") {
            return Err(not_found());
        }
        let p = self.batch_dir(id).join("batch.json");
        if !p.exists() {
            return Err(not_found());
        }
        let mut b: BatchObject = read_json(&p)?;
        if b.status.is_active() {
            if let Ok(c) = read_json::<Checkpoint>(&self.batch_dir(id).join("checkpoint.json")) {
                b.request_counts.completed = c.completed;
                b.request_counts.failed = c.failed;
            }
        }
        Ok(b)
    }

    /// All batches, newest first.
    pub fn list_batches(&self) -> Result<Vec<BatchObject>, StoreError> {
        let dir = self.root.join("batches");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            if let Ok(b) = self.batch(&entry.file_name().to_string_lossy()) {
                out.push(b);
            }
        }
        out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(out)
    }

    /// Asks for a cancel; the runner holding the job finishes it (outputs so far are kept).
    pub fn cancel(&self, id: &str) -> Result<BatchObject, JobError> {
        let mut b = self.batch(id)?;
        match b.status {
            BatchStatus::Validating | BatchStatus::InProgress | BatchStatus::Finalizing => {
                b.status = BatchStatus::Cancelling;
                b.cancelling_at = Some(unix_now());
                self.save_batch(&b)?;
                Ok(b)
            }
            BatchStatus::Cancelling => Ok(b),
            other => Err(JobError::Invalid(format!(
                "batch {id} is {} and cannot be cancelled",
                other.as_str()
            ))),
        }
    }

    pub fn lease(&self, id: &str) -> LeaseFile {
        LeaseFile::new(&self.batch_dir(id))
    }
}

/// Counts the non-empty lines of a JSONL file.
pub fn count_lines(path: &Path) -> Result<u64, StoreError> {
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut n = 0;
    for line in std::io::BufReader::new(f).split(b'\n') {
        let line = line.map_err(io_err(path))?;
        if !line.iter().all(u8::is_ascii_whitespace) {
            n += 1;
        }
    }
    Ok(n)
}

/// Updates the per-status gauge from the store.
pub fn refresh_metrics(store: &JobStore, metrics: &Arc<Metrics>) {
    let Ok(batches) = store.list_batches() else {
        return;
    };
    for s in crate::metrics::JOB_STATUSES {
        let n = batches.iter().filter(|b| b.status.as_str() == *s).count();
        metrics.jobs.with_label_values(&[s]).set(n as i64);
    }
    let remaining: u64 = batches
        .iter()
        .filter(|b| b.status.is_active())
        .map(|b| {
            b.request_counts
                .total
                .saturating_sub(b.request_counts.completed + b.request_counts.failed)
        })
        .sum();
    metrics.job_queue_depth.set(remaining as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_touching_the_filesystem() {
        assert!(valid_id("file-abc123", "file-"));
        assert!(!valid_id("file-../../etc", "file-"));
        assert!(!valid_id("file-", "file-"));
        assert!(!valid_id("batch_x", "file-"));
        let id = random_id("batch_");
        assert!(valid_id(&id, "batch_"), "{id}");
    }

    #[test]
    fn files_and_batches_round_trip() {
        let root = std::env::temp_dir().join(format!("spotinfer-jobs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = JobStore::open(&root).unwrap();
        let tmp = root.join("upload.tmp");
        std::fs::write(&tmp, b"{\"a\":1}\n\n{\"b\":2}\n").unwrap();
        let f = store.add_file(&tmp, "in.jsonl", "batch").unwrap();
        assert_eq!(f.bytes, 17);
        assert_eq!(store.file(&f.id).unwrap(), f);
        assert_eq!(count_lines(&store.file_path(&f.id).unwrap()).unwrap(), 2);
        assert!(store
            .create_batch(&f.id, "/v1/chat/completions", "24h", None)
            .is_err());
        let b = store
            .create_batch(&f.id, "/v1/embeddings", "24h", None)
            .unwrap();
        assert_eq!(store.batch(&b.id).unwrap().status, BatchStatus::Validating);
        assert_eq!(store.list_batches().unwrap().len(), 1);
        let c = store.cancel(&b.id).unwrap();
        assert_eq!(c.status, BatchStatus::Cancelling);
        assert!(matches!(
            store.file("file-nope"),
            Err(StoreError::NotFound { .. })
        ));
        store.delete_file(&f.id).unwrap();
        assert!(store.file(&f.id).is_err());
        std::fs::remove_dir_all(&root).ok();
    }
}
