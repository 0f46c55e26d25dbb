"""Numerics study of the MX/NV block formats: the QSNR table and the INT crest-factor theory.

Reproduces the QSNR study of the MX/NV formats in "INT v.s. FP" (arXiv 2510.25602)::

    QSNR = -10 log10( sum (x_hat - x)^2 / sum x^2 )   [dB]

for the eight paper formats (:data:`leankern.mx.formats.PAPER_FORMATS`, RCEIL scales for MX, the
two-level scale for NV) on three data sets, each with and without a 32-wide random Hadamard
rotation (RHT) along the blocked (last) dimension:

* ``gaussian``: i.i.d. N(0, 1).
* ``student_t3``: i.i.d. Student-t with 3 degrees of freedom, built as ``z / sqrt(chi2_3 / 3)``
  from seeded normals (heavy tails: finite variance, infinite kurtosis).
* ``outlier_channels``: N(0, 1) where a random 1/64 of the channels (columns of the last,
  blocked dimension, chosen with the seeded generator) are multiplied by 16 -- the per-channel
  activation outliers of LLMs. With 32-wide blocks about half the blocks hold one outlier.

Theory for INT elements (b bits, symmetric max Q = 2^(b-1) - 1, power-of-two block scale s),
treating rounding noise as uniform with variance s^2/12::

    QSNR = 10 log10(12) + 6.02 (b - 1) - 20 log10(rho) - 20 log10(kappa)

with kappa = amax_block / rms_block (the block crest factor) and, our reading of the paper's
rho, ``rho = 2^(b-1) * s / amax_block`` >= 1: how far the grid's nominal reach 2^(b-1) * s
overshoots the block max (1 would be perfect utilisation). RCEIL puts amax / s in (Q/2, Q], so
20 log10(rho) lies in [20 log10(2^(b-1)/Q), that + 6.02) dB; if log2(amax) is uniform modulo 1
its power mean (QSNR averages noise power, not dB) is 20 log10(2^(b-1)/Q) + 10 log10(3 / (2 ln 2))
= +3.35 dB (+0.07 dB more for INT8, +0.28 for INT6, +1.16 for INT4). :func:`crest_factor_study`
measures MXINT QSNR on blocks of varying crest factor and compares with that curve.

Run ``leankern numerics [--size N] [--plot PATH] [--csv PATH]``.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys

import torch

from .formats import PAPER_FORMATS, get_format
from ..benchmarks.harness import import_pyplot
from ..testing.compare import qsnr_db

__all__ = [
    "DATASETS", "SPEC_GAUSSIAN_QSNR", "gaussian", "student_t", "outlier_channels", "spiked_blocks",
    "make_dataset", "quantize_dequantize", "rotate", "qsnr_table", "paper_claims", "int_theory_qsnr",
    "rho_rceil_db", "crest_factor_study", "main",
]

DATASETS = ("gaussian", "student_t3", "outlier_channels")
ROTATIONS = ("none", "rht32")
#: Target QSNR (dB) of each paper format on 4096x4096 Gaussian fp32, RCEIL for MX, two-level for NV
#: (the "target (Gaussian)" column of the README's numerics table).
SPEC_GAUSSIAN_QSNR = {"mxint8": 41.6, "mxfp8_e4m3": 31.5, "mxint6": 29.4, "mxfp6_e2m3": 31.0,
                      "mxint4": 16.8, "mxfp4": 18.8, "nvint4": 21.3, "nvfp4": 20.4}
OUTLIER_FRACTION = 1 / 64
OUTLIER_MAGNITUDE = 16.0


# ----------------------------------------------------------------------------- data sets
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def gaussian(shape, seed: int = 0) -> torch.Tensor:
    """i.i.d. N(0, 1), fp32. Shape: ``shape``."""
    return torch.randn(tuple(shape), generator=_gen(seed), dtype=torch.float32)


def student_t(shape, df: int = 3, seed: int = 0) -> torch.Tensor:
    """i.i.d. Student-t(df) as ``z / sqrt(chi2_df / df)`` (integer ``df``), fp32. Shape: ``shape``."""
    if int(df) != df or df < 1:
        raise ValueError(f"df: expected a positive integer, got {df!r}")
    g = _gen(seed)
    z = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
    chi2 = (torch.randn((int(df), *shape), generator=g, dtype=torch.float64) ** 2).sum(0)
    return (z / torch.sqrt(chi2 / df)).to(torch.float32)


def outlier_channels(shape, seed: int = 0, fraction: float = OUTLIER_FRACTION,
                     magnitude: float = OUTLIER_MAGNITUDE) -> torch.Tensor:
    """N(0, 1) with ``round(fraction * K)`` (at least 1) random channels of the last dim scaled by ``magnitude``.

    Shape: ``shape`` = ``[..., K]``, fp32.
    """
    g = _gen(seed)
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    K = x.shape[-1]
    n_out = max(1, round(fraction * K))
    channels = torch.randperm(K, generator=g)[:n_out]
    x[..., channels] *= magnitude
    return x


def spiked_blocks(shape, block_size: int = 32, seed: int = 0, max_spike: float = 64.0) -> torch.Tensor:
    """N(0, 1) where one random element per block is multiplied by a log-uniform factor in [1, max_spike].

    Gives block crest factors spread from ~2 (plain Gaussian) to ~sqrt(block_size).
    Shape: ``shape`` = ``[..., K]``, ``K % block_size == 0``, fp32.
    """
    g = _gen(seed)
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    blocks = x.view(-1, block_size)  # [B, bs]
    n = blocks.shape[0]
    pos = torch.randint(0, block_size, (n,), generator=g)
    factor = torch.exp(torch.rand(n, generator=g, dtype=torch.float64) * math.log(max_spike)).float()
    rows = torch.arange(n)
    blocks[rows, pos] *= factor
    return x


def make_dataset(name: str, shape, seed: int = 0) -> torch.Tensor:
    """One of :data:`DATASETS` by name. Shape: ``shape``, fp32."""
    if name == "gaussian":
        return gaussian(shape, seed)
    if name == "student_t3":
        return student_t(shape, 3, seed)
    if name == "outlier_channels":
        return outlier_channels(shape, seed)
    raise ValueError(f"dataset: expected one of {DATASETS}, got {name!r}")


# ----------------------------------------------------------------------------- quantize / rotate
def backend_description() -> str:
    """Which backend :func:`quantize_dequantize` runs here."""
    from ..core import extension

    return "leankern.mx.quantize, default backend" + (" (C++)" if extension() is not None else " (reference)")


def quantize_dequantize(x: torch.Tensor, fmt: str, block_size: int | None = None,
                        scale_mode: str = "rceil") -> torch.Tensor:
    """Quantize ``x`` to ``fmt`` and back to fp32. Shape: ``[..., K]`` -> ``[..., K]``."""
    import leankern

    f = get_format(fmt)
    bs = block_size or f.default_block_size
    return leankern.mx.quantize(x, f.name, block_size=bs, scale_mode=scale_mode).dequantize(torch.float32)


def rotate(x: torch.Tensor, chunk_size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random Hadamard rotation (:func:`leankern.mx.rotate`). Shape: ``[..., K]`` -> ``[..., K]``."""
    import leankern

    return leankern.mx.rotate(x, chunk_size=chunk_size, seed=seed)


# ----------------------------------------------------------------------------- QSNR table
def qsnr_table(size: int = 4096, formats=PAPER_FORMATS, datasets=DATASETS, rotations=ROTATIONS,
               seed: int = 0, progress: bool = False) -> list[dict]:
    """QSNR (dB) of every (format, dataset, rotation) on ``size x size`` fp32 data.

    Returns rows ``{"format", "dataset", "rotation", "qsnr_db"}``.
    """
    jobs = [(d, r) for d in datasets for r in rotations]
    rows = []
    bar = _progress(len(jobs) * len(formats), "numerics") if progress else None
    for i, (ds, rot) in enumerate(jobs):
        x = make_dataset(ds, (size, size), seed + i // len(rotations))  # same data for both rotations
        if rot == "rht32":
            x = rotate(x, 32, seed)
        for fmt in formats:
            rows.append({"format": fmt, "dataset": ds, "rotation": rot,
                         "qsnr_db": qsnr_db(x, quantize_dequantize(x, fmt))})
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    return rows


def _lookup(rows, fmt, ds, rot):
    for r in rows:
        if (r["format"], r["dataset"], r["rotation"]) == (fmt, ds, rot):
            return r["qsnr_db"]
    return None


# (description, (fmt_a, dataset, rotation), (fmt_b, dataset, rotation)): claim is a > b.
PAPER_CLAIMS = (
    ("MXINT8 > MXFP8 (Gaussian)", ("mxint8", "gaussian", "none"), ("mxfp8_e4m3", "gaussian", "none")),
    ("MXFP4 > MXINT4 (Gaussian)", ("mxfp4", "gaussian", "none"), ("mxint4", "gaussian", "none")),
    ("NVFP4 > NVINT4 (Student-t(3))", ("nvfp4", "student_t3", "none"), ("nvint4", "student_t3", "none")),
    ("NVINT4 > NVFP4 (Student-t(3) after 32-wide RHT)", ("nvint4", "student_t3", "rht32"),
     ("nvfp4", "student_t3", "rht32")),
)


def paper_claims(rows) -> list[tuple[str, float, float, bool]]:
    """Evaluate :data:`PAPER_CLAIMS` on a :func:`qsnr_table`: ``(claim, qsnr_a, qsnr_b, holds)``."""
    out = []
    for text, a, b in PAPER_CLAIMS:
        qa, qb = _lookup(rows, *a), _lookup(rows, *b)
        if qa is not None and qb is not None:
            out.append((text, qa, qb, qa > qb))
    return out


# ----------------------------------------------------------------------------- INT theory
def rho_rceil_db(bits: int) -> float:
    """Power-mean 20 log10(rho) under RCEIL scaling, log2(amax) uniform modulo 1 (see module doc)."""
    q = 2 ** (bits - 1) - 1
    return 20 * math.log10(2 ** (bits - 1) / q) + 10 * math.log10(3 / (2 * math.log(2)))


def int_theory_qsnr(bits: int, crest: float, rho_db: float | None = None) -> float:
    """10 log10(12) + 6.02 (b-1) - 20 log10(rho) - 20 log10(kappa); ``rho_db`` defaults to :func:`rho_rceil_db`."""
    rho_db = rho_rceil_db(bits) if rho_db is None else rho_db
    return 10 * math.log10(12) + 20 * math.log10(2) * (bits - 1) - rho_db - 20 * math.log10(crest)


def crest_factor_study(size: int = 1024, bits=(4, 6, 8), block_size: int = 32, n_bins: int = 8,
                       seed: int = 0) -> list[dict]:
    """Measured MXINT QSNR vs the theory, in bins of block crest factor, on :func:`spiked_blocks` data.

    Per bin: ``kappa`` (power-mean crest factor of its blocks), and per b: ``measured_b``,
    ``theory_b`` (the curve, RCEIL rho), ``model_b`` (uniform-noise model with each block's
    actual scale, i.e. the formula with the measured rho).
    """
    from .ref import mx_scale_exponent

    x = spiked_blocks((size, size), block_size, seed)
    xb = x.double().view(-1, block_size)  # [B, bs]
    power = xb.pow(2).sum(-1)  # [B]
    amax = xb.abs().amax(-1)
    kappa = amax / torch.sqrt(power / block_size)
    edges = torch.linspace(float(kappa.min()), float(kappa.max()) + 1e-9, n_bins + 1, dtype=torch.float64)
    bin_id = torch.bucketize(kappa, edges[1:-1])  # [B]
    err, model_noise = {}, {}
    for b in bits:
        fmt = f"mxint{b}"
        el = get_format(fmt).element
        err[b] = (quantize_dequantize(x, fmt, block_size).double().view(-1, block_size) - xb).pow(2).sum(-1)
        e = mx_scale_exponent(amax.float(), el, "rceil").clamp(-127, 127).double()
        model_noise[b] = block_size * torch.exp2(2 * e) / 12
    rows = []
    for i in range(n_bins):
        m = bin_id == i
        if int(m.sum()) == 0:
            continue
        sig = float(power[m].sum())
        k_eff = math.sqrt(float((power[m] * kappa[m] ** 2).sum()) / sig)  # power mean: theory(k_eff) = pooled theory
        row = {"kappa_lo": float(edges[i]), "kappa_hi": float(edges[i + 1]), "kappa": k_eff, "blocks": int(m.sum())}
        for b in bits:
            row[f"measured_{b}"] = -10 * math.log10(float(err[b][m].sum()) / sig)
            row[f"theory_{b}"] = int_theory_qsnr(b, k_eff)
            row[f"model_{b}"] = -10 * math.log10(float(model_noise[b][m].sum()) / sig)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- output
def _progress(total, desc):
    from ..benchmarks.harness import progress_bar

    return progress_bar(total, desc)


_SHORT = {"gaussian": "gauss", "student_t3": "t(3)", "outlier_channels": "outlier"}


def format_qsnr_table(rows) -> str:
    """The table as text: one row per format, one column per (dataset, rotation), plus the target Gaussian QSNR
    (:data:`SPEC_GAUSSIAN_QSNR`) and the difference from it."""
    fmts = list(dict.fromkeys(r["format"] for r in rows))
    cols = list(dict.fromkeys((r["dataset"], r["rotation"]) for r in rows))
    names = [_SHORT.get(d, d) + ("+RHT" if rot != "none" else "") for d, rot in cols]
    head = f"{'format':<12}" + "".join(f"{n:>12}" for n in names) + f"{'target':>12}{'delta':>8}"
    lines = [head, "-" * len(head)]
    for f in fmts:
        vals = [_lookup(rows, f, d, rot) for d, rot in cols]
        line = f"{f:<12}" + "".join(f"{v:>12.2f}" for v in vals)
        spec, got = SPEC_GAUSSIAN_QSNR.get(f), _lookup(rows, f, "gaussian", "none")
        if spec is not None and got is not None:
            line += f"{spec:>12.1f}{got - spec:>+8.2f}"
        lines.append(line)
    return "\n".join(lines)


def format_crest_table(rows, bits=(4, 6, 8)) -> str:
    head = f"{'kappa bin':>13}{'kappa':>7}{'blocks':>8}" + "".join(
        f"{'INT%d meas' % b:>11}{'theory':>8}{'model':>8}" for b in bits)
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['kappa_lo']:>6.2f}-{r['kappa_hi']:<6.2f}{r['kappa']:>7.2f}{r['blocks']:>8}"
        line += "".join(f"{r[f'measured_{b}']:>11.2f}{r[f'theory_{b}']:>8.2f}{r[f'model_{b}']:>8.2f}" for b in bits)
        lines.append(line)
    return "\n".join(lines)


def write_csv(path, rows, crest_rows) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["table", "format", "dataset", "rotation", "qsnr_db", "spec_db"])
        for r in rows:
            spec = SPEC_GAUSSIAN_QSNR.get(r["format"]) if (r["dataset"], r["rotation"]) == ("gaussian", "none") else ""
            w.writerow(["qsnr", r["format"], r["dataset"], r["rotation"], f"{r['qsnr_db']:.4f}", spec])
        if crest_rows:
            keys = list(crest_rows[0])
            w.writerow(["crest"] + keys)
            for r in crest_rows:
                w.writerow(["crest"] + [f"{r[k]:.4f}" if isinstance(r[k], float) else r[k] for k in keys])


def plot(path, rows, crest_rows, bits=(4, 6, 8)) -> bool:
    """Write a PNG: INT theory vs measured QSNR over crest factor, and the QSNR table as bars.

    Returns False (and prints why) when matplotlib is not installed (``pip install leankern[plot]``).
    """
    plt = import_pyplot(path)
    if plt is None:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    ks = [1 + i * (math.sqrt(32) - 1) / 100 for i in range(101)]
    for b in bits:
        line, = ax1.plot(ks, [int_theory_qsnr(b, k) for k in ks], label=f"theory INT{b}")
        ax1.plot([r["kappa"] for r in crest_rows], [r[f"measured_{b}"] for r in crest_rows], "o",
                 color=line.get_color(), label=f"MXINT{b} measured")
    ax1.set(xlabel="block crest factor kappa = amax / rms", ylabel="QSNR (dB)", title="INT QSNR vs crest factor")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fmts = list(dict.fromkeys(r["format"] for r in rows))
    cols = list(dict.fromkeys((r["dataset"], r["rotation"]) for r in rows))
    width = 0.8 / max(1, len(cols))
    for j, (ds, rot) in enumerate(cols):
        xs = [i + j * width for i in range(len(fmts))]
        ax2.bar(xs, [_lookup(rows, f, ds, rot) for f in fmts], width,
                label=_SHORT.get(ds, ds) + ("+RHT" if rot != "none" else ""))
    ax2.set_xticks([i + 0.4 - width / 2 for i in range(len(fmts))], fmts, rotation=30, fontsize=8)
    ax2.set(ylabel="QSNR (dB)", title="QSNR by format and data")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _output_error(flag: str, path: str) -> str | None:
    """Why ``path`` (of option ``flag``) cannot be written, else None: probed by opening it for append (no
    truncation; a file created by the probe is removed again), so it holds for root and read-only mounts alike."""
    existed = os.path.lexists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        return f"{flag}: cannot write {path} ({exc.strerror or type(exc).__name__})"
    if not existed:
        os.remove(path)
    return None


def check_outputs(csv_path: str | None, plot_path: str | None) -> str | None:
    """An error message when a requested output cannot be written (a path, or matplotlib for the plot), else None.

    Run before the study, which takes minutes at the default size: an output the user asked for fails up front.
    """
    for flag, path in (("--csv", csv_path), ("--plot", plot_path)):
        if path and (err := _output_error(flag, path)):
            return err
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return "--plot: matplotlib is not installed (pip install matplotlib, or leankern[plot])"
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="leankern numerics", description="QSNR study of the MX/NV formats "
                                "(\"INT v.s. FP\", arXiv 2510.25602; format rules: docs/numerics.md).")
    p.add_argument("--size", type=int, default=4096,
                   help="data is size x size fp32 (default 4096, as in the README's table)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib)")
    p.add_argument("--csv", metavar="PATH", help="write the numbers as CSV")
    p.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.size < 32 or args.size % 32:
        p.error(f"--size: expected a multiple of 32 (the block size), got {args.size}")
    if err := check_outputs(args.csv, args.plot):
        print(f"{p.prog}: {err}; nothing computed", file=sys.stderr)
        return 2
    print(f"QSNR (dB), {args.size}x{args.size} fp32, seed {args.seed}; MX scales RCEIL, NV two-level; "
          f"quantizer: {backend_description()}")
    rows = qsnr_table(args.size, seed=args.seed, progress=not args.no_progress)
    print(format_qsnr_table(rows))
    print("\nPaper claims:")
    for text, qa, qb, ok in paper_claims(rows):
        print(f"  {'holds ' if ok else 'FAILS '} {text}: {qa:.2f} vs {qb:.2f} dB")
    crest_size = min(args.size, 2048)
    crest_rows = crest_factor_study(crest_size, seed=args.seed)
    print(f"\nMXINT QSNR vs block crest factor ({crest_size}x{crest_size} spiked Gaussian, block 32): measured, "
          "theory 10.79+6.02(b-1)-20log10(rho)-20log10(kappa) with RCEIL rho, and the uniform-noise model "
          "with each block's actual scale")
    print(format_crest_table(crest_rows))
    rc = 0
    if args.csv:
        try:
            write_csv(args.csv, rows, crest_rows)
            print(f"\nwrote {args.csv}")
        except OSError as exc:  # checked before the run; the disk can still fill up
            print(f"{p.prog}: --csv: cannot write {args.csv} ({exc.strerror or type(exc).__name__})", file=sys.stderr)
            rc = 1
    if args.plot:
        try:
            if plot(args.plot, rows, crest_rows):
                print(f"wrote {args.plot}")
            else:
                rc = 1  # plot() said why
        except OSError as exc:
            print(f"{p.prog}: --plot: cannot write {args.plot} ({exc.strerror or type(exc).__name__})", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
