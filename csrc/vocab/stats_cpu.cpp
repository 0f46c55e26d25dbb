// CPU kernels of leankern::vocab_logit_stats and leankern::vocab_scatter_to_full (schemas and numerics:
// python/leankern/vocab/ops.py, ref.py).
//
// logit_stats: one read of each row (kernels.h stats: a block max pass and an exp pass over the same
// L1-resident block, online rescaling). Few rows: each row is cut into segments so both cores work,
// and the segments' partials are merged. A row that is not a distribution (NaN, +inf, all -inf) is
// recomputed by the scalar definition (ref.logit_stats_ref) instead.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/EmptyTensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <tuple>
#include <vector>

#include "common/parallel.h"
#include "vocab/checks.h"
#include "vocab/kernels.h"

namespace leankern {
namespace vocab {
namespace {

constexpr int64_t kMinSegment = 16384;  // elements; shorter segments are not worth a task

struct RowOut {
  float max, lse, ent, cert;
  int64_t argmax;
};

// ref.logit_stats_ref for a row that is not a distribution: max / argmax as torch.max (NaN wins, first
// NaN), logsumexp NaN / +inf / -inf, entropy and self-certainty NaN.
RowOut invalid_row(const void* x, int dt, int64_t V, float t) {
  RowOut r{-INFINITY, NAN, NAN, NAN, 0};
  bool nan = false, pinf = false;
  for (int64_t i = 0; i < V; ++i) {
    float v = load_scalar(x, dt, i);
    v = t == 1.0f ? v : v / t;
    if (std::isnan(v)) {
      if (!nan) {
        r.max = v;
        r.argmax = i;
      }
      nan = true;
    } else if (!nan && v > r.max) {
      r.max = v;
      r.argmax = i;
    }
    pinf |= v == INFINITY;
  }
  r.lse = nan ? NAN : pinf ? INFINITY : -INFINITY;
  return r;
}

RowOut merge(const StatsPartial* parts, int64_t n, int64_t V, const void* x, int dt, float t) {
  StatsPartial all;
  for (int64_t i = 0; i < n; ++i) {
    if (parts[i].bad) return invalid_row(x, dt, V, t);
    if (parts[i].m > all.m) {
      all.m = parts[i].m;
      all.argmax = parts[i].argmax;  // segments in index order: the first strict maximum is the lowest index
    }
  }
  if (all.m == -INFINITY) return invalid_row(x, dt, V, t);
  for (int64_t i = 0; i < n; ++i) {
    if (parts[i].m == -INFINITY) {  // a run of only -inf: its sum is -inf
      all.sumx += parts[i].sumx;
      continue;
    }
    const double d = static_cast<double>(parts[i].m) - all.m, f = std::exp(d);
    all.sumx += parts[i].sumx + static_cast<double>(parts[i].n) * d;
    all.s += f * parts[i].s;
    all.t += f * (parts[i].t + parts[i].s * d);
  }
  const double ls = std::log(all.s), lse = all.m + ls;
  RowOut r;
  r.max = all.m;
  r.argmax = all.argmax;
  r.lse = static_cast<float>(lse);
  r.ent = static_cast<float>(ls - all.t / all.s);
  // centred on the max (lse - mean(x) = ln s - mean(x - m)): no cancellation of two huge terms
  r.cert = static_cast<float>(ls - all.sumx / static_cast<double>(V) - std::log(static_cast<double>(V)));
  return r;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> vocab_logit_stats_cpu(const at::Tensor& logits,
                                                                                               double temperature) {
  check_float("logits", logits);
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(1) >= 1, "logits: expected shape [B, V] with V >= 1, got ",
                    checks::py_repr(logits.sizes()));
  TORCH_CHECK_VALUE(temperature > 0 && std::isfinite(temperature), "temperature: expected a finite value > 0, got ",
                    checks::py_float_repr(temperature));
  const at::Tensor x = logits.stride(1) == 1 ? logits : logits.contiguous();
  const int64_t B = x.size(0), V = x.size(1), rs = x.stride(0);
  const int dt = dtype_code(x);
  const float t = static_cast<float>(temperature);
  const int64_t esize = x.element_size();
  const char* base = static_cast<const char*>(x.data_ptr());
  const int64_t nt = at::get_num_threads();
  // segments per row: enough tasks for every core when B is small, none shorter than kMinSegment
  const int64_t want = B >= 2 * nt ? 1 : (2 * nt + B - 1) / std::max<int64_t>(B, 1);
  const int64_t nseg = std::max<int64_t>(1, std::min(want, V / kMinSegment));
  const int64_t seg = (V + nseg - 1) / nseg;
  std::vector<StatsPartial> parts(B * nseg);
  const VocabKernels& k = active_kernels();
  cpu::parallel_chunks(B * nseg, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / nseg, s = task % nseg;
      const int64_t begin = s * seg, end = std::min(V, begin + seg);
      k.stats(base + b * rs * esize, dt, begin, end, t, &parts[task]);
    }
  });
  // at::detail::empty_cpu, not at::empty: no trip through the dispatcher per output (5 outputs: 0.9 -> 0.57 us of
  // a 3.5 us call on a 64-logit row, Zen 4); every element is written below
  auto E = [&](at::ScalarType st) { return at::detail::empty_cpu({B}, st, false, std::nullopt); };
  at::Tensor mx = E(at::kFloat), lse = E(at::kFloat), ent = E(at::kFloat), cert = E(at::kFloat), am = E(at::kLong);
  for (int64_t b = 0; b < B; ++b) {
    const RowOut r = merge(parts.data() + b * nseg, nseg, V, base + b * rs * esize, dt, t);
    mx.data_ptr<float>()[b] = r.max;
    am.data_ptr<int64_t>()[b] = r.argmax;
    lse.data_ptr<float>()[b] = r.lse;
    ent.data_ptr<float>()[b] = r.ent;
    cert.data_ptr<float>()[b] = r.cert;
  }
  return std::make_tuple(mx, am, lse, ent, cert);
}

// ------------------------------------------------------------------------------- scatter_to_full
at::Tensor vocab_scatter_to_full_cpu(const at::Tensor& logits, const at::Tensor& vocab_ids, int64_t V, double fill) {
  check_float("logits", logits);
  TORCH_CHECK_VALUE(logits.dim() == 2, "logits: expected shape [B, K], got ", checks::py_repr(logits.sizes()));
  const int64_t B = logits.size(0), K = logits.size(1);
  checks::check_dtype("vocab_ids", vocab_ids, {at::kInt});
  checks::check_device("vocab_ids", vocab_ids, logits.device(), "logits");
  const bool shared = vocab_ids.dim() == 1 && vocab_ids.size(0) == K;
  TORCH_CHECK_VALUE(shared || (vocab_ids.dim() == 2 && vocab_ids.size(0) == B && vocab_ids.size(1) == K),
                    "vocab_ids: expected shape [K=", K, "] or [B=", B, ", K=", K, "], got ",
                    checks::py_repr(vocab_ids.sizes()));
  TORCH_CHECK_VALUE(V >= 1 && V < (int64_t(1) << 31), "V: expected a vocabulary size in [1, 2^31), got ", V);
  const at::Tensor ids = vocab_ids.contiguous();
  check_ids(ids.data_ptr<int32_t>(), ids.numel(), V);
  const at::Tensor src = logits.contiguous();
  // filled here, on the calling thread: an in-place op on a worker thread would not see inference mode
  at::Tensor out = at::full({B, V}, at::Scalar(fill), logits.options());
  const int64_t es = src.element_size();
  const int32_t* idp = ids.data_ptr<int32_t>();
  // rows in parallel: a row's writes stay in position order, so a repeated id keeps its last value
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      char* o = static_cast<char*>(out.data_ptr()) + b * V * es;
      const char* s = static_cast<const char*>(src.data_ptr()) + b * K * es;
      const int32_t* r = idp + (shared ? 0 : b * K);
      for (int64_t j = 0; j < K; ++j)
        if (r[j] >= 0) std::memcpy(o + static_cast<int64_t>(r[j]) * es, s + j * es, es);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(leankern, CPU, m) {
  m.impl("vocab_logit_stats", &vocab_logit_stats_cpu);
  m.impl("vocab_scatter_to_full", &vocab_scatter_to_full_cpu);
}

}  // namespace vocab
}  // namespace leankern
