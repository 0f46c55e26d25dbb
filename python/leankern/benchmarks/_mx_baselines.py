"""What a user would write instead of leankern's MX ops: straightforward vectorised PyTorch.

The MX bench (:mod:`leankern.benchmarks.mx`) times these as the ``torch`` contender next to ours
and the reference, on the same inputs, after checking them: quantizers by their QSNR against
ours, the Hadamard transform against the reference (a different summation order, so within a
rounding tolerance, not bit-exact).
"""
from __future__ import annotations

import torch

from ..mx.formats import get_format
from ..mx.ref import element_values

__all__ = ["torch_quantize", "torch_dequantize", "torch_hadamard", "hadamard_matrix", "DENSE_HADAMARD_MAX"]

DENSE_HADAMARD_MAX = 256  # up to this chunk size the baseline is one GEMM with the dense matrix


def _grid_midpoints(el):
    vals = element_values(el).to(torch.float32)
    return (vals[1:] + vals[:-1]) / 2  # [max_code]


def torch_quantize(x: torch.Tensor, fmt: str, block_size: int | None = None, global_scale=None):
    """Straightforward vectorised PyTorch quantizer (RCEIL / two-level), the user's alternative.

    Not bit-exact with the reference (no NaN-block policy; FP4/FP6 ties go one way via
    ``bucketize``). Shape: ``[..., K]`` -> codes, scales ``[..., K/bs]``, global scale ``[]``.
    """
    f = get_format(fmt)
    el, bs = f.element, block_size or f.default_block_size
    lead, K = x.shape[:-1], x.shape[-1]
    xb = x.float().reshape(*lead, K // bs, bs)  # [..., nb, bs]
    amax = xb.abs().amax(-1, keepdim=True)  # [..., nb, 1]
    if f.is_nv:
        g = amax.max() / (448.0 * el.max_value) if global_scale is None else global_scale
        g = torch.where(g == 0, torch.ones_like(g), g)
        s = (amax / el.max_value / g).clamp(2.0**-9, 448.0).to(torch.float8_e4m3fn)
        v = xb / (g * s.float())
        scales = s.squeeze(-1)
    else:
        e = torch.ceil(torch.log2(amax / el.max_value)).clamp(-127, 127)
        v = xb * torch.exp2(-e)
        scales = (e + 127).to(torch.uint8).squeeze(-1)
        g = torch.ones((), device=x.device)
    if f.code_dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return v.to(f.code_dtype).reshape(*lead, K), scales, g
    if el.is_int:
        q = torch.round(v).clamp(-el.max_code, el.max_code).to(torch.int8)
    else:
        mag = torch.bucketize(v.abs(), _grid_midpoints(el).to(x.device)).to(torch.uint8)
        q = mag | (torch.signbit(v).to(torch.uint8) << el.sign_bit)
    q = q.reshape(*lead, K)
    if el.packed:
        q = q.view(torch.uint8) & 0xF
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return q, scales, g


def torch_dequantize(codes, scales, global_scale, fmt: str, block_size: int | None = None, dtype=torch.float32):
    """Straightforward vectorised PyTorch dequantizer. Shape: codes ``[..., K or K/2]`` -> ``[..., K]``."""
    f = get_format(fmt)
    el, bs = f.element, block_size or f.default_block_size
    if f.code_dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        vals = codes.float()
    else:
        raw = codes
        if el.packed:
            b = codes.view(torch.uint8)
            raw = torch.stack([b & 0xF, b >> 4], dim=-1).flatten(-2)  # [..., K]
        if el.is_int:
            vals = raw.to(torch.int8).float()
            if el.packed:
                vals = torch.where(vals >= 8, vals - 16, vals)
        else:
            lut = element_values(el).to(torch.float32)
            lut = torch.cat([lut, torch.zeros((1 << el.sign_bit) - lut.numel())])
            lut = torch.cat([lut, -lut]).to(codes.device)  # sign bit set -> negative
            vals = lut[raw.long()]
    lead, K = vals.shape[:-1], vals.shape[-1]
    vals = vals.reshape(*lead, K // bs, bs)
    d = global_scale.float() * scales.float() if f.is_nv else torch.exp2(scales.float() - 127)
    return (vals * d.unsqueeze(-1)).reshape(*lead, K).to(dtype)


def hadamard_matrix(n: int, scale: float = 1.0, signs: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Dense Sylvester ``H_n * scale * diag(signs)`` (fp32 ``[n, n]``): what ``x @ H`` needs, built once."""
    h = torch.ones(1, 1, dtype=torch.float32, device=device)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    h = h * scale
    return h * signs.to(h.device)[None, :] if signs is not None else h


def torch_hadamard(x: torch.Tensor, n: int, scale: float, signs: torch.Tensor | None = None,
                   dense: torch.Tensor | None = None) -> torch.Tensor:
    """Hadamard transform over ``n``-chunks of the last dim in plain PyTorch (fp32 math).

    With ``dense`` (from :func:`hadamard_matrix`): one GEMM ``x_chunks @ dense``, what most code
    does for small ``n``. Otherwise the O(n log n) butterfly as ``log2(n)`` vectorised passes.
    Shape: x ``[..., K]`` -> ``[..., K]`` (dtype of x).
    """
    lead, K = x.shape[:-1], x.shape[-1]
    y = x.float().reshape(-1, n)  # [rows * K / n, n]
    if dense is not None:
        return (y @ dense).reshape(*lead, K).to(x.dtype)
    h = 1
    while h < n:
        v = y.view(-1, n // (2 * h), 2, h)
        y = torch.stack((v[:, :, 0] + v[:, :, 1], v[:, :, 0] - v[:, :, 1]), dim=2).view(-1, n)
        h *= 2
    post = scale if signs is None else signs.to(torch.float32) * scale
    return (y * post).reshape(*lead, K).to(x.dtype)
