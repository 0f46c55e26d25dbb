"""Public MX ops: registration (opcheck, torch.compile), input validation, container, layouts, rotation."""
import math
import re

import pytest
from hypothesis import given, strategies as st
import torch

import leankern
from leankern.mx.formats import FORMATS
from leankern.mx import CAPABILITIES
from leankern.mx.layout import swizzle_scales, unswizzle_scales
from mx_cases import ALL_FORMATS, CPU_BACKENDS, HEADLINE_FORMATS, skip_unless_runs_on_cpu


def _x(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ------------------------------------------------------------------------------------ registration

# opcheck's test_schema compares outputs with allclose, which torch does not implement for float8
# tensors (FP8 codes, NV scales): those ops run the other three opcheck utilities.
ALL_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
NO_FP8_COMPARE = ALL_UTILS[1:]


@pytest.mark.parametrize("backend", ["ref", "default"])
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_opcheck_quantize_dequantize(backend, fmt):
    f = FORMATS[fmt]
    bs = f.default_block_size
    x = _x(3, 2 * bs, dtype=torch.bfloat16)
    utils = NO_FP8_COMPARE if torch.float8_e4m3fn in (f.code_dtype, f.scale_dtype) or "e5m2" in fmt else ALL_UTILS
    ctx = leankern.use_backend("ref") if backend == "ref" else _nullcontext()
    with ctx:
        torch.library.opcheck(torch.ops.leankern.mx_quantize.default, (x, fmt, bs, "rceil", None, None, False),
                              test_utils=utils)
        q = torch.ops.leankern.mx_quantize(x, fmt, bs, "floor", None, None, False)
        torch.library.opcheck(torch.ops.leankern.mx_dequantize.default, (*q, fmt, bs, torch.float16), test_utils=utils)
        rb = torch.randint(-(2**31), 2**31, x.shape, dtype=torch.int32)
        torch.library.opcheck(torch.ops.leankern.mx_quantize.default, (x, fmt, bs, "rceil", rb, None, False),
                              test_utils=utils)


def test_opcheck_hadamard():
    x = _x(4, 64)
    signs = leankern.mx.random_hadamard_signs(32)
    torch.library.opcheck(torch.ops.leankern.hadamard_transform.default, (x, 32, 0.125, signs))
    torch.library.opcheck(torch.ops.leankern.hadamard_transform.default, (x.half(), 64, 1.0, None))


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def test_torch_compile_fullgraph():
    def step(x):
        xr = leankern.mx.rotate(x, 32, seed=3)
        qt = leankern.mx.quantize(xr, "mxfp4")
        qn = leankern.mx.quantize(xr, "nvfp4")
        return qt.dequantize(torch.float32) + qn.dequantize(torch.float32)

    x = _x(8, 64)
    eager = step(x)
    compiled = torch.compile(step, fullgraph=True)(x)
    assert torch.equal(eager, compiled)


# ------------------------------------------------------------------------------------ validation

BAD_QUANTIZE = [
    (dict(x=torch.ones(2, 32, dtype=torch.int32)), TypeError, "x: expected dtype"),
    (dict(block_size=24), ValueError, "block_size: expected a power of two"),
    (dict(block_size=2048), ValueError, r"block_size: expected a power of two in \[2, 1024\], got 2048"),
    (dict(x=torch.ones(2, 48)), ValueError, r"x.shape\[-1\]: expected a multiple of block_size=32, got 48"),
    (dict(fmt="mxfp5"), ValueError, "fmt: expected one of"),
    (dict(scale_mode="ceil"), ValueError, "scale_mode: expected one of"),
    (dict(rand_bits=torch.zeros(2, 32, dtype=torch.int64)), TypeError, "rand_bits: expected dtype"),
    (dict(rand_bits=torch.zeros(2, 64, dtype=torch.int32)), ValueError, r"rand_bits: expected shape \(2, 32\)"),
    (dict(rand_bits=torch.zeros(2, 32, dtype=torch.int32, device="meta")), ValueError, "rand_bits: expected a tensor on cpu"),
    (dict(global_scale=torch.tensor(1.0)), ValueError, "global_scale: only NV formats"),
    (dict(fmt="nvfp4", block_size=16, global_scale=torch.tensor(0.0)), ValueError, "global_scale: expected a finite value >= 2\\^-126"),
    (dict(fmt="nvfp4", block_size=16, global_scale=torch.ones(2)), ValueError, r"global_scale: expected shape \(\)"),
    (dict(x=torch.tensor([[float("nan")] + [1.0] * 31]), strict=True), ValueError, "x: strict=True expects only finite"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kwargs,exc,msg", BAD_QUANTIZE)
def test_quantize_rejects_bad_input(backend, kwargs, exc, msg):
    skip_unless_runs_on_cpu(backend)
    args = dict(x=torch.ones(2, 32), fmt="mxfp8_e4m3", block_size=32, scale_mode="rceil", rand_bits=None,
                global_scale=None, strict=False)
    args.update(kwargs)
    with leankern.use_backend(backend), pytest.raises(exc, match=msg):
        torch.ops.leankern.mx_quantize(*args.values())


def test_frontend_rejects_bad_input():
    x = torch.ones(2, 32)
    with pytest.raises(ValueError, match="rounding: expected one of"):
        leankern.mx.quantize(x, rounding="nearest")
    with pytest.raises(ValueError, match="only used with rounding='stochastic'"):
        leankern.mx.quantize(x, seed=3)
    with pytest.raises(TypeError, match="qt: expected an MXTensor"):
        leankern.mx.dequantize(x)
    with pytest.raises(ValueError, match="backend: expected one of"):
        with leankern.use_backend("fast"):
            pass


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dequantize_rejects_bad_input(backend):
    skip_unless_runs_on_cpu(backend)
    with leankern.use_backend("ref"):
        q = torch.ops.leankern.mx_quantize(_x(2, 64), "mxfp4", 32, "rceil", None, None, False)
    with leankern.use_backend(backend):
        with pytest.raises(TypeError, match="codes: expected dtype"):
            torch.ops.leankern.mx_dequantize(q[0].to(torch.int8), q[1], q[2], "mxfp4", 32, torch.float32)
        with pytest.raises(ValueError, match=r"scales: expected shape \(2, 2\), got \(2, 1\)"):
            torch.ops.leankern.mx_dequantize(q[0], q[1][:, :1], q[2], "mxfp4", 32, torch.float32)
        with pytest.raises(TypeError, match="out_dtype: expected one of"):
            torch.ops.leankern.mx_dequantize(q[0], q[1], q[2], "mxfp4", 32, torch.int32)
        with pytest.raises(ValueError, match="K \\(elements per row of codes\\): expected a multiple of block_size=64"):
            torch.ops.leankern.mx_dequantize(q[0][:, :16], q[1][:, :1], q[2], "mxfp4", 64, torch.float32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("g", [0.0, 2.0**-127, float("inf"), float("nan"), -1.0])
def test_nv_global_scale_value_checked_by_every_raw_op(backend, g):
    skip_unless_runs_on_cpu(backend)
    x = _x(2, 32)
    with leankern.use_backend("ref"):
        codes, scales, _ = torch.ops.leankern.mx_quantize(x, "nvfp4", 16, "rceil", None, None, False)
    bad = torch.tensor(g, dtype=torch.float32)
    with leankern.use_backend(backend):
        with pytest.raises(ValueError, match=r"global_scale: expected a finite value >= 2\^-126"):
            torch.ops.leankern.mx_quantize(x, "nvfp4", 16, "rceil", None, bad, False)
        with pytest.raises(ValueError, match=r"global_scale: expected a finite value >= 2\^-126"):
            torch.ops.leankern.mx_dequantize(codes, scales, bad, "nvfp4", 16, torch.float32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_hadamard_rejects_bad_input(backend):
    skip_unless_runs_on_cpu(backend)
    with leankern.use_backend(backend):
        with pytest.raises(ValueError, match="chunk_size: expected a power of two"):
            leankern.mx.hadamard_transform(torch.ones(2, 48), 48)
        with pytest.raises(ValueError, match=r"x.shape\[-1\]: expected a multiple of chunk_size=32, got 48"):
            leankern.mx.hadamard_transform(torch.ones(2, 48), 32)
        with pytest.raises(ValueError, match=r"signs: expected shape \(32,\), got \(16,\)"):
            leankern.mx.hadamard_transform(torch.ones(2, 64), 32, signs=torch.ones(16))


# One message per bad argument, the same text (and exception type) from every backend: the Python
# checks (leankern.core) and the C++ kernels' checks (csrc/common/torch_checks.h) agree.
_FLOATS = "['torch.float32', 'torch.bfloat16', 'torch.float16']"
_I8, _U8 = torch.int8, torch.uint8


def _chunk_limits(backend):
    lo, hi = CAPABILITIES["hadamard_transform"][backend].limit("chunk_size")
    return rf"\[{lo}, {hi}\]"


# (id, call(x) with x = randn(2, 64), exception, message regex (a function of the backend, or a string))
ARGUMENT_ERRORS = [
    ("fmt", lambda x: _q(x, "mxfp5", 32), ValueError, r"^fmt: expected one of .*, got 'mxfp5'"),
    ("block_size_24", lambda x: _q(x, "mxfp4", 24), ValueError,
     r"^block_size: expected a power of two in \[2, 1024\], got 24"),
    ("block_size_2048", lambda x: _q(x, "mxfp4", 2048), ValueError,
     r"^block_size: expected a power of two in \[2, 1024\], got 2048"),
    ("x_not_a_multiple", lambda x: _q(x[:, :48], "mxfp4", 32), ValueError,
     r"^x\.shape\[-1\]: expected a multiple of block_size=32, got 48"),
    ("scale_mode", lambda x: _q(x, "mxfp4", 32, "ceil"), ValueError,
     r"^scale_mode: expected one of \('rceil', 'floor', 'reciprocal'\), got 'ceil'"),
    ("scale_mode_reciprocal_mx", lambda x: _q(x, "mxfp4", 32, "reciprocal"), ValueError,
     r"^scale_mode: 'reciprocal' is only for NV formats \(.*\), got fmt='mxfp4'"),
    ("x_dtype", lambda x: _q(x.double(), "mxfp4", 32), TypeError,
     "^" + re.escape(f"x: expected dtype in {_FLOATS}, got torch.float64")),
    ("rand_bits_dtype", lambda x: _q(x, "mxfp4", 32, rand_bits=x), TypeError,
     r"^rand_bits: expected dtype in \['torch.int32'\], got torch.float32"),
    ("rand_bits_shape", lambda x: _q(x, "mxfp4", 32, rand_bits=torch.zeros(3, dtype=torch.int32)), ValueError,
     r"^rand_bits: expected shape \(2, 64\), got \(3,\)"),
    ("global_scale_shape", lambda x: _q(x, "nvfp4", 16, global_scale=torch.ones(2)), ValueError,
     r"^global_scale: expected shape \(\), got \(2,\)"),
    ("codes_dtype", lambda x: _dq(torch.zeros(2, 64, dtype=torch.int16), torch.zeros(2, 2, dtype=_U8)), TypeError,
     r"^codes: expected dtype in \['torch.int8'\], got torch.int16"),
    ("scales_shape", lambda x: _dq(torch.zeros(2, 64, dtype=_I8), torch.zeros(2, 3, dtype=_U8)), ValueError,
     r"^scales: expected shape \(2, 2\), got \(2, 3\)"),
    ("out_dtype", lambda x: _dq(torch.zeros(2, 64, dtype=_I8), torch.zeros(2, 2, dtype=_U8), torch.float64),
     TypeError, "^" + re.escape(f"out_dtype: expected one of {_FLOATS}, got torch.float64")),
    ("chunk_size", lambda x: torch.ops.leankern.hadamard_transform(x, 48, 1.0, None), ValueError,
     lambda b: rf"^chunk_size: expected a power of two in {_chunk_limits(b)}, got 48"),
    ("signs_shape", lambda x: torch.ops.leankern.hadamard_transform(x, 32, 1.0, torch.ones(16)), ValueError,
     r"^signs: expected shape \(32,\), got \(16,\)"),
    ("x_not_a_multiple_of_chunk", lambda x: torch.ops.leankern.hadamard_transform(x[:, :48], 32, 1.0, None),
     ValueError, r"^x\.shape\[-1\]: expected a multiple of chunk_size=32, got 48"),
]


def _q(x, fmt, bs, mode="rceil", rand_bits=None, global_scale=None):
    return torch.ops.leankern.mx_quantize(x, fmt, bs, mode, rand_bits, global_scale, False)


def _dq(codes, scales, out_dtype=torch.float32):
    return torch.ops.leankern.mx_dequantize(codes, scales, torch.ones(()), "mxint8", 32, out_dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("call,exc,match", [pytest.param(*c[1:], id=c[0]) for c in ARGUMENT_ERRORS])
def test_argument_error_messages_agree_across_backends(backend, call, exc, match):
    skip_unless_runs_on_cpu(backend)
    x = torch.randn(2, 64)
    with leankern.use_backend(backend), pytest.raises(exc, match=match(backend) if callable(match) else match):
        call(x)


@pytest.mark.parametrize("backend", ["ref", "cpp"])
def test_forced_backend_that_cannot_run_says_so(backend):
    if backend == "cpp" and leankern.extension() is not None:
        pytest.skip("the extension is built: 'cpp' can run here")
    if backend == "ref":  # a forced backend for another device
        with leankern.use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' runs cuda tensors"):
            leankern.mx.quantize(torch.ones(2, 32))
    else:
        with leankern.use_backend("cpp"), pytest.raises(RuntimeError, match="leankern._C extension is not available"):
            leankern.mx.quantize(torch.ones(2, 32))


# ------------------------------------------------------------------------------------ stochastic rounding

def test_stochastic_rounding_is_unbiased_chi_squared():
    """x = 1.3 in an MXINT8 block scaled by 1: rounds up to 2 with probability 0.3 (chi-squared, 1 dof)."""
    n = 20000
    x = torch.full((n // 32, 32), 1.3)
    x[:, 0] = 127.0  # pins the block scale at 2^0
    qt = leankern.mx.quantize(x, "mxint8", rounding="stochastic", seed=11)
    codes = qt.codes[:, 1:].flatten()
    assert set(codes.unique().tolist()) == {1, 2}
    ups = int((codes == 2).sum())
    total = codes.numel()
    p = float(torch.tensor(1.3, dtype=torch.float32)) - 1.0
    expected = total * p
    chi2 = (ups - expected) ** 2 / expected + (ups - expected) ** 2 / (total - expected)
    assert chi2 < 30.0, f"chi2={chi2:.1f} (p < 1e-7 threshold), ups={ups}, expected={expected:.0f}"


def test_stochastic_rounding_replays_from_seed_and_bits():
    x = _x(4, 64)
    a = leankern.mx.quantize(x, "mxfp4", rounding="stochastic", seed=5)
    b = leankern.mx.quantize(x, "mxfp4", rounding="stochastic", seed=5)
    c = leankern.mx.quantize(x, "mxfp4", rounding="stochastic", seed=6)
    assert torch.equal(a.codes, b.codes) and not torch.equal(a.codes, c.codes)
    rb = torch.randint(-(2**31), 2**31, x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.int32)
    d = leankern.mx.quantize(x, "mxfp4", rounding="stochastic", rand_bits=rb)
    assert torch.equal(a.codes, d.codes)


def test_stochastic_rounding_without_seed_draws_fresh_bits_from_torch():
    x = _x(8, 256)
    first = leankern.mx.quantize(x, "mxfp4", rounding="stochastic")
    second = leankern.mx.quantize(x, "mxfp4", rounding="stochastic")
    assert not torch.equal(first.codes, second.codes), "no seed: each call must draw new random words"
    torch.manual_seed(1234)
    a = leankern.mx.quantize(x, "mxfp4", rounding="stochastic")
    torch.manual_seed(1234)
    b = leankern.mx.quantize(x, "mxfp4", rounding="stochastic")
    assert torch.equal(a.codes, b.codes), "same torch.manual_seed: same words"
    torch.manual_seed(1234)  # and they are exactly the words torch's default generator gives
    rb = torch.randint(-(2**31), 2**31, x.shape, dtype=torch.int32)
    assert torch.equal(a.codes, leankern.mx.quantize(x, "mxfp4", rounding="stochastic", rand_bits=rb).codes)


# ------------------------------------------------------------------------------------ NV per-tensor scale

@pytest.mark.parametrize("fmt", ["nvfp4", "nvint4"])
def test_nv_encode_scale_is_the_reciprocal_of_the_decode_scale(fmt):
    x = _x(4, 64)
    g = torch.tensor(0.0037109375)  # 2^-8 * 0.95: 1/g is not a power of two
    by_decode = leankern.mx.quantize(x, fmt, global_scale=g)
    encode = 1.0 / g
    by_encode = leankern.mx.quantize(x, fmt, global_encode_scale=encode)
    assert by_encode.global_scale.item() == (1.0 / encode).item()
    if by_encode.global_scale.item() == g.item():  # 1/(1/g) rounded back to g: identical quantization
        assert torch.equal(by_decode.codes, by_encode.codes)
    exact = leankern.mx.quantize(x, fmt, global_scale=(1.0 / encode))
    assert torch.equal(exact.codes, by_encode.codes) and torch.equal(
        exact.scales.view(torch.uint8), by_encode.scales.view(torch.uint8))
    # a Python float works too, and lands as a device fill of the same fp32 value
    by_float = leankern.mx.quantize(x, fmt, global_encode_scale=float(encode))
    assert by_float.global_scale.item() == by_encode.global_scale.item()


def test_nv_scale_arguments_are_exclusive_and_checked():
    x = _x(2, 32)
    with pytest.raises(ValueError, match="pass at most one"):
        leankern.mx.quantize(x, "nvfp4", global_scale=1.0, global_encode_scale=1.0)
    for encode in (float("inf"), 0.0, float("nan"), -1.0, 2.0**127):  # decode g = 0, inf, nan, -1, 2^-127
        # the error names the argument given and its value (not the reciprocal the op is handed)
        with pytest.raises(ValueError, match=r"global_encode_scale: expected a value > 0 .* got " + re.escape(repr(encode))):
            leankern.mx.quantize(x, "nvfp4", global_encode_scale=encode)
        with pytest.raises(ValueError, match=r"global_encode_scale: expected a value > 0"):
            leankern.mx.quantize(x, "nvfp4", global_encode_scale=torch.tensor(encode))
    with pytest.raises(ValueError, match=r"global_encode_scale: expected shape \(\), got \(1,\)"):
        leankern.mx.quantize(x, "nvfp4", global_encode_scale=torch.tensor([100.0]))
    with pytest.raises(TypeError, match=r"global_encode_scale: expected dtype in \['torch.float32'\], got torch.float64"):
        leankern.mx.quantize(x, "nvfp4", global_encode_scale=torch.tensor(100.0, dtype=torch.float64))
    g = leankern.mx.quantize(x, "nvfp4", global_encode_scale=2.0**126).global_scale  # the edge: g = 2^-126
    assert float(g) == 2.0**-126


# ------------------------------------------------------------------------------------ container

@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_mxtensor_state_dict_round_trip(fmt, tmp_path):
    x = _x(4, 128, dtype=torch.bfloat16)
    qt = leankern.mx.quantize(x, fmt)
    sd = qt.state_dict(prefix="w.")
    assert set(sd) == {"w.codes", "w.scales", "w.global_scale", "w.meta"}
    back = leankern.MXTensor.from_state_dict(sd, prefix="w.")
    assert back.fmt == qt.fmt and back.shape == qt.shape and back.dtype == torch.bfloat16
    assert torch.equal(back.dequantize(), qt.dequantize())
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "q.safetensors"
    safetensors.save_file(sd, str(path))
    loaded = leankern.MXTensor.from_state_dict(safetensors.load_file(str(path)), prefix="w.")
    assert torch.equal(loaded.dequantize(), qt.dequantize())


def test_mxtensor_bytes_and_errors():
    x = _x(64, 4096)
    assert leankern.mx.quantize(x, "mxfp4").bits_per_element == 4.25
    assert leankern.mx.quantize(x, "mxfp8").bits_per_element == 8.25
    nv = leankern.mx.quantize(x, "nvfp4")
    assert nv.nbytes == 64 * 2048 + 64 * 256 + 4  # codes + e4m3 scales + fp32 global scale
    with pytest.raises(KeyError, match="missing key"):
        leankern.MXTensor.from_state_dict({"codes": nv.codes})
    d = nv.dequantize()
    assert d.dtype == torch.float32 and d.shape == x.shape
    assert nv.dequantize(torch.bfloat16).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------ swizzled scales

def test_swizzle_byte_positions_by_hand():
    rows, cols = 130, 5  # pads to 256 x 8: two row tiles, two column tiles
    s = torch.arange(rows * cols, dtype=torch.int32).remainder(251).to(torch.uint8).reshape(rows, cols) + 1
    buf = swizzle_scales(s)
    assert buf.shape == (256 * 8,)
    for (r, c) in [(0, 0), (1, 0), (32, 0), (33, 2), (127, 3), (128, 0), (129, 4), (5, 4)]:
        rt, rr, ct, cc = r // 128, r % 128, c // 4, c % 4
        i, j = rr // 32, rr % 32
        off = (rt * 2 + ct) * 512 + 16 * j + 4 * i + cc
        assert int(buf[off]) == int(s[r, c]), (r, c)
    assert int((buf == 0).sum()) == 256 * 8 - rows * cols  # padding: the valid scale byte 0, not garbage
    assert torch.equal(unswizzle_scales(buf, rows, cols), s)


def test_quantize_swizzle_round_trip():
    x = _x(3, 5, 64)
    for fmt in ("mxfp4", "nvfp4"):
        qt = leankern.mx.quantize(x, fmt)
        sw = leankern.mx.quantize(x, fmt, swizzle=True)
        assert sw.scale_layout == "swizzled_128x4" and sw.scales.dim() == 1
        assert torch.equal(sw.row_major_scales().view(torch.uint8), qt.scales.view(torch.uint8))
        assert torch.equal(sw.dequantize(), qt.dequantize())
        back = leankern.MXTensor.from_state_dict(sw.state_dict())
        assert torch.equal(back.dequantize(), qt.dequantize())


# ------------------------------------------------------------------------------------ Hadamard

def _sylvester(n):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@pytest.mark.parametrize("n", [2, 8, 32, 256])
def test_hadamard_matches_dense_matrix(n):
    x = _x(6, 3 * n)
    signs = leankern.mx.random_hadamard_signs(n, seed=2)
    y = leankern.mx.hadamard_transform(x, n, signs=signs)
    dense = (x.double().reshape(-1, n) @ _sylvester(n) / math.sqrt(n) * signs.double()).reshape(x.shape)
    torch.testing.assert_close(y.double(), dense, rtol=1e-6, atol=1e-6)
    twice = leankern.mx.hadamard_transform(leankern.mx.hadamard_transform(x, n), n)
    torch.testing.assert_close(twice, x, rtol=1e-5, atol=1e-5)


def test_rotation_preserves_gemm_and_tames_outliers():
    x = _x(16, 256, seed=1)
    w = _x(32, 256, seed=2)
    x[:, 7] *= 50.0  # an outlier channel
    xr, wr = leankern.mx.rotate(x, 32, seed=9), leankern.mx.rotate(w, 32, seed=9)
    torch.testing.assert_close(xr @ wr.T, x @ w.T, rtol=1e-4, atol=1e-3)
    crest = lambda t: (t.reshape(-1, 32).abs().amax(-1) / t.reshape(-1, 32).pow(2).mean(-1).sqrt()).max()
    assert crest(xr) < 0.6 * crest(x)


@given(k=st.integers(1, 300), block_size=st.sampled_from([2, 16, 32, 64, 128]), fmt=st.sampled_from(ALL_FORMATS))
def test_last_dim_not_a_multiple_of_block_is_a_clear_error(k, block_size, fmt):
    """Documented contract: K % block_size != 0 raises ValueError naming both (never pads silently)."""
    x = torch.ones(3, k)
    if k % block_size == 0:
        assert leankern.mx.quantize(x, fmt, block_size=block_size).shape == (3, k)
        return
    with pytest.raises(ValueError, match=rf"x.shape\[-1\]: expected a multiple of block_size={block_size}, got {k}"):
        leankern.mx.quantize(x, fmt, block_size=block_size)


def test_mxtensor_checks_its_codes_and_scales_against_its_shape():
    import leankern

    q = leankern.mx.quantize(torch.randn(16, 64), "mxfp4")
    with pytest.raises(ValueError, match=r"codes: expected shape \(16, 32\) for an MXTensor of shape \(16, 64\) in "
                                         r"mxfp4 \(two 4-bit codes per byte\), got \(16, 16\)"):
        leankern.mx.MXTensor(q.codes[:, :16], q.scales, q.global_scale, "mxfp4", 32, (16, 64), torch.float32)
    with pytest.raises(ValueError, match=r"scales: expected shape \(16, 2\) \(one per block of 32 along K=64\)"):
        leankern.mx.MXTensor(q.codes, q.scales[:, :1], q.global_scale, "mxfp4", 32, (16, 64), torch.float32)


def test_linear_names_the_weight_on_a_device_mismatch():
    import leankern

    q = leankern.mx.quantize(torch.randn(16, 64), "mxint8")
    with pytest.raises(ValueError, match=r"weight: expected an MXTensor on meta \(the device of x\), got cpu"):
        leankern.mx.linear(torch.randn(2, 64, device="meta"), q)
    w = leankern.sefp.quantize(torch.randn(16, 64))
    with pytest.raises(ValueError, match=r"w: expected an SEFPTensor on meta \(the device of x\), got cpu"):
        leankern.sefp.linear(torch.randn(2, 64, device="meta"), w, 4)
