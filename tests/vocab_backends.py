"""Shared parametrisation of the vocab op tests: every backend, and for C++ every ISA this CPU runs."""
import pytest
import torch

import leankern
from conftest import available_backends

OPS = torch.ops.leankern
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DT_IDS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
HAS_CPP = "cpp" in available_backends("cpu")


def _backend_params():
    """("ref", None) and ("cpp", isa) for every ISA; those this machine cannot run carry a skip mark."""
    out = [pytest.param(("ref", None), id="ref")]
    have = leankern.extension().supported_isas() if HAS_CPP else []
    for isa in ("scalar", "avx2", "avx512", "avx512bf16"):
        why = "leankern._C not loaded" if not HAS_CPP else f"this CPU lacks {isa} (it has {have})"
        marks = [] if isa in have else [pytest.mark.skip(reason=why)]
        out.append(pytest.param(("cpp", isa), id=f"cpp-{isa}", marks=marks))
    return out


@pytest.fixture(params=_backend_params())
def backend(request):
    """Runs the test body with every leankern op forced onto one backend (and, for cpp, one ISA)."""
    name, isa = request.param
    if isa:
        leankern.extension().set_cpu_isa(isa)
    try:
        with leankern.use_backend(name):
            yield name
    finally:
        if isa:
            leankern.extension().set_cpu_isa("auto")


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
