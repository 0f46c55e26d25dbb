// CPU kernel of the public op leankern::mx_linear (schema declared once, in Python:
// python/leankern/mx/ops.py): y = x_hat @ W_hat^T (+ bias) in fp32, returned in x's dtype.
// Numerics: python/leankern/mx/ref.py mx_linear_ref. The weight stays quantized in memory: the
// per-ISA kernels (kernels.h: KernelTable::linear; linear_simd_impl.h, scalar_kernels.h) decode
// it block by block, threads split the output features. Dual mode (act_fmt): x is quantized with
// the mx_quantize kernels (RCEIL scales, NV: dynamic tensor scale) and dequantized to fp32 first.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <string>
#include <vector>

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

// Same checks, order and messages as python/leankern/mx/ops.py _check_linear (+ the NV tensor
// scale's value, as mx_dequantize). Returns the weight format; sets *K and *act (-1: none).
int check_linear_args(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                      const at::Tensor& global_scale, c10::string_view fmt, int64_t block_size,
                      const std::optional<at::Tensor>& bias, std::optional<c10::string_view> act_fmt, int64_t* K,
                      int* act) {
  check_float_dtype("x", x);
  checks::check_min_dim("x", x, 1);
  const int f = check_format(fmt);
  const FormatSpec& spec = kFormats[f];
  checks::check_power_of_two("block_size", block_size, kMinBlockSize, kMaxBlockSize);
  checks::check_min_dim("codes", codes, 1);
  checks::check_dtype("codes", codes, {code_dtype(spec.elem)}, at::kByte);  // uint8: raw code bytes
  checks::check_device("scales", scales, codes.device(), "codes");
  checks::check_min_dim("scales", scales, 1);
  checks::check_dtype("scales", scales, {scale_dtype(spec)}, at::kByte);  // uint8: raw scale bytes
  checks::check_dtype("global_scale", global_scale, {at::kFloat});
  checks::check_device("global_scale", global_scale, codes.device(), "codes");
  checks::check_shape("global_scale", global_scale, {});
  *K = codes.size(-1) * (elem_spec(spec.elem).bits == 4 ? 2 : 1);
  checks::check_divisible("K (elements per row of codes)", *K, "block_size", block_size);
  checks::check_shape("scales", scales, with_last_dim(codes.sizes(), *K / block_size));
  checks::check_device("codes", codes, x.device(), "x");
  TORCH_CHECK_VALUE(codes.dim() == 2, "codes: expected a 2-D [N, K] weight, got shape ",
                    checks::py_repr(codes.sizes()));
  TORCH_CHECK_VALUE(x.size(-1) == *K, "x.shape[-1]: expected ", *K, " (the in_features of the weight), got ",
                    x.size(-1));
  if (bias.has_value()) {
    checks::check_dtype("bias", *bias, {x.scalar_type(), at::kFloat});
    checks::check_device("bias", *bias, x.device(), "x");
    checks::check_shape("bias", *bias, {codes.size(0)});
  }
  *act = act_fmt.has_value() ? check_format_named("act_fmt", *act_fmt) : -1;
  if (spec.is_nv) check_global_scale_value(*global_scale.data_ptr<float>());  // MX carries 1.0, ignored
  return f;
}

at::Tensor mx_linear_cpu(const at::Tensor& x_in, const at::Tensor& codes_in, const at::Tensor& scales_in,
                         const at::Tensor& global_scale, c10::string_view fmt, int64_t block_size,
                         const std::optional<at::Tensor>& bias, std::optional<c10::string_view> act_fmt) {
  int64_t K = 0;
  int act = -1;
  const int f = check_linear_args(x_in, codes_in, scales_in, global_scale, fmt, block_size, bias, act_fmt, &K, &act);
  const int64_t N = codes_in.size(0);
  const int64_t M = leading_rows(x_in);
  at::Tensor y = cpu::empty_output(with_last_dim(x_in.sizes(), N), x_in.options());
  if (M == 0 || N == 0) return y;

  const KernelTable& kern = active_kernels();
  const at::Tensor x2 = x_in.reshape({M, K}).contiguous();
  if (const std::vector<int> shift = linear_x_shifts(x2); !shift.empty())  // rows near fp32's top (common/x_shift.h)
    return linear_shifted(x_in, shift, bias, [&](const at::Tensor& xs, const std::optional<at::Tensor>& none) {
      return mx_linear_cpu(xs, codes_in, scales_in, global_scale, fmt, block_size, none, act_fmt);
    });
  at::Tensor xf;  // x_hat, fp32 [M, K]
  if (act >= 0)
    xf = fake_quantize(x2, act, block_size, kern);
  else
    xf = x2.scalar_type() == at::kFloat ? x2 : x2.to(at::kFloat);
  // 4-bit weights: the SIMD kernels read x with the even / odd elements of each 32 apart
  at::Tensor xs;
  if (&kern != &scalar_kernels() && linear_wants_xs(elem_spec(kFormats[f].elem).bits, K, (int)block_size))
    xs = xf.view({M, K / 32, 16, 2}).transpose(2, 3).contiguous();
  const at::Tensor codes = codes_in.contiguous(), scales = scales_in.contiguous();
  const at::Tensor bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();

  const LinearArgs a{xf.data_ptr<float>(),
                     xs.defined() ? xs.data_ptr<float>() : nullptr,
                     M,
                     K,
                     N,
                     static_cast<const uint8_t*>(codes.data_ptr()),
                     static_cast<const uint8_t*>(scales.data_ptr()),
                     *global_scale.data_ptr<float>(),
                     (int)block_size,
                     f,
                     bias_f.defined() ? bias_f.data_ptr<float>() : nullptr,
                     in_dtype_code(y.scalar_type()),
                     y.data_ptr()};
  // Tasks of whole 4-row tiles of >= ~64K multiply-adds each, handed out dynamically (a core busy
  // with something else does less). Why a floor: a tiny product (decode of one small layer) would
  // otherwise pay the thread-pool wake-up, several µs, for microseconds of work.
  const int64_t per_row = std::max<int64_t>(1, M * K);
  int64_t rows = ((65536 + per_row - 1) / per_row + 3) / 4 * 4;
  if (M <= 16) rows = (cpu::streaming_chunk(N, rows) + 3) / 4 * 4;  // decode: W streamed once
  parallel_chunks(N, rows, [&](int64_t n0, int64_t n1) { kern.linear(a, n0, n1); });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(leankern, CPU, m) { m.impl("mx_linear", &mx_linear_cpu); }

// check_format with the argument's name in the message ("act_fmt: expected one of ...").
int check_format_named(const char* name, c10::string_view fmt) {
  const int f = find_format(fmt.data(), fmt.size());
  if (f >= 0) return f;
  std::vector<std::string> names, aliases;
  for (const FormatSpec& s : kFormats) names.push_back(s.name);
  for (const FormatAlias& a : kFormatAliases) aliases.push_back(a.name);
  TORCH_CHECK_VALUE(false, name, ": expected one of ", checks::str_tuple(names), " or an alias ",
                    checks::str_tuple(aliases), ", got ", checks::py_repr(fmt));
  return -1;
}

// Blocks per parallel task of the activation quantizer (as mx_cpu.cpp: the NV amax pass parks
// block maxima that the quantize pass over the same block ranges reads back).
static int64_t grain_blocks(int64_t block_size) { return std::max<int64_t>(1, 65536 / block_size); }

namespace {

// quantize_act's codes and scales (scratch: from the output cache where it is on, so a steady stream of calls does
// not fault in fresh pages) and arguments, NV's tensor scale found (its amax pass run); the quantize pass not yet.
struct ActQuant {
  at::Tensor codes, scales;
  QuantArgs q;
};

ActQuant act_quant_setup(const at::Tensor& x, int f, int64_t block_size, const KernelTable& kern) {
  const FormatSpec& spec = kFormats[f];
  const int64_t numel = x.numel(), nblocks = numel / block_size;
  const at::TensorOptions bytes = x.options().dtype(at::kByte);
  ActQuant a{cpu::empty_output({elem_spec(spec.elem).bits == 4 ? numel / 2 : numel}, bytes),
             cpu::empty_output({nblocks}, bytes), QuantArgs{}};
  a.q = QuantArgs{x.data_ptr(), in_dtype_code(x.scalar_type()), (int)block_size, f, kScaleRceil, nullptr, 1.0f,
                  0, a.codes.data_ptr<uint8_t>(), a.scales.data_ptr<uint8_t>()};
  if (spec.is_nv) {
    std::atomic<uint32_t> amax{0};
    parallel_chunks(nblocks, grain_blocks(block_size), [&](int64_t b0, int64_t b1) {
      const uint32_t m = kern.nv_amax(a.q, b0, b1);
      for (uint32_t cur = amax.load(); m > cur && !amax.compare_exchange_weak(cur, m);) {
      }
    });
    a.q.amax_parked = 1;
    a.q.g = nv_global_scale(amax.load(), elem_params(spec.elem));
  }
  return a;
}

}  // namespace

// quantize(x, fmt, block_size, "rceil") of a contiguous x [M, K] (its own dtype): codes, scale bytes and (NV) the
// dynamic tensor scale of x (linear_common.h).
ActCodes quantize_act(const at::Tensor& x, int f, int64_t block_size, const KernelTable& kern) {
  ActQuant a = act_quant_setup(x, f, block_size, kern);
  parallel_chunks(x.numel() / block_size, grain_blocks(block_size),
                  [&](int64_t b0, int64_t b1) { kern.quantize(a.q, b0, b1); });
  return {a.codes, a.scales, a.q.g};
}

// dequantize(quantize(x)) as out_dtype (kInBF16 / kInF32). Each task dequantizes 8K elements right after quantizing
// them, while their codes are in L1 (the same kernels and results as a quantize pass over all of x and then a
// dequantize pass; the dual MXINT8 x_hat of x [512, 4096] bf16 on the 2-core Xeon, by perf samples: ~0.60 ms of the
// call instead of ~0.74).
at::Tensor fake_quantize(const at::Tensor& x, int f, int64_t block_size, const KernelTable& kern, int out_dtype) {
  ActQuant a = act_quant_setup(x, f, block_size, kern);
  at::Tensor out = cpu::empty_output(x.sizes(), x.options().dtype(out_dtype == kInBF16 ? at::kBFloat16 : at::kFloat));
  const DequantArgs d{a.codes.data_ptr<uint8_t>(), a.scales.data_ptr<uint8_t>(), a.q.g, (int)block_size, f,
                      out_dtype == kInBF16 ? kInBF16 : kInF32, out.data_ptr()};
  constexpr int64_t kStep = 8192;  // elements quantized then dequantized at a time (their codes stay in L1)
  const int64_t sub = std::max<int64_t>(1, kStep / block_size);
  parallel_chunks(x.numel() / block_size, grain_blocks(block_size), [&](int64_t b0, int64_t b1) {
    for (int64_t s0 = b0; s0 < b1; s0 += sub) {
      const int64_t s1 = std::min(b1, s0 + sub);
      kern.quantize(a.q, s0, s1);
      kern.dequantize(d, s0, s1);
    }
  });
  return out;
}


}  // namespace mx
}  // namespace leankern
