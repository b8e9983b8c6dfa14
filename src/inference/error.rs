//! One error type for every caller of the inference API: what went wrong (`ErrorKind`), the
//! message, and which dialect the caller speaks. Rendering it is the caller's: the bodies are
//! in `protocol::errors`, the HTTP response in `server::errors`; the status is named here by
//! its number only, for the server, gRPC and job output lines.

use crate::batching::InferError;
use crate::tokenize::TokenizeError;

/// Which JSON shape the route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Tei,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the body is not what the route takes (malformed JSON, wrong types).
    BadRequest,
    /// 400: no inputs, or an empty one.
    Empty,
    /// 401
    Unauthorized,
    /// 404
    NotFound,
    /// 408: the request body stalled past --body-read-timeout.
    Timeout,
    /// 413
    TooLarge,
    /// 415
    UnsupportedMediaType,
    /// 422: well-formed but not acceptable (too long, too many, bad token id, bad dimensions).
    Validation,
    /// 429 + Retry-After
    Overloaded,
    /// 503 + Retry-After: loading, draining, queue deadline.
    Unavailable,
    /// 500: the model failed.
    Backend,
    /// 424: the route needs another kind of model (TEI: `/rerank` on an embedding model).
    WrongModel,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<&'static str>,
    pub flavor: Flavor,
    /// Reason label for `inference_errors_total`.
    pub reason: &'static str,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let reason = match kind {
            ErrorKind::BadRequest
            | ErrorKind::Validation
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::NotFound => "validation",
            ErrorKind::Empty => "empty",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Backend | ErrorKind::WrongModel => "backend",
        };
        Self {
            kind,
            message: message.into(),
            param: None,
            flavor: Flavor::Tei,
            reason,
        }
    }

    pub fn param(mut self, p: &'static str) -> Self {
        self.param = Some(p);
        self
    }

    pub fn flavor(mut self, f: Flavor) -> Self {
        self.flavor = f;
        self
    }

    pub fn reason(mut self, r: &'static str) -> Self {
        self.reason = r;
        self
    }

    /// The HTTP status number of this error (also a job output line's `status_code`).
    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::BadRequest | ErrorKind::Empty => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::TooLarge => 413,
            ErrorKind::Timeout => 408,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Validation => 422,
            ErrorKind::Overloaded => 429,
            ErrorKind::Unavailable => 503,
            ErrorKind::Backend => 500,
            ErrorKind::WrongModel => 424,
        }
    }

    /// Whether the client should retry after a moment (429 / 503 get `Retry-After`).
    pub fn retry_later(&self) -> bool {
        matches!(self.kind, ErrorKind::Overloaded | ErrorKind::Unavailable)
    }
}

impl From<TokenizeError> for ApiError {
    fn from(e: TokenizeError) -> Self {
        let kind = match e {
            TokenizeError::Empty { .. } => ErrorKind::Empty,
            TokenizeError::Stopped => ErrorKind::Unavailable,
            _ => ErrorKind::Validation,
        };
        ApiError::new(kind, e.to_string()).param("input")
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::QueueTimeout(_) => {
                ApiError::new(ErrorKind::Unavailable, e.to_string()).reason("deadline")
            }
            InferError::DrainDeadline => {
                ApiError::new(ErrorKind::Unavailable, e.to_string()).reason("deadline")
            }
            InferError::WorkerStopped => ApiError::new(ErrorKind::Unavailable, e.to_string()),
            InferError::Backend(_) | InferError::NonFinite => {
                ApiError::new(ErrorKind::Backend, e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_tei_and_openai() {
        assert_eq!(ApiError::new(ErrorKind::Validation, "x").status(), 422);
        assert_eq!(ApiError::new(ErrorKind::Empty, "x").status(), 400);
        assert_eq!(ApiError::new(ErrorKind::Overloaded, "x").status(), 429);
        assert_eq!(ApiError::new(ErrorKind::TooLarge, "x").status(), 413);
        assert!(ApiError::new(ErrorKind::Unavailable, "x").retry_later());
        assert_eq!(ApiError::new(ErrorKind::WrongModel, "x").status(), 424);
    }
}
