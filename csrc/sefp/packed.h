// The single-width packed copy of an SEFP weight (python/leankern/sefp/packed.py is the definition):
// each weight is one field of B = 1 + m bits, (s << m) | q' (sign above the m-bit magnitude), the fields of a row
// bit-packed little-endian in K order: field k occupies bits [k B, k B + B) of the row's bytes (bit i of byte j is
// bit 8 j + i). A row holds Kp fields (K rounded up to the block size, zero padded), so Kp B / 8 bytes; the
// exponents are the SEFPTensor's int8 [N, Kp / G].
#pragma once

#include <cstdint>

namespace leankern {
namespace sefp {

constexpr int kPackedMaxM = 7;   // B = 1 + m <= 8: a field never spans more than two bytes
constexpr int kPackedUnit = 128;  // weights per unit of the VBMI kernel: 4 words, two 64-weight halves

struct PackedW {
  const uint8_t* codes;  // [N, row_bytes]
  int64_t row_bytes;     // Kp * (1 + m) / 8
  const int8_t* exps;    // [N, nb]
  int64_t nb;            // blocks per row
  int gs;                // log2(block_size / 32)
  int m;                 // 1..7
  int64_t N, Kp;
  int decode_min_e = 128;  // as Planes::decode_min_e (kernels.h): the decode-once GEMV's bound on the blocks' E
};

// Width of one row of x as the VBMI kernel reads it: Kp rounded up to whole units.
inline int64_t packed_x_width(int64_t Kp) { return (Kp + kPackedUnit - 1) / kPackedUnit * kPackedUnit; }

// y[r * ldy + n] = sum_k x[r * ldx + k] w[n, k] (fp32 sums of exact bf16 products; bf16 subnormal x counts as zero)
// for r < R, n in [n0, n1); x bf16 bits in natural order, zero padded to packed_x_width(Kp). Needs
// AVX512-BF16 and AVX512-VBMI (packed_vbmi_supported()).
void gemv_packed_vbmi(const PackedW& W, const uint16_t* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                      int64_t ldy);
bool packed_vbmi_supported();
// Rows [n0, n1) as bf16 bits, scales applied, natural order: out[(n - n0) * ldo + k], k < packed_x_width(Kp) (zero
// past Kp). Exact only where every block's E is -128 (empty) or >= m - 127 (every nonzero weight a bf16 normal):
// the caller checks. Needs packed_vbmi_supported().
void decode_packed_bf16_vbmi(const PackedW& W, int64_t n0, int64_t n1, uint16_t* out, int64_t ldo);

// The AVX2 + FMA kernels (packed_gemv_avx2.cpp) for x of any dtype widened to fp32, where the VBMI ones do not run.
// They read x in their own order: inside every unit of kPackedAvx2Unit weights, position i holds element order[i]
// of the unit (packed_avx2_order(m, order), 32 entries); x rows are zero padded to Kp.
constexpr int kPackedAvx2Unit = 32;
bool packed_avx2_supported();  // AVX2 + FMA on the CPU and an active ISA of avx2 or above
void packed_avx2_order(int m, int16_t* order);
// y[r * ldy + n] = sum_k x[r * ldx + k] w[n, k] (x in the order above; fp32 products and sums) for r < R, n in
// [n0, n1).
void gemv_packed_avx2(const PackedW& W, const float* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                      int64_t ldy);
// Rows [n0, n1) as exact fp32 weights (the reference's dequantized values) in the order above: out[(n - n0) * ldo +
// k], k < Kp.
void decode_packed_avx2(const PackedW& W, int64_t n0, int64_t n1, float* out, int64_t ldo);
// Tuning hooks (leankern._C.sefp_set_packed_avx2_rows): the x rows up to which sefp_packed_linear's AVX2 path runs
// gemv_packed_avx2 (beyond: decode_packed_avx2 panels and torch's fp32 GEMM; 0, the default: 64 on the avx2 ISA, 32
// on the others; packed_avx2_gemv_rows() resolves it), and the x rows from which
// that GEMV decodes each weight once per K slab (below: again for every 4 x rows; default 5). Each returns the
// previous setting (a negative rows changes nothing).
int64_t set_packed_avx2_gemv_rows(int64_t rows);
int64_t packed_avx2_gemv_rows();
int64_t set_packed_avx2_decode_once_rows(int64_t rows);
int64_t packed_avx2_decode_once_rows();

}  // namespace sefp
}  // namespace leankern
