//! Kubernetes probes and metrics. Never behind the API key, never refused while draining.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;

/// A batch running longer than this means the worker is wedged: liveness fails so the kubelet
/// restarts the pod.
const WEDGED_AFTER: Duration = Duration::from_secs(120);

/// Liveness: the process answers and the device worker is alive (or still loading).
pub async fn health(State(state): State<AppState>) -> Response {
    let healthy = state.lifecycle.is_alive()
        && state
            .inference
            .get()
            .is_none_or(|i| i.health.is_healthy(WEDGED_AFTER));
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"status": if healthy {"ok"} else {"unhealthy"}, "state": state.lifecycle.state().as_str()})),
    )
        .into_response()
}

/// Readiness: 200 only when Ready and no interruption was announced.
pub async fn ready(State(state): State<AppState>) -> Response {
    let lc = &state.lifecycle;
    let ready = lc.is_ready();
    let mut body = json!({"state": lc.state().as_str(), "ready": ready});
    if let Some(deadline) = lc.drain_deadline_unix() {
        body["drain_deadline_unix"] = json!(deadline);
    }
    if let Some(notice) = lc.notice() {
        body["interruption"] = json!(notice);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
