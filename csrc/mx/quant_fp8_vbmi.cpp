// E4M3 codes (MXFP8 E4M3) of a group of 16 blocks from bf16 x, 32 elements per op (AVX512-VBMI).
//
// Why: the generic fast path (mx_simd_impl.h fast_code) widens bf16 to 16 fp32 lanes and rounds them with
// ~12 ops; MXFP8 quantize of bf16 ran at ~40% of the copy bandwidth on Zen 4. Here the bf16 pattern is the
// input: v = x * 2^-e is |x| with (e + 117) << 7 subtracted (saturating), so a = (E_v - 117) << 7 | m.
//  * v >= 2^-6 (E4M3 normal; a >= 4 << 7): the code is RNE of a - (3 << 7) dropping four mantissa bits,
//    (a' + 7 + bit 4) >> 4 (the carry moves into the exponent as it should);
//  * v < 2^-6 (E4M3 subnormal, quantum 2^-9): the code depends on E_v - 117 (0..3; everything smaller
//    saturates to 0, code 0), m6 m5 m4 and whether m3..m0 has a set bit (all E4M3 ties below 2^-6 have
//    m3..m0 = 0), a 64-entry vpermb table built from formats.h's round_rne.
// Needs every block's e >= -116 (bf16 subnormals then land below 2^-10, code 0); the caller checks.
#include "mx/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>
#include <string.h>

#include "common/bits.h"
#include "mx/formats.h"

namespace leankern {
namespace mx {
namespace {

#define LK_FP8_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2")))
#define LK_FP8 LK_FP8_TARGET inline

// E4M3 magnitude code below 2^-6 by idx = (E_v - 117) << 4 | m6 m5 m4 << 1 | sticky(m3..m0).
struct SubnormalTable {
  alignas(64) uint8_t v[64];
  SubnormalTable() {
    const ElemParams p = elem_params(kFp8E4M3);
    for (uint32_t i = 0; i < 64; ++i) {
      const uint32_t a = (((i >> 4) + 117) << 23) | (((i >> 1) & 7) << 20) | (i & 1);
      v[i] = (uint8_t)round_rne(a, 0, p);
    }
  }
};
const SubnormalTable kSubnormal;  // built at load time

// 32 bf16 patterns w of one or two blocks (base: (e + 117) << 7 per word) -> 32 codes, one per word.
template <bool SAT>
LK_FP8 __m512i codes32(__m512i w, __m512i base, __m512i table) {
  const __m512i a = _mm512_subs_epu16(_mm512_and_si512(w, _mm512_set1_epi16(0x7FFF)), base);
  // normal: RNE dropping 4 bits of a - (3 << 7)
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi16(a, 4), _mm512_set1_epi16(1));
  __m512i normal = _mm512_srli_epi16(_mm512_add_epi16(_mm512_add_epi16(a, odd), _mm512_set1_epi16(7 - (3 << 7))), 4);
  if (SAT) normal = _mm512_min_epu16(normal, _mm512_set1_epi16(0x7E));  // 448: floor-mode blocks reach 512
  // subnormal: bit 3 |= (bits 2..0 != 0), then the table (words below 4 << 7 index it with their low byte)
  const __m512i st = _mm512_add_epi16(_mm512_and_si512(a, _mm512_set1_epi16(7)), _mm512_set1_epi16(7));
  const __m512i idx = _mm512_srli_epi16(_mm512_or_si512(a, st), 3);
  const __m512i sub = _mm512_permutexvar_epi8(idx, table);
  const __mmask32 is_normal = _mm512_cmpge_epu16_mask(a, _mm512_set1_epi16(4 << 7));
  const __m512i code = _mm512_mask_blend_epi16(is_normal, sub, normal);
  return _mm512_ternarylogic_epi32(code, _mm512_srli_epi16(w, 8), _mm512_set1_epi16(0x80), 0xF8);  // | sign
}

template <bool SAT, bool TWO>
LK_FP8 void group_codes(const VbmiGroup& g, __m512i table) {
  const int bs = g.block_size;
  const uint16_t* x = (const uint16_t*)g.x + g.b * bs;
  uint8_t* out = g.codes + g.b * bs;
  alignas(64) int16_t bw[16];
  for (int j = 0; j < 16; ++j) bw[j] = (int16_t)((g.mx_e[j] + 117) << 7);
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
      const __m512i base = TWO ? _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16(bw[k >> lg]),
                                                         _mm512_set1_epi16(bw[(k + 16) >> lg]))
                               : _mm512_set1_epi16(bw[k >> lg]);
      c[h] = codes32<SAT>(_mm512_loadu_si512(x + k), base, table);
    }
    _mm512_storeu_si512(out + i, _mm512_permutex2var_epi8(c[0], low_bytes, c[1]));
  }
}

}  // namespace

bool fp8_codes_vbmi_takes(int dtype, int block_size) {
  return dtype == kInBF16 && block_size >= 16 && cpu_has_vbmi() && quantize_vbmi_enabled();
}

LK_FP8_TARGET void fp8_codes_vbmi(const VbmiSlot* slots, int n) {
  const __m512i table = _mm512_load_si512(kSubnormal.v);
  for (int i = 0; i < n; ++i) {
    const VbmiGroup& g = slots[i].group;
    const bool two = g.block_size == 16;
    if (g.saturate)
      two ? group_codes<true, true>(g, table) : group_codes<true, false>(g, table);
    else
      two ? group_codes<false, true>(g, table) : group_codes<false, false>(g, table);
    for (unsigned bad = g.bad_blocks; bad; bad &= bad - 1)  // NaN / Inf policy: zero codes
      memset(g.codes + (g.b + __builtin_ctz(bad)) * g.block_size, 0, (size_t)g.block_size);
  }
}

}  // namespace mx
}  // namespace leankern

#else

namespace leankern {
namespace mx {
bool fp8_codes_vbmi_takes(int, int) { return false; }
void fp8_codes_vbmi(const VbmiSlot*, int) {}
}  // namespace mx
}  // namespace leankern

#endif
