// The sum of a 256-bit vector's 8 fp32 lanes, shared by the SEFP AVX2 kernels (planes_simd_impl.h, compiled into the
// avx2 and avx512 tables, and packed_gemv_avx2.cpp). target("avx2") only: inlined into any caller whose target
// includes AVX2.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

namespace leankern {
namespace sefp {

__attribute__((target("avx2"), always_inline)) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace sefp
}  // namespace leankern
#endif
