//! Adopts a state folder written by releases before the object-store layout, so an upgrade
//! loses no accepted job and no file. Those releases kept a job as `batches/<id>/batch.json`
//! (plan `segments.json`, results under `segments/<n>/`) and recorded a file's bytes by the
//! path they had on the writer's filesystem.
//!
//! - A file record's absolute path becomes its key in the store (`FileRecord::key`).
//! - A finished job keeps its object and output files, now indexed as final.
//! - An unfinished job starts over from validation under the new layout: its old partial
//!   results were never delivered, so running every line again is still exactly once. A job
//!   that was being cancelled is cancelled.
//!
//! Old files stay where they are (the new layout does not read them); the job's retention
//! deletes them with the job.

use super::durable::{unix_now, StoreError};
use super::store::{JobSpec, JobStore};
use super::types::{valid_id, BatchObject, BatchStatus, RequestCounts};

/// Brings every old-layout job under the new layout; returns how many it adopted. A job
/// another replica adopts at the same moment is adopted once (every write is create-only).
pub async fn adopt_jobs(
    store: &JobStore,
    segment_lines: u64,
    chunk_lines: u64,
) -> Result<usize, StoreError> {
    let mut adopted = 0;
    for dir in store.blobs().list_dirs("batches").await? {
        let id = dir.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        if !valid_id(id, "batch_") || store.has_state(id).await? {
            continue;
        }
        let Some(bytes) = store
            .blobs()
            .get(&format!("batches/{id}/batch.json"))
            .await?
        else {
            continue;
        };
        let old: BatchObject = match serde_json::from_slice(&bytes) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(batch = %id, error = %e, "an old-layout batch job is unreadable; left as it is");
                continue;
            }
        };
        let input = match store.file_key(&old.input_file_id).await {
            Ok(k) => k,
            Err(e) if old.status.is_active() => {
                tracing::warn!(batch = %id, error = %e, "an old-layout batch job's input is gone; it will fail");
                format!("files/{}.jsonl", old.input_file_id)
            }
            Err(_) => String::new(),
        };
        let spec = JobSpec {
            input,
            segment_lines: segment_lines.max(1),
            chunk_lines: chunk_lines.max(1),
        };
        let batch = restart(old, unix_now());
        tracing::info!(batch = %id, status = batch.status.as_str(), "adopted a batch job from the old state layout");
        store.adopt(&batch, &spec).await?;
        adopted += 1;
    }
    Ok(adopted)
}

/// What an old job becomes: a finished one as it was; an unfinished one back to validation,
/// or cancelled if a cancel was under way.
fn restart(mut b: BatchObject, now: u64) -> BatchObject {
    match b.status {
        s if !s.is_active() => {}
        BatchStatus::Cancelling => {
            b.status = BatchStatus::Cancelled;
            b.cancelled_at = Some(now);
            b.errors = Some(serde_json::json!({"object": "list", "data": [{
                "code": "cancelled_during_upgrade",
                "message": "the job was being cancelled while the server was upgraded; its partial results were not kept",
            }]}));
        }
        _ => {
            b.status = BatchStatus::Validating;
            b.request_counts = RequestCounts::default();
            b.in_progress_at = None;
            b.finalizing_at = None;
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::types::{FileObject, FileRecord};

    fn put_json(store: &JobStore, key: &str, v: &impl serde::Serialize) {
        let b = serde_json::to_vec(v).unwrap();
        store.blobs().run(store.blobs().put(key, b)).unwrap();
    }

    #[test]
    fn an_upgrade_keeps_finished_jobs_and_restarts_unfinished_ones() {
        let dir = std::env::temp_dir().join(format!("spotinfer-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.to_string_lossy().to_string();
        let store = JobStore::open(&root).unwrap();
        let file = |id: &str, purpose: &str, path: String| {
            let rec = FileRecord {
                file: FileObject {
                    id: id.into(),
                    object: "file".into(),
                    bytes: 4,
                    created_at: 1,
                    filename: "in.jsonl".into(),
                    purpose: purpose.into(),
                    status: "processed".into(),
                },
                data: path,
            };
            put_json(&store, &format!("files/{id}.json"), &rec);
        };
        // Written by the old release, with the paths it recorded.
        file("file-in", "batch", format!("{root}/files/file-in.jsonl"));
        file(
            "file-out",
            "batch_output",
            format!("{root}/batches/batch_done/output.jsonl"),
        );
        store
            .blobs()
            .run(store.blobs().put("files/file-in.jsonl", b"{}\n".to_vec()))
            .unwrap();
        store
            .blobs()
            .run(
                store
                    .blobs()
                    .put("batches/batch_done/output.jsonl", b"out\n".to_vec()),
            )
            .unwrap();
        let old = |id: &str, status: BatchStatus| {
            let mut b: BatchObject = serde_json::from_value(serde_json::json!({
                "id": id, "object": "batch", "endpoint": "/v1/embeddings", "errors": null,
                "input_file_id": "file-in", "completion_window": "24h", "status": "validating",
                "output_file_id": null, "error_file_id": null, "created_at": 1,
                "in_progress_at": null, "expires_at": null, "finalizing_at": null,
                "completed_at": null, "failed_at": null, "expired_at": null,
                "cancelling_at": null, "cancelled_at": null,
                "request_counts": {"total": 1, "completed": 0, "failed": 0}, "metadata": null
            }))
            .unwrap();
            b.status = status;
            if status == BatchStatus::Completed {
                b.output_file_id = Some("file-out".into());
                b.request_counts.completed = 1;
            }
            put_json(&store, &format!("batches/{id}/batch.json"), &b);
        };
        old("batch_done", BatchStatus::Completed);
        old("batch_running", BatchStatus::InProgress);
        old("batch_stopping", BatchStatus::Cancelling);

        let blobs = store.blobs();
        assert_eq!(blobs.run(adopt_jobs(&store, 10, 5)).unwrap(), 3);
        assert_eq!(
            blobs.run(adopt_jobs(&store, 10, 5)).unwrap(),
            0,
            "adopted once"
        );

        let done = blobs.run(store.batch("batch_done")).unwrap();
        assert_eq!(done.status, BatchStatus::Completed);
        let out = blobs.run(store.file_key("file-out")).unwrap();
        assert_eq!(out, "batches/batch_done/output.jsonl");
        assert_eq!(
            blobs
                .run(store.blobs().get(&out))
                .unwrap()
                .unwrap()
                .as_ref(),
            b"out\n"
        );

        let running = blobs.run(store.batch("batch_running")).unwrap();
        assert_eq!(running.status, BatchStatus::Validating);
        assert_eq!(running.request_counts.completed, 0);
        assert_eq!(
            blobs.run(store.spec("batch_running")).unwrap().input,
            "files/file-in.jsonl"
        );
        assert_eq!(
            blobs.run(store.batch("batch_stopping")).unwrap().status,
            BatchStatus::Cancelled
        );

        let active = blobs.run(store.active_ids()).unwrap();
        assert_eq!(active, vec!["batch_running".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
