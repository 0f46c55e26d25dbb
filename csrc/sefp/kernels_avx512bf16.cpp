// avx512bf16 table of the SEFP CPU kernels: the avx512 table plus gemv_bf16 and decode_bf16 (gemv_bf16_gfni.cpp)
// where the CPU also has GFNI and AVX512-VBMI (every AVX512-BF16 CPU but Cooper Lake, which keeps the fp32
// kernels). Nothing here runs unless common/cpu_features.cpp found AVX512-BF16 and the active ISA is avx512bf16.
#if defined(__x86_64__) || defined(_M_X64)

#include <cstdint>

#include "sefp/kernels.h"

namespace leankern {
namespace sefp {
namespace avx512bf16 {

// gemv_bf16_gfni.cpp
void gemv_bf16_gfni(const Planes& P, const uint16_t* x, int64_t R, int64_t ldx, int64_t n0, int64_t n1, float* y,
                    int64_t ldy);
void decode_bf16_gfni(const Planes& P, int64_t n0, int64_t n1, uint16_t* out, int64_t ldo);

}  // namespace avx512bf16

const SefpKernels& avx512bf16_kernels() {
  static const SefpKernels table = [] {
    SefpKernels t = avx512_kernels();
    __builtin_cpu_init();
    if (__builtin_cpu_supports("gfni") && __builtin_cpu_supports("avx512vbmi")) {
      t.gemv_bf16 = &avx512bf16::gemv_bf16_gfni;
      t.decode_bf16 = &avx512bf16::decode_bf16_gfni;
    }
    return t;
  }();
  return table;
}

}  // namespace sefp
}  // namespace leankern

#endif
