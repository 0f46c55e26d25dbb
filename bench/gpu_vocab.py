"""GPU timing of the Triton vocab kernels: ``python bench/gpu_vocab.py [--iters 30] [--graph] [--quick] [--csv F]``.

On a CUDA machine, bf16 heads of Qwen3-0.6B (V = 151,936, H = 1,024) and Llama-3.2-1B (V = 128,256,
H = 2,048), K = 4k / 16k / 32k sorted unique ids, B = 1 / 4 / 16 rows:

* ``gather_lm_head`` (the Triton launcher, fp32 logits) against what a user would pick instead:
  ``F.linear(hidden, weight)`` over the full vocabulary, and ``F.linear(hidden, weight[ids])`` (a
  gathered copy, then a GEMM); plus the fused argmax (``gather_lm_head_topk``, k = 1);
* ``logit_stats`` over full-vocabulary logits (fp32 and bf16, B = 1 / 4 / 16 / 64) against the torch
  reductions computing the same five statistics.

Median of ``--iters`` CUDA-event timings after warm-up (``--graph``: replays of a CUDA graph of the
call, no launch overhead). GB/s counts the bytes the op must move (the K weight rows + ids + hidden +
logits; the logit rows for logit_stats); "of copy" is that over the measured device copy rate.
Before timing, every configuration is checked against tests/tolerances.py's derived bounds
(gather on the first 512 ids, top-1 against the bounds, logit_stats in full); ``--no-check`` skips it.
Writes a CSV to ``--csv`` (default ``$OUT/bench_vocab_cuda.csv`` when ``$OUT`` is set). Without a GPU
it says so and exits 0.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import leankern  # noqa: F401
except ImportError:  # a source checkout without an install
    sys.path.insert(0, os.path.join(_HERE, "..", "python"))

import torch

from gpu_timing import copy_bandwidth_gbs, cuda_time_ms  # bench/ is sys.path[0] for these scripts
import torch.nn.functional as F

HEADS = [("qwen3-0.6b", 151936, 1024), ("llama3.2-1b", 128256, 2048)]
KS = [4096, 16384, 32768]
BS = [1, 4, 16]
STATS_BS = [1, 4, 16, 64]
CHECK_IDS = 512  # the fp64 bound of tests/tolerances.py is [B, K, H] doubles: check on a prefix of the ids


def _tolerances():
    sys.path.insert(0, os.path.join(_HERE, "..", "tests"))
    import tolerances

    return tolerances


def _check_gather(hidden, weight, ids):
    """Gather and top-1 on the first CHECK_IDS ids within the derived bounds; True when both hold."""
    from leankern.triton_kernels.vocab import gather_lm_head_topk_triton, gather_lm_head_triton

    tol = _tolerances()
    sub = ids[:CHECK_IDS]
    args = (hidden, weight, sub, None, None, 1.0)
    try:
        tol.assert_vocab_logits(gather_lm_head_triton(*args, None, False), args)
        vals, gids = gather_lm_head_topk_triton(*args, 1)
        tol.assert_vocab_topk(vals, gids, args, 1)
    except AssertionError as e:
        print(f"  check failed: {e}")
        return False
    return True


def _check_stats(logits):
    from leankern.triton_kernels.vocab import logit_stats_triton

    try:
        _tolerances().assert_logit_stats(logit_stats_triton(logits, 1.0), logits, 1.0)
    except AssertionError as e:
        print(f"  check failed: {e}")
        return False
    return True


def _torch_stats(z):
    """The five statistics with torch reductions (what a user would write)."""
    z = z.float()
    mx, am = z.max(-1)
    lse = torch.logsumexp(z, -1)
    p = torch.softmax(z, -1)
    ent = lse - (p * z).sum(-1)
    cert = lse - z.mean(-1) - math.log(z.shape[-1])
    return mx, am, lse, ent, cert


def _bench_gather(opts, peak, rows):
    from leankern.triton_kernels.vocab import gather_lm_head_topk_triton, gather_lm_head_triton

    head = (f"{'head':>12s} {'K':>6s} {'B':>3s} {'ours us':>8s} {'GB/s':>6s} {'of copy':>7s} {'full us':>8s} "
            f"{'x full':>6s} {'gath+lin us':>11s} {'x g+l':>6s} {'argmax us':>9s} {'check':>5s}")
    print(head)
    print("-" * len(head))
    failed = False
    g = torch.Generator(device="cuda").manual_seed(0)
    for name, V, H in HEADS:
        weight = (torch.randn(V, H, generator=g, device="cuda") * 0.02).to(torch.bfloat16)
        for K in KS[:1] if opts.quick else KS:
            ids = torch.randperm(V, generator=g, device="cuda")[:K].sort().values.to(torch.int32)
            for B in BS[:2] if opts.quick else BS:
                hidden = torch.randn(B, H, generator=g, device="cuda").to(torch.bfloat16)
                check = "-"
                if not opts.no_check:
                    ok = _check_gather(hidden, weight, ids)
                    failed |= not ok
                    check = "ok" if ok else "FAIL"
                ids64 = ids.long()
                ours = cuda_time_ms(lambda: gather_lm_head_triton(hidden, weight, ids, None, None, 1.0, None, False),
                             opts.iters, opts.graph)
                full = cuda_time_ms(lambda: F.linear(hidden, weight), opts.iters, opts.graph)
                gl = cuda_time_ms(lambda: F.linear(hidden, weight[ids64]), opts.iters, opts.graph)
                top1 = cuda_time_ms(lambda: gather_lm_head_topk_triton(hidden, weight, ids, None, None, 1.0, 1), opts.iters,
                             opts.graph)
                nbytes = K * H * 2 + K * 4 + B * H * 2 + B * K * 4
                gbs = nbytes / ours / 1e6
                print(f"{name:>12s} {K:6d} {B:3d} {ours * 1e3:8.1f} {gbs:6.0f} {gbs / peak:7.0%} {full * 1e3:8.1f} "
                      f"{full / ours:6.2f} {gl * 1e3:11.1f} {gl / ours:6.2f} {top1 * 1e3:9.1f} {check:>5s}", flush=True)
                rows.append(dict(op="gather_lm_head", head=name, V=V, H=H, K=K, B=B, dtype="bfloat16",
                                 ours_us=ours * 1e3, gbs=gbs, of_copy=gbs / peak, full_linear_us=full * 1e3,
                                 gather_linear_us=gl * 1e3, argmax_us=top1 * 1e3, torch_us="", check=check))
        del weight
        torch.cuda.empty_cache()
    return failed


def _bench_stats(opts, peak, rows):
    from leankern.triton_kernels.vocab import logit_stats_triton

    head = f"{'V':>7s} {'dtype':>9s} {'B':>3s} {'ours us':>8s} {'GB/s':>6s} {'of copy':>7s} {'torch us':>8s} " \
           f"{'x torch':>7s} {'check':>5s}"
    print(head)
    print("-" * len(head))
    failed = False
    g = torch.Generator(device="cuda").manual_seed(1)
    V = HEADS[0][1]
    for dtype in (torch.float32, torch.bfloat16):
        for B in STATS_BS[:2] if opts.quick else STATS_BS:
            z = (torch.randn(B, V, generator=g, device="cuda") * 3).to(dtype)
            check = "-"
            if not opts.no_check:
                ok = _check_stats(z)
                failed |= not ok
                check = "ok" if ok else "FAIL"
            ours = cuda_time_ms(lambda: logit_stats_triton(z, 1.0), opts.iters, opts.graph)
            ref = cuda_time_ms(lambda: _torch_stats(z), opts.iters, opts.graph)
            gbs = z.numel() * z.element_size() / ours / 1e6
            print(f"{V:7d} {str(dtype)[6:]:>9s} {B:3d} {ours * 1e3:8.1f} {gbs:6.0f} {gbs / peak:7.0%} {ref * 1e3:8.1f} "
                  f"{ref / ours:7.2f} {check:>5s}", flush=True)
            rows.append(dict(op="logit_stats", head="", V=V, H="", K="", B=B, dtype=str(dtype)[6:], ours_us=ours * 1e3,
                             gbs=gbs, of_copy=gbs / peak, full_linear_us="", gather_linear_us="", argmax_us="",
                             torch_us=ref * 1e3, check=check))
    return failed


def _write_csv(path, rows):
    if not path or not rows:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--graph", action="store_true", help="time CUDA-graph replays (no launch overhead)")
    parser.add_argument("--quick", action="store_true", help="K = 4k, B = 1 / 4 only; logit_stats B = 1 / 4")
    parser.add_argument("--no-check", action="store_true", help="skip the checks against the derived bounds")
    default_csv = os.path.join(os.environ["OUT"], "bench_vocab_cuda.csv") if os.environ.get("OUT") else None
    parser.add_argument("--csv", default=default_csv, help="CSV output path (default: $OUT/bench_vocab_cuda.csv)")
    opts = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_vocab: no CUDA GPU here; nothing to time (run it on a GPU machine).")
        return 0
    try:
        import triton  # noqa: F401
    except ImportError:
        print("gpu_vocab: triton is not installed; nothing to time.")
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("gpu_vocab: TRITON_INTERPRET=1 is set; unset it to time compiled kernels.")
        return 0
    print(f"device: {torch.cuda.get_device_name()}  timing: median of {opts.iters}"
          f"{' CUDA-graph replays' if opts.graph else ' eager calls'}")
    peak = copy_bandwidth_gbs()
    print(f"measured copy bandwidth: {peak:.0f} GB/s (read + write)")
    rows: list[dict] = []
    failed = _bench_gather(opts, peak, rows)
    print("ours: Triton gather_lm_head (fp32 logits, rows read in place); full: F.linear over all V rows (bf16 out);"
          " gath+lin: F.linear(hidden, weight[ids]); x: their time over ours; argmax: fused top-1.")
    failed |= _bench_stats(opts, peak, rows)
    print("torch: max/argmax + logsumexp + softmax entropy + mean (five reductions); GB/s: one read of the rows.")
    _write_csv(opts.csv, rows)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
