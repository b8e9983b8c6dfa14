//! The output of `spotinfer batch` and its checkpoint `<output>.ckpt`: where the output stands
//! (`Checkpoint`), appended to and checkpointed by one writer.

use std::fs::OpenOptions;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::drive::{ChunkResult, Commit, Position, Sink};
use super::durable::{append_durably, io_err, read_json, write_json, StoreError};

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
    use std::fs;
    use std::io::Write;

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
}
