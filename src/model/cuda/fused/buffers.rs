//! Device buffers of the fused backend: a pool per element type (the bookkeeping is
//! `cuda::host::pool`, tested without a GPU) and the guard that returns a buffer when the
//! activation holding it is dropped.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, DriverError,
};

use crate::model::cuda::host::pool::PoolState;
use crate::model::ModelError;

/// The pooled buffers of one element type on one stream.
pub struct DevicePool<E> {
    stream: Arc<CudaStream>,
    state: Mutex<PoolState<CudaSlice<E>>>,
}

fn driver(e: DriverError) -> ModelError {
    if crate::model::error::cuda::driver_out_of_memory(&e) {
        ModelError::OutOfMemory(format!("allocating an activation buffer: {e}"))
    } else {
        ModelError::Device(format!("allocating an activation buffer: {e}"))
    }
}

impl<E: DeviceRepr> DevicePool<E> {
    pub fn new(stream: Arc<CudaStream>) -> Arc<Self> {
        Arc::new(DevicePool {
            stream,
            state: Mutex::new(PoolState::new(std::mem::size_of::<E>())),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState<CudaSlice<E>>> {
        // Every mutation is a push / pop on a free list: a panic mid-way leaves it usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of at least `rows x cols` elements (contents unspecified until written).
    pub fn take(self: &Arc<Self>, rows: usize, cols: usize) -> Result<Pooled<E>, ModelError> {
        let (slice, cap_rows) = self
            .lock()
            .take(rows, cols, |n| {
                // SAFETY: every kernel writes its whole output before anything reads it, and
                // views are cut to the requested `rows x cols`.
                unsafe { self.stream.alloc::<E>(n) }
            })
            .map_err(driver)?;
        Ok(Pooled {
            slice: Some(slice),
            cap_rows,
            rows,
            cols,
            pool: self.clone(),
        })
    }

    fn give_back(&self, cols: usize, slice: CudaSlice<E>, cap_rows: usize) {
        let extra = self.lock().give(cols, slice, cap_rows);
        // Freed outside the lock (an async free on the stream).
        drop(extra);
    }

    /// Pre-sizes every width seen so far for batches of up to `tokens` tokens.
    pub fn reserve(&self, tokens: usize) -> Result<(), ModelError> {
        let (dropped, plan) = self.lock().reserve(tokens);
        drop(dropped);
        for (cols, count) in plan.blocks {
            for _ in 0..count {
                // SAFETY: as in `take`.
                let block =
                    unsafe { self.stream.alloc::<E>(plan.rows * cols.max(1)) }.map_err(driver)?;
                self.lock().insert(cols, block, plan.rows);
            }
        }
        Ok(())
    }

    pub fn bytes_per_row(&self) -> u64 {
        self.lock().bytes_per_row()
    }

    pub fn held_bytes(&self) -> u64 {
        self.lock().held_bytes()
    }

    pub fn allocations(&self) -> u64 {
        self.lock().allocations()
    }
}

/// A pooled buffer holding `rows x cols` elements; back to its pool when dropped.
pub struct Pooled<E: DeviceRepr> {
    slice: Option<CudaSlice<E>>,
    cap_rows: usize,
    rows: usize,
    cols: usize,
    pool: Arc<DevicePool<E>>,
}

impl<E: DeviceRepr> Pooled<E> {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    fn slice(&self) -> Result<&CudaSlice<E>, ModelError> {
        self.slice
            .as_ref()
            .ok_or_else(|| ModelError::Device("a released activation buffer".into()))
    }

    /// The `rows x cols` elements.
    pub fn view(&self) -> Result<CudaView<'_, E>, ModelError> {
        let n = self.len();
        self.slice()?
            .try_slice(0..n)
            .ok_or_else(|| ModelError::Device(format!("buffer shorter than {n}")))
    }

    pub fn view_mut(&mut self) -> Result<CudaViewMut<'_, E>, ModelError> {
        let n = self.len();
        self.slice
            .as_mut()
            .ok_or_else(|| ModelError::Device("a released activation buffer".into()))?
            .try_slice_mut(0..n)
            .ok_or_else(|| ModelError::Device(format!("buffer shorter than {n}")))
    }

    /// Hands the whole slice out (for `SeqLayout`, which owns its offsets); give it back with
    /// [`Lent::give_back`].
    pub fn lend(mut self) -> Result<(CudaSlice<E>, Lent<E>), ModelError> {
        let slice = self
            .slice
            .take()
            .ok_or_else(|| ModelError::Device("a released activation buffer".into()))?;
        let lent = Lent {
            cap_rows: self.cap_rows,
            cols: self.cols,
            pool: self.pool.clone(),
        };
        Ok((slice, lent))
    }
}

impl<E: DeviceRepr> Drop for Pooled<E> {
    fn drop(&mut self) {
        if let Some(s) = self.slice.take() {
            self.pool.give_back(self.cols, s, self.cap_rows);
        }
    }
}

/// Where a lent slice goes back to.
pub struct Lent<E: DeviceRepr> {
    cap_rows: usize,
    cols: usize,
    pool: Arc<DevicePool<E>>,
}

impl<E: DeviceRepr> Lent<E> {
    pub fn give_back(self, slice: CudaSlice<E>) {
        self.pool.give_back(self.cols, slice, self.cap_rows);
    }
}
