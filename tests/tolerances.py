"""Tolerance table for the test suite: the library's defaults plus test-only entries.

``leankern.testing.compare.TOLERANCES`` is the public default table (dtype keys ``fp32`` /
``bf16`` / ``fp16`` / ``fp64`` and one entry per format for "block-quantized matmul vs
dequantize-then-fp32-matmul"). Tests look entries up with :func:`tol` or pass
``table=TOLERANCES`` to ``assert_close``. Add family entries here as families land.
"""
import torch

from leankern.testing.compare import TOLERANCES as LIBRARY_TOLERANCES
from leankern.testing.compare import Tolerance, get_tolerance

TOLERANCES = dict(LIBRARY_TOLERANCES)
TOLERANCES.update({
    # Hadamard transform in another butterfly order: fp32 sums of n terms, |x| ~ rms.
    "hadamard_fp32": Tolerance(atol=0.0, rtol=1e-6, atol_rms=2e-6),
})


def tol(key) -> Tolerance:
    """Tolerance for ``key`` (a name above or a torch dtype)."""
    return get_tolerance(key, TOLERANCES)


__all__ = ["TOLERANCES", "Tolerance", "tol", "linear_error_bound", "assert_linear_within_bound",
           "assert_linear_result"]


def linear_error_bound(x_hat, w_hat, bias, out_dtype, extra_terms: int = 0):
    """Largest |kernel - exact| for ``y = x_hat @ w_hat^T + bias`` with fp32 accumulation, any order.

    Derivation: every kernel computes the fp32 products and sums of exactly representable fp32
    operands (x_hat: x itself, or its dequantized act_fmt codes; w_hat: decoded weights, exact in
    fp32). Any summation order of K terms, with or without FMA, errs by at most
    gamma_K * sum_k |x_k w_k| with gamma_K = K u / (1 - K u), u = 2^-24 (Higham, Thm 3.1; FMA only
    removes product roundings); adding the bias is one more term (K + 1). Rounding the fp32 result
    to ``out_dtype`` adds at most half an ulp of the output: u_out * |y| (u_out = 2^-8 bf16,
    2^-11 fp16, 0 for fp32), plus the fp32 error carried into it. Returns the bound [M, N] in
    float64 and the exact result; a kernel that drops a block, mis-scales one or decodes one code
    wrongly exceeds it (a wrong decode changes a term by >= its own magnitude).

    ``extra_terms``: roundings beyond the sum. NV formats pass 3: a kernel may multiply the sums
    by the tensor scale g in its epilogue (one rounding of y) instead of decoding each weight as
    the reference does, rnd(rnd(g * s) * v) (two roundings per weight, relative): <= 3 u more,
    relative to sum |x w|.
    """
    x64, w64 = x_hat.double(), w_hat.double()
    exact = x64 @ w64.T
    mags = x64.abs() @ w64.abs().T
    terms = x_hat.shape[-1] + extra_terms
    if bias is not None:
        exact = exact + bias.double()
        mags = mags + bias.double().abs()
        terms += 1
    u = 2.0**-24
    gamma = terms * u / (1 - terms * u)
    u_out = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[out_dtype]
    fp32_err = gamma * mags
    bound = fp32_err * (1 + u_out) + u_out * exact.abs() + _min_subnormal(out_dtype)
    return exact, bound


def _min_subnormal(dtype) -> float:
    return {torch.float32: 2.0**-149, torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}[dtype]


def assert_linear_within_bound(y, exact, bound):
    """``y`` (any float dtype) within ``bound`` of ``exact`` elementwise; where the exact result
    overflows y's dtype even after the allowed error, y must be the infinity of its sign."""
    y64 = y.double().reshape(exact.shape)
    overflow = (exact.abs() - bound) > torch.finfo(y.dtype).max
    assert torch.equal(y64[overflow], torch.sign(exact[overflow]) * float("inf")), "overflowed outputs must be +-inf"
    err = (y64 - exact).abs()[~overflow]
    worst = (err - bound[~overflow]).max() if err.numel() else torch.tensor(-1.0)
    assert worst <= 0, f"error exceeds the derived bound by {float(worst):.3g} (max err {float(err.max()):.3g})"


def assert_linear_result(args: tuple, y) -> None:
    """``y``, a result of ``mx_linear(*args)``, has the right shape and dtype and lies within
    :func:`linear_error_bound` of the exact product of the operands the reference defines."""
    from leankern.mx.formats import get_format
    from leankern.mx.ref import mx_dequantize_ref, mx_quantize_ref

    x, codes, scales, g_scale, fmt, block_size, bias, act_fmt = args
    w_hat = mx_dequantize_ref(codes, scales, g_scale, fmt, block_size, torch.float32)
    x_hat = x.float() if act_fmt is None else mx_dequantize_ref(
        *mx_quantize_ref(x.contiguous(), act_fmt, block_size, "rceil", None, None), act_fmt, block_size,
        torch.float32)
    nv = get_format(fmt).is_nv
    exact, bound = linear_error_bound(x_hat.reshape(-1, x.shape[-1]), w_hat, bias, x.dtype, 3 if nv else 0)
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], codes.shape[0])
    assert_linear_within_bound(y, exact, bound)
