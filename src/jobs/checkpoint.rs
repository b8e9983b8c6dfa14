//! The output of `spotinfer batch` and its checkpoint `<output>.ckpt`: where the output stands
//! (`Checkpoint`) and which run wrote it (`RunIdentity`: input and model, identity.rs).
//!
//! A rerun goes through [`Resumable`]: the checkpoint is read and checked against this run's
//! input and model flags before anything is written, and against the loaded model before the
//! output is rolled back and appended to. A checkpoint of another run is refused with what
//! differs, so the output is neither resumed (mixing two inputs or two models in one file) nor
//! reported complete, and both files are left as they are.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::drive::{ChunkResult, Commit, Position, Sink};
use super::durable::{append_durably, io_err, read_json, write_json, StoreError};
use super::identity::{
    Difference, InputCheck, InputIdentity, LoadedModel, ModelRequest, RunIdentity,
};

/// Where a `spotinfer batch` output stands: everything before `input_offset` is done and its
/// results are the first `output_len` / `error_len` bytes of the output and error files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub input_offset: u64,
    pub lines_done: u64,
    pub output_len: u64,
    pub error_len: u64,
    pub completed: u64,
    pub failed: u64,
    /// Device time spent on the lines so far (absent in checkpoints of older versions).
    #[serde(default)]
    pub device_seconds: f64,
}

/// The checkpoint file: the position's fields at the top level (as older versions wrote and
/// read them), the identity beside them (absent in checkpoints of older versions).
#[derive(Serialize)]
struct FileRef<'a> {
    #[serde(flatten)]
    at: &'a Checkpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<&'a RunIdentity>,
}

#[derive(Deserialize)]
struct File {
    #[serde(flatten)]
    at: Checkpoint,
    #[serde(default)]
    identity: Option<RunIdentity>,
}

fn read_checkpoint(path: &Path) -> Result<File, StoreError> {
    if path.exists() {
        read_json(path)
    } else {
        Ok(File {
            at: Checkpoint::default(),
            identity: None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The checkpoint records another input or model.
    #[error("{}", another_run(.checkpoint, .output, .differences))]
    AnotherRun {
        output: String,
        checkpoint: String,
        differences: Vec<Difference>,
    },
    /// A checkpoint of an older version (no identity) whose position does not fit the input.
    #[error("{}", unfit_old_checkpoint(.checkpoint, .output, .reason))]
    UnfitOldCheckpoint {
        output: String,
        checkpoint: String,
        reason: String,
    },
}

fn ways_out(output: &str, ckpt: &str) -> String {
    format!(
        "The output is neither resumed nor reported complete, and both files are left as they \
         are: choose another --output, or delete {output} and {ckpt} to start over (or run \
         again with the first run's input and model to finish it)"
    )
}

fn another_run(ckpt: &str, output: &str, differences: &[Difference]) -> String {
    let what = differences
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "{output} and its checkpoint {ckpt} were written by another run: {what}. {}",
        ways_out(output, ckpt)
    )
}

fn unfit_old_checkpoint(ckpt: &str, output: &str, reason: &str) -> String {
    format!(
        "the checkpoint {ckpt} of {output} was written by an older version that did not record \
         its input, and it does not fit this input: {reason}. {}",
        ways_out(output, ckpt)
    )
}

/// Why a checkpoint without identity does not fit the input: its offset must fall on a line
/// boundary inside the file with exactly `lines_done` non-blank lines before it (what the run
/// that wrote it counted); None when it fits.
fn old_checkpoint_misfit(input: &Path, c: &Checkpoint) -> Result<Option<String>, StoreError> {
    let f = std::fs::File::open(input).map_err(io_err(input))?;
    let mut reader = BufReader::with_capacity(1 << 20, f);
    let (mut pos, mut lines) = (0u64, 0u64);
    let mut buf = Vec::new();
    while pos < c.input_offset {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_err(input))? as u64;
        if n == 0 {
            return Ok(Some(format!(
                "it records byte {} done, past the end of the input ({pos} bytes)",
                c.input_offset
            )));
        }
        pos += n;
        if !buf.iter().all(u8::is_ascii_whitespace) {
            lines += 1;
        }
    }
    if pos != c.input_offset {
        return Ok(Some(format!(
            "it records byte {} done, inside a line of the input",
            c.input_offset
        )));
    }
    if lines != c.lines_done {
        return Ok(Some(format!(
            "it records {} lines done before byte {}, the input has {lines} there",
            c.lines_done, c.input_offset
        )));
    }
    Ok(None)
}

/// The output files and the lengths the checkpoint records for them.
fn recorded_lengths<'a>(
    output: &'a Path,
    errors: Option<&'a Path>,
    c: &Checkpoint,
) -> Vec<(&'a Path, u64)> {
    let mut files = vec![(output, c.output_len)];
    if let Some(e) = errors {
        files.push((e, c.error_len));
    }
    files
}

/// Checks the outputs hold at least what the checkpoint records and, unless `dry_run`, rolls
/// them back to it (creating them when empty), so a chunk written after it (then interrupted)
/// is redone, never duplicated.
fn reconcile(
    files: &[(&Path, u64)],
    checkpoint_path: &Path,
    dry_run: bool,
) -> Result<(), StoreError> {
    for &(path, len) in files {
        let behind = |actual| StoreError::BehindCheckpoint {
            path: path.display().to_string(),
            checkpoint: checkpoint_path.display().to_string(),
            actual,
            recorded: len,
        };
        // Never create a file the checkpoint says has content: that would hide the loss.
        if len > 0 && !path.exists() {
            return Err(behind(None));
        }
        if dry_run {
            match std::fs::metadata(path) {
                Ok(m) if m.len() < len => return Err(behind(Some(m.len()))),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(path)(e)),
            }
            continue;
        }
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        let actual = f.metadata().map_err(io_err(path))?.len();
        if actual < len {
            return Err(behind(Some(actual)));
        }
        if actual > len {
            tracing::info!(file = %path.display(), dropped = actual - len, "rolling back output past the checkpoint");
        }
        f.set_len(len).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    Ok(())
}

/// A checkpoint read and checked against this run's input and model flags; nothing written yet.
pub struct Resumable {
    output: PathBuf,
    errors: Option<PathBuf>,
    checkpoint_path: PathBuf,
    pub checkpoint: Checkpoint,
    /// What the checkpoint records; None for a fresh start or an older version's checkpoint.
    recorded: Option<RunIdentity>,
    input: InputIdentity,
    request: ModelRequest,
}

impl Resumable {
    /// Reads the checkpoint and refuses it when it records another input or other model flags
    /// (or the outputs are shorter than it says), before the model loads.
    ///
    /// A checkpoint of an older version records no identity. It is accepted, with a warning,
    /// when its position fits this input (a line boundary with as many lines before it): a job
    /// interrupted just before an upgrade then still resumes instead of losing its work, and
    /// the identity is recorded from its next commit on. One that does not fit is refused like
    /// another run's. The model of such a checkpoint cannot be checked; the warning says so.
    pub fn check(
        output: PathBuf,
        errors: Option<PathBuf>,
        checkpoint_path: PathBuf,
        input: &Path,
        request: ModelRequest,
    ) -> Result<Self, CheckpointError> {
        let File { at, identity } = read_checkpoint(&checkpoint_path)?;
        let shown = |p: &Path| p.display().to_string();
        let input_now = match &identity {
            Some(recorded) => {
                let mut differences = Vec::new();
                let now = match recorded.input.check(input)? {
                    InputCheck::Same(now) => Some(now),
                    InputCheck::Differs(d) => {
                        differences = d;
                        None
                    }
                };
                differences.extend(recorded.model.differences(&request));
                match now {
                    Some(now) if differences.is_empty() => Some(now),
                    _ => {
                        return Err(CheckpointError::AnotherRun {
                            output: shown(&output),
                            checkpoint: shown(&checkpoint_path),
                            differences,
                        })
                    }
                }
            }
            None => None,
        };
        reconcile(
            &recorded_lengths(&output, errors.as_deref(), &at),
            &checkpoint_path,
            true,
        )?;
        if identity.is_none() && at != Checkpoint::default() {
            if let Some(reason) = old_checkpoint_misfit(input, &at)? {
                return Err(CheckpointError::UnfitOldCheckpoint {
                    output: shown(&output),
                    checkpoint: shown(&checkpoint_path),
                    reason,
                });
            }
            tracing::warn!(
                checkpoint = %checkpoint_path.display(),
                line = at.lines_done,
                "the checkpoint is from an older version that recorded neither input nor model; \
                 its position fits this input, so it counts: make sure the model flags are the \
                 first run's (from the next checkpoint on, both are recorded)"
            );
        }
        let input = match input_now {
            Some(now) => now,
            None => InputIdentity::read(input)?,
        };
        Ok(Self {
            output,
            errors,
            checkpoint_path,
            checkpoint: at,
            recorded: identity,
            input,
            request,
        })
    }

    /// For an output already complete: rolls it back to the checkpoint as a resume would
    /// (an empty input gets its empty output).
    pub fn settle(self) -> Result<(), StoreError> {
        CheckpointedOutput::open_at(
            self.output,
            self.errors,
            self.checkpoint_path,
            self.checkpoint,
        )
        .map(drop)
    }

    /// Refuses a checkpoint written with another model than the one loaded now (the same
    /// flags can load another: a moved Hub branch, a folder with new contents, another
    /// default dtype on another device).
    pub fn check_model(&self, loaded: &LoadedModel) -> Result<(), CheckpointError> {
        let Some(recorded) = &self.recorded else {
            return Ok(());
        };
        let differences = recorded.loaded.differences(loaded);
        if differences.is_empty() {
            return Ok(());
        }
        Err(CheckpointError::AnotherRun {
            output: self.output.display().to_string(),
            checkpoint: self.checkpoint_path.display().to_string(),
            differences,
        })
    }

    /// Rolls the outputs back to the checkpoint and opens them for appending; every commit
    /// from here on records this run's identity.
    pub fn open(self, loaded: LoadedModel) -> Result<CheckpointedOutput, StoreError> {
        let mut out = CheckpointedOutput::open_at(
            self.output,
            self.errors,
            self.checkpoint_path,
            self.checkpoint,
        )?;
        out.identity = Some(RunIdentity {
            input: self.input,
            model: self.request,
            loaded,
        });
        Ok(out)
    }
}

/// An append-only output pair (results and errors) with its checkpoint, for one writer.
pub struct CheckpointedOutput {
    pub output: PathBuf,
    /// Failed lines go here when set; else into `output`, in input order.
    pub errors: Option<PathBuf>,
    pub checkpoint_path: PathBuf,
    pub checkpoint: Checkpoint,
    /// Written with every checkpoint; None only in tests.
    identity: Option<RunIdentity>,
}

impl CheckpointedOutput {
    fn open_at(
        output: PathBuf,
        errors: Option<PathBuf>,
        checkpoint_path: PathBuf,
        checkpoint: Checkpoint,
    ) -> Result<Self, StoreError> {
        reconcile(
            &recorded_lengths(&output, errors.as_deref(), &checkpoint),
            &checkpoint_path,
            false,
        )?;
        Ok(Self {
            output,
            errors,
            checkpoint_path,
            checkpoint,
            identity: None,
        })
    }

    /// Opens (or creates) the outputs and rolls them back to the last checkpoint, with no
    /// identity checked or recorded.
    #[cfg(test)]
    pub fn open_or_resume(
        output: PathBuf,
        errors: Option<PathBuf>,
        checkpoint_path: PathBuf,
    ) -> Result<Self, StoreError> {
        let at = read_checkpoint(&checkpoint_path)?.at;
        Self::open_at(output, errors, checkpoint_path, at)
    }

    /// Appends one chunk's lines and records the new checkpoint durably: data first (fsync),
    /// then the checkpoint (atomic write). The runners call `commit_timed`; tests use this.
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &mut self,
        output_lines: &[u8],
        error_lines: &[u8],
        next_offset: u64,
        lines: u64,
        completed: u64,
        failed: u64,
    ) -> Result<Checkpoint, StoreError> {
        self.commit_timed(
            output_lines,
            error_lines,
            next_offset,
            lines,
            completed,
            failed,
            0.0,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_timed(
        &mut self,
        output_lines: &[u8],
        error_lines: &[u8],
        next_offset: u64,
        lines: u64,
        completed: u64,
        failed: u64,
        device_seconds: f64,
    ) -> Result<Checkpoint, StoreError> {
        let mut next = self.checkpoint;
        let mut files = vec![(&self.output, output_lines, &mut next.output_len)];
        if let Some(e) = &self.errors {
            files.push((e, error_lines, &mut next.error_len));
        }
        for (path, data, len) in files {
            if data.is_empty() {
                continue;
            }
            append_durably(path, data)?;
            *len += data.len() as u64;
        }
        next.input_offset = next_offset;
        next.lines_done += lines;
        next.completed += completed;
        next.failed += failed;
        next.device_seconds += device_seconds;
        write_json(
            &self.checkpoint_path,
            &FileRef {
                at: &next,
                identity: self.identity.as_ref(),
            },
        )?;
        self.checkpoint = next;
        Ok(next)
    }
}

impl Sink for CheckpointedOutput {
    fn position(&self) -> Position {
        let c = &self.checkpoint;
        Position {
            input_offset: c.input_offset,
            line_no: c.lines_done,
            completed: c.completed,
            failed: c.failed,
            device_seconds: c.device_seconds,
        }
    }

    fn separate_errors(&self) -> bool {
        self.errors.is_some()
    }

    fn commit(&mut self, chunk: &ChunkResult) -> Result<Commit, StoreError> {
        self.commit_timed(
            &chunk.output,
            &chunk.errors,
            chunk.next_offset,
            chunk.lines,
            chunk.completed,
            chunk.failed,
            chunk.device_seconds,
        )?;
        Ok(Commit::Done(self.position()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spotinfer-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn resume_rolls_back_past_the_checkpoint() {
        let d = tmp("ckpt");
        let open = || {
            CheckpointedOutput::open_or_resume(
                d.join("out"),
                Some(d.join("err")),
                d.join("ckpt.json"),
            )
            .unwrap()
        };
        let mut o = open();
        o.commit(b"a\n", b"", 10, 1, 1, 0).unwrap();
        o.commit(b"b\n", b"e\n", 20, 2, 1, 1).unwrap();
        // A chunk appended but never checkpointed (the process died in between).
        fs::OpenOptions::new()
            .append(true)
            .open(d.join("out"))
            .unwrap()
            .write_all(b"partial")
            .unwrap();
        let o = open();
        assert_eq!(o.checkpoint.input_offset, 20);
        assert_eq!(o.checkpoint.lines_done, 3);
        assert_eq!((o.checkpoint.completed, o.checkpoint.failed), (2, 1));
        assert_eq!(fs::read(d.join("out")).unwrap(), b"a\nb\n");
        assert_eq!(fs::read(d.join("err")).unwrap(), b"e\n");
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_truncated_output_is_reported_not_papered_over() {
        let d = tmp("short");
        let mut o = CheckpointedOutput::open_or_resume(d.join("out"), None, d.join("c")).unwrap();
        o.commit(b"abcdef\n", b"", 1, 1, 1, 0).unwrap();
        fs::write(d.join("out"), b"ab").unwrap();
        assert!(CheckpointedOutput::open_or_resume(d.join("out"), None, d.join("c")).is_err());
        fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_deleted_output_says_what_happened_and_both_ways_out() {
        let d = tmp("deleted");
        let (out, ckpt) = (d.join("out.jsonl"), d.join("out.jsonl.ckpt"));
        let mut o = CheckpointedOutput::open_or_resume(out.clone(), None, ckpt.clone()).unwrap();
        o.commit(b"abcdef\n", b"", 1, 1, 1, 0).unwrap();
        fs::remove_file(&out).unwrap();
        let Err(e) = CheckpointedOutput::open_or_resume(out.clone(), None, ckpt.clone()) else {
            panic!("a deleted output must not resume");
        };
        let msg = e.to_string();
        assert!(msg.contains("out.jsonl is missing"), "{msg}");
        assert!(msg.contains("records 7 bytes"), "{msg}");
        assert!(msg.contains("restore") && msg.contains("resume"), "{msg}");
        assert!(msg.contains(&format!("delete {}", ckpt.display())), "{msg}");
        assert!(!out.exists(), "the missing output is not recreated empty");
        fs::remove_dir_all(&d).ok();
    }

    fn request(model_id: &str) -> ModelRequest {
        ModelRequest {
            model_id: model_id.into(),
            revision: Some("main".into()),
            task: "auto".into(),
            dtype: None,
            pooling: None,
            default_prompt_name: None,
            default_prompt: None,
            dense_path: None,
            quantization_ranges_sha256: None,
        }
    }

    fn loaded(dims: usize) -> LoadedModel {
        LoadedModel {
            hub_commit: Some("c0ffee".into()),
            architecture: "BertModel".into(),
            task: "embed".into(),
            dtype: "float32".into(),
            pooling: Some("cls".into()),
            output_size: dims,
            default_prompt: None,
        }
    }

    struct Job {
        dir: PathBuf,
        input: PathBuf,
        output: PathBuf,
        ckpt: PathBuf,
    }

    impl Job {
        fn new(name: &str, input: &[u8]) -> Self {
            let dir = tmp(name);
            let job = Self {
                input: dir.join("in.jsonl"),
                output: dir.join("out.jsonl"),
                ckpt: dir.join("out.jsonl.ckpt"),
                dir,
            };
            fs::write(&job.input, input).unwrap();
            job
        }

        fn check(&self, model: &str) -> Result<Resumable, CheckpointError> {
            Resumable::check(
                self.output.clone(),
                None,
                self.ckpt.clone(),
                &self.input,
                request(model),
            )
        }

        /// A run of the first line of the input, as `spotinfer batch` commits it.
        fn run_first_line(&self, model: &str, dims: usize) {
            let r = self.check(model).unwrap();
            r.check_model(&loaded(dims)).unwrap();
            let mut out = r.open(loaded(dims)).unwrap();
            out.commit(b"{\"v\":1}\n", b"", 4, 1, 1, 0).unwrap();
        }

        fn files(&self) -> (Vec<u8>, Vec<u8>) {
            (
                fs::read(&self.output).unwrap(),
                fs::read(&self.ckpt).unwrap(),
            )
        }
    }

    impl Drop for Job {
        fn drop(&mut self) {
            fs::remove_dir_all(&self.dir).ok();
        }
    }

    fn refusal(r: Result<Resumable, CheckpointError>) -> String {
        match r {
            Err(e @ CheckpointError::AnotherRun { .. }) => e.to_string(),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("another run's checkpoint was accepted"),
        }
    }

    #[test]
    fn the_checkpoint_records_the_run_and_the_same_run_resumes() {
        let job = Job::new("same", b"a\nb\n");
        job.run_first_line("org/m", 32);
        let v: serde_json::Value = serde_json::from_slice(&job.files().1).unwrap();
        assert_eq!(v["lines_done"], 1);
        assert_eq!(v["identity"]["input"]["size"], 4);
        assert_eq!(v["identity"]["model"]["model_id"], "org/m");
        assert_eq!(v["identity"]["loaded"]["output_size"], 32);
        let r = job.check("org/m").unwrap();
        assert_eq!(r.checkpoint.lines_done, 1);
        assert_eq!(r.checkpoint.input_offset, 4);
        r.check_model(&loaded(32)).unwrap();
    }

    #[test]
    fn another_input_is_refused_and_nothing_is_touched() {
        let job = Job::new("input", b"a\nb\n");
        job.run_first_line("org/m", 32);
        // Lines appended past the end of the checkpoint: another input, however it starts.
        fs::write(&job.input, b"a\nb\nc\n").unwrap();
        // Bytes past the checkpoint, which a resume would roll back.
        fs::OpenOptions::new()
            .append(true)
            .open(&job.output)
            .unwrap()
            .write_all(b"partial")
            .unwrap();
        let before = job.files();
        let msg = refusal(job.check("org/m"));
        assert!(msg.contains("input differs: size 4 → 6 bytes"), "{msg}");
        assert!(!msg.contains("model differs"), "{msg}");
        assert!(msg.contains("choose another --output"), "{msg}");
        assert!(
            msg.contains(&format!(
                "delete {} and {} to start over",
                job.output.display(),
                job.ckpt.display()
            )),
            "{msg}"
        );
        assert_eq!(job.files(), before, "output and checkpoint untouched");
    }

    #[test]
    fn other_model_flags_are_refused_with_the_input_difference_too() {
        let job = Job::new("flags", b"a\nb\n");
        job.run_first_line("org/m", 32);
        fs::write(&job.input, b"x\n").unwrap();
        let before = job.files();
        let msg = refusal(job.check("org/n"));
        assert!(
            msg.contains(
                "were written by another run: input differs: size 4 → 2 bytes; \
                 model differs: --model-id org/m → org/n. "
            ),
            "{msg}"
        );
        assert_eq!(job.files(), before);
    }

    #[test]
    fn another_loaded_model_is_refused_before_the_output_is_rolled_back() {
        let job = Job::new("loaded", b"a\nb\n");
        job.run_first_line("org/m", 32);
        fs::OpenOptions::new()
            .append(true)
            .open(&job.output)
            .unwrap()
            .write_all(b"partial")
            .unwrap();
        let before = job.files();
        let r = job.check("org/m").unwrap();
        let Err(e) = r.check_model(&loaded(16)) else {
            panic!("another model resumed");
        };
        let msg = e.to_string();
        assert!(
            msg.contains("model differs: output dimensions 32 → 16"),
            "{msg}"
        );
        assert_eq!(job.files(), before);
    }

    #[test]
    fn a_fresh_start_has_nothing_to_compare() {
        let job = Job::new("fresh", b"a\n");
        let r = job.check("org/m").unwrap();
        assert_eq!(r.checkpoint, Checkpoint::default());
        r.check_model(&loaded(16)).unwrap();
        assert!(!job.output.exists(), "nothing written before open");
        assert!(!job.ckpt.exists());
    }

    fn write_old_checkpoint(job: &Job, input_offset: u64, lines_done: u64, output: &[u8]) {
        fs::write(&job.output, output).unwrap();
        let old = serde_json::json!({
            "input_offset": input_offset, "lines_done": lines_done,
            "output_len": output.len(), "error_len": 0, "completed": lines_done, "failed": 0
        });
        fs::write(&job.ckpt, old.to_string()).unwrap();
    }

    #[test]
    fn an_old_checkpoint_that_fits_the_input_resumes_and_then_records_the_run() {
        // A blank line counts as a byte but not as a line, as the runs that wrote it counted.
        let job = Job::new("old-fits", b"a\n\nb\nc\n");
        write_old_checkpoint(&job, 5, 2, b"1\n2\n");
        let r = job.check("org/m").unwrap();
        assert_eq!((r.checkpoint.input_offset, r.checkpoint.lines_done), (5, 2));
        r.check_model(&loaded(32)).unwrap();
        let mut out = r.open(loaded(32)).unwrap();
        out.commit(b"3\n", b"", 7, 1, 1, 0).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&job.files().1).unwrap();
        assert_eq!(v["lines_done"], 3);
        assert_eq!(v["identity"]["input"]["size"], 7);
        // Complete and old: fits too (offset at the end, every line counted).
        let job = Job::new("old-done", b"a\nb");
        write_old_checkpoint(&job, 3, 2, b"1\n2\n");
        assert_eq!(job.check("org/m").unwrap().checkpoint.lines_done, 2);
    }

    #[test]
    fn an_old_checkpoint_that_does_not_fit_is_refused_and_says_why() {
        let cases: [(&[u8], u64, u64, &str); 3] = [
            (
                b"a\nb\n",
                9,
                2,
                "it records byte 9 done, past the end of the input (4 bytes)",
            ),
            (
                b"aa\nb\n",
                2,
                1,
                "it records byte 2 done, inside a line of the input",
            ),
            (
                b"a\nb\nc\n",
                4,
                3,
                "it records 3 lines done before byte 4, the input has 2 there",
            ),
        ];
        for (input, offset, lines, reason) in cases {
            let job = Job::new("old-unfit", input);
            write_old_checkpoint(&job, offset, lines, b"x\n");
            let before = job.files();
            let msg = match job.check("org/m") {
                Err(e @ CheckpointError::UnfitOldCheckpoint { .. }) => e.to_string(),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("an unfit old checkpoint was accepted"),
            };
            assert!(msg.contains(reason), "{msg}");
            assert!(msg.contains("older version"), "{msg}");
            assert!(msg.contains("choose another --output"), "{msg}");
            assert_eq!(job.files(), before);
        }
    }

    #[test]
    fn a_missing_output_is_reported_before_an_old_checkpoint_is_judged() {
        let job = Job::new("old-missing", b"a\n");
        write_old_checkpoint(&job, 300, 2, b"x\n");
        fs::remove_file(&job.output).unwrap();
        let Err(CheckpointError::Store(StoreError::BehindCheckpoint { actual: None, .. })) =
            job.check("org/m")
        else {
            panic!("the missing output is what to report");
        };
    }
}
