//! `/api-doc/openapi.json` describes exactly the routes the router has (the route table), every
//! example request in it succeeds against a real server, it is a valid OpenAPI document
//! (openapi-spec-validator), and `/docs` renders it in a real browser (headless Chromium).
//!
//! Needs python3 (scripts/make-openapi-venv.sh) and Chromium (Debian package `chromium`, which
//! scripts/test.sh installs).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

fn document(server: &Server) -> Value {
    let (status, doc) = server.get_json("/api-doc/openapi.json");
    assert_eq!(status, 200);
    doc
}

/// `(METHOD, path)` of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

#[test]
fn document_paths_are_the_router_routes() {
    let server = Server::builder(&tiny_model_dir()).start();
    let doc = document(&server);
    let described = operations(&doc);
    let routed: BTreeSet<(String, String)> = spotinfer::http_routes()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(described, routed, "document and router differ");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    // Both error shapes are described.
    let schemas = &doc["components"]["schemas"];
    assert!(
        schemas["TeiError"]["properties"]["error_type"].is_object(),
        "{schemas}"
    );
    assert!(
        schemas["OpenAiError"]["properties"]["error"].is_object(),
        "{schemas}"
    );
    // Every operation has an example request or takes none.
    for (method, path) in &described {
        let op = &doc["paths"][path][method.to_lowercase()];
        if let Some(content) = op["requestBody"]["content"].as_object() {
            for (ty, media) in content {
                assert!(
                    !media["example"].is_null(),
                    "{method} {path} {ty}: no example"
                );
            }
        }
    }
}

/// The servers an example may need: the embedder, and for routes it cannot serve (424), one
/// per other task, started when first needed.
struct Servers {
    embedder: Server,
    others: Vec<(&'static str, OnceLock<Server>)>,
    /// Files and batches: a replica without a model, so a job stays cancellable.
    intake: Server,
}

impl Servers {
    fn other(&self, i: usize) -> &Server {
        let (fixture, slot) = &self.others[i];
        slot.get_or_init(|| {
            Server::builder(&repo_root().join("tests/fixtures").join(fixture)).start()
        })
    }
}

/// Sends one example; returns status and body text.
fn send(server: &Server, method: &str, path: &str, op: &Value) -> (u16, String) {
    let client = blocking_client();
    let url = server.url(path);
    let mut req = match method {
        "GET" => client.get(&url),
        "POST" => client.post(&url),
        "DELETE" => client.delete(&url),
        other => panic!("no client for {other}"),
    };
    if let Some(content) = op["requestBody"]["content"].as_object() {
        let (ty, media) = content.iter().next().expect("a content type");
        let example = media["example"].clone();
        req = match ty.as_str() {
            "application/json" => req.json(&example),
            "multipart/form-data" => {
                let mut form = reqwest::blocking::multipart::Form::new();
                for (k, v) in example.as_object().expect("form fields") {
                    let text = v.as_str().expect("a text field").to_string();
                    form = if k == "file" {
                        form.part(
                            k.clone(),
                            reqwest::blocking::multipart::Part::text(format!("{text}\n"))
                                .file_name("input.jsonl"),
                        )
                    } else {
                        form.text(k.clone(), text)
                    };
                }
                req.multipart(form)
            }
            other => panic!("{method} {path}: no client for {other}"),
        };
    }
    let r = req.send().expect("request");
    (r.status().as_u16(), r.text().unwrap_or_default())
}

#[test]
fn every_example_request_succeeds() {
    let servers = Servers {
        embedder: Server::builder(&tiny_model_dir()).start(),
        others: [
            "tiny-bert-reranker",
            "tiny-bert-classifier",
            "tiny-splade",
            "tiny-bge-m3",
        ]
        .into_iter()
        .map(|f| (f, OnceLock::new()))
        .collect(),
        intake: Server::builder(&tiny_model_dir())
            .arg("--intake-only")
            .start(),
    };
    let doc = document(&servers.embedder);
    // Creations first (their ids fill the `{id}` of the others), deletions last.
    let mut ops: Vec<(String, String)> = operations(&doc).into_iter().collect();
    let rank = |(m, p): &(String, String)| match (m.as_str(), p.as_str()) {
        ("POST", "/v1/files") => 0,
        ("POST", "/v1/batches") => 1,
        ("DELETE", _) => 3,
        _ => 2,
    };
    ops.sort_by_key(rank);
    let (mut file_id, mut batch_id) = (None::<String>, None::<String>);
    let mut sent = 0;
    for (method, path) in &ops {
        let mut op = doc["paths"][path][method.to_lowercase()].clone();
        let jobs = path.starts_with("/v1/files") || path.starts_with("/v1/batches");
        let concrete = if path.starts_with("/v1/files/") {
            path.replace("{id}", file_id.as_deref().expect("a file was uploaded"))
        } else if path.starts_with("/v1/batches/") {
            path.replace("{id}", batch_id.as_deref().expect("a batch was created"))
        } else {
            path.clone()
        };
        if let (Some(id), Some(example)) = (
            &file_id,
            op.pointer_mut("/requestBody/content/application~1json/example/input_file_id"),
        ) {
            *example = json!(id);
        }
        let (mut status, mut body) = if jobs {
            send(&servers.intake, method, &concrete, &op)
        } else {
            send(&servers.embedder, method, &concrete, &op)
        };
        // A route the embedder cannot serve: the first other model that can.
        let mut i = 0;
        while status == 424 && i < servers.others.len() {
            (status, body) = send(servers.other(i), method, &concrete, &op);
            i += 1;
        }
        assert!(
            (200..300).contains(&status),
            "{method} {concrete}: {status} {body}"
        );
        sent += 1;
        let id = || -> String {
            let v: Value = serde_json::from_str(&body).expect("a JSON answer");
            v["id"].as_str().expect("an id").to_string()
        };
        match (method.as_str(), path.as_str()) {
            ("POST", "/v1/files") => file_id = Some(id()),
            ("POST", "/v1/batches") => batch_id = Some(id()),
            _ => {}
        }
    }
    assert_eq!(sent, ops.len());
    println!("{sent} example requests answered 2xx");
}

fn openapi_python() -> String {
    script_result(
        "make-openapi-venv.sh",
        &[],
        "openapi-spec-validator is needed",
    )
}

#[test]
fn document_passes_openapi_spec_validator() {
    let server = Server::builder(&tiny_model_dir()).no_wait().start();
    let doc = document(&server);
    let file = std::env::temp_dir().join(format!("spotinfer-openapi-{}.json", std::process::id()));
    std::fs::write(&file, doc.to_string()).expect("write the document");
    let out = Command::new(openapi_python())
        .args([
            "-c",
            "import sys, json; from openapi_spec_validator import validate; \
             validate(json.load(open(sys.argv[1]))); print('valid')",
        ])
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "valid");
}

fn chromium() -> String {
    let bin = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let ok = Command::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{bin}` not found: the /docs test renders the page in headless Chromium. Run the tests \
         with scripts/test.sh (it installs Debian's `chromium` package), or \
         `apt-get install chromium`, or set CHROMIUM to the browser"
    );
    bin
}

/// Headless Chromium on `url` with `extra` (`--dump-dom` or `--screenshot=...`); its stdout.
fn headless(bin: &str, url: &str, extra: &str) -> String {
    let profile = tempdir("chromium-profile");
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,2000",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spotinfer-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn docs_page_renders_every_route_in_chromium() {
    let bin = chromium();
    let server = Server::builder(&tiny_model_dir()).start();
    let url = server.url("/docs");
    let dom = headless(&bin, &url, "--dump-dom");
    for (method, path) in spotinfer::http_routes() {
        let id = format!("{}{path}", method.to_lowercase())
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        assert!(
            dom.contains(&format!("id=\"{id}\"")) || dom.contains(&format!("id=\"{id}-\"")),
            "{method} {path} is not on the rendered page (id {id}):\n{dom}"
        );
    }
    // The page's error line stays empty (its script source holds the message, so not that).
    assert!(dom.contains("<p id=\"error\"></p>"), "{dom}");
    for (_, path) in spotinfer::http_routes() {
        assert!(
            dom.contains(&format!("<span class=\"path\">{path}</span>")),
            "{path} is not shown on the page"
        );
    }
    // The screenshot: kept under docs/ when asked (SPOTINFER_DOCS_SCREENSHOT=1).
    let shot = tempdir("docs-shot").join("openapi-docs.png");
    headless(&bin, &url, &format!("--screenshot={}", shot.display()));
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "not a real screenshot"
    );
    if std::env::var_os("SPOTINFER_DOCS_SCREENSHOT").is_some() {
        std::fs::write(repo_root().join("docs/openapi-docs.png"), &png).expect("save it");
    }
    let _ = std::fs::remove_dir_all(shot.parent().expect("its folder"));
}
