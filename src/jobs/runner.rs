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
use super::drive::{self, ChunkResult, DriveEnd, DriveHooks, Input, Position};
use super::durable::StoreError;
use super::schedule::{self, LocalRunning, Picked};
use super::segment::{Fence, SegmentWriter};
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
    /// This replica's lease holder name (`pod/nonce`, unique per process).
    pub replica: String,
    /// Chunk and segment sizes of the jobs this replica creates (each job keeps its own).
    pub chunk_lines: usize,
    pub lease_secs: u64,
    pub segment_lines: u64,
    /// The longest job line read (the online body limit): longer ones fail.
    pub max_line_bytes: u64,
    /// Ended jobs are deleted this long after they ended (None: kept).
    pub retention: Option<Duration>,
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

impl JobRunner {
    pub fn new(
        store: JobStore,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        cfg: RunnerConfig,
    ) -> Arc<Self> {
        tracing::info!(holder = %cfg.replica, "batch-job leases are held under this name");
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
        let found = self.resumable().await.unwrap_or_default();
        for (batch, line, total) in &found {
            tracing::info!(%batch, line, total, "resuming batch job from its checkpoint");
        }
        found.len()
    }

    /// Jobs with started, unfinished segments that no live replica holds: (job, lines done in
    /// them, job total).
    async fn resumable(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let mut jobs = Vec::new();
        for b in self.store.list_active().await?.into_iter().flatten() {
            if b.status != BatchStatus::InProgress {
                continue;
            }
            let Some(plan) = self.store.plan(&b.id).await? else {
                continue;
            };
            let keys = self.store.scan(&b.id).await?;
            let mut lines = 0;
            for seg in &plan.segments {
                let Some(k) = keys.get(&seg.index) else {
                    continue;
                };
                let done = plan.lines_in(seg, k.committed());
                let held = match k.lease_epoch {
                    Some(e) => self
                        .store
                        .segment_lease(&b.id, seg.index)
                        .read(e)
                        .await?
                        .is_some_and(|l| l.blocks(&self.cfg.replica)),
                    None => false,
                };
                if !held && done > 0 && done < seg.lines {
                    lines += done;
                }
            }
            if lines > 0 {
                jobs.push((b.id, lines, plan.total));
            }
        }
        Ok(jobs)
    }

    /// The coordinator loop, on every replica; ends once stopped.
    pub async fn run_coordinator(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut adopted = false;
        while !*stop.borrow() {
            if !adopted {
                // Once per start: jobs an older release left in this state folder.
                let (seg, chunk) = (self.cfg.segment_lines, self.cfg.chunk_lines as u64);
                match super::legacy::adopt_jobs(&self.store, seg, chunk).await {
                    Ok(n) => {
                        adopted = true;
                        if n > 0 {
                            tracing::info!(jobs = n, "batch jobs of an older release adopted");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "adopting older batch jobs failed; retrying at the next tick")
                    }
                }
            }
            let tick = Coordinator {
                store: &self.store,
                me: &self.cfg.replica,
                lease_secs: self.cfg.lease_secs,
                metrics: &self.metrics,
                retention: self.cfg.retention,
            }
            .tick()
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
            let picked = schedule::pick(
                &self.store,
                &self.cfg.replica,
                self.cfg.lease_secs,
                &self.local,
            )
            .await;
            match picked {
                Ok(Some(work)) => {
                    if let Some(from) = &work.took_over {
                        self.metrics.job_segments_taken_over_total.inc();
                        tracing::info!(batch = %work.batch_id, segment = work.seg.index, from = %from, "took over a segment whose holder's lease ran out");
                    }
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
        let lease = self.store.segment_lease(&work.batch_id, work.seg.index);
        let Some(inference) = self.inference.get() else {
            return lease.release(&self.cfg.replica, work.epoch).await;
        };
        let keys = self.store.scan(&work.batch_id).await?;
        let progress = self
            .store
            .segment_progress(&work.batch_id, &work.seg, keys.get(&work.seg.index))
            .await?;
        if progress.is_done(&work.seg) {
            return lease.release(&self.cfg.replica, work.epoch).await;
        }
        if progress.lines_done > 0 {
            tracing::info!(batch = %work.batch_id, segment = work.seg.index, line = work.seg.first_line + progress.lines_done, "resuming a segment from its checkpoint");
        }
        let fence = Arc::new(Fence::default());
        fence.held(work.asked, self.cfg.lease_secs);
        // The heartbeat renews the lease on its own clock, whatever the device is doing.
        let epoch = Arc::new(std::sync::atomic::AtomicU64::new(work.epoch));
        let beat = tokio::spawn(heartbeat(
            self.store.clone(),
            work.batch_id.clone(),
            work.seg.index,
            self.cfg.replica.clone(),
            self.cfg.lease_secs,
            epoch.clone(),
            fence.clone(),
        ));
        let writer = SegmentWriter::new(
            self.store.blobs().clone(),
            &work.batch_id,
            work.seg,
            &self.cfg.replica,
            progress,
            fence.clone(),
            self.cfg.cost_per_hour,
        );
        let mut hooks = SlotHooks {
            runner: self,
            batch_id: &work.batch_id,
            fence: &fence,
            cancelled: false,
        };
        let input = Input::Object {
            blobs: self.store.blobs().clone(),
            key: work.input.clone(),
            max_line: self.cfg.max_line_bytes,
        };
        let driven = drive::drive(
            inference,
            &work.batch_id,
            &input,
            work.seg.end,
            Box::new(writer),
            work.plan.chunk_lines as usize,
            &mut hooks,
        )
        .await;
        beat.abort();
        let _ = beat.await;
        let held = epoch.load(std::sync::atomic::Ordering::Acquire);
        let (end, at) = match driven {
            Ok(d) => d,
            Err(e) => {
                let _ = lease.release(&self.cfg.replica, held).await;
                return Err(e);
            }
        };
        match end {
            DriveEnd::Done => {
                // Maybe the last segment: assemble now rather than at the next tick.
                self.wake_coordinator.notify_one();
            }
            DriveEnd::Stopped | DriveEnd::Interrupted if hooks.fence.lost() => {
                self.metrics.job_segments_lost_total.inc();
                tracing::warn!(batch = %work.batch_id, segment = work.seg.index, "segment lease lost to another replica; stopping here");
                return Ok(());
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
                self.metrics.job_segments_lost_total.inc();
                tracing::warn!(batch = %work.batch_id, segment = work.seg.index, "segment lease lost to another replica; stopping here");
                return Ok(());
            }
        }
        lease.release(&self.cfg.replica, held).await
    }
}

/// Renews a running segment's lease every third of its length. When another replica has
/// taken it (this one stalled past its lease), fences the run: it stops before its next
/// commit. A renewal that fails on a store error is tried again at the next beat.
async fn heartbeat(
    store: JobStore,
    batch: String,
    seg: usize,
    me: String,
    lease_secs: u64,
    epoch: Arc<std::sync::atomic::AtomicU64>,
    fence: Arc<Fence>,
) {
    use std::sync::atomic::Ordering;
    let every = Duration::from_millis(lease_secs * 1000 / 3).max(Duration::from_millis(200));
    loop {
        tokio::time::sleep(every).await;
        let lease = store.segment_lease(&batch, seg);
        let asked = std::time::Instant::now();
        match lease
            .renew(&me, lease_secs, epoch.load(Ordering::Acquire))
            .await
        {
            Ok(Some(e)) => {
                epoch.store(e, Ordering::Release);
                fence.held(asked, lease_secs);
            }
            Ok(None) => {
                fence.lose();
                return;
            }
            Err(e) => {
                tracing::warn!(%batch, segment = seg, error = %e, "renewing a segment lease failed; trying again")
            }
        }
    }
}

struct SlotHooks<'a> {
    runner: &'a JobRunner,
    batch_id: &'a str,
    fence: &'a Fence,
    cancelled: bool,
}

impl DriveHooks for SlotHooks<'_> {
    fn hold(&mut self) -> Option<WorkGuard> {
        Some(self.runner.lifecycle.accept())
    }

    fn should_stop(&mut self) -> bool {
        if self.fence.lost() {
            return true;
        }
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
