"""MX / NV block formats ("INT v.s. FP", arXiv 2510.25602): quantize, dequantize, Hadamard rotation.

Public API: :func:`quantize` (returns an :class:`MXTensor`), :func:`dequantize`, :func:`linear`,
:func:`prepack` (the CPU kernels' weight layout), checkpoint loaders :func:`from_gpt_oss` /
:func:`from_modelopt_nvfp4`, :func:`hadamard_transform`, :func:`random_hadamard_signs`, :func:`rotate`, the scale layouts
:func:`swizzle_scales` / :func:`unswizzle_scales`, and the format table (:mod:`.formats`).
The torch ops behind them (``torch.ops.leankern.mx_quantize / mx_dequantize /
hadamard_transform``) are declared in :mod:`.ops`; their numerics are defined by :mod:`.ref`,
which every backend matches bit-exactly. The NV per-tensor scale is described in
``docs/numerics.md`` ("NV per-tensor scale").
"""
from __future__ import annotations

import math

import torch

from ..core import FLOAT_DTYPES, FrozenWeightLinear, check_choice, check_shape, check_tensor, host_values, needs_input_grad
from . import formats, ops, ref
from .checkpoints import ModelOptNVFP4, from_gpt_oss, from_modelopt_nvfp4, select_expert
from .formats import FORMATS, PAPER_FORMATS, format_names, get_format
from .layout import swizzle_scales, unswizzle_scales
from .ops import CAPABILITIES
from .tensor import MXTensor

__all__ = [
    "quantize", "dequantize", "linear", "prepack", "hadamard_transform", "random_hadamard_signs", "rotate",
    "MXTensor", "swizzle_scales", "unswizzle_scales", "FORMATS", "PAPER_FORMATS", "format_names", "get_format",
    "CAPABILITIES", "formats", "ref", "from_gpt_oss", "from_modelopt_nvfp4", "ModelOptNVFP4", "select_expert",
]


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
    global_encode_scale: torch.Tensor | float | None = None,
    strict: bool = False,
    swizzle: bool = False,
    rotate: int | None = None,
    rotate_seed: int = 0,
) -> MXTensor:
    """Quantize ``x`` to an MX/NV block format.

    Parameters
    ----------
    x : Tensor
        fp32, bf16 or fp16, ``[..., K]``; blocks run along the last dim and ``K`` must be a
        multiple of ``block_size`` (else ``ValueError``: pad first).
    fmt : str
        One of :data:`leankern.mx.formats.FORMATS` (``mxfp8`` = ``mxfp8_e4m3``, ``mxfp6`` = ``mxfp6_e2m3``).
    block_size : int, optional
        Power of two in [2, 1024]; default 32 (MX) or 16 (NV).
    scale_mode : {"rceil", "floor", "reciprocal"}
        MX scale rule: ``rceil`` (2^ceil(log2(amax/max_elem)): never saturates) or ``floor`` (OCP
        v1.0: 2^(floor(log2 amax) - emax_elem); block maxima may saturate). NV formats: the block
        scales are the same in every mode; ``rceil`` (default) computes the elements with the
        exact division ``x / d`` (``d = g * s``), ``reciprocal`` (NV only, else ``ValueError``) with
        ``x * r``, ``r = min(1 / d, FLT_MAX)`` in fp32, as GPU quantizers (TransformerEngine,
        TensorRT-LLM / FlashInfer / vLLM) do: a code may differ by one step where ``x / d`` sits
        within about an ulp of a rounding boundary (docs/numerics.md, "NV reciprocal mode").
        The result records the mode (``MXTensor.scale_mode``).
    rounding : {"rne", "stochastic"}
        Stochastic rounding uses one uint32 word per element: ``rand_bits`` (int32, shaped like
        ``x``); else words drawn from a ``torch.Generator`` seeded with ``seed``; else fresh words
        from torch's default generator on every call (reproducible after ``torch.manual_seed``).
    global_scale : Tensor or float, optional
        NV formats only: a static per-tensor **decode** scale ``g`` (dequantized value =
        code * e4m3 block scale * g). This is what ModelOpt checkpoints store as
        ``weight_scale_2`` / ``input_scale``; the dynamic default is
        ``g = amax / (448 * max_elem)`` (``max_elem`` = 6 for FP4, 7 for INT4).
    global_encode_scale : Tensor or float, optional
        The same scale given as its reciprocal, the **encode** scale ``1 / g`` that FlashInfer's
        and vLLM's NVFP4 quantizers take (``448 * 6 / amax``). Converted with one fp32 division;
        pass at most one of the two.
    strict : bool
        Raise ``ValueError`` if ``x`` holds NaN/Inf (otherwise such blocks get a NaN scale and
        dequantize to NaN: the documented policy).
    swizzle : bool
        Also store the scales in the Blackwell 128x4 tiled layout (see :func:`swizzle_scales`).
    rotate : int, optional
        Quantize ``rotate(x, rotate, rotate_seed)`` instead of ``x`` (random Hadamard rotation
        along the last dim, chunk size a power of two dividing K; computed in fp32): the paper's
        recipe for 4-bit INT. The result records ``rotation = (rotate, rotate_seed)``, and
        :func:`linear` rotates its input the same way, so ``linear(x, W)`` stays ``x @ W^T``.
    rotate_seed : int
        Seed of the rotation's random signs (see :func:`random_hadamard_signs`).

    Returns
    -------
    MXTensor
        ``codes [..., K]`` (``[..., K // 2]`` uint8 for 4-bit), ``scales [..., K // block_size]``,
        ``global_scale []``. Outside autograd: quantizing an ``nn.Parameter`` gives a frozen weight (no
        gradient flows back to ``x``; adapters train beside it, as with :func:`linear`).

    Shape:
        x ``[..., K]`` -> codes ``[..., K or K // 2]``, scales ``[..., K // block_size]``.
    """
    f = get_format(fmt)
    bs = f.default_block_size if block_size is None else block_size
    check_choice("rounding", rounding, ("rne", "stochastic"))
    if isinstance(x, torch.Tensor) and x.requires_grad:  # (other types: the op's error names x)
        x = x.detach()  # codes have no derivative: the op's outputs would carry a grad_fn that raises on backward
    if rounding == "rne" and (rand_bits is not None or seed is not None):
        raise ValueError("rand_bits/seed: only used with rounding='stochastic'")
    if rounding == "stochastic" and rand_bits is None:
        gen = None if seed is None else torch.Generator(device=x.device).manual_seed(int(seed))
        rand_bits = torch.randint(-(2**31), 2**31, x.shape, generator=gen, dtype=torch.int32, device=x.device)
    if global_encode_scale is not None:
        if global_scale is not None:
            raise ValueError("global_scale, global_encode_scale: pass at most one of the two (g and 1/g)")
        global_scale = _global_from_encode_scale(global_encode_scale, x.device)
    elif global_scale is not None:
        global_scale = _as_scale_tensor(global_scale, x.device)
    rotation = None
    if rotate is not None:
        _check_rotation(rotate, x.shape[-1])
        rotation = (int(rotate), int(rotate_seed))
        x_dtype, x = x.dtype, _rotate_input(x, rotation)  # the exact rotation linear() applies to x
    codes, scales, g = torch.ops.leankern.mx_quantize.default(x, f.name, bs, scale_mode, rand_bits, global_scale, strict)
    qt = MXTensor(codes, scales, g, f.name, bs, tuple(x.shape), x.dtype if rotation is None else x_dtype, scale_mode,
                  rotation=rotation, _trusted=True)
    return qt.swizzled() if swizzle else qt


def _check_rotation(chunk_size, K: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 2 or \
            chunk_size & (chunk_size - 1) or K % chunk_size:
        raise ValueError(f"rotate: expected a power of two >= 2 dividing the last dim ({K}), got {chunk_size!r}")


_ROTATION_SIGNS: dict = {}  # (chunk_size, seed, device) -> signs: eager linear calls skip rebuilding them


def _rotate_input(x: torch.Tensor, rotation: tuple[int, int], keep_bf16: bool = False) -> torch.Tensor:
    """``rotate(x.float(), *rotation)``, with the signs cached outside torch.compile; with ``keep_bf16`` (x bf16)
    that fp32 rotation rounded once to bf16 (the op computes in fp32 and rounds its result)."""
    n, seed = rotation
    if torch.compiler.is_compiling():
        signs = random_hadamard_signs(n, seed, x.device)
    else:
        key = (n, seed, x.device)
        signs = _ROTATION_SIGNS.get(key)
        if signs is None:
            signs = _ROTATION_SIGNS.setdefault(key, random_hadamard_signs(n, seed, x.device))
    return torch.ops.leankern.hadamard_transform.default(x if keep_bf16 else x.float(), n, 1.0 / math.sqrt(n), signs)


def _global_from_encode_scale(v, device) -> torch.Tensor:
    """``global_encode_scale`` (1 / g) -> g, fp32 ``[]``; errors name ``global_encode_scale`` and the value given."""
    if isinstance(v, torch.Tensor):
        check_tensor("global_encode_scale", v, (torch.float32,))
        check_shape("global_encode_scale", v, ())
        g = 1.0 / v
        if not host_values(v):  # a device value: the op checks g (no host read here)
            return g
        given = float(v)
    else:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"global_encode_scale: expected a float or an fp32 [] tensor, got {type(v).__name__}")
        given = float(v)
        g = _as_scale_tensor(1.0 / given if given != 0 else math.inf, device)
    gv = float(g)
    if not (math.isfinite(gv) and gv >= ops.NV_MIN_GLOBAL_SCALE and given > 0):
        raise ValueError(f"global_encode_scale: expected a value > 0 whose reciprocal (the global scale) is a finite "
                         f"value >= 2^-126, i.e. in (0, 2^126], got {given!r}")
    return g


def _as_scale_tensor(v, device) -> torch.Tensor:
    """fp32 ``[]`` on ``device``; a Python number becomes a device fill, not a host-to-device copy."""
    if isinstance(v, torch.Tensor):
        return v
    return torch.full((), float(v), dtype=torch.float32, device=device)


def dequantize(qt: MXTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dequantize an :class:`MXTensor` to ``dtype`` (default: the dtype it was quantized from).

    Shape: ``qt.shape``.
    """
    if not isinstance(qt, MXTensor):
        raise TypeError(f"qt: expected an MXTensor, got {type(qt).__name__}")
    return qt.dequantize(dtype)


def linear(x: torch.Tensor, weight: MXTensor, bias: torch.Tensor | None = None, *,
           act_fmt: str | None = None) -> torch.Tensor:
    """Block-quantized linear layer: ``x @ W^T + bias`` with ``W`` an :class:`MXTensor`.

    Weight-only (``act_fmt=None``): the weight is decoded on the fly (never materialised) and
    multiplied with ``x`` in fp32. Dual (``act_fmt`` given, e.g. ``"mxint8"``): ``x`` is first
    quantized per ``weight.block_size`` block to ``act_fmt`` (RCEIL scales; NV: dynamic
    per-tensor scale) and the product runs on the quantized operands. Accumulation is fp32; the
    result is rounded once to ``x.dtype``. Numerics: :func:`leankern.mx.ref.mx_linear_ref`.

    Parameters
    ----------
    x : Tensor
        fp32, bf16 or fp16, ``[..., K]``.
    weight : MXTensor
        ``[N, K]`` quantized along K (any format and block size), in the row-major layout (codes
        produced anywhere, used as they are) or prepacked by :func:`prepack` (faster on CPU).
    bias : Tensor, optional
        ``[N]``, x's dtype or fp32.
    act_fmt : str, optional
        Activation format for the dual (quantized x quantized) product: any of the ten formats, with any weight
        format (x is quantized per ``weight.block_size`` block along K, which every format allows; the product of
        two decoded values is exact in fp32, so every pair is defined). Where the CPU kernels multiply: int8 dot
        products with one int32 sum per block when both formats are among MXINT8, MXINT4 and MXFP4 (values times
        a power of two are int8) on the prepacked layout (from 32 rows of x, and below 5 rows on CPUs with
        AVX512-VBMI); every other pair, row count and layout multiplies the decoded x_hat in bf16 (exact) or fp32,
        within the same bound (docs/numerics.md).

    A weight quantized with ``rotate`` (``weight.rotation`` set) first rotates x the same way, in
    fp32, so the result is still x @ W^T up to rounding: weight-only, bf16 x's rotation is rounded
    once to bf16 (the bf16 kernels then take it as they take any bf16 x); fp32 / fp16 x's, and any
    x's with ``act_fmt`` (quantized from fp32), stays fp32; the product is rounded once to x's dtype.

    Gradients: with grad enabled and ``x`` (or ``bias``) requiring grad, the result has a backward for ``x``
    (``grad_y @ W_hat``, W_hat the dequantized weight, in fp32, rotated back where ``rotate`` was used) and for
    ``bias``; with ``act_fmt`` the quantization of x is taken as the identity there (straight-through). The weight
    is a frozen quantized tensor: no gradient (adapters such as LoRA train beside it). The raw ops have no derivative
    (a backward through them raises).

    Shape:
        x ``[..., K]``, weight ``[N, K]``, bias ``[N]`` -> ``[..., N]`` in x's dtype.
    """
    if needs_input_grad(x, bias):
        return FrozenWeightLinear.apply(x, bias, lambda x, b: _linear(x, weight, b, act_fmt),
                                        lambda g: _linear_grad_x(weight, g))
    return _linear(x, weight, bias, act_fmt)


def _linear_grad_x(weight: MXTensor, g: torch.Tensor) -> torch.Tensor:
    """d(x . W^T) / dx applied to fp32 ``g [..., N]``: ``g @ W_hat``, rotated back where x was rotated."""
    g = g @ weight.dequantize(torch.float32)  # [..., K]: the gradient with respect to the rotated x
    if weight.rotation is not None:  # x_r = x H D / sqrt(n) per chunk: d/dx = (g D) H / sqrt(n)
        n, seed = weight.rotation
        signs = random_hadamard_signs(n, seed, g.device).float()
        g = torch.ops.leankern.hadamard_transform.default(
            (g.reshape(*g.shape[:-1], g.shape[-1] // n, n) * signs).reshape(g.shape), n, 1.0 / math.sqrt(n), None)
    return g


def _linear(x: torch.Tensor, weight: MXTensor, bias: torch.Tensor | None, act_fmt: str | None) -> torch.Tensor:
    """:func:`linear` without autograd (the ops)."""
    if not isinstance(weight, MXTensor):
        raise TypeError(f"weight: expected an MXTensor, got {type(weight).__name__}")
    if len(weight.shape) != 2:
        raise ValueError(f"weight: expected a 2-D [N, K] MXTensor, got shape {weight.shape}")
    if weight.rotation is not None:
        # the checks the op would make on x and bias, before the rotation turns them into fp32 tensors
        check_tensor("x", x, FLOAT_DTYPES)
        if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
            raise ValueError(f"x: expected [..., {weight.shape[1]}] (the in_features of the weight), "
                             f"got {tuple(x.shape)}")
        if bias is not None:
            check_tensor("bias", bias, (x.dtype, torch.float32), x.device)
        out_dtype = x.dtype
        # weight-only, bf16 x: the rotated x is rounded once to bf16 (|error| <= 2^-8 |x_r| per element), as any
        # bf16 model holds its activations, so it takes the bf16 kernels (AMX prefill) instead of carrying fp32 x
        # as three bf16 parts: 3x less GEMM work. fp16 x stays fp32: a rotation can grow an element by up to
        # sqrt(n), past fp16's range. Dual (act_fmt): fp32, which act_fmt's quantizer rounds once (its x_hat
        # takes the bf16 kernels either way).
        xr = _rotate_input(x, weight.rotation, keep_bf16=x.dtype == torch.bfloat16 and act_fmt is None)
        if bias is not None and bias.dtype != torch.float32:
            bias = bias.float()
        plain = MXTensor(weight.codes, weight.scales, weight.global_scale, weight.fmt, weight.block_size,
                         weight.shape, weight.dtype, weight.scale_mode, weight.scale_layout, weight.layout,
                         _trusted=True)
        return _linear(xr, plain, bias, act_fmt).to(out_dtype)
    try:
        if weight.layout == "prepacked16":
            return torch.ops.leankern.mx_linear_packed.default(x, weight.codes, weight.global_scale, weight.fmt,
                                                               weight.block_size, weight.shape[0], bias, act_fmt)
        return torch.ops.leankern.mx_linear.default(x, weight.codes, weight.row_major_scales(), weight.global_scale,
                                                    weight.fmt, weight.block_size, bias, act_fmt)
    except ValueError:  # the op names its own codes tensor on a device mismatch: name the weight instead
        if isinstance(x, torch.Tensor) and weight.device != x.device:
            raise ValueError(f"weight: expected an MXTensor on {x.device} (the device of x), got {weight.device}") \
                from None
        raise


def prepack(weight: MXTensor) -> MXTensor:
    """The weight in the layout the CPU ``linear`` kernels read fastest (16 rows interleaved, block
    scales next to their codes; see :mod:`leankern.mx.packed_layout`). Exact: ``prepack(w).unpacked()``
    has the same codes and scales as ``w``, bit for bit.

    On a GPU the row-major layout is what the kernels read: the weight is returned as it is.

    Shape: weight ``[N, K]`` -> an MXTensor of shape ``[N, K]`` (codes: uint8
    ``[ceil(N / 16), K / block_size, bytes]``).
    """
    if not isinstance(weight, MXTensor):
        raise TypeError(f"weight: expected an MXTensor, got {type(weight).__name__}")
    if weight.device.type != "cpu":
        return weight
    return weight.prepacked()


def hadamard_transform(
    x: torch.Tensor, chunk_size: int | None = None, scale: float | None = None, signs: torch.Tensor | None = None
) -> torch.Tensor:
    """Fast Walsh-Hadamard transform over power-of-two chunks of the last dim, O(n log n).

    ``y = (x_chunk @ H_n) * scale * signs`` with Sylvester ``H_n`` (entries +-1) and fp32 math;
    ``scale`` defaults to ``1/sqrt(n)`` (orthonormal, so applying it twice without signs is the
    identity up to rounding).

    Shape: x ``[..., K]`` with ``K % chunk_size == 0`` (default ``chunk_size = K``) -> ``[..., K]``;
    signs ``[chunk_size]`` fp32. Dtype: the output has x's dtype (fp32 / bf16 / fp16).
    """
    n = x.shape[-1] if chunk_size is None else chunk_size
    s = 1.0 / math.sqrt(n) if scale is None else float(scale)
    return torch.ops.leankern.hadamard_transform.default(x, n, s, signs)


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

    Shape: x ``[..., K]``, ``K % chunk_size == 0`` -> ``[..., K]``, in x's dtype (fp32 / bf16 / fp16).
    """
    signs = random_hadamard_signs(chunk_size, seed, x.device)
    return hadamard_transform(x, chunk_size, 1.0 / math.sqrt(chunk_size), signs)
