"""Fused top-k against the plain gather: ``python bench/bench_vocab_topk.py [K,B ...] [--k 50] [--rounds 41]``.

Qwen3-0.6B's head (V = 151,936, H = 1,024, bf16 weights, random); per (K, B) the plain ``gather_lm_head`` and
``gather_lm_head_topk`` timed in turn within each round, each call on the next of V / K disjoint id sets (rows
cold), medians; prints the ratio (the issue's target: the fused top-k no slower than the gather alone). Run it with
``PYTHONPATH`` pointing at another build, in alternating processes, for an A/B of the top-k's selection.
"""
import argparse
import itertools
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

from leankern.benchmarks.harness import cpu_model


def main(argv) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="*", default=["4096,16", "4096,4", "16384,16"], help="K,B pairs")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=41)
    a = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    V, H = 151936, 1024
    w = (torch.randn(V, H, generator=g) * 0.02).to(torch.bfloat16)
    perm = torch.randperm(V, generator=g)
    out = []
    for case in a.cases:
        K, B = (int(v) for v in case.split(","))
        hidden = torch.randn(B, H, generator=g).to(torch.bfloat16)
        ids = itertools.cycle([perm[i * K:(i + 1) * K].sort().values.to(torch.int32) for i in range(V // K)])
        fns = {"gather": lambda: leankern.vocab.gather_lm_head(hidden, w, next(ids)),
               "topk": lambda: leankern.vocab.gather_lm_head_topk(hidden, w, next(ids), a.k)}
        times = {name: [] for name in fns}
        for _ in range(a.rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        gather, topk = (statistics.median(times[n]) * 1e6 for n in ("gather", "topk"))
        out.append(f"K={K} B={B}: gather {gather:.0f} us, top-{a.k} {topk:.0f} us, ratio {topk / gather:.3f}")
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {leankern.__file__}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
