// avx512bf16 table of the SEFP CPU kernels: the avx512 table plus decode_bf16 (here) and gemv_bf16
// (gemv_bf16_gfni.cpp, only where the CPU also has GFNI and AVX512-VBMI). Nothing here runs unless
// common/cpu_features.cpp found AVX512-BF16 and the active ISA is avx512bf16.
//
// decode_bf16 (the panels of sefp_linear from 32 x rows) reads the bit planes into AVX-512 mask registers: one
// plane word is the mask of one row's 32 weights, one 16-bit lane each (bit j = lane j = weight j, natural order).
// Per word:
//   index: q = sum over the index planes of masked adds of 2^bit (kmovd from memory + vpaddw{k});
//   value: vpermw / vpermi2w of q into a table of bf16(0..255) (every integer below 2^8 is exact in bf16);
//          m = 7, 8 look up the low 6 bits in 2 / 4 tables and blend on the top planes' masks;
//   scale: + (E - (m - 1)) in the exponent field of the nonzero values (exact while they stay bf16 normals,
//          which the caller checks);
//   sign:  vpaddw{k} of 0x8000 with the sign plane as the mask (bit 15 of a magnitude pattern is clear).
// Each plane costs a dependent masked add per word (measured ~2.5 cycles per plane on Zen 4), so the GEMV, which
// decodes every weight once per call, uses the byte-shuffle decode of gemv_bf16_gfni.cpp instead; here the
// decode is amortized over >= 32 rows of x.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "sefp/kernels.h"

namespace leankern {
namespace sefp {
namespace avx512bf16 {

#define LK_B __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))) inline

// bf16 bit patterns of the integers 0..255 (exact), in 8 registers' worth.
struct IntTable {
  alignas(64) uint16_t v[256];
  constexpr IntTable() : v() {
    for (int q = 0; q < 256; ++q) v[q] = bf16_of_int(q);
  }
};
constexpr IntTable kInts;

LK_B __mmask32 plane_mask(const uint32_t* p) { return _cvtu32_mask32(*p); }  // kmovd k, m32

// Decodes one word (32 weights) of a row at width M (1..8) into 32 bf16 values +-q (unscaled).
template <int M>
struct WordDecoder {
  static constexpr int kFirst = M <= 6 ? 1 : M - 5;  // first index plane: the low 6 bits from m = 7 on
  static constexpr int kTables = M <= 5 ? 1 : M == 6 ? 2 : M == 7 ? 4 : 8;
  __m512i bit[M + 1];  // bit[p]: 2^(M - p), the weight of plane p in the index
  __m512i table[kTables];
  __m512i sign;

  LK_B WordDecoder() {
    for (int p = kFirst; p <= M; ++p) bit[p] = _mm512_set1_epi16(static_cast<short>(1 << (M - p)));
    for (int t = 0; t < kTables; ++t) table[t] = _mm512_load_si512(kInts.v + 32 * t);
    sign = _mm512_set1_epi16(static_cast<short>(0x8000));
  }

  // w: the word in plane 0 (sign); plane p at w + p * ps.
  LK_B __m512i word(const uint32_t* w, int64_t ps) const {
    __m512i q = _mm512_maskz_mov_epi16(plane_mask(w + kFirst * ps), bit[kFirst]);
    for (int p = kFirst + 1; p <= M; ++p) q = _mm512_mask_add_epi16(q, plane_mask(w + p * ps), q, bit[p]);
    __m512i v;
    if constexpr (M <= 5) {
      v = _mm512_permutexvar_epi16(q, table[0]);
    } else if constexpr (M == 6) {
      v = _mm512_permutex2var_epi16(table[0], q, table[1]);
    } else if constexpr (M == 7) {  // plane 1 = bit 6
      const __m512i lo = _mm512_permutex2var_epi16(table[0], q, table[1]);
      const __m512i hi = _mm512_permutex2var_epi16(table[2], q, table[3]);
      v = _mm512_mask_blend_epi16(plane_mask(w + ps), lo, hi);
    } else {  // plane 1 = bit 7, plane 2 = bit 6
      const __mmask32 b6 = plane_mask(w + 2 * ps);
      const __m512i r0 = _mm512_permutex2var_epi16(table[0], q, table[1]);
      const __m512i r1 = _mm512_permutex2var_epi16(table[2], q, table[3]);
      const __m512i r2 = _mm512_permutex2var_epi16(table[4], q, table[5]);
      const __m512i r3 = _mm512_permutex2var_epi16(table[6], q, table[7]);
      v = _mm512_mask_blend_epi16(plane_mask(w + ps), _mm512_mask_blend_epi16(b6, r0, r1),
                                  _mm512_mask_blend_epi16(b6, r2, r3));
    }
    return _mm512_mask_add_epi16(v, plane_mask(w), v, sign);
  }
};

// Rows [n0, n1) as bf16 with the block scale in the exponent: +-q 2^s (s = E - (m - 1)) for q != 0.
template <int M>
LK_B void decode_width(const Planes& P, int64_t n0, int64_t n1, uint16_t* out, int64_t ldo) {
  const WordDecoder<M> dec;
  const int64_t G = int64_t(1) << P.gs, ps = P.plane_stride;
  const __m512i magnitude = _mm512_set1_epi16(0x7fff);
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t* row = P.data + n * P.Kw;
    const int8_t* ex = P.exps + n * P.nb;
    uint16_t* o = out + (n - n0) * ldo;
    for (int64_t b = 0; b < P.nb; ++b) {
      const int s = ex[b] == -128 ? 0 : ex[b] - (M - 1);  // an empty block has no nonzero q
      const __m512i shift = _mm512_set1_epi16(static_cast<short>(s * 128));  // exponent field: bits 7..14
      for (int64_t w = b * G; w < (b + 1) * G; ++w) {
        __m512i v = dec.word(row + w, ps);
        v = _mm512_mask_add_epi16(v, _mm512_test_epi16_mask(v, magnitude), v, shift);
        _mm512_storeu_si512(o + w * kWord, v);
      }
    }
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))) void decode_bf16(
    const Planes& P, int64_t n0, int64_t n1, uint16_t* out, int64_t ldo) {
  with_width8(P.m, [&](auto w) { decode_width<decltype(w)::value>(P, n0, n1, out, ldo); });
}

#undef LK_B

void gemv_bf16_gfni(const Planes& P, const uint16_t* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                    int64_t ldy);  // gemv_bf16_gfni.cpp

}  // namespace avx512bf16

const SefpKernels& avx512bf16_kernels() {
  static const SefpKernels table = [] {
    SefpKernels t = avx512_kernels();
    __builtin_cpu_init();
    if (__builtin_cpu_supports("gfni") && __builtin_cpu_supports("avx512vbmi")) t.gemv_bf16 = &avx512bf16::gemv_bf16_gfni;
    t.decode_bf16 = &avx512bf16::decode_bf16;
    return t;
  }();
  return table;
}

}  // namespace sefp
}  // namespace leankern

#endif
