//! Job lines: parsing OpenAI batch input lines, running a chunk of them through the inference
//! API at job priority, and rendering their output lines.
//!
//! Input: `{"custom_id", "method":"POST", "url":"/v1/embeddings", "body":{...}}`.
//! Output: `{"id", "custom_id", "response":{"status_code","request_id","body"}, "error"}`.
//! A malformed line or a rejected request is a failed line (error file), never a failed job.
//! A line cut short by shutdown is `Interrupted`: its chunk is not committed and runs again.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::inference::error::{ApiError, ErrorKind};
use crate::inference::Inference;
use crate::priority::Priority;
use crate::protocol::errors::ErrorBodies;
use crate::protocol::openai::Embeddings;

/// A raw input line and where it ends in the input file.
#[derive(Debug, Clone)]
pub struct RawLine {
    pub line_no: u64,
    pub text: String,
    /// The line was longer than the largest request body (this many bytes): it was skipped
    /// unread and fails.
    pub too_long: Option<u64>,
}

/// Bytes fetched per ranged read of an object input.
const READ_WINDOW: u64 = 1 << 20;

/// Reads up to `max` non-empty lines of an object from byte `offset` to `end` (a line
/// boundary) in ranged reads. A line may be as large as an online request body (`max_line`);
/// a longer one is skipped without being held in memory and fails with a clear error.
pub async fn read_object_chunk(
    blobs: &crate::jobs::blob::Blobs,
    key: &str,
    offset: u64,
    end: u64,
    first_line_no: u64,
    max: usize,
    max_line: u64,
) -> Result<(Vec<RawLine>, u64), crate::jobs::StoreError> {
    let mut out = Vec::new();
    // `pos`: start of the line in `buf`; `read`: next byte to fetch.
    let (mut pos, mut read) = (offset, offset);
    let mut buf: Vec<u8> = Vec::new();
    // Bytes of an over-long line skipped so far (its start is `pos`).
    let mut skipping: Option<u64> = None;
    while out.len() < max && pos < end {
        if read >= end {
            // The input's last line has no newline.
            push_line(
                &mut out,
                first_line_no,
                &buf,
                skipping.map(|n| n + buf.len() as u64),
            );
            pos = end;
            break;
        }
        let bytes = blobs
            .get_range(key, read..end.min(read + READ_WINDOW))
            .await?;
        if bytes.is_empty() {
            return Err(crate::jobs::StoreError::Corrupt {
                path: blobs.describe(key),
                reason: format!(
                    "it ends before byte {end}: the input changed after the job was validated"
                ),
            });
        }
        read += bytes.len() as u64;
        buf.extend_from_slice(&bytes);
        let mut start = 0;
        while out.len() < max {
            let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') else {
                break;
            };
            let line = &buf[start..start + nl + 1];
            let len = skipping.take().map(|n| n + line.len() as u64);
            pos += line.len() as u64;
            push_line(&mut out, first_line_no, line, len);
            start += nl + 1;
        }
        buf.drain(..start);
        if out.len() < max && (skipping.is_some() || buf.len() as u64 > max_line) {
            // Too long to hold: count it, drop what is buffered, and read on to its end.
            skipping = Some(skipping.unwrap_or(0) + buf.len() as u64);
            pos += buf.len() as u64;
            buf.clear();
        }
    }
    Ok((out, pos))
}

/// Adds a line unless it is blank; `skipped`: the whole length of an over-long line.
fn push_line(out: &mut Vec<RawLine>, first_line_no: u64, line: &[u8], skipped: Option<u64>) {
    if skipped.is_none() && line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    out.push(RawLine {
        line_no: first_line_no + out.len() as u64,
        text: match skipped {
            Some(_) => String::new(),
            None => String::from_utf8_lossy(line).trim_end().to_string(),
        },
        too_long: skipped,
    });
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

/// Told of each line as its result arrives (`true`: succeeded), before its chunk is done: for
/// a progress bar that moves with the device batches. Runs inside the chunk's future, so it
/// must be quick and must not block.
pub type LineDone = Arc<dyn Fn(bool) + Send + Sync>;

/// Processes lines concurrently (all their inputs enter the queue together) and returns one
/// outcome per line, in order, with the device time their inputs took.
pub async fn process(
    inference: &Inference,
    batch_id: &str,
    lines: Vec<RawLine>,
    on_line: Option<&LineDone>,
) -> (Vec<LineOutcome>, Duration) {
    let futures = lines.into_iter().map(|line| async move {
        let done = process_one(inference, batch_id, line).await;
        if let Some(tell) = on_line {
            match done.0 {
                LineOutcome::Succeeded(_) => tell(true),
                LineOutcome::Failed(_) => tell(false),
                // Not done: its chunk runs again.
                LineOutcome::Interrupted => {}
            }
        }
        done
    });
    let done = futures::future::join_all(futures).await;
    let device = done.iter().map(|(_, d)| *d).sum();
    (done.into_iter().map(|(o, _)| o).collect(), device)
}

async fn process_one(
    inference: &Inference,
    batch_id: &str,
    line: RawLine,
) -> (LineOutcome, Duration) {
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
        let line = json!({"id": id, "custom_id": custom_id, "response": null,
                          "error": {"code": code, "message": message}});
        (LineOutcome::Failed(line.to_string()), Duration::ZERO)
    };
    if let Some(n) = line.too_long {
        return fail(
            Value::Null,
            "line_too_long",
            format!(
                "line {}: {n} bytes, over the server's request body limit \
                 (--payload-limit); split its input into several lines",
                line.line_no + 1
            ),
        );
    }
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
        Ok((body, timings)) => (
            LineOutcome::Succeeded(
                json!({"id": id, "custom_id": custom_id,
                       "response": {"status_code": 200, "request_id": request_id, "body": body},
                       "error": null})
                .to_string(),
            ),
            timings.device,
        ),
        Err(e) if is_interruption(&e) => (LineOutcome::Interrupted, Duration::ZERO),
        Err(e) => {
            let status = e.status();
            let body = error_body(e);
            (
                LineOutcome::Failed(
                    json!({"id": id, "custom_id": custom_id,
                           "response": {"status_code": status, "request_id": request_id, "body": body},
                           "error": null})
                    .to_string(),
                ),
                Duration::ZERO,
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

/// Reads up to `max` non-empty lines starting at byte `offset` and ending before `end` (a
/// line boundary); returns them (numbered from `first_line_no`) and the offset just past the
/// last one read.
pub fn read_chunk(
    path: &std::path::Path,
    offset: u64,
    end: u64,
    first_line_no: u64,
    max: usize,
) -> std::io::Result<(Vec<RawLine>, u64)> {
    use std::io::{BufRead, Seek, SeekFrom};
    let mut f = std::io::BufReader::new(std::fs::File::open(path)?);
    f.seek(SeekFrom::Start(offset))?;
    let mut out = Vec::new();
    let mut pos = offset;
    let mut buf = Vec::new();
    while out.len() < max && pos < end {
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
            too_long: None,
        });
    }
    Ok((out, pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::blob::Blobs;

    #[test]
    fn object_lines_are_read_in_ranges_and_an_over_long_one_fails_without_being_held() {
        let d = std::env::temp_dir().join(format!("spotinfer-lines-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let blobs = Blobs::open(d.to_str().unwrap()).unwrap();
        // Line 1 is 3 MiB: over a 2 MiB limit, and longer than one read window.
        let long = "x".repeat(3 << 20);
        let text = format!("a\n\n{long}\nb\nc");
        let end = text.len() as u64;
        blobs.run(blobs.put("in.jsonl", text.into_bytes())).unwrap();
        let read = |offset, max| {
            blobs
                .run(read_object_chunk(
                    &blobs,
                    "in.jsonl",
                    offset,
                    end,
                    10,
                    max,
                    2 << 20,
                ))
                .unwrap()
        };
        let (lines, next) = read(0, 2);
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].text.as_str(), lines[0].too_long), ("a", None));
        assert_eq!(lines[1].too_long, Some((3 << 20) + 1));
        assert_eq!((lines[1].line_no, next), (11, 3 + (3 << 20) + 1));
        let (rest, next) = read(next, 10);
        let texts: Vec<_> = rest.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            (texts, next),
            (vec!["b", "c"], end),
            "the last line has no newline"
        );
        // The same cut as a local file's reader, line for line.
        let p = d.join("in.jsonl");
        let (local, _) = read_chunk(&p, 0, end, 10, 1).unwrap();
        assert_eq!(local[0].text, "a");
        std::fs::remove_dir_all(&d).ok();
    }
}
