// AVX-512 (F/BW/VL/DQ): 16 fp32 lanes build of the vocab inner loops (kernels_impl.h). Every function carries a target attribute;
// nothing here runs unless common/cpu_features.cpp found the ISA.
#if defined(__x86_64__) || defined(_M_X64)

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

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

// out[r] = the key of rank r (0: the largest) of n distinct keys, r < k <= n. Up to kRankMax keys: each key's rank
// is the number of larger keys, counted for 8 keys at once (a compare with a broadcast key and a masked add per 8 x
// 1 pairs, n^2 / 4 instructions, no data-dependent branch), where the selection + sort mispredict their comparisons:
// top-50 of ~57 keys, with building the keys, 1,200-1,500 -> ~870 TSC ticks at 2.6 GHz (Zen 4, one thread, rows in
// L2). More keys: that selection + sort.
constexpr int64_t kRankMax = 256;
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void rank_desc(uint64_t* keys, int64_t n, int64_t k,
                                                                           uint64_t* out) {
  if (n > kRankMax) return rank_desc_select(keys, n, k, out);
  const __m512i one = _mm512_set1_epi64(1);
  for (int64_t i = 0; i < n; i += 8) {
    const __mmask8 live = n - i >= 8 ? __mmask8(0xff) : __mmask8((1u << (n - i)) - 1);
    const __m512i mine = _mm512_maskz_loadu_epi64(live, keys + i);
    __m512i rank = _mm512_setzero_si512();
    for (int64_t j = 0; j < n; ++j)  // lanes whose key is below keys[j] move down one rank
      rank = _mm512_mask_add_epi64(rank, _mm512_cmplt_epu64_mask(mine, _mm512_set1_epi64(static_cast<long long>(keys[j]))),
                                   rank, one);
    alignas(64) uint64_t r[8];
    _mm512_store_si512(r, rank);
    for (int l = 0; l < 8 && i + l < n; ++l)
      if (static_cast<int64_t>(r[l]) < k) out[r[l]] = keys[i + l];
  }
}

}  // namespace avx512

const VocabKernels& avx512_kernels() {
  static const VocabKernels table = {&avx512::dots, &avx512::soft_cap, &avx512::sum_exp, &avx512::stats,
                                           &avx512::argmax_f32, &avx512::select_ge,
                                           &avx512::group_max, &avx512::count_ge, &avx512::rank_desc};
  return table;
}

}  // namespace vocab
}  // namespace leankern

#endif
