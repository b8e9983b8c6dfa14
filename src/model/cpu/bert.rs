//! The BERT family on the CPU without a tensor library: F32 weights in plain vectors, the `gemm`
//! crate for the products, and fused kernels for everything else.
//!
//! Why not candle here: the profile of candle's CPU path (issue 6) spent most of its time outside
//! the matrix products — scalar `erf` and `exp`, one fresh zeroed allocation per op, unfused
//! element-wise maps. This path:
//! - packs the tokens of all sequences (no padding in any dense layer);
//! - packs each weight matrix once at load and applies bias, residual, GELU and layer norm to
//!   each block of output rows while it is in cache (`matmul.rs`);
//! - fuses scale + softmax, with vectorised polynomial `exp`/`erf`, and divides attention's
//!   output rows by the softmax sums (d values a row) instead of normalising the probabilities;
//! - reuses its activation buffers across calls (no page faults or zeroing per batch);
//! - runs attention per sequence and head, in parallel, reading Q, K and V in place through
//!   strides (no gathers, no padding, no mask).

use std::path::PathBuf;
use std::sync::Mutex;

use rayon::prelude::*;

use super::kernels;
use super::matmul::{self, linear, Activation, Epilogue, PackedWeights};
use crate::model::bert::{BertConfig, HiddenAct};
use crate::model::pooling::pool_host;
use crate::model::{EmbeddingModel, ModelError, PackedBatch, Pooling};

/// A dense layer `y = x W + b`, `W` packed for the micro-kernel.
struct Dense {
    w: PackedWeights,
    b: Vec<f32>,
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    inter: Dense,
    output: Dense,
    out_norm: Norm,
}

/// Activation buffers, grown on demand and reused.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    h: Vec<f32>,
    inter: Vec<f32>,
}

fn take(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

pub struct CpuBert {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    config: BertConfig,
    heads: usize,
    head_dim: usize,
    eps: f32,
    scratch: Mutex<Scratch>,
    /// Separate buffers for a preemptible (offline) batch, so online batches can run between
    /// its layers without touching its activations.
    job_scratch: Mutex<Scratch>,
}

/// Reads named tensors from (possibly sharded) safetensors files as F32.
struct Weights {
    maps: Vec<memmap2::Mmap>,
    paths: Vec<PathBuf>,
    prefix: String,
}

impl Weights {
    fn open(paths: &[PathBuf]) -> Result<Self, ModelError> {
        let mut maps = Vec::with_capacity(paths.len());
        for p in paths {
            let f = std::fs::File::open(p).map_err(|e| ModelError::io(p, e))?;
            // SAFETY: read-only map; the weights are copied out before the map is dropped.
            maps.push(unsafe { memmap2::Mmap::map(&f) }.map_err(|e| ModelError::io(p, e))?);
        }
        let mut w = Self {
            maps,
            paths: paths.to_vec(),
            prefix: String::new(),
        };
        if w.find("embeddings.word_embeddings.weight").is_none() {
            w.prefix = "bert.".into();
        }
        Ok(w)
    }

    fn find(&self, name: &str) -> Option<(usize, Vec<usize>, safetensors::Dtype, &[u8])> {
        let full = format!("{}{name}", self.prefix);
        for (i, m) in self.maps.iter().enumerate() {
            let st = safetensors::SafeTensors::deserialize(m).ok()?;
            if let Ok(t) = st.tensor(&full) {
                let shape = t.shape().to_vec();
                let dtype = t.dtype();
                let range = t.data().as_ptr() as usize - m.as_ptr() as usize;
                let len = t.data().len();
                return Some((i, shape, dtype, &m[range..range + len]));
            }
        }
        None
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (file, got, dtype, bytes) = self.find(name).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "tensor {}{name} is missing from the safetensors",
                self.prefix
            ))
        })?;
        if got != shape {
            return Err(ModelError::Corrupt {
                file: self.paths[file].display().to_string(),
                reason: format!("{name} has shape {got:?}, the config implies {shape:?}"),
            });
        }
        let out: Vec<f32> = match dtype {
            safetensors::Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "{name} has dtype {other:?}"
                )));
            }
        };
        Ok(out)
    }

    /// Either of two names (old checkpoints say gamma/beta).
    fn get_any(&self, names: [&str; 2], shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        if self.find(names[0]).is_some() {
            self.get(names[0], shape)
        } else {
            self.get(names[1], shape)
        }
    }

    fn norm(&self, prefix: &str, size: usize) -> Result<Norm, ModelError> {
        Ok(Norm {
            gamma: self.get_any(
                [&format!("{prefix}.weight"), &format!("{prefix}.gamma")],
                &[size],
            )?,
            beta: self.get_any(
                [&format!("{prefix}.bias"), &format!("{prefix}.beta")],
                &[size],
            )?,
        })
    }

    /// Loads `[out, in]` weights (one or several stacked along `out`) as a transposed dense layer.
    fn dense(&self, prefixes: &[String], inp: usize, out_each: usize) -> Result<Dense, ModelError> {
        let out = out_each * prefixes.len();
        let mut w = vec![0f32; inp * out];
        let mut b = Vec::with_capacity(out);
        for (k, p) in prefixes.iter().enumerate() {
            let wk = self.get(&format!("{p}.weight"), &[out_each, inp])?;
            for o in 0..out_each {
                for i in 0..inp {
                    w[i * out + k * out_each + o] = wk[o * inp + i];
                }
            }
            b.extend(self.get(&format!("{p}.bias"), &[out_each])?);
        }
        Ok(Dense {
            w: PackedWeights::new(w, inp, out),
            b,
        })
    }
}

/// Raw pointer that may cross threads: each attention task writes its own rows and columns.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: tasks write disjoint regions; see `attention`.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// A method call (not `.0`) so closures capture the whole Send wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `c[m, n] = a[m, k] · b[k, n]` through the `gemm` crate, one thread: rows of `a` and `c` at
/// strides `lda`, `ldc`; element (kk, j) of `b` at `b[kk * b_row + j * b_col]`.
///
/// # Safety
/// Every address so described must be valid (`c` writable, untouched by others meanwhile).
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    b_row: usize,
    b_col: usize,
) {
    // SAFETY: the caller's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            false,
            a,
            1,
            lda as isize,
            b,
            b_col as isize,
            b_row as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    };
}

impl CpuBert {
    pub fn load(paths: &[PathBuf], config: BertConfig) -> Result<Self, ModelError> {
        if config
            .position_embedding_type
            .as_deref()
            .is_some_and(|k| k != "absolute")
        {
            return Err(ModelError::Unsupported(
                "only absolute position embeddings are supported for bert".into(),
            ));
        }
        let h = config.hidden_size;
        if !h.is_multiple_of(config.num_attention_heads) {
            return Err(ModelError::Unsupported(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                config.num_attention_heads
            )));
        }
        let w = Weights::open(paths)?;
        if w.find("embeddings.word_embeddings.weight").is_none() {
            return Err(ModelError::Unsupported(
                "no embeddings.word_embeddings.weight (with or without a `bert.` prefix): not a BERT checkpoint".into(),
            ));
        }
        let i = config.intermediate_size;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(Layer {
                qkv: w.dense(
                    &["query", "key", "value"].map(|n| format!("{p}.attention.self.{n}")),
                    h,
                    h,
                )?,
                attn_out: w.dense(&[format!("{p}.attention.output.dense")], h, h)?,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                inter: w.dense(&[format!("{p}.intermediate.dense")], h, i)?,
                output: w.dense(&[format!("{p}.output.dense")], i, h)?,
                out_norm: w.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        Ok(Self {
            word: w.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position: w.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type: w.get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, h],
            )?,
            emb_norm: w.norm("embeddings.LayerNorm", h)?,
            layers,
            heads: config.num_attention_heads,
            head_dim: h / config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            config,
            scratch: Mutex::new(Scratch::default()),
            job_scratch: Mutex::new(Scratch::default()),
        })
    }

    /// Each token's embedding row: word + position + token type, then layer norm.
    fn embeddings(&self, batch: &PackedBatch, x: &mut [f32]) -> Result<(), ModelError> {
        let h = self.config.hidden_size;
        for (t, row) in x.chunks_exact_mut(h).enumerate() {
            let (id, pos, ty) = (
                batch.ids[t] as usize,
                batch.positions[t] as usize,
                batch.type_ids[t] as usize,
            );
            if id >= self.config.vocab_size
                || pos >= self.config.max_position_embeddings
                || ty >= self.config.type_vocab_size
            {
                return Err(ModelError::Unsupported(format!(
                    "token {id} / position {pos} / type {ty} is outside the model's tables"
                )));
            }
            let (w, p, ty) = (
                &self.word[id * h..(id + 1) * h],
                &self.position[pos * h..(pos + 1) * h],
                &self.token_type[ty * h..(ty + 1) * h],
            );
            for k in 0..h {
                row[k] = w[k] + p[k] + ty[k];
            }
        }
        kernels::layer_norm_rows(x, &self.emb_norm.gamma, &self.emb_norm.beta, self.eps);
        Ok(())
    }

    /// Self-attention of every sequence and head, reading `qkv` `[T, 3h]` in place and writing
    /// `ctx` `[T, h]`.
    fn attention(&self, qkv: &[f32], ctx: &mut [f32], offsets: &[usize]) {
        let h = self.config.hidden_size;
        let (heads, d) = (self.heads, self.head_dim);
        let ctx_ptr = SharedMut(ctx.as_mut_ptr());
        let tasks: Vec<(usize, usize)> = (0..offsets.len() - 1)
            .flat_map(|s| (0..heads).map(move |hd| (s, hd)))
            .collect();
        tasks.par_iter().for_each(|&(s, hd)| {
            let (start, len) = (offsets[s], offsets[s + 1] - offsets[s]);
            let head = &qkv[start * 3 * h + hd * d..];
            SCORES.with(|cell| {
                let mut scratch = cell.borrow_mut();
                // SAFETY: this task alone writes rows start..start+len, columns hd*d..+d of ctx.
                let out = unsafe { ctx_ptr.get().add(start * h + hd * d) };
                // SAFETY: as above; `head` starts this sequence's q at its head's columns.
                let fast = d % 16 == 0 && unsafe { self.head_fast(head, len, &mut scratch, out) };
                if !fast {
                    // SAFETY: as above.
                    unsafe { self.head_gemm(head, len, &mut scratch, out) };
                }
            });
        });
    }

    /// One sequence and head with the SIMD kernel of `matmul` (head_dim a multiple of 16): the
    /// keys are transposed into 16-key panels (8 x 8 blocks in registers), scores are
    /// `[len, len rounded up to 16]`.
    /// Returns false, doing nothing, without AVX2+FMA.
    ///
    /// # Safety
    /// `head` must hold `len` rows of `3h` (q, k, v of this head at columns 0, h, 2h) and `out`
    /// `len` rows of stride h and `d` writable values that no one else touches meanwhile.
    unsafe fn head_fast(
        &self,
        head: &[f32],
        len: usize,
        scratch: &mut Vec<f32>,
        out: *mut f32,
    ) -> bool {
        let (h, d) = (self.config.hidden_size, self.head_dim);
        let ld = len.next_multiple_of(16);
        let buf = take(scratch, len * ld + d * ld + len);
        let (scores, rest) = buf.split_at_mut(len * ld);
        let (kt, sums) = rest.split_at_mut(d * ld);
        let v = &head[2 * h..];
        // SAFETY: key j's d features start at head[j * 3h + h] (the caller's `head`); kt holds
        // d * ld. Then q rows are 3h apart with d values each; kt holds ld/16 panels of d x 16;
        // scores holds len rows of ld; then scores rows (len values each) times v rows (3h
        // apart, d values) into out (caller's guarantee).
        unsafe {
            // Panel p holds keys 16p..16p+16: row kk is feature kk of those keys (zero past len).
            if !matmul::pack_key_panels(kt.as_mut_ptr(), head.as_ptr().add(h), 3 * h, len, d) {
                return false;
            }
            let q = head.as_ptr();
            let simd = matmul::Simd::detect();
            if !matmul::small_product(
                simd,
                scores.as_mut_ptr(),
                ld,
                q,
                3 * h,
                len,
                d,
                kt.as_ptr(),
                16,
                d * 16,
                ld / 16,
            ) {
                return false;
            }
            // Unnormalised: each output row is divided by its sum after the product, d values
            // per row instead of len.
            kernels::scaled_exp_rows(scores, len, ld, 1.0 / (d as f32).sqrt(), sums);
            matmul::small_product(
                simd,
                out,
                h,
                scores.as_ptr(),
                ld,
                len,
                len,
                v.as_ptr(),
                3 * h,
                16,
                d / 16,
            );
            for (i, sum) in sums.iter().enumerate() {
                let row = std::slice::from_raw_parts_mut(out.add(i * h), d);
                kernels::scale(row, 1.0 / sum);
            }
        }
        true
    }

    /// One sequence and head with the `gemm` crate (any head_dim, any CPU).
    ///
    /// # Safety
    /// As for `head_fast`.
    unsafe fn head_gemm(&self, head: &[f32], len: usize, scratch: &mut Vec<f32>, out: *mut f32) {
        let (h, d) = (self.config.hidden_size, self.head_dim);
        let scores = take(scratch, len * len);
        let (q, k, v) = (head, &head[h..], &head[2 * h..]);
        // SAFETY: q, k, v rows are `3h` apart and `d` wide within `head`; `scores` holds
        // len*len; `out` as the caller guarantees.
        unsafe {
            // scores = q · kᵀ (k read with its strides swapped), then scores · v.
            product(
                len,
                len,
                d,
                scores.as_mut_ptr(),
                len,
                q.as_ptr(),
                3 * h,
                k.as_ptr(),
                1,
                3 * h,
            );
            kernels::scaled_softmax_rows(scores, len, len, 1.0 / (d as f32).sqrt());
            product(
                len,
                d,
                len,
                out,
                h,
                scores.as_ptr(),
                len,
                v.as_ptr(),
                3 * h,
                1,
            );
        }
    }

    /// Last hidden states `[T, h]`, into the scratch `x` buffer.
    fn forward_into(
        &self,
        batch: &PackedBatch,
        s: &mut Scratch,
        at_yield_point: &mut dyn FnMut(),
    ) -> Result<usize, ModelError> {
        let t = batch.ids.len();
        let h = self.config.hidden_size;
        let i = self.config.intermediate_size;
        let x = take(&mut s.x, t * h);
        self.embeddings(batch, x)?;
        let act = match self.config.hidden_act {
            HiddenAct::Gelu => Activation::Gelu,
            HiddenAct::GeluApproximate => Activation::GeluTanh,
            HiddenAct::Relu => Activation::Relu,
        };
        for layer in &self.layers {
            let qkv = take(&mut s.qkv, t * 3 * h);
            linear(qkv, x, t, &layer.qkv.w, Epilogue::bias(&layer.qkv.b));
            let ctx = take(&mut s.ctx, t * h);
            self.attention(qkv, ctx, &batch.offsets);
            // Yield points split each layer at its GEMMs (the FFN GEMMs are a third of the
            // layer each): a waiting online request never waits for a whole layer.
            at_yield_point();
            // h1 = LN(ctx Wo + bo + x)
            let h1 = take(&mut s.h, t * h);
            linear(
                h1,
                ctx,
                t,
                &layer.attn_out.w,
                Epilogue {
                    residual: Some(x),
                    norm: Some((&layer.attn_norm.gamma, &layer.attn_norm.beta, self.eps)),
                    ..Epilogue::bias(&layer.attn_out.b)
                },
            );
            at_yield_point();
            // inter = act(h1 Wi + bi)
            let inter = take(&mut s.inter, t * i);
            linear(
                inter,
                h1,
                t,
                &layer.inter.w,
                Epilogue {
                    activation: act,
                    ..Epilogue::bias(&layer.inter.b)
                },
            );
            at_yield_point();
            // x = LN(inter Wout + bout + h1)
            linear(
                x,
                inter,
                t,
                &layer.output.w,
                Epilogue {
                    residual: Some(h1),
                    norm: Some((&layer.out_norm.gamma, &layer.out_norm.beta, self.eps)),
                    ..Epilogue::bias(&layer.output.b)
                },
            );
            at_yield_point();
        }
        Ok(t)
    }
}

impl EmbeddingModel for CpuBert {
    fn embed(&self, batch: &PackedBatch, pooling: Pooling) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.forward_into(batch, &mut scratch, &mut || {})?;
        let h = self.config.hidden_size;
        Ok(pool_host(&scratch.x[..t * h], h, &batch.offsets, pooling))
    }

    fn embed_preemptible(
        &self,
        batch: &PackedBatch,
        pooling: Pooling,
        at_yield_point: &mut dyn FnMut(),
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut scratch = self.job_scratch.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.forward_into(batch, &mut scratch, at_yield_point)?;
        let h = self.config.hidden_size;
        Ok(pool_host(&scratch.x[..t * h], h, &batch.offsets, pooling))
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn pads_to_longest(&self) -> bool {
        false // dense layers on the packed tokens, attention per sequence
    }

    fn parameter_bytes(&self) -> usize {
        let dense: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.qkv, &l.attn_out, &l.inter, &l.output]
                    .iter()
                    .map(|d| d.w.bytes() / 4 + d.b.len())
                    .sum::<usize>()
                    + 4 * self.config.hidden_size
            })
            .sum();
        (dense
            + self.word.len()
            + self.position.len()
            + self.token_type.len()
            + 2 * self.config.hidden_size)
            * 4
    }
}
