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

const MoeKernels& active_kernels() { return LK_ACTIVE_TABLE(scalar_kernels, avx2_kernels, avx512_kernels); }

}  // namespace moe
}  // namespace leankern
