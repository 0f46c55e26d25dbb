// Portable build of the vocab inner loops (kernels_impl.h over the 1-lane Scalar trait), and the ISA switch.
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "common/cpu_features.h"
#include "vocab/kernels.h"
#include "vocab/vec.h"

namespace leankern {
namespace vocab {
namespace scalar {

using S = Scalar;
#define LK_T inline
#include "vocab/kernels_impl.h"
#undef LK_T

}  // namespace scalar

const VocabKernels& scalar_kernels() {
  static const VocabKernels table = {&scalar::dots, &scalar::soft_cap, &scalar::sum_exp, &scalar::stats,
                                           &scalar::argmax_f32, &scalar::select_ge,
                                           &scalar::group_max, &scalar::count_ge, &scalar::rank_desc};
  return table;
}

const VocabKernels& active_kernels() {
#if defined(__x86_64__) || defined(_M_X64)
  if (cpu::active_isa() == cpu::Isa::kAvx512Bf16) return avx512bf16_kernels();
#endif
  return LK_ACTIVE_TABLE(scalar_kernels, avx2_kernels, avx512_kernels);
}

}  // namespace vocab
}  // namespace leankern
