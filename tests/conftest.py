"""Shared test setup: Triton interpreter mode, hypothesis profile, devices and backends.

TRITON_INTERPRET must be set before anything imports triton, so it is decided here, first.
"""
import os

import torch

if not torch.cuda.is_available():
    # No GPU: Triton kernels run their numerics on CPU tensors under the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import leankern  # noqa: E402
from leankern._backend import extension, triton_available  # noqa: E402

settings.register_profile(
    "leankern",
    max_examples=40,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),  # CI: reproducible draws
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
settings.load_profile("leankern")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def available_backends(device: str) -> list:
    """Backends that can run tensors on ``device`` in this process (ref always)."""
    out = ["ref"]
    if device == "cpu" and extension() is not None:
        out.append("cpp")
    if triton_available() and (device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        out.append("triton")
    return out


def backend_params():
    """(device, backend) pairs, with a skip mark for those that cannot run here."""
    params = []
    for dev in ("cpu", "cuda"):
        for be in ("cpp", "triton"):
            if dev == "cuda" and be == "cpp":
                continue
            ok = dev in DEVICES and be in available_backends(dev)
            reason = f"backend {be!r} on {dev} is not available here"
            marks = [] if ok else [pytest.mark.skip(reason=reason)]
            params.append(pytest.param((dev, be), id=f"{dev}-{be}", marks=marks))
    return params


@pytest.fixture(params=backend_params())
def device_backend(request):
    """A (device, backend) pair other than the reference, e.g. ("cpu", "cpp")."""
    return request.param


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
