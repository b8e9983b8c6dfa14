//! Three replicas of the real binary on one S3 bucket (moto's server on loopback), each in its
//! own PID namespace (`unshare --pid --fork`, so every server is pid 1), once with distinct and
//! once with one shared `HOSTNAME` (and no `POD_NAME`): a 20,000-line job while every replica
//! serves c=32 online load; one replica is SIGKILLed, another SIGSTOPped until a live replica
//! has taken over one of its segments, then SIGCONTed. The output holds every `custom_id`
//! exactly once, in input order, with vectors equal to direct requests; the online requests
//! all succeed; and no segment ran twice while its owner was alive: the replicas that never
//! stalled lost no segment (`inference_batch_segments_lost_total` 0), and every takeover in the
//! fleet was from the killed or the stopped replica.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::s3::S3;
use common::*;
use serde_json::{json, Value};

const SIGKILL: i32 = 9;
const SIGCONT: i32 = 18;
const SIGSTOP: i32 = 19;

const LINES: usize = 20_000;
/// 20 segments of 1,000 lines, chunks of 100: many segments per replica, ten commits each
/// (few enough keys that moto's listings stay cheap).
const SEGMENT_LINES: u64 = 1000;
const CHUNK_LINES: u64 = 100;
/// Long enough that a live replica renews in time on a loaded two-core machine.
const LEASE_SECS: u64 = 10;
/// Online clients per replica.
const CLIENTS: usize = 32;
/// Each client's most requests: the load is bounded in count as well as by the job's end.
const REQUESTS_PER_CLIENT: usize = 4000;

const TAKEN_OVER: &str = "took over a segment whose holder's lease ran out";
const HOLDER: &str = "batch-job leases are held under this name";

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("Replica line {i}: a spot note, number {}.", i * 31 % 211))
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

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spotinfer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A replica as pid 1 of a fresh PID namespace (`--kill-child`: the server dies with the
/// harness's handle on `unshare`). Each device batch (up to 128 inputs, so 32 online ones leave
/// room for 96 job lines) sleeps 200 ms: the replicas are bound by that more than by the CPU,
/// and the online load stays light enough for a shared two-core machine.
fn replica(s3: &S3, prefix: &str, hostname: &str) -> Server {
    let mut b = Server::builder(&tiny_model_dir())
        .wrapped(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"])
        .args(["--state-dir", &s3.url(prefix)])
        .args(["--batch-segment-lines", &SEGMENT_LINES.to_string()])
        .args(["--batch-chunk-lines", &CHUNK_LINES.to_string()])
        .args(["--batch-lease-secs", &LEASE_SECS.to_string()])
        // Every tick lists the job's keys: on a CPU-starved moto, ticks of 0.5 s from three
        // replicas queue listings faster than it answers them.
        .args(["--batch-backlog-interval", "2", "--drain-delay", "0"])
        .args(["--max-batch-requests", "128", "--max-batch-tokens", "4096"])
        .args(["--test-batch-delay-ms", "200"])
        // Job lines fill a batch up to this much measured compute: at the default 50 ms a
        // CPU-starved shared machine would starve the job behind the online load.
        .args(["--batch-job-slice-ms", "2000"])
        .env("HOSTNAME", hostname)
        .env_remove("POD_NAME");
    for (k, v) in s3.env() {
        b = b.env(k, v);
    }
    b.start()
}

/// The replica's lease holder name, from its log.
fn holder(server: &Server) -> String {
    server.wait_log(HOLDER, Duration::from_secs(30));
    let text = server.log_text();
    let line = text.lines().find(|l| l.contains(HOLDER)).unwrap();
    field(line, "holder").unwrap_or_else(|| panic!("no holder in {line}"))
}

/// `name=value` from a log line (values here have no spaces).
fn field(line: &str, name: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .map(|v| v.trim_matches('"').to_string())
}

/// The previous holders of every segment this replica took over, from its log.
fn takeovers(server: &Server) -> Vec<String> {
    server
        .log_text()
        .lines()
        .filter(|l| l.contains(TAKEN_OVER))
        .map(|l| field(l, "from").unwrap_or_else(|| panic!("no from in {l}")))
        .collect()
}

/// The pid a process has in its own (innermost) PID namespace.
fn pid_in_namespace(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    line.split_whitespace().last().unwrap().parse().unwrap()
}

/// The process state letter (`R`, `S`, `T` stopped, ...).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn metric(server: &Server, series: &str) -> f64 {
    metric_value(&server.metrics_text(), series).unwrap_or(0.0)
}

fn lines_run(server: &Server) -> f64 {
    metric(server, "inference_batch_lines_total{outcome=\"succeeded\"}")
}

fn upload(server: &Server, path: &Path) -> String {
    let form = reqwest::blocking::multipart::Form::new()
        .text("purpose", "batch")
        .file("file", path)
        .unwrap();
    let r = blocking_client()
        .post(server.url("/v1/files"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// (status, lines done, total) of a job.
fn progress(server: &Server, id: &str) -> (String, u64, u64) {
    let (status, b) = server.get_json(&format!("/v1/batches/{id}"));
    assert_eq!(status, 200, "{b}");
    let c = &b["request_counts"];
    (
        b["status"].as_str().unwrap_or_default().to_string(),
        c["completed"].as_u64().unwrap_or(0) + c["failed"].as_u64().unwrap_or(0),
        c["total"].as_u64().unwrap_or(0),
    )
}

/// Polls until `ok`, failing with `what` (and the job's state) after `limit`.
fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // Each job poll lists the job's keys in the bucket: not too often.
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until the job has done `frac` of its lines (or ended).
fn wait_progress(server: &Server, id: &str, frac: f64) {
    wait_until(
        &format!("{:.0} % of the job", frac * 100.0),
        Duration::from_secs(180),
        || {
            let (status, done, total) = progress(server, id);
            assert!(
                ["validating", "in_progress", "finalizing", "completed"].contains(&status.as_str()),
                "{status}"
            );
            status == "completed" || (total > 0 && done as f64 >= frac * total as f64)
        },
    );
}

/// c=`CLIENTS` online /embed load on one replica, until stopped, `REQUESTS_PER_CLIENT` each, or
/// a deadline. Every answer must be a 200: the load stays under the replica's admission limits
/// (32 concurrent requests of one short input), so a 429 or 503 would be a bug, not saturation.
/// Requests to a killed replica (marked `dead` before the kill) may fail.
struct Load {
    stop: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(server: &Server, who: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let dead = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let deadline = Instant::now() + Duration::from_secs(400);
        // One pool for the replica's clients; longer than any stop: a stopped replica's
        // clients wait for it.
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(200))
            .pool_max_idle_per_host(CLIENTS)
            .no_proxy()
            .build()
            .unwrap();
        let threads = (0..CLIENTS)
            .map(|c| {
                let (stop, dead, ok, failures) =
                    (stop.clone(), dead.clone(), ok.clone(), failures.clone());
                let url = server.url("/embed");
                let client = client.clone();
                std::thread::spawn(move || {
                    for i in 0..REQUESTS_PER_CLIENT {
                        if stop.load(Ordering::Acquire)
                            || dead.load(Ordering::Acquire)
                            || Instant::now() >= deadline
                        {
                            return;
                        }
                        let text = format!("online {who}-{c}-{i}: a short query");
                        let r = client.post(&url).json(&json!({"inputs": text})).send();
                        let status = r.as_ref().map(|r| r.status().as_u16());
                        match status {
                            Ok(200) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            _ if dead.load(Ordering::Acquire) => return,
                            other => {
                                failures.lock().unwrap().push(format!(
                                    "replica {who} client {c}: {:?}",
                                    other.map_err(|e| e.to_string())
                                ));
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            dead,
            ok,
            failures,
            threads,
        }
    }

    fn served(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients; (requests answered 200, failures).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// The two scenarios take turns: six replicas at once would share two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn three_replicas_through_a_kill_and_a_stop(prefix: &str, hostnames: [&str; 3]) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let dir = temp_dir(prefix);
    let input = dir.join("in.jsonl");
    let t = texts(LINES);
    write_input(&input, &t);
    let s3 = S3::start();

    // 0 survives, 1 is SIGKILLed, 2 is SIGSTOPped and SIGCONTed.
    let mut replicas: Vec<Server> = std::thread::scope(|scope| {
        let handles: Vec<_> = hostnames
            .iter()
            .map(|h| scope.spawn(|| replica(&s3, prefix, h)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let inner: Vec<i32> = replicas.iter().map(Server::inner_pid).collect();
    for (k, pid) in inner.iter().enumerate() {
        assert_eq!(
            pid_in_namespace(*pid),
            1,
            "replica {k} is pid 1 in its namespace"
        );
    }
    let names: Vec<String> = replicas.iter().map(holder).collect();
    let distinct: HashSet<&String> = names.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "every replica holds leases as itself: {names:?}"
    );
    for (name, host) in names.iter().zip(hostnames) {
        assert!(
            name.starts_with(&format!("host:{host}/")),
            "{name} is named after HOSTNAME {host}"
        );
    }

    let file_id = upload(&replicas[0], &input);
    let (status, b) = replicas[0].post_json(
        "/v1/batches",
        json!({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}),
    );
    assert_eq!(status, 200, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let loads: Vec<Load> = replicas
        .iter()
        .enumerate()
        .map(|(k, r)| Load::start(r, k))
        .collect();

    // SIGKILL replica 1 once it runs segments (has committed lines) and the job is under way.
    wait_progress(&replicas[0], &id, 0.15);
    wait_until(
        "replica 1 to commit lines",
        Duration::from_secs(120),
        || lines_run(&replicas[1]) > 0.0,
    );
    assert_eq!(
        metric(&replicas[1], "inference_batch_segments_lost_total"),
        0.0,
        "replica 1 lost no segment while alive"
    );
    eprintln!(
        "replica 1 ran {} lines, replica 0 {}, job {:?}",
        lines_run(&replicas[1]),
        lines_run(&replicas[0]),
        progress(&replicas[0], &id)
    );
    loads[1].dead.store(true, Ordering::Release);
    replicas[1].signal_inner(SIGKILL);
    let (code, _) = replicas[1].wait_exit(Duration::from_secs(10));
    assert_ne!(code, Some(0), "unshare ends with its killed pid 1");
    assert!(
        proc_state(inner[1]).is_none(),
        "the killed server is gone, not a zombie"
    );
    eprintln!("SIGKILLed replica 1 at {:?}", started.elapsed());

    // SIGSTOP replica 2 while it runs segments; keep it stopped until replica 0 has taken one
    // of them over, which only its lease running out allows.
    wait_progress(&replicas[0], &id, 0.35);
    let before_stop = lines_run(&replicas[2]);
    wait_until(
        "replica 2 to commit more lines",
        Duration::from_secs(120),
        || lines_run(&replicas[2]) > before_stop,
    );
    assert_eq!(
        metric(&replicas[2], "inference_batch_segments_lost_total"),
        0.0,
        "replica 2 lost no segment before it stalled"
    );
    replicas[2].signal_inner(SIGSTOP);
    wait_until("replica 2 to stop", Duration::from_secs(5), || {
        proc_state(inner[2]) == Some('T')
    });
    let stopped_at = Instant::now();
    eprintln!("SIGSTOPped replica 2 at {:?}", started.elapsed());
    wait_until(
        "replica 0 to take over a segment of the stopped replica",
        Duration::from_secs(150),
        || takeovers(&replicas[0]).contains(&names[2]),
    );
    let stopped_for = stopped_at.elapsed();
    replicas[2].signal_inner(SIGCONT);
    eprintln!(
        "SIGCONTed replica 2 after {stopped_for:?} (lease {LEASE_SECS} s) at {:?}",
        started.elapsed()
    );
    // Back, it finds its segments taken and stops them.
    wait_until(
        "the resumed replica to give up its taken segments",
        Duration::from_secs(60),
        || metric(&replicas[2], "inference_batch_segments_lost_total") >= 1.0,
    );

    wait_until("the job to complete", Duration::from_secs(300), || {
        let (status, _, _) = progress(&replicas[0], &id);
        assert!(
            ["in_progress", "finalizing", "completed"].contains(&status.as_str()),
            "{status}"
        );
        status == "completed"
    });
    let job_done = started.elapsed();
    let served: Vec<u64> = loads.iter().map(Load::served).collect();
    for (k, load) in loads.into_iter().enumerate() {
        let (_, failures) = load.finish();
        assert!(failures.is_empty(), "online requests failed: {failures:?}");
        assert!(
            served[k] > 0,
            "replica {k} served online requests: {served:?}"
        );
    }

    // No segment ran twice while its owner was alive: the replicas that never stalled lost
    // nothing (replica 1 was checked just before its kill), and every takeover was from the
    // killed or the stopped replica.
    assert_eq!(
        metric(&replicas[0], "inference_batch_segments_lost_total"),
        0.0
    );
    let mut took: Vec<String> = takeovers(&replicas[0]);
    took.extend(takeovers(&replicas[2]));
    let counted = metric(&replicas[0], "inference_batch_segments_taken_over_total")
        + metric(&replicas[2], "inference_batch_segments_taken_over_total");
    assert_eq!(
        counted,
        took.len() as f64,
        "the metric counts every takeover"
    );
    assert!(
        took.iter().all(|h| *h == names[1] || *h == names[2]),
        "segments were taken only from the killed and the stopped replica ({}, {}): {took:?}",
        names[1],
        names[2]
    );

    // The output, from a survivor: every custom_id once, in input order, vectors as direct.
    let (status, b) = replicas[0].get_json(&format!("/v1/batches/{id}"));
    assert_eq!(status, 200);
    assert_eq!(b["request_counts"]["completed"], LINES as u64, "{b}");
    assert_eq!(b["request_counts"]["failed"], 0, "{b}");
    assert!(b["error_file_id"].is_null(), "{b}");
    let text = blocking_client()
        .get(replicas[2].url(&format!(
            "/v1/files/{}/content",
            b["output_file_id"].as_str().unwrap()
        )))
        .send()
        .unwrap()
        .text()
        .unwrap();
    // From a replica of its own (local state, no delay).
    let want = Server::builder(&tiny_model_dir()).start().embeddings(&t);
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let l: Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            l["custom_id"],
            format!("req-{i}"),
            "line {i} out of order: {l}"
        );
        assert_eq!(l["response"]["status_code"], 200, "{l}");
        let got = as_vec(&l["response"]["body"]["data"][0]["embedding"]);
        let c = cosine(&got, &want[i]);
        assert!(c >= 0.9999, "req-{i}: cosine {c}");
        n += 1;
    }
    assert_eq!(n, LINES, "one output line per input line");
    eprintln!(
        "{prefix}: job of {LINES} lines done at {job_done:?}, test {:?}; online 200s per replica \
         {served:?}; takeovers {took:?}; replica 2 lost {}",
        started.elapsed(),
        metric(&replicas[2], "inference_batch_segments_lost_total")
    );
    replicas.clear();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn replicas_with_distinct_hostnames_share_a_job_through_a_kill_and_a_stop() {
    three_replicas_through_a_kill_and_a_stop(
        "replicas-distinct",
        ["spot-node-a", "spot-node-b", "spot-node-c"],
    );
}

#[test]
fn replicas_with_one_hostname_share_a_job_through_a_kill_and_a_stop() {
    three_replicas_through_a_kill_and_a_stop("replicas-shared", ["spot-node"; 3]);
}
