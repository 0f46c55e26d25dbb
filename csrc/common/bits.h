// Bit-level helpers shared by every family: bit casts, fp32 pattern arithmetic and the exact
// fp16 / bf16 <-> fp32 pattern conversions, header-only and torch-free.
//
// Every helper is LEANKERN_HD (__host__ __device__ under nvcc) so CUDA kernels run exactly the
// same integer algorithm as the CPU kernels. Type punning goes through bit_cast / memcpy only (no
// pointer casts, no unions): the compiler turns each into a register move.
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define LEANKERN_HD __host__ __device__ __forceinline__
#else
#define LEANKERN_HD inline
#endif

namespace leankern {

// Input / output float dtype codes used by the kernels' plain-pointer interfaces.
enum InDtype : int { kInF32 = 0, kInBF16 = 1, kInF16 = 2 };

// std::bit_cast for C++17 (and device code): copy the object representation.
template <class To, class From>
LEANKERN_HD To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast: sizes differ");
  To to;
  memcpy(&to, &from, sizeof(To));
  return to;
}

LEANKERN_HD uint32_t f2u(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return bit_cast<uint32_t>(f);
#endif
}
LEANKERN_HD float u2f(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return bit_cast<float>(u);
#endif
}

// Element i of a raw buffer read as T through memcpy: valid whatever objects the buffer holds
// (float, torch's Half / BFloat16), where a T* dereference would break strict aliasing.
template <class T>
LEANKERN_HD T load_raw(const void* base, int64_t i) {
  T v;
  memcpy(&v, static_cast<const char*>(base) + i * (int64_t)sizeof(T), sizeof(T));
  return v;
}
template <class T>
LEANKERN_HD void store_raw(void* base, int64_t i, T v) {
  memcpy(static_cast<char*>(base) + i * (int64_t)sizeof(T), &v, sizeof(T));
}

// Biased exponent of the *normalised* value of a non-negative fp32 pattern a: the exponent field
// for normals; for subnormals (field 0) msb_pos - 22, found exactly through an int -> float
// conversion (a < 2^23 converts exactly), so it needs no clz intrinsic. a == 0 gives -149.
LEANKERN_HD int biased_exp(uint32_t a) {
  int ex = (int)(a >> 23);
  return ex ? ex : (int)(f2u((float)(int32_t)a) >> 23) - 149;
}
// 23-bit mantissa of the normalised value (the implicit leading 1 dropped).
LEANKERN_HD uint32_t norm_mant(uint32_t a) {
  return (a >> 23) ? (a & 0x7fffffu) : (f2u((float)(int32_t)a) & 0x7fffffu);
}

// RNE of sig / 2^shift (shift >= 1 after clamping; sig < 2^24 so shift 31 already gives 0).
LEANKERN_HD uint32_t rne_shift(uint32_t sig, int shift) {
  shift = shift < 1 ? 1 : (shift > 31 ? 31 : shift);
  return (sig + (1u << (shift - 1)) - 1u + ((sig >> shift) & 1u)) >> shift;
}

// fp16 bits -> fp32 bits, exact (incl. subnormals, Inf, NaN payload).
LEANKERN_HD uint32_t f16_to_f32_bits(uint32_t h) {
  uint32_t sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e == 0x1f) return sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0u);  // quiet like cvtph2ps
  if (e) return sign | ((e + 112) << 23) | (m << 13);
  if (m == 0) return sign;
  return sign | f2u((float)m * 5.9604644775390625e-08f);  // m * 2^-24, exact
}

// fp32 -> bf16 RNE like torch's .to(): NaN -> 0xFFFF.
LEANKERN_HD uint16_t f32_to_bf16_bits(uint32_t b) {
  if ((b & 0x7fffffffu) > 0x7f800000u) return 0xFFFF;
  return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// fp32 -> fp16 RNE with the semantics of vcvtps2ph (NaN keeps sign + top payload, quiet).
LEANKERN_HD uint16_t f32_to_f16_bits(uint32_t b) {
  uint32_t sign = (b >> 16) & 0x8000u, a = b & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to (or is) Inf
  if (a >= 0x38800000u)                                   // normal fp16
    return (uint16_t)(sign | ((a - (112u << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13));
  int ex = (int)(a >> 23);
  uint32_t sig = ex ? ((a & 0x7fffffu) | 0x800000u) : a;
  return (uint16_t)(sign | rne_shift(sig, 126 - (ex ? ex : 1)));  // subnormal fp16 (units of 2^-24)
}

// fp32 pattern of element i of x (InDtype dtype).
LEANKERN_HD uint32_t load_f32_bits(const void* x, int dtype, int64_t i) {
  if (dtype == kInF32) return load_raw<uint32_t>(x, i);
  uint32_t h = load_raw<uint16_t>(x, i);
  return dtype == kInBF16 ? h << 16 : f16_to_f32_bits(h);
}

// Store an fp32 pattern as element i of out (InDtype dtype), rounding RNE to 16-bit types.
LEANKERN_HD void store_f32_bits(void* out, int dtype, int64_t i, uint32_t bits) {
  if (dtype == kInF32)
    store_raw<uint32_t>(out, i, bits);
  else
    store_raw<uint16_t>(out, i, dtype == kInBF16 ? f32_to_bf16_bits(bits) : f32_to_f16_bits(bits));
}

// The smallest exponent field (1 .. 254) of the normal values among n bf16 patterns, or 255 where there is none
// (zeros, subnormals, Inf and NaN do not count). A byte minimum (the field minus 1 wraps to 255 for zero and
// subnormal values; Inf / NaN give 254), so that it compiles to vector code: one pass over x on the calling
// thread, where the bf16 dot-product kernels check what their products may flush (mx, sefp).
inline int bf16_min_normal_exponent_field(const uint16_t* bits, int64_t n) {
  uint8_t lo = 255;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t f = static_cast<uint8_t>(((bits[i] & 0x7FFF) >> 7) - 1);
    lo = f < lo ? f : lo;
  }
  return lo >= 254 ? 255 : lo + 1;
}

}  // namespace leankern
