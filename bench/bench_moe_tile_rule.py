"""The moe GEMV's stream-or-tile rule, settings alternated in one process:
``python bench/bench_moe_tile_rule.py {qwen3|mixtral|deepseek} T[,T...] [SKIP] [ROUNDS]`` (defaults 0.0, 8).

``leankern.moe.experts`` on one layer of the shape (bf16 weights and hidden states, uniform routings at SKIP of
``leankern.benchmarks.moe``, 8 routings cycled so the experts come from DRAM), with
``leankern._C.moe_set_tile_min_elems`` at 2^40 (1-4 tokens always as the row stream: the rule before 2026-12-06) and
at 8192 (the default: the 4-row tile once n x C reaches 8192 elements) in turn within every round
(``leankern.benchmarks.moe.alternate_settings``). ``LEANKERN_CPU_ISA=avx512`` or ``avx2`` times the fp32 loops of
CPUs without AVX512-BF16.
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

SETTINGS = [1 << 40, 8192]  # always the stream for 1-4 tokens (the rule before), the default


def main(argv) -> int:
    layer = quick_layer(argv, __doc__)
    if layer is None:
        return 2
    s, Ts, rest = layer[0], layer[4], layer[5]
    skip = float(rest[0]) if rest else 0.0
    rounds = int(rest[1]) if len(rest) > 1 else 8
    ext = leankern._C
    print(f"{cpu_model()}, ISA {ext.cpu_isa()}, torch {torch.__version__}, {torch.get_num_threads()} threads; skip "
          f"{skip}, {rounds} rounds; median ms per setting of moe_set_tile_min_elems, ratio to the stream")
    try:
        for T in Ts:
            ts = alternate_settings(layer, T, SETTINGS, ext.moe_set_tile_min_elems, rounds, skip)
            base = ts[SETTINGS[0]]
            print(s.name, f"T={T}", f"stream {base * 1e3:.2f} ms", f"| tile from 8192 {ts[8192] * 1e3:.2f} ms "
                  f"({ts[8192] / base:.3f})", flush=True)
    finally:
        ext.moe_set_tile_min_elems(8192)  # the default again
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
