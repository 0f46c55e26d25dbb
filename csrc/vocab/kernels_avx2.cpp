// AVX2 (+FMA/F16C): 8 fp32 lanes build of the vocab inner loops (kernels_impl.h). Every function carries a target attribute;
// nothing here runs unless common/cpu_features.cpp found the ISA.
#if defined(__x86_64__) || defined(_M_X64)

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#define LK_VOCAB_ISA_AVX2
#include "vocab/kernels.h"
#include "vocab/vec.h"

namespace leankern {
namespace vocab {
namespace avx2 {

using S = Avx2;
#define LK_T __attribute__((target("avx2,fma,f16c"))) inline
#include "vocab/kernels_impl.h"
#undef LK_T

}  // namespace avx2

const VocabKernels& avx2_kernels() {
  static const VocabKernels table = {&avx2::dots, &avx2::soft_cap, &avx2::sum_exp, &avx2::stats,
                                           &avx2::argmax_f32, &avx2::select_ge,
                                           &avx2::group_max, &avx2::count_ge, &avx2::rank_desc};
  return table;
}

}  // namespace vocab
}  // namespace leankern

#endif
