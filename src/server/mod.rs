//! HTTP: routes and dialects (OpenAI, TEI, Cohere/Jina), probes, errors, and the listener with
//! its drain behaviour and connection bounds. Knows nothing of tensors: every inference route
//! is a call on the inference API.

pub mod cohere;
pub mod docs;
pub mod errors;
pub mod grpc;
pub mod jobs;
pub mod listener;
pub mod middleware;
pub mod openai;
pub mod openapi;
pub mod probes;
pub mod request;
pub mod routes;
pub mod tei;
pub mod timing;
pub mod trace;
pub mod vertex;

use std::sync::{Arc, OnceLock};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::config::ServeArgs;
use crate::inference::Inference;
use crate::jobs::{JobRunner, JobStore};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use errors::{ApiError, ErrorKind};

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<ServeArgs>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    /// Set once the model is loaded; inference routes answer 503 until then.
    pub inference: Arc<OnceLock<Arc<Inference>>>,
    pub started_unix: u64,
    /// Files and jobs (None if the state dir could not be opened).
    pub job_store: Option<JobStore>,
    /// Set at start when the state dir opened (its segment slots start with the model).
    pub job_runner: Arc<OnceLock<Arc<JobRunner>>>,
}

impl AppState {
    /// The inference API, or 503 while the model loads.
    pub fn inference(&self) -> Result<Arc<Inference>, ApiError> {
        self.inference.get().cloned().ok_or_else(|| {
            let why = if self.cfg.intake_only {
                "this replica runs no model (--intake-only): it serves files and batch jobs only"
            } else {
                "the model is still loading; retry shortly"
            };
            ApiError::new(ErrorKind::Unavailable, why)
        })
    }
}

/// Batch input uploads may be far larger than one JSON request.
pub const FILE_UPLOAD_LIMIT: usize = 512 << 20;

/// All routes of the main port: the route table, plus the Vertex AI routes named in
/// `AIP_PREDICT_ROUTE` / `AIP_HEALTH_ROUTE` (which take over a table route of the same path).
pub fn router(state: AppState) -> Router {
    let aip = vertex::AipRoutes::from_env();
    let (mut public, mut inference) = (Router::new(), Router::new());
    for r in routes::ROUTES {
        if aip.replaces(r.path, r.methods) {
            tracing::info!(path = r.path, "an AIP_* route takes over this path");
            continue;
        }
        match r.access {
            routes::Access::Public => public = public.route(r.path, r.handler()),
            routes::Access::Inference => inference = inference.route(r.path, r.handler()),
        }
    }
    if let Some(path) = &aip.predict {
        tracing::info!(%path, "serving Vertex AI predictions (AIP_PREDICT_ROUTE)");
        inference = inference.route(path, post(vertex::predict));
    }
    if let Some(path) = &aip.health {
        tracing::info!(%path, "serving Vertex AI health checks (AIP_HEALTH_ROUTE)");
        public = public.route(path, get(probes::ready));
    }
    let inference = inference.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        middleware::track,
    ));
    // Only with --otlp-endpoint: otherwise requests create no spans at all.
    let inference = if crate::otel::enabled() {
        inference.route_layer(axum::middleware::from_fn(trace::request_span))
    } else {
        inference
    };
    let app = public
        .merge(inference)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.cfg.payload_limit))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            state.cfg.body_read_timeout,
        ))
        .layer(axum::middleware::from_fn(middleware::close_if_body_unread))
        .layer(axum::Extension(docs::ApiDocument(Arc::from(
            openapi::document().to_string(),
        ))));
    // Outermost, so a browser's preflight is answered before the API key is asked for.
    let app = match cors(&state.cfg.cors_allow_origin) {
        Some(layer) => app.layer(layer),
        None => app,
    };
    app.with_state(state)
}

/// `--cors-allow-origin`: absent, no CORS headers at all (browsers refuse cross-origin calls).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Checked by ServeArgs::validate; one that still fails to parse is left out.
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]),
    )
}

async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    ApiError::new(ErrorKind::NotFound, format!("no route {}", uri.path())).into_response()
}

async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut r = ApiError::new(
        ErrorKind::BadRequest,
        format!("{method} is not allowed on {}", uri.path()),
    )
    .into_response();
    *r.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    r
}

/// The `--grpc-port` listener's answer to anything that is not gRPC.
pub fn grpc_only_router() -> Router {
    Router::new().fallback(|| async {
        use axum::response::IntoResponse;
        let mut r = ApiError::new(
            ErrorKind::UnsupportedMediaType,
            "this port serves gRPC only (HTTP/2, content-type: application/grpc)",
        )
        .into_response();
        r.extensions_mut().remove::<errors::ErrorReason>();
        r
    })
}

/// The separate Prometheus port: only /metrics.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(probes::metrics))
        .with_state(state)
}
