"""leankern.moe.search: the frontier walk vs the full grid on monotone toy problems, cache, errors, model helper."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from leankern.moe import SkipConfig
from leankern.moe.search import (InfeasibleTargetError, frontier_search, grid_search, kl_per_token,
                                 search_thresholds, tau_grid, threshold_evaluator)


def monotone_table(gen: torch.Generator, n: int, m: int, levels: int) -> torch.Tensor:
    """[n, m] non-decreasing in both indices: a 2-D cumulative sum of integer increments in [0, levels).

    Small ``levels`` gives many equal values (ties in KL and in skip ratio, plateaus)."""
    inc = torch.randint(0, levels, (n, m), generator=gen).double()
    return inc.cumsum(0).cumsum(1)


def make_problem(seed: int, n: int, m: int, levels: int):
    gen = torch.Generator().manual_seed(seed)
    kl = monotone_table(gen, n, m, levels) / 7.0
    r = monotone_table(gen, n, m, levels)
    ratio = r / max(float(r.max()), 1.0)  # in [0, 1], still monotone
    tt, tv = tau_grid(n), tau_grid(m)
    calls = []

    def evaluate(tau_t, tau_v):
        i, j = tt.index(tau_t), tv.index(tau_v)
        calls.append((i, j))
        return float(kl[i, j]), float(ratio[i, j])

    return evaluate, tt, tv, kl, ratio, calls


@given(n=st.integers(1, 14), m=st.integers(1, 14), seed=st.integers(0, 2**31 - 1), levels=st.sampled_from([2, 3, 50]),
       target=st.floats(0.0, 1.0))
def test_walk_matches_grid_on_monotone_tables(n, m, seed, levels, target):
    evaluate, tt, tv, kl, ratio, calls = make_problem(seed, n, m, levels)
    try:
        full = grid_search(evaluate, tt, tv, target)
    except InfeasibleTargetError:
        full = None
    calls.clear()
    if full is None:
        with pytest.raises(InfeasibleTargetError):
            frontier_search(evaluate, tt, tv, target)
        assert len(calls) <= n + m - 1
        return
    res = frontier_search(evaluate, tt, tv, target)
    assert (res.i, res.j) == (full.i, full.j)
    assert res.kl == full.kl and res.skip_ratio == full.skip_ratio
    assert (res.tau_text, res.tau_vision) == (tt[res.i], tv[res.j])
    assert res.skip_ratio >= target
    assert res.evaluations == len(calls) <= n + m - 1
    assert len(set(calls)) == len(calls)  # no cell evaluated twice
    assert res.violations == 0
    # brute force, independent of grid_search: the feasible minimum, ties to the lowest (i, j)
    feas = [(float(kl[i, j]), (i, j)) for i in range(n) for j in range(m) if ratio[i, j] >= target]
    assert min(feas)[1] == (res.i, res.j)


def test_grid_search_counts_every_cell():
    evaluate, tt, tv, *_ = make_problem(0, 5, 4, 3)
    res = grid_search(evaluate, tt, tv, 0.3)
    assert res.evaluations == 20 and len(res.visited) == 20


def test_infeasible_target_raises_clear_error():
    tt, tv = tau_grid(4), tau_grid(5)
    calls = []

    def evaluate(a, b):
        calls.append((a, b))
        return a + b, 0.25 * (a + b) / 2.0  # at most 0.25

    with pytest.raises(InfeasibleTargetError, match=r"0\.9.*0\.25") as info:
        frontier_search(evaluate, tt, tv, 0.9)
    assert isinstance(info.value, ValueError)
    assert info.value.best_skip_ratio == pytest.approx(0.25)
    assert len(calls) == 4  # the last column only: (i, M - 1) for every i
    with pytest.raises(InfeasibleTargetError):
        grid_search(evaluate, tt, tv, 0.9)


def test_cache_prevents_reevaluation():
    evaluate, tt, tv, kl, ratio, calls = make_problem(3, 9, 7, 50)
    cache = {}
    first = frontier_search(evaluate, tt, tv, 0.5, cache=cache)
    assert first.evaluations == len(calls) == len(cache) > 0
    calls.clear()
    again = frontier_search(evaluate, tt, tv, 0.5, cache=cache)
    assert calls == [] and again.evaluations == 0
    assert (again.i, again.j, again.kl) == (first.i, first.j, first.kl)
    # another target reuses the shared cells; the full grid only evaluates what is missing
    frontier_search(evaluate, tt, tv, 0.2, cache=cache)
    assert len(calls) == len(set(calls)) and not set(calls) & set(first.visited)
    calls.clear()
    before = len(cache)
    full = grid_search(evaluate, tt, tv, 0.5, cache=cache)
    assert full.evaluations == len(calls) == 9 * 7 - before
    assert (full.i, full.j) == (first.i, first.j)
    # a cache filled on other grids is refused, not silently misused
    with pytest.raises(ValueError, match="cache"):
        frontier_search(evaluate, tau_grid(9, steepness=5.0), tv, 0.5, cache=cache)


def test_argument_checks():
    f = lambda a, b: (0.0, 1.0)  # noqa: E731
    with pytest.raises(ValueError, match="taus_text"):
        frontier_search(f, [], [0.1], 0.5)
    with pytest.raises(ValueError, match="taus_vision"):
        frontier_search(f, [0.1], [0.2, 0.1], 0.5)
    with pytest.raises(ValueError, match="target_skip"):
        frontier_search(f, [0.1], [0.1], 1.5)
    with pytest.raises(TypeError, match="evaluate"):
        frontier_search(lambda a, b: 0.3, [0.1], [0.1], 0.5)
    with pytest.raises(ValueError, match="finite"):
        frontier_search(lambda a, b: (math.nan, 1.0), [0.1], [0.1], 0.5)
    with pytest.raises(ValueError, match="n"):
        tau_grid(0)


def test_tau_grid():
    t = tau_grid(11)
    assert len(t) == 11 and all(b > a for a, b in zip(t, t[1:]))
    assert t[-1] == 1.0 and t[0] == pytest.approx(2 / (1 + math.exp(10)))
    assert t[5] == pytest.approx(2 / (1 + math.exp(5)))
    assert tau_grid(1) == [1.0]


def test_violations_reported_on_non_monotone_evaluate():
    tt, tv = tau_grid(3), tau_grid(3)
    table = {(0, 2): (1.0, 0.9), (0, 1): (2.0, 0.95), (0, 0): (0.5, 0.1), (1, 0): (0.4, 0.05), (2, 0): (0.3, 0.0)}

    def evaluate(a, b):
        return table[(tt.index(a), tv.index(b))]

    res = frontier_search(evaluate, tt, tv, 0.5)
    assert res.violations >= 1  # (0, 2) -> (0, 1): KL and skip ratio went up on the way down


def test_result_to_skipconfig_json_round_trip(tmp_path):
    evaluate, tt, tv, *_ = make_problem(5, 8, 8, 50)
    res = frontier_search(evaluate, tt, tv, 0.6)
    alpha = torch.tensor([[0.25, 0.5], [0.75, 0.5]])
    cfg = res.to_config(alpha)
    assert cfg.rule == "modes" and cfg.tau_text == res.tau_text and cfg.tau_vision == res.tau_vision
    back = SkipConfig.from_json(cfg.to_json())
    assert back == cfg
    path = tmp_path / "skip.json"
    cfg.to_json(str(path))
    assert SkipConfig.from_json(str(path)) == cfg
    assert back.skip_params(1) == [0.75, 0.5, res.tau_text, res.tau_vision]


def test_kl_per_token():
    logits = torch.randn(5, 11)
    ref = torch.log_softmax(logits, -1)
    assert torch.allclose(kl_per_token(ref, logits), torch.zeros(5), atol=1e-6)
    other = torch.randn(5, 11)
    want = torch.nn.functional.kl_div(torch.log_softmax(other, -1), ref, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl_per_token(ref, other), want, atol=1e-5)


# --------------------------------------------------------------------------------- model-level helper
class ToyMoE(torch.nn.Module):
    """Two MoE layers (router, experts through leankern.moe) and an LM head; honours a SkipConfig like hf.patch_model
    would, counting skipped slots over non-padding tokens."""

    def __init__(self, H=8, E=4, k=2, V=13, layers=2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.k = k
        self.emb = torch.nn.Parameter(torch.randn(V, H, generator=g))
        self.router = torch.nn.Parameter(torch.randn(layers, E, H, generator=g))
        self.w13 = torch.nn.Parameter(torch.randn(layers, E, 2 * 6, H, generator=g) * 0.3)
        self.w2 = torch.nn.Parameter(torch.randn(layers, E, H, 6, generator=g) * 0.3)
        self.head = torch.nn.Parameter(torch.randn(V, H, generator=g))
        self.config_ = SkipConfig()
        self.skipped = self.total = 0

    def forward(self, input_ids, attention_mask, modality):
        import leankern.moe as moe
        B, S = input_ids.shape
        x = self.emb[input_ids].reshape(B * S, -1)
        keep_tok = attention_mask.reshape(-1).bool()
        for layer in range(self.router.shape[0]):
            ids, w = moe.route(x @ self.router[layer].T, self.k)
            if self.config_.rule != "none":
                a_t, a_v, t_t, t_v = self.config_.skip_params(layer)
                ids, w = moe.skip(ids, w, "modes", alpha=(a_t, a_v), tau=(t_t, t_v), modality=modality.reshape(-1))
            self.skipped += int(((ids < 0) & keep_tok[:, None]).sum())
            self.total += int(keep_tok.sum()) * self.k
            x = x + moe.experts(x, self.w13[layer], self.w2[layer], ids, w)
        return x.reshape(B, S, -1) @ self.head.T


def toy_api():
    def patch(model, config):
        model.config_ = config

    def stats(model):
        return {"skipped": model.skipped, "total": model.total}

    def reset(model):
        model.skipped = model.total = 0

    return dict(patch_model=patch, skip_stats=stats, reset_skip_stats=reset)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_search_thresholds_on_toy_model():
    model = ToyMoE()
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(2):
        ids = torch.randint(0, 13, (2, 6), generator=g)
        am = torch.ones(2, 6, dtype=torch.long)
        am[1, 4:] = 0
        labels = ids.clone()
        labels[:, :2] = -100
        modality = torch.randint(0, 3, (2, 6), generator=g)
        modality[0, 0] = 2
        batches.append(dict(input_ids=ids, attention_mask=am, modality=modality, labels=labels))
    alpha = [[0.5, 0.5], [0.5, 0.5]]
    forward = lambda mdl, inputs: mdl(**inputs)  # noqa: E731
    api = toy_api()
    cfg, res = search_thresholds(model, batches, 0.4, alpha, n=5, m=4, forward=forward, return_result=True, **api)
    assert isinstance(cfg, SkipConfig) and cfg.rule == "modes" and cfg.alpha == alpha
    assert (cfg.tau_text, cfg.tau_vision) == (res.tau_text, res.tau_vision)
    assert res.skip_ratio >= 0.4 and res.kl >= 0.0 and res.evaluations <= 5 + 4 - 1
    assert model.config_ == cfg  # the model is left patched with the result
    assert SkipConfig.from_json(cfg.to_json()) == cfg
    # the returned point is what the evaluator reports there; every cell of the walk is in the cache
    cache = {}
    res2 = search_thresholds(model, batches, 0.4, alpha, n=5, m=4, forward=forward, return_result=True,
                             cache=cache, **api)[1]
    assert (res2.i, res2.j, res2.kl, res2.skip_ratio) == (res.i, res.j, res.kl, res.skip_ratio)
    assert len(cache) == res2.evaluations == len(set(res2.visited))
    ev = threshold_evaluator(model, batches, alpha, forward=forward, **api)
    assert ev(res.tau_text, res.tau_vision) == (res.kl, res.skip_ratio)
    assert ev(0.0, 0.0)[0] == pytest.approx(0.0, abs=1e-6)  # nothing skipped: the reference itself
    # unreachable target (modality-2 tokens are never skipped): clear error
    with pytest.raises(InfeasibleTargetError, match="target_skip"):
        search_thresholds(model, batches, 1.0, alpha, n=3, m=3, forward=forward, **api)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_search_thresholds_with_hf_patch_on_tiny_qwen3_moe():
    tf = pytest.importorskip("transformers")
    hf = pytest.importorskip("leankern.moe.hf")
    V, L = 64, 2
    cfg = tf.Qwen3MoeConfig(vocab_size=V, hidden_size=32, num_hidden_layers=L, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=8, max_position_embeddings=64, initializer_range=0.1,
                            pad_token_id=0, intermediate_size=48, moe_intermediate_size=16, num_experts=8,
                            num_experts_per_tok=2, norm_topk_prob=True)
    torch.manual_seed(0)
    model = tf.Qwen3MoeForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = 0
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, 6:] = True
    batches = [dict(input_ids=ids, attention_mask=mask, answer_mask=answer)]
    alpha = [[1.0 / L, 1.0 / L]] * L
    taus = tau_grid(6)
    out, res = search_thresholds(model, batches, 0.5, alpha, taus_text=taus, taus_vision=taus, return_result=True)
    assert hf.is_patched(model) and out.rule == "modes" and out.alpha == alpha
    assert res.skip_ratio >= 0.5 and res.evaluations <= 6 + 6 - 1 and res.kl >= 0
    # the model is left with the result: running it again reproduces the reported skip ratio
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
    assert hf.skip_stats(model)["overall"] == pytest.approx(res.skip_ratio)
    # text-only model: tau_vision does not matter, so the walk ends at the smallest tau_vision
    assert res.j == 0
