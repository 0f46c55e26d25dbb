// Argument and value checks of the moe CPU ops: the conditions and messages of python/leankern/moe/ops.py
// (_check_skip_args, _check_skip, _check_route, _check_align, _check_experts, check_ids_values,
// check_modality_values) in the same order, so a test's `match=` holds on every backend. On CPU the
// dispatcher calls the C++ kernel directly: these are the only checks that run. Value checks (one pass
// over the ids) run before any weight is read.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/torch_checks.h"

namespace leankern {
namespace moe {

constexpr int64_t kMaxTopk = 64;  // ops.MAX_TOPK
constexpr int64_t kMaxBlockM = 1024;
constexpr int64_t kIdBoundInt32 = int64_t(1) << 31;  // ops.ID_BOUND_INT32: E not known (moe_skip), only ids >= -1

enum Rule : int { kNone = 0, kModes = 1, kNaee = 2, kTopP = 3, kMinP = 4, kTopK = 5 };

inline const std::vector<std::string>& skip_rules() {
  static const std::vector<std::string> v = {"none", "modes", "naee", "top_p", "min_p", "top_k"};
  return v;
}

inline void check_float(const char* name, const at::Tensor& t) {
  checks::check_dtype(name, t, {at::kFloat, at::kBFloat16, at::kHalf});
}

inline void check_int32(const char* name, const at::Tensor& t) { checks::check_dtype(name, t, {at::kInt}); }

// repr(list(shape)): [2, 3]
inline std::string py_list(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

inline std::string py_float_list(const std::vector<double>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + checks::py_float_repr(v[i]);
  return out + "]";
}

inline void check_2d(const char* name, const at::Tensor& t, const char* what) {
  TORCH_CHECK_VALUE(t.dim() == 2, name, ": expected shape ", what, ", got ", checks::py_repr(t.sizes()));
}

// ops._check_skip_args; returns the rule's index.
inline int check_skip_args(c10::string_view rule, const std::vector<double>& p,
                           const std::optional<at::Tensor>& modality, int64_t T, const at::Device& dev) {
  const int r = (int)checks::check_choice("skip_rule", rule, skip_rules());
  const size_t want = r == kNone ? 0 : r == kModes ? 4 : 1;
  TORCH_CHECK_VALUE(p.size() == want, "skip_params: expected ", want, " value(s) for rule ", checks::py_repr(rule),
                    ", got ", p.size());
  for (double v : p) TORCH_CHECK_VALUE(std::isfinite(v), "skip_params: expected finite values, got ", py_float_list(p));
  if (r == kTopP || r == kMinP || r == kNaee)
    TORCH_CHECK_VALUE(p[0] >= 0.0 && p[0] <= 1.0, "skip_params: expected ", std::string(rule),
                      "'s parameter in [0, 1], got ", checks::py_float_repr(p[0]));
  if (r == kTopK)
    TORCH_CHECK_VALUE(p[0] >= 1 && p[0] == std::trunc(p[0]),
                      "skip_params: expected top_k's k to be an integer >= 1, got ", checks::py_float_repr(p[0]));
  if (modality.has_value()) {
    check_int32("modality", *modality);
    checks::check_device("modality", *modality, dev, "topk_ids");
    TORCH_CHECK_VALUE(modality->dim() == 1 && modality->size(0) == T, "modality: expected shape [T=", T, "], got ",
                      checks::py_repr(modality->sizes()));
  }
  return r;
}

// ops.check_modality_values (after the argument checks, before any work).
inline void check_modality_values(const int32_t* m, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= (m[i] >= 0) & (m[i] <= 2);
  TORCH_CHECK_VALUE(ok, "modality: expected codes 0 (text), 1 (vision) or 2 (never skip)");
}

// ops.check_ids_values over n ids (rows of k when no_duplicates): ids in [-1, num_experts), no expert twice
// in a row. O(n) for the range; the duplicate test is O(k^2) per row with k <= 64 (no allocation).
inline void check_ids_values(const int32_t* ids, int64_t n, int64_t k, int64_t num_experts, const char* name,
                             bool no_duplicates) {
  if (n == 0) return;
  int32_t lo = ids[0], hi = ids[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, ids[i]);
    hi = std::max(hi, ids[i]);
  }
  TORCH_CHECK_VALUE(lo >= -1 && hi < num_experts, name, ": expected expert ids in [-1, ",
                    num_experts == kIdBoundInt32 ? std::string("2^31") : std::to_string(num_experts),
                    ") (-1 = skipped), got min ", lo, ", max ", hi);
  if (!no_duplicates || k <= 1) return;
  bool dup = false;
  for (int64_t r = 0; r < n / k && !dup; ++r) {
    const int32_t* row = ids + r * k;
    for (int64_t i = 1; i < k && !dup; ++i) {
      if (row[i] < 0) continue;
      for (int64_t j = 0; j < i; ++j) dup |= row[j] == row[i];
    }
  }
  TORCH_CHECK_VALUE(!dup, name, ": expected distinct expert ids within a row (-1 may repeat), "
                    "got an expert twice in one row");
}

// ops._check_skip; returns (T, k).
inline std::pair<int64_t, int64_t> check_skip(const at::Tensor& topk_ids, const at::Tensor& topk_weights) {
  check_int32("topk_ids", topk_ids);
  check_2d("topk_ids", topk_ids, "[T, k]");
  const int64_t T = topk_ids.size(0), k = topk_ids.size(1);
  TORCH_CHECK_VALUE(k >= 1 && k <= kMaxTopk, "topk_ids: expected 1 <= k <= ", kMaxTopk,
                    " slots per token, got k = ", k);
  checks::check_dtype("topk_weights", topk_weights, {at::kFloat});
  checks::check_device("topk_weights", topk_weights, topk_ids.device(), "topk_ids");
  TORCH_CHECK_VALUE(topk_weights.dim() == 2 && topk_weights.size(0) == T && topk_weights.size(1) == k,
                    "topk_weights: expected shape [T=", T, ", k=", k, "], got ", checks::py_repr(topk_weights.sizes()));
  return {T, k};
}

// ops._check_route (before _check_skip_args, which the caller runs).
inline void check_route(const at::Tensor& logits, int64_t top_k, c10::string_view scoring, int64_t n_group,
                        int64_t topk_group, const std::optional<at::Tensor>& bias, double rsf) {
  check_float("router_logits", logits);
  check_2d("router_logits", logits, "[T, E]");
  const int64_t E = logits.size(1);
  checks::check_choice("scoring", scoring, {"softmax", "sigmoid"});
  TORCH_CHECK_VALUE(n_group >= 1 && n_group <= E && E % n_group == 0, "n_group: expected a divisor of E=", E,
                    " (1 = no groups), got ", n_group);
  TORCH_CHECK_VALUE(topk_group >= 1 && topk_group <= n_group, "topk_group: expected 1 <= topk_group <= n_group=",
                    n_group, ", got ", topk_group);
  const int64_t eligible = topk_group * (E / n_group);
  TORCH_CHECK_VALUE(top_k >= 1 && top_k <= std::min(eligible, kMaxTopk), "top_k: expected 1 <= top_k <= "
                    "min(eligible experts=", eligible, ", ", kMaxTopk, "), got ", top_k);
  if (bias.has_value()) {
    check_float("correction_bias", *bias);
    checks::check_device("correction_bias", *bias, logits.device(), "router_logits");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == E, "correction_bias: expected shape [E=", E, "], got ",
                      checks::py_repr(bias->sizes()));
    // finite: an inf / NaN bias has no ranking the backends share (ops._route_bias_values)
    const at::Tensor bf = bias->to(at::kFloat).contiguous();  // (E values, on the CPU: this is the CPU kernel's check)
    const float* b = bf.data_ptr<float>();
    for (int64_t e = 0; e < E; ++e)
      TORCH_CHECK_VALUE(std::isfinite(b[e]), "correction_bias: expected finite values, got ",
                        checks::py_float_repr(b[e]), " at expert ", e);
  }
  TORCH_CHECK_VALUE(rsf > 0 && std::isfinite(rsf), "routed_scaling_factor: expected a finite value > 0, got ",
                    checks::py_float_repr(rsf));
}

// ops._check_align
inline void check_align(const at::Tensor& topk_ids, int64_t num_experts, int64_t block_m,
                        const std::optional<at::Tensor>& expert_map) {
  check_int32("topk_ids", topk_ids);
  check_2d("topk_ids", topk_ids, "[T, k]");
  TORCH_CHECK_VALUE(num_experts >= 1 && num_experts < (int64_t(1) << 20),
                    "num_experts: expected 1 <= num_experts < 2^20, got ", num_experts);
  TORCH_CHECK_VALUE(block_m >= 1 && block_m <= kMaxBlockM, "block_m: expected 1 <= block_m <= ", kMaxBlockM,
                    ", got ", block_m);
  TORCH_CHECK_VALUE(topk_ids.numel() + num_experts * (block_m - 1) < (int64_t(1) << 31),
                    "topk_ids: T * k + num_experts * (block_m - 1) must be < 2^31, got shape ",
                    checks::py_repr(topk_ids.sizes()));
  if (expert_map.has_value()) {
    check_int32("expert_map", *expert_map);
    checks::check_device("expert_map", *expert_map, topk_ids.device(), "topk_ids");
    TORCH_CHECK_VALUE(expert_map->dim() == 1 && expert_map->size(0) >= 1,
                      "expert_map: expected shape [E_global] (global -> local id, -1 = not here), got ",
                      checks::py_repr(expert_map->sizes()));
  }
}

// ops._check_weight_strides
inline void check_weight_strides(const char* name, const at::Tensor& w) {
  TORCH_CHECK_VALUE(!(w.size(1) > 1 && w.size(2) > 1 && w.stride(2) != 1 && w.stride(1) != 1), name,
                    ": expected rows or columns contiguous (stride(2) == 1 or stride(1) == 1), got strides ",
                    checks::py_repr(w.strides()));
}

inline void check_dtype_is(const char* name, const at::Tensor& t, at::ScalarType want) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, name, ": expected dtype in ['", checks::dtype_name(want), "'], got ",
                   checks::dtype_name(t.scalar_type()));
}

// ops._check_shared
inline void check_shared(const at::Device& dev, int64_t H, const std::optional<at::Tensor>& w1,
                         const std::optional<at::Tensor>& w3, const std::optional<at::Tensor>& w2,
                         const std::optional<at::Tensor>& gate) {
  const bool g[3] = {w1.has_value(), w3.has_value(), w2.has_value()};
  const bool any = g[0] || g[1] || g[2], all = g[0] && g[1] && g[2];
  const char* names[3] = {"shared_w1", "shared_w3", "shared_w2"};
  if (any && !all) {
    const int miss = !g[0] ? 0 : !g[1] ? 1 : 2;
    TORCH_CHECK_VALUE(false, "shared_w1, shared_w3, shared_w2: expected all three (a shared SwiGLU expert) or none, "
                      "got ", names[miss], " = None");
  }
  TORCH_CHECK_VALUE(!gate.has_value() || all,
                    "shared_gate: expected shared_w1/w3/w2 too (the gate scales the shared expert), got only a gate");
  if (!all) return;
  const at::Tensor* ts[3] = {&*w1, &*w3, &*w2};
  for (int i = 0; i < 3; ++i) {
    check_float(names[i], *ts[i]);
    checks::check_device(names[i], *ts[i], dev, "hidden");
    check_2d(names[i], *ts[i], i < 2 ? "[Is, H]" : "[H, Is]");
  }
  const int64_t Is = w1->size(0);
  for (int i = 0; i < 3; ++i) {
    const int64_t r = i < 2 ? Is : H, c = i < 2 ? H : Is;
    TORCH_CHECK_VALUE(ts[i]->size(0) == r && ts[i]->size(1) == c, names[i], ": expected shape [", r, ", ", c,
                      "], got ", checks::py_repr(ts[i]->sizes()));
  }
  if (gate.has_value()) {
    check_float("shared_gate", *gate);
    checks::check_device("shared_gate", *gate, dev, "hidden");
    TORCH_CHECK_VALUE(gate->numel() == H && (gate->dim() == 1 || gate->dim() == 2), "shared_gate: expected shape [H=",
                      H, "] or [1, H=", H, "], got ", checks::py_repr(gate->sizes()));
  }
}

// ops._check_experts (argument checks only; the ids' values are checked by the caller).
inline void check_experts(const at::Tensor& hidden, const at::Tensor& w13, const at::Tensor& w2,
                          const at::Tensor& topk_ids, const at::Tensor& topk_weights,
                          const std::optional<at::Tensor>& w13_bias, const std::optional<at::Tensor>& w2_bias,
                          c10::string_view activation, double alpha, double limit,
                          const std::optional<at::Tensor>& sw1, const std::optional<at::Tensor>& sw3,
                          const std::optional<at::Tensor>& sw2, const std::optional<at::Tensor>& sgate) {
  check_float("hidden", hidden);
  check_2d("hidden", hidden, "[T, H]");
  const int64_t T = hidden.size(0), H = hidden.size(1);
  const at::Device dev = hidden.device();
  check_float("w13", w13);
  checks::check_device("w13", w13, dev, "hidden");
  TORCH_CHECK_VALUE(w13.dim() == 3 && w13.size(2) == H && w13.size(1) % 2 == 0 && w13.size(1) != 0,
                    "w13: expected shape [E, 2I, H=", H, "] (gate and up projections), got ",
                    checks::py_repr(w13.sizes()));
  const int64_t E = w13.size(0), I = w13.size(1) / 2;
  check_dtype_is("w2", w2, w13.scalar_type());
  checks::check_device("w2", w2, dev, "hidden");
  TORCH_CHECK_VALUE(w2.dim() == 3 && w2.size(0) == E && w2.size(1) == H && w2.size(2) == I, "w2: expected shape [E=",
                    E, ", H=", H, ", I=", I, "], got ", checks::py_repr(w2.sizes()));
  check_weight_strides("w13", w13);
  check_weight_strides("w2", w2);
  check_int32("topk_ids", topk_ids);
  checks::check_device("topk_ids", topk_ids, dev, "hidden");
  TORCH_CHECK_VALUE(topk_ids.dim() == 2 && topk_ids.size(0) == T && topk_ids.size(1) >= 1 &&
                        topk_ids.size(1) <= kMaxTopk,
                    "topk_ids: expected shape [T=", T, ", k] with 1 <= k <= ", kMaxTopk, ", got ",
                    checks::py_repr(topk_ids.sizes()));
  checks::check_dtype("topk_weights", topk_weights, {at::kFloat});
  checks::check_device("topk_weights", topk_weights, dev, "hidden");
  TORCH_CHECK_VALUE(topk_weights.sizes() == topk_ids.sizes(), "topk_weights: expected shape ",
                    py_list(topk_ids.sizes()), " (that of topk_ids), got ", py_list(topk_weights.sizes()));
  const char* bnames[2] = {"w13_bias", "w2_bias"};
  const std::optional<at::Tensor>* bs[2] = {&w13_bias, &w2_bias};
  const int64_t want[2][2] = {{E, 2 * I}, {E, H}};
  for (int i = 0; i < 2; ++i) {
    if (!bs[i]->has_value()) continue;
    const at::Tensor& b = **bs[i];
    check_float(bnames[i], b);
    checks::check_device(bnames[i], b, dev, "hidden");
    TORCH_CHECK_VALUE(b.dim() == 2 && b.size(0) == want[i][0] && b.size(1) == want[i][1] && b.stride(-1) == 1,
                      bnames[i], ": expected shape [", want[i][0], ", ", want[i][1], "] with contiguous rows, got ",
                      checks::py_repr(b.sizes()), " strides ", checks::py_repr(b.strides()));
  }
  checks::check_choice("activation", activation, {"silu", "swiglu_oai"});
  TORCH_CHECK_VALUE(std::isfinite(alpha) && limit > 0 && std::isfinite(limit),
                    "swiglu_alpha, swiglu_limit: expected a finite alpha and a finite limit > 0, got ",
                    checks::py_float_repr(alpha), ", ", checks::py_float_repr(limit));
  check_shared(dev, H, sw1, sw3, sw2, sgate);
}

}  // namespace moe
}  // namespace leankern
