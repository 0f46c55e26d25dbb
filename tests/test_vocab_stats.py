"""vocab scatter_to_full and logit_stats on the reference and on the C++ kernels under every ISA this CPU
supports: scatter bit-exact with the reference (and with a plain loop of the spec), statistics against
tolerances.assert_logit_stats (max / argmax bit for bit with torch, the rest within derived bounds).

What the C++ statistics branch on (csrc/vocab/stats_cpu.cpp): rows cut into segments of >= 16384
elements when there are fewer rows than tasks (merged in index order: ties across segments, a segment
of only -inf), rows that are not distributions (NaN / +inf / all -inf) recomputed by the scalar
definition, bf16 / fp16 loads, temperature, row strides. The gather ops: tests/test_vocab_ops.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import leankern
from leankern import vocab
from tolerances import assert_logit_stats
from vocab_backends import DT_IDS, DTYPES, HAS_CPP, OPS, _cpp_and_ref, _raise_text, backend  # noqa: F401 (backend: a fixture)
INF = float("inf")
SEG = 16384  # stats_cpu.cpp kMinSegment


def _stats(logits, temperature=1.0):
    return OPS.vocab_logit_stats(logits, temperature)


def _logits(B, V, dtype=torch.float32, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, V, generator=g) * spread).to(dtype)


# ---------------------------------------------------------------------------------- scatter_to_full
def _scatter_loop(logits, ids, V, fill):
    """The spec, one write at a time: fill, then logits[b, k] at ids[(b,) k] in position order (-1: none)."""
    B, K = logits.shape
    out = torch.full((B, V), fill, dtype=logits.dtype)
    for b in range(B):
        row = ids if ids.dim() == 1 else ids[b]
        for k in range(K):
            if int(row[k]) >= 0:
                out[b, int(row[k])] = logits[b, k]
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS.get)
def test_scatter_to_full_is_exact(backend, dtype):
    g = torch.Generator().manual_seed(1)
    V, B, K = 37, 3, 20
    logits = (torch.randn(B, K, generator=g) * 5).to(dtype)
    shared = torch.randint(0, V, (K,), generator=g, dtype=torch.int32)
    shared[[2, 9, 15]] = -1
    shared[11] = shared[4] = shared[17]  # a triple: the value of position 17 must win
    rows = torch.randint(-1, V, (B, K), generator=g, dtype=torch.int32)
    rows[1, 19] = rows[1, 0]
    rows[2] = -1  # a row of only padding: all fill
    for ids in (shared, rows):
        for fill in (-INF, 0.0, -1e4):
            got = OPS.vocab_scatter_to_full(logits, ids, V, fill)
            with leankern.use_backend("ref"):
                want = OPS.vocab_scatter_to_full(logits, ids, V, fill)
            loop = _scatter_loop(logits, ids, V, fill)
            assert got.dtype == dtype and got.shape == (B, V)
            assert torch.equal(got, want) and torch.equal(got, loop), (fill, ids.dim())
    assert torch.equal(vocab.scatter_to_full(logits, shared.long(), V), _scatter_loop(logits, shared, V, -INF))


@pytest.mark.parametrize("backend_name", _cpp_and_ref())
@pytest.mark.parametrize("per_row", [False, True], ids=["ids1d", "ids2d"])
def test_scatter_empty_subset_is_all_fill(backend_name, per_row):
    ids = torch.zeros((3, 0) if per_row else (0,), dtype=torch.int32)
    with leankern.use_backend(backend_name):
        out = OPS.vocab_scatter_to_full(torch.zeros(3, 0, dtype=torch.bfloat16), ids, 11, 0.5)
    assert torch.equal(out, torch.full((3, 11), 0.5, dtype=torch.bfloat16))


def test_scatter_then_stats_finds_the_subset_argmax(backend):
    g = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(4, 16, generator=g), torch.randn(300, 16, generator=g)
    ids = torch.randperm(300, generator=g)[:50].to(torch.int32)
    z = vocab.gather_lm_head(hidden, weight, ids)
    full = vocab.scatter_to_full(z, ids, 300)
    st_ = vocab.logit_stats(full)
    best_ids, best = vocab.gather_lm_head_argmax(hidden, weight, ids)
    assert torch.equal(st_.argmax, best_ids) and torch.equal(st_.max, best)
    assert torch.isposinf(st_.self_certainty).all() and torch.isfinite(st_.entropy).all()


SCATTER_BAD = [  # (name, (logits, ids, V), exception, message)
    ("id-V", (torch.zeros(2, 3), torch.tensor([0, 1, 10], dtype=torch.int32), 10), ValueError,
     r"^vocab_ids: expected ids in \[-1, V=10\)"),
    ("id-2", (torch.zeros(2, 3), torch.tensor([0, -2, 1], dtype=torch.int32), 10), ValueError,
     r"^vocab_ids: expected ids in \[-1, V=10\)"),
    ("id-huge", (torch.zeros(2, 3), torch.tensor([[0, 1, 2], [2**31 - 1, 0, 0]], dtype=torch.int32), 10), ValueError,
     r"^vocab_ids: expected ids in \[-1, V=10\)"),
    ("V-0", (torch.zeros(2, 3), torch.tensor([-1, -1, -1], dtype=torch.int32), 0), ValueError,
     r"^V: expected a vocabulary size in \[1, 2\^31\)"),
    ("V-2^31", (torch.zeros(2, 3), torch.tensor([0, 1, 2], dtype=torch.int32), 2**31), ValueError,
     r"^V: expected a vocabulary size in \[1, 2\^31\)"),
    ("ids-shape", (torch.zeros(2, 3), torch.tensor([0, 1], dtype=torch.int32), 10), ValueError,
     r"^vocab_ids: expected shape \[K=3\] or \[B=2, K=3\]"),
    ("ids-rows", (torch.zeros(2, 3), torch.zeros(3, 3, dtype=torch.int32), 10), ValueError,
     r"^vocab_ids: expected shape \[K=3\] or \[B=2, K=3\]"),
    ("ids-i64", (torch.zeros(2, 3), torch.tensor([0, 1, 2]), 10), TypeError, r"^vocab_ids: expected dtype"),
    ("logits-f64", (torch.zeros(2, 3, dtype=torch.float64), torch.tensor([0, 1, 2], dtype=torch.int32), 10),
     TypeError, r"^logits: expected dtype"),
    ("logits-1d", (torch.zeros(3), torch.tensor([0, 1, 2], dtype=torch.int32), 10), ValueError,
     r"^logits: expected shape \[B, K\]"),
]


@pytest.mark.parametrize("backend_name", _cpp_and_ref())
@pytest.mark.parametrize("name,args,exc,msg", SCATTER_BAD, ids=[b[0] for b in SCATTER_BAD])
def test_scatter_rejects_bad_arguments(backend_name, name, args, exc, msg):
    with leankern.use_backend(backend_name), pytest.raises(exc, match=msg):
        OPS.vocab_scatter_to_full(*args, -INF)


# -------------------------------------------------------------------------------------- logit_stats
@pytest.mark.parametrize("V", [1, 7, 1000, 40000])
@pytest.mark.parametrize("B", [1, 2, 3, 64])
def test_stats_shapes(backend, B, V):
    x = _logits(B, V, seed=B * 7 + V)
    outs = _stats(x)
    assert [o.dtype for o in outs] == [torch.float32, torch.int64] + [torch.float32] * 3
    assert all(o.shape == (B,) for o in outs)
    assert_logit_stats(outs, x, 1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS.get)
def test_stats_dtypes_and_temperatures(backend, dtype):
    x = _logits(5, 3001, dtype, seed=2, spread=4.0)
    x[1, 100:110] = x[1].max()  # a tie of the maximum (after rounding to dtype too)
    for t in (0.7, 1.0, 1.5):
        assert_logit_stats(_stats(x, t), x, t)
    big = _logits(2, 3 * SEG + 5, dtype, seed=4)  # segmented rows at a temperature
    assert_logit_stats(_stats(big, 0.7), big, 0.7)


def test_stats_max_ties_go_to_the_lowest_index(backend):
    x = torch.zeros(4, 50)
    x[0, [3, 7, 49]] = 2.0
    x[1] = 1.0  # every entry the maximum
    x[2, [48, 49]] = 5.0
    x[3, [0, 25]] = -0.0  # -0.0 == 0.0: index 0 is the first maximum
    outs = _stats(x)
    assert outs[1].tolist() == [3, 0, 48, 0]
    assert_logit_stats(outs, x, 1.0)


@pytest.mark.parametrize("B", [1, 2])
def test_stats_multi_segment_rows(backend, B):
    """Rows of 4.3 segments: with few rows they are split over both cores and the partials merged."""
    V = 4 * SEG + 4000
    x = _logits(B, V, seed=9, spread=2.0)
    row = x[0]
    row[3 * SEG + 17] = 40.0  # the maximum in a late segment
    want = [3 * SEG + 17]
    if B == 2:
        x[1, SEG - 3] = x[1, 3 * SEG + 1] = 30.0  # a tie across segments: the earlier index wins
        want.append(SEG - 3)
    outs = _stats(x)
    assert outs[1].tolist() == want
    assert_logit_stats(outs, x, 1.0)
    assert_logit_stats(_stats(x, 1.5), x, 1.5)
    # a first segment of only -inf, then the last element the maximum
    y = _logits(B, V, seed=10)
    y[:, : 2 * SEG] = -INF
    y[:, -1] = 50.0
    outs = _stats(y)
    assert outs[1].tolist() == [V - 1] * B and torch.isposinf(outs[4]).all()
    assert_logit_stats(outs, y, 1.0)
    # a NaN late in a segmented row makes it "not a distribution"; argmax = the first NaN, as torch
    z = _logits(B, V, seed=11)
    z[:, 3 * SEG + 100] = float("nan")
    z[:, 4 * SEG + 10] = float("nan")
    outs = _stats(z)
    assert outs[1].tolist() == [3 * SEG + 100] * B and torch.isnan(outs[0]).all() and torch.isnan(outs[2]).all()
    assert_logit_stats(outs, z, 1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("V", [7, 1000])
def test_stats_rows_that_are_not_distributions(backend, V, dtype):
    x = _logits(7, V, dtype, seed=5)
    x[0, ::3] = -INF  # some -inf: a distribution; self-certainty +inf, entropy finite
    x[1, V // 2] = float("nan")
    x[2, V - 1] = INF
    x[3] = -INF
    x[4, 1], x[4, 2] = INF, -INF
    x[5, 0], x[5, 3] = INF, float("nan")
    x[6, 2:4] = INF  # two +inf: argmax the first
    mx, am, lse, ent, cert = outs = _stats(x)
    assert torch.isfinite(ent[0]) and torch.isposinf(cert[0]) and torch.isfinite(lse[0])
    assert torch.isnan(ent[1:]).all() and torch.isnan(cert[1:]).all()
    want_lse = torch.logsumexp(x.double(), -1).float()
    assert torch.equal(lse[1:].isnan(), want_lse[1:].isnan())
    ok = ~want_lse[1:].isnan()
    assert torch.equal(lse[1:][ok], want_lse[1:][ok])  # +inf, -inf exactly
    assert am.tolist()[1:] == [V // 2, V - 1, 0, 1, 3, 2]
    assert torch.isneginf(mx[3]) and torch.isnan(mx[1]) and torch.isnan(mx[5])
    assert_logit_stats(outs, x, 1.0)
    assert_logit_stats(_stats(x, 0.7), x, 0.7)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS.get)
def test_stats_logits_masked_with_finfo_min(backend, dtype):
    """Hugging Face masks logits with torch.finfo(dtype).min rather than -inf: a distribution with finite stats."""
    x = _logits(3, 1000, dtype, seed=12)
    x[:, ::7] = torch.finfo(dtype).min
    outs = _stats(x)
    assert torch.isfinite(outs[4]).all(), outs[4]
    assert_logit_stats(outs, x, 1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS.get)
def test_stats_block_paths(backend, dtype):
    """The C++ pass works in blocks of 4,096 (kernels_impl.h kStatsBlock): the first against its own max, later
    ones against the running max, redone when their max is more than 60 above it; a block whose fp32 sum of
    x - m_ref overflows (finfo.min masking) gets that sum in fp64."""
    blk = 4096
    V = 3 * blk + 37
    x = _logits(4, V, seed=13, spread=2.0)
    x[0, 2 * blk + 5] = 90.0  # a late block far above the running max: redone against its own max
    x[1, blk:2 * blk:3] = torch.finfo(dtype).min  # only the middle block's sum overflows
    x[2, : blk + 11] = -INF  # a first block (and more) of only -inf, then finite values
    x[3, 2 * blk - 1] = 70.0  # the maximum the last element of a block, then a tie in the next one
    x[3, 2 * blk] = 70.0
    x = x.to(dtype)
    outs = _stats(x)
    assert outs[1].tolist() == [2 * blk + 5, int(x[1].float().argmax()), int(x[2].float().argmax()), 2 * blk - 1]
    assert torch.isfinite(outs[4][[0, 1, 3]]).all() and torch.isposinf(outs[4][2])
    assert_logit_stats(outs, x, 1.0)
    assert_logit_stats(_stats(x, 0.6), x, 0.6)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS.get)
def test_stats_of_huge_logits_and_tiny_temperatures(backend, dtype):
    """Finite rows whose z = x / t reaches 2^26 and beyond (large logits, or a small temperature): the C++ pass
    folds m log2 e into fp32, off by ulp / 2 in units of y: past ~3e9 that pushed the row's largest e out of fp32's
    range (inf / NaN lse, entropy ln 2 for a one-hot row); such references take the fp64 pass."""
    big = torch.tensor([[2e10, 1e10], [1e8, 1e8 - 1e4], [-3e9, -3e9]]).to(dtype)
    assert_logit_stats(_stats(big), big, 1.0)
    x = _logits(2, 3 * 4096 + 5, dtype, seed=21)  # several blocks, one segment or more
    for t in (1e-9, 1e-6, 1e-3):
        outs = _stats(x, t)
        assert torch.isfinite(outs[2]).all() and torch.isfinite(outs[3]).all(), (t, outs)
        assert_logit_stats(outs, x, t)
    y = torch.tensor([[1.0, 2.0]]).to(dtype)
    assert_logit_stats(_stats(y, 1e-12), y, 1e-12)


def test_stats_uniform_row_at_finfo_min(backend):
    x = torch.full((1, 7), torch.finfo(torch.float32).min)
    _, am, _, ent, cert = _stats(x)
    assert int(am) == 0 and abs(float(ent) - math.log(7)) <= 1e-5 and abs(float(cert)) <= 1e-5, (ent, cert)


def test_stats_short_rows_hold_the_exp_bound(backend):
    """Rows of 64 where every term counts: gamma_64 is small next to the 116u allowed per exponential, so an exp
    off by 1e-5 (an ulp-careless polynomial, a dropped reduction step) exceeds the bound. Row b spans
    [-ln 2, 0] (every fraction of 2^f), [-87, 0] (down to the clamp) or [-20, 20] (a max far above the first)."""
    j = torch.arange(64, dtype=torch.float64)
    rows = [-math.log(2) * (j / 64 + b / 512) for b in range(6)]
    rows += [-87 * j / 63, -(87 * j / 63).flip(0), 40 * j / 63 - 20, (40 * j / 63 - 20).flip(0)]
    x = torch.stack(rows).float()
    for t in (1.0, 0.7):
        assert_logit_stats(_stats(x, t), x, t)


def test_stats_temperature_max_ties_made_by_the_division(backend):
    """With a temperature the pass takes the max of the stored logits and divides it once (x / t is monotonic):
    two different logits that x / t rounds to the same value must still give torch's first index, and the max
    bit for bit. 1.5000004 (first) and its successor divide by 0.7 to the same fp32 value."""
    a = 1.5000003576278687
    b = float(torch.nextafter(torch.tensor(a, dtype=torch.float32), torch.tensor(2.0)))
    assert float(torch.tensor(a, dtype=torch.float32) / 0.7) == float(torch.tensor(b, dtype=torch.float32) / 0.7)
    for V in (40, 5000):
        x = torch.linspace(-3, 1, V).float().repeat(2, 1)
        x[0, V // 3], x[0, V // 2] = a, b  # the smaller first: argmax of x / t is V // 3, argmax of x is V // 2
        x[1, V // 2], x[1, V - 1] = b, a  # tie inside the last vector / the scalar tail
        assert_logit_stats(_stats(x, 0.7), x, 0.7)


def test_stats_single_logit_rows_give_the_logit(backend):
    """lse of a one-element row is the logit itself. The C++ pass works against m' = fl(m log2 e) / log2 e, which
    misses m by up to 0.69 ulp(m) (more than the fp32 output's half ulp) and corrects it in fp64: rows where that
    miss is largest (m just below a power of two times ln 2) must still give exactly m."""
    g = torch.Generator().manual_seed(3)
    m = torch.cat([torch.rand(200, generator=g) * 3e4 + 64, -(torch.rand(56, generator=g) * 3e4 + 64)])
    _, _, lse, ent, _ = _stats(m[:, None])
    assert torch.equal(lse, m), (m[lse != m][:4].tolist(), lse[lse != m][:4].tolist())
    assert ent.abs().max() <= 1e-6


@pytest.mark.parametrize("V", [1, 7, 1000, 40000])
def test_stats_uniform_and_one_hot_rows(backend, V):
    x = torch.full((3, V), 2.5)
    x[1] = -7.0
    x[2, :] = 0.0
    x[2, V // 3] = 100.0  # one-hot-like: p ~ 1 at one id (e^-100 elsewhere)
    mx, am, lse, ent, cert = outs = _stats(x)
    assert_logit_stats(outs, x, 1.0)
    u = 2.0**-24
    for b in (0, 1):  # uniform: entropy = ln V, self-certainty (KL from uniform) = 0
        assert abs(float(ent[b]) - math.log(V)) <= 8 * u * (math.log(V) + V * u + 10) + V * u, (b, float(ent[b]))
        assert abs(float(cert[b])) <= 8 * u * (abs(float(lse[b])) + math.log(V) + 10) + V * u, (b, float(cert[b]))
    assert float(ent[2]) <= (V * 101 * math.exp(-100) if V > 1 else 0) + 1e-6
    assert am[2] == V // 3 and abs(float(cert[2]) - (100 - 100 / V - math.log(V))) <= 1e-4


def test_stats_row_strides_and_public_leading_dims(backend):
    big = _logits(6, 40000 + 77, torch.bfloat16, seed=6)
    x = big[:, :40000]  # a column slice: rows 40077 apart
    assert x.stride() == (40077, 1)
    outs = _stats(x, 0.7)
    assert_logit_stats(outs, x, 0.7)
    for a, b in zip(outs, _stats(x.contiguous(), 0.7)):
        assert torch.equal(a, b)
    xt = _logits(300, 4, seed=7).t()  # stride(1) != 1
    assert_logit_stats(_stats(xt), xt, 1.0)
    for a, b in zip(_stats(xt), _stats(xt.contiguous())):
        assert torch.equal(a, b)
    y = _logits(6, 513, seed=8)
    res = vocab.logit_stats(y.view(2, 3, 513), temperature=1.5)
    assert isinstance(res, vocab.LogitStats) and res.entropy.shape == (2, 3)
    for a, b in zip(res, _stats(y, 1.5)):
        assert torch.equal(a.reshape(6), b)
    one = vocab.logit_stats(y[2])  # a single row [V] -> scalars
    assert one.argmax.shape == () and int(one.argmax) == int(y[2].argmax())


STATS_BAD = [
    ("f64", torch.zeros(2, 5, dtype=torch.float64), 1.0, TypeError, r"^logits: expected dtype"),
    ("1d", torch.zeros(5), 1.0, ValueError, r"^logits: expected shape \[B, V\] with V >= 1"),
    ("V0", torch.zeros(2, 0), 1.0, ValueError, r"^logits: expected shape \[B, V\] with V >= 1"),
    ("t0", torch.zeros(2, 5), 0.0, ValueError, r"^temperature: expected a finite value > 0, got 0.0"),
    ("t-neg", torch.zeros(2, 5), -1.0, ValueError, r"^temperature: expected a finite value > 0"),
    ("t-inf", torch.zeros(2, 5), INF, ValueError, r"^temperature: expected a finite value > 0, got inf"),
    ("t-nan", torch.zeros(2, 5), float("nan"), ValueError, r"^temperature: expected a finite value > 0"),
]


@pytest.mark.parametrize("backend_name", _cpp_and_ref())
@pytest.mark.parametrize("name,x,t,exc,msg", STATS_BAD, ids=[b[0] for b in STATS_BAD])
def test_stats_rejects_bad_arguments(backend_name, name, x, t, exc, msg):
    with leankern.use_backend(backend_name), pytest.raises(exc, match=msg):
        _stats(x, t)


@pytest.mark.skipif(not HAS_CPP, reason="leankern._C not loaded")
def test_cpp_and_python_checks_say_the_same():
    for name, args, _, _ in SCATTER_BAD:
        assert _raise_text("cpp", OPS.vocab_scatter_to_full, *args, 0.0) == _raise_text("ref", OPS.vocab_scatter_to_full,
                                                                               *args, 0.0), name
    for name, x, t, _, _ in STATS_BAD:
        assert _raise_text("cpp", _stats, x, t) == _raise_text("ref", _stats, x, t), name


# ----------------------------------------------------------------------------------------- hypothesis
@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 5), V=st.integers(1, 9000), dtype=st.sampled_from(DTYPES),
       t=st.sampled_from([0.5, 0.7, 1.0, 1.5, 3.0]), spread=st.sampled_from([0.01, 1.0, 20.0, 100.0]),
       neg_inf=st.sampled_from([0.0, 0.1, 0.9]), seed=st.integers(0, 2**16))
def test_stats_within_bound_hypothesis(B, V, dtype, t, spread, neg_inf, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g) * spread
    x = x.masked_fill(torch.rand(B, V, generator=g) < neg_inf, -INF).to(dtype)
    for be in ["ref"] + (["cpp"] if HAS_CPP else []):
        with leankern.use_backend(be):
            assert_logit_stats(_stats(x, t), x, t)
