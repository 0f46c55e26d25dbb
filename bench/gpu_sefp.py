"""GPU timing of the Triton SEFP linear (run by bench/gpu_check.sh, stage ``sefp``).

W [N, K] = 4096 x 4096 and 14336 x 4096 quantized once at m_max = 8, bf16 x; M = 1 and 16 (decode)
and 512 (prefill) at m = 8 .. 2; baselines torch bf16 F.linear and dequantize-then-F.linear. Decode rows at
m <= 7 are followed by the packed copy's (``SEFPTensor.packed(m)``, triton_kernels/sefp_packed.py; "packed"); at
M = 512, where ours dequantizes and calls torch's GEMM (``DEQUANT_GEMM_MIN_ROWS``), m = 8 and 2 are followed by
the fused kernel forced ("fused").
Checked against dequantize-then-fp32-matmul first; median of CUDA-event timings (CUDA-graph replay
with --graph). GB/s = planes + exponents read (decode); copy bandwidth measured in the same run.

    python bench/gpu_sefp.py [--graph] [--csv PATH]
"""
import argparse
import csv
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_timing import copy_bandwidth_gbs, cuda_time_ms  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--graph", action="store_true")
    p.add_argument("--csv")
    args = p.parse_args()
    import leankern
    from leankern import sefp
    from leankern.triton_kernels.sefp import DEQUANT_GEMM_MIN_ROWS, linear_triton

    assert torch.cuda.is_available(), "needs a CUDA GPU"
    bw = copy_bandwidth_gbs()
    print(f"GPU {torch.cuda.get_device_name()} | copy bandwidth (read + write) {bw:.0f} GB/s | sefp_linear runs on "
          f"{leankern.backend_for('sefp_linear', 'cuda')}")
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    print(f"{'W [N,K]':>12} {'M':>4} {'m':>2} {'ours us':>9} {'GB/s':>7} {'%copy':>6} {'bf16 us':>9} {'x bf16':>7} "
          f"{'deq+lin us':>10} {'check':>6}")
    for N, K in ((4096, 4096), (14336, 4096)):
        w = (torch.randn(N, K, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        wq = sefp.quantize(w, m_max=8)
        for M in (1, 16, 512):
            x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
            t_bf16 = cuda_time_ms(lambda: F.linear(x, w), 20, args.graph)
            for m in (8, 7, 6, 5, 4, 3, 2):
                y = sefp.linear(x, wq, m)
                ref = x.float() @ wq.dequantize(m, torch.float32).t()
                err = (y.float() - ref).abs().max().item() / (ref.abs().max().item() + 1e-30)
                t = cuda_time_ms(lambda: sefp.linear(x, wq, m), 20, args.graph)
                t_deq = cuda_time_ms(lambda: F.linear(x, wq.dequantize(m, torch.bfloat16)), 10, args.graph)
                gbps = (wq.nbytes(m) + 2 * M * (K + N)) / t / 1e6
                r = dict(N=N, K=K, M=M, m=m, ours_us=t * 1e3, gbps=gbps, frac_copy=gbps / (bw / 2),
                         bf16_us=t_bf16 * 1e3, x_bf16=t_bf16 / t, deq_us=t_deq * 1e3,
                         check="ok" if err <= 2.0**-7 else f"{err:.2g}")
                rows.append(r)
                print(f"{f'{N}x{K}':>12} {M:>4} {m:>2} {r['ours_us']:9.1f} {gbps:7.0f} {r['frac_copy']:6.0%} "
                      f"{r['bf16_us']:9.1f} {r['x_bf16']:7.2f} {r['deq_us']:10.1f} {r['check']:>6}")
                if M >= DEQUANT_GEMM_MIN_ROWS and m in (8, 2):  # ours there is dequantize + GEMM: the fused kernel
                    t = cuda_time_ms(lambda: linear_triton(x, wq.planes[: 1 + m], wq.exponents, m, wq.block_size,
                                                           dot="bf16"), 20, args.graph)
                    rows.append(dict(N=N, K=K, M=M, m=f"{m}fused", ours_us=t * 1e3, gbps=None, frac_copy=None,
                                     bf16_us=t_bf16 * 1e3, x_bf16=t_bf16 / t, deq_us=None, check="-"))
                    print(f"{f'{N}x{K}':>12} {M:>4} {m:>2} fused {t * 1e3:9.1f} {'-':>7} {'-':>6} {t_bf16 * 1e3:9.1f} "
                          f"{t_bf16 / t:7.2f} {'-':>10} {'-':>6}")
                if m <= 7 and M <= 16:  # the packed copy (triton_kernels/sefp_packed.py, untuned): its first numbers
                    pk = wq.packed(m)
                    y = sefp.linear(x, pk)
                    err = (y.float() - ref).abs().max().item() / (ref.abs().max().item() + 1e-30)
                    t = cuda_time_ms(lambda: sefp.linear(x, pk), 20, args.graph)
                    gbps = (pk.nbytes() + 2 * M * (K + N)) / t / 1e6
                    rows.append(dict(N=N, K=K, M=M, m=f"{m}pk", ours_us=t * 1e3, gbps=gbps, frac_copy=gbps / (bw / 2),
                                     bf16_us=t_bf16 * 1e3, x_bf16=t_bf16 / t, deq_us=None,
                                     check="ok" if err <= 2.0**-7 else f"{err:.2g}"))
                    print(f"{f'{N}x{K}':>12} {M:>4} {m:>2} packed {t * 1e3:9.1f} {gbps:7.0f} {gbps / (bw / 2):6.0%} "
                          f"{t_bf16 * 1e3:9.1f} {t_bf16 / t:7.2f} {'-':>10} {rows[-1]['check']:>6}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)
    return 0 if all(r["check"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
