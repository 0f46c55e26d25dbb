// The vocab inner loops written once over a vector trait S (vec.h); included by kernels_{scalar,avx2,avx512}.cpp
// inside their own namespace with LK_T set to that ISA's target attribute. No include guard on purpose.
//
// dots: a register tile of 2 rows x NB (<= 4) hidden vectors: each loaded weight vector feeds NB FMAs and
// each hidden vector 2, so one pass over a row pair serves up to 4 hiddens; larger B loops the pair
// (still in L1) over hidden groups. Weights are the bytes that count (decode is memory-bound): every
// row is read from memory once per call, and the next pair's rows are prefetched while this one runs.

// Index of the first NaN of z[0, n) if any, else of the first maximum (torch.argmax). n >= 1.
LK_T int64_t argmax_f32(const float* z, int64_t n) {
  using F = typename S::F;
  F mx = S::set1(-INFINITY), nan = S::zero();
  int64_t i = 0;
  for (; i + S::N <= n; i += S::N) {
    const F v = S::loadu(z + i);
    mx = S::max(mx, v);
    nan = S::or_(nan, S::unord(v, v));
  }
  float m = S::hmax(mx);
  bool any_nan = S::any(nan);
  for (; i < n; ++i) {
    any_nan |= std::isnan(z[i]);
    m = z[i] > m ? z[i] : m;
  }
  if (any_nan) {
    for (int64_t j = 0; j < n; ++j)
      if (std::isnan(z[j])) return j;
  }
  for (int64_t j = 0; j < n; ++j)
    if (z[j] == m) return j;
  return 0;  // unreachable: m is an element (all -inf: the first equals -inf)
}

// Positions of z[0, n) holding a value >= thr or NaN, in order, into idx; returns their count.
LK_T int64_t select_ge(const float* z, int64_t n, float thr, int32_t* idx) {
  const auto tv = S::set1(thr);
  int64_t c = 0, i = 0;
  for (; i + S::N <= n; i += S::N) {
    const auto v = S::loadu(z + i);
    unsigned keep = ~S::movemask(S::lt(v, tv)) & ((1u << S::N) - 1);  // not v < thr: v >= thr or NaN
    while (keep) {
      idx[c++] = static_cast<int32_t>(i + __builtin_ctz(keep));
      keep &= keep - 1;
    }
  }
  for (; i < n; ++i)
    if (!(z[i] < thr)) idx[c++] = static_cast<int32_t>(i);
  return c;
}

// g[l] = the largest non-NaN z[i] with i % G == l, or -inf (G % 16 == 0, so whole vectors): the group maxima
// behind row_topk's bar. S::max(v, g) keeps g where v is NaN, as the scalar form z > g ? z : g.
LK_T void group_max(const float* z, int64_t n, int64_t G, float* g) {
  for (int64_t l = 0; l < G; l += S::N) S::storeu(g + l, S::set1(-INFINITY));
  int64_t i = 0;
  for (; i + G <= n; i += G)
    for (int64_t l = 0; l < G; l += S::N) S::storeu(g + l, S::max(S::loadu(z + i + l), S::loadu(g + l)));
  for (int64_t l = 0; i + l < n; ++l) g[l] = z[i + l] > g[l] ? z[i + l] : g[l];
}

// How many of g[0, G) are >= t (G % 16 == 0; g holds no NaN).
LK_T int64_t count_ge(const float* g, int64_t G, float t) {
  const auto tv = S::set1(t);
  constexpr unsigned all = S::N >= 32 ? ~0u : (1u << S::N) - 1;
  int64_t c = 0;
  for (int64_t l = 0; l < G; l += S::N) c += __builtin_popcount(~S::movemask(S::lt(S::loadu(g + l), tv)) & all);
  return c;
}

// out[r] = the key of rank r (0: the largest) of n distinct keys, r < k <= n: a selection, then a sort of the k.
// Selects in place (keys reordered): no per-row copy of the candidates.
LK_T void rank_desc_select(uint64_t* keys, int64_t n, int64_t k, uint64_t* out) {
  auto desc = std::greater<uint64_t>();
  if (n > k) std::nth_element(keys, keys + (k - 1), keys + n, desc);
  std::sort(keys, keys + k, desc);
  std::copy(keys, keys + k, out);
}
#ifndef LK_VOCAB_ISA_AVX512  // kernels_avx512.cpp ranks up to 256 keys by counting
LK_T void rank_desc(uint64_t* keys, int64_t n, int64_t k, uint64_t* out) { rank_desc_select(keys, n, k, out); }
#endif

// exp(x) for x in [-87.3, 88] (callers clamp): Cody-Waite reduction by ln 2, degree-6 polynomial on
// [-ln2/2, ln2/2], within 2 ulp; the rounding add of 1.5 * 2^23 leaves n in the low mantissa bits, so
// 2^n is one shift and one add away. Written once over the trait: every ISA gives the same bits.
template <class S>
LK_T typename S::F exp_clamped(typename S::F x) {
  using F = typename S::F;
  const F magic = S::set1(12582912.0f);  // 1.5 * 2^23
  const F tm = S::fmadd(x, S::set1(1.44269504088896341f), magic);
  const F n = S::sub(tm, magic);
  F r = S::fmadd(n, S::set1(-0.693145751953125f), x);
  r = S::fmadd(n, S::set1(-1.428606765330187045e-06f), r);
  F p = S::set1(1.0f / 720);
  p = S::fmadd(p, r, S::set1(1.0f / 120));
  p = S::fmadd(p, r, S::set1(1.0f / 24));
  p = S::fmadd(p, r, S::set1(1.0f / 6));
  p = S::fmadd(p, r, S::set1(0.5f));
  p = S::fmadd(p, r, S::set1(1.0f));
  p = S::fmadd(p, r, S::set1(1.0f));
  return S::mul(p, S::pow2_magic(tm));
}

// exp(x) for x <= 0 (all callers subtract a maximum), 0 below -87.3 (the fp32 normal range; a term that
// small cannot move a sum of terms >= 1).
template <class S>
LK_T typename S::F exp_nonpos(typename S::F x) {
  const auto lo = S::set1(-87.3f);
  return S::andnot(S::lt(x, lo), exp_clamped<S>(S::max(x, lo)));
}

// tanh(x) = sign(x) (1 - 2 / (exp(2|x|) + 1)), absolute error a few ulp of 1 (what the soft cap
// needs: c * tanh(z / c) within a few ulp of c).
template <class S>
LK_T typename S::F tanh_abs_err(typename S::F x) {
  using F = typename S::F;
  const F ax = S::abs(x);
  const F e = exp_nonpos<S>(S::mul(ax, S::set1(-2.0f)));  // exp(-2|x|) in (0, 1]
  F t = S::div(S::sub(S::set1(1.0f), e), S::add(S::set1(1.0f), e));
  t = S::or_(t, S::unord(x, x));  // NaN stays NaN (exp_nonpos maps it to a finite value)
  return S::copysign(t, x);
}

template <int DT, int NB, int U>
LK_T void dot_pair(const float* h, int64_t ldh, int64_t H, const void* w0, const void* w1, const void* p0,
                   const void* p1, float* o0, float* o1, int64_t ldo) {
  using F = typename S::F;
  constexpr int64_t kEsize = DT == kF32 ? 4 : 2;
  constexpr int64_t kStep = S::N * U;  // elements per iteration
  F a0[U][NB], a1[U][NB];
  for (int u = 0; u < U; ++u)
    for (int b = 0; b < NB; ++b) a0[u][b] = a1[u][b] = S::zero();
  int64_t i = 0;
  int64_t next_pf = 0;  // byte offset of the next line of the following rows to prefetch
  for (; i + kStep <= H; i += kStep) {
    if (p0 != nullptr && i * kEsize >= next_pf) {  // one 64-byte line of each following row per line consumed
      S::prefetch(static_cast<const char*>(p0) + next_pf);
      S::prefetch(static_cast<const char*>(p1) + next_pf);
      next_pf += 64;
    }
    for (int u = 0; u < U; ++u) {
      const F x0 = S::template load<DT>(w0, i + u * S::N), x1 = S::template load<DT>(w1, i + u * S::N);
      for (int b = 0; b < NB; ++b) {
        const F hv = S::loadu(h + b * ldh + i + u * S::N);
        a0[u][b] = S::fmadd(x0, hv, a0[u][b]);
        a1[u][b] = S::fmadd(x1, hv, a1[u][b]);
      }
    }
  }
  for (; i + S::N <= H; i += S::N) {
    const F x0 = S::template load<DT>(w0, i), x1 = S::template load<DT>(w1, i);
    for (int b = 0; b < NB; ++b) {
      const F hv = S::loadu(h + b * ldh + i);
      a0[0][b] = S::fmadd(x0, hv, a0[0][b]);
      a1[0][b] = S::fmadd(x1, hv, a1[0][b]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    for (int u = 1; u < U; ++u) {
      a0[0][b] = S::add(a0[0][b], a0[u][b]);
      a1[0][b] = S::add(a1[0][b], a1[u][b]);
    }
    float r0 = S::hsum(a0[0][b]), r1 = S::hsum(a1[0][b]);
    for (int64_t j = i; j < H; ++j) {
      const float hv = h[b * ldh + j];
      r0 = std::fma(load_scalar(w0, DT, j), hv, r0);
      r1 = std::fma(load_scalar(w1, DT, j), hv, r1);
    }
    o0[b * ldo] = r0;
    o1[b * ldo] = r1;
  }
}

template <int DT, int NB>
LK_T void dots_nb(const float* h, int64_t ldh, int64_t H, const char* wbase, int64_t rs_bytes, const int64_t* rows,
                  int64_t n, float* out, int64_t ldo) {
  constexpr int U = NB <= 2 ? 2 : 1;  // few hiddens: two accumulator sets hide the FMA latency
  for (int64_t j = 0; j < n; j += 2) {
    const int64_t j1 = j + 1 < n ? j + 1 : j;  // odd tail: the last row twice, written once
    const void* w0 = wbase + rows[j] * rs_bytes;
    const void* w1 = wbase + rows[j1] * rs_bytes;
    const bool more = j + 2 < n;
    const void* p0 = more ? wbase + rows[j + 2] * rs_bytes : nullptr;
    const void* p1 = more ? wbase + rows[j + 3 < n ? j + 3 : j + 2] * rs_bytes : nullptr;
    dot_pair<DT, NB, U>(h, ldh, H, w0, w1, p0, p1, out + j, out + j1, ldo);
  }
}

template <int DT>
LK_T void dots_dt(const float* h, int64_t ldh, int64_t B, int64_t H, const void* weight, int64_t row_stride,
                  const int64_t* rows, int64_t n, float* out, int64_t ldo) {
  const char* wbase = static_cast<const char*>(weight);
  const int64_t rs_bytes = row_stride * (DT == kF32 ? 4 : 2);
  if (B <= 4) {  // one pass over the rows for the whole batch
    switch (B) {
      case 1: return dots_nb<DT, 1>(h, ldh, H, wbase, rs_bytes, rows, n, out, ldo);
      case 2: return dots_nb<DT, 2>(h, ldh, H, wbase, rs_bytes, rows, n, out, ldo);
      case 3: return dots_nb<DT, 3>(h, ldh, H, wbase, rs_bytes, rows, n, out, ldo);
      default: return dots_nb<DT, 4>(h, ldh, H, wbase, rs_bytes, rows, n, out, ldo);
    }
  }
  // B > 4: a few rows at a time (they stay in L1) against every group of 4 hiddens
  constexpr int64_t kRows = 8;
  for (int64_t j = 0; j < n; j += kRows) {
    const int64_t m = std::min(kRows, n - j);
    for (int64_t b = 0; b < B; b += 4) {
      const float* hb = h + b * ldh;
      float* ob = out + b * ldo + j;
      switch (std::min<int64_t>(4, B - b)) {
        case 1: dots_nb<DT, 1>(hb, ldh, H, wbase, rs_bytes, rows + j, m, ob, ldo); break;
        case 2: dots_nb<DT, 2>(hb, ldh, H, wbase, rs_bytes, rows + j, m, ob, ldo); break;
        case 3: dots_nb<DT, 3>(hb, ldh, H, wbase, rs_bytes, rows + j, m, ob, ldo); break;
        default: dots_nb<DT, 4>(hb, ldh, H, wbase, rs_bytes, rows + j, m, ob, ldo); break;
      }
    }
  }
}

LK_T void dots(const float* h, int64_t ldh, int64_t B, int64_t H, const void* weight, int wdt, int64_t row_stride,
               const int64_t* rows, int64_t n, float* out, int64_t ldo) {
  if (wdt == kF32) return dots_dt<kF32>(h, ldh, B, H, weight, row_stride, rows, n, out, ldo);
  if (wdt == kBF16) return dots_dt<kBF16>(h, ldh, B, H, weight, row_stride, rows, n, out, ldo);
  return dots_dt<kF16>(h, ldh, B, H, weight, row_stride, rows, n, out, ldo);
}

LK_T void soft_cap(float* z, int64_t n, float cap, float scale) {
  const auto inv = S::set1(1.0f / cap);  // why a reciprocal: the bound allows u |z| for the division
  const auto cs = S::set1(cap), sc = S::set1(scale);
  int64_t i = 0;
  for (; i + S::N <= n; i += S::N) {
    const auto t = tanh_abs_err<S>(S::mul(S::loadu(z + i), inv));
    S::storeu(z + i, S::mul(S::mul(t, cs), sc));
  }
  for (; i < n; ++i) {
    const float t = tanh_abs_err<Scalar>(z[i] * (1.0f / cap));
    z[i] = t * cap * scale;
  }
}

LK_T double sum_exp(const float* z, int64_t n, float m) {
  auto acc = S::zero();
  const auto mv = S::set1(m);
  int64_t i = 0;
  double total = 0;
  for (; i + S::N <= n; i += S::N) acc = S::add(acc, exp_nonpos<S>(S::sub(S::loadu(z + i), mv)));
  total = S::hsum(acc);
  for (; i < n; ++i) total += exp_nonpos<Scalar>(z[i] - m);
  return total;
}

// One row run in blocks of kStatsBlock elements, each read from memory once (a block stays in L1 for the rare
// second look: a redo, or locating a new argmax). Per element, against a reference m_ref (the running max; for
// the first block with a finite value, its own max from a max-only pre-pass, so no redo), in log2 units:
//   y = x log2 e - c in one FMA, c = m_ref log2 e rounded to fp32: y = log2 e (x - m') with m' = c / log2 e, one
//   rounding (|dy| <= u/2 |y|); the block's sums are moved from m' to m_ref in fp64 at its end;
//   sum y (an FMA with 1; a block whose sum overflows, logits near -FLT_MAX as HF's finfo.min masking writes,
//   gets the sum of x - m_ref again in fp64);
//   yc = max(y, -87 log2 e): 2^yc is still an fp32 normal; -inf and the far tail clamp there (e^-87 cannot move a
//   sum of terms >= 1), so e yc stays finite;
//   e = 2^yc: n = round(yc) by the 1.5 * 2^23 rounding add, f = yc - n (exact, |f| <= 1/2), 2^f by a degree-4
//   polynomial, 2^n added to its exponent field (an integer add, no multiply); on AVX-512 instead
//   f = yc - floor(yc) (vreduceps), p(f) 2^floor(yc) (vscalefps);
//   s = sum e, t = sum e yc.
// That is 13 vector ops per N elements (AVX-512: 12), nearly all on the FP pipes: the pass is bound by them, not
// by memory, on AVX-512 machines with two cores, so the loop is written op by op. On Zen 4 a 512-bit op takes two
// of its four 256-bit pipes (two ops per cycle at most) and vreduceps / vscalefps two cycles of the add / max pair
// (bench/cpu_micro_pipes.cpp): ~15 cycles per 32 elements at best; the op runs ~9.0 per 16 hot on one thread
// (docs/bench/vocab_stats_fold_zen4.txt).
// A block whose max is more than 60 above m_ref (where e could overflow) is redone against its own max; NaN
// anywhere makes the block's sum of y NaN, +inf its max: the row is then flagged for the exact fallback. bf16 rows
// are loaded 2N at a time and split into even and odd elements (one op per N instead of a widening shuffle and a
// shift): sums do not care about order, and the argmax is located by index in a separate pass.
constexpr int64_t kStatsBlock = 4096;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kExpClamp = -87.0f;

struct BlockSums {
  float max;
  double sumx;  // sum (x - m_ref)
  double s, t;  // sum e^rc, sum e^rc rc
};

template <class V>  // c4 f^4 + c3 f^3 + c2 f^2 + c1 f + c0 by Horner's rule (four FMAs)
LK_T typename V::F horner4(typename V::F f, float c4, float c3, float c2, float c1, float c0) {
  typename V::F p = V::fmadd(V::set1(c4), f, V::set1(c3));
  p = V::fmadd(p, f, V::set1(c2));
  p = V::fmadd(p, f, V::set1(c1));
  return V::fmadd(p, f, V::set1(c0));
}

// Returns y = k x - c, for the caller's sum of y (k: log2 e, or log2 e / t; block_pass).
template <class V>  // V: the vector trait S, or Scalar for the tail
LK_T typename V::F stats_step(typename V::F v, typename V::F kv, typename V::F cv, typename V::F& mx,
                              typename V::F& s, typename V::F& t) {
  using F = typename V::F;
  mx = V::max(mx, v);
  const F y = V::fmsub(v, kv, cv);  // one rounding
  const F yc = V::max(y, V::set1(kExpClamp * kLog2e));  // NaN y: the clamp (z carries the NaN)
  F e;
  if constexpr (V::kReduceExp) {
    // f = yc - floor(yc) in [0, 1), exact; 2^f on [0, 1] as 1 + f q(f), q cubic: relative minimax with p(0) = 1
    // exactly (so e^0 = 1, a one-hot row's entropy stays ~0), 2.95e-6 = 50u in fp32
    const F f = V::frac_floor(yc);
    e = V::scalef(horner4<V>(f, 0.013426646590232849f, 0.05224253609776497f, 0.2412801831960678f,
                             0.6930448412895203f, 1.0f),
                  yc);
  } else {
    const F magic = V::set1(12582912.0f);  // 1.5 * 2^23: tm = n + magic rounds yc to the nearest integer n
    const F tm = V::add(yc, magic);
    const F f = V::sub(yc, V::sub(tm, magic));  // exact, |f| <= 1/2
    // 2^f on [-1/2, 1/2], degree-4 minimax (relative error 2.6e-6, 44 ulp: one FMA fewer than degree 5 is 10%
    // of this pass; the statistics it feeds are sums of V terms, and tests/tolerances.py carries the bound)
    e = V::ldexp_magic(horner4<V>(f, 0.009570068679749966f, 0.055917806923389435f, 0.240247443318367f,
                                  0.6931218504905701f, 0.9999992847442627f),
                       tm);
  }
  s = V::add(s, e);
  t = V::fmadd(e, yc, t);
  return y;
}

template <int DT, bool DIV>
LK_T float load_t(const void* x, int64_t i, float t) {
  const float v = load_scalar(x, DT, i);
  return DIV ? v / t : v;
}

template <int DT, bool DIV>
LK_T void load_pair_t(const void* x, int64_t i, typename S::F tv, typename S::F& a, typename S::F& b) {
  S::template load_pair<DT>(x, i, a, b);
  if (DIV) {
    a = S::div(a, tv);
    b = S::div(b, tv);
  }
}

// Software prefetch distances (bytes) of the stats pass. Why: a row is only 0.3-0.6 MB and each task a quarter of
// it, too short a stream for the hardware prefetcher to ramp up on; measured cold (every row from DRAM) on a
// 2-core Xeon, bf16 V = 151,936, B = 1: 46 -> 26 us (hot 18 us), fp32 48 -> 40 us; 1-16 KB tried, 4 KB best (into
// L1). A second one 16 KB ahead into L2 keeps more lines in flight: fp32 B = 4 from DRAM 108-115 -> 86-91 us
// (8 / 16 / 32 / 64 KB tried; bf16 rows are bound by the pass's ops and did not move).
constexpr int64_t kStatsPrefetch = 4096, kStatsPrefetchL2 = 16384;

// One vector through stats_step into one chain of block_pass's running values; the sum of y by an FMA, not an
// add: on Zen 4 the add / max pipe is the busier one.
template <class F>
LK_T __attribute__((always_inline)) void stats_chain(F v, F kv, F cv, F& mx, F& z, F& sv, F& tw) {
  z = S::fmadd(stats_step<S>(v, kv, cv, mx, sv, tw), S::set1(1.0f), z);
}

// Sums of n terms relative to a reference m (s = sum e^(z - m), t = sum e^(z - m) (z - m), sumx = sum (z - m)) made
// relative to m - d.
inline void move_reference(double d, int64_t n, double& s, double& t, double& sumx) {
  const double f = std::exp(d);
  t = f * (t + s * d);
  s *= f;
  sumx += static_cast<double>(n) * d;
}

// The block's sums in fp64, one element at a time: for |m_ref| so large (>= 2^26: logits that large, a small
// temperature, a row of finfo.min-masked logits) that the vector pass's reference folded into fp32 would be off by
// more than a few units of y, or infinite.
template <int DT, bool DIV>
LK_T BlockSums block_pass_f64(const void* x, int64_t b0, int64_t b1, float t, float m_ref) {
  BlockSums r{-INFINITY, 0.0, 0.0, 0.0};
  for (int64_t i = b0; i < b1; ++i) {
    const float v = load_t<DT, DIV>(x, i, t);
    r.max = v > r.max ? v : r.max;
    const double d = static_cast<double>(v) - m_ref, dc = std::max(d, static_cast<double>(kExpClamp)),
                 e = std::exp(dc);
    r.sumx += d;
    r.s += e;
    r.t += e * dc;
  }
  return r;
}

template <int DT, bool DIV>
LK_T BlockSums block_pass(const void* x, int64_t b0, int64_t b1, float t, float m_ref) {
  // |m_ref| >= 2^26 (logits of that size, or a small temperature): c = m_ref log2 e rounded to fp32 is then off by
  // more than 4 in log2 units, enough to push the row's largest e out of fp32's range (inf / NaN statistics from a
  // finite row, or all e flushed to 0); the fp64 pass has no folded reference to round
  if (!(std::fabs(m_ref) < 67108864.0f)) return block_pass_f64<DT, DIV>(x, b0, b1, t, m_ref);
  using F = typename S::F;
  constexpr int64_t es = DT == kF32 ? 4 : 2, step = 2 * S::N * es;  // bytes per iteration
  const char* xc = static_cast<const char*>(x);
  // y = k x - c in one FMA, x the logit as stored: k = log2 e (t = 1), else log2 e / t rounded once, so no logit
  // is divided here (vdivps: 1.33x the pass's time); the statistics of z = x / t then come from
  // y = k t (z - m'), m' = c / (k t), as e = 2^y = e^((1 + d)(z - m')) with 1 + d = k t ln 2 (|d| <= u/2 |z - m'|
  // relative to the exponent; log2 e itself carries 0.25u). The max is taken of x and divided once (x / t is
  // monotonic in x, so that is the max of z bit for bit); the sums, relative to m', are moved to m_ref in fp64
  // below.
  const float k = DIV ? static_cast<float>(1.4426950408889634 / t) : kLog2e;
  const float c = DIV ? static_cast<float>(static_cast<double>(m_ref) * t * k) : m_ref * kLog2e;
  const double kt = DIV ? static_cast<double>(k) * t : static_cast<double>(k);  // y per unit of z - m'
  const F kv = S::set1(k), cv = S::set1(c);
  constexpr int NC = S::kStatsChains;  // independent chains (the exp latency overlaps), loaded in pairs
  F mx[NC], z[NC], sv[NC], tw[NC];
  for (int j = 0; j < NC; ++j) mx[j] = S::set1(-INFINITY), z[j] = sv[j] = tw[j] = S::zero();
  int64_t i = b0;
  // the scalar build runs everything in the tail loop below
  for (; S::N > 1 && i + NC * S::N <= b1; i += NC * S::N) {
    for (int64_t o = 0; o < step * NC / 2; o += 64) {
      __builtin_prefetch(xc + i * es + kStatsPrefetch + o, 0, 3);    // T0
      __builtin_prefetch(xc + i * es + kStatsPrefetchL2 + o, 0, 2);  // T1
    }
    F v[NC];  // all loads first, then the chains (interleaved, bf16 B = 16 took 1.05x the time on Zen 4)
    for (int j = 0; j < NC; j += 2) S::template load_pair<DT>(x, i + j * S::N, v[j], v[j + 1]);
    for (int j = 0; j < NC; ++j) stats_chain(v[j], kv, cv, mx[j], z[j], sv[j], tw[j]);
  }
  for (; S::N > 1 && NC > 2 && i + 2 * S::N <= b1; i += 2 * S::N) {  // what is left in pairs: a shorter scalar tail
    F v0, v1;
    S::template load_pair<DT>(x, i, v0, v1);
    stats_chain(v0, kv, cv, mx[0], z[0], sv[0], tw[0]);
    stats_chain(v1, kv, cv, mx[1], z[1], sv[1], tw[1]);
  }
  for (int j = 1; j < NC; ++j) {
    mx[0] = S::max(mx[0], mx[j]);
    z[0] = S::add(z[0], z[j]);
    sv[0] = S::add(sv[0], sv[j]);
    tw[0] = S::add(tw[0], tw[j]);
  }
  float mxs = -INFINITY, ss = 0.0f, ts = 0.0f;
  double zs = 0;  // fp64: the scalar build's whole row comes through here, and one fp32 sum of 4096 y would drift
  for (; i < b1; ++i) zs += stats_step<Scalar>(load_scalar(x, DT, i), k, c, mxs, ss, ts);
  BlockSums r;
  const float vmax = S::hmax(mx[0]), xmax = mxs > vmax ? mxs : vmax;
  r.max = DIV ? xmax / t : xmax;
  // from y's units and m' to z's and m_ref: e = e^(z - m'), t = sum e (z - m'), z = sum (z - m')
  r.s = static_cast<double>(S::hsum(sv[0])) + ss;
  r.t = (static_cast<double>(S::hsum(tw[0])) + ts) / kt;
  r.sumx = (static_cast<double>(S::hsum(z[0])) + zs) / kt;
  move_reference(c / kt - m_ref, b1 - b0, r.s, r.t, r.sumx);
  if (std::isinf(r.sumx)) {  // fp32 overflow (or a -inf logit): the sum in fp64
    double zd = 0;
    for (int64_t j = b0; j < b1; ++j) zd += static_cast<double>(load_t<DT, DIV>(x, j, t)) - m_ref;
    r.sumx = zd;
  }
  return r;
}

template <int DT, bool DIV>
LK_T float block_max(const void* x, int64_t b0, int64_t b1, float t) {
  using F = typename S::F;
  const F tv = S::set1(t);
  F m0 = S::set1(-INFINITY), m1 = m0;
  int64_t i = b0;
  for (; i + 2 * S::N <= b1; i += 2 * S::N) {
    F v0, v1;
    load_pair_t<DT, DIV>(x, i, tv, v0, v1);
    m0 = S::max(m0, v0);
    m1 = S::max(m1, v1);
  }
  float m = S::hmax(S::max(m0, m1));
  for (; i < b1; ++i) {
    const float v = load_t<DT, DIV>(x, i, t);
    m = v > m ? v : m;
  }
  return m;
}

template <int DT, bool DIV>
LK_T int64_t first_index_of(const void* x, int64_t b0, int64_t b1, float t, float v) {
  const auto tv = S::set1(t), vv = S::set1(v);
  int64_t i = b0;
  for (; i + S::N <= b1; i += S::N) {
    const auto u = S::template load<DT>(x, i);
    const unsigned eq = S::eq_bits(DIV ? S::div(u, tv) : u, vv);
    if (eq) return i + __builtin_ctz(eq);
  }
  for (; i < b1; ++i)
    if (load_t<DT, DIV>(x, i, t) == v) return i;
  return b0;
}

template <int DT, bool DIV>
LK_T void stats_dt(const void* x, int64_t begin, int64_t end, float t, StatsPartial* out) {
  StatsPartial p;
  float amax = -INFINITY;  // the value p.argmax points at
  auto rebase = [&p](float m_new) {  // the totals, relative to p.m, made relative to m_new
    if (p.m != -INFINITY) move_reference(static_cast<double>(p.m) - m_new, p.n, p.s, p.t, p.sumx);
    p.m = m_new;
  };
  for (int64_t b0 = begin; b0 < end; b0 += kStatsBlock) {
    const int64_t b1 = std::min(end, b0 + kStatsBlock);
    float m_ref = p.m;
    if (m_ref == -INFINITY) {  // no finite maximum yet: this block's own (NaN / +-inf: any reference will do,
      const float bm = block_max<DT, DIV>(x, b0, b1, t);  // the pass flags or skips such a block)
      m_ref = std::isfinite(bm) ? bm : 0.0f;
    }
    BlockSums r = block_pass<DT, DIV>(x, b0, b1, t, m_ref);
    if (std::isnan(r.sumx) || r.max == INFINITY) {  // a NaN, or +inf (with -inf the sum is NaN too)
      p.bad = true;
      break;
    }
    if (r.max == -INFINITY) {  // every entry -inf: only the sum (-inf) changes
      p.sumx += r.sumx;
      p.n += b1 - b0;
      continue;
    }
    if (r.max > m_ref + 60.0f) {  // e may have overflowed: again against the block's own max
      m_ref = r.max;
      r = block_pass<DT, DIV>(x, b0, b1, t, m_ref);
    }
    if (m_ref > p.m) rebase(m_ref);  // m_ref is p.m or above: the totals now relative to it, as the block's sums
    p.s += r.s;
    p.t += r.t;
    p.sumx += r.sumx;
    p.n += b1 - b0;
    if (r.max > p.m) rebase(r.max);  // a new maximum within the overflow margin
    if (r.max > amax) {  // strictly: an equal maximum later keeps the lower index
      p.argmax = first_index_of<DT, DIV>(x, b0, b1, t, r.max);
      amax = r.max;
    }
  }
  *out = p;
}

template <bool DIV>
LK_T void stats_div(const void* x, int dt, int64_t begin, int64_t end, float t, StatsPartial* out) {
  if (dt == kF32) return stats_dt<kF32, DIV>(x, begin, end, t, out);
  if (dt == kBF16) return stats_dt<kBF16, DIV>(x, begin, end, t, out);
  return stats_dt<kF16, DIV>(x, begin, end, t, out);
}

LK_T void stats(const void* x, int dt, int64_t begin, int64_t end, float t, StatsPartial* out) {
  if (t == 1.0f) return stats_div<false>(x, dt, begin, end, t, out);
  return stats_div<true>(x, dt, begin, end, t, out);
}
