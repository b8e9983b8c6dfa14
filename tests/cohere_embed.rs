//! Cohere embed (`/v1/embed`, `/v2/embed`) through the official `cohere` SDK against the real
//! binary (tests/python/cohere_embed.py): every `embedding_types` value bit-exact with
//! sentence-transformers' `quantize_embeddings`, `input_type` → the model's prompts, and the
//! same quantized types on `/embed` and `/v1/embeddings`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fixture, read_json, repo_root, script_result, test_model_dir, test_python, Server};
use serde_json::{json, Value};

fn st_wheel() -> String {
    script_result(
        "fetch-st-quantization.sh",
        &[&test_python()],
        "sentence-transformers' quantize_embeddings is needed",
    )
}

fn run_script(base: &str, mode: &str, args: Value) -> Value {
    let out = Command::new(test_python())
        .arg(repo_root().join("tests/python/cohere_embed.py"))
        .args([base, mode, &st_wheel(), &args.to_string()])
        .output()
        .expect("run tests/python/cohere_embed.py");
    assert!(
        out.status.success(),
        "cohere_embed.py {mode} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Per-dimension ranges around the reference's unit vectors, with a margin so the server's
/// own vectors of the same texts stay inside.
fn write_ranges(reference: &Value, path: &Path) {
    let mut min = vec![f32::INFINITY; 384];
    let mut max = vec![f32::NEG_INFINITY; 384];
    for item in reference["items"].as_array().expect("items") {
        let v = common::as_vec(&item["mean"]);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (j, x) in v.iter().enumerate() {
            min[j] = min[j].min(x / norm - 0.05);
            max[j] = max[j].max(x / norm + 0.05);
        }
    }
    std::fs::write(path, json!([min, max]).to_string()).expect("write ranges");
}

#[test]
fn cohere_sdk_embed_types_match_sentence_transformers() {
    let reference_path = repo_root().join("tests/fixtures/minilm_reference.json");
    let ranges = std::env::temp_dir().join(format!("spotinfer-ranges-{}.json", std::process::id()));
    write_ranges(&read_json(&reference_path), &ranges);
    let server = Server::builder(&test_model_dir())
        .args(["--quantization-ranges", &ranges.display().to_string()])
        .start();
    let summary = run_script(
        &server.base,
        "minilm",
        json!({"reference": reference_path, "ranges": ranges}),
    );
    let _ = std::fs::remove_file(&ranges);
    let checked = summary["checked"].as_array().expect("checked").len();
    assert!(checked >= 29, "only {checked} checks ran: {summary}");
}

#[test]
fn cohere_input_type_selects_the_models_prompts() {
    // EmbeddingGemma's prompt names: query, document, Clustering, Classification.
    let (dir, _) = fixture("tiny-gemma3");
    let server = Server::builder(&dir).start();
    let summary = run_script(
        &server.base,
        "prompts",
        json!({"prompts": {
            "search_query": "query",
            "search_document": "document",
            "clustering": "Clustering",
            "classification": "Classification",
        }}),
    );
    assert!(summary["checked"].as_array().expect("checked").len() >= 4 * 8);
}

#[test]
fn a_bad_ranges_file_stops_the_start() {
    let ranges =
        std::env::temp_dir().join(format!("spotinfer-bad-ranges-{}.json", std::process::id()));
    std::fs::write(&ranges, "[[1, 2], [0]]").expect("write");
    let mut server = Server::builder(&common::tiny_model_dir())
        .args(["--quantization-ranges", &ranges.display().to_string()])
        .no_wait()
        .start();
    let (code, _) = server.wait_exit(std::time::Duration::from_secs(60));
    let _ = std::fs::remove_file(&ranges);
    assert_ne!(code, Some(0));
    assert!(
        server.log_text().contains("quantization ranges"),
        "{}",
        server.log_text()
    );
}
