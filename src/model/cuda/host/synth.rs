//! Synthetic models for the whole-model self-check (`spotinfer selftest`): a test fixture
//! (`tests/fixtures/tiny-*`) with its hidden size scaled so the head dim is one the fused
//! kernels have (the fixtures use 8), and fresh random weights.
//!
//! Why rescale instead of new fixtures: every family's tensor names and config keys stay the
//! family's own (the loaders run unchanged), and the only shape that changes is the hidden
//! width: every tensor dimension equal to the old hidden size (or three times it, a fused QKV)
//! becomes the new one; intermediate sizes, vocabularies and position tables stay. The weights
//! are random (deterministic per name), so every head differs: a kernel that mixed heads up
//! would show.

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// Config keys that hold the hidden width (families name it differently).
const HIDDEN_KEYS: [&str; 4] = ["hidden_size", "n_embd", "dim", "d_model"];
const HEAD_KEYS: [&str; 3] = ["num_attention_heads", "n_head", "n_heads"];
/// Sentence-transformers module configs that repeat the width.
const MODULE_KEYS: [&str; 3] = ["word_embedding_dimension", "in_features", "out_features"];

fn io(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

fn first_usize(cfg: &serde_json::Value, keys: &[&str]) -> Option<usize> {
    keys.iter()
        .find_map(|k| cfg.get(*k).and_then(serde_json::Value::as_u64))
        .map(|v| v as usize)
}

/// The new hidden size for `head_dim` and the old one, from a config.json.
pub fn hidden_sizes(cfg: &serde_json::Value, head_dim: usize) -> Result<(usize, usize), String> {
    let old = first_usize(cfg, &HIDDEN_KEYS).ok_or("config.json has no hidden size")?;
    let heads = first_usize(cfg, &HEAD_KEYS).ok_or("config.json has no head count")?;
    if cfg.get("head_dim").is_some() {
        return Err("an explicit head_dim (decoder families) is not rescaled".into());
    }
    Ok((old, heads * head_dim))
}

/// Rewrites the width keys of a JSON config (top level) from `old` to `new`.
fn rescale_json(v: &mut serde_json::Value, keys: &[&str], old: usize, new: usize) {
    if let Some(map) = v.as_object_mut() {
        for k in keys {
            if let Some(x) = map.get_mut(*k) {
                if x.as_u64() == Some(old as u64) {
                    *x = serde_json::Value::from(new);
                }
            }
        }
    }
}

fn is_norm(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("norm") || n.contains("_ln.") || n.starts_with("ln.") || n.contains(".ln.")
}

/// Deterministic values in [-a, a) for a tensor (SplitMix64 seeded by its name).
fn values(name: &str, n: usize, a: f32, offset: f32) -> Vec<f32> {
    let mut s = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let u = (z >> 11) as f64 / (1u64 << 53) as f64;
            offset + ((u * 2.0 - 1.0) * f64::from(a)) as f32
        })
        .collect()
}

/// Random weights for one tensor of the new shape: unit-variance-preserving matrices, norm
/// weights near 1, small biases.
fn init(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    if name.contains("relative_attention_bias") {
        return values(name, n, 1.0, 0.0);
    }
    match shape {
        [_] if is_norm(name) && !name.ends_with("bias") && !name.ends_with("beta") => {
            values(name, n, 0.2, 1.0)
        }
        [_] => values(name, n, 0.1, 0.0),
        _ => {
            let fan_in = shape.last().copied().unwrap_or(1).max(1);
            values(name, n, (3.0 / fan_in as f32).sqrt(), 0.0)
        }
    }
}

/// Rewrites one safetensors file: dims equal to `old` (or `3 old`) become `new` (`3 new`),
/// except MPNet's `[buckets, heads]` bias table; values are fresh random F32.
fn rescale_safetensors(src: &Path, dst: &Path, old: usize, new: usize) -> Result<(), String> {
    let bytes = std::fs::read(src).map_err(|e| io(src, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| io(src, e))?;
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let shape: Vec<usize> = if name.contains("relative_attention_bias") {
            view.shape().to_vec()
        } else {
            view.shape()
                .iter()
                .map(|&d| match d {
                    d if d == old => new,
                    d if d == 3 * old => 3 * new,
                    d => d,
                })
                .collect()
        };
        let data = init(&name, &shape)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        owned.push((name, shape, data));
    }
    let views = owned
        .iter()
        .map(|(n, s, d)| {
            TensorView::new(Dtype::F32, s.clone(), d)
                .map(|v| (n.clone(), v))
                .map_err(|e| io(src, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, None, dst).map_err(|e| io(dst, e))
}

/// Writes `fixture` rescaled to heads of `head_dim` into `out` (created). Returns the new
/// hidden size.
pub fn synthesize(fixture: &Path, out: &Path, head_dim: usize) -> Result<usize, String> {
    let cfg_path = fixture.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| io(&cfg_path, e))?;
    let mut cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| io(&cfg_path, e))?;
    let (old, new) = hidden_sizes(&cfg, head_dim)?;
    rescale_json(&mut cfg, &HIDDEN_KEYS, old, new);
    copy_dir(fixture, out, old, new)?;
    let cfg_text = serde_json::to_string_pretty(&cfg).map_err(|e| io(&cfg_path, e))?;
    std::fs::write(out.join("config.json"), cfg_text).map_err(|e| io(out, e))?;
    Ok(new)
}

fn copy_dir(src: &Path, dst: &Path, old: usize, new: usize) -> Result<(), String> {
    std::fs::create_dir_all(dst).map_err(|e| io(dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| io(src, e))? {
        let entry = entry.map_err(|e| io(src, e))?;
        let (from, name) = (entry.path(), entry.file_name());
        let to = dst.join(&name);
        let name = name.to_string_lossy();
        if from.is_dir() {
            copy_dir(&from, &to, old, new)?;
        } else if name.ends_with(".safetensors") {
            rescale_safetensors(&from, &to, old, new)?;
        } else if name.ends_with(".pt") || name.ends_with(".bin") {
            return Err(format!(
                "{}: pickled weights are not rescaled",
                from.display()
            ));
        } else if name == "config.json" {
            // Module configs (1_Pooling, 2_Dense); the top-level one is rewritten by the caller.
            let text = std::fs::read_to_string(&from).map_err(|e| io(&from, e))?;
            let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| io(&from, e))?;
            rescale_json(&mut v, &MODULE_KEYS, old, new);
            let text = serde_json::to_string_pretty(&v).map_err(|e| io(&from, e))?;
            std::fs::write(&to, text).map_err(|e| io(&to, e))?;
        } else if name != "reference.json" && name != "README.md" {
            std::fs::copy(&from, &to).map_err(|e| io(&from, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{self, LoadOptions, PackedBatch, SentenceTransformerConfig, Want};

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// Every rescaled encoder fixture loads with its family's own loader and runs a forward
    /// pass on the CPU with the new width.
    #[test]
    fn rescaled_fixtures_load_and_run() {
        let tmp = std::env::temp_dir().join(format!("spotinfer-synth-{}", std::process::id()));
        for (name, want_hidden) in [
            ("tiny-bert", 256),
            ("tiny-bert-dense", 256),
            ("tiny-bert-classifier", 256),
            ("tiny-xlm-roberta", 256),
            ("tiny-mpnet", 256),
            ("tiny-distilbert", 256),
            ("tiny-modernbert", 256),
            ("tiny-nomic", 256),
            ("tiny-gte", 256),
        ] {
            let out = tmp.join(name);
            let hidden = synthesize(&fixture(name), &out, 64).unwrap();
            assert_eq!(hidden, want_hidden, "{name}");
            let files = model::resolve::resolve_local(&out).unwrap();
            let st = SentenceTransformerConfig::read(&files).unwrap();
            let m = model::load(&files, &st, &LoadOptions::cpu()).unwrap();
            assert_eq!(m.summary().hidden_size, hidden, "{name}");
            let mut batch = PackedBatch::with_capacity(2, 40);
            batch.push(&[1, 5, 9, 3, 2], &[]);
            batch.push(&[1; 33], &[]);
            let want = if m.summary().available.pooled {
                Want::POOLED
            } else {
                Want::SCORES
            };
            let out = m.run(&batch, &[want, want], &mut || {}).unwrap();
            let v = out[0]
                .pooled
                .as_ref()
                .or(out[0].scores.as_ref())
                .unwrap()
                .clone();
            assert!(!v.is_empty() && v.iter().all(|x| x.is_finite()), "{name}");
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn decoder_configs_with_a_head_dim_are_refused() {
        let cfg = serde_json::json!({"hidden_size": 32, "num_attention_heads": 4, "head_dim": 16});
        assert!(hidden_sizes(&cfg, 64).is_err());
        let cfg = serde_json::json!({"dim": 32, "n_heads": 4});
        assert_eq!(hidden_sizes(&cfg, 32), Ok((32, 128)));
    }

    #[test]
    fn norm_weights_start_near_one() {
        let w = init("encoder.layer.0.output.LayerNorm.weight", &[64]);
        assert!(w.iter().all(|v| (0.8..=1.2).contains(v)));
        let b = init("encoder.layer.0.output.LayerNorm.bias", &[64]);
        assert!(b.iter().all(|v| v.abs() <= 0.1));
        let m = init("encoder.layer.0.output.dense.weight", &[32, 64]);
        let a = (3.0f32 / 64.0).sqrt();
        assert!(m.iter().all(|v| v.abs() <= a));
        assert_ne!(m[..32], m[32..64], "rows differ");
    }
}
