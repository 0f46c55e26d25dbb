"""SEFP GEMM benchmark: ``sefp.linear`` at every mantissa width from one stored copy.

Shapes (issue 10): W [N, K] = 4096 x 4096, 14336 x 4096 and 4096 x 14336 (an MLP's up and down
projections), quantized once at m_max = 8, block 32, bf16 activations. Decode (M = 1): weights cold
(every call takes the next of copies holding 256 MiB of what the narrowest width reads, so each reads DRAM;
before 2026-12-05 a 64 MiB buffer was rewritten between calls on one copy, and the 480 MiB L3 of the Xeon
kept part of it), bytes = the planes read
((1 + m) / 8 per weight) + the exponents (1 / 32), GB/s and ``%rd`` against the read bandwidth measured in the same run
(``torch.sum`` over 256 MiB); ``t/t8`` = time at m over time at m = 8 (target t(3)/t(8) <= 0.6); the widths and the
bf16 baseline of a shape are timed in turn within each of 2 x repeats + 1 rounds (medians), the read bandwidth
(``rd GB/s``, the denominator of these rows' %rd) just before and after them (the mean).
Baselines: ``bf16`` = torch ``F.linear`` on the bf16 weight (2 bytes per weight), ``deq+lin`` =
``sefp.dequantize(m, bf16)`` then ``F.linear`` (what a user without the kernel would do), and for
m <= 7 the single-width packed copies: ``pk`` = ``SEFPTensor.packed(m)`` (sign + m bits per weight contiguous,
the same bytes as the planes at m; timed in the same rounds, ``pk %rd`` of the same read bandwidth) through
``sefp.linear``, and ``mx pk`` = ``packed(m, layout="mx")`` (an mxint8 / mxint4 MXTensor) through
``leankern.mx.linear``. M = 16 (a small batch, or a speculative verification
step): the fused path, GB/s of the planes read. Prefill (M = 512): ``x bf16`` = torch bf16 ``F.linear``
time / ours (target >= 0.7), medians of >= 5 calls. Every output (planes at each m, the packed copies, the M = 512
path's first 8 rows) is checked against dequantize + fp32 matmul before its row is timed (a mismatch raises).
``rd<ours`` flags a row whose %rd (or pk %rd) exceeds 100%: the measure was beaten, so that %rd is not evidence.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..sefp.packed import SEFPPacked
from ..sefp.tensor import SEFPTensor
from .harness import (BenchResult, beaten, cold_copies, cpu_isa, cpu_model, cycle, format_table, median_us_cold,
                      median_us_cold_interleaved, no_flush, read_buffer, read_gbps, write_csv)
from .mx_linear import measure_read_bandwidth

FAMILY = "sefp"
SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]  # (N, K): the square, up and down projections
COLUMNS = [("shape", "W [N, K]", ""), ("M", "M", ""), ("m", "m", ""), ("bits", "bits/w", ".3f"),
           ("ours_us", "ours us", ".0f"), ("gbps", "GB/s", ".1f"), ("frac_rd", "%rd", ".0%"),
           ("t_t8", "t/t8", ".2f"), ("rd_gbps", "rd GB/s", ".1f"), ("bf16_us", "bf16 us", ".0f"),
           ("x_bf16", "x bf16", ".2f"),
           ("deq_us", "deq+lin us", ".0f"), ("x_deq", "x deq", ".2f"), ("pk_us", "pk us", ".0f"),
           ("pk_frac_rd", "pk %rd", ".0%"), ("packed_us", "mx pk us", ".0f"),
           ("check", "check", ""), ("rd_beaten", "rd<ours", "flag")]


def _plan(quick: bool, full: bool):
    shapes = SHAPES[:1] if quick else SHAPES
    decode_ms = (8, 3) if quick else (8, 7, 6, 5, 4, 3, 2)
    prefill_ms = () if quick else (8, 4) if not full else (8, 6, 4, 3, 2)
    return shapes, decode_ms, prefill_ms


def _check(x, w, m, y, what: str = "") -> str:
    """ours against dequantize-then-fp32-matmul (bf16 output: one rounding, plus fp32 order error): "ok", or an
    AssertionError (run before the row is timed: a wrong kernel gets no time)."""
    ref = (x.float() @ w.dequantize(m, torch.float32).t())
    err = (y.float() - ref).abs().max().item()
    scale = ref.abs().max().item() + 1e-30
    assert err <= 2.0**-7 * scale, (f"sefp {what} m={m} M={x.shape[0]} W {tuple(w.shape)}: max |ours - ref| {err:.3g} > "
                                    f"2^-7 max |ref| ({scale:.3g})")
    return "ok"


def _check_mx(x, mxt, y, what: str) -> None:
    """``packed(m, layout="mx")`` through mx.linear against its own dequantization, fp32 matmul (same bound)."""
    ref = x.float() @ mxt.dequantize(torch.float32).t()
    err = (y.float() - ref).abs().max().item()
    scale = ref.abs().max().item() + 1e-30
    assert err <= 2.0**-7 * scale, f"sefp {what}: max |ours - ref| {err:.3g} > 2^-7 max |ref| ({scale:.3g})"


def _rows_for_shape(N, K, decode_ms, prefill_ms, bw_rd, repeats):
    import leankern
    from leankern import sefp

    from .mx_linear import cold_weights

    g = torch.Generator().manual_seed(N + K)
    w_bf16 = (torch.randn(N, K, generator=g) * 0.02).to(torch.bfloat16)
    wq = sefp.quantize(w_bf16, m_max=8)
    # cold: every call takes the next of copies holding COLD_BYTES of what the narrowest width reads, so a copy is
    # read again only after that much other weight data (from DRAM, harness.COLD_BYTES)
    least = wq.nbytes(min(tuple(decode_ms) + tuple(prefill_ms)))
    nq = cycle(cold_copies(lambda: SEFPTensor(wq.planes.clone(), wq.exponents.clone(), wq.shape, wq.dtype,
                                              wq.block_size), least))
    nw = cycle(cold_copies(lambda: w_bf16.clone(), w_bf16.numel() * 2))
    rows = []
    x1 = torch.randn(1, K, generator=g).to(torch.bfloat16)
    # every width and the bf16 baseline timed in turn within each repeat: a slow stretch of the shared machine hits
    # them alike, so t/t8 and x bf16 hold up (separate medians per width moved by up to 2x between runs); the read
    # bandwidth (torch.sum over 256 MiB) just before and after them, the mean (harness.read_gbps)
    big = read_buffer()
    bw0 = read_gbps(big)
    pk_ms = [m for m in decode_ms if m <= 7]
    npks = {}
    for m in pk_ms:
        p = wq.packed(m)
        npks[m] = cycle(cold_copies(lambda p=p: SEFPPacked(p.codes.clone(), p.exponents.clone(), p.m, p.shape, p.dtype,
                                                          p.block_size), p.nbytes()))
    # correctness before timing (each raises on a mismatch): every width of the planes and every packed copy
    checks = {m: _check(x1, wq, m, sefp.linear(x1, wq, m), "planes") for m in decode_ms}
    for m in pk_ms:
        _check(x1, wq, m, sefp.linear(x1, wq.packed(m)), "packed")
    fns = ([lambda: F.linear(x1, nw())] + [lambda m=m: sefp.linear(x1, nq(), m) for m in decode_ms]
           + [lambda m=m: sefp.linear(x1, npks[m]()) for m in pk_ms])
    bf16_us, *times = median_us_cold_interleaved(fns, 2 * repeats + 1, no_flush)
    ours, pk_us = times[:len(decode_ms)], dict(zip(pk_ms, times[len(decode_ms):]))
    del npks
    bw_rd = (bw0 + read_gbps(big)) / 2
    del big
    t8 = None
    for m, ours_us in zip(decode_ms, ours):
        r = dict(shape=f"{N}x{K}", M=1, m=m, bits=wq.bits_per_weight(m), rd_gbps=bw_rd)
        r["ours_us"] = ours_us
        t8 = r["ours_us"] if m == 8 else t8
        r["t_t8"] = r["ours_us"] / t8 if t8 else None
        r["gbps"] = (wq.nbytes(m) + 2 * (K + N)) / r["ours_us"] / 1e3
        r["frac_rd"] = r["gbps"] / bw_rd
        r["bf16_us"] = bf16_us
        r["x_bf16"] = bf16_us / r["ours_us"]
        r["deq_us"] = median_us_cold(lambda: F.linear(x1, nq().dequantize(m, torch.bfloat16)), max(3, repeats // 2),
                                     no_flush)
        r["x_deq"] = r["deq_us"] / r["ours_us"]
        if m <= 7:
            r["pk_us"] = pk_us[m]
            r["pk_frac_rd"] = (wq.nbytes(m) + 2 * (K + N)) / pk_us[m] / 1e3 / bw_rd
            mxt = wq.packed(m, layout="mx")
            _check_mx(x1, mxt, leankern.mx.linear(x1, mxt), f"mx pk m={m} M=1 W {N}x{K}")
            npk = cold_weights(mxt)[0]
            r["packed_us"] = median_us_cold(lambda: leankern.mx.linear(x1, npk()), repeats, no_flush)
            del npk, mxt
        r["check"] = checks[m]
        r["rd_beaten"] = beaten(r["frac_rd"]) or beaten(r.get("pk_frac_rd"))
        rows.append(r)
    if prefill_ms:  # a small batch / speculative verification: the fused path over 16 x rows
        x16 = torch.randn(16, K, generator=g).to(torch.bfloat16)
        bf16_16 = median_us_cold(lambda: F.linear(x16, nw()), max(3, repeats // 2), no_flush)
        for m in prefill_ms:
            r = dict(shape=f"{N}x{K}", M=16, m=m, bits=wq.bits_per_weight(m), bf16_us=bf16_16)
            check = _check(x16, wq, m, sefp.linear(x16, wq, m), "planes")  # before timing; raises on a mismatch
            r["ours_us"] = median_us_cold(lambda: sefp.linear(x16, nq(), m), repeats, no_flush)
            r["gbps"] = (wq.nbytes(m) + 2 * 16 * (K + N)) / r["ours_us"] / 1e3
            r["frac_rd"] = r["gbps"] / bw_rd
            r["x_bf16"] = bf16_16 / r["ours_us"]
            r["check"] = check
            r["rd_beaten"] = beaten(r["frac_rd"])
            rows.append(r)
        xp = torch.randn(512, K, generator=g).to(torch.bfloat16)
        reps = max(5, repeats // 3)  # medians of >= 5 (2 before: a median of 2 is their mean, one slow call moved it)
        bf16_p = median_us_cold(lambda: F.linear(xp, nw()), reps, no_flush)
        for m in prefill_ms:
            r = dict(shape=f"{N}x{K}", M=512, m=m, bits=wq.bits_per_weight(m), bf16_us=bf16_p)
            # before timing (raises on a mismatch): the M = 512 path's output, its first 8 rows against the reference
            check = _check(xp[:8], wq, m, sefp.linear(xp, wq, m)[:8], "planes")
            r["ours_us"] = median_us_cold(lambda: sefp.linear(xp, nq(), m), reps, no_flush)
            r["gbps"] = 2 * 512 * N * K / r["ours_us"] / 1e3  # GFLOP/s in this column for M = 512
            r["x_bf16"] = bf16_p / r["ours_us"]
            r["deq_us"] = median_us_cold(lambda: F.linear(xp, nq().dequantize(m, torch.bfloat16)), reps, no_flush)
            r["x_deq"] = r["deq_us"] / r["ours_us"]
            r["check"] = check
            rows.append(r)
    return rows


def run(quick: bool = False, full: bool = False, device: str = "cpu", sizes=None, csv_path=None, plot_path=None,
        aot: bool = True, bw_gbps=None, output_cache_mb: int = 0, out=print) -> BenchResult:
    """Run the SEFP bench and print its section (CPU; GPU timings: bench/gpu_check.sh)."""
    import leankern

    if str(device).startswith("cuda"):
        out("== sefp == on CUDA: not timed by this module (the Triton kernel is AOT-checked in the tests)")
        return BenchResult([], 0.0, device)
    bw_rd = measure_read_bandwidth()
    out(f"== {FAMILY} == CPU: {cpu_model()} | ISA: {cpu_isa()} | read bandwidth (torch.sum over 256 MiB) at the "
        f"start: {bw_rd:.1f} GB/s (M = 1 rows: around their rounds, rd GB/s) | torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads | sefp_linear runs on: {leankern.backend_for('sefp_linear', 'cpu')}")
    shapes, decode_ms, prefill_ms = _plan(quick, full)
    repeats = 3 if quick else 7
    rows = []
    for N, K in shapes:
        rows += _rows_for_shape(N, K, decode_ms, prefill_ms, bw_rd, repeats)
    out(format_table(rows, COLUMNS))
    out("bf16 x, weights quantized once at m_max = 8 (block 32) and read at m; M = 1 and M = 16 rows: GB/s of planes "
        "+ exponents read, weights cold; M = 512 rows: the GB/s column holds GFLOP/s. Targets: M = 1 %rd >= 0.8 at "
        "every m and t(3)/t(8) <= 0.6; M = 512 x bf16 >= 0.7")
    out("rd<ours = yes: %rd (or pk %rd) > 100%, the read-bandwidth measure was beaten (data from cache or a slow "
        "measure), so that %rd is not evidence; every output checked against dequantize + fp32 matmul before timing "
        "(M = 512: the first 8 rows of the M = 512 call; a mismatch raises)")
    if csv_path:
        write_csv(csv_path, rows, {"family": FAMILY, "read_bw_gbps": bw_rd, "cpu": cpu_model(), "isa": cpu_isa()})
        out(f"wrote {csv_path}")
    return BenchResult(rows, bw_rd, device)


def tiny_calls(device: str = "cpu") -> list:
    """The SEFP ops on tiny inputs: a 64 x 64 weight at m = 4 of 8."""
    from .. import sefp
    from .overhead import TinyCall

    w = torch.randn(64, 64, device=device)
    x = torch.randn(1, 64, device=device)
    wq = sefp.quantize(w, m_max=8)
    w4 = wq.dequantize(4, torch.float32)
    p4 = wq.packed(4)
    return [
        TinyCall("sefp_linear", "1 x 64 @ 64 x 64 at m=4", lambda: torch.ops.leankern.sefp_linear(
            x, wq.planes, wq.exponents, 4, 32, None), "sefp.linear", lambda: sefp.linear(x, wq, 4),
            "F.linear (dense fp32)", lambda: F.linear(x, w4)),
        TinyCall("sefp_packed_linear", "1 x 64 @ 64 x 64 packed at m=4", lambda: torch.ops.leankern.sefp_packed_linear(
            x, p4.codes, p4.exponents, 4, 32, None), "sefp.linear (packed)", lambda: sefp.linear(x, p4),
            "F.linear (dense fp32)", lambda: F.linear(x, w4)),
        TinyCall("sefp_quantize", "64 x 64 fp32", lambda: torch.ops.leankern.sefp_quantize(w, 8, 32),
                 "sefp.quantize", lambda: sefp.quantize(w), "torch.round(w)", lambda: torch.round(w)),
        TinyCall("sefp_dequantize", "64 x 64 at m=4", lambda: torch.ops.leankern.sefp_dequantize(
            wq.planes, wq.exponents, 4, 32, 64, torch.float32), "SEFPTensor.dequantize", lambda: wq.dequantize(4),
            "w.clone()", lambda: w.clone()),
    ]


def main(argv=None) -> int:
    """``python bench/bench_sefp.py [--quick | --full]``: this family's section only."""
    from . import bench_main

    return bench_main(argv, families=(FAMILY,), prog="bench_sefp.py")
