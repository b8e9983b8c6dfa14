//! Durable writes under `--state-dir` and beside `spotinfer batch` outputs. Every metadata write
//! is atomic: write a temp file, fsync it, rename it over the old one, fsync the directory. A
//! crash between any two of those syscalls leaves either the old or the new version, never a
//! torn one.
//!
//! What the store assumes of its filesystem (local disks, NFSv4 such as EFS or Filestore, Azure
//! Files NFS and CephFS provide all of it):
//! - `rename` replaces its target atomically;
//! - `O_CREAT|O_EXCL` creation is exclusive (the lock files in `lease.rs`);
//! - `fsync` of a file or a directory makes it durable;
//! - replica clocks agree to well within the lease margin (NTP): leases and stale locks are
//!   judged by wall-clock time.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::drive::{ChunkResult, Commit, Position, Sink};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The cause is part of the message and deliberately not a `source`: error chains
    /// (anyhow's `{:#}`) would print it twice.
    #[error("{path}: {cause}{}", disk_full_hint(.cause))]
    Io { path: String, cause: io::Error },
    /// A bucket (or the object-store view of a folder) refused or failed a request.
    #[error("{path}: {cause}")]
    Object { path: String, cause: String },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("no such {kind}: {id}")]
    NotFound { kind: &'static str, id: String },
    /// The output is shorter than its checkpoint says: deleted or truncated by hand.
    #[error("{}", behind_checkpoint(.path, .checkpoint, .actual, .recorded))]
    BehindCheckpoint {
        path: String,
        checkpoint: String,
        /// None: the output file does not exist.
        actual: Option<u64>,
        recorded: u64,
    },
    #[error("{path} stayed locked for {secs} s; another replica holds it")]
    Busy { path: String, secs: u64 },
    #[error("a background task failed: {0}")]
    Task(String),
}

impl StoreError {
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { cause, .. } if is_disk_full(cause))
    }
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

fn disk_full_hint(e: &io::Error) -> &'static str {
    if is_disk_full(e) {
        ". The disk is full: free space on it (or move the file to a bigger disk) and run \
         again; everything up to the last checkpoint is kept"
    } else {
        ""
    }
}

fn behind_checkpoint(path: &str, ckpt: &str, actual: &Option<u64>, recorded: &u64) -> String {
    let what = match actual {
        None => format!("{path} is missing, but its checkpoint {ckpt} records {recorded} bytes of results already written"),
        Some(n) => format!("{path} has {n} bytes, but its checkpoint {ckpt} records {recorded}: it was truncated or replaced after the last run"),
    };
    format!(
        "{what}. Either restore {path} and run the same command again to resume, or delete \
         {ckpt} to start over from the first line"
    )
}

pub fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |cause| StoreError::Io {
        path: path.display().to_string(),
        cause,
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The directory holding `path` ("." for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

pub fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// A temp name unique to this process and call: threads writing the same target must not
/// rename each other's half-written temp files.
fn temp_name(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    parent_dir(path).join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = temp_name(path);
    let written = (|| {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fsync_dir(parent_dir(path))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Appends `data` to `path` and makes it durable.
pub fn append_durably(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    f.sync_data().map_err(io_err(path))
}

/// Where a `spotinfer batch` output stands: everything before `input_offset` is done and its
/// results are the first `output_len` / `error_len` bytes of the output and error files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub input_offset: u64,
    pub lines_done: u64,
    pub output_len: u64,
    pub error_len: u64,
    pub completed: u64,
    pub failed: u64,
    /// Device time spent on the lines so far (absent in checkpoints of older versions).
    #[serde(default)]
    pub device_seconds: f64,
}

/// An append-only output pair (results and errors) with its checkpoint, for one writer.
pub struct CheckpointedOutput {
    pub output: PathBuf,
    /// Failed lines go here when set; else into `output`, in input order.
    pub errors: Option<PathBuf>,
    pub checkpoint_path: PathBuf,
    pub checkpoint: Checkpoint,
}

impl CheckpointedOutput {
    /// Opens (or creates) the outputs and rolls them back to the last checkpoint, so a chunk
    /// written after it (then interrupted) is redone, never duplicated.
    pub fn open_or_resume(
        output: PathBuf,
        errors: Option<PathBuf>,
        checkpoint_path: PathBuf,
    ) -> Result<Self, StoreError> {
        let checkpoint: Checkpoint = if checkpoint_path.exists() {
            read_json(&checkpoint_path)?
        } else {
            Checkpoint::default()
        };
        let mut files = vec![(&output, checkpoint.output_len)];
        if let Some(e) = &errors {
            files.push((e, checkpoint.error_len));
        }
        for (path, len) in files {
            let behind = |actual| StoreError::BehindCheckpoint {
                path: path.display().to_string(),
                checkpoint: checkpoint_path.display().to_string(),
                actual,
                recorded: len,
            };
            // Never create a file the checkpoint says has content: that would hide the loss.
            if len > 0 && !path.exists() {
                return Err(behind(None));
            }
            let f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(path)
                .map_err(io_err(path))?;
            let actual = f.metadata().map_err(io_err(path))?.len();
            if actual < len {
                return Err(behind(Some(actual)));
            }
            if actual > len {
                tracing::info!(file = %path.display(), dropped = actual - len, "rolling back output past the checkpoint");
            }
            f.set_len(len).map_err(io_err(path))?;
            f.sync_all().map_err(io_err(path))?;
        }
        Ok(Self {
            output,
            errors,
            checkpoint_path,
            checkpoint,
        })
    }

    /// Appends one chunk's lines and records the new checkpoint durably: data first (fsync),
    /// then the checkpoint (atomic write). The runners call `commit_timed`; tests use this.
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &mut self,
        output_lines: &[u8],
        error_lines: &[u8],
        next_offset: u64,
        lines: u64,
        completed: u64,
        failed: u64,
    ) -> Result<Checkpoint, StoreError> {
        self.commit_timed(
            output_lines,
            error_lines,
            next_offset,
            lines,
            completed,
            failed,
            0.0,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_timed(
        &mut self,
        output_lines: &[u8],
        error_lines: &[u8],
        next_offset: u64,
        lines: u64,
        completed: u64,
        failed: u64,
        device_seconds: f64,
    ) -> Result<Checkpoint, StoreError> {
        let mut next = self.checkpoint;
        let mut files = vec![(&self.output, output_lines, &mut next.output_len)];
        if let Some(e) = &self.errors {
            files.push((e, error_lines, &mut next.error_len));
        }
        for (path, data, len) in files {
            if data.is_empty() {
                continue;
            }
            append_durably(path, data)?;
            *len += data.len() as u64;
        }
        next.input_offset = next_offset;
        next.lines_done += lines;
        next.completed += completed;
        next.failed += failed;
        next.device_seconds += device_seconds;
        write_json(&self.checkpoint_path, &next)?;
        self.checkpoint = next;
        Ok(next)
    }
}

impl Sink for CheckpointedOutput {
    fn position(&self) -> Position {
        let c = &self.checkpoint;
        Position {
            input_offset: c.input_offset,
            line_no: c.lines_done,
            completed: c.completed,
            failed: c.failed,
            device_seconds: c.device_seconds,
        }
    }

    fn separate_errors(&self) -> bool {
        self.errors.is_some()
    }

    fn commit(&mut self, chunk: &ChunkResult) -> Result<Commit, StoreError> {
        self.commit_timed(
            &chunk.output,
            &chunk.errors,
            chunk.next_offset,
            chunk.lines,
            chunk.completed,
            chunk.failed,
            chunk.device_seconds,
        )?;
        Ok(Commit::Done(self.position()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spotinfer-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn resume_rolls_back_past_the_checkpoint() {
        let d = tmp("ckpt");
        let open = || {
            CheckpointedOutput::open_or_resume(
                d.join("out"),
                Some(d.join("err")),
                d.join("ckpt.json"),
            )
            .unwrap()
        };
        let mut o = open();
        o.commit(b"a\n", b"", 10, 1, 1, 0).unwrap();
        o.commit(b"b\n", b"e\n", 20, 2, 1, 1).unwrap();
        // A chunk appended but never checkpointed (the process died in between).
        fs::OpenOptions::new()
            .append(true)
            .open(d.join("out"))
            .unwrap()
            .write_all(b"partial")
            .unwrap();
        let o = open();
        assert_eq!(o.checkpoint.input_offset, 20);
        assert_eq!(o.checkpoint.lines_done, 3);
        assert_eq!((o.checkpoint.completed, o.checkpoint.failed), (2, 1));
        assert_eq!(fs::read(d.join("out")).unwrap(), b"a\nb\n");
        assert_eq!(fs::read(d.join("err")).unwrap(), b"e\n");
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_truncated_output_is_reported_not_papered_over() {
        let d = tmp("short");
        let mut o = CheckpointedOutput::open_or_resume(d.join("out"), None, d.join("c")).unwrap();
        o.commit(b"abcdef\n", b"", 1, 1, 1, 0).unwrap();
        fs::write(d.join("out"), b"ab").unwrap();
        assert!(CheckpointedOutput::open_or_resume(d.join("out"), None, d.join("c")).is_err());
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_deleted_output_says_what_happened_and_both_ways_out() {
        let d = tmp("deleted");
        let (out, ckpt) = (d.join("out.jsonl"), d.join("out.jsonl.ckpt"));
        let mut o = CheckpointedOutput::open_or_resume(out.clone(), None, ckpt.clone()).unwrap();
        o.commit(b"abcdef\n", b"", 1, 1, 1, 0).unwrap();
        fs::remove_file(&out).unwrap();
        let Err(e) = CheckpointedOutput::open_or_resume(out.clone(), None, ckpt.clone()) else {
            panic!("a deleted output must not resume");
        };
        let msg = e.to_string();
        assert!(msg.contains("out.jsonl is missing"), "{msg}");
        assert!(msg.contains("records 7 bytes"), "{msg}");
        assert!(msg.contains("restore") && msg.contains("resume"), "{msg}");
        assert!(msg.contains(&format!("delete {}", ckpt.display())), "{msg}");
        assert!(!out.exists(), "the missing output is not recreated empty");
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn disk_full_prints_its_cause_once_with_a_next_step() {
        let e = io_err(Path::new("/data/out.jsonl"))(io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(e.is_disk_full());
        let chained = format!("{:#}", anyhow::Error::new(e).context("writing the results"));
        assert_eq!(
            chained.matches("No space left on device").count(),
            1,
            "{chained}"
        );
        assert!(chained.contains("free space"), "{chained}");
        assert!(chained.contains("run again"), "{chained}");
        let other = io_err(Path::new("x"))(io::Error::from_raw_os_error(libc::EACCES));
        assert!(!other.to_string().contains("disk is full"));
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let d = tmp("atomic");
        let p = d.join("x.json");
        write_json(&p, &Checkpoint::default()).unwrap();
        write_json(
            &p,
            &Checkpoint {
                lines_done: 7,
                ..Default::default()
            },
        )
        .unwrap();
        let c: Checkpoint = read_json(&p).unwrap();
        assert_eq!(c.lines_done, 7);
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "no temp files left");
        fs::remove_dir_all(&d).ok();
    }
}
