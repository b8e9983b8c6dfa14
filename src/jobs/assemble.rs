//! The end of a job: its chunks' results concatenated in input order into one output object
//! and one error object, registered as files, and the job marked final.
//!
//! Any replica may assemble (the one that finished the last segment, or any that sees them all
//! done): each streams its own copy under `batches/<job>/results/<nonce>/` and registers it,
//! then one compare-and-swap of the job's state decides whose copy the job points to; a loser
//! deletes its copy and its records. No reader ever sees a half-written or partial output.

use tokio::io::AsyncWriteExt;

use super::blob::Blobs;
use super::durable::{unix_now, StoreError};
use super::segment::{chunk_key, read_body, Plan};
use super::store::{JobStore, Totals};
use super::types::{random_id, BatchObject, BatchStatus};
use super::JobError;

/// Streams every committed chunk's results (`errors`: its error lines) into `key`; returns
/// the bytes written.
async fn write_part(
    blobs: &Blobs,
    id: &str,
    parts: &[(usize, u64)],
    key: &str,
    errors: bool,
) -> Result<u64, StoreError> {
    let mut w = blobs.writer(key);
    let mut bytes = 0u64;
    // Empty: nothing is uploaded, and the job gets no such file.
    let written = async {
        for &(seg, chunks) in parts {
            for k in 0..chunks {
                let (out, err) = read_body(blobs, &chunk_key(id, seg, k)).await?;
                let data = if errors { err } else { out };
                bytes += data.len() as u64;
                w.write_all(&data)
                    .await
                    .map_err(|e| Some(blobs.write_err(key, e)))?;
            }
        }
        if bytes == 0 {
            return Err(None);
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        // Nothing partial is left behind: an unfinished upload is aborted.
        let _ = w.abort().await;
        return e.map_or(Ok(0), Err);
    }
    // Not aborted when this fails (a full disk): a failed completion removes what it staged,
    // and the writer cannot be aborted once its shutdown began (it panics).
    w.shutdown().await.map_err(|e| blobs.write_err(key, e))?;
    Ok(bytes)
}

/// Assembles the job from its committed chunks and marks it `want` (Completed, or Cancelled /
/// Expired with the lines done so far). Returns the final object if this call finished it,
/// None if another replica had already.
pub async fn finish(
    store: &JobStore,
    id: &str,
    want: BatchStatus,
    plan: Option<&Plan>,
) -> Result<Option<BatchObject>, JobError> {
    let blobs = store.blobs();
    let mut totals = Totals::default();
    let mut parts = Vec::new();
    if let Some(plan) = plan {
        let keys = store.scan(id).await?;
        for seg in &plan.segments {
            let k = keys.get(&seg.index);
            let p = store.segment_progress(id, seg, k).await?;
            if p.is_done(seg) {
                totals.segments_done += 1;
            }
            totals.add(&p);
            parts.push((seg.index, p.chunks));
        }
    }
    let copy = format!("batches/{id}/results/{}", random_id(""));
    let mut files = Vec::new();
    let written = async {
        for (name, errors) in [("output", false), ("errors", true)] {
            let key = format!("{copy}/{name}.jsonl");
            if write_part(blobs, id, &parts, &key, errors).await? == 0 {
                continue;
            }
            let (file_id, _) = store.new_upload();
            let f = store
                .record_file(
                    &file_id,
                    &key,
                    &format!("{id}_{name}.jsonl"),
                    "batch_output",
                )
                .await?;
            files.push((name, f.id));
        }
        Ok::<_, StoreError>(())
    }
    .await;
    let discard = |ids: Vec<String>| async move {
        for f in ids {
            let _ = store.delete_file(&f).await;
        }
        let _ = blobs.delete_all(&copy).await;
    };
    if let Err(e) = written {
        discard(files.into_iter().map(|(_, f)| f).collect()).await;
        return Err(e.into());
    }
    let mut won = false;
    let b = store
        .update_batch(id, |b| {
            won = false;
            if !b.status.is_active() {
                return Ok(false);
            }
            // A cancel that arrived while the last lines finished still counts as a cancel.
            let status = if b.status == BatchStatus::Cancelling && want == BatchStatus::Completed {
                BatchStatus::Cancelled
            } else {
                want
            };
            let now = unix_now();
            for (name, file_id) in &files {
                match *name {
                    "output" => b.output_file_id = Some(file_id.clone()),
                    _ => b.error_file_id = Some(file_id.clone()),
                }
            }
            b.request_counts.completed = totals.completed;
            b.request_counts.failed = totals.failed;
            b.set_cost(totals.device_seconds, totals.cost_dollars);
            b.status = status;
            if b.finalizing_at.is_none() {
                b.finalizing_at = Some(now);
            }
            match status {
                BatchStatus::Cancelled => b.cancelled_at = Some(now),
                BatchStatus::Expired => b.expired_at = Some(now),
                _ => b.completed_at = Some(now),
            }
            won = true;
            Ok(true)
        })
        .await;
    let mine: Vec<String> = files.iter().map(|(_, f)| f.clone()).collect();
    let b = match b {
        Ok(b) if won => b,
        Ok(_) => {
            discard(mine).await;
            return Ok(None);
        }
        // Whether the state change landed is unknown: the stored job says whose copy it kept.
        Err(e) => {
            match store.batch(id).await {
                Ok(cur)
                    if [&cur.output_file_id, &cur.error_file_id]
                        .into_iter()
                        .flatten()
                        .any(|f| mine.contains(f)) => {}
                Ok(cur) if !cur.status.is_active() => discard(mine).await,
                // Still open, or unreadable: keep the copy rather than risk the job's.
                _ => {}
            }
            return Err(e);
        }
    };
    // The results now live in the assembled objects; chunks are no longer needed.
    let _ = blobs.delete_all(&format!("batches/{id}/segments")).await;
    store.forget(id);
    Ok(Some(b))
}
