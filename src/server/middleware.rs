//! Cross-cutting request handling: refusal after the listener closed, API-key check, request
//! metrics, and closing connections whose request body was never read.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::errors::{ApiError, ErrorKind, ErrorReason, Flavor};
use super::AppState;
use crate::inference::Timings;
use crate::metrics::InputTimes;

fn flavor_of(path: &str) -> Flavor {
    if (path.starts_with("/v1/") && path != "/v1/rerank") || path == "/embeddings" {
        Flavor::OpenAi
    } else {
        Flavor::Tei
    }
}

/// Counts and times every inference request, and refuses new ones once the drain has closed the
/// listener (503 + Retry-After + Connection: close, so keep-alive clients reconnect elsewhere).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let started = Instant::now();
    let metrics = &state.metrics;
    let mut resp = if state.lifecycle.is_refusing() {
        state.lifecycle.count_refusal();
        metrics
            .rejected_total
            .with_label_values(&["draining"])
            .inc();
        let mut r = ApiError::new(
            ErrorKind::Unavailable,
            "this replica is shutting down; retry on another one",
        )
        .flavor(flavor_of(&route))
        .reason("unavailable")
        .into_response();
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    } else if let Some(e) = check_auth(&state, &req) {
        e.flavor(flavor_of(&route)).into_response()
    } else {
        // A guard, not inc/dec around the await: a client that disconnects drops this future.
        struct Inflight<'a>(&'a prometheus::IntGauge);
        impl Drop for Inflight<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        metrics.requests_inflight.inc();
        let _inflight = Inflight(&metrics.requests_inflight);
        // Held until the response is ready: the drain waits for the last one.
        let _work = state.lifecycle.accept();
        let mut r = next.run(req).await;
        // Work accepted before the listener closed still completes, but its connection must
        // not be reused: the next request would race the process exit.
        if state.lifecycle.is_refusing() {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    };
    let code = resp.status().as_u16();
    let reason = resp.extensions_mut().remove::<ErrorReason>().map(|r| r.0);
    if let Some(reason) = reason {
        metrics.errors_total.with_label_values(&[reason]).inc();
    }
    if tei_counted(&route) {
        let timings = resp.extensions().get::<Timings>().copied();
        let err = reason.map(|r| tei_error(r, code));
        // TEI counts nothing its auth layer refused.
        if err != Some(None) {
            metrics.tei.observe_request(
                timings.map(|t| t.inputs),
                timings.map(|t| InputTimes {
                    total: t.total.as_secs_f64(),
                    tokenization: t.tokenization.as_secs_f64(),
                    queue: t.queue.as_secs_f64(),
                    inference: t.inference.as_secs_f64(),
                }),
                err.flatten(),
            );
        }
    }
    metrics.observe_request(&route, code, started.elapsed().as_secs_f64());
    resp
}

/// The routes TEI counts in `te_request_*`: those that run the model.
fn tei_counted(route: &str) -> bool {
    !matches!(route, "/tokenize" | "/decode" | "/info" | "/v1/models")
        && !route.starts_with("/v1/files")
        && !route.starts_with("/v1/batches")
}

/// TEI's `err` label for one of our error reasons; None for a refusal TEI does not count.
fn tei_error(reason: &str, code: u16) -> Option<&'static str> {
    Some(match reason {
        "unauthorized" => return None,
        _ if code == 424 => "model_type",
        "empty" => "empty",
        "overloaded" => "overloaded",
        "unavailable" | "deadline" => "unhealthy",
        "backend" => "inference",
        _ => "validation",
    })
}

fn check_auth(state: &AppState, req: &Request) -> Option<ApiError> {
    let key = state.cfg.api_key.as_deref()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
        None
    } else {
        Some(ApiError::new(
            ErrorKind::Unauthorized,
            "missing or wrong API key: send `Authorization: Bearer <key>`",
        ))
    }
}

/// A request body that records whether it was read to its end.
struct ReadToEnd {
    inner: Body,
    done: Arc<AtomicBool>,
}

impl http_body::Body for ReadToEnd {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response sent before the request body was read (413 over the payload limit, 401 before the
/// body, a handler that bails early) leaves the rest of the body on the wire, so hyper closes
/// the connection after it. Saying `Connection: close` lets a keep-alive client know, instead of
/// sending its next request into a socket that is about to shut (which fails that request).
pub async fn close_if_body_unread(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let done = Arc::new(AtomicBool::new(http_body::Body::is_end_stream(&body)));
    let body = Body::new(ReadToEnd {
        inner: body,
        done: done.clone(),
    });
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    if !done.load(Ordering::Relaxed) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Compares without an early exit, so response time does not leak the key's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn flavor_by_route() {
        assert_eq!(flavor_of("/v1/embeddings"), Flavor::OpenAi);
        assert_eq!(flavor_of("/embeddings"), Flavor::OpenAi);
        assert_eq!(flavor_of("/embed"), Flavor::Tei);
    }
}
