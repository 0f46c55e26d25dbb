"""Triton weight-only GEMV of ``mx_linear`` for one row of x (M <= :data:`GEMV_MAX_M`, the default): no ``tl.dot``.

Why a second kernel: at M = 1 the tensor-core kernel (:func:`.mx_linear._linear_wo_kernel`, 16-row tiles)
multiplies 15 rows of zeros and hands every decoded weight tile to the MMA in the MMA's register layout; on an
H200 (docs/bench/gpu_h200.md) it ran 4096 x 4096 at 0.29-0.83x the speed of bf16 ``F.linear``, the FP formats
slowest (their generic decode: exponent arithmetic per weight). Here a program owns ``BN`` weight rows and walks
its K slice in steps of ``NBK`` sub-blocks of ``TB`` codes; each thread loads runs of contiguous code bytes,
decodes them in registers and accumulates ``x * w`` with fused multiply-adds into an fp32 register tile shaped
like the codes, summed over K once, at the end. Compiled for sm_90 (``bench/bench_mx_gemv_sass.py``): 1.1-1.5x
fewer SASS instructions per weight in the K loop than the tensor-core kernel with the same decode (1.6-2.4x than
before that decode). Not yet timed on a GPU: ``bench/gpu_linear_splitk.py`` (in ``bench/gpu_check.sh``) does;
``GEMV_MAX_M = 0`` turns the GEMV off.

Decode: :func:`.mx_linear._decode_values` (exact; shifts, masks and one multiply per FP code), shared with the
tensor-core kernel. Then ``w = fp32(value * d)`` with ``d`` the block scale (NV: ``fp32(g * s)``), as the
reference; x is widened to fp32 exactly; only the fp32 sums round (the bound of the tensor-core kernel's fp32
path, ``tests/tolerances.py``). Split-K and the epilogue are the tensor-core kernel's.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .mx_linear import _decode_scale, _decode_values, _finish

__all__ = ["GEMV_MAX_M", "gemv_config"]

GEMV_MAX_M = 1  # x rows up to which the GEMV runs by default (beyond: the tensor-core kernel); 0: never


@triton.jit
def _gemv_wo_kernel(x_ptr, codes_ptr, scales_ptr, g_ptr, bias_ptr, y_ptr, part_ptr, M, N, K, k_per_split,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr, TB: tl.constexpr, NBK: tl.constexpr,
                    CB: tl.constexpr, SPLIT_K: tl.constexpr, IS_NV: tl.constexpr, IS_INT: tl.constexpr,
                    PACKED: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr, SIGN_BIT: tl.constexpr,
                    FP8_KIND: tl.constexpr, N_G: tl.constexpr, HAS_BIAS: tl.constexpr, OUT_KIND: tl.constexpr,
                    BF16_NAN: tl.constexpr, EVEN_K: tl.constexpr):
    """y [1, BN] (or the split's fp32 partial) = x [1, K slice] @ decode(W [BN, K slice])^T (BM = 1: the launcher's
    grid and split-K rule read it as for the tensor-core kernel).

    The K step is NBK sub-blocks of TB = min(BS, BK) elements (CB code bytes each), so a sub-block has one
    scale: codes [BN, NBK, CB], scales [BN, NBK] broadcast along the last dim (Triton moves the [BN, NBK]
    scales through shared memory once per step: one scale per thread, small beside the codes).
    4-bit codes: the low nibbles (even elements) and high nibbles (odd) accumulate separately against x's
    even and odd elements, so no nibble is moved between lanes.
    """
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    nmask = rn < N
    k_lo = tl.program_id(2) * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    KROW = K // 2 if PACKED else K
    NBLK = K // BS
    g = tl.load(g_ptr)
    jb = tl.arange(0, NBK)
    tb = tl.arange(0, CB)
    r64 = rn.to(tl.int64)
    acc = tl.zeros([BN, NBK, CB], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BK):
        e0 = k0 + jb[:, None] * TB + tb[None, :] * (2 if PACKED else 1)  # [NBK, CB]: first element of each byte
        emask = (e0 < k_hi) | EVEN_K
        byte = (k0 // 2 if PACKED else k0) + jb[:, None] * CB + tb[None, :]
        raw = tl.load(codes_ptr + r64[:, None, None] * KROW + byte[None, :, :],
                      mask=nmask[:, None, None] & emask[None, :, :], other=0).to(tl.int32)
        kb = (k0 + jb * TB) // BS
        s = tl.load(scales_ptr + r64[:, None] * NBLK + kb[None, :],
                    mask=nmask[:, None] & ((kb < NBLK) | EVEN_K)[None, :], other=0).to(tl.int32) & 0xFF
        d = _decode_scale(s, IS_NV)  # [BN, NBK]
        if IS_NV:
            d = g * d  # fp32(g * s), as the reference
        d = d[:, :, None]
        if PACKED:
            b = raw & 0xFF
            lo, hi = b & 0xF, b >> 4
            if IS_INT:
                lo, hi = (lo ^ 8) - 8, (hi ^ 8) - 8
            x2 = tl.load(x_ptr + e0[:, :, None] + tl.arange(0, 2)[None, None, :], mask=emask[:, :, None],
                         other=0).to(tl.float32)  # [NBK, CB, 2]
            x_even, x_odd = tl.split(x2)
            acc = tl.fma(_decode_values(lo, IS_INT, MBITS, BIAS, SIGN_BIT, FP8_KIND) * d, x_even[None, :, :], acc)
            acc = tl.fma(_decode_values(hi, IS_INT, MBITS, BIAS, SIGN_BIT, FP8_KIND) * d, x_odd[None, :, :], acc)
        else:  # x read through codes-shaped pointers: it arrives in the codes' layout (no conversion)
            x = tl.load(tl.broadcast_to((x_ptr + e0)[None, :, :], [BN, NBK, CB]), mask=emask[None, :, :],
                        other=0).to(tl.float32)
            acc = tl.fma(_decode_values(raw, IS_INT, MBITS, BIAS, SIGN_BIT, FP8_KIND) * d, x, acc)
    y = tl.sum(tl.sum(acc, axis=2), axis=1)  # [BN]
    _finish(y[None, :], tl.arange(0, 1), rn, M, N, g_ptr, g_ptr, bias_ptr, y_ptr, part_ptr, N_G, HAS_BIAS,
            OUT_KIND, BF16_NAN, SPLIT_K)


def gemv_config(el_ce: dict, block_size: int, ce_tail: dict):
    """(kernel, constexprs without SPLIT_K, num_warps) of the GEMV launch (one row of x).

    Tile: 16 rows; 128 threads x 32 code bytes per K step (64 four-bit or 32 eight-bit codes; compiled for sm_90,
    mxfp4 with blocks of 32: four 64-bit loads per thread, as Triton splits a 16-byte sub-block row over 2 threads).
    """
    BN = 16
    BK = 512 if el_ce["PACKED"] else 256
    TB = min(block_size, BK)
    ce = dict(BM=1, BN=BN, BK=BK, BS=block_size, TB=TB, NBK=BK // TB, CB=TB // 2 if el_ce["PACKED"] else TB,
              **{k: el_ce[k] for k in ("IS_NV", "IS_INT", "PACKED", "MBITS", "BIAS", "SIGN_BIT", "FP8_KIND")},
              N_G=0, **ce_tail)
    return _gemv_wo_kernel, ce, 4
