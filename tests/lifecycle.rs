//! Spot-aware lifecycle with the real binary: readiness, the bounded drain under load with zero
//! lost requests, the drain deadline, a second signal, and cloud interruption notices from fake
//! AWS / GCP / Azure metadata servers on loopback.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use common::*;
use serde_json::json;

const SIGTERM: i32 = 15;

/// What one client saw.
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    wrong_vector: usize,
    clean_503: usize,
    refused: usize,
    other: Vec<String>,
}

/// Reference texts with their normalised sentence-transformers vectors.
fn references() -> Vec<(String, Vec<f32>)> {
    let r = read_json(&repo_root().join("tests/fixtures/minilm_reference.json"));
    r["items"]
        .as_array()
        .expect("items")
        .iter()
        .take(8)
        .map(|i| (i["text"].as_str().unwrap().to_string(), as_vec(&i["mean"])))
        .collect()
}

/// `clients` threads, each with its own keep-alive client, looping until refused or `limit`.
fn load(
    url: String,
    clients: usize,
    per_client: usize,
    limit: Duration,
) -> Vec<std::thread::JoinHandle<Tally>> {
    let refs = Arc::new(references());
    (0..clients)
        .map(|c| {
            let url = url.clone();
            let refs = refs.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .no_proxy()
                    .build()
                    .unwrap();
                let mut t = Tally::default();
                let start = Instant::now();
                for i in 0..per_client {
                    if start.elapsed() > limit {
                        break;
                    }
                    let (text, want) = &refs[(c + i) % refs.len()];
                    match client.post(&url).json(&json!({"inputs": text})).send() {
                        Ok(r) if r.status() == 200 => {
                            let body: serde_json::Value = r.json().unwrap();
                            let c = cosine(&as_matrix(&body)[0], want);
                            if c >= 0.9999 {
                                t.ok += 1;
                            } else {
                                t.wrong_vector += 1;
                            }
                        }
                        Ok(r) if r.status() == 503 && r.headers().contains_key("retry-after") => {
                            t.clean_503 += 1;
                        }
                        Ok(r) => t.other.push(format!("status {}", r.status())),
                        Err(e) if e.is_connect() => {
                            t.refused += 1;
                            break;
                        }
                        Err(e) => t.other.push(format!("{e:?}")),
                    }
                }
                t
            })
        })
        .collect()
}

fn total(handles: Vec<std::thread::JoinHandle<Tally>>) -> Tally {
    let mut all = Tally::default();
    for h in handles {
        let t = h.join().expect("client thread");
        all.ok += t.ok;
        all.wrong_vector += t.wrong_vector;
        all.clean_503 += t.clean_503;
        all.refused += t.refused;
        all.other.extend(t.other);
    }
    all
}

#[test]
fn sigterm_under_load_loses_nothing_and_exits_on_time() {
    let delay = 1.0;
    let timeout = 6.0;
    let mut server = Server::builder(&test_model_dir())
        .args(["--drain-delay", "1", "--drain-timeout", "6"])
        // A slow device, so requests really are queued and computing when the signal lands.
        .args(["--test-batch-delay-ms", "40", "--max-batch-requests", "16"])
        .start();
    let handles = load(server.url("/embed"), 64, 400, Duration::from_secs(25));
    // Under load: inputs queued behind the slow device when the signal lands.
    server.wait_metric("inference_queue_depth", Duration::from_secs(30), |v| {
        v >= 16.0
    });
    let metrics_before = server.metrics_text();
    assert!(metrics_before.contains("inference_lifecycle_state{state=\"ready\"} 1"));

    let signalled = Instant::now();
    server.signal(SIGTERM);
    let probe = blocking_client();
    // Once the server has taken the signal, readiness is red at the next probe.
    server.wait_metric(
        "inference_lifecycle_state{state=\"draining\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    let r = probe.get(server.url("/ready")).send().expect("ready probe");
    assert_eq!(r.status(), 503, "readiness still green while draining");
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["state"], "draining", "{body}");
    assert!(body["drain_deadline_unix"].as_f64().is_some(), "{body}");
    let red_after = signalled.elapsed();
    // Liveness stays green during the drain.
    let live = probe.get(server.url("/health")).send().expect("health");
    assert_eq!(live.status(), 200);

    let (code, took) = server.wait_exit(Duration::from_secs_f64(delay + timeout + 2.0));
    let exit_after = signalled.elapsed();
    let t = total(handles);
    let logs = server.log_text();
    let report = logs
        .lines()
        .find(|l| l.contains("drain complete"))
        .unwrap_or("(no drain report)")
        .to_string();
    eprintln!(
        "drain under load: ok={} clean_503={} refused={} wrong={} other={:?}; ready red after {:?}; exit after {:?} (code {:?}); {}",
        t.ok, t.clean_503, t.refused, t.wrong_vector, t.other, red_after, exit_after, code, report
    );
    assert_eq!(code, Some(0), "exit code; logs:\n{logs}");
    assert!(took <= Duration::from_secs_f64(delay + timeout + 2.0));
    assert!(
        t.other.is_empty(),
        "resets, timeouts or unexpected statuses: {:?}",
        t.other
    );
    assert_eq!(t.wrong_vector, 0);
    assert!(t.ok > 64, "the load really ran: {t:?}");
    assert_eq!(
        t.refused, 64,
        "every client ends on a refused connection: {t:?}"
    );
    assert!(report.contains("served_during_drain"), "{report}");
}

#[test]
fn queued_work_past_the_drain_deadline_gets_503_not_silence() {
    // One input per batch and 300 ms per batch: 40 requests are 12 s of work, the drain
    // timeout is 2 s, so most are still queued at the deadline.
    let mut server = Server::builder(&test_model_dir())
        .args(["--drain-delay", "0.2", "--drain-timeout", "2"])
        .args(["--test-batch-delay-ms", "300", "--max-batch-requests", "1"])
        .start();
    let url = server.url("/embed");
    let handles: Vec<_> = (0..40)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = blocking_client()
                    .post(url)
                    .json(&json!({"inputs": format!("request number {i}")}))
                    .send();
                match r {
                    Ok(r) => (r.status().as_u16(), r.headers().contains_key("retry-after")),
                    Err(e) => panic!("request {i} failed at the transport level: {e:?}"),
                }
            })
        })
        .collect();
    // Every request queued (the slow device holds them) before the signal.
    server.wait_metric("inference_admitted_inputs", Duration::from_secs(30), |v| {
        v >= 40.0
    });
    let signalled = Instant::now();
    server.signal(SIGTERM);
    let (code, _) = server.wait_exit(Duration::from_secs(5));
    let exit_after = signalled.elapsed();
    let results: Vec<(u16, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused_503 = results.iter().filter(|r| **r == (503, true)).count();
    eprintln!("deadline path: {ok} answered 200, {refused_503} answered 503 at the deadline, exit after {exit_after:?}");
    assert_eq!(code, Some(0));
    assert_eq!(
        ok + refused_503,
        40,
        "every request got an answer: {results:?}"
    );
    assert!(refused_503 > 20, "{results:?}");
    assert!(ok >= 1, "{results:?}");
    assert!(
        exit_after < Duration::from_millis(2000 + 2000),
        "exit after {exit_after:?}"
    );
    assert!(server
        .log_text()
        .contains("drain deadline: queued inputs answered with 503"));
}

#[test]
fn a_second_signal_skips_the_wait() {
    let mut server = Server::builder(&test_model_dir())
        .args(["--drain-delay", "20", "--drain-timeout", "25"])
        .start();
    server.signal(SIGTERM);
    server.wait_metric(
        "inference_lifecycle_state{state=\"draining\"}",
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    server.signal(SIGTERM);
    // Well inside the 20 s drain delay the first signal started: the second one skipped it.
    let (code, _) = server.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0));
    assert!(server.log_text().contains("forced=true"));
}

#[test]
fn probes_answer_while_the_model_loads() {
    // A Hub "mirror" that accepts connections and never answers: the load hangs.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", blackhole.local_addr().unwrap());
    let cache = std::env::temp_dir().join(format!("spotinfer-blackhole-{}", std::process::id()));
    let mut server = Server::builder(std::path::Path::new("org/never-arrives"))
        .args(["--huggingface-hub-cache", cache.to_str().unwrap()])
        .env("HF_ENDPOINT", endpoint)
        .no_wait()
        .start();
    let (status, body) = server.get_json("/ready");
    assert_eq!(status, 503);
    assert_eq!(body["state"], "starting");
    let (status, _) = server.get_json("/health");
    assert_eq!(status, 200, "liveness is green while loading");
    let (status, body) = server.post_json("/embed", json!({"inputs": "x"}));
    assert_eq!(status, 503, "{body}");
    assert!(server
        .metrics_text()
        .contains("inference_lifecycle_state{state=\"starting\"} 1"));
    server.signal(SIGTERM);
    let (code, _) = server.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0));
    drop(blackhole);
}

/// A fake metadata service: `notice` flips it from "nothing" to "interruption".
#[derive(Clone)]
struct FakeMetadata {
    notice: Arc<AtomicBool>,
    polls: Arc<AtomicUsize>,
    bad_token: Arc<Mutex<Vec<String>>>,
}

const AWS_TOKEN: &str = "tok-123";

async fn aws_token(headers: HeaderMap) -> axum::response::Response {
    if headers.contains_key("x-aws-ec2-metadata-token-ttl-seconds") {
        AWS_TOKEN.into_response()
    } else {
        StatusCode::BAD_REQUEST.into_response()
    }
}

async fn aws_action(
    axum::extract::State(f): axum::extract::State<FakeMetadata>,
    headers: HeaderMap,
) -> axum::response::Response {
    f.polls.fetch_add(1, Ordering::SeqCst);
    if headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        != Some(AWS_TOKEN)
    {
        f.bad_token.lock().unwrap().push("missing token".into());
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if f.notice.load(Ordering::SeqCst) {
        axum::Json(json!({"action": "terminate", "time": "2030-01-01T00:02:00Z"})).into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn gcp_preempted(
    axum::extract::State(f): axum::extract::State<FakeMetadata>,
    headers: HeaderMap,
) -> axum::response::Response {
    f.polls.fetch_add(1, Ordering::SeqCst);
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return StatusCode::FORBIDDEN.into_response();
    }
    if f.notice.load(Ordering::SeqCst) {
        "TRUE"
    } else {
        "FALSE"
    }
    .into_response()
}

async fn azure_events(
    axum::extract::State(f): axum::extract::State<FakeMetadata>,
    headers: HeaderMap,
) -> axum::response::Response {
    f.polls.fetch_add(1, Ordering::SeqCst);
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let events = if f.notice.load(Ordering::SeqCst) {
        json!([{"EventId": "1", "EventType": "Preempt", "ResourceType": "VirtualMachine",
                "Resources": ["vm"], "EventStatus": "Scheduled",
                "NotBefore": "Tue, 01 Jan 2030 00:00:30 GMT"}])
    } else {
        json!([])
    };
    axum::Json(json!({"DocumentIncarnation": 1, "Events": events})).into_response()
}

fn start_fake(f: FakeMetadata) -> (String, tokio::sync::oneshot::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(l.local_addr().unwrap()).unwrap();
            let app = axum::Router::new()
                .route("/latest/api/token", put(aws_token))
                .route("/latest/meta-data/spot/instance-action", get(aws_action))
                .route(
                    "/latest/meta-data/events/recommendations/rebalance",
                    get(|| async { StatusCode::NOT_FOUND }),
                )
                .route("/computeMetadata/v1/instance/preempted", get(gcp_preempted))
                .route("/metadata/scheduledevents", get(azure_events))
                .with_state(f);
            axum::serve(l, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    (format!("http://{}", addr_rx.recv().unwrap()), stop_tx)
}

#[test]
fn interruption_notices_turn_readiness_red_but_keep_serving() {
    let interval = 0.2;
    for (provider, deadline) in [
        ("aws", 1_893_456_120.0),
        ("gcp", 0.0),
        ("azure", 1_893_456_030.0),
    ] {
        let fake = FakeMetadata {
            notice: Arc::new(AtomicBool::new(false)),
            polls: Arc::new(AtomicUsize::new(0)),
            bad_token: Arc::new(Mutex::new(Vec::new())),
        };
        let (url, _stop) = start_fake(fake.clone());
        let server = Server::builder(&test_model_dir())
            .args(["--spot-provider", provider, "--spot-metadata-url", &url])
            .args(["--spot-poll-interval", &interval.to_string()])
            .start();
        // Polling runs and finds nothing: still ready.
        let deadline_wait = Instant::now() + Duration::from_secs(5);
        while fake.polls.load(Ordering::SeqCst) < 2 && Instant::now() < deadline_wait {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            fake.polls.load(Ordering::SeqCst) >= 2,
            "{provider}: never polled"
        );
        assert_eq!(server.get_json("/ready").0, 200, "{provider}");

        fake.notice.store(true, Ordering::SeqCst);
        let flipped = Instant::now();
        let red_after = loop {
            if server.get_json("/ready").0 == 503 {
                break flipped.elapsed();
            }
            assert!(
                flipped.elapsed() < Duration::from_secs(3),
                "{provider}: never went red"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        eprintln!(
            "{provider}: readiness red {red_after:?} after the notice (poll interval {interval} s)"
        );
        assert!(
            red_after <= Duration::from_secs_f64(2.0 * interval + 0.15),
            "{provider}: red after {red_after:?}"
        );
        let (_, body) = server.get_json("/ready");
        assert_eq!(body["state"], "ready", "still serving: {body}");
        assert_eq!(body["interruption"]["provider"], provider);
        assert_eq!(
            server.get_json("/health").0,
            200,
            "{provider}: liveness stays green"
        );
        let (status, _) = server.post_json("/embed", json!({"inputs": "still serving"}));
        assert_eq!(status, 200, "{provider}: requests are still served");
        let m = server.metrics_text();
        assert!(
            m.contains("inference_spot_interruption_pending 1"),
            "{provider}"
        );
        if deadline > 0.0 {
            assert!(
                m.contains(&format!(
                    "inference_spot_interruption_deadline_seconds {deadline}"
                )),
                "{provider}: deadline metric in\n{m}"
            );
        }
        assert!(
            fake.bad_token.lock().unwrap().is_empty(),
            "AWS calls carry the IMDSv2 token"
        );
    }
}
