// 16 x 16 transpose of 32-bit elements in AVX-512 registers, shared by the AMX kernels that turn C^T tiles back
// (common/bf16_gemm.cpp, vocab/kernels_avx512bf16.cpp). Nothing here runs unless the caller checked AVX-512.
#pragma once
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

namespace leankern {
namespace cpu {

// r[i] (16 rows of 16 dwords) -> o[j] (lane i = r[i]'s dword j): unpack 32 / 64-bit within 128-bit lanes, then a
// 4 x 4 transpose of the 128-bit lanes.
__attribute__((target("avx512f"))) inline void transpose16(const __m512i* r, __m512i* o) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // u[4i + m], 128-bit lane L: rows 4i .. 4i + 3 of dword 4L + m
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int m = 0; m < 4; ++m) {  // o[4L + m], 128-bit lane i = u[4i + m]'s lane L
    const __m512i v0 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0x44), v1 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0x44);
    const __m512i v3 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0xEE);
    o[m] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    o[4 + m] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    o[8 + m] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    o[12 + m] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
}

}  // namespace cpu
}  // namespace leankern

#endif
