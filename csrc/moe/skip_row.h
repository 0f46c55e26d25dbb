// One row of ref.skip_ref, exactly: the same fp32 / fp64 operations in the same order, so ids are equal and
// weights bit-equal to the reference. Used by moe_skip and by moe_route's fused skip.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "moe/checks.h"

namespace leankern {
namespace moe {

struct SkipRule {
  int rule = kNone;
  float alpha[3] = {0, 0, 1}, tau[3] = {0, 0, 0};  // modes, fp32 like the reference's tensors
  double p = 0;                                    // naee / top_p / min_p / top_k parameter
  float p32 = 0;                                   // p as the fp32 multiplier of a tensor-scalar product
  bool renormalize = false;
};

inline SkipRule make_skip_rule(int rule, const std::vector<double>& p, bool renormalize) {
  SkipRule s;
  s.rule = rule;
  s.renormalize = renormalize;
  if (rule == kModes) {
    s.alpha[0] = (float)p[0];
    s.alpha[1] = (float)p[1];
    s.tau[0] = (float)p[2];
    s.tau[1] = (float)p[3];
  } else if (rule != kNone) {
    s.p = p[0];
    s.p32 = (float)p[0];
  }
  return s;
}

// torch.sort(descending=True) order: NaN first, then larger; equal keys keep their index order (stable).
inline bool ranks_before(float a, float b) {
  if (std::isnan(a)) return !std::isnan(b);
  return !std::isnan(b) && a > b;
}

// Row of k slots in place: ids (any id < 0 is "not valid", written -1 when not kept) and fp32 weights.
// m: the row's modality code (0 when none given).
inline void skip_row(const SkipRule& s, int64_t k, int32_t m, int32_t* ids, float* w) {
  bool valid[kMaxTopk], keep[kMaxTopk];
  for (int64_t j = 0; j < k; ++j) {
    valid[j] = ids[j] >= 0;
    if (!valid[j]) w[j] = 0.0f;  // masked_fill(~valid, 0.0)
  }
  if (s.rule == kNone) {
    for (int64_t j = 0; j < k; ++j) keep[j] = valid[j];
  } else if (s.rule == kModes) {
    const float a = s.alpha[m], t = s.tau[m];
    for (int64_t j = 0; j < k; ++j) keep[j] = valid[j] && (m == 2 || a * w[j] >= t);
  } else {
    // rank by key = w (valid) or -inf (invalid), highest first, ties lowest slot: insertion sort (stable)
    int order[kMaxTopk];
    float key[kMaxTopk];
    for (int64_t j = 0; j < k; ++j) key[j] = valid[j] ? w[j] : -INFINITY;
    for (int64_t j = 0; j < k; ++j) {
      int64_t i = j;
      while (i > 0 && ranks_before(key[j], key[order[i - 1]])) {
        order[i] = order[i - 1];
        --i;
      }
      order[i] = (int)j;
    }
    bool rank_keep[kMaxTopk];
    if (s.rule == kTopK) {
      for (int64_t r = 0; r < k; ++r) rank_keep[r] = (double)r < s.p;
    } else if (s.rule == kTopP) {
      double cum[kMaxTopk], acc = 0;
      for (int64_t r = 0; r < k; ++r) cum[r] = acc = acc + (double)w[order[r]];
      const double total = s.p * cum[k - 1];
      for (int64_t r = 0; r < k; ++r) rank_keep[r] = cum[r] - (double)w[order[r]] < total;
      rank_keep[0] = true;
    } else {  // naee / min_p
      const float thr = s.p32 * w[order[0]];
      for (int64_t r = 0; r < k; ++r) rank_keep[r] = w[order[r]] >= thr;
      rank_keep[0] = true;
    }
    for (int64_t r = 0; r < k; ++r) keep[order[r]] = rank_keep[r] && valid[order[r]];
  }
  float total = 0.0f, kept = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    total = total + w[j];
    const float o = keep[j] ? w[j] : 0.0f;
    kept = kept + o;
    w[j] = o;
    if (!keep[j]) ids[j] = -1;
  }
  if (s.renormalize) {
    const float scale = kept > 0 ? total / kept : 0.0f;
    for (int64_t j = 0; j < k; ++j) w[j] = w[j] * scale;
  }
}

}  // namespace moe
}  // namespace leankern
