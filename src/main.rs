//! The `spotinfer` binary: parse flags, set up logging, run the subcommand.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use clap::Parser;
use spotinfer::config::{Cli, Command, ModelArgs, OtlpProtocol};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Logs to stderr, filtered by RUST_LOG (with `spans`, JSON lines carry their enclosing spans);
/// with an OTLP endpoint also the OpenTelemetry layer (its own filter: our spans, whatever
/// RUST_LOG says). Needs the runtime entered.
fn init_logging(
    json: bool,
    spans: bool,
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
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(spans)
                    .with_span_list(spans)
                    .with_filter(filter),
            )
            .init();
    } else {
        registry.with(fmt.with_filter(filter)).init();
    }
    Ok(())
}

async fn download(args: ModelArgs) -> anyhow::Result<()> {
    let files = spotinfer::model::resolve_dense(
        &spotinfer::model::ResolveOptions {
            model_id: args.model_id.clone(),
            revision: args.revision.clone(),
            cache_dir: args.huggingface_hub_cache.clone(),
            progress: true,
        },
        args.dense_path.as_deref(),
    )
    .await?;
    tracing::info!(source = %files.source, config = %files.config.display(), "model files are in the cache");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let model = match &cli.command {
        Command::Serve(a) => Some(&a.model),
        Command::Download(a) => Some(a.as_ref()),
        Command::Batch(a) => Some(&a.model),
        Command::Plan(a) => Some(&a.model),
        Command::Bench(_) | Command::Selftest(_) => None,
    };
    let json = model.is_some_and(|m| m.json_output);
    let spans = !model.is_some_and(|m| m.disable_spans);
    // --hf-token means HF_TOKEN to every Hub client of the process (hub_api reads it); set
    // while the process has one thread, before the runtime starts.
    if let Some(token) = model.and_then(ModelArgs::hub_token) {
        std::env::set_var("HF_TOKEN", token);
    }
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
    if let Err(e) = init_logging(json, spans, otlp) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => spotinfer::serve::run(*args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Download(args) => download(*args).await.map(|()| ExitCode::SUCCESS),
            Command::Bench(args) => spotinfer::bench::run(*args)
                .await
                .map(|()| ExitCode::SUCCESS),
            // The codes are documented in `spotinfer batch --help`.
            Command::Batch(args) => spotinfer::jobs::batch(*args)
                .await
                .map(|o| ExitCode::from(o.exit_code())),
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
