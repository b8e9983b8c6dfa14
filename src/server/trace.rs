//! The span of an inference request, when OpenTelemetry is on (`--otlp-endpoint`): an HTTP
//! route's or a gRPC call's, a child of the caller's W3C `traceparent` (a header, or gRPC
//! metadata), with the route and status. Installed only when tracing is enabled, so without the
//! flag requests pay nothing for it.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub async fn request_span(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    crate::otel::set_remote_parent(&span, req.headers());
    let resp = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", resp.status().as_u16());
    resp
}

/// A `tei.v1` call: named `package.Service/Method` with OpenTelemetry's RPC attributes. A
/// streaming call's span stays open until its stream ends (the stream's task holds it).
pub async fn rpc_span(req: Request, next: Next) -> Response {
    let path = req.uri().path().trim_start_matches('/').to_string();
    let (service, method) = path.split_once('/').unwrap_or((path.as_str(), ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    crate::otel::set_remote_parent(&span, req.headers());
    let resp = next.run(req).instrument(span.clone()).await;
    // A refused call answers its status in the headers (trailers-only); an accepted one in
    // its trailers, after this returns: 0 unless a stream ends with an error.
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    span.record("rpc.grpc.status_code", code);
    resp
}
