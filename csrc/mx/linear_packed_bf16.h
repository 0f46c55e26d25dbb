// The prepacked block-quantized linear with AVX512-BF16 dot products (vdpbf16ps): the prefill
// kernel of the avx512bf16 ISA. y = x @ W_hat^T (+ bias) for x exact in bf16 (a.xh: bf16 x, or an
// MX dual x_hat), fp32 accumulation.
//
// Not a normal header: linear_avx512.cpp includes it after linear_packed_impl.h, inside namespace
// lin (V, I, kPR, PackedElem, table4_i8, packed_scales, packed_store, decode_w come from there).
//
// Per row tile (16 weight rows), once for every row of x:
//  * decode the tile to bf16 pairs: wb[k / 2] is one vector whose 32-bit lane i holds rows i's
//    elements k and k + 1 as bf16 (the decoded value * 2^D of linear_packed_impl.h: at most 8
//    significant bits, so the bf16 is the fp32's upper half, exactly), and each block's scale
//    vector (its fold / exact cases as in packed_tile);
//    Where every scaled weight is an exact normal bf16 (all but extreme scales), the tile is stored
//    folded: the weights themselves, no per-block rescale;
//  * then for 24 rows of x at a time (folded: 24 accumulators; else 12 rows, with per-block sums and
//    one FMA per block and row with the block scales): vdpbf16ps of each weight pair with the
//    broadcast pair (x[m, k], x[m, k + 1]), read from the row-group layout of a.xh (kernels.h:
//    the 24 rows' pairs of one k side by side, so a pass streams x from one place).
// Every product is exact in fp32 (8 x 8 significant bits); the sums are fp32, so the result differs
// from the fp32 kernel only in summation order, except that vdpbf16ps treats bf16 subnormal inputs
// and fp32 subnormal results as zero (|x| < 2^-126: below any bf16 activation a model produces).
// No x is rounded here: a.xh is only set where x is already exact in bf16.

#define LK_BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,f16c,fma"))) inline
// the micro-kernels: out of line, so their accumulators get the whole register file
#define LK_BF_MICRO __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,f16c,fma"), noinline))

constexpr int kGM = 12;  // rows of x per pass, unfolded: 2 * kGM accumulators + weights + scale <= 32 zmm
constexpr int kGF = kBf16RowGroup;  // rows of x per pass, folded: kGF accumulators + weights
static_assert(kBf16RowGroup % kGM == 0, "an unfolded pass stays inside one row group");

// rows' elements (lo: k, hi: k + 1) as fp32 vectors exact in bf16 -> one vector of bf16 pairs
LK_BF I bf16_pair(I lo, I hi) {
  return _mm512_or_si512(_mm512_srli_epi32(lo, 16), _mm512_and_si512(hi, _mm512_set1_epi32((int)0xFFFF0000u)));
}

// The pair vector of elements (lo, hi) -> *wb, scaled by fs first when folding; `bad` collects
// lanes whose folded value is not an exact normal bf16 (low half set, or a subnormal).
template <bool FOLD>
LK_BF void bf16_put(I* wb, __m512 sc, float pre, __mmask16& bad, I lo, I hi) {
  if constexpr (FOLD) {  // (decoded * pre) * scale: pre first (exact), as pre * scale may overflow
    const __m512 p = _mm512_set1_ps(pre);
    lo = _mm512_castps_si512(_mm512_mul_ps(_mm512_mul_ps(_mm512_castsi512_ps(lo), p), sc));
    hi = _mm512_castps_si512(_mm512_mul_ps(_mm512_mul_ps(_mm512_castsi512_ps(hi), p), sc));
    for (const I v : {lo, hi}) {
      const I mag = _mm512_and_si512(v, _mm512_set1_epi32(0x7fffffff));
      bad |= _mm512_test_epi32_mask(v, _mm512_set1_epi32(0xFFFF)) |
             _mm512_mask_cmplt_epi32_mask(_mm512_test_epi32_mask(mag, mag), mag, _mm512_set1_epi32(0x00800000));
    }
  }
  *wb = bf16_pair(lo, hi);
}

// Whether every scale byte of an MX block (16 rows) is >= min_s (max(s, min_s - 1) == min_s - 1: s < min_s).
LK_BF bool fold_scales_ok(const uint8_t* blk, int min_s) {
  if (min_s <= 0) return true;
  if (min_s > 255) return false;
  const __m128i sb = _mm_loadu_si128((const __m128i*)blk), below = _mm_set1_epi8((char)(min_s - 1));
  return !_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_max_epu8(sb, below), below));
}

// One block of a tile -> bs / 2 pair vectors at wb; its scale vector -> *sc and the factor the
// block sums take first -> *pre (1, or 2^-D where the folded scale would overflow).
// FOLD: store instead the weights themselves, decoded * pre * scale (the reference's fp32 W_hat
// before NV's g: exact products of <= 4 + 4 significant bits and a power of two), and return
// whether all of them are exact, non-subnormal bf16; false: the caller decodes the tile unfolded.
template <int EL, bool NV, bool FOLD>
LK_BF bool bf16_decode_block(const PackedLinearArgs& a, const uint8_t* blk, I* wb, I* sc, float* pre) {
  constexpr bool four = elem_params(EL).bits == 4;
  const int bs = a.block_size;
  const uint8_t* codes = blk + kPR;
  const bool exact = block_scales<EL, NV>(blk, four ? bs / 2 : bs, sc, pre);
  if constexpr (FOLD) {  // products with x that could fall below 2^-126 (PackedLinearArgs::fold_min_s): unfolded
    if (NV ? a.fold_min_s > 255 : !fold_scales_ok(blk, a.fold_min_s)) return false;
  }
  __mmask16 bad = 0;
  const __m512 fs = _mm512_castsi512_ps(*sc);
  if constexpr (four) {
    const __m128i tab = _mm_load_si128((const __m128i*)table4_i8<EL>()), lo4 = _mm_set1_epi8(0x0F);
    for (int q = 0; q < bs / 2; ++q) {  // code byte q of the 16 rows: elements 2q (low nibble), 2q + 1
      const __m128i raw = _mm_loadu_si128((const __m128i*)(codes + q * kPR));
      const __m128i e0 = _mm_shuffle_epi8(tab, _mm_and_si128(raw, lo4));
      const __m128i e1 = _mm_shuffle_epi8(tab, _mm_and_si128(_mm_srli_epi16(raw, 4), lo4));
      bf16_put<FOLD>(wb + q, fs, *pre, bad, _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(e0))),
          _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(e1))));
    }
  } else if (exact) {
    for (int q = 0; q < bs / 2; ++q)
      bf16_put<FOLD>(wb + q, fs, *pre, bad, decode_w<EL, false>(codes + 2 * q * kPR), decode_w<EL, false>(codes + (2 * q + 1) * kPR));
  } else {
    for (int q = 0; q < bs / 2; ++q)
      bf16_put<FOLD>(wb + q, fs, *pre, bad, decode_w<EL, true>(codes + 2 * q * kPR), decode_w<EL, true>(codes + (2 * q + 1) * kPR));
  }
  return bad == 0;
}

// MM rows of x (bf16, row stride K, from column 0) times one decoded tile -> acc[MM] (fp32 sums
// of the 16 rows, before g and bias).
template <int MM>
LK_BF_MICRO void bf16_micro(const int32_t* xg, const I* wb, const I* sc, const float* pre, int64_t nb, int bs,
                            __m512* acc) {
  for (int i = 0; i < MM; ++i) acc[i] = _mm512_setzero_ps();
  const int pb = bs / 2;
  for (int64_t b = 0; b < nb; ++b) {
    __m512 bacc[MM];
    for (int i = 0; i < MM; ++i) bacc[i] = _mm512_setzero_ps();
    const I* w = wb + b * pb;
    const I* const wend = w + pb;
    // x's pairs of step q at xb[0 .. MM): the pointer advances, so each operand's address is the pointer plus a
    // constant (an index q * 24 + i cost three scalar instructions per vdpbf16ps)
    const int32_t* xb = xg + b * pb * kBf16RowGroup;
    for (; w < wend; ++w, xb += kBf16RowGroup) {
      const __m512bh wv = (__m512bh)_mm512_load_si512(w);
      // the pair (x[m, k], x[m, k + 1]) as an embedded broadcast operand: no separate broadcast
      // uop competing with vdpbf16ps for the vector pipes (GCC does not fold it by itself)
      for (int i = 0; i < MM; ++i)
        asm("vdpbf16ps %[x]%{1to16%}, %[w], %[acc]" : [acc] "+v"(bacc[i]) : [w] "v"(wv), [x] "m"(xb[i]));
    }
    const __m512 s = _mm512_castsi512_ps(sc[b]);
    if (pre[b] != 1.0f)
      for (int i = 0; i < MM; ++i) bacc[i] = _mm512_mul_ps(bacc[i], _mm512_set1_ps(pre[b]));
    for (int i = 0; i < MM; ++i) acc[i] = _mm512_fmadd_ps(bacc[i], s, acc[i]);
  }
}

// MM rows of x times one folded tile (scales inside the bf16 weights): one fp32 sum per output,
// no per-block rescale, up to kGF accumulator chains (common/bf16_dot_avx512.h).
static_assert(kBf16RowGroup == cpu::bf16dot::kRowGroup, "one row-group layout for x");

// bf16_micro (or bf16_micro_folded when sc is nullptr) with MM = mm rows, then the rows' stores.
template <int MM>
LK_BF void bf16_rows(int mm, const PackedLinearArgs& a, const I* wb, const I* sc, const float* pre, int64_t m0,
                     int64_t n0, int rows, float post) {
  if (mm != MM) {
    if constexpr (MM < kGF) bf16_rows<MM + 1>(mm, a, wb, sc, pre, m0, n0, rows, post);
    return;
  }
  __m512 acc[MM];
  // rows m0.. of x in the row-group layout (kernels.h): group m0 / 24, from row m0 % 24 of it
  const int32_t* xg = a.xh + (m0 / kBf16RowGroup) * (a.K / 2) * kBf16RowGroup + m0 % kBf16RowGroup;
  if (!sc)
    cpu::bf16dot::micro<MM>(xg, a.K / 2, wb, acc);
  else if constexpr (MM <= kGM)
    bf16_micro<MM>(xg, wb, sc, pre, a.K / a.block_size, a.block_size, acc);
  for (int i = 0; i < MM; ++i) {
    const I v = _mm512_castps_si512(acc[i]);
    packed_store(a, m0 + i, n0, rows, &v, post);
  }
}

template <int EL, bool NV>
LK_BF void bf16_range_fmt(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  const int64_t nb = a.K / a.block_size;
  // one decoded tile (K * 32 bytes, in L2) and its block scales; 64-byte aligned by hand (the
  // extension's std::allocator does not honour __m512i's alignment)
  std::vector<uint8_t> buf((size_t)((a.K / 2 + nb) * sizeof(I) + 64));
  I* const wbuf = (I*)(((uintptr_t)buf.data() + 63) & ~(uintptr_t)63);
  I* const sbuf = wbuf + a.K / 2;
  std::vector<float> pre((size_t)nb);
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* tile = a.packed + t * nb * a.block_bytes;
    bool folded = true;
    for (int64_t b = 0; b < nb && folded; ++b)
      folded = bf16_decode_block<EL, NV, true>(a, tile + b * a.block_bytes, wbuf + b * (a.block_size / 2), sbuf + b,
                                               pre.data() + b);
    if (!folded)  // a block whose scaled weights are not exact normal bf16 (extreme scales): per-block scales
      for (int64_t b = 0; b < nb; ++b)
        bf16_decode_block<EL, NV, false>(a, tile + b * a.block_bytes, wbuf + b * (a.block_size / 2), sbuf + b,
                                         pre.data() + b);
    const int64_t n0 = t * kPR;
    const int rows = (int)(a.N - n0 < kPR ? a.N - n0 : kPR);
    const int step = folded ? kGF : kGM;
    for (int64_t m0 = 0; m0 < a.M; m0 += step)
      bf16_rows<1>((int)(a.M - m0 < step ? a.M - m0 : step), a, wbuf, folded ? nullptr : sbuf, pre.data(), m0, n0,
                   rows, NV ? a.g : 1.0f);
  }
}

LK_BF bool linear_packed_bf16_range(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  if (!a.xh) return false;
  return dispatch_packed_format(a.fmt, [&](auto el, auto nv) {
    bf16_range_fmt<decltype(el)::value, decltype(nv)::value>(a, t0, t1);
  });
}

// (LK_BF / LK_BF_MICRO stay defined for linear_packed_bf16_small.h, which undefines them.)
