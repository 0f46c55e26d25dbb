// Portable build of the SEFP inner loops (kernels_impl.h), the shared scale table and the ISA switch.
#include <cmath>
#include <cstring>
#include <vector>

#include "common/cpu_features.h"
#include "sefp/kernels.h"

namespace leankern {
namespace sefp {

const float* scale_table(int m) {
  // [m][E + 128]; built once (thread-safe static init), 17 KB.
  static const std::vector<float> table = [] {
    std::vector<float> t((kMaxM + 1) * 256);
    for (int mm = 1; mm <= kMaxM; ++mm)
      for (int E = -128; E < 128; ++E)
        t[mm * 256 + E + 128] = E == -128 ? 1.0f : std::ldexp(1.0f, E - (mm - 1));
    return t;
  }();
  return table.data() + m * 256;
}

const int16_t* chunk_order(int m) {
  // position 32j + 8v + l holds element 8b + j; b as planes_simd_impl.h's Codec decodes:
  // int8 path (m <= 7): b = l < 4 ? 4v + l : 12 + 4v + l; fp16 path (m == 8): b = 8v + l.
  static const std::vector<int16_t> table = [] {
    std::vector<int16_t> t(2 * kChunk);
    for (int path = 0; path < 2; ++path)
      for (int j = 0; j < 8; ++j)
        for (int v = 0; v < 4; ++v)
          for (int l = 0; l < 8; ++l) {
            const int b = path == 0 ? (l < 4 ? 4 * v + l : 12 + 4 * v + l) : 8 * v + l;
            t[path * kChunk + 32 * j + 8 * v + l] = static_cast<int16_t>(8 * b + j);
          }
    return t;
  }();
  return table.data() + (m <= 7 ? 0 : kChunk);
}

namespace scalar {

#define LK_T inline
#include "sefp/kernels_impl.h"
#undef LK_T

}  // namespace scalar

const SefpKernels& scalar_kernels() {
  static const SefpKernels table = {&scalar::quantize_rows, &scalar::decode_row, &scalar::gemv_natural, nullptr,
                                    nullptr};
  return table;
}

const SefpKernels& active_kernels() {
#if defined(__x86_64__) || defined(_M_X64)
  if (cpu::active_isa() == cpu::Isa::kAvx512Bf16) return avx512bf16_kernels();
#endif
  return LK_ACTIVE_TABLE(scalar_kernels, avx2_kernels, avx512_kernels);
}

}  // namespace sefp
}  // namespace leankern
