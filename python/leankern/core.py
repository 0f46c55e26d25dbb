"""Backend selection: which implementation an op runs, and a way to force one.

Backends: ``"ref"`` (pure PyTorch, always there), ``"cpp"`` (the compiled ``leankern._C``
extension, CPU tensors), ``"triton"`` (GPU tensors; CPU tensors only under
``TRITON_INTERPRET=1``), ``"cuda"`` (hand-written CUDA kernels in ``leankern._C``, when built).
Production calls never need to choose; tests and benches use :func:`use_backend`.
``LEANKERN_DISABLE_EXT=1`` makes the process behave as if the extension were not built.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading

__all__ = ["use_backend", "forced_backend", "extension", "extension_error", "triton_available", "BACKENDS"]

BACKENDS = ("ref", "cpp", "triton", "cuda")
_state = threading.local()
_ext_cache: dict = {}


@contextlib.contextmanager
def use_backend(name: str):
    """Force every leankern op called inside the block onto one backend.

    >>> with leankern.use_backend("ref"):
    ...     qt = leankern.mx.quantize(x, "mxfp4")

    An op whose forced backend cannot run the given input raises ``RuntimeError`` naming both.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    prev = getattr(_state, "forced", None)
    _state.forced = name
    try:
        yield
    finally:
        _state.forced = prev


def forced_backend() -> str | None:
    return getattr(_state, "forced", None)


def _load_extension():
    if "mod" not in _ext_cache:
        if os.environ.get("LEANKERN_DISABLE_EXT") == "1":  # run as if the extension were not built
            _ext_cache.update(mod=None, err="disabled by LEANKERN_DISABLE_EXT=1")
            return None
        try:
            import torch  # noqa: F401  (the extension links against libtorch)

            _ext_cache["mod"] = importlib.import_module("leankern._C")
            _ext_cache["err"] = None
        except Exception as exc:  # ImportError, or an ABI mismatch (OSError / undefined symbol)
            _ext_cache["mod"] = None
            _ext_cache["err"] = f"{type(exc).__name__}: {exc}"
    return _ext_cache["mod"]


def extension():
    """The compiled ``leankern._C`` module, or None if it is not built / fails to load."""
    return _load_extension()


def extension_error() -> str | None:
    _load_extension()
    return _ext_cache["err"]


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
