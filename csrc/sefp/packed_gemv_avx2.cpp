// GEMV and row decoder over the single-width packed SEFP copy (packed.h) in AVX2 + FMA, for x of any dtype (read as
// fp32) on every x86-64 CPU the VBMI kernel (packed_gemv_vbmi.cpp) does not serve: Zen 1-3, Intel before Ice Lake,
// and fp32 / fp16 x anywhere.
//
// One unit = 32 weights of a row (4 B bytes, B = 1 + m; a block of 32-256 weights is 1-8 units).
//   Front, per B: the unit -> 32 signed bytes (-1)^s q in one 256-bit vector, byte p = field F_B(p) of the unit:
//     B = 8 (m = 7): the 32 code bytes; psignb(code & 0x7f, code) (a zero code byte has q = 0).
//     B = 4 (m = 3): the 16 code bytes in both 128-bit lanes, the high lane shifted right 4 (vpsrlvd), & 0x0f,
//       one pshufb from the 16-entry table of (-1)^s q: the low lane holds the even fields, the high lane the odd.
//     B = 2 (m = 1): the 8 code bytes in every qword, qwords 1 and 3 shifted right 4 (vpsrlvq), & 0x0f: each byte a
//       nibble of two fields; one pshufb from two 16-entry tables, the value of the nibble's low field (low lane) and
//       of its high field (high lane).
//     B = 3, 5, 6, 7: lane h reads the 16 bytes from 2 B h (its fields 16 h .. 16 h + 15). Two pshufb put in
//       16-bit word w the two bytes that hold field 2 w, and the two that hold field 2 w + 1; vpmulhuw / vpmullw by
//       per-word powers of two shift field 2 w to the top of the word's low byte and field 2 w + 1 to the top of
//       its high byte (each byte's bit 7 = its field's sign); vpblendvb takes the low bytes from the first, the
//       high bytes from the second: natural order. q = (byte >> (8 - B)) & (2^m - 1) (vpsrlw and a mask), psignb.
//   Back: 4 pshufb put byte 4 v + i of each lane in the top byte of dword i (v = 0..3; lanes of the result: bytes
//     4 v .. 4 v + 3 of the low lane, then of the high lane), vcvtdq2ps gives (-1)^s q 2^24 exactly, 4 FMAs against
//     x read in that same order (x is permuted once per call: packed_avx2_order), and per unit one FMA of its sum by
//     its block's 2^(E - (m - 1) - 24) (an exact fp32, normal or subnormal; as two exact factors in the rare blocks
//     where it is below 2^-149) into the row's total.
// From packed_avx2_decode_once_rows() x rows (5), 4 weight rows at a time are decoded once per K slab into exact
// fp32 weights in L1 and every x row sweeps them in 4 x 3 register tiles (gemv_decoded).
// Per 32 weights: 2 (B = 8), 3 (B = 2, 4) or 9 front operations, then 4 shuffles, 4 conversions, 4 multiply-adds
// and the FMA by the scale; the plane kernels spend 3 sign operations plus a bit transpose (~2-9 operations by m) on
// the same 32 before the same back end.
// Products x q 2^24 and the sums are fp32, as the other sefp kernels; the decoder's rows are the exact weights.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/cpu_features.h"
#include "sefp/hsum_avx2.h"
#include "sefp/packed.h"

namespace leankern {
namespace sefp {

bool packed_avx2_supported() {
  static const bool cpu = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return cpu && cpu::active_isa() >= cpu::Isa::kAvx2;
}

// Kernel position i (0..31) of a unit -> the byte p of the front's vector it reads (the back's pshufb order).
static int back_byte(int i) {
  const int v = i / 8, l = i % 8;
  return l < 4 ? 4 * v + l : 16 + 4 * v + (l - 4);
}

// Byte p of the front's vector -> the field of the unit it holds.
static int front_field(int m, int p) {
  if (m == 3) return p < 16 ? 2 * p : 2 * (p - 16) + 1;
  if (m == 1) return 4 * (p % 8) + 2 * ((p % 16) / 8) + p / 16;
  return p;
}

void packed_avx2_order(int m, int16_t* order) {
  for (int i = 0; i < kPackedAvx2Unit; ++i) order[i] = static_cast<int16_t>(front_field(m, back_byte(i)));
}

namespace {

#define LK_T __attribute__((target("avx2,fma"))) inline

// The general front's constants for B = 1 + m (B = 3, 5, 6, 7): per 16-bit word of a lane, the pshufb controls of its
// even and odd field's two bytes and their power-of-two multipliers.
struct GeneralFront {
  __m256i ctl_even, ctl_odd, mul_even, mul_odd;
};

GeneralFront general_front(int B) {
  alignas(32) int8_t ce[32], co[32];
  alignas(32) uint16_t me[16], mo[16];
  for (int h = 0; h < 2; ++h)
    for (int w = 0; w < 8; ++w) {
      // even field 2 w -> the top of the low byte: a right shift, vpmulhuw by 2^(16 - shift)
      int o = 2 * w * B, b = o >> 3, r = o & 7;
      if (r + B <= 8) {  // inside byte b: the word is bytes (b - 1, b), the field at bits 8 + r ..
        ce[16 * h + 2 * w] = b == 0 ? static_cast<int8_t>(-128) : static_cast<int8_t>(b - 1);
        ce[16 * h + 2 * w + 1] = static_cast<int8_t>(b);
        me[8 * h + w] = static_cast<uint16_t>(1u << (16 - (r + B)));
      } else {  // across bytes b, b + 1: the word is (b, b + 1), the field at bits r ..
        ce[16 * h + 2 * w] = static_cast<int8_t>(b);
        ce[16 * h + 2 * w + 1] = static_cast<int8_t>(b + 1);
        me[8 * h + w] = static_cast<uint16_t>(1u << (24 - (r + B)));
      }
      // odd field 2 w + 1 -> the top of the high byte: a left shift, vpmullw by 2^(16 - B - r)
      o = (2 * w + 1) * B, b = o >> 3, r = o & 7;
      co[16 * h + 2 * w] = static_cast<int8_t>(b);
      co[16 * h + 2 * w + 1] = static_cast<int8_t>(b + 1);
      mo[8 * h + w] = static_cast<uint16_t>(1u << (16 - B - r));
    }
  GeneralFront g;
  std::memcpy(&g.ctl_even, ce, 32);
  std::memcpy(&g.ctl_odd, co, 32);
  std::memcpy(&g.mul_even, me, 32);
  std::memcpy(&g.mul_odd, mo, 32);
  return g;
}

template <int B>
struct Front {
  static constexpr int M = B - 1;
  __m256i c0, c1, c2;  // per-B constants (see decode)
  GeneralFront g;

  LK_T Front() {
    if constexpr (B == 8) {
      c0 = _mm256_set1_epi8(0x7f);
    } else if constexpr (B == 2) {
      c0 = _mm256_setr_epi64x(0, 4, 0, 4);
      c1 = _mm256_set1_epi8(0x0f);
      // per nibble (two fields s << 1 | q): the value of its low field (low lane), of its high field (high lane)
      c2 = _mm256_setr_epi8(0, 1, 0, -1, 0, 1, 0, -1, 0, 1, 0, -1, 0, 1, 0, -1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, -1,
                            -1, -1, -1);
    } else if constexpr (B == 4) {
      c0 = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
      c1 = _mm256_set1_epi8(0x0f);
      c2 = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 0, -1, -2, -3, -4, -5, -6, -7, 0, 1, 2, 3, 4, 5, 6, 7, 0, -1, -2,
                            -3, -4, -5, -6, -7);
    } else {
      g = general_front(B);
      c0 = _mm256_set1_epi8(static_cast<char>((1 << M) - 1));
      c1 = _mm256_set1_epi16(static_cast<short>(0xff00));
    }
  }

  // The unit's 32 signed bytes (-1)^s q; p: its 4 B code bytes (the general form reads 16 bytes at p + 2 B).
  LK_T __m256i decode(const uint8_t* p) const {
    if constexpr (B == 8) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      return _mm256_sign_epi8(_mm256_and_si256(b, c0), b);
    } else if constexpr (B == 2) {
      int64_t q;
      std::memcpy(&q, p, 8);
      const __m256i b = _mm256_set1_epi64x(q);
      return _mm256_shuffle_epi8(c2, _mm256_and_si256(_mm256_srlv_epi64(b, c0), c1));
    } else if constexpr (B == 4) {
      const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      return _mm256_shuffle_epi8(c2, _mm256_and_si256(_mm256_srlv_epi32(b, c0), c1));
    } else {
      const __m256i b = _mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * B)), 1);
      const __m256i ev = _mm256_mulhi_epu16(_mm256_shuffle_epi8(b, g.ctl_even), g.mul_even);
      const __m256i od = _mm256_mullo_epi16(_mm256_shuffle_epi8(b, g.ctl_odd), g.mul_odd);
      const __m256i f = _mm256_blendv_epi8(ev, od, c1);  // byte: s, q, then 8 - B garbage bits
      return _mm256_sign_epi8(_mm256_and_si256(_mm256_srli_epi16(f, 8 - B), c0), f);
    }
  }
};

// The back's 4 pshufb controls: dword i of each lane <- byte 4 v + i of that lane, in the top byte.
struct Back {
  __m256i ctl[4];
  LK_T Back() {
    for (int v = 0; v < 4; ++v) {
      alignas(32) int8_t c[32];
      for (int h = 0; h < 2; ++h)
        for (int i = 0; i < 4; ++i) {
          c[16 * h + 4 * i + 0] = c[16 * h + 4 * i + 1] = c[16 * h + 4 * i + 2] = -128;
          c[16 * h + 4 * i + 3] = static_cast<int8_t>(4 * v + i);
        }
      std::memcpy(&ctl[v], c, 32);
    }
  }
  LK_T void widen(__m256i q8, __m256* f) const {
    for (int v = 0; v < 4; ++v) f[v] = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(q8, ctl[v]));
  }
};

// Block scales: s1[E + 128] = 2^(E - (m - 1) - 24) where that is an fp32 (>= 2^-149), else 2^-24 with the second
// factor s2 = 2^(E - (m - 1)) (exact: E >= -127 keeps it >= 2^-133). E = -128 (an empty block, whose q are 0 in a
// quantized copy): scale 1 as the reference, so s1 = 2^-24.
struct Scales {
  std::array<float, 256> s1, s2;
  std::array<bool, 256> two;
  explicit Scales(int m) {
    for (int i = 0; i < 256; ++i) {
      const int e = i - 128 - (m - 1);
      two[i] = i > 0 && e - 24 < -149;
      s1[i] = i == 0 || two[i] ? 0x1p-24f : std::ldexp(1.0f, e - 24);
      s2[i] = two[i] ? std::ldexp(1.0f, e) : 1.0f;
    }
  }
};

const Scales& scales(int m) {
  static const std::array<Scales, kPackedMaxM + 1> t = [] {
    std::array<Scales, kPackedMaxM + 1> a{Scales(1), Scales(1), Scales(2), Scales(3), Scales(4), Scales(5),
                                         Scales(6), Scales(7)};
    return a;
  }();
  return t[m];
}

// The unit at code byte offset `off` of row `row`: the last unit of a row goes through a zero-padded copy when the
// front reads past its 4 B bytes (the general form: 16 bytes at 2 B), so no load leaves the row.
template <int B>
LK_T const uint8_t* unit_ptr(const uint8_t* row, int64_t off, int64_t row_bytes, uint8_t* pad) {
  constexpr int kReads = (B == 2 || B == 4 || B == 8) ? 4 * B : 2 * B + 16;
  if (off + kReads <= row_bytes) return row + off;
  std::memset(pad, 0, 48);
  std::memcpy(pad, row + off, static_cast<size_t>(row_bytes - off));
  return pad;
}

// tot[r] += (sum_v f[v] x_r[8 v ..]) times the unit's block scale, for RB x rows at x + r * ldx.
template <int RB>
LK_T void unit_fma(const __m256* f, const float* x, int64_t ldx, const Scales& sc, int e, __m256* tot) {
  const __m256 s1 = _mm256_set1_ps(sc.s1[e]);
  for (int r = 0; r < RB; ++r) {
    const float* xr = x + r * ldx;  // a tree of depth 3, not a chain of 4 (the units' sums are independent)
    const __m256 a = _mm256_fmadd_ps(f[1], _mm256_loadu_ps(xr + 8), _mm256_mul_ps(f[0], _mm256_loadu_ps(xr)));
    const __m256 b = _mm256_fmadd_ps(f[3], _mm256_loadu_ps(xr + 24), _mm256_mul_ps(f[2], _mm256_loadu_ps(xr + 16)));
    const __m256 p = _mm256_add_ps(a, b);
    if (__builtin_expect(sc.two[e], 0))
      tot[r] = _mm256_fmadd_ps(_mm256_mul_ps(p, s1), _mm256_set1_ps(sc.s2[e]), tot[r]);
    else
      tot[r] = _mm256_fmadd_ps(p, s1, tot[r]);
  }
}

// y[r * ldy + n] for RB (1..4) x rows at x + r * ldx (kernel order), weight rows [n0, n1). Two units per step,
// each with its own totals: two independent chains for the out-of-order core.
template <int B, int RB>
LK_T void gemv_rows(const PackedW& W, const Front<B>& fr, const Back& bk, const float* x, int64_t ldx, int64_t n0,
                    int64_t n1, float* y, int64_t ldy) {
  const Scales& sc = scales(B - 1);
  const int64_t units = W.Kp / kPackedAvx2Unit;
  alignas(32) uint8_t pad[48];
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = W.codes + n * W.row_bytes;
    const int8_t* ex = W.exps + n * W.nb;
    __m256 t0[RB], t1[RB];
    for (int r = 0; r < RB; ++r) t0[r] = t1[r] = _mm256_setzero_ps();
    int64_t u = 0;
    for (; u + 2 <= units; u += 2) {
      const int64_t off = u * 4 * B;
      _mm_prefetch(reinterpret_cast<const char*>(row + off + 512), _MM_HINT_T0);
      __m256 f[4], g[4];
      bk.widen(fr.decode(unit_ptr<B>(row, off, W.row_bytes, pad)), f);
      bk.widen(fr.decode(unit_ptr<B>(row, off + 4 * B, W.row_bytes, pad)), g);
      const float* xu = x + u * kPackedAvx2Unit;
      unit_fma<RB>(f, xu, ldx, sc, ex[u >> W.gs] + 128, t0);
      unit_fma<RB>(g, xu + kPackedAvx2Unit, ldx, sc, ex[(u + 1) >> W.gs] + 128, t1);
    }
    if (u < units) {  // a row of an odd number of units (K = 32 q, q odd, block size 32)
      __m256 f[4];
      bk.widen(fr.decode(unit_ptr<B>(row, u * 4 * B, W.row_bytes, pad)), f);
      unit_fma<RB>(f, x + u * kPackedAvx2Unit, ldx, sc, ex[u >> W.gs] + 128, t0);
    }
    for (int r = 0; r < RB; ++r) y[r * ldy + n] = hsum256(_mm256_add_ps(t0[r], t1[r]));
  }
}

// Units [u0, u1) of rows [n0, n1) as exact fp32 weights in kernel order: out[(n - n0) * ldo + 32 (u - u0) + i].
template <int B>
LK_T void decode_rows(const PackedW& W, const Front<B>& fr, const Back& bk, int64_t n0, int64_t n1, int64_t u0,
                      int64_t u1, float* out, int64_t ldo) {
  const Scales& sc = scales(B - 1);
  alignas(32) uint8_t pad[48];
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = W.codes + n * W.row_bytes;
    const int8_t* ex = W.exps + n * W.nb;
    float* o = out + (n - n0) * ldo - u0 * kPackedAvx2Unit;
    for (int64_t unit = u0; unit < u1; ++unit) {
      const int e = ex[unit >> W.gs] + 128;
      const __m256 s1 = _mm256_set1_ps(sc.s1[e]), s2 = _mm256_set1_ps(sc.s2[e]);
      __m256 f[4];
      bk.widen(fr.decode(unit_ptr<B>(row, unit * 4 * B, W.row_bytes, pad)), f);
      for (int v = 0; v < 4; ++v)  // q 2^24 s1 is exact; s2 = 1 but in the rare two-factor blocks
        _mm256_storeu_ps(o + unit * kPackedAvx2Unit + 8 * v, _mm256_mul_ps(_mm256_mul_ps(f[v], s1), s2));
    }
  }
}

constexpr int kRowBlock = 4;                // weight rows decoded together by gemv_decoded
constexpr int64_t kSlabBytes = 192 << 10;   // x rows of a K slab: L2-resident while the row blocks sweep them

// tot[8 (t R + r) ..] += sum_k w[t][k] x_r[k] over len weights, for the kRowBlock decoded rows w[t] (stride ldw) and
// RB x rows: each x vector serves 4 weight rows, each weight vector RB x rows (12 FMAs per 7 loads at RB = 3).
template <int RB>
LK_T void tile(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t len, float* tot, int64_t R) {
  __m256 acc[kRowBlock][RB];
  for (int t = 0; t < kRowBlock; ++t)
    for (int r = 0; r < RB; ++r) acc[t][r] = _mm256_setzero_ps();
  for (int64_t k = 0; k < len; k += 8) {
    __m256 xv[RB];
    for (int r = 0; r < RB; ++r) xv[r] = _mm256_loadu_ps(x + r * ldx + k);
    for (int t = 0; t < kRowBlock; ++t) {
      const __m256 wv = _mm256_loadu_ps(w + t * ldw + k);
      for (int r = 0; r < RB; ++r) acc[t][r] = _mm256_fmadd_ps(wv, xv[r], acc[t][r]);
    }
  }
  for (int t = 0; t < kRowBlock; ++t)
    for (int r = 0; r < RB; ++r) {
      float* d = tot + 8 * (t * R + r);
      _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), acc[t][r]));
    }
}

// y[r * ldy + n] for R (> 4) x rows: K in slabs whose x rows fit the L2; per slab, kRowBlock weight rows at a time
// are decoded once (exact weights, as the reference's: each product rounded once) into wbuf and every x row sweeps
// them, instead of each group of 4 x rows decoding every weight again. tot [rows rounded up to kRowBlock, R, 8].
template <int B>
LK_T void gemv_decoded(const PackedW& W, const Front<B>& fr, const Back& bk, const float* x, int64_t R, int64_t ldx,
                       int64_t n0, int64_t n1, float* y, int64_t ldy) {
  thread_local std::vector<float> tot_buf, w_buf;
  const int64_t units = W.Kp / kPackedAvx2Unit;
  const int64_t slab = std::max<int64_t>(1, kSlabBytes / (R * kPackedAvx2Unit * 4));  // units per slab
  const int64_t ldw = std::min(slab, units) * kPackedAvx2Unit;
  const int64_t blocks = (n1 - n0 + kRowBlock - 1) / kRowBlock;
  tot_buf.assign(static_cast<size_t>(blocks * kRowBlock * R * 8), 0.0f);
  if (static_cast<int64_t>(w_buf.size()) < kRowBlock * ldw) w_buf.resize(kRowBlock * ldw);
  float* wb = w_buf.data();
  for (int64_t u0 = 0; u0 < units; u0 += slab) {
    const int64_t u1 = std::min(units, u0 + slab), len = (u1 - u0) * kPackedAvx2Unit;
    for (int64_t nb0 = n0; nb0 < n1; nb0 += kRowBlock) {
      const int64_t nb = std::min<int64_t>(kRowBlock, n1 - nb0);
      decode_rows<B>(W, fr, bk, nb0, nb0 + nb, u0, u1, wb, ldw);
      for (int64_t t = nb; t < kRowBlock; ++t) std::fill(wb + t * ldw, wb + t * ldw + len, 0.0f);  // unused rows
      float* tot = tot_buf.data() + 8 * R * (nb0 - n0);
      const float* xs = x + u0 * kPackedAvx2Unit;
      int64_t r = 0;
      for (; r + 3 <= R; r += 3) tile<3>(wb, ldw, xs + r * ldx, ldx, len, tot + 8 * r, R);
      if (R - r == 2) tile<2>(wb, ldw, xs + r * ldx, ldx, len, tot + 8 * r, R);
      if (R - r == 1) tile<1>(wb, ldw, xs + r * ldx, ldx, len, tot + 8 * r, R);
    }
  }
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t r = 0; r < R; ++r)
      y[r * ldy + n] = hsum256(_mm256_loadu_ps(tot_buf.data() + 8 * ((n - n0) * R + r)));
}

template <int B>
LK_T void gemv_b(const PackedW& W, const float* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                 int64_t ldy) {
  const Front<B> fr;
  const Back bk;
  if (R >= packed_avx2_decode_once_rows()) return gemv_decoded<B>(W, fr, bk, x, R, ldx, n0, n1, y, ldy);
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) gemv_rows<B, 4>(W, fr, bk, x + r * ldx, ldx, n0, n1, y + r * ldy, ldy);
  if (R - r == 3) gemv_rows<B, 3>(W, fr, bk, x + r * ldx, ldx, n0, n1, y + r * ldy, ldy);
  if (R - r == 2) gemv_rows<B, 2>(W, fr, bk, x + r * ldx, ldx, n0, n1, y + r * ldy, ldy);
  if (R - r == 1) gemv_rows<B, 1>(W, fr, bk, x + r * ldx, ldx, n0, n1, y + r * ldy, ldy);
}

template <int B>
LK_T void decode_b(const PackedW& W, int64_t n0, int64_t n1, float* out, int64_t ldo) {
  const Front<B> fr;
  const Back bk;
  decode_rows<B>(W, fr, bk, n0, n1, 0, W.Kp / kPackedAvx2Unit, out, ldo);
}

#undef LK_T

}  // namespace

void gemv_packed_avx2(const PackedW& W, const float* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                      int64_t ldy) {
  switch (W.m) {
    case 1: return gemv_b<2>(W, x, R, ldx, n0, n1, y, ldy);
    case 2: return gemv_b<3>(W, x, R, ldx, n0, n1, y, ldy);
    case 3: return gemv_b<4>(W, x, R, ldx, n0, n1, y, ldy);
    case 4: return gemv_b<5>(W, x, R, ldx, n0, n1, y, ldy);
    case 5: return gemv_b<6>(W, x, R, ldx, n0, n1, y, ldy);
    case 6: return gemv_b<7>(W, x, R, ldx, n0, n1, y, ldy);
    default: return gemv_b<8>(W, x, R, ldx, n0, n1, y, ldy);
  }
}

void decode_packed_avx2(const PackedW& W, int64_t n0, int64_t n1, float* out, int64_t ldo) {
  switch (W.m) {
    case 1: return decode_b<2>(W, n0, n1, out, ldo);
    case 2: return decode_b<3>(W, n0, n1, out, ldo);
    case 3: return decode_b<4>(W, n0, n1, out, ldo);
    case 4: return decode_b<5>(W, n0, n1, out, ldo);
    case 5: return decode_b<6>(W, n0, n1, out, ldo);
    case 6: return decode_b<7>(W, n0, n1, out, ldo);
    default: return decode_b<8>(W, n0, n1, out, ldo);
  }
}

}  // namespace sefp
}  // namespace leankern

#else  // not x86-64: the portable path only

#include "sefp/packed.h"

namespace leankern {
namespace sefp {
bool packed_avx2_supported() { return false; }
void packed_avx2_order(int, int16_t* order) {
  for (int i = 0; i < kPackedAvx2Unit; ++i) order[i] = static_cast<int16_t>(i);
}
void gemv_packed_avx2(const PackedW&, const float*, int64_t, int64_t, int64_t, int64_t, float*, int64_t) {}
void decode_packed_avx2(const PackedW&, int64_t, int64_t, float*, int64_t) {}
}  // namespace sefp
}  // namespace leankern

#endif
