"""A/B of mx_quantize's code kernels for AVX512-VBMI CPUs:
``python bench/bench_mx_quantize_vbmi.py [ROWS]`` (default 4096 rows of 4096).

The VBMI kernels (csrc/mx/quant_fp4_vbmi.cpp: E2M1 for MXFP4 / NVFP4, every input dtype;
quant_fp8_vbmi.cpp: MXFP8 / MXFP6 on bf16 x; 32 elements per op, ``vpermb`` table lookups, codes of ~2 KB
of x per call) against the generic AVX-512 kernels before them (16 fp32 lanes per op), switched per call with the test hook ``leankern._C.mx_set_quantize_vbmi`` and timed in
turn (3 rounds x 15 calls each, median of the round medians), 2 threads, outputs from
``leankern.output_cache`` and fresh tensors on 2 MiB pages as in ``leankern bench`` (the script reruns
itself with THP_MEM_ALLOC_ENABLE=1 unless it is set). GB/s counts x read once plus codes and scales
written, as ``leankern bench``'s mx section does; %copy = that / the copy bandwidth measured in the same
run (the issue's quantize target: >= 50%). NV rows: dynamic global scale (two passes over x) or a given one
(+g); exact division (rceil) or the reciprocal (:recip).
"""
import os
import sys

import torch

try:
    import leankern
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import leankern

from leankern.benchmarks import rerun_with_thp
from leankern.benchmarks.harness import cpu_model, measure_copy_bandwidth, median_call_s, median_of_rounds

# (label, format, scale_mode, given global scale)
ROWS = [("mxfp8_e4m3", "mxfp8_e4m3", "rceil", False), ("mxfp8_e5m2", "mxfp8_e5m2", "rceil", False),
        ("mxfp6_e2m3", "mxfp6_e2m3", "rceil", False), ("mxfp6_e3m2", "mxfp6_e3m2", "rceil", False),
        ("mxfp4", "mxfp4", "rceil", False), ("nvfp4", "nvfp4", "rceil", False),
        ("nvfp4+g", "nvfp4", "rceil", True), ("nvfp4:recip", "nvfp4", "reciprocal", False),
        ("nvfp4+g:recip", "nvfp4", "reciprocal", True)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def main(argv) -> int:
    if not leankern._C or "avx512vbmi" not in leankern._C.cpu_features():
        print("needs the C++ extension on a CPU with AVX512-VBMI")
        return 0
    rows = int(argv[0]) if argv else 4096
    torch.set_num_threads(2)
    hook = leankern._C.mx_set_quantize_vbmi
    bw = measure_copy_bandwidth()
    print(f"{cpu_model()}, ISA {leankern._C.cpu_isa()}, torch {torch.__version__}, 2 threads; copy bandwidth "
          f"{bw:.1f} GB/s (this run); THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}")
    print("| quantize | x | VBMI ms | GB/s | %copy | generic ms | GB/s | %copy | generic / VBMI |")
    print("|---|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    with leankern.output_cache.enabled(512):
        for dname, dtype in DTYPES.items():
            x = torch.randn(rows, 4096, generator=gen).to(dtype)
            for label, fmt, mode, given in ROWS:
                g = float(x.float().abs().amax()) / (448 * 6) if given else None
                byte_codes = fmt.startswith(("mxfp8", "mxfp6"))  # one code byte per element
                if byte_codes and dtype != torch.bfloat16:
                    continue  # the FP8 / FP6 kernel takes bf16 x only
                bs = 16 if fmt.startswith("nv") else 32
                code_bytes = x.numel() if byte_codes else x.numel() // 2
                nbytes = x.numel() * x.element_size() + code_bytes + x.numel() // bs

                def time_one(on):
                    hook(on)
                    return median_call_s(lambda: leankern.mx.quantize(x, fmt, scale_mode=mode, global_scale=g))

                try:
                    t = median_of_rounds((True, False), time_one)
                finally:
                    hook(True)
                a, b = t[True], t[False]
                print(f"| {label} | {dname} {rows}x4096 | {a * 1e3:.2f} | {nbytes / a / 1e9:.1f} | "
                      f"{nbytes / a / 1e9 / bw:.0%} | {b * 1e3:.2f} | {nbytes / b / 1e9:.1f} | "
                      f"{nbytes / b / 1e9 / bw:.0%} | {b / a:.2f} |", flush=True)
    bw2 = measure_copy_bandwidth()
    print(f"copy bandwidth after the rows: {bw2:.1f} GB/s")
    return 0


if __name__ == "__main__":
    rc = rerun_with_thp(no_thp=False)
    raise SystemExit(main(sys.argv[1:]) if rc is None else rc)
