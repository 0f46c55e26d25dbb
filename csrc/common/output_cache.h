// Output allocation for the CPU ops: an optional, bounded cache of large buffers. Off by default.
//
// Why: a fresh multi-MB output is first-touched inside the kernel, and every 4 KiB page fault (or
// 2 MiB page clear) costs more than quantizing the page. glibc hands large blocks back to the OS
// on free, so a steady stream of calls pays that on every call. With the cache on, outputs of
// >= 1 MiB come from a c10::Allocator that keeps up to `limit` bytes of freed buffers for reuse
// by the next output of the same rounded size, and asks for transparent huge pages for new ones.
// Off by default because the kept memory is invisible to torch's memory statistics; the initial
// limit is LEANKERN_OUTPUT_CACHE_MB (MB, 0 = off) when set, and leankern._C.output_cache_* change
// it at run time. The tensors are ordinary resizable CPU tensors.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>

namespace leankern {
namespace cpu {

// Like at::empty(sizes, opts) (contiguous, CPU), served from the output cache when on and large. Also for large
// per-call scratch (mx's linear: x_hat, its codes, x as AMX tiles): at M = 512, K = 4096 the dual MXINT8 product
// took 9.51 -> 9.03 ms (median of 12 alternations, cache off / on) once those came from here too.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opts);

struct OutputCacheStats {
  size_t limit_bytes;   // 0 = off
  size_t cached_bytes;  // freed buffers kept for reuse
  size_t live_bytes;    // outputs alive that came from the cache's allocator
  int64_t hits, misses;  // >= 1 MiB allocations while on: served from / not from the kept buffers
};

// Set the limit (0 = off); lowering it frees kept buffers down to the new limit.
void output_cache_set_limit(size_t limit_bytes);
// Free every kept buffer (live outputs are untouched).
void output_cache_flush();
OutputCacheStats output_cache_stats();

}  // namespace cpu
}  // namespace leankern
