"""Benchmark harness: timing, measured memory bandwidth, correctness-before-timing, tables, CSV.

A :class:`Case` holds a few implementations of one computation (``impls[0]`` is "ours"), the
exact bytes it must move and FLOPs it must do, and a ``check`` run on every implementation's
first output before anything is timed. :func:`run_cases` turns cases into one row each::

    row = {<labels>, "ours_ms", "ours_gbps", "frac_bw", "<impl>_ms", "x_<impl>", "check", ...}

``x_<impl>`` is ``t_<impl> / t_ours`` (how many times faster ours is; "ours" is ``impls[0]`` unless
the case names another with ``Case.ours``); every implementation also gets ``<impl>_gbps``.
GB/s counts bytes read
plus bytes written once each (compulsory traffic), so ``frac_bw`` compares with the copy bandwidth
(:func:`copy_gbps`, :func:`measure_copy_bandwidth`), measured in the same run the same way (a copy reads
N bytes and writes N bytes): with ``run_cases(bw_fn=...)`` just before and after each row (the mean), else
the one figure passed in. ``bw_beaten`` flags a row whose ``frac_bw`` exceeds 1 (:func:`beaten`). On shared
machines the ratios, not the absolute times, are the headline.
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

__all__ = ["Impl", "Case", "BenchResult", "progress_bar", "time_fn", "measure_copy_bandwidth", "copy_buffers",
           "copy_gbps", "beaten", "run_cases",
           "format_table", "write_csv", "ColdCache", "median_us_cold", "machine_summary", "busy_note", "cpu_model",
           "cpu_isa", "section_header"]


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


# Bytes of distinct copies a cold timing cycles through. Checked on the 2-core Xeon whose VM reports a 480 MiB L3:
# cycling 256 MiB of copies of a 16 MiB weight timed the same as cycling 2 GiB (704 vs 689 us), so each call reads
# DRAM; rewriting a 64 MiB buffer between calls on one copy did not (578 us: the L3 kept part of what every round
# reread), and rewriting 256 MiB - 1 GiB overshot (863-1005 us: the flush's dirty lines written back during the call).
COLD_BYTES = 256 << 20


def cold_copies(make, nbytes_each: int, total: int = COLD_BYTES) -> list:
    """``make()`` called enough times for the results to fill ``total`` bytes (at least 2 copies)."""
    return [make() for _ in range(max(2, total // max(nbytes_each, 1)))]


def cycle(items):
    """A callable returning the next of ``items`` on each call, round and round."""
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return nxt


def no_flush() -> None:
    """The ``flush`` of a timing whose calls each read other data (cycled copies): nothing to evict."""


class ColdCache:
    """Rewrites a 64 MiB buffer before a timed call: evicts L1/L2 and a 32 MiB L3, but not a larger one (see
    COLD_BYTES); timings that must read DRAM cycle through copies (:func:`cold_copies`) instead."""

    def __init__(self, nbytes: int = 64 << 20):
        self.buf = torch.zeros(nbytes // 4)

    def __call__(self):
        self.buf.add_(1.0)


def median_us_cold(fn, repeats: int, flush) -> float:
    """Median microseconds of ``fn`` with ``flush()`` (e.g. a :class:`ColdCache`) before each timed call."""
    fn()
    times = []
    for _ in range(repeats):
        flush()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def median_us_cold_interleaved(fns, repeats: int, flush) -> list:
    """Median microseconds of each of ``fns``, timed in turn within every repeat (``flush()`` before each call):
    a slow stretch of a shared machine hits all of them alike, so their ratios hold up better than those of
    separate :func:`median_us_cold` runs."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            flush()
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) * 1e6 for ts in times]


def read_buffer(nbytes: int = 2**28) -> torch.Tensor:
    """The fp32 buffer of :func:`read_gbps` (256 MiB: beyond the last-level caches here)."""
    return torch.ones(nbytes // 4, dtype=torch.float32)


def read_gbps(buf: torch.Tensor, repeats: int = 3, min_time: float = 0.0) -> float:
    """GB/s of ``buf.sum()`` (median of at least ``repeats``, :func:`time_fn`): the read bandwidth right now. Benches
    take it just before and after a row's timings and use the mean, because this shared host's bandwidth moved between
    29 and 66 GB/s from run to run; not inside the rounds, where the 256 MiB stream evicted the page-table entries of
    the call after it (a gathered LM head of 4096 rows then took 1.5x its time)."""
    times = time_fn(lambda: buf.sum(), warmup=1, repeats=repeats, min_time=min_time)
    return buf.numel() * buf.element_size() / statistics.median(times) / 1e9


def median_call_s(fn: Callable[[], Any], reps: int = 15, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds over ``reps`` calls after ``warmup`` (CPU; A/B scripts' unit)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ab_args(argv, formats, ms, shapes):
    """The positional arguments of the bench/ A/B scripts: FMTS (comma list), MS (comma list of row counts) and SHAPES
    (``NxK,NxK``), each with its default; returns (fmts, ms, shapes, the remaining arguments)."""
    fmts = argv[0].split(",") if argv else list(formats)
    ms = [int(v) for v in argv[1].split(",")] if len(argv) > 1 else list(ms)
    shapes = [tuple(int(d) for d in s.split("x")) for s in argv[2].split(",")] if len(argv) > 2 else list(shapes)
    return fmts, ms, shapes, list(argv[3:])


def median_of_rounds(keys, time_one: Callable[[Any], float], rounds: int = 3) -> dict:
    """{key: median over `rounds` of time_one(key)}, the keys timed in turn within each round (A/B scripts: a slow
    stretch of a shared machine hits every side alike)."""
    times = {k: [] for k in keys}
    for _ in range(rounds):
        for k in times:
            times[k].append(time_one(k))
    return {k: statistics.median(v) for k, v in times.items()}


def time_fn(fn: Callable[[], Any], *, device: str = "cpu", warmup: int = 1, repeats: int = 5,
            min_time: float = 0.0, max_repeats: int = 200, graph: bool = False) -> list[float]:
    """Seconds per call of ``fn``: at least ``repeats`` timed samples after ``warmup`` untimed calls.

    Fast functions get more samples, until ``min_time`` seconds have been timed (at most
    ``max_repeats``), so the median is robust to a few preempted calls on a busy machine.
    CPU: ``time.perf_counter`` around each call. CUDA: see :func:`_cuda_times` (CUDA-graph replay
    when ``graph`` and the call can be captured, else CUDA events around a batch of eager calls).
    """
    if str(device).startswith("cuda"):
        return _cuda_times(fn, warmup, repeats, min_time, max_repeats, graph)[0]
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < repeats or (sum(times) < min_time and len(times) < max_repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


_GRAPH_CALLS = 20  # calls captured in one CUDA graph (one replay = this many back-to-back kernels)


def _cuda_times(fn, warmup: int, repeats: int, min_time: float, max_repeats: int, graph: bool):
    """(seconds per call per sample, "graph" | "eager") on CUDA.

    A launch of a Python op costs tens of microseconds of CPU time, as long as or longer than a
    memory-bound kernel on a large GPU, so events around single eager calls measure the launch
    path. With ``graph`` the calls are captured once in a CUDA graph and the replays are timed:
    GPU time only (what the kernel costs inside a model that is graph-captured, as serving
    engines do). Calls that cannot be captured (host syncs, host-to-device copies) are timed
    eagerly as a batch between two events: device time including any launch gaps.
    """
    for _ in range(max(warmup, 1)):
        fn()
    torch.cuda.synchronize()
    if graph:
        try:
            return _cuda_graph_times(fn, repeats, min_time, max_repeats), "graph"
        except Exception:  # noqa: BLE001  (not capturable: fall back to eager timing)
            torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    one = max(start.elapsed_time(end) / 1e3, 1e-6)
    batch = max(1, min(50, int(1e-3 / one)))  # ~1 ms of work per sample
    times = []
    while len(times) < repeats or (sum(times) * batch < min_time and len(times) < max_repeats):
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / batch)
    return times, "eager"


def _cuda_graph_times(fn, repeats: int, min_time: float, max_repeats: int) -> list[float]:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs requires
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(_GRAPH_CALLS):
            fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    while len(times) < repeats or (sum(times) * _GRAPH_CALLS < min_time and len(times) < max_repeats):
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / _GRAPH_CALLS)
    del g
    return times


def copy_buffers(device: str = "cpu", nbytes: int | None = None) -> tuple:
    """(src, dst): the fp32 buffers of :func:`copy_gbps`. Default: 256 MiB each on CPU (far beyond the last-level
    cache), 1 GiB on CUDA."""
    nbytes = nbytes or (2**30 if str(device).startswith("cuda") else 2**28)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    return src, torch.empty_like(src)


def copy_gbps(bufs: tuple, repeats: int = 3, min_time: float = 0.0, warmup: int = 1) -> float:
    """GB/s of ``dst.copy_(src)`` for ``bufs = (src, dst)`` of :func:`copy_buffers`, bytes read + written (2 x the
    buffer per copy; median of at least ``repeats``, :func:`time_fn`): the copy bandwidth right now. As with
    :func:`read_gbps`, a bench takes it just before and after its rows (not inside their rounds) and uses the mean
    as the denominator of those rows' ``%bw``."""
    src, dst = bufs
    times = time_fn(lambda: dst.copy_(src), device=str(src.device), warmup=warmup, repeats=repeats, min_time=min_time)
    return 2 * src.numel() * src.element_size() / statistics.median(times) / 1e9


def measure_copy_bandwidth(device: str = "cpu", nbytes: int | None = None, repeats: int = 7) -> float:
    """The machine's memory bandwidth in GB/s: median over ``repeats`` (and >= 0.5 s) of a large buffer copy.

    Counts bytes read + bytes written (2 * nbytes per copy). Default buffer: 256 MiB on CPU
    (far beyond the last-level cache), 1 GiB on CUDA.
    """
    return copy_gbps(copy_buffers(device, nbytes), repeats, min_time=0.5, warmup=2)


def beaten(frac: float | None = None, roof: float | None = None) -> bool:
    """Whether a row beat the measure it is compared with: its fraction of the measured bandwidth (``frac``, e.g.
    ``%rd``) above 1, or its time over the roofline (``roof``, "x roof") below 1. Such a fraction is not evidence of
    efficiency (the data came from cache, or the measure was slow at that moment); tables flag the row
    (``rd<ours``), CSVs carry the boolean."""
    return bool((frac is not None and frac > 1.0) or (roof is not None and roof < 1.0))


def busy_note(device: str = "cpu") -> str:
    """A warning line when other processes load the CPU (timings then jump by scheduler ticks), else ''."""
    if str(device).startswith("cuda") or not hasattr(os, "getloadavg"):
        return ""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= 0.5 * cores:
        return ""
    return (f"WARNING: load average {load:.1f} on {cores} cores: other processes compete for the CPU, so times "
            "are noisy (see *_min_ms in the CSV); compare ratios")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else platform's guess)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_isa() -> str:
    """The ISA path the C++ kernels run (``leankern._C.cpu_isa()``), or why there is none."""
    from ..core import extension, extension_error

    ext = extension()
    if ext is None:
        return f"none: C++ extension not loaded ({extension_error()})"
    return str(ext.cpu_isa()) if hasattr(ext, "cpu_isa") else "unknown (leankern._C has no cpu_isa())"


def _pages() -> str:
    return "2 MiB pages (THP_MEM_ALLOC_ENABLE=1)" if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else "4 KiB pages"


def machine_summary(device: str = "cpu") -> str:
    """One line: device name, threads, allocator mode."""
    if str(device).startswith("cuda"):
        return f"device: {torch.cuda.get_device_name()}"
    return f"device: {cpu_model()}, torch threads: {torch.get_num_threads()}, fresh tensors on {_pages()}"


def section_header(name: str, device: str, bw_gbps: float, mode: str = "", output_cache_mb: int = 0) -> str:
    """The one header line above a family's table: machine, ISA path, bandwidth measured in this run.

    ``== mx (default) == CPU: <model> | ISA: <leankern._C.cpu_isa()> | copy bandwidth: <GB/s> | torch <ver>, <n>
    threads | fresh tensors on ... | output cache ...``. On CUDA the GPU replaces the CPU and ISA.
    """
    head = f"== {name}{f' ({mode})' if mode else ''} =="
    if str(device).startswith("cuda"):
        cap = torch.cuda.get_device_capability()
        where = f"GPU: {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}) | CUDA {torch.version.cuda}"
    else:
        where = f"CPU: {cpu_model()} | ISA: {cpu_isa()}"
    cache = (f"C++ output cache on ({output_cache_mb} MB; serves leankern's C++ outputs and mx.linear's scratch only)"
             if output_cache_mb else "C++ output cache off")
    return (f"{head} {where} | copy bandwidth: {bw_gbps:.1f} GB/s (measured in this run) | torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads | fresh tensors on {_pages()} | {cache}")


# ----------------------------------------------------------------------------- cases
@dataclass
class Impl:
    """One implementation. ``fn`` returns its output (checked before timing); None = unavailable."""

    name: str
    fn: Callable[[], Any] | None
    warmup: int = 1  # untimed calls before timing (on top of the correctness call)
    repeats: int = 5  # at least this many timed calls (0: the checking call's own time is the one sample) ...
    min_time: float = 0.0  # ... and more until this many seconds are timed
    note: str = ""  # why it is unavailable, if it is
    graph: bool = False  # CUDA: time by CUDA-graph replay when the call can be captured


@dataclass
class Case:
    """One computation to time. ``impls[0]`` is ours; the others are baselines."""

    labels: dict
    impls: list
    nbytes: int  # exact bytes read + written
    flops: int = 0
    check: Callable[[dict], dict] | None = None  # outputs by impl name -> extra columns; raise on mismatch
    target: Callable[[dict], str] | None = None  # finished row -> "yes"/"no"/""
    ours: str | None = None  # the impl the ratios compare with (default impls[0])


def _first_call(im: Impl, device: str):
    """The checking call (also a warm-up): (output, seconds)."""
    _sync(device)
    t0 = time.perf_counter()
    out = im.fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _time_impl(im: Impl, device: str, first_s: float) -> tuple:
    """(seconds per call per sample, timing method) for one implementation."""
    if im.repeats == 0:  # slow contenders (the reference): the checking call is the one sample
        return [first_s], "1 call"
    if str(device).startswith("cuda"):
        return _cuda_times(im.fn, im.warmup, im.repeats, im.min_time, 200, im.graph)
    return time_fn(im.fn, device=device, warmup=im.warmup, repeats=im.repeats, min_time=im.min_time), ""


def _run_one(case: Case, device: str, bw_gbps: float) -> dict:
    row = dict(case.labels)
    row.update(bytes=case.nbytes, flops=case.flops)
    outs, first = {}, {}
    for im in case.impls:
        if im.fn is None:
            continue
        try:
            outs[im.name], first[im.name] = _first_call(im, device)
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
        try:
            times, how = _time_impl(im, device, first[im.name])
        except Exception as exc:  # noqa: BLE001  (report it in the row; the other contenders still run)
            im.note, im.fn = f"timing failed: {type(exc).__name__}: {exc}".splitlines()[0][:160], None
            _sync(device)
            continue
        row[f"{im.name}_ms"] = statistics.median(times) * 1e3
        row[f"{im.name}_min_ms"] = min(times) * 1e3
        row[f"{im.name}_runs"] = len(times)
        row[f"{im.name}_gbps"] = case.nbytes / statistics.median(times) / 1e9
        if how:
            row[f"{im.name}_timing"] = how
    for im in case.impls:
        if im.fn is None:
            row[f"{im.name}_ms"] = None
            row.setdefault("notes", []).append(f"{im.name}: {im.note or 'unavailable'}")
    ours = case.ours or case.impls[0].name
    if case.ours:
        row["ours_backend"] = ours
    t_ours = row.get(f"{ours}_ms")
    if t_ours:
        row["gbps"] = case.nbytes / (t_ours / 1e3) / 1e9
        row["frac_bw"] = None  # set by _finish_row (here: its place among the CSV's columns)
        row["gflops"] = case.flops / (t_ours / 1e3) / 1e9 if case.flops else None
        for im in case.impls:
            t = row.get(f"{im.name}_ms")
            if im.name != ours:
                row[f"x_{im.name}"] = t / t_ours if t else None
    if "notes" in row:
        row["notes"] = "; ".join(row["notes"])
    _finish_row(row, case, bw_gbps)
    return row


def _finish_row(row: dict, case: Case, bw_gbps: float) -> None:
    """The columns that depend on the bandwidth: ``frac_bw``, ``target``, ``bw_beaten`` (:func:`beaten`)."""
    row["frac_bw"] = row["gbps"] / bw_gbps if bw_gbps and row.get("gbps") else None
    row["target"] = case.target(row) if case.target else ""
    row["bw_beaten"] = beaten(row["frac_bw"])


def run_cases(cases: list, device: str = "cpu", bw_gbps: float | None = None, desc: str = "bench",
              bw_fn: Callable[[], float] | None = None) -> list[dict]:
    """Run every case (check, then time), with a progress bar. Returns one row per case.

    ``bw_fn`` (e.g. :func:`copy_gbps` on buffers made once): measured before the first case and after every case;
    each row's ``frac_bw`` then divides by the mean of the measures just before and after it (``bw_gbps`` of the
    row, in its ``row_bw_gbps`` column), not by ``bw_gbps``, measured once for all. On this shared host the
    bandwidth moved by 2x between runs."""
    rows = []
    bar = progress_bar(len(cases), desc)
    before = bw_fn() if bw_fn else None
    try:
        for case in cases:
            if hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(" ".join(str(v) for v in case.labels.values()))
            row = _run_one(case, device, bw_gbps or 0.0)
            if bw_fn:
                after = bw_fn()
                row["row_bw_gbps"] = (before + after) / 2
                _finish_row(row, case, row["row_bw_gbps"])
                before = after
            rows.append(row)
            bar.update(1)
    finally:
        bar.close()
    return rows


# ----------------------------------------------------------------------------- output
def _fmt(value, spec: str) -> str:
    if spec == "flag":  # a boolean flag column: "yes" where set, blank elsewhere (the CSV keeps True / False)
        return "yes" if value else ""
    if value is None or value == "":
        return "-"
    if isinstance(value, float) and spec and spec != "<":
        return format(value, spec)
    return str(value)


def format_table(rows: list, columns: list) -> str:
    """Text table. ``columns``: ``(key, header, format_spec)`` triples (spec ``"<"``: left-aligned
    text; ``"flag"``: a boolean printed as ``yes`` or blank); missing values print as ``-``."""
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
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
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
