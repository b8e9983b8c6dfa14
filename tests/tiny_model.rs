//! The model layer against transformers' float64 outputs for a random tiny BERT: tokenisation,
//! packed mixed-length batches (the padded-attention gather/scatter path) and all three poolings.

mod common;

use common::*;
use spotinfer::model::{self, CpuBackend, PackedBatch, Pooling, ResolveOptions};
use spotinfer::tokenize::{EncodeOptions, Input, Tokenizers};
use tokenizers::TruncationDirection;

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[tokio::test]
async fn tiny_bert_matches_transformers_in_one_mixed_batch() {
    let dir = tiny_model_dir();
    let files = model::resolve(&ResolveOptions {
        model_id: dir.display().to_string(),
        revision: "main".into(),
        cache_dir: None,
        progress: false,
    })
    .await
    .expect("resolve the fixture folder");
    let st = model::SentenceTransformerConfig::read(&files).expect("st config");
    assert_eq!(st.pooling, Some(Pooling::Cls));
    assert_eq!(st.max_seq_length, Some(64));
    let vocab = load_model(&files, Pooling::Cls, CpuBackend::Native)
        .summary()
        .vocab_size;
    let tk = Tokenizers::from_file(&files.tokenizer, 64, vocab).expect("tokenizer");
    let reference = read_json(&dir.join("reference.json"));
    let items = reference["items"].as_array().expect("items");

    let opts = EncodeOptions {
        truncate: true,
        direction: TruncationDirection::Right,
        add_special_tokens: true,
    };
    let mut batch = PackedBatch::with_capacity(items.len(), 512);
    for (i, item) in items.iter().enumerate() {
        let text = item["text"].as_str().expect("text").trim().to_string();
        let enc = tk.encode(i, &Input::Text(text), opts).expect("encode");
        let want: Vec<u32> = item["input_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        assert_eq!(enc.ids, want, "token ids of item {i}");
        batch.push(&enc.ids, &enc.type_ids);
    }
    let lens: Vec<usize> = batch.offsets.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        lens.iter().min() < lens.iter().max(),
        "the batch must mix lengths: {lens:?}"
    );

    for (pooling, key) in [
        (Pooling::Cls, "cls"),
        (Pooling::Mean, "mean"),
        (Pooling::LastToken, "last"),
    ] {
        let m = load_model(&files, pooling, CpuBackend::Native);
        let got = embed(m.as_ref(), &batch);
        for (item, g) in items.iter().zip(&got) {
            let want = as_vec(&item[key]);
            let d = max_abs(g, &want);
            assert!(d < 1e-4, "{key} of {:?}: max abs diff {d}", item["id"]);
        }
        // One at a time gives the same vectors as the packed batch.
        for (i, g) in got.iter().enumerate() {
            let mut single = PackedBatch::with_capacity(1, 64);
            single.push(
                &batch.ids[batch.offsets[i]..batch.offsets[i + 1]],
                &batch.type_ids[batch.offsets[i]..batch.offsets[i + 1]],
            );
            let alone = embed(m.as_ref(), &single);
            assert!(max_abs(&alone[0], g) < 1e-5);
        }
    }
}

#[test]
fn over_long_inputs_are_refused_or_truncated_both_ways() {
    let dir = tiny_model_dir();
    let tk = Tokenizers::from_file(&dir.join("tokenizer.json"), 64, 2000).expect("tokenizer");
    let text = "the quick brown fox jumps over the lazy dog ".repeat(20);
    let strict = EncodeOptions {
        truncate: false,
        direction: TruncationDirection::Right,
        add_special_tokens: true,
    };
    let err = tk
        .encode(0, &Input::Text(text.clone()), strict)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("more than the model's maximum of 64"),
        "{err}"
    );
    let right = tk
        .encode(
            0,
            &Input::Text(text.clone()),
            EncodeOptions {
                truncate: true,
                ..strict
            },
        )
        .unwrap();
    let left = tk
        .encode(
            0,
            &Input::Text(text),
            EncodeOptions {
                truncate: true,
                direction: TruncationDirection::Left,
                ..strict
            },
        )
        .unwrap();
    assert_eq!(right.ids.len(), 64);
    assert_eq!(left.ids.len(), 64);
    // [CLS] first and [SEP] last either way: truncation keeps the special tokens.
    for ids in [&right.ids, &left.ids] {
        assert_eq!(ids[0], 2);
        assert_eq!(ids[63], 3);
    }
    assert_ne!(right.ids, left.ids);
}

#[tokio::test]
async fn native_and_candle_cpu_backends_agree_on_minilm() {
    use spotinfer::bench::corpus;
    let files = model::resolve(&ResolveOptions {
        model_id: test_model_dir().display().to_string(),
        revision: "main".into(),
        cache_dir: None,
        progress: false,
    })
    .await
    .expect("resolve");
    let tk = Tokenizers::from_file(&files.tokenizer, 256, 30522).unwrap();
    let opts = EncodeOptions {
        truncate: true,
        direction: TruncationDirection::Right,
        add_special_tokens: true,
    };
    // A mixed batch (queries and 256-token passages) exercises row blocks, column splits and
    // attention of every length.
    let mut batch = PackedBatch::with_capacity(40, 4096);
    for (i, t) in corpus::generate(40, corpus::SEED).into_iter().enumerate() {
        let e = tk.encode(i, &Input::Text(t), opts).unwrap();
        batch.push(&e.ids, &e.type_ids);
    }
    for pooling in [Pooling::Mean, Pooling::Cls, Pooling::LastToken] {
        let native = load_model(&files, pooling, CpuBackend::Native);
        let candle = load_model(&files, pooling, CpuBackend::Reference);
        let a = embed(native.as_ref(), &batch);
        let b = embed(candle.as_ref(), &batch);
        for (x, y) in a.iter().zip(&b) {
            let c = cosine(x, y);
            assert!(c > 0.99999, "{pooling:?}: cosine {c}");
            assert!(
                max_abs(x, y) < 2e-3,
                "{pooling:?}: max abs {}",
                max_abs(x, y)
            );
        }
    }
}

#[tokio::test]
async fn online_batches_inside_the_layers_of_a_job_batch_leave_both_correct() {
    let files = model::resolve(&ResolveOptions {
        model_id: tiny_model_dir().display().to_string(),
        revision: "main".into(),
        cache_dir: None,
        progress: false,
    })
    .await
    .expect("resolve");
    let m = load_model(&files, Pooling::Mean, CpuBackend::Native);
    let tk = Tokenizers::from_file(&files.tokenizer, 64, 2000).expect("tokenizer");
    let opts = EncodeOptions {
        truncate: true,
        direction: TruncationDirection::Right,
        add_special_tokens: true,
    };
    let batch_of = |texts: &[&str]| {
        let mut b = PackedBatch::with_capacity(texts.len(), 256);
        for (i, t) in texts.iter().enumerate() {
            let e = tk.encode(i, &Input::Text(t.to_string()), opts).unwrap();
            b.push(&e.ids, &e.type_ids);
        }
        b
    };
    let job = batch_of(&[
        "a long offline line about rivers and tea",
        "another one",
        "x",
    ]);
    let online = batch_of(&["an urgent online query"]);
    let job_alone = embed(m.as_ref(), &job);
    let online_alone = embed(m.as_ref(), &online);
    let mut interleaved = Vec::new();
    let job_preempted = embed_yielding(m.as_ref(), &job, &mut || {
        interleaved.push(embed(m.as_ref(), &online));
    });
    assert_eq!(
        interleaved.len(),
        8,
        "4 yield points (after attention, the output projection, the FFN up and down GEMMs) x 2 layers"
    );
    assert_eq!(job_preempted, job_alone);
    for o in interleaved {
        assert_eq!(o, online_alone);
    }
}
