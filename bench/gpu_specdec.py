"""GPU timing of the Triton specdec kernels: ``python bench/gpu_specdec.py [--iters 50] [--no-check] [--graph]``.

On a CUDA machine: times ``leankern.triton_kernels.specdec.verify_triton`` (the launcher, without the
op's value checks) for B x K = 64x8, 16x5, 1x5 drafts, V = 32000 and 151936, fp32 / bf16 logits,
greedy and rejection (no draft_probs, seeded uniforms), with ``torch.cuda.Event`` timing (median of
``--iters`` calls after warm-up; ``--graph`` replays a CUDA graph of the call instead, which removes
the launch overhead). Prints the time, GB/s of the floor (one read of the T + B rows), the fraction
of the measured copy bandwidth, and ``torch.argmax`` over the same rows for scale. Before timing,
each configuration with at most 96 rows is checked against the reference bit for bit (``--no-check``
skips it). Without a GPU it says so and exits 0.
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    import leankern  # noqa: F401
except ImportError:  # a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import torch

from gpu_timing import copy_bandwidth_gbs, cuda_time_ms  # bench/ is sys.path[0] for these scripts

CONFIGS = [(64, 8), (16, 5), (1, 5)]
VOCABS = [32000, 151936]
DTYPES = [torch.float32, torch.bfloat16]
MODES = ["greedy", "rejection"]
CHECK_MAX_ROWS = 96  # the reference is host loops: check the small configurations only


def _inputs(B, K, V, dtype, seed=0):
    """Logits ~ N(0, 3^2); drafts: the row's argmax 70% of the time (a realistic acceptance), else random."""
    from leankern.specdec import uniforms_from_seed

    g = torch.Generator(device="cuda").manual_seed(seed)
    T = B * K
    tgt = (torch.randn(T, V, generator=g, device="cuda") * 3).to(dtype)
    bonus = (torch.randn(B, V, generator=g, device="cuda") * 3).to(dtype)
    rand = torch.randint(0, V, (T,), generator=g, device="cuda", dtype=torch.int32)
    pick = torch.rand(T, generator=g, device="cuda") < 0.7
    drafts = torch.where(pick, tgt.float().argmax(-1).to(torch.int32), rand)
    cu = torch.arange(1, B + 1, device="cuda", dtype=torch.int32) * K
    u = uniforms_from_seed(1234, 0, T + B, device="cuda")
    return drafts, cu, tgt, bonus, u


def _op_args(inputs, mode, K):
    drafts, cu, tgt, bonus, u = inputs
    return (drafts, cu, tgt, bonus, None, u if mode == "rejection" else None, None, None, None, mode, K, 0, 0, -1,
            0.09, 0.3)


def _check(args):
    """Triton vs the reference on the same inputs, bit for bit."""
    import leankern.specdec.ops  # noqa: F401  (registers the ops)
    from leankern.specdec import ref
    from leankern.triton_kernels.specdec import verify_triton

    got = verify_triton(*args)
    rules = ref.Rules(args[9], args[11], args[12], args[13], args[14], args[15])
    want = ref.verify_ref(*args[:9], rules, args[10])
    return all(torch.equal(g.cpu(), w.cpu()) for g, w in zip(got, want))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--no-check", action="store_true", help="skip the bit-exact check against the reference")
    parser.add_argument("--graph", action="store_true", help="time CUDA-graph replays (no launch overhead)")
    opts = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_specdec: no CUDA GPU here; nothing to time (run it on a GPU machine).")
        return 0
    try:
        import triton  # noqa: F401
    except ImportError:
        print("gpu_specdec: triton is not installed; nothing to time.")
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("gpu_specdec: TRITON_INTERPRET=1 is set; unset it to time compiled kernels.")
        return 0
    from leankern.triton_kernels.specdec import verify_triton

    print(f"device: {torch.cuda.get_device_name()}  timing: median of {opts.iters}"
          f"{' CUDA-graph replays' if opts.graph else ' eager calls'}")
    peak = copy_bandwidth_gbs()
    print(f"measured copy bandwidth: {peak:.0f} GB/s (read + write)")
    head = (f"{'B x K':>7s} {'V':>7s} {'dtype':>9s} {'mode':>9s} {'rows':>5s} {'us':>9s} {'GB/s':>8s} {'of copy':>8s} "
            f"{'argmax us':>10s} {'check':>6s}")
    print(head)
    print("-" * len(head))
    failed = False
    for B, K in CONFIGS:
        for V in VOCABS:
            for dtype in DTYPES:
                inputs = _inputs(B, K, V, dtype)
                rows = B * K + B
                floor_bytes = rows * V * inputs[2].element_size()
                tgt, bonus = inputs[2], inputs[3]
                argmax_ms = cuda_time_ms(lambda: (tgt.argmax(-1), bonus.argmax(-1)), opts.iters, opts.graph)
                for mode in MODES:
                    args = _op_args(inputs, mode, K)
                    check = "-"
                    if not opts.no_check and rows <= CHECK_MAX_ROWS:
                        ok = _check(args)
                        failed |= not ok
                        check = "ok" if ok else "FAIL"
                    ms = cuda_time_ms(lambda: verify_triton(*args), opts.iters, opts.graph)
                    gbs = floor_bytes / ms / 1e6
                    print(f"{f'{B}x{K}':>7s} {V:7d} {str(dtype)[6:]:>9s} {mode:>9s} {rows:5d} {ms * 1e3:9.1f} "
                          f"{gbs:8.0f} {gbs / peak:8.0%} {argmax_ms * 1e3:10.1f} {check:>6s}", flush=True)
                del inputs, tgt, bonus
                torch.cuda.empty_cache()
    print("GB/s: one read of the T + B rows (the floor) per call; 'of copy': that over the copy's read + write rate.")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
