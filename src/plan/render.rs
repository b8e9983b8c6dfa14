//! Plans for people (`text`), tools (`json`, via serde) and kustomize (a Component).

use std::fmt::Write as _;

use super::compute::{Plan, GPU_MEMORY_TARGET, HOST_WEIGHT_FACTOR, TARGET_UTILISATION};
use super::gpus::{node_list, GpuSpec};
use super::{dtype_name, PlanError, PlanOptions, GIB, MIB};
use crate::config::PlanArgs;

/// A Kubernetes quantity: whole GiB as `NGi`, else MiB.
pub fn quantity(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{}Gi", bytes / GIB)
    } else {
        format!("{}Mi", bytes.div_ceil(MIB))
    }
}

fn human(bytes: u64) -> String {
    if bytes >= GIB {
        format!(
            "{:.2} GiB ({:.1} GB)",
            bytes as f64 / GIB as f64,
            bytes as f64 / 1e9
        )
    } else {
        format!(
            "{:.1} MiB ({:.1} MB)",
            bytes as f64 / MIB as f64,
            bytes as f64 / 1e6
        )
    }
}

fn millions(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} B", n as f64 / 1e9)
    } else {
        format!("{:.1} M", n as f64 / 1e6)
    }
}

pub fn render_text(p: &Plan) -> String {
    let mut s = String::new();
    let m = &p.model;
    let w = &m.weights;
    let _ = writeln!(
        s,
        "model            {} @ {} ({})",
        m.model_id, m.revision, m.shape.model_type
    );
    match &m.serves {
        Some(sv) if sv.model_id == m.model_id && sv.revision == m.revision => {}
        Some(sv) => {
            let _ = writeln!(
                s,
                "serves           {} @ {} (MODEL_ID, REVISION; from {})",
                sv.model_id, sv.revision, sv.from
            );
        }
        None => {
            let _ = writeln!(
                s,
                "serves           unknown: a local folder names no Hub repository (--output \
                 kustomize needs --served-model-id)"
            );
        }
    }
    let _ = writeln!(
        s,
        "parameters       {} ({}) from {}; {} file(s), {} stored as {}",
        w.parameters,
        millions(w.parameters),
        m.parameters_from,
        w.files,
        human(w.stored_bytes),
        w.stored_dtypes.join("+")
    );
    if w.unloaded_parameters > 0 {
        let _ = writeln!(
            s,
            "not loaded       lm_head, {} ({}): an embedder skips it, a yes/no reranker reads two rows",
            w.unloaded_parameters,
            millions(w.unloaded_parameters)
        );
    }
    let h = &p.host_memory;
    let _ = writeln!(
        s,
        "weights          {} at {}",
        human(h.weights_bytes),
        p.dtype
    );
    let _ = writeln!(
        s,
        "memory request   {} = weights x {HOST_WEIGHT_FACTOR} + runtime {}",
        quantity(h.request_bytes),
        human(h.runtime_bytes)
    );
    let _ = writeln!(
        s,
        "memory limit     {} = request + largest safetensors file (mmaped while loading)",
        quantity(h.limit_bytes)
    );
    match &p.gpu_memory {
        Some(g) => {
            gpu_lines(&mut s, &g.gpu);
            let _ = writeln!(
                s,
                "GPU memory       {} = weights + activations {} at {} batch tokens + context {}",
                human(g.needed_bytes),
                human(g.activation_bytes),
                p.max_batch_tokens,
                human(g.context_bytes)
            );
            let _ = writeln!(
                s,
                "GPU fit          {} x {} on one {} ({} each at {:.0} % of {}): {}",
                g.replicas_per_gpu,
                human(g.needed_bytes),
                g.gpu.name,
                human(g.budget_per_replica_bytes),
                GPU_MEMORY_TARGET * 100.0,
                human(g.gpu.memory_bytes),
                if g.fits { "fits" } else { "DOES NOT FIT" }
            );
            let _ = writeln!(
                s,
                "batch tokens     largest power of two that fits: {}",
                g.max_batch_tokens_that_fit
                    .map_or("none (even 256 does not fit)".to_string(), |t| t
                        .to_string())
            );
        }
        None => {
            let _ = writeln!(
                s,
                "GPU              none (CPU plan: activations are in the memory request)"
            );
        }
    }
    let e = &p.ephemeral_storage;
    let _ = writeln!(
        s,
        "ephemeral        request {} (cache {} + scratch), limit {}, /data volume {}",
        quantity(e.request_bytes),
        human(e.cache_bytes),
        quantity(e.limit_bytes),
        quantity(e.volume_bytes)
    );
    let k = &p.keda;
    let _ = writeln!(
        s,
        "throughput       {:.0} requests/s per pod, one input each ({}; compute bound {:.0}, HTTP and tokenization bound {:.0})",
        k.throughput_per_pod,
        k.throughput_from,
        k.compute_bound_per_pod,
        k.cpu_bound_per_pod
    );
    let _ = writeln!(
        s,
        "KEDA             request-rate threshold {} per pod ({:.0} % of throughput), queue-depth threshold {} inputs per pod",
        k.request_rate_threshold,
        TARGET_UTILISATION * 100.0,
        k.queue_depth_threshold
    );
    for n in &p.notes {
        let _ = writeln!(s, "note             {n}");
    }
    if k.throughput_from == "estimate" {
        let _ = writeln!(
            s,
            "note             throughput is an estimate: load-test one pod and pass --throughput"
        );
    }
    s
}

/// The GPU's figures and where to rent it.
fn gpu_lines(s: &mut String, g: &GpuSpec) {
    let bf16 = g
        .bf16_tflops
        .map_or("no BF16".to_string(), |t| format!("BF16 {t:.1}"));
    let _ = writeln!(
        s,
        "GPU              {} (--gpu {}): {}, dense TFLOP/s FP16 {:.1}, {bf16}; requests {}",
        g.name,
        g.id,
        human(g.memory_bytes),
        g.fp16_tflops,
        g.resource
    );
    if let Some(m) = &g.mig {
        let _ = writeln!(
            s,
            "MIG              {} of {}: {}/7 of its compute, its own memory, no time-slicing; \
             nodes advertise {} under the device plugin's mixed MIG strategy",
            m.profile, m.parent, m.compute_slices, g.resource
        );
    }
    let _ = writeln!(s, "nodes AWS        {}", node_list(g.nodes.aws));
    let _ = writeln!(s, "nodes GCP        {}", node_list(g.nodes.gcp));
    let _ = writeln!(s, "nodes Azure      {}", node_list(g.nodes.azure));
}

/// The command line that reproduces this plan, for the generated file's header.
pub fn command_line(args: &PlanArgs, opts: &PlanOptions) -> String {
    let mut c = format!(
        "spotinfer plan --model-id {} --revision {} --dtype {}",
        args.model.model_id,
        args.model.revision,
        dtype_name(opts.dtype)
    );
    if let Some(id) = &args.served_model_id {
        let _ = write!(c, " --served-model-id {id}");
    }
    match opts.gpu {
        Some(g) => {
            let _ = write!(
                c,
                " --gpu {} --replicas-per-gpu {}",
                g.id, opts.replicas_per_gpu
            );
        }
        None => c.push_str(" --device cpu"),
    }
    let _ = write!(c, " --max-batch-tokens {}", opts.max_batch_tokens);
    if let Some(t) = opts.throughput {
        let _ = write!(c, " --throughput {t}");
    }
    c.push_str(" --output kustomize");
    c
}

/// A kustomize Component patching deploy/base: the model the pods serve, the container's
/// memory and ephemeral storage (and, on a MIG profile, its GPU resource), the /data volume,
/// the dtype and token budget it was sized for, and the ScaledObject's thresholds (trigger 0:
/// request rate, trigger 1: queue depth). A local folder that names no Hub repository is
/// refused: the pods would load the base's default model, not the one sized here.
pub fn render_kustomize(p: &Plan, command: &str) -> Result<String, PlanError> {
    let served = p
        .model
        .serves
        .as_ref()
        .ok_or_else(|| PlanError::NoServedModel {
            folder: p.model.model_id.clone(),
        })?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Generated by `spotinfer plan`; do not edit, regenerate with:"
    );
    let _ = writeln!(s, "#   {command}");
    for line in render_text(p).lines() {
        let _ = writeln!(s, "# {line}");
    }
    let h = &p.host_memory;
    let e = &p.ephemeral_storage;
    let mut env = String::new();
    let _ = write!(
        env,
        "                  - name: MODEL_ID\n                    value: {}\n                  - name: REVISION\n                    value: {}\n",
        yaml_str(&served.model_id),
        yaml_str(&served.revision)
    );
    let _ = write!(
        env,
        "                  - name: DTYPE\n                    value: {}\n                  - name: MAX_BATCH_TOKENS\n                    value: \"{}\"\n",
        p.dtype, p.max_batch_tokens
    );
    // A MIG profile replaces the base's whole-GPU request (null deletes a key in a strategic
    // merge patch).
    let gpu = match p.gpu_memory.as_ref().filter(|g| g.gpu.mig.is_some()) {
        Some(g) => format!(
            "                    nvidia.com/gpu: null\n                    {}: \"1\"\n",
            g.gpu.resource
        ),
        None => String::new(),
    };
    let _ = write!(
        s,
        r#"apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: spotinfer
      spec:
        template:
          spec:
            containers:
              - name: spotinfer
                env:
{env}                resources:
                  requests:
                    memory: {mreq}
                    ephemeral-storage: {ereq}
{gpu}                  limits:
                    memory: {mlim}
                    ephemeral-storage: {elim}
{gpu}            volumes:
              - name: data
                emptyDir:
                  sizeLimit: {vol}
  - target:
      group: keda.sh
      kind: ScaledObject
      name: spotinfer
    patch: |-
      - op: replace
        path: /spec/triggers/0/metadata/threshold
        value: "{rate}"
      - op: replace
        path: /spec/triggers/1/metadata/threshold
        value: "{queue}"
"#,
        mreq = quantity(h.request_bytes),
        mlim = quantity(h.limit_bytes),
        ereq = quantity(e.request_bytes),
        elim = quantity(e.limit_bytes),
        vol = quantity(e.volume_bytes),
        rate = p.keda.request_rate_threshold,
        queue = p.keda.queue_depth_threshold,
    );
    Ok(s)
}

/// A YAML scalar that stays a string whatever the model id looks like.
fn yaml_str(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}
