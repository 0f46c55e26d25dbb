"""moe ops: semantics by hand-worked cases and independent brute force, on every backend that runs CPU tensors.

What is checked: routing order and ties (lowest id), DeepSeek grouped selection with a correction bias against a
loop written from the model's description, every skip rule on a hand-worked row, align's layout on a hand-worked
case, experts against an independent per-token loop (fp64) within tests/tolerances.py's derived bound, the
special cases (nothing kept, a token losing every expert -> exactly 0, untouched experts never read), and the
argument errors (same text on every backend). C++-specific paths: tests/test_moe_cpu.py; Triton:
tests/test_moe_triton.py.
"""
from __future__ import annotations

import math

import pytest
import torch

import leankern
from leankern import moe
from conftest import available_backends
from tolerances import assert_moe_experts

pytestmark = pytest.mark.filterwarnings("ignore:leankern. running the pure-PyTorch reference:RuntimeWarning")
BACKENDS = available_backends("cpu")


@pytest.fixture(params=["ref", "cpp", "triton"])
def backend(request):
    if request.param not in BACKENDS:
        pytest.skip(f"backend {request.param!r} cannot run CPU tensors here")
    return request.param


# ------------------------------------------------------------------------------------------- route
def _brute_route(logits, k, renorm):
    """Python loops: softmax in fp64, order by (-score, id)."""
    out_ids, out_w = [], []
    for row in logits.double().tolist():
        m = max(row)
        ex = [math.exp(v - m) for v in row]
        s = sum(ex)
        p = [v / s for v in ex]
        order = sorted(range(len(row)), key=lambda e: (-p[e], e))[:k]
        w = [p[e] for e in order]
        if renorm:
            w = [v / sum(w) for v in w]
        out_ids.append(order)
        out_w.append(w)
    return torch.tensor(out_ids, dtype=torch.int32), torch.tensor(out_w, dtype=torch.float64)


@pytest.mark.parametrize("renorm", [True, False])
def test_route_softmax_ties_go_to_the_lowest_id(backend, renorm):
    g = torch.Generator().manual_seed(1)
    logits = torch.randint(-3, 3, (40, 12), generator=g).float()  # many exact ties
    with leankern.use_backend(backend):
        ids, w = moe.route(logits, 4, renormalize=renorm)
    want_ids, want_w = _brute_route(logits, 4, renorm)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(w.double(), want_w, rtol=4e-7, atol=1e-9)


def _brute_grouped(logits, bias, k, n_group, topk_group, scale):
    """DeepSeek-V3 routing from its description: sigmoid scores, biased selection, group score = sum of the top 2."""
    ids_out, w_out = [], []
    E = logits.shape[1]
    per = E // n_group
    for row, in zip(logits.double().tolist()):
        s = [1 / (1 + math.exp(-v)) for v in row]
        sel = [s[e] + float(bias[e]) for e in range(E)]
        gscore = [sum(sorted(sel[gi * per:(gi + 1) * per], reverse=True)[:2]) for gi in range(n_group)]
        groups = sorted(range(n_group), key=lambda gi: (-gscore[gi], gi))[:topk_group]
        cand = [e for e in range(E) if e // per in groups]
        order = sorted(cand, key=lambda e: (-sel[e], e))[:k]
        w = [s[e] for e in order]
        ids_out.append(order)
        w_out.append([v / sum(w) * scale for v in w])
    return torch.tensor(ids_out, dtype=torch.int32), torch.tensor(w_out, dtype=torch.float64)


def test_route_grouped_sigmoid_with_bias(backend):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(30, 16, generator=g)
    bias = torch.randn(16, generator=g) * 0.3
    with leankern.use_backend(backend):
        ids, w = moe.route(logits, 3, scoring="sigmoid", n_group=4, topk_group=2, correction_bias=bias,
                           routed_scaling_factor=2.5)
    want_ids, want_w = _brute_grouped(logits, bias, 3, 4, 2, 2.5)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(w.double(), want_w, rtol=1e-6, atol=1e-9)


def test_route_nan_logit_is_never_preferred(backend):
    logits = torch.tensor([[0.0, float("nan"), 1.0, 2.0]])
    with leankern.use_backend(backend):
        ids, _ = moe.route(logits, 2, scoring="sigmoid", renormalize=False)
    assert ids.tolist() == [[3, 2]]


def test_route_matches_the_qwen3_router_math(backend):
    """Qwen3-MoE / Mixtral in transformers: softmax in fp32, torch.topk, divide by the sum (no ties here)."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 32, generator=g)
    p = torch.softmax(logits, -1)
    val, idx = torch.topk(p, 8, dim=-1)
    val = val / val.sum(-1, keepdim=True)
    with leankern.use_backend(backend):
        ids, w = moe.route(logits, 8)
    assert torch.equal(ids.long(), idx)
    torch.testing.assert_close(w, val, rtol=4e-7, atol=1e-9)


# -------------------------------------------------------------------------------------------- skip
ROW_IDS = torch.tensor([[7, 2, 5, 0]], dtype=torch.int32)
ROW_W = torch.tensor([[0.5, 0.25, 0.125, 0.0625]])  # exact binary fractions: every comparison is exact


@pytest.mark.parametrize("rule, kw, keep", [
    ("modes", dict(alpha=(2.0, 1.0), tau=(0.5, 0.2), modality=[0]), [1, 1, 0, 0]),   # 2w >= 0.5
    ("modes", dict(alpha=(2.0, 1.0), tau=(0.5, 0.2), modality=[1]), [1, 1, 0, 0]),   # w >= 0.2
    ("modes", dict(alpha=(2.0, 1.0), tau=(0.5, 0.1), modality=[1]), [1, 1, 1, 0]),   # w >= 0.1
    ("modes", dict(alpha=(2.0, 1.0), tau=(9.0, 9.0), modality=[2]), [1, 1, 1, 1]),   # 2: never skip
    ("modes", dict(alpha=(2.0, 1.0), tau=(9.0, 9.0), modality=None), [0, 0, 0, 0]),  # loses every expert
    ("modes", dict(alpha=(2.0, 1.0), tau=(0.25, 9.0), modality=None), [1, 1, 1, 0]),  # 2 * 0.125 >= 0.25
    ("min_p", dict(p=0.5), [1, 1, 0, 0]),
    ("min_p", dict(p=0.9), [1, 0, 0, 0]),
    ("top_p", dict(p=0.8), [1, 1, 0, 0]),   # mass of the first two: 0.75 = 0.8 * 0.9375 exactly: enough
    ("top_p", dict(p=0.85), [1, 1, 1, 0]),  # 0.75 < 0.85 * 0.9375 = 0.796875 <= 0.875
    ("top_p", dict(p=0.5), [1, 0, 0, 0]),   # 0.5 >= 0.5 * 0.9375 after the first
    ("top_p", dict(p=1.0), [1, 1, 1, 1]),
    ("top_k", dict(k=2), [1, 1, 0, 0]),
    ("top_k", dict(k=9), [1, 1, 1, 1]),
])
def test_skip_rules_on_a_hand_worked_row(backend, rule, kw, keep):
    kw = dict(kw)
    if kw.get("modality") is not None:
        kw["modality"] = torch.tensor(kw["modality"], dtype=torch.int32)
    with leankern.use_backend(backend):
        ids, w = moe.skip(ROW_IDS, ROW_W, rule, **kw)
    keep = torch.tensor([keep], dtype=torch.bool)
    assert torch.equal(ids, ROW_IDS.masked_fill(~keep, -1))
    assert torch.equal(w, ROW_W.masked_fill(~keep, 0.0))  # survivors are not renormalised


def test_naee_renormalises_survivors_to_the_row_mass(backend):
    with leankern.use_backend(backend):
        ids, w = moe.skip(ROW_IDS, ROW_W, "naee", beta=0.5)
    assert ids.tolist() == [[7, 2, -1, -1]]
    total = 0.9375
    assert torch.equal(w, torch.tensor([[0.5 * total / 0.75, 0.25 * total / 0.75, 0.0, 0.0]]))


def test_skip_ranks_by_weight_not_by_slot(backend):
    """top_k / top_p rank slots by weight; ties go to the lower slot; -1 slots stay -1 and weigh nothing."""
    ids = torch.tensor([[4, -1, 1, 3]], dtype=torch.int32)
    w = torch.tensor([[0.25, 0.9, 0.5, 0.25]])
    with leankern.use_backend(backend):
        got_ids, got_w = moe.skip(ids, w, "top_k", k=2)
    assert got_ids.tolist() == [[4, -1, 1, -1]]
    assert got_w.tolist() == [[0.25, 0.0, 0.5, 0.0]]


def test_route_fused_with_skip_equals_route_then_skip(backend):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(50, 32, generator=g)
    modality = torch.randint(0, 3, (50,), generator=g)
    with leankern.use_backend(backend):
        fused = moe.route(logits, 6, skip_rule="modes", skip_params=[1.0, 0.5, 0.15, 0.1], modality=modality)
        ids, w = moe.route(logits, 6)
        apart = moe.skip(ids, w, "modes", alpha=(1.0, 0.5), tau=(0.15, 0.1), modality=modality)
    assert torch.equal(fused[0], apart[0]) and torch.equal(fused[1], apart[1])
    assert (fused[0] < 0).any() and (fused[0] >= 0).any()


# ------------------------------------------------------------------------------------------- align
def test_align_layout_by_hand(backend):
    ids = torch.tensor([[1, 0], [1, -1], [2, 1]], dtype=torch.int32)  # slots 0..5
    with leankern.use_backend(backend):
        sorted_ids, offsets, blocks, kept = moe.align(ids, 3, block_m=2)
    assert sorted_ids.tolist() == [1, -1, 0, 2, 5, -1, 4, -1, -1]  # S_max = 6 + 3 * (2 - 1)
    assert offsets.tolist() == [0, 2, 6, 8]
    assert blocks.tolist() == [0, 1, 1, 2, -1]
    assert kept.tolist() == [5]


def test_align_expert_map_keeps_only_local_experts(backend):
    ids = torch.tensor([[3, 0], [1, 2], [-1, 3]], dtype=torch.int32)
    emap = torch.tensor([-1, 0, -1, 1], dtype=torch.int32)  # global 1 -> local 0, 3 -> 1
    with leankern.use_backend(backend):
        sorted_ids, offsets, blocks, kept = moe.align(ids, 2, block_m=1, expert_map=emap)
    assert sorted_ids.tolist() == [2, 0, 5, -1, -1, -1]
    assert offsets.tolist() == [0, 1, 3]
    assert blocks.tolist() == [0, 1, 1, -1, -1, -1]
    assert kept.tolist() == [3]


def test_align_nothing_kept(backend):
    ids = torch.full((4, 2), -1, dtype=torch.int32)
    with leankern.use_backend(backend):
        sorted_ids, offsets, blocks, kept = moe.align(ids, 5, block_m=4)
    assert (sorted_ids == -1).all() and (offsets == 0).all() and (blocks == -1).all() and kept.tolist() == [0]


# ----------------------------------------------------------------------------------------- experts
def _experts_case(T=9, H=24, I=10, E=6, k=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=g).to(dtype)
    w13 = (torch.randn(E, 2 * I, H, generator=g) / H**0.5).to(dtype)
    w2 = (torch.randn(E, H, I, generator=g) / I**0.5).to(dtype)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).to(torch.int32)
    wts = torch.rand(T, k, generator=g)
    return hidden, w13, w2, ids, wts


def _args(hidden, w13, w2, ids, wts, **kw):
    """The op's positional arguments (for the tolerance function)."""
    return (hidden, w13, w2, ids, wts, kw.get("w13_bias"), kw.get("w2_bias"), kw.get("activation", "silu"),
            kw.get("swiglu_alpha", 1.702), kw.get("swiglu_limit", 7.0), kw.get("interleaved", False),
            kw.get("shared_w1"), kw.get("shared_w3"), kw.get("shared_w2"), kw.get("shared_gate"))


def _loop_experts(hidden, w13, w2, ids, wts):
    """Independent per-token loop, fp64: sum_j w_tj * (silu(x W1^T) * x W3^T) W2^T."""
    x = hidden.double()
    I = w2.shape[2]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if e < 0:
                continue
            gate = w13[e, :I].double() @ x[t]
            up = w13[e, I:].double() @ x[t]
            out[t] += float(wts[t, j]) * (w2[e].double() @ (torch.nn.functional.silu(gate) * up))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_experts_equal_an_independent_loop(backend, dtype):
    hidden, w13, w2, ids, wts = _experts_case(dtype=dtype)
    ids[2, 1] = -1
    with leankern.use_backend(backend):
        out = moe.experts(hidden, w13, w2, ids, wts)
    assert_moe_experts(_args(hidden, w13, w2, ids, wts), out)
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), _loop_experts(hidden, w13, w2, ids, wts), rtol=1e-5, atol=1e-5)


def test_a_token_that_loses_every_expert_gets_exactly_zero(backend):
    hidden, w13, w2, ids, wts = _experts_case()
    ids[3] = -1
    ids[5, :2] = -1
    with leankern.use_backend(backend):
        out = moe.experts(hidden, w13, w2, ids, wts)
    assert torch.equal(out[3], torch.zeros_like(out[3]))
    assert (out[5] != 0).any()


def test_nothing_kept_returns_zeros_and_reads_no_weight(backend):
    hidden, w13, w2, ids, wts = _experts_case()
    w13.fill_(float("nan"))
    w2.fill_(float("nan"))
    with leankern.use_backend(backend):
        out = moe.experts(hidden, w13, w2, torch.full_like(ids, -1), wts)
    assert torch.equal(out, torch.zeros_like(out))


def test_untouched_experts_are_never_read(backend):
    """NaN in every expert no slot selects: any read of them would poison the output."""
    hidden, w13, w2, ids, wts = _experts_case(E=8)
    ids = ids % 4  # only experts 0..3, but keep rows distinct
    ids = torch.stack([torch.randperm(4)[:3] for _ in range(ids.shape[0])]).to(torch.int32)
    w13[4:] = float("nan")
    w2[4:] = float("nan")
    with leankern.use_backend(backend):
        out = moe.experts(hidden, w13, w2, ids, wts)
    assert torch.isfinite(out).all()
    assert_moe_experts(_args(hidden, w13, w2, ids, wts), out)


def test_shared_expert_with_gate_is_added_to_every_token(backend):
    hidden, w13, w2, ids, wts = _experts_case()
    g = torch.Generator().manual_seed(9)
    H, Is = hidden.shape[1], 7
    s1, s3 = torch.randn(Is, H, generator=g) / 5, torch.randn(Is, H, generator=g) / 5
    s2, sg = torch.randn(H, Is, generator=g) / 3, torch.randn(H, generator=g) / 5
    ids[0] = -1  # token 0: the shared expert only
    kw = dict(shared_w1=s1, shared_w3=s3, shared_w2=s2, shared_gate=sg)
    with leankern.use_backend(backend):
        out = moe.experts(hidden, w13, w2, ids, wts, **kw)
    assert_moe_experts(_args(hidden, w13, w2, ids, wts, **kw), out)
    x = hidden[0].double()
    shared0 = torch.sigmoid(x @ sg.double()) * (s2.double() @ (torch.nn.functional.silu(s1.double() @ x) *
                                                               (s3.double() @ x)))
    torch.testing.assert_close(out[0].double(), shared0, rtol=1e-5, atol=1e-6)


def test_gpt_oss_layout_transposed_interleaved_with_biases(backend):
    """gpt-oss stores gate_up_proj [E, H, 2I] (gate, up alternating) and down_proj [E, I, H]: read as views."""
    g = torch.Generator().manual_seed(5)
    T, H, I, E = 6, 16, 8, 4
    hidden = torch.randn(T, H, generator=g) * 3
    gate_up = torch.randn(E, H, 2 * I, generator=g)
    down = torch.randn(E, I, H, generator=g) / 3
    b13, b2 = torch.randn(E, 2 * I, generator=g), torch.randn(E, H, generator=g)
    ids = torch.tensor([[0, 3], [1, -1], [2, 0], [3, 1], [-1, -1], [1, 2]], dtype=torch.int32)
    wts = torch.rand(T, 2, generator=g)
    kw = dict(w13_bias=b13, w2_bias=b2, activation="swiglu_oai", swiglu_alpha=1.702, swiglu_limit=7.0,
              interleaved=True)
    with leankern.use_backend(backend):
        out = moe.experts(hidden, gate_up.transpose(1, 2), down.transpose(1, 2), ids, wts, **kw)
    assert_moe_experts(_args(hidden, gate_up.transpose(1, 2), down.transpose(1, 2), ids, wts, **kw), out)
    # the model's own math (transformers GptOssExperts) on token 0, expert 0 and 3
    x = hidden[0]
    y = torch.zeros(H)
    for j, e in enumerate((0, 3)):
        gu = x @ gate_up[e] + b13[e]
        gate, up = gu[0::2].clamp(max=7.0), gu[1::2].clamp(-7.0, 7.0)
        y += wts[0, j] * (((up + 1) * gate * torch.sigmoid(gate * 1.702)) @ down[e] + b2[e])
    torch.testing.assert_close(out[0], y, rtol=1e-4, atol=1e-4)
    assert torch.equal(out[4], torch.zeros(H))


# ------------------------------------------------------------------------------------------ errors
def _raises(backend, exc, match, fn):
    with leankern.use_backend(backend), pytest.raises(exc, match=match):
        fn()


def test_experts_rejects_out_of_range_and_duplicate_ids(backend):
    hidden, w13, w2, ids, wts = _experts_case()
    bad = ids.clone()
    bad[1, 0] = 6
    _raises(backend, ValueError, r"topk_ids: expected expert ids in \[-1, 6\) \(-1 = skipped\)",
            lambda: moe.experts(hidden, w13, w2, bad, wts))
    bad = ids.clone()
    bad[1, 0] = -2
    _raises(backend, ValueError, r"topk_ids: expected expert ids in \[-1, 6\)", lambda: moe.experts(hidden, w13, w2,
                                                                                                   bad, wts))
    dup = ids.clone()
    dup[4, 2] = dup[4, 0]
    _raises(backend, ValueError, "topk_ids: expected distinct expert ids within a row",
            lambda: moe.experts(hidden, w13, w2, dup, wts))
    dup0 = ids.clone()
    dup0[4] = torch.tensor([0, -1, 0])  # expert 0 twice (sorted: -1, 0, 0): an id like any other, not padding
    _raises(backend, ValueError, "topk_ids: expected distinct expert ids within a row",
            lambda: moe.experts(hidden, w13, w2, dup0, wts))
    neg = ids.clone()
    neg[4, :2] = -1  # -1 may repeat
    with leankern.use_backend(backend):
        moe.experts(hidden, w13, w2, neg, wts)


def test_experts_shape_and_dtype_errors(backend):
    hidden, w13, w2, ids, wts = _experts_case()
    _raises(backend, ValueError, r"w13: expected shape \[E, 2I, H=24\]", lambda: moe.experts(hidden, w13[:, :, :5], w2,
                                                                                             ids, wts))
    _raises(backend, ValueError, r"w2: expected shape \[E=6, H=24, I=10\]",
            lambda: moe.experts(hidden, w13, w2[:, :, :3], ids, wts))
    _raises(backend, TypeError, r"w2: expected dtype in \['torch.float32'\], got torch.bfloat16",
            lambda: moe.experts(hidden, w13, w2.bfloat16(), ids, wts))
    _raises(backend, ValueError, r"topk_weights: expected shape \[9, 3\]",
            lambda: moe.experts(hidden, w13, w2, ids, wts[:, :2]))
    _raises(backend, ValueError, "activation: expected one of", lambda: torch.ops.leankern.moe_experts(
        hidden, w13, w2, ids, wts, None, None, "gelu", 1.0, 7.0, False, None, None, None, None))
    strided = torch.randn(6, 20, 48)[:, :, ::2]  # neither rows nor columns contiguous
    _raises(backend, ValueError, r"w13: expected rows or columns contiguous", lambda: moe.experts(
        hidden, strided, w2, ids, wts))


def test_route_skip_align_errors(backend):
    logits = torch.randn(5, 8)
    _raises(backend, ValueError, r"top_k: expected 1 <= top_k <= min\(eligible experts=8, 64\), got 9",
            lambda: moe.route(logits, 9))
    _raises(backend, ValueError, r"n_group: expected a divisor of E=8", lambda: moe.route(logits, 2, n_group=3))
    _raises(backend, ValueError, r"top_k: expected 1 <= top_k <= min\(eligible experts=4, 64\), got 5",
            lambda: moe.route(logits, 5, n_group=4, topk_group=2))
    _raises(backend, ValueError, r"skip_params: expected 4 value\(s\) for rule 'modes', got 1",
            lambda: moe.route(logits, 2, skip_rule="modes", skip_params=[0.1]))
    ids, w = moe.route(logits, 2)
    _raises(backend, ValueError, r"modality: expected codes 0 \(text\), 1 \(vision\) or 2",
            lambda: moe.skip(ids, w, "modes", alpha=1.0, tau=0.1, modality=torch.tensor([0, 1, 2, 3, 0])))
    _raises(backend, ValueError, r"modality: expected shape \[T=5\], got \(4,\)",
            lambda: moe.skip(ids, w, "modes", alpha=1.0, tau=0.1, modality=torch.zeros(4, dtype=torch.int32)))
    _raises(backend, ValueError, r"skip_params: expected top_p's parameter in \[0, 1\], got 1.5",
            lambda: moe.skip(ids, w, "top_p", p=1.5))
    _raises(backend, ValueError, r"topk_ids: expected expert ids in \[-1, 4\)", lambda: moe.align(ids, 4))
    _raises(backend, ValueError, r"block_m: expected 1 <= block_m <= 1024, got 0",
            lambda: moe.align(ids, 8, block_m=0))
    _raises(backend, ValueError, r"expert_map: expected expert ids in \[-1, 2\)",
            lambda: moe.align(ids, 2, expert_map=torch.arange(8, dtype=torch.int32)))


def test_python_api_argument_errors():
    with pytest.raises(ValueError, match="alpha, tau: rule 'modes' needs"):
        moe.skip_params_for("modes")
    with pytest.raises(ValueError, match="beta: rule 'naee' needs beta"):
        moe.skip_params_for("naee")
    with pytest.raises(TypeError, match="modality: expected an integer tensor"):
        moe.skip(ROW_IDS, ROW_W, "modes", alpha=1.0, tau=0.1, modality=torch.zeros(1))


# -------------------------------------------------------------------------------------- config
def test_skip_config_json_round_trip(tmp_path):
    cfg = moe.SkipConfig("modes", alpha=[[0.5, 0.25], [0.5, 0.75]], tau_text=0.01, tau_vision=0.02)
    path = tmp_path / "skip.json"
    cfg.to_json(str(path))
    back = moe.SkipConfig.from_json(str(path))
    assert back == cfg
    assert back.skip_params(1) == [0.5, 0.75, 0.01, 0.02]
    assert not back.skip_renormalize() and moe.SkipConfig("naee", param=0.3).skip_renormalize()
    with pytest.raises(ValueError, match="alpha: rule 'modes' needs per-layer alpha"):
        moe.SkipConfig("modes")
    with pytest.raises(ValueError, match="unknown keys"):
        moe.SkipConfig.from_json('{"rule": "none", "bogus": 1}')


def test_moe_forward_compiles_fullgraph():
    hidden, w13, w2, _, _ = _experts_case()
    logits = torch.randn(hidden.shape[0], w13.shape[0])
    fn = lambda h, z: moe.moe_forward(h, z, w13, w2, 2, skip_rule="top_k", skip_params=[1.0])  # noqa: E731
    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True)(hidden, logits)
    assert torch.equal(got, fn(hidden, logits))


def test_moe_forward_takes_a_skip_config():
    g = torch.Generator().manual_seed(11)
    T, E, H, I = 6, 4, 16, 8
    hidden, logits = torch.randn(T, H, generator=g), torch.randn(T, E, generator=g)
    w13, w2 = torch.randn(E, 2 * I, H, generator=g) / 4, torch.randn(E, H, I, generator=g) / 3
    cfg = moe.SkipConfig(rule="modes", alpha=[[0.5, 0.5], [2.0, 2.0]], tau_text=0.3, tau_vision=0.3)
    for layer in (0, 1):
        want = moe.moe_forward(hidden, logits, w13, w2, 2, skip_rule="modes",
                               skip_params=cfg.skip_params(layer))
        assert torch.equal(moe.moe_forward(hidden, logits, w13, w2, 2, config=cfg, layer=layer), want)
    # the two layers' alphas skip differently: the config's layer is used
    assert not torch.equal(moe.moe_forward(hidden, logits, w13, w2, 2, config=cfg, layer=0),
                           moe.moe_forward(hidden, logits, w13, w2, 2, config=cfg, layer=1))
    with pytest.raises(ValueError, match="config: give the skip rule either"):
        moe.moe_forward(hidden, logits, w13, w2, 2, config=cfg, skip_rule="top_k", skip_params=[1])
    with pytest.raises(TypeError, match="config: expected a leankern.moe.SkipConfig"):
        moe.moe_forward(hidden, logits, w13, w2, 2, config={"rule": "none"})
