// Inner loops of the SEFP CPU ops (numerics and layout: python/leankern/sefp/ref.py), one table per
// ISA (scalar, AVX2, AVX-512), chosen at run time (common/cpu_features.h). The torch-facing ops
// (sefp_cpu.cpp) check arguments, split rows over threads and call these on one row range at a time.
//
// Two element orders of a K row:
//   natural:  element k at position k;
//   permuted: inside every chunk of 256 elements (8 plane words), element 8b + j at 32j + b
//             (b < 32, j < 8). It is the order the bit-plane transpose (planes_simd_impl.h) yields,
//             so x is permuted once per call instead of every weight once per row.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/bits.h"

namespace leankern {
namespace sefp {

enum Dtype : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

constexpr int kWord = 32;     // weights per plane word
constexpr int kChunkWords = 8;  // plane words per permuted chunk (one 256-bit load per plane)
// The GEMV kernels prefetch each present plane's next bytes into L1 this far ahead in the plane (rows follow each
// other in a plane). Why: a row's m + 1 planes are m + 1 far-apart streams, which the hardware prefetchers alone
// left at 47-79 % of read bandwidth on the 2-core Xeon (gemv_bf16_gfni, cold M = 1, 4096 x 4096, m = 2..8);
// prefetcht0 2 KB ahead: 58-88 % (1.08-1.31x faster; 512 B - 2 KB alike, 4 KB slower, prefetcht1 a little behind
// t0). The transposed AVX2 / AVX-512 kernels, compute-bound, gained 1.0-1.14x.
constexpr int64_t kPlanePrefetch = 2048;
constexpr int kChunk = kWord * kChunkWords;
constexpr int kMaxM = 16;       // ref.MAX_M
constexpr int kMaxPermM = 8;    // widths with a transposed (permuted-order) kernel: q fits a byte

// The first 1 + m planes of a stored weight (planes int32 [P, N, Kw], each plane contiguous).
struct Planes {
  const uint32_t* data;  // plane 0, row 0
  int64_t plane_stride;  // words between planes (any)
  int64_t N, Kw;         // rows, words per row
  const int8_t* exps;    // [N, nb] contiguous
  int64_t nb;            // blocks per row
  int gs;                // log2(block_size / 32): word w of a row is in block w >> gs
  int m;                 // mantissa planes read (1..16)
  // gemv_bf16 only: the smallest block exponent E (E = -128, an empty block, aside) whose weights it may decode to
  // bf16 and multiply as such (gemv_decoded); 128: none. Set by the caller from x (decode_min_exponent below).
  int decode_min_e = 128;
};

constexpr int kChunkBf16 = 512;  // weights per chunk of gemv_bf16 (16 words: one 64-byte load per plane)

// Width of a row of x as the permuted kernels read it: Kw rounded up to whole chunks.
inline int64_t permuted_width(int64_t Kw) { return (Kw + kChunkWords - 1) / kChunkWords * kChunk; }

// The permuted order of the transposed kernels at width m (<= kMaxPermM): position i of a chunk
// holds element order[i] of that chunk ([256]).
const int16_t* chunk_order(int m);

// The order of x that gemv_bf16 reads at width m: position i of a 512-weight chunk holds element order[i] of it.
const int16_t* chunk_order_bf16(int m);
inline int64_t bf16_width(int64_t Kw) { return (Kw + 15) / 16 * kChunkBf16; }

// [256] fp32 scales 2^(E - (m - 1)) indexed by E + 128 (E = -128, the empty block: 1.0, as
// the reference). Exact: every such power of two is an fp32 (subnormal below 2^-126).
const float* scale_table(int m);

// The bf16 bit pattern of an integer 0 <= q < 256 (exact: at most 8 significant bits), for gemv_bf16_gfni's tables.
constexpr uint16_t bf16_of_int(int q) {
  if (q == 0) return 0;
  int L = 7;
  while (!(q >> L)) --L;  // q = 1.f x 2^L, f = the 7 bits below the leading one
  return static_cast<uint16_t>(((127 + L) << 7) | ((q << (7 - L)) & 0x7f));
}

// f(std::integral_constant<int, m>{}) for a width m in 1..8 (a compile-time width for the kernels' templates).
template <class F>
inline void with_width8(int m, F&& f) {
  switch (m) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

struct SefpKernels {
  // Quantize rows [n0, n1) of w [N, K] (dtype dt, row stride ldw elements) into planes
  // (int32 [1 + m_max, N, Kw], plane p of row n at planes + p * plane_stride + n * Kw) and
  // exponents [N, nb]. Returns the first row in the range holding a NaN / Inf (its outputs are
  // then garbage), or -1.
  int64_t (*quantize_rows)(const void* w, int dt, int64_t ldw, int64_t K, int m_max, int gs, int64_t Kw,
                           uint32_t* planes, int64_t plane_stride, int8_t* exps, int64_t n0, int64_t n1);
  // Row n of the weight at width P.m, exact fp32, natural order: out [Kw * 32].
  void (*decode_row)(const Planes& P, int64_t n, float* out);
  // y[r * ldy + n] = sum_k x[r * ldx + k] w[n, k] (fp32) for r < R, n in [n0, n1); x natural, fp32,
  // zero padded to Kw * 32.
  void (*gemv_natural)(const Planes& P, const float* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                       int64_t ldy);
  // As gemv_natural with x permuted (width permuted_width(Kw), zero padded); P.m <= kMaxPermM.
  // Null in the scalar table.
  void (*gemv_permuted)(const Planes& P, const float* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                        int64_t ldy);
  // Rows [n0, n1) exact fp32 in permuted order: out[(n - n0) * ldo + i], i < permuted_width(Kw);
  // P.m <= kMaxPermM. Null in the scalar table.
  void (*decode_permuted)(const Planes& P, int64_t n0, int64_t n1, float* out, int64_t ldo);
  // avx512bf16 table on CPUs that also have GFNI and AVX512-VBMI only (null elsewhere; P.m <= 8;
  // gemv_bf16_gfni.cpp). x and the decoded rows are in chunk_order_bf16(m), zero padded to bf16_width(Kw):
  // y[r * ldy + n] = sum_k x[r * ldx + k] w[n, k] (fp32 sums of exact products) for r < R, n in [n0, n1); x bf16
  // bits. bf16 subnormal x counts as zero.
  void (*gemv_bf16)(const Planes& P, const uint16_t* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                    int64_t ldy);
  // Rows [n0, n1) as bf16 bits with the block scale in the exponent: out[(n - n0) * ldo + i], i < bf16_width(Kw).
  // Exact only where every block's E is -128 (empty) or >= m - 127 (the smallest nonzero weight 2^(E - (m - 1))
  // is a bf16 normal): the caller checks.
  void (*decode_bf16)(const Planes& P, int64_t n0, int64_t n1, uint16_t* out, int64_t ldo);
};

// x rows from which gemv_bf16 decodes 4 weight rows once to bf16 and multiplies them by every x row (a register
// tile), instead of re-decoding the planes for every 4 x rows. Tuning hook (leankern._C.sefp_set_decoded_rows):
// returns the previous value.
// packed: the same for sefp_packed_linear's VBMI GEMV (default 16: its row groups decode once per 8 x rows, which
// stayed faster at 8-12 rows).
int64_t set_decoded_rows(int64_t rows, bool packed = false);
int64_t decoded_rows(bool packed = false);
// x rows per pass of a decode-once GEMV (16 KB of sums on the stack): 64 took 0.71-0.98x the time of 32 at M = 40-64
// (planes, 4096 x 4096 and 4096 x 14336, m = 8 / 2, Zen 4, three pairs of alternating processes): one decode, not two.
constexpr int64_t kDecodedMaxRows = 64;

// x_field: the smallest normal exponent field of bf16 x (common/bits.h, bf16_min_normal_exponent_field: zero and
// subnormal x, flushed as documented, and Inf / NaN do not count; 255: none), read once per call by the ops.
// Planes::decode_min_e / PackedW::decode_min_e for that x at width m: the decode-once GEMVs multiply weights decoded
// with their block scale, q 2^(E - (m - 1)), by x in vdpbf16ps, which flushes fp32 subnormal results. Every partial
// sum of a block is a multiple of 2^(E - (m - 1)) 2^(ex - 7) (ex = x_field - 127; bf16 keeps 8 significant bits), so
// none falls below 2^-126 when E >= m - 120 - ex; and the decoded weights are bf16 normals (exact) when
// E >= m - 127. The bf16 panels ask the same of every block.
inline int decode_min_exponent(int x_field, int m) {
  return x_field == 255 ? m - 127 : std::max(m - 127, m - 120 - (x_field - 127));
}
// Whether the bf16 GEMVs (gemv_bf16, the packed copies' VBMI GEMV: vdpbf16ps over unscaled codes q < 2^8 and bf16
// x, the block scale applied to the fp32 sums) may take this x: every product and partial sum is a multiple of
// 2^(ex - 7), so none falls below 2^-126, where vdpbf16ps flushes, for x down to 2^-119. Smaller x takes the fp32
// kernels.
inline bool bf16_gemv_takes(int x_field) { return x_field == 255 || x_field - 127 >= -119; }
// Whether every exponent e[0 .. n) is -128 (an empty block) or >= lo (AVX-512; gemv_bf16_gfni.cpp).
bool blocks_decode_exact(const int8_t* e, int64_t n, int lo);
// bf16 x rows from which sefp_linear (no bias, a GFNI + VBMI avx512bf16 CPU without AMX) decodes bf16 panels for
// torch's bf16 GEMM instead of running gemv_bf16. Tuning hook (leankern._C.sefp_set_panel_rows): returns the
// previous value (default 80).
// packed: the same for sefp_packed_linear (default 40).
int64_t set_panel_rows(int64_t rows, bool packed = false);
int64_t panel_rows(bool packed = false);
// x rows from which sefp_linear's fp32 kernels (every x the bf16 kernels above do not take) decode fp32 panels for
// torch's fp32 GEMM instead of running their GEMV (gemv_permuted / gemv_natural). Tuning hook
// (leankern._C.sefp_set_panel_rows_f32): returns the previous setting (0, the default: 65 on the avx2 ISA, else 32;
// a negative rows changes nothing; row_limits.h).
int64_t set_panel_rows_f32(int64_t rows);

const SefpKernels& scalar_kernels();
const SefpKernels& avx2_kernels();
const SefpKernels& avx512_kernels();
const SefpKernels& avx512bf16_kernels();
const SefpKernels& active_kernels();  // the table of the active ISA (leankern._C.set_cpu_isa / LEANKERN_CPU_ISA)

}  // namespace sefp
}  // namespace leankern
