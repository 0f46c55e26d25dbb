"""MX / NV block formats: op schemas, fakes, argument checks, capability table, kernel registration.

Torch ops (each passes ``torch.library.opcheck`` and runs under ``torch.compile(fullgraph=True)``):

* ``mx_quantize(x, fmt, block_size, scale_mode, rand_bits, global_scale, strict) -> (codes, scales, global_scale)``
* ``mx_dequantize(codes, scales, global_scale, fmt, block_size, out_dtype) -> Tensor``
* ``hadamard_transform(x, chunk_size, scale, signs) -> Tensor``
* ``mx_linear(x, codes, scales, global_scale, fmt, block_size, bias, act_fmt) -> Tensor``
* ``mx_linear_packed(x, packed, global_scale, fmt, block_size, N, bias, act_fmt) -> Tensor``
  (the weight in the prepacked layout of :mod:`leankern.mx.packed_layout`)

Kernels: C++ on ``CPU`` (csrc/mx/, registered when ``leankern._C`` loads), C++ CUDA for
``mx_quantize`` in a CUDA build (csrc/mx/mx.cu), Triton on ``CUDA`` otherwise
(triton_kernels/mx.py, mx_hadamard.py), the reference (:mod:`leankern.mx.ref`) where none exists.
The checks here run on the Python paths (fake, reference, Triton); the C++ kernels run the same
checks with the same messages (csrc/common/torch_checks.h).
"""
from __future__ import annotations

import math

import torch

from ..core import (FLOAT_DTYPES, Capability, OpSpec, backend_for, check_choice, check_divisible, check_value_on_device,
                    check_power_of_two, check_shape, check_tensor, register_op)
from . import ref
from .formats import get_format

__all__ = ["CAPABILITIES", "SCALE_MODES", "NV_MIN_GLOBAL_SCALE"]

# MX: the E8M0 exponent rule ("rceil" / "floor"). NV: "rceil" (the default) divides by the decode
# scale d = g * s; "reciprocal" multiplies by min(1 / d, FLT_MAX), as GPU quantizers do
# (docs/numerics.md, "NV reciprocal mode"); "floor" means nothing for NV and acts as "rceil".
SCALE_MODES = ("rceil", "floor", "reciprocal")
NV_MIN_GLOBAL_SCALE = 2.0**-126  # smallest normal fp32: below it g * s underflows

_ANY = ("cpu", "cuda", "meta")
_BLOCK = {"block_size": (2, 1024)}
# op -> backend -> what it runs. Tests (tests/test_mx_capabilities.py) are generated from this table,
# and the C++ limits (leankern._C.kernel_limits()) are checked against it.
CAPABILITIES = {
    "mx_quantize": {
        "ref": Capability(_ANY, FLOAT_DTYPES, _BLOCK),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, _BLOCK, "AVX-512 / AVX2 / scalar, chosen at run time"),
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, _BLOCK),
        "cuda": Capability(("cuda",), FLOAT_DTYPES, _BLOCK, "CUDA build only"),
    },
    "mx_dequantize": {
        "ref": Capability(_ANY, FLOAT_DTYPES, _BLOCK),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, _BLOCK),
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, _BLOCK),
    },
    "hadamard_transform": {
        "ref": Capability(_ANY, FLOAT_DTYPES, {"chunk_size": (2, 32768)}),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, {"chunk_size": (2, 32768)}),
        # one chunk per program, staged through shared memory: 32 KiB of fp32 at most
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, {"chunk_size": (2, 8192)}),
    },
    "mx_linear": {
        "ref": Capability(_ANY, FLOAT_DTYPES, _BLOCK),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, _BLOCK, "row-major weights; dual = quantize x, then weight-only"),
        # every block size: weight-only tiles take any power-of-two block; dual pairs outside the
        # per-block kernels' range run dequantize(x) + the fp32 weight-only kernel
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, _BLOCK,
                             "bf16 tensor-core dot for bf16 x (GPU), fp32 otherwise"),
    },
    "mx_linear_packed": {
        "ref": Capability(_ANY, FLOAT_DTYPES, _BLOCK, "unpacks, then mx_linear's reference"),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, _BLOCK, "16-row tiles, one row per vector lane"),
    },
}


def _cap(op: str, backend: str) -> Capability:
    return CAPABILITIES[op].get(backend) or CAPABILITIES[op]["ref"]


# ------------------------------------------------------------------------------------ mx_quantize
_QUANTIZE_SCHEMA = ("(Tensor x, str fmt, int block_size, str scale_mode, Tensor? rand_bits, Tensor? global_scale, "
                    "bool strict) -> (Tensor, Tensor, Tensor)")


def _check_quantize(backend, x, fmt, block_size, scale_mode, rand_bits, global_scale, strict):
    f = get_format(fmt)
    cap = _cap("mx_quantize", backend)
    check_tensor("x", x, cap.dtypes, min_dim=1)
    check_power_of_two("block_size", block_size, *cap.limit("block_size"))
    check_choice("scale_mode", scale_mode, SCALE_MODES)
    check_scale_mode_format(scale_mode, f)
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


def check_scale_mode_format(scale_mode: str, f) -> None:
    """``"reciprocal"`` is an NV mode (same message as the C++ check, csrc/mx/mx_torch.h)."""
    if scale_mode == "reciprocal" and not f.is_nv:
        raise ValueError("scale_mode: 'reciprocal' is only for NV formats (it replaces the division by the NV "
                         "decode scale g * s; MX scales are powers of two, where dividing is already exact), "
                         f"got fmt={f.name!r}")


def _check_quantize_values(x, global_scale, strict) -> None:
    """The value checks (not for fakes): a usable NV global scale, finite input under ``strict``."""
    if global_scale is not None:
        g = global_scale.detach()
        check_value_on_device(torch.isfinite(g) & (g >= NV_MIN_GLOBAL_SCALE),
                               "global_scale: expected a finite value >= 2^-126 (smallest normal fp32), got "
                               + (repr(float(g)) if g.device.type == "cpu" else "a value outside that range"))
    if strict:
        bad = (~torch.isfinite(x)).sum()
        check_value_on_device(bad == 0, "x: strict=True expects only finite values, got "
                               + (f"{int(bad)} NaN/Inf element(s)" if x.device.type == "cpu" else "NaN/Inf"))


def _quantize_ref(x, fmt, block_size, scale_mode, rand_bits, global_scale, strict):
    _check_quantize_values(x, global_scale, strict)
    return ref.mx_quantize_ref(x.contiguous(), get_format(fmt).name, block_size, scale_mode, rand_bits, global_scale)


def _quantize_triton(x, fmt, block_size, scale_mode, rand_bits, global_scale, strict):
    from ..triton_kernels.mx import mx_quantize_triton

    _check_quantize_values(x, global_scale, strict)
    return mx_quantize_triton(x, get_format(fmt).name, block_size, scale_mode, rand_bits, global_scale)


def _quantize_fake(x, fmt, block_size, scale_mode, rand_bits, global_scale, strict):
    f = _check_quantize(backend_for("mx_quantize", x.device), x, fmt, block_size, scale_mode, rand_bits,
                        global_scale, strict)
    lead, K = tuple(x.shape[:-1]), x.shape[-1]
    codes = x.new_empty((*lead, K // 2 if f.element.packed else K), dtype=f.code_dtype)
    scales = x.new_empty((*lead, K // block_size), dtype=f.scale_dtype)
    return codes, scales, x.new_empty((), dtype=torch.float32)


# ---------------------------------------------------------------------------------- mx_dequantize
_DEQUANTIZE_SCHEMA = ("(Tensor codes, Tensor scales, Tensor global_scale, str fmt, int block_size, "
                      "ScalarType out_dtype) -> Tensor")


def _check_dtype_or_bytes(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    """``t`` holds ``dtype`` codes; raw uint8 bytes are accepted too (same element size)."""
    if t.dtype not in (dtype, torch.uint8):
        raise TypeError(f"{name}: expected dtype in {[str(dtype)]}, got {t.dtype}")


def _check_dequantize(backend, codes, scales, global_scale, fmt, block_size, out_dtype):
    f = get_format(fmt)
    cap = _cap("mx_dequantize", backend)
    check_power_of_two("block_size", block_size, *cap.limit("block_size"))
    check_tensor("codes", codes, min_dim=1)
    _check_dtype_or_bytes("codes", codes, f.code_dtype)
    check_tensor("scales", scales, device=codes.device, min_dim=1, device_of="codes")
    _check_dtype_or_bytes("scales", scales, f.scale_dtype)
    check_tensor("global_scale", global_scale, (torch.float32,), device=codes.device, device_of="codes")
    check_shape("global_scale", global_scale, ())
    if out_dtype not in cap.dtypes:
        raise TypeError(f"out_dtype: expected one of {[str(d) for d in cap.dtypes]}, got {out_dtype}")
    K = codes.shape[-1] * (2 if f.element.packed else 1)
    check_divisible("K (elements per row of codes)", K, "block_size", block_size)
    check_shape("scales", scales, (*codes.shape[:-1], K // block_size))
    return f, K


def _check_dequantize_values(global_scale, fmt) -> None:
    if get_format(fmt).is_nv:
        _check_quantize_values(None, global_scale, False)


def _dequantize_ref(codes, scales, global_scale, fmt, block_size, out_dtype):
    _check_dequantize_values(global_scale, fmt)
    return ref.mx_dequantize_ref(codes.contiguous(), scales.contiguous(), global_scale, get_format(fmt).name,
                                 block_size, out_dtype)


def _dequantize_triton(codes, scales, global_scale, fmt, block_size, out_dtype):
    from ..triton_kernels.mx import mx_dequantize_triton

    _check_dequantize_values(global_scale, fmt)
    return mx_dequantize_triton(codes, scales, global_scale, get_format(fmt).name, block_size, out_dtype)


def _dequantize_fake(codes, scales, global_scale, fmt, block_size, out_dtype):
    _, K = _check_dequantize(backend_for("mx_dequantize", codes.device), codes, scales, global_scale, fmt,
                             block_size, out_dtype)
    return codes.new_empty((*codes.shape[:-1], K), dtype=out_dtype)


# ----------------------------------------------------------------------------- hadamard_transform
_HADAMARD_SCHEMA = "(Tensor x, int chunk_size, float scale, Tensor? signs) -> Tensor"


def _check_hadamard(backend, x, chunk_size, scale, signs):
    cap = _cap("hadamard_transform", backend)
    check_tensor("x", x, cap.dtypes, min_dim=1)
    check_power_of_two("chunk_size", chunk_size, *cap.limit("chunk_size"))
    check_divisible("x.shape[-1]", x.shape[-1], "chunk_size", chunk_size)
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite float, got {scale}")
    if signs is not None:
        check_tensor("signs", signs, (torch.float32,), device=x.device)
        check_shape("signs", signs, (chunk_size,))


def _hadamard_ref(x, chunk_size, scale, signs):
    return ref.hadamard_transform_ref(x.contiguous(), chunk_size, scale, signs)


def _hadamard_triton(x, chunk_size, scale, signs):
    from ..triton_kernels.mx_hadamard import hadamard_transform_triton

    return hadamard_transform_triton(x, chunk_size, scale, signs)


def _hadamard_fake(x, chunk_size, scale, signs):
    _check_hadamard(backend_for("hadamard_transform", x.device), x, chunk_size, scale, signs)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# -------------------------------------------------------------------------------------- mx_linear
_LINEAR_SCHEMA = ("(Tensor x, Tensor codes, Tensor scales, Tensor global_scale, str fmt, int block_size, "
                  "Tensor? bias, str? act_fmt) -> Tensor")


def _check_linear(backend, x, codes, scales, global_scale, fmt, block_size, bias, act_fmt):
    cap = _cap("mx_linear", backend)
    check_tensor("x", x, cap.dtypes, min_dim=1)
    f, K = _check_dequantize(backend, codes, scales, global_scale, fmt, block_size, torch.float32)
    check_tensor("codes", codes, device=x.device)
    if codes.dim() != 2:
        raise ValueError(f"codes: expected a 2-D [N, K] weight, got shape {tuple(codes.shape)}")
    _check_linear_operands(x, K, codes.shape[0], bias, act_fmt)
    return f, K


def _check_linear_operands(x, K, N, bias, act_fmt):
    """The checks both linear ops share: x's K, the bias, the activation format."""
    if x.shape[-1] != K:
        raise ValueError(f"x.shape[-1]: expected {K} (the in_features of the weight), got {x.shape[-1]}")
    if bias is not None:
        check_tensor("bias", bias, (x.dtype, torch.float32), device=x.device)
        check_shape("bias", bias, (N,))
    if act_fmt is not None:
        try:
            get_format(act_fmt)
        except ValueError as exc:  # same text as for fmt, naming act_fmt
            raise ValueError(f"act_{exc}") from None


def _linear_ref(x, codes, scales, global_scale, fmt, block_size, bias, act_fmt):
    _check_dequantize_values(global_scale, fmt)
    return ref.mx_linear_ref(x, codes, scales, global_scale, get_format(fmt).name, block_size, bias,
                             None if act_fmt is None else get_format(act_fmt).name)


def _linear_triton(x, codes, scales, global_scale, fmt, block_size, bias, act_fmt):
    from ..triton_kernels.mx_linear import mx_linear_triton

    _check_dequantize_values(global_scale, fmt)
    return mx_linear_triton(x, codes, scales, global_scale, get_format(fmt).name, block_size, bias,
                            None if act_fmt is None else get_format(act_fmt).name)


def _linear_fake(x, codes, scales, global_scale, fmt, block_size, bias, act_fmt):
    _check_linear(backend_for("mx_linear", x.device), x, codes, scales, global_scale, fmt, block_size, bias, act_fmt)
    return x.new_empty((*x.shape[:-1], codes.shape[0]))


# ------------------------------------------------------------------------------- mx_linear_packed
_LINEAR_PACKED_SCHEMA = ("(Tensor x, Tensor packed, Tensor global_scale, str fmt, int block_size, int N, "
                         "Tensor? bias, str? act_fmt) -> Tensor")


def _check_linear_packed(backend, x, packed, global_scale, fmt, block_size, N, bias, act_fmt):
    from .packed_layout import TILE_ROWS, packed_block_bytes

    cap = _cap("mx_linear_packed", backend)
    check_tensor("x", x, cap.dtypes, min_dim=1)
    f = get_format(fmt)
    check_power_of_two("block_size", block_size, *cap.limit("block_size"))
    check_tensor("packed", packed, (torch.uint8,), device=x.device)
    check_tensor("global_scale", global_scale, (torch.float32,), device=x.device)
    check_shape("global_scale", global_scale, ())
    if N < 0:
        raise ValueError(f"N: expected >= 0, got {N}")
    if packed.dim() != 3:
        raise ValueError(f"packed: expected a 3-D [ceil(N / 16), K / block_size, bytes] buffer, got shape "
                         f"{tuple(packed.shape)}")
    nb = packed.shape[1]
    check_shape("packed", packed, (-(-N // TILE_ROWS), nb, packed_block_bytes(f.name, block_size)))
    K = nb * block_size
    _check_linear_operands(x, K, N, bias, act_fmt)
    return f, K


def _linear_packed_ref(x, packed, global_scale, fmt, block_size, N, bias, act_fmt):
    from .packed_layout import unpack_weight

    _check_dequantize_values(global_scale, fmt)
    codes, scales = unpack_weight(packed, fmt, block_size, N)
    return ref.mx_linear_ref(x, codes, scales, global_scale, get_format(fmt).name, block_size, bias,
                             None if act_fmt is None else get_format(act_fmt).name)


def _linear_packed_fake(x, packed, global_scale, fmt, block_size, N, bias, act_fmt):
    _check_linear_packed(backend_for("mx_linear_packed", x.device), x, packed, global_scale, fmt, block_size, N,
                         bias, act_fmt)
    return x.new_empty((*x.shape[:-1], N))


# ---------------------------------------------------------------------------------- registration
QUANTIZE = register_op(OpSpec("mx_quantize", _QUANTIZE_SCHEMA, _quantize_ref, _quantize_fake, _check_quantize,
                              CAPABILITIES["mx_quantize"], _quantize_triton))
DEQUANTIZE = register_op(OpSpec("mx_dequantize", _DEQUANTIZE_SCHEMA, _dequantize_ref, _dequantize_fake,
                                _check_dequantize, CAPABILITIES["mx_dequantize"], _dequantize_triton))
HADAMARD = register_op(OpSpec("hadamard_transform", _HADAMARD_SCHEMA, _hadamard_ref, _hadamard_fake,
                              _check_hadamard, CAPABILITIES["hadamard_transform"], _hadamard_triton))
LINEAR = register_op(OpSpec("mx_linear", _LINEAR_SCHEMA, _linear_ref, _linear_fake, _check_linear,
                            CAPABILITIES["mx_linear"], _linear_triton))
LINEAR_PACKED = register_op(OpSpec("mx_linear_packed", _LINEAR_PACKED_SCHEMA, _linear_packed_ref, _linear_packed_fake,
                                   _check_linear_packed, CAPABILITIES["mx_linear_packed"]))
