//! HTTP responses for the inference API's errors: status, dialect body, `Retry-After`,
//! `WWW-Authenticate`, and the reason the metrics middleware counts.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::protocol::errors::ErrorBodies;

pub use crate::inference::error::{ApiError, ErrorKind, Flavor};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match self.flavor {
            Flavor::Tei => self.tei_body(),
            Flavor::OpenAi => self.openai_body(),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        let headers = resp.headers_mut();
        if self.retry_later() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.kind == ErrorKind::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp.extensions_mut().insert(ErrorReason(self.reason));
        resp
    }
}

/// Carried on error responses so the metrics middleware can count by reason.
#[derive(Debug, Clone, Copy)]
pub struct ErrorReason(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_say_when() {
        let r = ApiError::new(ErrorKind::Unavailable, "x").into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert!(r.extensions().get::<ErrorReason>().is_some());
    }
}
