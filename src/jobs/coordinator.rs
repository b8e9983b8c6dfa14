//! The per-job work that is not lines, done by every replica (model replicas and intake-only
//! ones alike) on each tick: validate new jobs (cut their input into segments), finish jobs
//! whose segments are all done (or that were cancelled and whose segments all stopped), and
//! publish the fleet backlog and job statuses from the shared store, so every replica reports
//! the same numbers.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::assemble;
use super::durable::{unix_now, StoreError};
use super::lease::holder_is_dead;
use super::store::JobStore;
use super::types::{BatchObject, BatchStatus};
use super::JobError;
use crate::metrics::Metrics;

/// What a tick saw and did.
#[derive(Debug, Default)]
pub struct Tick {
    /// Pending lines over all jobs.
    pub backlog: u64,
    /// Jobs asked to stop: every segment running one of them stops.
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
    pub segment_lines: u64,
    pub metrics: &'a Metrics,
}

enum Action {
    Validate(Box<BatchObject>),
    Complete(String),
    CancelNow(String),
}

impl Coordinator<'_> {
    /// One pass over the store: publishes the gauges first, then does what is due.
    pub fn tick(&self) -> Result<Tick, StoreError> {
        let mut tick = Tick::default();
        let mut statuses: HashMap<&'static str, i64> = HashMap::new();
        let mut actions = Vec::new();
        for b in self.store.list_stored()? {
            *statuses.entry(b.status.as_str()).or_default() += 1;
            match b.status {
                BatchStatus::Validating => actions.push(Action::Validate(Box::new(b))),
                BatchStatus::InProgress | BatchStatus::Finalizing => {
                    let Some(plan) = self.store.plan(&b.id)? else {
                        // Validated by an older version (one job-wide checkpoint): plan it now.
                        actions.push(Action::Validate(Box::new(b)));
                        continue;
                    };
                    let t = self.store.job_totals(&b.id, &plan)?;
                    tick.backlog += plan.total.saturating_sub(t.lines_done);
                    if t.segments_done == plan.segments.len() {
                        actions.push(Action::Complete(b.id));
                    }
                }
                BatchStatus::Cancelling => {
                    tick.cancelled.insert(b.id.clone());
                    if !self.any_segment_running(&b.id)? {
                        actions.push(Action::CancelNow(b.id));
                    }
                }
                // Finished (here or elsewhere): nothing about it needs caching any more.
                _ => self.store.forget(&b.id),
            }
        }
        self.publish_statuses(&statuses);
        self.metrics.job_backlog_lines.set(tick.backlog as i64);
        self.metrics.job_queue_depth.set(tick.backlog as i64);
        let changes = !actions.is_empty();
        for a in actions {
            let r = match a {
                Action::Validate(b) => self
                    .validate(&b)
                    .map(|ok| tick.validated += usize::from(ok)),
                Action::Complete(id) => self.finish(&id, BatchStatus::Completed, &mut tick),
                Action::CancelNow(id) => self.finish(&id, BatchStatus::Cancelled, &mut tick),
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "batch job step failed; retrying at the next tick");
            }
        }
        if changes {
            // A job this tick finished shows as finished at once, not a tick later.
            let mut statuses: HashMap<&'static str, i64> = HashMap::new();
            for b in self.store.list_stored()? {
                *statuses.entry(b.status.as_str()).or_default() += 1;
            }
            self.publish_statuses(&statuses);
        }
        Ok(tick)
    }

    fn publish_statuses(&self, statuses: &HashMap<&'static str, i64>) {
        for s in crate::metrics::JOB_STATUSES {
            let n = statuses.get(s).copied().unwrap_or(0);
            self.metrics.jobs.with_label_values(&[s]).set(n);
        }
    }

    /// A live replica holds a lease on one of the job's segments (this one included: its
    /// slots release theirs once they stop).
    fn any_segment_running(&self, id: &str) -> Result<bool, StoreError> {
        let Some(plan) = self.store.plan(id)? else {
            return Ok(false);
        };
        let now = unix_now();
        Ok(plan.segments.iter().any(|seg| {
            self.store
                .segment_dir(id, *seg)
                .lease()
                .read()
                .is_some_and(|l| l.expires_at > now && !holder_is_dead(&l, self.me))
        }))
    }

    /// Cuts the input into segments and starts the job (or fails it when the input is gone).
    fn validate(&self, b: &BatchObject) -> Result<bool, JobError> {
        let lease = self.store.lease(&b.id);
        if !lease.claim(self.me, self.lease_secs) {
            return Ok(false);
        }
        let planned = self.store.make_plan(b, self.segment_lines);
        let updated = self.store.update_batch(&b.id, |cur| {
            if !matches!(cur.status, BatchStatus::Validating | BatchStatus::InProgress) {
                return Ok(false);
            }
            match &planned {
                Ok(plan) => {
                    cur.request_counts.total = plan.total;
                    if cur.status == BatchStatus::Validating {
                        cur.status = BatchStatus::InProgress;
                        cur.in_progress_at = Some(unix_now());
                    }
                }
                Err(e) => {
                    cur.status = BatchStatus::Failed;
                    cur.failed_at = Some(unix_now());
                    cur.errors = Some(json!({"object": "list", "data": [
                        {"code": "invalid_input_file", "message": e.to_string(), "param": "input_file_id", "line": null}
                    ]}));
                }
            }
            Ok(true)
        });
        lease.release(self.me)?;
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
    fn finish(&self, id: &str, want: BatchStatus, tick: &mut Tick) -> Result<(), JobError> {
        if !self.store.lease(id).claim(self.me, self.lease_secs) {
            return Ok(());
        }
        self.store.update_batch(id, |b| {
            if b.status != BatchStatus::InProgress {
                return Ok(false);
            }
            b.status = BatchStatus::Finalizing;
            b.finalizing_at = Some(unix_now());
            Ok(true)
        })?;
        let parts = match self.store.plan(id)? {
            Some(plan) => plan
                .segments
                .iter()
                .map(|seg| {
                    Ok((
                        self.store.segment_dir(id, *seg),
                        self.store.segment_progress(id, *seg)?,
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?,
            None => Vec::new(),
        };
        if let Some(b) = assemble::finish(self.store, id, want, &parts)? {
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
    use crate::jobs::segment::SegmentWriter;

    fn store(name: &str) -> JobStore {
        let root =
            std::env::temp_dir().join(format!("spotinfer-coord-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        JobStore::open(&root).unwrap()
    }

    fn job(store: &JobStore, lines: usize) -> BatchObject {
        let tmp = store.upload_temp();
        let text: String = (0..lines).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        std::fs::write(&tmp, text).unwrap();
        let f = store.add_file(&tmp, "in.jsonl", "batch").unwrap();
        store
            .create_batch(&f.id, "/v1/embeddings", "24h", None)
            .unwrap()
    }

    fn coordinator<'a>(store: &'a JobStore, me: &'a str, metrics: &'a Metrics) -> Coordinator<'a> {
        Coordinator {
            store,
            me,
            lease_secs: 30,
            segment_lines: 2,
            metrics,
        }
    }

    /// Runs a segment to its end with one output line per input line, "<line>".
    fn run_segment(store: &JobStore, id: &str, seg: crate::jobs::segment::Segment) {
        let mut w = SegmentWriter::open(store.segment_dir(id, seg), None, 36.0).unwrap();
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

    #[test]
    fn validates_then_assembles_in_input_order_exactly_once() {
        let store = store("finish");
        let metrics = Metrics::new();
        let b = job(&store, 5);
        let t = coordinator(&store, "a/1", &metrics).tick().unwrap();
        assert_eq!(t.validated, 1);
        let b = store.batch(&b.id).unwrap();
        assert_eq!(b.status, BatchStatus::InProgress);
        assert_eq!(b.request_counts.total, 5);
        let plan = store.plan(&b.id).unwrap().unwrap();
        assert_eq!(plan.segments.len(), 3);
        assert_eq!(
            metrics.job_backlog_lines.get(),
            0,
            "published before it was validated"
        );
        coordinator(&store, "a/1", &metrics).tick().unwrap();
        assert_eq!(metrics.job_backlog_lines.get(), 5);
        // Segments finish out of order, on different replicas.
        run_segment(&store, &b.id, plan.segments[2]);
        run_segment(&store, &b.id, plan.segments[0]);
        coordinator(&store, "a/1", &metrics).tick().unwrap();
        assert_eq!(metrics.job_backlog_lines.get(), 2);
        assert_eq!(store.batch(&b.id).unwrap().request_counts.completed, 1);
        run_segment(&store, &b.id, plan.segments[1]);
        let t = coordinator(&store, "b/2", &metrics).tick().unwrap();
        assert_eq!(t.finished.len(), 1);
        // Another replica seeing it finished does nothing.
        assert!(coordinator(&store, "a/1", &metrics)
            .tick()
            .unwrap()
            .finished
            .is_empty());
        let done = store.batch(&b.id).unwrap();
        assert_eq!(done.status, BatchStatus::Completed);
        assert_eq!(done.request_counts.completed, 2);
        assert_eq!(done.request_counts.failed, 3);
        let out = store
            .file_path(done.output_file_id.as_ref().unwrap())
            .unwrap();
        assert_eq!(std::fs::read_to_string(out).unwrap(), "0\n1\n2\n3\n4\n");
        let errs = store
            .file_path(done.error_file_id.as_ref().unwrap())
            .unwrap();
        assert_eq!(std::fs::read_to_string(errs).unwrap(), "e\ne\ne\n");
        let m = done.metadata.unwrap();
        assert_eq!(m["spotinfer_device_seconds"], "3.000");
        assert_eq!(m["spotinfer_cost_usd"], "0.030000");
        assert_eq!(metrics.job_backlog_lines.get(), 0);
        assert_eq!(metrics.jobs.with_label_values(&["completed"]).get(), 1);
        assert!(!store.batch_dir(&b.id).join("segments").exists());
        let outputs = store
            .list_files()
            .unwrap()
            .into_iter()
            .filter(|f| f.purpose == "batch_output")
            .count();
        assert_eq!(outputs, 2, "registered once");
        std::fs::remove_dir_all(store.root()).ok();
    }

    #[test]
    fn a_cancel_waits_for_running_segments_then_keeps_the_lines_done() {
        let store = store("cancel");
        let metrics = Metrics::new();
        let b = job(&store, 6);
        coordinator(&store, "a/1", &metrics).tick().unwrap();
        let plan = store.plan(&b.id).unwrap().unwrap();
        run_segment(&store, &b.id, plan.segments[1]);
        // Another (live) replica runs segment 2.
        let seg2 = store.segment_dir(&b.id, plan.segments[2]);
        std::fs::create_dir_all(&seg2.dir).unwrap();
        assert!(seg2.lease().claim("otherhost/1", 30));
        store.cancel(&b.id).unwrap();
        let t = coordinator(&store, "a/1", &metrics).tick().unwrap();
        assert!(t.cancelled.contains(&b.id));
        assert_eq!(store.batch(&b.id).unwrap().status, BatchStatus::Cancelling);
        seg2.lease().release("otherhost/1").unwrap();
        coordinator(&store, "a/1", &metrics).tick().unwrap();
        let done = store.batch(&b.id).unwrap();
        assert_eq!(done.status, BatchStatus::Cancelled);
        assert_eq!(done.request_counts.completed, 1);
        let out = store
            .file_path(done.output_file_id.as_ref().unwrap())
            .unwrap();
        assert_eq!(std::fs::read_to_string(out).unwrap(), "2\n3\n");
        std::fs::remove_dir_all(store.root()).ok();
    }
}
