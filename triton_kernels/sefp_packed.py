"""Triton ``sefp_packed_linear``: ``y = x @ W^T (+ bias)`` over the single-width packed SEFP copy.

Layout (:mod:`leankern.sefp.packed`): weight k of row n is the field of ``B = 1 + m`` bits at bit ``k B`` of the row's
``RB = Kp B / 8`` bytes, ``(s << m) | q'``; the block exponents are the SEFPTensor's ``[N, Kp / G]``. Per K step of a
``[BN, BK]`` weight tile every weight reads the two bytes its field can span (two byte gathers, a shift and a mask:
B <= 8), becomes ``(-1)^s q' 2^(E - (m - 1))`` in fp32 (exact), and the tile goes to ``tl.dot``:

* bf16 x: the weight tile in bf16 (exact: at most 7 significant bits, no exponent below -133) and the bf16 MMA; under
  the interpreter, whose bf16 ``tl.dot`` multiplies raw bit patterns, the same bf16 tile widened to fp32;
* fp32 / fp16 x: an fp32 ``tl.dot(input_precision="ieee")`` (fp16 x is exact in fp32).

Tiles, split-K and the epilogue (bias, one rounding to x's dtype) are the planes kernel's (:mod:`.sefp`). Not tuned:
it exists so the op runs on a GPU without the reference's full dequantization; serve GPUs from the planes for speed.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .mx import bf16_nan_bits, compile_options, output_kind
from .mx_linear import _finish, _splitk_reduce_kernel
from .sefp import DOT_BF16, DOT_BF16_EMULATED, DOT_FP32, _check_same_device, _scale_f32, _split_k, _tiles

__all__ = ["packed_linear_triton", "packed_linear_config"]


@triton.jit
def _packed_weights(codes_ptr, exps_ptr, c_rows, e_rows, nmask, kk, Kp, RB, G: tl.constexpr, M_BITS: tl.constexpr):
    """``[BN, BK]`` fp32 weights k = ``kk`` of the rows at ``c_rows`` (byte offsets) / ``e_rows`` (exponent offsets);
    0 outside the rows' Kp fields."""
    B: tl.constexpr = M_BITS + 1
    bit = kk * B
    byte = bit >> 3
    sh = bit & 7
    m2 = nmask[:, None] & (kk < Kp)[None, :]
    b0 = tl.load(codes_ptr + c_rows + byte[None, :], mask=m2, other=0).to(tl.int32)
    b1 = tl.load(codes_ptr + c_rows + byte[None, :] + 1, mask=m2 & (byte + 1 < RB)[None, :], other=0).to(tl.int32)
    f = ((b0 | (b1 << 8)) >> sh[None, :]) & ((1 << B) - 1)
    E = tl.load(exps_ptr + e_rows[:, None] + (kk // G)[None, :], mask=m2, other=-128).to(tl.int32)
    w = (f & ((1 << M_BITS) - 1)).to(tl.float32) * _scale_f32(E, M_BITS)
    return tl.where((f >> M_BITS) != 0, -w, w)


@triton.jit
def _packed_linear_kernel(x_ptr, codes_ptr, exps_ptr, bias_ptr, y_ptr, part_ptr, M, N, K, Kp, RB, NB, k_per_split,
                          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, G: tl.constexpr,
                          M_BITS: tl.constexpr, DOT: tl.constexpr, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                          OUT_KIND: tl.constexpr, BF16_NAN: tl.constexpr):
    """``y [BM, BN] = x [BM, K] @ W [BN, K]^T (+ bias)``, fields decoded per K step (module docstring)."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    mmask, nmask = rm < M, rn < N
    k_lo = tl.program_id(2) * k_per_split
    k_hi = tl.minimum(Kp, k_lo + k_per_split)
    x_rows = rm.to(tl.int64)[:, None] * K
    c_rows = rn.to(tl.int64)[:, None] * RB
    e_rows = rn.to(tl.int64) * NB
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BK):
        kk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + x_rows + kk[None, :], mask=mmask[:, None] & (kk < K)[None, :], other=0.0)
        w = _packed_weights(codes_ptr, exps_ptr, c_rows, e_rows, nmask, kk, Kp, RB, G, M_BITS)
        if DOT == 1:  # DOT_BF16
            acc = tl.dot(x, tl.trans(w.to(tl.bfloat16)), acc)
        elif DOT == 3:  # DOT_BF16_EMULATED: the same bf16 tile (truncation: a weight not exact in bf16 would show)
            wb = (w.to(tl.int32, bitcast=True) >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
            acc = tl.dot(x.to(tl.float32), tl.trans(wb.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(x.to(tl.float32), tl.trans(w), acc, input_precision="ieee")
    _finish(acc, rm, rn, M, N, part_ptr, part_ptr, bias_ptr, y_ptr, part_ptr, 0, HAS_BIAS, OUT_KIND, BF16_NAN,
            SPLIT_K)


def packed_linear_config(m: int, block_size: int, x_dtype: torch.dtype, has_bias: bool, M: int = 1,
                         device_type: str = "cuda"):
    """(kernel, constexprs without SPLIT_K, num_warps) of the launch; also used by :mod:`.aot`."""
    if x_dtype == torch.bfloat16:
        dot = DOT_BF16 if device_type != "cpu" else DOT_BF16_EMULATED
    else:
        dot = DOT_FP32
    BM, BN, BK, nw = _tiles(M, dot, block_size, device_type)
    ce = dict(BM=BM, BN=BN, BK=BK, G=block_size, M_BITS=m, DOT=dot, HAS_BIAS=bool(has_bias),
              OUT_KIND=output_kind(x_dtype), BF16_NAN=bf16_nan_bits(device_type))
    return _packed_linear_kernel, ce, nw


def packed_linear_triton(x: torch.Tensor, codes: torch.Tensor, exponents: torch.Tensor, m: int, block_size: int,
                         bias: torch.Tensor | None = None, *, split_k: int | None = None) -> torch.Tensor:
    """Triton ``sefp_packed_linear``: ``x @ W^T (+ bias)`` with fp32 accumulation, in x's dtype.

    Shape: x ``[..., K]``, codes uint8 ``[N, Kp (1 + m) / 8]``, exponents int8 ``[N, Kp / G]``, bias ``[N]`` or None
    -> ``[..., N]``. Within the fp32-summation bound of the reference (not bit-exact). ``split_k``: K slices (tests).
    """
    device = x.device
    for name, t in (("codes", codes), ("exponents", exponents), ("bias", bias)):
        if t is not None:
            _check_same_device(name, t, device)
    K = x.shape[-1]
    N, RB = codes.shape
    Kp = RB * 8 // (1 + m)
    M = math.prod(x.shape[:-1])
    out = torch.empty((M, N), dtype=x.dtype, device=device)
    if M == 0 or N == 0:
        return out.reshape(*x.shape[:-1], N)
    x2 = x.reshape(M, K).contiguous()
    kernel, ce, nw = packed_linear_config(m, block_size, x.dtype, bias is not None, M, device.type)
    split, k_per_split = _split_k(M, N, Kp, ce["BM"], ce["BN"], ce["BK"], device, split_k)
    part = torch.empty((split, M, N) if split > 1 else (1,), dtype=torch.float32, device=device)
    bias_t = bias.contiguous() if bias is not None else part  # dummy pointer when HAS_BIAS is False
    out_view = out.view(torch.int16) if x.dtype == torch.bfloat16 else out
    grid = (triton.cdiv(M, ce["BM"]), triton.cdiv(N, ce["BN"]), split)
    kernel[grid](x2, codes, exponents, bias_t, out_view, part, M, N, K, Kp, RB, Kp // block_size, k_per_split,
                 SPLIT_K=split, **ce, num_warps=nw, **compile_options(device))
    if split > 1:
        _splitk_reduce_kernel[(triton.cdiv(M, 32), triton.cdiv(N, 64))](
            part, part, part, bias_t, out_view, M, N, BM=32, BN=64, SPLIT_K=split, N_G=0, HAS_BIAS=bias is not None,
            OUT_KIND=ce["OUT_KIND"], BF16_NAN=ce["BF16_NAN"], num_warps=4, **compile_options(device))
    return out.reshape(*x.shape[:-1], N)
