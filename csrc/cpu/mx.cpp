// CPU implementations of the MX/NV block-format ops: mx_quantize_cpp and mx_dequantize_cpp
// (schemas in csrc/bindings.cpp). Validation and allocation happen here; the per-ISA kernels
// (mx_avx512.cpp, mx_avx2.cpp, scalar_kernels.h) run over flat block ranges, two cores via
// at::parallel_for. Results are bit-exact with python/leankern/ref/mx.py on every ISA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/mx_common.h"
#include "mx_torch_common.h"
#include "cpu/mx_kernels.h"
#include "cpu/output_cache.h"
#include "cpu/parallel.h"
#include "cpu/scalar_kernels.h"

namespace leankern {
namespace cpu {

const KernelTable& scalar_kernels() {
  static const KernelTable table = {&quantize_range_scalar, &dequantize_range_scalar, &hadamard_range_scalar,
                                    &nv_amax_scalar};
  return table;
}

const KernelTable& active_kernels() {
#if defined(__x86_64__) || defined(_M_X64)
  switch (active_isa()) {
    case Isa::kAvx512:
      return avx512_kernels();
    case Isa::kAvx2:
      return avx2_kernels();
    default:
      break;
  }
#endif
  return scalar_kernels();
}

namespace {

// Blocks per parallel task: ~64K elements, so tasks are large but both cores get work.
int64_t grain_blocks(int64_t block_size) { return std::max<int64_t>(1, 65536 / block_size); }

int in_dtype_code(at::ScalarType st, const char* what) {
  switch (st) {
    case at::kFloat:
      return kInF32;
    case at::kBFloat16:
      return kInBF16;
    case at::kHalf:
      return kInF16;
    default:
      TORCH_CHECK(false, what, ": expected dtype float32, bfloat16 or float16, got ", st);
  }
  return -1;
}

int check_format(c10::string_view fmt) {
  int f = find_format(std::string(fmt).c_str());
  TORCH_CHECK(f >= 0, "fmt: expected one of mxfp8_e4m3, mxfp8_e5m2, mxfp6_e2m3, mxfp6_e3m2, mxfp4, mxint8, "
              "mxint6, mxint4, nvfp4, nvint4 (or mxfp8, mxfp6), got '", fmt, "'");
  return f;
}

void check_block_size(int64_t bs) {
  TORCH_CHECK(bs >= 2 && bs <= 1024 && (bs & (bs - 1)) == 0,
              "block_size: expected a power of two in [2, 1024], got ", bs);
}

float read_scalar_f32(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.numel() == 1, what, ": expected a tensor with one element, got shape ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), what, ": expected a floating dtype, got ", t.scalar_type());
  return t.to(at::kFloat).reshape({}).item<float>();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mx_quantize_cpu(const at::Tensor& x_in, c10::string_view fmt,
                                                               int64_t block_size, c10::string_view scale_mode,
                                                               const c10::optional<at::Tensor>& rand_bits,
                                                               const c10::optional<at::Tensor>& global_scale) {
  const int f = check_format(fmt);
  const FormatSpec& spec = kFormats[f];
  const ElemParams p = elem_params(spec.elem);
  check_block_size(block_size);
  TORCH_CHECK(scale_mode == "rceil" || scale_mode == "floor", "scale_mode: expected 'rceil' or 'floor', got '",
              scale_mode, "'");
  TORCH_CHECK(x_in.device().is_cpu(), "x: expected a CPU tensor, got device ", x_in.device());
  TORCH_CHECK(x_in.dim() >= 1, "x: expected at least 1 dimension, got a 0-dim tensor");
  const int dt = in_dtype_code(x_in.scalar_type(), "x");
  const int64_t K = x_in.size(-1);
  TORCH_CHECK(K % block_size == 0, "x: expected the last dim (", K, ") to be a multiple of block_size (",
              block_size, ")");
  const at::Tensor x = x_in.contiguous();
  at::Tensor rb;
  if (rand_bits.has_value()) {
    rb = rand_bits->contiguous();
    TORCH_CHECK(rb.scalar_type() == at::kInt, "rand_bits: expected dtype int32, got ", rb.scalar_type());
    TORCH_CHECK(rb.device().is_cpu(), "rand_bits: expected a CPU tensor, got device ", rb.device());
    TORCH_CHECK(rb.numel() == x.numel(), "rand_bits: expected ", x.numel(), " elements (the shape of x ",
                x.sizes(), "), got shape ", rb.sizes());
  }
  const int64_t numel = x.numel(), nblocks = numel / block_size;
  at::Tensor codes =
      empty_output(with_last_dim(x.sizes(), p.bits == 4 ? K / 2 : K),
                   x.options().dtype(mx_code_dtype(spec.elem)));
  at::Tensor scales = empty_output(with_last_dim(x.sizes(), K / block_size),
                                   x.options().dtype(spec.is_nv ? at::kFloat8_e4m3fn : at::kByte));
  const KernelTable& kern = active_kernels();

  QuantArgs q{x.data_ptr(), dt, (int)block_size, f, scale_mode == "floor" ? 1 : 0,
              rb.defined() ? rb.data_ptr<int32_t>() : nullptr, 1.0f, 0,
              (uint8_t*)codes.data_ptr(), (uint8_t*)scales.data_ptr()};
  if (spec.is_nv && global_scale.has_value()) {
    q.g = read_scalar_f32(*global_scale, "global_scale");
  } else if (spec.is_nv) {  // same chunking as the quantize pass below: parked block maxima line up
    std::atomic<uint32_t> amax{0};
    parallel_chunks(nblocks, grain_blocks(block_size), [&](int64_t b0, int64_t b1) {
      const uint32_t m = kern.nv_amax(q, b0, b1);
      for (uint32_t cur = amax.load(); m > cur && !amax.compare_exchange_weak(cur, m);) {
      }
    });
    q.g = nv_global_scale(amax.load(), p);
    q.amax_parked = 1;
  }
  const float g = q.g;
  parallel_chunks(nblocks, grain_blocks(block_size), [&](int64_t b0, int64_t b1) { kern.quantize(q, b0, b1); });
  at::Tensor g_out = at::scalar_tensor(g, at::TensorOptions().dtype(at::kFloat));
  return std::make_tuple(codes, scales, g_out);
}

at::Tensor mx_dequantize_cpu(const at::Tensor& codes_in, const at::Tensor& scales_in, const at::Tensor& global_scale,
                             c10::string_view fmt, int64_t block_size, at::ScalarType out_dtype) {
  const int f = check_format(fmt);
  const FormatSpec& spec = kFormats[f];
  const ElemParams p = elem_params(spec.elem);
  check_block_size(block_size);
  const int odt = in_dtype_code(out_dtype, "out_dtype");
  TORCH_CHECK(codes_in.device().is_cpu() && scales_in.device().is_cpu(), "codes, scales: expected CPU tensors, got ",
              codes_in.device(), " and ", scales_in.device());
  const at::ScalarType cdt = mx_code_dtype(spec.elem);
  TORCH_CHECK(codes_in.scalar_type() == cdt || codes_in.scalar_type() == at::kByte, "codes: expected dtype ", cdt,
              " (or uint8) for ", spec.name, ", got ", codes_in.scalar_type());
  const at::ScalarType sdt = spec.is_nv ? at::kFloat8_e4m3fn : at::kByte;
  TORCH_CHECK(scales_in.scalar_type() == sdt || scales_in.scalar_type() == at::kByte, "scales: expected dtype ", sdt,
              " for ", spec.name, ", got ", scales_in.scalar_type());
  TORCH_CHECK(codes_in.dim() >= 1, "codes: expected at least 1 dimension, got a 0-dim tensor");
  const int64_t K = codes_in.size(-1) * (p.bits == 4 ? 2 : 1);
  TORCH_CHECK(K % block_size == 0, "codes: expected ", K, " elements per row to be a multiple of block_size (",
              block_size, ")");
  const std::vector<int64_t> scale_shape = with_last_dim(codes_in.sizes(), K / block_size);
  TORCH_CHECK(scales_in.sizes() == at::IntArrayRef(scale_shape), "scales: expected shape ",
              at::IntArrayRef(scale_shape), " for codes of shape ", codes_in.sizes(), " and block_size ", block_size,
              ", got ", scales_in.sizes());
  const float g = read_scalar_f32(global_scale, "global_scale");
  const at::Tensor codes = codes_in.contiguous(), scales = scales_in.contiguous();
  at::Tensor out = empty_output(with_last_dim(codes.sizes(), K), codes.options().dtype(out_dtype));
  const int64_t nblocks = out.numel() / block_size;
  DequantArgs q{(const uint8_t*)codes.data_ptr(), (const uint8_t*)scales.data_ptr(), g, (int)block_size, f, odt,
                out.data_ptr()};
  const KernelTable& kern = active_kernels();
  parallel_chunks(nblocks, grain_blocks(block_size), [&](int64_t b0, int64_t b1) { kern.dequantize(q, b0, b1); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(leankern, CPU, m) {
  m.impl("mx_quantize_cpp", &mx_quantize_cpu);
  m.impl("mx_dequantize_cpp", &mx_dequantize_cpu);
}

}  // namespace cpu
}  // namespace leankern
