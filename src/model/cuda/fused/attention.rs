//! Attention over the fused QKV GEMM output, in place and without copies: the q/k RMSNorm and
//! RoPE rewrite the q and k heads of each row, then one varlen attention launch for the whole
//! batch writes `[tokens, heads * head_dim]`.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::CudaSlice;

use super::{driver_error, kernel_error, lock, shape_error, Fused, FusedAct, FusedNorm};
use super::{FusedPlan, FusedRope, KernelFloat, NormKind};
use crate::model::cuda::kernels::QkNorm;
use crate::model::cuda::{AttentionConfig, RopeConfig, Window};
use crate::model::layers::{Attention, Rope};
use crate::model::ModelError;

/// Device tables kept before the cache is cleared (dynamic NTK adds one per long length).
const MAX_FREQ_TABLES: usize = 1024;

impl<T: KernelFloat> Fused<T> {
    /// `inv_freq` on the device, uploaded once per distinct table.
    fn freq_table(&self, inv_freq: &[f32]) -> Result<Arc<CudaSlice<f32>>, ModelError> {
        let key: Vec<u32> = inv_freq.iter().map(|f| f.to_bits()).collect();
        let mut map = lock(&self.freqs);
        if let Some(t) = map.get(&key) {
            return Ok(t.clone());
        }
        if map.len() >= MAX_FREQ_TABLES {
            map.clear();
        }
        // A zero-length table still needs a valid buffer for the kernel's pointer.
        let host = if inv_freq.is_empty() {
            vec![0f32]
        } else {
            inv_freq.to_vec()
        };
        let t = Arc::new(self.stream.clone_htod(&host).map_err(driver_error)?);
        map.insert(key, t.clone());
        Ok(t)
    }

    /// One row range per table: the whole batch, unless dynamic NTK gives sequences longer
    /// than the trained length their own frequencies (as `Rope::tables` does).
    pub(super) fn rope_impl(&self, plan: &FusedPlan, rope: &Rope) -> Result<FusedRope, ModelError> {
        if rope.rotary_dim != 2 * rope.inv_freq.len() {
            return Err(shape_error(
                "rope frequencies",
                2 * rope.inv_freq.len(),
                rope.rotary_dim,
            ));
        }
        let base = self.freq_table(&rope.inv_freq)?;
        let mut segments: Vec<(std::ops::Range<usize>, Arc<CudaSlice<f32>>)> = Vec::new();
        for w in plan.offsets.windows(2) {
            let table = match rope.inv_freq_for(w[1] - w[0]) {
                std::borrow::Cow::Borrowed(_) => base.clone(),
                std::borrow::Cow::Owned(f) => self.freq_table(&f)?,
            };
            match segments.last_mut() {
                Some((r, t)) if Arc::ptr_eq(t, &table) && r.end == w[0] => r.end = w[1],
                _ => segments.push((w[0]..w[1], table)),
            }
        }
        Ok(FusedRope {
            segments,
            rotary_dim: rope.rotary_dim,
            interleaved: rope.interleaved,
            scaling: rope.scaling,
        })
    }

    pub(super) fn attention_impl(
        &self,
        qkv: FusedAct<T>,
        plan: &FusedPlan,
        spec: &Attention<'_, Self>,
    ) -> Result<FusedAct<T>, ModelError> {
        let mut qkv = qkv;
        let (h, kv, d) = (spec.heads, spec.kv_heads, spec.head_dim);
        if qkv.cols != spec.qkv_width() {
            return Err(shape_error("attention qkv", qkv.cols, spec.qkv_width()));
        }
        if qkv.rows != plan.tokens {
            return Err(shape_error("attention rows", qkv.rows, plan.tokens));
        }
        let variant = self.choice.attention_variant(T::DT, d).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "no verified fused attention kernel for {} with head dim {d}",
                T::DT.name()
            ))
        })?;
        self.rotate(&mut qkv, plan, spec)?;
        let cfg = AttentionConfig {
            n_q_heads: h,
            n_kv_heads: kv,
            head_dim: d,
            scale: spec.scale,
            window: Window {
                left: spec.mask.left,
                right: spec.mask.right,
            },
        };
        let mut out = self.act(qkv.rows, h * d)?;
        let qv = qkv.half()?.view()?;
        self.k
            .attention(
                variant,
                &qv,
                &mut out.half_mut()?.view_mut()?,
                plan.layout()?,
                &cfg,
                spec.bias.map(|b| &b.table),
            )
            .map_err(kernel_error)?;
        Ok(out)
    }

    /// The q/k RMSNorm and RoPE, in place on the q and k heads.
    fn rotate(
        &self,
        qkv: &mut FusedAct<T>,
        plan: &FusedPlan,
        spec: &Attention<'_, Self>,
    ) -> Result<(), ModelError> {
        let (h, kv, d) = (spec.heads, spec.kv_heads, spec.head_dim);
        let (rows, stride) = (qkv.rows, qkv.cols);
        let norms = match spec.qk_norm {
            Some((qn, kn)) => Some(check_qk_norm(qn, kn, d)?),
            None => None,
        };
        let qw = norms.map(|(q, _, _)| q.gamma.as_view());
        let kw = norms.map(|(_, k, _)| k.gamma.as_view());
        let qk = match (&qw, &kw, norms) {
            (Some(q), Some(k), Some((_, _, eps))) => Some(QkNorm {
                q_weight: q,
                k_weight: k,
                eps,
                unit_offset: false,
            }),
            _ => None,
        };
        match spec.rope {
            Some(r) => {
                let cfg = RopeConfig {
                    n_q_heads: h,
                    n_k_heads: kv,
                    head_dim: d,
                    rotary_dim: r.rotary_dim,
                    interleaved: r.interleaved,
                    attention_scaling: r.scaling,
                };
                let pv = plan.positions.view()?;
                let buf = qkv.half_mut()?;
                for (range, freqs) in &r.segments {
                    let n = range.end - range.start;
                    if n == 0 {
                        continue;
                    }
                    let mut all = buf.view_mut()?;
                    let mut part = all
                        .try_slice_mut(range.start * stride..range.end * stride)
                        .ok_or_else(|| shape_error("rope rows", range.end, rows))?;
                    let pos = pv
                        .try_slice(range.clone())
                        .ok_or_else(|| shape_error("rope positions", range.end, rows))?;
                    self.k
                        .rope_qk(
                            &mut part,
                            n,
                            stride,
                            &pos,
                            &freqs.as_view(),
                            &cfg,
                            qk.as_ref(),
                        )
                        .map_err(kernel_error)?;
                }
            }
            None => {
                if let Some(n) = &qk {
                    self.k
                        .head_rms_norm(&mut qkv.half_mut()?.view_mut()?, rows, stride, h, kv, d, n)
                        .map_err(kernel_error)?;
                }
            }
        }
        Ok(())
    }
}

/// The kernel's per-head norm is an RMSNorm with one eps for q and k.
fn check_qk_norm<'a, T>(
    q: &'a FusedNorm<T>,
    k: &'a FusedNorm<T>,
    d: usize,
) -> Result<(&'a FusedNorm<T>, &'a FusedNorm<T>, f32), ModelError> {
    let rms = |n: &FusedNorm<T>| matches!(n.kind, NormKind::RmsNorm { .. });
    if !rms(q) || !rms(k) || q.eps != k.eps {
        return Err(ModelError::Unsupported(
            "q/k norms other than RMS norms with one eps (the fused kernel's)".into(),
        ));
    }
    if q.width != d || k.width != d {
        return Err(shape_error("q/k norm", q.width, d));
    }
    Ok((q, k, q.eps))
}
