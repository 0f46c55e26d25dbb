// Portable body of the SEFP inner loops (kernels.h), written once as plain loops and compiled per
// ISA translation unit: kernels_<isa>.cpp defines LK_T (inline + that ISA's target attribute) and
// includes this inside its own namespace, so the compiler vectorizes each copy for its ISA.
// Nothing here is ISA-specific: the AVX2 / AVX-512 tables add the transposed kernels
// (planes_simd_impl.h) for the widths that matter (m <= 8).
//
// Included by kernels_{scalar,avx2,avx512}.cpp only (no include guard, no namespace of its own).

// fp32 bits of an fp16 value (exact; fp16 subnormals become fp32 normals).
LK_T uint32_t f16_to_f32_bits(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t e = (h >> 10) & 0x1f, mant = h & 0x3ff;
  const float sub = static_cast<float>(mant) * 5.9604644775390625e-08f;  // mant * 2^-24, exact
  uint32_t sub_bits;
  std::memcpy(&sub_bits, &sub, 4);
  const uint32_t r = e == 0 ? sub_bits : e == 31 ? (0x7f800000u | (mant << 13)) : (((e + 112) << 23) | (mant << 13));
  return r | sign;
}

// Row n of w as fp32 bits, zero padded: bits [Kp].
LK_T void load_row_bits(const void* w, int dt, int64_t ldw, int64_t n, int64_t K, int64_t Kp, uint32_t* bits) {
  if (dt == kF32) {
    std::memcpy(bits, static_cast<const float*>(w) + n * ldw, K * 4);
  } else {
    const uint16_t* h = static_cast<const uint16_t*>(w) + n * ldw;
    if (dt == kBF16)
      for (int64_t k = 0; k < K; ++k) bits[k] = static_cast<uint32_t>(h[k]) << 16;
    else
      for (int64_t k = 0; k < K; ++k) bits[k] = f16_to_f32_bits(h[k]);
  }
  for (int64_t k = K; k < Kp; ++k) bits[k] = 0;
}

// One block of G fp32 bit patterns -> its exponent, or 127 + 1 if it holds a NaN / Inf.
LK_T int block_exponent(const uint32_t* b, int64_t G) {
  int E = -128, bad = 0;
  for (int64_t j = 0; j < G; ++j) {
    const uint32_t u = b[j] & 0x7fffffffu;
    const int field = static_cast<int>(u >> 23);
    bad |= field == 255;
    const int e = u ? (field > 1 ? field : 1) - 127 : -128;  // zeros are ignored
    E = e > E ? e : E;
  }
  return bad ? 128 : E;
}

// One plane word group (32 elements, fp32 bits b) of a block with exponent E -> sign word and
// m_max mantissa words (MSB plane first) at out[p * plane_stride], p = 0 .. m_max.
LK_T void quantize_word(const uint32_t* b, int E, int m_max, uint32_t* out, int64_t plane_stride) {
  uint32_t q[kWord];
  uint32_t sign = 0;
  for (int j = 0; j < kWord; ++j) {
    const uint32_t u = b[j], field = (u >> 23) & 0xff;
    const uint32_t M = (u & 0x7fffffu) | (field ? 0x800000u : 0u);  // significand, implicit bit for normals
    const int e = (field > 1 ? static_cast<int>(field) : 1) - 127;
    const int sh = 24 - m_max + E - e;  // >= 6: q = floor(|w| 2^(m_max - 1 - E)) = M >> sh
    q[j] = sh >= 32 ? 0u : M >> sh;
    sign |= (u >> 31) << j;
  }
  out[0] = sign;
  for (int p = 1; p <= m_max; ++p) {
    const int bit = m_max - p;
    uint32_t word = 0;
    for (int j = 0; j < kWord; ++j) word |= ((q[j] >> bit) & 1u) << j;
    out[p * plane_stride] = word;
  }
}

LK_T int64_t quantize_rows(const void* w, int dt, int64_t ldw, int64_t K, int m_max, int gs, int64_t Kw,
                           uint32_t* planes, int64_t plane_stride, int8_t* exps, int64_t n0, int64_t n1) {
  const int64_t Kp = Kw * kWord, G = int64_t(kWord) << gs, nb = Kw >> gs;
  thread_local std::vector<uint32_t> bits;
  bits.resize(Kp);
  for (int64_t n = n0; n < n1; ++n) {
    load_row_bits(w, dt, ldw, n, K, Kp, bits.data());
    for (int64_t blk = 0; blk < nb; ++blk) {
      const uint32_t* b = bits.data() + blk * G;
      const int E = block_exponent(b, G);
      if (E > 127) return n;
      exps[n * nb + blk] = static_cast<int8_t>(E);
      for (int64_t v = 0; v < (int64_t(1) << gs); ++v) {
        const int64_t word = (blk << gs) + v;
        quantize_word(b + v * kWord, E, m_max, planes + n * Kw + word, plane_stride);
      }
    }
  }
  return -1;
}

LK_T void decode_row(const Planes& P, int64_t n, float* out) {
  const float* lut = scale_table(P.m);
  const uint32_t* row = P.data + n * P.Kw;
  const int8_t* ex = P.exps + n * P.nb;
  for (int64_t w = 0; w < P.Kw; ++w) {
    uint32_t q[kWord] = {};
    for (int p = 1; p <= P.m; ++p) {  // MSB first: Horner
      const uint32_t word = row[p * P.plane_stride + w];
      for (int j = 0; j < kWord; ++j) q[j] = (q[j] << 1) | ((word >> j) & 1u);
    }
    const uint32_t sign = row[w];
    const float scale = lut[ex[w >> P.gs] + 128];
    float* o = out + w * kWord;
    for (int j = 0; j < kWord; ++j) {
      const float v = static_cast<float>(static_cast<int32_t>(q[j])) * scale;  // exact: q < 2^16
      uint32_t u;
      std::memcpy(&u, &v, 4);
      u |= ((sign >> j) & 1u) << 31;  // a sign-only zero stays -0.0, as the reference
      std::memcpy(o + j, &u, 4);
    }
  }
}

// sum a[k] b[k] over k < n (n a multiple of 16) in 16 fp32 lanes.
LK_T float dot16(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  for (int64_t k = 0; k < n; k += 16)
    for (int l = 0; l < 16; ++l) acc[l] += a[k + l] * b[k + l];
  float s = 0.0f;
  for (int l = 0; l < 16; ++l) s += acc[l];
  return s;
}

LK_T void gemv_natural(const Planes& P, const float* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                       int64_t ldy) {
  thread_local std::vector<float> wrow;
  const int64_t Kp = P.Kw * kWord;
  wrow.resize(Kp);
  for (int64_t n = n0; n < n1; ++n) {
    decode_row(P, n, wrow.data());
    for (int64_t r = 0; r < R; ++r) y[r * ldy + n] = dot16(x + r * ldx, wrow.data(), Kp);
  }
}
