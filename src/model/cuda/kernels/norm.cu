// Row normalisations on [rows, width] activations, one 128-thread block per row; each thread
// keeps NV chunks of 8 consecutive elements in registers (width <= 1024 * NV), so a row is read
// once and written once. Chunk c of a row is elements 8c .. 8c+7 and belongs to thread c % 128;
// every thread reads and writes only its own chunks, so `out` / `sum_out` may alias `x` or
// `residual` (in-place update of the residual stream).
//
//   fused_norm  mode 0 (LayerNorm): s = round(x + bias + residual); out = (s - mean) * rstd * g + b
//               mode 1 (RMSNorm):   s = round(x + bias + residual); out = s * rstd * (g + unit)
//               (bias, residual, beta, sum_out optional; sum_out receives s, the new residual
//               stream; `round` = rounding to the storage type, what a separate add kernel
//               would have stored). Statistics are two-pass in F32 over the row held in
//               registers (no E[x^2] - E[x]^2 cancellation).
//   embed_norm  s = round(round(word[id] + type[tid]) + pos[pid]) * scale, then LayerNorm
//               (do_ln) or none; ids out of range are clamped and set bits in *err
//               (1 = word, 2 = position, 4 = type).
#include "common.cuh"

namespace {

constexpr int NT = 128;
constexpr int NW = NT / 32;

struct NormParams {
  const void* x;
  const void* bias;      // [width] or null
  const void* residual;  // [rows, width] or null
  const void* gamma;     // [width]
  const void* beta;      // [width] or null
  void* out;             // [rows, width]
  void* sum_out;         // [rows, width] or null
  long long rows;
  int width;
  int mode;         // 0 LayerNorm, 1 RMSNorm
  int unit_offset;  // RMSNorm: weight + 1 (Gemma)
  int vec_ok;       // every pointer 16-byte aligned and width % 8 == 0
  float eps;
  int reserved;
};
static_assert(sizeof(NormParams) == 88, "NormParams layout must match params.rs");

struct EmbedParams {
  const void* word;  // [vocab, width]
  const void* pos;   // [n_pos, width] or null
  const void* type;  // [n_type, width] or null
  const uint32_t* ids;
  const uint32_t* pos_ids;   // required with pos
  const uint32_t* type_ids;  // null: type 0
  const void* gamma;         // [width] (do_ln)
  const void* beta;          // [width] (do_ln) or null
  void* out;
  int* err;
  long long rows;
  int width, vocab, n_pos, n_type;
  float scale, eps;
  int do_ln, vec_ok;
};
static_assert(sizeof(EmbedParams) == 120, "EmbedParams layout must match params.rs");

template <typename T, int NV>
SI_DEVICE void add_row(float (&v)[NV][8], const T* src, int width, bool vec) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int base = (tid + k * NT) * 8;
    if (base < width) {
      float t[8];
      si::load_chunk(src + base, width - base, vec, t);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[k][e] += t[e];
    }
  }
}

template <typename T, int NV> SI_DEVICE void round_row(float (&v)[NV][8]) {
#pragma unroll
  for (int k = 0; k < NV; ++k)
#pragma unroll
    for (int e = 0; e < 8; ++e) v[k][e] = si::round_to<T>(v[k][e]);
}

template <typename T, int NV>
SI_DEVICE void store_row(const float (&v)[NV][8], T* dst, int width, bool vec) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int base = (tid + k * NT) * 8;
    if (base < width) si::store_chunk(dst + base, width - base, vec, v[k]);
  }
}

// LayerNorm (mode 0) or RMSNorm (mode 1) of the row in registers, in place. Elements past
// `width` hold 0 on entry and are ignored.
template <typename T, int NV>
SI_DEVICE void normalize_row(float (&v)[NV][8], int width, int mode, const T* gamma, const T* beta,
                             int unit_offset, float eps, bool vec) {
  __shared__ float scratch[NW];
  const int tid = threadIdx.x;
  float rstd, mean = 0.f;
  if (mode == 0) {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < NV; ++k)
#pragma unroll
      for (int e = 0; e < 8; ++e) s += v[k][e];
    mean = si::block_sum<NW>(s, scratch) / static_cast<float>(width);
    float q = 0.f;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int base = (tid + k * NT) * 8;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float d = v[k][e] - mean;
        if (base + e < width) q = fmaf(d, d, q);
      }
    }
    rstd = rsqrtf(si::block_sum<NW>(q, scratch) / static_cast<float>(width) + eps);
  } else {
    float q = 0.f;
#pragma unroll
    for (int k = 0; k < NV; ++k)
#pragma unroll
      for (int e = 0; e < 8; ++e) q = fmaf(v[k][e], v[k][e], q);
    rstd = rsqrtf(si::block_sum<NW>(q, scratch) / static_cast<float>(width) + eps);
  }
  const float unit = (mode == 1 && unit_offset) ? 1.f : 0.f;
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int base = (tid + k * NT) * 8;
    if (base < width) {
      float g[8], b[8];
      si::load_chunk(gamma + base, width - base, vec, g);
      if (beta) si::load_chunk(beta + base, width - base, vec, b);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float y = (v[k][e] - mean) * rstd * (g[e] + unit);
        v[k][e] = beta ? y + b[e] : y;
      }
    }
  }
}

template <typename T, int NV> SI_DEVICE void fused_norm(const NormParams& p) {
  const long long row = blockIdx.x;
  if (row >= p.rows) return;
  const int W = p.width;
  const bool vec = p.vec_ok != 0;
  const size_t off = static_cast<size_t>(row) * W;
  float v[NV][8];
#pragma unroll
  for (int k = 0; k < NV; ++k)
#pragma unroll
    for (int e = 0; e < 8; ++e) v[k][e] = 0.f;
  add_row<T, NV>(v, static_cast<const T*>(p.x) + off, W, vec);
  if (p.bias) add_row<T, NV>(v, static_cast<const T*>(p.bias), W, vec);
  if (p.residual) add_row<T, NV>(v, static_cast<const T*>(p.residual) + off, W, vec);
  round_row<T, NV>(v);
  if (p.sum_out) store_row<T, NV>(v, static_cast<T*>(p.sum_out) + off, W, vec);
  normalize_row<T, NV>(v, W, p.mode, static_cast<const T*>(p.gamma), static_cast<const T*>(p.beta),
                       p.unit_offset, p.eps, vec);
  store_row<T, NV>(v, static_cast<T*>(p.out) + off, W, vec);
}

template <typename T, int NV> SI_DEVICE void embed_norm(const EmbedParams& p) {
  const long long row = blockIdx.x;
  if (row >= p.rows) return;
  const int W = p.width;
  const bool vec = p.vec_ok != 0;
  unsigned id = p.ids[row];
  int bad = 0;
  if (id >= static_cast<unsigned>(p.vocab)) { id = p.vocab - 1; bad |= 1; }
  float v[NV][8];
#pragma unroll
  for (int k = 0; k < NV; ++k)
#pragma unroll
    for (int e = 0; e < 8; ++e) v[k][e] = 0.f;
  add_row<T, NV>(v, static_cast<const T*>(p.word) + static_cast<size_t>(id) * W, W, vec);
  if (p.type) {
    unsigned tt = p.type_ids ? p.type_ids[row] : 0u;
    if (tt >= static_cast<unsigned>(p.n_type)) { tt = p.n_type - 1; bad |= 4; }
    add_row<T, NV>(v, static_cast<const T*>(p.type) + static_cast<size_t>(tt) * W, W, vec);
    round_row<T, NV>(v);
  }
  if (p.pos) {
    unsigned pp = p.pos_ids[row];
    if (pp >= static_cast<unsigned>(p.n_pos)) { pp = p.n_pos - 1; bad |= 2; }
    add_row<T, NV>(v, static_cast<const T*>(p.pos) + static_cast<size_t>(pp) * W, W, vec);
    round_row<T, NV>(v);
  }
  if (p.scale != 1.f) {
#pragma unroll
    for (int k = 0; k < NV; ++k)
#pragma unroll
      for (int e = 0; e < 8; ++e) v[k][e] *= p.scale;
    round_row<T, NV>(v);
  }
  if (bad && threadIdx.x == 0 && p.err) atomicOr(p.err, bad);
  if (p.do_ln)
    normalize_row<T, NV>(v, W, 0, static_cast<const T*>(p.gamma), static_cast<const T*>(p.beta), 0,
                         p.eps, vec);
  store_row<T, NV>(v, static_cast<T*>(p.out) + static_cast<size_t>(row) * W, W, vec);
}

}  // namespace

#define SI_NORM(SFX, T, NV)                                                                        \
  extern "C" __global__ void __launch_bounds__(NT) fused_norm_##SFX##_v##NV(const NormParams p) { \
    fused_norm<T, NV>(p);                                                                          \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(NT) embed_norm_##SFX##_v##NV(const EmbedParams p) { \
    embed_norm<T, NV>(p);                                                                          \
  }

SI_NORM(f16, __half, 1)
SI_NORM(f16, __half, 2)
SI_NORM(f16, __half, 4)
SI_NORM(f16, __half, 8)
SI_NORM(bf16, __nv_bfloat16, 1)
SI_NORM(bf16, __nv_bfloat16, 2)
SI_NORM(bf16, __nv_bfloat16, 4)
SI_NORM(bf16, __nv_bfloat16, 8)
