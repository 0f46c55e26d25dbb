// avx512bf16 table of the vocab CPU kernels: the avx512 loops plus dots_bf16, the gathered LM-head rows of a bf16
// head times bf16 hidden rows with AVX512-BF16 dot products (kernels.h). Nothing here runs unless
// common/cpu_features.cpp found AVX512-BF16 and the active ISA is avx512bf16.
//
// Why: the fp32 dots widen every bf16 weight and spend one FMA per 16 products, which makes B = 16 compute-bound on
// two cores; vdpbf16ps multiplies the pairs as loaded, 32 exact products per instruction with fp32 sums
// (common/bf16_dot_avx512.h rows_dot). It treats bf16 subnormal inputs as zero (docs/vocab.md).
#if defined(__x86_64__) || defined(_M_X64)

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/bf16_dot_avx512.h"
#include "vocab/kernels.h"

namespace leankern {
namespace vocab {
namespace avx512bf16 {

constexpr int kNR = 4;  // weight rows per register tile (x 4 hidden rows: 16 accumulators)

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))) void dots_bf16(
    const uint16_t* h, int64_t ldh, int64_t B, int64_t H, const uint16_t* weight, int64_t rs, const int64_t* rows,
    int64_t n, float* out, int64_t ldo) {
  const uint16_t* xs[4];
  for (int64_t j = 0; j < n; j += kNR) {
    const int nr = (int)std::min<int64_t>(kNR, n - j);
    const uint16_t* w[kNR];
    const uint16_t* next[kNR];
    for (int i = 0; i < kNR; ++i) {
      w[i] = weight + rows[j + std::min(i, nr - 1)] * rs;  // a short tail repeats its last row (stored once)
      next[i] = weight + rows[std::min(j + kNR + i, n - 1)] * rs;
    }
    // the tile's rows stay in L1 while every group of 4 hidden rows passes over them
    for (int64_t b = 0; b < B; b += 4) {
      const int64_t nb = std::min<int64_t>(4, B - b);
      for (int64_t t = 0; t < nb; ++t) xs[t] = h + (b + t) * ldh;
      cpu::bf16dot::rows_dot_n<kNR, 4>(w, xs, nb, H, b == 0 && j + kNR < n ? next : nullptr,
                                       [&](int i, int64_t t, float v) {
                                         if (i < nr) out[(b + t) * ldo + j + i] = v;
                                       });
    }
  }
}

}  // namespace avx512bf16

const VocabKernels& avx512bf16_kernels() {
  static const VocabKernels table = [] {
    VocabKernels t = avx512_kernels();
    t.dots_bf16 = &avx512bf16::dots_bf16;
    return t;
  }();
  return table;
}

}  // namespace vocab
}  // namespace leankern

#endif
