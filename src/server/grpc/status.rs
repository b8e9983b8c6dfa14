//! The inference API's errors as gRPC statuses, each code meaning what the HTTP status means:
//!
//! | HTTP | gRPC |
//! | --- | --- |
//! | 400 empty / bad body, 413, 415, 422 validation | INVALID_ARGUMENT |
//! | 401 | UNAUTHENTICATED |
//! | 404 | NOT_FOUND |
//! | 408 | DEADLINE_EXCEEDED |
//! | 424 the model serves another task | FAILED_PRECONDITION (as TEI) |
//! | 429 over `--max-concurrent-requests` | RESOURCE_EXHAUSTED + retry info |
//! | 503 loading, draining, queue deadline | UNAVAILABLE + retry info |
//! | 500 | INTERNAL |
//!
//! "Retry info" is a `retry-after: 1` metadata entry (the HTTP header's twin) and a
//! `google.rpc.RetryInfo` in the status details (`grpc-status-details-bin`), which gRPC
//! clients with rich-error support read.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::inference::error::{ApiError, ErrorKind};

/// Seconds a client is asked to wait before retrying (the HTTP `Retry-After` value).
const RETRY_AFTER_SECS: i64 = 1;

pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::BadRequest
        | ErrorKind::Empty
        | ErrorKind::TooLarge
        | ErrorKind::UnsupportedMediaType
        | ErrorKind::Validation => Code::InvalidArgument,
        ErrorKind::Unauthorized => Code::Unauthenticated,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::WrongModel => Code::FailedPrecondition,
        ErrorKind::Overloaded => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Backend => Code::Internal,
    }
}

pub fn status_of(e: &ApiError) -> Status {
    let code = code_of(e.kind);
    let mut status = if e.retry_later() {
        Status::with_details(
            code,
            e.message.clone(),
            retry_details(code, &e.message).into(),
        )
    } else {
        Status::new(code, e.message.clone())
    };
    if e.retry_later() {
        status
            .metadata_mut()
            .insert("retry-after", MetadataValue::from(RETRY_AFTER_SECS));
    }
    status
}

/// `google.rpc.Status` and the two messages it carries here, declared by hand: three small
/// messages do not justify the googleapis protos.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

const RETRY_INFO_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

fn retry_details(code: Code, message: &str) -> Vec<u8> {
    use prost::Message;
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: RETRY_AFTER_SECS,
            nanos: 0,
        }),
    };
    RpcStatus {
        code: code as i32,
        message: message.to_string(),
        details: vec![Any {
            type_url: RETRY_INFO_URL.to_string(),
            value: info.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn codes_mean_what_the_http_statuses_mean() {
        let s = status_of(&ApiError::new(ErrorKind::Empty, "`inputs` cannot be empty"));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.metadata().get("retry-after").is_none());
        assert_eq!(
            status_of(&ApiError::new(ErrorKind::Validation, "x")).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            status_of(&ApiError::new(ErrorKind::WrongModel, "x")).code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            status_of(&ApiError::new(ErrorKind::Backend, "x")).code(),
            Code::Internal
        );
        assert_eq!(
            status_of(&ApiError::new(ErrorKind::Unavailable, "x")).code(),
            Code::Unavailable
        );
    }

    #[test]
    fn overload_carries_retry_info() {
        let s = status_of(&ApiError::new(ErrorKind::Overloaded, "busy"));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get("retry-after").unwrap(), "1");
        let rpc = RpcStatus::decode(s.details()).unwrap();
        assert_eq!(rpc.code, Code::ResourceExhausted as i32);
        assert_eq!(rpc.message, "busy");
        assert_eq!(rpc.details[0].type_url, RETRY_INFO_URL);
        let info = RetryInfo::decode(rpc.details[0].value.as_slice()).unwrap();
        assert_eq!(info.retry_delay.unwrap().seconds, 1);
    }
}
