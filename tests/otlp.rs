//! OpenTelemetry over OTLP/gRPC against a real receiver (tests/python/otlp_receiver.py:
//! grpcio + the OpenTelemetry protos): requests carrying a W3C `traceparent` produce spans in
//! that trace, parented on the caller's span, with their attributes (gRPC calls too, the
//! `traceparent` in their metadata), and a SIGTERM flushes them before the process exits.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{blocking_client, repo_root, script_result, tiny_model_dir, Server};
use serde_json::{json, Value};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
/// The gRPC calls' traces: one unary call, one stream of two messages.
const UNARY: &str = "0af7651916cd43dd8448eb211c80319c";
const STREAM: &str = "5b8efff798038103d269b633813fc60c";
const GRPC_PARENT: &str = "b7ad6b7169203331";

/// `tei.v1.Embed/Embed` once and `tei.v1.Embed/EmbedStream` with two messages, each with its
/// `traceparent` in the metadata, from grpcio with raw `EmbedRequest` bytes (field 1, `inputs`).
const GRPC_CALLS: &str = r#"
import grpc, sys
target, unary, stream = sys.argv[1:4]
def request(text):
    data = text.encode()
    return b"\x0a" + bytes([len(data)]) + data
with grpc.insecure_channel(target) as channel:
    call = channel.unary_unary("/tei.v1.Embed/Embed")
    call(request("a gRPC call"), metadata=[("traceparent", unary)], timeout=60)
    call = channel.stream_stream("/tei.v1.Embed/EmbedStream")
    answers = list(call(iter([request("first"), request("second")]), metadata=[("traceparent", stream)], timeout=60))
    assert len(answers) == 2, answers
print("ok")
"#;

fn otlp_python() -> String {
    script_result(
        "make-otlp-venv.sh",
        &[],
        "grpcio and the OpenTelemetry protos are needed",
    )
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
    // gRPC on the same port, its traceparent in the call's metadata.
    let grpc = Command::new(otlp_python())
        .args(["-c", GRPC_CALLS])
        .arg(server.base.trim_start_matches("http://"))
        .arg(format!("00-{UNARY}-{GRPC_PARENT}-01"))
        .arg(format!("00-{STREAM}-{GRPC_PARENT}-01"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run the gRPC calls");
    assert!(grpc.status.success(), "the gRPC calls failed");

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
    // A gRPC call's span: the caller's child, with the RPC attributes and, under it, the same
    // children as an HTTP request's; a stream's messages all under the stream's one span.
    for (trace, method, inputs) in [(UNARY, "Embed", 1), (STREAM, "EmbedStream", 2)] {
        let spans: Vec<&Value> = all.iter().filter(|s| s["trace_id"] == trace).collect();
        let call = spans
            .iter()
            .find(|s| s["name"] == format!("tei.v1.Embed/{method}"))
            .unwrap_or_else(|| panic!("no span of the {method} call: {spans:?}"));
        assert_eq!(call["parent_span_id"], GRPC_PARENT, "{call}");
        assert_eq!(call["attributes"]["rpc.system"], "grpc", "{call}");
        assert_eq!(call["attributes"]["rpc.service"], "tei.v1.Embed", "{call}");
        assert_eq!(call["attributes"]["rpc.method"], method, "{call}");
        assert_eq!(attr(call, "rpc.grpc.status_code"), 0, "{call}");
        let under = |name: &str| {
            spans
                .iter()
                .filter(|s| s["name"] == name && s["parent_span_id"] == call["span_id"])
                .count()
        };
        assert_eq!(under("tokenize"), inputs, "{method}: {spans:?}");
        assert!(under("device_batch") >= inputs, "{method}: {spans:?}");
    }
    // The untraced request is a root of another trace.
    assert!(all.iter().any(|s| s["name"] == "POST /embed"
        && s["trace_id"] != TRACE
        && s["parent_span_id"] == ""));
}
