//! A real S3-compatible server for the tests: moto's server (it implements conditional writes,
//! If-None-Match and If-Match on PutObject, as S3 does), started on loopback on a free port
//! and stopped when dropped, with one bucket.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::script_result;

pub struct S3 {
    child: Child,
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
        let mut child = Command::new(python)
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

    /// Writes an object straight into the bucket (a user's own upload).
    pub fn put_object(&self, key: &str, body: Vec<u8>) {
        let r = super::blocking_client()
            .put(format!("{}/{}/{key}", self.endpoint, self.bucket))
            .body(body)
            .send()
            .expect("put object");
        assert!(r.status().is_success(), "put {key}: {}", r.status());
    }

    /// Reads an object straight from the bucket.
    pub fn get_object(&self, key: &str) -> Option<Vec<u8>> {
        let r = super::blocking_client()
            .get(format!("{}/{}/{key}", self.endpoint, self.bucket))
            .send()
            .expect("get object");
        r.status()
            .is_success()
            .then(|| r.bytes().expect("body").to_vec())
    }

    /// Keys under a prefix (S3 ListObjectsV2).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let r = super::blocking_client()
            .get(format!(
                "{}/{}?list-type=2&prefix={prefix}",
                self.endpoint, self.bucket
            ))
            .send()
            .expect("list objects")
            .text()
            .expect("body");
        r.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
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
