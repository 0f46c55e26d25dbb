// AVX512-BF16 dot-product kernels shared by several families; only their avx512bf16 code paths include this.
//  * micro: MM rows of x (<= kRowGroup) times one 16-row weight tile whose pairs are already laid out for
//    vdpbf16ps (lane = weight row): the mx prefill kernel (csrc/mx/linear_packed_bf16.h) and the plain bf16 GEMM
//    (common/bf16_gemm.cpp).
//  * rows_dot: NR bf16 rows times NT bf16 vectors, lanes along the row (pairs as loaded) and one horizontal sum per
//    output: the GEMV of moe's decode path (csrc/moe/kernels_avx512bf16.cpp) and vocab's gathered LM-head rows
//    (csrc/vocab/kernels_avx512bf16.cpp).
#pragma once
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdint>

namespace leankern {
namespace cpu {
namespace bf16dot {

// x in row groups: xg[q * kRowGroup + i] = the bf16 pair (x[i, 2q], x[i, 2q + 1]) of the group's row i, as int32.
constexpr int kRowGroup = 24;

// acc[i] (lane r) = sum over q < pairs of vdpbf16ps(wb[q], pair q of row i), i < MM: lane r of wb[q] holds weight
// row r's pair q. Every product is exact (8 x 8 significant bits), the sums fp32; vdpbf16ps treats bf16
// subnormal inputs and fp32 subnormal results as zero. Out of line with local sums so that up to 24 of them stay in
// registers (acc's address escapes to the caller); intrinsics rather than an asm broadcast operand, with which
// GCC kept 24 sums in memory.
// pf: nullptr, or 16 row pointers whose first 4 * pairs bytes (rows of K = 2 * pairs bf16: the next weight tile
// of the plain GEMM) are prefetched into L2 along the way, one line per step, so that their reads from memory
// overlap these products instead of stalling the next tile's packing.
// init: nullptr (sums from zero), or the sums of earlier pairs to continue (acc may be init): a K range split into
// chunks gives the same dot-product chains, so the same bits, as one call.
template <int MM>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"), noinline)) void micro(
    const int32_t* xg, int64_t pairs, const __m512i* wb, __m512* acc, const uint16_t* const* pf = nullptr,
    const __m512* init = nullptr) {
  static_assert(MM >= 1 && MM <= kRowGroup, "at most one row group per call");
  __m512 r[MM];
  for (int i = 0; i < MM; ++i) r[i] = init ? init[i] : _mm512_setzero_ps();
  for (int64_t q = 0; q < pairs; ++q) {
    if (pf) _mm_prefetch((const char*)pf[q & 15] + (q >> 4) * 64, _MM_HINT_T1);
    const __m512bh wv = (__m512bh)_mm512_load_si512(wb + q);
#pragma GCC unroll 24  // fully: r[] must be registers
    for (int i = 0; i < MM; ++i)
      r[i] = _mm512_dpbf16_ps(r[i], wv, (__m512bh)_mm512_set1_epi32(xg[q * kRowGroup + i]));
  }
  for (int i = 0; i < MM; ++i) acc[i] = r[i];
}

// Lane k of the result = the sum of v[k]'s 16 lanes, k < 16: unpacks within 128-bit lanes, then a 4 x 4 transpose of
// the 128-bit lanes, adding at each level (about 45 instructions for 16 sums; 16 separate horizontal sums take ~140).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) inline __m512 reduce16(const __m512* v) {
  __m512 s1[8], s2[4];
  for (int k = 0; k < 8; ++k)  // 128-bit lane L: [a0+a2, b0+b2, a1+a3, b1+b3] of a = v[2k], b = v[2k+1]
    s1[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]), _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
  for (int k = 0; k < 4; ++k) {  // 128-bit lane L: element j = lane L's partial sum of v[4k + j]
    const __m512d a = _mm512_castps_pd(s1[2 * k]), b = _mm512_castps_pd(s1[2 * k + 1]);
    s2[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(s2[0], s2[1], 0x44), _mm512_shuffle_f32x4(s2[0], s2[1], 0xEE));
  const __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(s2[2], s2[3], 0x44), _mm512_shuffle_f32x4(s2[2], s2[3], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, 0x88), _mm512_shuffle_f32x4(w01, w23, 0xDD));
}

// The caller's next NR rows, prefetched along one or more rows_dot passes: their lines numbered L = row + NR * step
// (step: 32 elements), `per_step` lines per step of a pass from line `first` on (lines past NR * (C / 32) skipped).
struct NextRows {
  const uint16_t* const* rows = nullptr;  // nullptr: no prefetch
  int64_t first = 0;
  int per_step = 0;
};

// out(i, t, v) with v = sum over c < C of w[i][c] * x[t][c], for NR rows w[i] and NT vectors x[t] of bf16 bits
// (i < NR, t < NT). Every product is exact (8 x 8 significant bits); lane j sums the pairs (32 s + 2 j,
// 32 s + 2 j + 1) over steps s in fp32, then one horizontal sum; bf16 subnormal inputs count as zero. pf: the rows
// to prefetch alongside (NextRows); PF_L2: into L2 (prefetcht1) instead of L1. NR * NT accumulators + NT vectors of
// x + 1 weight vector must fit the 32 registers.
template <int NR, int NT, bool PF_L2 = false, class Out>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))) inline void rows_dot(
    const uint16_t* const* w, const uint16_t* const* x, int64_t C, const NextRows& pf, Out&& out) {
  __m512 acc[NR][NT];
  for (int i = 0; i < NR; ++i)
    for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_setzero_ps();
  const int64_t lines = NR * (C / 32);
  int64_t line = pf.first;
  int64_t c = 0;
  for (; c + 32 <= C; c += 32) {
    __m512bh xv[NT];
    for (int t = 0; t < NT; ++t) xv[t] = (__m512bh)_mm512_loadu_si512(x[t] + c);
    if (pf.rows && pf.per_step >= NR) {  // one pass: this step's line of every row (unrolled)
      for (int i = 0; i < NR; ++i) _mm_prefetch((const char*)(pf.rows[i] + c), PF_L2 ? _MM_HINT_T1 : _MM_HINT_T0);
    } else if (pf.rows) {
      for (int j = 0; j < pf.per_step && line < lines; ++j, ++line)
        _mm_prefetch((const char*)(pf.rows[line % NR] + 32 * (line / NR)), PF_L2 ? _MM_HINT_T1 : _MM_HINT_T0);
    }
    for (int i = 0; i < NR; ++i) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w[i] + c);
      for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], wv, xv[t]);
    }
  }
  if (c < C) {  // the last C - c < 32 elements: masked loads (zeros add nothing, nothing past C is read)
    const __mmask32 m = (__mmask32)((1ull << (C - c)) - 1);
    __m512bh xv[NT];
    for (int t = 0; t < NT; ++t) xv[t] = (__m512bh)_mm512_maskz_loadu_epi16(m, x[t] + c);
    for (int i = 0; i < NR; ++i) {
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w[i] + c);
      for (int t = 0; t < NT; ++t) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], wv, xv[t]);
    }
  }
  if constexpr (NR * NT == 16) {  // all 16 sums at once
    alignas(64) float s[16];
    _mm512_store_ps(s, reduce16(&acc[0][0]));
    for (int i = 0; i < NR; ++i)
      for (int t = 0; t < NT; ++t) out(i, t, s[i * NT + t]);
  } else {
    for (int i = 0; i < NR; ++i)
      for (int t = 0; t < NT; ++t) out(i, t, _mm512_reduce_add_ps(acc[i][t]));
  }
}

// rows_dot over n vectors, NTmax (<= 4) at a time (the rows stay in L1 across the groups), pf (the next NR rows, or
// nullptr) spread evenly over the groups' steps: ceil(NR / groups) lines per step.
// PF_L2 (moe's decode tile): the next rows into L2, not L1, where they evicted the current rows and x (16 + 16 KB at
// C = 2048 beside the next 16 KB in a 32 KB L1): one-thread microbenchmark, 16 tokens, rows from DRAM, core cycles
// per vdpbf16ps, C = 768 / 2048: 2.4-2.5 / 1.9-2.0 with L1 and 1.65-1.73 / 1.68-1.71 with L2 (1.3 in cache), and
// row i of the next rows with group i 2.1-2.2 / 1.9-2.1 with L1, 1.75-1.9 / 1.74-2.0 with L2. Spread line by line
// over all the groups instead of issued in the first: Qwen3-30B-A3B's layer at T = 256 / 128 (~16 / ~8 tokens per
// expert) 0.95x / 0.88-0.94x the time, the vocab gather at B = 16 0.88-0.94x (two threads, weights from DRAM,
// alternating processes; docs/bench/rows_dot_spread_ab_zen4.txt).
template <int NR, int NTmax, bool PF_L2 = false, class Out>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))) inline void rows_dot_n(
    const uint16_t* const* w, const uint16_t* const* x, int64_t n, int64_t C, const uint16_t* const* pf, Out&& out) {
  static_assert(NTmax >= 1 && NTmax <= 4, "1 .. 4 vectors per pass");
  if (n <= 0) return;
  const int64_t groups = (n + NTmax - 1) / NTmax;
  const int per_step = static_cast<int>((NR + groups - 1) / groups);
  for (int64_t t0 = 0; t0 < n; t0 += NTmax) {
    const int64_t nt = n - t0 < NTmax ? n - t0 : NTmax;
    const NextRows p{pf, t0 / NTmax * per_step * (C / 32), per_step};
    auto o = [&](int i, int t, float v) { out(i, t0 + t, v); };
    if (nt >= 4 && NTmax >= 4) rows_dot<NR, (NTmax >= 4 ? 4 : 1), PF_L2>(w, x + t0, C, p, o);
    else if (nt == 3 && NTmax >= 3) rows_dot<NR, (NTmax >= 3 ? 3 : 1), PF_L2>(w, x + t0, C, p, o);
    else if (nt == 2 && NTmax >= 2) rows_dot<NR, (NTmax >= 2 ? 2 : 1), PF_L2>(w, x + t0, C, p, o);
    else rows_dot<NR, 1, PF_L2>(w, x + t0, C, p, o);
  }
}

// acc[4 t + i] (unreduced lanes) += the products of weight row i (w + i * ldw) and x row t (x[t] + c0) over
// elements [0, len) of w's rows and [c0, c0 + len) of x's, len a multiple of 32; the 16 sums stay in registers for
// the span and go back to acc, so a K range can be walked span by span (sefp's decode-once GEMVs: a span of 4
// decoded rows that stays in L1 while every group of 4 x rows passes over it). Out of line: inlined beside a
// decoder's tables, it kept x in memory (sefp m = 2: 0.8x the time of the decode it replaced).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"), noinline)) inline void tile4x4_sums(
    const uint16_t* w, int64_t ldw, const uint16_t* const* x, int64_t c0, int64_t len, __m512* acc) {
  __m512 a[4][4];
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 4; ++i) a[i][t] = acc[4 * t + i];
  for (int64_t c = 0; c < len; c += 32) {
    __m512bh xv[4];
    for (int t = 0; t < 4; ++t) xv[t] = (__m512bh)_mm512_loadu_si512(x[t] + c0 + c);
    for (int i = 0; i < 4; ++i) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + i * ldw + c);
      for (int t = 0; t < 4; ++t) a[i][t] = _mm512_dpbf16_ps(a[i][t], wv, xv[t]);
    }
  }
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 4; ++i) acc[4 * t + i] = a[i][t];
}

#define LK_TILE4 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))) inline

// The running sums of a decode-once GEMV: 4 weight rows times R <= kMaxRows x rows (x + r * ldx), the x rows in
// groups of 4 (a short last group repeats row R - 1), walked span by span (add) and stored as y[r * ldy + n + i].
template <int kMaxRows>
struct Tile4Sums {
  __m512 acc[4 * kMaxRows];  // [x group][t][i]
  const uint16_t* xr[kMaxRows];
  int64_t R, groups;

  LK_TILE4 Tile4Sums(const uint16_t* x, int64_t rows, int64_t ldx) : R(rows), groups((rows + 3) / 4) {
    for (int64_t r = 0; r < 4 * groups; ++r) xr[r] = x + (r < R ? r : R - 1) * ldx;
  }
  LK_TILE4 void zero() {
    for (int64_t j = 0; j < 16 * groups; ++j) acc[j] = _mm512_setzero_ps();
  }
  // the 4 rows' elements [0, len) (w + i * ldw) times every x row's [c0, c0 + len)
  LK_TILE4 void add(const uint16_t* w, int64_t ldw, int64_t c0, int64_t len) {
    for (int64_t q = 0; q < groups; ++q) tile4x4_sums(w, ldw, xr + 4 * q, c0, len, acc + 16 * q);
  }
  LK_TILE4 void store(float* y, int64_t ldy, int64_t n) const {
    for (int64_t q = 0; q < groups; ++q) {
      alignas(64) float s[16];
      _mm512_store_ps(s, reduce16(acc + 16 * q));
      for (int t = 0; t < 4 && 4 * q + t < R; ++t)
        for (int i = 0; i < 4; ++i) y[(4 * q + t) * ldy + n + i] = s[4 * t + i];
    }
  }
};

#undef LK_TILE4

}  // namespace bf16dot
}  // namespace cpu
}  // namespace leankern
#endif
