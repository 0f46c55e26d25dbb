// Portable scalar range kernels: the "scalar" ISA, and the tails / rare fallbacks of the SIMD
// paths. Same integer algorithm as the SIMD code (formats.h), so all paths agree bit for bit.
#pragma once

#include <stdint.h>

#include <vector>

#include "common/bits.h"
#include "mx/formats.h"
#include "mx/kernels.h"

namespace leankern {
namespace mx {

inline void quantize_range_scalar(const QuantArgs& q, int64_t b0, int64_t b1) {
  const FormatSpec& f = kFormats[q.fmt];
  const ElemParams p = elem_params(f.elem);
  const int bs = q.block_size;
  const int64_t code_bytes = p.bits == 4 ? bs / 2 : bs;  // per block
  for (int64_t b = b0; b < b1; ++b)
    quantize_block(q.x, q.dtype, b * bs, bs, p, f.is_nv != 0, q.scale_mode, q.rand, q.g,
                   q.codes + b * code_bytes, q.scales + b);
}

// Per-block fp32 factor: MX 2^(byte-127) (0xFF -> canonical NaN); NV g * decode(e4m3 byte).
inline uint32_t block_factor_bits(uint8_t sbyte, bool is_nv, float g) {
  if (!is_nv) return e8m0_factor_bits(sbyte);
  return f2u(g * u2f(decode_code_bits(sbyte, elem_params(kFp8E4M3))));
}

inline void dequantize_range_scalar(const DequantArgs& q, int64_t b0, int64_t b1) {
  const FormatSpec& f = kFormats[q.fmt];
  const ElemParams p = elem_params(f.elem);
  const int bs = q.block_size;
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t sbyte = q.scales[b];
    const float fac = u2f(block_factor_bits(sbyte, f.is_nv != 0, q.g));
    const bool nan_block = !f.is_nv && sbyte == 0xFF;
    for (int64_t i = b * bs; i < (b + 1) * bs; ++i) {
      uint32_t raw = p.bits == 4 ? (q.codes[i >> 1] >> ((i & 1) * 4)) & 0xFu : q.codes[i];
      uint32_t o = nan_block ? 0x7fc00000u : f2u(u2f(decode_code_bits(raw, p)) * fac);
      store_f32_bits(q.out, q.out_dtype, i, o);
    }
  }
}

// One chunk: fp32 butterflies h = 1, 2, 4, ... (pairs (i, i+h) -> (a+b, a-b)), * scale, * signs.
inline void hadamard_chunk_scalar(const HadamardArgs& h, int64_t c) {
  const int n = h.chunk;
  const int64_t base = c * n;
  float* w = h.work;
  for (int j = 0; j < n; ++j) w[j] = u2f(load_f32_bits(h.x, h.dtype, base + j));
  for (int hh = 1; hh < n; hh *= 2)
    for (int blk = 0; blk < n; blk += 2 * hh)
      for (int j = blk; j < blk + hh; ++j) {
        float a = w[j], b = w[j + hh];
        w[j] = a + b;
        w[j + hh] = a - b;
      }
  for (int j = 0; j < n; ++j) {
    float y = w[j] * h.scale;
    if (h.signs) y = y * h.signs[j];
    store_f32_bits(h.out, h.dtype, base + j, f2u(y));
  }
}

inline void hadamard_range_scalar(const HadamardArgs& h, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) hadamard_chunk_scalar(h, c);
}

inline uint32_t amax_finite_scalar(const void* x, int dtype, int64_t i0, int64_t i1) {
  uint32_t m = 0;
  for (int64_t i = i0; i < i1; ++i) {
    uint32_t a = load_f32_bits(x, dtype, i) & 0x7fffffffu;
    if (a < 0x7f800000u && a > m) m = a;
  }
  return m;
}

inline uint32_t nv_amax_scalar(const QuantArgs& q, int64_t b0, int64_t b1) {
  return amax_finite_scalar(q.x, q.dtype, b0 * q.block_size, b1 * q.block_size);
}

// ---------------------------------------------------------------------------------------------
// Linear (portable): one weight row at a time, decoded exactly (dequantize_range_scalar) in
// chunks of kLinearChunk elements into a stack buffer that every row of x then reads; fp32 sums
// in 8 interleaved partial sums (a shape the baseline compiler vectorises without reassociating).
// ---------------------------------------------------------------------------------------------
constexpr int kLinearChunk = 1024;  // >= kMaxBlockSize: a chunk is a whole number of blocks

// y element (m, n) from its fp32 sum: + bias, rounded once to the output dtype.
inline void linear_store(const LinearArgs& a, int64_t m, int64_t n, float sum) {
  if (a.bias) sum = sum + a.bias[n];
  store_f32_bits(a.y, a.out_dtype, m * a.N + n, f2u(sum));
}

// The codes / scales of weight row n from element k0 on (k0: a multiple of the block size).
inline DequantArgs linear_row_chunk(const LinearArgs& a, int64_t n, int64_t k0, float* out) {
  const bool packed = elem_spec(kFormats[a.fmt].elem).bits == 4;
  const int64_t row_bytes = packed ? a.K / 2 : a.K;
  return DequantArgs{a.codes + n * row_bytes + (packed ? k0 / 2 : k0), a.scales + (n * a.K + k0) / a.block_size,
                     a.g, a.block_size, a.fmt, kInF32, out};
}

inline void linear_range_scalar(const LinearArgs& a, int64_t n0, int64_t n1) {
  const int64_t M = a.M, K = a.K;
  float w[kLinearChunk];
  std::vector<float> part((size_t)M * 8);
  for (int64_t n = n0; n < n1; ++n) {
    for (float& v : part) v = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += kLinearChunk) {
      const int64_t len = K - k0 < kLinearChunk ? K - k0 : kLinearChunk;
      dequantize_range_scalar(linear_row_chunk(a, n, k0, w), 0, len / a.block_size);
      for (int64_t m = 0; m < M; ++m) {
        const float* x = a.x + m * K + k0;
        float* s = part.data() + m * 8;
        int64_t k = 0;
        for (; k + 8 <= len; k += 8)
          for (int j = 0; j < 8; ++j) s[j] = s[j] + x[k + j] * w[k + j];
        for (; k < len; ++k) s[k & 7] = s[k & 7] + x[k] * w[k];
      }
    }
    for (int64_t m = 0; m < M; ++m) {
      const float* s = part.data() + m * 8;
      linear_store(a, m, n, ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])));
    }
  }
}

}  // namespace mx
}  // namespace leankern
