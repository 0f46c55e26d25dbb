// CPU implementation of hadamard_transform_cpp (schema in csrc/bindings.cpp): fast
// Walsh-Hadamard transform over each power-of-two chunk of the last dim, fp32 butterflies in the
// reference's order (h = 1, 2, 4, ...), then * fp32(scale), then * signs; output in x's dtype.
// Bit-exact with hadamard_transform_ref on every ISA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/mx_common.h"
#include "cpu/mx_kernels.h"
#include "cpu/output_cache.h"
#include "cpu/parallel.h"

namespace leankern {
namespace cpu {
namespace {

at::Tensor hadamard_transform_cpu(const at::Tensor& x_in, int64_t chunk_size, double scale,
                                  const c10::optional<at::Tensor>& signs) {
  TORCH_CHECK(x_in.device().is_cpu(), "x: expected a CPU tensor, got device ", x_in.device());
  const at::ScalarType st = x_in.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf,
              "x: expected dtype float32, bfloat16 or float16, got ", st);
  TORCH_CHECK(chunk_size >= 2 && chunk_size <= 32768 && (chunk_size & (chunk_size - 1)) == 0,
              "chunk_size: expected a power of two in [2, 32768], got ", chunk_size);
  TORCH_CHECK(x_in.dim() >= 1, "x: expected at least 1 dimension, got a 0-dim tensor");
  TORCH_CHECK(x_in.size(-1) % chunk_size == 0, "x: expected the last dim (", x_in.size(-1),
              ") to be a multiple of chunk_size (", chunk_size, ")");
  at::Tensor sg;
  if (signs.has_value()) {
    TORCH_CHECK(signs->dim() == 1 && signs->size(0) == chunk_size, "signs: expected shape [", chunk_size,
                "], got ", signs->sizes());
    TORCH_CHECK(at::isFloatingType(signs->scalar_type()), "signs: expected a floating dtype, got ",
                signs->scalar_type());
    sg = signs->to(at::kFloat).contiguous();
  }
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = empty_output(x.sizes(), x.options());
  const int dt = st == at::kFloat ? kInF32 : (st == at::kBFloat16 ? kInBF16 : kInF16);
  const int64_t nchunks = x.numel() / chunk_size;
  const HadamardFn fn = active_kernels().hadamard;
  const int64_t grain = std::max<int64_t>(1, 65536 / chunk_size);
  parallel_chunks(nchunks, grain, [&](int64_t c0, int64_t c1) {
    std::vector<float> work((size_t)chunk_size + 16);
    float* w = (float*)(((uintptr_t)work.data() + 63) & ~(uintptr_t)63);  // aligned: store -> load forwarding
    HadamardArgs h{x.data_ptr(), dt, (int)chunk_size, (float)scale, sg.defined() ? sg.data_ptr<float>() : nullptr,
                   out.data_ptr(), w};
    fn(h, c0, c1);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(leankern, CPU, m) { m.impl("hadamard_transform_cpp", &hadamard_transform_cpu); }

}  // namespace cpu
}  // namespace leankern
