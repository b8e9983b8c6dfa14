//! `spotinfer batch` with an object URL as `--output`: the run is a job in the bucket, under
//! `<output>.spotinfer/`, named by its input and output, and every process given the same
//! command joins it. Each runs the server's job engine (validation, segments claimed by lease,
//! create-only chunk commits, assembly) until the job ends, so a Kubernetes Job with
//! `parallelism: N` on spot nodes is a fleet of its own: the Job controller replaces preempted
//! pods and each new one resumes where the committed chunks end. Once the job is completed
//! every process copies the results to `<output>` (and failed lines to
//! `<output>.errors.jsonl`) — the same bytes, so it does not matter who copies last — and
//! exits 0.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::blob::is_url;
use super::offline::{start_model, Outcome};
use super::runner::{JobRunner, RunnerConfig};
use super::store::{JobSpec, JobStore};
use super::types::BatchStatus;
use crate::config::{BatchArgs, MIN_LEASE_SECS};
use crate::lifecycle::drain::OfflineWork;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

/// The metadata key that names the model a shared job runs.
const META_MODEL: &str = "spotinfer_model";

pub fn is_fleet(args: &BatchArgs) -> bool {
    args.output.to_str().is_some_and(is_url)
}

/// The job of a command: fixed by its input and output, so every process finds the same one.
fn job_id(input: &str, output: &str) -> String {
    let h = Sha256::digest(format!("{input}\n{output}").as_bytes());
    let hex: String = h.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("batch_{hex}")
}

fn model_label(args: &BatchArgs) -> String {
    format!("{}@{}", args.model.model_id, args.model.revision)
}

pub async fn run(args: BatchArgs) -> anyhow::Result<Outcome> {
    let output = args.output.to_string_lossy().to_string();
    let input = args.input.to_string_lossy().to_string();
    if args.lease_secs < MIN_LEASE_SECS {
        bail!("--lease-secs must be at least {MIN_LEASE_SECS}");
    }
    if !is_url(&input) {
        bail!(
            "--output is an object URL, so every process of the job must read the input too: \
             give --input as an object URL in the same bucket (upload {input} there first)"
        );
    }
    let state = format!("{output}.spotinfer");
    let store = JobStore::open(&state).with_context(|| format!("opening {state}"))?;
    let (Some(input_key), Some(output_key)) = (
        store.blobs().key_of_url(&input),
        store.blobs().key_of_url(&output),
    ) else {
        bail!("--input {input} is not in the bucket of --output {output}: put both in one bucket");
    };
    let id = job_id(&input, &output);
    let spec = JobSpec {
        input: input_key,
        segment_lines: args.segment_lines.max(1),
        chunk_lines: args.chunk_lines.max(1) as u64,
    };
    let metadata = BTreeMap::from([(META_MODEL.to_string(), model_label(&args))]);
    let (found, batch) = store
        .create_or_join(&id, &input, &spec, metadata)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if found.input != spec.input {
        bail!("{state} holds a job on another input: choose another --output");
    }
    let theirs = batch
        .metadata
        .as_ref()
        .and_then(|m| m.get(META_MODEL))
        .cloned()
        .unwrap_or_default();
    if theirs != model_label(&args) {
        bail!(
            "the job in {state} runs the model {theirs}, not {}: give the same model as the \
             other processes, or another --output",
            model_label(&args)
        );
    }
    tracing::info!(batch = %id, state = %state, "joined the shared batch job");
    if let Some(outcome) = deliver(&store, &id, &output_key).await? {
        return Ok(outcome);
    }

    let mut signals = crate::lifecycle::signals::stream().context("installing signal handlers")?;
    let metrics = Metrics::new();
    let inference = tokio::select! {
        started = start_model(&args, metrics.clone()) => Arc::new(started?),
        first = signals.next() => return Ok(Outcome::Interrupted(first.unwrap_or(libc::SIGTERM))),
    };
    let lifecycle = Lifecycle::new(metrics.clone());
    lifecycle.set_ready();
    let runner = JobRunner::new(
        store.clone(),
        metrics,
        lifecycle,
        RunnerConfig {
            replica: super::lease::process_name(),
            chunk_lines: args.chunk_lines,
            lease_secs: args.lease_secs,
            segment_lines: args.segment_lines,
            max_line_bytes: u64::MAX,
            // The job is this command's: kept until the user deletes the prefix.
            retention: None,
            refresh: Duration::from_secs(1),
            cost_per_hour: 0.0,
        },
    );
    tokio::spawn(runner.clone().run_coordinator());
    runner.start_slots(inference);
    loop {
        tokio::select! {
            first = signals.next() => {
                // Chunks in flight are committed, leases released: another process (or this
                // command run again) resumes at once.
                let jobs = runner.checkpoint(false).await;
                tracing::info!(batch = %id, jobs, "stopped; the job resumes when any process runs this command");
                return Ok(Outcome::Interrupted(first.unwrap_or(libc::SIGTERM)));
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Some(outcome) = deliver(&store, &id, &output_key).await? {
            runner.checkpoint(true).await;
            return Ok(outcome);
        }
    }
}

/// Once the job has ended: copies its results to the output (completed), or says why not.
/// None while it runs.
async fn deliver(store: &JobStore, id: &str, output_key: &str) -> anyhow::Result<Option<Outcome>> {
    let b = store.batch(id).await?;
    match b.status {
        BatchStatus::Completed => {}
        s if s.is_active() => return Ok(None),
        s => bail!(
            "the batch job {id} ended {}: {}",
            s.as_str(),
            b.errors.map(|e| e.to_string()).unwrap_or_default()
        ),
    }
    let blobs = store.blobs();
    let errors_key = format!("{output_key}.errors.jsonl");
    for (file, to) in [
        (&b.output_file_id, output_key),
        (&b.error_file_id, &errors_key),
    ] {
        if let Some(file) = file {
            let from = store.file_key(file).await?;
            blobs.copy(&from, to).await?;
        }
    }
    tracing::info!(
        batch = %id,
        completed = b.request_counts.completed,
        failed = b.request_counts.failed,
        output = %blobs.describe(output_key),
        "batch complete"
    );
    Ok(Some(Outcome::Complete))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_names_one_job() {
        let a = job_id("s3://b/in.jsonl", "s3://b/out.jsonl");
        assert_eq!(a, job_id("s3://b/in.jsonl", "s3://b/out.jsonl"));
        assert_ne!(a, job_id("s3://b/in2.jsonl", "s3://b/out.jsonl"));
        assert!(super::super::types::valid_id(&a, "batch_"), "{a}");
    }
}
