//! OpenAI's embeddings dialect: the request body (an HTTP request or a job line's `body`) and
//! the response body, so the HTTP route and the job runner render exactly the same thing.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::inference::error::{ApiError, ErrorKind};
use crate::inference::inputs::parse_inputs;
use crate::inference::quantize::{self, EmbeddingType, QuantizeError, Ranges};
use crate::inference::{EmbedRequest, Embedded, Inference, TextOptions, Timings};
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
    /// `float` and `base64` are OpenAI's; the quantized types are ours.
    pub format: EmbeddingType,
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
        let format = match body.encoding_format.as_deref() {
            None => EmbeddingType::Float,
            Some(name) => EmbeddingType::parse(name).ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Validation,
                    format!(
                        "encoding_format must be `float` or `base64` (or `int8`, `uint8`, \
                         `binary`, `ubinary`), got `{name}`"
                    ),
                )
                .param("encoding_format")
            })?,
        };
        Ok(Self {
            request: EmbedRequest {
                inputs: parse_inputs(&body.input, "input")?,
                text: TextOptions::default(),
                // OpenAI embeddings are unit length.
                normalize: true,
                dimensions: body.dimensions,
            },
            format,
        })
    }

    /// Runs it at `priority` and renders OpenAI's response body.
    pub async fn respond(
        self,
        inference: &Inference,
        priority: Priority,
    ) -> Result<(Value, Timings), ApiError> {
        let out = inference.embed(self.request, priority).await?;
        let timings = out.timings;
        let body = render(
            &inference.info.served_model_name,
            out,
            self.format,
            inference.quantization_ranges.as_ref(),
        )
        .map_err(|e| {
            ApiError::new(ErrorKind::Validation, e.to_string()).param("encoding_format")
        })?;
        Ok((body, timings))
    }
}

fn render(
    model: &str,
    out: Embedded,
    format: EmbeddingType,
    ranges: Option<&Ranges>,
) -> Result<Value, QuantizeError> {
    let tokens = out.timings.tokens;
    let data = out
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            Ok(json!({"object": "embedding", "embedding": quantize::render(v, format, ranges)?, "index": index}))
        })
        .collect::<Result<Vec<Value>, QuantizeError>>()?;
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}
