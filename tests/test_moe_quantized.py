"""leankern.moe.quantized: MoE experts with MX / NV block-quantized weights through leankern.mx.linear.

Reference: :func:`leankern.moe.ref.experts_ref` semantics on the dequantized weights (``MXTensor.dequantize``,
exact in fp32), checked within :func:`tolerances.moe_experts_bound` called with those fp32 weights. Why that bound
holds: hidden enters mx.linear as fp32 (exact), so mx.linear never rounds x (weight-only: ``x_hat = x``, see
``leankern.mx.ref.mx_linear_ref``) and its result stays fp32 (it is rounded to x's dtype, fp32); the activation
feeds the down projection in fp32 (the bound's ``round_a`` is u(fp32) = 0). Every projection is then an fp32 sum
of exact products in some order, plus the bias: the gamma_{n+1} terms of the bound. NV formats: a kernel may apply
the per-tensor scale g in its epilogue rather than per decoded weight (``tolerances.linear_error_bound``'s
``extra_terms=3``): gamma_{n+1} becomes gamma_{n+4} in both projections; every term of the bound is a polynomial
of degree <= 2 in those gammas with non-negative coefficients, so scaling the whole bound by
``(gamma_{n+4} / gamma_{n+1})^2`` (n = min(H, I), where the ratio is largest) covers it.
"""
from __future__ import annotations

import pytest
import torch

import leankern
from leankern import mx
from leankern.moe import ref
from leankern.moe.quantized import QuantizedExperts, quantize_experts, quantized_experts
from tolerances import _gamma, _assert_within, moe_experts_bound

pytestmark = pytest.mark.skipif(leankern.extension() is None, reason="leankern._C not loaded")

E, H, I, T, K = 8, 64, 32, 7, 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes: one thread, so a loaded machine (oversubscribed OpenMP barriers on every one of the many small
    mx.linear calls) cannot stretch the run; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
ALL_FORMATS = tuple(mx.FORMATS)


def _weights(E=E, H=H, I=I, seed=0, bias=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w13 = (torch.randn(E, 2 * I, H, generator=g) / H**0.5).to(dtype)
    w2 = (torch.randn(E, H, I, generator=g) / I**0.5).to(dtype)
    b13 = (0.1 * torch.randn(E, 2 * I, generator=g)).to(dtype) if bias else None
    b2 = (0.1 * torch.randn(E, H, generator=g)).to(dtype) if bias else None
    return w13, w2, b13, b2


def _routing(T=T, k=K, E=E, seed=1):
    """[T, k] distinct ids per row with some -1 slots; token 2 loses every slot; expert E-1 never chosen."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E - 1, generator=g)[:k] for _ in range(T)]).to(torch.int32)
    ids[0, 1] = -1
    ids[3, 0] = -1
    ids[2] = -1
    w = torch.rand(T, k, generator=g)
    w = torch.where(ids >= 0, w, torch.zeros(()))
    return ids, w


def _check(out, hidden, q, ids, w, activation="silu", alpha=1.702, limit=7.0, shared=(None,) * 4):
    """out within the derived bound of experts_ref on the dequantized weights (module doc)."""
    d13, d2 = q.dequantize(torch.float32)
    args = (hidden, d13, d2, ids, w, q.w13_bias, q.w2_bias, activation, alpha, limit, q.interleaved, *shared)
    exact, bound = moe_experts_bound(args)
    if mx.get_format(q.fmt).is_nv:
        n = min(q.H, q.I) + 1
        bound = bound * (_gamma(n + 3) / _gamma(n)) ** 2
    assert out.dtype == hidden.dtype and tuple(out.shape) == (hidden.shape[0], q.H)
    _assert_within(f"quantized_experts[{q.fmt}]", out.float(), exact, bound)
    # the definition itself (experts_ref on the same dequantized weights) is within the same bound
    _assert_within("experts_ref", ref.experts_ref(hidden, *args[1:]).float(), exact, bound)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_every_format_within_the_bound_fp32(fmt):
    w13, w2, _, _ = _weights()
    q = quantize_experts(w13, w2, fmt)
    assert q.block_size == mx.get_format(fmt).default_block_size and q.layout == "prepacked16"
    hidden = torch.randn(T, H, generator=torch.Generator().manual_seed(5))
    ids, w = _routing()
    out = quantized_experts(hidden, q, ids, w)
    _check(out, hidden, q, ids, w)
    assert torch.equal(out[2], torch.zeros(H))  # every slot -1: exactly 0


@pytest.mark.parametrize("fmt", ("mxfp4", "nvfp4", "mxint8", "mxfp8"))
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_half_hidden_and_half_weights(fmt, dtype):
    w13, w2, b13, b2 = _weights(bias=True, dtype=dtype, seed=3)
    q = quantize_experts(w13, w2, fmt, w13_bias=b13, w2_bias=b2)
    assert q.dtype == dtype and q.w13_bias.dtype == torch.float32
    hidden = torch.randn(T, H, generator=torch.Generator().manual_seed(6)).to(dtype)
    ids, w = _routing(seed=4)
    out = quantized_experts(hidden, q, ids, w)
    _check(out, hidden, q, ids, w)
    assert torch.equal(out[2], torch.zeros(H, dtype=dtype))


@pytest.mark.parametrize("fmt", ("mxfp4", "nvfp4", "mxint8", "mxfp8"))
def test_gpt_oss_interleaved_swiglu_oai_biases_and_row_major(fmt):
    w13, w2, b13, b2 = _weights(bias=True, seed=7)
    w13 = w13 * 4  # reach the clamp at swiglu_limit
    q = quantize_experts(w13.transpose(1, 2).contiguous().transpose(1, 2), w2, fmt, w13_bias=b13, w2_bias=b2,
                         interleaved=True, prepack=False, block_size=16)
    assert q.layout == "row_major" and q.block_size == 16 and q.interleaved
    hidden = 3 * torch.randn(T, H, generator=torch.Generator().manual_seed(8))
    ids, w = _routing(seed=9)
    out = quantized_experts(hidden, q, ids, w, activation="swiglu_oai", swiglu_alpha=1.702, swiglu_limit=7.0)
    _check(out, hidden, q, ids, w, "swiglu_oai", 1.702, 7.0)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_shared_expert_with_gate(dtype):
    w13, w2, _, _ = _weights(seed=10)
    q = quantize_experts(w13, w2, "nvfp4")
    g = torch.Generator().manual_seed(11)
    Is = 48
    s1, s3 = (torch.randn(Is, H, generator=g) / 8).to(dtype), (torch.randn(Is, H, generator=g) / 8).to(dtype)
    s2, sg = (torch.randn(H, Is, generator=g) / 7).to(dtype), torch.randn(H, generator=g).to(dtype)
    hidden = torch.randn(T, H, generator=g).to(dtype)
    ids, w = _routing(seed=12)
    out = quantized_experts(hidden, q, ids, w, shared_w1=s1, shared_w3=s3, shared_w2=s2, shared_gate=sg)
    _check(out, hidden, q, ids, w, shared=(s1, s3, s2, sg))
    alone = quantized_experts(hidden, q, torch.full_like(ids, -1), w, shared_w1=s1, shared_w3=s3, shared_w2=s2,
                              shared_gate=sg)
    assert torch.equal(out[2], alone[2])  # every slot -1: exactly the shared output


def test_nothing_kept_and_empty_batch():
    w13, w2, _, _ = _weights()
    q = quantize_experts(w13, w2, "mxfp4")
    hidden = torch.randn(T, H)
    out = quantized_experts(hidden, q, torch.full((T, K), -1, dtype=torch.int32), torch.rand(T, K))
    assert torch.equal(out, torch.zeros(T, H))
    out = quantized_experts(hidden[:0], q, torch.zeros(0, K, dtype=torch.int32), torch.zeros(0, K))
    assert out.shape == (0, H)


def test_int64_ids_and_bf16_weights_accepted():
    w13, w2, _, _ = _weights()
    q = quantize_experts(w13, w2, "mxint8")
    hidden = torch.randn(T, H)
    ids, w = _routing()
    a = quantized_experts(hidden, q, ids, w)
    b = quantized_experts(hidden, q, ids.long(), w.bfloat16())
    _check(b, hidden, q, ids, w.bfloat16().float())
    assert torch.equal(a, quantized_experts(hidden, q, ids, w))  # deterministic


class _Poison:
    """Stands in for an untouched expert's MXTensor: any attribute access fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"an untouched expert's weight was read (attribute {name!r})")


def _poisoned(q: QuantizedExperts, experts) -> QuantizedExperts:
    w13, w2 = list(q.w13), list(q.w2)
    b13, b2 = q.w13_bias.clone(), q.w2_bias.clone()
    for e in experts:
        w13[e], w2[e] = _Poison(), _Poison()
        b13[e], b2[e] = float("nan"), float("nan")
    return QuantizedExperts(w13, w2, b13, b2, q.E, q.H, q.I, q.fmt, q.block_size, q.interleaved, q.dtype, q.device)


@pytest.mark.parametrize("fmt", ("mxfp4", "nvfp4"))
def test_untouched_experts_are_never_read(fmt, monkeypatch):
    w13, w2, b13, b2 = _weights(bias=True)
    q = quantize_experts(w13, w2, fmt, w13_bias=b13, w2_bias=b2)
    hidden = torch.randn(T, H)
    ids, w = _routing()
    touched = set(ids[ids >= 0].tolist())
    untouched = [e for e in range(E) if e not in touched]
    assert E - 1 in untouched
    good = quantized_experts(hidden, q, ids, w)
    # 1. NaN block scales in the packed buffers (E8M0 0xFF / e4m3 0x7F are NaN) of every untouched expert
    nan_byte = 0x7F if mx.get_format(fmt).is_nv else 0xFF
    for e in untouched:
        for wt in (q.w13[e], q.w2[e]):
            assert wt.layout == "prepacked16"
            wt.codes[:, :, :16] = nan_byte
    assert torch.isnan(q.w13[untouched[0]].dequantize()).all()
    assert torch.equal(quantized_experts(hidden, q, ids, w), good)
    # 2. untouched experts replaced by objects that fail on any access, biases NaN
    assert torch.equal(quantized_experts(hidden, _poisoned(q, untouched), ids, w), good)
    # 3. a spy on mx.linear: only touched experts' weights, each once per projection
    seen = []
    real = mx.linear

    def spy(x, weight, bias=None, *, act_fmt=None):
        seen.append(id(weight))
        return real(x, weight, bias, act_fmt=act_fmt)

    monkeypatch.setattr(mx, "linear", spy)
    quantized_experts(hidden, q, ids, w)
    want = [id(t) for e in sorted(touched) for t in (q.w13[e], q.w2[e])]
    assert seen == want


def test_errors_before_any_weight_is_read():
    w13, w2, b13, b2 = _weights(bias=True)
    q = quantize_experts(w13, w2, "mxfp4", w13_bias=b13, w2_bias=b2)
    qp = _poisoned(q, range(E))
    hidden = torch.randn(T, H)
    ids, w = _routing()
    for bad in (E, -2):
        b = ids.clone()
        b[1, 0] = bad
        with pytest.raises(ValueError) as ours:
            quantized_experts(hidden, qp, b, w)
        with pytest.raises(ValueError) as op:  # the C++ op's message on the same ids
            leankern.moe.experts(hidden, w13, w2, b, w)
        assert str(ours.value) == str(op.value)
        assert str(ours.value).startswith(f"topk_ids: expected expert ids in [-1, {E})")
    for e in (None, 0):  # a row's own expert twice, and expert 0 twice (an id, not the -1 padding)
        b = ids.clone()
        b[4, :2] = b[4, 0] if e is None else e
        with pytest.raises(ValueError, match="got an expert twice in one row") as ours:
            quantized_experts(hidden, qp, b, w)
        with pytest.raises(ValueError) as op:
            leankern.moe.experts(hidden, w13, w2, b, w)
        assert str(ours.value) == str(op.value)
    with pytest.raises(ValueError, match=r"hidden: expected shape \[T, H=64\]"):
        quantized_experts(hidden[:, :32], qp, ids, w)
    with pytest.raises(TypeError, match="topk_ids: expected dtype"):
        quantized_experts(hidden, qp, ids.float(), w)
    with pytest.raises(ValueError, match="topk_weights: expected shape"):
        quantized_experts(hidden, qp, ids, w[:, :2])
    with pytest.raises(ValueError, match="activation: expected one of"):
        quantized_experts(hidden, qp, ids, w, activation="gelu")
    with pytest.raises(ValueError, match="shared_w1, shared_w3, shared_w2: expected all three"):
        quantized_experts(hidden, qp, ids, w, shared_w1=torch.zeros(4, H))
    with pytest.raises(ValueError, match="act_fmt: expected one of"):
        quantized_experts(hidden, qp, ids, w, act_fmt="fp5")
    with pytest.raises(TypeError, match="qexperts: expected a QuantizedExperts"):
        quantized_experts(hidden, w13, ids, w)


def test_quantize_experts_errors():
    w13, w2, _, _ = _weights()
    with pytest.raises(ValueError, match="fmt: expected one of"):
        quantize_experts(w13, w2, "fp5")
    with pytest.raises(ValueError, match=r"w2: expected shape \[E=8, H=64, I=32\]"):
        quantize_experts(w13, w2[:, :, :16], "mxfp4")
    with pytest.raises(ValueError, match=r"w13: expected shape \[E, 2I, H\]"):
        quantize_experts(w13[:, :63], w2, "mxfp4")
    with pytest.raises(ValueError, match="I: expected a multiple of block_size=64"):
        quantize_experts(w13, w2, "mxfp4", block_size=64)
    with pytest.raises(ValueError, match=r"w2_bias: expected shape \[8, 64\]"):
        quantize_experts(w13, w2, "mxfp4", w2_bias=torch.zeros(E, I))


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_nbytes(fmt):
    w13, w2, b13, b2 = _weights(bias=True)
    f = mx.get_format(fmt)
    for prepack in (True, False):
        q = quantize_experts(w13, w2, fmt, prepack=prepack, w13_bias=b13, w2_bias=b2)
        el = 0.5 if f.element.packed else 1.0
        weights = E * 3 * I * H * (el + 1 / f.default_block_size) + (2 * E * 4 if f.is_nv else 0)
        assert q.nbytes() == weights + 4 * E * (2 * I + H)  # N = 2I, H multiples of 16: no tile padding
    assert q.dense_nbytes() == 2 * E * (3 * I * H + 2 * I + H)
    assert "QuantizedExperts(fmt=" in repr(q)


def test_act_fmt_dual_quantization_passthrough(monkeypatch):
    w13, w2, _, _ = _weights(seed=13)
    q = quantize_experts(w13, w2, "mxint8")
    hidden = torch.randn(T, H, generator=torch.Generator().manual_seed(14))
    ids, w = _routing(seed=15)
    wo = quantized_experts(hidden, q, ids, w)
    dual = quantized_experts(hidden, q, ids, w, act_fmt="mxint8")
    assert not torch.equal(wo, dual)  # the activations were quantized
    # mxint8 activations (RCEIL, 32-blocks): each element within 2^-6 of its block max; loose end-to-end check
    rel = (dual - wo).norm() / wo.norm()
    assert rel < 2e-2, float(rel)
    assert torch.equal(dual[2], torch.zeros(H))
    acts = []
    real = mx.linear
    monkeypatch.setattr(mx, "linear", lambda x, wt, b=None, *, act_fmt=None: acts.append(act_fmt) or
                        real(x, wt, b, act_fmt=act_fmt))
    quantized_experts(hidden, q, ids, w, act_fmt="mxfp8")
    assert acts and set(acts) == {"mxfp8"}


def test_quantized_experts_is_excluded_from_torch_compile_with_a_reason():
    """It syncs the host to skip untouched experts: compiled code graph-breaks around it (same result); under
    fullgraph=True the error names the function and why."""
    g = torch.Generator().manual_seed(4)
    E, H, I, T = 4, 64, 32, 5
    q = quantize_experts(torch.randn(E, 2 * I, H, generator=g) / 8, torch.randn(E, H, I, generator=g) / 6, "mxfp4")
    h = torch.randn(T, H, generator=g)
    ids, w = leankern.moe.route(torch.randn(T, E, generator=g), 2)
    fn = lambda h, ids, w: quantized_experts(h, q, ids, w) * 2  # noqa: E731
    torch._dynamo.reset()
    assert torch.equal(torch.compile(fn)(h, ids, w), fn(h, ids, w))
    torch._dynamo.reset()
    with pytest.raises(Exception, match="reads which experts are touched on the host"):
        torch.compile(fn, fullgraph=True)(h, ids, w)
