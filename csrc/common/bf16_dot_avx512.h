// The AVX512-BF16 dot-product micro-kernel shared by the mx prefill kernel (csrc/mx/linear_packed_bf16.h) and the
// plain bf16 GEMM (common/bf16_gemm_avx512.cpp): MM rows of x (<= kRowGroup) times one 16-row weight tile whose
// pairs are already laid out for vdpbf16ps. Only translation units built with the avx512bf16 target include it.
#pragma once
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdint>

namespace leankern {
namespace cpu {
namespace bf16dot {

// x in row groups: xg[q * kRowGroup + i] = the bf16 pair (x[i, 2q], x[i, 2q + 1]) of the group's row i, as int32.
constexpr int kRowGroup = 24;

// acc[i] (lane r) = sum over q < pairs of vdpbf16ps(wb[q], pair q of row i), i < MM: lane r of wb[q] holds weight
// row r's pair q. Every product is exact (8 x 8 significant bits), the sums fp32; vdpbf16ps treats bf16
// subnormal inputs and fp32 subnormal results as zero. Out of line with local sums so that up to 24 of them stay in
// registers (acc's address escapes to the caller); intrinsics rather than an asm broadcast operand, with which
// GCC kept 24 sums in memory.
template <int MM>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"), noinline)) void micro(
    const int32_t* xg, int64_t pairs, const __m512i* wb, __m512* acc) {
  static_assert(MM >= 1 && MM <= kRowGroup, "at most one row group per call");
  __m512 r[MM];
  for (int i = 0; i < MM; ++i) r[i] = _mm512_setzero_ps();
  for (int64_t q = 0; q < pairs; ++q) {
    const __m512bh wv = (__m512bh)_mm512_load_si512(wb + q);
#pragma GCC unroll 24  // fully: r[] must be registers
    for (int i = 0; i < MM; ++i)
      r[i] = _mm512_dpbf16_ps(r[i], wv, (__m512bh)_mm512_set1_epi32(xg[q * kRowGroup + i]));
  }
  for (int i = 0; i < MM; ++i) acc[i] = r[i];
}

}  // namespace bf16dot
}  // namespace cpu
}  // namespace leankern
#endif
