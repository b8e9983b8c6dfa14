//! The server's job runner. Every replica runs the coordinator loop (validation, assembly, the
//! fleet gauges; see `coordinator.rs`); a replica with a model also runs `SLOTS` segment slots,
//! each claiming one segment at a time by lease and running it chunk by chunk through the
//! queue at job priority. On SIGTERM the slots stop taking chunks, commit the ones in flight
//! and release their leases so another replica resumes those segments at once.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::coordinator::Coordinator;
use super::drive::{self, ChunkResult, DriveEnd, DriveHooks, Position};
use super::durable::StoreError;
use super::schedule::{self, LocalRunning, Picked};
use super::segment::{RunLease, SegmentWriter};
use super::store::JobStore;
use super::types::{BatchStatus, META_COST};
use crate::inference::Inference;
use crate::lifecycle::drain::OfflineWork;
use crate::lifecycle::work::WorkGuard;
use crate::lifecycle::{Lifecycle, State};
use crate::metrics::Metrics;

/// Segments one replica runs at once: two, so one's last chunks overlap the next one's first
/// and the device never waits at a segment boundary.
const SLOTS: usize = 2;

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// This replica's lease holder name (`pod/pid`).
    pub replica: String,
    pub chunk_lines: usize,
    pub lease_secs: u64,
    pub segment_lines: u64,
    /// Coordinator tick: how fresh the fleet gauges are.
    pub refresh: Duration,
    pub cost_per_hour: f64,
}

pub struct JobRunner {
    pub store: JobStore,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    cfg: RunnerConfig,
    inference: OnceLock<Arc<Inference>>,
    wake_slots: Notify,
    wake_coordinator: Notify,
    stop: watch::Sender<bool>,
    /// Slots running a segment now.
    running: watch::Sender<usize>,
    local: LocalRunning,
    /// Jobs whose segments were checkpointed for shutdown.
    paused: Mutex<HashSet<String>>,
    /// Jobs seen cancelling at the last tick.
    cancelled: Mutex<HashSet<String>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

impl JobRunner {
    pub fn new(
        store: JobStore,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        cfg: RunnerConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            metrics,
            lifecycle,
            cfg,
            inference: OnceLock::new(),
            wake_slots: Notify::new(),
            wake_coordinator: Notify::new(),
            stop: watch::channel(false).0,
            running: watch::channel(0).0,
            local: Mutex::default(),
            paused: Mutex::default(),
            cancelled: Mutex::default(),
        })
    }

    /// A job was created or cancelled here: act now rather than at the next tick.
    pub fn notify(&self) {
        self.wake_coordinator.notify_one();
        self.wake_slots.notify_waiters();
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() || self.lifecycle.state() >= State::Draining
    }

    /// Before Ready: reports the jobs whose interrupted segments this replica may resume (no
    /// live replica holds them). Returns how many jobs.
    pub async fn recover(self: &Arc<Self>) -> usize {
        let me = self.clone();
        let found = blocking(move || {
            let mut jobs = Vec::new();
            for b in me.store.list_stored()? {
                if b.status != BatchStatus::InProgress {
                    continue;
                }
                let Some(plan) = me.store.plan(&b.id)? else {
                    continue;
                };
                let mut lines = 0;
                for seg in &plan.segments {
                    let p = me.store.segment_progress(&b.id, *seg)?;
                    let free = me
                        .store
                        .segment_dir(&b.id, *seg)
                        .lease()
                        .read()
                        .is_none_or(|l| !l.blocks(&me.cfg.replica));
                    if free && p.lines_done > 0 && !p.is_done(seg) {
                        lines += p.lines_done;
                    }
                }
                if lines > 0 {
                    jobs.push((b.id, lines, plan.total));
                }
            }
            Ok(jobs)
        })
        .await
        .unwrap_or_default();
        for (batch, line, total) in &found {
            tracing::info!(%batch, line, total, "resuming batch job from its checkpoint");
        }
        found.len()
    }

    /// The coordinator loop, on every replica; ends once stopped.
    pub async fn run_coordinator(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        while !*stop.borrow() {
            let me = self.clone();
            let tick = blocking(move || {
                Coordinator {
                    store: &me.store,
                    me: &me.cfg.replica,
                    lease_secs: me.cfg.lease_secs,
                    segment_lines: me.cfg.segment_lines,
                    metrics: &me.metrics,
                }
                .tick()
            })
            .await;
            match tick {
                Ok(t) => {
                    *locked(&self.cancelled) = t.cancelled;
                    for b in &t.finished {
                        let cost = b
                            .metadata
                            .as_ref()
                            .and_then(|m| m.get(META_COST))
                            .and_then(|c| c.parse::<f64>().ok())
                            .unwrap_or(0.0);
                        self.metrics.job_cost.observe(cost);
                    }
                    if t.validated > 0 {
                        self.wake_slots.notify_waiters();
                    }
                }
                Err(e) => tracing::error!(error = %e, "reading the batch job state failed"),
            }
            tokio::select! {
                _ = self.wake_coordinator.notified() => {}
                _ = tokio::time::sleep(self.cfg.refresh) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Starts the segment slots once the model is loaded.
    pub fn start_slots(self: &Arc<Self>, inference: Arc<Inference>) {
        let _ = self.inference.set(inference);
        for _ in 0..SLOTS {
            tokio::spawn(self.clone().slot());
        }
    }

    async fn slot(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut state = self.lifecycle.subscribe();
        while !self.stopping() {
            let me = self.clone();
            let picked = blocking(move || {
                schedule::pick(&me.store, &me.cfg.replica, me.cfg.lease_secs, &me.local)
            })
            .await;
            match picked {
                Ok(Some(work)) => {
                    self.running.send_modify(|n| *n += 1);
                    let key = (work.batch_id.clone(), work.seg.index);
                    if let Err(e) = self.run_segment(&work).await {
                        tracing::error!(batch = %work.batch_id, segment = work.seg.index, error = %e, "batch job segment failed; retrying later");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    schedule::lock(&self.local).remove(&key);
                    self.running.send_modify(|n| *n -= 1);
                }
                Ok(None) => {
                    tokio::select! {
                        _ = self.wake_slots.notified() => {}
                        // Other replicas' jobs and expired leases show up without a wake-up.
                        _ = tokio::time::sleep(self.cfg.refresh) => {}
                        _ = stop.changed() => {}
                        _ = state.changed() => {}
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "looking for batch job work failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn run_segment(&self, work: &Picked) -> Result<(), StoreError> {
        let Some(inference) = self.inference.get() else {
            return Ok(());
        };
        let dir = self.store.segment_dir(&work.batch_id, work.seg);
        let lease = RunLease {
            holder: self.cfg.replica.clone(),
            ttl_secs: self.cfg.lease_secs,
        };
        let cost = self.cfg.cost_per_hour;
        let writer = blocking({
            let dir = dir.clone();
            move || SegmentWriter::open(dir, Some(lease), cost)
        })
        .await?;
        let resumed_at = writer.progress().lines_done;
        if resumed_at > 0 {
            tracing::info!(batch = %work.batch_id, segment = work.seg.index, line = work.seg.first_line + resumed_at, "resuming a segment from its checkpoint");
        }
        let mut hooks = SlotHooks {
            runner: self,
            batch_id: &work.batch_id,
            cancelled: false,
        };
        let (end, at) = drive::drive(
            inference,
            &work.batch_id,
            &work.input,
            work.seg.end,
            Box::new(writer),
            self.cfg.chunk_lines,
            &mut hooks,
        )
        .await?;
        match end {
            DriveEnd::Done => {
                // Maybe the last segment: assemble now rather than at the next tick.
                self.wake_coordinator.notify_one();
            }
            DriveEnd::Stopped | DriveEnd::Interrupted if !hooks.cancelled => {
                tracing::info!(
                    batch = %work.batch_id,
                    segment = work.seg.index,
                    line = at.line_no,
                    "batch job checkpointed; it resumes here after restart"
                );
                locked(&self.paused).insert(work.batch_id.clone());
            }
            DriveEnd::Stopped | DriveEnd::Interrupted => {
                self.wake_coordinator.notify_one();
            }
            DriveEnd::LeaseLost => {
                tracing::warn!(batch = %work.batch_id, segment = work.seg.index, "segment lease lost to another replica; stopping here");
                return Ok(());
            }
        }
        let me = self.cfg.replica.clone();
        blocking(move || dir.lease().release(&me)).await
    }
}

struct SlotHooks<'a> {
    runner: &'a JobRunner,
    batch_id: &'a str,
    cancelled: bool,
}

impl DriveHooks for SlotHooks<'_> {
    fn hold(&mut self) -> Option<WorkGuard> {
        Some(self.runner.lifecycle.accept())
    }

    fn should_stop(&mut self) -> bool {
        if locked(&self.runner.cancelled).contains(self.batch_id) {
            self.cancelled = true;
            return true;
        }
        self.runner.stopping()
    }

    fn committed(&mut self, _at: &Position, c: &ChunkResult) {
        let m = &self.runner.metrics;
        m.job_checkpoints_total.inc();
        m.job_lines_total
            .with_label_values(&["succeeded"])
            .inc_by(c.completed);
        m.job_lines_total
            .with_label_values(&["failed"])
            .inc_by(c.failed);
        m.job_device_seconds_total.inc_by(c.device_seconds);
        m.job_cost_dollars_total
            .inc_by(c.device_seconds * self.runner.cfg.cost_per_hour / 3600.0);
    }
}

impl OfflineWork for JobRunner {
    fn checkpoint(&self, hurry: bool) -> Pin<Box<dyn Future<Output = usize> + Send + '_>> {
        Box::pin(async move {
            self.stop.send_replace(true);
            self.wake_slots.notify_waiters();
            self.wake_coordinator.notify_one();
            let mut running = self.running.subscribe();
            let limit = Duration::from_secs(if hurry { 2 } else { 10 });
            let _ = tokio::time::timeout(limit, running.wait_for(|n| *n == 0)).await;
            let n = locked(&self.paused).len();
            tracing::info!(jobs = n, "batch jobs checkpointed for shutdown");
            n
        })
    }
}
