// Row addressing and the work split shared by the chain and tree ops.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "specdec/numerics.h"
#include "specdec/rowdist.h"

namespace leankern {
namespace specdec {

// A [rows, V] logits tensor with unit inner stride: row i starts at base + i * stride_bytes.
struct Rows {
  const char* base = nullptr;
  int64_t stride_bytes = 0;
  int dtype = kF32;
  RowRef at(int64_t i) const { return {base + i * stride_bytes, dtype}; }
};

// `t` with unit inner stride (a copy only when it lacks one).
inline at::Tensor unit_inner(const at::Tensor& t) { return t.size(1) <= 1 || t.stride(1) == 1 ? t : t.contiguous(); }

inline Rows rows_of(const at::Tensor& t) {
  Rows r;
  r.base = static_cast<const char*>(t.data_ptr());
  r.stride_bytes = t.stride(0) * static_cast<int64_t>(t.element_size());
  r.dtype = t.scalar_type() == at::kFloat ? kF32 : t.scalar_type() == at::kBFloat16 ? kBF16 : kF16;
  return r;
}

// How one call is spread over the threads.
enum class Split {
  kSerial,    // little work: one thread, rows evaluated lazily (no thread wake-up, which costs more)
  kRequests,  // many requests: requests in parallel, each evaluating its rows lazily (stops at the first rejection)
  kRows       // few requests, much work: rows in parallel in request order, skipping rows behind a rejection
};

// Serial below this many elements of logits (argmax-only work; sampled modes count 8x per element):
// a call on rows just written (in cache) runs at ~30 GB/s on one core, and waking the other threads
// costs more than the rest of the call.
constexpr int64_t kParallelElems = 1 << 19;

inline Split choose_split(int64_t B, int64_t rows, int64_t V, bool sampled) {
  const int64_t nt = at::get_num_threads();
  if (nt <= 1 || at::in_parallel_region() || rows * V * (sampled ? 8 : 1) < kParallelElems) return Split::kSerial;
  return B >= 4 * nt ? Split::kRequests : Split::kRows;
}

// Rows per parallel task in the kRows split: about 16K elements, at least one row.
inline int64_t row_grain(int64_t V) { return std::max<int64_t>(1, 16384 / V); }

inline bool relaxed_match(int64_t draft, int64_t target, int64_t radius, int64_t lo, int64_t hi) {
  if (draft == target) return true;
  const bool in_range = lo <= draft && draft <= hi && lo <= target && target <= hi;
  return in_range && std::abs(draft - target) <= radius;
}

}  // namespace specdec
}  // namespace leankern
