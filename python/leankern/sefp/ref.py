"""Reference SEFP (shared-exponent FP with truncated mantissas): the definition of the numerics.

Format (OTARo, arXiv 2511.13147; docs/sefp.md, "Format"), weights ``w [N, K]``, blocks of ``G`` consecutive
elements along K:

1. ``e_i = max(exponent field of fp32(w_i), 1) - 127``: floor(log2|w_i|) for normal values; fp32
   subnormals count as -126 (their field is 0, their scale 2^-126). Zeros are ignored.
2. ``E = max_i e_i`` (int8, in [-126, 127]); a block of zeros stores ``E = EMPTY = -128``.
3. ``q_i = floor(|w_i| * 2^(m_max - 1 - E))`` in ``[0, 2^m_max - 1]`` (truncation toward zero,
   never overflows), sign stored separately.
4. At width ``m <= m_max``: ``q' = q >> (m_max - m)`` (= quantizing at m: nesting) and
   ``w_hat = (-1)^s * q' * 2^(E - (m - 1))``.

Storage (bit planes): ``planes int32 [1 + m_max, N, Kw]`` (``Kw = Kp / 32``, ``Kp`` = K rounded up
to a multiple of G, zero padded): plane 0 = the sign bits, plane ``i`` = bit ``m_max - i`` of q (MSB
first); bit ``j`` of word ``w`` is element ``32 w + j``. Reading the first ``1 + m`` planes is the
m-bit truncation. ``exponents int8 [N, Kp / G]``.

Everything here is exact: integer bit operations and float64 scaling by powers of two.
"""
from __future__ import annotations

import torch

from .._pow2 import ldexp_exact

__all__ = ["EMPTY", "MAX_M", "BLOCK_SIZES", "WORD", "padded_k", "block_exponents", "quantize_ref", "magnitudes",
           "dequantize_ref", "linear_ref"]

EMPTY = -128  # exponent of an all-zero block
MAX_M = 16  # mantissa planes; q < 2^16 stays exact in fp32 (the C++ kernels decode to fp32)
BLOCK_SIZES = (32, 64, 128, 256)  # a block is whole 32-bit plane words
WORD = 32  # weights per plane word


def padded_k(K: int, block_size: int) -> int:
    """K rounded up to a multiple of the block size (the stored, zero-padded width)."""
    return -(-K // block_size) * block_size


def _pad_k(w: torch.Tensor, block_size: int) -> torch.Tensor:
    K = w.shape[-1]
    Kp = padded_k(K, block_size)
    return w if Kp == K else torch.nn.functional.pad(w, (0, Kp - K))


def block_exponents(w32: torch.Tensor, block_size: int) -> torch.Tensor:
    """Shared exponents ``int64 [N, Kp / G]`` of fp32 ``w32 [N, Kp]`` (EMPTY for all-zero blocks)."""
    bits = w32.view(torch.int32).to(torch.int64)
    field = (bits >> 23) & 0xFF
    e = torch.where((bits & 0x7FFFFFFF) == 0, torch.full_like(field, EMPTY), field.clamp(min=1) - 127)
    return e.reshape(*w32.shape[:-1], w32.shape[-1] // block_size, block_size).amax(dim=-1)  # sizes explicit: N may be 0


def magnitudes(w32: torch.Tensor, E: torch.Tensor, m_max: int, block_size: int) -> torch.Tensor:
    """``q int64 [N, Kp]``: floor(|w| * 2^(m_max - 1 - E)) per block (0 in EMPTY blocks)."""
    a = w32.abs().to(torch.float64).reshape(*E.shape, block_size)
    shift = (m_max - 1 - E.clamp(min=-126)).to(torch.float64).unsqueeze(-1)
    q = torch.floor(ldexp_exact(a, shift)).to(torch.int64)  # exact: power-of-two scaling in float64
    return q.reshape(w32.shape)


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """0/1 ``int64 [..., Kp]`` -> ``int32 [..., Kp / 32]`` (bit j of word w = element 32 w + j)."""
    b = bits.reshape(*bits.shape[:-1], bits.shape[-1] // WORD, WORD)
    weights = torch.ones(WORD, dtype=torch.int64, device=bits.device) << torch.arange(WORD, device=bits.device)
    words = (b * weights).sum(dim=-1)  # [..., Kw] in [0, 2^32)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_bits(words: torch.Tensor) -> torch.Tensor:
    """``int32 [..., Kw]`` -> 0/1 ``int64 [..., Kw * 32]``."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(WORD, device=words.device)
    return ((w.unsqueeze(-1) >> shifts) & 1).flatten(-2)


def quantize_ref(w: torch.Tensor, m_max: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [N, K]`` float -> ``(planes int32 [1 + m_max, N, Kw], exponents int8 [N, Kp / G])``.

    Raises ValueError on NaN/Inf (SEFP has no code for them).
    """
    w32 = w.to(torch.float32)
    if not bool(torch.isfinite(w32).all()):
        bad = (~torch.isfinite(w32)).nonzero()[0].tolist()
        raise ValueError(f"w: expected finite values (SEFP has no NaN/Inf code), got {w32[tuple(bad)].item()} "
                         f"at index {tuple(bad)}")
    w32 = _pad_k(w32, block_size)
    E = block_exponents(w32, block_size)  # [N, nb]
    q = magnitudes(w32, E, m_max, block_size)  # [N, Kp]
    sign = (w32.view(torch.int32) < 0).to(torch.int64)  # -0.0 keeps its sign bit; its q is 0
    planes = [_pack_bits(sign)] + [_pack_bits((q >> b) & 1) for b in range(m_max - 1, -1, -1)]
    return torch.stack(planes), E.to(torch.int8)


def signed_values(planes: torch.Tensor, exponents: torch.Tensor, m: int, block_size: int) -> torch.Tensor:
    """``float64 [N, Kp]``: (-1)^s q' 2^(E - (m - 1)) from the first ``1 + m`` planes."""
    q = torch.zeros(planes.shape[1:-1] + (planes.shape[-1] * WORD,), dtype=torch.int64, device=planes.device)
    for i in range(1, m + 1):  # MSB first: Horner
        q = (q << 1) | _unpack_bits(planes[i])
    v = q.to(torch.float64)
    v = torch.where(_unpack_bits(planes[0]) != 0, -v, v)
    E = exponents.to(torch.int64)
    scale_exp = torch.where(E == EMPTY, torch.zeros_like(E), E - (m - 1)).to(torch.float64)
    v = ldexp_exact(v.reshape(*E.shape, block_size), scale_exp.unsqueeze(-1))
    return v.reshape(q.shape)


def dequantize_ref(planes: torch.Tensor, exponents: torch.Tensor, m: int, block_size: int, K: int,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """``[N, K]`` in ``out_dtype``: the m-bit truncation, exact in fp32 (one RNE to bf16 / fp16)."""
    return signed_values(planes, exponents, m, block_size)[..., :K].to(torch.float32).to(out_dtype)


def linear_ref(x: torch.Tensor, planes: torch.Tensor, exponents: torch.Tensor, m: int, block_size: int,
               bias: torch.Tensor | None) -> torch.Tensor:
    """``y [..., N] = x [..., K] @ dequantize(m)^T (+ bias)``: fp32 matmul, output in x's dtype."""
    K = x.shape[-1]
    w = dequantize_ref(planes, exponents, m, block_size, K, torch.float32)
    y = x.to(torch.float32) @ w.t()
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


def signed_codes(planes: torch.Tensor, m: int) -> torch.Tensor:
    """``int8 [N, Kp]``: (-1)^s q' at width ``m <= 7`` (the packed copy's codes; one shift pass)."""
    q = torch.zeros(planes.shape[1:-1] + (planes.shape[-1] * WORD,), dtype=torch.int64, device=planes.device)
    for i in range(1, m + 1):
        q = (q << 1) | _unpack_bits(planes[i])
    return torch.where(_unpack_bits(planes[0]) != 0, -q, q).to(torch.int8)


def _fake_quant_blocks(blocks: torch.Tensor, m: int) -> torch.Tensor:
    """fp32 ``[..., nb, g] -> [..., nb, g]``: each last-dim row is one block (``g`` = G, or fewer for a short
    last block), quantized and dequantized at width m; E is broadcast from ``[..., nb, 1]``."""
    bits = blocks.view(torch.int32)
    field = (bits >> 23) & 0xFF
    e = torch.where((bits & 0x7FFFFFFF) == 0, torch.full_like(field, EMPTY), field.clamp(min=1) - 127)
    E = e.amax(dim=-1, keepdim=True).clamp(min=-126)  # [..., nb, 1]; an all-zero block: EMPTY -> -126
    inv = ldexp_exact(torch.ones_like(blocks[..., :1]), -E)  # 2^-E, normal for E in [-126, 127]
    q = torch.floor(blocks.abs() * inv * float(2 ** (m - 1)))
    return torch.copysign(q, blocks) * ldexp_exact(torch.ones_like(inv), E - (m - 1))


def fake_quant_values(w: torch.Tensor, m: int, block_size: int) -> torch.Tensor:
    """dequantize(quantize(w, m)) in w's dtype, with plain tensor ops (traceable; NaN/Inf propagate).

    Same numbers as the bit planes: E from the exponent field, q = floor(|w| 2^-E 2^(m-1)) in fp32
    (both scalings exact where the floor can be nonzero), value q 2^(E - (m-1)).

    Nothing is padded and no element reads its block's E through an index ``k // G`` over a range of K
    elements: the whole blocks ``[..., K // G, G]`` and the short last block ``[..., 1, K % G]`` (if any) are
    each quantized in block layout (E broadcast from ``[..., nb, 1]``) and concatenated. Inductor (CPU, torch
    2.13) miscompiles a pointwise loop of K elements indexing ``k // G`` when G does not divide K: its loop
    split makes it ``K // G`` outer steps of G and never writes the last ``K % G`` elements (garbage, NaN
    included, under ``torch.compile``). Both a block max broadcast back through a padded ``[..., nb, G]``
    reshape and sliced to K, and an index gather of the padded block maxima (``index_select(E, arange(K) //
    G)``, wrong with one row) hit it; the pieces here have K // G * G and K % G < G elements.

    Shape: w ``[..., K]`` -> ``[..., K]``.
    """
    K = w.shape[-1]
    Kf = K // block_size * block_size  # the whole blocks
    w32 = w.to(torch.float32)  # [..., K]
    lead = w32.shape[:-1]
    v = _fake_quant_blocks(w32[..., :Kf].reshape(*lead, Kf // block_size, block_size), m).reshape(*lead, Kf)
    if Kf < K:  # the short last block, on its own: [..., 1, K - Kf]
        v = torch.cat([v, _fake_quant_blocks(w32[..., Kf:].unsqueeze(-2), m).squeeze(-2)], dim=-1)
        if not w.is_contiguous():  # cat's output is contiguous: keep w's layout, as the pointwise ops do
            return torch.empty_like(w).copy_(v)
    return v.to(w.dtype)
