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

``python bench/bench_sefp_packed_avx2.py --limits [REPEATS] [m,m,...] [M,M,...]`` (default 5 repeats, m = 3, 7,
M = 32, 48, 64, 96, 128): the row
limits instead, both sides of each at rows around it (the tuning hooks ``sefp_set_packed_avx2_rows`` and
``sefp_set_panel_rows_f32`` set around each call, the two sides timed in turn), on all three shapes: from how many x
rows the packed kernel decodes each weight once per K slab (against the 4-row groups that decode it again per 4 x
rows), and up to how many the packed copy's and the planes' GEMVs run (against decoded fp32 panels and torch's
GEMM).
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


def _packed_nbytes(w: SEFPTensor, m: int) -> int:
    """The packed copy's bytes (sign + m bits per weight, the exponents), without building one."""
    N, K = w.shape
    return N * K * (1 + m) // 8 + w.exponents.numel()


def _start(repeats: int, columns: str):
    """Print the run's header and the table's; return the bandwidth probe's buffer."""
    big = read_buffer()
    print(f"{cpu_model()} | ISA {cpu_isa()} | torch {torch.__version__}, {torch.get_num_threads()} threads | "
          f"repeats {repeats} | read bandwidth {read_gbps(big):.1f} GB/s at the start")
    print(columns)
    print("|" + "---|" * (columns.count("|") - 1))
    return big


def _shapes():
    """(N, K, generator, weights quantized once at m_max = 8) for every shape."""
    for N, K in SHAPES:
        g = torch.Generator().manual_seed(N + K)
        yield N, K, g, sefp.quantize(torch.randn(N, K, generator=g) * 0.02, m_max=8)


def _planes_copies(w0: SEFPTensor) -> list:
    """Copies of the planes filling harness.COLD_BYTES (each call reads the next: weights from memory)."""
    return cold_copies(lambda: SEFPTensor(w0.planes.clone(), w0.exponents.clone(), w0.shape, w0.dtype, w0.block_size),
                       w0.planes.numel() * 4 + w0.exponents.numel())


def _ints(arg, default):
    return tuple(int(a) for a in arg.split(",")) if arg else default


def _with_hooks(hooks, fn):
    """fn() run with tuning hooks set: hooks = [(setter, args), ...], each setter returning what it replaced (restored
    after)."""
    befores = [(setter, setter(*args)) for setter, args in hooks]
    try:
        return fn()
    finally:
        for setter, before in reversed(befores):
            setter(*(before if isinstance(before, tuple) else (before,)))


def _limit_cases(ext, gemv_rows):
    """(M, [(side, hooks), (side, hooks)], planes?): each limit's two sides at rows next to it (decode-once at
    DECODE_ONCE_ROWS, GEMV / panels at gemv_rows); planes? = the planes' GEMV / panels (sefp_linear at m) instead of
    the packed copy's."""
    groups_once = [("row groups", [(ext.sefp_set_packed_avx2_rows, (32, 1 << 30))]),
                   ("decode-once", [(ext.sefp_set_packed_avx2_rows, (32, 1))])]
    packed_gp = [("GEMV", [(ext.sefp_set_packed_avx2_rows, (1 << 30, 5))]),
                 ("panels", [(ext.sefp_set_packed_avx2_rows, (0, 5))])]
    planes_gp = [("GEMV", [(ext.sefp_set_panel_rows_f32, (1 << 30,))]),
                 ("panels", [(ext.sefp_set_panel_rows_f32, (0,))])]
    return (tuple((M, groups_once, False) for M in DECODE_ONCE_ROWS)
            + tuple((M, packed_gp, False) for M in gemv_rows)
            + tuple((M, planes_gp, True) for M in gemv_rows))


DECODE_ONCE_ROWS, GEMV_ROWS = (4, 5, 8), (32, 48, 64, 96, 128)  # x rows timed around each limit (--limits defaults)


def limits(repeats: int, widths, gemv_rows=GEMV_ROWS) -> int:
    """``--limits``: both sides of the AVX2 kernel's two row limits (decode-once from 5 x rows, the GEMV up to 64 on
    the avx2 ISA) and of the planes' GEMV / panels limit (65 there), timed in turn (the tuning hooks set around each
    call) on every shape."""
    ext = leankern.extension()
    if not ext.sefp_packed_avx2_kernel():
        print("the AVX2 packed kernel does not run here (sefp_packed_avx2_kernel() is False)")
        return 1
    big = _start(repeats, "| W [N, K] | m | weights | M | first / second | first us | second us | second / first |")
    for N, K, g, w0 in _shapes():
        for m in widths:
            packed = cold_copies(lambda: w0.packed(m), _packed_nbytes(w0, m))
            planes = _planes_copies(w0)
            pnext, wnext = cycle(packed), cycle(planes)
            for M, sides, on_planes in _limit_cases(ext, gemv_rows):
                x = torch.randn(M, K, generator=g).to(torch.bfloat16)
                call = (lambda: sefp.linear(x, wnext(), m)) if on_planes else (lambda: sefp.linear(x, pnext()))
                fns = [lambda hooks=hooks: _with_hooks(hooks, call) for _, hooks in sides]
                ts = median_us_cold_interleaved(fns, repeats, no_flush)
                names = " / ".join(name for name, _ in sides)
                print(f"| {N} x {K} | {m} | {'planes' if on_planes else 'packed'} | {M} | {names} | {ts[0]:.0f} | "
                      f"{ts[1]:.0f} | {ts[1] / ts[0]:.2f} |", flush=True)
            del packed, planes
    print(f"read bandwidth {read_gbps(big):.1f} GB/s at the end")
    return 0


def main(argv) -> int:
    if argv and argv[0] == "--limits":
        return limits(int(argv[1]) if len(argv) > 1 else 5, _ints(argv[2] if len(argv) > 2 else "", (3, 7)),
                      _ints(argv[3] if len(argv) > 3 else "", GEMV_ROWS))
    repeats = int(argv[0]) if argv else 7
    rows = _ints(argv[1] if len(argv) > 1 else "", (1, 4, 16, 32))
    widths = _ints(argv[2] if len(argv) > 2 else "", tuple(range(1, 8)))
    big = _start(repeats,
                 "| W [N, K] | M | m | packed us | GB/s | planes us | planes / packed | portable us | portable / packed |")
    for N, K, g, w0 in _shapes():
        planes = _planes_copies(w0)
        for m in widths:
            packed = cold_copies(lambda: w0.packed(m), _packed_nbytes(w0, m))
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
