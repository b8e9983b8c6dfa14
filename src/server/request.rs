//! Request bodies: content type, size limit and JSON parsing with errors a client can act on,
//! as the extractors every JSON route takes ([`JsonBody`], [`OpenAiJsonBody`]).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use super::errors::{ApiError, ErrorKind, Flavor};

/// Parses a JSON body. Missing content type is accepted (curl users); a non-JSON one is 415;
/// over the payload limit is 413; syntax errors are 400 and type errors 422, as axum's `Json`.
fn parse_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !(mime == "application/json" || mime.ends_with("+json")) {
            return Err(ApiError::new(
                ErrorKind::UnsupportedMediaType,
                format!("Content-Type must be application/json, not `{mime}`"),
            ));
        }
    }
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorKind::TooLarge,
                "the request body is larger than --payload-limit",
            )
        } else if std::error::Error::source(&e)
            .is_some_and(|s| format!("{s:?}").contains("TimeoutError"))
            || e.to_string().contains("timed out")
        {
            ApiError::new(
                ErrorKind::Timeout,
                "the request body stalled longer than --body-read-timeout",
            )
        } else {
            ApiError::new(
                ErrorKind::BadRequest,
                format!("cannot read the request body: {e}"),
            )
        }
    })?;
    if body.is_empty() {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Data => ErrorKind::Validation,
            _ => ErrorKind::BadRequest,
        };
        ApiError::new(kind, format!("invalid JSON body: {e}"))
    })
}

/// A JSON body as a handler argument, checked as [`parse_json`] does. Its rejection is the
/// [`ApiError`] (in TEI's dialect) a client can act on, so a handler returns
/// `Result<_, ApiError>` and never sees a malformed body.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state).await;
        parse_json(&headers, body).map(JsonBody)
    }
}

/// [`JsonBody`] on an OpenAI route: the same checks, rejected in OpenAI's error dialect.
pub struct OpenAiJsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OpenAiJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match JsonBody::from_request(req, state).await {
            Ok(JsonBody(t)) => Ok(OpenAiJsonBody(t)),
            Err(e) => Err(e.flavor(Flavor::OpenAi)),
        }
    }
}
