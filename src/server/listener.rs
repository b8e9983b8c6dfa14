//! The accept loop and each connection's bounds.
//!
//! Written out (rather than `axum::serve`) for two reasons:
//! - the drain: when told to stop it first accepts whatever already sits in the kernel's backlog
//!   (so those clients get a clean 503 instead of a reset), then closes the socket so new
//!   connections are refused; HTTP/2 connections get GOAWAY, HTTP/1 connections are answered
//!   503 + `Connection: close` by the middleware on their next request;
//! - slow or idle clients: a connection that has not sent a whole request head within
//!   `--header-read-timeout` (from its first byte, or from accept), or that sits idle between
//!   requests longer than `--keep-alive-timeout`, is closed; at most `--max-connections` are
//!   open (beyond it new ones wait in the kernel's backlog). Request bodies have their own
//!   inactivity timeout (`--body-read-timeout`, in the router).
//!
//! hyper's own header timer starts whenever a connection waits for a request head, idle
//! keep-alive included, so it cannot tell the two timeouts apart: the connection task tracks
//! bytes read and requests in flight itself and closes idle connections (never one with a
//! request in flight).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::Service;

/// HTTP/2 prior-knowledge connections start with this preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// How often a connection checks its deadlines.
const TICK: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
}

/// What a connection serves: the HTTP router, and the gRPC services that take HTTP/2
/// requests with a gRPC content type (`super::grpc::is_grpc`).
#[derive(Clone)]
pub struct Apps {
    pub http: Router,
    pub grpc: Option<Router>,
}

impl From<Router> for Apps {
    fn from(http: Router) -> Self {
        Self { http, grpc: None }
    }
}

/// Serves `app` on `listener` until `stop` turns true. Returns the number of connections still
/// open at that moment (they keep being served by their own tasks).
pub async fn serve(
    listener: TcpListener,
    app: impl Into<Apps>,
    bounds: Bounds,
    mut stop: watch::Receiver<bool>,
) -> usize {
    let app = app.into();
    let open = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
    loop {
        // A free connection slot first: beyond the cap, clients wait in the backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
                continue;
            }
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let open = open.clone();
                    spawn_connection(stream, app.clone(), bounds, stop.clone(), open, Some(permit));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    // Take what the kernel already completed (bounded: clients that reconnect at once must not
    // keep the listener alive), then close.
    let backlog_end = tokio::time::Instant::now() + Duration::from_millis(5);
    while let Ok(Ok((stream, _))) = tokio::time::timeout_at(backlog_end, listener.accept()).await {
        // Past the cap too: these get their 503 and go.
        let permit = slots.clone().try_acquire_owned().ok();
        spawn_connection(
            stream,
            app.clone(),
            bounds,
            stop.clone(),
            open.clone(),
            permit,
        );
    }
    drop(listener);
    let n = open.load(Ordering::Acquire);
    tracing::info!(open_connections = n, "listener closed");
    n
}

/// What a connection task needs to judge its own idleness.
#[derive(Default)]
struct Activity {
    bytes_read: AtomicU64,
    in_flight: AtomicUsize,
    /// Requests that have finished (a connection with none is still on its first head).
    finished: AtomicU64,
}

/// The stream, counting the bytes it reads.
struct Counted {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity
                .bytes_read
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// One request in flight on a connection, until its response body is sent (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's [`InFlight`] guard.
struct Guarded {
    inner: axum::body::Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why a connection's clock ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Header,
    KeepAlive,
}

/// The idle-time judge: sampled every tick, it says when an idle connection has waited too
/// long for the next thing it should have sent.
struct Clock {
    bounds: Bounds,
    /// When the current wait began, and bytes read at that moment.
    since: Instant,
    bytes_then: u64,
    /// The wait is for a request head (bytes arrived, or no request yet).
    reading_head: bool,
    finished_then: u64,
}

impl Clock {
    fn new(bounds: Bounds, now: Instant) -> Self {
        Self {
            bounds,
            since: now,
            bytes_then: 0,
            reading_head: true,
            finished_then: 0,
        }
    }

    /// Given a sample, whether the connection should be closed now.
    fn check(&mut self, now: Instant, a: &Activity) -> Option<Expiry> {
        let (bytes, in_flight, finished) = (
            a.bytes_read.load(Ordering::Relaxed),
            a.in_flight.load(Ordering::Acquire),
            a.finished.load(Ordering::Acquire),
        );
        if in_flight > 0 {
            // A request is being served: no clock runs; restart it when the request ends.
            self.since = now;
            self.bytes_then = bytes;
            self.reading_head = false;
            self.finished_then = finished;
            return None;
        }
        if finished != self.finished_then {
            // A request finished since the last sample: the keep-alive wait starts.
            self.finished_then = finished;
            self.since = now;
            self.bytes_then = bytes;
            self.reading_head = false;
        }
        if !self.reading_head && bytes > self.bytes_then {
            // The next request's head began arriving.
            self.reading_head = true;
            self.since = now;
        }
        let limit = if self.reading_head {
            self.bounds.header_read_timeout
        } else {
            self.bounds.keep_alive_timeout
        };
        (now.duration_since(self.since) >= limit).then_some(if self.reading_head {
            Expiry::Header
        } else {
            Expiry::KeepAlive
        })
    }
}

fn spawn_connection(
    stream: TcpStream,
    app: Apps,
    bounds: Bounds,
    mut stop: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let _ = stream.set_nodelay(true);
    open.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        let _permit = permit;
        let mut preface = [0u8; 14];
        let peeked =
            tokio::time::timeout(bounds.header_read_timeout, peek_full(&stream, &mut preface))
                .await;
        let is_h2 = match peeked {
            Ok(Ok(n)) => n == H2_PREFACE.len() && preface == H2_PREFACE,
            // Nothing (or not all of a preface) within the header timeout: a half-open
            // client; close it.
            Ok(Err(_)) | Err(_) => {
                open.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        };
        let activity = Arc::new(Activity::default());
        let io = TokioIo::new(Counted {
            inner: stream,
            activity: activity.clone(),
        });
        let counted = activity.clone();
        let svc = TowerToHyperService::new(tower::service_fn(
            move |req: axum::extract::Request<hyper::body::Incoming>| {
                counted.in_flight.fetch_add(1, Ordering::AcqRel);
                let guard = InFlight(counted.clone());
                // gRPC bypasses the HTTP router's layers (body limits and timeouts that would
                // cut a long-lived stream); it keeps this connection's bounds and drain.
                let mut app = match &app.grpc {
                    Some(grpc) if super::grpc::is_grpc(&req) => grpc.clone(),
                    _ => app.http.clone(),
                };
                async move {
                    let r = app.call(req.map(axum::body::Body::new)).await;
                    // The request stays in flight until hyper has sent the whole body.
                    r.map(|resp| {
                        resp.map(|inner| {
                            axum::body::Body::new(Guarded {
                                inner,
                                _guard: guard,
                            })
                        })
                    })
                }
            },
        ));
        let mut clock = Clock::new(bounds, Instant::now());
        let mut tick = tokio::time::interval(TICK);
        let result = if is_h2 {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc);
            tokio::pin!(conn);
            let mut goaway_sent = *stop.borrow();
            if goaway_sent {
                conn.as_mut().graceful_shutdown();
            }
            loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    changed = stop.changed(), if !goaway_sent => {
                        if changed.is_err() || *stop.borrow() {
                            conn.as_mut().graceful_shutdown();
                            goaway_sent = true;
                        }
                    }
                    _ = tick.tick(), if !goaway_sent => {
                        if clock.check(Instant::now(), &activity).is_some() {
                            conn.as_mut().graceful_shutdown();
                            goaway_sent = true;
                        }
                    }
                }
            }
        } else {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, svc)
                .with_upgrades();
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    _ = tick.tick() => {
                        if let Some(why) = clock.check(Instant::now(), &activity) {
                            // Nothing is in flight: dropping the connection loses no work.
                            tracing::debug!(?why, "closing an idle connection");
                            break Ok(());
                        }
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        open.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Peeks until `buf` is full, the peer sends something that cannot be the HTTP/2 preface, or
/// the connection closes. A peer that sends nothing keeps it waiting (the caller's timeout).
async fn peek_full(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let n = stream.peek(buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if n == buf.len() || buf[..n] != H2_PREFACE[..n] {
            return Ok(n);
        }
        // Partial preface: wait for more bytes without busy-looping.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Binds `--uds-path`, replacing a socket file left by an earlier run (never another kind of
/// file).
pub fn bind_unix(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "--uds-path {} exists and is not a socket: give a free path",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", path.display()))?;
    }
    tokio::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))
}

/// Serves the same router on the Unix socket until the drain closes the listeners; the socket
/// file goes with it. Local clients only, so without the TCP listener's connection bounds.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    path: std::path::PathBuf,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    let stopped = async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "Unix socket listener failed");
    }
    let _ = std::fs::remove_file(&path);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> Bounds {
        Bounds {
            header_read_timeout: Duration::from_secs(2),
            keep_alive_timeout: Duration::from_secs(5),
            max_connections: 10,
        }
    }

    #[test]
    fn heads_and_idle_keep_alive_have_their_own_clocks() {
        let t0 = Instant::now();
        let a = Activity::default();
        let mut c = Clock::new(bounds(), t0);
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        // A new connection must send its head within the header timeout.
        assert_eq!(c.check(at(1.0), &a), None);
        assert_eq!(c.check(at(2.1), &a), Some(Expiry::Header));
        // A request in flight stops every clock.
        let mut c = Clock::new(bounds(), t0);
        a.bytes_read.store(100, Ordering::Relaxed);
        a.in_flight.store(1, Ordering::Relaxed);
        assert_eq!(c.check(at(10.0), &a), None);
        // Then the keep-alive wait: 5 s, not 2.
        a.in_flight.store(0, Ordering::Relaxed);
        a.finished.store(1, Ordering::Relaxed);
        assert_eq!(c.check(at(10.5), &a), None);
        assert_eq!(c.check(at(14.0), &a), None);
        // Bytes of the next head arrive: the header clock restarts from there.
        a.bytes_read.store(120, Ordering::Relaxed);
        assert_eq!(c.check(at(15.0), &a), None);
        assert_eq!(c.check(at(16.5), &a), None);
        assert_eq!(c.check(at(17.1), &a), Some(Expiry::Header));
        // An idle keep-alive connection that sends nothing is closed at 5 s.
        let a = Activity::default();
        a.finished.store(1, Ordering::Relaxed);
        let mut c = Clock::new(bounds(), t0);
        assert_eq!(c.check(at(0.1), &a), None);
        assert_eq!(c.check(at(5.2), &a), Some(Expiry::KeepAlive));
    }
}
