//! The device worker: the one thread that owns the model and the device.
//!
//! It loads the model (so weights are created on the thread that uses them), warms up, then
//! loops: take a batch, pack it, forward + pool, answer each input. Liveness reads its health:
//! a dead thread or one stuck on a single batch turns `/health` red.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::queue::{Batch, InferError, Queue};
use crate::metrics::Metrics;
use crate::model::{self, EmbeddingModel, ModelError, PackedBatch, Pooling};

/// What the worker reports once the model is loaded.
#[derive(Debug, Clone)]
pub struct LoadedSummary {
    pub hidden_size: usize,
    pub max_positions: usize,
    pub vocab_size: usize,
    pub parameter_bytes: usize,
    pub load_time: Duration,
}

/// Shared view of the worker for probes and metrics.
#[derive(Default)]
pub struct WorkerHealth {
    /// Unix millis when the current batch started; 0 while idle.
    batch_started_ms: AtomicU64,
    /// Total nanoseconds spent computing, for the busy ratio.
    busy_ns: AtomicU64,
    exited: AtomicBool,
}

impl WorkerHealth {
    pub fn busy_nanos(&self) -> u64 {
        self.busy_ns.load(Ordering::Relaxed)
    }

    /// Healthy unless the thread exited or one batch has run longer than `wedged_after`.
    pub fn is_healthy(&self, wedged_after: Duration) -> bool {
        if self.exited.load(Ordering::Acquire) {
            return false;
        }
        let started = self.batch_started_ms.load(Ordering::Acquire);
        started == 0 || now_ms().saturating_sub(started) < wedged_after.as_millis() as u64
    }

    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct WorkerConfig {
    pub pooling: Pooling,
    /// Token lengths to run once before reporting loaded.
    pub warmup_lengths: Vec<usize>,
    /// Testing only: sleep after each batch.
    pub test_batch_delay: Duration,
}

type Loader = Box<dyn FnOnce() -> Result<Box<dyn EmbeddingModel>, ModelError> + Send>;

/// Starts the worker thread. The receiver resolves once the model is loaded and warmed up.
pub fn spawn(
    load: Loader,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    cfg: WorkerConfig,
) -> (
    Arc<WorkerHealth>,
    oneshot::Receiver<Result<LoadedSummary, ModelError>>,
) {
    let health = Arc::new(WorkerHealth::default());
    let (tx, rx) = oneshot::channel();
    let h = health.clone();
    let spawned = std::thread::Builder::new()
        .name("device-worker".into())
        .spawn(move || {
            // Mark exit however the thread ends (return or panic) so liveness sees it.
            struct ExitGuard(Arc<WorkerHealth>);
            impl Drop for ExitGuard {
                fn drop(&mut self) {
                    self.0.exited.store(true, Ordering::Release);
                }
            }
            let _guard = ExitGuard(h.clone());
            let started = Instant::now();
            let model = match load() {
                Ok(m) => m,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            queue.set_length_aware(model.pads_to_longest());
            if let Err(e) = warm_up(model.as_ref(), &cfg) {
                let _ = tx.send(Err(e));
                return;
            }
            let summary = LoadedSummary {
                hidden_size: model.hidden_size(),
                max_positions: model.max_positions(),
                vocab_size: model.vocab_size(),
                parameter_bytes: model.parameter_bytes(),
                load_time: started.elapsed(),
            };
            if tx.send(Ok(summary)).is_err() {
                return;
            }
            run(model.as_ref(), &queue, &metrics, &h, &cfg);
        });
    if let Err(e) = spawned {
        health.exited.store(true, Ordering::Release);
        tracing::error!(error = %e, "cannot spawn the device worker thread");
    }
    (health, rx)
}

fn warm_up(model: &dyn EmbeddingModel, cfg: &WorkerConfig) -> Result<(), ModelError> {
    for &len in &cfg.warmup_lengths {
        let len = len.clamp(1, model.max_positions());
        let mut batch = PackedBatch::with_capacity(1, len);
        // Token id 0 (usually [PAD]) is valid in every vocabulary.
        batch.push(&vec![0; len], &[]);
        let t = Instant::now();
        model::embed(model, &batch, cfg.pooling)?;
        tracing::debug!(
            tokens = len,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "warm-up"
        );
    }
    Ok(())
}

fn run(
    model: &dyn EmbeddingModel,
    queue: &Queue,
    metrics: &Metrics,
    health: &WorkerHealth,
    cfg: &WorkerConfig,
) {
    while let Some(batch) = queue.next_batch() {
        run_batch(model, queue, metrics, health, cfg, batch, true);
    }
    tracing::info!("device worker stopped: queue closed");
}

/// Computes one batch and answers its inputs. A batch of job lines only may be preempted at
/// yield points inside each layer: online inputs that arrive meanwhile run first (nested, never
/// preempted), so an online request waits for at most one GEMM of a job batch.
fn run_batch(
    model: &dyn EmbeddingModel,
    queue: &Queue,
    metrics: &Metrics,
    health: &WorkerHealth,
    cfg: &WorkerConfig,
    batch: Batch,
    preemptible: bool,
) {
    health.batch_started_ms.store(now_ms(), Ordering::Release);
    let started = Instant::now();
    let mut preempted = Duration::ZERO;
    let n = batch.entries.len();
    let jobs_only = preemptible && batch.online == 0;
    // A panic inside the model (a kernel bug, an unexpected shape) fails this batch's inputs
    // with an error instead of killing the only device thread.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let packed = pack(&batch);
        if jobs_only {
            let mut at_yield_point = || {
                while queue.online_waiting() {
                    let Some(online) = queue.take_online_now() else {
                        break;
                    };
                    let t = Instant::now();
                    run_batch(model, queue, metrics, health, cfg, online, false);
                    preempted += t.elapsed();
                }
            };
            model.embed_preemptible(&packed, cfg.pooling, &mut at_yield_point)
        } else {
            model::embed(model, &packed, cfg.pooling)
        }
    }))
    .unwrap_or_else(|_| Err(ModelError::Device("panic in the forward pass".into())));
    // Time spent on nested online batches is theirs, not this batch's.
    let elapsed = started.elapsed().saturating_sub(preempted);
    health
        .busy_ns
        .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    metrics.compute_time.observe(elapsed.as_secs_f64());
    queue.record_batch(batch.tokens, elapsed);
    metrics.batch_size.observe(n as f64);
    let tokens: usize = batch.entries.iter().map(|e| e.encoded.ids.len()).sum();
    metrics.batch_tokens.observe(tokens as f64);
    if !cfg.test_batch_delay.is_zero() {
        std::thread::sleep(cfg.test_batch_delay);
    }
    match result {
        Ok(vectors) => {
            metrics.tokens_total.inc_by(tokens as u64);
            metrics.embeddings_total.inc_by(n as u64);
            for (entry, v) in batch.entries.into_iter().zip(vectors) {
                metrics.queue_time.observe(
                    started
                        .saturating_duration_since(entry.enqueued)
                        .as_secs_f64(),
                );
                let _ = entry.reply.send(Ok(v));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, inputs = n, "batch failed");
            metrics.errors_total.with_label_values(&["backend"]).inc();
            let err = InferError::Backend(e.to_string());
            for entry in batch.entries {
                let _ = entry.reply.send(Err(err.clone()));
            }
        }
    }
    if preemptible {
        health.batch_started_ms.store(0, Ordering::Release);
    }
}

fn pack(batch: &Batch) -> PackedBatch {
    let tokens: usize = batch.entries.iter().map(|e| e.encoded.ids.len()).sum();
    let mut packed = PackedBatch::with_capacity(batch.entries.len(), tokens);
    for e in &batch.entries {
        packed.push(&e.encoded.ids, &e.encoded.type_ids);
    }
    packed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_fails_when_the_worker_exits_or_wedges() {
        let h = WorkerHealth::default();
        assert!(h.is_healthy(Duration::from_secs(60)));
        h.batch_started_ms
            .store(now_ms() - 5_000, Ordering::Release);
        assert!(h.is_healthy(Duration::from_secs(60)));
        assert!(
            !h.is_healthy(Duration::from_secs(1)),
            "one batch for 5 s is wedged at 1 s"
        );
        h.batch_started_ms.store(0, Ordering::Release);
        h.exited.store(true, Ordering::Release);
        assert!(!h.is_healthy(Duration::from_secs(60)));
        assert!(h.has_exited());
    }

    #[test]
    fn a_failing_load_is_reported_and_marks_the_worker_dead() {
        let metrics = Metrics::new();
        let queue = Queue::new(
            super::super::BatchLimits {
                max_batch_tokens: 64,
                max_batch_requests: 4,
                max_queue_time: Duration::from_secs(1),
                job_slice: Duration::from_millis(20),
            },
            metrics.clone(),
        );
        let (health, rx) = spawn(
            Box::new(|| Err(ModelError::Unsupported("nope".into()))),
            queue,
            metrics,
            WorkerConfig {
                pooling: Pooling::Mean,
                warmup_lengths: vec![],
                test_batch_delay: Duration::ZERO,
            },
        );
        let err = rx.blocking_recv().expect("a load result").unwrap_err();
        assert!(err.to_string().contains("nope"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !health.has_exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(health.has_exited());
    }
}
