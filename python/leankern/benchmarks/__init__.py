"""leankern benchmarks: a shared harness (:mod:`.harness`), one module per family, and the overhead section.

Run them with ``leankern bench [--quick | --full] [--family F] [--csv PATH] [--plot PATH] [--device cpu|cuda]``
or ``python bench/bench_<family>.py``. By default every family runs its representative subset,
then the per-call overhead section (:mod:`.overhead`); ``--full`` runs everything, ``--quick``
the smallest smoke subset. Each section prints one header line (CPU or GPU, ISA path, the copy
bandwidth measured in this run, torch and threads) above its table.

Adding a family adds one module here, ``<family>.py``, found by name (no list to edit) with:

* ``FAMILY = "<family>"``;
* ``run(quick=False, full=False, device="cpu", sizes=None, csv_path=None, plot_path=None, aot=True,
  bw_gbps=None, output_cache_mb=0, out=print) -> harness.BenchResult``: prints its section (``bw_gbps``: the
  process-level copy bandwidth, for the header line; not a denominator of the rows, see :func:`run_bench`);
* ``tiny_calls(device) -> list[overhead.TinyCall]``: its ops on tiny inputs, for the overhead section.

Modules whose names start with ``_`` (and ``harness``, ``overhead``) are not families.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import subprocess
import sys
import time

__all__ = ["FAMILIES", "SECTIONS", "family_module", "add_bench_args", "parse_bench_args", "rerun_with_thp",
           "run_bench", "bench_main", "check_bench_args", "bench_size"]

_NOT_FAMILIES = {"harness", "overhead"}
FAMILIES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                        if not m.name.startswith("_") and m.name not in _NOT_FAMILIES))
SECTIONS = FAMILIES + ("overhead",)  # run in this order; overhead last (it covers every family's ops)


def family_module(name: str):
    """The bench module of a family or section (``leankern.benchmarks.<name>``)."""
    if name not in SECTIONS:
        raise ValueError(f"--family: expected one of {SECTIONS}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}")


def add_bench_args(p: argparse.ArgumentParser, with_family: bool = True) -> None:
    subset = p.add_mutually_exclusive_group()
    subset.add_argument("--quick", action="store_true",
                        help="smallest smoke subset: one size, no reference timing, fewest repeats")
    subset.add_argument("--full", action="store_true",
                        help="everything (all formats, dtypes and sizes, reference timed everywhere); default: a "
                             "representative subset of every family, then the overhead section: what `make bench` "
                             "runs (about 28 min on 2 cores, about 8 of them hf_e2e when transformers is installed)")
    if with_family:
        p.add_argument("--family", default="all", choices=("all",) + SECTIONS,
                       help="one family's section, or 'overhead' (per-call overhead of every op); default: all")
    p.add_argument("--csv", metavar="PATH", help="write every row as CSV (several sections: PATH_<section>.csv)")
    p.add_argument("--plot", metavar="PATH",
                   help="write a chart (needs matplotlib): the mx section's GB/s per format and the moe section's "
                        "time vs skip ratio (several sections: out_mx.png, out_moe.png for out.png); other sections "
                        "ignore it")
    p.add_argument("--device", default="cpu",
                   help="cpu (default) or cuda (CUDA C++, Triton, reference and torch on the GPU)")
    p.add_argument("--no-aot", action="store_true", help="skip the Triton AOT register/shared-memory report")
    p.add_argument("--no-thp", action="store_true",
                   help="keep 4 KiB pages for fresh tensors (default: rerun with THP_MEM_ALLOC_ENABLE=1)")
    # Default on: a fresh multi-MB output costs page faults that dwarf the kernel; the cache takes
    # that off leankern's C++ outputs (the header says so). --output-cache 0 times what users get by default.
    p.add_argument("--output-cache", type=int, default=512, metavar="MB",
                   help="leankern.output_cache limit while timing (default 512; 0 = off, the library default)")
    # Hidden: one square size instead of the defaults (tests use a tiny one). Also LEANKERN_BENCH_SIZE, read by
    # bench_size() when a bench runs (not here: a bad value must not break --help or `leankern info`).
    p.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)


_SIZE_ENV = "LEANKERN_BENCH_SIZE"


def bench_size(args) -> int | None:
    """The one square size to bench: ``--size``, else ``LEANKERN_BENCH_SIZE`` (unset, empty or 0: None, each
    family's default sizes). ``ValueError`` naming the variable when it is not a positive multiple of 64."""
    if getattr(args, "size", None) is not None:
        return args.size
    raw = os.environ.get(_SIZE_ENV, "").strip()
    if raw in ("", "0"):
        return None
    try:
        size = int(raw)
    except ValueError:
        size = None
    if size is None or size < 64 or size % 64:
        raise ValueError(f"{_SIZE_ENV}: expected a positive multiple of 64, got {raw!r}")
    return size


def check_bench_args(args) -> str | None:
    """An error message for bad arguments (and a bad ``LEANKERN_BENCH_SIZE``), else None."""
    if args.size is not None and (args.size < 64 or args.size % 64):
        return f"--size: expected a positive multiple of 64, got {args.size}"
    try:
        bench_size(args)
    except ValueError as exc:
        return str(exc)
    if args.output_cache < 0:
        return f"--output-cache: expected a non-negative number of MB, got {args.output_cache}"
    if str(args.device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return f"--device {args.device}: no CUDA device is available (torch {torch.__version__})"
    elif args.device != "cpu":
        return f"--device: expected cpu or cuda, got {args.device!r}"
    return None


def parse_bench_args(argv=None, prog: str = "bench", with_family: bool = False):
    p = argparse.ArgumentParser(prog=prog, description="leankern benchmark")
    add_bench_args(p, with_family)
    args = p.parse_args(argv)
    err = check_bench_args(args)
    if err:
        p.error(err)
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


def _with_suffix(path: str | None, section: str, many: bool) -> str | None:
    if not path or not many:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}_{section}{ext}"


def run_bench(args, sections=None, out=print) -> int:
    """Run ``sections`` (default: from ``args.family``) with one copy-bandwidth measurement shared by all.

    That figure (``bw_gbps``, taken once per process, before the first section) is for the sections' header lines
    only; a section that divides by a bandwidth measures it itself next to its rows (mx: the copy bandwidth before
    and after each row; mx_linear, moe, vocab, sefp, specdec: the read bandwidth likewise), since this host's
    bandwidth moved by 2x between runs and a section runs minutes after the process-level measure."""
    from .harness import measure_copy_bandwidth

    if sections is None:
        sections = SECTIONS if getattr(args, "family", "all") == "all" else (args.family,)
    mode = "quick" if args.quick else "full" if args.full else "default"
    size = bench_size(args)  # before the bandwidth run: a bad LEANKERN_BENCH_SIZE fails first
    t0 = time.perf_counter()
    bw = measure_copy_bandwidth(args.device)
    many = len(sections) > 1
    for name in sections:
        family_module(name).run(quick=args.quick, full=args.full, device=args.device,
                                sizes=(size,) if size else None, csv_path=_with_suffix(args.csv, name, many),
                                plot_path=_with_suffix(args.plot, name, many), aot=not args.no_aot, bw_gbps=bw,
                                output_cache_mb=args.output_cache, out=out)
        out("")
    out(f"leankern bench ({mode}, {args.device}): {', '.join(sections)} in {time.perf_counter() - t0:.0f} s")
    return 0


def bench_main(argv=None, families=None, prog: str = "bench") -> int:
    """Entry point of ``bench/bench_<family>.py``: parse, rerun with 2 MiB pages if a command, run."""
    args = parse_bench_args(argv, prog=prog, with_family=families is None)
    if argv is None and (rc := rerun_with_thp(args.no_thp)) is not None:
        return rc
    return run_bench(args, sections=families)
