"""Pure-PyTorch reference for the MX / NV block formats: the definition of the numerics.

Readable float64 math, no speed tricks. Every backend (C++, Triton, CUDA) must reproduce these
codes and scale bytes bit-exactly. ``docs/numerics.md`` states the same rules in prose.

Conventions (``x`` is ``[..., K]``, blocks of ``block_size`` along the last dim, ``K % block_size == 0``):

* codes: ``[..., K]`` (FP8 as float8 dtypes, INT8/INT6 as int8, FP6 as uint8 sign-magnitude with
  the sign in bit 5) or ``[..., K // 2]`` uint8 for 4-bit elements (element 2i in the low nibble;
  FP4 sign-magnitude, INT4 two's complement).
* scales: ``[..., K // block_size]``; uint8 E8M0 bytes for MX (value 2^(byte-127), 0xFF = NaN),
  float8_e4m3fn for NV.
* global_scale: fp32 scalar tensor ``[]``: the NV per-tensor decode scale g (1.0 for MX).

Element rounding: the magnitude is first clamped to the element's max (saturation, so finite
input never gives Inf), then rounded to the element grid: ties-to-even by default, or stochastic
with one uint32 random word per element (``rand_bits``, an int32 tensor shaped like ``x``):
with t = |v| / quantum, r = floor((floor(t * 2^32) + rand) / 2^32). The sign is kept for FP
codes also when the magnitude rounds to zero (-0 -> sign bit set); INT codes have no -0.
A block holding NaN or Inf gets the NaN scale (MX 0xFF, NV 0x7F) and all-zero codes, so it
dequantizes to NaN everywhere. An all-zero MX block gets scale byte 0 and zero codes.
"""
from __future__ import annotations

import math

import torch

from .._pow2 import ldexp_exact
from .formats import BlockFormat, ElementType, get_format

__all__ = [
    "mx_quantize_ref",
    "mx_dequantize_ref",
    "hadamard_transform_ref",
    "mx_linear_ref",
    "round_to_element",
    "element_values",
    "mx_scale_exponent",
    "nv_global_scale",
]

E8M0_NAN = 0xFF
E4M3_NAN = 0x7F
E4M3_MIN_SUBNORMAL = 2.0**-9
FP32_MAX = 3.4028234663852886e38


def element_values(el: ElementType, device=None) -> torch.Tensor:
    """float64 values of the magnitude codes 0..max_code, increasing. Shape: ``[max_code + 1]``."""
    return torch.tensor([el.code_value(c) for c in range(el.max_code + 1)], dtype=torch.float64, device=device)


def round_to_element(v: torch.Tensor, el: ElementType, rand_bits: torch.Tensor | None = None) -> torch.Tensor:
    """Round non-negative finite float64 magnitudes ``v`` to ``el``'s grid; return magnitude codes (int64).

    Saturating: ``v`` above the element max gives ``max_code``. ``rand_bits`` (int32, same shape)
    selects stochastic rounding.
    """
    v = torch.clamp(v, max=el.max_value)
    if el.is_int:
        quantum_exp = torch.zeros_like(v, dtype=torch.int64)
    else:
        _, e = torch.frexp(v)  # v = m * 2^e, m in [0.5, 1): floor(log2 v) = e - 1
        quantum_exp = torch.clamp(e.to(torch.int64) - 1, min=el.emin) - el.mbits
    t = ldexp_exact(v, -quantum_exp)  # exact: power-of-two scaling
    if rand_bits is None:
        r = torch.round(t)  # half to even
    else:
        t_fixed = torch.floor(t * 2.0**32).to(torch.int64)  # exact: power-of-two scaling
        rand = rand_bits.to(torch.int64) & 0xFFFFFFFF
        r = ((t_fixed + rand) >> 32).to(torch.float64)
    value = ldexp_exact(r, quantum_exp)
    if el.is_int:
        return value.to(torch.int64)
    return torch.searchsorted(element_values(el, v.device), value)  # exact hit: value is on the grid


def mx_scale_exponent(amax: torch.Tensor, el: ElementType, scale_mode: str) -> torch.Tensor:
    """Unclamped E8M0 exponent per block from fp32 block maxima (exact, via frexp).

    rceil: smallest e with amax <= max_elem * 2^e. floor: floor(log2 amax) - emax_elem.
    """
    m_a, e_a = torch.frexp(amax.to(torch.float64))
    e_a = e_a.to(torch.int64)
    if scale_mode == "rceil":
        m_m, e_m = math.frexp(el.max_value)
        return e_a - e_m + (m_a > m_m).to(torch.int64)
    if scale_mode == "floor":
        return (e_a - 1) - el.emax
    raise ValueError(f"scale_mode: expected 'rceil' or 'floor', got {scale_mode!r}")


def _encode_codes(mag: torch.Tensor, negative: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    """Sign + magnitude codes (int64) -> stored code tensor (packed for 4-bit)."""
    el = fmt.element
    if el.is_int:
        code = torch.where(negative, -mag, mag)
        byte = code & ((1 << el.bits) - 1) if el.packed else code
    else:
        byte = mag | (negative.to(torch.int64) << el.sign_bit)
    if el.packed:
        byte = byte[..., 0::2] | (byte[..., 1::2] << 4)
        return byte.to(torch.uint8)
    if fmt.code_dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return byte.to(torch.uint8).view(fmt.code_dtype)
    return byte.to(fmt.code_dtype)


NV_MIN_GLOBAL_SCALE = 2.0**-126  # smallest normal fp32: keeps d = g * s (s >= 2^-9) non-zero


def nv_global_scale(x: torch.Tensor, el: ElementType) -> torch.Tensor:
    """g = amax(finite |x|) / (448 * max_elem) in fp32; 1.0 if that is 0, raised to 2^-126 if below.

    The floor only touches tensors with amax < ~1e-35, where g * s would underflow to 0.
    """
    x32 = x.to(torch.float32)
    finite_abs = torch.where(torch.isfinite(x32), x32.abs(), torch.zeros_like(x32))
    amax = finite_abs.amax() if finite_abs.numel() else torch.zeros((), dtype=torch.float32, device=x.device)
    # a device-side constant (no host-to-device copy) and a true division (CUDA turns `t / python_float`
    # into a multiplication by the reciprocal, which rounds differently)
    g = amax / torch.full((), 448.0 * el.max_value, dtype=torch.float32, device=x.device)
    g = torch.clamp(g, min=NV_MIN_GLOBAL_SCALE)
    return torch.where(amax == 0, torch.ones_like(g), g)


def mx_quantize_ref(
    x: torch.Tensor,
    fmt: str,
    block_size: int,
    scale_mode: str = "rceil",
    rand_bits: torch.Tensor | None = None,
    global_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x`` [..., K] to a block format. Returns ``(codes, scales, global_scale)``.

    See the module docstring for layouts. MX formats: ``scale_mode`` "rceil" / "floor" picks the
    E8M0 exponent. NV formats use the two-level scale (``global_scale`` given: static g; else g
    from the tensor's amax), block scale s and decode scale d = fp32(g * s); the elements are
    v = fp32(x / d) ("rceil", "floor": the exact division) or, with ``scale_mode="reciprocal"``
    (NV only), v = fp32(x * r) with r = min(fp32(1 / d), FLT_MAX), the GPU quantizers' form.
    """
    f = get_format(fmt)
    el = f.element
    if scale_mode == "reciprocal" and not f.is_nv:
        raise ValueError("scale_mode: 'reciprocal' is only for NV formats (it replaces the division by the NV "
                         "decode scale g * s; MX scales are powers of two, where dividing is already exact), "
                         f"got fmt={f.name!r}")
    lead, K = x.shape[:-1], x.shape[-1]
    x32 = x.to(torch.float32).reshape(*lead, K // block_size, block_size)  # [..., nb, bs]
    bad_block = ~torch.isfinite(x32).all(dim=-1)  # [..., nb]
    absx = torch.where(torch.isfinite(x32), x32.abs(), torch.zeros_like(x32))
    amax = absx.amax(dim=-1)  # [..., nb]
    negative = torch.signbit(x32)
    rb = None if rand_bits is None else rand_bits.reshape(x32.shape)
    if f.is_nv:
        g = nv_global_scale(x32, el) if global_scale is None else global_scale.to(torch.float32).reshape(())
        t = (amax / torch.tensor(el.max_value, dtype=torch.float32, device=x.device)) / g  # fp32, two IEEE divisions
        e4m3 = get_format("mxfp8_e4m3").element
        s_code = round_to_element(t.to(torch.float64).nan_to_num(posinf=math.inf), e4m3)
        s_code = torch.clamp(s_code, min=1)  # smallest positive e4m3 (2^-9)
        s_val = element_values(e4m3, x.device)[s_code].to(torch.float32)
        d = g * s_val  # fp32 decode scale per block
        if scale_mode == "reciprocal":  # r = min(1 / d, FLT_MAX) (d >= 2^-135 > 0), then one fp32 product
            r = torch.clamp(torch.ones_like(d) / d, max=FP32_MAX)
            v = (x32 * r.unsqueeze(-1)).to(torch.float64).abs()
        else:
            v = (x32 / d.unsqueeze(-1)).to(torch.float64).abs()
        v = torch.where(bad_block.unsqueeze(-1), torch.zeros_like(v), v)
        mag = round_to_element(v, el, rb)
        scale_bytes = torch.where(bad_block, E4M3_NAN, s_code).to(torch.uint8).view(torch.float8_e4m3fn)
        g_out = g.clone()
    else:
        e = torch.clamp(mx_scale_exponent(amax, el, scale_mode), -127, 127)
        e = torch.where(amax == 0, torch.full_like(e, -127), e)
        v = ldexp_exact(absx.to(torch.float64), -e.unsqueeze(-1))
        mag = round_to_element(v, el, rb)
        scale_bytes = torch.where(bad_block, E8M0_NAN, e + 127).to(torch.uint8)
        g_out = torch.ones((), dtype=torch.float32, device=x.device)
    mag = torch.where(bad_block.unsqueeze(-1), torch.zeros_like(mag), mag)
    negative = negative & ~bad_block.unsqueeze(-1)
    codes = _encode_codes(mag.reshape(*lead, K), negative.reshape(*lead, K), f)
    return codes, scale_bytes, g_out


def _decode_codes(codes: torch.Tensor, fmt: BlockFormat) -> torch.Tensor:
    """Stored codes -> element values (float64, ``[..., K]``), NaN/Inf for FP8 special codes."""
    el = fmt.element
    if el.packed:
        b = codes.view(torch.uint8).to(torch.int64)
        raw = torch.stack([b & 0xF, b >> 4], dim=-1).flatten(-2)
    elif fmt.code_dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return codes.to(torch.float64)  # torch's own fp8 decode: an independent oracle
    else:
        raw = codes.to(torch.int64)
    if el.is_int:
        if el.packed:
            raw = torch.where(raw >= 8, raw - 16, raw)
        return raw.to(torch.float64)
    sign_mask = 1 << el.sign_bit
    mag = raw & (sign_mask - 1)
    table = torch.tensor([el.code_value(c) for c in range(sign_mask)], dtype=torch.float64, device=codes.device)
    val = table[mag]
    return torch.where((raw & sign_mask) != 0, -val, val)


def mx_dequantize_ref(
    codes: torch.Tensor,
    scales: torch.Tensor,
    global_scale: torch.Tensor,
    fmt: str,
    block_size: int,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dequantize to ``[..., K]`` in ``out_dtype``.

    MX: value * 2^(scale_byte - 127) (exact in fp32), NaN where the scale byte is 0xFF.
    NV: fp32 value * fp32(g * s_b), NaN where the block scale is NaN. Then RNE to ``out_dtype``.
    """
    f = get_format(fmt)
    codes, scales = codes.view(f.code_dtype), scales.view(f.scale_dtype)  # raw uint8 bytes are accepted too
    vals = _decode_codes(codes, f)  # [..., K] float64
    lead, K = vals.shape[:-1], vals.shape[-1]
    vals = vals.reshape(*lead, K // block_size, block_size)
    if f.is_nv:
        d = global_scale.to(torch.float32).reshape(()) * scales.to(torch.float32)  # [..., nb] fp32
        out = vals.to(torch.float32) * d.unsqueeze(-1)
    else:
        s = scales.view(torch.uint8).to(torch.int64)
        out = ldexp_exact(vals, (s - 127).unsqueeze(-1))
        out = torch.where((s == E8M0_NAN).unsqueeze(-1), torch.full_like(out, math.nan), out)
        out = out.to(torch.float32)
    return out.reshape(*lead, K).to(out_dtype)


def hadamard_transform_ref(
    x: torch.Tensor, chunk_size: int, scale: float, signs: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalised fast Walsh-Hadamard transform over each ``chunk_size`` chunk of the last dim.

    y = (x_chunk @ H_n) * fp32(scale) * signs, in fp32, with the butterfly order
    h = 1, 2, 4, ..., n/2 (pairs (i, i+h)); output in ``x.dtype``. ``signs`` ([n], +-1) turns it
    into the random Hadamard rotation x -> x H D / sqrt(n) when scale = 1/sqrt(n).
    Shape: x ``[..., K]`` with ``K % chunk_size == 0`` -> ``[..., K]``.
    """
    lead, K = x.shape[:-1], x.shape[-1]
    y = x.to(torch.float32).reshape(-1, chunk_size)  # [R, n]
    h = 1
    while h < chunk_size:
        pairs = y.reshape(-1, chunk_size // (2 * h), 2, h)
        a, b = pairs[:, :, 0, :], pairs[:, :, 1, :]
        y = torch.stack([a + b, a - b], dim=2).reshape(-1, chunk_size)
        h *= 2
    y = y * torch.tensor(scale, dtype=torch.float32, device=x.device)
    if signs is not None:
        y = y * signs.to(torch.float32)
    return y.reshape(*lead, K).to(x.dtype)


def mx_linear_ref(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    global_scale: torch.Tensor,
    fmt: str,
    block_size: int,
    bias: torch.Tensor | None = None,
    act_fmt: str | None = None,
) -> torch.Tensor:
    """Block-quantized linear ``y = x_hat @ W_hat^T + bias`` in fp32, returned in ``x.dtype``.

    ``W_hat`` is the fp32 dequantization of the weight (``codes [N, K or K/2]``, ``scales
    [N, K / block_size]``, ``global_scale []``; exact: every decoded weight is an fp32 value).
    ``x_hat`` is ``x`` in fp32 (exact for bf16/fp16/fp32) for weight-only, or, with ``act_fmt``,
    the fp32 dequantization of ``x`` quantized per ``block_size`` block to ``act_fmt`` (RCEIL
    scales, NV: dynamic per-tensor scale of this x) -- the only place x is rounded.
    Kernels may sum in any order with fp32 accumulation (see tests/tolerances.py for the bound).

    Shape: x ``[..., K]``, bias ``[N]`` -> ``[..., N]``.
    """
    K = x.shape[-1]
    w_hat = mx_dequantize_ref(codes, scales, global_scale, fmt, block_size, torch.float32)  # [N, K]
    if act_fmt is None:
        x_hat = x.to(torch.float32)
    else:
        q = mx_quantize_ref(x.contiguous(), act_fmt, block_size, "rceil", None, None)
        x_hat = mx_dequantize_ref(*q, act_fmt, block_size, torch.float32)
    y = x_hat.reshape(x.shape[:-1].numel(), K) @ w_hat.T  # [M, N] fp32 (M explicit: K may be 0; then y = 0)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.reshape(*x.shape[:-1], w_hat.shape[0]).to(x.dtype)
