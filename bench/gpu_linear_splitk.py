"""GPU split-K sweep of the Triton weight-only ``mx_linear`` at decode sizes (one lease's worth of data), and
M = 1 on both weight-only kernels: the one-row GEMV (``triton_kernels/mx_gemv.py``, the default at M = 1) against
the tensor-core kernel (``gemv=False``) and bf16 ``F.linear``, every format.

The launcher picks SPLIT_K from the shape (``_split_k``: about two waves of programs). This script times
the same kernel with SPLIT_K forced to 1 .. 32 for W [4096, 4096] and [14336, 4096] at M = 1 and 16, so the
heuristic can be set from measurements. Median of CUDA-graph replays; GB/s = (codes + scales + x + y) / time.

    python bench/gpu_linear_splitk.py [--iters 30]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_timing import copy_bandwidth_gbs, cuda_time_ms  # noqa: E402

FORMATS = ("mxfp4", "nvfp4", "mxint8")
SPLITS = (None, 1, 4, 8, 16, 32)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=30)
    args = p.parse_args()
    from leankern.mx.ref import mx_quantize_ref
    from leankern.triton_kernels import mx_linear as tml

    assert torch.cuda.is_available(), "needs a CUDA GPU"
    bw = copy_bandwidth_gbs()
    print(f"GPU {torch.cuda.get_device_name()} | copy bandwidth (read + write) {bw:.0f} GB/s | bf16 x, bf16 out")
    g = torch.Generator().manual_seed(0)
    head = f"{'fmt':>11} {'N x K':>11} {'M':>3} " + " ".join(f"{'auto' if s is None else f'sk{s}':>12}" for s in SPLITS)
    print(head + "   (us / GB/s)")
    for N, K in ((4096, 4096), (14336, 4096)):
        w = torch.randn(N, K, generator=g) * 0.02
        for fmt in FORMATS:
            bs = 16 if fmt.startswith("nv") else 32
            codes, scales, gs = (t.cuda() for t in mx_quantize_ref(w, fmt, bs))
            nbytes = codes.numel() * codes.element_size() + scales.numel() * scales.element_size()
            for M in (1, 16):
                x = torch.randn(M, K, generator=g).to(torch.bfloat16).cuda()
                cells = []
                for sk in SPLITS:
                    fn = lambda: tml.mx_linear_triton(x, codes, scales, gs, fmt, bs, split_k=sk)  # noqa: E731
                    t = cuda_time_ms(fn, args.iters, True)
                    gbps = (nbytes + 2 * M * (K + N)) / t / 1e6
                    cells.append(f"{t * 1e3:6.1f}/{gbps:5.0f}")
                print(f"{fmt:>11} {f'{N}x{K}':>11} {M:>3} " + " ".join(f"{c:>12}" for c in cells), flush=True)
    gemv_vs_tensor_cores(args.iters)
    return 0


def gemv_vs_tensor_cores(iters: int) -> None:
    """M = 1, every format, the launcher's split-K: us and GB/s of the GEMV, of the tensor-core kernel, of bf16
    F.linear on the same (unquantized) weight, and the GEMV's speed-up over each."""
    from leankern.mx.formats import FORMATS as ALL
    from leankern.mx.ref import mx_quantize_ref
    from leankern.triton_kernels import mx_linear as tml

    g = torch.Generator().manual_seed(1)
    print("\nM = 1, bf16 x: GEMV (default) vs tensor-core kernel (gemv=False) vs bf16 F.linear   (us / GB/s)")
    print(f"{'fmt':>11} {'N x K':>11} {'gemv':>12} {'tensor-core':>12} {'bf16':>12} {'x t-core':>9} {'x bf16':>7}")
    for N, K in ((4096, 4096), (14336, 4096)):
        w = torch.randn(N, K, generator=g) * 0.02
        wb = w.to(torch.bfloat16).cuda()
        x = torch.randn(1, K, generator=g).to(torch.bfloat16).cuda()
        t_bf16 = cuda_time_ms(lambda: torch.nn.functional.linear(x, wb), iters, True)
        for fmt in ALL:
            bs = 16 if fmt.startswith("nv") else 32
            codes, scales, gs = (t.cuda() for t in mx_quantize_ref(w, fmt, bs))
            nbytes = codes.numel() * codes.element_size() + scales.numel() * scales.element_size() + 2 * (K + N)
            ts = [cuda_time_ms(lambda: tml.mx_linear_triton(x, codes, scales, gs, fmt, bs, gemv=gv), iters, True)
                  for gv in (True, False)]
            cells = [f"{t * 1e3:6.1f}/{nb / t / 1e6:5.0f}" for t, nb in ((ts[0], nbytes), (ts[1], nbytes),
                                                                          (t_bf16, 2 * N * K))]
            print(f"{fmt:>11} {f'{N}x{K}':>11} " + " ".join(f"{c:>12}" for c in cells)
                  + f" {ts[1] / ts[0]:9.2f} {t_bf16 / ts[0]:7.2f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
