//! Dense layers through cuBLASLt: `y[rows, out] = x[rows, in] . W[out, in]^T (+ bias)` with the
//! epilogues NONE / BIAS / GELU_BIAS (tanh GELU), and `y += ...` (beta = 1, C = D = y: the
//! residual add inside the GEMM). F16 / BF16 storage, F32 compute and scale.
//!
//! Row-major `y = x W^T` is column-major `y^T = W x^T`: A = W seen column-major as `[in, out]`
//! (ld = in) with op(A) = transpose, B = x as `[in, rows]` (ld = in), C = D = y as
//! `[out, rows]` (ld = out); the bias (length out) is per row of D, i.e. per output feature.
//!
//! The matmul descriptor, layouts and the heuristic's algorithm are created once per
//! (dtype, rows, in, out, epilogue, accumulate, pointer alignments) and cached; only the bias
//! pointer is set per call. One 32 MiB workspace is allocated at construction.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::cudarc::cublaslt::{result as lt, sys};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut,
};

use super::kernels::KernelFloat;
use super::{invalid, unsupported, Result};
use crate::model::cuda::oracle::gemm::Epilogue;
use crate::model::cuda::oracle::Dt;

/// cuBLASLt's recommendation for Hopper (4 MiB suffices before it); one buffer for all calls.
pub const WORKSPACE_BYTES: usize = 32 << 20;
/// Cached plans before the cache is cleared (each distinct token count is one plan).
const MAX_PLANS: usize = 4096;

/// Sizes of one dense layer call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinearShape {
    pub rows: usize,
    pub in_features: usize,
    pub out_features: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    dt: Dt,
    shape: LinearShape,
    epilogue: Epilogue,
    accumulate: bool,
    align: [u32; 3],
}

/// Descriptors and the chosen algorithm for one `PlanKey`.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: cuBLASLt descriptors are plain host objects; a Plan is only used under the cache
// mutex, so never by two threads at once.
unsafe impl Send for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by this Plan and destroyed only here. Errors cannot be reported from
        // drop and leave nothing to clean up.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.c);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

struct Handle(sys::cublasLtHandle_t);
// SAFETY: a cuBLASLt handle may be used from any thread; every use here is under the mutex.
unsafe impl Send for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created in Gemm::new, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.0);
        }
    }
}

struct Inner {
    handle: Handle,
    plans: HashMap<PlanKey, Plan>,
    heuristic_calls: u64,
}

/// The cuBLASLt dense-layer wrapper of one stream.
pub struct Gemm {
    inner: Mutex<Inner>,
    workspace: Mutex<CudaSlice<u8>>,
    stream: Arc<CudaStream>,
}

fn data_type(dt: Dt) -> sys::cudaDataType {
    match dt {
        Dt::F16 => sys::cudaDataType_t::CUDA_R_16F,
        Dt::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
    }
}

/// Largest power of two (<= 256) dividing the address: what cuBLASLt may assume.
fn alignment(ptr: u64) -> u32 {
    if ptr == 0 {
        return 256;
    }
    (1u64 << ptr.trailing_zeros().min(8)) as u32
}

fn set_desc<V>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    v: &V,
) -> Result<()> {
    // SAFETY: `desc` is live; the attribute is read as `size_of::<V>()` bytes from `v`, and each
    // call site passes the type the attribute is documented with.
    unsafe {
        lt::set_matmul_desc_attribute(
            desc,
            attr,
            v as *const V as *const c_void,
            std::mem::size_of::<V>(),
        )?
    };
    Ok(())
}

fn set_pref<V>(
    pref: sys::cublasLtMatmulPreference_t,
    attr: sys::cublasLtMatmulPreferenceAttributes_t,
    v: &V,
) -> Result<()> {
    // SAFETY: as set_desc.
    unsafe {
        lt::set_matmul_pref_attribute(
            pref,
            attr,
            v as *const V as *const c_void,
            std::mem::size_of::<V>(),
        )?
    };
    Ok(())
}

impl Plan {
    fn new(handle: sys::cublasLtHandle_t, key: &PlanKey) -> Result<Plan> {
        use sys::cublasLtMatmulDescAttributes_t as D;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let LinearShape {
            rows,
            in_features: k,
            out_features: m,
        } = key.shape;
        let ty = data_type(key.dt);
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )?;
        // Build the Plan right away so its Drop frees whatever was created if a step fails.
        let mut plan = Plan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        let op_t: i32 = 1; // CUBLAS_OP_T
        let op_n: i32 = 0; // CUBLAS_OP_N
        set_desc(desc, D::CUBLASLT_MATMUL_DESC_TRANSA, &op_t)?;
        set_desc(desc, D::CUBLASLT_MATMUL_DESC_TRANSB, &op_n)?;
        let epi = match key.epilogue {
            Epilogue::None => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::GeluTanhBias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
        };
        set_desc(desc, D::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi)?;
        plan.a = lt::create_matrix_layout(ty, k as u64, m as u64, k as i64)?;
        plan.b = lt::create_matrix_layout(ty, k as u64, rows as u64, k as i64)?;
        plan.c = lt::create_matrix_layout(ty, m as u64, rows as u64, m as i64)?;

        let pref = lt::create_matmul_pref()?;
        let result = (|| -> Result<sys::cublasLtMatmulHeuristicResult_t> {
            set_pref(
                pref,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &(WORKSPACE_BYTES as u64),
            )?;
            set_pref(
                pref,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                &key.align[0],
            )?;
            set_pref(
                pref,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                &key.align[1],
            )?;
            set_pref(
                pref,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                &key.align[2],
            )?;
            set_pref(
                pref,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                &key.align[2],
            )?;
            // SAFETY: every descriptor is live and describes the buffers of this key.
            Ok(unsafe {
                lt::get_matmul_algo_heuristic(handle, desc, plan.a, plan.b, plan.c, plan.c, pref)?
            })
        })();
        // SAFETY: created above, not used after this.
        unsafe {
            let _ = lt::destroy_matmul_pref(pref);
        }
        plan.algo = result?.algo;
        Ok(plan)
    }
}

impl Gemm {
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let handle = Handle(lt::create_handle()?);
        // SAFETY: the workspace is scratch memory cuBLASLt writes before it reads.
        let workspace = unsafe { stream.alloc::<u8>(WORKSPACE_BYTES)? };
        Ok(Gemm {
            inner: Mutex::new(Inner {
                handle,
                plans: HashMap::new(),
                heuristic_calls: 0,
            }),
            workspace: Mutex::new(workspace),
            stream,
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// How many algorithm searches ran (one per new plan); for tests and logs.
    pub fn heuristic_calls(&self) -> u64 {
        self.inner.lock().map_or(0, |g| g.heuristic_calls)
    }

    /// `y = epilogue(x W^T + bias)`, or with `accumulate` `y = x W^T + bias + y` (Bias / None
    /// epilogues only: cuBLASLt would apply GELU after the accumulation).
    #[allow(clippy::too_many_arguments)]
    pub fn linear<T: KernelFloat>(
        &self,
        x: &CudaView<'_, T>,
        w: &CudaView<'_, T>,
        bias: Option<&CudaView<'_, T>>,
        y: &mut CudaViewMut<'_, T>,
        shape: LinearShape,
        epilogue: Epilogue,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "linear";
        let LinearShape {
            rows,
            in_features: k,
            out_features: m,
        } = shape;
        if k == 0 || m == 0 {
            return Err(invalid(
                OP,
                format!("in_features {k} / out_features {m} must be > 0"),
            ));
        }
        if x.len() < rows * k || w.len() < m * k || y.len() < rows * m {
            return Err(invalid(
                OP,
                format!(
                    "x {} (needs {}), w {} (needs {}), y {} (needs {})",
                    x.len(),
                    rows * k,
                    w.len(),
                    m * k,
                    y.len(),
                    rows * m
                ),
            ));
        }
        match (epilogue.has_bias(), bias) {
            (true, None) => {
                return Err(invalid(
                    OP,
                    format!("epilogue {} needs a bias", epilogue.name()),
                ))
            }
            (false, Some(_)) => return Err(invalid(OP, "a bias was given with epilogue none")),
            (true, Some(b)) if b.len() < m => {
                return Err(invalid(
                    OP,
                    format!("bias has {} elements, needs {m}", b.len()),
                ))
            }
            _ => {}
        }
        if accumulate && epilogue == Epilogue::GeluTanhBias {
            return Err(unsupported(OP, "accumulate with the GELU epilogue"));
        }
        for v in [rows, k, m] {
            if i64::try_from(v).is_err() || v > i32::MAX as usize {
                return Err(invalid(OP, format!("dimension {v} too large")));
            }
        }
        if rows == 0 {
            return Ok(());
        }
        let s = &*self.stream;
        let (xp, _g1) = x.device_ptr(s);
        let (wp, _g2) = w.device_ptr(s);
        let (yp, _g3) = y.device_ptr_mut(s);
        let bg = bias.map(|b| b.device_ptr(s));
        let bp = bg.as_ref().map_or(0, |b| b.0);
        if bp != 0 && !bp.is_multiple_of(16) {
            return Err(unsupported(OP, "bias must be 16-byte aligned"));
        }
        let key = PlanKey {
            dt: T::DT,
            shape,
            epilogue,
            accumulate,
            align: [alignment(wp), alignment(xp), alignment(yp)],
        };
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| invalid(OP, "GEMM state poisoned by a panic"))?;
        let handle = inner.handle.0;
        if !inner.plans.contains_key(&key) {
            if inner.plans.len() >= MAX_PLANS {
                inner.plans.clear();
            }
            let plan = Plan::new(handle, &key)?;
            inner.heuristic_calls += 1;
            inner.plans.insert(key, plan);
        }
        let plan = inner
            .plans
            .get(&key)
            .ok_or_else(|| invalid(OP, "plan cache"))?;
        if epilogue.has_bias() {
            set_desc(
                plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bp,
            )?;
        }
        let alpha = 1f32;
        let beta = if accumulate { 1f32 } else { 0f32 };
        let mut ws = self
            .workspace
            .lock()
            .map_err(|_| invalid(OP, "GEMM workspace poisoned by a panic"))?;
        let ws_len = ws.len();
        let (wsp, _g4) = ws.device_ptr_mut(s);
        // SAFETY: descriptors from the plan for exactly these shapes/types/alignments; the
        // buffers were checked to hold rows*k, m*k, rows*m (and m bias) elements; alpha/beta
        // are host F32 (scale type 32F, default host pointer mode); C and D are the same buffer
        // with the same layout, which cuBLASLt supports in place. The guards keep the buffers'
        // cudarc events correct until the call is queued.
        unsafe {
            lt::matmul(
                handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                wp as *const c_void,
                plan.a,
                xp as *const c_void,
                plan.b,
                yp as *const c_void,
                plan.c,
                yp as *mut c_void,
                plan.c,
                &plan.algo,
                wsp as *mut c_void,
                ws_len,
                s.cu_stream() as sys::cudaStream_t,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_of_addresses() {
        assert_eq!(alignment(0x1000), 256);
        assert_eq!(alignment(0x1002), 2);
        assert_eq!(alignment(0x1010), 16);
        assert_eq!(alignment(0x1080), 128);
    }
}
