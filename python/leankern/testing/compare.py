"""Comparators: bit-exact equality with a readable report, QSNR, and tolerance-table closeness.

Quantizers are compared bit for bit (:func:`assert_bitexact`); anything that sums in a
different order (GEMMs, reductions) is compared with :func:`assert_close` against a named
entry of :data:`TOLERANCES`; quantization quality is measured with :func:`qsnr_db`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
import torch

__all__ = ["assert_bitexact", "bit_view", "qsnr_db", "Tolerance", "TOLERANCES", "get_tolerance", "assert_close"]

# Same-width integer type used to compare bit patterns.
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bit_view(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bit patterns as a same-width integer tensor (bool -> uint8).

    Complex tensors give the patterns of their real and imaginary parts: shape ``[..., 2]``.
    """
    t = t.detach()
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    if t.is_complex():
        t = torch.view_as_real(t.resolve_conj())
    if not t.is_floating_point() and t.dtype in _INT_OF_SIZE.values():
        return t
    return t.contiguous().view(_INT_OF_SIZE[t.element_size()])


def _hex(bits: int, nbytes: int) -> str:
    return f"0x{bits & ((1 << (8 * nbytes)) - 1):0{2 * nbytes}x}"


def _describe(t: torch.Tensor, bits: torch.Tensor, idx: tuple) -> str:
    """'0x3f800000 (1.0)' for element ``idx`` of ``t``; complex: '(0x3f800000, 0x40000000) ((1+2j))' (real, imag)."""
    if t.is_complex():
        re_bits, im_bits = (int(b) for b in bits[idx].tolist())
        part = t.element_size() // 2
        return f"({_hex(re_bits, part)}, {_hex(im_bits, part)}) ({complex(t[idx].to(torch.complex128))!r})"
    raw = int(bits[idx])
    if t.is_floating_point():
        decoded = repr(float(t[idx].to(torch.float64)))
    else:
        decoded = str(int(t[idx]))
    return f"{_hex(raw, t.element_size())} ({decoded})"


def assert_bitexact(actual, expected, name: str = "tensor", *, max_listed: int = 5, any_nan: bool = False) -> None:
    """Assert two tensors (or equal-length tuples/lists of tensors) are identical bit for bit.

    Shapes and dtypes must match exactly. On failure the message gives the number of
    mismatching elements and, for the first ``max_listed`` of them (in row-major order), the
    index and both values as hex bit patterns and decoded numbers. ``any_nan=True`` lets any
    NaN match any NaN (payload and sign ignored); the default compares NaNs bit for bit.
    Complex tensors compare the bit patterns of the real and the imaginary part (``any_nan``
    applies to each part) and report both.

    Shape: ``actual`` and ``expected`` any shape, equal.

    Examples
    --------
    >>> assert_bitexact(torch.tensor([1.0]), torch.tensor([1.0]), name="codes")
    """
    __tracebackhide__ = True  # pytest: show the caller's line, not this function's
    if isinstance(actual, (tuple, list)) or isinstance(expected, (tuple, list)):
        if not isinstance(actual, (tuple, list)) or not isinstance(expected, (tuple, list)) or len(actual) != len(expected):
            raise AssertionError(f"{name}: structure differs: {type(actual).__name__} vs {type(expected).__name__}")
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_bitexact(a, e, name=f"{name}[{i}]", max_listed=max_listed, any_nan=any_nan)
        return
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{name}: dtype differs: actual {actual.dtype}, expected {expected.dtype}")
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape differs: actual {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    a, e = actual.detach().cpu(), expected.detach().cpu()
    ab, eb = bit_view(a), bit_view(e)
    diff = ab != eb
    if a.is_complex():  # real/imag pair per element: [..., 2]
        if any_nan:
            ar, er = torch.view_as_real(a.resolve_conj()), torch.view_as_real(e.resolve_conj())
            diff &= ~(torch.isnan(ar) & torch.isnan(er))
        diff = diff.any(dim=-1)
    elif any_nan and a.is_floating_point():
        diff &= ~(torch.isnan(a) & torch.isnan(e))
    n_bad = int(diff.sum())
    if n_bad == 0:
        return
    where = diff.nonzero()[:max_listed]  # [m, ndim], row-major order
    lines = [f"{name}: {n_bad} of {diff.numel()} elements differ bitwise ({a.dtype}, shape {tuple(a.shape)})"]
    for row in where.tolist():
        idx = tuple(row)
        lines.append(f"  at index {idx}: actual {_describe(a, ab, idx)}, expected {_describe(e, eb, idx)}")
    if n_bad > max_listed:
        lines.append(f"  ... and {n_bad - max_listed} more")
    raise AssertionError("\n".join(lines))


def qsnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Quantization signal-to-noise ratio in dB: ``-10 log10(sum((x_hat - x)^2) / sum(x^2))``.

    Computed in float64. ``inf`` for an exact reconstruction, ``nan`` if anything is non-finite
    or ``x`` is all zero with a non-zero error.

    Shape: ``x`` and ``x_hat`` any shape, equal.
    """
    if x.shape != x_hat.shape:
        raise ValueError(f"x_hat: expected shape {tuple(x.shape)}, got {tuple(x_hat.shape)}")
    x64, y64 = x.detach().to(torch.float64), x_hat.detach().to(torch.float64)
    noise = float(((y64 - x64) ** 2).sum())
    signal = float((x64**2).sum())
    if not (math.isfinite(noise) and math.isfinite(signal)):
        return math.nan
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return math.nan
    return -10.0 * math.log10(noise / signal)


@dataclass(frozen=True)
class Tolerance:
    """Allowed |actual - expected| per element: ``atol + atol_rms * rms(expected) + rtol * |expected|``.

    ``atol_rms`` scales the absolute part with the output's RMS, so one entry serves outputs of
    any magnitude (a dot product's rounding error grows with its terms, not with its result).
    """

    atol: float = 0.0
    rtol: float = 0.0
    atol_rms: float = 0.0


_MATMUL_FP32_ACC = Tolerance(atol=0.0, rtol=1e-5, atol_rms=1e-5)  # exact products, fp32 sums in any order
_MATMUL_NV = Tolerance(atol=0.0, rtol=4e-3, atol_rms=4e-3)  # decode scale g*s rounded once more (bf16 dequant on GPU)

#: The library's default tolerance table. Keys: output dtypes (``"fp32"``, ``"bf16"``,
#: ``"fp16"``; for elementwise float math done in that dtype) and format names (for a
#: block-quantized matmul compared with "dequantize both operands, then fp32 matmul"). MX
#: element values times power-of-two scales are exact in bf16 and fp32, so only the summation
#: order differs; NV decode scales ``g * s`` are rounded, hence the looser NV entries.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-5, rtol=1.3e-6),
    "fp16": Tolerance(atol=1e-5, rtol=1e-3),
    "bf16": Tolerance(atol=1e-5, rtol=1.6e-2),
    "fp64": Tolerance(atol=1e-7, rtol=1e-7),
    **{f: _MATMUL_FP32_ACC for f in ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4",
                                     "mxint8", "mxint6", "mxint4")},
    "nvfp4": _MATMUL_NV,
    "nvint4": _MATMUL_NV,
}
_DTYPE_KEYS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def get_tolerance(key, table: dict | None = None) -> Tolerance:
    """Look up ``key`` (a table key, a torch dtype or a :class:`Tolerance`) in ``table`` (default :data:`TOLERANCES`)."""
    if isinstance(key, Tolerance):
        return key
    table = TOLERANCES if table is None else table
    name = _DTYPE_KEYS.get(key, key) if isinstance(key, torch.dtype) else str(key).lower()
    if name not in table:
        raise KeyError(f"fmt_or_key: no tolerance entry {name!r}; known: {sorted(table)}")
    return table[name]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, fmt_or_key, *, table: dict | None = None,
                 name: str = "tensor", max_listed: int = 5) -> None:
    """Assert ``actual`` is within the tolerance named by ``fmt_or_key`` of ``expected``.

    NaN must face NaN and infinities must match exactly: an infinite expected value is matched
    only by the same infinity (no tolerance applies to it), and an infinite actual value only by
    the same infinite expected value. The failure message gives the number of violations, the
    largest error relative to the allowance, and the first offending indices.

    Shape: ``actual`` and ``expected`` any shape, equal.
    """
    __tracebackhide__ = True
    tol = get_tolerance(fmt_or_key, table)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape differs: actual {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    a = actual.detach().cpu().to(torch.float64)
    e = expected.detach().cpu().to(torch.float64)
    finite_e = e[torch.isfinite(e)]
    rms = float(finite_e.pow(2).mean().sqrt()) if finite_e.numel() else 0.0
    inf_e = torch.isinf(e)
    # An infinite expected value allows no error (its rtol * |e| would be inf and accept anything): only the
    # same infinity matches it, as in torch.testing.assert_close. An infinite actual value against a finite
    # expected one has an infinite error and fails.
    allowed = torch.where(inf_e, 0.0, tol.atol + tol.atol_rms * rms + tol.rtol * e.abs())  # [...]
    err = (a - e).abs()
    bad = ~(err <= allowed)  # NaN error (NaN on either side, or inf - inf) counts as bad ...
    same_special = (torch.isnan(a) & torch.isnan(e)) | (inf_e & (a == e))
    bad &= ~same_special  # ... unless both are NaN or the same infinity
    n_bad = int(bad.sum())
    if n_bad == 0:
        return
    ratio = torch.where(bad, err / allowed.clamp_min(1e-300), torch.zeros_like(err))
    lines = [f"{name}: {n_bad} of {bad.numel()} elements outside {tol} (rms(expected)={rms:.4g}); "
             f"worst error is {float(ratio.nan_to_num(math.inf, posinf=math.inf).max()):.3g}x the allowance"]
    for row in bad.nonzero()[:max_listed].tolist():
        idx = tuple(row)
        lines.append(f"  at index {idx}: actual {float(a[idx])!r}, expected {float(e[idx])!r}, "
                     f"allowed {float(allowed[idx]):.3g}")
    raise AssertionError("\n".join(lines))
