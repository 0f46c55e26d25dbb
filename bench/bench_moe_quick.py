"""Quick MoE expert-stage timing for A/B runs: ``python bench/bench_moe_quick.py {qwen3|mixtral|deepseek} T[,T...] [skip]``.

One line per call: the median time of ``leankern.moe.experts`` on one layer of the shape (bf16 weights and hidden
states, the shapes and uniform routings of ``leankern.benchmarks.moe``, 8 routings cycled so the experts mostly come
from DRAM; 40 calls at T <= 16, 10 above). No baselines and no table: run it alternately against two builds
(``PYTHONPATH=/path/to/other/python``, which prints its leankern path) and compare the lines of one pair.
"""
import os
import statistics
import sys
import time

import torch

try:
    import leankern
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import leankern

from leankern import moe
from leankern.benchmarks.moe import _routing, quick_layer


def main(argv) -> int:
    layer = quick_layer(argv, __doc__)
    if layer is None:
        return 2
    s, w13, w2, kw, Ts, rest = layer
    skip = float(rest[0]) if rest else 0.0
    out = []
    for T in Ts:
        g = torch.Generator().manual_seed(T)
        x = torch.randn(T, s.H, generator=g).bfloat16()
        calls = [_routing(T, s, "uniform", skip, g, shift=i) for i in range(8)]
        for ids, w in calls[:2]:  # warm-up
            moe.experts(x, w13, w2, ids, w, **kw)
        ts = []
        for r in range(40 if T <= 16 else 10):
            ids, w = calls[r % 8]
            t0 = time.perf_counter()
            moe.experts(x, w13, w2, ids, w, **kw)
            ts.append(time.perf_counter() - t0)
        out.append(f"T={T}: {statistics.median(ts) * 1e3:.2f} ms")
    print(os.path.dirname(os.path.dirname(leankern.__file__)), s.name, f"skip {skip}", " | ".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
