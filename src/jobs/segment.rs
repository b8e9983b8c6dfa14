//! A job's input cut into segments (byte ranges of whole lines, decided once when the job is
//! validated), each segment cut into chunks of a fixed number of lines, and each chunk's
//! results committed once.
//!
//! Chunk k of segment s holds lines `[k·C, (k+1)·C)` of the segment (C fixed per job in its
//! plan), so its key `batches/<job>/segments/<s>/chunks/<k>.jsonl` names the same lines
//! whoever runs them. A chunk is committed by a create-if-absent write of one object: a
//! header line (counts, device time, where the next chunk starts in the input), the result
//! lines, then the error lines. A second writer of the same chunk (a replica whose lease
//! expired while it stalled) loses and drops its copy, so every line is answered exactly once
//! whatever the leases and clocks did. A segment's progress is its run of committed chunks
//! from 0; it is done when the last one exists.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::blob::{Blobs, Created};
use super::drive::{ChunkResult, Commit, Position, Sink};
use super::durable::StoreError;
use super::lease::epoch_of;

/// Whole lines `[start, end)` of the input, numbered from `first_line`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Segment {
    pub index: usize,
    pub start: u64,
    pub end: u64,
    pub first_line: u64,
    pub lines: u64,
}

/// How a job's input is cut, fixed when the job is validated (`plan.json`); the same input
/// and settings always give the same plan, so a lost or corrupt plan is rebuilt identically.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub total: u64,
    pub segment_lines: u64,
    /// Lines per chunk, the unit of commit: every replica cuts chunks alike.
    #[serde(default = "default_chunk_lines")]
    pub chunk_lines: u64,
    /// Input size when planned: an input that changed since is refused.
    #[serde(default)]
    pub input_bytes: u64,
    pub segments: Vec<Segment>,
}

fn default_chunk_lines() -> u64 {
    crate::config::DEFAULT_CHUNK_LINES as u64
}

impl Plan {
    /// Chunks in a segment.
    pub fn chunks(&self, seg: &Segment) -> u64 {
        seg.lines.div_ceil(self.chunk_lines.max(1))
    }

    /// Lines done in a segment with `chunks` chunks committed.
    pub fn lines_in(&self, seg: &Segment, chunks: u64) -> u64 {
        (chunks * self.chunk_lines).min(seg.lines)
    }
}

/// Cuts an input into segments as its bytes stream by: every `segment_lines` non-empty lines.
pub struct Planner {
    per: u64,
    pos: u64,
    total: u64,
    line_start: u64,
    /// The line being read has a non-space byte.
    content: bool,
    current: Option<Segment>,
    segments: Vec<Segment>,
}

impl Planner {
    pub fn new(segment_lines: u64) -> Self {
        Self {
            per: segment_lines.max(1),
            pos: 0,
            total: 0,
            line_start: 0,
            content: false,
            current: None,
            segments: Vec::new(),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.pos += 1;
            if b == b'\n' {
                self.end_line();
            } else if !b.is_ascii_whitespace() {
                self.content = true;
            }
        }
    }

    fn end_line(&mut self) {
        let (start, end) = (self.line_start, self.pos);
        self.line_start = self.pos;
        if !std::mem::take(&mut self.content) {
            // Blank lines belong to the segment they sit in (or start the next one).
            if let Some(s) = &mut self.current {
                s.end = end;
            }
            return;
        }
        let s = self.current.get_or_insert(Segment {
            index: self.segments.len(),
            start,
            end: start,
            first_line: self.total,
            lines: 0,
        });
        s.end = end;
        s.lines += 1;
        self.total += 1;
        if s.lines == self.per {
            self.segments.extend(self.current.take());
        }
    }

    pub fn finish(mut self, chunk_lines: u64) -> Plan {
        if self.line_start < self.pos {
            self.end_line();
        }
        self.segments.extend(self.current.take());
        Plan {
            total: self.total,
            segment_lines: self.per,
            chunk_lines: chunk_lines.max(1),
            input_bytes: self.pos,
            segments: self.segments,
        }
    }
}

/// One pass over a local file.
pub fn plan_file(path: &std::path::Path, segment_lines: u64) -> std::io::Result<Plan> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut planner = Planner::new(segment_lines);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        planner.feed(&buf[..n]);
    }
    Ok(planner.finish(1))
}

/// Counts the non-empty lines of a JSONL file.
pub fn count_lines(path: &std::path::Path) -> Result<u64, StoreError> {
    plan_file(path, u64::MAX)
        .map(|p| p.total)
        .map_err(super::durable::io_err(path))
}

/// One streamed pass over an object.
pub async fn plan_object(
    blobs: &Blobs,
    key: &str,
    segment_lines: u64,
    chunk_lines: u64,
) -> Result<Plan, StoreError> {
    let mut stream = blobs.stream(key).await?;
    let mut planner = Planner::new(segment_lines);
    while let Some(bytes) = stream.next().await {
        let bytes = bytes.map_err(|e| StoreError::Object {
            path: blobs.describe(key),
            cause: e.to_string(),
        })?;
        planner.feed(&bytes);
    }
    Ok(planner.finish(chunk_lines))
}

/// The first line of a chunk object.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChunkHeader {
    pub writer: String,
    pub lines: u64,
    pub completed: u64,
    pub failed: u64,
    pub device_seconds: f64,
    pub cost_dollars: f64,
    pub next_offset: u64,
    pub output_bytes: u64,
    pub error_bytes: u64,
}

/// A chunk's header fits in this many bytes (a writer name and a few numbers).
const HEADER_MAX: u64 = 4096;

pub fn chunk_key(job: &str, seg: usize, chunk: u64) -> String {
    format!("batches/{job}/segments/{seg:05}/chunks/{chunk:06}.jsonl")
}

pub fn lease_dir(job: &str, seg: usize) -> String {
    format!("batches/{job}/segments/{seg:05}/lease")
}

/// Encodes a chunk object: header line, results, errors.
fn encode(h: &ChunkHeader, chunk: &ChunkResult) -> Result<Vec<u8>, StoreError> {
    let mut out = serde_json::to_vec(h).map_err(|e| StoreError::Task(e.to_string()))?;
    out.push(b'\n');
    out.extend_from_slice(&chunk.output);
    out.extend_from_slice(&chunk.errors);
    Ok(out)
}

/// Reads a chunk's header (one small ranged read).
pub async fn read_header(blobs: &Blobs, key: &str, size: u64) -> Result<ChunkHeader, StoreError> {
    let head = blobs.get_range(key, 0..size.min(HEADER_MAX)).await?;
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    serde_json::from_slice(line).map_err(|e| StoreError::Corrupt {
        path: blobs.describe(key),
        reason: format!("chunk header: {e}"),
    })
}

/// A chunk's result and error bytes.
pub async fn read_body(blobs: &Blobs, key: &str) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let bytes = blobs.get(key).await?.ok_or_else(|| StoreError::Corrupt {
        path: blobs.describe(key),
        reason: "a committed chunk is missing".into(),
    })?;
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| StoreError::Corrupt {
            path: blobs.describe(key),
            reason: "no header line".into(),
        })?;
    let h: ChunkHeader = serde_json::from_slice(&bytes[..nl]).map_err(|e| StoreError::Corrupt {
        path: blobs.describe(key),
        reason: format!("chunk header: {e}"),
    })?;
    let body = &bytes[nl + 1..];
    let (o, e) = (h.output_bytes as usize, h.error_bytes as usize);
    if body.len() != o + e {
        return Err(StoreError::Corrupt {
            path: blobs.describe(key),
            reason: format!(
                "{} bytes of results where the header says {}",
                body.len(),
                o + e
            ),
        });
    }
    Ok((body[..o].to_vec(), body[o..].to_vec()))
}

/// What the store holds for one segment: committed chunks (index → object size) and the
/// newest lease epoch.
#[derive(Debug, Clone, Default)]
pub struct SegmentKeys {
    pub chunks: BTreeMap<u64, u64>,
    pub lease_epoch: Option<u64>,
}

impl SegmentKeys {
    /// Chunks committed in a row from the first.
    pub fn committed(&self) -> u64 {
        let mut n = 0;
        while self.chunks.contains_key(&n) {
            n += 1;
        }
        n
    }
}

/// Every segment's keys from one listing of the job's `segments/` folder.
pub async fn scan(blobs: &Blobs, job: &str) -> Result<BTreeMap<usize, SegmentKeys>, StoreError> {
    let mut out: BTreeMap<usize, SegmentKeys> = BTreeMap::new();
    let base = format!("batches/{job}/segments/");
    for l in blobs.list(&base).await? {
        let Some(rest) = l.key.strip_prefix(&base) else {
            continue;
        };
        let mut parts = rest.split('/');
        let (Some(seg), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(seg) = seg.parse::<usize>() else {
            continue;
        };
        let entry = out.entry(seg).or_default();
        match kind {
            "chunks" => {
                if let Some(k) = name.strip_suffix(".jsonl").and_then(|k| k.parse().ok()) {
                    entry.chunks.insert(k, l.size);
                }
            }
            "lease" => {
                if let Some(e) = epoch_of(&l.key) {
                    entry.lease_epoch = entry.lease_epoch.max(Some(e));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A prefix of a segment: lines done, their counts and cost, where the next chunk starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentProgress {
    pub chunks: u64,
    pub input_offset: u64,
    pub lines_done: u64,
    pub completed: u64,
    pub failed: u64,
    pub device_seconds: f64,
    pub cost_dollars: f64,
}

impl SegmentProgress {
    pub fn start(seg: &Segment) -> Self {
        Self {
            input_offset: seg.start,
            ..Self::default()
        }
    }

    pub fn is_done(&self, seg: &Segment) -> bool {
        self.lines_done >= seg.lines
    }

    pub fn add(&mut self, h: &ChunkHeader) {
        self.chunks += 1;
        self.input_offset = h.next_offset;
        self.lines_done += h.lines;
        self.completed += h.completed;
        self.failed += h.failed;
        self.device_seconds += h.device_seconds;
        self.cost_dollars += h.cost_dollars;
    }
}

/// Whether a running segment was lost to another replica (its heartbeat found a newer lease
/// epoch, or another writer committed its next chunk): the run stops before its next commit.
/// It also keeps until when the run's lease holds by this process's clock, so a run that
/// stalled past its lease (SIGSTOP, a frozen VM) does not commit a chunk before its heartbeat
/// has renewed the lease or found it taken: a live new owner never loses a chunk to it.
#[derive(Debug, Default)]
pub struct Fence {
    lost: AtomicBool,
    /// Commits stop at this instant; the lease's length. None: no lease to watch (a writer
    /// without a heartbeat).
    until: Mutex<Option<(Instant, u64)>>,
}

impl Fence {
    pub fn lose(&self) {
        self.lost.store(true, Ordering::Release);
    }

    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// The lease was written (claimed or renewed) by a call started at `asked`. It holds
    /// until `asked` + ttl less 1 s (expiry is kept in whole seconds); commits stop a quarter
    /// of the lease earlier, so a commit's own write lands before anyone may take over.
    pub fn held(&self, asked: Instant, ttl_secs: u64) {
        let ttl = Duration::from_secs(ttl_secs);
        let until = asked + ttl.saturating_sub(Duration::from_secs(1) + ttl / 4);
        let mut u = self.until.lock().unwrap_or_else(|e| e.into_inner());
        *u = Some((u.map_or(until, |(old, _)| old.max(until)), ttl_secs));
    }

    /// The run may not commit now: its lease may have run out.
    fn stale(&self) -> bool {
        let u = self.until.lock().unwrap_or_else(|e| e.into_inner());
        u.is_some_and(|(until, _)| Instant::now() >= until)
    }

    /// Waits (on a blocking thread) for the heartbeat to renew a stale lease or find it taken;
    /// false when the run must not commit. The heartbeat tries every third of the lease; five
    /// leases without an answer mean the store is out of reach: give the segment up.
    fn wait_fresh(&self) -> bool {
        let ttl = self
            .until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(0, |u| u.1);
        let deadline = Instant::now() + Duration::from_secs(ttl * 5);
        while self.stale() && !self.lost() {
            if Instant::now() >= deadline {
                // Our lease ran out and could not be renewed: whoever claims it next owns it.
                self.lose();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        !self.lost()
    }
}

/// One run of a segment from its committed prefix: commits each chunk create-only.
pub struct SegmentWriter {
    blobs: Blobs,
    job: String,
    seg: Segment,
    writer: String,
    progress: SegmentProgress,
    fence: Arc<Fence>,
    cost_per_hour: f64,
}

impl SegmentWriter {
    pub fn new(
        blobs: Blobs,
        job: &str,
        seg: Segment,
        writer: &str,
        progress: SegmentProgress,
        fence: Arc<Fence>,
        cost_per_hour: f64,
    ) -> Self {
        Self {
            blobs,
            job: job.to_string(),
            seg,
            writer: writer.to_string(),
            progress,
            fence,
            cost_per_hour,
        }
    }
}

impl Sink for SegmentWriter {
    fn position(&self) -> Position {
        Position {
            input_offset: self.progress.input_offset,
            line_no: self.seg.first_line + self.progress.lines_done,
            completed: self.progress.completed,
            failed: self.progress.failed,
            device_seconds: self.progress.device_seconds,
        }
    }

    fn separate_errors(&self) -> bool {
        true
    }

    fn commit(&mut self, chunk: &ChunkResult) -> Result<Commit, StoreError> {
        if !self.fence.wait_fresh() {
            return Ok(Commit::LeaseLost);
        }
        let header = ChunkHeader {
            writer: self.writer.clone(),
            lines: chunk.lines,
            completed: chunk.completed,
            failed: chunk.failed,
            device_seconds: chunk.device_seconds,
            cost_dollars: chunk.device_seconds * self.cost_per_hour / 3600.0,
            next_offset: chunk.next_offset,
            output_bytes: chunk.output.len() as u64,
            error_bytes: chunk.errors.len() as u64,
        };
        let key = chunk_key(&self.job, self.seg.index, self.progress.chunks);
        let bytes = encode(&header, chunk)?;
        match self.blobs.run(self.blobs.create(&key, bytes))? {
            Created::Mine => {
                self.progress.add(&header);
                Ok(Commit::Done(self.position()))
            }
            // Someone else committed these lines: they are theirs, and so is the segment.
            Created::Taken => {
                self.fence.lose();
                Ok(Commit::LeaseLost)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cut_whole_lines_and_skip_blank_ones() {
        let mut p = Planner::new(2);
        // Fed in odd pieces: the cut does not depend on how bytes arrive.
        for piece in [&b"a\nb"[..], b"\n\nc\nd", b"\ne\n  \n"] {
            p.feed(piece);
        }
        let plan = p.finish(1);
        assert_eq!(plan.total, 5);
        let spans: Vec<_> = plan
            .segments
            .iter()
            .map(|s| (s.start, s.end, s.first_line, s.lines))
            .collect();
        assert_eq!(spans, [(0, 4, 0, 2), (5, 9, 2, 2), (9, 14, 4, 1)]);
        let mut p = Planner::new(100);
        p.feed(b"x\ny");
        let plan = p.finish(1);
        assert_eq!(
            (plan.total, plan.segments[0].end),
            (2, 3),
            "last line without \\n"
        );
        assert!(Planner::new(2).finish(1).segments.is_empty());
    }

    fn chunk(text: &str, next: u64, lines: u64) -> ChunkResult {
        ChunkResult {
            output: text.as_bytes().to_vec(),
            errors: b"e\n".to_vec(),
            next_offset: next,
            lines,
            completed: lines,
            failed: 0,
            device_seconds: 0.5,
        }
    }

    #[test]
    fn two_writers_of_a_chunk_commit_it_once_and_the_loser_stops() {
        let d = std::env::temp_dir().join(format!("spotinfer-seg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let blobs = Blobs::open(d.to_str().unwrap()).unwrap();
        let seg = Segment {
            index: 0,
            start: 0,
            end: 30,
            first_line: 100,
            lines: 3,
        };
        let writer = |name: &str, from: SegmentProgress| {
            SegmentWriter::new(
                blobs.clone(),
                "batch_x",
                seg,
                name,
                from,
                Arc::default(),
                3.6,
            )
        };
        let mut a = writer("a", SegmentProgress::start(&seg));
        assert!(matches!(
            a.commit(&chunk("l0\n", 10, 1)).unwrap(),
            Commit::Done(_)
        ));
        // B starts from the same point as A (A's lease expired while it stalled).
        let mut b = writer("b", SegmentProgress::start(&seg));
        assert!(matches!(
            b.commit(&chunk("L0\n", 10, 1)).unwrap(),
            Commit::LeaseLost
        ));
        assert!(matches!(
            a.commit(&chunk("l1\n", 20, 1)).unwrap(),
            Commit::Done(_)
        ));
        assert!(
            matches!(b.commit(&chunk("l1\n", 20, 1)).unwrap(), Commit::LeaseLost),
            "fenced after losing once"
        );
        let keys = blobs.run(scan(&blobs, "batch_x")).unwrap();
        assert_eq!(keys[&0].committed(), 2);
        let (out, err) = blobs
            .run(read_body(&blobs, &chunk_key("batch_x", 0, 0)))
            .unwrap();
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"l0\n"[..], &b"e\n"[..])
        );
        let size = keys[&0].chunks[&1];
        let h = blobs
            .run(read_header(&blobs, &chunk_key("batch_x", 0, 1), size))
            .unwrap();
        assert_eq!((h.writer.as_str(), h.next_offset), ("a", 20));
        assert!((h.cost_dollars - 0.5 * 3.6 / 3600.0).abs() < 1e-12);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_run_past_its_lease_commits_only_after_its_heartbeat_renews_it() {
        let d = std::env::temp_dir().join(format!("spotinfer-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let blobs = Blobs::open(d.to_str().unwrap()).unwrap();
        let seg = Segment {
            index: 0,
            start: 0,
            end: 20,
            first_line: 0,
            lines: 2,
        };
        let long_ago = Instant::now() - Duration::from_secs(60);
        let fence = Arc::new(Fence::default());
        fence.held(long_ago, 3);
        let mut w = SegmentWriter::new(
            blobs.clone(),
            "batch_s",
            seg,
            "a",
            SegmentProgress::start(&seg),
            fence.clone(),
            0.0,
        );
        // The heartbeat renews it: the commit waits for that, then goes through.
        let beat = {
            let fence = fence.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                fence.held(Instant::now(), 3);
            })
        };
        assert!(matches!(
            w.commit(&chunk("l0\n", 10, 1)).unwrap(),
            Commit::Done(_)
        ));
        beat.join().unwrap();
        // Stale again, and the heartbeat finds the lease taken: nothing is written.
        *fence.until.lock().unwrap() = Some((long_ago, 3));
        let beat = {
            let fence = fence.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                fence.lose();
            })
        };
        assert!(matches!(
            w.commit(&chunk("l1\n", 20, 1)).unwrap(),
            Commit::LeaseLost
        ));
        beat.join().unwrap();
        let keys = blobs.run(scan(&blobs, "batch_s")).unwrap();
        assert_eq!(keys[&0].committed(), 1, "the stale run wrote nothing");
        std::fs::remove_dir_all(&d).ok();
    }
}
