"""leankern.mx.linear / torch.ops.leankern.mx_linear: every backend against the exact product,
within the error bound derived in tolerances.linear_error_bound; errors; NaN policy; compile."""
import pytest
import torch

import leankern
from leankern.mx.formats import FORMATS
from mx_cases import ALL_FORMATS, CPU_BACKENDS, FLOAT_DTYPES, skip_unless_runs_on_cpu
from tolerances import assert_linear_result, assert_linear_within_bound, linear_error_bound

DUAL_PAIRS = ["mxint8", "mxfp8_e4m3", "mxfp4", "nvfp4", "mxint4", "nvint4"]  # weight fmt == act fmt


def _linear_backend(backend):
    skip_unless_runs_on_cpu(backend)
    if backend not in leankern.mx.CAPABILITIES["mx_linear"]:
        pytest.skip(f"backend {backend!r} has no mx_linear kernel yet")
    return leankern.use_backend(backend)


def _weight(n, k, fmt, block_size=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * torch.rand(n, 1, generator=gen) * 4  # rows of different scale
    return leankern.mx.quantize(w, fmt, block_size=block_size)


def _check(got, x, qt, bias, act_fmt):
    assert_linear_result((x, qt.codes, qt.scales, qt.global_scale, qt.fmt, qt.block_size, bias, act_fmt), got)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_weight_only_every_format(backend, fmt, dtype):
    with _linear_backend(backend):
        for m, n, k, bias in ((1, 17, 64, False), (3, 64, 128, True), (16, 5, 256, True), (33, 24, 64, False)):
            qt = _weight(n, k, fmt, seed=m)
            x = torch.randn(m, k, generator=torch.Generator().manual_seed(n)).to(dtype)
            b = torch.randn(n).to(dtype) if bias else None
            _check(leankern.mx.linear(x, qt, b), x, qt, b, None)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fmt", DUAL_PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dual_quantized_activations(backend, fmt, dtype):
    with _linear_backend(backend):
        qt = _weight(48, 128, fmt, seed=3)
        x = (torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(4)) * 2).to(dtype)
        b = torch.randn(48)
        _check(leankern.mx.linear(x, qt, b, act_fmt=fmt), x, qt, b, fmt)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("block_size", [2, 16, 64, 256])
def test_block_sizes_and_empty_batch(backend, block_size):
    with _linear_backend(backend):
        qt = _weight(9, 512, "mxint4", block_size=block_size)
        x = torch.randn(4, 512)
        _check(leankern.mx.linear(x, qt), x, qt, None, None)
        empty = leankern.mx.linear(torch.randn(0, 512), qt)
        assert empty.shape == (0, 9)


@pytest.mark.parametrize("fmt", ["mxint8", "mxfp4", "nvfp4"])
def test_k_zero_ref_matches_cpp(fmt):
    """K = 0 (an empty sum): the reference returns what the C++ kernel (and the fake) returns, the bias broadcast
    over the rows, or zeros, in x's dtype and shape [..., N]; weight-only and with act_fmt."""
    skip_unless_runs_on_cpu("cpp")
    bs = 16 if fmt.startswith("nv") else 32
    codes = torch.zeros(3, 0, dtype=torch.uint8 if fmt.endswith("fp4") else torch.int8)
    scales = torch.zeros(3, 0, dtype=torch.float8_e4m3fn if fmt.startswith("nv") else torch.uint8)
    for x_shape in ((2, 0), (2, 4, 0), (0, 0), (0,)):
        for dtype in FLOAT_DTYPES:
            x = torch.zeros(x_shape, dtype=dtype)
            for bias, act in ((None, None), (torch.randn(3).to(dtype), None), (torch.randn(3).to(dtype), fmt)):
                args = (x, codes, scales, torch.ones(()), fmt, bs, bias, act)
                with leankern.use_backend("cpp"):
                    want = torch.ops.leankern.mx_linear(*args)
                with leankern.use_backend("ref"):
                    got = torch.ops.leankern.mx_linear(*args)
                assert want.shape == (*x_shape[:-1], 3) and want.dtype == dtype
                expect = torch.zeros(want.shape, dtype=dtype) if bias is None else bias.expand(want.shape)
                assert torch.equal(want, expect), (x_shape, dtype, bias is not None, act)
                assert got.dtype == want.dtype and torch.equal(got, want), (x_shape, dtype, bias is not None, act)


def test_bound_catches_one_wrong_code():
    """The tolerance can fail: one flipped weight code in one block is out of bounds."""
    qt = _weight(8, 64, "mxint8", seed=5)
    x = torch.randn(2, 64)
    good = leankern.mx.linear(x, qt)
    _check(good, x, qt, None, None)
    codes = qt.codes.clone()
    codes[3, 10] = -codes[3, 10] if codes[3, 10] != 0 else 1
    bad = leankern.MXTensor(codes, qt.scales, qt.global_scale, qt.fmt, qt.block_size, qt.shape, qt.dtype)
    with pytest.raises(AssertionError, match="exceeds the derived bound"):
        _check(leankern.mx.linear(x, bad), x, qt, None, None)


def _sequential_fp32_dot(x, w):
    """x . w summed left to right in fp32, one rounding per add (torch's own sums may carry a wider accumulator)."""
    acc = torch.zeros((), dtype=torch.float32)
    for xk, wk in zip(x.float(), w.float()):
        acc = acc + xk * wk
    return acc


def test_linear_error_bound_is_tight():
    """The bound is not loose: a worst case of sequential fp32 summation nearly reaches it. K = 256, x = [1, 2^-24,
    ..., 2^-24], w = ones: each 2^-24 added to 1 is a tie that rounds back to 1 (to even), so the left-to-right
    sum is exactly 1 while the exact value is 1 + 255 * 2^-24. The error, 255 u, is 255/256 of the bound
    gamma_256 * (1 + 255 u) (+ subnormal terms); the bound at 0.99 of its size, or half, fails it."""
    K = 256
    x = torch.full((1, K), 2.0**-24)
    x[0, 0] = 1.0
    w = torch.ones(1, K)
    y = _sequential_fp32_dot(x[0], w[0]).reshape(1, 1)
    assert float(y) == 1.0
    exact, bound = linear_error_bound(x, w, None, torch.float32)
    assert float(exact) == 1 + 255 * 2.0**-24
    ratio = float((exact - y.double()).abs() / bound)
    assert 0.99 < ratio <= 1, ratio
    assert_linear_within_bound(y, exact, bound)
    for tighter in (bound / 2, bound * 0.99):
        with pytest.raises(AssertionError, match="exceeds the derived bound"):
            assert_linear_within_bound(y, exact, tighter)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_scale_byte_poisons_its_output_column(backend):
    """Documented: a weight block with the NaN scale (MX 0xFF) makes its output feature NaN."""
    with _linear_backend(backend):
        qt = _weight(6, 64, "mxfp4")
        scales = qt.scales.clone()
        scales[2, 1] = 0xFF
        bad = leankern.MXTensor(qt.codes, scales, qt.global_scale, qt.fmt, qt.block_size, qt.shape, qt.dtype)
        y = leankern.mx.linear(torch.randn(3, 64), bad)
        assert torch.isnan(y[:, 2]).all() and torch.isfinite(y[:, [0, 1, 3, 4, 5]]).all()


BAD = [
    (dict(x=torch.randn(2, 48)), ValueError, r"x.shape\[-1\]: expected 64 \(the in_features of the weight\), got 48"),
    (dict(x=torch.randn(2, 64, dtype=torch.float64)), TypeError, "x: expected dtype"),
    (dict(bias=torch.randn(7)), ValueError, r"bias: expected shape \(8,\), got \(7,\)"),
    (dict(bias=torch.randn(8, dtype=torch.float64)), TypeError, "bias: expected dtype"),
    (dict(act_fmt="mxfp5"), ValueError, "act_fmt: expected one of"),
    (dict(fmt="mxfp5"), ValueError, "fmt: expected one of"),
    (dict(block_size=24), ValueError, "block_size: expected a power of two"),
    (dict(scales_cut=True), ValueError, r"scales: expected shape \(8, 2\), got \(8, 1\)"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kwargs,exc,msg", BAD)
def test_rejects_bad_input(backend, kwargs, exc, msg):
    qt = _weight(8, 64, "mxint8")
    args = dict(x=torch.randn(2, 64), codes=qt.codes, scales=qt.scales, global_scale=qt.global_scale,
                fmt="mxint8", block_size=32, bias=None, act_fmt=None)
    if kwargs.pop("scales_cut", False):
        kwargs["scales"] = qt.scales[:, :1]
    args.update(kwargs)
    with _linear_backend(backend), pytest.raises(exc, match=msg):
        torch.ops.leankern.mx_linear(*args.values())


def test_frontend_rejects_a_plain_tensor_weight():
    with pytest.raises(TypeError, match="weight: expected an MXTensor"):
        leankern.mx.linear(torch.randn(2, 64), torch.randn(8, 64))


@pytest.mark.parametrize("fmt", ["nvfp4", "mxint8"])
def test_opcheck_and_compile(fmt):
    qt = _weight(16, 64, fmt)
    x, b = torch.randn(3, 64), torch.randn(16)
    args = (x, qt.codes, qt.scales, qt.global_scale, fmt, qt.block_size, b, None)
    # opcheck's test_schema compares inputs with allclose, not implemented for float8 (NV scales)
    utils = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    kw = dict(test_utils=utils) if fmt == "nvfp4" else {}
    torch.library.opcheck(torch.ops.leankern.mx_linear.default, args, **kw)
    torch.library.opcheck(torch.ops.leankern.mx_linear.default, args[:-1] + (fmt,), **kw)
    eager = leankern.mx.linear(x, qt, b)
    compiled = torch.compile(lambda x: leankern.mx.linear(x, qt, b), fullgraph=True)(x)
    assert torch.equal(eager, compiled)


def test_every_format_is_covered():
    assert set(ALL_FORMATS) == set(FORMATS)


# ------------------------------------------------------------------------------- gradients
def _effective_weight(q):
    """The fp32 [N, K] map that linear applies to x: W_hat, times the rotation's transpose when rotated."""
    import math

    w = q.dequantize(torch.float32)
    if q.rotation is None:
        return w
    n, seed = q.rotation
    K = q.shape[1]
    r = leankern.mx.hadamard_transform(torch.eye(K), n, 1.0 / math.sqrt(n), leankern.mx.random_hadamard_signs(n, seed))
    return w @ r.T  # rotate(x) = x @ r


@pytest.mark.parametrize("rotate", [None, 32])
@pytest.mark.parametrize("prepacked", [False, True])
@pytest.mark.parametrize("act_fmt", [None, "mxint8"])
def test_backward_for_x_and_bias(rotate, prepacked, act_fmt):
    # the weight is frozen; x's gradient is grad_y @ W_eff (act_fmt's quantizer straight-through), bias's the sum
    g = torch.Generator().manual_seed(3)
    q = leankern.mx.quantize(torch.randn(24, 64, generator=g), "mxfp4", rotate=rotate)
    q = leankern.mx.prepack(q) if prepacked else q
    x = torch.randn(2, 3, 64, generator=g, requires_grad=True)
    b = torch.randn(24, generator=g, requires_grad=True)
    gy = torch.randn(2, 3, 24, generator=g)
    leankern.mx.linear(x, q, b, act_fmt=act_fmt).backward(gy)
    w_eff = _effective_weight(q)
    torch.testing.assert_close(x.grad, gy @ w_eff, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad, gy.sum((0, 1)), rtol=1e-6, atol=1e-6)


def test_backward_keeps_x_dtype_and_no_grad_calls_stay_plain():
    q = leankern.mx.quantize(torch.randn(16, 32), "nvfp4")
    x = torch.randn(4, 32, dtype=torch.bfloat16, requires_grad=True)
    y = leankern.mx.linear(x, q)
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad.float(), q.dequantize(torch.float32).sum(0).expand(4, 32).bfloat16().float())
    with torch.no_grad():
        assert leankern.mx.linear(x, q).grad_fn is None
    assert leankern.mx.linear(x.detach(), q).grad_fn is None  # nothing requires grad: the op alone
