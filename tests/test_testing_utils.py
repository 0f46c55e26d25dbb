"""leankern.testing: the comparators really fail, and the strategies generate what they claim."""
import math
import re

import pytest
import torch
from hypothesis import find, given, settings, strategies as st

from leankern.mx.formats import FORMATS, get_format
from leankern.mx.ref import mx_quantize_ref
from leankern.testing import TOLERANCES, Tolerance, assert_bitexact, assert_close, bit_view, qsnr_db
from leankern.testing import strategies as lst
from tolerances import TOLERANCES as TEST_TOLERANCES
from tolerances import tol

FIND = settings(max_examples=2000, database=None, deadline=None)


def _flip_lsb(t: torch.Tensor, idx) -> torch.Tensor:
    bits = bit_view(t).clone()
    bits[idx] ^= 1
    return bits.view(t.dtype)


# ----------------------------------------------------------------------------- assert_bitexact
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.uint8,
                                   torch.int8, torch.int32])
def test_bitexact_fails_on_one_bit(dtype):
    x = (torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7).to(dtype)
    assert_bitexact(x, x.clone(), name="same")
    y = _flip_lsb(x, (2, 3))
    with pytest.raises(AssertionError) as info:
        assert_bitexact(y, x, name="codes")
    msg = str(info.value)
    assert msg.startswith("codes: 1 of 24 elements differ bitwise")
    assert "at index (2, 3)" in msg
    assert re.search(r"actual 0x[0-9a-f]+ \(.+\), expected 0x[0-9a-f]+ \(.+\)", msg)


def test_bitexact_reports_first_mismatch_in_row_major_order_and_count():
    x = torch.zeros(3, 5)
    y = x.clone()
    y[2, 0], y[1, 4], y[0, 3] = 1.0, 2.0, 3.0
    with pytest.raises(AssertionError) as info:
        assert_bitexact(y, x, max_listed=1)
    msg = str(info.value)
    assert "3 of 15 elements differ" in msg
    assert "at index (0, 3): actual 0x40400000 (3.0), expected 0x00000000 (0.0)" in msg
    assert "(1, 4)" not in msg and "... and 2 more" in msg


def test_bitexact_is_bitwise_for_zero_sign_and_nan_payload():
    with pytest.raises(AssertionError):
        assert_bitexact(torch.tensor([-0.0]), torch.tensor([0.0]))
    qnan = torch.tensor([0x7FC00000], dtype=torch.int32).view(torch.float32)
    other_nan = torch.tensor([0x7FC00001], dtype=torch.int32).view(torch.float32)
    assert_bitexact(qnan, qnan.clone())
    with pytest.raises(AssertionError, match="0x7fc00001"):
        assert_bitexact(other_nan, qnan)
    assert_bitexact(other_nan, qnan, any_nan=True)


def test_bitexact_checks_dtype_shape_and_structure():
    a = torch.zeros(4, dtype=torch.uint8)
    with pytest.raises(AssertionError, match="dtype differs"):
        assert_bitexact(a, a.to(torch.int8))
    with pytest.raises(AssertionError, match="shape differs"):
        assert_bitexact(a, torch.zeros(2, 2, dtype=torch.uint8))
    with pytest.raises(AssertionError, match=r"q\[1\]: 1 of 4"):
        assert_bitexact((a, a), (a, _flip_lsb(a, 0)), name="q")
    with pytest.raises(AssertionError, match="structure"):
        assert_bitexact((a,), (a, a))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_bitexact_complex_reports_both_parts(dtype):
    x = torch.tensor([1 + 1j, 2 + 2j, -0.5 + 4j], dtype=dtype)
    assert_bitexact(x, x.clone())
    y = x.clone()
    y[1] = 2 + 3j
    with pytest.raises(AssertionError) as info:
        assert_bitexact(y, x, name="c")
    msg = str(info.value)
    assert msg.startswith(f"c: 1 of 3 elements differ bitwise ({dtype}")
    nib = 8 if dtype == torch.complex64 else 16  # hex digits per part
    assert re.search(rf"at index \(1,\): actual \(0x[0-9a-f]{{{nib}}}, 0x[0-9a-f]{{{nib}}}\) \(\(2\+3j\)\), "
                     rf"expected \(0x[0-9a-f]{{{nib}}}, 0x[0-9a-f]{{{nib}}}\) \(\(2\+2j\)\)", msg), msg
    conj = torch.tensor([1 + 0j, 2 + 2j], dtype=dtype).conj()  # a lazy conj view: imaginary parts -0.0, -2.0
    assert_bitexact(conj[1:], torch.tensor([2 - 2j], dtype=dtype))
    with pytest.raises(AssertionError, match=r"1 of 2 elements differ.*\n  at index \(0,\)"):  # -0.0 vs 0.0
        assert_bitexact(conj, torch.tensor([1 + 0j, 2 - 2j], dtype=dtype))
    with pytest.raises(AssertionError, match=r"(?s)1 of 1 elements .*at index \(\)"):  # 0-dim
        assert_bitexact(y[1], x[1])


def test_bitexact_complex_nan_parts():
    qnan = torch.tensor([0x7FC00000, 0x3F800000], dtype=torch.int32).view(torch.float32)
    other = torch.tensor([0x7FC00001, 0x3F800000], dtype=torch.int32).view(torch.float32)
    a, b = torch.view_as_complex(qnan), torch.view_as_complex(other)  # nan + 1j, another NaN payload
    with pytest.raises(AssertionError, match="0x7fc00001"):
        assert_bitexact(b, a)
    assert_bitexact(b, a, any_nan=True)
    with pytest.raises(AssertionError):  # any_nan ignores NaN payloads, not the other part
        assert_bitexact(b + 1j, a, any_nan=True)


def test_bitexact_on_quantizer_outputs():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    want = mx_quantize_ref(x, "mxfp4", 32)
    assert_bitexact(mx_quantize_ref(x.clone(), "mxfp4", 32), want)
    codes = want[0].clone()
    codes[5, 7] ^= 0x10  # one bit of one packed nibble
    with pytest.raises(AssertionError, match=r"(?s)\[0\]: 1 of 256 .*at index \(5, 7\)"):
        assert_bitexact((codes, want[1], want[2]), want)


# ----------------------------------------------------------------------------- qsnr / assert_close
def test_qsnr_db_values():
    x = torch.ones(100)
    assert qsnr_db(x, x + 0.5) == pytest.approx(10 * math.log10(4), abs=1e-12)
    assert qsnr_db(x, x) == math.inf
    assert math.isnan(qsnr_db(x, torch.full((100,), math.nan)))
    with pytest.raises(ValueError, match="shape"):
        qsnr_db(x, torch.ones(3))


def test_assert_close_fails_when_outside_tolerance():
    e = torch.linspace(-4, 4, 101)
    assert_close(e * (1 + 1e-7), e, "fp32")
    with pytest.raises(AssertionError, match=r"(?s)1 of 101 elements outside .*at index \(7,\)"):
        bad = e.clone()
        bad[7] *= 1.01
        assert_close(bad, e, "fp32")
    with pytest.raises(AssertionError):  # NaN where a number is expected
        assert_close(torch.where(e == e[3], math.nan, e), e, torch.float32)
    nan_e = e.clone()
    nan_e[0] = math.nan
    assert_close(nan_e.clone(), nan_e, "bf16")


@pytest.mark.parametrize("key", ["fp32", "bf16", "mxfp4"])
def test_assert_close_infinite_expected_needs_the_same_infinity(key):
    """rtol * |inf| is inf: an infinite expected value must still be matched by that infinity exactly."""
    inf = math.inf
    for actual, expected in ((1.0, inf), (-inf, inf), (0.0, -inf), (3e38, inf), (inf, -inf), (math.nan, inf),
                             (inf, 1.0), (-inf, 3e38), (inf, math.nan)):
        with pytest.raises(AssertionError, match=r"1 of 1 elements outside"):
            assert_close(torch.tensor([actual]), torch.tensor([expected]), key)
    for v in (inf, -inf, math.nan):
        assert_close(torch.tensor([v]), torch.tensor([v]), key)
    e = torch.tensor([1.0, inf, -2.0, -inf])
    assert_close(e.clone(), e, key)
    with pytest.raises(AssertionError, match=r"(?s)1 of 4 elements .*worst error is infx .*at index \(3,\): actual 0.5, expected -inf, allowed 0"):
        assert_close(torch.tensor([1.0, inf, -2.0, 0.5]), e, key)


def test_assert_close_rms_scaled_entry():
    e = torch.tensor([1000.0, -1000.0, 1e-3])
    t = TOLERANCES["mxfp4"]
    assert t.atol_rms > 0
    slack = t.atol_rms * float(e.pow(2).mean().sqrt())
    assert_close(e + torch.tensor([0.0, 0.0, 0.5 * slack]), e, "mxfp4")
    with pytest.raises(AssertionError):
        assert_close(e + torch.tensor([0.0, 0.0, 2 * slack]), e, "mxfp4")


def test_tolerance_table_lookup():
    assert set(FORMATS) <= set(TOLERANCES)
    assert tol(torch.bfloat16) == TOLERANCES["bf16"]
    assert "hadamard_fp32" in TEST_TOLERANCES and "hadamard_fp32" not in TOLERANCES
    assert tol(Tolerance(rtol=1.0)).rtol == 1.0
    with pytest.raises(KeyError, match="no tolerance entry"):
        tol("no_such_key")
    for key, t in TOLERANCES.items():  # a tolerance that cannot fail is a bug
        assert t.rtol < 0.1 and t.atol_rms < 0.1 and t.atol < 1e-3, key


# ----------------------------------------------------------------------------- strategies
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["nan", "inf", "subnormal", "neg_zero"])
def test_bit_patterns_reach_specials(dtype, kind):
    pred = {
        "nan": lambda x: bool(torch.isnan(x).any()),
        "inf": lambda x: bool(torch.isinf(x).any()),
        "subnormal": lambda x: bool(((x != 0) & (x.abs() < torch.finfo(dtype).tiny)).any()),
        "neg_zero": lambda x: bool(((x == 0) & torch.signbit(x)).any()),
    }[kind]
    x = find(lst.bit_pattern_tensors(lst.shapes(block_size=16), dtype=dtype), pred, settings=FIND)
    assert x.dtype == dtype


@given(x=lst.bit_pattern_tensors(lst.shapes(block_size=32), dtype=torch.float32, allow_nan=False, allow_inf=False,
                                 allow_subnormal=False))
def test_bit_patterns_respect_restrictions(x):
    assert torch.isfinite(x).all()
    assert not ((x != 0) & (x.abs() < torch.finfo(torch.float32).tiny)).any()


@given(shape=lst.shapes(block_size=32, max_blocks=9))
def test_shapes_are_block_multiples(shape):
    assert shape[-1] % 32 == 0 and shape[-1] >= 32 and all(d >= 1 for d in shape)


@given(shape=lst.shapes(block_size=16, multiple=False))
def test_shapes_non_multiple(shape):
    assert shape[-1] % 16 != 0


def test_shapes_reach_one_and_primes():
    find(lst.shapes(), lambda s: len(s) >= 2 and s[0] == 1, settings=FIND)
    find(lst.shapes(), lambda s: len(s) >= 2 and s[0] in (13, 17, 31, 61), settings=FIND)
    find(lst.shapes(), lambda s: s[-1] // 32 in (5, 7), settings=FIND)


@given(sb=lst.blocked_shapes(), fmt=lst.format_names("nv"), mode=lst.scale_modes())
def test_small_strategies(sb, fmt, mode):
    shape, bs = sb
    assert shape[-1] % bs == 0 and bs & (bs - 1) == 0
    assert get_format(fmt).is_nv and mode in ("rceil", "floor")


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp6_e3m2", "mxfp4", "mxint8", "mxint4"])
@pytest.mark.parametrize("scale_exp", [-3, 0, 5])
def test_special_values_hit_ties_at_the_stated_scale(fmt, scale_exp):
    """Anchored blocks get scale 2**scale_exp; every tie rounds to the even neighbour; FLOOR saturates."""
    el = get_format(fmt).element
    x, labels = lst.special_value_tensor(fmt, scale_exp=scale_exp, with_labels=True)
    values = x.flatten().tolist()
    for mode in ("rceil", "floor"):
        codes, scales, _ = mx_quantize_ref(x, fmt, x.shape[-1], mode)
        deq_mag = _decode_magnitudes(codes, fmt).flatten()
        finite_rows = [i for i in range(x.shape[0]) if torch.isfinite(x[i]).all()
                       and not any(labels[i * x.shape[1] + j].startswith("overflow") for j in range(x.shape[1]))]
        assert all(int(scales[i, 0]) == scale_exp + 127 for i in finite_rows)
        for k, lab in enumerate(labels):
            if lab.startswith("tie_"):
                lo, hi = (int(c) for c in lab.split("_")[1:])
                got = int(deq_mag[k])
                assert got in (lo, hi) and got % 2 == 0, (lab, got)  # even code = even integer / even mantissa
            if lab == "overflow_tie" and mode == "floor":
                assert int(deq_mag[k]) == el.max_code and values[k] > el.max_value * 2.0**scale_exp


def _decode_magnitudes(codes, fmt):
    el = get_format(fmt).element
    raw = codes.view(torch.uint8).to(torch.int64)
    if el.packed:
        raw = torch.stack([raw & 0xF, raw >> 4], -1).flatten(-2)
    if el.is_int:
        signed = torch.where(raw >= (1 << (el.bits - 1)), raw - (1 << el.bits), raw) if el.packed else codes.to(torch.int64)
        return signed.abs()
    return raw & ((1 << el.sign_bit) - 1)


@pytest.mark.parametrize("fmt", ["nvfp4", "nvint4"])
def test_special_values_nv_scale_with_unit_global_scale(fmt):
    x, labels = lst.special_value_tensor(fmt, scale_exp=2, with_labels=True)
    _, scales, _ = mx_quantize_ref(x, fmt, 16, global_scale=torch.tensor(1.0))  # [rows, 1]
    row_labels = [labels[i * 16:(i + 1) * 16] for i in range(x.shape[0])]
    in_range = torch.tensor([not any(lab.startswith("overflow") for lab in r) for r in row_labels])
    finite = torch.isfinite(x).all(-1)
    assert int((in_range & finite).sum()) >= 2
    assert (scales.float()[in_range & finite] == 4.0).all()
    assert torch.isnan(scales.float()[~finite]).all()


@given(x=lst.special_value_tensors("mxfp8_e4m3"))
def test_special_value_strategy(x):
    assert x.shape[-1] == 32 and torch.isnan(x).any() and torch.isinf(x).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@given(data=st.data())
def test_heavy_tailed_is_finite_and_heavy(dtype, data):
    x = data.draw(lst.heavy_tailed_tensors(shape=(16, 256), dtype=dtype))
    assert x.dtype == dtype and torch.isfinite(x).all()
    xf = x.double()
    kurt = float(((xf - xf.mean()) ** 4).mean() / xf.var() ** 2)
    assert kurt > 3.5  # Gaussian is 3; Student-t(<=5) and outlier channels are heavier


# ----------------------------------------------------------------------------- binade_tensor
@pytest.mark.parametrize("top_exp", [127, 124, 100, 64, 3, 0, -63, -64, -110, -122])
def test_binade_tensor_range_and_resolution(top_exp):
    """Magnitudes in [2^(top_exp - 4), 2^top_exp), fp32 normals, both signs, and as many distinct values near
    fp32's ends as near 1: 2^20 log-uniform draws over the 2^25 fp32 values of 4 binades hit ~97% distinct
    values (fp32 exponent arithmetic gave ~2^19 distinct values over the whole range for |top_exp| >= 64)."""
    n = 1 << 20
    x = lst.binade_tensor((n,), top_exp, torch.Generator().manual_seed(top_exp + 1000))
    assert x.dtype == torch.float32 and x.shape == (n,)
    m = x.abs()
    assert float(m.min()) >= 2.0 ** (top_exp - 4) and float(m.max()) < 2.0**top_exp
    assert 0.45 < float((x < 0).double().mean()) < 0.55
    assert m.unique().numel() > 0.95 * n
    assert abs(float((torch.log2(m.double()) - top_exp).mean()) + 2.0) < 0.01  # log2|x| uniform on [top - 4, top)
    bf = x.bfloat16()
    assert torch.isfinite(bf).all() and (bf.abs().float() >= torch.finfo(torch.bfloat16).tiny).all()


def test_binade_tensor_draws_like_two_fp32_rand_calls():
    """The generator is used as by ``rand(shape)`` for the magnitudes then ``rand(shape)`` for the signs (callers'
    later draws are unchanged), the sign is the second draw's ``< 0.5``, and each magnitude is within a few fp32
    ulp of the one the first draw alone gives."""
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x = lst.binade_tensor((64, 33), 120, g1, binades=3)
    u_mag, u_sign = torch.rand((64, 33), generator=g2), torch.rand((64, 33), generator=g2)
    assert torch.equal(torch.rand(5, generator=g1), torch.rand(5, generator=g2))
    assert torch.equal(x < 0, u_sign < 0.5)
    coarse = torch.exp2(120 - 3 * u_mag.double())
    assert float(((x.abs().double() - coarse) / coarse).abs().max()) < 2.0**-20


def test_binade_tensor_top_edge_is_excluded(monkeypatch):
    """A draw at the very top (u = 0, and u so small that the fp32 rounding reaches 2^top_exp) gives the largest fp32
    below 2^top_exp; u just below 1 gives 2^(top_exp - binades) or more."""
    draws = []
    monkeypatch.setattr(torch, "rand", lambda *a, **k: draws.pop(0))
    for top in (127, 3, -122):
        # u = 0 (both draws' bits zero); u = 2^-47; u just below 1; u = 1/4 exactly
        draws[:] = [torch.tensor([0.0, 0.0, 1 - 2.0**-24, 0.25]), torch.tensor([0.0, 0.5 + 2.0**-24, 1 - 2.0**-24, 0.0])]
        x = lst.binade_tensor((4,), top, torch.Generator())
        below = math.ldexp(1 - 2.0**-24, top)  # the largest fp32 below 2^top
        assert x.tolist()[:2] == [-below, below], top
        assert 2.0 ** (top - 4) <= float(x[2]) < 2.0 ** (top - 4) * (1 + 2.0**-20), top
        assert float(x[3]) == -(2.0 ** (top - 1)), top


@pytest.mark.parametrize("top_exp, binades", [(128, 4), (-123, 4), (-127, 1), (200, 4), (0, 0), (3, -1)])
def test_binade_tensor_rejects_out_of_range(top_exp, binades):
    with pytest.raises(ValueError, match="top_exp|binades"):
        lst.binade_tensor((2,), top_exp, torch.Generator(), binades=binades)
    with pytest.raises(TypeError):
        lst.binade_tensor((2,), 3.5, torch.Generator())
