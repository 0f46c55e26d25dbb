"""SEFP: shared-exponent FP with truncated mantissas (OTARo, arXiv 2511.13147).

One stored copy of a weight serves every mantissa width: lower widths are truncations of the
stored one, so switching precision is a scalar argument, not a requantization. The copy is kept as
bit planes (sign, then mantissa bits from the most significant down), so reading width ``m`` costs
``1 + m`` bits per weight plus ``8 / block_size`` for the exponent (docs/sefp.md, "Storage: bit planes").

>>> w_q = leankern.sefp.quantize(linear.weight, m_max=8)        # SEFPTensor, once
>>> y8 = leankern.sefp.linear(x, w_q, m=8)                       # 9 bits per weight read
>>> y4 = leankern.sefp.linear(x, w_q, m=4)                       # the same copy, 5 bits read
>>> w_q.at(4).dequantize()                                       # the 4-bit weight; at() is a view
>>> p5 = w_q.packed(5)                                           # optional single-width copy: 6 contiguous bits
>>> y5 = leankern.sefp.linear(x, p5)                             # per weight, one stream per row

Reference: :mod:`leankern.sefp.ref` (the definition). Ops: :mod:`leankern.sefp.ops`.
"""
from __future__ import annotations

import torch

from ..core import FrozenWeightLinear, needs_input_grad
from . import ops  # registers torch.ops.leankern.sefp_*
from .packed import SEFPPacked
from .ref import BLOCK_SIZES, EMPTY, MAX_M, fake_quant_values
from .tensor import SEFPTensor

__all__ = ["SEFPTensor", "SEFPPacked", "quantize", "dequantize", "linear", "sefp_fake_quant", "DEFAULT_MENU",
           "BLOCK_SIZES", "EMPTY", "MAX_M"]

DEFAULT_MENU = (8, 7, 6, 5, 4, 3, 2)  # widths served from one quantization at m_max = 8


def quantize(w: torch.Tensor, *, m_max: int = 8, block_size: int = 32) -> SEFPTensor:
    """Quantize a weight once, at the widest width to be served.

    Parameters
    ----------
    w : Tensor
        fp32 / bf16 / fp16 ``[N, K]`` (an ``nn.Linear`` weight: blocks run along K, the input dim).
        NaN / Inf raise ValueError (SEFP has no code for them).
    m_max : int
        Mantissa bits kept, leading bit included (1..16); every ``m <= m_max`` is then a view.
    block_size : int
        Elements sharing one exponent along K: 32, 64, 128 or 256. K need not be a multiple
        (the last block is zero padded).

    Returns
    -------
    SEFPTensor
        Shape: planes ``[1 + m_max, N, ceil(K / block_size) * block_size / 32]`` int32,
        exponents ``[N, ceil(K / block_size)]`` int8.
    """
    planes, exponents = torch.ops.leankern.sefp_quantize.default(w, m_max, block_size)
    return SEFPTensor(planes, exponents, tuple(w.shape), w.dtype, block_size)


def dequantize(w: SEFPTensor, m: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[N, K]`` weight at width ``m`` (default ``w.m``) in ``dtype`` (default: the original)."""
    return w.dequantize(m, dtype)


def linear(x: torch.Tensor, w: SEFPTensor | SEFPPacked, m: int | None = None,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ dequantize(w, m)^T + bias``, weight-only, fp32 accumulation, reading ``1 + m`` planes.

    Shape: x ``[..., K]`` (fp32 / bf16 / fp16), bias ``[N]``, y ``[..., N]`` in x's dtype.

    ``w`` an :class:`SEFPTensor` (any width ``m`` up to its planes, default all) or an :class:`SEFPPacked`
    single-width copy (``w.packed(m)``; ``m`` may be left out or must equal the copy's width): the same product,
    through ``torch.ops.leankern.sefp_packed_linear``.

    Gradients: with grad enabled and ``x`` (or ``bias``) requiring grad, the result has a backward for ``x``
    (``grad_y @ dequantize(w, m)`` in fp32) and ``bias``; the stored weight is frozen (no gradient; to train it,
    see :func:`sefp_fake_quant`). The raw ops have no derivative, and take K from the stored width (padded to the
    block size), so they cannot tell a short ``x`` row from a padded one: this function checks ``x``'s K against
    ``w.shape``.
    """
    if not isinstance(w, (SEFPTensor, SEFPPacked)):
        raise TypeError(f"w: expected an SEFPTensor (leankern.sefp.quantize) or an SEFPPacked (SEFPTensor.packed), "
                        f"got {type(w).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"x: expected shape [..., K={w.shape[1]}] (w.shape[1]), got {tuple(x.shape)}")
    m = w._width(m)
    if isinstance(w, SEFPPacked):
        def op(x, b):
            return torch.ops.leankern.sefp_packed_linear.default(x, w.codes, w.exponents, m, w.block_size, b)

        def weight():
            return w.dequantize(torch.float32)
        stored = w.codes
    else:
        def op(x, b):
            return torch.ops.leankern.sefp_linear.default(x, w.planes, w.exponents, m, w.block_size, b)

        def weight():
            return w.dequantize(m, torch.float32)
        stored = w.planes
    if needs_input_grad(x, bias):
        return FrozenWeightLinear.apply(x, bias, op, lambda g: g @ weight())
    try:
        return op(x, bias)
    except ValueError:  # the op names its own stored tensor on a device mismatch: name w instead
        if stored.device != x.device:
            raise ValueError(f"w: expected an {type(w).__name__} on {x.device} (the device of x), got "
                             f"{stored.device}") from None
        raise


class _SEFPFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(w, m, block_size):
        return fake_quant_values(w, m, block_size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None  # straight-through: dQ/dw = 1


def sefp_fake_quant(w: torch.Tensor, m: int, block_size: int = 32) -> torch.Tensor:
    """``dequantize(quantize(w, m))`` in w's dtype with a straight-through gradient (dQ/dw = 1).

    For fine-tuning at several widths (OTARo's "loss summed over bit-widths"); plain tensor ops, so
    it runs on any device and inside ``torch.compile``. Shape: ``w [..., K]`` -> same.
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w: expected a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        # SEFP is defined on fp32 patterns: fp64 beyond fp32's range would come back as inf
        raise TypeError(f"w: expected dtype float32, bfloat16 or float16, got {w.dtype}")
    if w.dim() == 0:
        raise ValueError("w: expected shape [..., K] with at least one dimension, got a 0-d tensor")
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_M:
        raise ValueError(f"m: expected an int in [1, {MAX_M}], got {m!r}")
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size: expected one of {BLOCK_SIZES}, got {block_size!r}")
    return _SEFPFakeQuant.apply(w, m, block_size)
