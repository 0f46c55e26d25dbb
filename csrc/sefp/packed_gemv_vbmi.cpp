// GEMV over the single-width packed SEFP copy (packed.h) for bf16 x on CPUs with AVX512-BF16 and AVX512-VBMI
// (Zen 4, Sapphire Rapids and later): 64 weights of B = 1 + m bits (8 B bytes) become 64 bf16 values in about
// six full-width instructions, with no per-weight or per-plane work.
//
// One unit = 128 weights of a row (4 words of 32), two halves of 64. Per half:
//   1. one 64-byte load of its 8 B bytes (masked in a row's last units: never past the row);
//   2. vpermb: qword p <- the B bytes of weights 8 g .. 8 g + 7, g = p / 2 for even p, 4 + p / 2 for odd p;
//   3. vpmultishiftqb: byte j of a qword <- the 8 bits from bit j B: field j in the low B bits (garbage above);
//   4. two vpermb lookups (64-entry tables; vpermb reads the low 6 index bits, so the garbage never matters):
//      the high and low bytes of bf16((-1)^s q) (B <= 6: the sign is in the index), or of bf16(q) with the sign
//      or'ed into the high byte from the code (B = 7: code bit 6; B = 8: 128-entry tables (vpermi2b), code bit 7);
//   5. unpacklo / unpackhi of (lo, hi): the even qwords hold the half's first word and the odd ones its second, so
//      the two vectors are the two words' 32 bf16 weights in natural order, and x is read as it is;
// then per word one vdpbf16ps into a fresh sum and one FMA by the word's scale 2^(E - (m - 1)) (an exact power of
// two, broadcast from the scale table) into the row's total. No shuffle per word for the scales: an earlier form
// that put two words into each vector and built the scale vectors with byte shuffles ran at ~32 cycles per unit
// on Zen 4 (hot, one core), this one at ~18 (B <= 7) and ~21 (B = 8: vpermi2b).
// Products are exact (bf16 x bf16 in fp32); fp32 sums. All-zero blocks (E = -128) contribute +-0.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "common/bf16_dot_avx512.h"
#include "common/cpu_features.h"
#include "sefp/kernels.h"
#include "sefp/packed.h"

namespace leankern {
namespace sefp {

bool packed_vbmi_supported() {
  static const bool cpu = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bf16");
  }();
  return cpu && cpu::active_isa() == cpu::Isa::kAvx512Bf16;
}

namespace {

#define LK_P __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vbmi"))) inline

// Software prefetch of the codes stream (rows are contiguous, so one stream per thread): prefetcht0 kPrefetch bytes
// ahead, and, where the x rows of a pass exceed kSmallX bytes, also prefetcht1 kPrefetchL2 ahead. Why (2-core Zen 4,
// M = 1, bf16 x, weights from DRAM, three builds alternated twice): with prefetcht0 1 KB ahead alone the 4096 x 14336
// GEMV (x 28 KB) ran at 0.65-0.84x the planes' speed, where adding prefetcht1 8 KB ahead gave 0.99-1.13x; on the
// K = 4096 shapes (x 8 KB) the prefetcht1 cost up to 30% at m = 3 and 5 (14336 x 4096: 0.69-0.86x against 0.91-0.98x).
// Single-threaded from DRAM the 1 KB prefetcht0 alone streamed 11 GB/s at K = 14336, m = 7, prefetcht1 8-16 KB ahead
// 18-19 GB/s (torch.sum: 19.6).
constexpr int64_t kPrefetch = 1024;
constexpr int64_t kPrefetchL2 = 8192;
constexpr int64_t kSmallX = 16 << 10;

template <int B>
struct Consts {
  static constexpr int m = B - 1;
  __m512i arrange;    // qword p <- bytes B g .. B g + 7 of group g = p / 2 (p even), 4 + p / 2 (p odd)
  __m512i shifts;     // multishift control: byte j of every qword <- bit j B
  __m512i hi0, lo0;   // lookup tables (entries 0..63)
  __m512i hi1, lo1;   // B = 8: entries 64..127
  __m512i c80;        // 0x80 in every byte

  LK_P Consts() {
    alignas(64) uint8_t a[64], s[64], th[128], tl[128];
    for (int p = 0; p < 8; ++p)
      for (int j = 0; j < 8; ++j) {
        const int g = p % 2 ? 4 + p / 2 : p / 2;  // qword p <- group g: even qwords words 0, odd word 1 of the half
        a[8 * p + j] = static_cast<uint8_t>(B * g + j);  // <= 7 B + 7 <= 63
        s[8 * p + j] = static_cast<uint8_t>(B * j);
      }
    for (int i = 0; i < 128; ++i) {
      uint16_t v;
      if (B <= 6) {  // the index holds the sign: field c = i mod 2^B = (s << m) | q
        const int c = i & ((1 << B) - 1), q = c & ((1 << m) - 1);
        v = static_cast<uint16_t>(bf16_of_int(q) | ((c >> m) ? 0x8000 : 0));
      } else {  // the index is q (B = 7: 6 bits, B = 8: 7 bits); the sign is or'ed in afterwards
        v = bf16_of_int(i & ((1 << m) - 1));
      }
      th[i] = static_cast<uint8_t>(v >> 8);
      tl[i] = static_cast<uint8_t>(v & 0xff);
    }
    arrange = _mm512_load_si512(a);
    shifts = _mm512_load_si512(s);
    hi0 = _mm512_load_si512(th);
    lo0 = _mm512_load_si512(tl);
    hi1 = _mm512_load_si512(th + 64);
    lo1 = _mm512_load_si512(tl + 64);
    c80 = _mm512_set1_epi8(static_cast<char>(0x80));
  }

  // 64 codes (one half) -> two bf16 vectors in natural order: w[0] the half's first word, w[1] its second.
  LK_P void decode(__m512i raw, __m512i* w) const {
    const __m512i code = _mm512_multishift_epi64_epi8(shifts, _mm512_permutexvar_epi8(arrange, raw));
    __m512i hi, lo;
    if constexpr (B <= 7) {
      hi = _mm512_permutexvar_epi8(code, hi0);
      lo = _mm512_permutexvar_epi8(code, lo0);
    } else {
      hi = _mm512_permutex2var_epi8(hi0, code, hi1);
      lo = _mm512_permutex2var_epi8(lo0, code, lo1);
    }
    // hi | (sign & 0x80): the sign is code bit 6 (B = 7) or bit 7 (B = 8)
    if constexpr (B == 7) hi = _mm512_ternarylogic_epi32(hi, _mm512_slli_epi16(code, 1), c80, 0xF8);
    if constexpr (B == 8) hi = _mm512_ternarylogic_epi32(hi, code, c80, 0xF8);
    w[0] = _mm512_unpacklo_epi8(lo, hi);
    w[1] = _mm512_unpackhi_epi8(lo, hi);
  }
};

// The scales 2^(E - (m - 1)) of a unit's four words (scale_table: exact powers of two, subnormal ones included).
// Words past the row's Kp / 32 (the last unit of a row whose Kp is not a multiple of 128) get 0: their exponents
// are not read (they would lie past the row).
LK_P void unit_scales(const float* lut, const int8_t* ex, int64_t u, int gs, int64_t words, float* sc) {
  for (int s = 0; s < 4; ++s) sc[s] = 4 * u + s < words ? lut[ex[(4 * u + s) >> gs] + 128] : 0.0f;
}

// Walks units [u_begin, u_end) of row n of W (u_end < 0: to the row's end), unit by unit (far: also the prefetcht1
// far ahead): body(u, w, sc) with w[s] = the 32 bf16
// weights of word 4 u + s (natural order) and sc[s] their scale 2^(E - (m - 1)) (0 past the row's words). Units whose
// two 64-byte loads stay inside the row use plain loads (a half's 8 B bytes, then bytes of the row's next unit); the
// rest masked loads, never past the row.
template <int B, class Body>
LK_P void walk_row(const Consts<B>& C, const PackedW& W, int64_t n, const float* lut, bool far, Body& body,
                   int64_t u_begin = 0, int64_t u_end = -1) {
  const int64_t units = u_end < 0 ? packed_x_width(W.Kp) / kPackedUnit : u_end;
  constexpr int64_t half_bytes = 8 * B;
  const int64_t reach = half_bytes + 64;  // a unit's loads read bytes [off, off + reach)
  const int64_t plain_units = W.row_bytes >= reach ? std::min(units, (W.row_bytes - reach) / (2 * half_bytes) + 1) : 0;
  const uint8_t* row = W.codes + n * W.row_bytes;
  const int8_t* ex = W.exps + n * W.nb;
  __m512i w[4];
  for (int64_t u = u_begin; u < std::min(plain_units, units); ++u) {
    const uint8_t* p = row + u * 2 * half_bytes;
    if (far) {
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchL2), _MM_HINT_T1);
      if (half_bytes > 32) _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchL2 + 64), _MM_HINT_T1);
    }
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetch), _MM_HINT_T0);
    if (half_bytes > 32) _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetch + 64), _MM_HINT_T0);
    C.decode(_mm512_loadu_si512(p), w);
    C.decode(_mm512_loadu_si512(p + half_bytes), w + 2);
    float sc[4];
    for (int s = 0; s < 4; ++s) sc[s] = lut[ex[(4 * u + s) >> W.gs] + 128];  // all four words inside the row
    body(u, w, sc);
  }
  for (int64_t u = std::max(plain_units, u_begin); u < units; ++u) {
    const int64_t off = u * 2 * half_bytes;
    for (int h = 0; h < 2; ++h) {
      const int64_t left = W.row_bytes - off - h * half_bytes;
      const int64_t nbytes = left >= half_bytes ? half_bytes : left > 0 ? left : 0;
      const __mmask64 mk = nbytes >= 64 ? ~0ull : ((1ull << nbytes) - 1);
      C.decode(_mm512_maskz_loadu_epi8(mk, row + off + h * half_bytes), w + 2 * h);
    }
    float sc[4];
    unit_scales(lut, ex, u, W.gs, W.Kp / 32, sc);
    body(u, w, sc);
  }
}

// Chains per x row: two for one row (a unit adds four products to a row's total), one for several (the rows'
// chains interleave).
template <int R>
constexpr int kChains = R == 1 ? 2 : 1;

// A unit's products for R rows of x (x: the rows' first elements, ldx apart) into tot.
template <int R>
struct GemvBody {
  const uint16_t* x;
  int64_t ldx;
  __m512 tot[R][kChains<R>];

  LK_P void operator()(int64_t u, const __m512i* w, const float* sc) {
    for (int r = 0; r < R; ++r)
      for (int s = 0; s < 4; ++s) {
        const __m512i xv = _mm512_loadu_si512(x + r * ldx + u * kPackedUnit + 32 * s);
        const __m512 d = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)w[s], (__m512bh)xv);
        tot[r][s % kChains<R>] = _mm512_fmadd_ps(d, _mm512_set1_ps(sc[s]), tot[r][s % kChains<R>]);
      }
  }
};

template <int B, int R>
LK_P void rows_kernel(const Consts<B>& C, const PackedW& W, const uint16_t* x, int64_t ldx, int64_t n0, int64_t n1,
                      float* y, int64_t ldy) {
  const float* lut = scale_table(W.m);
  const bool far = R * packed_x_width(W.Kp) * 2 > kSmallX;
  for (int64_t n = n0; n < n1; ++n) {
    GemvBody<R> body{x, ldx, {}};
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < kChains<R>; ++c) body.tot[r][c] = _mm512_setzero_ps();
    walk_row<B>(C, W, n, lut, far, body);
    for (int r = 0; r < R; ++r)
      y[r * ldy + n] = _mm512_reduce_add_ps(kChains<R> == 2 ? _mm512_add_ps(body.tot[r][0], body.tot[r][kChains<R> - 1])
                                                            : body.tot[r][0]);
  }
}

template <int B>
LK_P void gemv_rows(const Consts<B>& C, const PackedW& W, const uint16_t* x, int64_t R, int64_t ldx, int64_t n0,
                    int64_t n1, float* y, int64_t ldy) {
  int64_t r = 0;
  // row groups of 8, 4, 2, 1: each group decodes the weights once
  for (; R - r >= 8; r += 8) rows_kernel<B, 8>(C, W, x + r * ldx, ldx, n0, n1, y + r * ldy, ldy);
  if (R - r >= 4) rows_kernel<B, 4>(C, W, x + r * ldx, ldx, n0, n1, y + r * ldy, ldy), r += 4;
  if (R - r >= 2) rows_kernel<B, 2>(C, W, x + r * ldx, ldx, n0, n1, y + r * ldy, ldy), r += 2;
  if (R - r >= 1) rows_kernel<B, 1>(C, W, x + r * ldx, ldx, n0, n1, y + r * ldy, ldy);
}

// A unit's weights times their scales, as bf16 (exact where the caller checked every weight is a bf16 normal or
// zero): each bf16 pair becomes two fp32 (shift / mask), is multiplied by the scale, and its top 16 bits go back.
struct Bf16Body {
  uint16_t* out;  // element u0 * kPackedUnit of the row
  int64_t u0 = 0;

  LK_P void operator()(int64_t u, const __m512i* w, const float* sc) {
    const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
    for (int s = 0; s < 4; ++s) {
      const __m512 sv = _mm512_set1_ps(sc[s]);
      const __m512 even = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w[s], 16)), sv);
      const __m512 odd = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_and_si512(w[s], hi)), sv);
      const __m512i v = _mm512_or_si512(_mm512_srli_epi32(_mm512_castps_si512(even), 16),
                                        _mm512_and_si512(_mm512_castps_si512(odd), hi));
      _mm512_storeu_si512(out + (u - u0) * kPackedUnit + 32 * s, v);
    }
  }
};

// Many x rows (decoded_rows(true) and more): 4 weight rows at a time decoded once to bf16 with their scales
// (Bf16Body; exact, and no product below 2^-126, where the group's blocks pass W.decode_min_e) span by span (512
// weights of 4 rows: 4 KB that stay in L1), each span multiplied by every group of 4 x rows (cpu::bf16dot::
// tile4x4_sums, Tile4Sums).
// gemv_rows instead decodes the weights again per 8 x rows and reloads x from L2 for every weight row. Groups that
// fail the check, and a last group of fewer than 4 rows, take gemv_rows.
template <int B>
LK_P void gemv_decoded(const Consts<B>& C, const PackedW& W, const uint16_t* x, int64_t R, int64_t ldx, int64_t n0,
                       int64_t n1, float* y, int64_t ldy) {
  if (R > kDecodedMaxRows) {  // x rows in passes (the decode repeated per pass)
    for (int64_t r = 0; r < R; r += kDecodedMaxRows)
      gemv_decoded<B>(C, W, x + r * ldx, std::min(kDecodedMaxRows, R - r), ldx, n0, n1, y + r * ldy, ldy);
    return;
  }
  constexpr int64_t kSpanUnits = 4, kSpan = kSpanUnits * kPackedUnit;  // 512 weights
  const int64_t units = packed_x_width(W.Kp) / kPackedUnit;
  const float* lut = scale_table(W.m);
  alignas(64) uint16_t buf[4 * kSpan];  // 4 rows' span: 4 KB
  cpu::bf16dot::Tile4Sums<kDecodedMaxRows> sums(x, R, ldx);
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    if (!blocks_decode_exact(W.exps + n * W.nb, 4 * W.nb, W.decode_min_e)) {
      gemv_rows<B>(C, W, x, R, ldx, n, n + 4, y, ldy);
      continue;
    }
    sums.zero();
    for (int64_t u0 = 0; u0 < units; u0 += kSpanUnits) {
      const int64_t u1 = std::min(units, u0 + kSpanUnits);
      for (int i = 0; i < 4; ++i) {
        Bf16Body body{buf + i * kSpan, u0};
        walk_row<B>(C, W, n + i, lut, false, body, u0, u1);
      }
      sums.add(buf, kSpan, u0 * kPackedUnit, (u1 - u0) * kPackedUnit);
    }
    sums.store(y, ldy, n);
  }
  if (n < n1) gemv_rows<B>(C, W, x, R, ldx, n, n1, y, ldy);
}

template <int B>
LK_P void gemv_width(const PackedW& W, const uint16_t* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                     int64_t ldy) {
  const Consts<B> C;
  if (R >= decoded_rows(true))
    gemv_decoded<B>(C, W, x, R, ldx, n0, n1, y, ldy);
  else
    gemv_rows<B>(C, W, x, R, ldx, n0, n1, y, ldy);
}


template <int B>
LK_P void decode_width(const PackedW& W, int64_t n0, int64_t n1, uint16_t* out, int64_t ldo) {
  const Consts<B> C;
  const float* lut = scale_table(W.m);
  for (int64_t n = n0; n < n1; ++n) {
    Bf16Body body{out + (n - n0) * ldo};
    walk_row<B>(C, W, n, lut, false, body);
  }
}

template <template <int> class F, class... A>
void with_bits(int m, A... a) {
  switch (m) {
    case 1: F<2>::run(a...); break;
    case 2: F<3>::run(a...); break;
    case 3: F<4>::run(a...); break;
    case 4: F<5>::run(a...); break;
    case 5: F<6>::run(a...); break;
    case 6: F<7>::run(a...); break;
    default: F<8>::run(a...); break;
  }
}

template <int B>
struct GemvW {
  static void run(const PackedW& W, const uint16_t* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                  int64_t ldy) {
    gemv_width<B>(W, x, R, ldx, n0, n1, y, ldy);
  }
};

template <int B>
struct DecodeW {
  static void run(const PackedW& W, int64_t n0, int64_t n1, uint16_t* out, int64_t ldo) {
    decode_width<B>(W, n0, n1, out, ldo);
  }
};

}  // namespace

void gemv_packed_vbmi(const PackedW& W, const uint16_t* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                      int64_t ldy) {
  with_bits<GemvW>(W.m, W, x, R, ldx, n0, n1, y, ldy);
}

void decode_packed_bf16_vbmi(const PackedW& W, int64_t n0, int64_t n1, uint16_t* out, int64_t ldo) {
  with_bits<DecodeW>(W.m, W, n0, n1, out, ldo);
}

}  // namespace sefp
}  // namespace leankern

#else  // not x86-64: the portable path only

#include "sefp/packed.h"

namespace leankern {
namespace sefp {
bool packed_vbmi_supported() { return false; }
void gemv_packed_vbmi(const PackedW&, const uint16_t*, int64_t, int64_t, int64_t, int64_t, float*, int64_t) {}
void decode_packed_bf16_vbmi(const PackedW&, int64_t, int64_t, uint16_t*, int64_t) {}
}  // namespace sefp
}  // namespace leankern

#endif
