//! Weights onto the device in the model dtype: linear layers `[out, in]` as checkpoints store
//! them (several stacked along `out` for a fused QKV), norms (absent weights as the reference
//! backend makes them), embedding tables, and MPNet's relative bias as the kernels'
//! per-distance table.

use candle_core::cuda_backend::cudarc::driver::CudaSlice;

use super::{driver_error, kernel_error, shape_error, Fused, FusedBias, FusedLinear, FusedNorm};
use super::{FusedTable, KernelFloat, NormKind, RelativeBias};
use crate::model::cuda::host::bias::per_distance;
use crate::model::layers::{Buckets, NormKind as LayerNormKind};
use crate::model::weights::HostTensor;
use crate::model::ModelError;

fn corrupt(t: &HostTensor<'_>, reason: String) -> ModelError {
    ModelError::Corrupt {
        file: t.name.clone(),
        reason,
    }
}

impl<T: KernelFloat> Fused<T> {
    /// Host values rounded to `T` (round to nearest even, like candle's `to_dtype`).
    fn upload(&self, values: &[f32]) -> Result<CudaSlice<T>, ModelError> {
        let host: Vec<T> = values.iter().map(|&v| T::from_f32(v)).collect();
        self.stream.clone_htod(&host).map_err(driver_error)
    }

    pub(super) fn load_linear_impl(
        &self,
        weights: &[HostTensor<'_>],
        bias: Option<&[HostTensor<'_>]>,
    ) -> Result<FusedLinear<T>, ModelError> {
        let inp = weights
            .first()
            .and_then(|w| w.shape.get(1).copied())
            .ok_or_else(|| ModelError::Device("a linear layer without weights".into()))?;
        let mut values = Vec::new();
        let mut out = 0;
        for part in weights {
            if part.shape.len() != 2 || part.shape[1] != inp {
                return Err(corrupt(
                    part,
                    format!("shape {:?}, expected [_, {inp}]", part.shape),
                ));
            }
            values.extend(part.to_f32()?);
            out += part.shape[0];
        }
        let b = match bias {
            Some(parts) => {
                let mut b = Vec::with_capacity(out);
                for p in parts {
                    b.extend(p.to_f32()?);
                }
                if b.len() != out {
                    return Err(shape_error("linear bias", b.len(), out));
                }
                Some(self.upload(&b)?)
            }
            None => None,
        };
        Ok(FusedLinear {
            w: self.upload(&values)?,
            b,
            inp,
            out,
        })
    }

    pub(super) fn load_norm_impl(
        &self,
        kind: LayerNormKind,
        width: usize,
        weight: Option<HostTensor<'_>>,
        bias: Option<HostTensor<'_>>,
    ) -> Result<FusedNorm<T>, ModelError> {
        let (cuda_kind, eps, offset) = match kind {
            LayerNormKind::Layer { eps } => (NormKind::LayerNorm, eps, 0.0),
            LayerNormKind::Rms { eps, offset } => {
                (NormKind::RmsNorm { unit_offset: false }, eps, offset)
            }
        };
        let mut w = match weight {
            Some(w) => w.to_f32()?,
            // An absent RMS weight with Gemma's offset is (offset + 0); otherwise ones.
            None if offset != 0.0 => vec![0.0; width],
            None => vec![1.0; width],
        };
        if w.len() != width {
            return Err(shape_error("norm weight", w.len(), width));
        }
        if offset != 0.0 {
            // Like the reference: `offset + w` rounded to the dtype once, at load.
            w.iter_mut().for_each(|v| *v += offset);
        }
        let beta = match (cuda_kind, bias) {
            (NormKind::LayerNorm, Some(b)) => {
                let b = b.to_f32()?;
                if b.len() != width {
                    return Err(shape_error("norm bias", b.len(), width));
                }
                Some(self.upload(&b)?)
            }
            _ => None,
        };
        Ok(FusedNorm {
            kind: cuda_kind,
            eps,
            gamma: self.upload(&w)?,
            beta,
            width,
        })
    }

    pub(super) fn load_table_impl(
        &self,
        table: HostTensor<'_>,
    ) -> Result<FusedTable<T>, ModelError> {
        let (rows, width) = match table.shape[..] {
            [r, w] if r > 0 && w > 0 => (r, w),
            _ => {
                let reason = format!("an embedding table of shape {:?}", table.shape);
                return Err(corrupt(&table, reason));
            }
        };
        Ok(FusedTable {
            data: self.upload(&table.to_f32()?)?,
            rows,
            width,
        })
    }

    pub(super) fn load_bias_impl(
        &self,
        table: HostTensor<'_>,
        buckets: Buckets,
    ) -> Result<FusedBias, ModelError> {
        let heads = match table.shape[..] {
            [b, h] if b == buckets.num_buckets => h,
            _ => {
                let reason = format!(
                    "a relative bias table of shape {:?} for {} buckets",
                    table.shape, buckets.num_buckets
                );
                return Err(corrupt(&table, reason));
            }
        };
        let expanded =
            per_distance(&table.to_f32()?, heads, buckets).map_err(|r| corrupt(&table, r))?;
        let table =
            RelativeBias::from_expanded(&self.stream, &expanded, heads, buckets.max_distance)
                .map_err(kernel_error)?;
        Ok(FusedBias { table })
    }
}
