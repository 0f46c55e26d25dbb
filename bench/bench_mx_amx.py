"""A/B of ``mx.linear``'s AMX kernel on CPUs with AMX (ISA avx512bf16):
``python bench/bench_mx_amx.py [FMTS] [MS] [SHAPES]`` (defaults: mxfp4, mxint4, nvfp4, mxfp8_e4m3, mxint8 and the
dual mxint8 x mxint8; M = 8,16,64,512; 4096x4096; SHAPES as ``NxK,NxK``).

The AMX prefill kernel (``csrc/mx/linear_packed_amx.h``, taken from M = 8: below it both sides run the few-rows
kernel) against the same ISA with AMX switched
off (``leankern._C.set_amx(False)``: the few-rows bf16 kernel below M = 32, the AVX-512 bf16 prefill kernel from
32, the int8 VNNI kernel for dual INT x INT), and torch bf16 ``F.linear`` (oneDNN, which uses AMX itself) on the
same cold weights. Timed in turn per round (3 rounds, median of the round medians). Weights prepacked and cold
(cycled through 256 MiB of copies, on 2 MiB pages: the script reruns itself with THP_MEM_ALLOC_ENABLE=1 unless it
is set), x bf16, 2 threads. x roof = AMX time / max(weight bytes / read bandwidth, FLOPs / torch bf16's rate at
M = 512 on the shape).
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
from leankern.benchmarks.harness import cpu_model, median_of_rounds, time_fn
from leankern.benchmarks.mx_linear import _bf16_throughput_512, avx512bf16_session, cold_weights, measure_read_bandwidth

CASES = [("mxfp4", None), ("mxint4", None), ("nvfp4", None), ("mxfp8_e4m3", None), ("mxint8", None),
         ("mxint8", "mxint8")]


def _median(fn, m):
    return statistics.median(time_fn(fn, warmup=2 if m >= 256 else 3, repeats=3 if m >= 256 else 11))


def main(argv) -> int:
    ext = leankern._C
    if not ext or not ext.amx_supported():
        print("needs the C++ extension on a CPU with AMX (and an OS that grants it)")
        return 0
    cases = CASES if not argv else [(f, None) for f in argv[0].split(",")]
    ms = [int(v) for v in argv[1].split(",")] if len(argv) > 1 else [8, 16, 64, 512]
    shapes = [tuple(int(d) for d in s.split("x")) for s in argv[2].split(",")] if len(argv) > 2 else [(4096, 4096)]
    with avx512bf16_session(True):
        bw = measure_read_bandwidth()
        rate = {s: _bf16_throughput_512(*s) for s in shapes}
        print(f"{cpu_model()}, ISA avx512bf16 with AMX on / off, torch {torch.__version__}, 2 threads; torch.sum read "
              f"{bw:.1f} GB/s; torch bf16 F.linear at M = 512: " +
              ", ".join(f"{n}x{k} {r / 1e9:.0f} GFLOP/s" for (n, k), r in rate.items()) +
              f"; THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}")
        print("| weight | act | M | N x K | AMX ms | GFLOP/s | x roof | AMX off ms | off / AMX | torch bf16 ms | "
              "torch / AMX |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for n, k in shapes:
            for fmt, act in cases:
                gen = torch.Generator().manual_seed(n + k)
                w = torch.randn(n, k, generator=gen)
                qt = leankern.mx.prepack(leankern.mx.quantize(w, fmt))
                nq, nw, wbytes = cold_weights(qt, w)
                for m in ms:
                    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)

                    def time_one(key):
                        if key == "torch":
                            return _median(lambda: F.linear(x, nw()), m)
                        ext.set_amx(key == "amx")
                        return _median(lambda: leankern.mx.linear(x, nq(), act_fmt=act), m)

                    t = median_of_rounds(("amx", "off", "torch"), time_one)
                    a, off, tb = t["amx"], t["off"], t["torch"]
                    flops = 2 * m * n * k
                    roof = max(wbytes / (bw * 1e9), flops / rate[(n, k)])
                    print(f"| {fmt} | {act or '-'} | {m} | {n} x {k} | {a * 1e3:.3f} | {flops / a / 1e9:.0f} | "
                          f"{a / roof:.2f} | {off * 1e3:.3f} | {off / a:.2f} | {tb * 1e3:.3f} | {tb / a:.2f} |",
                          flush=True)
                del nq, nw
    return 0


if __name__ == "__main__":
    rc = rerun_with_thp(no_thp=False)
    raise SystemExit(main(sys.argv[1:]) if rc is None else rc)
