"""The single-width packed SEFP copy: sign + m bits per weight, contiguous (docs/sefp.md, "Storage: bit planes").

Layout (the definition; csrc/sefp/packed.h reads the same bytes): each weight is one field of ``B = 1 + m`` bits,
``(s << m) | q'`` (the sign above the m-bit magnitude of the m-bit truncation); the ``Kp`` fields of a row (K rounded
up to the block size, zero padded) are bit-packed little-endian in K order: field ``k`` occupies bits
``[k B, k B + B)`` of the row, bit ``i`` of byte ``j`` being bit ``8 j + i``. ``codes uint8 [N, Kp B / 8]``; the
exponents are the SEFPTensor's ``int8 [N, Kp / G]`` (shared, not copied). A weight is
``(-1)^s q' 2^(E - (m - 1))``, exactly as :func:`leankern.sefp.ref.signed_values` reads the planes at width m.

So the copy reads ``1 + m + 8 / G`` bits per weight, as the planes do at m, but one contiguous stream per row
instead of ``1 + m`` plane streams: the CPU GEMV decodes 64 weights in about six vector instructions.
"""
from __future__ import annotations

import math

import torch

from .._pow2 import ldexp_exact
from .ref import EMPTY, WORD, _unpack_bits

__all__ = ["SEFPPacked", "PACKED_MAX_M", "pack_fields", "unpack_fields", "packed_values", "packed_linear_ref"]

PACKED_MAX_M = 7  # B = 1 + m <= 8 bits per field

_ROWS_PER_STEP = 256  # rows converted at a time (the bit tensors are B bytes per weight)


def _bit_weights(n: int, device) -> torch.Tensor:
    return torch.ones(n, dtype=torch.int32, device=device) << torch.arange(n, dtype=torch.int32, device=device)


def pack_fields(planes: torch.Tensor, m: int) -> torch.Tensor:
    """``planes int32 [>= 1 + m, N, Kw]`` -> ``codes uint8 [N, Kw * 4 * (1 + m)]``: one shift pass (in row steps)."""
    B, (N, Kw) = 1 + m, planes.shape[1:]
    out = torch.empty((N, Kw * 4 * B), dtype=torch.uint8, device=planes.device)
    for n0 in range(0, N, _ROWS_PER_STEP):
        p = planes[: 1 + m, n0:n0 + _ROWS_PER_STEP]
        q = torch.zeros(p.shape[1:-1] + (Kw * WORD,), dtype=torch.int32, device=planes.device)
        for i in range(1, m + 1):  # MSB first
            q = (q << 1) | _unpack_bits(p[i]).to(torch.int32)
        field = q | (_unpack_bits(p[0]).to(torch.int32) << m)  # [n, Kp]
        bits = (field.unsqueeze(-1) >> torch.arange(B, dtype=torch.int32, device=planes.device)) & 1  # [n, Kp, B]
        byte_bits = bits.reshape(field.shape[0], -1, 8)  # field k bit i = row bit k B + i
        out[n0:n0 + field.shape[0]] = (byte_bits * _bit_weights(8, planes.device)).sum(-1).to(torch.uint8)
    return out


def unpack_fields(codes: torch.Tensor, m: int) -> torch.Tensor:
    """``codes uint8 [N, Kp B / 8]`` -> the fields ``int32 [N, Kp]`` (``(s << m) | q'``)."""
    B = 1 + m
    N, nbytes = codes.shape
    out = torch.empty((N, nbytes * 8 // B), dtype=torch.int32, device=codes.device)
    for n0 in range(0, N, _ROWS_PER_STEP):
        c = codes[n0:n0 + _ROWS_PER_STEP].to(torch.int32)
        bits = (c.unsqueeze(-1) >> torch.arange(8, dtype=torch.int32, device=codes.device)) & 1  # [n, bytes, 8]
        out[n0:n0 + c.shape[0]] = (bits.reshape(c.shape[0], -1, B) * _bit_weights(B, codes.device)).sum(-1)
    return out


def packed_values(codes: torch.Tensor, exponents: torch.Tensor, m: int, block_size: int) -> torch.Tensor:
    """``float64 [N, Kp]``: (-1)^s q' 2^(E - (m - 1)) from the fields (exact)."""
    f = unpack_fields(codes, m).to(torch.int64)
    v = (f & ((1 << m) - 1)).to(torch.float64)
    v = torch.where((f >> m) != 0, -v, v)
    E = exponents.to(torch.int64)
    scale_exp = torch.where(E == EMPTY, torch.zeros_like(E), E - (m - 1)).to(torch.float64)
    return ldexp_exact(v.reshape(*E.shape, block_size), scale_exp.unsqueeze(-1)).reshape(f.shape)


def packed_linear_ref(x: torch.Tensor, codes: torch.Tensor, exponents: torch.Tensor, m: int, block_size: int,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """``y [..., N] = x [..., K] @ W^T (+ bias)``: W from the fields (exact in fp32), fp32 matmul, x's dtype."""
    K = x.shape[-1]
    w = packed_values(codes, exponents, m, block_size)[:, :K].to(torch.float32)
    y = x.to(torch.float32) @ w.t()
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


class SEFPPacked:
    """A weight ``[N, K]`` at one width ``m`` (1..7): ``1 + m`` bits per weight, contiguous per row.

    Made by :meth:`leankern.sefp.SEFPTensor.packed` (``layout="bits"``), multiplied by :func:`leankern.sefp.linear`.
    Attributes: ``codes`` uint8 ``[N, Kp (1 + m) / 8]``, ``exponents`` int8 ``[N, Kp / block_size]`` (the
    SEFPTensor's own tensor), ``m``, ``block_size``, ``shape`` (N, K), ``dtype`` (the original weight's).
    """

    def __init__(self, codes: torch.Tensor, exponents: torch.Tensor, m: int, shape, dtype: torch.dtype,
                 block_size: int):
        self.codes = codes
        self.exponents = exponents
        self.m = int(m)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.block_size = int(block_size)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def _width(self, m: int | None) -> int:
        if m is not None and m != self.m:
            raise ValueError(f"m: this packed copy holds width m={self.m} only, got {m!r} "
                             "(serve other widths from the SEFPTensor's planes)")
        return self.m

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``[N, K]`` values in ``dtype`` (default: the original), exact in fp32 (one RNE to bf16 / fp16)."""
        v = packed_values(self.codes, self.exponents, self.m, self.block_size)[:, : self.shape[1]]
        return v.to(torch.float32).to(self.dtype if dtype is None else dtype)

    def nbytes(self) -> int:
        """Bytes a product reads: the codes and the exponents."""
        return self.codes.numel() + self.exponents.numel()

    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes() / max(1, math.prod(self.shape))

    def to(self, device) -> "SEFPPacked":
        return SEFPPacked(self.codes.to(device), self.exponents.to(device), self.m, self.shape, self.dtype,
                          self.block_size)

    def _meta(self) -> dict:
        from .tensor import _DTYPE_NAMES, _META_VERSION

        return {"version": _META_VERSION, "format": "sefp_packed", "shape": list(self.shape), "m": self.m,
                "dtype": _DTYPE_NAMES[self.dtype], "block_size": self.block_size, "word": WORD}

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-compatible): codes, exponents and a JSON ``meta`` (uint8). A copy saved alone
        serves width ``m`` without the planes."""
        from .tensor import meta_tensor

        return {prefix + "codes": self.codes.contiguous(), prefix + "exponents": self.exponents.contiguous(),
                prefix + "meta": meta_tensor(self._meta())}

    @classmethod
    def from_state_dict(cls, state: dict, prefix: str = "") -> "SEFPPacked":
        from .tensor import read_record

        meta, dtype, (codes, exponents) = read_record(state, prefix, ("codes", "exponents"), "sefp_packed",
                                                      "an SEFP packed-copy")
        return cls(codes, exponents, meta["m"], meta["shape"], dtype, meta["block_size"])

    def __repr__(self) -> str:
        return (f"SEFPPacked(shape={self.shape}, dtype={self.dtype}, m={self.m}, block_size={self.block_size}, "
                f"{self.bits_per_weight():.3f} bits/weight, device={self.device})")
