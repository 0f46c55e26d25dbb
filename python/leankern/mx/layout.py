"""Scale layouts: row-major ``[rows, K // block]`` <-> the Blackwell block-scaled-MMA tile layout.

cuBLAS / tcgen05 "128x4" layout: pad rows to a multiple of 128 and scale columns to a multiple
of 4; each 128x4 tile is 512 contiguous bytes with element (32*i + j, c) of the tile at byte
16*j + 4*i + c; tiles are stored row-tile major. Padding is filled with ``pad_value``, a valid
scale (E8M0 byte 0 = 2^-127, or e4m3 0.0), never uninitialised memory.
"""
from __future__ import annotations

import torch

__all__ = ["swizzle_scales", "unswizzle_scales", "swizzled_size"]


def _ceil_to(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def swizzled_size(rows: int, cols: int) -> int:
    """Bytes of the swizzled buffer for a ``[rows, cols]`` scale matrix."""
    return _ceil_to(rows, 128) * _ceil_to(cols, 4)


def swizzle_scales(scales: torch.Tensor, pad_value: int = 0) -> torch.Tensor:
    """Row-major scales ``[rows, cols]`` -> flat tile-layout buffer ``[ceil128(rows) * ceil4(cols)]``.

    Works on uint8 (E8M0) and float8_e4m3fn scales; the result has the same dtype.
    Shape: ``[R, C]`` -> ``[ceil(R/128)*128 * ceil(C/4)*4]``.
    """
    if scales.dim() != 2:
        raise ValueError(f"scales: expected a 2-D [rows, cols] tensor, got shape {tuple(scales.shape)}")
    rows, cols = scales.shape
    rp, cp = _ceil_to(rows, 128), _ceil_to(cols, 4)
    raw = scales.view(torch.uint8)
    padded = torch.full((rp, cp), pad_value, dtype=torch.uint8, device=scales.device)
    padded[:rows, :cols] = raw
    # [rt, 4(i), 32(j), ct, 4(c)] -> [rt, ct, 32(j), 4(i), 4(c)]: byte 16j + 4i + c inside a tile
    tiles = padded.reshape(rp // 128, 4, 32, cp // 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(-1).view(scales.dtype)


def unswizzle_scales(buf: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`swizzle_scales`. Shape: ``[ceil128(rows) * ceil4(cols)]`` -> ``[rows, cols]``."""
    rp, cp = _ceil_to(rows, 128), _ceil_to(cols, 4)
    if buf.dim() != 1 or buf.numel() != rp * cp:
        raise ValueError(f"buf: expected a flat tensor of {rp * cp} bytes for [{rows}, {cols}] scales, "
                         f"got shape {tuple(buf.shape)}")
    tiles = buf.view(torch.uint8).reshape(rp // 128, cp // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(rp, cp)[:rows, :cols].contiguous().view(buf.dtype)
