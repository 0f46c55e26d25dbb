"""``sefp.linear`` with a few to 64 bf16 x rows: the decode-once tile against the rule before it, and torch's bf16 GEMM.

``python bench/bench_sefp_rows.py [REPEATS] [planes|packed]`` (default 7, both). Weights 4096 x 4096 and 4096 x 14336
quantized once at m_max = 8 (block 32), read at m = 8, 4, 2 from the planes (``sefp_linear``) and at m = 7, 4, 2 from
the single-width packed copies (``sefp_packed_linear``), cold (each call takes the next of copies filling
harness.COLD_BYTES). Two settings of the tuning hooks, timed in turn with torch bf16 ``F.linear`` within every repeat
(medians):

* ``new`` (the default): from ``sefp_set_decoded_rows`` = 8 x rows (16 for the packed copies) the GEMVs decode 4
  weight rows once to bf16 and run 4 x 4 register tiles over every x row; ``sefp_set_panel_rows`` = 80 (packed: 40): bf16 panels + torch's GEMM from
  80 (40) rows.
* ``old`` (the rules before 2026-12-06): the weights decoded again for every 4 (planes) or 8 (packed) x rows
  (decoded rows 2^30), the panels from 20 rows (planes) or 17 (packed).

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
from leankern.sefp import SEFPPacked, SEFPTensor

SETTINGS = {("planes", "new"): (8, 80), ("planes", "old"): (1 << 30, 20),  # (decoded rows, panel rows)
            ("packed", "new"): (16, 40), ("packed", "old"): (1 << 30, 17)}


def apply(kind, name):
    decoded, panels = SETTINGS[(kind, name)]
    leankern._C.sefp_set_decoded_rows(decoded, packed=kind == "packed")
    leankern._C.sefp_set_panel_rows(panels, packed=kind == "packed")


def main(argv) -> int:
    repeats = int(argv[0]) if argv else 7
    kinds = argv[1:] or ["planes", "packed"]
    ext = leankern._C
    defaults = (ext.sefp_set_decoded_rows(8), ext.sefp_set_decoded_rows(16, packed=True),
                ext.sefp_set_panel_rows(80), ext.sefp_set_panel_rows(40, packed=True))
    big = read_buffer()
    print(f"{cpu_model()} | ISA {cpu_isa()} | torch {torch.__version__}, {torch.get_num_threads()} threads | "
          f"read bandwidth {read_gbps(big):.1f} GB/s at the start | repeats {repeats}")
    print("| weights | W [N, K] | M | m | new ms | old ms | old / new | torch bf16 ms | x torch (new) | x torch (old) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        for N, K in ((4096, 4096), (4096, 14336)):
            g = torch.Generator().manual_seed(N + K)
            w = (torch.randn(N, K, generator=g) * 0.02).to(torch.bfloat16)
            wq = sefp.quantize(w, m_max=8)
            nw = cycle(cold_copies(lambda: w.clone(), w.numel() * 2))
            for kind in kinds:
                if kind == "planes":
                    nq = cycle(cold_copies(lambda: SEFPTensor(wq.planes.clone(), wq.exponents.clone(), wq.shape,
                                                              wq.dtype, wq.block_size), wq.nbytes(2)))
                    widths = {m: (lambda m=m: (nq(), m)) for m in (8, 4, 2)}
                else:
                    copies = {}
                    for m in (7, 4, 2):
                        p = wq.packed(m)
                        copies[m] = cycle(cold_copies(lambda p=p: SEFPPacked(p.codes.clone(), p.exponents.clone(), p.m,
                                                                             p.shape, p.dtype, p.block_size),
                                                      p.nbytes()))
                    widths = {m: (lambda m=m: (copies[m](), None)) for m in (7, 4, 2)}
                for M in (4, 8, 12, 16, 24, 32, 48, 64):
                    x = torch.randn(M, K, generator=g).to(torch.bfloat16)
                    for m, take in widths.items():
                        def ours(name, take=take, x=x, kind=kind):
                            apply(kind, name)
                            wt, mm = take()
                            return sefp.linear(x, wt, mm)

                        new, old, bf = median_us_cold_interleaved(
                            [lambda: ours("new"), lambda: ours("old"), lambda: F.linear(x, nw())], repeats, no_flush)
                        print(f"| {kind} | {N} x {K} | {M} | {m} | {new / 1e3:.2f} | {old / 1e3:.2f} | "
                              f"{old / new:.2f} | {bf / 1e3:.2f} | {bf / new:.2f} | {bf / old:.2f} |", flush=True)
                widths = nq = copies = None  # free the copies before the next kind
            del nw
    finally:
        ext.sefp_set_decoded_rows(defaults[0])
        ext.sefp_set_decoded_rows(defaults[1], packed=True)
        ext.sefp_set_panel_rows(defaults[2])
        ext.sefp_set_panel_rows(defaults[3], packed=True)
    print(f"read bandwidth at the end: {read_gbps(big):.1f} GB/s")
    return 0


if __name__ == "__main__":
    rc = rerun_with_thp(no_thp=False)
    raise SystemExit(main(sys.argv[1:]) if rc is None else rc)
