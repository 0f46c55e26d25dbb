"""The MoE C++ CPU kernels (csrc/moe/), under every ISA this CPU runs, against leankern.moe.ref.

* moe_route: ids and weights bit-equal to the reference (ties to the lowest id, NaN logits, groups, correction
  bias, routed scaling), fused skip rules: the scores are torch's own softmax / sigmoid and the renormalising sums
  torch.sum of the gathered weights, so a skip threshold sees the reference's exact weights.
* moe_skip: ids and weights bit-equal (the same fp32 / fp64 operations in the same order), every rule.
* moe_align: bit-equal, block_m 1 / 3 / 16, expert_map.
* moe_experts: within the derived bound of :func:`experts_bound`, weights fp32 / bf16 / fp16, hidden of another
  dtype, the decode (GEMV) and prefill (GEMM) paths, transposed-view weights (gpt-oss), biases, swiglu_oai,
  interleaved gate/up, shared expert with gate, zero / all kept pairs, NaN in untouched experts.
* bad arguments: the same exception type and message as the Python checks (the "ref" backend).
* opcheck of each op; torch.compile(fullgraph=True) of route + experts.

Each ISA test forces one ISA with ``leankern._C.set_cpu_isa`` ("auto" again afterwards); the C++ ops are reached
with ``leankern.use_backend("cpp")``, the reference with ``use_backend("ref")``.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import leankern
from leankern import moe
from leankern.moe import ref
from isa_cases import BF16_DOT_ISAS, on_isa
from mx_cases import skip_unless_cpp

OPS = torch.ops.leankern
EXT = leankern.extension()
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
U = 2.0**-24  # fp32 unit roundoff
REL_SPACING = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
TINY = {torch.float32: 2.0**-149, torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}

pytestmark = pytest.mark.skipif(EXT is None, reason="leankern._C not loaded")


@pytest.fixture(params=("amx", "avx512bf16", "avx512", "avx2", "scalar"))
def isa(request):
    """Force the C++ kernels onto one ISA path for the test (isa_cases.py); back to "auto" afterwards."""
    skip_unless_cpp()
    with on_isa(request.param):
        yield request.param


def run(backend: str, fn, *args, **kwargs):
    with leankern.use_backend(backend):
        return fn(*args, **kwargs)


@pytest.fixture
def two_threads():
    """torch's thread count set to 2 for the test (paths that depend on it: experts_cpu.cpp's small experts)."""
    was = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(was)


def both(fn, *args, **kwargs):
    return run("cpp", fn, *args, **kwargs), run("ref", fn, *args, **kwargs)


def same_error(fn, *args, **kwargs) -> None:
    """fn raises on both backends, with the same exception type and message."""
    errs = []
    for backend in ("ref", "cpp"):
        with pytest.raises((ValueError, TypeError)) as info:
            run(backend, fn, *args, **kwargs)
        errs.append((info.type, str(info.value)))
    assert errs[0] == errs[1]


# ------------------------------------------------------------------------------------------- route
ROUTE_CASES = {
    "softmax": dict(),
    "softmax-norenorm": dict(renormalize=False),
    "sigmoid-groups-bias": dict(scoring="sigmoid", n_group=8, topk_group=3, correction_bias="bias",
                                routed_scaling_factor=2.5),
    "sigmoid-groups-max": dict(scoring="sigmoid", n_group=4, topk_group=2, renormalize=False),
    "softmax-modes": dict(skip_rule="modes", skip_params=[1.0, 0.5, 0.1, 0.04], modality="modality"),
    "softmax-naee": dict(skip_rule="naee", skip_params=[0.3]),
    "sigmoid-top_p-renorm": dict(scoring="sigmoid", skip_rule="top_p", skip_params=[0.7], skip_renormalize=True),
}


def _logits(T: int, E: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Gaussian logits with exact ties (repeated values), a NaN, a -inf and an all-equal row."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(T, E, generator=g)
    z[:, E // 2:] = z[:, : E - E // 2][:, : E // 2].clone()  # every value twice: ties everywhere
    if T > 2:
        z[1, 3] = float("nan")
        z[2, 5] = float("-inf")
        z[0] = 0.25
    return z.to(dtype)


@pytest.mark.parametrize("case", list(ROUTE_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=("f32", "bf16", "f16"))
def test_route_matches_reference(case, dtype):
    skip_unless_cpp()
    T, E, k = 37, 64, 6
    kw = dict(ROUTE_CASES[case])
    if kw.get("correction_bias") == "bias":
        kw["correction_bias"] = (torch.randn(E, generator=torch.Generator().manual_seed(1)) * 0.1).to(dtype)
    if kw.get("modality") == "modality":
        kw["modality"] = torch.arange(T, dtype=torch.int32) % 3
    z = _logits(T, E, dtype, seed=3)
    (ids, w), (rids, rw) = both(moe.route, z, k, **kw)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    assert torch.equal(ids, rids)
    torch.testing.assert_close(w, rw, atol=0, rtol=0, equal_nan=True)


def test_route_all_nan_row_picks_lowest_ids():
    skip_unless_cpp()
    z = torch.full((2, 16), float("nan"))
    z[1, 7] = 1.0
    (ids, _), (rids, _) = both(moe.route, z, 4)
    assert torch.equal(ids, rids) and ids[0].tolist() == [0, 1, 2, 3]


# -------------------------------------------------------------------------------------------- skip
SKIP_CASES = [("none", {}), ("modes", dict(alpha=(1.0, 0.5), tau=(0.12, 0.05))), ("naee", dict(beta=0.3)),
              ("top_p", dict(p=0.6)), ("top_p", dict(p=1.0)), ("min_p", dict(p=0.25)), ("top_k", dict(k=2)),
              ("top_k", dict(k=9))]


def _routed(T: int, E: int, k: int, seed: int):
    """ids / weights with skipped slots and equal weights (rank ties). (An id < -1 is an error: test_moe_inputs.py.)"""
    g = torch.Generator().manual_seed(seed)
    ids, w = ref.route_ref(torch.randn(T, E, generator=g), k)
    drop = torch.rand(T, k, generator=g) < 0.2
    ids = ids.masked_fill(drop, -1)
    w = w.masked_fill(drop, 0.0)
    if T > 3:
        w[1, 1:3] = w[1, 0]  # ties in the weight ranking
        w[2, 0] = 0.0
    return ids, w


@pytest.mark.parametrize("rule,kw", SKIP_CASES, ids=[f"{r}-{list(k.values())}" for r, k in SKIP_CASES])
@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("with_modality", [False, True])
def test_skip_bitexact(rule, kw, renormalize, with_modality):
    skip_unless_cpp()
    T, E, k = 41, 32, 8
    ids, w = _routed(T, E, k, seed=5)
    modality = torch.randint(0, 3, (T,), generator=torch.Generator().manual_seed(2), dtype=torch.int32) \
        if with_modality else None
    (i1, w1), (i2, w2) = both(moe.skip, ids, w, rule, modality=modality, renormalize=renormalize, **kw)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(w1, w2, atol=0, rtol=0, equal_nan=True)
    assert torch.equal(ids, _routed(T, E, k, seed=5)[0])  # inputs untouched


# ------------------------------------------------------------------------------------------- align
@pytest.mark.parametrize("block_m", [1, 3, 16])
@pytest.mark.parametrize("mapped", [False, True])
@pytest.mark.parametrize("T", [0, 1, 29])
def test_align_bitexact(block_m, mapped, T):
    skip_unless_cpp()
    E, k = 24, 4
    ids, _ = _routed(max(T, 1), E, k, seed=9)
    ids = ids[:T].clamp_min(-1)
    expert_map, n_local = None, E
    if mapped:  # expert parallelism: 10 local experts, the rest elsewhere (-1)
        perm = torch.randperm(E, generator=torch.Generator().manual_seed(4))
        expert_map = torch.where(perm < 10, perm, -1).to(torch.int32)
        n_local = 10
    got, want = both(moe.align, ids, n_local, block_m=block_m, expert_map=expert_map)
    for a, b in zip(got, want):
        assert a.dtype == torch.int32 and torch.equal(a, b)


# ----------------------------------------------------------------------------------------- experts
def _act_bound(g, u, dg, du, activation, alpha, limit):
    """(|a|, bound on |d a|) of the activation at exact gate / up sums g, u perturbed by at most dg, du.

    silu(g) u: |d/dg| = |silu'(g)| |u| <= 1.1 |u|, |d/du| = |silu(g)|; the clamped SwiGLU: clamps are
    1-Lipschitz, |d/dg (g sigmoid(alpha g))| <= 1 + alpha |g| / 4, times |u + 1|. Plus 8 ulp of |a| for exp,
    the division and the products (the kernel uses std::exp, torch its own vectorised exp)."""
    if activation == "silu":
        s = torch.sigmoid(g)
        a = g * s * u
        da = 1.1 * u.abs() * dg + (g * s).abs() * du
    else:
        gc, uc = g.clamp(max=limit), u.clamp(-limit, limit)
        s = torch.sigmoid(alpha * gc)
        a = gc * s * (uc + 1)
        da = (1 + alpha * gc.abs() / 4) * (uc + 1).abs() * dg + (gc * s).abs() * du
    return a.abs(), da + 8 * U * a.abs()


def _split(t, interleaved):
    return (t[:, 0::2], t[:, 1::2]) if interleaved else t.chunk(2, dim=-1)


def down_rounding(w2) -> float:
    """Relative rounding of the activation before the C++ down projection of ``w2`` on the ISA now active:
    2^-8 (bf16(a)) or 2^-16 (hi + lo, ``moe_set_down_split(True)``) where it takes bf16 dot products (avx512bf16,
    AMX or not, bf16 w2), else 0. (The GEMV path takes bf16(a) too, and keeps a in fp32 under the split.)"""
    if w2.dtype != torch.bfloat16 or EXT.cpu_isa() != "avx512bf16":
        return 0.0
    split = EXT.moe_set_down_split(False)
    EXT.moe_set_down_split(split)
    return 2.0**-16 if split else 2.0**-8


@pytest.fixture
def down_split():
    """The prefill down projection's activation as hi + lo (16 bits) for the test; bf16(a) again afterwards."""
    was = EXT.moe_set_down_split(True)
    yield
    EXT.moe_set_down_split(was)


def experts_bound(hidden, w13, w2, topk_ids, topk_weights, w13_bias=None, w2_bias=None, activation="silu",
                  swiglu_alpha=1.702, swiglu_limit=7.0, interleaved=False, shared_w1=None, shared_w3=None,
                  shared_w2=None, shared_gate=None):
    """[T, H] fp64 bound on |kernel - reference| (fp32 results, before the cast to hidden's dtype).

    Both compute in fp32 from the same inputs with sums in different orders; each is within the classic
    bound of the exact result, so their difference is within twice that. For a dot product of n terms the
    error is <= n u sum|terms| (u = 2^-24). Propagated through one expert (everything from the reference's own
    |.| products, computed in fp64):

    * gate/up: dgu = 2 (H + 1) u (|x| @ |w13[e]|^T + |b13|)
    * activation: da from :func:`_act_bound` (its Lipschitz constants times dgu, plus 8 ulp of |a|)
    * down: dy = 2 (I + 1) u (|a| @ |w2[e]|^T + |b2|) + da @ |w2[e]|^T
    * combine over the k slots and the shared expert: sum |w| (dy + 2 (k + 2) u |y|)

    The shared expert likewise (gate ``sigmoid(x . g)``: its argument is within 2 H u |x| . |g|, sigmoid is
    1/4-Lipschitz). Where the C++ kernel rounds the activation before a bf16 down projection
    (:func:`down_rounding`: the avx512bf16 ISA, AMX or not, carries bf16(a) by default, hi + lo with
    ``moe_set_down_split(True)``), da gains that rounding: u_a |a| (2^-8 for bf16(a), 2^-16 for hi + lo); elsewhere
    nothing rounds the activation to a narrower dtype, so no such term.
    ``test_bound_is_tight`` proves it can fail: one dropped pair exceeds it.
    """
    T, H = hidden.shape
    k = topk_ids.shape[1]
    x = hidden.double()
    ax = x.abs()
    bound = torch.zeros(T, H, dtype=torch.float64)
    ids = topk_ids.long()
    I = w2.shape[2]
    for e in torch.unique(ids[ids >= 0]).tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        W13, W2 = w13[e].double(), w2[e].double()
        gu = x[tok] @ W13.T
        gu_abs = ax[tok] @ W13.abs().T
        if w13_bias is not None:
            gu = gu + w13_bias[e].double()
            gu_abs = gu_abs + w13_bias[e].double().abs()
        dgu = 2 * (H + 1) * U * gu_abs
        (g, u), (dg, du) = _split(gu, interleaved), _split(dgu, interleaved)
        a_abs, da = _act_bound(g, u, dg, du, activation, swiglu_alpha, swiglu_limit)
        da = da + down_rounding(w2) * a_abs
        y_abs = a_abs @ W2.abs().T
        if w2_bias is not None:
            y_abs = y_abs + w2_bias[e].double().abs()
        dy = 2 * (I + 1) * U * y_abs + da @ W2.abs().T
        wa = topk_weights[tok, slot].double().abs()[:, None]
        bound.index_add_(0, tok, wa * (dy + 2 * (k + 2) * U * y_abs))
    if shared_w1 is not None:
        Is = shared_w1.shape[0]
        W1, W3, W2s = shared_w1.double(), shared_w3.double(), shared_w2.double()
        g, u = x @ W1.T, x @ W3.T
        dg, du = 2 * (H + 1) * U * (ax @ W1.abs().T), 2 * (H + 1) * U * (ax @ W3.abs().T)
        a_abs, da = _act_bound(g, u, dg, du, "silu", 0.0, 0.0)
        da = da + down_rounding(shared_w2) * a_abs
        s_abs = a_abs @ W2s.abs().T
        ds = 2 * (Is + 1) * U * s_abs + da @ W2s.abs().T
        if shared_gate is not None:
            gv = shared_gate.double().reshape(H)
            gate = torch.sigmoid(x @ gv)[:, None]
            dgate = (2 * H * U * (ax @ gv.abs()))[:, None] / 4
            ds = ds * gate + s_abs * dgate
            s_abs = s_abs * gate
        bound = bound + ds + 2 * (k + 2) * U * s_abs
    return bound


def assert_experts_close(got, want, args, kwargs):
    """|got - want| <= the derived fp32 bound, plus one ulp of hidden's dtype when the two fp32 results round to
    neighbouring values of a narrower output dtype."""
    assert got.dtype == want.dtype and got.shape == want.shape
    bound = experts_bound(*args, **kwargs)
    dt = want.dtype
    mag = want.double().abs() + bound
    tol = bound + (REL_SPACING[dt] * mag + TINY[dt] if dt != torch.float32 else 0)
    err = (got.double() - want.double()).abs()
    assert torch.isfinite(got).all()
    bad = err > tol
    assert not bad.any(), (f"{int(bad.sum())} of {err.numel()} beyond the bound; worst excess "
                           f"{float((err - tol).max()):.3g}, err {float(err[bad].max()):.3g}")


def make_experts(T, E, H, I, k, wdt=torch.bfloat16, hdt=torch.float32, seed=0, transposed=False, bias=False,
                 shared=None, gate=False, drop=0.0):
    """Arguments of moe.experts: (args, kwargs). transposed: gpt-oss layout (w13 a [E, H, 2I] tensor viewed as
    [E, 2I, H], w2 a [E, I, H] viewed as [E, H, I]); shared: Is (a shared expert) or None."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=g).to(hdt)
    if transposed:
        w13 = (torch.randn(E, H, 2 * I, generator=g) / H**0.5).to(wdt).transpose(1, 2)
        w2 = (torch.randn(E, I, H, generator=g) / I**0.5).to(wdt).transpose(1, 2)
    else:
        w13 = (torch.randn(E, 2 * I, H, generator=g) / H**0.5).to(wdt)
        w2 = (torch.randn(E, H, I, generator=g) / I**0.5).to(wdt)
    ids, w = ref.route_ref(torch.randn(T, E, generator=g), k)
    if drop:
        d = torch.rand(T, k, generator=g) < drop
        ids, w = ids.masked_fill(d, -1), w.masked_fill(d, 0.0)
    kw = {}
    if bias:
        kw.update(w13_bias=(torch.randn(E, 2 * I, generator=g) * 0.3).to(wdt),
                  w2_bias=(torch.randn(E, H, generator=g) * 0.3).to(wdt))
    if shared:
        kw.update(shared_w1=(torch.randn(shared, H, generator=g) / H**0.5).to(wdt),
                  shared_w3=(torch.randn(shared, H, generator=g) / H**0.5).to(wdt),
                  shared_w2=(torch.randn(H, shared, generator=g) / shared**0.5).to(wdt))
        if gate:
            kw["shared_gate"] = (torch.randn(H, generator=g) / H**0.5).to(wdt)
    return [hidden, w13, w2, ids, w], kw


GEMV_MIN_TOKENS, GEMV_INPUT_BYTES = 8, 512 << 10  # csrc/moe/experts_cpu.cpp use_gemv
AMX_GEMV_MAX_TOKENS = 1  # csrc/moe/experts_cpu.cpp kAmxGemvMaxTokens


def prefill_experts(ids: torch.Tensor, H: int, I: int) -> int:
    """How many experts take the GEMM (prefill) path in the C++ kernel (mirrors use_gemv)."""
    n = torch.bincount(ids[ids >= 0].long())
    return int(((n > GEMV_MIN_TOKENS) & (n * max(H, I) * 4 > GEMV_INPUT_BYTES)).sum())


def check_experts(args, kw):
    got, want = both(moe.experts, *args, **kw)
    assert_experts_close(got, want, args, kw)
    return got, want


# T = 1..3: every expert on the GEMV path; T = 600 with H = 520 (E = 3, k = 2: ~400 tokens per expert, whose
# fp32 rows exceed the GEMV path's 512 KB): the GEMM path.
@pytest.mark.parametrize("T", [1, 2, 3, 600])
@pytest.mark.parametrize("wdt,hdt", [(torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16),
                                     (torch.float32, torch.float16), (torch.float32, torch.float32),
                                     (torch.bfloat16, torch.bfloat16)],
                         ids=["w-bf16-h-f32", "w-f16-h-bf16", "w-f32-h-f16", "w-f32-h-f32", "w-bf16-h-bf16"])
def test_experts_matches_reference(isa, T, wdt, hdt):
    E, H = (8, 72) if T < 600 else (3, 520)
    args, kw = make_experts(T, E, H, 40, 2, wdt, hdt, seed=T, drop=0.2)
    assert prefill_experts(args[3], H, 40) == (E if T == 600 else 0)
    check_experts(args, kw)


# moe_set_gemv_tokens / moe_set_gemv_input_bytes (tuning hooks): raising the GEMV path's token limit moves experts
# of more than 8 tokens whose rows are too long for the 512 KB rule from the GEMM path to the GEMV path, lowering the bytes
# moves short-row experts the other way; every path stays within the bound, and the hooks return the previous value.
@pytest.mark.parametrize("hook,value,default,T,E,H,prefill", [
    ("moe_set_gemv_tokens", 64, GEMV_MIN_TOKENS, 72, 3, 4104, 3),  # ~48 tokens per expert, 16 KB rows: GEMM -> GEMV
    ("moe_set_gemv_input_bytes", 0, GEMV_INPUT_BYTES, 40, 4, 520, 0),  # ~20 tokens, 2 KB rows: GEMV -> GEMM
], ids=["tokens", "input_bytes"])
def test_experts_gemv_path_hooks(isa, hook, value, default, T, E, H, prefill):
    args, kw = make_experts(T, E, H, 40, 2, torch.bfloat16, torch.bfloat16, seed=T)
    assert prefill_experts(args[3], H, 40) == prefill
    check_experts(args, kw)
    set_ = getattr(EXT, hook)
    was = set_(value)
    try:
        assert was == default and set_(value) == value
        check_experts(args, kw)
    finally:
        set_(was)


# moe_set_stream_prefetch (tuning hook): the avx512bf16 GEMV's row stream (1-4 tokens per expert) prefetches at any
# distance and level with the same bits: a distance past the row's end runs into the next row (or stops at the last),
# 0 is clamped to 32 elements; the hook returns the previous distance (default 2048, into L2). Other ISAs: same bits.
def test_experts_stream_prefetch_hook(isa):
    args, kw = make_experts(3, 8, 520, 40, 2, torch.bfloat16, torch.bfloat16, seed=4)
    got, _ = check_experts(args, kw)
    was = EXT.moe_set_stream_prefetch(2048, True)
    if was == 0:
        pytest.skip("not an x86-64 build: the hook has no kernel to tune")
    try:
        assert was == 2048
        for elements, l2 in ((0, False), (600, True), (1 << 20, False)):
            EXT.moe_set_stream_prefetch(elements, l2)
            again, _ = check_experts(args, kw)
            assert torch.equal(again, got), (elements, l2)
        assert EXT.moe_set_stream_prefetch(2048, True) == 1 << 20
    finally:
        EXT.moe_set_stream_prefetch(2048, True)


# moe_set_tile_min_elems (tuning hook): the GEMV runs an expert's 1-4 tokens as a 4-row tile instead of the row
# stream once n x C reaches the threshold (default 8192: H = 8200 here, so even one token's gate/up rows take the
# tile, the down rows (C = 40) the stream); always (0) and never (2^40) give results within the same bounds on
# every ISA; the hook returns the previous value.
def test_experts_tile_threshold_hook(isa):
    args, kw = make_experts(3, 8, 8200, 40, 2, torch.bfloat16, torch.bfloat16, seed=6)
    assert EXT.moe_set_tile_min_elems(8192) == 8192
    try:
        for elems in (8192, 0, 1 << 40):
            EXT.moe_set_tile_min_elems(elems)
            check_experts(args, kw)
        assert EXT.moe_set_tile_min_elems(8192) == 1 << 40
    finally:
        EXT.moe_set_tile_min_elems(8192)


# bf16 hidden and bf16 weights on the GEMM path: under avx512bf16 the gate/up GEMMs (routed and shared) take bf16
# dot products (csrc/common/bf16_gemm.h). 2I = 80 and Is = 24 rows (partial 16-row tiles), ~400 tokens per expert
# (partial 24-row groups), odd H (the last pair alone).
@pytest.mark.parametrize("H", [520, 519])
def test_experts_bf16_gemm_path(isa, H):
    args, kw = make_experts(600, 3, H, 40, 2, torch.bfloat16, torch.bfloat16, seed=H, drop=0.2, shared=24, gate=True)
    assert prefill_experts(args[3], H, 40) == 3
    check_experts(args, kw)


# The AMX shapes of the GEMM path (K % 32 == 0: H = 2080 for gate/up, one 2048-element chunk and a 32-element one;
# I = 64 for the down projection): 2I = 128 rows (8 tiles) and Is = 48 (3) or 64 (4: the shared expert's down GEMM
# then takes the routed experts' AMX path with the fused sums), ~800 tokens per expert (two 512-row passes, the
# second with a ragged 16-row group). Other ISAs run the same cases through their own kernels.
@pytest.mark.parametrize("Is", [48, 64])
def test_experts_bf16_gemm_path_amx_shapes(isa, Is):
    args, kw = make_experts(1200, 3, 2080, 64, 2, torch.bfloat16, torch.bfloat16, seed=5, drop=0.1, shared=Is,
                            gate=True)
    assert prefill_experts(args[3], 2080, 64) == 3
    check_experts(args, kw)


@pytest.mark.parametrize("H", [520, 544])  # 544: the AMX tiles where the CPU has them
@pytest.mark.parametrize("T", [2, 600])
def test_experts_bf16_dot_products_run_and_flush_subnormal_hidden(isa, T, H):
    """vdpbf16ps treats bf16 subnormal inputs as zero: hidden = 2^-130 times weights 2^100 gives gate/up sums of
    H * 2^-30 through fp32 products, and exactly 0 through bf16 dot products (avx512bf16, bf16 hidden and weights:
    the GEMV path at T = 2, the GEMM path at T = 600), so the output is 0 there and not elsewhere: the documented
    exception to the bound, and proof of which kernel ran."""
    E, I = 2, 16
    hidden = torch.full((T, H), 2.0**-130).to(torch.bfloat16)
    w13 = torch.full((E, 2 * I, H), 2.0**100).to(torch.bfloat16)
    w2 = torch.ones(E, H, I).to(torch.bfloat16)
    ids = torch.tensor([[0, 1]] * T, dtype=torch.int32)
    w = torch.full((T, 2), 0.5)
    assert prefill_experts(ids, H, I) == (2 if T == 600 else 0)
    got = moe.experts(hidden, w13, w2, ids, w)
    if isa in BF16_DOT_ISAS:
        assert torch.equal(got, torch.zeros_like(got))
    else:
        assert (got.float() > 0).all()


# (T, H, I): 2 tokens per expert: GEMV path; 600: GEMM path (I = 32: the down projection on AMX tiles where the CPU
# has them).
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("T,H,I", [(2, 520, 16), (600, 520, 16), (600, 520, 32)])
def test_experts_down_projection_bf16_parts(isa, T, H, I, split):
    """Under avx512bf16 the down projection with bf16 w2 carries the fp32 activation as bf16(a) (the default, GEMM
    and GEMV paths) or, with ``moe_set_down_split(True)``, as two bf16 parts (hi = bf16(a), lo = bf16(a - hi): 16
    significant bits) in the GEMM path and as fp32 in the GEMV path. Here a = silu(32) * 2^-5 (1 + 2^-10 + 2^-20)
    = 1 + 2^-10 + 2^-20 exactly (21 bits) and w2 picks it out: bf16(a) gives 1, the split 1 + 2^-10 (hi = 1,
    lo = 2^-10), the fp32 kernels (the GEMV path under the split, other ISAs) give a. Proves which ran."""
    was = EXT.moe_set_down_split(split)
    try:
        _down_projection_case(isa, T, H, I, 1 + 2.0**-10 if split else 1.0, gemv_bf16=not split)
    finally:
        EXT.moe_set_down_split(was)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("I", [16, 32])
def test_experts_shared_down_projection_bf16_parts(isa, I, split):
    """The shared expert over 600 tokens (the prefill path, every routed slot skipped): under avx512bf16 its down
    projection carries the activation as the routed experts' prefill does, bf16(a) or (``moe_set_down_split(True)``)
    hi + lo, from the vectorised activation (I = 16; I = 32: the routed experts' AMX down GEMM where the CPU has it);
    a = 1 + 2^-10 + 2^-20 as in _down_projection_case gives 1, 1 + 2^-10, or a from the fp32 kernels of other ISAs.
    Proves which ran."""
    T, H, E = 600, 520, 2
    hidden = torch.ones(T, H)
    w1, w3, w2s = torch.zeros(I, H), torch.zeros(I, H), torch.zeros(H, I)
    w1[:, 0] = 32.0
    w3[:, 0], w3[:, 1], w3[:, 2] = 2.0**-5, 2.0**-15, 2.0**-25
    w2s[:, 0] = 1.0
    ids = torch.full((T, 2), -1, dtype=torch.int32)
    was = EXT.moe_set_down_split(split)
    try:
        got = moe.experts(hidden, torch.zeros(E, 2 * I, H).bfloat16(), torch.zeros(E, H, I).bfloat16(), ids,
                          torch.full((T, 2), 0.5), shared_w1=w1.bfloat16(), shared_w3=w3.bfloat16(),
                          shared_w2=w2s.bfloat16())
    finally:
        EXT.moe_set_down_split(was)
    a = 1 + 2.0**-10 + 2.0**-20
    want = (1 + 2.0**-10 if split else 1.0) if isa in BF16_DOT_ISAS else a
    assert torch.equal(got, torch.full((T, H), want))


def _down_projection_case(isa, T, H, I, want_bf16_dots, gemv_bf16=False):
    E = 2
    hidden = torch.ones(T, H)
    w13 = torch.zeros(E, 2 * I, H)
    w13[:, :I, 0] = 32.0  # gate = 32: silu(32) = 32 in fp32
    w13[:, I:, 0], w13[:, I:, 1], w13[:, I:, 2] = 2.0**-5, 2.0**-15, 2.0**-25  # up: an exact fp32 sum
    w2 = torch.zeros(E, H, I)
    w2[:, :, 0] = 1.0
    ids = torch.tensor([[0, 1]] * T, dtype=torch.int32)
    w = torch.full((T, 2), 0.5)
    assert prefill_experts(ids, H, I) == (2 if T == 600 else 0)
    got = moe.experts(hidden, w13.bfloat16(), w2.bfloat16(), ids, w)
    a = 1 + 2.0**-10 + 2.0**-20
    dots = isa in BF16_DOT_ISAS and (T == 600 or gemv_bf16)
    want = want_bf16_dots if dots else a
    assert torch.equal(got, torch.full((T, H), want))


# Gate values at and beyond the ends of exp's range and the clamps, each in its own activation lane (I = 16, and 19
# for a 3-lane tail), picked out one per output column by w2; `special` replaces lane 0 (a NaN or Inf activation
# reaches every output of its token through the down GEMM's zero products).
ACT_EDGE = [-200.0, -104.0, -88.0, -30.0, -16.0, -1.0, -2.0**-100, 0.0, 2.0**-100, 1.0, 3.0, 6.5, 16.0, 30.0, 88.0,
            200.0, -7.5, 7.5, 0.5]


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("special", [None, float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("activation,I", [("silu", 16), ("swiglu_oai", 19)])
def test_experts_prefill_activation_edge_values(isa, activation, I, special, split):
    """The prefill path's activation on gate values at exp's limits, NaN and Inf (under avx512bf16 the vectorised
    exp and the bf16 conversion or split of epilogue_avx512bf16.cpp; elsewhere std::exp): NaN / Inf exactly where
    the reference (torch's fp32 activation) has them, every other output within 2^-15 relative of it (the split
    carries 16 bits; other ISAs keep fp32), or 2^-8 (bf16(a), RNE, under avx512bf16 without the split), plus
    2^-126. 600 tokens of H = 520 on 2 experts: the GEMM path."""
    was = EXT.moe_set_down_split(split)
    try:
        _activation_edge_case(isa, activation, I, special, 2.0**-8 if isa in BF16_DOT_ISAS and not split else 2.0**-15)
    finally:
        EXT.moe_set_down_split(was)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("special", [None, float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("activation,I", [("silu", 16), ("swiglu_oai", 19)])
def test_experts_decode_activation_edge_values(isa, activation, I, special, split):
    """The same edge values through the GEMV path (2 tokens per expert): under avx512bf16 without the split its
    activation is the vectorised one rounded to bf16 (act_split_bf16) for the bf16 dot products of the down GEMV,
    within 2^-8; with the split or on other ISAs the scalar fp32 activation (2^-15 holds it)."""
    was = EXT.moe_set_down_split(split)
    try:
        _activation_edge_case(isa, activation, I, special, 2.0**-8 if isa in BF16_DOT_ISAS and not split else 2.0**-15,
                              T=2)
    finally:
        EXT.moe_set_down_split(was)


def _activation_edge_case(isa, activation, I, special, rel, T=600):
    E, H = 2, 520
    hidden = torch.ones(T, H)
    w13 = torch.zeros(E, 2 * I, H)
    g = torch.tensor(ACT_EDGE[:I])
    if special is not None:
        g[0] = special
    w13[:, :I, 0] = g  # gate_i = g_i (one product, the rest 0 * 1)
    w13[:, I:, 1] = torch.linspace(-3, 3, I)  # up_i
    w2 = torch.zeros(E, H, I)
    w2[:, torch.arange(H), torch.arange(H) % I] = 1.0  # y[h] = a[h % I]
    ids = torch.tensor([[0, 1]] * T, dtype=torch.int32)
    w = torch.full((T, 2), 0.5)
    kw = dict(activation=activation, swiglu_alpha=1.702, swiglu_limit=7.0)
    args = (hidden, w13.bfloat16(), w2.bfloat16(), ids, w)
    assert prefill_experts(ids, H, I) == (2 if T == 600 else 0)
    got, want = both(moe.experts, *args, **kw)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(torch.isinf(got) & (got > 0), torch.isinf(want) & (want > 0))
    assert torch.equal(torch.isinf(got) & (got < 0), torch.isinf(want) & (want < 0))
    fin = torch.isfinite(want)
    clamped = activation == "swiglu_oai" and special == float("inf")  # clamp(max=limit): a finite activation
    assert bool(fin.all()) == (special is None or clamped)  # the case is the intended one
    err = (got[fin].double() - want[fin].double()).abs()
    assert (err <= rel * want[fin].double().abs() + 2.0**-126).all()


def test_prefill_exp_within_one_ulp():
    """The vectorised e^x of the avx512bf16 prefill activation (epilogue_avx512bf16.cpp exp_ps, reached through the
    leankern._C.moe_exp_f32 test hook) on 2M points over [-110, 90] and the edges: within 1 ulp of e^x in fp64
    (subnormal results: within 2^-149), Inf past 88.7228, 0 below -103.98, NaN for NaN, e^+-Inf = Inf / 0."""
    import numpy as np

    skip_unless_cpp()
    edges = [0.0, -0.0, 1e-30, -1e-30, 88.72283, 88.72284, -87.33655, -103.97, -103.98, 150.0, -150.0, 1e30, -1e30]
    x = np.concatenate([np.linspace(-110, 90, 2_000_001, dtype=np.float32), np.float32(edges)])
    out = EXT.moe_exp_f32(x.tobytes())
    if out is None:
        pytest.skip("the CPU cannot run the avx512bf16 kernels")
    y = np.frombuffer(out, dtype=np.float32).astype(np.float64)
    with np.errstate(over="ignore"):
        ref = np.exp(x.astype(np.float64))
        ref32 = ref.astype(np.float32)
    fin = np.isfinite(ref32)
    assert np.array_equal(np.isinf(y), ~fin) and (ref32 == 0).sum() > 1000  # overflow and underflow both reached
    ulp = np.maximum(np.spacing(np.abs(ref32[fin])).astype(np.float64), 2.0**-149)
    assert (np.abs(y[fin] - ref[fin]) <= ulp).all()
    special = np.frombuffer(EXT.moe_exp_f32(np.float32([np.nan, np.inf, -np.inf]).tobytes()), dtype=np.float32)
    assert np.isnan(special[0]) and special[1] == np.inf and special[2] == 0.0
    with pytest.raises(ValueError, match="x: expected float32 bytes"):
        EXT.moe_exp_f32(b"abc")


def exact_counts(counts, H, I, seed, bias=False):
    """moe.experts arguments where expert j keeps exactly counts[j] tokens (tokens 0 .. counts[j] - 1, slot j;
    k = E = len(counts)), bf16 hidden and weights."""
    E, T = len(counts), max(counts)
    args, kw = make_experts(T, E, H, I, E, torch.bfloat16, torch.bfloat16, seed=seed, bias=bias)
    t = torch.arange(T)[:, None]
    ids = torch.where(t < torch.tensor(counts)[None, :], torch.arange(E, dtype=torch.int32)[None, :], -1)
    args[3], args[4] = ids.to(torch.int32), args[4].masked_fill(ids < 0, 0.0)
    return args, kw


# The AMX prefill paths (experts_cpu.cpp), H and I multiples of 32: an expert of 2..64 tokens whole on one thread
# (small_expert) where there are at least 3 per thread (8 here, on 2 threads), larger ones split over the
# threads (prefill_expert); both through the down GEMM with its combine fused in (bf16_gemm_nt_pairs: 16-token
# group pairs, the last one partial at 2, 3, 9, 15, 17, 31, 33, 47 and 100 tokens). "few": three small experts,
# too few to share out, take the split paths (the GEMV path up to 8 tokens). Other ISAs run the same cases.
COUNTS = {"mixed": [2, 3, 9, 15, 16, 17, 31, 32, 33, 47, 64, 100], "few": [2, 9, 33]}


@pytest.mark.parametrize("counts", list(COUNTS), ids=list(COUNTS))
@pytest.mark.parametrize("act", ["silu", "swiglu_oai-bias"])
def test_experts_amx_small_experts_and_fused_combine(isa, two_threads, counts, act):
    args, kw = exact_counts(COUNTS[counts], 96, 64, seed=len(counts), bias=act != "silu")
    if act != "silu":
        kw.update(activation="swiglu_oai", interleaved=True, swiglu_alpha=1.702, swiglu_limit=2.5)
    check_experts(args, kw)


# Interleaved gate/up, the clamped SwiGLU and both biases with row-contiguous bf16 weights on the GEMM path: under
# avx512bf16 the vectorised act + split (deinterleaving, bias, lane tails: I = 37) and the fused combine.
@pytest.mark.parametrize("hdt", [torch.bfloat16, torch.float32], ids=("h-bf16", "h-f32"))
def test_experts_prefill_interleaved_bias_split_epilogue(isa, hdt):
    args, kw = make_experts(600, 3, 520, 37, 2, torch.bfloat16, hdt, seed=21, bias=True)
    assert prefill_experts(args[3], 520, 37) == 3
    kw.update(activation="swiglu_oai", interleaved=True, swiglu_alpha=1.702, swiglu_limit=2.5)
    args[0] = args[0] * 3  # reach the clamps
    check_experts(args, kw)


@pytest.mark.parametrize("E", [2, 8])
@pytest.mark.parametrize("T", [1, 2, 8, 9, 20])
def test_experts_amx_gemm_path_from_two_tokens(isa, two_threads, down_split, E, T):
    """With AMX (bf16 hidden and weights, H and I multiples of 32) an expert of more than one token takes the GEMM
    path (experts_cpu.cpp: amx_gemm, kAmxGemvMaxTokens) where at least 3 such experts per thread share out (E = 8 on
    2 threads: small_expert), else from 9 tokens on (E = 2); elsewhere 20 tokens of H = 64 still take the GEMV path
    (use_gemv). Under ``moe_set_down_split(True)`` the GEMM path's down projection splits the fp32 activation into
    two bf16 parts (16 significant bits) and the GEMV path keeps it in fp32: activations a0 = 1 + 2^-9 + 2^-20 and
    a1 = 1 + 2^-9 with w2 rows (1, -1) give a0 - a1 = 2^-20 through fp32 activations (GEMV) and 0 through the
    split (hi = 1, lo = 2^-9 for both). Proves which path ran."""
    H, I = 64, 32
    hidden = torch.ones(T, H).to(torch.bfloat16)
    w13 = torch.zeros(E, 2 * I, H)
    w13[:, :2, 0] = 32.0  # gate rows 0, 1: silu(32) = 32 in fp32
    w13[:, I:I + 2, 0], w13[:, I:I + 2, 1] = 2.0**-5, 2.0**-14  # up rows 0, 1: 2^-5 (1 + 2^-9)
    w13[:, I, 2] = 2.0**-25  # up row 0: + 2^-25
    w2 = torch.zeros(E, H, I)
    w2[:, :, 0], w2[:, :, 1] = 1.0, -1.0
    ids = torch.arange(E, dtype=torch.int32).repeat(T, 1)  # every token on every expert
    w = torch.full((T, E), 1.0 / E)
    got = moe.experts(hidden, w13.bfloat16(), w2.bfloat16(), ids, w)
    gemm = isa == "amx" and T > (AMX_GEMV_MAX_TOKENS if E >= 3 * 2 else GEMV_MIN_TOKENS)
    assert torch.equal(got.float(), torch.full((T, H), 0.0 if gemm else 2.0**-20))


# E = 2, k = 2: every token keeps both experts, so each expert has exactly T tokens: 2..4 take the sequential
# stream kernel (stream_rows_n; stream_rows_bf16 for bf16 x bf16 under avx512bf16), 5 and 9 the 4-row register tile
# (quads_bf16 there), 1 the single-vector stream. H = 67, I = 24: one whole step and masked tails; H = 520, I = 80:
# several steps, the prefetch running on into the next row. Under avx512bf16, 2..4 tokens whose vectors are long
# (T x C >= 8192: H = 4100 for gate/up, I = 4100 for down) take the quads as well.
@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("wdt,hdt,H,I", [(torch.bfloat16, torch.float32, 67, 24), (torch.float32, torch.float32, 67, 24),
                                         (torch.bfloat16, torch.bfloat16, 67, 24),
                                         (torch.bfloat16, torch.bfloat16, 520, 80),
                                         (torch.bfloat16, torch.bfloat16, 4100, 24),
                                         (torch.bfloat16, torch.bfloat16, 67, 4100)],
                         ids=("bf16-f32", "f32-f32", "bf16-bf16", "bf16-bf16-520", "bf16-bf16-H4100", "bf16-bf16-I4100"))
def test_experts_tokens_per_expert_kernels(isa, T, wdt, hdt, H, I):
    args, kw = make_experts(T, 2, H, I, 2, wdt, hdt, seed=40 + T, drop=0.0)
    assert torch.equal(torch.bincount(args[3].flatten().long(), minlength=2), torch.tensor([T, T]))
    check_experts(args, kw)


@pytest.mark.parametrize("T", [1, 3, 600])
@pytest.mark.parametrize("wdt", DTYPES, ids=("f32", "bf16", "f16"))
def test_experts_gpt_oss_layout(isa, T, wdt):
    """Transposed views (gate_up_proj [E, H, 2I].transpose(1, 2)), interleaved gate/up, clamped SwiGLU, biases;
    H and I not multiples of any vector width."""
    E, H = (8, 67) if T < 600 else (3, 523)
    args, kw = make_experts(T, E, H, 37, 2, wdt, torch.float32, seed=10 + T, transposed=True, bias=True)
    assert prefill_experts(args[3], H, 37) == (E if T == 600 else 0)
    kw.update(activation="swiglu_oai", interleaved=True, swiglu_alpha=1.702, swiglu_limit=2.5)
    args[0] = args[0] * 3  # reach the clamps
    check_experts(args, kw)


@pytest.mark.parametrize("T", [1, 2, 600])
@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("transposed", [False, True])
def test_experts_shared_expert(isa, T, gate, transposed):
    """T = 600, H = 264: the shared expert's 600 rows (620 KB fp32) take the GEMM path, the routed ones GEMV."""
    H = 48 if T < 600 else 264
    args, kw = make_experts(T, 6, H, 24, 2, torch.bfloat16, torch.float32, seed=20 + T, shared=56, gate=gate,
                            drop=0.3)
    if transposed:  # shared weights as transposed views too
        for name in ("shared_w1", "shared_w3", "shared_w2"):
            kw[name] = kw[name].T.contiguous().T
    if gate and T == 2:
        kw["shared_gate"] = kw["shared_gate"].reshape(1, -1)
    check_experts(args, kw)


@pytest.mark.parametrize("Is", [16, 32])  # 32: with AMX, the routed experts' down GEMM (fused sums)
def test_experts_shared_expert_infinite_activation(isa, Is):
    """An infinite activation of the shared expert on the GEMM path (600 rows; under avx512bf16 its down projection
    splits the activation into two bf16 parts) gives -inf outputs as the reference does, not NaN (Inf - Inf in
    the split's low part)."""
    T, H = 600, 264
    hidden = torch.ones(T, H)
    sw1, sw3, sw2 = torch.zeros(Is, H), torch.zeros(Is, H), torch.zeros(H, Is)
    sw1[0, 0] = float("inf")  # gate 0 = +inf: silu = +inf
    sw3[0, 1] = -3.0  # up 0 = -3: activation 0 = -inf, the others silu(0) * 0 = 0
    sw2[:, 0] = 1.0
    ids = torch.full((T, 2), -1, dtype=torch.int32)  # every routed slot skipped: the shared expert alone
    args = (hidden, torch.zeros(2, 8, H).bfloat16(), torch.zeros(2, H, 4).bfloat16(), ids, torch.zeros(T, 2))
    kw = dict(shared_w1=sw1.bfloat16(), shared_w3=sw3.bfloat16(), shared_w2=sw2.bfloat16())
    got, want = both(moe.experts, *args, **kw)
    assert torch.equal(want, torch.full((T, H), float("-inf")))  # the case is the intended one
    assert torch.equal(got, want)


@pytest.mark.parametrize("Is", [48, 64])  # 64: with AMX, the routed experts' down GEMM (fused sums)
def test_experts_shared_expert_split_carries_sixteen_bits(isa, Is, down_split):
    """The shared expert alone on the GEMM path (80 tokens of H = 2048: 640 KB of fp32 rows), activations
    a0 = silu(32) * 2^-5 (1 + 2^-9 + 2^-14) = 1 + 2^-9 + 2^-14 and a1 = 1, w2 rows (1, -1): every step exact in
    fp32 and in the two-part bf16 split (hi = 1, lo = 2^-9 + 2^-14; moe_set_down_split(True)), so each output is
    exactly 2^-9 + 2^-14 (a bf16 value); dropping the low part gives 0 (the next test)."""
    T, H = 80, 2048
    hidden = torch.ones(T, H).bfloat16()
    sw1, sw3, sw2 = torch.zeros(Is, H), torch.zeros(Is, H), torch.zeros(H, Is)
    sw1[:2, 0] = 32.0  # gates 0, 1 = 32: silu = 32 in fp32
    sw3[0, 0], sw3[0, 1], sw3[0, 2] = 2.0**-5, 2.0**-14, 2.0**-19  # up 0 = 2^-5 (1 + 2^-9 + 2^-14)
    sw3[1, 0] = 2.0**-5  # up 1 = 2^-5
    sw2[:, 0], sw2[:, 1] = 1.0, -1.0
    ids = torch.full((T, 2), -1, dtype=torch.int32)  # every routed slot skipped: the shared expert alone
    args = (hidden, torch.zeros(2, 64, H).bfloat16(), torch.zeros(2, H, 32).bfloat16(), ids, torch.zeros(T, 2))
    kw = dict(shared_w1=sw1.bfloat16(), shared_w3=sw3.bfloat16(), shared_w2=sw2.bfloat16())
    got, want = both(moe.experts, *args, **kw)
    assert torch.equal(want.float(), torch.full((T, H), 2.0**-9 + 2.0**-14))  # the case is the intended one
    assert torch.equal(got, want)


@pytest.mark.parametrize("Is", [48, 64])
def test_experts_shared_expert_rounds_the_activation_to_bf16(isa, Is):
    """The case above with the default one part: under avx512bf16 (AMX or not) the shared expert's down projection
    takes bf16(a0) = 1 (RNE: 2^-9 + 2^-14 is below half of bf16's 2^-7 spacing at 1), so every output is 1 - 1 = 0;
    other ISAs keep a0 in fp32 (2^-9 + 2^-14)."""
    T, H = 80, 2048
    hidden = torch.ones(T, H).bfloat16()
    sw1, sw3, sw2 = torch.zeros(Is, H), torch.zeros(Is, H), torch.zeros(H, Is)
    sw1[:2, 0] = 32.0
    sw3[0, 0], sw3[0, 1], sw3[0, 2] = 2.0**-5, 2.0**-14, 2.0**-19
    sw3[1, 0] = 2.0**-5
    sw2[:, 0], sw2[:, 1] = 1.0, -1.0
    ids = torch.full((T, 2), -1, dtype=torch.int32)
    args = (hidden, torch.zeros(2, 64, H).bfloat16(), torch.zeros(2, H, 32).bfloat16(), ids, torch.zeros(T, 2))
    kw = dict(shared_w1=sw1.bfloat16(), shared_w3=sw3.bfloat16(), shared_w2=sw2.bfloat16())
    got = run("cpp", moe.experts, *args, **kw)
    want = 0.0 if isa in BF16_DOT_ISAS else 2.0**-9 + 2.0**-14
    assert torch.equal(got.float(), torch.full((T, H), want))


def test_experts_mixed_paths_one_call(isa):
    """One hot expert (prefill path) and rare ones (decode path) in the same call, and a duplicated-looking
    pattern: every token on expert 0, the other slot spread."""
    T, E, H = 300, 16, 520
    args, kw = make_experts(T, E, H, 32, 2, torch.bfloat16, torch.float32, seed=31, bias=True, shared=16, gate=True)
    ids = args[3]
    ids[:, 0] = 0
    ids[:, 1] = 1 + torch.arange(T, dtype=torch.int32) % (E - 1)
    assert prefill_experts(ids, H, 32) == 1
    check_experts(args, kw)


@pytest.mark.parametrize("T", [1, 5, 200])
def test_experts_zero_kept_pairs_is_exact_zero(isa, T):
    args, kw = make_experts(T, 4, 32, 16, 2, torch.bfloat16, torch.bfloat16, seed=2)
    args[3] = torch.full_like(args[3], -1)
    got = run("cpp", moe.experts, *args, **kw)
    assert got.dtype == torch.bfloat16 and torch.equal(got, torch.zeros_like(got))


@pytest.mark.parametrize("T", [1, 3, 120])
def test_experts_all_slots_kept_every_expert(isa, T):
    args, kw = make_experts(T, 4, 32, 16, 4, torch.float32, torch.float32, seed=3)  # k = E: all experts, all kept
    check_experts(args, kw)


@pytest.mark.parametrize("T", [2, 100])
def test_experts_token_losing_every_expert(isa, T):
    """A token whose every slot is -1 gets exactly 0 routed output (and exactly the shared output with one)."""
    args, kw = make_experts(T, 8, 40, 24, 3, torch.bfloat16, torch.float32, seed=4)
    args[3][1] = -1
    args[4][1] = 0.0
    got, _ = check_experts(args, kw)
    assert torch.equal(got[1], torch.zeros_like(got[1]))
    args2, kw2 = make_experts(T, 8, 40, 24, 3, torch.bfloat16, torch.float32, seed=4, shared=32)
    args2[3][1] = -1
    got_routed_shared = run("cpp", moe.experts, *args2, **kw2)
    args2[3][:] = -1
    got_shared = run("cpp", moe.experts, *args2, **kw2)
    assert torch.equal(got_routed_shared[1], got_shared[1])


@pytest.mark.parametrize("T", [1, 3, 600])
def test_experts_all_skipped_with_shared_expert(isa, T):
    args, kw = make_experts(T, 8, 40 if T < 600 else 264, 24, 2, torch.float16, torch.float32, seed=6, shared=24,
                            gate=True)
    args[3] = torch.full_like(args[3], -1)
    check_experts(args, kw)


@pytest.mark.parametrize("T", [1, 4, 600])
@pytest.mark.parametrize("transposed", [False, True])
def test_experts_untouched_experts_never_read(isa, T, transposed):
    """NaN in every weight and bias of the experts no slot selects: the output stays finite and equal to the
    reference (which reads only touched experts): the kernel reads nothing of an untouched expert (GEMV and GEMM
    paths: at T = 600 the touched experts have ~200 tokens of H = 700)."""
    E = 12
    args, kw = make_experts(T, E, 48 if T < 600 else 700, 24, 2, torch.bfloat16, torch.float32, seed=7,
                            transposed=transposed, bias=True)
    ids = args[3]
    ids.copy_(torch.where(ids >= 6, ids - 6, ids))  # experts 6..11 never selected (duplicates become -1 below)
    ids[:, 1] = torch.where(ids[:, 1] == ids[:, 0], -1, ids[:, 1])
    ids[0, 0] = -1  # an expert may also lose its last kept slot to a -1
    for name, t in (("w13", args[1]), ("w2", args[2]), ("b13", kw["w13_bias"]), ("b2", kw["w2_bias"])):
        t[6:] = float("nan")
    if T == 600:
        assert prefill_experts(ids, 700, 24) >= 1
    got, want = check_experts(args, kw)
    assert torch.isfinite(want).all()


def test_bound_is_tight():
    """The tolerance can fail: dropping one kept pair's contribution exceeds it."""
    args, kw = make_experts(3, 8, 64, 32, 2, torch.bfloat16, torch.float32, seed=8)
    want = run("ref", moe.experts, *args, **kw)
    args2 = list(args)
    args2[3] = args[3].clone()
    args2[3][0, 1] = -1
    wrong = run("ref", moe.experts, *args2, **kw)
    with pytest.raises(AssertionError):
        assert_experts_close(wrong, want, args, kw)


@given(T=st.integers(1, 14), E=st.integers(1, 9), k=st.integers(1, 5), H=st.integers(1, 40),
       I=st.integers(1, 20), drop=st.sampled_from([0.0, 0.5, 0.9]), transposed=st.booleans(),
       wdt=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_experts_hypothesis(T, E, k, H, I, drop, transposed, wdt, seed):
    skip_unless_cpp()
    k = min(k, E)
    args, kw = make_experts(T, E, H, I, k, wdt, torch.float32, seed=seed, transposed=transposed, drop=drop)
    check_experts(args, kw)
    ids = args[3]
    (a1, a2) = both(moe.align, ids, E, block_m=1 + seed % 4)
    for x, y in zip(a1, a2):
        assert torch.equal(x, y)


@given(T=st.integers(1, 20), E=st.integers(2, 40), k=st.integers(1, 8), seed=st.integers(0, 2**16),
       rule=st.sampled_from(SKIP_CASES), renorm=st.booleans())
def test_route_skip_hypothesis(T, E, k, seed, rule, renorm):
    skip_unless_cpp()
    k = min(k, E)
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(T, E, generator=g) * 2).round()  # coarse values: many ties
    name, kw = rule
    params = moe.skip_params_for(name, **kw)
    (ids, w), (rids, rw) = both(moe.route, z, k, skip_rule=name, skip_params=params, skip_renormalize=renorm)
    assert torch.equal(ids, rids)
    torch.testing.assert_close(w, rw, atol=0, rtol=0, equal_nan=True)
    (i1, w1), (i2, w2) = both(moe.skip, rids, rw, name, renormalize=renorm, **kw)
    assert torch.equal(i1, i2) and torch.equal(w1, w2)


# ------------------------------------------------------------------------------------ bad arguments
def test_bad_ids_same_errors():
    skip_unless_cpp()
    args, kw = make_experts(2, 4, 16, 8, 2, torch.float32, torch.float32, seed=1)
    ids = args[3]
    for bad in (torch.tensor([[0, 4], [1, 2]]), torch.tensor([[0, -2], [1, 2]]), torch.tensor([[1, 1], [0, 2]])):
        same_error(moe.experts, args[0], args[1], args[2], bad.to(torch.int32), args[4])
    same_error(moe.align, torch.tensor([[0, 9]], dtype=torch.int32), 4)
    same_error(moe.align, ids, 2, expert_map=torch.tensor([0, 1, 5, -1], dtype=torch.int32))
    same_error(moe.align, ids, 4, expert_map=torch.tensor([0, 1], dtype=torch.int32))
    same_error(moe.skip, ids, args[4], "modes", alpha=1.0, tau=0.1, modality=torch.tensor([0, 3]))


def test_bad_arguments_same_errors():
    skip_unless_cpp()
    args, kw = make_experts(2, 4, 16, 8, 2, torch.bfloat16, torch.float32, seed=1, bias=True, shared=8, gate=True)
    x, w13, w2, ids, w = args
    E = moe.experts
    same_error(E, x.to(torch.float64), w13, w2, ids, w)
    same_error(E, x[0], w13, w2, ids, w)
    same_error(E, x, w13[:, :7], w2, ids, w)
    same_error(E, x, w13, w2.float(), ids, w)
    same_error(E, x, w13, w2[:, :, :3], ids, w)
    same_error(E, x, w13[:, ::2, ::2], w2, ids, w)  # neither rows nor columns contiguous
    same_error(E, x, w13, w2, ids.long().to(torch.int16), w)
    same_error(E, x, w13, w2, ids[:1], w)
    same_error(E, x, w13, w2, ids, w[:, :1])
    same_error(OPS.moe_experts, x, w13, w2, ids, w.double(), None, None, "silu", 1.7, 7.0, False, None, None, None,
               None)
    same_error(E, x, w13, w2, ids, w, w13_bias=kw["w13_bias"][:, :3])
    same_error(E, x, w13, w2, ids, w, w2_bias=kw["w2_bias"].T.contiguous().T)
    same_error(E, x, w13, w2, ids, w, activation="gelu")
    same_error(E, x, w13, w2, ids, w, swiglu_limit=-1.0)
    same_error(E, x, w13, w2, ids, w, shared_w1=kw["shared_w1"])
    same_error(E, x, w13, w2, ids, w, shared_gate=kw["shared_gate"])
    same_error(E, x, w13, w2, ids, w, shared_w1=kw["shared_w1"], shared_w3=kw["shared_w3"][:, :5],
               shared_w2=kw["shared_w2"])
    same_error(E, x, w13, w2, ids, w, shared_w1=kw["shared_w1"], shared_w3=kw["shared_w3"],
               shared_w2=kw["shared_w2"], shared_gate=kw["shared_gate"][:3])
    z = torch.randn(3, 8)
    R = moe.route
    same_error(R, z.to(torch.int32), 2)
    same_error(R, z[0], 2)
    same_error(R, z, 2, scoring="relu")
    same_error(R, z, 2, n_group=3)
    same_error(R, z, 2, n_group=4, topk_group=5)
    same_error(R, z, 5, n_group=4, topk_group=2)
    same_error(R, z, 2, correction_bias=torch.randn(7))
    same_error(R, z, 2, routed_scaling_factor=float("inf"))
    same_error(R, z, 2, skip_rule="top_p", skip_params=[1.5])
    same_error(R, z, 2, skip_rule="top_k", skip_params=[1.5])
    same_error(R, z, 2, skip_rule="naee", skip_params=[float("nan")])
    same_error(R, z, 2, skip_rule="modes", skip_params=[1.0])
    same_error(R, z, 2, skip_rule="bogus")
    same_error(R, z, 2, skip_rule="modes", skip_params=[1.0, 1.0, 0.1, 0.1], modality=torch.zeros(2))
    same_error(OPS.moe_skip, ids, w, "none", [], torch.zeros(2, dtype=torch.int64), False)
    same_error(OPS.moe_skip, ids.float(), w, "none", [], None, False)
    same_error(OPS.moe_skip, ids, w[:, :1], "none", [], None, False)
    same_error(OPS.moe_skip, torch.zeros(2, 65, dtype=torch.int32), torch.zeros(2, 65), "none", [], None, False)
    same_error(OPS.moe_align, ids, 0, 1, None)
    same_error(OPS.moe_align, ids, 4, 2000, None)
    same_error(OPS.moe_align, ids, 4, 1, torch.zeros(2, 2, dtype=torch.int32))


# ---------------------------------------------------------------------------------- opcheck, compile
def _opcheck_sets():
    args, kw = make_experts(3, 5, 24, 12, 2, torch.bfloat16, torch.float32, seed=1, drop=0.3)
    args_t, kw_t = make_experts(2, 4, 20, 10, 2, torch.float32, torch.bfloat16, seed=2, transposed=True, bias=True,
                                shared=8, gate=True)
    ids, w = args[3], args[4]
    none5 = (None,) * 5
    return {
        "moe_route": [(torch.randn(4, 16), 3, "softmax", True, 1, 1, None, 1.0, "none", [], None, False),
                      (torch.randn(4, 16).to(torch.bfloat16), 3, "sigmoid", False, 4, 2, torch.randn(16), 2.5, "modes",
                       [1.0, 0.5, 0.2, 0.1], torch.tensor([0, 1, 2, 0], dtype=torch.int32), True)],
        "moe_skip": [(ids, w, "top_p", [0.5], None, True), (ids, w, "min_p", [0.3], None, False)],
        "moe_align": [(ids, 5, 1, None), (ids, 3, 4, torch.tensor([0, -1, 1, 2, -1], dtype=torch.int32))],
        "moe_experts": [tuple(args) + (None, None, "silu", 1.702, 7.0, False) + none5[:4],
                        tuple(args_t) + (kw_t["w13_bias"], kw_t["w2_bias"], "swiglu_oai", 1.702, 7.0, True,
                                         kw_t["shared_w1"], kw_t["shared_w3"], kw_t["shared_w2"],
                                         kw_t["shared_gate"])],
    }


@pytest.mark.parametrize("name", ["moe_route", "moe_skip", "moe_align", "moe_experts"])
def test_opcheck(name):
    skip_unless_cpp()
    op = getattr(OPS, name).default
    for args in _opcheck_sets()[name]:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_route_experts():
    skip_unless_cpp()
    args, kw = make_experts(5, 8, 32, 16, 2, torch.bfloat16, torch.bfloat16, seed=3, shared=8)
    x, w13, w2 = args[:3]
    logits = torch.randn(5, 8)

    def layer(x, logits, w13, w2):
        ids, w = moe.route(logits, 2, skip_rule="naee", skip_params=[0.5])
        return moe.experts(x, w13, w2, ids, w, **kw)

    torch._dynamo.reset()
    got = torch.compile(layer, fullgraph=True)(x, logits, w13, w2)
    want = layer(x, logits, w13, w2)
    assert torch.equal(got, want)
    assert math.isfinite(float(got.float().abs().sum()))


@pytest.fixture
def poisoned():
    """moe_experts' workspaces and output filled with NaN when allocated (leankern._C.moe_set_poison_workspaces)."""
    was = EXT.moe_set_poison_workspaces(True)
    yield
    EXT.moe_set_poison_workspaces(was)


# Unwritten rows are never read: with every float workspace (and the output) NaN from the start, a row read before
# it was written would put NaN into the result. Cases: the GEMV path (T = 1, 3), the row-quad tile (T = 24: 5+ tokens
# per expert), the GEMM path (T = 600, H = 520), shared experts on both paths, bf16 and fp32 weights, a third of the
# slots skipped, and every slot skipped.
@pytest.mark.parametrize("T,H,wdt,hdt,shared,drop", [
    (1, 72, torch.bfloat16, torch.float32, None, 0.3),
    (3, 72, torch.float32, torch.bfloat16, 24, 0.3),
    (24, 72, torch.bfloat16, torch.bfloat16, None, 0.3),
    (600, 520, torch.bfloat16, torch.float32, None, 0.3),
    (600, 264, torch.bfloat16, torch.bfloat16, 56, 0.3),
    (600, 264, torch.float16, torch.float32, 24, 0.0),
    (5, 72, torch.bfloat16, torch.float32, 24, 1.0),
], ids=["gemv", "gemv-shared", "quads", "gemm", "gemm-shared-bf16", "gemm-f16", "all-skipped-shared"])
def test_experts_poisoned_workspaces_are_never_read(isa, poisoned, T, H, wdt, hdt, shared, drop):
    E = 3 if T == 600 else 8
    args, kw = make_experts(T, E, H, 40, 2, wdt, hdt, seed=T + H, shared=shared, drop=drop)
    got, _ = check_experts(args, kw)
    assert not torch.isnan(got).any()
