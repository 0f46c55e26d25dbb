// fp32 vector traits of the moe CPU kernels (kernels_impl.h is written once against them): Scalar (1 lane,
// portable), Avx2 (8 lanes, +FMA/F16C), Avx512 (16 lanes, F/BW/VL/DQ). Each ISA's translation unit defines
// LK_MOE_ISA_* before including this header, so only its own traits are compiled with their target attributes.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/bits.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#if (defined(__x86_64__) || defined(_M_X64)) && defined(LK_MOE_ISA_AVX2)
#include "common/simd_avx2.h"  // the shared bf16 / fp16 widening loads
#endif
#if (defined(__x86_64__) || defined(_M_X64)) && defined(LK_MOE_ISA_AVX512)
#include "common/simd_avx512.h"
#endif

namespace leankern {
namespace moe {

enum Dtype : int { kF32 = kInF32, kBF16 = kInBF16, kF16 = kInF16 };

// bf16 / fp16 -> fp32, exact: the shared bit helpers (common/bits.h).
inline float bf16_to_f32(uint16_t h) { return u2f(static_cast<uint32_t>(h) << 16); }
inline float f16_to_f32(uint16_t h) { return u2f(f16_to_f32_bits(h)); }

template <int DT>
inline float load1(const void* p, int64_t i) {
  if (DT == kF32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return DT == kBF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

struct Scalar {
  static constexpr int N = 1;
  static constexpr int kMaxNT = 4;  // tokens per register tile
  using F = float;
  static F set1(float v) { return v; }
  static F zero() { return 0.0f; }
  template <int DT>
  static F load(const void* p, int64_t i) { return load1<DT>(p, i); }
  static F loadu(const float* p) { return *p; }
  static void storeu(float* p, F a) { *p = a; }
  static F add(F a, F b) { return a + b; }
  static F mul(F a, F b) { return a * b; }
  static F fmadd(F a, F b, F c) { return a * b + c; }  // no libm fma call: the portable build has no FMA unit
  static float hsum(F a) { return a; }
  static void prefetch(const void*) {}
};

#if (defined(__x86_64__) || defined(_M_X64)) && defined(LK_MOE_ISA_AVX2)
#define LK_V __attribute__((target("avx2,fma,f16c"), always_inline)) inline static
struct Avx2 {
  static constexpr int N = 8;
  static constexpr int kMaxNT = 3;  // 4 rows x 3 tokens = 12 accumulators + w + x: fits 16 ymm registers
  using F = __m256;
  LK_V F set1(float v) { return _mm256_set1_ps(v); }
  LK_V F zero() { return _mm256_setzero_ps(); }
  template <int DT>
  LK_V F load(const void* p, int64_t i) {
    if (DT == kF32) return _mm256_loadu_ps(static_cast<const float*>(p) + i);
    const uint16_t* h = static_cast<const uint16_t*>(p) + i;  // widened by the shared wrapper (common/simd_avx2.h)
    return _mm256_castsi256_ps(DT == kBF16 ? cpu::V256::load_bf16(h) : cpu::V256::load_f16(h));
  }
  LK_V F loadu(const float* p) { return _mm256_loadu_ps(p); }
  LK_V void storeu(float* p, F a) { _mm256_storeu_ps(p, a); }
  LK_V F add(F a, F b) { return _mm256_add_ps(a, b); }
  LK_V F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  LK_V F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  LK_V float hsum(F a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  LK_V void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
};
#undef LK_V
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && defined(LK_MOE_ISA_AVX512)
#define LK_V __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"), always_inline)) inline static
struct Avx512 {
  static constexpr int N = 16;
  static constexpr int kMaxNT = 4;  // 16 accumulators of 32 zmm registers
  using F = __m512;
  LK_V F set1(float v) { return _mm512_set1_ps(v); }
  LK_V F zero() { return _mm512_setzero_ps(); }
  template <int DT>
  LK_V F load(const void* p, int64_t i) {
    if (DT == kF32) return _mm512_loadu_ps(static_cast<const float*>(p) + i);
    const uint16_t* h = static_cast<const uint16_t*>(p) + i;  // widened by the shared wrapper (common/simd_avx512.h)
    return _mm512_castsi512_ps(DT == kBF16 ? cpu::V512::load_bf16(h) : cpu::V512::load_f16(h));
  }
  LK_V F loadu(const float* p) { return _mm512_loadu_ps(p); }
  LK_V void storeu(float* p, F a) { _mm512_storeu_ps(p, a); }
  LK_V F add(F a, F b) { return _mm512_add_ps(a, b); }
  LK_V F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  LK_V F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  LK_V float hsum(F a) { return _mm512_reduce_add_ps(a); }
  LK_V void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
};
#undef LK_V
#endif

}  // namespace moe
}  // namespace leankern
