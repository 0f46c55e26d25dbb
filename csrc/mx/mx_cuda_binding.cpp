// Torch binding of the CUDA quantize kernels (mx.cu): the CUDA kernel of the public op
// leankern::mx_quantize (schema declared in Python: python/leankern/mx/ops.py). Built only when
// torch is a CUDA build (setup.py); the kernels include no torch header and are reached through
// their C API. The argument checks are the CPU kernel's (mx_torch.h), so both raise alike.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "mx/formats.h"
#include "mx/mx_torch.h"

extern "C" int leankern_mx_quantize_cuda(const void* x, int dtype, int64_t n_elems, int fmt, int block_size,
                                         int scale_mode, const int32_t* rand_bits, const float* global_scale,
                                         float* g_out, unsigned int* scratch, uint8_t* codes, uint8_t* scales,
                                         cudaStream_t stream);

namespace leankern {
namespace mx {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> mx_quantize_cuda(const at::Tensor& x_in, c10::string_view fmt,
                                                                int64_t block_size, c10::string_view scale_mode,
                                                                const std::optional<at::Tensor>& rand_bits,
                                                                const std::optional<at::Tensor>& global_scale,
                                                                bool strict) {
  const int f = check_quantize_args(x_in, fmt, block_size, scale_mode, rand_bits, global_scale);
  const c10::cuda::CUDAGuard guard(x_in.device());
  // Value checks as asynchronous device asserts: no host synchronisation, CUDA-graph safe (the
  // CPU kernel raises ValueError with the same text).
  if (strict) at::_assert_async(at::isfinite(x_in).all(), "x: strict=True expects only finite values, got NaN/Inf");
  if (global_scale.has_value()) {
    const at::Tensor& g = *global_scale;
    at::_assert_async(at::logical_and(at::isfinite(g), at::ge(g, 1.17549435e-38)),
                      "global_scale: expected a finite value >= 2^-126 (smallest normal fp32), got a value outside that range");
  }
  const FormatSpec& spec = kFormats[f];
  const int64_t K = x_in.size(-1);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor rb = rand_bits.has_value() ? rand_bits->contiguous() : at::Tensor();
  const at::Tensor gs = global_scale.has_value() ? global_scale->contiguous() : at::Tensor();
  at::Tensor codes = at::empty(with_last_dim(x.sizes(), elem_spec(spec.elem).bits == 4 ? K / 2 : K),
                               x.options().dtype(code_dtype(spec.elem)));
  at::Tensor scales = at::empty(with_last_dim(x.sizes(), K / block_size), x.options().dtype(scale_dtype(spec)));
  at::Tensor g_out = at::empty({}, x.options().dtype(at::kFloat));
  at::Tensor scratch = at::empty({1}, x.options().dtype(at::kInt));
  const int err = leankern_mx_quantize_cuda(
      x.data_ptr(), in_dtype_code(x.scalar_type()), x.numel(), f, (int)block_size, scale_mode_code(scale_mode),
      rb.defined() ? rb.data_ptr<int32_t>() : nullptr, gs.defined() ? gs.data_ptr<float>() : nullptr,
      g_out.data_ptr<float>(), static_cast<unsigned int*>(scratch.data_ptr()),
      static_cast<uint8_t*>(codes.data_ptr()), static_cast<uint8_t*>(scales.data_ptr()),
      c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "mx_quantize (CUDA): kernel launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
  return std::make_tuple(codes, scales, g_out);
}

}  // namespace

TORCH_LIBRARY_IMPL(leankern, CUDA, m) { m.impl("mx_quantize", &mx_quantize_cuda); }

}  // namespace mx
}  // namespace leankern
