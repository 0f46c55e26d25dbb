// CPU kernel of leankern::specdec_verify_tree (schema: python/leankern/specdec/ops.py; rules:
// ref.verify_tree_ref). Node rows are evaluated once per call and shared by every path through the
// node; lazily (only nodes some path reaches) when requests run in parallel. Same work split and
// numerics as the chain op (rows.h, rowdist.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "common/parallel.h"
#include "specdec/checks.h"
#include "specdec/rows.h"

namespace leankern {
namespace specdec {
namespace {

struct Tree {
  const RowKernels* k;
  Mode mode;
  int64_t B, N, V, P, D1;
  const int32_t* tokens;
  const int32_t* cu;
  const int32_t* ri;  // [B, P, D1]
  Rows logits;
  const float* temp;
  int64_t radius, lo, hi;
  double eps, delta;
  int32_t *out, *nacc, *best_path;

  RowParams params(int64_t b) const {
    RowParams p;  // trees: no top-k / top-p (ref._tree_accepts)
    if (temp) p.t = temp[b];
    return p;
  }
  int64_t request_of(int64_t i) const { return std::upper_bound(cu, cu + B, static_cast<int32_t>(i)) - cu; }

  void evaluate(int64_t i, int64_t b, RowStats& st, Scratch& sc) const {
    st = RowStats();
    const RowParams p = params(b);
    eval_argmax(*k, logits.at(i), V, &st, false, sc);
    // typical: the bound of S now (every edge from this node uses it); the exact pass only if needed
    if (mode == kTypical && begin_sampled(p, &st)) st.F = k->bound_sum(logits.at(i).data, logits.dtype, V, p.t, st.m);
    st.done = true;
  }

  // ref._tree_accepts: does node row i (valid) accept `token`?
  bool accepts(int64_t b, int64_t i, RowStats& st, int64_t token, Scratch& sc) const {
    if (!st.greedy) return typical_accepts(*k, logits.at(i), V, params(b), &st, token, eps, delta, sc);
    return mode == kRelaxed ? relaxed_match(token, st.argmax, radius, lo, hi) : token == st.argmax;
  }

  // Request b; st: its nodes' stats (evaluated here when not done yet).
  void solve(int64_t b, RowStats* st, Scratch& sc) const {
    const int64_t base = b ? cu[b - 1] : 0;
    auto get = [&](int64_t local) -> RowStats& {
      if (!st[local].done) evaluate(base + local, b, st[local], sc);
      return st[local];
    };
    int64_t best = -1, best_len = -1;
    for (int64_t p = 0; p < P && best_len < D1 - 1; ++p) {  // a full-length path cannot be beaten
      const int32_t* path = ri + (b * P + p) * D1;
      if (path[0] < 0) continue;  // an unused path slot
      int64_t n = 0;
      for (int64_t j = 1; j < D1 && path[j] >= 0; ++j) {
        RowStats& parent = get(path[j - 1]);
        if (!parent.valid || !accepts(b, base + path[j - 1], parent, tokens[base + path[j]], sc)) break;
        ++n;
      }
      if (n > best_len) {
        best = p;
        best_len = n;
      }
    }
    const int64_t n = std::max<int64_t>(best_len, 0);
    const int32_t root_only = 0;
    const int32_t* path = best >= 0 ? ri + (b * P + best) * D1 : &root_only;
    int32_t* o = out + b * D1;
    std::fill(o, o + D1, -1);
    for (int64_t j = 1; j <= n; ++j) o[j - 1] = tokens[base + path[j]];
    const RowStats& last = get(path[n]);
    o[n] = last.valid ? last.argmax : -1;
    nacc[b] = static_cast<int32_t>(n);
    best_path[b] = static_cast<int32_t>(best);
  }
};

void run_tree(const Tree& t) {
  static thread_local std::vector<RowStats> stats;
  const Split split = choose_split(t.B, t.N, t.V, t.mode == kTypical);
  stats.assign(t.N, RowStats());
  RowStats* st = stats.data();
  if (split == Split::kSerial) {
    Scratch& sc = thread_scratch();
    for (int64_t b = 0; b < t.B; ++b) t.solve(b, st + (b ? t.cu[b - 1] : 0), sc);
  } else if (split == Split::kRequests) {
    cpu::parallel_chunks(t.B, 1, [&](int64_t b0, int64_t b1) {
      Scratch& sc = thread_scratch();
      for (int64_t b = b0; b < b1; ++b) t.solve(b, st + (b ? t.cu[b - 1] : 0), sc);
    });
  } else {
    cpu::parallel_chunks(t.N, row_grain(t.V), [&](int64_t r0, int64_t r1) {
      Scratch& sc = thread_scratch();
      for (int64_t i = r0; i < r1; ++i) t.evaluate(i, t.request_of(i), st[i], sc);
    });
    Scratch& sc = thread_scratch();
    for (int64_t b = 0; b < t.B; ++b) t.solve(b, st + (b ? t.cu[b - 1] : 0), sc);
  }
}

// ops.check_tree_values' retrieve_indices rule: local indices in [-1, count), column 0 is 0 or -1,
// -1 only as trailing padding.
void check_retrieve_values(const int32_t* ri, const int32_t* cu, int64_t B, int64_t P, int64_t D1) {
  bool ok = true;
  for (int64_t b = 0; b < B && ok; ++b) {
    const int64_t count = static_cast<int64_t>(cu[b]) - (b ? cu[b - 1] : 0);
    for (int64_t p = 0; p < P && ok; ++p) {
      const int32_t* path = ri + (b * P + p) * D1;
      ok = path[0] == 0 || path[0] == -1;
      bool padded = false;
      for (int64_t j = 0; j < D1 && ok; ++j) {
        ok = path[j] >= -1 && path[j] < count && (!padded || path[j] == -1);
        padded |= path[j] < 0;
      }
    }
  }
  TORCH_CHECK_VALUE(ok, "retrieve_indices: expected local node indices in [-1, nodes of the request), column 0 equal "
                        "to 0 (the root) or -1 (unused path), and -1 only as trailing padding");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> specdec_verify_tree_cpu(
    const at::Tensor& tree_token_ids, const at::Tensor& cu_num_nodes, const at::Tensor& node_logits,
    const at::Tensor& retrieve_indices, const std::optional<at::Tensor>& temperature, c10::string_view mode_name,
    int64_t relax_radius, int64_t action_lo, int64_t action_hi, double typical_eps, double typical_delta) {
  // ops._check_tree
  const Mode mode = check_rules(mode_name, true, relax_radius, typical_eps, typical_delta);
  check_logits("node_logits", node_logits, "[N, V]");
  const int64_t N = node_logits.size(0), V = node_logits.size(1);
  const at::Device dev = node_logits.device();
  check_on("tree_token_ids", tree_token_ids, {at::kInt}, dev, "node_logits");
  checks::check_shape("tree_token_ids", tree_token_ids, {N});
  check_on("cu_num_nodes", cu_num_nodes, {at::kInt}, dev, "node_logits");
  TORCH_CHECK_VALUE(cu_num_nodes.dim() == 1, "cu_num_nodes: expected shape [B], got ",
                    checks::py_repr(cu_num_nodes.sizes()));
  const int64_t B = cu_num_nodes.size(0);
  check_on("retrieve_indices", retrieve_indices, {at::kInt}, dev, "node_logits");
  TORCH_CHECK_VALUE(retrieve_indices.dim() == 3 && retrieve_indices.size(0) == B && retrieve_indices.size(2) >= 1,
                    "retrieve_indices: expected shape [B=", B, ", P, D+1] with D+1 >= 1, got ",
                    checks::py_repr(retrieve_indices.sizes()));
  check_per_request("temperature", temperature, at::kFloat, B, dev, "node_logits");

  // ops.check_tree_values
  const at::Tensor ids = tree_token_ids.contiguous(), cu = cu_num_nodes.contiguous();
  const at::Tensor ri = retrieve_indices.contiguous();
  const std::optional<at::Tensor> temp_c =
      temperature.has_value() ? std::optional<at::Tensor>(temperature->contiguous()) : std::nullopt;
  check_ids("tree_token_ids", ids.data_ptr<int32_t>(), N, V);
  check_cumulative("cu_num_nodes", cu.data_ptr<int32_t>(), B, N, "N (tree_token_ids.numel())", 1);
  check_sampling_values(opt_ptr<float>(temp_c), nullptr, nullptr, B, nullptr, 0);
  const int64_t P = ri.size(1), D1 = ri.size(2);
  check_retrieve_values(ri.data_ptr<int32_t>(), cu.data_ptr<int32_t>(), B, P, D1);

  const auto i32 = node_logits.options().dtype(at::kInt);
  at::Tensor out = at::empty({B, D1}, i32), num_accepted = at::empty({B}, i32), best_path = at::empty({B}, i32);
  const at::Tensor nl = unit_inner(node_logits);
  Tree t{&active_row_kernels(), mode, B, N, V, P, D1, ids.data_ptr<int32_t>(), cu.data_ptr<int32_t>(),
         ri.data_ptr<int32_t>(), rows_of(nl), opt_ptr<float>(temp_c), relax_radius, action_lo, action_hi,
         typical_eps, typical_delta, out.data_ptr<int32_t>(), num_accepted.data_ptr<int32_t>(),
         best_path.data_ptr<int32_t>()};
  run_tree(t);
  return std::make_tuple(out, num_accepted, best_path);
}

}  // namespace

TORCH_LIBRARY_IMPL(leankern, CPU, m) { m.impl("specdec_verify_tree", &specdec_verify_tree_cpu); }

}  // namespace specdec
}  // namespace leankern
