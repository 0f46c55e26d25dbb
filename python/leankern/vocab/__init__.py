"""Vocabulary-subset LM head, fused logit statistics, vocabulary sets and offloaded embeddings (VocabTailor).

A decode step of a small LM spends a large share of its bytes on the LM head (Qwen3-0.6B: 151,936 x
1,024). Computing it over a task vocabulary (plus the prompt's own tokens) reads only those rows:

>>> logits = leankern.vocab.gather_lm_head(hidden, lm_head.weight, vocab_ids)        # [B, K]
>>> next_ids, best = leankern.vocab.gather_lm_head_argmax(hidden, lm_head.weight, vocab_ids)  # global ids

Rows are read in place by id (no gathered copy), sums are fp32, padding ids (-1) give ``-inf``
and any other id outside [0, V) raises before a row is read. Numerics: :mod:`leankern.vocab.ref`.

Around the ops: :class:`VocabSet` / :func:`build_static_vocab` (task vocabularies, per-request sets),
:class:`OffloadedEmbedding` (table in host memory or a memory-mapped file) and :func:`tailor` (the
Hugging Face drop-in: ``model.generate()`` over the request's vocabulary).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from ..core import narrow_to_int32
from ..mx.tensor import MXTensor
from . import ops, ref

__all__ = ["gather_lm_head", "gather_lm_head_argmax", "gather_lm_head_topk", "gather_lm_head_log_softmax",
           "scatter_to_full", "logit_stats", "LogitStats", "VocabSet", "RequestVocab", "build_static_vocab",
           "OffloadedEmbedding", "tailor", "untailor", "vocab_bytes", "ops", "ref"]


def _ids32(vocab_ids: torch.Tensor, V: Optional[int]) -> torch.Tensor:
    """Hugging Face code holds int64 ids; the ops take int32 (V < 2^31). int32 ids pass untouched (no pass over them).

    int64 ids are checked against [-1, V) on CPU (the ops' message, with the actual min / max); elsewhere (CUDA,
    torch.compile tracing, or V unknown because ``weight`` is not valid) they saturate to [-2, 2^31 - 1], which the
    op's own id check rejects before any read (:func:`leankern.core.narrow_to_int32`).
    """
    if not isinstance(vocab_ids, torch.Tensor):
        raise TypeError(f"vocab_ids: expected a torch.Tensor of token ids, got {type(vocab_ids).__name__}")
    if vocab_ids.dtype != torch.int64:
        return vocab_ids
    check = None if V is None else (lambda t: ops.check_ids_values(t, V))
    return narrow_to_int32(vocab_ids, check, lo=-2)


def _rows(weight) -> Optional[int]:
    """V of a plausible ``weight`` ([V, H] tensor or MXTensor), else None (the op's checks then reject it)."""
    shape = getattr(weight, "shape", None) if isinstance(weight, (torch.Tensor, MXTensor)) else None
    return shape[0] if shape is not None and len(shape) == 2 and 1 <= shape[0] < 2**31 else None


def _flatten(hidden: torch.Tensor, vocab_ids: torch.Tensor, V: Optional[int]):
    """hidden ``[*lead, H]`` -> ``[B, H]``; ids ``[K]`` stay, ids ``[*lead, K]`` -> ``[B, K]``; returns lead too."""
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden: expected a torch.Tensor, got {type(hidden).__name__}")
    if hidden.dim() < 1:
        raise ValueError(f"hidden: expected shape [..., H], got {tuple(hidden.shape)}")
    lead = tuple(hidden.shape[:-1])
    B = math.prod(lead)  # not reshape(-1, ...): ambiguous for an empty tensor (H = 0, or K = 0 ids)
    h = hidden.reshape(B, hidden.shape[-1])
    ids = _ids32(vocab_ids, V)
    if ids.dim() > 1:
        if tuple(ids.shape[:-1]) != lead:
            raise ValueError(f"vocab_ids: expected shape [K] or [{', '.join(map(str, lead))}, K] (hidden's leading "
                             f"dims), got {tuple(vocab_ids.shape)}")
        ids = ids.reshape(B, ids.shape[-1])
    return h, ids, lead


def _mx_logits(hidden, weight, ids, bias, soft_cap, scale):
    """fp32 subset logits of an MXTensor head: the K rows' codes and scales are gathered (a few bytes per weight),
    then multiplied by the quantized linear kernel. The arguments were checked by ``GATHER.check`` / ``TOPK.check``
    (the plain-tensor path's checks and messages); the ids' values are checked here, before any row is read."""
    from ..mx import linear

    ops.check_ids_values(ids, weight.shape[0])
    if weight.layout == "row_major" and weight.scale_layout != "row_major":  # unswizzled once, not per row set
        weight = MXTensor(weight.codes, weight.row_major_scales(), weight.global_scale, weight.fmt, weight.block_size,
                          weight.shape, weight.dtype, weight.scale_mode, rotation=weight.rotation, _trusted=True)

    def rows(ids1d):  # the MXTensor of rows ids1d, from any stored layout (padding reads row 0; masked to -inf below)
        return weight._take_rows(ids1d.long().clamp_min(0))

    h = hidden.float()
    if ids.dim() == 1:
        z = linear(h, rows(ids))  # [B, K]
    else:  # per-row sets: each row against its own K rows
        z = torch.cat([linear(h[b:b + 1], rows(ids[b])) for b in range(ids.shape[0])]) if ids.shape[0] else (
            h.new_zeros(0, ids.shape[1]))
    if bias is not None:
        z = z + bias.float()[ids.long().clamp_min(0)]
    z = ref.apply_cap(z, soft_cap, scale)
    return z.masked_fill(ids < 0, float("-inf"))


def _is_mx(weight) -> bool:
    return isinstance(weight, MXTensor)


def gather_lm_head(hidden: torch.Tensor, weight, vocab_ids: torch.Tensor, *, bias: Optional[torch.Tensor] = None,
                   soft_cap: Optional[float] = None, scale: float = 1.0, out_dtype: Optional[torch.dtype] = torch.float32,
                   log_softmax: bool = False) -> torch.Tensor:
    """LM-head logits over a vocabulary subset: ``scale * cap(hidden . weight[id] + bias[id])``.

    Parameters
    ----------
    hidden : Tensor ``[..., H]``, fp32 / bf16 / fp16
    weight : Tensor ``[V, H]`` (bf16 / fp16 / fp32, rows contiguous), or an ``MXTensor`` ``[V, H]`` quantized along H
        (any stored layout: row-major, swizzled scales or prepacked, e.g. a ``QuantLinear``'s ``.weight``)
    vocab_ids : int32 / int64 Tensor ``[K]`` (one subset for every row) or ``[..., K]`` (one per row of hidden):
        global ids, -1 = padding (gives -inf); duplicates allowed, order kept
    bias : Tensor ``[V]``, optional
    soft_cap : float, optional; ``cap(z) = soft_cap * tanh(z / soft_cap)`` (Gemma-2 style final_logit_softcapping)
    scale : float, multiplies the capped logit
    out_dtype : fp32 (default), bf16 or fp16
    log_softmax : return ``log_softmax`` over the subset instead (all-padding rows stay -inf)

    Returns ``[..., K]``. Column ``k`` belongs to global id ``vocab_ids[k]``.
    """
    if type(hidden) is torch.Tensor and hidden.dim() == 2 and type(weight) is torch.Tensor and (
            type(vocab_ids) is torch.Tensor and vocab_ids.dtype == torch.int32):  # the decode call: no reshapes
        return torch.ops.leankern.vocab_gather_lm_head(hidden, weight, vocab_ids, bias, soft_cap, float(scale),
                                                       out_dtype, bool(log_softmax))
    h, ids, lead = _flatten(hidden, vocab_ids, _rows(weight))
    if _is_mx(weight):
        ops.GATHER.check("ref", h, weight, ids, bias, soft_cap, float(scale), out_dtype, bool(log_softmax))
        z = _mx_logits(h, weight, ids, bias, soft_cap, scale)
        if log_softmax:
            z = ref.log_softmax_rows(z)
        out = z.to(out_dtype or torch.float32)
    else:
        out = torch.ops.leankern.vocab_gather_lm_head(h, weight, ids, bias, soft_cap, float(scale), out_dtype,
                                                      bool(log_softmax))
    return out.reshape(*lead, out.shape[-1])


def gather_lm_head_log_softmax(hidden, weight, vocab_ids, **kwargs) -> torch.Tensor:
    """``log_softmax`` over the subset logits (:func:`gather_lm_head` with ``log_softmax=True``): ``[..., K]`` in
    ``out_dtype``, fp32 by default (bf16 / fp16 on request), whatever the dtypes of hidden and weight."""
    return gather_lm_head(hidden, weight, vocab_ids, log_softmax=True, **kwargs)


def gather_lm_head_topk(hidden: torch.Tensor, weight, vocab_ids: torch.Tensor, k: int, *,
                        bias: Optional[torch.Tensor] = None, soft_cap: Optional[float] = None,
                        scale: float = 1.0) -> tuple:
    """The ``k`` largest subset logits, without returning (or keeping) the ``[B, K]`` logits.

    Returns ``(values fp32 [..., k], global_ids int64 [..., k])``, descending; equal logits keep their
    order in ``vocab_ids`` (the lowest position first, like a stable sort); padding positions report id -1.
    Same arguments as :func:`gather_lm_head`; ``k`` an int (not a bool), ``1 <= k <= min(K, ops.MAX_TOPK)``.
    On CPU with k > 1 and ``B * K <= 4M`` the logits pass through a scratch of at most 16 MB; larger batches
    stream candidates (docs/vocab.md).
    """
    if type(k) is not int:  # a bool / float k is an error, not int(k)
        ops.check_k_type(k)
    if type(hidden) is torch.Tensor and hidden.dim() == 2 and type(weight) is torch.Tensor and (
            type(vocab_ids) is torch.Tensor and vocab_ids.dtype == torch.int32):  # the decode call: no reshapes
        return torch.ops.leankern.vocab_gather_lm_head_topk(hidden, weight, vocab_ids, bias, soft_cap, float(scale),
                                                            int(k))
    h, ids, lead = _flatten(hidden, vocab_ids, _rows(weight))
    k = int(k)
    if _is_mx(weight):
        ops.TOPK.check("ref", h, weight, ids, bias, soft_cap, float(scale), k)
        z = _mx_logits(h, weight, ids, bias, soft_cap, scale)
        vals, pos = torch.sort(z, dim=-1, descending=True, stable=True)
        vals, pos = vals[:, :k], pos[:, :k]
        gids = ids.long()[pos] if ids.dim() == 1 else ids.long().gather(1, pos)
    else:
        vals, gids = torch.ops.leankern.vocab_gather_lm_head_topk(h, weight, ids, bias, soft_cap, float(scale), k)
    return vals.reshape(*lead, k), gids.reshape(*lead, k)


def _argmax_error(err: ValueError, vocab_ids) -> None:
    """Argmax takes no k: its k = 1 range error over K = 0 ids is raised as what it is, an empty vocab_ids."""
    if str(err).startswith("k: ") and isinstance(vocab_ids, torch.Tensor) and vocab_ids.dim() >= 1 and (
            vocab_ids.shape[-1] == 0):
        raise ValueError("vocab_ids: expected K >= 1 ids to take the argmax over, got K=0 (shape "
                         f"{tuple(vocab_ids.shape)})") from None


def gather_lm_head_argmax(hidden: torch.Tensor, weight, vocab_ids: torch.Tensor, **kwargs) -> tuple:
    """Greedy next token over the subset: ``(global_ids int64 [...], max_logit fp32 [...])``; ties -> lowest position."""
    try:  # free when nothing is raised
        if not kwargs and type(hidden) is torch.Tensor and hidden.dim() == 2 and type(weight) is torch.Tensor and (
                type(vocab_ids) is torch.Tensor and vocab_ids.dtype == torch.int32):  # the decode call: the op directly
            vals, gids = torch.ops.leankern.vocab_gather_lm_head_topk(hidden, weight, vocab_ids, None, None, 1.0, 1)
            return gids.view(-1), vals.view(-1)
        vals, gids = gather_lm_head_topk(hidden, weight, vocab_ids, 1, **kwargs)
    except ValueError as e:
        _argmax_error(e, vocab_ids)
        raise
    if vals.dim() == 2:  # [B, 1] -> [B]: a view is cheaper than an index
        return gids.view(-1), vals.view(-1)
    return gids[..., 0], vals[..., 0]


def scatter_to_full(logits: torch.Tensor, vocab_ids: torch.Tensor, V: int, fill: float = float("-inf")) -> torch.Tensor:
    """Full-vocabulary rows from subset logits: ``[B, V]`` of ``fill`` with ``logits[b, k]`` at ``vocab_ids[(b,) k]``.

    logits ``[B, K]`` (any float dtype, kept); vocab_ids ``[K]`` or ``[B, K]`` (-1 writes nothing; a repeated id
    keeps its last position's value). For samplers that need ``[B, V]``.
    """
    V = int(V)
    return torch.ops.leankern.vocab_scatter_to_full(logits, _ids32(vocab_ids, V if 1 <= V < 2**31 else None), V,
                                                    float(fill))


class LogitStats(NamedTuple):
    """Per-row statistics of a logit row ``z`` at temperature ``t`` (each ``[B]``, or logits' leading shape):
    ``argmax`` int64, every other field fp32, whatever the logits' dtype."""

    max: torch.Tensor  # fp32, max of z / t
    argmax: torch.Tensor  # int64, lowest index of the max (torch.argmax)
    logsumexp: torch.Tensor  # fp32
    entropy: torch.Tensor  # fp32, -sum p ln p (nats)
    self_certainty: torch.Tensor  # fp32, KL(U || p) = logsumexp - mean(z / t) - ln V


# the overload, looked up once: torch.ops.<ns>.<op>(...) resolves the namespace, the packet and its overload on
# every call (4.0 -> 3.7 us per call on a tiny row, 2-core Xeon; one decode row's call takes ~20 us)
_STATS_OP = torch.ops.leankern.vocab_logit_stats.default


def logit_stats(logits: torch.Tensor, *, temperature: float = 1.0) -> LogitStats:
    """Max, argmax, logsumexp, entropy and self-certainty of each row of ``logits [B, V]`` in one pass.

    ``p = softmax(logits / temperature)``. Self-certainty is the KL divergence from the uniform
    distribution to ``p`` (Kang et al. 2025, as DACE uses it): 0 for a uniform row, large when
    confident; ``+inf`` when some logit is ``-inf``. A row that is not a distribution (a NaN or +inf
    logit, or every logit -inf) gets NaN entropy and self-certainty. Accepts ``[..., V]``.

    Returns a :class:`LogitStats` of ``[B]`` (``[...]``) tensors: ``max``, ``logsumexp``, ``entropy`` and
    ``self_certainty`` fp32, ``argmax`` int64, for fp32, bf16 and fp16 logits alike.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() == 2:  # the common case: no reshapes (each costs a microsecond or two)
        return LogitStats(*_STATS_OP(logits, float(temperature)))
    lead = tuple(logits.shape[:-1])
    outs = _STATS_OP(logits.reshape(-1, logits.shape[-1]) if logits.dim() else logits, float(temperature))
    return LogitStats(*(o.reshape(lead) for o in outs))


# after the ops: hf.py uses them
from .embedding import OffloadedEmbedding  # noqa: E402
from .hf import tailor, untailor, vocab_bytes  # noqa: E402
from .vocab_set import RequestVocab, VocabSet, build_static_vocab  # noqa: E402
