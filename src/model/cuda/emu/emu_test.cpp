// Runs the real kernel sources (../kernels/*.cu) on the host SIMT emulator (simt.h) against
// plain double-precision references, at small edge shapes, for F16 and BF16. No GPU needed;
// scripts/ptx-check.sh builds and runs it. Exit status 1 if any case fails.
//
//   g++ -std=c++20 -O1 -I $CUDA_HOME/include src/model/cuda/emu/emu_test.cpp -o emu_test && ./emu_test [filter]
//
// This checks the kernels' logic (indexing, tiling, masks, online softmax, reductions, vector
// and scalar paths, bounds) under the documented semantics of mma.sync and the warp
// intrinsics; it does not check the hardware itself or timing: the GPU self-test does that.
#include "simt.h"

#include "../kernels/attention.cu"
#include "../kernels/norm.cu"
#include "../kernels/rope.cu"
#include "../kernels/act.cu"
#include "../kernels/pool.cu"

#include <algorithm>
#include <string>

namespace {

int g_cases = 0, g_failed = 0;
const char* g_filter = nullptr;

bool selected(const std::string& name) { return !g_filter || name.find(g_filter) != std::string::npos; }

// ---- data -------------------------------------------------------------------------------------
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9e3779b97f4a7c15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  float sym(float a) { return static_cast<float>((next() >> 11) * (1.0 / 9007199254740992.0) * 2 - 1) * a; }
  int range(int lo, int hi) { return lo + static_cast<int>(next() % static_cast<uint64_t>(hi - lo + 1)); }
};

template <typename T> float to_f(T x) { return si::to_f32(x); }
template <typename T> T from_f(float x) { return si::from_f32<T>(x); }
template <typename T> float rnd(float x) { return to_f(from_f<T>(x)); }

constexpr int GUARD = 64;
constexpr uint16_t SENTINEL = 0x7fff;  // NaN in F16 and BF16

// n elements between NaN guards; `shift` moves the start off 16-byte alignment.
template <typename T> struct Buf {
  T* base;
  int n, off;
  Buf(int n_, int shift = 0) : n(n_), off(GUARD + shift) {
    const size_t bytes = (static_cast<size_t>(n) + 2 * GUARD + 8) * sizeof(T);
    base = static_cast<T*>(std::aligned_alloc(256, (bytes + 255) / 256 * 256));
    uint16_t* raw = reinterpret_cast<uint16_t*>(base);
    for (size_t i = 0; i < bytes / 2; ++i) raw[i] = SENTINEL;
  }
  Buf(const std::vector<float>& v, int shift = 0) : Buf(static_cast<int>(v.size()), shift) {
    for (int i = 0; i < n; ++i) base[off + i] = from_f<T>(v[i]);
  }
  Buf(const Buf&) = delete;
  ~Buf() { std::free(base); }
  T* p() { return base + off; }
  std::vector<float> get() const {
    std::vector<float> v(n);
    for (int i = 0; i < n; ++i) v[i] = to_f(base[off + i]);
    return v;
  }
  bool guards_ok() const {
    const uint16_t* raw = reinterpret_cast<const uint16_t*>(base);
    for (int i = 0; i < off; ++i)
      if (raw[i] != SENTINEL) return false;
    for (int i = off + n; i < off + n + GUARD; ++i)
      if (raw[i] != SENTINEL) return false;
    return true;
  }
};

template <typename T> std::vector<float> randv(Rng& r, size_t n, float a) {
  std::vector<float> v(n);
  for (auto& x : v) x = rnd<T>(r.sym(a));
  return v;
}

// Values with a mean far from 0 (real pre-norm rows have one): exercises the mean subtraction.
template <typename T> std::vector<float> randv_off(Rng& r, size_t n, float a, float off) {
  std::vector<float> v(n);
  for (auto& x : v) x = rnd<T>(off + r.sym(a));
  return v;
}

template <typename T> void tol_of(double& atol, double& rtol) {
  if (sizeof(T) == 2 && std::is_same<T, __half>::value) {
    atol = 2e-3;
    rtol = 4e-3;
  } else {
    atol = 1.6e-2;
    rtol = 1.6e-2;
  }
}

template <typename T> const char* dname() { return std::is_same<T, __half>::value ? "f16" : "bf16"; }

void report(const std::string& name, const std::vector<float>& got, const std::vector<double>& want, double atol,
            double rtol, bool guards, const std::string& extra = "") {
  ++g_cases;
  double max_abs = 0;
  int bad = 0, first = -1;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    const bool ok = std::isfinite(got[i]) && e <= atol + rtol * std::fabs(want[i]);
    if (std::isfinite(e)) max_abs = std::max(max_abs, e);
    if (!ok) {
      if (first < 0) first = static_cast<int>(i);
      ++bad;
    }
  }
  const bool pass = bad == 0 && guards && got.size() == want.size() && extra.empty();
  if (!pass) ++g_failed;
  std::printf("%s %-70s max_abs %.2e", pass ? "ok  " : "FAIL", name.c_str(), max_abs);
  if (bad) std::printf("  %d bad, first %d: got %g want %g", bad, first, got[first], want[first]);
  if (!guards) std::printf("  WROTE OUTSIDE THE OUTPUT");
  if (!extra.empty()) std::printf("  %s", extra.c_str());
  std::printf("\n");
}

std::vector<uint32_t> cu_of(const std::vector<int>& lens) {
  std::vector<uint32_t> cu{0};
  for (int l : lens) cu.push_back(cu.back() + l);
  return cu;
}

// ---- attention --------------------------------------------------------------------------------
struct AttnCfg {
  int hq, hkv, d, left, right;
  bool bias;
  std::vector<int> lens;
};

std::vector<double> attn_ref(const std::vector<float>& qkv, const std::vector<uint32_t>& cu, const AttnCfg& c,
                             float scale, const std::vector<float>& tab, int R) {
  const int W = (c.hq + 2 * c.hkv) * c.d, T = cu.back();
  std::vector<double> out(static_cast<size_t>(T) * c.hq * c.d);
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    const int st = cu[s], L = cu[s + 1] - cu[s];
    for (int h = 0; h < c.hq; ++h) {
      const int kvh = h / (c.hq / c.hkv);
      for (int i = 0; i < L; ++i) {
        std::vector<double> sc;
        std::vector<int> keys;
        for (int j = 0; j < L; ++j) {
          if (c.left >= 0 && i - j > c.left) continue;
          if (c.right >= 0 && j - i > c.right) continue;
          double dot = 0;
          for (int e = 0; e < c.d; ++e)
            dot += static_cast<double>(qkv[(size_t)(st + i) * W + h * c.d + e]) * qkv[(size_t)(st + j) * W + (c.hq + kvh) * c.d + e];
          double v = scale * dot;
          if (c.bias) v += tab[h * (2 * R + 1) + std::clamp(j - i, -R, R) + R];
          sc.push_back(v);
          keys.push_back(j);
        }
        const double m = *std::max_element(sc.begin(), sc.end());
        double l = 0;
        std::vector<double> acc(c.d, 0.0);
        for (size_t k = 0; k < keys.size(); ++k) {
          const double p = std::exp(sc[k] - m);
          l += p;
          for (int e = 0; e < c.d; ++e) acc[e] += p * qkv[(size_t)(st + keys[k]) * W + (c.hq + c.hkv + kvh) * c.d + e];
        }
        for (int e = 0; e < c.d; ++e) out[(size_t)(st + i) * c.hq * c.d + h * c.d + e] = acc[e] / l;
      }
    }
  }
  return out;
}

using AttnFn = void (*)(const AttnParams);

template <typename T> AttnFn attn_fn(bool mma, int d) {
  const bool h = std::is_same<T, __half>::value;
  if (mma) {
    switch (d) {
      case 32: return h ? attn_mma_f16_d32 : attn_mma_bf16_d32;
      case 64: return h ? attn_mma_f16_d64 : attn_mma_bf16_d64;
      case 128: return h ? attn_mma_f16_d128 : attn_mma_bf16_d128;
    }
    return nullptr;
  }
  switch (d) {
    case 32: return h ? attn_simple_f16_d32 : attn_simple_bf16_d32;
    case 64: return h ? attn_simple_f16_d64 : attn_simple_bf16_d64;
    case 128: return h ? attn_simple_f16_d128 : attn_simple_bf16_d128;
    case 256: return h ? attn_simple_f16_d256 : attn_simple_bf16_d256;
  }
  return nullptr;
}

template <typename T> void test_attention(const AttnCfg& c, uint64_t seed) {
  for (bool mma : {true, false}) {
    AttnFn fn = attn_fn<T>(mma, c.d);
    if (!fn) continue;
    char name[256];
    std::string lens;
    for (int l : c.lens) lens += std::to_string(l) + ",";
    std::snprintf(name, sizeof name, "attention/%s/%s/d%d/h%dkv%d/win%d:%d%s/len%s", mma ? "mma" : "simple", dname<T>(),
                  c.d, c.hq, c.hkv, c.left, c.right, c.bias ? "/bias" : "", lens.c_str());
    if (!selected(name)) continue;
    Rng r(seed);
    const auto cu = cu_of(c.lens);
    const int T_ = cu.back(), W = (c.hq + 2 * c.hkv) * c.d, R = 8;
    const auto qkv = randv<T>(r, (size_t)T_ * W, 2.0f);
    std::vector<float> tab((size_t)c.hq * (2 * R + 1));
    for (auto& x : tab) x = r.sym(2.0f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    const auto want = attn_ref(qkv, cu, c, scale, tab, R);
    Buf<T> q(qkv), o(T_ * c.hq * c.d);
    AttnParams p{};
    p.q = q.p();
    p.k = q.p() + c.hq * c.d;
    p.v = q.p() + (c.hq + c.hkv) * c.d;
    p.o = o.p();
    p.cu_seqlens = cu.data();
    p.rel_bias = c.bias ? tab.data() : nullptr;
    p.q_stride = p.k_stride = p.v_stride = W;
    p.o_stride = c.hq * c.d;
    p.n_seqs = static_cast<int>(c.lens.size());
    p.n_q_heads = c.hq;
    p.n_kv_heads = c.hkv;
    p.window_left = c.left;
    p.window_right = c.right;
    p.rel_max_distance = R;
    p.scale = scale;
    const int max_len = *std::max_element(c.lens.begin(), c.lens.end());
    const int rows = mma ? 64 : 4;
    if (max_len > 0) simt::launch(dim3((max_len + rows - 1) / rows, c.hq, p.n_seqs), dim3(128), [&] { fn(p); });
    double atol, rtol;
    tol_of<T>(atol, rtol);
    report(name, o.get(), want, atol, rtol, o.guards_ok() && q.guards_ok());
  }
}

// ---- norms ------------------------------------------------------------------------------------
using NormFn = void (*)(const NormParams);
using EmbedFn = void (*)(const EmbedParams);

template <typename T> NormFn norm_fn(int nv) {
  const bool h = std::is_same<T, __half>::value;
  switch (nv) {
    case 1: return h ? fused_norm_f16_v1 : fused_norm_bf16_v1;
    case 2: return h ? fused_norm_f16_v2 : fused_norm_bf16_v2;
    case 4: return h ? fused_norm_f16_v4 : fused_norm_bf16_v4;
    default: return h ? fused_norm_f16_v8 : fused_norm_bf16_v8;
  }
}
template <typename T> EmbedFn embed_fn(int nv) {
  const bool h = std::is_same<T, __half>::value;
  switch (nv) {
    case 1: return h ? embed_norm_f16_v1 : embed_norm_bf16_v1;
    case 2: return h ? embed_norm_f16_v2 : embed_norm_bf16_v2;
    case 4: return h ? embed_norm_f16_v4 : embed_norm_bf16_v4;
    default: return h ? embed_norm_f16_v8 : embed_norm_bf16_v8;
  }
}
int nv_of(int w) {
  const int c = (w + 1023) / 1024;
  return c <= 1 ? 1 : c == 2 ? 2 : c <= 4 ? 4 : 8;
}

void normalize_ref(const std::vector<double>& s, std::vector<double>& out, const std::vector<float>& g,
                   const std::vector<float>* b, int mode, int unit, double eps) {
  const double n = static_cast<double>(s.size());
  double mean = 0, var = 0;
  if (mode == 0) {
    for (double v : s) mean += v;
    mean /= n;
    for (double v : s) var += (v - mean) * (v - mean);
    var /= n;
  } else {
    for (double v : s) var += v * v;
    var /= n;
  }
  const double rstd = 1.0 / std::sqrt(var + eps);
  out.resize(s.size());
  for (size_t c = 0; c < s.size(); ++c)
    out[c] = (s[c] - mean) * rstd * (g[c] + (mode == 1 && unit ? 1.0 : 0.0)) + (b ? (*b)[c] : 0.0);
}

template <typename T> void test_norm(int rows, int width, int mode, bool bias, bool res, bool beta, bool misalign,
                                     bool in_place, uint64_t seed) {
  char name[256];
  std::snprintf(name, sizeof name, "norm/%s/%s/%dx%d%s%s%s%s%s", dname<T>(), mode ? "rms" : "ln", rows, width,
                bias ? "/bias" : "", res ? "/res" : "", beta ? "/beta" : "", misalign ? "/misaligned" : "",
                in_place ? "/in-place" : "");
  if (!selected(name)) return;
  Rng r(seed);
  const int n = rows * width;
  const auto x = randv_off<T>(r, n, 3, 2.5f), bv = randv<T>(r, width, 0.5f), rv = randv<T>(r, n, 3),
             gv = randv<T>(r, width, 1.5f), be = randv<T>(r, width, 0.5f);
  std::vector<double> want, want_sum;
  for (int i = 0; i < rows; ++i) {
    std::vector<double> s(width), o;
    for (int c = 0; c < width; ++c) {
      float v = x[i * width + c];
      if (bias) v += bv[c];
      if (res) v += rv[i * width + c];
      s[c] = rnd<T>(v);
      want_sum.push_back(s[c]);
    }
    normalize_ref(s, o, gv, beta ? &be : nullptr, mode, 1, 1e-5);
    want.insert(want.end(), o.begin(), o.end());
  }
  Buf<T> X(x, misalign), B(bv, misalign), Rr(rv, misalign), G(gv), Be(be), O(n, misalign), S(n);
  NormParams p{};
  p.x = X.p();
  p.bias = bias ? B.p() : nullptr;
  p.residual = res ? Rr.p() : nullptr;
  p.gamma = G.p();
  p.beta = beta ? Be.p() : nullptr;
  p.out = in_place ? X.p() : O.p();
  p.sum_out = res ? (in_place ? Rr.p() : S.p()) : nullptr;
  p.rows = rows;
  p.width = width;
  p.mode = mode;
  p.unit_offset = 1;
  p.vec_ok = (width % 8 == 0 && !misalign) ? 1 : 0;
  p.eps = 1e-5f;
  NormFn fn = norm_fn<T>(nv_of(width));
  simt::launch(dim3(rows), dim3(128), [&] { fn(p); });
  double atol, rtol;
  tol_of<T>(atol, rtol);
  const Buf<T>& outb = in_place ? X : O;
  report(name, outb.get(), want, atol, rtol, outb.guards_ok() && G.guards_ok());
  if (res) {
    const Buf<T>& sb = in_place ? Rr : S;
    report(std::string(name) + "/sum_out", sb.get(), want_sum, 0, 0, sb.guards_ok());
  }
}

template <typename T> void test_embed(int rows, int width, bool pos, bool type, bool ln, float scale, bool bad,
                                      uint64_t seed) {
  char name[256];
  std::snprintf(name, sizeof name, "embed/%s/%dx%d%s%s%s%s%s", dname<T>(), rows, width, pos ? "/pos" : "",
                type ? "/type" : "", ln ? "/ln" : "", scale != 1.f ? "/scaled" : "", bad ? "/bad-ids" : "");
  if (!selected(name)) return;
  Rng r(seed);
  const int V = 50, P = 40, NT2 = 2;
  const auto word = randv_off<T>(r, V * width, 1, 1.5f), pt = randv<T>(r, P * width, 0.5f), tt = randv<T>(r, NT2 * width, 0.5f),
             g = randv<T>(r, width, 1.5f), b = randv<T>(r, width, 0.5f);
  std::vector<uint32_t> ids(rows), pids(rows), tids(rows);
  for (int i = 0; i < rows; ++i) {
    ids[i] = r.range(0, V - 1);
    pids[i] = i % P;
    tids[i] = r.range(0, 1);
  }
  int want_err = 0;
  if (bad && rows >= 3) {
    ids[1] = V + 3;
    pids[2] = 0xffffffffu;
    tids[0] = 2;
  }
  std::vector<double> want;
  for (int i = 0; i < rows; ++i) {
    uint32_t id = ids[i], pp = pids[i], tp = tids[i];
    if (id >= (uint32_t)V) { id = V - 1; want_err |= 1; }
    std::vector<float> s(word.begin() + id * width, word.begin() + (id + 1) * width);
    if (type) {
      if (tp >= (uint32_t)NT2) { tp = NT2 - 1; want_err |= 4; }
      for (int c = 0; c < width; ++c) s[c] = rnd<T>(s[c] + tt[tp * width + c]);
    }
    if (pos) {
      if (pp >= (uint32_t)P) { pp = P - 1; want_err |= 2; }
      for (int c = 0; c < width; ++c) s[c] = rnd<T>(s[c] + pt[pp * width + c]);
    }
    if (scale != 1.f)
      for (auto& v : s) v = rnd<T>(v * scale);
    std::vector<double> sd(s.begin(), s.end()), o;
    if (ln) normalize_ref(sd, o, g, &b, 0, 0, 1e-12);
    else o = sd;
    want.insert(want.end(), o.begin(), o.end());
  }
  Buf<T> W_(word), Pt(pt), Tt(tt), G(g), B(b), O(rows * width);
  int err = 0;
  EmbedParams p{};
  p.word = W_.p();
  p.pos = pos ? Pt.p() : nullptr;
  p.type = type ? Tt.p() : nullptr;
  p.ids = ids.data();
  p.pos_ids = pids.data();
  p.type_ids = tids.data();
  p.gamma = G.p();
  p.beta = B.p();
  p.out = O.p();
  p.err = &err;
  p.rows = rows;
  p.width = width;
  p.vocab = V;
  p.n_pos = P;
  p.n_type = NT2;
  p.scale = scale;
  p.eps = 1e-12f;
  p.do_ln = ln;
  p.vec_ok = width % 8 == 0;
  EmbedFn fn = embed_fn<T>(nv_of(width));
  simt::launch(dim3(rows), dim3(128), [&] { fn(p); });
  double atol, rtol;
  tol_of<T>(atol, rtol);
  report(name, O.get(), want, atol, rtol, O.guards_ok(),
         err == want_err ? "" : "error flags " + std::to_string(err) + " != " + std::to_string(want_err));
}

// ---- rope -------------------------------------------------------------------------------------
template <typename T> void test_rope(int rows, int hq, int hk, int d, int rot, bool inter, bool norm, float scaling,
                                     uint64_t seed) {
  char name[256];
  std::snprintf(name, sizeof name, "rope/%s/%dx(%d+%d)x%d/rot%d%s%s", dname<T>(), rows, hq, hk, d, rot,
                inter ? "/gptj" : "/neox", norm ? "/qknorm" : "");
  if (!selected(name)) return;
  Rng r(seed);
  const int W = (hq + 2 * hk) * d;
  const auto x = randv<T>(r, rows * W, 2), qw = randv<T>(r, d, 1.5f), kw = randv<T>(r, d, 1.5f);
  std::vector<uint32_t> pos(rows);
  for (auto& v : pos) v = r.range(0, 32767);
  std::vector<float> inv(std::max(1, rot / 2));
  for (int i = 0; i < rot / 2; ++i) inv[i] = 1.0f / std::pow(10000.0f, (2.0f * i) / rot);
  std::vector<double> want(x.begin(), x.end());
  for (int row = 0; row < rows; ++row)
    for (int h = 0; h < hq + hk; ++h) {
      double* y = &want[(size_t)row * W + h * d];
      std::vector<double> b(y, y + d);
      if (norm) {
        double ss = 0;
        for (double v : b) ss += v * v;
        const double rs = 1.0 / std::sqrt(ss / d + 1e-6);
        for (int e = 0; e < d; ++e) b[e] *= rs * (h < hq ? qw[e] : kw[e]);
      }
      std::vector<double> o = b;
      for (int i = 0; i < rot / 2; ++i) {
        const double ang = static_cast<double>(static_cast<float>(pos[row]) * inv[i]);
        const double c = std::cos(ang) * scaling, s = std::sin(ang) * scaling;
        const int i1 = inter ? 2 * i : i, i2 = inter ? 2 * i + 1 : i + rot / 2;
        o[i1] = b[i1] * c - b[i2] * s;
        o[i2] = b[i2] * c + b[i1] * s;
      }
      for (int e = 0; e < d; ++e) y[e] = o[e];
    }
  Buf<T> X(x), Q(qw), K(kw);
  RopeParams p{};
  p.qkv = X.p();
  p.positions = pos.data();
  p.inv_freq = inv.data();
  p.q_norm = norm ? Q.p() : nullptr;
  p.k_norm = norm ? K.p() : nullptr;
  p.rows = rows;
  p.row_stride = W;
  p.n_q_heads = hq;
  p.n_k_heads = hk;
  p.head_dim = d;
  p.rotary_dim = rot;
  p.interleaved = inter;
  p.attn_scaling = scaling;
  p.eps = 1e-6f;
  const bool h16 = std::is_same<T, __half>::value;
  const long long items = (long long)rows * (hq + hk);
  simt::launch(dim3((items + 3) / 4), dim3(128), [&] { h16 ? rope_qk_f16(p) : rope_qk_bf16(p); });
  double atol, rtol;
  tol_of<T>(atol, rtol);
  report(name, X.get(), want, atol, rtol, X.guards_ok());
}

// ---- activations, pooling, scan ---------------------------------------------------------------
double act_ref(double x, int a) {
  switch (a) {
    case 1: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case 2: return 0.5 * x * (1 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case 3: return std::max(x, 0.0);
    case 4: return x / (1 + std::exp(-x));
    case 5: return std::tanh(x);
    default: return x;
  }
}

template <typename T> void test_glu(int rows, int inter, int act, bool gate_first, bool misalign, uint64_t seed) {
  char name[256];
  std::snprintf(name, sizeof name, "glu/%s/%dx%d/act%d/%s%s", dname<T>(), rows, inter, act, gate_first ? "first" : "second",
                misalign ? "/misaligned" : "");
  if (!selected(name)) return;
  Rng r(seed);
  const auto x = randv<T>(r, (size_t)rows * 2 * inter, 4);
  std::vector<double> want;
  for (int i = 0; i < rows; ++i)
    for (int c = 0; c < inter; ++c) {
      const double a = x[(size_t)i * 2 * inter + c], b = x[(size_t)i * 2 * inter + inter + c];
      want.push_back(gate_first ? act_ref(a, act) * b : act_ref(b, act) * a);
    }
  Buf<T> X(x, misalign), O(rows * inter);
  GluParams p{X.p(), O.p(), rows, inter, act, gate_first, (inter % 8 == 0 && !misalign) ? 1 : 0};
  const long long chunks = (long long)rows * ((inter + 7) / 8);
  const int grid = static_cast<int>(std::min<long long>(std::max<long long>((chunks + 255) / 256, 1), 3));  // few blocks: grid-stride
  const bool h16 = std::is_same<T, __half>::value;
  simt::launch(dim3(grid), dim3(256), [&] { h16 ? glu_f16(p) : glu_bf16(p); });
  double atol, rtol;
  tol_of<T>(atol, rtol);
  report(name, O.get(), want, atol, rtol, O.guards_ok());
}

template <typename T> void test_bias_act(int rows, int width, int act, bool bias, uint64_t seed) {
  char name[256];
  std::snprintf(name, sizeof name, "bias_act/%s/%dx%d/act%d%s", dname<T>(), rows, width, act, bias ? "/bias" : "");
  if (!selected(name)) return;
  Rng r(seed);
  const auto x = randv<T>(r, (size_t)rows * width, 4), b = randv<T>(r, width, 1);
  std::vector<double> want;
  for (int i = 0; i < rows * width; ++i) want.push_back(act_ref(bias ? rnd<T>(x[i] + b[i % width]) : x[i], act));
  Buf<T> X(x), B(b);
  BiasActParams p{X.p(), bias ? B.p() : nullptr, X.p(), rows, width, act, width % 8 == 0, 0};  // in place
  const bool h16 = std::is_same<T, __half>::value;
  simt::launch(dim3(2), dim3(256), [&] { h16 ? bias_act_f16(p) : bias_act_bf16(p); });
  double atol, rtol;
  tol_of<T>(atol, rtol);
  report(name, X.get(), want, atol, rtol, X.guards_ok());
}

template <typename T> void test_pool(const std::vector<int>& lens, int width, int mode, uint64_t seed) {
  char name[256];
  std::snprintf(name, sizeof name, "pool/%s/mode%d/n%zu/w%d", dname<T>(), mode, lens.size(), width);
  if (!selected(name)) return;
  Rng r(seed);
  const auto cu = cu_of(lens);
  const auto x = randv<T>(r, (size_t)cu.back() * width, 4);
  std::vector<double> want(lens.size() * width, 0.0);
  for (size_t s = 0; s < lens.size(); ++s)
    for (int c = 0; c < width && lens[s] > 0; ++c) {
      double acc = mode == 3 ? -INFINITY : 0;
      for (uint32_t t = cu[s]; t < cu[s + 1]; ++t) {
        const double v = x[(size_t)t * width + c];
        acc = mode == 3 ? std::max(acc, v) : acc + v;
      }
      if (mode == 0) acc = x[(size_t)cu[s] * width + c];
      if (mode == 2) acc = x[(size_t)(cu[s + 1] - 1) * width + c];
      if (mode == 1) acc /= lens[s];
      want[s * width + c] = acc;
    }
  Buf<T> X(x);
  std::vector<float> out(lens.size() * width + 2 * GUARD, NAN);
  PoolParams p{X.p(), cu.data(), out.data() + GUARD, width, static_cast<int>(lens.size()), width, mode, 0};
  const bool h16 = std::is_same<T, __half>::value;
  simt::launch(dim3(lens.size(), (width + 31) / 32), dim3(256), [&] { h16 ? pool_f16(p) : pool_bf16(p); });
  bool guards = true;
  for (int i = 0; i < GUARD; ++i) guards &= std::isnan(out[i]) && std::isnan(out[out.size() - 1 - i]);
  report(name, std::vector<float>(out.begin() + GUARD, out.end() - GUARD), want, 1e-5, 1e-5, guards);
}

void test_scan(int n, int elem_bytes, int poison, bool misalign) {
  char name[128];
  std::snprintf(name, sizeof name, "nonfinite/%dB/n%d/poison%d%s", elem_bytes, n, poison, misalign ? "/misaligned" : "");
  if (!selected(name)) return;
  std::vector<uint32_t> storage(n + 16, 0);
  char* base = reinterpret_cast<char*>(storage.data()) + (misalign ? elem_bytes : 0);
  // Finite values; NaN just outside the range on both sides.
  for (int i = -1; i <= n; ++i) {
    const bool outside = i < 0 || i == n;
    if (i < 0 && !misalign) continue;
    if (elem_bytes == 2) {
      const uint16_t v = outside ? 0x7fff : (i == poison ? 0x7c00 : 0x3c00);
      std::memcpy(base + (long)i * 2, &v, 2);
    } else {
      const uint32_t v = outside ? 0x7fc00000u : (i == poison ? 0xff800000u : 0x3f800000u);
      std::memcpy(base + (long)i * 4, &v, 4);
    }
  }
  int flag = 0;
  ScanParams p{base, &flag, n, elem_bytes, elem_bytes == 2 ? 0x7c00u : 0x7f800000u, misalign ? 0 : 1, 0};
  simt::launch(dim3(2), dim3(256), [&] { nonfinite_scan(p); });
  const int want = poison >= 0 ? 1 : 0;
  report(name, {static_cast<float>(flag)}, {static_cast<double>(want)}, 0, 0, true);
}

template <typename T> void run_all() {
  uint64_t seed = std::is_same<T, __half>::value ? 1000 : 2000;
  const std::vector<int> mixed{1, 7, 64, 65, 130, 3};
  for (int d : {32, 64, 128}) {
    test_attention<T>({2, 1, d, -1, -1, false, {1}}, ++seed);
    test_attention<T>({4, 4, d, -1, -1, false, mixed}, ++seed);
    test_attention<T>({4, 2, d, -1, 0, false, mixed}, ++seed);
    test_attention<T>({8, 1, d, 16, 16, true, {70, 9}}, ++seed);
    test_attention<T>({4, 1, d, 20, 0, false, {140}}, ++seed);
    test_attention<T>({2, 2, d, 0, 5, true, {33}}, ++seed);
  }
  test_attention<T>({2, 1, 256, -1, -1, false, {1, 9, 40}}, ++seed);
  test_attention<T>({2, 2, 256, -1, 0, true, {37}}, ++seed);
  for (int w : {1, 7, 384, 1000, 1024, 1025, 2304, 4000, 8192}) {
    const int rows = w >= 4000 ? 2 : 3;
    test_norm<T>(rows, w, 0, true, true, true, false, false, ++seed);
    test_norm<T>(rows, w, 1, false, true, false, false, false, ++seed);
  }
  test_norm<T>(3, 768, 0, true, true, true, true, false, ++seed);
  test_norm<T>(3, 768, 0, false, false, false, false, false, ++seed);
  test_norm<T>(2, 1024, 0, true, true, true, false, true, ++seed);
  test_norm<T>(2, 2048, 1, false, true, false, false, true, ++seed);
  test_embed<T>(9, 384, true, true, true, 1.f, true, ++seed);
  test_embed<T>(4, 1000, true, false, true, 1.f, false, ++seed);
  test_embed<T>(3, 640, false, false, false, rnd<T>(std::sqrt(640.f)), false, ++seed);
  test_embed<T>(3, 7, true, true, true, 1.f, true, ++seed);
  test_rope<T>(5, 4, 2, 64, 64, false, false, 1.f, ++seed);
  test_rope<T>(3, 2, 2, 128, 64, false, false, 1.f, ++seed);
  test_rope<T>(3, 2, 1, 64, 32, true, false, 1.f, ++seed);
  test_rope<T>(3, 4, 2, 128, 128, false, true, 1.f, ++seed);
  test_rope<T>(2, 2, 1, 256, 256, false, true, 1.25f, ++seed);
  test_rope<T>(3, 2, 2, 128, 0, false, true, 1.f, ++seed);
  test_rope<T>(2, 1, 1, 80, 80, false, false, 1.f, ++seed);
  for (int a = 0; a <= 5; ++a) test_bias_act<T>(3, 40, a, true, ++seed);
  test_bias_act<T>(3, 13, 1, true, ++seed);
  test_bias_act<T>(2, 300, 3, false, ++seed);
  test_glu<T>(3, 200, 4, true, false, ++seed);
  test_glu<T>(3, 200, 1, false, false, ++seed);
  test_glu<T>(5, 7, 2, true, false, ++seed);
  test_glu<T>(2, 64, 4, true, true, ++seed);
  for (int m = 0; m < 4; ++m) test_pool<T>({1, 0, 7, 20, 3}, 100, m, ++seed);
  test_pool<T>({300}, 7, 1, ++seed);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) g_filter = argv[1];
  run_all<__half>();
  run_all<__nv_bfloat16>();
  for (int eb : {2, 4}) {
    test_scan(1003, eb, -1, false);
    test_scan(1003, eb, 1001, false);
    test_scan(1003, eb, 5, true);
    test_scan(1, eb, 0, false);
    test_scan(4096, eb, 4095, false);
  }
  std::printf("emulated kernel tests: %d cases, %d failed\n", g_cases, g_failed);
  return g_failed ? 1 : 0;
}
