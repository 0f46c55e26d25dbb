// AVX-512 (F/BW/VL/DQ) vector wrapper for the width-generic kernels (e.g. mx/mx_simd_impl.h):
// 16 lanes of 32-bit integers (fp32 values travel as their bit patterns). Every function carries
// the target attribute; nothing here is compiled for the baseline ISA.
#pragma once

#include <immintrin.h>
#include <stdint.h>

#define LK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c"), always_inline)) inline

namespace leankern {
namespace cpu {

struct V512 {
  static constexpr int N = 16;
  using I = __m512i;
  using M = __mmask16;

  LK_AVX512 static I zero() { return _mm512_setzero_si512(); }
  LK_AVX512 static I set1(int32_t v) { return _mm512_set1_epi32(v); }
  LK_AVX512 static I fset1(float v) { return _mm512_castps_si512(_mm512_set1_ps(v)); }
  // memory
  LK_AVX512 static I load(const void* p) { return _mm512_loadu_si512(p); }
  LK_AVX512 static void store(void* p, I v) { _mm512_storeu_si512(p, v); }
  LK_AVX512 static I load_bf16(const void* p) {
    return _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16);
  }
  LK_AVX512 static I load_f16(const void* p) {
    return _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)));
  }
  LK_AVX512 static void store_bf16(void* p, I b) {  // RNE, NaN -> 0xFFFF (torch's .to())
    M nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, set1(0x7fffffff)), set1(0x7f800000));
    I odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), set1(1));
    I r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(b, set1(0x7fff)), odd), 16);
    r = _mm512_mask_mov_epi32(r, nan, set1(0xffff));
    _mm256_storeu_si256((__m256i*)p, _mm512_cvtepi32_epi16(r));
  }
  LK_AVX512 static void store_f16(void* p, I b) {
    _mm256_storeu_si256((__m256i*)p,
                        _mm512_cvtps_ph(_mm512_castsi512_ps(b), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  LK_AVX512 static I load_u8(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p)); }
  LK_AVX512 static I load_i8(const uint8_t* p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)); }
  // N/2 bytes -> N lanes: lane 2i = low nibble of byte i, lane 2i+1 = its high nibble.
  LK_AVX512 static I load_nibbles(const uint8_t* p) {
    I q = _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i*)p));
    q = _mm512_or_si512(q, _mm512_slli_epi64(_mm512_srli_epi64(q, 4), 32));
    return _mm512_and_si512(q, set1(0xF));
  }
  LK_AVX512 static void store_u8(uint8_t* p, I v) { _mm_storeu_si128((__m128i*)p, _mm512_cvtepi32_epi8(v)); }
  // lanes hold values < 16: byte i = lane 2i | lane 2i+1 << 4.
  LK_AVX512 static void store_nibbles(uint8_t* p, I v) {
    _mm_storel_epi64((__m128i*)p, _mm512_cvtepi64_epi8(_mm512_or_si512(v, _mm512_srli_epi64(v, 28))));
  }
  // x0 = elements [0, N), x1 = [N, 2N) -> even / odd elements of the 2N
  LK_AVX512 static void deinterleave(I x0, I x1, I& even, I& odd) {
    const I ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    even = _mm512_permutex2var_epi32(x0, ie, x1);
    odd = _mm512_permutex2var_epi32(x0, _mm512_add_epi32(ie, set1(1)), x1);
  }
  // mask of lanes [N/2, N)
  LK_AVX512 static M upper_half() { return (M)0xFF00; }
  // integer arithmetic / logic
  LK_AVX512 static I add(I a, I b) { return _mm512_add_epi32(a, b); }
  LK_AVX512 static I sub(I a, I b) { return _mm512_sub_epi32(a, b); }
  LK_AVX512 static I and_(I a, I b) { return _mm512_and_si512(a, b); }
  LK_AVX512 static I or_(I a, I b) { return _mm512_or_si512(a, b); }
  LK_AVX512 static I xor_(I a, I b) { return _mm512_xor_si512(a, b); }
  template <int S>
  LK_AVX512 static I srli(I a) { return _mm512_srli_epi32(a, S); }
  template <int S>
  LK_AVX512 static I slli(I a) { return _mm512_slli_epi32(a, S); }
  template <int S>
  LK_AVX512 static I srai(I a) { return _mm512_srai_epi32(a, S); }
  LK_AVX512 static I srlv(I a, I s) { return _mm512_srlv_epi32(a, s); }  // counts >= 32 give 0
  LK_AVX512 static I sllv(I a, I s) { return _mm512_sllv_epi32(a, s); }
  LK_AVX512 static I min_i(I a, I b) { return _mm512_min_epi32(a, b); }
  LK_AVX512 static I max_i(I a, I b) { return _mm512_max_epi32(a, b); }
  LK_AVX512 static I max_u(I a, I b) { return _mm512_max_epu32(a, b); }
  LK_AVX512 static I max_u16(I a, I b) { return _mm512_max_epu16(a, b); }
  // fp16 patterns in the low 16 bits of each lane -> fp32 patterns (exact)
  LK_AVX512 static I f16_lanes_to_f32(I a) { return _mm512_castps_si512(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(a))); }
  // masks: blend(m, a, b) = m ? b : a
  LK_AVX512 static M eq(I a, I b) { return _mm512_cmpeq_epi32_mask(a, b); }
  LK_AVX512 static M gt_i(I a, I b) { return _mm512_cmpgt_epi32_mask(a, b); }
  LK_AVX512 static M gt_u(I a, I b) { return _mm512_cmpgt_epu32_mask(a, b); }
  LK_AVX512 static I blend(M m, I a, I b) { return _mm512_mask_blend_epi32(m, a, b); }
  // t + 1 in the lanes where a & bit != 0: a test and a masked add, no shift
  LK_AVX512 static I inc_if_any(I t, I a, I bit) {
    return _mm512_mask_sub_epi32(t, _mm512_test_epi32_mask(a, bit), t, set1(-1));
  }
  LK_AVX512 static M mand(M a, M b) { return (M)(a & b); }
  LK_AVX512 static M or_mask(M a, M b) { return (M)(a | b); }
  LK_AVX512 static M mandnot(M a, M b) { return (M)(~a & b); }
  LK_AVX512 static bool any(M m) { return m != 0; }
  LK_AVX512 static int32_t lane0(I a) { return _mm_cvtsi128_si32(_mm512_castsi512_si128(a)); }
  // fp32 on bit patterns
  LK_AVX512 static __m512 f(I a) { return _mm512_castsi512_ps(a); }
  LK_AVX512 static I cvt_i2f(I a) { return _mm512_castps_si512(_mm512_cvtepi32_ps(a)); }
  LK_AVX512 static I fadd(I a, I b) { return _mm512_castps_si512(_mm512_add_ps(f(a), f(b))); }
  LK_AVX512 static I fsub(I a, I b) { return _mm512_castps_si512(_mm512_sub_ps(f(a), f(b))); }
  LK_AVX512 static I fmul(I a, I b) { return _mm512_castps_si512(_mm512_mul_ps(f(a), f(b))); }
  LK_AVX512 static I fdiv(I a, I b) { return _mm512_castps_si512(_mm512_div_ps(f(a), f(b))); }
  // m ? a - b : src (exact IEEE subtraction in the selected lanes)
  LK_AVX512 static I mask_fsub(I src, M m, I a, I b) {
    return _mm512_castps_si512(_mm512_mask_sub_ps(f(src), m, f(a), f(b)));
  }
  LK_AVX512 static I fmin(I a, I b) { return _mm512_castps_si512(_mm512_min_ps(f(a), f(b))); }
  LK_AVX512 static M feq(I a, I b) { return _mm512_cmp_ps_mask(f(a), f(b), _CMP_EQ_OQ); }
  LK_AVX512 static unsigned mask_bits(M m) { return (unsigned)m; }
  // lane i <- v[idx_i & 15]
  LK_AVX512 static I permute(I v, I idx) { return _mm512_permutexvar_epi32(idx, v); }
  // 16-entry table lookup: lane i <- table[idx_i & 15]
  LK_AVX512 static I lut16(const uint32_t* table, I idx) { return _mm512_permutexvar_epi32(idx, load(table)); }
  // lane i <- lane i ^ H
  template <int H>
  LK_AVX512 static I perm_xor(I a) {
    if (H == 1) return _mm512_shuffle_epi32(a, (_MM_PERM_ENUM)0xB1);
    if (H == 2) return _mm512_shuffle_epi32(a, (_MM_PERM_ENUM)0x4E);
    if (H == 4) return _mm512_shuffle_i32x4(a, a, 0xB1);
    return _mm512_shuffle_i32x4(a, a, 0x4E);
  }
  // mask of lanes whose index has bit H set
  template <int H>
  LK_AVX512 static M hi_lanes() {
    return (M)(H == 1 ? 0xAAAA : H == 2 ? 0xCCCC : H == 4 ? 0xF0F0 : 0xFF00);
  }
};

}  // namespace cpu
}  // namespace leankern
