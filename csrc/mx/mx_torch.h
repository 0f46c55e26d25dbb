// Tensor-level helpers of the MX ops shared by the CPU kernels (mx_cpu.cpp) and the CUDA binding
// (mx_cuda_binding.cpp): storage dtypes, output shapes and the op-boundary argument checks, so
// both devices raise the same errors (messages: common/torch_checks.h).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "common/bits.h"
#include "common/torch_checks.h"
#include "common/x_shift.h"
#include "mx/formats.h"

namespace leankern {
namespace mx {

// Storage dtype of an element type's codes (matches formats.BlockFormat.code_dtype).
inline at::ScalarType code_dtype(int elem) {
  const ElemSpec s = elem_spec(elem);
  if (elem == kFp8E4M3) return at::kFloat8_e4m3fn;
  if (elem == kFp8E5M2) return at::kFloat8_e5m2;
  if (s.is_int && s.bits != 4) return at::kChar;
  return at::kByte;
}

inline at::ScalarType scale_dtype(const FormatSpec& f) { return f.is_nv ? at::kFloat8_e4m3fn : at::kByte; }

// `sizes` with its last entry replaced by `last` ([..., K] -> [..., last]).
inline std::vector<int64_t> with_last_dim(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> out(sizes.begin(), sizes.end());
  out.back() = last;
  return out;
}

// InDtype code of a float dtype (checked before: fp32 / bf16 / fp16).
inline int in_dtype_code(at::ScalarType st) {
  return st == at::kFloat ? kInF32 : (st == at::kBFloat16 ? kInBF16 : kInF16);
}

inline void check_float_dtype(const char* name, const at::Tensor& t) {
  checks::check_dtype(name, t, {at::kFloat, at::kBFloat16, at::kHalf});
}

// Index into kFormats of a format name or alias.
inline int check_format(c10::string_view fmt) {
  const int f = find_format(fmt.data(), fmt.size());
  if (f >= 0) return f;
  std::vector<std::string> names, aliases;
  for (const FormatSpec& s : kFormats) names.push_back(s.name);
  for (const FormatAlias& a : kFormatAliases) aliases.push_back(a.name);
  TORCH_CHECK_VALUE(false, "fmt: expected one of ", checks::str_tuple(names), " or an alias ",
                    checks::str_tuple(aliases), ", got ", checks::py_repr(fmt));
  return -1;
}

// mx_quantize's arguments (x's device is the kernel's); returns the format index.
inline int check_quantize_args(const at::Tensor& x, c10::string_view fmt, int64_t block_size,
                               c10::string_view scale_mode, const c10::optional<at::Tensor>& rand_bits,
                               const c10::optional<at::Tensor>& global_scale) {
  const int f = check_format(fmt);
  check_float_dtype("x", x);
  checks::check_min_dim("x", x, 1);
  checks::check_power_of_two("block_size", block_size, kMinBlockSize, kMaxBlockSize);
  static const std::vector<std::string> kScaleModes = {"rceil", "floor", "reciprocal"};
  checks::check_choice("scale_mode", scale_mode, kScaleModes);
  TORCH_CHECK_VALUE(kFormats[f].is_nv || scale_mode != "reciprocal",
                    "scale_mode: 'reciprocal' is only for NV formats (it replaces the division by the NV "
                    "decode scale g * s; MX scales are powers of two, where dividing is already exact), got fmt=",
                    checks::py_repr(kFormats[f].name));
  checks::check_divisible("x.shape[-1]", x.size(-1), "block_size", block_size);
  if (rand_bits.has_value()) {
    checks::check_dtype("rand_bits", *rand_bits, {at::kInt});
    checks::check_device("rand_bits", *rand_bits, x.device(), "x");
    checks::check_shape("rand_bits", *rand_bits, x.sizes());
  }
  if (global_scale.has_value()) {
    TORCH_CHECK_VALUE(kFormats[f].is_nv, "global_scale: only NV formats take a per-tensor scale, got fmt=",
                      checks::py_repr(kFormats[f].name));
    checks::check_dtype("global_scale", *global_scale, {at::kFloat});
    checks::check_device("global_scale", *global_scale, x.device(), "x");
    checks::check_shape("global_scale", *global_scale, {});
  }
  return f;
}

// ScaleMode (formats.h) of a checked scale_mode string.
inline int scale_mode_code(c10::string_view scale_mode) {
  return scale_mode == "floor" ? kScaleFloor : (scale_mode == "reciprocal" ? kScaleReciprocal : kScaleRceil);
}

// strict=True: x holds only finite values (one extra pass over x, only when asked for).
inline void check_strict(const at::Tensor& x) {
  const int64_t bad = x.numel() - at::isfinite(x).sum().item<int64_t>();
  TORCH_CHECK_VALUE(bad == 0, "x: strict=True expects only finite values, got ", bad, " NaN/Inf element(s)");
}

// An NV tensor scale must be finite and >= 2^-126, else g * s (s >= 2^-9) can underflow to 0.
inline void check_global_scale_value(float g) {
  TORCH_CHECK_VALUE(std::isfinite(g) && g >= 1.17549435e-38f,
                    "global_scale: expected a finite value >= 2^-126 (smallest normal fp32), got ",
                    checks::py_float_repr(g));
}

}  // namespace mx
}  // namespace leankern
