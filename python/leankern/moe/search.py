"""MoDES's threshold frontier search: the cheapest (tau_text, tau_vision) that skips at least a target ratio.

MoDES (arXiv 2511.15690), calibration: minimise the calibration KL subject to ``skip ratio >= target`` over an N x M
grid of thresholds. Both the skip ratio and the KL are taken to be non-decreasing in each threshold (a higher threshold
only ever drops more slots), so a staircase walk over the grid finds the grid optimum with at most N + M - 1
evaluations instead of N x M:

>>> taus = tau_grid(16)                                   # 2 * sigmoid(10 (x - 1)), x = 0 .. 1
>>> res = frontier_search(evaluate, taus, taus, target_skip=0.8)   # evaluate(tau_t, tau_v) -> (kl, skip_ratio)
>>> res.tau_text, res.tau_vision, res.kl, res.skip_ratio, res.evaluations

:func:`grid_search` evaluates every cell (the definition the walk is tested against). :func:`search_thresholds`
runs the walk on a model patched by :mod:`leankern.moe.hf` and returns a ``SkipConfig(rule="modes")``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch

from .config import SkipConfig

__all__ = ["tau_grid", "SearchResult", "InfeasibleTargetError", "frontier_search", "grid_search",
           "search_thresholds", "threshold_evaluator", "kl_per_token"]

Evaluate = Callable[[float, float], Tuple[float, float]]


def tau_grid(n: int, steepness: float = 10.0) -> List[float]:
    """``n`` ascending thresholds ``tau = 2 * sigmoid(steepness * (x - 1))`` with x linear in [0, 1].

    Dense near 0 (where the GMLG scores ``alpha * w`` of a many-layer model live), 1.0 at x = 1; with the default
    steepness the smallest is ``2 * sigmoid(-10) ~ 9.1e-5``. ``n = 1`` gives ``[1.0]``.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    if not (math.isfinite(steepness) and steepness > 0):
        raise ValueError(f"steepness: expected a finite number > 0, got {steepness!r}")
    n = int(n)
    xs = [1.0] if n == 1 else [i / (n - 1) for i in range(n)]
    return [2.0 / (1.0 + math.exp(-steepness * (x - 1.0))) for x in xs]


@dataclasses.dataclass
class SearchResult:
    """The point a search returns.

    tau_text, tau_vision : the thresholds (``taus_text[i]``, ``taus_vision[j]``).
    kl, skip_ratio : what ``evaluate`` returned there.
    evaluations : calls of ``evaluate`` made by this search (cache hits not counted).
    i, j : grid indices.
    visited : the (i, j) cells the search looked at, in order (cached or evaluated).
    violations : monotonicity violations seen between consecutive cells of the walk (0 for :func:`grid_search`);
        non-zero means the assumption the walk relies on does not hold for this ``evaluate`` and the result may
        not be the grid optimum.
    """

    tau_text: float
    tau_vision: float
    kl: float
    skip_ratio: float
    evaluations: int
    i: int
    j: int
    visited: List[Tuple[int, int]] = dataclasses.field(default_factory=list)
    violations: int = 0

    def to_config(self, alpha, renormalize: Optional[bool] = None) -> SkipConfig:
        """``SkipConfig(rule="modes")`` with these thresholds and the per-layer ``alpha`` ([L, 2] list or tensor)."""
        return SkipConfig(rule="modes", alpha=_alpha_list(alpha), tau_text=float(self.tau_text),
                          tau_vision=float(self.tau_vision), renormalize=renormalize)


class InfeasibleTargetError(ValueError):
    """No threshold pair of the grid reaches the target skip ratio (``best_skip_ratio``: the most any reached)."""

    def __init__(self, target: float, best_skip_ratio: float, evaluations: int):
        self.target = target
        self.best_skip_ratio = best_skip_ratio
        self.evaluations = evaluations
        super().__init__(f"target_skip: no threshold pair of the grid reaches a skip ratio >= {target:g} (the most "
                         f"any evaluated pair reached is {best_skip_ratio:g}); extend the grid towards larger "
                         f"thresholds or lower the target")


def _check_grid(name: str, taus: Sequence[float]) -> List[float]:
    t = [float(v) for v in taus]
    if not t:
        raise ValueError(f"{name}: expected at least one threshold, got an empty grid")
    if any(not math.isfinite(v) for v in t):
        raise ValueError(f"{name}: expected finite thresholds, got {t}")
    if any(b <= a for a, b in zip(t, t[1:])):
        raise ValueError(f"{name}: expected strictly increasing thresholds, got {t}")
    return t


class _Evaluator:
    """``evaluate`` behind a cache keyed by grid cell (i, j); counts real calls."""

    def __init__(self, evaluate: Evaluate, tt: List[float], tv: List[float], cache: Optional[dict]):
        self.evaluate, self.tt, self.tv = evaluate, tt, tv
        self.cache = {} if cache is None else cache
        self.calls = 0
        self.visited: List[Tuple[int, int]] = []

    def __call__(self, i: int, j: int) -> Tuple[float, float]:
        self.visited.append((i, j))
        hit = self.cache.get((i, j))
        if hit is not None:
            tau_t, tau_v, kl, ratio = hit
            if tau_t != self.tt[i] or tau_v != self.tv[j]:
                raise ValueError(f"cache: cell {(i, j)} holds thresholds {(tau_t, tau_v)} but this grid has "
                                 f"{(self.tt[i], self.tv[j])}; use one cache per pair of grids")
            return kl, ratio
        out = self.evaluate(self.tt[i], self.tv[j])
        self.calls += 1
        try:
            kl, ratio = (float(v) for v in out)
        except (TypeError, ValueError):
            raise TypeError(f"evaluate: expected a pair (kl, skip_ratio) of numbers, got {out!r}") from None
        if not (math.isfinite(kl) and math.isfinite(ratio)):
            raise ValueError(f"evaluate({self.tt[i]!r}, {self.tv[j]!r}): expected finite (kl, skip_ratio), "
                             f"got {(kl, ratio)}")
        self.cache[(i, j)] = (self.tt[i], self.tv[j], kl, ratio)
        return kl, ratio


def _better(kl: float, ij: Tuple[int, int], best) -> bool:
    """Minimum KL first, then the lowest (i, j) (lexicographic)."""
    return best is None or kl < best[0] or (kl == best[0] and ij < best[1])


def frontier_search(evaluate: Evaluate, taus_text: Sequence[float], taus_vision: Sequence[float],
                    target_skip: float, *, cache: Optional[dict] = None) -> SearchResult:
    """Staircase walk for ``min KL subject to skip_ratio >= target_skip`` over the grid taus_text x taus_vision.

    Parameters
    ----------
    evaluate : ``evaluate(tau_text, tau_vision) -> (kl, skip_ratio)``; assumed non-decreasing in each threshold
        (both outputs). Called at most ``N + M - 1`` times, never twice for a cell.
    taus_text, taus_vision : strictly increasing grids (N and M thresholds), e.g. :func:`tau_grid`.
    target_skip : the skip ratio to reach (a cell is *feasible* iff ``skip_ratio >= target_skip``).
    cache : optional dict ``{(i, j): (tau_text, tau_vision, kl, skip_ratio)}`` filled by this call; pass the
        same dict to later searches on the same grids (another target, :func:`grid_search`) to skip cells already
        evaluated. A cell whose stored thresholds differ from this grid's raises ``ValueError``.

    Returns
    -------
    :class:`SearchResult` of the feasible cell of minimum KL **among the cells the walk visited**, ties broken by
    the lowest (i, j) in lexicographic order. Under the monotonicity assumption this is exactly the cell
    :func:`grid_search` returns (same KL, same (i, j)).

    Raises
    ------
    InfeasibleTargetError (a ``ValueError``) when no visited cell is feasible; the walk then has evaluated the
    whole last column ``(i, M - 1)``, which includes the cell of the largest skip ratio ``(N - 1, M - 1)``, so
    under the assumption no cell of the grid is feasible.

    The walk: start at (0, M - 1). At (i, j): if feasible, record it and go down (j - 1); else go right (i + 1).
    Stop when i == N or j < 0. Each step moves one pointer by one, so at most N + M - 1 cells are visited.
    """
    # Why the walk visits the grid optimum (monotone skip ratio r and KL, both non-decreasing in i and in j):
    # * Row i's feasible cells form a suffix j >= f(i) (r non-decreasing in j), and f(i) is non-increasing in i
    #   (r non-decreasing in i). In row i the best cell is (i, f(i)): KL is non-decreasing in j and f(i) is also
    #   the lowest j (tie rule). So the optimum (i*, j*) has j* = f(i*).
    # * The walk enters row i at column c(i) (c(0) = M - 1; c(i + 1) is where row i's walk stopped: the first
    #   infeasible cell at or below c(i)). If f(i) <= c(i), the walk goes down row i through feasible cells to
    #   (i, f(i)) and visits it (then stops at (i, f(i) - 1), infeasible, or ends at j = -1).
    # * If f(i) > c(i) for a row with a feasible cell: c(i) < M - 1, so c(i) = f(p) - 1 for the last earlier row p
    #   whose walk moved down (it stopped just below f(p)), and f(i) <= f(p) (f non-increasing) gives
    #   f(i) = f(p). Then (p, f(p)) was visited, KL(p, f(p)) <= KL(i, f(i)) (KL non-decreasing in i) and
    #   (p, f(p)) < (i, f(i)) lexicographically: row i's best cell cannot be the optimum.
    # * After the walk ends at j = -1 in row i (f(i) = 0), later rows have f = 0 and KL(i', 0) >= KL(i, 0).
    # So the optimum is visited, and the minimum over visited feasible cells (same order: KL, then (i, j)) is it.
    tt = _check_grid("taus_text", taus_text)
    tv = _check_grid("taus_vision", taus_vision)
    target = _check_target(target_skip)
    ev = _Evaluator(evaluate, tt, tv, cache)
    n, m = len(tt), len(tv)
    i, j = 0, m - 1
    best = None
    best_ratio = -math.inf
    violations = 0
    prev = None  # (kl, ratio, move) of the previous cell
    while i < n and j >= 0:
        kl, ratio = ev(i, j)
        if prev is not None:
            pkl, pratio, move = prev
            if move == "down" and (ratio > pratio or kl > pkl):  # (i, j + 1) -> (i, j): both must not increase
                violations += 1
            if move == "right" and (ratio < pratio or kl < pkl):  # (i - 1, j) -> (i, j): both must not decrease
                violations += 1
        best_ratio = max(best_ratio, ratio)
        if ratio >= target:
            if _better(kl, (i, j), best):
                best = (kl, (i, j), ratio)
            prev = (kl, ratio, "down")
            j -= 1
        else:
            prev = (kl, ratio, "right")
            i += 1
    if best is None:
        raise InfeasibleTargetError(target, best_ratio, ev.calls)
    kl, (bi, bj), ratio = best
    return SearchResult(tt[bi], tv[bj], kl, ratio, ev.calls, bi, bj, ev.visited, violations)


def grid_search(evaluate: Evaluate, taus_text: Sequence[float], taus_vision: Sequence[float],
                target_skip: float, *, cache: Optional[dict] = None) -> SearchResult:
    """Every cell of the N x M grid: the feasible cell of minimum KL, ties to the lowest (i, j) (lexicographic).

    Same arguments, result and error as :func:`frontier_search` (no monotonicity assumed; ``violations`` is 0).
    """
    tt = _check_grid("taus_text", taus_text)
    tv = _check_grid("taus_vision", taus_vision)
    target = _check_target(target_skip)
    ev = _Evaluator(evaluate, tt, tv, cache)
    best = None
    best_ratio = -math.inf
    for i in range(len(tt)):
        for j in range(len(tv)):
            kl, ratio = ev(i, j)
            best_ratio = max(best_ratio, ratio)
            if ratio >= target and _better(kl, (i, j), best):
                best = (kl, (i, j), ratio)
    if best is None:
        raise InfeasibleTargetError(target, best_ratio, ev.calls)
    kl, (bi, bj), ratio = best
    return SearchResult(tt[bi], tv[bj], kl, ratio, ev.calls, bi, bj, ev.visited, 0)


def _check_target(target_skip) -> float:
    t = float(target_skip)
    if not (0.0 <= t <= 1.0):
        raise ValueError(f"target_skip: expected a skip ratio in [0, 1], got {target_skip!r}")
    return t


def _alpha_list(alpha) -> List[List[float]]:
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.detach().cpu().double().tolist()
    return [[float(a) for a in row] for row in alpha]


# ------------------------------------------------------------------------------------ model level
def kl_per_token(logp_ref: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(p_ref || p)`` per row, fp32: ``logp_ref [n, V]`` log-probabilities, ``logits [n, V]`` -> ``[n]``.

    Entries where p_ref is 0 contribute 0 (``xlogy`` convention: the KL over p_ref's support, so a vocabulary entry
    masked to -inf in both gives 0, not NaN). :func:`leankern.moe.calibration.kl_per_position` uses it too."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p_ref = logp_ref.exp()
    return (p_ref * (logp_ref - logp)).masked_fill(p_ref == 0, 0.0).sum(-1)


def _ratio_from_stats(stats) -> float:
    """The skip ratio out of :func:`leankern.moe.hf.skip_stats`'s answer (a number, a dict or an object)."""
    if isinstance(stats, (int, float)):
        return float(stats)
    get = stats.get if isinstance(stats, dict) else (lambda k: getattr(stats, k, None))
    for key in ("overall", "skip_ratio"):  # leankern.moe.hf.skip_stats: "overall"
        if isinstance(get(key), (int, float)):
            return float(get(key))
    for skipped, total in (("skipped", "total"), ("skipped_slots", "total_slots"), ("skipped", "slots")):
        if get(skipped) is not None and get(total) is not None:
            tot = float(get(total))
            return float(get(skipped)) / tot if tot > 0 else 0.0
    raise TypeError(f"skip_stats: cannot read a skip ratio out of {stats!r} (expected 'overall', 'skip_ratio' or "
                    f"'skipped' and 'total')")


ANSWER_MASK_KEY = "answer_mask"  # as leankern.moe.calibration.calibrate_alpha


def _split_batch(batch, answer_mask_fn=None):
    """(model kwargs or positional input, ``[B, S]`` mask over logit positions or None).

    Positions, as :func:`leankern.moe.calibration.answer_positions`: an ``answer_mask`` (True on answer tokens; from
    ``answer_mask_fn(batch)`` or the batch's ``"answer_mask"`` entry, removed) counts the position before each answer
    token; else HF ``labels`` (-100 = ignore, removed): position p counts iff ``labels[:, p + 1] != -100``; else the
    ``attention_mask``; else every position."""
    if not isinstance(batch, dict):
        return batch, None
    kwargs = {k: v for k, v in batch.items() if k not in ("labels", ANSWER_MASK_KEY)}
    amask = answer_mask_fn(kwargs) if answer_mask_fn is not None else batch.get(ANSWER_MASK_KEY)
    labels = batch.get("labels")
    if amask is None and labels is not None:
        amask = labels != -100
    am = batch.get("attention_mask")
    if amask is not None:
        amask = amask.bool()
        pos = torch.zeros_like(amask)
        pos[:, :-1] = amask[:, 1:]
        if am is not None and am.dim() == 2:
            pos &= am.bool().to(pos.device)
        return kwargs, pos
    return kwargs, (am.bool() if am is not None and am.dim() == 2 else None)


def _to_device(inputs, device):
    if device is None:
        return inputs
    if isinstance(inputs, dict):
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    return inputs.to(device) if isinstance(inputs, torch.Tensor) else inputs


def _default_forward(model, inputs):
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    logits = getattr(out, "logits", out)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits


def threshold_evaluator(model, batches: Iterable, alpha, *, forward: Optional[Callable] = None,
                        answer_mask_fn: Optional[Callable] = None, renormalize: Optional[bool] = None,
                        patch_model: Optional[Callable] = None,
                        skip_stats: Optional[Callable] = None, reset_skip_stats: Optional[Callable] = None):
    """``evaluate(tau_text, tau_vision) -> (kl, skip_ratio)`` of a model on calibration batches (see
    :func:`search_thresholds` for the arguments): patches the model with ``SkipConfig(rule="modes", alpha, taus)``,
    runs every batch, returns the mean per-token ``KL(p_unskipped || p_skipped)`` over the counted positions and
    the skip ratio of ``skip_stats``. The unskipped reference is computed once, here (``SkipConfig(rule="none")``)."""
    if patch_model is None or skip_stats is None or reset_skip_stats is None:
        from . import hf  # imported here: the search functions above need no model code
        patch_model = patch_model or hf.patch_model
        skip_stats = skip_stats or hf.skip_stats
        reset_skip_stats = reset_skip_stats or hf.reset_skip_stats
    forward = forward or _default_forward
    alpha_l = _alpha_list(alpha)
    batches = list(batches)
    if not batches:
        raise ValueError("batches: expected at least one calibration batch, got none")

    try:
        device = next(model.parameters()).device
    except (AttributeError, StopIteration):
        device = None

    def run(config: SkipConfig):
        """Per batch, the logits at the counted positions ([n_b, V]); resets the skip counters first."""
        patch_model(model, config)
        reset_skip_stats(model)
        outs = []
        was_training = getattr(model, "training", False)
        if was_training:
            model.eval()
        try:
            with torch.inference_mode():
                for b in batches:
                    inputs, mask = _split_batch(b, answer_mask_fn)
                    logits = forward(model, _to_device(inputs, device))
                    logits = logits.reshape(-1, logits.shape[-1]) if mask is None else logits[mask.to(logits.device)]
                    outs.append(logits)
        finally:
            if was_training:
                model.train()
        return outs

    ref = [torch.log_softmax(lg.float(), dim=-1).cpu() for lg in run(SkipConfig(rule="none"))]
    n_tok = sum(r.shape[0] for r in ref)
    if n_tok == 0:
        raise ValueError("batches: no counted token (every label is -100 or every attention_mask is 0)")

    def evaluate(tau_t: float, tau_v: float):
        outs = run(SkipConfig(rule="modes", alpha=alpha_l, tau_text=tau_t, tau_vision=tau_v, renormalize=renormalize))
        total = 0.0
        for r, lg in zip(ref, outs):
            total += float(kl_per_token(r, lg.float().cpu()).double().sum())
        return total / n_tok, _ratio_from_stats(skip_stats(model))

    evaluate.patch_model = patch_model
    evaluate.reset_skip_stats = reset_skip_stats
    return evaluate


def search_thresholds(model, batches: Iterable, target_skip: float, alpha, *, n: int = 12, m: int = 12,
                      taus_text: Optional[Sequence[float]] = None, taus_vision: Optional[Sequence[float]] = None,
                      forward: Optional[Callable] = None, answer_mask_fn: Optional[Callable] = None,
                      renormalize: Optional[bool] = None, cache: Optional[dict] = None, return_result: bool = False,
                      patch_model: Optional[Callable] = None, skip_stats: Optional[Callable] = None,
                      reset_skip_stats: Optional[Callable] = None):
    """MoDES thresholds for a model: the frontier search with KL against the unskipped model on ``batches``.

    Parameters
    ----------
    model : a model :func:`leankern.moe.hf.patch_model` can patch (patched if it is not; re-patched once per
        evaluated cell, which updates its config; left patched with the returned config and its skip statistics
        reset). Ablations (:func:`leankern.moe.hf.set_ablation`) must be cleared first. Run in eval mode under
        ``torch.inference_mode`` (its training flag is restored).
    batches : calibration batches, kept in a list (iterated once per evaluation; moved to the model's device): a
        dict of model keyword arguments (``input_ids``, ``attention_mask``, ``pixel_values``, ...) or one positional
        input. KL is averaged over the next-token distributions of answer tokens, as
        :func:`leankern.moe.calibration.calibrate_alpha` measures them: an ``"answer_mask"`` entry ``[B, S]`` (True on
        answer tokens; removed before the call) or ``answer_mask_fn(batch)``; else HF ``labels`` (-100 = not an
        answer token; removed); else every ``attention_mask`` position; else all positions.
    target_skip : skip ratio to reach (as ``skip_stats`` reports it: skipped slots / (non-padding tokens x k));
        ``skip_stats(model)`` may answer a number, or a dict / object with ``skip_ratio`` or ``skipped`` and ``total``.
    alpha : per-layer ``[[alpha_text, alpha_vision], ...]`` (list or ``[L, 2]`` tensor) from calibration.
    n, m : sizes of the default grids ``tau_grid(n)`` (text) and ``tau_grid(m)`` (vision); or give
        ``taus_text`` / ``taus_vision``.
    forward : ``forward(model, inputs) -> logits [..., V]`` (default: ``model(**inputs).logits``).
    answer_mask_fn : ``batch -> [B, S]`` bool answer-token mask (overrides the batch's ``"answer_mask"``).
    cache : as :func:`frontier_search` (valid for one model, batch set and alpha).
    return_result : also return the :class:`SearchResult`.
    patch_model, skip_stats, reset_skip_stats : default to :mod:`leankern.moe.hf`'s (replaceable for models it
        does not know).

    Returns
    -------
    ``SkipConfig(rule="modes", alpha, tau_text, tau_vision)`` (and the :class:`SearchResult` if asked).
    Raises :class:`InfeasibleTargetError` when no pair of the grid reaches ``target_skip``.

    The walk's optimality needs KL and skip ratio non-decreasing in each threshold; on a real model that holds
    only approximately (skipping in one layer changes the routing of the next): ``SearchResult.violations``
    counts what the walk saw. Memory: the reference log-probabilities of the counted positions are kept on the
    CPU in fp32 (positions x vocabulary x 4 bytes).
    """
    evaluate = threshold_evaluator(model, batches, alpha, forward=forward, answer_mask_fn=answer_mask_fn,
                                   renormalize=renormalize,
                                   patch_model=patch_model, skip_stats=skip_stats, reset_skip_stats=reset_skip_stats)
    tt = list(taus_text) if taus_text is not None else tau_grid(n)
    tv = list(taus_vision) if taus_vision is not None else tau_grid(m)
    res = frontier_search(evaluate, tt, tv, target_skip, cache=cache)
    config = res.to_config(alpha, renormalize=renormalize)
    evaluate.patch_model(model, config)
    evaluate.reset_skip_stats(model)
    return (config, res) if return_result else config
