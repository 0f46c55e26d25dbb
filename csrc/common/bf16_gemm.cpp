// bf16_gemm_nt (bf16_gemm.h): on AMX CPUs (cpu::amx_enabled(), K % 32 == 0) AMX tiles (below); otherwise
// x in row groups (bf16_dot_avx512.h) built once, then per 16-row tile of w its pairs laid out for vdpbf16ps (16 x 16 transposes of 32-bit pairs; a gather per vector was 72 TSC cycles on Zen 4
// with 4 KB rows, as slow as the products it feeds) and the shared micro-kernel for each group of 24 rows of x.
#include "common/bf16_gemm.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "common/cpu_features.h"
#include "common/parallel.h"

#if defined(__x86_64__) || defined(_M_X64)
#include "common/amx.h"
#include "common/bf16_dot_avx512.h"
#include "common/transpose_avx512.h"

namespace leankern {
namespace cpu {
namespace {

#define LK_BG __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
using bf16dot::kRowGroup;
constexpr int kTile = 16;  // rows of w per tile: one per fp32 lane

// Pair q of element (row, 2q), (row, 2q + 1), the second 0 past K (odd K).
inline uint32_t pair_at(const uint16_t* row, int64_t q, int64_t K) {
  const uint32_t lo = row[2 * q], hi = 2 * q + 1 < K ? row[2 * q + 1] : 0;
  return lo | hi << 16;
}

// Rows row(0) .. row(rows - 1) (rows <= lanes, each K elements; a nullptr row reads as zeros) -> dst[q * ld + r]
// = row r's pair q for r < lanes (16: 64-byte stores, 8: 32-byte ones; lanes past `rows`: zeros).
template <class Row>
LK_BG void pack_pairs(const Row& row, int rows, int64_t K, int32_t* dst, int64_t ld, int lanes = 16) {
  const int64_t pairs = (K + 1) / 2, full = K / 2;
  for (int64_t q0 = 0; q0 < full; q0 += 16) {  // 16 pairs of the 16 rows at a time (masked past the last one)
    const int n = (int)std::min<int64_t>(16, full - q0);
    const __mmask16 live = (__mmask16)((1u << n) - 1);
    __m512i r[kTile], o[kTile];
    for (int i = 0; i < kTile; ++i) {
      const uint16_t* p = i < rows ? row(i) : nullptr;
      r[i] = p ? _mm512_maskz_loadu_epi32(live, p + 2 * q0) : _mm512_setzero_si512();
    }
    transpose16(r, o);
    // stored straight from the registers, a test per store: a copy loop of variable length became o[] spilled to
    // the stack and a memmove (2% of Mixtral-8x7B's experts at T = 256 on Zen 4, and the spills)
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) {
      if (j < n) {
        int32_t* d = dst + (q0 + j) * ld;
        if (lanes == 16) _mm512_storeu_si512(d, o[j]);
        else _mm256_storeu_si256((__m256i*)d, _mm512_castsi512_si256(o[j]));
      }
    }
  }
  if (pairs > full)  // odd K: the last element alone (a 4-byte gather would read past the last row)
    for (int i = 0; i < lanes; ++i) {
      const uint16_t* p = i < rows ? row(i) : nullptr;
      dst[full * ld + i] = p ? (int32_t)pair_at(p, full, K) : 0;
    }
}

// 24 rows of x (nullptr: a row past M, zeros) -> dst[q * 24 + i] = row i's pair q: rows 0-15 and rows 16-23 by
// pack_pairs. Why: the scalar loop it replaces (one pair_at and one store 96 bytes from the last per pair) was 5% of
// Qwen3-30B-A3B's experts at T = 4096 on Zen 4.
LK_BG void pack_x_group(const uint16_t* const* rows, int64_t K, int32_t* dst) {
  static_assert(kRowGroup == 24, "rows 0-15 and 16-23");
  pack_pairs([&](int i) { return rows[i]; }, 16, K, dst, kRowGroup);
  pack_pairs([&](int i) { return rows[16 + i]; }, 8, K, dst + 16, kRowGroup, 8);
}

// Rows [n0, n0 + 16) of w -> wb[q] (lane r: row r's pair q; rows past N: zeros).
LK_BG void pack_tile(const uint16_t* w, int64_t ldw, int64_t n0, int64_t N, int64_t K, __m512i* wb) {
  const uint16_t* base = w + n0 * ldw;
  pack_pairs([&](int i) { return base + i * ldw; }, (int)std::min<int64_t>(kTile, N - n0), K, (int32_t*)wb, kTile);
}

// Pairs of w per packed chunk of a tile. Why: packing a whole tile's rows (16 x K) at once took 16% of
// Mixtral-8x7B's experts at T = 256 on 2-core Zen 4, its samples on the loads: the next tile, prefetched during
// the first row group, is 128 KB (w13, K = 4096) or 448 KB (w2, K = 14336) and shares the 1 MB L2 with the packed
// tile and x's row groups. With 1024-pair chunks (64 KB; the same dot-product chains, so the same bits) the experts
// took 0.94-1.00x the time (alternating processes, four pairs); 512 and 2048 pairs, or prefetching two chunks
// ahead, were slower. With the stores of pack_pairs fixed too, the packing still takes ~11% of the samples, on its
// loads (docs/moe.md).
constexpr int64_t kChunkPairs = 1024;

// Rows of x per pass over w: a tile's pass reads every row group of its chunk (rows x 4 KB at 1024 pairs), so with
// all of x's rows in one pass a chunk of x (16 MB for DeepSeek-V2-Lite's shared experts at T = 4096) came from
// memory again for every 16 columns of out. With blocks of 16 groups (384 rows, 1.5 MB per chunk) the tiles re-read
// it from cache, at the price of packing each tile once per block. 2-core Zen 4, a C++ harness, builds alternated:
// M = 4096 x (N, K) = (2816, 2048) 350-361 -> 386-407 GFLOP/s, (2048, 2816) 324 -> 410-412; Mixtral-8x7B's down
// shape M = 1024 x (4096, 14336) 322-329 -> 410-422; M <= 384 unchanged. Blocks of 256 to 2048 rows and a balanced
// split were measured too: 384 was at or near the best on every shape (1024 x (4096, 14336) wants <= 384).
constexpr int64_t kBlockGroups = 16;

// MM (<= 24) rows of x from row m0 times the packed chunk wb of one tile (cp pairs; xg at the chunk's first pair):
// sums continued from accs (first: from zero) and kept there, or (last) stored into out's rows / live columns.
template <int MM>
LK_BG void rows_mm(int mm, const int32_t* xg, int64_t cp, const __m512i* wb, __m512* accs, bool first, bool last,
                   float* out, int64_t ldo, int64_t m0, int64_t n0, int rows, const uint16_t* const* pf) {
  if (mm != MM) {
    if constexpr (MM < kRowGroup) rows_mm<MM + 1>(mm, xg, cp, wb, accs, first, last, out, ldo, m0, n0, rows, pf);
    return;
  }
  __m512 acc[MM];
  bf16dot::micro<MM>(xg, cp, wb, acc, pf, first ? nullptr : accs);
  if (!last) {
    for (int i = 0; i < MM; ++i) accs[i] = acc[i];
    return;
  }
  const __mmask16 live = (__mmask16)((1u << rows) - 1);
  for (int i = 0; i < MM; ++i) _mm512_mask_storeu_ps(out + (m0 + i) * ldo + n0, live, acc[i]);
}

LK_BG void tiles(const int32_t* xg, const uint16_t* w, int64_t ldw, float* out, int64_t ldo, int64_t M, int64_t N,
                 int64_t K, int64_t t0, int64_t t1) {
  const int64_t pairs = (K + 1) / 2, chunks = (pairs + kChunkPairs - 1) / kChunkPairs;
  // one packed chunk (aligned by hand) and the rows' running sums, kept per thread: a fresh buffer per call was a
  // page-faulted, zeroed allocation
  thread_local std::vector<uint8_t> buf;
  const size_t wbytes = (size_t)std::min(pairs, kChunkPairs) * 64, need = wbytes + (size_t)M * 64 + 64;
  if (buf.size() < need) buf.resize(need);
  __m512i* wb = (__m512i*)(((uintptr_t)buf.data() + 63) & ~(uintptr_t)63);
  __m512* accs = chunks > 1 ? (__m512*)((uint8_t*)wb + wbytes) : nullptr;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n0 = t * kTile;
    const int rows = (int)std::min<int64_t>(kTile, N - n0);
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t q0 = c * kChunkPairs, cp = std::min(kChunkPairs, pairs - q0);
      pack_tile(w + 2 * q0, ldw, n0, N, std::min<int64_t>(K - 2 * q0, 2 * cp), wb);
      // the next chunk's rows (this tile's, or the next tile's first; the last row repeated past N) prefetched
      // into L2 during the first row group, one line per pair step
      const uint16_t* next[kTile];
      const bool pf = c + 1 < chunks || t + 1 < t1;
      const int64_t nn0 = c + 1 < chunks ? n0 : n0 + kTile, nq0 = c + 1 < chunks ? q0 + kChunkPairs : 0;
      for (int i = 0; pf && i < kTile; ++i) next[i] = w + std::min<int64_t>(nn0 + i, N - 1) * ldw + 2 * nq0;
      for (int64_t m0 = 0; m0 < M; m0 += kRowGroup) {
        const int32_t* xc = xg + (m0 / kRowGroup * pairs + q0) * kRowGroup;  // the row group's pairs from q0
        rows_mm<1>((int)std::min<int64_t>(kRowGroup, M - m0), xc, cp, wb, accs ? accs + m0 : nullptr, c == 0,
                   c + 1 == chunks, out, ldo, m0, n0, rows, pf && m0 == 0 ? next : nullptr);
      }
    }
  }
}

// ---- AMX (cpu::amx_enabled()): TDPBF16PS tiles, blocked as mx's prefill kernel (mx/linear_packed_amx.h) ----
// Per thread: panels of up to kAmxPanel tiles of w and K chunks of up to kAmxChunk elements (pack_tile's pair
// vectors are AMX's B operand as they are), about kAmxPanelBytes of packed w per panel, 2 x 2 blocks of accumulator
// tiles over every 32 rows of x, whose rows are gathered once into A tiles. Same products and fp32 sums as above,
// summed in K order.
// Why rows in runs of up to 2048 elements (4 KB) and fewer tiles per panel while x's A tiles (a 512-row pass) take
// at most kAmxLongChunkXBytes: w is then read from memory once per call (moe's experts, cold), and reading each row
// in one run streams far better than in 1 KB pieces revisited per chunk: Qwen3-30B-A3B experts (bf16, no skip, ~16
// / ~256 tokens per expert) on the 2-core Xeon took 0.80-0.85x the time at T = 256 and 0.85-0.88x at T = 4096 with
// 2048-element chunks and 4-tile panels as with 512-element chunks and 16-tile panels. Larger A tiles outgrow L2
// and are re-read once per panel: sefp's 512-row prefill (hot decoded panels, K = 4096: 4 MB) ran 0.84-0.97x as
// fast with the long chunks, so it keeps short chunks and 16-tile panels. Short chunks of 256 elements, not 512: a
// tile pair's packed chunk (16 KB) and a pass of x over it (16 KB) then fit the 48 KB L1 together, as in mx's AMX
// kernel; sefp's M = 512 prefill on the shapes (m = 8, 4) 1.06-1.18x faster in an in-process A/B
// (docs/bench/sefp_amx_chunk256_ab_xeon.txt).
constexpr int kAmxPanel = 16;
constexpr int64_t kAmxChunk = 2048, kAmxShortChunk = 256, kAmxPanelBytes = 256 << 10;
constexpr int64_t kAmxLongChunkXBytes = 3 << 19;  // 1.5 MB of a 2 MB L2
constexpr int64_t kAmxMaxM = 512;

}  // namespace

// x rows (gathered) -> A tiles [ceil(M / 16), K / 32, 16, 32] bf16, rows past M zero (bf16_gemm.h).
void amx_pack_x(const uint16_t* x, int64_t ldx, const int64_t* xrows, int64_t M, int64_t K, uint16_t* xa) {
  const int64_t G = (M + 15) / 16, S = K / amx::kK;
  parallel_chunks(G, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int r = 0; r < 16; ++r) {
        const int64_t m = g * 16 + r;
        const uint16_t* row = m < M ? x + (xrows ? xrows[m] : m) * ldx : nullptr;
        for (int64_t st = 0; st < S; ++st) {
          uint16_t* dst = xa + ((g * S + st) * 16 + r) * amx::kK;
          if (row) std::copy(row + st * amx::kK, row + (st + 1) * amx::kK, dst);
          else std::fill(dst, dst + amx::kK, (uint16_t)0);
        }
      }
  });
}

namespace {

// PairCombine (bf16_gemm.h) of the 16 tokens from t0: hv[r] / lv[r] = token t0 + r's hi / lo sums over columns n0 ..
// n0 + 15 (those below N), lv nullptr for one part; tokens past pc.n are padding.
LK_BG void pair_combine(const PairCombine& pc, int64_t t0, const __m512* hv, const __m512* lv, int64_t n0, int64_t N) {
  const __mmask16 live = (__mmask16)((1u << std::min<int64_t>(kTile, N - n0)) - 1);
  const __m512 b = pc.b2 ? _mm512_maskz_loadu_ps(live, pc.b2 + n0) : _mm512_setzero_ps();
  const int rows = (int)std::min<int64_t>(16, pc.n - t0);
  for (int r = 0; r < rows; ++r) {
    const int64_t t = t0 + r;
    __m512 y = lv ? _mm512_add_ps(hv[r], lv[r]) : hv[r];
    if (pc.b2) y = _mm512_add_ps(y, b);
    float* o = pc.out + (pc.tok ? pc.tok[t] : t) * pc.ldo + n0;
    if (pc.w) y = _mm512_add_ps(_mm512_maskz_loadu_ps(live, o), _mm512_mul_ps(y, _mm512_set1_ps(pc.w[t])));
    _mm512_mask_storeu_ps(o, live, y);
  }
}

// pc: out is not written; x's rows are (hi, lo) 16-row group pairs and pair_combine takes the finished tiles.
LK_AMX_FN void amx_tiles(const uint16_t* xa, const uint16_t* w, int64_t ldw, float* out, int64_t ldo, int64_t M,
                         int64_t N, int64_t K, int64_t t0, int64_t t1, const PairCombine* pc) {
  const bool long_chunks = std::min(M, kAmxMaxM) * K * 2 <= kAmxLongChunkXBytes;  // x's A tiles of one pass fit L2
  const int64_t chunk = std::min<int64_t>(long_chunks ? kAmxChunk : kAmxShortChunk, K);
  const int64_t wtile = chunk * 32;  // bytes of a tile's packed chunk
  const int panel = (int)std::max<int64_t>(2, std::min<int64_t>(kAmxPanel, kAmxPanelBytes / wtile));  // tiles
  thread_local std::vector<uint8_t> wraw, craw;
  if (wraw.size() < (size_t)(panel * wtile + 64)) wraw.resize((size_t)(panel * wtile + 64));
  if (craw.size() < (size_t)((kAmxMaxM / 16) * kAmxPanel * 1024 + 64)) craw.resize((size_t)((kAmxMaxM / 16) * kAmxPanel * 1024 + 64));
  uint8_t* const wbuf = (uint8_t*)(((uintptr_t)wraw.data() + 63) & ~(uintptr_t)63);
  float* const cbuf = (float*)(((uintptr_t)craw.data() + 63) & ~(uintptr_t)63);
  const uint8_t* const xb = reinterpret_cast<const uint8_t*>(xa);
  const int64_t xs = K / amx::kK * amx::kTileBytes;  // bytes per 16 rows of x
  amx::configure();
  for (int64_t mb = 0; mb < M; mb += kAmxMaxM) {
    const int64_t mrows = std::min<int64_t>(kAmxMaxM, M - mb);
    const int groups = (int)((mrows + 15) / 16);
    for (int64_t p0 = t0; p0 < t1; p0 += panel) {
      const int pt = (int)std::min<int64_t>(panel, t1 - p0);
      for (int64_t k0 = 0; k0 < K; k0 += chunk) {
        const int64_t kc = std::min<int64_t>(chunk, K - k0);
        const bool first = k0 == 0, last = k0 + kc == K;
        for (int j = 0; j < pt; ++j) pack_tile(w + k0, ldw, (p0 + j) * kTile, N, kc, (__m512i*)(wbuf + j * wtile));
        const uint8_t* xk = xb + mb / 16 * xs + k0 / amx::kK * amx::kTileBytes;
        for (int j = 0; j < pt; j += 2)
          for (int g = 0; g < groups; g += 2) {
            const bool two_m = g + 1 < groups, two_n = j + 1 < pt;
            float* c = cbuf + ((int64_t)g * kAmxPanel + j) * amx::kTileFloats;
            amx::block_any(two_m, two_n, xk + (int64_t)g * xs, xs, wbuf + j * wtile, wtile, (int)(kc / amx::kK), c,
                           kAmxPanel, first);
            if (!last) continue;
            if (pc) {  // two parts: groups come in pairs (two_m)
              for (int jj = j; jj < j + (two_n ? 2 : 1); ++jj) {
                const float* ct = c + (jj - j) * amx::kTileFloats;
                __m512 hv[16], lv[16];
                for (int r = 0; r < 16; ++r) hv[r] = _mm512_load_ps(ct + r * 16);
                if (pc->parts == 1) {
                  pair_combine(*pc, mb + (int64_t)g * 16, hv, nullptr, (p0 + jj) * kTile, N);
                  if (!two_m) continue;
                  for (int r = 0; r < 16; ++r) hv[r] = _mm512_load_ps(ct + kAmxPanel * amx::kTileFloats + r * 16);
                  pair_combine(*pc, mb + (int64_t)g * 16 + 16, hv, nullptr, (p0 + jj) * kTile, N);
                  continue;
                }
                for (int r = 0; r < 16; ++r) lv[r] = _mm512_load_ps(ct + kAmxPanel * amx::kTileFloats + r * 16);
                pair_combine(*pc, (mb + (int64_t)g * 16) / 2, hv, lv, (p0 + jj) * kTile, N);
              }
              continue;
            }
            for (int i = 0; i < (two_m ? 2 : 1); ++i)  // the finished tiles -> out, while in L1
              for (int jj = j; jj < j + (two_n ? 2 : 1); ++jj) {
                const int64_t m0 = mb + (int64_t)(g + i) * 16, n0 = (p0 + jj) * kTile;
                const int rows = (int)std::min<int64_t>(16, M - m0);
                const __mmask16 live = (__mmask16)((1u << std::min<int64_t>(kTile, N - n0)) - 1);
                const float* ct = c + ((int64_t)i * kAmxPanel + (jj - j)) * amx::kTileFloats;
                for (int r = 0; r < rows; ++r)
                  _mm512_mask_storeu_ps(out + (m0 + r) * ldo + n0, live, _mm512_load_ps(ct + r * 16));
              }
          }
      }
    }
  }
  amx::release();
}

// ---- AMX with w as the A operand (M <= g_wa_rows) ----
// Why: w is read cold (moe's experts), and the packed form above spends much of its time reading it, transposing
// it into B tiles and reading those again. Here w's rows are A tiles where they lie (tileloadd with w's row stride,
// each row read from memory once), x's rows are packed once into B tiles (pack_pairs: the pair vectors w's B tiles
// are made of), and the C tiles come out transposed (rows of w x rows of x), turned back by transpose16 on their
// way out. Every sum has the same products in the same order: out equals the packed form's bit for bit.
// Measured on the 2-core Xeon, moe's experts (bf16, no skip): Qwen3-30B-A3B T = 256 (~16 tokens per expert) 0.83x
// the packed form's time. The K chunks below, against whole-K blocks: Qwen3 T = 1024 0.90x, Mixtral-8x7B T = 256
// 0.83x; and taking up to 1024 rows in place instead of 256: Qwen3 T = 4096 0.93x (its down projection's 512 pair
// rows). Software prefetch of w's rows (per row, 256 B - 2 KB ahead, or the next tiles' rows in linear order into
// L2) was 0-10% slower.
std::atomic<int64_t> g_wa_rows{1024};
// K steps per chunk with more than two groups of x: a pair of w's tiles over 8 steps is 16 KB, half of L1, so the
// groups after the first read it from L1 (4: equal at T = 1024, 16: 1.08x slower on Mixtral).
constexpr int kWaChunkSteps = 8;

// x's rows (gathered) -> B tiles [ceil(M / 16), K / 32, 16 pairs, 16 rows] (rows past M zero).
void wa_pack_x(const uint16_t* x, int64_t ldx, const int64_t* xrows, int64_t M, int64_t K, uint8_t* xb) {
  const int64_t xs = K / amx::kK * amx::kTileBytes;
  parallel_chunks((M + 15) / 16, 1, [&](int64_t g0, int64_t g1) {  // (inline inside a parallel region)
    for (int64_t m0 = g0 * 16; m0 < std::min(M, g1 * 16); m0 += 16)
      pack_pairs([&](int i) { return x + (xrows ? xrows[m0 + i] : m0 + i) * ldx; },
                 (int)std::min<int64_t>(16, M - m0), K, (int32_t*)(xb + m0 / 16 * xs), kTile);
  });
}

// C^T tile ct (16 rows of w x 16 rows of x, fp32) -> o[m] (lane n: row n of w, row m of x).
LK_BG void wa_turn(const float* ct, __m512* o) {
  __m512i r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(ct + i * 16);
  transpose16(r, t);
  for (int i = 0; i < 16; ++i) o[i] = _mm512_castsi512_ps(t[i]);
}

template <int MA, int NB>
LK_AMX_FN void wa_block(const uint8_t* a0, int64_t a_ld, const uint8_t* b0, int64_t xs, int steps, float* c,
                        bool fresh) {
  amx::block_strided<MA, NB>(a0, 16 * a_ld, a_ld, 64, b0, xs, steps, c, 2, fresh);
}

// Tiles [t0, t1) of w (16 rows each; a full tile's rows read in place, the last partial one from a zero-padded
// copy) against every row of x: out rows [0, M), columns [16 t0, min(N, 16 t1)); or pc (amx_tiles' meaning).
// More than 32 rows of x: K in chunks of kWaChunkSteps steps, each chunk's A tiles (16 KB for a pair) read from
// memory by the first pair of x's groups and from L1 by the others, the accumulators kept in cbuf between chunks.
LK_AMX_FN void wa_tiles(const uint8_t* xb, int64_t M, const uint16_t* w, int64_t ldw, float* out, int64_t ldo,
                        int64_t N, int64_t K, int64_t t0, int64_t t1, const PairCombine* pc) {
  const int steps = (int)(K / amx::kK);
  const int64_t xs = steps * amx::kTileBytes, groups = (M + 15) / 16, full = N / kTile;
  const int kc = groups > 2 ? std::min(kWaChunkSteps, steps) : steps;
  thread_local std::vector<float> craw;  // 4 accumulator tiles per pair of x's groups (+ alignment)
  craw.resize((size_t)((groups + 1) / 2 * 4 * amx::kTileFloats + 16));
  float* const cbuf = (float*)(((uintptr_t)craw.data() + 63) & ~(uintptr_t)63);
  thread_local std::vector<uint16_t> pad;  // the partial tile's rows, zero-padded to 16
  amx::configure();
  for (int64_t t = t0; t < t1;) {
    const bool two_n = t + 1 < std::min(t1, full);  // two full tiles of w
    const uint8_t* a0 = reinterpret_cast<const uint8_t*>(w + t * kTile * ldw);
    int64_t a_ld = ldw * 2;
    if (t >= full) {  // the partial tile: its N % 16 rows, then zeros
      pad.assign((size_t)(kTile * K), 0);
      for (int64_t n = t * kTile; n < N; ++n) std::copy(w + n * ldw, w + n * ldw + K, pad.data() + (n - t * kTile) * K);
      a0 = reinterpret_cast<const uint8_t*>(pad.data());
      a_ld = K * 2;
    }
    for (int s0 = 0; s0 < steps; s0 += kc) {
      const int ns = std::min(kc, steps - s0);
      const bool fresh = s0 == 0, last = s0 + ns == steps;
      const uint8_t* as = a0 + (int64_t)s0 * 64;
      for (int64_t g = 0; g < groups; g += 2) {
        const bool two_m = g + 1 < groups;
        const uint8_t* b0 = xb + g * xs + (int64_t)s0 * amx::kTileBytes;
        float* c = cbuf + g / 2 * 4 * amx::kTileFloats;
        if (two_n && two_m) wa_block<2, 2>(as, a_ld, b0, xs, ns, c, fresh);
        else if (two_n) wa_block<2, 1>(as, a_ld, b0, xs, ns, c, fresh);
        else if (two_m) wa_block<1, 2>(as, a_ld, b0, xs, ns, c, fresh);
        else wa_block<1, 1>(as, a_ld, b0, xs, ns, c, fresh);
        if (!last) continue;
        for (int i = 0; i < (two_n ? 2 : 1); ++i) {
          const int64_t n0 = (t + i) * kTile;
          __m512 o[2][16];
          for (int j = 0; j < (two_m ? 2 : 1); ++j) wa_turn(c + (i * 2 + j) * amx::kTileFloats, o[j]);
          if (pc && pc->parts == 1) {
            for (int j = 0; j < (two_m ? 2 : 1); ++j) pair_combine(*pc, (g + j) * 16, o[j], nullptr, n0, N);
            continue;
          }
          if (pc) {  // two parts: groups come in pairs (two_m)
            pair_combine(*pc, g * 8, o[0], o[1], n0, N);
            continue;
          }
          const __mmask16 live = (__mmask16)((1u << std::min<int64_t>(kTile, N - n0)) - 1);
          for (int j = 0; j < (two_m ? 2 : 1); ++j)
            for (int64_t m = (g + j) * 16; m < std::min(M, (g + j + 1) * 16); ++m)
              _mm512_mask_storeu_ps(out + m * ldo + n0, live, o[j][m % 16]);
        }
      }
    }
    t += two_n ? 2 : 1;
  }
  amx::release();
}

// The AMX GEMM on x's rows (gathered): w in place as A tiles for M <= g_wa_rows, else packed; into out or
// pc.
bool amx_gemm(const uint16_t* x, int64_t ldx, const int64_t* xrows, const uint16_t* w, int64_t ldw, float* out,
              int64_t ldo, int64_t M, int64_t N, int64_t K, const PairCombine* pc) {
  const int64_t T = (N + kTile - 1) / kTile;
  if (M <= g_wa_rows.load(std::memory_order_relaxed)) {
    std::unique_ptr<uint8_t[]> raw(new uint8_t[(size_t)((M + 15) / 16 * K * 32 + 64)]);
    uint8_t* xb = (uint8_t*)(((uintptr_t)raw.get() + 63) & ~(uintptr_t)63);
    wa_pack_x(x, ldx, xrows, M, K, xb);
    // runs of an even number of tiles (pairs share each B tile load), about 4 per thread
    const int64_t chunk = (streaming_chunk(T, 2) + 1) / 2 * 2;
    parallel_chunks(T, chunk, [&](int64_t t0, int64_t t1) { wa_tiles(xb, M, w, ldw, out, ldo, N, K, t0, t1, pc); });
    return true;
  }
  std::unique_ptr<uint16_t[]> xa(new uint16_t[(size_t)amx_x_tiles_elems(M, K)]);  // (every element written below)
  amx_pack_x(x, ldx, xrows, M, K, xa.get());
  // panels of up to kAmxPanel tiles, but enough of them for every thread (a 256-row w was one task)
  const int64_t per = std::max<int64_t>(1, std::min<int64_t>(kAmxPanel, (T + at::get_num_threads() - 1) / at::get_num_threads()));
  parallel_chunks(T, per, [&](int64_t t0, int64_t t1) { amx_tiles(xa.get(), w, ldw, out, ldo, M, N, K, t0, t1, pc); });
  return true;
}

}  // namespace

int64_t set_bf16_gemm_wa_rows(int64_t rows) { return g_wa_rows.exchange(std::max<int64_t>(0, rows)); }

bool bf16_gemm_nt_pairs(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t ldw, const PairCombine& pc,
                        int64_t N, int64_t K) {
  if (K % amx::kK != 0 || !amx_enabled()) return false;
  if (pc.n <= 0 || N <= 0) return true;
  return amx_gemm(x, ldx, nullptr, w, ldw, nullptr, 0, pair_rows(pc.n, pc.parts), N, K, &pc);
}

bool bf16_gemm_nt(const uint16_t* x, int64_t ldx, const int64_t* xrows, const uint16_t* w, int64_t ldw, float* out,
                  int64_t ldo, int64_t M, int64_t N, int64_t K) {
  if (active_isa() != Isa::kAvx512Bf16) return false;
  if (M <= 0 || N <= 0) return true;
  if (K <= 0) {
    for (int64_t m = 0; m < M; ++m) std::fill(out + m * ldo, out + m * ldo + N, 0.0f);
    return true;
  }
  if (K % amx::kK == 0 && amx_enabled()) return amx_gemm(x, ldx, xrows, w, ldw, out, ldo, M, N, K, nullptr);
  const int64_t pairs = (K + 1) / 2, G = (M + kRowGroup - 1) / kRowGroup;
  // [G, pairs, 24], every element written below (rows past M: zeros); the calling thread's, grown on demand (a
  // fresh zero-filled vector per call was 5% of Mixtral-8x7B's experts at T = 256 on Zen 4, with the tile buffer)
  thread_local std::vector<int32_t> xg_buf;
  if (xg_buf.size() < (size_t)(G * pairs * kRowGroup)) xg_buf.resize((size_t)(G * pairs * kRowGroup));
  int32_t* xg = xg_buf.data();
  parallel_chunks(G, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const uint16_t* rows[kRowGroup];
      for (int i = 0; i < kRowGroup; ++i) {
        const int64_t m = g * kRowGroup + i;
        rows[i] = m < M ? x + (xrows ? xrows[m] : m) * ldx : nullptr;
      }
      pack_x_group(rows, K, xg + g * pairs * kRowGroup);
    }
  });
  const int64_t T = (N + kTile - 1) / kTile;
  // row blocks of kBlockGroups row groups (why: its comment), each a full pass over w's tiles
  for (int64_t g0 = 0; g0 < G; g0 += kBlockGroups) {
    const int64_t m0 = g0 * kRowGroup, mb = std::min(M - m0, kBlockGroups * kRowGroup);
    parallel_chunks(T, 1, [&](int64_t t0, int64_t t1) {
      tiles(xg + g0 * pairs * kRowGroup, w, ldw, out + m0 * ldo, ldo, mb, N, K, t0, t1);
    });
  }
  return true;
}

int64_t amx_x_tiles_elems(int64_t M, int64_t K) { return (M + 15) / 16 * 16 * K; }

bool bf16_gemm_nt_amx(const uint16_t* xa, const uint16_t* w, int64_t ldw, float* out, int64_t ldo, int64_t M,
                      int64_t N, int64_t K) {
  if (K % amx::kK != 0 || !amx_enabled()) return false;  // (amx_enabled(): the avx512bf16 ISA is active)
  if (M <= 0 || N <= 0) return true;
  const int64_t T = (N + kTile - 1) / kTile;
  // panels of up to kAmxPanel tiles, but enough of them for every thread (a 256-row w was one task)
  const int64_t per = std::max<int64_t>(1, std::min<int64_t>(kAmxPanel, (T + at::get_num_threads() - 1) / at::get_num_threads()));
  parallel_chunks(T, per, [&](int64_t t0, int64_t t1) { amx_tiles(xa, w, ldw, out, ldo, M, N, K, t0, t1, nullptr); });
  return true;
}

}  // namespace cpu
}  // namespace leankern

#else
namespace leankern {
namespace cpu {
bool bf16_gemm_nt(const uint16_t*, int64_t, const int64_t*, const uint16_t*, int64_t, float*, int64_t, int64_t, int64_t,
                  int64_t) {
  return false;
}
int64_t amx_x_tiles_elems(int64_t M, int64_t K) { return (M + 15) / 16 * 16 * K; }
void amx_pack_x(const uint16_t*, int64_t, const int64_t*, int64_t, int64_t, uint16_t*) {}
int64_t set_bf16_gemm_wa_rows(int64_t) { return 0; }
bool bf16_gemm_nt_pairs(const uint16_t*, int64_t, const uint16_t*, int64_t, const PairCombine&, int64_t, int64_t) {
  return false;
}
bool bf16_gemm_nt_amx(const uint16_t*, const uint16_t*, int64_t, float*, int64_t, int64_t, int64_t, int64_t) {
  return false;
}
}  // namespace cpu
}  // namespace leankern
#endif
