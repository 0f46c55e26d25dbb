// CPU kernels of leankern::vocab_gather_lm_head and leankern::vocab_gather_lm_head_topk (schemas and
// numerics: python/leankern/vocab/ops.py, ref.py).
//
// Work: the K positions in chunks of kChunk, handed out dynamically to both cores (common/parallel.h);
// a chunk's weight rows are read in place by id (padding skipped: never a read), multiplied with every
// hidden row (kernels.h dots: up to 4 hiddens per pass over a row; dots_bf16, bf16 dot products, for a bf16
// head and bf16 hidden under the avx512bf16 ISA), then bias, soft cap, scale and -inf padding.
// Top-k (k > 1, B * K <= 4M) writes the logits to a scratch (<= 16 MB) and selects per row behind a bar
// from group maxima (row_topk); otherwise it streams per-thread candidates and never holds the logits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <optional>
#include <tuple>
#include <vector>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "common/x_shift.h"
#include "vocab/checks.h"
#include "vocab/kernels.h"

namespace leankern {
namespace vocab {
namespace {

constexpr int64_t kChunk = 64;  // positions per task: ~128-256 KB of bf16 rows at H = 1-2k
// Top-k with k > 1 over at most this many logits (B * K) runs in two passes through an fp32 scratch
// (16 MB). Larger batches stream: splitting them into blocks of rows would read the weights once per block.
constexpr int64_t kTwoPassMaxElems = int64_t(1) << 22;

struct Head {
  const VocabKernels* k;
  const float* h;  // [B, H] fp32
  const uint16_t* hb;  // [B, H] the same as bf16 bits where hidden is bf16, else nullptr
  const int32_t* hv;   // hidden as AMX B tiles (kernels.h dots_bf16_amx) where that kernel runs, else nullptr
  int64_t B, H;
  const void* w;
  int wdt;
  int64_t rs;          // row stride in elements
  const int32_t* ids;  // [K] or [B, K]
  bool per_row;
  int64_t K;
  const void* bias;  // [V] or null
  int bdt;
  bool capped;
  float cap, scale;
  // where hidden holds rows hidden_b 2^-k_b (hidden_shift; else null): bias times down[b], the sum times up[b]
  const float* down = nullptr;
  const float* up = nullptr;
};

struct Scratch {
  std::vector<int64_t> rows, pos;
  std::vector<float> dots;
};

// dots of hidden rows [b0, b0 + nb) with the n weight rows `rows` (kernels.h).
void head_dots(const Head& hd, int64_t b0, int64_t nb, const int64_t* rows, int64_t n, float* out, int64_t ldo) {
  if (hd.hv && b0 == 0 && nb == hd.B)  // (hv is set only for a bf16 head with ids shared by every row)
    hd.k->dots_bf16_amx(hd.hv, hd.B, hd.H, static_cast<const uint16_t*>(hd.w), hd.rs, rows, n, out, ldo);
  else if (hd.hb && hd.wdt == kBF16 && hd.k->dots_bf16)
    hd.k->dots_bf16(hd.hb + b0 * hd.H, hd.H, nb, hd.H, static_cast<const uint16_t*>(hd.w), hd.rs, rows, n, out, ldo);
  else
    hd.k->dots(hd.h + b0 * hd.H, hd.H, nb, hd.H, hd.w, hd.wdt, hd.rs, rows, n, out, ldo);
}

// fp32 logits of positions [j0, j1) for the hidden rows [b0, b0 + nb) into out[b * ldo + (j - j0)];
// per_row: nb == 1 and the ids are row b0's.
void chunk_logits(const Head& hd, int64_t b0, int64_t nb, int64_t j0, int64_t j1, float* out, int64_t ldo,
                  Scratch& sc) {
  const int32_t* ids = hd.ids + (hd.per_row ? b0 * hd.K : 0);
  const int64_t m = j1 - j0;
  sc.rows.resize(m);
  sc.pos.resize(m);
  int64_t n = 0;
  for (int64_t j = j0; j < j1; ++j) {
    if (ids[j] >= 0) {
      sc.rows[n] = ids[j];
      sc.pos[n++] = j - j0;
    }
  }
  const float post = hd.capped ? 1.0f : hd.scale;
  if (n == m) {  // no padding in the chunk (the common case): the dots land in place
    head_dots(hd, b0, nb, sc.rows.data(), n, out, ldo);
    for (int64_t b = 0; b < nb; ++b) {
      float* o = out + b * ldo;
      if (hd.up) {  // shifted hidden: (dots + bias 2^-k) 2^k
        const float dn = hd.down[b0 + b], up = hd.up[b0 + b];
        for (int64_t i = 0; i < m; ++i)
          o[i] = (hd.bias ? o[i] + load_scalar(hd.bias, hd.bdt, sc.rows[i]) * dn : o[i]) * up;
      } else if (hd.bias) {
        for (int64_t i = 0; i < m; ++i) o[i] += load_scalar(hd.bias, hd.bdt, sc.rows[i]);
      }
      if (post != 1.0f)
        for (int64_t i = 0; i < m; ++i) o[i] *= post;
      if (hd.capped) hd.k->soft_cap(o, m, hd.cap, hd.scale);
    }
    return;
  }
  sc.dots.resize(nb * std::max<int64_t>(n, 1));
  if (n) head_dots(hd, b0, nb, sc.rows.data(), n, sc.dots.data(), n);
  for (int64_t b = 0; b < nb; ++b) {
    float* o = out + b * ldo;
    const float* d = sc.dots.data() + b * n;
    std::fill(o, o + m, 0.0f);
    for (int64_t i = 0; i < n; ++i) {
      float z = d[i];
      if (hd.bias) z += load_scalar(hd.bias, hd.bdt, sc.rows[i]) * (hd.down ? hd.down[b0 + b] : 1.0f);
      if (hd.up) z *= hd.up[b0 + b];
      o[sc.pos[i]] = post == 1.0f ? z : z * post;
    }
    if (hd.capped) hd.k->soft_cap(o, m, hd.cap, hd.scale);
    if (n < m)
      for (int64_t j = j0; j < j1; ++j)
        if (ids[j] < 0) o[j - j0] = -INFINITY;
  }
}

Head make_head(const at::Tensor& hf, const at::Tensor& hb, const at::Tensor& hv, const at::Tensor& weight, const at::Tensor& ids,
               const std::optional<at::Tensor>& bias, const at::Tensor& bias_c, std::optional<double> soft_cap, double scale) {
  Head hd;
  hd.k = &active_kernels();
  hd.h = hf.data_ptr<float>();
  hd.hb = hb.defined() ? reinterpret_cast<const uint16_t*>(hb.data_ptr<at::BFloat16>()) : nullptr;
  hd.hv = hv.defined() ? hv.data_ptr<int32_t>() : nullptr;
  hd.B = hf.size(0);
  hd.H = hf.size(1);
  hd.w = weight.data_ptr();
  hd.wdt = dtype_code(weight);
  hd.rs = weight.stride(0);
  hd.ids = ids.data_ptr<int32_t>();
  hd.per_row = ids.dim() == 2;
  hd.K = ids.size(-1);
  hd.bias = bias.has_value() ? bias_c.data_ptr() : nullptr;
  hd.bdt = bias.has_value() ? dtype_code(bias_c) : kF32;
  hd.capped = soft_cap.has_value();
  hd.cap = hd.capped ? static_cast<float>(*soft_cap) : 0.0f;
  hd.scale = static_cast<float>(scale);
  return hd;
}

// chunk_logits into this thread's scratch: [nb, kChunk] (row b's position j at b * kChunk + j - j0).
const float* chunk_logits_scratch(const Head& hd, int64_t b0, int64_t nb, int64_t j0, int64_t j1) {
  thread_local Scratch sc;
  thread_local std::vector<float> z;
  z.resize(nb * kChunk);
  chunk_logits(hd, b0, nb, j0, j1, z.data(), kChunk, sc);
  return z.data();
}

// Runs f(b0, nb, j0, j1) over every (hidden rows, positions) task on both cores.
template <class F>
void for_tasks(const Head& hd, const F& f) {
  const int64_t nch = (hd.K + kChunk - 1) / kChunk;
  const int64_t tasks = hd.per_row ? hd.B * nch : nch;
  cpu::parallel_chunks(tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c = t % nch, j0 = c * kChunk, j1 = std::min(hd.K, j0 + kChunk);
      if (hd.per_row)
        f(t / nch, 1, j0, j1);
      else
        f(0, hd.B, j0, j1);
    }
  });
}

void log_softmax_row(const VocabKernels& k, float* z, int64_t n) {
  float m = -INFINITY;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    nan |= std::isnan(z[i]);
    m = z[i] > m ? z[i] : m;
  }
  if (m == -INFINITY) return;  // only padding: stays -inf
  float lse;
  if (nan)
    lse = NAN;
  else if (m == INFINITY)
    lse = INFINITY;
  else
    lse = m + static_cast<float>(std::log(k.sum_exp(z, n, m)));
  for (int64_t i = 0; i < n; ++i) z[i] -= lse;
}

// Rows of hidden with a finite |h| >= 2^64 times 2^-k_b (its dtype kept: powers of two, exact), the factors 2^-k_b
// and 2^k_b ([B, 1] fp32) in *shift (undefined: every row as it is). Why: the dots' partial sums of products near
// fp32's top pass 2^128 in an order other than the result's (inf where the exact logit is finite, |h| ~ 2^124 with
// ordinary rows), as mx / sefp linear (common/x_shift.h: per row, so one such row leaves the others as they are).
struct HiddenShift {
  at::Tensor down, up;
};
at::Tensor hidden_shift(const at::Tensor& hidden, HiddenShift* shift) {
  const std::vector<int> k = linear_x_shifts(hidden.contiguous());
  if (k.empty()) return hidden;
  shift->down = row_powers_of_two(k, -1);
  shift->up = row_powers_of_two(k, 1);
  return hidden.mul(shift->down.to(hidden.scalar_type()));
}
void set_shift(Head& hd, const HiddenShift& shift) {
  if (!shift.up.defined()) return;
  hd.down = shift.down.data_ptr<float>();
  hd.up = shift.up.data_ptr<float>();
}

at::Tensor prepare_hidden(const at::Tensor& hidden) { return hidden.to(at::kFloat).contiguous(); }
// hidden's bf16 bits (contiguous) where it is bf16, else undefined (Head::hb)
at::Tensor bf16_hidden(const at::Tensor& hidden) {
  return hidden.scalar_type() == at::kBFloat16 ? hidden.contiguous() : at::Tensor();
}

// Hidden rows from which the AMX dots beat dots_bf16 (a Xeon: at B = 4 dots_bf16 already reads at ~0.9 of the
// bandwidth; at 16 it was compute-bound at a third).
constexpr int64_t kAmxMinRows = 8;

// hb (bf16 hidden) as AMX B tiles (kernels.h dots_bf16_amx) where that kernel runs: a bf16 head, ids shared by every
// row, >= kAmxMinRows rows, H % 32 == 0, cpu::amx_enabled(); else undefined (Head::hv).
at::Tensor amx_hidden(const at::Tensor& hb, const at::Tensor& weight, const at::Tensor& ids) {
  if (!hb.defined() || !active_kernels().dots_bf16_amx || ids.dim() == 2 || dtype_code(weight) != kBF16 ||
      hb.size(0) < kAmxMinRows || hb.size(1) % 32 != 0 || !cpu::amx_enabled())
    return at::Tensor();
  const int64_t B = hb.size(0), H = hb.size(1), G = (B + 15) / 16;
  // [16 G, H] bf16 -> pairs [G, 16 (c), H / 32 (s), 16 (q)] -> [G, s, q, c]
  const at::Tensor pairs = at::constant_pad_nd(hb, {0, 0, 0, G * 16 - B}).view(at::kInt).view({G, 16, H / 32, 16});
  return pairs.permute({0, 2, 3, 1}).contiguous();
}

at::Tensor vocab_gather_lm_head_cpu(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& vocab_ids,
                                    const std::optional<at::Tensor>& bias, std::optional<double> soft_cap, double scale,
                                    std::optional<at::ScalarType> out_dtype, bool log_softmax) {
  const int64_t K = check_head(hidden, weight, vocab_ids, bias, soft_cap, scale);
  if (out_dtype.has_value()) {
    const at::ScalarType d = *out_dtype;
    TORCH_CHECK_TYPE(d == at::kFloat || d == at::kBFloat16 || d == at::kHalf,
                     "out_dtype: expected one of ['torch.float32', 'torch.bfloat16', 'torch.float16'] or None, got ",
                     checks::dtype_name(d));
  }
  const at::Tensor ids = vocab_ids.contiguous();
  check_ids(ids.data_ptr<int32_t>(), ids.numel(), weight.size(0));
  HiddenShift shift;
  const at::Tensor hs = hidden_shift(hidden, &shift);
  const at::Tensor hf = prepare_hidden(hs);
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  const at::Tensor hb = bf16_hidden(hs);
  const at::Tensor hv = amx_hidden(hb, weight, ids);
  Head hd = make_head(hf, hb, hv, weight, ids, bias, bias_c, soft_cap, scale);
  set_shift(hd, shift);
  at::Tensor out = at::empty({hd.B, K}, hidden.options().dtype(at::kFloat));
  if (hd.B == 0 || K == 0) return out_dtype.value_or(at::kFloat) == at::kFloat ? out : out.to(*out_dtype);
  float* o = out.data_ptr<float>();
  for_tasks(hd, [&](int64_t b0, int64_t nb, int64_t j0, int64_t j1) {
    thread_local Scratch sc;
    chunk_logits(hd, b0, nb, j0, j1, o + b0 * K + j0, K, sc);
  });
  if (log_softmax)
    at::parallel_for(0, hd.B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) log_softmax_row(*hd.k, o + b * K, K);
    });
  const at::ScalarType want = out_dtype.value_or(at::kFloat);
  return want == at::kFloat ? out : out.to(want);
}

// ------------------------------------------------------------------------------------------ top-k
// A candidate is one integer key, larger = better: the high 32 bits order the values as torch.sort does
// (NaN above everything, -0.0 equal to +0.0), the low 32 bits prefer the lower position. The value comes back
// from the key (a NaN as the canonical NaN, -0.0 as +0.0: equal under ==).
inline uint64_t cand_key(float v, int64_t pos) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  uint32_t k;
  if (std::isnan(v)) {
    k = 0xffffffffu;
  } else {
    if (b == 0x80000000u) b = 0;  // -0.0 ranks as +0.0
    k = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  }
  return (static_cast<uint64_t>(k) << 32) | (0xffffffffu - static_cast<uint32_t>(pos));
}

inline int64_t key_pos(uint64_t key) { return 0xffffffffu - static_cast<uint32_t>(key); }

inline float key_value(uint64_t key) {
  const uint32_t k = static_cast<uint32_t>(key >> 32);
  const uint32_t b = k == 0xffffffffu ? 0x7fc00000u : (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}

// The best k of a stream (the streaming top-k below). Keys that can still enter go to an unsorted buffer;
// when it holds cap = 3k (>= 64) of them, nth_element keeps the best k and their smallest becomes the bar
// (kth_key / kth_v) that later keys, and the caller's vector pre-filter, must pass. An entrant is one
// store and a cut costs O(cap) per 2k entrants: a sorted array moved ~k/2 keys per entrant (2x the plain
// gather at k = 200), a heap's sift mispredicts at every level.
struct TopK {
  int64_t k = 1;
  std::vector<uint64_t> c;  // candidates; after finish(): the best min(k, seen), ascending
  uint64_t kth_key = 0;     // keys <= it are in no top k (0: no cut yet, every key passes)
  float kth_v = -INFINITY;  // the value of kth_key (-inf until the first cut)

  bool full() const { return kth_key != 0; }  // k keys >= kth_v are held
  inline __attribute__((always_inline)) void push(float v, int64_t pos) {
    const uint64_t x = cand_key(v, pos);
    if (x <= kth_key) return;
    c.push_back(x);
    if (static_cast<int64_t>(c.size()) >= std::max<int64_t>(3 * k, 64)) cut();
  }
  void cut() {  // keep the best k, raise the bar to the smallest of them
    if (static_cast<int64_t>(c.size()) <= k) return;
    std::nth_element(c.begin(), c.end() - k, c.end());
    c.erase(c.begin(), c.end() - k);
    kth_key = *std::min_element(c.begin(), c.end());
    kth_v = key_value(kth_key);
  }
  void finish() {
    cut();
    std::sort(c.begin(), c.end());
  }
};

// Order-preserving 32-bit image of a non-NaN float (-0.0 below +0.0; between two such images lie only images of
// non-NaN floats), and back: the bar's bisection runs on these integers.
inline uint32_t ordered_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
inline float from_ordered_bits(uint32_t k) {
  const uint32_t b = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}

// Top k of one row of logits z[0, K) into values / ids (ids: the row's vocab ids). Candidates: every
// position >= a bar t that at least k positions reach, so no position below it can be in the top k: at least k of
// G ~ 4k group maxima (group l = positions l, l + G, ...: each maximum is a position, and the vertical maxima
// vectorise) reach t, found by bisection on the maxima's ordered bits (close to their k-th largest; no sort, whose
// mispredicted comparisons cost more than the rest of the row). Only those ~k-2k candidates become keys for the
// exact selection (ties to the lower position, NaN first, -0.0 as +0.0: cand_key). Rows too short for the bar to
// pay take every position.
void row_topk(const VocabKernels& kern, const float* z, int64_t K, int64_t k, const int32_t* ids, float* values,
              int64_t* out_ids, std::vector<float>& gmax, std::vector<int32_t>& sel, std::vector<uint64_t>& keys) {
  const int64_t G = (std::max<int64_t>(4 * k, 64) + 15) / 16 * 16;  // whole vectors for group_max / count_ge
  sel.resize(K);
  int64_t n = 0;
  bool bar = K >= 4 * G;
  if (bar) {
    // NaN never enters a maximum, so each maximum is -inf or a position's value; NaN positions pass select_ge
    // (they rank first). Invariant: at least k maxima >= from_ordered_bits(lo), fewer than k >= hi.
    gmax.resize(G);
    float* g = gmax.data();
    kern.group_max(z, K, G, g);
    const auto [lo_it, hi_it] = std::minmax_element(g, g + G);
    uint32_t lo = ordered_bits(*lo_it), hi = ordered_bits(*hi_it) + 1;  // all G >= lo; none >= hi (< 2^32: no NaN)
    for (int it = 0; it < 20 && hi - lo > 1; ++it) {
      const uint32_t mid = lo + (hi - lo) / 2;
      const int64_t c = kern.count_ge(g, G, from_ordered_bits(mid));
      (c >= k ? lo : hi) = mid;
      if (c == k) break;  // exactly k maxima reach it: as tight as a bar from the maxima gets
    }
    n = kern.select_ge(z, K, from_ordered_bits(lo), sel.data());
    bar = n >= k;  // always (k maxima reach the bar); never index past the candidates
  }
  if (!bar) {
    n = K;
    for (int64_t i = 0; i < K; ++i) sel[i] = static_cast<int32_t>(i);
  }
  keys.resize(n + k);
  for (int64_t i = 0; i < n; ++i) keys[i] = cand_key(z[sel[i]], sel[i]);
  uint64_t* best = keys.data() + n;
  kern.rank_desc(keys.data(), n, k, best);
  for (int64_t i = 0; i < k; ++i) {
    values[i] = key_value(best[i]);
    out_ids[i] = ids[key_pos(best[i])];
  }
}

std::tuple<at::Tensor, at::Tensor> vocab_gather_lm_head_topk_cpu(const at::Tensor& hidden, const at::Tensor& weight,
                                                                 const at::Tensor& vocab_ids,
                                                                 const std::optional<at::Tensor>& bias,
                                                                 std::optional<double> soft_cap, double scale,
                                                                 int64_t k) {
  const int64_t K = check_head(hidden, weight, vocab_ids, bias, soft_cap, scale);
  constexpr int64_t kMaxTopK = 1024;  // ops.MAX_TOPK
  TORCH_CHECK_VALUE(k >= 1 && k <= std::min(K, kMaxTopK), "k: expected 1 <= k <= min(K=", K, ", ", kMaxTopK,
                    "), got ", k);
  // a candidate's position is the low 32 bits of its key (cand_key)
  TORCH_CHECK_VALUE(K < (int64_t(1) << 32), "vocab_ids: expected K < 2^32 ids per row, got ", K);
  const at::Tensor ids = vocab_ids.contiguous();
  check_ids(ids.data_ptr<int32_t>(), ids.numel(), weight.size(0));
  HiddenShift shift;
  const at::Tensor hs = hidden_shift(hidden, &shift);
  const at::Tensor hf = prepare_hidden(hs);
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  const at::Tensor hb = bf16_hidden(hs);
  const at::Tensor hv = amx_hidden(hb, weight, ids);
  Head hd = make_head(hf, hb, hv, weight, ids, bias, bias_c, soft_cap, scale);
  set_shift(hd, shift);
  const int64_t B = hd.B, nt = at::get_num_threads();
  if (B == 0)
    return std::make_tuple(at::empty({0, k}, hidden.options().dtype(at::kFloat)),
                           at::empty({0, k}, hidden.options().dtype(at::kLong)));
  at::Tensor values = at::empty({B, k}, hidden.options().dtype(at::kFloat));
  at::Tensor gids = at::empty({B, k}, hidden.options().dtype(at::kLong));
  float* vo = values.data_ptr<float>();
  int64_t* io = gids.data_ptr<int64_t>();
  const int32_t* idp = ids.data_ptr<int32_t>();
  if (k > 1 && B * K <= kTwoPassMaxElems) {
    // Two passes: the logits into an fp32 scratch (the plain gather's pass), then each row's top k
    // (row_topk). Streaming candidates per chunk instead (below) costs ~k ln(K / k) inserts and their
    // cuts per row and thread: +13-22% over the gather at k = 50.
    at::Tensor zt = at::empty({B, K}, hidden.options().dtype(at::kFloat));
    float* z = zt.data_ptr<float>();
    for_tasks(hd, [&](int64_t b0, int64_t nb, int64_t j0, int64_t j1) {
      thread_local Scratch sc;
      chunk_logits(hd, b0, nb, j0, j1, z + b0 * K + j0, K, sc);
    });
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> gmax;
      std::vector<int32_t> sel;
      std::vector<uint64_t> keys;
      for (int64_t b = b0; b < b1; ++b)
        row_topk(*hd.k, z + b * K, K, k, idp + (hd.per_row ? b * K : 0), vo + b * k, io + b * k, gmax, sel, keys);
    });
    return std::make_tuple(values, gids);
  }
  if (k == 1) {  // argmax: each chunk's best (first NaN, else first maximum) kept as one key per thread and row
    // (cand_key order); no TopK buffers and no parallel merge: at B = 16 those cost ~20 us per call, 12% of it
    std::vector<uint64_t> best1(nt * B, 0);  // [thread][b]; 0: none yet (every key is above it)
    for_tasks(hd, [&](int64_t b0, int64_t nb, int64_t j0, int64_t j1) {
      const float* z = chunk_logits_scratch(hd, b0, nb, j0, j1);
      uint64_t* mine = best1.data() + static_cast<int64_t>(at::get_thread_num()) * B;
      for (int64_t b = 0; b < nb; ++b) {
        const float* zb = z + b * kChunk;
        const int64_t at = hd.k->argmax_f32(zb, j1 - j0);
        mine[b0 + b] = std::max(mine[b0 + b], cand_key(zb[at], j0 + at));
      }
    });
    for (int64_t b = 0; b < B; ++b) {
      uint64_t key = 0;
      for (int64_t t = 0; t < nt; ++t) key = std::max(key, best1[t * B + b]);
      vo[b] = key_value(key);
      io[b] = idp[(hd.per_row ? b * K : 0) + key_pos(key)];
    }
    return std::make_tuple(values, gids);
  }
  std::vector<TopK> best(nt * B);  // [thread][b]
  for (auto& t : best) t.k = k;
  // floor[b]: the largest k-th best a thread has published for row b. That thread holds k values >= it, so a
  // value below it is in no one's final top k: every thread filters with it too (ties pass: a lower
  // position may still win). Relaxed: a stale or overwritten floor is still a valid, only lower, bound.
  std::vector<std::atomic<float>> floor(B);
  for (auto& f : floor) f.store(-INFINITY, std::memory_order_relaxed);
  for_tasks(hd, [&](int64_t b0, int64_t nb, int64_t j0, int64_t j1) {
    const float* z = chunk_logits_scratch(hd, b0, nb, j0, j1);
    TopK* mine = best.data() + static_cast<int64_t>(at::get_thread_num()) * B;
    for (int64_t b = 0; b < nb; ++b) {
      const float* zb = z + b * kChunk;  // zb[j - j0] for j in [j0, j1)
      const int64_t m = j1 - j0;
      TopK& tk = mine[b0 + b];
      // only values that can still enter: >= the k-th best so far (this thread's or the floor), or NaN
      const float own = tk.full() ? (std::isnan(tk.kth_v) ? INFINITY : tk.kth_v) : -INFINITY;
      const float thr = std::max(own, floor[b0 + b].load(std::memory_order_relaxed));
      int32_t sel[kChunk];
      const int64_t n = hd.k->select_ge(zb, m, thr, sel);
      for (int64_t i = 0; i < n; ++i) tk.push(zb[sel[i]], j0 + sel[i]);
      if (tk.full() && tk.kth_v > floor[b0 + b].load(std::memory_order_relaxed))  // false for NaN
        floor[b0 + b].store(tk.kth_v, std::memory_order_relaxed);
    }
  });
  at::parallel_for(0, B, 1, [&](int64_t bb0, int64_t bb1) {
    for (int64_t b = bb0; b < bb1; ++b) {
      std::vector<uint64_t> all;  // the threads' sorted arrays merged (ascending): the best k at the end
      for (int64_t t = 0; t < nt; ++t) {
        best[t * B + b].finish();
        const std::vector<uint64_t>& ct = best[t * B + b].c;
        const auto mid = static_cast<std::ptrdiff_t>(all.size());
        all.insert(all.end(), ct.begin(), ct.end());
        std::inplace_merge(all.begin(), all.begin() + mid, all.end());
      }
      const int64_t n_all = static_cast<int64_t>(all.size());
      for (int64_t i = 0; i < k; ++i) {
        const uint64_t key = all[n_all - 1 - i];
        vo[b * k + i] = key_value(key);
        io[b * k + i] = idp[(hd.per_row ? b * K : 0) + key_pos(key)];
      }
    }
  });
  return std::make_tuple(values, gids);
}

}  // namespace

TORCH_LIBRARY_IMPL(leankern, CPU, m) {
  m.impl("vocab_gather_lm_head", &vocab_gather_lm_head_cpu);
  m.impl("vocab_gather_lm_head_topk", &vocab_gather_lm_head_topk_cpu);
}

}  // namespace vocab
}  // namespace leankern
