"""MoE dispatch that really skips experts: routing, MoDES skip rules, aligned dispatch, grouped experts.

MoDES (arXiv 2511.15690) skips most routed experts of an MoE multimodal LLM with little accuracy loss;
here a skipped (token, expert) pair is never computed and an expert with no kept pair is never read:

>>> ids, w = leankern.moe.route(router_logits, top_k=8)                       # [T, 8] int32, fp32
>>> ids, w = leankern.moe.skip(ids, w, "modes", alpha=(0.03, 0.01), tau=(0.004, 0.002), modality=modality)
>>> out = leankern.moe.experts(hidden, w13, w2, ids, w)                       # [T, H]

Skipped slots carry id -1 (static shapes, no host synchronisation). Numerics: :mod:`leankern.moe.ref`.
Model level: :func:`patch_model` (Hugging Face drop-in, :mod:`leankern.moe.hf`), :func:`calibrate_alpha`
(:mod:`leankern.moe.calibration`), :func:`frontier_search` / :func:`search_thresholds` (the threshold search,
:mod:`leankern.moe.search`), :mod:`leankern.moe.parallel` (expert parallelism on torch.distributed).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import ops, ref, search
from .config import SkipConfig
from .search import InfeasibleTargetError, SearchResult, frontier_search, grid_search, search_thresholds, tau_grid

__all__ = ["route", "skip", "align", "experts", "moe_forward", "skip_params_for", "SkipConfig", "ops", "ref",
           "search", "tau_grid", "frontier_search", "grid_search", "search_thresholds", "SearchResult",
           "InfeasibleTargetError", "parallel", "expert_map", "ep_moe_forward", "EPMoE"]

# name -> (submodule, attribute or None for the module itself)
_LAZY = {"parallel": ("parallel", None), "expert_map": ("parallel", "expert_map"),
         "ep_moe_forward": ("parallel", "ep_moe_forward"), "EPMoE": ("parallel", "EPMoE"),
         "quantized_experts": ("quantized", "quantized_experts")}


def __getattr__(name):
    """Names that load on first use: the torch.distributed-based ones (:mod:`leankern.moe.parallel`) and
    ``quantized_experts`` (its ``torch.compiler.disable`` imports torch._dynamo, ~2.5 s that ``import leankern``
    does not pay)."""
    if name in _LAZY:
        import importlib

        sub, attr = _LAZY[name]
        mod = importlib.import_module(f"{__name__}.{sub}")
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _modality32(modality: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if modality is None:
        return None
    if not isinstance(modality, torch.Tensor):
        raise TypeError(f"modality: expected a torch.Tensor of codes 0/1/2, got {type(modality).__name__}")
    if modality.dtype not in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8, torch.bool):
        raise TypeError(f"modality: expected an integer tensor of codes 0/1/2, got {modality.dtype}")
    return ops.modality_to_int32(modality.reshape(-1))  # int64: saturated, so no code >= 2^32 wraps into 0..2


def skip_params_for(rule: str, *, alpha=None, tau=None, beta=None, p=None, k=None) -> list:
    """The ``skip_params`` list of the ops for ``rule`` from named arguments (what :func:`skip` passes)."""
    if rule == "none":
        return []
    if rule == "modes":
        if alpha is None or tau is None:
            raise ValueError("alpha, tau: rule 'modes' needs alpha=(alpha_text, alpha_vision) and "
                             "tau=(tau_text, tau_vision)")
        a = [float(alpha), float(alpha)] if isinstance(alpha, (int, float)) else [float(v) for v in alpha]
        t = [float(tau), float(tau)] if isinstance(tau, (int, float)) else [float(v) for v in tau]
        if len(a) != 2 or len(t) != 2:
            raise ValueError(f"alpha, tau: expected pairs (text, vision), got alpha={alpha}, tau={tau}")
        return a + t
    value = {"naee": beta, "top_p": p, "min_p": p, "top_k": k}.get(rule)
    if rule not in ref.SKIP_RULES:
        raise ValueError(f"rule: expected one of {ref.SKIP_RULES}, got {rule!r}")
    if value is None:
        arg = {"naee": "beta", "top_p": "p", "min_p": "p", "top_k": "k"}[rule]
        raise ValueError(f"{arg}: rule {rule!r} needs {arg}=..., got None")
    return [float(value)]


def route(router_logits: torch.Tensor, top_k: int, *, scoring: str = "softmax", renormalize: bool = True,
          n_group: int = 1, topk_group: int = 1, correction_bias: Optional[torch.Tensor] = None,
          routed_scaling_factor: float = 1.0, skip_rule: str = "none", skip_params: Sequence[float] = (),
          modality: Optional[torch.Tensor] = None, skip_renormalize: Optional[bool] = None):
    """Top-k routing (Qwen3 / Mixtral softmax, DeepSeek-V3 / Kimi sigmoid + bias + groups), fused with a skip rule.

    Parameters
    ----------
    router_logits : ``[T, E]`` fp32/bf16/fp16.
    top_k : slots per token (<= 64).
    scoring : ``"softmax"`` or ``"sigmoid"``.
    renormalize : scale the selected weights to sum 1 (before ``routed_scaling_factor``).
    n_group, topk_group : grouped selection (DeepSeek): only experts of the ``topk_group`` best of ``n_group``
        groups are eligible.
    correction_bias : ``[E]``: added to the scores for selection only (weights stay unbiased); finite values (an
        inf / NaN entry is a ValueError naming the expert).
    skip_rule, skip_params, modality, skip_renormalize : as :func:`skip` (its positional form).

    Returns
    -------
    (topk_ids, topk_weights) : ``[T, k]`` int32 (highest score first, ties to the lowest id; -1 = skipped) and
        ``[T, k]`` fp32.
    """
    renorm = (skip_rule == "naee") if skip_renormalize is None else bool(skip_renormalize)
    return torch.ops.leankern.moe_route(
        router_logits, int(top_k), scoring, bool(renormalize), int(n_group), int(topk_group), correction_bias,
        float(routed_scaling_factor), skip_rule, [float(v) for v in skip_params], _modality32(modality), renorm)


def skip(topk_ids: torch.Tensor, topk_weights: torch.Tensor, rule: str = "modes", *, alpha=None, tau=None,
         beta=None, p=None, k=None, modality: Optional[torch.Tensor] = None, renormalize: Optional[bool] = None,
         num_experts: Optional[int] = None):
    """Mark skipped routed slots with id -1 (weight 0).

    Rules: ``"modes"`` (``alpha=(a_text, a_vision)`` of this layer, ``tau=(tau_text, tau_vision)``; keep iff
    ``alpha[m] * w >= tau[m]`` or the token's modality is 2), ``"naee"`` (``beta``), ``"top_p"`` (``p``),
    ``"min_p"`` (``p``), ``"top_k"`` (``k``), ``"none"``. ``modality [T]``: 0 text, 1 vision, 2 never skip
    (None: all text, e.g. decode). ``renormalize``: default True for NAEE only (MoDES keeps weights as they are).

    Shape: ``topk_ids [T, k]`` int32 (int64 accepted), ``topk_weights [T, k]`` (cast to fp32); returns both, same shapes.

    Ids: an id < -1 is a ``ValueError`` (never turned into a skipped slot). skip does not know E: an id >= E passes
    through unchanged (and :func:`experts` / :func:`align` reject it) unless the rule drops its slot; pass
    ``num_experts=E`` to reject ids outside ``[-1, E)`` here (one min/max pass over the ids).
    """
    params = skip_params_for(rule, alpha=alpha, tau=tau, beta=beta, p=p, k=k)
    renorm = (rule == "naee") if renormalize is None else bool(renormalize)
    bound = ops.ID_BOUND_INT32
    if num_experts is not None:
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or not 1 <= num_experts < 2**31:
            raise ValueError(f"num_experts: expected an int in [1, 2^31) (or None), got {num_experts!r}")
        bound = num_experts
    # int64 ids, or num_experts given: checked here first, on every backend (int64: before narrowing, no id wraps)
    ids = ops.ids_to_int32(topk_ids, bound)
    if num_experts is not None and ids is topk_ids and isinstance(ids, torch.Tensor):
        ops.check_ids_values(ids, bound, no_duplicates=False)
    w = topk_weights.float() if topk_weights.dtype != torch.float32 else topk_weights
    return torch.ops.leankern.moe_skip(ids, w, rule, params, _modality32(modality), renorm)  # the op: ids >= -1


def align(topk_ids: torch.Tensor, num_experts: int, *, block_m: int = 1, expert_map: Optional[torch.Tensor] = None):
    """Group kept slots (slot = t * k + j) by expert, static shapes, no host synchronisation.

    Returns ``(sorted_slot_ids [T*k + E*(block_m-1)], expert_offsets [E+1], block_expert_ids
    [ceil(S_max/block_m)], num_kept [1])``, all int32 (:func:`leankern.moe.ref.align_ref` has the layout).
    ``expert_map [E_global]`` int32 maps global ids to local ones (-1: expert not on this rank).

    Ids outside ``[-1, E)`` (``E_global`` with an expert_map) are a ``ValueError`` (int64 ids are checked before
    they are narrowed to int32). An expert twice in one row is *not* rejected here (align is well defined on it:
    both slots are grouped under that expert) and testing it would cost align a pass per row: keeping the ids of
    a row distinct is the caller's responsibility; :func:`experts` rejects such ids.
    """
    bound = ops.ID_BOUND_INT32  # where the op will reject the arguments anyway: only no wrapping
    if expert_map is None and 1 <= int(num_experts) < 2**20:
        bound = int(num_experts)
    elif isinstance(expert_map, torch.Tensor) and expert_map.dim() == 1 and 1 <= expert_map.shape[0] < 2**31:
        bound = expert_map.shape[0]
    ids = ops.ids_to_int32(topk_ids, bound)  # int64: checked in [-1, bound) first; int32: as it is (the op checks)
    return torch.ops.leankern.moe_align(ids, int(num_experts), int(block_m), expert_map)


def experts(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
            topk_weights: torch.Tensor, *, w13_bias=None, w2_bias=None, activation: str = "silu",
            swiglu_alpha: float = 1.702, swiglu_limit: float = 7.0, interleaved: bool = False,
            shared_w1=None, shared_w3=None, shared_w2=None, shared_gate=None) -> torch.Tensor:
    """Routed SwiGLU experts over kept (token, expert) pairs only, plus an optional shared expert.

    Parameters
    ----------
    hidden : ``[T, H]`` fp32/bf16/fp16.
    w13 : ``[E, 2I, H]`` gate and up projections (gate first, or alternating with ``interleaved=True``);
        rows or columns contiguous (a transposed view such as gpt-oss's ``gate_up_proj.transpose(1, 2)`` is read
        in place).
    w2 : ``[E, H, I]`` down projections, same dtype as w13.
    topk_ids, topk_weights : ``[T, k]`` int32 (-1 = skipped) and fp32: the routing weight multiplies the expert's
        output (after ``w2_bias``).
    activation : ``"silu"`` (``silu(gate) * up``) or ``"swiglu_oai"`` (gpt-oss: clamped, ``swiglu_alpha``,
        ``swiglu_limit``).
    shared_w1, shared_w3, shared_w2 : ``[Is, H]``, ``[Is, H]``, ``[H, Is]``: a shared SwiGLU expert every token
        runs (never skipped); ``shared_gate [H]``: its output is scaled by ``sigmoid(x . shared_gate)``.

    Returns
    -------
    ``[T, H]`` in hidden's dtype; fp32 accumulation. A token whose every slot is -1 gets exactly the shared output
    (0 without one). An expert with no kept slot has none of its weights read.
    """
    E = w13.shape[0] if isinstance(w13, torch.Tensor) and w13.dim() == 3 else ops.ID_BOUND_INT32
    ids = ops.ids_to_int32(topk_ids, E)  # int64: checked in [-1, E) first (no id >= 2^31 wraps); int32: as it is
    w = topk_weights.float() if topk_weights.dtype != torch.float32 else topk_weights
    return torch.ops.leankern.moe_experts(hidden, w13, w2, ids, w, w13_bias, w2_bias, activation, float(swiglu_alpha),
                                          float(swiglu_limit), bool(interleaved), shared_w1, shared_w3, shared_w2,
                                          shared_gate)


def moe_forward(hidden: torch.Tensor, router_logits: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, top_k: int,
                *, scoring: str = "softmax", renormalize: bool = True, n_group: int = 1, topk_group: int = 1,
                correction_bias=None, routed_scaling_factor: float = 1.0, skip_rule: str = "none",
                skip_params: Sequence[float] = (), modality=None, skip_renormalize=None, config=None, layer: int = 0,
                **expert_kwargs):
    """route (+ skip) then experts in one call. Shape: hidden ``[T, H]``, router_logits ``[T, E]`` -> ``[T, H]`` in
    hidden's dtype (fp32 accumulation, as :func:`experts`).

    ``config``: a :class:`SkipConfig` (calibrated, or loaded from JSON) instead of ``skip_rule`` / ``skip_params`` /
    ``skip_renormalize``; ``layer`` picks its MoDES alpha row (0-based MoE layer). ``expert_kwargs`` go to
    :func:`experts` (biases, activation, shared expert).
    """
    if config is not None:
        if not isinstance(config, SkipConfig):
            raise TypeError(f"config: expected a leankern.moe.SkipConfig, got {type(config).__name__}")
        if skip_rule != "none" or len(skip_params) or skip_renormalize is not None:
            raise ValueError("config: give the skip rule either as config or as skip_rule / skip_params / "
                             "skip_renormalize, not both")
        skip_rule, skip_params = config.rule, config.skip_params(layer)
        skip_renormalize = config.skip_renormalize()
    if isinstance(router_logits, torch.Tensor) and router_logits.dim() == 2:
        if isinstance(hidden, torch.Tensor) and hidden.dim() == 2 and router_logits.shape[0] != hidden.shape[0]:
            raise ValueError(f"router_logits: expected shape [T={hidden.shape[0]}, E] (T: the tokens of hidden, of "
                             f"shape {tuple(hidden.shape)}), got {tuple(router_logits.shape)}")
        if isinstance(w13, torch.Tensor) and w13.dim() == 3 and router_logits.shape[1] != w13.shape[0]:
            raise ValueError(f"router_logits: expected shape [T, E={w13.shape[0]}] (E: the experts of w13, of shape "
                             f"{tuple(w13.shape)}), got {tuple(router_logits.shape)}")
    ids, w = route(router_logits, top_k, scoring=scoring, renormalize=renormalize, n_group=n_group,
                   topk_group=topk_group, correction_bias=correction_bias,
                   routed_scaling_factor=routed_scaling_factor, skip_rule=skip_rule, skip_params=skip_params,
                   modality=modality, skip_renormalize=skip_renormalize)
    return experts(hidden, w13, w2, ids, w, **expert_kwargs)


# Model-level utilities (imported last: hf.py calls route / skip / experts defined above).
from .hf import (clear_ablation, patch_model, reset_skip_stats, set_ablation, set_skip_config, skip_stats,  # noqa: E402
                 unpatch_model)
from .calibration import calibrate_alpha  # noqa: E402

__all__ += ["patch_model", "unpatch_model", "skip_stats", "reset_skip_stats", "set_ablation", "clear_ablation",
            "set_skip_config", "calibrate_alpha"]
from .quantized import QuantizedExperts, quantize_experts  # noqa: E402

__all__ += ["QuantizedExperts", "quantize_experts", "quantized_experts"]
