"""MX/NV benchmark: quantize, dequantize and the Hadamard transform, ours vs the reference vs plain PyTorch.

Contenders per row. CPU: ours (the C++ kernel, forced with ``use_backend("cpp")``), the
reference (``use_backend("ref")``) and the ``torch`` baseline (:mod:`._mx_baselines`: the
vectorised PyTorch a user would write). CUDA: the hand-written CUDA C++ kernel
(``use_backend("cuda")``, where the build registered one: ``mx_quantize``), Triton
(``use_backend("triton")``), the reference on the GPU and the torch baseline; "ours" is the
kernel the dispatcher picks (``leankern.backend_for``). Before timing, every kernel must equal
the reference bit for bit on the timed input (or, where the reference is not timed, on its first
rows), and the baseline's error is reported next to ours (``torch dQ``: its QSNR minus ours, dB).

NV quantize is timed twice: with g computed from the tensor (a second pass over x) and, as
``nvfp4+g`` / ``nvint4+g``, with a calibrated static g passed in (how weights and calibrated
activations are served). NV quantize of bf16 input is also timed in the ``"reciprocal"`` scale
mode (``nvfp4:recip``, ``nvfp4+g:recip``, ...: x * (1 / d) as GPU quantizers do, instead of the
exact x / d; docs/numerics.md "NV reciprocal mode").
Bytes are exact compulsory traffic: quantize reads x and writes codes +
scales (+ 4 for the NV global scale); dequantize the reverse; Hadamard reads x (+ signs) and
writes y. Target (CPU quantizer, MXFP8/MXFP4/MXINT8/NVFP4): >= 50% of the measured copy
bandwidth and >= 20x the reference. The copy bandwidth of a row's ``%bw`` is measured by this section just
before and after that row (``copy GB/s``, the mean; 256 MiB copied, median of 3), not the figure of the
header line (measured once per ``leankern bench`` process, before every section); ``bw<ours`` flags a row
above 100% (the measure was beaten, so its ``%bw`` is not evidence).

Subsets (``leankern bench [--quick | --full]``):

* default: the representative subset, at 4096² (CUDA: 8192²): quantize in the headline formats
  at bf16 + fp32 with the reference timed once, the other formats at bf16; dequantize for every
  format at bf16; Hadamard (chunk 32 and 4096, with the reference); the Triton AOT report for the
  headline kernels.
* ``quick``: the smoke subset: the default rows with Hadamard chunk 32 only, the reference not
  timed (checked on the first rows), no AOT report, fewest repeats.
* ``full``: everything: every format x {quantize, dequantize} x {bf16, fp32} x {4096², 8192²},
  the reference timed twice per row (once at 8192²), Hadamard chunks 32/128/4096, full AOT report.
"""
from __future__ import annotations

import math
import os
from contextlib import nullcontext

import torch

from ..mx.formats import FORMATS, get_format
from ..mx.ref import mx_dequantize_ref, mx_quantize_ref, nv_global_scale
from ..testing.compare import assert_bitexact, qsnr_db
from ._mx_baselines import DENSE_HADAMARD_MAX, hadamard_matrix, torch_dequantize, torch_hadamard, torch_quantize
from ._triton_aot import format_aot_report, triton_aot_report
from .harness import (BenchResult, Case, Impl, busy_note, copy_buffers, copy_gbps, format_table, import_pyplot,
                      measure_copy_bandwidth, run_cases, section_header, write_csv)

__all__ = ["FAMILY", "HEADLINE_FORMATS", "torch_quantize", "torch_dequantize", "torch_hadamard", "plan", "build_cases",
           "run", "tiny_calls", "triton_aot_report", "format_aot_report", "main"]

FAMILY = "mx"
HEADLINE_FORMATS = ("mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4")
TARGET_FRAC_BW, TARGET_X_REF = 0.5, 20.0
CHECK_ROWS = 256  # rows of the input checked against the reference when the reference is not timed
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_BF16_FP32 = (torch.bfloat16, torch.float32)
# CPU: 4096² is 32-64 MiB per input, far beyond the last-level cache. CUDA: 8192² (a 60 MB L2 on H100/H200
# would hold a 4096² bf16 input and flatter every kernel).
_SIZES = {("cpu", "quick"): (4096,), ("cpu", "default"): (4096,), ("cpu", "full"): (4096, 8192),
          ("cuda", "quick"): (8192,), ("cuda", "default"): (8192,), ("cuda", "full"): (8192, 16384)}


# ----------------------------------------------------------------------------- what each subset runs
def plan(mode: str, device: str = "cpu", sizes=None) -> list:
    """The rows of a subset, in table order: ``(op, n, dtype, fmt_or_chunk, static_g, time_ref, scale_mode)``.

    ``mode``: "quick" | "default" | "full" (each a subset of the next). ``time_ref``: the
    reference is timed on that row (else only checked on the first rows). ``static_g``: NV
    quantize with a calibrated global scale. ``scale_mode``: "rceil" except for the NV quantize
    rows at bf16 timed again in "reciprocal" mode.
    """
    sizes = sizes or _SIZES[("cuda" if str(device).startswith("cuda") else "cpu", mode)]
    full = mode == "full"
    rows = []
    for n in sizes:
        for dt in _BF16_FP32:
            for fmt in FORMATS:
                headline = fmt in HEADLINE_FORMATS
                if not (full or headline or dt == torch.bfloat16):  # subsets: other formats at bf16 only
                    continue
                time_ref = full or (mode == "default" and headline)
                rows.append(("quantize", n, dt, fmt, False, time_ref, "rceil"))
                if get_format(fmt).is_nv:  # calibrated g: the serving case
                    rows.append(("quantize", n, dt, fmt, True, time_ref, "rceil"))
                    if dt == torch.bfloat16:  # the GPU quantizers' x * (1 / d), both g cases
                        rows += [("quantize", n, dt, fmt, sg, time_ref, "reciprocal") for sg in (False, True)]
        for dt in _BF16_FP32 if full else (torch.bfloat16,):
            rows += [("dequantize", n, dt, fmt, False, full, "rceil") for fmt in FORMATS]
        chunks = {"quick": (32,), "default": (32, 4096), "full": (32, 128, 4096)}[mode]
        for dt in _BF16_FP32:
            rows += [("hadamard", n, dt, c, False, mode != "quick", "rceil") for c in chunks if c <= n]
    return rows


# ----------------------------------------------------------------------------- contenders
def _forced(backend: str, fn):
    """``fn`` run with every leankern op forced onto ``backend``."""
    import leankern

    def call(*args):
        with leankern.use_backend(backend):
            return fn(*args)

    return call


def _quantize_fn(fmt, bs, g, scale_mode="rceil"):
    import leankern

    def fn(x):
        qt = leankern.mx.quantize(x, fmt, block_size=bs, global_scale=g, scale_mode=scale_mode)
        return qt.codes, qt.scales, qt.global_scale

    return fn


def _dequantize_fn(fmt, bs):
    return lambda c, s, g, dt: torch.ops.leankern.mx_dequantize(c, s, g, fmt, bs, dt)


def _kernel_impls(op: str, device: str, call, quick: bool) -> tuple[list, str | None]:
    """Our kernel(s) for ``op`` on ``device`` as Impls (``call(backend)`` -> a no-argument function),
    and the name of the one the dispatcher picks ("ours") -- None on CPU, where it is the only one."""
    reps, min_time = (3, 0.1) if quick else (10, 0.5)
    if not str(device).startswith("cuda"):
        return [Impl("ours", call("cpp"), warmup=2, repeats=reps, min_time=min_time)], None
    from ..core import backend_for, registered_ops

    spec = registered_ops()[op]
    cuda = Impl("cuda", call("cuda") if spec.native_cuda else None, warmup=2, repeats=reps, min_time=min_time,
                graph=True, note=f"no CUDA C++ kernel for {op} in this build")
    triton = Impl("triton", call("triton") if spec.triton is not None else None, warmup=2, repeats=reps,
                  min_time=min_time, graph=True, note=f"no Triton kernel for {op}")
    return [cuda, triton], backend_for(op, device)


def _ref_impl(fn, time_ref: bool, mode: str, big: bool, device: str) -> Impl:
    """The reference: timed with few calls (CPU default: its checking call is the one sample)."""
    if not time_ref:
        return Impl("ref", None, note=f"not timed in this subset ({mode})")
    if str(device).startswith("cuda"):
        return Impl("ref", fn, warmup=0, repeats=3)
    return Impl("ref", fn, warmup=0, repeats=0 if (mode != "full" or big) else 2)


def _nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _base_format(label: str) -> str:
    """"nvfp4+g:recip" -> "nvfp4"."""
    return label.split(":")[0].split("+")[0]


def _target(row) -> str:
    if (row.get("op") != "quantize" or _base_format(row.get("format", "")) not in HEADLINE_FORMATS
            or row.get("device") != "cpu" or not row.get("ours_ms")):
        return ""
    if row.get("x_ref") is None:
        return "bw only: " + ("yes" if (row.get("frac_bw") or 0) >= TARGET_FRAC_BW else "no")
    ok = (row.get("check") != "FAIL" and (row.get("frac_bw") or 0) >= TARGET_FRAC_BW
          and (row.get("x_ref") or 0) >= TARGET_X_REF)
    return "yes" if ok else "no"


def _kernel_outputs(outs: dict) -> dict:
    return {k: v for k, v in outs.items() if k not in ("ref", "torch")}


def _slice_check(x, got, fmt, bs, name, scale_mode="rceil"):
    """Reference on the first CHECK_ROWS rows (NV: with the kernel's global scale) == the kernel there (on CPU)."""
    r = min(CHECK_ROWS, x.shape[0])
    f = get_format(fmt)
    want = mx_quantize_ref(x[:r].cpu(), fmt, bs, scale_mode, None, got[2].cpu() if f.is_nv else None)
    assert_bitexact((got[0][:r], got[1][:r], got[2]), want, name=f"{fmt} {name} vs ref (first {r} rows)")
    if f.is_nv:  # the global scale itself, from the whole tensor
        assert_bitexact(got[2], nv_global_scale(x, f.element), name=f"{fmt} {name} global scale")


# ----------------------------------------------------------------------------- cases
def _labels(op, fmt, x, device, dt=None):
    return {"op": op, "format": fmt, "shape": "x".join(map(str, x.shape)), "dtype": _DTYPE_NAMES[dt or x.dtype],
            "device": str(device).split(":")[0]}


def _quant_case(x, fmt, bs, device, mode, time_ref, static_g=False, scale_mode="rceil") -> Case:
    """``static_g``: NV with a calibrated per-tensor scale passed in (one pass over x instead of two)."""
    f = get_format(fmt)
    g = nv_global_scale(x, f.element) if static_g else None
    quant = _quantize_fn(fmt, bs, g, scale_mode)
    kernels, ours = _kernel_impls("mx_quantize", device, lambda be: (lambda q=_forced(be, quant): q(x)), mode == "quick")
    impls = kernels + [
        _ref_impl(lambda q=_forced("ref", quant): q(x), time_ref, mode, x.numel() > 2**24, device),
        Impl("torch", lambda: torch_quantize(x, fmt, bs, g), warmup=0, repeats=3),
    ]
    nbytes = _nbytes(x) + (x.numel() // 2 if f.element.packed else x.numel()) + x.numel() // bs + (4 if f.is_nv else 0)

    def check(outs):
        res = {"check": "no kernel"}
        for name, got in _kernel_outputs(outs).items():
            if "ref" in outs:
                assert_bitexact(got, outs["ref"], name=f"{fmt} {name} vs ref")
                res["check"] = "bitexact"
            else:
                _slice_check(x, got, fmt, bs, name, scale_mode)
                res["check"] = "bitexact*"
        base = next(iter(_kernel_outputs(outs).values()), outs.get("ref"))
        if base is not None and "torch" in outs:
            r = min(CHECK_ROWS, x.shape[0])
            xs = x[:r].cpu()
            q_ours = qsnr_db(xs, mx_dequantize_ref(base[0][:r].cpu(), base[1][:r].cpu(), base[2].cpu(), fmt, bs))
            t = [v.cpu() for v in outs["torch"]]
            res["qsnr"] = q_ours
            res["torch_dq"] = qsnr_db(xs, torch_dequantize(t[0][:r], t[1][:r], t[2], fmt, bs)) - q_ours
        return res

    label = fmt + ("+g" if static_g else "") + (":recip" if scale_mode == "reciprocal" else "")
    return Case(_labels("quantize", label, x, device), impls, nbytes, 0, check, _target, ours)


def _dequant_case(x, fmt, bs, device, mode, time_ref) -> Case:
    c, s, g = _quantize_fn(fmt, bs, None)(x)  # inputs: whatever kernel the dispatcher picks (the check uses ref)
    dt = x.dtype
    deq = _dequantize_fn(fmt, bs)
    kernels, ours = _kernel_impls("mx_dequantize", device, lambda be: (lambda d=_forced(be, deq): d(c, s, g, dt)),
                                  mode == "quick")
    impls = kernels + [
        _ref_impl(lambda d=_forced("ref", deq): d(c, s, g, dt), time_ref, mode, x.numel() > 2**24, device),
        Impl("torch", lambda: torch_dequantize(c, s, g, fmt, bs, dt), warmup=0, repeats=3),
    ]
    nbytes = _nbytes(c, s) + (4 if get_format(fmt).is_nv else 0) + x.numel() * x.element_size()

    def check(outs):
        res = {"check": "no kernel"}
        r = min(CHECK_ROWS, x.shape[0])
        want = outs.get("ref")
        if want is None:  # the reference on the first rows, on CPU
            want = mx_dequantize_ref(c[:r].cpu(), s[:r].cpu(), g.cpu(), fmt, bs, dt)
        for name, got in _kernel_outputs(outs).items():
            assert_bitexact(got if "ref" in outs else got[:r], want, name=f"{fmt} dequantize {name} vs ref")
            res["check"] = "bitexact" if "ref" in outs else "bitexact*"
        if "torch" in outs:
            res["torch_dq"] = qsnr_db(want[:r].cpu(), outs["torch"][:r].cpu())  # vs the exact dequantization
        return res

    return Case(_labels("dequantize", fmt, x, device), impls, nbytes, 0, check, _target, ours)


def _hadamard_case(x, chunk, device, mode, time_ref) -> Case:
    import leankern

    scale = 1.0 / math.sqrt(chunk)
    signs = leankern.mx.random_hadamard_signs(chunk, seed=1, device=x.device)
    had = lambda: leankern.mx.hadamard_transform(x, chunk, scale, signs)  # noqa: E731
    kernels, ours = _kernel_impls("hadamard_transform", device, lambda be: _forced(be, had), mode == "quick")
    dense = hadamard_matrix(chunk, scale, signs, x.device) if chunk <= DENSE_HADAMARD_MAX else None
    impls = kernels + [
        _ref_impl(_forced("ref", had), time_ref, mode, x.numel() > 2**24, device),
        Impl("torch", lambda: torch_hadamard(x, chunk, scale, signs, dense), warmup=0, repeats=3),
    ]
    nbytes = 2 * _nbytes(x) + _nbytes(signs)
    flops = x.numel() * (int(math.log2(chunk)) + 1)  # log2(n) add/sub stages + the scale-and-sign multiply

    def check(outs):
        res = {"check": "no kernel"}
        r = min(CHECK_ROWS, x.shape[0])
        want = outs.get("ref")
        if want is None:
            want = leankern.mx.ref.hadamard_transform_ref(x[:r].cpu(), chunk, scale, signs.cpu())
        for name, got in _kernel_outputs(outs).items():
            assert_bitexact(got if "ref" in outs else got[:r], want, name=f"hadamard n={chunk} {name} vs ref")
            res["check"] = "bitexact" if "ref" in outs else "bitexact*"
        if "torch" in outs:  # the baseline must compute the same transform (other summation order)
            err = qsnr_db(want[:r].cpu().float(), outs["torch"][:r].cpu().float())
            floor = 40.0 if x.dtype != torch.float32 else 100.0
            assert err > floor, f"hadamard n={chunk}: torch baseline differs from the reference ({err:.1f} dB)"
        return res

    labels = _labels("hadamard", f"n={chunk}", x, device)
    return Case(labels, impls, nbytes, flops, check, None, ours)


def build_cases(mode: str, device: str = "cpu", sizes=None, rows=None) -> list:
    """One Case per row of :func:`plan`. Inputs: seeded N(0, 1), converted to the row's dtype."""
    cases, inputs = [], {}
    for op, n, dt, what, static_g, time_ref, scale_mode in rows or plan(mode, device, sizes):
        if (n, dt) not in inputs:
            gen = torch.Generator().manual_seed(n)
            inputs = {(n, dt): torch.randn(n, n, generator=gen, dtype=torch.float32).to(dt).to(device)}
        x = inputs[(n, dt)]
        if op == "hadamard":
            cases.append(_hadamard_case(x, what, device, mode, time_ref))
            continue
        bs = get_format(what).default_block_size
        if op == "quantize":
            cases.append(_quant_case(x, what, bs, device, mode, time_ref, static_g, scale_mode))
        else:
            cases.append(_dequant_case(x, what, bs, device, mode, time_ref))
    return cases


# ----------------------------------------------------------------------------- per-call overhead inputs
def tiny_calls(device: str = "cpu") -> list:
    """Tiny-input calls of every MX op for the per-call overhead section (:mod:`.overhead`)."""
    import leankern
    from .overhead import TinyCall

    x = torch.randn(1, 32, generator=torch.Generator().manual_seed(0)).to(device)  # [1, 32] fp32: one block
    g = nv_global_scale(x, get_format("nvfp4").element)
    q8, q4 = leankern.mx.quantize(x, "mxfp8_e4m3"), leankern.mx.quantize(x, "nvfp4")
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(1)).to(device)
    w8 = leankern.mx.quantize(w, "mxint8")
    p8 = leankern.mx.prepack(w8)  # on a GPU the row-major weight itself (the raw row below is then CPU-only)
    qk = torch.ops.leankern.mx_quantize
    dq = torch.ops.leankern.mx_dequantize
    abs_x = ("torch.abs(x)", lambda: torch.abs(x))
    calls = [
        TinyCall("mx_quantize", "mxfp8_e4m3 x[1,32] fp32", lambda: qk(x, "mxfp8_e4m3", 32, "rceil", None, None, False),
                 "mx.quantize(x, 'mxfp8_e4m3')", lambda: leankern.mx.quantize(x, "mxfp8_e4m3"), *abs_x),
        TinyCall("mx_quantize", "nvfp4 x[1,32] fp32", lambda: qk(x, "nvfp4", 16, "rceil", None, None, False),
                 "mx.quantize(x, 'nvfp4')", lambda: leankern.mx.quantize(x, "nvfp4"), *abs_x),
        TinyCall("mx_quantize", "nvfp4+g x[1,32] fp32", lambda: qk(x, "nvfp4", 16, "rceil", None, g, False),
                 "mx.quantize(x, 'nvfp4', global_scale=g)", lambda: leankern.mx.quantize(x, "nvfp4", global_scale=g),
                 *abs_x),
        TinyCall("mx_dequantize", "mxfp8_e4m3 codes[1,32] -> fp32",
                 lambda: dq(q8.codes, q8.scales, q8.global_scale, "mxfp8_e4m3", 32, torch.float32),
                 "mx.dequantize(qt)", lambda: leankern.mx.dequantize(q8),
                 "codes.to(float32)", lambda: q8.codes.to(torch.float32)),
        TinyCall("mx_dequantize", "nvfp4 codes[1,16] -> fp32",
                 lambda: dq(q4.codes, q4.scales, q4.global_scale, "nvfp4", 16, torch.float32),
                 "mx.dequantize(qt)", lambda: leankern.mx.dequantize(q4),
                 "codes.to(float32)", lambda: q4.codes.to(torch.float32)),
        TinyCall("mx_linear", "x[1,32] @ mxint8 W[8,32]^T fp32",
                 lambda: torch.ops.leankern.mx_linear(x, w8.codes, w8.scales, w8.global_scale, "mxint8", 32, None, None),
                 "mx.linear(x, W)", lambda: leankern.mx.linear(x, w8),
                 "F.linear(x, w)", lambda: torch.nn.functional.linear(x, w)),
    ]
    if p8.layout == "prepacked16":
        calls.append(TinyCall(
            "mx_linear_packed", "x[1,32] @ prepacked mxint8 W[8,32]^T fp32",
            lambda: torch.ops.leankern.mx_linear_packed(x, p8.codes, p8.global_scale, "mxint8", 32, 8, None, None),
            "mx.linear(x, prepack(W))", lambda: leankern.mx.linear(x, p8),
            "F.linear(x, w)", lambda: torch.nn.functional.linear(x, w)))
    calls += [
        TinyCall("hadamard_transform", "n=32 x[1,32] fp32",
                 lambda: torch.ops.leankern.hadamard_transform(x, 32, 1.0 / math.sqrt(32), None),
                 "mx.hadamard_transform(x, 32)", lambda: leankern.mx.hadamard_transform(x, 32), *abs_x),
    ]
    return calls


# ----------------------------------------------------------------------------- run / output
COLUMNS = [
    ("op", "op", ""), ("format", "format", ""), ("shape", "shape", ""), ("dtype", "dtype", ""),
    ("ours_ms", "ours ms", ".2f"), ("gbps", "GB/s", ".1f"), ("frac_bw", "%bw", ".0%"),
    ("ref_ms", "ref ms", ".0f"), ("x_ref", "x ref", ".0f"), ("torch_ms", "torch ms", ".1f"),
    ("x_torch", "x torch", ".1f"), ("torch_dq", "torch dQ", "+.2f"), ("check", "check", ""),
    ("target", "target", ""), ("row_bw_gbps", "copy GB/s", ".1f"), ("bw_beaten", "bw<ours", "flag"),
]
CUDA_COLUMNS = [
    ("op", "op", ""), ("format", "format", ""), ("shape", "shape", ""), ("dtype", "dtype", ""),
    ("ours_backend", "ours", ""), ("cuda_ms", "cuda ms", ".4f"), ("cuda_gbps", "cuda GB/s", ".0f"),
    ("triton_ms", "triton ms", ".4f"), ("triton_gbps", "triton GB/s", ".0f"), ("x_triton", "x triton", ".2f"),
    ("frac_bw", "ours %bw", ".0%"),
    ("timing", "timed by", ""), ("ref_ms", "ref ms", ".3f"), ("x_ref", "x ref", ".1f"), ("torch_ms", "torch ms", ".3f"),
    ("x_torch", "x torch", ".1f"), ("torch_dq", "torch dQ", "+.2f"), ("check", "check", ""),
    ("row_bw_gbps", "copy GB/s", ".0f"), ("bw_beaten", "bw<ours", "flag"),
]


def _mode(quick: bool, full: bool) -> str:
    if quick and full:
        raise ValueError("quick, full: pass at most one of the two")
    return "quick" if quick else "full" if full else "default"


def run(quick: bool = False, device: str = "cpu", sizes=None, csv_path=None, plot_path=None, aot: bool = True,
        out=print, full: bool = False, bw_gbps: float | None = None, output_cache_mb: int = 0) -> BenchResult:
    """Run the MX bench (``quick`` / default / ``full`` subset) and print its section: header line, table, notes."""
    import leankern

    mode = _mode(quick, full)
    cuda = str(device).startswith("cuda")
    bw = bw_gbps or measure_copy_bandwidth(device)  # the header's figure (one per process under `leankern bench`)
    out(section_header(FAMILY, device, bw, mode, output_cache_mb))
    if busy_note(device):
        out(busy_note(device))
    # %bw (the quantize target's denominator) of each row: the copy bandwidth measured just before and after that
    # row (the mean; harness.copy_gbps, 256 MiB copied, median of 3), not the header's figure, taken minutes earlier
    # (this host's bandwidth moved by 2x between runs)
    bufs = copy_buffers(device)
    measured = []

    def copy_bw() -> float:
        measured.append(copy_gbps(bufs))
        return measured[-1]

    cache = leankern.output_cache.enabled(output_cache_mb) if output_cache_mb and not cuda else nullcontext()
    with cache:
        rows = run_cases(build_cases(mode, device, sizes), device, bw, desc=f"bench mx ({mode})", bw_fn=copy_bw)
    del bufs
    for r in rows:
        r["timing"] = r.get(f"{r.get('ours_backend')}_timing", "")
    row_bw = sum(measured) / len(measured)
    out(f"copy bandwidth next to the rows (harness.copy_gbps, before and after each row): {measured[0]:.1f} GB/s "
        f"before the first, {measured[-1]:.1f} after the last, {min(measured):.1f}-{max(measured):.1f} GB/s "
        f"(mean {row_bw:.1f}); each row's %bw divides by the mean of the two around it (copy GB/s)")
    out(format_table(rows, CUDA_COLUMNS if cuda else COLUMNS))
    _footer(rows, cuda, out)
    if aot and not cuda and mode != "quick":
        out(triton_aot_report(90, quick=mode != "full"))
    meta = {"bandwidth_gbps": round(bw, 2), "thp_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", "0"), "mode": mode,
            "output_cache_mb": output_cache_mb, "rows_bandwidth_gbps": round(row_bw, 2)}
    if csv_path:
        write_csv(csv_path, rows, meta)
        out(f"wrote {csv_path}")
    if plot_path:
        plot(plot_path, rows, row_bw)
    return BenchResult(rows, bw, device, meta)


def _footer(rows, cuda: bool, out) -> None:
    if cuda:
        out("ours = the kernel the dispatcher picks on CUDA (cuda: hand-written CUDA C++, else Triton); GB/s per "
            "kernel; x triton = Triton's time / ours (when ours is the CUDA C++ kernel); timed by graph = CUDA-graph replay of 20 calls (GPU time), eager = events around a batch of "
            "calls; x ref / x torch = their time / ours; bitexact* = checked on the first rows")
    else:
        out("ours = leankern's C++ kernel; %bw = GB/s / measured copy bandwidth; x ref / x torch = their time / ours "
            "(ref: one call outside --full); torch dQ = QSNR(torch) - QSNR(ours) dB for quantize, QSNR of torch's "
            "dequantize vs exact for dequantize; bitexact* = checked on the first rows; target = >=50% bw and "
            ">=20x ref; Hadamard torch = x @ dense H for n <= 256, else a vectorised butterfly")
    out("copy GB/s = the copy bandwidth measured just before and after the row (the mean), the denominator of its %bw; "
        "bw<ours = yes: %bw > 100%, the measure was beaten (data from cache or a slow measure), so that %bw is not "
        "evidence")
    for r in rows:
        if r.get("check") == "FAIL":
            out(f"  CHECK FAILED {r['op']} {r['format']} {r['dtype']}: {r.get('check_detail')}")
    notes = {n for r in rows if r.get("notes") for n in r["notes"].split("; ") if "not timed" not in n}
    for n in sorted(notes):
        out(f"  note: {n}")
    q_targets = [r for r in rows if r["target"] and r["op"] == "quantize"]
    if q_targets:
        met = sum(r["target"] in ("yes", "bw only: yes") for r in q_targets)
        out(f"quantize target met on {met}/{len(q_targets)} headline rows (MXFP8, MXFP4, MXINT8, NVFP4)")


def plot(path, rows, bw) -> bool:
    """Bar chart of our GB/s per format, one group per (op, dtype, shape); needs matplotlib."""
    plt = import_pyplot(path)
    if plt is None:
        return False
    groups = list(dict.fromkeys((r["op"], r["dtype"], r["shape"]) for r in rows))
    fmts = list(dict.fromkeys(r["format"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, len(groups) * 2.5), 5))
    width = 0.8 / max(1, len(fmts))
    for j, fmt in enumerate(fmts):
        ys = [next((r.get("gbps") or 0 for r in rows if (r["op"], r["dtype"], r["shape"]) == gr
                    and r["format"] == fmt), 0) for gr in groups]
        ax.bar([i + j * width for i in range(len(groups))], ys, width, label=fmt)
    ax.axhline(bw, color="k", ls="--", lw=1, label="measured copy bandwidth")
    ax.axhline(bw * TARGET_FRAC_BW, color="gray", ls=":", lw=1, label="50% of bandwidth")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], [" ".join(g) for g in groups], fontsize=8)
    ax.set(ylabel="GB/s (read + write)", title="leankern MX quantize / dequantize / Hadamard")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return True


def main(argv=None) -> int:
    """``python bench/bench_mx.py [--quick | --full] ...``: this family's section only."""
    from . import bench_main

    return bench_main(argv, families=(FAMILY,), prog="bench_mx.py")
