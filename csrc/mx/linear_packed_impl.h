// Width-generic SIMD kernel of the block-quantized linear over the prepacked weight layout
// (python/leankern/mx/packed_layout.py): y = x_hat @ W_hat^T (+ bias), fp32 x, fp32 accumulation.
//
// Not a normal header: linear_avx512.cpp / linear_avx2.cpp include it after linear_simd_impl.h,
// inside their own namespace (V, X, LK_T, decode_w, lut4 and elem helpers come from there).
//
// One output row per 32-bit lane: a row tile is 16 rows = kVT vectors (1 on AVX-512, 2 on AVX2);
// a decoded vector holds one element of 16 / kVT rows, x is broadcast, and a tile's sums come out
// as kVT vectors (no horizontal sums). Per block, the unscaled sums bacc are multiplied by the
// rows' block scales: acc += bacc * scale (one FMA per block, row of x and vector). A thread
// streams one contiguous buffer (its tiles); passes of at most kPMM rows of x per tile re-read the
// tile from L1 / L2, not from memory.
//
// Element decoding is exact; a decoded value is the element value times 2^D (a per-format
// constant, undone in the block scale, exactly: powers of two):
//  * 8 / 6-bit: decode_w (INT: int -> fp32, D = 0; FP8 / FP6: the fp16-pattern conversion,
//    D = bias - 15); on AVX2 with one row of x, MXFP8 E4M3 as bf16 patterns (packed_sums_e4m3_row,
//    D = 0). E4M3 blocks holding NaN codes (which the fp16 pattern would turn into numbers)
//    and MX blocks whose scale 2^(s - 127 - D) would overflow take the exact path: decode_v (D = 0)
//    or bacc * 2^-D (exact) times 2^(s - 127).
//  * 4-bit: a 16-entry int8 table (element value * 2^D, D = the smallest making every entry an
//    integer: 1 for E2M1, 0 for INT4) looked up with pshufb on the low / high nibbles of 16 code
//    bytes (the 16 rows' elements 2q and 2q + 1), then int8 -> fp32; on AVX2 with one or two rows of
//    x, the same values as bf16 patterns (packed_sums_4bit_rows).
// Block scales: MX E8M0 byte s -> 2^(s - 127 - D) from its bits (subnormal powers of two
// included; 255: NaN); NV E4M3 byte -> fp16 pattern -> fp32 times 2^(8 - D) (exact; NaN bytes ->
// NaN), and the NV tensor scale g multiplies the final sums: g * s * v is never rounded before the
// sum (the reference's rnd(rnd(g s) v) may differ by <= 2 ulp per weight; tests/tolerances.py).

constexpr int kPR = 16;       // rows per tile
constexpr int kVT = kPR / N;  // vectors per tile
constexpr int kPMM = N == 16 ? 8 : 4;  // rows of x per pass: 2 * kPMM * kVT accumulators

template <int EL>
struct PackedElem {
  static constexpr ElemParams p = elem_params(EL);
  static constexpr bool fp16 = !p.is_int && p.bits != 4;
  // decoded = element value * 2^D
  static constexpr int D = packed_decode_shift(EL);
};

// int8 table of a 4-bit format: element value * 2^D (checked exact and in range at first use).
template <int EL>
const int8_t* table4_i8() {
  struct Table {
    alignas(16) int8_t v[16];
    Table() {
      for (uint32_t c = 0; c < 16; ++c) {
        const float f = u2f(decode_code_bits(c, elem_params(EL))) * (float)(1 << PackedElem<EL>::D);
        v[c] = (int8_t)f;
        if ((float)v[c] != f) __builtin_trap();  // a table that is not exact is a bug, never a rounding
      }
    }
  };
  static const Table t;
  return t.v;
}

// Block scales of the 16 rows (16 bytes at s) as kVT vectors. MX: 2^(s - 127 - D) (the caller
// checked s - D <= 254); NV: e4m3(s) * 2^-D.
template <bool NV, int D>
LK_T void packed_scales(const uint8_t* s, I* out) {
  for (int v = 0; v < kVT; ++v) {
    const I b = V::load_u8(s + v * N);
    if constexpr (NV) {
      const I h = V::or_(V::slli<8>(V::and_(b, V::set1(0x80))), V::slli<7>(V::and_(b, V::set1(0x7F))));
      const I f = V::fmul(V::f16_lanes_to_f32(h), V::fset1((float)(1 << 8) / (float)(1 << D)));
      out[v] = V::blend(V::eq(V::and_(b, V::set1(0x7F)), V::set1(0x7F)), f, V::set1(0x7fc00000));
    } else {
      const I e = V::sub(b, V::set1(D));  // biased exponent of the factor
      const I normal = V::slli<23>(e);
      const I sub = V::srlv(V::set1(0x00400000), V::sub(V::zero(), e));  // e <= 0: 2^(e - 127)
      const I f = V::blend(V::gt_i(e, V::zero()), sub, normal);
      out[v] = V::blend(V::eq(b, V::set1(255)), f, V::set1(0x7fc00000));
    }
  }
}

// How one block of a tile decodes (shared by the fp32, bf16 and int8 packed kernels): E4M3 blocks
// holding NaN codes decode exactly (D = 0), and MX blocks whose folded factor 2^(s - 127 - D) would
// overflow keep the plain factor, their sums taken times 2^-D first. Sets the 16 rows' factor
// vectors *sc and that first factor *pre (1 or 2^-D); returns whether the block decodes exactly.
template <int EL, bool NV>
LK_T bool block_scales(const uint8_t* blk, int64_t code_bytes, I* sc, float* pre) {
  constexpr int D = PackedElem<EL>::D;
  bool exact = false, fold = true;
  if constexpr (EL == kFp8E4M3 && !NV) exact = X::any_masked_eq(blk + kPR, code_bytes * kPR, 0x7F);  // 0x7F / 0xFF
  if constexpr (D < 0 && !NV)  // s - D > 254: the folded factor would overflow
    fold = !_mm_movemask_epi8(_mm_cmpeq_epi8(
        _mm_max_epu8(_mm_loadu_si128((const __m128i*)blk), _mm_set1_epi8((char)(255 + D))), _mm_loadu_si128((const __m128i*)blk)));
  if (fold && !exact) {
    packed_scales<NV, D>(blk, sc);
    *pre = 1.0f;
  } else {  // the block sums * 2^-D (exact: sums of element values), then the plain factor
    packed_scales<NV, 0>(blk, sc);
    *pre = exact || D >= 0 ? 1.0f : (float)(1 << (D < 0 ? -D : 0));  // (fold is false only where D < 0)
  }
  return exact;
}

// The tile's sums for one row of x -> y (times post, plus bias), the first `rows` lanes.
LK_T void packed_store(const PackedLinearArgs& a, int64_t m, int64_t n0, int rows, const I* acc, float post) {
  if (X::store_row(a, m, n0, rows, acc, post)) return;  // (a vector form where the ISA has one)
  alignas(64) float out[kPR];
  for (int v = 0; v < kVT; ++v) V::store(out + v * N, V::fmul(acc[v], V::fset1(post)));
  for (int i = 0; i < rows; ++i) {
    const float y = a.bias ? out[i] + a.bias[n0 + i] : out[i];
    store_f32_bits(a.y, a.out_dtype, m * a.N + n0 + i, f2u(y));
  }
}

// The block sums of 8 / 6-bit codes (one block of a tile): element k into set k % S. FAST: the
// fp16-pattern / int decode (values * 2^D); otherwise the exact element values.
template <int EL, int MM, int S, bool FAST>
LK_T void packed_sums_8bit(const uint8_t* codes, const float* xb, int64_t K, int bs, I (&bacc)[S][MM][kVT]) {
  for (int64_t k0 = 0; k0 < bs; k0 += S) {
#pragma GCC unroll 4
    for (int j = 0; j < S; ++j) {
      const int64_t k = k0 + j;
      if (k >= bs) break;
      for (int v = 0; v < kVT; ++v) {
        const I w = decode_w<EL, FAST>(codes + k * kPR + v * N);
        for (int m = 0; m < MM; ++m) bacc[j][m][v] = X::fmadd(w, V::fset1(xb[m * K + k]), bacc[j][m][v]);
      }
    }
  }
}

// bf16 patterns of a 4-bit format's table4_i8 values as two byte tables (low bytes, high bytes) for pshufb.
template <int EL>
const uint8_t* table4_bf16_bytes() {
  struct Table {
    alignas(16) uint8_t v[32];  // 0..15: low byte, 16..31: high byte
    Table() {
      for (int c = 0; c < 16; ++c) {
        const uint32_t u = f2u((float)table4_i8<EL>()[c]);
        if (u & 0xFFFF) __builtin_trap();  // small integers: exact in bf16, never a rounding
        v[c] = (uint8_t)(u >> 16);
        v[16 + c] = (uint8_t)(u >> 24);
      }
    }
  };
  static const Table t;
  return t.v;
}

// Element column n (16 rows' nibbles, one code column per 128-bit lane) times x lanes xv into the sums of rows
// 4g..4g + 3 (s0..s3). Written out vector by vector: a first version looping over arrays of vectors kept its sums
// in memory (GCC 12: 1.3 weights per cycle instead of 5 in a micro-benchmark).
// bf16 patterns given as their low bytes l and high bytes h (16 rows' elements, one code column per 128-bit lane)
// times x lanes xv into the sums of rows 4g..4g + 3 (s0..s3).
__attribute__((always_inline)) LK_T void sums_bf16_bytes(__m256i l, __m256i h, __m256 xv, __m256& s0, __m256& s1,
                                                          __m256& s2, __m256& s3) {
  const __m256i z = _mm256_setzero_si256();
  const __m256i b0 = _mm256_unpacklo_epi8(l, h), b1 = _mm256_unpackhi_epi8(l, h);  // bf16 of rows 0-7 | 8-15
  s0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, b0)), xv, s0);
  s1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(z, b0)), xv, s1);
  s2 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, b1)), xv, s2);
  s3 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(z, b1)), xv, s3);
}

// Element column n (16 rows' nibbles, one code column per 128-bit lane) times x lanes xv into the sums of rows
// 4g..4g + 3 (s0..s3). Written out vector by vector: a first version looping over arrays of vectors kept its sums
// in memory (GCC 12: 1.3 weights per cycle instead of 5 in a micro-benchmark).
__attribute__((always_inline)) LK_T void sums_4bit_column(__m256i n, __m256 xv, __m256i tl, __m256i th, __m256& s0,
                                                           __m256& s1, __m256& s2, __m256& s3) {
  sums_bf16_bytes(_mm256_shuffle_epi8(tl, n), _mm256_shuffle_epi8(th, n), xv, s0, s1, s2, s3);
}

// w times two rows' x (xv0, xv1) into their sums a, b.
__attribute__((always_inline)) LK_T void fma_two_rows(__m256 w, __m256 xv0, __m256 xv1, __m256& a, __m256& b) {
  a = _mm256_fmadd_ps(w, xv0, a);
  b = _mm256_fmadd_ps(w, xv1, b);
}

// sums_bf16_bytes for two rows of x (xv0, xv1; sums s[0..3], s[4..7]): each decoded vector feeds two FMAs.
__attribute__((always_inline)) LK_T void sums_bf16_bytes2(__m256i l, __m256i h, __m256 xv0, __m256 xv1,
                                                           __m256 (&s)[8]) {
  const __m256i z = _mm256_setzero_si256();
  const __m256i b0 = _mm256_unpacklo_epi8(l, h), b1 = _mm256_unpackhi_epi8(l, h);
  fma_two_rows(_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, b0)), xv0, xv1, s[0], s[4]);
  fma_two_rows(_mm256_castsi256_ps(_mm256_unpackhi_epi16(z, b0)), xv0, xv1, s[1], s[5]);
  fma_two_rows(_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, b1)), xv0, xv1, s[2], s[6]);
  fma_two_rows(_mm256_castsi256_ps(_mm256_unpackhi_epi16(z, b1)), xv0, xv1, s[3], s[7]);
}

// sums_4bit_column for two rows of x.
__attribute__((always_inline)) LK_T void sums_4bit_column2(__m256i n, __m256 xv0, __m256 xv1, __m256i tl, __m256i th,
                                                            __m256 (&s)[8]) {
  sums_bf16_bytes2(_mm256_shuffle_epi8(tl, n), _mm256_shuffle_epi8(th, n), xv0, xv1, s);
}

// [v x4 | 0 x4]
__attribute__((always_inline)) LK_T __m256 low_lane(float v) { return _mm256_zextps128_ps256(_mm_set1_ps(v)); }

// Code columns q | q + 1 (raw) of the 16 rows into MM rows' sums: low nibbles (elements 2q | 2q + 2) times xa*,
// high nibbles (2q + 1 | 2q + 3) times xo*.
template <int MM>
__attribute__((always_inline)) LK_T void sums_4bit_cols(__m256i raw, __m256 xa0, __m256 xo0, __m256 xa1, __m256 xo1,
                                                         __m256i tl, __m256i th, __m256 (&s)[8]) {
  const __m256i lo4 = _mm256_set1_epi8(0x0F);
  const __m256i nl = _mm256_and_si256(raw, lo4), nh = _mm256_and_si256(_mm256_srli_epi16(raw, 4), lo4);
  if constexpr (MM == 1) {
    sums_4bit_column(nl, xa0, tl, th, s[0], s[1], s[2], s[3]);
    sums_4bit_column(nh, xo0, tl, th, s[0], s[1], s[2], s[3]);
  } else {
    sums_4bit_column2(nl, xa0, xa1, tl, th, s);
    sums_4bit_column2(nh, xo0, xo1, tl, th, s);
  }
}

// Sums s[4m + g] of rows 4g..4g + 3 in both 128-bit halves (low: one code column, high: the next) -> out[m][v],
// rows 8v..8v + 7 of x row m: [rows 8v..8v+3 | 8v+4..8v+7] as low lanes plus high lanes.
template <int MM>
__attribute__((always_inline)) LK_T void add_lane_halves(const __m256 (&s)[8], __m256i (*out)[2]) {
  for (int m = 0; m < MM; ++m)
    for (int v = 0; v < 2; ++v) {
      const __m256 a = s[4 * m + 2 * v], b = s[4 * m + 2 * v + 1];
      out[m][v] = _mm256_castps_si256(
          _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31)));
    }
}

// AVX2, 4-bit, MM = 1 or 2 rows of x (row stride K): one block's unscaled sums of the 16 rows (out[m][0]: rows 0-7,
// out[m][1]: rows 8-15).
// Why not packed_tile's int8 -> fp32 loop: on AVX2 its per-8-weight sign extension (vpmovsxbd, cross-lane) and
// conversion left a Zen 3 core at ~2.5 weights per cycle (one thread, weights in L2 / L3; 4.5 with this form).
// Here 32 code bytes (code columns q, q + 1 of the 16 rows: one per 128-bit lane) are looked up as the two bytes
// of each element's bf16 pattern (pshufb, in-lane) and widened by in-lane unpacks to fp32 (a bf16 pattern is the
// fp32's high half): no conversion instruction.
// A lane then holds a row's element of column q (low 128 bits) or q + 1 (high), so x comes as [x_q x4 | x_q+1 x4]
// (vpermilps of one 4-element broadcast), and the two halves of each row's sums are added at the block's end.
// Two rows: each decoded vector feeds two FMAs (8 accumulators; a third row would not fit in 16 registers). Three
// rows and more keep packed_tile's passes of four (two-row passes, decoding each tile twice, were 0.8-0.9x at M = 4
// and 16 on Zen 3).
// (Compiled for the AVX2 build only: N == 8.)
template <int MM>
__attribute__((always_inline)) LK_T void packed_sums_4bit_rows(const uint8_t* codes, const float* xb, int64_t K,
                                                                int64_t cbytes, const uint8_t* tab, __m256i (*out)[2]) {
  static_assert(MM == 1 || MM == 2, "one or two rows of x");
  const __m256i tl = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i*)tab));
  const __m256i th = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i*)(tab + 16)));
  const __m256i pick_a = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2), pick_b = _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3);
  // s[4m + g]: row m of x, rows 4g..4g + 3 of the tile in both halves; one FMA chain each
  __m256 s[8];
  for (int i = 0; i < 8; ++i) s[i] = _mm256_setzero_ps();
  int64_t q = 0;
  for (; q + 2 <= cbytes; q += 2) {
    const __m256i raw = _mm256_loadu_si256((const __m256i*)(codes + q * kPR));
    const __m256 x0 = _mm256_broadcast_ps((const __m128*)(xb + 2 * q));  // x_2q .. x_2q+3, both lanes
    const __m256 x1 = MM == 2 ? _mm256_broadcast_ps((const __m128*)(xb + K + 2 * q)) : x0;
    sums_4bit_cols<MM>(raw, _mm256_permutevar_ps(x0, pick_a), _mm256_permutevar_ps(x0, pick_b),
                       _mm256_permutevar_ps(x1, pick_a), _mm256_permutevar_ps(x1, pick_b), tl, th, s);
  }
  if (q < cbytes) {  // an odd last column: the high lane's codes 0 (value +0) and its x 0 (not read: past the block)
    const __m256i raw = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i*)(codes + q * kPR)));
    const float* x1 = xb + (MM == 2 ? K : 0);
    sums_4bit_cols<MM>(raw, low_lane(xb[2 * q]), low_lane(xb[2 * q + 1]), low_lane(x1[2 * q]), low_lane(x1[2 * q + 1]),
                       tl, th, s);
  }
  add_lane_halves<MM>(s, out);
}

// E4M3 element codes -> the low and high bytes of their values' bf16 patterns, 32 codes at a time, exact for the
// normal codes (exponent field e >= 1): the bf16 exponent field is e + 120 (bias 127 - 7), and 120 is even, so
// the high byte is sign | (e + 120) >> 1 = sign | ((e >> 1) + 60), a function of the code's high nibble (a
// 16-entry pshufb table), and the low byte is (e & 1) << 7 | m << 4, the code shifted left by 4. Zero / subnormal
// codes (e = 0: not 1.m times a power of two) and NaN codes (0x7F / 0xFF) decode wrongly here; `lowest` collects
// the running signed minimum of (code & 0x7F) + 1, which is <= 8 exactly where one of them occurred (0x7F + 1
// wraps to -128).
struct E4M3Bf16 {
  __m256i th;  // high byte for each high nibble s e3 e2 e1
  LK_T E4M3Bf16()
      : th(_mm256_setr_epi8(60, 61, 62, 63, 64, 65, 66, 67, -68, -67, -66, -65, -64, -63, -62, -61,  //
                            60, 61, 62, 63, 64, 65, 66, 67, -68, -67, -66, -65, -64, -63, -62, -61)) {}
  __attribute__((always_inline)) LK_T void bytes(__m256i raw, __m256i& l, __m256i& h, __m256i& lowest) const {
    h = _mm256_shuffle_epi8(th, _mm256_and_si256(_mm256_srli_epi16(raw, 4), _mm256_set1_epi8(0x0F)));
    l = _mm256_and_si256(_mm256_slli_epi16(raw, 4), _mm256_set1_epi8(char(0xF0)));
    const __m256i mag = _mm256_and_si256(raw, _mm256_set1_epi8(0x7F));
    lowest = _mm256_min_epi8(lowest, _mm256_add_epi8(mag, _mm256_set1_epi8(1)));
  }
  // whether a code seen by bytes() was zero, subnormal or NaN
  LK_T static bool any_special(__m256i lowest) {
    return !_mm256_testz_si256(_mm256_cmpgt_epi8(_mm256_set1_epi8(9), lowest), _mm256_set1_epi8(-1));
  }
};

// AVX2, MXFP8 (E4M3), one row of x: one block's sums of the 16 rows (out[0]: rows 0-7, out[1]: rows 8-15), the
// weights decoded as bf16 patterns by E4M3Bf16 (element values, D = 0) instead of packed_sums_8bit's fp16 pattern
// + vcvtph2ps (2 uops on Zen): per 32 codes (elements k | k + 1 of the 16 rows, one per 128-bit lane; x as
// [x_k x4 | x_k+1 x4]) 8 byte ops (one pshufb), 6 unpacks and 4 FMAs. Returns false, the sums unusable, when the
// block holds a zero, subnormal or NaN code: the caller then runs the block through the general path (rare in
// trained weights: a subnormal code needs an element below ~2^-14 of its block's largest; a weight with exact zeros
// in most blocks pays this pass on top of the general one there, ~2x). Zen 3, one thread,
// weights in L3: 1.14-1.29x the fp16-pattern loop. Two rows of x sharing each decoded vector (8 sums) ran at 0.85x
// the general path's two-row pass, so that stays.
__attribute__((always_inline)) LK_T bool packed_sums_e4m3_row(const uint8_t* codes, const float* xb, int64_t bs,
                                                               const E4M3Bf16& dec, __m256i* out) {
  const __m256i pick_0 = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), pick_2 = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
  __m256 s[8];  // s[g]: rows 4g..4g + 3, both halves (s[4..7] unused: add_lane_halves' shape)
  for (int i = 0; i < 4; ++i) s[i] = _mm256_setzero_ps();
  __m256i lowest = _mm256_set1_epi8(127), l, h;
  int64_t k = 0;
  for (; k + 4 <= bs; k += 4) {  // elements k..k + 3: two loads, one broadcast of x
    const __m256 x0 = _mm256_broadcast_ps((const __m128*)(xb + k));
    dec.bytes(_mm256_loadu_si256((const __m256i*)(codes + k * kPR)), l, h, lowest);
    sums_bf16_bytes(l, h, _mm256_permutevar_ps(x0, pick_0), s[0], s[1], s[2], s[3]);
    dec.bytes(_mm256_loadu_si256((const __m256i*)(codes + (k + 2) * kPR)), l, h, lowest);
    sums_bf16_bytes(l, h, _mm256_permutevar_ps(x0, pick_2), s[0], s[1], s[2], s[3]);
  }
  if (k < bs) {  // a last pair (block sizes are powers of two: bs = 2)
    dec.bytes(_mm256_loadu_si256((const __m256i*)(codes + k * kPR)), l, h, lowest);
    sums_bf16_bytes(l, h, _mm256_setr_m128(_mm_set1_ps(xb[k]), _mm_set1_ps(xb[k + 1])), s[0], s[1], s[2], s[3]);
  }
  if (E4M3Bf16::any_special(lowest)) return false;
  __m256i o[1][2];
  add_lane_halves<1>(s, o);
  out[0] = o[0][0], out[1] = o[0][1];
  return true;
}

// MM rows of x (x: the first one, row stride K) times one tile of the weight.
template <int EL, bool NV, int MM>
LK_T void packed_tile(const PackedLinearArgs& a, const uint8_t* tile, const float* x, int64_t m0, int64_t n0,
                      int rows) {
  // sets of block sums: about 8 FMA chains in flight on AVX-512 (32 registers), 4 on AVX2 (16)
  constexpr int kChains = N == 16 ? 8 : 4;
  constexpr int S = kChains / (MM * kVT) < 1 ? 1 : kChains / (MM * kVT) > 4 ? 4 : kChains / (MM * kVT);
  constexpr bool four = elem_params(EL).bits == 4;
  const int bs = a.block_size;
  const int64_t K = a.K, nb = K / bs, cbytes = four ? bs / 2 : bs;  // code bytes per row and block
  constexpr bool rows4 = four && N == 8 && MM <= 2;  // the AVX2 one- / two-row 4-bit form
  __m128i tab = _mm_setzero_si128();
  if constexpr (four && !rows4) tab = _mm_load_si128((const __m128i*)table4_i8<EL>());  // (only 4-bit formats have one)
  const uint8_t* tab16 = nullptr;  // byte tables of the rows4 form
  if constexpr (rows4) tab16 = table4_bf16_bytes<EL>();
  I acc[MM][kVT];
  for (int m = 0; m < MM; ++m)
    for (int v = 0; v < kVT; ++v) acc[m][v] = V::zero();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = tile + b * a.block_bytes;
    const uint8_t* codes = blk + kPR;
    __builtin_prefetch(blk + 8 * a.block_bytes);
    if constexpr (EL == kFp8E4M3 && !NV && N == 8 && MM == 1) {  // AVX2 MXFP8, one row of x
      __m256i o[2];
      if (packed_sums_e4m3_row(codes, x + b * bs, bs, E4M3Bf16(), o)) {
        I sc[kVT];
        packed_scales<false, 0>(blk, sc);  // element values: D = 0, the plain factor (never overflows)
        for (int v = 0; v < kVT; ++v) acc[0][v] = X::fmadd(o[v], sc[v], acc[0][v]);
        continue;
      }  // else: a zero, subnormal or NaN code in the block; the general path below
    }
    I sc[kVT];
    float pre;
    const bool exact = block_scales<EL, NV>(blk, cbytes, sc, &pre);
    // S independent sets of block sums (element e goes to set e % S): an FMA chain per set, so
    // few rows of x still keep enough FMAs in flight (latency 4-5 cycles, 2 per cycle).
    I bacc[S][MM][kVT];
    for (int j = 0; j < S; ++j)
      for (int m = 0; m < MM; ++m)
        for (int v = 0; v < kVT; ++v) bacc[j][m][v] = V::zero();
    const float* xb = x + b * bs;
    // (the set of an element is a compile-time index after unrolling: j, qq and h below)
    if constexpr (rows4) {  // AVX2, one or two rows of x
      __m256i o[MM][2];
      packed_sums_4bit_rows<MM>(codes, xb, K, cbytes, tab16, o);
      for (int m = 0; m < MM; ++m) bacc[0][m][0] = o[m][0], bacc[0][m][1] = o[m][1];
    } else if constexpr (four) {
      constexpr int Q = S / 2 < 1 ? 1 : S / 2;  // code bytes (2 elements each) per round
      alignas(16) int8_t vals[2 * kPR];  // elements 2q (bytes 0..15) and 2q + 1 (16..31) of the 16 rows
      const __m128i lo4 = _mm_set1_epi8(0x0F);
      for (int64_t q0 = 0; q0 < cbytes; q0 += Q) {
#pragma GCC unroll 4
        for (int qq = 0; qq < Q; ++qq) {
          const int64_t q = q0 + qq;
          if (q >= cbytes) break;
          const __m128i raw = _mm_loadu_si128((const __m128i*)(codes + q * kPR));
          _mm_store_si128((__m128i*)vals, _mm_shuffle_epi8(tab, _mm_and_si128(raw, lo4)));
          _mm_store_si128((__m128i*)(vals + kPR), _mm_shuffle_epi8(tab, _mm_and_si128(_mm_srli_epi16(raw, 4), lo4)));
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h) {
            I(&acc_e)[MM][kVT] = bacc[(2 * qq + h) % S];
            for (int v = 0; v < kVT; ++v) {
              const I w = V::cvt_i2f(V::load_i8((const uint8_t*)vals + h * kPR + v * N));
              for (int m = 0; m < MM; ++m) acc_e[m][v] = X::fmadd(w, V::fset1(xb[m * K + 2 * q + h]), acc_e[m][v]);
            }
          }
        }
      }
    } else {
      // exact element values (D = 0) for E4M3 blocks holding NaN codes, a separate loop
      if (exact)
        packed_sums_8bit<EL, MM, S, false>(codes, xb, K, bs, bacc);
      else
        packed_sums_8bit<EL, MM, S, true>(codes, xb, K, bs, bacc);
    }
    for (int j = 1; j < S; ++j)
      for (int m = 0; m < MM; ++m)
        for (int v = 0; v < kVT; ++v) bacc[0][m][v] = V::fadd(bacc[0][m][v], bacc[j][m][v]);
    if (pre != 1.0f)
      for (int m = 0; m < MM; ++m)
        for (int v = 0; v < kVT; ++v) bacc[0][m][v] = V::fmul(bacc[0][m][v], V::fset1(pre));
    for (int m = 0; m < MM; ++m)
      for (int v = 0; v < kVT; ++v) acc[m][v] = X::fmadd(bacc[0][m][v], sc[v], acc[m][v]);
  }
  for (int m = 0; m < MM; ++m) packed_store(a, m0 + m, n0, rows, acc[m], NV ? a.g : 1.0f);
}

// packed_tile with MM = mm (1..kPMM) rows of x.
template <int EL, bool NV, int MM>
LK_T void packed_tile_mm(int mm, const PackedLinearArgs& a, const uint8_t* tile, const float* x, int64_t m0,
                         int64_t n0, int rows) {
  if (mm == MM) return packed_tile<EL, NV, MM>(a, tile, x, m0, n0, rows);
  if constexpr (MM < kPMM) packed_tile_mm<EL, NV, MM + 1>(mm, a, tile, x, m0, n0, rows);
}

template <int EL, bool NV>
LK_T void packed_range_fmt(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  const int64_t nb = a.K / a.block_size;
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* tile = a.packed + t * nb * a.block_bytes;
    const int64_t n0 = t * kPR;
    const int rows = (int)(a.N - n0 < kPR ? a.N - n0 : kPR);
    for (int64_t m0 = 0; m0 < a.M; m0 += kPMM)
      packed_tile_mm<EL, NV, 1>((int)(a.M - m0 < kPMM ? a.M - m0 : kPMM), a, tile, a.x + m0 * a.K, m0, n0, rows);
  }
}

// Calls fn(el, nv) with the format's element code and NV flag as compile-time constants
// (std::integral_constant: decltype(el)::value), for the ten formats every packed kernel has.
template <class F>
LK_T bool dispatch_packed_format(int fmt, F&& fn) {
  const FormatSpec& f = kFormats[fmt];
  using MX = std::false_type;
  using NVF = std::true_type;
  switch (f.is_nv ? -f.elem - 1 : f.elem) {
    case kFp8E4M3: fn(std::integral_constant<int, kFp8E4M3>{}, MX{}); return true;
    case kFp8E5M2: fn(std::integral_constant<int, kFp8E5M2>{}, MX{}); return true;
    case kFp6E2M3: fn(std::integral_constant<int, kFp6E2M3>{}, MX{}); return true;
    case kFp6E3M2: fn(std::integral_constant<int, kFp6E3M2>{}, MX{}); return true;
    case kFp4E2M1: fn(std::integral_constant<int, kFp4E2M1>{}, MX{}); return true;
    case kInt8: fn(std::integral_constant<int, kInt8>{}, MX{}); return true;
    case kInt6: fn(std::integral_constant<int, kInt6>{}, MX{}); return true;
    case kInt4: fn(std::integral_constant<int, kInt4>{}, MX{}); return true;
    case -kFp4E2M1 - 1: fn(std::integral_constant<int, kFp4E2M1>{}, NVF{}); return true;
    case -kInt4 - 1: fn(std::integral_constant<int, kInt4>{}, NVF{}); return true;
    default: return false;
  }
}

// (The lambdas below carry no target attribute: they only call the kernels, which are not inlined
// into them.)
LK_T bool linear_packed_range(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  return dispatch_packed_format(a.fmt, [&](auto el, auto nv) {
    packed_range_fmt<decltype(el)::value, decltype(nv)::value>(a, t0, t1);
  });
}
