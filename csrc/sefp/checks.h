// Argument checks of the SEFP CPU ops: the conditions, order, exception types and messages of
// python/leankern/sefp/ops.py (_check_quantize, check_planes, _check_k, _check_dequantize,
// _check_linear), so a test's `match=` holds on every backend. All O(1): no pass over data.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "common/torch_checks.h"
#include "sefp/kernels.h"

namespace leankern {
namespace sefp {

inline void check_float(const char* name, const at::Tensor& t) {
  checks::check_dtype(name, t, {at::kFloat, at::kBFloat16, at::kHalf});
}

inline int dtype_code(at::ScalarType st) { return st == at::kFloat ? kF32 : st == at::kBFloat16 ? kBF16 : kF16; }


// ops._check_int
inline void check_int(const char* name, int64_t v, int64_t lo, int64_t hi) {
  TORCH_CHECK_VALUE(v >= lo && v <= hi, name, ": expected an int in [", lo, ", ", hi, "], got ", v);
}

// core.check_choice("block_size", block_size, BLOCK_SIZES)
inline void check_block_size(int64_t block_size) {
  TORCH_CHECK_VALUE(block_size == 32 || block_size == 64 || block_size == 128 || block_size == 256,
                    "block_size: expected one of (32, 64, 128, 256), got ", block_size);
}

inline int block_shift(int64_t block_size) { return block_size == 32 ? 0 : block_size == 64 ? 1 : block_size == 128 ? 2 : 3; }

inline int64_t padded_k(int64_t K, int64_t block_size) { return (K + block_size - 1) / block_size * block_size; }

// ops._check_quantize
inline void check_quantize(const at::Tensor& w, int64_t m_max, int64_t block_size) {
  check_float("w", w);
  TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) >= 1, "w: expected shape [N, K] with K >= 1, got ",
                    checks::py_repr(w.sizes()));
  check_int("m_max", m_max, 1, kMaxM);
  check_block_size(block_size);
}

// ops.check_planes (device_of: the argument whose device the planes must share, or null: none).
inline void check_planes(const at::Tensor& planes, const at::Tensor& exponents, int64_t m, int64_t block_size,
                         const at::Tensor* device_ref, const char* device_of) {
  check_block_size(block_size);
  checks::check_dtype("planes", planes, {at::kInt});
  if (device_ref) checks::check_device("planes", planes, device_ref->device(), device_of);
  TORCH_CHECK_VALUE(planes.dim() == 3, "planes: expected shape [1 + m_max, N, Kw], got ",
                    checks::py_repr(planes.sizes()));
  const int64_t P = planes.size(0), N = planes.size(1), Kw = planes.size(2);
  check_int("m", m, 1, kMaxM);
  TORCH_CHECK_VALUE(P >= 1 + m, "m: expected an int in [1, ", P - 1, "] (planes holds ", P - 1,
                    " mantissa planes), got ", m);
  TORCH_CHECK_VALUE(Kw >= 1 && (Kw * kWord) % block_size == 0,
                    "planes: expected Kw (last dim) a positive multiple of block_size/32=", block_size / kWord,
                    ", got ", Kw);
  TORCH_CHECK_VALUE(!((Kw > 1 && planes.stride(2) != 1) || (N > 1 && planes.stride(1) != Kw)),
                    "planes: expected each plane contiguous (strides (*, ", Kw, ", 1)), got ",
                    checks::py_repr(planes.strides()));
  checks::check_dtype("exponents", exponents, {at::kChar});
  checks::check_device("exponents", exponents, planes.device(), "planes");
  const int64_t nb = Kw * kWord / block_size;
  TORCH_CHECK_VALUE(exponents.dim() == 2 && exponents.size(0) == N && exponents.size(1) == nb,
                    "exponents: expected shape (N=", N, ", Kp/block_size=", nb, "), got ",
                    checks::py_repr(exponents.sizes()));
  TORCH_CHECK_VALUE(exponents.is_contiguous(), "exponents: expected a contiguous tensor, got strides ",
                    checks::py_repr(exponents.strides()));
}

// ops._check_k
inline void check_k(const char* name, int64_t K, int64_t Kw, int64_t block_size) {
  TORCH_CHECK_VALUE(K >= 1 && padded_k(K, block_size) == Kw * kWord, name,
                    ": expected K with K rounded up to block_size=", block_size, " equal to the stored width ",
                    Kw * kWord, ", got K=", K);
}

// ops._check_dequantize
inline void check_dequantize(const at::Tensor& planes, const at::Tensor& exponents, int64_t m, int64_t block_size,
                             int64_t K, at::ScalarType out_dtype) {
  check_planes(planes, exponents, m, block_size, nullptr, nullptr);
  check_k("K", K, planes.size(2), block_size);
  TORCH_CHECK_TYPE(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf,
                   "out_dtype: expected one of ['torch.float32', 'torch.bfloat16', 'torch.float16'], got ",
                   checks::dtype_name(out_dtype));
}

// ops._check_bias: a float [N] bias on x's device, or none
inline void check_bias(const std::optional<at::Tensor>& bias, int64_t N, const at::Tensor& x) {
  if (!bias.has_value()) return;
  check_float("bias", *bias);
  checks::check_device("bias", *bias, x.device(), "x");
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, "bias: expected shape (N=", N, ",), got ",
                    checks::py_repr(bias->sizes()));
}

// ops._check_linear
inline void check_linear(const at::Tensor& x, const at::Tensor& planes, const at::Tensor& exponents, int64_t m,
                         int64_t block_size, const std::optional<at::Tensor>& bias) {
  check_float("x", x);
  checks::check_min_dim("x", x, 1);
  check_planes(planes, exponents, m, block_size, &x, "x");
  check_k("x", x.size(-1), planes.size(2), block_size);
  check_bias(bias, planes.size(1), x);
}

}  // namespace sefp
}  // namespace leankern
