"""Static SASS of mx_linear's weight-only kernels at M = 1, per format: ``python bench/bench_mx_gemv_sass.py``.

No GPU needed: both kernels are compiled ahead of time for sm_90 (as the launcher would on an H100 / H200,
bf16 x, split-K 4), and the instructions of each kernel's K loop are counted from ``cuobjdump -sass``
(``leankern.triton_kernels.aot.loop_sass``), per weight a thread decodes in one iteration. Compared: the
tensor-core kernel (16-row tiles, ``mma.sync``) that ran M = 1 before, and the one-row GEMV
(``triton_kernels/mx_gemv.py``) that runs it now. A static count is a proxy for a decode-bound GEMV's
time, not a measurement of it: stalls, occupancy and the memory system are not in it.
"""
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not the interpreter

import torch  # noqa: E402

try:
    import leankern  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from leankern.mx.formats import FORMATS, get_format  # noqa: E402
from leankern.triton_kernels import aot  # noqa: E402


def row(fmt: str, gemv: bool, arch: int = 90) -> dict:
    spec = aot._linear_wo_spec(fmt, get_format(fmt).default_block_size, torch.bfloat16, 1, split_k=4, bias=False,
                               gemv=gemv)  # as the launcher configures M = 1 on a GPU
    ce, nw = spec.constexprs, spec.num_warps
    compiled = aot.compile_spec(spec, arch)
    loop = aot.loop_sass(compiled)
    per_thread = ce["BN"] * ce["BK"] / (32 * nw)  # weights one thread decodes per loop iteration
    use = aot.resource_usage(compiled, arch)
    return dict(instr=loop["instructions"], per_thread=per_thread, per_weight=loop["instructions"] / per_thread,
                regs=use["registers"], bar=loop["opcodes"].get("BAR", 0))


def main() -> int:
    import triton

    print(f"Triton {triton.__version__}, sm_90, bf16 x, M = 1, split-K 4: SASS instructions in the K loop per weight "
          "of a thread")
    head = f"{'format':12s} {'tensor-core kernel':>26s} {'GEMV':>26s} {'ratio':>6s}"
    print(head)
    print(" " * 13 + f"{'instr/weight (loop, regs)':>26s} {'instr/weight (loop, regs)':>26s}")
    print("-" * len(head))
    for fmt in FORMATS:
        d, g = row(fmt, False), row(fmt, True)
        cell = lambda r: f"{r['per_weight']:6.2f} ({r['instr']:4d}, {r['regs']:3d})"  # noqa: E731
        print(f"{fmt:12s} {cell(d):>26s} {cell(g):>26s} {d['per_weight'] / g['per_weight']:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
