"""vocab input validation at the public functions: int64 ids beyond int32 are an error, never a wrapped read
(gather / top-k / argmax / log-softmax / scatter, the MXTensor head, ``VocabSet.for_request``); the MXTensor-head
path runs the plain path's argument checks with the same messages; argmax over K = 0 ids and a non-int k say what
is wrong. Op-level argument errors (C++ == Python): tests/test_vocab_ops.py."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import leankern
from leankern import vocab
from leankern.vocab.vocab_set import VocabSet

from vocab_backends import _cpp_and_ref

H, V, B = 64, 100, 3
MSG = r"^vocab_ids: expected ids in \[-1, V=100\) \(-1 = padding\), got min "
# each wraps (int64 -> int32) onto a valid id or onto -1: 2^32 + 5 -> 5, 2^32 - 1 -> -1, -2^32 + 7 -> 7
WRAPPING = [2**32 + 5, 2**32 - 1, -(2**32) + 7, 2**31, -(2**31) - 1, 2**63 - 1, -(2**63)]


def _head(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, generator=g), torch.randn(V, H, generator=g)


def _mx(weight):
    return leankern.mx.quantize(weight, "mxfp4")


def _names(excinfo, value) -> bool:
    """The message states ``value`` itself (2^31 must not match the "-2147483648" of its wrapped int32)."""
    return re.search(rf"(?<![-\d]){value}(?!\d)", str(excinfo.value)) is not None


def _calls(h, w, ids):
    """Every public entry point that takes vocab_ids, on [K] ids and on per-row [B, K] ids."""
    rows = ids.expand(B, -1).contiguous()
    return {
        "gather": lambda: vocab.gather_lm_head(h, w, ids),
        "gather-rows": lambda: vocab.gather_lm_head(h, w, rows),
        "gather-3d-hidden": lambda: vocab.gather_lm_head(h.view(1, B, H), w, ids),
        "log_softmax": lambda: vocab.gather_lm_head_log_softmax(h, w, ids),
        "topk": lambda: vocab.gather_lm_head_topk(h, w, ids, 1),
        "topk-rows": lambda: vocab.gather_lm_head_topk(h, w, rows, 2),
        "argmax": lambda: vocab.gather_lm_head_argmax(h, w, ids),
        "argmax-kwargs": lambda: vocab.gather_lm_head_argmax(h, w, ids, soft_cap=30.0),
    }


# ---------------------------------------------------------------------------------------- bug 1
@pytest.mark.parametrize("backend_name", _cpp_and_ref())
@pytest.mark.parametrize("bad", WRAPPING)
def test_int64_ids_beyond_int32_raise_instead_of_wrapping(backend_name, bad):
    h, w = _head()
    ids = torch.tensor([3, bad, -1], dtype=torch.int64)
    with leankern.use_backend(backend_name):
        for name, call in _calls(h, w, ids).items():
            with pytest.raises(ValueError, match=MSG) as e:
                call()
            assert _names(e, bad), name  # the actual id, not its wrapped int32 value
        with pytest.raises(ValueError, match=MSG):
            vocab.scatter_to_full(torch.randn(B, 3), ids, V)
        with pytest.raises(ValueError, match=MSG):
            vocab.scatter_to_full(torch.randn(B, 3), ids.expand(B, -1), V)


def test_int64_ids_beyond_int32_raise_on_an_mx_head():
    h, w = _head(1)
    qw = _mx(w)
    for bad in WRAPPING:
        ids = torch.tensor([3, bad, -1], dtype=torch.int64)
        for name, call in _calls(h, qw, ids).items():
            with pytest.raises(ValueError, match=MSG) as e:
                call()
            assert _names(e, bad), name


def test_valid_int64_ids_match_int32_and_int32_ids_pass_untouched():
    h, w = _head(2)
    ids32 = torch.tensor([0, 99, -1, 5, 5], dtype=torch.int32)
    for weight in (w, _mx(w)):
        assert torch.equal(vocab.gather_lm_head(h, weight, ids32.long()), vocab.gather_lm_head(h, weight, ids32))
        got, want = vocab.gather_lm_head_argmax(h, weight, ids32.long()), vocab.gather_lm_head_argmax(h, weight, ids32)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    z = torch.randn(B, 5)
    assert torch.equal(vocab.scatter_to_full(z, ids32.long(), V), vocab.scatter_to_full(z, ids32, V))
    assert vocab._ids32(ids32, V) is ids32  # int32: no copy, no pass over the ids


def test_saturating_narrowing_is_rejected_by_the_op_check():
    """Where the ids are not checked on the host (CUDA: no sync; torch.compile; V unknown), ids beyond int32 are
    narrowed to -2 / 2^31 - 1, both outside [-1, V) for every V < 2^31: the op's own check rejects them."""
    ids = torch.tensor([2**32 + 5, 2**32 - 1, -(2**32) + 7, 2**31, -(2**31) - 1, -(2**31), 2**31 - 1, -1, 0, 7])
    got = vocab._ids32(ids, None)
    assert got.dtype == torch.int32
    assert got.tolist() == [2**31 - 1, 2**31 - 1, -2, 2**31 - 1, -2, -2, 2**31 - 1, -1, 0, 7]
    h, w = _head(3)
    for bad in WRAPPING:
        with pytest.raises(ValueError, match=r"^vocab_ids: expected ids in \[-1, V=100\)"):
            vocab.gather_lm_head(h, w, vocab._ids32(torch.tensor([1, bad]), None))


def test_int64_ids_beyond_int32_raise_under_torch_compile():
    h, w = _head(4)

    def step(h, w, ids):
        return vocab.gather_lm_head(h, w, ids), vocab.gather_lm_head_argmax(h, w, ids)[0]

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    ok = torch.tensor([1, 99, -1])
    assert all(torch.equal(a, b) for a, b in zip(compiled(h, w, ok), step(h, w, ok)))
    for bad in (2**32 + 5, 2**32 - 1):
        with pytest.raises(ValueError, match=r"^vocab_ids: expected ids in \[-1, V=100\)"):
            compiled(h, w, torch.tensor([1, bad, -1]))


@pytest.mark.parametrize("bad", [2**31, 2**31 + 5, 2**32 + 2, 2**32 + 5])
def test_for_request_rejects_ids_beyond_int32(bad):
    vs = VocabSet(ids=[1, 2, 3], tokenizer_name="t")
    msg = rf"^prompt_ids / ids: expected token ids < 2\^31 \(int32 ids\), got {bad}$"
    for prompt in (torch.tensor([bad]), torch.tensor([[4, bad]]), [bad], [[4], [bad]]):
        with pytest.raises(ValueError, match=msg):
            vs.for_request(prompt)
    with pytest.raises(ValueError, match=rf"^prompt_ids / ids: expected token ids < V = 50, got {bad}$"):
        vs.for_request([bad], V=50)
    assert vs.for_request([2**31 - 1]).vocab_ids.tolist() == [1, 2, 3, 2**31 - 1]


# ---------------------------------------------------------------------------------------- bug 2
def _mx_bad_cases(h, w):
    """(name, kwargs overrides of (hidden, vocab_ids, bias, soft_cap, scale, out_dtype)) the plain path refuses."""
    ids = torch.tensor([3, -1, 7], dtype=torch.int32)
    return [
        ("hidden-f64", dict(hidden=h.double())),
        ("hidden-int", dict(hidden=h.to(torch.int32))),
        ("hidden-H+32", dict(hidden=torch.randn(B, H + 32))),
        ("out-int32", dict(out_dtype=torch.int32)),
        ("out-f64", dict(out_dtype=torch.float64)),
        ("cap-0", dict(soft_cap=0.0)),
        ("cap-neg", dict(soft_cap=-30.0)),
        ("cap-inf", dict(soft_cap=float("inf"))),
        ("cap-nan", dict(soft_cap=float("nan"))),
        ("scale-nan", dict(scale=float("nan"))),
        ("scale-inf", dict(scale=float("inf"))),
        ("bias-short", dict(bias=torch.zeros(V - 50), vocab_ids=torch.tensor([3, 99], dtype=torch.int32))),
        ("bias-long", dict(bias=torch.zeros(V + 1))),
        ("bias-f64", dict(bias=torch.zeros(V, dtype=torch.float64))),
        ("bias-2d", dict(bias=torch.zeros(1, V))),
        ("ids-f32", dict(vocab_ids=ids.float())),
        ("ids-out-of-range", dict(vocab_ids=torch.tensor([3, V], dtype=torch.int32))),
    ]


def _gather_with(h, weight, over, op):
    a = dict(hidden=h, vocab_ids=torch.tensor([3, -1, 7], dtype=torch.int32), bias=None, soft_cap=None, scale=1.0,
             out_dtype=torch.float32)
    a.update(over)
    kw = dict(bias=a["bias"], soft_cap=a["soft_cap"], scale=a["scale"])
    if op == "gather":
        return lambda: vocab.gather_lm_head(a["hidden"], weight, a["vocab_ids"], out_dtype=a["out_dtype"], **kw)
    if op == "log_softmax":
        return lambda: vocab.gather_lm_head_log_softmax(a["hidden"], weight, a["vocab_ids"], out_dtype=a["out_dtype"],
                                                        **kw)
    if "out_dtype" in over:
        return None  # top-k / argmax take no out_dtype
    if op == "topk":
        return lambda: vocab.gather_lm_head_topk(a["hidden"], weight, a["vocab_ids"], 2, **kw)
    return lambda: vocab.gather_lm_head_argmax(a["hidden"], weight, a["vocab_ids"], **kw)


def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 (the type is part of what is compared)
        return type(e), str(e)
    return None


@pytest.mark.parametrize("op", ["gather", "log_softmax", "topk", "argmax"])
def test_mx_head_runs_the_plain_checks_with_the_same_messages(op):
    h, w = _head(5)
    qw = _mx(w)
    for name, over in _mx_bad_cases(h, w):
        plain, mx = _gather_with(h, w, over, op), _gather_with(h, qw, over, op)
        if plain is None:
            continue
        want = _raised(plain)
        assert want is not None and want[0] in (TypeError, ValueError), (name, want)
        assert _raised(mx) == want, name


def test_mx_head_shape_and_k_errors():
    h, w = _head(6)
    qw = _mx(w)
    ids = torch.tensor([3, -1, 7], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"^weight: expected shape \[V, H=32\] \(H from hidden\), got \(100, 64\)"):
        vocab.gather_lm_head(h[:, :32].contiguous(), qw, ids)
    for k in (0, 4):  # the plain path's message and bound, min(K, MAX_TOPK)
        with pytest.raises(ValueError, match=rf"^k: expected 1 <= k <= min\(K=3, 1024\), got {k}$"):
            vocab.gather_lm_head_topk(h, qw, ids, k)
    big = torch.arange(V, dtype=torch.int32).repeat(11)  # K = 1100
    with pytest.raises(ValueError, match=r"^k: expected 1 <= k <= min\(K=1100, 1024\), got 1025$"):
        vocab.gather_lm_head_topk(h, qw, big, 1025)
    with pytest.raises(ValueError, match=r"^k: expected 1 <= k <= min\(K=1100, 1024\), got 1025$"):
        vocab.gather_lm_head_topk(h, w, big, 1025)


# ---------------------------------------------------------------------------------------- bug 3
@pytest.mark.parametrize("backend_name", _cpp_and_ref())
def test_argmax_over_no_ids_names_vocab_ids_not_k(backend_name):
    h, w = _head(7)
    msg = r"^vocab_ids: expected K >= 1 ids to take the argmax over, got K=0 \(shape \((0,|3, 0)\)\)$"
    empty = [torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=torch.int64),
             torch.zeros(B, 0, dtype=torch.int32), torch.zeros(B, 0, dtype=torch.int64)]
    with leankern.use_backend(backend_name):
        for ids in empty:
            for weight in (w, _mx(w)):
                with pytest.raises(ValueError, match=msg):
                    vocab.gather_lm_head_argmax(h, weight, ids)
                with pytest.raises(ValueError, match=msg):
                    vocab.gather_lm_head_argmax(h, weight, ids, soft_cap=30.0)
        for ids in empty:  # (the [B, 0] ids reshape of the public functions)
            assert vocab.gather_lm_head(h, w, ids).shape == (B, 0)
            lead_ids = ids if ids.dim() == 1 else ids.view(1, B, 0)
            assert vocab.gather_lm_head(h.view(1, B, H), w, lead_ids).shape == (1, B, 0)
        # another error of the same call keeps its own message
        with pytest.raises(TypeError, match=r"^hidden: expected dtype"):
            vocab.gather_lm_head_argmax(h.double(), w, empty[0])
        # top-k does take k: there the k message is the right one
        with pytest.raises(ValueError, match=r"^k: expected 1 <= k <= min\(K=0, 1024\), got 1$"):
            vocab.gather_lm_head_topk(h, w, empty[0], 1)


@pytest.mark.parametrize("backend_name", _cpp_and_ref())
def test_topk_k_must_be_an_int(backend_name):
    h, w = _head(8)
    ids32 = torch.tensor([3, -1, 7], dtype=torch.int32)
    with leankern.use_backend(backend_name):
        for weight in (w, _mx(w)):
            for ids in (ids32, ids32.long(), ids32.expand(B, -1).contiguous()):
                for k, msg in ((True, r"bool True"), (False, r"bool False"), (2.0, r"float 2.0"), (1.5, r"float 1.5"),
                               ("2", r"str '2'"), (None, r"NoneType None")):
                    with pytest.raises(TypeError, match=r"^k: expected an int, got " + msg + "$"):
                        vocab.gather_lm_head_topk(h, weight, ids, k)
                want = vocab.gather_lm_head_topk(h, weight, ids, 2)
                got = vocab.gather_lm_head_topk(h, weight, ids, np.int64(2))  # numpy ints are ints
                assert all(torch.equal(a, b) for a, b in zip(got, want))

