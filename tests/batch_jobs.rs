//! Offline batch jobs end to end: the official openai SDK against the Files + Batches API, and
//! kill tests (SIGTERM at ~30 %, SIGKILL at ~60 %) for the server and for `spotinfer batch`:
//! every custom_id exactly once, every answer equal to a direct /v1/embeddings call. Ctrl-C on
//! `spotinfer batch`: exit 130, the printed resume command finishes the job; a second signal
//! quits at once.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;
const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

fn texts(n: usize) -> Vec<String> {
    let topics = [
        "rivers",
        "compilers",
        "tea",
        "graph theory",
        "volcanoes",
        "jazz",
        "GPUs",
    ];
    (0..n)
        .map(|i| {
            let t = topics[i % topics.len()];
            format!(
                "Line {i}: a short note about {t}, number {} of many.",
                i * 7 % 101
            )
        })
        .collect()
}

/// Job lines `req-<i>` embedding each text.
fn jsonl(texts: &[String]) -> String {
    let mut s = String::new();
    for (i, t) in texts.iter().enumerate() {
        s.push_str(
            &json!({"custom_id": format!("req-{i}"), "method": "POST", "url": "/v1/embeddings",
                    "body": {"input": t, "model": "all-MiniLM-L6-v2"}})
            .to_string(),
        );
        s.push('\n');
    }
    s
}

fn write_input(path: &Path, texts: &[String]) {
    std::fs::write(path, jsonl(texts)).unwrap();
}

/// The vectors direct requests give, by the custom_id of each text's job line.
fn want(server: &Server, texts: &[String]) -> HashMap<String, Vec<f32>> {
    server
        .embeddings(texts)
        .into_iter()
        .enumerate()
        .map(|(i, v)| (format!("req-{i}"), v))
        .collect()
}

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A file's content through `GET /v1/files/{id}/content`, as JSON lines.
fn file_lines(server: &Server, file_id: &str) -> Vec<Value> {
    let text = blocking_client()
        .get(server.url(&format!("/v1/files/{file_id}/content")))
        .send()
        .unwrap()
        .text()
        .unwrap();
    parse_lines(&text)
}

/// Polls a job until it is completed (a hang fails after `limit`, not a timing assertion).
fn wait_completed(server: &Server, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, b) = server.get_json(&format!("/v1/batches/{id}"));
        if status == 200 && b["status"] == "completed" {
            return b;
        }
        assert!(
            b["status"] != "failed" && Instant::now() < deadline,
            "the job did not complete: {status} {b}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every custom_id once, in input order.
fn assert_in_order(lines: &[Value], n: usize) {
    let order: Vec<String> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..n).map(|i| format!("req-{i}")).collect();
    assert_eq!(order, expected, "every custom_id once, in input order");
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spotinfer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Checks output lines: every custom_id exactly once, all 200, vectors equal to `want`.
fn check_output(lines: &[Value], want: &HashMap<String, Vec<f32>>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in lines {
        let id = l["custom_id"].as_str().expect("custom_id").to_string();
        *seen.entry(id.clone()).or_default() += 1;
        assert_eq!(l["response"]["status_code"], 200, "{l}");
        assert!(l["error"].is_null());
        let got = as_vec(&l["response"]["body"]["data"][0]["embedding"]);
        if let Some(w) = want.get(&id) {
            let c = cosine(&got, w);
            assert!(c >= 0.9999, "{id}: cosine {c}");
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated custom_ids: {dups:?}");
    assert_eq!(seen.len(), want.len(), "every custom_id present");
}

fn progress(server: &Server, id: &str) -> (String, u64, u64) {
    let (status, b) = server.get_json(&format!("/v1/batches/{id}"));
    assert_eq!(status, 200, "{b}");
    (
        b["status"].as_str().unwrap().to_string(),
        b["request_counts"]["completed"].as_u64().unwrap(),
        b["request_counts"]["total"].as_u64().unwrap(),
    )
}

fn wait_for(server: &Server, id: &str, frac: f64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, done, total) = progress(server, id);
        if status == "completed" || (total > 0 && done as f64 >= frac * total as f64) {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "stuck at {done}/{total} ({status})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where a test keeps the job store: a folder, or a prefix in a real S3-compatible bucket.
enum Store {
    Dir(PathBuf),
    Bucket(common::s3::S3, String),
}

impl Store {
    fn dir(dir: &Path) -> Self {
        Store::Dir(dir.join("state"))
    }

    fn bucket(prefix: &str) -> Self {
        Store::Bucket(common::s3::S3::start(), prefix.to_string())
    }

    /// A server on this store.
    fn server(&self, builder: ServerBuilder) -> ServerBuilder {
        match self {
            Store::Dir(d) => builder.args(["--state-dir", d.to_str().unwrap()]),
            Store::Bucket(s3, prefix) => {
                let mut b = builder.args(["--state-dir", &s3.url(prefix)]);
                for (k, v) in s3.env() {
                    b = b.env(k, v);
                }
                b
            }
        }
    }
}

#[test]
fn openai_sdk_runs_a_batch_unchanged() {
    let dir = temp_dir("sdk");
    sdk_batch(&dir, Store::dir(&dir));
}

/// The same on S3: state, uploads and results in a bucket (moto's server, with conditional
/// writes), and a second job whose input the user put in the bucket, submitted by its URL.
#[test]
fn openai_sdk_runs_a_batch_on_s3() {
    let dir = temp_dir("sdk-s3");
    sdk_batch(&dir, Store::bucket("jobs"));
}

fn sdk_batch(dir: &Path, store: Store) -> Store {
    let python = {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/make-test-venv.sh"))
            .output()
            .expect("make-test-venv");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string()
    };
    let input = dir.join("in.jsonl");
    let t = texts(40);
    write_input(&input, &t);
    // Two bad lines: they become error lines, not a failed job.
    let mut raw = std::fs::read_to_string(&input).unwrap();
    raw.push_str("this is not json\n");
    raw.push_str(&json!({"custom_id": "empty", "method": "POST", "url": "/v1/embeddings", "body": {"input": ""}}).to_string());
    raw.push('\n');
    std::fs::write(&input, raw).unwrap();

    let server = store.server(Server::builder(&test_model_dir())).start();
    let out = Command::new(&python)
        .arg(repo_root().join("tests/python/openai_batch.py"))
        .arg(&server.base)
        .arg(&input)
        .output()
        .expect("run the SDK script");
    assert!(
        out.status.success(),
        "SDK script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let batch = &result["batch"];
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["total"], 42);
    assert_eq!(batch["request_counts"]["completed"], 40);
    assert_eq!(batch["request_counts"]["failed"], 2);
    assert_eq!(batch["metadata"]["suite"], "openai-sdk");
    let want = want(&server, &t);
    check_output(result["output"].as_array().unwrap(), &want);
    let errors = result["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().any(|e| e["error"]["code"] == "invalid_json"));
    assert!(errors
        .iter()
        .any(|e| e["custom_id"] == "empty" && e["response"]["status_code"] == 400));
    let m = server.metrics_text();
    assert!(
        m.contains("inference_batch_lines_total{outcome=\"succeeded\"} 40"),
        "{m}"
    );
    assert!(m.contains("inference_batch_jobs{status=\"completed\"} 1"));
    if let Store::Bucket(s3, prefix) = &store {
        bucket_extras(&server, s3, prefix, &t, &want);
    }
    let _ = std::fs::remove_dir_all(dir);
    store
}

/// On a bucket: the assembled output is an object the user can read straight from it (its key
/// is in the file record), and a job runs on an input already in the bucket, named by URL.
fn bucket_extras(
    server: &Server,
    s3: &common::s3::S3,
    prefix: &str,
    t: &[String],
    want: &HashMap<String, Vec<f32>>,
) {
    let outputs: Vec<String> = s3
        .keys(&format!("{prefix}/batches/"))
        .into_iter()
        .filter(|k| k.ends_with("/output.jsonl"))
        .collect();
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    let text = String::from_utf8(s3.get_object(&outputs[0]).unwrap()).unwrap();
    check_output(&parse_lines(&text), want);
    assert!(
        s3.keys(&format!("{prefix}/batches/"))
            .iter()
            .all(|k| !k.contains("/segments/")),
        "chunks are deleted once assembled"
    );
    s3.put_object("inputs/day-1.jsonl", jsonl(t).into_bytes());
    let url = format!("s3://{}/inputs/day-1.jsonl", s3.bucket);
    let (status, b) = server.post_json(
        "/v1/batches",
        json!({"input_file_id": url, "endpoint": "/v1/embeddings", "completion_window": "24h"}),
    );
    assert_eq!(status, 200, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let b = wait_completed(server, &id, Duration::from_secs(120));
    assert_eq!(b["request_counts"]["completed"], 40, "{b}");
    let lines = file_lines(server, b["output_file_id"].as_str().unwrap());
    check_output(&lines, want);
    // An object outside the store's bucket is refused with a clear message.
    let (status, e) = server.post_json(
        "/v1/batches",
        json!({"input_file_id": "s3://another-bucket/x.jsonl", "endpoint": "/v1/embeddings", "completion_window": "24h"}),
    );
    assert_eq!(status, 400, "{e}");
    assert!(e.to_string().contains("not in this server's bucket"), "{e}");
}

#[test]
fn server_batch_survives_sigterm_and_sigkill() {
    let dir = temp_dir("server-kill");
    survives_sigterm_and_sigkill(&dir, Store::dir(&dir));
}

#[test]
fn server_batch_on_s3_survives_sigterm_and_sigkill() {
    let dir = temp_dir("server-kill-s3");
    survives_sigterm_and_sigkill(&dir, Store::bucket("kill"));
}

fn survives_sigterm_and_sigkill(dir: &Path, store: Store) {
    let input = dir.join("in.jsonl");
    let t = texts(320);
    write_input(&input, &t);
    // One pod restarted: its new process takes the dead one's leases at once.
    let start = || {
        store
            .server(Server::builder(&test_model_dir()))
            .args(["--batch-chunk-lines", "16"])
            .args(["--drain-delay", "0", "--batch-lease-secs", "60"])
            .env("POD_NAME", "spotinfer-0")
            .start()
    };

    let mut server = start();
    let file_id = server.upload_batch(&input);
    let (status, b) = server.post_json(
        "/v1/batches",
        json!({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}),
    );
    assert_eq!(status, 200, "{b}");
    let id = b["id"].as_str().unwrap().to_string();

    // SIGTERM at ~30 %: the chunk in flight is committed, the lease released, exit 0.
    let at_term = wait_for(&server, &id, 0.3);
    server.signal(SIGTERM);
    let (code, _) = server.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    let logs = server.log_text();
    assert!(logs.contains("batch job checkpointed"), "{logs}");
    assert!(
        logs.contains("jobs=1"),
        "the drain reports the checkpoint: {logs}"
    );
    drop(server);

    // Restart: resumed before Ready, continues; SIGKILL at ~60 %.
    let mut server = start();
    server.wait_log(
        "resuming batch job from its checkpoint",
        Duration::from_secs(30),
    );
    let (_, resumed_at, _) = progress(&server, &id);
    assert!(
        resumed_at >= at_term,
        "no committed work lost: {resumed_at} < {at_term}"
    );
    wait_for(&server, &id, 0.6);
    server.signal(SIGKILL);
    let _ = server.wait_exit(Duration::from_secs(10));
    drop(server);

    // Restart again (the dead holder's lease is taken over at once): runs to completion.
    let server = start();
    let b = wait_completed(&server, &id, Duration::from_secs(120));
    assert_eq!(b["request_counts"]["completed"], 320, "{b}");
    assert_eq!(b["request_counts"]["failed"], 0);
    assert!(b["error_file_id"].is_null());
    let lines = file_lines(&server, b["output_file_id"].as_str().unwrap());
    assert_eq!(lines.len(), 320);
    let want = want(&server, &t);
    check_output(&lines, &want);
    // Listing and cancel semantics on a finished batch.
    let (_, list) = server.get_json("/v1/batches?limit=1");
    assert_eq!(list["data"][0]["id"], id.as_str());
    let (status, _) = server.post_json(&format!("/v1/batches/{id}/cancel"), json!({}));
    assert_eq!(status, 400);
    let _ = std::fs::remove_dir_all(dir);
}

/// Small chunks, and small device batches (~50 of these lines) so a run checkpoints many times
/// before it ends, whatever the number of lines queued at once.
const CHUNKED: [&str; 4] = ["--chunk-lines", "16", "--max-batch-tokens", "1024"];

fn run_cli(input: &Path, output: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_spotinfer"))
        .args(["batch", "--model-id", test_model_dir().to_str().unwrap()])
        .args([
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
        .args(CHUNKED)
        .args(["--no-progress"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn spotinfer batch")
}

fn lines_done(output: &Path) -> u64 {
    let ckpt = PathBuf::from(format!("{}.ckpt", output.display()));
    std::fs::read_to_string(ckpt)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["lines_done"].as_u64())
        .unwrap_or(0)
}

fn kill_at(child: &mut std::process::Child, output: &Path, at: u64, sig: i32) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines_done(output) < at {
        assert!(Instant::now() < deadline, "never reached line {at}");
        if let Ok(Some(s)) = child.try_wait() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
    child.wait().unwrap().code()
}

#[test]
fn spotinfer_batch_resumes_after_sigterm_and_sigkill() {
    let dir = temp_dir("cli-kill");
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    let t = texts(320);
    write_input(&input, &t);

    let mut child = run_cli(&input, &output);
    let code = kill_at(&mut child, &output, 96, SIGTERM);
    assert_eq!(
        code,
        Some(75),
        "SIGTERM: checkpointed, exit 75 (rerun to resume)"
    );
    let after_term = lines_done(&output);
    assert!((96..320).contains(&after_term));

    let mut child = run_cli(&input, &output);
    kill_at(&mut child, &output, 192, SIGKILL);
    assert!(lines_done(&output) >= after_term);

    let status = run_cli(&input, &output).wait().unwrap();
    assert_eq!(status.code(), Some(0));
    // A rerun of a finished job is a no-op that succeeds.
    assert_eq!(run_cli(&input, &output).wait().unwrap().code(), Some(0));

    let lines: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 320);
    let server = Server::start_minilm();
    let want = want(&server, &t);
    check_output(&lines, &want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn spotinfer_batch_says_how_to_recover_a_deleted_output() {
    let dir = temp_dir("cli-deleted");
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    let ckpt = PathBuf::from(format!("{}.ckpt", output.display()));
    write_input(&input, &texts(4));
    // What an earlier run leaves behind once someone deletes its output.
    std::fs::write(
        &ckpt,
        json!({"input_offset": 300, "lines_done": 2, "output_len": 8522514, "error_len": 0,
               "completed": 2, "failed": 0})
        .to_string(),
    )
    .unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_spotinfer"))
            .args(["batch", "--model-id", tiny_model_dir().to_str().unwrap()])
            .args(["--input", input.to_str().unwrap()])
            .args(["--output", output.to_str().unwrap(), "--no-progress"])
            .output()
            .expect("run spotinfer batch")
    };
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "an error exits 1: {stderr}");
    assert!(
        stderr.contains("out.jsonl is missing")
            && stderr.contains("records 8522514 bytes of results already written"),
        "says what happened: {stderr}"
    );
    assert!(
        stderr.contains("restore") && stderr.contains(&format!("delete {}", ckpt.display())),
        "names both ways out: {stderr}"
    );
    assert!(!output.exists(), "no empty output is left in its place");
    // The second way out: without the checkpoint the same command starts over and completes.
    std::fs::remove_file(&ckpt).unwrap();
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&output).unwrap().lines().count(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// `spotinfer batch` with stderr captured (for the resume command), flags from `extra`.
fn spawn_batch(input: &Path, output: &Path, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_spotinfer"))
        .args(["batch", "--model-id", test_model_dir().to_str().unwrap()])
        .args(["--input", input.to_str().unwrap()])
        .args(["--output", output.to_str().unwrap()])
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn spotinfer batch")
}

/// Waits for the child's exit and its whole stderr; panics after `limit` (a hang, not a
/// timing assertion).
fn wait_exit(child: std::process::Child, limit: Duration) -> (Option<i32>, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("spotinfer batch still running after {limit:?}"))
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls the checkpoint (the event: a durable commit) until it records `at` lines.
fn wait_for_checkpoint(child: &mut std::process::Child, output: &Path, at: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines_done(output) < at {
        assert!(Instant::now() < deadline, "never reached line {at}");
        if let Ok(Some(s)) = child.try_wait() {
            panic!("spotinfer batch exited ({s}) before line {at}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the kernel reports the child stopped (state `T` in /proc/<pid>/stat).
fn wait_until_stopped(child: &std::process::Child) {
    let stat = format!("/proc/{}/stat", child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&stat).unwrap();
        // The state follows the command name, which is in parentheses.
        let state = text.rsplit(')').next().unwrap().split_whitespace().next();
        if state == Some("T") {
            return;
        }
        assert!(Instant::now() < deadline, "never stopped: {text}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The command printed after "To resume, run:".
fn resume_command(stderr: &str) -> String {
    let mut lines = stderr.lines();
    lines
        .find(|l| l.contains("To resume, run:"))
        .and_then(|_| lines.next())
        .unwrap_or_else(|| panic!("no resume command in: {stderr}"))
        .trim()
        .to_string()
}

/// Runs a printed command through the shell (so its quoting is tested too).
fn run_in_shell(cmd: &str) -> (Option<i32>, String) {
    let child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sh");
    wait_exit(child, Duration::from_secs(600))
}

/// Every custom_id of `n` input lines exactly once, each a 200.
fn assert_each_id_once(output: &Path, n: usize) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in std::fs::read_to_string(output).unwrap().lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["response"]["status_code"], 200, "{v}");
        *seen
            .entry(v["custom_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated custom_ids: {dups:?}");
    for i in 0..n {
        assert!(seen.contains_key(&format!("req-{i}")), "req-{i} missing");
    }
    assert_eq!(seen.len(), n);
}

const CTRL_C_LINES: usize = 1200;

#[test]
fn spotinfer_batch_ctrl_c_checkpoints_and_prints_the_resume_command() {
    // A space and a quote in the path: the printed command must quote them.
    let dir = temp_dir("cli ctrl-c it's");
    let input = dir.join("in.jsonl");
    let output = dir.join("out put.jsonl");
    write_input(&input, &texts(CTRL_C_LINES));

    let mut child = spawn_batch(
        &input,
        &output,
        &[&CHUNKED[..], &["--no-progress"]].concat(),
    );
    wait_for_checkpoint(&mut child, &output, 16);
    signal(&child, SIGINT);
    let (code, stderr) = wait_exit(child, Duration::from_secs(60));
    assert_eq!(code, Some(130), "Ctrl-C: checkpointed, exit 130: {stderr}");
    let done = lines_done(&output);
    assert!(
        (16..CTRL_C_LINES as u64).contains(&done),
        "stopped part way: {done}"
    );
    assert_eq!(
        std::fs::read_to_string(&output).unwrap().lines().count() as u64,
        done,
        "the output holds exactly the checkpointed lines"
    );
    let cmd = resume_command(&stderr);
    assert!(
        cmd.starts_with(env!("CARGO_BIN_EXE_spotinfer")) && cmd.contains("--chunk-lines 16"),
        "the same command line: {cmd}"
    );

    let (code, stderr) = run_in_shell(&cmd);
    assert_eq!(code, Some(0), "the resume command completes: {stderr}");
    assert!(stderr.contains("resuming from the checkpoint"), "{stderr}");
    assert_each_id_once(&output, CTRL_C_LINES);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn spotinfer_batch_second_signal_quits_at_once() {
    let dir = temp_dir("cli-second-signal");
    let input = dir.join("in.jsonl");
    let output = dir.join("out.jsonl");
    write_input(&input, &texts(CTRL_C_LINES));

    let mut child = spawn_batch(
        &input,
        &output,
        &[&CHUNKED[..], &["--no-progress"]].concat(),
    );
    wait_for_checkpoint(&mut child, &output, 16);
    // Two signals that arrive together: while the process is stopped both stay pending (two
    // SIGINTs would merge into one), and on SIGCONT it gets both before it can finish the
    // first one's stop; the second must not wait for anything.
    signal(&child, SIGSTOP);
    wait_until_stopped(&child);
    signal(&child, SIGINT);
    signal(&child, SIGTERM);
    signal(&child, SIGCONT);
    let (code, stderr) = wait_exit(child, Duration::from_secs(60));
    assert!(
        stderr.contains("Quitting at once"),
        "the second signal quits at once: {stderr}"
    );
    assert!(
        matches!(code, Some(130) | Some(143)),
        "exit 128 + the second signal: {code:?} {stderr}"
    );
    let done = lines_done(&output);
    assert!(done >= 16, "what was committed stays: {done}");
    let cmd = resume_command(&stderr);
    let (code, stderr) = run_in_shell(&cmd);
    assert_eq!(code, Some(0), "the resume command completes: {stderr}");
    assert_each_id_once(&output, CTRL_C_LINES);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn spotinfer_batch_help_documents_exit_codes_and_hides_test_hooks() {
    let help = |sub: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_spotinfer"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let batch = help("batch");
    for row in [
        "  0    every line done",
        "  1    error",
        "  2    invalid command line",
    ] {
        assert!(batch.contains(row), "{row}: {batch}");
    }
    assert!(batch.contains("  75   stopped by SIGTERM"), "{batch}");
    assert!(batch.contains("  130  stopped by Ctrl-C"), "{batch}");
    let serve = help("serve");
    assert!(!serve.contains("test-batch-delay"), "{serve}");
    for heading in [
        "Model:",
        "Server:",
        "Batching:",
        "Batch jobs:",
        "Observability:",
    ] {
        assert!(serve.contains(heading), "{heading}: {serve}");
    }
    // A bad command line exits 2, as the help says.
    let out = Command::new(env!("CARGO_BIN_EXE_spotinfer"))
        .args(["batch", "--output", "x.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Through an unreliable network and S3 (delays, 503 SlowDown, 409 ConditionalRequestConflict on
/// create-only writes, connections dropped before and after the store saw a request), a job
/// still ends with every custom_id exactly once, in input order, vectors equal to direct
/// requests. The client retries what the server answers 5xx, as any client of a store must.
#[test]
fn server_batch_through_store_faults_completes_exactly_once() {
    let dir = temp_dir("faulty-s3");
    let s3 = common::s3::S3::start();
    let proxy = common::s3::FaultProxy::start(&s3, 7);
    let input = dir.join("in.jsonl");
    let t = texts(240);
    write_input(&input, &t);
    let mut builder = Server::builder(&test_model_dir())
        .args(["--state-dir", &s3.url("faulty")])
        .args(["--batch-chunk-lines", "8", "--batch-segment-lines", "48"])
        .args(["--batch-lease-secs", "5", "--batch-backlog-interval", "0.5"]);
    for (k, v) in proxy.env(&s3) {
        builder = builder.env(k, v);
    }
    let server = builder.start();
    let retry = |what: &str, mut call: Box<dyn FnMut() -> (u16, Value) + '_>| -> Value {
        for _ in 0..20 {
            let (status, v) = call();
            if status == 200 {
                return v;
            }
            assert!(status >= 500, "{what}: {status} {v}");
        }
        panic!("{what}: 20 tries answered 5xx");
    };
    let file_id = retry(
        "upload",
        Box::new(|| {
            let form = reqwest::blocking::multipart::Form::new()
                .text("purpose", "batch")
                .file("file", &input)
                .unwrap();
            let r = blocking_client()
                .post(server.url("/v1/files"))
                .multipart(form)
                .send()
                .unwrap();
            (r.status().as_u16(), r.json().unwrap_or_default())
        }),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = retry(
        "create",
        Box::new(|| {
            server.post_json(
                "/v1/batches",
                json!({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}),
            )
        }),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Polls through 5xx answers too: a store error is not a job's failure.
    let b = wait_completed(&server, &id, Duration::from_secs(300));
    assert_eq!(b["request_counts"]["completed"], 240, "{b}");
    let out_id = b["output_file_id"].as_str().unwrap().to_string();
    let text = retry(
        "download",
        Box::new(|| {
            let r = blocking_client()
                .get(server.url(&format!("/v1/files/{out_id}/content")))
                .send()
                .unwrap();
            let status = r.status().as_u16();
            (status, Value::String(r.text().unwrap_or_default()))
        }),
    );
    let lines = parse_lines(text.as_str().unwrap());
    assert_in_order(&lines, 240);
    let faults = proxy.stop();
    // Direct requests go straight to the model: the proxy only sits in front of the store.
    let want = want(&server, &t);
    check_output(&lines, &want);
    for kind in ["delay", "slowdown", "conflict", "drop_before", "drop_after"] {
        assert!(
            faults.get(kind).copied().unwrap_or(0) > 0,
            "the proxy injected no {kind}: {faults:?}"
        );
    }
    eprintln!("faults injected: {faults:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `spotinfer batch` with object URLs: processes given the same command share one job in the
/// bucket (a Kubernetes Job with `parallelism: N`). Two run it; one is SIGKILLed mid-way and a
/// third joins; the output object holds every custom_id once, in input order, vectors equal to
/// direct requests, and the same command run again finds it complete.
#[test]
fn spotinfer_batch_processes_share_one_job_on_s3_through_a_kill() {
    let s3 = common::s3::S3::start();
    let t = texts(200);
    s3.put_object("inputs/in.jsonl", jsonl(&t).into_bytes());
    let input = format!("s3://{}/inputs/in.jsonl", s3.bucket);
    let output = format!("s3://{}/results/out.jsonl", s3.bucket);
    let spawn = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotinfer"));
        cmd.args(["batch", "--model-id", test_model_dir().to_str().unwrap()])
            .args(["--input", &input, "--output", &output])
            .args([
                "--chunk-lines",
                "8",
                "--segment-lines",
                "24",
                "--lease-secs",
                "3",
            ])
            .args(["--no-progress", "--test-batch-delay-ms", "30"])
            .stderr(std::process::Stdio::piped());
        for (k, v) in s3.env() {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn spotinfer batch")
    };
    let mut first = spawn();
    let second = spawn();
    // The event: chunks committed in the bucket.
    let deadline = Instant::now() + Duration::from_secs(180);
    while s3
        .keys("results/out.jsonl.spotinfer/batches/")
        .iter()
        .filter(|k| k.contains("/chunks/"))
        .count()
        < 4
    {
        assert!(Instant::now() < deadline, "no chunk was committed");
        std::thread::sleep(Duration::from_millis(50));
    }
    first.kill().unwrap();
    let _ = first.wait();
    let third = spawn();
    for (name, child) in [("second", second), ("third", third)] {
        let (code, stderr) = wait_exit(child, Duration::from_secs(300));
        assert_eq!(code, Some(0), "{name}: {stderr}");
        assert!(stderr.contains("batch complete"), "{name}: {stderr}");
    }
    let text = String::from_utf8(s3.get_object("results/out.jsonl").expect("output")).unwrap();
    let lines = parse_lines(&text);
    assert_in_order(&lines, 200);
    assert!(s3.get_object("results/out.jsonl.errors.jsonl").is_none());
    let server = Server::start_minilm();
    let want = want(&server, &t);
    check_output(&lines, &want);
    // The same command again: already complete, the output untouched.
    let (code, stderr) = wait_exit(spawn(), Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("batch complete"), "{stderr}");
    assert_eq!(
        s3.get_object("results/out.jsonl").unwrap(),
        text.into_bytes()
    );
}

/// A state folder written by a release before the object-store layout (a job was
/// `batches/<id>/batch.json`, a file record named its bytes by absolute path): the new server
/// serves the finished job's output as it was and runs the unfinished one to completion.
#[test]
fn an_older_releases_state_folder_is_adopted_at_start() {
    let dir = temp_dir("legacy");
    let state = dir.join("state");
    let n = 40;
    let texts = texts(n);
    let root = state.to_str().unwrap();
    let record = |id: &str, purpose: &str, data: String, bytes: usize| {
        json!({"file": {"id": id, "object": "file", "bytes": bytes, "created_at": 1,
                        "filename": "in.jsonl", "purpose": purpose, "status": "processed"},
               "data": data})
    };
    let write = |rel: &str, body: &[u8]| {
        let p = state.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    };
    let input = jsonl(&texts);
    write("files/file-oldinput.jsonl", input.as_bytes());
    let rec = record(
        "file-oldinput",
        "batch",
        format!("{root}/files/file-oldinput.jsonl"),
        input.len(),
    );
    write("files/file-oldinput.json", rec.to_string().as_bytes());
    let old_output = "{\"custom_id\":\"req-0\",\"response\":{\"status_code\":200}}\n";
    write("batches/batch_olddone/output.jsonl", old_output.as_bytes());
    let rec = record(
        "file-oldoutput",
        "batch_output",
        format!("{root}/batches/batch_olddone/output.jsonl"),
        old_output.len(),
    );
    write("files/file-oldoutput.json", rec.to_string().as_bytes());
    let job = |id: &str, status: &str, output: Value| {
        json!({"id": id, "object": "batch", "endpoint": "/v1/embeddings", "errors": null,
               "input_file_id": "file-oldinput", "completion_window": "24h", "status": status,
               "output_file_id": output, "error_file_id": null, "created_at": 1,
               "in_progress_at": 2, "expires_at": null, "finalizing_at": null,
               "completed_at": null, "failed_at": null, "expired_at": null,
               "cancelling_at": null, "cancelled_at": null,
               "request_counts": {"total": n, "completed": 7, "failed": 0}, "metadata": null})
    };
    let done = job("batch_olddone", "completed", json!("file-oldoutput"));
    write(
        "batches/batch_olddone/batch.json",
        done.to_string().as_bytes(),
    );
    let running = job("batch_oldrunning", "in_progress", Value::Null);
    write(
        "batches/batch_oldrunning/batch.json",
        running.to_string().as_bytes(),
    );
    // The old release's plan and a partial segment: ignored by the new layout.
    write(
        "batches/batch_oldrunning/segments.json",
        b"{\"segments\": []}",
    );
    write(
        "batches/batch_oldrunning/segments/00000/run-a.jsonl",
        b"partial\n",
    );

    let server = Store::Dir(state.clone())
        .server(Server::builder(&test_model_dir()))
        .start();
    server.wait_log("adopted", Duration::from_secs(60));
    let (status, b) = server.get_json("/v1/batches/batch_olddone");
    assert_eq!(
        (status, b["status"].as_str()),
        (200, Some("completed")),
        "{b}"
    );
    let text = blocking_client()
        .get(server.url("/v1/files/file-oldoutput/content"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(text, old_output, "the finished job's output, as it was");

    let b = wait_completed(&server, "batch_oldrunning", Duration::from_secs(120));
    assert_eq!(b["request_counts"]["completed"], n, "{b}");
    let lines = file_lines(&server, b["output_file_id"].as_str().unwrap());
    assert_in_order(&lines, n);
    check_output(&lines, &want(&server, &texts));
    let _ = std::fs::remove_dir_all(&dir);
}
