//! gRPC, wire-compatible with text-embeddings-inference's `tei.v1` (`proto/tei.proto`): Info,
//! Embed, Predict, Rerank and Tokenize with every unary and streaming method. Served on the
//! HTTP port: the listener hands HTTP/2 requests whose content type is `application/grpc*` to
//! [`router`], everything else to the HTTP router.
//!
//! Every call (and every message of a stream) goes through the same inference API and the same
//! bookkeeping as an HTTP request: refusal once the drain has closed the listener, the API key,
//! `inference_requests_total` / `_duration_seconds` with the method path as the route and the
//! HTTP-equivalent status as the code, errors and rejections by reason, in-flight gauge, and a
//! work guard the drain waits for.
//!
//! Streams answer each message with one response, in order, several messages in flight at
//! once. When the drain closes the listener a stream stops reading: the messages it had
//! already read are answered, then it ends with UNAVAILABLE (or OK if the client had already
//! finished sending), so the client knows exactly which messages to resend elsewhere.

mod services;
pub mod status;

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use axum::http::{header, Request, Version};
use axum::Router;
use futures::stream::{FuturesOrdered, Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};
use tracing::Instrument as _;

use super::errors::{ApiError, ErrorKind};
use super::AppState;
use crate::lifecycle::work::WorkGuard;

/// The code generated from `proto/tei.proto` by build.rs.
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("tei.v1");
}

/// Most messages of one stream in flight at once (fewer when `--max-concurrent-requests` is
/// small, so one stream alone never trips the admission limit).
const MAX_STREAM_WINDOW: usize = 32;

/// Whether a request is gRPC: HTTP/2 with `content-type: application/grpc[+proto|...]`.
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_2
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The five `tei.v1` services as one router (method paths `/tei.v1.<Service>/<Method>`).
/// `stop` turns true when the drain closes the listener.
pub fn router(state: AppState, stop: watch::Receiver<bool>) -> Router {
    let limit = state.cfg.payload_limit;
    let svc = Grpc { state, stop };
    macro_rules! server {
        ($server:ty) => {
            <$server>::new(svc.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX)
        };
    }
    let routes = tonic::service::Routes::new(server!(pb::info_server::InfoServer<Grpc>))
        .add_service(server!(pb::embed_server::EmbedServer<Grpc>))
        .add_service(server!(pb::predict_server::PredictServer<Grpc>))
        .add_service(server!(pb::rerank_server::RerankServer<Grpc>))
        .add_service(server!(pb::tokenize_server::TokenizeServer<Grpc>))
        .prepare()
        .into_axum_router();
    // Only with --otlp-endpoint: otherwise calls create no spans at all.
    if crate::otel::enabled() {
        routes.layer(axum::middleware::from_fn(super::trace::rpc_span))
    } else {
        routes
    }
}

/// The service behind every `tei.v1` method.
#[derive(Clone)]
pub struct Grpc {
    state: AppState,
    stop: watch::Receiver<bool>,
}

/// A response stream of a streaming method.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One stream message's answer, in flight.
type Answer<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;

/// One admitted call or stream message: in the in-flight gauge, and holding a work guard the
/// drain waits for. Both are released on drop (also when the client goes away).
struct Ticket {
    state: AppState,
    route: &'static str,
    started: Instant,
    _work: WorkGuard,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.state.metrics.requests_inflight.dec();
    }
}

impl Ticket {
    /// Counts the answer the way the HTTP middleware does.
    fn finish<T>(self, result: Result<T, ApiError>) -> Result<T, Status> {
        match result {
            Ok(v) => {
                let seconds = self.started.elapsed().as_secs_f64();
                self.state.metrics.observe_request(self.route, 200, seconds);
                Ok(v)
            }
            Err(e) => Err(reject(&self.state, self.route, self.started, e)),
        }
    }
}

/// Counts a failed call or message and turns its error into a status.
fn reject(state: &AppState, route: &str, started: Instant, e: ApiError) -> Status {
    state
        .metrics
        .errors_total
        .with_label_values(&[e.reason])
        .inc();
    state
        .metrics
        .observe_request(route, e.status(), started.elapsed().as_secs_f64());
    status::status_of(&e)
}

impl Grpc {
    /// Admits one call or message, or says why not (draining, API key).
    fn admit(&self, route: &'static str, metadata: &MetadataMap) -> Result<Ticket, Status> {
        let started = Instant::now();
        let state = &self.state;
        let refused = if state.lifecycle.is_refusing() {
            state.lifecycle.count_refusal();
            state
                .metrics
                .rejected_total
                .with_label_values(&["draining"])
                .inc();
            Some(
                ApiError::new(
                    ErrorKind::Unavailable,
                    "this replica is shutting down; retry on another one",
                )
                .reason("unavailable"),
            )
        } else {
            self.check_auth(metadata).err()
        };
        if let Some(e) = refused {
            return Err(reject(state, route, started, e));
        }
        state.metrics.requests_inflight.inc();
        Ok(Ticket {
            state: state.clone(),
            route,
            started,
            _work: state.lifecycle.accept(),
        })
    }

    /// `authorization: Bearer <key>` metadata when `--api-key` is set, as on HTTP.
    fn check_auth(&self, metadata: &MetadataMap) -> Result<(), ApiError> {
        let Some(key) = self.state.cfg.api_key.as_deref() else {
            return Ok(());
        };
        let given = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::Unauthorized,
                "missing or wrong API key: send `authorization: Bearer <key>` metadata",
            ))
        }
    }

    /// A unary call: admitted, run, counted.
    async fn unary<T, F>(
        &self,
        route: &'static str,
        metadata: &MetadataMap,
        work: F,
    ) -> Result<tonic::Response<T>, Status>
    where
        F: Future<Output = Result<T, ApiError>>,
    {
        let ticket = self.admit(route, metadata)?;
        ticket.finish(work.await).map(tonic::Response::new)
    }

    /// A bidirectional stream: each message read is admitted and handed to `handle`; answers go
    /// back in order, up to a window of messages in flight. The first error ends the stream
    /// with its status (gRPC streams carry one status). See the module docs for the drain.
    fn pipeline<Req, Resp, F, Fut>(
        &self,
        route: &'static str,
        metadata: &MetadataMap,
        mut input: Streaming<Req>,
        handle: F,
    ) -> Result<tonic::Response<ResponseStream<Resp>>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(Req) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Resp, ApiError>> + Send + 'static,
    {
        // A stream opened after the listener closed (or without the key) is refused whole.
        drop(self.admit(route, metadata)?);
        let window = (self.state.cfg.max_concurrent_requests / 2).clamp(1, MAX_STREAM_WINDOW);
        let (tx, rx) = mpsc::channel::<Result<Resp, Status>>(window);
        let this = self.clone();
        let metadata = metadata.clone();
        // The call's span (with --otlp-endpoint) covers the whole stream.
        let span = if crate::otel::enabled() {
            tracing::Span::current()
        } else {
            tracing::Span::none()
        };
        tokio::spawn(
            async move {
                let mut stop = this.stop.clone();
                let mut pending: FuturesOrdered<Answer<Resp>> = FuturesOrdered::new();
                let mut reading = true;
                let mut stopped = false;
                loop {
                    tokio::select! {
                        // Answers first, so a finished message never waits behind a read.
                        biased;
                        Some(answer) = pending.next(), if !pending.is_empty() => {
                            let failed = answer.is_err();
                            if tx.send(answer).await.is_err() || failed {
                                // The client went away, or the stream ends with this error.
                                return;
                            }
                        }
                        _ = stopped_accepting(&mut stop), if reading => {
                            reading = false;
                            stopped = true;
                        }
                        msg = input.message(), if reading && pending.len() < window => match msg {
                            Ok(Some(req)) => {
                                if *this.stop.borrow() {
                                    // Read after the drain closed the listener: not accepted.
                                    reading = false;
                                    stopped = true;
                                    continue;
                                }
                                match this.admit(route, &metadata) {
                                    Ok(ticket) => {
                                        let work = handle(req);
                                        pending.push_back(Box::pin(async move {
                                            ticket.finish(work.await)
                                        }));
                                    }
                                    Err(status) => {
                                        // Refused (the drain raced the check above): the stream
                                        // ends with this status after the earlier answers.
                                        pending.push_back(Box::pin(async move { Err(status) }));
                                        reading = false;
                                    }
                                }
                            }
                            Ok(None) => reading = false,
                            Err(status) => {
                                // A broken request stream: answer what was accepted, then end with
                                // its status.
                                while let Some(answer) = pending.next().await {
                                    if tx.send(answer).await.is_err() {
                                        return;
                                    }
                                }
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                        },
                        else => break,
                    }
                }
                if stopped {
                    let _ = tx
                        .send(Err(status::status_of(&ApiError::new(
                            ErrorKind::Unavailable,
                            "this replica is shutting down: every message before this status was \
                         answered; send the rest to another replica",
                        ))))
                        .await;
                }
            }
            .instrument(span),
        );
        let out = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

/// Resolves once the drain has closed the listener (or the drain's sender is gone).
async fn stopped_accepting(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
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
    fn grpc_is_http2_with_a_grpc_content_type() {
        let req = |version, ct: &str| {
            Request::builder()
                .version(version)
                .header(header::CONTENT_TYPE, ct)
                .body(())
                .unwrap()
        };
        assert!(is_grpc(&req(Version::HTTP_2, "application/grpc")));
        assert!(is_grpc(&req(Version::HTTP_2, "application/grpc+proto")));
        assert!(!is_grpc(&req(Version::HTTP_2, "application/json")));
        assert!(!is_grpc(&req(Version::HTTP_11, "application/grpc")));
    }
}
