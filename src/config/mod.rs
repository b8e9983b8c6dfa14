//! Every command-line flag, its environment variable and its default, in one place.
//!
//! Flag names and defaults follow TEI's `text-embeddings-router` wherever TEI has the flag, so a
//! TEI Deployment's args carry over. The one deliberate difference: the bind address is read from
//! `SPOTINFER_HOSTNAME`, not `HOSTNAME`, because Kubernetes sets `HOSTNAME` to the pod name and
//! TEI then silently binds to whatever that resolves to.
//!
//! One file on purpose (~600 lines): every flag's doc is its `--help` text, and users read the
//! flags of a subcommand together; split, the shared `ModelArgs` would be read in three places.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// `--max-batch-tokens` when not given (TEI's default).
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 16384;

/// Input lines per checkpoint of a batch job, `serve --batch-chunk-lines` and
/// `batch --chunk-lines` alike (one env var, `BATCH_CHUNK_LINES`, so one default). 64: a
/// SIGKILL loses at most this many lines per chunk in flight, and a checkpoint (a few fsyncs)
/// per 64 lines costs little beside their compute. Big chunks used to make the progress bar
/// move; it now moves per line, and `spotinfer batch` keeps as many lines queued as before
/// by running more chunks at once.
pub const DEFAULT_CHUNK_LINES: usize = 64;
/// The shortest batch-job lease accepted: renewals every third of it must fit a store round
/// trip with room to spare.
pub const MIN_LEASE_SECS: u64 = 3;

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
    Download(Box<ModelArgs>),
    /// Embed OpenAI batch lines from a JSONL file without a server, resumable after Ctrl-C,
    /// SIGTERM or SIGKILL by running the same command again.
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

// `--help` headings of `spotinfer serve`, so the long list reads by concern.
const MODEL: &str = "Model";
const SERVER: &str = "Server";
const BATCHING: &str = "Batching";
const JOBS: &str = "Batch jobs";
const LIFECYCLE: &str = "Spot and shutdown";
const OBSERVABILITY: &str = "Observability";

/// Where the model comes from and how it runs: shared by every subcommand that loads one.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = MODEL)]
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
    /// and float16 where the CPU has AVX512-FP16) or `reference` (candle's ops, the backend
    /// `--gpu-backend reference` runs on a GPU; also used for bfloat16, and for float16 on CPUs
    /// without AVX512-FP16). `candle` is accepted for `reference`.
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
    // Not a model flag: with the general options at the top of every subcommand's help.
    #[arg(long, env = "JSON_OUTPUT", default_value_t = false, help_heading = None::<&str>)]
    pub json_output: bool,

    /// With --json-output: leave out the enclosing spans (`span`, `spans`) of each log line.
    #[arg(long, env = "DISABLE_SPANS", default_value_t = false, help_heading = None::<&str>)]
    pub disable_spans: bool,

    /// Hugging Face Hub token for private or gated models. Without it: `HF_TOKEN`, then the token
    /// file (`$HF_TOKEN_PATH`, else `$HF_HOME/token`, as `huggingface-cli login` writes it).
    #[arg(
        long,
        env = "HF_TOKEN",
        hide_env_values = true,
        conflicts_with = "hf_api_token"
    )]
    pub hf_token: Option<String>,

    /// Deprecated spelling of --hf-token (TEI's older flag), still accepted.
    #[arg(long, env = "HF_API_TOKEN", hide = true, hide_env_values = true)]
    pub hf_api_token: Option<String>,

    /// Folder of the sentence-transformers `Dense` module to use instead of the one modules.json
    /// names (e.g. `2_Dense_1024` for another output width), or the Dense module of a model
    /// without modules.json. Refused for a model with several Dense modules.
    #[arg(long, env = "DENSE_PATH")]
    pub dense_path: Option<String>,
}

impl ModelArgs {
    /// `--hf-token`, or the deprecated `--hf-api-token`.
    pub fn hub_token(&self) -> Option<&str> {
        self.hf_token
            .as_deref()
            .or(self.hf_api_token.as_deref())
            .filter(|t| !t.is_empty())
    }
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

    /// Address to bind [default: 0.0.0.0]. Read from SPOTINFER_HOSTNAME; HOSTNAME (TEI's
    /// variable) counts only when it is an IP address, as in TEI: Kubernetes sets HOSTNAME to
    /// the pod name.
    #[arg(long, env = "SPOTINFER_HOSTNAME", help_heading = SERVER)]
    pub hostname: Option<String>,

    /// HTTP port for the API, probes and /metrics. 0 picks a free port (logged at start).
    /// AIP_HTTP_PORT (Vertex AI) overrides it.
    #[arg(long, short = 'p', env = "PORT", default_value_t = 3000, help_heading = SERVER)]
    pub port: u16,

    /// Port of the separate Prometheus listener (metrics also stay on /metrics of the main
    /// port). 0 picks a free port.
    #[arg(long, env = "PROMETHEUS_PORT", default_value_t = 9000, help_heading = OBSERVABILITY)]
    pub prometheus_port: u16,

    /// An extra port serving only gRPC (tei.v1). gRPC is always served on --port as well (HTTP/2
    /// with `content-type: application/grpc`); this is for clients or load balancers that want
    /// a port of its own. 0 picks a free port (logged at start).
    #[arg(long, env = "GRPC_PORT")]
    pub grpc_port: Option<u16>,

    /// Inputs (not requests) admitted at once; beyond it requests get 429 with Retry-After.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 512, help_heading = SERVER)]
    pub max_concurrent_requests: usize,

    /// Token budget of one device batch: padded tokens (inputs x longest input) on the
    /// reference backend (CPU or GPU), real tokens on the native CPU and the fused GPU backends
    /// (they compute no padding).
    /// Default: 16384, raised to the model's longest input when that is longer (a 32k-context
    /// decoder) and lowered on a GPU to what its free memory holds (both logged at start).
    /// Given explicitly, it must cover the longest input.
    #[arg(long, env = "MAX_BATCH_TOKENS", help_heading = BATCHING)]
    pub max_batch_tokens: Option<usize>,

    /// Most inputs in one device batch. Default: no limit other than the token budget.
    #[arg(long, env = "MAX_BATCH_REQUESTS", help_heading = BATCHING)]
    pub max_batch_requests: Option<usize>,

    /// Most inputs one client request may carry (413-free 422 beyond it, like TEI).
    #[arg(long, env = "MAX_CLIENT_BATCH_SIZE", default_value_t = 32, help_heading = SERVER)]
    pub max_client_batch_size: usize,

    /// Truncate inputs longer than the model's maximum instead of rejecting them with 422.
    #[arg(long, env = "AUTO_TRUNCATE", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set, help_heading = SERVER)]
    pub auto_truncate: bool,

    /// Model name reported in responses and /info. Default: the Hub repository id; for a
    /// local folder, the repository id of a Hub-cache snapshot
    /// (`models--org--name/snapshots/<rev>` gives `org/name`), else the folder's name.
    #[arg(long, env = "SERVED_MODEL_NAME", help_heading = MODEL)]
    pub served_model_name: Option<String>,

    /// Tokenizer threads. Default: a quarter of the CPU cores, at least 1.
    #[arg(long, env = "TOKENIZATION_WORKERS", help_heading = BATCHING)]
    pub tokenization_workers: Option<usize>,

    /// Largest request body in bytes; larger bodies get 413.
    #[arg(long, env = "PAYLOAD_LIMIT", default_value_t = 2_000_000, help_heading = SERVER)]
    pub payload_limit: usize,

    /// Seconds a client has to send a whole request head, from its first byte (or from
    /// connecting); slower connections are closed (slow-loris and half-open sockets).
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10", value_parser = parse_seconds, help_heading = SERVER)]
    pub header_read_timeout: Duration,

    /// Seconds an idle keep-alive connection stays open between requests. Keep it above your
    /// load balancer's idle timeout (60 s on AWS ALB) so the balancer closes first.
    #[arg(long, env = "KEEP_ALIVE_TIMEOUT", default_value = "75", value_parser = parse_seconds, help_heading = SERVER)]
    pub keep_alive_timeout: Duration,

    /// Seconds a request body may stall between two chunks before the request fails with 408.
    #[arg(long, env = "BODY_READ_TIMEOUT", default_value = "30", value_parser = parse_seconds, help_heading = SERVER)]
    pub body_read_timeout: Duration,

    /// Most client connections open at once; beyond it new ones wait in the kernel's backlog.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, help_heading = SERVER)]
    pub max_connections: usize,

    /// When set, inference routes need `Authorization: Bearer <key>`; probes and metrics don't.
    #[arg(long, env = "API_KEY", hide_env_values = true, help_heading = SERVER)]
    pub api_key: Option<String>,

    /// Seconds after SIGTERM during which requests are still served normally (endpoint
    /// removal races with SIGTERM in Kubernetes).
    #[arg(long, env = "DRAIN_DELAY", default_value = "5", value_parser = parse_seconds, help_heading = LIFECYCLE)]
    pub drain_delay: Duration,

    /// Seconds after SIGTERM by which all work ends; whatever is still queued then gets 503
    /// with Retry-After. Keep preStop + this + margin below terminationGracePeriodSeconds.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "25", value_parser = parse_seconds, help_heading = LIFECYCLE)]
    pub drain_timeout: Duration,

    /// Seconds a request may wait in the queue before it gets 503 with Retry-After.
    #[arg(long, env = "MAX_QUEUE_TIME", default_value = "30", value_parser = parse_seconds, help_heading = BATCHING)]
    pub max_queue_time: Duration,

    /// Poll the cloud's instance metadata for spot interruption notices (off, aws, gcp, azure,
    /// auto). SIGTERM stays the primary signal: IMDS is often unreachable from pods.
    #[arg(long, env = "SPOT_PROVIDER", value_enum, default_value = "off", help_heading = LIFECYCLE)]
    pub spot_provider: SpotProvider,

    /// Base URL of the metadata service (default: the provider's link-local address).
    #[arg(long, env = "SPOT_METADATA_URL", help_heading = LIFECYCLE)]
    pub spot_metadata_url: Option<String>,

    /// Seconds between metadata polls.
    #[arg(long, env = "SPOT_POLL_INTERVAL", default_value = "5", value_parser = parse_seconds, help_heading = LIFECYCLE)]
    pub spot_poll_interval: Duration,

    /// Target compute time of a device batch of batch-job lines, in milliseconds: job lines
    /// fill batches only up to what this allows at the measured speed. On the CPU such a batch
    /// also yields to online requests at every GEMM of each layer.
    #[arg(long, env = "BATCH_JOB_SLICE_MS", default_value_t = 50, help_heading = JOBS)]
    pub batch_job_slice_ms: u64,

    /// Batch-job input lines per checkpoint: smaller loses less work to a SIGKILL, larger
    /// writes fewer checkpoints (same default as `spotinfer batch --chunk-lines`).
    #[arg(long, env = "BATCH_CHUNK_LINES", default_value_t = DEFAULT_CHUNK_LINES, help_heading = JOBS)]
    pub batch_chunk_lines: usize,

    /// Seconds a replica's claim on a batch-job segment lasts without renewal (a heartbeat
    /// renews it every third of that, whatever the device is doing). A replica that dies
    /// silently holds its segments this long before another takes them over; replica clocks
    /// must agree to well within it. At least 3.
    #[arg(long, env = "BATCH_LEASE_SECS", default_value_t = 30, help_heading = JOBS)]
    pub batch_lease_secs: u64,

    /// Batch-job input lines per segment, the unit that replicas claim (each with its own
    /// lease) so one job runs on every replica with room. Fixed per job when it is validated.
    #[arg(long, env = "BATCH_SEGMENT_LINES", default_value_t = 4096, help_heading = JOBS)]
    pub batch_segment_lines: u64,

    /// Seconds between this replica's reads of the shared state dir for the fleet backlog
    /// gauge (`inference_batch_backlog_lines`), job statuses, validation and assembly.
    #[arg(long, env = "BATCH_BACKLOG_INTERVAL", default_value = "2", value_parser = parse_seconds, help_heading = JOBS)]
    pub batch_backlog_interval: Duration,

    /// How long a batch job is kept after it ended (completed, failed, expired, cancelled):
    /// then its state, results and their file records are deleted (its input file stays).
    /// `0` keeps every job.
    #[arg(long, env = "BATCH_RETENTION", default_value = "30d", value_parser = humantime::parse_duration, help_heading = JOBS)]
    pub batch_retention: Duration,

    /// Serve the Files and Batches API, probes and metrics from --state-dir without loading a
    /// model: validates, assembles and finishes jobs and reports the fleet backlog, but runs
    /// none of their lines (inference routes answer 503). For a small always-on pod outside
    /// the GPU pool, so jobs can be submitted and polled, and KEDA sees their backlog, while
    /// no GPU replica runs.
    #[arg(long, env = "INTAKE_ONLY", default_value_t = false, help_heading = JOBS)]
    pub intake_only: bool,

    /// Where batch-job files, state and results live, shared by every replica: a folder (one
    /// replica, or a ReadWriteMany volume), or a bucket URL — `s3://bucket/prefix` (AWS S3 or
    /// an S3-compatible store; credentials, region and endpoint from the standard `AWS_*`
    /// environment, e.g. AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP=true for plain HTTP,
    /// IRSA's web identity), `gs://bucket/prefix` (GOOGLE_* environment, workload identity) or
    /// `az://container/prefix` (AZURE_* environment). The store must support create-only
    /// writes (S3 If-None-Match, GCS generation match, Azure If-None-Match): exactly once rests
    /// on them.
    #[arg(long, env = "STATE_DIR", default_value = "./spotinfer-state", help_heading = JOBS)]
    pub state_dir: String,

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
    #[arg(long, env = "COST_PER_HOUR", default_value_t = 0.0, help_heading = OBSERVABILITY)]
    pub cost_per_hour: f64,

    /// Origin allowed to call the API from a browser (CORS); repeatable, or comma-separated in
    /// the variable; `*` allows any. Absent: no CORS headers.
    #[arg(long, env = "CORS_ALLOW_ORIGIN", value_delimiter = ',', help_heading = SERVER)]
    pub cors_allow_origin: Vec<String>,

    /// Also serve the API on this Unix socket (a stale socket file is replaced).
    #[arg(long, env = "UDS_PATH", help_heading = SERVER)]
    pub uds_path: Option<PathBuf>,

    /// Testing only: sleep this many milliseconds in the device worker after each batch, to
    /// make requests really be in flight in drain tests. Never set in production, so hidden
    /// from `--help`.
    #[arg(
        long,
        env = "SPOTINFER_TEST_BATCH_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    pub test_batch_delay_ms: u64,
}

/// `spotinfer batch --help` after the flags. `jobs::offline::Outcome::exit_code` returns these
/// codes; a test holds the two together.
pub const BATCH_AFTER_HELP: &str = "\
Progress: a bar on a terminal that moves as lines finish (rate and ETA count this run only).
Ctrl-C (SIGINT) or SIGTERM stops within seconds: finished chunks are checkpointed in
<output>.ckpt, lines of unfinished chunks run again on resume, and the command to resume
(the same command line) is printed. A second signal quits at once; nothing committed is lost.

Exit status:
  0    every line done (also when the output was already complete)
  1    error (the message says what to do)
  2    invalid command line
  75   stopped by SIGTERM after checkpointing: run the same command again to resume
  130  stopped by Ctrl-C (SIGINT) after checkpointing: run the same command again to resume
  128+N  quit at once on a second signal N (130 for Ctrl-C, 143 for SIGTERM): resumable too";

#[derive(Debug, Clone, Args)]
#[command(after_help = BATCH_AFTER_HELP)]
pub struct BatchArgs {
    /// OpenAI batch input: one `{"custom_id","method","url","body"}` JSON object per line. A
    /// file, or an object URL (`s3://`, `gs://`, `az://`) in the bucket of `--output`.
    #[arg(long, help_heading = "Job")]
    pub input: PathBuf,

    /// Output JSONL. A checkpoint file `<output>.ckpt` beside it makes reruns resume; it records
    /// the input and the model, and a rerun with another of either is refused (exit 1).
    /// An object URL (`s3://bucket/out.jsonl`) instead makes the run a job in the bucket
    /// (under `<output>.spotinfer/`) that every process given the same command shares — a
    /// Kubernetes Job with `parallelism: N` is a fleet of its own; results go to `<output>`,
    /// failed lines to `<output>.errors.jsonl`.
    #[arg(long, help_heading = "Job")]
    pub output: PathBuf,

    /// Input lines per checkpoint: smaller loses less work to a SIGKILL, larger writes fewer
    /// checkpoints (same default as `serve --batch-chunk-lines`).
    #[arg(long, env = "BATCH_CHUNK_LINES", default_value_t = DEFAULT_CHUNK_LINES, help_heading = "Job")]
    pub chunk_lines: usize,

    /// Token budget of one device batch (default as `serve --max-batch-tokens`).
    #[arg(long, env = "MAX_BATCH_TOKENS", help_heading = "Job")]
    pub max_batch_tokens: Option<usize>,

    /// With object URLs (`--input s3://bucket/in.jsonl --output s3://bucket/out.jsonl`): input
    /// lines per segment, the unit that the processes running the same command claim, each
    /// with its own lease (same default as `serve --batch-segment-lines`). Fixed when the job
    /// is created.
    #[arg(
        long,
        env = "BATCH_SEGMENT_LINES",
        default_value_t = 4096,
        help_heading = "Job"
    )]
    pub segment_lines: u64,

    /// With object URLs: seconds a process's claim on a segment lasts without renewal (a
    /// heartbeat renews it every third of that). A process that dies silently holds its
    /// segments this long. At least 3.
    #[arg(
        long,
        env = "BATCH_LEASE_SECS",
        default_value_t = 30,
        help_heading = "Job"
    )]
    pub lease_secs: u64,

    /// Testing only: sleep this many milliseconds in the device worker after each batch.
    #[arg(
        long,
        env = "SPOTINFER_TEST_BATCH_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    pub test_batch_delay_ms: u64,

    // After the job's own flags, so `--help` lists those first.
    #[command(flatten)]
    pub model: ModelArgs,

    /// Hide the progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long, default_value_t = false, help_heading = None::<&str>)]
    pub no_progress: bool,
}

/// `spotinfer plan`: the model flags (`--model-id`, `--revision`, `--huggingface-hub-cache`,
/// `--dtype`, and `--device cpu` to size a CPU deployment) plus what to size for. Only
/// config.json and the safetensors headers are read, never the weights.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Target GPU or MIG profile: `t4`, `a10`, `a10g`, `l4`, `l40s`, `a100-40gb`, `a100-80gb`,
    /// `h100-80gb` (or `h100`), `h200`, `b200`; a MIG profile is the card, a dash and NVIDIA's
    /// profile name: `a100-40gb-1g.5gb` (also 1g.10gb, 2g.10gb, 3g.20gb, 4g.20gb, 7g.40gb),
    /// `a100-80gb-1g.10gb` (1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb), `h100-80gb-1g.10gb`
    /// or `h100-1g.10gb` (1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb). A MIG profile is
    /// requested as `nvidia.com/mig-<profile>` (the device plugin's mixed strategy). `--gpu
    /// list` prints the catalogue: memory, dense FP16/BF16 peaks, AWS/GCP/Azure node types.
    #[arg(long, default_value = "a10g")]
    pub gpu: String,

    /// Replicas sharing one GPU through time-slicing (1 on a MIG profile: its memory is its
    /// own, pick a smaller profile instead).
    #[arg(long, default_value_t = 1)]
    pub replicas_per_gpu: usize,

    /// Token budget of one device batch (`serve --max-batch-tokens`; drives activation memory).
    /// Default as serve's: 16384, or the model's longest input when that is longer.
    #[arg(long, env = "MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,

    /// The Hub repository the pods serve (MODEL_ID in `--output kustomize`; REVISION is
    /// `--revision`), for a `--model-id` local folder that is not a Hub-cache snapshot
    /// (`.../models--org--name/snapshots/<commit>/` gives its repository and commit itself).
    #[arg(long)]
    pub served_model_id: Option<String>,

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
    /// Called `candle` before it had the GPU's name.
    #[value(alias = "candle")]
    Reference,
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

/// TEI reads HOSTNAME and falls back to 0.0.0.0 when it is not an IP address (a pod name).
fn bind_hostname(flag: Option<&str>, env_hostname: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| {
            env_hostname
                .filter(|h| h.parse::<std::net::IpAddr>().is_ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "0.0.0.0".to_string())
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
        if self.batch_lease_secs < MIN_LEASE_SECS {
            return Err(format!(
                "--batch-lease-secs must be at least {MIN_LEASE_SECS}: a shorter lease expires \
                 under a live replica between two renewals and its segments run twice"
            ));
        }
        if self.batch_backlog_interval.is_zero() {
            return Err("--batch-backlog-interval must be above 0".into());
        }
        if self.cost_per_hour < 0.0 || !self.cost_per_hour.is_finite() {
            return Err("--cost-per-hour must be a non-negative number".into());
        }
        for origin in &self.cors_allow_origin {
            let scheme = origin.starts_with("http://") || origin.starts_with("https://");
            if origin != "*" && !(scheme && origin.bytes().all(|b| b.is_ascii_graphic())) {
                return Err(format!(
                    "--cors-allow-origin `{origin}` is not an origin: give `*` or \
                     scheme://host[:port], e.g. https://app.example.com"
                ));
            }
        }
        self.api_port()?;
        Ok(())
    }

    /// The address to bind: --hostname (SPOTINFER_HOSTNAME), else HOSTNAME when it is an IP
    /// address, else 0.0.0.0.
    pub fn bind_hostname(&self) -> String {
        bind_hostname(
            self.hostname.as_deref(),
            std::env::var("HOSTNAME").ok().as_deref(),
        )
    }

    /// The API port: AIP_HTTP_PORT (set by Vertex AI) overrides --port, as in TEI.
    pub fn api_port(&self) -> Result<u16, String> {
        match std::env::var("AIP_HTTP_PORT") {
            Ok(p) if !p.trim().is_empty() => p
                .trim()
                .parse()
                .map_err(|_| format!("AIP_HTTP_PORT `{p}` is not a port number")),
            _ => Ok(self.port),
        }
    }

    pub fn tokenization_workers(&self) -> usize {
        self.tokenization_workers
            .unwrap_or_else(|| (num_cpus::get() / 4).max(1))
            .max(1)
    }

    pub fn served_model_name(&self) -> String {
        self.served_model_name
            .clone()
            .unwrap_or_else(|| default_served_model_name(&self.model.model_id))
    }
}

/// The model name reported when `--served-model-name` is not given: a Hub repository id as
/// given; for a local folder the repository id of the Hub-cache snapshot it is
/// (`.../models--org--name/snapshots/<rev>` gives `org/name`), else the folder's own name, so
/// responses, /info and metrics never show one machine's file system layout.
pub fn default_served_model_name(model_id: &str) -> String {
    let given = Path::new(model_id);
    // Same test as model resolution: an existing folder is local, anything else a repo id.
    if !given.is_dir() {
        return model_id.to_string();
    }
    // The path as given first (a symlink keeps its own name), then resolved (for `.`, `..`,
    // or a link to a snapshot).
    let resolved = std::fs::canonicalize(given).ok();
    let paths = || std::iter::once(given).chain(resolved.as_deref());
    paths()
        .find_map(hub_snapshot_repo)
        .or_else(|| paths().find_map(folder_name))
        .unwrap_or_else(|| model_id.to_string())
}

/// `org/name` of a Hub-cache snapshot folder `.../models--org--name/snapshots/<rev>`.
fn hub_snapshot_repo(dir: &Path) -> Option<String> {
    let mut names = dir.components().rev().map(|c| match c {
        Component::Normal(s) => s.to_str(),
        _ => None,
    });
    let _revision = names.next()??;
    if names.next()?? != "snapshots" {
        return None;
    }
    // The cache writes `/` as `--`; repo names themselves cannot hold `--`.
    let repo = names.next()??.strip_prefix("models--")?;
    (!repo.is_empty()).then(|| repo.replacen("--", "/", 1))
}

fn folder_name(dir: &Path) -> Option<String> {
    match dir.components().next_back()? {
        Component::Normal(s) => s.to_str().map(str::to_string),
        _ => None,
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
            assert_eq!(args.hostname, None);
        }
        assert_eq!(bind_hostname(None, Some("spotinfer-7f9c-x2")), "0.0.0.0");
        assert_eq!(bind_hostname(None, Some("10.1.2.3")), "10.1.2.3");
        assert_eq!(
            bind_hostname(Some("127.0.0.1"), Some("10.1.2.3")),
            "127.0.0.1"
        );
        assert_eq!(bind_hostname(None, None), "0.0.0.0");
        assert_eq!(args.port, 3000);
        assert_eq!(args.max_batch_tokens, None);
        assert!(args.auto_truncate);
        assert!(args.validate().is_ok());
    }

    #[test]
    fn served_model_name_is_a_repo_id_not_a_path() {
        let root =
            std::env::temp_dir().join(format!("spotinfer-served-name-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let snapshot = root.join("hub/models--acme--tiny-bert/snapshots/0123abcd");
        let no_org = root.join("hub/models--bert-base-uncased/snapshots/main");
        let plain = root.join("models/my-embedder");
        for d in [&snapshot, &no_org, &plain] {
            std::fs::create_dir_all(d).unwrap();
        }
        let name = |p: &Path| default_served_model_name(p.to_str().unwrap());
        assert_eq!(name(&snapshot), "acme/tiny-bert");
        assert_eq!(name(&no_org), "bert-base-uncased");
        assert_eq!(name(&plain), "my-embedder");
        assert_eq!(
            default_served_model_name(&format!("{}/", plain.display())),
            "my-embedder",
            "a trailing slash changes nothing"
        );
        assert_eq!(
            name(&plain.join("..")),
            "models",
            "resolved when it ends in .."
        );
        // A link to a snapshot is named after the snapshot's repo; a link elsewhere keeps its name.
        let to_snapshot = root.join("current");
        let to_plain = root.join("prod-model");
        std::os::unix::fs::symlink(&snapshot, &to_snapshot).unwrap();
        std::os::unix::fs::symlink(&plain, &to_plain).unwrap();
        assert_eq!(name(&to_snapshot), "acme/tiny-bert");
        assert_eq!(name(&to_plain), "prod-model");
        // Not a folder: a Hub repo id, reported as given.
        assert_eq!(
            default_served_model_name("sentence-transformers/all-MiniLM-L6-v2"),
            "sentence-transformers/all-MiniLM-L6-v2"
        );
        // `snapshots` without the cache's `models--` parent is just a folder.
        let odd = root.join("x/snapshots/v1");
        std::fs::create_dir_all(&odd).unwrap();
        assert_eq!(name(&odd), "v1");

        let cli = Cli::try_parse_from([
            "spotinfer",
            "serve",
            "--model-id",
            snapshot.to_str().unwrap(),
        ]);
        let Ok(Cli {
            command: Command::Serve(args),
        }) = cli
        else {
            panic!("serve must parse");
        };
        assert_eq!(args.served_model_name(), "acme/tiny-bert");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn help_hides_test_hooks_and_groups_serve_flags() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let serve = cli
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(!serve.contains("test-batch-delay"), "{serve}");
        assert!(!serve.contains("SPOTINFER_TEST"), "{serve}");
        for heading in [MODEL, SERVER, BATCHING, LIFECYCLE, JOBS, OBSERVABILITY] {
            let h = format!("\n{heading}:\n");
            assert!(
                serve.contains(&h),
                "serve --help has a `{heading}` heading: {serve}"
            );
        }
        // Every hidden flag still parses (tests set it).
        assert!(Cli::try_parse_from(["spotinfer", "serve", "--test-batch-delay-ms", "5"]).is_ok());
    }

    #[test]
    fn the_reference_backend_has_one_name_on_both_devices() {
        let backend =
            |v: &str| match Cli::try_parse_from(["spotinfer", "serve", "--cpu-backend", v]) {
                Ok(Cli {
                    command: Command::Serve(a),
                    ..
                }) => Some(a.model.cpu_backend),
                _ => None,
            };
        assert_eq!(backend("reference"), Some(CpuBackendArg::Reference));
        // The older name still parses.
        assert_eq!(backend("candle"), Some(CpuBackendArg::Reference));
        assert_eq!(backend("native"), Some(CpuBackendArg::Native));
    }

    #[test]
    fn serve_and_batch_share_the_chunk_default() {
        let Ok(Cli {
            command: Command::Serve(serve),
        }) = Cli::try_parse_from(["spotinfer", "serve"])
        else {
            panic!("serve parses");
        };
        let Ok(Cli {
            command: Command::Batch(batch),
        }) = Cli::try_parse_from(["spotinfer", "batch", "--input", "i", "--output", "o"])
        else {
            panic!("batch parses");
        };
        if std::env::var("BATCH_CHUNK_LINES").is_err() {
            assert_eq!(serve.batch_chunk_lines, DEFAULT_CHUNK_LINES);
            assert_eq!(batch.chunk_lines, DEFAULT_CHUNK_LINES);
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

#[cfg(test)]
mod tei_compat;
