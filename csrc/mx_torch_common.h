// Tensor-level helpers shared by the CPU and CUDA torch bindings of the MX ops.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "cpu/mx_common.h"

namespace leankern {

// Storage dtype of an element type's codes (matches formats.BlockFormat.code_dtype).
inline at::ScalarType mx_code_dtype(int elem) {
  const ElemSpec s = elem_spec(elem);
  if (elem == kFp8E4M3) return at::kFloat8_e4m3fn;
  if (elem == kFp8E5M2) return at::kFloat8_e5m2;
  if (s.is_int && s.bits != 4) return at::kChar;
  return at::kByte;
}

// `sizes` with its last entry replaced by `last` ([..., K] -> [..., last]).
inline std::vector<int64_t> with_last_dim(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> out(sizes.begin(), sizes.end());
  out.back() = last;
  return out;
}

}  // namespace leankern
