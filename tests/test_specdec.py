"""specdec: the verification rules (reference), the edge cases of specs/specdec.md, the rejection
mode's output distribution, bit-exact agreement of every backend (C++ per ISA, Triton under the
interpreter) with the reference, and errors."""
import math
import re

import pytest
import torch

import leankern
from leankern.specdec import numerics, target_probs, verify, verify_tree
from conftest import available_backends

MODES = ("greedy", "relaxed", "rejection", "typical")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _backends():
    out = []
    for be in ("cpp", "triton"):
        marks = [] if be in available_backends("cpu") else [pytest.mark.skip(reason=f"backend {be!r} not available")]
        out.append(pytest.param(be, marks=marks, id=be))
    return out


def _isas():
    if "cpp" not in available_backends("cpu"):
        return [pytest.param("none", marks=pytest.mark.skip(reason="leankern._C not loaded"))]
    have = leankern._C.supported_isas()
    return [pytest.param(i, marks=[] if i in have else [pytest.mark.skip(reason=f"this CPU lacks {i}")])
            for i in ("avx512", "avx2", "scalar")]


@pytest.fixture(params=[pytest.param("ref", id="ref")] + _backends())
def on_backend(request):
    """Runs the test body with the specdec ops forced onto one backend: the hand-worked rule tests hold on each
    (the reference included, not only the default backend)."""
    with leankern.use_backend(request.param):
        yield request.param


def _batch(counts, V, dtype=torch.float32, seed=0, match=0.7, peak=3.0):
    """Ragged drafts: each draft is the target argmax with probability ``match``, else a random id."""
    g = torch.Generator().manual_seed(seed)
    T, B = sum(counts), len(counts)
    logits = (torch.randn(T, V, generator=g) * peak).to(dtype)
    bonus = (torch.randn(B, V, generator=g) * peak).to(dtype)
    best = torch.argmax(logits.float(), -1)
    other = torch.randint(0, V, (T,), generator=g)
    keep = torch.rand(T, generator=g) < match
    drafts = torch.where(keep, best, other).to(torch.int32)
    cu = torch.tensor(counts, dtype=torch.int64).cumsum(0).to(torch.int32)
    return drafts, cu, logits, bonus


def _rows(out, n):
    return [r[r >= 0].tolist() for r in out][:n]


# ----------------------------------------------------------------------------------------- numerics
def test_exp_poly_is_within_two_ulp_of_exp():
    d = torch.linspace(numerics.EXP_CUTOFF, 0.0, 200001)
    got, want = numerics.exp_poly(d).double(), torch.exp(d.double())
    ulp = torch.exp2(torch.floor(torch.log2(want)) - 23)
    assert float(((got - want).abs() / ulp).max()) <= 2.0
    assert numerics.exp_weights(torch.zeros(1)).item() == 2**40
    assert numerics.exp_weights(torch.tensor([-28.001, float("-inf"), float("nan")])).tolist() == [0, 0, 0]


def _fmix32_py(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


@pytest.mark.parametrize("seed,offset", [(0, 0), (1234567, 5), (-1, 2**33 + 7), (2**40 + 3, 0)])
def test_counter_hash_matches_its_definition(seed, offset):
    s = seed & (2**64 - 1)
    key = _fmix32_py(_fmix32_py((s & 0xFFFFFFFF) ^ 0x9E3779B9) ^ (s >> 32))
    want = []
    for i in range(64):
        c = offset + i
        want.append((_fmix32_py(_fmix32_py(key ^ (c & 0xFFFFFFFF)) ^ (c >> 32)) >> 8) * 2.0**-24)
    assert numerics.uniforms_from_seed(seed, offset, 64).tolist() == want


def test_uniforms_from_seed_are_uniform():
    u = numerics.uniforms_from_seed(7, 0, 200_000)
    assert 0 <= float(u.min()) and float(u.max()) < 1
    counts = torch.histc(u, bins=50, min=0, max=1)
    chi2 = float(((counts - 4000) ** 2 / 4000).sum())
    assert chi2 < 120, chi2  # 49 dof: p ~ 1e-7


def test_keep_threshold_rules():
    w = torch.tensor([8, 4, 4, 2, 1, 0], dtype=torch.int64)
    assert numerics.keep_threshold(w, 0, 1.0) == 1
    assert numerics.keep_threshold(w, 2, 1.0) == 4  # the tie at the k-th value is kept
    assert numerics.keep_threshold(w, 0, 0.5) == 4  # mass above 4 is 8 / 19 = 0.42 < 0.5
    assert numerics.keep_threshold(w, 0, 0.42) == 8  # 8 / 19 >= 0.42
    assert numerics.keep_threshold(w, 0, 0.9) == 2  # 16 / 19 < 0.9 <= 18 / 19
    assert numerics.keep_threshold(w, 3, 0.9) == 4  # top-k first: 16 kept, 8/16 < .9 keeps 4


# ------------------------------------------------------------------------------------------- rules
def test_greedy_matches_the_cumprod_formulation(on_backend):
    counts = [3, 0, 5, 1, 8, 2]
    drafts, cu, logits, bonus = _batch(counts, 101, match=0.8)
    out, acc = verify(drafts, cu, logits, bonus, mode="greedy")
    starts = [0] + cu.tolist()[:-1]
    for b, n in enumerate(counts):
        s = starts[b]
        best = torch.argmax(logits[s:s + n], -1)
        ok = (drafts[s:s + n] == best).int()
        a = int(torch.cumprod(ok, 0).sum()) if n else 0
        extra = int(best[a]) if a < n else int(torch.argmax(bonus[b]))
        assert int(acc[b]) == a
        assert out[b, :a + 1].tolist() == drafts[s:s + a].tolist() + [extra]
        assert (out[b, a + 1:] == -1).all()


def test_perfect_match_zero_drafts_and_first_mismatch(on_backend):
    V = 37
    drafts, cu, logits, bonus = _batch([4, 0, 3], V, match=1.0)
    drafts[4] = (drafts[4] + 1) % V  # request 2 fails at its position 0
    out, acc = verify(drafts, cu, logits, bonus)
    assert acc.tolist() == [4, 0, 0]
    assert out[0].tolist() == drafts[:4].tolist() + [int(torch.argmax(bonus[0]))]
    assert out[1].tolist() == [int(torch.argmax(bonus[1]))] + [-1] * 4
    assert out[2].tolist() == [int(torch.argmax(logits[4]))] + [-1] * 4


def test_relaxed_radius_zero_is_greedy_and_acceptance_is_monotone(on_backend):
    V, lo = 300, 44  # action ids 44..299
    drafts, cu, logits, bonus = _batch([8] * 40, V, match=0.3, seed=3)
    g, gacc = verify(drafts, cu, logits, bonus, mode="greedy")
    r0, racc = verify(drafts, cu, logits, bonus, mode="relaxed", relax_radius=0, action_range=(lo, V - 1))
    assert torch.equal(g, r0) and torch.equal(gacc, racc)
    prev = gacc
    for r in (1, 2, 5, 9, 40, 400):
        _, acc = verify(drafts, cu, logits, bonus, mode="relaxed", relax_radius=r, action_range=(lo, V - 1))
        assert (acc >= prev).all()
        prev = acc
    assert int(prev.sum()) > int(gacc.sum())


def test_relaxed_needs_both_ids_in_the_action_range(on_backend):
    V = 50
    logits = torch.full((2, V), -5.0)
    logits[0, 40] = logits[1, 10] = 5.0  # argmax 40 (in range) and 10 (outside)
    drafts = torch.tensor([41, 11], dtype=torch.int32)  # one away from each argmax
    cu = torch.tensor([1, 2], dtype=torch.int32)
    bonus = torch.zeros(2, V)
    out, acc = verify(drafts, cu, logits, bonus, mode="relaxed", relax_radius=3, action_range=(20, 49))
    assert acc.tolist() == [1, 0]
    assert out[0, 0] == 41 and out[1, 0] == 10  # accepted positions emit the draft; failure emits argmax


def test_typical_rule_against_float64_softmax(on_backend):
    drafts, cu, logits, bonus = _batch([6] * 30, 64, match=0.5, seed=5, peak=1.5)
    eps, delta = 0.09, 0.3
    out, acc = verify(drafts, cu, logits, bonus, mode="typical", typical=(eps, delta))
    p = torch.softmax(logits.double(), -1)
    H = -(p * torch.log(p)).sum(-1)
    tau = torch.clamp(delta * torch.exp(-H), max=eps)
    px = p[torch.arange(drafts.numel()), drafts.long()]
    margin = ((px - tau) / tau).abs()
    ok = (px > tau).int().view(30, 6)
    want = torch.cumprod(ok, 1).sum(1)
    assert float(margin.min()) > 1e-5, "inputs too close to the threshold for a float64 cross-check"
    assert acc.tolist() == want.tolist()
    best = torch.argmax(logits, -1).view(30, 6)
    for b in range(30):
        a = int(want[b])
        assert int(out[b, a]) == (int(best[b, a]) if a < 6 else int(torch.argmax(bonus[b])))


def test_typical_rejects_at_p_equal_to_tau(on_backend):
    """The rule is ``p(x) > tau``, strict: two equal logits give p = 1/2 exactly (equal integer weights) and
    H = ln 2, so typical = (0.5, 10) makes tau = min(0.5, 10 * exp(-ln 2)) = 0.5 = p: the draft is rejected and
    the correction is the argmax (id 0, the lowest of the tie). Just below, eps = 0.5 - 2^-20 accepts it, and the
    bonus row's argmax (1) follows."""
    logits, bonus = torch.zeros(1, 2), torch.tensor([[0.0, 3.0]])
    drafts, cu = torch.tensor([1], dtype=torch.int32), torch.tensor([1], dtype=torch.int32)
    out, acc = verify(drafts, cu, logits, bonus, mode="typical", typical=(0.5, 10.0))
    assert acc.tolist() == [0] and out.tolist() == [[0, -1]]
    out, acc = verify(drafts, cu, logits, bonus, mode="typical", typical=(0.5 - 2**-20, 10.0))
    assert acc.tolist() == [1] and out.tolist() == [[1, 1]]


def test_tree_typical_rejects_at_p_equal_to_tau(on_backend):
    """verify_tree's typical edges use the same strict rule: root -> node 1 (token 1) with the root's row at
    p = tau = 1/2 rejects (the extra token is the root row's argmax, 0); eps just below accepts, then the
    argmax of node 1's row (1)."""
    node_logits = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    tokens, cu = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([2], dtype=torch.int32)
    ri = torch.tensor([[[0, 1]]], dtype=torch.int32)
    out, acc, best = verify_tree(tokens, cu, node_logits, ri, mode="typical", typical=(0.5, 10.0))
    assert acc.tolist() == [0] and out.tolist() == [[0, -1]] and best.tolist() == [0]
    out, acc, best = verify_tree(tokens, cu, node_logits, ri, mode="typical", typical=(0.5 - 2**-20, 10.0))
    assert acc.tolist() == [1] and out.tolist() == [[1, 1]] and best.tolist() == [0]


# ------------------------------------------------------------------------------------ rejection mode
def _u(n, value):
    return torch.full((n,), value, dtype=torch.float32)


def test_rejection_draft_equal_to_target_accepts_everything(on_backend):
    drafts, cu, logits, bonus = _batch([5, 0, 7], 80, seed=2)
    q = target_probs(logits).float()
    u = _u(drafts.numel() + 3, 1 - 2**-24)  # the largest uniform
    out, acc = verify(drafts, cu, logits, bonus, mode="rejection", draft_probs=q, uniforms=u)
    assert acc.tolist() == [5, 0, 7] and not torch.isnan(q).any()
    assert (out[:, :8] >= 0).sum() == 5 + 7 + 3


def test_rejection_disjoint_supports_reject_at_zero_and_resample_from_p(on_backend):
    V = 10
    logits = torch.full((1, V), float("-inf"))
    logits[0, :5] = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    q = torch.zeros(1, V)
    q[0, 7] = 1.0  # the draft lives where p = 0
    drafts, cu = torch.tensor([7], dtype=torch.int32), torch.tensor([1], dtype=torch.int32)
    for u in (0.0, 0.3, 0.999):
        out, acc = verify(drafts, cu, logits, torch.zeros(1, V), mode="rejection", draft_probs=q, uniforms=_u(2, u))
        assert acc.item() == 0 and 0 <= out[0, 0] < 5


def test_rejection_u_zero_accepts_iff_p_positive(on_backend):
    V = 16
    logits = torch.randn(2, V)
    logits[1, 3] = float("-inf")  # draft 3 of request 1 has zero target probability
    drafts = torch.tensor([5, 3], dtype=torch.int32)
    cu = torch.tensor([1, 2], dtype=torch.int32)
    out, acc = verify(drafts, cu, logits, torch.randn(2, V), mode="rejection", uniforms=_u(4, 0.0))
    assert acc.tolist() == [1, 0] and out[1, 0] != 3


def test_rejection_residual_with_a_single_nonzero_entry(on_backend):
    V = 4
    logits = torch.log(torch.tensor([[0.5, 0.5, 1e-30, 1e-30]]))
    q = torch.tensor([[0.0, 1.0, 0.0, 0.0]])  # residual max(0, p - q) is only at id 0
    drafts, cu = torch.tensor([1], dtype=torch.int32), torch.tensor([1], dtype=torch.int32)
    for u in (0.5, 0.9, 0.99):  # p(1)/q(1) = 1/2: these reject
        out, acc = verify(drafts, cu, logits, torch.zeros(1, V), mode="rejection", draft_probs=q, uniforms=_u(2, u))
        assert acc.item() == 0 and out[0, 0].item() == 0


def _chi2(observed, p):
    n = observed.sum()
    exp = p * n
    live = exp > 0
    assert (observed[~live] == 0).all(), "a token of zero target probability was emitted"
    return float(((observed[live] - exp[live]) ** 2 / exp[live]).sum()), int(live.sum()) - 1


@pytest.mark.parametrize("with_q", [True, False], ids=["draft_probs", "one_hot"])
@pytest.mark.parametrize("shape", [(1.0, 0, 1.0), (0.7, 4, 1.0), (1.3, 0, 0.8)], ids=["plain", "t0.7-k4", "t1.3-p0.8"])
def test_rejection_output_is_distributed_as_the_target(with_q, shape):
    """One batched call of n requests with one draft each: the first emitted token ~ p (chi-squared).

    Runs the default CPU backend: the reference's host loop would take minutes, and every backend
    replays the reference bit for bit (test_backend_equals_reference)."""
    if leankern.backend_for("specdec_verify", "cpu") == "ref":
        pytest.skip("needs the C++ kernel (40,000 requests through the reference's host loop take minutes)")
    temp, k, top_p = shape
    V, n = 8, 40_000
    g = torch.Generator().manual_seed(11)
    row = torch.randn(V, generator=g) * 1.5
    qrow = torch.softmax(torch.randn(V, generator=g), -1)
    p = target_probs(row, temp, k, top_p)
    drafts = torch.multinomial(qrow, n, replacement=True, generator=g).to(torch.int32)
    logits = row.expand(n, V).contiguous()
    cu = torch.arange(1, n + 1, dtype=torch.int32)
    full = lambda v, dt: torch.full((n,), v, dtype=dt)  # noqa: E731
    out, acc = verify(drafts, cu, logits, logits, mode="rejection", seed=5,
                      draft_probs=qrow.expand(n, V).contiguous() if with_q else None,
                      temperature=full(temp, torch.float32), top_k=full(k, torch.int32),
                      top_p=full(top_p, torch.float32))
    first = torch.bincount(out[:, 0].long(), minlength=V).double()
    stat, dof = _chi2(first, p)
    assert stat < dof + 12 * math.sqrt(2 * dof) + 20, (stat, dof)  # p-value < 1e-9 at these dof
    # the bonus token after an accepted draft ~ p too (same row)
    bonus = out[acc == 1, 1].long()
    stat, dof = _chi2(torch.bincount(bonus, minlength=V).double(), p)
    assert stat < dof + 12 * math.sqrt(2 * dof) + 20, (stat, dof)


def test_rejection_temperature_zero_is_greedy_per_request(on_backend):
    drafts, cu, logits, bonus = _batch([4, 4, 4], 50, seed=9, match=0.6)
    g, gacc = verify(drafts, cu, logits, bonus)
    t = torch.tensor([0.0, 1.0, 0.0])
    out, acc = verify(drafts, cu, logits, bonus, mode="rejection", seed=1, temperature=t)
    assert torch.equal(out[0], g[0]) and torch.equal(out[2], g[2]) and acc[0] == gacc[0]


# ------------------------------------------------------------------------------- defined behaviours
def test_rows_without_a_distribution_emit_minus_one(on_backend):
    V = 12
    drafts, cu, logits, bonus = _batch([2, 2, 1], V, match=1.0)
    logits[0] = float("-inf")  # request 0, position 0: all -inf
    logits[3, 4] = float("nan")  # request 1, position 1
    bonus[2] = float("-inf")  # request 2: its one draft is accepted, then no bonus
    q = torch.nan_to_num(target_probs(logits).float())  # accepts every valid position
    for mode in MODES:
        out, acc = verify(drafts, cu, logits, bonus, mode=mode, seed=0, draft_probs=q if mode == "rejection" else None)
        assert acc.tolist() == [0, 1, 1], mode
        assert out[0].tolist() == [-1, -1, -1] and out[1, 1] == -1 and out[2, 1] == -1, mode


def test_tail_with_zero_mass_is_never_emitted(on_backend):
    V = 1000 + 3
    drafts, cu, logits, bonus = _batch([3] * 64, V, seed=4, match=0.2)
    logits[:, 990:] = float("-inf")
    bonus[:, 990:] = float("-inf")
    for mode in MODES:
        out, _ = verify(drafts, cu, logits, bonus, mode=mode, seed=1, relax_radius=2, action_range=(0, V - 1))
        emitted = out[out >= 0]
        accepted_drafts = set(drafts.tolist())
        assert all(t < 990 or t in accepted_drafts for t in emitted.tolist()), mode
        assert int(out.max()) < V


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow notes (Triton interpreter)
def test_overflowing_temperature_verifies_with_the_argmax_rules(on_backend):
    drafts, cu, logits, bonus = _batch([4, 3], 300, match=0.6, seed=8)
    g, gacc = verify(drafts, cu, logits, bonus)
    t = torch.full((2,), 1e-38)  # logits / t overflows fp32
    for mode in ("rejection", "typical"):
        out, acc = verify(drafts, cu, logits, bonus, mode=mode, seed=3, temperature=t, top_p=torch.full((2,), 0.5))
        assert torch.equal(out, g) and torch.equal(acc, gacc), mode


# -------------------------------------------------------------------------------------------- tree
def test_tree_with_one_path_equals_the_chain(on_backend):
    V, D = 40, 4
    drafts, cu, logits, bonus = _batch([D], V, match=0.8, seed=6)
    # nodes: root, then the chain; the root's row verifies draft 0, node j's row verifies draft j
    tokens = torch.cat([torch.tensor([0], dtype=torch.int32), drafts])
    node_logits = torch.cat([logits, bonus])
    ri = torch.arange(D + 1, dtype=torch.int32).view(1, 1, D + 1)
    for mode in ("greedy", "relaxed", "typical"):
        want, wacc = verify(drafts, cu, logits, bonus, mode=mode, relax_radius=3, action_range=(0, V - 1))
        out, acc, best = verify_tree(tokens, torch.tensor([D + 1], dtype=torch.int32), node_logits, ri, mode=mode,
                                     relax_radius=3, action_range=(0, V - 1))
        assert torch.equal(out, want) and torch.equal(acc, wacc) and best.tolist() == [0]


def test_tree_longest_prefix_wins_ties_to_the_lowest_path(on_backend):
    V = 10
    # root -> a (node 1) -> b (node 2); root -> c (node 3) -> d (node 4)
    node_logits = torch.full((5, V), -4.0)
    node_logits[0, 1] = 5.0  # root predicts 1
    node_logits[1, 2] = 5.0  # after a: 2
    node_logits[3, 6] = 5.0  # after c: 6
    node_logits[2, 7] = node_logits[4, 8] = 5.0
    tokens = torch.tensor([0, 1, 2, 1, 5], dtype=torch.int32)  # a = 1, b = 2 (both right); c = 1, d = 5
    ri = torch.tensor([[[0, 3, 4], [0, 1, 2]]], dtype=torch.int32)
    out, acc, best = verify_tree(tokens, torch.tensor([5], dtype=torch.int32), node_logits, ri)
    assert best.tolist() == [1] and acc.tolist() == [2] and out.tolist() == [[1, 2, 7]]
    tokens[2] = 3  # now path 1 accepts only a: a tie of length 1 -> lowest path index (0)
    out, acc, best = verify_tree(tokens, torch.tensor([5], dtype=torch.int32), node_logits, ri)
    assert best.tolist() == [0] and acc.tolist() == [1] and out.tolist() == [[1, 6, -1]]


def test_tree_unused_paths_and_root_only_requests(on_backend):
    V = 10
    node_logits = torch.randn(3, V)
    tokens = torch.tensor([0, 4, 0], dtype=torch.int32)
    cu = torch.tensor([2, 3], dtype=torch.int32)  # request 0: root + 1 node; request 1: root only
    ri = torch.tensor([[[-1, -1], [0, 1]], [[-1, -1], [-1, -1]]], dtype=torch.int32)
    out, acc, best = verify_tree(tokens, cu, node_logits, ri)
    assert best.tolist()[1] == -1 and acc.tolist()[1] == 0
    assert out[1].tolist() == [int(torch.argmax(node_logits[2])), -1]
    assert best.tolist()[0] == 1


# -------------------------------------------------------------------------- every backend = reference
def _configs():
    """(name, counts, V, dtype, kwargs): every mode and option, ragged counts, awkward vocabularies."""
    cfg = []
    for V in (1, 7, 1000 + 3):
        for mode in MODES:
            cfg.append((f"{mode}-V{V}", [3, 0, 5, 1], V, torch.float32, dict(mode=mode, relax_radius=2, action_range=(0, V - 1))))
    for dt in DTYPES:
        cfg.append((f"greedy-{dt}", [8] * 6, 4099, dt, dict(mode="greedy")))
        cfg.append((f"rejection-q-{dt}", [4, 0, 6], 513, dt, dict(mode="rejection", with_q=True)))
    cfg.append(("relaxed-range", [8] * 8, 2048, torch.float32, dict(mode="relaxed", relax_radius=9,
                                                                   action_range=(1792, 2047))))
    cfg.append(("rejection-sampling-params", [3, 5, 0, 2], 700, torch.float32,
                dict(mode="rejection", with_q=True, temperature=[0.0, 0.6, 1.4, 1.0], top_k=[0, 5, 0, 50],
                     top_p=[1.0, 1.0, 0.7, 0.9])))
    cfg.append(("rejection-one-hot-params", [3, 5, 0, 2], 700, torch.bfloat16,
                dict(mode="rejection", temperature=[0.5, 1.0, 0.0, 2.0], top_k=[3, 0, 0, 0], top_p=[1.0, 0.5, 1, 1])))
    cfg.append(("rejection-bad-q", [4, 4, 4, 4], 97, torch.float32, dict(mode="rejection", with_q=True, bad_q=True)))
    cfg.append(("rejection-tiny-temperature", [4, 4], 97, torch.float32,
                dict(mode="rejection", with_q=True, temperature=[1e-38, 0.5], top_p=[0.5, 0.9])))
    cfg.append(("typical-tiny-temperature", [4, 4], 97, torch.bfloat16, dict(mode="typical", temperature=[1e-38, 1.0])))
    cfg.append(("typical-temperature", [6, 6], 300, torch.float16, dict(mode="typical", temperature=[0.0, 0.8])))
    return cfg


def _call_config(counts, V, dtype, kw, seed):
    kw = dict(kw)
    drafts, cu, logits, bonus = _batch(counts, V, dtype, seed=seed, match=0.6)
    B, T = len(counts), sum(counts)
    if V > 3:  # invalid rows and -inf tails inside the batch
        logits[:, V - 3:] = float("-inf")
        if T > 2:
            logits[1] = float("-inf")
    g = torch.Generator().manual_seed(seed + 100)
    if kw.pop("with_q", False):
        q = torch.softmax(torch.randn(T, V, generator=g), -1)
        if kw.pop("bad_q", False):  # read clamped: NaN and negatives as 0, > 1 as 1
            q[:, ::5] = float("nan")
            q[:, 1::7] = -0.5
            q[:, 2::11] = 3.0
            q = torch.where(torch.rand(T, V, generator=g) < 0.2, torch.full_like(q, float("inf")), q)
        kw["draft_probs"] = q.to(dtype)
    for name, dt in (("temperature", torch.float32), ("top_k", torch.int32), ("top_p", torch.float32)):
        if name in kw:
            kw[name] = torch.tensor(kw[name], dtype=dt)
    return verify(drafts, cu, logits, bonus, seed=seed, **kw)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("name,counts,V,dtype,kw", _configs(), ids=[c[0] for c in _configs()])
def test_backend_equals_reference(backend, name, counts, V, dtype, kw):
    with leankern.use_backend("ref"):
        want = _call_config(counts, V, dtype, kw, seed=len(name))
    with leankern.use_backend(backend):
        got = _call_config(counts, V, dtype, kw, seed=len(name))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (got, want)


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("mode", MODES)
def test_cpp_every_isa_equals_reference(isa, mode):
    counts, V = [8, 0, 3, 8, 1, 5], 32000 + 5
    kw = dict(mode=mode, relax_radius=4, action_range=(100, V - 1), with_q=mode == "rejection", temperature=[0.0, 1.0, 0.7, 1.0, 1.2, 1.0])
    with leankern.use_backend("ref"):
        want = _call_config(counts, V, torch.bfloat16, kw, seed=1)
    leankern._C.set_cpu_isa(isa)
    try:
        with leankern.use_backend("cpp"):
            got = _call_config(counts, V, torch.bfloat16, kw, seed=1)
    finally:
        leankern._C.set_cpu_isa("auto")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("with_q", (True, False))
@pytest.mark.parametrize("seed", range(3))
def test_cpp_row_split_sampling_equals_reference(with_q, seed):
    """Few requests and V >= 65,536: the C++ op samples a rejected or bonus row with its exact pass and
    residual split over the threads (verify_cpu.cpp sample_split); a top-k request keeps the one-thread
    path. Both must give the reference's ids."""
    counts, V = [2, 0, 1, 3], 70001
    kw = dict(mode="rejection", with_q=with_q, temperature=[1.0, 0.8, 1.0, 1.3], top_k=[0, 0, 0, 50])
    with leankern.use_backend("ref"):
        want = _call_config(counts, V, torch.bfloat16, kw, seed=seed)
    with leankern.use_backend("cpp"):
        got = _call_config(counts, V, torch.bfloat16, kw, seed=seed)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (got, want)
    n = got[1].tolist()
    assert n[1] == 0 and got[0][1, 0] >= 0  # request 1 (no drafts) sampled its bonus row
    assert any(a < c for a, c in zip(n, counts)) or seed != 0  # seed 0 rejects a draft (a residual sample)


_DT_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@pytest.mark.parametrize("isa", _isas())
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("V", (1, 15, 16, 17, 64, 65, 255, 256, 257, 1003, 4099))
def test_weight_pass_every_isa_equals_reference(isa, dtype, V):
    """The exact weight pass itself (S, its 256-element block sums, every stored W) against
    numerics.exp_weights, not only the ids it leads to: an S off by one would flip almost no decision."""
    g = torch.Generator().manual_seed(V)
    row = (torch.randn(V, generator=g) * 6).to(dtype)
    if V > 20:  # dead lanes (-inf, far below the cutoff) and ties at the maximum
        row[3], row[7], row[11] = float("-inf"), row.max() - 40, row.max()
    for t in (1.0, 0.7):
        z = row.float() / torch.tensor(t) if t != 1.0 else row.float()
        m = z.max()
        w = numerics.exp_weights(z - m)  # int64 [V]
        for w_min in (1, int(w.float().median()) + 1):
            kept = torch.where(w >= w_min, w, 0)
            raw = row.view(torch.int16 if dtype != torch.float32 else torch.int32).numpy().tobytes()
            leankern._C.set_cpu_isa(isa)
            try:
                S, blocks, W = leankern._C.specdec_weight_sums(raw, _DT_CODE[dtype], V, t, float(m), w_min, True)
                S2, blocks2, none = leankern._C.specdec_weight_sums(raw, _DT_CODE[dtype], V, t, float(m), w_min, False)
            finally:
                leankern._C.set_cpu_isa("auto")
            want_blocks = [int(b) for b in torch.nn.functional.pad(kept, (0, -V % 256)).view(-1, 256).sum(1)]
            assert S == S2 == int(kept.sum()), (t, w_min)
            assert blocks == blocks2 == want_blocks, (t, w_min)
            assert none is None and torch.equal(torch.frombuffer(bytearray(W), dtype=torch.float32).long(), w), (t, w_min)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("mode", ("greedy", "relaxed", "typical"))
def test_tree_backend_equals_reference(backend, mode):
    g = torch.Generator().manual_seed(3)
    B, P, D, V = 5, 4, 3, 257
    n_nodes = 1 + P * D  # a root and P disjoint chains
    node_logits = torch.randn(B * n_nodes, V, generator=g) * 3
    tokens = torch.argmax(node_logits, -1).roll(1).to(torch.int32)  # many accepted edges
    noise = torch.rand(B * n_nodes, generator=g) < 0.3
    tokens = torch.where(noise, torch.randint(0, V, tokens.shape, generator=g, dtype=torch.int32), tokens)
    ri = torch.full((B, P, D + 1), -1, dtype=torch.int32)
    for b in range(B):
        for p in range(P - (b % 2)):  # odd requests leave one path unused
            depth = D - (p % 2)
            ri[b, p, 0] = 0
            ri[b, p, 1:depth + 1] = torch.arange(1 + p * D, 1 + p * D + depth)
    # make node i's row predict node i+1's token within each chain
    for b in range(B):
        for p in range(P):
            for j in range(D):
                parent = 0 if j == 0 else 1 + p * D + j - 1
                node_logits[b * n_nodes + parent, tokens[b * n_nodes + 1 + p * D + j]] += 6.0 * (j < 2)
    cu = torch.arange(1, B + 1, dtype=torch.int32) * n_nodes
    kw = dict(mode=mode, relax_radius=2, action_range=(0, V - 1), temperature=torch.tensor([1.0, 0.0, 0.7, 1.0, 1.0]))
    with leankern.use_backend("ref"):
        want = verify_tree(tokens, cu, node_logits, ri, **kw)
    with leankern.use_backend(backend):
        got = verify_tree(tokens, cu, node_logits, ri, **kw)
    for a, b in zip(got, want):
        assert torch.equal(a, b), (got, want)


# -------------------------------------------------------------------------------------------- errors
def _args(**over):
    drafts, cu, logits, bonus = _batch([2, 3], 20)
    a = dict(draft_token_ids=drafts, cu_num_draft_tokens=cu, target_logits=logits, bonus_logits=bonus)
    a.update(over)
    return a


BAD = [
    (dict(draft_token_ids=torch.tensor([0, 1, 2, 3, 20], dtype=torch.int32)), ValueError, r"draft_token_ids.*\[0, V=20\)"),
    (dict(draft_token_ids=torch.tensor([0, -1, 2, 3, 4], dtype=torch.int32)), ValueError, r"draft_token_ids.*\[0, V=20\)"),
    (dict(draft_token_ids=torch.zeros(5, dtype=torch.int16)), TypeError, r"draft_token_ids.*int32"),
    (dict(cu_num_draft_tokens=torch.tensor([2, 4], dtype=torch.int32)), ValueError, r"cu_num_draft_tokens.*T"),
    (dict(cu_num_draft_tokens=torch.tensor([3, 2], dtype=torch.int32)), ValueError, r"cu_num_draft_tokens.*non-decreasing"),
    (dict(cu_num_draft_tokens=torch.tensor([2**31 - 1, -2], dtype=torch.int32)), ValueError,
     r"cu_num_draft_tokens.*non-decreasing"),
    (dict(bonus_logits=torch.zeros(2, 21)), ValueError, r"bonus_logits.*shape"),
    (dict(target_logits=torch.zeros(5, 20, dtype=torch.float64)), TypeError, r"target_logits.*dtype"),
    (dict(mode="sampling"), ValueError, r"mode.*'greedy'"),
    (dict(mode="rejection"), ValueError, r"uniforms.*rejection"),
    (dict(mode="rejection", uniforms=torch.full((7,), 1.0)), ValueError, r"uniforms.*\[0, 1\)"),
    (dict(mode="rejection", seed=0, draft_probs=torch.zeros(5, 19)), ValueError, r"draft_probs.*shape"),
    (dict(temperature=torch.tensor([1.0, -1.0])), ValueError, r"temperature.*>= 0"),
    (dict(top_p=torch.tensor([1.0, 0.0])), ValueError, r"top_p.*\(0, 1\]"),
    (dict(top_k=torch.tensor([1, 2], dtype=torch.int16)), TypeError, r"top_k.*int32"),
    (dict(max_drafts=2), ValueError, r"max_drafts.*2"),
    (dict(relax_radius=-1, mode="relaxed"), ValueError, r"relax_radius"),
    (dict(relax_radius=2, mode="relaxed"), ValueError, r"action_range.*needs"),
    (dict(relax_radius=2, mode="relaxed", action_range=(5, 20)), ValueError, r"action_range.*hi < V=20"),
]


@pytest.mark.parametrize("backend", ["ref"] + _backends())
@pytest.mark.parametrize("over,exc,msg", BAD, ids=[str(i) for i in range(len(BAD))])
def test_rejects_bad_input(backend, over, exc, msg):
    a = _args(**over)
    with leankern.use_backend(backend), pytest.raises(exc, match=msg):
        verify(a.pop("draft_token_ids"), a.pop("cu_num_draft_tokens"), a.pop("target_logits"), a.pop("bonus_logits"),
               **a)


TREE_BAD = [
    (dict(ri=[[[0, 5]]]), r"retrieve_indices.*local node indices"),
    (dict(ri=[[[1, 2]]]), r"retrieve_indices.*column 0"),
    (dict(ri=[[[0, -1, 2]]]), r"retrieve_indices.*trailing padding"),
    (dict(tokens=[0, 1, 2, 99]), r"tree_token_ids.*\[0, V=10\)"),
    (dict(cu=[0]), r"cu_num_nodes"),
    (dict(mode="rejection"), r"mode"),
]


@pytest.mark.parametrize("backend", ["ref"] + _backends())
@pytest.mark.parametrize("over,msg", TREE_BAD, ids=[str(i) for i in range(len(TREE_BAD))])
def test_tree_rejects_bad_input(backend, over, msg):
    tokens = torch.tensor(over.get("tokens", [0, 1, 2, 3]), dtype=torch.int32)
    cu = torch.tensor(over.get("cu", [4]), dtype=torch.int32)
    ri = torch.tensor(over.get("ri", [[[0, 1, 2]]]), dtype=torch.int32)
    with leankern.use_backend(backend), pytest.raises(ValueError, match=msg):
        verify_tree(tokens, cu, torch.zeros(4, 10), ri, mode=over.get("mode", "greedy"))


def test_int64_ids_are_accepted_by_the_api():
    drafts, cu, logits, bonus = _batch([2, 3], 20)
    want = verify(drafts, cu, logits, bonus)
    got = verify(drafts.long(), cu.long(), logits, bonus)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _states(excinfo, value) -> bool:
    """The message states ``value`` itself, not its wrapped or saturated int32 value."""
    return re.search(rf"(?<![-\d]){value}(?!\d)", str(excinfo.value)) is not None


@pytest.mark.parametrize("backend", ["ref"] + _backends())
def test_int64_arguments_beyond_int32_raise_instead_of_wrapping(backend):
    """int64 ids, counts, tree indices and top_k are narrowed to int32 by the API: 2^32 + x wrapped onto x (a valid
    id / count / index, top_k 2^32 + 1 -> 1) and verified silently; now the op's own checks reject them."""
    drafts, cu, logits, bonus = _batch([2, 3], 20)
    ids64, cu64 = drafts.long(), cu.long()
    with leankern.use_backend(backend):
        with pytest.raises(ValueError, match=r"^draft_token_ids: expected token ids in \[0, V=20\)") as e:
            verify(ids64 + 2**32, cu64, logits, bonus)
        assert _states(e, int(ids64.max()) + 2**32)
        with pytest.raises(ValueError, match=r"^cu_num_draft_tokens: expected the last entry to equal T") as e:
            verify(ids64, cu64 + torch.tensor([0, 2**32]), logits, bonus)
        assert _states(e, 5 + 2**32)
        with pytest.raises(ValueError, match=r"^cu_num_draft_tokens: expected non-decreasing"):
            verify(ids64, cu64 + torch.tensor([2**32, 0]), logits, bonus)
        with pytest.raises(ValueError, match=r"^top_k: expected values >= 0"):
            verify(drafts, cu, logits, bonus, mode="typical", top_k=torch.tensor([1, -(2**32) + 1]))
        # beyond int32, top_k keeps every id (as 0 = off does), not the top 1 of 2^32 + 1's wrapped value
        kw = dict(mode="rejection", seed=3, temperature=torch.ones(2))
        off = verify(drafts, cu, logits, bonus, top_k=torch.zeros(2, dtype=torch.int32), **kw)
        top1 = verify(drafts, cu, logits, bonus, top_k=torch.ones(2, dtype=torch.int32), **kw)
        wide = verify(drafts, cu, logits, bonus, top_k=torch.full((2,), 2**32 + 1), **kw)
        assert not torch.equal(off[0], top1[0]), "pick another seed: top_k = 1 must change the output"
        assert torch.equal(wide[0], off[0]) and torch.equal(wide[1], off[1])

        tokens, nl, cu_n = torch.tensor([0, 3, 4]), torch.zeros(3, 10), torch.tensor([3])
        ri = torch.tensor([[[0, 1, 2]]])
        with pytest.raises(ValueError, match=r"^tree_token_ids: expected token ids in \[0, V=10\)") as e:
            verify_tree(tokens + 2**32, cu_n, nl, ri)
        assert _states(e, 4 + 2**32)
        with pytest.raises(ValueError, match=r"^cu_num_nodes: expected the last entry to equal N") as e:
            verify_tree(tokens, cu_n + 2**32, nl, ri)
        assert _states(e, 3 + 2**32)
        with pytest.raises(ValueError, match=r"^retrieve_indices: expected local node indices"):
            verify_tree(tokens, cu_n, nl, torch.tensor([[[0, 2**32 + 1, 2]]]))


def test_int64_arguments_beyond_int32_raise_under_torch_compile():
    """Traced, the values are not read on the host: the narrowing saturates and the op's checks reject the value."""
    drafts, cu, logits, bonus = _batch([2, 3], 20)
    fn = torch.compile(lambda ids, cu: verify(ids, cu, logits, bonus, max_drafts=3), fullgraph=True,
                       backend="aot_eager")
    want = verify(drafts, cu, logits, bonus, max_drafts=3)
    got = fn(drafts.long(), cu.long())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises((ValueError, RuntimeError), match=r"draft_token_ids: expected token ids in \[0, V=20\)"):
        fn(drafts.long() + 2**32, cu.long())
    with pytest.raises((ValueError, RuntimeError), match=r"cu_num_draft_tokens: expected the last entry"):
        fn(drafts.long(), cu.long() + 2**32)


def test_verify_compiles_fullgraph():
    drafts, cu, logits, bonus = _batch([3, 0, 4], 64)
    u = numerics.uniforms_from_seed(0, 0, 10)

    def fn(logits):
        return verify(drafts, cu, logits, bonus, mode="rejection", uniforms=u, max_drafts=4)

    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True)(logits)
    want = fn(logits)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("fullgraph", [True, False])
def test_verify_compiles_with_the_default_max_drafts(fullgraph):
    """max_drafts=None: the width is the largest count, read from cu_num_draft_tokens. fullgraph=True captured it as
    a SymInt the op's int argument rejected (TorchRuntimeError); fullgraph=False breaks the graph there. Both give
    the eager output, its shape included, and the width follows the counts from call to call."""
    fn = torch.compile(lambda ids, cu, logits, bonus: verify(ids, cu, logits, bonus), fullgraph=fullgraph,
                       backend="aot_eager")
    torch._dynamo.reset()
    for counts in ([3, 0, 4], [1, 5, 1]):  # the same T and B: widths 5 and 6
        drafts, cu, logits, bonus = _batch(counts, 32)
        want, got = verify(drafts, cu, logits, bonus), fn(drafts, cu, logits, bonus)
        assert want[0].shape == (3, max(counts) + 1)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.stride() == w.stride() and torch.equal(g, w)
