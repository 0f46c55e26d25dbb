"""The C++ kernels forced onto one ISA path for a test: "amx" is the avx512bf16 ISA with its AMX paths on (CPUs with
AMX only), "avx512bf16" the same ISA with them off; other names are ISAs."""
import contextlib

import pytest

import leankern

BF16_DOT_ISAS = ("amx", "avx512bf16")  # bf16 dot products (AMX tiles or vdpbf16ps): subnormal bf16 inputs count as 0


@contextlib.contextmanager
def on_isa(param: str):
    """Skip unless this CPU runs `param`; otherwise run the body on it, then back to "auto" with AMX as it was."""
    ext = leankern._C
    name = "avx512bf16" if param == "amx" else param
    if name not in ext.supported_isas():
        pytest.skip(f"this CPU does not support {name} (it has: {ext.cpu_features()})")
    if param == "amx" and not ext.amx_supported():
        pytest.skip(f"this CPU (or OS) has no AMX (features: {ext.cpu_features()})")
    ext.set_cpu_isa(name)
    was = ext.set_amx(param == "amx")
    try:
        yield param
    finally:
        ext.set_cpu_isa("auto")
        ext.set_amx(was)
