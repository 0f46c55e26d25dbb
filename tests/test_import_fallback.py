"""leankern imports and works without the compiled extension and without triton (reference backend)."""
from conftest import run_python

SCRIPT = r"""
import sys, warnings
sys.modules["triton"] = None  # as if triton were not installed
import torch, leankern
from leankern.core import triton_available
assert leankern.extension() is None, "extension should be disabled"
assert not triton_available()
for name, spec in leankern.registered_ops().items():
    assert leankern.backend_for(name, "cpu") == "ref", name
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(spec.qualname, "CPU"), name
    # no triton: a CUDA tensor would run the reference too (with the warning), not a dead launcher
    assert leankern.backend_for(name, "cuda") == ("cuda" if spec.native_cuda else "ref"), name
x = torch.randn(4, 64)
with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)  # disabled on purpose: no fallback warning
    qt = leankern.mx.quantize(x, "mxfp4")
    y = leankern.mx.rotate(x, 32, seed=2)
with leankern.use_backend("ref"):
    want = leankern.mx.quantize(x, "mxfp4")
    want_y = leankern.mx.rotate(x, 32, seed=2)
assert torch.equal(qt.codes, want.codes) and torch.equal(qt.scales, want.scales)
assert torch.equal(y, want_y)
for backend, needle in (("triton", "triton is not installed"), ("cpp", "not available")):
    try:
        with leankern.use_backend(backend):
            leankern.mx.quantize(x, "mxfp4")
    except RuntimeError as exc:
        assert needle in str(exc), (backend, str(exc))
    else:
        raise AssertionError(f"use_backend({backend!r}) should have raised")
print("OK", leankern.extension_error())
"""

ENV = {"LEANKERN_DISABLE_EXT": "1"}
DROP = ("TRITON_INTERPRET",)


def test_reference_fallback_without_extension_or_triton():
    out = run_python(SCRIPT, env=ENV, drop=DROP)
    assert out.returncode == 0, out.stderr
    assert "OK disabled by LEANKERN_DISABLE_EXT=1" in out.stdout


def test_info_reports_reference_fallback():
    code = "import sys; sys.modules['triton'] = None; from leankern.cli import main; main(['info'])"
    out = run_python(code, env=ENV, drop=DROP)
    assert out.returncode == 0, out.stderr
    text = out.stdout.lower()
    assert "disabled by leankern_disable_ext=1" in text
    assert "reference" in text


def test_import_does_not_load_torch_dynamo():
    """`import leankern` leaves torch._dynamo unloaded (importing it took ~2.5 s of a 7 s import); the names that need
    it (leankern.moe.quantized_experts: torch.compiler.disable) load it on first access."""
    code = ("import sys, leankern; print('after import:', 'torch._dynamo' in sys.modules); "
            "leankern.moe.quantized_experts; print('after use:', 'torch._dynamo' in sys.modules)")
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert "after import: False" in out.stdout and "after use: True" in out.stdout, out.stdout
