"""SEFPTensor: one stored copy (bit planes + shared exponents) that reads at any mantissa width."""
from __future__ import annotations

import json
import math

import torch

from .ref import EMPTY, WORD

__all__ = ["SEFPTensor"]

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_META_VERSION = 1


def meta_tensor(meta: dict) -> torch.Tensor:
    """A JSON record as a uint8 tensor (state_dict entries stay tensors: safetensors-compatible)."""
    return torch.frombuffer(bytearray(json.dumps(meta).encode()), dtype=torch.uint8)


def read_record(state: dict, prefix: str, keys: tuple, fmt: str, what: str):
    """``(meta, dtype, tensors)`` of a state_dict written by ``state_dict(prefix)``: ``prefix + meta`` a version
    _META_VERSION record of format ``fmt`` (``what`` names it in errors), ``tensors`` those under ``prefix + keys``."""
    try:
        meta = json.loads(bytes(state[prefix + "meta"].cpu().tolist()).decode())
        tensors = tuple(state[prefix + k] for k in keys)
    except KeyError as exc:
        raise KeyError(f"state: missing key {exc} (expected {prefix}{'/'.join(keys)}/meta)") from None
    if meta.get("version") != _META_VERSION or meta.get("format") != fmt:
        raise ValueError(f"state[{prefix}meta]: expected {what} version {_META_VERSION} record, got {meta}")
    return meta, {v: k for k, v in _DTYPE_NAMES.items()}[meta["dtype"]], tensors


class SEFPTensor:
    """A weight ``[N, K]`` in shared-exponent FP, stored as bit planes. Plain container.

    Attributes
    ----------
    planes : Tensor
        int32 ``[1 + m, N, Kw]``: the sign plane, then the mantissa planes from the most
        significant bit down; bit ``j`` of word ``w`` is element ``32 w + j`` (``Kw = Kp / 32``,
        ``Kp`` = K rounded up to ``block_size``, zero padded).
    exponents : Tensor
        int8 ``[N, Kp / block_size]``: the shared exponent of each block (-128: all zeros).
    shape, dtype, block_size
        Original ``(N, K)``, dtype, and block size (elements per exponent, along K).
    m : int
        Mantissa planes held (the widest readable width). :meth:`at` gives narrower views.
    """

    def __init__(self, planes: torch.Tensor, exponents: torch.Tensor, shape, dtype: torch.dtype, block_size: int):
        self.planes = planes
        self.exponents = exponents
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.block_size = int(block_size)

    @property
    def m(self) -> int:
        return self.planes.shape[0] - 1

    @property
    def device(self) -> torch.device:
        return self.planes.device

    def _width(self, m: int | None) -> int:
        m = self.m if m is None else m
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= self.m:
            raise ValueError(f"m: expected an int in [1, {self.m}] (mantissa planes held), got {m!r}")
        return m

    def at(self, m: int) -> "SEFPTensor":
        """The m-bit truncation: a view of the first ``1 + m`` planes (no copy, no requantization)."""
        m = self._width(m)
        return SEFPTensor(self.planes[: 1 + m], self.exponents, self.shape, self.dtype, self.block_size)

    def dequantize(self, m: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``[N, K]`` values at width ``m`` (default: all planes held), in ``dtype`` (default: the original)."""
        m = self._width(m)
        return torch.ops.leankern.sefp_dequantize.default(self.planes, self.exponents, m, self.block_size,
                                                          self.shape[1], self.dtype if dtype is None else dtype)

    def nbytes(self, m: int | None = None) -> int:
        """Bytes read at width ``m``: the sign plane, ``m`` mantissa planes and the exponents."""
        m = self._width(m)
        plane = self.planes[0].numel() * 4
        return (1 + m) * plane + self.exponents.numel()

    def bits_per_weight(self, m: int | None = None) -> float:
        return 8.0 * self.nbytes(m) / max(1, math.prod(self.shape))

    def packed(self, m: int, layout: str = "bits"):
        """A single-width copy for the fastest serving at ``m`` (1..7), made by one shift pass over the planes.

        ``layout="bits"`` (default): a :class:`leankern.sefp.packed.SEFPPacked`, sign + m bits per weight contiguous
        in each row (``1 + m + 8 / block_size`` bits per weight, the planes' own count at m); multiply with
        :func:`leankern.sefp.linear`. It shares this tensor's exponents. Measured at M = 1, bf16 x, 4096 x 4096,
        weights from DRAM, 2-core Zen 4: see docs/results/sefp.md ("packed copy").

        ``layout="mx"``: an :class:`leankern.mx.MXTensor` for :func:`leankern.mx.linear`: sign and magnitude become
        one signed integer code (``(-1)^s q'``: ``mxint4``, two per byte, for ``m <= 3``; ``mxint8`` for ``m <= 7``)
        and the exponent the E8M0 block scale ``E - (m - 1) + 127``, so ``mx.linear`` computes exactly the m-bit
        product. Needs ``K`` a multiple of ``block_size``. For m = 4..6 the int8 codes hold more bits than the
        planes read (8.25 bits per weight against 5.25 .. 7.25).

        ``m = 8`` needs 9 bits per code and is served from the planes.
        """
        if layout not in ("bits", "mx"):
            raise ValueError(f"layout: expected 'bits' or 'mx', got {layout!r}")
        from .packed import PACKED_MAX_M, SEFPPacked, pack_fields

        m = self._width(m)
        if m > PACKED_MAX_M:  # both layouts: sign + m bits in a byte
            raise ValueError(f"m: expected m <= {PACKED_MAX_M} for a packed copy (sign + m bits in a byte), got "
                             f"{m}; serve m >= 8 from the planes (sefp.linear)")
        if layout == "bits":
            return SEFPPacked(pack_fields(self.planes, m), self.exponents, m, self.shape, self.dtype, self.block_size)
        from ..mx import MXTensor
        from .ref import signed_codes

        N, K = self.shape
        if K % self.block_size:
            raise ValueError(f"packed: expected K a multiple of block_size={self.block_size}, got K={K}")
        codes = signed_codes(self.planes, m)[:, :K]  # int8 [N, K]
        E = self.exponents.to(torch.int32)
        scale = torch.where(E == EMPTY, torch.zeros_like(E), E - (m - 1) + 127)
        if bool(((scale < 0) | (scale > 254)).any()):
            raise ValueError("packed: a block exponent is outside the E8M0 range at this width "
                             f"(needs -127 <= E - {m - 1} <= 127)")
        fmt = "mxint4" if m <= 3 else "mxint8"
        if fmt == "mxint4":
            nib = (codes.to(torch.int16) & 0xF).to(torch.uint8).reshape(N, K // 2, 2)
            codes = nib[..., 0] | (nib[..., 1] << 4)
        return MXTensor(codes.contiguous(), scale.to(torch.uint8).contiguous(), torch.ones((), device=self.device),
                        fmt, self.block_size, (N, K), self.dtype, "floor")

    def select_rows(self, ids: torch.Tensor) -> "SEFPTensor":
        """Rows ``ids`` of this ``[N, K]`` weight as a new SEFPTensor ``[len(ids), K]`` with every plane held (so
        any width stays readable). ``ids``: an int32 / int64 ``[R]`` tensor on this tensor's device, every id in
        ``[0, N)`` (checked, before any read); duplicates allowed, order kept."""
        from ..core import check_row_ids

        check_row_ids(ids, self.shape[0], self.device)
        idx = ids.long()
        return SEFPTensor(self.planes[:, idx], self.exponents[idx], (idx.numel(), self.shape[1]), self.dtype,
                          self.block_size)

    def to(self, device) -> "SEFPTensor":
        return SEFPTensor(self.planes.to(device), self.exponents.to(device), self.shape, self.dtype, self.block_size)

    def _meta(self) -> dict:
        return {"version": _META_VERSION, "format": "sefp", "shape": list(self.shape),
                "dtype": _DTYPE_NAMES[self.dtype], "block_size": self.block_size, "word": WORD}

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-compatible): planes, exponents and a JSON ``meta`` (uint8)."""
        return {prefix + "planes": self.planes.contiguous(), prefix + "exponents": self.exponents,
                prefix + "meta": meta_tensor(self._meta())}

    @classmethod
    def from_state_dict(cls, state: dict, prefix: str = "") -> "SEFPTensor":
        meta, dtype, (planes, exponents) = read_record(state, prefix, ("planes", "exponents"), "sefp", "an SEFP")
        return cls(planes, exponents, meta["shape"], dtype, meta["block_size"])

    def __repr__(self) -> str:
        return (f"SEFPTensor(shape={self.shape}, dtype={self.dtype}, m={self.m}, block_size={self.block_size}, "
                f"{self.bits_per_weight():.3f} bits/weight at m={self.m}, device={self.device})")
