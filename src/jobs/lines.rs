//! One chunk of OpenAI batch input lines through the inference API at job priority, as output
//! lines.
//!
//! Input: `{"custom_id", "method":"POST", "url":"/v1/embeddings", "body":{...}}`.
//! Output: `{"id", "custom_id", "response":{"status_code","request_id","body"}, "error"}`.
//! A malformed line or a rejected request is a failed line (error file), never a failed job.
//! A line cut short by shutdown is `Interrupted`: its chunk is not committed and runs again.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::inference::error::{ApiError, ErrorKind};
use crate::inference::openai::Embeddings;
use crate::inference::Inference;
use crate::lifecycle::work::WorkGuard;
use crate::priority::Priority;

/// A raw input line and where it ends in the input file.
#[derive(Debug, Clone)]
pub struct RawLine {
    pub line_no: u64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LineOutcome {
    /// A 200 response line for the output file.
    Succeeded(String),
    /// An error line for the error file.
    Failed(String),
    /// Cut short by shutdown or a dead worker: redo the chunk after restart.
    Interrupted,
}

#[derive(Deserialize)]
struct InputLine {
    custom_id: Option<Value>,
    method: Option<String>,
    url: Option<String>,
    body: Option<Value>,
}

pub const ENDPOINTS: &[&str] = &["/v1/embeddings", "/embeddings"];

/// Processes lines concurrently (all their inputs enter the queue together) and returns one
/// outcome per line, in order.
pub async fn process(
    inference: &Inference,
    batch_id: &str,
    lines: Vec<RawLine>,
) -> Vec<LineOutcome> {
    let futures = lines
        .into_iter()
        .map(|line| process_one(inference, batch_id, line));
    futures::future::join_all(futures).await
}

async fn process_one(inference: &Inference, batch_id: &str, line: RawLine) -> LineOutcome {
    let id = format!(
        "batch_req_{}_{}",
        batch_id.trim_start_matches("batch_"),
        line.line_no
    );
    let request_id = format!(
        "req_{}_{}",
        batch_id.trim_start_matches("batch_"),
        line.line_no
    );
    let fail = |custom_id: Value, code: &str, message: String| {
        LineOutcome::Failed(
            json!({"id": id, "custom_id": custom_id, "response": null,
                   "error": {"code": code, "message": message}})
            .to_string(),
        )
    };
    let parsed: InputLine = match serde_json::from_str(&line.text) {
        Ok(p) => p,
        Err(e) => {
            return fail(
                Value::Null,
                "invalid_json",
                format!("line {}: not a JSON object: {e}", line.line_no + 1),
            )
        }
    };
    let custom_id = parsed.custom_id.unwrap_or(Value::Null);
    if !custom_id.is_string() {
        return fail(
            custom_id,
            "missing_custom_id",
            "`custom_id` must be a string".into(),
        );
    }
    if parsed
        .method
        .as_deref()
        .is_some_and(|m| !m.eq_ignore_ascii_case("POST"))
    {
        return fail(custom_id, "invalid_method", "`method` must be POST".into());
    }
    let url = parsed.url.unwrap_or_default();
    if !ENDPOINTS.contains(&url.as_str()) {
        return fail(
            custom_id,
            "invalid_url",
            format!("`url` must be /v1/embeddings, got `{url}`"),
        );
    }
    let Some(body) = parsed.body else {
        return fail(custom_id, "missing_body", "`body` is required".into());
    };
    let result = match Embeddings::from_value(body) {
        Ok(req) => req.respond(inference, Priority::Job).await,
        Err(e) => Err(e),
    };
    match result {
        Ok((body, _)) => LineOutcome::Succeeded(
            json!({"id": id, "custom_id": custom_id,
                   "response": {"status_code": 200, "request_id": request_id, "body": body},
                   "error": null})
            .to_string(),
        ),
        Err(e) if is_interruption(&e) => LineOutcome::Interrupted,
        Err(e) => {
            let status = e.status().as_u16();
            let body = error_body(e);
            LineOutcome::Failed(
                json!({"id": id, "custom_id": custom_id,
                       "response": {"status_code": status, "request_id": request_id, "body": body},
                       "error": null})
                .to_string(),
            )
        }
    }
}

/// Shutdown and worker loss are not the line's fault: it must run again.
fn is_interruption(e: &ApiError) -> bool {
    e.kind == ErrorKind::Unavailable
}

fn error_body(e: ApiError) -> Value {
    e.openai_body()
}

/// Reads up to `max` non-empty lines starting at byte `offset`; returns them (numbered from
/// `first_line_no`) and the offset just past the last one read.
pub fn read_chunk(
    path: &std::path::Path,
    offset: u64,
    first_line_no: u64,
    max: usize,
) -> std::io::Result<(Vec<RawLine>, u64)> {
    use std::io::{BufRead, Seek, SeekFrom};
    let mut f = std::io::BufReader::new(std::fs::File::open(path)?);
    f.seek(SeekFrom::Start(offset))?;
    let mut out = Vec::new();
    let mut pos = offset;
    let mut buf = Vec::new();
    while out.len() < max {
        buf.clear();
        let n = f.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        pos += n as u64;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.push(RawLine {
            line_no: first_line_no + out.len() as u64,
            text: String::from_utf8_lossy(&buf).trim_end().to_string(),
        });
    }
    Ok((out, pos))
}

/// How a run over an input file ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriveEnd {
    /// Every line is done.
    Done,
    /// Asked to stop; everything committed so far is checkpointed.
    Stopped,
    /// Shutdown cut a chunk short; it will run again.
    Interrupted,
    /// The lease moved to another replica: nothing more is written here.
    LeaseLost,
}

/// Per-commit callbacks for the two drivers (the server's runner and `spotinfer batch`).
pub trait DriveHooks {
    /// Checked before each new chunk.
    fn should_stop(&mut self) -> bool;
    /// Checked before each commit (the server renews its lease here).
    fn may_commit(&mut self) -> bool {
        true
    }
    /// After each durable commit.
    fn committed(&mut self, checkpoint: &super::store::Checkpoint, succeeded: u64, failed: u64);
    /// A guard held while a chunk is in flight (the server's drain waits for it).
    fn hold(&mut self) -> Option<WorkGuard> {
        None
    }
}

/// Runs the input file from the checkpoint to the end, `DEPTH` chunks in flight so the device
/// never idles between chunks and the queue holds enough lines to group similar lengths into
/// full batches, committing chunks in order.
pub async fn drive(
    inference: &Inference,
    batch_id: &str,
    input: &std::path::Path,
    out: &mut super::store::CheckpointedOutput,
    chunk_lines: usize,
    hooks: &mut (dyn DriveHooks + Send),
) -> Result<DriveEnd, super::store::StoreError> {
    use futures::stream::{FuturesOrdered, StreamExt};
    // 4 x 256 lines: about four 16k-token batches queued at the corpus's mean length.
    const DEPTH: usize = 4;
    let mut read_offset = out.checkpoint.input_offset;
    let mut read_line_no = out.checkpoint.lines_done;
    let mut eof = false;
    let mut stopping = false;
    let mut in_flight = FuturesOrdered::new();
    loop {
        while !eof && !stopping && in_flight.len() < DEPTH {
            if hooks.should_stop() {
                stopping = true;
                break;
            }
            let (chunk, next) = read_chunk(input, read_offset, read_line_no, chunk_lines.max(1))
                .map_err(super::store::io_err(input))?;
            if chunk.is_empty() {
                eof = true;
                break;
            }
            let n = chunk.len() as u64;
            read_offset = next;
            read_line_no += n;
            let guard = hooks.hold();
            in_flight.push_back(async move {
                let outcomes = process(inference, batch_id, chunk).await;
                drop(guard);
                (outcomes, next, n)
            });
        }
        let Some((outcomes, next, n)) = in_flight.next().await else {
            return Ok(if stopping {
                DriveEnd::Stopped
            } else {
                DriveEnd::Done
            });
        };
        if outcomes.contains(&LineOutcome::Interrupted) {
            return Ok(DriveEnd::Interrupted);
        }
        if !hooks.may_commit() {
            return Ok(DriveEnd::LeaseLost);
        }
        let mut ok_lines = String::new();
        let mut err_lines = String::new();
        let (mut ok, mut failed) = (0u64, 0u64);
        for o in outcomes {
            match o {
                LineOutcome::Succeeded(l) => {
                    ok += 1;
                    ok_lines.push_str(&l);
                    ok_lines.push('\n');
                }
                LineOutcome::Failed(l) => {
                    failed += 1;
                    // Without an error file, failed lines stay in input order in the output.
                    let target = if out.errors.is_some() {
                        &mut err_lines
                    } else {
                        &mut ok_lines
                    };
                    target.push_str(&l);
                    target.push('\n');
                }
                LineOutcome::Interrupted => {}
            }
        }
        let c = out.commit(
            ok_lines.as_bytes(),
            err_lines.as_bytes(),
            next,
            n,
            ok,
            failed,
        )?;
        hooks.committed(&c, ok, failed);
    }
}
