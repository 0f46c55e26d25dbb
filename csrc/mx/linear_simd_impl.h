// Width-generic SIMD kernels of the block-quantized linear y = x_hat @ W_hat^T (+ bias), fp32
// accumulation. The weight is never materialised: each block is decoded to fp32 where it is used.
//
// Not a normal header: linear_avx512.cpp / linear_avx2.cpp include it inside their own namespace
// after `V` (vector wrapper), `LK_T` (target attribute), mx/mx_simd_impl.h (decode_v, lut4,
// dequant_range, const_) and `X`, the ISA extras: fmadd(a, b, c) = a * b + c; hsum (sum of the
// lanes); Tab / tab(lut, f) / look(t, idx) (a 16-entry fp32 table held in registers, lut * f, and
// its lookup); look16(lut, idx) (lookup in a constant table); pair(fa, fb) (fa in the lower, fb in
// the upper half of a vector); the fp16 helpers h_load_i8 / h_load_u8 / h_slli / h_srai / h_and /
// h_to_f32 (16-bit lanes, then vcvtph2ps); the byte scans any_masked_eq / any_in_range.
//
// Two paths, both over tiles of kNT weight rows:
//  * fused (M <= kFusedMaxM: decode, GEMV): each weight vector is decoded in registers and FMA'd
//    into the M x kNT sums right away; x (<= 4 rows) stays in L1, the weight is streamed once.
//  * panel (larger M, and the block sizes the fused path lacks): the kNT rows are decoded kKC
//    elements at a time into a small stack buffer that a kMR x kNT register-blocked micro-kernel
//    runs over for every row of x (in passes of kMB rows), so one decode serves M rows.
//
// Decoding is exact (W_hat bit for bit as mx_dequantize computes it), in one of three ways:
//  * FP8 / FP6 (MX): the code's sign and magnitude bits placed in an fp16 pattern and converted
//    by the hardware (vcvtph2ps) are the element value times 2^(bias - 15), exactly, element
//    subnormals included (they come out fp32-normal: no slow subnormal operands); one multiply
//    by the block factor 2^(scale - 127) * 2^(15 - bias) (exact: a power of two) then rounds
//    v * 2^(scale - 127) once, as the reference's multiply does. E5M2 is the top byte of fp16, its
//    NaN / Inf codes included. Chunks whose scales would overflow the folded factor (>= 240 + bias)
//    or, for E4M3, whose codes hold a NaN (which the fp16 pattern would turn into a number) take
//    the full decode (decode_v of mx_simd_impl.h).
//  * INT8 / INT6: int -> fp32 conversion times the block factor.
//  * 4-bit (FP4, INT4; MX and NV): a 16-entry table per block, lut * factor (one multiply gives
//    the 16 products fp32(v * f), the reference's values), looked up with the nibbles (block size
//    16 on 16 lanes: the plain table times a two-block factor vector, the same products). The even
//    and odd elements of each 32 come out as separate vectors: x is read in that order (a.xs).

constexpr int kNT = 4;                // weight rows per tile
constexpr int kFusedMaxM = 4;         // rows of x up to which the fused path runs
constexpr int kMR = N == 16 ? 4 : 2;  // panel micro-kernel: rows of x (kMR x kNT sums in registers)
constexpr int kMB = 64;               // rows of x per panel pass (bounds the sum buffer)
constexpr int kKC = 256;              // panel width in elements (raised to the block size)

template <int EL>
struct LinElem {
  static constexpr ElemParams p = elem_params(EL);
  static constexpr int bias = elem_spec(EL).bias;
  static constexpr bool fp16 = !p.is_int && p.bits != 4;  // FP8 / FP6: decoded through fp16
  // fp16 pattern of a code = its value * 2^(bias - 15); the block factor carries 2^(15 - bias)
  static constexpr int shift = fp16 ? 15 - bias : 0;
  // FP8 / FP6 scale bytes whose folded factor 2^(s - 127 + shift) overflows: [lo, 254]
  static constexpr int overflow_lo = 128 + 127 - shift;
};

// 2^e as fp32 (e >= -149; +Inf above 127).
inline float pow2f(int e) {
  return e > 127 ? u2f(0x7f800000u) : u2f(e >= -126 ? (uint32_t)(e + 127) << 23 : 1u << (e + 149));
}

// MX block factors by scale byte, 2^(s - 127 + SH) (0xFF: NaN), a table built once per SH.
template <int SH>
const float* mx_factors() {
  struct Table {
    float v[256];
    Table() {
      for (int b = 0; b < 256; ++b) v[b] = b == 255 ? u2f(0x7fc00000u) : pow2f(b - 127 + SH);
    }
  };
  static const Table t;
  return t.v;
}

// NV block scale byte -> fp32 value of its E4M3 code, a table built once.
inline const float* e4m3_byte_values() {
  struct Table {
    float v[256];
    Table() {
      for (uint32_t b = 0; b < 256; ++b) v[b] = u2f(decode_code_bits(b, elem_params(kFp8E4M3)));
    }
  };
  static const Table t;
  return t.v;
}

// Block factors of blocks [b0, b0 + n) of one row: FAST FP8 / FP6 (MX) 2^(s - 127) * 2^(15 - bias)
// (the caller checked it is finite); other MX 2^(s - 127) (block_factor_bits); NV g * e4m3(s),
// the product the reference's dequantize computes.
template <int EL, bool NV, bool FAST>
LK_T void block_factors(const uint8_t* s, int64_t n, float g, float* out) {
  if constexpr (NV) {
    const float* e4m3 = e4m3_byte_values();
    for (int64_t j = 0; j < n; ++j) out[j] = g * e4m3[s[j]];
  } else {
    const float* tab = mx_factors<FAST ? LinElem<EL>::shift : 0>();
    for (int64_t j = 0; j < n; ++j) out[j] = tab[s[j]];
  }
}

// N codes at c (8 / 6-bit elements) -> fp32 patterns. FAST FP8 / FP6: the code's sign and
// magnitude placed in an fp16 pattern (magnitude at 10 - mbits), converted by the hardware: the
// value * 2^(bias - 15), exact, element subnormals included (fp32-normal, so no slow subnormal
// operands); E5M2 is the top byte of fp16, NaN / Inf included. INT: int -> fp32 conversion.
// Otherwise the full decode (NaN / Inf codes as torch decodes them).
template <int EL, bool FAST>
LK_T I decode_w(const uint8_t* c) {
  constexpr ElemParams p = elem_params(EL);
  if constexpr (p.is_int) {
    return V::cvt_i2f(V::load_i8(c));  // INT6 codes are stored sign-extended
  } else if constexpr (FAST && p.bits == 8) {  // sign-extended: bits 8..15 = the sign; keep bit 15
    constexpr int16_t mask = (int16_t)(0x8000 | (0x7F << (10 - p.mbits)));
    return X::h_to_f32(X::h_and(X::h_slli<10 - p.mbits>(X::h_load_i8(c)), mask));
  } else if constexpr (FAST) {  // FP6: sign at bit 5 -> 15, magnitude (bits 0..4) -> 10 - mbits
    constexpr int16_t mask = (int16_t)(0x8000 | (0x1F << (10 - p.mbits)));
    return X::h_to_f32(X::h_and(X::h_srai<p.mbits>(X::h_slli<10>(X::h_load_u8(c))), mask));
  } else {
    return decode_v<EL>(V::load_u8(c), nullptr);
  }
}

// Whether a row needs the full decode (FP8 / FP6 MX only): a scale whose folded factor would
// overflow, or (E4M3) a NaN code, which the fp16 pattern would turn into a number. E5M2 never.
// (The panel path checks whole rows up front; the fused path per chunk, see fused_tile.)
template <int EL>
LK_T bool needs_full_decode(const uint8_t* codes, const uint8_t* scales, int64_t K, int64_t nb) {
  if constexpr (EL == kFp8E5M2) return false;
  if (X::any_in_range(scales, nb, LinElem<EL>::overflow_lo, 254)) return true;
  if constexpr (EL == kFp8E4M3) return X::any_masked_eq(codes, K, 0x7F);
  return false;
}

// Row pointers of a tile of `rows` (1..kNT) rows from n; missing rows repeat the last one (their
// sums are computed and dropped, which keeps the loops free of row counts).
struct TileRows {
  const uint8_t* c[kNT];
  const uint8_t* s[kNT];
};
inline TileRows tile_rows(const LinearArgs& a, int64_t n, int rows, int64_t row_bytes, int64_t nb) {
  TileRows t;
  for (int r = 0; r < kNT; ++r) {
    const int64_t rr = n + (r < rows ? r : rows - 1);
    t.c[r] = a.codes + rr * row_bytes;
    t.s[r] = a.scales + rr * nb;
  }
  return t;
}

constexpr int kFB = 64;  // block factors computed ahead, per row
// Software prefetch distance (bytes) of each weight row's code stream in the fused path: kNT
// streams per thread are more than the hardware prefetcher keeps ahead of on its own.
#ifndef LEANKERN_LINEAR_PREFETCH
#define LEANKERN_LINEAR_PREFETCH 512
#endif
constexpr int kPrefetch = LEANKERN_LINEAR_PREFETCH;

// ---------------------------------------------------------------------------------------------
// Fused path: MM rows of x (all of them), kNT weight rows, decoded in registers.
// ---------------------------------------------------------------------------------------------
// Blocks [b0, b0 + nbc) (nbc <= kFB) of the tile into acc.
template <int EL, bool NV, int MM, bool FAST, bool PAIR>
LK_T void fused_chunk(const LinearArgs& a, const TileRows& t, const float* x, int64_t b0, int64_t nbc,
                      I (&acc)[MM][kNT]) {
  constexpr ElemParams p = elem_params(EL);
  const int bs = a.block_size;
  const int64_t K = a.K;
  alignas(64) float fb[kNT][kFB];
  for (int r = 0; r < kNT; ++r) block_factors<EL, NV, FAST>(t.s[r] + b0, nbc, a.g, fb[r]);
  if constexpr (p.bits == 4) {
    // x in a.xs order: per 32 elements the 16 even, then the 16 odd ones. A step is 32
    // elements (16 code bytes); PAIR: block_size 16, a step spans two blocks. The lookups
    // read the low 4 (3 + blend bit 3) bits of each index lane: no masking of the nibbles.
    // N = 16 with PAIR: the plain code table, times a per-lane factor vector (lanes 0..7 block j,
    // 8..15 block j + 1): the same products fp32(v * f) as per-block tables, fewer operations.
    const uint32_t* lut = lut4<EL>();
    for (int64_t j = 0; j < nbc; j += PAIR ? 2 : 1) {
      typename X::Tab ta[kNT], tb[kNT];
      I fpair[kNT];
      for (int r = 0; r < kNT; ++r) {
        if (PAIR && N == 16) {
          fpair[r] = X::pair(fb[r][j], fb[r][j + 1]);
        } else {
          ta[r] = X::tab(lut, fb[r][j]);
          if (PAIR) tb[r] = X::tab(lut, fb[r][j + 1]);
        }
      }
      const int64_t kb = (b0 + j) * bs;
      for (int r = 0; r < kNT; ++r) __builtin_prefetch(t.c[r] + kb / 2 + kPrefetch);
      for (int64_t k = kb; k < kb + (PAIR ? 32 : bs); k += 32) {
        if constexpr (N == 16) {
          I xe[MM], xo[MM];
          for (int m = 0; m < MM; ++m) {
            xe[m] = V::load(x + m * K + k);
            xo[m] = V::load(x + m * K + k + 16);
          }
          for (int r = 0; r < kNT; ++r) {
            const I raw = V::load_u8(t.c[r] + k / 2);  // lane l: elements 2l (low nibble), 2l + 1
            const I hi = V::srli<4>(raw);
            const I wl = PAIR ? V::fmul(X::look16(lut, raw), fpair[r]) : X::look(ta[r], raw);
            const I wh = PAIR ? V::fmul(X::look16(lut, hi), fpair[r]) : X::look(ta[r], hi);
            for (int m = 0; m < MM; ++m) acc[m][r] = X::fmadd(xo[m], wh, X::fmadd(xe[m], wl, acc[m][r]));
          }
        } else {  // 8 lanes: bytes 0..7 (elements 0..15) and 8..15 (16..31) are separate vectors
          for (int r = 0; r < kNT; ++r) {
            const I raw0 = V::load_u8(t.c[r] + k / 2), raw1 = V::load_u8(t.c[r] + k / 2 + 8);
            const typename X::Tab& t1 = PAIR ? tb[r] : ta[r];
            const I w0 = X::look(ta[r], raw0), w1 = X::look(t1, raw1);
            const I w2 = X::look(ta[r], V::srli<4>(raw0)), w3 = X::look(t1, V::srli<4>(raw1));
            for (int m = 0; m < MM; ++m) {
              const float* xm = x + m * K + k;
              I s = X::fmadd(V::load(xm), w0, acc[m][r]);
              s = X::fmadd(V::load(xm + 8), w1, s);
              s = X::fmadd(V::load(xm + 16), w2, s);
              acc[m][r] = X::fmadd(V::load(xm + 24), w3, s);
            }
          }
        }
      }
    }
  } else {
    for (int64_t j = 0; j < nbc; ++j) {
      const int64_t kb = (b0 + j) * bs;
      for (int r = 0; r < kNT; ++r) __builtin_prefetch(t.c[r] + kb + kPrefetch);
      for (int64_t k = kb; k < kb + bs; k += N) {
        I xv[MM];
        for (int m = 0; m < MM; ++m) xv[m] = V::load(x + m * K + k);
        for (int r = 0; r < kNT; ++r) {
          const I w = V::fmul(decode_w<EL, FAST>(t.c[r] + k), V::fset1(fb[r][j]));
          for (int m = 0; m < MM; ++m) acc[m][r] = X::fmadd(xv[m], w, acc[m][r]);
        }
      }
    }
  }
}

template <int EL, bool NV, int MM, bool PAIR>
LK_T void fused_tile(const LinearArgs& a, const TileRows& t, const float* x, int64_t n, int rows) {
  const int bs = a.block_size;
  const int64_t nb = a.K / bs;
  I acc[MM][kNT];
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < kNT; ++r) acc[m][r] = V::zero();
  for (int64_t b0 = 0; b0 < nb; b0 += kFB) {
    const int64_t nbc = nb - b0 < kFB ? nb - b0 : kFB;
    if constexpr (LinElem<EL>::fp16 && !NV) {  // FP8 / FP6: the fast decode unless a row needs the full one
      bool full = false;
      if (LinElem<EL>::overflow_lo <= 254)  // E5M2: never
        for (int r = 0; r < rows; ++r) full = full || X::any_in_range(t.s[r] + b0, nbc, LinElem<EL>::overflow_lo, 254);
      if (EL == kFp8E4M3 && !full) {
        // NaN codes: compute the chunk speculatively, then check its codes (now in cache), so the
        // check never waits on memory before the compute; redo the chunk if one turns up.
        I part[MM][kNT];
        for (int m = 0; m < MM; ++m)
          for (int r = 0; r < kNT; ++r) part[m][r] = V::zero();
        fused_chunk<EL, NV, MM, true, PAIR>(a, t, x, b0, nbc, part);
        for (int r = 0; r < rows; ++r) full = full || X::any_masked_eq(t.c[r] + b0 * bs, nbc * bs, 0x7F);
        if (!full)
          for (int m = 0; m < MM; ++m)
            for (int r = 0; r < kNT; ++r) acc[m][r] = V::fadd(acc[m][r], part[m][r]);
      }
      if (full)
        fused_chunk<EL, NV, MM, false, PAIR>(a, t, x, b0, nbc, acc);
      else if (EL != kFp8E4M3)
        fused_chunk<EL, NV, MM, true, PAIR>(a, t, x, b0, nbc, acc);
    } else {
      fused_chunk<EL, NV, MM, true, PAIR>(a, t, x, b0, nbc, acc);
    }
  }
  float out[MM][kNT];  // all sums first (fixed indices keep acc in registers), then the real rows
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < kNT; ++r) out[m][r] = X::hsum(acc[m][r]);
  for (int m = 0; m < MM; ++m)
    for (int r = 0; r < rows; ++r) linear_store(a, m, n + r, out[m][r]);
}

template <int EL, bool NV, int MM>
LK_T void fused_range(const LinearArgs& a, int64_t n0, int64_t n1) {
  constexpr ElemParams p = elem_params(EL);
  const int64_t K = a.K, nb = K / a.block_size, row_bytes = p.bits == 4 ? K / 2 : K;
  const float* x = p.bits == 4 ? a.xs : a.x;
  for (int64_t n = n0; n < n1; n += kNT) {
    const int rows = n1 - n < kNT ? (int)(n1 - n) : kNT;
    const TileRows t = tile_rows(a, n, rows, row_bytes, nb);
    if (p.bits == 4 && a.block_size == 16)
      fused_tile<EL, NV, MM, true>(a, t, x, n, rows);
    else
      fused_tile<EL, NV, MM, false>(a, t, x, n, rows);
  }
}

// ---------------------------------------------------------------------------------------------
// Panel path
// ---------------------------------------------------------------------------------------------
// Decode weight row elements [k0, k0 + len) into w. FAST: the decoders above (4-bit: a.xs
// order; needs block_size >= 16 and 32 | K); otherwise dequant_range (natural order, any block).
template <int EL, bool NV, bool FAST>
LK_T void decode_panel(const LinearArgs& a, const uint8_t* c, const uint8_t* s, int64_t k0, int64_t len, float* w) {
  constexpr ElemParams p = elem_params(EL);
  const int bs = a.block_size;
  if constexpr (!FAST) {
    const DequantArgs d{c + (p.bits == 4 ? k0 / 2 : k0), s + k0 / bs, a.g, bs, a.fmt, kInF32, w};
    dequant_range<EL, NV, kInF32>(d, 0, len / bs);
  } else {
    alignas(64) float fb[kLinearChunk / 16];
    block_factors<EL, NV, true>(s + k0 / bs, len / bs, a.g, fb);
    if constexpr (p.bits == 4) {
      const uint32_t* lut = lut4<EL>();
      for (int64_t k = k0; k < k0 + len; k += 32) {
        const int64_t j = (k - k0) / bs;
        const typename X::Tab ta = X::tab(lut, fb[j]);
        const typename X::Tab tb = bs == 16 ? X::tab(lut, fb[j + 1]) : ta;
        float* o = w + (k - k0);
        if constexpr (N == 16) {
          const I raw = V::load_u8(c + k / 2);
          const I hi = V::srli<4>(raw);
          if (bs == 16) {  // lanes 0..7 block j, 8..15 block j + 1 (see fused_chunk)
            const I f = X::pair(fb[j], fb[j + 1]);
            V::store(o, V::fmul(X::look16(lut, raw), f));
            V::store(o + 16, V::fmul(X::look16(lut, hi), f));
          } else {
            V::store(o, X::look(ta, raw));
            V::store(o + 16, X::look(ta, hi));
          }
        } else {
          const I raw0 = V::load_u8(c + k / 2), raw1 = V::load_u8(c + k / 2 + 8);
          V::store(o, X::look(ta, raw0));
          V::store(o + 8, X::look(tb, raw1));
          V::store(o + 16, X::look(ta, V::srli<4>(raw0)));
          V::store(o + 24, X::look(tb, V::srli<4>(raw1)));
        }
      }
    } else {
      for (int64_t j = 0; j < len / bs; ++j) {
        const I f = V::fset1(fb[j]);
        for (int64_t k = k0 + j * bs; k < k0 + (j + 1) * bs; k += N)
          V::store(w + (k - k0), V::fmul(decode_w<EL, true>(c + k), f));
      }
    }
  }
}

// sums[i][r] += x row i . w row r over [0, kv) (kv: a multiple of N), lane-wise.
template <int MR>
LK_T void micro(const float* x, int64_t ldx, const float* const* w, int64_t kv, I* sums) {
  I c[MR][kNT];
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < kNT; ++r) c[i][r] = sums[i * kNT + r];
  for (int64_t k = 0; k < kv; k += N) {
    I wv[kNT];
    for (int r = 0; r < kNT; ++r) wv[r] = V::load(w[r] + k);
    for (int i = 0; i < MR; ++i) {
      const I xv = V::load(x + i * ldx + k);
      for (int r = 0; r < kNT; ++r) c[i][r] = X::fmadd(xv, wv[r], c[i][r]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < kNT; ++r) sums[i * kNT + r] = c[i][r];
}

template <int EL, bool NV>
LK_T void panel_range(const LinearArgs& a, int64_t n0, int64_t n1) {
  constexpr ElemParams p = elem_params(EL);
  const int bs = a.block_size;
  const int64_t K = a.K, M = a.M, nb = K / bs, row_bytes = p.bits == 4 ? K / 2 : K;
  const bool fast4 = p.bits == 4 && linear_wants_xs(4, K, bs);
  const float* xb = fast4 ? a.xs : a.x;
  const int64_t kc = bs > kKC ? bs : kKC;  // <= kLinearChunk
  alignas(64) float wbuf[kNT][kLinearChunk];
  alignas(64) I sums[kMB * kNT];
  float tail[kMB * kNT];
  for (int64_t n = n0; n < n1; n += kNT) {
    const int rows = n1 - n < kNT ? (int)(n1 - n) : kNT;
    const TileRows t = tile_rows(a, n, rows, row_bytes, nb);
    bool fast = p.bits == 4 ? fast4 : bs >= N;  // the fast decoders need whole vectors per block
    if constexpr (LinElem<EL>::fp16 && !NV)
      for (int r = 0; r < rows; ++r) fast = fast && !needs_full_decode<EL>(t.c[r], t.s[r], K, nb);
    const float* wp[kNT];
    for (int r = 0; r < kNT; ++r) wp[r] = wbuf[r < rows ? r : rows - 1];
    for (int64_t mb = 0; mb < M; mb += kMB) {
      const int mlen = M - mb < kMB ? (int)(M - mb) : kMB;
      for (int i = 0; i < mlen * kNT; ++i) {
        sums[i] = V::zero();
        tail[i] = 0.0f;
      }
      for (int64_t k0 = 0; k0 < K; k0 += kc) {
        const int64_t len = K - k0 < kc ? K - k0 : kc;
        for (int r = 0; r < rows; ++r) {
          if (fast)
            decode_panel<EL, NV, true>(a, t.c[r], t.s[r], k0, len, wbuf[r]);
          else
            decode_panel<EL, NV, false>(a, t.c[r], t.s[r], k0, len, wbuf[r]);
        }
        const int64_t kv = len & ~(int64_t)(N - 1);
        const float* xk = xb + mb * K + k0;
        int m = 0;
        for (; m + kMR <= mlen; m += kMR) micro<kMR>(xk + m * K, K, wp, kv, sums + m * kNT);
        for (; m < mlen; ++m) micro<1>(xk + m * K, K, wp, kv, sums + m * kNT);
        if (kv < len)  // K not a multiple of N (block_size < N): the last few elements
          for (int i = 0; i < mlen; ++i)
            for (int r = 0; r < kNT; ++r)
              for (int64_t k = kv; k < len; ++k) tail[i * kNT + r] = tail[i * kNT + r] + xk[i * K + k] * wp[r][k];
      }
      for (int i = 0; i < mlen; ++i)
        for (int r = 0; r < rows; ++r) linear_store(a, mb + i, n + r, X::hsum(sums[i * kNT + r]) + tail[i * kNT + r]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Entry
// ---------------------------------------------------------------------------------------------
template <int EL, bool NV>
LK_T void linear_fmt(const LinearArgs& a, int64_t n0, int64_t n1) {
  constexpr ElemParams p = elem_params(EL);
  const bool fused = p.bits == 4 ? linear_wants_xs(4, a.K, a.block_size) : a.block_size >= N;
  if (!fused || a.M > kFusedMaxM) return panel_range<EL, NV>(a, n0, n1);
  switch (a.M) {
    case 1: return fused_range<EL, NV, 1>(a, n0, n1);
    case 2: return fused_range<EL, NV, 2>(a, n0, n1);
    case 3: return fused_range<EL, NV, 3>(a, n0, n1);
    case 4: return fused_range<EL, NV, 4>(a, n0, n1);
    default: return;  // M == 0
  }
}

LK_T void linear_range(const LinearArgs& a, int64_t n0, int64_t n1) {
  const FormatSpec& f = kFormats[a.fmt];
  switch (f.is_nv ? -f.elem - 1 : f.elem) {
    case kFp8E4M3: return linear_fmt<kFp8E4M3, false>(a, n0, n1);
    case kFp8E5M2: return linear_fmt<kFp8E5M2, false>(a, n0, n1);
    case kFp6E2M3: return linear_fmt<kFp6E2M3, false>(a, n0, n1);
    case kFp6E3M2: return linear_fmt<kFp6E3M2, false>(a, n0, n1);
    case kFp4E2M1: return linear_fmt<kFp4E2M1, false>(a, n0, n1);
    case kInt8: return linear_fmt<kInt8, false>(a, n0, n1);
    case kInt6: return linear_fmt<kInt6, false>(a, n0, n1);
    case kInt4: return linear_fmt<kInt4, false>(a, n0, n1);
    case -kFp4E2M1 - 1: return linear_fmt<kFp4E2M1, true>(a, n0, n1);
    case -kInt4 - 1: return linear_fmt<kInt4, true>(a, n0, n1);
    default: linear_range_scalar(a, n0, n1);
  }
}
