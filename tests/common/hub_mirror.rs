//! A Hugging Face Hub mirror on loopback in the Hub's URL layout
//! (`/{repo}/resolve/{revision}/{file}` with ETag, X-Repo-Commit and byte ranges), serving one
//! repository from a local folder, counting requests and body bytes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone)]
struct Repo {
    name: String,
    dir: PathBuf,
    counts: Arc<Counts>,
}

#[derive(Default)]
pub struct Counts {
    pub requests: AtomicUsize,
    /// Body bytes served (a plan must not download weights).
    pub served: AtomicU64,
    /// The `Authorization` headers received (the Hub token).
    pub authorization: std::sync::Mutex<Vec<String>>,
}

async fn resolve(State(m): State<Repo>, Path(path): Path<String>, headers: HeaderMap) -> Response {
    m.counts.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Ok(mut seen) = m.counts.authorization.lock() {
            seen.push(auth.to_string());
        }
    }
    let prefix = format!("{}/resolve/", m.name);
    let Some(rest) = path.strip_prefix(&prefix) else {
        return (StatusCode::NOT_FOUND, "Repository not found").into_response();
    };
    let Some((revision, file)) = rest.split_once('/') else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if revision != "main" && revision != COMMIT {
        return (StatusCode::NOT_FOUND, "Revision not found").into_response();
    }
    let Ok(bytes) = std::fs::read(m.dir.join(file)) else {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    let total = bytes.len();
    let (start, end) = headers
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .map(|(a, b)| (a, b.min(total.saturating_sub(1))))
        .unwrap_or((0, total.saturating_sub(1)));
    m.counts
        .served
        .fetch_add((end + 1 - start) as u64, Ordering::SeqCst);
    (
        StatusCode::PARTIAL_CONTENT,
        [
            (header::ETAG, format!("\"{total:x}-{}\"", file.len())),
            (
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{total}"),
            ),
            (
                header::HeaderName::from_static("x-repo-commit"),
                COMMIT.to_string(),
            ),
        ],
        bytes[start..=end].to_vec(),
    )
        .into_response()
}

/// A running mirror; `stop` ends it.
pub struct HubMirror {
    pub url: String,
    pub counts: Arc<Counts>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HubMirror {
    /// Serves repository `name` from `dir` on its own thread and runtime.
    pub fn start(name: &str, dir: PathBuf) -> Self {
        let counts = Arc::new(Counts::default());
        let repo = Repo {
            name: name.to_string(),
            dir,
            counts: counts.clone(),
        };
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx.send(listener.local_addr().expect("addr")).ok();
                let app = axum::Router::new()
                    .route("/{*path}", axum::routing::get(resolve))
                    .with_state(repo);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .expect("mirror");
            });
        });
        let addr = addr_rx.recv().expect("mirror address");
        Self {
            url: format!("http://{addr}"),
            counts,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops the mirror and waits for it to be gone.
    pub fn stop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            t.join().expect("mirror thread");
        }
    }

    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    pub fn served(&self) -> u64 {
        self.counts.served.load(Ordering::SeqCst)
    }
}

impl Drop for HubMirror {
    fn drop(&mut self) {
        self.stop();
    }
}
