// Portable row passes (any CPU), and the choice of the active ISA's table. The SIMD tables live in
// row_avx2.cpp / row_avx512.cpp; all three give the same bits (numerics.h).
#include <algorithm>
#include <cmath>

#include "common/cpu_features.h"
#include "specdec/numerics.h"
#include "specdec/row_kernels.h"

namespace leankern {
namespace specdec {
namespace {

double bound_sum_scalar(const void* row, int dtype, int64_t V, float t, float m) {
  double total = 0.0;
  for (int64_t i = 0; i < V; ++i) {
    const float x = load_scalar(row, dtype, i);
    total += bound_term((t == 1.0f ? x : x / t) - m);
  }
  return total;
}

ArgmaxOut argmax_scalar(const void* row, int dtype, int64_t V, float* block_max) {
  float best = -INFINITY;
  int64_t best_i = 0;
  bool nan = false;
  for (int64_t b0 = 0; b0 < V; b0 += kArgBlock) {
    float bm = -INFINITY;
    for (int64_t i = b0, e = std::min(V, b0 + kArgBlock); i < e; ++i) {
      const float x = load_scalar(row, dtype, i);
      nan |= std::isnan(x);
      bm = x > bm ? x : bm;
      if (x > best) {
        best = x;
        best_i = i;
      }
    }
    if (block_max) block_max[b0 / kArgBlock] = bm;
  }
  const bool valid = !nan && std::isfinite(best);
  return {best, valid ? best_i : 0, valid};
}

int64_t weight_sum_scalar(const void* row, int dtype, int64_t V, float t, float m, int64_t w_min, int64_t* blocks,
                          float* store, const void* /*pf: no prefetch on the portable path*/, int /*pf_dtype*/) {
  int64_t total = 0;
  for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
    int64_t s = 0;
    for (int64_t i = b0, e = std::min(V, b0 + kBlock); i < e; ++i) {
      const int64_t w = weight_of(load_scalar(row, dtype, i), t, m);
      if (store) store[i] = static_cast<float>(w);  // exact: w is the trunc of an fp32 value
      s += w >= w_min ? w : 0;
    }
    if (blocks) blocks[b0 / kBlock] = s;
    total += s;
  }
  return total;
}


double entropy_sum_scalar(const void* row, int dtype, int64_t V, float t, float m, int64_t w_min) {
  double acc = 0.0;
  for (int64_t i = 0; i < V; ++i) {
    const int64_t w = weight_of(load_scalar(row, dtype, i), t, m);
    if (w >= w_min && w > 0) acc += static_cast<double>(w) * log_ge1(static_cast<double>(w));
  }
  return acc;
}

int64_t residual_sum_w_scalar(const float* W, int64_t V, int64_t w_min, const void* q, int q_dtype, double S,
                              int64_t* blocks) {
  int64_t total = 0;
  for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
    int64_t s = 0;
    for (int64_t i = b0, e = std::min(V, b0 + kBlock); i < e; ++i) {
      const int64_t w = static_cast<int64_t>(W[i]);
      s += residual_of(w >= w_min ? w : 0, load_scalar(q, q_dtype, i), S);
    }
    if (blocks) blocks[b0 / kBlock] = s;
    total += s;
  }
  return total;
}

}  // namespace

const RowKernels& scalar_row_kernels() {
  static const RowKernels table = {&argmax_scalar,      &weight_sum_scalar,   &bound_sum_scalar,
                                   &entropy_sum_scalar, &residual_sum_w_scalar};
  return table;
}

const RowKernels& active_row_kernels() {
#if defined(__x86_64__) || defined(_M_X64)
  switch (cpu::active_isa()) {
    case cpu::Isa::kAvx512Bf16:
    case cpu::Isa::kAvx512:
      return avx512_row_kernels();
    case cpu::Isa::kAvx2:
      return avx2_row_kernels();
    default:
      break;
  }
#endif
  return scalar_row_kernels();
}

}  // namespace specdec
}  // namespace leankern
