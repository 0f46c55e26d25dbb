"""``sefp.linear`` with a few to 64 bf16 x rows: the decode-once tile against the rule before it, and torch's bf16 GEMM.

``python bench/bench_sefp_rows.py [REPEATS]`` (default 7). Weights 4096 x 4096 and 4096 x 14336 quantized once at
m_max = 8 (block 32), read at m = 8, 4, 2, cold (each call takes the next of copies filling harness.COLD_BYTES).
Two settings of the tuning hooks, timed in turn with torch bf16 ``F.linear`` within every repeat (medians):

* ``new`` (the default): from ``sefp_set_decoded_rows`` = 8 x rows the GEMV decodes 4 weight rows once to bf16 and
  runs 4 x 4 register tiles over every x row; ``sefp_set_panel_rows`` = 80: bf16 panels + torch's GEMM from 80 rows.
* ``old`` (the rule before 2026-12-06): the planes decoded again for every 4 x rows (decoded rows 2^30), the panels
  from 20 rows.

Only the avx512bf16 path on a CPU with GFNI and AVX512-VBMI and without AMX runs these kernels; elsewhere both
settings time the same code.
"""
import os
import sys

import torch
import torch.nn.functional as F

try:
    import leankern  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import leankern
from leankern import sefp
from leankern.benchmarks import rerun_with_thp
from leankern.benchmarks.harness import (cold_copies, cpu_isa, cpu_model, cycle, median_us_cold_interleaved, no_flush,
                                         read_buffer, read_gbps)
from leankern.sefp import SEFPTensor

SETTINGS = {"new": (8, 80), "old": (1 << 30, 20)}  # (decoded rows, panel rows)


def apply(name):
    decoded, panels = SETTINGS[name]
    leankern._C.sefp_set_decoded_rows(decoded)
    leankern._C.sefp_set_panel_rows(panels)


def main(argv) -> int:
    repeats = int(argv[0]) if argv else 7
    ext = leankern._C
    defaults = ext.sefp_set_decoded_rows(8), ext.sefp_set_panel_rows(80)
    big = read_buffer()
    print(f"{cpu_model()} | ISA {cpu_isa()} | torch {torch.__version__}, {torch.get_num_threads()} threads | "
          f"read bandwidth {read_gbps(big):.1f} GB/s at the start | repeats {repeats}")
    print("| W [N, K] | M | m | new ms | old ms | old / new | torch bf16 ms | x torch (new) | x torch (old) |")
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        for N, K in ((4096, 4096), (4096, 14336)):
            g = torch.Generator().manual_seed(N + K)
            w = (torch.randn(N, K, generator=g) * 0.02).to(torch.bfloat16)
            wq = sefp.quantize(w, m_max=8)
            nq = cycle(cold_copies(lambda: SEFPTensor(wq.planes.clone(), wq.exponents.clone(), wq.shape, wq.dtype,
                                                      wq.block_size), wq.nbytes(2)))
            nw = cycle(cold_copies(lambda: w.clone(), w.numel() * 2))
            for M in (4, 8, 12, 16, 24, 32, 48, 64):
                x = torch.randn(M, K, generator=g).to(torch.bfloat16)
                for m in (8, 4, 2):
                    def ours(name, m=m, x=x):
                        apply(name)
                        return sefp.linear(x, nq(), m)

                    new, old, bf = median_us_cold_interleaved(
                        [lambda: ours("new"), lambda: ours("old"), lambda: F.linear(x, nw())], repeats, no_flush)
                    print(f"| {N} x {K} | {M} | {m} | {new / 1e3:.2f} | {old / 1e3:.2f} | {old / new:.2f} | "
                          f"{bf / 1e3:.2f} | {bf / new:.2f} | {bf / old:.2f} |", flush=True)
            del nq, nw
    finally:
        ext.sefp_set_decoded_rows(defaults[0])
        ext.sefp_set_panel_rows(defaults[1])
    print(f"read bandwidth at the end: {read_gbps(big):.1f} GB/s")
    return 0


if __name__ == "__main__":
    rc = rerun_with_thp(no_thp=False)
    raise SystemExit(main(sys.argv[1:]) if rc is None else rc)
