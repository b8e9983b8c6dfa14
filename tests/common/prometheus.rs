//! A real Prometheus on loopback for the KEDA tests (Debian's `prometheus`, which
//! scripts/test.sh installs), and the trigger queries of a ScaledObject manifest.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::blocking_client;

/// Prometheus on loopback, killed (and its data removed) on drop.
pub struct Prometheus {
    child: Child,
    pub base: String,
    pub dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A scrape job for one target with the labels the ServiceMonitor would give it.
pub fn static_job(target: &str, service: &str, pod: &str) -> String {
    format!(
        "  - job_name: spotinfer\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
         \x20   static_configs:\n      - targets: ['{target}']\n        labels:\n\
         \x20         namespace: spotinfer\n          service: {service}\n          pod: {pod}\n"
    )
}

impl Prometheus {
    /// Starts Prometheus (1 s scrapes and evaluations) with `scrape_configs`, the YAML list
    /// items under `scrape_configs:`, in its own folder `name` (which they may refer to).
    pub fn start(name: &str, scrape_configs: impl FnOnce(&Path) -> String) -> Prometheus {
        let bin = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let dir = std::env::temp_dir().join(format!("spotinfer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{}",
                scrape_configs(&dir)
            ),
        )
        .expect("prometheus config");
        let port = free_port();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{bin}` ({e}): run the tests with scripts/test.sh, which \
                     installs Debian's `prometheus` package"
                )
            });
        let prom = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let client = blocking_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/-/ready", prom.base)).send() {
                if r.status() == 200 {
                    return prom;
                }
            }
            assert!(Instant::now() < deadline, "Prometheus not ready in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query: the result vector.
    pub fn query(&self, q: &str) -> Vec<Value> {
        let body: Value = blocking_client()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", q)])
            .send()
            .expect("query Prometheus")
            .json()
            .expect("JSON from Prometheus");
        assert_eq!(body["status"], "success", "query {q} failed: {body}");
        assert_eq!(body["data"]["resultType"], "vector", "{q}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single number `q` returns; panics unless there is exactly one finite sample.
    pub fn one_number(&self, q: &str) -> f64 {
        let result = self.query(q);
        assert_eq!(result.len(), 1, "`{q}` must return one series: {result:?}");
        let v: f64 = result[0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN);
        assert!(v.is_finite(), "`{q}` returned {v}");
        v
    }
}

/// Every trigger of a ScaledObject manifest as (name, query), in order, as KEDA sends them.
pub fn scaledobject_triggers(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut name = String::new();
    for l in text.lines().map(str::trim) {
        if let Some(n) = l.strip_prefix("name: ") {
            name = n.trim().to_string();
        }
        if let Some(q) = l.strip_prefix("query: ") {
            out.push((name.clone(), q.trim().to_string()));
        }
    }
    out
}
