"""leankern imports and works without the compiled extension and without triton (reference backend)."""
import os
import subprocess
import sys

SCRIPT = r"""
import sys
sys.modules["triton"] = None  # as if triton were not installed
import torch, leankern
from leankern._backend import triton_available
from leankern.ops._dispatch import pick_backend
assert leankern.extension() is None, "extension should be disabled"
assert not triton_available()
assert pick_backend(torch.device("cpu")) == "ref"
x = torch.randn(4, 64)
qt = leankern.mx.quantize(x, "mxfp4")
with leankern.use_backend("ref"):
    want = leankern.mx.quantize(x, "mxfp4")
assert torch.equal(qt.codes, want.codes)
print("OK", leankern.extension_error())
"""


def _env():
    env = dict(os.environ, LEANKERN_DISABLE_EXT="1")
    env.pop("TRITON_INTERPRET", None)
    return env


def test_reference_fallback_without_extension_or_triton():
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OK disabled by LEANKERN_DISABLE_EXT=1" in out.stdout


def test_info_reports_reference_fallback():
    code = "import sys; sys.modules['triton'] = None; from leankern.cli import main; main(['info'])"
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout.lower()
    assert "disabled by leankern_disable_ext=1" in text
    assert "reference" in text
