// avx512bf16 table of the moe CPU kernels: the avx512 GEMV loops plus gemv_rows_bf16, the GEMV of bf16 weights
// times bf16 vectors with AVX512-BF16 dot products (kernels.h): gate/up of bf16 hidden states, and down of the
// activation rounded to bf16 (experts_cpu.cpp decode_all). Nothing here runs unless common/cpu_features.cpp found
// AVX512-BF16 and the active ISA is avx512bf16.
//
// Why: the fp32 loops widen every bf16 weight and spend one FMA per 16 products; vdpbf16ps multiplies the bf16
// pairs as they are loaded, 32 products per instruction, each exact in fp32, with fp32 sums. It treats bf16
// subnormal inputs as zero, the one difference to the fp32 loops (docs/moe.md).
#if defined(__x86_64__) || defined(_M_X64)

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "common/bf16_dot_avx512.h"
#include "moe/kernels.h"

namespace leankern {
namespace moe {
namespace avx512bf16 {

#define LK_BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

constexpr int kNR = 4;  // weight rows per register tile (x 4 tokens: 16 accumulators)
// How far (elements) the stream's software prefetch runs ahead, and into which level (leankern._C.moe_set_stream_prefetch,
// a tuning hook): 4 KB into L2. Why (bench/bench_moe_prefetch.py, 2-core Zen 4, weights from DRAM, the settings
// alternated within one process, three runs): against the 1 KB into L1 of the fp32 loops (measured on Zen 2),
// Qwen3-30B-A3B's experts at T = 1 / 2 / 16 took 0.93-0.96 / 0.92-0.94 / 0.90-0.93x the time, DeepSeek-V2-Lite at
// T = 1 / 4 0.92-1.00 / 0.94-0.96x, Mixtral-8x7B 0.83-0.96 / 0.91-0.97x; 2 KB into L2 about the same, 8 KB into L2
// or 4 KB into L1 mostly less (docs/bench/moe_prefetch_zen4.txt).
std::atomic<int64_t> g_ahead{2048};
std::atomic<bool> g_ahead_l2{true};

// NT (<= 4) vectors: rows one after the other as one sequential stream, as the fp32 loops' stream_rows_n
// (kernels_impl.h), with a software prefetch `ahead` elements ahead that runs on into the next row; two accumulators
// per vector, lane j summing the pairs (2 j, 2 j + 1) of each 32 elements in fp32, one horizontal sum per output.
// Why: the 4-row tile reads four rows side by side (four streams per thread), which the prefetchers follow less
// well; with one token per expert (decode), or a few short ones, the weights' bytes are the time.
template <int NT, bool L2>
LK_BF void stream_rows_bf16(const uint16_t* w, int64_t ld, int64_t r0, int64_t r1, int64_t C,
                            const uint16_t* const* xs, float* const* outs, int64_t ahead) {
  constexpr _mm_hint kHint = L2 ? _MM_HINT_T1 : _MM_HINT_T0;
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* row = w + r * ld;
    const bool more = r + 1 < r1;
    __m512 a[NT][2];
    for (int t = 0; t < NT; ++t) a[t][0] = a[t][1] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 64 <= C; c += 64) {
      for (int64_t q = 0; q < 64; q += 32) {  // the two lines `ahead` on, or as far into the next row
        const int64_t o = c + ahead + q;
        if (o < C) _mm_prefetch((const char*)(row + o), kHint);
        else if (more) _mm_prefetch((const char*)(row + ld + (o - C)), kHint);
      }
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(row + c), w1 = (__m512bh)_mm512_loadu_si512(row + c + 32);
      for (int t = 0; t < NT; ++t) {
        a[t][0] = _mm512_dpbf16_ps(a[t][0], w0, (__m512bh)_mm512_loadu_si512(xs[t] + c));
        a[t][1] = _mm512_dpbf16_ps(a[t][1], w1, (__m512bh)_mm512_loadu_si512(xs[t] + c + 32));
      }
    }
    for (; c < C; c += 32) {  // the last < 64 elements: masked past C (zeros add nothing, nothing past C is read)
      const __mmask32 m = C - c >= 32 ? (__mmask32)~0u : (__mmask32)((1u << (C - c)) - 1);
      const __m512bh w0 = (__m512bh)_mm512_maskz_loadu_epi16(m, row + c);
      for (int t = 0; t < NT; ++t)
        a[t][0] = _mm512_dpbf16_ps(a[t][0], w0, (__m512bh)_mm512_maskz_loadu_epi16(m, xs[t] + c));
    }
    for (int t = 0; t < NT; ++t) outs[t][r] = _mm512_reduce_add_ps(_mm512_add_ps(a[t][0], a[t][1]));
  }
}

// Five or more tokens: quads of rows, each passed over by the token groups (4 tokens, the last 1..4) while it stays
// in L1, the next quad's rows prefetched into L2 during the first group (rows_dot_n's PF_L2: Qwen3-30B-A3B experts
// at T = 256, 16 tokens per expert, 0.96-0.99x the time of the L1 prefetch spread over the groups, DeepSeek-V2-Lite
// 0.98-0.99x, on 2-core Zen 4, alternating processes).
LK_BF void quads_bf16(const uint16_t* w, int64_t ld, int64_t r0, int64_t r1, int64_t C, const uint16_t* const* xs,
                      int64_t n, float* const* outs) {
  for (int64_t r = r0; r < r1; r += kNR) {
    const int nr = (int)std::min<int64_t>(kNR, r1 - r);
    const uint16_t* rows[kNR];
    const uint16_t* next[kNR];
    for (int i = 0; i < kNR; ++i) {
      rows[i] = w + (r + std::min(i, nr - 1)) * ld;  // a short tail repeats its last row (stored once)
      next[i] = w + (r + kNR + i) * ld;
    }
    const bool pf = r + 2 * kNR <= r1;  // the next quad lies in this block
    cpu::bf16dot::rows_dot_n<kNR, 4, true>(
        rows, xs, n, C, pf ? next : nullptr,
        [&](int i, int64_t t, float v) {
          if (i < nr) outs[t][r + i] = v;
        });
  }
}

// One to four tokens whose vectors fill half of L1 or more (n x C >= tile_min_elems(), 8192 by default: 16 KB) take
// the quads too: the stream reads every token's vector again for every row, and with the row's stream beside it
// they no longer stay in L1. Mixtral-8x7B's experts (C = 4096 / 14336), 2 experts x n tokens from DRAM, 2-core Zen 4,
// alternating processes: n = 2 / 3 / 4 0.80-0.84 / 0.71-0.73 / 0.61-0.71x the streamed time (Mixtral at T = 16:
// 0.67-0.70x; docs/bench/moe_decode_quads_ab_zen4.txt). Qwen3-30B-A3B's short vectors (C = 2048 / 768) gained nothing.
// One token too, from C = 8192: a standalone copy of the loops (one thread, rows from DRAM, Zen 4): C = 8192 / 14336
// 22.6 / 23.6 GB/s streamed, 28.2 / 30.9 in row quads; C = 4096 / 6144 35 / 33 streamed, 26 / 27 in quads
// (docs/bench/moe_quads_one_token_ab_zen4.txt).
LK_BF void gemv_rows_bf16(const uint16_t* w, int64_t ld, int64_t r0, int64_t r1, int64_t C, const uint16_t* const* xs,
                          int64_t n, float* const* outs) {
  if (n * C >= tile_min_elems()) return quads_bf16(w, ld, r0, r1, C, xs, n, outs);
  const int64_t ahead = g_ahead.load(std::memory_order_relaxed);
  auto stream = [&](auto l2) {
    constexpr bool L2 = decltype(l2)::value;
    switch (n) {
      case 1: return stream_rows_bf16<1, L2>(w, ld, r0, r1, C, xs, outs, ahead);
      case 2: return stream_rows_bf16<2, L2>(w, ld, r0, r1, C, xs, outs, ahead);
      case 3: return stream_rows_bf16<3, L2>(w, ld, r0, r1, C, xs, outs, ahead);
      case 4: return stream_rows_bf16<4, L2>(w, ld, r0, r1, C, xs, outs, ahead);
      default: return quads_bf16(w, ld, r0, r1, C, xs, n, outs);
    }
  };
  if (g_ahead_l2.load(std::memory_order_relaxed)) return stream(std::true_type{});
  stream(std::false_type{});
}

// epilogue_avx512bf16.cpp
void act_split_bf16(const float* gu, int64_t n, int64_t I, const ActParams& ac, const float* bias, uint16_t* hi,
                    uint16_t* lo);
void combine_split(const float* hi, const float* lo, int64_t H, const float* b2, const int64_t* tok, const float* w,
                   int64_t t0, int64_t t1, float* acc);

}  // namespace avx512bf16

int64_t set_stream_prefetch(int64_t elements, bool into_l2) {
  avx512bf16::g_ahead_l2.store(into_l2);
  return avx512bf16::g_ahead.exchange(std::max<int64_t>(32, elements));
}

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
