//! Activation buffers, reused across layers and batches.
//!
//! Why: a fresh large `Vec` per layer is fresh pages from the kernel (page faults and zeroing on
//! every batch), which the profile of candle's CPU path showed as a real cost. Buffers go back
//! to the pool when the activation holding them is dropped; only growth is ever zeroed.

use std::sync::{Arc, Mutex};

/// Buffers kept for reuse; beyond this the smallest are freed.
const KEEP: usize = 32;

#[derive(Default)]
pub struct Pool {
    free: Mutex<Vec<Vec<f32>>>,
}

/// `n` floats borrowed from the pool (contents unspecified until written).
pub struct Buf {
    data: Vec<f32>,
    n: usize,
    pool: Arc<Pool>,
}

impl Pool {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A buffer of `n` floats: the smallest free one that fits, else the largest grown.
    pub fn take(self: &Arc<Self>, n: usize) -> Buf {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let fit = free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() >= n)
            .min_by_key(|(_, v)| v.len())
            .map(|(i, _)| i);
        let mut data = match fit {
            Some(i) => free.swap_remove(i),
            None => free
                .iter()
                .enumerate()
                .max_by_key(|(_, v)| v.len())
                .map(|(i, _)| i)
                .map(|i| free.swap_remove(i))
                .unwrap_or_default(),
        };
        drop(free);
        if data.len() < n {
            data.resize(n, 0.0);
        }
        Buf {
            data,
            n,
            pool: self.clone(),
        }
    }

    /// A buffer of `n` zeros.
    pub fn zeroed(self: &Arc<Self>, n: usize) -> Buf {
        let mut b = self.take(n);
        b.fill(0.0);
        b
    }

    fn give_back(&self, v: Vec<f32>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.push(v);
        if free.len() > KEEP {
            if let Some(i) = free
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| v.len())
                .map(|(i, _)| i)
            {
                free.swap_remove(i);
            }
        }
    }
}

impl std::ops::Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data[..self.n]
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[..self.n]
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized() {
        let pool = Pool::new();
        let mut a = pool.take(100);
        a.fill(7.0);
        let ptr = a.as_ptr();
        drop(a);
        let b = pool.take(50);
        assert_eq!(b.len(), 50);
        assert_eq!(b.as_ptr(), ptr, "the freed buffer is reused");
        let c = pool.zeroed(80);
        assert!(c.iter().all(|&v| v == 0.0));
        drop((b, c));
        assert_eq!(pool.free.lock().unwrap().len(), 2);
    }
}
