"""GPU-readiness: Triton launchers create no tensors from host values and never synchronise.

Every launcher (and every public op under ``use_backend("triton")``) runs inside a
``TorchDispatchMode`` that sees each aten op and fails on the ones that would break CUDA-graph
capture or stall the stream: ``lift_fresh`` / ``lift_fresh_copy`` (``torch.tensor`` /
``torch.as_tensor`` from host data), ``_local_scalar_dense`` (``.item()``, ``float()``,
``int()``, ``bool()``), ``is_nonzero``, ``equal``, and any ``_to_copy`` / ``copy_`` between two
devices. Under the interpreter the kernels' launches are replaced by a recording no-op (the
interpreter itself copies arguments to host and back, which a GPU launch does not); on a GPU
they run for real.

On CPU the op boundary's *value* checks (ops.py: ``strict``, the NV global scale) read the
value on purpose (no stream to stall; on CUDA they use ``torch._assert_async``): host reads made
from those two functions on CPU tensors are allowed, nothing else.
"""
import math
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import leankern
from leankern import core
from conftest import DEVICES, available_backends

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

aten = torch.ops.aten
HOST_VALUE_OPS = {
    aten.lift_fresh: "a tensor made from host data (torch.tensor / torch.as_tensor)",
    aten.lift_fresh_copy: "a tensor made from host data (torch.tensor / torch.as_tensor)",
    aten._local_scalar_dense: "a device value read on the host (.item() / float() / int() / bool())",
    aten.is_nonzero: "a device value read on the host (bool(tensor))",
    aten.equal: "torch.equal reads its result on the host",
}
# functions (leankern/core.py, mx/ops.py) that may read CPU values on purpose (they use torch._assert_async on a GPU)
CPU_VALUE_CHECKS = {"check_value_on_device", "_check_quantize_values"}


def _devices(args, kwargs):
    return {a.device for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)}


def _cpu_value_check_frame() -> bool:
    f = sys._getframe(2)
    while f is not None:
        path = f.f_code.co_filename.replace("\\", "/")
        if f.f_code.co_name in CPU_VALUE_CHECKS and path.endswith(("mx/ops.py", "leankern/core.py")):
            return True
        f = f.f_back
    return False


def graph_unsafe_reason(func, args, kwargs):
    """Why calling ``func`` would break capture / synchronise, or None."""
    packet = func.overloadpacket
    if packet in HOST_VALUE_OPS:
        return HOST_VALUE_OPS[packet]
    if packet is aten._to_copy:
        src, dst = args[0].device, kwargs.get("device")
        if dst is not None and torch.device(dst) != src:
            return f"a copy from {src} to {dst}"
    if packet is aten.copy_:
        dst, src = args[0], args[1]
        if isinstance(src, torch.Tensor) and src.device != dst.device:
            return f"a copy from {src.device} to {dst.device}"
    return None


class GraphUnsafe(AssertionError):
    pass


class GraphSafetyChecker(TorchDispatchMode):
    """Records every aten op; raises :class:`GraphUnsafe` at the first host-value op."""

    def __init__(self, allow_cpu_value_checks: bool = False):
        super().__init__()
        self.ops, self.violations, self.allowed = [], [], []
        self.allow_cpu_value_checks = allow_cpu_value_checks

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append(str(func))
        why = graph_unsafe_reason(func, args, kwargs)
        if why is not None:
            on_cpu = _devices(args, kwargs) <= {torch.device("cpu")}
            if self.allow_cpu_value_checks and on_cpu and _cpu_value_check_frame():
                self.allowed.append(str(func))
            else:
                self.violations.append(f"{func}: {why}")
                raise GraphUnsafe(f"{func}: {why}; ops so far: {self.ops}")
        return func(*args, **kwargs)


# --------------------------------------------------------------------------- kernel launches
class _RecordingKernel:
    """Stands in for a jitted kernel: ``kernel[grid](*args)`` records the launch, runs nothing."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(dict(kernel=getattr(self.kernel, "__name__", repr(self.kernel)), grid=grid,
                                      args=args, kwargs=kwargs))

        return launch


@pytest.fixture
def launches(monkeypatch):
    """Under the interpreter: kernel launches become recording no-ops (the list of launches)."""
    from leankern.triton_kernels import mx as tmx, mx_hadamard as thad

    recorded = []
    if not core.triton_interpreting():
        return None  # a GPU: launches are real (and do not go through aten)
    for mod, names in ((tmx, ("quantize_config", "dequantize_config")), (thad, ("hadamard_config",))):
        for name in names:
            config = getattr(mod, name)

            def stubbed(*a, _config=config, **k):
                kernel, ce, num_warps = _config(*a, **k)
                return _RecordingKernel(kernel, recorded), ce, num_warps

            monkeypatch.setattr(mod, name, stubbed)
    return recorded


def _check_launch_args(launches, device):
    if launches is None:
        return
    assert launches, "no kernel launch was recorded"
    for launch in launches:
        for a in launch["args"]:
            assert not isinstance(a, torch.Tensor) or a.device == torch.device(device), launch


# ----------------------------------------------------------------------------------- inputs
def _inputs(device):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 64, generator=g) * 3).to(device)
    return dict(
        x=x, xb=x.to(torch.bfloat16), xh=x.to(torch.float16),
        rb=torch.randint(-(2**31), 2**31, (4, 64), generator=g, dtype=torch.int32).to(device),
        g=torch.full((), 0.01, device=device), signs=leankern.mx.random_hadamard_signs(32, 1, device),
    )


def _launcher_calls(t):
    from leankern.triton_kernels.mx import mx_dequantize_triton, mx_quantize_triton
    from leankern.triton_kernels.mx_hadamard import hadamard_transform_triton

    q_mx = leankern.mx.ref.mx_quantize_ref(t["x"], "mxfp4", 32)
    q_nv = leankern.mx.ref.mx_quantize_ref(t["x"], "nvfp4", 16)
    q_i8 = leankern.mx.ref.mx_quantize_ref(t["x"], "mxint8", 32)
    return {
        "quantize-mxfp8": lambda: mx_quantize_triton(t["xb"], "mxfp8_e4m3", 32, "rceil"),
        "quantize-mxfp4-floor": lambda: mx_quantize_triton(t["x"], "mxfp4", 32, "floor"),
        "quantize-mxint4-stochastic": lambda: mx_quantize_triton(t["xh"], "mxint4", 32, "rceil", t["rb"]),
        "quantize-nvfp4-dynamic": lambda: mx_quantize_triton(t["x"], "nvfp4", 16),
        "quantize-nvfp4-static": lambda: mx_quantize_triton(t["xb"], "nvfp4", 16, "rceil", None, t["g"]),
        "dequantize-mxfp4": lambda: mx_dequantize_triton(*q_mx, "mxfp4", 32, torch.bfloat16),
        "dequantize-nvfp4": lambda: mx_dequantize_triton(*q_nv, "nvfp4", 16, torch.float32),
        "dequantize-mxint8": lambda: mx_dequantize_triton(*q_i8, "mxint8", 32, torch.float16),
        "hadamard": lambda: hadamard_transform_triton(t["x"], 64, 0.125),
        "hadamard-signs-bf16": lambda: hadamard_transform_triton(t["xb"], 32, 1 / math.sqrt(32), t["signs"]),
    }


LAUNCHER_CASES = list(_launcher_calls(_inputs("cpu")))


def _public_calls(t):
    mx = leankern.mx
    ops = torch.ops.leankern
    q = mx.quantize(t["x"], "mxfp6_e3m2")  # made outside the checker
    return {
        "op-quantize": lambda: ops.mx_quantize(t["xb"], "mxfp8_e5m2", 32, "floor", None, None, False),
        "op-quantize-nv-static": lambda: ops.mx_quantize(t["x"], "nvint4", 16, "rceil", t["rb"], t["g"], True),
        "op-dequantize": lambda: ops.mx_dequantize(q.codes, q.scales, q.global_scale, q.fmt, 32, torch.float16),
        "op-hadamard": lambda: ops.hadamard_transform(t["xh"], 32, 0.5, t["signs"]),
        "quantize": lambda: mx.quantize(t["x"], "mxfp4"),
        "quantize-nvfp4-float-scale": lambda: mx.quantize(t["xb"], "nvfp4", global_scale=0.02),
        "quantize-stochastic-seed": lambda: mx.quantize(t["x"], "mxint8", rounding="stochastic", seed=3),
        "quantize-strict-swizzle": lambda: mx.quantize(t["x"], "mxfp8", strict=True, swizzle=True),
        "dequantize": lambda: mx.dequantize(q),
        "hadamard_transform": lambda: mx.hadamard_transform(t["x"], 32),
        "rotate": lambda: mx.rotate(t["xb"], 32, seed=5),
    }


PUBLIC_CASES = list(_public_calls(_inputs("cpu")))


def _needs_triton(device):
    if "triton" not in available_backends(device):
        pytest.skip(f"triton cannot run {device} tensors here")


# ------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", LAUNCHER_CASES)
def test_launcher_is_graph_safe(case, device, launches):
    _needs_triton(device)
    call = _launcher_calls(_inputs(device))[case]
    checker = GraphSafetyChecker()
    with checker:
        call()
    assert checker.violations == [] and checker.allowed == []
    assert checker.ops, "the checker saw no op at all"
    _check_launch_args(launches, device)
    if case.startswith("hadamard") and launches is not None:
        scale = launches[0]["args"][1]
        assert type(scale) is float, f"scale should be a Python float kernel argument, got {type(scale)}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", PUBLIC_CASES)
def test_public_op_under_triton_is_graph_safe(case, device, launches):
    _needs_triton(device)
    call = _public_calls(_inputs(device))[case]
    checker = GraphSafetyChecker(allow_cpu_value_checks=device == "cpu")
    with checker, leankern.use_backend("triton"):  # the checker outside: it sees what the op runs
        call()
    assert checker.violations == []
    if device != "cpu":
        assert checker.allowed == []
    _check_launch_args(launches, device)


def _tensors(out):
    if isinstance(out, leankern.MXTensor):
        return [out.codes, out.scales, out.global_scale]
    return list(out) if isinstance(out, (tuple, list)) else [out]


# a seeded torch.Generator made inside the capture is not graph-safe by torch's own rules
CAPTURE_CASES = [c for c in PUBLIC_CASES if "stochastic" not in c]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("case", CAPTURE_CASES)
def test_public_op_captures_in_a_cuda_graph(case):
    """The end-to-end proof on a GPU: capture the call in a CUDA graph, replay, same bits as eager."""
    _needs_triton("cuda")
    call = _public_calls(_inputs("cuda"))[case]
    want = _tensors(call())  # eager; also compiles the kernels before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    graph.replay()
    torch.cuda.synchronize()
    for g_, w_ in zip(_tensors(out), want):
        assert torch.equal(g_.reshape(-1).view(torch.uint8), w_.reshape(-1).view(torch.uint8)), case


def test_launchers_match_the_reference_after_the_fixes():
    """The launchers as changed for graph safety are still bit-exact (here, real interpreter runs)."""
    if "triton" not in available_backends("cpu"):
        pytest.skip("triton cannot run CPU tensors here")
    calls = _launcher_calls(_inputs("cpu"))
    t = _inputs("cpu")
    ref = leankern.mx.ref
    q_mx = ref.mx_quantize_ref(t["x"], "mxfp4", 32)
    want = {
        "quantize-nvfp4-static": ref.mx_quantize_ref(t["xb"], "nvfp4", 16, "rceil", None, t["g"]),
        "dequantize-mxfp4": ref.mx_dequantize_ref(*q_mx, "mxfp4", 32, torch.bfloat16),
        "hadamard": ref.hadamard_transform_ref(t["x"], 64, 0.125),
        "hadamard-signs-bf16": ref.hadamard_transform_ref(t["xb"], 32, 1 / math.sqrt(32), t["signs"]),
    }
    for case, w in want.items():
        got = calls[case]()
        for g_, w_ in zip(got if isinstance(got, tuple) else [got], w if isinstance(w, tuple) else [w]):
            assert g_.dtype == w_.dtype and torch.equal(g_.reshape(-1).view(torch.uint8),
                                                        w_.reshape(-1).view(torch.uint8)), case


AWKWARD_SCALES = [1 / math.sqrt(32), 0.1, 1 / 3, -2.5, 0.0, -0.0,
                  1.0000000596046448,  # halfway between 1 and the next fp32: RNE to 1.0
                  1.0000001788139343,  # halfway above an odd fp32: RNE up
                  1e-40, 2**-149 * 1.5,  # fp32 subnormals (the second a tie)
                  1e-46,  # below half the smallest subnormal: 0
                  3.4028235677973366e38, 1e39]  # fp32 max rounds to inf at the tie; beyond: inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_hadamard_scale_argument_rounds_like_the_reference(dtype):
    """``scale`` is an fp32 kernel argument now (no device tensor): fp32(scale) with RNE, as the reference."""
    if "triton" not in available_backends("cpu"):
        pytest.skip("triton cannot run CPU tensors here")
    from leankern.triton_kernels.mx_hadamard import hadamard_transform_triton

    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(7)).to(dtype)
    x[0, 0], x[1, 1], x[2] = float("nan"), float("inf"), 0.0
    signs = leankern.mx.random_hadamard_signs(32, 4)
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[dtype]
    for scale in AWKWARD_SCALES:
        for sg in (None, signs):
            got = hadamard_transform_triton(x, 32, scale, sg)
            want = leankern.mx.ref.hadamard_transform_ref(x, 32, scale, sg)
            assert torch.equal(got.view(bits), want.view(bits)), (scale, sg is not None)


@pytest.mark.parametrize("name", ["signs", "global_scale"])
def test_launcher_rejects_a_tensor_on_another_device(name):
    """A tensor on another device is an error, never a silent host-to-device copy (meta stands in)."""
    if "triton" not in available_backends("cpu"):
        pytest.skip("triton cannot run CPU tensors here")
    from leankern.triton_kernels.mx import mx_quantize_triton
    from leankern.triton_kernels.mx_hadamard import hadamard_transform_triton

    x = torch.randn(2, 32)
    with pytest.raises(ValueError, match=f"{name}: expected a tensor on cpu"):
        if name == "signs":
            hadamard_transform_triton(x, 32, 1.0, torch.ones(32, device="meta"))
        else:
            mx_quantize_triton(x, "nvfp4", 16, "rceil", None, torch.ones((), device="meta"))


# ---------------------------------------------------------------------------- checker self-test
def _bad_tensor_from_host(x):
    return x * torch.tensor([1.0], device=x.device)


def _bad_item(x):
    return x[: int((x > 0).sum().item())]


def _bad_bool(x):
    return x if bool((x > 0).any()) else -x


def _bad_float(x):
    return x * float(x.abs().max())


def _bad_cross_device_copy(x):
    return x.to("meta")


def _bad_copy_into_other_device(x):
    return torch.empty(x.shape, device="meta").copy_(x)


def _bad_equal(x):
    return x if torch.equal(x, x) else -x


def _good(x):
    s = torch.full((), 0.5, dtype=torch.float32, device=x.device)
    return torch.where(x > 0, x * s, x.clamp(min=-1.0)) + torch.empty_like(x).fill_(1.0)


@pytest.mark.parametrize("bad", [_bad_tensor_from_host, _bad_item, _bad_bool, _bad_float, _bad_cross_device_copy,
                                 _bad_copy_into_other_device, _bad_equal])
def test_checker_catches_a_bad_launcher(bad):
    checker = GraphSafetyChecker()
    with pytest.raises(GraphUnsafe), checker:
        bad(torch.randn(16))
    assert len(checker.violations) == 1


def test_checker_catches_the_old_hadamard_launcher():
    """The launcher as it was (scale staged with torch.tensor) fails the check."""
    x = torch.randn(2, 32)

    def old_launcher(x, scale):
        scale_t = torch.tensor([scale], dtype=torch.float32, device=x.device)
        return torch.empty_like(x), scale_t

    with pytest.raises(GraphUnsafe, match="lift_fresh"), GraphSafetyChecker():
        old_launcher(x, 0.125)


def test_checker_allows_graph_safe_code():
    checker = GraphSafetyChecker()
    with checker:
        _good(torch.randn(16))
    assert checker.violations == [] and len(checker.ops) >= 5


def test_cpu_value_check_allowance_is_narrow():
    """Allowed only inside ops.py's value checks; the same read elsewhere still fails."""
    checker = GraphSafetyChecker(allow_cpu_value_checks=True)
    with pytest.raises(GraphUnsafe), checker:
        _bad_item(torch.randn(16))
    x = torch.tensor([float("nan"), 1.0])
    with pytest.raises(ValueError, match="strict=True"), GraphSafetyChecker(allow_cpu_value_checks=True) as ok:
        leankern.mx.ops._check_quantize_values(x, None, True)
    assert ok.allowed and ok.violations == []
