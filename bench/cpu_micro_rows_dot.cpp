// One-thread microbenchmark of moe's decode tile (cpu::bf16dot::rows_dot_n's 4-row x 4-token rows_dot) and its
// prefetch of the next rows, weights from DRAM (96 MB of copies cycled) or one copy again (from L3):
//   g++ -O3 -std=c++17 -Icsrc -o /tmp/rows_dot bench/cpu_micro_rows_dot.cpp && /tmp/rows_dot [C [rows [tokens]]]
// (defaults C = 2048, rows = 1536: Qwen3-30B-A3B's gate/up; 768 2048 its down projection; tokens 16, at most 64). Prints core
// cycles per vdpbf16ps, TSC cycles scaled by kTscPerCore (measured on the 2-core Zen 4 VM: a dependent-free
// vdpbf16ps stream ran at 0.71 TSC cycles per instruction; set yours). Needs an AVX512-BF16 CPU.
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <vector>
#include <x86intrin.h>

#include "common/bf16_dot_avx512.h"

using leankern::cpu::bf16dot::rows_dot_n;
constexpr double kTscPerCore = 0.71;

template <bool L2>
double pass(const uint16_t* W, int64_t C, int64_t rows, const uint16_t* X, int tokens, float* out, bool pf) {
  const uint16_t* xs[64];
  for (int t = 0; t < tokens; ++t) xs[t] = X + t * C;
  const unsigned long long t0 = __rdtsc();
  for (int64_t q = 0; q + 4 <= rows; q += 4) {
    const uint16_t *w[4], *next[4];
    for (int i = 0; i < 4; ++i) w[i] = W + (q + i) * C, next[i] = W + (q + 4 + i) * C;
    rows_dot_n<4, 4, L2>(w, xs, tokens, C, pf && q + 8 <= rows ? next : nullptr,
                         [&](int i, int64_t t, float v) { out[(q + i) * tokens + t] = v; });
  }
  return double(__rdtsc() - t0);
}

int main(int argc, char** argv) {
  const int64_t C = argc > 1 ? atol(argv[1]) : 2048, rows = argc > 2 ? atol(argv[2]) : 1536;
  const int tokens = argc > 3 ? std::min(64, std::max(1, atoi(argv[3]))) : 16;
  const int64_t per = rows * C, copies = std::max<int64_t>(2, (96 << 20) / 2 / per);
  std::vector<uint16_t> W(copies * per, 0x3f80), X(tokens * C, 0x3f80);
  std::vector<float> out(rows * tokens);
  const double dps = double(rows) * tokens * (C / 32);
  const char* names[3] = {"no prefetch", "next rows into L1", "next rows into L2"};
  for (int v = 0; v < 3; ++v) {
    double cold = 0, hot = 1e300;
    for (int r = 0; r < 3 * copies; ++r)
      cold += v == 2 ? pass<true>(W.data() + (r % copies) * per, C, rows, X.data(), tokens, out.data(), true)
                     : pass<false>(W.data() + (r % copies) * per, C, rows, X.data(), tokens, out.data(), v == 1);
    for (int r = 0; r < 10; ++r)
      hot = std::min(hot, v == 2 ? pass<true>(W.data(), C, rows, X.data(), tokens, out.data(), true)
                                 : pass<false>(W.data(), C, rows, X.data(), tokens, out.data(), v == 1));
    printf("C = %ld, %ld rows, %d tokens, %-18s: from DRAM %.2f, one copy again (L3) %.2f core cycles per vdpbf16ps\n",
           (long)C,
           (long)rows, tokens, names[v], cold / (3 * copies) / dps / kTscPerCore, hot / dps / kTscPerCore);
  }
}
