// A plain bf16 x bf16 -> fp32 GEMM with AVX512-BF16 dot products, for families whose fp32 reference multiplies
// values that are already bf16 (moe's prefill experts: bf16 hidden states times bf16 weights). torch's CPU mm has
// no bf16 -> fp32 output, and its bf16 output would round every sum.
#pragma once
#include <cstdint>

namespace leankern {
namespace cpu {

// out[m * ldo + n] = sum over k < K of x[r(m) * ldx + k] * w[n * ldw + k] for m < M, n < N, with r(m) = xrows[m]
// (rows of a larger x gathered in place) or m where xrows is nullptr: x and w [N, K] bf16 bit patterns with
// contiguous rows, out fp32. Every product is exact (8 x 8 significant bits) and the sums
// are fp32 (k in pairs), so the result is the fp32 matmul of the same values in another summation order, except
// that vdpbf16ps treats bf16 subnormal inputs (|v| < 2^-126) and fp32 subnormal partial sums as zero.
// Threads over 16-row tiles of w; AMX tiles (TDPBF16PS, the same products and fp32 sums in K order) where
// cpu::amx_enabled() and K % 32 == 0. Returns false, computing nothing, unless the active ISA is avx512bf16.
bool bf16_gemm_nt(const uint16_t* x, int64_t ldx, const int64_t* xrows, const uint16_t* w, int64_t ldw, float* out,
                  int64_t ldo, int64_t M, int64_t N, int64_t K);

// The AMX path of bf16_gemm_nt with x packed once for several calls (e.g. one per panel of w): amx_x_tiles_elems
// bf16 elements for amx_pack_x's [ceil(M / 16), K / 32, 16, 32] tiles of x's rows (gathered as above, rows past M
// zero); bf16_gemm_nt_amx then computes out = x @ w^T from them. It returns false, computing nothing, unless
// cpu::amx_enabled() (with the avx512bf16 ISA active) and K % 32 == 0.
int64_t amx_x_tiles_elems(int64_t M, int64_t K);
void amx_pack_x(const uint16_t* x, int64_t ldx, const int64_t* xrows, int64_t M, int64_t K, uint16_t* xa);
bool bf16_gemm_nt_amx(const uint16_t* xa, const uint16_t* w, int64_t ldw, float* out, int64_t ldo, int64_t M,
                      int64_t N, int64_t K);

}  // namespace cpu
}  // namespace leankern
