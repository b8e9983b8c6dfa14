//! TEI-compatible routes with TEI's shapes: `POST /embed`, `/tokenize`, `/decode`, `GET /info`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokenizers::TruncationDirection;

use super::embed::{self, EmbedParams};
use super::errors::{ApiError, ErrorKind};
use super::request::{parse_inputs, parse_json};
use super::AppState;
use crate::tokenize::Input;

#[derive(Deserialize, Clone, Copy, Default)]
enum Direction {
    #[default]
    #[serde(alias = "right")]
    Right,
    #[serde(alias = "left")]
    Left,
}

impl From<Direction> for TruncationDirection {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Right => TruncationDirection::Right,
            Direction::Left => TruncationDirection::Left,
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
struct EmbedRequest {
    #[serde(default)]
    inputs: Value,
    #[serde(default = "default_true")]
    normalize: bool,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
    #[serde(default)]
    prompt_name: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

fn respond<T: IntoResponse>(r: Result<T, ApiError>) -> Response {
    match r {
        Ok(v) => v.into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn embed(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(
        async {
            let req: EmbedRequest = parse_json(&headers, body)?;
            let inputs = parse_inputs(&req.inputs, "inputs")?;
            let out = embed::run(
                &state,
                EmbedParams {
                    inputs,
                    truncate: req.truncate,
                    direction: req.truncation_direction.into(),
                    prompt_name: req.prompt_name,
                    normalize: req.normalize,
                    dimensions: req.dimensions,
                },
            )
            .await?;
            Ok(Json(out.vectors))
        }
        .await,
    )
}

#[derive(Deserialize)]
struct TokenizeRequest {
    #[serde(default)]
    inputs: Value,
    #[serde(default = "default_true")]
    add_special_tokens: bool,
    #[serde(default)]
    prompt_name: Option<String>,
}

pub async fn tokenize(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(
        async {
            let req: TokenizeRequest = parse_json(&headers, body)?;
            let engine = embed::engine(&state)?;
            let inputs = parse_inputs(&req.inputs, "inputs")?;
            if inputs.len() > state.cfg.max_client_batch_size {
                return Err(ApiError::new(
                    ErrorKind::Validation,
                    format!(
                        "batch size {} > maximum allowed batch size {}",
                        inputs.len(),
                        state.cfg.max_client_batch_size
                    ),
                ));
            }
            let inputs = embed::apply_prompt(&engine, inputs, req.prompt_name.as_deref())?;
            let mut texts = Vec::with_capacity(inputs.len());
            for (i, input) in inputs.into_iter().enumerate() {
                match input {
                    Input::Text(t) if !t.is_empty() => texts.push(t),
                    Input::Text(_) => {
                        return Err(ApiError::new(
                            ErrorKind::Empty,
                            format!("input {i} is empty"),
                        ))
                    }
                    Input::Ids(_) => {
                        return Err(ApiError::new(
                            ErrorKind::Validation,
                            "`inputs` must be text for /tokenize",
                        ))
                    }
                }
            }
            let add = req.add_special_tokens;
            let tokens = engine
                .tokenizers
                .run(move |tk| {
                    texts
                        .iter()
                        .map(|t| tk.tokens(t, add))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await?;
            Ok(Json(tokens))
        }
        .await,
    )
}

#[derive(Deserialize)]
struct DecodeRequest {
    #[serde(default)]
    ids: Value,
    #[serde(default = "default_true")]
    skip_special_tokens: bool,
}

pub async fn decode(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(
        async {
            let req: DecodeRequest = parse_json(&headers, body)?;
            let engine = embed::engine(&state)?;
            let seqs: Vec<Vec<u32>> = parse_inputs(&req.ids, "ids")?
                .into_iter()
                .map(|i| match i {
                    Input::Ids(ids) => Ok(ids),
                    Input::Text(_) => Err(ApiError::new(
                        ErrorKind::Validation,
                        "`ids` must be an array of token ids or an array of arrays of token ids",
                    )
                    .param("ids")),
                })
                .collect::<Result<_, _>>()?;
            let skip = req.skip_special_tokens;
            let texts = engine
                .tokenizers
                .run(move |tk| {
                    seqs.iter()
                        .map(|ids| tk.decode(ids, skip))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await?;
            Ok(Json(texts))
        }
        .await,
    )
}

pub async fn info(State(state): State<AppState>) -> Response {
    let cfg = &state.cfg;
    let mut info = json!({
        "model_id": cfg.model.model_id,
        "model_sha": cfg.model.revision,
        "version": env!("CARGO_PKG_VERSION"),
        "max_concurrent_requests": cfg.max_concurrent_requests,
        "max_batch_tokens": cfg.max_batch_tokens,
        "max_batch_requests": cfg.max_batch_requests,
        "max_client_batch_size": cfg.max_client_batch_size,
        "auto_truncate": cfg.auto_truncate,
        "tokenization_workers": cfg.tokenization_workers(),
        "state": state.lifecycle.state().as_str(),
    });
    if let (Some(engine), Value::Object(map)) = (state.engine.get(), &mut info) {
        let i = &engine.info;
        map.insert("model_dtype".into(), json!(i.dtype));
        map.insert(
            "model_type".into(),
            json!({"embedding": {"pooling": i.pooling}}),
        );
        map.insert("max_input_length".into(), json!(i.max_input_length));
        map.insert("served_model_name".into(), json!(i.served_model_name));
        map.insert("device".into(), json!(i.device));
        map.insert("hidden_size".into(), json!(i.hidden_size));
        map.insert("source".into(), json!(i.source));
        map.insert("prompts".into(), json!(i.prompts));
    }
    Json(info).into_response()
}
