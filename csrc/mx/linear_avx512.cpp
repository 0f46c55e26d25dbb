// AVX-512 (F/BW/VL/DQ) build of the linear kernels (linear_simd_impl.h, linear_packed_impl.h; and the
// AVX512-BF16 / VNNI ones, linear_packed_bf16.h / _bf16_small.h / _int8.h / _amx.h, run only under the avx512bf16 ISA, the last only with AMX) and the ISA extras they
// need. Every function carries a target attribute; the baseline never executes any of it unless
// common/cpu_features.cpp found the ISA at run time. Own namespace (avx512::lin): the decode
// helpers of mx_simd_impl.h are compiled here again, independently of mx_avx512.cpp.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <type_traits>

#include <vector>

#include "common/amx.h"
#include "common/bf16_dot_avx512.h"
#include "common/bits.h"
#include "common/simd_avx512.h"
#include "mx/formats.h"
#include "mx/kernels.h"
#include "mx/scalar_kernels.h"

namespace leankern {
namespace mx {
namespace avx512 {
namespace lin {

using V = cpu::V512;
#define LK_T __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c,fma"))) inline
#include "mx/mx_simd_impl.h"

struct X {
  LK_T static __m512 f(I a) { return _mm512_castsi512_ps(a); }
  LK_T static I fmadd(I a, I b, I c) { return _mm512_castps_si512(_mm512_fmadd_ps(f(a), f(b), f(c))); }
  LK_T static float hsum(I a) { return _mm512_reduce_add_ps(f(a)); }
  using Tab = I;  // 16 fp32 patterns
  LK_T static Tab tab(const uint32_t* lut, float s) { return V::fmul(V::load(lut), V::fset1(s)); }
  LK_T static I look(Tab t, I idx) { return _mm512_permutexvar_epi32(idx, t); }
  LK_T static I look16(const uint32_t* lut, I idx) { return _mm512_permutexvar_epi32(idx, V::load(lut)); }
  // fp32 lanes 0..7 = fa, 8..15 = fb
  LK_T static I pair(float fa, float fb) {
    return _mm512_castps_si512(_mm512_mask_mov_ps(_mm512_set1_ps(fa), (__mmask16)0xFF00, _mm512_set1_ps(fb)));
  }
  // 16 lanes of 16 bits (fp16 patterns) and their conversion to fp32
  using H = __m256i;
  LK_T static H h_load_i8(const uint8_t* p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)p)); }
  LK_T static H h_load_u8(const uint8_t* p) { return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)p)); }
  template <int S>
  LK_T static H h_slli(H a) { return _mm256_slli_epi16(a, S); }
  template <int S>
  LK_T static H h_srai(H a) { return _mm256_srai_epi16(a, S); }
  LK_T static H h_and(H a, int16_t m) { return _mm256_and_si256(a, _mm256_set1_epi16(m)); }
  LK_T static I h_to_f32(H a) { return _mm512_castps_si512(_mm512_cvtph_ps(a)); }
  // One output row of a row tile (the 16 fp32 sums acc[0]) times post, plus bias, rounded to y's dtype as
  // store_f32_bits rounds (bf16: RNE, NaN -> 0xFFFF; fp16: vcvtps2ph's RNE), lanes [0, rows) stored. Why: the scalar
  // loop (a dtype test and a 2-byte store per element) was ~6% of an M = 512 int8 dual call (perf, Zen 4).
  LK_T static bool store_row(const PackedLinearArgs& a, int64_t m, int64_t n0, int rows, const I* acc, float post) {
    const __mmask16 live = (__mmask16)(rows >= 16 ? 0xFFFFu : (1u << rows) - 1u);
    __m512 y = _mm512_mul_ps(f(acc[0]), _mm512_set1_ps(post));
    if (a.bias) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(live, a.bias + n0));
    const int64_t at = m * a.N + n0;
    if (a.out_dtype == kInF32) {
      _mm512_mask_storeu_ps(static_cast<float*>(a.y) + at, live, y);
    } else if (a.out_dtype == kInF16) {
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(a.y) + at, live,
                               _mm512_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else {
      const I b = _mm512_castps_si512(y);
      const I odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
      I r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd)), 16);
      const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, _mm512_set1_epi32(0x7fffffff)),
                                                    _mm512_set1_epi32(0x7f800000));
      r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0xFFFF));
      _mm512_mask_cvtepi32_storeu_epi16(static_cast<uint16_t*>(a.y) + at, live, r);
    }
    return true;
  }
  // any byte b of p[0, n) with (b & mask) == mask
  LK_T static bool any_masked_eq(const uint8_t* p, int64_t n, int mask) {
    const __m512i mk = _mm512_set1_epi8((char)mask);
    __mmask64 hit = 0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) hit |= _mm512_cmpeq_epi8_mask(_mm512_and_si512(_mm512_loadu_si512(p + i), mk), mk);
    if (hit) return true;
    for (; i < n; ++i)
      if ((p[i] & mask) == mask) return true;
    return false;
  }
  // any byte of p[0, n) in [lo, hi]
  LK_T static bool any_in_range(const uint8_t* p, int64_t n, int lo, int hi) {
    if (lo > hi) return false;
    const __m512i l = _mm512_set1_epi8((char)lo), h = _mm512_set1_epi8((char)hi);
    __mmask64 hit = 0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
      const __m512i v = _mm512_loadu_si512(p + i);
      hit |= _mm512_mask_cmple_epu8_mask(_mm512_cmpge_epu8_mask(v, l), v, h);
    }
    if (hit) return true;
    for (; i < n; ++i)
      if (p[i] >= lo && p[i] <= hi) return true;
    return false;
  }
};

#include "mx/linear_simd_impl.h"
#include "mx/linear_packed_impl.h"
#include "mx/linear_packed_bf16.h"
#include "mx/linear_packed_bf16_small.h"
#include "mx/linear_packed_int8.h"
#include "mx/linear_packed_amx.h"
#undef LK_T

}  // namespace lin

void linear(const LinearArgs& a, int64_t n0, int64_t n1) { lin::linear_range(a, n0, n1); }
bool linear_packed(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  return lin::linear_packed_range(a, t0, t1);
}
bool linear_packed_bf16(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  return lin::linear_packed_bf16_range(a, t0, t1);
}
bool linear_packed_int8(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  return lin::linear_packed_int8_range(a, t0, t1);
}
bool linear_packed_bf16_small(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  return lin::linear_packed_bf16_small_range(a, t0, t1);
}
bool linear_packed_amx(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  return lin::linear_packed_amx_range(a, t0, t1);
}

}  // namespace avx512
}  // namespace mx
}  // namespace leankern

#endif
