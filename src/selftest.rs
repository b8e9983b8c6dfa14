//! `spotinfer selftest`: on a GPU, the fused kernels against their CPU references
//! (`model::cuda::selftest`), then whole models on the fused backend against the reference
//! backend (`model::cuda::model_check`): synthetic models made from the test fixtures (their
//! hidden size scaled to a head dim the kernels have) and any `--model-id`. Exits 0 only when
//! everything passed; a binary without CUDA support says so and exits 2.

use std::process::ExitCode;

use crate::config::SelftestArgs;

#[cfg(not(feature = "cuda"))]
pub async fn run(_args: SelftestArgs) -> anyhow::Result<ExitCode> {
    eprintln!(
        "spotinfer selftest: this binary was built without the `cuda` feature, so there are no \
         CUDA kernels to test (build with scripts/cuda-build.sh, or use the CUDA image)"
    );
    Ok(ExitCode::from(2))
}

#[cfg(feature = "cuda")]
pub async fn run(args: SelftestArgs) -> anyhow::Result<ExitCode> {
    use crate::config::DeviceArg;
    use crate::model::cuda::{self, model_check, SelftestOptions};

    let DeviceArg::Cuda(ordinal) = args.device else {
        eprintln!("spotinfer selftest: --device must be a CUDA device (cuda:N)");
        return Ok(ExitCode::from(2));
    };
    let opts = SelftestOptions {
        quick: args.quick,
        filter: args.filter.clone(),
        ..Default::default()
    };
    // Synchronous on this thread: every CUDA call of the check stays on one thread (stream).
    let kernels = cuda::selftest(ordinal, &opts);
    print!("{kernels}");
    let mut json = serde_json::json!({
        "device": kernels.device,
        "kernels": {
            "passed": kernels.passed(),
            "cases": kernels.cases.len(),
            "failed": kernels.failed_cases().map(|c| c.name.clone()).collect::<Vec<_>>(),
            "setup_error": kernels.setup_error,
            "seconds": kernels.seconds,
        },
    });
    let mut passed = kernels.passed();
    // No device (or no usable kernels): the model check could only fail the same way.
    if kernels.setup_error.is_none() && !args.no_models {
        let cases = model_cases(&args).await;
        let report = model_check::check_models(ordinal, &cases);
        print!("{report}");
        passed &= report.passed();
        json["models"] = report.to_json();
    }
    json["passed"] = serde_json::Value::Bool(passed);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")?;
    }
    println!("selftest: {}", if passed { "PASSED" } else { "FAILED" });
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Fixtures rescaled to a head dim the kernels have (most at 64, the common one; BERT also at
/// 32 and 128), and the `--model-id` models. Missing or unusable ones are reported and skipped.
#[cfg(feature = "cuda")]
async fn model_cases(args: &SelftestArgs) -> Vec<crate::model::cuda::model_check::ModelCase> {
    use crate::model::cuda::host::synth::synthesize;
    use crate::model::cuda::model_check::ModelCase;
    use crate::model::{
        resolve, resolve::resolve_local, ResolveOptions, SentenceTransformerConfig,
    };

    const SYNTHETIC: [(&str, usize); 12] = [
        ("tiny-bert", 64),
        ("tiny-bert", 32),
        ("tiny-bert", 128),
        ("tiny-bert-dense", 64),
        ("tiny-bert-classifier", 64),
        ("tiny-xlm-roberta", 64),
        ("tiny-mpnet", 64),
        ("tiny-distilbert", 64),
        ("tiny-modernbert", 64),
        ("tiny-nomic", 64),
        ("tiny-gte", 64),
        ("tiny-qwen3", 64),
    ];
    let tmp = std::env::temp_dir().join(format!("spotinfer-selftest-{}", std::process::id()));
    let mut cases = Vec::new();
    let mut add = |name: String, files: Result<crate::model::ModelFiles, String>| {
        let case = files.and_then(|files| {
            let st = SentenceTransformerConfig::read(&files).map_err(|e| e.to_string())?;
            Ok(ModelCase {
                name: name.clone(),
                files,
                st,
            })
        });
        match case {
            Ok(c) => cases.push(c),
            Err(e) => println!("skip {name}: {e}"),
        }
    };
    for (fixture, head_dim) in SYNTHETIC {
        let src = args.fixtures.join(fixture);
        if !src.is_dir() {
            continue;
        }
        let out = tmp.join(format!("{fixture}-d{head_dim}"));
        let files = synthesize(&src, &out, head_dim)
            .and_then(|_| resolve_local(&out).map_err(|e| e.to_string()));
        add(format!("{fixture} (synthetic, head dim {head_dim})"), files);
    }
    for id in &args.model_ids {
        let files = resolve(&ResolveOptions {
            model_id: id.clone(),
            revision: "main".into(),
            cache_dir: args.huggingface_hub_cache.clone(),
            progress: false,
        })
        .await
        .map_err(|e| e.to_string());
        add(id.clone(), files);
    }
    cases
}
