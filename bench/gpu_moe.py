"""GPU timing of the Triton MoE experts (run by bench/gpu_check.sh, stage ``moe``).

Qwen3-30B-A3B's layer (H 2048, I 768, E 128, k 8, bf16), T = 1 / 16 / 256 / 4096, skip 0 / 0.5 / 0.88 (uniform):
ours (``leankern.moe.experts``, Triton) against the Hugging Face experts loop of the installed transformers on the
same weights and ids (skipped slots as id E, which its loop skips). Checked against the HF output first; median of
CUDA-event timings (CUDA-graph replay with --graph for ours). GB/s = weight bytes of the distinct experts touched.

    python bench/gpu_moe.py [--graph] [--csv PATH]
"""
import argparse
import csv
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_timing import copy_bandwidth_gbs, cuda_time_ms  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--graph", action="store_true")
    p.add_argument("--csv")
    args = p.parse_args()
    import leankern
    from leankern import moe
    from leankern.benchmarks.moe import SHAPES, _hf_block, _routing, hf_routing, hf_skips_id_e

    assert torch.cuda.is_available(), "needs a CUDA GPU"
    bw = copy_bandwidth_gbs()
    print(f"GPU {torch.cuda.get_device_name()} | copy bandwidth (read + write) {bw:.0f} GB/s | moe_experts runs on "
          f"{leankern.backend_for('moe_experts', 'cuda')}")
    s = SHAPES[0]
    g = torch.Generator().manual_seed(0)
    w13 = (torch.randn(s.E, 2 * s.I, s.H, generator=g) * 0.02).to(torch.bfloat16).cuda()
    w2 = (torch.randn(s.E, s.H, s.I, generator=g) * 0.02).to(torch.bfloat16).cuda()
    block = _hf_block(s, w13.cpu(), w2.cpu(), None)
    if block is not None:
        block = block.cuda()
        block.experts.gate_up_proj.data = w13
        block.experts.down_proj.data = w2
    if block is not None and not hf_skips_id_e(block):
        print("HF: this transformers cannot skip a slot; skipped slots run expert 0 with weight 0 in its loop")
    rows = []
    print(f"{'T':>5} {'skip':>5} {'kept':>6} {'experts':>7} {'ours us':>9} {'GB/s':>7} {'HF us':>9} {'x HF':>6} {'check':>6}")
    for T in (1, 16, 256, 4096):
        for skip in (0.0, 0.5, 0.88):
            ids, w = _routing(T, s, "uniform", skip, g)
            ids, w = ids.cuda(), w.cuda()
            x = torch.randn(T, s.H, generator=g).to(torch.bfloat16).cuda()
            y = moe.experts(x, w13, w2, ids, w)
            t = cuda_time_ms(lambda: moe.experts(x, w13, w2, ids, w), 20, args.graph)
            distinct = int(torch.unique(ids[ids >= 0]).numel())
            gbps = distinct * 3 * s.H * s.I * 2 / t / 1e6
            r = dict(T=T, skip=skip, kept=int((ids >= 0).sum()), experts=distinct, ours_us=t * 1e3, gbps=gbps)
            if block is not None:
                ids_hf, w_hf = hf_routing(block, ids, w, s.E)
                with torch.no_grad():
                    ref = block.experts(x, ids_hf, w_hf).float()
                    t_hf = cuda_time_ms(lambda: block.experts(x, ids_hf, w_hf), 5, False)
                err = (y.float() - ref).abs().max().item() / (ref.abs().max().item() + 1e-30)
                r.update(hf_us=t_hf * 1e3, x_hf=t_hf / t, check="ok" if err <= 2.0**-5 else f"{err:.2g}")
            rows.append(r)
            print(f"{T:>5} {skip:>5.2f} {r['kept']:>6} {distinct:>7} {r['ours_us']:9.1f} {gbps:7.0f} "
                  f"{r.get('hf_us', float('nan')):9.1f} {r.get('x_hf', float('nan')):6.2f} {r.get('check', '-'):>6}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[-1]))
            wr.writeheader()
            wr.writerows(rows)
    return 0 if all(r.get("check", "ok") == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
