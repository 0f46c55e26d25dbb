"""The mx_linear bench's ``--full`` plan on one ISA path: ``python bench/bench_mx_linear_isa.py [ISA] [CSV]``
(default: the first of amx / avx512bf16 / avx512 / avx2 the CPU has).

Every format (ten), M = 1, 4, 16, 64, 512, the shapes (N, K) = (4096, 4096), (14336, 4096), (4096, 14336), the
row-major layout at M = 1 and the dual MXINT8 rows, with the same columns, cold weights and output cache (512 MB)
as ``python -m leankern bench --family mx_linear --full``, which runs that plan on every ISA path (about four times
as long). Why: the issue's closing table is every format, every M and every shape per ISA; one path is ~5 minutes
on two cores. Reruns itself with THP_MEM_ALLOC_ENABLE=1 unless it is set (as the bench does).
"""
import os
import sys

import torch

try:
    import leankern
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import leankern

from leankern.benchmarks import mx_linear, rerun_with_thp
from leankern.benchmarks.harness import cpu_model, format_table, write_csv


def main(argv) -> int:
    ext = leankern.extension()
    if ext is None:
        print("needs the C++ extension")
        return 0
    isas = mx_linear._isas(full=True)
    isa = argv[0] if argv else isas[0]
    if isa not in isas:
        print(f"ISA: expected one of {isas} on this CPU, got {isa!r}")
        return 2
    torch.set_num_threads(2)
    bw_rd = mx_linear.measure_read_bandwidth()
    plan = mx_linear._plan(quick=False, full=True)
    bf16_512 = {(n, k): mx_linear._bf16_throughput_512(n, k) for (n, k) in sorted({(r[3], r[4]) for r in plan})}
    print(f"{cpu_model()} | ISA {isa} | torch {torch.__version__}, 2 threads | read bandwidth (torch.sum over "
          f"256 MiB): {bw_rd:.1f} GB/s | THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}")
    print("torch bf16 F.linear at M = 512: " + ", ".join(f"{n}x{k}: {v / 1e9:.1f} GFLOP/s" for (n, k), v in
                                                          bf16_512.items()))
    rows = []
    with leankern.output_cache.enabled(512), mx_linear._on_isa(ext, isa):
        for i, (fmt, act, m, n, k, layout) in enumerate(plan):
            rows.append(mx_linear._row(fmt, act, m, n, k, layout, bw_rd, bf16_512, 11, isa))
            print(f"[{i + 1}/{len(plan)}]", file=sys.stderr, flush=True)
    print(format_table(rows, mx_linear.COLUMNS))
    print("x bf16 / x dequant = their time / ours; x roof = ours / roofline; weights cold (cycled through 256 MiB of "
          "copies); GB/s = (codes + scales + x + y bytes) / time; %rd = GB/s / read bandwidth")
    if len(argv) > 1:
        write_csv(argv[1], rows, {"family": "mx_linear", "isa": isa, "read_bw_gbps": bw_rd})
        print(f"wrote {argv[1]}")
    return 0


if __name__ == "__main__":
    rc = rerun_with_thp(no_thp=False)
    raise SystemExit(main(sys.argv[1:]) if rc is None else rc)
