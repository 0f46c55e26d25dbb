// AVX-512 (F/BW/VL/DQ) build of the generic SIMD kernels (mx_simd_impl.h,
// hadamard_simd_impl.h). Every function here carries a target attribute; the baseline (-O3, no -m
// flags) never executes any of it unless common/cpu_features.cpp found the ISA at run time.
#if defined(__x86_64__) || defined(_M_X64)

#include "common/bits.h"
#include "common/simd_avx512.h"
#include "mx/formats.h"
#include "mx/kernels.h"
#include "mx/scalar_kernels.h"

namespace leankern {
namespace mx {
namespace avx512 {

using V = cpu::V512;
#define LK_T __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c"))) inline
#include "mx/mx_simd_impl.h"
#include "mx/hadamard_simd_impl.h"
#undef LK_T

}  // namespace avx512

const KernelTable& avx512_kernels() {
  static const KernelTable table = {&avx512::quantize, &avx512::dequantize, &avx512::hadamard, &avx512::nv_amax,
                                    &avx512::linear, &avx512::linear_packed};
  return table;
}

const KernelTable& avx512bf16_kernels() {
  static const KernelTable table = [] {
    KernelTable t = avx512_kernels();
    t.linear_packed_bf16 = &avx512::linear_packed_bf16;
    t.linear_packed_int8 = &avx512::linear_packed_int8;
    t.linear_packed_bf16_small = &avx512::linear_packed_bf16_small;
    t.linear_packed_amx = &avx512::linear_packed_amx;
    return t;
  }();
  return table;
}

}  // namespace mx
}  // namespace leankern

#endif
