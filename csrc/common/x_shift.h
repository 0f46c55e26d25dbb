// The x shift of the CPU linear ops (mx_linear, sefp_linear and their prepacked forms): y = ((x 2^-k) W^T) 2^k
// for x near fp32's top. Why: the kernels' partial sums (per block before the block scale, per lane, per K chunk)
// can overflow fp32 where the products and the result do not (mx: sums of x times the unscaled element values, inf
// from |x| ~ 2^118; sefp: partial sums past 2^128 of products near it, NaN where the exact result is +-inf).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>

namespace leankern {

// x with a finite |x| >= 2^kLinearXMaxExp is computed as ((x 2^-k) W^T) 2^k (powers of two: exact; elements of x
// below ~2^(max - 150) drop out, an absolute error far under the bound). Returns k (0: x is in range; fp16 x always
// is). One pass over x [M, K] (contiguous).
constexpr int kLinearXMaxExp = 64;
inline int linear_x_shift(const at::Tensor& x2) {
  const int64_t n = x2.numel();
  uint8_t hi = 0;  // the largest exponent field of a finite x (Inf / NaN: 255 -> 0)
  if (x2.scalar_type() == at::kFloat) {
    const uint32_t* u = reinterpret_cast<const uint32_t*>(x2.data_ptr());
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t f = static_cast<uint8_t>(static_cast<uint8_t>(u[i] >> 23) + 1);  // 255 wraps to 0
      hi = f > hi ? f : hi;
    }
  } else if (x2.scalar_type() == at::kBFloat16) {
    const uint16_t* u = reinterpret_cast<const uint16_t*>(x2.data_ptr());
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t f = static_cast<uint8_t>(static_cast<uint8_t>(u[i] >> 7) + 1);
      hi = f > hi ? f : hi;
    }
  } else {
    return 0;
  }
  const int field = hi - 1;  // (none: -1)
  return field >= 127 + kLinearXMaxExp ? field - (127 + kLinearXMaxExp) + 1 : 0;
}

// y = ((x 2^-shift) W^T + bias 2^-shift) 2^shift, rounded once to x's dtype: run(xs, none) computes the product of
// the fp32 x 2^-shift without bias (an fp32 result). The bias joins in the shifted range, so that a product term
// past fp32's top with a bias of the other sign still gives the finite sum (x ~ 2^124 with a bias of ~2^124).
template <class Run>
at::Tensor linear_shifted(const at::Tensor& x_in, int shift, const std::optional<at::Tensor>& bias, Run run) {
  const double down = std::ldexp(1.0, -shift);
  const at::Tensor xs = x_in.to(at::kFloat).mul(down);  // (powers of two: exact)
  at::Tensor y = run(xs, std::optional<at::Tensor>());
  if (bias.has_value()) y.add_(bias->to(at::kFloat).mul(down));
  return y.mul_(std::ldexp(1.0, shift)).to(x_in.scalar_type());
}

}  // namespace leankern
