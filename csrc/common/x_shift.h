// The x shift of the CPU linear ops (mx_linear, sefp_linear and their prepacked forms): y = ((x 2^-k) W^T) 2^k
// for x near fp32's top. Why: the kernels' partial sums (per block before the block scale, per lane, per K chunk)
// can overflow fp32 where the products and the result do not (mx: sums of x times the unscaled element values, inf
// from |x| ~ 2^118; sefp: partial sums past 2^128 of products near it, NaN where the exact result is +-inf).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace leankern {

// Row m of x [M, K] (contiguous) with a finite |x| >= 2^kLinearXMaxExp is computed as ((x_m 2^-k_m) W^T) 2^k_m
// (powers of two: exact; elements of the row below ~2^(max - 150) drop out, an absolute error far under the row's
// bound). Per row, not one k for the whole x: a row near fp32's top must not push the other rows' x (requests of
// their own in a batch) down into the subnormals or to zero. Returns the k_m, or an empty vector where every row is
// in range (the common case; fp16 x always is). One pass over x.
constexpr int kLinearXMaxExp = 64;
inline std::vector<int> linear_x_shifts(const at::Tensor& x2) {
  const int64_t M = x2.size(0), K = x2.size(1);
  const bool f32 = x2.scalar_type() == at::kFloat;
  if (!f32 && x2.scalar_type() != at::kBFloat16) return {};
  std::vector<int> k;
  for (int64_t m = 0; m < M; ++m) {
    uint8_t hi = 0;  // the largest exponent field of a finite x in the row (Inf / NaN: 255 -> 0)
    if (f32) {
      const uint32_t* u = reinterpret_cast<const uint32_t*>(x2.data_ptr()) + m * K;
      for (int64_t i = 0; i < K; ++i) {
        const uint8_t f = static_cast<uint8_t>(static_cast<uint8_t>(u[i] >> 23) + 1);  // 255 wraps to 0
        hi = f > hi ? f : hi;
      }
    } else {
      const uint16_t* u = reinterpret_cast<const uint16_t*>(x2.data_ptr()) + m * K;
      for (int64_t i = 0; i < K; ++i) {
        const uint8_t f = static_cast<uint8_t>(static_cast<uint8_t>(u[i] >> 7) + 1);
        hi = f > hi ? f : hi;
      }
    }
    const int field = hi - 1;  // (none: -1)
    if (field >= 127 + kLinearXMaxExp) {
      if (k.empty()) k.assign(M, 0);
      k[m] = field - (127 + kLinearXMaxExp) + 1;
    }
  }
  return k;
}

// 2^(sign * k_m) as an [M, 1] fp32 tensor (exact: |k_m| <= 64).
inline at::Tensor row_powers_of_two(const std::vector<int>& k, int sign) {
  at::Tensor t = at::empty({static_cast<int64_t>(k.size()), 1}, at::TensorOptions().dtype(at::kFloat));
  float* p = t.data_ptr<float>();
  for (size_t m = 0; m < k.size(); ++m) p[m] = std::ldexp(1.0f, sign * k[m]);
  return t;
}

// y_m = ((x_m 2^-k_m) W^T + bias 2^-k_m) 2^k_m, rounded once to x's dtype: run(xs, none) computes the product of
// the fp32 [M, K] x 2^-k without bias (an fp32 [M, N] result). The bias joins in the shifted range, so that a
// product term past fp32's top with a bias of the other sign still gives the finite sum (x ~ 2^124 with a bias of
// ~2^124). Returns y in x_in's shape ([..., N]).
template <class Run>
at::Tensor linear_shifted(const at::Tensor& x_in, const std::vector<int>& shifts, const std::optional<at::Tensor>& bias,
                          Run run) {
  const int64_t M = static_cast<int64_t>(shifts.size()), K = x_in.size(-1);
  const at::Tensor down = row_powers_of_two(shifts, -1);
  const at::Tensor xs = x_in.to(at::kFloat).reshape({M, K}).mul(down);  // (powers of two: exact)
  at::Tensor y = run(xs, std::optional<at::Tensor>());
  if (bias.has_value()) y.add_(bias->to(at::kFloat).unsqueeze(0).mul(down));
  std::vector<int64_t> shape(x_in.sizes().begin(), x_in.sizes().end());
  shape.back() = y.size(1);
  return y.mul_(row_powers_of_two(shifts, 1)).reshape(shape).to(x_in.scalar_type());
}

}  // namespace leankern
