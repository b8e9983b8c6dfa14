//! Runs one range of an input file (a job's segment, or a whole `spotinfer batch` input) chunk
//! by chunk through the inference API, committing each chunk's lines to a [`Sink`] in order.
//! All file I/O runs on blocking threads, never on an async worker.

use std::path::PathBuf;

use futures::stream::{FuturesOrdered, StreamExt};
use tokio_util::sync::CancellationToken;

use super::blob::Blobs;
use super::durable::{io_err, StoreError};
pub use super::lines::LineDone;
use super::lines::{self, LineOutcome};
use crate::inference::Inference;
use crate::lifecycle::work::WorkGuard;

/// Where a run reads its lines: a local file (`spotinfer batch`) or an object of the job store.
#[derive(Debug, Clone)]
pub enum Input {
    File(PathBuf),
    Object {
        blobs: Blobs,
        key: String,
        /// Longest line read (the online body limit); longer ones fail.
        max_line: u64,
    },
}

impl Input {
    async fn read_chunk(
        &self,
        offset: u64,
        end: u64,
        line_no: u64,
        max: usize,
    ) -> Result<(Vec<lines::RawLine>, u64), StoreError> {
        match self {
            Input::File(path) => {
                let p = path.clone();
                blocking(move || lines::read_chunk(&p, offset, end, line_no, max))
                    .await?
                    .map_err(io_err(path))
            }
            Input::Object {
                blobs,
                key,
                max_line,
            } => lines::read_object_chunk(blobs, key, offset, end, line_no, max, *max_line).await,
        }
    }
}

/// Where a run stands: the next input byte and line, and the totals so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Position {
    pub input_offset: u64,
    /// Number (from 0, over the whole input) of the line at `input_offset`.
    pub line_no: u64,
    pub completed: u64,
    pub failed: u64,
    pub device_seconds: f64,
}

/// One chunk's results, ready to commit.
#[derive(Debug, Clone, Default)]
pub struct ChunkResult {
    pub output: Vec<u8>,
    pub errors: Vec<u8>,
    pub next_offset: u64,
    pub lines: u64,
    pub completed: u64,
    pub failed: u64,
    pub device_seconds: f64,
}

pub enum Commit {
    Done(Position),
    /// Another replica holds the work now: nothing was written.
    LeaseLost,
}

/// Durable, ordered destination of a run's results.
pub trait Sink: Send + 'static {
    fn position(&self) -> Position;
    /// Failed lines go to their own file (else into the output, in input order).
    fn separate_errors(&self) -> bool;
    /// Writes the chunk durably (blocking I/O: called on a blocking thread).
    fn commit(&mut self, chunk: &ChunkResult) -> Result<Commit, StoreError>;
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriveEnd {
    /// Every line is done.
    Done,
    /// Asked to stop; everything committed so far is checkpointed.
    Stopped,
    /// Shutdown cut a chunk short; it will run again.
    Interrupted,
    /// The work moved to another replica: nothing more is written here.
    LeaseLost,
}

/// Per-chunk callbacks for the two drivers (the server's runner and `spotinfer batch`). They
/// run on the async thread: memory only, no I/O.
pub trait DriveHooks {
    /// Checked before each new chunk.
    fn should_stop(&mut self) -> bool;
    /// After each durable commit.
    fn committed(&mut self, at: &Position, chunk: &ChunkResult);
    /// A guard held while a chunk is in flight (the server's drain waits for it).
    fn hold(&mut self) -> Option<WorkGuard> {
        None
    }
    /// Chunks run at once; together they are the lines waiting in the device queue.
    fn chunks_in_flight(&self, _chunk_lines: usize) -> usize {
        DEPTH
    }
    /// Told of each line as its result arrives (asked once per run).
    fn on_line(&mut self) -> Option<LineDone> {
        None
    }
    /// Once this is cancelled the run stops at once: chunks already finished are committed in
    /// order, the rest are dropped (their lines run again on resume) instead of awaited.
    /// Without it (the server, which drains) a stop waits for the chunks in flight.
    fn abandon(&mut self) -> Option<CancellationToken> {
        None
    }
}

/// Default chunks in flight: enough that the device never idles between one chunk's end and
/// the next one's lines reaching the queue.
pub const DEPTH: usize = 4;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))
}

/// Runs `input` from the sink's position to `end` (a line boundary; `u64::MAX` for the end of
/// the file), several chunks in flight ([`DriveHooks::chunks_in_flight`]) so the device never
/// idles between chunks and the queue holds enough lines to group similar lengths into full
/// batches, committing chunks in order. Returns how it ended and where it stands.
#[allow(clippy::too_many_arguments)]
pub async fn drive(
    inference: &Inference,
    batch_id: &str,
    input: &Input,
    end: u64,
    sink: Box<dyn Sink>,
    chunk_lines: usize,
    hooks: &mut (dyn DriveHooks + Send),
) -> Result<(DriveEnd, Position), StoreError> {
    let depth = hooks.chunks_in_flight(chunk_lines).max(1);
    let on_line = hooks.on_line();
    let abandon = hooks.abandon();
    let mut sink = Some(sink);
    let mut at = sink.as_ref().map(|s| s.position()).unwrap_or_default();
    let separate_errors = sink.as_ref().is_some_and(|s| s.separate_errors());
    let mut read_offset = at.input_offset;
    let mut read_line_no = at.line_no;
    let mut eof = false;
    let mut stopping = false;
    let mut in_flight = FuturesOrdered::new();
    loop {
        while !eof && !stopping && in_flight.len() < depth {
            if hooks.should_stop() {
                stopping = true;
                break;
            }
            let (chunk, next) = input
                .read_chunk(read_offset, end, read_line_no, chunk_lines.max(1))
                .await?;
            if chunk.is_empty() {
                eof = true;
                break;
            }
            let n = chunk.len() as u64;
            read_offset = next;
            read_line_no += n;
            let guard = hooks.hold();
            let on_line = on_line.clone();
            in_flight.push_back(async move {
                let (outcomes, device) =
                    lines::process(inference, batch_id, chunk, on_line.as_ref()).await;
                drop(guard);
                (outcomes, device, next, n)
            });
        }
        let next = match &abandon {
            // Biased: a finished chunk is committed before the stop is looked at.
            Some(token) => tokio::select! {
                biased;
                next = in_flight.next() => next,
                () = token.cancelled() => return Ok((DriveEnd::Stopped, at)),
            },
            None => in_flight.next().await,
        };
        let Some((outcomes, device, next, n)) = next else {
            let end = if stopping {
                DriveEnd::Stopped
            } else {
                DriveEnd::Done
            };
            return Ok((end, at));
        };
        if outcomes.contains(&LineOutcome::Interrupted) {
            return Ok((DriveEnd::Interrupted, at));
        }
        let chunk = render(outcomes, separate_errors, next, n, device.as_secs_f64());
        let Some(mut s) = sink.take() else {
            return Ok((DriveEnd::Stopped, at));
        };
        let (s, result, chunk) = blocking(move || {
            let r = s.commit(&chunk);
            (s, r, chunk)
        })
        .await?;
        sink = Some(s);
        match result? {
            Commit::Done(p) => {
                at = p;
                hooks.committed(&at, &chunk);
            }
            Commit::LeaseLost => return Ok((DriveEnd::LeaseLost, at)),
        }
    }
}

/// One chunk's outcomes as output and error bytes.
fn render(
    outcomes: Vec<LineOutcome>,
    separate_errors: bool,
    next_offset: u64,
    lines: u64,
    device_seconds: f64,
) -> ChunkResult {
    let mut c = ChunkResult {
        next_offset,
        lines,
        device_seconds,
        ..ChunkResult::default()
    };
    for o in outcomes {
        let (target, text) = match o {
            LineOutcome::Succeeded(l) => {
                c.completed += 1;
                (&mut c.output, l)
            }
            LineOutcome::Failed(l) => {
                c.failed += 1;
                // Without an error file, failed lines stay in input order in the output.
                let t = if separate_errors {
                    &mut c.errors
                } else {
                    &mut c.output
                };
                (t, l)
            }
            LineOutcome::Interrupted => continue,
        };
        target.extend_from_slice(text.as_bytes());
        target.push(b'\n');
    }
    c
}
