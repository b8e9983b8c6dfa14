//! The /metrics exposition as Prometheus and KEDA see it: every series the manifests and the
//! dashboard query is there from the first scrape (before the model is even loaded), and
//! `promtool check metrics` finds nothing to complain about after real traffic.
//!
//! Needs `promtool` (Debian package `prometheus`), which scripts/test.sh installs.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

/// Series that deploy/ (ScaledObject, dashboard) and the platform guide's signals rely on.
const FIRST_SCRAPE: &[&str] = &[
    "inference_request_duration_seconds_count{",
    "inference_request_duration_seconds_bucket{",
    "inference_requests_total{",
    "inference_requests_inflight ",
    "inference_queue_depth ",
    "inference_batch_queue_depth ",
    "inference_batch_backlog_lines ",
    "inference_queue_time_seconds_count ",
    "inference_compute_time_seconds_count ",
    "inference_batch_size_count ",
    "inference_batch_tokens_count ",
    "inference_tokens_total ",
    "inference_embeddings_total ",
    "inference_errors_total{reason=",
    "inference_build_info{",
    "inference_device_busy_ratio ",
    "inference_cost_dollars_total ",
    "inference_cost_per_million_embeddings_dollars ",
    "inference_lifecycle_state{state=\"starting\"} 1",
];

fn promtool() -> String {
    let path = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let ok = Command::new(&path)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{path}` not found: run the tests with scripts/test.sh (it installs Debian's \
         `prometheus` package), or `apt-get install prometheus`"
    );
    path
}

/// `promtool check metrics` on `text`: returns (success, everything it printed).
fn check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

#[test]
fn metrics_are_complete_from_the_first_scrape_and_pass_promtool() {
    let server = Server::builder(&test_model_dir())
        .args(["--cost-per-hour", "1.21", "--device", "cpu"])
        .no_wait()
        .start();
    // The metrics listener binds before the model loads: scrape at once.
    let first = server.metrics_text();
    for name in FIRST_SCRAPE {
        assert!(
            first.contains(name),
            "first scrape lacks `{name}`:\n{first}"
        );
    }
    // Nothing on a CPU run claims to be a GPU.
    assert!(!first.contains("inference_gpu_"), "{first}");

    server.wait_ready(Duration::from_secs(60));
    for _ in 0..3 {
        let (s, _) = server.post_json("/v1/embeddings", json!({"input": ["a", "b c"]}));
        assert_eq!(s, 200);
        let (s, _) = server.post_json("/embed", json!({"inputs": "hello"}));
        assert_eq!(s, 200);
    }
    let (s, _) = server.post_json("/tokenize", json!({"inputs": "hello world"}));
    assert_eq!(s, 200);
    let (s, _) = server.post_json("/v1/embeddings", json!({"input": []}));
    assert!(
        (400..500).contains(&s),
        "empty input must be a 4xx, got {s}"
    );

    let text = server.metrics_text();
    assert!(
        text.contains("inference_requests_total{code=\"200\",route=\"/v1/embeddings\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("dtype=\"float32\""),
        "build info after load:\n{text}"
    );
    assert_eq!(text.matches("inference_build_info{").count(), 1, "{text}");
    // TEI's own names break two naming lints by design (see below); ours must pass all.
    let (ok, printed) = check_metrics(&without_tei(&text));
    assert!(
        ok && printed.trim().is_empty(),
        "promtool check metrics complained:\n{printed}"
    );
    // The main port serves the same registry.
    let main = blocking_client()
        .get(server.url("/metrics"))
        .send()
        .expect("main-port metrics")
        .text()
        .expect("text");
    assert!(main.contains("inference_request_duration_seconds_count{"));
}

/// The family a line of the text format belongs to (`# HELP name`, `# TYPE name`, samples).
fn family(line: &str) -> &str {
    let rest = line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "))
        .unwrap_or(line);
    rest.split([' ', '{']).next().unwrap_or("")
}

fn without_tei(text: &str) -> String {
    text.lines()
        .filter(|l| !family(l).starts_with("te_"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// TEI's counters, which TEI exposes without `_total` (three also end in `_count`).
const TEI_COUNTERS: &[&str] = &[
    "te_request_count",
    "te_request_success",
    "te_request_failure",
    "te_embed_count",
    "te_embed_success",
    "te_predict_count",
    "te_predict_success",
];

#[test]
fn tei_metric_names_beside_ours_with_teis_types() {
    let server = Server::builder(&tiny_model_dir())
        .args(["--device", "cpu"])
        .start();
    let (s, _) = server.post_json("/embed", json!({"inputs": "hello"}));
    assert_eq!(s, 200);
    let (s, _) = server.post_json("/embed", json!({"inputs": ["a", "b c"]}));
    assert_eq!(s, 200);
    let (s, _) = server.post_json("/v1/embeddings", json!({"input": "hello"}));
    assert_eq!(s, 200);
    // An embedder cannot rerank: TEI counts it as a model_type failure.
    let (s, _) = server.post_json("/rerank", json!({"query": "q", "texts": ["a"]}));
    assert_eq!(s, 424);
    let text = server.metrics_text();
    let types: &[(&str, &str)] = &[
        ("te_request_count", "counter"),
        ("te_request_success", "counter"),
        ("te_request_failure", "counter"),
        ("te_request_duration", "histogram"),
        ("te_request_tokenization_duration", "histogram"),
        ("te_request_queue_duration", "histogram"),
        ("te_request_inference_duration", "histogram"),
        ("te_request_input_length", "histogram"),
        ("te_embed_count", "counter"),
        ("te_embed_success", "counter"),
        ("te_embed_duration", "histogram"),
        ("te_embed_tokenization_duration", "histogram"),
        ("te_embed_queue_duration", "histogram"),
        ("te_embed_inference_duration", "histogram"),
        ("te_predict_count", "counter"),
        ("te_predict_success", "counter"),
        ("te_predict_duration", "histogram"),
        ("te_predict_tokenization_duration", "histogram"),
        ("te_predict_queue_duration", "histogram"),
        ("te_predict_inference_duration", "histogram"),
        ("te_queue_size", "gauge"),
        ("te_batch_next_size", "histogram"),
        ("te_batch_next_tokens", "histogram"),
    ];
    for (name, kind) in types {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} is not a {kind}:\n{text}"
        );
    }
    // Updated on the same events as ours.
    let v = |series: &str| metric_value(&text, series).unwrap_or(-1.0);
    assert_eq!(v("te_request_count{method=\"single\"}"), 3.0, "{text}");
    assert_eq!(v("te_request_count{method=\"batch\"}"), 1.0);
    assert_eq!(v("te_request_success{method=\"single\"}"), 2.0);
    assert_eq!(v("te_request_success{method=\"batch\"}"), 1.0);
    assert_eq!(v("te_request_failure{err=\"model_type\"}"), 1.0);
    assert_eq!(v("te_embed_count"), 4.0);
    assert_eq!(v("te_embed_success"), 4.0);
    assert_eq!(v("te_embed_success"), v("inference_embeddings_total"));
    assert_eq!(v("te_request_duration_count"), 3.0);
    assert_eq!(
        v("te_batch_next_size_count"),
        v("inference_batch_size_count")
    );
    assert_eq!(
        v("te_batch_next_tokens_sum"),
        v("inference_batch_tokens_sum")
    );
    assert_eq!(v("te_request_input_length_count"), 4.0);
    assert_eq!(v("te_queue_size"), 0.0);

    // promtool: the output parses, and its only complaints are the two naming lints TEI's
    // counters carry in TEI too (no `_total` suffix; `_count` on a counter).
    let (_, printed) = check_metrics(&text);
    for line in printed.lines().filter(|l| !l.trim().is_empty()) {
        let known = TEI_COUNTERS.iter().any(|c| {
            line.starts_with(&format!("{c} "))
                && (line.ends_with("counter metrics should have \"_total\" suffix")
                    || line.ends_with(
                        "non-histogram and non-summary metrics should not have \"_count\" suffix",
                    ))
        });
        assert!(known, "promtool: {line}\n(all of it:\n{printed})");
    }
    let (ok, printed) = check_metrics(&without_tei(&text));
    assert!(ok && printed.trim().is_empty(), "{printed}");
}
