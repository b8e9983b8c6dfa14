//! `spotinfer batch` and the run its `--output` belongs to, end to end on the tiny fixtures:
//! another input or another model with the same `--output` exits 1 and says what differs,
//! leaving the output and its checkpoint byte for byte as they were; the same command again
//! still reports "already complete"; a resume with the same input and model goes on.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::{json, Value};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spotinfer-offline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_input(path: &Path, texts: &[&str]) {
    let mut s = String::new();
    for (i, t) in texts.iter().enumerate() {
        let line = json!({"custom_id": format!("req-{i}"), "method": "POST",
                          "url": "/v1/embeddings", "body": {"input": t, "model": "tiny"}});
        s.push_str(&line.to_string());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

const FIRST: [&str; 6] = [
    "rivers run to the sea",
    "compilers turn text into code",
    "tea is brewed with hot water",
    "graphs have nodes and edges",
    "volcanoes erupt now and then",
    "jazz is played by ear",
];

fn fixture_dir(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

fn ckpt_of(output: &Path) -> PathBuf {
    PathBuf::from(format!("{}.ckpt", output.display()))
}

/// One `spotinfer batch` run to its exit.
fn batch(model: &Path, input: &Path, output: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spotinfer"))
        .args(["batch", "--model-id", model.to_str().unwrap()])
        .args(["--input", input.to_str().unwrap()])
        .args(["--output", output.to_str().unwrap(), "--no-progress"])
        .output()
        .expect("run spotinfer batch")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The output and its checkpoint, byte for byte.
fn files(output: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(output).unwrap(),
        std::fs::read(ckpt_of(output)).unwrap(),
    )
}

fn output_lines(output: &Path) -> Vec<Value> {
    std::fs::read_to_string(output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn embedding(line: &Value) -> Vec<f32> {
    as_vec(&line["response"]["body"]["data"][0]["embedding"])
}

/// Runs to completion and checks the output: one line per input line, in order.
fn complete(model: &Path, input: &Path, output: &Path, lines: usize, dims: usize) {
    let out = batch(model, input, output);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = output_lines(output);
    assert_eq!(got.len(), lines);
    for (i, l) in got.iter().enumerate() {
        assert_eq!(l["custom_id"], format!("req-{i}"));
        assert_eq!(embedding(l).len(), dims, "{l}");
    }
}

/// A refusal: exit 1, no "complete" of any kind, the ways out named, nothing touched.
fn assert_refused(out: &Output, output: &Path, before: &(Vec<u8>, Vec<u8>)) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("already complete"), "{err}");
    assert!(!err.contains("batch complete"), "{err}");
    assert!(err.contains("were written by another run"), "{err}");
    assert!(err.contains("choose another --output"), "{err}");
    assert!(
        err.contains(&format!(
            "delete {} and {} to start over",
            output.display(),
            ckpt_of(output).display()
        )),
        "{err}"
    );
    assert_eq!(&files(output), before, "output and checkpoint untouched");
    err
}

fn assert_already_complete(out: &Output) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("already complete"), "{err}");
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn another_input_with_the_same_output_is_refused() {
    let dir = temp_dir("input");
    let model = fixture_dir("tiny-bert");
    let (first, output) = (dir.join("first.jsonl"), dir.join("out.jsonl"));
    write_input(&first, &FIRST);
    complete(&model, &first, &output, 6, 32);
    let before = files(&output);

    // Another file, same --output.
    let other = dir.join("other.jsonl");
    write_input(
        &other,
        &["a different input", "of four lines", "than the", "first"],
    );
    let err = assert_refused(&batch(&model, &other, &output), &output, &before);
    assert!(
        err.contains(&format!(
            "input differs: size {} → {} bytes",
            size(&first),
            size(&other)
        )),
        "{err}"
    );
    assert!(!err.contains("model differs"), "{err}");

    // The first input with a line appended is another input too.
    let original = std::fs::read(&first).unwrap();
    let mut grown = original.clone();
    grown.extend_from_slice(
        format!(
            "{}\n",
            json!({"custom_id": "req-6", "method": "POST", "url": "/v1/embeddings",
                   "body": {"input": "one more", "model": "tiny"}})
        )
        .as_bytes(),
    );
    std::fs::write(&first, &grown).unwrap();
    let err = assert_refused(&batch(&model, &first, &output), &output, &before);
    assert!(
        err.contains(&format!(
            "input differs: size {} → {} bytes",
            original.len(),
            grown.len()
        )),
        "{err}"
    );

    // Written back as it was (a new mtime, the same bytes): the same input, still complete.
    std::fs::write(&first, &original).unwrap();
    assert_already_complete(&batch(&model, &first, &output));
    // And the same command once more: unchanged behaviour.
    assert_already_complete(&batch(&model, &first, &output));
    assert_eq!(files(&output), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn another_model_with_the_same_output_is_refused_naming_both() {
    let dir = temp_dir("model");
    let (bert, dense) = (fixture_dir("tiny-bert"), fixture_dir("tiny-bert-dense"));
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    write_input(&input, &FIRST);
    complete(&bert, &input, &output, 6, 32);
    let before = files(&output);

    let err = assert_refused(&batch(&dense, &input, &output), &output, &before);
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string();
    assert!(
        err.contains(&format!(
            "model differs: --model-id {} → {}",
            canonical(&bert),
            canonical(&dense)
        )),
        "{err}"
    );
    assert!(!err.contains("input differs"), "{err}");

    // The same command as the first run: still complete, still exit 0.
    assert_already_complete(&batch(&bert, &input, &output));
    assert_eq!(files(&output), before);
    let _ = std::fs::remove_dir_all(&dir);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// What a run interrupted after `lines` lines leaves: its checkpoint there (identity kept),
/// and the output longer than that (a chunk written, never checkpointed).
fn rewind_checkpoint(input: &Path, output: &Path, lines: usize) {
    let text = std::fs::read_to_string(input).unwrap();
    let input_offset: usize = text.split_inclusive('\n').take(lines).map(str::len).sum();
    let out = std::fs::read_to_string(output).unwrap();
    let output_len: usize = out.split_inclusive('\n').take(lines).map(str::len).sum();
    let ckpt = ckpt_of(output);
    let mut c: Value = serde_json::from_slice(&std::fs::read(&ckpt).unwrap()).unwrap();
    assert!(c["identity"].is_object(), "{c}");
    c["input_offset"] = json!(input_offset);
    c["lines_done"] = json!(lines);
    c["output_len"] = json!(output_len);
    c["completed"] = json!(lines);
    std::fs::write(&ckpt, c.to_string()).unwrap();
}

#[test]
fn a_model_folder_with_other_contents_is_refused_before_resuming() {
    let dir = temp_dir("folder");
    let model = dir.join("model");
    copy_dir(&fixture_dir("tiny-bert"), &model);
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    write_input(&input, &FIRST);
    complete(&model, &input, &output, 6, 32);
    let whole_run = output_lines(&output);
    rewind_checkpoint(&input, &output, 2);
    let before = files(&output);

    // Same --model-id, other contents: only loading tells, and the output is still untouched.
    std::fs::remove_dir_all(&model).unwrap();
    copy_dir(&fixture_dir("tiny-bert-dense"), &model);
    let err = assert_refused(&batch(&model, &input, &output), &output, &before);
    assert!(
        err.contains(
            "model differs: pooling \"cls\" → \"mean\"; model differs: output dimensions 32 → 16"
        ),
        "{err}"
    );

    // The first model back: the run resumes at line 2 and finishes with the same answers.
    std::fs::remove_dir_all(&model).unwrap();
    copy_dir(&fixture_dir("tiny-bert"), &model);
    let out = batch(&model, &input, &output);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming from the checkpoint"), "{err}");
    assert!(err.contains("batch complete"), "{err}");
    let resumed = output_lines(&output);
    assert_eq!(resumed.len(), 6);
    for (i, (a, b)) in whole_run.iter().zip(&resumed).enumerate() {
        assert_eq!(b["custom_id"], format!("req-{i}"));
        let c = cosine(&embedding(a), &embedding(b));
        assert!(c >= 0.9999, "line {i}: cosine {c}");
    }
    let c: Value = serde_json::from_slice(&std::fs::read(ckpt_of(&output)).unwrap()).unwrap();
    assert_eq!(c["lines_done"], 6);
    assert_eq!(c["identity"]["loaded"]["output_size"], 32);
    assert_eq!(c["identity"]["input"]["size"], size(&input));
    let _ = std::fs::remove_dir_all(&dir);
}
