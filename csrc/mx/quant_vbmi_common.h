// Pieces both VBMI quantize code kernels use (quant_fp4_vbmi.cpp, quant_fp8_vbmi.cpp): the per-block re-bias
// words of the bf16 route and the NaN / Inf policy. Included only by those two AVX512-VBMI translation units.
#pragma once

#include <immintrin.h>
#include <string.h>

#include "mx/kernels.h"

namespace leankern {
namespace mx {
namespace vbmi {

#define LK_QVBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,f16c"))) inline

// bf16 route: (e + K) << 7 per block. |x|'s pattern minus it (saturating) is v = x * 2^-e re-biased so
// that its exponent field counts binades from 2^(K - 127).
inline void rebias_words(const VbmiGroup& g, int K, int16_t* bw) {
  for (int j = 0; j < 16; ++j) bw[j] = (int16_t)((g.mx_e[j] + K) << 7);
}

// The re-bias of the 32 elements starting at element k of the group (lg = log2 block_size). TWO: block_size 16,
// words 16..31 belong to the next block.
template <bool TWO>
LK_QVBMI __m512i rebias_vector(const int16_t* bw, int64_t k, int lg) {
  if (!TWO) return _mm512_set1_epi16(bw[k >> lg]);
  return _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16(bw[k >> lg]), _mm512_set1_epi16(bw[(k + 16) >> lg]));
}

// NaN / Inf policy (formats.h): every code of a block holding NaN or Inf is 0.
inline void zero_bad_blocks(const VbmiGroup& g, int64_t bytes_per_block) {
  for (unsigned bad = g.bad_blocks; bad; bad &= bad - 1)
    memset(g.codes + (g.b + __builtin_ctz(bad)) * bytes_per_block, 0, (size_t)bytes_per_block);
}

}  // namespace vbmi
}  // namespace mx
}  // namespace leankern
