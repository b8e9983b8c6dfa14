//! The `spotinfer` binary: parse flags, set up logging, run the subcommand.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use clap::Parser;
use spotinfer::config::{Cli, Command, ModelArgs};
use tracing_subscriber::EnvFilter;

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,hf_hub=warn,reqwest=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
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
    init_logging(json);
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
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => spotinfer::serve::run(*args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Download(args) => download(args).await.map(|()| ExitCode::SUCCESS),
            Command::Bench(args) => spotinfer::bench::run(*args)
                .await
                .map(|()| ExitCode::SUCCESS),
            // The codes are documented in `spotinfer batch --help`.
            Command::Batch(args) => spotinfer::jobs::offline::run(*args)
                .await
                .map(|o| ExitCode::from(o.exit_code())),
            Command::Plan(args) => spotinfer::plan::run(*args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Selftest(args) => spotinfer::selftest::run(*args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
