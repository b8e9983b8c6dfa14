//! Linear layers and norms: the GEMM with the epilogue `cuda::host::steps` chose, then our
//! kernels for whatever cuBLASLt cannot fuse.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaViewMut};

use super::{driver_error, kernel_error, lock, shape_error, Data, Fused, FusedAct, FusedLinear};
use super::{FusedNorm, KernelFloat, NormKind};
use crate::model::cuda::host::steps::{linear_steps, PostKind, PostStep};
use crate::model::cuda::kernels::NormWeights;
use crate::model::cuda::oracle::gemm::Epilogue as GemmEpilogue;
use crate::model::cuda::LinearShape;
use crate::model::layers::{Epilogue, Post};
use crate::model::ModelError;

/// Calls `f` with the kernels' view of a norm's weights.
fn with_norm<T: KernelFloat, R>(n: &FusedNorm<T>, f: impl FnOnce(&NormWeights<'_, T>) -> R) -> R {
    let gamma = n.gamma.as_view();
    let beta = n.beta.as_ref().map(|b| b.as_view());
    let w = NormWeights {
        gamma: &gamma,
        beta: beta.as_ref(),
        kind: n.kind,
        eps: n.eps,
    };
    f(&w)
}

impl<T: KernelFloat> Fused<T> {
    pub(super) fn linear_impl(
        &self,
        x: &FusedAct<T>,
        w: &FusedLinear<T>,
        epi: Epilogue<'_, Self>,
    ) -> Result<FusedAct<T>, ModelError> {
        // Pooled rows are F32 (the pool kernel's output): heads after pooling convert them.
        let converted;
        let x = match &x.data {
            Data::Half(_) => x,
            Data::Float(_) => {
                converted = self.to_half(x)?;
                &converted
            }
        };
        if x.cols != w.inp {
            return Err(shape_error("linear input", x.cols, w.inp));
        }
        let (kind, residual, norm) = match epi.post {
            Post::None => (PostKind::None, None, None),
            Post::Residual(r) => (PostKind::Residual, Some(r), None),
            Post::Norm(n) => (PostKind::Norm, None, Some(n)),
            Post::ResidualNorm(r, n) => (PostKind::ResidualNorm, Some(r), Some(n)),
            Post::NormResidual(n, r) => (PostKind::NormResidual, Some(r), Some(n)),
        };
        let steps = linear_steps(epi.activation, w.b.is_some(), kind, self.opts.gelu)
            .map_err(|e| ModelError::Unsupported(e.to_string()))?;
        let rows = x.rows;
        let out_cols = epi.activation.out_width(w.out);
        if let Some(r) = residual {
            if r.rows != rows || r.cols != out_cols {
                return Err(shape_error("residual", r.cols, out_cols));
            }
            r.half()?;
        }
        if let Some(n) = norm {
            if n.width != out_cols {
                return Err(shape_error("norm", n.width, out_cols));
            }
        }
        let mut out = match steps.glu {
            Some(gate) => {
                if !w.out.is_multiple_of(2) {
                    return Err(shape_error("gated linear layer", w.out, 2 * out_cols));
                }
                let mut full = self.act(rows, w.out)?;
                self.gemm_into(x, w, &mut full, steps.gemm, false)?;
                let mut out = self.act(rows, out_cols)?;
                let fv = full.half()?.view()?;
                self.k
                    .glu(
                        &fv,
                        &mut out.half_mut()?.view_mut()?,
                        rows,
                        out_cols,
                        gate,
                        true,
                    )
                    .map_err(kernel_error)?;
                out
            }
            None => {
                let mut out = self.act(rows, w.out)?;
                if steps.accumulate {
                    let r = residual.ok_or_else(|| shape_error("residual", 0, out_cols))?;
                    let rv = r.half()?.view()?;
                    self.stream
                        .memcpy_dtod(&rv, &mut out.half_mut()?.view_mut()?)
                        .map_err(driver_error)?;
                }
                self.gemm_into(x, w, &mut out, steps.gemm, steps.accumulate)?;
                if let Some(a) = steps.act {
                    self.k
                        .bias_act_inplace(&mut out.half_mut()?.view_mut()?, None, rows, w.out, a)
                        .map_err(kernel_error)?;
                }
                out
            }
        };
        match (steps.post, norm) {
            (PostStep::None, _) => {}
            (PostStep::Norm { residual: with }, Some(n)) => {
                let r = if with { residual } else { None };
                self.norm_in_place(&mut out, r, n)?;
            }
            (PostStep::AddResidual, _) => {
                let r = residual.ok_or_else(|| shape_error("residual", 0, out_cols))?;
                self.add_in_place(&mut out, r)?;
            }
            (PostStep::NormThenAdd, Some(n)) => {
                let r = residual.ok_or_else(|| shape_error("residual", 0, out_cols))?;
                self.norm_in_place(&mut out, None, n)?;
                self.add_in_place(&mut out, r)?;
            }
            (step, None) => {
                return Err(ModelError::Device(format!("{step:?} without a norm")));
            }
        }
        Ok(out)
    }

    /// `y = epilogue(x Wᵀ + b)` (`accumulate`: `+ y`) into `y [rows, w.out]`.
    fn gemm_into(
        &self,
        x: &FusedAct<T>,
        w: &FusedLinear<T>,
        y: &mut FusedAct<T>,
        epilogue: GemmEpilogue,
        accumulate: bool,
    ) -> Result<(), ModelError> {
        let xv = x.half()?.view()?;
        let wv = w.w.as_view();
        let bias = if epilogue.has_bias() {
            let b = w.b.as_ref().ok_or_else(|| {
                ModelError::Device(format!("epilogue {} without a bias", epilogue.name()))
            })?;
            Some(b.as_view())
        } else {
            None
        };
        let shape = LinearShape {
            rows: x.rows,
            in_features: w.inp,
            out_features: w.out,
        };
        let mut yv = y.half_mut()?.view_mut()?;
        self.gemm
            .linear(
                &xv,
                &wv,
                bias.as_ref(),
                &mut yv,
                shape,
                epilogue,
                accumulate,
            )
            .map_err(kernel_error)
    }

    /// `x = norm(x (+ residual))` in place.
    fn norm_in_place(
        &self,
        x: &mut FusedAct<T>,
        residual: Option<&FusedAct<T>>,
        n: &FusedNorm<T>,
    ) -> Result<(), ModelError> {
        let (rows, width) = (x.rows, x.cols);
        let rv = residual.map(|r| r.half()?.view()).transpose()?;
        let mut xv = x.half_mut()?.view_mut()?;
        with_norm(n, |w| {
            self.k
                .add_norm_inplace(&mut xv, None, rv.as_ref(), w, rows, width)
        })
        .map_err(kernel_error)
    }

    /// `out = out + r`: the pre-norm kernel stores the residual-stream sum into its
    /// `residual` argument (here `out`); its normalised output goes to a scratch buffer.
    fn add_in_place(&self, out: &mut FusedAct<T>, r: &FusedAct<T>) -> Result<(), ModelError> {
        let (rows, width) = (out.rows, out.cols);
        let ones = self.ones(width)?;
        let gamma = ones.as_view();
        let w = NormWeights {
            gamma: &gamma,
            beta: None,
            kind: NormKind::RmsNorm { unit_offset: false },
            // Any finite eps: the normalised values are discarded.
            eps: 1.0,
        };
        let mut scratch = self.act(rows, width)?;
        let rv = r.half()?.view()?;
        let mut sv: CudaViewMut<'_, T> = scratch.half_mut()?.view_mut()?;
        self.k
            .add_norm_residual_inplace(
                &rv,
                None,
                &mut out.half_mut()?.view_mut()?,
                &w,
                &mut sv,
                rows,
                width,
            )
            .map_err(kernel_error)
    }

    /// `[width]` ones, uploaded once per width.
    fn ones(&self, width: usize) -> Result<Arc<CudaSlice<T>>, ModelError> {
        let mut map = lock(&self.ones);
        if let Some(o) = map.get(&width) {
            return Ok(o.clone());
        }
        let host = vec![T::from_f32(1.0); width];
        let o = Arc::new(self.stream.clone_htod(&host).map_err(driver_error)?);
        map.insert(width, o.clone());
        Ok(o)
    }

    pub(super) fn norm_impl(
        &self,
        x: &FusedAct<T>,
        n: &FusedNorm<T>,
    ) -> Result<FusedAct<T>, ModelError> {
        if x.cols != n.width {
            return Err(shape_error("norm input", x.cols, n.width));
        }
        let (rows, width) = (x.rows, x.cols);
        let mut out = self.act(rows, width)?;
        let xv = x.half()?.view()?;
        let mut ov = out.half_mut()?.view_mut()?;
        with_norm(n, |w| {
            self.k
                .fused_norm(&xv, None, None, w, &mut ov, None, rows, width)
        })
        .map_err(kernel_error)?;
        Ok(out)
    }
}
