//! The bounded drain after SIGTERM, step by step:
//!
//! 1. readiness red at once (done by `Lifecycle::begin_drain`);
//! 2. `--drain-delay`: keep serving normally while Kubernetes removes the endpoint;
//! 3. stop accepting; requests on open connections get 503 + Retry-After + Connection: close;
//!    everything accepted (queued or computing) finishes: every accepted request and job chunk
//!    holds a guard (`work.rs`), and this step waits for the last one;
//! 4. at `--drain-timeout` after the signal, whatever is still queued gets 503, never dropped;
//! 5. offline work checkpoints; state Stopped; the caller flushes logs and exits 0.
//!
//! A second signal skips the waits of steps 2 and 3.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::Lifecycle;
use crate::batching::{InferError, Queue};
use crate::metrics::Metrics;

/// How long nothing must be in flight before the process exits.
const QUIET_BEFORE_EXIT: Duration = Duration::from_millis(300);

/// Offline work that must be checkpointed before exit (the job runner).
pub trait OfflineWork: Send + Sync {
    /// Stop taking new lines, finish the chunk in flight, write the checkpoint. Returns the
    /// number of jobs checkpointed.
    fn checkpoint(&self, hurry: bool) -> Pin<Box<dyn Future<Output = usize> + Send + '_>>;
}

pub struct DrainTargets {
    pub queue: Arc<Queue>,
    /// Closes the listener when set to true.
    pub stop_accepting: watch::Sender<bool>,
    pub offline: Option<Arc<dyn OfflineWork>>,
    pub metrics: Arc<Metrics>,
}

/// What happened, for the log line and the tests.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DrainReport {
    /// Requests and job chunks accepted after SIGTERM (during the drain delay).
    pub served_during_drain: u64,
    pub refused: u64,
    pub failed_at_deadline: usize,
    pub jobs_checkpointed: usize,
    pub elapsed_ms: u64,
    pub forced: bool,
}

/// Runs steps 2 to 5. `signals` yields further signals (a second one hurries the drain).
pub async fn run(
    lifecycle: Arc<Lifecycle>,
    delay: Duration,
    timeout: Duration,
    targets: DrainTargets,
    signals: &mut mpsc::UnboundedReceiver<i32>,
) -> DrainReport {
    let started = Instant::now();
    let deadline = started + timeout;
    let work = lifecycle.work().clone();
    let accepted_before = work.accepted();
    let refused_before = lifecycle.refusals();
    let mut forced = false;
    tracing::info!(
        drain_delay_s = delay.as_secs_f64(),
        drain_timeout_s = timeout.as_secs_f64(),
        "draining: readiness is red; serving normally during the drain delay"
    );

    // Step 2: the endpoint is being removed in parallel; keep serving.
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        Some(_) = signals.recv() => { forced = true; }
    }

    // Step 3: stop accepting, refuse on open connections, let accepted work finish.
    let _ = targets.stop_accepting.send(true);
    lifecycle.start_refusing();
    tracing::info!(
        forced,
        in_flight = work.in_flight(),
        "listener closed; finishing accepted work"
    );
    if !forced {
        tokio::select! {
            _ = work.idle() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
            Some(_) = signals.recv() => { forced = true; }
        }
    }

    // Step 4: whatever is still queued gets 503 now; the batch on the device finishes.
    let failed = targets.queue.fail_pending(InferError::DrainDeadline);
    targets.queue.close();
    if failed > 0 {
        tracing::warn!(failed, "drain deadline: queued inputs answered with 503");
        targets
            .metrics
            .rejected_total
            .with_label_values(&["deadline"])
            .inc_by(failed as u64);
    }
    // Let the last batch and the responses already computed reach their clients, then stay a
    // moment longer so a request racing in on an open keep-alive connection still gets its
    // 503 instead of a closed socket.
    let grace_end = Instant::now() + Duration::from_secs(if forced { 1 } else { 3 });
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < grace_end {
        let idle = work.in_flight() == 0;
        match (idle, quiet_since) {
            (false, _) => quiet_since = None,
            (true, None) => quiet_since = Some(Instant::now()),
            (true, Some(t)) if t.elapsed() >= QUIET_BEFORE_EXIT => break,
            (true, Some(_)) => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Step 5: offline work.
    let jobs_checkpointed = match &targets.offline {
        Some(w) => w.checkpoint(forced).await,
        None => 0,
    };
    lifecycle.set_stopped();
    let report = DrainReport {
        served_during_drain: work.accepted().saturating_sub(accepted_before),
        refused: lifecycle.refusals().saturating_sub(refused_before),
        failed_at_deadline: failed,
        jobs_checkpointed,
        elapsed_ms: started.elapsed().as_millis() as u64,
        forced,
    };
    tracing::info!(
        served_during_drain = report.served_during_drain,
        refused = report.refused,
        failed_at_deadline = report.failed_at_deadline,
        jobs_checkpointed = report.jobs_checkpointed,
        elapsed_ms = report.elapsed_ms,
        forced = report.forced,
        "drain complete"
    );
    report
}
