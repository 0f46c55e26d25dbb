// AVX2 (+F16C) build of the generic SIMD kernels (mx_simd_impl.h, hadamard_simd_impl.h). Every
// function here carries a target attribute; the baseline (-O3, no -m flags) never executes any of
// it unless common/cpu_features.cpp found the ISA at run time.
#if defined(__x86_64__) || defined(_M_X64)

#include "common/bits.h"
#include "common/simd_avx2.h"
#include "mx/formats.h"
#include "mx/kernels.h"
#include "mx/scalar_kernels.h"

namespace leankern {
namespace mx {
namespace avx2 {

using V = cpu::V256;
#define LK_T __attribute__((target("avx2,f16c"))) inline
#include "mx/mx_simd_impl.h"
#include "mx/hadamard_simd_impl.h"
#undef LK_T

}  // namespace avx2

const KernelTable& avx2_kernels() {
  static const KernelTable table = {&avx2::quantize, &avx2::dequantize, &avx2::hadamard, &avx2::nv_amax, &avx2::linear,
                                    &avx2::linear_packed};
  return table;
}

}  // namespace mx
}  // namespace leankern

#endif
