// CUDA quantize kernels for the MX / NV block formats, bit-exact with python/leankern/mx/ref.py.
//
// Only CUDA headers and our own torch-free headers (common/bits.h, mx/formats.h: the same
// LEANKERN_HD integer rounding helpers the CPU kernels use), so `nvcc -c -std=c++17 -I csrc`
// compile-checks this file in seconds without torch. The torch binding is mx_cuda_binding.cpp;
// the launch API below is plain C.
//
// Work split: a "team" of min(block_size, 32) lanes of one warp owns a block; lane l handles
// elements l, l + team, ... (coalesced loads), the block amax is a team-wide xor-shuffle max,
// every lane derives the (identical) scale and rounds its own elements. 4-bit codes: the even
// lane of each pair takes its neighbour's nibble with a shuffle and stores the byte.
// NV tensor scale: nv_amax_kernel (finite |x| max, atomicMax on the bit pattern, which orders
// like the value for non-negative floats) then nv_scale_kernel computes g on the device, so no
// host synchronisation is needed. Build with default IEEE division and no --use_fast_math
// (denormals must not be flushed); there is no fp32 a * b + c for --fmad to contract.
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/bits.h"
#include "mx/formats.h"

namespace leankern {
namespace mx {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;

__device__ __forceinline__ uint32_t team_max(uint32_t v, int team) {
  for (int o = team >> 1; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

template <int DT>
__device__ __forceinline__ uint32_t load_bits(const void* __restrict__ x, int64_t i) {
  // Loads in the buffer's own element types (float; unsigned short, the storage of torch's Half /
  // BFloat16), so no pointer type-puns the data.
  if (DT == kInF32) return f2u(__ldg(static_cast<const float*>(x) + i));
  const uint32_t h = __ldg(static_cast<const unsigned short*>(x) + i);
  return DT == kInBF16 ? h << 16 : f16_to_f32_bits(h);
}

// Blocks of `bs` elements; warp w owns blocks [w * 32 / team, (w + 1) * 32 / team).
template <int DT>
__global__ void __launch_bounds__(kThreads) mx_quantize_kernel(const void* __restrict__ x, int64_t nblocks,
                                                               int elem, int is_nv, int bs, int scale_mode,
                                                               const int32_t* __restrict__ rand,
                                                               const float* __restrict__ g_ptr,
                                                               uint8_t* __restrict__ codes,
                                                               uint8_t* __restrict__ scales) {
  const ElemParams p = elem_params(elem);
  const int team = bs < 32 ? bs : 32;
  const int lane = threadIdx.x & 31, tl = lane & (team - 1);
  const int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int64_t b = warp * (32 / team) + lane / team;
  const bool active = b < nblocks;  // inactive lanes still join every shuffle
  const int per = bs / team;
  const int64_t i0 = b * bs + tl;

  uint32_t amax = 0;  // over all |x| patterns: >= Inf pattern <=> the block holds NaN / Inf
  for (int k = 0; k < per; ++k)
    if (active) amax = max(amax, load_bits<DT>(x, i0 + (int64_t)k * team) & 0x7fffffffu);
  amax = team_max(amax, team);
  const bool bad = amax >= 0x7f800000u;

  int e = 0;
  float d = 1.0f, r = 1.0f;
  const bool recip = is_nv && scale_mode == kScaleReciprocal;
  uint32_t sbyte;
  if (bad) {
    sbyte = is_nv ? 0x7Fu : 0xFFu;
  } else if (is_nv) {
    const float g = *g_ptr;
    const float t = (u2f(amax) / u2f(p.max_bits)) / g;  // two IEEE divisions, this order
    const int sc = nv_scale_code(t);
    sbyte = (uint32_t)sc;
    d = g * e4m3_code_value(sc);
    r = nv_block_reciprocal(d);  // IEEE 1 / d (default -prec-div=true), then the FLT_MAX clamp
  } else {
    e = mx_scale_exp(amax, p, scale_mode == kScaleFloor);
    sbyte = (uint32_t)(e + 127);
  }
  if (active && tl == 0) scales[b] = (uint8_t)sbyte;

  for (int k = 0; k < per; ++k) {
    const int64_t i = i0 + (int64_t)k * team;
    const uint32_t xb = active ? load_bits<DT>(x, i) : 0u;
    uint32_t c = 0;
    if (!bad) {
      const uint32_t a = !is_nv ? (xb & 0x7fffffffu)
                                : (f2u(recip ? __fmul_rn(u2f(xb), r) : u2f(xb) / d) & 0x7fffffffu);
      int mag;
      if (a > 0x7f800000u)  // NV: 0 / 0 when g * s underflowed (static g); as the reference
        mag = (!rand && !p.is_int) ? p.max_code + 1 : 0;
      else
        mag = rand ? round_sr(a, e, p, active ? (uint32_t)__ldg(rand + i) : 0u) : round_rne(a, e, p);
      c = encode_code(mag, xb >> 31, p);
    }
    if (p.bits == 4) {
      const uint32_t hi = __shfl_down_sync(kFullMask, c, 1);  // the odd neighbour's nibble
      if (active && !(tl & 1)) codes[i >> 1] = (uint8_t)(c | (hi << 4));
    } else if (active) {
      codes[i] = (uint8_t)c;
    }
  }
}

// Max |x| bit pattern over finite elements, atomically merged into *amax (zeroed by the caller).
template <int DT>
__global__ void __launch_bounds__(kThreads) nv_amax_kernel(const void* __restrict__ x, int64_t n,
                                                           unsigned int* __restrict__ amax) {
  uint32_t m = 0;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const uint32_t a = load_bits<DT>(x, i) & 0x7fffffffu;
    if (a < 0x7f800000u && a > m) m = a;
  }
  m = team_max(m, 32);
  __shared__ uint32_t warp_max[kThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x < 32) {
    m = threadIdx.x < kThreads / 32 ? warp_max[threadIdx.x] : 0u;
    m = team_max(m, 32);
    if (threadIdx.x == 0) atomicMax(amax, m);
  }
}

// g_out = given ? *given : (NV ? nv_global_scale(*amax) : 1).
__global__ void nv_scale_kernel(const unsigned int* __restrict__ amax, const float* __restrict__ given,
                                float* __restrict__ g_out, int elem, int is_nv) {
  if (threadIdx.x == 0 && blockIdx.x == 0)
    *g_out = !is_nv ? 1.0f : (given ? *given : nv_global_scale(*amax, elem_params(elem)));
}

template <int DT>
cudaError_t launch(const void* x, int64_t n_elems, const FormatSpec& f, int block_size, int scale_mode,
                   const int32_t* rand, const float* given, float* g_out, unsigned int* scratch, uint8_t* codes,
                   uint8_t* scales, cudaStream_t stream) {
  if (f.is_nv && !given) {
    cudaError_t err = cudaMemsetAsync(scratch, 0, sizeof(unsigned int), stream);
    if (err != cudaSuccess) return err;
    const int64_t want = (n_elems + kThreads - 1) / kThreads;
    const int grid = (int)(want < 1 ? 1 : (want > 4096 ? 4096 : want));
    nv_amax_kernel<DT><<<grid, kThreads, 0, stream>>>(x, n_elems, scratch);
  }
  nv_scale_kernel<<<1, 32, 0, stream>>>(scratch, given, g_out, f.elem, f.is_nv);
  const int64_t nblocks = n_elems / block_size;
  if (nblocks > 0) {
    const int team = block_size < 32 ? block_size : 32;
    const int64_t warps = (nblocks + 32 / team - 1) / (32 / team);
    const int64_t grid = (warps * 32 + kThreads - 1) / kThreads;
    if (grid > 0x7fffffffLL) return cudaErrorInvalidValue;
    mx_quantize_kernel<DT><<<(unsigned)grid, kThreads, 0, stream>>>(x, nblocks, f.elem, f.is_nv, block_size,
                                                                   scale_mode, rand, g_out, codes, scales);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mx
}  // namespace leankern

extern "C" {

// Quantize a contiguous x [n_elems] (dtype: 0 fp32, 1 bf16, 2 fp16) to format `fmt` (index into
// leankern::mx::kFormats); scale_mode: a ScaleMode (formats.h). All pointers are device pointers.
// rand_bits: [n_elems] int32 or NULL (RNE).
// global_scale: NV static tensor scale (1 float) or NULL (computed from x). g_out: 1 float, receives
// the tensor scale (1.0 for MX). scratch: 1 uint32 of device scratch (NV without global_scale).
// codes: n_elems bytes (n_elems / 2 for 4-bit elements); scales: n_elems / block_size bytes.
// Returns a cudaError_t (cudaSuccess = 0); cudaErrorInvalidValue for bad arguments.
int leankern_mx_quantize_cuda(const void* x, int dtype, int64_t n_elems, int fmt, int block_size, int scale_mode,
                              const int32_t* rand_bits, const float* global_scale, float* g_out,
                              unsigned int* scratch, uint8_t* codes, uint8_t* scales, cudaStream_t stream) {
  using namespace leankern;
  using namespace leankern::mx;
  if (fmt < 0 || fmt >= kNumFormats || block_size < kMinBlockSize || block_size > kMaxBlockSize ||
      (block_size & (block_size - 1)) || n_elems < 0 || n_elems % block_size || !g_out ||
      (!scratch && kFormats[fmt].is_nv && !global_scale))
    return (int)cudaErrorInvalidValue;
  const FormatSpec& f = kFormats[fmt];
  switch (dtype) {
    case kInF32:
      return (int)mx::cuda::launch<kInF32>(x, n_elems, f, block_size, scale_mode, rand_bits, global_scale, g_out,
                                           scratch, codes, scales, stream);
    case kInBF16:
      return (int)mx::cuda::launch<kInBF16>(x, n_elems, f, block_size, scale_mode, rand_bits, global_scale, g_out,
                                            scratch, codes, scales, stream);
    case kInF16:
      return (int)mx::cuda::launch<kInF16>(x, n_elems, f, block_size, scale_mode, rand_bits, global_scale, g_out,
                                           scratch, codes, scales, stream);
    default:
      return (int)cudaErrorInvalidValue;
  }
}

}  // extern "C"
