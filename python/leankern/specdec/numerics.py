"""The numerics every specdec backend reproduces bit for bit (docs/specdec.md has the derivation).

Why not ``torch.softmax``: each backend's ``exp`` and its summation order differ in the last bits,
and a rejection test ``u < p / q`` placed near such a difference would accept on one backend and
reject on another. So the probabilities are defined through operations that every backend
computes identically:

1. ``z = logits / temperature`` (fp32; temperature 1 leaves it unchanged), ``m = max(z)``,
   ``d = z - m <= 0`` (fp32).
2. ``e = exp_poly(d)``: a fixed fp32 polynomial, every product and sum rounded separately (no FMA).
3. Integer weights ``W = trunc(e * 2**40)`` (int64). Their sum ``S`` is exact in any order
   (``V * 2**40 < 2**63`` for ``V < 2**23``). ``p_i = W_i / S``. Weights below ``2**-40`` of the
   largest are 0; the total variation from the exact softmax is at most ``V * 2**-40``
   (1.4e-7 at V = 151,936), the size of fp32 softmax rounding itself.
4. Top-k / top-p become one integer threshold ``W_min`` per row (:func:`keep_threshold`); kept
   weights ``W' = W if W >= W_min else 0``.
5. Every decision compares IEEE fp64 products/quotients of these integers and of fp32 inputs,
   or integer prefix sums: deterministic on every backend.

Random numbers: uniforms are inputs; :func:`uniforms_from_seed` expands ``(seed, offset)`` with a
documented 32-bit counter hash, so a seed replays on every backend too.
"""
from __future__ import annotations

import torch

__all__ = ["W_FRAC_BITS", "EXP_CUTOFF", "exp_poly", "exp_weights", "keep_threshold", "uniforms_from_seed",
           "hash_u32", "row_is_valid", "kept_weights", "target_probs"]

W_FRAC_BITS = 40
# e^-28 = 6.9e-13 < 2^-40 = 9.1e-13: below the cutoff the weight truncates to 0 anyway, and the
# polynomial only has to cover [-28, 0] (2^n stays a normal fp32 number).
EXP_CUTOFF = -28.0

# Cody-Waite split of ln 2: LN2_HI has 16 significant bits, so n * LN2_HI is exact for |n| <= 2^8.
LOG2E = 1.44269502162933349609375  # fp32(log2(e))
LN2_HI = 0.693145751953125
LN2_LO = 1.428606765330187045e-06
# Taylor coefficients 1/k! for k = 7..0, each rounded to fp32 (|r| <= ln2/2: truncation error < 2e-8 relative).
EXP_COEFFS = (1.98412701138295233249664306640625e-04, 1.388888922519981861114501953125e-03,
              8.333333767950534820556640625e-03, 4.1666667908430099487304687500e-02,
              0.16666667163372039794921875, 0.5, 1.0, 1.0)


def _f32(v: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32, device=like.device)


def exp_poly(d: torch.Tensor) -> torch.Tensor:
    """``exp(d)`` for fp32 ``d`` in ``[EXP_CUTOFF, 0]``, exactly as every backend computes it.

    ``n = floor(d * LOG2E + 0.5)``, ``r = (d - n * LN2_HI) - n * LN2_LO``, Horner over
    :data:`EXP_COEFFS` (multiply, then add: two roundings per step), times ``2**n`` built from
    its exponent bits. Within 2 ulp of ``exp``. Values outside the range: undefined (callers mask).

    Shape: d [...] fp32 -> [...] fp32.
    """
    n = torch.floor(d * _f32(LOG2E, d) + _f32(0.5, d))
    r = (d - n * _f32(LN2_HI, d)) - n * _f32(LN2_LO, d)
    p = _f32(EXP_COEFFS[0], d).expand_as(r)
    for c in EXP_COEFFS[1:]:
        p = p * r + _f32(c, d)
    two_n = ((n.to(torch.int32) + 127) << 23).view(torch.float32)
    return p * two_n


def exp_weights(d: torch.Tensor) -> torch.Tensor:
    """Integer softmax weights ``trunc(exp_poly(d) * 2**40)``; 0 where ``d < EXP_CUTOFF`` (or NaN).

    Shape: d [...] fp32 (``<= 0``) -> [...] int64.
    """
    live = d >= EXP_CUTOFF
    e = exp_poly(torch.where(live, d, torch.zeros_like(d)))
    w = (e * _f32(2.0**W_FRAC_BITS, d)).to(torch.int64)
    return torch.where(live, w, torch.zeros_like(w))


def keep_threshold(w: torch.Tensor, top_k: int, top_p: float) -> int:
    """The smallest kept weight ``W_min`` of one row under top-k then top-p (1 when neither applies).

    * top-k (``0 < top_k < V``): ``W_min = `` the k-th largest weight; ties at it are all kept.
    * top-p (``top_p < 1``): among weights ``>= W_min`` (sum ``S_k``), a weight value v is kept iff
      ``double(sum of kept weights > v) / double(S_k) < top_p``; the kept values are the largest ones,
      so ``W_min`` becomes the smallest kept value. The largest weight is always kept.

    Shape: w [V] int64.
    """
    w_min = 1
    if int(w.sum()) == 0:  # no weights at all (logits / t overflowed): nothing to threshold
        return w_min
    if 0 < top_k < w.numel():
        w_min = max(w_min, int(torch.topk(w, top_k).values[-1]))
    if top_p < 1.0:
        kept = torch.sort(w[w >= w_min], descending=True).values
        s_k = float(kept.sum())
        above = torch.cumsum(kept, 0) - kept  # [n] mass strictly before each sorted position
        first = torch.ones_like(kept, dtype=torch.bool)
        first[1:] = kept[1:] != kept[:-1]  # first occurrence of each value: mass strictly above it
        ok = first & (above.double() / s_k < float(torch.tensor(top_p, dtype=torch.float32)))
        w_min = max(w_min, int(kept[ok][-1]))
    return w_min


def row_is_valid(row: torch.Tensor) -> bool:
    """A row defines a distribution iff it has no NaN, no +inf and a finite maximum."""
    return bool(torch.isfinite(row.max())) and not bool(torch.isnan(row).any())


def kept_weights(row: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The kept integer weights ``W'`` of one valid row (steps 1-4 above).

    Shape: row [V] (any float dtype; read as fp32) -> [V] int64.
    """
    z = row.float() / torch.tensor(temperature, dtype=torch.float32, device=row.device)
    w = exp_weights(z - z.max())
    w_min = keep_threshold(w, top_k, top_p)
    return torch.where(w >= w_min, w, torch.zeros_like(w))


def target_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The target distribution ``p = W' / S`` the ``rejection`` and ``typical`` modes verify against.

    For drafters and tests: ``draft_probs = target_probs(target_logits).float()`` is a draft
    that every uniform in ``[0, 1)`` accepts.

    Shape: logits [..., V] -> [..., V] ``dtype`` (rows without a distribution: NaN).
    """
    rows = logits.reshape(-1, logits.shape[-1])
    out = torch.full(rows.shape, float("nan"), dtype=torch.float64, device=logits.device)
    for i, row in enumerate(rows):
        if row_is_valid(row):
            w = kept_weights(row, temperature, top_k, top_p)
            out[i] = w.double() / float(w.sum())
    return out.reshape(logits.shape).to(dtype)


# ------------------------------------------------------------------------------------ counter hash
_M32 = 0xFFFFFFFF


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """``(h * c) mod 2**32`` for uint32 values held in int64, without int64 overflow."""
    lo = h * (c & 0xFFFF)
    hi = ((h * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser (a bijection on uint32 with full avalanche)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def hash_u32(seed: int, counters: torch.Tensor) -> torch.Tensor:
    """``fmix32(fmix32(key ^ lo32(c)) ^ hi32(c))`` with ``key = fmix32(fmix32(lo32(seed) ^ 0x9E3779B9) ^ hi32(seed))``.

    Shape: counters [...] int64 -> [...] int64 holding uint32.
    """
    s = seed & 0xFFFFFFFFFFFFFFFF
    key = _fmix32(torch.tensor((s & _M32) ^ 0x9E3779B9, dtype=torch.int64))
    key = int(_fmix32(key ^ (s >> 32)))
    c_lo, c_hi = counters & _M32, (counters >> 32) & _M32
    return _fmix32(_fmix32(c_lo ^ key) ^ c_hi)


def uniforms_from_seed(seed: int, offset: int, n: int, device=None) -> torch.Tensor:
    """``n`` uniforms in ``[0, 1)``: ``u_i = (hash_u32(seed, offset + i) >> 8) * 2**-24``.

    Shape: -> [n] fp32. Exactly representable, so every backend and device gets the same values.
    """
    counters = torch.arange(n, dtype=torch.int64, device=device) + offset
    return (hash_u32(seed, counters) >> 8).to(torch.float32) * (2.0**-24)
