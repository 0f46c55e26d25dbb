"""Ratio of prepacked ``mx.linear`` to torch's bf16 ``F.linear`` at M = 1, both on cold weights, measured in one
process in interleaved rounds (a noisy host moves both sides of a round together, unlike one row of the default
section): ``python bench/bench_mx_ratio_cold.py [FMTS] [N]`` (defaults: mxfp8_e4m3,mxint8; N = K = 4096).

Each round: the median of 15 calls of ours (cycling through 256 MiB of weight copies, so every call reads from
memory), then the median of 15 calls of ``F.linear`` on bf16 copies the same way; prints the median over 5 rounds of
each time and of their ratio (torch / ours), and the rounds' ratios. bf16 x.
"""
import copy
import statistics
import sys

import torch
import torch.nn.functional as F

from leankern import mx
from leankern.benchmarks.harness import median_call_s

ROUNDS, CALLS, POOL_BYTES = 5, 15, 256 << 20


def _cycler(items):
    i = 0

    def next_item():
        nonlocal i
        i += 1
        return items[i % len(items)]

    return next_item


def main():
    fmts = (sys.argv[1] if len(sys.argv) > 1 else "mxfp8_e4m3,mxint8").split(",")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
    torch.manual_seed(0)
    w = torch.randn(n, n)
    x = torch.randn(1, n).to(torch.bfloat16)
    wb = w.to(torch.bfloat16)
    bf16_copies = _cycler([wb.clone() for _ in range(max(4, POOL_BYTES // wb.nbytes))])
    print(f"M = 1, {n} x {n}, bf16 x, {torch.get_num_threads()} threads; ratio = torch bf16 time / ours", flush=True)
    for fmt in fmts:
        wq = mx.prepack(mx.quantize(w, fmt))
        ours_copies = _cycler([copy.deepcopy(wq) for _ in range(max(4, POOL_BYTES // wq.nbytes))])
        ours, theirs, ratios = [], [], []
        for _ in range(ROUNDS):
            a = median_call_s(lambda: mx.linear(x, ours_copies()), CALLS, warmup=1)
            b = median_call_s(lambda: F.linear(x, bf16_copies()), CALLS, warmup=1)
            ours.append(a), theirs.append(b), ratios.append(b / a)
        print(f"{fmt} ours {statistics.median(ours) * 1e3:.3f} ms  bf16 {statistics.median(theirs) * 1e3:.3f} ms  "
              f"ratio median {statistics.median(ratios):.2f} (rounds {' '.join(f'{r:.2f}' for r in ratios)})",
              flush=True)


if __name__ == "__main__":
    main()
