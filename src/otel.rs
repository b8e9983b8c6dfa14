//! OpenTelemetry traces over OTLP (`--otlp-endpoint`), off unless asked for: without the flag
//! there is no exporter, no tracing layer, and the request path creates no spans.
//!
//! Spans: `request` (an HTTP route or a gRPC call, a child of the caller's W3C `traceparent`
//! when it sends one), `tokenize` and `queue_wait` under it, and one `device_batch` child per
//! device batch that carried the request's inputs. A device batch runs once on the worker thread for inputs of
//! many requests; each of those requests gets its own `device_batch` child with the batch's
//! start and end times and its `spotinfer.batch.id`, so every trace shows the batch inline and
//! traces that shared a batch are found by that id.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::OtlpProtocol;

static PROVIDER: OnceLock<(SdkTracerProvider, SdkTracer)> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("cannot set up the OTLP exporter for {endpoint}: {why}")]
    Exporter { endpoint: String, why: String },
    #[error("OpenTelemetry is already set up")]
    AlreadySet,
}

/// Whether spans are exported (the request path checks this before creating any).
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Builds the exporter and provider and returns the tracing layer to install. gRPC needs a
/// Tokio runtime entered: its channel's worker is spawned here.
pub fn init<S>(
    endpoint: &str,
    service_name: &str,
    protocol: OtlpProtocol,
) -> Result<impl tracing_subscriber::Layer<S>, OtelError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
    use tracing_subscriber::Layer as _;

    let err = |why: String| OtelError::Exporter {
        endpoint: endpoint.to_string(),
        why,
    };
    let exporter = match protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build(),
        OtlpProtocol::HttpProtobuf => {
            let url = if endpoint.ends_with("/v1/traces") {
                endpoint.to_string()
            } else {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_headers(Default::default())
                .with_endpoint(url)
                .build()
        }
    }
    .map_err(|e| err(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name.to_string())
                .build(),
        )
        .build();
    let tracer = provider.tracer("spotinfer");
    PROVIDER
        .set((provider, tracer.clone()))
        .map_err(|_| OtelError::AlreadySet)?;
    // Only our own spans: log events stay logs, and dependencies' spans stay out.
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.is_span() && m.target().starts_with("spotinfer")
        })))
}

/// Exports what is buffered and stops the exporter; called once the drain is over. Blocks.
pub fn shutdown() {
    if let Some((provider, _)) = PROVIDER.get() {
        if let Err(e) = provider.shutdown() {
            tracing::warn!(error = %e, "OpenTelemetry shutdown");
        }
    }
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

/// The caller's trace context from W3C `traceparent` / `tracestate` headers (HTTP requests and
/// gRPC metadata alike); an empty context when absent or malformed.
pub fn extract_context(headers: &axum::http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Makes `span` a child of the caller's trace, when the headers carry one.
pub fn set_remote_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    let cx = extract_context(headers);
    if cx.span().span_context().is_valid() {
        // Fails only when the span is disabled: then there is nothing to parent.
        let _ = span.set_parent(cx);
    }
}

/// Sets an attribute on the current span (the request's), when tracing is on.
pub fn set_attribute(key: &'static str, value: impl Into<opentelemetry::Value>) {
    tracing::Span::current().set_attribute(key, value);
}

/// One device batch, as one request saw it.
#[derive(Debug, Clone, Copy)]
pub struct BatchUse {
    pub id: u64,
    /// Inputs and tokens of the whole batch.
    pub size: usize,
    pub tokens: usize,
    /// From the request's submission to the batch's start, and the batch's compute time.
    pub queue_time: Duration,
    pub compute_time: Duration,
    /// This request's inputs in it.
    pub inputs: usize,
}

/// `queue_wait` (submission to the first batch's start) and one `device_batch` per batch, as
/// children of the current span, with the times the worker measured.
pub fn record_batches(model: &str, submitted: SystemTime, inputs: usize, batches: &[BatchUse]) {
    let Some((_, tracer)) = PROVIDER.get() else {
        return;
    };
    let current = tracing::Span::current();
    if current.is_none() {
        return; // job lines: no request to attach to
    }
    let parent = current.context();
    let model = KeyValue::new("spotinfer.model", model.to_string());
    if let Some(first) = batches.iter().map(|b| b.queue_time).min() {
        tracer
            .span_builder("queue_wait")
            .with_start_time(submitted)
            .with_attributes([
                KeyValue::new("spotinfer.inputs", inputs as i64),
                model.clone(),
            ])
            .start_with_context(tracer, &parent)
            .end_with_timestamp(submitted + first);
    }
    for b in batches {
        let start = submitted + b.queue_time;
        tracer
            .span_builder("device_batch")
            .with_start_time(start)
            .with_attributes([
                KeyValue::new("spotinfer.batch.id", b.id as i64),
                KeyValue::new("spotinfer.batch.size", b.size as i64),
                KeyValue::new("spotinfer.batch.tokens", b.tokens as i64),
                KeyValue::new("spotinfer.inputs", b.inputs as i64),
                model.clone(),
            ])
            .start_with_context(tracer, &parent)
            .end_with_timestamp(start + b.compute_time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_from_headers() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let cx = extract_context(&h);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        h.insert("traceparent", "garbage".parse().unwrap());
        assert!(!extract_context(&h).span().span_context().is_valid());
        assert!(!extract_context(&axum::http::HeaderMap::new())
            .span()
            .span_context()
            .is_valid());
    }
}
