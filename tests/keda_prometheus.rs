//! The KEDA triggers against a real Prometheus: Prometheus (Debian's `prometheus`, which
//! scripts/test.sh installs) scrapes the server's metrics port on loopback every second, with the
//! target labels the ServiceMonitor would give it (namespace, service, pod); the server takes a
//! bounded load; then every `query:` of deploy/base/scaledobject.yaml, verbatim, goes through
//! Prometheus' HTTP API and must return exactly one finite number, and the request rate must
//! see the load. (tests/fleet_jobs.rs runs the job-backlog trigger against a fleet.)

mod common;

use std::time::{Duration, Instant};

use common::prometheus::{scaledobject_triggers, static_job, Prometheus};
use common::*;
use serde_json::json;

#[test]
fn every_scaledobject_query_returns_one_number_from_a_real_prometheus() {
    let triggers = scaledobject_triggers(&repo_root().join("deploy/base/scaledobject.yaml"));
    let names: Vec<&str> = triggers.iter().map(|(n, _)| n.as_str()).collect();
    // `spotinfer plan` patches triggers 0 and 1 by index: their order is part of the contract.
    assert_eq!(names, ["request-rate", "queue-depth", "job-backlog"]);
    let queries: Vec<String> = triggers.into_iter().map(|(_, q)| q).collect();

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
    let prom = Prometheus::start("prometheus", |_| {
        static_job(&target, "spotinfer", "spotinfer-test-0")
    });

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
    // No jobs: the fleet backlog is a zero, not an absent series.
    assert_eq!(prom.one_number(&queries[2]), 0.0);
    // The series behind them carry the labels the queries select on.
    let series = prom.query(
        "inference_request_duration_seconds_count{namespace=\"spotinfer\",service=\"spotinfer\",route=\"/v1/embeddings\",status=\"2xx\"}",
    );
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0]["metric"]["pod"], "spotinfer-test-0");
}
