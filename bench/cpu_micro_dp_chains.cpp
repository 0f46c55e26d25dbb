// One-thread cost of vdpbf16ps loops shaped like the few-rows kernels' (csrc/mx/linear_packed_bf16_small.h), in L1,
// no decode: the floor those kernels sit on at 4-16 rows of x.
//   g++ -O3 -march=x86-64-v4 -mavx512bf16 -o /tmp/dp_chains bench/cpu_micro_dp_chains.cpp && /tmp/dp_chains
// Prints core cycles per vdpbf16ps (TSC cycles scaled by kTscPerCore, as bench/cpu_micro_pipes.cpp; set yours):
//  * chains C: C independent accumulators, register operands: the latency / throughput of the instruction;
//  * block MM x S (P pairs): MM rows of x times one weight pair vector per step (loaded from a buffer), x as an
//    embedded broadcast, S sets of per-block sums that a block's end folds into the row sums (an FMA with the
//    block scale): quad_tile's / small_tile's shape, blocks of P pair vectors (16: MX 32-element blocks, 8: NV);
//  * flat MM: the same with one sum per row over all of K (scales folded into the weights), intrinsics.
// Zen 4, 2026-12-06, three runs: chains 4 / 6 / 8+ 1.52-1.57 / 1.03-1.12 / 1.01-1.07 (latency ~6, 1 per cycle);
// block (P 16 / P 8) 8 x 1 1.10-1.18 / 1.17-1.28, 4 x 2 1.07-1.14 / 1.13-1.19, 2 x 2 1.22-1.35 / 1.12-1.25, 1 x 4
// 1.80-2.02 / 1.67-1.80; flat 8-16 rows 1.00-1.01. The per-block form costs 10-25% over the instruction's rate at
// 4-8 rows before any decode (more at 1-2); a folded few-rows kernel built on the flat form still ran slower than
// the per-block one in the op (docs/results/mx.md, 2026-12-06).
#include <immintrin.h>
#include <x86intrin.h>

#include <cstdint>
#include <cstdio>
#include <initializer_list>

constexpr double kTscPerCore = 0.71;
constexpr long kXs = 520;  // x's row stride (int32 pairs): not a multiple of 4 KB apart

alignas(64) static int32_t xbuf[32 * 1024];
alignas(64) static __m512i wbuf[256];

template <int C>
double chains() {
  const long iters = 20000000 / C;
  const uint64_t t0 = __rdtsc();
  for (long i = 0; i < iters; ++i) {
#define D(n) \
  if (n < C) asm volatile("vdpbf16ps %%zmm31, %%zmm30, %%zmm" #n ::: "xmm" #n);
    D(0) D(1) D(2) D(3) D(4) D(5) D(6) D(7) D(8) D(9) D(10) D(11) D(12) D(13) D(14) D(15)
#undef D
  }
  return double(__rdtsc() - t0) / kTscPerCore / (double(iters) * C);
}

template <int MM, int S>
__attribute__((noinline)) void block_pass(int nblk, int pairs, const int32_t* x, __m512* out) {
  __m512 acc[MM];
  for (int m = 0; m < MM; ++m) acc[m] = _mm512_setzero_ps();
  const __m512i* w = wbuf;
  for (int b = 0; b < nblk; ++b, w += pairs, x += pairs) {
    __m512 bacc[S][MM];
    for (int j = 0; j < S; ++j)
      for (int m = 0; m < MM; ++m) bacc[j][m] = _mm512_setzero_ps();
    for (int q0 = 0; q0 < pairs; q0 += S) {
#pragma GCC unroll 4
      for (int j = 0; j < S; ++j) {
        const __m512i wv = _mm512_load_si512(w + q0 + j);
        for (int m = 0; m < MM; ++m)
          asm("vdpbf16ps %[x]%{1to16%}, %[w], %[acc]" : [acc] "+v"(bacc[j][m]) : [w] "v"(wv), [x] "m"(x[m * kXs + q0 + j]));
      }
    }
    for (int j = 1; j < S; ++j)
      for (int m = 0; m < MM; ++m) bacc[0][m] = _mm512_add_ps(bacc[0][m], bacc[j][m]);
    for (int m = 0; m < MM; ++m) acc[m] = _mm512_fmadd_ps(bacc[0][m], _mm512_set1_ps(1.0f), acc[m]);
  }
  for (int m = 0; m < MM; ++m) out[m] = _mm512_add_ps(out[m], acc[m]);
}

template <int MM>
__attribute__((noinline)) void flat_pass(int n, const int32_t* x, __m512* out) {
  __m512 acc[MM];
  for (int m = 0; m < MM; ++m) acc[m] = _mm512_setzero_ps();
  for (int q = 0; q < n; ++q) {
    const __m512i wv = _mm512_load_si512(wbuf + q);
    for (int m = 0; m < MM; ++m)  // (the asm broadcast form keeps these sums in memory: GCC does not scalarise them)
      acc[m] = _mm512_dpbf16_ps(acc[m], (__m512bh)wv, (__m512bh)_mm512_set1_epi32(x[m * kXs + q]));
  }
  for (int m = 0; m < MM; ++m) out[m] = _mm512_add_ps(out[m], acc[m]);
}

template <int MM, int S>
double block(int pairs) {
  static __m512 out[16];
  const long reps = 200000;
  const uint64_t t0 = __rdtsc();
  for (long r = 0; r < reps; ++r) block_pass<MM, S>(256 / pairs, pairs, xbuf + (r % 4) * 64, out);
  return double(__rdtsc() - t0) / kTscPerCore / (double(reps) * 256 * MM);
}

template <int MM>
double flat() {
  static __m512 out[16];
  const long reps = 200000;
  const uint64_t t0 = __rdtsc();
  for (long r = 0; r < reps; ++r) flat_pass<MM>(256, xbuf + (r % 4) * 64, out);
  return double(__rdtsc() - t0) / kTscPerCore / (double(reps) * 256 * MM);
}

int main() {
  for (auto& v : xbuf) v = 0x3f803f80;  // (1.0, 1.0) in bf16
  for (auto& v : wbuf) v = _mm512_set1_epi32(0x3f803f80);
  __asm__ volatile("vpxord %%zmm30, %%zmm30, %%zmm30\n vpxord %%zmm31, %%zmm31, %%zmm31" ::: "xmm30", "xmm31");
  std::printf("chains 4 / 6 / 8 / 12 / 16: %.2f %.2f %.2f %.2f %.2f cycles per vdpbf16ps\n", chains<4>(), chains<6>(),
              chains<8>(), chains<12>(), chains<16>());
  for (int p : {16, 8})
    std::printf("block (P %2d) 8x1 %.2f  4x2 %.2f  2x2 %.2f  1x4 %.2f\n", p, block<8, 1>(p), block<4, 2>(p),
                block<2, 2>(p), block<1, 4>(p));
  std::printf("flat 8 / 12 / 16 rows: %.2f %.2f %.2f\n", flat<8>(), flat<12>(), flat<16>());
  return 0;
}
