"""A/B of the few-rows bf16 ``mx.linear`` kernel's decoders (ISA avx512bf16):
``python bench/bench_mx_vbmi_decoders.py [FMTS] [MS]`` (defaults: the four 4-bit formats and the 8 / 6-bit
ones with a VBMI decoder, M = 1,4,16).

The VBMI decoders (64 code bytes at a time: 4-bit ``vpermb`` + ``vpermw``; 8 / 6-bit ``vpermb`` +
two ``vpermi2b`` byte tables) against the ones before them (16 or 32 code bytes per 32 weights:
``vpmovzxbd`` + ``vpermw``; the fp16-pattern conversion), switched per call with the test hook
``leankern._C.mx_set_vbmi_decoder`` and timed in turn (3 rounds x 15 calls each, median of the round
medians). Weights prepacked and cold (cycled through 256 MiB of copies, on 2 MiB pages as in
``leankern bench``: the script reruns itself with THP_MEM_ALLOC_ENABLE=1 unless it is set), x bf16,
2 threads. %rd = the weight bytes (codes + scales) / time as a fraction of ``torch.sum``'s read
bandwidth in the same run. The fp32-FMA form of the kernel (on by default on CPUs with AMX) is switched off
here: it replaces the vdpbf16ps form for 4-bit and INT6 weights (``python bench/bench_mx_few_rows.py``).
"""
import os
import sys

import torch

try:
    import leankern
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import leankern

from leankern.benchmarks import rerun_with_thp
from leankern.benchmarks.harness import median_call_s, median_of_rounds
from leankern.benchmarks.mx_linear import cold_weights, measure_read_bandwidth


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv) -> int:
    if not leankern._C or "avx512vbmi" not in leankern._C.cpu_features() or \
            "avx512bf16" not in leankern._C.supported_isas():
        print("needs the C++ extension on a CPU with AVX512-BF16 and AVX512-VBMI")
        return 0
    fmts = argv[0].split(",") if argv else ["mxfp4", "mxint4", "nvfp4", "nvint4", "mxfp8_e4m3", "mxfp8_e5m2",
                                            "mxfp6_e2m3", "mxint6"]
    ms = [int(v) for v in argv[1].split(",")] if len(argv) > 1 else [1, 4, 16]
    torch.set_num_threads(2)
    hook = leankern._C.mx_set_vbmi_decoder
    was_fma = leankern._C.mx_set_few_rows_fma(False)
    bw = measure_read_bandwidth()
    print(f"{_cpu_model()}, ISA {leankern._C.cpu_isa()}, torch {torch.__version__}, 2 threads; "
          f"torch.sum read {bw:.1f} GB/s; THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}")
    print("| weight | M | N x K | VBMI decoder ms | %rd | other decoder ms | %rd | other / VBMI |")
    print("|---|---|---|---|---|---|---|---|")
    for fmt in fmts:
        for n, k in ((4096, 4096), (14336, 4096), (4096, 14336)):
            gen = torch.Generator().manual_seed(n + k)
            qt = leankern.mx.prepack(leankern.mx.quantize(torch.randn(n, k, generator=gen), fmt))
            nxt, _, wbytes = cold_weights(qt)
            for m in ms:
                x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
                def time_one(on):
                    hook(on)
                    return median_call_s(lambda: leankern.mx.linear(x, nxt()))

                try:
                    t = median_of_rounds((True, False), time_one)
                finally:
                    hook(True)
                a, b = t[True], t[False]
                print(f"| {fmt} | {m} | {n} x {k} | {a * 1e3:.3f} | {wbytes / a / 1e9 / bw:.0%} | {b * 1e3:.3f} | "
                      f"{wbytes / b / 1e9 / bw:.0%} | {b / a:.2f} |", flush=True)
            del nxt
    leankern._C.mx_set_few_rows_fma(was_fma)
    return 0


if __name__ == "__main__":
    rc = rerun_with_thp(no_thp=False)
    raise SystemExit(main(sys.argv[1:]) if rc is None else rc)
