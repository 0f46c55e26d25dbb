// Argument checks of the vocab CPU ops: the conditions and messages of python/leankern/vocab/ops.py
// (_check_head, check_ids_values, _check_scatter, _check_stats) in the same order, so a test's `match=`
// holds on every backend. The id check reads only vocab_ids, before any weight row is read.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "common/torch_checks.h"
#include "vocab/vec.h"

namespace leankern {
namespace vocab {

inline void check_float(const char* name, const at::Tensor& t) {
  checks::check_dtype(name, t, {at::kFloat, at::kBFloat16, at::kHalf});
}

inline int dtype_code(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? kF32 : t.scalar_type() == at::kBFloat16 ? kBF16 : kF16;
}

// ops._check_head; returns K.
inline int64_t check_head(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& vocab_ids,
                          const std::optional<at::Tensor>& bias, std::optional<double> soft_cap, double scale) {
  check_float("hidden", hidden);
  TORCH_CHECK_VALUE(hidden.dim() == 2, "hidden: expected shape [B, H], got ", checks::py_repr(hidden.sizes()));
  const int64_t B = hidden.size(0), H = hidden.size(1);
  const at::Device dev = hidden.device();
  check_float("weight", weight);
  checks::check_device("weight", weight, dev, "hidden");
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == H, "weight: expected shape [V, H=", H,
                    "] (H from hidden), got ", checks::py_repr(weight.sizes()));
  TORCH_CHECK_VALUE(weight.size(0) >= 1, "weight: expected at least one vocabulary row, got V = 0");
  TORCH_CHECK_VALUE(H <= 1 || weight.stride(1) == 1,
                    "weight: expected rows contiguous in memory (stride(1) == 1), got strides ",
                    checks::py_repr(weight.strides()));
  const int64_t V = weight.size(0);
  checks::check_dtype("vocab_ids", vocab_ids, {at::kInt});
  checks::check_device("vocab_ids", vocab_ids, dev, "hidden");
  int64_t K;
  if (vocab_ids.dim() == 1) {
    K = vocab_ids.size(0);
  } else {
    TORCH_CHECK_VALUE(vocab_ids.dim() == 2 && vocab_ids.size(0) == B, "vocab_ids: expected shape [K] or [B=", B,
                      ", K], got ", checks::py_repr(vocab_ids.sizes()));
    K = vocab_ids.size(1);
  }
  if (bias.has_value()) {
    check_float("bias", *bias);
    checks::check_device("bias", *bias, dev, "hidden");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == V, "bias: expected shape [V=", V, "], got ",
                      checks::py_repr(bias->sizes()));
  }
  TORCH_CHECK_VALUE(!soft_cap.has_value() || (*soft_cap > 0 && std::isfinite(*soft_cap)),
                    "soft_cap: expected a finite value > 0 (or None for no cap), got ",
                    soft_cap.has_value() ? checks::py_float_repr(*soft_cap) : "None");
  TORCH_CHECK_VALUE(std::isfinite(scale), "scale: expected a finite value, got ", checks::py_float_repr(scale));
  return K;
}

// ops.check_ids_values: every id in [-1, V).
inline void check_ids(const int32_t* ids, int64_t n, int64_t V) {
  if (n == 0) return;
  const auto mm = std::minmax_element(ids, ids + n);
  TORCH_CHECK_VALUE(*mm.first >= -1 && *mm.second < V, "vocab_ids: expected ids in [-1, V=", V,
                    ") (-1 = padding), got min ", *mm.first, ", max ", *mm.second);
}

}  // namespace vocab
}  // namespace leankern
