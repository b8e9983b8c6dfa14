//! Every command-line flag, its environment variable and its default, in one place.
//!
//! Flag names and defaults follow TEI's `text-embeddings-router` wherever TEI has the flag, so a
//! TEI Deployment's args carry over. The one deliberate difference: the bind address is read from
//! `SPOTINFER_HOSTNAME`, not `HOSTNAME`, because Kubernetes sets `HOSTNAME` to the pod name and
//! TEI then silently binds to whatever that resolves to.
//!
//! One file on purpose (~600 lines): every flag's doc is its `--help` text, and users read the
//! flags of a subcommand together; split, the shared `ModelArgs` would be read in three places.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// `--max-batch-tokens` when not given (TEI's default).
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 16384;

#[derive(Debug, Parser)]
#[command(
    name = "spotinfer",
    version,
    about = "Embedding inference server for Kubernetes GPU node pools that survives spot preemption",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model over HTTP (OpenAI- and TEI-compatible routes, Prometheus metrics).
    Serve(Box<ServeArgs>),
    /// Download a model's files into the Hub cache (for an init container or an image layer).
    Download(ModelArgs),
    /// Embed OpenAI batch lines from a JSONL file without a server, resumable after SIGTERM or
    /// SIGKILL by running the same command again.
    Batch(Box<BatchArgs>),
    /// Load-test a running server with the deterministic corpus and report throughput and
    /// latency per concurrency level.
    Bench(Box<BenchArgs>),
    /// Size a Kubernetes deployment from the model: memory, GPU memory, time-slicing fit,
    /// ephemeral storage and KEDA thresholds (reads config.json and safetensors headers only).
    Plan(Box<PlanArgs>),
    /// On a GPU: check the fused CUDA kernels against their CPU references, then whole models
    /// on the fused backend against the reference backend (float16 and bfloat16, mixed
    /// lengths). Exits non-zero on any failure, or when the binary has no CUDA support.
    Selftest(Box<SelftestArgs>),
}

#[derive(Debug, Clone, Args)]
pub struct SelftestArgs {
    /// The GPU to test.
    #[arg(long, default_value = "cuda:0")]
    pub device: DeviceArg,

    /// Only the kernels' start-up subset (what the fused backend checks at every load).
    #[arg(long, default_value_t = false)]
    pub quick: bool,

    /// Only kernel cases whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,

    /// Skip the whole-model check.
    #[arg(long, default_value_t = false)]
    pub no_models: bool,

    /// Also check these models (Hub ids or local folders, e.g. all-MiniLM-L6-v2), beside the
    /// synthetic ones made from the test fixtures. Repeatable.
    #[arg(long = "model-id")]
    pub model_ids: Vec<String>,

    /// Folder of the test fixtures (`tiny-*`) the synthetic models are made from; missing
    /// fixtures are skipped.
    #[arg(long, default_value = "tests/fixtures")]
    pub fixtures: PathBuf,

    /// Hub cache folder (for `--model-id`).
    #[arg(long, env = "HUGGINGFACE_HUB_CACHE")]
    pub huggingface_hub_cache: Option<PathBuf>,

    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Where the model comes from and how it runs: shared by every subcommand that loads one.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Hugging Face Hub repository id, or a path to a local folder holding config.json,
    /// tokenizer.json and model.safetensors.
    #[arg(long, env = "MODEL_ID", default_value = DEFAULT_MODEL_ID)]
    pub model_id: String,

    /// Hub revision (branch, tag or commit hash) to pin. Ignored for a local folder.
    #[arg(long, env = "REVISION", default_value = "main")]
    pub revision: String,

    /// Hub cache folder. Defaults to $HF_HOME/hub or ~/.cache/huggingface/hub.
    #[arg(long, env = "HUGGINGFACE_HUB_CACHE")]
    pub huggingface_hub_cache: Option<PathBuf>,

    /// Weight and activation dtype. Default: float16 on CUDA, float32 on CPU. On a CPU with
    /// AVX512-FP16 (Intel Sapphire Rapids and later) `float16` runs the native backend's dense
    /// layers in FP16 at up to twice the F32 rate (attention, norms and sums stay F32; vectors
    /// within a cosine of about 0.9996 of float32); on other CPUs it falls back to the slow
    /// reference backend, so keep float32 there.
    #[arg(long, env = "DTYPE", value_enum)]
    pub dtype: Option<DTypeArg>,

    /// Device: `auto` (first CUDA device when built with `cuda` and one exists, else CPU),
    /// `cpu`, or `cuda:N`.
    #[arg(long, env = "DEVICE", default_value = "auto")]
    pub device: DeviceArg,

    /// Pooling method. Default: the model's 1_Pooling/config.json, else mean (last-token for
    /// decoder families). `splade` turns a masked-LM checkpoint (`*ForMaskedLM`) into a
    /// sparse embedder served on `/embed_sparse`.
    #[arg(long, env = "POOLING", value_enum)]
    pub pooling: Option<PoolingArg>,

    /// What to serve the checkpoint as, where it can do several things: `auto` (from
    /// config.json's `architectures`: `*ForSequenceClassification` with one label is a reranker
    /// on `/rerank`, with several a classifier on `/predict`; everything else embeds), `embed`,
    /// `classify`, `rerank` (also turns a `Qwen3ForCausalLM` into a Qwen3-Reranker: yes/no
    /// scores at the last token of its prompt), `sparse` (with `--pooling splade`).
    #[arg(long, env = "TASK", value_enum, default_value = "auto")]
    pub task: TaskArg,

    /// Prompt name from config_sentence_transformers.json's `prompts` applied to every text
    /// that names none (overrides the model's `default_prompt_name`).
    #[arg(long, env = "DEFAULT_PROMPT_NAME", conflicts_with = "default_prompt")]
    pub default_prompt_name: Option<String>,

    /// A literal prompt prepended to every text that names none (e.g. "query: ").
    #[arg(long, env = "DEFAULT_PROMPT")]
    pub default_prompt: Option<String>,

    /// JSON file of per-dimension ranges for `int8` / `uint8` embeddings: `[[min, …], [max,
    /// …]]` (sentence-transformers' `quantize_embeddings` `ranges`) or `{"min", "max"}`.
    /// Default: each vector's own symmetric range, ±max |x|.
    #[arg(long, env = "QUANTIZATION_RANGES")]
    pub quantization_ranges: Option<PathBuf>,

    /// CPU implementation: `native` (spotinfer's own fused kernels, the fast path: float32,
    /// and float16 where the CPU has AVX512-FP16) or `candle` (the reference; also used for
    /// bfloat16, and for float16 on CPUs without AVX512-FP16).
    #[arg(long, env = "CPU_BACKEND", value_enum, default_value = "native")]
    pub cpu_backend: CpuBackendArg,

    /// Implementation of the layers on a CUDA GPU: `reference` (candle's CUDA ops) or `fused`
    /// (spotinfer's own kernels and cuBLASLt: packed tokens, varlen attention, fused
    /// epilogues, no allocation per batch; its kernels are checked against CPU references at
    /// start-up). `fused` falls back to `reference`, logging why, on a GPU older than sm_80, at
    /// float32, for a head dim without a verified kernel or a model it cannot run. Needs a
    /// binary built with the `cuda` feature.
    #[arg(long, env = "GPU_BACKEND", value_enum, default_value = "reference")]
    pub gpu_backend: GpuBackendArg,

    /// erf-GELU ("gelu") layers on the fused backend: `exact` (bias epilogue, then an erf
    /// kernel) or `tanh` (cuBLASLt's GELU epilogue, the tanh approximation TEI uses: one pass
    /// less, slightly different vectors).
    #[arg(long, env = "FUSED_GELU", value_enum, default_value = "exact")]
    pub fused_gelu: FusedGeluArg,

    /// Highest CPU instruction set the native backend may use: `auto` (the best this CPU has:
    /// AMX tiles, else AVX-512, else AVX2+FMA), `amx`, `avx512`, `avx2` or `generic` (the gemm
    /// crate). A cap, never a promise: a level the CPU lacks falls back to the best below it.
    /// For A/B measurements, and for hosts where AMX is slower than expected.
    #[arg(long, env = "CPU_KERNEL", value_enum, default_value = "auto")]
    pub cpu_kernel: CpuKernelArg,

    /// Print logs as JSON lines (for log collectors) instead of human-readable text.
    #[arg(long, env = "JSON_OUTPUT", default_value_t = false)]
    pub json_output: bool,
}

/// How spans travel to the OpenTelemetry collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318).
    HttpProtobuf,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Address to bind. Read from SPOTINFER_HOSTNAME, not HOSTNAME: Kubernetes sets HOSTNAME to
    /// the pod name.
    #[arg(long, env = "SPOTINFER_HOSTNAME", default_value = "0.0.0.0")]
    pub hostname: String,

    /// HTTP port for the API, probes and /metrics. 0 picks a free port (logged at start).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Port of the separate Prometheus listener (metrics also stay on /metrics of the main
    /// port). 0 picks a free port.
    #[arg(long, env = "PROMETHEUS_PORT", default_value_t = 9000)]
    pub prometheus_port: u16,

    /// Inputs (not requests) admitted at once; beyond it requests get 429 with Retry-After.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,

    /// Token budget of one device batch: padded tokens (inputs x longest input) on CUDA and the
    /// candle CPU backend, real tokens on the native CPU backend (it computes no padding).
    /// Default: 16384, raised to the model's longest input when that is longer (a 32k-context
    /// decoder) and lowered on a GPU to what its free memory holds (both logged at start).
    /// Given explicitly, it must cover the longest input.
    #[arg(long, env = "MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,

    /// Most inputs in one device batch. Default: no limit other than the token budget.
    #[arg(long, env = "MAX_BATCH_REQUESTS")]
    pub max_batch_requests: Option<usize>,

    /// Most inputs one client request may carry (413-free 422 beyond it, like TEI).
    #[arg(long, env = "MAX_CLIENT_BATCH_SIZE", default_value_t = 32)]
    pub max_client_batch_size: usize,

    /// Truncate inputs longer than the model's maximum instead of rejecting them with 422.
    #[arg(long, env = "AUTO_TRUNCATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_truncate: bool,

    /// Model name reported in responses and /info. Default: the model id.
    #[arg(long, env = "SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,

    /// Tokenizer threads. Default: a quarter of the CPU cores, at least 1.
    #[arg(long, env = "TOKENIZATION_WORKERS")]
    pub tokenization_workers: Option<usize>,

    /// Largest request body in bytes; larger bodies get 413.
    #[arg(long, env = "PAYLOAD_LIMIT", default_value_t = 2_000_000)]
    pub payload_limit: usize,

    /// Seconds a client has to send a whole request head, from its first byte (or from
    /// connecting); slower connections are closed (slow-loris and half-open sockets).
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub header_read_timeout: Duration,

    /// Seconds an idle keep-alive connection stays open between requests. Keep it above your
    /// load balancer's idle timeout (60 s on AWS ALB) so the balancer closes first.
    #[arg(long, env = "KEEP_ALIVE_TIMEOUT", default_value = "75", value_parser = parse_seconds)]
    pub keep_alive_timeout: Duration,

    /// Seconds a request body may stall between two chunks before the request fails with 408.
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub body_read_timeout: Duration,

    /// Most client connections open at once; beyond it new ones wait in the kernel's backlog.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// When set, inference routes need `Authorization: Bearer <key>`; probes and metrics don't.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Seconds after SIGTERM during which requests are still served normally (endpoint
    /// removal races with SIGTERM in Kubernetes).
    #[arg(long, env = "DRAIN_DELAY", default_value = "5", value_parser = parse_seconds)]
    pub drain_delay: Duration,

    /// Seconds after SIGTERM by which all work ends; whatever is still queued then gets 503
    /// with Retry-After. Keep preStop + this + margin below terminationGracePeriodSeconds.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "25", value_parser = parse_seconds)]
    pub drain_timeout: Duration,

    /// Seconds a request may wait in the queue before it gets 503 with Retry-After.
    #[arg(long, env = "MAX_QUEUE_TIME", default_value = "30", value_parser = parse_seconds)]
    pub max_queue_time: Duration,

    /// Poll the cloud's instance metadata for spot interruption notices (off, aws, gcp, azure,
    /// auto). SIGTERM stays the primary signal: IMDS is often unreachable from pods.
    #[arg(long, env = "SPOT_PROVIDER", value_enum, default_value = "off")]
    pub spot_provider: SpotProvider,

    /// Base URL of the metadata service (default: the provider's link-local address).
    #[arg(long, env = "SPOT_METADATA_URL")]
    pub spot_metadata_url: Option<String>,

    /// Seconds between metadata polls.
    #[arg(long, env = "SPOT_POLL_INTERVAL", default_value = "5", value_parser = parse_seconds)]
    pub spot_poll_interval: Duration,

    /// Target compute time of a device batch of batch-job lines, in milliseconds: job lines
    /// fill batches only up to what this allows at the measured speed. On the CPU such a batch
    /// also yields to online requests at every GEMM of each layer.
    #[arg(long, env = "BATCH_JOB_SLICE_MS", default_value_t = 50)]
    pub batch_job_slice_ms: u64,

    /// Batch-job input lines per checkpoint: smaller loses less work to a SIGKILL, larger
    /// writes fewer checkpoints.
    #[arg(long, env = "BATCH_CHUNK_LINES", default_value_t = 64)]
    pub batch_chunk_lines: usize,

    /// Seconds a replica's claim on a batch-job segment lasts without renewal (renewed as its
    /// chunks commit). A replica that dies silently holds its segments this long before
    /// another takes them over; replica clocks must agree to well within it.
    #[arg(long, env = "BATCH_LEASE_SECS", default_value_t = 30)]
    pub batch_lease_secs: u64,

    /// Batch-job input lines per segment, the unit that replicas claim (each with its own
    /// lease) so one job runs on every replica with room. Fixed per job when it is validated.
    #[arg(long, env = "BATCH_SEGMENT_LINES", default_value_t = 4096)]
    pub batch_segment_lines: u64,

    /// Seconds between this replica's reads of the shared state dir for the fleet backlog
    /// gauge (`inference_batch_backlog_lines`), job statuses, validation and assembly.
    #[arg(long, env = "BATCH_BACKLOG_INTERVAL", default_value = "2", value_parser = parse_seconds)]
    pub batch_backlog_interval: Duration,

    /// Serve the Files and Batches API, probes and metrics from --state-dir without loading a
    /// model: validates, assembles and finishes jobs and reports the fleet backlog, but runs
    /// none of their lines (inference routes answer 503). For a small always-on pod outside
    /// the GPU pool, so jobs can be submitted and polled, and KEDA sees their backlog, while
    /// no GPU replica runs.
    #[arg(long, env = "INTAKE_ONLY", default_value_t = false)]
    pub intake_only: bool,

    /// Folder for batch-job files, metadata and checkpoints (a PVC in Kubernetes).
    #[arg(long, env = "STATE_DIR", default_value = "./spotinfer-state")]
    pub state_dir: PathBuf,

    /// OpenTelemetry collector for traces, e.g. `http://otel-collector:4317`. Unset: no
    /// exporter and no spans.
    #[arg(long, env = "OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// `service.name` of the exported spans.
    #[arg(long, env = "OTLP_SERVICE_NAME", default_value = "spotinfer")]
    pub otlp_service_name: String,

    /// OTLP transport: `grpc` (as TEI) or `http-protobuf` (`/v1/traces` is appended to the
    /// endpoint).
    #[arg(long, env = "OTLP_PROTOCOL", value_enum, default_value = "grpc")]
    pub otlp_protocol: OtlpProtocol,

    /// Dollars per hour for this pod's share of the node; enables the cost metrics. 0 = off.
    #[arg(long, env = "COST_PER_HOUR", default_value_t = 0.0)]
    pub cost_per_hour: f64,

    /// Testing only: sleep this many milliseconds in the device worker after each batch, to
    /// make requests really be in flight in drain tests. Never set in production.
    #[arg(long, env = "SPOTINFER_TEST_BATCH_DELAY_MS", default_value_t = 0)]
    pub test_batch_delay_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// OpenAI batch input: one `{"custom_id","method","url","body"}` JSON object per line.
    #[arg(long)]
    pub input: PathBuf,

    /// Output JSONL. A checkpoint file `<output>.ckpt` beside it makes reruns resume.
    #[arg(long)]
    pub output: PathBuf,

    /// Token budget of one device batch (default as `serve --max-batch-tokens`).
    #[arg(long, env = "MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,

    /// Input lines per checkpoint.
    #[arg(long, env = "BATCH_CHUNK_LINES", default_value_t = 256)]
    pub chunk_lines: usize,

    /// Hide the progress bar.
    #[arg(long, default_value_t = false)]
    pub no_progress: bool,
}

/// `spotinfer plan`: the model flags (`--model-id`, `--revision`, `--huggingface-hub-cache`,
/// `--dtype`, and `--device cpu` to size a CPU deployment) plus what to size for. Only
/// config.json and the safetensors headers are read, never the weights.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Target GPU.
    #[arg(long, value_enum, default_value = "a10g")]
    pub gpu: GpuKind,

    /// Replicas sharing one GPU through time-slicing.
    #[arg(long, default_value_t = 1)]
    pub replicas_per_gpu: usize,

    /// Token budget of one device batch (`serve --max-batch-tokens`; drives activation memory).
    /// Default as serve's: 16384, or the model's longest input when that is longer.
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,

    /// Measured per-pod throughput in requests/s of one input each (a load test of one pod),
    /// for the KEDA thresholds. Default: an estimate, the lower of the GPU's FLOP bound and the
    /// CPU bound.
    #[arg(long)]
    pub throughput: Option<f64>,

    /// `text` for people, `json` for tools, `kustomize` for a Component that patches
    /// deploy/base (redirect it into a kustomization.yaml).
    #[arg(long, value_enum, default_value = "text")]
    pub output: PlanOutput,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of a running server.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,

    /// Concurrency levels to run, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub concurrency: Vec<usize>,

    /// Texts in the generated corpus.
    #[arg(long, default_value_t = 4096)]
    pub corpus_size: usize,

    /// Requests per concurrency level (bounded), default the corpus size.
    #[arg(long)]
    pub requests: Option<usize>,

    /// Time limit per concurrency level in seconds (shared by its rounds).
    #[arg(long, default_value = "120", value_parser = parse_seconds)]
    pub max_time: Duration,

    /// Split each level's requests into this many rounds, run in mirrored order (1,8,32,128,
    /// then 128,32,8,1, ...) so that a machine whose speed drifts over minutes slows every
    /// level alike; each level reports its pooled figures and the rate of every round.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,

    /// PID of the server, to report its CPU seconds per request (Linux /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Write results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write the corpus as JSON lines to this file and exit.
    #[arg(long)]
    pub dump_corpus: Option<PathBuf>,

    /// Skip the unmeasured warm-up round (e.g. when the server is about to be stopped).
    #[arg(long, default_value_t = false)]
    pub no_warmup: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    Float32,
    Float16,
    Bfloat16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CpuBackendArg {
    Native,
    Candle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GpuBackendArg {
    Reference,
    Fused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FusedGeluArg {
    Exact,
    Tanh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CpuKernelArg {
    Auto,
    Amx,
    Avx512,
    Avx2,
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolingArg {
    Cls,
    Mean,
    LastToken,
    Max,
    Splade,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskArg {
    Auto,
    Embed,
    Classify,
    Rerank,
    Sparse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpotProvider {
    Off,
    Aws,
    Gcp,
    Azure,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GpuKind {
    A10g,
    L4,
    #[value(name = "a100-40gb")]
    A100_40gb,
    #[value(name = "a100-80gb")]
    A100_80gb,
    #[value(name = "h100-80gb")]
    H100_80gb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanOutput {
    Text,
    Json,
    Kustomize,
}

/// `--device`: parsed once so a typo fails at start, not at model load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("`{s}` is not a device: use auto, cpu or cuda:N")),
        }
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("`{s}` is out of range (0 to 86400 seconds)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl ServeArgs {
    /// Cross-flag checks that clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_tokens == Some(0) {
            return Err("--max-batch-tokens must be at least 1".into());
        }
        if self.max_batch_requests == Some(0) {
            return Err("--max-batch-requests must be at least 1".into());
        }
        if self.max_client_batch_size == 0 || self.max_concurrent_requests == 0 {
            return Err(
                "--max-client-batch-size and --max-concurrent-requests must be at least 1".into(),
            );
        }
        if self.drain_delay > self.drain_timeout {
            return Err(format!(
                "--drain-delay ({:?}) must not exceed --drain-timeout ({:?})",
                self.drain_delay, self.drain_timeout
            ));
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.header_read_timeout.is_zero() || self.keep_alive_timeout.is_zero() {
            return Err("--header-read-timeout and --keep-alive-timeout must be above 0".into());
        }
        if self.batch_chunk_lines == 0 || self.batch_segment_lines == 0 {
            return Err("--batch-chunk-lines and --batch-segment-lines must be at least 1".into());
        }
        if self.batch_backlog_interval.is_zero() {
            return Err("--batch-backlog-interval must be above 0".into());
        }
        if self.cost_per_hour < 0.0 || !self.cost_per_hour.is_finite() {
            return Err("--cost-per-hour must be a non-negative number".into());
        }
        Ok(())
    }

    pub fn tokenization_workers(&self) -> usize {
        self.tokenization_workers
            .unwrap_or_else(|| (num_cpus::get() / 4).max(1))
            .max(1)
    }

    pub fn served_model_name(&self) -> String {
        self.served_model_name
            .clone()
            .unwrap_or_else(|| self.model.model_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_arg_parses_all_forms() {
        assert_eq!("auto".parse::<DeviceArg>(), Ok(DeviceArg::Auto));
        assert_eq!("cpu".parse::<DeviceArg>(), Ok(DeviceArg::Cpu));
        assert_eq!("cuda".parse::<DeviceArg>(), Ok(DeviceArg::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceArg>(), Ok(DeviceArg::Cuda(3)));
        assert!("gpu".parse::<DeviceArg>().is_err());
        assert!("cuda:x".parse::<DeviceArg>().is_err());
    }

    #[test]
    fn seconds_accept_fractions_and_suffix() {
        assert_eq!(parse_seconds("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_seconds("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn hostname_env_is_not_kubernetes_hostname() {
        // Kubernetes sets HOSTNAME to the pod name; it must not become the bind address.
        let cli = Cli::try_parse_from(["spotinfer", "serve"]).map_err(|e| e.to_string());
        let Ok(Cli {
            command: Command::Serve(args),
        }) = cli
        else {
            panic!("serve must parse with defaults: {cli:?}");
        };
        if std::env::var("SPOTINFER_HOSTNAME").is_err() {
            assert_eq!(args.hostname, "0.0.0.0");
        }
        assert_eq!(args.port, 3000);
        assert_eq!(args.max_batch_tokens, None);
        assert!(args.auto_truncate);
        assert!(args.validate().is_ok());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
