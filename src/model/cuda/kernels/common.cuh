// Shared helpers for spotinfer's own CUDA kernels (compiled to PTX by build.rs, loaded by
// src/model/cuda/kernels.rs). Every kernel works on F16 or BF16 storage with F32 math.
//
// Parameter structs are passed by value; each has a twin `#[repr(C)]` struct in
// src/model/cuda/params.rs, and both sides assert the same sizeof so a field added on one side
// only is a compile error, not a silent misread.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#define SI_DEVICE __device__ __forceinline__

namespace si {

// ---- conversions ------------------------------------------------------------------------
SI_DEVICE float to_f32(__half x) { return __half2float(x); }
SI_DEVICE float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> SI_DEVICE T from_f32(float x);
template <> SI_DEVICE __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> SI_DEVICE __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Two floats -> one 32-bit register holding (lo, hi) as T2 (lo in the low 16 bits), the
// operand format of mma.sync and of a 4-byte store of two consecutive elements.
template <typename T> SI_DEVICE uint32_t pack2(float lo, float hi);
template <> SI_DEVICE uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <> SI_DEVICE uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// Two raw 16-bit values -> one 32-bit register (lo in the low half).
SI_DEVICE uint32_t pack_raw(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

// 8 consecutive elements <-> 8 floats through one 16-byte access. The pointer must be
// 16-byte aligned (callers check `vec_ok`, computed on the host).
template <typename T> SI_DEVICE void load8(const T* p, float (&v)[8]) {
  uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = to_f32(e[i]);
}
template <typename T> SI_DEVICE void store8(T* p, const float (&v)[8]) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) e[i] = from_f32<T>(v[i]);
  *reinterpret_cast<uint4*>(p) = raw;
}
// Scalar versions with a bound: elements at index >= n read as 0 / are not written.
template <typename T> SI_DEVICE void load8_tail(const T* p, int n, float (&v)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = i < n ? to_f32(p[i]) : 0.f;
}
template <typename T> SI_DEVICE void store8_tail(T* p, int n, const float (&v)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
    if (i < n) p[i] = from_f32<T>(v[i]);
}
// Either of the above: `vec` says the 16-byte path is allowed for full chunks.
template <typename T> SI_DEVICE void load_chunk(const T* p, int n, bool vec, float (&v)[8]) {
  if (vec && n >= 8) load8(p, v); else load8_tail(p, n, v);
}
template <typename T> SI_DEVICE void store_chunk(T* p, int n, bool vec, const float (&v)[8]) {
  if (vec && n >= 8) store8(p, v); else store8_tail(p, n, v);
}

// Round an F32 to T and back: what storing to a T buffer and reading it again gives.
template <typename T> SI_DEVICE float round_to(float x) { return to_f32(from_f32<T>(x)); }

// ---- reductions -------------------------------------------------------------------------
SI_DEVICE float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
SI_DEVICE float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum over a block of NWARPS full warps; every thread gets the result. `scratch` holds
// NWARPS floats; the function synchronises before returning so scratch can be reused.
template <int NWARPS> SI_DEVICE float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = 0.f;
#pragma unroll
  for (int w = 0; w < NWARPS; ++w) t += scratch[w];
  __syncthreads();
  return t;
}

// ---- activations (accurate libdevice functions, never the __ intrinsics) -----------------
enum Act : int { ACT_NONE = 0, ACT_GELU_ERF = 1, ACT_GELU_TANH = 2, ACT_RELU = 3, ACT_SILU = 4, ACT_TANH = 5 };

SI_DEVICE float activate(float x, int act) {
  switch (act) {
    case ACT_GELU_ERF: return 0.5f * x * (1.f + erff(x * 0.70710678118654752440f));
    case ACT_GELU_TANH: {
      const float k0 = 0.79788456080286535588f;  // sqrt(2/pi)
      return 0.5f * x * (1.f + tanhf(k0 * (x + 0.044715f * x * x * x)));
    }
    case ACT_RELU: return fmaxf(x, 0.f);
    case ACT_SILU: return x / (1.f + expf(-x));
    case ACT_TANH: return tanhf(x);
    default: return x;
  }
}

}  // namespace si
