//! A real S3-compatible server for the tests: moto's server (it implements conditional writes,
//! If-None-Match and If-Match on PutObject, as S3 does), started on loopback on a free port
//! and stopped when dropped, with one bucket.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::script_result;

pub struct S3 {
    child: Child,
    python: String,
    pub endpoint: String,
    pub bucket: String,
}

impl S3 {
    pub fn start() -> S3 {
        let python = script_result(
            "make-s3-venv.sh",
            &[],
            "the object-storage tests need moto's S3 server from PyPI",
        );
        let mut child = Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moto's S3 server");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // Its log goes on being read (and dropped) so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(url) = line.split("Running on ").nth(1) {
                        let _ = tx.send(url.trim().to_string());
                        sent = true;
                    }
                }
            }
        });
        let endpoint = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("moto's S3 server printed no address within 60 s");
        let bucket = "spotinfer-test".to_string();
        let client = super::blocking_client();
        let started = Instant::now();
        let r = client
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .expect("create the bucket");
        assert!(
            r.status().is_success(),
            "create bucket: {} after {:?}",
            r.status(),
            started.elapsed()
        );
        S3 {
            child,
            python,
            endpoint,
            bucket,
        }
    }

    /// The state URL of a prefix in the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The standard AWS environment that points a client at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Runs tests/python/s3_object.py (boto3, signed as a user's client is).
    fn object(&self, verb: &str, arg: &str, body: Option<Vec<u8>>) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(&self.python)
            .arg(super::repo_root().join("tests/python/s3_object.py"))
            .args([&self.endpoint, &self.bucket, verb, arg])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run s3_object.py");
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(&body.unwrap_or_default())
            .expect("write body");
        drop(stdin);
        child.wait_with_output().expect("s3_object.py")
    }

    /// Writes an object straight into the bucket (a user's own upload).
    pub fn put_object(&self, key: &str, body: Vec<u8>) {
        let out = self.object("put", key, Some(body));
        assert!(
            out.status.success(),
            "put {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Reads an object straight from the bucket.
    pub fn get_object(&self, key: &str) -> Option<Vec<u8>> {
        let out = self.object("get", key, None);
        match out.status.code() {
            Some(0) => Some(out.stdout),
            Some(3) => None,
            _ => panic!("get {key}: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    /// Keys under a prefix.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.object("keys", prefix, None);
        assert!(
            out.status.success(),
            "list {prefix}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tests/python/s3_fault_proxy.py in front of an [`S3`]: delays, 503 SlowDown, 409
/// ConditionalRequestConflict on create-only writes, connections dropped before and after the
/// server saw the request. Stopped when dropped.
pub struct FaultProxy {
    child: Child,
    pub endpoint: String,
    counts: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(s3: &S3, seed: u64) -> FaultProxy {
        let mut child = Command::new(&s3.python)
            .arg(super::repo_root().join("tests/python/s3_fault_proxy.py"))
            .args([&s3.endpoint, &seed.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the fault proxy");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the proxy's address");
        let endpoint = line
            .trim()
            .strip_prefix("proxy on ")
            .unwrap_or_else(|| panic!("unexpected proxy output: {line}"))
            .to_string();
        let counts = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped");
        let last = counts.clone();
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(c) = l.strip_prefix("faults ") {
                    *last.lock().unwrap() = c.to_string();
                }
            }
        });
        FaultProxy {
            child,
            endpoint,
            counts,
            reader: Some(reader),
        }
    }

    /// The AWS environment that sends a client through the proxy.
    pub fn env(&self, s3: &S3) -> Vec<(&'static str, String)> {
        let mut env = s3.env();
        for (k, v) in env.iter_mut() {
            if *k == "AWS_ENDPOINT_URL" {
                *v = self.endpoint.clone();
            }
        }
        env
    }

    /// Stops the proxy and returns how many of each fault it injected.
    pub fn stop(mut self) -> std::collections::HashMap<String, u64> {
        // SAFETY: plain signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let text = self.counts.lock().unwrap().clone();
        let v: serde_json::Value =
            serde_json::from_str(&text.replace('\'', "\"")).unwrap_or_default();
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
