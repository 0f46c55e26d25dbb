// The prepacked block-quantized linear in dual mode with int8 dot products (AVX512-VNNI vpdpbusd):
// INT x INT products of the avx512bf16 ISA. Weight and activation formats whose element values
// times 2^D are integers in [-128, 127]: MXINT8 (D = 0), MXINT4 (0), MXFP4 (E2M1 * 2: 1).
//
// Not a normal header: linear_avx512.cpp includes it after linear_packed_impl.h, inside namespace
// lin (V, I, kPR, PackedElem, table4_i8, packed_scales, packed_store come from there).
//
// Per row tile (16 weight rows), once for every row of x:
//  * decode the tile to quads: one vector per 4 consecutive k whose 32-bit lane i holds row i's
//    4 elements as unsigned bytes (value * 2^D + 128), and each block's factors 2^(s - 127 - D);
//  * then for 12 rows of x at a time, per block: vpdpbusd of each weight quad with the broadcast
//    quad of x's signed bytes (a.xq, the row-group layout of kernels.h), starting from
//    -128 * sum(x) of the block (a.xcorr, which removes the + 128), so the int32 sum is the block's
//    exact sum of integer products; then acc += float(sum) * w_factor * x_factor.
// The block sums are exact (|sum| <= 128 * 128 * block_size < 2^31; converted to fp32 exactly up to
// 2^24, i.e. block sizes <= 1024 of int8 extremes), so the result is the reference's products summed
// in fp32 in another order: the bound of docs/numerics.md holds.

#define LK_VN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,f16c,fma"))) inline
#define LK_VN_MICRO __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,f16c,fma"), noinline))

constexpr int kQM = 12;  // rows of x per pass: 2 * kQM accumulators + weights + factors <= 32 zmm
static_assert(kBf16RowGroup % kQM == 0, "a pass stays inside one row group");

// u8 table of a 4-bit format: value * 2^D + 128
template <int EL>
const uint8_t* table4_u8() {
  struct Table {
    alignas(16) uint8_t v[16];
    Table() {
      for (int c = 0; c < 16; ++c) v[c] = (uint8_t)(table4_i8<EL>()[c] + 128);
    }
  };
  static const Table t;
  return t.v;
}

// a[t] = element k + t of rows 0..15 (one byte each) -> lane i = row i's 4 bytes, k first
LK_VN I quad_rows(__m128i a0, __m128i a1, __m128i a2, __m128i a3) {
  const __m128i t0 = _mm_unpacklo_epi8(a0, a1), t1 = _mm_unpackhi_epi8(a0, a1);  // rows 0-7, 8-15: k, k+1
  const __m128i t2 = _mm_unpacklo_epi8(a2, a3), t3 = _mm_unpackhi_epi8(a2, a3);  // k+2, k+3
  const __m256i lo = _mm256_set_m128i(_mm_unpackhi_epi16(t0, t2), _mm_unpacklo_epi16(t0, t2));  // rows 0-7
  const __m256i hi = _mm256_set_m128i(_mm_unpackhi_epi16(t1, t3), _mm_unpacklo_epi16(t1, t3));  // rows 8-15
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// One block of a tile -> bs / 4 quad vectors at wq, its factor vector at *sw.
template <int EL>
LK_VN void int8_decode_block(const PackedLinearArgs& a, const uint8_t* blk, I* wq, I* sw) {
  packed_scales<false, PackedElem<EL>::D>(blk, sw);  // D >= 0: 2^(s - 127 - D) never overflows
  const uint8_t* codes = blk + kPR;
  const int qb = a.block_size / 4;
  if constexpr (elem_params(EL).bits == 4) {  // code byte q of the 16 rows: elements 2q (low nibble), 2q + 1
    const __m128i tab = _mm_load_si128((const __m128i*)table4_u8<EL>()), lo4 = _mm_set1_epi8(0x0F);
    for (int j = 0; j < qb; ++j) {
      const __m128i r0 = _mm_loadu_si128((const __m128i*)(codes + 2 * j * kPR));
      const __m128i r1 = _mm_loadu_si128((const __m128i*)(codes + (2 * j + 1) * kPR));
      wq[j] = quad_rows(_mm_shuffle_epi8(tab, _mm_and_si128(r0, lo4)),
                        _mm_shuffle_epi8(tab, _mm_and_si128(_mm_srli_epi16(r0, 4), lo4)),
                        _mm_shuffle_epi8(tab, _mm_and_si128(r1, lo4)),
                        _mm_shuffle_epi8(tab, _mm_and_si128(_mm_srli_epi16(r1, 4), lo4)));
    }
  } else {  // INT8: the code is the value (two's complement); + 128 = flip the sign bit
    const __m128i s = _mm_set1_epi8((char)0x80);
    for (int j = 0; j < qb; ++j) {
      const uint8_t* c = codes + 4 * j * kPR;
      wq[j] = quad_rows(_mm_xor_si128(_mm_loadu_si128((const __m128i*)c), s),
                        _mm_xor_si128(_mm_loadu_si128((const __m128i*)(c + kPR)), s),
                        _mm_xor_si128(_mm_loadu_si128((const __m128i*)(c + 2 * kPR)), s),
                        _mm_xor_si128(_mm_loadu_si128((const __m128i*)(c + 3 * kPR)), s));
    }
  }
}

// MM rows of x (xq: [K / 4][24] quads from the pass's first row; xc, xf: [nb][24] likewise) times
// one decoded tile -> acc[MM].
template <int MM>
LK_VN_MICRO void int8_micro(const int32_t* xq, const int32_t* xc, const float* xf, const I* wq, const I* sw,
                            int64_t nb, int qb, __m512* acc) {
  // the fp32 sums in memory (acc, L1), loaded and stored once per block: in registers beside the MM int32 block sums
  // they were spilled and copied around every block by the compiler (the memory clobber keeps them out)
  for (int i = 0; i < MM; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    asm volatile("" ::: "memory");
    I bacc[MM];
    for (int i = 0; i < MM; ++i) bacc[i] = _mm512_set1_epi32(xc[b * kBf16RowGroup + i]);
    const I* w = wq + b * qb;
    const I* const wend = w + qb;
    // x's quads of step j at xb[0 .. MM): the pointer advances, so each operand's address is the pointer plus a
    // constant (an index j * 24 + i cost three scalar instructions per vpdpbusd)
    const int32_t* xb = xq + b * qb * kBf16RowGroup;
    for (; w < wend; ++w, xb += kBf16RowGroup) {
      const I wv = _mm512_load_si512(w);
      // x's quad as an embedded broadcast (the signed operand); the weights are the unsigned one
      for (int i = 0; i < MM; ++i)
        asm("vpdpbusd %[x]%{1to16%}, %[w], %[acc]" : [acc] "+v"(bacc[i]) : [w] "v"(wv), [x] "m"(xb[i]));
    }
    const __m512 s = _mm512_castsi512_ps(sw[b]);
    for (int i = 0; i < MM; ++i)
      acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(bacc[i]), s), _mm512_set1_ps(xf[b * kBf16RowGroup + i]),
                               acc[i]);
  }
}

// int8_micro with MM = mm (1..kQM), then the rows' stores.
template <int MM>
LK_VN void int8_rows(int mm, const PackedLinearArgs& a, const I* wq, const I* sw, int64_t m0, int64_t n0, int rows) {
  if (mm != MM) {
    if constexpr (MM < kQM) int8_rows<MM + 1>(mm, a, wq, sw, m0, n0, rows);
    return;
  }
  const int64_t nb = a.K / a.block_size, g = m0 / kBf16RowGroup, i0 = m0 % kBf16RowGroup;
  __m512 acc[MM];
  int8_micro<MM>(a.xq + g * (a.K / 4) * kBf16RowGroup + i0, a.xcorr + g * nb * kBf16RowGroup + i0,
                 a.xfac + g * nb * kBf16RowGroup + i0, wq, sw, nb, a.block_size / 4, acc);
  for (int i = 0; i < MM; ++i) {
    const I v = _mm512_castps_si512(acc[i]);
    packed_store(a, m0 + i, n0, rows, &v, 1.0f);
  }
}

template <int EL>
LK_VN void int8_range_fmt(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  const int64_t nb = a.K / a.block_size;
  std::vector<uint8_t> buf((size_t)((a.K / 4 + nb) * sizeof(I) + 64));  // one tile; aligned by hand
  I* const wq = (I*)(((uintptr_t)buf.data() + 63) & ~(uintptr_t)63);
  I* const sw = wq + a.K / 4;
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* tile = a.packed + t * nb * a.block_bytes;
    for (int64_t b = 0; b < nb; ++b) int8_decode_block<EL>(a, tile + b * a.block_bytes, wq + b * (a.block_size / 4), sw + b);
    const int64_t n0 = t * kPR;
    const int rows = (int)(a.N - n0 < kPR ? a.N - n0 : kPR);
    for (int64_t m0 = 0; m0 < a.M; m0 += kQM) int8_rows<1>((int)(a.M - m0 < kQM ? a.M - m0 : kQM), a, wq, sw, m0, n0, rows);
  }
}

// ---- few rows (decode, M <= kInt8SmallRows; a.xqs set): each tile streamed once, decoded in registers ----
// Why: the form above decodes a whole tile into a buffer (K / 4 vectors: 64 KB at K = 4096) and reads it back,
// 2.3x the time of the bf16 few-rows kernel at M = 1; here a 64-byte group of codes costs one vpermb (the few-rows
// kernels' transpose: lane r = row r's 4 code bytes), 4-bit codes two and-ed nibble lookups (vpshufb, value * 2^D
// + 128), and one vpdpbusd per 64 products and row, against ~3 instructions per 16 products in the fp32 FMA form.
// x's quads come in that order (a.xqs: 4-bit weights pair the even and the odd elements of each 8).
#define LK_VNB __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx2,f16c,fma"))) inline

template <int EL, int MM>
LK_VNB void int8_small_tile(const PackedLinearArgs& a, const uint8_t* tile, int64_t m0, int64_t n0, int rows) {
  constexpr bool four = elem_params(EL).bits == 4;
  const int bs = a.block_size;
  const int64_t nb = a.K / bs, K4 = a.K / 4;
  const I tidx = _mm512_load_si512(quad_transpose_index());
  const I tab = four ? _mm512_broadcast_i32x4(_mm_load_si128((const __m128i*)table4_u8<EL>())) : _mm512_setzero_si512();
  const I lo4 = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8((char)0x80);
  const int32_t* xq = a.xqs + m0 * K4;
  __m512 acc[MM];
  for (int m = 0; m < MM; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = tile + b * a.block_bytes;
    // the block into L1 kFmaPrefetch ahead (1 KB / 8 KB into L2, 4 KB, or a second prefetch 16 / 32 KB ahead into
    // L2: no faster, M = 1 cold on the 2-core Xeon)
    for (int64_t off = 0; off < a.block_bytes; off += 64) __builtin_prefetch(blk + kFmaPrefetch + off);
    I sw;
    packed_scales<false, PackedElem<EL>::D>(blk, &sw);
    I bacc[MM];  // starts at -128 * sum(x): removes the weights' + 128
    for (int m = 0; m < MM; ++m) bacc[m] = _mm512_set1_epi32(a.xcorr[b * kBf16RowGroup + m0 + m]);
    const uint8_t* codes = blk + kPR;
    const int32_t* xb = xq + b * (bs / 4);
    if constexpr (four) {
      for (int g = 0; g < bs / 8; ++g) {  // elements 8 g .. 8 g + 7 of the 16 rows: even ones low, odd ones high
        const I v = _mm512_permutexvar_epi8(tidx, _mm512_loadu_si512(codes + 64 * g));
        const I lo = _mm512_shuffle_epi8(tab, _mm512_and_si512(v, lo4));
        const I hi = _mm512_shuffle_epi8(tab, _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4));
        for (int m = 0; m < MM; ++m) {
          asm("vpdpbusd %[x]%{1to16%}, %[w], %[acc]" : [acc] "+v"(bacc[m]) : [w] "v"(lo), [x] "m"(xb[m * K4 + 2 * g]));
          asm("vpdpbusd %[x]%{1to16%}, %[w], %[acc]" : [acc] "+v"(bacc[m]) : [w] "v"(hi), [x] "m"(xb[m * K4 + 2 * g + 1]));
        }
      }
    } else {
      for (int g = 0; g < bs / 4; ++g) {  // elements 4 g .. 4 g + 3 of the 16 rows; + 128 = flip the sign bit
        const I v = _mm512_xor_si512(_mm512_permutexvar_epi8(tidx, _mm512_loadu_si512(codes + 64 * g)), flip);
        for (int m = 0; m < MM; ++m)
          asm("vpdpbusd %[x]%{1to16%}, %[w], %[acc]" : [acc] "+v"(bacc[m]) : [w] "v"(v), [x] "m"(xb[m * K4 + g]));
      }
    }
    const __m512 s = _mm512_castsi512_ps(sw);
    for (int m = 0; m < MM; ++m)
      acc[m] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(bacc[m]), s),
                               _mm512_set1_ps(a.xfac[b * kBf16RowGroup + m0 + m]), acc[m]);
  }
  for (int m = 0; m < MM; ++m) {
    const I v = _mm512_castps_si512(acc[m]);
    packed_store(a, m0 + m, n0, rows, &v, 1.0f);
  }
}

template <int EL>
LK_VNB void int8_small_range_fmt(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  const int64_t nb = a.K / a.block_size;
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* tile = a.packed + t * nb * a.block_bytes;
    const int64_t n0 = t * kPR;
    const int rows = (int)(a.N - n0 < kPR ? a.N - n0 : kPR);
    switch (a.M) {  // (M <= kInt8SmallRows: one pass)
      case 1: int8_small_tile<EL, 1>(a, tile, 0, n0, rows); break;
      case 2: int8_small_tile<EL, 2>(a, tile, 0, n0, rows); break;
      case 3: int8_small_tile<EL, 3>(a, tile, 0, n0, rows); break;
      default: int8_small_tile<EL, 4>(a, tile, 0, n0, rows); break;
    }
  }
}
static_assert(kInt8SmallRows <= 4 && kInt8SmallRows <= kBf16RowGroup, "one pass of int8_small_tile");

LK_VN bool linear_packed_int8_range(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  const FormatSpec& f = kFormats[a.fmt];
  if (!a.xq || f.is_nv) return false;
  if (a.xqs) {
    switch (f.elem) {
      case kInt8: int8_small_range_fmt<kInt8>(a, t0, t1); return true;
      case kInt4: int8_small_range_fmt<kInt4>(a, t0, t1); return true;
      case kFp4E2M1: int8_small_range_fmt<kFp4E2M1>(a, t0, t1); return true;
      default: return false;
    }
  }
  switch (f.elem) {
    case kInt8: int8_range_fmt<kInt8>(a, t0, t1); return true;
    case kInt4: int8_range_fmt<kInt4>(a, t0, t1); return true;
    case kFp4E2M1: int8_range_fmt<kFp4E2M1>(a, t0, t1); return true;
    default: return false;
  }
}

#undef LK_VN
#undef LK_VNB
#undef LK_VN_MICRO
