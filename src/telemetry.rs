//! Once a second: derived gauges (device busy ratio, cost, drain duration) and, on CUDA, GPU
//! utilisation and memory from NVML.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batching::WorkerHealth;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

const BUSY_WINDOW: Duration = Duration::from_secs(10);
const COST_WINDOW: Duration = Duration::from_secs(300);

/// Sliding-window arithmetic, separate from the clock so it can be tested.
#[derive(Default)]
pub struct Window {
    samples: VecDeque<(Instant, f64)>,
}

impl Window {
    /// Adds a cumulative sample and returns (value delta, seconds) over the window.
    pub fn push(&mut self, at: Instant, cumulative: f64, span: Duration) -> (f64, f64) {
        self.samples.push_back((at, cumulative));
        while let Some(&(t, _)) = self.samples.front() {
            if at.duration_since(t) > span && self.samples.len() > 2 {
                self.samples.pop_front();
            } else {
                break;
            }
        }
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, v0)), Some(&(t1, v1))) if t1 > t0 => {
                (v1 - v0, t1.duration_since(t0).as_secs_f64())
            }
            _ => (0.0, 0.0),
        }
    }
}

pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    pub cost_per_hour: f64,
    pub gpu_index: Option<u32>,
}

impl Telemetry {
    /// Runs forever; `worker` appears once the model is loaded.
    pub async fn run(self, worker: Arc<std::sync::OnceLock<Arc<WorkerHealth>>>) {
        let mut busy = Window::default();
        let mut emb = Window::default();
        let mut last = Instant::now();
        let gpu = self
            .gpu_index
            .and_then(|i| nvml::Gpu::open(i, &self.metrics));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = Instant::now();
            if let Some(w) = worker.get() {
                let (d_busy, secs) = busy.push(now, w.busy_nanos() as f64 / 1e9, BUSY_WINDOW);
                if secs > 0.0 {
                    self.metrics
                        .device_busy_ratio
                        .set((d_busy / secs).clamp(0.0, 1.0));
                }
            }
            if self.cost_per_hour > 0.0 {
                let dt = now.duration_since(last).as_secs_f64();
                self.metrics
                    .cost_dollars_total
                    .inc_by(self.cost_per_hour * dt / 3600.0);
                let (d_emb, secs) =
                    emb.push(now, self.metrics.embeddings_total.get() as f64, COST_WINDOW);
                let per_million = if d_emb > 0.0 {
                    self.cost_per_hour * secs / 3600.0 / (d_emb / 1e6)
                } else {
                    0.0
                };
                self.metrics.cost_per_million_embeddings.set(per_million);
            }
            last = now;
            if let Some(elapsed) = self.lifecycle.drain_elapsed() {
                self.metrics.drain_duration.set(elapsed.as_secs_f64());
            }
            if let Some(g) = &gpu {
                g.sample(&self.metrics);
            }
        }
    }
}

#[cfg(feature = "cuda")]
mod nvml {
    use crate::metrics::Metrics;
    use nvml_wrapper::Nvml;

    /// NVML is loaded at run time (libnvidia-ml.so.1 from the driver); absent means no GPU
    /// gauges, never an error.
    pub struct Gpu {
        nvml: Nvml,
        index: u32,
    }

    impl Gpu {
        pub fn open(index: u32, metrics: &Metrics) -> Option<Self> {
            match Nvml::init() {
                Ok(nvml) => {
                    metrics.register_gpu_gauges();
                    tracing::info!(index, "NVML found: GPU utilisation and memory gauges on");
                    Some(Self { nvml, index })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "NVML not available: no GPU utilisation gauges");
                    None
                }
            }
        }

        pub fn sample(&self, metrics: &Metrics) {
            let Ok(dev) = self.nvml.device_by_index(self.index) else {
                return;
            };
            if let Ok(u) = dev.utilization_rates() {
                metrics.gpu_utilization_ratio.set(f64::from(u.gpu) / 100.0);
            }
            if let Ok(m) = dev.memory_info() {
                metrics.gpu_memory_used_bytes.set(m.used as f64);
                metrics.gpu_memory_total_bytes.set(m.total as f64);
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod nvml {
    use crate::metrics::Metrics;

    /// CPU builds have no GPU gauges.
    pub struct Gpu;

    impl Gpu {
        pub fn open(_index: u32, _metrics: &Metrics) -> Option<Self> {
            None
        }

        pub fn sample(&self, _metrics: &Metrics) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_reports_delta_over_span() {
        let t0 = Instant::now();
        let mut w = Window::default();
        assert_eq!(w.push(t0, 0.0, Duration::from_secs(10)), (0.0, 0.0));
        let (d, s) = w.push(t0 + Duration::from_secs(1), 0.5, Duration::from_secs(10));
        assert_eq!((d, s), (0.5, 1.0));
        for i in 2..=20 {
            w.push(
                t0 + Duration::from_secs(i),
                0.5 * i as f64,
                Duration::from_secs(10),
            );
        }
        let (d, s) = w.push(t0 + Duration::from_secs(21), 10.5, Duration::from_secs(10));
        assert!((d / s - 0.5).abs() < 1e-9);
        assert!(s <= 11.0);
    }
}
