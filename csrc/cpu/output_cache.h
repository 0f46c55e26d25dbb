// Output allocation for the CPU ops: a small, bounded cache of large buffers.
//
// Why: a fresh multi-MB output is first-touched inside the kernel, and every 4 KiB page fault (or
// 2 MiB page clear) costs more than quantizing the page. glibc hands large blocks back to the OS
// on free, so a steady stream of calls (quantizing activations, benchmarks) pays that on every
// call. Outputs of >= 1 MiB therefore come from a c10::Allocator that keeps up to
// LEANKERN_OUTPUT_CACHE_MB (default 512; 0 = off) of freed buffers for reuse by the next output
// of the same rounded size, and asks for transparent huge pages for new ones. The tensors are
// ordinary resizable CPU tensors; only the memory of freed outputs is kept around.
#pragma once

#include <ATen/ATen.h>

namespace leankern {
namespace cpu {

// Like at::empty(sizes, opts) (contiguous, CPU), served from the output cache when large.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opts);

}  // namespace cpu
}  // namespace leankern
