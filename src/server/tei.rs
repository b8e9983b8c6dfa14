//! TEI-compatible routes with TEI's shapes: `/embed`, `/embed_all`, `/embed_sparse`,
//! `/rerank`, `/predict`, `/similarity`, `/tokenize`, `/decode`, `GET /info`, and `POST /` /
//! `/invocations`, which dispatch on the model's task as TEI does (and, beyond TEI, on a
//! `sentence_similarity` body for an embedding model). Beyond TEI: `/embed_multi_vector`
//! (bge-m3's ColBERT vectors, and its dense and sparse outputs from the same forward pass).
//!
//! Over 500 lines on purpose: one handler per TEI route with TEI's request shapes beside it, so
//! a route and its body are read together; the logic they call is in `inference/`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::{ApiError, ErrorKind};
use super::request::JsonBody;
use super::{timing, AppState};
use crate::inference::inputs::parse_inputs;
use crate::inference::quantize::{render_all, EmbeddingType};
use crate::inference::{Direction, EmbedRequest, Inference, TextOptions, Timings};
use crate::model::{Task, Want};
use crate::priority::Priority;
use crate::tokenize::Input;

/// The input forms TEI routes take (`inputs`; `input` on OpenAI's route).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum Inputs {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdsBatch(Vec<Vec<u32>>),
}

#[derive(Deserialize, Clone, Copy, Default, utoipa::ToSchema)]
pub(crate) enum DirectionField {
    #[default]
    #[serde(alias = "right")]
    Right,
    #[serde(alias = "left")]
    Left,
}

impl From<DirectionField> for Direction {
    fn from(d: DirectionField) -> Self {
        match d {
            DirectionField::Right => Direction::Right,
            DirectionField::Left => Direction::Left,
        }
    }
}

fn default_true() -> bool {
    true
}

/// The fields every TEI inference body shares.
#[derive(Deserialize, Default, utoipa::ToSchema)]
pub(crate) struct Text {
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: DirectionField,
    #[serde(default)]
    prompt_name: Option<String>,
}

impl From<Text> for TextOptions {
    fn from(t: Text) -> Self {
        TextOptions {
            truncate: t.truncate,
            direction: t.truncation_direction.into(),
            prompt_name: t.prompt_name,
        }
    }
}

fn with_timing(inference: &Inference, t: &Timings, body: Value) -> Response {
    (timing::parts(t, &inference.info.device), Json(body)).into_response()
}

/// A route's answer before it becomes a response (`/vertex` gathers several).
pub(crate) struct Answer {
    pub(super) inference: Arc<Inference>,
    pub(super) timings: Timings,
    pub(super) body: Value,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        with_timing(&self.inference, &self.timings, self.body)
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct EmbedBody {
    #[serde(default)]
    #[schema(value_type = Inputs)]
    inputs: Value,
    #[serde(default = "default_true")]
    normalize: bool,
    #[serde(default)]
    dimensions: Option<usize>,
    /// Beyond TEI: `int8`, `uint8`, `binary`, `ubinary` or `base64` vectors (`float` default).
    #[serde(default)]
    embedding_type: Option<String>,
    #[serde(flatten)]
    text: Text,
}

pub async fn embed(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Answer, ApiError> {
    embed_value(&state, body).await
}

pub(super) async fn embed_value(state: &AppState, body: Value) -> Result<Answer, ApiError> {
    let req: EmbedBody = from_value(body)?;
    let embedding_type = match req.embedding_type.as_deref() {
        None => EmbeddingType::Float,
        Some(name) => EmbeddingType::parse(name).ok_or_else(|| {
            ApiError::new(
                ErrorKind::Validation,
                format!(
                    "embedding_type must be float, int8, uint8, binary, ubinary or base64, got \
                     `{name}`"
                ),
            )
            .param("embedding_type")
        })?,
    };
    let inference = state.inference()?;
    let out = inference
        .embed(
            EmbedRequest {
                inputs: parse_inputs(&req.inputs, "inputs")?,
                text: req.text.into(),
                normalize: req.normalize,
                dimensions: req.dimensions,
            },
            Priority::Online,
        )
        .await?;
    let body = render_all(
        &out.vectors,
        embedding_type,
        inference.quantization_ranges.as_ref(),
    )
    .map_err(|e| ApiError::new(ErrorKind::Validation, e.to_string()).param("embedding_type"))?;
    Ok(Answer {
        inference,
        timings: out.timings,
        body,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct InputsBody {
    #[serde(default)]
    #[schema(value_type = Inputs)]
    inputs: Value,
    #[serde(flatten)]
    text: Text,
}

pub async fn embed_all(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<InputsBody>,
) -> Result<Response, ApiError> {
    let inference = state.inference()?;
    let (tokens, t) = inference
        .embed_all(
            parse_inputs(&req.inputs, "inputs")?,
            req.text.into(),
            Priority::Online,
        )
        .await?;
    Ok(with_timing(&inference, &t, json!(tokens)))
}

fn sparse_json(v: &[(u32, f32)]) -> Value {
    Value::Array(
        v.iter()
            .map(|(i, w)| json!({"index": i, "value": w}))
            .collect(),
    )
}

pub async fn embed_sparse(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Answer, ApiError> {
    embed_sparse_value(&state, body).await
}

pub(super) async fn embed_sparse_value(state: &AppState, body: Value) -> Result<Answer, ApiError> {
    let req: InputsBody = from_value(body)?;
    let inference = state.inference()?;
    let (sparse, t) = inference
        .embed_sparse(
            parse_inputs(&req.inputs, "inputs")?,
            req.text.into(),
            Priority::Online,
        )
        .await?;
    let body: Vec<Value> = sparse.iter().map(|s| sparse_json(s)).collect();
    Ok(Answer {
        inference,
        timings: t,
        body: json!(body),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct MultiBody {
    #[serde(default)]
    #[schema(value_type = Inputs)]
    inputs: Value,
    /// Also return the dense (normalised CLS) and sparse outputs of the same forward pass.
    #[serde(default)]
    return_dense: bool,
    #[serde(default)]
    return_sparse: bool,
    #[serde(flatten)]
    text: Text,
}

/// bge-m3: `[{"multi_vector": [[f32]], "dense"?: [f32], "sparse"?: [{index, value}]}]`.
pub async fn embed_multi_vector(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<MultiBody>,
) -> Result<Response, ApiError> {
    let inference = state.inference()?;
    let want = Want {
        multi_vector: true,
        pooled: req.return_dense,
        sparse: req.return_sparse,
        ..Want::NONE
    };
    let (outputs, t) = inference
        .embed_multi(
            parse_inputs(&req.inputs, "inputs")?,
            req.text.into(),
            want,
            Priority::Online,
        )
        .await?;
    let width = inference.info.model.hidden_size.max(1);
    let body: Vec<Value> = outputs
        .into_iter()
        .map(|o| {
            let vectors: Vec<&[f32]> = o
                .multi_vector
                .as_deref()
                .unwrap_or_default()
                .chunks_exact(width)
                .collect();
            let mut item = json!({"multi_vector": vectors});
            if let Some(d) = &o.pooled {
                item["dense"] = json!(d);
            }
            if let Some(s) = &o.sparse {
                item["sparse"] = sparse_json(s);
            }
            item
        })
        .collect();
    Ok(with_timing(&inference, &t, json!(body)))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct RerankBody {
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    texts: Option<Vec<String>>,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    /// Beyond TEI: the task a Qwen3-Reranker judges relevance for.
    #[serde(default)]
    instruction: Option<String>,
    #[serde(flatten)]
    text: Text,
}

/// `(index, score)`, highest first; equal scores put the later text first, as TEI does.
pub(crate) fn rank(scores: Vec<f32>) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    ranked
}

pub async fn rerank(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Answer, ApiError> {
    rerank_value(&state, body).await
}

pub(super) async fn rerank_value(state: &AppState, body: Value) -> Result<Answer, ApiError> {
    let req: RerankBody = from_value(body)?;
    let query = req.query.ok_or_else(|| {
        ApiError::new(ErrorKind::Validation, "`query` is required").param("query")
    })?;
    let texts = req.texts.ok_or_else(|| {
        ApiError::new(ErrorKind::Validation, "`texts` is required").param("texts")
    })?;
    let inference = state.inference()?;
    let (scores, t) = inference
        .rerank(
            &query,
            texts.clone(),
            req.instruction.as_deref(),
            req.text.into(),
            req.raw_scores,
            Priority::Online,
        )
        .await?;
    let ranked = rank(scores);
    let body: Vec<Value> = ranked
        .into_iter()
        .map(|(index, score)| {
            let mut r = json!({"index": index, "score": score});
            if req.return_text {
                r["text"] = json!(texts[index]);
            }
            r
        })
        .collect();
    Ok(Answer {
        inference,
        timings: t,
        body: json!(body),
    })
}

/// Cohere (`/v1/rerank`, `/v2/rerank`) and Jina shape: `documents` as strings or `{text}`,
/// `top_n`, `return_documents`; `results[{index, relevance_score, document?}]`.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CohereBody {
    #[serde(default)]
    query: Option<String>,
    /// Strings, or objects with `text` (or the `rank_fields` named).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    documents: Option<Vec<Value>>,
    #[serde(default)]
    top_n: Option<usize>,
    /// Cohere v1: absent means false; Jina (same path): absent means true. Returned unless
    /// explicitly false: both SDKs accept the extra field.
    #[serde(default)]
    return_documents: Option<bool>,
    /// Cohere: which fields of object documents to score, in order (`field: value` lines).
    #[serde(default)]
    rank_fields: Option<Vec<String>>,
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
}

/// The text to score for one Cohere/Jina document.
fn document_text(d: &Value, fields: Option<&[String]>) -> Option<String> {
    match (d, fields) {
        (Value::String(s), _) => Some(s.clone()),
        (Value::Object(o), Some(fields)) if !fields.is_empty() => {
            let lines: Vec<String> = fields
                .iter()
                .filter_map(|f| {
                    o.get(f)
                        .and_then(Value::as_str)
                        .map(|v| format!("{f}: {v}"))
                })
                .collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        }
        (Value::Object(o), _) => o.get("text").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

pub async fn rerank_cohere(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CohereBody>,
) -> Result<Response, ApiError> {
    let query = req.query.ok_or_else(|| {
        ApiError::new(ErrorKind::Validation, "`query` is required").param("query")
    })?;
    let docs = req.documents.ok_or_else(|| {
        ApiError::new(ErrorKind::Validation, "`documents` is required").param("documents")
    })?;
    let texts = docs
        .iter()
        .map(|d| {
            document_text(d, req.rank_fields.as_deref()).ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Validation,
                    "each document must be a string or an object with `text` (or the \
                     `rank_fields` named)",
                )
                .param("documents")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let inference = state.inference()?;
    let (scores, t) = inference
        .rerank(
            &query,
            texts.clone(),
            None,
            TextOptions::default(),
            false,
            Priority::Online,
        )
        .await?;
    let mut ranked = rank(scores);
    ranked.truncate(req.top_n.unwrap_or(ranked.len()));
    let results: Vec<Value> = ranked
        .into_iter()
        .map(|(index, score)| {
            let mut r = json!({"index": index, "relevance_score": score});
            if req.return_documents != Some(false) {
                r["document"] = match &docs[index] {
                    Value::Object(o) => Value::Object(o.clone()),
                    _ => json!({"text": texts[index]}),
                };
            }
            r
        })
        .collect();
    let body = json!({
        "id": format!("rerank-{:016x}", rand::random::<u64>()),
        "model": inference.info.served_model_name,
        "results": results,
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
        "usage": {"total_tokens": t.tokens, "prompt_tokens": t.tokens},
    });
    Ok(with_timing(&inference, &t, body))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct PredictBody {
    #[serde(default)]
    #[schema(value_type = Inputs)]
    inputs: Value,
    #[serde(default)]
    raw_scores: bool,
    #[serde(flatten)]
    text: Text,
}

/// TEI's `/predict` inputs: a text, a pair `[a, b]` (or `[a]`), or a list of those.
fn predict_inputs(v: &Value) -> Result<(Vec<Input>, bool), ApiError> {
    let bad = || {
        ApiError::new(
            ErrorKind::Validation,
            "`inputs` must be a string, a pair [string, string], or an array of those",
        )
        .param("inputs")
    };
    let one = |v: &Value| -> Result<Input, ApiError> {
        match v {
            Value::String(s) => Ok(Input::Text(s.clone())),
            Value::Array(a) => match a.as_slice() {
                [Value::String(s)] => Ok(Input::Text(s.clone())),
                [Value::String(a), Value::String(b)] => Ok(Input::Pair(a.clone(), b.clone())),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    };
    match v {
        Value::String(_) => Ok((vec![one(v)?], false)),
        Value::Array(items) if items.iter().all(Value::is_string) && items.len() <= 2 => {
            // ["a", "b"] is a pair, as in TEI; a batch of texts is [["a"], ["b"]].
            Ok((vec![one(v)?], false))
        }
        Value::Array(items) => Ok((items.iter().map(one).collect::<Result<_, _>>()?, true)),
        _ => Err(bad()),
    }
}

pub async fn predict(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Answer, ApiError> {
    predict_value(&state, body).await
}

pub(super) async fn predict_value(state: &AppState, body: Value) -> Result<Answer, ApiError> {
    let req: PredictBody = from_value(body)?;
    let (inputs, batch) = predict_inputs(&req.inputs)?;
    let inference = state.inference()?;
    let (results, t) = inference
        .predict(inputs, req.text.into(), req.raw_scores, Priority::Online)
        .await?;
    let body = if batch {
        json!(results)
    } else {
        json!(results.into_iter().next().unwrap_or_default())
    };
    Ok(Answer {
        inference,
        timings: t,
        body,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct SimilarityInputs {
    source_sentence: String,
    sentences: Vec<String>,
}

/// TEI: `{"inputs": {"source_sentence", "sentences"}, "parameters": {truncate, …}}`
/// (huggingface_hub's `sentence_similarity` sends `"parameters": {}`).
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct SimilarityBody {
    inputs: SimilarityInputs,
    #[serde(default)]
    parameters: Option<Text>,
}

pub async fn similarity(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Answer, ApiError> {
    similarity_value(&state, body).await
}

async fn similarity_value(state: &AppState, body: Value) -> Result<Answer, ApiError> {
    let req: SimilarityBody = from_value(body)?;
    let inference = state.inference()?;
    let (scores, t) = inference
        .similarity(
            req.inputs.source_sentence,
            req.inputs.sentences,
            req.parameters.unwrap_or_default().into(),
            Priority::Online,
        )
        .await?;
    Ok(Answer {
        inference,
        timings: t,
        body: json!(scores),
    })
}

/// `POST /` and `/invocations`: the model's own route, as TEI dispatches (classifier →
/// predict, reranker → rerank, SPLADE → embed_sparse, embedder → embed), plus
/// `{"inputs": {"source_sentence", "sentences"}}` → similarity for an embedder
/// (huggingface_hub's `sentence_similarity`, which TEI answers with 422).
pub async fn invocations(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let inference = state.inference()?;
    let answer = match inference.info.model.task {
        Task::Classify => predict_value(&state, body).await,
        Task::Rerank => rerank_value(&state, body).await,
        Task::Sparse => embed_sparse_value(&state, body).await,
        Task::Embed if body.get("inputs").is_some_and(Value::is_object) => {
            similarity_value(&state, body).await
        }
        Task::Embed => embed_value(&state, body).await,
    };
    Ok(answer?.into_response())
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v)
        .map_err(|e| ApiError::new(ErrorKind::Validation, format!("invalid JSON body: {e}")))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct TokenizeBody {
    #[serde(default)]
    #[schema(value_type = Inputs)]
    inputs: Value,
    #[serde(default = "default_true")]
    add_special_tokens: bool,
    #[serde(default)]
    prompt_name: Option<String>,
}

pub async fn tokenize(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<TokenizeBody>,
) -> Result<Response, ApiError> {
    let inference = state.inference()?;
    let inputs = parse_inputs(&req.inputs, "inputs")?;
    let inputs = inference.apply_prompt(inputs, req.prompt_name.as_deref())?;
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
            _ => {
                return Err(ApiError::new(
                    ErrorKind::Validation,
                    "`inputs` must be text for /tokenize",
                ))
            }
        }
    }
    let tokens = inference.tokenize(texts, req.add_special_tokens).await?;
    Ok(Json(tokens).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct DecodeBody {
    /// Token ids, or a list of them.
    #[serde(default)]
    #[schema(value_type = Inputs)]
    ids: Value,
    #[serde(default = "default_true")]
    skip_special_tokens: bool,
}

pub async fn decode(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<DecodeBody>,
) -> Result<Response, ApiError> {
    let inference = state.inference()?;
    let seqs: Vec<Vec<u32>> = parse_inputs(&req.ids, "ids")?
        .into_iter()
        .map(|i| match i {
            Input::Ids(ids) => Ok(ids),
            _ => Err(ApiError::new(
                ErrorKind::Validation,
                "`ids` must be an array of token ids or an array of arrays of token ids",
            )
            .param("ids")),
        })
        .collect::<Result<_, _>>()?;
    let texts = inference.decode(seqs, req.skip_special_tokens).await?;
    Ok(Json(texts).into_response())
}

/// TEI's `model_type`: `{"embedding": {"pooling"}}`, `{"classifier": {"id2label", "label2id"}}`
/// or `{"reranker": {…}}`.
fn model_type(i: &crate::inference::ModelInfo) -> Value {
    let id2label: serde_json::Map<String, Value> = i
        .model
        .labels
        .iter()
        .enumerate()
        .map(|(k, l)| (k.to_string(), json!(l)))
        .collect();
    let label2id: serde_json::Map<String, Value> = i
        .model
        .labels
        .iter()
        .enumerate()
        .map(|(k, l)| (l.clone(), json!(k)))
        .collect();
    match i.model.task {
        Task::Embed | Task::Sparse => {
            // TEI's spelling of the pooling names.
            let pooling = i.model.pooling.map(|p| p.as_str().replace('-', "_"));
            json!({"embedding": {"pooling": pooling}})
        }
        Task::Classify => json!({"classifier": {"id2label": id2label, "label2id": label2id}}),
        Task::Rerank => json!({"reranker": {"id2label": id2label, "label2id": label2id}}),
    }
}

pub async fn info(State(state): State<AppState>) -> Response {
    let cfg = &state.cfg;
    let mut info = json!({
        "model_id": cfg.model.model_id,
        "model_sha": cfg.model.revision,
        "version": env!("CARGO_PKG_VERSION"),
        "max_concurrent_requests": cfg.max_concurrent_requests,
        "max_batch_tokens": state
            .inference
            .get()
            .map(|i| i.token_budget())
            .or(cfg.max_batch_tokens)
            .unwrap_or(crate::config::DEFAULT_MAX_BATCH_TOKENS),
        "max_batch_requests": cfg.max_batch_requests,
        "max_client_batch_size": cfg.max_client_batch_size,
        "auto_truncate": cfg.auto_truncate,
        "tokenization_workers": cfg.tokenization_workers(),
        "state": state.lifecycle.state().as_str(),
        "sha": null,
        "docker_label": null,
    });
    if let (Some(inference), Value::Object(map)) = (state.inference.get(), &mut info) {
        let i = &inference.info;
        map.insert("model_dtype".into(), json!(i.model.dtype));
        map.insert("model_type".into(), model_type(i));
        map.insert("max_input_length".into(), json!(i.max_input_length));
        map.insert("served_model_name".into(), json!(i.served_model_name));
        map.insert("device".into(), json!(i.device));
        map.insert("backend".into(), json!(i.model.backend));
        map.insert("family".into(), json!(i.model.family));
        map.insert("architecture".into(), json!(i.model.architecture));
        map.insert("task".into(), json!(i.model.task));
        map.insert("hidden_size".into(), json!(i.model.hidden_size));
        map.insert("source".into(), json!(i.source));
        map.insert("prompts".into(), json!(i.prompts));
    }
    Json(info).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predict_accepts_texts_pairs_and_batches() {
        let (i, batch) = predict_inputs(&json!("a")).unwrap();
        assert_eq!((i, batch), (vec![Input::Text("a".into())], false));
        let (i, batch) = predict_inputs(&json!(["a", "b"])).unwrap();
        assert_eq!(
            (i, batch),
            (vec![Input::Pair("a".into(), "b".into())], false)
        );
        let (i, batch) = predict_inputs(&json!([["a", "b"], ["c"]])).unwrap();
        assert_eq!(
            (i, batch),
            (
                vec![Input::Pair("a".into(), "b".into()), Input::Text("c".into())],
                true
            )
        );
        assert_eq!(predict_inputs(&json!([])).unwrap_err().status(), 422);
        assert_eq!(predict_inputs(&json!(5)).unwrap_err().status(), 422);
    }
}
