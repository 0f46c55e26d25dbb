// One target row as the integer distribution of the specdec numerics (ref.RowDist), evaluated
// lazily: the argmax pass first; for a sampled decision bounds of S that settle most decisions (from
// the argmax pass' block maxima: free; then row_kernels.h bound_sum: a fifth of the exact pass);
// the exact weight pass (S, block sums, optionally every W)
// only when the bound does not settle it or the row is sampled from; the entropy pass only when no
// bound settles a typical decision.
#pragma once

#include <cstdint>
#include <vector>

#include "specdec/numerics.h"
#include "specdec/row_kernels.h"

namespace leankern {
namespace specdec {

struct RowRef {
  const void* data;  // V elements
  int dtype;         // Dtype
};

// Per-request sampling parameters (ref._request_params).
struct RowParams {
  float t = 1.0f;      // temperature (0: greedy)
  int64_t top_k = 0;   // 0: off
  double top_p = 1.0;  // the fp32 value; 1: off
  bool filtered(int64_t V) const { return (top_k > 0 && top_k < V) || top_p < 1.0; }
};

struct RowStats {
  bool done = false;    // evaluated (the lazy caches' flag)
  bool valid = false;   // ref.row_is_valid
  bool greedy = true;   // decided by the argmax: not sampled, or the scaled maximum max / t overflowed
  bool accept = false;  // the draft row's sampled decision (chain op)
  bool has_exact = false, has_entropy = false;
  int32_t argmax = -1;
  int64_t emit = -1;      // the token sampled from a rejected draft row's residual, or from the bonus row
  bool need_sample = false;  // a sampled stop whose exact pass and sample were deferred (verify_cpu.cpp)
  float max = 0.0f;       // raw maximum
  float m = 0.0f;         // scaled maximum (max / t)
  double F = -1.0;        // bound_sum (< 0: not computed)
  const float* block_max = nullptr;  // the argmax pass' block maxima (a thread's scratch), while valid
  int64_t w_min = 1;      // top-k / top-p threshold (numerics.keep_threshold)
  int64_t S = 0;          // sum of the kept weights W'
  double ent_sum = 0.0;   // sum of W' ln W'
  const float* W = nullptr;  // every W of the row (a thread's scratch), when kept for the residual
};

// Per-thread buffers (grown on demand, kept across calls).
struct Scratch {
  std::vector<int64_t> blocks, res_blocks;
  std::vector<float> wbuf, sbuf, bmax;
  int64_t* block_buf(int64_t nblk) {
    if ((int64_t)blocks.size() < nblk) blocks.resize(nblk);
    return blocks.data();
  }
};
Scratch& thread_scratch();

inline int64_t num_blocks(int64_t V) { return (V + kBlock - 1) / kBlock; }

// The argmax pass (valid, argmax, max); keep_block_max: keep its block maxima in sc.bmax for the bounds
// of a decision that follows at once (st->block_max; clear it before the next row on this thread).
void eval_argmax(const RowKernels& k, RowRef row, int64_t V, RowStats* st, bool keep_block_max, Scratch& sc);
// A sampled row: greedy = false and m = max / t unless t == 0, the row is invalid or max / t overflowed.
bool begin_sampled(const RowParams& p, RowStats* st);
// The exact pass: w_min, S, the block sums into `blocks` (may be null), every W kept in sc.wbuf when keep_w;
// pf (optional): a row to prefetch meanwhile (row_kernels.h weight_sum).
void eval_exact(const RowKernels& k, RowRef row, int64_t V, const RowParams& p, RowStats* st, int64_t* blocks,
                bool keep_w, Scratch& sc, RowRef pf = RowRef{nullptr, kF32});
// Kept weight W'_i of one element (after eval_exact; without a filter W'_i = W_i before it too).
int64_t kept_weight(RowRef row, int64_t i, const RowParams& p, const RowStats& st);
// ref.RowDist.accepts: u * q * S < W'_x, settled by the bound of S when it can be. defer_reject: a
// rejection the bounds settle returns false with no exact pass (st->has_exact stays false; the caller
// computes it, e.g. split over the threads).
bool rejection_accepts(const RowKernels& k, RowRef row, int64_t V, const RowParams& p, RowStats* st, int64_t x,
                       double q, double u, int64_t* blocks, bool keep_w, Scratch& sc, bool defer_reject = false,
                       RowRef pf = RowRef{nullptr, kF32});
// ref: p(x) > min(eps, delta * exp(-H)), through bounds of S and of exp(-H) in [1/V, 2^40/S] first.
bool typical_accepts(const RowKernels& k, RowRef row, int64_t V, const RowParams& p, RowStats* st, int64_t x,
                     double eps, double delta, Scratch& sc);
// ref.sample_weights over W' (skip >= 0: with W'_skip = 0, the one-hot residual), from the block sums.
int64_t sample_kept(RowRef row, int64_t V, const RowParams& p, const RowStats& st, const int64_t* blocks,
                    double u, int64_t skip);
// ref.sample_weights over the residual of a rejected row, given its kBlock sums rb and their total.
int64_t sample_from_residual(RowRef row, int64_t V, const RowParams& p, const RowStats& st, const int64_t* blocks,
                             const RowRef& q_row, double u, const int64_t* rb, int64_t total);
// ref.residual_weights + sample_weights for the first rejected row of a request (after eval_exact with keep_w:
// the residual reads the stored W).
int64_t sample_rejected(const RowKernels& k, RowRef row, int64_t V, const RowParams& p, const RowStats& st,
                        const int64_t* blocks, int64_t x, const RowRef* q_row, double u, Scratch& sc);

}  // namespace specdec
}  // namespace leankern
