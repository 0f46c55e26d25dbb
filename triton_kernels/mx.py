"""Triton kernels for the MX / NV block formats: quantize and dequantize.

Bit-exact with :mod:`leankern.mx.ref`. All rounding is integer arithmetic on fp32 bit patterns
(never a native fp8 cast: the interpreter and the GPU round those differently), so the same
kernel is exact on a GPU and under ``TRITON_INTERPRET=1`` on CPU.

Element rounding (see the kernel contract): a magnitude ``|v| = sig * 2^(ev - 23)`` with a
normalised 24-bit ``sig`` is rounded by dropping ``shift = 23 + qe - ev`` low bits of ``sig``,
where ``qe`` is the exponent of the element's quantum at ``ev``. Saturation is ``min(code,
max_code)``: rounding is monotone, so this equals the reference's clamp-then-round.

Each program owns ``NB`` whole blocks (a ``[NB, BS]`` tile, ``NB * BS`` ~ ``TILE`` elements), so
the block max is a register/warp reduction and loads are 128-bit vectors along a block.
"""
from __future__ import annotations

import functools
import math
import struct

import torch
import triton
import triton.language as tl

from ..mx.formats import get_format
from ..mx.ref import nv_global_scale

__all__ = [
    "mx_quantize_triton",
    "mx_dequantize_triton",
    "quantize_config",
    "dequantize_config",
    "input_kind",
    "output_kind",
    "TILE",
]

TILE = 2048  # elements per program: 16 fp32 per thread at 4 warps, enough bytes in flight
NUM_WARPS = 4
# IN_KIND / OUT_KIND codes: how elements are read / written (bf16 goes through int16 bits so
# its rounding is ours, not the interpreter's truncating cast).
KIND_FP32, KIND_BF16, KIND_FP16 = 0, 1, 2
_KINDS = {torch.float32: KIND_FP32, torch.bfloat16: KIND_BF16, torch.float16: KIND_FP16}


# ----------------------------------------------------------------------------- jit helpers
@triton.jit
def _load_bits(ptr, offs, mask, IN_KIND: tl.constexpr):
    """fp32 bit patterns (int32) of the elements at ``ptr + offs``."""
    if IN_KIND == 0:  # fp32 passed as an int32 view
        bits = tl.load(ptr + offs, mask=mask, other=0)
    elif IN_KIND == 1:  # bf16 passed as an int16 view: bf16 bits are the top half of fp32
        bits = tl.load(ptr + offs, mask=mask, other=0).to(tl.int32) << 16
    else:  # fp16: the widening cast is exact
        bits = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.int32, bitcast=True)
    return bits


@triton.jit
def _store_f32(ptr, offs, y, mask, OUT_KIND: tl.constexpr, BF16_NAN: tl.constexpr):
    """Store fp32 ``y`` rounded (RNE) to the output dtype; bf16 NaN as the bits ``BF16_NAN``."""
    if OUT_KIND == 0:
        tl.store(ptr + offs, y, mask=mask)
    elif OUT_KIND == 1:  # bf16 into an int16 view: RNE on the bits
        b = y.to(tl.int32, bitcast=True)
        r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        r = tl.where(y != y, BF16_NAN, r)
        tl.store(ptr + offs, r.to(tl.int16), mask=mask)
    else:
        tl.store(ptr + offs, y.to(tl.float16), mask=mask)


@triton.jit
def _split_mag(a):
    """Magnitude bits ``a`` (>= 0) -> (sig, ux): |x| = sig * 2^(ux - 23), sig normalised to 24 bits.

    fp32 subnormals are normalised (their exponent is not -126); zero gives sig = 0.
    """
    ex = a >> 23
    frac = a & 0x7FFFFF
    # floor(log2 frac) from an exact int -> fp32 conversion (a count-leading-zeros in disguise)
    p = (frac.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127
    sub_shift = tl.minimum(tl.maximum(23 - p, 0), 31)
    sig = tl.where(ex == 0, frac << sub_shift, frac | 0x800000)
    ux = tl.where(ex == 0, p - 149, ex - 127)
    return sig, ux


@triton.jit
def _round_mag(sig, ev, rb, IS_INT: tl.constexpr, MBITS: tl.constexpr, EMIN: tl.constexpr,
               MAX_CODE: tl.constexpr, STOCHASTIC: tl.constexpr):
    """Saturating magnitude code of v = sig * 2^(ev - 23): RNE, or stochastic with words ``rb``."""
    if IS_INT:
        qe = tl.zeros_like(ev)
        base = tl.zeros_like(ev)
    else:
        evc = tl.maximum(ev, EMIN)
        qe = evc - MBITS  # quantum exponent
        base = (evc - EMIN) << MBITS  # code of the binade's first grid point, minus 2^MBITS
    shift = 23 + qe - ev  # low bits of sig below the quantum; >= 1 unless v saturates anyway
    if STOCHASTIC:
        # r = floor((floor(sig * 2^(32 - shift)) + D) / 2^32) in 64-bit integers
        s = tl.maximum(shift, 1)
        sig64 = sig.to(tl.int64)
        up = tl.minimum(tl.maximum(32 - s, 0), 31).to(tl.int64)
        down = tl.minimum(tl.maximum(s - 32, 0), 31).to(tl.int64)
        t_fixed = tl.where(s <= 32, sig64 << up, sig64 >> down)
        dither = rb.to(tl.uint32).to(tl.int64)
        r = ((t_fixed + dither) >> 32).to(tl.int32)
    else:
        s = tl.minimum(tl.maximum(shift, 1), 31)
        r = (sig + ((1 << (s - 1)) - 1) + ((sig >> s) & 1)) >> s
    return tl.minimum(base + r, MAX_CODE)


@triton.jit
def _store_codes(codes_ptr, blk, bmask, mag, neg, NB: tl.constexpr, BS: tl.constexpr,
                 IS_INT: tl.constexpr, SIGN_BIT: tl.constexpr, PACKED: tl.constexpr):
    """Sign + magnitude [NB, BS] -> stored bytes (two's complement INT, sign-magnitude FP)."""
    if IS_INT:
        code = tl.where(neg, -mag, mag)
    else:
        code = mag | (neg.to(tl.int32) << SIGN_BIT)
    if PACKED:  # element 2i in the low nibble
        lo, hi = tl.split(tl.reshape(code & 0xF, [NB, BS // 2, 2]))
        byte = lo | (hi << 4)  # [NB, BS // 2]
        offs = blk[:, None] * (BS // 2) + tl.arange(0, BS // 2)[None, :]
    else:
        byte = code & 0xFF
        offs = blk[:, None] * BS + tl.arange(0, BS)[None, :]
    tl.store(codes_ptr + offs, byte.to(tl.uint8), mask=bmask[:, None])


@triton.jit
def _fp_value(mag, MBITS: tl.constexpr, BIAS: tl.constexpr, sign=0):
    """Value (fp32, exact) of an FP element magnitude code (int32, < 2^(8 + MBITS)) without specials; ``sign``:
    0, or int32 bit 31 for a negative value (OR-ed in, so -0.0 stays -0.0).

    The magnitude shifted into fp32's exponent and mantissa fields reads as ``value * 2^-(127 - BIAS)`` (a
    subnormal code as an fp32 subnormal, which the GPU build does not flush: ``GPU_COMPILE_OPTIONS``), so one
    exact multiply by ``2^(127 - BIAS)`` gives the value: a shift and a multiply, no exponent arithmetic."""
    return ((mag << (23 - MBITS)) | sign).to(tl.float32, bitcast=True) * (2.0 ** (127 - BIAS))


# ----------------------------------------------------------------------------- quantize
@triton.jit
def _mx_quantize_kernel(x_ptr, rb_ptr, codes_ptr, scales_ptr, n_blocks,
                        BS: tl.constexpr, NB: tl.constexpr, IN_KIND: tl.constexpr,
                        STOCHASTIC: tl.constexpr, IS_INT: tl.constexpr, MBITS: tl.constexpr,
                        EMIN: tl.constexpr, MAX_CODE: tl.constexpr, SIGN_BIT: tl.constexpr,
                        PACKED: tl.constexpr, RCEIL: tl.constexpr, EM: tl.constexpr,
                        FRAC_MAX: tl.constexpr, EMAX: tl.constexpr):
    """MX (E8M0 scale) quantization of NB blocks of BS elements per program."""
    blk = tl.program_id(0).to(tl.int64) * NB + tl.arange(0, NB)  # [NB]
    bmask = blk < n_blocks
    offs = blk[:, None] * BS + tl.arange(0, BS)[None, :]  # [NB, BS]
    bits = _load_bits(x_ptr, offs, bmask[:, None], IN_KIND)
    a = bits & 0x7FFFFFFF
    amax = tl.max(a, axis=1)  # [NB]; bit patterns of |x| order like values
    bad = amax >= 0x7F800000  # NaN/Inf in the block (then amax is never used)
    sig_a, ux_a = _split_mag(amax)
    if RCEIL:  # smallest e with amax <= max_elem * 2^e (frexp exponents + mantissa compare)
        e = ux_a + 1 - EM + ((sig_a & 0x7FFFFF) > FRAC_MAX).to(tl.int32)
    else:  # floor(log2 amax) - emax_elem
        e = ux_a - EMAX
    e = tl.minimum(tl.maximum(e, -127), 127)  # amax == 0 lands on -127 too
    sig, ux = _split_mag(a)
    rb = bits
    if STOCHASTIC:
        rb = tl.load(rb_ptr + offs, mask=bmask[:, None], other=0)
    mag = _round_mag(sig, ux - e[:, None], rb, IS_INT, MBITS, EMIN, MAX_CODE, STOCHASTIC)
    mag = tl.where(bad[:, None], 0, mag)
    neg = (bits < 0) & (~bad[:, None])
    _store_codes(codes_ptr, blk, bmask, mag, neg, NB, BS, IS_INT, SIGN_BIT, PACKED)
    tl.store(scales_ptr + blk, tl.where(bad, 255, e + 127).to(tl.uint8), mask=bmask)


@triton.jit
def _nv_quantize_kernel(x_ptr, rb_ptr, g_ptr, codes_ptr, scales_ptr, n_blocks,
                        BS: tl.constexpr, NB: tl.constexpr, IN_KIND: tl.constexpr,
                        STOCHASTIC: tl.constexpr, IS_INT: tl.constexpr, MBITS: tl.constexpr,
                        EMIN: tl.constexpr, MAX_CODE: tl.constexpr, SIGN_BIT: tl.constexpr,
                        PACKED: tl.constexpr, MAX_VALUE: tl.constexpr, RECIP: tl.constexpr = False):
    """NV two-level quantization: e4m3 block scale times the fp32 per-tensor scale g.

    Elements: v = x / d (exact division), or with RECIP (scale_mode "reciprocal") v = x * r,
    r = min(1 / d, FLT_MAX), d = g * s.
    """
    blk = tl.program_id(0).to(tl.int64) * NB + tl.arange(0, NB)  # [NB]
    bmask = blk < n_blocks
    offs = blk[:, None] * BS + tl.arange(0, BS)[None, :]  # [NB, BS]
    bits = _load_bits(x_ptr, offs, bmask[:, None], IN_KIND)
    a = bits & 0x7FFFFFFF
    amax = tl.max(a, axis=1)  # [NB]
    bad = amax >= 0x7F800000
    g = tl.load(g_ptr)
    # t = (amax / max_elem) / g: two IEEE divisions, in this order
    t = tl.math.div_rn(tl.math.div_rn(amax.to(tl.float32, bitcast=True),
                                      tl.full([NB], MAX_VALUE, tl.float32)), g)
    sig_t, ux_t = _split_mag(tl.minimum(t.to(tl.int32, bitcast=True), 0x7F800000))
    s_code = _round_mag(sig_t, ux_t, sig_t, False, 3, -6, 0x7E, False)  # e4m3 RNE, saturating
    s_code = tl.maximum(s_code, 1)  # smallest positive e4m3, 2^-9
    d = g * _fp_value(s_code, 3, 7)  # [NB] fp32 decode scale
    if RECIP:  # one IEEE division per block, then fp32 products (no FMA: enable_fp_fusion=False)
        r = tl.minimum(tl.math.div_rn(tl.full([NB], 1.0, tl.float32), d), 3.4028234663852886e38)
        v = bits.to(tl.float32, bitcast=True) * r[:, None]  # [NB, BS]
    else:
        v = tl.math.div_rn(bits.to(tl.float32, bitcast=True), d[:, None])  # [NB, BS]
    # |v| bits; NaN (only if d underflowed to 0) saturates like Inf
    va = tl.minimum(v.to(tl.int32, bitcast=True) & 0x7FFFFFFF, 0x7F800000)
    sig, ux = _split_mag(va)
    rb = bits
    if STOCHASTIC:
        rb = tl.load(rb_ptr + offs, mask=bmask[:, None], other=0)
    mag = _round_mag(sig, ux, rb, IS_INT, MBITS, EMIN, MAX_CODE, STOCHASTIC)
    mag = tl.where(bad[:, None], 0, mag)
    neg = (bits < 0) & (~bad[:, None])
    _store_codes(codes_ptr, blk, bmask, mag, neg, NB, BS, IS_INT, SIGN_BIT, PACKED)
    tl.store(scales_ptr + blk, tl.where(bad, 0x7F, s_code).to(tl.uint8), mask=bmask)


# ----------------------------------------------------------------------------- dequantize
@triton.jit
def _mx_dequantize_kernel(codes_ptr, scales_ptr, g_ptr, out_ptr, n_blocks,
                          BS: tl.constexpr, NB: tl.constexpr, IS_NV: tl.constexpr,
                          IS_INT: tl.constexpr, PACKED: tl.constexpr, MBITS: tl.constexpr,
                          BIAS: tl.constexpr, SIGN_BIT: tl.constexpr, FP8_KIND: tl.constexpr,
                          OUT_KIND: tl.constexpr, BF16_NAN: tl.constexpr):
    """codes [NB, BS] x per-block scale -> values; FP8_KIND 1 = e4m3fn, 2 = e5m2 specials.

    NaN payloads follow torch's decoders (c10 fp8 -> fp32 keeps the mantissa bits), so results
    match the reference bit for bit where the arithmetic propagates payloads (CPU).
    """
    blk = tl.program_id(0).to(tl.int64) * NB + tl.arange(0, NB)  # [NB]
    bmask = blk < n_blocks
    offs = blk[:, None] * BS + tl.arange(0, BS)[None, :]  # [NB, BS]
    if PACKED:
        b_offs = blk[:, None] * (BS // 2) + tl.arange(0, BS // 2)[None, :]
        b = tl.load(codes_ptr + b_offs, mask=bmask[:, None], other=0).to(tl.int32)  # [NB, BS/2]
        raw = tl.reshape(tl.join(b & 0xF, b >> 4), [NB, BS])
        if IS_INT:
            raw = tl.where(raw >= 8, raw - 16, raw)
    else:
        raw = tl.load(codes_ptr + offs, mask=bmask[:, None], other=0).to(tl.int32)
    if IS_INT:
        val = raw.to(tl.float32)
    else:
        mag = raw & ((1 << SIGN_BIT) - 1)
        sign = (raw >> SIGN_BIT) << 31  # raw < 2^(SIGN_BIT + 1): the sign bit alone is left
        val = _fp_value(mag, MBITS, BIAS, sign)
        if FP8_KIND == 1:  # S.1111.111 -> 0x7FF00000 with the sign
            val = tl.where(mag == 0x7F, (sign | 0x7FF00000).to(tl.float32, bitcast=True), val)
        if FP8_KIND == 2:  # exponent 31: Inf, or NaN with the mantissa kept and quieted
            m2 = mag & 3
            special = sign | 0x7F800000 | (m2 << 21) | tl.where(m2 != 0, 0x400000, 0)
            val = tl.where(mag >= 0x7C, special.to(tl.float32, bitcast=True), val)
    s = tl.load(scales_ptr + blk, mask=bmask, other=0).to(tl.int32)  # [NB] raw scale bytes
    if IS_NV:  # fp32 value * fp32(g * s)
        s_mag, s_sign = s & 0x7F, (s >> 7) << 31
        s_val = _fp_value(s_mag, 3, 7, s_sign)
        s_val = tl.where(s_mag == 0x7F, (s_sign | 0x7FF00000).to(tl.float32, bitcast=True), s_val)
        d = tl.load(g_ptr) * s_val
        out = val * d[:, None]
    else:  # value * 2^(s - 127): one fp32 rounding; 2^-127 is the subnormal 0x00400000
        p = tl.where(s == 0, 0x400000, s << 23).to(tl.float32, bitcast=True)
        out = val * p[:, None]
        nan2 = tl.full([NB, BS], 0x7FC00000, tl.int32).to(tl.float32, bitcast=True)
        out = tl.where((s == 255)[:, None], nan2, out)
    _store_f32(out_ptr, offs, out, bmask[:, None], OUT_KIND, BF16_NAN)


# ----------------------------------------------------------------------------- configs
def _fp32_frac(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0] & 0x7FFFFF


def input_kind(dtype: torch.dtype) -> int:
    if dtype not in _KINDS:
        raise ValueError(f"x: expected dtype float32, bfloat16 or float16, got {dtype}")
    return _KINDS[dtype]


output_kind = input_kind


# Interpreter (CPU tensors): programs run one after another and each op costs a fixed ~0.2 ms of type checks
# whatever its width, so 8x the elements per program take ~1/8 the time on large inputs (the kernels are generic
# in NB; GPU code generation keeps TILE and is checked ahead of time, tests/test_triton_aot.py).
INTERP_TILE_SCALE = 8


def _blocks_per_program(block_size: int, n_blocks: int | None, device_type: str, tile: int = TILE) -> int:
    nb = max(1, tile * (INTERP_TILE_SCALE if device_type == "cpu" else 1) // block_size)
    if n_blocks is not None and device_type == "cpu":
        # interpreter: don't run mostly-masked tiles on small inputs (on a GPU one NB per
        # format avoids a recompilation per input size)
        nb = min(nb, triton.next_power_of_2(max(n_blocks, 1)))
    return nb


@functools.lru_cache(maxsize=None)
def _element_constexprs(fmt: str) -> dict:
    f = get_format(fmt)
    el = f.element
    return dict(IS_INT=el.is_int, MBITS=el.mbits, EMIN=el.emin, MAX_CODE=el.max_code,
                SIGN_BIT=el.sign_bit, PACKED=el.packed)


def quantize_config(fmt: str, block_size: int, scale_mode: str, in_dtype: torch.dtype,
                    stochastic: bool, n_blocks: int | None = None, device_type: str = "cuda"):
    """(kernel, constexprs, num_warps) of the quantize launch; also used by :mod:`.aot`."""
    f = get_format(fmt)
    el = f.element
    ce = dict(BS=block_size, NB=_blocks_per_program(block_size, n_blocks, device_type),
              IN_KIND=input_kind(in_dtype), STOCHASTIC=bool(stochastic), **_element_constexprs(f.name))
    if scale_mode not in ("rceil", "floor", "reciprocal"):
        raise ValueError(f"scale_mode: expected 'rceil', 'floor' or 'reciprocal', got {scale_mode!r}")
    if f.is_nv:
        return _nv_quantize_kernel, dict(ce, MAX_VALUE=float(el.max_value), RECIP=scale_mode == "reciprocal"), NUM_WARPS
    if scale_mode == "reciprocal":
        raise ValueError(f"scale_mode: 'reciprocal' is only for NV formats, got fmt={f.name!r}")
    ce.update(RCEIL=scale_mode == "rceil", EM=math.frexp(el.max_value)[1],
              FRAC_MAX=_fp32_frac(el.max_value), EMAX=el.emax)
    return _mx_quantize_kernel, ce, NUM_WARPS


def bf16_nan_bits(device_type: str) -> int:
    """The bf16 NaN torch itself produces on ``device_type`` (CPU: 0xFFFF, CUDA: 0x7FFF), as int16."""
    return -1 if device_type == "cpu" else 0x7FFF


def dequantize_config(fmt: str, block_size: int, out_dtype: torch.dtype, n_blocks: int | None = None,
                      device_type: str = "cuda"):
    """(kernel, constexprs, num_warps) of the dequantize launch; also used by :mod:`.aot`."""
    f = get_format(fmt)
    el = f.element
    fp8_kind = {"fp8_e4m3": 1, "fp8_e5m2": 2}.get(el.name, 0)
    # packed codes: twice the elements so each thread still reads 16 code bytes (one 128-bit load)
    nb = _blocks_per_program(block_size, n_blocks, device_type, TILE * (2 if el.packed else 1))
    ce = dict(BS=block_size, NB=nb, IS_NV=f.is_nv,
              IS_INT=el.is_int, PACKED=el.packed, MBITS=el.mbits, BIAS=el.bias,
              SIGN_BIT=el.sign_bit, FP8_KIND=fp8_kind, OUT_KIND=output_kind(out_dtype),
              BF16_NAN=bf16_nan_bits(device_type))
    return _mx_dequantize_kernel, ce, NUM_WARPS


# Exact IEEE op order on GPUs: no FMA contraction, no flush-to-zero in libdevice (div_rn).
GPU_COMPILE_OPTIONS = dict(enable_fp_fusion=False, enable_reflect_ftz=False)


def compile_options(device: torch.device) -> dict:
    """Launch options: :data:`GPU_COMPILE_OPTIONS` on CUDA, none under the interpreter."""
    return dict(GPU_COMPILE_OPTIONS) if device.type == "cuda" else {}


def _int_view(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> int32 view, bf16 -> int16 view (kernels read bits), fp16 unchanged."""
    if x.dtype == torch.float32:
        return x.view(torch.int32)
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16)
    return x


# ----------------------------------------------------------------------------- launchers
# Launchers create no tensor from host values and never synchronise (no .item(), no host reads of
# device data, no cross-device copies), so every op can be captured in a CUDA graph;
# tests/test_launchers_graph_safe.py enforces it.
def _check_same_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    """A tensor argument on another device is an error, not a silent (host-to-device) copy."""
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of x), got {t.device}")


def mx_quantize_triton(
    x: torch.Tensor,
    fmt: str,
    block_size: int,
    scale_mode: str = "rceil",
    rand_bits: torch.Tensor | None = None,
    global_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x`` to a block format; same contract as :func:`leankern.mx.ref.mx_quantize_ref`.

    Shape: x ``[..., K]`` (``K % block_size == 0``), rand_bits int32 ``[..., K]`` or None ->
    codes ``[..., K]`` (``[..., K // 2]`` uint8 for 4-bit elements), scales
    ``[..., K // block_size]`` (uint8 E8M0 or float8_e4m3fn), global_scale fp32 ``[]``.
    """
    f = get_format(fmt)
    el = f.element
    x = x.contiguous()
    lead, K = tuple(x.shape[:-1]), x.shape[-1]
    n_blocks = x.numel() // block_size
    codes = torch.empty(*lead, K // 2 if el.packed else K, dtype=torch.uint8, device=x.device)
    scales = torch.empty(*lead, K // block_size, dtype=torch.uint8, device=x.device)
    if f.is_nv:
        if global_scale is None:
            g = nv_global_scale(x, el)
        else:
            _check_same_device("global_scale", global_scale, x.device)
            g = global_scale.to(torch.float32).reshape(()).clone()  # the output never aliases the input
    else:
        g = torch.ones((), dtype=torch.float32, device=x.device)
    if n_blocks:
        kernel, ce, num_warps = quantize_config(f.name, block_size, scale_mode, x.dtype,
                                                rand_bits is not None, n_blocks, x.device.type)
        if rand_bits is not None:
            _check_same_device("rand_bits", rand_bits, x.device)
        rb = codes if rand_bits is None else rand_bits.contiguous().view(torch.int32)  # dummy when RNE
        grid = (triton.cdiv(n_blocks, ce["NB"]),)
        args = (_int_view(x), rb, g, codes, scales, n_blocks) if f.is_nv else (_int_view(x), rb, codes, scales, n_blocks)
        kernel[grid](*args, **ce, num_warps=num_warps, **compile_options(x.device))
    if f.code_dtype != torch.uint8:
        codes = codes.view(f.code_dtype)
    return codes, scales.view(f.scale_dtype), g


def code_view(codes: torch.Tensor, fmt: str) -> torch.Tensor:
    """Signed bytes for INT8/INT6 codes (sign-extended in the kernels), raw bytes otherwise: the codes' own dtype
    does not decide it (INT8 codes arriving as raw uint8 bytes are still signed)."""
    el = get_format(fmt).element
    return codes.view(torch.int8) if el.is_int and not el.packed else codes.view(torch.uint8)


def mx_dequantize_triton(
    codes: torch.Tensor,
    scales: torch.Tensor,
    global_scale: torch.Tensor,
    fmt: str,
    block_size: int,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dequantize; same contract as :func:`leankern.mx.ref.mx_dequantize_ref`.

    Shape: codes ``[..., K]`` (``[..., K // 2]`` packed), scales ``[..., K // block_size]``,
    global_scale fp32 ``[]`` -> ``[..., K]`` in ``out_dtype``.
    """
    f = get_format(fmt)
    codes = codes.contiguous()
    lead = tuple(codes.shape[:-1])
    K = codes.shape[-1] * (2 if f.element.packed else 1)
    out = torch.empty(*lead, K, dtype=out_dtype, device=codes.device)
    n_blocks = out.numel() // block_size
    if n_blocks:
        kernel, ce, num_warps = dequantize_config(f.name, block_size, out_dtype, n_blocks, codes.device.type)
        raw = code_view(codes, f.name)
        s = scales.contiguous().view(torch.uint8)
        _check_same_device("global_scale", global_scale, codes.device)
        g = global_scale.to(torch.float32).reshape(())
        out_view = out.view(torch.int16) if out_dtype == torch.bfloat16 else out
        grid = (triton.cdiv(n_blocks, ce["NB"]),)
        kernel[grid](raw, s, g, out_view, n_blocks, **ce, num_warps=num_warps,
                     **compile_options(codes.device))
    return out
