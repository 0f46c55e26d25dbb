"""NV ``scale_mode="reciprocal"``: x * min(1 / (g * s), FLT_MAX) instead of x / (g * s).

The reference (``leankern.mx.ref.mx_quantize_ref``) defines it (docs/numerics.md, "NV reciprocal
mode"); here it is checked against an independent element-by-element oracle, and every backend
that runs on this machine (C++ under each ISA the CPU supports: avx512 / avx2 / scalar, Triton
under the interpreter or on a GPU) against the reference bit for bit: all 65,536 bf16 and fp16
patterns (in order and shuffled, so NaN / Inf blocks, subnormal-only blocks and saturating blocks
all occur) at block size 16 for nvfp4 and nvint4, with the dynamic and with given global scales,
plus Gaussian tensors over the block sizes and paths the SIMD kernels branch on, and stochastic
rounding. Then how the two modes differ: the same scales; codes at most one step apart, only
where the exact division sits within two ulp of a rounding boundary; the measured frequency.
"""
from __future__ import annotations

import math

import pytest
import torch

import leankern
from leankern.mx.formats import get_format
from leankern.mx.ref import element_values, mx_dequantize_ref, mx_quantize_ref, nv_global_scale
from leankern.testing import assert_bitexact
from mx_cases import all_bit_patterns

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow notes (interpreter)

NV = ("nvfp4", "nvint4")
OPS = torch.ops.leankern
EXT = leankern.extension()
FLT_MAX = 3.4028234663852886e38
BACKENDS = ("avx512", "avx2", "scalar", "triton")


@pytest.fixture(params=BACKENDS)
def quantize(request):
    """``quantize(x, fmt, bs, mode, rand_bits, g)`` on one backend: the C++ kernels forced onto one
    ISA (``leankern._C.set_cpu_isa``), or the Triton kernel (interpreter on CPU, else CUDA)."""
    name = request.param
    if name == "triton":
        pytest.importorskip("triton")
        from leankern.core import triton_interpreting
        from leankern.triton_kernels.mx import mx_quantize_triton

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev == "cpu" and not triton_interpreting():
            pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (conftest sets it without a GPU)")

        def run(x, fmt, bs, mode, rand_bits=None, g=None):
            out = mx_quantize_triton(x.to(dev), fmt, bs, mode, None if rand_bits is None else rand_bits.to(dev),
                                     None if g is None else g.to(dev))
            return tuple(t.cpu() for t in out)

        run.interpreted = dev == "cpu"
        yield run
        return
    if EXT is None:
        pytest.skip(f"leankern._C not loaded: {leankern.extension_error()}")
    if name not in EXT.supported_isas():
        pytest.skip(f"this CPU does not support {name} (it has: {EXT.cpu_features()})")
    EXT.set_cpu_isa(name)
    try:
        def run(x, fmt, bs, mode, rand_bits=None, g=None):
            with leankern.use_backend("cpp"):
                return OPS.mx_quantize(x, fmt, bs, mode, rand_bits, g, False)

        yield run
    finally:
        EXT.set_cpu_isa("auto")


def _given_scales(x, fmt):
    """Static global scales: a power of two (exact ties x / d happen), the dynamic g of x, a tiny one
    (saturating block scales, v overflowing to Inf) and a large one (subnormal / clamped block scales)."""
    g_dyn = nv_global_scale(x, get_format(fmt).element)
    return {"one": torch.tensor(1.0), "dyn_value": g_dyn, "tiny": torch.tensor(2.0**-126),
            "huge": torch.tensor(1e30)}


# ------------------------------------------------------------------------------------------------
# The reference against an independent oracle
# ------------------------------------------------------------------------------------------------
def _oracle_codes(x, fmt, bs, g, scale_bytes):
    """Magnitude codes of |fp32(x * min(fp32(1 / fp32(g * s)), FLT_MAX))|: nearest grid value, ties to the
    even code, saturating at the element max (float64 search over the grid)."""
    el = get_format(fmt).element
    s = scale_bytes.view(torch.float8_e4m3fn).to(torch.float32)  # [R, nb]
    d = (g.to(torch.float32) * s).repeat_interleave(bs, -1)
    r = torch.clamp(torch.ones_like(d) / d, max=FLT_MAX)
    v = (x.to(torch.float32) * r).abs().to(torch.float64).clamp(max=el.max_value)
    grid = element_values(el)  # [C]
    dist = (v.unsqueeze(-1) - grid).abs()  # [R, K, C]
    best = dist.min(dim=-1, keepdim=True).values
    cand = (dist == best)
    idx = torch.arange(grid.numel())
    # ties: the even code (RNE); otherwise the unique nearest
    even_pick = torch.where(cand & (idx % 2 == 0), idx, grid.numel()).min(dim=-1).values
    any_pick = torch.where(cand, idx, grid.numel()).min(dim=-1).values
    return torch.where(cand.sum(-1) > 1, even_pick, any_pick)


def _magnitude_codes(codes, fmt):
    el = get_format(fmt).element
    b = codes.view(torch.uint8).to(torch.int64)
    raw = torch.stack([b & 0xF, b >> 4], dim=-1).flatten(-2)
    if el.is_int:
        return torch.where(raw >= 8, 16 - raw, raw)
    return raw & 0x7


@pytest.mark.parametrize("fmt", NV)
@pytest.mark.parametrize("g_kind", ["dynamic", "one", "tiny", "huge"])
def test_reference_matches_elementwise_oracle(fmt, g_kind):
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(3)) * 4
    x[0, :16] = torch.tensor([2.5, -2.5, 5.0, 1.25, 0.0, -0.0, 6.0, 7.0] * 2) * 1.125  # exact ties
    g = None if g_kind == "dynamic" else _given_scales(x, fmt)[g_kind]
    codes, scales, g_out = mx_quantize_ref(x, fmt, 16, "reciprocal", None, g)
    ref_scales = mx_quantize_ref(x, fmt, 16, "rceil", None, g)[1]
    assert torch.equal(scales.view(torch.uint8), ref_scales.view(torch.uint8))  # s as in the division mode
    want = _oracle_codes(x, fmt, 16, g_out, scales)
    assert torch.equal(_magnitude_codes(codes, fmt), want)


def test_reference_reciprocal_is_clamped_at_flt_max():
    """d = g * s below 2^-128: 1 / d overflows; r = FLT_MAX, so zeros stay 0 (no 0 * Inf = NaN)."""
    x = torch.zeros(1, 16)
    x[0, 1] = 2.0**-149  # the smallest subnormal: s = 2^-9 (raised), d = 2^-135
    codes, scales, _ = mx_quantize_ref(x, "nvfp4", 16, "reciprocal", None, torch.tensor(2.0**-126))
    assert scales.view(torch.uint8).item() == 1
    mags = _magnitude_codes(codes, "nvfp4")[0]
    assert mags[0] == 0 and mags[1] == 0  # 2^-149 * FLT_MAX ~ 2^-21: rounds to 0
    assert not torch.isnan(mx_dequantize_ref(codes, scales, torch.tensor(2.0**-126), "nvfp4", 16)).any()


# ------------------------------------------------------------------------------------------------
# Every backend against the reference
# ------------------------------------------------------------------------------------------------
def _assert_same(got, want, what):
    assert_bitexact(tuple(got), tuple(want), name=what)


@pytest.mark.parametrize("fmt", NV)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_all_16bit_patterns_bitexact(quantize, fmt, dtype, order):
    x = all_bit_patterns(dtype, None if order == "sorted" else 7)  # [2048, 32]: two blocks of 16 per row
    for g_name, g in [("dynamic", None)] + list(_given_scales(x, fmt).items()):
        want = mx_quantize_ref(x, fmt, 16, "reciprocal", None, g)
        _assert_same(quantize(x, fmt, 16, "reciprocal", None, g), want, f"{fmt} {dtype} {order} g={g_name}")


@pytest.mark.parametrize("fmt", NV)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("bs", [2, 8, 16, 32, 1024])
def test_gaussian_blocks_bitexact(quantize, fmt, dtype, bs):
    """Block sizes below, at and above the vector width (general and fast SIMD paths), a tensor of
    several parallel chunks (the NV amax parked by the first pass), NaN / Inf blocks, zeros. Under the Triton
    interpreter rows of 1,024 (every block size still fits): 4,096 took ~8 s a case there, 30 cases."""
    gen = torch.Generator().manual_seed(bs)
    cols = 1024 if getattr(quantize, "interpreted", False) else 4096
    x = torch.randn(40, cols, generator=gen) * torch.logspace(-3, 3, 40).unsqueeze(-1)
    x[1, :bs] = 0.0
    x[2, 5] = float("nan")
    x[3, -1] = float("-inf")
    x = x.to(dtype)
    for g in (None, torch.tensor(1.0)):
        want = mx_quantize_ref(x, fmt, bs, "reciprocal", None, g)
        _assert_same(quantize(x, fmt, bs, "reciprocal", None, g), want, f"{fmt} {dtype} bs={bs} g={g}")


@pytest.mark.parametrize("fmt", NV)
def test_stochastic_rounding_bitexact(quantize, fmt):
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(16, 512, generator=gen) * 3).to(torch.bfloat16)
    rb = torch.randint(-(2**31), 2**31, x.shape, generator=gen, dtype=torch.int32)
    for g in (None, torch.tensor(1.0)):
        want = mx_quantize_ref(x, fmt, 16, "reciprocal", rb, g)
        _assert_same(quantize(x, fmt, 16, "reciprocal", rb, g), want, f"{fmt} SR g={g}")


@pytest.mark.parametrize("fmt", NV)
def test_rceil_default_unchanged(quantize, fmt):
    """"rceil" stays the exact division (the pre-existing definition), on every backend."""
    x = all_bit_patterns(torch.bfloat16, 5)
    for g in (None, torch.tensor(1.0)):
        want = mx_quantize_ref(x, fmt, 16, "rceil", None, g)
        _assert_same(quantize(x, fmt, 16, "rceil", None, g), want, f"{fmt} rceil g={g}")


# ------------------------------------------------------------------------------------------------
# The op boundary and the front-end
# ------------------------------------------------------------------------------------------------
MX_ERROR = r"^scale_mode: 'reciprocal' is only for NV formats \(.*\), got fmt='mxfp4'"


@pytest.mark.parametrize("backend", ["ref", "cpp"])
def test_mx_formats_reject_reciprocal(backend):
    if backend == "cpp" and EXT is None:
        pytest.skip(f"leankern._C not loaded: {leankern.extension_error()}")
    x = torch.randn(2, 64)
    with leankern.use_backend(backend), pytest.raises(ValueError, match=MX_ERROR):
        OPS.mx_quantize(x, "mxfp4", 32, "reciprocal", None, None, False)
    with pytest.raises(ValueError, match=MX_ERROR):
        leankern.mx.quantize(x, "mxfp4", scale_mode="reciprocal")
    with pytest.raises(ValueError, match=MX_ERROR):  # the fake (meta tensors, torch.compile)
        OPS.mx_quantize(x.to("meta"), "mxfp4", 32, "reciprocal", None, None, False)
    with pytest.raises(ValueError, match="scale_mode: 'reciprocal' is only for NV formats"):
        mx_quantize_ref(x, "mxint8", 32, "reciprocal")


def test_triton_rejects_reciprocal_for_mx():
    pytest.importorskip("triton")
    from leankern.triton_kernels.mx import quantize_config

    with pytest.raises(ValueError, match="scale_mode: 'reciprocal' is only for NV formats"):
        quantize_config("mxfp4", 32, "reciprocal", torch.float32, False)


def test_front_end_records_the_mode():
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    qt = leankern.mx.quantize(x, "nvfp4", scale_mode="reciprocal")
    assert qt.scale_mode == "reciprocal"
    want = mx_quantize_ref(x, "nvfp4", 16, "reciprocal")
    _assert_same((qt.codes, qt.scales, qt.global_scale), want, "front-end")
    assert leankern.mx.quantize(x, "nvfp4").scale_mode == "rceil"
    assert type(qt).from_state_dict(qt.state_dict()).scale_mode == "reciprocal"  # round-trips


def test_opcheck_reciprocal():
    x = torch.randn(4, 64)
    torch.library.opcheck(OPS.mx_quantize.default, (x, "nvint4", 16, "reciprocal", None, None, False))


# ------------------------------------------------------------------------------------------------
# How the two modes differ
# ------------------------------------------------------------------------------------------------
def _midpoint_distance_ulps(v: torch.Tensor, fmt: str) -> torch.Tensor:
    """|v - nearest rounding boundary| in ulps of fp32 at that boundary (v >= 0, fp32)."""
    grid = element_values(get_format(fmt).element)
    mids = (grid[1:] + grid[:-1]) / 2  # the RNE boundaries
    m = mids[(v.to(torch.float64).unsqueeze(-1) - mids).abs().argmin(-1)]
    ulp = torch.ldexp(torch.ones_like(m), torch.frexp(m)[1].to(torch.float64) - 24)
    return (v.to(torch.float64) - m).abs() / ulp


def _compare_modes(x, fmt, g):
    a = mx_quantize_ref(x, fmt, 16, "rceil", None, g)
    b = mx_quantize_ref(x, fmt, 16, "reciprocal", None, g)
    assert torch.equal(a[1].view(torch.uint8), b[1].view(torch.uint8)) and torch.equal(a[2], b[2])
    ma, mb = _magnitude_codes(a[0], fmt), _magnitude_codes(b[0], fmt)
    diff = ma != mb
    # signs agree wherever the magnitude does (FP keeps -0, INT has none)
    d = (a[2] * a[1].to(torch.float32)).repeat_interleave(16, -1)
    v_div = (x.to(torch.float32) / d).abs()  # the exact mode's fp32 quotient
    return a, b, diff, (ma - mb).abs(), v_div


@pytest.mark.parametrize("fmt", NV)
def test_modes_differ_by_at_most_one_step_near_boundaries(fmt):
    """Codes differ only where x / d is within 2 ulp of a rounding boundary, by exactly one step."""
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(256, 4096, generator=torch.Generator().manual_seed(0)).to(dtype)
        for g_name, g in (("dynamic", None), ("one", torch.tensor(1.0))):
            a, b, diff, step, v_div = _compare_modes(x, fmt, g)
            assert int(step.max()) <= 1
            assert (_midpoint_distance_ulps(v_div[diff], fmt) <= 2).all()
            rows.append((str(dtype)[6:], g_name, int(diff.sum()), diff.numel()))
    print(f"\n{fmt}: codes differing (reciprocal vs rceil) on N(0,1): " +
          ", ".join(f"{dt} g={g}: {n}/{tot} = {n / tot:.1e}" for dt, g, n, tot in rows))
    # an exact power-of-two g with 8-bit bf16 data gives exact ties x / d = 2.5, 5, ...: they must show up
    assert any(n > 0 for dt, g, n, _ in rows if g == "one" and dt == "bfloat16")


@pytest.mark.parametrize("fmt", NV)
def test_modes_differ_rarely_on_gaussian_data(fmt):
    """Measured rates (docs/numerics.md): dynamic g, bf16 data: 0 to ~1e-3 (nvfp4 2.3e-4 on average:
    exact ties need an amax that makes g short); a power-of-two g on bf16 data (exact ties): ~5e-4
    (nvfp4) / ~7e-4 (nvint4); QSNR equal within 0.01 dB."""
    x = torch.randn(256, 4096, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    for g, bound in ((None, 2e-3), (torch.tensor(1.0), 2e-3)):
        a, b, diff, _, _ = _compare_modes(x, fmt, g)
        assert diff.float().mean() <= bound
        xa, xb = (mx_dequantize_ref(*q, fmt, 16) for q in (a, b))
        qsnr = [-10 * math.log10(((y - x.float()) ** 2).sum() / (x.float() ** 2).sum()) for y in (xa, xb)]
        assert abs(qsnr[0] - qsnr[1]) < 0.01
