// Byte codes of MX FP8 / FP6 elements (E4M3, E5M2, E2M3, E3M2) for a group of 16 blocks from bf16 x, 32
// elements per op (AVX512-VBMI).
//
// Why: the generic fast path (mx_simd_impl.h fast_code) widens bf16 to 16 fp32 lanes and rounds them with
// ~12 ops; MXFP8 quantize of bf16 ran at ~40% of the copy bandwidth on Zen 4. Here the bf16 pattern is the
// input: v = x * 2^-e is |x| with (e + K) << 7 subtracted (saturating), K = 127 + emin - mbits - 1 (the
// binade below the element's smallest subnormal), so a = (E_v - K) << 7 | m (7 mantissa bits m6..m0).
//  * v >= 2^emin (element normal; a >= (mbits + 1) << 7): the code is RNE of a - (mbits << 7) dropping
//    7 - mbits mantissa bits (the carry moves into the exponent as it should);
//  * below it (element subnormal, quantum 2^(emin - mbits)): the code depends on E_v - K (0..mbits; everything
//    smaller saturates to 0, code 0), the top mbits mantissa bits and whether a lower bit is set (every tie
//    there has the lower bits clear): a vpermb table of at most 64 entries built from formats.h's round_rne.
// Needs every block's e >= vbmi_bf16_lowest_e (kernels.h: bf16 subnormals then saturate to 0); the caller checks.
#include "mx/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include "common/bits.h"
#include "mx/formats.h"
#include "mx/quant_vbmi_common.h"

namespace leankern {
namespace mx {
namespace {

#define LK_FP8_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,f16c")))
#define LK_FP8 LK_FP8_TARGET inline

template <int EL>
struct Fmt {
  static constexpr ElemParams p = elem_params(EL);
  static constexpr int mbits = p.mbits;
  static constexpr int drop = 7 - mbits;              // bf16 mantissa bits below the element's
  static constexpr int K = 127 + p.emin - mbits - 1;  // a's exponent origin
  static constexpr int normal_from = (mbits + 1) << 7;
};

// Element magnitude code below 2^emin by idx = (E_v - K) << (mbits + 1) | top mbits bits << 1 | sticky.
template <int EL>
struct SubnormalTable {
  alignas(64) uint8_t v[64] = {};
  SubnormalTable() {
    using F = Fmt<EL>;
    for (uint32_t i = 0; i < (4u << (F::mbits + 1)) && i < 64; ++i) {
      const uint32_t ex = i >> (F::mbits + 1), top = (i >> 1) & ((1u << F::mbits) - 1);
      const uint32_t a = ((ex + F::K) << 23) | (top << (23 - F::mbits)) | (i & 1);
      v[i] = (uint8_t)round_rne(a, 0, F::p);
    }
  }
};
const SubnormalTable<kFp8E4M3> kE4M3;  // built at load time
const SubnormalTable<kFp8E5M2> kE5M2;
const SubnormalTable<kFp6E2M3> kE2M3;
const SubnormalTable<kFp6E3M2> kE3M2;

// 32 bf16 patterns w of one or two blocks (base: (e + K) << 7 per word) -> 32 codes, one per word.
template <int EL, bool SAT>
LK_FP8 __m512i codes32(__m512i w, __m512i base, __m512i table) {
  using F = Fmt<EL>;
  constexpr int16_t low = (1 << (F::drop - 1)) - 1;  // mantissa bits below the table's sticky bit
  const __m512i a = _mm512_subs_epu16(_mm512_and_si512(w, _mm512_set1_epi16(0x7FFF)), base);
  // normal: RNE dropping `drop` bits of a - (mbits << 7)
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi16(a, F::drop), _mm512_set1_epi16(1));
  __m512i normal = _mm512_srli_epi16(
      _mm512_add_epi16(_mm512_add_epi16(a, odd), _mm512_set1_epi16((int16_t)(low - (F::mbits << 7)))), F::drop);
  if (SAT) normal = _mm512_min_epu16(normal, _mm512_set1_epi16((int16_t)F::p.max_code));  // floor-mode blocks
  // subnormal: bit drop - 1 |= (lower bits != 0), then the table (words below normal_from index it with their
  // low byte; the others' lookups are discarded)
  const __m512i st = _mm512_add_epi16(_mm512_and_si512(a, _mm512_set1_epi16(low)), _mm512_set1_epi16(low));
  const __m512i idx = _mm512_srli_epi16(_mm512_or_si512(a, st), F::drop - 1);
  const __m512i sub = _mm512_permutexvar_epi8(idx, table);
  const __mmask32 is_normal = _mm512_cmpge_epu16_mask(a, _mm512_set1_epi16(F::normal_from));
  const __m512i code = _mm512_mask_blend_epi16(is_normal, sub, normal);
  const __m512i sign = _mm512_srli_epi16(w, 15 - F::p.sign_bit);
  return _mm512_ternarylogic_epi32(code, sign, _mm512_set1_epi16((int16_t)(1 << F::p.sign_bit)), 0xF8);
}

template <int EL, bool SAT, bool TWO>
LK_FP8 void group_codes(const VbmiGroup& g, __m512i table) {
  const int bs = g.block_size;
  const uint16_t* x = (const uint16_t*)g.x + g.b * bs;
  uint8_t* out = g.codes + g.b * bs;
  alignas(64) int16_t bw[16];
  vbmi::rebias_words(g, Fmt<EL>::K, bw);
  const int lg = __builtin_ctz((unsigned)bs);
  alignas(64) static const uint8_t kLowBytes[64] = {
      0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42,
      44, 46, 48, 50, 52, 54, 56, 58, 60, 62, 64, 66, 68, 70, 72, 74, 76, 78, 80, 82, 84, 86,
      88, 90, 92, 94, 96, 98, 100, 102, 104, 106, 108, 110, 112, 114, 116, 118, 120, 122, 124, 126};
  const __m512i low_bytes = _mm512_load_si512(kLowBytes);
  for (int64_t i = 0; i < 16 * (int64_t)bs; i += 64) {
    __m512i c[2];
    for (int h = 0; h < 2; ++h) {
      const int64_t k = i + 32 * h;
      c[h] = codes32<EL, SAT>(_mm512_loadu_si512(x + k), vbmi::rebias_vector<TWO>(bw, k, lg), table);
    }
    _mm512_storeu_si512(out + i, _mm512_permutex2var_epi8(c[0], low_bytes, c[1]));
  }
}

template <int EL>
LK_FP8 void groups(const VbmiSlot* slots, int n, const uint8_t* table_bytes) {
  const __m512i table = _mm512_load_si512(table_bytes);
  for (int i = 0; i < n; ++i) {
    const VbmiGroup& g = slots[i].group;
    const bool two = g.block_size == 16;
    if (g.saturate)
      two ? group_codes<EL, true, true>(g, table) : group_codes<EL, true, false>(g, table);
    else
      two ? group_codes<EL, false, true>(g, table) : group_codes<EL, false, false>(g, table);
    vbmi::zero_bad_blocks(g, g.block_size);
  }
}

}  // namespace

LK_FP8_TARGET void fp8_codes_vbmi(int elem, const VbmiSlot* slots, int n) {
  switch (elem) {
    case kFp8E4M3: return groups<kFp8E4M3>(slots, n, kE4M3.v);
    case kFp8E5M2: return groups<kFp8E5M2>(slots, n, kE5M2.v);
    case kFp6E2M3: return groups<kFp6E2M3>(slots, n, kE2M3.v);
    case kFp6E3M2: return groups<kFp6E3M2>(slots, n, kE3M2.v);
    default: return;
  }
}

}  // namespace mx
}  // namespace leankern

#else

namespace leankern {
namespace mx {
void fp8_codes_vbmi(int, const VbmiSlot*, int) {}
}  // namespace mx
}  // namespace leankern

#endif
