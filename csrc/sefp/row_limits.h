// The shared rules of the sefp row-limit tuning hooks whose default depends on the ISA (kernels.h
// set_panel_rows_f32, packed.h set_packed_avx2_gemv_rows / set_packed_avx2_decode_once_rows).
#pragma once

#include <atomic>
#include <cstdint>

#include "common/cpu_features.h"

namespace leankern {
namespace sefp {

// A hook's setter: a negative value changes nothing; returns the setting it replaced (the current one).
inline int64_t exchange_setting(std::atomic<int64_t>& setting, int64_t value) {
  return value < 0 ? setting.load() : setting.exchange(value);
}

// A setting of 0 is the ISA's default: on_avx2 on the avx2 ISA (the one measured there), other elsewhere.
inline int64_t rows_by_isa(const std::atomic<int64_t>& setting, int64_t on_avx2, int64_t other) {
  const int64_t v = setting.load(std::memory_order_relaxed);
  return v > 0 ? v : cpu::active_isa() == cpu::Isa::kAvx2 ? on_avx2 : other;
}

}  // namespace sefp
}  // namespace leankern
