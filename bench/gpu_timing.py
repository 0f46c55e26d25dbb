"""CUDA timing shared by the bench/gpu_*.py scripts (CUDA events, optional CUDA-graph replay)."""
import statistics

import torch


def cuda_time_ms(fn, iters, graph):
    """Median milliseconds of ``fn()`` over ``iters`` timed calls (CUDA events around each call)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        fn = g.replay
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs():
    """Device-to-device copy bandwidth (read + write bytes per second) of a 1 GiB buffer."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), 10, False)
    return 2 * src.numel() * 4 / ms / 1e6
