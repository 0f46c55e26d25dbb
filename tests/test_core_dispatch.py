"""How a ``torch.ops.leankern`` call travels (leankern.core): dispatcher -> C++ on CPU, forced
backends, the once-only fallback warning, the ISA variable, opcheck and torch.compile per op."""
import json
import threading

import pytest
import torch

import leankern
from leankern import core
from conftest import HAS_EXT, assert_matches_reference, available_backends, needs_ext, needs_triton, op_args, run_python

OPS = sorted(leankern.registered_ops())


def _spec(name):
    return leankern.registered_ops()[name]


def _call(name, args):
    return getattr(torch.ops.leankern, name)(*args)


def _raise(*args, **kwargs):
    raise AssertionError("a Python path (reference / Triton launcher / Python check) ran")


@pytest.fixture
def counts(monkeypatch):
    """Wrap every op's reference and Triton launcher with counters: ``counts[(backend, op)]`` lists
    the ids of the threads that ran it."""
    seen = {}
    for name, spec in leankern.registered_ops().items():
        for attr in ("ref", "triton"):
            fn = getattr(spec, attr)
            if fn is None:
                continue

            def wrapped(*args, _fn=fn, _key=(attr, name)):
                seen.setdefault(_key, []).append(threading.get_ident())
                return _fn(*args)

            monkeypatch.setattr(spec, attr, wrapped)
    return seen


def _n(counts, backend, op):
    return len(counts.get((backend, op), []))


# ------------------------------------------------------------------------- (a) CPU goes to C++
def test_backend_for_matches_the_dispatch_table():
    for name in OPS:
        has_cpu = torch._C._dispatch_has_kernel_for_dispatch_key(_spec(name).qualname, "CPU")
        assert has_cpu == HAS_EXT, (name, has_cpu, leankern.extension_error())
        assert leankern.backend_for(name, "cpu") == ("cpp" if HAS_EXT else "ref")
        assert leankern.backend_for(name, torch.device("cpu")) == leankern.backend_for(name, "cpu")
        # the reference is the catch-all kernel, never the CPU one
        assert torch._C._dispatch_has_kernel_for_dispatch_key(_spec(name).qualname, "CompositeExplicitAutograd")


@needs_ext
@pytest.mark.parametrize("name", OPS)
def test_cpu_call_reaches_cpp_without_python(name, monkeypatch):
    spec = _spec(name)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(spec.qualname, "CPU")
    assert leankern.backend_for(name, "cpu") == "cpp"
    cpu_lines = [ln for ln in torch._C._dispatch_dump(spec.qualname).splitlines() if ln.startswith("CPU:")]
    assert cpu_lines and ".py" not in cpu_lines[0], cpu_lines  # registered from C++, not a Python impl
    args = op_args(name, 64)
    want = _call(name, args)
    for attr in ("ref", "triton", "check"):
        monkeypatch.setattr(spec, attr, _raise)
    for fn in ("mx_quantize_ref", "mx_dequantize_ref", "hadamard_transform_ref"):
        monkeypatch.setattr(leankern.mx.ref, fn, _raise)
    got = _call(name, args)  # would raise if any Python path of the op ran
    monkeypatch.undo()  # the comparison itself uses the reference
    assert_matches_reference(name, args, got, want)


def test_patched_reference_is_detected(monkeypatch):
    """The patches of the test above do catch a Python path (here the forced reference)."""
    monkeypatch.setattr(leankern.mx.ref, "mx_quantize_ref", _raise)
    with pytest.raises(AssertionError, match="Python path"), leankern.use_backend("ref"):
        _call("mx_quantize", op_args("mx_quantize"))
    if not HAS_EXT:  # no C++ kernel: the default CPU path is the (patched) reference
        with pytest.raises(AssertionError, match="Python path"):
            _call("mx_quantize", op_args("mx_quantize"))


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


# ------------------------------------------------------------------------ (b) use_backend routes
@pytest.mark.parametrize("name", OPS)
def test_use_backend_ref_routes_to_the_reference(name, counts):
    args = op_args(name)
    default = leankern.backend_for(name, "cpu")
    _call(name, args)
    assert _n(counts, "ref", name) == (1 if default == "ref" else 0)
    before = _n(counts, "ref", name)
    with leankern.use_backend("ref"):
        assert leankern.backend_for(name, "cpu") == "ref"
        assert core.forced_backend() == "ref"
        _call(name, args)
    assert _n(counts, "ref", name) == before + 1
    assert core.forced_backend() is None
    _call(name, args)  # outside again: the default path
    assert _n(counts, "ref", name) == before + 1 + (default == "ref")
    assert _n(counts, "triton", name) == 0


@needs_triton
@pytest.mark.parametrize("name", OPS)
def test_use_backend_triton_routes_to_the_launcher(name, counts):
    args = op_args(name)
    if _spec(name).triton is None:
        assert "triton" not in _spec(name).capabilities, "a capability row promises a Triton kernel that is missing"
        with leankern.use_backend("triton"), pytest.raises(RuntimeError, match="has no Triton kernel"):
            _call(name, args)
        return
    with leankern.use_backend("triton"):
        got = _call(name, args)
    assert _n(counts, "triton", name) == 1 and _n(counts, "ref", name) == 0
    with leankern.use_backend("ref"):
        want = _call(name, args)
    assert_matches_reference(name, args, got, want)


@needs_ext
@pytest.mark.parametrize("name", OPS)
def test_use_backend_cpp_runs_no_python_path(name, counts):
    args = op_args(name)
    with leankern.use_backend("cpp"):
        got = _call(name, args)
    assert counts == {}
    with leankern.use_backend("ref"):
        want = _call(name, args)
    assert_matches_reference(name, args, got, want)


def _other_backend():
    """A backend other than "ref" that runs CPU tensors here (cpp first), or None."""
    if HAS_EXT:
        return "cpp"
    if core.triton_available() and core.triton_interpreting():
        return "triton"
    return None


@pytest.mark.parametrize("outer_is_ref", [True, False], ids=["ref-outside", "ref-inside"])
def test_nested_use_backend_restores_the_outer_one(outer_is_ref, counts):
    other = _other_backend()
    if other is None:
        pytest.skip("needs a second CPU backend (cpp, or triton under TRITON_INTERPRET=1)")
    outer, inner = ("ref", other) if outer_is_ref else (other, "ref")
    name, args = "hadamard_transform", op_args("hadamard_transform")

    def ran():
        return {be: _n(counts, be, name) for be in ("ref", "triton")}

    def call_and_route():
        before = ran()
        _call(name, args)
        after = ran()
        routed = [be for be in after if after[be] > before[be]]
        return routed[0] if routed else "cpp"

    with leankern.use_backend(outer):
        assert call_and_route() == outer
        with leankern.use_backend(inner):
            assert core.forced_backend() == inner
            assert call_and_route() == inner, f"use_backend({inner!r}) inside use_backend({outer!r})"
        assert core.forced_backend() == outer
        assert call_and_route() == outer
    assert core.forced_backend() is None


@pytest.mark.parametrize("backend", ["ref", "cpp", "triton"])
def test_use_backend_leaves_fake_tensors_to_the_fake(backend, counts):
    """Tracing inside use_backend (torch.export, FakeTensorMode): torch runs user modes before the
    fake mode, so the forced backend must hand fake tensors on to the op's fake (which checks with
    the forced backend's row), not run the reference or a Triton launcher on them."""
    if backend not in available_backends("cpu"):
        pytest.skip(f"backend {backend!r} cannot run CPU tensors here")
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    args = op_args("hadamard_transform", 64)
    with leankern.use_backend(backend), FakeTensorMode() as mode:
        out = torch.ops.leankern.hadamard_transform(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                                      for a in args))
    assert isinstance(out, FakeTensor) and out.shape == (1, 64)
    assert counts == {}, f"use_backend({backend!r}) ran {sorted(counts)} on fake tensors"


def test_use_backend_restores_after_an_exception():
    with pytest.raises(ValueError), leankern.use_backend("ref"):
        _call("hadamard_transform", op_args("hadamard_transform", 32)[:1] + (3, 1.0, None))
    assert core.forced_backend() is None
    assert torch._C._len_torch_dispatch_stack() == 0


def test_other_ops_inside_use_backend_are_untouched(counts):
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    want = (a @ b + 1).softmax(-1)
    with leankern.use_backend("ref"):
        got = (a @ b + 1).softmax(-1)
        c = torch.empty(3).fill_(2.0)
    assert torch.equal(got, want) and torch.equal(c, torch.full((3,), 2.0))
    assert counts == {}


def test_use_backend_is_thread_local(counts):
    """A backend forced in one thread is invisible to another running at the same time."""
    name, args = "mx_quantize", op_args("mx_quantize")
    default = leankern.backend_for(name, "cpu")
    forced = "ref" if default != "ref" else _other_backend()
    if forced is None:
        pytest.skip("needs a second CPU backend (cpp, or triton under TRITON_INTERPRET=1)")
    seen = {}

    def other_thread():
        try:
            seen["forced"] = core.forced_backend()
            seen["backend_for"] = leankern.backend_for(name, "cpu")
            _call(name, args)
            seen["ident"] = threading.get_ident()
        except BaseException as exc:  # noqa: BLE001 (reported below)
            seen["error"] = exc

    with leankern.use_backend(forced):
        t = threading.Thread(target=other_thread)
        t.start()
        t.join(timeout=120)
        _call(name, args)  # this thread: still forced
    assert "error" not in seen, seen.get("error")
    assert seen["forced"] is None and seen["backend_for"] == default
    tid, main = seen["ident"], threading.get_ident()
    if forced != "cpp":
        assert counts.get((forced, name), []) == [main]
    if default != "cpp":
        assert counts.get((default, name), []) == [tid]
    else:
        assert tid not in counts.get(("ref", name), []) + counts.get(("triton", name), [])


# ------------------------------------------------------------- (c) a forced backend that cannot run
def test_forced_cuda_on_cpu_tensors_is_an_error():
    with pytest.raises(RuntimeError, match=r"backend 'cuda'.*cpu"), leankern.use_backend("cuda"):
        _call("mx_quantize", op_args("mx_quantize"))


@pytest.mark.skipif(HAS_EXT, reason="the C++ extension is loaded")
def test_forced_cpp_without_extension_is_an_error():
    with pytest.raises(RuntimeError, match=r"backend 'cpp'.*not available"), leankern.use_backend("cpp"):
        _call("mx_quantize", op_args("mx_quantize"))


@pytest.mark.skipif(not core.triton_available(), reason="triton is not installed")
def test_forced_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match=r"backend 'triton'.*TRITON_INTERPRET=1"), leankern.use_backend("triton"):
        _call("hadamard_transform", op_args("hadamard_transform"))


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match=r"backend: expected one of .*'cpp'.*got 'gpu'"):
        leankern.use_backend("gpu")


# ------------------------------------------------------------------- (d) the fallback warning
_WARN_SCRIPT = r"""
import json, sys, warnings
{prelude}
import torch, leankern
x = torch.randn(2, 64)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    torch.ops.leankern.mx_quantize(x, "mxint8", 32, "rceil", None, None, False)
    torch.ops.leankern.mx_quantize(x, "mxint8", 32, "rceil", None, None, False)
    torch.ops.leankern.hadamard_transform(x, 64, 0.125, None)
    leankern.mx.dequantize(leankern.mx.quantize(x, "mxfp4"))
print(json.dumps({{"err": leankern.extension_error(), "warnings": [
    {{"cat": w.category.__name__, "msg": str(w.message), "file": w.filename}} for w in caught]}}))
"""


def _warnings(prelude, env=None, drop=()):
    out = run_python(_WARN_SCRIPT.format(prelude=prelude), env=env, drop=drop)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fallback_warns_once_when_the_extension_does_not_load():
    res = _warnings('sys.modules["leankern._C"] = None  # as if the .so failed to import',
                    drop=("LEANKERN_DISABLE_EXT",))
    assert res["err"] and "halted" in res["err"], res["err"]
    runtime = [w for w in res["warnings"] if w["cat"] == "RuntimeWarning"]
    assert len(runtime) == 1, runtime
    msg = runtime[0]["msg"]
    assert "reference" in msg and "did not load" in msg, msg
    assert "make build" in msg and "pip install" in msg, msg
    assert runtime[0]["file"] == "<string>", "the warning should point at the caller's line"


def test_no_warning_when_the_extension_is_disabled_on_purpose():
    res = _warnings("", env={"LEANKERN_DISABLE_EXT": "1"})
    assert res["err"] == "disabled by LEANKERN_DISABLE_EXT=1"
    assert res["warnings"] == []


def test_cuda_kernel_without_triton_warns_once():
    """The CUDA-key kernel when triton is missing: reference + one warning with the fix. (Called
    directly with CPU tensors: the same function torch runs for CUDA tensors.)"""
    code = r"""
import json, sys, warnings
sys.modules["triton"] = None
import torch, leankern
from leankern import core
spec = leankern.registered_ops()["hadamard_transform"]
kernel = core._triton_kernel(spec)
x = torch.randn(2, 64)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y = [kernel(x, 64, 0.125, None) for _ in range(3)]
with leankern.use_backend("ref"):
    assert torch.equal(y[0], torch.ops.leankern.hadamard_transform(x, 64, 0.125, None))
print(json.dumps([(w.category.__name__, str(w.message)) for w in caught]))
"""
    out = run_python(code, env={"LEANKERN_DISABLE_EXT": "1"})
    assert out.returncode == 0, out.stderr
    caught = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(caught) == 1 and caught[0][0] == "RuntimeWarning", caught
    assert "reference" in caught[0][1] and "triton is not installed" in caught[0][1]
    assert "pip install triton" in caught[0][1]


# --------------------------------------------------------------------- (e) LEANKERN_CPU_ISA
def _extension_is_built() -> bool:
    probe = "import leankern._C as m; print(m.requested_isa_error())"
    return run_python(probe, env={"LEANKERN_DISABLE_EXT": "1"}, drop=("LEANKERN_CPU_ISA",)).returncode == 0


def test_unknown_cpu_isa_is_an_import_error():
    if not _extension_is_built():
        pytest.skip("leankern._C (with requested_isa_error) is not built")
    code = ("try:\n    import leankern\nexcept ValueError as exc:\n    print('ValueError:', exc)\n"
            "else:\n    print('imported')")
    out = run_python(code, env={"LEANKERN_CPU_ISA": "bogus"}, drop=("LEANKERN_DISABLE_EXT",))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ValueError:") and "LEANKERN_CPU_ISA" in out.stdout, out.stdout
    assert "bogus" in out.stdout, out.stdout


def test_leankern_amx_0_turns_the_amx_kernels_off():
    """LEANKERN_AMX=0 at load time: amx_enabled() is False even where the CPU has AMX; unset, it follows the CPU."""
    if not _extension_is_built():
        pytest.skip("leankern._C is not built")
    code = "import leankern\nm = leankern._C\nprint(m.amx_supported(), m.amx_enabled())"
    off = run_python(code, env={"LEANKERN_AMX": "0"}, drop=("LEANKERN_DISABLE_EXT", "LEANKERN_CPU_ISA"))
    on = run_python(code, drop=("LEANKERN_DISABLE_EXT", "LEANKERN_CPU_ISA", "LEANKERN_AMX"))
    assert off.returncode == 0 and on.returncode == 0, off.stderr + on.stderr
    supported = on.stdout.split()[0]
    assert off.stdout.split() == [supported, "False"]
    assert on.stdout.split() == [supported, supported]


# ------------------------------------------------------------ (f) opcheck and torch.compile per op
def test_every_registered_op_has_samples():
    for name in OPS:
        op_args(name)  # raises KeyError naming the op when tests/conftest.py lacks it


@pytest.mark.parametrize("name", OPS)
def test_opcheck(name):
    op = getattr(torch.ops.leankern, name).default
    torch.library.opcheck(op, op_args(name, 32, rows=3))
    torch.library.opcheck(op, op_args(name, 64, torch.bfloat16, rows=2, seed=1))


@pytest.mark.parametrize("name", OPS)
def test_torch_compile_fullgraph(name):
    op = getattr(torch.ops.leankern, name)
    args = op_args(name, 64, rows=4)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: op(*a), fullgraph=True)
    got, want = compiled(*args), op(*args)
    for g, w in zip(_flat(got), _flat(want)):
        assert g.dtype == w.dtype and torch.equal(g, w)


# ------------------------------------------------------------------------------- autograd
@pytest.mark.parametrize("name", OPS)
def test_every_op_has_an_autograd_kernel(name):
    # without one torch's default runs: a backward through the op warns and leaves None gradients
    # (C++ build: torch's autogradNotImplementedFallback; without leankern._C: a Python kernel that raises alike)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(_spec(name).qualname, "Autograd")


def test_backward_through_a_raw_op_raises_instead_of_returning_no_gradient():
    h = torch.randn(2, 16, requires_grad=True)
    w = torch.randn(50, 16)
    ids = torch.tensor([1, 3, 5], dtype=torch.int32)
    z = torch.ops.leankern.vocab_gather_lm_head(h, w, ids, None, None, 1.0, torch.float32, False)
    assert z.requires_grad  # the forward runs as usual
    with pytest.raises(RuntimeError, match="derivative for leankern::vocab_gather_lm_head is not implemented"):
        z.sum().backward()
    assert h.grad is None
    with torch.no_grad():
        assert not torch.ops.leankern.vocab_gather_lm_head(h, w, ids, None, None, 1.0, torch.float32, False).requires_grad


# ------------------------------------------------------- (g) one use_backend object entered again
def test_one_use_backend_object_nested_reuse_restores_everything():
    """A module-level ``REF = use_backend("ref")`` entered inside itself: each exit restores its own entry."""
    other = _other_backend()
    ref = leankern.use_backend("ref")
    with ref:
        with ref:
            assert core.forced_backend() == "ref"
        assert core.forced_backend() == "ref" and torch._C._len_torch_dispatch_stack() == 1
        if other is not None:  # and inside another backend, inside itself again
            with leankern.use_backend(other):
                with ref:
                    assert core.forced_backend() == "ref"
                assert core.forced_backend() == other
            assert core.forced_backend() == "ref"
    assert core.forced_backend() is None
    assert torch._C._len_torch_dispatch_stack() == 0
    with ref:  # still usable afterwards
        assert leankern.backend_for("hadamard_transform", "cpu") == "ref"
    assert core.forced_backend() is None and torch._C._len_torch_dispatch_stack() == 0


def test_one_use_backend_object_shared_by_two_threads(counts):
    """Two threads inside the same object at once (their entries overlap, the first exits first): both
    route to it, and each leaves its thread unforced with no mode left on its stack."""
    ref = leankern.use_backend("ref")
    name, args = "hadamard_transform", op_args("hadamard_transform")
    inside, first_out = threading.Barrier(2), threading.Event()
    seen = {}

    def worker(tag, exits_first):
        try:
            with ref:
                inside.wait(timeout=60)
                _call(name, args)
                if exits_first:
                    pass  # leave while the other thread is still inside
                else:
                    first_out.wait(timeout=60)
                    assert core.forced_backend() == "ref"
            if exits_first:
                first_out.set()
            seen[tag] = (core.forced_backend(), torch._C._len_torch_dispatch_stack(), threading.get_ident())
        except BaseException as exc:  # noqa: BLE001 (reported below)
            first_out.set()
            seen[tag] = exc

    threads = [threading.Thread(target=worker, args=("A", True)), threading.Thread(target=worker, args=("B", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for tag in "AB":
        assert not isinstance(seen[tag], BaseException), (tag, seen[tag])
        assert seen[tag][:2] == (None, 0), (tag, seen[tag])
    assert sorted(counts.get(("ref", name), [])) == sorted([seen["A"][2], seen["B"][2]])
    assert core.forced_backend() is None and torch._C._len_torch_dispatch_stack() == 0


def test_use_backend_exit_without_enter_is_an_error():
    ref = leankern.use_backend("ref")
    with pytest.raises(RuntimeError, match="without a matching __enter__"):
        ref.__exit__(None, None, None)
    assert core.forced_backend() is None


# --------------------------------------------------- (h) backend_for under a forced backend
def test_backend_for_under_a_forced_backend_is_what_runs():
    """Inside use_backend, backend_for names the forced backend only where it can run: elsewhere it raises
    the RuntimeError the call itself raises."""
    with leankern.use_backend("ref"):
        for name in OPS:
            assert leankern.backend_for(name, "cpu") == "ref"
            assert leankern.backend_for(name, "cuda") == "ref"
    with leankern.use_backend("cuda"):
        with pytest.raises(RuntimeError, match=r"backend 'cuda' runs cuda tensors; got a tensor on cpu"):
            leankern.backend_for("mx_quantize", "cpu")
        with pytest.raises(RuntimeError, match=r"backend 'cuda' runs cuda tensors; got a tensor on cpu"):
            _call("mx_quantize", op_args("mx_quantize"))
    with leankern.use_backend("cpp"):
        with pytest.raises(RuntimeError, match=r"backend 'cpp' runs cpu tensors; got a tensor on cuda"):
            leankern.backend_for("mx_quantize", "cuda")
        if HAS_EXT:
            assert leankern.backend_for("mx_quantize", "cpu") == "cpp"
        else:
            with pytest.raises(RuntimeError, match=r"backend 'cpp'.*not available"):
                leankern.backend_for("mx_quantize", "cpu")


def test_backend_for_forced_triton_without_a_triton_kernel_raises():
    no_triton = [name for name in OPS if _spec(name).triton is None]
    assert no_triton, "every op has a Triton kernel now: pick another case"
    name = no_triton[0]
    with leankern.use_backend("triton"), pytest.raises(RuntimeError, match=rf"{name} has no Triton kernel"):
        leankern.backend_for(name, "cpu")
    if core.triton_available() and core.triton_interpreting():
        with leankern.use_backend("triton"):
            assert leankern.backend_for("hadamard_transform", "cpu") == "triton"


# ------------------------------------------------ (i) autograd without the extension (Python kernel)
_NOEXT_GRAD_SCRIPT = r"""
import json, warnings
import torch, leankern
from leankern import mx, sefp
# an op without an Autograd kernel: torch warns (deprecated fallback), then backprops through the kernel
warnings.filterwarnings("error", message=".*autograd kernel was not registered.*")
assert leankern.extension() is None
res = {"autograd": [n for n, s in leankern.registered_ops().items()
                    if not torch._C._dispatch_has_kernel_for_dispatch_key(s.qualname, "Autograd")]}
g = torch.Generator().manual_seed(0)
codes = torch.randint(-127, 128, (3, 32), dtype=torch.int8, generator=g)
scales = torch.full((3, 1), 120, dtype=torch.uint8)
raw = lambda x: torch.ops.leankern.mx_linear(x, codes, scales, torch.ones(()), "mxint8", 32, None, None)
def backward_error(fn, x):
    try:
        fn(x).sum().backward()
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    return None if x.grad is None else "gradient"
x = torch.randn(2, 32, requires_grad=True)
res["eager"] = backward_error(raw, x)
res["eager_grad"] = x.grad is not None
res["forward_requires_grad"] = raw(x).requires_grad
with torch.no_grad():
    res["no_grad_requires_grad"] = raw(x).requires_grad
torch._dynamo.reset()
res["compiled"] = backward_error(torch.compile(raw, backend="aot_eager"), torch.randn(2, 32, requires_grad=True))
# the front-ends with a documented backward still have it
w = torch.randn(3, 32, generator=g)
x = torch.randn(2, 32, requires_grad=True)
b = torch.zeros(3, requires_grad=True)
mx.linear(x, mx.quantize(w, "mxint8"), b).sum().backward()
want = mx.dequantize(mx.quantize(w, "mxint8")).float().sum(0).expand(2, -1)
res["mx_linear"] = bool(torch.allclose(x.grad, want, atol=1e-5)) and torch.equal(b.grad, torch.full((3,), 2.0))
x.grad = None
wq = sefp.quantize(w, m_max=8)
sefp.linear(x, wq, m=4).sum().backward()
res["sefp_linear"] = bool(torch.allclose(x.grad, sefp.dequantize(wq, 4).float().sum(0).expand(2, -1), atol=1e-5))
wt = w.clone().requires_grad_()
sefp.sefp_fake_quant(wt, 4).sum().backward()
res["fake_quant"] = torch.equal(wt.grad, torch.ones_like(w))
wt.grad = None
torch._dynamo.reset()
torch.compile(sefp.sefp_fake_quant, backend="aot_eager", fullgraph=True)(wt, 4).sum().backward()
res["fake_quant_compiled"] = torch.equal(wt.grad, torch.ones_like(w))
print(json.dumps(res))
"""


def test_raw_op_backward_raises_without_the_extension():
    """LEANKERN_DISABLE_EXT=1: every op still has an Autograd kernel (registered from Python), so a backward
    through a raw op raises "derivative ... is not implemented" as with the C++ build (not the reference's
    gradients in eager mode and None under torch.compile), while the front-ends keep their gradients."""
    out = run_python(_NOEXT_GRAD_SCRIPT, env={"LEANKERN_DISABLE_EXT": "1"}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["autograd"] == []
    kind, msg = res["eager"]
    assert kind == "NotImplementedError", res["eager"]
    assert "derivative for leankern::mx_linear is not implemented" in msg and "leankern.mx.linear" in msg, msg
    assert not res["eager_grad"]
    assert res["forward_requires_grad"] and not res["no_grad_requires_grad"]
    assert res["compiled"] is not None and res["compiled"] != "gradient", res["compiled"]
    assert "derivative for leankern::mx_linear is not implemented" in res["compiled"][1], res["compiled"]
    assert res["mx_linear"] and res["sefp_linear"] and res["fake_quant"] and res["fake_quant_compiled"], res
