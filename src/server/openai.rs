//! OpenAI-compatible routes: `POST /v1/embeddings` (and `/embeddings`), `GET /v1/models`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::errors::{ApiError, Flavor};
use super::request::OpenAiJsonBody;
use super::{timing, AppState};
use crate::priority::Priority;
use crate::protocol::openai::{Embeddings, EmbeddingsBody};

pub async fn embeddings(
    State(state): State<AppState>,
    OpenAiJsonBody(body): OpenAiJsonBody<EmbeddingsBody>,
) -> Response {
    let result = async {
        let req = Embeddings::from_body(body)?;
        let inference = state.inference()?;
        let (value, timings) = req.respond(&inference, Priority::Online).await?;
        Ok::<_, ApiError>((timing::parts(&timings, &inference.info.device), Json(value)))
    }
    .await;
    match result {
        Ok(v) => v.into_response(),
        Err(e) => e.flavor(Flavor::OpenAi).into_response(),
    }
}

pub async fn models(State(state): State<AppState>) -> Response {
    let name = state.cfg.served_model_name();
    Json(json!({
        "object": "list",
        "data": [{"id": name, "object": "model", "created": state.started_unix, "owned_by": "spotinfer"}],
    }))
    .into_response()
}
