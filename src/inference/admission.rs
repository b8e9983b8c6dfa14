//! Admission control: counts inputs (not requests) in flight, like TEI's
//! `--max-concurrent-requests`. Only online work is admitted here; jobs bound their own lines
//! in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Admission {
    inflight: AtomicUsize,
    max: usize,
}

/// Holds `n` admitted inputs until dropped.
pub struct AdmissionGuard {
    admission: Arc<Admission>,
    n: usize,
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        self.admission.inflight.fetch_sub(self.n, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            inflight: AtomicUsize::new(0),
            max,
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn try_admit(self: &Arc<Self>, n: usize) -> Option<AdmissionGuard> {
        let mut cur = self.inflight.load(Ordering::Acquire);
        loop {
            if cur + n > self.max {
                return None;
            }
            match self
                .inflight
                .compare_exchange(cur, cur + n, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(AdmissionGuard {
                        admission: self.clone(),
                        n,
                    })
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counts_inputs_and_releases_on_drop() {
        let a = Admission::new(10);
        let g1 = a.try_admit(6).unwrap();
        assert!(a.try_admit(5).is_none());
        let g2 = a.try_admit(4).unwrap();
        drop(g1);
        assert!(a.try_admit(6).is_some());
        drop(g2);
        assert_eq!(a.inflight.load(Ordering::Acquire), 0);
    }
}
