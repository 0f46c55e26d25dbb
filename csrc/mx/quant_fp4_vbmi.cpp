// E2M1 (MXFP4 / NVFP4) codes of a group of 16 blocks, 32 elements per op, one table lookup (AVX512-VBMI).
//
// Why: the generic fast path (mx_simd_impl.h fast_code) rounds 16 fp32 lanes with ~13 ops, which made FP4
// quantize compute-bound at ~0.8 cycles per element on Zen 4. Here each op covers 32 elements.
//
// An E2M1 code depends only on v's exponent E (biased 127) above 2^-3, the top two mantissa bits m6 m5
// (bf16 numbering) and whether any lower bit is set (the RNE ties 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5 all
// have m4..m0 = 0). So, with a = |v| as a bf16-layout pattern whose bit 4 holds "m4..m0 != 0",
//   idx = sign << 6 | (a - (124 << 7), saturating at 0) >> 4  =  s << 6 | (E - 124) << 3 | m6 m5 sticky
// indexes a 128-entry table of stored codes built from formats.h's round_rne and encode_code. E - 124 <= 5
// for every v < 8, which the block scale guarantees unless the caller says `sat` (then the index is clamped
// at cell 63, a saturating code); everything below 2^-3 lands in cell 0 (code 0, +-).
//
// Two ways to the 16-bit patterns:
//  * MX, bf16 x (route A): v = x * 2^-e is exact on the pattern: subtract (e + 124) << 7 from |x|,
//    saturating. Needs e >= -124 for every block (bf16 subnormals then stay in cell 0); the caller checks.
//  * else (route B: NV's x / d or x * r, MX fp32 / fp16 x, tiny MX bf16 blocks): v in fp32 exactly as the
//    reference computes it, bits 20..0 or'ed into bit 20 (round to odd, five bits below the last bit any
//    E2M1 rounding reads: no double rounding), then the high halves.
// Packing: a vpmaddwd by (1, 16) puts element 2l's code in the low nibble and 2l + 1's in the high one.
#include "mx/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include "common/bits.h"
#include "mx/formats.h"
#include "mx/quant_vbmi_common.h"

namespace leankern {
namespace mx {
namespace {

#define LK_FP4_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,f16c")))
#define LK_FP4 LK_FP4_TARGET inline

// Stored E2M1 code by idx (above), from the scalar rounding of one v inside each cell.
struct CodeTable {
  alignas(64) uint8_t v[128];
  CodeTable() {
    const ElemParams p = elem_params(kFp4E2M1);
    for (uint32_t i = 0; i < 64; ++i) {
      const uint32_t a = (((i >> 3) + 124) << 23) | (((i >> 1) & 3) << 21) | (i & 1);
      const int mag = round_rne(a, 0, p);
      v[i] = (uint8_t)encode_code(mag, 0, p);
      v[i + 64] = (uint8_t)encode_code(mag, 1, p);
    }
  }
};
const CodeTable kCodeTable;  // built at load time: no guard on the per-group call

struct Tables {
  __m512i lo, hi;
};

// 32 patterns w (bf16 layout, sign in bit 15) and a = |w| - base with bit 4 = m4..m0 sticky -> dwords whose
// low byte is the code byte of elements (2l, 2l + 1).
template <bool SAT>
LK_FP4 __m512i code_pairs(__m512i w, __m512i a, const Tables& t) {
  __m512i idx = _mm512_srli_epi16(a, 4);
  if (SAT) idx = _mm512_min_epu16(idx, _mm512_set1_epi16(63));
  idx = _mm512_ternarylogic_epi32(idx, _mm512_srli_epi16(w, 9), _mm512_set1_epi16(0x40), 0xF8);  // A | (B & C)
  const __m512i code = _mm512_permutex2var_epi8(t.lo, idx, t.hi);  // word: code in its low byte, 0 above
  return _mm512_madd_epi16(code, _mm512_set1_epi32(0x00100001));   // c(2l) + 16 c(2l + 1)
}

// The low bytes of two code_pairs results (64 elements) -> 32 code bytes at dst.
LK_FP4 void store_64(__m512i p0, __m512i p1, uint8_t* dst) {
  alignas(64) static const uint8_t kLowBytes[64] = {0,  4,  8,  12, 16, 20, 24, 28, 32, 36, 40,  44,  48,  52,  56,  60,
                                                    64, 68, 72, 76, 80, 84, 88, 92, 96, 100, 104, 108, 112, 116, 120, 124};
  const __m512i packed = _mm512_permutex2var_epi8(p0, _mm512_load_si512(kLowBytes), p1);
  _mm256_storeu_si256((__m256i*)dst, _mm512_castsi512_si256(packed));
}

// Route A: MX, bf16 x, every block's e >= -124. TWO: block_size 16 (a vector spans two blocks).
template <bool SAT, bool TWO>
LK_FP4 void codes_mx_bf16(const VbmiGroup& g, const Tables& t) {
  const int bs = g.block_size;
  const uint16_t* x = (const uint16_t*)g.x + g.b * bs;
  uint8_t* out = g.codes + g.b * bs / 2;
  alignas(64) int16_t bw[16];
  vbmi::rebias_words(g, 124, bw);  // v's pattern re-biased to 2^-3
  const __m512i lowbits = _mm512_set1_epi16(0xF);
  const __m512i keep = _mm512_set1_epi16(0x7FFF);
  const int lg = __builtin_ctz((unsigned)bs);  // block_size is a power of two
  auto pairs = [&](int64_t i) LK_FP4_TARGET {
    const __m512i base = vbmi::rebias_vector<TWO>(bw, i, lg);
    const __m512i w = _mm512_loadu_si512(x + i);
    // bit 4 |= (bits 3..0 != 0), sign dropped: (w | ((w & 15) + 15)) & 0x7fff (bits 3..0 are don't-cares)
    const __m512i st = _mm512_add_epi16(_mm512_and_si512(w, lowbits), lowbits);
    const __m512i a = _mm512_subs_epu16(_mm512_ternarylogic_epi32(w, st, keep, 0xA8), base);  // C & (A | B)
    return code_pairs<SAT>(w, a, t);
  };
  for (int64_t i = 0; i < 16 * (int64_t)bs; i += 64) store_64(pairs(i), pairs(i + 32), out + i / 2);
}

// v = x * f or x / f in fp32, bits 20..0 folded into bit 20.
template <bool DIV>
LK_FP4 __m512i scaled_sticky(__m512 x, __m512 f) {
  const __m512i v = _mm512_castps_si512(DIV ? _mm512_div_ps(x, f) : _mm512_mul_ps(x, f));
  const __mmask16 k = _mm512_test_epi32_mask(v, _mm512_set1_epi32(0x1FFFFF));
  return _mm512_mask_or_epi32(v, k, v, _mm512_set1_epi32(0x100000));
}

// Route B: v in fp32.
template <int DT, bool DIV, bool SAT>
LK_FP4 void codes_f32(const VbmiGroup& g, const Tables& t) {
  const int bs = g.block_size;
  const int64_t e0 = g.b * bs;
  uint8_t* out = g.codes + e0 / 2;
  const __m512i base = _mm512_set1_epi16(124 << 7);
  const __m512i keep = _mm512_set1_epi16(0x7FFF);
  const __m512i hi_words = _mm512_set1_epi32((int32_t)0xFFFF0000u);
  alignas(64) static const uint16_t kOddWords[32] = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31,
                                                     33, 35, 37, 39, 41, 43, 45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
  const __m512i odd_words = _mm512_load_si512(kOddWords);
  alignas(64) static const uint16_t kHiPairs[32] = {1,  33, 3,  35, 5,  37, 7,  39, 9,  41, 11, 43, 13, 45, 15, 47,
                                                    17, 49, 19, 51, 21, 53, 23, 55, 25, 57, 27, 59, 29, 61, 31, 63};
  const __m512i hi_pairs = _mm512_load_si512(kHiPairs);
  const int lg = __builtin_ctz((unsigned)bs);
  auto pairs = [&](int64_t i) LK_FP4_TARGET {
    const int j0 = (int)(i >> lg), j1 = (int)((i + 16) >> lg);
    const __m512 f0 = _mm512_set1_ps(u2f((uint32_t)g.factor[j0])), f1 = _mm512_set1_ps(u2f((uint32_t)g.factor[j1]));
    __m512i w;
    if constexpr (DT == kInBF16) {  // lanes hold elements (2l, 2l + 1): lanes 0..7 block j0, 8..15 block j1
      const __m512i raw = _mm512_loadu_si512((const uint16_t*)g.x + e0 + i);
      const __m512 f = _mm512_mask_blend_ps(0xFF00, f0, f1);
      const __m512i ve = scaled_sticky<DIV>(_mm512_castsi512_ps(_mm512_slli_epi32(raw, 16)), f);
      const __m512i vo = scaled_sticky<DIV>(_mm512_castsi512_ps(_mm512_and_si512(raw, hi_words)), f);
      w = _mm512_permutex2var_epi16(ve, hi_pairs, vo);  // high halves: word 2l from ve, 2l + 1 from vo
    } else {
      __m512 x0, x1;
      if constexpr (DT == kInF32) {
        x0 = _mm512_loadu_ps((const float*)g.x + e0 + i);
        x1 = _mm512_loadu_ps((const float*)g.x + e0 + i + 16);
      } else {
        x0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)((const uint16_t*)g.x + e0 + i)));
        x1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)((const uint16_t*)g.x + e0 + i + 16)));
      }
      w = _mm512_permutex2var_epi16(scaled_sticky<DIV>(x0, f0), odd_words, scaled_sticky<DIV>(x1, f1));
    }
    return code_pairs<SAT>(w, _mm512_subs_epu16(_mm512_and_si512(w, keep), base), t);
  };
  for (int64_t i = 0; i < 16 * (int64_t)bs; i += 64) store_64(pairs(i), pairs(i + 32), out + i / 2);
}

template <bool SAT>
LK_FP4 void codes_any(const VbmiGroup& g, const Tables& t) {
  if (g.mx_e) return g.block_size == 16 ? codes_mx_bf16<SAT, true>(g, t) : codes_mx_bf16<SAT, false>(g, t);
  if (g.dtype == kInBF16)
    return g.divide ? codes_f32<kInBF16, true, SAT>(g, t) : codes_f32<kInBF16, false, SAT>(g, t);
  if (g.dtype == kInF32) return g.divide ? codes_f32<kInF32, true, SAT>(g, t) : codes_f32<kInF32, false, SAT>(g, t);
  return g.divide ? codes_f32<kInF16, true, SAT>(g, t) : codes_f32<kInF16, false, SAT>(g, t);
}

}  // namespace

LK_FP4_TARGET void fp4_codes_vbmi(const VbmiSlot* slots, int n) {
  const Tables t{_mm512_load_si512(kCodeTable.v), _mm512_load_si512(kCodeTable.v + 64)};
  for (int i = 0; i < n; ++i) {
    const VbmiGroup& g = slots[i].group;
    if (g.saturate)
      codes_any<true>(g, t);
    else
      codes_any<false>(g, t);
    vbmi::zero_bad_blocks(g, g.block_size / 2);
  }
}

}  // namespace mx
}  // namespace leankern

#else

namespace leankern {
namespace mx {
void fp4_codes_vbmi(const VbmiSlot*, int) {}
}  // namespace mx
}  // namespace leankern

#endif
