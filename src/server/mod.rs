//! HTTP: routes, shared state, and the listener with its drain behaviour. Knows nothing of
//! tensors: it talks to the engine through tokenizer jobs and the queue.

pub mod batches;
pub mod embed;
pub mod errors;
pub mod listener;
pub mod middleware;
pub mod openai;
pub mod probes;
pub mod request;
pub mod tei;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::config::ServeArgs;
use crate::engine::Engine;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<ServeArgs>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    /// Set once the model is loaded; inference routes answer 503 until then.
    pub engine: Arc<OnceLock<Arc<Engine>>>,
    pub load_failed: Arc<AtomicBool>,
    pub admission: Arc<embed::Admission>,
    pub started_unix: u64,
    /// Batch-job files and metadata (None if the state dir could not be opened).
    pub job_store: Option<crate::jobs::JobStore>,
    /// Set once the model is loaded and interrupted jobs are resumed.
    pub job_runner: Arc<OnceLock<Arc<crate::jobs::JobRunner>>>,
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
        .route("/tokenize", post(tei::tokenize))
        .route("/decode", post(tei::decode))
        .route("/info", get(tei::info))
        .route(
            "/v1/files",
            post(batches::upload)
                .layer(DefaultBodyLimit::max(FILE_UPLOAD_LIMIT))
                .get(batches::list_files),
        )
        .route(
            "/v1/files/{id}",
            get(batches::get_file).delete(batches::delete_file),
        )
        .route("/v1/files/{id}/content", get(batches::file_content))
        .route(
            "/v1/batches",
            post(batches::create_batch).get(batches::list_batches),
        )
        .route("/v1/batches/{id}", get(batches::get_batch))
        .route("/v1/batches/{id}/cancel", post(batches::cancel_batch));
    let inference = inference.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        middleware::track,
    ));
    Router::new()
        .route("/health", get(probes::health))
        .route("/live", get(probes::health))
        .route("/ready", get(probes::ready))
        .route("/metrics", get(probes::metrics))
        .merge(inference)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.cfg.payload_limit))
        .layer(axum::middleware::from_fn(middleware::close_if_body_unread))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    errors::ApiError::new(
        errors::ErrorKind::NotFound,
        format!("no route {}", uri.path()),
    )
    .into_response()
}

async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut r = errors::ApiError::new(
        errors::ErrorKind::BadRequest,
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
