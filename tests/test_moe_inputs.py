"""moe input validation: ids that must be errors, not silently wrong results; shape mismatches named correctly.

* int64 expert ids are narrowed to the ops' int32 by the front-ends (``experts``, ``skip``, ``align``,
  ``quantized_experts``, ``ep_moe_forward``) only after they were checked: ``2^32 + e`` would read as ``e`` and
  ``-2^32 + e`` as ``e`` (so ``-2^32 - 1`` as a skipped slot).
* ``skip`` rejects ids < -1 (a rule would turn them into skipped slots that ``experts`` no longer rejects); ids >= E
  pass through (``experts`` / ``align`` reject them) unless ``num_experts`` is given.
* ``align`` does not reject an expert twice in a row (documented: the caller's responsibility; ``experts`` does).
* ``moe_forward`` names router_logits with hidden / w13 (and their shapes) when they disagree.
"""
from __future__ import annotations

import pytest
import torch

import leankern
from leankern import moe
from conftest import available_backends

pytestmark = pytest.mark.filterwarnings("ignore:leankern. running the pure-PyTorch reference:RuntimeWarning")
BACKENDS = available_backends("cpu")
E, H, I = 4, 32, 32
IDS = torch.tensor([[0, 1], [2, 3], [1, -1], [3, 0]], dtype=torch.int32)
WTS = torch.tensor([[0.6, 0.4], [0.7, 0.3], [1.0, 0.0], [0.5, 0.5]])
RANGE = r"topk_ids: expected expert ids in \[-1, 4\) \(-1 = skipped\), got min {}, max {}"
BELOW = r"topk_ids: expected expert ids in \[-1, 2\^31\) \(-1 = skipped\), got min {}, max {}"


@pytest.fixture(params=["ref", "cpp", "triton"])
def backend(request):
    if request.param not in BACKENDS:
        pytest.skip(f"backend {request.param!r} cannot run CPU tensors here")
    return request.param


def _weights():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(IDS.shape[0], H, generator=g), torch.randn(E, 2 * I, H, generator=g) / H**0.5,
            torch.randn(E, H, I, generator=g) / I**0.5)


# (the int64 ids, the min and max the message reports): all but the first narrow to int32 exactly as IDS
WRAPPING = {
    "at_2^31": (torch.where(IDS == 3, torch.tensor(2**31), IDS.long()), -1, 2**31),  # the first that does not fit
    "plus_2^32": (IDS.long() + 2**32, 2**32 - 1, 2**32 + 3),  # -1 included: 2^32 - 1
    "minus_2^32": (torch.where(IDS >= 0, IDS.long() - 2**32, IDS.long()), -(2**32), -1),
    "skipped_-2^32-1": (torch.where(IDS < 0, torch.tensor(-(2**32) - 1), IDS.long()), -(2**32) - 1, 3),
}


@pytest.mark.parametrize("case", list(WRAPPING))
def test_int64_ids_that_would_wrap_to_int32_are_rejected(backend, case):
    ids64, lo, hi = WRAPPING[case]
    if case != "at_2^31":
        assert torch.equal(ids64.to(torch.int32), IDS)  # what the front-ends used to compute with, silently
    hidden, w13, w2 = _weights()
    with leankern.use_backend(backend):
        with pytest.raises(ValueError, match=RANGE.format(lo, hi)):
            moe.experts(hidden, w13, w2, ids64, WTS)
        with pytest.raises(ValueError, match=RANGE.format(lo, hi)):
            moe.align(ids64, E)
        with pytest.raises(ValueError, match=RANGE.format(lo, hi)):
            moe.skip(ids64, WTS, "top_k", k=1, num_experts=E)
        with pytest.raises(ValueError, match=BELOW.format(lo, hi)):  # E unknown: ids in int32's range, >= -1
            moe.skip(ids64, WTS, "top_k", k=1)
        # align with an expert map: the bound is E_global = len(expert_map)
        with pytest.raises(ValueError, match=RANGE.format(lo, hi)):
            moe.align(ids64, 2, expert_map=torch.tensor([0, -1, 1, -1], dtype=torch.int32))


def test_int64_ids_in_range_give_the_int32_result(backend):
    hidden, w13, w2 = _weights()
    with leankern.use_backend(backend):
        assert torch.equal(moe.experts(hidden, w13, w2, IDS.long(), WTS), moe.experts(hidden, w13, w2, IDS, WTS))
        for a, b in zip(moe.align(IDS.long(), E, block_m=2), moe.align(IDS, E, block_m=2)):
            assert torch.equal(a, b)
        for a, b in zip(moe.skip(IDS.long(), WTS, "top_k", k=1), moe.skip(IDS, WTS, "top_k", k=1)):
            assert torch.equal(a, b)


@pytest.mark.skipif(leankern.extension() is None, reason="quantized_experts runs mx.linear: leankern._C not loaded")
def test_quantized_experts_rejects_wrapping_int64_ids():
    from leankern.moe.quantized import quantize_experts, quantized_experts

    hidden, w13, w2 = _weights()
    q = quantize_experts(w13, w2, "mxfp8")
    want = quantized_experts(hidden, q, IDS, WTS)
    assert torch.equal(quantized_experts(hidden, q, IDS.long(), WTS), want)
    for case, (ids64, lo, hi) in WRAPPING.items():
        with pytest.raises(ValueError, match=RANGE.format(lo, hi)):
            quantized_experts(hidden, q, ids64, WTS)
    with pytest.raises(TypeError, match=r"topk_ids: expected dtype in \['torch.int32', 'torch.int64'\], got "
                                        r"torch.int16"):
        quantized_experts(hidden, q, IDS.to(torch.int16), WTS)


def test_ep_moe_forward_rejects_wrapping_int64_ids():
    """Checked before any collective: no process group is needed to see the error."""
    from leankern.moe.parallel import ep_moe_forward, expert_map

    hidden, w13, w2 = _weights()
    emap = expert_map(E, 0, 1)
    for case, (ids64, lo, hi) in WRAPPING.items():
        with pytest.raises(ValueError, match=RANGE.format(lo, hi)):
            ep_moe_forward(hidden, ids64, WTS, w13, w2, emap, owner=torch.zeros(E, dtype=torch.int32))


# ---------------------------------------------------------------------------------------- modality
MODALITY = r"modality: expected codes 0 \(text\), 1 \(vision\) or 2 \(never skip\)"
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_route_rejects_a_non_finite_correction_bias(backend, bad):
    """An inf / NaN correction_bias is an error on every backend, naming the expert (before: the C++ kernel and the
    reference ranked such experts differently, and a group of NaN score was kept beyond topk_group)."""
    logits = torch.zeros(2, 6)
    bias = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    bias[5] = bad
    hidden, w13, w2 = torch.randn(2, H), torch.randn(6, 2 * I, H), torch.randn(6, H, I)
    msg = rf"correction_bias: expected finite values, got {bad} at expert 5"
    with leankern.use_backend(backend):
        with pytest.raises(ValueError, match=msg):
            moe.route(logits, 3, scoring="sigmoid", n_group=2, topk_group=1, correction_bias=bias)
        with pytest.raises(ValueError, match=msg):
            moe.moe_forward(hidden, logits, w13, w2, 3, scoring="sigmoid", n_group=2, topk_group=1,
                            correction_bias=bias)
        bias[5] = 3e38  # finite extremes stay valid
        ids, _ = moe.route(logits, 3, scoring="sigmoid", n_group=2, topk_group=1, correction_bias=bias)
        assert ids.tolist() == [[5, 3, 4], [5, 3, 4]]


MODES = [1.0, 1.0, 0.5, 0.99]  # alpha (text, vision), tau (text, vision)


@pytest.mark.parametrize("code", [2**32, 2**32 + 1, 2**32 + 2, -(2**32) + 1, 3, -1])
def test_int64_modality_codes_outside_0_to_2_are_rejected(backend, code):
    """int64 codes are narrowed to the ops' int32 saturated: 2^32 + 1 must not read as 1 (vision), 2^32 + 2 as 2
    (never skip), -2^32 + 1 as 1."""
    modality = torch.tensor([0, 1, 2, code], dtype=torch.int64)
    hidden, w13, w2 = _weights()
    logits = torch.randn(IDS.shape[0], E, generator=torch.Generator().manual_seed(1))
    with leankern.use_backend(backend):
        with pytest.raises(ValueError, match=MODALITY):
            moe.skip(IDS, WTS, "modes", alpha=MODES[:2], tau=MODES[2:], modality=modality)
        with pytest.raises(ValueError, match=MODALITY):
            moe.route(logits, 2, skip_rule="modes", skip_params=MODES, modality=modality)
        with pytest.raises(ValueError, match=MODALITY):
            moe.moe_forward(hidden, logits, w13, w2, 2, skip_rule="modes", skip_params=MODES, modality=modality)
        ok = torch.tensor([0, 1, 2, 1])  # int64 codes in range: the int32 result
        for a, b in zip(moe.skip(IDS, WTS, "modes", alpha=MODES[:2], tau=MODES[2:], modality=ok),
                        moe.skip(IDS, WTS, "modes", alpha=MODES[:2], tau=MODES[2:], modality=ok.int())):
            assert torch.equal(a, b)


@pytest.mark.skipif(leankern.extension() is None, reason="leankern._C not loaded")
def test_int64_modality_narrowing_compiles_fullgraph():
    def layer(ids, w, modality):
        return moe.skip(ids, w, "modes", alpha=MODES[:2], tau=MODES[2:], modality=modality)

    torch._dynamo.reset()
    fn = torch.compile(layer, fullgraph=True)
    ok = torch.tensor([0, 1, 2, 1])
    for a, b in zip(fn(IDS, WTS, ok), layer(IDS, WTS, ok.int())):
        assert torch.equal(a, b)
    with pytest.raises((ValueError, RuntimeError), match=MODALITY):
        fn(IDS, WTS, ok + 2**32)


# -------------------------------------------------------------------------------------------- skip
@pytest.mark.parametrize("rule,kw", [("top_k", dict(k=2)), ("top_k", dict(k=1)), ("none", {}),
                                     ("modes", dict(alpha=1.0, tau=0.5)), ("naee", dict(beta=0.5)),
                                     ("top_p", dict(p=0.5)), ("min_p", dict(p=0.5))])
def test_skip_rejects_ids_below_minus_one(backend, rule, kw):
    ids = torch.tensor([[-2, 1000000]], dtype=torch.int32)
    w = torch.tensor([[0.6, 0.4]])
    with leankern.use_backend(backend):
        with pytest.raises(ValueError, match=BELOW.format(-2, 1000000)):
            moe.skip(ids, w, rule, **kw)
        with pytest.raises(ValueError, match=BELOW.format(-2, 1000000)):
            moe.skip(ids.long(), w, rule, **kw)
        with pytest.raises(ValueError, match=r"topk_ids: expected expert ids in \[-1, 8\) \(-1 = skipped\), got "
                                             r"min -2, max 1000000"):
            moe.skip(ids, w, rule, num_experts=8, **kw)


def test_skip_raw_op_rejects_ids_below_minus_one():
    """Every backend's op tests it, after its modality check."""
    ids = torch.tensor([[1, -3]], dtype=torch.int32)
    w = torch.tensor([[0.6, 0.4]])
    for b in [b for b in BACKENDS if b != "triton"]:
        with leankern.use_backend(b):
            with pytest.raises(ValueError, match=BELOW.format(-3, 1)):
                torch.ops.leankern.moe_skip(ids, w, "none", [], None, False)
            with pytest.raises(ValueError, match="modality: expected codes"):  # the modality check comes first
                torch.ops.leankern.moe_skip(ids, w, "none", [], torch.tensor([5], dtype=torch.int32), False)
    for b in BACKENDS:
        if b != "triton":
            with leankern.use_backend(b), pytest.raises(ValueError, match="modality: expected codes"):
                moe.skip(ids, w, "none", modality=torch.tensor([5], dtype=torch.int32))


def test_skip_ids_at_or_above_e_pass_through_unless_num_experts(backend):
    ids = torch.tensor([[0, 9], [-1, 2]], dtype=torch.int32)
    w = torch.tensor([[0.6, 0.4], [0.0, 1.0]])
    with leankern.use_backend(backend):
        got, gw = moe.skip(ids, w, "none")
        assert torch.equal(got, ids) and torch.equal(gw, w)  # unchanged: experts / align reject the 9
        with pytest.raises(ValueError, match=r"topk_ids: expected expert ids in \[-1, 4\)"):
            moe.align(got, 4)
        with pytest.raises(ValueError, match=r"topk_ids: expected expert ids in \[-1, 8\) \(-1 = skipped\), got "
                                             r"min -1, max 9"):
            moe.skip(ids, w, "top_k", k=1, num_experts=8)  # the 9 would be dropped (weight 0.4): caught first
        got, _ = moe.skip(ids, w, "none", num_experts=10)
        assert torch.equal(got, ids)
    for bad in (0, -1, 2**31, 2.0, True):
        with pytest.raises(ValueError, match=rf"num_experts: expected an int in \[1, 2\^31\) \(or None\), got "
                                             rf"{bad!r}"):
            moe.skip(ids, w, "none", num_experts=bad)


# ------------------------------------------------------------------------------------------- align
def test_align_leaves_duplicates_to_experts(backend):
    """Documented in moe.align: an expert twice in a row is grouped twice (well defined); experts rejects it."""
    ids = torch.tensor([[1, 1]], dtype=torch.int32)
    zeros = torch.tensor([[0, 1], [0, 0], [2, 3]], dtype=torch.int32)  # expert 0 twice: an id, not the -1 padding
    hidden, w13, w2 = _weights()
    with leankern.use_backend(backend):
        sorted_ids, offsets, _, kept = moe.align(ids, 4)
        assert sorted_ids[:2].tolist() == [0, 1] and offsets.tolist() == [0, 0, 2, 2, 2] and kept.tolist() == [2]
        _, offsets, _, kept = moe.align(zeros, 4)
        assert offsets.tolist() == [0, 3, 4, 5, 6] and kept.tolist() == [6]
        for dup in (ids, zeros):
            with pytest.raises(ValueError, match="topk_ids: expected distinct expert ids within a row"):
                moe.experts(hidden[:dup.shape[0]], w13, w2, dup, torch.ones(dup.shape[0], 2))
    assert "caller's responsibility" in moe.align.__doc__


# ------------------------------------------------------------------------------------- moe_forward
def test_moe_forward_names_router_logits_against_hidden_and_w13(backend):
    hidden, w13, w2 = _weights()  # T = 4 tokens, E = 4 experts
    with leankern.use_backend(backend):
        with pytest.raises(ValueError, match=r"router_logits: expected shape \[T=5, E\] \(T: the tokens of hidden, "
                                             r"of shape \(5, 32\)\), got \(3, 4\)"):
            moe.moe_forward(torch.randn(5, H), torch.randn(3, E), w13, w2, 2)
        with pytest.raises(ValueError, match=r"router_logits: expected shape \[T, E=4\] \(E: the experts of w13, of "
                                             r"shape \(4, 64, 32\)\), got \(4, 3\)"):
            moe.moe_forward(hidden, torch.randn(4, 3), w13, w2, 2)
        with pytest.raises(ValueError, match=r"router_logits: expected shape \[T, E=4\]"):
            moe.moe_forward(hidden, torch.randn(4, 5), w13, w2, 2)
        out = moe.moe_forward(hidden, torch.randn(4, E), w13, w2, 2)
    assert out.shape == (4, H)


# ----------------------------------------------------------------------------------------- compile
@pytest.mark.skipif(leankern.extension() is None, reason="leankern._C not loaded")
def test_front_end_id_checks_compile_fullgraph():
    """The front-ends' host-side checks (skip's ids >= -1, int64 narrowing) stay traceable: an async assert."""
    hidden, w13, w2 = _weights()

    def layer(h, ids, w):
        ids2, w2_ = moe.skip(ids, w, "top_k", k=1)
        return moe.experts(h, w13, w2, ids.long(), w) + moe.experts(h, w13, w2, ids2, w2_)

    torch._dynamo.reset()
    fn = torch.compile(layer, fullgraph=True)
    assert torch.equal(fn(hidden, IDS, WTS), layer(hidden, IDS, WTS))
    bad = IDS.clone()
    bad[0, 0] = -2  # skip's own kernel rejects it (compiled or not), with the values
    with pytest.raises(ValueError, match=r"topk_ids: expected expert ids in \[-1, 2\^31\) \(-1 = skipped\), got "
                                         r"min -2"):
        fn(hidden, bad, WTS)

    def wide(h, ids, w):  # int64 ids: narrowed after an async assert in the graph
        return moe.experts(h, w13, w2, ids, w)

    torch._dynamo.reset()
    fw = torch.compile(wide, fullgraph=True)
    assert torch.equal(fw(hidden, IDS.long(), WTS), wide(hidden, IDS, WTS))
    with pytest.raises(RuntimeError, match=r"topk_ids: expected expert ids in \[-1, \d+\) \(-1 = skipped\), got "
                                           r"an id outside it"):
        fw(hidden, IDS.long() + 2**32, WTS)


def test_experts_with_zero_hidden_size_give_an_empty_result(backend):
    """H = 0 passes the shape checks; the C++ kernel divided by H (SIGFPE killed the process): [T, 0] on every
    backend, as the reference gives."""
    x, w13, w2 = torch.randn(4, 0), torch.randn(8, 12, 0), torch.randn(8, 0, 6)
    ids = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]], dtype=torch.int32)
    out = moe.experts(x, w13, w2, ids, torch.rand(4, 2))
    assert out.shape == (4, 0) and out.dtype == x.dtype
