"""Triton moe kernels against the reference (leankern.moe.ref).

Without a GPU, conftest sets ``TRITON_INTERPRET=1`` and the kernels run on CPU tensors under the interpreter
(tiny shapes: the interpreter is slow); with one they run compiled on CUDA tensors.

Exact comparisons: route ids (weights within 8 ulp: a softmax / sigmoid and one division, summed in another
order than torch's), skip (ids and weight bits: the fp64 top-p mass and the fp32 renormalisation sums follow
the reference's order), align (every output bit for bit). experts: within ``tolerances.moe_experts_bound``
(derived there: fp32 accumulation in any order, gamma_n of the |products| of each projection carried through
the activation's slopes, the intermediate rounded to the weight dtype (u_w |a|, which this kernel does before
the down projection), gamma_{k+1} over a token's slots and the shared expert, one output rounding). The reference
itself must lie within the same bound.
"""
import pytest
import torch

pytest.importorskip("triton")

import leankern  # noqa: E402
from leankern.core import triton_interpreting  # noqa: E402
from leankern.moe import ref  # noqa: E402
from tolerances import assert_moe_experts  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow notes (interpreter)

_U = 2.0**-24


@pytest.fixture
def dev(device):
    if device == "cpu" and not triton_interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (conftest sets it only without a GPU)")
    return device


@pytest.fixture
def tm():
    from leankern.triton_kernels import moe

    return moe


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _assert_weights(got, want):
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=8 * _U, atol=1e-30, equal_nan=True)


def _bits_equal(a, b):
    return torch.equal(a.cpu().view(torch.int32), b.cpu().view(torch.int32))


# ------------------------------------------------------------------------------------------ route
ROUTE_CASES = {
    "softmax": dict(top_k=4),
    "softmax-k1-no-renorm": dict(top_k=1, renormalize=False),
    "softmax-scaled": dict(top_k=5, routed_scaling_factor=2.5),
    "sigmoid-bias-groups": dict(top_k=3, scoring="sigmoid", n_group=4, topk_group=2, bias=True,
                                routed_scaling_factor=2.5),
    "sigmoid-groups-no-bias": dict(top_k=4, scoring="sigmoid", n_group=8, topk_group=3),
    "sigmoid-bias-group-size-1": dict(top_k=2, scoring="sigmoid", n_group=16, topk_group=5, bias=True),
    "softmax-all-experts": dict(top_k=16),
}


def _route_args(E=16, T=7, seed=0, dtype=torch.float32, top_k=4, scoring="softmax", renormalize=True, n_group=1,
                topk_group=1, bias=False, routed_scaling_factor=1.0):
    g = _gen(seed)
    logits = torch.randn(T, E, generator=g)
    logits[1, 3] = logits[1, 9]  # an exact tie: the lower id first
    logits[2, :] = 0.5  # every score equal
    logits[3, 5] = float("nan")  # softmax: the whole row NaN -> ids 0..k-1 (every score -inf)
    b = (torch.randn(E, generator=g) * 0.1) if bias else None
    return (logits.to(dtype), top_k, scoring, renormalize, n_group, topk_group, b, routed_scaling_factor)


@pytest.mark.parametrize("case", list(ROUTE_CASES))
def test_route_matches_reference(dev, tm, case):
    args = _route_args(**ROUTE_CASES[case])
    want_ids, want_w = ref.route_ref(*args)
    args = tuple(a.to(dev) if isinstance(a, torch.Tensor) else a for a in args)
    ids, w = tm.route_triton(*args, "none", [], None, False)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    assert torch.equal(ids.cpu(), want_ids), (ids, want_ids)
    _assert_weights(w, want_w)


def test_route_bf16_logits(dev, tm):
    args = _route_args(E=32, T=5, dtype=torch.bfloat16, top_k=6, seed=3)
    want_ids, want_w = ref.route_ref(*args)
    ids, w = tm.route_triton(args[0].to(dev), *args[1:], "none", [], None, False)
    assert torch.equal(ids.cpu(), want_ids)
    _assert_weights(w, want_w)


SKIP_CASES = [("modes", [0.9, 0.6, 0.15, 0.1], False), ("modes", [1.0, 1.0, 0.2, 0.3], True),
              ("naee", [0.5], True), ("naee", [0.3], False), ("top_p", [0.6], False), ("top_p", [0.9], True),
              ("top_p", [0.0], False), ("top_p", [1.0], True), ("min_p", [0.4], False), ("top_k", [2.0], True),
              ("top_k", [1.0], False), ("none", [], True)]


@pytest.mark.parametrize("rule,params,renorm", SKIP_CASES, ids=[f"{r}-{p}-{n}" for r, p, n in SKIP_CASES])
def test_route_fused_with_skip(dev, tm, rule, params, renorm):
    """route + skip in one kernel: the ids of route_ref then skip_ref exactly (weights within 8 ulp)."""
    args = _route_args(E=16, T=9, top_k=5, seed=5)
    modality = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2], dtype=torch.int32) if rule == "modes" else None
    r_ids, r_w = ref.route_ref(*args)
    want_ids, want_w = ref.skip_ref(r_ids, r_w, rule, params, modality, renorm)
    ids, w = tm.route_triton(args[0].to(dev), *args[1:], rule, params,
                             None if modality is None else modality.to(dev), renorm)
    assert torch.equal(ids.cpu(), want_ids), (ids, want_ids)
    _assert_weights(w, want_w)


# ------------------------------------------------------------------------------------------- skip
def _skip_inputs(T=10, k=6, seed=1):
    """Weights with ties and pre-skipped (-1) slots; row 0 all skipped, row 1 all equal weights."""
    g = _gen(seed)
    ids = torch.stack([torch.randperm(32, generator=g)[:k] for _ in range(T)]).to(torch.int32)
    w = torch.softmax(torch.randn(T, k, generator=g) * 2, dim=-1)
    w[:, 3] = w[:, 1]  # ties between slots
    ids[0] = -1
    w[1] = 1.0 / k
    ids[2, 1] = -1
    ids[4, 0] = -1
    ids[5, 4:] = -1
    w = w.masked_fill(ids < 0, 0.0)
    w[6, 2] = 0.0  # a kept slot of weight 0
    modality = (torch.arange(T, dtype=torch.int32) % 3)
    return ids, w, modality


@pytest.mark.parametrize("rule,params,renorm", SKIP_CASES, ids=[f"{r}-{p}-{n}" for r, p, n in SKIP_CASES])
def test_skip_bit_exact(dev, tm, rule, params, renorm):
    ids, w, modality = _skip_inputs()
    mod = modality if rule == "modes" else None
    want_ids, want_w = ref.skip_ref(ids, w, rule, params, mod, renorm)
    got_ids, got_w = tm.skip_triton(ids.to(dev), w.to(dev), rule, params, None if mod is None else mod.to(dev),
                                    renorm)
    assert torch.equal(got_ids.cpu(), want_ids), (got_ids, want_ids)
    assert _bits_equal(got_w, want_w), (got_w, want_w)


def test_skip_modes_without_modality(dev, tm):
    """Decode: no modality tensor, every token is text (alpha_text, tau_text)."""
    ids, w, _ = _skip_inputs(seed=2)
    for renorm in (False, True):
        want = ref.skip_ref(ids, w, "modes", [0.8, 5.0, 0.12, 0.0], None, renorm)
        got = tm.skip_triton(ids.to(dev), w.to(dev), "modes", [0.8, 5.0, 0.12, 0.0], None, renorm)
        assert torch.equal(got[0].cpu(), want[0]) and _bits_equal(got[1], want[1])


def test_skip_top_p_fp64_mass_at_the_boundary(dev, tm):
    """p exactly at a prefix's mass: the fp64 cum - w of the reference decides (rank order, ties to slot)."""
    w = torch.tensor([[0.25, 0.5, 0.125, 0.125], [0.1, 0.2, 0.3, 0.4], [1 / 3, 1 / 3, 1 / 6, 1 / 6]])
    ids = torch.arange(12, dtype=torch.int32).reshape(3, 4)
    for p in (0.75, 0.875, 0.5, 0.7, 0.3, 2 / 3, 1.0):
        want = ref.skip_ref(ids, w, "top_p", [p], None, True)
        got = tm.skip_triton(ids.to(dev), w.to(dev), "top_p", [p], None, True)
        assert torch.equal(got[0].cpu(), want[0]) and _bits_equal(got[1], want[1]), p


def test_skip_through_the_op(dev):
    ids, w, modality = _skip_inputs(seed=4)
    with leankern.use_backend("triton"):
        got = leankern.moe.skip(ids.to(dev), w.to(dev), "modes", alpha=(0.9, 0.7), tau=(0.1, 0.12),
                                modality=modality.to(dev))
    want = ref.skip_ref(ids, w, "modes", [0.9, 0.7, 0.1, 0.12], modality, False)
    assert torch.equal(got[0].cpu(), want[0]) and _bits_equal(got[1], want[1])


# ------------------------------------------------------------------------------------------ align
def _align_ids(T, k, E_ids, seed, skip=0.3):
    g = _gen(seed)
    ids = torch.stack([torch.randperm(E_ids, generator=g)[:k] for _ in range(T)]).to(torch.int32)
    return ids.masked_fill(torch.rand(T, k, generator=g) < skip, -1)


def _assert_align_exact(got, want):
    names = ("sorted_slot_ids", "expert_offsets", "block_expert_ids", "num_kept")
    for name, g_, w_ in zip(names, got, want):
        assert g_.dtype == torch.int32 and g_.shape == w_.shape, name
        assert torch.equal(g_.cpu(), w_), (name, g_, w_)


ALIGN_CASES = {
    "bm1": dict(T=9, k=3, E=8, block_m=1),
    "bm4": dict(T=9, k=3, E=8, block_m=4),
    "bm16-idle-experts": dict(T=5, k=2, E=20, block_m=16),  # most experts get no token
    "all-kept": dict(T=8, k=4, E=6, block_m=4, skip=0.0),
    "none-kept": dict(T=6, k=3, E=5, block_m=8, skip=1.1),
    "many-chunks": dict(T=40, k=4, E=7, block_m=3),  # 160 slots: several 32-slot chunks
    "many-experts": dict(T=12, k=6, E=150, block_m=2),  # E > the 64-expert prefix chunk
    "one-token": dict(T=1, k=1, E=4, block_m=5),
}


@pytest.mark.parametrize("case", list(ALIGN_CASES))
def test_align_bit_exact(dev, tm, case):
    c = dict(ALIGN_CASES[case])
    ids = _align_ids(c["T"], c["k"], c["E"], seed=len(case), skip=c.get("skip", 0.3))
    want = ref.align_ref(ids, c["E"], c["block_m"])
    _assert_align_exact(tm.align_triton(ids.to(dev), c["E"], c["block_m"], None), want)


def test_align_expert_map(dev, tm):
    """Global ids through expert_map (-1: expert on another rank); pre-skipped slots stay uncounted."""
    ids = _align_ids(11, 4, 12, seed=7)
    emap = torch.tensor([-1, 0, 1, -1, 2, 3, -1, 4, -1, -1, 5, -1], dtype=torch.int32)
    for bm in (1, 4):
        want = ref.align_ref(ids, 6, bm, emap)
        _assert_align_exact(tm.align_triton(ids.to(dev), 6, bm, emap.to(dev)), want)


def test_align_empty(dev, tm):
    ids = torch.empty((0, 4), dtype=torch.int32)
    _assert_align_exact(tm.align_triton(ids.to(dev), 5, 4, None), ref.align_ref(ids, 5, 4))


def test_align_small_chunks(dev, tm, monkeypatch):
    monkeypatch.setattr(tm, "FORCE_CONFIG", {"align_block": 8})
    ids = _align_ids(13, 3, 9, seed=11)
    _assert_align_exact(tm.align_triton(ids.to(dev), 9, 4, None), ref.align_ref(ids, 9, 4))


def test_align_through_the_op_and_its_errors(dev):
    ids = _align_ids(6, 3, 8, seed=2)
    with leankern.use_backend("triton"):
        got = leankern.moe.align(ids.to(dev), 8, block_m=4)
    _assert_align_exact(got, ref.align_ref(ids, 8, 4))
    if not triton_interpreting():
        return  # on a GPU a bad id is an async device assert (core.check_value_on_device), not a ValueError
    bad = ids.clone()
    bad[2, 1] = 8
    messages = []
    for backend in ("ref", "triton"):
        with leankern.use_backend(backend), pytest.raises(ValueError) as info:
            torch.ops.leankern.moe_align(bad, 8, 4, None)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "topk_ids" in messages[0]


# ---------------------------------------------------------------------------------------- experts
def _experts_args(T=6, E=5, k=2, H=40, I=24, seed=0, dtype=torch.float32, w_dtype=None, bias=False,
                  activation="silu", interleaved=False, shared=False, gate=False, w_cols=False, skip=None):
    """Experts arguments; ``skip``: a callable editing (ids, w) in place; ``w_cols``: transposed weight views."""
    g = _gen(seed)
    w_dtype = w_dtype or dtype
    x = torch.randn(T, H, generator=g)
    w13 = torch.randn(E, 2 * I, H, generator=g) / H**0.5
    w2 = torch.randn(E, H, I, generator=g) / I**0.5
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).to(torch.int32)
    w = torch.rand(T, k, generator=g) + 0.1
    if skip is not None:
        skip(ids, w)
    w = w.masked_fill(ids < 0, 0.0)
    b13 = torch.randn(E, 2 * I, generator=g).to(w_dtype) if bias else None
    b2 = torch.randn(E, H, generator=g).to(w_dtype) if bias else None
    w13, w2 = w13.to(w_dtype), w2.to(w_dtype)
    if w_cols:  # [E, 2I, H] with stride(1) == 1, as gpt-oss's gate_up_proj.transpose(1, 2)
        w13 = w13.transpose(1, 2).contiguous().transpose(1, 2)
        w2 = w2.transpose(1, 2).contiguous().transpose(1, 2)
    s1 = s3 = s2 = sg = None
    if shared:
        Is = 12
        s1 = (torch.randn(Is, H, generator=g) / H**0.5).to(w_dtype)
        s3 = (torch.randn(Is, H, generator=g) / H**0.5).to(w_dtype)
        s2 = (torch.randn(H, Is, generator=g) / Is**0.5).to(w_dtype)
        sg = (torch.randn(H, generator=g) / H**0.5).to(w_dtype) if gate else None
    return (x.to(dtype), w13, w2, ids, w, b13, b2, activation, 1.702, 7.0, interleaved, s1, s3, s2, sg)


def _to(args, dev):
    return tuple(a.to(dev) if isinstance(a, torch.Tensor) else a for a in args)


def _nan_workspaces(monkeypatch, tm):
    """torch.empty inside the launchers returns NaN (floats) / a poison value (ints): nothing unwritten is read."""
    real_empty = torch.empty

    def poisoned(*shape, **kw):
        t = real_empty(*shape, **kw)
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype in (torch.int32, torch.int64, torch.int16):
            t.fill_(-12345)
        return t

    monkeypatch.setattr(tm.torch, "empty", poisoned)


def _skip_first_tokens(ids, w):
    ids[0] = -1  # token 0 loses every expert: exactly 0 routed output
    ids[2, 1] = -1


EXPERT_CASES = {
    "fp32": dict(skip=_skip_first_tokens),
    "fp32-all-kept": dict(T=5, k=3),
    "fp32-zero-kept": dict(skip=lambda ids, w: ids.fill_(-1)),
    "fp32-idle-experts": dict(T=3, E=9, k=2, skip=_skip_first_tokens),  # most experts have no token
    "bf16-swiglu-interleaved-bias-transposed": dict(dtype=torch.bfloat16, bias=True, activation="swiglu_oai",
                                                    interleaved=True, w_cols=True, skip=_skip_first_tokens),
    "fp32-swiglu-split-bias": dict(bias=True, activation="swiglu_oai"),
    "fp16-shared-gate": dict(dtype=torch.float16, shared=True, gate=True, skip=_skip_first_tokens),
    "fp32-shared": dict(shared=True, skip=lambda ids, w: ids.fill_(-1)),
    "fp32-x-bf16-weights": dict(w_dtype=torch.bfloat16, bias=True),
    "many-blocks": dict(T=20, E=3, k=2, H=24, I=16),  # several 16-row blocks per expert
}


@pytest.mark.parametrize("case", list(EXPERT_CASES))
def test_experts_within_bound(dev, tm, monkeypatch, case):
    args = _experts_args(**EXPERT_CASES[case])
    want = ref.experts_ref(*args)
    assert_moe_experts(args, want, "reference")  # the bound holds for the reference too
    _nan_workspaces(monkeypatch, tm)
    got = tm.experts_triton(*_to(args, dev)).cpu()
    assert_moe_experts(args, got)
    ids = args[3]
    lost = (ids < 0).all(dim=1)
    if args[11] is None and lost.any():
        assert torch.equal(got[lost], torch.zeros_like(got[lost]))  # exactly 0, not -0 / NaN


def test_experts_decode_token(dev, tm):
    """One token, one kept slot of k = 4 (decode with heavy skipping): a single 16-row block does the work."""
    args = _experts_args(T=1, E=8, k=4, skip=lambda ids, w: ids[:, 1:].fill_(-1))
    assert_moe_experts(args, tm.experts_triton(*_to(args, dev)).cpu())


def test_experts_block_m_padding(dev, tm, monkeypatch):
    """Larger blocks than any expert's rows (block_m 32): every block mostly -1 padding."""
    monkeypatch.setattr(tm, "FORCE_CONFIG", {"block_m": 32})
    args = _experts_args(T=7, E=4, k=2, skip=_skip_first_tokens)
    assert_moe_experts(args, tm.experts_triton(*_to(args, dev)).cpu())


def test_experts_through_the_op_and_its_errors(dev):
    args = _experts_args(bias=True, shared=True, gate=True, skip=_skip_first_tokens)
    with leankern.use_backend("triton"):
        got = torch.ops.leankern.moe_experts(*_to(args, dev))
    assert_moe_experts(args, got.cpu())
    if not triton_interpreting():
        return  # on a GPU a bad id is an async device assert (core.check_value_on_device), not a ValueError
    for bad_id, what in ((5, "out of range"), (-2, "below -1")):
        ids = args[3].clone()
        ids[3, 0] = bad_id
        bad = args[:3] + (ids,) + args[4:]
        messages = []
        for backend in ("ref", "triton"):
            with leankern.use_backend(backend), pytest.raises(ValueError) as info:
                torch.ops.leankern.moe_experts(*bad)
            messages.append(str(info.value))
        assert messages[0] == messages[1], what
    ids = args[3].clone()
    ids[1, 1] = ids[1, 0]  # an expert twice in a row
    messages = []
    for backend in ("ref", "triton"):
        with leankern.use_backend(backend), pytest.raises(ValueError) as info:
            torch.ops.leankern.moe_experts(*(args[:3] + (ids,) + args[4:]))
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "twice" in messages[0]


def test_route_through_the_op(dev):
    args = _route_args(E=16, T=5, top_k=4, seed=9)
    with leankern.use_backend("triton"):
        ids, w = leankern.moe.route(args[0].to(dev), 4, skip_rule="top_p", skip_params=[0.8])
    want = ref.skip_ref(*ref.route_ref(*args), "top_p", [0.8], None, False)
    assert torch.equal(ids.cpu(), want[0])
    _assert_weights(w, want[1])


# ----------------------------------------------------------------------------------- graph safety
def test_launchers_are_graph_safe(dev, tm, monkeypatch):
    """No host reads, no tensors from host data, no cross-device copies (kernels stubbed under the interpreter,
    whose own argument copies a GPU launch does not make); static grids."""
    from test_launchers_graph_safe import GraphSafetyChecker, _RecordingKernel

    launches = []
    names = ("_route_kernel", "_skip_kernel", "_align_count_kernel", "_align_scatter_kernel", "_gate_up_kernel",
             "_down_kernel", "_combine_kernel")
    if triton_interpreting():
        for name in names:
            monkeypatch.setattr(tm, name, _RecordingKernel(getattr(tm, name), launches))
    r_args = _route_args()
    logits = r_args[0].to(dev)  # inputs on the device before the checker: the copy is not the launcher's
    ids, w, modality = (t.to(dev) for t in _skip_inputs())
    e_args = _to(_experts_args(bias=True, shared=True, gate=True, interleaved=True, skip=_skip_first_tokens), dev)
    calls = [
        lambda: tm.route_triton(logits, *r_args[1:], "top_p", [0.7], None, True),
        lambda: tm.skip_triton(ids, w, "modes", [1.0, 0.5, 0.1, 0.1], modality, False),
        lambda: tm.align_triton(ids, 32, 4, None),
        lambda: tm.experts_triton(*e_args),
    ]
    for call in calls:
        checker = GraphSafetyChecker()
        with checker:
            call()
        assert checker.violations == []
    if launches:
        assert {launch["kernel"] for launch in launches} >= set(names)
        for launch in launches:
            assert all(isinstance(n, int) for n in launch["grid"]), launch  # host ints only: no tensor grid
