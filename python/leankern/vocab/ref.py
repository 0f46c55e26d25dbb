"""Reference of the vocab ops: the definition of their numerics (pure PyTorch, any device).

Every op takes exactly the arguments of its ``torch.ops.leankern`` schema (python/leankern/vocab/ops.py).

* ``logits[b, k] = scale * cap(hidden[b] . weight[id] + bias[id])`` with ``id = vocab_ids[(b,) k]``,
  ``cap(z) = soft_cap * tanh(z / soft_cap)`` (no cap when ``soft_cap`` is None), products and sums in fp32;
  ``id == -1`` (padding) gives ``-inf``, never 0: a zero row would win greedy decoding when every
  logit is negative. Kernels sum in another order: they match within a tolerance (tests/tolerances.py).
* Top-k / argmax rank the fp32 logits like a stable descending sort (ties -> lowest position k,
  as ``torch.argmax``) and report global ids (``vocab_ids[k]``; -1 for padding).
* Log-softmax over the subset: ``z - logsumexp(z)`` in fp32; a row of only padding stays all ``-inf``
  (no NaN).
* :func:`logit_stats_ref` (one row = one distribution over V, at ``temperature``): max and argmax of
  the fp32 ``z / t`` exactly as ``torch.max`` / ``torch.argmax``; logsumexp, entropy and
  self-certainty (KL(U || p) = logsumexp - mean(z/t) - ln V) in fp64, rounded to fp32. A row that is
  not a distribution (any NaN or +inf, or every entry -inf): entropy and self-certainty are NaN,
  max / argmax / logsumexp as torch gives them.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["gather_lm_head_ref", "gather_lm_head_topk_ref", "scatter_to_full_ref", "logit_stats_ref", "dense_logits",
           "apply_cap", "log_softmax_rows"]


def apply_cap(z: torch.Tensor, soft_cap: Optional[float], scale: float) -> torch.Tensor:
    """``scale * soft_cap * tanh(z / soft_cap)`` (fp32), or ``scale * z`` without a cap."""
    if soft_cap is not None:
        z = torch.tanh(z / soft_cap) * soft_cap
    return z * scale if scale != 1.0 else z


def dense_logits(hidden: torch.Tensor, weight: torch.Tensor, vocab_ids: torch.Tensor, bias: Optional[torch.Tensor],
                 soft_cap: Optional[float], scale: float) -> torch.Tensor:
    """fp32 ``[B, K]`` subset logits (padding -> -inf). hidden ``[B, H]``, weight ``[V, H]``, ids ``[K]`` / ``[B, K]``."""
    B = hidden.shape[0]
    h = hidden.float()
    ids = vocab_ids.long()
    if ids.dim() == 1:  # one gathered [K, H] block for the whole batch
        safe = ids.clamp_min(0)
        z = h @ weight[safe].float().T
        if bias is not None:
            z = z + bias[safe].float()
        pad = (ids < 0).expand(B, -1)
    else:  # per-row sets: one [K, H] block per row (a [B, K, H] gather could be gigabytes)
        safe = ids.clamp_min(0)
        z = torch.stack([weight[safe[b]].float() @ h[b] for b in range(B)]) if B else h.new_zeros(0, ids.shape[1])
        if bias is not None:
            z = z + bias[safe].float()
        pad = ids < 0
    z = apply_cap(z, soft_cap, scale)
    return z.masked_fill(pad, float("-inf"))


def log_softmax_rows(z: torch.Tensor) -> torch.Tensor:
    """fp32 log-softmax over the last dim; an all ``-inf`` row stays ``-inf`` (not NaN)."""
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    return torch.where(torch.isneginf(lse), z, z - lse)


def gather_lm_head_ref(hidden, weight, vocab_ids, bias, soft_cap, scale, out_dtype, log_softmax):
    """``[B, K]`` logits (or log-probabilities over the subset) in ``out_dtype`` (default fp32)."""
    z = dense_logits(hidden, weight, vocab_ids, bias, soft_cap, scale)
    if log_softmax:
        z = log_softmax_rows(z)
    return z.to(torch.float32 if out_dtype is None else out_dtype)


def gather_lm_head_topk_ref(hidden, weight, vocab_ids, bias, soft_cap, scale, k):
    """``(values fp32 [B, k], global ids int64 [B, k])``: the k largest subset logits, descending, ties -> lowest k."""
    z = dense_logits(hidden, weight, vocab_ids, bias, soft_cap, scale)
    values, pos = torch.sort(z, dim=-1, descending=True, stable=True)
    values, pos = values[:, :k], pos[:, :k]
    ids = vocab_ids.long()
    gids = ids[pos] if ids.dim() == 1 else ids.gather(1, pos)
    return values.contiguous(), gids.contiguous()


def scatter_to_full_ref(logits, vocab_ids, V, fill):
    """``[B, V]`` in logits' dtype: ``fill`` everywhere, ``logits[b, k]`` at column ``vocab_ids[(b,) k]``.

    Padding ids (-1) write nothing; an id listed twice keeps the value of its last position.
    """
    B, K = logits.shape
    ids = vocab_ids.long().expand(B, K) if vocab_ids.dim() == 1 else vocab_ids.long()
    out = torch.full((B, V), fill, dtype=logits.dtype, device=logits.device)
    if K == 0:
        return out
    pos = torch.arange(K, device=logits.device).expand(B, K)
    valid = ids >= 0
    last = torch.full((B, V + 1), -1, dtype=torch.long, device=logits.device)  # column V collects padding
    last.scatter_reduce_(1, torch.where(valid, ids, V), torch.where(valid, pos, -1), "amax")
    last = last[:, :V]
    hit = last >= 0
    return torch.where(hit, logits.gather(1, last.clamp_min(0)), out)


def logit_stats_ref(logits, temperature):
    """``(max fp32 [B], argmax int64 [B], logsumexp fp32 [B], entropy fp32 [B], self_certainty fp32 [B])``."""
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    B, V = z.shape
    mx, am = torch.max(z, dim=-1) if V else (z.new_zeros(B), torch.zeros(B, dtype=torch.long, device=z.device))
    zd = z.double()
    lse = torch.logsumexp(zd, dim=-1)
    valid = ~(torch.isnan(z).any(-1) | torch.isposinf(z).any(-1) | torch.isneginf(mx))
    # centred on the row max: logits near -FLT_MAX (HF masking with finfo.min) keep ln V and friends
    zc = torch.where(valid[:, None], zd - torch.where(valid, mx.double(), 0.0)[:, None], zd.new_zeros(()))
    lse_c = torch.logsumexp(zc, dim=-1)
    p = torch.exp(zc - lse_c[:, None])
    pz = torch.where(p > 0, p * zc, p.new_zeros(()))  # p = 0 at -inf: 0, not 0 * -inf
    entropy = lse_c - pz.sum(-1)
    certainty = lse_c - zc.mean(-1) - math.log(V) if V else lse_c
    nan = torch.full_like(entropy, float("nan"))
    entropy = torch.where(valid, entropy, nan)
    certainty = torch.where(valid, certainty, nan)
    return mx, am, lse.float(), entropy.float(), certainty.float()
