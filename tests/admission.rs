//! Admission on the real binary: inputs of clients that vanish never reach the device and give
//! their `--max-concurrent-requests` slots back; `/tokenize` and `/decode` are admitted and
//! capped like the embedding routes (an HTTP/2 flood gets 429s and memory stays bounded); and
//! a burst whose tail times out leaves the queue gauges at zero.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn metric(server: &Server, series: &str) -> f64 {
    let text = server.metrics_text();
    metric_value(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn inputs_of_vanished_clients_never_reach_the_device_and_free_their_slots() {
    const CLIENTS: usize = 12;
    const INPUTS: usize = 32;
    let sent = CLIENTS * INPUTS;
    // A budget the vanished clients fill exactly, and a slow device so their work queues up.
    let server = Server::builder(&tiny_model_dir())
        .args([
            "--max-concurrent-requests",
            &sent.to_string(),
            "--max-batch-requests",
            "8",
            "--test-batch-delay-ms",
            "300",
        ])
        .start();
    let addr = server.base.trim_start_matches("http://").to_string();
    let sockets: Vec<TcpStream> = (0..CLIENTS)
        .map(|c| {
            let inputs: Vec<String> = (0..INPUTS)
                .map(|i| format!("client {c} input {i}"))
                .collect();
            let body = json!({ "inputs": inputs }).to_string();
            let mut s = TcpStream::connect(&addr).expect("connect");
            write!(
                s,
                "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .expect("request");
            s
        })
        .collect();
    // Every input is queued (TEI counts inputs as they are submitted), then all clients go.
    server.wait_metric("te_embed_count", Duration::from_secs(60), |v| {
        v >= sent as f64
    });
    drop(sockets);
    server.wait_metric(
        "inference_requests_inflight",
        Duration::from_secs(30),
        |v| v == 0.0,
    );
    // Their inputs may still hold every slot; a live request is admitted all the same.
    let (status, body) = server.post_json("/embed", json!({"inputs": "a live client"}));
    assert_eq!(status, 200, "{body}");
    for series in [
        "inference_admitted_inputs",
        "inference_queue_depth",
        "te_queue_size",
    ] {
        server.wait_metric(series, Duration::from_secs(30), |v| v == 0.0);
    }
    let abandoned = metric(&server, "inference_queue_abandoned_total");
    let on_device = metric(&server, "inference_batch_size_sum");
    assert!(abandoned > 0.0, "nothing was dropped");
    assert!(
        on_device < sent as f64,
        "{on_device} of {sent} abandoned inputs reached the device"
    );
    // Every queued input either ran or was dropped, the live one included.
    assert_eq!(abandoned + on_device, (sent + 1) as f64);
}

#[test]
fn tokenize_and_decode_are_admitted_and_capped() {
    let server = Server::builder(&tiny_model_dir())
        .args([
            "--max-concurrent-requests",
            "1",
            "--max-client-batch-size",
            "4",
        ])
        .start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // One HTTP/2 connection, every call a stream on it.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .build()
        .expect("client");
    let text = "word ".repeat(380_000);
    let before = server.peak_rss_mb();
    let url = server.url("/tokenize");
    let results: Vec<(u16, bool, Value)> = runtime.block_on(async {
        let calls = (0..32).map(|_| {
            let req = client
                .post(&url)
                .json(&json!({ "inputs": text }))
                .version(reqwest::Version::HTTP_2);
            async move {
                let r = req.send().await.expect("tokenize");
                assert_eq!(r.version(), reqwest::Version::HTTP_2);
                let status = r.status().as_u16();
                let retry = r.headers().contains_key("retry-after");
                let body = if status == 200 {
                    // Only the shape matters: a token list per input.
                    let v: Value = r.json().await.expect("tokens");
                    json!(v.as_array().map(Vec::len))
                } else {
                    r.json().await.expect("a JSON error")
                };
                (status, retry, body)
            }
        });
        futures::future::join_all(calls).await
    });
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(ok >= 1, "none served: {results:?}");
    assert!(!refused.is_empty(), "none refused over the budget");
    assert_eq!(ok + refused.len(), results.len(), "{results:?}");
    for (_, retry, body) in refused {
        assert!(retry, "429 without Retry-After");
        assert_eq!(body["error_type"], "Overloaded", "{body}");
        assert!(body["error"].is_string(), "{body}");
    }
    // About 280 MB here with one call admitted at a time (mostly that call's tokens with
    // offsets); admitting all 32 at once, as before, took it past 500 MB.
    let grown = server.peak_rss_mb() - before;
    assert!(
        grown < 400.0,
        "peak RSS grew {grown:.0} MB over a flood held to one input at a time"
    );
    assert!(
        metric(
            &server,
            "inference_requests_rejected_total{reason=\"overloaded\"}"
        ) > 0.0
    );

    // More sequences than --max-client-batch-size: /embed's refusal, on HTTP/2 too.
    let (status, body) = runtime.block_on(async {
        let r = client
            .post(server.url("/decode"))
            .json(&json!({"ids": [[5], [6], [7], [8], [9]]}))
            .send()
            .await
            .expect("decode");
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.expect("a JSON error"))
    });
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error_type"], "Validation", "{body}");
    let (embed_status, embed_body) =
        server.post_json("/embed", json!({"inputs": ["a", "b", "c", "d", "e"]}));
    assert_eq!(
        (status, &body["error_type"]),
        (embed_status, &embed_body["error_type"])
    );
    // Within both the cap and the budget.
    let (status, body) = server.post_json("/decode", json!({"ids": [[5, 6]]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    let (status, body) = server.post_json("/decode", json!({"ids": [[5], [6]]}));
    assert_eq!(status, 429, "two sequences are two inputs: {body}");
    // Every slot came back.
    server.wait_metric("inference_admitted_inputs", Duration::from_secs(30), |v| {
        v == 0.0
    });
}

#[test]
fn a_burst_whose_tail_times_out_leaves_the_queue_gauges_at_zero() {
    let server = Server::builder(&tiny_model_dir())
        .args([
            "--max-queue-time",
            "1",
            "--max-batch-requests",
            "2",
            "--test-batch-delay-ms",
            "200",
        ])
        .start();
    let url = server.url("/embed");
    // 30 inputs at 2 per batch of at least 200 ms: the tail waits past the 1 s deadline.
    let burst: Vec<_> = (0..30)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                blocking_client()
                    .post(url)
                    .json(&json!({ "inputs": format!("burst {i}") }))
                    .send()
                    .map(|r| r.status().as_u16())
                    .expect("embed")
            })
        })
        .collect();
    let statuses: Vec<u16> = burst.into_iter().map(|h| h.join().expect("join")).collect();
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&503), "no tail timed out: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        metric(
            &server,
            "inference_requests_rejected_total{reason=\"deadline\"}"
        ) > 0.0
    );
    // The queue is empty now: the gauges must say so, not keep the depth of the last batch.
    for series in [
        "inference_queue_depth",
        "te_queue_size",
        "inference_admitted_inputs",
    ] {
        server.wait_metric(series, Duration::from_secs(30), |v| v == 0.0);
    }
}
