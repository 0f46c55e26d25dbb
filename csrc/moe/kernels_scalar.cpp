// Portable build of the moe GEMV loops (kernels_impl.h over the 1-lane Scalar trait), and the ISA switch.
#include "common/cpu_features.h"
#include <algorithm>

#include "moe/kernels.h"
#include "moe/vec.h"

namespace leankern {
namespace moe {
namespace scalar {

using S = Scalar;
#define LK_T inline
#include "moe/kernels_impl.h"
#undef LK_T

}  // namespace scalar

const MoeKernels& scalar_kernels() {
  static const MoeKernels table = {&scalar::gemv_rows, &scalar::gemv_cols};
  return table;
}

const MoeKernels& active_kernels() {
#if defined(__x86_64__) || defined(_M_X64)
  if (cpu::active_isa() == cpu::Isa::kAvx512Bf16) return avx512bf16_kernels();
#endif
  return LK_ACTIVE_TABLE(scalar_kernels, avx2_kernels, avx512_kernels);
}

}  // namespace moe
}  // namespace leankern
