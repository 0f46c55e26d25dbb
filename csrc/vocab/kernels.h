// Inner loops of the vocab CPU ops, one table per ISA (scalar, AVX2, AVX-512), chosen at run time
// (common/cpu_features.h). The torch-facing ops (head_cpu.cpp, stats_cpu.cpp) split the work over
// threads and call these on one chunk at a time.
#pragma once

#include <cstdint>

namespace leankern {
namespace vocab {

// Partial statistics of a run of one logit row (x / t), merged by stats_cpu.cpp.
struct StatsPartial {
  float m = -INFINITY;  // maximum
  int64_t argmax = -1;  // lowest index of the maximum (global index)
  double s = 0;         // sum exp(x - m)
  double t = 0;         // sum exp(x - m) (x - m)
  double sumx = 0;      // sum (x - m)
  int64_t n = 0;        // elements summed
  bool bad = false;     // a NaN or +inf: the row is recomputed by the exact fallback
};

struct VocabKernels {
  // out[b * ldo + j] = sum_h hidden[b * ldh + h] * row_j[h] (fp32 products, fp32 sums) for b < B and
  // the n rows row_j = weight + rows[j] * row_stride (elements of dtype wdt; rows[j] >= 0, checked).
  void (*dots)(const float* hidden, int64_t ldh, int64_t B, int64_t H, const void* weight, int wdt,
               int64_t row_stride, const int64_t* rows, int64_t n, float* out, int64_t ldo);
  // z[i] = scale * cap * tanh(z[i] / cap) in place (cap > 0).
  void (*soft_cap)(float* z, int64_t n, float cap, float scale);
  // sum over i of exp(z[i] - m) (z[i] <= m; -inf terms give 0).
  double (*sum_exp)(const float* z, int64_t n, float m);
  // Statistics of x[begin, end) of a row of dtype dt at temperature t (1: no division); index0 = begin's
  // index in the row (for argmax).
  void (*stats)(const void* x, int dt, int64_t begin, int64_t end, float t, StatsPartial* out);
  // The first NaN of z[0, n) if any, else the first maximum (n >= 1).
  int64_t (*argmax_f32)(const float* z, int64_t n);
  // Positions (in order) of z[0, n) with z >= thr or NaN, into idx; returns the count.
  int64_t (*select_ge)(const float* z, int64_t n, float thr, int32_t* idx);
  // The top-k bar (head_cpu.cpp row_topk). group_max: g[l] = the largest non-NaN z[i] with i % G == l (-inf if
  // none), G a multiple of 16. count_ge: how many of g[0, G) are >= t (G a multiple of 16, no NaN in g).
  void (*group_max)(const float* z, int64_t n, int64_t G, float* g);
  int64_t (*count_ge)(const float* g, int64_t G, float t);
  // out[r] = the key of rank r (0: the largest) of the n distinct keys, for r < k <= n; may reorder keys.
  void (*rank_desc)(uint64_t* keys, int64_t n, int64_t k, uint64_t* out);
  // dots for bf16 hidden rows (bf16 bits, row stride ldh) and bf16 weight rows: exact products and fp32 sums with
  // AVX512-BF16 dot products (bf16 subnormal inputs count as 0). nullptr below the avx512bf16 ISA.
  void (*dots_bf16)(const uint16_t* hidden, int64_t ldh, int64_t B, int64_t H, const uint16_t* weight,
                    int64_t row_stride, const int64_t* rows, int64_t n, float* out, int64_t ldo) = nullptr;
  // The same dots on AMX tiles (TDPBF16PS: exact products, fp32 sums in H order) from hidden packed as B tiles,
  // hv = [ceil(B / 16), H / 32, 16, 16] int32, element (g, s, q, c) = the bf16 pair (hidden[16 g + c, 32 s + 2 q],
  // hidden[16 g + c, 32 s + 2 q + 1]) (rows past B zero); H % 32 == 0. Set in the avx512bf16 table; the op calls
  // it only where cpu::amx_enabled().
  void (*dots_bf16_amx)(const int32_t* hv, int64_t B, int64_t H, const uint16_t* weight, int64_t row_stride,
                        const int64_t* rows, int64_t n, float* out, int64_t ldo) = nullptr;
};

const VocabKernels& scalar_kernels();
const VocabKernels& avx2_kernels();
const VocabKernels& avx512_kernels();
const VocabKernels& avx512bf16_kernels();  // avx512's plus dots_bf16, dots_bf16_amx
const VocabKernels& active_kernels();  // the table of the active ISA (leankern._C.set_cpu_isa / LEANKERN_CPU_ISA)

}  // namespace vocab
}  // namespace leankern
