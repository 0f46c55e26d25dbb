"""Pick the backend for one call: forced by ``use_backend``, else the best one for the device."""
from __future__ import annotations

import importlib

import torch

from .._backend import extension, forced_backend, triton_available, triton_interpreting


def pick_backend(device: torch.device) -> str:
    forced = forced_backend()
    if forced is not None:
        return forced
    if device.type == "cpu":
        return "cpp" if extension() is not None else "ref"
    if device.type == "cuda":
        return "triton" if triton_available() else "ref"
    return "ref"


def cpp_op(name: str):
    """``torch.ops.leankern.<name>_cpp`` (C++ CPU kernels, or CUDA kernels when built)."""
    if extension() is None:
        from .._backend import extension_error

        raise RuntimeError(f"backend 'cpp': the leankern._C extension is not available ({extension_error()})")
    return getattr(torch.ops.leankern, f"{name}_cpp")


def triton_fn(module: str, name: str, device: torch.device):
    if not triton_available():
        raise RuntimeError("backend 'triton': triton is not installed (pip install triton)")
    if device.type == "cpu" and not triton_interpreting():
        raise RuntimeError("backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before importing leankern")
    mod = importlib.import_module(f"leankern.triton_kernels.{module}")
    return getattr(mod, f"{name}_triton")


def run(family: str, name: str, device: torch.device, ref_fn, *args):
    """Run op ``name`` of ``family`` on the picked backend with the shared kernel signature."""
    backend = pick_backend(device)
    if backend == "ref":
        return ref_fn(*args)
    if backend in ("cpp", "cuda"):
        want = "cpu" if backend == "cpp" else "cuda"
        if device.type != want:
            raise RuntimeError(f"backend {backend!r} runs {want} tensors; got a tensor on {device}")
        return cpp_op(name)(*args)
    if backend == "triton":
        return triton_fn(family, name, device)(*args)
    raise RuntimeError(f"unknown backend {backend!r}")
