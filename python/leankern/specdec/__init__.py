"""Batched speculative verification (Spec-VLA relaxed acceptance, lossless rejection, typical, tree).

One call verifies the drafts of a whole batch in the vLLM-style ragged layout:

>>> out, num_accepted = leankern.specdec.verify(draft_token_ids, cu_num_draft_tokens,
...                                            target_logits, bonus_logits, mode="greedy")

Every backend (C++ on CPU, Triton on GPU, the pure-PyTorch reference) returns the same token ids
bit for bit, random modes included (typical mode: except for a draft whose probability lies
within ~1e-12 relative of the threshold, an fp64 entropy sum): random numbers are inputs (``uniforms``, or ``seed`` /
``offset`` expanded by :func:`~leankern.specdec.numerics.uniforms_from_seed`) and probabilities
are integer weights (:mod:`leankern.specdec.numerics`; docs/specdec.md).

:func:`generate` (speculative decoding of a Hugging Face causal LM with a draft model) is the function
``leankern.specdec.generate``; it lives in the submodule of the same name, whose other public name,
:class:`GenerateResult`, is exported here too (``from leankern.specdec.generate import GenerateResult, generate``
also works: ``from`` imports find the submodule in ``sys.modules``; ``import leankern.specdec.generate as m`` binds
the function, ``sys.modules["leankern.specdec.generate"]`` is the module).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ..core import narrow_to_int32
from . import numerics, ops, ref
from .numerics import target_probs, uniforms_from_seed
from .ref import CHAIN_MODES, TREE_MODES

__all__ = ["verify", "verify_tree", "generate", "GenerateResult", "uniforms_from_seed", "target_probs", "CHAIN_MODES",
           "TREE_MODES", "numerics", "ref", "ops"]

_NO_RANGE = (0, -1)


def _action_bounds(mode: str, relax_radius: int, action_range, V: int) -> Tuple[int, int]:
    """(lo, hi) for the op; (0, -1) = no action range (relaxation applies nowhere)."""
    if action_range is None:
        if mode == "relaxed" and relax_radius > 0:
            # Why required: relaxing every id would treat e.g. pad id 32000 as one bin from 31999
            raise ValueError("action_range: mode='relaxed' with relax_radius > 0 needs the inclusive action-id range "
                             f"(lo, hi) the relaxation applies to (e.g. (31744, 31999) for OpenVLA; (0, V - 1) for "
                             f"every id), got None")
        return _NO_RANGE
    lo, hi = (int(v) for v in action_range)
    if not 0 <= lo <= hi < V:
        raise ValueError(f"action_range: expected (lo, hi) with 0 <= lo <= hi < V={V}, got {tuple(action_range)}")
    return lo, hi


def _as_int32(t, check=None):
    """Hugging Face code holds int64 ids; the ops take int32. int32 (or any non-int64) input passes untouched.

    An int64 value outside int32 must not wrap onto a valid one (``2**32 + 5 -> 5``, ``top_k 2**32 + 1 -> 1``):
    on CPU outside ``torch.compile``, ``check`` (the op's own value check, given when the argument's bounds are
    known) runs on the int64 values first, so its message states the actual values; otherwise the narrowing
    saturates, a value beyond int32 becoming ``-2**31`` or ``2**31 - 1``, which the op's own checks reject (ids
    outside ``[0, V)``, counts that do not add up, tree indices outside their request, a negative ``top_k``) before
    any row is read (:func:`leankern.core.narrow_to_int32`). A ``top_k`` beyond int32 keeps every id, as
    ``2**31 - 1`` does.
    """
    return narrow_to_int32(t, check)


def _dims(t, dim: int, axis: int):
    """``t.shape[axis]`` when ``t`` is a ``dim``-d tensor, else None (the op's shape checks then reject it)."""
    return t.shape[axis] if isinstance(t, torch.Tensor) and t.dim() == dim else None


def _narrow_ids_and_counts(ids, ids_name: str, cu, cu_name: str, logits, total_name: str, min_count: int):
    """int32 ``ids [N]`` and inclusive cumulative counts ``cu [B]`` (see :func:`_as_int32`); on CPU, int64 values
    are checked against ``[0, V)`` and ``N`` with the op's messages when ``logits`` is ``[N, V]``."""
    if getattr(ids, "dtype", None) != torch.int64 and getattr(cu, "dtype", None) != torch.int64:
        return ids, cu  # nothing to narrow (the per-call cost of this function: ~1.4 us)
    V, N = _dims(logits, 2, 1), _dims(logits, 2, 0)
    id_check = cu_check = None
    if V is not None and 1 <= V <= ops.MAX_VOCAB and _dims(ids, 1, 0) == N:
        id_check = lambda t: ops._check_ids(ids_name, t, V)  # noqa: E731
    if N is not None and _dims(cu, 1, 0) is not None:
        cu_check = lambda t: ops._check_cumulative(cu_name, t, N, total_name, min_count)  # noqa: E731
    return _as_int32(ids, id_check), _as_int32(cu, cu_check)


def verify(draft_token_ids: torch.Tensor, cu_num_draft_tokens: torch.Tensor, target_logits: torch.Tensor,
           bonus_logits: torch.Tensor, *, mode: str = "greedy", draft_probs: Optional[torch.Tensor] = None,
           uniforms: Optional[torch.Tensor] = None, seed: Optional[int] = None, offset: int = 0,
           temperature: Optional[torch.Tensor] = None, top_k: Optional[torch.Tensor] = None,
           top_p: Optional[torch.Tensor] = None, relax_radius: int = 0,
           action_range: Optional[Sequence[int]] = None, typical: Tuple[float, float] = (0.09, 0.3),
           max_drafts: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Verify the drafts of B requests against the target model's logits in one call.

    Request ``b`` owns drafts ``cu[b-1]:cu[b]`` (``cu[-1] = 0``); it accepts a prefix of them and
    then emits one more token: the correction at the first rejected position, or the bonus token
    (from ``bonus_logits[b]``) when every draft is accepted.

    Modes (docs/specdec.md has the exact rules):

    * ``"greedy"``: accept while ``draft == argmax(target row)`` (ties to the lowest id).
    * ``"relaxed"`` (Spec-VLA): accept while ``|draft - argmax| <= relax_radius`` when both ids lie in
      ``action_range`` (inclusive), exact match otherwise; accepted positions emit the draft id.
      ``relax_radius=0`` is greedy exactly; ``action_range`` is required when ``relax_radius > 0``
      (``(0, V - 1)`` relaxes every id).
    * ``"rejection"`` (lossless): accept ``x`` with probability ``min(1, p(x) / q(x))`` (``q`` one-hot
      when ``draft_probs`` is None), resample the first rejection from ``norm(max(0, p - q))``, the
      bonus from ``p`` of the bonus row. The emitted tokens are distributed exactly as sampling
      from the target (up to the integer weights' ``V * 2**-40`` total variation).
    * ``"typical"`` (Medusa): accept while ``p(x) > min(eps, delta * exp(-H(p)))``, correction = argmax.

    ``temperature`` / ``top_k`` / ``top_p`` shape the target's ``p`` per request before verification
    (rejection, typical); temperature 0 verifies that request greedily. A row with NaN, +inf, or
    no finite value has no distribution: it accepts nothing and emits ``-1``. ``draft_probs`` are
    read clamped to [0, 1] (NaN as 0). A temperature so small that ``logits / t`` overflows fp32
    verifies that row with the argmax rules (the ``t -> 0`` limit).

    Parameters
    ----------
    uniforms : [T + B] fp32 in [0, 1), optional
        ``uniforms[t]`` decides draft ``t``; ``uniforms[T + b]`` samples request ``b``'s extra token.
        Needed by ``"rejection"``; alternatively give ``seed`` (and ``offset``, advanced by the caller
        by ``T + B`` per call): ``uniforms_from_seed(seed, offset, T + B)``.
    max_drafts : int, optional
        Output width - 1. Defaults to the largest draft count (a host sync on GPU: pass it to capture
        the call in a CUDA graph). Under ``torch.compile`` the default width is data dependent, the eager
        output either way: ``fullgraph=False`` breaks the graph to read it; ``fullgraph=True`` captures it
        (the op runs at width ``T + 1`` and the output keeps its first ``max_drafts + 1`` columns, a
        data-dependent shape). Pass it for a static output shape.

    Ids, counts and ``top_k`` may be int64 (narrowed to int32 here; a value outside int32 is an error, never
    wrapped onto a valid one); the op itself takes int32.

    Shape:
        draft_token_ids [T] int32; cu_num_draft_tokens [B] int32 (inclusive cumulative counts);
        target_logits [T, V] and bonus_logits [B, V] fp32/bf16/fp16; draft_probs [T, V];
        temperature [B] fp32, top_k [B] int32 (0 = off), top_p [B] fp32 (1 = off);
        returns output_token_ids [B, max_drafts + 1] int32 (-1 after the emitted tokens),
        num_accepted [B] int32 (accepted drafts, not counting the extra token).
    """
    draft_token_ids, cu_num_draft_tokens = _narrow_ids_and_counts(
        draft_token_ids, "draft_token_ids", cu_num_draft_tokens, "cu_num_draft_tokens", target_logits,
        "T (draft_token_ids.numel())", 0)
    top_k = _as_int32(top_k)
    if uniforms is None and seed is not None:
        n = draft_token_ids.numel() + cu_num_draft_tokens.numel()
        uniforms = uniforms_from_seed(seed, offset, n, device=target_logits.device)
    width = None  # traced with max_drafts=None: the output's width (see below)
    if max_drafts is None:
        cu = cu_num_draft_tokens
        counts = torch.diff(cu, prepend=cu.new_zeros(1))
        # within [0, T]: a count outside it (counts that do not add up to T, or an int32 difference that wrapped,
        # e.g. [2^31 - 1, -2]) is bad input, which the op then reports
        T = draft_token_ids.numel() if isinstance(draft_token_ids, torch.Tensor) else 0
        max_drafts = min(max(int(counts.max()), 0), T) if counts.numel() else 0
        if counts.numel() and torch.compiler.is_compiling():
            # Traced, the width is data dependent (torch.compile(fullgraph=True) captures the count as an unbacked
            # SymInt; fullgraph=False breaks the graph above) and the op takes an int: run it at the static width
            # T + 1 (>= every count when the counts add up to T, else the op rejects them) and keep the first
            # max_drafts + 1 columns, all -1 beyond them: the eager output, shape and values
            width, max_drafts = max_drafts + 1, T
    lo, hi = _action_bounds(mode, relax_radius, action_range, target_logits.shape[-1])
    eps, delta = typical
    out, num_accepted = torch.ops.leankern.specdec_verify(
        draft_token_ids, cu_num_draft_tokens, target_logits, bonus_logits, draft_probs, uniforms, temperature, top_k,
        top_p, mode, int(max_drafts), int(relax_radius), lo, hi, float(eps), float(delta))
    if width is not None:
        out = out[:, :width].contiguous()
    return out, num_accepted


def verify_tree(tree_token_ids: torch.Tensor, cu_num_nodes: torch.Tensor, node_logits: torch.Tensor,
                retrieve_indices: torch.Tensor, *, mode: str = "greedy", temperature: Optional[torch.Tensor] = None,
                relax_radius: int = 0, action_range: Optional[Sequence[int]] = None,
                typical: Tuple[float, float] = (0.09, 0.3)) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Verify a draft tree per request (Medusa / EAGLE layout): the longest accepted root-to-leaf prefix wins.

    Request ``b`` owns nodes ``cu[b-1]:cu[b]`` of ``tree_token_ids`` and ``node_logits``; local node 0
    is the root (the last committed token), ``node_logits`` row of a node is the target's prediction
    for the token after it. Path ``p`` visits local nodes ``retrieve_indices[b, p, 0] = 0, ...``
    (``-1`` padding; a path whose column 0 is ``-1`` is unused). Position ``j >= 1`` of a path
    verifies ``tree_token_ids[node_j]`` against the row of ``node_{j-1}`` with the chain rules of
    :func:`verify` (``"greedy"``, ``"relaxed"``, ``"typical"``). The path with the most accepted
    positions wins (ties: lowest path index); the extra token is the argmax of its last accepted
    node's row. ``"rejection"`` is not offered for trees: per-path rejection is not lossless over
    several paths (it needs recursive multi-draft residuals).

    Shape:
        tree_token_ids [N] int32; cu_num_nodes [B] int32 (inclusive, each request >= 1 node);
        node_logits [N, V] fp32/bf16/fp16; retrieve_indices [B, P, D+1] int32; temperature [B] fp32;
        returns output [B, D+1] int32 (accepted tokens, extra token, -1 after), num_accepted [B] int32,
        best_path [B] int32 (-1 when a request has no path).

    Ids, counts and indices may be int64 (narrowed to int32 here; a value outside int32 is an error, never
    wrapped onto a valid one).
    """
    tree_token_ids, cu_num_nodes = _narrow_ids_and_counts(tree_token_ids, "tree_token_ids", cu_num_nodes,
                                                          "cu_num_nodes", node_logits, "N (tree_token_ids.numel())", 1)
    retrieve_indices = _as_int32(retrieve_indices)
    lo, hi = _action_bounds(mode, relax_radius, action_range, node_logits.shape[-1])
    eps, delta = typical
    return torch.ops.leankern.specdec_verify_tree(tree_token_ids, cu_num_nodes, node_logits, retrieve_indices,
                                                  temperature, mode, int(relax_radius), lo, hi, float(eps),
                                                  float(delta))


# Last: the package attribute ``generate`` is the function, not the submodule (importing the submodule bound it to
# the module; this import rebinds it). generate.py imports verify from here at call time.
from .generate import GenerateResult, generate  # noqa: E402
