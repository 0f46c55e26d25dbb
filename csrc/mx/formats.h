// MX / NV block formats: the format table (mirrors python/leankern/mx/formats.py), the op limits,
// and the scalar rounding helpers shared by the C++ CPU kernels and the CUDA kernels.
//
// Header-only, torch-free, every helper LEANKERN_HD (common/bits.h), so csrc/mx/mx.cu runs exactly
// the same integer algorithm. The numerics are defined by python/leankern/mx/ref.py; the algorithm
// (integer RNE / stochastic rounding on the fp32 bit pattern) is described in the comments below.
#pragma once

#include <stdint.h>
#include <string.h>

#include "common/bits.h"

namespace leankern {
namespace mx {

// scale_mode of mx_quantize (python/leankern/mx/ops.py SCALE_MODES, same order): MX "rceil" /
// "floor" pick the E8M0 exponent; NV "rceil" divides by d = g * s (exact division), NV
// "reciprocal" multiplies by r = min(1 / d, FLT_MAX) (GPU producers' form; docs/numerics.md).
enum ScaleMode : int { kScaleRceil = 0, kScaleFloor = 1, kScaleReciprocal = 2 };

// Op limits (the argument checks and leankern._C.kernel_limits() both read these).
constexpr int kMinBlockSize = 2, kMaxBlockSize = 1024;    // mx_quantize / mx_dequantize
constexpr int kMinChunkSize = 2, kMaxChunkSize = 32768;   // hadamard_transform

// ------------------------------------------------------------------------------------------
// Format table (keep in sync with formats.ELEMENTS / formats.FORMATS; a test compares them).
// ------------------------------------------------------------------------------------------
enum ElemId : int { kFp8E4M3 = 0, kFp8E5M2, kFp6E2M3, kFp6E3M2, kFp4E2M1, kInt8, kInt6, kInt4, kNumElems };

struct ElemSpec {
  int bits, is_int, mbits, bias, max_code, sign_bit;
};

LEANKERN_HD constexpr ElemSpec elem_spec(int id) {
  // {bits, is_int, mbits, bias, max_code, sign_bit}
  return id == kFp8E4M3   ? ElemSpec{8, 0, 3, 7, 0x7E, 7}
         : id == kFp8E5M2 ? ElemSpec{8, 0, 2, 15, 0x7B, 7}
         : id == kFp6E2M3 ? ElemSpec{6, 0, 3, 1, 0x1F, 5}
         : id == kFp6E3M2 ? ElemSpec{6, 0, 2, 3, 0x1F, 5}
         : id == kFp4E2M1 ? ElemSpec{4, 0, 1, 1, 0x7, 3}
         : id == kInt8    ? ElemSpec{8, 1, 0, 0, 127, 0}
         : id == kInt6    ? ElemSpec{6, 1, 0, 0, 31, 0}
                          : ElemSpec{4, 1, 0, 0, 7, 0};
}

struct FormatSpec {
  const char* name;
  int elem;
  int default_block;
  int is_nv;  // 1: FP8 E4M3 block scale x FP32 tensor scale; 0: E8M0 (MX)
};

constexpr int kNumFormats = 10;
constexpr FormatSpec kFormats[kNumFormats] = {
    {"mxfp8_e4m3", kFp8E4M3, 32, 0}, {"mxfp8_e5m2", kFp8E5M2, 32, 0}, {"mxfp6_e2m3", kFp6E2M3, 32, 0},
    {"mxfp6_e3m2", kFp6E3M2, 32, 0}, {"mxfp4", kFp4E2M1, 32, 0},      {"mxint8", kInt8, 32, 0},
    {"mxint6", kInt6, 32, 0},        {"mxint4", kInt4, 32, 0},        {"nvfp4", kFp4E2M1, 16, 1},
    {"nvint4", kInt4, 16, 1},
};
constexpr const char* kElemNames[kNumElems] = {"fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2",
                                               "fp4_e2m1", "int8",     "int6",     "int4"};

struct FormatAlias {
  const char* name;
  int format;  // index into kFormats
};
constexpr int kNumAliases = 2;
constexpr FormatAlias kFormatAliases[kNumAliases] = {{"mxfp8", 0}, {"mxfp6", 2}};

// Format index for a name of n chars (case-insensitive, aliases included), or -1. Host only.
inline int find_format(const char* name, size_t n) {
  char low[32];
  if (n >= sizeof(low)) return -1;
  for (size_t i = 0; i < n; ++i) low[i] = (name[i] >= 'A' && name[i] <= 'Z') ? name[i] - 'A' + 'a' : name[i];
  low[n] = 0;
  if (strlen(low) != n) return -1;  // an embedded NUL never names a format
  for (int i = 0; i < kNumAliases; ++i)
    if (strcmp(low, kFormatAliases[i].name) == 0) return kFormatAliases[i].format;
  for (int i = 0; i < kNumFormats; ++i)
    if (strcmp(low, kFormats[i].name) == 0) return i;
  return -1;
}

// ------------------------------------------------------------------------------------------
// Derived element parameters
// ------------------------------------------------------------------------------------------
struct ElemParams {
  int bits, is_int, mbits, emin, emax, max_code, sign_bit;
  uint32_t max_bits;  // fp32 pattern of the largest element value
  uint32_t mant_max;  // its 23-bit mantissa field
};

LEANKERN_HD constexpr int floor_log2(int v) { return v > 1 ? 1 + floor_log2(v >> 1) : 0; }

LEANKERN_HD constexpr uint32_t elem_max_bits(ElemSpec s) {
  // FP: (1.m) * 2^(e_field - bias); INT: max_code as an fp32 (max_code < 2^24: exact).
  return s.is_int ? ((uint32_t)(floor_log2(s.max_code) + 127) << 23) |
                        (((uint32_t)s.max_code << (23 - floor_log2(s.max_code))) & 0x7fffffu)
                  : ((uint32_t)((s.max_code >> s.mbits) - s.bias + 127) << 23) |
                        ((uint32_t)(s.max_code & ((1 << s.mbits) - 1)) << (23 - s.mbits));
}

LEANKERN_HD constexpr ElemParams elem_params(int id) {
  return ElemParams{elem_spec(id).bits,
                    elem_spec(id).is_int,
                    elem_spec(id).mbits,
                    1 - elem_spec(id).bias,
                    (int)(elem_max_bits(elem_spec(id)) >> 23) - 127,
                    elem_spec(id).max_code,
                    elem_spec(id).sign_bit,
                    elem_max_bits(elem_spec(id)),
                    elem_max_bits(elem_spec(id)) & 0x7fffffu};
}

// The packed linear kernels decode an element as its value * 2^D, D = packed_decode_shift (exact): FP8 / FP6
// through the fp16 pattern (bias - 15), E2M1 as integers (1), INT as they are (0).
LEANKERN_HD constexpr int packed_decode_shift(int id) {
  return !elem_spec(id).is_int && elem_spec(id).bits != 4 ? elem_spec(id).bias - 15
         : elem_spec(id).bits == 4 && !elem_spec(id).is_int ? 1
                                                             : 0;
}

// ------------------------------------------------------------------------------------------
// Scale exponent (MX, E8M0) from a finite non-negative block amax pattern.
// rceil: smallest e with amax <= max_elem * 2^e; floor: floor(log2 amax) - emax_elem.
// Clamped to [-127, 127]; amax == 0 gives -127 (scale byte 0).
// ------------------------------------------------------------------------------------------
LEANKERN_HD int mx_scale_exp(uint32_t amax, const ElemParams& p, bool floor_mode) {
  if (amax == 0) return -127;
  int e = biased_exp(amax) - 127 - p.emax;
  if (!floor_mode && norm_mant(amax) > p.mant_max) e += 1;
  return e < -127 ? -127 : (e > 127 ? 127 : e);
}

// Quantum bookkeeping for v = |x| * 2^-e, with a = |x| bits: v = sig * 2^(ux - 23 - e) where ux is
// the unbiased exponent (max(field, 1) - 127). `shift` = number of low bits of sig below the
// element's quantum at v's binade; `base` = magnitude code of the binade start (FP) or 0 (INT).
struct QuantumPos {
  uint32_t sig;
  int shift, base;
};
LEANKERN_HD QuantumPos quantum_pos(uint32_t a, int e, const ElemParams& p) {
  int ex = (int)(a >> 23);
  QuantumPos q;
  q.sig = ex ? ((a & 0x7fffffu) | 0x800000u) : a;
  int ux1 = ex ? ex : 1;
  if (p.is_int) {  // quantum 2^0
    q.shift = e + 150 - ux1;
    q.base = 0;
  } else {  // quantum 2^(max(ev, emin) - mbits), ev = exponent of v (normalised)
    int ev = biased_exp(a) - 127 - e;
    int m = ev > p.emin ? ev : p.emin;
    q.shift = m - p.mbits + e + 150 - ux1;
    q.base = (m - p.emin) << p.mbits;
  }
  return q;
}

// Magnitude code of v = |x| * 2^-e, round-to-nearest-even, saturating at max_code.
// a: |x| fp32 pattern, finite or +Inf (Inf saturates). Codes are monotone in v, so rounding the
// unclamped value and then taking min(code, max_code) equals the reference's clamp-then-round.
LEANKERN_HD int round_rne(uint32_t a, int e, const ElemParams& p) {
  QuantumPos q = quantum_pos(a, e, p);
  int code = q.base + (int)rne_shift(q.sig, q.shift);
  return code < p.max_code ? code : p.max_code;
}

// v > max_elem, compared on (exponent, mantissa) of the normalised value.
LEANKERN_HD bool exceeds_max(uint32_t a, int e, const ElemParams& p) {
  if (a == 0) return false;
  int ev = biased_exp(a) - 127 - e;
  return ev > p.emax || (ev == p.emax && norm_mant(a) > p.mant_max);
}

// Stochastic rounding with one uint32 random word D: r = floor((floor(t * 2^32) + D) / 2^32),
// t = v / quantum. The reference clamps v to max first, so a saturating v gives max_code.
LEANKERN_HD int round_sr(uint32_t a, int e, const ElemParams& p, uint32_t D) {
  if (exceeds_max(a, e, p)) return p.max_code;
  QuantumPos q = quantum_pos(a, e, p);  // here shift >= 17 (v <= max)
  int s = q.shift;
  uint64_t T = s <= 32 ? ((uint64_t)q.sig << (32 - s)) : (s - 32 < 32 ? (uint64_t)(q.sig >> (s - 32)) : 0u);
  return q.base + (int)((T + (uint64_t)D) >> 32);
}

// Stored code (one byte; 4-bit codes in the low nibble) from magnitude + sign.
// FP: sign-magnitude; INT: two's complement (no -0).
LEANKERN_HD uint32_t encode_code(int mag, uint32_t negative, const ElemParams& p) {
  if (p.is_int) {
    int v = negative ? -mag : mag;
    return (uint32_t)v & (p.bits == 4 ? 0xFu : 0xFFu);
  }
  return (uint32_t)mag | (negative << p.sign_bit);
}

// ------------------------------------------------------------------------------------------
// NV two-level scale
// ------------------------------------------------------------------------------------------
// E4M3 block-scale code for t = (amax / max_elem) / g: RNE, saturating at 448, at least 1 (2^-9).
// Like the reference, NaN and non-positive t (only possible for a non-positive / NaN g) give 1.
LEANKERN_HD int nv_scale_code(float t) {
  uint32_t tb = f2u(t);
  if ((tb >> 31) || (tb & 0x7fffffffu) > 0x7f800000u) return 1;
  int c = round_rne(tb, 0, elem_params(kFp8E4M3));
  return c < 1 ? 1 : c;
}

// Value of a positive finite E4M3 magnitude code (exact).
LEANKERN_HD float e4m3_code_value(int code) {
  int ef = code >> 3, m = code & 7;
  return ef ? u2f((uint32_t)((ef + 120) << 23) | ((uint32_t)m << 20)) : (float)m * 0.001953125f;  // 2^-9
}

// NV "reciprocal" mode: the per-block multiplier r = min(fp32(1 / d), FLT_MAX) of d = fp32(g * s)
// (d >= 2^-135 > 0 for a checked g; the clamp only bites when d < 2^-128). Elements: v = fp32(x * r).
LEANKERN_HD float nv_block_reciprocal(float d) {
  const float r = 1.0f / d;
  return r < 3.40282347e38f ? r : 3.40282347e38f;
}

// NV tensor scale g = amax_finite / (448 * max_elem) (fp32 division), floored at 2^-126 so that
// g * s (s >= 2^-9) cannot underflow to 0; 1 if the amax is 0 (ref: nv_global_scale).
LEANKERN_HD float nv_global_scale(uint32_t amax_finite_bits, const ElemParams& p) {
  if (amax_finite_bits == 0) return 1.0f;
  float g = u2f(amax_finite_bits) / (448.0f * u2f(p.max_bits));  // 448*6, 448*7: exact in fp32
  return g < 1.17549435e-38f ? 1.17549435e-38f : g;
}

// ------------------------------------------------------------------------------------------
// The scalar block quantizer (the portable path; CUDA runs the same steps per block).
// ------------------------------------------------------------------------------------------
// Quantize one block of n elements starting at element index i0 of x.
// codes: n bytes (n/2 for 4-bit elements); scale: one byte; rand: n words or nullptr (RNE).
// g: NV tensor scale (ignored for MX); scale_mode: ScaleMode. Follows mx/ref.py step by step.
LEANKERN_HD void quantize_block(const void* x, int dtype, int64_t i0, int n, const ElemParams& p, bool is_nv,
                                int scale_mode, const int32_t* rand, float g, uint8_t* codes, uint8_t* scale) {
  uint32_t amax = 0;
  bool bad = false;
  for (int i = 0; i < n; ++i) {
    uint32_t a = load_f32_bits(x, dtype, i0 + i) & 0x7fffffffu;
    bad |= a >= 0x7f800000u;
    amax = a > amax ? a : amax;
  }
  int nbytes = p.bits == 4 ? n / 2 : n;
  if (bad) {  // NaN/Inf policy: NaN scale, all-zero codes
    *scale = is_nv ? 0x7F : 0xFF;
    for (int i = 0; i < nbytes; ++i) codes[i] = 0;
    return;
  }
  int e = 0;
  float d = 1.0f, r = 1.0f;
  const bool recip = is_nv && scale_mode == kScaleReciprocal;
  if (is_nv) {
    float t = (u2f(amax) / u2f(p.max_bits)) / g;  // two IEEE divisions, this order
    int sc = nv_scale_code(t);
    *scale = (uint8_t)sc;
    d = g * e4m3_code_value(sc);
    r = nv_block_reciprocal(d);
  } else {
    e = mx_scale_exp(amax, p, scale_mode == kScaleFloor);
    *scale = (uint8_t)(e + 127);
  }
  uint32_t lo = 0;
  for (int i = 0; i < n; ++i) {
    uint32_t xb = load_f32_bits(x, dtype, i0 + i);
    uint32_t a = !is_nv ? (xb & 0x7fffffffu)
                        : (f2u(recip ? u2f(xb) * r : u2f(xb) / d) & 0x7fffffffu);  // recip: never NaN
    int mag;
    if (a > 0x7f800000u)  // NV only: 0 / 0 when g * s underflows; mirrors the reference's NaN path
      mag = (!rand && !p.is_int) ? p.max_code + 1 : 0;
    else
      mag = rand ? round_sr(a, e, p, (uint32_t)rand[i0 + i]) : round_rne(a, e, p);
    uint32_t c = encode_code(mag, xb >> 31, p);
    if (p.bits != 4)
      codes[i] = (uint8_t)c;
    else if (i & 1)
      codes[i >> 1] = (uint8_t)(lo | (c << 4));
    else
      lo = c;
  }
}

// ------------------------------------------------------------------------------------------
// Dequantize helpers
// ------------------------------------------------------------------------------------------
// fp32 pattern of one stored code (byte, or nibble for 4-bit), exactly as torch decodes it
// (FP8 NaN/Inf codes included: E4M3 S.1111.111 -> sign|0x7FF00000, E5M2 like fp16 -> fp32, quiet).
LEANKERN_HD uint32_t decode_code_bits(uint32_t raw, const ElemParams& p) {
  if (p.is_int) {
    int v = p.bits == 4 ? ((raw & 0xF) >= 8 ? (int)(raw & 0xF) - 16 : (int)(raw & 0xF)) : (int)(int8_t)(uint8_t)raw;
    return f2u((float)v);
  }
  uint32_t sign = ((raw >> p.sign_bit) & 1u) << 31;
  uint32_t mag = raw & ((1u << p.sign_bit) - 1u);
  uint32_t ef = mag >> p.mbits, m = mag & ((1u << p.mbits) - 1u);
  if (p.bits == 8 && p.mbits == 3 && mag == 0x7F) return sign | 0x7ff00000u;
  if (p.bits == 8 && p.mbits == 2 && ef == 31) return sign | 0x7f800000u | (m << 21) | (m ? 0x400000u : 0u);
  if (ef) return sign | ((ef + 127 - (1 - p.emin)) << 23) | (m << (23 - p.mbits));
  return sign | f2u((float)m * u2f((uint32_t)(127 + p.emin - p.mbits) << 23));  // subnormal, exact
}

// fp32 pattern of 2^(byte - 127); byte 0 is the fp32 subnormal 2^-127; 0xFF -> canonical NaN.
LEANKERN_HD uint32_t e8m0_factor_bits(uint32_t byte) {
  return byte == 0xFF ? 0x7fc00000u : (byte ? byte << 23 : 0x00400000u);
}

}  // namespace mx
}  // namespace leankern
