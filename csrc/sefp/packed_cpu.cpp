// CPU kernel of leankern::sefp_packed_linear: y = x @ W^T (+ bias) over the single-width packed SEFP copy
// (packed.h; schema, checks and numerics: python/leankern/sefp/ops.py, packed.py). By path:
//   bf16 x on an AVX512-BF16 + VBMI CPU (avx512bf16 ISA):
//     below the bf16 panel threshold (kernels.h panel_rows(true); kPackedGemvRows with AMX): gemv_packed_vbmi
//       (packed_gemv_vbmi.cpp), the weights streamed once, decoded in registers (from decoded_rows(true) x rows: 4 rows
//       at a time into L1, then 4 x 4 tiles), exact bf16 products, fp32 sums;
//     more rows, no bias, every weight a bf16 normal or zero: panels decoded to bf16 (exact) and torch's bf16 GEMM;
//   otherwise, on a CPU with AVX2 + FMA (packed_gemv_avx2.cpp): up to packed_avx2_gemv_rows() x rows (64 on the avx2
//     ISA, else 32) its GEMV (x widened to fp32 in the kernel's order, weights decoded in registers), more rows
//     panels of kPanelN rows decoded to exact fp32 by its decoder and at::mm_out in fp32;
//   otherwise: the same two forms with the portable decoder below (rows decoded to fp32, a dot product per x row).
// Sums are fp32; the result + bias is rounded once to x's dtype (RNE), as the reference.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>
#include <vector>

#include "common/cpu_features.h"
#include "common/output_cache.h"
#include "common/parallel.h"
#include "common/x_shift.h"
#include "sefp/checks.h"
#include "sefp/io.h"
#include "sefp/kernels.h"
#include "sefp/packed.h"
#include "sefp/row_limits.h"

namespace leankern {
namespace sefp {
namespace {

constexpr int64_t kPackedGemvRows = 16;  // x rows the VBMI GEMV takes on CPUs with AMX
constexpr int64_t kPanelN = 128;         // weight rows per decoded fp32 panel of the many-rows path
// x rows the AVX2 GEMV takes, as the planes' kPanelRows (sefp_cpu.cpp): on the avx2 ISA it ran 33-64 rows at
// 0.95-2.07x the panels' speed (below 1.10 only at 4096 x 14336, m = 7: a tie), lost at 96 in 2 of 6 and at 128 in
// 3 of 6 (three shapes x m = 3 / 7, 2-core Zen 3, cold; `python bench/bench_sefp_packed_avx2.py --limits`,
// docs/bench/sefp_avx2_limits_zen3.txt); 32 on the other ISAs (measured on none of their CPUs)
constexpr int64_t kPackedAvx2GemvRows = 32, kPackedAvx2GemvRowsOnAvx2 = 64;
// x rows from which gemv_decoded decodes each weight once (below: every 4 x rows decode it again). 4096 x 4096,
// cold, 2-core Zen 3, m = 3 / 7, alternating runs: 8 rows 4.5-5.9 ms against 4.9-7.0, 16 rows 7.7-9.9 against
// 10.2-13.0, 32 rows 14.5-17.4 against 19.3-20.7.
constexpr int64_t kDecodeOnceRows = 5;
// set_packed_avx2_gemv_rows / _decode_once_rows (tuning hooks); gemv rows 0: by ISA, as above
std::atomic<int64_t> g_avx2_gemv_rows{0}, g_avx2_decode_once_rows{kDecodeOnceRows};
constexpr int64_t kInlineWeights = 1 << 13;  // weights up to which the portable GEMV stays on one thread (~10 us)

// ops.check_packed
void check_packed(const at::Tensor& codes, const at::Tensor& exponents, int64_t m, int64_t block_size,
                  const at::Tensor& x) {
  check_block_size(block_size);
  checks::check_dtype("codes", codes, {at::kByte});
  checks::check_device("codes", codes, x.device(), "x");
  TORCH_CHECK_VALUE(codes.dim() == 2, "codes: expected shape [N, Kp * (1 + m) / 8], got ",
                    checks::py_repr(codes.sizes()));
  check_int("m", m, 1, kPackedMaxM);
  const int64_t N = codes.size(0), nbytes = codes.size(1), Kp = nbytes * 8 / (1 + m);
  TORCH_CHECK_VALUE((nbytes * 8) % (1 + m) == 0 && Kp >= 1 && Kp % block_size == 0,
                    "codes: expected rows of Kp * (1 + m) / 8 bytes with Kp a positive multiple of block_size=",
                    block_size, " (m=", m, "), got ", nbytes, " bytes");
  TORCH_CHECK_VALUE(codes.is_contiguous(), "codes: expected a contiguous tensor, got strides ",
                    checks::py_repr(codes.strides()));
  checks::check_dtype("exponents", exponents, {at::kChar});
  checks::check_device("exponents", exponents, codes.device(), "codes");
  const int64_t nb = Kp / block_size;
  TORCH_CHECK_VALUE(exponents.dim() == 2 && exponents.size(0) == N && exponents.size(1) == nb,
                    "exponents: expected shape (N=", N, ", Kp/block_size=", nb, "), got ",
                    checks::py_repr(exponents.sizes()));
  TORCH_CHECK_VALUE(exponents.is_contiguous(), "exponents: expected a contiguous tensor, got strides ",
                    checks::py_repr(exponents.strides()));
}

// Row n of the weight, exact fp32, natural order: out [Kp]. Portable: 8 fields (B = 1 + M bytes) at a time; q times
// the exact power of two 2^(E - (m - 1)) (scale_table): one rounding where the result is subnormal, as the reference.
// M a template argument: the B-byte copy and the field shifts are constants (a variable-size memcpy per 8 fields was
// a library call; with it, 4096 x 4096 fp32 x M = 1 took 55 ms against the planes' 0.7, Zen 4).
template <int M>
void decode_row_m(const PackedW& W, int64_t n, float* out) {
  constexpr int B = 1 + M;
  constexpr uint32_t fmask = (1u << B) - 1, qmask = (1u << M) - 1;
  const uint8_t* row = W.codes + n * W.row_bytes;
  const int8_t* ex = W.exps + n * W.nb;
  const float* lut = scale_table(M);
  const uint8_t* end = W.codes + W.N * W.row_bytes;  // 8-byte loads while 8 bytes remain (the bits past 8 B unused)
  for (int64_t g = 0; g < W.Kp / 8; ++g) {
    uint64_t bits = 0;
    if (row + g * B + 8 <= end)
      std::memcpy(&bits, row + g * B, 8);  // little-endian: bit i of byte j is bit 8 j + i
    else
      std::memcpy(&bits, row + g * B, B);
    const float scale = lut[ex[(g / 4) >> W.gs] + 128];
    for (int j = 0; j < 8; ++j) {
      const uint32_t c = static_cast<uint32_t>(bits >> (B * j)) & fmask;
      const float q = static_cast<float>(static_cast<int32_t>(c & qmask)) * scale;  // (int32: a cheap conversion)
      uint32_t u;  // the sign bit xor'ed in, no branch: random signs mispredicted every other weight
      std::memcpy(&u, &q, 4);
      u ^= (c >> M) << 31;
      std::memcpy(out + 8 * g + j, &u, 4);
    }
  }
}

void decode_row(const PackedW& W, int64_t n, float* out) {
  switch (W.m) {
    case 1: return decode_row_m<1>(W, n, out);
    case 2: return decode_row_m<2>(W, n, out);
    case 3: return decode_row_m<3>(W, n, out);
    case 4: return decode_row_m<4>(W, n, out);
    case 5: return decode_row_m<5>(W, n, out);
    case 6: return decode_row_m<6>(W, n, out);
    default: return decode_row_m<7>(W, n, out);  // (m <= kPackedMaxM = 7: checked)
  }
}

// sum_k x[k] w[k] over n (a multiple of 16: Kp is a multiple of the block size) in 16 independent fp32 sums, then
// their tree: the compiler vectorizes it (a single running sum could not be reordered), and every order of fp32
// sums keeps the bound.
inline float dot16(const float* x, const float* w, int64_t n) {
  float acc[16] = {};
  for (int64_t k = 0; k < n; k += 16)
    for (int l = 0; l < 16; ++l) acc[l] += x[k + l] * w[k + l];
  for (int h = 8; h >= 1; h /= 2)
    for (int l = 0; l < h; ++l) acc[l] += acc[l + h];
  return acc[0];
}

at::Tensor padded_to(const at::Tensor& x, int64_t Kx) {
  if (x.size(1) == Kx) return x;
  at::Tensor xb = at::zeros({x.size(0), Kx}, x.options());
  xb.narrow(1, 0, x.size(1)).copy_(x);
  return xb;
}

PackedW make_packed(const at::Tensor& codes, const at::Tensor& exponents, int64_t m, int64_t block_size) {
  PackedW W;
  W.codes = codes.data_ptr<uint8_t>();
  W.row_bytes = codes.size(1);
  W.exps = exponents.data_ptr<int8_t>();
  W.nb = exponents.size(1);
  W.gs = block_shift(block_size);
  W.m = static_cast<int>(m);
  W.N = codes.size(0);
  W.Kp = W.row_bytes * 8 / (1 + m);
  return W;
}

at::Tensor sefp_packed_linear_cpu(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& exponents, int64_t m,
                                  int64_t block_size, const std::optional<at::Tensor>& bias) {
  check_float("x", x);
  checks::check_min_dim("x", x, 1);
  check_packed(codes, exponents, m, block_size, x);
  const PackedW W = make_packed(codes, exponents, m, block_size);
  check_k("x", x.size(-1), W.Kp / kWord, block_size);
  check_bias(bias, W.N, x);
  const int64_t K = x.size(-1), N = W.N, M = x.numel() / K;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor out = cpu::empty_output(out_shape, x.options());
  if (M == 0 || N == 0) return out;
  const at::Tensor x2 = x.reshape({M, K}).contiguous();
  if (const std::vector<int> shift = linear_x_shifts(x2); !shift.empty())  // rows near fp32's top (common/x_shift.h)
    return linear_shifted(x, shift, bias, [&](const at::Tensor& xs, const std::optional<at::Tensor>& none) {
      return sefp_packed_linear_cpu(xs, codes, exponents, m, block_size, none);
    });
  const bool f32_out = x.scalar_type() == at::kFloat;
  const int dt = dtype_code(x.scalar_type());
  const bool bf16_x = x.scalar_type() == at::kBFloat16 && packed_vbmi_supported();
  const int x_field =  // (kernels.h: one pass over x, for every check below)
      bf16_x ? bf16_min_normal_exponent_field(reinterpret_cast<const uint16_t*>(x2.data_ptr()), x2.numel()) : 255;
  const bool vbmi = bf16_x && bf16_gemv_takes(x_field);
  // the GEMV's rows: up to kPackedGemvRows with AMX (torch's bf16 GEMM over the panels uses it), else below the
  // packed panel threshold (kernels.h set_panel_rows): from decoded_rows(true) x rows it decodes each weight row once
  const int64_t gemv_rows = cpu::amx_enabled() ? kPackedGemvRows : panel_rows(true) - 1;
  // (the panels' weights carry their block scale: every block must keep its products with this x above 2^-126,
  // decode_min_exponent, as sefp_linear's)
  const bool bf16_panels =
      vbmi && M > gemv_rows && !bias.has_value() &&
      !(exponents.gt(-128) &
        exponents.lt(decode_min_exponent(x_field, (int)m)))
           .any()
           .item<bool>();
  at::Tensor y32 = f32_out       ? out.view({M, N})
                   : bf16_panels ? at::Tensor()
                                 : at::empty({M, N}, x.options().dtype(at::kFloat));
  float* yp = y32.defined() ? y32.data_ptr<float>() : nullptr;

  if (vbmi && M <= gemv_rows) {
    const int64_t Kx = packed_x_width(W.Kp);
    const at::Tensor xb = padded_to(x2, Kx);
    const uint16_t* xp = reinterpret_cast<const uint16_t*>(xb.data_ptr());
    const int64_t per_row = std::max<int64_t>(1, (1 << 19) / (W.Kp * (1 + M)));
    const int64_t task = cpu::streaming_chunk(N, M == 1 ? per_row : std::max<int64_t>(64, per_row));
    PackedW Wb = W;
    if (M >= decoded_rows(true))
      Wb.decode_min_e = decode_min_exponent(x_field, (int)m);
    cpu::parallel_chunks(N, task, [&](int64_t n0, int64_t n1) { gemv_packed_vbmi(Wb, xp, M, Kx, n0, n1, yp, N); });
  } else if (bf16_panels) {
    // many bf16 rows, every weight a bf16 normal or zero: panels decoded to bf16 (exact) and torch's bf16 GEMM
    // (fp32 accumulation, one rounding into the output), as sefp_linear's linear_panels_bf16
    const int64_t Kx = packed_x_width(W.Kp);
    const at::Tensor xb = padded_to(x2, Kx);
    const int64_t rows = std::clamp<int64_t>((4 << 20) / (2 * Kx) / 64 * 64, 256, 512);
    at::Tensor panel = at::empty({std::min(rows, N), Kx}, x.options());
    uint16_t* pp = reinterpret_cast<uint16_t*>(panel.data_ptr());
    at::Tensor o2 = out.view({M, N});
    for (int64_t n0 = 0; n0 < N; n0 += rows) {
      const int64_t nb = std::min(rows, N - n0);
      cpu::parallel_chunks(nb, 8, [&](int64_t a, int64_t b) {
        decode_packed_bf16_vbmi(W, n0 + a, n0 + b, pp + a * Kx, Kx);
      });
      at::Tensor cols = o2.narrow(1, n0, nb);
      at::mm_out(cols, xb, panel.narrow(0, 0, nb).t());
    }
    return out;
  } else {
    // x as fp32, zero padded to Kp, in the AVX2 kernels' order where they run (packed.h), else natural
    const bool avx2 = packed_avx2_supported();
    std::array<int16_t, kPackedAvx2Unit> order;
    if (avx2)
      packed_avx2_order(static_cast<int>(m), order.data());
    else
      std::iota(order.begin(), order.end(), static_cast<int16_t>(0));
    at::Tensor xf = at::empty({M, W.Kp}, x.options().dtype(at::kFloat));
    float* xp = xf.data_ptr<float>();
    const char* src = static_cast<const char*>(x2.data_ptr());
    for (int64_t r = 0; r < M; ++r)
      for (int64_t k0 = 0; k0 < W.Kp; k0 += kPackedAvx2Unit)
        for (int i = 0; i < kPackedAvx2Unit; ++i) {
          const int64_t k = k0 + order[i];
          xp[r * W.Kp + k0 + i] = k < K ? load_f32(src, dt, r * K + k) : 0.0f;
        }
    if (M <= (avx2 ? packed_avx2_gemv_rows() : kPackedGemvRows)) {
      // (a small weight runs on the calling thread: waking the other costs more than its share of the rows)
      const int64_t chunk = N * W.Kp <= kInlineWeights ? N : cpu::streaming_chunk(N, 16);
      cpu::parallel_chunks(N, chunk, [&](int64_t n0, int64_t n1) {
        if (avx2) return gemv_packed_avx2(W, xp, M, W.Kp, n0, n1, yp, N);
        std::vector<float> row(W.Kp);
        for (int64_t n = n0; n < n1; ++n) {
          decode_row(W, n, row.data());
          for (int64_t r = 0; r < M; ++r) yp[r * N + n] = dot16(xp + r * W.Kp, row.data(), W.Kp);
        }
      });
    } else {
      // exact fp32 panels in x's order (the product is the same sum over k, permuted)
      at::Tensor panel = at::empty({std::min(kPanelN, N), W.Kp}, xf.options());
      float* pp = panel.data_ptr<float>();
      for (int64_t n0 = 0; n0 < N; n0 += kPanelN) {
        const int64_t nb = std::min(kPanelN, N - n0);
        cpu::parallel_chunks(nb, 8, [&](int64_t a, int64_t b) {
          if (avx2) return decode_packed_avx2(W, n0 + a, n0 + b, pp + a * W.Kp, W.Kp);
          for (int64_t i = a; i < b; ++i) decode_row(W, n0 + i, pp + i * W.Kp);
        });
        at::Tensor cols = y32.narrow(1, n0, nb);
        at::mm_out(cols, xf, panel.narrow(0, 0, nb).t());
      }
    }
  }
  if (f32_out && !bias.has_value()) return out;
  store_output(out.data_ptr(), dt, yp, M, N, bias);  // + bias in fp32, one rounding to x's dtype
  return out;
}

}  // namespace

int64_t set_packed_avx2_gemv_rows(int64_t rows) { return exchange_setting(g_avx2_gemv_rows, rows); }
int64_t packed_avx2_gemv_rows() {
  return rows_by_isa(g_avx2_gemv_rows, kPackedAvx2GemvRowsOnAvx2, kPackedAvx2GemvRows);
}
int64_t set_packed_avx2_decode_once_rows(int64_t rows) { return exchange_setting(g_avx2_decode_once_rows, rows); }
int64_t packed_avx2_decode_once_rows() { return g_avx2_decode_once_rows.load(std::memory_order_relaxed); }

TORCH_LIBRARY_IMPL(leankern, CPU, m) { m.impl("sefp_packed_linear", &sefp_packed_linear_cpu); }

}  // namespace sefp
}  // namespace leankern
