// Element conversions and the output epilogue shared by the SEFP CPU ops (sefp_cpu.cpp, packed_cpu.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <optional>

#include "common/parallel.h"
#include "sefp/kernels.h"

namespace leankern {
namespace sefp {

// Element i of a float buffer of dtype code dt as fp32, and back (RNE, as Tensor.to).
inline float load_f32(const void* p, int dt, int64_t i) {
  if (dt == kF32) return static_cast<const float*>(p)[i];
  if (dt == kBF16) return static_cast<float>(static_cast<const c10::BFloat16*>(p)[i]);
  return static_cast<float>(static_cast<const c10::Half*>(p)[i]);
}

inline void store_from_f32(void* p, int dt, int64_t i, float v) {  // RNE, as Tensor.to
  if (dt == kF32)
    static_cast<float*>(p)[i] = v;
  else if (dt == kBF16)
    static_cast<c10::BFloat16*>(p)[i] = c10::BFloat16(v);
  else
    static_cast<c10::Half*>(p)[i] = c10::Half(v);
}

// out [M, N] (dtype code dt) = ys [M, N] (fp32) + bias (fp32 add), rounded once (RNE), rows over both cores.
inline void store_output(void* out, int dt, const float* ys, int64_t M, int64_t N,
                         const std::optional<at::Tensor>& bias) {
  const at::Tensor bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* bp = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  cpu::parallel_chunks(M, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, N)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t n = 0; n < N; ++n) store_from_f32(out, dt, r * N + n, bp ? ys[r * N + n] + bp[n] : ys[r * N + n]);
  });
}

}  // namespace sefp
}  // namespace leankern
