// Segmented pooling over packed sequences and the non-finite scan.
//
//   pool:      out[s, c] (F32) for sequence s = rows cu_seqlens[s] .. cu_seqlens[s+1] of x
//              (row stride x_stride): mode 0 first token (CLS), 1 mean, 2 last token, 3 max.
//              An empty sequence gives 0. Block = 32 columns x 8 row groups; F32 accumulation.
//   nonfinite: sets *flag = 1 if any element of x[0..n) is NaN or +-Inf (exponent bits all ones:
//              exp_mask 0x7c00 for F16, 0x7f80 for BF16 with elem_bytes 2; 0x7f800000 for F32 with
//              elem_bytes 4). Never clears the flag: the host zeroes it.
#include "common.cuh"

namespace {

struct PoolParams {
  const void* x;
  const uint32_t* cu_seqlens;
  float* out;  // [n_seqs, width]
  long long x_stride;
  int n_seqs;
  int width;
  int mode;
  int reserved;
};
static_assert(sizeof(PoolParams) == 48, "PoolParams layout must match params.rs");

struct ScanParams {
  const void* x;
  int* flag;
  long long n;
  int elem_bytes;
  unsigned exp_mask;
  int vec_ok;  // x 16-byte aligned
  int reserved;
};
static_assert(sizeof(ScanParams) == 40, "ScanParams layout must match params.rs");

constexpr int PC = 32;  // columns per block (one warp-wide row segment)
constexpr int PR = 8;   // row groups (warps)

template <typename T> SI_DEVICE void pool(const PoolParams& p) {
  __shared__ float part[PR][PC];
  const int s = blockIdx.x;
  if (s >= p.n_seqs) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int col = blockIdx.y * PC + lane;
  const int start = static_cast<int>(p.cu_seqlens[s]);
  const int L = static_cast<int>(p.cu_seqlens[s + 1]) - start;
  const T* X = static_cast<const T*>(p.x);
  const int mode = p.mode;
  float acc = mode == 3 ? __int_as_float(0xff800000) : 0.f;
  if (col < p.width && L > 0) {
    if (mode == 0 || mode == 2) {
      if (warp == 0) {
        const int r = mode == 0 ? 0 : L - 1;
        acc = si::to_f32(X[static_cast<size_t>(start + r) * p.x_stride + col]);
      }
    } else {
      for (int r = warp; r < L; r += PR) {
        const float v = si::to_f32(X[static_cast<size_t>(start + r) * p.x_stride + col]);
        acc = mode == 3 ? fmaxf(acc, v) : acc + v;
      }
    }
  }
  part[warp][lane] = acc;
  __syncthreads();
  if (warp == 0 && col < p.width) {
    float r = part[0][lane];
    if (mode == 1 || mode == 3) {
#pragma unroll
      for (int w = 1; w < PR; ++w) r = mode == 3 ? fmaxf(r, part[w][lane]) : r + part[w][lane];
    }
    if (mode == 1 && L > 0) r /= static_cast<float>(L);
    if (L <= 0) r = 0.f;
    p.out[static_cast<size_t>(s) * p.width + col] = r;
  }
}

SI_DEVICE void nonfinite(const ScanParams& p) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  const long long t0 = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  bool bad = false;
  if (p.elem_bytes == 2) {
    const uint16_t* x = static_cast<const uint16_t*>(p.x);
    const uint16_t m = static_cast<uint16_t>(p.exp_mask);
    const long long nv = p.vec_ok ? p.n / 8 : 0;
    for (long long i = t0; i < nv; i += stride) {
      const uint4 raw = reinterpret_cast<const uint4*>(x)[i];
      const uint16_t* e = reinterpret_cast<const uint16_t*>(&raw);
#pragma unroll
      for (int k = 0; k < 8; ++k) bad |= (e[k] & m) == m;
    }
    for (long long i = nv * 8 + t0; i < p.n; i += stride) bad |= (x[i] & m) == m;
  } else {
    const uint32_t* x = static_cast<const uint32_t*>(p.x);
    const uint32_t m = p.exp_mask;
    const long long nv = p.vec_ok ? p.n / 4 : 0;
    for (long long i = t0; i < nv; i += stride) {
      const uint4 raw = reinterpret_cast<const uint4*>(x)[i];
      bad |= ((raw.x & m) == m) | ((raw.y & m) == m) | ((raw.z & m) == m) | ((raw.w & m) == m);
    }
    for (long long i = nv * 4 + t0; i < p.n; i += stride) bad |= (x[i] & m) == m;
  }
  if (bad) atomicOr(p.flag, 1);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256) pool_f16(const PoolParams p) { pool<__half>(p); }
extern "C" __global__ void __launch_bounds__(256) pool_bf16(const PoolParams p) { pool<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(256) nonfinite_scan(const ScanParams p) { nonfinite(p); }
