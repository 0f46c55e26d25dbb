// Work distribution shared by the CPU ops of every family.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace leankern {
namespace cpu {

// Run f(begin, end) over [0, n) in chunks of `chunk`, handed out dynamically to at::parallel_for's
// threads. Why not a static split: on a small shared machine one core is often busy with another
// process; a static half-split then waits for the slow core, dynamic chunks let the fast one
// take over.
template <class F>
void parallel_chunks(int64_t n, int64_t chunk, const F& f) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(1, chunk);
  const int64_t nchunks = (n + chunk - 1) / chunk;
  const int64_t nt = std::min<int64_t>(at::get_num_threads(), nchunks);
  if (nt <= 1 || at::in_parallel_region()) {
    f(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < nchunks; c = next.fetch_add(1))
      f(c * chunk, std::min(n, (c + 1) * chunk));
  });
}

// Chunk size for a kernel that streams its operand once (a GEMV's weights): at least `chunk`, and
// large enough that each thread gets about `per_thread` chunks. Why: a thread's chunks are then long
// contiguous runs of the stream, which the hardware prefetcher and the kernels' own prefetch past a
// chunk's end stay on, where one-tile chunks alternate between the threads; the few chunks per thread
// keep the dynamic hand-out. Measured on a 2-core Xeon, cold mx GEMV (M = 1), one-tile chunks -> about 8:
// 1.10-1.18x on 4096 x 4096 (mxint8, mxfp4, nvfp4), 1.10-1.11x on 14336 x 4096.
inline int64_t streaming_chunk(int64_t n, int64_t chunk, int64_t per_thread = 4) {
  const int64_t parts = std::max<int64_t>(1, (int64_t)at::get_num_threads() * per_thread);
  return std::max<int64_t>(std::max<int64_t>(1, chunk), (n + parts - 1) / parts);
}

}  // namespace cpu
}  // namespace leankern
