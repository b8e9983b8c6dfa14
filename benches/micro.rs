//! Criterion micro-benchmarks: tokenisation, batch assembly and one forward pass at the shapes
//! that matter (a short query, a long passage, a mixed batch from the benchmark corpus).
//! Run: `bash scripts/fetch-test-model.sh && cargo bench --bench micro`.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use spotinfer::batching::{BatchLimits, Queue};
use spotinfer::bench::corpus;
use spotinfer::metrics::Metrics;
use spotinfer::model::cpu::elementwise::{self, Pointwise};
use spotinfer::model::cpu::matmul::{self, Epilogue};
use spotinfer::model::cpu::packed::PackedWeights;
use spotinfer::model::{self, LoadOptions, PackedBatch, ResolveOptions, Want};
use spotinfer::priority::Priority;
use spotinfer::tokenize::{EncodeOptions, Encoded, Input, Tokenizers};
use tokenizers::TruncationDirection;

fn model_dir() -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/fetch-test-model.sh"
        ))
        .output()
        .expect("fetch-test-model.sh");
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("path")
            .trim(),
    )
}

const OPTS: EncodeOptions = EncodeOptions {
    truncate: true,
    direction: TruncationDirection::Right,
    add_special_tokens: true,
};

fn benches(c: &mut Criterion) {
    let dir = model_dir();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let files = rt
        .block_on(model::resolve(&ResolveOptions {
            model_id: dir.display().to_string(),
            revision: "main".into(),
            cache_dir: None,
            progress: false,
        }))
        .expect("resolve");
    let tk = Tokenizers::from_file(&files.tokenizer, 256, 30522).expect("tokenizer");
    let texts = corpus::generate(64, corpus::SEED);

    c.bench_function("tokenize 64 corpus texts", |b| {
        b.iter(|| {
            for (i, t) in texts.iter().enumerate() {
                tk.encode(i, &Input::Text(t.clone()), OPTS).expect("encode");
            }
        })
    });

    let encoded: Vec<Encoded> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| tk.encode(i, &Input::Text(t.clone()), OPTS).expect("encode"))
        .collect();
    let queue = Queue::new(
        BatchLimits {
            max_batch_tokens: 16384,
            max_batch_requests: usize::MAX,
            max_queue_time: Duration::from_secs(30),
            job_slice: Duration::from_millis(25),
        },
        Metrics::new(),
    );
    c.bench_function("queue: submit 64 inputs and form batches", |b| {
        b.iter(|| {
            let _rx = queue.submit(encoded.clone(), Want::POOLED, Priority::Online, None);
            // next_batch blocks on an empty queue: take batches only while inputs wait.
            while queue.depths() != (0, 0) {
                if queue.next_batch().is_none() {
                    break;
                }
            }
        })
    });

    // The native CPU path's fused kernels, at MiniLM's sizes (72-row blocks of the FFN).
    let mut inter: Vec<f32> = (0..72 * 1536)
        .map(|i| ((i % 1000) as f32 - 500.0) / 200.0)
        .collect();
    let bias = vec![0.01f32; 1536];
    c.bench_function("kernel: bias + GELU (erf), 72 x 1536", |b| {
        b.iter(|| elementwise::bias_act(&mut inter, &bias, Pointwise::Gelu))
    });
    let mut scores: Vec<f32> = (0..12 * 64 * 64).map(|i| (i % 77) as f32 / 10.0).collect();
    c.bench_function("kernel: scaled softmax, 12 heads x 64 x 64", |b| {
        b.iter(|| elementwise::scaled_softmax_rows(&mut scores, 64, 64, 0.17))
    });
    let (m_rows, k, n) = (512, 384, 1536);
    let a: Vec<f32> = (0..m_rows * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let w = PackedWeights::new((0..k * n).map(|i| (i % 7) as f32 * 0.01).collect(), k, n);
    let mut out = vec![0f32; m_rows * n];
    let mut group = c.benchmark_group("kernel");
    group.throughput(criterion::Throughput::Elements((2 * m_rows * k * n) as u64));
    group.bench_function(
        "linear 512 x 384 x 1536 + bias + GELU (elements = FLOP)",
        |b| {
            b.iter(|| {
                matmul::linear(
                    &mut out,
                    &a,
                    m_rows,
                    &w,
                    Epilogue {
                        activation: Pointwise::Gelu,
                        ..Epilogue::bias(&bias)
                    },
                )
            })
        },
    );
    // The same product in FP16 (`--dtype float16`) where the CPU has AVX512-FP16, and the
    // shapes of all-mpnet-base-v2's FFN in both precisions.
    for (m_rows, k, n) in [(512, 384, 1536), (1152, 768, 3072), (1152, 3072, 768)] {
        let a: Vec<f32> = (0..m_rows * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let plain: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
        let mut out = vec![0f32; m_rows * n];
        let bias = vec![0.01f32; n];
        group.throughput(criterion::Throughput::Elements((2 * m_rows * k * n) as u64));
        for (name, w) in [
            ("f32", PackedWeights::new(plain.clone(), k, n)),
            ("f16", PackedWeights::new_half(plain.clone(), k, n)),
        ] {
            if name == "f16" && !spotinfer::model::cpu::half::available() {
                continue;
            }
            group.bench_function(format!("linear {name} {m_rows} x {k} x {n} + bias"), |b| {
                b.iter(|| matmul::linear(&mut out, &a, m_rows, &w, Epilogue::bias(&bias)))
            });
        }
    }
    group.finish();

    let st = model::SentenceTransformerConfig::read(&files).expect("st config");
    let m = model::load(&files, &st, &LoadOptions::cpu()).expect("load");
    let mut shapes = Vec::new();
    let mut short = PackedBatch::with_capacity(1, 8);
    short.push(
        &encoded
            .iter()
            .find(|e| e.ids.len() <= 12)
            .expect("a query")
            .ids,
        &[],
    );
    shapes.push(("forward 1 short query", short));
    let mut long = PackedBatch::with_capacity(1, 256);
    long.push(
        &encoded
            .iter()
            .find(|e| e.ids.len() == 256)
            .expect("a passage")
            .ids,
        &[],
    );
    shapes.push(("forward 1 passage (256 tokens)", long));
    let mut mixed = PackedBatch::with_capacity(32, 4096);
    for e in encoded.iter().take(32) {
        mixed.push(&e.ids, &e.type_ids);
    }
    shapes.push(("forward 32 mixed corpus texts", mixed));
    let mut group = c.benchmark_group("forward");
    group.sample_size(10);
    for (name, batch) in &shapes {
        group.bench_function(*name, |b| {
            let wants = vec![Want::POOLED; batch.len()];
            b.iter(|| m.run(batch, &wants, &mut || {}).expect("embed"))
        });
    }
    group.finish();
}

criterion_group!(micro, benches);
criterion_main!(micro);
