// AVX2 build of the moe GEMV loops (kernels_impl.h, 8 fp32 lanes). Every function carries a target attribute; nothing
// here runs unless common/cpu_features.cpp found the ISA.
#if defined(__x86_64__) || defined(_M_X64)

#define LK_MOE_ISA_AVX2
#include <algorithm>

#include "moe/kernels.h"
#include "moe/vec.h"

namespace leankern {
namespace moe {
namespace avx2 {

using S = Avx2;
#define LK_T __attribute__((target("avx2,fma,f16c"))) inline
#include "moe/kernels_impl.h"
#undef LK_T

}  // namespace avx2

const MoeKernels& avx2_kernels() {
  static const MoeKernels table = {&avx2::gemv_rows, &avx2::gemv_cols};
  return table;
}

}  // namespace moe
}  // namespace leankern

#endif
