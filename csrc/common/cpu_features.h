// Runtime CPU-feature detection and the ISA the C++ kernels dispatch to.
//
// Nothing is compiled for the build machine's native arch: each SIMD path is a set of functions
// carrying __attribute__((target(...))) (common/simd_*.h), selected here at run time. The active
// ISA starts as the best one the CPU (and OS) supports, can be overridden by the environment
// variable LEANKERN_CPU_ISA=scalar|avx2|avx512|auto at load time, and by
// leankern._C.set_cpu_isa(name).
#pragma once

#include <string>

namespace leankern {
namespace cpu {

// Ordered: each level includes the ones below it. kAvx512Bf16 adds the dot-product extensions
// AVX512-BF16 and AVX512-VNNI (Zen 4, Cooper Lake / Sapphire Rapids and later); families without
// kernels of their own for it run their avx512 kernels there.
enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

// True if this CPU can run the kernels compiled for `isa`
// (avx2: AVX2 + F16C; avx512: AVX-512 F/BW/VL/DQ; avx512bf16: that + AVX512-BF16 + AVX512-VNNI).
bool isa_supported(Isa isa);
// Best supported ISA.
Isa best_isa();
// The ISA kernels currently dispatch to.
Isa active_isa();
// Set the active ISA by name ("avx512bf16" | "avx512" | "avx2" | "scalar" | "auto"). Throws std::invalid_argument
// for an unknown name and std::runtime_error for an ISA this CPU cannot run.
void set_active_isa(const std::string& name);
// Why LEANKERN_CPU_ISA was not applied ("" if it was, or is unset): an unknown name or an ISA this
// CPU lacks. The active ISA then stays the best one; the Python package raises this at import.
std::string requested_isa_error();
const char* isa_name(Isa isa);
// Space-separated list of the relevant features this CPU has, e.g. "avx2 f16c fma avx512f ...".
std::string feature_string();

// AMX (Intel Sapphire Rapids and later): AMX-TILE, AMX-BF16 and AMX-INT8 on the CPU, the tile state
// enabled by the OS (XCR0 bits 17, 18) and, on Linux, this process granted its use
// (arch_prctl(ARCH_REQ_XCOMP_PERM), asked once, at the first call). Not an ISA level of its own:
// kernels that have AMX paths take them under the avx512bf16 ISA when amx_enabled().
bool amx_supported();
// amx_supported(), the active ISA is avx512bf16, and AMX is switched on: by default, unless the
// environment variable LEANKERN_AMX=0 was set at load time or set_amx_enabled(false) was called.
bool amx_enabled();
// Switch the AMX paths on or off (tests and benches compare both on one CPU); returns the previous
// setting. Switching on where !amx_supported() is allowed and changes nothing.
bool set_amx_enabled(bool on);

// The kernel table of the active ISA, for a family's active_kernels():
//   return LK_ACTIVE_TABLE(scalar_kernels, avx2_kernels, avx512_kernels);
// (avx512bf16 runs the avx512 table; a family with kernels of its own for it picks them itself.)
// A macro because the avx2 / avx512 getters exist only in x86-64 builds (their translation units
// compile to nothing elsewhere), so other builds must not name them.
template <class Table>
const Table& pick_table(const Table& (*scalar)(), const Table& (*avx2)(), const Table& (*avx512)()) {
  switch (active_isa()) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
      return avx512();
    case Isa::kAvx2:
      return avx2();
    default:
      return scalar();
  }
}

}  // namespace cpu
}  // namespace leankern

#if defined(__x86_64__) || defined(_M_X64)
#define LK_ACTIVE_TABLE(scalar, avx2, avx512) ::leankern::cpu::pick_table(&scalar, &avx2, &avx512)
#else
#define LK_ACTIVE_TABLE(scalar, avx2, avx512) scalar()
#endif
