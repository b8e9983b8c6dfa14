// Element-wise activations, 8 consecutive elements of a row per thread (one 16-byte access when
// vec_ok), grid-stride over all chunks. F32 math with the accurate erff / tanhf / expf.
//
//   glu:      x [rows, 2 I] -> out [rows, I]; out = act(x[:, a]) * x[:, b] with a = first half,
//             b = second half when gate_first (Llama / ModernBERT), swapped otherwise (GTE's
//             up_gate_proj puts the activated gate second).
//   bias_act: out = act(x + bias) over [rows, width] (bias optional; out may alias x).
#include "common.cuh"

namespace {

struct GluParams {
  const void* x;
  void* out;
  long long rows;
  int inter;
  int act;
  int gate_first;
  int vec_ok;  // pointers 16-byte aligned, inter % 8 == 0
};
static_assert(sizeof(GluParams) == 40, "GluParams layout must match params.rs");

struct BiasActParams {
  const void* x;
  const void* bias;  // [width] or null
  void* out;
  long long rows;
  int width;
  int act;
  int vec_ok;  // pointers 16-byte aligned, width % 8 == 0
  int reserved;
};
static_assert(sizeof(BiasActParams) == 48, "BiasActParams layout must match params.rs");

template <typename T> SI_DEVICE void glu(const GluParams& p) {
  const int I = p.inter;
  const long long cpr = (I + 7) / 8;
  const long long total = p.rows * cpr;
  const bool vec = p.vec_ok != 0;
  const T* X = static_cast<const T*>(p.x);
  T* O = static_cast<T*>(p.out);
  const int a_off = p.gate_first ? 0 : I, b_off = p.gate_first ? I : 0;
  for (long long c = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; c < total;
       c += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = c / cpr;
    const int col = static_cast<int>(c % cpr) * 8;
    const int n = I - col;
    const T* xr = X + static_cast<size_t>(r) * 2 * I;
    float a[8], b[8];
    si::load_chunk(xr + a_off + col, n, vec, a);
    si::load_chunk(xr + b_off + col, n, vec, b);
#pragma unroll
    for (int e = 0; e < 8; ++e) a[e] = si::activate(a[e], p.act) * b[e];
    si::store_chunk(O + static_cast<size_t>(r) * I + col, n, vec, a);
  }
}

template <typename T> SI_DEVICE void bias_act(const BiasActParams& p) {
  const int W = p.width;
  const long long cpr = (W + 7) / 8;
  const long long total = p.rows * cpr;
  const bool vec = p.vec_ok != 0;
  const T* X = static_cast<const T*>(p.x);
  const T* B = static_cast<const T*>(p.bias);
  T* O = static_cast<T*>(p.out);
  for (long long c = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; c < total;
       c += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = c / cpr;
    const int col = static_cast<int>(c % cpr) * 8;
    const int n = W - col;
    float v[8];
    si::load_chunk(X + static_cast<size_t>(r) * W + col, n, vec, v);
    if (B) {
      float bb[8];
      si::load_chunk(B + col, n, vec, bb);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = si::round_to<T>(v[e] + bb[e]);
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = si::activate(v[e], p.act);
    si::store_chunk(O + static_cast<size_t>(r) * W + col, n, vec, v);
  }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256) glu_f16(const GluParams p) { glu<__half>(p); }
extern "C" __global__ void __launch_bounds__(256) glu_bf16(const GluParams p) { glu<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(256) bias_act_f16(const BiasActParams p) { bias_act<__half>(p); }
extern "C" __global__ void __launch_bounds__(256) bias_act_bf16(const BiasActParams p) { bias_act<__nv_bfloat16>(p); }
