"""Pure-PyTorch reference of the specdec ops: the definition every kernel replays bit for bit.

Written for clarity, one request and one row at a time (host loops): the kernels are the fast
path. The numerics (integer softmax weights, thresholds, fp64 decisions) are those of
:mod:`leankern.specdec.numerics`; the rules are those of docs/specdec.md
(Spec-VLA, arXiv 2507.22424).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .numerics import kept_weights, row_is_valid

__all__ = ["CHAIN_MODES", "TREE_MODES", "Rules", "RowDist", "verify_ref", "verify_tree_ref"]

CHAIN_MODES = ("greedy", "relaxed", "rejection", "typical")
TREE_MODES = ("greedy", "relaxed", "typical")


@dataclasses.dataclass(frozen=True)
class Rules:
    """The per-call acceptance parameters (the op's scalar arguments)."""

    mode: str
    relax_radius: int = 0
    action_lo: int = 0
    action_hi: int = -1  # inclusive; hi < lo: no action range, relaxation applies nowhere
    typical_eps: float = 0.09
    typical_delta: float = 0.3

    def relaxed_match(self, draft: int, target: int) -> bool:
        """Spec-VLA: exact match, or both ids in the action range and within the radius."""
        if draft == target:
            return True
        in_range = self.action_lo <= draft <= self.action_hi and self.action_lo <= target <= self.action_hi
        return in_range and abs(draft - target) <= self.relax_radius


def argmax_or_none(row: torch.Tensor):
    """Lowest index of the maximum of a valid row (like ``torch.argmax``), None for an invalid row."""
    return int(torch.argmax(row)) if row_is_valid(row) else None


class RowDist:
    """One target row as the integer distribution of :mod:`~leankern.specdec.numerics`.

    ``w`` [V] int64 kept weights ``W'``, ``total`` their sum ``S``.
    """

    def __init__(self, row: torch.Tensor, temperature: float, top_k: int, top_p: float):
        self.w = kept_weights(row, temperature, top_k, top_p)
        self.total = int(self.w.sum())

    def accepts(self, token: int, q: float, u: float) -> bool:
        """``u < p(token) / q``, evaluated as ``double(u) * double(q) * double(S) < double(W'_token)``."""
        return u * q * float(self.total) < float(self.w[token])

    def prob(self, token: int) -> float:
        return float(self.w[token]) / float(self.total)

    def entropy(self) -> float:
        """``-sum p ln p`` in fp64 (natural log), ``= ln S - sum W ln W / S``."""
        w = self.w[self.w > 0].double()
        return math.log(float(self.total)) - float((w * torch.log(w)).sum()) / float(self.total)


def sample_weights(weights: torch.Tensor, u: float) -> int:
    """Inverse CDF: the first index whose inclusive prefix sum exceeds ``floor(double(u) * double(sum))``.

    Shape: weights [V] int64 (sum > 0).
    """
    cum = torch.cumsum(weights, 0)
    target = int(math.floor(u * float(cum[-1])))
    return int(torch.searchsorted(cum, torch.tensor(target, dtype=torch.int64), right=True))


def residual_weights(dist: RowDist, draft: int, q_row) -> torch.Tensor:
    """``max(0, W' - floor(double(q) * double(S)))``; with no draft probabilities, ``W'`` without the draft.

    Falls back to ``W'`` when the residual is all zero (only reachable through rounding).
    """
    if q_row is None:
        r = dist.w.clone()
        r[draft] = 0
    else:
        q_w = torch.floor(q_row.double() * float(dist.total)).to(torch.int64)
        r = torch.clamp_min(dist.w - q_w, 0)
    return r if int(r.sum()) > 0 else dist.w


def _request_params(b, temperature, top_k, top_p):
    t = float(temperature[b]) if temperature is not None else 1.0
    k = int(top_k[b]) if top_k is not None else 0
    p = float(top_p[b]) if top_p is not None else 1.0
    return t, k, p


def clamp_q(q: torch.Tensor) -> torch.Tensor:
    """Draft probabilities as the rules read them: ``q`` in [0, 1] as is, > 1 -> 1, negative or NaN -> 0."""
    q = q.float()
    return torch.where(q >= 0, torch.where(q <= 1, q, torch.ones_like(q)), torch.zeros_like(q))


def _verify_one(rules: Rules, drafts, rows, bonus, q_rows, u_accept, u_sample, t, k, p):
    """One request of the chain op: (emitted tokens, accepted drafts). Emits -1 for an invalid row.

    A row whose weights sum to 0 (``logits / t`` overflowed fp32: a tiny temperature) is verified
    with the argmax rules, the limit of ``t -> 0``.
    """
    sampled = rules.mode in ("rejection", "typical") and t != 0.0
    emitted = []
    for j, x in enumerate(drafts):
        row = rows[j]
        if not row_is_valid(row):
            return emitted + [-1], j
        dist = RowDist(row.float(), t, k, p) if sampled else None
        if dist is None or dist.total == 0:  # greedy, relaxed, temperature 0 (or overflowed)
            a = int(torch.argmax(row))
            ok = rules.relaxed_match(x, a) if rules.mode == "relaxed" else x == a
            if not ok:
                return emitted + [a], j
        elif rules.mode == "rejection":
            q = 1.0 if q_rows is None else float(clamp_q(q_rows[j, x]))
            if not dist.accepts(x, q, u_accept[j]):
                r = residual_weights(dist, x, None if q_rows is None else clamp_q(q_rows[j]))
                return emitted + [sample_weights(r, u_sample)], j
        else:
            tau = min(rules.typical_eps, rules.typical_delta * math.exp(-dist.entropy()))
            if not dist.prob(x) > tau:
                return emitted + [int(torch.argmax(row))], j
        emitted.append(x)
    if not row_is_valid(bonus):
        return emitted + [-1], len(drafts)
    if rules.mode == "rejection" and sampled:
        w = RowDist(bonus.float(), t, k, p).w
        if int(w.sum()) > 0:
            return emitted + [sample_weights(w, u_sample)], len(drafts)
    return emitted + [int(torch.argmax(bonus))], len(drafts)


def verify_ref(draft_token_ids, cu_num_draft_tokens, target_logits, bonus_logits, draft_probs, uniforms,
               temperature, top_k, top_p, rules: Rules, max_drafts: int):
    """Reference of ``specdec_verify`` (arguments already checked). Returns (output [B, max_drafts+1], num_accepted [B])."""
    dev = target_logits.device
    B, T = cu_num_draft_tokens.numel(), draft_token_ids.numel()
    cu = [0] + cu_num_draft_tokens.tolist()
    drafts_all = draft_token_ids.tolist()
    tl, bl = target_logits.float().cpu(), bonus_logits.float().cpu()
    q_all = None if draft_probs is None else draft_probs.float().cpu()
    u = None if uniforms is None else uniforms.float().cpu().tolist()
    out = torch.full((B, max_drafts + 1), -1, dtype=torch.int32)
    num_accepted = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        s, e = cu[b], cu[b + 1]
        t, k, p = _request_params(b, temperature, top_k, top_p)
        emitted, acc = _verify_one(rules, drafts_all[s:e], tl[s:e], bl[b], None if q_all is None else q_all[s:e],
                                   None if u is None else u[s:e], None if u is None else u[T + b], t, k, p)
        out[b, :len(emitted)] = torch.tensor(emitted, dtype=torch.int32)
        num_accepted[b] = acc
    return out.to(dev), num_accepted.to(dev)


def _tree_accepts(rules: Rules, row: torch.Tensor, token: int, t: float) -> bool:
    """One tree edge: does the parent's row accept the child's token? (row valid)."""
    dist = RowDist(row, t, 0, 1.0) if rules.mode == "typical" and t != 0.0 else None
    if dist is not None and dist.total > 0:
        return dist.prob(token) > min(rules.typical_eps, rules.typical_delta * math.exp(-dist.entropy()))
    a = int(torch.argmax(row))
    return rules.relaxed_match(token, a) if rules.mode == "relaxed" else token == a


def verify_tree_ref(tree_token_ids, cu_num_nodes, node_logits, retrieve_indices, temperature, rules: Rules):
    """Reference of ``specdec_verify_tree``. Returns (output [B, D+1], num_accepted [B], best_path [B])."""
    dev = node_logits.device
    B, P, D1 = retrieve_indices.shape
    cu = [0] + cu_num_nodes.tolist()
    tokens = tree_token_ids.tolist()
    logits = node_logits.float().cpu()
    ri = retrieve_indices.cpu().tolist()
    out = torch.full((B, D1), -1, dtype=torch.int32)
    num_accepted = torch.zeros(B, dtype=torch.int32)
    best_path = torch.full((B,), -1, dtype=torch.int32)
    for b in range(B):
        base = cu[b]
        t = float(temperature[b]) if temperature is not None else 1.0
        best, best_len = -1, -1
        for p in range(P):
            path = ri[b][p]
            if path[0] < 0:
                continue  # an unused path slot
            n = 0
            for j in range(1, D1):
                if path[j] < 0:
                    break
                row = logits[base + path[j - 1]]
                if not row_is_valid(row) or not _tree_accepts(rules, row, tokens[base + path[j]], t):
                    break
                n += 1
            if n > best_len:
                best, best_len = p, n
        path = ri[b][best] if best >= 0 else [0]
        n = max(best_len, 0)
        emitted = [tokens[base + path[j]] for j in range(1, n + 1)]
        last = logits[base + path[n]]
        emitted.append(int(torch.argmax(last)) if row_is_valid(last) else -1)
        out[b, :len(emitted)] = torch.tensor(emitted, dtype=torch.int32)
        num_accepted[b], best_path[b] = n, best
    return out.to(dev), num_accepted.to(dev), best_path.to(dev)
