//! Every bad input gets a JSON 4xx (never a 5xx, a panic or a hang) and the server keeps
//! answering good requests afterwards.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
}

fn case(name: &'static str, path: &'static str, body: Value, status: u16) -> Case {
    Case {
        name,
        path,
        content_type: Some("application/json"),
        body: body.to_string().into_bytes(),
        status,
    }
}

fn raw(
    name: &'static str,
    path: &'static str,
    ct: Option<&'static str>,
    body: &[u8],
    status: u16,
) -> Case {
    Case {
        name,
        path,
        content_type: ct,
        body: body.to_vec(),
        status,
    }
}

#[test]
fn battery_of_bad_inputs_gets_json_4xx() {
    let server = Server::builder(&test_model_dir())
        .args(["--payload-limit", "100000", "--max-client-batch-size", "4"])
        .start();
    let long_text = "word ".repeat(400);
    let cases = vec![
        raw(
            "malformed JSON",
            "/v1/embeddings",
            Some("application/json"),
            b"{\"input\": ",
            400,
        ),
        raw(
            "malformed JSON (tei)",
            "/embed",
            Some("application/json"),
            b"{inputs: 'x'}",
            400,
        ),
        raw("empty body", "/embed", Some("application/json"), b"", 400),
        raw(
            "not an object",
            "/embed",
            Some("application/json"),
            b"[1,2,3]",
            422,
        ),
        raw(
            "wrong content type",
            "/embed",
            Some("text/plain"),
            b"{\"inputs\":\"x\"}",
            415,
        ),
        raw(
            "form content type",
            "/v1/embeddings",
            Some("application/x-www-form-urlencoded"),
            b"input=x",
            415,
        ),
        raw(
            "a batch that is not JSON",
            "/v1/batches",
            Some("text/plain"),
            b"{}",
            415,
        ),
        raw(
            "a batch without its fields",
            "/v1/batches",
            Some("application/json"),
            b"{}",
            422,
        ),
        raw(
            "payload over the limit",
            "/embed",
            Some("application/json"),
            format!("{{\"inputs\":\"{}\"}}", "a".repeat(200_000)).as_bytes(),
            413,
        ),
        raw(
            "invalid utf-8",
            "/embed",
            Some("application/json"),
            b"{\"inputs\":\"\xff\xfe\"}",
            400,
        ),
        case(
            "missing input",
            "/v1/embeddings",
            json!({"model": "m"}),
            422,
        ),
        case(
            "missing inputs (tei)",
            "/embed",
            json!({"normalize": true}),
            422,
        ),
        case(
            "input is a number",
            "/v1/embeddings",
            json!({"input": 42}),
            422,
        ),
        case(
            "input is an object",
            "/embed",
            json!({"inputs": {"a": 1}}),
            422,
        ),
        case("empty array", "/v1/embeddings", json!({"input": []}), 400),
        case("empty string", "/embed", json!({"inputs": ""}), 400),
        case(
            "empty string in a list",
            "/v1/embeddings",
            json!({"input": ["ok", ""]}),
            400,
        ),
        case(
            "mixed array",
            "/v1/embeddings",
            json!({"input": ["a", 1]}),
            422,
        ),
        case(
            "negative token id",
            "/v1/embeddings",
            json!({"input": [101, -5, 102]}),
            422,
        ),
        case(
            "fractional token id",
            "/v1/embeddings",
            json!({"input": [101, 1.5]}),
            422,
        ),
        case(
            "token id out of vocabulary",
            "/v1/embeddings",
            json!({"input": [101, 999999, 102]}),
            422,
        ),
        case(
            "empty token list",
            "/v1/embeddings",
            json!({"input": [[]]}),
            400,
        ),
        case(
            "too many inputs",
            "/embed",
            json!({"inputs": ["a", "b", "c", "d", "e"]}),
            422,
        ),
        case(
            "too long without truncation",
            "/embed",
            json!({"inputs": long_text, "truncate": false}),
            422,
        ),
        case(
            "ids too long without truncation",
            "/embed",
            json!({"inputs": vec![1000; 300], "truncate": false}),
            422,
        ),
        case(
            "dimensions zero",
            "/v1/embeddings",
            json!({"input": "a", "dimensions": 0}),
            422,
        ),
        case(
            "dimensions too large",
            "/v1/embeddings",
            json!({"input": "a", "dimensions": 385}),
            422,
        ),
        case(
            "dimensions negative",
            "/embed",
            json!({"inputs": "a", "dimensions": -3}),
            422,
        ),
        case(
            "bad encoding_format",
            "/v1/embeddings",
            json!({"input": "a", "encoding_format": "hex"}),
            422,
        ),
        case(
            "normalize not a bool",
            "/embed",
            json!({"inputs": "a", "normalize": "yes"}),
            422,
        ),
        case(
            "bad truncation direction",
            "/embed",
            json!({"inputs": "a", "truncation_direction": "Up"}),
            422,
        ),
        case(
            "unknown prompt name",
            "/embed",
            json!({"inputs": "a", "prompt_name": "nope"}),
            422,
        ),
        case(
            "decode out of vocabulary",
            "/decode",
            json!({"ids": [5, 40000000]}),
            422,
        ),
        case("decode text", "/decode", json!({"ids": "hello"}), 422),
        // The client batch cap holds on /decode and /tokenize as on /embed.
        case(
            "decode too many sequences",
            "/decode",
            json!({"ids": [[5], [6], [7], [8], [9]]}),
            422,
        ),
        case(
            "tokenize too many inputs",
            "/tokenize",
            json!({"inputs": ["a", "b", "c", "d", "e"]}),
            422,
        ),
        case("tokenize ids", "/tokenize", json!({"inputs": [1, 2]}), 422),
        case("tokenize empty", "/tokenize", json!({"inputs": ""}), 400),
    ];
    assert!(cases.len() >= 20);
    let client = blocking_client();
    for c in &cases {
        let mut req = client.post(server.url(c.path)).body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        assert_eq!(status, c.status, "{}: body {text}", c.name);
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{}: not JSON: {text}", c.name));
        if c.path.starts_with("/v1/") {
            assert!(
                body["error"]["message"].is_string(),
                "{}: OpenAI error shape: {body}",
                c.name
            );
            assert!(body["error"]["type"].is_string(), "{}: {body}", c.name);
        } else {
            assert!(
                body["error"].is_string(),
                "{}: TEI error shape: {body}",
                c.name
            );
            assert!(body["error_type"].is_string(), "{}: {body}", c.name);
        }
    }

    // Truncation on by default: the long text is accepted and cut at 256 tokens.
    let (status, body) = server.post_json("/v1/embeddings", json!({"input": long_text}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 256);
    let (status, body) = server.post_json(
        "/embed",
        json!({"inputs": long_text, "truncation_direction": "Left"}),
    );
    assert_eq!(status, 200, "{body}");

    // Unknown routes and methods are client errors too.
    let r = client.get(server.url("/nope")).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = client.get(server.url("/embed")).send().unwrap();
    assert_eq!(r.status().as_u16(), 405);

    // A client that sends half a request and goes away does not hang or hurt the server.
    {
        let addr = server.base.trim_start_matches("http://").to_string();
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inp").unwrap();
        drop(s);
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GARBAGE\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let head = String::from_utf8_lossy(&buf);
        assert!(
            head.is_empty() || head.starts_with("HTTP/1.1 400"),
            "{head}"
        );
    }

    // Still healthy and still correct.
    let (status, body) = server.post_json("/embed", json!({"inputs": "still alive?"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(as_matrix(&body)[0].len(), 384);
    let text = server.metrics_text();
    assert!(text.contains("inference_errors_total{reason=\"validation\"}"));
    assert!(
        !text.contains("status=\"5xx\"} 1"),
        "no request may have been answered 5xx:\n{text}"
    );
}

#[test]
fn api_key_guards_inference_but_not_probes() {
    let server = Server::builder(&test_model_dir())
        .args(["--api-key", "s3cret"])
        .start();
    let client = blocking_client();
    let r = client
        .post(server.url("/v1/embeddings"))
        .json(&json!({"input": "x"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let r = client
        .post(server.url("/embed"))
        .bearer_auth("wrong")
        .json(&json!({"inputs": "x"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .post(server.url("/embed"))
        .bearer_auth("s3cret")
        .json(&json!({"inputs": "x"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for probe in ["/health", "/live", "/ready", "/metrics"] {
        let r = client.get(server.url(probe)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{probe}");
    }
}

#[test]
fn overload_answers_429_with_retry_after() {
    // One input in flight at a time and a slow device: concurrent requests beyond it get 429.
    let server = Server::builder(&test_model_dir())
        .args([
            "--max-concurrent-requests",
            "1",
            "--test-batch-delay-ms",
            "400",
        ])
        .start();
    let url = server.url("/embed");
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = blocking_client()
                    .post(url)
                    .json(&json!({"inputs": "hello"}))
                    .send()
                    .unwrap();
                let retry = r.headers().get("retry-after").is_some();
                (r.status().as_u16(), retry)
            })
        })
        .collect();
    let results: Vec<(u16, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results.iter().any(|r| r.0 == 200), "{results:?}");
    assert!(results.contains(&(429, true)), "{results:?}");
    assert!(
        results.iter().all(|r| r.0 == 200 || r.0 == 429),
        "{results:?}"
    );
    assert!(server
        .metrics_text()
        .contains("inference_requests_rejected_total{reason=\"overloaded\"}"));
}

#[test]
fn early_errors_close_the_connection_so_the_next_request_survives() {
    // A 413 or 401 is sent before the body is read; the server then closes the connection.
    // It must say so (`Connection: close`), or a keep-alive client sends its next request into
    // the closing socket and that request fails (this once turned CI red).
    let server = Server::builder(&test_model_dir())
        .args(["--payload-limit", "100000", "--api-key", "k"])
        .start();
    let client = blocking_client();
    let too_big = format!("{{\"inputs\":\"{}\"}}", "a".repeat(200_000));
    let unread = format!("{{\"inputs\":\"{}\"}}", "b".repeat(50_000));
    let fine = json!({"inputs": "fine"}).to_string();
    let send = |key: &str, body: &str, round: usize, what: &str| {
        client
            .post(server.url("/embed"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap_or_else(|e| panic!("round {round}, {what}: {e}"))
    };
    for round in 0..15 {
        let r = send("k", &too_big, round, "over the limit");
        assert_eq!(r.status().as_u16(), 413);
        assert_eq!(r.headers()["connection"], "close", "round {round}");
        drop(r.text());
        let r = send("wrong", &unread, round, "after the 413");
        assert_eq!(r.status().as_u16(), 401);
        assert_eq!(r.headers()["connection"], "close", "round {round}");
        drop(r.text());
        let r = send("k", &fine, round, "after the 401");
        assert_eq!(r.status().as_u16(), 200, "round {round}");
        // A request whose body was read keeps its connection.
        assert!(r.headers().get("connection").is_none(), "round {round}");
        let body: Value = r.json().unwrap();
        assert_eq!(as_matrix(&body)[0].len(), 384);
    }
}
