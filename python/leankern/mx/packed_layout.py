"""The prepacked weight layout of ``mx_linear``: 16 output rows interleaved, scales next to codes.

Why: the CPU kernels keep one output row per 32-bit vector lane (16 rows = one AVX-512 vector or
two AVX2 ones), so one load of code bytes feeds 16 output rows, the block scales of those rows are
one 16-byte load, no horizontal sums are needed and each thread streams one contiguous buffer.

Layout (``packed``: uint8 ``[ceil(N / 16), K / block_size, 16 + 16 * block_bytes]``, where
``block_bytes`` is one row's code bytes of a block: ``block_size``, or ``block_size / 2`` for
4-bit formats): for row tile ``t`` (rows ``16 t .. 16 t + 15``; rows past N are zero codes with
zero scales) and block ``b``, 16 scale bytes (row order; NV e4m3 bytes as raw uint8), then the
block's code bytes ``[block_bytes][16]``: byte ``q`` of the 16 rows' codes of the block at bytes
``16 q .. 16 q + 15``. That is the row-major code bytes transposed per block; a 4-bit byte keeps
its two elements (2q in the low nibble, 2q + 1 in the high one).

The packing is a permutation of bytes: :func:`unpack_weight` inverts it exactly.
"""
from __future__ import annotations

import torch

from .formats import get_format

__all__ = ["TILE_ROWS", "packed_block_bytes", "pack_weight", "unpack_weight"]

TILE_ROWS = 16


def packed_block_bytes(fmt: str, block_size: int) -> int:
    """Bytes of one (row tile, block) unit: 16 scale bytes + 16 rows of codes."""
    f = get_format(fmt)
    return TILE_ROWS + TILE_ROWS * (block_size // 2 if f.element.packed else block_size)


def pack_weight(codes: torch.Tensor, scales: torch.Tensor, fmt: str, block_size: int) -> torch.Tensor:
    """Row-major ``codes [N, K or K / 2]``, ``scales [N, K / block_size]`` -> the packed buffer.

    Shape: -> uint8 ``[ceil(N / 16), K / block_size, packed_block_bytes(fmt, block_size)]``.
    """
    if codes.dim() != 2 or scales.dim() != 2:
        raise ValueError(f"codes, scales: expected 2-D [N, *] tensors, got shapes {tuple(codes.shape)}, "
                         f"{tuple(scales.shape)}")
    c = codes.contiguous().view(torch.uint8)
    s = scales.contiguous().view(torch.uint8)
    N, nb = s.shape
    T = -(-N // TILE_ROWS)
    pad = T * TILE_ROWS - N
    cb = c.shape[1] // nb  # code bytes per row and block
    body = torch.nn.functional.pad(c, (0, 0, 0, pad)).view(T, TILE_ROWS, nb, cb).permute(0, 2, 3, 1)  # [t, b, q, i]
    sc = torch.nn.functional.pad(s, (0, 0, 0, pad)).view(T, TILE_ROWS, nb).permute(0, 2, 1)  # [t, b, i]
    return torch.cat((sc, body.reshape(T, nb, cb * TILE_ROWS)), dim=-1).contiguous()


def unpack_weight(packed: torch.Tensor, fmt: str, block_size: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed buffer -> row-major ``(codes, scales)`` of the first ``n`` rows, in the format's dtypes.

    Shape: ``[T, nb, bytes]`` -> codes ``[n, K or K / 2]``, scales ``[n, nb]`` (K = nb * block_size).
    """
    f = get_format(fmt)
    T, nb, nbytes = packed.shape
    cb = (nbytes - TILE_ROWS) // TILE_ROWS  # code bytes per row and block
    sc = packed[:, :, :TILE_ROWS].permute(0, 2, 1).reshape(T * TILE_ROWS, nb)[:n]
    body = packed[:, :, TILE_ROWS:].reshape(T, nb, cb, TILE_ROWS).permute(0, 3, 1, 2)  # [t, i, b, q]
    codes = body.reshape(T * TILE_ROWS, nb * cb)[:n].contiguous().view(f.code_dtype)
    return codes, sc.contiguous().view(f.scale_dtype)
