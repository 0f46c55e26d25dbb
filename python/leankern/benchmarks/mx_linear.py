"""Block-quantized linear (``leankern.mx.linear``): decode GEMV and prefill GEMM against torch.

CPU rows: weight [N, K] in a format, x [M, K] bf16, weights cold (a fresh set of weight buffers per
call, cycling through more bytes than the last-level cache holds, as in decode where every layer's
weights stream from memory), per ISA path of the C++ kernels ("amx": avx512bf16 with the AMX prefill kernel,
on CPUs that have AMX; "avx512bf16" is then the same ISA without it), prepacked (``leankern.mx.prepack``,
what the modules use) and row-major layouts. Contenders: torch bf16 ``F.linear`` on the same cold
weights, and what a user would otherwise do with our quantizer (dequantize the row-major weight
``mx.quantize`` returns to bf16, then ``F.linear``; on its own cold copies, so prepacked rows do not charge
it our layout's unpacking). Each is timed in its own block of calls (see :func:`_timed`). Before timing,
every row's output is checked against dequantize + fp32 matmul (:func:`check_linear`; a mismatch raises).
GB/s counts the bytes ours reads (codes + scales + x) and writes (y); %rd is that over the read
bandwidth measured just before and after the row (``rd GB/s``, ``torch.sum`` over 256 MiB, the mean).
roof = our time over the roofline max(bytes / that read bandwidth, FLOPs / torch bf16 ``F.linear``
throughput at M = 512 in this run). ``rd<ours`` flags a row with %rd > 100%, or roof < 1 where the bytes
make the roof: the read measure was beaten, so the fraction is not evidence (a dual product beating torch's
bf16 FLOP rate is a result, not flagged).
Targets (issue: block-quantized linear): M = 1 >= 0.9 of the read bandwidth and >= 3.3x (4-bit)
/ 1.7x (8-bit) torch bf16; M = 4, 16 within 1.25x of the roofline; M = 512 weight-only 4-bit
>= 0.8x torch bf16. CUDA rows: the Triton kernels (see ``_run_cuda``).
"""
from __future__ import annotations

import contextlib
import statistics

import torch
import torch.nn.functional as F

from .harness import (BenchResult, beaten, busy_note, format_table, measure_copy_bandwidth,
                      read_buffer, read_gbps, section_header, time_fn, write_csv)
from .harness import cold_copies as _cold_copies  # noqa: F401 (bench/bench_mx_few_rows.py imports them from here)
from .harness import cycle as _cycle

FAMILY = "mx_linear"
COLUMNS = [
    ("isa", "ISA", "<"), ("fmt", "weight", "<"), ("act", "act", "<"), ("layout", "layout", "<"),
    ("shape", "M x N x K", "<"), ("ours_ms", "ours ms", ".3f"), ("gbps", "GB/s", ".1f"), ("frac_rd", "%rd", ".0%"),
    ("gflops", "GFLOP/s", ".1f"), ("roof", "x roof", ".2f"), ("bf16_ms", "torch bf16 ms", ".3f"),
    ("x_bf16", "x bf16", ".2f"), ("deq_ms", "dequant+F.linear ms", ".3f"), ("x_deq", "x dequant", ".2f"),
    ("rd_gbps", "rd GB/s", ".1f"), ("rd_beaten", "rd<ours", "flag"),
]


def measure_read_bandwidth(nbytes: int = 2**28, repeats: int = 7) -> float:
    """GB/s of ``torch.sum`` over a ``nbytes`` fp32 buffer (bytes read / time, median; at least 0.5 s timed)."""
    return read_gbps(read_buffer(nbytes), repeats, min_time=0.5)


def _plan(quick: bool, full: bool):
    """(fmt, act, M, N, K, layout) rows."""
    fmts = ["mxint8", "mxfp8_e4m3", "mxfp4", "mxint4", "nvfp4"]
    if full:
        fmts = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8", "mxint6", "mxint4",
                "nvfp4", "nvint4"]
    ms = (1,) if quick else (1, 4, 16) if not full else (1, 4, 16, 64, 512)
    shapes = [(4096, 4096)] if not full else [(4096, 4096), (14336, 4096), (4096, 14336)]
    rows = [(f, None, m, n, k, "prepacked") for f in fmts for m in ms for (n, k) in shapes]
    rows += [(f, None, 1, 4096, 4096, "row_major") for f in fmts[:3 if quick else None]]
    if not quick:
        rows += [("mxint8", "mxint8", 16, 4096, 4096, "prepacked"), ("mxfp4", None, 64, 4096, 4096, "prepacked")]
        if not full:
            rows += [("mxfp4", None, 512, 4096, 4096, "prepacked"), ("mxint8", "mxint8", 512, 4096, 4096, "prepacked"),
                     ("mxfp4", "mxfp4", 512, 4096, 4096, "prepacked"), ("mxint4", "mxint4", 512, 4096, 4096, "prepacked"),
                     ("mxfp8_e4m3", "mxfp8_e4m3", 512, 4096, 4096, "prepacked")]
        else:
            rows += [("mxint8", "mxint8", 512, n, k, "prepacked") for (n, k) in shapes]
    return rows


def cold_weights(qt, w=None):
    """(next_qt, next_w_bf16 or None, weight bytes): callables cycling through copies of the MXTensor `qt` (and of
    `w` in bf16) that fill COLD_BYTES, so every call reads its weight from memory."""
    import leankern

    wbytes = qt.codes.numel() * qt.codes.element_size() + qt.scales.numel() * qt.scales.element_size()
    nq = _cycle(_cold_copies(lambda: leankern.MXTensor(qt.codes.clone(), qt.scales.clone(), qt.global_scale, qt.fmt,
                                                       qt.block_size, qt.shape, qt.dtype, layout=qt.layout), wbytes))
    nw = None if w is None else _cycle(_cold_copies(lambda: w.to(torch.bfloat16), w.numel() * 2))
    return nq, nw, wbytes


def avx512bf16_ready(note: str = "") -> bool:
    """Whether the C++ extension runs its avx512bf16 ISA path here; prints why not (the bench/ A/B scripts then exit)."""
    import leankern

    ext = leankern._C
    ok = bool(ext) and "avx512bf16" in ext.supported_isas()
    if not ok:
        print(f"needs the C++ extension on a CPU with AVX512-BF16{note}")
    return ok


@contextlib.contextmanager
def avx512bf16_session(amx: bool = False, **switches: bool):
    """The bench/ A/B scripts' setting: 2 threads, the C++ extension on its avx512bf16 ISA path with AMX on or off,
    and any of its boolean switches (``mx_set_few_rows_fma=True``: name -> value; each returns its previous value);
    every one restored on exit, the ISA to "auto". Yields the extension."""
    import leankern

    ext = leankern._C
    torch.set_num_threads(2)
    ext.set_cpu_isa("avx512bf16")
    was = {"set_amx": ext.set_amx(amx)}
    try:
        for name, value in switches.items():
            was[name] = getattr(ext, name)(value)
        yield ext
    finally:
        for name, value in was.items():
            getattr(ext, name)(value)
        ext.set_cpu_isa("auto")


def ab_cases(shapes, fmts, ms, x_dtype=torch.bfloat16):
    """The bench/ A/B scripts' cases: per shape (N, K) and format, a random weight quantized and prepacked with its
    cold copies (cold_weights), then per row count M a random x; yields (fmt, m, n, k, x, next_qt, next_w_bf16,
    weight bytes). The copies of one (shape, format) are dropped before the next are made."""
    import leankern

    for n, k in shapes:
        for fmt in fmts:
            gen = torch.Generator().manual_seed(n + k)
            w = torch.randn(n, k, generator=gen)
            nq, nw, wbytes = cold_weights(leankern.mx.prepack(leankern.mx.quantize(w, fmt)), w)
            for m in ms:
                yield fmt, m, n, k, torch.randn(m, k, generator=gen).to(x_dtype), nq, nw, wbytes
            del nq, nw


def _timed(fn, m, repeats):
    """Median seconds of fn, its calls back to back (each on the next cold copy); large products (seconds per call)
    get fewer samples. Not in turn with the baselines: a call right after the dequant baseline (32 MB of bf16
    written) paid for those dirty lines' write-back, 1.2-1.5x ours at M = 1 (mxfp4 4096 x 4096, Zen 4,
    2026-12-07), a bias against whichever contender follows it."""
    if m >= 256:
        return statistics.median(time_fn(fn, warmup=1, repeats=3, min_time=0.0))
    return statistics.median(time_fn(fn, warmup=3, repeats=repeats, min_time=0.3))


# The check before timing: leankern.testing's tolerance for "block-quantized matmul vs dequantize-then-fp32-matmul"
# (TOLERANCES[fmt]: exact products, fp32 sums in any order; NV: the decode scale g * s rounded once more), widened by
# the one rounding of the bf16 output (half a bf16 ulp: 2^-9 relative; 2^-8 allowed).
_BF16_OUT_RTOL = 2.0**-8


def check_linear(x, qt_row_major, y, act=None) -> float:
    """Raise AssertionError unless ``y`` (ours: ``mx.linear(x, w, act_fmt=act)``, bf16) is within the tolerance above
    of the reference (``leankern.mx.ref.mx_linear_ref`` in fp32: the weight dequantized, x quantized to ``act`` when
    given, fp32 matmul); returns max |y - ref| / max |ref| (for the CSV)."""
    from leankern.mx.ref import mx_linear_ref
    from leankern.testing.compare import Tolerance, assert_close, get_tolerance

    q = qt_row_major
    ref = mx_linear_ref(x.float(), q.codes, q.scales, q.global_scale, q.fmt, q.block_size, None, act)  # fp32
    base = get_tolerance(q.fmt)
    tol = Tolerance(atol=base.atol, rtol=base.rtol + _BF16_OUT_RTOL, atol_rms=base.atol_rms)
    assert_close(y.float(), ref, tol, name=f"mx.linear {q.fmt} act={act} M={x.shape[0]} vs dequantize + fp32 matmul")
    return float((y.float() - ref).abs().max() / ref.abs().max().clamp(min=1e-30))


def _row(fmt, act, m, n, k, layout, big, bf16_512, repeats, isa):
    import leankern

    gen = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=gen)
    qt_rm = leankern.mx.quantize(w, fmt)  # row-major: what mx.quantize returns, what a user dequantizes
    qt = leankern.mx.prepack(qt_rm) if layout == "prepacked" else qt_rm
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    # correctness before timing: ours on this row's weight and x against the reference (raises on a mismatch)
    maxrel = check_linear(x, qt_rm, leankern.mx.linear(x, qt, act_fmt=act), act)
    # every contender cycles through its own 256 MiB of copies (equally cold): ours the row's layout, torch the
    # bf16 weight, the dequant baseline the row-major MXTensor (dequantizing a prepacked one would first unpack it,
    # a permute + copy no user pays: users dequantize what mx.quantize returns)
    nq, nw, wbytes = cold_weights(qt, w)
    nr = cold_weights(qt_rm)[0]
    # the read bandwidth (the denominator of %rd and of the roofline's bytes) just before and after the row's
    # timings, the mean (harness.read_gbps, as moe / vocab / sefp): this host read 29-66 GB/s from run to run
    bw0 = read_gbps(big)
    ours = _timed(lambda: leankern.mx.linear(x, nq(), act_fmt=act), m, repeats)
    bf16 = _timed(lambda: F.linear(x, nw()), m, repeats)
    deq = _timed(lambda: F.linear(x, nr().dequantize(torch.bfloat16)), m, max(3, repeats // 3))
    bw_rd = (bw0 + read_gbps(big)) / 2
    del nq, nw, nr
    moved = wbytes + x.numel() * 2 + m * n * 2
    flops = 2 * m * n * k
    mem_s, flop_s = moved / (bw_rd * 1e9), flops / bf16_512[(n, k)]
    roofline = max(mem_s, flop_s)
    frac_rd = moved / ours / 1e9 / bw_rd
    return dict(isa=isa, fmt=fmt, act=act or "-", layout=layout, shape=f"{m}x{n}x{k}", ours_ms=ours * 1e3,
                gbps=moved / ours / 1e9, frac_rd=frac_rd, gflops=flops / ours / 1e9,
                roof=ours / roofline, bf16_ms=bf16 * 1e3, x_bf16=bf16 / ours, deq_ms=deq * 1e3, x_deq=deq / ours,
                weight_bytes=wbytes, rd_gbps=bw_rd, rd_beaten=beaten(frac_rd, ours / roofline if mem_s >= flop_s else None), check="ok",
                maxrel=maxrel)


def _bf16_throughput_512(n, k) -> float:
    """FLOP/s of torch bf16 F.linear at M = 512 (the compute side of the roofline)."""
    x = torch.randn(512, k).to(torch.bfloat16)
    w = torch.randn(n, k).to(torch.bfloat16)
    # warm-up of 3 and a median of >= 5 over >= 1 s: with 1 + 3 the first shape of a run sometimes read half
    # of torch's throughput (oneDNN set-up, fresh pages), which flattered every "x roof" of that shape
    t = statistics.median(time_fn(lambda: F.linear(x, w), warmup=3, repeats=5, min_time=1.0))
    return 2 * 512 * n * k / t


def _isas(full: bool) -> list:
    import leankern

    ext = leankern.extension()
    simd = [i for i in ("avx512bf16", "avx512", "avx2") if i in ext.supported_isas()]
    if ext.amx_supported():  # "amx": avx512bf16 with its AMX prefill kernel; "avx512bf16" then runs without it
        simd.insert(0, "amx")
    return simd if full else simd[:1]


@contextlib.contextmanager
def _on_isa(ext, isa: str):
    """The C++ kernels on one ISA path ("amx" = avx512bf16 with AMX on; avx512bf16 = with AMX off)."""
    ext.set_cpu_isa("avx512bf16" if isa == "amx" else isa)
    was = ext.set_amx(isa == "amx")
    try:
        yield
    finally:
        ext.set_cpu_isa("auto")
        ext.set_amx(was)


def run(quick: bool = False, full: bool = False, device: str = "cpu", sizes=None, csv_path=None, plot_path=None,
        aot: bool = True, bw_gbps: float | None = None, output_cache_mb: int = 0, out=print) -> BenchResult:
    import leankern

    if str(device).startswith("cuda"):
        return _run_cuda(quick, full, device, csv_path, aot, bw_gbps, out)
    if device != "cpu":
        out(f"== {FAMILY} == skipped on {device}: no kernels for this device")
        return BenchResult([], bw_gbps or 0.0, device)
    bw = bw_gbps or measure_copy_bandwidth(device)
    bw_rd = measure_read_bandwidth()
    mode = "quick" if quick else "full" if full else "default"
    out(section_header(FAMILY, device, bw, mode, output_cache_mb))
    out(f"read bandwidth (torch.sum over 256 MiB): {bw_rd:.1f} GB/s at the start (each row: rd GB/s, measured just "
        f"before and after it); mx_linear runs on: {leankern.backend_for('mx_linear', device)}")
    note = busy_note(device)
    if note:
        out(note)
    plan = _plan(quick, full)
    bf16_512 = {(n, k): _bf16_throughput_512(n, k) for (n, k) in sorted({(r[3], r[4]) for r in plan})}
    out("torch bf16 F.linear at M = 512: " + ", ".join(f"{n}x{k}: {v / 1e9:.1f} GFLOP/s" for (n, k), v in
                                                      bf16_512.items()))
    ext = leankern.extension()
    rows = []
    big = read_buffer()  # torch.sum over 256 MiB: the read bandwidth of every row
    with leankern.output_cache.enabled(output_cache_mb) if output_cache_mb else contextlib.nullcontext():
        for isa in _isas(full):
            with _on_isa(ext, isa):
                for fmt, act, m, n, k, layout in plan:
                    rows.append(_row(fmt, act, m, n, k, layout, big, bf16_512, 5 if quick else 11, isa))
    del big
    out(format_table(rows, COLUMNS))
    out("x bf16 / x dequant = their time / ours (dequant: the row-major weight mx.quantize returns, dequantized to "
        "bf16, then F.linear); x roof = ours / roofline; weights cold (cycled through 256 MiB of copies, each "
        "contender its own), each timed in its own block; GB/s = (codes + scales + x + y "
        "bytes) / time; %rd = GB/s / read bandwidth measured just before and after the row (rd GB/s, the mean); "
        "rd<ours = yes: %rd > 100%, or x roof < 1 where the bytes make the roof: the read measure was beaten (data "
        "from cache or a slow measure), so that fraction is not evidence (beating torch's FLOP rate is not flagged); every row's output checked against dequantize + fp32 matmul before timing")
    if csv_path:
        write_csv(csv_path, rows, {"family": FAMILY, "bw_gbps": bw, "read_bw_gbps": bw_rd})
        out(f"wrote {csv_path}")
    return BenchResult(rows, bw, device)


# ----------------------------------------------------------------------------- CUDA (Triton)
CUDA_COLUMNS = [
    ("fmt", "weight", "<"), ("act", "act", "<"), ("shape", "M x N x K", "<"), ("path", "kernel", "<"),
    ("maxrel", "max rel err", ".1e"), ("ours_ms", "ours ms", ".4f"), ("gbps", "GB/s", ".0f"),
    ("frac_bw", "%bw", ".0%"), ("tflops", "TFLOP/s", ".1f"), ("bf16_ms", "F.linear bf16 ms", ".4f"),
    ("x_bf16", "x bf16", ".2f"), ("smm_ms", "_scaled_mm ms", ".4f"), ("x_smm", "x scaled_mm", ".2f"),
]


def _cuda_plan(quick: bool, full: bool):
    fmts = ["mxfp4", "nvfp4", "mxint4", "mxfp8_e4m3", "mxint8"]
    if full:
        fmts = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8", "mxint6", "mxint4",
                "nvfp4", "nvint4"]
    ms = (1, 16) if quick else (1, 16, 128, 1024)
    shapes = [(4096, 4096)] if quick else [(4096, 4096), (14336, 4096)]
    rows = [(f, None, m, n, k) for f in fmts for m in ms for (n, k) in shapes]
    duals = [("mxint8", "mxint8"), ("mxfp8_e4m3", "mxfp8_e4m3"), ("mxfp4", "mxfp4"), ("nvfp4", "nvfp4")]
    rows += [(w, a, m, 4096, 4096) for a, w in duals for m in ((16,) if quick else (16, 1024))]
    return rows


def _scaled_mm_fn(x_bf16, w, fmt):
    """torch._scaled_mm on per-tensor e4m3 operands (what a user has without block formats), or None."""
    if not fmt.startswith("mxfp8") or not hasattr(torch, "_scaled_mm") or x_bf16.shape[0] % 16:
        return None
    try:
        a = x_bf16.to(torch.float8_e4m3fn)
        b = w.to(torch.bfloat16).to(torch.float8_e4m3fn).t()  # column-major [K, N]
        one = torch.ones((), device=x_bf16.device)
        fn = lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16)  # noqa: E731
        fn()
        return fn
    except (RuntimeError, TypeError):
        return None


def _cuda_row(fmt, act, m, n, k, device, bw, repeats):
    import leankern
    from leankern.triton_kernels.mx_linear import dual_mode

    gen = torch.Generator(device=device).manual_seed(n + k)
    w = torch.randn(n, k, generator=gen, device=device)
    qt = leankern.mx.quantize(w, fmt)
    x = torch.randn(m, k, generator=gen, device=device).to(torch.bfloat16)
    with leankern.use_backend("triton"):
        y = leankern.mx.linear(x, qt, act_fmt=act)
    ref = leankern.mx.ref.mx_linear_ref(x, qt.codes, qt.scales, qt.global_scale, qt.fmt, qt.block_size, None, act)
    maxrel = float((y.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-30))
    ours = statistics.median(time_fn(lambda: leankern.mx.linear(x, qt, act_fmt=act), device=device, warmup=3,
                                     repeats=repeats, min_time=0.2, graph=True))
    wbf = w.to(torch.bfloat16)
    bf16 = statistics.median(time_fn(lambda: F.linear(x, wbf), device=device, warmup=3, repeats=repeats,
                                     min_time=0.2, graph=True))
    smm_fn = _scaled_mm_fn(x, w, fmt)
    smm = statistics.median(time_fn(smm_fn, device=device, warmup=3, repeats=repeats, min_time=0.2, graph=True)) \
        if smm_fn else None
    wbytes = qt.codes.numel() * qt.codes.element_size() + qt.scales.numel() * qt.scales.element_size()
    moved = wbytes + x.numel() * 2 + m * n * 2
    path = "weight-only bf16 dot" if act is None else f"dual {dual_mode(act, fmt, qt.block_size, device) or 'dequant-x'}"
    return dict(fmt=fmt, act=act or "-", shape=f"{m}x{n}x{k}", path=path, maxrel=maxrel, ours_ms=ours * 1e3,
                gbps=moved / ours / 1e9, frac_bw=moved / ours / 1e9 / bw, tflops=2 * m * n * k / ours / 1e12,
                bf16_ms=bf16 * 1e3, x_bf16=bf16 / ours, smm_ms=(smm or float("nan")) * 1e3,
                x_smm=(smm / ours) if smm else float("nan"), weight_bytes=wbytes)


def _run_cuda(quick, full, device, csv_path, aot, bw_gbps, out):
    """Triton mx_linear on the GPU vs torch bf16 F.linear and torch._scaled_mm (fp8 rows), CUDA-graph timed."""
    import leankern

    bw = bw_gbps or measure_copy_bandwidth(device)
    out(section_header(FAMILY, device, bw, "quick" if quick else "full" if full else "default"))
    out(f"mx_linear runs on: {leankern.backend_for('mx_linear', device)}")
    rows = []
    for fmt, act, m, n, k in _cuda_plan(quick, full):
        try:
            rows.append(_cuda_row(fmt, act, m, n, k, device, bw, repeats=10 if quick else 25))
        except Exception as exc:  # one failing row must not hide the others' numbers
            out(f"{fmt} act={act} {m}x{n}x{k}: FAILED {type(exc).__name__}: {exc}")
    out(format_table(rows, CUDA_COLUMNS))
    out("max rel err = max|ours - ref| / max|ref| (ref: dequantize, fp32 matmul); x bf16 / x scaled_mm = their "
        "time / ours; GB/s = (codes + scales + x + y bytes) / time; CUDA-graph replay timing")
    if aot:
        try:
            from leankern.triton_kernels import aot as taot

            report = []
            for spec in taot.linear_specs(quick=True):
                for t in spec.targets:
                    use = taot.resource_usage(taot.compile_spec(spec, taot.TARGETS[t]), taot.TARGETS[t])
                    report.append(dict(kernel=spec.name, target=t, num_warps=spec.num_warps, **use))
            out(taot.format_report(report))  # registers / shared memory / spills of the linear kernels
        except Exception as exc:  # noqa: BLE001 - the report is informational
            out(f"AOT report unavailable: {exc}")
    if csv_path:
        write_csv(csv_path, rows, {"family": FAMILY, "bw_gbps": bw})
        out(f"wrote {csv_path}")
    return BenchResult(rows, bw, device)


def tiny_calls(device: str = "cpu") -> list:
    """mx_linear's overhead rows live in :func:`leankern.benchmarks.mx.tiny_calls`."""
    return []

