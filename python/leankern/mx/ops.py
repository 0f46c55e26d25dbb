"""MX / NV block formats: the public ops.

Torch ops (``torch.ops.leankern.*``; each passes ``torch.library.opcheck`` and runs under
``torch.compile(fullgraph=True)``):

* ``mx_quantize(x, fmt, block_size, scale_mode, rand_bits, global_scale, strict) -> (codes, scales, global_scale)``
* ``mx_dequantize(codes, scales, global_scale, fmt, block_size, out_dtype) -> Tensor``
* ``hadamard_transform(x, chunk_size, scale, signs) -> Tensor``

Python front-ends: :func:`quantize` (returns an :class:`MXTensor`), :func:`dequantize`,
:func:`hadamard_transform`, :func:`random_hadamard_signs`, :func:`rotate`.
Numerics are defined by :mod:`leankern.ref.mx`; every backend matches it bit-exactly.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..formats import FORMATS, PAPER_FORMATS, get_format, format_names
from ..ref import mx as ref
from . import _dispatch
from ._checks import FLOAT_DTYPES, check_choice, check_divisible, check_power_of_two, check_shape, check_tensor
from .mx_layout import swizzle_scales, unswizzle_scales
from .mx_tensor import MXTensor

__all__ = [
    "quantize", "dequantize", "hadamard_transform", "random_hadamard_signs", "rotate",
    "MXTensor", "swizzle_scales", "unswizzle_scales", "FORMATS", "PAPER_FORMATS", "format_names",
]

SCALE_MODES = ("rceil", "floor")
MAX_BLOCK = 1024
MAX_CHUNK = 32768


def _check_quantize_args(x, fmt, block_size, scale_mode, rand_bits, global_scale):
    f = get_format(fmt)
    check_tensor("x", x, FLOAT_DTYPES, min_dim=1)
    check_power_of_two("block_size", block_size, 2, MAX_BLOCK)
    check_choice("scale_mode", scale_mode, SCALE_MODES)
    check_divisible("x.shape[-1]", x.shape[-1], "block_size", block_size)
    if rand_bits is not None:
        check_tensor("rand_bits", rand_bits, (torch.int32,), device=x.device)
        check_shape("rand_bits", rand_bits, x.shape)
    if global_scale is not None:
        if not f.is_nv:
            raise ValueError(f"global_scale: only NV formats take a per-tensor scale, got fmt={f.name!r}")
        check_tensor("global_scale", global_scale, (torch.float32,), device=x.device)
        check_shape("global_scale", global_scale, ())
    return f


def _quantize_out_shapes(x: torch.Tensor, f, block_size: int):
    lead, K = tuple(x.shape[:-1]), x.shape[-1]
    code_k = K // 2 if f.element.packed else K
    return (*lead, code_k), (*lead, K // block_size)


@torch.library.custom_op("leankern::mx_quantize", mutates_args=())
def mx_quantize_op(
    x: torch.Tensor, fmt: str, block_size: int, scale_mode: str,
    rand_bits: Optional[torch.Tensor], global_scale: Optional[torch.Tensor], strict: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x`` ``[..., K]`` to ``(codes, scales, global_scale)``; layouts in :mod:`leankern.ref.mx`."""
    f = _check_quantize_args(x, fmt, block_size, scale_mode, rand_bits, global_scale)
    if strict and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"x: strict=True expects only finite values, got {bad} NaN/Inf element(s)")
    # Value check on CPU only: on a GPU it would force a device sync on every call of a hot op.
    if (global_scale is not None and global_scale.device.type == "cpu"
            and not (bool(torch.isfinite(global_scale)) and float(global_scale) >= 2.0**-126)):
        raise ValueError(f"global_scale: expected a finite value >= 2^-126 (smallest normal fp32), "
                         f"got {float(global_scale)}")
    args = (x.contiguous(), f.name, block_size, scale_mode,
            None if rand_bits is None else rand_bits.contiguous(), global_scale)
    return _dispatch.run("mx", "mx_quantize", x.device, ref.mx_quantize_ref, *args)


@mx_quantize_op.register_fake
def _(x, fmt, block_size, scale_mode, rand_bits, global_scale, strict):
    f = _check_quantize_args(x, fmt, block_size, scale_mode, rand_bits, global_scale)
    code_shape, scale_shape = _quantize_out_shapes(x, f, block_size)
    return (x.new_empty(code_shape, dtype=f.code_dtype), x.new_empty(scale_shape, dtype=f.scale_dtype),
            x.new_empty((), dtype=torch.float32))


def _check_dequantize_args(codes, scales, global_scale, fmt, block_size, out_dtype):
    f = get_format(fmt)
    check_power_of_two("block_size", block_size, 2, MAX_BLOCK)
    check_tensor("codes", codes, (f.code_dtype,), min_dim=1)
    check_tensor("scales", scales, (f.scale_dtype,), device=codes.device, min_dim=1)
    check_tensor("global_scale", global_scale, (torch.float32,), device=codes.device)
    check_shape("global_scale", global_scale, ())
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype: expected one of {[str(d) for d in FLOAT_DTYPES]}, got {out_dtype}")
    K = codes.shape[-1] * (2 if f.element.packed else 1)
    check_divisible("K (elements per row of codes)", K, "block_size", block_size)
    check_shape("scales", scales, (*codes.shape[:-1], K // block_size))
    return f, K


@torch.library.custom_op("leankern::mx_dequantize", mutates_args=())
def mx_dequantize_op(
    codes: torch.Tensor, scales: torch.Tensor, global_scale: torch.Tensor, fmt: str, block_size: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Dequantize ``codes`` with block ``scales`` (row-major) to ``[..., K]`` in ``out_dtype``."""
    f, _ = _check_dequantize_args(codes, scales, global_scale, fmt, block_size, out_dtype)
    args = (codes.contiguous(), scales.contiguous(), global_scale, f.name, block_size, out_dtype)
    return _dispatch.run("mx", "mx_dequantize", codes.device, ref.mx_dequantize_ref, *args)


@mx_dequantize_op.register_fake
def _(codes, scales, global_scale, fmt, block_size, out_dtype):
    _, K = _check_dequantize_args(codes, scales, global_scale, fmt, block_size, out_dtype)
    return codes.new_empty((*codes.shape[:-1], K), dtype=out_dtype)


def _check_hadamard_args(x, chunk_size, scale, signs):
    check_tensor("x", x, FLOAT_DTYPES, min_dim=1)
    check_power_of_two("chunk_size", chunk_size, 2, MAX_CHUNK)
    check_divisible("x.shape[-1]", x.shape[-1], "chunk_size", chunk_size)
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite float, got {scale}")
    if signs is not None:
        check_tensor("signs", signs, (torch.float32,), device=x.device)
        check_shape("signs", signs, (chunk_size,))


@torch.library.custom_op("leankern::hadamard_transform", mutates_args=())
def hadamard_transform_op(x: torch.Tensor, chunk_size: int, scale: float, signs: Optional[torch.Tensor]) -> torch.Tensor:
    """Fast Walsh-Hadamard transform of every ``chunk_size`` chunk of the last dim, times ``scale`` and ``signs``."""
    _check_hadamard_args(x, chunk_size, scale, signs)
    args = (x.contiguous(), chunk_size, float(scale), None if signs is None else signs.contiguous())
    return _dispatch.run("hadamard", "hadamard_transform", x.device, ref.hadamard_transform_ref, *args)


@hadamard_transform_op.register_fake
def _(x, chunk_size, scale, signs):
    _check_hadamard_args(x, chunk_size, scale, signs)
    return torch.empty_like(x)


# ---------------------------------------------------------------------------------------------
# Python front-ends
# ---------------------------------------------------------------------------------------------

def quantize(
    x: torch.Tensor,
    fmt: str = "mxfp8_e4m3",
    *,
    block_size: int | None = None,
    scale_mode: str = "rceil",
    rounding: str = "rne",
    rand_bits: torch.Tensor | None = None,
    seed: int | None = None,
    global_scale: torch.Tensor | float | None = None,
    strict: bool = False,
    swizzle: bool = False,
) -> MXTensor:
    """Quantize ``x`` to an MX/NV block format.

    Parameters
    ----------
    x : Tensor
        fp32, bf16 or fp16, ``[..., K]``; blocks run along the last dim and ``K`` must be a
        multiple of ``block_size`` (else ``ValueError``: pad first).
    fmt : str
        One of :data:`leankern.formats.FORMATS` (``mxfp8`` = ``mxfp8_e4m3``, ``mxfp6`` = ``mxfp6_e2m3``).
    block_size : int, optional
        Power of two in [2, 1024]; default 32 (MX) or 16 (NV).
    scale_mode : {"rceil", "floor"}
        MX scale rule: ``rceil`` (2^ceil(log2(amax/max_elem)): never saturates) or ``floor`` (OCP
        v1.0: 2^(floor(log2 amax) - emax_elem); block maxima may saturate). Ignored for NV.
    rounding : {"rne", "stochastic"}
        Stochastic rounding uses one uint32 word per element: ``rand_bits`` (int32, shaped like
        ``x``) or, if not given, words drawn from ``torch.Generator`` seeded with ``seed``.
    global_scale : Tensor or float, optional
        NV formats only: a static per-tensor decode scale g (else g = amax / (448 * max_elem)).
    strict : bool
        Raise ``ValueError`` if ``x`` holds NaN/Inf (otherwise such blocks get a NaN scale and
        dequantize to NaN: the documented policy).
    swizzle : bool
        Also store the scales in the Blackwell 128x4 tiled layout (see :func:`swizzle_scales`).

    Returns
    -------
    MXTensor
        ``codes [..., K]`` (``[..., K // 2]`` uint8 for 4-bit), ``scales [..., K // block_size]``,
        ``global_scale []``.

    Shape:
        x ``[..., K]`` -> codes ``[..., K or K // 2]``, scales ``[..., K // block_size]``.
    """
    f = get_format(fmt)
    bs = f.default_block_size if block_size is None else block_size
    check_choice("rounding", rounding, ("rne", "stochastic"))
    if rounding == "rne" and (rand_bits is not None or seed is not None):
        raise ValueError("rand_bits/seed: only used with rounding='stochastic'")
    if rounding == "stochastic" and rand_bits is None:
        gen = torch.Generator(device=x.device).manual_seed(0 if seed is None else int(seed))
        rand_bits = torch.randint(-(2**31), 2**31, x.shape, generator=gen, dtype=torch.int32, device=x.device)
    if global_scale is not None and not isinstance(global_scale, torch.Tensor):
        global_scale = torch.tensor(float(global_scale), dtype=torch.float32, device=x.device)
    codes, scales, g = torch.ops.leankern.mx_quantize(x, f.name, bs, scale_mode, rand_bits, global_scale, strict)
    qt = MXTensor(codes, scales, g, f.name, bs, tuple(x.shape), x.dtype, scale_mode)
    return qt.swizzled() if swizzle else qt


def dequantize(qt: MXTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dequantize an :class:`MXTensor` to ``dtype`` (default: the dtype it was quantized from).

    Shape: ``qt.shape``.
    """
    if not isinstance(qt, MXTensor):
        raise TypeError(f"qt: expected an MXTensor, got {type(qt).__name__}")
    return qt.dequantize(dtype)


def hadamard_transform(
    x: torch.Tensor, chunk_size: int | None = None, scale: float | None = None, signs: torch.Tensor | None = None
) -> torch.Tensor:
    """Fast Walsh-Hadamard transform over power-of-two chunks of the last dim, O(n log n).

    ``y = (x_chunk @ H_n) * scale * signs`` with Sylvester ``H_n`` (entries +-1) and fp32 math;
    ``scale`` defaults to ``1/sqrt(n)`` (orthonormal, so applying it twice without signs is the
    identity up to rounding).

    Shape: x ``[..., K]`` with ``K % chunk_size == 0`` (default ``chunk_size = K``) -> ``[..., K]``;
    signs ``[chunk_size]`` fp32.
    """
    n = x.shape[-1] if chunk_size is None else chunk_size
    s = 1.0 / math.sqrt(n) if scale is None else float(scale)
    return torch.ops.leankern.hadamard_transform(x, n, s, signs)


def random_hadamard_signs(n: int, seed: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """Random +-1 diagonal (fp32 ``[n]``) for the random Hadamard rotation, reproducible from ``seed``.

    Bits come from a 32-bit integer hash of ``(seed, index)`` in plain tensor ops (no
    ``torch.Generator``), so the same signs appear on every device and inside ``torch.compile``.
    """
    j = torch.arange(n, dtype=torch.int64, device=device)
    h = (j * 2654435761 + (int(seed) & 0xFFFFFFFF) * 40503 + 0x5BD1E995) & 0xFFFFFFFF
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return 1.0 - 2.0 * (h & 1).to(torch.float32)


def rotate(x: torch.Tensor, chunk_size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random Hadamard rotation ``x -> x H D / sqrt(n)`` per ``chunk_size`` chunk (orthogonal).

    Apply the same rotation (same ``chunk_size`` and ``seed``) to both GEMM operands along K:
    ``rotate(x) @ rotate(W).T == x @ W.T`` up to rounding, while the rotated blocks have far
    smaller crest factors (fewer outliers) to quantize.

    Shape: x ``[..., K]``, ``K % chunk_size == 0`` -> ``[..., K]``.
    """
    signs = random_hadamard_signs(chunk_size, seed, x.device)
    return hadamard_transform(x, chunk_size, 1.0 / math.sqrt(chunk_size), signs)
