// The transposed SEFP kernels (kernels.h: gemv_permuted, decode_permuted) for widths m <= 8, in
// 256-bit AVX2 intrinsics (+FMA/F16C). Compiled by kernels_avx2.cpp and kernels_avx512.cpp with
// their LK_T target attribute; included inside their namespace after kernels_impl.h.
//
// One chunk = 8 plane words of a row = 256 weights, one 256-bit load per plane. Register r[i] holds
// bit i of q (plane m - i): byte b has bit j = weight 8b + j. An 8x8 bit transpose in every byte
// position (3 delta-swap stages, rows >= m known zero at compile time and skipped) leaves in r[j]
// byte b the whole q (< 2^m) of weight 8b + j. Codec turns it, with the sign plane, into fp32
// vectors exactly (int8 + vcvtdq2ps for m <= 7, the fp16 subnormal pattern + vcvtph2ps for m = 8);
// their power-of-two factor and the block scale 2^(E - (m - 1)) are applied once per chunk to the
// accumulators, and x is read in the matching (permuted, chunk_order) order, so there is no
// per-weight shuffle of x. Per 32 weights at m <= 7: 3 ops of sign, 4 pshufb, 4 conversions, 4 FMAs
// plus the transpose (~2 ops at m = 2, ~9 at m = 8).

// The helpers below are forced inline into the kernels: with gemv_few's instantiations GCC's inlining budget ran
// out and left load_chunk, chunk_scales and fma_j as calls in gemv1, whose M = 1 time grew 1.2-1.7x (Zen 3, hot).
#define LK_TI LK_T __attribute__((always_inline))

constexpr unsigned next_nonzero(unsigned nz, int s) {  // rows possibly nonzero after a stage
  unsigned out = 0;
  for (int i = 0; i < 8; ++i)
    if (!(i & s) && (((nz >> i) | (nz >> (i + s))) & 1u)) out |= (1u << i) | (1u << (i + s));
  return out;
}

// Swap bits j (j & S) of row I with bits j - S of row J = I + S, in every byte (mask: bits j with
// !(j & S)). A row whose NZ bit is clear is zero: its half of the swap is skipped.
template <unsigned NZ, int S, int I>
LK_TI void swap_pair(__m256i* r, __m256i mask) {
  constexpr int J = I + S;
  constexpr bool a_nz = (NZ >> I) & 1u, b_nz = (NZ >> J) & 1u;
  if constexpr (a_nz && b_nz) {
    const __m256i t = _mm256_and_si256(_mm256_xor_si256(_mm256_srli_epi16(r[I], S), r[J]), mask);
    r[J] = _mm256_xor_si256(r[J], t);
    r[I] = _mm256_xor_si256(r[I], _mm256_slli_epi16(t, S));
  } else if constexpr (a_nz) {
    r[J] = _mm256_and_si256(_mm256_srli_epi16(r[I], S), mask);
    r[I] = _mm256_and_si256(r[I], mask);
  } else if constexpr (b_nz) {
    r[I] = _mm256_slli_epi16(_mm256_and_si256(r[J], mask), S);
    r[J] = _mm256_andnot_si256(mask, r[J]);
  }
}

template <unsigned NZ, int S>
LK_TI void transpose_stage(__m256i* r) {
  const __m256i mask = _mm256_set1_epi8(S == 4 ? 0x0F : S == 2 ? 0x33 : 0x55);
  // pair k (0..3) starts at row (k / S) * 2S + k % S
  swap_pair<NZ, S, 0>(r, mask);
  swap_pair<NZ, S, (1 / S) * 2 * S + 1 % S>(r, mask);
  swap_pair<NZ, S, (2 / S) * 2 * S + 2 % S>(r, mask);
  swap_pair<NZ, S, (3 / S) * 2 * S + 3 % S>(r, mask);
}

// r[i] byte b bit j -> r[j] byte b bit i; rows >= M are zero on entry.
// r[i] byte b bit j -> r[j] byte b bit i; rows >= M are zero on entry. The stages commute (each
// swaps one bit of the row index with the same bit of the column index); the narrow swaps go first
// because few rows are nonzero then, so at small m most swaps are one-sided (3 ops, not 6).
template <int M>
LK_TI void transpose8(__m256i* r) {
  constexpr unsigned nz0 = (1u << M) - 1, nz1 = next_nonzero(nz0, 1), nz2 = next_nonzero(nz1, 2);
  transpose_stage<nz0, 1>(r);
  transpose_stage<nz1, 2>(r);
  transpose_stage<nz2, 4>(r);
}

// Chunk c of row n: the sign plane into s, the M mantissa planes into r[0..M) (LSB row first).
// The last, partial chunk goes through a zero-padded copy.
template <int M>
LK_TI void load_chunk(const Planes& P, int64_t n, int64_t c, __m256i* r, __m256i& s) {
  const uint32_t* p0 = P.data + n * P.Kw + c * kChunkWords;
  int64_t ps = P.plane_stride;
  for (int p = 0; p <= M; ++p) __builtin_prefetch(p0 + p * ps + kPlanePrefetch / 4);  // as gemv_bf16_gfni.cpp
  uint32_t tmp[M + 1][kChunkWords];
  const int64_t words = P.Kw - c * kChunkWords;
  if (words < kChunkWords) {
    for (int p = 0; p <= M; ++p)
      for (int w = 0; w < kChunkWords; ++w) tmp[p][w] = w < words ? p0[p * ps + w] : 0u;
    p0 = &tmp[0][0];
    ps = kChunkWords;
  }
  s = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p0));
  for (int i = 0; i < 8; ++i)
    r[i] = i < M ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p0 + (M - i) * ps)) : _mm256_setzero_si256();
}

// Weights 8b + j of the chunk (q in r[j] after the transpose, sign plane s) as 4 fp32 vectors f[v],
// exact, times 2^-shift (Codec::kShift); lane l of f[v] is weight 8 b(v, l) + j (chunk_order).
//   m <= 7 (int8): psignb makes +-q a two's complement byte, pshufb puts it in the top byte of a
//     dword, vcvtdq2ps: +-q 2^24. All single-uop ops, no lane crossing.
//   m == 8 (q needs all 8 bits): q and a 0x80 sign byte interleave into the fp16 subnormal
//     pattern s<<15 | q, vcvtph2ps: +-q 2^-24 (slower on Zen: 2 uops per conversion).
template <int M>
struct Codec {
  static constexpr bool kInt8 = M <= 7;
  static constexpr int kShift = kInt8 ? -24 : 24;  // the block scale is multiplied by 2^kShift
  __m256i ctl[4];
  __m256i lane_word[4];  // chunk word of each lane of f[v]

  LK_T explicit Codec(int /*unused*/) {
    for (int v = 0; v < 4; ++v) {
      alignas(32) int8_t c[32];
      for (int h = 0; h < 2; ++h)
        for (int i = 0; i < 4; ++i) {  // dword i of each 128-bit lane <- byte 4v + i of that lane
          c[16 * h + 4 * i + 0] = c[16 * h + 4 * i + 1] = c[16 * h + 4 * i + 2] = -128;
          c[16 * h + 4 * i + 3] = static_cast<int8_t>(4 * v + i);
        }
      ctl[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(c));
      const int w0 = kInt8 ? v : 2 * v, w1 = kInt8 ? 4 + v : 2 * v + 1;
      lane_word[v] = _mm256_setr_epi32(w0, w0, w0, w0, w1, w1, w1, w1);
    }
  }

  template <int J>
  LK_TI void weights(const __m256i* r, __m256i s, __m256* f) const {
    const __m256i sj = J == 7 ? s : _mm256_slli_epi16(s, 7 - J);  // bit j of each byte -> bit 7
    if constexpr (kInt8) {
      const __m256i v = _mm256_sign_epi8(r[J], _mm256_or_si256(sj, _mm256_set1_epi8(1)));  // never 0: no zeroing
      for (int k = 0; k < 4; ++k) f[k] = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(v, ctl[k]));
    } else {
      const __m256i sg = _mm256_and_si256(sj, _mm256_set1_epi8(char(0x80)));
      const __m256i lo = _mm256_unpacklo_epi8(r[J], sg), hi = _mm256_unpackhi_epi8(r[J], sg);  // s<<15 | q
      f[0] = _mm256_cvtph_ps(_mm256_castsi256_si128(lo));
      f[1] = _mm256_cvtph_ps(_mm256_castsi256_si128(hi));
      f[2] = _mm256_cvtph_ps(_mm256_extracti128_si256(lo, 1));
      f[3] = _mm256_cvtph_ps(_mm256_extracti128_si256(hi, 1));
    }
  }
};

// Lane scales of f[v] for chunk c of row n: 2^(E - (m - 1) + kShift) for the block of each lane's
// word (an empty block: 2^kShift, scale 1 as the reference), computed with integer ops from the
// chunk's exponent bytes. bidx[v]: the lanes' block offsets inside the chunk (lane word >> gs).
// Returns false (and s2 = the second factor) when some exponent is outside fp32's normal range:
// then the scale is applied as two exact factors, x s1 s2 (rare: |w| >~ 2^103 or <~ 2^-95).
template <int M>
LK_TI bool chunk_scales(const Planes& P, int64_t n, int64_t c, const __m256i* bidx, __m256* s1, __m256* s2) {
  const int64_t b0 = (c * kChunkWords) >> P.gs;
  const int8_t* ex = P.exps + n * P.nb + b0;
  int64_t e8;
  if (b0 + 8 <= P.nb) {
    std::memcpy(&e8, ex, 8);
  } else {  // the row's last blocks only (zero = a harmless in-range exponent for the padding lanes):
    // bytes of the next row would make the result depend on it, bytes past the tensor are out of bounds
    e8 = 0;
    std::memcpy(&e8, ex, P.nb - b0);
  }
  const __m256i E = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(e8));
  const __m256i empty = _mm256_cmpeq_epi32(E, _mm256_set1_epi32(-128));
  const __m256i t = _mm256_add_epi32(_mm256_andnot_si256(empty, _mm256_sub_epi32(E, _mm256_set1_epi32(M - 1))),
                                     _mm256_set1_epi32(Codec<M>::kShift));
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256i hi = _mm256_cmpgt_epi32(t, bias);
  const __m256i lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(-126), t);
  if (__builtin_expect(_mm256_testz_si256(_mm256_or_si256(hi, lo), _mm256_or_si256(hi, lo)), 1)) {
    const __m256 a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(t, bias), 23));
    for (int v = 0; v < 4; ++v) s1[v] = _mm256_permutevar8x32_ps(a, bidx[v]);
    return true;
  }
  const __m256i e2 = _mm256_or_si256(_mm256_and_si256(hi, _mm256_set1_epi32(64)),
                                     _mm256_and_si256(lo, _mm256_set1_epi32(-64)));
  const __m256 a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(t, e2), bias), 23));
  const __m256 b = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e2, bias), 23));
  for (int v = 0; v < 4; ++v) {
    s1[v] = _mm256_permutevar8x32_ps(a, bidx[v]);
    s2[v] = _mm256_permutevar8x32_ps(b, bidx[v]);
  }
  return false;
}

// tot += sum_v acc[v] * scale[v] (one exact factor, or two: see chunk_scales).
template <int M>
LK_TI __m256 add_scaled(const Planes& P, int64_t n, int64_t c, const __m256i* bidx, const __m256* acc, __m256 tot) {
  __m256 s1[4], s2[4];
  if (chunk_scales<M>(P, n, c, bidx, s1, s2)) {
    for (int v = 0; v < 4; ++v) tot = _mm256_fmadd_ps(acc[v], s1[v], tot);
  } else {
    for (int v = 0; v < 4; ++v) tot = _mm256_fmadd_ps(_mm256_mul_ps(acc[v], s1[v]), s2[v], tot);
  }
  return tot;
}

template <int M>
LK_TI void block_index(const Codec<M>& cd, int gs, __m256i* bidx) {
  for (int v = 0; v < 4; ++v) bidx[v] = _mm256_srlv_epi32(cd.lane_word[v], _mm256_set1_epi32(gs));
}

// One chunk of one row, decoded to 32 vectors: w[4j + v] (times 2^-kShift).
template <int M>
LK_TI void decode_chunk(const Codec<M>& cd, const Planes& P, int64_t n, int64_t c, __m256* w) {
  __m256i r[8], s;
  load_chunk<M>(P, n, c, r, s);
  transpose8<M>(r);
  cd.template weights<0>(r, s, w + 0);
  cd.template weights<1>(r, s, w + 4);
  cd.template weights<2>(r, s, w + 8);
  cd.template weights<3>(r, s, w + 12);
  cd.template weights<4>(r, s, w + 16);
  cd.template weights<5>(r, s, w + 20);
  cd.template weights<6>(r, s, w + 24);
  cd.template weights<7>(r, s, w + 28);
}

// acc[v] += f[v] * x[32J + 8v].
template <int M, int J>
LK_TI void fma_j(const Codec<M>& cd, const __m256i* r, __m256i s, const float* x, __m256* acc) {
  __m256 f[4];
  cd.template weights<J>(r, s, f);
  for (int v = 0; v < 4; ++v) acc[v] = _mm256_fmadd_ps(f[v], _mm256_loadu_ps(x + 32 * J + 8 * v), acc[v]);
}

// acc[v] = sum_j f_j[v] x[32 j + 8 v] over the 8 weight vectors j of a transposed chunk (scales not applied).
template <int M>
LK_TI void fma_chunk(const Codec<M>& cd, const __m256i* r, __m256i s, const float* x, __m256* acc) {
  for (int v = 0; v < 4; ++v) acc[v] = _mm256_setzero_ps();
  fma_j<M, 0>(cd, r, s, x, acc);
  fma_j<M, 1>(cd, r, s, x, acc);
  fma_j<M, 2>(cd, r, s, x, acc);
  fma_j<M, 3>(cd, r, s, x, acc);
  fma_j<M, 4>(cd, r, s, x, acc);
  fma_j<M, 5>(cd, r, s, x, acc);
  fma_j<M, 6>(cd, r, s, x, acc);
  fma_j<M, 7>(cd, r, s, x, acc);
}

// y[n] for one x row: everything stays in registers.
template <int M>
LK_T void gemv1(const Planes& P, const float* x, int64_t n0, int64_t n1, float* y) {
  const Codec<M> cd(0);
  __m256i bidx[4];
  block_index(cd, P.gs, bidx);
  const int64_t nchunks = (P.Kw + kChunkWords - 1) / kChunkWords;
  for (int64_t n = n0; n < n1; ++n) {
    __m256 tot = _mm256_setzero_ps();
    for (int64_t c = 0; c < nchunks; ++c) {
      __m256i r[8], s;
      load_chunk<M>(P, n, c, r, s);
      transpose8<M>(r);
      __m256 acc[4];
      fma_chunk<M>(cd, r, s, x + c * kChunk, acc);
      tot = add_scaled<M>(P, n, c, bidx, acc, tot);
    }
    y[n] = hsum256(tot);
  }
}

// tot[r][v & 1] += (f[v] s1[v]) x_r[32 J + 8 v] for R x rows: the chunk's scales folded into the decoded weights.
template <int M, int J, int R>
LK_TI void fma_folded(const Codec<M>& cd, const __m256i* r, __m256i s, const __m256* s1, const float* x, int64_t ldx,
                     __m256 (*tot)[2]) {
  __m256 f[4];
  cd.template weights<J>(r, s, f);
  for (int v = 0; v < 4; ++v) {
    const __m256 w = _mm256_mul_ps(f[v], s1[v]);
    for (int i = 0; i < R; ++i)
      tot[i][v & 1] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + i * ldx + 32 * J + 8 * v), tot[i][v & 1]);
  }
}

// y[i * ldy + n] for R = 2..4 x rows, everything in registers as gemv1: each chunk's block scales are folded into
// its decoded weights (w s1 is the dequantized weight itself, exact in fp32: every product rounded once, as the
// reference's) and each x row keeps two accumulators. Before (gemv_rows for any R > 1) the decoded chunks of 4 weight
// rows went through memory and the x rows through 3 + 1 row tiles: the packed copy's AVX2 kernel, built this way,
// ran 4 x rows 1.45-2.2x faster than that on the same bytes. A chunk whose scale needs two factors (|w| beyond
// ~2^103 or below ~2^-95) is summed per x row as gemv1 does, the scales on the sums.
template <int M, int R>
LK_T void gemv_few(const Planes& P, const float* x, int64_t ldx, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const Codec<M> cd(0);
  __m256i bidx[4];
  block_index(cd, P.gs, bidx);
  const int64_t nchunks = (P.Kw + kChunkWords - 1) / kChunkWords;
  for (int64_t n = n0; n < n1; ++n) {
    __m256 tot[R][2];
    for (int i = 0; i < R; ++i) tot[i][0] = tot[i][1] = _mm256_setzero_ps();
    for (int64_t c = 0; c < nchunks; ++c) {
      __m256i r[8], s;
      load_chunk<M>(P, n, c, r, s);
      transpose8<M>(r);
      __m256 s1[4], s2[4];
      const float* xc = x + c * kChunk;
      if (__builtin_expect(chunk_scales<M>(P, n, c, bidx, s1, s2), 1)) {
        fma_folded<M, 0, R>(cd, r, s, s1, xc, ldx, tot);
        fma_folded<M, 1, R>(cd, r, s, s1, xc, ldx, tot);
        fma_folded<M, 2, R>(cd, r, s, s1, xc, ldx, tot);
        fma_folded<M, 3, R>(cd, r, s, s1, xc, ldx, tot);
        fma_folded<M, 4, R>(cd, r, s, s1, xc, ldx, tot);
        fma_folded<M, 5, R>(cd, r, s, s1, xc, ldx, tot);
        fma_folded<M, 6, R>(cd, r, s, s1, xc, ldx, tot);
        fma_folded<M, 7, R>(cd, r, s, s1, xc, ldx, tot);
        continue;
      }
      for (int i = 0; i < R; ++i) {
        __m256 acc[4];
        fma_chunk<M>(cd, r, s, xc + i * ldx, acc);
        for (int v = 0; v < 4; ++v) tot[i][0] = _mm256_fmadd_ps(_mm256_mul_ps(acc[v], s1[v]), s2[v], tot[i][0]);
      }
    }
    for (int i = 0; i < R; ++i) y[i * ldy + n] = hsum256(_mm256_add_ps(tot[i][0], tot[i][1]));
  }
}

// tot[r] += sum_v scale[v] * sum_j w[4j + v] x_r[32j + 8v] for RB x rows (12 accumulators for
// RB = 3: each decoded weight vector is loaded once per RB rows).
template <int RB>
LK_T void rows_block(const __m256* w, const float* x, int64_t ldx, bool one, const __m256* s1, const __m256* s2,
                     float* tot) {
  __m256 acc[RB][4];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int j = 0; j < 8; ++j)
    for (int v = 0; v < 4; ++v) {
      const __m256 wv = w[4 * j + v];
      for (int r = 0; r < RB; ++r)
        acc[r][v] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + r * ldx + 32 * j + 8 * v), acc[r][v]);
    }
  for (int r = 0; r < RB; ++r) {
    __m256 t = _mm256_loadu_ps(tot + 8 * r);
    for (int v = 0; v < 4; ++v)
      t = one ? _mm256_fmadd_ps(acc[r][v], s1[v], t) : _mm256_fmadd_ps(_mm256_mul_ps(acc[r][v], s1[v]), s2[v], t);
    _mm256_storeu_ps(tot + 8 * r, t);
  }
}

constexpr int kRowBlock = 4;  // weight rows decoded together by gemv_rows

// tot[8 (t R + r) ..] += sum_jv w[t][jv] x_r[32 j + 8 v] for every weight row t of the block and RB
// x rows, the block scales already folded into w (exact: see gemv_rows): one accumulator per
// (weight row, x row) pair, so each loaded x vector serves kRowBlock rows and each weight vector RB
// rows (7 loads per 12 FMAs for RB = 3).
template <int RB>
LK_T void rows_block_scaled(const __m256 (*w)[32], const float* x, int64_t ldx, float* tot, int64_t R) {
  __m256 acc[kRowBlock][RB];
  for (int t = 0; t < kRowBlock; ++t)
    for (int r = 0; r < RB; ++r) acc[t][r] = _mm256_setzero_ps();
  for (int j = 0; j < 8; ++j)
    for (int v = 0; v < 4; ++v) {
      __m256 xv[RB];
      for (int r = 0; r < RB; ++r) xv[r] = _mm256_loadu_ps(x + r * ldx + 32 * j + 8 * v);
      for (int t = 0; t < kRowBlock; ++t) {
        const __m256 wv = w[t][4 * j + v];
        for (int r = 0; r < RB; ++r) acc[t][r] = _mm256_fmadd_ps(wv, xv[r], acc[t][r]);
      }
    }
  for (int t = 0; t < kRowBlock; ++t)
    for (int r = 0; r < RB; ++r) {
      float* d = tot + 8 * (t * R + r);
      _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), acc[t][r]));
    }
}

// y[r * ldy + n] for R x rows. Chunk by chunk, kRowBlock weight rows are decoded into w, then the x
// rows sweep them 3 at a time: each x chunk is read from L1 once per weight row, from L2 once per
// kRowBlock rows. K runs in slabs of chunks whose R x rows fit the L2 (kSlabBytes), all row blocks of
// [n0, n1) per slab, so x is read from memory once per slab, not once per row block.
// tot [ceil((n1 - n0) / kRowBlock) * kRowBlock, R, 8]: partial sums. From 4 x rows on, where every
// block scale of the chunk is one normal power of two (always, but for |w| beyond ~2^103 or below
// ~2^-95), it is folded into the decoded weights first: w s1 is the dequantized weight itself, exact
// in fp32, so each product is rounded once as the reference's; otherwise the scales are applied to
// the chunk's sums (two exact factors, rows_block).
constexpr int64_t kSlabBytes = 192 << 10;

template <int M>
LK_T void gemv_rows(const Planes& P, const float* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                    int64_t ldy, float* tot_all) {
  const Codec<M> cd(0);
  __m256i bidx[4];
  block_index(cd, P.gs, bidx);
  const int64_t nchunks = (P.Kw + kChunkWords - 1) / kChunkWords;
  const int64_t slab = std::max<int64_t>(1, kSlabBytes / (R * kChunk * 4));  // chunks per slab
  __m256 w[kRowBlock][32];
  for (int64_t i = 0; i < (n1 - n0 + kRowBlock - 1) / kRowBlock * kRowBlock * R; ++i)
    _mm256_storeu_ps(tot_all + 8 * i, _mm256_setzero_ps());
  for (int64_t c0 = 0; c0 < nchunks; c0 += slab) {
    const int64_t c1 = std::min(nchunks, c0 + slab);
    for (int64_t nb0 = n0; nb0 < n1; nb0 += kRowBlock) {
      const int nb = static_cast<int>(std::min<int64_t>(kRowBlock, n1 - nb0));
      float* tot = tot_all + 8 * R * (nb0 - n0);
      for (int t = nb; t < kRowBlock; ++t)  // rows past n1 (the last block): zero weights, results unused
        for (int k = 0; k < 32; ++k) w[t][k] = _mm256_setzero_ps();
      for (int64_t c = c0; c < c1; ++c) {
        __m256 s1[kRowBlock][4], s2[kRowBlock][4];
        bool one[kRowBlock];
        for (int t = 0; t < nb; ++t) {
          decode_chunk<M>(cd, P, nb0 + t, c, w[t]);
          one[t] = chunk_scales<M>(P, nb0 + t, c, bidx, s1[t], s2[t]);
        }
        const float* xc = x + c * kChunk;
        // below 4 x rows the 32 x kRowBlock scaling multiplies cost more than they save; a row whose
        // scale needs two factors keeps them on its sums (decided per row: no row depends on another)
        const bool fold = R >= 4;
        for (int t = 0; t < nb; ++t) {
          if (fold && one[t]) continue;
          int64_t i = 0;
          for (; i + 3 <= R; i += 3) rows_block<3>(w[t], xc + i * ldx, ldx, one[t], s1[t], s2[t], tot + 8 * (t * R + i));
          if (R - i == 2) rows_block<2>(w[t], xc + i * ldx, ldx, one[t], s1[t], s2[t], tot + 8 * (t * R + i));
          if (R - i == 1) rows_block<1>(w[t], xc + i * ldx, ldx, one[t], s1[t], s2[t], tot + 8 * (t * R + i));
          if (fold)  // summed above: zero weights add exactly nothing in the folded pass below
            for (int k = 0; k < 32; ++k) w[t][k] = _mm256_setzero_ps();
        }
        if (!fold) continue;
        for (int t = 0; t < nb; ++t)
          if (one[t])
            for (int k = 0; k < 32; ++k) w[t][k] = _mm256_mul_ps(w[t][k], s1[t][k & 3]);
        int64_t i = 0;
        for (; i + 3 <= R; i += 3) rows_block_scaled<3>(w, xc + i * ldx, ldx, tot + 8 * i, R);
        if (R - i == 2) rows_block_scaled<2>(w, xc + i * ldx, ldx, tot + 8 * i, R);
        if (R - i == 1) rows_block_scaled<1>(w, xc + i * ldx, ldx, tot + 8 * i, R);
      }
      if (c1 == nchunks)
        for (int t = 0; t < nb; ++t)
          for (int64_t i = 0; i < R; ++i) y[i * ldy + nb0 + t] = hsum256(_mm256_loadu_ps(tot + 8 * (t * R + i)));
    }
  }
}

// Rows [n0, n1) exact fp32, permuted order (kernels.h).
template <int M>
LK_T void decode_rows(const Planes& P, int64_t n0, int64_t n1, float* out, int64_t ldo) {
  const Codec<M> cd(0);
  __m256i bidx[4];
  block_index(cd, P.gs, bidx);
  const int64_t nchunks = (P.Kw + kChunkWords - 1) / kChunkWords;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t c = 0; c < nchunks; ++c) {
      __m256 w[32], s1[4], s2[4];
      decode_chunk<M>(cd, P, n, c, w);
      if (chunk_scales<M>(P, n, c, bidx, s1, s2))
        for (int v = 0; v < 4; ++v) s2[v] = _mm256_set1_ps(1.0f);
      float* o = out + (n - n0) * ldo + c * kChunk;
      for (int j = 0; j < 8; ++j)  // both products exact: the weight is an fp32
        for (int v = 0; v < 4; ++v)
          _mm256_storeu_ps(o + 32 * j + 8 * v, _mm256_mul_ps(_mm256_mul_ps(w[4 * j + v], s1[v]), s2[v]));
    }
  }
}

// ------------------------------------------------------------------------ dispatch on m (1..8)
template <template <int> class Fn, class... A>
LK_T void by_width(int m, A&&... a) {
  switch (m) {
    case 1: Fn<1>::run(a...); break;
    case 2: Fn<2>::run(a...); break;
    case 3: Fn<3>::run(a...); break;
    case 4: Fn<4>::run(a...); break;
    case 5: Fn<5>::run(a...); break;
    case 6: Fn<6>::run(a...); break;
    case 7: Fn<7>::run(a...); break;
    default: Fn<8>::run(a...); break;
  }
}

template <int M>
struct GemvFn {
  static LK_T void run(const Planes& P, const float* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                       int64_t ldy, float* tot) {
    if (R == 1)
      gemv1<M>(P, x, n0, n1, y);
    else if (R == 2)
      gemv_few<M, 2>(P, x, ldx, n0, n1, y, ldy);
    else if (R == 3)
      gemv_few<M, 3>(P, x, ldx, n0, n1, y, ldy);
    else if (R == 4)
      gemv_few<M, 4>(P, x, ldx, n0, n1, y, ldy);
    else
      gemv_rows<M>(P, x, R, ldx, n0, n1, y, ldy, tot);
  }
};

template <int M>
struct DecodeFn {
  static LK_T void run(const Planes& P, int64_t n0, int64_t n1, float* out, int64_t ldo) {
    decode_rows<M>(P, n0, n1, out, ldo);
  }
};

LK_T void gemv_permuted(const Planes& P, const float* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                        int64_t ldy) {
  thread_local std::vector<float> tot;  // [rows of the task rounded up to kRowBlock, R, 8] partial sums
  const int64_t need = 8 * R * ((n1 - n0 + kRowBlock - 1) / kRowBlock * kRowBlock);
  if (R > 4 && static_cast<int64_t>(tot.size()) < need) tot.resize(need);
  by_width<GemvFn>(P.m, P, x, R, ldx, n0, n1, y, ldy, tot.data());
}

LK_T void decode_permuted(const Planes& P, int64_t n0, int64_t n1, float* out, int64_t ldo) {
  by_width<DecodeFn>(P.m, P, n0, n1, out, ldo);
}

#undef LK_TI
