// AVX2 (+F16C) build of the specdec row passes (row_simd_impl.h): 8 fp32 / 4 fp64 lanes. Every
// function carries a target attribute; nothing here runs unless common/cpu_features.cpp found AVX2.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "specdec/numerics.h"
#include "specdec/row_kernels.h"

#define LK_V __attribute__((target("avx2,f16c"), always_inline)) inline static

namespace leankern {
namespace specdec {
namespace avx2 {

struct Avx2 {
  static constexpr int N = 8;
  static constexpr int K = 4;  // vectors interleaved in the exp pass (row_simd_impl.h weights_k)
  using F = __m256;
  using D = __m256d;
  using Q = __m256i;

  // fp32
  LK_V F set1(float v) { return _mm256_set1_ps(v); }
  template <int DT>
  LK_V F load(const void* p, int64_t i) {
    if (DT == kF32) return _mm256_loadu_ps(static_cast<const float*>(p) + i);
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
    if (DT == kBF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
  }
  LK_V void store(float* p, F a) { _mm256_storeu_ps(p, a); }
  LK_V F add(F a, F b) { return _mm256_add_ps(a, b); }
  LK_V F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  LK_V F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  LK_V F div(F a, F b) { return _mm256_div_ps(a, b); }
  LK_V F max(F a, F b) { return _mm256_max_ps(a, b); }  // NaN in either: b
  LK_V F min(F a, F b) { return _mm256_min_ps(a, b); }
  LK_V F floor(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  LK_V F trunc(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC); }
  LK_V F ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  LK_V F keep(F x, F mask) { return _mm256_and_ps(x, mask); }
  // 2^(n + bias - 127) from integral n: exponent bits
  // 2^(n + bias - 127) for integral n with n + bias in [0, 2^9): n + 1.5 * 2^23 + bias holds n + bias in
  // its low mantissa bits, and the shift moves them into the exponent (the rest shifts out)
  LK_V F pow2(F n, int bias) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(_mm256_add_ps(n, _mm256_set1_ps(12582912.0f + bias))), 23));
  }
  // p * 2^n for integral n with p * 2^n normal (row_avx512.cpp scale_pow2).
  LK_V F scale_pow2(F p, F n) {
    const __m256i nb =
        _mm256_slli_epi32(_mm256_castps_si256(_mm256_add_ps(n, _mm256_set1_ps(12582912.0f))), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), nb));
  }
  // No fp32 -> int64 conversion in AVX2: weight sums go through fp64 (row_simd_impl.h add_biased).
  static constexpr bool kPlainWeightSum = false;
  LK_V Q add_w(Q acc, F, F) { return acc; }  // never called (kPlainWeightSum is false)
  LK_V float hmax(F a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  LK_V F nan_none() { return _mm256_setzero_ps(); }
  LK_V F nan_or(F acc, F a, F b) { return _mm256_or_ps(acc, _mm256_cmp_ps(a, b, _CMP_UNORD_Q)); }
  LK_V bool nan_any(F acc) { return _mm256_movemask_ps(acc) != 0; }
  LK_V unsigned eq_bits(F x, F v) { return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(x, v, _CMP_EQ_OQ))); }
  LK_V void to_pd(F x, D& lo, D& hi) {
    lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
    hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
  }
  // fp64
  LK_V D set1_pd(double v) { return _mm256_set1_pd(v); }
  LK_V D zero_pd() { return _mm256_setzero_pd(); }
  LK_V D add_pd(D a, D b) { return _mm256_add_pd(a, b); }
  LK_V D sub_pd(D a, D b) { return _mm256_sub_pd(a, b); }
  LK_V D mul_pd(D a, D b) { return _mm256_mul_pd(a, b); }
  LK_V D div_pd(D a, D b) { return _mm256_div_pd(a, b); }
  LK_V D max_pd(D a, D b) { return _mm256_max_pd(a, b); }
  LK_V D floor_pd(D a) { return _mm256_round_pd(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  LK_V D keep_ge_pd(D w, D thr) { return _mm256_and_pd(w, _mm256_cmp_pd(w, thr, _CMP_GE_OQ)); }
  LK_V double hsum_pd(D a) {
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  // int64
  LK_V Q bits(D a) { return _mm256_castpd_si256(a); }
  LK_V D pd(Q a) { return _mm256_castsi256_pd(a); }
  LK_V Q zero_q() { return _mm256_setzero_si256(); }
  LK_V Q set1_q(int64_t v) { return _mm256_set1_epi64x(v); }
  LK_V Q add_q(Q a, Q b) { return _mm256_add_epi64(a, b); }
  LK_V Q and_q(Q a, Q b) { return _mm256_and_si256(a, b); }
  LK_V Q or_q(Q a, Q b) { return _mm256_or_si256(a, b); }
  LK_V Q xor_q(Q a, Q b) { return _mm256_xor_si256(a, b); }
  template <int C>
  LK_V Q srli_q(Q a) { return _mm256_srli_epi64(a, C); }
  template <int C>
  LK_V Q slli_q(Q a) { return _mm256_slli_epi64(a, C); }
  LK_V uint64_t hsum_q(Q a) {  // wrapping
    const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    return static_cast<uint64_t>(_mm_cvtsi128_si64(s)) + static_cast<uint64_t>(_mm_extract_epi64(s, 1));
  }
};

using S = Avx2;
#define LK_T __attribute__((target("avx2,f16c"))) inline
#include "specdec/row_simd_impl.h"
#undef LK_T

}  // namespace avx2

const RowKernels& avx2_row_kernels() {
  static const RowKernels table = {&avx2::argmax,      &avx2::weight_sum,   &avx2::bound_sum,
                                   &avx2::entropy_sum, &avx2::residual_sum_w};
  return table;
}

}  // namespace specdec
}  // namespace leankern

#endif
