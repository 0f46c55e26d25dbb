// avx512bf16 table of the moe CPU kernels: the avx512 GEMV loops plus gemv_rows_bf16, the gate/up GEMV of bf16
// hidden states times bf16 weights with AVX512-BF16 dot products (kernels.h). Nothing here runs unless
// common/cpu_features.cpp found AVX512-BF16 and the active ISA is avx512bf16.
//
// Why: the fp32 loops widen every bf16 weight and spend one FMA per 16 products; vdpbf16ps multiplies the bf16
// pairs as they are loaded, 32 products per instruction, each exact in fp32 (8 x 8 significant bits), with fp32
// sums (lane j sums columns 32 s + 2 j, 32 s + 2 j + 1 over steps s, then one horizontal sum). It treats bf16
// subnormal inputs as zero, the one difference to the fp32 loops (docs/moe.md).
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "moe/kernels.h"

namespace leankern {
namespace moe {
namespace avx512bf16 {

#define LK_BD __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))) inline

constexpr int kNR = 4;  // weight rows per register tile
constexpr int kNT = 4;  // tokens per register tile: kNR * kNT accumulators + kNT x vectors + 1 weight vector

// Rows r .. r + NR of W times NT tokens: outs[t][r + i] = sum_c W(r + i, c) * xs[t][c]. pf: prefetch the next
// NR rows' lines as this tile streams its own (the first token group only; the others find the rows in L1).
template <int NR, int NT>
LK_BD void tile(const uint16_t* w, int64_t ld, int64_t r, int64_t C, const uint16_t* const* xs, float* const* outs,
                bool pf) {
  __m512 acc[NR][NT];
  for (int i = 0; i < NR; ++i)
    for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_setzero_ps();
  const uint16_t* row = w + r * ld;
  int64_t c = 0;
  for (; c + 32 <= C; c += 32) {
    __m512bh xv[NT];
    for (int t = 0; t < NT; ++t) xv[t] = (__m512bh)_mm512_loadu_si512(xs[t] + c);
    if (pf)
      for (int i = 0; i < NR; ++i) _mm_prefetch((const char*)(row + (NR + i) * ld + c), _MM_HINT_T0);
    for (int i = 0; i < NR; ++i) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(row + i * ld + c);
      for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], wv, xv[t]);
    }
  }
  if (c < C) {  // the last C - c < 32 columns: masked loads (zeros past C add nothing)
    const __mmask32 m = (__mmask32)((1ull << (C - c)) - 1);
    __m512bh xv[NT];
    for (int t = 0; t < NT; ++t) xv[t] = (__m512bh)_mm512_maskz_loadu_epi16(m, xs[t] + c);
    for (int i = 0; i < NR; ++i) {
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, row + i * ld + c);
      for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], wv, xv[t]);
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int t = 0; t < NT; ++t) outs[t][r + i] = _mm512_reduce_add_ps(acc[i][t]);
}

// tile over all n tokens, kNT at a time (the rows stay in L1 across the token groups).
template <int NR>
LK_BD void tile_n(const uint16_t* w, int64_t ld, int64_t r, int64_t C, const uint16_t* const* xs, int64_t n,
                  float* const* outs, bool pf) {
  for (int64_t t0 = 0; t0 < n; t0 += kNT) {
    const int64_t nt = std::min<int64_t>(kNT, n - t0);
    const bool p = pf && t0 == 0;
    if (nt == 4) tile<NR, 4>(w, ld, r, C, xs + t0, outs + t0, p);
    else if (nt == 3) tile<NR, 3>(w, ld, r, C, xs + t0, outs + t0, p);
    else if (nt == 2) tile<NR, 2>(w, ld, r, C, xs + t0, outs + t0, p);
    else tile<NR, 1>(w, ld, r, C, xs + t0, outs + t0, p);
  }
}

void gemv_rows_bf16(const uint16_t* w, int64_t ld, int64_t r0, int64_t r1, int64_t C, const uint16_t* const* xs,
                    int64_t n, float* const* outs) {
  int64_t r = r0;
  for (; r + kNR <= r1; r += kNR) tile_n<kNR>(w, ld, r, C, xs, n, outs, r + 2 * kNR <= r1);
  for (; r < r1; ++r) tile_n<1>(w, ld, r, C, xs, n, outs, false);
}

#undef LK_BD

}  // namespace avx512bf16

const MoeKernels& avx512bf16_kernels() {
  static const MoeKernels table = [] {
    MoeKernels t = avx512_kernels();
    t.gemv_rows_bf16 = &avx512bf16::gemv_rows_bf16;
    return t;
  }();
  return table;
}

}  // namespace moe
}  // namespace leankern

#endif
