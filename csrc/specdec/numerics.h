// The specdec numerics in scalar C++ (python/leankern/specdec/numerics.py is the definition).
//
// Every function here computes exactly what the reference computes, operation for operation:
// fp32 products and sums rounded one at a time (the build has -ffp-contract=off, and nothing here
// may use an FMA), integer weights trunc(e * 2^40), fp64 decisions. The SIMD kernels
// (row_simd_impl.h) use these for their tails and must give the same bits.
#pragma once

#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace leankern {
namespace specdec {

// Input dtype codes of a row (target / bonus / node logits, draft probabilities).
enum Dtype : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

constexpr int kWFracBits = 40;
constexpr int64_t kBlock = 256;  // elements per partial weight sum (sampling finds its block, then recomputes it)

// fp32 constants: the double literals of numerics.py, rounded to fp32 like torch.tensor(v, float32)
// (never a float literal: decimal -> float directly can round differently from decimal -> double -> float).
constexpr float kExpCutoff = static_cast<float>(-28.0);
constexpr float kLog2e = static_cast<float>(1.44269502162933349609375);
constexpr float kLn2Hi = static_cast<float>(0.693145751953125);
constexpr float kLn2Lo = static_cast<float>(1.428606765330187045e-06);
constexpr float kExpCoeffs[8] = {
    static_cast<float>(1.98412701138295233249664306640625e-04), static_cast<float>(1.388888922519981861114501953125e-03),
    static_cast<float>(8.333333767950534820556640625e-03),       static_cast<float>(4.1666667908430099487304687500e-02),
    static_cast<float>(0.16666667163372039794921875),           0.5f,
    1.0f,                                                       1.0f};

inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// One element of a row as fp32 (exact for bf16 / fp16).
inline float load_scalar(const void* row, int dtype, int64_t i) {
  if (dtype == kF32) return static_cast<const float*>(row)[i];
  const uint16_t h = static_cast<const uint16_t*>(row)[i];
  if (dtype == kBF16) return bits_to_float(static_cast<uint32_t>(h) << 16);
  return c10::detail::fp16_ieee_to_fp32_value(h);
}

// exp_poly(d) * 2^40 for d in [EXP_CUTOFF, 0]: numerics.exp_poly, with the final "* 2^n" and the
// "* 2^40" of exp_weights folded into one exact power-of-two product (p * 2^(n+40) is normal).
inline float exp_poly_2p40(float d) {
  const float n = std::floor(d * kLog2e + 0.5f);
  const float r = (d - n * kLn2Hi) - n * kLn2Lo;
  float p = kExpCoeffs[0];
  for (int k = 1; k < 8; ++k) p = p * r + kExpCoeffs[k];
  const int32_t ni = static_cast<int32_t>(n);
  return p * bits_to_float(static_cast<uint32_t>(ni + 127 + kWFracBits) << 23);
}

// numerics.exp_weights for one element: trunc(exp_poly(d) * 2^40), 0 below the cutoff (or NaN).
inline int64_t weight_of_d(float d) {
  if (!(d >= kExpCutoff)) return 0;
  return static_cast<int64_t>(exp_poly_2p40(d));  // < 2^41: exact truncation
}

// The weight of raw logit x in a row with temperature t and scaled max m: W(x / t - m).
inline int64_t weight_of(float x, float t, float m) { return weight_of_d((t == 1.0f ? x : x / t) - m); }

// A draft probability as the rules read it (ref.clamp_q): [0, 1] as is, > 1 -> 1, negative or NaN -> 0.
inline float clamp_q(float q) { return q >= 0.0f ? (q <= 1.0f ? q : 1.0f) : 0.0f; }

// One residual weight max(0, W' - floor(double(q) * S)) (ref.residual_weights), q clamped: floor(q S)
// is an integer in [0, S] (< 2^63): its int64 conversion is exact.
inline int64_t residual_of(int64_t w_kept, float q, double S) {
  const int64_t r = w_kept - static_cast<int64_t>(std::floor(static_cast<double>(clamp_q(q)) * S));
  return r > 0 ? r : 0;
}

// The bound_sum term of one d (row_kernels.h): (1 + f) 2^k with k + f = max(d, -80) * log2(e).
inline float bound_term(float d) {
  const float tt = (d > -80.0f ? d : -80.0f) * kLog2e;
  const float k = std::floor(tt);
  return (1.0f + (tt - k)) * bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23);
}

// Natural log of a double x >= 1 (fdlibm's e_log.c reduction and polynomial, one formula for every
// x, no FMA): within a few ulp of log(). Entropy sums need it to ~1e-13 relative, not bit-exact.
constexpr double kLnLg[7] = {6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01,
                             2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01,
                             1.479819860511658591e-01};
constexpr double kLn2HiD = 6.93147180369123816490e-01, kLn2LoD = 1.90821492927058770002e-10;

inline double log_ge1(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, 8);
  const uint64_t hi = bits >> 32, hx = hi & 0xfffff;
  const uint64_t i = (hx + 0x95f64) & 0x100000;  // mantissa above sqrt(2): halve it, k + 1
  const uint64_t nb = ((hx | (i ^ 0x3ff00000)) << 32) | (bits & 0xffffffffu);
  double m;
  std::memcpy(&m, &nb, 8);
  const double dk = static_cast<double>(static_cast<int64_t>(hi >> 20) - 1023 + static_cast<int64_t>(i >> 20));
  const double f = m - 1.0, s = f / (2.0 + f), z = s * s, w = z * z;
  const double t1 = w * (kLnLg[1] + w * (kLnLg[3] + w * kLnLg[5]));
  const double t2 = z * (kLnLg[0] + w * (kLnLg[2] + w * (kLnLg[4] + w * kLnLg[6])));
  const double R = t2 + t1;
  return dk * kLn2HiD - ((s * (f - R) - dk * kLn2LoD) - f);
}

}  // namespace specdec
}  // namespace leankern
