//! HTTP: routes and dialects (OpenAI, TEI, Cohere/Jina), probes, errors, and the listener with
//! its drain behaviour and connection bounds. Knows nothing of tensors: every inference route
//! is a call on the inference API.

pub mod cohere;
pub mod errors;
pub mod jobs;
pub mod listener;
pub mod middleware;
pub mod openai;
pub mod probes;
pub mod request;
pub mod tei;
pub mod timing;
pub mod trace;

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

/// All routes of the main port.
pub fn router(state: AppState) -> Router {
    let inference = Router::new()
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/embed", post(tei::embed))
        .route("/embed_all", post(tei::embed_all))
        .route("/embed_sparse", post(tei::embed_sparse))
        .route("/embed_multi_vector", post(tei::embed_multi_vector))
        .route("/rerank", post(tei::rerank))
        .route("/v1/rerank", post(tei::rerank_cohere))
        .route("/v2/rerank", post(tei::rerank_cohere))
        .route("/v1/embed", post(cohere::embed_v1))
        .route("/v2/embed", post(cohere::embed_v2))
        .route("/predict", post(tei::predict))
        .route("/similarity", post(tei::similarity))
        .route("/invocations", post(tei::invocations))
        .route("/", post(tei::invocations))
        .route("/tokenize", post(tei::tokenize))
        .route("/decode", post(tei::decode))
        .route("/info", get(tei::info))
        .route(
            "/v1/files",
            post(jobs::upload)
                .layer(DefaultBodyLimit::max(FILE_UPLOAD_LIMIT))
                .get(jobs::list_files),
        )
        .route(
            "/v1/files/{id}",
            get(jobs::get_file).delete(jobs::delete_file),
        )
        .route("/v1/files/{id}/content", get(jobs::file_content))
        .route(
            "/v1/batches",
            post(jobs::create_batch).get(jobs::list_batches),
        )
        .route("/v1/batches/{id}", get(jobs::get_batch))
        .route("/v1/batches/{id}/cancel", post(jobs::cancel_batch));
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
    Router::new()
        .route("/health", get(probes::health))
        .route("/live", get(probes::health))
        .route("/ready", get(probes::ready))
        .route("/metrics", get(probes::metrics))
        .merge(inference)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.cfg.payload_limit))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            state.cfg.body_read_timeout,
        ))
        .layer(axum::middleware::from_fn(middleware::close_if_body_unread))
        .with_state(state)
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

/// The separate Prometheus port: only /metrics.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(probes::metrics))
        .with_state(state)
}
