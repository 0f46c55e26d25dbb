// avx512bf16 table of the moe CPU kernels: the avx512 GEMV loops plus gemv_rows_bf16, the gate/up GEMV of bf16
// hidden states times bf16 weights with AVX512-BF16 dot products (kernels.h). Nothing here runs unless
// common/cpu_features.cpp found AVX512-BF16 and the active ISA is avx512bf16.
//
// Why: the fp32 loops widen every bf16 weight and spend one FMA per 16 products; vdpbf16ps multiplies the bf16
// pairs as they are loaded, 32 products per instruction, each exact in fp32, with fp32 sums
// (common/bf16_dot_avx512.h rows_dot). It treats bf16 subnormal inputs as zero, the one difference to the fp32
// loops (docs/moe.md).
#if defined(__x86_64__) || defined(_M_X64)

#include <algorithm>
#include <cstdint>

#include "common/bf16_dot_avx512.h"
#include "moe/kernels.h"

namespace leankern {
namespace moe {
namespace avx512bf16 {

constexpr int kNR = 4;  // weight rows per register tile (x 4 tokens: 16 accumulators)

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))) void gemv_rows_bf16(const uint16_t* w, int64_t ld, int64_t r0, int64_t r1, int64_t C, const uint16_t* const* xs,
                    int64_t n, float* const* outs) {
  for (int64_t r = r0; r < r1; r += kNR) {
    const int nr = (int)std::min<int64_t>(kNR, r1 - r);
    const uint16_t* rows[kNR];
    const uint16_t* next[kNR];
    for (int i = 0; i < kNR; ++i) {
      rows[i] = w + (r + std::min(i, nr - 1)) * ld;  // a short tail repeats its last row (stored once)
      next[i] = w + (r + kNR + i) * ld;
    }
    const bool pf = r + 2 * kNR <= r1;  // the next tile lies in this block
    cpu::bf16dot::rows_dot_n<kNR, 4>(rows, xs, n, C, pf ? next : nullptr, [&](int i, int64_t t, float v) {
      if (i < nr) outs[t][r + i] = v;
    });
  }
}

// epilogue_avx512bf16.cpp
void act_split_bf16(const float* gu, int64_t n, int64_t I, const ActParams& ac, const float* bias, uint16_t* hi,
                    uint16_t* lo);
void combine_split(const float* hi, const float* lo, int64_t H, const float* b2, const int64_t* tok, const float* w,
                   int64_t t0, int64_t t1, float* acc);

}  // namespace avx512bf16

const MoeKernels& avx512bf16_kernels() {
  static const MoeKernels table = [] {
    MoeKernels t = avx512_kernels();
    t.gemv_rows_bf16 = &avx512bf16::gemv_rows_bf16;
    t.act_split_bf16 = &avx512bf16::act_split_bf16;
    t.combine_split = &avx512bf16::combine_split;
    return t;
  }();
  return table;
}

}  // namespace moe
}  // namespace leankern

#endif
