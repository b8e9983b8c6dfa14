//! The inference API's errors in each dialect's JSON: TEI's `{"error","error_type"}` and
//! OpenAI's `{"error":{"message","type","param","code"}}` (HTTP routes and job output lines).

use serde_json::{json, Value};

use crate::inference::error::{ApiError, ErrorKind};

/// An error's body in each dialect.
pub trait ErrorBodies {
    /// TEI's body, `{"error","error_type"}`.
    fn tei_body(&self) -> Value;
    /// OpenAI's body, `{"error":{"message","type","param","code"}}`.
    fn openai_body(&self) -> Value;
}

impl ErrorBodies for ApiError {
    fn tei_body(&self) -> Value {
        json!({"error": self.message, "error_type": tei_type(self.kind)})
    }

    fn openai_body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": openai_type(self.kind),
            "param": self.param,
            "code": openai_code(self.kind),
        }})
    }
}

fn tei_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Empty => "Empty",
        ErrorKind::Overloaded => "Overloaded",
        ErrorKind::Unavailable => "Unhealthy",
        ErrorKind::Backend | ErrorKind::WrongModel => "Backend",
        ErrorKind::Unauthorized => "Unauthorized",
        ErrorKind::TooLarge => "PayloadTooLarge",
        _ => "Validation",
    }
}

fn openai_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unauthorized => "authentication_error",
        ErrorKind::Overloaded => "rate_limit_error",
        ErrorKind::Unavailable | ErrorKind::Backend => "server_error",
        ErrorKind::NotFound => "not_found_error",
        _ => "invalid_request_error",
    }
}

fn openai_code(kind: ErrorKind) -> Option<&'static str> {
    match kind {
        ErrorKind::Unauthorized => Some("invalid_api_key"),
        ErrorKind::Overloaded => Some("rate_limit_exceeded"),
        ErrorKind::TooLarge => Some("payload_too_large"),
        ErrorKind::Empty => Some("empty_input"),
        ErrorKind::Unavailable => Some("service_unavailable"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_match_tei_and_openai() {
        assert_eq!(
            ApiError::new(ErrorKind::Empty, "x").tei_body(),
            json!({"error": "x", "error_type": "Empty"})
        );
        assert_eq!(
            ApiError::new(ErrorKind::Overloaded, "busy")
                .param("input")
                .openai_body(),
            json!({"error": {"message": "busy", "type": "rate_limit_error",
                             "param": "input", "code": "rate_limit_exceeded"}})
        );
    }
}
