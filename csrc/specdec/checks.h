// Argument checks of the specdec CPU ops: the conditions and messages of python/leankern/specdec/ops.py
// (_check_verify / check_verify_values, _check_tree / check_tree_values), in the same order, so a
// test's `match=` holds on every backend. Shape / dtype / scalar checks are O(1); the value checks
// read only the small id / count / parameter tensors, and run before any row is read.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "common/torch_checks.h"

namespace leankern {
namespace specdec {

constexpr int64_t kMaxVocab = (int64_t(1) << 23) - 1;  // ops.MAX_VOCAB: V * 2^40 < 2^63

enum Mode : int { kGreedy = 0, kRelaxed = 1, kRejection = 2, kTypical = 3 };

inline void check_float_tensor(const char* name, const at::Tensor& t) {
  checks::check_dtype(name, t, {at::kFloat, at::kBFloat16, at::kHalf});
}

// check_tensor(name, t, dtypes, device=dev, device_of=ref_name)
inline void check_on(const char* name, const at::Tensor& t, std::initializer_list<at::ScalarType> dtypes,
                     const at::Device& dev, const char* ref_name) {
  checks::check_dtype(name, t, dtypes);
  checks::check_device(name, t, dev, ref_name);
}

// ops._check_rules; returns the mode (index into CHAIN_MODES: greedy, relaxed, rejection, typical).
inline Mode check_rules(c10::string_view mode, bool tree, int64_t relax_radius, double eps, double delta) {
  static const std::vector<std::string> chain = {"greedy", "relaxed", "rejection", "typical"};  // ref.CHAIN_MODES
  static const std::vector<std::string> trees = {"greedy", "relaxed", "typical"};               // ref.TREE_MODES
  const size_t i = checks::check_choice("mode", mode, tree ? trees : chain);
  TORCH_CHECK_VALUE(relax_radius >= 0, "relax_radius: expected >= 0, got ", relax_radius);
  TORCH_CHECK_VALUE((eps > 0 && std::isfinite(eps)) && (delta > 0 && std::isfinite(delta)),
                    "typical: expected finite (eps, delta) > 0, got (", checks::py_float_repr(eps), ", ",
                    checks::py_float_repr(delta), ")");
  return tree ? static_cast<Mode>(i == 2 ? kTypical : i) : static_cast<Mode>(i);
}

// check_tensor(name, logits, FLOAT_DTYPES, min_dim=2), 2-D, V in [1, MAX_VOCAB]
inline void check_logits(const char* name, const at::Tensor& t, const char* shape_legend) {
  check_float_tensor(name, t);
  checks::check_min_dim(name, t, 2);
  TORCH_CHECK_VALUE(t.dim() == 2, name, ": expected shape ", shape_legend, ", got ", checks::py_repr(t.sizes()));
  const int64_t V = t.size(1);
  TORCH_CHECK_VALUE(V >= 1 && V <= kMaxVocab, name, ": expected a vocabulary size V in [1, ", kMaxVocab, "], got ", V);
}

inline void check_per_request(const char* name, const std::optional<at::Tensor>& t, at::ScalarType dtype, int64_t B,
                              const at::Device& dev, const char* ref_name) {
  if (!t.has_value()) return;
  check_on(name, *t, {dtype}, dev, ref_name);
  checks::check_shape(name, *t, {B});
}

// ops._check_ids: token ids in [0, V).
inline void check_ids(const char* name, const int32_t* ids, int64_t n, int64_t V) {
  if (n == 0) return;
  int32_t lo = ids[0], hi = ids[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, ids[i]);
    hi = std::max(hi, ids[i]);
  }
  TORCH_CHECK_VALUE(lo >= 0 && hi < V, name, ": expected token ids in [0, V=", V, "), got min ", lo, ", max ", hi);
}

// ops._check_cumulative: inclusive cumulative counts (each >= min_count) ending at total; returns the
// largest count. Differences in int64 (torch.diff of int32 would wrap on absurd inputs).
inline int64_t check_cumulative(const char* name, const int32_t* cu, int64_t B, int64_t total, const char* total_name,
                                int64_t min_count) {
  if (B == 0) {
    TORCH_CHECK_VALUE(total == 0, name, ": no requests (B = 0) but ", total_name, " = ", total);
    return 0;
  }
  int64_t prev = 0, min_c = INT64_MAX, max_c = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t c = static_cast<int64_t>(cu[b]) - prev;
    min_c = std::min(min_c, c);
    max_c = std::max(max_c, c);
    prev = cu[b];
  }
  if (min_c < min_count) {
    std::string got = "[";
    for (int64_t b = 0; b < std::min<int64_t>(B, 8); ++b) got += (b ? ", " : "") + std::to_string(cu[b]);
    TORCH_CHECK_VALUE(false, name, ": expected non-decreasing cumulative counts with each request >= ", min_count,
                      ", got ", got, "]");
  }
  TORCH_CHECK_VALUE(cu[B - 1] == total, name, ": expected the last entry to equal ", total_name, " = ", total, ", got ",
                    cu[B - 1]);
  return max_c;
}

// ops._check_sampling_values (null pointers: not given)
inline void check_sampling_values(const float* temperature, const int32_t* top_k, const float* top_p, int64_t B,
                                  const float* uniforms, int64_t n_uniforms) {
  for (int64_t b = 0; temperature && b < B; ++b)
    TORCH_CHECK_VALUE(temperature[b] >= 0 && std::isfinite(temperature[b]),
                      "temperature: expected finite values >= 0 (0 = greedy for that request)");
  for (int64_t b = 0; top_k && b < B; ++b) TORCH_CHECK_VALUE(top_k[b] >= 0, "top_k: expected values >= 0 (0 = off)");
  for (int64_t b = 0; top_p && b < B; ++b)
    TORCH_CHECK_VALUE(top_p[b] > 0 && top_p[b] <= 1, "top_p: expected values in (0, 1] (1 = off)");
  for (int64_t i = 0; uniforms && i < n_uniforms; ++i)
    TORCH_CHECK_VALUE(uniforms[i] >= 0 && uniforms[i] < 1, "uniforms: expected values in [0, 1)");
}

template <class T>
const T* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

}  // namespace specdec
}  // namespace leankern
