"""The SEFP C++ CPU kernels (csrc/sefp/), under every ISA this CPU runs, against leankern.sefp.ref.

* sefp_quantize / sefp_dequantize: bit for bit (planes, exponents, output bits incl. -0.0), every
  dtype and block size, m_max 1 / 8 / 16, K not a multiple of the block, special values (+-0, fp32 /
  fp16 / bf16 subnormals, max finite, zero blocks, a lone nonzero).
* sefp_linear: within a derived fp32 summation bound, M in {1, 2, 3, 4, 5, 17, 64} (the fused decode
  kernel, the multi-row one and the decoded-panel GEMM), m 1..8 and 12, bias or not, every x dtype,
  planes passed as a view planes[:1 + m] of a wider stored tensor; and exponents at the edges of
  fp32's range (the kernels' two-factor block scale).
* bad arguments: the same exception type and message as the Python checks (the "ref" backend).

Each test forces one ISA with ``leankern._C.set_cpu_isa`` ("auto" again afterwards); the C++ ops are
reached with ``leankern.use_backend("cpp")``, the reference with ``use_backend("ref")``.
"""
from __future__ import annotations

import math

import pytest
import torch

import leankern
from leankern.sefp import ref
from leankern.testing import assert_bitexact
from leankern.testing.strategies import binade_tensor
from isa_cases import on_isa
from mx_cases import skip_unless_cpp
from tolerances import assert_sefp_linear

OPS = torch.ops.leankern
EXT = leankern.extension()
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DT_IDS = ("f32", "bf16", "f16")
BLOCK_SIZES = (32, 64, 128, 256)
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


@pytest.fixture(params=("amx", "avx512bf16", "avx512", "avx2", "scalar"))
def isa(request):
    """Force the C++ kernels onto one ISA path for the test (isa_cases.py: "amx" = avx512bf16 with AMX on);
    back to "auto" afterwards. (avx512bf16 runs the avx512 kernels, except sefp_linear's bf16 GEMV and
    decoded-panel path: bf16 panels, torch's bf16 GEMM, or AMX tiles under "amx".)"""
    skip_unless_cpp()
    with on_isa(request.param):
        yield request.param


def run(backend: str, op, *args):
    with leankern.use_backend(backend):
        return op(*args)


def _f32(bits) -> torch.Tensor:
    return torch.as_tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)


def weights(N: int, K: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """[N, K] in dtype: Gaussian rows at random scales, then special rows (zeros, subnormals, max finite,
    a lone nonzero, mixed magnitudes inside a block)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = (-12, 8) if dtype == torch.float16 else (-20, 20)  # fp16: stay finite
    scale = 2.0 ** torch.randint(lo, hi, (N, 1), generator=gen).float()
    w = torch.randn(N, K, generator=gen) * scale
    tiny = {torch.float32: 2.0**-149, torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}[dtype]
    big = {torch.float32: 3.4028234663852886e38, torch.bfloat16: 3.3895313892515355e38, torch.float16: 65504.0}[dtype]
    specials = [
        torch.where(torch.rand(K, generator=gen) < 0.5, -0.0, 0.0),  # +-0 only: empty blocks
        torch.randint(1, 64, (K,), generator=gen).float() * tiny * torch.sign(torch.randn(K, generator=gen)),
        torch.full((K,), big) * torch.sign(torch.randn(K, generator=gen)),
        torch.zeros(K),
        torch.randn(K, generator=gen) * 2.0 ** torch.randint(2 * lo, hi, (K,), generator=gen).float(),
    ]
    specials[3][K // 2] = -1.5  # a lone nonzero
    if dtype == torch.float32:  # raw fp32 subnormals next to a small normal
        specials[1][: min(K, 4)] = _f32([1, 0x7FFFFF, 0x807FFFFF, 0x00800000])[: min(K, 4)]
    for i, row in enumerate(specials):
        if i < N:
            w[N - 1 - i] = row
    w = w.to(dtype)
    assert torch.isfinite(w).all(), (~torch.isfinite(w)).nonzero()[:4]
    return w


# ---------------------------------------------------------------------------- quantize / dequantize
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_quantize_dequantize_bitexact(isa, dtype, block_size):
    for K, m_max, seed in ((block_size, 8, 1), (3 * block_size + 17, 16, 2), (37, 1, 3), (600, 8, 4)):
        w = weights(9, K, dtype, seed)
        planes, exps = run("cpp", OPS.sefp_quantize, w, m_max, block_size)
        planes_r, exps_r = run("ref", OPS.sefp_quantize, w, m_max, block_size)
        assert_bitexact(planes, planes_r, "planes")
        assert_bitexact(exps, exps_r, "exponents")
        for m in sorted({1, (m_max + 1) // 2, m_max}):
            view = planes[: 1 + m] if m < m_max else planes
            for out_dtype in DTYPES:
                got = run("cpp", OPS.sefp_dequantize, view, exps, m, block_size, K, out_dtype)
                want = run("ref", OPS.sefp_dequantize, planes_r, exps_r, m, block_size, K, out_dtype)
                assert_bitexact(got.view(BITS[out_dtype]), want.view(BITS[out_dtype]), f"dequantize m={m}")


def test_quantize_many_rows_threads(isa):
    """Enough rows for several parallel tasks; non-contiguous input rows."""
    w = weights(700, 2 * 300, torch.bfloat16, 5)[:, ::2]
    got = run("cpp", OPS.sefp_quantize, w, 8, 64)
    want = run("ref", OPS.sefp_quantize, w, 8, 64)
    assert_bitexact(got, want, "quantize")


def test_dequantize_sign_of_zero(isa):
    """A negative weight whose truncation is 0 dequantizes to -0.0, as the reference."""
    w = torch.tensor([[1.0, -2.0**-10, 2.0**-12, -0.0] + [0.0] * 28])
    planes, exps = run("cpp", OPS.sefp_quantize, w, 4, 32)
    got = run("cpp", OPS.sefp_dequantize, planes, exps, 2, 32, 32, torch.float32)
    assert got[0, 1].item() == 0.0 and math.copysign(1.0, got[0, 1].item()) == -1.0
    assert math.copysign(1.0, got[0, 3].item()) == -1.0
    assert_bitexact(got.view(torch.int32), ref.dequantize_ref(planes, exps, 2, 32, 32, torch.float32).view(torch.int32))


@pytest.mark.parametrize("K", (32, 40, 256), ids=("K32", "K40", "K256"))
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_quantize_zero_rows_ref_matches_cpp(dtype, K):
    """A weight with N = 0 rows: the reference gives what the C++ kernel (and the fake) gives, empty planes
    [1 + m_max, 0, Kw] and exponents [0, Kp / G], and the empty weight dequantizes and multiplies alike."""
    skip_unless_cpp()
    w = torch.randn(0, K).to(dtype)
    for m_max, block_size in ((4, 32), (16, 64)):
        want = run("cpp", OPS.sefp_quantize, w, m_max, block_size)
        got = run("ref", OPS.sefp_quantize, w, m_max, block_size)
        Kp = ref.padded_k(K, block_size)
        assert tuple(got[0].shape) == (1 + m_max, 0, Kp // 32) and tuple(got[1].shape) == (0, Kp // block_size)
        assert_bitexact(got, want, "quantize")
        planes, exps = want
        args = (planes, exps, 2, block_size, K, dtype)
        assert_bitexact(run("ref", OPS.sefp_dequantize, *args), run("cpp", OPS.sefp_dequantize, *args), "dequantize")
        args = (torch.randn(3, K).to(dtype), planes, exps, 2, block_size, None)
        assert_bitexact(run("ref", OPS.sefp_linear, *args), run("cpp", OPS.sefp_linear, *args), "linear")


# ------------------------------------------------------------------------------------------ linear
def check_linear(y: torch.Tensor, x: torch.Tensor, planes, exps, m: int, block_size: int, bias):
    """``y`` within the shared derived bound (tests/tolerances.py ``assert_sefp_linear``: fp32 sums in
    any order around the exact product of x and the m-bit weight, one rounding to x's dtype)."""
    assert_sefp_linear((x, planes, exps, m, block_size, bias), y)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_linear_matches_reference(isa, dtype):
    gen = torch.Generator().manual_seed(7)
    N, K, block_size = 133, 300, 32  # K: a partial last block and a partial last 256-weight chunk
    w = torch.randn(N, K, generator=gen) * 2.0 ** torch.randint(-8, 8, (N, 1), generator=gen).float()
    planes8, exps8 = run("cpp", OPS.sefp_quantize, w, 8, block_size)
    planes16, exps16 = run("cpp", OPS.sefp_quantize, w, 16, block_size)
    bias = torch.randn(N, generator=gen).to(dtype)
    for M in (1, 2, 3, 4, 5, 17, 64):
        x = torch.randn(M, K, generator=gen).to(dtype)
        for m in (1, 2, 3, 4, 5, 6, 7, 8, 12):
            planes, exps = (planes8, exps8) if m <= 8 else (planes16, exps16)
            b = bias if (M + m) % 2 else None
            y = run("cpp", OPS.sefp_linear, x, planes[: 1 + m], exps, m, block_size, b)
            check_linear(y, x, planes, exps, m, block_size, b)


def test_linear_bound_is_not_vacuous(isa):
    """The bound of check_linear rejects the neighbouring width (a kernel reading one plane too few)."""
    gen = torch.Generator().manual_seed(8)
    w, x = torch.randn(40, 256, generator=gen), torch.randn(3, 256, generator=gen)
    planes, exps = run("cpp", OPS.sefp_quantize, w, 8, 32)
    for m in (2, 5, 8):
        y = run("cpp", OPS.sefp_linear, x, planes, exps, m - 1, 32, None)
        with pytest.raises(AssertionError):
            check_linear(y, x, planes, exps, m, 32, None)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_linear_shapes_and_blocks(isa, block_size):
    """Leading dims, K multiple / not multiple of the block and of the 256-weight chunk, few rows."""
    gen = torch.Generator().manual_seed(block_size)
    for N, K, lead in ((1, 1, (1,)), (5, block_size, (2, 3)), (37, 8 * 256 + block_size + 5, (4,)), (3, 700, (2, 9))):
        w = torch.randn(N, K, generator=gen)
        planes, exps = run("cpp", OPS.sefp_quantize, w, 8, block_size)
        x = torch.randn(*lead, K, generator=gen).to(torch.bfloat16)
        for m in (3, 8):
            y = run("cpp", OPS.sefp_linear, x, planes[: 1 + m], exps, m, block_size, None)
            assert y.shape == (*lead, N)
            check_linear(y, x, planes, exps, m, block_size, None)


def test_linear_extreme_exponents(isa):
    """Blocks near the top and the bottom of fp32's range, an empty block, fp32 subnormal weights:
    the kernels' block scale 2^(E - (m - 1)) times their internal 2^+-24 leaves the normal range."""
    gen = torch.Generator().manual_seed(9)
    K = 256
    w = torch.randn(6, K, generator=gen)
    w[0] *= 2.0**110
    w[1] *= 2.0**-100
    w[2, :128] *= 2.0**120
    w[2, 128:] *= 2.0**-120
    w[3, :64] = 0.0
    w[4] = _f32(torch.randint(1, 1 << 23, (K,), generator=gen))
    w[5, ::3] *= 2.0**100
    planes, exps = run("cpp", OPS.sefp_quantize, w, 8, 32)
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(5, K, generator=gen) * 2.0**-20).to(dtype)
        for m in (1, 3, 8):
            for M in (1, 3, 5):  # one x row, a few (scales on the sums), >= 4 (scales folded into w where normal)
                y = run("cpp", OPS.sefp_linear, x[:M], planes[: 1 + m], exps, m, 32, None)
                check_linear(y, x[:M], planes, exps, m, 32, None)
        for M in (20, 40, 70):  # many rows of the fused path; the decoded-panel path (from 32 rows, 65 on avx2)
            xs = torch.randn(M, K, generator=gen).to(dtype)
            y = run("cpp", OPS.sefp_linear, xs, planes, exps, 8, 32, None)
            check_linear(y, xs, planes, exps, 8, 32, None)


def test_bf16_gemv_flushes_subnormal_x(isa):
    """Under avx512bf16 on a CPU with GFNI and AVX512-VBMI, bf16 x with fewer than 80 rows (any number with a
    bias) runs the plane-shuffle GEMV (gemv_bf16_gfni.cpp), whose vdpbf16ps treats bf16 subnormal x as zero:
    x = 2^-130 gives 0 where the fp32 kernels (fp32 x, other ISAs) keep 64 * 2^-130 (the documented exception to
    the bound, docs/sefp.md). Also proves that the bf16 GEMV ran, at every width, with and without a bias. (Under
    "amx" 12 .. 19 rows without a bias take the AMX panels, whose TDPBF16PS flushes alike.)"""
    planes, exps = run("cpp", OPS.sefp_quantize, torch.ones(16, 64), 8, 32)  # w_hat = 1 at every width
    x = torch.full((31, 64), 2.0**-130).to(torch.bfloat16)
    tiny = 64 * 2.0**-130
    features = EXT.cpu_features().split()
    flushes = isa in ("amx", "avx512bf16") and "gfni" in features and "avx512vbmi" in features
    for m in range(1, 9):
        assert run("cpp", OPS.sefp_linear, x.float(), planes[: 1 + m], exps, m, 32, None)[0, 0].item() == tiny
        for M, bias in ((1, None), (4, None), (19, None), (31, torch.zeros(16).bfloat16())):
            y = run("cpp", OPS.sefp_linear, x[:M], planes[: 1 + m], exps, m, 32, bias).float()
            assert torch.equal(y, torch.full((M, 16), 0.0 if flushes else tiny).bfloat16().float())


def test_linear_plane_stride_view(isa):
    """Planes as a strided view: every other plane of a bigger tensor (each plane contiguous)."""
    gen = torch.Generator().manual_seed(10)
    w = torch.randn(20, 96, generator=gen)
    planes, exps = run("cpp", OPS.sefp_quantize, w, 4, 32)
    big = torch.zeros(10, 20, 3, dtype=torch.int32)
    big[::2] = planes
    view = big[::2]
    assert view.stride(0) == 2 * 20 * 3
    x = torch.randn(2, 96, generator=gen)
    y = run("cpp", OPS.sefp_linear, x, view, exps, 4, 32, None)
    check_linear(y, x, planes, exps, 4, 32, None)
    assert_bitexact(run("cpp", OPS.sefp_dequantize, view, exps, 4, 32, 96, torch.float32),
                    ref.dequantize_ref(planes, exps, 4, 32, 96, torch.float32))


# ------------------------------------------------------------------------------------ bad arguments
def raised(backend: str, op, *args):
    with leankern.use_backend(backend):
        try:
            op(*args)
        except (ValueError, TypeError) as e:
            return type(e), str(e)
    raise AssertionError(f"{backend}: no error")


def _good():
    w = torch.randn(4, 64)
    planes, exps = ref.quantize_ref(w, 4, 32)
    return w, planes, exps


BAD = {
    "w dtype": lambda w, p, e: (OPS.sefp_quantize, w.to(torch.int32), 4, 32),
    "w 1-D": lambda w, p, e: (OPS.sefp_quantize, w[0], 4, 32),
    "m_max": lambda w, p, e: (OPS.sefp_quantize, w, 17, 32),
    "block_size": lambda w, p, e: (OPS.sefp_quantize, w, 4, 48),
    "nan": lambda w, p, e: (OPS.sefp_quantize, torch.where(torch.arange(64) == 37, math.nan, w), 4, 32),
    "inf f16": lambda w, p, e: (OPS.sefp_quantize, torch.where(torch.arange(64) == 3, -math.inf, w).half(), 4, 32),
    "planes dtype": lambda w, p, e: (OPS.sefp_dequantize, p.float(), e, 2, 32, 64, torch.float32),
    "m too large": lambda w, p, e: (OPS.sefp_dequantize, p[:3], e, 3, 32, 64, torch.float32),
    "m zero": lambda w, p, e: (OPS.sefp_dequantize, p, e, 0, 32, 64, torch.float32),
    "exponents shape": lambda w, p, e: (OPS.sefp_dequantize, p, e[:, :1], 2, 32, 64, torch.float32),
    "exponents dtype": lambda w, p, e: (OPS.sefp_dequantize, p, e.int(), 2, 32, 64, torch.float32),
    "plane strides": lambda w, p, e: (OPS.sefp_dequantize, p.transpose(1, 2).contiguous().transpose(1, 2), e, 2, 32,
                                      64, torch.float32),
    "K": lambda w, p, e: (OPS.sefp_dequantize, p, e, 2, 32, 20, torch.float32),
    "out_dtype": lambda w, p, e: (OPS.sefp_dequantize, p, e, 2, 32, 64, torch.int32),
    "x dtype": lambda w, p, e: (OPS.sefp_linear, torch.ones(2, 64, dtype=torch.int64), p, e, 2, 32, None),
    "x K": lambda w, p, e: (OPS.sefp_linear, torch.ones(2, 65), p, e, 2, 32, None),
    "x 0-D": lambda w, p, e: (OPS.sefp_linear, torch.tensor(1.0), p, e, 2, 32, None),
    "linear m": lambda w, p, e: (OPS.sefp_linear, torch.ones(2, 64), p, e, 5, 32, None),
    "bias shape": lambda w, p, e: (OPS.sefp_linear, torch.ones(2, 64), p, e, 2, 32, torch.ones(5)),
    "bias dtype": lambda w, p, e: (OPS.sefp_linear, torch.ones(2, 64), p, e, 2, 32, torch.ones(4, dtype=torch.int32)),
    "linear block_size": lambda w, p, e: (OPS.sefp_linear, torch.ones(2, 64), p, e, 2, 64, None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_errors_match_python(case):
    skip_unless_cpp()
    op, *args = BAD[case](*_good())
    cpp, py = raised("cpp", op, *args), raised("ref", op, *args)
    assert cpp == py
    if case == "nan":
        assert py[1] == "w: expected finite values (SEFP has no NaN/Inf code), got nan at index (0, 37)"


def test_linear_many_rows_over_k_slabs(isa):
    """2 <= M < 32 with K long enough for several L2 slabs of x (192 KiB: 9 chunks of 256 at 20 rows),
    row blocks cut by the task ends and a partial last block; bias; planes as a view."""
    gen = torch.Generator().manual_seed(11)
    N, K = 203, 4096 + 100
    w = torch.randn(N, K, generator=gen)
    planes, exps = run("cpp", OPS.sefp_quantize, w, 8, 32)
    bias = torch.randn(N, generator=gen)
    for M, m in ((20, 8), (5, 3), (31, 5)):
        x = torch.randn(M, K, generator=gen).to(torch.bfloat16)
        y = run("cpp", OPS.sefp_linear, x, planes[: 1 + m], exps, m, 32, bias)
        check_linear(y, x, planes, exps, m, 32, bias)


def test_linear_decoded_panels(isa):
    """bf16 x with >= 80 rows (>= 12 under "amx"), no bias, m <= 8: the decoded-panel path (bf16 panels and torch's bf16 GEMM, or AMX
    tiles from x packed once under "amx"): rows crossing 16-row tiles and the AMX kernel's 512-row passes (530),
    N off the 16-row tile and over several panels (203, 600), K over several 2048-element chunks; other ISAs run the
    same cases through their own kernels (and 20 / 33 / 12 rows, the GEMV's decode-once tile on avx512bf16)."""
    gen = torch.Generator().manual_seed(12)
    for N, K, M in ((203, 4096 + 100, 20), (203, 4096 + 100, 96), (600, 1000, 33), (37, 700, 530), (90, 512, 12)):
        w = torch.randn(N, K, generator=gen)
        planes, exps = run("cpp", OPS.sefp_quantize, w, 8, 32)
        x = torch.randn(M, K, generator=gen).to(torch.bfloat16)
        for m in (3, 8):
            y = run("cpp", OPS.sefp_linear, x, planes[: 1 + m], exps, m, 32, None)
            check_linear(y, x, planes, exps, m, 32, None)


@pytest.mark.parametrize("decoded_rows", (8, 1, 1 << 30), ids=("default", "always", "never"))
def test_linear_bf16_decode_once_tile(isa, decoded_rows):
    """bf16 x with 8+ rows on avx512bf16 (GFNI + VBMI): gemv_bf16 decodes 4 weight rows at a time once to bf16 and
    runs 4 x 4 register tiles over every x row (gemv_decoded; the tuning hook sefp_set_decoded_rows moves its
    threshold: "always" from one x row, "never" the planes decoded again per 4 x rows). N = 39: groups of 4 and a
    tail of 3 in every task; K = 1,120: two 512-weight chunks and a partial third; M = 70: two slabs of x rows (at
    most 64 per pass); rows 4..7 scaled by 2^-124 next to normal rows: with x ~ N(0, 1) their products could fall
    below 2^-126, where vdpbf16ps flushes, and with x ~ 2^40 N(0, 1) their smallest step is no bf16 normal at
    m >= 5 (either way that group of 4 must take the re-decoding tile: kernels.h decode_min_exponent); with and
    without a bias; m 1..8. Other ISAs run the same cases through their own kernels."""
    gen = torch.Generator().manual_seed(13)
    N, K = 39, 1120
    w = torch.randn(N, K, generator=gen)
    w[4:8] *= 2.0**-124
    planes, exps = run("cpp", OPS.sefp_quantize, w, 8, 32)
    bias = torch.randn(N, generator=gen).to(torch.bfloat16)
    before = EXT.sefp_set_decoded_rows(decoded_rows)
    try:
        for M, scale in ((1, 1.0), (8, 1.0), (13, 2.0**40), (70, 1.0), (70, 2.0**40)):
            x = (torch.randn(M, K, generator=gen) * scale).to(torch.bfloat16)
            for m in range(1, 9):
                b = bias if (M + m) % 2 else None
                y = run("cpp", OPS.sefp_linear, x, planes[: 1 + m], exps, m, 32, b)
                check_linear(y, x, planes, exps, m, 32, b)
    finally:
        assert EXT.sefp_set_decoded_rows(before) == decoded_rows


def test_linear_bf16_panel_rows_hook(isa):
    """sefp_set_panel_rows (tuning hook) moves where bf16 x without a bias takes the decoded bf16 panels on CPUs
    without AMX: at 4 the 8-row product runs through the panels, at 2^30 a 96-row one through the GEMV's tile; both
    within the bound, and the hook hands back the value it replaced."""
    gen = torch.Generator().manual_seed(14)
    w = torch.randn(70, 600, generator=gen)
    planes, exps = run("cpp", OPS.sefp_quantize, w, 8, 32)
    before = EXT.sefp_set_panel_rows(4)
    try:
        for M in (8, 96):
            x = torch.randn(M, 600, generator=gen).to(torch.bfloat16)
            for m in (2, 8):
                y = run("cpp", OPS.sefp_linear, x, planes[: 1 + m], exps, m, 32, None)
                check_linear(y, x, planes, exps, m, 32, None)
            assert EXT.sefp_set_panel_rows(1 << 30 if M == 8 else 4) == (4 if M == 8 else 1 << 30)
    finally:
        EXT.sefp_set_panel_rows(before)
    assert before == 80


def test_linear_f32_panel_rows_hook(isa):
    """sefp_set_panel_rows_f32 (tuning hook) moves where the fp32 kernels (fp32 x here; any x the bf16 kernels do not
    take) switch from their GEMV to the decoded fp32 panels: at 4 the 8-row product runs through the panels, at 2^30
    a 100-row one through the GEMV (its decode-once row blocks over x slabs, K = 2,080); both within the bound. The
    default (0) resolves by ISA: panels from 65 rows on avx2, 32 elsewhere (48 rows: the GEMV on avx2 only)."""
    gen = torch.Generator().manual_seed(15)
    w = torch.randn(37, 2080, generator=gen)
    w[4:8, :256] *= 2.0**-124
    planes, exps = run("cpp", OPS.sefp_quantize, w, 8, 32)
    bias = torch.randn(37, generator=gen)
    before = EXT.sefp_set_panel_rows_f32(4)
    try:
        for rows, M in ((4, 8), (1 << 30, 100), (0, 48)):
            EXT.sefp_set_panel_rows_f32(rows)
            x = torch.randn(M, 2080, generator=gen)
            for m in (2, 5, 8):
                b = bias if m % 2 else None
                y = run("cpp", OPS.sefp_linear, x, planes[: 1 + m], exps, m, 32, b)
                check_linear(y, x, planes, exps, m, 32, b)
        assert EXT.sefp_set_panel_rows_f32(7) == 0
        assert EXT.sefp_set_panel_rows_f32(-1) == 7 and EXT.sefp_set_panel_rows_f32(-1) == 7  # negative: no change
    finally:
        EXT.sefp_set_panel_rows_f32(before)
    assert before == 0


def test_linear_bf16_panels_keep_small_products(isa):
    """bf16 x of 96 rows (the bf16 panels from 80 on CPUs without AMX, 12 with): rows whose blocks have tiny exponents
    (weights ~2^-110) times x ~2^-10 give products near 2^-126, where torch's bf16 GEMM over the scaled panels
    flushes; such weights keep the GEMV (its decode-once tile checks each 4-row group the same way). Within the bound
    (with the panels taken regardless: 3e-38 over it)."""
    gen = torch.Generator().manual_seed(15)
    w = torch.randn(40, 256, generator=gen)
    w[::3] *= 2.0**-110
    planes, exps = run("cpp", OPS.sefp_quantize, w, 8, 32)
    x = binade_tensor((96, 256), -10, gen).to(torch.bfloat16)  # every x a bf16 normal
    for m in (2, 5, 8):
        y = run("cpp", OPS.sefp_linear, x, planes[: 1 + m], exps, m, 32, None)
        check_linear(y, x, planes, exps, m, 32, None)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=("f32", "bf16"))
def test_linear_extreme_x_within_bound(isa, dtype):
    """x near the ends of fp32's range through the GEMVs (1 and 3 rows; 40 on avx2) and the panels (40; 70): the
    permuted fp32 GEMVs sum x times q 2^24 (m <= 7) or q 2^-24 (m = 8) before the block scale, which overflowed from
    |x| ~ 2^96 (inf where the product is finite) and rounds among fp32's subnormals below |x| ~ 2^-100 at m = 8: such
    x takes the exactly decoded GEMV (19 failing cases before, on every ISA). The bf16 GEMVs' sums of q x fall below
    2^-126 (flushed) for x under 2^-119: such x takes the fp32 kernels. Within the bound on every path."""
    gen = torch.Generator().manual_seed(16)
    w = torch.randn(40, 256, generator=gen)
    planes, exps = run("cpp", OPS.sefp_quantize, w, 8, 32)
    for top in (90, 96, 100, 104, -100, -110, -122):
        for M in (1, 3, 40, 70):
            x = binade_tensor((M, 256), top, gen).to(dtype)
            for m in (2, 7, 8):
                y = run("cpp", OPS.sefp_linear, x, planes[: 1 + m], exps, m, 32, None)
                check_linear(y, x, planes, exps, m, 32, None)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=("f32", "bf16"))
def test_linear_x_near_the_top_of_fp32(isa, dtype):
    """|x| up to 2^124 times ordinary weights: products near fp32's top, whose partial sums (per lane, per chunk, per
    panel) passed 2^128 in another order than the result's: NaN where the exact result is +-inf, inf where it is
    finite (6 cases at 2^124 before, bf16 x, one row). The op computes such x as ((x 2^-k) W^T) 2^k, the bias added
    after (common/x_shift.h). Within the bound, +-inf exactly where the exact result overflows."""
    gen = torch.Generator().manual_seed(18)
    w = torch.randn(40, 256, generator=gen)
    planes, exps = run("cpp", OPS.sefp_quantize, w, 8, 32)
    for top in (110, 118, 124):
        for M in (1, 3, 40, 70):
            x = binade_tensor((M, 256), top, gen).to(dtype)
            b = (torch.randn(40, generator=gen) * 2.0**top).to(dtype) if M == 3 else None
            for m in (2, 7, 8):
                y = run("cpp", OPS.sefp_linear, x, planes[: 1 + m], exps, m, 32, b)
                check_linear(y, x, planes, exps, m, 32, b)


def test_linear_rows_do_not_read_their_neighbours_exponents(isa):
    """A row's result depends on its own exponents only: rows whose K ends inside a 256-weight chunk
    once read the next row's exponent bytes (and past the tensor for the last rows), so an extreme
    neighbour switched the rounding path. Here the neighbours are extreme and the results must not move."""
    gen = torch.Generator().manual_seed(12)
    N, K = 40, 80  # 3 blocks per row: every chunk is a row's last
    w = torch.randn(N, K, generator=gen)
    planes, exps = run("cpp", OPS.sefp_quantize, w, 8, 32)
    big = torch.full((N + 1, exps.shape[1]), -110, dtype=torch.int8)  # a row of extreme exponents after the end
    big[:N] = exps
    w_odd = w.clone()
    w_odd[1::2] *= 2.0**-110  # every other row extreme (scale 2^(E - 4 - 24) subnormal): the even rows' neighbours
    planes_odd, exps_odd = run("cpp", OPS.sefp_quantize, w_odd, 8, 32)
    for M in (1, 5, 15):
        x = torch.randn(M, K, generator=gen)
        y = run("cpp", OPS.sefp_linear, x, planes, exps, 5, 32, None)
        assert torch.equal(run("cpp", OPS.sefp_linear, x, planes, big[:N], 5, 32, None), y)
        y_odd = run("cpp", OPS.sefp_linear, x, planes_odd, exps_odd, 5, 32, None)
        assert torch.equal(y_odd[:, 0::2], y[:, 0::2])
