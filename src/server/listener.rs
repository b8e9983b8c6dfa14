//! The accept loop. Written out (rather than `axum::serve`) for the drain: when told to stop it
//! first accepts whatever already sits in the kernel's backlog (so those clients get a clean 503
//! instead of a reset), then closes the socket so new connections are refused; HTTP/2
//! connections get GOAWAY, HTTP/1 connections are answered 503 + `Connection: close` by the
//! middleware on their next request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// HTTP/2 prior-knowledge connections start with this preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Serves `app` on `listener` until `stop` turns true. Returns the number of connections still
/// open at that moment (they keep being served by their own tasks).
pub async fn serve(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) -> usize {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => spawn_connection(stream, app.clone(), stop.clone(), open.clone()),
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
        spawn_connection(stream, app.clone(), stop.clone(), open.clone());
    }
    drop(listener);
    let n = open.load(Ordering::Acquire);
    tracing::info!(open_connections = n, "listener closed");
    n
}

fn spawn_connection(
    stream: TcpStream,
    app: Router,
    mut stop: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
) {
    let _ = stream.set_nodelay(true);
    open.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        let mut preface = [0u8; 14];
        let is_h2 = matches!(
            tokio::time::timeout(Duration::from_secs(10), peek_full(&stream, &mut preface)).await,
            Ok(Ok(n)) if n == H2_PREFACE.len() && preface == H2_PREFACE
        );
        let io = TokioIo::new(stream);
        let svc = TowerToHyperService::new(app);
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
                }
            }
        } else {
            hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, svc)
                .with_upgrades()
                .await
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        open.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Peeks until `buf` is full, the peer sends something that cannot be the HTTP/2 preface, or
/// the connection closes.
async fn peek_full(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let n = stream.peek(buf).await?;
        if n == 0 || n == buf.len() || buf[..n] != H2_PREFACE[..n] {
            return Ok(n);
        }
        // Partial preface: wait for more bytes without busy-looping.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
