"""MXTensor: a quantized tensor (codes + block scales + per-tensor scale + format metadata)."""
from __future__ import annotations

import json
import math

import torch

from .formats import get_format

__all__ = ["MXTensor"]

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_META_VERSION = 1


class MXTensor:
    """A tensor quantized to an MX/NV block format. Plain container (not a tensor subclass).

    Attributes
    ----------
    codes : Tensor
        ``[..., K]`` element codes (``[..., K // 2]`` uint8 for 4-bit formats).
    scales : Tensor
        ``[..., K // block_size]`` block scales: uint8 E8M0 (MX) or float8_e4m3fn (NV); with
        ``scale_layout == "swizzled_128x4"`` a flat tile-layout buffer (see ``swizzle_scales``).
    global_scale : Tensor
        fp32 ``[]`` per-tensor decode scale (NV), 1.0 for MX.
    fmt, block_size, shape, dtype, scale_mode, scale_layout
        Format name, block size, original shape and dtype, MX scale rule, scale layout.
    layout : str
        ``"row_major"`` (codes / scales as above) or ``"prepacked16"``: ``codes`` is the packed
        buffer of :mod:`leankern.mx.packed_layout` (uint8 ``[ceil(N / 16), K / block_size, bytes]``,
        16 rows interleaved, scales next to their codes) and ``scales`` is empty. Made by
        :meth:`prepacked` (or ``leankern.mx.prepack``), undone exactly by :meth:`unpacked`.
    rotation : tuple of int, optional
        ``(chunk_size, seed)`` when the weight was quantized after a random Hadamard rotation
        along K (``quantize(..., rotate=chunk_size, rotate_seed=seed)``): ``leankern.mx.linear``
        then applies the same rotation to x, so the product is x @ W^T. Codes and
        :meth:`dequantize` hold the rotated weight. None: not rotated.
    """

    def __init__(self, codes, scales, global_scale, fmt, block_size, shape, dtype,
                 scale_mode="rceil", scale_layout="row_major", layout="row_major", rotation=None, _trusted=False):
        self.codes = codes
        self.scales = scales
        self.global_scale = global_scale
        self.fmt = get_format(fmt).name
        self.block_size = int(block_size)
        self.shape = tuple(shape)
        self.dtype = dtype
        self.scale_mode = scale_mode
        self.scale_layout = scale_layout
        if layout not in ("row_major", "prepacked16"):
            raise ValueError(f"layout: expected 'row_major' or 'prepacked16', got {layout!r}")
        self.layout = layout
        self.rotation = None if rotation is None else (int(rotation[0]), int(rotation[1]))
        if not _trusted:  # _trusted: leankern's own hot paths, shapes consistent by construction (~0.5 us a call)
            self._check_row_major_shapes() if layout == "row_major" else self._check_prepacked_shape()

    def _check_row_major_shapes(self) -> None:
        """codes / scales of the row-major layout against ``shape`` (a plain container, but not a silent misfit: the
        kernels take K from the codes, so a mismatched ``shape`` would surface as an unrelated error, or none)."""
        packed = self.format.element.packed
        lead, K = self.shape[:-1], self.shape[-1] if self.shape else 0
        want = (*lead, K // 2 if packed else K)
        if not self.shape or tuple(self.codes.shape) != want:
            raise ValueError(f"codes: expected shape {want} for an MXTensor of shape {self.shape} in {self.fmt}"
                             f"{' (two 4-bit codes per byte)' if packed else ''}, got {tuple(self.codes.shape)}")
        if self.scale_layout == "row_major" and tuple(self.scales.shape) != (*lead, K // self.block_size):
            raise ValueError(f"scales: expected shape {(*lead, K // self.block_size)} (one per block of "
                             f"{self.block_size} along K={K}), got {tuple(self.scales.shape)}")

    def _check_prepacked_shape(self) -> None:
        """The prepacked buffer against ``shape`` and the format (e.g. a checkpoint whose ``meta`` names another
        format than its codes were packed in: an error here, not at the first product)."""
        from .packed_layout import TILE_ROWS, packed_block_bytes

        if len(self.shape) != 2:
            raise ValueError(f"shape: expected [N, K] for the prepacked16 layout, got {self.shape}")
        N, K = self.shape
        want = (-(-N // TILE_ROWS), K // self.block_size, packed_block_bytes(self.fmt, self.block_size))
        if tuple(self.codes.shape) != want:
            raise ValueError(f"codes: expected shape {want} for a prepacked16 MXTensor of shape {self.shape} in "
                             f"{self.fmt} (block_size {self.block_size}), got {tuple(self.codes.shape)}")

    @property
    def format(self):
        return get_format(self.fmt)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def _scale_grid(self) -> tuple[int, int]:
        rows = math.prod(self.shape[:-1])
        return rows, self.shape[-1] // self.block_size

    def prepacked(self) -> "MXTensor":
        """This 2-D weight in the prepacked layout (a new buffer; see :mod:`leankern.mx.packed_layout`)."""
        if self.layout == "prepacked16":
            return self
        from .packed_layout import pack_weight

        if len(self.shape) != 2:
            raise ValueError(f"weight: expected a 2-D [N, K] MXTensor to prepack, got shape {self.shape}")
        packed = pack_weight(self.codes, self.row_major_scales(), self.fmt, self.block_size)
        return MXTensor(packed, packed.new_empty((0,)), self.global_scale, self.fmt, self.block_size, self.shape,
                        self.dtype, self.scale_mode, "row_major", "prepacked16", self.rotation)

    def unpacked(self) -> "MXTensor":
        """This tensor in the row-major layout (exact inverse of :meth:`prepacked`)."""
        if self.layout == "row_major":
            return self
        from .packed_layout import unpack_weight

        codes, scales = unpack_weight(self.codes, self.fmt, self.block_size, self.shape[0])
        return MXTensor(codes, scales, self.global_scale, self.fmt, self.block_size, self.shape, self.dtype,
                        self.scale_mode, rotation=self.rotation, _trusted=True)

    def select_rows(self, ids: torch.Tensor) -> "MXTensor":
        """Rows ``ids`` of this 2-D ``[N, K]`` weight as a new row-major MXTensor ``[len(ids), K]``.

        Only the selected rows' codes and scales are copied (straight out of any stored layout: row-major,
        swizzled scales, prepacked), so a vocabulary subset of a quantized LM head costs a few bytes per weight.
        ``ids``: an int32 / int64 ``[R]`` tensor on this tensor's device, every id in ``[0, N)`` (checked, before any
        read); duplicates allowed, order kept. Rotation, per-tensor scale and metadata carry over.
        """
        from ..core import check_row_ids

        if len(self.shape) != 2:
            raise ValueError(f"weight: expected a 2-D [N, K] MXTensor to select rows of, got shape {self.shape}")
        check_row_ids(ids, self.shape[0], self.device)
        return self._take_rows(ids.long())

    def _take_rows(self, idx: torch.Tensor) -> "MXTensor":
        """:meth:`select_rows` without the checks (``idx`` int64 ``[R]``, in range)."""
        f = get_format(self.fmt)
        R, nb = idx.numel(), self.shape[1] // self.block_size
        if self.layout == "prepacked16":
            from .packed_layout import TILE_ROWS

            tile, lane = idx // TILE_ROWS, idx % TILE_ROWS
            body = self.codes[:, :, TILE_ROWS:].unflatten(-1, (-1, TILE_ROWS))  # [T, nb, cb, 16] (a view)
            cb = body.shape[2]
            codes = body[tile, :, :, lane].reshape(R, nb * cb).view(f.code_dtype)  # [R, nb, cb] -> [R, K or K / 2]
            scales = self.codes[tile, :, lane].reshape(R, nb).view(f.scale_dtype)  # scale bytes lead each unit
        else:
            codes, scales = self.codes[idx], self.row_major_scales()[idx]
        return MXTensor(codes, scales, self.global_scale, self.fmt, self.block_size, (R, self.shape[1]), self.dtype,
                        self.scale_mode, rotation=self.rotation, _trusted=True)

    def row_major_scales(self) -> torch.Tensor:
        """Scales as ``[..., K // block_size]`` whatever the stored layout."""
        if self.layout != "row_major":
            return self.unpacked().scales
        if self.scale_layout == "row_major":
            return self.scales
        from .layout import unswizzle_scales

        rows, cols = self._scale_grid()
        return unswizzle_scales(self.scales, rows, cols).reshape(*self.shape[:-1], cols)

    def swizzled(self) -> "MXTensor":
        """A copy whose scales are in the 128x4 tile layout (codes shared)."""
        if self.scale_layout == "swizzled_128x4":
            return self
        if self.layout != "row_major":
            return self.unpacked().swizzled()
        from .layout import swizzle_scales

        rows, cols = self._scale_grid()
        buf = swizzle_scales(self.scales.reshape(rows, cols))
        return MXTensor(self.codes, buf, self.global_scale, self.fmt, self.block_size, self.shape, self.dtype,
                        self.scale_mode, "swizzled_128x4", rotation=self.rotation)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Dequantize to ``dtype`` (default: the original dtype). Shape: ``self.shape``."""
        out_dtype = self.dtype if dtype is None else dtype
        if self.layout != "row_major":
            return self.unpacked().dequantize(dtype)
        return torch.ops.leankern.mx_dequantize.default(self.codes, self.row_major_scales(), self.global_scale, self.fmt,
                                                self.block_size, out_dtype)

    @property
    def nbytes(self) -> int:
        """Bytes held: codes + scales (+ 4 for the NV per-tensor scale)."""
        n = self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()
        return n + (4 if self.format.is_nv else 0)

    @property
    def bits_per_element(self) -> float:
        return 8.0 * self.nbytes / max(1, math.prod(self.shape))

    def to(self, device) -> "MXTensor":
        """The same quantized weight on ``device`` (codes, scales and global scale moved, bytes unchanged)."""
        if isinstance(device, torch.dtype):
            raise TypeError(f"device: MXTensor.to takes a device (its codes keep their dtype), got the dtype {device}; "
                            f"use dequantize({device}) for a tensor of that dtype")
        return MXTensor(self.codes.to(device), self.scales.to(device), self.global_scale.to(device), self.fmt,
                        self.block_size, self.shape, self.dtype, self.scale_mode, self.scale_layout, self.layout,
                        self.rotation, _trusted=True)

    def _meta(self) -> dict:
        return {"version": _META_VERSION, "fmt": self.fmt, "block_size": self.block_size, "shape": list(self.shape),
                "dtype": _DTYPE_NAMES[self.dtype], "scale_mode": self.scale_mode, "scale_layout": self.scale_layout,
                "layout": self.layout, "rotation": None if self.rotation is None else list(self.rotation)}

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-compatible): codes, scales, global_scale and a JSON ``meta`` (uint8)."""
        meta = torch.frombuffer(bytearray(json.dumps(self._meta()).encode()), dtype=torch.uint8)
        return {prefix + "codes": self.codes, prefix + "scales": self.scales,
                prefix + "global_scale": self.global_scale, prefix + "meta": meta}

    @classmethod
    def from_state_dict(cls, state: dict, prefix: str = "") -> "MXTensor":
        try:
            meta = json.loads(bytes(state[prefix + "meta"].cpu().tolist()).decode())
            codes, scales = state[prefix + "codes"], state[prefix + "scales"]
            g = state[prefix + "global_scale"]
        except KeyError as exc:
            raise KeyError(f"state: missing key {exc} (expected {prefix}codes/scales/global_scale/meta)") from None
        if meta.get("version") != _META_VERSION:
            raise ValueError(f"state[{prefix}meta]: expected version {_META_VERSION}, got {meta.get('version')}")
        dtype = {v: k for k, v in _DTYPE_NAMES.items()}[meta["dtype"]]
        return cls(codes, scales, g, meta["fmt"], meta["block_size"], meta["shape"], dtype, meta["scale_mode"],
                   meta["scale_layout"], meta.get("layout", "row_major"), meta.get("rotation"))

    def __repr__(self) -> str:
        return (f"MXTensor(fmt={self.fmt}, block_size={self.block_size}, shape={self.shape}, dtype={self.dtype}, "
                f"scale_layout={self.scale_layout}, layout={self.layout}, "
                f"{'' if self.rotation is None else f'rotation={self.rotation}, '}{self.bits_per_element:.3f} bits/element, "
                f"device={self.device})")
