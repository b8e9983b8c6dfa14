//! Admission (`--max-concurrent-requests`), the queue (token budget, request limit, priorities,
//! deadlines) and the device worker that drains it.

pub mod admission;
pub(crate) mod memory_cap;
pub mod queue;
pub(crate) mod select;
pub(crate) mod worker;

pub use admission::{Admission, AdmissionGuard};
pub use queue::{Answer, BatchLimits, DeviceBatch, InferError, Queue};
pub use worker::{LoadedSummary, WorkerConfig, WorkerHealth};
