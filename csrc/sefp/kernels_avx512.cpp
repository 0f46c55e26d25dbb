// AVX-512 (F/BW/VL/DQ) build of the SEFP inner loops: the portable bodies (kernels_impl.h) vectorized for
// AVX-512, plus the same transposed bit-plane kernels as AVX2 (planes_simd_impl.h: 256-bit, so the
// logic that runs here is the one tested on AVX2 machines). Every function carries a target
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
namespace avx512 {

#define LK_T __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) inline
#include "sefp/kernels_impl.h"
#include "sefp/planes_simd_impl.h"
#undef LK_T

}  // namespace avx512

const SefpKernels& avx512_kernels() {
  static const SefpKernels table = {&avx512::quantize_rows, &avx512::decode_row, &avx512::gemv_natural,
                                    &avx512::gemv_permuted, &avx512::decode_permuted};
  return table;
}

}  // namespace sefp
}  // namespace leankern

#endif
