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
#include <vector>

#include "common/amx.h"
#include "common/bf16_dot_avx512.h"
#include "common/transpose_avx512.h"
#include "vocab/kernels.h"

namespace leankern {
namespace vocab {
namespace avx512bf16 {

constexpr int kNR = 4;  // weight rows per register tile (x 4 hidden rows: 16 accumulators)

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))) void dots_bf16(
    const uint16_t* h, int64_t ldh, int64_t B, int64_t H, const uint16_t* weight, int64_t rs, const int64_t* rows,
    int64_t n, float* out, int64_t ldo) {
  std::vector<const uint16_t*> xs(B);
  for (int64_t b = 0; b < B; ++b) xs[b] = h + b * ldh;
  for (int64_t j = 0; j < n; j += kNR) {
    const int nr = (int)std::min<int64_t>(kNR, n - j);
    const uint16_t* w[kNR];
    const uint16_t* next[kNR];
    for (int i = 0; i < kNR; ++i) {
      w[i] = weight + rows[j + std::min(i, nr - 1)] * rs;  // a short tail repeats its last row (stored once)
      next[i] = weight + rows[std::min(j + kNR + i, n - 1)] * rs;
    }
    // the tile's rows stay in L1 while every group of 4 hidden rows passes over them; the next tile's rows go to L2
    // (PF_L2), not L1, where beside the tile and a group of hidden rows they evicted both: cold rows, alternating
    // processes on 2-core Zen 4, Llama-3.2-1B (H = 2048) K = 4096 / 16384, B = 4 / 16 0.82-0.97x the time, Qwen3-0.6B
    // (H = 1024) B = 1 / 4 / 16 0.79-0.98x; spread over the groups (rows_dot_n)
    cpu::bf16dot::rows_dot_n<kNR, 4, true>(w, xs.data(), B, H, j + kNR < n ? next : nullptr,
                                           [&](int i, int64_t t, float v) {
                                             if (i < nr) out[t * ldo + j + i] = v;
                                           });
  }
}

// dots_bf16_amx (kernels.h), on CPUs with AMX: the weight rows are AMX's A operand (16 gathered rows x 32 elements,
// copied into an L1 buffer per step, one step ahead: tileloadd needs equally spaced rows) and the packed hidden its
// B operand; up to 4 accumulator tiles (64 hidden rows) per pass over the rows, C^T turned back by a register
// transpose and written as out[b, j].
// Why: at B = 16 on a Xeon, vdpbf16ps (half Zen 4's rate per cycle) made dots_bf16 compute-bound at a third of the
// read bandwidth; one TDPBF16PS does 16 x 16 x 32 products.
constexpr int kAmxAcc = 4;

LK_AMX_FN void amx_acc_dot(int gi) {  // accumulator gi += A (tile 4) x B (tile 6)
  switch (gi) {
    case 0: LK_TDP(0, 4, 6); break;
    case 1: LK_TDP(1, 4, 6); break;
    case 2: LK_TDP(2, 4, 6); break;
    default: LK_TDP(3, 4, 6); break;
  }
}

LK_AMX_FN void amx_acc_store(int gi, float* c) {
  switch (gi) {
    case 0: LK_TSTORE(0, c, 64); break;
    case 1: LK_TSTORE(1, c, 64); break;
    case 2: LK_TSTORE(2, c, 64); break;
    default: LK_TSTORE(3, c, 64); break;
  }
}

LK_AMX_FN void pack_a(uint16_t* a, const uint16_t* const* w, int64_t off) {  // A tile: 32 elements of 16 rows
  for (int i = 0; i < 16; ++i) _mm512_store_si512(a + i * cpu::amx::kK, _mm512_loadu_si512(w[i] + off));
}

LK_AMX_FN void dots_bf16_amx(const int32_t* hv, int64_t B, int64_t H, const uint16_t* weight, int64_t rs,
                             const int64_t* rows, int64_t n, float* out, int64_t ldo) {
  const int64_t G = (B + 15) / 16, S = H / cpu::amx::kK;
  // A tiles packed one step ahead into alternating buffers: a tileloadd right after the 16 stores that fill its
  // buffer waits for them to reach L1 (a quarter of the kernel's time with the rows in L2)
  alignas(64) uint16_t a[2][16 * cpu::amx::kK];
  alignas(64) float c[cpu::amx::kTileFloats];
  cpu::amx::configure();
  for (int64_t j = 0; j < n; j += 16) {
    const int nr = (int)std::min<int64_t>(16, n - j);
    const uint16_t* w[16];
    for (int i = 0; i < 16; ++i) w[i] = weight + rows[j + std::min(i, nr - 1)] * rs;  // a short tail repeats its last row
    for (int64_t g0 = 0; g0 < G; g0 += kAmxAcc) {
      const int ng = (int)std::min<int64_t>(kAmxAcc, G - g0);
      LK_TZERO(0);
      LK_TZERO(1);
      LK_TZERO(2);
      LK_TZERO(3);
      pack_a(a[0], w, 0);
      for (int64_t s = 0; s < S; ++s) {
        if (s + 1 < S) pack_a(a[(s + 1) & 1], w, (s + 1) * cpu::amx::kK);
        LK_TLOAD(4, a[s & 1], 64);
        for (int gi = 0; gi < ng; ++gi) {
          LK_TLOAD(6, hv + ((g0 + gi) * S + s) * 256, 64);
          amx_acc_dot(gi);
        }
      }
      const __mmask16 live = (__mmask16)((1u << nr) - 1);
      for (int gi = 0; gi < ng; ++gi) {  // C[i, cc] = dot(row j + i, hidden 16 (g0 + gi) + cc)
        amx_acc_store(gi, c);
        const int64_t b0 = (g0 + gi) * 16;
        const int nc = (int)std::min<int64_t>(16, B - b0);
        // turned by a register transpose: one masked 16-float store per hidden row instead of 256 scalar ones
        // (those were about a third of the kernel's time at B = 16)
        __m512i r[16], t[16];
        for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(c + i * 16);
        cpu::transpose16(r, t);
        for (int cc = 0; cc < nc; ++cc) _mm512_mask_storeu_epi32(out + (b0 + cc) * ldo + j, live, t[cc]);
      }
    }
  }
  cpu::amx::release();
}

}  // namespace avx512bf16

const VocabKernels& avx512bf16_kernels() {
  static const VocabKernels table = [] {
    VocabKernels t = avx512_kernels();
    t.dots_bf16 = &avx512bf16::dots_bf16;
    t.dots_bf16_amx = &avx512bf16::dots_bf16_amx;
    return t;
  }();
  return table;
}

}  // namespace vocab
}  // namespace leankern

#endif
