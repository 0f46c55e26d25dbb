// AVX2 (+F16C) build of the generic SIMD kernels (mx_simd_impl.h). Every function here
// carries a target attribute; the baseline (-O3, no -m flags) never executes any of it unless
// cpu_features.cpp found the ISA at run time.
#if defined(__x86_64__) || defined(_M_X64)

#include "cpu/mx_common.h"
#include "cpu/mx_kernels.h"
#include "cpu/scalar_kernels.h"
#include "cpu/simd_avx2.h"

namespace leankern {
namespace cpu {
namespace avx2 {

using V = V256;
#define LK_T __attribute__((target("avx2,f16c"))) inline
#include "cpu/mx_simd_impl.h"
#include "cpu/hadamard_simd_impl.h"
#undef LK_T

}  // namespace avx2

const KernelTable& avx2_kernels() {
  static const KernelTable table = {&avx2::quantize, &avx2::dequantize, &avx2::hadamard, &avx2::nv_amax};
  return table;
}

}  // namespace cpu
}  // namespace leankern

#endif
