"""Shared test setup: Triton interpreter mode, hypothesis profile, devices and backends.

TRITON_INTERPRET must be set before anything imports triton, so it is decided here, first:
only when there is no GPU (with one, the Triton kernels are compiled and run on CUDA tensors).

Helpers for test files (``from conftest import ...``): ``HAS_EXT`` / ``needs_ext`` / ``needs_triton``,
``run_python`` (a fresh interpreter with an adjusted environment), ``op_args`` / ``with_dtype``
(tiny valid arguments of every registered op) and ``SIZE_ARG`` (the argument each op's limits apply to).
"""
import os
import subprocess
import sys

import torch

if not torch.cuda.is_available():
    # No GPU: Triton kernels run their numerics on CPU tensors under the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import leankern  # noqa: E402
from leankern.core import extension, triton_available, triton_interpreting  # noqa: E402

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

HAS_EXT = extension() is not None
needs_ext = pytest.mark.skipif(not HAS_EXT, reason=f"leankern._C not loaded ({leankern.extension_error()})")
needs_triton = pytest.mark.skipif(
    not (triton_available() and (torch.cuda.is_available() or triton_interpreting())),
    reason="triton is not installed, or no GPU and TRITON_INTERPRET is not 1")


def available_backends(device: str) -> list:
    """Backends that can run tensors on ``device`` in this process (ref always)."""
    out = ["ref"]
    if device == "cpu" and extension() is not None:
        out.append("cpp")
    if triton_available() and (device == "cuda" or triton_interpreting()):
        out.append("triton")
    if device == "cuda" and leankern.registered_ops()["mx_quantize"].native_cuda:
        out.append("cuda")  # the hand-written CUDA kernels (a CUDA build of leankern._C)
    return out


def backend_params():
    """(device, backend) pairs, with a skip mark for those that cannot run here."""
    params = []
    for dev in ("cpu", "cuda"):
        for be in ("cpp", "triton", "cuda"):
            if (dev, be) in (("cuda", "cpp"), ("cpu", "cuda")):
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


def run_python(code: str, env: dict | None = None, drop=(), timeout: int = 180) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (this one's environment, updated by ``env``, minus ``drop``)."""
    full = dict(os.environ)
    for k in drop:
        full.pop(k, None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------ op sample inputs
# The argument each op's capability limits apply to (tests/test_mx_capabilities.py is generated
# from leankern.mx.ops.CAPABILITIES; a new op needs an entry here and in ``op_args``).
SIZE_ARG = {"mx_quantize": "block_size", "mx_dequantize": "block_size", "hadamard_transform": "chunk_size",
            "mx_linear": "block_size", "mx_linear_packed": "block_size",
            "specdec_verify": "V", "specdec_verify_tree": "V"}
_VOCAB_IDS = [3, -1, 7, 3, 49, 0]  # padding, a duplicate, the last row of V = 50


def op_args(op: str, size: int = 32, dtype: torch.dtype = torch.float32, rows: int = 1, seed: int = 0,
            device="cpu") -> tuple:
    """Tiny valid positional arguments of ``torch.ops.leankern.<op>``: ``size`` is the op's
    :data:`SIZE_ARG` (block / chunk size, also the row length) and ``dtype`` the float dtype it takes
    (the input of quantize / hadamard, ``out_dtype`` of dequantize). mxint8 keeps every output a
    dtype that ``allclose`` supports (opcheck compares outputs)."""
    g = torch.Generator().manual_seed(seed)
    if op == "mx_quantize":
        x = torch.randn(rows, size, generator=g).to(dtype).to(device)
        return (x, "mxint8", size, "rceil", None, None, False)
    if op == "mx_dequantize":
        codes = torch.randint(-127, 128, (rows, size), generator=g, dtype=torch.int8).to(device)
        scales = torch.randint(100, 150, (rows, 1), generator=g, dtype=torch.int32).to(torch.uint8).to(device)
        return (codes, scales, torch.ones((), dtype=torch.float32, device=device), "mxint8", size, dtype)
    if op == "hadamard_transform":
        x = torch.randn(rows, size, generator=g).to(dtype).to(device)
        return (x, size, 1.0 / size**0.5, None)
    if op == "mx_linear":  # x [rows, size] @ an mxint8 weight [3, size] with one block per row
        x = torch.randn(rows, size, generator=g).to(dtype).to(device)
        codes = torch.randint(-127, 128, (3, size), generator=g, dtype=torch.int8).to(device)
        scales = torch.randint(100, 150, (3, 1), generator=g, dtype=torch.int32).to(torch.uint8).to(device)
        return (x, codes, scales, torch.ones((), dtype=torch.float32, device=device), "mxint8", size, None, None)
    if op == "mx_linear_packed":  # the same product with the weight prepacked
        from leankern.mx.packed_layout import pack_weight

        x, codes, scales, g_scale, fmt, bs, bias, act = op_args("mx_linear", size, dtype, rows, seed, device)
        return (x, pack_weight(codes, scales, fmt, bs), g_scale, fmt, bs, codes.shape[0], bias, act)
    if op == "specdec_verify":  # ``rows`` requests of 0, 1, 2, ... drafts over a vocabulary of ``size``
        counts = [i % 4 for i in range(rows)]
        T = sum(counts)
        logits = torch.randn(T, size, generator=g).to(dtype).to(device)
        drafts = torch.argmax(logits.float(), -1).to(torch.int32)
        if T:
            drafts[-1] = (drafts[-1] + 1) % size  # the last draft is rejected
        cu = torch.tensor(counts, dtype=torch.int32).cumsum(0).to(torch.int32).to(device)
        bonus = torch.randn(rows, size, generator=g).to(dtype).to(device)
        return (drafts, cu, logits, bonus, None, None, None, None, None, "greedy", max(counts), 0, 0, -1, 0.09, 0.3)
    if op == "specdec_verify_tree":  # ``rows`` requests, each a root with two chains of depth 2
        logits = torch.randn(5 * rows, size, generator=g).to(dtype).to(device)
        tokens = torch.randint(0, size, (5 * rows,), generator=g, dtype=torch.int32).to(device)
        cu = torch.arange(1, rows + 1, dtype=torch.int32).mul(5).to(device)
        paths = torch.tensor([[0, 1, 2], [0, 3, 4]], dtype=torch.int32).expand(rows, 2, 3).contiguous().to(device)
        return (tokens, cu, logits, paths, None, "greedy", 0, 0, -1, 0.09, 0.3)
    if op in ("vocab_gather_lm_head", "vocab_gather_lm_head_topk"):  # hidden [rows, size], V = 50 rows
        hidden = torch.randn(rows, size, generator=g).to(dtype).to(device)
        weight = torch.randn(50, size, generator=g).to(device)
        ids = torch.tensor(_VOCAB_IDS, dtype=torch.int32, device=device)
        last = (None, False) if op == "vocab_gather_lm_head" else (2,)
        return (hidden, weight, ids, None, None, 1.0) + last
    if op == "vocab_scatter_to_full":
        logits = torch.randn(rows, len(_VOCAB_IDS), generator=g).to(dtype).to(device)
        return (logits, torch.tensor(_VOCAB_IDS, dtype=torch.int32, device=device), 50, float("-inf"))
    if op == "vocab_logit_stats":
        return (torch.randn(rows, size, generator=g).to(dtype).to(device), 1.0)
    if op == "sefp_quantize":  # w [rows, size] at m_max 8, one exponent per 32
        return (torch.randn(rows, size, generator=g).to(dtype).to(device), 8, 32)
    if op in ("sefp_dequantize", "sefp_linear"):  # a [3, size] weight read at m = 5 of 8 planes
        from leankern.sefp.ref import quantize_ref

        planes, exps = quantize_ref(torch.randn(3, size, generator=g), 8, 32)
        planes, exps = planes.to(device), exps.to(device)
        if op == "sefp_dequantize":
            return (planes, exps, 5, 32, size, dtype)
        return (torch.randn(rows, size, generator=g).to(dtype).to(device), planes, exps, 5, 32, None)
    if op == "sefp_packed_linear":  # a [3, size] weight's packed copy at m = 5
        from leankern.sefp.packed import pack_fields
        from leankern.sefp.ref import quantize_ref

        planes, exps = quantize_ref(torch.randn(3, size, generator=g), 8, 32)
        return (torch.randn(rows, size, generator=g).to(dtype).to(device), pack_fields(planes, 5).to(device),
                exps.to(device), 5, 32, None)
    if op.startswith("moe_"):
        return _moe_args(op, size, dtype, rows, g, device)
    raise KeyError(f"tests/conftest.py: no sample arguments for op {op!r}: add them to op_args")


def _moe_args(op, size, dtype, rows, g, device) -> tuple:
    """moe ops: E = 6 experts (16 for route / align), k = 3 slots with some skipped (-1), H = ``size``, I = 8."""
    from leankern.moe.ref import route_ref

    logits = torch.randn(rows, 16, generator=g)
    ids, w = route_ref(logits, 4)
    if op == "moe_route":
        return (logits.to(dtype).to(device), 4, "softmax", True, 1, 1, None, 1.0, "none", [], None, False)
    if op == "moe_skip":
        modality = (torch.arange(rows, dtype=torch.int32) % 3).to(device)
        return (ids.to(device), w.to(device), "modes", [1.0, 0.5, 0.2, 0.1], modality, False)
    if op == "moe_align":
        return (ids.masked_fill(w < 0.2, -1).to(device), 16, 4, None)
    E, I = 6, 8
    hidden = torch.randn(rows, size, generator=g).to(dtype).to(device)
    w13 = (torch.randn(E, 2 * I, size, generator=g) / size**0.5).to(device)
    w2 = (torch.randn(E, size, I, generator=g) / I**0.5).to(device)
    ids = torch.stack([torch.randperm(E, generator=g)[:3] for _ in range(rows)]).to(torch.int32)
    ids[::2, 2] = -1  # every other token has a skipped slot
    wts = torch.rand(rows, 3, generator=g).masked_fill(ids < 0, 0.0)
    return (hidden, w13, w2, ids.to(device), wts.to(device), None, None, "silu", 1.702, 7.0, False, None, None,
            None, None)


def with_dtype(op: str, args: tuple, dtype: torch.dtype) -> tuple:
    """``args`` with the float dtype the op takes replaced by ``dtype``."""
    if op == "mx_dequantize":
        return args[:5] + (dtype,)
    if op == "sefp_dequantize":
        return args[:5] + (dtype,)
    if op in ("sefp_linear", "sefp_packed_linear"):
        return (args[0].to(dtype),) + args[1:]
    if op in ("moe_skip", "moe_align"):  # no float input of a choosable dtype
        return args
    return (args[0].to(dtype),) + args[1:]


def assert_matches_reference(op: str, args: tuple, got, want) -> None:
    """A backend's result of ``op`` on ``args`` against the reference's: bit for bit, except for
    mx_linear, whose summation order is free: there, within tolerances.linear_error_bound of the
    exact product (the reference result ``want`` must lie within it too), and the vocab ops
    (tolerances.assert_vocab_result: derived bounds around an fp64 evaluation)."""
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    if op.startswith("vocab_"):
        from tolerances import assert_vocab_result

        assert_vocab_result(op, args, got, want)
        return
    if op == "moe_experts":
        from tolerances import assert_moe_experts

        for y in (got[0], want[0]):
            assert_moe_experts(args, y)
        return
    if op == "moe_route":  # ids exact; weights: a softmax / sigmoid and a division, each within a few ulp
        assert torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=8 * 2.0**-24, atol=1e-30)
        return
    if op == "sefp_linear":
        from tolerances import assert_sefp_linear

        for y in (got[0], want[0]):
            assert_sefp_linear(args, y)
        return
    if op == "sefp_packed_linear":
        from tolerances import assert_sefp_packed_linear

        for y in (got[0], want[0]):
            assert_sefp_packed_linear(args, y)
        return
    if op not in ("mx_linear", "mx_linear_packed"):
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            assert torch.equal(_bits(g), _bits(w))
        return
    from tolerances import assert_linear_result

    if op == "mx_linear_packed":
        from leankern.mx.packed_layout import unpack_weight

        x, packed, g_scale, fmt, bs, n, bias, act = args
        args = (x, *unpack_weight(packed, fmt, bs, n), g_scale, fmt, bs, bias, act)
    for y in (got[0], want[0]):
        assert_linear_result(args, y)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
