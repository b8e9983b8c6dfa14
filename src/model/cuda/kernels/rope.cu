// Rotary position embedding in place on the query and key heads of the fused QKV buffer, with
// an optional per-head RMSNorm of q and k applied first (Qwen3's q_norm / k_norm).
//
// Row r of `qkv` (row stride row_stride elements) holds n_q_heads query heads and then
// n_k_heads key heads, each head_dim wide, starting at column 0 (the value heads after them
// are not touched). One warp per (row, head); the head is staged in shared memory as F32.
//
//   norm (w != null):   x = x * rsqrt(mean(x^2) + eps) * (w + unit)
//   rope (rotary_dim>0): angle_i = float(pos) * inv_freq[i] (F32 product, as HF computes it),
//                        c = cos(angle_i) * attn_scaling, s = sin(angle_i) * attn_scaling with the
//                        accurate sincosf; pairs (i, i + rotary_dim/2) (NeoX rotate-half) or
//                        (2i, 2i+1) (GPT-J interleaved) become (a c - b s, b c + a s); elements
//                        at rotary_dim.. are left as they are (partial rotary).
// Everything in F32, rounded once when stored.
#include "common.cuh"

namespace {

constexpr int MAX_D = 256;

struct RopeParams {
  void* qkv;
  const uint32_t* positions;  // [rows]
  const float* inv_freq;      // [rotary_dim / 2]
  const void* q_norm;         // [head_dim] or null
  const void* k_norm;         // [head_dim] or null
  long long rows;
  long long row_stride;
  int n_q_heads, n_k_heads, head_dim, rotary_dim;
  int interleaved, norm_unit_offset;
  float attn_scaling, eps;
};
static_assert(sizeof(RopeParams) == 88, "RopeParams layout must match params.rs");

template <typename T> SI_DEVICE void rope_qk(const RopeParams& p) {
  __shared__ float buf[4][MAX_D];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int nh = p.n_q_heads + p.n_k_heads;
  const long long item = static_cast<long long>(blockIdx.x) * 4 + warp;
  if (item >= p.rows * nh) return;  // per warp; only __syncwarp below
  const long long row = item / nh;
  const int head = static_cast<int>(item % nh);
  const int D = p.head_dim;
  T* x = static_cast<T*>(p.qkv) + static_cast<size_t>(row) * p.row_stride + static_cast<size_t>(head) * D;
  float* b = buf[warp];
  const T* w = static_cast<const T*>(head < p.n_q_heads ? p.q_norm : p.k_norm);

  for (int d = lane; d < D; d += 32) b[d] = si::to_f32(x[d]);
  if (w) {
    float ss = 0.f;
    for (int d = lane; d < D; d += 32) ss = fmaf(b[d], b[d], ss);
    const float r = rsqrtf(si::warp_sum(ss) / static_cast<float>(D) + p.eps);
    const float unit = p.norm_unit_offset ? 1.f : 0.f;
    for (int d = lane; d < D; d += 32) b[d] = b[d] * r * (si::to_f32(w[d]) + unit);
  }
  __syncwarp();
  const int rd = p.rotary_dim;
  if (rd > 0) {
    const int half = rd / 2;
    const float pos = static_cast<float>(p.positions[row]);
    for (int i = lane; i < half; i += 32) {
      const float ang = pos * p.inv_freq[i];
      float sn, cs;
      sincosf(ang, &sn, &cs);
      cs *= p.attn_scaling;
      sn *= p.attn_scaling;
      const int i1 = p.interleaved ? 2 * i : i;
      const int i2 = p.interleaved ? 2 * i + 1 : i + half;
      const float a = b[i1], c = b[i2];
      x[i1] = si::from_f32<T>(a * cs - c * sn);
      x[i2] = si::from_f32<T>(c * cs + a * sn);
    }
  }
  if (w)
    for (int d = rd + lane; d < D; d += 32) x[d] = si::from_f32<T>(b[d]);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(128) rope_qk_f16(const RopeParams p) { rope_qk<__half>(p); }
extern "C" __global__ void __launch_bounds__(128) rope_qk_bf16(const RopeParams p) { rope_qk<__nv_bfloat16>(p); }
