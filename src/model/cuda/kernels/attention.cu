// Varlen multi-head attention over packed sequences (no padding, no L x L buffer).
//
// Layout: token t of sequence s is row cu_seqlens[s] + i (i = position within the sequence).
// Q/K/V are read in place through row strides (the fused QKV GEMM output: Hq query heads,
// then Hkv key heads, then Hkv value heads per row); the host passes q/k/v pointers already
// offset to their first head. Output O is [T, Hq * D] (row stride o_stride).
//
// Score of query i and key j (both positions in one sequence):
//   s = scale * <q_i, k_j> + bias[h][clamp(j - i, -R, R) + R]      (bias optional)
// allowed iff j < L, (left < 0 or j >= i - left), (right < 0 or j <= i + right);
// causal = (left, 0). Softmax over allowed j in F32 (online, base 2), O = sum p_j v_j / sum p_j.
//
// Two implementations with the same parameters and semantics:
//   attn_mma_*    FlashAttention-2 style: 64 query rows x 64 keys per step, 4 warps, tensor
//                 cores (mma.sync m16n8k16, F32 accumulate), softmax in registers.
//   attn_simple_* one warp per query row, F32 FMAs, one key per step. Slow, obviously right;
//                 the start-up self-check compares both against the CPU reference and uses the
//                 fast one only if it agrees.
#include "common.cuh"

namespace {

struct AttnParams {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  const uint32_t* cu_seqlens;  // n_seqs + 1 offsets
  const float* rel_bias;       // [n_q_heads, 2 * rel_max_distance + 1] or null
  long long q_stride, k_stride, v_stride, o_stride;  // elements between consecutive tokens
  int n_seqs, n_q_heads, n_kv_heads;
  int window_left, window_right;  // -1 = unbounded
  int rel_max_distance;
  float scale;
  int reserved;
};
static_assert(sizeof(AttnParams) == 112, "AttnParams layout must match params.rs");

constexpr float LOG2E = 1.4426950408889634f;
SI_DEVICE float neg_inf() { return __int_as_float(0xff800000); }

SI_DEVICE bool allowed(int i, int j, int L, int left, int right) {
  return j < L && (left < 0 || j >= i - left) && (right < 0 || j <= i + right);
}

// Keys any query row in [i_first, i_last] may see.
SI_DEVICE void key_range(int i_first, int i_last, int L, int left, int right, int& lo, int& hi) {
  lo = left >= 0 ? max(0, i_first - left) : 0;
  hi = right >= 0 ? min(L - 1, i_last + right) : L - 1;
}

SI_DEVICE float bias_at(const float* tab, int R, int rel) {
  rel = max(-R, min(R, rel));
  return tab[rel + R];
}

// ---------------------------------------------------------------------------------------------
// Simple variant: one warp per (query row, head); lane l holds head elements l, l+32, ...
// ---------------------------------------------------------------------------------------------
template <typename T, int D>
SI_DEVICE void attn_simple(const AttnParams& p) {
  static_assert(D % 32 == 0, "D must be a multiple of 32");
  constexpr int E = D / 32;
  const int seq = blockIdx.z, h = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (seq >= p.n_seqs) return;
  const int start = static_cast<int>(p.cu_seqlens[seq]);
  const int L = static_cast<int>(p.cu_seqlens[seq + 1]) - start;
  const int i = blockIdx.x * 4 + warp;
  if (i >= L) return;  // no block-level synchronisation below
  const int kvh = h / (p.n_q_heads / p.n_kv_heads);
  const float sl2 = p.scale * LOG2E;

  const T* qrow = static_cast<const T*>(p.q) + static_cast<size_t>(start + i) * p.q_stride + h * D;
  const T* kbase = static_cast<const T*>(p.k) + static_cast<size_t>(start) * p.k_stride + kvh * D;
  const T* vbase = static_cast<const T*>(p.v) + static_cast<size_t>(start) * p.v_stride + kvh * D;
  const float* btab =
      p.rel_bias ? p.rel_bias + static_cast<size_t>(h) * (2 * p.rel_max_distance + 1) : nullptr;

  float q[E], acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    q[e] = si::to_f32(qrow[lane + 32 * e]) * sl2;
    acc[e] = 0.f;
  }
  int lo, hi;
  key_range(i, i, L, p.window_left, p.window_right, lo, hi);
  float m = neg_inf(), l = 0.f;
  for (int j = lo; j <= hi; ++j) {
    const T* kr = kbase + static_cast<size_t>(j) * p.k_stride;
    float d = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) d = fmaf(q[e], si::to_f32(kr[lane + 32 * e]), d);
    d = si::warp_sum(d);  // identical in every lane (fp addition is commutative)
    if (btab) d = fmaf(LOG2E, bias_at(btab, p.rel_max_distance, j - i), d);
    const float mn = fmaxf(m, d);
    const float c = exp2f(m - mn);  // m = -inf on the first key -> 0
    const float pj = exp2f(d - mn);
    l = fmaf(l, c, pj);
    const T* vr = vbase + static_cast<size_t>(j) * p.v_stride;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = fmaf(acc[e], c, pj * si::to_f32(vr[lane + 32 * e]));
    m = mn;
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
  T* orow = static_cast<T*>(p.o) + static_cast<size_t>(start + i) * p.o_stride + h * D;
#pragma unroll
  for (int e = 0; e < E; ++e) orow[lane + 32 * e] = si::from_f32<T>(acc[e] * inv);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core variant.
// ---------------------------------------------------------------------------------------------
template <typename T> SI_DEVICE void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <> SI_DEVICE void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef SI_HOST_EMULATION  // ../emu/simt.h: the same fragment semantics on the host
  simt::mma_m16n8k16<__half>(d, a, b0, b1);
#else
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
template <> SI_DEVICE void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef SI_HOST_EMULATION
  simt::mma_m16n8k16<__nv_bfloat16>(d, a, b0, b1);
#else
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

SI_DEVICE uint32_t lds32(const void* p) { return *static_cast<const uint32_t*>(p); }

constexpr int BR = 64;  // query rows per block (16 per warp)
constexpr int BC = 64;  // keys per step

// Rows row0 .. row0+63 of a [*, D] head slice (row stride `stride` elements) into shared
// memory with row pitch D + 8; rows after `last` are zero (so masked keys contribute exact 0,
// never NaN * 0). 16-byte loads: the host guarantees 16-byte aligned rows.
template <typename T, int D>
SI_DEVICE void tile_load(T* s, const T* g, long long stride, int row0, int last, int tid) {
  constexpr int CPR = D / 8;
  constexpr int LDS = D + 8;
#pragma unroll 4
  for (int c = tid; c < BR * CPR; c += 128) {
    const int r = c / CPR, cc = c % CPR;
    uint4 val = make_uint4(0u, 0u, 0u, 0u);
    if (row0 + r <= last)
      val = *reinterpret_cast<const uint4*>(g + static_cast<size_t>(row0 + r) * stride + cc * 8);
    *reinterpret_cast<uint4*>(s + r * LDS + cc * 8) = val;
  }
}

// Fragment layouts (PTX ISA, mma.m16n8k16 .f16/.bf16; g = lane / 4, t = lane % 4):
//   A 16x16 (row): reg0 = (g, 2t..2t+1), reg1 = (g+8, 2t..), reg2 = (g, 2t+8..), reg3 = (g+8, 2t+8..)
//   B 16x8 (col):  reg0 = (k = 2t..2t+1, n = g), reg1 = (k = 2t+8.., n = g)
//   C 16x8 f32:    c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
template <typename T, int D>
SI_DEVICE void attn_mma(const AttnParams& p) {
  static_assert(D % 16 == 0 && D <= 128, "D must be 32, 64 or 128");
  constexpr int LDS = D + 8;  // shared row pitch: +16 bytes keeps the fragment loads conflict-free
  constexpr int KD = D / 16;  // k-steps over the head dimension
  constexpr int ND = D / 8;   // n-tiles of the output
  __shared__ __align__(16) T sK[BC * LDS];
  __shared__ __align__(16) T sV[BC * LDS];

  const int seq = blockIdx.z, h = blockIdx.y;
  if (seq >= p.n_seqs) return;
  const int start = static_cast<int>(p.cu_seqlens[seq]);
  const int L = static_cast<int>(p.cu_seqlens[seq + 1]) - start;
  const int q0 = blockIdx.x * BR;
  if (q0 >= L) return;  // uniform over the block, before any __syncthreads
  const int kvh = h / (p.n_q_heads / p.n_kv_heads);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int left = p.window_left, right = p.window_right, R = p.rel_max_distance;

  const T* Qh = static_cast<const T*>(p.q) + static_cast<size_t>(start) * p.q_stride + h * D;
  const T* Kh = static_cast<const T*>(p.k) + static_cast<size_t>(start) * p.k_stride + kvh * D;
  const T* Vh = static_cast<const T*>(p.v) + static_cast<size_t>(start) * p.v_stride + kvh * D;
  const float* btab = p.rel_bias ? p.rel_bias + static_cast<size_t>(h) * (2 * R + 1) : nullptr;

  // Q fragments (through sK, which the key loop reuses).
  tile_load<T, D>(sK, Qh, p.q_stride, q0, L - 1, tid);
  __syncthreads();
  uint32_t qf[KD][4];
  const int r0 = warp * 16 + g;
#pragma unroll
  for (int kk = 0; kk < KD; ++kk) {
    const T* b0 = sK + r0 * LDS + kk * 16 + 2 * t;
    const T* b1 = b0 + 8 * LDS;
    qf[kk][0] = lds32(b0);
    qf[kk][1] = lds32(b1);
    qf[kk][2] = lds32(b0 + 8);
    qf[kk][3] = lds32(b1 + 8);
  }
  __syncthreads();

  const int i0 = q0 + r0, i1 = i0 + 8;  // this thread's two query rows
  const float sl2 = p.scale * LOG2E;
  float o[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
  float m0 = neg_inf(), m1 = neg_inf(), l0 = 0.f, l1 = 0.f;

  int klo, khi;
  key_range(q0, min(q0 + BR - 1, L - 1), L, left, right, klo, khi);
  for (int kt = klo; kt <= khi; kt += BC) {
    tile_load<T, D>(sK, Kh, p.k_stride, kt, khi, tid);
    tile_load<T, D>(sV, Vh, p.v_stride, kt, khi, tid);
    __syncthreads();

    // S = Q K^T for 16 rows x 64 keys per warp.
    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const T* kb = sK + (nt * 8 + g) * LDS + kk * 16 + 2 * t;
        mma16816<T>(s[nt], qf[kk], lds32(kb), lds32(kb + 8));
      }
    }

    // Scale, bias, mask (log2 domain) and the row maxima over the quad (lanes 4g..4g+3).
    float mx0 = neg_inf(), mx1 = neg_inf();
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = kt + nt * 8 + 2 * t + e;
        float v0 = s[nt][e] * sl2, v1 = s[nt][2 + e] * sl2;
        if (btab) {
          v0 = fmaf(LOG2E, bias_at(btab, R, j - i0), v0);
          v1 = fmaf(LOG2E, bias_at(btab, R, j - i1), v1);
        }
        if (!allowed(i0, j, L, left, right)) v0 = neg_inf();
        if (!allowed(i1, j, L, left, right)) v1 = neg_inf();
        s[nt][e] = v0;
        s[nt][2 + e] = v1;
        mx0 = fmaxf(mx0, v0);
        mx1 = fmaxf(mx1, v1);
      }
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    // A row with no allowed key so far keeps max -inf: subtract 0 instead (exp2(-inf) = 0).
    const float mu0 = mn0 == neg_inf() ? 0.f : mn0;
    const float mu1 = mn1 == neg_inf() ? 0.f : mn1;
    const float c0 = exp2f(m0 - mu0), c1 = exp2f(m1 - mu1);
    m0 = mn0;
    m1 = mn1;
    float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[nt][e] = exp2f(s[nt][e] - mu0);
        s[nt][2 + e] = exp2f(s[nt][2 + e] - mu1);
        ps0 += s[nt][e];
        ps1 += s[nt][2 + e];
      }
    }
    l0 = fmaf(l0, c0, ps0);
    l1 = fmaf(l1, c1, ps1);
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      o[nd][0] *= c0;
      o[nd][1] *= c0;
      o[nd][2] *= c1;
      o[nd][3] *= c1;
    }

    // O += P V: the S accumulators of key tiles 2kk, 2kk+1 are exactly the A fragment of P.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4];
      a[0] = si::pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      a[1] = si::pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      a[2] = si::pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = si::pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      const uint16_t* vrow = reinterpret_cast<const uint16_t*>(sV) + (kk * 16 + 2 * t) * LDS + g;
#pragma unroll
      for (int nd = 0; nd < ND; ++nd) {
        const uint16_t* vb = vrow + nd * 8;
        const uint32_t b0 = si::pack_raw(vb[0], vb[LDS]);
        const uint32_t b1 = si::pack_raw(vb[8 * LDS], vb[9 * LDS]);
        mma16816<T>(o[nd], a, b0, b1);
      }
    }
    __syncthreads();  // before the next tile overwrites sK / sV
  }

  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f;
  const float inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  T* Oh = static_cast<T*>(p.o) + static_cast<size_t>(start) * p.o_stride + h * D;
  if (i0 < L) {
    T* orow = Oh + static_cast<size_t>(i0) * p.o_stride + 2 * t;
#pragma unroll
    for (int nd = 0; nd < ND; ++nd)
      *reinterpret_cast<uint32_t*>(orow + nd * 8) = si::pack2<T>(o[nd][0] * inv0, o[nd][1] * inv0);
  }
  if (i1 < L) {
    T* orow = Oh + static_cast<size_t>(i1) * p.o_stride + 2 * t;
#pragma unroll
    for (int nd = 0; nd < ND; ++nd)
      *reinterpret_cast<uint32_t*>(orow + nd * 8) = si::pack2<T>(o[nd][2] * inv1, o[nd][3] * inv1);
  }
}

}  // namespace

// Stable unmangled entry points (the names the Rust loader asks for).
#define SI_ATTN(NAME, BODY, T, D) \
  extern "C" __global__ void __launch_bounds__(128, 2) NAME(const AttnParams p) { BODY<T, D>(p); }

SI_ATTN(attn_mma_f16_d32, attn_mma, __half, 32)
SI_ATTN(attn_mma_f16_d64, attn_mma, __half, 64)
SI_ATTN(attn_mma_f16_d128, attn_mma, __half, 128)
SI_ATTN(attn_mma_bf16_d32, attn_mma, __nv_bfloat16, 32)
SI_ATTN(attn_mma_bf16_d64, attn_mma, __nv_bfloat16, 64)
SI_ATTN(attn_mma_bf16_d128, attn_mma, __nv_bfloat16, 128)
SI_ATTN(attn_simple_f16_d32, attn_simple, __half, 32)
SI_ATTN(attn_simple_f16_d64, attn_simple, __half, 64)
SI_ATTN(attn_simple_f16_d128, attn_simple, __half, 128)
SI_ATTN(attn_simple_f16_d256, attn_simple, __half, 256)
SI_ATTN(attn_simple_bf16_d32, attn_simple, __nv_bfloat16, 32)
SI_ATTN(attn_simple_bf16_d64, attn_simple, __nv_bfloat16, 64)
SI_ATTN(attn_simple_bf16_d128, attn_simple, __nv_bfloat16, 128)
SI_ATTN(attn_simple_bf16_d256, attn_simple, __nv_bfloat16, 256)
