//! OpenAI-compatible routes: `POST /v1/embeddings` (and `/embeddings`), `GET /v1/models`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokenizers::TruncationDirection;

use super::embed::{self, EmbedParams};
use super::errors::{ApiError, ErrorKind, Flavor};
use super::request::{parse_inputs, parse_json};
use super::AppState;

#[derive(Deserialize)]
struct EmbeddingsRequest {
    #[serde(default)]
    input: Value,
    /// Accepted and echoed back as the served name; one model per server.
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

pub async fn embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match embeddings_inner(&state, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.flavor(Flavor::OpenAi).into_response(),
    }
}

async fn embeddings_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: EmbeddingsRequest = parse_json(headers, body)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::new(
                ErrorKind::Validation,
                format!("encoding_format must be `float` or `base64`, got `{other}`"),
            )
            .param("encoding_format"))
        }
    };
    let inputs = parse_inputs(&req.input, "input")?;
    let out = embed::run(
        state,
        EmbedParams {
            inputs,
            truncate: None,
            direction: TruncationDirection::Right,
            prompt_name: None,
            // OpenAI embeddings are unit length.
            normalize: true,
            dimensions: req.dimensions,
        },
    )
    .await?;
    let model = embed::engine(state)?.info.served_model_name.clone();
    let data: Vec<Value> = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                // OpenAI's base64 format: little-endian float32 bytes.
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "embedding": embedding, "index": index})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": out.prompt_tokens, "total_tokens": out.prompt_tokens},
    }))
    .into_response())
}

pub async fn models(State(state): State<AppState>) -> Response {
    let name = state.cfg.served_model_name();
    Json(json!({
        "object": "list",
        "data": [{"id": name, "object": "model", "created": state.started_unix, "owned_by": "spotinfer"}],
    }))
    .into_response()
}
