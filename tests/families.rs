//! Every model family and task against the references transformers / sentence-transformers
//! computed for the tiny random fixtures in `tests/fixtures/` (scripts/make_tiny_models.py):
//! tokenisation (ids and type ids), then the model on the native CPU and the reference (candle)
//! backends, all items in one mixed-length batch and each item alone.
//!
//! Thresholds: cosine >= 0.9999 for vectors (pooled, per-token, ColBERT), |Δ| <= 1e-4 for
//! logits and sparse weights.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::*;
use serde_json::Value;
use spotinfer::model::{
    self, CpuBackend, LoadOptions, Output, PackedBatch, Pooling, ResolveOptions, Task, Want,
};
use spotinfer::tokenize::{EncodeOptions, Input, Tokenizers};
use tokenizers::TruncationDirection;

struct Fixture {
    name: &'static str,
    dir: PathBuf,
    reference: Value,
}

impl Fixture {
    fn open(name: &'static str) -> Self {
        Self::open_in(name, repo_root().join("tests/fixtures").join(name))
    }

    /// The fixture `name`'s reference with the model files of `dir` (a variant of its folder).
    fn open_in(name: &'static str, dir: PathBuf) -> Self {
        let reference = read_json(&dir.join("reference.json"));
        Self {
            name,
            dir,
            reference,
        }
    }

    /// The fixture in a temporary copy whose config.json is `config` (another form of it).
    fn with_config(name: &'static str, config: &str) -> Self {
        let mut f = Self::open(name);
        let dir = std::env::temp_dir().join(format!(
            "spotinfer-{name}-{}-{}",
            config.replace('.', "-"),
            std::process::id()
        ));
        copy_dir(&f.dir, &dir);
        std::fs::copy(f.dir.join(config), dir.join("config.json")).expect("config");
        f.dir = dir;
        f
    }

    fn items(&self) -> &Vec<Value> {
        self.reference["items"].as_array().expect("items")
    }

    fn kind(&self) -> &str {
        self.reference["reference_kind"].as_str().unwrap_or("")
    }

    fn task(&self) -> &str {
        self.reference["task"].as_str().expect("task")
    }

    fn pooling(&self) -> Option<Pooling> {
        match self.reference["pooling"].as_str() {
            Some("cls") => Some(Pooling::Cls),
            Some("mean") => Some(Pooling::Mean),
            Some("lasttoken") | Some("last_token") | Some("last-token") => Some(Pooling::LastToken),
            Some("max") => Some(Pooling::Max),
            _ if self.task() == "sparse" => Some(Pooling::Splade),
            _ => None,
        }
    }

    fn files(&self) -> model::ModelFiles {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(model::resolve(&ResolveOptions {
            model_id: self.dir.display().to_string(),
            revision: "main".into(),
            cache_dir: None,
            progress: false,
        }))
        .expect("resolve the fixture")
    }

    fn load(&self, backend: CpuBackend) -> Box<dyn model::Model> {
        let files = self.files();
        let st = model::SentenceTransformerConfig::read(&files).expect("st config");
        let task = match self.kind() {
            "qwen3_reranker" => Some(Task::Rerank),
            _ => None,
        };
        let opts = LoadOptions {
            cpu_backend: backend,
            pooling: if matches!(self.task(), "classify" | "rerank") {
                None
            } else {
                self.pooling()
            },
            task,
            ..LoadOptions::cpu()
        };
        model::load(&files, &st, &opts)
            .unwrap_or_else(|e| panic!("{}: load on {backend:?}: {e}", self.name))
    }

    fn want(&self) -> Want {
        match self.task() {
            "embed" => Want::POOLED.union(Want::TOKENS),
            "classify" | "rerank" => Want::SCORES,
            "sparse" => Want::SPARSE,
            "multi" => Want::POOLED
                .union(Want::SPARSE)
                .union(Want::MULTI_VECTOR)
                .union(Want::TOKENS),
            other => panic!("unknown task {other}"),
        }
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn input_of(item: &Value) -> Input {
    let text = item["text"].as_str().expect("text").to_string();
    match item["text_pair"].as_str() {
        Some(b) => Input::Pair(text, b.to_string()),
        None => Input::Text(text),
    }
}

/// Our tokenizer gives the reference's ids and type ids.
fn check_tokens(f: &Fixture) {
    if f.kind() == "qwen3_reranker" {
        return; // its prompt is assembled by the inference API (tests/rerank.rs)
    }
    let cfg = read_json(&f.dir.join("config.json"));
    let vocab = cfg["vocab_size"].as_u64().expect("vocab_size") as usize;
    let max = f.reference["max_length"].as_u64().expect("max_length") as usize;
    let tk = Tokenizers::from_file(&f.dir.join("tokenizer.json"), max, vocab).expect("tokenizer");
    let opts = EncodeOptions {
        truncate: true,
        direction: TruncationDirection::Right,
        add_special_tokens: true,
    };
    for (i, item) in f.items().iter().enumerate() {
        let e = tk.encode(i, &input_of(item), opts).expect("encode");
        assert_eq!(
            e.ids,
            ids(&item["input_ids"]),
            "{}: ids of {}",
            f.name,
            item["id"]
        );
        if let Some(types) = item.get("token_type_ids").filter(|t| t.is_array()) {
            assert_eq!(
                e.type_ids,
                ids(types),
                "{}: type ids of {}",
                f.name,
                item["id"]
            );
        }
    }
}

fn vec_of(v: &Value) -> Vec<f32> {
    as_vec(v)
}

fn close_vectors(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let c = cosine(got, want);
    assert!(c >= 0.9999, "{what}: cosine {c}");
}

fn sparse_map(v: &Value) -> BTreeMap<u32, f32> {
    ids(&v["indices"])
        .into_iter()
        .zip(vec_of(&v["values"]))
        .collect()
}

fn check_output(f: &Fixture, item: &Value, o: &Output, how: &str) {
    let id = format!("{} {} ({how})", f.name, item["id"]);
    let want = &item["outputs"];
    if let (Some(tokens), Some(rows)) = (&o.tokens, want["tokens"].as_array()) {
        let h = tokens.len() / rows.len();
        for (t, row) in rows.iter().enumerate() {
            close_vectors(
                &format!("{id} token {t}"),
                &tokens[t * h..(t + 1) * h],
                &vec_of(row),
            );
        }
    }
    if let Some(p) = &o.pooled {
        let mut p = p.clone();
        if f.reference["normalize"].as_bool() == Some(true) {
            let n = p.iter().map(|x| x * x).sum::<f32>().sqrt();
            p.iter_mut().for_each(|x| *x /= n);
        }
        close_vectors(&format!("{id} embedding"), &p, &vec_of(&want["embedding"]));
    }
    if let Some(s) = &o.scores {
        let logits = vec_of(&want["logits"]);
        assert_eq!(s.len(), logits.len(), "{id}: logits");
        for (g, w) in s.iter().zip(&logits) {
            assert!((g - w).abs() <= 1e-4, "{id}: logit {g} vs {w}");
        }
    }
    if let Some(s) = &o.sparse {
        let got: BTreeMap<u32, f32> = s.iter().copied().collect();
        let exp = sparse_map(&want["sparse"]);
        let keys: std::collections::BTreeSet<u32> = got.keys().chain(exp.keys()).copied().collect();
        for k in keys {
            let (g, w) = (
                got.get(&k).copied().unwrap_or(0.0),
                exp.get(&k).copied().unwrap_or(0.0),
            );
            assert!(
                (g - w).abs() <= 1e-4,
                "{id}: sparse weight of {k}: {g} vs {w}"
            );
        }
    }
    if let (Some(mv), Some(rows)) = (&o.multi_vector, want["colbert"].as_array()) {
        assert!(!rows.is_empty(), "{id}: colbert rows");
        let h = mv.len() / rows.len();
        assert_eq!(mv.len(), h * rows.len(), "{id}: colbert rows");
        for (t, row) in rows.iter().enumerate() {
            close_vectors(
                &format!("{id} colbert {t}"),
                &mv[t * h..(t + 1) * h],
                &vec_of(row),
            );
        }
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("temp dir");
    for e in std::fs::read_dir(from).expect("fixture dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// The item batch of a fixture (mixed lengths).
fn batch_of(f: &Fixture) -> PackedBatch {
    let mut batch = PackedBatch::with_capacity(f.items().len(), 1024);
    for item in f.items() {
        let types = item.get("token_type_ids").map(ids).unwrap_or_default();
        batch.push(&ids(&item["input_ids"]), &types);
    }
    batch
}

/// All items in one batch and each alone, on both CPU backends.
fn check(name: &'static str) {
    check_fixture(&Fixture::open(name));
}

fn check_fixture(f: &Fixture) {
    let (f, name) = (f, f.name);
    check_tokens(f);
    let want = f.want();
    for backend in [CpuBackend::Native, CpuBackend::Reference] {
        let m = f.load(backend);
        assert!(
            want.within(m.summary().available),
            "{name}: outputs {:?}",
            m.summary().available
        );
        let mut batch = PackedBatch::with_capacity(f.items().len(), 1024);
        for item in f.items() {
            let types = item.get("token_type_ids").map(ids).unwrap_or_default();
            batch.push(&ids(&item["input_ids"]), &types);
        }
        let lens: Vec<usize> = batch.lens().collect();
        assert!(
            lens.iter().min() < lens.iter().max(),
            "{name}: mixed lengths {lens:?}"
        );
        let outputs = m
            .run(&batch, &vec![want; batch.len()], &mut || {})
            .unwrap_or_else(|e| panic!("{name} on {backend:?}: {e}"));
        for (item, o) in f.items().iter().zip(&outputs) {
            check_output(f, item, o, &format!("{backend:?}, batched"));
        }
        for item in f.items() {
            let mut one = PackedBatch::with_capacity(1, 256);
            let types = item.get("token_type_ids").map(ids).unwrap_or_default();
            one.push(&ids(&item["input_ids"]), &types);
            let o = m.run(&one, &[want], &mut || {}).expect("alone");
            check_output(f, item, &o[0], &format!("{backend:?}, alone"));
        }
    }
}

#[test]
fn bert_classifier() {
    check("tiny-bert-classifier");
}

#[test]
fn bert_reranker() {
    check("tiny-bert-reranker");
}

#[test]
fn bert_splade() {
    check("tiny-splade");
}

#[test]
fn bert_with_a_dense_module() {
    check("tiny-bert-dense");
}

#[test]
fn xlm_roberta() {
    check("tiny-xlm-roberta");
}

#[test]
fn xlm_roberta_reranker() {
    check("tiny-xlm-roberta-reranker");
}

#[test]
fn roberta_classifier() {
    check("tiny-roberta-classifier");
}

#[test]
fn bge_m3_dense_sparse_colbert() {
    check("tiny-bge-m3");
}

#[test]
fn distilbert() {
    check("tiny-distilbert");
}

#[test]
fn distilbert_classifier() {
    check("tiny-distilbert-classifier");
}

#[test]
fn mpnet() {
    check("tiny-mpnet");
}

#[test]
fn modernbert() {
    check("tiny-modernbert");
}

#[test]
fn modernbert_reranker() {
    check("tiny-modernbert-reranker");
}

/// The fixture's folder with `config.transformers5.json` (`layer_types`, `rope_parameters`) as
/// its config.json: it matches the reference, and gives the Hub form's outputs bit for bit.
fn check_transformers5_config(name: &'static str) {
    let src = repo_root().join("tests/fixtures").join(name);
    let dir = std::env::temp_dir().join(format!("spotinfer-tf5-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    copy_tree(&src, &dir);
    std::fs::copy(
        src.join("config.transformers5.json"),
        dir.join("config.json"),
    )
    .expect("config");
    let tf5 = Fixture::open_in(name, dir.clone());
    check_fixture(&tf5);
    let hub = Fixture::open(name);
    let want = hub.want();
    let mut batch = PackedBatch::with_capacity(hub.items().len(), 1024);
    for item in hub.items() {
        batch.push(&ids(&item["input_ids"]), &[]);
    }
    for backend in [CpuBackend::Native, CpuBackend::Reference] {
        let a = hub
            .load(backend)
            .run(&batch, &vec![want; batch.len()], &mut || {});
        let b = tf5
            .load(backend)
            .run(&batch, &vec![want; batch.len()], &mut || {});
        let (a, b) = (a.expect("hub config"), b.expect("transformers 5 config"));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.tokens, y.tokens, "{name} {backend:?}: tokens");
            assert_eq!(x.pooled, y.pooled, "{name} {backend:?}: pooled");
            assert_eq!(x.scores, y.scores, "{name} {backend:?}: scores");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).expect("read fixture") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

#[test]
fn modernbert_transformers5_config() {
    check_transformers5_config("tiny-modernbert");
}

#[test]
fn modernbert_reranker_transformers5_config() {
    check_transformers5_config("tiny-modernbert-reranker");
}

#[test]
fn nomic() {
    check("tiny-nomic");
}

/// The prompted items' ids come from `config_sentence_transformers.json`'s prompts: the named
/// prompt + the bare text is the reference's text.
#[test]
fn nomic_prompts_are_read() {
    let f = Fixture::open("tiny-nomic");
    let st = model::SentenceTransformerConfig::read(&f.files()).expect("st config");
    let mut prompted = 0;
    for item in f.items() {
        let Some(name) = item["prompt_name"].as_str() else {
            continue;
        };
        let prompt = st
            .prompts
            .get(name)
            .unwrap_or_else(|| panic!("prompt {name} in {:?}", st.prompts));
        let bare = item["text_without_prompt"].as_str().expect("bare text");
        assert_eq!(
            format!("{prompt}{bare}"),
            item["text"].as_str().expect("text")
        );
        prompted += 1;
    }
    assert_eq!(prompted, 2);
}

#[test]
fn gte() {
    check("tiny-gte");
}

#[test]
fn qwen3_embedding() {
    check("tiny-qwen3");
}

#[test]
fn qwen2_embedding() {
    check("tiny-qwen2");
}

#[test]
fn mistral_sliding_window() {
    check("tiny-mistral");
}

#[test]
fn llama3_rope_scaling() {
    check("tiny-llama");
}

#[test]
fn gemma3_embedding_gemma() {
    check("tiny-gemma3");
}

#[test]
fn qwen3_reranker_yes_no_head() {
    let f = Fixture::open("tiny-qwen3-reranker");
    // The head's one logit is defined as logit(yes) - logit(no); the fixture's `logits` must be
    // that, or the comparison below would test something else.
    for item in f.items() {
        let o = &item["outputs"];
        let pair = &o["yes_no_logits"];
        let want = pair["yes"].as_f64().expect("yes") - pair["no"].as_f64().expect("no");
        let got = o["logits"][0].as_f64().expect("logit");
        assert!((got - want).abs() < 1e-7, "{}: {got} vs {want}", item["id"]);
    }
    check("tiny-qwen3-reranker");
}

/// transformers 5 writes `rope_parameters` / `layer_types` instead of `rope_theta` /
/// `rope_scaling` / `rope_local_base_freq`: the same model, so the same outputs, bit for bit.
#[test]
fn decoder_configs_load_alike_in_both_forms() {
    for name in [
        "tiny-qwen3",
        "tiny-qwen2",
        "tiny-mistral",
        "tiny-llama",
        "tiny-gemma3",
        "tiny-qwen3-reranker",
    ] {
        let v4 = Fixture::open(name);
        let v5 = Fixture::with_config(name, "config.transformers5.json");
        let want = v4.want();
        for backend in [CpuBackend::Native, CpuBackend::Reference] {
            let batch = batch_of(&v4);
            let wants = vec![want; batch.len()];
            let a = v4
                .load(backend)
                .run(&batch, &wants, &mut || {})
                .expect("v4");
            let b = v5
                .load(backend)
                .run(&batch, &wants, &mut || {})
                .expect("v5");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.pooled, y.pooled, "{name} {backend:?}: pooled");
                assert_eq!(x.tokens, y.tokens, "{name} {backend:?}: tokens");
                assert_eq!(x.scores, y.scores, "{name} {backend:?}: scores");
            }
        }
        std::fs::remove_dir_all(&v5.dir).ok();
    }
}
