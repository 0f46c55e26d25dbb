// Torch binding of the CUDA quantize kernels (csrc/cuda/mx.cu): the CUDA kernel of
// leankern::mx_quantize_cpp (schema in csrc/bindings.cpp). Built only when torch is a CUDA build
// (setup.py); the kernels themselves include no torch header and are reached through their C API.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "cpu/mx_common.h"
#include "mx_torch_common.h"

extern "C" int leankern_mx_quantize_cuda(const void* x, int dtype, int64_t n_elems, int fmt, int block_size,
                                         int floor_mode, const int32_t* rand_bits, const float* global_scale,
                                         float* g_out, unsigned int* scratch, uint8_t* codes, uint8_t* scales,
                                         cudaStream_t stream);

namespace leankern {
namespace cuda_binding {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> mx_quantize_cuda(const at::Tensor& x_in, c10::string_view fmt,
                                                                int64_t block_size, c10::string_view scale_mode,
                                                                const c10::optional<at::Tensor>& rand_bits,
                                                                const c10::optional<at::Tensor>& global_scale) {
  const int f = find_format(std::string(fmt).c_str());
  TORCH_CHECK(f >= 0, "fmt: expected one of mxfp8_e4m3, mxfp8_e5m2, mxfp6_e2m3, mxfp6_e3m2, mxfp4, mxint8, mxint6, "
              "mxint4, nvfp4, nvint4 (or mxfp8, mxfp6), got '", fmt, "'");
  const FormatSpec& spec = kFormats[f];
  TORCH_CHECK(block_size >= 2 && block_size <= 1024 && (block_size & (block_size - 1)) == 0,
              "block_size: expected a power of two in [2, 1024], got ", block_size);
  TORCH_CHECK(scale_mode == "rceil" || scale_mode == "floor", "scale_mode: expected 'rceil' or 'floor', got '",
              scale_mode, "'");
  TORCH_CHECK(x_in.is_cuda(), "x: expected a CUDA tensor, got device ", x_in.device());
  TORCH_CHECK(x_in.dim() >= 1, "x: expected at least 1 dimension, got a 0-dim tensor");
  const at::ScalarType st = x_in.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf,
              "x: expected dtype float32, bfloat16 or float16, got ", st);
  const int dt = st == at::kFloat ? kInF32 : (st == at::kBFloat16 ? kInBF16 : kInF16);
  const int64_t K = x_in.size(-1);
  TORCH_CHECK(K % block_size == 0, "x: expected the last dim (", K, ") to be a multiple of block_size (", block_size,
              ")");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor rb, gs;
  if (rand_bits.has_value()) {
    TORCH_CHECK(rand_bits->scalar_type() == at::kInt, "rand_bits: expected dtype int32, got ", rand_bits->scalar_type());
    TORCH_CHECK(rand_bits->numel() == x.numel(), "rand_bits: expected ", x.numel(), " elements (the shape of x ",
                x.sizes(), "), got shape ", rand_bits->sizes());
    TORCH_CHECK(rand_bits->device() == x.device(), "rand_bits: expected device ", x.device(), ", got ",
                rand_bits->device());
    rb = rand_bits->contiguous();
  }
  if (spec.is_nv && global_scale.has_value()) {
    TORCH_CHECK(global_scale->numel() == 1, "global_scale: expected a tensor with one element, got shape ",
                global_scale->sizes());
    TORCH_CHECK(at::isFloatingType(global_scale->scalar_type()), "global_scale: expected a floating dtype, got ",
                global_scale->scalar_type());
    gs = global_scale->to(x.device(), at::kFloat).reshape({}).contiguous();
  }
  const ElemSpec el = elem_spec(spec.elem);
  at::Tensor codes = at::empty(with_last_dim(x.sizes(), el.bits == 4 ? K / 2 : K),
                               x.options().dtype(mx_code_dtype(spec.elem)));
  at::Tensor scales = at::empty(with_last_dim(x.sizes(), K / block_size),
                                x.options().dtype(spec.is_nv ? at::kFloat8_e4m3fn : at::kByte));
  at::Tensor g_out = at::empty({}, x.options().dtype(at::kFloat));
  at::Tensor scratch = at::empty({1}, x.options().dtype(at::kInt));
  const int err = leankern_mx_quantize_cuda(
      x.data_ptr(), dt, x.numel(), f, (int)block_size, scale_mode == "floor" ? 1 : 0,
      rb.defined() ? rb.data_ptr<int32_t>() : nullptr, gs.defined() ? gs.data_ptr<float>() : nullptr,
      g_out.data_ptr<float>(), (unsigned int*)scratch.data_ptr(), (uint8_t*)codes.data_ptr(),
      (uint8_t*)scales.data_ptr(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "mx_quantize_cpp (CUDA): kernel launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
  return std::make_tuple(codes, scales, g_out);
}

}  // namespace
}  // namespace cuda_binding
}  // namespace leankern

TORCH_LIBRARY_IMPL(leankern, CUDA, m) { m.impl("mx_quantize_cpp", &leankern::cuda_binding::mx_quantize_cuda); }
