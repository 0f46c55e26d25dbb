"""The reference itself, checked against independent oracles and hand-derived values from the spec."""
import math

import pytest
import torch

from leankern.mx.formats import ELEMENTS, FORMATS
from leankern.mx.ref import element_values, mx_dequantize_ref, mx_quantize_ref, round_to_element


def _oracle_round(v: torch.Tensor, el) -> torch.Tensor:
    """Brute force: nearest grid value, ties to the even code, saturating. v: float64 >= 0."""
    grid = element_values(el)  # [C]
    v = v.clamp(max=el.max_value)
    dist = (v.unsqueeze(-1) - grid).abs()  # [N, C]
    best = dist.min(dim=-1, keepdim=True).values
    is_best = dist == best
    n_best = is_best.sum(-1)
    first = is_best.float().argmax(-1)
    # two nearest codes (a tie): they are adjacent, pick the even one
    return torch.where((n_best == 2) & (first % 2 == 1), first + 1, first)


@pytest.mark.parametrize("el_name", list(ELEMENTS))
def test_round_to_element_matches_brute_force(el_name):
    el = ELEMENTS[el_name]
    bf16 = torch.arange(0, 0x7F80, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)  # all finite >= 0
    mids = (element_values(el)[1:] + element_values(el)[:-1]) / 2  # exact ties
    v = torch.cat([bf16.to(torch.float64), mids, mids.nextafter(torch.tensor(0.0, dtype=torch.float64))])
    torch.testing.assert_close(round_to_element(v, el), _oracle_round(v, el), rtol=0, atol=0)


@pytest.mark.parametrize("el_name", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_codes_match_torch_casts(el_name):
    """torch's own fp32 -> fp8 RNE conversion agrees with our element rounding inside the range."""
    el = ELEMENTS[el_name]
    dtype = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[el_name]
    x = torch.arange(0, 0x7F80, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    x = x[x <= el.max_value]
    ours = round_to_element(x.double(), el)
    theirs = x.to(dtype).view(torch.uint8).to(torch.int64)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def _codes_u8(c):
    return c.view(torch.uint8) if c.dtype != torch.int8 else c


# (fmt, scale_mode, block of values, expected scale byte, {index: expected code})
# Worked by hand from specs/mx.md; codes for 4-bit formats are nibbles before packing.
HAND_CASES = [
    ("mxfp8_e4m3", "rceil", [448.0, -448.0, 0.0, -0.0, 2**-9, 2**-10, 3 * 2**-10, 2**-6, 1.0625, 1.1875],
     127, {0: 0x7E, 1: 0xFE, 2: 0x00, 3: 0x80, 4: 0x01, 5: 0x00, 6: 0x02, 7: 0x08, 8: 0x38, 9: 0x3A}),
    ("mxfp8_e4m3", "rceil", [480.0, 1.0], 128, {0: 0x77, 1: 0x30}),  # 480 / 2 = 240 = 1.875 * 2^7
    ("mxfp8_e4m3", "floor", [480.0, 1.0], 127, {0: 0x7E, 1: 0x38}),  # OCP floor: 480 saturates to 448
    ("mxfp8_e5m2", "rceil", [57344.0, 1.0, 1.125], 127, {0: 0x7B, 1: 0x3C, 2: 0x3C}),  # 1.125: tie -> even
    ("mxfp6_e2m3", "rceil", [7.5, 0.125, 0.0625, 1.0625], 127, {0: 0x1F, 1: 0x01, 2: 0x00, 3: 0x08}),
    ("mxfp6_e3m2", "rceil", [28.0, -28.0, 0.0625, 1.125], 127, {0: 0x1F, 1: 0x3F, 2: 0x01, 3: 0x0C}),
    ("mxfp4", "rceil", [6.0, 5.0, 2.5, 0.25, 0.75, -6.0, 1.75, -0.0], 127,
     {0: 0x7, 1: 0x6, 2: 0x4, 3: 0x0, 4: 0x2, 5: 0xF, 6: 0x4, 7: 0x8}),
    ("mxint8", "rceil", [127.0, -127.0, 0.5, 1.5, 2.5, -2.5], 127, {0: 127, 1: -127, 2: 0, 3: 2, 4: 2, 5: -2}),
    ("mxint8", "rceil", [128.0, 3.0], 128, {0: 64, 1: 2}),  # 3 / 2 = 1.5 -> 2
    ("mxint8", "floor", [128.0, 3.0], 128, {0: 64, 1: 2}),  # floor(log2 128) - 6 = 1
    ("mxint8", "floor", [127.5, 1.0], 127, {0: 127, 1: 1}),  # 127.5 would round to 128: saturates
    ("mxint6", "rceil", [31.0, -31.0, 15.5], 127, {0: 31, 1: -31, 2: 16}),
    ("mxint4", "rceil", [7.0, -7.0, 3.5, -2.5], 127, {0: 7, 1: 0x9, 2: 4, 3: 0xE}),  # -7 = 0x9, -2 = 0xE
    ("mxint4", "rceil", [8.0, 1.0], 128, {0: 4, 1: 0}),  # 1 / 2 = 0.5 -> 0 (tie to even)
    ("mxfp8_e4m3", "rceil", [2.0**-127, 3 * 2.0**-128], 0, {0: 0x38, 1: 0x3C}),  # fp32 subnormals: e clamps to -127
    ("mxfp8_e4m3", "rceil", [0.0, -0.0], 0, {0: 0x00, 1: 0x80}),  # all-zero block: scale byte 0
]


@pytest.mark.parametrize("fmt,mode,vals,scale_byte,codes", HAND_CASES)
def test_hand_derived_codes(fmt, mode, vals, scale_byte, codes):
    f = FORMATS[fmt]
    bs = 16
    x = torch.zeros(bs)
    x[: len(vals)] = torch.tensor(vals)
    q, s, g = mx_quantize_ref(x, fmt, bs, mode)
    assert int(s.view(torch.uint8)[0]) == scale_byte
    if f.element.packed:
        b = q.view(torch.uint8).to(torch.int64)
        nib = torch.stack([b & 0xF, b >> 4], -1).flatten()
    else:
        nib = _codes_u8(q).to(torch.int64)
    for i, c in codes.items():
        assert int(nib[i]) == c, f"{fmt} {mode} element {i} ({vals[i]}): code {int(nib[i]):#x}, expected {c:#x}"
    assert float(g) == 1.0


def test_nan_inf_blocks_and_packing():
    x = torch.tensor([[float("nan")] + [1.0] * 31, [float("inf")] + [1.0] * 31, [1.0] * 32])
    # all-ones block: 2^ceil(log2(1/max)): e4m3 -> 2^-8, int8 -> 2^-6, fp4 -> 2^-2
    for fmt, ones_byte in (("mxfp8_e4m3", 119), ("mxint8", 121), ("mxfp4", 125)):
        q, s, _ = mx_quantize_ref(x, fmt, 32)
        assert s.view(torch.uint8).tolist() == [[0xFF], [0xFF], [ones_byte]]
        assert (q.view(torch.uint8)[:2] == 0).all()
        d = mx_dequantize_ref(q, s, torch.tensor(1.0), fmt, 32)
        assert torch.isnan(d[:2]).all() and torch.equal(d[2], x[2])
    q, s, g = mx_quantize_ref(x.reshape(6, 16), "nvfp4", 16, global_scale=torch.tensor(1.0))
    assert s.view(torch.uint8)[:, 0].tolist() == [0x7F, 0x23, 0x7F, 0x23, 0x23, 0x23]  # NaN; e4m3(1/6) = 11 * 2^-6


def test_nv_two_level_scale_by_hand():
    """g = amax/(448*6); with static g = 1 the block scale is e4m3(amax/6) and codes follow."""
    x = torch.zeros(2, 16)
    x[0, :4] = torch.tensor([12.0, 5.0, -3.0, 0.5])  # amax 12 -> s = 2.0 (0x40); v = 6, 2.5->2, -1.5, 0.25->0
    x[1, 0] = 0.0
    q, s, g = mx_quantize_ref(x, "nvfp4", 16, global_scale=torch.tensor(1.0))
    assert s.view(torch.uint8).tolist() == [[0x40], [0x01]]  # all-zero block: smallest positive e4m3
    b = q.view(torch.uint8).to(torch.int64)
    nib = torch.stack([b & 0xF, b >> 4], -1).flatten(1)
    assert nib[0, :4].tolist() == [0x7, 0x4, 0xB, 0x0]
    _, _, g_dyn = mx_quantize_ref(x, "nvfp4", 16)
    assert float(g_dyn) == float(torch.tensor(12.0) / torch.tensor(2688.0))
    _, _, g_int = mx_quantize_ref(x, "nvint4", 16)
    assert float(g_int) == float(torch.tensor(12.0) / torch.tensor(3136.0))  # 448 * 7


def test_dequantize_is_exact_for_mx():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, generator=gen)
    for fmt in ("mxfp8_e4m3", "mxint8", "mxfp4"):
        q, s, g = mx_quantize_ref(x, fmt, 32)
        d = mx_dequantize_ref(q, s, g, fmt, 32)
        # values on the grid survive a second round trip unchanged (codes may pick another scale)
        d2 = mx_dequantize_ref(*mx_quantize_ref(d, fmt, 32), fmt, 32)
        assert torch.equal(d, d2)
        assert not torch.equal(d, x)


def test_ldexp_exact_is_ldexp_with_an_exact_power_of_two():
    """The references' x * 2^e: the power of two built from its bits (device-independent), one rounding."""
    from leankern._pow2 import ldexp_exact

    e = torch.arange(-1022, 1024)
    got = ldexp_exact(torch.ones(e.shape, dtype=torch.float64), e)
    assert torch.equal(got, torch.tensor([math.ldexp(1.0, int(k)) for k in e], dtype=torch.float64))
    x = torch.tensor([1.5, -3.0, 0.75, 1.0, 3.0], dtype=torch.float32)
    k = torch.tensor([-140, -149, 127, -149, -150])  # fp32 subnormal results; 3 * 2^-150 rounds to 2^-149
    want = torch.tensor([math.ldexp(float(a), int(b)) for a, b in zip(x, k)], dtype=torch.float64).to(torch.float32)
    assert torch.equal(ldexp_exact(x, k).view(torch.int32), want.view(torch.int32))
