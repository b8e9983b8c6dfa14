//! Long inputs on the native CPU backend: a 4,096-token input through tiny decoders (causal
//! Qwen3; bidirectional Gemma3 with full and sliding layers) must never hold a
//! `length x length` score matrix. Peak resident memory (VmHWM, reset through
//! /proc/self/clear_refs) grows by far less than one head's 4096 x 4096 F32 matrix (64 MiB);
//! the blocked kernel's result does not depend on the query block; and the model's outputs
//! equal the reference backend's, which does build the full matrices.
//!
//! One test function: the measurement is per process, so nothing may run beside it.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use spotinfer::model::cpu::attention::{attention_in_blocks, Shape};
use spotinfer::model::cpu::simd::Simd;
use spotinfer::model::layers::Mask;
use spotinfer::model::{self, CpuBackend, LoadOptions, PackedBatch, ResolveOptions, Want};

const LEN: usize = 4096;
const MIB: u64 = 1 << 20;

/// A `/proc/self/status` field in bytes.
fn status_bytes(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("{key} in /proc/self/status"))
}

/// Peak resident bytes while `f` runs, above the resident bytes before it. The peak is reset
/// first where the kernel allows it; otherwise the lifetime peak overstates the growth, which
/// can only make the assertion stricter.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, u64) {
    // Freed heap pages of earlier steps would otherwise be reused without raising the RSS.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_bytes("VmRSS:");
    let out = f();
    let peak = status_bytes("VmHWM:");
    (out, peak.saturating_sub(before))
}

fn copy_dir(from: &Path, to: &Path) {
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

/// The fixture with `max_position_embeddings` raised: these models rotate (RoPE), no weight
/// depends on the number of positions.
fn with_positions(name: &str, positions: usize) -> PathBuf {
    let src = repo_root().join("tests/fixtures").join(name);
    let dir = std::env::temp_dir().join(format!("spotinfer-long-{name}-{}", std::process::id()));
    copy_dir(&src, &dir);
    let mut cfg = read_json(&src.join("config.json"));
    cfg["max_position_embeddings"] = positions.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).expect("config");
    dir
}

fn load(dir: &Path, backend: CpuBackend) -> Box<dyn model::Model> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let files = rt
        .block_on(model::resolve(&ResolveOptions {
            model_id: dir.display().to_string(),
            revision: "main".into(),
            cache_dir: None,
            progress: false,
        }))
        .expect("resolve");
    let st = model::SentenceTransformerConfig::read(&files).expect("st config");
    let opts = LoadOptions {
        cpu_backend: backend,
        ..LoadOptions::cpu()
    };
    model::load(&files, &st, &opts).expect("load")
}

fn one(ids: &[u32]) -> PackedBatch {
    let mut b = PackedBatch::with_capacity(1, ids.len());
    b.push(ids, &[]);
    b
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn check_model(name: &str) {
    let dir = with_positions(name, 2 * LEN);
    let cfg = read_json(&dir.join("config.json"));
    let heads = cfg["num_attention_heads"].as_u64().expect("heads");
    let ids: Vec<u32> = (0..LEN).map(|i| ((i * 37 + 11) % 997) as u32).collect();
    let want = Want::POOLED.union(Want::TOKENS);

    let m = load(&dir, CpuBackend::Native);
    // Start the thread pool and its scratch on a short input first.
    m.run(&one(&ids[..64]), &[want], &mut || {})
        .expect("warm-up");
    let t = std::time::Instant::now();
    let (native, growth) = peak_growth(|| m.run(&one(&ids), &[want], &mut || {}));
    let native = native.expect("4096 tokens on the native backend");
    let took = t.elapsed();
    let matrix = (LEN * LEN * 4) as u64;
    eprintln!(
        "{name}: {LEN} tokens on native-cpu in {took:.2?}: peak RSS +{:.1} MiB \
         (one head's {LEN}x{LEN} F32 scores: {} MiB, all {heads} heads: {} MiB)",
        growth as f64 / MIB as f64,
        matrix / MIB,
        heads * matrix / MIB
    );
    assert!(
        growth < matrix / 4,
        "{name}: peak RSS grew by {growth} bytes on a {LEN}-token input"
    );
    drop(m);

    let m = load(&dir, CpuBackend::Reference);
    let (reference, growth) = peak_growth(|| m.run(&one(&ids), &[want], &mut || {}));
    let reference = reference.expect("4096 tokens on the reference backend");
    eprintln!(
        "{name}: the reference backend (full score matrices) on the same input: peak RSS +{:.1} MiB",
        growth as f64 / MIB as f64
    );
    let (a, b) = (&native[0], &reference[0]);
    let c = cosine(
        a.pooled.as_ref().expect("pooled"),
        b.pooled.as_ref().expect("pooled"),
    );
    assert!(c >= 0.9999, "{name}: pooled cosine {c}");
    let (ta, tb) = (
        a.tokens.as_ref().expect("tokens"),
        b.tokens.as_ref().expect("tokens"),
    );
    let h = ta.len() / LEN;
    for t in 0..LEN {
        let c = cosine(&ta[t * h..(t + 1) * h], &tb[t * h..(t + 1) * h]);
        assert!(c >= 0.9999, "{name}: token {t} cosine {c}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The blocked kernel gives the same context whatever the query block.
fn check_blocks() {
    let (heads, kv_heads, d) = (4, 2, 16);
    let offsets = [0, LEN];
    let qkv = values(LEN * (heads + 2 * kv_heads) * d, 7);
    for mask in [
        Mask::causal(None),
        Mask::causal(Some(15)),
        Mask::FULL,
        Mask::window(8),
    ] {
        let shape = Shape {
            heads,
            kv_heads,
            head_dim: d,
            scale: 0.25,
            mask,
        };
        let run = |block: usize| {
            let mut ctx = vec![f32::NAN; LEN * heads * d];
            attention_in_blocks(Simd::detect(), &qkv, &mut ctx, &offsets, shape, None, block);
            ctx
        };
        let base = run(64);
        for block in [16, 197] {
            let other = run(block);
            let worst = base
                .iter()
                .zip(&other)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-6,
                "{mask:?}: block {block} differs from block 64 by {worst}"
            );
        }
    }
}

#[test]
fn a_4096_token_input_never_holds_a_length_squared_matrix() {
    check_model("tiny-qwen3");
    check_model("tiny-gemma3");
    check_blocks();
}
