//! A job's input cut into segments (byte ranges of whole lines, decided once when the job is
//! validated) and each segment's progress on the shared state dir.
//!
//! A segment's directory holds, per run (one replica's claim, from its start to its end):
//! ```text
//! run-<nonce>.out   result lines this run appended (never written by anyone else)
//! run-<nonce>.err   its error lines
//! run-<nonce>.json  its checkpoint: the whole prefix of the segment done so far, as
//!                   byte ranges ("pieces") of run files, its own and earlier runs'
//! done.json         the checkpoint that reached the segment's end
//! lease.json        who runs it now, until when (lease.rs)
//! ```
//! Every checkpoint describes a prefix of the segment in which each line appears exactly once,
//! and run files are append-only with one writer each, so whichever checkpoint is read, and
//! whoever else wrote meanwhile (a replica whose lease expired while it stalled), the output
//! it describes has every line once, in input order. The segment's state is its most advanced
//! checkpoint; two replicas that both ran the same lines only wasted time.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::drive::{ChunkResult, Commit, Position, Sink};
use super::durable::{append_durably, io_err, read_json, unix_now, write_json, StoreError};
use super::lease::LeaseFile;
use super::types::random_id;

/// Whole lines `[start, end)` of the input, numbered from `first_line`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Segment {
    pub index: usize,
    pub start: u64,
    pub end: u64,
    pub first_line: u64,
    pub lines: u64,
}

/// How a job's input is cut, written once (`segments.json`) before the job starts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub total: u64,
    pub segment_lines: u64,
    pub segments: Vec<Segment>,
}

/// One pass over the input: counts its non-empty lines and cuts it every `segment_lines`.
pub fn plan_input(path: &Path, segment_lines: u64) -> Result<Plan, StoreError> {
    let per = segment_lines.max(1);
    let f = fs::File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::with_capacity(1 << 20, f);
    let mut segments = Vec::new();
    let (mut pos, mut total) = (0u64, 0u64);
    let mut current: Option<Segment> = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_err(path))? as u64;
        if n == 0 {
            break;
        }
        let start = pos;
        pos += n;
        if buf.iter().all(u8::is_ascii_whitespace) {
            // Blank lines belong to the segment they sit in (or start the next one).
            if let Some(s) = &mut current {
                s.end = pos;
            }
            continue;
        }
        let s = current.get_or_insert(Segment {
            index: segments.len(),
            start,
            end: start,
            first_line: total,
            lines: 0,
        });
        s.end = pos;
        s.lines += 1;
        total += 1;
        if s.lines == per {
            segments.extend(current.take());
        }
    }
    segments.extend(current);
    Ok(Plan {
        total,
        segment_lines: per,
        segments,
    })
}

/// A byte range of one run file in a segment's directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Piece {
    pub file: String,
    pub start: u64,
    pub end: u64,
}

/// A prefix of a segment: lines done, their counts and cost, and where their results are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SegmentProgress {
    pub input_offset: u64,
    pub lines_done: u64,
    pub completed: u64,
    pub failed: u64,
    pub device_seconds: f64,
    pub cost_dollars: f64,
    pub output: Vec<Piece>,
    pub errors: Vec<Piece>,
}

impl SegmentProgress {
    fn start(seg: &Segment) -> Self {
        Self {
            input_offset: seg.start,
            ..Self::default()
        }
    }

    pub fn is_done(&self, seg: &Segment) -> bool {
        self.lines_done >= seg.lines
    }
}

/// Appends `[start, end)` of `file`, merging with the last piece when it continues it.
fn push_piece(pieces: &mut Vec<Piece>, file: &str, start: u64, end: u64) {
    match pieces.last_mut() {
        Some(p) if p.file == file && p.end == start => p.end = end,
        _ => pieces.push(Piece {
            file: file.to_string(),
            start,
            end,
        }),
    }
}

/// A segment's directory on the shared state dir.
#[derive(Debug, Clone)]
pub struct SegmentDir {
    pub dir: PathBuf,
    pub seg: Segment,
}

impl SegmentDir {
    pub fn new(job_dir: &Path, seg: Segment) -> Self {
        Self {
            dir: job_dir.join("segments").join(format!("{:05}", seg.index)),
            seg,
        }
    }

    pub fn lease(&self) -> LeaseFile {
        LeaseFile::new(&self.dir)
    }

    fn done_path(&self) -> PathBuf {
        self.dir.join("done.json")
    }

    pub fn is_done(&self) -> bool {
        self.done_path().exists()
    }

    /// The most advanced checkpoint (the segment's start when it never ran).
    pub fn latest(&self) -> Result<SegmentProgress, StoreError> {
        if let Ok(p) = read_json::<SegmentProgress>(&self.done_path()) {
            return Ok(p);
        }
        let mut best = SegmentProgress::start(&self.seg);
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(best),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !(name.starts_with("run-") && name.ends_with(".json")) {
                continue;
            }
            // Checkpoints are written atomically; one that does not parse only costs the
            // progress it recorded, never a duplicate line.
            match read_json::<SegmentProgress>(&entry.path()) {
                Ok(p) if p.lines_done > best.lines_done => best = p,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable segment checkpoint"),
            }
        }
        Ok(best)
    }
}

/// Lease settings a segment run renews with.
#[derive(Debug, Clone)]
pub struct RunLease {
    pub holder: String,
    pub ttl_secs: u64,
}

/// One run of a segment: appends to its own run files, checkpoints the whole prefix.
pub struct SegmentWriter {
    seg: SegmentDir,
    name: String,
    progress: SegmentProgress,
    lease: Option<RunLease>,
    cost_per_hour: f64,
}

impl SegmentWriter {
    /// Starts a run from the segment's most advanced checkpoint.
    pub fn open(
        seg: SegmentDir,
        lease: Option<RunLease>,
        cost_per_hour: f64,
    ) -> Result<Self, StoreError> {
        fs::create_dir_all(&seg.dir).map_err(io_err(&seg.dir))?;
        let progress = seg.latest()?;
        let name = random_id("run-");
        for ext in ["out", "err"] {
            let p = seg.dir.join(format!("{name}.{ext}"));
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
                .map_err(io_err(&p))?;
        }
        Ok(Self {
            seg,
            name,
            progress,
            lease,
            cost_per_hour,
        })
    }

    pub fn progress(&self) -> &SegmentProgress {
        &self.progress
    }

    /// Still ours? Renews when a third of the lease has gone, so a renewal is rarely a write.
    fn keep_lease(&self) -> bool {
        let Some(l) = &self.lease else {
            return true;
        };
        let file = self.seg.lease();
        match file.read() {
            Some(cur) if cur.holder != l.holder => false,
            Some(cur) if cur.expires_at >= unix_now() + l.ttl_secs * 2 / 3 => true,
            _ => file.claim(&l.holder, l.ttl_secs),
        }
    }
}

impl Sink for SegmentWriter {
    fn position(&self) -> Position {
        Position {
            input_offset: self.progress.input_offset,
            line_no: self.seg.seg.first_line + self.progress.lines_done,
            completed: self.progress.completed,
            failed: self.progress.failed,
            device_seconds: self.progress.device_seconds,
        }
    }

    fn separate_errors(&self) -> bool {
        true
    }

    fn commit(&mut self, chunk: &ChunkResult) -> Result<Commit, StoreError> {
        if !self.keep_lease() {
            return Ok(Commit::LeaseLost);
        }
        let mut next = self.progress.clone();
        for (ext, data) in [("out", &chunk.output), ("err", &chunk.errors)] {
            if data.is_empty() {
                continue;
            }
            let file = format!("{}.{ext}", self.name);
            let path = self.seg.dir.join(&file);
            let start = fs::metadata(&path).map_err(io_err(&path))?.len();
            append_durably(&path, data)?;
            let pieces = if ext == "out" {
                &mut next.output
            } else {
                &mut next.errors
            };
            push_piece(pieces, &file, start, start + data.len() as u64);
        }
        next.input_offset = chunk.next_offset;
        next.lines_done += chunk.lines;
        next.completed += chunk.completed;
        next.failed += chunk.failed;
        next.device_seconds += chunk.device_seconds;
        next.cost_dollars += chunk.device_seconds * self.cost_per_hour / 3600.0;
        write_json(&self.seg.dir.join(format!("{}.json", self.name)), &next)?;
        if next.is_done(&self.seg.seg) {
            write_json(&self.seg.done_path(), &next)?;
        }
        self.progress = next;
        Ok(Commit::Done(self.position()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spotinfer-seg-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn plans_cut_whole_lines_and_skip_blank_ones() {
        let d = tmp("plan");
        let p = d.join("in.jsonl");
        fs::write(&p, "a\nb\n\nc\nd\ne\n  \n").unwrap();
        let plan = plan_input(&p, 2).unwrap();
        assert_eq!(plan.total, 5);
        let spans: Vec<_> = plan
            .segments
            .iter()
            .map(|s| (s.start, s.end, s.first_line, s.lines))
            .collect();
        assert_eq!(spans, [(0, 4, 0, 2), (5, 9, 2, 2), (9, 14, 4, 1)]);
        assert_eq!(plan_input(&p, 100).unwrap().segments.len(), 1);
        fs::write(&p, "").unwrap();
        assert!(plan_input(&p, 2).unwrap().segments.is_empty());
        fs::remove_dir_all(&d).ok();
    }

    fn chunk(text: &str, next: u64, lines: u64) -> ChunkResult {
        ChunkResult {
            output: text.as_bytes().to_vec(),
            errors: Vec::new(),
            next_offset: next,
            lines,
            completed: lines,
            failed: 0,
            device_seconds: 0.5,
        }
    }

    fn read_pieces(dir: &Path, pieces: &[Piece]) -> String {
        pieces
            .iter()
            .map(|p| {
                let b = fs::read(dir.join(&p.file)).unwrap();
                String::from_utf8(b[p.start as usize..p.end as usize].to_vec()).unwrap()
            })
            .collect()
    }

    #[test]
    fn two_runs_racing_on_a_segment_each_describe_every_line_once() {
        let d = tmp("race");
        let seg = Segment {
            index: 0,
            start: 0,
            end: 30,
            first_line: 100,
            lines: 3,
        };
        let sd = SegmentDir::new(&d, seg);
        let mut a = SegmentWriter::open(sd.clone(), None, 3.6).unwrap();
        assert!(matches!(
            a.commit(&chunk("l0\n", 10, 1)).unwrap(),
            Commit::Done(_)
        ));
        // B starts from A's checkpoint while A goes on (A's lease expired while it stalled).
        let mut b = SegmentWriter::open(sd.clone(), None, 3.6).unwrap();
        assert_eq!(b.position().line_no, 101);
        a.commit(&chunk("l1\n", 20, 1)).unwrap();
        b.commit(&chunk("l1\n", 20, 1)).unwrap();
        b.commit(&chunk("l2\n", 30, 1)).unwrap();
        let latest = sd.latest().unwrap();
        assert!(sd.is_done() && latest.is_done(&seg));
        assert_eq!(read_pieces(&sd.dir, &latest.output), "l0\nl1\nl2\n");
        assert_eq!(latest.completed, 3);
        assert!((latest.cost_dollars - 1.5 * 3.6 / 3600.0).abs() < 1e-12);
        // A's own checkpoint is a shorter prefix, also exact.
        assert_eq!(read_pieces(&sd.dir, &a.progress().output), "l0\nl1\n");
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_run_stops_once_another_replica_holds_the_lease() {
        let d = tmp("lost");
        let seg = Segment {
            index: 3,
            start: 0,
            end: 20,
            first_line: 0,
            lines: 2,
        };
        let sd = SegmentDir::new(&d, seg);
        fs::create_dir_all(&sd.dir).unwrap();
        let lease = |h: &str| {
            Some(RunLease {
                holder: h.into(),
                ttl_secs: 60,
            })
        };
        assert!(sd.lease().claim("otherhost/1", 60));
        let mut w = SegmentWriter::open(sd.clone(), lease("me/1"), 0.0).unwrap();
        assert!(matches!(
            w.commit(&chunk("x\n", 10, 1)).unwrap(),
            Commit::LeaseLost
        ));
        assert_eq!(sd.latest().unwrap().lines_done, 0, "nothing committed");
        fs::remove_dir_all(&d).ok();
    }
}
