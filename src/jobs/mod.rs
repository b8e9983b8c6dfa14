//! Offline batch jobs that survive preemption and spread over the fleet: OpenAI-compatible
//! Files and Batches, stored under `--state-dir` (one volume shared by every replica), run
//! through the same queue as online requests at a lower priority. A job's input is cut into
//! segments when it is validated; any replica with room claims a segment with its own expiring
//! lease, runs it and checkpoints it after every chunk, so each `custom_id` is answered exactly
//! once whatever kills which replica; the replica that sees the last segment done assembles
//! the output in input order.
//!
//! Layout of the state dir:
//! ```text
//! files/<file-id>.json                 metadata ({"file": <OpenAI file object>, "data": <path>})
//! files/<file-id>.jsonl                uploaded content
//! batches/<batch-id>/batch.json        the OpenAI batch object (status, timestamps, counts)
//! batches/<batch-id>/batch.lock        O_EXCL lock around updates of batch.json
//! batches/<batch-id>/lease.json        who validates or assembles the job, until when
//! batches/<batch-id>/segments.json     the segment plan: byte ranges of whole lines, fixed once
//! batches/<batch-id>/segments/<n>/     one segment's runs, checkpoints and lease (segment.rs)
//! batches/<batch-id>/output.jsonl      assembled results, in input order (once finished)
//! batches/<batch-id>/errors.jsonl      assembled failed lines, in input order
//! ```
//!
//! Modules: `types` (the OpenAI objects), `store` (files and job metadata), `durable` (atomic
//! writes, fsync), `checkpoint` and `identity` (`spotinfer batch`'s checkpoint), `lease` (leases
//! and locks), `segment` (plans and the shared per-segment checkpoints), `lines` (parsing and
//! processing job lines), `drive` (one range of input through the inference API into a sink),
//! `schedule` (which segment next), `coordinator` (validation, assembly, fleet gauges),
//! `assemble`, `runner` (the server's loops) and `offline` (`spotinfer batch`).

pub(crate) mod assemble;
pub(crate) mod checkpoint;
pub(crate) mod coordinator;
pub(crate) mod drive;
pub(crate) mod durable;
pub(crate) mod identity;
pub(crate) mod lease;
pub(crate) mod lines;
pub mod offline;
pub(crate) mod runner;
pub(crate) mod schedule;
pub(crate) mod segment;
pub(crate) mod store;
pub(crate) mod types;

pub use durable::StoreError;
pub use runner::{JobRunner, RunnerConfig};
pub use store::{count_lines, JobStore};
pub use types::{BatchObject, BatchStatus, FileObject, RequestCounts};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}
