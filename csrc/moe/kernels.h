// Inner loops of the moe_experts CPU op, one table per ISA (scalar, AVX2, AVX-512), chosen at run time
// (common/cpu_features.h). experts_cpu.cpp builds the flat work list (row blocks of every touched expert's
// projections) and calls these on one block at a time, from both cores.
#pragma once

#include <cstdint>

namespace leankern {
namespace moe {

struct MoeKernels {
  // Rows [r0, r1) of a matrix W [R, C] of dtype dt (vec.h Dtype) times n fp32 vectors:
  //   outs[t][r] = sum_c W(r, c) * xs[t][c]   (t < n, fp32 products and sums)
  // gemv_rows: W(r, c) = w[r * ld + c] (rows contiguous); gemv_cols: W(r, c) = w[c * ld + r] (columns contiguous,
  // a transposed view). Every weight element of the block is read from memory once for all n vectors.
  void (*gemv_rows)(const void* w, int dt, int64_t ld, int64_t r0, int64_t r1, int64_t C, const float* const* xs,
                    int64_t n, float* const* outs);
  void (*gemv_cols)(const void* w, int dt, int64_t ld, int64_t r0, int64_t r1, int64_t C, const float* const* xs,
                    int64_t n, float* const* outs);
  // gemv_rows for bf16 W (rows contiguous) and n bf16 vectors: exact products and fp32 sums with AVX512-BF16 dot
  // products (bf16 subnormal inputs count as 0). nullptr below the avx512bf16 ISA.
  void (*gemv_rows_bf16)(const uint16_t* w, int64_t ld, int64_t r0, int64_t r1, int64_t C, const uint16_t* const* xs,
                         int64_t n, float* const* outs) = nullptr;
};

const MoeKernels& scalar_kernels();
const MoeKernels& avx2_kernels();
const MoeKernels& avx512_kernels();
const MoeKernels& avx512bf16_kernels();  // avx512's plus gemv_rows_bf16
const MoeKernels& active_kernels();  // the table of the active ISA (leankern._C.set_cpu_isa / LEANKERN_CPU_ISA)

}  // namespace moe
}  // namespace leankern
