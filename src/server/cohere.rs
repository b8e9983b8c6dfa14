//! Cohere's embed API, `POST /v1/embed` and `POST /v2/embed`, in the shapes the official SDK
//! parses. `input_type` picks the model's sentence-transformers prompt; `embedding_types`
//! renders the same vectors as float, int8, uint8, binary, ubinary or base64
//! (`inference/quantize.rs`); `output_dimension` is Matryoshka truncation.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::errors::{ApiError, ErrorKind};
use super::request::JsonBody;
use super::{timing, AppState};
use crate::inference::quantize::{render_all, EmbeddingType};
use crate::inference::{Direction, EmbedRequest, TextOptions};
use crate::priority::Priority;
use crate::tokenize::Input;

/// Cohere's embed request (v1 and v2).
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = CohereEmbedBody)]
pub(crate) struct EmbedBody {
    #[serde(default)]
    texts: Option<Vec<String>>,
    /// v2: `[{"content": [{"type": "text", "text": …}]}]`.
    #[serde(default)]
    inputs: Option<Vec<CohereInput>>,
    /// Refused: text models only.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    images: Option<Vec<Value>>,
    /// One model per server: accepted, not checked.
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    /// `search_query`, `search_document`, `classification` or `clustering`: the model's prompt
    /// of that name (or an alias).
    #[serde(default)]
    input_type: Option<String>,
    /// Any of `float`, `int8`, `uint8`, `binary`, `ubinary`, `base64`.
    #[serde(default)]
    embedding_types: Option<Vec<String>>,
    /// `END` (default), `START` or `NONE`.
    #[serde(default)]
    truncate: Option<String>,
    /// Matryoshka: the first dimensions, then unit length.
    #[serde(default)]
    output_dimension: Option<usize>,
    #[serde(default)]
    max_tokens: Option<usize>,
    /// Cohere's scheduling hint: accepted, not used.
    #[serde(default)]
    #[allow(dead_code)]
    priority: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CohereInput {
    /// Parts `{"type": "text", "text": …}`; the text parts are joined by a newline.
    #[schema(value_type = Vec<Object>)]
    content: Vec<Value>,
}

#[derive(Clone, Copy, PartialEq)]
enum Version {
    V1,
    V2,
}

pub async fn embed_v1(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<EmbedBody>,
) -> Response {
    embed(state, body, Version::V1).await
}

pub async fn embed_v2(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<EmbedBody>,
) -> Response {
    embed(state, body, Version::V2).await
}

fn invalid(message: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::new(ErrorKind::Validation, message).param(param)
}

/// The model prompt an `input_type` selects: the same name, else a common alias; names
/// compare without case (EmbeddingGemma spells `Clustering`). None: the default prompt.
pub fn prompt_for_input_type<'a>(
    input_type: &str,
    prompts: impl IntoIterator<Item = &'a String> + Clone,
) -> Result<Option<String>, ApiError> {
    let candidates: &[&str] = match input_type {
        "search_query" => &["search_query", "query"],
        "search_document" => &["search_document", "document", "passage", "corpus"],
        "classification" => &["classification"],
        "clustering" => &["clustering"],
        "image" => return Err(invalid("image inputs are not supported", "input_type")),
        other => {
            return Err(invalid(
                format!(
                    "input_type must be search_document, search_query, classification or \
                     clustering, got `{other}`"
                ),
                "input_type",
            ))
        }
    };
    Ok(candidates.iter().find_map(|c| {
        prompts
            .clone()
            .into_iter()
            .find(|p| p.eq_ignore_ascii_case(c))
            .cloned()
    }))
}

/// Cohere's `truncate`: NONE rejects over-long inputs, START drops their start, END (the
/// default, as Cohere's) their end.
fn truncation(t: Option<&str>) -> Result<(bool, Direction), ApiError> {
    match t.map(str::to_ascii_uppercase).as_deref() {
        None | Some("END") => Ok((true, Direction::Right)),
        Some("START") => Ok((true, Direction::Left)),
        Some("NONE") => Ok((false, Direction::Right)),
        Some(other) => Err(invalid(
            format!("truncate must be NONE, START or END, got `{other}`"),
            "truncate",
        )),
    }
}

/// The texts of `texts` or v2's `inputs` (text parts of one input joined by a newline).
fn texts_of(body: &mut EmbedBody) -> Result<Vec<String>, ApiError> {
    if body.images.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(invalid("image inputs are not supported", "images"));
    }
    match (body.texts.take(), body.inputs.take()) {
        (Some(_), Some(_)) => Err(invalid("send `texts` or `inputs`, not both", "texts")),
        (Some(t), None) => Ok(t),
        (None, Some(inputs)) => inputs
            .into_iter()
            .map(|i| {
                let parts = i
                    .content
                    .iter()
                    .map(|c| match (c["type"].as_str(), c["text"].as_str()) {
                        (Some("text"), Some(t)) => Ok(t),
                        _ => Err(invalid(
                            "each `inputs[].content` item must be {\"type\": \"text\", \"text\": …}",
                            "inputs",
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(parts.join("\n"))
            })
            .collect(),
        (None, None) => Err(invalid("`texts` is required", "texts")),
    }
}

fn embedding_types(v: Option<&[String]>) -> Result<Vec<EmbeddingType>, ApiError> {
    let mut out = Vec::new();
    for name in v.unwrap_or_default() {
        let t = EmbeddingType::parse(name).ok_or_else(|| {
            invalid(
                format!(
                    "embedding_types values must be float, int8, uint8, binary, ubinary or \
                     base64, got `{name}`"
                ),
                "embedding_types",
            )
        })?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

async fn embed(state: AppState, mut body: EmbedBody, version: Version) -> Response {
    let result = async {
        let texts = texts_of(&mut body)?;
        let types = embedding_types(body.embedding_types.as_deref())?;
        let (truncate, direction) = truncation(body.truncate.as_deref())?;
        let inference = state.inference()?;
        if let Some(m) = body.max_tokens {
            // Only the model's own limit is enforced; a lower one would need re-tokenising.
            if m < inference.info.max_input_length {
                return Err(invalid(
                    format!(
                        "max_tokens below the model's maximum input length ({}) is not supported",
                        inference.info.max_input_length
                    ),
                    "max_tokens",
                ));
            }
        }
        let prompt_name = match &body.input_type {
            Some(t) => prompt_for_input_type(t, inference.info.prompts.keys())?,
            None => None,
        };
        let out = inference
            .embed(
                EmbedRequest {
                    inputs: texts.iter().cloned().map(Input::Text).collect(),
                    text: TextOptions {
                        truncate: Some(truncate),
                        direction,
                        prompt_name,
                    },
                    // Cohere's embeddings are unit length.
                    normalize: true,
                    dimensions: body.output_dimension,
                },
                Priority::Online,
            )
            .await?;
        let ranges = inference.quantization_ranges.as_ref();
        let quantize = |t| {
            render_all(&out.vectors, t, ranges)
                .map_err(|e| invalid(e.to_string(), "embedding_types"))
        };
        // v1 without embedding_types is the plain float list; everything else is by type.
        let (embeddings, response_type) = if version == Version::V1 && types.is_empty() {
            (quantize(EmbeddingType::Float)?, "embeddings_floats")
        } else {
            let types = if types.is_empty() {
                vec![EmbeddingType::Float]
            } else {
                types
            };
            let mut by_type = Map::new();
            for t in types {
                by_type.insert(t.as_str().to_string(), quantize(t)?);
            }
            (Value::Object(by_type), "embeddings_by_type")
        };
        let tokens = out.timings.tokens;
        let body = json!({
            "id": format!("embed-{:016x}", rand::random::<u64>()),
            "response_type": response_type,
            "embeddings": embeddings,
            "texts": texts,
            "meta": {
                "api_version": {"version": if version == Version::V1 { "1" } else { "2" }},
                "billed_units": {"input_tokens": tokens},
                "tokens": {"input_tokens": tokens},
            },
        });
        Ok::<_, ApiError>((
            timing::headers(&out.timings, &inference.info.device),
            Json(body),
        ))
    }
    .await;
    match result {
        Ok(v) => v.into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn input_types_pick_prompts() {
        let gemma = names(&["query", "document", "Clustering", "Classification"]);
        let pick = |t: &str, p: &Vec<String>| prompt_for_input_type(t, p.iter()).unwrap();
        assert_eq!(pick("search_query", &gemma).as_deref(), Some("query"));
        assert_eq!(pick("search_document", &gemma).as_deref(), Some("document"));
        assert_eq!(pick("clustering", &gemma).as_deref(), Some("Clustering"));
        let nomic = names(&["search_query", "search_document", "query"]);
        assert_eq!(
            pick("search_query", &nomic).as_deref(),
            Some("search_query")
        );
        assert_eq!(pick("classification", &nomic), None);
        assert_eq!(
            prompt_for_input_type("image", gemma.iter())
                .unwrap_err()
                .status(),
            422
        );
        assert!(prompt_for_input_type("x", gemma.iter()).is_err());
    }

    #[test]
    fn truncate_values() {
        assert!(matches!(truncation(None), Ok((true, Direction::Right))));
        assert!(matches!(
            truncation(Some("START")),
            Ok((true, Direction::Left))
        ));
        assert!(matches!(truncation(Some("none")), Ok((false, _))));
        assert!(truncation(Some("MIDDLE")).is_err());
    }

    #[test]
    fn types_are_checked_and_deduplicated() {
        let t = embedding_types(Some(&names(&["int8", "float", "int8"]))).unwrap();
        assert_eq!(t, vec![EmbeddingType::Int8, EmbeddingType::Float]);
        assert!(embedding_types(Some(&names(&["int4"]))).is_err());
    }
}
