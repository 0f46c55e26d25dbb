// AVX2 (+F16C) vector wrapper for the width-generic kernels (e.g. mx/mx_simd_impl.h): 8 lanes of
// 32-bit integers, masks as all-ones lanes. Same interface as V512 (simd_avx512.h).
#pragma once

#include <immintrin.h>
#include <stdint.h>

#define LK_AVX2 __attribute__((target("avx2,f16c"), always_inline)) inline

namespace leankern {
namespace cpu {

struct V256 {
  static constexpr int N = 8;
  using I = __m256i;
  using M = __m256i;

  LK_AVX2 static I zero() { return _mm256_setzero_si256(); }
  LK_AVX2 static I set1(int32_t v) { return _mm256_set1_epi32(v); }
  LK_AVX2 static I fset1(float v) { return _mm256_castps_si256(_mm256_set1_ps(v)); }
  // memory
  LK_AVX2 static I load(const void* p) { return _mm256_loadu_si256((const __m256i*)p); }
  LK_AVX2 static void store(void* p, I v) { _mm256_storeu_si256((__m256i*)p, v); }
  LK_AVX2 static I load_bf16(const void* p) {
    return _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16);
  }
  LK_AVX2 static I load_f16(const void* p) {
    return _mm256_castps_si256(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)));
  }
  // 8 lanes holding values in [0, 65535] -> 8 uint16
  LK_AVX2 static __m128i pack_u16(I v) {
    I t = _mm256_packus_epi32(v, v);  // per 128-bit half: a0..a3 a0..a3 | a4..a7 a4..a7
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(t, 0x08));
  }
  LK_AVX2 static void store_bf16(void* p, I b) {  // RNE, NaN -> 0xFFFF (torch's .to())
    I nan = _mm256_cmpgt_epi32(_mm256_and_si256(b, set1(0x7fffffff)), set1(0x7f800000));
    I odd = _mm256_and_si256(_mm256_srli_epi32(b, 16), set1(1));
    I r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, set1(0x7fff)), odd), 16);
    r = _mm256_blendv_epi8(r, set1(0xffff), nan);
    _mm_storeu_si128((__m128i*)p, pack_u16(r));
  }
  LK_AVX2 static void store_f16(void* p, I b) {
    _mm_storeu_si128((__m128i*)p,
                     _mm256_cvtps_ph(_mm256_castsi256_ps(b), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  LK_AVX2 static I load_u8(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
  LK_AVX2 static I load_i8(const uint8_t* p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
  LK_AVX2 static I load_nibbles(const uint8_t* p) {
    int32_t w;
    __builtin_memcpy(&w, p, 4);
    I q = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(w));
    q = _mm256_or_si256(q, _mm256_slli_epi64(_mm256_srli_epi64(q, 4), 32));
    return _mm256_and_si256(q, set1(0xF));
  }
  // low byte of each lane (lanes hold values in [0, 255]) -> 8 bytes
  LK_AVX2 static void store_u8(uint8_t* p, I v) {
    __m128i w = pack_u16(v);
    _mm_storel_epi64((__m128i*)p, _mm_packus_epi16(w, w));
  }
  LK_AVX2 static void store_nibbles(uint8_t* p, I v) {
    I t = _mm256_or_si256(v, _mm256_srli_epi64(v, 28));  // byte in the low 32 bits of each qword
    const I pick = _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                    0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    t = _mm256_shuffle_epi8(t, pick);  // bytes 0,1 of each 128-bit half
    uint32_t lo = (uint32_t)_mm256_extract_epi16(t, 0), hi = (uint32_t)_mm256_extract_epi16(t, 8);
    uint32_t w = (lo & 0xffff) | (hi << 16);
    __builtin_memcpy(p, &w, 4);
  }
  // x0 = elements [0, N), x1 = [N, 2N) -> even / odd elements of the 2N
  LK_AVX2 static void deinterleave(I x0, I x1, I& even, I& odd) {
    const __m256 a = _mm256_castsi256_ps(x0), b = _mm256_castsi256_ps(x1);
    even = _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(a, b, 0x88)), 0xD8);
    odd = _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8);
  }
  LK_AVX2 static M upper_half() { return _mm256_setr_epi32(0, 0, 0, 0, -1, -1, -1, -1); }
  // integer arithmetic / logic
  LK_AVX2 static I add(I a, I b) { return _mm256_add_epi32(a, b); }
  LK_AVX2 static I sub(I a, I b) { return _mm256_sub_epi32(a, b); }
  LK_AVX2 static I and_(I a, I b) { return _mm256_and_si256(a, b); }
  LK_AVX2 static I or_(I a, I b) { return _mm256_or_si256(a, b); }
  LK_AVX2 static I xor_(I a, I b) { return _mm256_xor_si256(a, b); }
  template <int S>
  LK_AVX2 static I srli(I a) { return _mm256_srli_epi32(a, S); }
  template <int S>
  LK_AVX2 static I slli(I a) { return _mm256_slli_epi32(a, S); }
  template <int S>
  LK_AVX2 static I srai(I a) { return _mm256_srai_epi32(a, S); }
  LK_AVX2 static I srlv(I a, I s) { return _mm256_srlv_epi32(a, s); }  // counts >= 32 give 0
  LK_AVX2 static I sllv(I a, I s) { return _mm256_sllv_epi32(a, s); }
  LK_AVX2 static I min_i(I a, I b) { return _mm256_min_epi32(a, b); }
  LK_AVX2 static I max_i(I a, I b) { return _mm256_max_epi32(a, b); }
  LK_AVX2 static I max_u(I a, I b) { return _mm256_max_epu32(a, b); }
  LK_AVX2 static I max_u16(I a, I b) { return _mm256_max_epu16(a, b); }
  LK_AVX2 static I f16_lanes_to_f32(I a) { return _mm256_castps_si256(_mm256_cvtph_ps(pack_u16(a))); }
  // masks: blend(m, a, b) = m ? b : a
  LK_AVX2 static M eq(I a, I b) { return _mm256_cmpeq_epi32(a, b); }
  LK_AVX2 static M gt_i(I a, I b) { return _mm256_cmpgt_epi32(a, b); }
  LK_AVX2 static M gt_u(I a, I b) {
    const I bias = set1((int32_t)0x80000000u);
    return _mm256_cmpgt_epi32(_mm256_xor_si256(a, bias), _mm256_xor_si256(b, bias));
  }
  LK_AVX2 static I blend(M m, I a, I b) { return _mm256_blendv_epi8(a, b, m); }
  LK_AVX2 static I inc_if_any(I t, I a, I bit) {  // bit: a single set bit
    return _mm256_sub_epi32(t, _mm256_cmpeq_epi32(_mm256_and_si256(a, bit), bit));
  }
  LK_AVX2 static M mand(M a, M b) { return _mm256_and_si256(a, b); }
  LK_AVX2 static M or_mask(M a, M b) { return _mm256_or_si256(a, b); }
  LK_AVX2 static M mandnot(M a, M b) { return _mm256_andnot_si256(a, b); }
  LK_AVX2 static bool any(M m) { return !_mm256_testz_si256(m, m); }
  LK_AVX2 static int32_t lane0(I a) { return _mm_cvtsi128_si32(_mm256_castsi256_si128(a)); }
  // fp32 on bit patterns
  LK_AVX2 static __m256 f(I a) { return _mm256_castsi256_ps(a); }
  LK_AVX2 static I cvt_i2f(I a) { return _mm256_castps_si256(_mm256_cvtepi32_ps(a)); }
  LK_AVX2 static I fadd(I a, I b) { return _mm256_castps_si256(_mm256_add_ps(f(a), f(b))); }
  LK_AVX2 static I fsub(I a, I b) { return _mm256_castps_si256(_mm256_sub_ps(f(a), f(b))); }
  LK_AVX2 static I fmul(I a, I b) { return _mm256_castps_si256(_mm256_mul_ps(f(a), f(b))); }
  LK_AVX2 static I fdiv(I a, I b) { return _mm256_castps_si256(_mm256_div_ps(f(a), f(b))); }
  LK_AVX2 static I mask_fsub(I src, M m, I a, I b) { return blend(m, src, fsub(a, b)); }
  LK_AVX2 static I fmin(I a, I b) { return _mm256_castps_si256(_mm256_min_ps(f(a), f(b))); }
  LK_AVX2 static M feq(I a, I b) { return _mm256_castps_si256(_mm256_cmp_ps(f(a), f(b), _CMP_EQ_OQ)); }
  LK_AVX2 static unsigned mask_bits(M m) { return (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(m)); }
  // lane i <- v[idx_i & 7]
  LK_AVX2 static I permute(I v, I idx) { return _mm256_permutevar8x32_epi32(v, idx); }
  // 16-entry table lookup: lane i <- table[idx_i & 15] (two 8-entry permutes, bit 3 selects)
  LK_AVX2 static I lut16(const uint32_t* table, I idx) {
    I lo = _mm256_permutevar8x32_epi32(load(table), idx), hi = _mm256_permutevar8x32_epi32(load(table + 8), idx);
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi),
                                                _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28))));  // bit 3
  }
  template <int H>
  LK_AVX2 static I perm_xor(I a) {
    if (H == 1) return _mm256_shuffle_epi32(a, 0xB1);
    if (H == 2) return _mm256_shuffle_epi32(a, 0x4E);
    return _mm256_permute2x128_si256(a, a, 0x01);
  }
  template <int H>
  LK_AVX2 static M hi_lanes() {
    return _mm256_cmpgt_epi32(_mm256_and_si256(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), set1(H)), zero());
  }
};

}  // namespace cpu
}  // namespace leankern
