// The prepacked block-quantized linear with AVX512-BF16 dot products for few rows of x (decode,
// M < kBf16PrefillMinRows of linear_packed_cpu.cpp): the avx512bf16 ISA's kernel for bf16 x (or an MX dual x_hat) below the
// prefill kernel of linear_packed_bf16.h. y = x @ W_hat^T (+ bias), fp32 accumulation.
//
// Not a normal header: linear_avx512.cpp includes it after linear_packed_bf16.h, inside namespace
// lin (I, kPR, PackedElem, table4_i8, block_scales, packed_store, decode_w, bf16_pair, LK_BF come
// from there).
//
// Why a third kernel: at M = 1 the fp32 kernel spends ~17 instructions per 32 4-bit weights
// (pshufb table, spill to memory, int8 -> int32 -> fp32, one FMA per weight and row), which makes a
// GEMV compute-bound at under half the read bandwidth. Here one code vector of the tile (byte q of
// its 16 rows: elements 2q, 2q + 1 of each) becomes one vector of bf16 pairs in registers (lane r =
// row r) in 4 instructions, and each row of x takes one vdpbf16ps for those 32 weights:
//  * 4-bit: vpmovzxbd (a byte per lane), (b | b << 12) & 0x000F000F (the two nibbles as the lane's
//    two 16-bit indices), vpermw from a 16-entry table of bf16 patterns (element value * 2^D);
//  * 8 / 6-bit: decode_w of elements 2q and 2q + 1 (exact fp32 with at most 8 significant bits, so
//    the bf16 is the upper half), interleaved by bf16_pair.
// Nothing is stored: unlike the prefill kernel no decoded tile is written to L2, the codes stream
// through once and the tile's blocks are re-read from L1 / L2 only for passes of more than kSM rows.
// Per block the unscaled sums bacc get the rows' block scales (block_scales, as in packed_tile):
// acc += bacc * scale. Numerics are those of the unfolded prefill path: exact products, fp32 sums
// in another order than the fp32 kernel's, and vdpbf16ps treats bf16 subnormal x as zero.
// On CPUs with AVX512-VBMI, quad_tile below replaces the decode for 4-bit and for 8 / 6-bit formats
// but MXINT8 (64 code bytes at a time); small_tile stays for MXINT8, block sizes 2 (and 4 for
// 4-bit), and Cooper Lake.

constexpr int kSM = 8;
constexpr int64_t kSmallPrefetch = 1024;  // rows of x per pass: 2 * kSM accumulators + code, table and temporaries <= 32

// bf16 patterns of a 4-bit format's decoded values (element value * 2^D, exact in bf16), as the
// 32-word table of vpermw, doubled (word c + 16 = word c): vpermw reads 5 index bits, and the quad
// decoder below leaves one bit of the neighbouring nibble in the fifth.
template <int EL>
const uint16_t* table4_bf16() {
  struct Table {
    alignas(64) uint16_t v[32] = {};
    Table() {
      const int8_t* t = table4_i8<EL>();
      for (int c = 0; c < 32; ++c) v[c] = (uint16_t)(f2u((float)t[c & 15]) >> 16);  // small integers: low half 0
    }
  };
  static const Table t;
  return t.v;
}

// Code byte q of the 16 rows (16 bytes at p) -> 16 lanes of bf16 pairs (low half: low nibble).
LK_BF I small_pairs4(const uint8_t* p, I tab) {
  const I b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
  // (A | B) & C with A = b, B = b << 12, C = 0x000F000F: imm 0xA8
  const I idx = _mm512_ternarylogic_epi32(b, _mm512_slli_epi32(b, 12), _mm512_set1_epi32(0x000F000F), 0xA8);
  return _mm512_permutexvar_epi16(idx, tab);
}

// Pair vector q of one block (codes: its 16-row code area).
template <int EL, bool FAST>
LK_BF I small_pairs(const uint8_t* codes, int q, I tab) {
  if constexpr (elem_params(EL).bits == 4)
    return small_pairs4(codes + q * kPR, tab);
  else
    return bf16_pair(decode_w<EL, FAST>(codes + 2 * q * kPR), decode_w<EL, FAST>(codes + (2 * q + 1) * kPR));
}

// One block's unscaled sums of MM rows of x (xb: row 0's pairs of this block, row stride xs pairs)
// in S independent sets (pair q into set q % S: enough vdpbf16ps chains in flight for few rows).
template <int EL, int MM, int S, bool FAST>
LK_BF void small_block_sums(const uint8_t* codes, const int32_t* xb, int64_t xs, int pairs, I tab,
                            __m512 (&bacc)[S][MM]) {
  for (int q0 = 0; q0 < pairs; q0 += S) {
#pragma GCC unroll 4
    for (int j = 0; j < S; ++j) {
      const int q = q0 + j;
      if (q >= pairs) break;
      const I wv = small_pairs<EL, FAST>(codes, q, tab);
      // the pair (x[m, 2q], x[m, 2q + 1]) as an embedded broadcast operand (GCC does not fold
      // _mm512_set1_epi32 of a load into vdpbf16ps by itself)
      for (int m = 0; m < MM; ++m)
        asm("vdpbf16ps %[x]%{1to16%}, %[w], %[acc]" : [acc] "+v"(bacc[j][m]) : [w] "v"(wv), [x] "m"(xb[m * xs + q]));
    }
  }
}

// One block's S sets of unscaled sums -> acc[m] += (their sum) * pre * the rows' block scales sc.
template <int S, int MM>
LK_BF void fold_block(__m512 (&bacc)[S][MM], float pre, I sc, __m512 (&acc)[MM]) {
  for (int j = 1; j < S; ++j)
    for (int m = 0; m < MM; ++m) bacc[0][m] = _mm512_add_ps(bacc[0][m], bacc[j][m]);
  if (pre != 1.0f)
    for (int m = 0; m < MM; ++m) bacc[0][m] = _mm512_mul_ps(bacc[0][m], _mm512_set1_ps(pre));
  for (int m = 0; m < MM; ++m) acc[m] = _mm512_fmadd_ps(bacc[0][m], _mm512_castsi512_ps(sc), acc[m]);
}

// The tile's sums of MM rows of x (from row m0) -> y (times g for NV, plus bias).
template <bool NV, int MM>
LK_BF void store_rows(const PackedLinearArgs& a, const __m512 (&acc)[MM], int64_t m0, int64_t n0, int rows) {
  for (int m = 0; m < MM; ++m) {
    const I v = _mm512_castps_si512(acc[m]);
    packed_store(a, m0 + m, n0, rows, &v, NV ? a.g : 1.0f);
  }
}

// MM rows of x (from row m0) times one row tile.
template <int EL, bool NV, int MM>
LK_BF void small_tile(const PackedLinearArgs& a, const uint8_t* tile, int64_t m0, int64_t n0, int rows) {
  constexpr bool four = elem_params(EL).bits == 4;
  constexpr int S = MM == 1 ? 4 : MM == 2 ? 2 : 1;  // >= 4 chains (vdpbf16ps latency ~ 5-6, 1-2 per cycle)
  const int bs = a.block_size, pairs = bs / 2;
  const int64_t nb = a.K / bs, xs = a.K / 2;
  const int32_t* x = a.xb + m0 * xs;
  I tab = _mm512_setzero_si512();
  if constexpr (four) tab = _mm512_load_si512(table4_bf16<EL>());
  __m512 acc[MM];
  for (int m = 0; m < MM; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = tile + b * a.block_bytes;
    // the whole block kSmallPrefetch bytes ahead (the next tile's first blocks near a tile's end; a
    // thread's tiles are contiguous): measured faster than the hardware prefetcher alone or one
    // line per block (Zen 4, cold weights)
    for (int64_t off = 0; off < a.block_bytes; off += 64) __builtin_prefetch(blk + kSmallPrefetch + off);
    I sc;
    float pre;
    const bool exact = block_scales<EL, NV>(blk, four ? pairs : bs, &sc, &pre);
    __m512 bacc[S][MM];
    for (int j = 0; j < S; ++j)
      for (int m = 0; m < MM; ++m) bacc[j][m] = _mm512_setzero_ps();
    if (!four && exact)  // E4M3 blocks holding NaN codes: the exact element values
      small_block_sums<EL, MM, S, false>(blk + kPR, x + b * pairs, xs, pairs, tab, bacc);
    else
      small_block_sums<EL, MM, S, true>(blk + kPR, x + b * pairs, xs, pairs, tab, bacc);
    fold_block(bacc, pre, sc, acc);
  }
  store_rows<NV>(a, acc, m0, n0, rows);
}

// ---- 4-bit weights on CPUs with AVX512-VBMI (every AVX512-BF16 CPU but Cooper Lake), block_size % 8 == 0.
// Why: small_pairs4 spends 4 instructions per 32 weights, two of them cross-lane (vpmovzxbd, vpermw),
// and the GEMV was bound by them (~3.7 core cycles per 32 weights on Zen 4, ~0.7 of the read
// bandwidth). Here one 64-byte load (code bytes q .. q + 3 of the 16 rows, q = 4 g) becomes 4 pair
// vectors in 8 instructions: a vpermb transposes it so that lane r holds row r's 4 bytes, then
// vpermw looks up the nibbles at shifts 0, 4, 8, 12 of each 16-bit word (2 instructions per 32
// weights; in cache 1.9 instead of 3.0 cycles per 32 weights at M = 1). Lane r's words then hold
// elements (8g + j, 8g + 4 + j) of row r for shift 4 j, so x comes as the pairs of xb8 (kernels.h).
// The products and their per-block fp32 sums are those of small_tile, in another order.
constexpr int64_t kQuadPrefetch = 4096;
#define LK_BFV __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vbmi,avx2,f16c,fma"))) inline

// Byte (j, r) of a 64-byte group ([q][row]) -> byte 4 r + j: lane r gets row r's bytes q .. q + 3.
inline const uint8_t* quad_transpose_index() {
  struct Index {
    alignas(64) uint8_t v[64];
    Index() {
      for (int r = 0; r < kPR; ++r)
        for (int j = 0; j < 4; ++j) v[4 * r + j] = (uint8_t)(kPR * j + r);
    }
  };
  static const Index i;
  return i.v;
}

// Group g of a block's code area (64 bytes at p) -> w[j]: lane r = row r's elements (8g + j, 8g + 4 + j).
LK_BFV void quad_pairs4(const uint8_t* p, I tidx, I tab, I (&w)[4]) {
  const I v = _mm512_permutexvar_epi8(tidx, _mm512_loadu_si512(p));
  w[0] = _mm512_permutexvar_epi16(v, tab);                         // low nibbles of bytes 0 and 2
  w[1] = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), tab);   // high nibbles of bytes 0 and 2
  w[2] = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 8), tab);   // low nibbles of bytes 1 and 3
  w[3] = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 12), tab);  // high nibbles of bytes 1 and 3
}

// ---- 8 / 6-bit MX weights (all but MXINT8, whose 256 codes need more than 7 index bits), same CPUs,
// block_size % 4 == 0. Why: the fp16-pattern decode of small_pairs costs ~12 core cycles per 32 E4M3
// weights on Zen 4 (two vpmovzxbd, the pattern, two vcvtph2ps, the pair), 3x the memory time of a
// GEMV. Here a code byte indexes two 128-byte tables (vpermi2b reads 7 index bits) holding the
// bytes of its exact bf16 value (element value * 2^0: every FP8 / FP6 / INT6 value is a normal bf16,
// NaN and Inf codes included, so no block needs an exact path and no scale can overflow); FP8's
// sign (bit 7) is copied to bit 15. Per 64-byte load (elements 4g .. 4g + 3 of the 16 rows), two
// pair vectors, each: a vpermb spread (word h of lane r = that code twice), two masked vpermi2b,
// one or: ~3.6 cycles per 32 weights in cache. x comes as the plain pairs of xb.
constexpr bool quad8_format(int el) { return elem_params(el).bits != 4 && el != kInt8; }

// lo / hi bytes of the bf16 value of index i: FP8 the magnitude code i (sign apart), FP6 the code
// i & 63, INT6 the sign-extended code (i & 64: negative).
template <int EL>
const uint8_t* table8_bf16() {
  struct Table {
    alignas(64) uint8_t v[256];  // lo bytes [0, 128), hi bytes [128, 256)
    Table() {
      constexpr ElemParams p = elem_params(EL);
      for (uint32_t i = 0; i < 128; ++i) {
        const uint32_t code = p.bits == 8 ? i : p.is_int ? ((i & 64) ? i | 0x80 : i) : (i & 63);
        const uint32_t f = decode_code_bits(code, p);
        if (f & 0xFFFF) __builtin_trap();  // every value must be exact in bf16
        v[i] = (uint8_t)(f >> 16);
        v[128 + i] = (uint8_t)(f >> 24);
      }
    }
  };
  static const Table t;
  return t.v;
}

// Byte b of lane r of spread vector t = the code of element 2 t + b / 2 of row r ([k][row] group).
inline const uint8_t* quad8_spread_index() {
  struct Index {
    alignas(64) uint8_t v[128];
    Index() {
      for (int t = 0; t < 2; ++t)
        for (int r = 0; r < kPR; ++r)
          for (int b = 0; b < 4; ++b) v[64 * t + 4 * r + b] = (uint8_t)(kPR * (2 * t + b / 2) + r);
    }
  };
  static const Index i;
  return i.v;
}

// Group g of a block's code area (64 bytes at p) -> w[t]: lane r = row r's elements (4g + 2t, 4g + 2t + 1).
template <int EL>
LK_BFV void quad_pairs8(const uint8_t* p, const I (&sp)[2], const I (&tb)[4], I (&w)[2]) {
  const I v = _mm512_loadu_si512(p);
  for (int t = 0; t < 2; ++t) {
    const I idx = _mm512_permutexvar_epi8(sp[t], v);
    const I lo = _mm512_maskz_permutex2var_epi8(0x5555555555555555ull, tb[0], idx, tb[1]);
    const I hi = _mm512_maskz_permutex2var_epi8(0xAAAAAAAAAAAAAAAAull, tb[2], idx, tb[3]);
    if constexpr (elem_params(EL).bits == 8)  // lo | hi | (idx & 0x8000): the sign from the code's bit 7
      w[t] = _mm512_ternarylogic_epi32(lo, hi, _mm512_and_si512(idx, _mm512_set1_epi16((short)0x8000)), 0xFE);
    else
      w[t] = _mm512_or_si512(lo, hi);
  }
}

// MM rows of x (from row m0) times one row tile of a 4-bit or quad8_format format.
template <int EL, bool NV, int MM>
LK_BFV void quad_tile(const PackedLinearArgs& a, const uint8_t* tile, int64_t m0, int64_t n0, int rows) {
  // S sets of accumulators: >= 4 vdpbf16ps chains in flight, 6 from 3 rows of x (latency ~6 cycles)
  constexpr int S = MM == 1 ? 4 : MM <= 5 ? 2 : 1;
  constexpr bool four = elem_params(EL).bits == 4;
  constexpr int P = four ? 4 : 2;  // pair vectors per 64-byte group
  const int bs = a.block_size, pairs = bs / 2, groups = pairs / P;
  const int64_t nb = a.K / bs, xs = a.K / 2;
  const int32_t* x = (four ? a.xb8 : a.xb) + m0 * xs;
  I tab = _mm512_setzero_si512(), tidx = tab, sp[2] = {tab, tab}, tb[4] = {tab, tab, tab, tab};
  if constexpr (four) {
    tab = _mm512_load_si512(table4_bf16<EL>());
    tidx = _mm512_load_si512(quad_transpose_index());
  } else {
    for (int t = 0; t < 2; ++t) sp[t] = _mm512_load_si512(quad8_spread_index() + 64 * t);
    for (int t = 0; t < 4; ++t) tb[t] = _mm512_load_si512(table8_bf16<EL>() + 64 * t);
  }
  __m512 acc[MM];
  for (int m = 0; m < MM; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = tile + b * a.block_bytes;
    // into L2 only, kQuadPrefetch ahead: with the cheaper decode the 1 KB / L1 distance of small_tile
    // left the stream short of requests in flight (Zen 4, cold, interleaved A/B: 1.01-1.16x)
    for (int64_t off = 0; off < a.block_bytes; off += 64) __builtin_prefetch(blk + kQuadPrefetch + off, 0, 2);
    I sc;
    float pre = 1.0f;
    if constexpr (four)
      block_scales<EL, NV>(blk, pairs, &sc, &pre);
    else
      packed_scales<false, 0>(blk, &sc);  // D = 0: 2^(s - 127), never overflows
    __m512 bacc[S][MM];
    for (int j = 0; j < S; ++j)
      for (int m = 0; m < MM; ++m) bacc[j][m] = _mm512_setzero_ps();
    const int32_t* xb = x + b * pairs;
    // 4 pair vectors per step (one 4-bit group, two 8-bit ones), set (vector index) % S: compile-time
    // accumulator indices; an odd last 8-bit group (block_size 4 mod 8) alone
    constexpr int GU = 4 / P;
    int g = 0;
    for (; g + GU <= groups; g += GU) {
#pragma GCC unroll 2
      for (int u = 0; u < GU; ++u) {
        I w[P];
        if constexpr (four)
          quad_pairs4(blk + kPR + (g + u) * 64, tidx, tab, w);
        else
          quad_pairs8<EL>(blk + kPR + (g + u) * 64, sp, tb, w);
#pragma GCC unroll 4
        for (int j = 0; j < P; ++j)
          for (int m = 0; m < MM; ++m)  // embedded broadcast, as in small_block_sums
            asm("vdpbf16ps %[x]%{1to16%}, %[w], %[acc]"
                : [acc] "+v"(bacc[(P * u + j) % S][m])
                : [w] "v"(w[j]), [x] "m"(xb[m * xs + P * (g + u) + j]));
      }
    }
    if constexpr (!four) {
      if (g < groups) {
        I w[P];
        quad_pairs8<EL>(blk + kPR + g * 64, sp, tb, w);
        for (int j = 0; j < P; ++j)
          for (int m = 0; m < MM; ++m)
            asm("vdpbf16ps %[x]%{1to16%}, %[w], %[acc]"
                : [acc] "+v"(bacc[j % S][m])
                : [w] "v"(w[j]), [x] "m"(xb[m * xs + P * g + j]));
      }
    }
    fold_block(bacc, pre, sc, acc);
  }
  store_rows<NV>(a, acc, m0, n0, rows);
}

#include "mx/linear_packed_fma_small.h"

// The few-rows kernels: small_tile, quad_tile (VBMI decoders), fma_tile (fp32 FMAs).
enum SmallKind { kSmallBf16, kSmallQuad, kSmallFma };

// The KIND kernel with MM = mm (1..kSM) rows.
template <int EL, bool NV, int KIND, int MM>
LK_BF void small_tile_mm(int mm, const PackedLinearArgs& a, const uint8_t* tile, int64_t m0, int64_t n0, int rows) {
  if (mm == MM) {  // (quad / fma: a call, another target)
    if constexpr (KIND == kSmallQuad) return quad_tile<EL, NV, MM>(a, tile, m0, n0, rows);
    else if constexpr (KIND == kSmallFma) return fma_tile<EL, NV, MM>(a, tile, m0, n0, rows);
    else return small_tile<EL, NV, MM>(a, tile, m0, n0, rows);
  }
  if constexpr (MM < kSM) small_tile_mm<EL, NV, KIND, MM + 1>(mm, a, tile, m0, n0, rows);
}

template <int EL, bool NV, int KIND>
LK_BF void small_tiles(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  const int64_t nb = a.K / a.block_size;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n0 = t * kPR;
    const int rows = (int)(a.N - n0 < kPR ? a.N - n0 : kPR);
    for (int64_t m0 = 0; m0 < a.M; m0 += kSM)
      small_tile_mm<EL, NV, KIND, 1>((int)(a.M - m0 < kSM ? a.M - m0 : kSM), a, a.packed + t * nb * a.block_bytes, m0,
                                     n0, rows);
  }
}

inline bool use_vbmi_decoder() {
  static const bool has = __builtin_cpu_supports("avx512vbmi");
  return has && vbmi_decoder_enabled();
}

template <int EL, bool NV>
LK_BF void small_range_fmt(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  {  // every format (few_rows_fma_takes: the block sizes)
    if (fma_tile_takes(a)) return small_tiles<EL, NV, kSmallFma>(a, t0, t1);
  }
  if constexpr (elem_params(EL).bits == 4) {
    if (a.xb8 && a.block_size % 8 == 0 && use_vbmi_decoder()) return small_tiles<EL, NV, kSmallQuad>(a, t0, t1);
  } else if constexpr (quad8_format(EL) && !NV) {
    if (a.block_size % 4 == 0 && use_vbmi_decoder()) return small_tiles<EL, NV, kSmallQuad>(a, t0, t1);
  }
  small_tiles<EL, NV, kSmallBf16>(a, t0, t1);
}

LK_BF bool linear_packed_bf16_small_range(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  if (!a.xb && !fma_tile_takes(a)) return false;  // (without bf16 x only the FMA form can run)
  return dispatch_packed_format(a.fmt, [&](auto el, auto nv) {
    small_range_fmt<decltype(el)::value, decltype(nv)::value>(a, t0, t1);
  });
}

#undef LK_BF
#undef LK_BF_MICRO
#undef LK_BFV
