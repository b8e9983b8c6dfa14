//! OpenAI's embeddings dialect: the request body (an HTTP request or a job line's `body`) and
//! the response body, so the HTTP route and the job runner render exactly the same thing.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ErrorKind};
use super::inputs::parse_inputs;
use super::{EmbedRequest, Embedded, Inference, TextOptions};
use crate::priority::Priority;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsBody {
    /// A text, a list of texts, token ids, or a list of those.
    #[serde(default)]
    #[schema(value_type = Object)]
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
pub struct Embeddings {
    pub request: EmbedRequest,
    pub base64: bool,
}

impl Embeddings {
    /// From a JSON value (a job line's `body`).
    pub fn from_value(v: Value) -> Result<Self, ApiError> {
        let body: EmbeddingsBody = serde_json::from_value(v).map_err(|e| {
            ApiError::new(ErrorKind::Validation, format!("invalid request body: {e}"))
        })?;
        Self::from_body(body)
    }

    pub fn from_body(body: EmbeddingsBody) -> Result<Self, ApiError> {
        let base64 = match body.encoding_format.as_deref() {
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
            request: EmbedRequest {
                inputs: parse_inputs(&body.input, "input")?,
                text: TextOptions::default(),
                // OpenAI embeddings are unit length.
                normalize: true,
                dimensions: body.dimensions,
            },
            base64,
        })
    }

    /// Runs it at `priority` and renders OpenAI's response body.
    pub async fn respond(
        self,
        inference: &Inference,
        priority: Priority,
    ) -> Result<(Value, super::Timings), ApiError> {
        let out = inference.embed(self.request, priority).await?;
        let timings = out.timings;
        Ok((
            render(&inference.info.served_model_name, out, self.base64),
            timings,
        ))
    }
}

fn render(model: &str, out: Embedded, base64: bool) -> Value {
    let tokens = out.timings.tokens;
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
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}
