"""Tests generated from ``leankern.mx.ops.CAPABILITIES``: every limit and dtype of every backend.

For each op and each backend that runs CPU tensors here (ref always, cpp when leankern._C is
loaded, triton under TRITON_INTERPRET=1), and each limited argument ``(lo, hi)`` of its row:
``lo`` and ``hi`` run; ``lo // 2``, ``hi * 2`` and a non-power of two are rejected with a
``ValueError`` naming the argument and *that backend's* range; every dtype of the row runs and
float64 is a ``TypeError``. The fake (FakeTensorMode, what torch.compile traces with) must accept
and reject exactly the same calls with the same message and the same output metadata.
"""
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import leankern
from leankern import core
from leankern.mx.ops import CAPABILITIES
from conftest import DEVICES, assert_matches_reference, SIZE_ARG, available_backends, needs_ext, op_args, with_dtype

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow notes (interpreter)

CPU_BACKENDS = available_backends("cpu")
REJECTED_DTYPE = torch.float64


def _cases():
    """(op, backend, kind, arg, value, dtype) for every row of the table that can run on CPU tensors."""
    accept, reject_value, reject_dtype = [], [], []
    for op, rows in CAPABILITIES.items():
        for backend, cap in rows.items():
            if "cpu" not in cap.devices:  # e.g. the CUDA-build-only row
                continue
            marks = [] if backend in CPU_BACKENDS else [
                pytest.mark.skip(reason=f"backend {backend!r} cannot run CPU tensors here")]
            for arg, (lo, hi) in cap.limits.items():
                assert arg == SIZE_ARG[op], f"tests/conftest.py: SIZE_ARG[{op!r}] should be {arg!r}"
                for tag, value in (("lo", lo), ("hi", hi)):
                    accept.append(pytest.param(op, backend, value, torch.float32, marks=marks,
                                               id=f"{op}-{backend}-{arg}={value}({tag})"))
                bad = [("below", lo // 2), ("above", hi * 2)]
                if (lo + 1) & lo:  # lo + 1 is no power of two (true for every lo >= 2)
                    bad.append(("not-pow2", lo + 1))
                for tag, value in bad:
                    reject_value.append(pytest.param(op, backend, arg, (lo, hi), value, marks=marks,
                                                     id=f"{op}-{backend}-{arg}={value}({tag})"))
            for dtype in cap.dtypes:
                accept.append(pytest.param(op, backend, 32, dtype, marks=marks,
                                           id=f"{op}-{backend}-{str(dtype)[6:]}"))
            assert REJECTED_DTYPE not in cap.dtypes
            reject_dtype.append(pytest.param(op, backend, marks=marks, id=f"{op}-{backend}-float64"))
    return accept, reject_value, reject_dtype


ACCEPT, REJECT_VALUE, REJECT_DTYPE = _cases()


def _call(op, args):
    return getattr(torch.ops.leankern, op)(*args)


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _outcome(fn):
    """("ok", [(shape, dtype), ...]) or (exception type name, message)."""
    try:
        out = fn()
    except (ValueError, TypeError, RuntimeError) as exc:
        return type(exc).__name__, str(exc)
    return "ok", [(tuple(t.shape), t.dtype) for t in _flat(out)]


def _run(op, backend, args):
    with leankern.use_backend(backend):
        return _call(op, args)


def _run_fake(op, backend, args):
    """The op under FakeTensorMode as traced when ``backend`` is the one that will run.

    Not inside ``use_backend``: torch runs user dispatch modes before FakeTensorMode, so the
    forced backend would run on the fake tensors; the fake asks ``backend_for``, patched here.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "forced_backend", lambda: backend)
        assert leankern.backend_for(op, "cpu") == backend
        with FakeTensorMode() as mode:
            fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
            out = _call(op, fake_args)
    for t in _flat(out):
        assert isinstance(t, torch._subclasses.fake_tensor.FakeTensor)
    return out


@pytest.mark.parametrize("op, backend, size, dtype", ACCEPT)
def test_allowed_value_or_dtype_runs(op, backend, size, dtype):
    args = op_args(op, size, dtype)
    got = _flat(_run(op, backend, args))
    if backend != "ref":  # and matches the reference (bit for bit, mx_linear within its error bound)
        assert_matches_reference(op, args, got, _run(op, "ref", args))
    assert _outcome(lambda: _run_fake(op, backend, args)) == ("ok", [(tuple(t.shape), t.dtype) for t in got])


@pytest.mark.parametrize("op, backend, arg, lohi, value", REJECT_VALUE)
def test_value_outside_the_range_is_rejected(op, backend, arg, lohi, value):
    args = op_args(op, max(value, 1))
    want = f"{arg}: expected a power of two in [{lohi[0]}, {lohi[1]}], got {value}"
    with pytest.raises(ValueError, match=re.escape(want)):
        _run(op, backend, args)
    assert _outcome(lambda: _run_fake(op, backend, args)) == ("ValueError", want)


@pytest.mark.parametrize("op, backend", REJECT_DTYPE)
def test_dtype_outside_the_row_is_rejected(op, backend):
    args = with_dtype(op, op_args(op), REJECTED_DTYPE)
    name = "out_dtype" if op == "mx_dequantize" else "x"
    with pytest.raises(TypeError, match=rf"^{name}: expected .*got torch\.float64$") as info:
        _run(op, backend, args)
    assert _outcome(lambda: _run_fake(op, backend, args)) == ("TypeError", str(info.value))


@pytest.mark.parametrize("op", sorted(CAPABILITIES))
def test_default_path_and_its_fake_agree(op):
    """Without use_backend (what torch.compile sees): the fake checks with the CPU default's row."""
    default = leankern.backend_for(op, "cpu")
    (lo, hi), = CAPABILITIES[op][default].limits.values()
    for size in (lo // 2, lo, hi, hi * 2):
        args = op_args(op, max(size, 1))
        eager = _outcome(lambda: _call(op, args))

        def fake():
            with FakeTensorMode() as mode:
                return _call(op, tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))

        assert _outcome(fake) == eager, (op, default, size)


@needs_ext
def test_cpp_kernel_limits_equal_the_table():
    got = {op: {arg: tuple(v) for arg, v in lim.items()} for op, lim in leankern.extension().kernel_limits().items()}
    want = {op: dict(rows["cpp"].limits) for op, rows in CAPABILITIES.items() if "cpp" in rows}
    assert got == want


def test_every_registered_op_is_in_its_family_table():
    from leankern.specdec.ops import CAPABILITIES as SPECDEC
    from leankern.sefp.ops import CAPABILITIES as SEFP
    from leankern.vocab.ops import CAPABILITIES as VOCAB
    from leankern.moe.ops import CAPABILITIES as MOE

    tables = {**CAPABILITIES, **SPECDEC, **VOCAB, **SEFP, **MOE}
    for name, spec in leankern.registered_ops().items():
        assert spec.capabilities is tables[name], f"{name} is in no family's CAPABILITIES"
        assert "ref" in spec.capabilities


@pytest.mark.parametrize("device", DEVICES)
def test_triton_hadamard_rejects_16384_at_the_op_boundary(device, monkeypatch):
    if "triton" not in available_backends(device):
        pytest.skip(f"triton cannot run {device} tensors here")
    (lo, hi), = CAPABILITIES["hadamard_transform"]["triton"].limits.values()
    assert hi == 8192
    spec = leankern.registered_ops()["hadamard_transform"]

    def launcher_reached(*args):
        raise AssertionError("the Triton launcher ran: the op boundary did not check chunk_size")

    monkeypatch.setattr(spec, "triton", launcher_reached)
    x = torch.randn(1, 16384, device=device)
    want = "chunk_size: expected a power of two in [2, 8192], got 16384"
    with pytest.raises(ValueError, match=re.escape(want)), leankern.use_backend("triton"):
        torch.ops.leankern.hadamard_transform(x, 16384, 1.0 / 128, None)
    if device == "cuda" and leankern.backend_for("hadamard_transform", "cuda") == "triton":
        with pytest.raises(ValueError, match=re.escape(want)):  # the default CUDA path too
            torch.ops.leankern.hadamard_transform(x, 16384, 1.0 / 128, None)
    # the same chunk is fine for the reference (its row allows 32768)
    with leankern.use_backend("ref"):
        assert torch.ops.leankern.hadamard_transform(x[:, :16384].cpu(), 16384, 1.0 / 128, None).shape == (1, 16384)
