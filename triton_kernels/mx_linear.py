"""Triton kernels of ``mx_linear``: ``y = x_hat @ W_hat^T + bias`` with W ``[N, K]`` block-quantized.

Same contract as :func:`leankern.mx.ref.mx_linear_ref`; results lie within the fp32-accumulation
bound of ``tests/tolerances.py`` (any summation order), they are not bit-exact.

Weight-only (``act_fmt=None``), :func:`_linear_wo_kernel`:
    each program owns a ``[BM, BN]`` output tile and walks K in ``BK`` steps: x tile ``[BM, BK]``
    from memory, the codes ``[BN, BK]`` (``BK / 2`` bytes for 4-bit) decoded to values in
    registers and multiplied by their block scale, then ``tl.dot``. Split-K (grid axis 2) for small
    M: fp32 partials ``[SPLIT_K, M, N]`` summed in a fixed order by :func:`_splitk_reduce_kernel`.

    * bf16 x (GPU): the dot runs in bf16 (wgmma on sm_90). Decoded weights are exact in bf16:
      an element (at most 4 significant bits) times an E8M0 power of two, or an FP4/INT4 element
      times an E4M3 block scale (at most 7 bits), so the NV per-tensor scale ``g`` is applied to
      the fp32 accumulator in the epilogue. x is not rounded; only the fp32 accumulation (and
      ``acc * g``) rounds. Exception: weights below 2^-126 (bf16 subnormals) lose low bits.
    * fp32 / fp16 x, and bf16 x under the interpreter: an fp32 dot with ``input_precision="ieee"``
      (fp16 x widened exactly); the weight is ``fp32(value * fp32(g * s))`` as in the reference,
      so nothing but the accumulation rounds. (The interpreter's bf16 ``tl.dot`` multiplies the
      raw bit patterns: the bf16 path is only taken on a GPU; tests force it and mark it xfail.)

Dual (``act_fmt`` set): x is quantized by the Triton quantizer (RCEIL, NV dynamic g: bit-exact
with the reference's x_hat), then one of (:func:`dual_mode`):

    * ``"int"`` (INT x INT, any MX/NV mix): per K-block int8 ``tl.dot`` into int32 (exact: at most
      127^2 * 1024 < 2^24, so the fp32 conversion is exact too), rescaled by ``s_x * s_w`` per block
      and accumulated in fp32; ``g_x * g_w`` in the epilogue (``mma ... s8``).
    * ``"fp8"`` (FP x FP, both mapping to e4m3 -- FP4/FP6/E4M3 values are exact in e4m3 -- or both
      e5m2): per K-block fp8 ``tl.dot`` (products exact, one block's sum per fresh accumulator:
      Hopper's reduced-precision fp8 accumulation is confined to ``block_size`` terms), rescaled
      per block in fp32. The sm_90 path.
    * ``"scaled"`` (MXFP8 / MXFP4 pairs at block 32, sm_100): ``tl.dot_scaled`` with the E8M0
      scales (``tcgen05.mma ... block_scale``).
    * otherwise (mixed INT x FP, e5m2 x non-e5m2, blocks outside [16, 256]): x_hat is dequantized to fp32
      (exact) and the fp32 weight-only kernel runs: the reference's definition, literally.

x is rounded only where ``act_fmt`` says so (by the quantizer); no kernel here rounds x
otherwise. Launchers are graph-safe: outputs and workspaces are ``torch.empty``, scalars are
kernel arguments, no host reads of device data, no cross-device copies.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ..mx.formats import get_format
from .mx import (_check_same_device, code_view, _fp_value, _store_f32, bf16_nan_bits, compile_options,
                 mx_dequantize_triton, mx_quantize_triton, output_kind)

__all__ = ["mx_linear_triton", "weight_only_config", "dual_config", "dual_mode", "DUAL_MODES"]

DUAL_MODES = ("int", "fp8", "scaled")
_DUAL_BS = (16, 256)  # block sizes the per-block dual kernels take ([BM, BS] tiles in registers)


# ----------------------------------------------------------------------------- jit helpers
@triton.jit
def _nan_like(v):
    return tl.full(v.shape, 0x7FC00000, tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _decode_scale(s, IS_NV: tl.constexpr):
    """Raw scale bytes (int32) -> fp32: E8M0 2^(s - 127) (0xFF NaN), or the E4M3 value (S.1111.111 NaN)."""
    if IS_NV:
        mag, sign = s & 0x7F, (s >> 7) << 31
        v = _fp_value(mag, 3, 7, sign)
        v = tl.where(mag == 0x7F, (sign | 0x7FC00000).to(tl.float32, bitcast=True), v)
    else:  # 2^-127 is the fp32 subnormal 0x00400000
        v = tl.where(s == 0, 0x400000, s << 23).to(tl.float32, bitcast=True)
        v = tl.where(s == 255, _nan_like(v), v)
    return v


@triton.jit
def _load_raw(ptr, rows, rmask, k0, k_lim, KROW, R: tl.constexpr, BK: tl.constexpr, PACKED: tl.constexpr,
              IS_INT: tl.constexpr, EVEN_K: tl.constexpr = False):
    """Codes of rows ``rows`` [R], elements k0 .. k0 + BK (masked at ``k_lim``) -> int32 [R, BK].

    INT codes come sign-extended; FP codes as raw sign-magnitude bits. KROW: bytes per row.
    """
    r64 = rows.to(tl.int64)[:, None] * KROW
    if PACKED:  # element 2i in the low nibble
        kb = k0 // 2 + tl.arange(0, BK // 2)
        kmask = (kb < k_lim // 2) | EVEN_K  # EVEN_K: no K tail, a row mask only (vector loads)
        b = tl.load(ptr + r64 + kb[None, :], mask=rmask[:, None] & kmask[None, :], other=0)
        b = b.to(tl.int32) & 0xFF
        raw = tl.reshape(tl.join(b & 0xF, b >> 4), [R, BK])
        if IS_INT:
            raw = (raw ^ 8) - 8
    else:
        kk = k0 + tl.arange(0, BK)
        kmask = (kk < k_lim) | EVEN_K
        raw = tl.load(ptr + r64 + kk[None, :], mask=rmask[:, None] & kmask[None, :], other=0).to(tl.int32)
    return raw


@triton.jit
def _decode_values(raw, IS_INT: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr, SIGN_BIT: tl.constexpr,
                   FP8_KIND: tl.constexpr):
    """Element values (fp32, exact) of raw int32 codes of any shape; FP8_KIND 1 = e4m3fn NaN, 2 = e5m2 Inf/NaN.

    FP: :func:`.mx._fp_value` (a shift and one multiply) with the sign OR-ed in as a bit, so -0.0 and the NaNs'
    signs are kept (sm_90 SASS: about half the instructions per weight of the exponent arithmetic it replaced)."""
    if IS_INT:
        return raw.to(tl.float32)
    mag = raw & ((1 << SIGN_BIT) - 1)
    sign = (raw >> SIGN_BIT) << 31  # raw < 2^(SIGN_BIT + 1): the sign bit alone is left
    val = _fp_value(mag, MBITS, BIAS, sign)
    if FP8_KIND == 1:  # e4m3fn: S.1111.111 is NaN
        val = tl.where(mag == 0x7F, (sign | 0x7FC00000).to(tl.float32, bitcast=True), val)
    if FP8_KIND == 2:  # e5m2: exponent 31 is +-Inf (mantissa 0) or NaN
        special = sign | tl.where(mag == 0x7C, 0x7F800000, 0x7FC00000)
        val = tl.where(mag >= 0x7C, special.to(tl.float32, bitcast=True), val)
    return val


@triton.jit
def _scaled_tile(val, scales_ptr, rows, rmask, k0, NBLK, d_mul, R: tl.constexpr, BK: tl.constexpr,
                 BS: tl.constexpr, IS_NV: tl.constexpr, MUL_G: tl.constexpr):
    """val [R, BK] times its block scales (times ``d_mul`` = g first when MUL_G: fp32(g * s) as the ref)."""
    r64 = rows.to(tl.int64) * NBLK
    if BS >= BK:  # the tile lies in one block per row
        s = tl.load(scales_ptr + r64 + k0 // BS, mask=rmask, other=0).to(tl.int32) & 0xFF
        d = _decode_scale(s, IS_NV)
        if MUL_G:
            d = d_mul * d
        w = val * d[:, None]
    else:
        kb = k0 // BS + tl.arange(0, BK // BS)
        s = tl.load(scales_ptr + r64[:, None] + kb[None, :], mask=rmask[:, None] & (kb < NBLK)[None, :], other=0)
        d = _decode_scale(s.to(tl.int32) & 0xFF, IS_NV)  # [R, BK / BS]
        if MUL_G:
            d = d_mul * d
        w = tl.reshape(tl.reshape(val, [R, BK // BS, BS]) * d[:, :, None], [R, BK])
    return w


@triton.jit
def _epilogue(acc, rm, rn, M, N, g1_ptr, g2_ptr, bias_ptr, y_ptr, N_G: tl.constexpr, HAS_BIAS: tl.constexpr,
              OUT_KIND: tl.constexpr, BF16_NAN: tl.constexpr):
    """acc [BM, BN] fp32 -> (* g1 (* g2)) (+ bias) -> y in the output dtype (RNE)."""
    if N_G >= 1:
        g = tl.load(g1_ptr)
        if N_G == 2:
            g = g * tl.load(g2_ptr)
        acc = acc * g
    nmask = rn < N
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + rn, mask=nmask, other=0).to(tl.float32)[None, :]
    offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    _store_f32(y_ptr, offs, acc, (rm < M)[:, None] & nmask[None, :], OUT_KIND, BF16_NAN)


@triton.jit
def _finish(acc, rm, rn, M, N, g1_ptr, g2_ptr, bias_ptr, y_ptr, part_ptr, N_G: tl.constexpr,
            HAS_BIAS: tl.constexpr, OUT_KIND: tl.constexpr, BF16_NAN: tl.constexpr, SPLIT_K: tl.constexpr):
    if SPLIT_K == 1:
        _epilogue(acc, rm, rn, M, N, g1_ptr, g2_ptr, bias_ptr, y_ptr, N_G, HAS_BIAS, OUT_KIND, BF16_NAN)
    else:  # fp32 partial of this K slice: [SPLIT_K, M, N]
        base = tl.program_id(2).to(tl.int64) * M * N
        offs = base + rm.to(tl.int64)[:, None] * N + rn[None, :]
        tl.store(part_ptr + offs, acc, mask=(rm < M)[:, None] & (rn < N)[None, :])


# ----------------------------------------------------------------------------- weight-only
@triton.jit
def _linear_wo_kernel(x_ptr, codes_ptr, scales_ptr, g_ptr, bias_ptr, y_ptr, part_ptr, M, N, K, k_per_split,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr,
                      SPLIT_K: tl.constexpr, BF16_DOT: tl.constexpr, IS_NV: tl.constexpr, IS_INT: tl.constexpr,
                      PACKED: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr, SIGN_BIT: tl.constexpr,
                      FP8_KIND: tl.constexpr, MUL_G: tl.constexpr, N_G: tl.constexpr, HAS_BIAS: tl.constexpr,
                      OUT_KIND: tl.constexpr, BF16_NAN: tl.constexpr, EVEN_K: tl.constexpr):
    """Weight-only tile: x [BM, BK] @ decode(W [BN, BK])^T, fp32 accumulation (module docstring)."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    mmask, nmask = rm < M, rn < N
    k_lo = tl.program_id(2) * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    KROW = K // 2 if PACKED else K
    NBLK = K // BS
    g = tl.load(g_ptr)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BK):
        kk = k0 + tl.arange(0, BK)
        kmask = (kk < k_hi) | EVEN_K
        x = tl.load(x_ptr + rm.to(tl.int64)[:, None] * K + kk[None, :], mask=mmask[:, None] & kmask[None, :], other=0)
        raw = _load_raw(codes_ptr, rn, nmask, k0, k_hi, KROW, BN, BK, PACKED, IS_INT, EVEN_K)
        val = _decode_values(raw, IS_INT, MBITS, BIAS, SIGN_BIT, FP8_KIND)
        w = _scaled_tile(val, scales_ptr, rn, nmask, k0, NBLK, g, BN, BK, BS, IS_NV, MUL_G)
        if BF16_DOT:
            acc = tl.dot(x, tl.trans(w.to(tl.bfloat16)), acc)
        else:
            acc = tl.dot(x.to(tl.float32), tl.trans(w), acc, input_precision="ieee")
    _finish(acc, rm, rn, M, N, g_ptr, g_ptr, bias_ptr, y_ptr, part_ptr, N_G, HAS_BIAS, OUT_KIND, BF16_NAN, SPLIT_K)


@triton.jit
def _splitk_reduce_kernel(part_ptr, g1_ptr, g2_ptr, bias_ptr, y_ptr, M, N, BM: tl.constexpr, BN: tl.constexpr,
                          SPLIT_K: tl.constexpr, N_G: tl.constexpr, HAS_BIAS: tl.constexpr,
                          OUT_KIND: tl.constexpr, BF16_NAN: tl.constexpr):
    """Sum the SPLIT_K fp32 partials in a fixed order (deterministic), then the epilogue."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(part_ptr + s * M.to(tl.int64) * N + offs, mask=mask, other=0.0)  # int64: s * M * N
    _epilogue(acc, rm, rn, M, N, g1_ptr, g2_ptr, bias_ptr, y_ptr, N_G, HAS_BIAS, OUT_KIND, BF16_NAN)


# ----------------------------------------------------------------------------- dual
@triton.jit
def _fp8_operand(raw, MBITS: tl.constexpr, BIAS: tl.constexpr, SIGN_BIT: tl.constexpr, FP8_KIND: tl.constexpr):
    """FP codes -> the same values as fp8 (e4m3, or e5m2 for e5m2 codes), by integer bit moves.

    FP4 / FP6 magnitudes are all e4m3 normals (2^-4 .. 28), so the fp32 exponent and top three
    mantissa bits of the exact value give the e4m3 code; e4m3 / e5m2 codes pass through.
    """
    if FP8_KIND == 0:
        mag = raw & ((1 << SIGN_BIT) - 1)
        b = _fp_value(mag, MBITS, BIAS).to(tl.int32, bitcast=True)
        code = tl.where(mag == 0, 0, ((((b >> 23) & 0xFF) - 120) << 3) | ((b >> 20) & 7))
        code = code | (((raw >> SIGN_BIT) & 1) << 7)
    else:
        code = raw
    # if/else, not an early return: Triton 3.6 type-checks both returns ("Inconsistent return types")
    if FP8_KIND == 2:
        op = code.to(tl.uint8).to(tl.float8e5, bitcast=True)
    else:
        op = code.to(tl.uint8).to(tl.float8e4nv, bitcast=True)
    return op


@triton.jit
def _linear_dual_kernel(xc_ptr, xs_ptr, xg_ptr, wc_ptr, ws_ptr, wg_ptr, bias_ptr, y_ptr, part_ptr,
                        M, N, K, k_per_split,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr,
                        SPLIT_K: tl.constexpr, MODE: tl.constexpr,
                        X_NV: tl.constexpr, X_PACKED: tl.constexpr, X_MBITS: tl.constexpr,
                        X_BIAS: tl.constexpr, X_SIGN_BIT: tl.constexpr, X_FP8: tl.constexpr,
                        W_NV: tl.constexpr, W_PACKED: tl.constexpr, W_MBITS: tl.constexpr,
                        W_BIAS: tl.constexpr, W_SIGN_BIT: tl.constexpr, W_FP8: tl.constexpr,
                        X_DS: tl.constexpr, W_DS: tl.constexpr,
                        HAS_BIAS: tl.constexpr, OUT_KIND: tl.constexpr, BF16_NAN: tl.constexpr):
    """Both operands quantized. MODE 0: int8 dot per block; 1: fp8 dot per block; 2: tl.dot_scaled."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    mmask, nmask = rm < M, rn < N
    k_lo = tl.program_id(2) * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    XROW = K // 2 if X_PACKED else K
    WROW = K // 2 if W_PACKED else K
    NBLK = K // BS
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    if MODE == 2:  # dot_scaled: codes as stored (e2m1 packed along K), E8M0 scales [rows, BK / 32]
        for k0 in range(k_lo, k_hi, BK):
            if X_PACKED:
                xa = _load_raw(xc_ptr, rm, mmask, k0 // 2, k_hi // 2, XROW, BM, BK // 2, False, False)
            else:
                xa = _load_raw(xc_ptr, rm, mmask, k0, k_hi, XROW, BM, BK, False, False)
            if W_PACKED:
                wb = _load_raw(wc_ptr, rn, nmask, k0 // 2, k_hi // 2, WROW, BN, BK // 2, False, False)
            else:
                wb = _load_raw(wc_ptr, rn, nmask, k0, k_hi, WROW, BN, BK, False, False)
            kb = k0 // BS + tl.arange(0, BK // BS)
            kbm = (kb < k_hi // BS)[None, :]
            xs = tl.load(xs_ptr + rm.to(tl.int64)[:, None] * NBLK + kb[None, :], mask=mmask[:, None] & kbm, other=0)
            ws = tl.load(ws_ptr + rn.to(tl.int64)[:, None] * NBLK + kb[None, :], mask=nmask[:, None] & kbm, other=0)
            xa = xa.to(tl.uint8)
            wb = wb.to(tl.uint8)
            if not X_PACKED:
                xa = xa.to(tl.float8e5 if X_FP8 == 2 else tl.float8e4nv, bitcast=True)
            if not W_PACKED:
                wb = wb.to(tl.float8e5 if W_FP8 == 2 else tl.float8e4nv, bitcast=True)
            acc = tl.dot_scaled(xa, xs.to(tl.uint8), X_DS, tl.trans(wb), ws.to(tl.uint8), W_DS, acc)
    else:  # BK = max(BS, 32) per step (8-bit dots need K >= 32): a fresh dot per scale block,
        # rescaled in fp32; with BS = 16 each block's dot sees the other block's x codes zeroed
        for k0 in range(k_lo, k_hi, BK):
            xr = _load_raw(xc_ptr, rm, mmask, k0, k_hi, XROW, BM, BK, X_PACKED, MODE == 0)
            wr = _load_raw(wc_ptr, rn, nmask, k0, k_hi, WROW, BN, BK, W_PACKED, MODE == 0)
            if MODE == 0:
                wop = tl.trans(wr.to(tl.int8))
            else:
                wop = tl.trans(_fp8_operand(wr, W_MBITS, W_BIAS, W_SIGN_BIT, W_FP8))
            for j in tl.static_range(BK // BS):
                xj = xr
                if BK // BS > 1:
                    xj = tl.where((tl.arange(0, BK) // BS == j)[None, :], xr, 0)
                if MODE == 0:
                    p = tl.dot(xj.to(tl.int8), wop, out_dtype=tl.int32).to(tl.float32)
                else:
                    p = tl.dot(_fp8_operand(xj, X_MBITS, X_BIAS, X_SIGN_BIT, X_FP8), wop)
                kb = k0 // BS + j
                # BS = 16 with K % 32 == 16: the last step's second block lies past the row: its codes load as
                # zeros, and its scales must not be read (the next row's, or past the buffer: a NaN scale byte
                # there made 0 * NaN of this row)
                kb_end = k_hi // BS
                sx = _decode_scale(tl.load(xs_ptr + rm.to(tl.int64) * NBLK + kb, mask=mmask & (rm * 0 + kb < kb_end),
                                           other=0).to(tl.int32) & 0xFF, X_NV)
                sw = _decode_scale(tl.load(ws_ptr + rn.to(tl.int64) * NBLK + kb, mask=nmask & (rn * 0 + kb < kb_end),
                                           other=0).to(tl.int32) & 0xFF, W_NV)
                acc += p * (sx[:, None] * sw[None, :])
    _finish(acc, rm, rn, M, N, xg_ptr, wg_ptr, bias_ptr, y_ptr, part_ptr, 2, HAS_BIAS, OUT_KIND, BF16_NAN, SPLIT_K)


# ----------------------------------------------------------------------------- configs
@functools.lru_cache(maxsize=None)
def _element_ce(fmt: str, prefix: str = "") -> dict:
    f = get_format(fmt)
    el = f.element
    ce = dict(IS_NV=f.is_nv, PACKED=el.packed, MBITS=el.mbits, BIAS=el.bias, SIGN_BIT=el.sign_bit,
              FP8_KIND={"fp8_e4m3": 1, "fp8_e5m2": 2}.get(el.name, 0))
    if prefix:
        ce = {f"{prefix}{k.replace('IS_NV', 'NV').replace('FP8_KIND', 'FP8')}": v for k, v in ce.items()}
    else:
        ce["IS_INT"] = el.is_int
    return ce


@functools.lru_cache(maxsize=64)
def _sm_count(device_index) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _tiles(M: int, kind: str):
    """(BM, BN, BK, num_warps) per kernel kind ("bf16" / "fp32" weight-only, "block" dual, "scaled").

    16-row tiles for decode (M <= 16: mma.sync, split-K fills the GPU), 64 rows (one warpgroup:
    wgmma on sm_90) otherwise; 128 x 128 for dot_scaled (tcgen05's block-scaled MMA is 128 rows).
    Sized so the decoded [BN, BK] tile and the accumulator fit in registers without spills.
    """
    small = M <= 16
    if kind == "bf16":
        return (16 if small else 64), 64, 64, 4
    if kind == "fp32":  # FMA dot: the accumulator and both operands live in registers
        return (16 if small else 32), 64, 32, 4
    if kind == "scaled":
        return 128, 128, 128, 8
    return (16 if small else 64), 64, 0, 4  # "block": BK = max(block_size, 32)


def _split_k(M, N, K, BM, BN, BK, device, split_k=None, waves=None) -> tuple[int, int]:
    """(SPLIT_K, k_per_split) from shapes only: at most ~2 waves of programs; with ``waves``, the
    smallest power of two (<= 8) that gives at least that many waves."""
    steps = triton.cdiv(K, BK)
    if split_k is None:
        tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
            if device.type == "cuda" else 2
        split_k = 1
        if waves is None:  # double while the doubled count stays within 2 waves
            while split_k < 16 and tiles * split_k * 2 <= 2 * sms and split_k * 2 <= steps:
                split_k *= 2
        else:  # double until at least ``waves`` waves
            while split_k < 8 and tiles * split_k < waves * sms and split_k * 2 <= steps:
                split_k *= 2
    split_k = max(1, min(int(split_k), steps))
    k_per_split = triton.cdiv(steps, split_k) * BK
    return triton.cdiv(K, k_per_split), k_per_split


def weight_only_config(fmt: str, block_size: int, x_dtype: torch.dtype, out_dtype: torch.dtype, has_bias: bool,
                       M: int = 1, device_type: str = "cuda", bf16_dot: bool | None = None, gemv: bool | None = None):
    """(kernel, constexprs without SPLIT_K, num_warps) of the weight-only launch; also used by :mod:`.aot`.

    ``gemv`` (None: ``M <= GEMV_MAX_M`` unless ``bf16_dot`` is given) picks the no-``tl.dot`` GEMV of
    :mod:`.mx_gemv` over the tensor-core kernel."""
    from .mx_gemv import GEMV_MAX_M, gemv_config

    if gemv is None:
        gemv = M <= GEMV_MAX_M and bf16_dot is None
    tail = dict(HAS_BIAS=bool(has_bias), OUT_KIND=output_kind(out_dtype), BF16_NAN=bf16_nan_bits(device_type),
                EVEN_K=False)
    if gemv:
        if M > GEMV_MAX_M:
            raise ValueError(f"gemv: the GEMV takes at most GEMV_MAX_M={GEMV_MAX_M} row(s) of x, got M={M}")
        return gemv_config(_element_ce(fmt), block_size, tail)
    if bf16_dot is None:  # the interpreter's bf16 dot multiplies bit patterns: fp32 there
        bf16_dot = x_dtype == torch.bfloat16 and device_type != "cpu"
    BM, BN, BK, nw = _tiles(M, "bf16" if bf16_dot else "fp32")
    el = _element_ce(fmt)
    # NV: bf16 dot -> g in the epilogue (q * s is exact in bf16); fp32 dot -> fp32(g * s) as the reference
    ce = dict(BM=BM, BN=BN, BK=BK, BS=block_size, BF16_DOT=bool(bf16_dot),
              MUL_G=el["IS_NV"] and not bf16_dot, N_G=int(el["IS_NV"] and bool(bf16_dot)), **tail, **el)
    return _linear_wo_kernel, ce, nw


def dual_mode(act_fmt: str, fmt: str, block_size: int, device: torch.device | str = "cuda") -> str | None:
    """Which dual kernel runs ``act_fmt x fmt`` here (None: dequantize x, then the fp32 weight-only kernel)."""
    a, w = get_format(act_fmt).element, get_format(fmt).element
    if not _DUAL_BS[0] <= block_size <= _DUAL_BS[1]:
        return None
    if a.is_int and w.is_int:
        return "int"
    if a.is_int or w.is_int or ((a.name == "fp8_e5m2") != (w.name == "fp8_e5m2")):
        return None
    device = torch.device(device)
    cap = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    if cap is not None and cap < (8, 9):
        return None  # fp8 dots need sm_89+ (Ada, Hopper): Triton does not compile them for A100 / older
    ds_ok = {"fp8_e4m3", "fp8_e5m2", "fp4_e2m1"}
    if (cap is not None and cap[0] >= 10 and block_size == 32 and not get_format(act_fmt).is_nv
            and not get_format(fmt).is_nv and a.name in ds_ok and w.name in ds_ok):
        return "scaled"
    return "fp8"


_DS_NAMES = {"fp8_e4m3": "e4m3", "fp8_e5m2": "e5m2", "fp4_e2m1": "e2m1"}


def dual_config(act_fmt: str, fmt: str, block_size: int, mode: str, out_dtype: torch.dtype, has_bias: bool,
                M: int = 1, device_type: str = "cuda"):
    """(kernel, constexprs without SPLIT_K, num_warps) of a dual launch; also used by :mod:`.aot`."""
    if mode not in DUAL_MODES:
        raise ValueError(f"mode: expected one of {DUAL_MODES}, got {mode!r}")
    a, w = get_format(act_fmt).element, get_format(fmt).element
    BM, BN, BK, nw = _tiles(M, "scaled" if mode == "scaled" else "block")
    if mode == "scaled" and device_type == "cpu":  # interpreter: small tiles run faster
        BM, BN, BK = 16, 32, 64
    BK = BK or max(block_size, 32)
    ce = dict(BM=BM, BN=BN, BK=BK, BS=block_size, MODE=DUAL_MODES.index(mode), HAS_BIAS=bool(has_bias),
              OUT_KIND=output_kind(out_dtype), BF16_NAN=bf16_nan_bits(device_type),
              X_DS=_DS_NAMES.get(a.name, ""), W_DS=_DS_NAMES.get(w.name, ""),
              **_element_ce(act_fmt, "X_"), **_element_ce(fmt, "W_"))
    return _linear_dual_kernel, ce, nw


# ----------------------------------------------------------------------------- launchers
def _launch(kernel, ce, nw, args, M, N, K, BK, device, out, split_k, g1, g2, n_g, bias, waves=None):
    """Main kernel (+ the split-K reduction); ``args`` are the kernel's leading pointer arguments."""
    split, k_per_split = _split_k(M, N, K, ce["BM"], ce["BN"], BK, device, split_k, waves)
    if "EVEN_K" in ce:  # no K tail in any slice: unmasked (vectorised) K loads
        ce = dict(ce, EVEN_K=K % k_per_split == 0 and k_per_split % BK == 0)
    part = torch.empty((split, M, N) if split > 1 else (1,), dtype=torch.float32, device=device)
    out_view = out.view(torch.int16) if out.dtype == torch.bfloat16 else out
    bias_t = bias if bias is not None else part
    grid = (triton.cdiv(M, ce["BM"]), triton.cdiv(N, ce["BN"]), split)
    kernel[grid](*args, bias_t, out_view, part, M, N, K, k_per_split, SPLIT_K=split, **ce, num_warps=nw,
                 **compile_options(device))
    if split > 1:
        _splitk_reduce_kernel[(triton.cdiv(M, 32), triton.cdiv(N, 64))](
            part, g1, g2, bias_t, out_view, M, N, BM=32, BN=64, SPLIT_K=split, N_G=n_g, HAS_BIAS=bias is not None,
            OUT_KIND=ce["OUT_KIND"], BF16_NAN=ce["BF16_NAN"], num_warps=4, **compile_options(device))


def _weight_only(x2, codes, scales, g, fmt, block_size, bias, out, split_k=None, bf16_dot=None, gemv=None):
    M, K = x2.shape
    N = codes.shape[0]
    kernel, ce, nw = weight_only_config(fmt, block_size, x2.dtype, out.dtype, bias is not None, M,
                                        x2.device.type, bf16_dot, gemv)
    if ce.get("BF16_DOT") and x2.dtype != torch.bfloat16:
        raise ValueError(f"bf16_dot: the bf16 tensor-core path takes bf16 x, got {x2.dtype}")
    args = (x2, code_view(codes, fmt), scales.view(torch.uint8), g)
    # GPU decode with the bf16 dot: >= 4 waves of programs. Measured on an H200 (bench/gpu_linear_splitk.py,
    # M = 1 / 16): 1.15-1.22x faster than the 2-wave rule for W 14336 x 4096 (SPLIT_K 4 vs 1), 0.97-1.2x at 4096^2.
    # The GEMV takes the same rule, not measured on a GPU yet.
    gemv_kernel = kernel is not _linear_wo_kernel
    waves = 4 if x2.device.type == "cuda" and (gemv_kernel or ce["BF16_DOT"]) and M <= 16 else None
    _launch(kernel, ce, nw, args, M, N, K, ce["BK"], x2.device, out, split_k, g, g, ce["N_G"], bias, waves)


def _dual(xq, codes, scales, g, act_fmt, fmt, block_size, mode, bias, out, split_k=None):
    xc, xs, xg = xq
    M = xc.shape[0]
    N = codes.shape[0]
    K = scales.shape[-1] * block_size
    kernel, ce, nw = dual_config(act_fmt, fmt, block_size, mode, out.dtype, bias is not None, M, xc.device.type)
    args = (code_view(xc, act_fmt), xs.view(torch.uint8), xg, code_view(codes, fmt), scales.view(torch.uint8), g)
    _launch(kernel, ce, nw, args, M, N, K, ce["BK"], xc.device, out, split_k, xg, g, 2, bias)


def mx_linear_triton(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    global_scale: torch.Tensor,
    fmt: str,
    block_size: int,
    bias: torch.Tensor | None = None,
    act_fmt: str | None = None,
    *,
    dual: str | None = "auto",
    split_k: int | None = None,
    bf16_dot: bool | None = None,
    gemv: bool | None = None,
) -> torch.Tensor:
    """Block-quantized linear; same contract as :func:`leankern.mx.ref.mx_linear_ref`.

    Shape: x ``[..., K]``, codes ``[N, K]`` (``[N, K // 2]`` uint8 for 4-bit), scales
    ``[N, K // block_size]``, global_scale fp32 ``[]``, bias ``[N]`` or None -> ``[..., N]`` in x's dtype.

    Keyword-only knobs for tests and benches (the op never passes them): ``dual`` forces a dual
    mode (one of :data:`DUAL_MODES`, or None for dequantize-then-weight-only; "auto" =
    :func:`dual_mode`), ``split_k`` the number of K slices, ``bf16_dot`` the bf16 tensor-core path,
    ``gemv`` the no-``tl.dot`` GEMV of :mod:`.mx_gemv` (default: up to ``GEMV_MAX_M`` rows, unless ``bf16_dot``
    is given); both weight-only.
    """
    f = get_format(fmt)
    device = x.device
    for name, t in (("codes", codes), ("scales", scales), ("global_scale", global_scale), ("bias", bias)):
        if t is not None:
            _check_same_device(name, t, device)
    K, N = x.shape[-1], codes.shape[0]
    M = math.prod(x.shape[:-1])
    x2 = x.reshape(M, K).contiguous()  # [M, K]
    out = torch.empty(M, N, dtype=x.dtype, device=device)
    g = global_scale.to(torch.float32).reshape(())
    if M == 0 or N == 0:
        return out.reshape(*x.shape[:-1], N)
    if K == 0:  # an empty sum: zeros (+ bias)
        out.zero_()
        if bias is not None:
            out += bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], N)
    codes, scales = codes.contiguous(), scales.contiguous()
    bias = None if bias is None else bias.contiguous()
    if act_fmt is None:
        _weight_only(x2, codes, scales, g, f.name, block_size, bias, out, split_k, bf16_dot, gemv)
    else:
        a = get_format(act_fmt)
        mode = dual_mode(a.name, f.name, block_size, device) if dual == "auto" else dual
        xq = mx_quantize_triton(x2, a.name, block_size, "rceil")
        if mode is None:  # x_hat exactly as the reference defines it, then the fp32 weight-only kernel
            x_hat = mx_dequantize_triton(*xq, a.name, block_size, torch.float32)
            _weight_only(x_hat, codes, scales, g, f.name, block_size, bias, out, split_k, False, gemv)
        else:
            _dual(xq, codes, scales, g, a.name, f.name, block_size, mode, bias, out, split_k)
    return out.reshape(*x.shape[:-1], N)
