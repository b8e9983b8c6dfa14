//! The reference backend: every layer as candle ops, on any device candle has (CPU, CUDA) and
//! any dtype (F32, F16, BF16). It is the oracle the native and fused backends are tested
//! against, and the CUDA path until the fused backend is verified on a GPU.
//!
//! Padding-free where it pays: the dense layers, which are ~90 % of the work at embedding
//! lengths, run on the packed `[tokens, hidden]` matrix of all sequences, so a batch mixing a
//! 5-token query with a 256-token passage costs 261 tokens, not 512. Attention runs per length
//! bucket (`attention.rs`).

pub mod attention;

use candle_core::{DType, Device, Tensor, D};

use self::attention::AttentionPlan;
use super::batch::PackedBatch;
use super::device::DeviceMemory;
use super::layers::{
    Activation, Attention, Backend, Buckets, Epilogue, Gate, NormKind, Post, Rope,
};
use super::weights::HostTensor;
use super::{ModelError, Pooling};

pub struct Reference {
    device: Device,
    dtype: DType,
}

pub struct RefLinear {
    /// `[out, in]`.
    weight: Tensor,
    bias: Option<Tensor>,
}

pub struct RefNorm {
    kind: NormKind,
    /// For RMS norms with an offset, `offset + w` already.
    weight: Tensor,
    bias: Tensor,
}

pub struct RefPlan {
    offsets: Vec<usize>,
    positions: Vec<u32>,
    attention: AttentionPlan,
}

pub struct RefRope {
    /// `[tokens, 1, rotary_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    rotary_dim: usize,
    interleaved: bool,
}

pub struct RefBias {
    table: Vec<f32>,
    buckets: Buckets,
}

impl Reference {
    pub fn new(device: Device, dtype: DType) -> Self {
        Self { device, dtype }
    }

    fn upload(&self, t: &HostTensor<'_>) -> Result<Tensor, ModelError> {
        Ok(
            Tensor::from_raw_buffer(&t.data, t.candle_dtype()?, &t.shape, &self.device)?
                .to_dtype(self.dtype)?,
        )
    }

    fn activate(&self, y: Tensor, a: Activation) -> candle_core::Result<Tensor> {
        match a {
            Activation::None => Ok(y),
            Activation::Relu => y.relu(),
            Activation::Gelu => y.gelu_erf(),
            Activation::GeluTanh => y.gelu(),
            Activation::Silu => y.silu(),
            Activation::Tanh => y.tanh(),
            Activation::Log1pRelu => (y.relu()? + 1.0)?.log(),
            Activation::Glu(g) => {
                let half = y.dim(D::Minus1)? / 2;
                let gate = y.narrow(D::Minus1, 0, half)?;
                let up = y.narrow(D::Minus1, half, half)?;
                let gate = match g {
                    Gate::Gelu => gate.gelu_erf()?,
                    Gate::GeluTanh => gate.gelu()?,
                    Gate::Silu => gate.silu()?,
                };
                gate.mul(&up)
            }
        }
    }

    fn apply_norm(&self, x: &Tensor, n: &RefNorm) -> candle_core::Result<Tensor> {
        match n.kind {
            NormKind::Layer { eps } => candle_nn::ops::layer_norm(x, &n.weight, &n.bias, eps),
            NormKind::Rms { eps, .. } => candle_nn::ops::rms_norm(x, &n.weight, eps),
        }
    }

    /// Rotates `[tokens, heads, d]` by the plan's angles.
    fn rotate(&self, x: &Tensor, r: &RefRope) -> candle_core::Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let half = r.rotary_dim / 2;
        let (rot, pass) = if r.rotary_dim < d {
            (
                x.narrow(D::Minus1, 0, r.rotary_dim)?,
                Some(x.narrow(D::Minus1, r.rotary_dim, d - r.rotary_dim)?),
            )
        } else {
            (x.clone(), None)
        };
        let (cos, sin) = (r.cos.to_dtype(x.dtype())?, r.sin.to_dtype(x.dtype())?);
        let rotated = if r.interleaved {
            let (t, h, _) = rot.dims3()?;
            let pairs = rot.reshape((t, h, half, 2))?;
            let a = pairs.narrow(3, 0, 1)?.squeeze(3)?;
            let b = pairs.narrow(3, 1, 1)?.squeeze(3)?;
            let ra = (a.broadcast_mul(&cos)? - b.broadcast_mul(&sin)?)?;
            let rb = (b.broadcast_mul(&cos)? + a.broadcast_mul(&sin)?)?;
            Tensor::stack(&[ra, rb], 3)?.reshape((t, h, r.rotary_dim))?
        } else {
            let a = rot.narrow(D::Minus1, 0, half)?;
            let b = rot.narrow(D::Minus1, half, half)?;
            let ra = (a.broadcast_mul(&cos)? - b.broadcast_mul(&sin)?)?;
            let rb = (b.broadcast_mul(&cos)? + a.broadcast_mul(&sin)?)?;
            Tensor::cat(&[ra, rb], D::Minus1)?
        };
        match pass {
            Some(p) => Tensor::cat(&[rotated, p], D::Minus1),
            None => Ok(rotated),
        }
    }
}

fn shape_error(what: &str, got: usize, want: usize) -> ModelError {
    ModelError::Device(format!("{what}: width {got}, expected {want}"))
}

impl Backend for Reference {
    type Act = Tensor;
    type Linear = RefLinear;
    type Norm = RefNorm;
    type Table = Tensor;
    type Plan = RefPlan;
    type Rope = RefRope;
    type Bias = RefBias;

    fn name(&self) -> &'static str {
        "reference"
    }

    fn dtype_name(&self) -> &'static str {
        super::dtype_name(self.dtype)
    }

    fn pads_to_longest(&self) -> bool {
        true
    }

    fn load_linear(
        &self,
        weights: &[HostTensor<'_>],
        bias: Option<&[HostTensor<'_>]>,
    ) -> Result<RefLinear, ModelError> {
        let parts = weights
            .iter()
            .map(|w| self.upload(w))
            .collect::<Result<Vec<_>, _>>()?;
        let weight = if parts.len() == 1 {
            parts
                .into_iter()
                .next()
                .ok_or_else(|| shape_error("linear", 0, 1))?
        } else {
            Tensor::cat(&parts, 0)?
        };
        let bias = match bias {
            Some(b) => {
                let parts = b
                    .iter()
                    .map(|t| self.upload(t))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(Tensor::cat(&parts, 0)?)
            }
            None => None,
        };
        Ok(RefLinear { weight, bias })
    }

    fn load_norm(
        &self,
        kind: NormKind,
        width: usize,
        weight: Option<HostTensor<'_>>,
        bias: Option<HostTensor<'_>>,
    ) -> Result<RefNorm, ModelError> {
        let mut w = match weight {
            Some(w) => self.upload(&w)?,
            None if matches!(kind, NormKind::Rms { offset, .. } if offset != 0.0) => {
                Tensor::zeros(width, self.dtype, &self.device)?
            }
            None => Tensor::ones(width, self.dtype, &self.device)?,
        };
        if let NormKind::Rms { offset, .. } = kind {
            if offset != 0.0 {
                w = (w.to_dtype(DType::F32)? + f64::from(offset))?.to_dtype(self.dtype)?;
            }
        }
        let b = match bias {
            Some(b) => self.upload(&b)?,
            None => Tensor::zeros(width, self.dtype, &self.device)?,
        };
        Ok(RefNorm {
            kind,
            weight: w,
            bias: b,
        })
    }

    fn load_table(&self, table: HostTensor<'_>) -> Result<Tensor, ModelError> {
        self.upload(&table)
    }

    fn load_bias(&self, table: HostTensor<'_>, buckets: Buckets) -> Result<RefBias, ModelError> {
        Ok(RefBias {
            table: table.to_f32()?,
            buckets,
        })
    }

    fn plan(&self, batch: &PackedBatch) -> Result<RefPlan, ModelError> {
        Ok(RefPlan {
            offsets: batch.offsets.clone(),
            positions: batch.positions.clone(),
            attention: AttentionPlan::new(&batch.offsets, &self.device)?,
        })
    }

    fn rope(&self, plan: &RefPlan, rope: &Rope) -> Result<RefRope, ModelError> {
        let half = rope.inv_freq.len();
        let (cos, sin) = rope.tables(&plan.offsets, &plan.positions);
        let t = plan.positions.len();
        Ok(RefRope {
            cos: Tensor::from_vec(cos, (t, 1, half), &self.device)?,
            sin: Tensor::from_vec(sin, (t, 1, half), &self.device)?,
            rotary_dim: rope.rotary_dim,
            interleaved: rope.interleaved,
        })
    }

    fn embed(
        &self,
        plan: &RefPlan,
        parts: &[(&Tensor, &[u32])],
        scale: Option<f32>,
        norm: Option<&RefNorm>,
    ) -> Result<Tensor, ModelError> {
        let t = plan.positions.len();
        let mut x: Option<Tensor> = None;
        for (table, ids) in parts {
            let rows = table.dim(0)?;
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= rows) {
                return Err(ModelError::Unsupported(format!(
                    "index {bad} is outside an embedding table of {rows} rows"
                )));
            }
            let e = table.index_select(&Tensor::from_slice(ids, t, &self.device)?, 0)?;
            x = Some(match x {
                Some(acc) => acc.add(&e)?,
                None => e,
            });
        }
        let mut x = x.ok_or_else(|| shape_error("embedding parts", 0, 1))?;
        if let Some(s) = scale {
            x = (x * f64::from(s))?;
        }
        if let Some(n) = norm {
            x = self.apply_norm(&x, n)?;
        }
        Ok(x)
    }

    fn linear(
        &self,
        x: &Tensor,
        w: &RefLinear,
        epi: Epilogue<'_, Self>,
    ) -> Result<Tensor, ModelError> {
        // Pooled rows are F32 (`pool`); heads after the pooling (Dense modules, classifiers)
        // run in the model dtype, like the fused backend.
        let cast;
        let x = if x.dtype() == self.dtype {
            x
        } else {
            cast = x.to_dtype(self.dtype)?;
            &cast
        };
        let mut y = x.matmul(&w.weight.t()?)?;
        if let Some(b) = &w.bias {
            y = y.broadcast_add(b)?;
        }
        y = self.activate(y, epi.activation)?;
        let y = match epi.post {
            Post::None => y,
            Post::Residual(r) => y.add(r)?,
            Post::Norm(n) => self.apply_norm(&y, n)?,
            Post::ResidualNorm(r, n) => self.apply_norm(&y.add(r)?, n)?,
            Post::NormResidual(n, r) => self.apply_norm(&y, n)?.add(r)?,
        };
        Ok(y)
    }

    fn norm(&self, x: &Tensor, norm: &RefNorm) -> Result<Tensor, ModelError> {
        Ok(self.apply_norm(x, norm)?)
    }

    fn attention(
        &self,
        qkv: Tensor,
        plan: &RefPlan,
        spec: &Attention<'_, Self>,
    ) -> Result<Tensor, ModelError> {
        let (h, kv, d) = (spec.heads, spec.kv_heads, spec.head_dim);
        if qkv.dim(1)? != spec.qkv_width() {
            return Err(shape_error("attention qkv", qkv.dim(1)?, spec.qkv_width()));
        }
        let qkv = if spec.qk_norm.is_some() || spec.rope.is_some() {
            let t = qkv.dim(0)?;
            let mut q = qkv.narrow(1, 0, h * d)?.reshape((t, h, d))?;
            let mut k = qkv.narrow(1, h * d, kv * d)?.reshape((t, kv, d))?;
            let v = qkv.narrow(1, (h + kv) * d, kv * d)?;
            if let Some((qn, kn)) = spec.qk_norm {
                q = self.apply_norm(&q.contiguous()?, qn)?;
                k = self.apply_norm(&k.contiguous()?, kn)?;
            }
            if let Some(r) = spec.rope {
                q = self.rotate(&q, r)?;
                k = self.rotate(&k, r)?;
            }
            Tensor::cat(&[q.reshape((t, h * d))?, k.reshape((t, kv * d))?, v], 1)?
        } else {
            qkv
        };
        let bias = spec.bias.map(|b| (b.table.as_slice(), b.buckets));
        Ok(attention::attention(
            &qkv,
            &plan.attention,
            &attention::Spec {
                heads: h,
                kv_heads: kv,
                head_dim: d,
                scale: f64::from(spec.scale),
                mask: spec.mask,
                bias,
            },
        )?)
    }

    fn pool(&self, x: &Tensor, plan: &RefPlan, how: Pooling) -> Result<Tensor, ModelError> {
        let offsets = &plan.offsets;
        let n = offsets.len().saturating_sub(1);
        let total = offsets.last().copied().unwrap_or(0);
        let device = x.device();
        Ok(match how {
            Pooling::Cls | Pooling::LastToken => {
                let rows: Vec<u32> = (0..n)
                    .map(|i| {
                        if how == Pooling::Cls {
                            offsets[i] as u32
                        } else {
                            (offsets[i + 1] - 1) as u32
                        }
                    })
                    .collect();
                let idx = Tensor::from_vec(rows, n, device)?;
                x.index_select(&idx, 0)?.to_dtype(DType::F32)?
            }
            Pooling::Mean => {
                // One product with an averaging matrix instead of a slice per sequence; in
                // F32: sums over 512 tokens lose digits in F16.
                let mut weights = vec![0f32; n * total];
                for i in 0..n {
                    let len = (offsets[i + 1] - offsets[i]).max(1);
                    weights[i * total + offsets[i]..i * total + offsets[i + 1]]
                        .fill(1.0 / len as f32);
                }
                let avg = Tensor::from_vec(weights, (n, total), device)?;
                avg.matmul(&x.to_dtype(DType::F32)?)?
            }
            Pooling::Max | Pooling::Splade => {
                let rows = (0..n)
                    .map(|i| {
                        x.narrow(0, offsets[i], offsets[i + 1] - offsets[i])?
                            .max_keepdim(0)
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)?.to_dtype(DType::F32)?
            }
        })
    }

    /// Free memory of a CUDA device; the activation cost per token is estimated by the model
    /// from its shape (candle allocates per op).
    fn device_memory(&self) -> Option<DeviceMemory> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(cd) = &self.device {
            let (free, total) = cd.cuda_stream().context().mem_get_info().ok()?;
            return Some(DeviceMemory {
                free_bytes: free as u64,
                total_bytes: total as u64,
                reusable_bytes: 0,
                bytes_per_token: None,
                measured: false,
            });
        }
        None
    }

    fn rows(&self, x: &Tensor, start: usize, end: usize) -> Result<Tensor, ModelError> {
        Ok(x.narrow(0, start, end.saturating_sub(start))?)
    }

    fn to_host(&self, x: &Tensor) -> Result<(Vec<f32>, usize), ModelError> {
        let width = x.dim(D::Minus1)?;
        Ok((x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?, width))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head after the pooling (here a Dense module) at float16: the pooled rows are F32 and
    /// the weights F16 (candle refuses mixed matmuls, which failed every reranker, classifier
    /// and Dense model at F16 on the GPU).
    #[test]
    fn heads_after_pooling_run_at_float16() {
        use crate::model::{self, LoadOptions, SentenceTransformerConfig, Want};
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert-dense");
        let files = model::resolve::resolve_local(&dir).unwrap();
        let st = SentenceTransformerConfig::read(&files).unwrap();
        let opts = LoadOptions {
            dtype: DType::F16,
            cpu_backend: crate::model::CpuBackend::Reference,
            ..LoadOptions::cpu()
        };
        let m = model::load(&files, &st, &opts).unwrap();
        let mut b = PackedBatch::with_capacity(1, 3);
        b.push(&[1, 2, 3], &[]);
        let out = m.run(&b, &[Want::POOLED], &mut || {}).unwrap();
        let v = out[0].pooled.as_ref().unwrap();
        assert_eq!(v.len(), 16);
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn rotation_matches_the_rotate_half_formula() {
        let r = Reference::new(Device::Cpu, DType::F32);
        let rope = Rope::new(10_000.0, 4);
        let batch = {
            let mut b = PackedBatch::with_capacity(1, 2);
            b.push(&[1, 2], &[]);
            b
        };
        let plan = r.plan(&batch).unwrap();
        let table = r.rope(&plan, &rope).unwrap();
        let x = Tensor::from_vec(
            vec![1f32, 2., 3., 4., 1., 2., 3., 4.],
            (2, 1, 4),
            &Device::Cpu,
        )
        .unwrap();
        let y: Vec<f32> = r
            .rotate(&x, &table)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Position 0: unchanged. Position 1: angles 1 and 0.01.
        assert_eq!(&y[..4], &[1., 2., 3., 4.]);
        let (c0, s0, c1, s1) = (1f32.cos(), 1f32.sin(), 0.01f32.cos(), 0.01f32.sin());
        let want = [
            1. * c0 - 3. * s0,
            2. * c1 - 4. * s1,
            3. * c0 + 1. * s0,
            4. * c1 + 2. * s1,
        ];
        for (g, w) in y[4..].iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    /// Dynamic NTK (NomicBERT): each sequence of a batch rotates with its own base, on both
    /// backends alike; a sequence within the trained length is unchanged.
    #[test]
    fn dynamic_ntk_rope_per_sequence_on_both_backends() {
        use crate::model::cpu::Cpu;
        use crate::model::layers::DynamicNtk;
        use crate::model::weights::HostTensor;
        let (heads, d) = (2, 8);
        let mut batch = PackedBatch::with_capacity(2, 12);
        batch.push(&[1, 2, 3], &[]);
        batch.push(&[1; 9], &[]);
        let (t, width) = (batch.tokens(), 3 * heads * d);
        let values: Vec<f32> = (0..t * width)
            .map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0)
            .collect();
        let plain = Rope::new(100.0, d);
        let mut dynamic = plain.clone();
        dynamic.dynamic = Some(DynamicNtk {
            base: 100.0,
            factor: 2.0,
            trained: 4,
        });
        let reference = |rope: &Rope| {
            let r = Reference::new(Device::Cpu, DType::F32);
            let plan = r.plan(&batch).unwrap();
            let table = r.rope(&plan, rope).unwrap();
            let qkv = Tensor::from_vec(values.clone(), (t, width), &Device::Cpu).unwrap();
            let spec = Attention {
                rope: Some(&table),
                ..Attention::full(heads, d)
            };
            r.to_host(&r.attention(qkv, &plan, &spec).unwrap())
                .unwrap()
                .0
        };
        let native = |rope: &Rope| {
            let c = Cpu::new();
            let plan = c.plan(&batch).unwrap();
            let table = c.rope(&plan, rope).unwrap();
            // The values as activations: an embedding table looked up row by row.
            let rows = c
                .load_table(HostTensor::from_f32("qkv", vec![t, width], &values))
                .unwrap();
            let ids: Vec<u32> = (0..t as u32).collect();
            let qkv = c.embed(&plan, &[(&rows, &ids)], None, None).unwrap();
            let spec = Attention {
                rope: Some(&table),
                ..Attention::full(heads, d)
            };
            c.to_host(&c.attention(qkv, &plan, &spec).unwrap())
                .unwrap()
                .0
        };
        let (want, got) = (reference(&dynamic), native(&dynamic));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        let before = reference(&plain);
        let short = 3 * heads * d;
        assert_eq!(&want[..short], &before[..short]);
        let moved = want[short..]
            .iter()
            .zip(&before[short..])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(moved > 1e-3, "the long sequence's base changed: {moved}");
    }
}
