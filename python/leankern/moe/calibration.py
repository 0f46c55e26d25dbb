"""MoDES calibration of the layer importance alpha[l, m] (GMLG, arXiv 2511.15690).

>>> alpha = calibrate_alpha(model, batches)                    # [[a_text, a_vision], ...], one row per MoE layer
>>> patch_model(model, SkipConfig(rule="modes", alpha=alpha, tau_text=..., tau_vision=...))

The threshold frontier search over (tau_text, tau_vision) lives in :mod:`leankern.moe.search`.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from . import hf
from .search import kl_per_token

__all__ = ["calibrate_alpha", "answer_positions", "kl_per_position"]

ANSWER_MASK_KEY = "answer_mask"


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # no tqdm: no bar
        return None
    return tqdm(total=total, desc="calibrate_alpha", leave=False)


def answer_positions(answer_mask: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor],
                     shape) -> torch.Tensor:
    """``[B, S]`` bool: positions whose next-token distribution is measured.

    With an ``answer_mask`` ``[B, S]`` (True on answer *tokens*) the distribution that predicts answer token t is the
    one at position t - 1, so the result is ``answer_mask`` shifted left by one (the last position never counts).
    Without one: every position the ``attention_mask`` keeps (all positions without a mask).
    """
    B, S = shape
    if answer_mask is not None:
        a = answer_mask.bool()
        if tuple(a.shape) != (B, S):
            raise ValueError(f"answer_mask: expected shape [B={B}, S={S}] (like input_ids), got {tuple(a.shape)}")
        pos = torch.zeros_like(a)
        pos[:, :-1] = a[:, 1:]
        if attention_mask is not None and attention_mask.dim() == 2:
            pos &= attention_mask.bool().to(pos.device)
        return pos
    if attention_mask is not None and attention_mask.dim() == 2:
        return attention_mask.bool()
    return torch.ones(B, S, dtype=torch.bool)


def kl_per_position(logp: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per row: ``logp`` ``[N, V]`` log-probabilities of p, ``logits_q`` ``[N, V]`` logits of q
    (fp32), clamped at 0. Over the support of p: an entry where p is 0 (e.g. a logit of -inf on a masked vocabulary
    entry) contributes 0, as in the threshold search (:func:`leankern.moe.search.kl_per_token`, the one definition
    both use)."""
    return kl_per_token(logp, logits_q).clamp_min(0.0)


def _logits(model: nn.Module, inputs: Mapping) -> torch.Tensor:
    out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits


def _to_device(batch: Mapping, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def calibrate_alpha(model: nn.Module, batches: Iterable[Mapping], *,
                    answer_mask_fn: Optional[Callable[[Mapping], torch.Tensor]] = None, progress: bool = True,
                    return_kl: bool = False):
    """MoDES's per-layer, per-modality importance ``alpha[l, m]`` from calibration batches.

    For each batch, each MoE layer l (model order, as :func:`leankern.moe.hf.moe_blocks`) and each modality m
    (0 text, 1 vision), the layer's routed experts are disabled for the tokens of modality m
    (:func:`leankern.moe.hf.set_ablation`; shared experts still run, other layers untouched, no skip rule) and
    ``KL(p_orig || p_ablated)`` of the next-token distributions is summed over the measured positions
    (:func:`answer_positions`). Per modality the sums are divided by the number of measured positions (the per-token
    average) and normalised so that ``sum_l alpha[l, m] = 1``.

    Parameters
    ----------
    model : a causal LM with supported sparse-MoE blocks; patched by :func:`leankern.moe.hf.patch_model` or not (then
        patched for the call and unpatched after). Its skip config, ablations and statistics are restored after.
        Modality codes come from the patch's modality function (the config's image / video token ids, or the
        ``modality_fn`` given to ``patch_model``); special tokens (code 2) are never ablated.
    batches : iterable of dicts of model inputs (``input_ids``, ``attention_mask``, pixel values etc. for VL models);
        an optional ``"answer_mask"`` ``[B, S]`` entry (True on answer tokens) and ``"labels"`` (HF convention:
        aligned with ``input_ids``, -100 = not an answer token; used as the answer mask when there is no
        ``"answer_mask"``) are removed before the call.
    answer_mask_fn : ``batch -> [B, S]`` bool answer-token mask (overrides the batch's ``"answer_mask"`` /
        ``"labels"``; it sees the batch without them). Without any, every non-padding position is measured.
    progress : a tqdm bar when tqdm is installed (none otherwise).
    return_kl : also return the per-token average KL ``[L][2]`` before normalisation.

    Returns
    -------
    ``alpha``: list of L ``[a_text, a_vision]`` (floats), usable as ``SkipConfig(rule="modes", alpha=alpha)``.
    A modality that never appears in the batches (e.g. vision in a text-only model), or whose ablations change
    nothing (all KL 0), gets the uniform column ``1 / L``.
    """
    batches = list(batches)
    patched_here = not hf.is_patched(model)
    if patched_here:
        hf.patch_model(model)
    ms = hf._state(model)
    L = len(ms.blocks)
    saved_cfg, saved_abl = ms.config, {k: set(v) for k, v in ms.ablation.items()}
    saved_stats = [(b.__dict__[hf._STATE].kept, b.__dict__[hf._STATE].total) for b in ms.blocks]
    was_training = model.training
    kl_sum = [[0.0, 0.0] for _ in range(L)]
    n_pos = [0, 0]  # measured positions of batches in which modality m appears
    seen = [False, False]
    try:
        dev = next(model.parameters()).device
    except StopIteration:
        dev = torch.device("cpu")
    bar = _progress(len(batches) * (1 + 2 * L), progress)
    try:
        model.eval()
        ms.config = None
        ms.ablation.clear()
        with torch.inference_mode():
            for batch in batches:
                batch = dict(batch)
                amask = batch.pop(ANSWER_MASK_KEY, None)
                labels = batch.pop("labels", None)
                if answer_mask_fn is not None:
                    amask = answer_mask_fn(batch)
                elif amask is None and isinstance(labels, torch.Tensor):
                    amask = labels != -100  # HF convention: labels aligned with input_ids, -100 = not an answer
                inputs = _to_device(batch, dev)
                ids = inputs.get("input_ids")
                if not isinstance(ids, torch.Tensor):
                    raise ValueError("batches: each batch needs 'input_ids' (the modality of each token comes "
                                     "from them)")
                pos = answer_positions(amask, inputs.get("attention_mask"), ids.shape).to(dev)
                codes = ms.codes_for(ids)
                valid = inputs.get("attention_mask")
                valid = codes.new_ones(codes.shape, dtype=torch.bool) if valid is None else valid.bool()
                present = [bool(((codes == m) & valid).any()) for m in (0, 1)]
                logits = _logits(model, inputs)
                logp = torch.log_softmax(logits[pos].float(), dim=-1)  # [N, V]
                npos = int(pos.sum())
                if bar is not None:
                    bar.update(1)
                for m in (0, 1):
                    if not present[m]:
                        if bar is not None:
                            bar.update(L)
                        continue
                    seen[m] = True
                    n_pos[m] += npos
                    for layer in range(L):
                        ms.ablation.clear()
                        hf.set_ablation(model, layer, m)
                        if npos:
                            kl = kl_per_position(logp, _logits(model, inputs)[pos])
                            kl_sum[layer][m] += float(kl.double().sum())
                        if bar is not None:
                            bar.update(1)
                ms.ablation.clear()
    finally:
        if bar is not None:
            bar.close()
        ms.ablation.clear()
        ms.ablation.update(saved_abl)
        ms.config = saved_cfg
        for b, (kept, total) in zip(ms.blocks, saved_stats):
            st = b.__dict__[hf._STATE]
            st.kept, st.total = kept, total
        model.train(was_training)
        if patched_here:
            hf.unpatch_model(model)
    kl_avg = [[kl_sum[l][m] / n_pos[m] if n_pos[m] else 0.0 for m in (0, 1)] for l in range(L)]
    alpha = [[0.0, 0.0] for _ in range(L)]
    for m in (0, 1):
        col = [kl_avg[l][m] for l in range(L)]
        s = sum(col)
        if not seen[m] or not (s > 0) or not math.isfinite(s):
            for l in range(L):
                alpha[l][m] = 1.0 / L
        else:
            for l in range(L):
                alpha[l][m] = col[l] / s
    return (alpha, kl_avg) if return_kl else alpha
