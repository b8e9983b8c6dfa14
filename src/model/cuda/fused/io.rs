//! What crosses the host / device boundary per batch: the plan (offsets and positions, once
//! per forward pass), token ids into the embedding kernel, pooled rows, and outputs as F32.

use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr};

use super::{driver_error, kernel_error, lock, shape_error, Data, Fused, FusedAct, FusedNorm};
use super::{FusedPlan, FusedTable, KernelFloat, NormKind, SeqLayout};
use crate::model::batch::PackedBatch;
use crate::model::cuda::kernels::{EmbedLayerNorm, EmbeddingTables};
use crate::model::cuda::oracle::check_cu_seqlens;
use crate::model::cuda::PoolMode;
use crate::model::{ModelError, Pooling};

fn sub<'a, E>(
    v: &'a CudaView<'a, E>,
    range: std::ops::Range<usize>,
) -> Result<CudaView<'a, E>, ModelError> {
    let (a, b) = (range.start, range.end);
    v.try_slice(range)
        .ok_or_else(|| ModelError::Device(format!("rows {a}..{b} outside a buffer of {}", v.len())))
}

impl<T: KernelFloat> Fused<T> {
    /// Uploads `host` into a pooled `[rows, cols]` index buffer.
    fn upload_u32(
        &self,
        host: &[u32],
        rows: usize,
        cols: usize,
    ) -> Result<super::Pooled<u32>, ModelError> {
        let mut buf = self.index.take(rows, cols)?;
        if !host.is_empty() {
            let mut v = buf.view_mut()?;
            self.stream
                .memcpy_htod(host, &mut v)
                .map_err(driver_error)?;
        }
        Ok(buf)
    }

    pub(super) fn plan_impl(&self, batch: &PackedBatch) -> Result<FusedPlan, ModelError> {
        let cu = batch
            .offsets
            .iter()
            .map(|&o| u32::try_from(o))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| ModelError::Unsupported("more than 2^32 tokens in a batch".into()))?;
        check_cu_seqlens(&cu).map_err(ModelError::Device)?;
        let t = batch.tokens();
        if batch.positions.len() != t {
            return Err(shape_error("positions", batch.positions.len(), t));
        }
        let positions = self.upload_u32(&batch.positions, t, 1)?;
        let (slice, lent) = self.upload_u32(&cu, cu.len(), 1)?.lend()?;
        // SAFETY: the first `cu.len()` elements of `slice` were just written from `cu`.
        let layout = unsafe { SeqLayout::from_parts(cu, slice) }.map_err(kernel_error)?;
        Ok(FusedPlan {
            layout: Some(layout),
            lent: Some(lent),
            positions,
            offsets: batch.offsets.clone(),
            tokens: t,
        })
    }

    /// Word table first; a second part goes into the kernel's token-type slot and a third into
    /// its position slot, so the sum rounds in the reference's order: `(p0 + p1) + p2`.
    pub(super) fn embed_impl(
        &self,
        plan: &FusedPlan,
        parts: &[(&FusedTable<T>, &[u32])],
        scale: Option<f32>,
        norm: Option<&FusedNorm<T>>,
    ) -> Result<FusedAct<T>, ModelError> {
        let t = plan.tokens;
        let width = parts.first().map_or(0, |(tb, _)| tb.width);
        if parts.is_empty() || parts.len() > 3 {
            return Err(ModelError::Unsupported(format!(
                "{} embedding parts (the fused kernel sums 1 to 3)",
                parts.len()
            )));
        }
        let mut ids = Vec::with_capacity(parts.len() * t);
        for (table, part) in parts {
            if table.width != width || part.len() != t {
                return Err(shape_error("embedding part", table.width, width));
            }
            // The kernel clamps bad ids (and flags them); the reference refuses them.
            if let Some(&bad) = part.iter().find(|&&id| id as usize >= table.rows) {
                return Err(ModelError::Unsupported(format!(
                    "index {bad} is outside an embedding table of {} rows",
                    table.rows
                )));
            }
            ids.extend_from_slice(part);
        }
        if let Some(n) = norm {
            if n.width != width {
                return Err(shape_error("embedding norm", n.width, width));
            }
        }
        let mut out = self.act(t, width)?;
        if t == 0 {
            return Ok(out);
        }
        let ids = self.upload_u32(&ids, t, parts.len())?;
        let iv = ids.view()?;
        let word_ids = sub(&iv, 0..t)?;
        let type_ids = (parts.len() > 1).then(|| sub(&iv, t..2 * t)).transpose()?;
        let pos_ids = (parts.len() > 2)
            .then(|| sub(&iv, 2 * t..3 * t))
            .transpose()?;
        let word = parts[0].0.data.as_view();
        let typ = parts.get(1).map(|p| p.0.data.as_view());
        let pos = parts.get(2).map(|p| p.0.data.as_view());
        let tables = EmbeddingTables {
            word: &word,
            position: pos.as_ref(),
            token_type: typ.as_ref(),
            width,
        };
        let layer_norm = norm.filter(|n| n.kind == NormKind::LayerNorm);
        let gamma = layer_norm.map(|n| n.gamma.as_view());
        let beta = layer_norm.and_then(|n| n.beta.as_ref().map(|b| b.as_view()));
        let ln = match (layer_norm, &gamma) {
            (Some(n), Some(g)) => Some(EmbedLayerNorm {
                gamma: g,
                beta: beta.as_ref(),
                eps: n.eps,
            }),
            _ => None,
        };
        {
            let mut flag = lock(&self.flag);
            flag.reset().map_err(kernel_error)?;
            let mut ov = out.half_mut()?.view_mut()?;
            self.k
                .embed(
                    &tables,
                    &word_ids,
                    pos_ids.as_ref(),
                    type_ids.as_ref(),
                    scale.unwrap_or(1.0),
                    ln.as_ref(),
                    &mut ov,
                    &mut flag,
                    t,
                )
                .map_err(kernel_error)?;
        }
        // An RMS norm after the embeddings runs as its own pass.
        if let Some(n) = norm.filter(|n| n.kind != NormKind::LayerNorm) {
            out = self.norm_impl(&out, n)?;
        }
        Ok(out)
    }

    pub(super) fn pool_impl(
        &self,
        x: &FusedAct<T>,
        plan: &FusedPlan,
        how: Pooling,
    ) -> Result<FusedAct<T>, ModelError> {
        let mode = match how {
            Pooling::Cls => PoolMode::Cls,
            Pooling::Mean => PoolMode::Mean,
            Pooling::LastToken => PoolMode::LastToken,
            Pooling::Max | Pooling::Splade => PoolMode::Max,
        };
        if x.rows != plan.tokens {
            return Err(shape_error("pooled rows", x.rows, plan.tokens));
        }
        let layout = plan.layout()?;
        let n = layout.n_seqs();
        let mut out = self.float.take(n, x.cols)?;
        let xv = x.half()?.view()?;
        self.k
            .pool(&xv, layout, x.cols, mode, &mut out.view_mut()?)
            .map_err(kernel_error)?;
        Ok(FusedAct {
            data: Data::Float(out),
            rows: n,
            cols: x.cols,
        })
    }

    pub(super) fn rows_impl(
        &self,
        x: &FusedAct<T>,
        start: usize,
        end: usize,
    ) -> Result<FusedAct<T>, ModelError> {
        if start > end || end > x.rows {
            return Err(shape_error("rows", end, x.rows));
        }
        let (c, rows) = (x.cols, end - start);
        let data = match &x.data {
            Data::Half(p) => Data::Half(self.copy_rows(&self.half, p, start * c, rows, c)?),
            Data::Float(p) => Data::Float(self.copy_rows(&self.float, p, start * c, rows, c)?),
        };
        Ok(FusedAct {
            data,
            rows,
            cols: c,
        })
    }

    fn copy_rows<E: DeviceRepr>(
        &self,
        pool: &std::sync::Arc<super::buffers::DevicePool<E>>,
        src: &super::Pooled<E>,
        offset: usize,
        rows: usize,
        cols: usize,
    ) -> Result<super::Pooled<E>, ModelError> {
        let mut out = pool.take(rows, cols)?;
        if rows * cols > 0 {
            let sv = src.view()?;
            let part = sub(&sv, offset..offset + rows * cols)?;
            self.stream
                .memcpy_dtod(&part, &mut out.view_mut()?)
                .map_err(driver_error)?;
        }
        Ok(out)
    }

    pub(super) fn to_host_impl(&self, x: &FusedAct<T>) -> Result<(Vec<f32>, usize), ModelError> {
        if x.rows * x.cols == 0 {
            return Ok((Vec::new(), x.cols));
        }
        let values = match &x.data {
            Data::Half(p) => self
                .stream
                .clone_dtoh(&p.view()?)
                .map_err(driver_error)?
                .into_iter()
                .map(T::to_f32)
                .collect(),
            Data::Float(p) => self.stream.clone_dtoh(&p.view()?).map_err(driver_error)?,
        };
        Ok((values, x.cols))
    }

    /// An F32 activation (pooled rows) in the model dtype, through the host: pooled rows are
    /// `sequences x hidden`, small, and only heads with layers after the pooling need this.
    pub(super) fn to_half(&self, x: &FusedAct<T>) -> Result<FusedAct<T>, ModelError> {
        let (host, _) = self.to_host_impl(x)?;
        let host: Vec<T> = host.into_iter().map(T::from_f32).collect();
        let mut out = self.act(x.rows, x.cols)?;
        if !host.is_empty() {
            let mut v = out.half_mut()?.view_mut()?;
            self.stream
                .memcpy_htod(&host, &mut v)
                .map_err(driver_error)?;
        }
        Ok(out)
    }
}
