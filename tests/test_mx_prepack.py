"""The prepacked weight layout (leankern.mx.prepack) and mx_linear_packed, and both linear ops
under every ISA the C++ kernels have: exact round trips, results within the derived error bound
of tests/tolerances.py, the special-value paths of the packed kernels, errors."""
import pytest
import torch

import leankern
from leankern.mx.packed_layout import TILE_ROWS, pack_weight, packed_block_bytes, unpack_weight
from leankern.testing.strategies import binade_tensor
from isa_cases import BF16_DOT_ISAS, on_isa
from mx_cases import ALL_FORMATS, FLOAT_DTYPES, skip_unless_cpp
from tolerances import assert_linear_result

ISAS = ("amx", "avx512bf16", "avx512", "avx2", "scalar")  # isa_cases.py: "amx" = avx512bf16 with AMX on


@pytest.fixture(params=ISAS)
def isa(request):
    """The C++ kernels forced onto one ISA path for the test; back to "auto" afterwards."""
    skip_unless_cpp()
    with on_isa(request.param), leankern.use_backend("cpp"):
        yield request.param


@pytest.fixture(params=[True, False], ids=["fma", "bf16dot"])
def few_rows_form(request):
    """The few-rows kernel's fp32-FMA form on or off (avx512bf16, below 32 rows; the CPU's default otherwise)."""
    skip_unless_cpp()
    was = leankern._C.mx_set_few_rows_fma(request.param)
    try:
        yield request.param
    finally:
        leankern._C.mx_set_few_rows_fma(was)


def _weight(n, k, fmt, block_size=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * torch.rand(n, 1, generator=gen) * 4  # rows of different scale
    return leankern.mx.quantize(w, fmt, block_size=block_size)


def _bytes(t):
    return t.contiguous().view(torch.uint8)


def _check(y, x, qt, bias=None, act_fmt=None):
    assert_linear_result((x, qt.codes, qt.scales, qt.global_scale, qt.fmt, qt.block_size, bias, act_fmt), y)


# ------------------------------------------------------------------------------------- the layout
@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("n,k,bs", [(1, 32, 32), (16, 64, 16), (37, 128, 32), (5, 8, 2), (33, 2048, 1024)])
def test_pack_round_trip_is_exact(fmt, n, k, bs):
    if fmt.startswith("nv"):
        bs = 16
        k = max(k, 16)
    qt = _weight(n, k, fmt, bs)
    p = leankern.mx.prepack(qt)
    assert p.layout == "prepacked16" and p.shape == qt.shape
    assert p.codes.shape == (-(-n // TILE_ROWS), k // bs, packed_block_bytes(fmt, bs))
    u = p.unpacked()
    assert u.codes.dtype == qt.codes.dtype and u.scales.dtype == qt.scales.dtype
    assert torch.equal(_bytes(u.codes), _bytes(qt.codes)) and torch.equal(_bytes(u.scales), _bytes(qt.scales))
    assert torch.equal(_bytes(p.dequantize(torch.float32)), _bytes(qt.dequantize(torch.float32)))


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("layout", ["row_major", "swizzled", "prepacked16"])
def test_select_rows_reads_the_rows_out_of_every_layout(fmt, layout):
    qt = _weight(37, 128, fmt, 16 if fmt.startswith("nv") else 32, seed=3)
    held = {"row_major": qt, "swizzled": qt.swizzled(), "prepacked16": qt.prepacked()}[layout]
    ids = torch.tensor([36, 0, 5, 5, 17, 16, 15, 31, 32], dtype=torch.int32)  # both tile edges, a duplicate
    for idx in (ids, ids.long(), ids[:0]):
        r = held.select_rows(idx)
        assert r.layout == "row_major" and r.scale_layout == "row_major" and r.shape == (len(idx), 128)
        assert torch.equal(_bytes(r.codes), _bytes(qt.codes[idx.long()]))
        assert torch.equal(_bytes(r.scales), _bytes(qt.scales[idx.long()]))
        assert r.fmt == qt.fmt and r.block_size == qt.block_size and torch.equal(r.global_scale, qt.global_scale)


def test_select_rows_rejects_bad_ids():
    qt = _weight(20, 64, "mxfp4").prepacked()
    with pytest.raises(ValueError, match=r"^ids: expected row ids in \[0, N=20\), got min 0, max 20$"):
        qt.select_rows(torch.tensor([0, 20]))
    with pytest.raises(ValueError, match=r"^ids: expected row ids in \[0, N=20\), got min -1, max 3$"):
        qt.select_rows(torch.tensor([3, -1], dtype=torch.int32))
    with pytest.raises(TypeError, match=r"^ids: expected dtype in \['torch.int32', 'torch.int64'\], got torch.float32"):
        qt.select_rows(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"^ids: expected shape \[R\], got \(1, 2\)$"):
        qt.select_rows(torch.tensor([[1, 2]]))


def test_layout_by_hand():
    """Block b of tile t: 16 scale bytes, then code byte q of the 16 rows at 16 q .. 16 q + 15."""
    codes = torch.arange(20 * 8, dtype=torch.int32).reshape(20, 8).to(torch.uint8)  # mxfp4, K = 16, bs = 8
    scales = (torch.arange(20 * 2).reshape(20, 2) + 100).to(torch.uint8)
    p = pack_weight(codes, scales, "mxfp4", 8)
    assert p.shape == (2, 2, 16 + 16 * 4)
    for t, b, q, i in ((0, 0, 0, 0), (0, 1, 3, 15), (1, 0, 2, 3), (1, 1, 1, 2)):
        assert p[t, b, i] == scales[16 * t + i, b]
        assert p[t, b, 16 + 16 * q + i] == codes[16 * t + i, 4 * b + q]
    assert (p[1, :, 4:16] == 0).all() and (p[1, :, 16 + 4:32] == 0).all()  # padded rows: zero scales, codes
    c2, s2 = unpack_weight(p, "mxfp4", 8, 20)
    assert torch.equal(c2, codes) and torch.equal(s2, scales)


def test_state_dict_keeps_the_layout(tmp_path):
    from safetensors.torch import load_file, save_file

    p = leankern.mx.prepack(_weight(24, 64, "nvfp4"))
    save_file(p.state_dict("w."), tmp_path / "w.safetensors")
    q = leankern.MXTensor.from_state_dict(load_file(tmp_path / "w.safetensors"), "w.")
    assert q.layout == "prepacked16" and torch.equal(q.codes, p.codes)
    x = torch.randn(2, 64)
    assert torch.equal(leankern.mx.linear(x, q), leankern.mx.linear(x, p))


def test_prepack_rejects_non_mxtensor_and_3d():
    with pytest.raises(TypeError, match="weight: expected an MXTensor"):
        leankern.mx.prepack(torch.randn(4, 4))
    qt = leankern.mx.quantize(torch.randn(2, 3, 32), "mxint8")
    with pytest.raises(ValueError, match=r"weight: expected a 2-D \[N, K\] MXTensor to prepack"):
        leankern.mx.prepack(qt)


# ------------------------------------------------------------------------------- linear, per ISA
def test_int8_few_rows_form_runs_for_int_pairs(isa):
    """Dual INT x INT below 5 rows of x under avx512bf16 (below 4 with AMX on; AMX tiles take 4) runs the int8
    kernel's few-rows form (leankern._C.mx_set_int8_few_rows), which sums integers and keeps x_hat = 2^-127; with
    it off (and the FMA form off) the few-rows bf16 kernel or AMX flushes that subnormal. Proves which ran, for a
    4-bit and an 8-bit weight."""
    if isa not in BF16_DOT_ISAS or "avx512vbmi" not in leankern._C.cpu_features().split():
        pytest.skip("the int8 few-rows form needs the avx512bf16 ISA (VNNI) and AVX512-VBMI")
    want = 64 * 2.0**-127
    x = torch.full((4, 64), 2.0**-127)
    was_fma = leankern._C.mx_set_few_rows_fma(False)
    was_i8 = leankern._C.mx_set_int8_few_rows(True)
    try:
        for fmt in ("mxint8", "mxint4"):
            qt = leankern.mx.prepack(leankern.mx.quantize(torch.ones(16, 64), fmt))
            for m in (1, 2, 3, 4):
                amx_takes = isa == "amx" and m >= 4
                on = leankern.mx.linear(x[:m], qt, act_fmt="mxint8")[:, 0].tolist()
                assert on == ([0.0] * m if amx_takes else pytest.approx([want] * m, rel=1e-6, abs=0))
                leankern._C.mx_set_int8_few_rows(False)
                try:
                    assert leankern.mx.linear(x[:m], qt, act_fmt="mxint8")[:, 0].tolist() == [0.0] * m
                finally:
                    leankern._C.mx_set_int8_few_rows(True)
    finally:
        leankern._C.mx_set_few_rows_fma(was_fma)
        leankern._C.mx_set_int8_few_rows(was_i8)


def test_int8_few_rows_form_default_per_cpu(isa):
    """By default (mx_set_int8_few_rows(None)) the int8 few-rows form takes 8-bit weights on every such CPU and
    4-bit weights only where the CPU has AMX (on Zen 4 the bf16 form decodes them faster): the same 2^-127 probe as
    above, M = 1."""
    if isa not in BF16_DOT_ISAS or "avx512vbmi" not in leankern._C.cpu_features().split():
        pytest.skip("the int8 few-rows form needs the avx512bf16 ISA (VNNI) and AVX512-VBMI")
    x = torch.full((1, 64), 2.0**-127)
    was_fma = leankern._C.mx_set_few_rows_fma(False)
    was_i8 = leankern._C.mx_set_int8_few_rows(None)
    try:
        assert leankern._C.mx_set_int8_few_rows(None) is None  # the setting reads back as the default
        for fmt, takes in (("mxint8", True), ("mxint4", leankern._C.amx_supported())):
            qt = leankern.mx.prepack(leankern.mx.quantize(torch.ones(16, 64), fmt))
            got = leankern.mx.linear(x, qt, act_fmt="mxint8")[0, 0].item()
            assert got == (pytest.approx(64 * 2.0**-127, rel=1e-6, abs=0) if takes else 0.0), fmt
    finally:
        leankern._C.mx_set_few_rows_fma(was_fma)
        leankern._C.mx_set_int8_few_rows(was_i8)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_packed_linear_every_format(isa, fmt, dtype):
    for m, n, k, bs, bias in ((1, 17, 64, 32, False), (3, 64, 128, 16, True), (9, 5, 256, 64, True),
                              (13, 40, 96, 32, False), (2, 20, 64, 2, True)):
        if fmt.startswith("nv"):
            bs = 16
        qt = _weight(n, k, fmt, bs, seed=m)
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(n)).to(dtype)
        b = torch.randn(n).to(dtype) if bias else None
        _check(leankern.mx.linear(x, leankern.mx.prepack(qt), b), x, qt, b)
        _check(leankern.mx.linear(x, qt, b), x, qt, b)  # the row-major kernel on the same ISA


@pytest.mark.parametrize("fmt", ["mxfp4", "mxint4"])
def test_packed_linear_4bit_one_code_column_blocks(isa, fmt):
    """4-bit blocks of 2 elements (one code byte per row) with one, two and three rows of x: AVX2's one- and two-row
    form reads a block's code columns in pairs, and a block of one column alone (the vector's other half zero, its x
    zero)."""
    for k in (2, 14, 64):
        qt = _weight(21, k, fmt, 2, seed=k)
        for m in (1, 2, 3):
            x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
            _check(leankern.mx.linear(x, leankern.mx.prepack(qt)), x, qt)


@pytest.mark.parametrize("fmt", ["mxint8", "mxfp8_e4m3", "mxfp4", "nvfp4", "mxint4", "nvint4"])
def test_packed_linear_dual(isa, fmt):
    qt = _weight(48, 128, fmt, seed=3)
    x = (torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(4)) * 2).to(torch.bfloat16)
    b = torch.randn(48)
    _check(leankern.mx.linear(x, leankern.mx.prepack(qt), b, act_fmt=fmt), x, qt, b, fmt)


def _check_bf16_and_dual(fmt, m, n, k, bs, bias):
    """bf16 x [m, k] times a prepacked [n, k] weight (NV: block 16), and for MX formats the dual product on fp32 x
    (x_hat is exact in bf16), both within the bound of the fp32 reference."""
    if fmt.startswith("nv"):
        bs = 16
    qt = _weight(n, k, fmt, bs, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(n)).to(torch.bfloat16)
    b = torch.randn(n).to(torch.bfloat16) if bias else None
    _check(leankern.mx.linear(x, leankern.mx.prepack(qt), b), x, qt, b)
    if not fmt.startswith("nv"):
        xf, bf = x.float() * 3, None if b is None else b.float()
        _check(leankern.mx.linear(xf, leankern.mx.prepack(qt), bf, act_fmt=fmt), xf, qt, bf, fmt)


# The bf16 dot-product kernels (avx512bf16) run for bf16 x and MX dual x_hat (exact in bf16): the
# few-rows one below 32 rows of x (passes of 8 rows: 16, 25, 31), the prefill one from 32 on (rows
# crossing its 24-row groups: 32, 53, 48); elsewhere these shapes take the fp32 kernels.
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_packed_linear_many_rows(isa, fmt):
    for m, n, k, bs, bias in ((16, 40, 128, 32, True), (25, 17, 256, 64, False), (31, 20, 64, 16, True),
                              (32, 24, 128, 16, False), (53, 33, 64, 2, True), (48, 16, 1024, 1024, False)):
        _check_bf16_and_dual(fmt, m, n, k, bs, bias)


@pytest.mark.parametrize("fmt", ["mxint8", "mxfp4", "nvint4", "mxfp8_e5m2"])
def test_bf16_dot_kernels_run_and_flush_subnormal_x(isa, fmt):
    """vdpbf16ps treats bf16 subnormal inputs as zero: under avx512bf16 a bf16 x of 2^-130 gives 0
    for every number of rows (the few-rows kernel below 32, the prefill one from 32; the documented
    exception to the bound), while the fp32 kernels (fp32 x, other ISAs) keep it. This also proves
    that the bf16 kernels ran for bf16 x. The few-rows kernel's FMA form (on by default on AMX CPUs)
    is off here; test_few_rows_fma_form_runs_where_taken shows that it keeps such x. fp32 x of 40 rows keeps
    it too, except with AMX on, where it goes to the tiles as bf16 parts (split_linear) and is flushed."""
    qt = leankern.mx.prepack(leankern.mx.quantize(torch.ones(16, 64), fmt))
    x = torch.full((40, 64), 2.0**-130).to(torch.bfloat16)
    tiny = 64 * 2.0**-130
    want_fp32 = 0.0 if isa == "amx" else tiny
    assert leankern.mx.linear(x.float(), qt)[0, 0].item() == pytest.approx(want_fp32, rel=1e-6, abs=0)
    want = 0.0 if isa in BF16_DOT_ISAS else tiny
    was = leankern._C.mx_set_few_rows_fma(False)
    try:
        for m in (1, 8, 31, 32, 40):
            assert leankern.mx.linear(x[:m], qt)[:, 0].float().tolist() == pytest.approx([want] * m, rel=1e-2, abs=0)
    finally:
        leankern._C.mx_set_few_rows_fma(was)


@pytest.mark.parametrize("w_fmt", ["mxint8", "mxint4", "mxfp4"])
@pytest.mark.parametrize("a_fmt", ["mxint8", "mxint4", "mxfp4"])
def test_packed_linear_dual_int_pairs(isa, w_fmt, a_fmt):
    """Every pair of int8-able MX formats (the int8 dot-product kernel under avx512bf16 from 32 rows
    on and its few-rows form up to 4 rows, the few-rows bf16 one on x_hat between), block sizes 4 .. 256,
    rows crossing the 24-row groups, partial row tiles (4-bit weights in blocks of 4 keep the bf16 kernels)."""
    for m, n, k, bs in ((16, 40, 128, 32), (29, 33, 256, 64), (50, 17, 64, 4), (32, 16, 512, 256), (1, 40, 128, 32),
                        (2, 33, 256, 64), (3, 17, 64, 8), (4, 16, 512, 256), (1, 20, 64, 4), (5, 24, 96, 32)):
        qt = _weight(n, k, w_fmt, bs, seed=m)
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(n)) * 2
        b = torch.randn(n)
        _check(leankern.mx.linear(x, leankern.mx.prepack(qt), b, act_fmt=a_fmt), x, qt, b, a_fmt)


def test_int8_dot_kernel_runs_for_int_pairs(isa):
    """x = 2^-127 quantizes to the element 1 at the smallest E8M0 scale: x_hat = 2^-127, a subnormal.
    The int8 kernel (INT x INT under avx512bf16 without AMX) sums integers and scales afterwards,
    so it keeps it from 32 rows on; the bf16 kernels (an FP8 act format, fewer rows, or AMX tiles,
    which take INT x INT too) flush subnormal inputs to zero, the few-rows kernel's FMA form keeps
    them. Proves which ran."""
    qt = leankern.mx.prepack(leankern.mx.quantize(torch.ones(16, 64), "mxint8"))
    x = torch.full((32, 64), 2.0**-127)
    want = 64 * 2.0**-127
    dual = leankern.mx.linear(x, qt, act_fmt="mxint8")[0, 0].item()
    assert dual == (0.0 if isa == "amx" else pytest.approx(want, rel=1e-6, abs=0))
    fp8 = leankern.mx.linear(x, qt, act_fmt="mxfp8_e4m3")[0, 0].item()
    assert fp8 == (0.0 if isa in BF16_DOT_ISAS else pytest.approx(want, rel=1e-6, abs=0))
    was = leankern._C.mx_set_few_rows_fma(False)
    try:
        few = leankern.mx.linear(x[:31], qt, act_fmt="mxint8")[0, 0].item()
        assert few == (0.0 if isa in BF16_DOT_ISAS else pytest.approx(want, rel=1e-6, abs=0))
        leankern._C.mx_set_few_rows_fma(True)  # 31 rows: AMX tiles where on, else the few-rows FMA form
        few = leankern.mx.linear(x[:31], qt, act_fmt="mxint8")[0, 0].item()
        assert few == (0.0 if isa == "amx" else pytest.approx(want, rel=1e-6, abs=0))
    finally:
        leankern._C.mx_set_few_rows_fma(was)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_amx_prefill_shapes(isa, fmt, dtype):
    """The prefill shapes of the AMX kernel (linear_packed_amx.h; other ISAs run the same cases
    through their own kernels): rows crossing its 16-row tiles and its 512-row passes (530), N
    across 16-tile panels with a ragged last tile (277), K not a whole number of its 256-element
    chunks (608), a 1024-element block (one block per chunk), block size 2 (16 blocks per AMX
    step), K % 32 != 0 (the AVX-512 prefill kernel instead), bias; bf16 x, and MX dual on x_hat (exact
    in bf16) with x, bias and output of every dtype. Within the bound of the fp32 reference."""
    for m, n, k, bs, bias in ((530, 37, 608, 32, True), (33, 277, 256, 64, False), (47, 40, 2048, 1024, True),
                              (64, 24, 128, 2, False), (40, 19, 48, 16, True)):
        if fmt.startswith("nv"):
            bs = 16
        qt = _weight(n, k, fmt, bs, seed=m)
        x = (torch.randn(m, k, generator=torch.Generator().manual_seed(n)) * 2).to(dtype)
        b = torch.randn(n).to(dtype) if bias else None
        xb, bb = x.to(torch.bfloat16), None if b is None else b.to(torch.bfloat16)
        _check(leankern.mx.linear(xb, leankern.mx.prepack(qt), bb), xb, qt, bb)
        if not fmt.startswith("nv") and m < 100:
            _check(leankern.mx.linear(x, leankern.mx.prepack(qt), b, act_fmt=fmt), x, qt, b, fmt)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_amx_few_rows_shapes(isa, fmt):
    """The AMX kernel's few-rows form (linear_packed_amx.h, 2 <= M <= 32 by format; other ISAs run the same cases
    through their own kernels): one 16-row group (4 row tiles per pass) and two (2 per pass), passes with 1-3 tiles
    left (N = 37: 3 tiles, 80: 5, 112: 7, the last ragged where N % 16 != 0), block sizes 8 and 16 (several blocks
    per AMX step; the 4-bit MX decoder needs whole groups of 8), 32, 64 and 256 (several steps per block), bias;
    bf16 x, and MX dual on x_hat. Within the bound of the fp32 reference."""
    for m, n, k, bs, bias in ((2, 37, 256, 8, True), (5, 80, 512, 32, False), (16, 112, 256, 16, True),
                              (17, 37, 512, 64, True), (32, 80, 512, 256, False), (9, 21, 1024, 32, True)):
        _check_bf16_and_dual(fmt, m, n, k, bs, bias)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fp32_x_of_many_rows_as_bf16_parts(isa, fmt, dtype):
    """fp32 / fp16 x from 32 rows: with AMX on, three bf16 parts on the tiles (split_linear; other ISAs: their fp32
    kernels), within tolerances.py's bound for it (x_parts), also with x spread over 2^-60 .. 2^60 and a bias.
    x holding Inf or NaN keeps the fp32 kernel: +-Inf / NaN exactly where the fp32 reference has them."""
    bs = 16 if fmt.startswith("nv") else 32
    for m, n, k in ((32, 37, 64), (77, 40, 608)):
        qt = _weight(n, k, fmt, bs, seed=m)
        gen = torch.Generator().manual_seed(k)
        x = torch.randn(m, k, generator=gen)
        if dtype == torch.float32:
            x = x * torch.exp2(torch.randint(-60, 61, (m, 1), generator=gen).float())
        x = x.to(dtype)
        b = torch.randn(n).to(dtype)
        _check(leankern.mx.linear(x, leankern.mx.prepack(qt), b), x, qt, b)
    qt = _weight(20, 64, fmt, bs)
    x = torch.randn(40, 64).to(dtype)
    x[3, 5], x[7, 0] = float("inf"), float("nan")
    y = leankern.mx.linear(x, leankern.mx.prepack(qt)).float()
    ref = x.float() @ qt.dequantize(torch.float32).T
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(torch.isinf(y), torch.isinf(ref))


@pytest.mark.parametrize("fmt,first", [("mxfp4", 2), ("mxint4", 2), ("mxint8", 2), ("mxint6", 2), ("mxfp8_e4m3", 4),
                                       ("mxfp6_e3m2", 4), ("nvfp4", 8), ("nvint4", 8)])
def test_amx_takes_few_rows_from_its_first_row_count(fmt, first):
    """Which kernel ran below 32 rows with AMX on, shown by subnormal bf16 x (2^-130): AMX tiles count it as zero,
    the few-rows kernel's FMA form (on by default with AMX) multiplies it. The FMA form up to first - 1 rows, AMX
    from first (linear_packed_cpu.cpp, amx_min_rows: where each was measured faster)."""
    skip_unless_cpp()
    ext = leankern._C
    if not ext.amx_supported():
        pytest.skip("needs a CPU with AMX")
    qt = leankern.mx.prepack(_weight(21, 64, fmt, 16 if fmt.startswith("nv") else 32))
    x = torch.zeros(first, 64, dtype=torch.bfloat16)
    x[:, 0] = 2.0 ** -130
    was_fma = ext.mx_set_few_rows_fma(True)
    try:
        with on_isa("amx"), leankern.use_backend("cpp"):
            below = leankern.mx.linear(x[: first - 1], qt).float()
            at = leankern.mx.linear(x, qt).float()
    finally:
        ext.mx_set_few_rows_fma(was_fma)
    assert (below != 0).any() and torch.equal(at, torch.zeros_like(at))


def test_amx_switch_returns_the_previous_setting():
    """set_amx(on) returns the previous setting; AMX paths run only under avx512bf16 with it on."""
    skip_unless_cpp()
    ext = leankern._C
    was = ext.set_amx(False)
    try:
        assert ext.amx_enabled() is False
        assert ext.set_amx(True) is False and ext.set_amx(True) is True
        assert ext.amx_enabled() == (ext.amx_supported() and ext.cpu_isa() == "avx512bf16")
        assert ("amx" in ext.cpu_features().split()) == ext.amx_supported()
    finally:
        ext.set_amx(was)


@pytest.mark.parametrize("fmt", ["mxfp4", "mxint4", "nvfp4", "nvint4", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3",
                                 "mxfp6_e3m2", "mxint6", "mxint8"])
@pytest.mark.parametrize("vbmi", [True, False])
@pytest.mark.parametrize("fma", [True, False])
def test_few_rows_vbmi_decoders(isa, fmt, vbmi, fma):
    """bf16 x, fewer than 32 rows: with AVX512-VBMI the few-rows kernel decodes 64 code bytes at a
    time (4-bit: x regrouped by eights, blocks of whole 8-element groups; 8 / 6-bit but MXINT8: byte
    tables, blocks of whole 4-element groups, an odd last group at block size 4), otherwise 16 or 32.
    Its fp32-FMA form (fma; 4-bit with VBMI and block sizes % 8 == 0, every 6 / 8-bit format) replaces
    vdpbf16ps. All within the bound, for rows crossing its 8-row passes, N off the 16-row tile, block
    sizes 4 .. 128 (2 keeps the other decoder). Turning the VBMI decoder or the FMA form off changes
    nothing on other ISAs, on CPUs without VBMI or for formats they do not take."""
    was = leankern._C.mx_set_vbmi_decoder(vbmi)
    was_fma = leankern._C.mx_set_few_rows_fma(fma)
    try:
        for m, n, k, bs in ((1, 37, 256, 32), (3, 16, 128, 8), (9, 21, 512, 64), (17, 40, 256, 128), (5, 18, 64, 4),
                            (2, 19, 64, 2)):
            if fmt.startswith("nv"):
                bs = 16
            qt = _weight(n, k, fmt, bs, seed=m)
            x = (torch.randn(m, k, generator=torch.Generator().manual_seed(n)) * 3).to(torch.bfloat16)
            b = torch.randn(n).to(torch.bfloat16) if m % 2 else None
            _check(leankern.mx.linear(x, leankern.mx.prepack(qt), b), x, qt, b)
    finally:
        leankern._C.mx_set_vbmi_decoder(was)
        leankern._C.mx_set_few_rows_fma(was_fma)


FMA_FORMATS = ["mxfp4", "mxint4", "nvfp4", "nvint4", "mxint6", "mxint8", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3",
               "mxfp6_e3m2"]


def _fma_form_cpu(fmt):
    """The extension, or a skip where the FMA form cannot take `fmt` (it needs avx512bf16, and VBMI for 4-bit)."""
    skip_unless_cpp()
    ext = leankern._C
    if "avx512bf16" not in ext.supported_isas() or (fmt[-1] == "4" and "avx512vbmi" not in ext.cpu_features().split()):
        pytest.skip(f"needs avx512bf16 (+ VBMI for 4-bit); this CPU: {ext.cpu_features()}")
    return ext


@pytest.mark.parametrize("fmt", FMA_FORMATS)
def test_few_rows_fma_form_runs_where_taken(fmt):
    """Which kernel ran, shown by subnormal bf16 x (2^-130): vdpbf16ps counts it as zero, the FMA form
    multiplies it. On avx512bf16 with the FMA form on, every output is the fp32 reference's (exact
    here: one nonzero x, so y = x0 * w[:, 0] * scale with no sum to round); off, every output is 0."""
    ext = _fma_form_cpu(fmt)
    qt = _weight(21, 64, fmt, 16 if fmt.startswith("nv") else 32)
    x = torch.zeros(3, 64, dtype=torch.bfloat16)
    x[:, 0] = 2.0 ** -130  # bf16 subnormal (the smallest normal is 2^-126)
    ref = x.float() @ qt.dequantize(torch.float32).T
    assert (ref != 0).any()  # the case is the intended one
    was_fma = ext.mx_set_few_rows_fma(True)
    try:
        with on_isa("avx512bf16"), leankern.use_backend("cpp"):  # (AMX off: 3 rows take the few-rows kernel anyway)
            p = leankern.mx.prepack(qt)
            y_on = leankern.mx.linear(x, p).float()
            ext.mx_set_few_rows_fma(False)
            y_off = leankern.mx.linear(x, p).float()
    finally:
        ext.mx_set_few_rows_fma(was_fma)
    assert torch.equal(y_on, ref.to(torch.bfloat16).float())
    assert torch.equal(y_off, torch.zeros_like(y_off))


@pytest.mark.parametrize("fmt", FMA_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("fma", [True, False])
def test_few_rows_fma_form_fp32_x(isa, fmt, dtype, fma):
    """fp32 / fp16 x (and NV dual x_hat, fp32) below 32 rows: the FMA form where it is on and takes the format
    (under avx512bf16), else the fp32 kernel. Within the bound for rows crossing the 8-row
    passes, N off the 16-row tile, block sizes 8 .. 128, with and without bias."""
    was = leankern._C.mx_set_few_rows_fma(fma)
    try:
        for m, n, k, bs in ((1, 37, 256, 32), (3, 16, 128, 8), (9, 21, 512, 64), (17, 40, 256, 128)):
            if fmt.startswith("nv"):
                bs = 16
            qt = _weight(n, k, fmt, bs, seed=m)
            x = (torch.randn(m, k, generator=torch.Generator().manual_seed(n)) * 3).to(dtype)
            b = torch.randn(n).to(dtype) if m % 2 else None
            p = leankern.mx.prepack(qt)
            _check(leankern.mx.linear(x, p, b), x, qt, b)
            if fmt.startswith("nv"):
                _check(leankern.mx.linear(x, p, b, act_fmt=fmt), x, qt, b, fmt)
    finally:
        leankern._C.mx_set_few_rows_fma(was)


@pytest.mark.parametrize("fmt", FMA_FORMATS)
def test_few_rows_fma_form_takes_fp32_x(fmt):
    """Which kernel ran for fp32 x under avx512bf16: the FMA form and the fp32 kernel sum the same exact products
    in different orders, so on this seeded case (K = 4096, every output a sum of 4096 products) their outputs
    differ in some element exactly when the switch changes the kernel; both are within the bound."""
    ext = _fma_form_cpu(fmt)
    qt = _weight(64, 4096, fmt, 16 if fmt.startswith("nv") else 32, seed=5)
    x = torch.randn(2, 4096, generator=torch.Generator().manual_seed(6))
    was = ext.mx_set_few_rows_fma(True)
    try:
        with on_isa("avx512bf16"), leankern.use_backend("cpp"):
            p = leankern.mx.prepack(qt)
            y_on = leankern.mx.linear(x, p)
            ext.mx_set_few_rows_fma(False)
            y_off = leankern.mx.linear(x, p)
    finally:
        ext.mx_set_few_rows_fma(was)
    _check(y_on, x, qt)
    _check(y_off, x, qt)
    assert not torch.equal(y_on, y_off)


@pytest.mark.parametrize("env", [None, "0", "1"])
def test_few_rows_fma_default_is_on_where_the_cpu_has_amx(env):
    """In a fresh process the FMA form is on exactly where the CPU has AMX, unless LEANKERN_MX_FMA=0 / 1 says."""
    skip_unless_cpp()
    import os
    import subprocess
    import sys
    code = "import leankern; e = leankern._C; print(e.mx_set_few_rows_fma(False), e.amx_supported())"
    environ = {k: v for k, v in os.environ.items() if k != "LEANKERN_MX_FMA"}
    if env is not None:
        environ["LEANKERN_MX_FMA"] = env
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=environ).stdout.split()
    assert out[0] == (out[1] if env is None else str(env == "1"))


@pytest.mark.parametrize("vbmi", [True, False])
def test_packed_e5m2_inf_and_nan_codes(isa, vbmi, few_rows_form):
    """E5M2 +-Inf and NaN codes decode to themselves on every path (the VBMI byte tables hold them):
    each output column is +-Inf / NaN exactly where the fp32 reference (dequantize, matmul) is."""
    qt = _weight(20, 64, "mxfp8_e5m2")
    codes = _bytes(qt.codes).clone()
    codes[3, 5], codes[7, 60], codes[11, 33], codes[12, 0], codes[12, 1] = 0x7C, 0xFC, 0x7E, 0x7C, 0xFC
    bad = _with_scales(qt, qt.scales, codes.view(qt.codes.dtype))
    was = leankern._C.mx_set_vbmi_decoder(vbmi)
    try:
        for x in (torch.randn(2, 64).abs() + 0.5, (torch.randn(5, 64).abs() + 0.5).to(torch.bfloat16),
                  (torch.randn(40, 64).abs() + 0.5).to(torch.bfloat16)):  # 40: the prefill kernels
            y = leankern.mx.linear(x, leankern.mx.prepack(bad)).float()
            ref = x.float() @ bad.dequantize(torch.float32).T
            assert torch.equal(torch.isnan(y), torch.isnan(ref))
            assert torch.equal(torch.isinf(y) & (y > 0), torch.isinf(ref) & (ref > 0))
            assert torch.equal(torch.isinf(y) & (y < 0), torch.isinf(ref) & (ref < 0))
            assert torch.isnan(ref[:, 12]).all() and torch.isinf(ref[:, [3, 7]]).all()  # the case is the intended one
    finally:
        leankern._C.mx_set_vbmi_decoder(was)


def test_few_rows_fma_env_rejects_other_values():
    """LEANKERN_MX_FMA other than 0 / 1 is an error at import, naming the variable, not silently the default."""
    skip_unless_cpp()
    import os
    import subprocess
    import sys
    env = dict(os.environ, LEANKERN_MX_FMA="off")
    r = subprocess.run([sys.executable, "-c", "import leankern"], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "LEANKERN_MX_FMA: expected 0 or 1" in r.stderr and "'off'" in r.stderr


@pytest.mark.parametrize("hook", ["mx_set_vbmi_decoder", "mx_set_few_rows_fma"])
def test_kernel_hooks_return_the_previous_setting(hook):
    skip_unless_cpp()
    fn = getattr(leankern._C, hook)
    was = fn(False)
    try:
        assert fn(True) is False
        assert fn(True) is True
    finally:
        fn(was)


def _with_scales(qt, scales, codes=None):
    return leankern.MXTensor(qt.codes if codes is None else codes, scales, qt.global_scale, qt.fmt, qt.block_size,
                             qt.shape, qt.dtype)


# Code-byte masks that keep every element value <= 1.875 in magnitude (the top exponent bit, or
# for INT all but the lowest magnitude bit, cleared), so a block scaled by up to 2^127 stays finite.
_SMALL_MASK = {"mxfp8_e4m3": 0xBF, "mxfp8_e5m2": 0xBF, "mxfp6_e2m3": 0x2F, "mxfp6_e3m2": 0x2F, "mxfp4": 0xBB,
               "mxint4": 0x11, "mxint8": 0x01, "mxint6": 0x01}


@pytest.mark.parametrize("fmt", sorted(_SMALL_MASK))
@pytest.mark.parametrize("scale_byte", [0, 1, 2, 200, 230, 240, 246, 247, 250, 254])
def test_packed_linear_extreme_block_scales(isa, fmt, scale_byte, few_rows_form):
    """Block scales at both ends of E8M0 (block 1 of every third row): the kernels fold the
    decode's power of two into the scale where that cannot overflow, and apply it to the block
    sums where it could (FP8 / FP6 with scale bytes near 254); every output stays within the bound.
    x is small enough (2^-10) that no partial sum overflows fp32 (where partial sums of both signs
    overflow, every fp32-accumulating kernel, the reference included, returns NaN)."""
    qt = _weight(20, 128, fmt, seed=scale_byte)
    scales, codes = _bytes(qt.scales).clone(), _bytes(qt.codes).clone()
    per_block = codes.shape[1] // scales.shape[1]
    scales[::3, 1] = scale_byte
    codes[::3, per_block:2 * per_block] &= _SMALL_MASK[fmt]
    w = _with_scales(qt, scales.view(qt.scales.dtype), codes.view(qt.codes.dtype))
    assert torch.isfinite(w.dequantize(torch.float32)).all()
    # bf16 rows: the few-rows (5, 17) and prefill (40) bf16 dot-product kernels under avx512bf16
    for m, dtype in ((3, torch.float32), (5, torch.bfloat16), (17, torch.bfloat16), (40, torch.bfloat16)):
        x = (torch.randn(m, 128, generator=torch.Generator().manual_seed(1)) * 2.0**-10).to(dtype)
        _check(leankern.mx.linear(x, leankern.mx.prepack(w)), x, w)


def _normal_bf16(m, k, top_exp, seed):
    """[m, k] bf16 of random sign whose magnitudes lie in [2^(top_exp - 4), 2^top_exp): all normal for top_exp >= -122."""
    return binade_tensor((m, k), top_exp, torch.Generator().manual_seed(seed)).to(torch.bfloat16)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_packed_linear_products_near_fp32_subnormals(isa, fmt, few_rows_form):
    """Normal bf16 x whose products with the weights fall near fp32's subnormal range, where vdpbf16ps and AMX tiles
    flush results to zero: (a) rows whose every block scale is tiny (bytes 3 .. 24) times x ~ 2^-10 / 2^-20, which
    the folded kernels (the prefill kernel's folded tiles, AMX) must not fold; (b) x ~ 2^-100 .. 2^-122 times ordinary
    weights, which every bf16 kernel but the fold would flush in its block sums (the op takes the fp32 kernels). Rows
    of x crossing every kernel's row counts (few rows, prefill); dual on x_hat for MX act formats. Within the
    derived bound everywhere (before the checks: 34 failures of (a) in the prefill kernel, up to 1.8e-37 over it)."""
    nv = fmt.startswith("nv")
    bs = 16 if nv else 32
    qt = _weight(20, 128, fmt, bs)
    cases = []
    if not nv:
        for sbyte in (3, 10, 18, 24):
            scales = _bytes(qt.scales).clone()
            scales[::3, :] = sbyte
            cases += [(_with_scales(qt, scales.view(qt.scales.dtype)), xe) for xe in (-10, -20)]
    cases += [(qt, xe) for xe in (-100, -106, -112, -118, -122)]
    for w, xe in cases:
        for m in (3, 5, 17, 40):
            x = _normal_bf16(m, 128, xe, seed=m - xe)
            _check(leankern.mx.linear(x, leankern.mx.prepack(w)), x, w)
            if not nv:
                _check(leankern.mx.linear(x, leankern.mx.prepack(w), act_fmt=fmt), x, w, None, fmt)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_linear_x_near_the_top_of_fp32(isa, fmt):
    """|x| up to 2^124 times weights of small block scales (byte 90: 2^-37; NV as quantized): the products are finite,
    but the kernels' per-block sums of x times the unscaled element values were not (inf from |x| ~ 2^118 on every ISA,
    47 cases); the op computes such x as ((x 2^-k) W^T) 2^k. Prepacked and row-major weights, fp32 and bf16 x, a
    bias, dual on x_hat for MX act formats; within the bound (infinities only where the exact result reaches the
    overflow threshold of y's dtype)."""
    qt = _weight(20, 128, fmt, 16 if fmt.startswith("nv") else 32)
    if not fmt.startswith("nv"):
        scales = _bytes(qt.scales).clone()
        scales[:] = 90
        qt = _with_scales(qt, scales.view(qt.scales.dtype))
    for top in (110, 118, 124):
        for dtype in (torch.float32, torch.bfloat16):
            for m in (1, 3, 17, 40):
                x = _normal_bf16(m, 128, top, seed=m + top).to(dtype)
                b = torch.randn(20).to(dtype) if m == 3 else None
                for w in (leankern.mx.prepack(qt), qt):
                    _check(leankern.mx.linear(x, w, b), x, qt, b)
                    if not fmt.startswith("nv") and top < 124:  # (x_hat's own block scales top out at 2^127)
                        _check(leankern.mx.linear(x, w, b, act_fmt=fmt), x, qt, b, fmt)


@pytest.mark.parametrize("fmt", ["mxint8", "mxfp4", "nvfp4"])
def test_linear_row_near_the_top_leaves_the_other_rows_alone(isa, fmt):
    """The x shift is per row (common/x_shift.h): a row of |x| ~ 2^100 next to an ordinary row and a row of ~1e-36
    leaves each within its own bound (before: one k for all of x pushed the small rows down, the 1e-36 row to 0 on
    every ISA). Prepacked and row-major weights, fp32 and bf16 x, with a bias."""
    qt = _weight(16, 64, fmt, 16 if fmt.startswith("nv") else 32)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 64, generator=gen) * torch.tensor([[2.0**100], [1.0], [1e-36]])
    b = torch.randn(16, generator=gen)
    for dtype in (torch.float32, torch.bfloat16):
        for w in (leankern.mx.prepack(qt), qt):
            xd = x.to(dtype)
            _check(leankern.mx.linear(xd, w), xd, qt)
            _check(leankern.mx.linear(xd, w, b.to(dtype)), xd, qt, b.to(dtype))


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp8_e4m3", "nvfp4"])
def test_packed_nan_scale_byte_poisons_its_output_column(isa, fmt, few_rows_form):
    qt = _weight(20, 64, fmt)
    scales = _bytes(qt.scales).clone()
    scales[17, 1 if fmt != "nvfp4" else 3] = 0xFF if fmt != "nvfp4" else 0x7F
    bad = _with_scales(qt, scales.view(qt.scales.dtype))
    for x in (torch.randn(3, 64), torch.randn(3, 64).to(torch.bfloat16), torch.randn(40, 64).to(torch.bfloat16)):
        y = leankern.mx.linear(x, leankern.mx.prepack(bad))
        assert torch.isnan(y[:, 17]).all() and torch.isfinite(y[:, :17]).all() and torch.isfinite(y[:, 18:]).all()


def test_packed_e4m3_nan_codes_take_the_exact_path(isa, few_rows_form):
    """E4M3 NaN codes (0x7F / 0xFF) would decode to numbers through the fp16 pattern; their block
    is decoded exactly: the row is NaN, every other row within the bound."""
    qt = _weight(18, 128, "mxfp8_e4m3")
    codes = _bytes(qt.codes).clone()
    codes[4, 40] = 0x7F
    codes[17, 100] = 0xFF
    bad = _with_scales(qt, qt.scales, codes.view(qt.codes.dtype))
    for x in (torch.randn(2, 128), torch.randn(2, 128).to(torch.bfloat16), torch.randn(40, 128).to(torch.bfloat16),
              torch.randn(1, 128)):
        y = leankern.mx.linear(x, leankern.mx.prepack(bad))
        assert torch.isnan(y[:, [4, 17]]).all()
        keep = [i for i in range(18) if i not in (4, 17)]
        good = leankern.MXTensor(qt.codes[keep], qt.scales[keep], qt.global_scale, qt.fmt, 32, (16, 128), qt.dtype)
        _check(y[:, keep].contiguous(), x, good)


@pytest.mark.parametrize("bs", [2, 32])
def test_packed_e4m3_one_row_zero_and_subnormal_codes(isa, bs):
    """AVX2's one-row MXFP8 loop decodes E4M3 codes as bf16 patterns that are exact for normal codes only; a block
    holding a zero or subnormal code (either sign) goes through the general path. Rows made mostly of such codes
    (so that a misdecode, 2^-7 or more per element, exceeds the bound), one and five rows of x (5 = a pass of four,
    then one), fp32 and bf16 x. (Checked: with the block check removed, this test fails at both block sizes.)"""
    qt = _weight(33, 128, "mxfp8_e4m3", bs, seed=bs)
    codes = _bytes(qt.codes).clone()
    codes[0, :] = 0x00  # +0 ...
    codes[0, 5] = 0x38  # ... and one 1.0
    codes[1, :] = 0x80  # -0
    codes[5, 0::2], codes[5, 1::2] = 0x01, 0x81  # the smallest subnormals, both signs
    codes[16, 64] = 0x87  # one subnormal among normal codes
    codes[32, 0::2], codes[32, 1::2] = 0x00, 0x07  # zeros and the largest subnormal
    codes[20, :] = 0x08  # the smallest normal (no special case needed)
    w = _with_scales(qt, qt.scales, codes.view(qt.codes.dtype))
    for m in (1, 5):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(m, 128, generator=torch.Generator().manual_seed(m)).to(dtype)
            _check(leankern.mx.linear(x, leankern.mx.prepack(w)), x, w)


def test_packed_zero_and_tiny_sizes(isa):
    qt = leankern.mx.prepack(_weight(3, 32, "mxint4"))
    assert leankern.mx.linear(torch.randn(0, 32), qt).shape == (0, 3)
    w0 = leankern.mx.prepack(leankern.mx.quantize(torch.randn(0, 32), "mxint8"))
    assert leankern.mx.linear(torch.randn(2, 32), w0).shape == (2, 0)


# ---------------------------------------------------------------------------------------- errors
def _packed_args(**kw):
    qt = _weight(8, 64, "mxint8")
    args = dict(x=torch.randn(2, 64), packed=pack_weight(qt.codes, qt.scales, "mxint8", 32),
                global_scale=qt.global_scale, fmt="mxint8", block_size=32, N=8, bias=None, act_fmt=None)
    args.update(kw)
    return tuple(args.values())


BAD = [
    (dict(x=torch.randn(2, 48)), ValueError, r"x.shape\[-1\]: expected 64 \(the in_features of the weight\), got 48"),
    (dict(x=torch.randn(2, 64, dtype=torch.float64)), TypeError, "x: expected dtype"),
    (dict(packed=torch.zeros(1, 2, 528, dtype=torch.int8)), TypeError, "packed: expected dtype"),
    (dict(packed=torch.zeros(2, 528, dtype=torch.uint8)), ValueError, r"packed: expected a 3-D"),
    (dict(N=17), ValueError, r"packed: expected shape \(2, 2, 528\), got \(1, 2, 528\)"),
    (dict(N=-1), ValueError, "N: expected >= 0, got -1"),
    (dict(fmt="mxfp4"), ValueError, r"packed: expected shape \(1, 2, 272\), got \(1, 2, 528\)"),
    (dict(bias=torch.randn(7)), ValueError, r"bias: expected shape \(8,\), got \(7,\)"),
    (dict(act_fmt="mxfp5"), ValueError, "act_fmt: expected one of"),
    (dict(block_size=24), ValueError, "block_size: expected a power of two"),
]


@pytest.mark.parametrize("backend", ["ref", "cpp"])
@pytest.mark.parametrize("kwargs,exc,msg", BAD)
def test_packed_rejects_bad_input(backend, kwargs, exc, msg):
    if backend == "cpp":
        skip_unless_cpp()
    with leankern.use_backend(backend), pytest.raises(exc, match=msg):
        torch.ops.leankern.mx_linear_packed(*_packed_args(**kwargs))


def test_packed_opcheck_and_compile():
    qt = leankern.mx.prepack(_weight(16, 64, "mxfp4"))
    x, b = torch.randn(3, 64), torch.randn(16)
    torch.library.opcheck(torch.ops.leankern.mx_linear_packed.default,
                          (x, qt.codes, qt.global_scale, "mxfp4", 32, 16, b, None))
    eager = leankern.mx.linear(x, qt, b)
    compiled = torch.compile(lambda x: leankern.mx.linear(x, qt, b), fullgraph=True)(x)
    assert torch.equal(eager, compiled)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m,act_fmt", [(3, None), (40, None), (40, "mxint8")])
def test_packed_output_rounding_and_nan_columns(isa, dtype, m, act_fmt):
    """The packed kernels' output row store (a vector form on AVX-512): a block with the NaN scale (MX 0xFF) makes its
    output column NaN, as bf16 the pattern 0xFFFF (store_f32_bits), and leaves the other 20 columns (a full and a
    partial 16-row tile, bias added) finite."""
    qt = _weight(21, 64, "mxint8", seed=m)
    scales = qt.scales.clone()
    scales[2, 1] = 0xFF
    bad = leankern.mx.prepack(leankern.MXTensor(qt.codes, scales, qt.global_scale, qt.fmt, qt.block_size, qt.shape,
                                                qt.dtype))
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, 64, generator=gen).to(dtype)
    bias = torch.randn(21, generator=gen).to(dtype)
    y = leankern.mx.linear(x, bad, bias, act_fmt=act_fmt)
    assert y.dtype == dtype and torch.isnan(y[:, 2]).all()
    if dtype == torch.bfloat16:
        assert (y[:, 2].view(torch.int16) == -1).all()  # 0xFFFF
    keep = [c for c in range(21) if c != 2]
    assert torch.isfinite(y[:, keep]).all()
