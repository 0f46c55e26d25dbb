// CPU kernel of the public op leankern::mx_linear_packed (schema declared once, in Python:
// python/leankern/mx/ops.py): mx_linear with the weight in the prepacked layout
// (python/leankern/mx/packed_layout.py). The ISA's packed kernel (linear_packed_impl.h, built for
// AVX-512 and AVX2) where it has one; otherwise (the portable path, AVX2 without FMA) each thread
// unpacks its row tiles into row-major codes / scales and runs the ISA's row-major linear kernel.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <optional>
#include <vector>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LK_SPLIT_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#endif

#include "common/bf16_gemm.h"
#include "common/cpu_features.h"
#include "common/output_cache.h"
#include "common/parallel.h"
#include "common/torch_checks.h"
#include "mx/formats.h"
#include "mx/kernels.h"
#include "mx/linear_common.h"
#include "mx/mx_torch.h"

namespace leankern {
namespace mx {
namespace {

using cpu::parallel_chunks;
constexpr int64_t kTileRows = 16;
// Rows of x from which the prefill kernels (one decode of each tile into L2 for all rows: bf16, and
// int8 for dual INT x INT) beat the few-rows bf16 one (a decode in registers per pass of 8 rows;
// for dual, on x_hat); measured with bench/bench_mx.py on Zen 4.
constexpr int64_t kBf16PrefillMinRows = 32;
// Rows of x from which the AMX kernel beats the few-rows one where the CPU has AMX (there vdpbf16ps runs at half Zen
// 4's rate per cycle, and the few-rows FMA form's time grows ~0.14 ms per row of a 4096 x 4096 weight while AMX's is
// flat up to M = 16). Cold weights, 2-core Xeon, 4096 x 4096, AMX few-rows kernel (linear_packed_amx.h) / FMA form
// at M = 2: 0.88x for 4-bit MX, 0.87x INT8 / INT6; FP8 / FP6 1.10-1.18x at 2, 0.89-0.99x at 4; NV (E4M3 scales: a
// fp32 multiply per weight in the AMX decode) 1.68x at 2, 1.19x at 4, 0.76x at 8.
int64_t amx_min_rows(int f) {
  const FormatSpec& spec = kFormats[f];
  if (spec.is_nv) return 8;
  const ElemSpec& e = elem_spec(spec.elem);
  return e.bits == 4 || e.is_int ? 2 : 4;
}

int64_t code_bytes_per_row_block(int f, int64_t block_size) {
  return elem_spec(kFormats[f].elem).bits == 4 ? block_size / 2 : block_size;
}

// Same checks, order and messages as python/leankern/mx/ops.py _check_linear_packed (+ the NV
// tensor scale's value). Returns the weight format; sets *K and *act (-1: none).
int check_packed_args(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& global_scale,
                      c10::string_view fmt, int64_t block_size, int64_t N, const std::optional<at::Tensor>& bias,
                      std::optional<c10::string_view> act_fmt, int64_t* K, int* act) {
  check_float_dtype("x", x);
  checks::check_min_dim("x", x, 1);
  const int f = check_format(fmt);
  const FormatSpec& spec = kFormats[f];
  checks::check_power_of_two("block_size", block_size, kMinBlockSize, kMaxBlockSize);
  checks::check_dtype("packed", packed, {at::kByte});
  checks::check_device("packed", packed, x.device(), "x");
  checks::check_dtype("global_scale", global_scale, {at::kFloat});
  checks::check_device("global_scale", global_scale, x.device(), "x");
  checks::check_shape("global_scale", global_scale, {});
  TORCH_CHECK_VALUE(N >= 0, "N: expected >= 0, got ", N);
  TORCH_CHECK_VALUE(packed.dim() == 3, "packed: expected a 3-D [ceil(N / 16), K / block_size, bytes] buffer, got shape ",
                    checks::py_repr(packed.sizes()));
  const int64_t nb = packed.size(1);
  checks::check_shape("packed", packed,
                      {(N + kTileRows - 1) / kTileRows, nb, kTileRows + kTileRows * code_bytes_per_row_block(f, block_size)});
  *K = nb * block_size;
  TORCH_CHECK_VALUE(x.size(-1) == *K, "x.shape[-1]: expected ", *K, " (the in_features of the weight), got ",
                    x.size(-1));
  if (bias.has_value()) {
    checks::check_dtype("bias", *bias, {x.scalar_type(), at::kFloat});
    checks::check_device("bias", *bias, x.device(), "x");
    checks::check_shape("bias", *bias, {N});
  }
  *act = act_fmt.has_value() ? check_format_named("act_fmt", *act_fmt) : -1;
  if (spec.is_nv) check_global_scale_value(*global_scale.data_ptr<float>());  // MX carries 1.0, ignored
  return f;
}

// D of the int8 kernel (linear_packed_int8.h) for an MX format whose element values * 2^D are
// integers in [-128, 127] (INT8, INT4: 0; E2M1: 1), or -1.
int int8_shift(int f) {
  if (kFormats[f].is_nv) return -1;
  const int e = kFormats[f].elem;
  return e == kInt8 || e == kInt4 ? 0 : e == kFp4E2M1 ? 1 : -1;
}

// [M, C] of 4-byte elements -> the row groups of kernels.h: [ceil(M / 24), C, 24], rows past M zero.
// (A transpose of 4-byte elements: torch's strided copy of 2-byte ones is several times slower.)
at::Tensor row_groups(const at::Tensor& t) {
  const int64_t M = t.size(0), C = t.size(1), G = (M + kBf16RowGroup - 1) / kBf16RowGroup;
  return at::constant_pad_nd(t, {0, 0, 0, G * kBf16RowGroup - M}).view({G, kBf16RowGroup, C}).transpose(1, 2).contiguous();
}

// x in the int8 kernel's layout (PackedLinearArgs::xq / xcorr / xfac), quantized to `act` (RCEIL).
struct Int8Act {
  at::Tensor q, corr, fac;
};
Int8Act int8_act(const at::Tensor& x2, int act, int64_t block_size, const KernelTable& kern, int64_t M, int64_t K) {
  const ActCodes c = quantize_act(x2, act, block_size, kern);
  const int D = int8_shift(act), nb = (int)(K / block_size);
  at::Tensor vals;  // [M, K] int8: element value * 2^D
  if (elem_spec(kFormats[act].elem).bits == 8) {
    vals = c.codes.view(at::kChar).view({M, K});  // INT8 codes are the values (D = 0)
  } else {
    int8_t lut[16];
    for (uint32_t n = 0; n < 16; ++n)
      lut[n] = (int8_t)(u2f(decode_code_bits(n, elem_params(kFormats[act].elem))) * (float)(1 << D));
    vals = at::empty({M, K}, x2.options().dtype(at::kChar));
    const uint8_t* codes = c.codes.data_ptr<uint8_t>();
    int8_t* v = vals.data_ptr<int8_t>();
    parallel_chunks(M * K / 2, 1 << 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {  // byte b: elements 2b (low nibble) and 2b + 1
        v[2 * b] = lut[codes[b] & 0xF];
        v[2 * b + 1] = lut[codes[b] >> 4];
      }
    });
  }
  // E8M0 factor 2^(s - 127) from the bits (byte 0: the subnormal 2^-127; 255: NaN), then * 2^-D
  const at::Tensor s = c.scales.view({M, nb}).to(at::kInt);
  const at::Tensor bits = at::where(s == 0, at::full({}, 0x00400000, s.options()),
                                    at::where(s == 255, at::full({}, 0x7fc00000, s.options()), s.bitwise_left_shift(23)));
  return {row_groups(vals.view(at::kInt)),
          row_groups(vals.view({M, nb, block_size}).sum(-1, false, at::kInt).mul_(-128)),
          row_groups(bits.view(at::kFloat).mul(1.0f / (float)(1 << D)))};
}

// Row tile t of the packed buffer -> row-major codes [16, row_bytes] and scales [16, nb].
void unpack_tile(const uint8_t* tile, int64_t cb, int64_t nb, int64_t block_bytes, uint8_t* codes, uint8_t* scales) {
  const int64_t row_bytes = nb * cb;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = tile + b * block_bytes;
    for (int64_t i = 0; i < kTileRows; ++i) scales[i * nb + b] = blk[i];
    for (int64_t q = 0; q < cb; ++q)
      for (int64_t i = 0; i < kTileRows; ++i) codes[i * row_bytes + b * cb + q] = blk[kTileRows + q * kTileRows + i];
  }
}

// [M, K] bf16 (contiguous) -> PackedLinearArgs::xa: [ceil(M / 16), K / 32, 16, 32], rows past M zero.
at::Tensor amx_tiles(const at::Tensor& xbf, int64_t M, int64_t K) {
  at::Tensor xa = cpu::empty_output({cpu::amx_x_tiles_elems(M, K)}, xbf.options());  // (scratch, as quantize_act's)
  cpu::amx_pack_x(reinterpret_cast<const uint16_t*>(xbf.data_ptr()), K, nullptr, M, K,
                  reinterpret_cast<uint16_t*>(xa.data_ptr()));
  return xa;
}

// bf16 x [M, K] (K % 32 == 0) -> PackedLinearArgs::xa8: A tiles of xb8's order, rows past M zero, in one pass (one
// vpermw per 32 values; where it is called the CPU has AMX, so AVX512-BW). Why not pairs_by_eights, then amx_tiles:
// the two scalar passes cost ~20 us per call at M = 16, K = 4096 (4-7% of the product).
// Value e of each 32 <- x's value 8 (e / 8) + (e % 8) / 2 + 4 (e % 2): per 8 values (x0, x4), (x1, x5), ...
inline int eights_source(int e) { return 8 * (e / 8) + (e % 8) / 2 + 4 * (e % 2); }
#if defined(__x86_64__) || defined(_M_X64)
__attribute__((target("avx512f,avx512bw"))) void amx_tiles_eights(const uint16_t* x, int64_t M, int64_t K, uint16_t* xa) {
  alignas(64) uint16_t order[32];
  for (int e = 0; e < 32; ++e) order[e] = (uint16_t)eights_source(e);
  const __m512i idx = _mm512_load_si512(order);
  const int64_t G = (M + 15) / 16, S = K / 32;
  for (int64_t g = 0; g < G; ++g)
    for (int r = 0; r < 16; ++r) {
      const int64_t m = g * 16 + r;
      for (int64_t st = 0; st < S; ++st) {
        const __m512i v = m < M ? _mm512_permutexvar_epi16(idx, _mm512_loadu_si512(x + m * K + st * 32)) : _mm512_setzero_si512();
        _mm512_storeu_si512(xa + ((g * S + st) * 16 + r) * 32, v);
      }
    }
}
#else
void amx_tiles_eights(const uint16_t* x, int64_t M, int64_t K, uint16_t* xa) {  // (no AMX here: the same, portably)
  const int64_t G = (M + 15) / 16, S = K / 32;
  for (int64_t g = 0; g < G; ++g)
    for (int r = 0; r < 16; ++r)
      for (int64_t st = 0; st < S; ++st)
        for (int e = 0; e < 32; ++e)
          xa[((g * S + st) * 16 + r) * 32 + e] = g * 16 + r < M ? x[(g * 16 + r) * K + st * 32 + eights_source(e)] : 0;
}
#endif

// n bf16 values (n % 8 == 0) -> PackedLinearArgs::xb8's pairs: per 8 values, (x0, x4), (x1, x5), (x2, x6), (x3, x7).
void pairs_by_eights(const uint16_t* x, int64_t n, uint32_t* out) {
  for (int64_t i = 0; i < n; i += 8)
    for (int j = 0; j < 4; ++j)
      out[i / 2 + j] = (uint32_t)x[i + eights_source(2 * j)] | (uint32_t)x[i + eights_source(2 * j + 1)] << 16;
}

// x quantized to `act` (RCEIL) for the int8 kernel's few-rows form (M <= kInt8SmallRows): q = PackedLinearArgs::xqs
// (its order: [M, K / 4] int32; `four`, 4-bit weights: quads 2j, 2j + 1 = the even and the odd elements of
// x[m, 8j .. 8j + 7]), corr / fac as int8_act's (one row group; rows past M zero). Plain loops over M * K values:
// int8_act's torch ops cost ~50 us of fixed time at M = 1, as much as a 1024 x 4096 GEMV.
Int8Act int8_small_act(const at::Tensor& x2, int act, int64_t block_size, const KernelTable& kern, int64_t M,
                       int64_t K, bool four) {
  const ActCodes c = quantize_act(x2, act, block_size, kern);
  const int D = int8_shift(act);
  const int64_t nb = K / block_size;
  const bool eight = elem_spec(kFormats[act].elem).bits == 8;
  int8_t lut[16];
  for (uint32_t n = 0; n < 16; ++n)
    lut[n] = eight ? 0 : (int8_t)(u2f(decode_code_bits(n, elem_params(kFormats[act].elem))) * (float)(1 << D));
  const uint8_t* codes = c.codes.data_ptr<uint8_t>();
  const uint8_t* sc = c.scales.data_ptr<uint8_t>();
  const at::TensorOptions opts = x2.options();
  Int8Act r{at::empty({M, K / 4}, opts.dtype(at::kInt)), at::zeros({nb, kBf16RowGroup}, opts.dtype(at::kInt)),
            at::zeros({nb, kBf16RowGroup}, opts.dtype(at::kFloat))};
  int8_t* q = reinterpret_cast<int8_t*>(r.q.data_ptr<int32_t>());
  int32_t* corr = r.corr.data_ptr<int32_t>();
  float* fac = r.fac.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    auto val = [&](int64_t k) -> int8_t {  // x[m, k] * 2^-scale * 2^D, an integer in [-128, 127]
      const int64_t i = m * K + k;
      return eight ? (int8_t)codes[i] : lut[(codes[i / 2] >> (4 * (i % 2))) & 0xF];
    };
    int8_t* d = q + m * K;
    for (int64_t k = 0; k < K; ++k) d[k] = four ? val(k / 8 * 8 + 2 * (k % 4) + (k % 8) / 4) : val(k);
    for (int64_t b = 0; b < nb; ++b) {
      int32_t sum = 0;
      for (int64_t k = b * block_size; k < (b + 1) * block_size; ++k) sum += val(k);
      corr[b * kBf16RowGroup + m] = -128 * sum;
      // E8M0 factor 2^(s - 127) from the bits (byte 0: the subnormal 2^-127; 255: NaN), then * 2^-D
      const uint32_t s = sc[m * nb + b], bits = s == 0 ? 0x00400000u : s == 255 ? 0x7fc00000u : s << 23;
      fac[b * kBf16RowGroup + m] = u2f(bits) / (float)(1 << D);
    }
  }
  return r;
}

// y [M, N] (its dtype: the output's) = x2 [M, K] (contiguous) @ W_hat^T (+ bias), checked arguments; returns y.
// How packed_linear_run treats x: kXChecked, bf16 x the dot-product kernels would flush (bf16_products_exact) goes
// to the fp32 kernels instead (the whole call again with kXFp32); kXParts, split_linear's bf16 parts, whose
// flushes its bound allows.
enum XMode { kXChecked, kXParts, kXFp32 };

at::Tensor packed_linear_run(const at::Tensor& x2, int64_t M, int64_t K, int f, int act, const at::Tensor& packed_in,
                             const at::Tensor& global_scale, int64_t block_size, int64_t N,
                             const std::optional<at::Tensor>& bias, at::Tensor y, XMode xmode = kXChecked) {
  const KernelTable& kern = active_kernels();
  const at::Tensor packed = packed_in.contiguous();
  const at::Tensor bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const int64_t nb = K / block_size, T = (N + kTileRows - 1) / kTileRows;
  const int64_t block_bytes = packed.size(2);
  const float g = *global_scale.data_ptr<float>();

  // x is exact in bf16 for bf16 x, or an MX x_hat (element values of <= 8 significant bits times a
  // power of two); NV x_hat (times the fp32 tensor scale) and fp32 / fp16 x are not: no kernel rounds x.
  const bool x_is_bf16 = xmode != kXFp32 && (act >= 0 ? !kFormats[act].is_nv : x2.scalar_type() == at::kBFloat16);
  const bool prefill = M >= kBf16PrefillMinRows;
  // AMX tiles (linear_packed_amx.h) from amx_min_rows rows where the CPU has them, dual INT x INT
  // included from 4 rows: bf16 tiles on x_hat beat the int8 VNNI prefill kernel (AMX int8 steps over 64 elements
  // of K, two 32-element blocks with their own scales, so it cannot rescale per block).
  const bool amx_takes = kern.linear_packed_amx && M >= amx_min_rows(f) && x_is_bf16 && K % 32 == 0 && cpu::amx_enabled();
  // int8 dot products (avx512bf16 = + VNNI): dual INT x INT where both formats are int8-able
  const bool int8_pair = kern.linear_packed_int8 && act >= 0 && int8_shift(f) >= 0 && int8_shift(act) >= 0;
  // up to kInt8SmallRows rows its few-rows form (VBMI's byte transpose; 4-bit weights in whole 8-element groups),
  // up to kInt8SmallRowsOverAmx also where AMX would take them
  const bool four = elem_spec(kFormats[f].elem).bits == 4;
  const bool int8_small = int8_pair && M <= (amx_takes ? kInt8SmallRowsOverAmx : kInt8SmallRows) &&
                          block_size % (four ? 8 : 4) == 0 && cpu_has_vbmi() && int8_few_rows_takes(four);
  const bool amx = amx_takes && !int8_small;
  Int8Act xi;
  if (int8_small) xi = int8_small_act(x2, act, block_size, kern, M, K, four);
  else if (!amx && int8_pair && prefill && block_size % 4 == 0) xi = int8_act(x2, act, block_size, kern, M, K);
  // bf16 dot products (avx512bf16) where x is exact in bf16: from kBf16PrefillMinRows rows of x on the
  // prefill kernel (row groups), below it the few-rows kernel (x as it is); fp32 kernel otherwise.
  const bool bf16_dot = !amx && kern.linear_packed_bf16 && !xi.q.defined() && prefill && x_is_bf16;
  const bool bf16_small = kern.linear_packed_bf16_small && !xi.q.defined() && !prefill && x_is_bf16;
  // fp32 / fp16 x (or an NV dual x_hat) below the prefill rows: the few-rows kernel's FMA form where it is on
  // and takes the format (linear_packed_fma_small.h; x as the fp32 kernel reads it), else the fp32 kernel
  const bool fma_form = few_rows_fma_enabled() && few_rows_fma_takes(f, (int)block_size);
  const bool fma_small = kern.linear_packed_bf16_small && !x_is_bf16 && !prefill && fma_form;
  const bool bf16_x = bf16_dot || bf16_small || amx;
  // x_hat: straight to bf16 for those kernels (exact: an MX act format)
  const at::Tensor xq = act >= 0 && !xi.q.defined() ? fake_quantize(x2, act, block_size, kern, bf16_x ? kInBF16 : kInF32)
                                                    : at::Tensor();
  const at::Tensor xbf = bf16_x ? (act >= 0 ? xq : x2) : at::Tensor();
  // what the dot products may flush (kernels.h): x so small that products would fall below 2^-126 goes to the fp32
  // kernels, and the folded kernels fold only blocks whose products with this x stay normal
  const int x_field =
      bf16_x ? bf16_min_normal_exponent_field(reinterpret_cast<const uint16_t*>(xbf.data_ptr()), M * K) : 255;
  if (xmode == kXChecked && !bf16_products_exact(f, x_field))
    return packed_linear_run(x2, M, K, f, act, packed_in, global_scale, block_size, N, bias, y, kXFp32);
  at::Tensor xh;  // the row-group layout of kernels.h (PackedLinearArgs::xh)
  if (bf16_dot) xh = row_groups(xbf.view(at::kInt));  // pairs as int32 (K is even: block_size >= 2)
  // the AMX few-rows kernel's 4-bit MX decoder: x as A tiles in xb8's order (PackedLinearArgs::xa8)
  const bool amx_quad = amx && M <= kAmxSmallRows && elem_spec(kFormats[f].elem).bits == 4 && !kFormats[f].is_nv &&
                        block_size % 8 == 0;
  at::Tensor xb8;  // PackedLinearArgs::xb8: 4-bit weights, blocks of whole 8-element groups
  if (bf16_small && !amx && elem_spec(kFormats[f].elem).bits == 4 && block_size % 8 == 0) {
    xb8 = at::empty({M, K / 2}, x2.options().dtype(at::kInt));
    pairs_by_eights(reinterpret_cast<const uint16_t*>(xbf.data_ptr()), M * K, reinterpret_cast<uint32_t*>(xb8.data_ptr()));
  }
  // PackedLinearArgs::xa: x as AMX A tiles (16 rows x 32 elements), rows padded with zeros
  const at::Tensor xa = amx && !amx_quad ? amx_tiles(xbf, M, K) : at::Tensor();
  at::Tensor xa8;
  if (amx_quad) {
    xa8 = cpu::empty_output({cpu::amx_x_tiles_elems(M, K)}, xbf.options());
    amx_tiles_eights(reinterpret_cast<const uint16_t*>(xbf.data_ptr()), M, K, reinterpret_cast<uint16_t*>(xa8.data_ptr()));
  }
  // fp32 x for the few-rows kernel's FMA form (linear_packed_fma_small.h; exact: x is exact in bf16)
  // (not for AMX: its few-rows fallback for tiles that do not fold takes the vdpbf16ps form on xb)
  const at::Tensor xf = bf16_small && fma_form && !amx ? xbf.to(at::kFloat)
                        : bf16_x || xi.q.defined() ? at::Tensor()
                        : act >= 0                  ? xq
                        : x2.scalar_type() == at::kFloat ? x2 : x2.to(at::kFloat);
  const PackedLinearArgs pa{xf.defined() ? xf.data_ptr<float>() : nullptr,
                            M,
                            K,
                            N,
                            packed.data_ptr<uint8_t>(),
                            block_bytes,
                            g,
                            (int)block_size,
                            f,
                            bias_f.defined() ? bias_f.data_ptr<float>() : nullptr,
                            in_dtype_code(y.scalar_type()),
                            y.data_ptr(),
                            xh.defined() ? xh.data_ptr<int32_t>() : nullptr,
                            xi.q.defined() ? xi.q.data_ptr<int32_t>() : nullptr,
                            xi.q.defined() ? xi.corr.data_ptr<int32_t>() : nullptr,
                            xi.q.defined() ? xi.fac.data_ptr<float>() : nullptr,
                            bf16_small || amx ? xbf.view(at::kInt).data_ptr<int32_t>() : nullptr,
                            xb8.defined() ? xb8.data_ptr<int32_t>() : nullptr,
                            xa.defined() ? xa.view(at::kInt).data_ptr<int32_t>() : nullptr,
                            xa8.defined() ? xa8.view(at::kInt).data_ptr<int32_t>() : nullptr,
                            int8_small ? xi.q.data_ptr<int32_t>() : nullptr,
                            fold_min_scale(f, x_field)};
  // Tasks of >= ~64K multiply-adds (a tiny product does not wake the thread pool).
  const int64_t per_tile = std::max<int64_t>(1, M * K * kTileRows);
  const int64_t grain = std::max<int64_t>(1, (65536 + per_tile - 1) / per_tile);
  const int64_t stream_grain = cpu::streaming_chunk(T, grain);  // the few-rows kernels stream W once
  if (xi.q.defined()) {  // both formats int8-able: the kernel has the weight format
    parallel_chunks(T, int8_small ? stream_grain : 1, [&](int64_t t0, int64_t t1) { kern.linear_packed_int8(pa, t0, t1); });
    return y;
  }
  if (amx) {  // every format has the kernel (K % 32 == 0 checked above)
    // few rows: W streams once, 2 or 4 row tiles per pass (linear_packed_amx.h); else panels of 16 row tiles
    const int64_t amx_grain = M <= kAmxSmallRows ? (stream_grain + 3) / 4 * 4 : 16;
    parallel_chunks(T, amx_grain, [&](int64_t t0, int64_t t1) { kern.linear_packed_amx(pa, t0, t1); });
    return y;
  }
  if (bf16_dot) {  // every format has the kernel; a tile is decoded once for all M rows
    parallel_chunks(T, 1, [&](int64_t t0, int64_t t1) { kern.linear_packed_bf16(pa, t0, t1); });
    return y;
  }
  if (bf16_small || fma_small) {  // every format has the kernel
    parallel_chunks(T, stream_grain, [&](int64_t t0, int64_t t1) { kern.linear_packed_bf16_small(pa, t0, t1); });
    return y;
  }
  if (kern.linear_packed && kern.linear_packed(pa, 0, 0)) {  // the ISA has a packed kernel for the format
    parallel_chunks(T, prefill ? grain : stream_grain, [&](int64_t t0, int64_t t1) { kern.linear_packed(pa, t0, t1); });
    return y;
  }
  // Fallback: unpack each tile, then the row-major kernel (which reads fp32 x, and for 4-bit
  // weights in its SIMD forms the even / odd order xs).
  at::Tensor xs;
  if (&kern != &scalar_kernels() && linear_wants_xs(elem_spec(kFormats[f].elem).bits, K, (int)block_size))
    xs = xf.view({M, K / 32, 16, 2}).transpose(2, 3).contiguous();
  const int64_t row_bytes = nb * code_bytes_per_row_block(f, block_size);
  parallel_chunks(T, grain, [&](int64_t t0, int64_t t1) {
    std::vector<uint8_t> codes((size_t)(kTileRows * row_bytes)), scales((size_t)(kTileRows * nb));
    for (int64_t t = t0; t < t1; ++t) {
      unpack_tile(packed.data_ptr<uint8_t>() + t * nb * block_bytes, code_bytes_per_row_block(f, block_size), nb,
                  block_bytes, codes.data(), scales.data());
      const int64_t n0 = t * kTileRows, rows = std::min(kTileRows, N - n0);
      // the tile as a weight of `rows` rows whose output columns start at n0 (y and bias shifted; y keeps
      // its row stride N)
      const int64_t out_size = y.element_size();
      const LinearArgs a{xf.data_ptr<float>(),
                         xs.defined() ? xs.data_ptr<float>() : nullptr,
                         M,
                         K,
                         N,
                         codes.data(),
                         scales.data(),
                         g,
                         (int)block_size,
                         f,
                         bias_f.defined() ? bias_f.data_ptr<float>() + n0 : nullptr,
                         in_dtype_code(y.scalar_type()),
                         static_cast<char*>(y.data_ptr()) + n0 * out_size};
      kern.linear(a, 0, rows);
    }
  });
  return y;
}

// Where the CPU has AMX, fp32 / fp16 x from the prefill rows on (weight-only) is carried as three bf16 parts,
// x = hi + mid + lo: hi = bf16(x), mid = bf16(x - hi), lo = x - hi - mid, each difference exact in fp32 and lo exact
// in bf16 (24 significant bits = 3 x 8), so the AMX kernel's products stay exact. One product of [3M, K] parts (fp32
// sums), then y = (y_hi + y_mid) + y_lo (+ bias), rounded once to x's dtype. Bound (tests/tolerances.py): the three
// sums err by gamma_K * sum |part w| <= gamma_K (1 + 2^-7) sum |x w|, the two adds by u each; parts below bf16's
// normal range (|x| < ~2^-110) are flushed by the tiles, <= 3 x 2^-126 |w| per element. Measured (4096 x 4096 mxint4,
// M = 512, 2-core Xeon): 98-100 ms with the fp32 kernel, 50-52 ms with the parts (28 of them the [3M, K] product)
// when torch ops built the parts (~3.4 ms); split_parts' one pass takes ~0.6 ms of that (N = 16: 3.9 -> 1.7 ms per
// call). Non-finite x, or x past bf16's largest finite value, keeps the fp32 kernel (hi would
// be +-inf and mid NaN).
bool splits_fp32_x(const at::Tensor& x2, int64_t M, int64_t K, int act) {
  return act < 0 && x2.scalar_type() != at::kBFloat16 && M >= kBf16PrefillMinRows && K % 32 == 0 &&
         active_kernels().linear_packed_amx && cpu::amx_enabled();
}

inline uint16_t bf16_rne(float v) {  // v finite and below bf16's largest finite value (split_parts checks)
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_value(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

// Elements [i0, i1) of split_parts; false where one is out of range.
template <typename T>
bool split_scalar(const T* x, int64_t n, int64_t i0, int64_t i1, uint16_t* parts) {
  bool good = true;
  for (int64_t i = i0; i < i1; ++i) {
    const float v = static_cast<float>(x[i]);
    good &= std::fabs(v) < 3.3e38f;  // (false for NaN)
    const uint16_t hi = bf16_rne(v);
    const float r1 = v - bf16_value(hi);  // exact
    const uint16_t mid = bf16_rne(r1);
    parts[i] = hi;
    parts[n + i] = mid;
    parts[2 * n + i] = bf16_rne(r1 - bf16_value(mid));  // exact in bf16: the rounding changes nothing
  }
  return good;
}
template <typename T>
bool split_range(const T* x, int64_t n, int64_t i0, int64_t i1, uint16_t* parts) {
  return split_scalar(x, n, i0, i1, parts);
}
#if defined(__x86_64__) || defined(_M_X64)
// fp32 16 at a time (AVX-512: split_parts runs only where the CPU has AMX). Why: the compiler left split_scalar's
// loop scalar, 2.7 ms at M = 512, K = 4096.
LK_SPLIT_TARGET inline __m512i bf16_rne16(__m512 v) {  // bf16_rne of each lane, in the low 16 bits of its 32
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  return _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
}
LK_SPLIT_TARGET inline __m512 bf16_value16(__m512i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)); }
template <>
LK_SPLIT_TARGET bool split_range<float>(const float* x, int64_t n, int64_t i0, int64_t i1, uint16_t* parts) {
  __mmask16 bad = 0;
  int64_t i = i0;
  for (; i + 16 <= i1; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    bad |= (__mmask16)~_mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(3.3e38f), _CMP_LT_OQ);
    const __m512i hi = bf16_rne16(v);
    const __m512 r1 = _mm512_sub_ps(v, bf16_value16(hi));
    const __m512i mid = bf16_rne16(r1);
    const __m512i lo = bf16_rne16(_mm512_sub_ps(r1, bf16_value16(mid)));
    _mm256_storeu_si256((__m256i*)(parts + i), _mm512_cvtepi32_epi16(hi));
    _mm256_storeu_si256((__m256i*)(parts + n + i), _mm512_cvtepi32_epi16(mid));
    _mm256_storeu_si256((__m256i*)(parts + 2 * n + i), _mm512_cvtepi32_epi16(lo));
  }
  const bool tail = split_scalar(x, n, i, i1, parts);  // (fewer than 16 left)
  return bad == 0 && tail;
}
#endif

// x [n] (fp32 / fp16) -> parts [3, n] bf16 (hi, mid, lo) in one pass; false (parts unspecified) where some x is not
// finite or is past bf16's largest finite value. Why one pass: as torch ops (conversions, two subtractions, a max
// for the check) it took ~3.4 ms at M = 512, K = 4096, 7% of the product; this ~0.6 ms.
template <typename T>
bool split_parts(const T* x, int64_t n, uint16_t* parts) {
  std::atomic<bool> ok{true};
  at::parallel_for(0, n, 1 << 15, [&](int64_t i0, int64_t i1) {
    if (!split_range(x, n, i0, i1, parts)) ok.store(false, std::memory_order_relaxed);
  });
  return ok.load();
}

// The product of split_linear's parts into y, or an undefined tensor where split_parts declines x.
at::Tensor split_linear(const at::Tensor& x2, int64_t M, int64_t K, int f, const at::Tensor& packed,
                        const at::Tensor& global_scale, int64_t block_size, int64_t N,
                        const std::optional<at::Tensor>& bias, at::Tensor y) {
  at::Tensor parts = cpu::empty_output({3 * M, K}, x2.options().dtype(at::kBFloat16));  // (scratch)
  uint16_t* pp = reinterpret_cast<uint16_t*>(parts.data_ptr());
  const bool ok = x2.scalar_type() == at::kFloat ? split_parts(x2.data_ptr<float>(), M * K, pp)
                                                 : split_parts(x2.data_ptr<at::Half>(), M * K, pp);
  if (!ok) return at::Tensor();
  at::Tensor yp = cpu::empty_output({3 * M, N}, x2.options().dtype(at::kFloat));
  packed_linear_run(parts, 3 * M, K, f, -1, packed, global_scale, block_size, N, std::nullopt, yp, kXParts);
  at::Tensor sum = (yp.narrow(0, 0, M) + yp.narrow(0, M, M)) + yp.narrow(0, 2 * M, M);
  if (bias.has_value()) sum.add_(bias->to(at::kFloat));
  y.view({M, N}).copy_(sum);
  return y;
}

at::Tensor mx_linear_packed_cpu(const at::Tensor& x_in, const at::Tensor& packed_in, const at::Tensor& global_scale,
                                c10::string_view fmt, int64_t block_size, int64_t N,
                                const std::optional<at::Tensor>& bias, std::optional<c10::string_view> act_fmt) {
  int64_t K = 0;
  int act = -1;
  const int f = check_packed_args(x_in, packed_in, global_scale, fmt, block_size, N, bias, act_fmt, &K, &act);
  const int64_t M = leading_rows(x_in);
  at::Tensor y = cpu::empty_output(with_last_dim(x_in.sizes(), N), x_in.options());
  if (M == 0 || N == 0) return y;
  const at::Tensor x2 = x_in.reshape({M, K}).contiguous();
  if (const std::vector<int> shift = linear_x_shifts(x2); !shift.empty())  // rows near fp32's top (common/x_shift.h)
    return linear_shifted(x_in, shift, bias, [&](const at::Tensor& xs, const std::optional<at::Tensor>& none) {
      return mx_linear_packed_cpu(xs, packed_in, global_scale, fmt, block_size, N, none, act_fmt);
    });
  if (splits_fp32_x(x2, M, K, act)) {
    const at::Tensor done = split_linear(x2, M, K, f, packed_in, global_scale, block_size, N, bias, y);
    if (done.defined()) return done;
  }
  return packed_linear_run(x2, M, K, f, act, packed_in, global_scale, block_size, N, bias, y);
}

}  // namespace

TORCH_LIBRARY_IMPL(leankern, CPU, m) { m.impl("mx_linear_packed", &mx_linear_packed_cpu); }

}  // namespace mx
}  // namespace leankern
