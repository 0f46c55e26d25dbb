"""A/B of the few-rows ``mx.linear`` kernel's fp32-FMA form against its vdpbf16ps form (ISA avx512bf16, AMX off):
``python bench/bench_mx_few_rows.py [FMTS] [MS] [SHAPES] [DTYPE]`` (defaults: mxfp4, mxint4, nvfp4, mxint6, mxint8;
M = 1,2,4; 4096x4096; SHAPES as ``NxK,NxK``; x bf16, or fp32 / fp16, where the other side is the fp32 kernel).

The FMA form (``csrc/mx/linear_packed_fma_small.h``; ``leankern._C.mx_set_few_rows_fma``, on by default on CPUs
with AMX) against the vdpbf16ps form of the same kernel, and torch bf16 ``F.linear`` on the same cold weights.
Timed in turn per round (3 rounds, median of the round medians). Weights prepacked and cold (cycled through
256 MiB of copies, on 2 MiB pages: the script reruns itself with THP_MEM_ALLOC_ENABLE=1 unless it is set), x bf16,
2 threads. %rd = (codes + scales bytes) / time / the read bandwidth of torch.sum over 256 MiB in the same run;
"sum 8 MiB" is torch.sum's own fraction of it on a cold buffer of about a 4096 x 4096 4-bit weight's size.
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
from leankern.benchmarks.mx_linear import (_cold_copies, _cycle, ab_cases, avx512bf16_ready, avx512bf16_session,
                                           measure_read_bandwidth)

FORMATS = ["mxfp4", "mxint4", "nvfp4", "mxint6", "mxint8"]


def _median(fn):
    return statistics.median(time_fn(fn, warmup=3, repeats=11))


def main(argv) -> int:
    if not avx512bf16_ready():
        return 0
    fmts, ms, shapes, rest = ab_args(argv, FORMATS, [1, 2, 4], [(4096, 4096)])
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[rest[0] if rest else "bf16"]
    other = "vdpbf16ps" if dtype == torch.bfloat16 else "fp32 kernel"
    with avx512bf16_session(False, mx_set_few_rows_fma=True) as ext:
        bw = measure_read_bandwidth()
        small = _cold_copies(lambda: torch.ones(2**21), 2**23)
        ns = _cycle(small)
        sum8 = 2**23 / _median(lambda: ns().sum()) / 1e9
        print(f"{cpu_model()}, ISA avx512bf16 (AMX off), torch {torch.__version__}, 2 threads; torch.sum read "
              f"{bw:.1f} GB/s (256 MiB), {sum8:.1f} GB/s = {sum8 / bw:.0%} of it over cold 8 MiB buffers; "
              f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}; x {str(dtype)[6:]}")
        print(f"| weight | M | N x K | FMA ms | GB/s | %rd | {other} ms | %rd | {other} / FMA | torch bf16 ms | "
              "torch / FMA |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for fmt, m, n, k, x, nq, nw, wbytes in ab_cases(shapes, fmts, ms, dtype):
            xt = x.to(torch.bfloat16)  # torch's baseline: bf16 F.linear

            def time_one(key):
                if key == "torch":
                    return _median(lambda: F.linear(xt, nw()))
                ext.mx_set_few_rows_fma(key == "fma")
                return _median(lambda: leankern.mx.linear(x, nq()))

            t = median_of_rounds(("fma", "bf16", "torch"), time_one)
            fma, b16, tb = t["fma"], t["bf16"], t["torch"]
            gbs = wbytes / fma / 1e9
            print(f"| {fmt} | {m} | {n} x {k} | {fma * 1e3:.3f} | {gbs:.1f} | {gbs / bw:.0%} | {b16 * 1e3:.3f} | "
                  f"{wbytes / b16 / 1e9 / bw:.0%} | {b16 / fma:.2f} | {tb * 1e3:.3f} | {tb / fma:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    rc = rerun_with_thp(no_thp=False)
    raise SystemExit(main(sys.argv[1:]) if rc is None else rc)
