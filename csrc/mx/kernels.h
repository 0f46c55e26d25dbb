// The MX family's kernel table: the ISA-neutral interface between the torch-facing ops
// (mx_cpu.cpp, hadamard_cpu.cpp) and the per-ISA kernels (mx_avx512.cpp, mx_avx2.cpp, and the
// portable scalar_kernels.h; the tables and the active-ISA choice live in kernels.cpp).
// Plain pointers only: the kernel translation units include no torch header.
#pragma once

#include <stdint.h>

namespace leankern {
namespace mx {

// Quantize blocks [b0, b1) of a flat, contiguous x (K % block_size == 0, so blocks never span rows).
struct QuantArgs {
  const void* x;     // [n_elems] fp32 / bf16 / fp16 (InDtype)
  int dtype;         // InDtype
  int block_size;    // power of two in [2, 1024]
  int fmt;           // index into kFormats
  int scale_mode;    // ScaleMode (formats.h): MX rceil / floor; NV rceil (x / d) / reciprocal (x * r)
  const int32_t* rand;  // [n_elems] random words (stochastic rounding) or nullptr (RNE)
  float g;           // NV tensor scale
  int amax_parked;   // NV: nv_amax left each block's amax / max_elem in its first 4 code bytes
  uint8_t* codes;    // [n_elems] or [n_elems / 2] for 4-bit elements
  uint8_t* scales;   // [n_blocks]
};

struct DequantArgs {
  const uint8_t* codes;   // [n_elems] (or [n_elems / 2] packed)
  const uint8_t* scales;  // [n_blocks] E8M0 bytes (MX) or E4M3 bytes (NV)
  float g;                // NV tensor scale
  int block_size;
  int fmt;
  int out_dtype;  // InDtype numbering: 0 fp32, 1 bf16, 2 fp16
  void* out;      // [n_elems]
};

struct HadamardArgs {
  const void* x;  // [n_chunks * chunk] fp32 / bf16 / fp16
  int dtype;      // InDtype; the output has the same dtype
  int chunk;      // power of two, 2..32768
  float scale;
  const float* signs;  // [chunk] or nullptr
  void* out;
  float* work;  // scratch, >= chunk floats (per calling thread)
};

// y[:, n0:n1] of the block-quantized linear y = x_hat @ W_hat^T (+ bias) for weight rows [n0, n1)
// (linear_cpu.cpp prepares x_hat in fp32; the kernels decode W one block at a time, in registers
// or into a small per-thread panel, never the whole weight). fp32 accumulation, any order.
struct LinearArgs {
  const float* x;         // [M, K] fp32 activations (x_hat), row-major
  const float* xs;        // [M, K] the same in 4-bit element order (per 32 elements: the 16 even,
                          // then the 16 odd ones) or nullptr; see linear_wants_xs()
  int64_t M, K, N;
  const uint8_t* codes;   // [N, K] (or [N, K / 2] packed 4-bit)
  const uint8_t* scales;  // [N, K / block_size] E8M0 (MX) or E4M3 (NV) bytes
  float g;                // NV tensor (decode) scale
  int block_size;
  int fmt;
  const float* bias;  // [N] fp32 or nullptr
  int out_dtype;      // InDtype numbering: 0 fp32, 1 bf16, 2 fp16
  void* y;            // [M, N] out_dtype
};

// The SIMD linear kernels read a.xs (must be set) for a 4-bit weight format when K % 32 == 0 and
// block_size >= 16; otherwise a.x. The scalar kernel always reads a.x.
inline bool linear_wants_xs(int elem_bits, int64_t K, int block_size) {
  return elem_bits == 4 && K % 32 == 0 && block_size >= 16;
}

// y[:, 16 t0 : 16 t1] of the same product with the weight in the prepacked layout
// (python/leankern/mx/packed_layout.py): row tile t, block b at packed + (t * nb + b) * block_bytes,
// 16 scale bytes then the block's codes of 16 rows. One output row per 32-bit vector lane.
struct PackedLinearArgs {
  const float* x;  // [M, K] fp32 activations (x_hat), row-major
  int64_t M, K, N;
  const uint8_t* packed;  // [ceil(N / 16), K / block_size, block_bytes]
  int64_t block_bytes;    // 16 + 16 * (codes bytes of one row's block)
  float g;                // NV tensor (decode) scale, applied to the sums (epilogue)
  int block_size;
  int fmt;
  const float* bias;  // [N] fp32 or nullptr
  int out_dtype;      // InDtype numbering
  void* y;            // [M, N] out_dtype
  // The same x as bf16 where it is exact in bf16, else nullptr; the bf16 dot-product kernel reads
  // it instead of x, in row groups: [ceil(M / 24), K / 2, 24] int32, element (g, q, i) = the bf16
  // pair (x[24 g + i, 2q], x[24 g + i, 2q + 1]) (rows past M: zeros).
  const int32_t* xh;
  // Dual mode with an int8-able act format (linear_packed_int8.h), else nullptr: x's element
  // values * 2^D as signed bytes in the same row groups, 4 per int32 ([ceil(M / 24), K / 4, 24]:
  // (g, q, i) = x[24 g + i, 4q .. 4q + 3]), and per block and row -128 * the block's byte sum
  // (xcorr) and its factor 2^(s - 127 - D) (xfac), both [ceil(M / 24), K / block_size, 24].
  const int32_t* xq;
  const int32_t* xcorr;
  const float* xfac;
  // bf16 x (or an MX dual x_hat) row-major as pairs, [M, K / 2] int32, for the few-rows bf16 kernel
  // (linear_packed_bf16_small.h); else nullptr.
  const int32_t* xb = nullptr;
  // The same x for 4-bit weights with block_size % 8 == 0, pairs regrouped by eights ([M, K / 2]
  // int32): int32 4 g + j = the bf16 pair (x[m, 8 g + j], x[m, 8 g + 4 + j]), j = 0..3, the order
  // in which the few-rows kernel's VBMI decoder (quad_pairs4) yields the weights; else nullptr.
  const int32_t* xb8 = nullptr;
  // bf16 x (or an MX dual x_hat) as AMX A tiles for the AMX prefill kernel (linear_packed_amx.h):
  // [ceil(M / 16), K / 32, 16, 32] bf16, element (g, s, r, e) = x[16 g + r, 32 s + e] (rows past M
  // zero); else nullptr. That kernel also reads xb (rows < M, for tiles it cannot fold).
  const int32_t* xa = nullptr;
  // The A tiles of xb8's order ([ceil(M / 16), K / 32, 16, 32] bf16: element (g, s, r, e) = the e-th value of xb8's
  // row 16 g + r from 32 s on) for the AMX few-rows kernel's 4-bit MX decoder (M <= 32, block_size % 8 == 0); else
  // nullptr. Where it is set, xa is not.
  const int32_t* xa8 = nullptr;
  // Dual INT x INT below kInt8SmallRows rows (with xq / xcorr / xfac): x's quads in the few-rows int8 kernel's order,
  // [M, K / 4] int32 row-major: 8-bit weights, quad j = x[m, 4j .. 4j + 3]; 4-bit weights, quads 2j and 2j + 1 =
  // x[m, 8j + 2i] and x[m, 8j + 2i + 1], i = 0..3 (the even and the odd elements of each 8); else nullptr.
  const int32_t* xqs = nullptr;
  // Folded kernels (block scales inside the bf16 weights: the prefill and AMX kernels): the smallest MX scale byte a
  // block may have to fold, or for NV 0 (fold) / 256 (never). From x (fold_min_scale): below it a product of a
  // folded weight and x could fall under 2^-126, where the dot-product instructions flush it to zero.
  int fold_min_s = 0;
};
// Rows of x up to which dual INT x INT takes the int8 kernel's few-rows form (linear_packed_int8.h), and up to which
// it takes them where AMX would too. Why 3 there: on the 2-core Xeon, cold, against the AMX few-rows form (MXINT4,
// MXINT8; 4096 x 4096, 14336 x 4096; two runs): M = 2 0.98-1.29x, M = 3 1.03-1.10x faster, M = 4 0.94-1.07x.
constexpr int64_t kInt8SmallRows = 4, kInt8SmallRowsOverAmx = 3;
// Rows of x up to which the AMX kernel takes its few-rows form (linear_packed_amx.h: accumulators in tile registers
// over all of K) and the op may set PackedLinearArgs::xa8.
constexpr int64_t kAmxSmallRows = 32;
constexpr int kBf16RowGroup = 24;

using QuantizeFn = void (*)(const QuantArgs&, int64_t b0, int64_t b1);
using DequantizeFn = void (*)(const DequantArgs&, int64_t b0, int64_t b1);
using HadamardFn = void (*)(const HadamardArgs&, int64_t c0, int64_t c1);
// NV tensor amax pass over blocks [b0, b1): returns the max |x| bits over finite elements. SIMD
// kernels also park each block's amax / max_elem in its first 4 code bytes (4-bit codes:
// bs/2 >= 4) where their own quantize pass, run next over the same block ranges, reads it back
// instead of reducing x again (then q.amax_parked = 1).
using AmaxFn = uint32_t (*)(const QuantArgs& q, int64_t b0, int64_t b1);
using LinearFn = void (*)(const LinearArgs& a, int64_t n0, int64_t n1);
// Row tiles [t0, t1); returns false (computing nothing) where the ISA has no kernel for the
// format, and the op falls back to unpacking tiles for `linear`.
using PackedLinearFn = bool (*)(const PackedLinearArgs& a, int64_t t0, int64_t t1);

struct KernelTable {
  QuantizeFn quantize;  // RNE only; stochastic rounding always takes the portable path
  DequantizeFn dequantize;
  HadamardFn hadamard;
  AmaxFn nv_amax;
  LinearFn linear;  // weight rows [n0, n1): every row of x, all of K
  PackedLinearFn linear_packed;  // nullptr: no packed kernel for this ISA
  // The same product from a.xh with bf16 dot products (AVX512-BF16): each row tile decoded to bf16
  // once, for every row of x. nullptr below the avx512bf16 ISA.
  PackedLinearFn linear_packed_bf16 = nullptr;
  // Dual INT x INT from a.xq with int8 dot products (AVX512-VNNI); false for a weight format it
  // lacks. nullptr below the avx512bf16 ISA.
  PackedLinearFn linear_packed_int8 = nullptr;
  // The same product from a.xb for few rows of x (decode): tiles decoded to bf16 pairs in registers,
  // one vdpbf16ps per 32 weights and row. nullptr below the avx512bf16 ISA.
  PackedLinearFn linear_packed_bf16_small = nullptr;
  // The prefill product (linear_packed_bf16's) from a.xa on AMX tiles; false where a.K % 32 != 0.
  // Set in the avx512bf16 table; the op calls it only where cpu::amx_enabled().
  PackedLinearFn linear_packed_amx = nullptr;
};

#if defined(__x86_64__) || defined(_M_X64)
// The SIMD linear kernels (linear_avx512.cpp / linear_avx2.cpp; plain entry points, the
// ISA-specific code behind them carries the target attributes).
namespace avx512 {
void linear(const LinearArgs& a, int64_t n0, int64_t n1);
bool linear_packed(const PackedLinearArgs& a, int64_t t0, int64_t t1);
bool linear_packed_bf16(const PackedLinearArgs& a, int64_t t0, int64_t t1);
bool linear_packed_int8(const PackedLinearArgs& a, int64_t t0, int64_t t1);
bool linear_packed_bf16_small(const PackedLinearArgs& a, int64_t t0, int64_t t1);
bool linear_packed_amx(const PackedLinearArgs& a, int64_t t0, int64_t t1);
}
namespace avx2 {
void linear(const LinearArgs& a, int64_t n0, int64_t n1);
bool linear_packed(const PackedLinearArgs& a, int64_t t0, int64_t t1);
}
#endif

// Per-ISA tables (nullptr members never happen; a table for an ISA not compiled in is absent).
const KernelTable& scalar_kernels();
#if defined(__x86_64__) || defined(_M_X64)
const KernelTable& avx2_kernels();
const KernelTable& avx512_kernels();
const KernelTable& avx512bf16_kernels();  // avx512's, plus linear_packed_bf16 / _int8 / _bf16_small
#endif
// Table of the active ISA (common/cpu_features.h).
const KernelTable& active_kernels();

// Whether the few-rows bf16 kernel may take its AVX512-VBMI decoders (4-bit, FP8, FP6, MXINT6; where the CPU
// has VBMI). On by default; tests turn it off to run the other decoder on the same CPU.
bool vbmi_decoder_enabled();
void set_vbmi_decoder_enabled(bool on);
// Exponent of the finest step of an element format's values: every finite value is a multiple of 2^grid (E2M1:
// -1, E4M3: -9, INT: 0).
int elem_grid_exp(int elem);
// What the bf16 dot-product kernels (vdpbf16ps and AMX tiles flush subnormal inputs and results to zero) may do with
// bf16 x whose smallest normal exponent field is x_field (common/bits.h, bf16_min_normal_exponent_field; subnormal
// x are flushed, as documented) and weights of format fmt:
//  * bf16_products_exact: no product of x with an unscaled decoded weight (value * 2^D, any D the kernels use) and
//    no partial sum of them falls below 2^-126: all are multiples of 2^(grid + D + ex - 7) (ex = x_field - 127; bf16
//    keeps 8 significant bits). Else the op takes the fp32 kernels (from x ~2^-102 down for E4M3 to ~2^-118 for INT).
//  * fold_min_scale: PackedLinearArgs::fold_min_s, the same for folded weights: value * 2^(s - 127), multiples of
//    2^(grid + s - 127) (MX); value * E4M3 scale, multiples of 2^(grid - 9) (NV).
bool bf16_products_exact(int fmt, int x_field);
int fold_min_scale(int fmt, int x_field);
// Whether the few-rows kernel multiplies with fp32 FMAs (linear_packed_fma_small.h: 4-bit and 6 / 8-bit
// weights) instead of vdpbf16ps. On by default where the CPU has AMX (Intel cores whose vdpbf16ps has half
// the FMA rate), off elsewhere; LEANKERN_MX_FMA=0 / 1 (read at the first use) overrides that; tests set it
// to run both kernels on one CPU. The op then passes fp32 x.
bool few_rows_fma_enabled();
void set_few_rows_fma_enabled(bool on);
// Whether that form takes weights of format `fmt` (kFormats index) with this block size here: 4-bit formats
// with block_size % 8 == 0 on CPUs with AVX512-VBMI, and every 6 / 8-bit format. (The op and the kernel both ask.)
bool few_rows_fma_takes(int fmt, int block_size);
// Whether the CPU has AVX512-VBMI (vpermb: the few-rows kernels' byte transpose).
bool cpu_has_vbmi();
// Dual INT x INT below kInt8SmallRows rows on the int8 kernel's few-rows form, for 4-bit (four) or 8-bit weights;
// otherwise the few-rows bf16 / FMA kernels on x_hat, as before it. Setting: 1 on, 0 off, -1 the CPU's default:
// 8-bit weights everywhere, 4-bit weights where the CPU has AMX (Intel, whose vdpbf16ps runs at half the rate of
// Zen 4's). Why: on 2-core Zen 4 the int8 form took MXINT4 / MXFP4 weights at M = 1-3 in 1.01-1.33x the time of the
// bf16 form (M = 4: 0.88-1.05x), MXINT8 in 0.78-1.02x; on the Xeon it was 1.00-1.58x faster for both, AMX on or
// off (docs/bench/mx_dual_few_rows_int8_zen4.txt, mx_dual_few_rows_int8_xeon.txt). A/B and test hook:
// leankern._C.mx_set_int8_few_rows. set_ returns the previous setting.
bool int8_few_rows_takes(bool four);
int set_int8_few_rows(int setting);

// Code bytes of one fast-path group of 16 blocks in 16-bit lanes with vpermb tables (AVX512-VBMI): E2M1
// (MXFP4 / NVFP4, quant_fp4_vbmi.cpp) and MX FP8 / FP6 on bf16 x (quant_fp8_vbmi.cpp). mx_simd_impl.h's
// quant_fast_group fills this after the scales (quant_range batches the groups); the codes are bit-identical
// to its own fast_codes_4bit / fast_codes_8bit.
struct VbmiGroup {
  const void* x;           // the quantize input (QuantArgs.x), dtype InDtype
  int dtype;
  uint8_t* codes;          // QuantArgs.codes
  int64_t b;               // first block of the group
  int block_size;          // >= 16
  const int32_t* factor;   // [16] fp32 bits per block: v = x * factor (MX 2^-e, NV r) or x / factor (divide)
  const int32_t* mx_e;     // [16] MX scale exponents, all >= vbmi_bf16_lowest_e, to take bf16 x on its bit
                           // pattern; or nullptr (E2M1 only: v from fp32)
  bool divide;             // NV exact division (scale_mode rceil)
  bool saturate;           // some v may exceed the element max (clamp)
  unsigned bad_blocks;     // bit j: block b + j is NaN / Inf (zero codes)
};
// A group's description plus the per-block arrays it points into (filled by quant_fast_group).
struct VbmiSlot {
  VbmiGroup group;
  alignas(64) int32_t factor[16];
  alignas(64) int32_t mx_e[16];
};
// The smallest MX scale exponent e whose blocks the VBMI kernels take on bf16 bits: v = x * 2^-e as x's pattern
// minus (e + K) << 7, K = 127 + emin - mbits - 1, needs e + K >= 1 so that bf16 subnormals saturate to 0.
constexpr int vbmi_bf16_lowest_e(int emin, int mbits) { return 1 - (127 + emin - mbits - 1); }
// Whether a VBMI code kernel takes elements `elem` from x of `dtype` here: AVX512-VBMI, block_size >= 16, not
// switched off; E2M1 any dtype, FP8 / FP6 bf16 x.
bool quantize_vbmi_takes(int elem, int dtype, int block_size);
// The codes of n groups (batched: the per-call cost is a fair share of a 256-element group's work).
void fp4_codes_vbmi(const VbmiSlot* slots, int n);
void fp8_codes_vbmi(int elem, const VbmiSlot* slots, int n);  // elem: kFp8E4M3 / E5M2, kFp6E2M3 / E3M2
// Test / A-B hook (leankern._C.mx_set_quantize_vbmi): on by default.
bool quantize_vbmi_enabled();
void set_quantize_vbmi_enabled(bool on);

}  // namespace mx
}  // namespace leankern
