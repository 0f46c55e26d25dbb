// CPU kernels of the public ops leankern::mx_quantize and leankern::mx_dequantize (schemas declared
// once, in Python: python/leankern/mx/ops.py). Argument checks (mx_torch.h) and allocation happen
// here; the per-ISA kernels (kernels.h) run over flat block ranges, on every core via
// parallel_chunks. Results are bit-exact with python/leankern/mx/ref.py on every ISA.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <tuple>

#include "common/output_cache.h"
#include "common/parallel.h"
#include "common/torch_checks.h"
#include "mx/formats.h"
#include "mx/kernels.h"
#include "mx/mx_torch.h"

namespace leankern {
namespace mx {
namespace {

using cpu::empty_output;
using cpu::parallel_chunks;

// Blocks per parallel task: ~64K elements, so tasks are large but every core gets work.
int64_t grain_blocks(int64_t block_size) { return std::max<int64_t>(1, 65536 / block_size); }

// NV tensor scale from x's finite amax. Same chunking as the quantize pass that follows, so the
// block maxima the SIMD amax kernels park in the code bytes line up with it (q.amax_parked).
float nv_tensor_scale(QuantArgs& q, const KernelTable& kern, int64_t nblocks) {
  std::atomic<uint32_t> amax{0};
  parallel_chunks(nblocks, grain_blocks(q.block_size), [&](int64_t b0, int64_t b1) {
    const uint32_t m = kern.nv_amax(q, b0, b1);
    for (uint32_t cur = amax.load(); m > cur && !amax.compare_exchange_weak(cur, m);) {
    }
  });
  q.amax_parked = 1;
  return nv_global_scale(amax.load(), elem_params(kFormats[q.fmt].elem));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mx_quantize_cpu(const at::Tensor& x_in, c10::string_view fmt,
                                                               int64_t block_size, c10::string_view scale_mode,
                                                               const std::optional<at::Tensor>& rand_bits,
                                                               const std::optional<at::Tensor>& global_scale,
                                                               bool strict) {
  const int f = check_quantize_args(x_in, fmt, block_size, scale_mode, rand_bits, global_scale);
  if (strict) check_strict(x_in);
  float given_g = 1.0f;
  if (global_scale.has_value()) {
    given_g = *global_scale->data_ptr<float>();
    check_global_scale_value(given_g);
  }
  const FormatSpec& spec = kFormats[f];
  const int64_t K = x_in.size(-1);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor rb = rand_bits.has_value() ? rand_bits->contiguous() : at::Tensor();
  at::Tensor codes = empty_output(with_last_dim(x.sizes(), elem_spec(spec.elem).bits == 4 ? K / 2 : K),
                                  x.options().dtype(code_dtype(spec.elem)));
  at::Tensor scales = empty_output(with_last_dim(x.sizes(), K / block_size), x.options().dtype(scale_dtype(spec)));
  const KernelTable& kern = active_kernels();
  QuantArgs q{x.data_ptr(), in_dtype_code(x.scalar_type()), (int)block_size, f, scale_mode_code(scale_mode),
              rb.defined() ? rb.data_ptr<int32_t>() : nullptr, given_g, 0,
              static_cast<uint8_t*>(codes.data_ptr()), static_cast<uint8_t*>(scales.data_ptr())};
  const int64_t nblocks = x.numel() / block_size;
  if (spec.is_nv && !global_scale.has_value()) q.g = nv_tensor_scale(q, kern, nblocks);
  parallel_chunks(nblocks, grain_blocks(block_size), [&](int64_t b0, int64_t b1) { kern.quantize(q, b0, b1); });
  return std::make_tuple(codes, scales, at::scalar_tensor(q.g, at::TensorOptions().dtype(at::kFloat)));
}

// mx_dequantize's arguments (codes' device is the kernel's); returns the format index, sets *K.
int check_dequantize_args(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& global_scale,
                          c10::string_view fmt, int64_t block_size, at::ScalarType out_dtype, int64_t* K) {
  const int f = check_format(fmt);
  const FormatSpec& spec = kFormats[f];
  checks::check_power_of_two("block_size", block_size, kMinBlockSize, kMaxBlockSize);
  checks::check_dtype("codes", codes, {code_dtype(spec.elem)}, at::kByte);  // uint8: raw code bytes
  checks::check_min_dim("codes", codes, 1);
  checks::check_dtype("scales", scales, {scale_dtype(spec)}, at::kByte);  // uint8: raw scale bytes
  checks::check_device("scales", scales, codes.device(), "codes");
  checks::check_min_dim("scales", scales, 1);
  checks::check_dtype("global_scale", global_scale, {at::kFloat});
  checks::check_device("global_scale", global_scale, codes.device(), "codes");
  checks::check_shape("global_scale", global_scale, {});
  TORCH_CHECK_TYPE(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf,
                   "out_dtype: expected one of ", checks::dtype_list({at::kFloat, at::kBFloat16, at::kHalf}),
                   ", got ", checks::dtype_name(out_dtype));
  *K = codes.size(-1) * (elem_spec(spec.elem).bits == 4 ? 2 : 1);
  checks::check_divisible("K (elements per row of codes)", *K, "block_size", block_size);
  checks::check_shape("scales", scales, with_last_dim(codes.sizes(), *K / block_size));
  return f;
}

at::Tensor mx_dequantize_cpu(const at::Tensor& codes_in, const at::Tensor& scales_in,
                             const at::Tensor& global_scale, c10::string_view fmt, int64_t block_size,
                             at::ScalarType out_dtype) {
  int64_t K = 0;
  const int f = check_dequantize_args(codes_in, scales_in, global_scale, fmt, block_size, out_dtype, &K);
  const float g = *global_scale.data_ptr<float>();
  if (kFormats[f].is_nv) check_global_scale_value(g);  // MX formats carry 1.0 and ignore it
  const at::Tensor codes = codes_in.contiguous(), scales = scales_in.contiguous();
  at::Tensor out = empty_output(with_last_dim(codes.sizes(), K), codes.options().dtype(out_dtype));
  DequantArgs q{static_cast<const uint8_t*>(codes.data_ptr()), static_cast<const uint8_t*>(scales.data_ptr()), g,
                (int)block_size, f, in_dtype_code(out_dtype), out.data_ptr()};
  const KernelTable& kern = active_kernels();
  parallel_chunks(out.numel() / block_size, grain_blocks(block_size),
                  [&](int64_t b0, int64_t b1) { kern.dequantize(q, b0, b1); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(leankern, CPU, m) {
  m.impl("mx_quantize", &mx_quantize_cpu);
  m.impl("mx_dequantize", &mx_dequantize_cpu);
}

}  // namespace mx
}  // namespace leankern
