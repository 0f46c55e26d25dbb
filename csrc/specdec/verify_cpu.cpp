// CPU kernel of leankern::specdec_verify (schema: python/leankern/specdec/ops.py; rules: ref.verify_ref).
//
// Each request accepts a prefix of its drafts, then emits one token. A row is read only if its
// request reaches it (rows behind a rejection never are): the argmax pass always; for a sampled
// decision bounds of S first (rowdist.h), the exact weight pass only when they do not settle it or
// the row is sampled from (its rejection, or the bonus); the residual pass only for a rejected row,
// from the weights the exact pass kept. Work split: rows.h; with few requests, a row that is sampled
// from has its exact pass and residual split over the threads (sample_split). Bit-identical with the
// reference on every ISA (numerics.h).
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

struct Chain {
  const RowKernels* k;
  Mode mode;
  int64_t B, T, V, width, nblk;
  const int32_t* drafts;
  const int32_t* cu;
  Rows target, bonus, q;
  bool has_q;
  const float *u, *temp, *topp;
  const int32_t* topk;
  int64_t radius, lo, hi;
  double eps, delta;
  int32_t *out, *nacc;

  RowParams params(int64_t b) const {
    RowParams p;
    if (temp) p.t = temp[b];
    if (topk) p.top_k = topk[b];
    if (topp) p.top_p = topp[b];
    return p;
  }
  bool sampled(const RowParams& p) const { return (mode == kRejection || mode == kTypical) && p.t != 0.0f; }
  RowRef row(int64_t i) const { return i < T ? target.at(i) : bonus.at(i - T); }

  // Everything row i's decision and its emitted token need. A sampled row that ends its request (a
  // rejected draft, or the bonus row) is sampled at once, while its weights W are still in this
  // thread's scratch: the residual and the sampling scan then read W instead of recomputing exp.
  // defer (the kRows split): leave that exact pass and sample to sample_split (need_sample), which runs
  // them on every thread, unless the decision itself needed the exact pass.
  void evaluate(int64_t i, int64_t b, RowStats& st, Scratch& sc, bool defer = false) const {
    st = RowStats();
    const RowParams p = params(b);
    eval_argmax(*k, row(i), V, &st, i < T && sampled(p), sc);  // block maxima: a free bound of S
    if (sampled(p) && begin_sampled(p, &st)) {
      const double u_extra = mode == kRejection ? static_cast<double>(u[T + b]) : 0.0;
      int64_t* blocks = sc.block_buf(nblk);
      if (i >= T) {
        if (mode == kRejection && defer && !p.filtered(V)) {
          st.need_sample = true;
        } else if (mode == kRejection) {  // the bonus is sampled
          eval_exact(*k, row(i), V, p, &st, blocks, true, sc);
          st.emit = sample_kept(row(i), V, p, st, blocks, u_extra, -1);
        }
      } else if (mode == kRejection) {
        const int64_t x = drafts[i];
        const RowRef q_row = has_q ? q.at(i) : RowRef{nullptr, kF32};
        const double qx = has_q ? static_cast<double>(clamp_q(load_scalar(q_row.data, q.dtype, x))) : 1.0;
        st.accept =
            rejection_accepts(*k, row(i), V, p, &st, x, qx, static_cast<double>(u[i]), blocks, true, sc, defer, q_row);
        if (!st.accept && !st.has_exact) st.need_sample = true;
        else if (!st.accept)
          st.emit = sample_rejected(*k, row(i), V, p, st, blocks, x, has_q ? &q_row : nullptr, u_extra, sc);
      } else {
        st.accept = typical_accepts(*k, row(i), V, p, &st, drafts[i], eps, delta, sc);
      }
    }
    st.block_max = nullptr;  // this thread's scratch: the next row overwrites it
    st.W = nullptr;
    st.done = true;
  }

  // The deferred sample of row i (need_sample: a sure rejection or the bonus row, no top-k / top-p) with
  // its exact pass and residual split over the threads by element range (whole kBlocks: block sums
  // and exact int64 totals do not depend on the split). For few requests (the kRows split) this one
  // row is most of the call, and one thread alone would leave the other idle.
  int64_t sample_split(int64_t i, int64_t b, RowStats& st) const {
    static thread_local std::vector<float> wbuf;
    static thread_local std::vector<int64_t> blocks, rb;
    const RowParams p = params(b);
    const RowRef r = row(i);
    wbuf.resize(V);
    blocks.resize(nblk);
    rb.resize(nblk);
    float* W = wbuf.data();
    int64_t *bl = blocks.data(), *rbp = rb.data();  // names, not thread_locals, inside the workers
    const int64_t nt = std::max<int64_t>(1, at::get_num_threads());
    const int64_t per = (nblk + nt - 1) / nt * kBlock;  // elements per part
    const int64_t parts = (V + per - 1) / per;
    std::vector<int64_t> part(parts);
    const int64_t esz = r.dtype == kF32 ? 4 : 2, qesz = q.dtype == kF32 ? 4 : 2;
    cpu::parallel_chunks(parts, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t o = c * per, n = std::min(per, V - o);
        const char* qp = i < T && has_q ? static_cast<const char*>(q.at(i).data) + o * qesz : nullptr;
        part[c] = k->weight_sum(static_cast<const char*>(r.data) + o * esz, r.dtype, n, p.t, st.m, 1, bl + o / kBlock,
                                W + o, qp, q.dtype);
      }
    });
    st.S = 0;
    for (int64_t v : part) st.S += v;
    st.w_min = 1;
    st.W = W;
    st.has_exact = true;
    const double ue = static_cast<double>(u[T + b]);
    int64_t emit;
    if (i >= T || !has_q) {
      emit = sample_kept(r, V, p, st, bl, ue, i >= T ? -1 : drafts[i]);
    } else {
      const RowRef q_row = q.at(i);
      const double S = static_cast<double>(st.S);
      cpu::parallel_chunks(parts, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t o = c * per, n = std::min(per, V - o);
          part[c] = k->residual_sum_w(W + o, n, 1, static_cast<const char*>(q_row.data) + o * qesz, q_row.dtype, S,
                                      rbp + o / kBlock);
        }
      });
      int64_t total = 0;
      for (int64_t v : part) total += v;
      emit = sample_from_residual(r, V, p, st, bl, q_row, ue, rbp, total);
    }
    st.W = nullptr;
    st.need_sample = false;
    return emit;
  }

  // Does draft row i (evaluated) end its request? (invalid, mismatch, or a sampled rejection)
  bool stops(int64_t i, const RowStats& st) const {
    if (!st.valid) return true;
    if (!st.greedy) return !st.accept;
    const int64_t x = drafts[i];
    return !(mode == kRelaxed ? relaxed_match(x, st.argmax, radius, lo, hi) : x == st.argmax);
  }

  // ref._verify_one for request b. stats: null = evaluate lazily (into a local); else all rows evaluated.
  void finish(int64_t b, RowStats* stats, Scratch& sc) const {
    const int64_t s = b ? cu[b - 1] : 0, n = cu[b] - s;
    int32_t* o = out + b * width;
    std::fill(o, o + width, -1);
    RowStats local;
    auto get = [&](int64_t i) -> RowStats& {
      RowStats& st = stats ? stats[i] : local;
      if (!stats || !st.done) evaluate(i, b, st, sc);
      return st;
    };
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = s + j, x = drafts[i];
      RowStats& st = get(i);
      int64_t emit = x;
      const bool stop = stops(i, st);
      if (!st.valid) emit = -1;
      else if (st.greedy) emit = stop ? st.argmax : x;
      else if (stop && st.need_sample) emit = sample_split(i, b, st);
      else if (stop) emit = mode == kTypical ? st.argmax : st.emit;  // the residual's sample
      o[j] = static_cast<int32_t>(emit);
      if (stop) {
        nacc[b] = static_cast<int32_t>(j);
        return;
      }
    }
    RowStats& st = get(T + b);
    int64_t emit = st.argmax;
    if (!st.valid) emit = -1;
    else if (st.need_sample) emit = sample_split(T + b, b, st);
    else if (mode == kRejection && !st.greedy) emit = st.emit;  // the bonus row's sample
    o[n] = static_cast<int32_t>(emit);
    nacc[b] = static_cast<int32_t>(n);
  }
};

// Rows at least this long have their deferred sample split over the threads (sample_split); shorter
// ones are sampled by the thread that evaluated them. Measured (Zen 4, 1 x 5, rejection + q): no gain
// at V = 8,192 (the two extra parallel regions cost what half a row saves), -15% at 16,384, -18% at
// 32,000 and -28% at 151,936 (bf16).
constexpr int64_t kSplitRowMinV = 16384;

// The kRows split: positions in request order (request b: its drafts, then its bonus row) handed out to
// every thread in increasing order; a row behind a known rejection of its request is skipped, so at
// most a few rows per request are evaluated in vain. Then the requests are finished serially.
void run_rows(const Chain& c) {
  static thread_local std::vector<RowStats> stats;
  static thread_local std::vector<int64_t> stop_at;
  const int64_t rows = c.T + c.B;
  stats.assign(rows, RowStats());
  stop_at.assign(c.B, INT64_MAX);
  // pointers, not the names: inside the workers a thread_local name is the worker's own
  RowStats* st = stats.data();
  int64_t* stop = stop_at.data();
  const bool defer = c.V >= kSplitRowMinV;
  cpu::parallel_chunks(rows, row_grain(c.V), [&](int64_t p0, int64_t p1) {
    Scratch& sc = thread_scratch();
    for (int64_t pos = p0; pos < p1; ++pos) {
      // request b holds positions [cu[b-1] + b, cu[b] + b]
      int64_t lo = 0, hi = c.B - 1;
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (static_cast<int64_t>(c.cu[mid]) + mid >= pos) hi = mid;
        else lo = mid + 1;
      }
      const int64_t b = lo, s = b ? c.cu[b - 1] : 0, j = pos - s - b, n = c.cu[b] - s;
      if (j > __atomic_load_n(&stop[b], __ATOMIC_RELAXED)) continue;
      const int64_t i = j < n ? s + j : c.T + b;
      c.evaluate(i, b, st[i], sc, defer);
      if (j < n && c.stops(i, st[i])) {
        int64_t cur = __atomic_load_n(&stop[b], __ATOMIC_RELAXED);
        while (j < cur && !__atomic_compare_exchange_n(&stop[b], &cur, j, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        }
      }
    }
  });
  Scratch& sc = thread_scratch();
  for (int64_t b = 0; b < c.B; ++b) c.finish(b, st, sc);
}

void run_chain(const Chain& c) {
  const bool sampled = c.mode == kRejection || c.mode == kTypical;
  const Split split = choose_split(c.B, c.T + c.B, c.V, sampled);
  if (split == Split::kSerial) {
    Scratch& sc = thread_scratch();
    for (int64_t b = 0; b < c.B; ++b) c.finish(b, nullptr, sc);
  } else if (split == Split::kRequests) {
    cpu::parallel_chunks(c.B, 1, [&](int64_t b0, int64_t b1) {
      Scratch& sc = thread_scratch();
      for (int64_t b = b0; b < b1; ++b) c.finish(b, nullptr, sc);
    });
  } else {
    run_rows(c);
  }
}

std::tuple<at::Tensor, at::Tensor> specdec_verify_cpu(
    const at::Tensor& draft_token_ids, const at::Tensor& cu_num_draft_tokens, const at::Tensor& target_logits,
    const at::Tensor& bonus_logits, const std::optional<at::Tensor>& draft_probs,
    const std::optional<at::Tensor>& uniforms, const std::optional<at::Tensor>& temperature,
    const std::optional<at::Tensor>& top_k, const std::optional<at::Tensor>& top_p, c10::string_view mode_name,
    int64_t max_drafts, int64_t relax_radius, int64_t action_lo, int64_t action_hi, double typical_eps,
    double typical_delta) {
  // ops._check_verify: shapes, dtypes, devices, scalars
  const Mode mode = check_rules(mode_name, false, relax_radius, typical_eps, typical_delta);
  check_logits("target_logits", target_logits, "[T, V]");
  const at::Device dev = target_logits.device();
  const int64_t T = target_logits.size(0), V = target_logits.size(1);
  check_on("draft_token_ids", draft_token_ids, {at::kInt}, dev, "target_logits");
  checks::check_shape("draft_token_ids", draft_token_ids, {T});
  check_on("cu_num_draft_tokens", cu_num_draft_tokens, {at::kInt}, dev, "target_logits");
  TORCH_CHECK_VALUE(cu_num_draft_tokens.dim() == 1, "cu_num_draft_tokens: expected shape [B], got ",
                    checks::py_repr(cu_num_draft_tokens.sizes()));
  const int64_t B = cu_num_draft_tokens.size(0);
  check_on("bonus_logits", bonus_logits, {at::kFloat, at::kBFloat16, at::kHalf}, dev, "target_logits");
  checks::check_shape("bonus_logits", bonus_logits, {B, V});
  if (draft_probs.has_value()) {
    check_on("draft_probs", *draft_probs, {at::kFloat, at::kBFloat16, at::kHalf}, dev, "target_logits");
    checks::check_shape("draft_probs", *draft_probs, {T, V});
  }
  if (uniforms.has_value()) {
    check_on("uniforms", *uniforms, {at::kFloat}, dev, "target_logits");
    checks::check_shape("uniforms", *uniforms, {T + B});
  } else {
    TORCH_CHECK_VALUE(mode != kRejection,
                      "uniforms: mode='rejection' needs random numbers: pass uniforms [T + B] (or seed= to "
                      "leankern.specdec.verify), got None");
  }
  check_per_request("temperature", temperature, at::kFloat, B, dev, "target_logits");
  check_per_request("top_k", top_k, at::kInt, B, dev, "target_logits");
  check_per_request("top_p", top_p, at::kFloat, B, dev, "target_logits");
  TORCH_CHECK_VALUE(max_drafts >= 0, "max_drafts: expected >= 0, got ", max_drafts);

  // ops.check_verify_values: before any row is read
  const at::Tensor ids = draft_token_ids.contiguous(), cu = cu_num_draft_tokens.contiguous();
  auto contig = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
  };
  const auto temp_c = contig(temperature), topk_c = contig(top_k), topp_c = contig(top_p), u_c = contig(uniforms);
  check_ids("draft_token_ids", ids.data_ptr<int32_t>(), T, V);
  const int64_t max_count =
      check_cumulative("cu_num_draft_tokens", cu.data_ptr<int32_t>(), B, T, "T (draft_token_ids.numel())", 0);
  TORCH_CHECK_VALUE(B == 0 || max_count <= max_drafts,
                    "max_drafts: expected >= the largest per-request draft count, got ", max_drafts, " < ",
                    max_count);
  check_sampling_values(opt_ptr<float>(temp_c), opt_ptr<int32_t>(topk_c), opt_ptr<float>(topp_c), B,
                        opt_ptr<float>(u_c), T + B);

  at::Tensor out = at::empty({B, max_drafts + 1}, target_logits.options().dtype(at::kInt));
  at::Tensor num_accepted = at::empty({B}, target_logits.options().dtype(at::kInt));
  const at::Tensor tl = unit_inner(target_logits), bl = unit_inner(bonus_logits);
  const at::Tensor qp = draft_probs.has_value() ? unit_inner(*draft_probs) : at::Tensor();
  Chain c{&active_row_kernels(), mode, B, T, V, max_drafts + 1, num_blocks(V), ids.data_ptr<int32_t>(),
          cu.data_ptr<int32_t>(), rows_of(tl), rows_of(bl), qp.defined() ? rows_of(qp) : Rows(), qp.defined(),
          opt_ptr<float>(u_c), opt_ptr<float>(temp_c), opt_ptr<float>(topp_c), opt_ptr<int32_t>(topk_c),
          relax_radius, action_lo, action_hi, typical_eps, typical_delta, out.data_ptr<int32_t>(),
          num_accepted.data_ptr<int32_t>()};
  run_chain(c);
  return std::make_tuple(out, num_accepted);
}

}  // namespace

TORCH_LIBRARY_IMPL(leankern, CPU, m) { m.impl("specdec_verify", &specdec_verify_cpu); }

}  // namespace specdec
}  // namespace leankern
