//! One batch job over a fleet: replicas of the real binary on one state dir (the tiny model,
//! workers slowed by a fixed delay per device batch so every replica gets segments), an
//! intake-only replica that accepts and polls jobs and runs no model, replicas SIGKILLed at
//! random points and one started again. The job completes with every custom_id exactly once,
//! in input order, all 200, vectors equal to direct requests; every model replica ran lines;
//! the fleet backlog gauge is the store's value as of at most one refresh ago on every replica
//! and falls to 0, and the KEDA job-backlog trigger, evaluated by a real Prometheus scraping
//! the fleet, follows it.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::prometheus::{scaledobject_triggers, Prometheus};
use common::*;
use rand::Rng;
use serde_json::{json, Value};

const SIGKILL: i32 = 9;
/// The replicas' gauge refresh (`--batch-backlog-interval`).
const REFRESH: Duration = Duration::from_millis(500);

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spotinfer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("Fleet line {i}: spot capacity note number {}.", i * 13 % 97))
        .collect()
}

fn write_input(path: &Path, texts: &[String]) {
    let mut s = String::new();
    for (i, t) in texts.iter().enumerate() {
        s.push_str(
            &json!({"custom_id": format!("req-{i}"), "method": "POST", "url": "/v1/embeddings",
                    "body": {"input": t}})
            .to_string(),
        );
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// A replica on `state`: small segments and chunks, a short lease and refresh; `delay_ms`
/// per device batch of at most 4 lines.
fn replica(state: &Path, delay_ms: u64, extra: &[&str]) -> Server {
    Server::builder(&tiny_model_dir())
        .args(["--state-dir", state.to_str().unwrap()])
        .args(["--batch-segment-lines", "100", "--batch-chunk-lines", "10"])
        .args(["--batch-lease-secs", "5", "--batch-backlog-interval", "0.5"])
        .args(["--max-batch-requests", "4", "--drain-delay", "0"])
        .args(["--cost-per-hour", "3.6"])
        .args(["--test-batch-delay-ms", &delay_ms.to_string()])
        .args(extra.iter().copied())
        .start()
}

fn job(server: &Server, id: &str) -> Value {
    let (status, b) = server.get_json(&format!("/v1/batches/{id}"));
    assert_eq!(status, 200, "{b}");
    b
}

/// (status, lines done, total).
fn progress(b: &Value) -> (String, u64, u64) {
    let c = &b["request_counts"];
    (
        b["status"].as_str().unwrap_or_default().to_string(),
        c["completed"].as_u64().unwrap_or(0) + c["failed"].as_u64().unwrap_or(0),
        c["total"].as_u64().unwrap_or(0),
    )
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn gauge(server: &Server, name: &str) -> Option<f64> {
    let text = blocking_client()
        .get(format!("{}/metrics", server.metrics_base))
        .send()
        .ok()?
        .text()
        .ok()?;
    metric_value(&text, name)
}

/// Waits until `server` has passed over the job store `n` more times: every job it could see
/// has had its chance to move.
fn wait_scans(server: &Server, n: f64) {
    let scans = || gauge(server, "inference_batch_store_scans_total").unwrap_or(0.0);
    let from = scans();
    wait_until("passes over the job store", Duration::from_secs(30), || {
        scans() >= from + n
    });
}

fn lines_run(server: &Server) -> f64 {
    gauge(server, "inference_batch_lines_total{outcome=\"succeeded\"}").unwrap_or(0.0)
}

fn output_lines(server: &Server, file_id: &str) -> Vec<Value> {
    blocking_client()
        .get(server.url(&format!("/v1/files/{file_id}/content")))
        .send()
        .unwrap()
        .text()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every custom_id once, in input order, all 200, each vector equal to the direct one.
fn check_in_order(lines: &[Value], want: &[Vec<f32>]) {
    assert_eq!(lines.len(), want.len(), "one output line per input line");
    for (i, (l, w)) in lines.iter().zip(want).enumerate() {
        assert_eq!(
            l["custom_id"],
            format!("req-{i}"),
            "line {i} out of order: {l}"
        );
        assert_eq!(l["response"]["status_code"], 200, "{l}");
        let got = as_vec(&l["response"]["body"]["data"][0]["embedding"]);
        let c = cosine(&got, w);
        assert!(c >= 0.9999, "req-{i}: cosine {c}");
    }
}

/// Prometheus with a file_sd target list the test rewrites as replicas come and go.
struct Fleet {
    prom: Prometheus,
    targets: Mutex<Vec<(String, String, String)>>,
}

impl Fleet {
    fn new() -> Self {
        let prom = Prometheus::start("fleet-prometheus", |dir| {
            std::fs::write(dir.join("targets.json"), "[]").unwrap();
            format!(
                "  - job_name: spotinfer\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
                 \x20   file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 1s\n",
                dir.join("targets.json").display()
            )
        });
        Fleet {
            prom,
            targets: Mutex::new(Vec::new()),
        }
    }

    fn add(&self, server: &Server, service: &str, pod: &str) {
        let mut t = self.targets.lock().unwrap();
        t.push((
            server
                .metrics_base
                .trim_start_matches("http://")
                .to_string(),
            service.to_string(),
            pod.to_string(),
        ));
        let groups: Vec<Value> = t
            .iter()
            .map(|(target, service, pod)| {
                json!({"targets": [target], "labels": {"namespace": "spotinfer", "service": service, "pod": pod}})
            })
            .collect();
        let tmp = self.prom.dir.join("targets.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&groups).unwrap()).unwrap();
        std::fs::rename(tmp, self.prom.dir.join("targets.json")).unwrap();
    }
}

/// Truth over time: (request start, request end, pending lines) from the intake's API.
type History = Arc<Mutex<Vec<(Instant, Instant, f64)>>>;

/// Checks one round of gauge readings taken in [t0, t1] against the truth: each must be the
/// store's value as of some moment in the last refresh (plus scheduling slack).
fn check_gauges(history: &History, t0: Instant, t1: Instant, gauges: &[(String, f64)]) -> bool {
    let slack = Duration::from_millis(1000);
    let h = history.lock().unwrap();
    let Some(earliest) = t0.checked_sub(REFRESH + slack) else {
        return false;
    };
    let upper = h.iter().rev().find(|(_, end, _)| *end <= earliest);
    let lower = h.iter().find(|(start, _, _)| *start >= t1);
    let (Some(&(_, _, hi)), Some(&(_, _, lo))) = (upper, lower) else {
        return false;
    };
    for (who, g) in gauges {
        assert!(
            lo <= *g && *g <= hi,
            "{who}: backlog gauge {g} is not the store's value of the last refresh ({lo}..={hi})"
        );
    }
    true
}

#[test]
fn one_job_runs_on_the_whole_fleet_through_kills_exactly_once() {
    let seed: u64 = rand::rng().random();
    eprintln!("kill schedule seed {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let dir = temp_dir("fleet");
    let state = dir.join("state");
    let input = dir.join("in.jsonl");
    let n = 2400;
    let t = texts(n);
    write_input(&input, &t);

    let started = Instant::now();
    let fleet = Fleet::new();
    let intake = replica(&state, 0, &["--intake-only"]);
    fleet.add(&intake, "spotinfer-intake", "intake-0");
    let mut workers: Vec<Option<Server>> = (0..3).map(|_| Some(replica(&state, 30, &[]))).collect();
    for (i, w) in workers.iter().enumerate() {
        fleet.add(w.as_ref().unwrap(), "spotinfer", &format!("gpu-{i}"));
    }
    let (status, _) = intake.post_json("/v1/embeddings", json!({"input": "x"}));
    assert_eq!(status, 503, "the intake replica runs no model");

    let file_id = intake.upload_batch(&input);
    let id = intake.create_batch(&file_id);
    wait_until("validation", Duration::from_secs(30), || {
        progress(&job(&intake, &id)).2 == n as u64
    });

    // The truth, sampled continuously from the intake's API.
    let history: History = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (history, done, base, id) = (
            history.clone(),
            done.clone(),
            intake.base.clone(),
            id.clone(),
        );
        std::thread::spawn(move || {
            let client = blocking_client();
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let t0 = Instant::now();
                let b: Value = client
                    .get(format!("{base}/v1/batches/{id}"))
                    .send()
                    .and_then(|r| r.json())
                    .unwrap_or(Value::Null);
                let (_, done_lines, total) = progress(&b);
                if total > 0 {
                    history
                        .lock()
                        .unwrap()
                        .push((t0, Instant::now(), (total - done_lines) as f64));
                }
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };

    // Kill two replicas at random points (after each ran lines), restart one of them.
    let kill_at = rng.random_range(0.15..0.3);
    let second_at = kill_at + rng.random_range(0.1..0.2);
    let mut victims = vec![0usize, 1, 2];
    let first = victims.remove(rng.random_range(0..3));
    let second = victims.remove(rng.random_range(0..2));
    let mut ran: HashMap<String, f64> = HashMap::new();
    let mut checked_rounds = 0;
    let mut backlog_seen = 0.0f64;
    let backlog_query = scaledobject_triggers(&repo_root().join("deploy/base/scaledobject.yaml"))
        .into_iter()
        .find(|(name, _)| name == "job-backlog")
        .expect("a job-backlog trigger")
        .1;
    let mut step = 0;
    let mut restarted = false;
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        assert!(
            Instant::now() < deadline,
            "the job never completed: {}",
            job(&intake, &id)
        );
        let (status, done_lines, total) = progress(&job(&intake, &id));
        if status == "completed" {
            break;
        }
        assert!(
            ["in_progress", "finalizing"].contains(&status.as_str()),
            "{status}"
        );
        let frac = done_lines as f64 / total as f64;
        let due = match step {
            0 => (frac >= kill_at).then_some(first),
            1 => (frac >= second_at).then_some(second),
            _ => None,
        };
        if let Some(k) = due {
            let w = workers[k].as_ref().unwrap();
            if lines_run(w) > 0.0 {
                ran.insert(format!("gpu-{k}"), lines_run(w));
                w.signal(SIGKILL);
                let mut w = workers[k].take().unwrap();
                let _ = w.wait_exit(Duration::from_secs(10));
                eprintln!("SIGKILLed gpu-{k} at {:.0} %", frac * 100.0);
                step += 1;
            }
        }
        if step == 2 && !restarted {
            let k = if rng.random_bool(0.5) { first } else { second };
            let w = replica(&state, 30, &[]);
            fleet.add(&w, "spotinfer", &format!("gpu-{k}-restarted"));
            workers[k] = Some(w);
            restarted = true;
            eprintln!("restarted gpu-{k}");
        }
        // One round of gauge readings from every live replica.
        let t0 = Instant::now();
        let mut gauges = vec![(
            "intake".to_string(),
            gauge(&intake, "inference_batch_backlog_lines").unwrap(),
        )];
        for (k, w) in workers.iter().enumerate() {
            if let Some(w) = w {
                if let Some(g) = gauge(w, "inference_batch_backlog_lines") {
                    gauges.push((format!("gpu-{k}"), g));
                }
            }
        }
        let t1 = Instant::now();
        std::thread::sleep(Duration::from_millis(150));
        if check_gauges(&history, t0, t1, &gauges) {
            checked_rounds += 1;
        }
        backlog_seen = backlog_seen.max(fleet.prom.one_number(&backlog_query));
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    sampler.join().unwrap();
    let elapsed = started.elapsed();
    assert!(
        checked_rounds >= 3,
        "too few gauge rounds bracketed by the truth: {checked_rounds}"
    );
    assert!(
        backlog_seen > 0.0,
        "the KEDA job-backlog query never saw the backlog"
    );

    // Every replica that ran, ran lines (the killed ones were read just before their kill).
    for (k, w) in workers.iter().enumerate() {
        if let Some(w) = w {
            ran.insert(format!("gpu-{k}-last"), lines_run(w));
        }
    }
    assert_eq!(ran.len(), 4, "{ran:?}");
    assert!(
        ran.values().all(|v| *v > 0.0),
        "every replica ran lines: {ran:?}"
    );
    assert_eq!(lines_run(&intake), 0.0, "the intake replica runs no lines");

    // The output: exactly once, in input order, equal to direct requests.
    let b = job(&intake, &id);
    assert_eq!(b["request_counts"]["completed"], n as u64, "{b}");
    assert_eq!(b["request_counts"]["failed"], 0);
    assert!(b["error_file_id"].is_null());
    let lines = output_lines(&intake, b["output_file_id"].as_str().unwrap());
    check_in_order(
        &lines,
        &Server::builder(&tiny_model_dir()).start().embeddings(&t),
    );
    // Cost per job: device seconds x $3.60/h, as string metadata.
    let secs: f64 = b["metadata"]["spotinfer_device_seconds"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let cost: f64 = b["metadata"]["spotinfer_cost_usd"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs > 0.0, "{b}");
    assert!(
        (cost - secs / 1000.0).abs() < 2e-6 + secs * 1e-3,
        "{cost} for {secs} s"
    );

    // Back to zero everywhere within a refresh, and in the KEDA query.
    wait_until(
        "the gauges at 0",
        REFRESH * 4 + Duration::from_secs(2),
        || {
            std::iter::once(&intake)
                .chain(workers.iter().flatten())
                .all(|s| gauge(s, "inference_batch_backlog_lines") == Some(0.0))
        },
    );
    wait_until("the KEDA query at 0", Duration::from_secs(15), || {
        fleet.prom.one_number(&backlog_query) == 0.0
    });
    eprintln!("fleet job of {n} lines: {:.1} s", elapsed.as_secs_f64());
    drop((workers, intake));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn jobs_wait_on_an_intake_replica_until_a_worker_starts_and_cancel_stops_every_segment() {
    let dir = temp_dir("intake");
    let state = dir.join("state");
    let input = dir.join("in.jsonl");
    let n = 600;
    write_input(&input, &texts(n));
    let intake = replica(&state, 0, &["--intake-only"]);
    let file_id = intake.upload_batch(&input);
    let first = intake.create_batch(&file_id);
    // Validated by the intake (no model needed); the backlog is visible; nothing runs.
    wait_until("validation", Duration::from_secs(30), || {
        progress(&job(&intake, &first)) == ("in_progress".into(), 0, n as u64)
    });
    wait_until("the backlog gauge", Duration::from_secs(5), || {
        gauge(&intake, "inference_batch_backlog_lines") == Some(n as f64)
    });
    wait_scans(&intake, 3.0);
    assert_eq!(progress(&job(&intake, &first)).1, 0, "no model, no lines");

    // Two workers come up: the first job runs on both; a second one, sharing the fleet with
    // it, is cancelled mid-run and stops everywhere.
    let a = replica(&state, 40, &[]);
    let b = replica(&state, 40, &[]);
    let second = intake.create_batch(&file_id);
    wait_until("the second job to start", Duration::from_secs(60), || {
        progress(&job(&intake, &second)).1 >= 100
    });
    let (status, c) = intake.post_json(&format!("/v1/batches/{second}/cancel"), json!({}));
    assert_eq!(status, 200, "{c}");
    wait_until("the cancel", Duration::from_secs(60), || {
        job(&intake, &second)["status"] == "cancelled"
    });
    let cancelled = job(&intake, &second);
    let kept = cancelled["request_counts"]["completed"].as_u64().unwrap();
    assert!(kept < n as u64, "{cancelled}");
    for r in [&intake, &a, &b] {
        wait_scans(r, 3.0);
    }
    assert_eq!(
        job(&intake, &second),
        cancelled,
        "nothing runs after the cancel"
    );
    if let Some(out) = cancelled["output_file_id"].as_str() {
        let lines = output_lines(&intake, out);
        assert_eq!(lines.len() as u64, kept);
        // A subset of the input, each once, in input order.
        let ids: Vec<u64> = lines
            .iter()
            .map(|l| l["custom_id"].as_str().unwrap()[4..].parse().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }

    wait_until("the first job", Duration::from_secs(120), || {
        job(&intake, &first)["status"] == "completed"
    });
    let done = job(&intake, &first);
    assert_eq!(done["request_counts"]["completed"], n as u64);
    assert_eq!(
        output_lines(&intake, done["output_file_id"].as_str().unwrap()).len(),
        n
    );
    assert!(
        lines_run(&a) > 0.0 && lines_run(&b) > 0.0,
        "both workers ran lines"
    );
    wait_until("the backlog at 0", Duration::from_secs(5), || {
        gauge(&intake, "inference_batch_backlog_lines") == Some(0.0)
    });
    drop((a, b, intake));
    let _ = std::fs::remove_dir_all(&dir);
}
