// Width-generic SIMD kernels for the MX/NV formats: RNE quantize (a general path for any block
// size and input, and a fast path for N whole blocks at a time), the NV tensor-amax pass, and
// dequantize. Stochastic rounding always runs the portable scalar code (scalar_kernels.h).
//
// Not a normal header: mx_avx512.cpp / mx_avx2.cpp include it inside their own namespace after
// defining `V` (the vector wrapper: V512 or V256) and `LK_T` (the matching target attribute), so
// every function below is compiled once per ISA and never for the baseline. The integer
// algorithm is the one of formats.h (see round_rne / mx_scale_exp there), lane-wise.
//
// Blocks are processed in "groups": a group is one block when block_size >= N lanes, else the
// N / block_size blocks that fill one vector (segmented reductions keep them apart).

using I = V::I;
using M = V::M;
constexpr int N = V::N;

template <int DT>
LK_T I load_x(const void* x, int64_t i) {
  if (DT == kInF32) return V::load((const uint32_t*)x + i);
  if (DT == kInBF16) return V::load_bf16((const uint16_t*)x + i);
  return V::load_f16((const uint16_t*)x + i);
}

template <int DT>
LK_T void store_out(void* out, int64_t i, I bits) {
  if (DT == kInF32)
    V::store((uint32_t*)out + i, bits);
  else if (DT == kInBF16)
    V::store_bf16((uint16_t*)out + i, bits);
  else
    V::store_f16((uint16_t*)out + i, bits);
}

// Max over aligned groups of `bs` lanes, broadcast to the group (bs >= N: whole vector).
LK_T I group_max(I a, int bs) {
  a = V::max_u(a, V::perm_xor<1>(a));
  if (bs >= 4) a = V::max_u(a, V::perm_xor<2>(a));
  if (bs >= 8) a = V::max_u(a, V::perm_xor<4>(a));
  if constexpr (N == 16) {
    if (bs >= 16) a = V::max_u(a, V::perm_xor<8>(a));
  }
  return a;
}

LK_T I const_(int32_t v) { return V::set1(v); }

// Biased exponent of the normalised value (formats.h biased_exp), lane-wise.
LK_T I biased_exp_v(I a, I ex, M sub) {
  return V::blend(sub, ex, V::sub(V::srli<23>(V::cvt_i2f(a)), const_(149)));
}

// E8M0 exponent from block amax lanes (formats.h mx_scale_exp).
LK_T I scale_exp_v(I A, const ElemParams& p, bool floor_mode) {
  I ex = V::srli<23>(A);
  M sub = V::eq(ex, V::zero());
  I cv = V::cvt_i2f(A);
  I e = V::sub(V::blend(sub, ex, V::sub(V::srli<23>(cv), const_(149))), const_(127 + p.emax));
  if (!floor_mode) {
    I nm = V::and_(V::blend(sub, A, cv), const_(0x7fffff));
    e = V::blend(V::gt_i(nm, const_((int32_t)p.mant_max)), e, V::add(e, const_(1)));
  }
  e = V::max_i(V::min_i(e, const_(127)), const_(-127));
  return V::blend(V::eq(A, V::zero()), e, const_(-127));
}

// Magnitude codes of |x| * 2^-e, RNE, saturating (formats.h round_rne). a: |x| bits.
template <int EL>
LK_T I round_rne_v(I a, I e) {
  constexpr ElemParams p = elem_params(EL);
  I ex = V::srli<23>(a);
  M sub = V::eq(ex, V::zero());
  I sig = V::blend(sub, V::or_(V::and_(a, const_(0x7fffff)), const_(0x800000)), a);
  I ux1 = V::max_i(ex, const_(1));
  I shift, base = V::zero();
  if (p.is_int) {
    shift = V::sub(V::add(e, const_(150)), ux1);
  } else {
    I m = V::max_i(V::sub(V::sub(biased_exp_v(a, ex, sub), const_(127)), e), const_(p.emin));
    shift = V::sub(V::add(V::add(m, e), const_(150 - p.mbits)), ux1);
    base = V::slli<p.mbits>(V::sub(m, const_(p.emin)));
  }
  shift = V::max_i(shift, const_(1));  // counts >= 32 shift everything out, as wanted
  I half_m1 = V::sub(V::sllv(const_(1), V::sub(shift, const_(1))), const_(1));
  I odd = V::and_(V::srlv(sig, shift), const_(1));
  I r = V::srlv(V::add(V::add(sig, half_m1), odd), shift);
  return V::min_i(V::add(base, r), const_(p.max_code));
}

// Stored code byte from magnitude code and the input's sign bit (formats.h encode_code).
template <int EL>
LK_T I encode_v(I mag, I x) {
  constexpr ElemParams p = elem_params(EL);
  if (p.is_int) {
    I neg = V::srai<31>(x);  // all ones for negative x
    return V::and_(V::sub(V::xor_(mag, neg), neg), const_(p.bits == 4 ? 0xF : 0xFF));
  }
  return V::or_(mag, V::and_(V::srli<31 - p.sign_bit>(x), const_(1 << p.sign_bit)));
}

// Positive E4M3 codes (1..0x7E) -> fp32 values (exact; no subnormal arithmetic).
LK_T I e4m3_value_v(I c) {
  I normal = V::add(V::slli<20>(c), const_(120 << 23));
  I subn = V::fmul(V::cvt_i2f(V::and_(c, const_(7))), V::fset1(0.001953125f));  // m * 2^-9
  return V::blend(V::eq(V::srli<3>(c), V::zero()), normal, subn);
}

LK_T void store_group_scales(uint8_t* dst, I sbyte, int G, int bs) {
  if (G == 1) {
    *dst = (uint8_t)V::lane0(sbyte);
    return;
  }
  alignas(64) uint8_t tmp[N];
  V::store_u8(tmp, sbyte);
  for (int j = 0; j < G; ++j) dst[j] = tmp[j * bs];
}

// NV element scaling: v = x / d (exact division, scale_mode "rceil") or v = x * r with
// r = min(1 / d, FLT_MAX) (RECIP: scale_mode "reciprocal"); MX: x unchanged. s: d or r.
template <bool NV, bool RECIP>
LK_T I nv_scaled(I x, I s) {
  if constexpr (!NV) return x;
  else if constexpr (RECIP) return V::fmul(x, s);
  else return V::fdiv(x, s);
}

// formats.h nv_block_reciprocal, lane-wise.
LK_T I nv_reciprocal_v(I d) { return V::fmin(V::fdiv(V::fset1(1.0f), d), V::fset1(3.40282347e38f)); }

// General RNE path, any block size and any input: groups of max(1, N / bs) blocks, the exact
// lane-wise form of formats.h's algorithm. NV requires a finite positive q.g.
template <int EL, int DT, bool NV, bool RECIP>
LK_T void quant_range_general(const QuantArgs& q, int64_t b0, int64_t b1) {
  constexpr ElemParams p = elem_params(EL);
  const int bs = q.block_size;
  const int G = bs >= N ? 1 : N / bs;     // blocks per group
  const int nvec = bs >= N ? bs / N : 1;  // vectors per group
  const I gv = V::fset1(q.g);
  int64_t b = b0;
  for (; b + G <= b1; b += G) {
    const int64_t i0 = b * bs;
    I amax = V::zero();
    for (int v = 0; v < nvec; ++v) amax = V::max_u(amax, V::and_(load_x<DT>(q.x, i0 + v * N), const_(0x7fffffff)));
    amax = group_max(amax, bs);
    const M bad = V::gt_u(amax, const_(0x7f7fffff));  // NaN / Inf in the block
    I e = V::zero(), d = V::zero(), sbyte;
    if (NV) {
      I t = V::fdiv(V::fdiv(amax, const_((int32_t)p.max_bits)), gv);  // (amax / max) / g
      I sc = V::max_i(round_rne_v<kFp8E4M3>(t, V::zero()), const_(1));
      d = V::fmul(gv, e4m3_value_v(sc));
      if (V::any(V::mandnot(bad, V::feq(d, V::zero())))) {  // g * s underflowed: 0/0 cases
        quantize_range_scalar(q, b, b + G);
        continue;
      }
      if (RECIP) d = nv_reciprocal_v(d);  // from here on: the multiplier r
      sbyte = V::blend(bad, sc, const_(0x7F));
    } else {
      e = scale_exp_v(amax, p, q.scale_mode == kScaleFloor);
      sbyte = V::blend(bad, V::add(e, const_(127)), const_(0xFF));
    }
    store_group_scales(q.scales + b, sbyte, G, bs);
    for (int v = 0; v < nvec; ++v) {
      const int64_t i = i0 + v * N;
      I x = load_x<DT>(q.x, i);
      I a = V::and_(nv_scaled<NV, RECIP>(x, d), const_(0x7fffffff));
      I code = V::blend(bad, encode_v<EL>(round_rne_v<EL>(a, e), x), V::zero());
      if (p.bits == 4)
        V::store_nibbles(q.codes + i / 2, code);
      else
        V::store_u8(q.codes + i, code);
    }
  }
  if (b < b1) quantize_range_scalar(q, b, b1);
}

// ---------------------------------------------------------------------------------------------
// Fast path (block_size >= N): N blocks at a time. Block maxima come out of one transposed
// reduction (lane j = block j), the per-block constants are computed for N blocks at once, and
// the element rounding uses two cheap exact forms instead of the general shift arithmetic:
//  * element-normal range: RNE on the fp32 pattern re-biased to the element's exponent bias
//    (ap = a - K), dropping 23 - mbits bits; the carry moves into the exponent as it should;
//  * element-subnormal range and INT elements: v + 2^(q + 23) in fp32 (v = |x| * 2^-e, exact),
//    whose IEEE RNE addition rounds v to a multiple of the quantum 2^q.
// Blocks this form does not cover (FP blocks so tiny that subnormal inputs could map to normal
// elements; NV blocks whose g * s underflows) go to the general path.
// ---------------------------------------------------------------------------------------------
// W16: the lanes hold two 16-bit halves (maxima taken half-wise; a level moves whole 32-bit lanes).
template <int H, bool W16 = false>
LK_T void tmax_level(I* m) {
  const M hi = V::hi_lanes<H>();
  for (int j = 0; j < H; ++j) {  // lanes with bit H set come from m[j + H]
    I a = m[j], b = m[j + H];
    I u = V::blend(hi, a, b), w = V::perm_xor<H>(V::blend(hi, b, a));
    m[j] = W16 ? V::max_u16(u, w) : V::max_u(u, w);
  }
}

// m[j] (j < N): lane-wise partial maxima of block j -> one vector, lane j = max of block j.
template <bool W16 = false>
LK_T I transpose_max(I* m) {
  if constexpr (N == 16) tmax_level<8, W16>(m);
  tmax_level<4, W16>(m);
  tmax_level<2, W16>(m);
  tmax_level<1, W16>(m);
  return m[0];
}

// Lanes of two 16-bit halves -> the larger half, zero-extended.
LK_T I max_halves(I v) { return V::max_u(V::and_(v, const_(0xffff)), V::srli<16>(v)); }

// |x| maxima of blocks [b, b + N) (block_size >= N), lane j = block j; NaN / Inf patterns kept.
template <int DT>
LK_T I block_amax_group(const void* x, int64_t b, int bs) {
  I m[N];
  // 16-bit data: the transposing levels take 16-bit maxima (pairs of halves travel together) and the
  // two halves are folded once at the end, instead of once per block.
  if (DT != kInF32 && bs == N) {  // one vector = blocks 2k (lanes < N/2) and 2k + 1
    const I absm16 = const_(0x7fff7fff);
    const uint16_t* xh = (const uint16_t*)x + b * bs;
    for (int k = 0; k < N / 2; ++k) m[k] = V::and_(V::load(xh + 2 * k * bs), absm16);
    if constexpr (N == 16) tmax_level<4, true>(m);  // the first level (lane bit N/2) is the block parity
    tmax_level<2, true>(m);
    tmax_level<1, true>(m);
    alignas(64) int32_t idx[N];  // block j sits in lane (j >> 1) + (j & 1) * N / 2
    for (int j = 0; j < N; ++j) idx[j] = (j >> 1) + (j & 1) * (N / 2);
    const I a16 = V::permute(max_halves(m[0]), V::load(idx));
    return DT == kInBF16 ? V::slli<16>(a16) : V::f16_lanes_to_f32(a16);
  }
  if (DT != kInF32 && bs >= 2 * N) {  // one vector of raw halves lies inside one block
    const I absm16 = const_(0x7fff7fff);
    const uint16_t* xh = (const uint16_t*)x;
    for (int j = 0; j < N; ++j) {
      const uint16_t* p = xh + (b + j) * bs;
      I acc = V::and_(V::load(p), absm16);
      for (int v = 2 * N; v < bs; v += 2 * N) acc = V::max_u16(acc, V::and_(V::load(p + v), absm16));
      m[j] = acc;
    }
    const I a16 = max_halves(transpose_max<true>(m));
    return DT == kInBF16 ? V::slli<16>(a16) : V::f16_lanes_to_f32(a16);
  }
  const I absm = const_(0x7fffffff);
  for (int j = 0; j < N; ++j) {
    const int64_t i0 = (b + j) * bs;
    I acc = V::and_(load_x<DT>(x, i0), absm);
    for (int v = N; v < bs; v += N) acc = V::max_u(acc, V::and_(load_x<DT>(x, i0 + v), absm));
    m[j] = acc;
  }
  return transpose_max(m);
}

// amax / max_elem of blocks [b, b + N) parked by nv_amax at the start of their code bytes (4-bit
// codes: N * bs / 2 >= 4 N bytes), read back before quant_fast_group overwrites them. nv_amax
// does the first of the scale's two divisions: it is memory-bound, the quantize pass is not.
LK_T I parked_amax(const uint8_t* codes, int64_t b, int bs) { return V::load(codes + b * (bs / 2)); }

// fast_code's K for the re-bias eb = 126 + emin (+ e for MX): ap = a - (eb << 23) puts v's
// element-normal range at ap >= 2^23; K = half - 1 - (eb << 23), so a + K = ap + half - 1 (the
// RNE offset folded in).
constexpr int32_t fp_bias_k(int mbits, int eb) { return (int32_t)((1 << (22 - mbits)) - 1 - ((int64_t)eb << 23)); }

// Stored code bytes. x: input fp32 bits; vs: v = x / d for NV, x for MX (signed);
// K: fp_bias_k(mbits, 126 + emin (+ e for MX)); sinv: 2^-e (MX only). SAT = false when no v
// can exceed the element max (MX rceil; NV with normal, unsaturated block scales), which drops
// the clamps.
template <int EL, bool NV, bool SAT = true>
LK_T I fast_code(I x, I vs, I K, I sinv) {
  constexpr ElemParams p = elem_params(EL);
  const I a = V::and_(vs, const_(0x7fffffff));  // |v| (NV), |x| (MX)
  const I v = NV ? a : V::fmul(a, sinv);
  if constexpr (p.is_int && !SAT) {
    // Signed v + 1.5 * 2^23 stays in [2^23, 2^24): IEEE RNE rounds v to an integer n (ties to
    // even, symmetric in the sign: -0 gives 0) and the pattern's low bits are n in two's
    // complement, which is the stored code. |v| <= max_code + 1/2 here, so no clamp.
    const I vsig = NV ? vs : V::fmul(vs, sinv);  // exact: a power-of-two scale
    return V::and_(V::fadd(vsig, V::fset1(12582912.0f)), const_(p.bits == 4 ? 0xF : 0xFF));
  } else if constexpr (p.is_int) {
    const I vc = V::fmin(v, V::fset1(4194304.0f));  // 2^22: saturates anyway; keeps v + 2^23 exact
    I code = V::min_i(V::sub(V::fadd(vc, V::fset1(8388608.0f)), const_(0x4b000000)), const_(p.max_code));
    I neg = V::srai<31>(x);
    return V::and_(V::sub(V::xor_(code, neg), neg), const_(p.bits == 4 ? 0xF : 0xFF));
  } else {
    constexpr int s = 23 - p.mbits;
    constexpr int32_t magic = (150 + p.emin - p.mbits) << 23;  // 2^(emin - mbits + 23)
    I t = V::add(a, K);                                      // ap + half - 1, ap = a - (eb << 23)
    I rn = V::srli<s>(V::inc_if_any(t, a, const_(1 << s)));  // + the odd bit s of ap (= bit s of a)
    I rs = V::sub(V::fadd(v, const_(magic)), const_(magic));
    I code = V::blend(V::gt_i(t, const_((1 << 23) + (1 << (s - 1)) - 2)), rs, rn);  // ap >= 2^23: normal
    if (SAT) code = V::min_i(code, const_(p.max_code));
    return V::or_(code, V::and_(V::srli<31 - p.sign_bit>(x), const_(1 << p.sign_bit)));
  }
}

// Codes of blocks [b, b + N), one byte per element; kk / ss: per-block K and 2^-e (MX) or d
// (NV; r with RECIP).
template <int EL, int DT, bool NV, bool RECIP, bool SAT>
LK_T void fast_codes_8bit(const void* x, uint8_t* codes, int64_t b, int bs, const int32_t* kk, const int32_t* ss,
                          unsigned badbits) {
  constexpr ElemParams p = elem_params(EL);
  const I Knv = const_(fp_bias_k(p.mbits, 126 + p.emin));
  const int lg = __builtin_ctz((unsigned)(bs / N));  // vector k belongs to block k >> lg
  const int64_t i0 = b * bs;
  for (int k = 0; k < bs; ++k) {  // N * (bs / N) vectors in one flat loop: constants stay in registers
    const int j = k >> lg;
    const int64_t i = i0 + (int64_t)k * N;
    const I sj = V::set1(ss[j]);
    const I xv = load_x<DT>(x, i);
    I code = fast_code<EL, NV, SAT>(xv, nv_scaled<NV, RECIP>(xv, sj), (NV || p.is_int) ? Knv : V::set1(kk[j]), sj);
    if (badbits && ((badbits >> j) & 1u)) code = V::zero();  // NaN / Inf policy: zero codes
    V::store_u8(codes + i, code);
  }
}

// Even / odd elements of x[i, i + 2N) as fp32 patterns.
template <int DT>
LK_T void load_pair(const void* x, int64_t i, I& even, I& odd) {
  if constexpr (DT == kInBF16) {  // one load: lane l holds elements 2l (low half) and 2l + 1
    const I v = V::load((const uint16_t*)x + i);
    even = V::slli<16>(v);
    odd = V::and_(v, const_((int32_t)0xffff0000u));
  } else {
    V::deinterleave(load_x<DT>(x, i), load_x<DT>(x, i + N), even, odd);
  }
}

// 4-bit codes of blocks [b, b + N), 2N elements per step: codes of the even and odd elements
// land in the low / high nibble of one byte each, so packing is an or + one narrowing store.
template <int EL, int DT, bool NV, bool RECIP, bool SAT>
LK_T void fast_codes_4bit(const void* x, uint8_t* codes, int64_t b, int bs, const int32_t* kk, const int32_t* ss,
                          unsigned badbits) {
  constexpr ElemParams p = elem_params(EL);
  const I Knv = const_(fp_bias_k(p.mbits, 126 + p.emin));
  const M hi = V::upper_half();
  const int lg = __builtin_ctz((unsigned)(bs / N));
  const int64_t i0 = b * bs;
  for (int k = 0; k < bs; k += 2) {  // vectors k, k + 1: blocks j0, j1 (equal unless bs == N)
    const int j0 = k >> lg, j1 = (k + 1) >> lg;
    const int64_t i = i0 + (int64_t)k * N;
    const I s = V::blend(hi, V::set1(ss[j0]), V::set1(ss[j1]));  // even/odd lane l: element 2l
    const I K = (NV || p.is_int) ? Knv : V::blend(hi, V::set1(kk[j0]), V::set1(kk[j1]));
    I xe, xo;
    load_pair<DT>(x, i, xe, xo);
    I ce = fast_code<EL, NV, SAT>(xe, nv_scaled<NV, RECIP>(xe, s), K, s);
    I co = fast_code<EL, NV, SAT>(xo, nv_scaled<NV, RECIP>(xo, s), K, s);
    I byte = V::or_(ce, V::slli<4>(co));
    if (badbits) {  // NaN / Inf policy: zero codes
      if ((badbits >> j0) & 1u) byte = V::blend(hi, V::zero(), byte);
      if ((badbits >> j1) & 1u) byte = V::blend(hi, byte, V::zero());
    }
    V::store_u8(codes + (i >> 1), byte);
  }
}

// Element formats with a VBMI code kernel (kernels.h VbmiGroup).
constexpr bool has_vbmi_codes(int el) {
  return el == kFp4E2M1 || el == kFp8E4M3 || el == kFp8E5M2 || el == kFp6E2M3 || el == kFp6E3M2;
}
enum GroupResult : int { kGroupGeneral = 0, kGroupDone = 1, kGroupDeferred = 2 };

// Blocks [b, b + N). Returns kGroupGeneral (nothing written) if a block needs the general path. Given a VBMI
// slot (has_vbmi_codes formats, CPU with AVX512-VBMI): the scales only, the group described in *slot for
// fp4_codes_vbmi / fp8_codes_vbmi (kGroupDeferred), unless FP8 / FP6 blocks are too small for the bf16 route
// (the codes here: kGroupDone).
template <int EL, int DT, bool NV, bool RECIP>
LK_T int quant_fast_group(const QuantArgs& q, int64_t b, VbmiSlot* slot = nullptr) {
  constexpr ElemParams p = elem_params(EL);
  const int bs = q.block_size;
  const bool parked = NV && q.amax_parked;  // then amax / max_elem, still NaN / Inf for bad blocks
  const I amax = parked ? parked_amax(q.codes, b, bs) : block_amax_group<DT>(q.x, b, bs);
  const M bad = V::gt_u(amax, const_(0x7f7fffff));
  alignas(64) int32_t kk[N], ss_here[N], ee_here[N];
  int32_t* ss = slot ? slot->factor : ss_here;
  int32_t* ee = slot ? slot->mx_e : ee_here;
  bool bf16_bits = false;  // MX bf16 x whose blocks the VBMI kernels may take on the bit pattern (VbmiGroup.mx_e)
  I sbyte;
  bool sat = q.scale_mode == kScaleFloor;  // MX rceil: amax <= max_elem * 2^e, nothing saturates
  if constexpr (NV) {
    const I gv = V::fset1(q.g);
    I t = V::fdiv(parked ? amax : V::fdiv(amax, const_((int32_t)p.max_bits)), gv);  // >= 0, finite or +Inf
    constexpr int32_t k_e4m3 = fp_bias_k(3, 126 + elem_params(kFp8E4M3).emin);
    I sc = V::max_i(fast_code<kFp8E4M3, true>(t, t, const_(k_e4m3), t), const_(1));
    I d = V::fmul(gv, e4m3_value_v(sc));
    if (V::any(V::mandnot(bad, V::feq(d, V::zero())))) return kGroupGeneral;
    sbyte = V::blend(bad, sc, const_(0x7F));
    V::store(ss, RECIP ? nv_reciprocal_v(d) : d);
    // |v| <= amax / d < max_elem * 1.07 (E4M3 normal scale: relative error <= 2^-4) rounds to at
    // most max_code (RECIP: x * r is within 2 ulp of x / d, or smaller where r is clamped);
    // subnormal or saturated block scales need the clamps.
    sat = V::any(V::mandnot(bad, V::or_mask(V::gt_i(const_(8), sc), V::gt_i(sc, const_(0x7D)))));
  } else {
    I e = scale_exp_v(amax, p, q.scale_mode == kScaleFloor);
    sbyte = V::blend(bad, V::add(e, const_(127)), const_(0xFF));
    if constexpr (!p.is_int) {
      e = V::blend(V::eq(amax, V::zero()), e, V::zero());  // zero blocks: any e with a re-bias >= 0 works
      if (V::any(V::mandnot(bad, V::gt_i(const_(-126 - p.emin), e)))) return kGroupGeneral;
      V::store(kk, V::sub(const_(fp_bias_k(p.mbits, 0)), V::slli<23>(V::add(e, const_(126 + p.emin)))));
    }
    if constexpr (has_vbmi_codes(EL) && DT == kInBF16) {
      constexpr int lowest = vbmi_bf16_lowest_e(p.emin, p.mbits);  // E2M1 -124, E4M3 -116
      V::store(ee, V::blend(bad, e, V::zero()));
      bf16_bits = !V::any(V::mandnot(bad, V::gt_i(const_(lowest), e)));
    }
    V::store(ss, V::blend(V::eq(e, const_(127)), V::slli<23>(V::sub(const_(127), e)), const_(0x00400000)));
  }
  V::store_u8(q.scales + b, sbyte);
  const unsigned badbits = V::mask_bits(bad);
  if constexpr (N == 16 && has_vbmi_codes(EL)) {
    if (slot && (EL == kFp4E2M1 || bf16_bits)) {
      slot->group = VbmiGroup{q.x, DT, q.codes, b, bs, ss, bf16_bits ? ee : nullptr, NV && !RECIP, sat, badbits};
      return kGroupDeferred;
    }
  }
  if (p.bits == 4 && sat)
    fast_codes_4bit<EL, DT, NV, RECIP, true>(q.x, q.codes, b, bs, kk, ss, badbits);
  else if (p.bits == 4)
    fast_codes_4bit<EL, DT, NV, RECIP, false>(q.x, q.codes, b, bs, kk, ss, badbits);
  else if (sat)
    fast_codes_8bit<EL, DT, NV, RECIP, true>(q.x, q.codes, b, bs, kk, ss, badbits);
  else
    fast_codes_8bit<EL, DT, NV, RECIP, false>(q.x, q.codes, b, bs, kk, ss, badbits);
  return kGroupDone;
}

template <int EL>
LK_T void vbmi_codes(const VbmiSlot* slots, int n) {
  if constexpr (EL == kFp4E2M1)
    fp4_codes_vbmi(slots, n);
  else
    fp8_codes_vbmi(EL, slots, n);
}

template <int EL, int DT, bool NV, bool RECIP>
LK_T void quant_range(const QuantArgs& q, int64_t b0, int64_t b1) {
  int64_t b = b0;
  if constexpr (N == 16 && has_vbmi_codes(EL)) {
    if (q.block_size >= N && quantize_vbmi_takes(EL, DT, q.block_size)) {
      // Scales group by group, codes in batches of groups: one call into the VBMI kernel per batch. Batches
      // of ~2 KB of x: at 8 KB - 16 KB the scale pass (loads) and the code pass (ops) stopped overlapping when
      // x streams from DRAM (4096 x 4096 fp32 MXFP4 ran 1.25x slower than unbatched; bf16 1.3x faster at 2 KB).
      constexpr int kBatch = 8;
      constexpr int64_t kBatchBytes = 2048;
      VbmiSlot slots[kBatch];
      const int64_t group_bytes = (int64_t)N * q.block_size * (DT == kInF32 ? 4 : 2);
      const int64_t fit = kBatchBytes / group_bytes;
      const int batch = fit < 1 ? 1 : fit > kBatch ? kBatch : (int)fit;
      int n = 0;
      for (; b + N <= b1; b += N) {
        const int r = quant_fast_group<EL, DT, NV, RECIP>(q, b, &slots[n]);
        if (r == kGroupGeneral) {
          quant_range_general<EL, DT, NV, RECIP>(q, b, b + N);
        } else if (r == kGroupDeferred && ++n == batch) {
          vbmi_codes<EL>(slots, n);
          n = 0;
        }
      }
      if (n) vbmi_codes<EL>(slots, n);
      if (b < b1) quant_range_general<EL, DT, NV, RECIP>(q, b, b1);
      return;
    }
  }
  if (q.block_size >= N)
    for (; b + N <= b1; b += N)
      if (!quant_fast_group<EL, DT, NV, RECIP>(q, b)) quant_range_general<EL, DT, NV, RECIP>(q, b, b + N);
  if (b < b1) quant_range_general<EL, DT, NV, RECIP>(q, b, b1);
}

template <int EL, bool NV, bool RECIP = false>
LK_T void quant_dt(const QuantArgs& q, int64_t b0, int64_t b1) {
  if (q.dtype == kInF32)
    quant_range<EL, kInF32, NV, RECIP>(q, b0, b1);
  else if (q.dtype == kInBF16)
    quant_range<EL, kInBF16, NV, RECIP>(q, b0, b1);
  else
    quant_range<EL, kInF16, NV, RECIP>(q, b0, b1);
}

LK_T void quantize(const QuantArgs& q, int64_t b0, int64_t b1) {
  const FormatSpec& f = kFormats[q.fmt];
  if (q.rand || (f.is_nv && !(q.g > 0.0f && q.g <= 3.4028234663852886e38f))) {
    quantize_range_scalar(q, b0, b1);  // stochastic rounding; NV with a NaN / Inf / <= 0 tensor scale
    return;
  }
  const bool recip = q.scale_mode == kScaleReciprocal;  // NV only (checked at the op boundary)
  switch (f.is_nv ? -f.elem - 1 : f.elem) {
    case kFp8E4M3: return quant_dt<kFp8E4M3, false>(q, b0, b1);
    case kFp8E5M2: return quant_dt<kFp8E5M2, false>(q, b0, b1);
    case kFp6E2M3: return quant_dt<kFp6E2M3, false>(q, b0, b1);
    case kFp6E3M2: return quant_dt<kFp6E3M2, false>(q, b0, b1);
    case kFp4E2M1: return quant_dt<kFp4E2M1, false>(q, b0, b1);
    case kInt8: return quant_dt<kInt8, false>(q, b0, b1);
    case kInt6: return quant_dt<kInt6, false>(q, b0, b1);
    case kInt4: return quant_dt<kInt4, false>(q, b0, b1);
    case -kFp4E2M1 - 1:
      return recip ? quant_dt<kFp4E2M1, true, true>(q, b0, b1) : quant_dt<kFp4E2M1, true>(q, b0, b1);
    case -kInt4 - 1: return recip ? quant_dt<kInt4, true, true>(q, b0, b1) : quant_dt<kInt4, true>(q, b0, b1);
    default: quantize_range_scalar(q, b0, b1);
  }
}

// ---------------------------------------------------------------------------------------------
// Dequantize
// ---------------------------------------------------------------------------------------------
// Stored codes -> fp32 patterns (formats.h decode_code_bits).
// fp32 patterns of the 16 codes of a 4-bit element (built once, thread-safe static init).
template <int EL>
const uint32_t* lut4() {
  struct Table {
    uint32_t v[16];
    Table() {
      for (uint32_t c = 0; c < 16; ++c) v[c] = decode_code_bits(c, elem_params(EL));
    }
  };
  static const Table t;
  return t.v;
}

template <int EL>
LK_T I decode_v(I raw, const uint32_t* lut) {
  constexpr ElemParams p = elem_params(EL);
  if constexpr (p.bits == 4) return V::lut16(lut, raw);  // 16 codes: a table lookup
  if (p.is_int) {
    if (p.bits == 4) raw = V::sub(raw, V::slli<1>(V::and_(raw, const_(8))));  // nibble -> [-8, 7]
    return V::cvt_i2f(raw);  // int8 / int6 lanes arrive sign-extended
  }
  I mag = V::and_(raw, const_((1 << p.sign_bit) - 1));
  I ef = V::srli<p.mbits>(mag), m = V::and_(mag, const_((1 << p.mbits) - 1));
  I normal = V::add(V::slli<23 - p.mbits>(mag), const_((126 + p.emin) << 23));  // (ef - bias + 127) << 23
  I subn = V::fmul(V::cvt_i2f(m), const_((127 + p.emin - p.mbits) << 23));     // m * 2^(emin - mbits)
  I val = V::blend(V::eq(ef, V::zero()), normal, subn);
  if (EL == kFp8E4M3) val = V::blend(V::eq(mag, const_(0x7F)), val, const_(0x7ff00000));
  if (EL == kFp8E5M2) {
    I special = V::or_(V::or_(const_(0x7f800000), V::slli<21>(m)),
                       V::blend(V::eq(m, V::zero()), const_(0x400000), V::zero()));
    val = V::blend(V::eq(ef, const_(31)), val, special);
  }
  return V::or_(val, V::slli<31 - p.sign_bit>(V::and_(raw, const_(1 << p.sign_bit))));
}

template <int EL>
LK_T I load_codes(const uint8_t* codes, int64_t i) {
  constexpr ElemParams p = elem_params(EL);
  if (p.bits == 4) return V::load_nibbles(codes + i / 2);
  if (p.is_int) return V::load_i8(codes + i);
  return V::load_u8(codes + i);
}

template <int EL, bool NV, int OUT>
LK_T void dequant_range(const DequantArgs& q, int64_t b0, int64_t b1) {
  const int bs = q.block_size;
  const int G = bs >= N ? 1 : N / bs;
  const int nvec = bs >= N ? bs / N : 1;
  const uint32_t* lut = elem_params(EL).bits == 4 ? lut4<EL>() : nullptr;
  int64_t b = b0;
  for (; b + G <= b1; b += G) {
    I fac;
    if (G == 1) {
      fac = V::set1((int32_t)block_factor_bits(q.scales[b], NV, q.g));
    } else {
      alignas(64) uint32_t tmp[N];
      for (int j = 0; j < N; ++j) tmp[j] = block_factor_bits(q.scales[b + j / bs], NV, q.g);
      fac = V::load(tmp);
    }
    const M nan_scale = V::eq(fac, const_(0x7fc00000));  // MX byte 0xFF: canonical NaN output
    for (int v = 0; v < nvec; ++v) {
      const int64_t i = b * bs + v * N;
      I o = V::fmul(decode_v<EL>(load_codes<EL>(q.codes, i), lut), fac);
      if (!NV) o = V::blend(nan_scale, o, fac);
      store_out<OUT>(q.out, i, o);
    }
  }
  if (b < b1) dequantize_range_scalar(q, b, b1);
}

template <int EL, bool NV>
LK_T void dequant_dt(const DequantArgs& q, int64_t b0, int64_t b1) {
  if (q.out_dtype == kInF32)
    dequant_range<EL, NV, kInF32>(q, b0, b1);
  else if (q.out_dtype == kInBF16)
    dequant_range<EL, NV, kInBF16>(q, b0, b1);
  else
    dequant_range<EL, NV, kInF16>(q, b0, b1);
}

LK_T void dequantize(const DequantArgs& q, int64_t b0, int64_t b1) {
  const FormatSpec& f = kFormats[q.fmt];
  switch (f.is_nv ? -f.elem - 1 : f.elem) {
    case kFp8E4M3: return dequant_dt<kFp8E4M3, false>(q, b0, b1);
    case kFp8E5M2: return dequant_dt<kFp8E5M2, false>(q, b0, b1);
    case kFp6E2M3: return dequant_dt<kFp6E2M3, false>(q, b0, b1);
    case kFp6E3M2: return dequant_dt<kFp6E3M2, false>(q, b0, b1);
    case kFp4E2M1: return dequant_dt<kFp4E2M1, false>(q, b0, b1);
    case kInt8: return dequant_dt<kInt8, false>(q, b0, b1);
    case kInt6: return dequant_dt<kInt6, false>(q, b0, b1);
    case kInt4: return dequant_dt<kInt4, false>(q, b0, b1);
    case -kFp4E2M1 - 1: return dequant_dt<kFp4E2M1, true>(q, b0, b1);
    case -kInt4 - 1: return dequant_dt<kInt4, true>(q, b0, b1);
    default: dequantize_range_scalar(q, b0, b1);
  }
}

// ---------------------------------------------------------------------------------------------
// NV tensor amax (finite elements), parking block maxima for quant_fast_group (kernels.h)
// ---------------------------------------------------------------------------------------------
template <int DT>
LK_T uint32_t nv_amax_dt(const QuantArgs& q, int64_t b0, int64_t b1) {
  const int bs = q.block_size;
  const I maxv = const_((int32_t)elem_params(kFormats[q.fmt].elem).max_bits);
  I fin = V::zero();
  uint32_t smax = 0;
  int64_t b = b0;
  if (bs >= N) {
    for (; b + N <= b1; b += N) {
      const I amax = block_amax_group<DT>(q.x, b, bs);
      V::store(q.codes + b * (bs / 2), V::fdiv(amax, maxv));  // parked for quant_fast_group (see parked_amax)
      alignas(64) uint32_t tmp[N];
      V::store(tmp, amax);
      const M bad = V::gt_u(amax, const_(0x7f7fffff));
      fin = V::max_u(fin, V::blend(bad, amax, V::zero()));
      if (V::any(bad))  // the finite max of a block holding NaN / Inf: rare, scalar
        for (int j = 0; j < N; ++j)
          if (tmp[j] > 0x7f7fffffu) {
            const uint32_t m = amax_finite_scalar(q.x, DT, (b + j) * bs, (b + j + 1) * bs);
            smax = m > smax ? m : smax;
          }
    }
  }
  if (b < b1) {
    const uint32_t m = amax_finite_scalar(q.x, DT, b * bs, b1 * bs);
    smax = m > smax ? m : smax;
  }
  const uint32_t r = (uint32_t)V::lane0(group_max(fin, N));
  return r > smax ? r : smax;
}

LK_T uint32_t nv_amax(const QuantArgs& q, int64_t b0, int64_t b1) {
  if (q.dtype == kInF32) return nv_amax_dt<kInF32>(q, b0, b1);
  if (q.dtype == kInBF16) return nv_amax_dt<kInBF16>(q, b0, b1);
  return nv_amax_dt<kInF16>(q, b0, b1);
}
