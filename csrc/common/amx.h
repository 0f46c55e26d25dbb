// AMX tile helpers shared by the kernels that use AMX (mx's prefill linear, the bf16 GEMM of
// common/bf16_gemm.cpp): the tile configuration and a 2 x 2 block of TDPBF16PS accumulators.
// Call only where cpu::amx_enabled() (common/cpu_features.h): the process has been granted the
// tile state, and the CPU has the instructions. Every function carries the AMX target attribute.
//
// Operand layouts (one tile register = 16 rows of 64 bytes):
//  * A: 16 rows of x x 32 bf16 of K, row-major (64 bytes per row);
//  * B: 16 pairs of K x 16 output columns: row q = the 16 columns' bf16 pairs (k = 2q, 2q + 1),
//    i.e. 16 "pair vectors" whose 32-bit lane r is output column r;
//  * C: 16 rows x 16 columns of fp32.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdint>

#define LK_AMX_TARGET "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,f16c,fma,amx-tile,amx-bf16"
#define LK_AMX_FN __attribute__((target(LK_AMX_TARGET))) inline

// The tile registers (own asm with a memory clobber: the compiler's intrinsics do not tell it that
// tileloadd reads, and tilestored writes, memory); tile numbers are literals. Blocks below use C: 0..3,
// A: 4, 5, B: 6, 7. (Left defined for the kernels that include this header.)
#define LK_TLOAD(t, p, stride) asm volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(p), "r"((int64_t)(stride)) : "memory")
#define LK_TSTORE(t, p, stride) asm volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(p), "r"((int64_t)(stride)) : "memory")
#define LK_TZERO(t) asm volatile("tilezero %%tmm" #t ::)
#define LK_TDP(c, a, b) asm volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)

namespace leankern {
namespace cpu {
namespace amx {

constexpr int kK = 32;               // elements of K per TDPBF16PS
constexpr int kTileBytes = 16 * 64;  // one tile register
constexpr int kTileFloats = 256;     // one C tile

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// All 8 tiles 16 x 64 bytes. Per thread (the configuration is thread state); release() after use.
LK_AMX_FN void configure() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  asm volatile("ldtilecfg %0" ::"m"(c));
}

LK_AMX_FN void release() { asm volatile("tilerelease" ::); }

// A block of MA x NB accumulator tiles (MA, NB in {1, 2}) over `steps` K steps. A tile i of step s: a0 + i * a_next
// + s * a_step bytes, rows a_ld bytes apart; B tile j of step s: b0 + j * b_next + s * kTileBytes (packed, rows 64
// bytes apart); c = the accumulators, tile (i, j) at c + (i * cstride + j) * 256 floats, loaded first unless
// `fresh`, stored back at the end.
template <int MA, int NB>
LK_AMX_FN void block_strided(const uint8_t* a0, int64_t a_next, int64_t a_ld, int64_t a_step, const uint8_t* b0,
                             int64_t b_next, int steps, float* c, int64_t cstride, bool fresh) {
  float* const c00 = c;
  float* const c01 = c + kTileFloats;
  float* const c10 = c + cstride * kTileFloats;
  float* const c11 = c10 + kTileFloats;
  if (fresh) {
    LK_TZERO(0);
    if constexpr (NB > 1) LK_TZERO(1);
    if constexpr (MA > 1) LK_TZERO(2);
    if constexpr (MA > 1 && NB > 1) LK_TZERO(3);
  } else {
    LK_TLOAD(0, c00, 64);
    if constexpr (NB > 1) LK_TLOAD(1, c01, 64);
    if constexpr (MA > 1) LK_TLOAD(2, c10, 64);
    if constexpr (MA > 1 && NB > 1) LK_TLOAD(3, c11, 64);
  }
  const uint8_t* a1 = a0 + a_next;
  for (int s = 0; s < steps; ++s) {
    LK_TLOAD(4, a0 + s * a_step, a_ld);
    LK_TLOAD(6, b0 + s * kTileBytes, 64);
    LK_TDP(0, 4, 6);
    if constexpr (MA > 1) {
      LK_TLOAD(5, a1 + s * a_step, a_ld);
      LK_TDP(2, 5, 6);
    }
    if constexpr (NB > 1) {
      LK_TLOAD(7, b0 + b_next + s * kTileBytes, 64);
      LK_TDP(1, 4, 7);
      if constexpr (MA > 1) LK_TDP(3, 5, 7);
    }
  }
  LK_TSTORE(0, c00, 64);
  if constexpr (NB > 1) LK_TSTORE(1, c01, 64);
  if constexpr (MA > 1) LK_TSTORE(2, c10, 64);
  if constexpr (MA > 1 && NB > 1) LK_TSTORE(3, c11, 64);
}

// block_strided over packed A tiles: A tile of step s at x0 + s * kTileBytes (the next 16 rows' at x0 + xs), B
// likewise at w0 (the second column tile's at w0 + wstep).
template <int MA, int NB>
LK_AMX_FN void block(const uint8_t* x0, int64_t xs, const uint8_t* w0, int64_t wstep, int steps, float* c,
                     int64_t cstride, bool fresh) {
  block_strided<MA, NB>(x0, xs, 64, kTileBytes, w0, wstep, steps, c, cstride, fresh);
}

// block<MA, NB> for run-time two_m / two_n.
LK_AMX_FN void block_any(bool two_m, bool two_n, const uint8_t* x0, int64_t xs, const uint8_t* w0, int64_t wstep,
                         int steps, float* c, int64_t cstride, bool fresh) {
  if (two_m && two_n) block<2, 2>(x0, xs, w0, wstep, steps, c, cstride, fresh);
  else if (two_m) block<2, 1>(x0, xs, w0, wstep, steps, c, cstride, fresh);
  else if (two_n) block<1, 2>(x0, xs, w0, wstep, steps, c, cstride, fresh);
  else block<1, 1>(x0, xs, w0, wstep, steps, c, cstride, fresh);
}

}  // namespace amx
}  // namespace cpu
}  // namespace leankern
#endif
