"""The moe GEMV's row-stream prefetch, settings alternated in one process:
``python bench/bench_moe_prefetch.py {qwen3|mixtral|deepseek} T[,T...] [ROUNDS]`` (default 12 rounds).

``leankern.moe.experts`` on one layer of the shape (bf16 weights and hidden states, uniform routings of
``leankern.benchmarks.moe``, 8 routings cycled so the experts come from DRAM), with the avx512bf16 GEMV's software
prefetch (experts with 1-4 tokens; ``leankern._C.moe_set_stream_prefetch``) at each setting in turn within every
round (4 calls each, their median), then the median over rounds and its ratio to the first setting. Alternating
within one process is what makes a few-percent difference visible on a shared host whose bandwidth moves between runs.
Needs the C++ extension on an AVX512-BF16 CPU (elsewhere the hook changes nothing).
"""
import os
import sys

import torch

try:
    import leankern
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import leankern

from leankern.benchmarks.harness import cpu_model
from leankern.benchmarks.moe import alternate_settings, quick_layer

# (elements ahead, into L2): the default before 2026-12-06 first, then the default after it, then the others tried
SETTINGS = [(512, False), (2048, True), (4096, True), (2048, False), (1024, True)]


def main(argv) -> int:
    layer = quick_layer(argv, __doc__)
    if layer is None:
        return 2
    s, Ts, rest = layer[0], layer[4], layer[5]
    rounds = int(rest[0]) if rest else 12
    ext = leankern._C
    print(f"{cpu_model()}, ISA {ext.cpu_isa()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{rounds} rounds; each setting: bytes ahead / level, median ms, ratio to the first")
    try:
        for T in Ts:
            ts = alternate_settings(layer, T, SETTINGS, lambda c: ext.moe_set_stream_prefetch(*c), rounds)
            base = ts[SETTINGS[0]]
            print(s.name, f"T={T}", " | ".join(
                f"{c[0] * 2} B/{'L2' if c[1] else 'L1'} {v * 1e3:.2f} ms ({v / base:.3f})" for c, v in ts.items()),
                flush=True)
    finally:
        ext.moe_set_stream_prefetch(*SETTINGS[1])  # the default again
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
