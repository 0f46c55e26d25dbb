"""Shared parametrisation of the vocab op tests: every backend, and for C++ every ISA this CPU runs."""
import contextlib

import pytest
import torch

import leankern
from conftest import available_backends
from isa_cases import on_isa

OPS = torch.ops.leankern
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DT_IDS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
HAS_CPP = "cpp" in available_backends("cpu")


def _backend_params():
    """("ref", None) and ("cpp", isa) for every ISA path (isa_cases.py: "amx" = avx512bf16 with its AMX kernels on,
    "avx512bf16" with them off); on_isa skips those this machine cannot run."""
    out = [pytest.param(("ref", None), id="ref")]
    for isa in ("scalar", "avx2", "avx512", "avx512bf16", "amx"):
        marks = [] if HAS_CPP else [pytest.mark.skip(reason="leankern._C not loaded")]
        out.append(pytest.param(("cpp", isa), id=f"cpp-{isa}", marks=marks))
    return out


@pytest.fixture(params=_backend_params())
def backend(request):
    """Runs the test body with every leankern op forced onto one backend (and, for cpp, one ISA path)."""
    name, isa = request.param
    with on_isa(isa) if isa else contextlib.nullcontext(), leankern.use_backend(name):
        yield name


def _cpp_and_ref():
    return ["ref"] + [pytest.param("cpp", marks=[] if HAS_CPP else [pytest.mark.skip(reason="leankern._C not loaded")])]


def _raise_text(backend, fn, *args):
    """(exception type, message) of ``fn(*args)`` on ``backend``: the C++ and Python checks must agree."""
    with leankern.use_backend(backend):
        try:
            fn(*args)
        except (ValueError, TypeError) as e:
            return type(e), str(e)
    raise AssertionError(f"{backend}: no error")
