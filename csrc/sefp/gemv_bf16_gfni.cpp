// gemv_bf16 of the avx512bf16 SEFP table (kernels.h) for CPUs that also have GFNI and AVX512-VBMI (Zen 4, Ice
// Lake and later): y = x w^T for a few bf16 x rows, the bit planes decoded 512 weights at a time with full-width
// byte shuffles, never through mask registers or per-weight work.
//
// One chunk = 16 words of a row = 512 weights: one 64-byte load per plane. Per chunk:
//   1. The planes (sign + m mantissa, up to 8 of them; m = 8 keeps the sign apart) are interleaved bytewise by
//      three unpack stages (8-bit, 16-bit, 32-bit; stages whose inputs are all absent planes are skipped) into 8
//      registers of qwords: qword = the same byte position of each plane.
//   2. vgf2p8affineqb with that qword as the bit matrix transposes it: byte i = weight i's bits of every plane, i.e.
//      its code (sign at bit m for m <= 5, bit 7 for m = 6, 7; the magnitude q in the low m bits).
//   3. The codes become bf16 (all exact: q < 2^8): m <= 5, sign and q as one 16-bit index into a signed table
//      (vpermw / vpermi2w); m = 6, 7: the high and low bytes of bf16(q) from 128-byte tables (vpermi2b), the sign
//      or'ed into the high byte, bytes interleaved; m = 8 the same with 256-byte tables (two lookups and a blend on
//      q's top bit), the sign from the sign plane as a byte mask.
//   4. vdpbf16ps with x, which the caller stored in the matching order (chunk_order_bf16): each 128-bit lane of a
//      decoded vector holds 8 weights of one word, and the 4 vectors of a word group are summed into one
//      accumulator whose lane group L belongs to one word: the block scale 2^(E - (m - 1)) is applied per lane by one
//      FMA (vscalefps + add where a scale is not a normal fp32: exact, subnormal results rounded once).
// About 5 to 9 instructions per 32 weights (m = 1 .. 8) where the transposed fp32 kernel needs ~20 and the
// mask-register decode (decode_bf16) 2 per plane plus a serial dependency per word.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "common/bf16_dot_avx512.h"
#include "sefp/kernels.h"

namespace leankern {
namespace sefp {

const int16_t* chunk_order_bf16(int m) {
  // Position 32 v + 8 L + j of a chunk (v < 16, L < 4, j < 8) holds weight 8 c + i of word 4 L + g (plane byte c,
  // bit i), as the decoded vector v of gemv_bf16_gfni.cpp holds it in its j-th 16-bit value of lane L:
  //   m >= 6: v = 4 g + 2 h + u, code byte b = 8 u + j of register 2 g + h (codes unpacked lane-wise);
  //   m 4, 5: the same with b = 2 j + u (even and odd bytes looked up in place);
  //   in both, byte b is code i = b % 8 of plane byte c = 2 h + b / 8;
  //   m <= 3: v = 4 g + u, nibble u of the 16-bit lane j of register g: c = 2 (j / 4) + (u even),
  //           i = (2 j + u / 2) % 8.
  static const int16_t* tables = [] {
    static int16_t t[3][kChunkBf16];
    for (int path = 0; path < 3; ++path)
      for (int v = 0; v < 16; ++v)
        for (int L = 0; L < 4; ++L)
          for (int j = 0; j < 8; ++j) {
            int g = v / 4, c, i;
            if (path == 2) {
              const int u = v % 4;
              c = 2 * (j / 4) + (u % 2 == 0 ? 1 : 0);
              i = (2 * j + u / 2) % 8;
            } else {
              const int h = (v / 2) % 2, u = v % 2;
              const int b = path == 0 ? 8 * u + j : 2 * j + u;
              c = 2 * h + b / 8;
              i = b % 8;
            }
            t[path][32 * v + 8 * L + j] = static_cast<int16_t>(32 * (4 * L + g) + 8 * c + i);
          }
    return &t[0][0];
  }();
  return tables + (m <= 3 ? 2 : m <= 5 ? 1 : 0) * kChunkBf16;
}

__attribute__((target("avx512f,avx512bw"))) bool blocks_decode_exact(const int8_t* e, int64_t n, int lo) {
  // -128 < E < lo as one unsigned compare: E + 127 < lo + 127 (wrapping to 255 at E = -128), 64 exponents at a time
  const int lim = std::min(255, std::max(0, lo + 127));
  const __m512i bias = _mm512_set1_epi8(127), limv = _mm512_set1_epi8(static_cast<char>(lim));
  for (int64_t i = 0; i < n; i += 64) {
    const __mmask64 k = n - i >= 64 ? ~__mmask64(0) : (__mmask64(1) << (n - i)) - 1;
    if (_mm512_mask_cmplt_epu8_mask(k, _mm512_add_epi8(_mm512_maskz_loadu_epi8(k, e + i), bias), limv)) return false;
  }
  return true;
}

namespace avx512bf16 {

#define LK_G __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vbmi,gfni"))) inline

constexpr int kWords = 16;  // words per chunk

// bf16 bit patterns of 0..255 as separate high and low byte tables.
struct ByteTables {
  alignas(64) uint8_t hi[256];
  alignas(64) uint8_t lo[256];
  constexpr ByteTables() : hi(), lo() {
    for (int q = 0; q < 256; ++q) {
      hi[q] = static_cast<uint8_t>(bf16_of_int(q) >> 8);
      lo[q] = static_cast<uint8_t>(bf16_of_int(q) & 0xff);
    }
  }
};
constexpr ByteTables kBytes;

// Signed 16-bit tables for m <= 5: index s 2^m + q -> bf16(+-q) (64 entries).
struct SignedTables {
  alignas(64) uint16_t v[6][64];
  constexpr SignedTables() : v() {
    for (int m = 1; m <= 5; ++m)
      for (int i = 0; i < (2 << m); ++i) {
        v[m][i] = static_cast<uint16_t>(bf16_of_int(i & ((1 << m) - 1)) | ((i >> m) ? 0x8000 : 0));
      }
  }
};
constexpr SignedTables kSigned;

// Which plane sits in qword byte s (bit 7 - s of the code after the transpose): -1 none, 0 sign, p mantissa plane.
template <int M>
constexpr int slot(int s) {
  if constexpr (M <= 5) return s == 7 - M ? 0 : s > 7 - M ? s - (7 - M) : -1;
  if constexpr (M <= 7) return s == 0 ? 0 : s >= 8 - M ? s - (7 - M) : -1;
  return s + 1;
}

template <int M>
struct Gfni {
  __m512i tab[8];  // lookup tables (see decode)
  __m512i ident;   // byte i of each qword = 1 << i: the transpose's x operand
  __m512i sign_idx;  // m = 8: 16-bit lane 4 k + L <- word 8 L + k of the sign plane
  __m512i idx[4];  // lane l <- block of word 4 (l / 4) + i of the chunk (relative to the chunk's first block)

  LK_G explicit Gfni(int gs) {
    if constexpr (M <= 3) {  // index = a nibble code + one bit of the next nibble: the 16 entries twice
      alignas(64) uint16_t t[32];
      for (int i = 0; i < 32; ++i) t[i] = kSigned.v[M][i % 16];
      tab[0] = _mm512_load_si512(t);
    } else if constexpr (M <= 4) {
      tab[0] = _mm512_load_si512(kSigned.v[M]);
    } else if constexpr (M == 5) {
      tab[0] = _mm512_load_si512(kSigned.v[5]);
      tab[1] = _mm512_load_si512(kSigned.v[5] + 32);
    } else {
      constexpr int n = M == 8 ? 4 : 2;
      for (int t = 0; t < n; ++t) {
        tab[t] = _mm512_load_si512(kBytes.hi + 64 * t);
        tab[4 + t] = _mm512_load_si512(kBytes.lo + 64 * t);
      }
    }
    ident = _mm512_set1_epi64(0x8040201008040201ll);
    alignas(64) int16_t si[32];
    for (int k = 0; k < 8; ++k)
      for (int L = 0; L < 4; ++L) si[4 * k + L] = static_cast<int16_t>(8 * L + k);
    sign_idx = _mm512_load_si512(si);
    for (int i = 0; i < 4; ++i) {
      alignas(64) int32_t b[16];
      for (int l = 0; l < 16; ++l) b[l] = (4 * (l / 4) + i) >> gs;
      idx[i] = _mm512_load_si512(b);
    }
  }

  // 8 registers of codes for one chunk: q[k] lane L = the codes of word 4 L + k / 2, bytes 8 (k % 2) .. + 15 (in
  // weight order), from planes a[s] (slot s).
  LK_G void codes(const __m512i* a, __m512i* q) const {
    const __m512i z = _mm512_setzero_si512();
    __m512i b[8], c[8];
    constexpr bool n01 = slot<M>(0) >= 0 || slot<M>(1) >= 0, n23 = slot<M>(2) >= 0 || slot<M>(3) >= 0;
    constexpr bool n45 = slot<M>(4) >= 0 || slot<M>(5) >= 0, n67 = slot<M>(6) >= 0 || slot<M>(7) >= 0;
    // stage 1: byte pairs (a[2j], a[2j + 1]), positions 0..7 (b[2j]) and 8..15 (b[2j + 1]) of each lane
    if constexpr (n01) b[0] = _mm512_unpacklo_epi8(a[0], a[1]), b[1] = _mm512_unpackhi_epi8(a[0], a[1]);
    if constexpr (n23) b[2] = _mm512_unpacklo_epi8(a[2], a[3]), b[3] = _mm512_unpackhi_epi8(a[2], a[3]);
    if constexpr (n45) b[4] = _mm512_unpacklo_epi8(a[4], a[5]), b[5] = _mm512_unpackhi_epi8(a[4], a[5]);
    if constexpr (n67) b[6] = _mm512_unpacklo_epi8(a[6], a[7]), b[7] = _mm512_unpackhi_epi8(a[6], a[7]);
    // stage 2: c[g] = bytes of slots 0..3 at positions 4 g .. 4 g + 3, c[4 + g] of slots 4..7
    for (int h = 0; h < 2; ++h) {
      if constexpr (n01 || n23) {
        const __m512i lo = n01 ? b[h] : z, hi = n23 ? b[2 + h] : z;
        c[2 * h] = _mm512_unpacklo_epi16(lo, hi);
        c[2 * h + 1] = _mm512_unpackhi_epi16(lo, hi);
      } else {
        c[2 * h] = c[2 * h + 1] = z;
      }
      if constexpr (n45 || n67) {
        const __m512i lo = n45 ? b[4 + h] : z, hi = n67 ? b[6 + h] : z;
        c[4 + 2 * h] = _mm512_unpacklo_epi16(lo, hi);
        c[4 + 2 * h + 1] = _mm512_unpackhi_epi16(lo, hi);
      } else {
        c[4 + 2 * h] = c[4 + 2 * h + 1] = z;
      }
    }
    // stage 3 + transpose: positions 2 k, 2 k + 1
    for (int k = 0; k < 8; ++k) {
      const __m512i d = k % 2 ? _mm512_unpackhi_epi32(c[k / 2], c[4 + k / 2]) : _mm512_unpacklo_epi32(c[k / 2], c[4 + k / 2]);
      q[k] = _mm512_gf2p8affine_epi64_epi8(ident, d, 0);
    }
  }

  // m <= 3 (at most 4 planes, in slots 4..7): the transpose of two positions' dwords at once leaves two codes per
  // byte, position 4 g + 2 h in the high nibble and 4 g + 2 h + 1 in the low one (h: the qword): stage 3 and half
  // the transposes are saved. qn[g] lane L = the 32 codes of word 4 L + g.
  LK_G void nibble_codes(const __m512i* a, __m512i* qn) const {
    static_assert(M <= 3, "four planes at most");
    const __m512i z = _mm512_setzero_si512();
    constexpr bool n45 = slot<M>(4) >= 0 || slot<M>(5) >= 0;
    const __m512i b4 = n45 ? _mm512_unpacklo_epi8(a[4], a[5]) : z, b5 = n45 ? _mm512_unpackhi_epi8(a[4], a[5]) : z;
    const __m512i b6 = _mm512_unpacklo_epi8(a[6], a[7]), b7 = _mm512_unpackhi_epi8(a[6], a[7]);
    qn[0] = _mm512_gf2p8affine_epi64_epi8(ident, _mm512_unpacklo_epi16(b4, b6), 0);
    qn[1] = _mm512_gf2p8affine_epi64_epi8(ident, _mm512_unpackhi_epi16(b4, b6), 0);
    qn[2] = _mm512_gf2p8affine_epi64_epi8(ident, _mm512_unpacklo_epi16(b5, b7), 0);
    qn[3] = _mm512_gf2p8affine_epi64_epi8(ident, _mm512_unpackhi_epi16(b5, b7), 0);
  }

  // nibble codes -> four bf16 vectors: v[u] from nibble u of each 16-bit lane (vpermw reads 5 index bits; the
  // table repeats its 16 entries, so the neighbouring nibble's bit does not matter).
  LK_G void nibble_values(__m512i q, __m512i* v) const {
    v[0] = _mm512_permutexvar_epi16(q, tab[0]);
    v[1] = _mm512_permutexvar_epi16(_mm512_srli_epi16(q, 4), tab[0]);
    v[2] = _mm512_permutexvar_epi16(_mm512_srli_epi16(q, 8), tab[0]);
    v[3] = _mm512_permutexvar_epi16(_mm512_srli_epi16(q, 12), tab[0]);
  }

  // codes q (one register of q[]) -> two bf16 vectors: v[0] from bytes 0..7 of each lane, v[1] from 8..15 (m >= 6),
  // or v[0] from the even bytes, v[1] from the odd ones (m <= 5; chunk_order_bf16).
  // sign: m = 8 only, the sign bits of q's 64 codes.
  LK_G void values(__m512i q, __mmask64 sign, __m512i* v) const {
    if constexpr (M <= 5) {  // a 16-bit lane holds two codes: the low byte's is the index (higher bits ignored)
      const __m512i odd = _mm512_srli_epi16(q, 8);
      if constexpr (M <= 4) {
        v[0] = _mm512_permutexvar_epi16(q, tab[0]);
        v[1] = _mm512_permutexvar_epi16(odd, tab[0]);
      } else {
        v[0] = _mm512_permutex2var_epi16(tab[0], q, tab[1]);
        v[1] = _mm512_permutex2var_epi16(tab[0], odd, tab[1]);
      }
    } else {
      __m512i hi = _mm512_permutex2var_epi8(tab[0], q, tab[1]);  // bit 7 of the index is ignored
      __m512i lo = _mm512_permutex2var_epi8(tab[4], q, tab[5]);
      if constexpr (M == 7 || M == 6) {
        hi = _mm512_ternarylogic_epi32(hi, q, _mm512_set1_epi8(static_cast<char>(0x80)), 0xf8);  // hi | (q & 0x80)
      } else {
        const __mmask64 top = _mm512_movepi8_mask(q);
        hi = _mm512_mask_blend_epi8(top, hi, _mm512_permutex2var_epi8(tab[2], q, tab[3]));
        lo = _mm512_mask_blend_epi8(top, lo, _mm512_permutex2var_epi8(tab[6], q, tab[7]));
        hi = _mm512_mask_add_epi8(hi, sign, hi, _mm512_set1_epi8(static_cast<char>(0x80)));
      }
      v[0] = _mm512_unpacklo_epi8(lo, hi);
      v[1] = _mm512_unpackhi_epi8(lo, hi);
    }
  }
};

// One 512-weight chunk of a row, decoded: its codes, m = 8's sign masks and the block shifts.
template <int M>
struct Chunk {
  __m512i q[8];              // Gfni::codes / nibble_codes
  alignas(64) uint64_t sb[8];  // m = 8: the sign bits of q[k]'s 64 codes
  __m512i sh;                // dword lane l: E - (m - 1) of the block of the chunk's l >> gs-th block (0: empty)

  LK_G void load(const Gfni<M>& g, const Planes& P, int64_t n, int64_t ch) {
    const uint32_t* row = P.data + n * P.Kw;
    const int64_t w0 = ch * kWords, ps = P.plane_stride;
    const __mmask16 wm = w0 + kWords <= P.Kw ? __mmask16(0xffff) : __mmask16((1u << (P.Kw - w0)) - 1);
    __m512i a[8];
    for (int s = 0; s < 8; ++s)
      a[s] = slot<M>(s) >= 0 ? _mm512_maskz_loadu_epi32(wm, row + slot<M>(s) * ps + w0) : _mm512_setzero_si512();
    if constexpr (M == 8) _mm512_store_si512(sb, _mm512_permutexvar_epi16(g.sign_idx, _mm512_maskz_loadu_epi32(wm, row + w0)));
    if constexpr (M <= 3)
      g.nibble_codes(a, q);
    else
      g.codes(a, q);
    const int64_t b0 = w0 >> P.gs;
    const int nbc = static_cast<int>(std::min<int64_t>(std::max(1, kWords >> P.gs), P.nb - b0));
    const __m512i e = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(__mmask16((1u << nbc) - 1), P.exps + n * P.nb + b0));
    sh = _mm512_mask_sub_epi32(_mm512_setzero_si512(), _mm512_cmpneq_epi32_mask(e, _mm512_set1_epi32(-128)), e,
                               _mm512_set1_epi32(M - 1));
  }

  // The 4 bf16 vectors of word group i (128-bit lane L: 8 weights of word 4 L + i), unscaled, in chunk order.
  LK_G void group(const Gfni<M>& g, int i, __m512i* v) const {
    if constexpr (M <= 3) {
      g.nibble_values(q[i], v);
    } else {
      g.values(q[2 * i], M == 8 ? _cvtu64_mask64(sb[2 * i]) : 0, v);
      g.values(q[2 * i + 1], M == 8 ? _cvtu64_mask64(sb[2 * i + 1]) : 0, v + 2);
    }
  }
};

// y[r * ldy + n] for R (<= 4) x rows (permuted, chunk_order_bf16) and weight rows [n0, n1).
template <int M, int R>
LK_G void gemv_tile(const Gfni<M>& g, const Planes& P, const uint16_t* x, int64_t ldx, int64_t n0, int64_t n1,
                    float* y, int64_t ldy) {
  const int64_t nchunks = (P.Kw + kWords - 1) / kWords;
  // m >= 7 (8-9 planes, the most bytes per decode instruction) prefetches into L2, narrower widths into L1: 4096 x
  // 4096, M = 1, cold, on Zen 4 (alternating processes, six pairs) L2 took m = 8 0.91-0.98x the time, m = 6 about the
  // same, m = 4 and 2 1.05-1.15x (their decode then waits on L2); with this split, three more pairs: m = 7
  // 0.86-0.96x, m = 8 0.94-1.00x
  constexpr int kPrefetchLocality = M >= 7 ? 2 : 3;
  Chunk<M> c;
  for (int64_t n = n0; n < n1; ++n) {
    __m512 tot[R];
    for (int r = 0; r < R; ++r) tot[r] = _mm512_setzero_ps();
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      const uint32_t* ahead = P.data + n * P.Kw + ch * kWords + kPlanePrefetch / 4;  // rows follow in a plane
      for (int s = 0; s < 8; ++s)
        if (slot<M>(s) >= 0) __builtin_prefetch(ahead + slot<M>(s) * P.plane_stride, 0, kPrefetchLocality);
      c.load(g, P, n, ch);
      // 2^sh as fp32 bits where every shift of the chunk is a normal power of two (all but |w| beyond ~2^103 or
      // below ~2^-95): then one FMA per group; otherwise vscalefps (exact, subnormal results rounded once)
      const bool normal = !_mm512_cmpgt_epu32_mask(_mm512_add_epi32(c.sh, _mm512_set1_epi32(126)), _mm512_set1_epi32(253));
      const __m512 shf = normal ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(c.sh, _mm512_set1_epi32(127)), 23))
                                : _mm512_cvtepi32_ps(c.sh);
      const uint16_t* xc = x + ch * kChunkBf16;
      for (int i = 0; i < 4; ++i) {
        __m512i v[4];
        c.group(g, i, v);
        const __m512 s = _mm512_permutexvar_ps(g.idx[i], shf);
        for (int r = 0; r < R; ++r) {
          const uint16_t* xr = xc + r * ldx + 128 * i;
          __m512 acc = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)v[0], (__m512bh)_mm512_loadu_si512(xr));
          acc = _mm512_dpbf16_ps(acc, (__m512bh)v[1], (__m512bh)_mm512_loadu_si512(xr + 32));
          acc = _mm512_dpbf16_ps(acc, (__m512bh)v[2], (__m512bh)_mm512_loadu_si512(xr + 64));
          acc = _mm512_dpbf16_ps(acc, (__m512bh)v[3], (__m512bh)_mm512_loadu_si512(xr + 96));
          tot[r] = normal ? _mm512_fmadd_ps(acc, s, tot[r]) : _mm512_add_ps(tot[r], _mm512_scalef_ps(acc, s));
        }
      }
    }
    for (int r = 0; r < R; ++r) y[r * ldy + n] = _mm512_reduce_add_ps(tot[r]);
  }
}

// Chunk ch of row n as kChunkBf16 bf16 values at o, in chunk order, with the block scale added to the exponent
// field of the nonzero values: +-q 2^sh, exact where every block's smallest step is a bf16 normal (the caller
// checks).
template <int M>
LK_G void decode_chunk(const Gfni<M>& g, const Planes& P, int64_t n, int64_t ch, uint16_t* o) {
  const __m512i magnitude = _mm512_set1_epi16(0x7fff), low16 = _mm512_set1_epi32(0xffff);
  Chunk<M> c;
  c.load(g, P, n, ch);
  for (int i = 0; i < 4; ++i) {
    __m512i v[4];
    c.group(g, i, v);
    const __m512i s = _mm512_permutexvar_epi32(g.idx[i], c.sh);  // the shift of each lane's word
    const __m512i s16 = _mm512_or_si512(_mm512_and_si512(_mm512_slli_epi32(s, 7), low16), _mm512_slli_epi32(s, 23));
    for (int u = 0; u < 4; ++u) {
      const __m512i w = _mm512_mask_add_epi16(v[u], _mm512_test_epi16_mask(v[u], magnitude), v[u], s16);
      _mm512_storeu_si512(o + 128 * i + 32 * u, w);
    }
  }
}

// Rows [n0, n1) by decode_chunk: out[(n - n0) * ldo + i], i < bf16_width(Kw).
template <int M>
LK_G void decode_rows(const Gfni<M>& g, const Planes& P, int64_t n0, int64_t n1, uint16_t* out, int64_t ldo) {
  const int64_t nchunks = (P.Kw + kWords - 1) / kWords;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t ch = 0; ch < nchunks; ++ch) decode_chunk<M>(g, P, n, ch, out + (n - n0) * ldo + ch * kChunkBf16);
}

// gemv_tile over every x row, 4 at a time: the planes of rows [n0, n1) decoded once per 4 x rows.
template <int M>
LK_G void gemv_redecode(const Gfni<M>& g, const Planes& P, const uint16_t* x, int64_t R, int64_t ldx, int64_t n0,
                        int64_t n1, float* y, int64_t ldy) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) gemv_tile<M, 4>(g, P, x + r * ldx, ldx, n0, n1, y + r * ldy, ldy);
  switch (R - r) {
    case 3: gemv_tile<M, 3>(g, P, x + r * ldx, ldx, n0, n1, y + r * ldy, ldy); break;
    case 2: gemv_tile<M, 2>(g, P, x + r * ldx, ldx, n0, n1, y + r * ldy, ldy); break;
    case 1: gemv_tile<M, 1>(g, P, x + r * ldx, ldx, n0, n1, y + r * ldy, ldy); break;
    default: break;
  }
}

// Many x rows: 4 weight rows at a time, chunk by chunk, decoded once to bf16 (the scale in the exponent,
// decode_chunk) into 4 KB that stay in L1, times every 4 x rows in a 4 x 4 register tile (cpu::bf16dot::
// tile4x4_sums), their sums kept across chunks (Tile4Sums, 1 KB per 4 x rows); x rows in passes of
// kDecodedMaxRows. gemv_redecode instead decodes the planes again for every 4 x rows, and its single weight row
// reloads x for each of them. (8 weight rows per group, two tiles per x slice so that the second reads it from L1:
// 0.96-0.98x the time at M = 32-64 on 4096 x 4096, 1.05-1.09x at M = 16 on 4096 x 14336, Zen 4; not kept.) Rows
// whose blocks decode_chunk cannot give exactly or whose products could fall below 2^-126 (P.decode_min_e), and a
// last group of fewer than 4, take gemv_redecode.
template <int M>
LK_G void gemv_decoded(const Gfni<M>& g, const Planes& P, const uint16_t* x, int64_t R, int64_t ldx, int64_t n0,
                       int64_t n1, float* y, int64_t ldy) {
  if (R > kDecodedMaxRows) {  // x rows in passes (the decode repeated per pass)
    for (int64_t r = 0; r < R; r += kDecodedMaxRows)
      gemv_decoded<M>(g, P, x + r * ldx, std::min(kDecodedMaxRows, R - r), ldx, n0, n1, y + r * ldy, ldy);
    return;
  }
  const int64_t nchunks = (P.Kw + kWords - 1) / kWords;
  alignas(64) uint16_t w[4 * kChunkBf16];
  cpu::bf16dot::Tile4Sums<kDecodedMaxRows> sums(x, R, ldx);
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    if (!blocks_decode_exact(P.exps + n * P.nb, 4 * P.nb, P.decode_min_e)) {
      gemv_redecode<M>(g, P, x, R, ldx, n, n + 4, y, ldy);
      continue;
    }
    sums.zero();
    const bool ahead = n + 8 <= n1;
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      // the next 4 rows' lines of this chunk into L2, a group ahead: 4 (1 + m) streams at once are more than the
      // hardware prefetchers follow (without this the decode's plane loads were the kernel's largest stall)
      if (ahead)
        for (int p = 0; p <= M; ++p)
          for (int i = 4; i < 8; ++i)
            _mm_prefetch((const char*)(P.data + p * P.plane_stride + (n + i) * P.Kw + ch * kWords), _MM_HINT_T1);
      for (int i = 0; i < 4; ++i) decode_chunk<M>(g, P, n + i, ch, w + i * kChunkBf16);
      sums.add(w, kChunkBf16, ch * kChunkBf16, kChunkBf16);
    }
    sums.store(y, ldy, n);
  }
  if (n < n1) gemv_redecode<M>(g, P, x, R, ldx, n, n1, y, ldy);
}

template <int M>
LK_G void gemv_width(const Planes& P, const uint16_t* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                     int64_t ldy) {
  const Gfni<M> g(P.gs);
  if (R >= decoded_rows())
    gemv_decoded<M>(g, P, x, R, ldx, n0, n1, y, ldy);
  else
    gemv_redecode<M>(g, P, x, R, ldx, n0, n1, y, ldy);
}

template <int M>
LK_G void decode_width(const Planes& P, int64_t n0, int64_t n1, uint16_t* out, int64_t ldo) {
  const Gfni<M> g(P.gs);
  decode_rows<M>(g, P, n0, n1, out, ldo);
}

#undef LK_G

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vbmi,gfni"))) void gemv_bf16_gfni(
    const Planes& P, const uint16_t* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  with_width8(P.m, [&](auto w) { gemv_width<decltype(w)::value>(P, x, R, ldx, n0, n1, y, ldy); });
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vbmi,gfni"))) void decode_bf16_gfni(
    const Planes& P, int64_t n0, int64_t n1, uint16_t* out, int64_t ldo) {
  with_width8(P.m, [&](auto w) { decode_width<decltype(w)::value>(P, n0, n1, out, ldo); });
}

}  // namespace avx512bf16
}  // namespace sefp
}  // namespace leankern

#endif
