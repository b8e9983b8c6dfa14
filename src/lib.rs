//! spotinfer: an embedding inference server for Kubernetes GPU node pools that survives spot
//! preemption. See README.md for the tour and DESIGN notes in each module.

pub mod batching;
pub mod bench;
pub mod config;
pub mod engine;
pub mod jobs;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod serve;
pub mod server;
pub mod telemetry;
pub mod tokenize;
