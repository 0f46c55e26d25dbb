// ref.RowDist and its decisions on top of the per-ISA row passes (row_kernels.h).
#include "specdec/rowdist.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include <c10/util/Exception.h>

#include "specdec/numerics.h"

namespace leankern {
namespace specdec {
namespace {

// numerics.keep_threshold: the smallest kept weight under top-k, then top-p. w [V] is left as is.
// (W is fp32 holding exact integers: their order and sums are those of the int64 weights.)
int64_t keep_threshold(const float* w, int64_t V, int64_t top_k, double top_p, std::vector<float>& buf) {
  int64_t w_min = 1;
  buf.resize(V);
  if (top_k > 0 && top_k < V) {
    std::copy(w, w + V, buf.begin());
    std::nth_element(buf.begin(), buf.begin() + (top_k - 1), buf.begin() + V, std::greater<float>());
    w_min = std::max<int64_t>(w_min, static_cast<int64_t>(buf[top_k - 1]));
  }
  if (top_p < 1.0) {
    int64_t n = 0, s_k = 0;
    for (int64_t i = 0; i < V; ++i)
      if (static_cast<int64_t>(w[i]) >= w_min) {
        buf[n++] = w[i];
        s_k += static_cast<int64_t>(w[i]);
      }
    const double sk = static_cast<double>(s_k);
    // The kept values are the largest ones: walk them in descending order until a value's mass strictly
    // above it reaches top_p. Sort the top 2048 first; all of them kept (rare): sort the rest as well.
    int64_t sorted = std::min<int64_t>(n, 2048), above = 0, last_ok = static_cast<int64_t>(buf[0]), i = 0;
    auto desc = std::greater<float>();
    if (sorted < n) std::nth_element(buf.begin(), buf.begin() + sorted, buf.begin() + n, desc);
    std::sort(buf.begin(), buf.begin() + sorted, desc);
    for (;;) {
      for (; i < sorted; ++i) {
        const int64_t v = static_cast<int64_t>(buf[i]);
        if (i == 0 || buf[i] != buf[i - 1]) {  // first occurrence: `above` = mass of the larger values
          if (!(static_cast<double>(above) / sk < top_p)) goto done;
          last_ok = v;
        }
        above += v;
      }
      if (sorted == n) break;
      std::sort(buf.begin() + sorted, buf.begin() + n, desc);
      sorted = n;
    }
  done:
    w_min = std::max(w_min, last_ok);
  }
  return w_min;
}

}  // namespace

Scratch& thread_scratch() {
  static thread_local Scratch s;
  return s;
}

void eval_argmax(const RowKernels& k, RowRef row, int64_t V, RowStats* st, bool keep_block_max, Scratch& sc) {
  float* bmax = nullptr;
  if (keep_block_max) {
    const int64_t nb = (V + kArgBlock - 1) / kArgBlock;
    if ((int64_t)sc.bmax.size() < nb) sc.bmax.resize(nb);
    bmax = sc.bmax.data();
  }
  const ArgmaxOut a = k.argmax(row.data, row.dtype, V, bmax);
  st->valid = a.valid;
  st->argmax = static_cast<int32_t>(a.index);
  st->max = a.max;
  st->block_max = bmax;
}

bool begin_sampled(const RowParams& p, RowStats* st) {
  st->greedy = true;
  if (!st->valid || p.t == 0.0f) return false;
  const float m = p.t == 1.0f ? st->max : st->max / p.t;
  if (!std::isfinite(m)) return false;  // max / t overflowed: the t -> 0 limit, verified greedily
  st->greedy = false;
  st->m = m;
  return true;
}

void eval_exact(const RowKernels& k, RowRef row, int64_t V, const RowParams& p, RowStats* st, int64_t* blocks,
                bool keep_w, Scratch& sc, RowRef pf) {
  st->w_min = 1;
  st->W = nullptr;
  if (p.filtered(V) || keep_w) {
    if ((int64_t)sc.wbuf.size() < V) sc.wbuf.resize(V);
    float* w = sc.wbuf.data();
    if (!p.filtered(V)) {
      st->S = k.weight_sum(row.data, row.dtype, V, p.t, st->m, 1, blocks, w, pf.data, pf.dtype);
    } else {
      k.weight_sum(row.data, row.dtype, V, p.t, st->m, 1, nullptr, w, pf.data, pf.dtype);
      const int64_t w_min = keep_threshold(w, V, p.top_k, p.top_p, sc.sbuf);
      int64_t total = 0;
      for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
        int64_t s = 0;
        for (int64_t i = b0, e = std::min(V, b0 + kBlock); i < e; ++i) {
          const int64_t wi = static_cast<int64_t>(w[i]);
          s += wi >= w_min ? wi : 0;
        }
        if (blocks) blocks[b0 / kBlock] = s;
        total += s;
      }
      st->w_min = w_min;
      st->S = total;
    }
    if (keep_w) st->W = w;
  } else {
    st->S = k.weight_sum(row.data, row.dtype, V, p.t, st->m, 1, blocks, nullptr, nullptr, kF32);
  }
  st->has_exact = true;
}

int64_t kept_weight(RowRef row, int64_t i, const RowParams& p, const RowStats& st) {
  const int64_t w = st.W ? static_cast<int64_t>(st.W[i]) : weight_of(load_scalar(row.data, row.dtype, i), p.t, st.m);
  return w >= st.w_min ? w : 0;
}

namespace {

// Bounds of S from the argmax pass' block maxima (cheap: one term per kArgBlock elements).
// Upper: every d of a block is <= its maximum's d (the same fp32 operations, monotone) and
// bound_term(d) >= exp(d). Lower: the block maxima are distinct elements, each W >= 2^40 exp(d) (1 - 1e-6)
// - 1 (exp_poly is within ~1e-6 of exp). [2^40, +inf] without block maxima.
void bounds_from_blocks(int64_t V, const RowParams& p, const RowStats& st, double* lo, double* hi) {
  *lo = 0x1p40;
  *hi = INFINITY;
  if (!st.block_max) return;
  double F = 0.0, L = 0.0;
  for (int64_t b = 0, nb = (V + kArgBlock - 1) / kArgBlock; b < nb; ++b) {
    const float bm = st.block_max[b];
    const float d = (p.t == 1.0f ? bm : bm / p.t) - st.m;
    F += static_cast<double>(std::min(V - b * kArgBlock, kArgBlock)) * bound_term(d);
    if (d >= kExpCutoff) L += std::max(0.0, std::exp(static_cast<double>(d)) * 0x1p40 * (1.0 - 1e-6) - 1.0);
  }
  *hi = F * 0x1p40 * (1.0 + 1e-4);
  *lo = std::max(L, 0x1p40);
}

// [S_lo, S_hi] around S from bound_sum (row_kernels.h; margins 1e-4 >> its ~1e-5 of rounding).
// S >= 2^40 always: the maximum's weight.
void s_bounds(const RowKernels& k, RowRef row, int64_t V, const RowParams& p, RowStats* st, double* lo, double* hi) {
  if (st->F < 0) st->F = k.bound_sum(row.data, row.dtype, V, p.t, st->m);
  *hi = st->F * 0x1p40 * (1.0 + 1e-4);
  *lo = std::max(st->F * 0x1p40 / 1.0616 * (1.0 - 1e-4) - 2.0 * static_cast<double>(V), 0x1p40);
}

// The typical rule from S_lo <= S <= S_hi (equal: the exact S): 1 accept, 0 reject, -1 undecided.
// prob >= W_x / S_hi (fp64 division is monotone); tau <= eps; exp(-H) <= p_max = 2^40 / S <= 2^40 / S_lo;
// exp(-H) >= 1 / V. The 1e-9 margins cover the reference's rounding of H (~1e-13).
int typical_rule(double w_x, double s_lo, double s_hi, int64_t V, double eps, double delta) {
  const double p_lo = w_x / s_hi;
  if (p_lo > eps) return 1;
  if (!(s_lo > 0)) return -1;
  if (p_lo > std::min(eps, delta * (0x1p40 / s_lo)) * (1.0 + 1e-9)) return 1;
  if (w_x / s_lo < std::min(eps, delta / static_cast<double>(V)) * (1.0 - 1e-9)) return 0;
  return -1;
}

}  // namespace

bool rejection_accepts(const RowKernels& k, RowRef row, int64_t V, const RowParams& p, RowStats* st, int64_t x,
                       double q, double u, int64_t* blocks, bool keep_w, Scratch& sc, bool defer_reject,
                       RowRef pf) {
  const double uq = u * q;  // the reference's (u * q) * S
  if (!p.filtered(V) && uq >= 0) {  // fp64 products are monotone in S for uq >= 0
    const double w_x = static_cast<double>(kept_weight(row, x, p, *st));
    double s_lo, s_hi;
    bounds_from_blocks(V, p, *st, &s_lo, &s_hi);
    if (uq * s_hi < w_x) return true;
    if (uq * s_lo < w_x) {  // else a sure rejection: its exact pass comes anyway, no bound_sum
      s_bounds(k, row, V, p, st, &s_lo, &s_hi);
      if (uq * s_hi < w_x) return true;
    }
    // S >= s_lo (both doubles after rounding S) and the product is monotone: a sure rejection
    if (defer_reject && !(uq * s_lo < w_x)) return false;
  }
  eval_exact(k, row, V, p, st, blocks, keep_w, sc, pf);
  return uq * static_cast<double>(st->S) < static_cast<double>(kept_weight(row, x, p, *st));
}

bool typical_accepts(const RowKernels& k, RowRef row, int64_t V, const RowParams& p, RowStats* st, int64_t x,
                     double eps, double delta, Scratch& sc) {
  if (!st->has_exact && !p.filtered(V)) {
    const double w_x = static_cast<double>(kept_weight(row, x, p, *st));
    double s_lo, s_hi;
    bounds_from_blocks(V, p, *st, &s_lo, &s_hi);
    int r = typical_rule(w_x, s_lo, s_hi, V, eps, delta);
    if (r >= 0) return r == 1;
    s_bounds(k, row, V, p, st, &s_lo, &s_hi);
    r = typical_rule(w_x, s_lo, s_hi, V, eps, delta);
    if (r >= 0) return r == 1;
  }
  if (!st->has_exact) eval_exact(k, row, V, p, st, nullptr, false, sc);
  const double S = static_cast<double>(st->S), w_x = static_cast<double>(kept_weight(row, x, p, *st));
  const int r = typical_rule(w_x, S, S, V, eps, delta);
  if (r >= 0) return r == 1;
  if (!st->has_entropy) {
    st->ent_sum = k.entropy_sum(row.data, row.dtype, V, p.t, st->m, st->w_min);
    st->has_entropy = true;
  }
  // ref.RowDist.entropy; one weight (S = 2^40: t -> 0, top-k 1, ...) is exactly 0 there too
  const double H = st->S == (int64_t(1) << kWFracBits) ? 0.0 : std::log(S) - st->ent_sum / S;
  return w_x / S > std::min(eps, delta * std::exp(-H));
}

int64_t sample_kept(RowRef row, int64_t V, const RowParams& p, const RowStats& st, const int64_t* blocks, double u,
                    int64_t skip) {
  const int64_t w_skip = skip >= 0 ? kept_weight(row, skip, p, st) : 0;
  int64_t total = st.S - w_skip;
  if (total <= 0) {  // the draft held all the mass: ref falls back to W'
    skip = -1;
    total = st.S;
  }
  const int64_t target = static_cast<int64_t>(std::floor(u * static_cast<double>(total)));
  int64_t acc = 0;
  for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
    const int64_t e = std::min(V, b0 + kBlock);
    const int64_t bs = blocks[b0 / kBlock] - (skip >= b0 && skip < e ? w_skip : 0);
    if (acc + bs > target) {
      for (int64_t i = b0; i < e; ++i) {
        if (i != skip) acc += kept_weight(row, i, p, st);
        if (acc > target) return i;
      }
    }
    acc += bs;
  }
  return V - 1;  // unreachable: target < total
}

int64_t sample_rejected(const RowKernels& k, RowRef row, int64_t V, const RowParams& p, const RowStats& st,
                        const int64_t* blocks, int64_t x, const RowRef* q_row, double u, Scratch& sc) {
  if (q_row == nullptr) return sample_kept(row, V, p, st, blocks, u, x);
  const int64_t nblk = num_blocks(V);
  if ((int64_t)sc.res_blocks.size() < nblk) sc.res_blocks.resize(nblk);
  int64_t* rb = sc.res_blocks.data();
  TORCH_INTERNAL_ASSERT(st.W, "sample_rejected: the row's weights were not kept (eval_exact keep_w)");
  const int64_t total =
      k.residual_sum_w(st.W, V, st.w_min, q_row->data, q_row->dtype, static_cast<double>(st.S), rb);
  return sample_from_residual(row, V, p, st, blocks, *q_row, u, rb, total);
}

int64_t sample_from_residual(RowRef row, int64_t V, const RowParams& p, const RowStats& st, const int64_t* blocks,
                             const RowRef& q_row, double u, const int64_t* rb, int64_t total) {
  if (total <= 0) return sample_kept(row, V, p, st, blocks, u, -1);
  const double S = static_cast<double>(st.S);
  const int64_t target = static_cast<int64_t>(std::floor(u * static_cast<double>(total)));
  int64_t acc = 0;
  for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
    if (acc + rb[b0 / kBlock] > target) {
      for (int64_t i = b0, e = std::min(V, b0 + kBlock); i < e; ++i) {
        acc += residual_of(kept_weight(row, i, p, st), load_scalar(q_row.data, q_row.dtype, i), S);
        if (acc > target) return i;
      }
    }
    acc += rb[b0 / kBlock];
  }
  return V - 1;  // unreachable: target < total
}

}  // namespace specdec
}  // namespace leankern
