//! OpenTelemetry over OTLP/gRPC against a real receiver (tests/python/otlp_receiver.py:
//! grpcio + the OpenTelemetry protos): requests carrying a W3C `traceparent` produce spans in
//! that trace, parented on the caller's span, with their attributes, and a SIGTERM flushes them
//! before the process exits.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{blocking_client, repo_root, tiny_model_dir, Server};
use serde_json::{json, Value};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn otlp_python() -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/make-otlp-venv.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/make-otlp-venv.sh");
    assert!(out.status.success(), "scripts/make-otlp-venv.sh failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("the venv's python")
        .trim()
        .to_string()
}

/// The receiver, killed on drop; it also exits when its stdin closes.
struct Receiver(Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_receiver(out: &std::path::Path) -> (Receiver, u16) {
    let mut child = Command::new(otlp_python())
        .arg(repo_root().join("tests/python/otlp_receiver.py"))
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the OTLP receiver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the receiver's port line");
    let port = line
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port from the receiver: {line:?}"));
    (Receiver(child), port)
}

fn spans(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn attr(span: &Value, key: &str) -> i64 {
    span["attributes"][key]
        .as_i64()
        .or_else(|| span["attributes"][key].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing in {span}"))
}

#[test]
fn spans_reach_an_otlp_grpc_receiver_with_the_callers_trace() {
    let out = std::env::temp_dir().join(format!("spotinfer-otlp-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let (_receiver, port) = start_receiver(&out);
    let mut server = Server::builder(&tiny_model_dir())
        .args([
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--otlp-service-name",
            "spotinfer-test",
            "--served-model-name",
            "tiny",
            "--drain-delay",
            "0",
        ])
        .start();
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let client = blocking_client();
    let r = client
        .post(server.url("/embed"))
        .header("traceparent", &traceparent)
        .json(&json!({"inputs": ["a first text", "the second", "a third, longer text"]}))
        .send()
        .expect("embed");
    assert_eq!(r.status(), 200);
    // A request without a traceparent starts its own trace.
    let r = client
        .post(server.url("/embed"))
        .json(&json!({"inputs": "untraced"}))
        .send()
        .expect("embed");
    assert_eq!(r.status(), 200);

    server.signal(libc::SIGTERM);
    let (code, _) = server.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", server.log_text());

    // The exporter was shut down before exit, so the spans are there; bounded wait on the
    // file in case the receiver's write trails its reply.
    let deadline = Instant::now() + Duration::from_secs(10);
    let all = loop {
        let all = spans(&out);
        if all.iter().any(|s| s["name"] == "device_batch") || Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&out);
    let ours: Vec<&Value> = all.iter().filter(|s| s["trace_id"] == TRACE).collect();
    let names: Vec<&str> = ours.iter().filter_map(|s| s["name"].as_str()).collect();
    let find = |name: &str| -> &Value {
        ours.iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} span in trace {TRACE}: {names:?}; all: {all:?}"))
    };
    let request = find("POST /embed");
    assert_eq!(request["parent_span_id"], PARENT, "{request}");
    assert_eq!(request["service_name"], "spotinfer-test");
    assert_eq!(attr(request, "spotinfer.inputs"), 3);
    assert!(attr(request, "spotinfer.tokens") >= 6);
    assert_eq!(request["attributes"]["spotinfer.model"], "tiny");
    assert_eq!(attr(request, "http.response.status_code"), 200);
    let request_id = request["span_id"].as_str().expect("span id");
    for name in ["tokenize", "queue_wait", "device_batch"] {
        assert_eq!(
            find(name)["parent_span_id"],
            request_id,
            "{name}: {names:?}"
        );
    }
    assert_eq!(
        attr(find("tokenize"), "spotinfer.tokens"),
        attr(request, "spotinfer.tokens")
    );
    let batches: Vec<&&Value> = ours
        .iter()
        .filter(|s| s["name"] == "device_batch")
        .collect();
    assert_eq!(
        batches
            .iter()
            .map(|b| attr(b, "spotinfer.inputs"))
            .sum::<i64>(),
        3
    );
    for b in &batches {
        assert!(attr(b, "spotinfer.batch.size") >= attr(b, "spotinfer.inputs"));
        assert!(attr(b, "spotinfer.batch.tokens") > 0);
        assert_eq!(b["attributes"]["spotinfer.model"], "tiny");
    }
    // The untraced request is a root of another trace.
    assert!(all.iter().any(|s| s["name"] == "POST /embed"
        && s["trace_id"] != TRACE
        && s["parent_span_id"] == ""));
}
