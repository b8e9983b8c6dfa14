//! The `spotinfer` binary: parse flags, set up logging, run the subcommand.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use clap::Parser;
use spotinfer::config::{Cli, Command, ModelArgs, OtlpProtocol};
use spotinfer::jobs::offline::Outcome;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Logs to stderr, filtered by RUST_LOG; with an OTLP endpoint also the OpenTelemetry layer
/// (its own filter: our spans, whatever RUST_LOG says). Needs the runtime entered.
fn init_logging(
    json: bool,
    otlp: Option<(&str, &str, OtlpProtocol)>,
) -> Result<(), spotinfer::otel::OtelError> {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,hf_hub=warn,reqwest=warn,hyper=warn"));
    let otel = match otlp {
        Some((endpoint, service, protocol)) => {
            Some(spotinfer::otel::init(endpoint, service, protocol)?)
        }
        None => None,
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(otel);
    if json {
        registry
            .with(fmt.json().flatten_event(true).with_filter(filter))
            .init();
    } else {
        registry.with(fmt.with_filter(filter)).init();
    }
    Ok(())
}

async fn download(args: ModelArgs) -> anyhow::Result<()> {
    let files = spotinfer::model::resolve(&spotinfer::model::ResolveOptions {
        model_id: args.model_id.clone(),
        revision: args.revision.clone(),
        cache_dir: args.huggingface_hub_cache.clone(),
        progress: true,
    })
    .await?;
    tracing::info!(source = %files.source, config = %files.config.display(), "model files are in the cache");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = match &cli.command {
        Command::Serve(a) => a.model.json_output,
        Command::Download(a) => a.json_output,
        Command::Batch(a) => a.model.json_output,
        Command::Bench(_) => false,
        Command::Plan(a) => a.model.json_output,
        Command::Selftest(_) => false,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _entered = runtime.enter();
    let otlp = match &cli.command {
        Command::Serve(a) => a
            .otlp_endpoint
            .as_deref()
            .map(|e| (e, a.otlp_service_name.as_str(), a.otlp_protocol)),
        _ => None,
    };
    if let Err(e) = init_logging(json, otlp) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => spotinfer::serve::run(*args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Download(args) => download(args).await.map(|()| ExitCode::SUCCESS),
            Command::Bench(args) => spotinfer::bench::run(*args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Batch(args) => spotinfer::jobs::offline::run(*args).await.map(|o| match o {
                Outcome::Complete => ExitCode::SUCCESS,
                // 75 = EX_TEMPFAIL: interrupted after a checkpoint; rerun to resume.
                Outcome::Interrupted => ExitCode::from(75),
            }),
            Command::Plan(args) => spotinfer::plan::run(*args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Selftest(args) => spotinfer::selftest::run(*args).await,
        }
    });
    // Spans still buffered (the drain's last requests) go out before the process exits.
    spotinfer::otel::shutdown();
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
