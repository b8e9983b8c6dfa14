//! From the model's facts to the numbers a Deployment needs.

use serde::Serialize;

use super::gpus::GpuSpec;
use super::inspect::ModelFacts;
use super::shape::ModelShape;
use super::{dtype_bytes, dtype_name, PlanOptions, GIB, MIB};

/// The platform guide: weights must fit in host RAM before they reach the GPU, plus 30 %.
pub(super) const HOST_WEIGHT_FACTOR: f64 = 1.3;
/// The process without weights: binary, tokenizer, async runtime, allocator slack.
const HOST_PROCESS_BYTES: u64 = 256 * MIB;
/// Host memory the CUDA driver takes: JIT-compiling candle's PTX kernels at load, pinned
/// staging buffers, the driver's own tables.
pub(super) const HOST_CUDA_BYTES: u64 = GIB;
/// Device memory outside tensors: the CUDA context, the loaded kernel modules, cuBLAS workspace.
const GPU_CONTEXT_BYTES: u64 = 512 * MIB;
/// Inputs admitted at once (`--max-concurrent-requests`' default) and what each holds on the
/// host: its body (4 KiB), token ids / type ids / positions / offsets (16 B a token at the
/// model's longest input) and its pooled f32 embedding.
const BUFFERED_INPUTS: u64 = 512;
const BODY_BYTES: u64 = 4096;
/// The guide alerts at 85 % GPU memory: plan so the steady state stays below it.
pub(super) const GPU_MEMORY_TARGET: f64 = 0.85;
/// Tokenizer, configs and sentence-transformers files beside the weights in the Hub cache.
const SMALL_FILES_BYTES: u64 = 32 * MIB;
/// Logs, /tmp and batch-job files on top of the model cache.
const SCRATCH_BYTES: u64 = GIB;
/// Typical embedding input for throughput and queue thresholds (a sentence or a short chunk).
const TOKENS_PER_INPUT: u64 = 128;
/// Fraction of the GPU's dense tensor rate (at the plan's dtype) a small-batch embedding server
/// reaches: the throughput estimate is an upper bound, to be replaced by a measured
/// `--throughput`.
const MODEL_FLOPS_UTILISATION: f64 = 0.25;
/// HTTP + JSON + tokenization capacity of one core, in single-input requests a second:
/// measured with `wrk` on loopback against `/tokenize` of all-MiniLM-L6-v2 (an 88-token
/// input, 32 connections, the server pinned to one core of the 2-core CI machine): 1005/s.
/// The CPU side bounds small models: a GPU that could embed 6 000 inputs a second waits for
/// 4 cores.
const CPU_INPUTS_PER_CORE_SECOND: f64 = 1000.0;
/// Peak f32 rate of one x86-64 core with AVX2: 2 FMA units x 8 lanes x 2 FLOP x 3 GHz. Bounds
/// the model's compute in a CPU deployment (at the same utilisation as a GPU).
const CPU_GFLOPS_PER_CORE: f64 = 96.0;
/// CPU limit of the serving container in deploy/base (the guide: 2-4 cores).
const POD_CPU_CORES: f64 = 4.0;
/// Scale out at 70 % of a pod's throughput: the bottom of the guide's 70-85 % utilisation band,
/// leaving room for the minutes a new GPU node takes to arrive.
pub(super) const TARGET_UTILISATION: f64 = 0.7;

#[derive(Debug, Clone, Serialize)]
pub struct HostMemory {
    pub weights_bytes: u64,
    pub runtime_bytes: u64,
    /// weights x 1.3 + runtime (+ activations on the CPU), rounded up to 64 MiB.
    pub request_bytes: u64,
    /// request + the largest safetensors file: its mmaped pages are charged to the pod while
    /// it loads.
    pub limit_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuMemory {
    pub gpu: GpuSpec,
    pub weights_bytes: u64,
    pub activation_bytes: u64,
    pub context_bytes: u64,
    /// weights + activations at the token budget + context: one replica's peak.
    pub needed_bytes: u64,
    pub replicas_per_gpu: u64,
    /// 85 % of the GPU's memory shared by the replicas.
    pub budget_per_replica_bytes: u64,
    pub fits: bool,
    /// Largest power-of-two `--max-batch-tokens` that fits the replicas (None: not even 256).
    pub max_batch_tokens_that_fit: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Storage {
    /// Model files in the Hub cache.
    pub cache_bytes: u64,
    /// cache + 1 GiB scratch, rounded up to 256 MiB.
    pub request_bytes: u64,
    /// Room for a second revision during an upgrade: 2 x cache + 2 GiB.
    pub limit_bytes: u64,
    /// The /data volume (Hub cache and state dir): 2 x cache + 1 GiB.
    pub volume_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Keda {
    /// Single-input requests a second one pod sustains.
    pub throughput_per_pod: f64,
    /// `given` (--throughput) or `estimate` (the lower of the compute and the CPU bound).
    pub throughput_from: String,
    /// The model's FLOPs against the GPU's (its time-sliced share) or the pod's cores.
    pub compute_bound_per_pod: f64,
    pub cpu_bound_per_pod: f64,
    /// Per-pod request rate to scale out at (70 % of the throughput).
    pub request_rate_threshold: u64,
    /// Waiting inputs per pod to scale out at: one full batch of typical inputs.
    pub queue_depth_threshold: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub model: ModelFacts,
    pub dtype: String,
    pub max_batch_tokens: u64,
    pub host_memory: HostMemory,
    pub gpu_memory: Option<GpuMemory>,
    pub ephemeral_storage: Storage,
    pub keda: Keda,
    /// Choices plan made for the user, and what they mean.
    pub notes: Vec<String>,
}

fn round_up(bytes: u64, step: u64) -> u64 {
    bytes.div_ceil(step) * step
}

fn gpu_needed(shape: &ModelShape, weights: u64, tokens: u64, dtype_bytes: u64) -> u64 {
    weights + shape.activation_bytes(tokens, dtype_bytes) + GPU_CONTEXT_BYTES
}

/// The arithmetic, separate from any I/O so it can be tested on synthetic models.
pub fn compute(facts: &ModelFacts, opts: &PlanOptions) -> Plan {
    let shape = &facts.shape;
    let b = dtype_bytes(opts.dtype);
    let weights = facts.weights.loaded_parameters() * b;
    let buffering = BUFFERED_INPUTS * (BODY_BYTES + 16 * shape.max_positions + 4 * shape.hidden);
    let mut runtime = HOST_PROCESS_BYTES + buffering;
    let activations = shape.activation_bytes(opts.max_batch_tokens, b);
    match opts.gpu {
        Some(_) => runtime += HOST_CUDA_BYTES,
        None => runtime += activations,
    }
    let request = round_up(
        (weights as f64 * HOST_WEIGHT_FACTOR).ceil() as u64 + runtime,
        64 * MIB,
    );
    let host_memory = HostMemory {
        weights_bytes: weights,
        runtime_bytes: runtime,
        request_bytes: request,
        limit_bytes: round_up(request + facts.weights.largest_file_bytes, 64 * MIB),
    };

    let gpu_memory = opts.gpu.map(|g| {
        let gpu = GpuSpec::new(g, opts.dtype);
        let budget =
            (gpu.memory_bytes as f64 * GPU_MEMORY_TARGET / opts.replicas_per_gpu as f64) as u64;
        let needed = gpu_needed(shape, weights, opts.max_batch_tokens, b);
        let max_batch_tokens_that_fit = (8..=16)
            .rev()
            .map(|p| 1u64 << p)
            .find(|&t| gpu_needed(shape, weights, t, b) <= budget);
        GpuMemory {
            gpu,
            weights_bytes: weights,
            activation_bytes: activations,
            context_bytes: GPU_CONTEXT_BYTES,
            needed_bytes: needed,
            replicas_per_gpu: opts.replicas_per_gpu,
            budget_per_replica_bytes: budget,
            fits: needed <= budget,
            max_batch_tokens_that_fit,
        }
    });

    let cache = facts.weights.stored_bytes + SMALL_FILES_BYTES;
    let ephemeral_storage = Storage {
        cache_bytes: cache,
        request_bytes: round_up(cache + SCRATCH_BYTES, 256 * MIB),
        limit_bytes: round_up(2 * cache + 2 * SCRATCH_BYTES, 256 * MIB),
        volume_bytes: round_up(2 * cache + SCRATCH_BYTES, 256 * MIB),
    };

    let flops = shape.flops_per_input(TOKENS_PER_INPUT);
    let compute_bound = match opts.gpu {
        Some(g) => {
            let share = 1.0 / opts.replicas_per_gpu as f64;
            g.peak_tflops(opts.dtype) * 1e12 * MODEL_FLOPS_UTILISATION * share / flops
        }
        None => POD_CPU_CORES * CPU_GFLOPS_PER_CORE * 1e9 * MODEL_FLOPS_UTILISATION / flops,
    };
    let cpu_bound = CPU_INPUTS_PER_CORE_SECOND * POD_CPU_CORES;
    let (throughput, from) = match opts.throughput {
        Some(t) => (t, "given"),
        None => (compute_bound.min(cpu_bound), "estimate"),
    };
    let keda = Keda {
        throughput_per_pod: throughput,
        throughput_from: from.into(),
        compute_bound_per_pod: compute_bound,
        cpu_bound_per_pod: cpu_bound,
        request_rate_threshold: ((throughput * TARGET_UTILISATION).floor() as u64).max(1),
        queue_depth_threshold: (opts.max_batch_tokens / TOKENS_PER_INPUT).max(1),
    };
    Plan {
        model: facts.clone(),
        dtype: dtype_name(opts.dtype).into(),
        max_batch_tokens: opts.max_batch_tokens,
        host_memory,
        gpu_memory,
        ephemeral_storage,
        keda,
        notes: opts.notes.clone(),
    }
}
