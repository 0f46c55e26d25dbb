"""vocab gather ops: gather_lm_head (+ log-softmax), top-k and argmax, on the reference and on the C++
kernels under every ISA this CPU supports, against the derived bounds of tests/tolerances.py ("vocab").

What the C++ kernels branch on (csrc/vocab/head_cpu.cpp, kernels_impl.h): 1..4-hidden register tiles
and the > 4 path (B in 1..17), vector tails (H not a multiple of 8 / 16), chunks of 64 positions over
two cores (K up to ~1000), padding skipped (never read), per-row id sets, bias / soft cap / scale in
the epilogue, the per-thread top-k buffers merged at the end. Also: argument errors (same text from
C++ and Python), torch.compile / opcheck, and an MXTensor head. scatter_to_full and logit_stats:
tests/test_vocab_stats.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import leankern
from leankern import vocab
from leankern.testing.strategies import binade_tensor
from conftest import available_backends, run_python
from tolerances import _assert_within, assert_vocab_logits, assert_vocab_topk, vocab_logits_bound

from vocab_backends import DT_IDS, DTYPES, HAS_CPP, OPS, _cpp_and_ref, _raise_text, backend  # noqa: F401 (backend: a fixture)


def _ids(shape, V, g, pad=0.2):
    """int32 ids in [0, V) with a ``pad`` fraction of -1 and a duplicate (last position = position 1)."""
    ids = torch.randint(0, V, shape, generator=g, dtype=torch.int32)
    ids = ids.masked_fill(torch.rand(shape, generator=g) < pad, -1)
    if shape[-1] >= 3:
        ids[..., -1] = ids[..., 1]
    return ids


def _head(B, H, V, K, hdt=torch.float32, wdt=torch.float32, bias_dt=None, per_row=False, pad=0.2, seed=0,
          spread=1.0):
    """(hidden [B, H], weight [V, H], ids [K] | [B, K], bias [V] | None): logits ~ N(0, spread^2)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, H, generator=g).to(hdt)
    weight = (torch.randn(V, H, generator=g) * (spread / math.sqrt(H))).to(wdt)
    ids = _ids((B, K) if per_row else (K,), V, g, pad)
    bias = None if bias_dt is None else torch.randn(V, generator=g).to(bias_dt)
    return hidden, weight, ids, bias


def _gather(hidden, weight, ids, bias=None, soft_cap=None, scale=1.0, out_dtype=None, log_softmax=False):
    return OPS.vocab_gather_lm_head(hidden, weight, ids, bias, soft_cap, scale, out_dtype, log_softmax)


# ------------------------------------------------------------------------------------ gather_lm_head
@pytest.mark.parametrize("wdt", DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("hdt", DTYPES, ids=DT_IDS.get)
def test_gather_dtypes_and_bias_dtypes(backend, hdt, wdt):
    for bias_dt in (None,) + DTYPES:
        for per_row in (False, True):
            hidden, weight, ids, bias = _head(5, 45, 70, 37, hdt, wdt, bias_dt, per_row, seed=3)
            out = _gather(hidden, weight, ids, bias)
            assert_vocab_logits(out, (hidden, weight, ids, bias, None, 1.0))


@pytest.mark.parametrize("per_row", [False, True], ids=["ids1d", "ids2d"])
@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 8, 17])
def test_gather_batch_tiles_and_h_tails(backend, B, per_row):
    for H in (1, 7, 13, 16, 33, 130):
        hidden, weight, ids, bias = _head(B, H, 90, 75, torch.bfloat16, torch.bfloat16, torch.float32, per_row,
                                          seed=B * 1000 + H)
        out = _gather(hidden, weight, ids, bias)
        assert_vocab_logits(out, (hidden, weight, ids, bias, None, 1.0))
        assert torch.isneginf(out[..., ids < 0] if per_row else out[:, ids < 0]).all()


# The AMX shapes (csrc/vocab/kernels_avx512bf16.cpp dots_bf16_amx under "amx": bf16 head and hidden, >= 8 rows,
# H % 32 == 0, ids shared by all rows): 8 .. 70 hidden rows (1 .. 5 accumulator tiles, two passes past 64),
# 150 positions (64-position chunks, the last of 22: a ragged 16-row group), padding, a bias, a soft cap, a weight
# read in place with a row stride > H, top-k on the same logits. Other backends run the same cases.
@pytest.mark.parametrize("B", [8, 16, 33, 70])
def test_gather_amx_shapes(backend, B):
    g = torch.Generator().manual_seed(B)
    for H in (32, 96, 544):
        big = torch.randn(300, H + 32, generator=g).to(torch.bfloat16) * 0.1
        weight = big[:, :H]
        hidden = torch.randn(B, H, generator=g).to(torch.bfloat16)
        ids = _ids((150,), 300, g)
        bias = torch.randn(300, generator=g)
        for cap in (None, 30.0):
            out = _gather(hidden, weight, ids, bias, cap)
            assert_vocab_logits(out, (hidden, weight, ids, bias, cap, 1.0))
            assert torch.isneginf(out[:, ids < 0]).all()
        vals, pos = OPS.vocab_gather_lm_head_topk(hidden, weight, ids, bias, None, 1.0, 5)
        want = _gather(hidden, weight, ids, bias).topk(5, dim=-1)
        assert torch.equal(vals, want.values)


@pytest.mark.parametrize("B", [1, 6, 8])  # 8: the AMX dots where the CPU has them (H = 64)
def test_gather_bf16_dot_products_run_and_flush_subnormal_hidden(backend, B):
    """A bf16 head with bf16 hidden rows takes bf16 dot products under avx512bf16 (csrc/vocab/kernels_avx512bf16.cpp),
    whose vdpbf16ps treats bf16 subnormal inputs as zero: hidden = 2^-130 times rows of 2^100 gives logits of
    H * 2^-30 through fp32 products and exactly 0 there (the documented exception to the bound; proof the kernel
    ran)."""
    H, V = (64 if B == 8 else 40), 9
    hidden = torch.full((B, H), 2.0**-130).to(torch.bfloat16)
    weight = torch.full((V, H), 2.0**100).to(torch.bfloat16)
    ids = torch.tensor([0, 3, 8, 5, 1], dtype=torch.int32)
    out = _gather(hidden, weight, ids)
    flushed = backend == "cpp" and leankern.extension().cpu_isa() == "avx512bf16"
    assert torch.equal(out, torch.full_like(out, 0.0 if flushed else H * 2.0**-30))


@pytest.mark.parametrize("soft_cap", [None, 30.0], ids=["nocap", "cap30"])
@pytest.mark.parametrize("scale", [1.0, 0.5, -1.75])
def test_gather_cap_scale_out_dtype(backend, soft_cap, scale):
    # logits ~ N(0, 40^2): many near and beyond the Gemma-style cap of 30
    hidden, weight, ids, bias = _head(3, 67, 120, 101, torch.float32, torch.bfloat16, torch.float16, seed=5,
                                      spread=40.0)
    args = (hidden, weight, ids, bias, soft_cap, scale)
    for out_dtype in (None,) + DTYPES:
        assert_vocab_logits(_gather(*args, out_dtype), args, out_dtype)
    if soft_cap is not None:
        z = _gather(*args).float()
        fin = torch.isfinite(z)
        assert float(z[fin].abs().max()) <= soft_cap * abs(scale)
        assert float(z[fin].abs().max()) > 0.9 * soft_cap * abs(scale)  # the inputs did reach the cap


def test_gather_duplicates_are_equal_and_order_is_kept(backend):
    hidden, weight, _, _ = _head(5, 29, 40, 1, seed=7)
    ids = torch.tensor([5, 17, 5, -1, 39, 0, 17, 5], dtype=torch.int32)
    out = _gather(hidden, weight, ids)
    assert torch.equal(out[:, 0], out[:, 2]) and torch.equal(out[:, 0], out[:, 7])
    assert torch.equal(out[:, 1], out[:, 6])
    perm = torch.tensor([4, 0, 7, 3, 1, 6, 2, 5])
    assert torch.equal(_gather(hidden, weight, ids[perm]), out[:, perm])  # a position's value is its id's
    assert_vocab_logits(out, (hidden, weight, ids, None, None, 1.0))


@pytest.mark.parametrize("out_dtype", [None, torch.bfloat16], ids=["f32", "bf16"])
def test_log_softmax(backend, out_dtype):
    hidden, weight, ids, bias = _head(4, 37, 60, 41, torch.bfloat16, torch.float16, torch.float32, per_row=True,
                                      seed=11, spread=4.0)
    ids[2] = -1  # a row of only padding stays -inf (no NaN)
    for soft_cap in (None, 30.0):
        args = (hidden, weight, ids, bias, soft_cap, 0.8)
        out = _gather(*args, out_dtype, True)
        assert_vocab_logits(out, args, out_dtype, log_softmax=True)
        assert not torch.isnan(out).any() and torch.isneginf(out[2]).all()
        if out_dtype is None:
            mass = torch.exp(out.double()).sum(-1)
            assert (mass[[0, 1, 3]] - 1).abs().max() <= 1e-5, mass  # exp errs ~ K u, logits ~ 1e-6
    # the public spelling is the same op
    assert torch.equal(vocab.gather_lm_head_log_softmax(hidden, weight, ids, bias=bias),
                       _gather(hidden, weight, ids, bias, None, 1.0, None, True))


def test_empty_subset(backend):
    hidden, weight, _, _ = _head(3, 20, 30, 1)
    for ids in (torch.zeros(0, dtype=torch.int32), torch.zeros(3, 0, dtype=torch.int32)):
        for ls in (False, True):
            out = _gather(hidden, weight, ids, None, None, 1.0, torch.bfloat16, ls)
            assert out.shape == (3, 0) and out.dtype == torch.bfloat16


def test_weight_row_stride_and_strided_hidden(backend):
    g = torch.Generator().manual_seed(2)
    big = torch.randn(50, 64 + 13, generator=g).to(torch.bfloat16)
    weight = big[:, :37]  # rows 77 elements apart: read in place (the op refuses nothing here)
    assert weight.stride() == (77, 1)
    hidden = torch.randn(37, 4, generator=g).t()  # a non-contiguous [4, 37] view
    ids = _ids((33,), 50, g)
    bias = torch.randn(50, generator=g)
    out = _gather(hidden, weight, ids, bias, 30.0)
    assert_vocab_logits(out, (hidden, weight, ids, bias, 30.0, 1.0))
    assert torch.equal(out, _gather(hidden.contiguous(), weight.contiguous(), ids, bias, 30.0))


def test_public_api_leading_dims_and_int64_ids(backend):
    hidden, weight, _, bias = _head(6, 24, 40, 1, bias_dt=torch.float32, seed=4)
    g = torch.Generator().manual_seed(4)
    ids = _ids((19,), 40, g)
    ids_rows = _ids((6, 19), 40, g)
    h3 = hidden.view(2, 3, 24)
    flat = _gather(hidden, weight, ids, bias)
    out = vocab.gather_lm_head(h3, weight, ids.long(), bias=bias)
    assert out.shape == (2, 3, 19) and torch.equal(out.view(6, 19), flat)
    out_r = vocab.gather_lm_head(h3, weight, ids_rows.view(2, 3, 19).long(), bias=bias)
    assert torch.equal(out_r.view(6, 19), _gather(hidden, weight, ids_rows, bias))
    vals, gids = vocab.gather_lm_head_topk(h3, weight, ids.long(), 4, bias=bias)
    assert vals.shape == gids.shape == (2, 3, 4)
    best_ids, best = vocab.gather_lm_head_argmax(h3, weight, ids, bias=bias)
    assert best_ids.shape == best.shape == (2, 3) and best_ids.dtype == torch.int64
    assert torch.equal(best.view(6), flat.max(-1).values)
    # hidden [H] (no leading dims) -> [K] (one row: another summation order, so within the bound)
    one = vocab.gather_lm_head(hidden[1], weight, ids, bias=bias)
    assert one.shape == (19,)
    assert_vocab_logits(one[None], (hidden[1:2], weight, ids, bias, None, 1.0))


def test_soft_cap_keeps_nan(backend):
    """A NaN hidden (an upstream overflow) must stay visible: a capped NaN that turns into +cap wins greedy decoding."""
    hidden, weight, _, _ = _head(2, 16, 10, 1, seed=6)
    hidden[1, 3] = float("nan")
    ids = torch.arange(10, dtype=torch.int32)
    out = _gather(hidden, weight, ids, None, 30.0, 0.5)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all(), out[1]
    vals, gids = OPS.vocab_gather_lm_head_topk(hidden, weight, ids, None, 30.0, 1.0, 1)
    assert torch.isnan(vals[1]).all() and int(gids[1, 0]) == 0  # NaN ranks first, as torch.sort


def test_vocab_logits_bound_is_tight():
    """vocab_logits_bound is not loose: a worst case of sequential fp32 summation nearly reaches it. H = 256,
    hidden = [1, 2^-24, ..., 2^-24], one weight row of ones: each 2^-24 added to 1 is a tie that rounds back to 1
    (to even), so the left-to-right sum is exactly 1 and the exact logit 1 + 255 * 2^-24. The error, 255 u, is
    255/257 of the bound (gamma_256 * sum |h w| plus the scale's rounding u |y|); the bound at 0.99 of its size,
    or half, fails it."""
    H = 256
    hidden = torch.full((1, H), 2.0**-24)
    hidden[0, 0] = 1.0
    weight, ids = torch.ones(1, H), torch.zeros(1, dtype=torch.int32)
    acc = torch.zeros((), dtype=torch.float32)
    for h in hidden[0]:  # left to right, one fp32 rounding per add
        acc = acc + h * weight[0, 0]
    y = acc.reshape(1, 1)
    assert float(y) == 1.0
    exact, bound = vocab_logits_bound(hidden, weight, ids, None, None, 1.0)
    assert float(exact) == 1 + 255 * 2.0**-24
    ratio = float((exact - y.double()).abs() / bound)
    assert 0.99 < ratio <= 1, ratio
    _assert_within("logits", y, exact, bound)
    for tighter in (bound / 2, bound * 0.99):
        with pytest.raises(AssertionError, match="exceeds the derived bound"):
            _assert_within("logits", y, exact, tighter)


# ------------------------------------------------------------------------------------- top-k / argmax
def _sorted_reference(z, ids):
    """Stable descending sort of this backend's logits: (values [B, K], global ids [B, K])."""
    vals, pos = torch.sort(z, dim=-1, descending=True, stable=True)
    ids = ids.long()
    return vals, (ids[pos] if ids.dim() == 1 else ids.gather(1, pos))


@pytest.mark.parametrize("per_row", [False, True], ids=["ids1d", "ids2d"])
@pytest.mark.parametrize("B", [1, 3, 5, 17])
def test_topk_is_a_stable_sort_of_the_same_logits(backend, B, per_row):
    hidden, weight, ids, bias = _head(B, 21, 30, 26, torch.bfloat16, torch.bfloat16, torch.bfloat16, per_row,
                                      pad=0.3, seed=B)
    weight[7], bias[7] = weight[11], bias[11]  # distinct ids with exactly equal logits
    ids[..., 3], ids[..., 9], ids[..., 20] = 11, 7, 11
    if per_row and B > 1:
        ids[1] = -1  # a row of only padding: -inf values, id -1
    for soft_cap, scale in ((None, 1.0), (30.0, 2.0)):
        args = (hidden, weight, ids, bias, soft_cap, scale)
        want_v, want_i = _sorted_reference(_gather(*args), ids)
        for k in range(1, 27) if soft_cap is None else (1, 2, 13, 26):  # every k = 1..K once
            vals, gids = OPS.vocab_gather_lm_head_topk(*args, k)
            assert torch.equal(vals, want_v[:, :k]) and torch.equal(gids, want_i[:, :k]), k
        assert_vocab_topk(vals, gids, args, 26)
        best_ids, best = vocab.gather_lm_head_argmax(hidden, weight, ids, bias=bias, soft_cap=soft_cap, scale=scale)
        assert torch.equal(best_ids, want_i[:, 0]) and torch.equal(best, want_v[:, 0])
        assert (want_i[want_v == float("-inf")] == -1).all()  # padding ranks last, reported as id -1
        if per_row and B > 1:
            assert want_i[1].tolist() == [-1] * 26


@pytest.mark.parametrize("per_row", [False, True], ids=["ids1d", "ids2d"])
def test_topk_long_rows_with_ties_nan_and_zero_rows(backend, per_row):
    """Rows long enough for the C++ two-pass top-k to select behind a bar from group maxima (K >= 16 k):
    duplicate ids (equal logits on both sides of the bar), a hidden row of zeros (every logit ties), a NaN
    logit (the row falls back to every position), padding; against a stable sort of the same logits."""
    hidden, weight, ids, bias = _head(4, 32, 3000, 6000, torch.float32, torch.bfloat16, torch.float32, per_row,
                                      pad=0.1, seed=11)
    hidden[2] = 0.0
    for nan_bias in (False, True):
        if nan_bias:
            bias = bias.clone()
            bias[int(ids.flatten()[ids.flatten() >= 0][5])] = float("nan")
        args = (hidden, weight, ids, bias, None, 1.0)
        want_v, want_i = _sorted_reference(_gather(*args), ids)
        nan_rows = torch.isnan(want_v).any(-1)
        assert bool(nan_rows.any()) == nan_bias
        for k in (2, 7, 50, 300):
            vals, gids = OPS.vocab_gather_lm_head_topk(*args, k)
            ok = ~nan_rows  # NaN rows: NaN first, then the same order (torch.sort puts NaN first too)
            assert torch.equal(vals[ok], want_v[ok, :k]) and torch.equal(gids[ok], want_i[ok, :k]), k
            for b in nan_rows.nonzero().flatten().tolist():
                assert torch.equal(gids[b], want_i[b, :k]), (b, k)
                assert torch.isnan(vals[b]).sum() == torch.isnan(want_v[b, :k]).sum()


def test_topk_bar_on_ties_few_levels_and_infinities(backend):
    """Rows for the C++ bar (K >= 16 k) where it cannot be tight: every logit equal (all K positions pass it), four
    levels (a quarter pass: more candidates than the vector ranking takes), +-inf among the logits (the bisection's
    ends), and a plain row (~1-2 k candidates, ranked). Each row's logits are its own bias slice (hidden zero)."""
    g = torch.Generator().manual_seed(31)
    B, H, V, K, span = 5, 8, 3000, 6000, 600
    hidden = torch.zeros(B, H)
    hidden[4] = torch.randn(H, generator=g)
    weight = torch.randn(V, H, generator=g)
    bias = torch.randn(V, generator=g)
    bias[0:span] = 0.75  # row 0: one value
    bias[span:2 * span] = torch.randint(0, 4, (span,), generator=g).float()  # row 1: four levels
    inf_at = torch.randperm(span, generator=g)[:40] + 2 * span  # row 2: 20 x +inf, 20 x -inf
    bias[inf_at[:20]], bias[inf_at[20:]] = float("inf"), float("-inf")
    ids = (torch.arange(B)[:, None] * span + torch.randint(0, span, (B, K), generator=g)).to(torch.int32)
    args = (hidden, weight, ids, bias, None, 1.0)
    want_v, want_i = _sorted_reference(_gather(*args), ids)
    assert int(torch.isinf(want_v[2]).sum()) > 0
    for k in (2, 50, 300):
        vals, gids = OPS.vocab_gather_lm_head_topk(*args, k)
        assert torch.equal(vals, want_v[:, :k]) and torch.equal(gids, want_i[:, :k]), k


@pytest.mark.skipif(not HAS_CPP, reason="the C++ extension is not built")
def test_cpp_topk_streaming_beyond_the_scratch():
    """B * K above the C++ top-k's 4M-logit scratch: per-thread candidates are streamed and cut (the weights
    are read once); every row still equals a stable sort of its logits."""
    hidden, weight, ids, bias = _head(30, 16, 200000, 150000, per_row=True, pad=0.05, seed=12)
    args = (hidden, weight, ids, bias, None, 1.0)
    with leankern.use_backend("cpp"):
        want_v, want_i = _sorted_reference(_gather(*args), ids)
        for k in (2, 20, 300):
            vals, gids = OPS.vocab_gather_lm_head_topk(*args, k)
            assert torch.equal(vals, want_v[:, :k]) and torch.equal(gids, want_i[:, :k]), k


def test_ties_go_to_the_lowest_position_across_chunks_and_threads(backend):
    g = torch.Generator().manual_seed(9)
    V, H, K = 500, 40, 1000
    hidden = torch.randn(3, H, generator=g)
    weight = torch.randn(V, H, generator=g) * 0.1
    weight[123] = weight[456] = weight[77] = hidden.sum(0) * 2  # the row every hidden likes best
    ids = torch.randint(0, 77, (K,), generator=g, dtype=torch.int32)
    ids[900], ids[130], ids[700], ids[999] = 456, 123, 77, 123  # first tie at position 130 (chunk 2)
    best_ids, best = vocab.gather_lm_head_argmax(hidden, weight, ids)
    assert best_ids.tolist() == [123] * 3
    vals, gids = vocab.gather_lm_head_topk(hidden, weight, ids, 4)
    assert gids[:, :4].tolist() == [[123, 77, 456, 123]] * 3  # positions 130, 700, 900, 999
    assert torch.equal(vals[:, 0], vals[:, 3])
    assert_vocab_topk(vals, gids, (hidden, weight, ids, None, None, 1.0), 4)


def test_signed_zero_logits_tie_in_position_order(backend):
    """-0 and +0 are equal logits (torch.sort treats them so): ties go to the lowest position whatever the sign.
    2^-75 * +-2^-74 = +-2^-149 (the smallest subnormal), times 0.25 underflows to -0, +0, +0, -0."""
    hidden = torch.tensor([[2.0**-75]])
    weight = torch.tensor([[-2.0**-74], [2.0**-74], [2.0**-74], [-2.0**-74]])
    ids = torch.arange(4, dtype=torch.int32)
    z = vocab.gather_lm_head(hidden, weight, ids, scale=0.25)
    assert (z == 0).all() and torch.signbit(z).tolist() == [[True, False, False, True]], z
    vals, gids = vocab.gather_lm_head_topk(hidden, weight, ids, 4, scale=0.25)
    assert gids.tolist() == [[0, 1, 2, 3]] and (vals == 0).all(), (gids, vals)
    best_ids, best = vocab.gather_lm_head_argmax(hidden, weight, ids, scale=0.25)
    assert best_ids.tolist() == [0] and best.tolist() == [0.0]


def test_argmax_returns_global_ids_and_topk_bound(backend):
    hidden, weight, ids, bias = _head(8, 50, 400, 300, torch.float16, torch.float32, torch.float32, seed=13)
    z = _gather(hidden, weight, ids, bias)
    best_ids, best = vocab.gather_lm_head_argmax(hidden, weight, ids, bias=bias)
    assert torch.equal(best_ids, ids.long()[z.argmax(-1)]) and torch.equal(best, z.max(-1).values)
    vals, gids = vocab.gather_lm_head_topk(hidden, weight, ids, 40, bias=bias)
    assert_vocab_topk(vals, gids, (hidden, weight, ids, bias, None, 1.0), 40)


def test_topk_large_k_over_threads(backend):
    hidden, weight, ids, _ = _head(2, 16, 3000, 1500, seed=21, pad=0.1)
    want_v, want_i = _sorted_reference(_gather(hidden, weight, ids), ids)
    vals, gids = OPS.vocab_gather_lm_head_topk(hidden, weight, ids, None, None, 1.0, 1024)
    assert torch.equal(vals, want_v[:, :1024]) and torch.equal(gids, want_i[:, :1024])


# -------------------------------------------------------------------------------------------- errors
H0, V0, B0 = 20, 50, 3


def _ok_args():
    g = torch.Generator().manual_seed(0)
    return dict(hidden=torch.randn(B0, H0, generator=g), weight=torch.randn(V0, H0, generator=g),
                vocab_ids=torch.tensor([3, -1, 7], dtype=torch.int32), bias=None, soft_cap=None, scale=1.0)


def _i32(*v):
    return torch.tensor(v, dtype=torch.int32)


IDS_MSG = r"vocab_ids: expected ids in \[-1, V=50\)"
BAD = [  # (name, overrides, exception, message)
    ("id-2", dict(vocab_ids=_i32(3, -2, 7)), ValueError, IDS_MSG),
    ("idV", dict(vocab_ids=_i32(3, 50)), ValueError, IDS_MSG),
    ("id-huge", dict(vocab_ids=_i32(0, 2**31 - 1)), ValueError, IDS_MSG),
    ("id-most-negative", dict(vocab_ids=_i32(-(2**31), 1)), ValueError, IDS_MSG),
    ("id-2d", dict(vocab_ids=torch.tensor([[1, 2], [3, 4], [5, 50]], dtype=torch.int32)), ValueError, IDS_MSG),
    ("hidden-f64", dict(hidden=torch.zeros(B0, H0, dtype=torch.float64)), TypeError, r"^hidden: expected dtype"),
    ("hidden-3d", dict(hidden=torch.zeros(1, B0, H0)), ValueError, r"^hidden: expected shape \[B, H\]"),
    ("weight-f64", dict(weight=torch.zeros(V0, H0, dtype=torch.float64)), TypeError, r"^weight: expected dtype"),
    ("ids-i64", dict(vocab_ids=torch.tensor([3, 7])), TypeError, r"^vocab_ids: expected dtype in \['torch.int32'\]"),
    ("weight-H+1", dict(weight=torch.zeros(V0, H0 + 1)), ValueError, r"^weight: expected shape \[V, H=20\]"),
    ("weight-V0", dict(weight=torch.zeros(0, H0)), ValueError, r"^weight: expected at least one vocabulary row"),
    ("weight-transposed", dict(weight=torch.zeros(H0, V0).t()), ValueError, r"^weight: .*stride\(1\) == 1"),
    ("ids-2d-wrong-B", dict(vocab_ids=torch.zeros(B0 + 1, 4, dtype=torch.int32)), ValueError,
     r"^vocab_ids: expected shape \[K\] or \[B=3, K\]"),
    ("ids-3d", dict(vocab_ids=torch.zeros(B0, 1, 4, dtype=torch.int32)), ValueError, r"^vocab_ids: expected shape"),
    ("bias-length", dict(bias=torch.zeros(V0 + 1)), ValueError, r"^bias: expected shape \[V=50\]"),
    ("bias-f64", dict(bias=torch.zeros(V0, dtype=torch.float64)), TypeError, r"^bias: expected dtype"),
    ("cap-0", dict(soft_cap=0.0), ValueError, r"^soft_cap: expected a finite value > 0"),
    ("cap-neg", dict(soft_cap=-30.0), ValueError, r"^soft_cap: expected a finite value > 0"),
    ("cap-inf", dict(soft_cap=float("inf")), ValueError, r"^soft_cap: expected a finite value > 0"),
    ("cap-nan", dict(soft_cap=float("nan")), ValueError, r"^soft_cap: expected a finite value > 0"),
    ("scale-inf", dict(scale=float("inf")), ValueError, r"^scale: expected a finite value"),
]


def _head_call(op, a):
    args = (a["hidden"], a["weight"], a["vocab_ids"], a["bias"], a["soft_cap"], a["scale"])
    if op == "gather":
        return (OPS.vocab_gather_lm_head, *args, None, False)
    return (OPS.vocab_gather_lm_head_topk, *args, 1)


@pytest.mark.parametrize("op", ["gather", "topk"])
@pytest.mark.parametrize("backend_name", _cpp_and_ref())
@pytest.mark.parametrize("name,over,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_rejects_bad_arguments(backend_name, op, name, over, exc, msg):
    a = {**_ok_args(), **over}
    fn, *args = _head_call(op, a)
    with leankern.use_backend(backend_name), pytest.raises(exc, match=msg):
        fn(*args)


@pytest.mark.skipif(not HAS_CPP, reason="leankern._C not loaded")
@pytest.mark.parametrize("op", ["gather", "topk"])
def test_cpp_and_python_checks_say_the_same(op):
    extra = [(n, None, None, None) for n in ("out_dtype", "k-0", "k>K", "k>1024")]
    for name, over, _, _ in BAD + extra:
        a = {**_ok_args(), **(over or {})}
        fn, *args = _head_call(op, a)
        if name == "out_dtype":
            if op == "topk":
                continue
            args[-2] = torch.float64
        elif name.startswith("k"):
            if op == "gather":
                continue
            if name == "k>1024":
                args[2] = torch.zeros(1100, dtype=torch.int32)
            args[-1] = {"k-0": 0, "k>K": 4, "k>1024": 1025}[name]
        assert _raise_text("cpp", fn, *args) == _raise_text("ref", fn, *args), name


@pytest.mark.parametrize("backend_name", _cpp_and_ref())
def test_topk_k_range_and_out_dtype(backend_name):
    a = _ok_args()
    h, w, ids = a["hidden"], a["weight"], a["vocab_ids"]
    with leankern.use_backend(backend_name):
        for k in (0, -1, 4):
            with pytest.raises(ValueError, match=r"^k: expected 1 <= k <= min\(K=3, 1024\), got " + str(k)):
                OPS.vocab_gather_lm_head_topk(h, w, ids, None, None, 1.0, k)
        big = torch.zeros(1100, dtype=torch.int32)
        with pytest.raises(ValueError, match=r"^k: expected 1 <= k <= min\(K=1100, 1024\), got 1025"):
            OPS.vocab_gather_lm_head_topk(h, w, big, None, None, 1.0, 1025)
        assert OPS.vocab_gather_lm_head_topk(h, w, big, None, None, 1.0, 1024)[0].shape == (B0, 1024)
        with pytest.raises(TypeError, match=r"^out_dtype: expected one of"):
            _gather(h, w, ids, None, None, 1.0, torch.float64)


@pytest.mark.parametrize("backend_name", _cpp_and_ref())
def test_bad_ids_raise_before_any_read(backend_name):
    """A one-row head and ids far outside it: a read would fault; the check raises first (every entry point)."""
    h, w = torch.randn(2, 8), torch.randn(1, 8)
    bad = [_i32(0, 2**31 - 1), _i32(-(2**31), 0), _i32(0, -1, 1), _i32(-2)]
    msg = r"vocab_ids: expected ids in \[-1, V=1\)"
    with leankern.use_backend(backend_name):
        for ids in bad:
            for call in (lambda: vocab.gather_lm_head(h, w, ids), lambda: vocab.gather_lm_head_topk(h, w, ids, 1),
                         lambda: vocab.gather_lm_head_argmax(h, w, ids),
                         lambda: vocab.gather_lm_head_log_softmax(h, w, ids.long()),
                         lambda: vocab.gather_lm_head(h, w, ids.expand(2, -1).contiguous())):
                with pytest.raises(ValueError, match=msg):
                    call()


def test_public_api_shape_errors():
    h, w = torch.randn(2, 3, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match=r"vocab_ids: expected shape \[K\] or \[2, 3, K\]"):
        vocab.gather_lm_head(h, w, torch.zeros(3, 2, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"vocab_ids: expected a torch.Tensor"):
        vocab.gather_lm_head(h, w, [1, 2])
    with pytest.raises(TypeError, match=r"hidden: expected a torch.Tensor"):
        vocab.gather_lm_head(None, w, torch.zeros(3, dtype=torch.int32))


# ----------------------------------------------------------------------------------------- hypothesis
@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 9), H=st.integers(1, 70), V=st.integers(1, 80), K=st.integers(0, 90),
       hdt=st.sampled_from(DTYPES), wdt=st.sampled_from(DTYPES), bias_dt=st.sampled_from((None,) + DTYPES),
       pad=st.sampled_from([0.0, 0.3, 1.0]), per_row=st.booleans(), soft_cap=st.sampled_from([None, 5.0, 30.0]),
       scale=st.sampled_from([1.0, 0.25, -3.0]), log_softmax=st.booleans(), seed=st.integers(0, 2**16))
def test_gather_and_topk_within_bound_hypothesis(B, H, V, K, hdt, wdt, bias_dt, pad, per_row, soft_cap, scale,
                                                  log_softmax, seed):
    hidden, weight, ids, bias = _head(B, H, V, K, hdt, wdt, bias_dt, per_row, pad, seed, spread=8.0)
    args = (hidden, weight, ids, bias, soft_cap, scale)
    for be in ["ref"] + (["cpp"] if HAS_CPP else []):
        with leankern.use_backend(be):
            out = _gather(*args, None, log_softmax)
            if not K:  # (the bound helper reduces over K)
                assert out.shape == (B, 0)
                continue
            assert_vocab_logits(out, args, None, log_softmax)
            k = 1 + seed % min(K, 7)
            vals, gids = OPS.vocab_gather_lm_head_topk(*args, k)
            want_v, want_i = _sorted_reference(_gather(*args), ids)
            assert torch.equal(vals, want_v[:, :k]) and torch.equal(gids, want_i[:, :k])
            assert_vocab_topk(vals, gids, args, k)


# ------------------------------------------------------------------------------- compile and opcheck
def test_torch_compile_fullgraph_matches_eager():
    hidden, weight, ids, bias = _head(4, 32, 64, 40, torch.bfloat16, torch.bfloat16, torch.float32, seed=8)

    def step(h, w, ids, b):
        z = vocab.gather_lm_head(h, w, ids, bias=b, soft_cap=30.0)
        best_ids, best = vocab.gather_lm_head_argmax(h, w, ids, bias=b, soft_cap=30.0)
        stats = vocab.logit_stats(z, temperature=0.7)
        return (z, best_ids, best) + tuple(stats)

    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True)(hidden, weight, ids, bias)
    want = step(hidden, weight, ids, bias)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)


def _opcheck_sets():
    h, w, ids, bias = _head(3, 24, 40, 9, torch.bfloat16, torch.float16, torch.float32, seed=1)
    _, _, rows, _ = _head(3, 24, 40, 9, per_row=True, seed=2)
    hf = h.float()
    return {
        "vocab_gather_lm_head": [(hf, w, ids, None, None, 1.0, None, False),
                                 (h, w, rows, bias, 30.0, 0.5, torch.float32, True)],
        "vocab_gather_lm_head_topk": [(hf, w, ids, None, None, 1.0, 2), (h, w, rows, bias, 30.0, -1.5, 5)],
        "vocab_scatter_to_full": [(torch.randn(3, 9), ids, 40, float("-inf")),
                                  (torch.randn(3, 9).to(torch.bfloat16), rows, 40, 0.0)],
        "vocab_logit_stats": [(torch.randn(3, 70), 1.0), (torch.randn(2, 33).to(torch.float16), 0.7)],
    }


@pytest.mark.parametrize("name", ["vocab_gather_lm_head", "vocab_gather_lm_head_topk", "vocab_scatter_to_full",
                                  "vocab_logit_stats"])
def test_opcheck(name):
    op = getattr(OPS, name).default
    for args in _opcheck_sets()[name]:
        torch.library.opcheck(op, args)


# ------------------------------------------------------------------------------------------ MX heads
@pytest.mark.parametrize("per_row", [False, True], ids=["ids1d", "ids2d"])
def test_mxfp4_head_through_the_public_api(per_row):
    hidden, weight, ids, bias = _head(3, 64, 48, 30, torch.float32, torch.bfloat16, torch.float32, per_row, seed=17)
    qw = leankern.mx.quantize(weight, "mxfp4")
    w_hat = leankern.mx.dequantize(qw, torch.float32)  # exact decoded values
    for soft_cap, scale in ((None, 1.0), (30.0, 0.5)):
        out = vocab.gather_lm_head(hidden, qw, ids, bias=bias, soft_cap=soft_cap, scale=scale)
        assert_vocab_logits(out, (hidden, w_hat, ids, bias, soft_cap, scale))
        ref = vocab.gather_lm_head(hidden, w_hat, ids, bias=bias, soft_cap=soft_cap, scale=scale)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert torch.isneginf(out[..., ids < 0] if per_row else out[:, ids < 0]).all()
        want_v, want_i = _sorted_reference(out, ids)
        vals, gids = vocab.gather_lm_head_topk(hidden, qw, ids, 5, bias=bias, soft_cap=soft_cap, scale=scale)
        assert torch.equal(vals, want_v[:, :5]) and torch.equal(gids, want_i[:, :5])
        best_ids, best = vocab.gather_lm_head_argmax(hidden, qw, ids, bias=bias, soft_cap=soft_cap, scale=scale)
        assert torch.equal(best_ids, want_i[:, 0]) and torch.equal(best, want_v[:, 0])
    lsm = vocab.gather_lm_head_log_softmax(hidden, qw, ids)
    assert_vocab_logits(lsm, (hidden, w_hat, ids, None, None, 1.0), log_softmax=True)
    with pytest.raises(ValueError, match=r"vocab_ids: expected ids in \[-1, V=48\)"):
        vocab.gather_lm_head(hidden, qw, _i32(0, 48))
    with pytest.raises(ValueError, match=r"^k: expected 1 <= k <= min\(K=30, 1024\), got 31$"):  # the plain path's
        vocab.gather_lm_head_topk(hidden, qw, ids, 31)


@pytest.mark.parametrize("fmt,rotate", [("nvfp4", None), ("nvint4", None), ("mxint8", None), ("mxfp8_e4m3", None),
                                        ("mxint4", 32), ("nvfp4", 16)])
def test_quantized_heads_of_other_formats_and_rotated(fmt, rotate):
    """Beyond mxfp4: NV (E4M3 block scales x a per-tensor scale), 8-bit, and rotated heads (x is rotated the same way
    on the fly): the subset logits are those of the effective weight in x's basis."""
    hidden, weight, ids, bias = _head(3, 64, 48, 30, torch.float32, torch.bfloat16, torch.float32, True, seed=23)
    qw = leankern.mx.quantize(weight, fmt, rotate=rotate)
    w_eff = leankern.mx.dequantize(qw, torch.float32)
    if rotate:  # rotate(x) = x @ r, so x @ W_eff^T with W_eff = W_hat @ r^T
        r = leankern.mx.hadamard_transform(torch.eye(64), rotate, 1.0 / math.sqrt(rotate),
                                           leankern.mx.random_hadamard_signs(rotate, qw.rotation[1]))
        w_eff = w_eff @ r.T
    out = vocab.gather_lm_head(hidden, qw, ids, bias=bias)
    ref = vocab.gather_lm_head(hidden, w_eff, ids, bias=bias)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    best_ids, best = vocab.gather_lm_head_argmax(hidden, qw, ids, bias=bias)
    want_v, want_i = _sorted_reference(out, ids)
    assert torch.equal(best_ids, want_i[:, 0]) and torch.equal(best, want_v[:, 0])


@pytest.mark.parametrize("backend", _cpp_and_ref())
@pytest.mark.parametrize("fmt", ["mxfp4", "mxint8", "mxfp8_e4m3", "nvfp4"])
def test_quantized_head_at_the_ends_of_fp32(backend, fmt):
    """MX heads whose block scales are 2^-37 times hidden states of ~2^-110 (logits among fp32's subnormals, each
    product rounding with an absolute error: the bound's per-term underflow allowance, which it lacked) and ~2^124
    (NV heads as quantized: logits at fp32's overflow threshold, where an infinity of the right sign is the result):
    within the derived bound."""
    V, H = 120, 256
    qw = leankern.mx.quantize(torch.randn(V, H, generator=torch.Generator().manual_seed(31)), fmt)
    if fmt.startswith("mx"):
        qw = leankern.MXTensor(qw.codes, torch.full_like(qw.scales.view(torch.uint8), 90).view(qw.scales.dtype),
                               qw.global_scale, qw.fmt, qw.block_size, qw.shape, qw.dtype)
    w_hat = leankern.mx.dequantize(qw, torch.float32)
    ids = torch.randperm(V, generator=torch.Generator().manual_seed(5))[:50].to(torch.int32)
    for top in (-110, 124):
        for B in (1, 4, 16):
            g = torch.Generator().manual_seed(B)
            hidden = binade_tensor((B, H), top, g)
            for dt in (torch.float32, torch.bfloat16):
                h = hidden.to(dt)
                assert_vocab_logits(vocab.gather_lm_head(h, qw, ids), (h, w_hat, ids, None, None, 1.0))


def test_plain_head_with_hidden_near_the_top_of_fp32(backend):
    """Hidden states up to 2^124 times ordinary fp32 / bf16 rows (a bias of ~2^118 on one batch): the dots' partial
    sums passed 2^128 in an order other than the result's, inf where the exact logit is finite (B = 4, 5 cases
    before). The op computes such hidden as ((h 2^-k) W^T + b 2^-k) 2^k (common/x_shift.h). Logits, top-k and
    argmax within the bound (argmax: the same position as the op's own logits)."""
    if backend == "ref":
        pytest.skip("the reference's fp32 matmul sums in its own order; the bound is the kernels' contract")
    V, H = 120, 256
    ids = torch.randperm(V, generator=torch.Generator().manual_seed(5))[:50].to(torch.int32)
    bias = torch.randn(V, generator=torch.Generator().manual_seed(6)) * 2.0**118
    for wdt in (torch.float32, torch.bfloat16):
        w = torch.randn(V, H, generator=torch.Generator().manual_seed(31)).to(wdt)
        for top in (118, 124):
            for B in (1, 4, 16):
                g = torch.Generator().manual_seed(B + top)
                hidden = binade_tensor((B, H), top, g)
                for dt in (torch.float32, torch.bfloat16):
                    h, b = hidden.to(dt), bias if B == 4 else None
                    args = (h, w, ids, b, None, 1.0)
                    z = vocab.gather_lm_head(h, w, ids, bias=b)
                    assert_vocab_logits(z, args)
                    assert_vocab_topk(*vocab.gather_lm_head_topk(h, w, ids, 5, bias=b), args, 5)
                    best_ids, best = vocab.gather_lm_head_argmax(h, w, ids, bias=b)
                    assert torch.equal(best_ids, ids.long()[z.argmax(-1)]) and torch.equal(best, z.max(-1).values)


def test_hidden_row_near_the_top_leaves_the_other_rows_alone(backend):
    """The hidden shift is per row (common/x_shift.h): a row of |h| ~ 2^100 next to an ordinary row and a row of
    ~1e-30 leaves each row's logits within its own bound (before: one k for every row pushed the 1e-30 row into
    fp32's subnormals; a smaller row would meet the documented vdpbf16ps flush of bf16 x bf16 products)."""
    if backend == "ref":
        pytest.skip("the reference's fp32 matmul sums in its own order; the bound is the kernels' contract")
    V, H = 120, 256
    ids = torch.randperm(V, generator=torch.Generator().manual_seed(5))[:50].to(torch.int32)
    gen = torch.Generator().manual_seed(8)
    bias = torch.randn(V, generator=gen)
    hidden = torch.randn(3, H, generator=gen) * torch.tensor([[2.0**100], [1.0], [1e-30]])
    for wdt in (torch.float32, torch.bfloat16):
        w = torch.randn(V, H, generator=gen).to(wdt)
        for dt in (torch.float32, torch.bfloat16):
            for b in (None, bias):
                h = hidden.to(dt)
                assert_vocab_logits(vocab.gather_lm_head(h, w, ids, bias=b), (h, w, ids, b, None, 1.0))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxint8"])
@pytest.mark.parametrize("layout", ["prepacked", "swizzled"])
def test_quantized_head_in_any_stored_layout_gives_the_row_major_logits(fmt, layout):
    """A QuantLinear's prepacked weight (or one with swizzled scales) is taken as it is: its K rows are read out of
    that layout, so the logits equal the row-major head's bit for bit."""
    hidden, weight, ids, bias = _head(3, 64, 40, 25, torch.float32, torch.bfloat16, torch.float32, False, seed=29)
    qw = leankern.mx.quantize(weight, fmt)
    other = qw.prepacked() if layout == "prepacked" else qw.swizzled()
    assert torch.equal(vocab.gather_lm_head(hidden, other, ids, bias=bias),
                       vocab.gather_lm_head(hidden, qw, ids, bias=bias))
    per_row = ids.clamp_min(0).repeat(3, 1).roll(1, 1)  # [B, K] sets read the same way
    assert torch.equal(vocab.gather_lm_head_topk(hidden, other, per_row, 3)[1],
                       vocab.gather_lm_head_topk(hidden, qw, per_row, 3)[1])


def test_quantized_head_compiles_fullgraph():
    """The MXTensor-head path traces whole: its id check is an assert in the graph while compiling."""
    hidden, weight, ids, bias = _head(3, 64, 48, 30, torch.float32, torch.bfloat16, torch.float32, False, seed=29)
    qw = leankern.mx.quantize(weight, "nvfp4")
    torch._dynamo.reset()
    for fn in (lambda h, i: vocab.gather_lm_head(h, qw, i, bias=bias),
               lambda h, i: vocab.gather_lm_head_argmax(h, qw, i, bias=bias),
               lambda h, i: vocab.gather_lm_head_topk(h, qw, i, 4, bias=bias)):
        got, want = torch.compile(fn, fullgraph=True)(hidden, ids), fn(hidden, ids)
        for g_, w_ in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            assert torch.equal(g_, w_)
    bad = ids.clone()
    bad[0] = 48
    with pytest.raises(RuntimeError, match=r"vocab_ids: expected ids in \[-1, V=48\) \(-1 = padding\), got an id "):
        torch.compile(lambda h, i: vocab.gather_lm_head(h, qw, i), fullgraph=True)(hidden, bad)
