"""leankern benchmarks: a shared harness (:mod:`.harness`) and one module per family.

Run them with ``leankern bench [--quick] [--family mx] [--csv PATH] [--plot PATH]`` or
``python bench/bench_<family>.py``. Each family module has ``run(quick=..., device=..., ...)``
returning a :class:`~leankern.benchmarks.harness.BenchResult` and printing one table.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

__all__ = ["FAMILIES", "family_module", "add_bench_args", "parse_bench_args", "rerun_with_thp"]

FAMILIES = ("mx",)


def family_module(name: str):
    """The bench module of a family (``leankern.benchmarks.<name>``)."""
    if name not in FAMILIES:
        raise ValueError(f"--family: expected one of {FAMILIES}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}")


def add_bench_args(p: argparse.ArgumentParser, with_family: bool = True) -> None:
    p.add_argument("--quick", action="store_true", help="4096x4096 only; reference timed for the headline formats only")
    if with_family:
        p.add_argument("--family", default="all", choices=("all",) + FAMILIES, help="which family to bench")
    p.add_argument("--csv", metavar="PATH", help="write every row as CSV")
    p.add_argument("--plot", metavar="PATH", help="bar chart of GB/s per format (needs matplotlib)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (ours = Triton, CUDA-event timing)")
    p.add_argument("--no-aot", action="store_true", help="skip the Triton AOT register/shared-memory report")
    p.add_argument("--no-thp", action="store_true",
                   help="keep 4 KiB pages for fresh tensors (default: rerun with THP_MEM_ALLOC_ENABLE=1)")
    # Hidden: one square size instead of the defaults (tests use a tiny one). Also LEANKERN_BENCH_SIZE.
    p.add_argument("--size", type=int, default=int(os.environ.get("LEANKERN_BENCH_SIZE", "0")) or None,
                   help=argparse.SUPPRESS)


def parse_bench_args(argv=None, prog: str = "bench", with_family: bool = False):
    p = argparse.ArgumentParser(prog=prog, description="leankern benchmark")
    add_bench_args(p, with_family)
    args = p.parse_args(argv)
    if args.size is not None and (args.size < 64 or args.size % 64):
        p.error(f"--size: expected a positive multiple of 64, got {args.size}")
    return args


def rerun_with_thp(no_thp: bool) -> int | None:
    """Rerun this command with ``THP_MEM_ALLOC_ENABLE=1`` unless it is set or ``no_thp``; return its exit code.

    Why: every op returns fresh tensors, and torch's CPU allocator maps them anew each call; on
    VMs a 4 KiB page fault costs microseconds, which alone caps a 64 MiB output at a few GB/s.
    With the variable set torch backs large tensors with 2 MiB pages (for every implementation
    timed alike), so the bench measures kernels rather than page faults. Only for a process
    started as a command (``sys.orig_argv`` is rerun); None means "carry on here".
    """
    if no_thp or os.environ.get("THP_MEM_ALLOC_ENABLE") is not None or not hasattr(sys, "orig_argv"):
        return None
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1")
    return subprocess.call([sys.executable, *sys.orig_argv[1:]], env=env)
