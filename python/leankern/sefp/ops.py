"""SEFP ops: schemas, fakes, argument checks, capability table, kernel registration.

Torch ops (opcheck-clean, ``torch.compile(fullgraph=True)``-traceable):

* ``sefp_quantize(w [N, K], m_max, block_size) -> (planes int32 [1 + m_max, N, Kw], exponents int8 [N, Kp / G])``
* ``sefp_dequantize(planes [>= 1 + m, N, Kw], exponents, m, block_size, K, out_dtype) -> [N, K]``
* ``sefp_linear(x [..., K], planes, exponents, m, block_size, bias [N]?) -> [..., N]`` (x's dtype)
* ``sefp_packed_linear(x [..., K], codes uint8 [N, Kp (1 + m) / 8], exponents, m, block_size, bias [N]?) -> [..., N]``:
  the same product over the single-width packed copy (:mod:`leankern.sefp.packed`)

The m-bit ops read only planes ``0 .. m`` (the sign and the first m mantissa planes) and the
exponents. Kernels: C++ on ``CPU`` (csrc/sefp/), Triton on ``CUDA`` (triton_kernels/sefp.py, sefp_packed.py), the
reference (:mod:`leankern.sefp.ref`) where none exists. Checks here (the fakes run them too).
"""
from __future__ import annotations

import torch

from ..core import (FLOAT_DTYPES, Capability, OpSpec, backend_for, check_choice, check_tensor, register_op)
from . import ref
from .packed import PACKED_MAX_M, packed_linear_ref
from .ref import BLOCK_SIZES, MAX_M, WORD, padded_k

__all__ = ["CAPABILITIES", "QUANTIZE", "DEQUANTIZE", "LINEAR", "PACKED_LINEAR", "check_planes", "check_packed"]

_ANY = ("cpu", "cuda", "meta")
CAPABILITIES = {
    "sefp_quantize": {
        "ref": Capability(_ANY, FLOAT_DTYPES, {"m_max": (1, MAX_M)}, "integer bit ops + float64; the definition"),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, {"m_max": (1, MAX_M)}, "one pass per block, rows over both cores"),
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, {"m_max": (1, MAX_M)}, "one program per row tile"),
    },
    "sefp_dequantize": {
        "ref": Capability(_ANY, FLOAT_DTYPES, {"m": (1, MAX_M)}, "float64 from the first 1 + m planes"),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, {"m": (1, MAX_M)}, "reads only the first 1 + m planes"),
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, {"m": (1, MAX_M)}, "reads only the first 1 + m planes"),
    },
    "sefp_linear": {
        "ref": Capability(_ANY, FLOAT_DTYPES, {"m": (1, MAX_M)}, "dequantize at m, fp32 matmul; the definition"),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, {"m": (1, MAX_M)},
                          "decode: planes expanded in registers, fp32 FMA; prefill: decoded panels + fp32 GEMM"),
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, {"m": (1, MAX_M)},
                             "planes -> x's dtype in registers (exact for m <= 8 bf16, <= 11 fp16), tl.dot"),
    },
    "sefp_packed_linear": {
        "ref": Capability(_ANY, FLOAT_DTYPES, {"m": (1, PACKED_MAX_M)}, "fields unpacked, fp32 matmul; the definition"),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, {"m": (1, PACKED_MAX_M)},
                          "bf16 x on AVX512-VBMI + BF16: fields -> bf16 in registers, vdpbf16ps (from 16 rows 4 "
                          "weight rows decoded once into L1 for 4 x 4 tiles); from 40 rows (17 with AMX) bf16 panels "
                          "+ torch's bf16 GEMM; otherwise rows decoded to fp32 (portable)"),

        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, {"m": (1, PACKED_MAX_M)},
                             "fields gathered per weight (two bytes, shift, mask), scaled exactly, tl.dot (bf16 MMA "
                             "for bf16 x, ieee fp32 otherwise); not tuned"),
    },
}


def _cap(op: str, backend: str) -> Capability:
    return CAPABILITIES[op].get(backend) or CAPABILITIES[op]["ref"]


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name}: expected an int in [{lo}, {hi}], got {value}")


def check_planes(planes, exponents, m: int, block_size: int, device=None, device_of: str = "x") -> tuple[int, int]:
    """Checks of the stored tensors for an m-bit read; returns ``(N, Kw)``."""
    check_choice("block_size", block_size, BLOCK_SIZES)
    check_tensor("planes", planes, (torch.int32,), device=device, device_of=device_of)
    if planes.dim() != 3:
        raise ValueError(f"planes: expected shape [1 + m_max, N, Kw], got {tuple(planes.shape)}")
    P, N, Kw = planes.shape
    _check_int("m", m, 1, MAX_M)
    if P < 1 + m:
        raise ValueError(f"m: expected an int in [1, {P - 1}] (planes holds {P - 1} mantissa planes), got {m}")
    if Kw < 1 or (Kw * WORD) % block_size:
        raise ValueError(f"planes: expected Kw (last dim) a positive multiple of block_size/32={block_size // WORD}, "
                         f"got {Kw}")
    if Kw > 1 and planes.stride(2) != 1 or N > 1 and planes.stride(1) != Kw:
        raise ValueError(f"planes: expected each plane contiguous (strides (*, {Kw}, 1)), got {planes.stride()}")
    check_tensor("exponents", exponents, (torch.int8,), device=planes.device, device_of="planes")
    nb = Kw * WORD // block_size
    if tuple(exponents.shape) != (N, nb):
        raise ValueError(f"exponents: expected shape (N={N}, Kp/block_size={nb}), got {tuple(exponents.shape)}")
    if not exponents.is_contiguous():
        raise ValueError(f"exponents: expected a contiguous tensor, got strides {exponents.stride()}")
    return N, Kw


def check_packed(codes, exponents, m: int, block_size: int, device=None, device_of: str = "x") -> tuple[int, int]:
    """Checks of a packed copy's tensors (:mod:`leankern.sefp.packed`); returns ``(N, Kp)``."""
    check_choice("block_size", block_size, BLOCK_SIZES)
    check_tensor("codes", codes, (torch.uint8,), device=device, device_of=device_of)
    if codes.dim() != 2:
        raise ValueError(f"codes: expected shape [N, Kp * (1 + m) / 8], got {tuple(codes.shape)}")
    _check_int("m", m, 1, PACKED_MAX_M)
    N, nbytes = codes.shape
    Kp = nbytes * 8 // (1 + m)
    if (nbytes * 8) % (1 + m) or Kp < 1 or Kp % block_size:
        raise ValueError(f"codes: expected rows of Kp * (1 + m) / 8 bytes with Kp a positive multiple of "
                         f"block_size={block_size} (m={m}), got {nbytes} bytes")
    if not codes.is_contiguous():
        raise ValueError(f"codes: expected a contiguous tensor, got strides {codes.stride()}")
    check_tensor("exponents", exponents, (torch.int8,), device=codes.device, device_of="codes")
    nb = Kp // block_size
    if tuple(exponents.shape) != (N, nb):
        raise ValueError(f"exponents: expected shape (N={N}, Kp/block_size={nb}), got {tuple(exponents.shape)}")
    if not exponents.is_contiguous():
        raise ValueError(f"exponents: expected a contiguous tensor, got strides {exponents.stride()}")
    return N, Kp


def _check_bias(bias, N: int, x) -> None:
    if bias is not None:
        check_tensor("bias", bias, FLOAT_DTYPES, device=x.device, device_of="x")
        if tuple(bias.shape) != (N,):
            raise ValueError(f"bias: expected shape (N={N},), got {tuple(bias.shape)}")


def _check_k(name: str, K: int, Kw: int, block_size: int) -> None:
    if K < 1 or padded_k(K, block_size) != Kw * WORD:
        raise ValueError(f"{name}: expected K with K rounded up to block_size={block_size} equal to the stored "
                         f"width {Kw * WORD}, got K={K}")


# ------------------------------------------------------------------------------------------ quantize
_QUANTIZE_SCHEMA = "(Tensor w, int m_max, int block_size) -> (Tensor, Tensor)"


def _check_quantize(backend, w, m_max, block_size):
    check_tensor("w", w, _cap("sefp_quantize", backend).dtypes)
    if w.dim() != 2 or w.shape[1] < 1:
        raise ValueError(f"w: expected shape [N, K] with K >= 1, got {tuple(w.shape)}")
    _check_int("m_max", m_max, 1, MAX_M)
    check_choice("block_size", block_size, BLOCK_SIZES)
    return w.shape[0], padded_k(w.shape[1], block_size)


def _quantize_triton(w, m_max, block_size):
    from ..triton_kernels.sefp import quantize_triton

    return quantize_triton(w, m_max, block_size)


def _quantize_fake(w, m_max, block_size):
    N, Kp = _check_quantize(backend_for("sefp_quantize", w.device), w, m_max, block_size)
    return (w.new_empty((1 + m_max, N, Kp // WORD), dtype=torch.int32),
            w.new_empty((N, Kp // block_size), dtype=torch.int8))


# ---------------------------------------------------------------------------------------- dequantize
_DEQUANTIZE_SCHEMA = "(Tensor planes, Tensor exponents, int m, int block_size, int K, ScalarType out_dtype) -> Tensor"


def _check_dequantize(backend, planes, exponents, m, block_size, K, out_dtype):
    N, Kw = check_planes(planes, exponents, m, block_size)
    _check_k("K", K, Kw, block_size)
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype: expected one of {[str(d) for d in FLOAT_DTYPES]}, got {out_dtype}")
    return N


def _dequantize_triton(planes, exponents, m, block_size, K, out_dtype):
    from ..triton_kernels.sefp import dequantize_triton

    return dequantize_triton(planes, exponents, m, block_size, K, out_dtype)


def _dequantize_fake(planes, exponents, m, block_size, K, out_dtype):
    N = _check_dequantize(backend_for("sefp_dequantize", planes.device), planes, exponents, m, block_size, K,
                          out_dtype)
    return planes.new_empty((N, K), dtype=out_dtype)


# -------------------------------------------------------------------------------------------- linear
_LINEAR_SCHEMA = "(Tensor x, Tensor planes, Tensor exponents, int m, int block_size, Tensor? bias) -> Tensor"


def _check_linear(backend, x, planes, exponents, m, block_size, bias):
    check_tensor("x", x, _cap("sefp_linear", backend).dtypes, min_dim=1)
    N, Kw = check_planes(planes, exponents, m, block_size, device=x.device, device_of="x")
    _check_k("x", x.shape[-1], Kw, block_size)
    _check_bias(bias, N, x)
    return N


def _linear_triton(x, planes, exponents, m, block_size, bias):
    from ..triton_kernels.sefp import linear_triton

    return linear_triton(x, planes, exponents, m, block_size, bias)


def _linear_fake(x, planes, exponents, m, block_size, bias):
    N = _check_linear(backend_for("sefp_linear", x.device), x, planes, exponents, m, block_size, bias)
    return x.new_empty(tuple(x.shape[:-1]) + (N,))


# ------------------------------------------------------------------------------------- packed linear
_PACKED_LINEAR_SCHEMA = "(Tensor x, Tensor codes, Tensor exponents, int m, int block_size, Tensor? bias) -> Tensor"


def _check_packed_linear(backend, x, codes, exponents, m, block_size, bias):
    check_tensor("x", x, _cap("sefp_packed_linear", backend).dtypes, min_dim=1)
    N, Kp = check_packed(codes, exponents, m, block_size, device=x.device, device_of="x")
    _check_k("x", x.shape[-1], Kp // WORD, block_size)
    _check_bias(bias, N, x)
    return N


def _packed_linear_triton(x, codes, exponents, m, block_size, bias):
    from ..triton_kernels.sefp_packed import packed_linear_triton

    return packed_linear_triton(x, codes, exponents, m, block_size, bias)


def _packed_linear_fake(x, codes, exponents, m, block_size, bias):
    N = _check_packed_linear(backend_for("sefp_packed_linear", x.device), x, codes, exponents, m, block_size, bias)
    return x.new_empty(tuple(x.shape[:-1]) + (N,))


QUANTIZE = register_op(OpSpec("sefp_quantize", _QUANTIZE_SCHEMA, ref.quantize_ref, _quantize_fake, _check_quantize,
                              CAPABILITIES["sefp_quantize"], triton=_quantize_triton))
DEQUANTIZE = register_op(OpSpec("sefp_dequantize", _DEQUANTIZE_SCHEMA, ref.dequantize_ref, _dequantize_fake,
                                _check_dequantize, CAPABILITIES["sefp_dequantize"], triton=_dequantize_triton))
LINEAR = register_op(OpSpec("sefp_linear", _LINEAR_SCHEMA, ref.linear_ref, _linear_fake, _check_linear,
                            CAPABILITIES["sefp_linear"], triton=_linear_triton))
PACKED_LINEAR = register_op(OpSpec("sefp_packed_linear", _PACKED_LINEAR_SCHEMA, packed_linear_ref, _packed_linear_fake,
                                   _check_packed_linear, CAPABILITIES["sefp_packed_linear"],
                                   triton=_packed_linear_triton))
