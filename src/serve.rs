//! `spotinfer serve`: binds first (probes answer from the first second), loads the model behind a
//! red readiness, turns Ready, and on SIGTERM runs the bounded drain and exits 0.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::batching::{BatchLimits, Queue};
use crate::config::ServeArgs;
use crate::inference::{self, Inference, RequestLimits, StartOptions};
use crate::jobs::{JobRunner, RunnerConfig};
use crate::lifecycle::{drain, signals, spot, Lifecycle};
use crate::metrics::Metrics;
use crate::server::{self, AppState};
use crate::telemetry::Telemetry;

async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Opens (creating) the job store on a blocking thread: the state dir may be a network volume.
async fn open_store(dir: &str) -> anyhow::Result<crate::jobs::JobStore> {
    let dir = dir.to_string();
    Ok(tokio::task::spawn_blocking(move || crate::jobs::JobStore::open(&dir)).await??)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.validate().map_err(anyhow::Error::msg)?;
    server::vertex::AipRoutes::from_env()
        .check()
        .map_err(anyhow::Error::msg)?;
    let args = Arc::new(args);
    let metrics = Metrics::new();
    // Present from the first scrape; dtype and device are known once the model is loaded.
    metrics.set_build_info(
        &args.model.model_id,
        &args.model.revision,
        "pending",
        "pending",
    );
    let lifecycle = Lifecycle::new(metrics.clone());
    let mut signals = signals::listen().context("cannot install signal handlers")?;
    let limits = BatchLimits {
        max_batch_tokens: args
            .max_batch_tokens
            .unwrap_or(crate::config::DEFAULT_MAX_BATCH_TOKENS),
        max_batch_requests: args.max_batch_requests.unwrap_or(usize::MAX),
        max_queue_time: args.max_queue_time,
        job_slice: Duration::from_millis(args.batch_job_slice_ms),
    };
    let queue = Queue::new(limits, metrics.clone());
    let inference_slot: Arc<OnceLock<Arc<Inference>>> = Arc::new(OnceLock::new());
    let state = AppState {
        cfg: args.clone(),
        metrics: metrics.clone(),
        lifecycle: lifecycle.clone(),
        inference: inference_slot.clone(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        job_store: match open_store(&args.state_dir).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot open --state-dir: the batch API is off");
                None
            }
        },
        job_runner: Arc::new(OnceLock::new()),
    };

    // Every replica (loading, intake-only or not) validates and finishes jobs and reports the
    // fleet backlog from the shared store; segment slots start once a model is loaded.
    if let Some(store) = &state.job_store {
        let runner = JobRunner::new(
            store.clone(),
            metrics.clone(),
            lifecycle.clone(),
            RunnerConfig {
                replica: crate::jobs::lease::process_name(),
                chunk_lines: args.batch_chunk_lines,
                lease_secs: args.batch_lease_secs,
                segment_lines: args.batch_segment_lines,
                max_line_bytes: args.payload_limit as u64,
                retention: (!args.batch_retention.is_zero()).then_some(args.batch_retention),
                refresh: args.batch_backlog_interval,
                cost_per_hour: args.cost_per_hour,
            },
        );
        tokio::spawn(runner.clone().run_coordinator());
        let _ = state.job_runner.set(runner);
    }

    // Bind before loading so probes answer at once.
    let host = args.bind_hostname();
    let main_listener = bind(&host, args.api_port().map_err(anyhow::Error::msg)?).await?;
    let main_addr = main_listener.local_addr()?;
    let metrics_listener = bind(&host, args.prometheus_port).await?;
    let metrics_addr = metrics_listener.local_addr()?;
    tracing::info!(
        api = %url(main_addr),
        metrics = %url(metrics_addr),
        "listening on {} (metrics on {})",
        url(main_addr),
        url(metrics_addr)
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = server::router(state.clone());
    let bounds = server::listener::Bounds {
        header_read_timeout: args.header_read_timeout,
        keep_alive_timeout: args.keep_alive_timeout,
        max_connections: args.max_connections,
    };
    if let Some(path) = &args.uds_path {
        let uds = server::listener::bind_unix(path)?;
        tracing::info!(path = %path.display(), "also listening on a Unix socket");
        tokio::spawn(server::listener::serve_unix(
            uds,
            path.clone(),
            app.clone(),
            stop_rx.clone(),
        ));
    }
    let grpc = server::grpc::router(state.clone(), stop_rx.clone());
    if let Some(port) = args.grpc_port {
        let grpc_listener = bind(&host, port).await?;
        let grpc_addr = grpc_listener.local_addr()?;
        tracing::info!(grpc = %url(grpc_addr), "gRPC-only port on {}", url(grpc_addr));
        let apps = server::listener::Apps {
            http: server::grpc_only_router(),
            grpc: Some(grpc.clone()),
        };
        tokio::spawn(server::listener::serve(
            grpc_listener,
            apps,
            bounds,
            stop_rx.clone(),
        ));
    }
    let apps = server::listener::Apps {
        http: app,
        grpc: Some(grpc),
    };
    let main_server = tokio::spawn(server::listener::serve(
        main_listener,
        apps,
        bounds,
        stop_rx,
    ));
    let metrics_app = server::metrics_router(state.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(metrics_listener, metrics_app).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    let worker_slot = Arc::new(OnceLock::new());
    tokio::spawn(
        Telemetry {
            metrics: metrics.clone(),
            lifecycle: lifecycle.clone(),
            cost_per_hour: args.cost_per_hour,
            // NVML describes a GPU only when the model runs on one (auto picks GPU 0).
            gpu_index: match args.model.device {
                crate::config::DeviceArg::Cuda(n) => Some(n as u32),
                crate::config::DeviceArg::Auto => Some(0),
                crate::config::DeviceArg::Cpu => None,
            },
        }
        .run(worker_slot.clone()),
    );
    tokio::spawn(spot::watch(
        lifecycle.clone(),
        args.spot_provider,
        args.spot_metadata_url.clone(),
        args.spot_poll_interval,
    ));

    let opts = StartOptions {
        model: args.model.clone(),
        served_model_name: args.served_model_name.clone(),
        limits,
        explicit_budget: args.max_batch_tokens.is_some(),
        request_limits: RequestLimits {
            max_client_batch_size: args.max_client_batch_size,
            auto_truncate: args.auto_truncate,
        },
        max_concurrent_requests: args.max_concurrent_requests,
        tokenization_workers: args.tokenization_workers(),
        test_batch_delay: Duration::from_millis(args.test_batch_delay_ms),
        progress: true,
        long_warm_up: true,
    };
    let load = async {
        if args.intake_only {
            tracing::info!("--intake-only: serving files and batch jobs without a model");
            return Ok(None);
        }
        inference::start(opts, queue.clone(), metrics.clone())
            .await
            .map(Some)
    };
    tokio::pin!(load);
    let first_signal = tokio::select! {
        loaded = &mut load => {
            match loaded {
                Ok(None) => {
                    lifecycle.set_ready();
                }
                Ok(Some(inference)) => {
                    let inference = Arc::new(inference);
                    let i = &inference.info;
                    metrics.set_build_info(&i.model_id, &i.revision, i.model.dtype, &i.device);
                    let _ = worker_slot.set(inference.health.clone());
                    let _ = inference_slot.set(inference.clone());
                    if let Some(runner) = state.job_runner.get() {
                        // Interrupted jobs this replica may resume are reported before Ready.
                        let resumed = runner.recover().await;
                        if resumed > 0 {
                            tracing::info!(resumed, "batch jobs resumed");
                        }
                        runner.start_slots(inference);
                    }
                    lifecycle.set_ready();
                }
                Err(e) => {
                    lifecycle.set_failed();
                    return Err(anyhow::Error::new(e).context("cannot load the model"));
                }
            }
            signals.recv().await
        }
        _ = signals.recv() => {
            // Never Ready means never in the Service's endpoints: nothing to drain.
            tracing::info!("signal during model load: exiting without serving");
            lifecycle.begin_drain(Duration::ZERO);
            queue.close();
            lifecycle.set_stopped();
            return Ok(());
        }
    };
    if first_signal.is_none() {
        anyhow::bail!("signal handling stopped unexpectedly");
    }

    lifecycle.begin_drain(args.drain_timeout);
    let report = drain::run(
        lifecycle.clone(),
        args.drain_delay,
        args.drain_timeout,
        drain::DrainTargets {
            queue: queue.clone(),
            stop_accepting: stop_tx,
            offline: state
                .job_runner
                .get()
                .map(|r| r.clone() as Arc<dyn drain::OfflineWork>),
            metrics: metrics.clone(),
        },
        &mut signals,
    )
    .await;
    main_server.abort();
    tracing::info!(report = %serde_json::to_string(&report).unwrap_or_default(), "exiting");
    Ok(())
}
