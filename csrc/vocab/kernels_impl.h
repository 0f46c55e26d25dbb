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

// 2^x for x in [-126, 126] (callers clamp): n = round(x) by the 1.5 * 2^23 rounding add, f = x - n exact in
// [-1/2, 1/2], 2^f by a degree-5 minimax polynomial (relative error 7.5e-8; with FMA Horner within 2 ulp),
// 2^n from the low mantissa bits of the rounding sum. The logit_stats pass works in base 2: 2^x needs two
// FMAs fewer than e^x (no ln 2 reduction), for one multiply by log2 e.
template <class S>
LK_T typename S::F exp2_clamped(typename S::F x) {
  using F = typename S::F;
  const F magic = S::set1(12582912.0f);  // 1.5 * 2^23
  const F tm = S::add(x, magic);
  const F f = S::sub(x, S::sub(tm, magic));
  F p = S::set1(1.327647199258419e-3f);
  p = S::fmadd(p, f, S::set1(9.675541334454401e-3f));
  p = S::fmadd(p, f, S::set1(5.550713273497929e-2f));
  p = S::fmadd(p, f, S::set1(2.402211972383998e-1f));
  p = S::fmadd(p, f, S::set1(6.931469670647603e-1f));
  p = S::fmadd(p, f, S::set1(1.0000000716546849f));
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

// One row run in blocks of kStatsBlock, each read once: the block max, sum x, and exp sums against a
// reference m_ref (the running max of the earlier blocks; a block more than 60 above it, where exp
// could overflow, is redone against its own max). Block sums go to fp64 totals, rescaled when the max
// grows; the argmax is located (one more pass over the L1-resident block) only then. NaN anywhere makes
// the block's sum x NaN, +inf its max: the row is then flagged for the exact fallback.
constexpr int64_t kStatsBlock = 1024;

template <int DT>
LK_T typename S::F load_scaled(const void* x, int64_t i, bool div, typename S::F tv) {
  const auto v = S::template load<DT>(x, i);
  return div ? S::div(v, tv) : v;
}

// sum (x - m_ref) is accumulated times 2^-64 in fp32: logits near -FLT_MAX (HF masking with finfo.min) cannot
// overflow it; the scaled-away low bits are below 2^-85 per term.
constexpr float kZScale = 5.42101086242752217e-20f;  // 2^-64
constexpr double kZUnscale = 18446744073709551616.0;  // 2^64

struct BlockSums {
  float max;
  double sumx;  // sum (x - m_ref)
  double s, t;  // sum e^(x - m_ref), sum e^(x - m_ref) (x - m_ref)
};

constexpr float kLog2e = 1.44269504088896341f;
constexpr double kLn2 = 0.6931471805599453;

// Sums of one block against the reference m_ref, in base 2: d = (x - m_ref) log2 e (one FMA; the rounded
// m_ref log2 e shifts every d by the same amount, which only moves the reference), e = 2^d,
// s = sum e, t = ln 2 sum e d, sum x - m_ref = ln 2 sum d.
// Sums of one block against the reference m_ref, in base 2: r = x - m_ref, d = r log2 e, e = 2^d, s = sum e,
// t = ln 2 sum e d, and sum r (times 2^-64 in fp32: logits near -FLT_MAX cannot overflow it).
template <int DT>
LK_T BlockSums block_pass(const void* x, int64_t b0, int64_t b1, float t, float m_ref) {
  using F = typename S::F;
  const bool div = t != 1.0f;
  const F tv = S::set1(t), mv = S::set1(m_ref), l2e = S::set1(kLog2e), lo = S::set1(-126.0f),
          zscale = S::set1(kZScale);
  F mx0 = S::set1(-INFINITY), mx1 = mx0, z0 = S::zero(), z1 = z0, s0 = z0, s1 = z0, t0 = z0, t1 = z0;
  int64_t i = b0;
  for (; i + 2 * S::N <= b1; i += 2 * S::N) {  // two independent chains: the exp latency overlaps
    const F v0 = load_scaled<DT>(x, i, div, tv), v1 = load_scaled<DT>(x, i + S::N, div, tv);
    mx0 = S::max(mx0, v0);
    mx1 = S::max(mx1, v1);
    const F r0 = S::sub(v0, mv), r1 = S::sub(v1, mv);
    z0 = S::fmadd(r0, zscale, z0);
    z1 = S::fmadd(r1, zscale, z1);
    const F d0 = S::max(S::mul(r0, l2e), lo), d1 = S::max(S::mul(r1, l2e), lo);  // -inf: a finite d, e = 2^-126
    const F e0 = exp2_clamped<S>(d0), e1 = exp2_clamped<S>(d1);
    s0 = S::add(s0, e0);
    s1 = S::add(s1, e1);
    t0 = S::fmadd(e0, d0, t0);
    t1 = S::fmadd(e1, d1, t1);
  }
  for (; i + S::N <= b1; i += S::N) {
    const F v0 = load_scaled<DT>(x, i, div, tv);
    mx0 = S::max(mx0, v0);
    const F r0 = S::sub(v0, mv);
    z0 = S::fmadd(r0, zscale, z0);
    const F d0 = S::max(S::mul(r0, l2e), lo);
    const F e0 = exp2_clamped<S>(d0);
    s0 = S::add(s0, e0);
    t0 = S::fmadd(e0, d0, t0);
  }
  BlockSums r;
  r.max = S::hmax(S::max(mx0, mx1));
  r.sumx = static_cast<double>(S::hsum(S::add(z0, z1))) * kZUnscale;
  r.s = S::hsum(S::add(s0, s1));
  double st = S::hsum(S::add(t0, t1));
  for (; i < b1; ++i) {
    float v = load_scalar(x, DT, i);
    v = div ? v / t : v;
    r.max = v > r.max ? v : r.max;
    const float rr = v - m_ref;
    r.sumx += static_cast<double>(rr);
    const float d = std::max(rr * kLog2e, -126.0f);
    const float e = exp2_clamped<Scalar>(d);
    r.s += e;
    st += static_cast<double>(e) * d;
  }
  r.t = st * kLn2;
  return r;
}

template <int DT>
LK_T int64_t first_index_of(const void* x, int64_t b0, int64_t b1, float t, float v) {
  const bool div = t != 1.0f;
  const auto tv = S::set1(t), vv = S::set1(v);
  int64_t i = b0;
  for (; i + S::N <= b1; i += S::N) {
    const unsigned eq = S::eq_bits(load_scaled<DT>(x, i, div, tv), vv);
    if (eq) return i + __builtin_ctz(eq);
  }
  for (; i < b1; ++i) {
    const float u = load_scalar(x, DT, i);
    if ((div ? u / t : u) == v) return i;
  }
  return b0;
}

template <int DT>
LK_T void stats_dt(const void* x, int64_t begin, int64_t end, float t, StatsPartial* out) {
  StatsPartial p;
  float amax = -INFINITY;  // the value p.argmax points at
  auto rebase = [&p](float m_new) {  // the totals, relative to p.m, made relative to m_new
    if (p.m != -INFINITY) {
      const double d = static_cast<double>(p.m) - m_new, f = std::exp(d);
      p.t = f * (p.t + p.s * d);
      p.s *= f;
      p.sumx += static_cast<double>(p.n) * d;
    }
    p.m = m_new;
  };
  for (int64_t b0 = begin; b0 < end; b0 += kStatsBlock) {
    const int64_t b1 = std::min(end, b0 + kStatsBlock);
    const float m_ref = p.m;
    BlockSums r = block_pass<DT>(x, b0, b1, t, m_ref == -INFINITY ? 0.0f : m_ref);
    if (std::isnan(r.sumx) || r.max == INFINITY) {  // a NaN, or +inf (with -inf the sum is NaN too)
      p.bad = true;
      break;
    }
    if (r.max == -INFINITY) {  // every entry -inf: only the sum (-inf) changes
      p.sumx += r.sumx;
      p.n += b1 - b0;
      continue;
    }
    if (m_ref == -INFINITY || r.max > m_ref + 60.0f) {  // no reference yet, or exp may have overflowed
      rebase(r.max);
      r = block_pass<DT>(x, b0, b1, t, r.max);
    }
    p.s += r.s;  // all relative to p.m
    p.t += r.t;
    p.sumx += r.sumx;
    p.n += b1 - b0;
    if (r.max > p.m) rebase(r.max);  // a new maximum within the overflow margin
    if (r.max > amax) {  // strictly: an equal maximum later keeps the lower index
      p.argmax = first_index_of<DT>(x, b0, b1, t, r.max);
      amax = r.max;
    }
  }
  *out = p;
}

LK_T void stats(const void* x, int dt, int64_t begin, int64_t end, float t, StatsPartial* out) {
  if (dt == kF32) return stats_dt<kF32>(x, begin, end, t, out);
  if (dt == kBF16) return stats_dt<kBF16>(x, begin, end, t, out);
  return stats_dt<kF16>(x, begin, end, t, out);
}
