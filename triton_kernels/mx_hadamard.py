"""Triton fast Walsh-Hadamard transform over power-of-two chunks of the last dim.

Bit-exact with :func:`leankern.mx.ref.hadamard_transform_ref`: the same butterfly order
(h = 1, 2, ..., n/2 on pairs (i, i + h)), fp32 adds, then ``* fp32(scale)``, then ``* signs``.
One program owns ``ROWS`` whole chunks (a ``[ROWS, N]`` tile); each stage views the tile as
``[ROWS, N / 2h, 2, h]``, splits the pair axis and joins (a + b, a - b) back, fully unrolled.

The launcher creates no tensor from host values and never synchronises (CUDA-graph safe):
``scale`` travels as an fp32 kernel argument, rounded from the Python float with RNE by
Triton's launcher, which is the reference's ``fp32(scale)``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .mx import (INTERP_TILE_SCALE, _check_same_device, _int_view, _load_bits, _store_f32, bf16_nan_bits,
                 compile_options, input_kind)

__all__ = ["hadamard_transform_triton", "hadamard_config", "MAX_CHUNK"]

MAX_CHUNK = 8192  # one chunk per program at most: 32 KiB of fp32 staged through shared memory
TILE = 2048


@triton.jit
def _hadamard_kernel(x_ptr, scale, signs_ptr, out_ptr, n_rows,
                     N: tl.constexpr, LOG_N: tl.constexpr, ROWS: tl.constexpr,
                     HAS_SIGNS: tl.constexpr, IN_KIND: tl.constexpr, OUT_KIND: tl.constexpr,
                     BF16_NAN: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # [ROWS]
    rmask = rows < n_rows
    cols = tl.arange(0, N)
    offs = rows[:, None] * N + cols[None, :]  # [ROWS, N]
    y = _load_bits(x_ptr, offs, rmask[:, None], IN_KIND).to(tl.float32, bitcast=True)
    for i in tl.static_range(LOG_N):
        # stage h = 2^i: view [ROWS, N / 2h, 2, h], pair axis last
        pairs = tl.permute(tl.reshape(y, [ROWS, N // (2 << i), 2, 1 << i]), (0, 1, 3, 2))
        a, b = tl.split(pairs)  # [ROWS, N / 2h, h] each
        y = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2)), [ROWS, N])
    # compiled: an fp32 argument (RNE-rounded by the launcher); interpreter: the Python float,
    # which the cast rounds to fp32 with RNE as well. Either way the reference's fp32(scale).
    y = y * tl.cast(scale, tl.float32)
    if HAS_SIGNS:
        y = y * tl.load(signs_ptr + cols)[None, :]
    _store_f32(out_ptr, offs, y, rmask[:, None], OUT_KIND, BF16_NAN)


def hadamard_config(chunk_size: int, in_dtype: torch.dtype, has_signs: bool, n_rows: int | None = None,
                    device_type: str = "cuda"):
    """(kernel, constexprs, num_warps) of the launch; also used by :mod:`.aot`."""
    if chunk_size < 1 or chunk_size & (chunk_size - 1) or chunk_size > MAX_CHUNK:
        raise ValueError(
            f"chunk_size: expected a power of two in [1, {MAX_CHUNK}] for the Triton kernel, got {chunk_size}")
    # interpreter: fewer, wider programs (triton_kernels/mx.py, INTERP_TILE_SCALE)
    rows = max(1, TILE * (INTERP_TILE_SCALE if device_type == "cpu" else 1) // chunk_size)
    if n_rows is not None and device_type == "cpu":  # interpreter: skip mostly-masked tiles
        rows = min(rows, triton.next_power_of_2(max(n_rows, 1)))
    kind = input_kind(in_dtype)
    ce = dict(N=chunk_size, LOG_N=chunk_size.bit_length() - 1, ROWS=rows, HAS_SIGNS=bool(has_signs),
              IN_KIND=kind, OUT_KIND=kind, BF16_NAN=bf16_nan_bits(device_type))
    return _hadamard_kernel, ce, 8 if chunk_size >= 4096 else 4


def hadamard_transform_triton(
    x: torch.Tensor, chunk_size: int, scale: float, signs: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalised fast Walsh-Hadamard transform of each ``chunk_size`` chunk of the last dim.

    Same contract as :func:`leankern.mx.ref.hadamard_transform_ref`.
    Shape: x ``[..., K]`` (``K % chunk_size == 0``), signs ``[chunk_size]`` or None -> ``[..., K]``.
    """
    x = x.contiguous()
    kernel, ce, num_warps = hadamard_config(chunk_size, x.dtype, signs is not None,
                                            x.numel() // chunk_size, x.device.type)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):  # float(tensor) would synchronise
        raise TypeError(f"scale: expected a Python float, got {type(scale).__name__}")
    out = torch.empty_like(x)
    n_rows = x.numel() // chunk_size
    if n_rows == 0:
        return out
    x_bits = _int_view(x)
    if signs is None:
        signs_t = x_bits  # never read (HAS_SIGNS=False): any pointer will do
    else:
        _check_same_device("signs", signs, x.device)
        signs_t = signs.to(torch.float32).contiguous()
    out_view = out.view(torch.int16) if x.dtype == torch.bfloat16 else out
    grid = (triton.cdiv(n_rows, ce["ROWS"]),)
    kernel[grid](x_bits, float(scale), signs_t, out_view, n_rows, **ce, num_warps=num_warps,
                 **compile_options(x.device))
    return out
