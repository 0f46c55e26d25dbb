"""The scripts in examples/ run as a user would run them (a fresh interpreter, the README's command line) and print
what they promise. examples/sefp_finetune.py has its own, numeric test (test_sefp_nn.py)."""
from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest

import leankern

ROOT = pathlib.Path(__file__).resolve().parents[1]
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_hf = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed")
needs_ext = pytest.mark.skipif(leankern.extension() is None, reason="leankern._C not loaded (the examples would "
                               "run the slow reference)")


def _run(script: str, *args: str, timeout: int = 600) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@needs_ext
def test_mx_tour():
    out = _run("mx_tour.py")
    assert "MXTensor(fmt=mxfp4" in out and "QSNR mxfp4" in out and "C++ == reference: True" in out


@needs_ext
@needs_hf
@pytest.mark.parametrize("args", [("mxfp4",), ("mxint4", "--rotate", "32")], ids=["mxfp4", "mxint4-rotate32"])
def test_quantize_hf_model(args):
    out = _run("quantize_hf_model.py", *args)
    assert "linear layers replaced" in out and "generated" in out


@needs_ext
@needs_hf
def test_moe_modes():
    out = _run("moe_modes.py", "--target", "0.5", "--grid", "4")
    assert "alpha (text) per MoE layer" in out and "generate with MoDES skip" in out


@needs_ext
@needs_hf
def test_vocab_tailor():
    pytest.importorskip("tokenizers")
    out = _run("vocab_tailor.py")
    assert "static vocabulary" in out and "decode step: full" in out and "MXFP4 model (head included)" in out
