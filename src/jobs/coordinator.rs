//! The per-job work that is not lines, done by every replica (model replicas and intake-only
//! ones alike) on each tick: validate new jobs (cut their input into segments), finish jobs
//! whose segments are all done (or that were cancelled and whose segments all stopped), and
//! publish the fleet backlog and job statuses from the shared store, so every replica reports
//! the same numbers.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::assemble;
use super::durable::{unix_now, StoreError};
use super::store::JobStore;
use super::types::{BatchObject, BatchStatus};
use super::JobError;
use crate::metrics::Metrics;

/// What a tick saw and did.
#[derive(Debug, Default)]
pub struct Tick {
    /// Pending lines over all jobs that can still run.
    pub backlog: u64,
    /// Jobs asked to stop (cancelled or past their window): every segment running one stops.
    pub cancelled: HashSet<String>,
    /// Jobs that became runnable (validated) in this tick.
    pub validated: usize,
    /// Jobs this replica finished in this tick.
    pub finished: Vec<BatchObject>,
}

pub struct Coordinator<'a> {
    pub store: &'a JobStore,
    pub me: &'a str,
    pub lease_secs: u64,
    pub metrics: &'a Metrics,
    /// Ended jobs are deleted this long after they ended (None: kept).
    pub retention: Option<std::time::Duration>,
}

enum Action {
    Validate(Box<BatchObject>),
    Finish(String, BatchStatus),
    Fail(String, String),
}

impl Coordinator<'_> {
    /// One pass over the jobs that are not final: publishes the gauges first, then does what
    /// is due. One job's unreadable state is logged and counted, never a stop for the others.
    pub async fn tick(&self) -> Result<Tick, StoreError> {
        let mut tick = Tick::default();
        let mut statuses: HashMap<&'static str, i64> = HashMap::new();
        let mut actions = Vec::new();
        let now = unix_now();
        for entry in self.store.list_active().await? {
            let b = match entry {
                Ok(b) => b,
                Err((id, e)) => {
                    tracing::error!(batch = %id, error = %e, "cannot read a batch job's state; retrying at the next tick");
                    // It may still run: the fleet must not scale to zero under it.
                    tick.backlog += 1;
                    continue;
                }
            };
            *statuses.entry(b.status.as_str()).or_default() += 1;
            let id = b.id.clone();
            match self.plan_step(b, now, &mut tick).await {
                Ok(Some(a)) => actions.push(a),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(batch = %id, error = %e, "batch job step failed; retrying at the next tick");
                    tick.backlog += 1;
                }
            }
        }
        self.publish_statuses(&statuses).await;
        self.metrics.job_backlog_lines.set(tick.backlog as i64);
        self.metrics.job_queue_depth.set(tick.backlog as i64);
        let changes = !actions.is_empty();
        for a in actions {
            let r = match a {
                Action::Validate(b) => self
                    .validate(&b)
                    .await
                    .map(|ok| tick.validated += usize::from(ok)),
                Action::Finish(id, want) => self.finish(&id, want, &mut tick).await,
                Action::Fail(id, reason) => self.fail(&id, "input_unavailable", &reason).await,
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "batch job step failed; retrying at the next tick");
            }
        }
        if let Some(keep) = self.retention {
            match self.store.collect_garbage(keep).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "deleted batch jobs past their retention"),
                Err(e) => {
                    tracing::warn!(error = %e, "deleting old batch jobs failed; retrying at the next tick")
                }
            }
        }
        if changes {
            // A job this tick finished shows as finished at once, not a tick later.
            let mut statuses: HashMap<&'static str, i64> = HashMap::new();
            for b in self.store.list_active().await?.into_iter().flatten() {
                *statuses.entry(b.status.as_str()).or_default() += 1;
            }
            self.publish_statuses(&statuses).await;
        }
        self.metrics.job_store_scans_total.inc();
        Ok(tick)
    }

    /// What one job needs now, and its share of the backlog.
    async fn plan_step(
        &self,
        b: BatchObject,
        now: u64,
        tick: &mut Tick,
    ) -> Result<Option<Action>, StoreError> {
        let expired = b.expires_at.is_some_and(|t| t <= now);
        match b.status {
            BatchStatus::Validating if expired => {
                return Ok(Some(Action::Finish(b.id, BatchStatus::Expired)))
            }
            BatchStatus::Validating => return Ok(Some(Action::Validate(Box::new(b)))),
            BatchStatus::Cancelling => {
                tick.cancelled.insert(b.id.clone());
                if !self.any_segment_running(&b.id).await? {
                    return Ok(Some(Action::Finish(b.id, BatchStatus::Cancelled)));
                }
                return Ok(None);
            }
            BatchStatus::InProgress | BatchStatus::Finalizing => {}
            _ => return Ok(None),
        }
        let Some(plan) = self.store.plan(&b.id).await? else {
            return Ok(Some(Action::Validate(Box::new(b))));
        };
        if expired {
            // As OpenAI does: the lines done so far are kept, the rest are not run.
            tick.cancelled.insert(b.id.clone());
            if !self.any_segment_running(&b.id).await? {
                return Ok(Some(Action::Finish(b.id, BatchStatus::Expired)));
            }
            return Ok(None);
        }
        let t = self.store.job_totals(&b.id, &plan).await?;
        let left = plan.total.saturating_sub(t.lines_done);
        if t.segments_done == plan.segments.len() {
            return Ok(Some(Action::Finish(b.id, BatchStatus::Completed)));
        }
        let spec = self.store.spec(&b.id).await?;
        if self.store.blobs().size(&spec.input).await?.is_none() {
            let reason = format!(
                "the input {} was deleted while the job ran; {} of {} lines were done",
                self.store.blobs().describe(&spec.input),
                t.lines_done,
                plan.total
            );
            return Ok(Some(Action::Fail(b.id, reason)));
        }
        tick.backlog += left;
        Ok(None)
    }

    /// Active jobs by status from this tick, final ones from the store's index.
    async fn publish_statuses(&self, statuses: &HashMap<&'static str, i64>) {
        let finals = match self.store.final_counts().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count finished batch jobs");
                return;
            }
        };
        for s in crate::metrics::JOB_STATUSES {
            let n = statuses.get(s).copied().unwrap_or(0) + finals.get(*s).copied().unwrap_or(0);
            self.metrics.jobs.with_label_values(&[s]).set(n);
        }
    }

    /// A live replica holds a lease on one of the job's segments (this one included: its
    /// slots release theirs once they stop).
    async fn any_segment_running(&self, id: &str) -> Result<bool, StoreError> {
        for (seg, keys) in self.store.scan(id).await? {
            let Some(epoch) = keys.lease_epoch else {
                continue;
            };
            let lease = self.store.segment_lease(id, seg).read(epoch).await?;
            if lease.is_some_and(|l| l.live()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Fails a job that cannot go on, keeping the reason in its errors.
    async fn fail(&self, id: &str, code: &str, reason: &str) -> Result<(), JobError> {
        let b = self
            .store
            .update_batch(id, |cur| {
                if !cur.status.is_active() {
                    return Ok(false);
                }
                cur.status = BatchStatus::Failed;
                cur.failed_at = Some(unix_now());
                cur.errors = Some(json!({"object": "list", "data": [
                    {"code": code, "message": reason, "param": "input_file_id", "line": null}
                ]}));
                Ok(true)
            })
            .await?;
        if b.status == BatchStatus::Failed {
            tracing::warn!(batch = %id, reason, "batch job failed");
            self.store.forget(id);
        }
        Ok(())
    }

    /// Cuts the input into segments and starts the job (or fails it when the input is gone).
    async fn validate(&self, b: &BatchObject) -> Result<bool, JobError> {
        let lease = self.store.lease(&b.id);
        let Some(epoch) = lease.claim(self.me, self.lease_secs).await? else {
            return Ok(false);
        };
        let planned = match self.store.make_plan(&b.id).await {
            Ok(plan) => Ok(plan),
            // An input that is gone or unreadable cannot become readable: fail the job.
            Err(e @ (StoreError::NotFound { .. } | StoreError::Corrupt { .. })) => Err(e),
            // Transient store trouble: try again at the next tick.
            Err(e) => {
                lease.release(self.me, epoch).await?;
                return Err(e.into());
            }
        };
        let updated = match &planned {
            Ok(plan) => {
                self.store
                    .update_batch(&b.id, |cur| {
                        if !matches!(
                            cur.status,
                            BatchStatus::Validating | BatchStatus::InProgress
                        ) {
                            return Ok(false);
                        }
                        cur.request_counts.total = plan.total;
                        if cur.status == BatchStatus::Validating {
                            cur.status = BatchStatus::InProgress;
                            cur.in_progress_at = Some(unix_now());
                        }
                        Ok(true)
                    })
                    .await
            }
            Err(e) => self
                .fail(&b.id, "invalid_input_file", &e.to_string())
                .await
                .map(|()| b.clone()),
        };
        lease.release(self.me, epoch).await?;
        let updated = updated?;
        if let Ok(plan) = &planned {
            tracing::info!(
                batch = %b.id,
                lines = plan.total,
                segments = plan.segments.len(),
                status = updated.status.as_str(),
                "batch job validated"
            );
        }
        Ok(planned.is_ok())
    }

    /// Assembles and finalises the job; another replica doing it at the same time is safe.
    async fn finish(&self, id: &str, want: BatchStatus, tick: &mut Tick) -> Result<(), JobError> {
        let lease = self.store.lease(id);
        let Some(epoch) = lease.claim(self.me, self.lease_secs).await? else {
            return Ok(());
        };
        let result = async {
            if want == BatchStatus::Completed {
                self.store
                    .update_batch(id, |b| {
                        if b.status != BatchStatus::InProgress {
                            return Ok(false);
                        }
                        b.status = BatchStatus::Finalizing;
                        b.finalizing_at = Some(unix_now());
                        Ok(true)
                    })
                    .await?;
            }
            let plan = self.store.plan(id).await?;
            assemble::finish(self.store, id, want, plan.as_deref()).await
        }
        .await;
        lease.release(self.me, epoch).await?;
        if let Some(b) = result? {
            tracing::info!(
                batch = %id,
                status = b.status.as_str(),
                completed = b.request_counts.completed,
                failed = b.request_counts.failed,
                "batch job finished"
            );
            tick.finished.push(b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::drive::{ChunkResult, Sink};
    use crate::jobs::segment::{Segment, SegmentProgress, SegmentWriter};

    fn store(name: &str) -> JobStore {
        let root =
            std::env::temp_dir().join(format!("spotinfer-coord-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        JobStore::open(root.to_str().unwrap()).unwrap()
    }

    fn job(store: &JobStore, lines: usize) -> BatchObject {
        let text: String = (0..lines).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        store.blobs().run(async {
            let (id, key) = store.new_upload();
            store.blobs().put(&key, text.into_bytes()).await.unwrap();
            let f = store
                .record_file(&id, &key, "in.jsonl", "batch")
                .await
                .unwrap();
            store
                .create_batch(&f.id, "/v1/embeddings", "24h", None, 2, 2)
                .await
                .unwrap()
        })
    }

    fn tick(store: &JobStore, me: &str, metrics: &Metrics) -> Tick {
        let c = Coordinator {
            store,
            me,
            lease_secs: 30,
            metrics,
            retention: None,
        };
        store.blobs().run(c.tick()).unwrap()
    }

    fn batch(store: &JobStore, id: &str) -> BatchObject {
        store.blobs().run(store.batch(id)).unwrap()
    }

    fn plan(store: &JobStore, id: &str) -> std::sync::Arc<crate::jobs::segment::Plan> {
        store.blobs().run(store.plan(id)).unwrap().unwrap()
    }

    /// Runs a segment to its end (one chunk) with one output line per input line, "<line>".
    fn run_segment(store: &JobStore, id: &str, seg: Segment) {
        let mut w = SegmentWriter::new(
            store.blobs().clone(),
            id,
            seg,
            "w",
            SegmentProgress::start(&seg),
            Default::default(),
            36.0,
        );
        let lines: String = (seg.first_line..seg.first_line + seg.lines)
            .map(|i| format!("{i}\n"))
            .collect();
        w.commit(&ChunkResult {
            output: lines.into_bytes(),
            errors: b"e\n".to_vec(),
            next_offset: seg.end,
            lines: seg.lines,
            completed: seg.lines - 1,
            failed: 1,
            device_seconds: 1.0,
        })
        .unwrap();
    }

    fn content(store: &JobStore, file: &str) -> String {
        store.blobs().run(async {
            let key = store.file_key(file).await.unwrap();
            let b = store.blobs().get(&key).await.unwrap().unwrap();
            String::from_utf8(b.to_vec()).unwrap()
        })
    }

    #[test]
    fn validates_then_assembles_in_input_order_exactly_once() {
        let store = store("finish");
        let metrics = Metrics::new();
        let b = job(&store, 5);
        let t = tick(&store, "a/1", &metrics);
        assert_eq!(t.validated, 1);
        let b = batch(&store, &b.id);
        assert_eq!(b.status, BatchStatus::InProgress);
        assert_eq!(b.request_counts.total, 5);
        let plan = plan(&store, &b.id);
        assert_eq!(plan.segments.len(), 3);
        assert_eq!(
            metrics.job_backlog_lines.get(),
            0,
            "published before it was validated"
        );
        tick(&store, "a/1", &metrics);
        assert_eq!(metrics.job_backlog_lines.get(), 5);
        // Segments finish out of order, on different replicas.
        run_segment(&store, &b.id, plan.segments[2]);
        run_segment(&store, &b.id, plan.segments[0]);
        tick(&store, "a/1", &metrics);
        assert_eq!(metrics.job_backlog_lines.get(), 2);
        assert_eq!(batch(&store, &b.id).request_counts.completed, 1);
        run_segment(&store, &b.id, plan.segments[1]);
        let t = tick(&store, "b/2", &metrics);
        assert_eq!(t.finished.len(), 1);
        // Another replica seeing it finished does nothing.
        assert!(tick(&store, "a/1", &metrics).finished.is_empty());
        let done = batch(&store, &b.id);
        assert_eq!(done.status, BatchStatus::Completed);
        assert_eq!(done.request_counts.completed, 2);
        assert_eq!(done.request_counts.failed, 3);
        assert_eq!(
            content(&store, done.output_file_id.as_ref().unwrap()),
            "0\n1\n2\n3\n4\n"
        );
        assert_eq!(
            content(&store, done.error_file_id.as_ref().unwrap()),
            "e\ne\ne\n"
        );
        let m = done.metadata.unwrap();
        assert_eq!(m["spotinfer_device_seconds"], "3.000");
        assert_eq!(m["spotinfer_cost_usd"], "0.030000");
        assert_eq!(metrics.job_backlog_lines.get(), 0);
        assert_eq!(metrics.jobs.with_label_values(&["completed"]).get(), 1);
        let left = store
            .blobs()
            .run(store.blobs().list(&format!("batches/{}/segments", b.id)))
            .unwrap();
        assert!(left.is_empty(), "chunks are deleted once assembled");
        // Past its retention the job goes, with its results and their records.
        assert_eq!(
            store
                .blobs()
                .run(store.collect_garbage(std::time::Duration::from_secs(3600)))
                .unwrap(),
            0
        );
        let outputs = store
            .blobs()
            .run(store.list_files())
            .unwrap()
            .into_iter()
            .filter(|f| f.purpose == "batch_output")
            .count();
        assert_eq!(outputs, 2, "registered once");
        assert_eq!(
            store
                .blobs()
                .run(store.blobs().list("final"))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .blobs()
                .run(store.collect_garbage(std::time::Duration::ZERO))
                .unwrap(),
            1
        );
        assert!(store.blobs().run(store.batch(&b.id)).is_err());
        assert!(store
            .blobs()
            .run(store.list_files())
            .unwrap()
            .iter()
            .all(|f| f.purpose != "batch_output"));
        assert!(store
            .blobs()
            .run(store.blobs().list("final"))
            .unwrap()
            .is_empty());
        std::fs::remove_dir_all(store.blobs().location()).ok();
    }

    #[test]
    fn a_failed_assembly_write_leaves_nothing_and_the_next_tick_completes() {
        let store = store("assembly-fails");
        let metrics = Metrics::new();
        let b = job(&store, 4);
        tick(&store, "a/1", &metrics);
        for seg in plan(&store, &b.id).segments.iter() {
            run_segment(&store, &b.id, *seg);
        }
        // A file where the copies' folder goes: every write of a copy fails, as on a full disk.
        let blocker = format!("batches/{}/results", b.id);
        store
            .blobs()
            .run(store.blobs().put(&blocker, b"x".to_vec()))
            .unwrap();
        let t = tick(&store, "a/1", &metrics);
        assert!(t.finished.is_empty());
        assert_eq!(batch(&store, &b.id).status, BatchStatus::Finalizing);
        let keys: Vec<String> = store
            .blobs()
            .run(store.blobs().list(""))
            .unwrap()
            .into_iter()
            .map(|l| l.key)
            .collect();
        assert!(
            keys.iter().all(|k| !k.contains('#')) && keys.contains(&blocker),
            "no staged or partial copy is left: {keys:?}"
        );
        assert!(store
            .blobs()
            .run(store.list_files())
            .unwrap()
            .iter()
            .all(|f| f.purpose != "batch_output"));
        // Room again: the next tick assembles it.
        store.blobs().run(store.blobs().delete(&blocker)).unwrap();
        assert_eq!(tick(&store, "a/1", &metrics).finished.len(), 1);
        let done = batch(&store, &b.id);
        assert_eq!(done.status, BatchStatus::Completed);
        assert_eq!(
            content(&store, done.output_file_id.as_ref().unwrap()),
            "0\n1\n2\n3\n"
        );
        std::fs::remove_dir_all(store.blobs().location()).ok();
    }

    #[test]
    fn a_cancel_waits_for_running_segments_then_keeps_the_lines_done() {
        let store = store("cancel");
        let metrics = Metrics::new();
        let b = job(&store, 6);
        tick(&store, "a/1", &metrics);
        let plan = plan(&store, &b.id);
        run_segment(&store, &b.id, plan.segments[1]);
        // Another (live) replica runs segment 2.
        let lease = store.segment_lease(&b.id, 2);
        let epoch = store
            .blobs()
            .run(lease.claim("otherhost/1", 30))
            .unwrap()
            .unwrap();
        store.blobs().run(store.cancel(&b.id)).unwrap();
        let t = tick(&store, "a/1", &metrics);
        assert!(t.cancelled.contains(&b.id));
        assert_eq!(batch(&store, &b.id).status, BatchStatus::Cancelling);
        store
            .blobs()
            .run(lease.release("otherhost/1", epoch))
            .unwrap();
        tick(&store, "a/1", &metrics);
        let done = batch(&store, &b.id);
        assert_eq!(done.status, BatchStatus::Cancelled);
        assert_eq!(done.request_counts.completed, 1);
        assert_eq!(
            content(&store, done.output_file_id.as_ref().unwrap()),
            "2\n3\n"
        );
        std::fs::remove_dir_all(store.blobs().location()).ok();
    }

    #[test]
    fn a_deleted_input_fails_its_job_and_leaves_no_backlog_while_others_run() {
        let store = store("deleted");
        let metrics = Metrics::new();
        let gone = job(&store, 4);
        let kept = job(&store, 4);
        tick(&store, "a/1", &metrics);
        assert_eq!(metrics.job_backlog_lines.get(), 0);
        tick(&store, "a/1", &metrics);
        assert_eq!(metrics.job_backlog_lines.get(), 8);
        let input = store.blobs().run(store.spec(&gone.id)).unwrap().input;
        store.blobs().run(store.blobs().delete(&input)).unwrap();
        // Garbage in a third job's state: logged, the others go on, the gauge stays honest.
        store
            .blobs()
            .run(
                store
                    .blobs()
                    .put("batches/batch_junk/state/0000000001.json", b"{".to_vec()),
            )
            .unwrap();
        store
            .blobs()
            .run(store.blobs().put("active/batch_junk", Vec::new()))
            .unwrap();
        tick(&store, "a/1", &metrics);
        let failed = batch(&store, &gone.id);
        assert_eq!(failed.status, BatchStatus::Failed);
        let reason = failed.errors.unwrap().to_string();
        assert!(reason.contains("deleted"), "{reason}");
        tick(&store, "a/1", &metrics);
        assert_eq!(
            metrics.job_backlog_lines.get(),
            4 + 1,
            "the kept job's lines, and one for the unreadable job"
        );
        assert_eq!(batch(&store, &kept.id).status, BatchStatus::InProgress);
        std::fs::remove_dir_all(store.blobs().location()).ok();
    }

    #[test]
    fn a_job_past_its_window_expires_with_the_lines_done() {
        let store = store("expire");
        let metrics = Metrics::new();
        let b = job(&store, 4);
        tick(&store, "a/1", &metrics);
        let plan = plan(&store, &b.id);
        run_segment(&store, &b.id, plan.segments[0]);
        store
            .blobs()
            .run(store.update_batch(&b.id, |b| {
                b.expires_at = Some(1);
                Ok(true)
            }))
            .unwrap();
        let t = tick(&store, "a/1", &metrics);
        assert_eq!(t.finished.len(), 1);
        let done = batch(&store, &b.id);
        assert_eq!(done.status, BatchStatus::Expired);
        assert!(done.expired_at.is_some());
        assert_eq!(
            content(&store, done.output_file_id.as_ref().unwrap()),
            "0\n1\n"
        );
        std::fs::remove_dir_all(store.blobs().location()).ok();
    }
}
