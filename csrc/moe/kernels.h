// Inner loops of the moe_experts CPU op, one table per ISA (scalar, AVX2, AVX-512), chosen at run time
// (common/cpu_features.h). experts_cpu.cpp builds the flat work list (row blocks of every touched expert's
// projections) and calls these on one block at a time, from both cores.
#pragma once

#include <cstdint>

namespace leankern {
namespace moe {

// The activation of experts_cpu.cpp (ref.activation_ref): silu(gate) * up, or gpt-oss's clamped SwiGLU (oai);
// interleaved: gate and up alternate along 2I.
struct ActParams {
  bool oai, interleaved;
  float alpha, limit;
};

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
  // The prefill down GEMM's element-wise steps where it carries the activation as bf16: one part, bf16(a), or two
  // (down_parts in experts_cpu.cpp; epilogue_avx512bf16.cpp; nullptr below the avx512bf16 ISA):
  // act_split_bf16: gu [n, 2I] fp32 gate/up sums (+ bias [2I] fp32, or nullptr) -> a = act(gate, up), written as
  //   hi [n, I] = bf16(a) (RNE) and, unless lo is nullptr, lo [n, I] = bf16(a - hi).
  void (*act_split_bf16)(const float* gu, int64_t n, int64_t I, const ActParams& ac, const float* bias, uint16_t* hi,
                         uint16_t* lo) = nullptr;
  // combine_split: hi [n, H] (the hi rows' sums) and lo [n, H] (the lo rows', or nullptr): for rows t in [t0, t1)
  //   acc[tok[t], :] += ((hi[t] + lo[t]) + b2) * w[t]   (b2 [H] fp32 or nullptr; no lo term without lo).
  void (*combine_split)(const float* hi, const float* lo, int64_t H, const float* b2, const int64_t* tok,
                        const float* w, int64_t t0, int64_t t1, float* acc) = nullptr;
};

// y[i] = e^x[i] (i < n) by the prefill activation's vectorised exp (epilogue_avx512bf16.cpp); false, nothing
// written, where the CPU cannot run the avx512bf16 kernels. A test hook (leankern._C.moe_exp_f32).
bool exp_f32(const float* x, int64_t n, float* y);
// The activation parts the avx512bf16 down GEMM of bf16 w2 carries: 1 = bf16(a) (default; the GEMV path too),
// 2 = hi + lo (16 bits; the GEMV path then keeps fp32); leankern._C.moe_set_down_split. Returns the previous setting.
bool set_down_split(bool two_parts);
// Test hook (leankern._C.moe_set_poison_workspaces; LEANKERN_POISON_WORKSPACES=1 at load): moe_experts fills every
// floating-point workspace and its output with NaN when it allocates them, so that a row read before it was written
// shows as NaN in the result. Returns the previous setting.
bool set_poison_workspaces(bool on);
// Tuning hook (leankern._C.moe_set_gemv_tokens): experts with at most n kept tokens take the GEMV path whatever
// their size (larger ones still do while their fp32 input rows fit 512 KB). Returns the previous n (default 8).
int64_t set_gemv_tokens(int64_t n);
// Tuning hook (leankern._C.moe_set_stream_prefetch): how many elements ahead the avx512bf16 GEMV's row stream (1-4
// tokens) prefetches, and whether into L2 rather than L1. Returns the previous distance.
int64_t set_stream_prefetch(int64_t elements, bool into_l2);
// Tuning hook (leankern._C.moe_set_tile_min_elems): the GEMV runs an expert's n = 1-4 tokens as a register tile of
// 4 rows instead of one row stream when n x C reaches this many elements (5+ tokens always take the tile): the
// stream re-reads every token's vector for every row, which stops fitting L1 beside it. Returns the previous value
// (default 8192: 16 KB of the avx512bf16 GEMV's bf16 vectors, 32 KB of the fp32 loops'). tile_min_elems: the
// current value, for the kernels.
int64_t set_tile_min_elems(int64_t elems);
int64_t tile_min_elems();
// Tuning hook (leankern._C.moe_set_gemv_input_bytes): the 512 KB rule's bytes. Returns the previous value.
int64_t set_gemv_input_bytes(int64_t b);

const MoeKernels& scalar_kernels();
const MoeKernels& avx2_kernels();
const MoeKernels& avx512_kernels();
const MoeKernels& avx512bf16_kernels();  // avx512's plus gemv_rows_bf16
const MoeKernels& active_kernels();  // the table of the active ISA (leankern._C.set_cpu_isa / LEANKERN_CPU_ISA)

}  // namespace moe
}  // namespace leankern
