// The moe GEMV loops written once over a vector trait S (vec.h); included by kernels_{scalar,avx2,avx512}.cpp
// inside their own namespace with LK_T set to that ISA's target attribute. No include guard on purpose.
//
// Decode is memory-bound: the bytes that count are the expert weights, each read once per call.
// gemv_rows: one vector, and 2..4 vectors whose n x C elements stay below tile_min_elems(): rows read one after the
// other as one prefetched stream (stream_rows1, stream_rows_n); otherwise a register tile of 4 rows x NT
// (<= S::kMaxNT) vectors; a row quad (<= 32 KB) stays in L1 while the
// token groups loop over it. gemv_cols (transposed views): axpy form, a strip of 4 S::N contiguous output rows
// x NT vectors, broadcasting x[t][c] and streaming the strip's column segments; the strip stays in L2 across
// token groups.

// pf_rows: how many rows after the tile to prefetch (0: none), one cache line per row every line's worth of columns:
// the next tile's rows arrive while this one computes (rows of 4 KB each start a new page, where the hardware
// prefetcher would stop and retrain).
template <int DT, int NR, int NT>
LK_T void tile_rows(const void* w, int64_t ld, int64_t r, int64_t C, const float* const* xs, float* const* outs,
                    int pf_rows) {
  using F = typename S::F;
  constexpr int64_t kEsz = DT == kF32 ? 4 : 2, kLine = 64 / kEsz;  // elements per cache line
  F acc[NR][NT];
  for (int i = 0; i < NR; ++i)
    for (int t = 0; t < NT; ++t) acc[i][t] = S::zero();
  const char* pf = static_cast<const char*>(w) + (r + NR) * ld * kEsz;
  int64_t c = 0;
  for (; c + S::N <= C; c += S::N) {
    if (pf_rows && (c & (kLine - 1)) < S::N)
      for (int i = 0; i < pf_rows; ++i) S::prefetch(pf + (i * ld + c) * kEsz);
    for (int i = 0; i < NR; ++i) {
      const F wv = S::template load<DT>(w, (r + i) * ld + c);
      for (int t = 0; t < NT; ++t) acc[i][t] = S::fmadd(wv, S::loadu(xs[t] + c), acc[i][t]);
    }
  }
  for (int i = 0; i < NR; ++i) {
    for (int t = 0; t < NT; ++t) {
      float s = S::hsum(acc[i][t]);
      for (int64_t cc = c; cc < C; ++cc) s += load1<DT>(w, (r + i) * ld + cc) * xs[t][cc];
      outs[t][r + i] = s;
    }
  }
}

template <int DT, int NR>
LK_T void tile_rows_n(const void* w, int64_t ld, int64_t r, int64_t C, const float* const* xs, int64_t n,
                      float* const* outs, int pf_rows) {
  constexpr int M = S::kMaxNT;
  for (int64_t t0 = 0; t0 < n; t0 += M) {
    const int64_t nt = n - t0 < M ? n - t0 : M;
    const int pf = t0 == 0 ? pf_rows : 0;  // the later token groups find the tile in L1
    if (nt >= 4 && M >= 4) tile_rows<DT, NR, (M >= 4 ? 4 : 1)>(w, ld, r, C, xs + t0, outs + t0, pf);
    else if (nt == 3) tile_rows<DT, NR, 3>(w, ld, r, C, xs + t0, outs + t0, pf);
    else if (nt == 2) tile_rows<DT, NR, 2>(w, ld, r, C, xs + t0, outs + t0, pf);
    else tile_rows<DT, NR, 1>(w, ld, r, C, xs + t0, outs + t0, pf);
  }
}

// Prefetch the lines 1 KB past columns [c, c + span) of the row starting at element `row`, continuing into
// the next row (ld elements on) when `more_rows` (1 KB: measured on Zen 2, 512 B - 4 KB within noise).
template <int DT>
LK_T void prefetch_ahead(const char* base, int64_t row, int64_t ld, int64_t c, int64_t span, int64_t C,
                         bool more_rows) {
  constexpr int64_t kEsz = DT == kF32 ? 4 : 2, ahead = 1024 / kEsz;
  for (int64_t q = 0; q < span * kEsz; q += 64) {
    const int64_t o = c + ahead + q / kEsz;
    const int64_t po = o < C ? row + o : (more_rows ? row + ld + (o - C) : -1);
    if (po >= 0) S::prefetch(base + po * kEsz);
  }
}

// One vector (decode at T = 1): rows one after the other, so the block is read as one sequential stream; four
// accumulators over the columns hide the FMA latency; a software prefetch runs kAhead bytes ahead of the stream,
// into the next row at the row's end (the hardware prefetcher stops at every 4 KB page).
template <int DT>
LK_T void stream_rows1(const void* w, int64_t ld, int64_t r0, int64_t r1, int64_t C, const float* x, float* out) {
  using F = typename S::F;
  const char* base = static_cast<const char*>(w);
  for (int64_t r = r0; r < r1; ++r) {
    F a0 = S::zero(), a1 = S::zero(), a2 = S::zero(), a3 = S::zero();
    const int64_t row = r * ld;
    int64_t c = 0;
    for (; c + 4 * S::N <= C; c += 4 * S::N) {
      prefetch_ahead<DT>(base, row, ld, c, 4 * S::N, C, r + 1 < r1);
      a0 = S::fmadd(S::template load<DT>(w, row + c), S::loadu(x + c), a0);
      a1 = S::fmadd(S::template load<DT>(w, row + c + S::N), S::loadu(x + c + S::N), a1);
      a2 = S::fmadd(S::template load<DT>(w, row + c + 2 * S::N), S::loadu(x + c + 2 * S::N), a2);
      a3 = S::fmadd(S::template load<DT>(w, row + c + 3 * S::N), S::loadu(x + c + 3 * S::N), a3);
    }
    for (; c + S::N <= C; c += S::N) a0 = S::fmadd(S::template load<DT>(w, row + c), S::loadu(x + c), a0);
    float s = S::hsum(S::add(S::add(a0, a1), S::add(a2, a3)));
    for (; c < C; ++c) s += load1<DT>(w, row + c) * x[c];
    out[r] = s;
  }
}

// A few vectors (NT = 2..4: decode experts with a handful of tokens): like stream_rows1, rows one after the other as
// one sequential stream with a software prefetch 1 KB ahead, two accumulators per vector. The 4-row tile reads four
// rows side by side instead (four streams per thread), which the prefetchers follow less well.
template <int DT, int NT>
LK_T void stream_rows_n(const void* w, int64_t ld, int64_t r0, int64_t r1, int64_t C, const float* const* xs,
                        float* const* outs) {
  using F = typename S::F;
  const char* base = static_cast<const char*>(w);
  for (int64_t r = r0; r < r1; ++r) {
    F a[NT][2];
    for (int t = 0; t < NT; ++t) a[t][0] = a[t][1] = S::zero();
    const int64_t row = r * ld;
    int64_t c = 0;
    for (; c + 2 * S::N <= C; c += 2 * S::N) {
      prefetch_ahead<DT>(base, row, ld, c, 2 * S::N, C, r + 1 < r1);
      const F w0 = S::template load<DT>(w, row + c), w1 = S::template load<DT>(w, row + c + S::N);
      for (int t = 0; t < NT; ++t) {
        a[t][0] = S::fmadd(w0, S::loadu(xs[t] + c), a[t][0]);
        a[t][1] = S::fmadd(w1, S::loadu(xs[t] + c + S::N), a[t][1]);
      }
    }
    for (; c + S::N <= C; c += S::N) {
      const F w0 = S::template load<DT>(w, row + c);
      for (int t = 0; t < NT; ++t) a[t][0] = S::fmadd(w0, S::loadu(xs[t] + c), a[t][0]);
    }
    for (int t = 0; t < NT; ++t) {
      float s = S::hsum(S::add(a[t][0], a[t][1]));
      for (int64_t cc = c; cc < C; ++cc) s += load1<DT>(w, row + cc) * xs[t][cc];
      outs[t][r] = s;
    }
  }
}

template <int DT>
LK_T void gemv_rows_dt(const void* w, int64_t ld, int64_t r0, int64_t r1, int64_t C, const float* const* xs, int64_t n,
                       float* const* outs) {
  // the stream while the n vectors stay in L1 beside it (kernels.h tile_min_elems: 32 KB of fp32 by default). Why
  // (2-core Zen 4, weights from DRAM, settings alternated in one process; docs/bench/moe_tile_rule_ab_zen4.txt):
  // Mixtral-8x7B T = 1 (C = 4096 / 14336) 0.81-0.90x the time on the avx512 ISA, 0.89-0.91x on avx2; Qwen3-30B-A3B
  // 0.93-1.03x. From 16 KB (8 KB of x per token at C = 2048): Qwen3 at 1-2 tokens per expert 1.02-1.12x.
  const bool stream = n <= 4 && (S::N == 1 || n * C < tile_min_elems());
  if (stream && n == 1) return stream_rows1<DT>(w, ld, r0, r1, C, xs[0], outs[0]);
  if (stream) {  // measured (Zen 3, Qwen3-30B-A3B at T = 256, 80% skip, ~3 tokens per expert): 5-13% faster than the tile
    if (n == 2) return stream_rows_n<DT, 2>(w, ld, r0, r1, C, xs, outs);
    if (n == 3) return stream_rows_n<DT, 3>(w, ld, r0, r1, C, xs, outs);
    return stream_rows_n<DT, 4>(w, ld, r0, r1, C, xs, outs);
  }
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) tile_rows_n<DT, 4>(w, ld, r, C, xs, n, outs, (int)std::min<int64_t>(4, r1 - r - 4));
  for (; r < r1; ++r) tile_rows_n<DT, 1>(w, ld, r, C, xs, n, outs, 0);
}

LK_T void gemv_rows(const void* w, int dt, int64_t ld, int64_t r0, int64_t r1, int64_t C, const float* const* xs,
                    int64_t n, float* const* outs) {
  if (dt == kBF16) gemv_rows_dt<kBF16>(w, ld, r0, r1, C, xs, n, outs);
  else if (dt == kF16) gemv_rows_dt<kF16>(w, ld, r0, r1, C, xs, n, outs);
  else gemv_rows_dt<kF32>(w, ld, r0, r1, C, xs, n, outs);
}

// Strip of NV * S::N rows starting at r, NT vectors.
template <int DT, int NV, int NT>
LK_T void tile_cols(const void* w, int64_t ld, int64_t r, int64_t C, const float* const* xs, float* const* outs) {
  using F = typename S::F;
  F acc[NV][NT];
  for (int v = 0; v < NV; ++v)
    for (int t = 0; t < NT; ++t) acc[v][t] = S::zero();
  for (int64_t c = 0; c < C; ++c) {
    const int64_t base = c * ld + r;
    F xb[NT];
    for (int t = 0; t < NT; ++t) xb[t] = S::set1(xs[t][c]);
    for (int v = 0; v < NV; ++v) {
      const F wv = S::template load<DT>(w, base + v * S::N);
      for (int t = 0; t < NT; ++t) acc[v][t] = S::fmadd(wv, xb[t], acc[v][t]);
    }
  }
  for (int v = 0; v < NV; ++v)
    for (int t = 0; t < NT; ++t) S::storeu(outs[t] + r + v * S::N, acc[v][t]);
}

template <int DT, int NV>
LK_T void tile_cols_n(const void* w, int64_t ld, int64_t r, int64_t C, const float* const* xs, int64_t n,
                      float* const* outs) {
  constexpr int M = S::kMaxNT;
  for (int64_t t0 = 0; t0 < n; t0 += M) {
    const int64_t nt = n - t0 < M ? n - t0 : M;
    if (nt >= 4 && M >= 4) tile_cols<DT, NV, (M >= 4 ? 4 : 1)>(w, ld, r, C, xs + t0, outs + t0);
    else if (nt == 3) tile_cols<DT, NV, 3>(w, ld, r, C, xs + t0, outs + t0);
    else if (nt == 2) tile_cols<DT, NV, 2>(w, ld, r, C, xs + t0, outs + t0);
    else tile_cols<DT, NV, 1>(w, ld, r, C, xs + t0, outs + t0);
  }
}

template <int DT>
LK_T void gemv_cols_dt(const void* w, int64_t ld, int64_t r0, int64_t r1, int64_t C, const float* const* xs, int64_t n,
                       float* const* outs) {
  int64_t r = r0;
  for (; r + 4 * S::N <= r1; r += 4 * S::N) tile_cols_n<DT, 4>(w, ld, r, C, xs, n, outs);
  for (; r + S::N <= r1; r += S::N) tile_cols_n<DT, 1>(w, ld, r, C, xs, n, outs);
  for (; r < r1; ++r) {  // fewer than S::N rows left: one strided row at a time
    for (int64_t t = 0; t < n; ++t) {
      float s = 0.0f;
      for (int64_t c = 0; c < C; ++c) s += load1<DT>(w, c * ld + r) * xs[t][c];
      outs[t][r] = s;
    }
  }
}

LK_T void gemv_cols(const void* w, int dt, int64_t ld, int64_t r0, int64_t r1, int64_t C, const float* const* xs,
                    int64_t n, float* const* outs) {
  if (dt == kBF16) gemv_cols_dt<kBF16>(w, ld, r0, r1, C, xs, n, outs);
  else if (dt == kF16) gemv_cols_dt<kF16>(w, ld, r0, r1, C, xs, n, outs);
  else gemv_cols_dt<kF32>(w, ld, r0, r1, C, xs, n, outs);
}
