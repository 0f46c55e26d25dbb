// Vector traits of the vocab CPU kernels (kernels_impl.h is written once against them): Scalar (1
// lane, portable), Avx2 (8 fp32 lanes, +FMA/F16C) and Avx512 (16 lanes, F/BW/VL/DQ). Each ISA's
// translation unit includes this header with LK_VOCAB_ISA set, so only its own traits get compiled
// with their target attributes; nothing here runs unless common/cpu_features.cpp found the ISA.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace leankern {
namespace vocab {

enum Dtype : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

inline float bf16_to_f32(uint16_t h) {
  const uint32_t b = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

inline float f16_to_f32(uint16_t h) {  // exact: every fp16 value is an fp32 value
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
  float f;
  if (e == 0) {
    f = std::ldexp(static_cast<float>(m), -24);
    uint32_t b;
    std::memcpy(&b, &f, 4);
    b |= sign;
    std::memcpy(&f, &b, 4);
    return f;
  }
  const uint32_t b = sign | (e == 31 ? (0xffu << 23) | (m << 13) : ((e + 112) << 23) | (m << 13));
  std::memcpy(&f, &b, 4);
  return f;
}

inline float load_scalar(const void* p, int dt, int64_t i) {
  if (dt == kF32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return dt == kBF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

struct Scalar {
  static constexpr int N = 1;
  static constexpr bool kReduceExp = false;  // see Avx512::frac_floor
  static constexpr int kStatsChains = 2;      // see Avx512
  using F = float;
  static F set1(float v) { return v; }
  static F zero() { return 0.0f; }
  template <int DT>
  static F load(const void* p, int64_t i) { return load_scalar(p, DT, i); }
  static F loadu(const float* p) { return *p; }
  static void storeu(float* p, F a) { *p = a; }
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  static F mul(F a, F b) { return a * b; }
  static F div(F a, F b) { return a / b; }
  static F fmadd(F a, F b, F c) { return std::fma(a, b, c); }
  static F fmsub(F a, F b, F c) { return std::fma(a, b, -c); }
  static F max(F a, F b) { return a > b ? a : b; }  // NaN in a: b (as maxps)
  static F abs(F a) { return std::fabs(a); }
  static F copysign(F a, F s) { return std::copysign(a, s); }
  // masks are floats with all bits set / clear, like the vector compares
  static F mask(bool b) {
    uint32_t u = b ? 0xffffffffu : 0u;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static uint32_t bits(F a) {
    uint32_t u;
    std::memcpy(&u, &a, 4);
    return u;
  }
  static F lt(F a, F b) { return mask(a < b); }
  static F andnot(F m, F a) {
    const uint32_t u = bits(a) & ~bits(m);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  // 2^n from tm = n + 1.5 * 2^23 (n integral in [-126, 127]): n sits in the low mantissa bits
  static F pow2_magic(F tm) {
    const uint32_t u = (bits(tm) << 23) + (127u << 23);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  // p * 2^n for tm = n + 1.5 * 2^23 (n integral) and p * 2^n a normal float: n added to p's exponent field
  static F ldexp_magic(F p, F tm) {
    const uint32_t u = bits(p) + (bits(tm) << 23);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  // elements i, i + 1 (load_pair of the vector traits: 2N elements as two vectors, in an order of their choosing)
  template <int DT>
  static void load_pair(const void* p, int64_t i, F& a, F& b) {
    a = load_scalar(p, DT, i);
    b = load_scalar(p, DT, i + 1);
  }
  static float hsum(F a) { return a; }
  static float hmax(F a) { return a; }
  static F unord(F a, F b) { return mask(std::isnan(a) || std::isnan(b)); }
  static F or_(F a, F b) {
    const uint32_t u = bits(a) | bits(b);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static bool any(F m) { return bits(m) != 0; }
  static unsigned movemask(F m) { return bits(m) >> 31; }
  static unsigned eq_bits(F a, F b) { return a == b ? 1u : 0u; }
  static void prefetch(const void*) {}
};

#if (defined(__x86_64__) || defined(_M_X64)) && defined(LK_VOCAB_ISA_AVX2)
#define LK_V __attribute__((target("avx2,fma,f16c"), always_inline)) inline static
struct Avx2 {
  static constexpr int N = 8;
  static constexpr bool kReduceExp = false;
  static constexpr int kStatsChains = 2;  // 4 ran out of the 16 registers: 1.15x the time of 2 (Zen 4, hot)
  using F = __m256;
  LK_V F set1(float v) { return _mm256_set1_ps(v); }
  LK_V F zero() { return _mm256_setzero_ps(); }
  template <int DT>
  LK_V F load(const void* p, int64_t i) {
    if (DT == kF32) return _mm256_loadu_ps(static_cast<const float*>(p) + i);
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
    if (DT == kBF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
  }
  LK_V F loadu(const float* p) { return _mm256_loadu_ps(p); }
  LK_V void storeu(float* p, F a) { _mm256_storeu_ps(p, a); }
  LK_V F add(F a, F b) { return _mm256_add_ps(a, b); }
  LK_V F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  LK_V F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  LK_V F div(F a, F b) { return _mm256_div_ps(a, b); }
  LK_V F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  LK_V F fmsub(F a, F b, F c) { return _mm256_fmsub_ps(a, b, c); }
  LK_V F max(F a, F b) { return _mm256_max_ps(a, b); }
  LK_V F abs(F a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  LK_V F copysign(F a, F s) {
    const F sign = _mm256_set1_ps(-0.0f);
    return _mm256_or_ps(_mm256_andnot_ps(sign, a), _mm256_and_ps(sign, s));
  }
  LK_V F lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  LK_V F andnot(F m, F a) { return _mm256_andnot_ps(m, a); }
  LK_V F pow2_magic(F tm) {
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(tm), 23), _mm256_set1_epi32(127 << 23)));
  }
  LK_V F ldexp_magic(F p, F tm) {
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_castps_si256(tm), 23)));
  }
  // 2N elements from i: bf16 as one 32-byte load split into the even (a) and odd (b) elements
  template <int DT>
  LK_V void load_pair(const void* p, int64_t i, F& a, F& b) {
    if (DT == kBF16) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
      a = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
      b = _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
      return;
    }
    a = load<DT>(p, i);
    b = load<DT>(p, i + N);
  }
  LK_V float hsum(F a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  LK_V float hmax(F a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  LK_V F unord(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_UNORD_Q); }
  LK_V F or_(F a, F b) { return _mm256_or_ps(a, b); }
  LK_V bool any(F m) { return _mm256_movemask_ps(m) != 0; }
  LK_V unsigned movemask(F m) { return static_cast<unsigned>(_mm256_movemask_ps(m)); }
  LK_V unsigned eq_bits(F a, F b) { return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ))); }
  LK_V void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
};
#undef LK_V
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && defined(LK_VOCAB_ISA_AVX512)
#define LK_V __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"), always_inline)) inline static
struct Avx512 {
  static constexpr int N = 16;
  // e^r as 2^y, y = r log2 e: f = y - floor(y) by one vreduceps, p(f) * 2^floor(y) by one vscalefps; both
  // non-destructive, where the 1.5 * 2^23 rounding form needs an FMA, a subtract and two register copies
  static constexpr bool kReduceExp = true;
  // independent exp chains of the logit_stats pass (kernels_impl.h block_pass): 4 were 0.96x the time of 2 for bf16
  // logits (Zen 4, hot, one thread), the same for fp32
  static constexpr int kStatsChains = 4;
  using F = __m512;
  LK_V F set1(float v) { return _mm512_set1_ps(v); }
  LK_V F zero() { return _mm512_setzero_ps(); }
  template <int DT>
  LK_V F load(const void* p, int64_t i) {
    if (DT == kF32) return _mm512_loadu_ps(static_cast<const float*>(p) + i);
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
    if (DT == kBF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
  }
  LK_V F loadu(const float* p) { return _mm512_loadu_ps(p); }
  LK_V void storeu(float* p, F a) { _mm512_storeu_ps(p, a); }
  LK_V F add(F a, F b) { return _mm512_add_ps(a, b); }
  LK_V F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  LK_V F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  LK_V F div(F a, F b) { return _mm512_div_ps(a, b); }
  LK_V F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  LK_V F fmsub(F a, F b, F c) { return _mm512_fmsub_ps(a, b, c); }
  LK_V F max(F a, F b) { return _mm512_max_ps(a, b); }
  LK_V F abs(F a) { return _mm512_abs_ps(a); }
  LK_V F copysign(F a, F s) {
    const F sign = _mm512_set1_ps(-0.0f);
    return _mm512_or_ps(_mm512_andnot_ps(sign, a), _mm512_and_ps(sign, s));
  }
  // masks as all-ones lanes (not k registers) so the template code is the same as AVX2's
  LK_V F from_mask(__mmask16 k) { return _mm512_castsi512_ps(_mm512_movm_epi32(k)); }
  LK_V F lt(F a, F b) { return from_mask(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ)); }
  LK_V F andnot(F m, F a) { return _mm512_andnot_ps(m, a); }
  LK_V F pow2_magic(F tm) {
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_slli_epi32(_mm512_castps_si512(tm), 23), _mm512_set1_epi32(127 << 23)));
  }
  LK_V F ldexp_magic(F p, F tm) {
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(_mm512_castps_si512(tm), 23)));
  }
  LK_V F frac_floor(F y) { return _mm512_reduce_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }  // y - floor(y)
  LK_V F scalef(F p, F y) { return _mm512_scalef_ps(p, y); }  // p * 2^floor(y)
  // 2N elements from i: bf16 as one 64-byte load split into the even (a) and odd (b) elements
  template <int DT>
  LK_V void load_pair(const void* p, int64_t i, F& a, F& b) {
    if (DT == kBF16) {
      const __m512i w = _mm512_loadu_si512(static_cast<const uint16_t*>(p) + i);
      a = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
      b = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
      return;
    }
    a = load<DT>(p, i);
    b = load<DT>(p, i + N);
  }
  LK_V float hsum(F a) { return _mm512_reduce_add_ps(a); }
  LK_V float hmax(F a) { return _mm512_reduce_max_ps(a); }
  LK_V F unord(F a, F b) { return from_mask(_mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q)); }
  LK_V F or_(F a, F b) { return _mm512_or_ps(a, b); }
  LK_V bool any(F m) { return _mm512_movepi32_mask(_mm512_castps_si512(m)) != 0; }
  LK_V unsigned movemask(F m) { return static_cast<unsigned>(_mm512_movepi32_mask(_mm512_castps_si512(m))); }
  LK_V unsigned eq_bits(F a, F b) { return static_cast<unsigned>(_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ)); }
  LK_V void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
};
#undef LK_V
#endif

}  // namespace vocab
}  // namespace leankern
