// The few-rows kernel (linear_packed_bf16_small.h) with fp32 FMAs instead of vdpbf16ps, for CPUs
// where vdpbf16ps is the slower product: 4-bit weights (block_size % 8 == 0, AVX512-VBMI) and every 6 / 8-bit
// format, x read as fp32 (PackedLinearArgs::x: bf16 x converted exactly; fp32 / fp16 x and NV dual
// x_hat, which the vdpbf16ps form cannot take, as the fp32 kernel reads them).
//
// Not a normal header: linear_packed_bf16_small.h includes it (I, kPR, LK_BFV, kSmallPrefetch,
// quad_transpose_index, table4_i8, block_scales, decode_w, fold_block, store_rows come from there).
//
// Why: on an Intel Xeon with AMX (Golden Cove cores) vdpbf16ps zmm retires one per ~2.2 core cycles
// (16 multiply-adds per cycle) while fp32 FMAs retire two per cycle (32); measured with
// independent chains on this project's 2-core Xeon (TSC 2.6 GHz, cores ~3.7 GHz): vdpbf16ps 1.44 TSC
// ticks per instruction, vfmadd231ps 0.35. On Zen 4 it is the other way round (one 512-bit FMA per
// cycle, vdpbf16ps 32 products per cycle), so the switch (mx::few_rows_fma_enabled) is on by default
// only where the CPU has AMX. The decode is as cheap as the bf16 one: 4-bit codes are transposed by
// the quad decoder's vpermb (lane r = row r's code bytes q .. q + 3), and the nibble at shift 4 i is
// looked up by vpermps, which reads exactly 4 index bits (16 fp32 values: element value * 2^D); 6 / 8-bit
// codes go through decode_w (INT: sign-extended and converted; FP8 / FP6: the fp16 pattern and vcvtph2ps, E4M3
// blocks holding NaN codes the exact decode, as block_scales says). One FMA per 16 weights and row of x.
// FP8 / FP6 joined later (A/B on the Xeon, cold, M = 1 / 4: 1.07-1.28x the vdpbf16ps form's quad8 decoder).
// Numerics: the same exact products (fp32 x times an exact decoded weight), fp32 sums per block in
// another order, the block scale folded as in small_tile. Unlike vdpbf16ps, subnormal x counts.

// The 16 fp32 values of a 4-bit format (element value * 2^D): vpermps' table.
template <int EL>
const float* table4_f32() {
  struct Table {
    alignas(64) float v[16];
    Table() {
      for (int c = 0; c < 16; ++c) v[c] = (float)table4_i8<EL>()[c];
    }
  };
  static const Table t;
  return t.v;
}

// Why L1 and 2 KB, not quad_tile's L2 and 4 KB (measured on Zen 4): on the 2-core Xeon, cold 4-bit GEMV (M = 1,
// mxfp4 / nvfp4, 4096 x 4096 and 14336 x 4096; 3 alternating runs each) took 0.86-0.91x the time with prefetcht0
// 2 KB ahead as with prefetcht1 4 KB ahead; 1-2 KB were alike, 512 B and 4 KB+ slower, a second far prefetcht1 no help.
// The 8-bit distance (1 KB) measured alike from 512 B to 2 KB.
constexpr int64_t kFmaPrefetch = 2048;

// acc += w * x (x broadcast from memory: one instruction, as the bf16 kernel's vdpbf16ps)
#define LK_FMA_BCAST(acc, w, xp) asm("vfmadd231ps %[x]%{1to16%}, %[wv], %[a]" : [a] "+v"(acc) : [wv] "v"(w), [x] "m"(*(xp)))

// One block's unscaled sums of an 8 / 6-bit format (codes: its code area, element k of the 16 rows at k * kPR;
// xb: row 0's block of x, row stride K) in S independent sets. FAST: decode_w's fp16-pattern decode of FP8 / FP6
// (INT: always exact); not FAST: E4M3 blocks holding NaN codes, the exact element values.
template <int EL, int MM, int S, bool FAST>
LK_BFV void fma_wide_sums(const uint8_t* codes, const float* xb, int64_t K, int bs, __m512 (&bacc)[S][MM]) {
  int k = 0;
  for (; k + S <= bs; k += S) {
#pragma GCC unroll 8
    for (int j = 0; j < S; ++j) {
      const __m512 w = _mm512_castsi512_ps(decode_w<EL, FAST>(codes + (k + j) * kPR));
      for (int m = 0; m < MM; ++m) LK_FMA_BCAST(bacc[j][m], w, xb + m * K + k + j);
    }
  }
  for (; k < bs; ++k) {
    const __m512 w = _mm512_castsi512_ps(decode_w<EL, FAST>(codes + k * kPR));
    for (int m = 0; m < MM; ++m) LK_FMA_BCAST(bacc[0][m], w, xb + m * K + k);
  }
}

// MM rows of x (from row m0) times one row tile.
template <int EL, bool NV, int MM>
LK_BFV void fma_tile(const PackedLinearArgs& a, const uint8_t* tile, int64_t m0, int64_t n0, int rows) {
  constexpr bool four = elem_params(EL).bits == 4;
  constexpr int S = MM == 1 ? 4 : MM <= 4 ? 2 : 1;  // FMA chains of latency 4: the decode keeps them at <= 2 / 3 per cycle
  const int bs = a.block_size;
  const int64_t nb = a.K / bs, K = a.K;
  const float* x = a.x + m0 * K;
  __m512 tab = _mm512_setzero_ps();
  I tidx = _mm512_setzero_si512();
  if constexpr (four) {
    tab = _mm512_load_ps(table4_f32<EL>());
    tidx = _mm512_load_si512(quad_transpose_index());
  }
  __m512 acc[MM];
  for (int m = 0; m < MM; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = tile + b * a.block_bytes;
    // the whole block into L1, kFmaPrefetch (4-bit) / kSmallPrefetch (INT) bytes ahead
    for (int64_t off = 0; off < a.block_bytes; off += 64)
      __builtin_prefetch(blk + (four ? kFmaPrefetch : kSmallPrefetch) + off);
    I sc;
    float pre = 1.0f;
    const bool exact = block_scales<EL, NV>(blk, four ? bs / 2 : bs, &sc, &pre);  // (E4M3 blocks with NaN codes)
    __m512 bacc[S][MM];
    for (int j = 0; j < S; ++j)
      for (int m = 0; m < MM; ++m) bacc[j][m] = _mm512_setzero_ps();
    const float* xb = x + b * bs;
    const uint8_t* codes = blk + kPR;
    if constexpr (four) {
      for (int g = 0; g < bs / 8; ++g) {  // 64 code bytes: elements 8 g .. 8 g + 7 of the 16 rows
        const I v = _mm512_permutexvar_epi8(tidx, _mm512_loadu_si512(codes + 64 * g));
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) {
          const __m512 w = _mm512_permutexvar_ps(i ? _mm512_srli_epi32(v, 4 * i) : v, tab);
          for (int m = 0; m < MM; ++m) LK_FMA_BCAST(bacc[i % S][m], w, xb + m * K + 8 * g + i);
        }
      }
    } else if (exact) {
      fma_wide_sums<EL, MM, S, false>(codes, xb, K, bs, bacc);
    } else {
      fma_wide_sums<EL, MM, S, true>(codes, xb, K, bs, bacc);
    }
    fold_block(bacc, pre, sc, acc);
  }
  store_rows<NV>(a, acc, m0, n0, rows);
}
#undef LK_FMA_BCAST

// Whether fma_tile runs for these arguments (the op sets a.x, fp32, where the form is on).
inline bool fma_tile_takes(const PackedLinearArgs& a) {
  return a.x && few_rows_fma_enabled() && few_rows_fma_takes(a.fmt, a.block_size);
}
