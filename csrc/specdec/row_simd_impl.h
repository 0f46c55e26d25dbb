// Width-generic SIMD row passes of the specdec kernels. Included inside a per-ISA namespace after
// `S` (the vector traits: row_avx2.cpp / row_avx512.cpp) and `LK_T` (that ISA's target attribute).
//
// Bit-exactness with numerics.h: the same fp32 operations in the same order, one rounding each (no
// FMA intrinsic, and -ffp-contract=off keeps the compiler from fusing); integer weights reach
// int64 exactly (an fp32 integer < 2^41 -> fp64 -> + 2^52, whose bit pattern is 0x4330... + W;
// the 0x4330... per element is subtracted from the wrapping uint64 sums at the end).
// Tails shorter than one vector run the scalar functions of numerics.h.

constexpr uint64_t kMagic52 = 0x4330000000000000ull;  // bit pattern of 2^52

// ------------------------------------------------------------------------------------- weights
// kExpCoeffs * 2^40: Horner on these gives exactly 2^40 times Horner on kExpCoeffs (a power-of-two
// scale commutes with every rounding while nothing is subnormal, and a subnormal product of the
// unscaled run is far below half an ulp of the coefficient it is added to: both sums round to it).
constexpr float kExpCoeffs40[8] = {kExpCoeffs[0] * 0x1p40f, kExpCoeffs[1] * 0x1p40f, kExpCoeffs[2] * 0x1p40f,
                                   kExpCoeffs[3] * 0x1p40f, kExpCoeffs[4] * 0x1p40f, kExpCoeffs[5] * 0x1p40f,
                                   kExpCoeffs[6] * 0x1p40f, kExpCoeffs[7] * 0x1p40f};

// 2^40 exp_poly(x / t - m) of K * N elements at i (K vectors), not yet truncated, and the live lanes
// (d >= cutoff: false for NaN, -inf); numerics.h exp_poly_2p40 lane by lane, with the final exact
// "* 2^n" done as an integer add to the exponent field (S::scale_pow2; n >= -41 keeps it normal).
// Why K vectors, step by step: one vector's exp is a ~25-operation dependency chain; the
// out-of-order window holds only a few such chains in program order, interleaving K of them keeps
// K operations ready at every step (~1.5-2x faster). Dead lanes compute garbage (NaN at worst, no
// traps): the callers clear them with the mask.
template <int DT, bool kScale, int K>
LK_T void exp40_k(const void* row, int64_t i, typename S::F tv, typename S::F mv, typename S::F* e40,
                  decltype(S::ge(tv, tv))* live) {
  using F = typename S::F;
  F d[K], n[K], r[K], p[K];
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) {
    F x = S::template load<DT>(row, i + j * S::N);
    if (kScale) x = S::div(x, tv);
    d[j] = S::sub(x, mv);
  }
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) live[j] = S::ge(d[j], S::set1(kExpCutoff));  // false for NaN
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) n[j] = S::mul(d[j], S::set1(kLog2e));
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) n[j] = S::floor(S::add(n[j], S::set1(0.5f)));
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) r[j] = S::sub(d[j], S::mul(n[j], S::set1(kLn2Hi)));
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) r[j] = S::sub(r[j], S::mul(n[j], S::set1(kLn2Lo)));
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) p[j] = S::set1(kExpCoeffs40[0]);
#pragma GCC unroll 8
  for (int c = 1; c < 8; ++c) {
#pragma GCC unroll 16
    for (int j = 0; j < K; ++j) p[j] = S::mul(p[j], r[j]);
#pragma GCC unroll 16
    for (int j = 0; j < K; ++j) p[j] = S::add(p[j], S::set1(kExpCoeffs40[c]));
  }
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) e40[j] = S::scale_pow2(p[j], n[j]);
}

// W of K * N elements at i as fp64 integers (two halves each), 0 for dead lanes; e (optional): W as fp32.
template <int DT, bool kScale, int K>
LK_T void weights_k(const void* row, int64_t i, typename S::F tv, typename S::F mv, typename S::D* lo,
                    typename S::D* hi, typename S::F* e = nullptr) {
  typename S::F e40[K];
  decltype(S::ge(tv, tv)) live[K];
  exp40_k<DT, kScale, K>(row, i, tv, mv, e40, live);
#pragma GCC unroll 16
  for (int j = 0; j < K; ++j) {
    const typename S::F w = S::keep(S::trunc(e40[j]), live[j]);
    if (e) e[j] = w;
    S::to_pd(w, lo[j], hi[j]);
  }
}

template <int DT, bool kScale>
LK_T void weights_v(const void* row, int64_t i, typename S::F t, typename S::F m, typename S::D& lo,
                    typename S::D& hi, typename S::F* e = nullptr) {
  weights_k<DT, kScale, 1>(row, i, t, m, &lo, &hi, e);
}

// Sum of the biased bit patterns (2^52 + W') of lo and hi into acc.
template <bool kThresh>
LK_T typename S::Q add_biased(typename S::Q acc, typename S::D lo, typename S::D hi, typename S::D wmin) {
  if (kThresh) {
    lo = S::keep_ge_pd(lo, wmin);
    hi = S::keep_ge_pd(hi, wmin);
  }
  const typename S::D magic = S::set1_pd(0x1p52);
  return S::add_q(acc, S::add_q(S::bits(S::add_pd(lo, magic)), S::bits(S::add_pd(hi, magic))));
}

template <int DT, bool kScale, bool kThresh, bool kStore>
LK_T int64_t weight_sum_t(const void* row, int64_t V, float t, float m, int64_t w_min, int64_t* blocks,
                          float* store, const char* pf, int pf_shift) {
  constexpr int N = S::N;
  const auto tv = S::set1(t), mv = S::set1(m);
  const auto wmin = S::set1_pd(static_cast<double>(w_min));
  uint64_t total = 0;
  for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
    const int64_t e = std::min(V, b0 + kBlock), ev = b0 + (e - b0) / N * N;
    auto acc = S::zero_q(), acc2 = S::zero_q();
    // acc / acc2 hold biased patterns (2^52 + W) unless S::add_w sums plain W (kPlain)
    constexpr bool kPlain = !kThresh && S::kPlainWeightSum;
    int64_t i = b0;
    constexpr int K = S::K;
    for (; i + K * N <= ev; i += K * N) {
      typename S::F e40[K];
      decltype(S::ge(tv, tv)) live[K];
      if (pf)
        for (int64_t o = i << pf_shift, oe = (i + K * N) << pf_shift; o < oe; o += 64) __builtin_prefetch(pf + o);
      exp40_k<DT, kScale, K>(row, i, tv, mv, e40, live);
#pragma GCC unroll 16
      for (int j = 0; j < K; ++j) {
        if (kStore) S::store(store + i + j * N, S::keep(S::trunc(e40[j]), live[j]));
        typename S::Q& a = j % 2 ? acc2 : acc;
        if constexpr (kPlain) {
          a = S::add_w(a, e40[j], live[j]);  // truncating conversion to int64 of the live lanes
        } else {
          typename S::D lo, hi;
          S::to_pd(S::keep(S::trunc(e40[j]), live[j]), lo, hi);
          a = add_biased<kThresh>(a, lo, hi, wmin);
        }
      }
    }
    uint64_t s = S::hsum_q(S::add_q(acc, acc2)) - (kPlain ? 0 : static_cast<uint64_t>(i - b0) * kMagic52);
    for (; i < ev; i += N) {
      typename S::D lo, hi;
      typename S::F w;
      weights_v<DT, kScale>(row, i, tv, mv, lo, hi, &w);
      if (kStore) S::store(store + i, w);
      s += S::hsum_q(add_biased<kThresh>(S::zero_q(), lo, hi, wmin)) - static_cast<uint64_t>(N) * kMagic52;
    }
    for (; i < e; ++i) {
      const int64_t w = weight_of(load_scalar(row, DT, i), t, m);
      if (kStore) store[i] = static_cast<float>(w);  // exact: w is the trunc of an fp32 value
      s += static_cast<uint64_t>(w >= w_min ? w : 0);
    }
    if (blocks) blocks[b0 / kBlock] = static_cast<int64_t>(s);
    total += s;
  }
  return static_cast<int64_t>(total);
}

// ------------------------------------------------------------------------------------ bound of S
// bound_term of numerics.h on N lanes: (1 + f) 2^k, k + f = max(d, -80) log2(e).
LK_T typename S::F bound_v(typename S::F d) {
  using F = typename S::F;
  const F tt = S::mul(S::max(d, S::set1(-80.0f)), S::set1(kLog2e));
  const F k = S::floor(tt);
  return S::mul(S::add(S::set1(1.0f), S::sub(tt, k)), S::pow2(k, 127));
}

template <int DT, bool kScale>
LK_T double bound_sum_t(const void* row, int64_t V, float t, float m) {
  constexpr int N = S::N;
  constexpr int64_t kBoundBlock = 512;  // fp32 lane sums of <= 32 terms each, then fp64
  const auto tv = S::set1(t), mv = S::set1(m);
  auto acc = S::zero_pd();
  int64_t i = 0;
  for (const int64_t ev = V / kBoundBlock * kBoundBlock; i < ev;) {
    auto s0 = S::set1(0.0f), s1 = S::set1(0.0f), s2 = s0, s3 = s0;
    for (const int64_t e = i + kBoundBlock; i < e; i += 4 * N) {
      auto x0 = S::template load<DT>(row, i), x1 = S::template load<DT>(row, i + N);
      auto x2 = S::template load<DT>(row, i + 2 * N), x3 = S::template load<DT>(row, i + 3 * N);
      if (kScale) {
        x0 = S::div(x0, tv);
        x1 = S::div(x1, tv);
        x2 = S::div(x2, tv);
        x3 = S::div(x3, tv);
      }
      s0 = S::add(s0, bound_v(S::sub(x0, mv)));
      s1 = S::add(s1, bound_v(S::sub(x1, mv)));
      s2 = S::add(s2, bound_v(S::sub(x2, mv)));
      s3 = S::add(s3, bound_v(S::sub(x3, mv)));
    }
    typename S::D a, b, c, d;
    S::to_pd(S::add(s0, s1), a, b);
    S::to_pd(S::add(s2, s3), c, d);
    acc = S::add_pd(acc, S::add_pd(S::add_pd(a, b), S::add_pd(c, d)));
  }
  double total = S::hsum_pd(acc);
  for (; i < V; ++i) {
    const float x = load_scalar(row, DT, i);
    total += bound_term((kScale ? x / t : x) - m);
  }
  return total;
}

// ------------------------------------------------------------------------------------- entropy
// log_ge1 of numerics.h on fp64 lanes (x = 0 gives a finite value, so W ln W = 0 needs no mask).
LK_T typename S::D log_pd(typename S::D x) {
  using D = typename S::D;
  using Q = typename S::Q;
  const Q bits = S::bits(x);
  const Q hi = S::template srli_q<32>(bits);
  const Q hx = S::and_q(hi, S::set1_q(0xfffff));
  const Q i = S::and_q(S::add_q(hx, S::set1_q(0x95f64)), S::set1_q(0x100000));
  const Q nb = S::or_q(S::template slli_q<32>(S::or_q(hx, S::xor_q(i, S::set1_q(0x3ff00000)))),
                       S::and_q(bits, S::set1_q(0xffffffff)));
  const Q kq = S::add_q(S::template srli_q<20>(hi), S::template srli_q<20>(i));  // k + 1023, in [0, 2^12)
  const D dk = S::sub_pd(S::pd(S::or_q(kq, S::set1_q(static_cast<int64_t>(kMagic52)))), S::set1_pd(0x1p52 + 1023.0));
  const D f = S::sub_pd(S::pd(nb), S::set1_pd(1.0));
  const D s = S::div_pd(f, S::add_pd(S::set1_pd(2.0), f));
  const D z = S::mul_pd(s, s), w = S::mul_pd(z, z);
  const D t1 = S::mul_pd(w, S::add_pd(S::set1_pd(kLnLg[1]),
                                      S::mul_pd(w, S::add_pd(S::set1_pd(kLnLg[3]), S::mul_pd(w, S::set1_pd(kLnLg[5]))))));
  D t2 = S::add_pd(S::set1_pd(kLnLg[4]), S::mul_pd(w, S::set1_pd(kLnLg[6])));
  t2 = S::mul_pd(z, S::add_pd(S::set1_pd(kLnLg[0]), S::mul_pd(w, S::add_pd(S::set1_pd(kLnLg[2]), S::mul_pd(w, t2)))));
  const D R = S::add_pd(t2, t1);
  const D inner = S::sub_pd(S::sub_pd(S::mul_pd(s, S::sub_pd(f, R)), S::mul_pd(dk, S::set1_pd(kLn2LoD))), f);
  return S::sub_pd(S::mul_pd(dk, S::set1_pd(kLn2HiD)), inner);
}

template <int DT, bool kScale>
LK_T double entropy_sum_t(const void* row, int64_t V, float t, float m, int64_t w_min) {
  constexpr int N = S::N;
  const auto tv = S::set1(t), mv = S::set1(m);
  const auto wmin = S::set1_pd(static_cast<double>(w_min));
  auto acc0 = S::zero_pd(), acc1 = S::zero_pd();
  const int64_t ev = V / N * N;
  for (int64_t i = 0; i < ev; i += N) {
    typename S::D lo, hi;
    weights_v<DT, kScale>(row, i, tv, mv, lo, hi);
    lo = S::keep_ge_pd(lo, wmin);
    hi = S::keep_ge_pd(hi, wmin);
    acc0 = S::add_pd(acc0, S::mul_pd(lo, log_pd(lo)));
    acc1 = S::add_pd(acc1, S::mul_pd(hi, log_pd(hi)));
  }
  double acc = S::hsum_pd(S::add_pd(acc0, acc1));
  for (int64_t i = ev; i < V; ++i) {
    const int64_t w = weight_of(load_scalar(row, DT, i), t, m);
    if (w >= w_min && w > 0) acc += static_cast<double>(w) * log_ge1(static_cast<double>(w));
  }
  return acc;
}

// ------------------------------------------------------------------------------------ residual
// residual_of of numerics.h on fp64 lanes: w kept weights, q clamped draft probabilities. No int64
// needed: w - floor(q S) is exact when >= 0 (both < 2^41 then) and rounds to <= 0 otherwise.
LK_T typename S::D residual_v(typename S::D w, typename S::D q, typename S::D Sd) {
  return S::max_pd(S::sub_pd(w, S::floor_pd(S::mul_pd(q, Sd))), S::zero_pd());
}

// Residual sums from the stored weights W [V] (W' = W >= w_min ? W : 0; kThresh: w_min > 1).
template <int QT, bool kThresh>
LK_T int64_t residual_sum_t(const float* W, int64_t V, int64_t w_min, const void* q, double S_, int64_t* blocks) {
  constexpr int N = S::N;
  using D = typename S::D;
  const D wmin = S::set1_pd(static_cast<double>(w_min)), Sd = S::set1_pd(S_), magic = S::set1_pd(0x1p52);
  uint64_t total = 0;
  for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
    const int64_t e = std::min(V, b0 + kBlock), ev = b0 + (e - b0) / N * N;
    auto acc = S::zero_q();
    for (int64_t i = b0; i < ev; i += N) {
      D w0, w1, q0, q1;
      S::to_pd(S::template load<kF32>(W, i), w0, w1);
      if (kThresh) {  // w_min == 1 keeps every W (W = 0 leaves r = 0 anyway)
        w0 = S::keep_ge_pd(w0, wmin);
        w1 = S::keep_ge_pd(w1, wmin);
      }
      // clamp q to [0, 1] in fp32 (max(NaN, 0) = 0; -0.0 -> +0.0 gives the same floor)
      S::to_pd(S::min(S::max(S::template load<QT>(q, i), S::set1(0.0f)), S::set1(1.0f)), q0, q1);
      acc = S::add_q(acc, S::bits(S::add_pd(residual_v(w0, q0, Sd), magic)));
      acc = S::add_q(acc, S::bits(S::add_pd(residual_v(w1, q1, Sd), magic)));
    }
    uint64_t s = S::hsum_q(acc) - static_cast<uint64_t>(ev - b0) * kMagic52;
    for (int64_t i = ev; i < e; ++i) {
      const int64_t w = static_cast<int64_t>(W[i]);
      s += static_cast<uint64_t>(residual_of(w >= w_min ? w : 0, load_scalar(q, QT, i), S_));
    }
    if (blocks) blocks[b0 / kBlock] = static_cast<int64_t>(s);
    total += s;
  }
  return static_cast<int64_t>(total);
}

// -------------------------------------------------------------------------------------- argmax
// Block maxima (4 accumulators, NaN flags from unordered compares), then the first index equal to
// the maximum inside the first block that reached it: ties go to the lowest index, like torch.argmax.
template <int DT>
LK_T ArgmaxOut argmax_t(const void* row, int64_t V, float* block_max) {
  constexpr int N = S::N;  // kArgBlock: a multiple of 4 N
  float best = -INFINITY;
  int64_t best_block = -1, best_i = 0;
  auto nan = S::nan_none();
  int64_t b0 = 0;
  for (; b0 + kArgBlock <= V; b0 += kArgBlock) {
    auto m0 = S::template load<DT>(row, b0), m1 = S::template load<DT>(row, b0 + N);
    auto m2 = S::template load<DT>(row, b0 + 2 * N), m3 = S::template load<DT>(row, b0 + 3 * N);
    nan = S::nan_or(nan, m0, m1);
    nan = S::nan_or(nan, m2, m3);
    for (int64_t i = b0 + 4 * N; i < b0 + kArgBlock; i += 4 * N) {
      const auto x0 = S::template load<DT>(row, i), x1 = S::template load<DT>(row, i + N);
      const auto x2 = S::template load<DT>(row, i + 2 * N), x3 = S::template load<DT>(row, i + 3 * N);
      nan = S::nan_or(nan, x0, x1);
      nan = S::nan_or(nan, x2, x3);
      m0 = S::max(m0, x0);
      m1 = S::max(m1, x1);
      m2 = S::max(m2, x2);
      m3 = S::max(m3, x3);
    }
    const float bm = S::hmax(S::max(S::max(m0, m1), S::max(m2, m3)));
    if (block_max) block_max[b0 / kArgBlock] = bm;
    if (bm > best) {
      best = bm;
      best_block = b0;
    }
  }
  bool any_nan = S::nan_any(nan), tail_best = false;
  float tail_max = -INFINITY;
  for (int64_t i = b0; i < V; ++i) {
    const float x = load_scalar(row, DT, i);
    any_nan |= std::isnan(x);
    tail_max = x > tail_max ? x : tail_max;
    if (x > best) {
      best = x;
      best_i = i;
      tail_best = true;
    }
  }
  if (block_max && b0 < V) block_max[b0 / kArgBlock] = tail_max;
  if (any_nan || !std::isfinite(best)) return {best, 0, false};
  if (!tail_best) {
    const auto bv = S::set1(best);
    for (int64_t i = best_block;; i += N) {  // the block holds an element equal to best
      const unsigned hits = S::eq_bits(S::template load<DT>(row, i), bv);
      if (hits) {
        best_i = i + __builtin_ctz(hits);
        break;
      }
    }
  }
  return {best, best_i, true};
}

// ----------------------------------------------------------------------------------- the table
#define LK_DT_SWITCH(dtype, F, ...) \
  ((dtype) == kF32 ? F<kF32>(__VA_ARGS__) : (dtype) == kBF16 ? F<kBF16>(__VA_ARGS__) : F<kF16>(__VA_ARGS__))

ArgmaxOut argmax(const void* row, int dtype, int64_t V, float* block_max) {
  return LK_DT_SWITCH(dtype, argmax_t, row, V, block_max);
}

template <int DT, bool kScale>
int64_t weight_sum_st(const void* row, int64_t V, float t, float m, int64_t w_min, int64_t* blocks, float* store,
                      const char* pf, int pf_shift) {
  if (store)
    return w_min > 1 ? weight_sum_t<DT, kScale, true, true>(row, V, t, m, w_min, blocks, store, pf, pf_shift)
                     : weight_sum_t<DT, kScale, false, true>(row, V, t, m, w_min, blocks, store, pf, pf_shift);
  return w_min > 1 ? weight_sum_t<DT, kScale, true, false>(row, V, t, m, w_min, blocks, store, pf, pf_shift)
                   : weight_sum_t<DT, kScale, false, false>(row, V, t, m, w_min, blocks, store, pf, pf_shift);
}
template <int DT>
int64_t weight_sum_dt(const void* row, int64_t V, float t, float m, int64_t w_min, int64_t* blocks, float* store,
                      const char* pf, int pf_shift) {
  return t == 1.0f ? weight_sum_st<DT, false>(row, V, t, m, w_min, blocks, store, pf, pf_shift)
                   : weight_sum_st<DT, true>(row, V, t, m, w_min, blocks, store, pf, pf_shift);
}
int64_t weight_sum(const void* row, int dtype, int64_t V, float t, float m, int64_t w_min, int64_t* blocks,
                   float* store, const void* pf, int pf_dtype) {
  return LK_DT_SWITCH(dtype, weight_sum_dt, row, V, t, m, w_min, blocks, store, static_cast<const char*>(pf),
                      pf_dtype == kF32 ? 2 : 1);
}

template <int DT>
double bound_sum_dt(const void* row, int64_t V, float t, float m) {
  return t == 1.0f ? bound_sum_t<DT, false>(row, V, t, m) : bound_sum_t<DT, true>(row, V, t, m);
}
double bound_sum(const void* row, int dtype, int64_t V, float t, float m) {
  return LK_DT_SWITCH(dtype, bound_sum_dt, row, V, t, m);
}

template <int DT>
double entropy_sum_dt(const void* row, int64_t V, float t, float m, int64_t w_min) {
  return t == 1.0f ? entropy_sum_t<DT, false>(row, V, t, m, w_min) : entropy_sum_t<DT, true>(row, V, t, m, w_min);
}
double entropy_sum(const void* row, int dtype, int64_t V, float t, float m, int64_t w_min) {
  return LK_DT_SWITCH(dtype, entropy_sum_dt, row, V, t, m, w_min);
}

int64_t residual_sum_w(const float* W, int64_t V, int64_t w_min, const void* q, int q_dtype, double S_,
                       int64_t* blocks) {
  if (w_min > 1) {
    if (q_dtype == kF32) return residual_sum_t<kF32, true>(W, V, w_min, q, S_, blocks);
    if (q_dtype == kBF16) return residual_sum_t<kBF16, true>(W, V, w_min, q, S_, blocks);
    return residual_sum_t<kF16, true>(W, V, w_min, q, S_, blocks);
  }
  if (q_dtype == kF32) return residual_sum_t<kF32, false>(W, V, w_min, q, S_, blocks);
  if (q_dtype == kBF16) return residual_sum_t<kBF16, false>(W, V, w_min, q, S_, blocks);
  return residual_sum_t<kF16, false>(W, V, w_min, q, S_, blocks);
}
#undef LK_DT_SWITCH
