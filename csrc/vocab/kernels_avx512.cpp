// AVX-512 (F/BW/VL/DQ): 16 fp32 lanes build of the vocab inner loops (kernels_impl.h). Every function carries a target attribute;
// nothing here runs unless common/cpu_features.cpp found the ISA.
#if defined(__x86_64__) || defined(_M_X64)

#include <algorithm>
#include <cmath>

#define LK_VOCAB_ISA_AVX512
#include "vocab/kernels.h"
#include "vocab/vec.h"

namespace leankern {
namespace vocab {
namespace avx512 {

using S = Avx512;
#define LK_T __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) inline
#include "vocab/kernels_impl.h"
#undef LK_T

}  // namespace avx512

const VocabKernels& avx512_kernels() {
  static const VocabKernels table = {&avx512::dots, &avx512::soft_cap, &avx512::sum_exp, &avx512::stats,
                                           &avx512::argmax_f32, &avx512::select_ge};
  return table;
}

}  // namespace vocab
}  // namespace leankern

#endif
