//! The Prometheus registry: every metric's name, help text and buckets, declared once here.
//!
//! Everything is registered (and every known label combination touched) at start, so the first
//! scrape already shows zeros: KEDA queries on an absent series return nothing and a ScaledObject
//! without a value falls back or errors.
//!
//! One concern, over 500 lines on purpose: the whole metric vocabulary in one place, so a name,
//! its help text and its labels are reviewed together (the dashboards and KEDA read them).

use std::sync::Arc;

use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// 1 ms to 60 s, dense enough below 100 ms to resolve single milliseconds for embeddings.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];
const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// A tenth of a cent to a thousand dollars per job.
const JOB_COST_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0,
];
const BATCH_TOKEN_BUCKETS: &[f64] = &[
    16.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];

/// The routes that carry inference traffic; labels are pre-created for each.
pub const ROUTES: &[&str] = &[
    "/v1/embeddings",
    "/embed",
    "/embed_all",
    "/embed_sparse",
    "/embed_multi_vector",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/predict",
    "/similarity",
    "/vertex",
    "/invocations",
    "/",
    "/tokenize",
    "/decode",
    "/v1/batches",
    "/v1/files",
];
pub const REJECT_REASONS: &[&str] = &["draining", "overloaded", "deadline"];
pub const ERROR_REASONS: &[&str] = &[
    "validation",
    "too_large",
    "timeout",
    "empty",
    "unauthorized",
    "overloaded",
    "unavailable",
    "deadline",
    "backend",
];
pub const LIFECYCLE_STATES: &[&str] = &["starting", "ready", "draining", "stopped", "failed"];
pub const JOB_STATUSES: &[&str] = &[
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "cancelling",
    "cancelled",
];
pub const DEVICE_BATCH_FAILURES: &[&str] = &["out_of_memory", "non_finite", "error"];
pub const JOB_LINE_OUTCOMES: &[&str] = &["succeeded", "failed"];

pub struct Metrics {
    pub registry: Registry,
    pub request_duration: HistogramVec,
    pub requests_total: IntCounterVec,
    pub requests_inflight: IntGauge,
    pub errors_total: IntCounterVec,
    pub rejected_total: IntCounterVec,
    pub queue_time: Histogram,
    pub compute_time: Histogram,
    pub queue_depth: IntGauge,
    pub queue_abandoned: IntCounter,
    pub admitted_inputs: IntGauge,
    pub job_queue_depth: IntGauge,
    pub batch_size: Histogram,
    pub batch_tokens: Histogram,
    pub tokens_total: IntCounter,
    pub embeddings_total: IntCounter,
    pub build_info: IntGaugeVec,
    pub device_busy_ratio: Gauge,
    pub gpu_utilization_ratio: Gauge,
    pub gpu_memory_used_bytes: Gauge,
    pub gpu_memory_total_bytes: Gauge,
    pub cost_dollars_total: Counter,
    pub cost_per_million_embeddings: Gauge,
    pub lifecycle_state: IntGaugeVec,
    pub spot_interruption_pending: IntGauge,
    pub spot_interruption_deadline: Gauge,
    pub drain_duration: Gauge,
    pub jobs: IntGaugeVec,
    pub job_lines_total: IntCounterVec,
    pub job_checkpoints_total: IntCounter,
    pub job_segments_lost_total: IntCounter,
    pub job_store_scans_total: IntCounter,
    pub job_segments_taken_over_total: IntCounter,
    pub job_backlog_lines: IntGauge,
    pub job_device_seconds_total: Counter,
    pub job_cost_dollars_total: Counter,
    pub job_cost: Histogram,
    pub device_batch_failures: IntCounterVec,
    /// TEI's names for the same events, beside ours.
    pub tei: TeiMetrics,
}

/// Registering a metric only fails on a duplicate name or invalid label set: both programming
/// errors caught by the unit test below, so `new` panics rather than returning an error.
fn reg<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    #[allow(clippy::expect_used)]
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

fn hist(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets.to_vec())
}

impl Metrics {
    #[allow(clippy::expect_used)]
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        let e = "metric definitions are valid";
        let m = Metrics {
            request_duration: reg(
                &r,
                HistogramVec::new(
                    hist(
                        "inference_request_duration_seconds",
                        "Time from receiving an inference request to its response, by route and status class.",
                        LATENCY_BUCKETS,
                    ),
                    &["route", "status"],
                )
                .expect(e),
            ),
            requests_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("inference_requests_total", "Inference requests answered, by route and HTTP status code."),
                    &["route", "code"],
                )
                .expect(e),
            ),
            requests_inflight: reg(
                &r,
                IntGauge::new("inference_requests_inflight", "Inference requests being handled right now.").expect(e),
            ),
            errors_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("inference_errors_total", "Requests that ended in an error, by reason."),
                    &["reason"],
                )
                .expect(e),
            ),
            rejected_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "inference_requests_rejected_total",
                        "Requests refused with 429/503 before computing: draining, overloaded (queue full) or deadline (waited longer than --max-queue-time or past the drain timeout).",
                    ),
                    &["reason"],
                )
                .expect(e),
            ),
            queue_time: reg(
                &r,
                Histogram::with_opts(hist(
                    "inference_queue_time_seconds",
                    "Time an input waited in the queue before its batch started on the device.",
                    LATENCY_BUCKETS,
                ))
                .expect(e),
            ),
            compute_time: reg(
                &r,
                Histogram::with_opts(hist(
                    "inference_compute_time_seconds",
                    "Time the device spent on one batch (forward pass and pooling).",
                    LATENCY_BUCKETS,
                ))
                .expect(e),
            ),
            queue_depth: reg(
                &r,
                IntGauge::new("inference_queue_depth", "Online inputs waiting for the device (excludes batch-job lines).").expect(e),
            ),
            queue_abandoned: reg(
                &r,
                IntCounter::new(
                    "inference_queue_abandoned_total",
                    "Queued inputs dropped before the device because their caller had gone (client disconnected or timed out, or another input of its request failed first).",
                )
                .expect(e),
            ),
            admitted_inputs: reg(
                &r,
                IntGauge::new(
                    "inference_admitted_inputs",
                    "Online inputs holding a slot of --max-concurrent-requests: from admission until their result is delivered or the queue drops them.",
                )
                .expect(e),
            ),
            job_queue_depth: reg(
                &r,
                IntGauge::new(
                    "inference_batch_queue_depth",
                    "Batch-job input lines waiting to run (queued plus not yet read from in-progress jobs).",
                )
                .expect(e),
            ),
            batch_size: reg(
                &r,
                Histogram::with_opts(hist("inference_batch_size", "Inputs per device batch.", BATCH_SIZE_BUCKETS)).expect(e),
            ),
            batch_tokens: reg(
                &r,
                Histogram::with_opts(hist(
                    "inference_batch_tokens",
                    "Real (unpadded) tokens per device batch.",
                    BATCH_TOKEN_BUCKETS,
                ))
                .expect(e),
            ),
            tokens_total: reg(
                &r,
                IntCounter::new("inference_tokens_total", "Tokens processed by the device.").expect(e),
            ),
            embeddings_total: reg(
                &r,
                IntCounter::new("inference_embeddings_total", "Inputs embedded (online and batch jobs).").expect(e),
            ),
            build_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "inference_build_info",
                        "Always 1; labels say what is running (dtype and device say `pending` until the model is loaded).",
                    ),
                    &["version", "model", "revision", "dtype", "device"],
                )
                .expect(e),
            ),
            device_busy_ratio: reg(
                &r,
                Gauge::new(
                    "inference_device_busy_ratio",
                    "Fraction of the last 10 seconds the device worker spent computing (works without DCGM).",
                )
                .expect(e),
            ),
            gpu_utilization_ratio: Gauge::new(
                "inference_gpu_utilization_ratio",
                "GPU utilisation reported by NVML (0-1); CUDA only.",
            )
            .expect(e),
            gpu_memory_used_bytes: Gauge::new(
                "inference_gpu_memory_used_bytes",
                "GPU memory used on the device, from NVML; CUDA only.",
            )
            .expect(e),
            gpu_memory_total_bytes: Gauge::new(
                "inference_gpu_memory_total_bytes",
                "GPU memory on the device, from NVML; CUDA only.",
            )
            .expect(e),
            cost_dollars_total: reg(
                &r,
                Counter::new(
                    "inference_cost_dollars_total",
                    "Dollars spent by this pod since start (--cost-per-hour x uptime).",
                )
                .expect(e),
            ),
            cost_per_million_embeddings: reg(
                &r,
                Gauge::new(
                    "inference_cost_per_million_embeddings_dollars",
                    "Dollars per million embeddings over the last 5 minutes (0 when idle or cost is off).",
                )
                .expect(e),
            ),
            lifecycle_state: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("inference_lifecycle_state", "1 for the current lifecycle state, 0 for the others."),
                    &["state"],
                )
                .expect(e),
            ),
            spot_interruption_pending: reg(
                &r,
                IntGauge::new(
                    "inference_spot_interruption_pending",
                    "1 once the cloud announced an interruption of this node (or SIGTERM arrived).",
                )
                .expect(e),
            ),
            spot_interruption_deadline: reg(
                &r,
                Gauge::new(
                    "inference_spot_interruption_deadline_seconds",
                    "Unix time at which the announced interruption happens (0 when none).",
                )
                .expect(e),
            ),
            drain_duration: reg(
                &r,
                Gauge::new(
                    "inference_drain_duration_seconds",
                    "Seconds the drain has taken so far (0 before SIGTERM).",
                )
                .expect(e),
            ),
            jobs: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("inference_batch_jobs", "Batch jobs in the state directory, by status."),
                    &["status"],
                )
                .expect(e),
            ),
            job_lines_total: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("inference_batch_lines_total", "Batch-job lines finished, by outcome."),
                    &["outcome"],
                )
                .expect(e),
            ),
            job_checkpoints_total: reg(
                &r,
                IntCounter::new("inference_batch_checkpoints_total", "Batch-job checkpoints written durably.").expect(e),
            ),
            job_segments_lost_total: reg(
                &r,
                IntCounter::new(
                    "inference_batch_segments_lost_total",
                    "Batch-job segments this replica stopped because its lease ran out while it stalled (another replica may have taken them over); their chunks are committed once either way. Zero on a replica that never stalled.",
                )
                .expect(e),
            ),
            job_segments_taken_over_total: reg(
                &r,
                IntCounter::new(
                    "inference_batch_segments_taken_over_total",
                    "Batch-job segments this replica claimed from another holder whose lease had run out unreleased (it died or stalled past --batch-lease-secs), or from an earlier incarnation of its pod.",
                )
                .expect(e),
            ),
            job_store_scans_total: reg(
                &r,
                IntCounter::new(
                    "inference_batch_store_scans_total",
                    "Passes this replica made over the job store's unfinished jobs (validation, expiry, assembly, the backlog gauge); it grows every --batch-backlog-interval while the store answers.",
                )
                .expect(e),
            ),
            job_backlog_lines: reg(
                &r,
                IntGauge::new(
                    "inference_batch_backlog_lines",
                    "Batch-job lines not yet done over all jobs that can still run in the shared job store: the fleet's backlog, the same on every replica (re-read every --batch-backlog-interval).",
                )
                .expect(e),
            ),
            job_device_seconds_total: reg(
                &r,
                Counter::new(
                    "inference_batch_device_seconds_total",
                    "Device seconds this replica spent on batch-job lines (each device batch shared among its inputs by tokens).",
                )
                .expect(e),
            ),
            job_cost_dollars_total: reg(
                &r,
                Counter::new(
                    "inference_batch_cost_dollars_total",
                    "Dollars of device time this replica spent on batch-job lines (device seconds x --cost-per-hour).",
                )
                .expect(e),
            ),
            job_cost: reg(
                &r,
                Histogram::with_opts(hist(
                    "inference_batch_job_cost_dollars",
                    "Cost of each finished batch job (its lines' device seconds x --cost-per-hour of the replicas that ran them), observed by the replica that finished it.",
                    JOB_COST_BUCKETS,
                ))
                .expect(e),
            ),
            device_batch_failures: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "inference_device_batch_failures_total",
                        "Device batches (or inputs) the model failed on, by reason: out_of_memory (the batch was split and retried), non_finite (a NaN/Inf output, refused), error.",
                    ),
                    &["reason"],
                )
                .expect(e),
            ),
            tei: TeiMetrics::new(&r),
            registry: r,
        };
        for route in ROUTES {
            m.requests_total.with_label_values(&[route, "200"]);
            for class in ["2xx", "4xx", "5xx"] {
                m.request_duration.with_label_values(&[route, class]);
            }
        }
        for reason in REJECT_REASONS {
            m.rejected_total.with_label_values(&[reason]);
        }
        for reason in ERROR_REASONS {
            m.errors_total.with_label_values(&[reason]);
        }
        for state in LIFECYCLE_STATES {
            m.lifecycle_state.with_label_values(&[state]);
        }
        m.lifecycle_state.with_label_values(&["starting"]).set(1);
        for status in JOB_STATUSES {
            m.jobs.with_label_values(&[status]);
        }
        for outcome in JOB_LINE_OUTCOMES {
            m.job_lines_total.with_label_values(&[outcome]);
        }
        for reason in DEVICE_BATCH_FAILURES {
            m.device_batch_failures.with_label_values(&[reason]);
        }
        Arc::new(m)
    }

    /// GPU gauges exist only on CUDA builds with a GPU: registered when NVML is found.
    pub fn register_gpu_gauges(&self) {
        for g in [
            &self.gpu_utilization_ratio,
            &self.gpu_memory_used_bytes,
            &self.gpu_memory_total_bytes,
        ] {
            // Registering twice is the only failure; ignore it so this is idempotent.
            let _ = self.registry.register(Box::new(g.clone()));
        }
    }

    /// Sets the one `inference_build_info` series, replacing any earlier one: serve sets it at
    /// start with what was asked for, then again with what was loaded.
    pub fn set_build_info(&self, model: &str, revision: &str, dtype: &str, device: &str) {
        self.build_info.reset();
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), model, revision, dtype, device])
            .set(1);
    }

    pub fn set_lifecycle_state(&self, state: &str) {
        for s in LIFECYCLE_STATES {
            self.lifecycle_state
                .with_label_values(&[s])
                .set(i64::from(*s == state));
        }
    }

    /// Records one answered inference request.
    pub fn observe_request(&self, route: &str, code: u16, seconds: f64) {
        let class = match code {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.request_duration
            .with_label_values(&[route, class])
            .observe(seconds);
        self.requests_total
            .with_label_values(&[route, &code.to_string()])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(%err, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// TEI's `te_*` series, with TEI's types, labels and buckets, so TEI dashboards and alerts keep
/// working; the `inference_*` series above stay the documented ones. As TEI exposes them
/// (through the `metrics` crate), the counters have no `_total` suffix.
pub struct TeiMetrics {
    /// Requests to the embedding, rerank, predict and similarity routes, `method`: `single`
    /// (one input) or `batch` (several).
    pub request_count: IntCounterVec,
    pub request_success: IntCounterVec,
    /// Failed requests by TEI's `err`: validation, batch_size, empty, model_type, tokenization,
    /// overloaded, unhealthy, inference.
    pub request_failure: IntCounterVec,
    pub request_duration: Histogram,
    pub request_tokenization_duration: Histogram,
    pub request_queue_duration: Histogram,
    pub request_inference_duration: Histogram,
    pub request_input_length: Histogram,
    pub embed_count: IntCounter,
    pub embed_success: IntCounter,
    pub embed_duration: Histogram,
    pub embed_tokenization_duration: Histogram,
    pub embed_queue_duration: Histogram,
    pub embed_inference_duration: Histogram,
    pub predict_count: IntCounter,
    pub predict_success: IntCounter,
    pub predict_duration: Histogram,
    pub predict_tokenization_duration: Histogram,
    pub predict_queue_duration: Histogram,
    pub predict_inference_duration: Histogram,
    pub queue_size: IntGauge,
    pub batch_next_size: Histogram,
    pub batch_next_tokens: Histogram,
}

pub const TEI_METHODS: &[&str] = &["single", "batch"];
pub const TEI_ERRORS: &[&str] = &[
    "validation",
    "batch_size",
    "empty",
    "model_type",
    "tokenization",
    "overloaded",
    "unhealthy",
    "inference",
];

/// The timings of one input (or request), for [`TeiMetrics::observe_inputs`].
#[derive(Debug, Clone, Copy)]
pub struct InputTimes {
    pub total: f64,
    pub tokenization: f64,
    pub queue: f64,
    pub inference: f64,
}

impl TeiMetrics {
    #[allow(clippy::expect_used)]
    fn new(r: &Registry) -> Self {
        let e = "metric definitions are valid";
        // TEI's duration buckets: 1.5e-5 s growing by 1.5x, 35 of them.
        let durations: Vec<f64> = (1..=35).map(|k| 0.00001 * 1.5f64.powi(k)).collect();
        let powers = |n: i32| (0..n).map(|x| 2f64.powi(x)).collect::<Vec<f64>>();
        let h = |name: &str, help: &str, buckets: &[f64]| {
            reg(r, Histogram::with_opts(hist(name, help, buckets)).expect(e))
        };
        let c = |name: &str, help: &str| reg(r, IntCounter::new(name, help).expect(e));
        let cv = |name: &str, help: &str, label: &str| {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect(e),
            )
        };
        let d = &durations;
        let m = TeiMetrics {
            request_count: cv(
                "te_request_count",
                "TEI: inference requests received, by method (single, batch).",
                "method",
            ),
            request_success: cv(
                "te_request_success",
                "TEI: inference requests answered successfully, by method.",
                "method",
            ),
            request_failure: cv(
                "te_request_failure",
                "TEI: inference requests that failed, by error.",
                "err",
            ),
            request_duration: h(
                "te_request_duration",
                "TEI: seconds from request to response.",
                d,
            ),
            request_tokenization_duration: h(
                "te_request_tokenization_duration",
                "TEI: seconds spent tokenizing a request.",
                d,
            ),
            request_queue_duration: h(
                "te_request_queue_duration",
                "TEI: seconds a request's inputs waited in the queue (mean).",
                d,
            ),
            request_inference_duration: h(
                "te_request_inference_duration",
                "TEI: seconds of device time of a request's batches (mean).",
                d,
            ),
            request_input_length: h(
                "te_request_input_length",
                "TEI: tokens per input.",
                &powers(20),
            ),
            embed_count: c("te_embed_count", "TEI: inputs submitted for embedding."),
            embed_success: c("te_embed_success", "TEI: inputs embedded."),
            embed_duration: h("te_embed_duration", "TEI: seconds to embed an input.", d),
            embed_tokenization_duration: h(
                "te_embed_tokenization_duration",
                "TEI: seconds tokenizing an input to embed.",
                d,
            ),
            embed_queue_duration: h(
                "te_embed_queue_duration",
                "TEI: seconds an input to embed waited in the queue.",
                d,
            ),
            embed_inference_duration: h(
                "te_embed_inference_duration",
                "TEI: seconds of the batch that embedded an input.",
                d,
            ),
            predict_count: c(
                "te_predict_count",
                "TEI: inputs submitted for classification or reranking.",
            ),
            predict_success: c("te_predict_success", "TEI: inputs classified or reranked."),
            predict_duration: h("te_predict_duration", "TEI: seconds to score an input.", d),
            predict_tokenization_duration: h(
                "te_predict_tokenization_duration",
                "TEI: seconds tokenizing an input to score.",
                d,
            ),
            predict_queue_duration: h(
                "te_predict_queue_duration",
                "TEI: seconds an input to score waited in the queue.",
                d,
            ),
            predict_inference_duration: h(
                "te_predict_inference_duration",
                "TEI: seconds of the batch that scored an input.",
                d,
            ),
            queue_size: reg(
                r,
                IntGauge::new(
                    "te_queue_size",
                    "TEI: online inputs waiting for the device.",
                )
                .expect(e),
            ),
            batch_next_size: h(
                "te_batch_next_size",
                "TEI: inputs per device batch.",
                &powers(13),
            ),
            batch_next_tokens: h(
                "te_batch_next_tokens",
                "TEI: tokens per device batch.",
                &powers(21),
            ),
        };
        for method in TEI_METHODS {
            m.request_count.with_label_values(&[method]);
            m.request_success.with_label_values(&[method]);
        }
        for err in TEI_ERRORS {
            m.request_failure.with_label_values(&[err]);
        }
        m
    }

    /// One answered request of a TEI-counted route: `inputs` is None when it failed before its
    /// inputs were known.
    pub fn observe_request(
        &self,
        inputs: Option<usize>,
        times: Option<InputTimes>,
        err: Option<&str>,
    ) {
        let method = if inputs.unwrap_or(1) > 1 {
            "batch"
        } else {
            "single"
        };
        self.request_count.with_label_values(&[method]).inc();
        if let Some(err) = err {
            self.request_failure.with_label_values(&[err]).inc();
            return;
        }
        self.request_success.with_label_values(&[method]).inc();
        if let Some(t) = times {
            self.request_duration.observe(t.total);
            self.request_tokenization_duration.observe(t.tokenization);
            self.request_queue_duration.observe(t.queue);
            self.request_inference_duration.observe(t.inference);
        }
    }

    /// Inputs submitted to the model (`predict`: classifier or reranker scores, else embed).
    pub fn inputs_submitted(&self, predict: bool, lengths: impl Iterator<Item = usize>) {
        let mut n = 0;
        for len in lengths {
            self.request_input_length.observe(len as f64);
            n += 1;
        }
        if predict {
            self.predict_count.inc_by(n);
        } else {
            self.embed_count.inc_by(n);
        }
    }

    /// One input computed successfully.
    pub fn input_done(&self, predict: bool, t: InputTimes) {
        let (ok, total, tok, queue, inf) = if predict {
            (
                &self.predict_success,
                &self.predict_duration,
                &self.predict_tokenization_duration,
                &self.predict_queue_duration,
                &self.predict_inference_duration,
            )
        } else {
            (
                &self.embed_success,
                &self.embed_duration,
                &self.embed_tokenization_duration,
                &self.embed_queue_duration,
                &self.embed_inference_duration,
            )
        };
        ok.inc();
        total.observe(t.total);
        tok.observe(t.tokenization);
        queue.observe(t.queue);
        inf.observe(t.inference);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_present_from_the_first_scrape() {
        let m = Metrics::new();
        let text = m.render();
        for name in [
            "inference_request_duration_seconds_count",
            "inference_requests_total",
            "inference_queue_depth",
            "inference_queue_abandoned_total",
            "inference_admitted_inputs",
            "inference_batch_queue_depth",
            "inference_batch_size_count",
            "inference_batch_tokens_count",
            "inference_queue_time_seconds_count",
            "inference_compute_time_seconds_count",
            "inference_requests_inflight",
            "inference_tokens_total",
            "inference_errors_total",
            "inference_device_busy_ratio",
            "inference_cost_dollars_total",
            "inference_cost_per_million_embeddings_dollars",
            "inference_lifecycle_state{state=\"starting\"} 1",
            "inference_spot_interruption_pending",
            "inference_requests_rejected_total{reason=\"draining\"}",
            "inference_batch_jobs{status=\"in_progress\"}",
            "inference_batch_lines_total{outcome=\"failed\"}",
            "inference_batch_checkpoints_total",
            "inference_batch_segments_lost_total",
            "inference_batch_segments_taken_over_total",
            "inference_batch_backlog_lines",
            "inference_batch_device_seconds_total",
            "inference_batch_cost_dollars_total",
            "inference_batch_job_cost_dollars_count",
            "inference_device_batch_failures_total{reason=\"out_of_memory\"}",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        // GPU gauges appear only once NVML is found.
        assert!(!text.contains("inference_gpu_memory_used_bytes"));
        m.register_gpu_gauges();
        m.register_gpu_gauges();
        assert!(m.render().contains("inference_gpu_memory_used_bytes"));
    }

    #[test]
    fn build_info_has_one_series() {
        let m = Metrics::new();
        m.set_build_info("m", "main", "pending", "pending");
        m.set_build_info("m", "main", "float16", "cuda:0");
        let text = m.render();
        assert_eq!(text.matches("inference_build_info{").count(), 1, "{text}");
        assert!(text.contains("dtype=\"float16\""));
    }

    #[test]
    fn lifecycle_gauge_is_one_hot() {
        let m = Metrics::new();
        m.set_lifecycle_state("draining");
        let text = m.render();
        assert!(text.contains("inference_lifecycle_state{state=\"draining\"} 1"));
        assert!(text.contains("inference_lifecycle_state{state=\"starting\"} 0"));
    }

    #[test]
    fn request_observation_counts_by_code_and_class() {
        let m = Metrics::new();
        m.observe_request("/embed", 422, 0.004);
        let text = m.render();
        assert!(text.contains("inference_requests_total{code=\"422\",route=\"/embed\"} 1"));
        assert!(text.contains(
            "inference_request_duration_seconds_count{route=\"/embed\",status=\"4xx\"} 1"
        ));
    }
}
