// A small deterministic SIMT emulator that runs the kernels of ../kernels/*.cu on the host, so
// their indexing, masking, reductions and fragment bookkeeping can be tested on a machine
// without a GPU (scripts/ptx-check.sh runs emu_test.cpp). Not a CUDA implementation: exactly
// what our kernels use.
//
// - Every CUDA thread of a block is a ucontext fiber on one OS thread; blocks run one after
//   another. `__shared__` becomes `static` (one copy, shared by the fibers of the block).
// - Synchronisation points (__syncthreads, __syncwarp, shuffles, mma) are barriers: a fiber
//   that arrives yields to the scheduler until every live member has arrived. A thread that
//   returns leaves its barriers (like exited threads on Volta+). A pass in which no fiber can
//   run is a deadlock (divergent barrier) and aborts with a message.
// - mma.sync.m16n8k16 is emulated from the PTX ISA fragment tables (g = lane / 4, t = lane % 4):
//   A reg0 = (g, 2t..2t+1), reg1 = (g+8, 2t..), reg2 = (g, 2t+8..), reg3 = (g+8, 2t+8..);
//   B reg0 = (k = 2t..2t+1, n = g), reg1 = (k = 2t+8.., n = g); C c0,c1 = (g, 2t..), c2,c3 = (g+8, 2t..).
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <vector_types.h>
#include <vector_functions.h>

#include <csetjmp>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

namespace simt {

struct Barrier {
  int expected = 0;
  int arrived = 0;
  unsigned gen = 0;
};

struct Fiber {
  ucontext_t ctx;  // first entry only
  jmp_buf env;     // every later switch
  bool started = false;
  uint3 tid;
  int warp = 0, lane = 0;
  bool done = false;
  Barrier* waiting = nullptr;
  unsigned wait_gen = 0;
};

struct WarpExchange {
  float f[32];
  uint32_t a[32][4];
  uint32_t b[32][2];
  float c[32][4];
};

struct Block {
  std::vector<Fiber> fibers;
  Barrier block_bar;
  std::vector<Barrier> warp_bar;
  std::vector<WarpExchange> wx;
  jmp_buf sched;
  int cur = 0;
  const std::function<void()>* body = nullptr;
};

inline Block*& block() {
  static Block* b = nullptr;
  return b;
}
inline uint3& block_idx() {
  static uint3 v;
  return v;
}
inline dim3& block_dim() {
  static dim3 v;
  return v;
}
inline dim3& grid_dim() {
  static dim3 v;
  return v;
}
inline Fiber& cur() { return block()->fibers[block()->cur]; }

// Fiber stacks, allocated once and reused by every block (no page faults per launch).
constexpr size_t STACK_BYTES = 128 * 1024;
inline char* stack_of(int i) {
  static std::vector<std::vector<char>> stacks;
  while (static_cast<int>(stacks.size()) <= i) stacks.emplace_back(STACK_BYTES);
  return stacks[i].data();
}

inline void release(Barrier& b) {
  b.arrived = 0;
  b.gen++;
}

inline void yield(Fiber& f) {
  if (!_setjmp(f.env)) _longjmp(block()->sched, 1);
}

// Arrive at `b` and wait for the others. The last to arrive runs `on_complete` (if any) before
// releasing everyone: warp-collective operations compute their result there, once.
template <typename F> inline void wait_then(Barrier& b, F&& on_complete) {
  Fiber& f = cur();
  const unsigned gen = b.gen;
  if (++b.arrived >= b.expected) {
    on_complete();
    release(b);
    return;
  }
  f.waiting = &b;
  f.wait_gen = gen;
  yield(f);
}
inline void wait(Barrier& b) {
  wait_then(b, [] {});
}

inline void leave(Barrier& b) {
  b.expected--;
  if (b.arrived > 0 && b.arrived >= b.expected) release(b);
}

inline void fiber_main(int i) {
  Block* b = block();
  (*b->body)();
  Fiber& f = b->fibers[i];
  f.done = true;
  leave(b->block_bar);
  leave(b->warp_bar[f.warp]);
  _longjmp(b->sched, 1);  // never resumed
}

inline void trampoline(int i) { fiber_main(i); }

// A fresh context that starts in trampoline(i) on fiber i's stack (getcontext never returns
// here a second time: the context is only ever entered through setcontext).
[[gnu::noinline]] inline void init_fiber(Fiber& f, int i) {
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = stack_of(i);
  f.ctx.uc_stack.ss_size = STACK_BYTES;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, reinterpret_cast<void (*)()>(trampoline), 1, i);
}

// Switches to fiber `f` until it waits or finishes. Kept out of line so no local of the
// scheduler loop lives across the _setjmp (nothing here changes between it and the return).
[[gnu::noinline]] inline void resume(Block& b, Fiber& f) {
  if (!_setjmp(b.sched)) {
    if (!f.started) {
      f.started = true;
      setcontext(&f.ctx);
    }
    _longjmp(f.env, 1);
  }
}

// Runs `body` for every thread of every block (blocks in order x, y, z).
inline void launch(dim3 grid, dim3 blk, const std::function<void()>& body) {
  const int n = static_cast<int>(blk.x * blk.y * blk.z);
  const int nwarps = (n + 31) / 32;
  grid_dim() = grid;
  block_dim() = blk;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        block_idx() = make_uint3(bx, by, bz);
        Block b;
        b.body = &body;
        b.fibers.resize(n);
        b.block_bar.expected = n;
        b.warp_bar.resize(nwarps);
        b.wx.resize(nwarps);
        for (int w = 0; w < nwarps; ++w) b.warp_bar[w].expected = std::min(32, n - 32 * w);
        block() = &b;
        for (int i = 0; i < n; ++i) {
          Fiber& f = b.fibers[i];
          f.tid = make_uint3(i % blk.x, (i / blk.x) % blk.y, i / (blk.x * blk.y));
          f.warp = i / 32;
          f.lane = i % 32;
          init_fiber(f, i);
        }
        for (;;) {
          bool live = false, ran = false;
          for (int i = 0; i < n; ++i) {
            Fiber& f = b.fibers[i];
            if (f.done) continue;
            live = true;
            if (f.waiting && f.waiting->gen == f.wait_gen) continue;
            f.waiting = nullptr;
            b.cur = i;
            ran = true;
            resume(b, f);
          }
          if (!live) break;
          if (!ran) {
            std::fprintf(stderr, "simt: deadlock in block (%u,%u,%u): a barrier some threads never reach\n", bx, by, bz);
            std::abort();
          }
        }
        block() = nullptr;
      }
}

inline WarpExchange& wx() { return block()->wx[cur().warp]; }
inline Barrier& warp_bar() { return block()->warp_bar[cur().warp]; }

template <typename T> inline float lo(uint32_t u);
template <> inline float lo<__half>(uint32_t u) {
  __half_raw r;
  r.x = static_cast<unsigned short>(u & 0xffff);
  return __half2float(__half(r));
}
template <> inline float lo<__nv_bfloat16>(uint32_t u) {
  __nv_bfloat16_raw r;
  r.x = static_cast<unsigned short>(u & 0xffff);
  return __bfloat162float(__nv_bfloat16(r));
}
template <typename T> inline float hi(uint32_t u) { return lo<T>(u >> 16); }

template <typename T>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  WarpExchange& w = wx();
  const int l = cur().lane;
  std::memcpy(w.a[l], a, sizeof a);
  w.b[l][0] = b0;
  w.b[l][1] = b1;
  std::memcpy(w.c[l], d, sizeof d);
  wait_then(warp_bar(), [&w] {
    float A[16][16], B[16][8];
    for (int L = 0; L < 32; ++L) {
      const int g = L >> 2, t = L & 3;
      A[g][2 * t] = lo<T>(w.a[L][0]);
      A[g][2 * t + 1] = hi<T>(w.a[L][0]);
      A[g + 8][2 * t] = lo<T>(w.a[L][1]);
      A[g + 8][2 * t + 1] = hi<T>(w.a[L][1]);
      A[g][2 * t + 8] = lo<T>(w.a[L][2]);
      A[g][2 * t + 9] = hi<T>(w.a[L][2]);
      A[g + 8][2 * t + 8] = lo<T>(w.a[L][3]);
      A[g + 8][2 * t + 9] = hi<T>(w.a[L][3]);
      B[2 * t][g] = lo<T>(w.b[L][0]);
      B[2 * t + 1][g] = hi<T>(w.b[L][0]);
      B[2 * t + 8][g] = lo<T>(w.b[L][1]);
      B[2 * t + 9][g] = hi<T>(w.b[L][1]);
    }
    for (int L = 0; L < 32; ++L) {
      const int g = L >> 2, t = L & 3;
      const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
      for (int i = 0; i < 4; ++i) {
        double acc = w.c[L][i];
        for (int k = 0; k < 16; ++k) acc += static_cast<double>(A[rows[i]][k]) * B[k][cols[i]];
        w.c[L][i] = static_cast<float>(acc);  // D replaces C in the exchange
      }
    }
  });
  for (int i = 0; i < 4; ++i) d[i] = w.c[l][i];
  wait(warp_bar());  // everyone has read D before the exchange is reused
}

}  // namespace simt

// ---- the CUDA surface our kernels use ---------------------------------------------------------
#undef __global__
#undef __device__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

#define threadIdx (simt::cur().tid)
#define blockIdx (simt::block_idx())
#define blockDim (simt::block_dim())
#define gridDim (simt::grid_dim())

inline void __syncthreads() { simt::wait(simt::block()->block_bar); }
inline void __syncwarp(unsigned = 0xffffffffu) { simt::wait(simt::warp_bar()); }
inline float __shfl_xor_sync(unsigned, float v, int o) {
  simt::WarpExchange& w = simt::wx();
  const int l = simt::cur().lane;
  w.f[l] = v;
  simt::wait(simt::warp_bar());
  const float r = w.f[l ^ o];
  simt::wait(simt::warp_bar());
  return r;
}
inline int atomicOr(int* p, int v) {
  const int old = *p;
  *p = old | v;
  return old;
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }

#define SI_HOST_EMULATION 1
