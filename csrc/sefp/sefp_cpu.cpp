// CPU kernels of leankern::sefp_quantize, sefp_dequantize and sefp_linear (schemas, checks and
// numerics: python/leankern/sefp/ops.py, ref.py). Rows are split over both cores
// (common/parallel.h); the per-ISA inner loops are in the kernel table (kernels.h).
//
// sefp_linear, by the number of x rows M:
//   M <  panel_rows_f32() (32; 65 on the avx2 ISA): fused decode + FMA per weight row (gemv_*): the planes are
//                    read once and never materialized; x (shared by every row) is converted to fp32 once, in the
//                    transposed kernels' permuted order.
//   M >= panel_rows_f32(): panels of kPanelN weight rows decoded to fp32 (in parallel), then torch's own
//                    multithreaded fp32 GEMM (at::mm_out) into the output columns: the decode is
//                    amortized over the M rows.
// Both sum in fp32; the result + bias is rounded once to x's dtype (RNE), as the reference.
// bf16 x with m <= 8 on a GFNI + VBMI avx512bf16 CPU takes the bf16 kernels instead (bf16 products are exact
// there): gemv_bf16 below g_panel_rows_bf16 rows (kPanelRowsAmx with AMX; any M with a bias), linear_panels_bf16 from
// there. From kernels.h decoded_rows() x rows on, gemv_bf16 decodes each weight row once for all of them.
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "common/bf16_gemm.h"
#include "common/cpu_features.h"
#include "common/output_cache.h"
#include "common/parallel.h"
#include "common/x_shift.h"
#include "sefp/checks.h"
#include "sefp/io.h"
#include "sefp/kernels.h"
#include "sefp/row_limits.h"

namespace leankern {
namespace sefp {
namespace {

using cpu::parallel_chunks;

// x rows from which the decoded fp32 panels and torch's fp32 GEMM win over the fp32 GEMV (measured, 4096 x 4096);
// on the avx2 ISA the GEMV (4 weight rows decoded once per K slab for every x row) ran 33-64 rows at 0.94-2.19x the
// panels' speed (below 1.09 only at 4096 x 14336, m = 7: a tie) and lost or tied at 96 in 4 of 6 (three shapes x
// m = 3 / 7, 2-core Zen 3, cold; `python bench/bench_sefp_packed_avx2.py --limits`,
// docs/bench/sefp_avx2_limits_zen3.txt)
constexpr int64_t kPanelRows = 32, kPanelRowsAvx2 = 65;
std::atomic<int64_t> g_panel_rows_f32{0};  // kernels.h set_panel_rows_f32 (a tuning hook); 0: by ISA, as above
int64_t panel_rows_f32() { return rows_by_isa(g_panel_rows_f32, kPanelRowsAvx2, kPanelRows); }
constexpr int64_t kPanelN = 128;    // weight rows per decoded panel: 128 x K fp32 stays in L2/L3
// The same for the bf16 kernels (linear_panels_bf16) on CPUs without AMX: since gemv_bf16 decodes 4 weight rows
// once for all x rows (gemv_decoded), it beat the panels at every M up to 64 and lost from 96 (Zen 4, 4096 x 4096,
// m = 8 / 4 / 2: M = 64 7.7 / 7.9 / 6.2 ms against 9.3 / 8.6 / 8.1, M = 96 13.2 / 11.9 / 9.6 against
// 11.6 / 11.2 / 10.7; bench/bench_sefp_rows.py); it was 20 before.
std::atomic<int64_t> g_panel_rows_bf16{80};  // kernels.h set_panel_rows (a tuning hook)
// ... and sefp_packed_linear's (its decode with the scale multiplied in is dearer: the tile lost to the panels at
// 48-64 rows, 0.84-0.97x, and won at 16-32, 0.99-1.55x; Zen 4, bench/bench_sefp_rows.py, two runs)
std::atomic<int64_t> g_packed_panel_rows_bf16{40};
// ... and with AMX (linear_panels_amx): on a 2-core Xeon the GEMV costs ~0.33 ms per row of a 4096 x 4096 weight
// (vdpbf16ps at half Zen 4's rate), the panels ~4 ms at any M up to 64 (their decode).
constexpr int64_t kPanelRowsAmx = 12;
constexpr int64_t kPanelBytesBf16 = 4 << 20;  // bf16 panels (decode_bf16): ~4 MB, 256..512 rows

std::atomic<int64_t> g_decoded_rows{8}, g_packed_decoded_rows{16};  // kernels.h decoded_rows

// Rows per parallel task for ~`work` element-operations each (at least one row).
int64_t rows_per_task(int64_t per_row, int64_t work) { return std::max<int64_t>(1, work / std::max<int64_t>(1, per_row)); }

Planes make_planes(const at::Tensor& planes, const at::Tensor& exponents, int64_t m, int64_t block_size) {
  Planes P;
  P.data = reinterpret_cast<const uint32_t*>(planes.data_ptr<int32_t>());
  P.plane_stride = planes.stride(0);
  P.N = planes.size(1);
  P.Kw = planes.size(2);
  P.exps = exponents.data_ptr<int8_t>();
  P.nb = exponents.size(1);
  P.gs = block_shift(block_size);
  P.m = static_cast<int>(m);
  return P;
}

// ------------------------------------------------------------------------------------ quantize
[[noreturn]] void throw_not_finite(const at::Tensor& w, int64_t n) {
  const int dt = dtype_code(w.scalar_type());
  const char* row = static_cast<const char*>(w.data_ptr()) + n * w.stride(0) * w.element_size();
  int64_t k = 0;
  float v = 0.0f;
  for (; k < w.size(1); ++k) {
    v = load_f32(row, dt, k);
    if (!std::isfinite(v)) break;
  }
  TORCH_CHECK_VALUE(false, "w: expected finite values (SEFP has no NaN/Inf code), got ", checks::py_float_repr(v),
                    " at index (", n, ", ", k, ")");
  __builtin_unreachable();
}

std::tuple<at::Tensor, at::Tensor> sefp_quantize_cpu(const at::Tensor& w_in, int64_t m_max, int64_t block_size) {
  check_quantize(w_in, m_max, block_size);
  const at::Tensor w = w_in.size(1) == 1 || w_in.stride(1) == 1 ? w_in : w_in.contiguous();
  const int64_t N = w.size(0), K = w.size(1), Kp = padded_k(K, block_size), Kw = Kp / kWord;
  at::Tensor planes = at::empty({1 + m_max, N, Kw}, w.options().dtype(at::kInt));
  at::Tensor exps = at::empty({N, Kp / block_size}, w.options().dtype(at::kChar));
  if (N == 0) return std::make_tuple(planes, exps);
  const SefpKernels& kern = active_kernels();
  const int dt = dtype_code(w.scalar_type());
  const int64_t ldw = N > 1 ? w.stride(0) : K;
  uint32_t* pl = reinterpret_cast<uint32_t*>(planes.data_ptr<int32_t>());
  int8_t* ex = exps.data_ptr<int8_t>();
  std::atomic<int64_t> first_bad{N};
  parallel_chunks(N, rows_per_task(Kp * (1 + m_max), 1 << 20), [&](int64_t n0, int64_t n1) {
    const int64_t bad = kern.quantize_rows(w.data_ptr(), dt, ldw, K, (int)m_max, block_shift(block_size), Kw, pl,
                                           N * Kw, ex, n0, n1);
    for (int64_t cur = first_bad.load(); bad >= 0 && bad < cur && !first_bad.compare_exchange_weak(cur, bad);) {
    }
  });
  if (first_bad.load() < N) throw_not_finite(w, first_bad.load());
  return std::make_tuple(planes, exps);
}

// ---------------------------------------------------------------------------------- dequantize
at::Tensor sefp_dequantize_cpu(const at::Tensor& planes, const at::Tensor& exponents, int64_t m, int64_t block_size,
                               int64_t K, at::ScalarType out_dtype) {
  check_dequantize(planes, exponents, m, block_size, K, out_dtype);
  const Planes P = make_planes(planes, exponents, m, block_size);
  at::Tensor out = cpu::empty_output({P.N, K}, planes.options().dtype(out_dtype));
  const SefpKernels& kern = active_kernels();
  const int dt = dtype_code(out_dtype);
  void* o = out.data_ptr();
  parallel_chunks(P.N, rows_per_task(P.Kw * kWord * (1 + m), 1 << 18), [&](int64_t n0, int64_t n1) {
    thread_local std::vector<float> row;
    row.resize(P.Kw * kWord);
    for (int64_t n = n0; n < n1; ++n) {
      kern.decode_row(P, n, row.data());
      if (dt == kF32) {
        std::memcpy(static_cast<float*>(o) + n * K, row.data(), K * sizeof(float));
      } else {
        for (int64_t k = 0; k < K; ++k) store_from_f32(o, dt, n * K + k, row[k]);
      }
    }
  });
  return out;
}

// -------------------------------------------------------------------------------------- linear
// dst [M, Kx] from M rows of K elements, zero padded: natural order (order == nullptr) or, per chunk of `chunk`
// elements, position i <- element order[i] of that chunk. load(r, k): element k of row r as a T.
template <class T, class Load>
void arrange_rows(int64_t M, int64_t K, int64_t Kx, const int16_t* order, int chunk, T* dst, Load load) {
  parallel_chunks(M, rows_per_task(Kx, 1 << 16), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* d = dst + r * Kx;
      if (order == nullptr) {
        for (int64_t k = 0; k < K; ++k) d[k] = load(r, k);
        std::fill(d + K, d + Kx, T(0));
        continue;
      }
      for (int64_t c = 0; c < Kx; c += chunk)
        for (int i = 0; i < chunk; ++i) {
          const int64_t k = c + order[i];
          d[c + i] = k < K ? load(r, k) : T(0);
        }
    }
  });
}

// x [M, K] (contiguous) -> fp32 [M, Kx], zero padded, permuted (kernels.h) or natural order.
at::Tensor prepare_x(const at::Tensor& x, int64_t Kx, bool permuted, int m) {
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor xb = at::empty({M, Kx}, x.options().dtype(at::kFloat));
  const int dt = dtype_code(x.scalar_type());
  const char* src = static_cast<const char*>(x.data_ptr());
  const int64_t rb = K * x.element_size();
  arrange_rows(M, K, Kx, permuted ? chunk_order(m) : nullptr, kChunk, xb.data_ptr<float>(),
               [&](int64_t r, int64_t k) { return load_f32(src + r * rb, dt, k); });
  return xb;
}

// bf16 x [M, K] (contiguous) -> its bits [M, bf16_width(Kw)] in gemv_bf16 / decode_bf16's chunk order, zero padded.
at::Tensor prepare_x_bf16(const at::Tensor& x, int64_t Kw, int m) {
  const int64_t M = x.size(0), K = x.size(1), Kc = bf16_width(Kw);
  at::Tensor xb = at::empty({M, Kc}, x.options());
  const uint16_t* src = reinterpret_cast<const uint16_t*>(x.data_ptr());
  arrange_rows(M, K, Kc, chunk_order_bf16(m), kChunkBf16, reinterpret_cast<uint16_t*>(xb.data_ptr()),
               [&](int64_t r, int64_t k) { return src[r * K + k]; });
  return xb;
}

// Whether the permuted fp32 GEMVs (planes_simd_impl.h) may take x at width m: they sum products of x with q 2^24
// (m <= 7) or q 2^-24 (m = 8) and apply the block scale to the sums, so |x| >= 2^87 could overflow a chunk's sums
// (up to 2^39 |x|) and, at m = 8, |x| < 2^-100 puts products among fp32's subnormals, whose absolute rounding the
// scale then magnifies. gemv_natural (exactly decoded weights, as the reference) takes such x. fp16 x is always in
// range. One pass over x on the calling thread (a byte maximum and minimum, vectorized).
bool permuted_gemv_takes(const at::Tensor& x2, int m) {
  const int64_t n = x2.numel();
  int hi = 0, lo = 255;  // the largest exponent field, the smallest of a nonzero value (0: a subnormal)
  if (x2.scalar_type() == at::kFloat || x2.scalar_type() == at::kBFloat16) {
    const bool f32 = x2.scalar_type() == at::kFloat;
    const uint32_t* u32 = f32 ? reinterpret_cast<const uint32_t*>(x2.data_ptr()) : nullptr;
    const uint16_t* u16 = f32 ? nullptr : reinterpret_cast<const uint16_t*>(x2.data_ptr());
    uint8_t h = 0, l = 255;
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t mag = f32 ? u32[i] & 0x7FFFFFFFu : (uint32_t)(u16[i] & 0x7FFF) << 16;
      const uint8_t f = static_cast<uint8_t>(mag >> 23);
      h = f > h ? f : h;
      const uint8_t g = mag ? f : static_cast<uint8_t>(255);
      l = g < l ? g : l;
    }
    hi = h, lo = l;
  } else {
    return true;
  }
  return hi <= 127 + 86 && (m < 8 || lo == 255 || lo >= 127 - 100);
}

// y32 [M, N] (fp32) = xb @ W^T through decoded fp32 panels and at::mm_out.
void linear_panels(const SefpKernels& kern, const Planes& P, bool permuted, const at::Tensor& xb, at::Tensor& y32) {
  const int64_t Kx = xb.size(1);
  at::Tensor panel = at::empty({std::min(kPanelN, P.N), Kx}, xb.options().dtype(at::kFloat));
  float* pp = panel.data_ptr<float>();
  for (int64_t n0 = 0; n0 < P.N; n0 += kPanelN) {
    const int64_t nb = std::min(kPanelN, P.N - n0);
    parallel_chunks(nb, 8, [&](int64_t a, int64_t b) {
      if (permuted) {
        kern.decode_permuted(P, n0 + a, n0 + b, pp + a * Kx, Kx);
      } else {
        for (int64_t i = a; i < b; ++i) kern.decode_row(P, n0 + i, pp + i * Kx);
      }
    });
    at::Tensor cols = y32.narrow(1, n0, nb);
    at::mm_out(cols, xb, panel.narrow(0, 0, nb).t());
  }
}

// y [M, N] (x's dtype) = x @ W^T for bf16 x with >= g_panel_rows_bf16 rows, no bias, m <= 8, every block's weights
// bf16 normals (E = -128 or E >= m - 127), on a GFNI + VBMI avx512bf16 CPU: panels of ~kPanelBytesBf16 decoded
// straight to bf16 with the scale in the exponent (decode_bf16) and torch's bf16 GEMM (fp32 accumulation, one
// rounding) into y's columns; x and the panels in the same chunk order along K (every dot product unchanged).
void linear_panels_bf16(const SefpKernels& kern, const Planes& P, const at::Tensor& x2, int m, at::Tensor out) {
  const int64_t N = P.N, M = x2.size(0);
  const at::Tensor xb = prepare_x_bf16(x2, P.Kw, m);
  const int64_t Kc = xb.size(1);
  // On CPUs with AMX (cpu::amx_enabled()) our AMX GEMM (common/bf16_gemm.h, x packed once as A tiles) multiplies
  // the panels into fp32 sums, rounded once at the end: torch's bf16 GEMM on 512-row panels took twice its time
  // for the whole product there (a 512 x 4096 x 4096 product: 18 ms in 8 panel calls, 9.4 ms in one; 2-core Xeon).
  const bool amx = cpu::amx_enabled() && Kc % 32 == 0;
  at::Tensor xa, y32;
  if (amx) {
    xa = at::empty({cpu::amx_x_tiles_elems(M, Kc)}, xb.options());
    cpu::amx_pack_x(reinterpret_cast<const uint16_t*>(xb.data_ptr()), Kc, nullptr, M, Kc,
                    reinterpret_cast<uint16_t*>(xa.data_ptr()));
    y32 = at::empty({M, N}, xb.options().dtype(at::kFloat));
  }
  // the GEMM reads each panel from cache right after the decode wrote it (AMX: 512 rows at K = 4096 measured
  // slower too)
  const int64_t rows = std::clamp<int64_t>(kPanelBytesBf16 / (2 * Kc) / 64 * 64, 256, 512);
  at::Tensor panel = at::empty({std::min(rows, N), Kc}, x2.options());
  uint16_t* pp = reinterpret_cast<uint16_t*>(panel.data_ptr());
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    const int64_t nb = std::min(rows, N - n0);
    parallel_chunks(nb, 8, [&](int64_t a, int64_t b) { kern.decode_bf16(P, n0 + a, n0 + b, pp + a * Kc, Kc); });
    if (amx)  // (cannot decline: its conditions were checked above)
      cpu::bf16_gemm_nt_amx(reinterpret_cast<const uint16_t*>(xa.data_ptr()), pp, Kc, y32.data_ptr<float>() + n0, N, M,
                            nb, Kc);
    else {
      at::Tensor cols = out.narrow(1, n0, nb);
      at::mm_out(cols, xb, panel.narrow(0, 0, nb).t());
    }
  }
  if (amx) out.copy_(y32);  // RNE, once
}

at::Tensor sefp_linear_cpu(const at::Tensor& x, const at::Tensor& planes, const at::Tensor& exponents, int64_t m,
                           int64_t block_size, const std::optional<at::Tensor>& bias) {
  check_linear(x, planes, exponents, m, block_size, bias);
  const Planes P = make_planes(planes, exponents, m, block_size);
  const int64_t K = x.size(-1), N = P.N, M = K ? x.numel() / K : 0;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor out = cpu::empty_output(out_shape, x.options());
  if (M == 0 || N == 0) return out;

  const at::Tensor x2 = x.reshape({M, K}).contiguous();
  if (const std::vector<int> shift = linear_x_shifts(x2); !shift.empty())  // rows near fp32's top (common/x_shift.h)
    return linear_shifted(x, shift, bias, [&](const at::Tensor& xs, const std::optional<at::Tensor>& none) {
      return sefp_linear_cpu(xs, planes, exponents, m, block_size, none);
    });
  const SefpKernels& kern = active_kernels();
  // bf16 x, m <= 8, a GFNI + VBMI avx512bf16 CPU: every weight, x and product is exact in bf16 / fp32, so the
  // bf16 kernels (gemv_bf16_gfni.cpp) take it; they treat bf16 subnormal x as zero (vdpbf16ps; docs/sefp.md)
  const bool bf16_x = kern.gemv_bf16 != nullptr && m <= 8 && x.scalar_type() == at::kBFloat16;
  const int x_field =  // (kernels.h: one pass over x, for every check below)
      bf16_x ? bf16_min_normal_exponent_field(reinterpret_cast<const uint16_t*>(x2.data_ptr()), x2.numel()) : 255;
  const bool bf16 = bf16_x && bf16_gemv_takes(x_field);
  const int64_t panels_from = cpu::amx_enabled() ? kPanelRowsAmx : panel_rows();
  // the panels hold weights scaled by their block's 2^(E - (m - 1)), and torch's bf16 GEMM flushes products and sums
  // below 2^-126 as vdpbf16ps does: only where every block keeps them above with this x (decode_min_exponent, which
  // also asks E >= m - 127: exact bf16 weights)
  if (bf16 && M >= panels_from && !bias.has_value() &&
      !(exponents.gt(-128) &
        exponents.lt(decode_min_exponent(x_field, (int)m)))
           .any()
           .item<bool>()) {
    linear_panels_bf16(kern, P, x2, static_cast<int>(m), out.view({M, N}));
    return out;
  }
  const bool f32_out = x.scalar_type() == at::kFloat;
  at::Tensor y32 = f32_out ? out.view({M, N}) : at::empty({M, N}, x.options().dtype(at::kFloat));
  if (M < panel_rows_f32() || (bf16 && M < panels_from)) {
    // several x rows: tasks of >= 64 weight rows, so the x slabs read per task are shared by many rows
    const int64_t per_row = rows_per_task(P.Kw * kWord * (1 + M), 1 << 19);
    const int64_t task = cpu::streaming_chunk(N, M == 1 ? per_row : std::max<int64_t>(64, per_row));
    float* yp = y32.data_ptr<float>();
    if (bf16) {  // fewer rows than the bf16 panels take (or a bias, or tiny blocks: they need no exact bf16 w)
      const at::Tensor xb = prepare_x_bf16(x2, P.Kw, static_cast<int>(m));
      const uint16_t* xp = reinterpret_cast<const uint16_t*>(xb.data_ptr());
      Planes Pb = P;
      if (M >= decoded_rows())
        Pb.decode_min_e =
            decode_min_exponent(x_field, static_cast<int>(m));
      parallel_chunks(N, task, [&](int64_t n0, int64_t n1) { kern.gemv_bf16(Pb, xp, M, xb.size(1), n0, n1, yp, N); });
    } else {
      const bool permuted = kern.gemv_permuted != nullptr && m <= kMaxPermM && permuted_gemv_takes(x2, (int)m);
      const int64_t Kx = permuted ? permuted_width(P.Kw) : P.Kw * kWord;
      const at::Tensor xb = prepare_x(x2, Kx, permuted, (int)m);
      const float* xp = xb.data_ptr<float>();
      const auto gemv = permuted ? kern.gemv_permuted : kern.gemv_natural;
      parallel_chunks(N, task, [&](int64_t n0, int64_t n1) { gemv(P, xp, M, Kx, n0, n1, yp, N); });
    }
  } else {
    const bool permuted = kern.gemv_permuted != nullptr && m <= kMaxPermM;
    const at::Tensor xb = prepare_x(x2, permuted ? permuted_width(P.Kw) : P.Kw * kWord, permuted, (int)m);
    linear_panels(kern, P, permuted, xb, y32);
  }
  if (f32_out && !bias.has_value()) return out;
  // y + bias in fp32, then one rounding to x's dtype
  store_output(out.data_ptr(), dtype_code(x.scalar_type()), y32.data_ptr<float>(), M, N, bias);
  return out;
}

}  // namespace

int64_t set_decoded_rows(int64_t rows, bool packed) {
  return (packed ? g_packed_decoded_rows : g_decoded_rows).exchange(rows);
}
int64_t decoded_rows(bool packed) {
  return (packed ? g_packed_decoded_rows : g_decoded_rows).load(std::memory_order_relaxed);
}
int64_t set_panel_rows(int64_t rows, bool packed) {
  return (packed ? g_packed_panel_rows_bf16 : g_panel_rows_bf16).exchange(rows);
}
int64_t set_panel_rows_f32(int64_t rows) { return exchange_setting(g_panel_rows_f32, rows); }
int64_t panel_rows(bool packed) {
  return (packed ? g_packed_panel_rows_bf16 : g_panel_rows_bf16).load(std::memory_order_relaxed);
}

TORCH_LIBRARY_IMPL(leankern, CPU, m) {
  m.impl("sefp_quantize", &sefp_quantize_cpu);
  m.impl("sefp_dequantize", &sefp_dequantize_cpu);
  m.impl("sefp_linear", &sefp_linear_cpu);
}

}  // namespace sefp
}  // namespace leankern
