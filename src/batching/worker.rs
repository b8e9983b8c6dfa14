//! The device worker: the one thread that owns the model and the device.
//!
//! It loads the model (so weights are created on the thread that uses them), warms up, then
//! loops: take a device batch, pack it, run the model, answer each input. Liveness reads its
//! health: a dead thread or one stuck on a single batch turns `/health` red.
//!
//! Nothing is dropped: every input gets an output or an error. A device batch that runs out of
//! memory is split in halves and retried (down to single inputs) instead of failing; an output
//! with a NaN or infinity (an FP16 overflow) fails that input with a 500 that says to use
//! bfloat16, and is never served.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::memory_cap::{self, MemoryCap};
use super::queue::{Answer, BatchInfo, DeviceBatch, Entry, InferError, Queue};
use crate::metrics::Metrics;
use crate::model::{Model, ModelError, ModelSummary, Output, PackedBatch, Want};

/// What the worker reports once the model is loaded.
#[derive(Debug, Clone)]
pub struct LoadedSummary {
    pub model: ModelSummary,
    pub load_time: Duration,
    /// The queue's token budget after the memory cap.
    pub max_batch_tokens: usize,
    /// The GPU memory check (None on the CPU).
    pub memory: Option<MemoryCap>,
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
    /// Token lengths to run once before reporting loaded.
    pub warmup_lengths: Vec<usize>,
    /// Testing only: sleep after each batch.
    pub test_batch_delay: Duration,
    /// The longest input sentence-transformers allows (`max_seq_length`), when it says.
    pub max_seq_length: Option<usize>,
    /// `--max-batch-tokens` was left unset: raise the budget to the longest input before the
    /// memory cap lowers it to what the GPU holds.
    pub raise_to_longest: bool,
}

impl WorkerConfig {
    /// The longest input the model takes: the checkpoint's positions, or less.
    pub fn longest_input(&self, max_positions: usize) -> usize {
        self.max_seq_length
            .unwrap_or(max_positions)
            .min(max_positions)
    }
}

type Loader = Box<dyn FnOnce() -> Result<Box<dyn Model>, ModelError> + Send>;

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
            queue.set_length_aware(model.summary().pads_to_longest);
            if let Err(e) = warm_up(model.as_ref(), &cfg) {
                let _ = tx.send(Err(e));
                return;
            }
            let longest = cfg.longest_input(model.summary().max_positions);
            if cfg.raise_to_longest && queue.token_budget() < longest {
                tracing::info!(
                    max_batch_tokens = longest,
                    "token budget raised to the model's longest input"
                );
                queue.set_token_budget(longest);
            }
            let memory = memory_cap::apply(model.as_ref(), &queue, longest);
            let summary = LoadedSummary {
                model: model.summary().clone(),
                load_time: started.elapsed(),
                max_batch_tokens: queue.limits().max_batch_tokens,
                memory,
            };
            if tx.send(Ok(summary)).is_err() {
                return;
            }
            let worker = Worker {
                model: model.as_ref(),
                queue: &queue,
                metrics: &metrics,
                health: &h,
                cfg: &cfg,
            };
            while let Some(batch) = queue.next_batch() {
                worker.run_batch(batch, true);
            }
            tracing::info!("device worker stopped: queue closed");
        });
    if let Err(e) = spawned {
        health.exited.store(true, Ordering::Release);
        tracing::error!(error = %e, "cannot spawn the device worker thread");
    }
    (health, rx)
}

/// What a model can always be asked for: its pooled vector, else its scores, else its sparse
/// vector.
fn warm_up_want(available: Want) -> Want {
    if available.pooled {
        Want::POOLED
    } else if available.scores {
        Want::SCORES
    } else {
        Want::SPARSE
    }
}

fn warm_up(model: &dyn Model, cfg: &WorkerConfig) -> Result<(), ModelError> {
    let s = model.summary();
    let want = warm_up_want(s.available);
    for &len in &cfg.warmup_lengths {
        let len = len.clamp(1, s.max_positions.max(1));
        let mut batch = PackedBatch::with_capacity(1, len);
        // Token id 0 (usually [PAD]) is valid in every vocabulary.
        batch.push(&vec![0; len], &[]);
        let t = Instant::now();
        model.run(&batch, &[want], &mut || {})?;
        tracing::debug!(
            tokens = len,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "warm-up"
        );
    }
    Ok(())
}

struct Worker<'a> {
    model: &'a dyn Model,
    queue: &'a Queue,
    metrics: &'a Metrics,
    health: &'a WorkerHealth,
    cfg: &'a WorkerConfig,
}

impl Worker<'_> {
    /// Computes one device batch and answers its inputs. A batch of job lines only may be
    /// preempted at yield points inside each layer: online inputs that arrive meanwhile run
    /// first (nested, never preempted), so an online request waits for at most one GEMM of a
    /// job batch. One online batch per yield point: under online load that never lets the
    /// lane empty, the job batch still advances a GEMM at a time instead of never finishing
    /// (its lines, and their segment's live lease, would be stuck for as long as the load).
    fn run_batch(&self, batch: DeviceBatch, preemptible: bool) {
        self.health
            .batch_started_ms
            .store(now_ms(), Ordering::Release);
        let started = Instant::now();
        let mut preempted = Duration::ZERO;
        let n = batch.entries.len();
        let jobs_only = preemptible && batch.online == 0;
        let result = {
            let mut at_yield_point = || {
                if !jobs_only {
                    return;
                }
                if self.queue.online_waiting() {
                    if let Some(online) = self.queue.take_online_now() {
                        let t = Instant::now();
                        self.run_batch(online, false);
                        preempted += t.elapsed();
                    }
                }
            };
            self.compute(&batch.entries, &mut at_yield_point)
        };
        // Time spent on nested online batches is theirs, not this batch's.
        let elapsed = started.elapsed().saturating_sub(preempted);
        self.health
            .busy_ns
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        let m = self.metrics;
        m.compute_time.observe(elapsed.as_secs_f64());
        self.queue.record_batch(batch.tokens, elapsed);
        m.batch_size.observe(n as f64);
        let tokens: usize = batch.entries.iter().map(|e| e.encoded.ids.len()).sum();
        m.batch_tokens.observe(tokens as f64);
        m.tei.batch_next_size.observe(n as f64);
        m.tei.batch_next_tokens.observe(tokens as f64);
        if !self.cfg.test_batch_delay.is_zero() {
            std::thread::sleep(self.cfg.test_batch_delay);
        }
        m.tokens_total.inc_by(tokens as u64);
        static NEXT_BATCH: AtomicU64 = AtomicU64::new(1);
        let info = BatchInfo {
            id: NEXT_BATCH.fetch_add(1, Ordering::Relaxed),
            size: n,
            tokens,
        };
        for (entry, r) in batch.entries.into_iter().zip(result) {
            if r.is_ok() {
                m.embeddings_total.inc();
            }
            let queue_time = started.saturating_duration_since(entry.enqueued);
            m.queue_time.observe(queue_time.as_secs_f64());
            let share = entry.encoded.ids.len() as f64 / tokens.max(1) as f64;
            entry.answer(r.map(|output| Answer {
                output,
                queue_time,
                compute_time: elapsed,
                device_share: elapsed.mul_f64(share),
                batch: info,
            }));
        }
        if preemptible {
            self.health.batch_started_ms.store(0, Ordering::Release);
        }
    }

    /// One result per entry. Out of memory: halves, recursively; a lone input that still
    /// fails gets the error.
    fn compute(
        &self,
        entries: &[Entry],
        at_yield_point: &mut dyn FnMut(),
    ) -> Vec<Result<Output, InferError>> {
        let mut packed = PackedBatch::with_capacity(entries.len(), 0);
        for e in entries {
            packed.push(&e.encoded.ids, &e.encoded.type_ids);
        }
        let wants: Vec<Want> = entries.iter().map(|e| e.want).collect();
        // A panic inside the model (a kernel bug, an unexpected shape) fails this batch's
        // inputs with an error instead of killing the only device thread.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.model.run(&packed, &wants, at_yield_point)
        }))
        .unwrap_or_else(|_| Err(ModelError::Device("panic in the forward pass".into())));
        match result {
            Ok(outputs) if outputs.len() == entries.len() => outputs
                .into_iter()
                .map(|o| {
                    if o.has_non_finite() {
                        self.metrics
                            .device_batch_failures
                            .with_label_values(&["non_finite"])
                            .inc();
                        Err(InferError::NonFinite)
                    } else {
                        Ok(o)
                    }
                })
                .collect(),
            Ok(outputs) => {
                let e = format!("{} outputs for {} inputs", outputs.len(), entries.len());
                vec![Err(InferError::Backend(e)); entries.len()]
            }
            Err(ModelError::OutOfMemory(e)) if entries.len() > 1 => {
                self.metrics
                    .device_batch_failures
                    .with_label_values(&["out_of_memory"])
                    .inc();
                tracing::warn!(
                    error = %e,
                    inputs = entries.len(),
                    tokens = packed.tokens(),
                    "device out of memory: splitting the batch and retrying"
                );
                let (a, b) = entries.split_at(entries.len() / 2);
                let mut out = self.compute(a, at_yield_point);
                out.extend(self.compute(b, at_yield_point));
                out
            }
            Err(e) => {
                tracing::error!(error = %e, inputs = entries.len(), "device batch failed");
                self.metrics
                    .device_batch_failures
                    .with_label_values(&["error"])
                    .inc();
                vec![Err(InferError::Backend(e.to_string())); entries.len()]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Pooling, Task};

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

    fn queue() -> (Arc<Queue>, Arc<Metrics>) {
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
        (queue, metrics)
    }

    #[test]
    fn a_failing_load_is_reported_and_marks_the_worker_dead() {
        let (queue, metrics) = queue();
        let (health, rx) = spawn(
            Box::new(|| Err(ModelError::Unsupported("nope".into()))),
            queue,
            metrics,
            WorkerConfig {
                warmup_lengths: vec![],
                test_batch_delay: Duration::ZERO,
                max_seq_length: None,
                raise_to_longest: false,
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

    /// Fails any batch of more than `max` inputs with an out-of-memory error, and returns NaN
    /// for an input whose first id is 13.
    struct Picky {
        max: usize,
        summary: ModelSummary,
    }

    impl Model for Picky {
        fn run(
            &self,
            batch: &PackedBatch,
            _wants: &[Want],
            _at_yield: &mut dyn FnMut(),
        ) -> Result<Vec<Output>, ModelError> {
            if batch.len() > self.max {
                return Err(ModelError::OutOfMemory("the batch is too large".into()));
            }
            Ok((0..batch.len())
                .map(|i| Output {
                    pooled: Some(vec![if batch.ids[batch.offsets[i]] == 13 {
                        f32::NAN
                    } else {
                        batch.ids[batch.offsets[i]] as f32
                    }]),
                    ..Default::default()
                })
                .collect())
        }

        fn summary(&self) -> &ModelSummary {
            &self.summary
        }
    }

    #[test]
    fn out_of_memory_splits_the_batch_and_non_finite_outputs_are_refused() {
        let (queue, metrics) = queue();
        let summary = ModelSummary {
            family: "test",
            architecture: "Picky".into(),
            task: Task::Embed,
            backend: "test",
            dtype: "float32",
            hidden_size: 1,
            output_size: 1,
            max_positions: 16,
            vocab_size: 100,
            parameter_bytes: 0,
            pads_to_longest: false,
            pooling: Some(Pooling::Cls),
            labels: vec![],
            available: Want::POOLED,
            rerank_template: crate::model::template::RerankTemplate::Pair,
        };
        let (_health, rx) = spawn(
            Box::new(move || Ok(Box::new(Picky { max: 1, summary }) as Box<dyn Model>)),
            queue.clone(),
            metrics.clone(),
            WorkerConfig {
                warmup_lengths: vec![],
                test_batch_delay: Duration::ZERO,
                max_seq_length: None,
                raise_to_longest: false,
            },
        );
        rx.blocking_recv().expect("loaded").expect("no load error");
        let inputs = [5u32, 7, 13, 9]
            .iter()
            .map(|&id| crate::tokenize::Encoded {
                ids: vec![id],
                type_ids: vec![0],
            })
            .collect();
        let rxs = queue.submit(
            inputs,
            Want::POOLED,
            crate::priority::Priority::Online,
            None,
        );
        let got: Vec<_> = rxs
            .into_iter()
            .map(|r| r.blocking_recv().expect("answered"))
            .collect();
        let pooled = |i: usize| {
            got[i]
                .as_ref()
                .map(|a| a.output.pooled.clone())
                .ok()
                .flatten()
        };
        assert_eq!(pooled(0), Some(vec![5.0]));
        assert_eq!(pooled(1), Some(vec![7.0]));
        assert_eq!(got[2], Err(InferError::NonFinite));
        assert_eq!(pooled(3), Some(vec![9.0]));
        assert!(
            metrics
                .device_batch_failures
                .with_label_values(&["out_of_memory"])
                .get()
                >= 1
        );
        queue.close();
    }
}
