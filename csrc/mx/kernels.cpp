// The MX family's kernel tables: the portable one, and the choice of the active ISA's table
// (the SIMD tables are defined in mx_avx512.cpp / mx_avx2.cpp).
#include "mx/kernels.h"

#include <array>
#include <atomic>
#include <cstdlib>

#include "common/cpu_features.h"
#include "mx/formats.h"
#include "mx/scalar_kernels.h"

namespace leankern {
namespace mx {

const KernelTable& scalar_kernels() {
  static const KernelTable table = {&quantize_range_scalar, &dequantize_range_scalar, &hadamard_range_scalar,
                                    &nv_amax_scalar, &linear_range_scalar, nullptr};
  return table;
}

const KernelTable& active_kernels() {
#if defined(__x86_64__) || defined(_M_X64)
  if (cpu::active_isa() == cpu::Isa::kAvx512Bf16) return avx512bf16_kernels();
#endif
  return LK_ACTIVE_TABLE(scalar_kernels, avx2_kernels, avx512_kernels);
}

namespace {
std::atomic<bool> g_vbmi_decoder{true};
}
bool vbmi_decoder_enabled() { return g_vbmi_decoder.load(std::memory_order_relaxed); }
void set_vbmi_decoder_enabled(bool on) { g_vbmi_decoder.store(on, std::memory_order_relaxed); }

namespace {
std::atomic<int> g_few_rows_fma{-1};  // -1: not decided yet (the CPU's default at first use)
}
bool few_rows_fma_enabled() {
  int v = g_few_rows_fma.load(std::memory_order_relaxed);
  if (v < 0) {
    int expected = -1;
    // LEANKERN_MX_FMA=0 / 1, read at the first use, overrides the CPU's default (A/B of whole models)
    const char* env = std::getenv("LEANKERN_MX_FMA");
    const bool given = env && (env[0] == '0' || env[0] == '1') && env[1] == '\0';
    const int want = given ? env[0] - '0' : cpu::amx_supported() ? 1 : 0;
    g_few_rows_fma.compare_exchange_strong(expected, want);
    v = g_few_rows_fma.load(std::memory_order_relaxed);
  }
  return v == 1;
}
void set_few_rows_fma_enabled(bool on) { g_few_rows_fma.store(on ? 1 : 0, std::memory_order_relaxed); }
std::atomic<int> g_int8_few_rows{-1};  // -1: the CPU's default (kernels.h)
bool int8_few_rows_takes(bool four) {
  const int v = g_int8_few_rows.load(std::memory_order_relaxed);
  return v < 0 ? !four || cpu::amx_supported() : v == 1;
}
int set_int8_few_rows(int setting) { return g_int8_few_rows.exchange(setting < 0 ? -1 : setting > 0 ? 1 : 0); }

std::atomic<bool> g_quantize_vbmi{true};
bool quantize_vbmi_enabled() { return g_quantize_vbmi.load(std::memory_order_relaxed); }
void set_quantize_vbmi_enabled(bool on) { g_quantize_vbmi.store(on, std::memory_order_relaxed); }
bool quantize_vbmi_takes(int elem, int dtype, int block_size) {
  if (block_size < 16 || !cpu_has_vbmi() || !quantize_vbmi_enabled()) return false;
  return elem == kFp4E2M1 || dtype == kInBF16;
}

int elem_grid_exp(int elem) {
  static const auto grids = [] {
    std::array<int, kNumElems> g{};
    for (int e = 0; e < kNumElems; ++e) {
      const ElemParams p = elem_params(e);
      int lo = 1000;
      for (uint32_t c = 0; c < (1u << p.bits); ++c) {
        const uint32_t u = decode_code_bits(c, p) & 0x7FFFFFFFu;
        const uint32_t field = u >> 23;
        if (u == 0 || field == 255) continue;  // zero, Inf, NaN
        const uint32_t sig = (u & 0x7FFFFFu) | (field ? 0x800000u : 0u);
        const int low = (field ? (int)field : 1) - 150 + __builtin_ctz(sig);
        lo = low < lo ? low : lo;
      }
      g[e] = lo;
    }
    return g;
  }();
  return grids[elem];
}

bool bf16_products_exact(int fmt, int x_field) {
  if (x_field == 255) return true;  // no normal x
  const int elem = kFormats[fmt].elem, d = packed_decode_shift(elem);
  return elem_grid_exp(elem) + (d < 0 ? d : 0) + (x_field - 127) - 7 >= -126;
}

int fold_min_scale(int fmt, int x_field) {
  if (x_field == 255) return 0;
  const int ex = x_field - 127;
  const int grid = elem_grid_exp(kFormats[fmt].elem);
  if (kFormats[fmt].is_nv) return grid - 9 + ex - 7 >= -126 ? 0 : 256;
  const int s = 8 - grid - ex;  // grid + s - 127 + ex - 7 >= -126
  return s < 0 ? 0 : s;
}

bool cpu_has_vbmi() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool vbmi = __builtin_cpu_supports("avx512vbmi");
  return vbmi;
#else
  return false;
#endif
}
bool few_rows_fma_takes(int fmt, int block_size) {
  const ElemParams p = elem_params(kFormats[fmt].elem);
  if (p.bits == 4) return cpu_has_vbmi() && block_size % 8 == 0;
  return true;  // 8 / 6-bit: MXINT8 / 6, MXFP8 / 6
}

}  // namespace mx
}  // namespace leankern
