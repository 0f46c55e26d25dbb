// AVX2 (+F16C, FMA) build of the linear kernels (linear_simd_impl.h) and the ISA extras they need.
// The AVX2 ISA level does not imply FMA (common/cpu_features.cpp checks AVX2 + F16C), so the entry
// point runs the portable kernel on a CPU without it. Own namespace (avx2::lin), like
// linear_avx512.cpp.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <type_traits>

#include "common/bits.h"
#include "common/simd_avx2.h"
#include "mx/formats.h"
#include "mx/kernels.h"
#include "mx/scalar_kernels.h"

namespace leankern {
namespace mx {
namespace avx2 {
namespace lin {

using V = cpu::V256;
#define LK_T __attribute__((target("avx2,f16c,fma"))) inline
#include "mx/mx_simd_impl.h"

struct X {
  // no vector form of packed_store's row (two vectors per row tile here): its scalar loop runs
  LK_T static bool store_row(const PackedLinearArgs&, int64_t, int64_t, int, const I*, float) { return false; }
  LK_T static __m256 f(I a) { return _mm256_castsi256_ps(a); }
  LK_T static I fmadd(I a, I b, I c) { return _mm256_castps_si256(_mm256_fmadd_ps(f(a), f(b), f(c))); }
  LK_T static float hsum(I a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(f(a)), _mm256_extractf128_ps(f(a), 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  struct Tab {
    I lo, hi;  // entries 0..7, 8..15
  };
  LK_T static Tab tab(const uint32_t* lut, float s) {
    return Tab{V::fmul(V::load(lut), V::fset1(s)), V::fmul(V::load(lut + 8), V::fset1(s))};
  }
  LK_T static I look(const Tab& t, I idx) {
    const __m256 lo = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(t.lo, idx));
    const __m256 hi = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(t.hi, idx));
    return _mm256_castps_si256(_mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28))));  // bit 3
  }
  LK_T static I look16(const uint32_t* lut, I idx) { return V::lut16(lut, idx); }
  // fp32 lanes 0..3 = fa, 4..7 = fb (interface parity with AVX-512; the 8-lane kernels use per-block tables)
  LK_T static I pair(float fa, float fb) {
    return _mm256_castps_si256(_mm256_blend_ps(_mm256_set1_ps(fa), _mm256_set1_ps(fb), 0xF0));
  }
  // 8 lanes of 16 bits (fp16 patterns) and their conversion to fp32
  using H = __m128i;
  LK_T static H h_load_i8(const uint8_t* p) { return _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i*)p)); }
  LK_T static H h_load_u8(const uint8_t* p) { return _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i*)p)); }
  template <int S>
  LK_T static H h_slli(H a) { return _mm_slli_epi16(a, S); }
  template <int S>
  LK_T static H h_srai(H a) { return _mm_srai_epi16(a, S); }
  LK_T static H h_and(H a, int16_t m) { return _mm_and_si128(a, _mm_set1_epi16(m)); }
  LK_T static I h_to_f32(H a) { return _mm256_castps_si256(_mm256_cvtph_ps(a)); }
  LK_T static bool any_masked_eq(const uint8_t* p, int64_t n, int mask) {
    const __m256i mk = _mm256_set1_epi8((char)mask);
    __m256i hit = _mm256_setzero_si256();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
      hit = _mm256_or_si256(hit, _mm256_cmpeq_epi8(_mm256_and_si256(V::load(p + i), mk), mk));
    if (!_mm256_testz_si256(hit, hit)) return true;
    for (; i < n; ++i)
      if ((p[i] & mask) == mask) return true;
    return false;
  }
  LK_T static bool any_in_range(const uint8_t* p, int64_t n, int lo, int hi) {
    if (lo > hi) return false;
    const __m256i l = _mm256_set1_epi8((char)lo), d = _mm256_set1_epi8((char)(hi - lo));
    __m256i hit = _mm256_setzero_si256();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      const __m256i t = _mm256_sub_epi8(V::load(p + i), l);  // in range <=> t <= hi - lo (unsigned)
      hit = _mm256_or_si256(hit, _mm256_cmpeq_epi8(_mm256_min_epu8(t, d), t));
    }
    if (!_mm256_testz_si256(hit, hit)) return true;
    for (; i < n; ++i)
      if (p[i] >= lo && p[i] <= hi) return true;
    return false;
  }
};

#include "mx/linear_simd_impl.h"
#include "mx/linear_packed_impl.h"
#undef LK_T

}  // namespace lin

void linear(const LinearArgs& a, int64_t n0, int64_t n1) {
  static const bool has_fma = __builtin_cpu_supports("fma");
  if (has_fma)
    lin::linear_range(a, n0, n1);
  else
    linear_range_scalar(a, n0, n1);
}

// false without FMA: the op then unpacks tiles for `linear` (which takes the portable path)
bool linear_packed(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  static const bool has_fma = __builtin_cpu_supports("fma");
  return has_fma && lin::linear_packed_range(a, t0, t1);
}

}  // namespace avx2
}  // namespace mx
}  // namespace leankern

#endif
