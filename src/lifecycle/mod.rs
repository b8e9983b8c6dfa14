//! The process lifecycle: `Starting -> Ready -> Draining -> Stopped` (or `Starting -> Failed`
//! when the model cannot load), written here and only here, read by probes, handlers, jobs and
//! metrics. Accepted work is tracked by ownership (`work.rs`).
//!
//! A spot interruption notice is not a state of its own: the pod keeps serving (Ready), but
//! readiness turns red so traffic moves away before the node dies, and offline work checkpoints.

pub mod drain;
pub mod signals;
pub mod spot;
pub mod work;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use self::work::{Work, WorkGuard};
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting = 0,
    Ready = 1,
    Draining = 2,
    Stopped = 3,
    /// The model could not load: liveness fails so the kubelet restarts the pod.
    Failed = 4,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Draining => "draining",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => State::Starting,
            1 => State::Ready,
            2 => State::Draining,
            3 => State::Stopped,
            _ => State::Failed,
        }
    }
}

/// A cloud interruption notice.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InterruptionNotice {
    pub provider: String,
    pub action: String,
    /// Unix seconds when the instance goes away, when the provider says.
    pub deadline_unix: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct DrainInfo {
    started: Instant,
    deadline_unix: f64,
}

pub struct Lifecycle {
    state: AtomicU8,
    /// After the drain delay: the listener is closed and requests on open connections get 503.
    refusing: AtomicBool,
    drain: Mutex<Option<DrainInfo>>,
    notice: Mutex<Option<InterruptionNotice>>,
    changes: watch::Sender<State>,
    /// Bumps on every notice or drain, so offline work checkpoints early.
    checkpoint_hint: watch::Sender<u64>,
    /// Requests refused because the listener had closed.
    refused: std::sync::atomic::AtomicU64,
    work: Arc<Work>,
    metrics: Arc<Metrics>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Lifecycle {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        metrics.set_lifecycle_state(State::Starting.as_str());
        Arc::new(Self {
            state: AtomicU8::new(State::Starting as u8),
            refusing: AtomicBool::new(false),
            drain: Mutex::new(None),
            notice: Mutex::new(None),
            changes: watch::channel(State::Starting).0,
            checkpoint_hint: watch::channel(0).0,
            refused: Default::default(),
            work: Work::new(),
            metrics,
        })
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Moves forward only: a later state never goes back to an earlier one.
    fn advance(&self, to: State) -> bool {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if State::from_u8(cur) >= to {
                return false;
            }
            match self
                .state
                .compare_exchange(cur, to as u8, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        self.metrics.set_lifecycle_state(to.as_str());
        self.changes.send_replace(to);
        tracing::info!(state = to.as_str(), "lifecycle");
        true
    }

    /// Model loaded and warmed up (and interrupted batch jobs resumed).
    pub fn set_ready(&self) -> bool {
        self.advance(State::Ready)
    }

    /// The model could not load (only from Starting).
    pub fn set_failed(&self) {
        if self.state() == State::Starting {
            self.advance(State::Failed);
        }
    }

    /// Liveness: everything but a failed load.
    pub fn is_alive(&self) -> bool {
        self.state() != State::Failed
    }

    /// A guard for one accepted request or job chunk; the drain waits for the last one.
    pub fn accept(&self) -> WorkGuard {
        self.work.enter()
    }

    pub fn work(&self) -> &Arc<Work> {
        &self.work
    }

    /// A request arrived after the listener closed and was refused.
    pub fn count_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refusals(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// SIGTERM: readiness goes red at once. Returns false if already draining.
    pub fn begin_drain(&self, drain_timeout: Duration) -> bool {
        // The deadline is recorded before the state turns Draining, so every reader that sees
        // "draining" (readiness probe, metrics) also sees the deadline.
        let mut slot = self.drain.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() || self.state() >= State::Draining {
            return false;
        }
        *slot = Some(DrainInfo {
            started: Instant::now(),
            deadline_unix: unix_now() + drain_timeout.as_secs_f64(),
        });
        drop(slot);
        self.advance(State::Draining);
        self.metrics.spot_interruption_pending.set(1);
        self.checkpoint_hint.send_modify(|n| *n += 1);
        true
    }

    pub fn set_stopped(&self) {
        if let Some(d) = self.drain_info() {
            self.metrics
                .drain_duration
                .set(d.started.elapsed().as_secs_f64());
        }
        self.advance(State::Stopped);
    }

    /// The listener has closed: requests still arriving on open connections get 503.
    pub fn start_refusing(&self) {
        self.refusing.store(true, Ordering::Release);
    }

    pub fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    pub fn interruption_notice(&self, notice: InterruptionNotice) {
        let mut slot = self.notice.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return;
        }
        tracing::warn!(
            provider = %notice.provider,
            action = %notice.action,
            deadline_unix = notice.deadline_unix,
            "cloud interruption notice: readiness goes red, offline work checkpoints; waiting for SIGTERM"
        );
        self.metrics.spot_interruption_pending.set(1);
        if let Some(t) = notice.deadline_unix {
            self.metrics.spot_interruption_deadline.set(t);
        }
        *slot = Some(notice);
        drop(slot);
        self.checkpoint_hint.send_modify(|n| *n += 1);
        // Readiness reads the notice; wake watchers so they re-evaluate.
        self.changes.send_modify(|_| {});
    }

    pub fn notice(&self) -> Option<InterruptionNotice> {
        self.notice
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn drain_info(&self) -> Option<DrainInfo> {
        *self.drain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Unix seconds of the drain deadline, while draining.
    pub fn drain_deadline_unix(&self) -> Option<f64> {
        self.drain_info().map(|d| d.deadline_unix)
    }

    /// Seconds since the drain began, for metrics.
    pub fn drain_elapsed(&self) -> Option<Duration> {
        self.drain_info().map(|d| d.started.elapsed())
    }

    /// Readiness: Ready and no interruption announced.
    pub fn is_ready(&self) -> bool {
        self.state() == State::Ready && self.notice().is_none()
    }

    /// Every state change (and every interruption notice, which changes readiness without
    /// changing the state): the job runner re-checks whether to stop taking lines.
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.changes.subscribe()
    }

    pub fn checkpoint_hints(&self) -> watch::Receiver<u64> {
        self.checkpoint_hint.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_only_move_forward() {
        let lc = Lifecycle::new(Metrics::new());
        assert_eq!(lc.state(), State::Starting);
        assert!(!lc.is_ready());
        assert!(lc.set_ready());
        assert!(lc.is_ready());
        assert!(lc.begin_drain(Duration::from_secs(25)));
        assert!(
            !lc.begin_drain(Duration::from_secs(25)),
            "second drain is a no-op"
        );
        assert!(!lc.set_ready(), "draining never goes back to ready");
        assert!(!lc.is_ready());
        assert!(lc.drain_deadline_unix().unwrap() > unix_now() + 20.0);
        lc.set_stopped();
        assert_eq!(lc.state(), State::Stopped);
        lc.set_failed();
        assert_eq!(lc.state(), State::Stopped, "failed only from starting");
        let lc = Lifecycle::new(Metrics::new());
        lc.set_failed();
        assert!(!lc.is_alive() && !lc.is_ready());
    }

    #[test]
    fn whoever_sees_draining_also_sees_the_deadline() {
        // CI once caught the readiness probe between the state change and the deadline.
        for _ in 0..200 {
            let lc = Arc::new(Lifecycle::new(Metrics::new()));
            lc.set_ready();
            let reader = {
                let lc = lc.clone();
                std::thread::spawn(move || {
                    while lc.state() < State::Draining {
                        std::hint::spin_loop();
                    }
                    lc.drain_deadline_unix().is_some()
                })
            };
            lc.begin_drain(Duration::from_secs(5));
            assert_eq!(reader.join().ok(), Some(true));
        }
    }

    #[test]
    fn a_notice_turns_readiness_red_but_keeps_serving() {
        let lc = Lifecycle::new(Metrics::new());
        lc.set_ready();
        let hints = lc.checkpoint_hints();
        lc.interruption_notice(InterruptionNotice {
            provider: "aws".into(),
            action: "terminate".into(),
            deadline_unix: Some(1.0e9),
        });
        assert_eq!(lc.state(), State::Ready);
        assert!(!lc.is_ready());
        assert!(hints.has_changed().unwrap());
        assert!(lc.notice().is_some());
    }
}
