//! The KEDA triggers against a real Prometheus: Prometheus (Debian's `prometheus`, which
//! scripts/test.sh installs) scrapes the server's metrics port on loopback every second, with the
//! target labels the ServiceMonitor would give it (namespace, service, pod); the server takes a
//! bounded load; then every `query:` of deploy/base/scaledobject.yaml, verbatim, goes through
//! Prometheus' HTTP API and must return exactly one finite number, and the request rate must
//! see the load.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Prometheus on loopback, killed (and its data removed) on drop.
struct Prometheus {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn start_prometheus(target: &str) -> Prometheus {
    let bin = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let dir = std::env::temp_dir().join(format!("spotinfer-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: spotinfer\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
             \x20   static_configs:\n      - targets: ['{target}']\n        labels:\n\
             \x20         namespace: spotinfer\n          service: spotinfer\n          pod: spotinfer-test-0\n"
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
                "cannot start `{bin}` ({e}): run the tests with scripts/test.sh, which installs \
                 Debian's `prometheus` package"
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

impl Prometheus {
    /// An instant query: the result vector.
    fn query(&self, q: &str) -> Vec<Value> {
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
    fn one_number(&self, q: &str) -> f64 {
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

/// Every trigger query of a ScaledObject manifest, as KEDA sends it.
fn scaledobject_queries(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("query: "))
        .map(|q| q.trim().to_string())
        .collect()
}

#[test]
fn every_scaledobject_query_returns_one_number_from_a_real_prometheus() {
    let queries = scaledobject_queries(&repo_root().join("deploy/base/scaledobject.yaml"));
    assert_eq!(
        queries.len(),
        2,
        "request-rate and queue-depth: {queries:?}"
    );

    // A slowed device worker taking one input per device batch: four clients keep inputs
    // waiting, so the queue-depth query must see them.
    let server = Server::builder(&tiny_model_dir())
        .args(["--max-batch-requests", "1"])
        .env("SPOTINFER_TEST_BATCH_DELAY_MS", "40")
        .start();
    let target = server
        .metrics_base
        .trim_start_matches("http://")
        .to_string();
    let prom = start_prometheus(&target);

    // Before any traffic: zeros, but already one number each (present from the first scrape).
    let deadline = Instant::now() + Duration::from_secs(20);
    while prom.query("up{job=\"spotinfer\"} == 1").is_empty() {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped {target}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for q in &queries {
        prom.one_number(q);
    }

    // Bounded load: 4 clients x 50 requests.
    let load: Vec<_> = (0..4)
        .map(|c| {
            let url = server.url("/v1/embeddings");
            std::thread::spawn(move || {
                let client = blocking_client();
                for i in 0..50 {
                    let r = client
                        .post(&url)
                        .json(&json!({"input": format!("client {c} request {i}: spot capacity")}))
                        .send()
                        .expect("request");
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for t in load {
        t.join().expect("load thread");
    }

    // The request rate sees the load once two scrapes bracket it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rate = loop {
        let v = prom.one_number(&queries[0]);
        if v > 0.0 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        rate > 0.0,
        "request-rate query stayed at 0 after 200 requests"
    );
    // Inputs waited during the load: the 1-minute average of the depth is above zero.
    let depth = prom.one_number(&queries[1]);
    assert!(
        depth > 0.0,
        "queue-depth query stayed at 0 while 4 clients queued behind a one-input worker"
    );
    // The series behind them carry the labels the queries select on.
    let series = prom.query(
        "inference_request_duration_seconds_count{namespace=\"spotinfer\",service=\"spotinfer\",route=\"/v1/embeddings\",status=\"2xx\"}",
    );
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0]["metric"]["pod"], "spotinfer-test-0");
}
