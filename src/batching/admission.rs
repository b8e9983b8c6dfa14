//! Admission control: counts inputs (not requests) in flight, like TEI's
//! `--max-concurrent-requests`. Only online work is admitted here; jobs bound their own lines
//! in flight.
//!
//! An admitted input keeps its slot until its result is delivered or the queue drops it: the
//! slot travels with the work (through tokenisation, then on its queue entry), not with the
//! request handler, so a client that goes away does not free a slot its inputs still occupy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;

pub struct Admission {
    inflight: AtomicUsize,
    max: usize,
    /// `inference_admitted_inputs`.
    gauge: IntGauge,
}

/// Holds `n` admitted inputs until dropped.
pub struct AdmissionGuard {
    admission: Arc<Admission>,
    n: usize,
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        if self.n > 0 {
            self.admission.inflight.fetch_sub(self.n, Ordering::AcqRel);
            self.admission.gauge.sub(self.n as i64);
        }
    }
}

impl AdmissionGuard {
    /// Splits one input's slot off, so each queued input releases its own when it is answered
    /// or dropped. None once every slot was taken.
    pub fn take_one(&mut self) -> Option<AdmissionGuard> {
        if self.n == 0 {
            return None;
        }
        self.n -= 1;
        Some(AdmissionGuard {
            admission: self.admission.clone(),
            n: 1,
        })
    }

    /// Inputs this guard still holds.
    pub fn inputs(&self) -> usize {
        self.n
    }
}

impl Admission {
    pub fn new(max: usize, gauge: IntGauge) -> Arc<Self> {
        gauge.set(0);
        Arc::new(Self {
            inflight: AtomicUsize::new(0),
            max,
            gauge,
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Inputs holding a slot now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
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
                    self.gauge.add(n as i64);
                    return Some(AdmissionGuard {
                        admission: self.clone(),
                        n,
                    });
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
        let gauge = IntGauge::new("g", "g").unwrap();
        let a = Admission::new(10, gauge.clone());
        let g1 = a.try_admit(6).unwrap();
        assert!(a.try_admit(5).is_none());
        let g2 = a.try_admit(4).unwrap();
        assert_eq!(gauge.get(), 10);
        drop(g1);
        assert!(a.try_admit(6).is_some());
        drop(g2);
        assert_eq!(a.inflight(), 0);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn slots_split_off_are_released_one_by_one() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let a = Admission::new(3, gauge.clone());
        let mut g = a.try_admit(3).unwrap();
        let one = g.take_one().unwrap();
        let two = g.take_one().unwrap();
        assert_eq!((g.inputs(), a.inflight()), (1, 3));
        drop(g);
        assert_eq!(a.inflight(), 2);
        drop(one);
        assert_eq!((a.inflight(), gauge.get()), (1, 1));
        drop(two);
        assert_eq!((a.inflight(), gauge.get()), (0, 0));
        let mut g = a.try_admit(1).unwrap();
        assert!(g.take_one().is_some());
        assert!(g.take_one().is_none(), "no more slots than admitted");
    }
}
