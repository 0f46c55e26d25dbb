"""Loading gpt-oss MXFP4 and ModelOpt NVFP4 checkpoint tensors into MXTensor (no requantization).

Every test builds checkpoint tensors the way the *publishing* code lays them out, with its own
encoder written here from the published conventions (not with leankern's quantizer), and checks
the decoded values element by element, bit-exactly:

* gpt-oss / HF transformers (src/transformers/integrations/mxfp4.py, convert_moe_packed_tensors;
  openai/gpt-oss gpt_oss/torch/weights.py): blocks uint8 [..., G, 16], value 2i = FP4_VALUES[byte &
  0xF], value 2i+1 = FP4_VALUES[byte >> 4]; scales uint8 [..., G], value *= 2^(byte - 127).
* ModelOpt NVFP4 (TensorRT-Model-Optimizer qtensor/nvfp4_tensor.py): weight packed as
  (q[..., 1::2] << 4) | q[..., 0::2], same table; dequant = e2m1 * (float(weight_scale) *
  weight_scale_2) in fp32; vLLM modelopt.py swizzles the block scale after loading as
  reshape(M/128, 4, 32, K/4, 4).permute(0, 3, 2, 1, 4): tiles row-tile major, element
  (32 i + j, c) of a 128x4 tile at byte 16 j + 4 i + c.
"""
import pytest
import torch

import leankern.mx as mx
from leankern.mx.checkpoints import ModelOptNVFP4, from_gpt_oss, from_modelopt_nvfp4, select_expert
from tolerances import assert_linear_within_bound, linear_error_bound

# The published table (bit 3 = sign), written out as in the sources, not taken from leankern.
FP4_VALUES = [+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def _pack_low_first(nibbles: torch.Tensor) -> torch.Tensor:
    """[..., 2m] nibble codes -> [..., m] bytes, element 2i in the low nibble (both publishers)."""
    n = nibbles.to(torch.int64)
    return (n[..., 0::2] | (n[..., 1::2] << 4)).to(torch.uint8)


def _fp4_decode(nibbles: torch.Tensor) -> torch.Tensor:
    return torch.tensor(FP4_VALUES, dtype=torch.float64)[nibbles.to(torch.int64)]


def _e4m3_value(byte: int) -> float:
    """float8_e4m3fn bits -> value by the OCP/NVIDIA definition (bias 7, subnormals, no Inf)."""
    sign = -1.0 if byte & 0x80 else 1.0
    exp, man = (byte >> 3) & 0xF, byte & 0x7
    if exp == 0xF and man == 0x7:
        return float("nan")
    if exp == 0:
        return sign * (man / 8.0) * 2.0**-6
    return sign * (1.0 + man / 8.0) * 2.0 ** (exp - 7)


def _assert_bits_equal(got: torch.Tensor, want: torch.Tensor) -> None:
    """fp32 tensors equal bit for bit (distinguishes -0 from +0; NaN == NaN)."""
    assert got.dtype == torch.float32 and want.dtype == torch.float32
    assert got.shape == want.shape, (got.shape, want.shape)
    g, w = got.view(torch.int32), want.view(torch.int32)
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan), "NaN positions differ"
    bad = (g != w) & ~nan
    assert not bad.any(), (f"{int(bad.sum())} of {bad.numel()} values differ, first at "
                           f"{bad.nonzero()[0].tolist()}: got {got[bad][0]}, want {want[bad][0]}")


# ---------------------------------------------------------------- gpt-oss MXFP4


def _gpt_oss_case(lead, groups, seed, lo=100, hi=150):
    """Random gpt-oss tensors and their intended float64 values [*lead, 32 * groups]."""
    gen = torch.Generator().manual_seed(seed)
    nib = torch.randint(0, 16, (*lead, groups, 32), generator=gen)
    sbytes = torch.randint(lo, hi + 1, (*lead, groups), generator=gen)
    blocks = _pack_low_first(nib)  # [*lead, G, 16]
    scales = sbytes.to(torch.uint8)
    values = _fp4_decode(nib) * torch.pow(2.0, (sbytes - 127).to(torch.float64)).unsqueeze(-1)
    return blocks, scales, values.reshape(*lead, groups * 32)


def test_gpt_oss_nibble_order_by_hand():
    # one group: byte 0 = 0x21 -> (0.5, 1.0); byte 1 = 0x9F -> (-6.0, -0.5); the rest 0x70 -> (0, 6)
    blocks = torch.full((1, 1, 16), 0x70, dtype=torch.uint8)
    blocks[0, 0, 0], blocks[0, 0, 1] = 0x21, 0x9F
    scales = torch.tensor([[128]], dtype=torch.uint8)  # 2^1
    qt = from_gpt_oss(blocks, scales)
    assert qt.shape == (1, 32) and qt.fmt == "mxfp4" and qt.block_size == 32 and qt.dtype == torch.bfloat16
    got = qt.dequantize(torch.float32)
    want = torch.tensor([[1.0, 2.0, -12.0, -1.0] + [0.0, 12.0] * 14], dtype=torch.float32)
    _assert_bits_equal(got, want)


@pytest.mark.parametrize("lead", [(), (5,), (3, 4), (2, 3, 6)])
def test_gpt_oss_decodes_element_by_element(lead):
    lead_shape = lead  # () : a single [G, 16] tensor, one row of K
    blocks, scales, values = _gpt_oss_case(lead_shape, groups=4, seed=len(lead))
    qt = from_gpt_oss(blocks, scales, dtype=torch.float32)
    assert qt.shape == (*lead_shape, 128)
    assert qt.codes.dtype == torch.uint8 and qt.codes.shape == (*lead_shape, 64)
    assert qt.scales.shape == (*lead_shape, 4) and float(qt.global_scale) == 1.0
    _assert_bits_equal(qt.dequantize(torch.float32), values.to(torch.float32))
    _assert_bits_equal(mx.dequantize(qt, torch.float32), values.to(torch.float32))
    assert qt.dequantize().dtype == torch.float32


def test_gpt_oss_wide_scale_range_and_signed_zero():
    blocks, scales, values = _gpt_oss_case((2, 8), groups=2, seed=7, lo=1, hi=250)
    got = from_gpt_oss(blocks, scales).dequantize(torch.float32)
    _assert_bits_equal(got, values.to(torch.float32))
    neg_zero = blocks.new_full((1, 16), 0x88)  # every nibble 8 = -0.0
    z = from_gpt_oss(neg_zero, torch.tensor([127], dtype=torch.uint8)).dequantize(torch.float32)
    assert torch.all(z == 0) and torch.all(torch.signbit(z))


def test_gpt_oss_e8m0_dtype_scales():
    e8m0 = getattr(torch, "float8_e8m0fnu", None)
    if e8m0 is None:
        pytest.skip("torch has no float8_e8m0fnu")
    blocks, scales, values = _gpt_oss_case((3,), groups=2, seed=11)
    got = from_gpt_oss(blocks, scales.view(e8m0)).dequantize(torch.float32)
    _assert_bits_equal(got, values.to(torch.float32))


def test_gpt_oss_experts_and_linear():
    E, N, G = 3, 24, 4  # K = 128
    blocks, scales, values = _gpt_oss_case((E, N), groups=G, seed=3, lo=118, hi=130)
    qt = from_gpt_oss(blocks, scales)
    assert qt.shape == (E, N, 32 * G)
    x = torch.randn(5, 32 * G, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    for e in range(E):
        w_e = select_expert(qt, e)
        assert w_e.shape == (N, 32 * G)
        w_hat = values[e].to(torch.float32)
        _assert_bits_equal(w_e.dequantize(torch.float32), w_hat)
        y = mx.linear(x, w_e)
        assert y.shape == (5, N) and y.dtype == torch.bfloat16
        exact, bound = linear_error_bound(x.float(), w_hat, None, torch.bfloat16)
        assert_linear_within_bound(y, exact, bound)
    _assert_bits_equal(select_expert(qt, -1).dequantize(torch.float32), values[-1].to(torch.float32))


def test_gpt_oss_linear_rejects_a_swapped_nibble_order():
    # guards the test itself: decoding with the high nibble first must give different values
    blocks, scales, values = _gpt_oss_case((4,), groups=2, seed=5)
    swapped = ((blocks >> 4) | ((blocks & 0xF) << 4)).to(torch.uint8)
    got = from_gpt_oss(swapped, scales).dequantize(torch.float32)
    assert not torch.equal(got, values.to(torch.float32))


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(blocks=torch.zeros(2, 4, 16, dtype=torch.int8)), TypeError, ["blocks", "uint8", "int8"]),
    (dict(blocks=torch.zeros(2, 4, 8, dtype=torch.uint8)), ValueError, ["blocks", "16", "(2, 4, 8)"]),
    (dict(blocks=torch.zeros(16, dtype=torch.uint8), scales=torch.zeros((), dtype=torch.uint8)), ValueError,
     ["blocks"]),
    (dict(scales=torch.zeros(2, 5, dtype=torch.uint8)), ValueError, ["scales", "(2, 4)", "(2, 5)"]),
    (dict(scales=torch.zeros(2, 4, dtype=torch.float32)), TypeError, ["scales", "float32"]),
    (dict(blocks=[[0] * 16]), TypeError, ["blocks", "list"]),
    (dict(dtype=torch.int32), TypeError, ["dtype", "int32"]),
])
def test_gpt_oss_bad_inputs(kwargs, exc, words):
    args = dict(blocks=torch.zeros(2, 4, 16, dtype=torch.uint8), scales=torch.zeros(2, 4, dtype=torch.uint8),
                dtype=torch.bfloat16)
    args.update(kwargs)
    with pytest.raises(exc) as info:
        from_gpt_oss(args["blocks"], args["scales"], dtype=args["dtype"])
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# ---------------------------------------------------------------- ModelOpt NVFP4


def _modelopt_case(lead, n, k, seed, g=None):
    """Random ModelOpt NVFP4 tensors and their intended fp32 values [*lead, n, k]."""
    gen = torch.Generator().manual_seed(seed)
    nib = torch.randint(0, 16, (*lead, n, k), generator=gen)
    # positive finite e4m3 bytes 0x01..0x7E (subnormals included), as ModelOpt clamps to [2^-9, 448]
    sbytes = torch.randint(1, 0x7F, (*lead, n, k // 16), generator=gen)
    if g is None:  # a realistic decode scale: amax / (6 * 448) for amax ~ 0.37
        g = torch.tensor(0.37 / (6 * 448), dtype=torch.float32)
    weight = _pack_low_first(nib)
    weight_scale = sbytes.to(torch.uint8).view(torch.float8_e4m3fn)
    s_val = torch.tensor([_e4m3_value(b) for b in range(256)], dtype=torch.float64)[sbytes]
    # ModelOpt dequantize: per_block_scale = scale.float() * double_scale (fp32), then * e2m1 (fp32)
    per_block = s_val.to(torch.float32) * g
    values = _fp4_decode(nib).to(torch.float32).reshape(*lead, n, k // 16, 16) * per_block.unsqueeze(-1)
    return weight, weight_scale, g, values.reshape(*lead, n, k), nib, s_val


def _swizzle_128x4_by_formula(scales_u8: torch.Tensor) -> torch.Tensor:
    """Row-major [R, C] bytes -> flat cuBLAS/CUTLASS 128x4 buffer, element by element from the
    published formula: tile (r // 128, c // 4) row-tile major, byte 16 * (r % 32) + 4 * ((r % 128) // 32) + c % 4."""
    R, C = scales_u8.shape
    Rp, Cp = -(-R // 128) * 128, -(-C // 4) * 4
    out = torch.zeros(Rp * Cp, dtype=torch.uint8)
    for r in range(R):
        for c in range(C):
            tile = (r // 128) * (Cp // 4) + c // 4
            out[tile * 512 + 16 * (r % 32) + 4 * ((r % 128) // 32) + c % 4] = scales_u8[r, c]
    return out


def test_modelopt_nibble_order_by_hand():
    # K = 16: bytes 0x21 -> (0.5, 1.0), 0xC7 -> (6.0, -2.0), rest 0x00; e4m3 0x40 = 2.0; g = 0.25
    weight = torch.zeros(1, 8, dtype=torch.uint8)
    weight[0, 0], weight[0, 1] = 0x21, 0xC7
    scale = torch.tensor([[0x40]], dtype=torch.uint8)
    out = from_modelopt_nvfp4(weight, scale, torch.tensor(0.25))
    assert isinstance(out, ModelOptNVFP4) and out.input_scale is None
    qt = out.weight
    assert qt.fmt == "nvfp4" and qt.block_size == 16 and qt.shape == (1, 16)
    want = torch.tensor([[0.25, 0.5, 3.0, -1.0] + [0.0] * 12], dtype=torch.float32)
    _assert_bits_equal(qt.dequantize(torch.float32), want)


@pytest.mark.parametrize("lead", [(), (3,), (2, 2)])
@pytest.mark.parametrize("scale_as_uint8", [False, True])
def test_modelopt_decodes_fp4_times_e4m3_times_weight_scale_2(lead, scale_as_uint8):
    weight, weight_scale, g, values, nib, s_val = _modelopt_case(lead, n=20, k=64, seed=len(lead))
    ws = weight_scale.view(torch.uint8) if scale_as_uint8 else weight_scale
    out = from_modelopt_nvfp4(weight, ws, g.reshape(1), torch.tensor([0.01]), dtype=torch.float16)
    qt = out.weight
    assert qt.shape == (*lead, 20, 64) and qt.dtype == torch.float16
    assert qt.scales.dtype == torch.float8_e4m3fn and qt.codes.dtype == torch.uint8
    assert qt.global_scale.shape == () and qt.global_scale.dtype == torch.float32
    assert float(qt.global_scale) == float(g)  # weight_scale_2 is the decode scale, not its reciprocal
    _assert_bits_equal(qt.dequantize(torch.float32), values)
    # the same values straight from the definition in float64 (fp4 * e4m3 scale * weight_scale_2)
    # agree to fp32 rounding: the only rounding is of the product s * g, as in ModelOpt
    exact = _fp4_decode(nib).reshape(*lead, 20, 4, 16) * (s_val * float(g)).unsqueeze(-1)
    torch.testing.assert_close(qt.dequantize(torch.float32).double(), exact.reshape(*lead, 20, 64),
                               rtol=2.0**-23, atol=0.0)
    assert out.input_scale.shape == () and out.input_scale.dtype == torch.float32
    assert float(out.input_scale) == float(torch.tensor(0.01, dtype=torch.float32))


def test_modelopt_nan_block_scale_propagates():
    weight, weight_scale, g, values, _, _ = _modelopt_case((), n=2, k=32, seed=9)
    ws = weight_scale.view(torch.uint8).clone()
    ws[1, 0] = 0x7F  # e4m3 NaN
    got = from_modelopt_nvfp4(weight, ws, g).weight.dequantize(torch.float32)
    assert torch.isnan(got[1, :16]).all() and not torch.isnan(got[1, 16:]).any() and not torch.isnan(got[0]).any()


@pytest.mark.parametrize("n, k, flat", [(20, 64, True), (130, 96, False), (128, 128, True)])
def test_modelopt_swizzled_block_scales(n, k, flat):
    weight, weight_scale, g, values, _, _ = _modelopt_case((), n=n, k=k, seed=n)
    buf = _swizzle_128x4_by_formula(weight_scale.view(torch.uint8))
    if not flat:
        buf = buf.reshape(-(-n // 128) * 128, -(-(k // 16) // 4) * 4)
    out = from_modelopt_nvfp4(weight, buf.view(torch.float8_e4m3fn), g, weight_scale_layout="swizzled_128x4")
    assert out.weight.scale_layout == "swizzled_128x4"
    _assert_bits_equal(out.weight.dequantize(torch.float32), values)
    # the equivalent row-major load decodes identically
    _assert_bits_equal(from_modelopt_nvfp4(weight, weight_scale, g).weight.dequantize(torch.float32), values)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["row_major", "swizzled_128x4"])
def test_modelopt_linear_matches_decoded_matmul(x_dtype, layout):
    weight, weight_scale, g, values, _, _ = _modelopt_case((), n=36, k=128, seed=2)
    ws = weight_scale if layout == "row_major" else _swizzle_128x4_by_formula(weight_scale.view(torch.uint8))
    qt = from_modelopt_nvfp4(weight, ws, g, weight_scale_layout=layout).weight
    x = torch.randn(7, 128, generator=torch.Generator().manual_seed(1)).to(x_dtype)
    bias = torch.randn(36, generator=torch.Generator().manual_seed(2)).to(x_dtype)
    y = mx.linear(x, qt, bias)
    assert y.shape == (7, 36) and y.dtype == x_dtype
    exact, bound = linear_error_bound(x.float(), values, bias.float(), x_dtype)
    assert_linear_within_bound(y, exact, bound)
    # and it is not trivially satisfied: a wrong weight_scale_2 (its reciprocal) is far outside the bound
    wrong = from_modelopt_nvfp4(weight, ws, 1.0 / g, weight_scale_layout=layout).weight
    with pytest.raises(AssertionError):
        assert_linear_within_bound(mx.linear(x, wrong, bias), exact, bound)


def _nv_args(**kw):
    args = dict(weight=torch.zeros(4, 16, dtype=torch.uint8),
                weight_scale=torch.ones(4, 2, dtype=torch.float32).to(torch.float8_e4m3fn),
                weight_scale_2=torch.tensor(0.5), input_scale=None)
    args.update(kw)
    return args


@pytest.mark.parametrize("kw, exc, words", [
    (dict(weight=torch.zeros(4, 16, dtype=torch.int32)), TypeError, ["weight", "uint8", "int32"]),
    (dict(weight=torch.zeros(32, dtype=torch.uint8)), ValueError, ["weight", "(32,)"]),
    (dict(weight=torch.zeros(4, 4, dtype=torch.uint8)), ValueError, ["weight", "16", "K = 8"]),
    (dict(weight_scale=torch.ones(4, 2)), TypeError, ["weight_scale", "float8_e4m3fn", "float32"]),
    (dict(weight_scale=torch.ones(4, 4, dtype=torch.uint8)), ValueError, ["weight_scale", "(4, 2)", "(4, 4)"]),
    (dict(weight_scale_2=torch.tensor([0.5, 0.25])), ValueError, ["weight_scale_2", "(2,)"]),
    (dict(weight_scale_2=torch.tensor(0.5, dtype=torch.float64)), TypeError, ["weight_scale_2", "float64"]),
    (dict(weight_scale_2=torch.tensor(0.0)), ValueError, ["weight_scale_2", "0.0"]),
    (dict(weight_scale_2=0.5), TypeError, ["weight_scale_2", "float"]),
    (dict(input_scale=torch.tensor(float("nan"))), ValueError, ["input_scale", "nan"]),
    (dict(input_scale=torch.tensor(-1.0)), ValueError, ["input_scale", "-1.0"]),
])
def test_modelopt_bad_inputs(kw, exc, words):
    a = _nv_args(**kw)
    with pytest.raises(exc) as info:
        from_modelopt_nvfp4(a["weight"], a["weight_scale"], a["weight_scale_2"], a["input_scale"])
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_modelopt_bad_layout_and_swizzled_shapes():
    a = _nv_args()
    with pytest.raises(ValueError, match="weight_scale_layout"):
        from_modelopt_nvfp4(a["weight"], a["weight_scale"], a["weight_scale_2"], weight_scale_layout="tiled")
    with pytest.raises(ValueError, match=r"weight_scale: expected a swizzled_128x4 buffer of 512 bytes"):
        from_modelopt_nvfp4(a["weight"], a["weight_scale"], a["weight_scale_2"], weight_scale_layout="swizzled_128x4")
    with pytest.raises(ValueError, match="2-D"):
        from_modelopt_nvfp4(torch.zeros(2, 4, 16, dtype=torch.uint8), torch.zeros(1024, dtype=torch.uint8),
                            a["weight_scale_2"], weight_scale_layout="swizzled_128x4")
    with pytest.raises(TypeError, match="dtype"):
        from_modelopt_nvfp4(a["weight"], a["weight_scale"], a["weight_scale_2"], dtype=torch.float64)


def test_select_expert_errors():
    blocks, scales, _ = _gpt_oss_case((3, 2), groups=1, seed=0)
    qt = from_gpt_oss(blocks, scales)
    with pytest.raises(IndexError, match="index"):
        select_expert(qt, 3)
    with pytest.raises(ValueError, match="3 dims"):
        select_expert(select_expert(qt, 0), 0)
    with pytest.raises(TypeError, match="MXTensor"):
        select_expert(blocks, 0)
    for bad in (1.0, True, torch.tensor(1)):  # a float was torch's IndexError, a bool read as a new axis
        with pytest.raises(TypeError, match="index: expected an int"):
            select_expert(qt, bad)
