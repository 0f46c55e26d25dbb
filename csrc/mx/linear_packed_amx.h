// The prepacked block-quantized linear on AMX tiles (TDPBF16PS): the prefill kernel of the
// avx512bf16 ISA where the CPU has AMX (cpu::amx_enabled()). y = x @ W_hat^T (+ bias) for x exact
// in bf16 (bf16 x, or an MX dual x_hat), fp32 accumulation.
//
// Not a normal header: linear_avx512.cpp includes it after linear_packed_bf16_small.h, inside
// namespace lin (I, kPR, PackedElem, decode_w, table4_i8 / table4_bf16, small_pairs4, bf16_pair,
// bf16_decode_block and linear_packed_bf16_small_range come from there).
//
// Why: one TDPBF16PS is 16 x 16 x 32 multiply-adds (16 rows of x, 16 weight rows, 32 elements of
// K) in 16 core cycles, ~10x what vdpbf16ps gives per cycle; torch's bf16 F.linear (oneDNN) uses
// it at M = 512, so a weight-only kernel must too.
//
// Layout. The decoded tile of the AVX-512 prefill kernel (wb[q]: lane i = weight row i's elements
// 2q, 2q + 1 as a bf16 pair) is already AMX's B operand: 16 consecutive pair vectors (64 bytes
// each) are one B tile (32 elements of K for 16 output columns). The A operand is 16 rows x 32
// bf16 of x: a.xa holds x as those tiles, 1 KB each, in K order per 16 rows (kernels.h). Why not
// row-major x with the stride 2K: 16 rows 8 KB apart (K = 4096) share one L1 set, and every A
// load missed L1 (2.5x slower in all).
//
// Blocking (per thread, its row tiles [t0, t1)):
//  * panels of kAmxPanel row tiles (256 output columns) x kAmxMaxM rows of x;
//  * per K chunk (kAmxChunk elements, whole blocks): decode the panel's blocks of the chunk
//    (folded: the weights with their block scale, as the AVX-512 kernel does; 8 KB per tile, in
//    L2), then every pair of its tiles (16 KB, in L1 while every 32 rows of x pass over them: a
//    pass brings 16 KB of x, so the pair and the pass fit the 48 KB L1 together. With 512-element
//    chunks, 32 KB + 32 KB did not, and the pair was refetched from L2: 4096 x 4096 at M = 512,
//    cold, 2-core Xeon, 256 against 512 in one process: 1.18-1.22x over mxfp4, MXINT8 dual and mxfp8; 1.07-1.24x
//    over three shapes; 128 alike, 64 slower: each chunk reloads and stores the accumulators; 32-tile panels
//    no better, 8 slower).
//    (Measured on a Xeon with AMX: decoding one pair just before its products, or prefetching the
//    next chunk's codes, were both slower, by ~20% and ~8% at M <= 16.)
//  * 2 x 2 tile blocks (32 rows of x x 32 columns: 4 accumulator tiles, 2 A, 2 B = all 8 tile
//    registers), accumulators kept between chunks in a per-thread fp32 buffer (L2), and x's chunk
//    ([512, 256] bf16: 256 KB) read from L2 once per pair of tiles.
// Every weight is decoded once per kAmxMaxM rows of x.
//
// Numerics: those of the folded AVX-512 prefill path (products exact in fp32, fp32 sums, here in
// K order per output, 2 products at a time). TDPBF16PS treats bf16 subnormal inputs as zero and
// flushes subnormal results (as vdpbf16ps). A row tile with a block whose scaled weights are not
// exact normal bf16 (extreme scales, E4M3 NaN codes) is not folded: its columns are recomputed by
// the few-rows kernel (per-block scales), which reads the same bf16 x (a.xb).
// Measured (bench/bench_mx_amx.py, docs/bench/mx_linear_amx_ab_xeon.txt, 2-core Xeon): 4096 x 4096
// at M = 512 in 9.1-10.6 ms (1.6-1.9 TFLOP/s, 0.96-1.13x torch bf16, 10-11x the AVX-512 kernel) with 512-element
// chunks; 256-element chunks since: 1.07-1.24x faster (docs/bench/mx_linear_amx_chunk256_ab_xeon.txt).

#define LK_AMX LK_AMX_FN  // (common/amx.h)
// the per-block decode helpers: inlined into the loops (as calls, with their table set-up per block: 5% slower)
#define LK_AMX_INL __attribute__((target(LK_AMX_TARGET), always_inline)) inline
// the few-rows kernel and its 4-bit decoder (vpermb: every CPU with AMX has AVX512-VBMI)
#define LK_AMX4 __attribute__((target(LK_AMX_TARGET ",avx512vbmi"), always_inline)) inline

constexpr int kAmxPanel = 16;    // row tiles decoded per pass (256 output columns)
constexpr int kAmxChunk = 256;   // elements of K decoded per pass (whole blocks; more for a larger block)
constexpr int64_t kAmxMaxM = 512;  // rows of x per pass (the accumulators: 512 x 256 fp32 = 512 KB)
constexpr int kAmxK = cpu::amx::kK;
constexpr int kAmxTileBytes = cpu::amx::kTileBytes;

// ---- the fast folded decode of MX blocks ----
// An MX scale is a power of two, so folding it into a decoded bf16 weight (element * 2^D, exact)
// is an add of s - 127 - D to its exponent field, where the result stays a normal number: one
// masked vpaddw per 32 weights instead of bf16_decode_block's fp32 multiplies and per-weight
// exactness checks (together ~3x the decode; at M = 512 the decode was ~15% of the time, at
// M = 32 nearly all of it). Whether it stays normal is decided per block from the scale bytes and
// the format's exponent range; other blocks (extreme scales, NaN scale bytes, FP8 NaN / Inf codes)
// take bf16_decode_block. NV blocks (E4M3 scales: a real multiply) have their own (amx_decode_nv).

// Biased exponents of the smallest and largest nonzero finite decoded magnitude (element * 2^D)
// of a format, as its fast decoder produces them.
struct AmxExpRange {
  int lo, hi;
};
template <int EL>
LK_AMX bool amx_special_code(uint32_t c) {  // FP8 codes decode_w<EL, true> does not decode as numbers
  if constexpr (EL == kFp8E4M3) return (c & 0x7F) == 0x7F;
  if constexpr (EL == kFp8E5M2) return (c & 0x7C) == 0x7C;
  return false;
}
template <int EL>
LK_AMX AmxExpRange amx_exp_range_of() {
  constexpr int bits = elem_params(EL).bits;
  AmxExpRange r{255, 0};
  for (uint32_t c0 = 0; c0 < (1u << bits); c0 += kPR) {
    alignas(64) uint32_t v[kPR];
    alignas(16) uint8_t c[kPR];
    for (int i = 0; i < kPR; ++i) c[i] = (uint8_t)(c0 + i);
    if constexpr (bits == 4) {
      for (int i = 0; i < kPR; ++i) v[i] = f2u((float)table4_i8<EL>()[i]);
    } else {
      _mm512_store_si512(v, decode_w<EL, true>(c));
    }
    for (int i = 0; i < kPR; ++i) {
      const uint32_t mag = v[i] & 0x7fffffffu;
      if (mag == 0 || amx_special_code<EL>(c0 + i)) continue;
      const int e = (int)(mag >> 23);
      r.lo = e < r.lo ? e : r.lo;
      r.hi = e > r.hi ? e : r.hi;
    }
  }
  return r;
}
template <int EL>
LK_AMX const AmxExpRange& amx_exp_range() {
  static const AmxExpRange r = amx_exp_range_of<EL>();
  return r;
}

// One MX block: the exponent step of its 16 rows (s - 127 - D, in both 16-bit halves of the row's
// lane) -> *add, or false where a row's folded weights could leave the normal range (or its scale
// byte is NaN, or an FP8 block holds a NaN / Inf code). r: amx_exp_range<EL>().
template <int EL>
LK_AMX_INL bool amx_fold_step(const uint8_t* blk, int64_t code_bytes, const AmxExpRange& r, int min_s, I* add) {
  constexpr int D = PackedElem<EL>::D;
  const I sb = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)blk));
  const I e = _mm512_sub_epi32(sb, _mm512_set1_epi32(127 + D));
  const __mmask16 ok = _mm512_cmpge_epi32_mask(e, _mm512_set1_epi32(1 - r.lo)) &
                       _mm512_cmple_epi32_mask(e, _mm512_set1_epi32(254 - r.hi)) &
                       _mm512_cmpneq_epi32_mask(sb, _mm512_set1_epi32(255)) &
                       _mm512_cmpge_epi32_mask(sb, _mm512_set1_epi32(min_s));  // (PackedLinearArgs::fold_min_s)
  if (ok != 0xFFFF) return false;
  if constexpr (EL == kFp8E4M3) {
    if (X::any_masked_eq(blk + kPR, code_bytes * kPR, 0x7F)) return false;
  } else if constexpr (EL == kFp8E5M2) {
    if (X::any_masked_eq(blk + kPR, code_bytes * kPR, 0x7C)) return false;
  }
  const I step = _mm512_and_si512(_mm512_slli_epi32(e, 7), _mm512_set1_epi32(0xFFFF));  // (two's complement)
  *add = _mm512_or_si512(step, _mm512_slli_epi32(step, 16));
  return true;
}

// The 4-bit MX decoder of the few-rows kernel: quad_pairs4's lookups (4 pair vectors per 64-byte load, in xb8's
// order) from a table whose nonzero entries carry their exponent raised by bias4 = 255 - the largest one, and the
// block scale folded by one unsigned saturating 16-bit subtract per vector of (bias4 - step) << 7: zero entries
// (both signed zeros decode to +0) stay zero, every other lands on its folded exponent, without the per-vector zero
// test and masked add of amx_decode_fast: 3 instructions per 32 weights instead of 6 (in L1 on the Xeon: 0.71
// instead of 1.02 ns).
// Exact where amx_fold_step accepts the block: the folded exponents are in [1, 254], so no subtract borrows into
// the mantissa's neighbour (the sign bit) or saturates a nonzero value.
template <int EL>
const uint16_t* amx_table4_biased() {
  struct Table {
    alignas(64) uint16_t v[32];
    Table() {
      const uint16_t* t = table4_bf16<EL>();
      const int bias = 255 - amx_exp_range_of<EL>().hi;
      for (int c = 0; c < 32; ++c) v[c] = (t[c] & 0x7FFF) == 0 ? 0 : (uint16_t)(t[c] + (bias << 7));
    }
  };
  static const Table t;
  return t.v;
}

// One MX block's subtrahend for the biased decoder ((bias4 - step) << 7 in both 16-bit halves of each row's lane)
// -> *sub, or false as amx_fold_step.
template <int EL>
LK_AMX_INL bool amx_fold_sub(const uint8_t* blk, const AmxExpRange& r, int min_s, int bias4, I* sub) {
  I add;  // step << 7 in both halves (mod 2^16)
  if (!amx_fold_step<EL>(blk, 0, r, min_s, &add)) return false;
  *sub = _mm512_sub_epi16(_mm512_set1_epi16((short)(bias4 << 7)), add);
  return true;
}

// One block's codes (bs % 8 == 0) -> its bs / 2 pair vectors in xb8's order, folded by sub (amx_fold_sub).
LK_AMX4 void amx_decode_quad4(const uint8_t* codes, int bs, I sub, I tidx, I btab, I* w) {
  for (int g = 0; g < bs / 8; ++g) {
    const I v = _mm512_permutexvar_epi8(tidx, _mm512_loadu_si512(codes + 64 * g));
    w[4 * g] = _mm512_subs_epu16(_mm512_permutexvar_epi16(v, btab), sub);
    w[4 * g + 1] = _mm512_subs_epu16(_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), btab), sub);
    w[4 * g + 2] = _mm512_subs_epu16(_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 8), btab), sub);
    w[4 * g + 3] = _mm512_subs_epu16(_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 12), btab), sub);
  }
}

// The block's bs / 2 pair vectors (as bf16_decode_block<FOLD> writes them) -> w.
// tab: table4_bf16<EL>() for 4-bit formats (else unused).
template <int EL>
LK_AMX_INL void amx_decode_fast(const uint8_t* codes, int bs, I add, I tab, I* w) {
  const I magnitude = _mm512_set1_epi16(0x7FFF);
  if constexpr (elem_params(EL).bits == 4) {
    for (int q = 0; q < bs / 2; ++q) {
      const I p = small_pairs4(codes + q * kPR, tab);
      _mm512_store_si512(w + q, _mm512_mask_add_epi16(p, _mm512_test_epi16_mask(p, magnitude), p, add));
    }
  } else {
    for (int q = 0; q < bs / 2; ++q) {
      const I p = bf16_pair(decode_w<EL, true>(codes + 2 * q * kPR), decode_w<EL, true>(codes + (2 * q + 1) * kPR));
      _mm512_store_si512(w + q, _mm512_mask_add_epi16(p, _mm512_test_epi16_mask(p, magnitude), p, add));
    }
  }
}

// One NV block (4-bit elements, E4M3 scales): decoded * scale in fp32, exact in bf16 and normal for
// every code and finite scale (<= 3 x 4 significant bits, |product| in [2^-10, 2^12)), so no
// per-weight check; false (bf16_decode_block instead) for a NaN scale byte.
template <int EL>
LK_AMX_INL bool amx_decode_nv(const uint8_t* blk, int bs, int min_s, I tab, I* w) {
  if (min_s > 255) return false;  // products with x could fall below 2^-126 (PackedLinearArgs::fold_min_s)
  const __m128i sb = _mm_loadu_si128((const __m128i*)blk);
  if (_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_and_si128(sb, _mm_set1_epi8(0x7F)), _mm_set1_epi8(0x7F)))) return false;
  I sc;
  packed_scales<true, PackedElem<EL>::D>(blk, &sc);  // bf16_decode_block's factor for a foldable block
  const __m512 f = _mm512_castsi512_ps(sc);
  const I hi16 = _mm512_set1_epi32((int)0xFFFF0000u);
  for (int q = 0; q < bs / 2; ++q) {
    const I p = small_pairs4(blk + kPR + q * kPR, tab);
    const I lo = _mm512_castps_si512(_mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(p, 16)), f));
    const I hi = _mm512_castps_si512(_mm512_mul_ps(_mm512_castsi512_ps(_mm512_and_si512(p, hi16)), f));
    _mm512_store_si512(w + q, bf16_pair(lo, hi));
  }
  return true;
}

// One block (bs / 2 pair vectors) -> w, folded (the scale inside the bf16 weights) by the fast decoders where
// they apply, else by bf16_decode_block; false where the block does not fold (its tile goes to the few-rows kernel).
// dec: the decoders' constants, set up once per call.
struct AmxDecoder {
  AmxExpRange r;  // amx_exp_range<EL>()
  I tab;          // table4_bf16<EL>() (4-bit formats)
  I tidx, btab;   // 4-bit MX: quad_transpose_index(), amx_table4_biased<EL>()
  int bias4;      // 4-bit MX: 255 - r.hi
};
template <int EL>
LK_AMX AmxDecoder amx_decoder() {
  const I z = _mm512_setzero_si512();
  AmxDecoder d{amx_exp_range<EL>(), z, z, z, 255 - amx_exp_range<EL>().hi};
  if constexpr (elem_params(EL).bits == 4) {
    d.tab = _mm512_load_si512(table4_bf16<EL>());
    d.tidx = _mm512_load_si512(quad_transpose_index());
    d.btab = _mm512_load_si512(amx_table4_biased<EL>());
  }
  return d;
}
template <int EL, bool NV>
LK_AMX_INL bool amx_decode_block(const PackedLinearArgs& a, const AmxDecoder& dec, const uint8_t* blk, int64_t code_bytes,
                                 I* w) {
  if constexpr (NV) {
    if (amx_decode_nv<EL>(blk, a.block_size, a.fold_min_s, dec.tab, w)) return true;
  } else {
    I add;
    if (amx_fold_step<EL>(blk, code_bytes, dec.r, a.fold_min_s, &add)) {
      amx_decode_fast<EL>(blk + kPR, a.block_size, add, dec.tab, w);
      return true;
    }
  }
  I sc;  // block scales / first factor: written by the decoder, unused when folded
  float pre;
  return bf16_decode_block<EL, NV, true>(a, blk, w, &sc, &pre);
}

// fp32 sums -> the output dtype's 16-bit patterns in the low halves of 32-bit lanes, rounded as
// store_f32_bits rounds (bf16: RNE, NaN -> 0xFFFF; fp16: vcvtps2ph's RNE).
LK_AMX I amx_half_bits(const PackedLinearArgs& a, __m512 v) {
  if (a.out_dtype == kInF16) return _mm512_cvtepu16_epi32(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  const I b = _mm512_castps_si512(v);
  const I one = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const I r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), one)), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0xFFFF));
}

// Rows [0, mrows) of one or two accumulator tiles (c0: columns n0.., c1: the next 16, or nullptr)
// -> y rows m0.. (times post, plus bias), `cols` columns in all; one store per row (a whole
// 64-byte line of bf16 / fp16 for two tiles).
LK_AMX void amx_store_rows(const PackedLinearArgs& a, int64_t m0, int mrows, int64_t n0, int cols, const float* c0,
                           const float* c1, float post) {
  const __mmask16 k0 = (__mmask16)(cols >= 16 ? 0xFFFFu : (1u << cols) - 1u);
  const __mmask16 k1 = (__mmask16)(cols <= 16 ? 0u : cols >= 32 ? 0xFFFFu : (1u << (cols - 16)) - 1u);
  const __m512 b0 = a.bias ? _mm512_maskz_loadu_ps(k0, a.bias + n0) : _mm512_setzero_ps();
  const __m512 b1 = a.bias && c1 ? _mm512_maskz_loadu_ps(k1, a.bias + n0 + 16) : _mm512_setzero_ps();
  const __m512 p = _mm512_set1_ps(post);
  // the low 16-bit halves of two vectors' lanes, in lane order
  const I pick = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30, 28, 26, 24, 22,
                                  20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  for (int r = 0; r < mrows; ++r) {
    // v * post + bias: two roundings, as packed_store (no FMA)
    const __m512 v0 = _mm512_add_ps(_mm512_mul_ps(_mm512_load_ps(c0 + r * 16), p), b0);
    const __m512 v1 = c1 ? _mm512_add_ps(_mm512_mul_ps(_mm512_load_ps(c1 + r * 16), p), b1) : _mm512_setzero_ps();
    const int64_t at = (m0 + r) * a.N + n0;
    if (a.out_dtype == kInF32) {
      _mm512_mask_storeu_ps((float*)a.y + at, k0, v0);
      if (c1) _mm512_mask_storeu_ps((float*)a.y + at + 16, k1, v1);
    } else {
      const I h = _mm512_permutex2var_epi16(amx_half_bits(a, v0), pick, amx_half_bits(a, v1));
      _mm512_mask_storeu_epi16((uint16_t*)a.y + at, (__mmask32)k0 | (__mmask32)k1 << 16, h);
    }
  }
}

template <int EL, bool NV>
LK_AMX void amx_range_fmt(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  const int bs = a.block_size;
  const int64_t nb = a.K / bs;
  const int64_t chunk_blocks = bs >= kAmxChunk ? 1 : kAmxChunk / bs;
  const int64_t chunk = chunk_blocks * bs;  // elements; a multiple of kAmxK (a.K % kAmxK == 0)
  const int64_t wtile = chunk * 32;         // bytes of one row tile's decoded chunk (chunk / 2 pair vectors)
  const int64_t cbytes = elem_params(EL).bits == 4 ? bs / 2 : bs;  // code bytes of one row's block
  // decoded panel, accumulators: per thread, kept between calls (the op hands out one panel per call;
  // fresh pages each time would cost as much as the decode), 64-byte aligned by hand
  thread_local std::vector<uint8_t> wraw, craw;
  if (wraw.size() < (size_t)(kAmxPanel * wtile + 64)) wraw.resize((size_t)(kAmxPanel * wtile + 64));
  if (craw.size() < (size_t)((kAmxMaxM / 16) * kAmxPanel * 1024 + 64)) craw.resize((size_t)((kAmxMaxM / 16) * kAmxPanel * 1024 + 64));
  uint8_t* const wbuf = (uint8_t*)(((uintptr_t)wraw.data() + 63) & ~(uintptr_t)63);
  float* const cbuf = (float*)(((uintptr_t)craw.data() + 63) & ~(uintptr_t)63);
  std::vector<int64_t> unfolded;  // row tiles for the few-rows kernel
  const AmxDecoder dec = amx_decoder<EL>();
  const uint8_t* const xa = reinterpret_cast<const uint8_t*>(a.xa);
  const int64_t xs = a.K / kAmxK * kAmxTileBytes;  // bytes per 16 rows of x
  const float post = NV ? a.g : 1.0f;
  cpu::amx::configure();
  for (int64_t mb = 0; mb < a.M; mb += kAmxMaxM) {
    const int64_t mrows = a.M - mb < kAmxMaxM ? a.M - mb : kAmxMaxM;
    const int groups = (int)((mrows + 15) / 16);  // of 16 rows (a.xa has rows up to a multiple of 16, zeros)
    for (int64_t p0 = t0; p0 < t1; p0 += kAmxPanel) {
      const int pt = (int)(t1 - p0 < kAmxPanel ? t1 - p0 : kAmxPanel);
      bool folded[kAmxPanel];
      for (int j = 0; j < pt; ++j) folded[j] = true;
      for (int64_t b0 = 0; b0 < nb; b0 += chunk_blocks) {
        const int64_t bn = nb - b0 < chunk_blocks ? nb - b0 : chunk_blocks;
        const bool first = b0 == 0, last = b0 + bn == nb;
        const int steps = (int)(bn * bs / kAmxK);
        const uint8_t* xk = xa + mb / 16 * xs + b0 * bs / kAmxK * kAmxTileBytes;
        // decode the panel's chunk (folded), then every pair of its tiles x every 32 rows of x
        for (int jj = 0; jj < pt; ++jj) {
          const uint8_t* tile = a.packed + (p0 + jj) * nb * a.block_bytes;
          I* w = (I*)(wbuf + jj * wtile);
          for (int64_t b = 0; b < bn; ++b)
            folded[jj] &= amx_decode_block<EL, NV>(a, dec, tile + (b0 + b) * a.block_bytes, cbytes, w + b * (bs / 2));
        }
        for (int j = 0; j < pt; j += 2) {
          const uint8_t* w0 = wbuf + j * wtile;
          for (int g = 0; g < groups; g += 2) {
            const uint8_t* x0 = xk + (int64_t)g * xs;
            float* c = cbuf + ((int64_t)g * kAmxPanel + j) * 256;
            const bool two_m = g + 1 < groups, two_n = j + 1 < pt;
            cpu::amx::block_any(two_m, two_n, x0, xs, w0, wtile, steps, c, kAmxPanel, first);
            if (!last) continue;
            // the finished tiles -> y while they are in L1 (a tile that did not fold: later)
            const int64_t n0 = (p0 + j) * kPR;
            const bool keep0 = folded[j], keep1 = two_n && folded[j + 1];
            const int cols0 = (int)(a.N - n0 < kPR ? a.N - n0 : kPR);
            const int cols1 = keep1 ? (int)(a.N - n0 - kPR < kPR ? a.N - n0 - kPR : kPR) : 0;
            for (int i = 0; i < (two_m ? 2 : 1); ++i) {
              const int64_t m0 = mb + (int64_t)(g + i) * 16;
              const int rows = (int)(a.M - m0 < 16 ? a.M - m0 : 16);
              const float* ci = c + (int64_t)i * kAmxPanel * 256;
              if (keep0) amx_store_rows(a, m0, rows, n0, keep1 ? kPR + cols1 : cols0, ci, keep1 ? ci + 256 : nullptr, post);
              else if (keep1) amx_store_rows(a, m0, rows, n0 + kPR, cols1, ci + 256, nullptr, post);
            }
          }
        }
      }
      if (mb == 0)
        for (int j = 0; j < pt; ++j)
          if (!folded[j]) unfolded.push_back(p0 + j);
    }
  }
  cpu::amx::release();
  for (const int64_t t : unfolded) linear_packed_bf16_small_range(a, t, t + 1);
}

// ---- few rows (M <= kAmxSmallRows, kernels.h: two A tiles, x's rows 0-15 and 16-31): decode in L1, one chunk ahead ----
// Why: the panel kernel above decodes 256 KB of bf16 weights per pass into L2 and reads it back; at M <= 32 that
// write / read round trip, not the products, set its time (4096 x 4096 MXFP4 at M = 16, cold, 2-core Xeon: 1.02 ms,
// flat in M). Here 4 row tiles (one 16-row group of x; 2 tiles for two groups) run over all of K with their
// accumulators in tile registers: chunk c + 1 of the tiles (max(bs, 32) elements) is decoded into one half of a
// small L1 buffer after chunk c's tile loads from the other half, and the codes stream through L1 with the few-rows
// FMA kernel's software prefetch (kFmaPrefetch; 1-4 KB ahead and an extra prefetcht1 measured alike). 4-bit MX
// weights take amx_decode_quad4 (x in xb8's order, a.xa8). Same case: 0.46-0.49 ms at M = 2-16 (4 tiles per pass:
// 0.52 -> 0.48 ms at M = 4 against 2; chunks of 64-256 elements instead of 32: no gain, or slower from 128).
// What is left is the decode's shuffle port (on this Xeon vpermw, vpermb, the shifts and vpsubusw share one:
// ~0.75 ns per 32 weights) plus the products, which overlap the memory stream only in part.
// Numerics: those of the panel kernel (folded weights; fp32 sums in K order per output, 2 products at a time).
// (Also tried: decoding two chunks ahead into a third slot, so no tile load follows the stores that filled it
// closely: the same times.)

// Chunk c (cblocks blocks) of nt row tiles -> w (tile j's at w + j * tbytes), codes prefetched kFmaPrefetch ahead;
// folded[j] &= whether tile j's blocks folded.
// QUAD: the 4-bit MX decoder (amx_decode_quad4; x from a.xa8), a block it cannot fold leaves its tile unfolded.
template <int EL, bool NV, bool QUAD>
LK_AMX4 void amx_small_decode(const PackedLinearArgs& a, const AmxDecoder& dec, const uint8_t* const* tiles, int nt,
                              int64_t c, int cblocks, uint8_t* w, int64_t tbytes, bool* folded) {
  const int64_t cbytes = elem_params(EL).bits == 4 ? a.block_size / 2 : a.block_size;
  const int64_t chunk_bytes = cblocks * a.block_bytes;
  for (int j = 0; j < nt; ++j) {
    const uint8_t* blk = tiles[j] + c * chunk_bytes;
    for (int64_t off = 0; off < chunk_bytes; off += 64) __builtin_prefetch(blk + kFmaPrefetch + off);
    I* wj = (I*)(w + j * tbytes);
    for (int b = 0; b < cblocks; ++b) {
      const uint8_t* bb = blk + b * a.block_bytes;
      if constexpr (QUAD) {
        I sub;
        if (amx_fold_sub<EL>(bb, dec.r, a.fold_min_s, dec.bias4, &sub))
          amx_decode_quad4(bb + kPR, a.block_size, sub, dec.tidx, dec.btab, wj + b * (a.block_size / 2));
        else
          folded[j] = false;
      } else {
        folded[j] &= amx_decode_block<EL, NV>(a, dec, bb, cbytes, wj + b * (a.block_size / 2));
      }
    }
  }
}

template <int EL, bool NV, bool QUAD>
__attribute__((target(LK_AMX_TARGET ",avx512vbmi"))) void amx_small_fmt(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  const int bs = a.block_size;
  const int64_t nb = a.K / bs;
  const int ce = bs >= kAmxK ? bs : kAmxK;  // elements of K per decoded chunk: whole blocks, whole steps
  const int cblocks = ce / bs, csteps = ce / kAmxK;
  const int64_t nchunks = a.K / ce;
  const int64_t tbytes = (int64_t)ce * 32;  // one tile's decoded chunk (ce / 2 pair vectors)
  thread_local std::vector<uint8_t> wraw;
  if (wraw.size() < (size_t)(8 * tbytes + 64)) wraw.resize((size_t)(8 * tbytes + 64));
  uint8_t* const wbuf = (uint8_t*)(((uintptr_t)wraw.data() + 63) & ~(uintptr_t)63);  // [2 halves][NT tiles]
  alignas(64) float cbuf[4 * 256];  // the accumulators on their way to y (tile registers 0-3 in order)
  const uint8_t* const xa = reinterpret_cast<const uint8_t*>(QUAD ? a.xa8 : a.xa);
  const int64_t xs = a.K / kAmxK * kAmxTileBytes;  // bytes per 16 rows of x
  const bool two_m = a.M > 16;
  const float post = NV ? a.g : 1.0f;
  std::vector<int64_t> unfolded;
  const AmxDecoder dec = amx_decoder<EL>();
  cpu::amx::configure();
  // NT row tiles per pass: x's A tile of a step serves NT products. One 16-row group: 4 (accumulators 0-3, A 4,
  // B 5-7 in turn); two: 2 (accumulators (group, tile) at 2 group + tile, A 4 and 5, B 6 and 7).
  const int NT = two_m ? 2 : 4;
  for (int64_t p0 = t0; p0 < t1; p0 += NT) {
    const int nt = (int)(t1 - p0 < NT ? t1 - p0 : NT);
    const uint8_t* tiles[4];
    for (int j = 0; j < nt; ++j) tiles[j] = a.packed + (p0 + j) * nb * a.block_bytes;
    bool folded[4] = {true, true, true, true};
    LK_TZERO(0);
    LK_TZERO(1);
    LK_TZERO(2);
    LK_TZERO(3);
    amx_small_decode<EL, NV, QUAD>(a, dec, tiles, nt, 0, cblocks, wbuf, tbytes, folded);
    for (int64_t c = 0; c < nchunks; ++c) {
      const uint8_t* x0 = xa + c * csteps * kAmxTileBytes;
      const uint8_t* w0 = wbuf + NT * (c & 1) * tbytes;
      for (int s = 0; s < csteps; ++s) {
        const uint8_t* ws = w0 + s * kAmxTileBytes;
        LK_TLOAD(4, x0 + s * kAmxTileBytes, 64);
        if (two_m) {
          LK_TLOAD(6, ws, 64);
          LK_TDP(0, 4, 6);
          LK_TLOAD(5, x0 + xs + s * kAmxTileBytes, 64);
          LK_TDP(2, 5, 6);
          if (nt > 1) {
            LK_TLOAD(7, ws + tbytes, 64);
            LK_TDP(1, 4, 7);
            LK_TDP(3, 5, 7);
          }
        } else {
          LK_TLOAD(5, ws, 64);
          LK_TDP(0, 4, 5);
          if (nt > 1) {
            LK_TLOAD(6, ws + tbytes, 64);
            LK_TDP(1, 4, 6);
          }
          if (nt > 2) {
            LK_TLOAD(7, ws + 2 * tbytes, 64);
            LK_TDP(2, 4, 7);
          }
          if (nt > 3) {
            LK_TLOAD(5, ws + 3 * tbytes, 64);
            LK_TDP(3, 4, 5);
          }
        }
      }
      if (c + 1 < nchunks)  // into the other half, after chunk c's tile loads (see above)
        amx_small_decode<EL, NV, QUAD>(a, dec, tiles, nt, c + 1, cblocks, wbuf + NT * ((c + 1) & 1) * tbytes, tbytes,
                                       folded);
    }
    LK_TSTORE(0, cbuf, 64);
    LK_TSTORE(1, cbuf + 256, 64);
    LK_TSTORE(2, cbuf + 512, 64);
    LK_TSTORE(3, cbuf + 768, 64);
    // the pass's tiles -> y, two at a time (a tile that did not fold: later)
    for (int i = 0; i < (two_m ? 2 : 1); ++i) {
      const int64_t m0 = (int64_t)i * 16;
      const int rows = (int)(a.M - m0 < 16 ? a.M - m0 : 16);
      for (int j = 0; j < nt; j += 2) {
        const float* cj = cbuf + (two_m ? 2 * i + j : j) * 256;
        const int64_t n0 = (p0 + j) * kPR;
        const bool keep0 = folded[j], keep1 = j + 1 < nt && folded[j + 1];
        const int cols0 = (int)(a.N - n0 < kPR ? a.N - n0 : kPR);
        const int cols1 = keep1 ? (int)(a.N - n0 - kPR < kPR ? a.N - n0 - kPR : kPR) : 0;
        if (keep0) amx_store_rows(a, m0, rows, n0, keep1 ? kPR + cols1 : cols0, cj, keep1 ? cj + 256 : nullptr, post);
        else if (keep1) amx_store_rows(a, m0, rows, n0 + kPR, cols1, cj + 256, nullptr, post);
      }
    }
    for (int j = 0; j < nt; ++j)
      if (!folded[j]) unfolded.push_back(p0 + j);
  }
  cpu::amx::release();
  for (const int64_t t : unfolded) linear_packed_bf16_small_range(a, t, t + 1);
}

LK_AMX bool linear_packed_amx_range(const PackedLinearArgs& a, int64_t t0, int64_t t1) {
  if (!(a.xa || a.xa8) || !a.xb || a.K % kAmxK != 0) return false;
  return dispatch_packed_format(a.fmt, [&](auto el, auto nv) {
    constexpr int EL = decltype(el)::value;
    constexpr bool NV = decltype(nv)::value;
    if constexpr (elem_params(EL).bits == 4 && !NV) {
      if (a.xa8) return amx_small_fmt<EL, NV, true>(a, t0, t1);
    }
    if (a.M <= kAmxSmallRows)
      amx_small_fmt<EL, NV, false>(a, t0, t1);
    else
      amx_range_fmt<decltype(el)::value, decltype(nv)::value>(a, t0, t1);
  });
}

#undef LK_AMX
#undef LK_AMX_INL
#undef LK_AMX4
