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

use super::embed::{self, EmbedOutput, EmbedParams, RequestLimits};
use super::errors::{ApiError, ErrorKind, Flavor};
use super::request::{parse_inputs, parse_json};
use super::AppState;
use crate::batching::Priority;
use crate::engine::Engine;

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

/// A parsed OpenAI embeddings request.
pub struct OpenAiEmbeddings {
    params: EmbedParams,
    base64: bool,
}

impl OpenAiEmbeddings {
    /// From the JSON body (an HTTP request or a batch-job line's `body`).
    pub fn from_value(v: Value) -> Result<Self, ApiError> {
        let req: EmbeddingsRequest = serde_json::from_value(v).map_err(|e| {
            ApiError::new(ErrorKind::Validation, format!("invalid request body: {e}"))
        })?;
        Self::from_request(req)
    }

    fn from_request(req: EmbeddingsRequest) -> Result<Self, ApiError> {
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
        Ok(Self {
            params: EmbedParams {
                inputs: parse_inputs(&req.input, "input")?,
                truncate: None,
                direction: TruncationDirection::Right,
                prompt_name: None,
                // OpenAI embeddings are unit length.
                normalize: true,
                dimensions: req.dimensions,
            },
            base64,
        })
    }

    /// Runs it at `priority` and renders OpenAI's response body.
    pub async fn respond(
        self,
        engine: &Engine,
        limits: RequestLimits,
        priority: Priority,
    ) -> Result<Value, ApiError> {
        let out = embed::compute(engine, limits, self.params, priority).await?;
        Ok(render(&engine.info.served_model_name, out, self.base64))
    }
}

fn render(model: &str, out: EmbedOutput, base64: bool) -> Value {
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
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": out.prompt_tokens, "total_tokens": out.prompt_tokens},
    })
}

pub async fn embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let req: EmbeddingsRequest = parse_json(&headers, body)?;
        let req = OpenAiEmbeddings::from_request(req)?;
        let engine = embed::engine(&state)?;
        let out = embed::run(&state, req.params).await?;
        Ok::<_, ApiError>(render(&engine.info.served_model_name, out, req.base64))
    }
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
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
