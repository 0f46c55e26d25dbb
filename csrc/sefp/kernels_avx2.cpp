// AVX2 (+FMA/F16C) build of the SEFP inner loops: the portable bodies (kernels_impl.h) vectorized for
// AVX2, plus the transposed bit-plane kernels (planes_simd_impl.h). Every function carries a target
// attribute; nothing here runs unless common/cpu_features.cpp found the ISA.
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "sefp/hsum_avx2.h"
#include "sefp/kernels.h"

namespace leankern {
namespace sefp {
namespace avx2 {

#define LK_T __attribute__((target("avx2,fma,f16c"))) inline
#include "sefp/kernels_impl.h"
#include "sefp/planes_simd_impl.h"
#undef LK_T

}  // namespace avx2

const SefpKernels& avx2_kernels() {
  static const SefpKernels table = {&avx2::quantize_rows, &avx2::decode_row, &avx2::gemv_natural,
                                    &avx2::gemv_permuted, &avx2::decode_permuted};
  return table;
}

}  // namespace sefp
}  // namespace leankern

#endif
