// AVX-512 build of the moe GEMV loops (kernels_impl.h, 16 fp32 lanes). Every function carries a target
// attribute; nothing here runs unless common/cpu_features.cpp found the ISA.
#if defined(__x86_64__) || defined(_M_X64)

#define LK_MOE_ISA_AVX512
#include <algorithm>

#include "moe/kernels.h"
#include "moe/vec.h"

namespace leankern {
namespace moe {
namespace avx512 {

using S = Avx512;
#define LK_T __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) inline
#include "moe/kernels_impl.h"
#undef LK_T

}  // namespace avx512

const MoeKernels& avx512_kernels() {
  static const MoeKernels table = {&avx512::gemv_rows, &avx512::gemv_cols};
  return table;
}

}  // namespace moe
}  // namespace leankern

#endif
