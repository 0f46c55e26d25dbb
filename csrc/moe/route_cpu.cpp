// CPU kernels of leankern::moe_route, moe_skip and moe_align (schemas and numerics: python/leankern/moe/ops.py,
// ref.py).
//
// moe_route: the scores are torch's own softmax / sigmoid of the fp32 logits (at::softmax, at::sigmoid: the
// reference's kernels, so the scores, hence the selected ids, are bit-equal to the reference even on near ties);
// then per row, over both cores: bias, NaN -> -inf, group mask, top-k by insertion into a sorted list (ties: lowest
// id), gather; the renormalising sums are torch.sum of the gathered [T, k] weights (the reference's own reduction
// order); then division, scaling and the skip rule (skip_row.h). Ids and weights are bit-equal to the reference.
// moe_skip: skip_row over the rows. moe_align: histogram, prefix sum, ordered scatter (one thread: O(T k + E)).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "common/parallel.h"
#include "moe/checks.h"
#include "moe/skip_row.h"

namespace leankern {
namespace moe {
namespace {

constexpr int64_t kRowsPerTask = 64;

struct RouteArgs {
  const float* score;  // [T, E] fp32 (unbiased)
  const float* bias;   // [E] fp32 or null
  int64_t E, k, n_group, topk_group;
  bool renormalize;
  float rsf;
  bool scale;  // rsf != 1
};

// Group mask of ref._group_mask for one row of selection scores: non-kept groups' entries become -inf.
void mask_groups(const RouteArgs& a, float* sel) {
  const int64_t G = a.n_group, gsz = a.E / G;
  float gs[1024];  // n_group <= E; groups beyond 1024 fall back to a heap buffer
  std::vector<float> heap;
  float* g = gs;
  if (G > 1024) {
    heap.resize(G);
    g = heap.data();
  }
  for (int64_t q = 0; q < G; ++q) {
    const float* v = sel + q * gsz;
    if (a.bias != nullptr) {  // sum of the two best (sort descending, first two)
      float b1 = -INFINITY, b2 = -INFINITY;
      for (int64_t i = 0; i < gsz; ++i) {
        if (v[i] > b1) {
          b2 = b1;
          b1 = v[i];
        } else if (v[i] > b2) {
          b2 = v[i];
        }
      }
      g[q] = gsz >= 2 ? (0.0f + b1) + b2 : 0.0f + b1;
    } else {
      float m = v[0];
      for (int64_t i = 1; i < gsz; ++i) m = v[i] > m ? v[i] : m;
      g[q] = m;
    }
  }
  // keep the topk_group best groups (ties: lowest group): a group is dropped when >= topk_group others rank before it
  for (int64_t q = 0; q < G; ++q) {
    int64_t before = 0;
    for (int64_t o = 0; o < G; ++o) before += (g[o] > g[q]) || (g[o] == g[q] && o < q);
    if (before >= a.topk_group)
      for (int64_t i = 0; i < gsz; ++i) sel[q * gsz + i] = -INFINITY;
  }
}

// Selection of one row: ids (highest selection score first, ties to the lowest id) and w = the unbiased scores.
void select_row(const RouteArgs& a, int64_t t, float* sel, int32_t* ids, float* w) {
  const float* score = a.score + t * a.E;
  for (int64_t e = 0; e < a.E; ++e) {
    float s = a.bias ? score[e] + a.bias[e] : score[e];
    sel[e] = std::isnan(s) ? -INFINITY : s;
  }
  if (a.n_group > 1) mask_groups(a, sel);
  // top-k: scan ids ascending, insert after equal values
  float best[kMaxTopk];
  int64_t n = 0;
  for (int64_t e = 0; e < a.E; ++e) {
    const float v = sel[e];
    if (n == a.k && !(v > best[n - 1])) continue;
    int64_t i = n < a.k ? n++ : n - 1;
    while (i > 0 && v > best[i - 1]) {
      best[i] = best[i - 1];
      ids[i] = ids[i - 1];
      --i;
    }
    best[i] = v;
    ids[i] = (int32_t)e;
  }
  for (int64_t j = 0; j < a.k; ++j) w[j] = score[ids[j]];
}

// Renormalisation (sum: the row's torch.sum, computed by the caller), scaling, then the skip rule.
void finish_row(const RouteArgs& a, const SkipRule& rule, const float* sum, int32_t m, int32_t* ids, float* w) {
  for (int64_t j = 0; j < a.k; ++j) {
    if (a.renormalize) w[j] = w[j] / *sum;
    if (a.scale) w[j] = w[j] * a.rsf;
  }
  if (rule.rule != kNone || rule.renormalize) skip_row(rule, a.k, m, ids, w);
}

std::tuple<at::Tensor, at::Tensor> moe_route_cpu(const at::Tensor& router_logits, int64_t top_k,
                                                 c10::string_view scoring, bool renormalize, int64_t n_group,
                                                 int64_t topk_group, const std::optional<at::Tensor>& correction_bias,
                                                 double routed_scaling_factor, c10::string_view skip_rule,
                                                 at::ArrayRef<double> skip_params,
                                                 const std::optional<at::Tensor>& modality, bool skip_renormalize) {
  check_route(router_logits, top_k, scoring, n_group, topk_group, correction_bias, routed_scaling_factor);
  const std::vector<double> params(skip_params.begin(), skip_params.end());
  const int64_t T = router_logits.size(0), E = router_logits.size(1);
  const int r = check_skip_args(skip_rule, params, modality, T, router_logits.device());
  at::Tensor mod;
  if (modality.has_value()) {
    mod = modality->contiguous();
    check_modality_values(mod.data_ptr<int32_t>(), T);
  }
  auto ids = at::empty({T, top_k}, router_logits.options().dtype(at::kInt));
  auto w = at::empty({T, top_k}, router_logits.options().dtype(at::kFloat));
  if (T == 0) return {ids, w};
  const at::Tensor z = router_logits.to(at::kFloat);
  const at::Tensor score = (scoring == "softmax" ? at::softmax(z, -1) : at::sigmoid(z)).contiguous();
  at::Tensor bias;
  if (correction_bias.has_value()) bias = correction_bias->to(at::kFloat).contiguous();
  RouteArgs a{score.data_ptr<float>(), bias.defined() ? bias.data_ptr<float>() : nullptr, E, top_k, n_group,
              topk_group, renormalize, (float)routed_scaling_factor, routed_scaling_factor != 1.0};
  const SkipRule rule = make_skip_rule(r, params, skip_renormalize);
  const int32_t* m = mod.defined() ? mod.data_ptr<int32_t>() : nullptr;
  int32_t* ip = ids.data_ptr<int32_t>();
  float* wp = w.data_ptr<float>();
  cpu::parallel_chunks(T, kRowsPerTask, [&](int64_t t0, int64_t t1) {
    std::vector<float> sel(E);
    for (int64_t t = t0; t < t1; ++t) select_row(a, t, sel.data(), ip + t * top_k, wp + t * top_k);
  });
  // torch.sum of the [T, k] weights, as the reference: its addition order depends on T and k (vectorised,
  // several accumulators), and a 1-ulp difference would move the fused skip rule's thresholds
  const at::Tensor sums = renormalize ? w.sum(-1) : at::Tensor();
  const float* sp = renormalize ? sums.data_ptr<float>() : nullptr;
  cpu::parallel_chunks(T, kRowsPerTask, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      finish_row(a, rule, sp ? sp + t : nullptr, m ? m[t] : 0, ip + t * top_k, wp + t * top_k);
  });
  return {ids, w};
}

std::tuple<at::Tensor, at::Tensor> moe_skip_cpu(const at::Tensor& topk_ids, const at::Tensor& topk_weights,
                                                c10::string_view rule_name, at::ArrayRef<double> skip_params,
                                                const std::optional<at::Tensor>& modality, bool renormalize) {
  const auto [T, k] = check_skip(topk_ids, topk_weights);
  const std::vector<double> params(skip_params.begin(), skip_params.end());
  const int r = check_skip_args(rule_name, params, modality, T, topk_ids.device());
  at::Tensor mod;
  if (modality.has_value()) {
    mod = modality->contiguous();
    check_modality_values(mod.data_ptr<int32_t>(), T);
  }
  at::Tensor ids = topk_ids.contiguous().clone();
  // ids < -1 are errors, not skipped slots (experts would no longer reject them); no E here: ids >= E pass through
  check_ids_values(ids.data_ptr<int32_t>(), T * k, k, kIdBoundInt32, "topk_ids", false);
  at::Tensor w = topk_weights.contiguous().clone();
  const SkipRule rule = make_skip_rule(r, params, renormalize);
  const int32_t* m = mod.defined() ? mod.data_ptr<int32_t>() : nullptr;
  int32_t* ip = ids.data_ptr<int32_t>();
  float* wp = w.data_ptr<float>();
  cpu::parallel_chunks(T, 256, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) skip_row(rule, k, m ? m[t] : 0, ip + t * k, wp + t * k);
  });
  return {ids, w};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe_align_cpu(const at::Tensor& topk_ids,
                                                                         int64_t num_experts, int64_t block_m,
                                                                         const std::optional<at::Tensor>& expert_map) {
  check_align(topk_ids, num_experts, block_m, expert_map);
  const at::Tensor ids_c = topk_ids.contiguous();
  const int64_t n = ids_c.numel(), k = ids_c.dim() == 2 ? ids_c.size(1) : 1;
  const int32_t* ids = ids_c.data_ptr<int32_t>();
  at::Tensor map_c;
  const int32_t* map = nullptr;
  if (expert_map.has_value()) {
    map_c = expert_map->contiguous();
    map = map_c.data_ptr<int32_t>();
    check_ids_values(ids, n, k, map_c.numel(), "topk_ids", false);
    check_ids_values(map, map_c.numel(), 1, num_experts, "expert_map", false);
  } else {
    check_ids_values(ids, n, k, num_experts, "topk_ids", false);
  }
  const int64_t E = num_experts;
  const int64_t s_max = n + E * (block_m - 1), b_max = (s_max + block_m - 1) / block_m;
  const auto i32 = topk_ids.options().dtype(at::kInt);
  at::Tensor sorted = at::full({s_max}, -1, i32), offsets = at::empty({E + 1}, i32),
             blocks = at::full({b_max}, -1, i32), num_kept = at::empty({1}, i32);
  std::vector<int64_t> count(E, 0), fill(E + 1, 0);
  auto local = [&](int64_t s) -> int32_t { return ids[s] >= 0 && map ? map[ids[s]] : ids[s]; };
  int64_t kept = 0;
  for (int64_t s = 0; s < n; ++s) {
    const int32_t e = local(s);
    if (e >= 0) {
      ++count[e];
      ++kept;
    }
  }
  int32_t* off = offsets.data_ptr<int32_t>();
  int32_t* blk = blocks.data_ptr<int32_t>();
  off[0] = 0;
  int64_t b = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t nb = (count[e] + block_m - 1) / block_m;
    fill[e] = off[e];
    off[e + 1] = (int32_t)(off[e] + nb * block_m);
    for (int64_t i = 0; i < nb; ++i) blk[b++] = (int32_t)e;
  }
  int32_t* out = sorted.data_ptr<int32_t>();
  for (int64_t s = 0; s < n; ++s) {
    const int32_t e = local(s);
    if (e >= 0) out[fill[e]++] = (int32_t)s;
  }
  num_kept.data_ptr<int32_t>()[0] = (int32_t)kept;
  return {sorted, offsets, blocks, num_kept};
}

}  // namespace

TORCH_LIBRARY_IMPL(leankern, CPU, m) {
  m.impl("moe_route", &moe_route_cpu);
  m.impl("moe_skip", &moe_skip_cpu);
  m.impl("moe_align", &moe_align_cpu);
}

}  // namespace moe
}  // namespace leankern
