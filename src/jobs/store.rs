//! Durable state under `--state-dir`: uploaded files, batch metadata, outputs, checkpoints and
//! leases. Every metadata write is atomic: write a temp file, fsync it, rename it over the old
//! one, fsync the directory. A crash between any two of those syscalls leaves either the old or
//! the new version, never a torn one.
//!
//! Shared state dirs (a ReadWriteMany volume used by several replicas) rely on two filesystem
//! properties: `rename` replaces atomically and `O_CREAT|O_EXCL` creation is exclusive. Local
//! disks, NFSv4 (EFS, Filestore) and CephFS provide both. Leases also assume replica clocks
//! agree to within a few seconds (NTP), far less than the lease time.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("no such {kind}: {id}")]
    NotFound { kind: &'static str, id: String },
}

pub fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The directory holding `path` ("." for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = parent_dir(path);
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        std::process::id()
    ));
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    fsync_dir(dir)
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

/// Where a batch's outputs stand: everything before `input_offset` is done and its results
/// are the first `output_len` / `error_len` bytes of the output and error files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub input_offset: u64,
    pub lines_done: u64,
    pub output_len: u64,
    pub error_len: u64,
    pub completed: u64,
    pub failed: u64,
}

/// An append-only output pair (results and errors) with its checkpoint.
pub struct CheckpointedOutput {
    pub output: PathBuf,
    /// Failed lines go here when set (the server's OpenAI error file); else into `output`.
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
        let checkpoint = if checkpoint_path.exists() {
            read_json(&checkpoint_path)?
        } else {
            Checkpoint::default()
        };
        let mut files = vec![(&output, checkpoint.output_len)];
        if let Some(e) = &errors {
            files.push((e, checkpoint.error_len));
        }
        for (path, len) in files {
            let f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(path)
                .map_err(io_err(path))?;
            let actual = f.metadata().map_err(io_err(path))?.len();
            if actual < len {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    reason: format!("{actual} bytes but the checkpoint records {len}"),
                });
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
    /// then the checkpoint (atomic write).
    pub fn commit(
        &mut self,
        output_lines: &[u8],
        error_lines: &[u8],
        next_offset: u64,
        lines: u64,
        completed: u64,
        failed: u64,
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
            let mut f = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(io_err(path))?;
            f.write_all(data).map_err(io_err(path))?;
            f.sync_data().map_err(io_err(path))?;
            *len += data.len() as u64;
        }
        next.input_offset = next_offset;
        next.lines_done += lines;
        next.completed += completed;
        next.failed += failed;
        write_json(&self.checkpoint_path, &next)?;
        self.checkpoint = next;
        Ok(next)
    }
}

/// Who runs a job, until when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    pub holder: String,
    pub expires_at: u64,
}

/// Exclusive claims on a job, through a lease file and an O_EXCL lock around its update.
pub struct LeaseFile {
    path: PathBuf,
    lock: PathBuf,
}

/// A lock file older than this belongs to a replica that died inside the critical section.
const STALE_LOCK_SECS: u64 = 30;

impl LeaseFile {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("lease.json"),
            lock: dir.join("lease.lock"),
        }
    }

    pub fn read(&self) -> Option<Lease> {
        read_json(&self.path).ok()
    }

    /// Takes or renews the lease for `holder` if it is free, expired or already ours.
    pub fn acquire(&self, holder: &str, ttl_secs: u64) -> Result<bool, StoreError> {
        self.acquire_or_steal(holder, ttl_secs, |_| false)
    }

    /// Like `acquire`, but also takes a live lease whose holder `is_dead` says has died (a
    /// process on this host that no longer exists), instead of waiting for it to expire.
    pub fn acquire_or_steal(
        &self,
        holder: &str,
        ttl_secs: u64,
        is_dead: impl Fn(&Lease) -> bool,
    ) -> Result<bool, StoreError> {
        let _guard = match self.lock()? {
            Some(g) => g,
            None => return Ok(false),
        };
        let now = unix_now();
        match self.read() {
            Some(l) if l.holder != holder && l.expires_at > now && !is_dead(&l) => Ok(false),
            _ => {
                write_json(
                    &self.path,
                    &Lease {
                        holder: holder.to_string(),
                        expires_at: now + ttl_secs,
                    },
                )?;
                Ok(true)
            }
        }
    }

    /// Gives the lease up (after a checkpoint on SIGTERM) so another replica can resume at once.
    pub fn release(&self, holder: &str) -> Result<(), StoreError> {
        let _guard = self.lock()?;
        if self.read().is_some_and(|l| l.holder == holder) {
            fs::remove_file(&self.path).map_err(io_err(&self.path))?;
            fsync_dir(parent_dir(&self.path))?;
        }
        Ok(())
    }

    pub fn held_by(&self, holder: &str) -> bool {
        self.read()
            .is_some_and(|l| l.holder == holder && l.expires_at > unix_now())
    }

    fn lock(&self) -> Result<Option<LockGuard>, StoreError> {
        for _ in 0..2 {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.lock)
            {
                Ok(_) => return Ok(Some(LockGuard(self.lock.clone()))),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let age = fs::metadata(&self.lock)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    if age < STALE_LOCK_SECS {
                        return Ok(None);
                    }
                    let _ = fs::remove_file(&self.lock);
                }
                Err(e) => return Err(io_err(&self.lock)(e)),
            }
        }
        Ok(None)
    }
}

struct LockGuard(PathBuf);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
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
    fn leases_exclude_other_holders_until_expiry_or_release() {
        let d = tmp("lease");
        let l = LeaseFile::new(&d);
        assert!(l.acquire("a", 60).unwrap());
        assert!(!l.acquire("b", 60).unwrap());
        assert!(l.acquire("a", 60).unwrap(), "renewal");
        assert!(l.held_by("a") && !l.held_by("b"));
        l.release("a").unwrap();
        assert!(l.acquire("b", 0).unwrap());
        // Expired (ttl 0): anyone may take it.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(l.acquire("a", 60).unwrap());
        fs::remove_dir_all(&d).ok();
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
