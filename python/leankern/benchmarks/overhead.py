"""Per-call overhead: every leankern op on a tiny input, next to plain torch ops on the same input.

On the decode path (routing one token, verifying one request, a GEMV) an op runs on a few
dozen elements, so what it costs is the trip from Python through the torch dispatcher to the
kernel and back, not the kernel. For every op in ``leankern.registered_ops()`` (all families)
this section times

* ``raw``: ``torch.ops.leankern.<op>(...)``, the registered op itself;
* ``api``: the public front-end that calls it (``leankern.mx.quantize`` ...);
* ``plain``: a plain torch op on the same input (``torch.abs(x)``, a cast), and, once per run,
  the floors: ``torch.ops.aten.abs.default(x)`` (the dispatcher with no Python binding),
  ``torch.abs(x)``, ``x.amax(-1)`` and an empty Python call (the timing loop itself);

as the median over ``repeats`` samples of the mean of ``calls`` back-to-back calls
(``time.perf_counter_ns``; garbage collection paused while a sample runs; on CUDA one
synchronize per sample). Target (CPU): at most 10 us per call for every op, raw and api.

Each family's bench module supplies the calls: ``tiny_calls(device) -> list[TinyCall]``. An op
no family covers is reported as a row saying so.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .harness import BenchResult, busy_note, format_table, measure_copy_bandwidth, section_header, write_csv

__all__ = ["TinyCall", "TARGET_US", "per_call_us", "floor_calls", "run", "main"]

TARGET_US = 10.0
CALLS, REPEATS = 2000, 7  # per sample, samples
QUICK_CALLS, QUICK_REPEATS = 300, 5


@dataclass
class TinyCall:
    """One op on a tiny input: the raw op, its public front-end and a plain torch op on the same input."""

    op: str  # registered op name (leankern.registered_ops())
    label: str  # what the input is, e.g. "mxfp8_e4m3 x[1,32] fp32"
    raw: Callable[[], object]  # torch.ops.leankern.<op>(...)
    api_name: str
    api: Callable[[], object] | None  # the public front-end, None if the op has none
    plain_name: str
    plain: Callable[[], object]


def per_call_us(fn: Callable[[], object], calls: int = CALLS, repeats: int = REPEATS, device: str = "cpu") -> tuple:
    """(median, min) microseconds per call of ``fn`` over ``repeats`` samples of ``calls`` calls each."""
    cuda = str(device).startswith("cuda")
    for _ in range(min(calls, 50)):  # warm-up: first-call costs (lazy imports, caches) are not per-call
        fn()
    if cuda:
        torch.cuda.synchronize()
    loop = range(calls)
    samples = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection inside one sample would be charged to whatever op triggered it
    try:
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            for _ in loop:
                fn()
            if cuda:
                torch.cuda.synchronize()
            samples.append((time.perf_counter_ns() - t0) / calls / 1e3)
            # the young generation only: what the calls left; a full collection takes ~0.3 s in a process that
            # has imported transformers and triton (100 s of the quick section, 335 of them)
            gc.collect(0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return statistics.median(samples), min(samples)


def floor_calls(device: str = "cpu") -> list:
    """``(name, fn)`` reference points on a [1, 32] fp32 input: what any op call costs at least."""
    x = torch.randn(1, 32, generator=torch.Generator().manual_seed(0)).to(device)
    aten_abs = torch.ops.aten.abs.default
    return [("empty Python call (timing loop)", lambda: None), ("torch.ops.aten.abs.default(x)", lambda: aten_abs(x)),
            ("torch.abs(x)", lambda: torch.abs(x)), ("x.amax(-1)", lambda: x.amax(-1))]


def _family_calls(device: str) -> tuple[list, list]:
    """(tiny calls from every family's bench module, registered ops no family covers)."""
    import leankern

    from . import FAMILIES, family_module

    calls = []
    for fam in FAMILIES:
        mod = family_module(fam)
        if hasattr(mod, "tiny_calls"):
            calls += mod.tiny_calls(device)
    covered = {c.op for c in calls}
    return calls, [op for op in leankern.registered_ops() if op not in covered]


def _backend_label(op: str, device: str) -> str:
    from ..core import backend_for

    be = backend_for(op, device)
    return "REFERENCE" if be == "ref" else be


def _row(call: TinyCall, device: str, calls: int, repeats: int) -> dict:
    raw, raw_min = per_call_us(call.raw, calls, repeats, device)
    api, api_min = per_call_us(call.api, calls, repeats, device) if call.api else (None, None)
    plain, plain_min = per_call_us(call.plain, calls, repeats, device)
    row = {"op": call.op, "input": call.label, "runs_on": _backend_label(call.op, device), "raw_us": raw,
           "raw_min_us": raw_min, "api": call.api_name, "api_us": api, "api_min_us": api_min, "plain": call.plain_name,
           "plain_us": plain, "plain_min_us": plain_min, "raw_x_plain": raw / plain,
           "api_x_plain": api / plain if api else None, "device": str(device).split(":")[0]}
    if row["device"] == "cpu":
        worst = max(raw, api or 0.0)
        row["target"] = "yes" if worst <= TARGET_US else f"no ({'api' if (api or 0) > raw else 'raw'})"
    return row


COLUMNS = [("op", "op", "<"), ("input", "input", "<"), ("runs_on", "runs on", "<"), ("raw_us", "raw us", ".2f"),
           ("raw_x_plain", "x plain", ".1f"), ("api_us", "api us", ".2f"), ("api_x_plain", "x plain", ".1f"),
           ("plain", "plain op (same input)", "<"), ("plain_us", "plain us", ".2f"), ("target", "<= 10 us", "")]
FLOOR_COLUMNS = [("name", "floor", "<"), ("us", "us/call", ".2f"), ("min_us", "min", ".2f")]


def run(quick: bool = False, device: str = "cpu", csv_path=None, out=print, full: bool = False,
        bw_gbps: float | None = None, output_cache_mb: int = 0, **_ignored) -> BenchResult:
    """Time every registered op on a tiny input and print the overhead section (header, floors, table)."""
    calls, repeats = (QUICK_CALLS, QUICK_REPEATS) if quick else (CALLS, REPEATS)
    bw = bw_gbps or measure_copy_bandwidth(device)
    out(section_header("overhead", device, bw, "quick" if quick else "", output_cache_mb))
    if busy_note(device):
        out(busy_note(device))
    floors = []
    for name, fn in floor_calls(device):
        med, mn = per_call_us(fn, calls, repeats, device)
        floors.append({"name": name, "us": med, "min_us": mn})
    tiny, uncovered = _family_calls(device)
    rows = [_row(c, device, calls, repeats) for c in tiny]
    rows += [{"op": op, "input": "(no tiny call: add one to tiny_calls)",
              "runs_on": _backend_label(op, device), "target": "?"} for op in uncovered]
    out(format_table(floors, FLOOR_COLUMNS))
    out(format_table(rows, COLUMNS))
    out(f"us per call: median of {repeats} samples x {calls} back-to-back calls (min in the CSV); raw = "
        "torch.ops.leankern.<op>, api = the public front-end; x plain = that time / the plain op's; "
        f"runs on = leankern.backend_for(op, '{str(device).split(':')[0]}')")
    if rows and str(device).startswith("cpu"):
        met = sum(r.get("target") == "yes" for r in rows)
        out(f"overhead target (<= {TARGET_US:.0f} us per call, raw and api) met on {met}/{len(rows)} rows")
    meta = {"calls": calls, "repeats": repeats}
    if csv_path:
        write_csv(csv_path, [{"kind": "floor", **f} for f in floors] + [{"kind": "op", **r} for r in rows], meta)
        out(f"wrote {csv_path}")
    return BenchResult(rows, bw, device, {**meta, "floors": floors})


def main(argv=None) -> int:
    """``python bench/bench_overhead.py [--quick] [--csv PATH] [--device cpu|cuda]``."""
    from . import bench_main

    return bench_main(argv, families=("overhead",), prog="bench_overhead.py")
