// The prefill experts' element-wise steps around the down GEMM on the avx512bf16 path (kernels.h: act_split_bf16,
// combine_split), in 16-lane vectors. experts_cpu.cpp's down GEMM there carries the fp32 activation as bf16(a), or
// as two bf16 parts where moe_set_down_split asks (project_split_bf16); these replace its three scalar / torch passes
// (activation, split, hi + lo sums and the weighted add into the accumulator) with one pass before and one after
// the GEMM.
//
// Why: at T = 4096 (Qwen3-30B-A3B, no skip) those passes took about a fifth of the layer on the 2-core Xeon
// (scalar std::exp per activation, a scalar RNE conversion per part, at::add_out, a scalar axpy per token row).
//
// Numerics as the scalar path (experts_cpu.cpp activate_row): gate / up plus bias in fp32, silu(g) u =
// g / (1 + e^-g) u or the clamped SwiGLU in the same operation order, NaN propagated as there; e^x by exp_ps below
// (within 2 ulp of e^x where the scalar path's std::exp is within 1; tests/test_moe_cpu.py's bound allows 8 ulp of
// the activation). The split (split_bf16 of experts_cpu.cpp): hi = bf16(a) RNE, truncated where that would round a
// finite a to Inf, lo = bf16(a - hi), 0 for an infinite a; except that vcvtneps2bf16 flushes fp32 subnormals to
// zero: activations below 2^-126, which vdpbf16ps would count as zero anyway. combine: acc += ((hi + lo) + b2) * w,
// the scalar order, each step rounded to fp32 (no contraction).
#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <cstdint>

#include "common/cpu_features.h"
#include "moe/kernels.h"

namespace leankern {
namespace moe {
namespace avx512bf16 {

#define LK_EF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define LK_E LK_EF inline

// e^x, fp32, 16 lanes: x = n ln2 + r (|r| <= ln2 / 2, ln2 split in two so n ln2 is exact), e^r by its Taylor
// polynomial to r^7 (truncation < 2^-27 relative), times 2^n by vscalefps (overflow to inf, underflow through the
// subnormals to 0). x is clamped to [-150, 150] first, max / min with x second so that NaN passes through.
LK_E __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(150.0f), _mm512_max_ps(_mm512_set1_ps(-150.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2 high part: 16 bits, n r exact
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// act(g, u) for 16 lanes, the operation order of activate_row.
LK_E __m512 act_ps(__m512 g, __m512 u, const ActParams& ac) {
  const __m512 one = _mm512_set1_ps(1.0f);
  if (!ac.oai) {  // g / (1 + e^-g) * u
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
    return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
  }
  const __m512 lim = _mm512_set1_ps(ac.limit);
  g = _mm512_min_ps(lim, g);  // clamp(max = limit); NaN stays NaN (the second operand is returned)
  u = _mm512_min_ps(lim, _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), lim), u));
  const __m512 z = _mm512_mul_ps(g, _mm512_set1_ps(ac.alpha));
  const __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), z))));
  return _mm512_mul_ps(_mm512_mul_ps(g, s), _mm512_add_ps(u, one));
}

// Lanes i0 .. i0 + 15 of gate and up from a gate/up row (interleaved: gate 2i, up 2i + 1; else gate i, up I + i),
// `live` lanes only (the rest 0).
LK_E void gate_up(const float* row, int64_t I, int64_t i0, __mmask16 live, bool interleaved, __m512* g, __m512* u) {
  if (!interleaved) {
    *g = _mm512_maskz_loadu_ps(live, row + i0);
    *u = _mm512_maskz_loadu_ps(live, row + I + i0);
    return;
  }
  const int64_t f = 2 * (int64_t)__builtin_popcount(live);  // live floats of the 32 (live lanes are a prefix)
  const __mmask16 lo = f >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << f) - 1);
  const __mmask16 hi = f >= 32 ? (__mmask16)0xFFFF : f <= 16 ? (__mmask16)0 : (__mmask16)((1u << (f - 16)) - 1);
  const __m512 a = _mm512_maskz_loadu_ps(lo, row + 2 * i0), b = _mm512_maskz_loadu_ps(hi, row + 2 * i0 + 16);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  *g = _mm512_permutex2var_ps(a, even, b);
  *u = _mm512_permutex2var_ps(a, _mm512_add_epi32(even, _mm512_set1_epi32(1)), b);
}

LK_EF void act_split_bf16(const float* gu, int64_t n, int64_t I, const ActParams& ac, const float* bias, uint16_t* hi,
                    uint16_t* lo) {
  for (int64_t t = 0; t < n; ++t) {
    const float* row = gu + t * 2 * I;
    for (int64_t i0 = 0; i0 < I; i0 += 16) {
      const __mmask16 live = I - i0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (I - i0)) - 1);
      __m512 g, u;
      gate_up(row, I, i0, live, ac.interleaved, &g, &u);
      if (bias) {
        __m512 bg, bu;
        gate_up(bias, I, i0, live, ac.interleaved, &bg, &bu);
        g = _mm512_add_ps(g, bg);
        u = _mm512_add_ps(u, bu);
      }
      const __m512 a = act_ps(g, u, ac);
      __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(a)), 16));
      const __mmask16 a_inf = _mm512_fpclass_ps_mask(a, 0x18);  // +-Inf
      // a finite value that RNE rounds past bf16's largest: truncated instead (the split stays finite and exact)
      hf = _mm512_mask_and_ps(hf, _mm512_fpclass_ps_mask(hf, 0x18) & ~a_inf, a,
                              _mm512_castsi512_ps(_mm512_set1_epi32((int)0xFFFF0000u)));
      const __m512 d = _mm512_maskz_sub_ps(~a_inf, a, hf);  // a - hi: exact; 0 for +-Inf (not Inf - Inf)
      const __m256i h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(hf), 16));
      _mm256_mask_storeu_epi16(hi + t * I + i0, live, h);
      if (lo) _mm256_mask_storeu_epi16(lo + t * I + i0, live, (__m256i)_mm512_cvtneps_pbh(d));
    }
  }
}

LK_EF void combine_split(const float* hi, const float* lo, int64_t H, const float* b2, const int64_t* tok, const float* w,
                   int64_t t0, int64_t t1, float* acc) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* h_row = hi + t * H;
    const float* l_row = lo ? lo + t * H : nullptr;
    float* o = acc + tok[t] * H;
    const __m512 wv = _mm512_set1_ps(w[t]);
    for (int64_t h = 0; h < H; h += 16) {
      const __mmask16 live = H - h >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (H - h)) - 1);
      __m512 y = _mm512_maskz_loadu_ps(live, h_row + h);
      if (l_row) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(live, l_row + h));
      if (b2) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(live, b2 + h));
      _mm512_mask_storeu_ps(o + h, live, _mm512_add_ps(_mm512_maskz_loadu_ps(live, o + h), _mm512_mul_ps(y, wv)));
    }
  }
}

LK_EF void exp_f32_impl(const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 live = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, live, exp_ps(_mm512_maskz_loadu_ps(live, x + i)));
  }
}

#undef LK_E
#undef LK_EF

}  // namespace avx512bf16

bool exp_f32(const float* x, int64_t n, float* y) {
  if (!cpu::isa_supported(cpu::Isa::kAvx512Bf16)) return false;
  avx512bf16::exp_f32_impl(x, n, y);
  return true;
}

}  // namespace moe
}  // namespace leankern

#else
#include <cstdint>

#include "moe/kernels.h"

namespace leankern {
namespace moe {
bool exp_f32(const float*, int64_t, float*) { return false; }
}  // namespace moe
}  // namespace leankern
#endif
