//! `spotinfer batch`: the same inference API and chunk driver without a server, the whole input
//! as one range. Reads OpenAI batch lines, writes one output line per input line (results and
//! errors in input order), and keeps `<output>.ckpt` beside the output so running the same
//! command again after Ctrl-C, SIGTERM or SIGKILL resumes where the last checkpoint left off.
//! The checkpoint records the input and the model too: a rerun with another input or model and
//! the same `--output` is refused (exit 1, saying what differs), never resumed or reported
//! complete (checkpoint.rs).
//!
//! The first Ctrl-C or SIGTERM stops at once: chunks already finished are committed, the rest
//! are dropped (their lines run again on resume), and the command to resume is printed. A
//! second signal exits on the spot; the checkpoint is as safe as after a SIGKILL.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use signal_hook::consts::SIGTERM;
use tokio_util::sync::CancellationToken;

use super::checkpoint::Resumable;
use super::drive::{self, ChunkResult, DriveEnd, DriveHooks, LineDone, Position};
use super::identity::{LoadedModel, ModelRequest};
use crate::batching::{BatchLimits, Queue};
use crate::config::BatchArgs;
use crate::inference::{self, RequestLimits, StartOptions};
use crate::metrics::Metrics;

/// Exit status after SIGTERM and a checkpoint: 75, EX_TEMPFAIL (try again), as it always was,
/// so Kubernetes Job policies that match it keep working.
pub const EXIT_SIGTERM: u8 = 75;
/// Exit status after Ctrl-C and a checkpoint: 128 + SIGINT, what shells expect.
pub const EXIT_SIGINT: u8 = 130;

/// Lines a run keeps queued (chunks in flight x chunk lines): as deep as four chunks of 256,
/// so the device still gets full batches of similar lengths with smaller chunks.
const IN_FLIGHT_LINES: usize = 1024;

/// How the command ended, for its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    /// Stopped by this signal after checkpointing; run again to resume.
    Interrupted(i32),
}

impl Outcome {
    /// The exit status `spotinfer batch --help` documents (`config::BATCH_AFTER_HELP`).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Complete => 0,
            Self::Interrupted(SIGTERM) => EXIT_SIGTERM,
            Self::Interrupted(_) => EXIT_SIGINT,
        }
    }
}

/// Exit status of the second signal, which quits at once: 128 + its number.
fn immediate_exit_code(signal: i32) -> i32 {
    128 + signal
}

/// The first signal: cancels the run, and remembers which signal it was.
#[derive(Clone, Default)]
struct Stop {
    token: CancellationToken,
    signal: Arc<AtomicI32>,
}

impl Stop {
    fn by(&self) -> Option<i32> {
        self.token
            .is_cancelled()
            .then(|| self.signal.load(Ordering::Acquire))
    }
}

struct Hooks {
    stop: Stop,
    bar: ProgressBar,
}

impl DriveHooks for Hooks {
    fn should_stop(&mut self) -> bool {
        self.stop.token.is_cancelled()
    }

    fn committed(&mut self, _at: &Position, _chunk: &ChunkResult) {}

    fn chunks_in_flight(&self, chunk_lines: usize) -> usize {
        IN_FLIGHT_LINES
            .div_ceil(chunk_lines.max(1))
            .clamp(drive::DEPTH, 64)
    }

    fn on_line(&mut self) -> Option<LineDone> {
        let bar = self.bar.clone();
        let failed = AtomicU64::new(0);
        Some(Arc::new(move |ok| {
            bar.inc(1);
            if !ok {
                let n = failed.fetch_add(1, Ordering::Relaxed) + 1;
                bar.set_message(format!("{n} failed"));
            }
        }))
    }

    fn abandon(&mut self) -> Option<CancellationToken> {
        Some(self.stop.token.clone())
    }
}

pub fn checkpoint_path(output: &std::path::Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".ckpt");
    PathBuf::from(name)
}

/// Lines per second in this run: lines done before it (a resume) are not counted.
fn run_rate(start: u64, pos: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    let done = pos.saturating_sub(start);
    (done > 0 && secs > 0.0).then(|| done as f64 / secs)
}

/// Lines this run must have done before the bar shows a rate: the first device batch of a run
/// is often a handful of lines (whatever was queued when the device got free), too few to
/// predict the big batches after it.
const MIN_LINES_FOR_RATE: u64 = 32;

/// The rate the bar shows: none until this run has done enough lines to tell.
fn shown_rate(start: u64, pos: u64, elapsed: Duration) -> Option<f64> {
    if pos.saturating_sub(start) < MIN_LINES_FOR_RATE {
        return None;
    }
    run_rate(start, pos, elapsed)
}

/// Time left at this run's rate.
fn eta(start: u64, pos: u64, len: u64, elapsed: Duration) -> Option<Duration> {
    let rate = shown_rate(start, pos, elapsed)?;
    Some(Duration::from_secs_f64(
        len.saturating_sub(pos) as f64 / rate,
    ))
}

/// The bar's style: `{rate}` and `{left}` count this run's lines only, so a resumed run shows
/// its true speed and ETA (indicatif's own estimate would count the resumed position as done
/// in the first instant).
fn bar_style(start: u64) -> ProgressStyle {
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} lines {rate} ETA {left} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    style
        .with_key(
            "rate",
            move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = match shown_rate(start, s.pos(), s.elapsed()) {
                    Some(r) => write!(w, "{r:.1}/s"),
                    None => write!(w, "-/s"),
                };
            },
        )
        .with_key(
            "left",
            move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let left = s
                    .len()
                    .and_then(|len| eta(start, s.pos(), len, s.elapsed()));
                let _ = match left {
                    Some(d) => write!(w, "{:#}", HumanDuration(d)),
                    None => write!(w, "-"),
                };
            },
        )
}

/// One argument as a POSIX shell reads it back: bare when that is safe, else single-quoted.
fn shell_quote(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The command line this process was started with, to paste back into a shell (the flags
/// read from the environment come from the same environment again).
fn command_line(args: impl IntoIterator<Item = OsString>) -> String {
    args.into_iter()
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Says where the run stopped and how to resume it.
fn report_stop(bar: &ProgressBar, json: bool, line: u64, total: u64, ckpt: &std::path::Path) {
    let resume = command_line(std::env::args_os());
    bar.suspend(|| {
        if json {
            tracing::info!(line, total, checkpoint = %ckpt.display(), resume = %resume,
                           "stopped; run the resume command to go on");
        } else {
            eprintln!(
                "Stopped after {line} of {total} lines, checkpointed in {}. To resume, run:\n  {resume}",
                ckpt.display()
            );
        }
    });
}

/// Listens for SIGINT and SIGTERM: the first cancels `stop`, the second exits at once.
fn watch_signals(stop: Stop, bar: ProgressBar, ckpt: PathBuf, json: bool) -> anyhow::Result<()> {
    use crate::lifecycle::signals;
    // The raw stream: a second signal that came with the first is ready without a yield, so
    // this task exits before the first one's stop can end the process another way.
    let mut signals = signals::stream().context("installing signal handlers")?;
    tokio::spawn(async move {
        let Some(first) = signals.next().await else {
            return;
        };
        stop.signal.store(first, Ordering::Release);
        stop.token.cancel();
        bar.suspend(|| {
            tracing::info!(
                signal = signals::name(first),
                "stopping: committing the chunks already finished (a second signal quits at once)"
            )
        });
        if let Some(second) = signals.next().await {
            bar.abandon();
            let resume = command_line(std::env::args_os());
            // Nothing to wait for: a commit cut short here is what a SIGKILL leaves, and the
            // checkpoint never points past what is durably written.
            if json {
                tracing::warn!(checkpoint = %ckpt.display(), resume = %resume,
                               "quitting at once; the last checkpoint stands");
            } else {
                eprintln!(
                    "\nQuitting at once; the last checkpoint ({}) stands. To resume, run:\n  {resume}",
                    ckpt.display()
                );
            }
            std::process::exit(immediate_exit_code(second));
        }
    });
    Ok(())
}

/// Loads the model for a batch run: the queue sized for offline work (nothing to protect
/// from waiting, no online lane to yield to) and requests as large as OpenAI allows.
pub(crate) async fn start_model(
    args: &BatchArgs,
    metrics: Arc<Metrics>,
) -> Result<inference::Inference, inference::start::StartError> {
    let limits = BatchLimits {
        max_batch_tokens: args
            .max_batch_tokens
            .unwrap_or(crate::config::DEFAULT_MAX_BATCH_TOKENS),
        max_batch_requests: usize::MAX,
        max_queue_time: Duration::from_secs(86_400),
        job_slice: Duration::from_secs(3600),
    };
    let queue = Queue::new(limits, metrics.clone());
    inference::start(
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
            test_batch_delay: Duration::from_millis(args.test_batch_delay_ms),
            progress: !args.no_progress,
            long_warm_up: false,
        },
        queue,
        metrics,
    )
    .await
}

/// `spotinfer batch` on a local output file, with its checkpoint beside it.
pub async fn run(args: BatchArgs) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let json = args.model.json_output;
    let ckpt = checkpoint_path(&args.output);
    // Shown once the model is loaded; made now so a second signal can clear it from the start.
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    let stop = Stop::default();
    watch_signals(stop.clone(), bar.clone(), ckpt.clone(), json)?;

    let input = args.input.clone();
    let total = tokio::task::spawn_blocking(move || super::count_lines(&input))
        .await?
        .with_context(|| format!("reading {}", args.input.display()))?;
    let request = ModelRequest::from_args(&args.model)?;
    let (output, ckpt_path, input) = (args.output.clone(), ckpt.clone(), args.input.clone());
    // Refuses another run's checkpoint before anything is loaded or written; its errors say
    // what to do themselves (restore the output, delete the checkpoint, another --output).
    let resumable = tokio::task::spawn_blocking(move || {
        Resumable::check(output, None, ckpt_path, &input, request)
    })
    .await??;
    let done_before = resumable.checkpoint.lines_done;
    if done_before >= total {
        tokio::task::spawn_blocking(move || resumable.settle()).await??;
        tracing::info!(lines = total, output = %args.output.display(), "already complete");
        return Ok(Outcome::Complete);
    }
    if done_before > 0 {
        tracing::info!(line = done_before, total, "resuming from the checkpoint");
    }
    if let Some(signal) = stop.by() {
        report_stop(&bar, json, done_before, total, &ckpt);
        return Ok(Outcome::Interrupted(signal));
    }

    let starting = start_model(&args, Metrics::new());
    // A download or a model load is not worth waiting for once asked to stop.
    let inference = tokio::select! {
        started = starting => started?,
        () = stop.token.cancelled() => {
            report_stop(&bar, json, done_before, total, &ckpt);
            return Ok(Outcome::Interrupted(stop.signal.load(Ordering::Acquire)));
        }
    };

    // The same flags can load another model (a moved Hub branch, a folder with new contents,
    // another default dtype on another device): checked before the output is touched.
    let loaded = LoadedModel::of(&inference.info, &args.model);
    resumable.check_model(&loaded)?;
    let out = tokio::task::spawn_blocking(move || resumable.open(loaded)).await??;

    bar.set_length(total);
    bar.set_style(bar_style(done_before));
    bar.set_position(done_before);
    // Elapsed time, rate and ETA are this run's, from here.
    bar.reset_elapsed();
    if !args.no_progress {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.enable_steady_tick(Duration::from_millis(250));
    }
    let mut hooks = Hooks {
        stop: stop.clone(),
        bar: bar.clone(),
    };
    let run_started = Instant::now();
    let (end, c) = drive::drive(
        &inference,
        "batch_offline",
        &drive::Input::File(args.input.clone()),
        u64::MAX,
        Box::new(out),
        args.chunk_lines,
        &mut hooks,
    )
    .await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let rate = run_rate(done_before, c.line_no, run_started.elapsed()).unwrap_or(0.0);
    match (end, stop.by()) {
        (DriveEnd::Done, _) => {
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
        (_, Some(signal)) => {
            report_stop(&bar, json, c.line_no, total, &ckpt);
            Ok(Outcome::Interrupted(signal))
        }
        (end, None) => anyhow::bail!(
            "the device worker stopped ({end:?}) at line {} of {total}; what is done is \
             checkpointed in {}: run the same command again to resume",
            c.line_no,
            ckpt.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signal_hook::consts::SIGINT;

    #[test]
    fn exit_codes_match_the_help() {
        assert_eq!(Outcome::Complete.exit_code(), 0);
        assert_eq!(Outcome::Interrupted(SIGINT).exit_code(), 130);
        assert_eq!(Outcome::Interrupted(SIGTERM).exit_code(), 75);
        assert_eq!(immediate_exit_code(SIGINT), 130);
        assert_eq!(immediate_exit_code(SIGTERM), 143);
        let help = crate::config::BATCH_AFTER_HELP;
        for (code, what) in [
            (Outcome::Complete.exit_code(), "every line done"),
            (1, "error"),
            (2, "invalid command line"),
            (
                Outcome::Interrupted(SIGTERM).exit_code(),
                "stopped by SIGTERM",
            ),
            (
                Outcome::Interrupted(SIGINT).exit_code(),
                "stopped by Ctrl-C",
            ),
        ] {
            let row = format!("\n  {code:<4} {what}");
            assert!(help.contains(&row), "help lists `{row}`: {help}");
        }
        assert!(help.contains(&format!(
            "({} for Ctrl-C, {} for SIGTERM)",
            immediate_exit_code(SIGINT),
            immediate_exit_code(SIGTERM)
        )));
    }

    #[test]
    fn rate_and_eta_count_this_run_only() {
        // Resumed at 9,000 of 10,000; 100 lines in 10 s this run: 10/s, 90 s left.
        let ten = Duration::from_secs(10);
        assert_eq!(run_rate(9_000, 9_100, ten), Some(10.0));
        assert_eq!(
            eta(9_000, 9_100, 10_000, ten),
            Some(Duration::from_secs(90))
        );
        // Nothing done yet in this run: no rate, no ETA (not the resumed position over 0 s).
        assert_eq!(run_rate(9_000, 9_000, ten), None);
        assert_eq!(eta(9_000, 9_000, 10_000, ten), None);
        assert_eq!(run_rate(0, 5, Duration::ZERO), None);
        // A first handful of lines gives no estimate yet.
        assert_eq!(run_rate(9_000, 9_003, ten), Some(0.3));
        assert_eq!(shown_rate(9_000, 9_003, ten), None);
        assert_eq!(eta(9_000, 9_003, 10_000, ten), None);
        assert_eq!(shown_rate(9_000, 9_100, ten), Some(10.0));
    }

    #[test]
    fn chunks_in_flight_keep_the_queue_as_deep() {
        let hooks = Hooks {
            stop: Stop::default(),
            bar: ProgressBar::hidden(),
        };
        assert_eq!(hooks.chunks_in_flight(64), 16);
        assert_eq!(hooks.chunks_in_flight(256), drive::DEPTH);
        assert_eq!(hooks.chunks_in_flight(4096), drive::DEPTH);
        assert_eq!(hooks.chunks_in_flight(1), 64);
        assert_eq!(hooks.chunks_in_flight(0), 64);
    }

    #[test]
    fn per_line_progress_moves_the_bar_and_counts_failures() {
        let bar = ProgressBar::with_draw_target(Some(10), ProgressDrawTarget::hidden());
        let mut hooks = Hooks {
            stop: Stop::default(),
            bar: bar.clone(),
        };
        let Some(tell) = hooks.on_line() else {
            panic!("offline runs report lines");
        };
        tell(true);
        tell(false);
        tell(true);
        assert_eq!(bar.position(), 3);
        assert_eq!(bar.message(), "1 failed");
    }

    #[test]
    fn resume_command_survives_the_shell() {
        assert_eq!(shell_quote("--input"), "--input");
        assert_eq!(shell_quote("/data/in.jsonl"), "/data/in.jsonl");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("my file"), "'my file'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        let args = [
            "spotinfer",
            "batch",
            "--output",
            "a b/it's.jsonl",
            "--x",
            "*",
        ];
        let line = command_line(args.iter().map(OsString::from));
        assert_eq!(
            line,
            r"spotinfer batch --output 'a b/it'\''s.jsonl' --x '*'"
        );
        // The shell gives back the same words.
        let echoed = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\n' {}", &line["spotinfer ".len()..]))
            .output()
            .unwrap();
        let words: Vec<String> = String::from_utf8(echoed.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(words, args[1..]);
    }

    #[test]
    fn stop_remembers_the_first_signal() {
        let stop = Stop::default();
        assert_eq!(stop.by(), None);
        stop.signal.store(SIGINT, Ordering::Release);
        stop.token.cancel();
        assert_eq!(stop.by(), Some(SIGINT));
        assert_eq!(Outcome::Interrupted(SIGINT).exit_code(), EXIT_SIGINT);
    }
}
