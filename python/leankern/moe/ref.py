"""Reference numerics of the MoE family: the definition every kernel is tested against.

Four steps of an MoE layer (MoDES, arXiv 2511.15690; docs/moe.md, "The four ops"):

* :func:`route_ref`   router logits ``[T, E]`` -> ``topk_ids [T, k] int32``, ``topk_weights [T, k] fp32``
* :func:`skip_ref`    mark skipped slots with id -1 (MoDES and the baselines it is compared with)
* :func:`align_ref`   group the kept slots by expert (static shapes, -1 never counted)
* :func:`experts_ref` the SwiGLU experts over kept (token, expert) pairs only, fp32 mask-and-loop

Conventions shared by every backend:

* Slots of a row are ordered by selection score, highest first; equal scores go to the lowest expert id
  (a stable sort of the scores, not ``torch.topk``, whose tie order is unspecified). NaN scores are read as
  ``-inf`` (never preferred over a number).
* A skipped slot has id -1 and weight 0. Skip rules never revive a slot that arrives as -1.
* Rules that rank slots (``top_p``, ``top_k``, NAEE's top-1) rank by weight, highest first, ties to the lowest
  slot index. Cumulative masses are fp64 sums in rank order; all other arithmetic is fp32.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

__all__ = ["route_ref", "skip_ref", "align_ref", "experts_ref", "SKIP_RULES", "ACTIVATIONS", "SCORINGS",
           "skip_param_count", "activation_ref", "align_sizes"]

SCORINGS = ("softmax", "sigmoid")
SKIP_RULES = ("none", "modes", "naee", "top_p", "min_p", "top_k")
ACTIVATIONS = ("silu", "swiglu_oai")
_PARAMS = {"none": 0, "modes": 4, "naee": 1, "top_p": 1, "min_p": 1, "top_k": 1}


def skip_param_count(rule: str) -> int:
    """How many floats ``skip_params`` holds for ``rule`` (modes: alpha_text, alpha_vision, tau_text, tau_vision)."""
    return _PARAMS[rule]


# ----------------------------------------------------------------------------------------- route
def _group_mask(sel: torch.Tensor, n_group: int, topk_group: int, top2: bool) -> torch.Tensor:
    """[T, E] bool: experts in the ``topk_group`` best of ``n_group`` equal groups (ties: lowest group)."""
    T, E = sel.shape
    g = sel.view(T, n_group, E // n_group)
    if top2:  # DeepSeek-V3 / Kimi (with a correction bias): a group's score is the sum of its two best
        gs = g.sort(dim=-1, descending=True, stable=True).values[..., :2].sum(-1)
    else:  # DeepSeek-V2: the group's best expert
        gs = g.max(dim=-1).values
    order = gs.sort(dim=-1, descending=True, stable=True).indices[:, :topk_group]  # [T, topk_group]
    keep = torch.zeros(T, n_group, dtype=torch.bool, device=sel.device).scatter_(1, order, True)
    return keep.repeat_interleave(E // n_group, dim=1)


def route_ref(router_logits: torch.Tensor, top_k: int, scoring: str = "softmax", renormalize: bool = True,
              n_group: int = 1, topk_group: int = 1, correction_bias: Optional[torch.Tensor] = None,
              routed_scaling_factor: float = 1.0):
    """Top-k routing. Returns ``(topk_ids [T, k] int32, topk_weights [T, k] fp32)``.

    score = softmax(logits) or sigmoid(logits) (fp32); selection uses ``score + correction_bias``; with
    ``n_group > 1`` only experts of the ``topk_group`` best groups are eligible (group score: the sum of its two
    best when a bias is given, else its best). Weights are the unbiased scores of the selected experts,
    renormalised to sum 1 if asked, then multiplied by ``routed_scaling_factor``.
    """
    z = router_logits.float()
    score = torch.softmax(z, dim=-1) if scoring == "softmax" else torch.sigmoid(z)
    sel = score if correction_bias is None else score + correction_bias.float()
    sel = torch.nan_to_num(sel, nan=-math.inf)
    if n_group > 1:
        sel = sel.masked_fill(~_group_mask(sel, n_group, topk_group, correction_bias is not None), -math.inf)
    ids = sel.sort(dim=-1, descending=True, stable=True).indices[:, :top_k]  # [T, k]
    w = score.gather(1, ids)
    if renormalize:
        w = w / w.sum(dim=-1, keepdim=True)
    if routed_scaling_factor != 1.0:
        w = w * routed_scaling_factor
    return ids.to(torch.int32), w.float()


# ------------------------------------------------------------------------------------------ skip
def _rank_by_weight(w: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[T, k] slot indices ordered by weight (highest first, ties lowest slot), invalid slots last."""
    key = w.masked_fill(~valid, -math.inf)
    return key.sort(dim=-1, descending=True, stable=True).indices


def skip_ref(topk_ids: torch.Tensor, topk_weights: torch.Tensor, rule: str = "none",
             skip_params: Sequence[float] = (), modality: Optional[torch.Tensor] = None,
             renormalize: bool = False):
    """Mark skipped slots with id -1 (weight 0). Returns ``(topk_ids [T, k] int32, topk_weights [T, k] fp32)``.

    Rules (``skip_params`` in brackets):

    * ``"modes"`` [alpha_text, alpha_vision, tau_text, tau_vision]: keep slot i of token t iff
      ``modality[t] == 2`` or ``alpha[m] * w[t, i] >= tau[m]`` (m = ``modality[t]``; no modality = all text).
    * ``"naee"`` [beta]: drop a slot other than the row's top-1 if ``w < beta * w_top1``.
    * ``"top_p"`` [p]: keep the smallest weight-ordered prefix whose mass >= ``p`` x the row's mass.
    * ``"min_p"`` [p]: keep the top-1 and every slot with ``w >= p * w_top1``.
    * ``"top_k"`` [k']: keep the ``k'`` heaviest slots.

    ``renormalize``: survivors are scaled so that they carry the row's original mass,
    ``w * (sum of valid w / sum of kept w)`` (fp32 sums in slot order); a row with nothing kept stays 0.
    """
    ids = topk_ids.to(torch.int32)
    w = topk_weights.float()
    valid = ids >= 0
    w = w.masked_fill(~valid, 0.0)
    T, k = ids.shape
    p = [float(v) for v in skip_params]
    if rule == "none":
        keep = valid
    elif rule == "modes":
        m = torch.zeros(T, dtype=torch.long, device=ids.device) if modality is None else modality.long()
        alpha = torch.tensor([p[0], p[1], 1.0], dtype=torch.float32, device=ids.device)[m]  # [T]
        tau = torch.tensor([p[2], p[3], 0.0], dtype=torch.float32, device=ids.device)[m]
        keep = valid & ((m == 2)[:, None] | (alpha[:, None] * w >= tau[:, None]))
    else:
        order = _rank_by_weight(w, valid)  # [T, k]
        ws = w.gather(1, order)
        vs = valid.gather(1, order)
        rank_keep = torch.zeros_like(vs)
        if rule == "top_k":
            rank_keep = torch.arange(k, device=ids.device)[None, :] < int(p[0])
        elif rule == "top_p":
            cum = ws.double().cumsum(dim=-1)
            before = cum - ws.double()
            rank_keep = before < p[0] * cum[:, -1:]
            rank_keep[:, 0] = True
        else:  # naee / min_p: a ratio to the top-1 weight
            top1 = ws[:, :1]
            rank_keep = ws >= p[0] * top1
            rank_keep[:, 0] = True
        keep = torch.zeros_like(valid).scatter_(1, order, rank_keep & vs)
    out_w = w.masked_fill(~keep, 0.0)
    if renormalize:
        total = _seq_sum(w)
        kept = _seq_sum(out_w)
        scale = torch.where(kept > 0, total / torch.where(kept > 0, kept, torch.ones_like(kept)), torch.zeros_like(kept))
        out_w = out_w * scale[:, None]
    return ids.masked_fill(~keep, -1), out_w


def _seq_sum(w: torch.Tensor) -> torch.Tensor:
    """[T] fp32 sum over the k slots in slot order (one rounding per add, as the kernels do)."""
    acc = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device)
    for j in range(w.shape[1]):
        acc = acc + w[:, j]
    return acc


# ----------------------------------------------------------------------------------------- align
def align_sizes(num_slots: int, num_experts: int, block_m: int) -> tuple:
    """Static sizes of :func:`align_ref`'s outputs: ``(len(sorted_slot_ids), len(block_expert_ids))``."""
    s_max = num_slots + num_experts * (block_m - 1)
    return s_max, -(-s_max // block_m)


def align_ref(topk_ids: torch.Tensor, num_experts: int, block_m: int = 1, expert_map: Optional[torch.Tensor] = None):
    """Group kept slots by (local) expert with static shapes. Slot s = t * k + j.

    Returns ``(sorted_slot_ids [S_max] int32, expert_offsets [E + 1] int32, block_expert_ids [B_max] int32,
    num_kept [1] int32)`` with ``S_max = T*k + E*(block_m - 1)``, ``B_max = ceil(S_max / block_m)``:

    * expert e's kept slots, ascending, sit at ``sorted_slot_ids[expert_offsets[e]:]``; its segment is padded
      with -1 to a multiple of ``block_m``; everything past ``expert_offsets[E]`` is -1;
    * ``block_expert_ids[b]`` is the expert of block b (``block_m`` entries), -1 past the last block;
    * ``num_kept`` counts kept pairs (no padding).

    ``expert_map [E_global] int32`` maps global ids to this rank's ids (-1: not here); slots it maps to -1 and
    slots that are -1 already are not counted: an expert with no kept slot gets no block.
    """
    ids = topk_ids.reshape(-1).long()
    dev = ids.device
    if expert_map is not None:
        ids = torch.where(ids >= 0, expert_map.long()[ids.clamp_min(0)], ids)
    kept = ids >= 0
    counts = torch.bincount(ids[kept], minlength=num_experts)[:num_experts]  # [E]
    padded = (counts + block_m - 1) // block_m * block_m
    offsets = torch.zeros(num_experts + 1, dtype=torch.long, device=dev)
    offsets[1:] = padded.cumsum(0)
    s_max, b_max = align_sizes(ids.numel(), num_experts, block_m)
    sorted_ids = torch.full((s_max,), -1, dtype=torch.int32, device=dev)
    slots = torch.nonzero(kept).flatten()  # ascending slot ids
    if slots.numel():
        e = ids[slots]
        order = torch.sort(e, stable=True).indices
        slots, e = slots[order], e[order]
        first = torch.zeros(num_experts + 1, dtype=torch.long, device=dev)
        first[1:] = counts.cumsum(0)
        rank = torch.arange(slots.numel(), device=dev) - first[e]
        sorted_ids[offsets[e] + rank] = slots.to(torch.int32)
    block_ids = torch.full((b_max,), -1, dtype=torch.int32, device=dev)
    nblocks = padded // block_m
    block_expert = torch.repeat_interleave(torch.arange(num_experts, device=dev), nblocks)
    block_ids[:block_expert.numel()] = block_expert.to(torch.int32)
    num_kept = kept.sum().reshape(1).to(torch.int32)
    return sorted_ids, offsets.to(torch.int32), block_ids, num_kept


# --------------------------------------------------------------------------------------- experts
def activation_ref(gate_up: torch.Tensor, activation: str, interleaved: bool, alpha: float, limit: float):
    """[n, 2I] fp32 gate/up projections -> [n, I]: ``silu(gate) * up`` or gpt-oss's clamped SwiGLU
    ``clamp(gate, max=limit) * sigmoid(alpha * that) * (clamp(up, -limit, limit) + 1)``.
    ``interleaved``: gate and up alternate along 2I (gpt-oss), else gate is the first half."""
    if interleaved:
        gate, up = gate_up[:, 0::2], gate_up[:, 1::2]
    else:
        gate, up = gate_up.chunk(2, dim=-1)
    if activation == "silu":
        return torch.nn.functional.silu(gate) * up
    g = gate.clamp(max=limit)
    u = up.clamp(min=-limit, max=limit)
    return g * torch.sigmoid(g * alpha) * (u + 1)


def experts_ref(hidden, w13, w2, topk_ids, topk_weights, w13_bias=None, w2_bias=None, activation="silu",
                swiglu_alpha=1.702, swiglu_limit=7.0, interleaved=False, shared_w1=None, shared_w3=None,
                shared_w2=None, shared_gate=None):
    """``out [T, H]`` (hidden's dtype) = sum over kept slots of ``w * expert_e(x)`` + shared expert; fp32.

    expert_e(x) = ``act(x @ w13[e]^T + b13[e]) @ w2[e]^T + b2[e]``; shared(x) = ``(silu(x W1^T) * x W3^T) W2^T``,
    times ``sigmoid(x . shared_gate)`` when a gate is given. A token with no kept slot gets exactly 0 routed output.
    """
    T, H = hidden.shape
    x = hidden.float()
    out = torch.zeros(T, H, dtype=torch.float32, device=hidden.device)
    ids = topk_ids.long()
    for e in torch.unique(ids[ids >= 0]).tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        gu = x[tok] @ w13[e].float().T
        if w13_bias is not None:
            gu = gu + w13_bias[e].float()
        a = activation_ref(gu, activation, interleaved, swiglu_alpha, swiglu_limit)
        y = a @ w2[e].float().T
        if w2_bias is not None:
            y = y + w2_bias[e].float()
        out.index_add_(0, tok, y * topk_weights[tok, slot].float()[:, None])
    if shared_w1 is not None:
        s = (torch.nn.functional.silu(x @ shared_w1.float().T) * (x @ shared_w3.float().T)) @ shared_w2.float().T
        if shared_gate is not None:
            s = s * torch.sigmoid(x @ shared_gate.float().reshape(H, 1))
        out = out + s
    return out.to(hidden.dtype)
