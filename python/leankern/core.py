"""Shared machinery of every family: the extension, argument checks, capabilities, op registration.

How a call travels (docs/architecture.md has the picture):

* Each family's ``ops.py`` declares its ops once with :func:`register_op` (schema, fake,
  reference, optional Triton launcher, capability rows). Its C++ kernels register themselves on
  the ``CPU`` (and, in a CUDA build, ``CUDA``) dispatch key when ``leankern._C`` is loaded, so
  ``torch.ops.leankern.<op>`` on a CPU tensor goes straight from the torch dispatcher to C++.
* On ``CUDA`` the Triton launcher is registered where no hand-written CUDA kernel is.
* The reference is registered as ``CompositeExplicitAutograd``: it runs only where no compiled
  kernel exists for the device, and warns once when that is because something failed.
* :func:`use_backend` forces one backend for tests and benches with a ``TorchDispatchMode``: no
  cost at all for calls made outside it.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import threading
import warnings
from typing import Callable, Iterable, Optional

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "BACKENDS", "FLOAT_DTYPES", "Capability", "OpSpec", "register_op", "registered_ops", "use_backend",
    "forced_backend", "backend_for", "extension", "extension_error", "triton_available", "triton_interpreting",
    "narrow_to_int32", "check_tensor", "check_shape", "check_power_of_two", "check_choice", "check_divisible", "check_value_on_device",
]

BACKENDS = ("ref", "cpp", "triton", "cuda")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# ---------------------------------------------------------------------------------------- checks
# Every message names the argument, the expected and the actual value. The C++ kernels
# (csrc/common/torch_checks.h) produce the same text, so a test's `match=` holds on every backend.


def check_tensor(name: str, t, dtypes: Iterable[torch.dtype] | None = None, device: torch.device | None = None,
                 min_dim: int = 0, device_of: str = "x") -> None:
    """``t`` is a tensor of one of ``dtypes`` on ``device`` (that of the argument ``device_of``) with >= ``min_dim`` dims."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        if not isinstance(dtypes, (tuple, list)):  # an iterable is read twice below
            dtypes = tuple(dtypes)
        if t.dtype not in dtypes:  # (x.dtype, torch.float32) with fp32 x: each dtype listed once in the message
            raise TypeError(f"{name}: expected dtype in {[str(d) for d in dict.fromkeys(dtypes)]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of {device_of}), got {t.device}")
    if t.dim() < min_dim:
        raise ValueError(f"{name}: expected at least {min_dim} dim(s), got shape {tuple(t.shape)}")


def check_shape(name: str, t: torch.Tensor, expected: tuple) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {tuple(t.shape)}")


def check_power_of_two(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < lo or value > hi or value & (value - 1):
        raise ValueError(f"{name}: expected a power of two in [{lo}, {hi}], got {value}")


def check_choice(name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def check_divisible(name: str, size: int, divisor_name: str, divisor: int) -> None:
    if size % divisor:
        raise ValueError(
            f"{name}: expected a multiple of {divisor_name}={divisor}, got {size} "
            f"(pad the last dim to a multiple of {divisor_name}, or pick a smaller {divisor_name})"
        )


def host_values(t: torch.Tensor) -> bool:
    """Whether an error message may quote values of ``t`` (read to the host): on CPU, outside ``torch.compile``."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def check_ids_in_range(ids: torch.Tensor, lo: int, hi: int | None, expected: str) -> None:
    """Every id in ``[lo, hi)`` (``hi`` None: no upper bound), before any row they index is read: the families'
    one id check. One pass (``aminmax``); on CPU outside ``torch.compile`` a ``ValueError(f"{expected}, got min a,
    max b")``, elsewhere an assert on the device / in the graph
    (:func:`check_value_on_device`, message ``f"{expected}, got an id outside it"``)."""
    if not ids.numel() or ids.device.type == "meta":
        return
    mn, mx = ids.aminmax()
    if host_values(ids):  # two host ints: cheaper than tensor comparisons on a CPU (~1 us against ~5)
        a, b = int(mn), int(mx)
        if a < lo or (hi is not None and b >= hi):
            raise ValueError(f"{expected}, got min {a}, max {b}")
        return
    check_value_on_device(mn >= lo if hi is None else (mn >= lo) & (mx < hi), f"{expected}, got an id outside it")


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def narrow_to_int32(t, check: Callable | None = None, lo: int = INT32_MIN, hi: int = INT32_MAX):
    """int64 integers (Hugging Face's ids, counts, codes) as the ops' int32, never wrapping onto a valid value
    (``2**32 + 5`` must not read as ``5``). Anything not an int64 tensor is returned as it is (no pass, no copy).

    On CPU outside ``torch.compile``, ``check`` (the op's own value check, when the caller knows the bounds) runs
    on the int64 values first, so its message quotes them; otherwise the values saturate to ``[lo, hi]`` (choose
    them outside the op's valid range) and the op's own check rejects them before anything is read: on a GPU a
    device-side assert, so no host synchronisation and no extra reduction."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int64:
        return t
    if check is not None and host_values(t):
        check(t)
        return t.to(torch.int32)
    return t.clamp(lo, hi).to(torch.int32)


def check_row_ids(ids, n_rows: int, device: torch.device) -> None:
    """``ids`` is an int32 / int64 ``[R]`` tensor on ``device`` with every id in ``[0, n_rows)``: the checks of
    ``MXTensor.select_rows`` / ``SEFPTensor.select_rows``, before any row is read."""
    check_tensor("ids", ids, (torch.int32, torch.int64), device=device, device_of="the weight")
    if ids.dim() != 1:
        raise ValueError(f"ids: expected shape [R], got {tuple(ids.shape)}")
    check_ids_in_range(ids, 0, n_rows, f"ids: expected row ids in [0, N={n_rows})")


def check_value_on_device(ok: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``; on a GPU an async device assert (no host sync); nothing on meta.

    While ``torch.compile`` traces (any device) it is an assert in the graph (``torch._assert_async``: a
    ``RuntimeError`` with the message when it fails), where a host-side ``bool(ok)`` would be a data-dependent guard.
    """
    if torch.compiler.is_compiling():
        if ok.device.type != "meta":
            torch._assert_async(ok, message)
        return
    if ok.device.type == "cpu":
        if not bool(ok):
            raise ValueError(message)
    elif ok.device.type != "meta":
        torch._assert_async(ok, message)


# ------------------------------------------------------------------------------------- autograd
class FrozenWeightLinear(torch.autograd.Function):
    """``y = fwd(x, bias)``, a linear map of x (plus bias) by a frozen quantized weight, with a backward for x
    (``grad_x(grad_y in fp32)``, returned in x's dtype) and for bias (the sum of grad_y over its leading dims).

    For the front-ends of ops that have no derivative themselves (``mx.linear``, ``sefp.linear``): they take this
    path only when grad is enabled and x or bias requires grad, so inference calls go to the op directly.
    """

    @staticmethod
    def forward(x, bias, fwd, grad_x):
        return fwd(x, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, bias, _, grad_x = inputs
        ctx.grad_x, ctx.x_dtype = grad_x, x.dtype
        ctx.bias_dtype = bias.dtype if isinstance(bias, torch.Tensor) else None

    @staticmethod
    def backward(ctx, gy):
        gx = ctx.grad_x(gy.float()).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        gb = gy.float().reshape(-1, gy.shape[-1]).sum(0).to(ctx.bias_dtype) if ctx.needs_input_grad[1] else None
        return gx, gb, None, None


def needs_input_grad(x, bias=None) -> bool:
    """Grad is enabled and ``x`` or ``bias`` (None allowed) requires it. (No generator: ~0.1 us a call.)"""
    return torch.is_grad_enabled() and (getattr(x, "requires_grad", False) or getattr(bias, "requires_grad", False))


# ------------------------------------------------------------------------------------- extension
_ext: dict = {}


def _load_extension():
    """Import ``leankern._C`` once (it registers the C++ kernels with the dispatcher)."""
    if "mod" in _ext:
        return _ext["mod"]
    mod, err = None, None
    if os.environ.get("LEANKERN_DISABLE_EXT") == "1":  # deliberate: behave as if it were not built
        err = "disabled by LEANKERN_DISABLE_EXT=1"
    else:
        try:
            mod = importlib.import_module("leankern._C")
        except Exception as exc:  # ImportError, or an ABI mismatch after a torch upgrade (undefined symbol)
            err = f"{type(exc).__name__}: {exc}"
    if mod is not None and not hasattr(mod, "requested_isa_error"):  # a .so left over from an older leankern
        mod, err = None, "leankern._C is stale (built from an older leankern source)"
    _ext.update(mod=mod, err=err)
    if mod is not None:
        isa_err = mod.requested_isa_error()
        if isa_err:  # an unknown or unsupported LEANKERN_CPU_ISA is an error, not silently ignored
            raise ValueError(isa_err)
        fma = os.environ.get("LEANKERN_MX_FMA")
        if fma not in (None, "", "0", "1"):  # read by the C++ side at the first mx.linear: a typo would pass silently
            raise ValueError(f"LEANKERN_MX_FMA: expected 0 or 1 (the mx few-rows kernel's FMA form off / on), got {fma!r}")
        cache_mb = os.environ.get("LEANKERN_OUTPUT_CACHE_MB")  # read by the C++ side at load: "1e9" must not be 1 MB
        if cache_mb not in (None, "") and not (cache_mb.isdigit() and int(cache_mb) <= 1 << 30):
            raise ValueError(f"LEANKERN_OUTPUT_CACHE_MB: expected a whole number of MB (0: off), got {cache_mb!r}")
        amx = os.environ.get("LEANKERN_AMX")
        if amx not in (None, "", "0", "1"):
            raise ValueError(f"LEANKERN_AMX: expected 0 or 1 (AMX tiles off / on where the CPU has them), got {amx!r}")
    return mod


def extension():
    """The compiled ``leankern._C`` module, or None if it is not built / fails to load."""
    return _load_extension()


def extension_error() -> str | None:
    """Why :func:`extension` is None (None when it loaded)."""
    _load_extension()
    return _ext["err"]


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---------------------------------------------------------------------------------- capabilities
@dataclasses.dataclass(frozen=True)
class Capability:
    """What one backend of one op can run: input dtypes and inclusive ``(lo, hi)`` limits per argument.

    ``devices`` are the device types it runs on ("cpu" for Triton means: under ``TRITON_INTERPRET=1``).
    """

    devices: tuple
    dtypes: tuple = FLOAT_DTYPES
    limits: dict = dataclasses.field(default_factory=dict)
    note: str = ""

    def limit(self, arg: str) -> tuple:
        return self.limits[arg]


@dataclasses.dataclass
class OpSpec:
    """One op of a family. ``check(backend, *args)`` validates for the backend that will run.

    ``ref`` and ``triton`` take exactly the op's arguments; ``triton`` imports its module of
    ``leankern.triton_kernels`` on first use (no triton import at start-up).
    ``capabilities`` maps backend name -> :class:`Capability`; a backend absent from it has no kernel.
    """

    name: str
    schema: str
    ref: Callable
    fake: Callable
    check: Callable
    capabilities: dict
    triton: Optional[Callable] = None
    native_cuda: bool = dataclasses.field(default=False, init=False)  # a C++ CUDA kernel is registered

    @property
    def qualname(self) -> str:
        return f"leankern::{self.name}"


_REGISTRY: dict = {}
_LIBS: list = []  # keep the torch.library.Library objects alive


def registered_ops() -> dict:
    """``{op name: OpSpec}`` of every registered op, all families."""
    return dict(_REGISTRY)


def _has_kernel(qualname: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)


def register_op(spec: OpSpec) -> OpSpec:
    """Declare ``torch.ops.leankern.<spec.name>`` and register its fake, reference and Triton kernels."""
    lib = torch.library.Library("leankern", "FRAGMENT")
    _LIBS.append(lib)
    lib.define(spec.name + spec.schema)
    torch.library.register_fake(spec.qualname, spec.fake, lib=lib)
    ext = _load_extension()  # C++ kernels register CPU (and CUDA) impls for the op when the .so loads
    # A backward through a raw op raises "derivative for leankern::<op> is not implemented", with or without the
    # extension. Without an Autograd kernel torch's deprecated fallback would run: eager backward through the
    # reference (gradients of the reference, a warning), None gradients under torch.compile.
    no_derivative = getattr(ext, "register_no_derivative", None)
    if no_derivative is not None:
        no_derivative(spec.name)  # C++: torch's autogradNotImplementedFallback, no Python per call
    else:
        torch.library.register_autograd(spec.qualname, _no_derivative_backward(spec), lib=lib)
    spec.native_cuda = _has_kernel(spec.qualname, "CUDA")
    if spec.triton is not None and not spec.native_cuda:
        lib.impl(spec.name, _triton_kernel(spec), "CUDA")
    lib.impl(spec.name, _fallback_kernel(spec), "CompositeExplicitAutograd")
    _REGISTRY[spec.name] = spec
    return spec


_GRAD_FRONT_ENDS = ("leankern.mx.linear / nn.QuantLinear and leankern.sefp.linear / nn.SEFPLinear have a backward "
                    "for x and the bias; leankern.sefp.sefp_fake_quant is a straight-through quantizer of the weight")


def _no_derivative_backward(spec: OpSpec) -> Callable:
    """The backward registered (from Python) when ``leankern._C`` is absent: raises as the C++ build does."""
    def backward(ctx, *grads):
        raise NotImplementedError(f"derivative for {spec.qualname} is not implemented: the raw torch.ops.leankern "
                                  f"ops have no backward ({_GRAD_FRONT_ENDS})")

    return backward


def backend_for(op: str, device: torch.device | str) -> str:
    """The backend ``torch.ops.leankern.<op>`` runs for tensors on ``device`` in this process (this thread).

    Inside :func:`use_backend` that is the forced backend; if it cannot run ``op`` on ``device``, this raises
    the ``RuntimeError`` the call would.
    """
    spec, device = _REGISTRY[op], torch.device(device)
    forced = forced_backend()
    if forced is not None:
        err = _forced_error(spec, forced, device)
        if err is not None:
            raise RuntimeError(err)
        return forced
    dev = device.type
    if dev == "cpu":
        return "cpp" if _has_kernel(spec.qualname, "CPU") else "ref"
    if dev == "cuda":
        if spec.native_cuda:
            return "cuda"
        return "triton" if spec.triton is not None and triton_available() else "ref"
    return "ref"


def _first_device(args) -> torch.device:
    return next(a.device for a in args if isinstance(a, torch.Tensor))


def _triton_kernel(spec: OpSpec) -> Callable:
    def kernel(*args):
        if not triton_available():  # not a silent fallback: warned once, then the reference
            _warn_fallback(spec, "cuda", "triton is not installed; fix: pip install triton")
            spec.check("ref", *args)
            return spec.ref(*args)
        spec.check("triton", *args)
        return spec.triton(*args)

    return kernel


_warned: set = set()
_warn_lock = threading.Lock()


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def _caller_stacklevel() -> int:
    """``stacklevel`` (for a ``warnings.warn`` in this module) of the first frame outside this module and torch: the
    line that called the op, however many torch frames (dispatcher, a Python autograd kernel) lie between."""
    frame, level = sys._getframe(1), 1  # the caller of this function: the one that warns
    while frame.f_back is not None and (frame.f_code.co_filename == __file__
                                        or frame.f_code.co_filename.startswith(_TORCH_DIR)):
        frame, level = frame.f_back, level + 1
    return level


def _warn_fallback(spec: OpSpec, device_type: str, reason: str) -> None:
    with _warn_lock:
        if reason in _warned:
            return
        _warned.add(reason)
    warnings.warn(f"leankern: running the pure-PyTorch reference of {spec.qualname} on {device_type} tensors, "
                  f"typically 100-1000x slower than a compiled kernel: {reason}", RuntimeWarning,
                  stacklevel=_caller_stacklevel())


def _fallback_reason(spec: OpSpec, device_type: str) -> str | None:
    if device_type == "cpu":
        err = extension_error()
        if err is None:
            return f"leankern._C has no CPU kernel for {spec.name}"
        if err.startswith("disabled by"):
            return None  # the user asked for it
        return (f"the C++ extension leankern._C did not load ({err}); fix: rebuild it against the installed torch "
                f"(make build, or pip install --no-build-isolation -e .)")
    if device_type == "meta":
        return None
    return f"leankern has no compiled kernel for {device_type} tensors"


def _fallback_kernel(spec: OpSpec) -> Callable:
    def kernel(*args):
        dev = _first_device(args).type
        reason = _fallback_reason(spec, dev)
        if reason is not None:
            _warn_fallback(spec, dev, reason)
        spec.check("ref", *args)
        return spec.ref(*args)

    return kernel


# -------------------------------------------------------------------------------- forced backend
_state = threading.local()


def forced_backend() -> str | None:
    """The backend forced by an enclosing :func:`use_backend` in this thread, else None."""
    return getattr(_state, "forced", None)


def _forced_error(spec: OpSpec, backend: str, dev: torch.device) -> str | None:
    """Why the forced ``backend`` cannot run ``spec`` on tensors on ``dev`` (the call's ``RuntimeError``), else None."""
    if backend == "ref":
        return None
    if backend == "triton":
        if spec.triton is None:
            return f"backend 'triton': {spec.qualname} has no Triton kernel"
        if not triton_available():
            return "backend 'triton': triton is not installed (pip install triton)"
        if dev.type == "cpu" and not triton_interpreting():
            return "backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before importing triton"
        return None
    want = {"cpp": "cpu", "cuda": "cuda"}[backend]
    if dev.type != want:
        return f"backend {backend!r} runs {want} tensors; got a tensor on {dev}"
    if backend == "cpp" and extension() is None:
        return f"backend 'cpp': the leankern._C extension is not available ({extension_error()})"
    if backend == "cpp" and not _has_kernel(spec.qualname, "CPU") or backend == "cuda" and not spec.native_cuda:
        return f"backend {backend!r}: leankern._C has no {want} kernel for {spec.qualname}"
    return None


def _run_forced(spec: OpSpec, backend: str, func, args, kwargs):
    err = _forced_error(spec, backend, _first_device(args))
    if err is not None:
        raise RuntimeError(err)
    if backend == "ref":
        spec.check("ref", *args)
        return spec.ref(*args)
    if backend == "triton":
        spec.check("triton", *args)
        return spec.triton(*args)
    # redispatch below every mode (an outer use_backend too): straight to the kernel of that key
    key = torch._C.DispatchKey.CPU if backend == "cpp" else torch._C.DispatchKey.CUDA
    return func.redispatch(torch._C.DispatchKeySet(key), *args, **kwargs)


class _ForceBackend(TorchDispatchMode):
    """Routes every ``torch.ops.leankern`` call to one backend; other ops pass through untouched."""

    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        # Fake tensors (torch.compile / export tracing) go to the fake, which checks for the forced backend.
        if name.startswith("leankern::") and not any(isinstance(a, torch.Tensor) and is_fake(a) for a in args):
            return _run_forced(_REGISTRY[name.split("::", 1)[1]], self.backend, func, args, kwargs)
        return func(*args, **kwargs)


class use_backend:  # noqa: N801  (a context manager used like a function)
    """Force every ``torch.ops.leankern`` op called inside the block onto one backend.

    >>> with leankern.use_backend("ref"):
    ...     qt = leankern.mx.quantize(x, "mxfp4")

    Backends: ``"ref"`` (pure PyTorch), ``"cpp"`` (C++ CPU kernels), ``"triton"`` (CUDA tensors, or
    CPU tensors under ``TRITON_INTERPRET=1``), ``"cuda"`` (hand-written CUDA kernels). A forced
    backend that cannot run the input raises ``RuntimeError`` naming both. For tests and benches:
    production calls never need it (the dispatcher already picks the kernel for the device).
    Eager only: torch.compile refuses to trace while a user dispatch mode is active.

    One object may be entered again, nested or from several threads at once (``REF = use_backend("ref")`` at
    module level): each entry keeps what it restores on a stack of its own thread.
    """

    def __init__(self, name: str):
        if name not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
        self.name = name
        self._entries = threading.local()  # .stack: [(previous forced backend, mode)] of this thread's entries

    def __enter__(self):
        stack = getattr(self._entries, "stack", None)
        if stack is None:
            stack = self._entries.stack = []
        prev, mode = forced_backend(), _ForceBackend(self.name)
        mode.__enter__()
        stack.append((prev, mode))
        _state.forced = self.name
        return self

    def __exit__(self, *exc):
        stack = getattr(self._entries, "stack", None)
        if not stack:
            raise RuntimeError(f"use_backend({self.name!r}).__exit__ without a matching __enter__ in this thread")
        prev, mode = stack.pop()
        try:
            mode.__exit__(*exc)
        finally:
            _state.forced = prev
        return False
