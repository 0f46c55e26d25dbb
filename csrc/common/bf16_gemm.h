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
// bf16_gemm_nt's AMX path reads w in place as A tiles (x packed as B tiles) for M up to a limit (default 1024),
// else packs w into B tiles; both give the same bits. Sets the limit (a test and tuning hook); returns the old one.
int64_t set_bf16_gemm_wa_rows(int64_t rows);

// moe's split down projection with its combine fused in (AMX only). x holds n tokens' activations as two bf16
// parts in 16-token group pairs: rows [32 i, 32 i + 16) the hi parts of tokens 16 i .. 16 i + 15, the next 16 rows
// their lo parts (rows of tokens past n: anything finite, e.g. zeros); pair_rows(n) rows in all. Instead of writing
// the [pair_rows(n), N] sums, for each token t < n and column c < N:
//   w != nullptr: out[r(t) * ldo + c] += ((hi sum + lo sum) + b2[c]) * w[t]
//   w == nullptr: out[r(t) * ldo + c]  =  (hi sum + lo sum) + b2[c]
// each step rounded to fp32 (no contraction), b2 [N] fp32 or nullptr (no term), r(t) = tok[t] or t where tok is
// nullptr. Threads split the columns: each element of out is one thread's, its tokens added in ascending order.
// Why: at ~256 tokens per expert the [2n, H] fp32 sums (4 MB for Qwen3) went to memory and back between the GEMM
// and the combine. Returns false, computing nothing, unless cpu::amx_enabled() and K % 32 == 0.
// parts = 1: x holds one bf16 row per token instead (16-token groups in order, rows past n as above;
// pair_rows(n, 1) rows), and "hi sum + lo sum" above is that row's sum.
struct PairCombine {
  int64_t n;
  const int64_t* tok;
  const float* w;
  const float* b2;
  float* out;
  int64_t ldo;
  int parts = 2;
};
inline int64_t pair_rows(int64_t n, int parts = 2) { return (n + 15) / 16 * 16 * parts; }
bool bf16_gemm_nt_pairs(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t ldw, const PairCombine& pc,
                        int64_t N, int64_t K);
void amx_pack_x(const uint16_t* x, int64_t ldx, const int64_t* xrows, int64_t M, int64_t K, uint16_t* xa);
bool bf16_gemm_nt_amx(const uint16_t* xa, const uint16_t* w, int64_t ldw, float* out, int64_t ldo, int64_t M,
                      int64_t N, int64_t K);

}  // namespace cpu
}  // namespace leankern
