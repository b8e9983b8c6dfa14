//! `spotinfer batch`: the same inference API and chunk driver without a server, the whole input
//! as one range. Reads OpenAI batch lines, writes one output line per input line (results and
//! errors in input order), and keeps `<output>.ckpt` beside the output so running the same
//! command again after SIGTERM or SIGKILL resumes where the last checkpoint left off.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::drive::{self, ChunkResult, DriveEnd, DriveHooks, Position};
use super::durable::CheckpointedOutput;
use crate::batching::{BatchLimits, Queue};
use crate::config::BatchArgs;
use crate::inference::{self, RequestLimits, StartOptions};
use crate::metrics::Metrics;

/// How the command ended, for its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    /// Stopped by a signal after checkpointing; run again to resume.
    Interrupted,
}

struct Hooks {
    stop: Arc<AtomicBool>,
    bar: ProgressBar,
}

impl DriveHooks for Hooks {
    fn should_stop(&mut self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn committed(&mut self, at: &Position, _chunk: &ChunkResult) {
        self.bar.set_position(at.line_no);
        self.bar
            .set_message(format!("{} ok, {} failed", at.completed, at.failed));
    }
}

pub fn checkpoint_path(output: &std::path::Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".ckpt");
    PathBuf::from(name)
}

pub async fn run(args: BatchArgs) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let input = args.input.clone();
    let total = tokio::task::spawn_blocking(move || super::count_lines(&input))
        .await?
        .with_context(|| format!("reading {}", args.input.display()))?;
    let ckpt = checkpoint_path(&args.output);
    let output = args.output.clone();
    // Its errors say what to do themselves (restore the output, or delete the checkpoint).
    let out =
        tokio::task::spawn_blocking(move || CheckpointedOutput::open_or_resume(output, None, ckpt))
            .await??;
    let done_before = out.checkpoint.lines_done;
    if done_before >= total {
        tracing::info!(lines = total, output = %args.output.display(), "already complete");
        return Ok(Outcome::Complete);
    }
    if done_before > 0 {
        tracing::info!(line = done_before, total, "resuming from the checkpoint");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = crate::lifecycle::signals::listen().context("installing signal handlers")?;
    let stop_on_signal = stop.clone();
    tokio::spawn(async move {
        if signals.recv().await.is_some() {
            tracing::info!(
                "stopping after the chunks in flight; run the same command again to resume"
            );
            stop_on_signal.store(true, Ordering::Release);
        }
    });

    let metrics = Metrics::new();
    let limits = BatchLimits {
        max_batch_tokens: args
            .max_batch_tokens
            .unwrap_or(crate::config::DEFAULT_MAX_BATCH_TOKENS),
        max_batch_requests: usize::MAX,
        // Offline: nothing to protect from waiting, and no online lane to yield to.
        max_queue_time: Duration::from_secs(86_400),
        job_slice: Duration::from_secs(3600),
    };
    let queue = Queue::new(limits, metrics.clone());
    let inference = inference::start(
        StartOptions {
            model: args.model.clone(),
            served_model_name: None,
            limits,
            explicit_budget: args.max_batch_tokens.is_some(),
            request_limits: RequestLimits {
                // Offline lines may carry as many inputs as OpenAI allows in one request.
                max_client_batch_size: 2048,
                auto_truncate: true,
            },
            max_concurrent_requests: usize::MAX,
            tokenization_workers: (num_cpus::get() / 4).max(1),
            test_batch_delay: Duration::ZERO,
            progress: !args.no_progress,
            long_warm_up: false,
        },
        queue,
        metrics,
    )
    .await?;

    let bar = if args.no_progress {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} lines {per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(done_before);
    bar.reset_eta();
    let mut hooks = Hooks {
        stop,
        bar: bar.clone(),
    };
    let (end, c) = drive::drive(
        &inference,
        "batch_offline",
        &args.input,
        u64::MAX,
        Box::new(out),
        args.chunk_lines,
        &mut hooks,
    )
    .await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let rate = (c.line_no - done_before) as f64 / secs.max(1e-9);
    match end {
        DriveEnd::Done => {
            tracing::info!(
                lines = c.line_no,
                completed = c.completed,
                failed = c.failed,
                seconds = format!("{secs:.1}"),
                lines_per_second = format!("{rate:.1}"),
                output = %args.output.display(),
                "batch complete"
            );
            Ok(Outcome::Complete)
        }
        _ => {
            tracing::info!(
                line = c.line_no,
                total,
                "checkpointed; run the same command again to resume"
            );
            Ok(Outcome::Interrupted)
        }
    }
}
