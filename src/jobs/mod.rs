//! Offline batch jobs that survive preemption and spread over the fleet: OpenAI-compatible
//! Files and Batches, kept in one job store under `--state-dir` (a bucket or a folder shared by
//! every replica), run through the same queue as online requests at a lower priority. A job's
//! input is cut into segments when it is validated; any replica with room claims a segment with
//! its own expiring lease and commits it chunk by chunk, each chunk by one create-only write, so
//! each `custom_id` is answered exactly once whatever kills or stalls which replica; the replica
//! that sees the last segment done assembles the output in input order. The store's keys are
//! listed in `store.rs`.
//!
//! Modules: `types` (the OpenAI objects), `blob` (the object store under `--state-dir`),
//! `store` (files, job state and indexes), `durable` (the store's errors; atomic local writes),
//! `checkpoint` and `identity` (`spotinfer batch`'s checkpoint), `lease` (lease epochs and the
//! holder's name), `segment` (plans, chunk commits), `lines` (reading and processing job
//! lines), `drive` (one range of input through the inference API into a sink), `schedule`
//! (which segment next), `coordinator` (validation, expiry, assembly, fleet gauges), `assemble`,
//! `runner` (the server's loops and lease heartbeats), `offline` (`spotinfer batch` on a local
//! output) and `fleet` (`spotinfer batch` on object URLs, as one job in the store).

pub(crate) mod assemble;
pub(crate) mod blob;
pub(crate) mod checkpoint;
pub(crate) mod coordinator;
pub(crate) mod drive;
pub(crate) mod durable;
pub(crate) mod fleet;
pub(crate) mod identity;
pub(crate) mod lease;
pub(crate) mod legacy;
pub(crate) mod lines;
pub mod offline;
pub(crate) mod runner;
pub(crate) mod schedule;
pub(crate) mod segment;
pub(crate) mod store;
pub(crate) mod types;

/// `spotinfer batch`: a job in the store when `--output` is an object URL (every process given
/// the same command joins it), else a local run with its checkpoint beside `--output`.
pub async fn batch(args: crate::config::BatchArgs) -> anyhow::Result<offline::Outcome> {
    if fleet::is_fleet(&args) {
        fleet::run(args).await
    } else {
        offline::run(args).await
    }
}

pub use durable::StoreError;
pub use runner::{JobRunner, RunnerConfig};
pub use segment::count_lines;
pub use store::JobStore;
pub use types::{BatchObject, BatchStatus, FileObject, RequestCounts};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}
