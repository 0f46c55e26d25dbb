"""A/B of dual INT x INT ``mx.linear`` below 5 rows of x: the int8 kernel's few-rows form (vpdpbusd; by default for
8-bit weights, and for 4-bit weights on CPUs with AMX; ``leankern._C.mx_set_int8_few_rows``) against what runs
without it (the few-rows bf16 / FMA kernel on x_hat):
``python bench/bench_mx_dual_few_rows.py [FMTS] [MS] [SHAPES] [amx|noamx]`` (defaults: mxint4, mxfp4, mxint8
weights; act mxint8; M = 1; 4096x4096,14336x4096,4096x14336; ISA avx512bf16 with AMX as the CPU has it).

With AMX on, AMX tiles take dual INT x INT from 2 rows (MXINT8, 4-bit MX), so the form runs at M = 1 only; "noamx"
turns AMX off (the path of CPUs without it, e.g. Zen 4, though on this CPU's half-rate vdpbf16ps) for M = 1..4.
Weights prepacked and cold (cycled through 256 MiB of copies, on 2 MiB pages: the script reruns itself with
THP_MEM_ALLOC_ENABLE=1 unless it is set), x bf16, 2 threads; each side timed in turn per round (3 rounds, median
of the round medians), with weight-only and torch bf16 ``F.linear`` on the same cold weights. %rd = (codes + scales
bytes) / time / the read bandwidth of torch.sum over 256 MiB in the same run.
"""
import os
import statistics
import sys

import torch
import torch.nn.functional as F

try:
    import leankern
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import leankern

from leankern.benchmarks import rerun_with_thp
from leankern.benchmarks.harness import ab_args, cpu_model, median_of_rounds, time_fn
from leankern.benchmarks.mx_linear import ab_cases, avx512bf16_ready, avx512bf16_session, measure_read_bandwidth

FORMATS = ["mxint4", "mxfp4", "mxint8"]
SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]


def _median(fn):
    return statistics.median(time_fn(fn, warmup=3, repeats=11))


def main(argv) -> int:
    if not avx512bf16_ready(" (and VNNI)"):
        return 0
    fmts, ms, shapes, rest = ab_args(argv, FORMATS, [1], SHAPES)
    amx = (rest[0] if rest else "amx") == "amx" and leankern._C.amx_supported()
    with avx512bf16_session(amx, mx_set_int8_few_rows=True) as ext:
        bw = measure_read_bandwidth()
        print(f"{cpu_model()}, ISA avx512bf16 (AMX {'on' if amx else 'off'}), torch {torch.__version__}, 2 threads; "
              f"torch.sum read {bw:.1f} GB/s (256 MiB); "
              f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; x bf16, act_fmt mxint8")
        print("| weight | M | N x K | int8 form ms | GB/s | %rd | before ms | %rd | before / int8 | weight-only ms | "
              "torch bf16 ms | torch / int8 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for fmt, m, n, k, x, nq, nw, wbytes in ab_cases(shapes, fmts, ms):

            def time_one(key):
                if key == "torch":
                    return _median(lambda: F.linear(x, nw()))
                if key == "wonly":
                    return _median(lambda: leankern.mx.linear(x, nq()))
                ext.mx_set_int8_few_rows(key == "int8")
                return _median(lambda: leankern.mx.linear(x, nq(), act_fmt="mxint8"))

            t = median_of_rounds(("int8", "before", "wonly", "torch"), time_one)
            i8, bf, wo, tb = t["int8"], t["before"], t["wonly"], t["torch"]
            gbs = wbytes / i8 / 1e9
            print(f"| {fmt} | {m} | {n} x {k} | {i8 * 1e3:.3f} | {gbs:.1f} | {gbs / bw:.0%} | {bf * 1e3:.3f} | "
                  f"{wbytes / bf / 1e9 / bw:.0%} | {bf / i8:.2f} | {wo * 1e3:.3f} | {tb * 1e3:.3f} | {tb / i8:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    rc = rerun_with_thp(no_thp=False)
    raise SystemExit(main(sys.argv[1:]) if rc is None else rc)
