"""Every backend reproduces the reference bit-exactly: codes, scale bytes, global scale, dequant."""
import pytest
import torch
from hypothesis import given, strategies as st

from leankern.testing import assert_bitexact
from mx_cases import (ALL_FORMATS, FLOAT_DTYPES, HEADLINE_FORMATS, all_bit_patterns, dequantize_with,
                      quantize_with, special_values_fp32)


def _assert_same_quant(got, want, what):
    for name, a, b in zip(("codes", "scales", "global_scale"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {name} {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert_bitexact(a.cpu(), b.cpu(), name=f"{what}: {name}")


def _check(device_backend, x, fmt, block_size=None, scale_mode="rceil", rand_bits=None, global_scale=None,
           dequant=True):
    device, backend = device_backend
    xd = x.to(device)
    rb = None if rand_bits is None else rand_bits.to(device)
    gs = None if global_scale is None else global_scale.to(device)
    want = quantize_with("ref", x, fmt, block_size, scale_mode, rand_bits, global_scale)
    got = quantize_with(backend, xd, fmt, block_size, scale_mode, rb, gs)
    what = f"{backend}/{fmt}/bs={block_size}/{scale_mode}/{x.dtype}"
    _assert_same_quant(got, want, what)
    if dequant:
        for out_dtype in FLOAT_DTYPES:
            d_want = dequantize_with("ref", want, fmt, block_size, out_dtype)
            d_got = dequantize_with(backend, got, fmt, block_size, out_dtype)
            # any NaN on a GPU: the kernels write the bf16 NaN torch itself makes there (0x7FFF, the PTX
            # conversion's), the CPU reference the one torch makes on CPU (0xFFFF); all other bits must match
            assert_bitexact(d_got.cpu(), d_want, name=f"{what}: dequantize->{out_dtype}",
                            any_nan=device != "cpu" and out_dtype == torch.bfloat16)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("scale_mode", ["rceil", "floor"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_exhaustive_16bit_patterns(device_backend, fmt, scale_mode, dtype):
    """All 65,536 bit patterns, in order (block-mates of similar size) and shuffled (mixed scales)."""
    for seed in (None, 7):
        _check(device_backend, all_bit_patterns(dtype, seed), fmt, 32, scale_mode, dequant=seed is None)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("scale_mode", ["rceil", "floor"])
def test_special_values(device_backend, fmt, scale_mode):
    _check(device_backend, special_values_fp32(), fmt, 16, scale_mode)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("block_size", [16, 32, 64])
def test_gaussian_shapes(device_backend, fmt, dtype, block_size):
    gen = torch.Generator().manual_seed(block_size)
    x = (torch.randn(3, 5, 4 * block_size, generator=gen) * 3.0).to(dtype)
    _check(device_backend, x, fmt, block_size)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_stochastic_rounding(device_backend, fmt):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 128, generator=gen) * torch.logspace(-30, 30, 128)  # wide exponent range per block
    rand = torch.randint(-(2**31), 2**31, x.shape, generator=gen, dtype=torch.int32)
    rand[0] = -1  # 0xFFFFFFFF: largest dither
    rand[1] = 0
    _check(device_backend, x, fmt, 32, rand_bits=rand)
    _check(device_backend, special_values_fp32(), fmt, 16, rand_bits=rand[:, :64].repeat(2, 1)[:8].contiguous())


@pytest.mark.parametrize("fmt", ["nvfp4", "nvint4"])
def test_static_global_scale(device_backend, fmt):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 64, generator=gen) * 100
    for g in (1.0, 1e-3, 0.037, 1e6, 2.0**-126):  # 1e-3: block scales clamp at 448, codes saturate
        _check(device_backend, x, fmt, global_scale=torch.tensor(g))
    # dynamic g of a tiny tensor (amax ~ 1e-38): g is raised to 2^-126 so g * s stays non-zero
    _check(device_backend, x * 1e-40, fmt)


@given(
    rows=st.sampled_from([1, 2, 3, 7, 13]),
    nblocks=st.integers(1, 5),
    block_size=st.sampled_from([2, 4, 16, 32, 128]),
    fmt=st.sampled_from(ALL_FORMATS),
    dtype=st.sampled_from(FLOAT_DTYPES),
    scale_mode=st.sampled_from(["rceil", "floor"]),
    data=st.data(),
)
def test_hypothesis_raw_bits(device_backend, rows, nblocks, block_size, fmt, dtype, scale_mode, data):
    """Raw bit patterns of any shape: NaN, Inf, subnormals and extremes in arbitrary blocks."""
    nblocks = min(nblocks, max(1, 4096 // (rows * block_size)))  # hypothesis draws lists of at most ~8K
    n = rows * nblocks * block_size
    itype = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[dtype]
    bits_ = 32 if dtype == torch.float32 else 16
    words = data.draw(st.lists(st.integers(-(2 ** (bits_ - 1)), 2 ** (bits_ - 1) - 1), min_size=n, max_size=n))
    x = torch.tensor(words, dtype=itype).view(dtype).reshape(rows, nblocks * block_size)
    _check(device_backend, x, fmt, block_size, scale_mode)


@pytest.mark.parametrize("chunk", [2, 16, 32, 128, 1024])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_hadamard_bitexact(device_backend, chunk, dtype):
    import leankern

    device, backend = device_backend
    if backend not in leankern.mx.CAPABILITIES["hadamard_transform"]:
        pytest.skip(f"backend {backend!r} has no hadamard_transform kernel")
    gen = torch.Generator().manual_seed(chunk)
    x = torch.randn(5, 2 * chunk, generator=gen).to(dtype)
    signs = leankern.mx.random_hadamard_signs(chunk, seed=1)
    for s in (None, signs):
        with leankern.use_backend("ref"):
            want = leankern.mx.hadamard_transform(x, chunk, signs=s)
        with leankern.use_backend(backend):
            got = leankern.mx.hadamard_transform(x.to(device), chunk, signs=None if s is None else s.to(device))
        assert_bitexact(got.cpu(), want, name=f"{backend} hadamard n={chunk} {dtype}")
