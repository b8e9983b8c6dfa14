//! The queue (token budget, request limit, priorities, deadlines) and the device worker that
//! drains it.

pub mod memory_cap;
pub mod queue;
pub mod select;
pub mod worker;

pub use queue::{Answer, BatchLimits, DeviceBatch, InferError, Queue};
pub use worker::{LoadedSummary, WorkerConfig, WorkerHealth};
