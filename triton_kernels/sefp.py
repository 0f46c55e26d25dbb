"""Triton kernels of the SEFP ops (shared-exponent FP, bit-plane storage): quantize, dequantize, linear.

The definitions are :mod:`leankern.sefp.ref`; every launcher takes exactly its op's arguments
(``leankern.sefp.ops`` has checked dtypes, shapes and limits before a launcher runs).

* ``sefp_quantize`` (bit-exact): one program per ``NBT`` blocks of ``G`` elements (flattened over
  ``(row, block)``). From the fp32 bit pattern of each element: ``e = max(field, 1) - 127`` (zeros
  -128), ``E`` = the block max (an integer reduction), the significand ``M`` (implicit bit for
  normals) and ``q = M >> (24 - m_max + E - e)`` (0 once the shift reaches 32); then each plane word
  is the sum of ``bit << j`` over its 32 elements (distinct bits: a sum is an OR). NaN / Inf: each
  program stores a flag, the launcher checks ``flags == 0`` on the device (a ``torch._assert_async``
  on a GPU, no host sync; a ``ValueError`` with the reference's message on CPU).
* ``sefp_dequantize`` (bit-exact): the same block tiling; planes ``0 .. m`` only.
* ``sefp_linear`` with bf16 x, ``m <= 8`` and at least ``DEQUANT_GEMM_MIN_ROWS`` rows on a GPU
  (:func:`dequantize_gemm`): the weight dequantized once to bf16 (exact), torch's GEMM with an fp32 output, bias
  and one rounding; measured on an H200, the fused kernel below decoded every weight tile once per 128 rows.
* ``sefp_linear`` otherwise: each program owns a ``[BM, BN]`` output tile (grid axis 2: split-K slices, fp32
  partials summed in a fixed order by ``mx_linear``'s reduction kernel) and walks K in ``BK`` steps:
  the x tile ``[BM, BK]`` as stored, the plane words ``[BN, BK / 32]`` of planes ``0 .. m`` and the
  exponents, decoded in registers (:func:`_plane_values`), then ``tl.dot`` with fp32 accumulation.
  Per x dtype and width (:func:`dot_kind`):

  - bf16 x, ``m <= 8``: the weight ``(-1)^s q' 2^(E - (m - 1))`` is exact in bf16 (at most 8
    significant bits; bf16 has fp32's exponent range and its subnormals reach 2^-133 = 2^(-126 - 7)),
    so the block scale is folded into the decoded weight and one bf16 dot runs per ``BK`` step
    (wgmma on sm_90, tcgen05 on sm_100, mma.sync for decode tiles) -- no per-block split of the dot.
  - fp16 x, ``m <= 11``: ``(-1)^s q'`` is exact in fp16 but the scale is not (5 exponent bits), so
    ``BK <= G`` (each step inside one block), an fp16 dot of the integer-valued weights, and the
    fp32 partial times ``2^(E - (m - 1))`` (exact) is added to the accumulator.
  - fp32 x, or wider widths: the exact fp32 weights and ``tl.dot(..., input_precision="ieee")``
    (FMAs, no tensor cores: correct, several times slower than the bf16 path; a bf16x3 split of x
    would restore tensor cores -- not done).

  Under the interpreter bf16 ``tl.dot`` multiplies raw bit patterns, so the bf16 path runs there as
  ``DOT_BF16_EMULATED``: the same bf16 weight tile, widened to fp32 for an ieee dot (the weight
  construction is tested; the bf16 MMA itself only on a GPU).
  Tiles (:func:`_tiles`): decode (``M <= 16``) 16-row tiles (mma.sync; the padded rows cost MMA
  issue slots, not bytes), ``BK = 128`` so each plane row segment is 16 bytes, and split-K until the
  grid covers the SMs four times: bytes read are the ``1 + m`` planes plus the exponents. 64 x 64 x 64
  up to M = 64 (and for fp16), 128 x 128 x 64 at 8 warps above (one weight-tile decode serves 128
  rows). ``BN`` is raised until every thread decodes whole plane words (no replicated decode).

Decoding the planes (:func:`_plane_values`) is SWAR: a plane word's 32 bits are split into groups
of ``EPW`` (4 for ``m <= 8``, 2 above) and one multiply spreads a group into the byte (16-bit) lanes
of an int32 at the plane's bit position -- 3 integer ops per 4 (2) elements and plane instead of 3
per element and plane. ``q'`` then becomes fp32 exactly via ``(q | 0x4B000000) - 2^23``, times the
power-of-two scale (exact, IEEE subnormals: compiled with ``enable_reflect_ftz=False``), and the
sign plane ORs in bit 31 (so ``-0.0`` where ``q' = 0``, as the reference).

Decode tiles (``M <= 16``) with bf16 x and ``m <= 8`` build the bf16 weights without any per-weight conversion
or scale multiply (:func:`_bf16_pair_words`): the plane words (plane ``i`` as row ``7 - i``, plane 8 as row 7) go
through an 8 x 8 bit transpose per byte (three delta-swap stages; zero rows for ``m < 7`` fold away), which
leaves one weight's ``q' << (7 - m)`` per byte; bytes 0, 2 / 1, 3 become the 16-bit halves of int32 pair words
``A = s | F << 7 | q' << (7 - m)`` and ``B = s | F << 7`` with the magic ``2^P``, ``P = E + 1`` (EMPTY: ``m``),
``F = P + 127``, so ``A - B`` in bf16 (one ``sub.bf16x2`` per two weights) is ``(-1)^s q' 2^(E - (m - 1))``
exactly (``q'`` fits the 7-bit mantissa; ``m = 8``: ``A`` takes ``q' >> 1`` and ``B = s | (F << 7) - lsb``, i.e.
``2^P - lsb 2^(P - 8)``; ``+0`` instead of the reference's ``-0`` for a signed zero, which a dot cannot see). A
block exponent of 127 would need ``F = 255``: each program first takes the max exponent of its rows and K range
(:func:`_max_exponent`, a few bytes per thread) and runs the scale-folding loop above when it is 127.
Under the interpreter (bf16 arithmetic on raw bit patterns) the same pair words are subtracted in fp32.

Cost (PTX / SASS of the decode-tile K loop, sm_90, per weight, not measured on a GPU): m = 2: 9.5 / 9.0,
m = 4: 9.75 / 9.5, m = 8: 12.2 / 12.1 (the scale-folding loop: 13.1 / 13.7, 15.4 / 16.2, 20.0 / 20.2). Of
that, about 3 per weight is the tile's x / plane staging, the shared-memory store of the weight tile and the
MMAs; ``prmt`` repacks the pair words (weights ``k``, ``16 + k``) into consecutive pairs.

Launchers create no tensor from host values and never synchronise (CUDA-graph capturable).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ..core import check_value_on_device
from .mx import (INTERP_TILE_SCALE, _int_view, _load_bits, _store_f32, bf16_nan_bits, compile_options, input_kind,
                 output_kind)
from .mx_linear import _finish, _splitk_reduce_kernel

__all__ = ["quantize_triton", "dequantize_triton", "linear_triton", "dequantize_gemm", "takes_dequantize_gemm",
           "DEQUANT_GEMM_MIN_ROWS", "quantize_config", "dequantize_config",
           "linear_config", "dot_kind", "DOT_FP32", "DOT_BF16", "DOT_FP16", "DOT_BF16_EMULATED", "TILE",
           "NUM_WARPS"]

TILE = 2048  # weights per quantize program: 16 per thread at 4 warps (dequantize: one plane word, 32, per thread)
NUM_WARPS = 4
WORD = 32  # weights per plane word
DOT_FP32, DOT_BF16, DOT_FP16, DOT_BF16_EMULATED = 0, 1, 2, 3
_DOT_NAMES = {"fp32": DOT_FP32, "bf16": DOT_BF16, "fp16": DOT_FP16, "bf16_emulated": DOT_BF16_EMULATED}
_NONFINITE = "w: expected finite values (SEFP has no NaN/Inf code), got a NaN or Inf"


# ------------------------------------------------------------------------------------ jit helpers
@triton.jit
def _scale_f32(E, M_BITS: tl.constexpr):
    """2^(E - (m - 1)) as fp32 (exact; subnormal below 2^-126), 1 for an EMPTY block (the reference's scale)."""
    se = tl.where(E == -128, 0, E - (M_BITS - 1))  # in [-141, 127]
    sub = 1 << tl.minimum(tl.maximum(se + 149, 0), 31)
    return tl.where(se >= -126, (se + 127) << 23, sub).to(tl.float32, bitcast=True)


@triton.constexpr_function
def _as_int32(v):
    """A 32-bit pattern as the int32 constant with those bits (literals above 2^31 - 1 would be int64)."""
    v = getattr(v, "value", v)
    return v - (1 << 32) if v >= 1 << 31 else v


@triton.jit
def _fan_out(w, STEPS: tl.constexpr):
    """``[..., 2, .., 2]`` (STEPS twos): copies of ``w`` shifted right, copy ``t`` (row-major) by ``32 t / 2^STEPS``.

    Built with ``tl.join`` (the new dims are in-register), so a thread holding a word also holds every piece of
    it: no broadcast layouts, no reloaded words. Arithmetic shifts; callers mask.
    """
    a = tl.join(w, w >> 16)
    if STEPS >= 2:
        a = tl.join(a, a >> 8)
    if STEPS >= 3:
        a = tl.join(a, a >> 4)
    if STEPS >= 4:
        a = tl.join(a, a >> 2)
    if STEPS >= 5:
        a = tl.join(a, a >> 1)
    return a


@triton.jit
def _plane_values(planes_ptr, plane_stride, woffs, wmask, scale, R: tl.constexpr, KW: tl.constexpr,
                  M_BITS: tl.constexpr, LANE: tl.constexpr, SCALED: tl.constexpr):
    """fp32 ``[R, 32 KW]`` (exact): ``(-1)^s q'`` (``* scale [R, KW]`` when SCALED) of the plane words at
    ``woffs [R, KW]`` (masked: 0), from the sign plane and mantissa planes ``1 .. M_BITS``.

    SWAR: ``EPW = 32 / LANE`` elements per int32 (LANE-bit lanes), ``LANE`` groups of EPW bits per plane word;
    one multiply spreads a group into the lanes (the shifted copies are LANE - 1 apart and EPW bits wide: no
    carries) at bit ``M_BITS - i`` of each lane; an AND and an OR add it to the lanes.
    """
    EPW: tl.constexpr = 32 // LANE
    SPREAD: tl.constexpr = 0x204081 if LANE == 8 else 0x8001  # EPW copies of the group, LANE - 1 bits apart
    LMASK: tl.constexpr = 0x01010101 if LANE == 8 else 0x00010001  # bit 0 of every lane
    GSTEPS: tl.constexpr = 3 if LANE == 8 else 4  # log2(LANE): groups per word
    acc = tl.zeros([R, KW, LANE], dtype=tl.int32)
    pp = planes_ptr
    for i in tl.static_range(1, M_BITS + 1):
        pp += plane_stride
        words = tl.load(pp + woffs, mask=wmask, other=0)  # [R, KW]
        grp = tl.reshape(_fan_out(words, GSTEPS), [R, KW, LANE]) & ((1 << EPW) - 1)  # group t: bits EPW t ..
        acc = acc | ((grp * (SPREAD << (M_BITS - i))) & _as_int32(LMASK << (M_BITS - i)))
    q = tl.reshape(_fan_out(acc, 5 - GSTEPS), [R, KW, 32]) & ((1 << LANE) - 1)  # element 4t + b (2t + b)
    signs = tl.load(planes_ptr + woffs, mask=wmask, other=0)  # plane 0
    sbit = tl.reshape(_fan_out(signs, 5), [R, KW, 32]) << 31  # element j: bit j -> bit 31
    v = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0  # q' exactly (q' < 2^16 < 2^23)
    if SCALED:
        v = v * scale[:, :, None]  # a power of two: exact
    v = (v.to(tl.int32, bitcast=True) | sbit).to(tl.float32, bitcast=True)
    return tl.reshape(v, [R, KW * 32])


@triton.jit
def _delta_swap(a, b, D: tl.constexpr, MASK: tl.constexpr):
    """Swap the bits of ``a`` at ``MASK << D`` with those of ``b`` at ``MASK`` (one stage of a bit transpose)."""
    t = ((a >> D) ^ b) & MASK  # arithmetic shift: the sign copies fall outside MASK
    return a ^ (t << D), b ^ t


@triton.jit
def _plane_row(planes_ptr, plane_stride, woffs, wmask, P: tl.constexpr, M_BITS: tl.constexpr):
    """Plane ``P``'s words ``[R, KW]`` (sign plane 0), or constant zeros past ``M_BITS`` (folded away)."""
    if P >= 1 and P <= M_BITS:
        return tl.load(planes_ptr + P * plane_stride.to(tl.int64) + woffs, mask=wmask, other=0)
    else:
        return tl.zeros(woffs.shape, dtype=tl.int32)


@triton.jit
def _bf16_pair_words(planes_ptr, plane_stride, woffs, wmask, E, M_BITS: tl.constexpr):
    """The bf16 weight ``(-1)^s q' 2^(E - (m - 1))`` (m <= 8) as the difference of two bf16 bit patterns, both
    built by integer ops on pairs of weights per int32 (module docstring): returns ``(A, B)`` int32
    ``[R, KW, 2 (l), 8 (k)]``; the 16-bit half ``h`` of ``A[.., l, k] - B[.., l, k]`` (as bf16) is weight
    ``16 h + 8 l + k`` of the plane word. ``E`` ``[R, KW]``: the word's exponent, ``<= 126`` (or EMPTY).

    Rows of an 8 x 8 bit transpose per byte: row ``r`` = plane ``7 - r`` (mantissa bit ``7 - i`` of plane ``i``:
    ``q' << (7 - m)``), row 7 = plane 8; after three delta-swap stages, word ``k`` has byte ``b`` = the bits of
    weight ``8 b + k``. Magic ``2^P``, ``P = E + 1`` (EMPTY: ``m``), field ``F = P + 127`` in ``[2, 254]``:
    ``A = s | F << 7 | q' << (7 - m)`` = ``(-1)^s (2^P + q' 2^(E - (m - 1)))`` and ``B = s | F << 7``. m = 8 (q' has
    8 bits): ``A`` takes ``q' >> 1`` and ``B = s | (F << 7) - lsb`` = ``(-1)^s (2^P - lsb 2^(P - 8))``.
    """
    r0 = _plane_row(planes_ptr, plane_stride, woffs, wmask, 7, M_BITS)
    r1 = _plane_row(planes_ptr, plane_stride, woffs, wmask, 6, M_BITS)
    r2 = _plane_row(planes_ptr, plane_stride, woffs, wmask, 5, M_BITS)
    r3 = _plane_row(planes_ptr, plane_stride, woffs, wmask, 4, M_BITS)
    r4 = _plane_row(planes_ptr, plane_stride, woffs, wmask, 3, M_BITS)
    r5 = _plane_row(planes_ptr, plane_stride, woffs, wmask, 2, M_BITS)
    r6 = _plane_row(planes_ptr, plane_stride, woffs, wmask, 1, M_BITS)
    r7 = _plane_row(planes_ptr, plane_stride, woffs, wmask, 8, M_BITS)
    # stage order 1, 2, 4: the zero rows (low rows for small m, row 7 for m < 8) fold away longest
    r0, r1 = _delta_swap(r0, r1, 1, 0x55555555)
    r2, r3 = _delta_swap(r2, r3, 1, 0x55555555)
    r4, r5 = _delta_swap(r4, r5, 1, 0x55555555)
    r6, r7 = _delta_swap(r6, r7, 1, 0x55555555)
    r0, r2 = _delta_swap(r0, r2, 2, 0x33333333)
    r1, r3 = _delta_swap(r1, r3, 2, 0x33333333)
    r4, r6 = _delta_swap(r4, r6, 2, 0x33333333)
    r5, r7 = _delta_swap(r5, r7, 2, 0x33333333)
    r0, r4 = _delta_swap(r0, r4, 4, 0x0F0F0F0F)
    r1, r5 = _delta_swap(r1, r5, 4, 0x0F0F0F0F)
    r2, r6 = _delta_swap(r2, r6, 4, 0x0F0F0F0F)
    r3, r7 = _delta_swap(r3, r7, 4, 0x0F0F0F0F)
    signs = tl.load(planes_ptr + woffs, mask=wmask, other=0)  # plane 0
    F = tl.where(E == -128, M_BITS + 127, E + 128)
    mag = (F << 7) | (F << 23)
    a0, b0 = _pair_words(r0, signs, mag, 0, M_BITS)
    a1, b1 = _pair_words(r1, signs, mag, 1, M_BITS)
    a2, b2 = _pair_words(r2, signs, mag, 2, M_BITS)
    a3, b3 = _pair_words(r3, signs, mag, 3, M_BITS)
    a4, b4 = _pair_words(r4, signs, mag, 4, M_BITS)
    a5, b5 = _pair_words(r5, signs, mag, 5, M_BITS)
    a6, b6 = _pair_words(r6, signs, mag, 6, M_BITS)
    a7, b7 = _pair_words(r7, signs, mag, 7, M_BITS)
    R: tl.constexpr = woffs.shape[0]
    KW: tl.constexpr = woffs.shape[1]
    # the first join is the slowest of the new dims: [R, KW, 2 (l), 2, 2, 2] -> k = 4 k2 + 2 k1 + k0
    a = tl.join(tl.join(tl.join(a0, a4), tl.join(a2, a6)), tl.join(tl.join(a1, a5), tl.join(a3, a7)))
    b = tl.join(tl.join(tl.join(b0, b4), tl.join(b2, b6)), tl.join(tl.join(b1, b5), tl.join(b3, b7)))
    return tl.reshape(a, [R, KW, 2, 8]), tl.reshape(b, [R, KW, 2, 8])


@triton.jit
def _pair_words(o, signs, mag, K: tl.constexpr, M_BITS: tl.constexpr):
    """Transposed word ``K`` -> ``(A, B)`` ``[R, KW, 2 (l)]``: halves of ``l = 0`` weights ``K``, ``16 + K`` (bytes 0, 2),
    of ``l = 1`` weights ``8 + K``, ``24 + K`` (bytes 1, 3); sign bits ``K + 8 l (+ 16)`` -> bits 15, 31."""
    b_lo = ((signs << (15 - K)) & _as_int32(0x80008000)) | mag
    b_hi = ((signs << (7 - K)) & _as_int32(0x80008000)) | mag
    if M_BITS <= 7:
        a_lo = b_lo | (o & 0x00FF00FF)
        a_hi = b_hi | ((o >> 8) & 0x00FF00FF)
    else:
        a_lo = b_lo | (o & 0x007F007F)
        a_hi = b_hi | ((o >> 8) & 0x007F007F)
        b_lo = b_lo - ((o >> 7) & 0x00010001)  # F >= 2: the borrow stays in the exponent field
        b_hi = b_hi - ((o >> 15) & 0x00010001)
    return tl.join(a_lo, a_hi), tl.join(b_lo, b_hi)


@triton.jit
def _bf16_weights(planes_ptr, plane_stride, woffs, wmask, E, R: tl.constexpr, KW: tl.constexpr,
                  M_BITS: tl.constexpr, DOT: tl.constexpr):
    """``[R, 32 KW]`` weights of :func:`_bf16_pair_words`: bf16 (``DOT == 1``: one bf16x2 subtraction per pair),
    or (``DOT == 3``, the interpreter: its bf16 arithmetic works on raw bit patterns and its bf16 -> fp32 flushes
    subnormals) the same exact difference in fp32, cut to its bf16 bits (a result not exact in bf16 would show)."""
    a, b = _bf16_pair_words(planes_ptr, plane_stride, woffs, wmask, E, M_BITS)  # [R, KW, 2 (l), 8 (k)]
    if DOT == 1:
        a16 = tl.join(a.to(tl.int16), (a >> 16).to(tl.int16)).to(tl.bfloat16, bitcast=True)
        b16 = tl.join(b.to(tl.int16), (b >> 16).to(tl.int16)).to(tl.bfloat16, bitcast=True)
        v = a16 - b16  # [R, KW, l, k, h]; exact
    else:
        a32 = tl.join(a << 16, a & _as_int32(0xFFFF0000)).to(tl.float32, bitcast=True)
        b32 = tl.join(b << 16, b & _as_int32(0xFFFF0000)).to(tl.float32, bitcast=True)
        v = a32 - b32
        v = (v.to(tl.int32, bitcast=True) & _as_int32(0xFFFF0000)).to(tl.float32, bitcast=True)  # bf16 bits only
    return tl.reshape(tl.permute(v, 0, 1, 4, 2, 3), [R, KW * 32])  # weight 16 h + 8 l + k


# ------------------------------------------------------------------------------------ quantize
@triton.jit
def _quantize_kernel(w_ptr, planes_ptr, exps_ptr, flags_ptr, n_blocks, NB, K, plane_stride,
                     G: tl.constexpr, NBT: tl.constexpr, M_MAX: tl.constexpr, IN_KIND: tl.constexpr):
    """``NBT`` blocks (flattened (row, block) index ``blk``) -> their plane words, exponents, a NaN/Inf flag."""
    WPB: tl.constexpr = G // 32
    blk = tl.program_id(0) * NBT + tl.arange(0, NBT)
    bmask = blk < n_blocks
    row = (blk // NB).to(tl.int64)
    col = (blk % NB)[:, None] * G + tl.arange(0, G)[None, :]  # [NBT, G]
    mask = bmask[:, None] & (col < K)  # zero padding past K
    bits = _load_bits(w_ptr, row[:, None] * K + col, mask, IN_KIND)  # fp32 bit patterns
    mag = bits & 0x7FFFFFFF
    field = mag >> 23
    e = tl.where(mag == 0, -128, tl.maximum(field, 1) - 127)
    E = tl.max(e, axis=1)  # [NBT]; -128: an all-zero block
    tl.store(flags_ptr + tl.program_id(0), tl.max(tl.max((field == 255).to(tl.int32), axis=1), axis=0))
    frac = mag & 0x7FFFFF
    sig = tl.where(field == 0, frac, frac | 0x800000)  # subnormals: e = -126, no implicit bit
    shift = 24 - M_MAX + E[:, None] - e  # >= 24 - M_MAX >= 8
    q = tl.where(shift < 32, sig >> tl.minimum(shift, 31), 0)
    j = tl.arange(0, 32)
    woffs = blk.to(tl.int64)[:, None] * WPB + tl.arange(0, WPB)[None, :]  # [NBT, WPB]
    pp = planes_ptr
    for p in tl.static_range(0, M_MAX + 1):
        if p == 0:
            bit = (bits < 0).to(tl.int32)  # the sign bit (-0.0 too)
        else:
            bit = (q >> (M_MAX - p)) & 1
        word = tl.sum(tl.reshape(bit, [NBT, WPB, 32]) << j[None, None, :], axis=2)  # distinct bits: sum = OR
        tl.store(pp + woffs, word.to(tl.int32), mask=bmask[:, None])
        pp += plane_stride
    tl.store(exps_ptr + blk, E.to(tl.int8), mask=bmask)


# ------------------------------------------------------------------------------------ dequantize
@triton.jit
def _dequantize_kernel(planes_ptr, exps_ptr, out_ptr, n_blocks, NB, K, plane_stride,
                       G: tl.constexpr, NBT: tl.constexpr, M_BITS: tl.constexpr, LANE: tl.constexpr,
                       OUT_KIND: tl.constexpr, BF16_NAN: tl.constexpr):
    """``NBT`` blocks -> ``(-1)^s q' 2^(E - (m - 1))`` (exact fp32), one RNE to the output dtype."""
    WPB: tl.constexpr = G // 32
    blk = tl.program_id(0) * NBT + tl.arange(0, NBT)
    bmask = blk < n_blocks
    woffs = blk.to(tl.int64)[:, None] * WPB + tl.arange(0, WPB)[None, :]  # [NBT, WPB]
    E = tl.load(exps_ptr + blk, mask=bmask, other=-128).to(tl.int32)
    scale = tl.broadcast_to(_scale_f32(E, M_BITS)[:, None], [NBT, WPB])
    v = _plane_values(planes_ptr, plane_stride, woffs, bmask[:, None], scale, NBT, WPB, M_BITS, LANE, True)
    row = (blk // NB).to(tl.int64)
    col = (blk % NB)[:, None] * G + tl.arange(0, G)[None, :]
    _store_f32(out_ptr, row[:, None] * K + col, v, bmask[:, None] & (col < K), OUT_KIND, BF16_NAN)


# ------------------------------------------------------------------------------------ linear
@triton.jit
def _max_exponent(exps_ptr, e_rows, nmask, k_lo, k_hi, NB, BN: tl.constexpr, G: tl.constexpr):
    """The largest block exponent of the program's rows in ``[k_lo, k_hi)`` (a uniform scalar; -128: none)."""
    EB: tl.constexpr = 32
    emax = tl.full([BN, EB], -128, dtype=tl.int32)
    for b0 in range(k_lo // G, tl.minimum(tl.cdiv(k_hi, G), NB), EB):
        bi = b0 + tl.arange(0, EB)
        e = tl.load(exps_ptr + e_rows[:, None] + bi[None, :], mask=nmask[:, None] & (bi < NB)[None, :], other=-128)
        emax = tl.maximum(emax, e.to(tl.int32))
    return tl.max(tl.max(emax, axis=1), axis=0)


@triton.jit
def _linear_steps(x_ptr, planes_ptr, exps_ptr, x_rows, w_rows, e_rows, mmask, nmask, K, Kw, k_lo, k_hi, plane_stride,
                  acc, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, G: tl.constexpr, M_BITS: tl.constexpr,
                  LANE: tl.constexpr, DOT: tl.constexpr, PAIRS: tl.constexpr):
    """``acc += x [BM, k_lo:k_hi] @ W_m [BN, k_lo:k_hi]^T``, one ``BK`` step at a time (module docstring)."""
    KW: tl.constexpr = BK // 32
    WPB: tl.constexpr = G // 32
    for k0 in range(k_lo, k_hi, BK):
        kk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + x_rows + kk[None, :], mask=mmask[:, None] & (kk < K)[None, :], other=0.0)
        wi = k0 // 32 + tl.arange(0, KW)  # plane word index
        wmask = nmask[:, None] & (wi < Kw)[None, :]
        woffs = w_rows + wi[None, :]
        if DOT == 2:  # fp16: integer-valued weights, one block per step, its scale on the fp32 partial
            E = tl.load(exps_ptr + e_rows + k0 // G, mask=nmask, other=0).to(tl.int32)
            w = _plane_values(planes_ptr, plane_stride, woffs, wmask, 1.0, BN, KW, M_BITS, LANE, False)
            part = tl.dot(x, tl.trans(w.to(tl.float16)))
            acc += part * _scale_f32(E, M_BITS)[None, :]
        elif PAIRS:  # bf16 weights as differences of two bit patterns (_bf16_pair_words)
            if G >= BK:
                E = tl.broadcast_to(tl.load(exps_ptr + e_rows + k0 // G, mask=nmask, other=0).to(tl.int32)[:, None],
                                    [BN, KW])
            else:
                E = tl.load(exps_ptr + e_rows[:, None] + (wi // WPB)[None, :], mask=wmask, other=0).to(tl.int32)
            w = _bf16_weights(planes_ptr, plane_stride, woffs, wmask, E, BN, KW, M_BITS, DOT)
            if DOT == 1:
                acc = tl.dot(x, tl.trans(w), acc)
            else:
                acc = tl.dot(x.to(tl.float32), tl.trans(w), acc, input_precision="ieee")
        else:  # the block scale folded into the (exact) weight
            if G >= BK:  # one block per row and step
                E = tl.load(exps_ptr + e_rows + k0 // G, mask=nmask, other=0).to(tl.int32)
                scale = tl.broadcast_to(_scale_f32(E, M_BITS)[:, None], [BN, KW])
            else:
                E = tl.load(exps_ptr + e_rows[:, None] + (wi // WPB)[None, :], mask=wmask, other=0).to(tl.int32)
                scale = _scale_f32(E, M_BITS)
            w = _plane_values(planes_ptr, plane_stride, woffs, wmask, scale, BN, KW, M_BITS, LANE, True)
            if DOT == 1:
                acc = tl.dot(x, tl.trans(w.to(tl.bfloat16)), acc)
            elif DOT == 3:  # DOT 1's bf16 tile (truncated: a weight not exact in bf16 would show), widened
                wb = (w.to(tl.int32, bitcast=True) >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
                acc = tl.dot(x.to(tl.float32), tl.trans(wb.to(tl.float32)), acc, input_precision="ieee")
            else:
                acc = tl.dot(x.to(tl.float32), tl.trans(w), acc, input_precision="ieee")
    return acc


@triton.jit
def _linear_kernel(x_ptr, planes_ptr, exps_ptr, bias_ptr, y_ptr, part_ptr, M, N, K, Kw, NB, plane_stride,
                   k_per_split, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, G: tl.constexpr,
                   M_BITS: tl.constexpr, LANE: tl.constexpr, DOT: tl.constexpr, SPLIT_K: tl.constexpr,
                   HAS_BIAS: tl.constexpr, OUT_KIND: tl.constexpr, BF16_NAN: tl.constexpr):
    """``y [BM, BN] = x [BM, K] @ W_m [BN, K]^T (+ bias)``: planes decoded per K step (module docstring)."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    mmask, nmask = rm < M, rn < N
    k_lo = tl.program_id(2) * k_per_split
    k_hi = tl.minimum(Kw * 32, k_lo + k_per_split)
    x_rows = rm.to(tl.int64)[:, None] * K
    w_rows = rn.to(tl.int64)[:, None] * Kw
    e_rows = rn.to(tl.int64) * NB
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    if (DOT == 1 or DOT == 3) and M_BITS <= 8 and BM <= 16:  # decode: bf16 pair words unless an E = 127 is in
        # range (the magic 2^(E + 1) would overflow); GEMM tiles keep one loop (two would double shared memory)
        if _max_exponent(exps_ptr, e_rows, nmask, k_lo, k_hi, NB, BN, G) < 127:
            acc = _linear_steps(x_ptr, planes_ptr, exps_ptr, x_rows, w_rows, e_rows, mmask, nmask, K, Kw, k_lo, k_hi,
                                plane_stride, acc, BM, BN, BK, G, M_BITS, LANE, DOT, True)
        else:
            acc = _linear_steps(x_ptr, planes_ptr, exps_ptr, x_rows, w_rows, e_rows, mmask, nmask, K, Kw, k_lo, k_hi,
                                plane_stride, acc, BM, BN, BK, G, M_BITS, LANE, DOT, False)
    else:
        acc = _linear_steps(x_ptr, planes_ptr, exps_ptr, x_rows, w_rows, e_rows, mmask, nmask, K, Kw, k_lo, k_hi,
                            plane_stride, acc, BM, BN, BK, G, M_BITS, LANE, DOT, False)
    _finish(acc, rm, rn, M, N, part_ptr, part_ptr, bias_ptr, y_ptr, part_ptr, 0, HAS_BIAS, OUT_KIND, BF16_NAN,
            SPLIT_K)


# ------------------------------------------------------------------------------------ configs
def _lane(m: int) -> int:
    """SWAR lane width: byte lanes hold q' for m <= 8, 16-bit lanes up to m = 16."""
    return 8 if m <= 8 else 16


def _blocks_per_program(block_size: int, n_blocks: int | None, device_type: str, tile: int = TILE) -> int:
    # interpreter: fewer, wider programs (triton_kernels/mx.py, INTERP_TILE_SCALE)
    nb = max(1, tile * (INTERP_TILE_SCALE if device_type == "cpu" else 1) // block_size)
    if n_blocks is not None and device_type == "cpu":  # interpreter: no mostly-masked tiles on small inputs
        nb = min(nb, triton.next_power_of_2(max(n_blocks, 1)))
    return nb


def quantize_config(m_max: int, block_size: int, in_dtype: torch.dtype, n_blocks: int | None = None,
                    device_type: str = "cuda"):
    """(kernel, constexprs, num_warps) of the quantize launch; also used by :mod:`.aot`."""
    ce = dict(G=block_size, NBT=_blocks_per_program(block_size, n_blocks, device_type), M_MAX=m_max,
              IN_KIND=input_kind(in_dtype))
    return _quantize_kernel, ce, NUM_WARPS


def dequantize_config(m: int, block_size: int, out_dtype: torch.dtype, n_blocks: int | None = None,
                      device_type: str = "cuda"):
    """(kernel, constexprs, num_warps) of the dequantize launch; also used by :mod:`.aot`."""
    # one plane word (32 weights) per thread: a smaller tile would decode each word in several threads
    nbt = _blocks_per_program(block_size, n_blocks, device_type, WORD * 32 * NUM_WARPS)
    ce = dict(G=block_size, NBT=nbt, M_BITS=m, LANE=_lane(m),
              OUT_KIND=output_kind(out_dtype), BF16_NAN=bf16_nan_bits(device_type))
    return _dequantize_kernel, ce, NUM_WARPS


def dot_kind(x_dtype: torch.dtype, m: int, device_type: str = "cuda") -> int:
    """Which dot the linear kernel runs (module docstring): the inputs' MMA where the weight is exact in it."""
    if x_dtype == torch.bfloat16 and m <= 8:
        return DOT_BF16 if device_type != "cpu" else DOT_BF16_EMULATED
    if x_dtype == torch.float16 and m <= 11:
        return DOT_FP16
    return DOT_FP32


def _tiles(M: int, dot: int, block_size: int, device_type: str) -> tuple[int, int, int, int]:
    """(BM, BN, BK, num_warps) of the linear kernel.

    GPU, tensor-core dots: decode (M <= 16) 16-row tiles with BK = 128 (16-byte plane segments per row); 64 x 64
    x 64 (one warpgroup: wgmma) up to M = 64 and for fp16; 128 x 128 x 64 at 8 warps above (the decode of a
    weight tile is shared by 128 rows). fp16: BK <= G (a block per step). BN grows until every thread decodes
    at least one whole plane word (smaller tiles would decode each word in several threads). The fp32 FMA dot:
    16 x 64 x 32 at 8 warps (its operands' K slices live in registers; larger tiles spill).
    Interpreter: 16 x 32 x 64 (fewer, larger numpy ops).
    """
    if device_type == "cpu":
        return 16, 32, (min(64, block_size) if dot == DOT_FP16 else 64), NUM_WARPS
    if dot == DOT_FP32:
        return 16, 64, 32, 8
    if M <= 16:
        BM, BN, BK, nw = 16, 32, 128, NUM_WARPS
    elif M <= 64 or dot == DOT_FP16:
        BM, BN, BK, nw = 64, 64, 64, NUM_WARPS
    else:
        BM, BN, BK, nw = 128, 128, 64, 8
    if dot == DOT_FP16:
        BK = min(BK, block_size)
    BN = max(BN, WORD * WORD * nw // BK)  # [BN, BK / 32] plane words >= threads
    return BM, BN, BK, nw


def linear_config(m: int, block_size: int, x_dtype: torch.dtype, has_bias: bool, M: int = 1,
                  device_type: str = "cuda", dot: int | None = None):
    """(kernel, constexprs without SPLIT_K, num_warps) of the linear launch; also used by :mod:`.aot`."""
    dot = dot_kind(x_dtype, m, device_type) if dot is None else dot
    BM, BN, BK, nw = _tiles(M, dot, block_size, device_type)
    ce = dict(BM=BM, BN=BN, BK=BK, G=block_size, M_BITS=m, LANE=_lane(m), DOT=dot, HAS_BIAS=bool(has_bias),
              OUT_KIND=output_kind(x_dtype), BF16_NAN=bf16_nan_bits(device_type))
    return _linear_kernel, ce, nw


@functools.lru_cache(maxsize=64)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _split_k(M: int, N: int, Kp: int, BM: int, BN: int, BK: int, device: torch.device,
             split_k: int | None) -> tuple[int, int]:
    """(SPLIT_K, k_per_split): K slices until the grid covers the SMs about four times (GPU: bytes in flight for
    decode); from shapes only."""
    steps = triton.cdiv(Kp, BK)
    if split_k is None:
        split_k = 1
        if device.type == "cuda":
            tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
            sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
            while split_k < 16 and tiles * split_k < 4 * sms and split_k * 2 <= steps:
                split_k *= 2
    split_k = max(1, min(int(split_k), steps))
    k_per_split = triton.cdiv(steps, split_k) * BK
    return triton.cdiv(Kp, k_per_split), k_per_split


# ------------------------------------------------------------------------------------ launchers
def _check_same_device(name: str, t: torch.Tensor, device: torch.device, of: str = "x") -> None:
    """A tensor argument on another device is an error, not a silent (host-to-device) copy."""
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of {of}), got {t.device}")


def _nonfinite_error(w: torch.Tensor) -> ValueError:
    """The reference's message (value and index of the first NaN / Inf); CPU only (it reads values)."""
    w32 = w.to(torch.float32)
    bad = (~torch.isfinite(w32)).nonzero()[0].tolist()
    return ValueError(f"w: expected finite values (SEFP has no NaN/Inf code), got {w32[tuple(bad)].item()} "
                      f"at index {tuple(bad)}")


def quantize_triton(w: torch.Tensor, m_max: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton ``sefp_quantize``: the result of :func:`leankern.sefp.ref.quantize_ref`, bit for bit.

    Shape: w ``[N, K]`` (fp32 / bf16 / fp16) -> planes int32 ``[1 + m_max, N, Kp / 32]``, exponents int8
    ``[N, Kp / G]`` (``Kp`` = K rounded up to ``G = block_size``). NaN / Inf: ValueError on CPU, a device-side
    assert on a GPU (no host sync).
    """
    N, K = w.shape
    w = w.contiguous()
    nb = triton.cdiv(K, block_size)
    Kw = nb * block_size // WORD
    planes = torch.empty((1 + m_max, N, Kw), dtype=torch.int32, device=w.device)
    exps = torch.empty((N, nb), dtype=torch.int8, device=w.device)
    n_blocks = N * nb
    if n_blocks == 0:
        return planes, exps
    kernel, ce, nw = quantize_config(m_max, block_size, w.dtype, n_blocks, w.device.type)
    grid = (triton.cdiv(n_blocks, ce["NBT"]),)
    flags = torch.zeros(grid, dtype=torch.int32, device=w.device)  # a device fill: graph-safe
    kernel[grid](_int_view(w), planes, exps, flags, n_blocks, nb, K, N * Kw, **ce, num_warps=nw,
                 **compile_options(w.device))
    try:
        check_value_on_device(flags.amax() == 0, _NONFINITE)
    except ValueError:
        raise _nonfinite_error(w) from None  # CPU only: a GPU asserts asynchronously
    return planes, exps


def dequantize_triton(planes: torch.Tensor, exponents: torch.Tensor, m: int, block_size: int, K: int,
                      out_dtype: torch.dtype) -> torch.Tensor:
    """Triton ``sefp_dequantize``: :func:`leankern.sefp.ref.dequantize_ref` bit for bit, reading planes ``0 .. m``.

    Shape: planes int32 ``[>= 1 + m, N, Kw]`` (each plane contiguous, any plane stride), exponents int8
    ``[N, Kw * 32 / G]`` -> ``[N, K]`` in ``out_dtype``.
    """
    _check_same_device("exponents", exponents, planes.device, "planes")
    _, N, Kw = planes.shape
    nb = Kw * WORD // block_size
    out = torch.empty((N, K), dtype=out_dtype, device=planes.device)
    n_blocks = N * nb
    if n_blocks == 0:
        return out
    kernel, ce, nw = dequantize_config(m, block_size, out_dtype, n_blocks, planes.device.type)
    out_view = out.view(torch.int16) if out_dtype == torch.bfloat16 else out
    grid = (triton.cdiv(n_blocks, ce["NBT"]),)
    kernel[grid](planes, exponents, out_view, n_blocks, nb, K, planes.stride(0), **ce, num_warps=nw,
                 **compile_options(planes.device))
    return out


# x rows from which bf16 x (m <= 8) on a GPU dequantizes the weight once and runs torch's GEMM: measured on an H200
# (docs/bench/gpu_h200_sefp.txt, 4096 x 4096, m = 8 .. 2): at M = 512 dequantize + F.linear took 45-51 us, the
# fused kernel 121-225 us (it decodes each weight tile once per 128-row tile of x); at M = 16 the fused kernel was
# faster (22.7-31.1 us against 29.8-37.2). 256: where the fused kernel's per-tile decode (~30-56 us per 128 rows
# at M = 512) clearly exceeds one dequantize (~25 us) plus the GEMM; the crossover itself was not measured.
DEQUANT_GEMM_MIN_ROWS = 256


def takes_dequantize_gemm(M: int, x_dtype: torch.dtype, m: int, device_type: str) -> bool:
    """Whether :func:`linear_triton` runs :func:`dequantize_gemm` (bf16 x, m <= 8, a GPU with ``aten::mm.dtype``,
    at least :data:`DEQUANT_GEMM_MIN_ROWS` rows)."""
    return (device_type == "cuda" and M >= DEQUANT_GEMM_MIN_ROWS and dot_kind(x_dtype, m, device_type) == DOT_BF16
            and hasattr(torch.ops.aten.mm, "dtype"))


def dequantize_gemm(x2: torch.Tensor, planes: torch.Tensor, exponents: torch.Tensor, m: int, block_size: int,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """``x2 [M, K] (bf16) @ dequantize(planes, m)^T (+ bias) -> [M, N]`` bf16 for many rows of x: the weight
    dequantized once to bf16 (exact for m <= 8: at most 8 significant bits, bf16's exponent range), then torch's
    bf16 GEMM with an fp32 output (``aten::mm.dtype`` on a GPU: fp32 sums, no reduced-precision reduction; on CPU
    tensors, for the tests, an fp32 matmul of the same exact operands), the bias added in fp32 and one rounding,
    as the reference. Costs a transient ``[N, K]`` bf16 weight."""
    w = dequantize_triton(planes, exponents, m, block_size, x2.shape[-1], torch.bfloat16)  # [N, K]
    y = torch.mm(x2, w.t(), out_dtype=torch.float32) if x2.is_cuda else x2.float() @ w.float().t()
    if bias is not None:
        y += bias.float()
    return y.to(x2.dtype)


def linear_triton(x: torch.Tensor, planes: torch.Tensor, exponents: torch.Tensor, m: int, block_size: int,
                  bias: torch.Tensor | None = None, *, split_k: int | None = None,
                  dot: str | None = None) -> torch.Tensor:
    """Triton ``sefp_linear``: ``x @ dequantize(planes, m)^T (+ bias)`` with fp32 accumulation, in x's dtype.

    Shape: x ``[..., K]``, planes int32 ``[>= 1 + m, N, Kw]`` (a view ``planes[:1 + m]`` is fine: each plane
    contiguous), exponents int8 ``[N, Kw * 32 / G]``, bias ``[N]`` or None -> ``[..., N]``. Reads planes
    ``0 .. m`` and the exponents only. Within the fp32-summation bound of the reference (not bit-exact).

    Keyword-only knobs for tests and benches (the op never passes them): ``split_k`` (K slices) and ``dot``
    (``"fp32"``, ``"bf16"``, ``"fp16"``, ``"bf16_emulated"``; default :func:`dot_kind`); either one keeps the
    fused kernel where :func:`takes_dequantize_gemm` would dequantize and call torch's GEMM instead.
    """
    device = x.device
    for name, t in (("planes", planes), ("exponents", exponents), ("bias", bias)):
        if t is not None:
            _check_same_device(name, t, device)
    K, N = x.shape[-1], planes.shape[1]
    Kw = planes.shape[2]
    M = math.prod(x.shape[:-1])
    if M == 0 or N == 0:
        return torch.empty((*x.shape[:-1], N), dtype=x.dtype, device=device)
    x2 = x.reshape(M, K).contiguous()  # [M, K]
    if dot is None and split_k is None and takes_dequantize_gemm(M, x.dtype, m, device.type):
        return dequantize_gemm(x2, planes, exponents, m, block_size, bias).reshape(*x.shape[:-1], N)
    out = torch.empty((M, N), dtype=x.dtype, device=device)
    dot_id = None if dot is None else _DOT_NAMES[dot]
    kernel, ce, nw = linear_config(m, block_size, x.dtype, bias is not None, M, device.type, dot_id)
    if ce["DOT"] in (DOT_BF16, DOT_BF16_EMULATED) and (x.dtype != torch.bfloat16 or m > 8) or \
            ce["DOT"] == DOT_FP16 and (x.dtype != torch.float16 or m > 11):
        raise ValueError(f"dot: {dot!r} is exact only for bf16 x with m <= 8 / fp16 x with m <= 11, "
                         f"got {x.dtype}, m={m}")
    split, k_per_split = _split_k(M, N, Kw * WORD, ce["BM"], ce["BN"], ce["BK"], device, split_k)
    part = torch.empty((split, M, N) if split > 1 else (1,), dtype=torch.float32, device=device)
    bias_t = bias.contiguous() if bias is not None else part  # dummy pointer when HAS_BIAS is False
    out_view = out.view(torch.int16) if x.dtype == torch.bfloat16 else out
    grid = (triton.cdiv(M, ce["BM"]), triton.cdiv(N, ce["BN"]), split)
    kernel[grid](x2, planes, exponents, bias_t, out_view, part, M, N, K, Kw, Kw * WORD // block_size,
                 planes.stride(0), k_per_split, SPLIT_K=split, **ce, num_warps=nw, **compile_options(device))
    if split > 1:
        _splitk_reduce_kernel[(triton.cdiv(M, 32), triton.cdiv(N, 64))](
            part, part, part, bias_t, out_view, M, N, BM=32, BN=64, SPLIT_K=split, N_G=0, HAS_BIAS=bias is not None,
            OUT_KIND=ce["OUT_KIND"], BF16_NAN=ce["BF16_NAN"], num_warps=4, **compile_options(device))
    return out.reshape(*x.shape[:-1], N)
