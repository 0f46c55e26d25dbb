"""Load existing block-quantized checkpoint layouts into :class:`MXTensor`, without requantizing.

Two published layouts are understood; both map onto leankern's own storage bit for bit, so
loading is a reshape / reinterpretation of the bytes (no rounding anywhere):

* **gpt-oss MXFP4** (OpenAI gpt-oss checkpoints, Hugging Face ``transformers``):
  ``*_blocks`` uint8 ``[..., G, 16]`` and ``*_scales`` uint8 ``[..., G]``. Each group of
  32 FP4 (E2M1) values along the reduction dim K = 32 G is packed in 16 bytes, value 2i in the
  **low** nibble and 2i + 1 in the high nibble; the nibble indexes the table
  ``[+0, .5, 1, 1.5, 2, 3, 4, 6, -0, -.5, -1, -1.5, -2, -3, -4, -6]`` (bit 3 = sign); the scale
  byte is an E8M0 exponent with bias 127: ``value = table[nibble] * 2^(byte - 127)``.
  Sources: ``huggingface/transformers`` ``src/transformers/integrations/mxfp4.py``
  (``FP4_VALUES``, ``convert_moe_packed_tensors``: ``lut[blk & 0x0F]`` -> ``out[:, 0::2]``,
  ``lut[blk >> 4]`` -> ``out[:, 1::2]``, ``ldexp(.., scales - 127)``) and ``openai/gpt-oss``
  ``gpt_oss/torch/weights.py`` (``_get_mxfp4_tensor``, identical). That is exactly leankern's
  ``mxfp4`` (E2M1 codes, even element in the low nibble, E8M0 scale, block 32), so no repacking.
  Note: ``convert_moe_packed_tensors`` ends with ``transpose(1, 2)`` because HF's bf16 expert
  modules keep ``[E, K, N]``; the checkpoint itself (and the MXTensor here) is ``[E, N, K]``,
  blocks along K, as leankern's linear wants.

* **ModelOpt NVFP4** (NVIDIA TensorRT-Model-Optimizer HF export, served by vLLM / SGLang /
  TensorRT-LLM): per linear ``weight`` uint8 ``[N, K/2]`` (``(q[..., 1::2] << 4) | q[..., 0::2]``:
  even element in the low nibble, same E2M1 table), ``weight_scale`` float8_e4m3fn
  ``[N, K/16]`` row-major, ``weight_scale_2`` fp32 scalar, ``input_scale`` fp32 scalar.
  ``weight_scale_2`` and ``input_scale`` are **decode** scales (amax / (6 * 448)): the weight is
  ``e2m1 * (float(weight_scale) * weight_scale_2)``. Sources: TensorRT-Model-Optimizer
  ``modelopt/torch/quantization/qtensor/nvfp4_tensor.py`` (``NVFP4QTensor.quantize`` packing,
  ``get_weights_scaling_factor_2`` = amax / (6 * 448), ``get_activation_scaling_factor`` =
  amax / (6 * 448), ``dequantize``: ``e2m1 * (scale * double_scale)``) and vLLM
  ``vllm/model_executor/layers/quantization/modelopt.py`` (``ModelOptNvFp4LinearMethod``: the
  checkpoint block scale is row-major and swizzled only after loading; ``alpha = input_scale *
  weight_scale_2``; the activation quantizer gets the reciprocal ``1 / input_scale``).
  leankern's ``nvfp4`` global scale is the decode scale too, so ``global_scale =
  weight_scale_2`` unchanged. A block scale that was already swizzled (vLLM's
  ``swizzle_blockscale``, CUTLASS / TensorRT-LLM ``fp4_quantize`` output) is the same 128x4
  tile layout as :func:`leankern.mx.swizzle_scales`; pass ``weight_scale_layout="swizzled_128x4"``.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

from .layout import swizzled_size
from .tensor import MXTensor

__all__ = ["from_gpt_oss", "from_modelopt_nvfp4", "ModelOptNVFP4", "select_expert"]

_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_E8M0 = getattr(torch, "float8_e8m0fnu", None)
_FP4X2 = getattr(torch, "float4_e2m1fn_x2", None)
GPT_OSS_BLOCK = 32  # FP4 values per group (one E8M0 scale)
GPT_OSS_BYTES_PER_BLOCK = 16
NVFP4_BLOCK = 16


class ModelOptNVFP4(NamedTuple):
    """A loaded ModelOpt NVFP4 linear.

    ``weight``: the ``nvfp4`` :class:`MXTensor` (``global_scale`` = ``weight_scale_2``).
    ``input_scale``: fp32 ``[]`` static activation **decode** scale, or None. Use it as
    ``leankern.mx.quantize(x, "nvfp4", global_scale=input_scale)`` to reproduce the static
    activation quantization of a serving engine (they pass ``1 / input_scale`` as the encode scale).
    """

    weight: MXTensor
    input_scale: torch.Tensor | None


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def _check_out_dtype(dtype) -> None:
    if dtype not in _OUT_DTYPES:
        raise TypeError(f"dtype: expected one of float32, bfloat16, float16, got {dtype}")


def _as_uint8(name: str, t: torch.Tensor, also: tuple = ()) -> torch.Tensor:
    """Reinterpret ``t`` as uint8 if its dtype is uint8 or one of ``also`` (1-byte dtypes)."""
    ok = (torch.uint8,) + tuple(d for d in also if d is not None)
    if t.dtype not in ok:
        raise TypeError(f"{name}: expected dtype {' or '.join(str(d) for d in ok)}, got {t.dtype}")
    return t if t.dtype == torch.uint8 else t.view(torch.uint8)


def _per_tensor_scale(name: str, t, device) -> torch.Tensor:
    """A one-element fp32/bf16/fp16 tensor (any shape: ``[]``, ``[1]``) -> fp32 ``[]`` on ``device``.

    The value must be finite and >= 2^-126 (see docs/numerics.md, "NV per-tensor scale").
    Widening bf16/fp16 to fp32 is exact; float64 is refused since narrowing it would round.
    """
    _check_tensor(name, t)
    if t.dtype not in _OUT_DTYPES:
        raise TypeError(f"{name}: expected a float32 (or bfloat16/float16) per-tensor scale, got {t.dtype}")
    if t.numel() != 1:
        raise ValueError(f"{name}: expected a single per-tensor value (shape [] or [1]), got shape "
                         f"{tuple(t.shape)}; per-partition / per-expert scales need one call per slice")
    g = t.detach().reshape(()).to(device=device, dtype=torch.float32)
    v = float(g)
    if not (v == v and abs(v) != float("inf") and v >= 2.0**-126):
        raise ValueError(f"{name}: expected a finite decode scale >= 2^-126, got {v}")
    return g


def from_gpt_oss(blocks: torch.Tensor, scales: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16) -> MXTensor:
    """gpt-oss / HF ``transformers`` MXFP4 tensors (``*_blocks``, ``*_scales``) -> ``mxfp4`` MXTensor.

    Exact: the bytes are reused as they are (gpt-oss and leankern share the E2M1 table, the
    low-nibble-first order, E8M0 bias 127 and 32-value blocks). See the module docstring for the
    published convention and its sources.

    Parameters
    ----------
    blocks : Tensor
        uint8 ``[..., G, 16]``: G groups of 32 FP4 codes along the reduction dim, two per byte
        (element 2i in the low nibble). Leading dims are kept, e.g. experts ``[E, N, G, 16]``.
    scales : Tensor
        uint8 (or ``float8_e8m0fnu``) ``[..., G]``: E8M0 exponents, value 2^(byte - 127).
        Byte 0xFF is NaN in leankern (OCP MX); gpt-oss checkpoints do not use it.
    dtype : torch.dtype
        The MXTensor's nominal dtype (what :meth:`MXTensor.dequantize` returns by default).

    Returns
    -------
    MXTensor
        ``fmt="mxfp4"``, ``block_size=32``, ``shape = (..., 32 * G)``, codes ``[..., 16 * G]``
        uint8, scales ``[..., G]`` uint8, ``global_scale`` 1.0. For ``[E, N, G, 16]`` expert
        blocks the shape is ``[E, N, K]`` (K = 32 G); :func:`select_expert` gives one ``[N, K]``
        expert for :func:`leankern.mx.linear`.

    Shape:
        blocks ``[..., G, 16]``, scales ``[..., G]`` -> MXTensor ``[..., 32 * G]``.
    """
    _check_tensor("blocks", blocks)
    _check_tensor("scales", scales)
    _check_out_dtype(dtype)
    b = _as_uint8("blocks", blocks)
    s = _as_uint8("scales", scales, (_E8M0,))
    if b.dim() < 2 or b.shape[-1] != GPT_OSS_BYTES_PER_BLOCK:
        raise ValueError(f"blocks: expected shape [..., G, {GPT_OSS_BYTES_PER_BLOCK}] (32 FP4 values per group), "
                         f"got {tuple(blocks.shape)}")
    if tuple(s.shape) != tuple(b.shape[:-1]):
        raise ValueError(f"scales: expected shape {tuple(b.shape[:-1])} (blocks.shape[:-1]), got {tuple(scales.shape)}")
    if s.device != b.device:
        raise ValueError(f"scales: expected device {b.device} (that of blocks), got {s.device}")
    lead, groups = tuple(b.shape[:-2]), b.shape[-2]
    if groups == 0:
        raise ValueError(f"blocks: expected at least one group (G >= 1), got shape {tuple(blocks.shape)}")
    codes = b.reshape(*lead, groups * GPT_OSS_BYTES_PER_BLOCK).contiguous()
    g = torch.ones((), dtype=torch.float32, device=b.device)
    return MXTensor(codes, s.contiguous(), g, "mxfp4", GPT_OSS_BLOCK, (*lead, groups * GPT_OSS_BLOCK), dtype)


def from_modelopt_nvfp4(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_scale_2: torch.Tensor,
    input_scale: torch.Tensor | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    weight_scale_layout: str = "row_major",
) -> ModelOptNVFP4:
    """ModelOpt NVFP4 linear (``weight``, ``weight_scale``, ``weight_scale_2``, ``input_scale``) -> MXTensor.

    Exact: codes and block-scale bytes are reused, ``global_scale = weight_scale_2`` (both are
    the per-tensor *decode* scale), so ``result.weight.dequantize(torch.float32)`` is
    ``e2m1(code) * fp32(float(weight_scale) * weight_scale_2)`` element by element.

    Parameters
    ----------
    weight : Tensor
        uint8 (or ``float4_e2m1fn_x2``) ``[..., N, K/2]``: E2M1 codes, element 2i in the low nibble.
    weight_scale : Tensor
        float8_e4m3fn, or the same bytes as uint8. ``weight_scale_layout="row_major"`` (the
        checkpoint layout): ``[..., N, K/16]``. ``"swizzled_128x4"`` (after vLLM's
        ``swizzle_blockscale`` or a CUTLASS / TensorRT-LLM ``fp4_quantize``; 2-D weights only):
        ``ceil128(N) * ceil4(K/16)`` bytes, flat or as ``[ceil128(N), ceil4(K/16)]``.
    weight_scale_2 : Tensor
        fp32 ``[]`` or ``[1]``: the weight's per-tensor decode scale (amax / (6 * 448)).
    input_scale : Tensor, optional
        fp32 ``[]`` or ``[1]``: the activations' static per-tensor decode scale.
    dtype : torch.dtype
        The MXTensor's nominal dtype (what :meth:`MXTensor.dequantize` returns by default).
    weight_scale_layout : {"row_major", "swizzled_128x4"}
        Layout of ``weight_scale`` (kept as given in the MXTensor's ``scale_layout``).

    Returns
    -------
    ModelOptNVFP4
        ``(weight, input_scale)``: ``weight`` an ``nvfp4`` MXTensor of shape ``[..., N, K]``,
        ``block_size=16``; ``input_scale`` fp32 ``[]`` or None. MoE checkpoints with one
        ``weight_scale_2`` per expert: call once per expert (an MXTensor has one global scale).

    Shape:
        weight ``[..., N, K/2]``, weight_scale ``[..., N, K/16]`` -> MXTensor ``[..., N, K]``.
    """
    _check_tensor("weight", weight)
    _check_tensor("weight_scale", weight_scale)
    _check_out_dtype(dtype)
    if weight_scale_layout not in ("row_major", "swizzled_128x4"):
        raise ValueError(f"weight_scale_layout: expected 'row_major' or 'swizzled_128x4', got {weight_scale_layout!r}")
    w = _as_uint8("weight", weight, (_FP4X2,))
    if weight_scale.dtype not in (torch.float8_e4m3fn, torch.uint8):
        raise TypeError(f"weight_scale: expected dtype torch.float8_e4m3fn (or its bytes as torch.uint8), "
                        f"got {weight_scale.dtype}")
    s = weight_scale.view(torch.float8_e4m3fn)
    if w.dim() < 2:
        raise ValueError(f"weight: expected shape [..., N, K/2] (at least 2-D), got {tuple(weight.shape)}")
    k = 2 * w.shape[-1]
    if k == 0 or k % NVFP4_BLOCK:
        raise ValueError(f"weight: expected K = 2 * weight.shape[-1] to be a positive multiple of {NVFP4_BLOCK}, "
                         f"got K = {k} (shape {tuple(weight.shape)})")
    if s.device != w.device:
        raise ValueError(f"weight_scale: expected device {w.device} (that of weight), got {s.device}")
    shape = (*w.shape[:-1], k)
    if weight_scale_layout == "row_major":
        want = (*w.shape[:-1], k // NVFP4_BLOCK)
        if tuple(s.shape) != want:
            raise ValueError(f"weight_scale: expected row-major shape {want} ([..., N, K/16]), got {tuple(s.shape)}")
        s = s.contiguous()
    else:
        if w.dim() != 2:
            raise ValueError(f"weight: swizzled_128x4 scales need a 2-D [N, K/2] weight, "
                             f"got shape {tuple(weight.shape)}")
        n, cols = w.shape[0], k // NVFP4_BLOCK
        size = swizzled_size(n, cols)
        padded = (-(-n // 128) * 128, -(-cols // 4) * 4)
        if not (s.dim() == 1 and s.numel() == size) and tuple(s.shape) != padded:
            raise ValueError(f"weight_scale: expected a swizzled_128x4 buffer of {size} bytes (shape [{size}] or "
                             f"{padded}) for [{n}, {cols}] block scales, got shape {tuple(s.shape)}")
        s = s.contiguous().reshape(size)
    g = _per_tensor_scale("weight_scale_2", weight_scale_2, w.device)
    a = None if input_scale is None else _per_tensor_scale("input_scale", input_scale, w.device)
    qt = MXTensor(w.contiguous(), s, g, "nvfp4", NVFP4_BLOCK, shape, dtype, scale_layout=weight_scale_layout)
    return ModelOptNVFP4(qt, a)


def select_expert(qt: MXTensor, index: int) -> MXTensor:
    """One slice along the first dim of a row-major MXTensor, e.g. expert ``e`` of ``[E, N, K]``.

    Views (no copy) of codes and scales; the global scale is shared. Shape: ``[E, ...] -> [...]``.
    """
    if not isinstance(qt, MXTensor):
        raise TypeError(f"qt: expected an MXTensor, got {type(qt).__name__}")
    if len(qt.shape) < 3:
        raise ValueError(f"qt: expected at least 3 dims ([E, N, K]), got shape {qt.shape}")
    if qt.scale_layout != "row_major":
        raise ValueError(f"qt: expected row_major scales, got scale_layout {qt.scale_layout!r}")
    if isinstance(index, bool) or not isinstance(index, numbers.Integral):  # (a bool or float would index codes)
        raise TypeError(f"index: expected an int, got {type(index).__name__} {index!r}")
    e = qt.shape[0]
    if not -e <= index < e:
        raise IndexError(f"index: expected in [{-e}, {e}), got {index}")
    return MXTensor(qt.codes[index], qt.scales[index], qt.global_scale, qt.fmt, qt.block_size, qt.shape[1:],
                    qt.dtype, qt.scale_mode, qt.scale_layout, rotation=qt.rotation)
