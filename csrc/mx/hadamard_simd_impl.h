// Width-generic SIMD Walsh-Hadamard transform. Like mx_simd_impl.h (whose helpers it uses), not a
// normal header: included by mx_avx512.cpp / mx_avx2.cpp inside their ISA namespace.
//
// Walsh-Hadamard: stages h < N inside a vector (lane i pairs with lane i ^ h), stages h >= N
// between vectors. Each output is produced by the same fp32 additions as the reference.
// ---------------------------------------------------------------------------------------------
template <int H>
LK_T I butterfly_lanes(I v) {
  I p = V::perm_xor<H>(v);
  return V::mask_fsub(V::fadd(v, p), V::hi_lanes<H>(), p, v);  // lo lanes: a + b, hi lanes: a - b
}

LK_T I butterflies_in_vector(I v, int n) {
  v = butterfly_lanes<1>(v);
  if (n >= 4) v = butterfly_lanes<2>(v);
  if (n >= 8) v = butterfly_lanes<4>(v);
  if constexpr (N == 16) {
    if (n >= 16) v = butterfly_lanes<8>(v);
  }
  return v;
}

// chunk < N: N / chunk chunks per vector, one pass over the flat data.
template <int DT>
LK_T void had_small(const HadamardArgs& h, int64_t c0, int64_t c1) {
  const int n = h.chunk;
  alignas(64) float sg[N];
  for (int j = 0; j < N; ++j) sg[j] = h.signs ? h.signs[j % n] : 1.0f;
  const I sgv = V::load(sg), scv = V::fset1(h.scale);
  int64_t i = c0 * n;
  const int64_t i1 = c1 * n;
  for (; i + N <= i1; i += N) {
    I y = V::fmul(butterflies_in_vector(load_x<DT>(h.x, i), n), scv);
    if (h.signs) y = V::fmul(y, sgv);
    store_out<DT>(h.out, i, y);
  }
  hadamard_range_scalar(h, i / n, c1);
}

// Stages h = N .. (R/2) N between the R vectors of v (one aligned run of R * N elements).
template <int R>
LK_T void butterflies_across(I* v) {
#pragma GCC unroll 16
  for (int hv = 1; hv < R; hv *= 2)
#pragma GCC unroll 16
    for (int blk = 0; blk < R; blk += 2 * hv)
#pragma GCC unroll 16
      for (int j = blk; j < blk + hv; ++j) {
        I a = v[j], b = v[j + hv];
        v[j] = V::fadd(a, b);
        v[j + hv] = V::fsub(a, b);
      }
}

template <int DT>
LK_T void scale_store(const HadamardArgs& h, int64_t i, int j, I y, I scv) {
  y = V::fmul(y, scv);
  if (h.signs) y = V::fmul(y, V::load(h.signs + j));
  store_out<DT>(h.out, i, y);
}

// chunk = R * N <= 16 N: the whole chunk stays in registers.
template <int DT, int R>
LK_T void had_regs(const HadamardArgs& h, int64_t c0, int64_t c1) {
  const I scv = V::fset1(h.scale);
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t base = c * (R * N);
    I v[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) v[r] = butterflies_in_vector(load_x<DT>(h.x, base + r * N), N);
    butterflies_across<R>(v);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) scale_store<DT>(h, base + r * N, r * N, v[r], scv);
  }
}

// chunk > 16 N: runs of 16 vectors through registers into the (64-byte aligned) work buffer,
// the remaining stages as passes over it, the last one fused with scale / signs / store.
template <int DT>
LK_T void had_large(const HadamardArgs& h, int64_t c0, int64_t c1) {
  const int n = h.chunk;
  float* w = h.work;
  const I scv = V::fset1(h.scale);
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t base = c * n;
    for (int j = 0; j < n; j += 16 * N) {
      I v[16];
#pragma GCC unroll 16
      for (int r = 0; r < 16; ++r) v[r] = butterflies_in_vector(load_x<DT>(h.x, base + j + r * N), N);
      butterflies_across<16>(v);
#pragma GCC unroll 16
      for (int r = 0; r < 16; ++r) V::store(w + j + r * N, v[r]);
    }
    int hh = 16 * N;
    for (; 4 * hh < n; hh *= 4)  // two stages (hh, 2 hh) per pass over w
      for (int blk = 0; blk < n; blk += 4 * hh)
        for (int j = blk; j < blk + hh; j += N) {
          I a0 = V::load(w + j), a1 = V::load(w + j + hh), a2 = V::load(w + j + 2 * hh), a3 = V::load(w + j + 3 * hh);
          I b0 = V::fadd(a0, a1), b1 = V::fsub(a0, a1), b2 = V::fadd(a2, a3), b3 = V::fsub(a2, a3);
          V::store(w + j, V::fadd(b0, b2));
          V::store(w + j + hh, V::fadd(b1, b3));
          V::store(w + j + 2 * hh, V::fsub(b0, b2));
          V::store(w + j + 3 * hh, V::fsub(b1, b3));
        }
    for (; 2 * hh < n; hh *= 2)
      for (int blk = 0; blk < n; blk += 2 * hh)
        for (int j = blk; j < blk + hh; j += N) {
          I a = V::load(w + j), b = V::load(w + j + hh);
          V::store(w + j, V::fadd(a, b));
          V::store(w + j + hh, V::fsub(a, b));
        }
    for (int j = 0; j < hh; j += N) {  // last stage: h = n / 2
      I a = V::load(w + j), b = V::load(w + j + hh);
      scale_store<DT>(h, base + j, j, V::fadd(a, b), scv);
      scale_store<DT>(h, base + j + hh, j + hh, V::fsub(a, b), scv);
    }
  }
}

template <int DT>
LK_T void had_dt(const HadamardArgs& h, int64_t c0, int64_t c1) {
  switch (h.chunk / N) {
    case 0: return had_small<DT>(h, c0, c1);
    case 1: return had_regs<DT, 1>(h, c0, c1);
    case 2: return had_regs<DT, 2>(h, c0, c1);
    case 4: return had_regs<DT, 4>(h, c0, c1);
    case 8: return had_regs<DT, 8>(h, c0, c1);
    case 16: return had_regs<DT, 16>(h, c0, c1);
    default: return had_large<DT>(h, c0, c1);
  }
}

LK_T void hadamard(const HadamardArgs& h, int64_t c0, int64_t c1) {
  if (h.dtype == kInF32)
    had_dt<kInF32>(h, c0, c1);
  else if (h.dtype == kInBF16)
    had_dt<kInBF16>(h, c0, c1);
  else
    had_dt<kInF16>(h, c0, c1);
}
