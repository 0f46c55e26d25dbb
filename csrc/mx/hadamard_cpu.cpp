// CPU kernel of the public op leankern::hadamard_transform (schema declared in Python:
// python/leankern/mx/ops.py): fast Walsh-Hadamard transform over each power-of-two chunk of the
// last dim, fp32 butterflies in the reference's order (h = 1, 2, 4, ...), then * fp32(scale), then
// * signs; output in x's dtype. Bit-exact with hadamard_transform_ref on every ISA.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <vector>

#include "common/output_cache.h"
#include "common/parallel.h"
#include "common/torch_checks.h"
#include "mx/formats.h"
#include "mx/kernels.h"
#include "mx/mx_torch.h"

namespace leankern {
namespace mx {
namespace {

void check_hadamard_args(const at::Tensor& x, int64_t chunk_size, double scale,
                         const std::optional<at::Tensor>& signs) {
  check_float_dtype("x", x);
  checks::check_min_dim("x", x, 1);
  checks::check_power_of_two("chunk_size", chunk_size, kMinChunkSize, kMaxChunkSize);
  checks::check_divisible("x.shape[-1]", x.size(-1), "chunk_size", chunk_size);
  TORCH_CHECK_VALUE(std::isfinite(scale), "scale: expected a finite float, got ", checks::py_float_repr(scale));
  if (signs.has_value()) {
    checks::check_dtype("signs", *signs, {at::kFloat});
    checks::check_device("signs", *signs, x.device(), "x");
    checks::check_shape("signs", *signs, {chunk_size});
  }
}

at::Tensor hadamard_transform_cpu(const at::Tensor& x_in, int64_t chunk_size, double scale,
                                  const std::optional<at::Tensor>& signs) {
  check_hadamard_args(x_in, chunk_size, scale, signs);
  const at::Tensor sg = signs.has_value() ? signs->contiguous() : at::Tensor();
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = cpu::empty_output(x.sizes(), x.options());
  const int dt = in_dtype_code(x.scalar_type());
  const HadamardFn fn = active_kernels().hadamard;
  const int64_t grain = std::max<int64_t>(1, 65536 / chunk_size);
  cpu::parallel_chunks(x.numel() / chunk_size, grain, [&](int64_t c0, int64_t c1) {
    std::vector<float> work((size_t)chunk_size + 16);
    void* wp = work.data();
    size_t space = work.size() * sizeof(float);  // 64-byte aligned: store -> load forwarding in the passes
    float* w = static_cast<float*>(std::align(64, (size_t)chunk_size * sizeof(float), wp, space));
    HadamardArgs h{x.data_ptr(), dt, (int)chunk_size, (float)scale, sg.defined() ? sg.data_ptr<float>() : nullptr,
                   out.data_ptr(), w};
    fn(h, c0, c1);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(leankern, CPU, m) { m.impl("hadamard_transform", &hadamard_transform_cpu); }

}  // namespace mx
}  // namespace leankern
