"""Dual INT x INT ``mx.linear`` in prefill (the int8 VNNI kernel, ``csrc/mx/linear_packed_int8.h``) against torch bf16
``F.linear`` and weight-only on the same cold weights:
``python bench/bench_mx_dual_prefill.py [FMTS] [MS] [SHAPES] [amx|noamx]`` (defaults: mxint8, mxint4, mxfp4 weights;
act mxint8; M = 512; 4096x4096,14336x4096,4096x14336; AMX as the CPU has it).

The issue's target for MXINT8 x MXINT8 at M = 512: >= 1.0x torch bf16, >= 1.3x on CPUs without AMX. Weights
prepacked and cold (cycled through 256 MiB of copies, on 2 MiB pages: the script reruns itself with
THP_MEM_ALLOC_ENABLE=1 unless it is set), x bf16, 2 threads; the three sides timed in turn per round (3 rounds,
median of the round medians). Run it against another build with ``PYTHONPATH=/path/to/other/python`` for an A/B.
"""
import os
import sys

import torch
import torch.nn.functional as F

try:
    import leankern
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import leankern

from leankern.benchmarks import rerun_with_thp
from leankern.benchmarks.harness import ab_args, cpu_model, median_call_s, median_of_rounds
from leankern.benchmarks.mx_linear import ab_cases, avx512bf16_ready, avx512bf16_session

FORMATS = ["mxint8", "mxint4", "mxfp4"]
SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]


def main(argv) -> int:
    if not avx512bf16_ready(" (and VNNI)"):
        return 0
    fmts, ms, shapes, rest = ab_args(argv, FORMATS, [512], SHAPES)
    amx = (rest[0] if rest else "amx") == "amx" and leankern._C.amx_supported()
    with avx512bf16_session(amx):
        print(f"{cpu_model()}, ISA avx512bf16 (AMX {'on' if amx else 'off'}), torch {torch.__version__}, 2 threads; "
              f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; x bf16, act_fmt mxint8; "
              f"leankern from {os.path.dirname(os.path.dirname(leankern.__file__))}")
        print("| weight | M | N x K | dual ms | GOP/s | weight-only ms | torch bf16 ms | torch GFLOP/s | torch / dual |")
        print("|---|---|---|---|---|---|---|---|---|")
        for fmt, m, n, k, x, nq, nw, _ in ab_cases(shapes, fmts, ms):
            fns = {"dual": lambda: leankern.mx.linear(x, nq(), act_fmt="mxint8"),
                   "wonly": lambda: leankern.mx.linear(x, nq()), "torch": lambda: F.linear(x, nw())}
            t = median_of_rounds(tuple(fns), lambda key: median_call_s(fns[key], reps=7, warmup=2))
            ops = 2 * m * n * k
            print(f"| {fmt} | {m} | {n} x {k} | {t['dual'] * 1e3:.2f} | {ops / t['dual'] / 1e9:.0f} | "
                  f"{t['wonly'] * 1e3:.2f} | {t['torch'] * 1e3:.2f} | {ops / t['torch'] / 1e9:.0f} | "
                  f"{t['torch'] / t['dual']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    rc = rerun_with_thp(no_thp=False)
    raise SystemExit(main(sys.argv[1:]) if rc is None else rc)
