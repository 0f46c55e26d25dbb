// Runtime CPU-feature detection (cpuid / __builtin_cpu_supports) and the active-ISA switch.
#include "common/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#define LEANKERN_X86 1
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace leankern {
namespace cpu {
namespace {

#ifdef LEANKERN_X86
bool has_f16c() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return (c >> 29) & 1u;
}
#endif

bool detect(Isa isa) {
#ifdef LEANKERN_X86
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kScalar:
      return true;
    case Isa::kAvx2:  // __builtin_cpu_supports also checks the OS saves the AVX state (XGETBV)
      return __builtin_cpu_supports("avx2") && has_f16c();
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && detect(Isa::kAvx2);
    case Isa::kAvx512Bf16:
      return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni") && detect(Isa::kAvx512);
  }
  return false;
#else
  return isa == Isa::kScalar;
#endif
}

const char* const kIsaChoices = "'avx512bf16', 'avx512', 'avx2', 'scalar', 'auto'";

// ISA for a name, or false for an unknown one ("auto" = the best supported).
bool parse_isa(const std::string& name, Isa* out) {
  if (name == "scalar") *out = Isa::kScalar;
  else if (name == "avx512bf16") *out = Isa::kAvx512Bf16;
  else if (name == "avx2") *out = Isa::kAvx2;
  else if (name == "avx512") *out = Isa::kAvx512;
  else if (name == "auto") *out = best_isa();
  else return false;
  return true;
}

// What this CPU is missing for `isa`, in words.
std::string lacks(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16:
      return "lacks AVX-512 (F/BW/VL/DQ) with AVX512-BF16 and AVX512-VNNI";
    case Isa::kAvx512:
      return "lacks AVX-512 (F/BW/VL/DQ)";
    default:
      return "lacks AVX2 (+F16C)";
  }
}

struct Initial {
  Isa isa;
  std::string error;  // why LEANKERN_CPU_ISA was not applied
};

Initial initial_isa() {
  const char* env = std::getenv("LEANKERN_CPU_ISA");
  if (!env || !*env) return {best_isa(), ""};
  const std::string name(env);
  Isa isa;
  if (!parse_isa(name, &isa))
    return {best_isa(), std::string("LEANKERN_CPU_ISA: expected one of ") + kIsaChoices + ", got '" + name + "'"};
  if (!isa_supported(isa)) return {best_isa(), "LEANKERN_CPU_ISA=" + name + ": this CPU " + lacks(isa)};
  return {isa, ""};
}

const Initial& initial() {
  static const Initial init = initial_isa();
  return init;
}

std::atomic<int>& active_slot() {
  static std::atomic<int> slot{static_cast<int>(initial().isa)};
  return slot;
}

#ifdef LEANKERN_X86
// AMX on the CPU and its tile state enabled by the OS, then the process's permission to use it.
bool detect_amx() {
  unsigned a, b, c, d;
  if (!detect(Isa::kAvx512Bf16) || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const unsigned bf16 = 1u << 22, tile = 1u << 24, int8 = 1u << 25;
  if ((d & (bf16 | tile | int8)) != (bf16 | tile | int8)) return false;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1u)) return false;  // OSXSAVE
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return false;  // XTILECFG, XTILEDATA
#if defined(__linux__)
  // Linux >= 5.16 hands out the (8 KB) tile data state only on request; older kernels fail the call.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;  // no way to ask this OS for the tile state: not used
#endif
}
#endif

bool amx_env_default() {
  const char* env = std::getenv("LEANKERN_AMX");
  return !(env && std::string(env) == "0");
}

std::atomic<bool>& amx_switch() {
  static std::atomic<bool> on{amx_env_default()};
  return on;
}

}  // namespace

bool amx_supported() {
#ifdef LEANKERN_X86
  static const bool ok = detect_amx();
  return ok;
#else
  return false;
#endif
}

bool amx_enabled() {
  return amx_switch().load(std::memory_order_relaxed) && active_isa() == Isa::kAvx512Bf16 && amx_supported();
}

bool set_amx_enabled(bool on) { return amx_switch().exchange(on, std::memory_order_relaxed); }

bool isa_supported(Isa isa) {
  static const bool ok[4] = {detect(Isa::kScalar), detect(Isa::kAvx2), detect(Isa::kAvx512),
                             detect(Isa::kAvx512Bf16)};
  return ok[static_cast<int>(isa)];
}

Isa best_isa() {
  if (isa_supported(Isa::kAvx512Bf16)) return Isa::kAvx512Bf16;
  if (isa_supported(Isa::kAvx512)) return Isa::kAvx512;
  if (isa_supported(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

Isa active_isa() { return static_cast<Isa>(active_slot().load(std::memory_order_relaxed)); }

void set_active_isa(const std::string& name) {
  Isa isa;
  if (!parse_isa(name, &isa))
    throw std::invalid_argument(std::string("set_cpu_isa: expected one of ") + kIsaChoices + ", got '" + name +
                                "'");
  if (!isa_supported(isa))
    throw std::runtime_error("set_cpu_isa: this CPU does not support '" + name + "' (it " + lacks(isa) +
                             "; features: " + feature_string() + "; best: " + isa_name(best_isa()) + ")");
  active_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
}

std::string requested_isa_error() { return initial().error; }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16:
      return "avx512bf16";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

std::string feature_string() {
  std::string out;
#ifdef LEANKERN_X86
  __builtin_cpu_init();
  auto add = [&out](bool has, const char* name) {
    if (has) out += (out.empty() ? "" : " ") + std::string(name);
  };
  add(__builtin_cpu_supports("sse4.2"), "sse4.2");
  add(__builtin_cpu_supports("avx"), "avx");
  add(__builtin_cpu_supports("avx2"), "avx2");
  add(__builtin_cpu_supports("fma"), "fma");
  add(has_f16c(), "f16c");
  add(__builtin_cpu_supports("avx512f"), "avx512f");
  add(__builtin_cpu_supports("avx512bw"), "avx512bw");
  add(__builtin_cpu_supports("avx512vl"), "avx512vl");
  add(__builtin_cpu_supports("avx512dq"), "avx512dq");
  add(__builtin_cpu_supports("avx512cd"), "avx512cd");
  add(__builtin_cpu_supports("avx512vnni"), "avx512vnni");
  add(__builtin_cpu_supports("avx512bf16"), "avx512bf16");
  add(__builtin_cpu_supports("avx512vbmi"), "avx512vbmi");
  add(__builtin_cpu_supports("gfni"), "gfni");
  add(amx_supported(), "amx");
#endif
  return out.empty() ? std::string("none") : out;
}

}  // namespace cpu
}  // namespace leankern
