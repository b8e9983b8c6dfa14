//! Accepted work that must finish before the process exits, tracked by ownership (as
//! mini-redis does): every accepted request and every job chunk in flight holds a
//! [`WorkGuard`]; the drain waits for the last guard to drop instead of polling metrics.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Default)]
pub struct Work {
    in_flight: AtomicUsize,
    /// Everything ever accepted (for the drain report).
    accepted: AtomicU64,
    idle: Notify,
}

/// One piece of accepted work; dropping it (however the work ends) releases it.
pub struct WorkGuard(Arc<Work>);

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Work {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn enter(self: &Arc<Self>) -> WorkGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        WorkGuard(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Resolves once nothing is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a drop between the check and the await wakes us.
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn idle_waits_for_the_last_guard() {
        let w = Work::new();
        w.idle().await;
        let a = w.enter();
        let b = w.enter();
        assert_eq!(w.in_flight(), 2);
        let waiter = {
            let w = w.clone();
            tokio::spawn(async move { w.idle().await })
        };
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one guard is still held");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("idle after the last guard")
            .expect("join");
        assert_eq!(w.accepted(), 2);
    }
}
