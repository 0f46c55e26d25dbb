"""MX/NV quantize and dequantize benchmark: ours vs the reference vs a plain PyTorch version.

Per (op, format, size, dtype): ours (``leankern.mx`` forced onto the C++ backend on CPU, Triton on
CUDA), the reference (``use_backend("ref")``, few repeats since it is slow), and
:func:`torch_quantize` / :func:`torch_dequantize` -- the vectorised PyTorch code a user would
write. Before timing, ours must equal the reference bit for bit on the timed input (or, where
the reference is not timed, on its first rows) and the baseline's quantization error is
reported next to ours (``torch dQ``: its QSNR minus ours, dB).

NV quantize is timed twice: with g computed from the tensor (a second pass over x: the
per-tensor amax must be known before any block is scaled) and, as ``nvfp4+g`` / ``nvint4+g``,
with a calibrated static g passed in (one pass: how weights and calibrated activations are
served).

Bytes are exact compulsory traffic: quantize reads the input and writes codes + scales (+ the
4-byte NV global scale); dequantize reads codes + scales (+ 4) and writes the output.
Target (issue 2, CPU quantizer, MXFP8/MXFP4/MXINT8/NVFP4): >= 50% of the measured copy
bandwidth and >= 20x the reference.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from ..formats import FORMATS, get_format
from ..ref.mx import element_values, mx_dequantize_ref, mx_quantize_ref, nv_global_scale
from ..testing.compare import assert_bitexact, qsnr_db
from .harness import (BenchResult, Case, Impl, busy_note, format_table, import_pyplot, machine_summary, measure_copy_bandwidth,
                      run_cases, write_csv)

__all__ = ["HEADLINE_FORMATS", "torch_quantize", "torch_dequantize", "build_cases", "run", "triton_aot_report", "main"]

HEADLINE_FORMATS = ("mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4")
TARGET_FRAC_BW, TARGET_X_REF = 0.5, 20.0
CHECK_ROWS = 256  # rows of the input checked against the reference when the reference is not timed
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# ----------------------------------------------------------------------------- torch baseline
def _grid_midpoints(el):
    vals = element_values(el).to(torch.float32)
    return (vals[1:] + vals[:-1]) / 2  # [max_code]


def torch_quantize(x: torch.Tensor, fmt: str, block_size: int | None = None, global_scale=None):
    """Straightforward vectorised PyTorch quantizer (RCEIL / two-level), the user's alternative.

    Not bit-exact with the reference (no NaN-block policy; FP4/FP6 ties go one way via
    ``bucketize``). Shape: ``[..., K]`` -> codes, scales ``[..., K/bs]``, global scale ``[]``.
    """
    f = get_format(fmt)
    el, bs = f.element, block_size or f.default_block_size
    lead, K = x.shape[:-1], x.shape[-1]
    xb = x.float().reshape(*lead, K // bs, bs)  # [..., nb, bs]
    amax = xb.abs().amax(-1, keepdim=True)  # [..., nb, 1]
    if f.is_nv:
        g = amax.max() / (448.0 * el.max_value) if global_scale is None else global_scale
        g = torch.where(g == 0, torch.ones_like(g), g)
        s = (amax / el.max_value / g).clamp(2.0**-9, 448.0).to(torch.float8_e4m3fn)
        v = xb / (g * s.float())
        scales = s.squeeze(-1)
    else:
        e = torch.ceil(torch.log2(amax / el.max_value)).clamp(-127, 127)
        v = xb * torch.exp2(-e)
        scales = (e + 127).to(torch.uint8).squeeze(-1)
        g = torch.ones((), device=x.device)
    if f.code_dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return v.to(f.code_dtype).reshape(*lead, K), scales, g
    if el.is_int:
        q = torch.round(v).clamp(-el.max_code, el.max_code).to(torch.int8)
    else:
        mag = torch.bucketize(v.abs(), _grid_midpoints(el).to(x.device)).to(torch.uint8)
        q = mag | (torch.signbit(v).to(torch.uint8) << el.sign_bit)
    q = q.reshape(*lead, K)
    if el.packed:
        q = q.view(torch.uint8) & 0xF
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return q, scales, g


def torch_dequantize(codes, scales, global_scale, fmt: str, block_size: int | None = None, dtype=torch.float32):
    """Straightforward vectorised PyTorch dequantizer. Shape: codes ``[..., K or K/2]`` -> ``[..., K]``."""
    f = get_format(fmt)
    el, bs = f.element, block_size or f.default_block_size
    if f.code_dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        vals = codes.float()
    else:
        raw = codes
        if el.packed:
            b = codes.view(torch.uint8)
            raw = torch.stack([b & 0xF, b >> 4], dim=-1).flatten(-2)  # [..., K]
        if el.is_int:
            vals = raw.to(torch.int8).float()
            if el.packed:
                vals = torch.where(vals >= 8, vals - 16, vals)
        else:
            lut = element_values(el).to(torch.float32)
            lut = torch.cat([lut, torch.zeros((1 << el.sign_bit) - lut.numel())])
            lut = torch.cat([lut, -lut]).to(codes.device)  # sign bit set -> negative
            vals = lut[raw.long()]
    lead, K = vals.shape[:-1], vals.shape[-1]
    vals = vals.reshape(*lead, K // bs, bs)
    d = global_scale.float() * scales.float() if f.is_nv else torch.exp2(scales.float() - 127)
    return (vals * d.unsqueeze(-1)).reshape(*lead, K).to(dtype)


# ----------------------------------------------------------------------------- ours / reference
def _quantizer(backend: str, fmt: str, bs: int, global_scale=None):
    """x -> (codes, scales, global_scale) via leankern.mx.quantize forced onto ``backend``."""
    import leankern

    def fn(x):
        with leankern.use_backend(backend):
            qt = leankern.mx.quantize(x, fmt, block_size=bs, global_scale=global_scale)
        return qt.codes, qt.scales, qt.global_scale

    return fn


def _dequantizer(backend: str, fmt: str, bs: int):
    """(codes, scales, g, dtype) -> x_hat via torch.ops.leankern.mx_dequantize forced onto ``backend``."""
    import leankern

    def fn(c, s, g, dt):
        with leankern.use_backend(backend):
            return torch.ops.leankern.mx_dequantize(c, s, g, fmt, bs, dt)

    return fn


def _nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _target(row) -> str:
    if row.get("format", "").split("+")[0] not in HEADLINE_FORMATS or row.get("device") != "cpu" or not row.get("ours_ms"):
        return ""
    ok = (row.get("check") != "FAIL" and (row.get("frac_bw") or 0) >= TARGET_FRAC_BW
          and (row.get("x_ref") or 0) >= TARGET_X_REF)
    return "yes" if ok else "no"


def _slice_check(x, ours, fmt, bs):
    """Reference on the first CHECK_ROWS rows (NV: with ours' global scale) == ours there (on CPU)."""
    r = min(CHECK_ROWS, x.shape[0])
    f = get_format(fmt)
    want = mx_quantize_ref(x[:r].cpu(), fmt, bs, "rceil", None, ours[2].cpu() if f.is_nv else None)
    assert_bitexact((ours[0][:r], ours[1][:r], ours[2]), want, name=f"{fmt} ours vs ref (first {r} rows)")
    if f.is_nv:  # the global scale itself, from the whole tensor
        assert_bitexact(ours[2], nv_global_scale(x, f.element), name=f"{fmt} global scale")


def _quant_case(x, fmt, bs, device, quick, time_ref, static_g=False) -> Case:
    """``static_g``: NV with a calibrated per-tensor scale passed in (one pass over x instead of two)."""
    g = nv_global_scale(x, get_format(fmt).element) if static_g else None
    ours_fn = _quantizer("cpp" if device == "cpu" else "triton", fmt, bs, g)
    ref_fn = _quantizer("ref", fmt, bs, g)
    big = x.numel() > 2**24
    impls = [
        Impl("ours", lambda: ours_fn(x), warmup=2, repeats=5 if quick else 10, min_time=0.2 if quick else 0.5),
        Impl("ref", (lambda: ref_fn(x)) if time_ref else None, warmup=0, repeats=1 if (quick or big) else 2,
             note="" if time_ref else "not timed in --quick"),
        Impl("torch", lambda: torch_quantize(x, fmt, bs, g), warmup=1, repeats=3 if quick else 5),
    ]
    f = get_format(fmt)
    n_scales = x.numel() // bs
    nbytes = _nbytes(x) + (x.numel() // 2 if f.element.packed else x.numel()) + n_scales + (4 if f.is_nv else 0)

    def check(outs):
        res = {}
        ours = outs.get("ours")
        res["check"] = "no ours"
        if ours is not None:
            if "ref" in outs:
                assert_bitexact(ours, outs["ref"], name=f"{fmt} ours vs ref")
                res["check"] = "bitexact"
            else:
                _slice_check(x, ours, fmt, bs)
                res["check"] = "bitexact*"
        base = outs.get("ours", outs.get("ref"))
        if base is not None and "torch" in outs:
            r = min(CHECK_ROWS, x.shape[0])
            xs = x[:r].cpu()
            q_ours = qsnr_db(xs, mx_dequantize_ref(base[0][:r].cpu(), base[1][:r].cpu(), base[2].cpu(), fmt, bs))
            t = [v.cpu() for v in outs["torch"]]
            q_torch = qsnr_db(xs, torch_dequantize(t[0][:r], t[1][:r], t[2], fmt, bs))
            res["qsnr"] = q_ours
            res["torch_dq"] = q_torch - q_ours
        return res

    labels = {"op": "quantize", "format": fmt + ("+g" if static_g else ""), "shape": "x".join(map(str, x.shape)),
              "dtype": _DTYPE_NAMES[x.dtype], "device": device}
    return Case(labels, impls, nbytes, 0, check, _target)


def _dequant_case(x, fmt, bs, device, quick, time_ref) -> Case:
    try:
        c, s, g = _quantizer("cpp" if device == "cpu" else "triton", fmt, bs)(x)
    except RuntimeError:  # ours cannot run here: quantize with the reference
        c, s, g = _quantizer("ref", fmt, bs)(x)
    dt = x.dtype
    ours_fn = _dequantizer("cpp" if device == "cpu" else "triton", fmt, bs)
    ref_fn = _dequantizer("ref", fmt, bs)
    big = x.numel() > 2**24
    impls = [
        Impl("ours", lambda: ours_fn(c, s, g, dt), warmup=2, repeats=5 if quick else 10, min_time=0.2 if quick else 0.5),
        Impl("ref", (lambda: ref_fn(c, s, g, dt)) if time_ref else None, warmup=0, repeats=1 if (quick or big) else 2,
             note="" if time_ref else "not timed in --quick"),
        Impl("torch", lambda: torch_dequantize(c, s, g, fmt, bs, dt), warmup=1, repeats=3 if quick else 5),
    ]
    f = get_format(fmt)
    nbytes = _nbytes(c, s) + (4 if f.is_nv else 0) + x.numel() * x.element_size()

    def check(outs):
        res = {}
        r = min(CHECK_ROWS, x.shape[0])
        want = outs.get("ref")
        res["check"] = "no ours"
        if want is None:  # the reference on the first rows, on CPU
            want = mx_dequantize_ref(c[:r].cpu(), s[:r].cpu(), g.cpu(), fmt, bs, dt)
        if "ours" in outs:
            got = outs["ours"] if "ref" in outs else outs["ours"][:r]
            assert_bitexact(got, want, name=f"{fmt} dequantize ours vs ref")
            res["check"] = "bitexact" if "ref" in outs else "bitexact*"
        if "torch" in outs:
            res["torch_dq"] = qsnr_db(want[:r].cpu(), outs["torch"][:r].cpu())  # vs the exact dequantization
        return res

    labels = {"op": "dequantize", "format": fmt, "shape": "x".join(map(str, x.shape)),
              "dtype": _DTYPE_NAMES[dt], "device": device}
    return Case(labels, impls, nbytes, 0, check, _target)


def build_cases(quick: bool, device: str, sizes, formats, dtypes, ops) -> list:
    """Cases in order op, size, dtype, format. Inputs are seeded N(0, 1) (converted to dtype)."""
    cases = []
    for op in ops:
        for n in sizes:
            for dt in dtypes:
                x = torch.randn(n, n, generator=torch.Generator().manual_seed(n), dtype=torch.float32).to(dt)
                x = x.to(device)
                for fmt in formats:
                    time_ref = (not quick) or (fmt in HEADLINE_FORMATS and n <= 4096)
                    bs = get_format(fmt).default_block_size
                    make = _quant_case if op == "quantize" else _dequant_case
                    cases.append(make(x, fmt, bs, device, quick, time_ref))
                    if op == "quantize" and get_format(fmt).is_nv:  # calibrated g: the serving case
                        cases.append(_quant_case(x, fmt, bs, device, quick, time_ref, static_g=True))
    return cases


# ----------------------------------------------------------------------------- Triton AOT report
_AOT_SNIPPET = (
    "import json, sys\n"
    "from leankern.triton_kernels.aot import aot_report\n"
    "try:\n"
    "    r = aot_report(targets=(sys.argv[1],), quick=sys.argv[2] == '1')\n"
    "except TypeError:  # an aot_report without these keywords\n"
    "    r = aot_report()\n"
    "sys.stdout.write('@@AOT@@' + json.dumps(r, default=str))\n"
)


def triton_aot_report(arch: int = 90, quick: bool = False, timeout: int = 900) -> str:
    """Registers / shared memory per Triton kernel compiled ahead of time for ``sm_<arch>``.

    Runs ``leankern.triton_kernels.aot.aot_report()`` in a subprocess without TRITON_INTERPRET
    (AOT compilation needs the real compiler path); returns text, or a note when unavailable.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-c", _AOT_SNIPPET, f"sm_{arch}", "1" if quick else "0"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"Triton AOT report: timed out after {timeout}s"
    if proc.returncode != 0 or "@@AOT@@" not in proc.stdout:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"Triton AOT report: not available ({last})"
    report = json.loads(proc.stdout.split("@@AOT@@", 1)[1])
    return format_aot_report(report, arch)


_ARCH_KEYS = ("arch", "target", "sm", "cc", "capability", "gpu")
_NAME_KEYS = ("kernel", "name", "fn")


def format_aot_report(report, arch: int = 90) -> str:
    """Text for whatever ``aot_report()`` returned: a str, a list of dicts (one per kernel/target), or a dict."""
    head = f"Triton AOT report (sm_{arch}):"
    if isinstance(report, str):
        return f"{head}\n{report}"
    if isinstance(report, dict):
        if all(isinstance(v, dict) for v in report.values()):  # {kernel: {field: value}}
            report = [{"kernel": k, **v} for k, v in report.items()]
        else:
            return head + "\n" + "\n".join(f"  {k}: {v}" for k, v in report.items())
    if not isinstance(report, list) or not all(isinstance(r, dict) for r in report):
        return f"{head}\n{report}"
    arch_key = next((k for r in report for k in r if k.lower() in _ARCH_KEYS), None)
    rows = [r for r in report if arch_key is None or str(arch) in str(r.get(arch_key, ""))]
    if not rows:
        return f"{head} no kernels for this target in the report"
    keys = list(dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], (list, dict))))
    keys.sort(key=lambda k: (k.lower() not in _NAME_KEYS, 0))
    return head + "\n" + format_table(rows, [(k, k, "<" if k.lower() in _NAME_KEYS else "") for k in keys])


# ----------------------------------------------------------------------------- run / output
COLUMNS = [
    ("op", "op", ""), ("format", "format", ""), ("shape", "shape", ""), ("dtype", "dtype", ""),
    ("ours_ms", "ours ms", ".2f"), ("gbps", "GB/s", ".1f"), ("frac_bw", "%bw", ".0%"),
    ("ref_ms", "ref ms", ".0f"), ("x_ref", "x ref", ".0f"), ("torch_ms", "torch ms", ".1f"),
    ("x_torch", "x torch", ".1f"), ("torch_dq", "torch dQ", "+.2f"), ("check", "check", ""),
    ("target", "target", ""),
]


def run(quick: bool = False, device: str = "cpu", sizes=None, formats=None, dtypes=None,
        ops=("quantize", "dequantize"), csv_path=None, plot_path=None, aot: bool = True, out=print) -> BenchResult:
    """Run the MX bench and print one table (plus bandwidth, notes, Triton AOT report)."""
    sizes = sizes or ((4096,) if quick else (4096, 8192))
    formats = formats or tuple(FORMATS)
    dtypes = dtypes or (torch.bfloat16, torch.float32)
    bw = measure_copy_bandwidth(device)
    out(f"leankern bench mx ({'quick' if quick else 'full'}); {machine_summary(device)}; "
        f"measured copy bandwidth {bw:.1f} GB/s (read + write)")
    busy = busy_note(device)
    if busy:
        out(busy)
    rows = run_cases(build_cases(quick, device, sizes, formats, dtypes, ops), device, bw, desc="bench mx")
    out(format_table(rows, COLUMNS))
    out("ours = leankern.mx (" + ("C++" if device == "cpu" else "Triton") + " backend); x ref / x torch = "
        "their time / ours; torch dQ = QSNR(torch) - QSNR(ours) dB for quantize, QSNR of torch's dequantize "
        "vs exact for dequantize; bitexact* = checked on the first rows; target = >=50% bw and >=20x ref")
    for r in rows:
        if r.get("check") == "FAIL":
            out(f"  CHECK FAILED {r['op']} {r['format']} {r['dtype']}: {r.get('check_detail')}")
    notes = sorted({r["notes"] for r in rows if r.get("notes") and "not timed" not in r["notes"]})
    for n in notes:
        out(f"  note: {n}")
    q_targets = [r for r in rows if r["target"] and r["op"] == "quantize"]
    if q_targets:
        met = sum(r["target"] == "yes" for r in q_targets)
        out(f"quantize target met on {met}/{len(q_targets)} headline rows (MXFP8, MXFP4, MXINT8, NVFP4)")
    if aot:
        out(triton_aot_report(90, quick=quick))
    meta = {"bandwidth_gbps": round(bw, 2), "thp_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", "0")}
    if csv_path:
        write_csv(csv_path, rows, meta)
        out(f"wrote {csv_path}")
    if plot_path:
        plot(plot_path, rows, bw)
    return BenchResult(rows, bw, device, meta)


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
    ax.set(ylabel="GB/s (read + write)", title="leankern MX quantize / dequantize")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return True


def main(argv=None) -> int:
    from . import parse_bench_args, rerun_with_thp

    args = parse_bench_args(argv, prog="bench_mx.py")
    if argv is None and (rc := rerun_with_thp(args.no_thp)) is not None:
        return rc
    sizes = (args.size,) if args.size else None
    run(quick=args.quick, device=args.device, sizes=sizes, csv_path=args.csv, plot_path=args.plot, aot=not args.no_aot)
    return 0
