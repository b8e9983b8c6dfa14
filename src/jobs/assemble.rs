//! The end of a job: its segments' results concatenated in input order into one output file
//! and one error file, registered as files, and the job marked final, atomically.
//!
//! Any replica may assemble (the one that finished the last segment, or any that sees them all
//! done): each writes its own temp files, then, under the job's lock, the first to get there
//! renames them into place, registers them and saves the final batch object; a later one finds
//! the job final and deletes its copies. No reader ever sees a half-written output.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::durable::{fsync_dir, io_err, unix_now, StoreError};
use super::segment::{Piece, SegmentDir, SegmentProgress};
use super::store::{JobStore, Totals};
use super::types::{random_id, BatchObject, BatchStatus};
use super::JobError;

/// Temp output and error files (None when empty) and what they hold.
struct Assembled {
    output: Option<PathBuf>,
    errors: Option<PathBuf>,
    totals: Totals,
}

/// Copies each segment's pieces, in segment order, into fresh temp files in `job_dir`.
fn assemble(
    job_dir: &Path,
    parts: &[(SegmentDir, SegmentProgress)],
) -> Result<Assembled, StoreError> {
    let nonce = random_id("");
    let mut totals = Totals::default();
    for (sd, p) in parts {
        totals.lines_done += p.lines_done;
        totals.completed += p.completed;
        totals.failed += p.failed;
        totals.device_seconds += p.device_seconds;
        totals.cost_dollars += p.cost_dollars;
        if p.is_done(&sd.seg) {
            totals.segments_done += 1;
        }
    }
    let write = |kind: &str,
                 pick: fn(&SegmentProgress) -> &[Piece]|
     -> Result<Option<PathBuf>, StoreError> {
        let path = job_dir.join(format!(".{kind}-{nonce}.jsonl"));
        let mut out = File::create(&path).map_err(io_err(&path))?;
        let mut bytes = 0u64;
        for (sd, p) in parts {
            for piece in pick(p) {
                let src = sd.dir.join(&piece.file);
                let mut f = File::open(&src).map_err(io_err(&src))?;
                f.seek(SeekFrom::Start(piece.start)).map_err(io_err(&src))?;
                let want = piece.end - piece.start;
                let copied =
                    io::copy(&mut io::Read::take(&mut f, want), &mut out).map_err(io_err(&path))?;
                if copied != want {
                    return Err(StoreError::Corrupt {
                        path: src.display().to_string(),
                        reason: format!(
                            "{copied} bytes at {} where the checkpoint records {want}",
                            piece.start
                        ),
                    });
                }
                bytes += copied;
            }
        }
        out.flush().map_err(io_err(&path))?;
        out.sync_all().map_err(io_err(&path))?;
        if bytes == 0 {
            fs::remove_file(&path).map_err(io_err(&path))?;
            return Ok(None);
        }
        Ok(Some(path))
    };
    let output = write("output", |p| &p.output)?;
    let errors = match write("errors", |p| &p.errors) {
        Ok(e) => e,
        Err(e) => {
            if let Some(o) = &output {
                let _ = fs::remove_file(o);
            }
            return Err(e);
        }
    };
    fsync_dir(job_dir)?;
    Ok(Assembled {
        output,
        errors,
        totals,
    })
}

/// Assembles the job from its segments' latest checkpoints and marks it `want` (Completed, or
/// Cancelled with the lines done so far). Returns the final object if this call finished it,
/// None if another replica had already.
pub fn finish(
    store: &JobStore,
    id: &str,
    want: BatchStatus,
    parts: &[(SegmentDir, SegmentProgress)],
) -> Result<Option<BatchObject>, JobError> {
    let dir = store.batch_dir(id);
    let a = assemble(&dir, parts)?;
    let mut won = false;
    let result = store.update_batch(id, |b| {
        if !b.status.is_active() {
            return Ok(false);
        }
        // A cancel that arrived while the last lines finished still counts as a cancel.
        let status = if b.status == BatchStatus::Cancelling {
            BatchStatus::Cancelled
        } else {
            want
        };
        let now = unix_now();
        for (tmp, name, slot) in [
            (&a.output, "output", &mut b.output_file_id),
            (&a.errors, "errors", &mut b.error_file_id),
        ] {
            let Some(tmp) = tmp else { continue };
            let path = dir.join(format!("{name}.jsonl"));
            fs::rename(tmp, &path).map_err(io_err(&path))?;
            let f = store.register_file(&path, &format!("{id}_{name}.jsonl"), "batch_output")?;
            *slot = Some(f.id);
        }
        fsync_dir(&dir)?;
        b.request_counts.completed = a.totals.completed;
        b.request_counts.failed = a.totals.failed;
        b.set_cost(a.totals.device_seconds, a.totals.cost_dollars);
        b.status = status;
        if b.finalizing_at.is_none() {
            b.finalizing_at = Some(now);
        }
        match status {
            BatchStatus::Cancelled => b.cancelled_at = Some(now),
            _ => b.completed_at = Some(now),
        }
        won = true;
        Ok(true)
    });
    if !won {
        for tmp in [&a.output, &a.errors].into_iter().flatten() {
            let _ = fs::remove_file(tmp);
        }
    }
    let b = result?;
    if !won {
        return Ok(None);
    }
    // The results now live in the assembled files; segment data is no longer needed.
    let _ = fs::remove_dir_all(dir.join("segments"));
    store.forget(id);
    Ok(Some(b))
}
