"""The single-width packed SEFP copy through its AVX2 kernel (csrc/sefp/packed_gemv_avx2.cpp) against the planes and
against the portable path it replaced: ``python bench/bench_sefp_packed_avx2.py [REPEATS] [M,M,...] [m,m,...]``.

For every shape (4096 x 4096, 14336 x 4096, 4096 x 14336; quantized once at m_max = 8, block 32; bf16 x), x rows M
(default 1, 4, 16, 32) and width m (default 1..7): ``sefp.linear(x, w.packed(m))`` (the AVX2 GEMV, or its decoder and
torch's fp32 GEMM from 33 rows), ``sefp.linear(x, w, m)`` (the planes at m) and, at M = 1, the same packed call on the
``scalar`` ISA (the portable decoder and dot products: what every CPU without AVX512-VBMI ran before this kernel),
timed in turn within each repeat (medians), weights cold (each call takes the next of copies filling
harness.COLD_BYTES). ``GB/s`` = the packed copy's bytes read ((1 + m) / 8 per weight + the exponents) / time; ``rd``
= ``torch.sum`` over 256 MiB at the start and the end of the run. Every output is checked against the planes' before
timing. Meaningful on a CPU without AVX512-BF16 + VBMI (there bf16 x takes the VBMI kernel instead).
"""
import os
import statistics
import sys

import torch

try:
    import leankern  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import leankern
from leankern import sefp
from leankern.benchmarks.harness import (cold_copies, cpu_isa, cpu_model, cycle, median_us_cold_interleaved, no_flush,
                                         read_buffer, read_gbps)
from leankern.sefp import SEFPTensor

SHAPES = ((4096, 4096), (14336, 4096), (4096, 14336))


def _on_scalar(fn):
    ext = leankern.extension()
    before = ext.cpu_isa()
    ext.set_cpu_isa("scalar")
    try:
        return fn()
    finally:
        ext.set_cpu_isa(before)


def _ints(arg, default):
    return tuple(int(a) for a in arg.split(",")) if arg else default


def main(argv) -> int:
    repeats = int(argv[0]) if argv else 7
    rows = _ints(argv[1] if len(argv) > 1 else "", (1, 4, 16, 32))
    widths = _ints(argv[2] if len(argv) > 2 else "", tuple(range(1, 8)))
    big = read_buffer()
    rd0 = read_gbps(big)
    print(f"{cpu_model()} | ISA {cpu_isa()} | torch {torch.__version__}, {torch.get_num_threads()} threads | "
          f"repeats {repeats} | read bandwidth {rd0:.1f} GB/s at the start")
    print("| W [N, K] | M | m | packed us | GB/s | planes us | planes / packed | portable us | portable / packed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for N, K in SHAPES:
        g = torch.Generator().manual_seed(N + K)
        w0 = sefp.quantize(torch.randn(N, K, generator=g) * 0.02, m_max=8)
        planes_bytes = w0.planes.numel() * 4 + w0.exponents.numel()
        planes = cold_copies(lambda: SEFPTensor(w0.planes.clone(), w0.exponents.clone(), w0.shape, w0.dtype,
                                                w0.block_size), planes_bytes)
        for m in widths:
            packed = cold_copies(lambda: w0.packed(m), w0.packed(m).nbytes())
            pnext, wnext = cycle(packed), cycle(planes)
            gb = packed[0].nbytes() / 1e9
            for M in rows:
                x = torch.randn(M, K, generator=g).to(torch.bfloat16)
                ref = sefp.linear(x, w0, m).float()
                got = sefp.linear(x, packed[0]).float()
                tol = 1e-2 * ref.abs().max().item() + 1e-6  # a screen for a broken build; tests/ hold the bound
                if (got - ref).abs().max().item() > tol:
                    raise AssertionError(f"packed m={m} M={M} {N}x{K}: differs from the planes")
                fns = [lambda: sefp.linear(x, pnext()), lambda: sefp.linear(x, wnext(), m)]
                if M == 1:
                    fns.append(lambda: _on_scalar(lambda: sefp.linear(x, pnext())))
                ts = median_us_cold_interleaved(fns, repeats, no_flush)
                port = f"{ts[2]:.0f} | {ts[2] / ts[0]:.1f}" if M == 1 else "- | -"
                print(f"| {N} x {K} | {M} | {m} | {ts[0]:.0f} | {gb / ts[0] * 1e6:.1f} | {ts[1]:.0f} | "
                      f"{ts[1] / ts[0]:.2f} | {port} |", flush=True)
            del packed
    print(f"read bandwidth {read_gbps(big):.1f} GB/s at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
