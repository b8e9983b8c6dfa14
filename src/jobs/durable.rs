//! The job store's errors, and durable writes beside `spotinfer batch` outputs. Every
//! metadata write is atomic: write a temp file, fsync it, rename it over the old one, fsync the
//! directory. A crash between any two of those syscalls leaves either the old or the new
//! version, never a torn one. (The server's job store writes through `blob.rs` instead.)

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::checkpoint::Checkpoint;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spotinfer-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
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
