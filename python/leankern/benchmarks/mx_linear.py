"""Block-quantized linear (``leankern.mx.linear``) on CPU: decode GEMV/GEMM against torch.

Rows: weight [N, K] in a format, x [M, K] bf16, weights cold (a fresh set of weight buffers per
call, cycling through more bytes than the last-level cache holds, as in decode where every layer's
weights stream from memory). Contenders: ours, torch bf16 ``F.linear`` on the same cold weights,
and what a user would otherwise do with our quantizer (dequantize, then ``F.linear``).
GB/s counts the bytes ours reads (codes + scales + x) and writes (y); %bw is that over the copy
bandwidth measured in this run. Target (issue: block-quantized linear) at M = 1: >= 0.9 of the
read bandwidth; this section reports where the first kernel stands.
"""
from __future__ import annotations

import contextlib
import statistics

import torch
import torch.nn.functional as F

from .harness import BenchResult, format_table, measure_copy_bandwidth, section_header, time_fn, write_csv

FAMILY = "mx_linear"
COLUMNS = [
    ("fmt", "weight", "<"), ("act", "act", "<"), ("shape", "M x N x K", "<"), ("ours_ms", "ours ms", ".3f"),
    ("gbps", "GB/s", ".1f"), ("frac_bw", "%bw", ".0%"), ("bf16_ms", "torch bf16 ms", ".3f"),
    ("x_bf16", "x bf16", ".2f"), ("deq_ms", "dequant+F.linear ms", ".3f"), ("x_deq", "x dequant", ".1f"),
]
_COLD_BYTES = 256 << 20  # > any L3 here: weights come from memory


def _plan(quick: bool, full: bool):
    fmts = ["mxint8", "mxfp8_e4m3", "mxfp4", "mxint4", "nvfp4"]
    if full:
        fmts = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8", "mxint6", "mxint4",
                "nvfp4", "nvint4"]
    ms = (1,) if quick else (1, 16) if not full else (1, 4, 16, 64)
    shapes = [(4096, 4096)] if not full else [(4096, 4096), (14336, 4096), (4096, 14336)]
    rows = [(f, None, m, n, k) for f in fmts for m in ms for (n, k) in shapes]
    if not quick:
        rows += [("mxint8", "mxint8", 16, 4096, 4096)]
    return rows


def _cold_copies(make, nbytes_each: int) -> list:
    return [make() for _ in range(max(2, _COLD_BYTES // max(nbytes_each, 1)))]


def _cycle(items):
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return nxt


def _row(fmt, act, m, n, k, bw, repeats):
    import leankern

    gen = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=gen)
    qt = leankern.mx.quantize(w, fmt)
    wbytes = qt.codes.numel() * qt.codes.element_size() + qt.scales.numel() * qt.scales.element_size()
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    qts = _cold_copies(lambda: leankern.MXTensor(qt.codes.clone(), qt.scales.clone(), qt.global_scale, qt.fmt,
                                                 qt.block_size, qt.shape, qt.dtype), wbytes)
    wbf = _cold_copies(lambda: w.to(torch.bfloat16), n * k * 2)
    nq, nw = _cycle(qts), _cycle(wbf)
    ours = statistics.median(time_fn(lambda: leankern.mx.linear(x, nq(), act_fmt=act), warmup=3, repeats=repeats,
                                     min_time=0.3))
    bf16 = statistics.median(time_fn(lambda: F.linear(x, nw()), warmup=3, repeats=repeats, min_time=0.3))
    deq = statistics.median(time_fn(lambda: F.linear(x, nq().dequantize(torch.bfloat16)), warmup=2,
                                    repeats=max(3, repeats // 3), min_time=0.2))
    moved = wbytes + x.numel() * 2 + m * n * 2
    gbps = moved / ours / 1e9
    return dict(fmt=fmt, act=act or "-", shape=f"{m}x{n}x{k}", ours_ms=ours * 1e3, gbps=gbps, frac_bw=gbps / bw,
                bf16_ms=bf16 * 1e3, x_bf16=bf16 / ours, deq_ms=deq * 1e3, x_deq=deq / ours, weight_bytes=wbytes)


def run(quick: bool = False, full: bool = False, device: str = "cpu", sizes=None, csv_path=None, plot_path=None,
        aot: bool = True, bw_gbps: float | None = None, output_cache_mb: int = 0, out=print) -> BenchResult:
    import leankern

    if device != "cpu":
        out(f"== {FAMILY} == skipped on {device}: the GPU kernels of mx.linear do not exist yet")
        return BenchResult([], bw_gbps or 0.0, device)
    bw = bw_gbps or measure_copy_bandwidth(device)
    mode = "quick" if quick else "full" if full else "default"
    out(section_header(FAMILY, device, bw, mode, output_cache_mb))
    out(f"mx_linear runs on: {leankern.backend_for('mx_linear', device)}")
    rows = []
    with leankern.output_cache.enabled(output_cache_mb) if output_cache_mb else contextlib.nullcontext():
        for fmt, act, m, n, k in _plan(quick, full):
            rows.append(_row(fmt, act, m, n, k, bw, repeats=5 if quick else 15))
    out(format_table(rows, COLUMNS))
    out("x bf16 / x dequant = their time / ours; weights cold (cycled through 256 MiB of copies); "
        "GB/s = (codes + scales + x + y bytes) / time")
    if csv_path:
        write_csv(csv_path, rows, {"family": FAMILY, "bw_gbps": bw})
        out(f"wrote {csv_path}")
    return BenchResult(rows, bw, device)


def tiny_calls(device: str = "cpu") -> list:
    """mx_linear's overhead rows live in :func:`leankern.benchmarks.mx.tiny_calls`."""
    return []

