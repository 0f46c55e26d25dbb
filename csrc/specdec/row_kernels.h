// Per-row passes of the specdec CPU kernels, one table per ISA (scalar, AVX2, AVX-512), chosen at
// run time (common/cpu_features.h). A row is V logits of one dtype (numerics.h Dtype); every pass
// gives the same bits on every ISA (numerics.h). Block sums: one int64 per kBlock elements.
#pragma once

#include <cstdint>

namespace leankern {
namespace specdec {

constexpr int64_t kArgBlock = 512;  // elements per block maximum of the argmax pass

// The argmax pass: valid = no NaN, no +inf, finite maximum (ref.row_is_valid); index = the lowest
// index of the maximum (torch.argmax) when valid.
struct ArgmaxOut {
  float max;
  int64_t index;
  bool valid;
};

// W_i = exp_weights(x_i / t - m) (t == 1: x_i - m), W'_i = W_i if W_i >= w_min else 0.
struct RowKernels {
  // block_max (optional, ceil(V / kArgBlock) entries): the maximum of every kArgBlock elements (a free
  // bound of S: rowdist.cpp).
  ArgmaxOut (*argmax)(const void* row, int dtype, int64_t V, float* block_max);
  // sum of W' (exact int64); blocks (optional): the sum of W' over each kBlock elements; store
  // (optional): every W into store[V], as fp32 (W = trunc of an fp32 value: exact, half the bytes);
  // pf (optional): V elements of dtype pf_dtype to prefetch into cache meanwhile (the draft
  // probabilities the residual pass reads next: the exp pass is compute-bound, the residual was not).
  int64_t (*weight_sum)(const void* row, int dtype, int64_t V, float t, float m, int64_t w_min, int64_t* blocks,
                        float* store, const void* pf, int pf_dtype);
  // A bound of S: F = sum_i (1 + f_i) 2^k_i, k_i + f_i = max(d_i, -80) log2(e) (k_i integer, f_i in
  // [0, 1)), d_i = x_i / t - m. exp(d) <= (1 + f) 2^k <= 1.0616 exp(d), so 2^40 F / 1.0616 - 2V <= S
  // <= 2^40 F up to ~1e-5 of rounding (rowdist.cpp adds the margins). About a fifth of the exact pass.
  double (*bound_sum)(const void* row, int dtype, int64_t V, float t, float m);
  // sum of W' ln W' over W' > 0 (fp64; the entropy's numerator).
  double (*entropy_sum)(const void* row, int dtype, int64_t V, float t, float m, int64_t w_min);
  // Residual max(0, W'_i - floor(double(q_i) * S)) (ref.residual_weights, q read clamped to [0, 1]) from
  // the weights W [V] stored by weight_sum: returns its sum, fills blocks (optional) with its kBlock sums.
  int64_t (*residual_sum_w)(const float* W, int64_t V, int64_t w_min, const void* q, int q_dtype, double S,
                            int64_t* blocks);
};

const RowKernels& scalar_row_kernels();
const RowKernels& avx2_row_kernels();
const RowKernels& avx512_row_kernels();
// The table of the active ISA (leankern._C.set_cpu_isa / LEANKERN_CPU_ISA).
const RowKernels& active_row_kernels();

}  // namespace specdec
}  // namespace leankern
