// Pieces shared by the two CPU linear ops (linear_cpu.cpp: row-major weights;
// linear_packed_cpu.cpp: the prepacked layout). Defined in linear_cpu.cpp.
#pragma once

#include <ATen/ATen.h>

#include "mx/kernels.h"

namespace leankern {
namespace mx {

// Rows of x [..., K] (the product of the leading dims).
inline int64_t leading_rows(const at::Tensor& x) {
  int64_t m = 1;
  for (int64_t i = 0; i + 1 < x.dim(); ++i) m *= x.size(i);
  return m;
}

// check_format with the argument's name in the message ("act_fmt: expected one of ...").
int check_format_named(const char* name, c10::string_view fmt);

// quantize(x, fmt, block_size, "rceil") of a contiguous x: codes, scale bytes and (NV) the dynamic
// tensor scale of x.
struct ActCodes {
  at::Tensor codes, scales;
  float g;
};
ActCodes quantize_act(const at::Tensor& x, int f, int64_t block_size, const KernelTable& kern);

// x [M, K] (contiguous, its own dtype) -> fp32 dequantize(quantize(x, fmt, block_size, "rceil")),
// NV with the dynamic tensor scale of x: the dual mode's x_hat. out_dtype (InDtype): kInBF16 where
// the caller knows x_hat is exact in bf16 (MX formats).
at::Tensor fake_quantize(const at::Tensor& x, int f, int64_t block_size, const KernelTable& kern, int out_dtype = 0);

}  // namespace mx
}  // namespace leankern
