"""Benchmark harness: timing, measured memory bandwidth, correctness-before-timing, tables, CSV.

A :class:`Case` holds a few implementations of one computation (``impls[0]`` is "ours"), the
exact bytes it must move and FLOPs it must do, and a ``check`` run on every implementation's
first output before anything is timed. :func:`run_cases` turns cases into one row each::

    row = {<labels>, "ours_ms", "ours_gbps", "frac_bw", "<impl>_ms", "x_<impl>", "check", ...}

``x_<impl>`` is ``t_<impl> / t_ours`` (how many times faster ours is). GB/s counts bytes read
plus bytes written once each (compulsory traffic), so ``frac_bw`` compares with
:func:`measure_copy_bandwidth`, measured in the same run the same way (a copy reads N bytes and
writes N bytes). On shared machines the ratios, not the absolute times, are the headline.
"""
from __future__ import annotations

import csv
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Impl", "Case", "BenchResult", "progress_bar", "time_fn", "measure_copy_bandwidth", "run_cases",
           "format_table", "write_csv", "machine_summary", "busy_note"]


# ----------------------------------------------------------------------------- progress
class _StderrBar:
    """Minimal progress bar on stderr for when tqdm is not installed."""

    def __init__(self, total: int, desc: str, width: int = 30):
        self.total, self.desc, self.width, self.n = max(1, total), desc, width, 0
        self.t0 = time.perf_counter()
        self._draw()

    def _draw(self):
        done = int(self.width * self.n / self.total)
        elapsed = time.perf_counter() - self.t0
        sys.stderr.write(f"\r{self.desc} [{'#' * done}{'.' * (self.width - done)}] {self.n}/{self.total} {elapsed:5.0f}s")
        sys.stderr.flush()

    def update(self, n: int = 1):
        self.n += n
        self._draw()

    def set_postfix_str(self, s: str):
        pass

    def close(self):
        sys.stderr.write("\n")
        sys.stderr.flush()


def progress_bar(total: int, desc: str = ""):
    """A progress bar with ``update(n)`` and ``close()``: tqdm if installed, else a plain stderr bar."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)
    except ImportError:
        return _StderrBar(total, desc)


# ----------------------------------------------------------------------------- timing
def _sync(device: str):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], *, device: str = "cpu", warmup: int = 1, repeats: int = 5,
            min_time: float = 0.0, max_repeats: int = 200) -> list[float]:
    """Seconds per call of ``fn``: at least ``repeats`` timed calls after ``warmup`` untimed ones.

    Fast functions get more calls, until ``min_time`` seconds have been timed (at most
    ``max_repeats``), so the median is robust to a few preempted calls on a busy machine.
    CPU: ``time.perf_counter`` around each call. CUDA: a pair of CUDA events per call.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    cuda = str(device).startswith("cuda")
    while len(times) < repeats or (sum(times) < min_time and len(times) < max_repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def measure_copy_bandwidth(device: str = "cpu", nbytes: int | None = None, repeats: int = 7) -> float:
    """The machine's memory bandwidth in GB/s: median over ``repeats`` of a large buffer copy.

    Counts bytes read + bytes written (2 * nbytes per copy). Default buffer: 256 MiB on CPU
    (far beyond the last-level cache), 1 GiB on CUDA.
    """
    nbytes = nbytes or (2**30 if str(device).startswith("cuda") else 2**28)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = time_fn(lambda: dst.copy_(src), device=device, warmup=2, repeats=repeats, min_time=0.5)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def busy_note(device: str = "cpu") -> str:
    """A warning line when other processes load the CPU (timings then jump by scheduler ticks), else ''."""
    if str(device).startswith("cuda") or not hasattr(os, "getloadavg"):
        return ""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= 0.5 * cores:
        return ""
    return (f"WARNING: load average {load:.1f} on {cores} cores: other processes compete for the CPU, so times "
            "are noisy (see *_min_ms in the CSV); compare ratios")


def machine_summary(device: str = "cpu") -> str:
    """One line: device name, threads, allocator mode."""
    if str(device).startswith("cuda"):
        return f"device: {torch.cuda.get_device_name()}"
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    thp = "2 MiB pages (THP_MEM_ALLOC_ENABLE=1)" if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else "4 KiB pages"
    return f"device: {cpu}, torch threads: {torch.get_num_threads()}, fresh tensors on {thp}"


# ----------------------------------------------------------------------------- cases
@dataclass
class Impl:
    """One implementation. ``fn`` returns its output (checked before timing); None = unavailable."""

    name: str
    fn: Callable[[], Any] | None
    warmup: int = 1  # untimed calls before timing (on top of the correctness call)
    repeats: int = 5  # at least this many timed calls ...
    min_time: float = 0.0  # ... and more until this many seconds are timed
    note: str = ""  # why it is unavailable, if it is


@dataclass
class Case:
    """One computation to time. ``impls[0]`` is ours; the others are baselines."""

    labels: dict
    impls: list
    nbytes: int  # exact bytes read + written
    flops: int = 0
    check: Callable[[dict], dict] | None = None  # outputs by impl name -> extra columns; raise on mismatch
    target: Callable[[dict], str] | None = None  # finished row -> "yes"/"no"/""


def _run_one(case: Case, device: str, bw_gbps: float) -> dict:
    row = dict(case.labels)
    row.update(bytes=case.nbytes, flops=case.flops)
    avail = [im for im in case.impls if im.fn is not None]
    outs = {}
    for im in avail:
        try:
            outs[im.name] = im.fn()  # correctness run, also a warm-up
        except Exception as exc:  # a backend that cannot run this case: report, keep going
            im.note, im.fn = f"{type(exc).__name__}: {exc}".splitlines()[0][:120], None
    avail = [im for im in case.impls if im.fn is not None]
    try:
        row.update(case.check(outs) if case.check else {})
        row.setdefault("check", "ok")
    except AssertionError as exc:
        row["check"] = "FAIL"
        row["check_detail"] = str(exc).splitlines()[0][:200]
    del outs
    _sync(device)
    for im in avail:
        times = time_fn(im.fn, device=device, warmup=im.warmup, repeats=im.repeats, min_time=im.min_time)
        row[f"{im.name}_ms"] = statistics.median(times) * 1e3
        row[f"{im.name}_min_ms"] = min(times) * 1e3
        row[f"{im.name}_runs"] = len(times)
    ours = case.impls[0].name
    for im in case.impls:
        if im.fn is None:
            row[f"{im.name}_ms"] = None
            row.setdefault("notes", []).append(f"{im.name}: {im.note or 'unavailable'}")
    t_ours = row.get(f"{ours}_ms")
    if t_ours:
        row["gbps"] = case.nbytes / (t_ours / 1e3) / 1e9
        row["frac_bw"] = row["gbps"] / bw_gbps if bw_gbps else None
        row["gflops"] = case.flops / (t_ours / 1e3) / 1e9 if case.flops else None
        for im in case.impls[1:]:
            t = row.get(f"{im.name}_ms")
            row[f"x_{im.name}"] = t / t_ours if t else None
    if "notes" in row:
        row["notes"] = "; ".join(row["notes"])
    row["target"] = case.target(row) if case.target else ""
    return row


def run_cases(cases: list, device: str = "cpu", bw_gbps: float | None = None, desc: str = "bench") -> list[dict]:
    """Run every case (check, then time), with a progress bar. Returns one row per case."""
    rows = []
    bar = progress_bar(len(cases), desc)
    try:
        for case in cases:
            if hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(" ".join(str(v) for v in case.labels.values()))
            rows.append(_run_one(case, device, bw_gbps or 0.0))
            bar.update(1)
    finally:
        bar.close()
    return rows


# ----------------------------------------------------------------------------- output
def _fmt(value, spec: str) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float) and spec and spec != "<":
        return format(value, spec)
    return str(value)


def format_table(rows: list, columns: list) -> str:
    """Text table. ``columns``: ``(key, header, format_spec)`` triples (spec ``"<"``: left-aligned
    text); missing values print as ``-``."""
    cells = [[_fmt(r.get(k), spec) for k, _, spec in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(columns)]
    just = [(str.ljust if spec == "<" else str.rjust) for _, _, spec in columns]
    line = "  ".join(j(h, w) for (_, h, _), w, j in zip(columns, widths, just))
    out = [line, "-" * len(line)]
    out += ["  ".join(j(c, w) for c, w, j in zip(cell, widths, just)) for cell in cells]
    return "\n".join(out)


def write_csv(path: str, rows: list, meta: dict | None = None) -> None:
    """All columns of all rows (union, first-seen order); ``meta`` items repeated on every row."""
    meta = meta or {}
    keys = list(meta) + list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({**meta, **{k: ("" if v is None else v) for k, v in r.items()}})


@dataclass
class BenchResult:
    """What a family bench returns: rows plus the context they were measured in."""

    rows: list
    bandwidth_gbps: float
    device: str
    meta: dict = field(default_factory=dict)


def import_pyplot(path):
    """matplotlib.pyplot on the Agg backend, or None (with a message naming ``path``) if not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not installed (pip install matplotlib); no plot written to {path}",
              file=sys.stderr)
        return None
    return plt
