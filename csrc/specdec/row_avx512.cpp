// AVX-512 (F/BW/VL/DQ) build of the specdec row passes (row_simd_impl.h): 16 fp32 / 8 fp64 lanes.
// Every function carries a target attribute; nothing here runs unless common/cpu_features.cpp found
// AVX-512. Only these vector traits differ from the AVX2 build: the passes are the same template code.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "specdec/numerics.h"
#include "specdec/row_kernels.h"

#define LK_V __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c"), always_inline)) inline static

namespace leankern {
namespace specdec {
namespace avx512 {

struct Avx512 {
  static constexpr int N = 16;
  // vectors interleaved in the exp pass (row_simd_impl.h exp40_k; 8: two steps per kBlock, measured ~10%
  // faster than 4)
  static constexpr int K = 8;
  using F = __m512;
  using D = __m512d;
  using Q = __m512i;

  // fp32
  LK_V F set1(float v) { return _mm512_set1_ps(v); }
  template <int DT>
  LK_V F load(const void* p, int64_t i) {
    if (DT == kF32) return _mm512_loadu_ps(static_cast<const float*>(p) + i);
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
    if (DT == kBF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
  }
  LK_V void store(float* p, F a) { _mm512_storeu_ps(p, a); }
  LK_V F add(F a, F b) { return _mm512_add_ps(a, b); }
  LK_V F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  LK_V F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  LK_V F div(F a, F b) { return _mm512_div_ps(a, b); }
  LK_V F max(F a, F b) { return _mm512_max_ps(a, b); }  // NaN in either: b
  LK_V F min(F a, F b) { return _mm512_min_ps(a, b); }
  LK_V F floor(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  LK_V F trunc(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC); }
  LK_V __mmask16 ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  LK_V F keep(F x, __mmask16 mask) { return _mm512_maskz_mov_ps(mask, x); }
  // 2^(n + bias - 127) for integral n with n + bias in [0, 2^9): n + 1.5 * 2^23 + bias holds n + bias in
  // its low mantissa bits, and the shift moves them into the exponent (the rest shifts out)
  LK_V F pow2(F n, int bias) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(_mm512_add_ps(n, _mm512_set1_ps(12582912.0f + bias))), 23));
  }
  // p * 2^n for integral n with p * 2^n normal: n + 1.5 * 2^23 holds n in its low mantissa bits (two's
  // complement), the shift moves them into the exponent field, the integer add scales p exactly.
  LK_V F scale_pow2(F p, F n) {
    const __m512i nb =
        _mm512_slli_epi32(_mm512_castps_si512(_mm512_add_ps(n, _mm512_set1_ps(12582912.0f))), 23);
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), nb));
  }
  // acc + trunc(e) of the live lanes as int64 (e in [0, 2^41) there): two truncating conversions.
  static constexpr bool kPlainWeightSum = true;
  LK_V Q add_w(Q acc, F e, __mmask16 live) {
    const __m512i lo = _mm512_maskz_cvttps_epi64(static_cast<__mmask8>(live), _mm512_castps512_ps256(e));
    const __m512i hi = _mm512_maskz_cvttps_epi64(static_cast<__mmask8>(live >> 8), _mm512_extractf32x8_ps(e, 1));
    return _mm512_add_epi64(acc, _mm512_add_epi64(lo, hi));
  }
  LK_V float hmax(F a) {
    const __m256 m = _mm256_max_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
  }
  LK_V __mmask16 nan_none() { return 0; }
  LK_V __mmask16 nan_or(__mmask16 acc, F a, F b) {
    return static_cast<__mmask16>(acc | _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q));
  }
  LK_V bool nan_any(__mmask16 acc) { return acc != 0; }
  LK_V unsigned eq_bits(F x, F v) { return static_cast<unsigned>(_mm512_cmp_ps_mask(x, v, _CMP_EQ_OQ)); }
  LK_V void to_pd(F x, D& lo, D& hi) {
    lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
    hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1));
  }
  // fp64
  LK_V D set1_pd(double v) { return _mm512_set1_pd(v); }
  LK_V D zero_pd() { return _mm512_setzero_pd(); }
  LK_V D add_pd(D a, D b) { return _mm512_add_pd(a, b); }
  LK_V D sub_pd(D a, D b) { return _mm512_sub_pd(a, b); }
  LK_V D mul_pd(D a, D b) { return _mm512_mul_pd(a, b); }
  LK_V D div_pd(D a, D b) { return _mm512_div_pd(a, b); }
  LK_V D max_pd(D a, D b) { return _mm512_max_pd(a, b); }
  LK_V D floor_pd(D a) { return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  LK_V D keep_ge_pd(D w, D thr) { return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(w, thr, _CMP_GE_OQ), w); }
  LK_V double hsum_pd(D a) {
    const __m256d s4 = _mm256_add_pd(_mm512_castpd512_pd256(a), _mm512_extractf64x4_pd(a, 1));
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(s4), _mm256_extractf128_pd(s4, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  // int64
  LK_V Q bits(D a) { return _mm512_castpd_si512(a); }
  LK_V D pd(Q a) { return _mm512_castsi512_pd(a); }
  LK_V Q zero_q() { return _mm512_setzero_si512(); }
  LK_V Q set1_q(int64_t v) { return _mm512_set1_epi64(v); }
  LK_V Q add_q(Q a, Q b) { return _mm512_add_epi64(a, b); }
  LK_V Q and_q(Q a, Q b) { return _mm512_and_si512(a, b); }
  LK_V Q or_q(Q a, Q b) { return _mm512_or_si512(a, b); }
  LK_V Q xor_q(Q a, Q b) { return _mm512_xor_si512(a, b); }
  template <int C>
  LK_V Q srli_q(Q a) { return _mm512_srli_epi64(a, C); }
  template <int C>
  LK_V Q slli_q(Q a) { return _mm512_slli_epi64(a, C); }
  LK_V uint64_t hsum_q(Q a) {  // wrapping
    const __m256i s4 = _mm256_add_epi64(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
    const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(s4), _mm256_extracti128_si256(s4, 1));
    return static_cast<uint64_t>(_mm_cvtsi128_si64(s)) + static_cast<uint64_t>(_mm_extract_epi64(s, 1));
  }
};

using S = Avx512;
#define LK_T __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c"))) inline
#include "specdec/row_simd_impl.h"
#undef LK_T

}  // namespace avx512

const RowKernels& avx512_row_kernels() {
  static const RowKernels table = {&avx512::argmax,      &avx512::weight_sum,   &avx512::bound_sum,
                                   &avx512::entropy_sum, &avx512::residual_sum_w};
  return table;
}

}  // namespace specdec
}  // namespace leankern

#endif
