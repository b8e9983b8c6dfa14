//! spotinfer: an inference server (embeddings, rerankers, classifiers, sparse embedders) for
//! Kubernetes GPU node pools that survives spot preemption. README.md has the tour.
//!
//! # Module map
//!
//! The request path, one way through:
//!
//! ```text
//! server/ (HTTP: OpenAI, TEI, Cohere dialects)   jobs/ (Batches API, `spotinfer batch`)
//!        \                                        /
//!         inference/  validate, admit, tokenize (tokenize.rs), submit, shape outputs
//!              |
//!         batching/   queue (token budget, priorities, deadlines) -> device worker
//!              |
//!         model/      families x backends: families/ on layers.rs, run by cpu/, reference/ or cuda/
//! ```
//!
//! Who may import whom (checked by `tests/module_dag.rs`: the folders form a DAG):
//! `main`, `serve`, `bench`, `selftest` -> anything; `server` -> `inference`, `jobs`, `lifecycle`,
//! `metrics`; `jobs` -> `inference`, `lifecycle`, `metrics`; `inference` -> `batching`,
//! `tokenize`, `model`, `metrics`, `config`; `batching` -> `model`, `tokenize`, `priority`,
//! `metrics`; `tokenize` -> `priority`; `lifecycle` -> `batching` (the drain closes the queue),
//! `metrics`, `config`; `plan` -> `model`, `config`; `model` -> nothing above it (never
//! `config`: the command line is converted at `inference/start.rs`); `metrics`, `config`,
//! `priority` -> nothing; `otel` -> `config`.

// Request paths never panic on bad input: no unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod batching;
pub mod bench;
pub mod config;
pub(crate) mod inference;
pub mod jobs;
pub(crate) mod lifecycle;
pub mod metrics;
pub mod model;
pub mod otel;
pub mod plan;
pub mod priority;
pub(crate) mod protocol;
pub mod selftest;
pub mod serve;
pub(crate) mod server;
/// `(METHOD, path)` of every route of the main port, from the table the router is built from.
pub use server::routes::list as http_routes;
pub(crate) mod telemetry;
pub mod tokenize;
