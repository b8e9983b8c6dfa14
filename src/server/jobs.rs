//! OpenAI Files and Batches routes over the job store, in OpenAI's shapes so the official SDKs
//! work unchanged. Uploads stream into the store and downloads stream out of it: no file is
//! ever held whole in memory.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::errors::{ApiError, ErrorKind, Flavor};
use super::request::OpenAiJsonBody;
use super::AppState;
use crate::jobs::{JobError, JobStore, StoreError};

fn store(state: &AppState) -> Result<JobStore, ApiError> {
    state.job_store.clone().ok_or_else(|| {
        ApiError::new(
            ErrorKind::Unavailable,
            "the batch API is unavailable: --state-dir could not be opened (see the server's log)",
        )
    })
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::new(ErrorKind::NotFound, e.to_string()),
            _ => {
                tracing::error!(error = %e, "job store");
                ApiError::new(ErrorKind::Backend, format!("job store: {e}"))
            }
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Store(s) => s.into(),
            JobError::Invalid(m) => ApiError::new(ErrorKind::BadRequest, m),
        }
    }
}

fn respond<T: IntoResponse>(r: Result<T, ApiError>) -> Response {
    match r {
        Ok(v) => v.into_response(),
        Err(e) => e.flavor(Flavor::OpenAi).into_response(),
    }
}

fn cannot_store(e: std::io::Error) -> ApiError {
    ApiError::new(ErrorKind::Backend, format!("cannot store the upload: {e}"))
}

/// `POST /v1/files`: multipart with `purpose` and `file`, streamed into the store.
pub async fn upload(
    State(state): State<AppState>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let store = match store(&state) {
        Ok(s) => s,
        Err(e) => return respond::<Json<Value>>(Err(e)),
    };
    respond(receive(store, multipart).await.map(Json))
}

async fn receive(
    store: JobStore,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<crate::jobs::FileObject, ApiError> {
    let (id, key) = store.new_upload();
    let mut stored = false;
    let result = read_fields(&store, &key, &mut stored, multipart).await;
    let (filename, purpose) = match result {
        Ok(fields) => fields,
        Err(e) => {
            // Nothing is left behind by an upload that was refused half-way.
            if stored {
                let _ = store.blobs().delete(&key).await;
            }
            return Err(e);
        }
    };
    match store.record_file(&id, &key, &filename, &purpose).await {
        Ok(f) => Ok(f),
        Err(e) => {
            let _ = store.blobs().delete(&key).await;
            Err(e.into())
        }
    }
}

/// Streams the `file` field to `key` (setting `stored` once it is there) and returns the file
/// name and the purpose.
async fn read_fields(
    store: &JobStore,
    key: &str,
    stored: &mut bool,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(String, String), ApiError> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(
            ErrorKind::BadRequest,
            format!("expected multipart/form-data: {e}"),
        )
    })?;
    let mut purpose = None;
    let mut uploaded = None;
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(ErrorKind::BadRequest, format!("reading the upload: {e}"))
    };
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(bad)?),
            Some("file") if uploaded.is_none() => {
                let filename = field.file_name().unwrap_or("upload.jsonl").to_string();
                // Multipart on a bucket: the object is visible only once complete.
                let mut w = store.blobs().writer(key);
                let streamed = async {
                    while let Some(chunk) = field.chunk().await.map_err(bad)? {
                        w.write_all(&chunk).await.map_err(cannot_store)?;
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = streamed {
                    let _ = w.abort().await;
                    return Err(e);
                }
                // A failed completion (a full disk) removes what it staged; the writer cannot
                // be aborted once its shutdown began (it panics).
                w.shutdown().await.map_err(cannot_store)?;
                *stored = true;
                uploaded = Some(filename);
            }
            _ => {}
        }
    }
    let filename = uploaded.ok_or_else(|| {
        ApiError::new(ErrorKind::BadRequest, "the `file` field is required").param("file")
    })?;
    let purpose = purpose.ok_or_else(|| {
        ApiError::new(ErrorKind::BadRequest, "the `purpose` field is required").param("purpose")
    })?;
    if purpose != "batch" {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!(
                "purpose must be `batch` (this server runs embedding batches), got `{purpose}`"
            ),
        )
        .param("purpose"));
    }
    Ok((filename, purpose))
}

pub async fn list_files(State(state): State<AppState>) -> Response {
    respond(
        async {
            let store = store(&state)?;
            let files = store.list_files().await?;
            Ok(Json(
                json!({"object": "list", "data": files, "has_more": false}),
            ))
        }
        .await,
    )
}

pub async fn get_file(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    respond(
        async {
            let store = store(&state)?;
            Ok(Json(store.file(&id).await?))
        }
        .await,
    )
}

pub async fn file_content(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    respond(
        async {
            let store = store(&state)?;
            let key = store.file_key(&id).await?;
            let stream = store
                .blobs()
                .stream(&key)
                .await
                .map_err(|e| ApiError::new(ErrorKind::NotFound, format!("file {id}: {e}")))?
                .map_err(std::io::Error::other);
            Ok((
                [(header::CONTENT_TYPE, "application/jsonl")],
                Body::from_stream(stream),
            ))
        }
        .await,
    )
}

pub async fn delete_file(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    respond(
        async {
            let store = store(&state)?;
            let deleted = id.clone();
            store.delete_file(&deleted).await?;
            Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
        }
        .await,
    )
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

pub async fn create_batch(
    State(state): State<AppState>,
    OpenAiJsonBody(req): OpenAiJsonBody<CreateBatch>,
) -> Response {
    respond(
        async {
            let store = store(&state)?;
            let batch = store
                .create_batch(
                    &req.input_file_id,
                    &req.endpoint,
                    &req.completion_window,
                    req.metadata,
                    state.cfg.batch_segment_lines,
                    state.cfg.batch_chunk_lines as u64,
                )
                .await?;
            if let Some(runner) = state.job_runner.get() {
                runner.notify();
            }
            tracing::info!(batch = %batch.id, input = %batch.input_file_id, "batch created");
            Ok(Json(batch))
        }
        .await,
    )
}

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

pub async fn list_batches(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    respond(
        async {
            let store = store(&state)?;
            let all = store.list_batches().await?;
            let start = match &q.after {
                Some(after) => all
                    .iter()
                    .position(|b| &b.id == after)
                    .map_or(all.len(), |i| i + 1),
                None => 0,
            };
            let limit = q.limit.unwrap_or(20).clamp(1, 100);
            let page: Vec<_> = all.iter().skip(start).take(limit).cloned().collect();
            let has_more = start + page.len() < all.len();
            Ok(Json(json!({
                "object": "list",
                "data": page,
                "first_id": page.first().map(|b| b.id.clone()),
                "last_id": page.last().map(|b| b.id.clone()),
                "has_more": has_more,
            })))
        }
        .await,
    )
}

pub async fn get_batch(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    respond(
        async {
            let store = store(&state)?;
            Ok(Json(store.batch(&id).await?))
        }
        .await,
    )
}

pub async fn cancel_batch(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    respond(
        async {
            let store = store(&state)?;
            let b = store.cancel(&id).await?;
            if let Some(runner) = state.job_runner.get() {
                runner.notify();
            }
            Ok(Json(b))
        }
        .await,
    )
}
