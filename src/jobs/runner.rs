//! The server's job runner: claims active batches by lease, validates, runs them chunk by chunk
//! through the queue at batch priority, finalises them; on SIGTERM stops taking new chunks,
//! commits the ones in flight and releases its leases so another replica resumes at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{watch, Notify};

use super::lines::{self, DriveEnd, DriveHooks};
use super::store::{unix_now, Checkpoint, CheckpointedOutput, Lease, StoreError};
use super::{count_lines, refresh_metrics, BatchObject, BatchStatus, JobStore};
use crate::inference::Inference;
use crate::lifecycle::drain::OfflineWork;
use crate::lifecycle::work::WorkGuard;
use crate::lifecycle::{Lifecycle, State};
use crate::metrics::Metrics;

/// `host/pid` of a lease holder that ran on this host and is gone. A restarted container
/// usually gets the same pid (1) and so the same holder name, which `acquire` already treats
/// as its own; this covers processes outside containers.
fn holder_is_dead(lease: &Lease, me: &str) -> bool {
    let (Some((host, pid)), Some((my_host, _))) =
        (lease.holder.rsplit_once('/'), me.rsplit_once('/'))
    else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    host == my_host
        && pid > 0
        && unsafe { libc::kill(pid, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

pub struct JobRunner {
    pub store: JobStore,
    inference: Arc<Inference>,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    replica: String,
    chunk_lines: usize,
    lease_secs: u64,
    wake: Notify,
    stop: watch::Sender<bool>,
    running: watch::Sender<bool>,
    paused: AtomicUsize,
}

impl JobRunner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: JobStore,
        inference: Arc<Inference>,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        replica: String,
        chunk_lines: usize,
        lease_secs: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            inference,
            metrics,
            lifecycle,
            replica,
            chunk_lines,
            lease_secs,
            wake: Notify::new(),
            stop: watch::channel(false).0,
            running: watch::channel(false).0,
            paused: AtomicUsize::new(0),
        })
    }

    /// A new batch was created: look for work now rather than at the next poll.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Before Ready: claim every interrupted batch that no live replica holds and roll its
    /// outputs back to the checkpoint. Returns how many were resumed.
    pub fn recover(&self) -> usize {
        let Ok(batches) = self.store.list_batches() else {
            return 0;
        };
        let mut resumed = 0;
        for b in batches
            .iter()
            .filter(|b| b.status == BatchStatus::InProgress)
        {
            if !self.claim(&b.id) {
                continue;
            }
            match self.open_outputs(&b.id) {
                Ok(out) => {
                    tracing::info!(
                        batch = %b.id,
                        line = out.checkpoint.lines_done,
                        total = b.request_counts.total,
                        "resuming batch job from its checkpoint"
                    );
                    resumed += 1;
                }
                Err(e) => tracing::error!(batch = %b.id, error = %e, "cannot resume batch job"),
            }
        }
        refresh_metrics(&self.store, &self.metrics);
        resumed
    }

    fn open_outputs(&self, id: &str) -> Result<CheckpointedOutput, StoreError> {
        let dir = self.store.batch_dir(id);
        CheckpointedOutput::open_or_resume(
            dir.join("output.jsonl"),
            Some(dir.join("errors.jsonl")),
            dir.join("checkpoint.json"),
        )
    }

    /// The runner loop; ends once stopped (SIGTERM).
    pub async fn run(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut state = self.lifecycle.subscribe();
        loop {
            if *stop.borrow() || self.lifecycle.state() >= State::Draining {
                break;
            }
            match self.claim_next() {
                Some(b) => {
                    self.running.send_replace(true);
                    if let Err(e) = self.run_batch(b).await {
                        tracing::error!(error = %e, "batch job step failed; retrying later");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    self.running.send_replace(false);
                }
                None => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        // Other replicas' jobs and expired leases show up without a wake-up.
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = stop.changed() => {}
                        _ = state.changed() => {}
                    }
                }
            }
        }
        self.running.send_replace(false);
        tracing::info!("batch job runner stopped");
    }

    /// The oldest active batch whose lease we can take.
    fn claim_next(&self) -> Option<BatchObject> {
        let mut batches = self.store.list_batches().ok()?;
        batches.reverse();
        batches
            .into_iter()
            .find(|b| b.status.is_active() && self.claim(&b.id))
    }

    /// Takes (or renews) the lease on a batch.
    fn claim(&self, id: &str) -> bool {
        let me = &self.replica;
        matches!(
            self.store
                .lease(id)
                .acquire_or_steal(me, self.lease_secs, |l| holder_is_dead(l, me)),
            Ok(true)
        )
    }

    async fn run_batch(&self, mut b: BatchObject) -> Result<(), StoreError> {
        let lease = self.store.lease(&b.id);
        if b.status == BatchStatus::Validating {
            match self
                .store
                .file_path(&b.input_file_id)
                .and_then(|p| count_lines(&p))
            {
                Ok(total) => {
                    b.request_counts.total = total;
                    b.status = BatchStatus::InProgress;
                    b.in_progress_at = Some(unix_now());
                }
                Err(e) => {
                    b.status = BatchStatus::Failed;
                    b.failed_at = Some(unix_now());
                    b.errors = Some(json!({"object": "list", "data": [
                        {"code": "invalid_input_file", "message": e.to_string(), "param": "input_file_id", "line": null}
                    ]}));
                }
            }
            self.store.save_batch(&b)?;
            refresh_metrics(&self.store, &self.metrics);
        }
        let end = if matches!(b.status, BatchStatus::InProgress | BatchStatus::Cancelling) {
            let input = self.store.file_path(&b.input_file_id)?;
            let mut out = self.open_outputs(&b.id)?;
            let mut hooks = RunnerHooks {
                runner: self,
                batch_id: &b.id,
                stop: self.stop.subscribe(),
                last_refresh: Instant::now(),
                cancelled: false,
            };
            let end = lines::drive(
                &self.inference,
                &b.id,
                &input,
                &mut out,
                self.chunk_lines,
                &mut hooks,
            )
            .await?;
            if hooks.cancelled {
                Some(Finish::Cancelled(out.checkpoint))
            } else {
                match end {
                    DriveEnd::Done => Some(Finish::Completed(out.checkpoint)),
                    DriveEnd::Stopped | DriveEnd::Interrupted => {
                        tracing::info!(
                            batch = %b.id,
                            line = out.checkpoint.lines_done,
                            "batch job checkpointed; it resumes here after restart"
                        );
                        self.paused.fetch_add(1, Ordering::AcqRel);
                        None
                    }
                    DriveEnd::LeaseLost => {
                        tracing::warn!(batch = %b.id, "lease lost to another replica; stopping here");
                        return Ok(());
                    }
                }
            }
        } else {
            None
        };
        if let Some(finish) = end {
            self.finish(&b.id, finish)?;
        }
        lease.release(&self.replica)?;
        refresh_metrics(&self.store, &self.metrics);
        Ok(())
    }

    fn finish(&self, id: &str, finish: Finish) -> Result<(), StoreError> {
        let mut b = self.store.batch(id)?;
        let (status, c) = match finish {
            Finish::Completed(c) => (BatchStatus::Completed, c),
            Finish::Cancelled(c) => (BatchStatus::Cancelled, c),
        };
        b.status = BatchStatus::Finalizing;
        b.finalizing_at = Some(unix_now());
        self.store.save_batch(&b)?;
        let dir = self.store.batch_dir(id);
        if c.output_len > 0 || c.completed > 0 {
            b.output_file_id = Some(
                self.store
                    .register_file(
                        &dir.join("output.jsonl"),
                        &format!("{id}_output.jsonl"),
                        "batch_output",
                    )?
                    .id,
            );
        }
        if c.error_len > 0 {
            b.error_file_id = Some(
                self.store
                    .register_file(
                        &dir.join("errors.jsonl"),
                        &format!("{id}_errors.jsonl"),
                        "batch_output",
                    )?
                    .id,
            );
        }
        b.request_counts.completed = c.completed;
        b.request_counts.failed = c.failed;
        b.status = status;
        match status {
            BatchStatus::Cancelled => b.cancelled_at = Some(unix_now()),
            _ => b.completed_at = Some(unix_now()),
        }
        self.store.save_batch(&b)?;
        tracing::info!(batch = %id, status = status.as_str(), completed = c.completed, failed = c.failed, "batch job finished");
        Ok(())
    }
}

enum Finish {
    Completed(Checkpoint),
    Cancelled(Checkpoint),
}

struct RunnerHooks<'a> {
    runner: &'a JobRunner,
    batch_id: &'a str,
    stop: watch::Receiver<bool>,
    last_refresh: Instant,
    cancelled: bool,
}

impl DriveHooks for RunnerHooks<'_> {
    fn hold(&mut self) -> Option<WorkGuard> {
        Some(self.runner.lifecycle.accept())
    }

    fn should_stop(&mut self) -> bool {
        if *self.stop.borrow() || self.runner.lifecycle.state() >= State::Draining {
            return true;
        }
        if self
            .runner
            .store
            .batch(self.batch_id)
            .is_ok_and(|b| b.status == BatchStatus::Cancelling)
        {
            self.cancelled = true;
            return true;
        }
        false
    }

    fn may_commit(&mut self) -> bool {
        // Renewing proves we still hold it; if another replica took over after our lease
        // expired, its output is the one that counts.
        self.runner.claim(self.batch_id)
    }

    fn committed(&mut self, _c: &Checkpoint, succeeded: u64, failed: u64) {
        let m = &self.runner.metrics;
        m.job_checkpoints_total.inc();
        m.job_lines_total
            .with_label_values(&["succeeded"])
            .inc_by(succeeded);
        m.job_lines_total
            .with_label_values(&["failed"])
            .inc_by(failed);
        if self.last_refresh.elapsed() > Duration::from_secs(1) {
            refresh_metrics(&self.runner.store, m);
            self.last_refresh = Instant::now();
        }
    }
}

impl OfflineWork for JobRunner {
    fn checkpoint(&self, hurry: bool) -> Pin<Box<dyn Future<Output = usize> + Send + '_>> {
        Box::pin(async move {
            self.stop.send_replace(true);
            self.wake.notify_one();
            let mut running = self.running.subscribe();
            let limit = Duration::from_secs(if hurry { 2 } else { 10 });
            let _ = tokio::time::timeout(limit, running.wait_for(|r| !*r)).await;
            let n = self.paused.load(Ordering::Acquire);
            tracing::info!(jobs = n, "batch jobs checkpointed for shutdown");
            n
        })
    }
}
