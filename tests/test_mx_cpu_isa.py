"""The C++ CPU kernels, under every ISA this CPU supports, are bit-exact with leankern.ref.mx.

Each test forces one ISA with ``leankern._C.set_cpu_isa`` ("avx512" / "avx2" / "scalar") and
compares codes and scale bytes (``torch.equal`` on uint8 views), dequantized outputs and Hadamard
outputs (bit patterns, NaN positions) with the reference. Inputs mix Gaussian blocks with blocks of
special values: +-0, fp32 subnormals (all-subnormal blocks too), max normals, RNE ties, values just
above the element max, NaN / Inf blocks and raw random bit patterns.
"""
from __future__ import annotations

import math

import pytest
import torch

from leankern.formats import FORMATS, get_format
from leankern.ref.mx import element_values, hadamard_transform_ref, mx_dequantize_ref, mx_quantize_ref


def _load_ext():
    try:
        import leankern._C as ext

        return ext, None
    except Exception as exc:  # not built, or built against another torch
        return None, f"{type(exc).__name__}: {exc}"


EXT, EXT_ERR = _load_ext()
pytestmark = pytest.mark.skipif(EXT is None, reason=f"leankern._C is not built ({EXT_ERR})")
OPS = torch.ops.leankern
ISAS = ("avx512", "avx2", "scalar")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_SIZES = (2, 8, 16, 32, 64, 1024)


@pytest.fixture(params=ISAS)
def isa(request):
    """Force the C++ kernels onto one ISA for the test, restoring the previous one afterwards."""
    name = request.param
    if name not in EXT.supported_isas():
        pytest.skip(f"this CPU does not support {name} (it has: {EXT.cpu_features()})")
    prev = EXT.cpu_isa()
    EXT.set_cpu_isa(name)
    yield name
    EXT.set_cpu_isa(prev)


# ------------------------------------------------------------------------------------------------
# Test data
# ------------------------------------------------------------------------------------------------
def _f32(bits: list[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)


def _tie_block(fmt: str, bs: int, gen: torch.Generator) -> torch.Tensor:
    """Block whose amax is max_elem * 2^k, so v = x * 2^-k exactly: grid points, exact RNE ties
    (midpoints), midpoints +- 1 ulp and values just above the element max."""
    el = get_format(fmt).element
    grid = element_values(el).to(torch.float32)
    mids = (grid[:-1] + grid[1:]) / 2
    cands = torch.cat([grid, mids, torch.nextafter(mids, torch.full_like(mids, math.inf)),
                       torch.nextafter(mids, torch.zeros_like(mids)), grid[-1:] * (1 + 2.0**-20)])
    idx = torch.randint(0, cands.numel(), (bs,), generator=gen)
    sign = torch.where(torch.rand(bs, generator=gen) < 0.5, -1.0, 1.0)
    v = cands[idx] * sign
    v[0] = grid[-1]  # amax = max_elem (rceil e = k; floor lets the "just above" values saturate)
    return v * 2.0 ** int(torch.randint(-30, 30, (1,), generator=gen))


# Block kinds without tiny (subnormal-range) values. The SIMD kernels handle 16 (AVX-512) or 8 (AVX2)
# blocks at a time and send a whole group to their general path if one block is tiny, so every
# other group of 16 blocks is drawn from these kinds only, to test the fast path as well.
FAST_KINDS = (0, 1, 5, 6, 7, 8, 9, 0, 6)


def make_input(fmt: str, bs: int, nblocks: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """[nblocks * bs] values in `dtype`: one block kind after another (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for b in range(nblocks):
        kind = FAST_KINDS[b % len(FAST_KINDS)] if (b // 16) % 2 == 0 else b % 12
        if kind == 0:  # Gaussian with a random per-block magnitude
            v = torch.randn(bs, generator=gen) * 2.0 ** int(torch.randint(-40, 40, (1,), generator=gen))
        elif kind == 1:  # +-0 only
            v = torch.where(torch.rand(bs, generator=gen) < 0.5, -0.0, 0.0)
        elif kind == 2:  # fp32 subnormals only (random mantissas)
            v = _f32(torch.randint(1, 1 << 23, (bs,), generator=gen)) * torch.where(
                torch.rand(bs, generator=gen) < 0.5, -1.0, 1.0)
        elif kind == 3:  # the smallest subnormals
            v = _f32(torch.randint(1, 8, (bs,), generator=gen))
        elif kind == 4:  # tiny normals mixed with subnormals
            v = torch.randn(bs, generator=gen) * 2.0**-126
        elif kind == 5:  # near the fp32 max (fp16 turns these into Inf blocks)
            v = torch.rand(bs, generator=gen) * 3.4028234663852886e38
        elif kind in (6, 7):
            v = _tie_block(fmt, bs, gen)
        elif kind == 8:  # NaN somewhere
            v = torch.randn(bs, generator=gen)
            v[int(torch.randint(0, bs, (1,), generator=gen))] = math.nan
        elif kind == 9:  # +-Inf somewhere
            v = torch.randn(bs, generator=gen)
            v[int(torch.randint(0, bs, (1,), generator=gen))] = -math.inf if b % 2 else math.inf
        else:  # raw bit patterns of the target dtype (NaN / Inf / subnormals included)
            if dtype == torch.float32:
                v = torch.randint(-(2**31), 2**31, (bs,), generator=gen, dtype=torch.int64).to(torch.int32)
                blocks.append(v.view(torch.float32))
            else:
                v = torch.randint(-(2**15), 2**15, (bs,), generator=gen, dtype=torch.int64).to(torch.int16)
                blocks.append(v.view(dtype).float())
            continue
        blocks.append(v.to(torch.float32))
    return torch.cat(blocks).to(dtype)


def u8(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t


def assert_quant_equal(ours, ref, what: str):
    for name, a, b in zip(("codes", "scales"), ours[:2], ref[:2]):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {name} {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        if not torch.equal(u8(a), u8(b)):
            bad = (u8(a) != u8(b)).nonzero()
            i = tuple(bad[0].tolist())
            pytest.fail(f"{what}: {name} differ at {bad.shape[0]} places, first {i}: ours {u8(a)[i]} ref {u8(b)[i]}")
    assert ours[2].dtype == torch.float32 and ours[2].shape == ()
    assert torch.equal(ours[2].view(torch.int32), ref[2].view(torch.int32)), f"{what}: global_scale {ours[2]} vs {ref[2]}"


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.element_size() == 4 else t.view(torch.int16)


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor, what: str):
    """Same dtype/shape, NaN at the same places, every other element bit-identical."""
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
    na, nb = torch.isnan(a), torch.isnan(b)
    assert torch.equal(na, nb), f"{what}: NaN positions differ ({int((na != nb).sum())} places)"
    diff = (_bits(a) != _bits(b)) & ~na
    if diff.any():
        i = tuple(diff.nonzero()[0].tolist())
        pytest.fail(f"{what}: {int(diff.sum())} elements differ, first {i}: ours {a[i].item()!r} ref {b[i].item()!r}")


# ------------------------------------------------------------------------------------------------
# Quantize
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_quantize_bitexact(isa, fmt, dtype):
    nv = get_format(fmt).is_nv
    for bs in BLOCK_SIZES:
        nblocks = 37 if bs <= 64 else 13  # > 2 groups of 16 blocks + a ragged tail
        x = make_input(fmt, bs, 7 * nblocks, dtype, seed=bs).reshape(7, nblocks * bs)
        rand = torch.randint(-(2**31), 2**31, x.shape, generator=torch.Generator().manual_seed(bs),
                             dtype=torch.int64).to(torch.int32)
        rand.view(-1)[:4] = torch.tensor([0, -1, 2**31 - 1, -(2**31)], dtype=torch.int32)
        for mode in ("rceil",) if nv else ("rceil", "floor"):
            for rb in (None, rand):
                what = f"{isa} {fmt} {dtype} bs={bs} {mode} {'sr' if rb is not None else 'rne'}"
                ref = mx_quantize_ref(x, fmt, bs, mode, rb, None)
                ours = OPS.mx_quantize_cpp(x, fmt, bs, mode, rb, None)
                assert_quant_equal(ours, ref, what)


@pytest.mark.parametrize("fmt", ["nvfp4", "nvint4"])
@pytest.mark.parametrize("g", [1.0, 0.37, 1e-30, 1e-44, 3e38, 0.0, -2.0, math.inf, math.nan])
def test_nv_given_global_scale(isa, fmt, g):
    """Static tensor scale; g = 1 with amax = 6 * 2^k blocks makes d a power of two (exact ties);
    tiny / huge g saturate the E4M3 scale (g = 1e-44: g * s underflows to 0 in some blocks, so 0 / 0
    reaches the element rounding); invalid g (0, < 0, Inf, NaN) follows the reference too."""
    for dtype in DTYPES:
        x = make_input(fmt, 16, 40, dtype, seed=3).reshape(4, 160)
        gs = torch.tensor(g, dtype=torch.float32)
        for rb in (None, torch.randint(-(2**31), 2**31 - 1, x.shape, dtype=torch.int32)):
            ref = mx_quantize_ref(x, fmt, 16, "rceil", rb, gs)
            ours = OPS.mx_quantize_cpp(x, fmt, 16, "rceil", rb, gs)
            assert_quant_equal(ours, ref, f"{isa} {fmt} {dtype} g={g}")


@pytest.mark.parametrize("fmt", ["nvfp4", "nvint4"])
def test_nv_tiny_tensor_amax(isa, fmt):
    """Tensor amax ~1e-40: g = amax / (448 * max) is below 2^-126 and gets floored there."""
    x = torch.zeros(3, 64)
    x[0, 0], x[0, 16], x[0, 17], x[1, 33], x[2, 5] = 1e-40, -0.0, 1e-45, -3e-41, 2e-44
    for rb in (None, torch.randint(-(2**31), 2**31 - 1, x.shape, dtype=torch.int32)):
        assert_quant_equal(OPS.mx_quantize_cpp(x, fmt, 16, "rceil", rb, None),
                           mx_quantize_ref(x, fmt, 16, "rceil", rb, None), f"{isa} {fmt}")


@pytest.mark.parametrize("lead", [(), (1,), (13,), (2, 3), (1, 5, 1)], ids=str)
@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4"])
def test_quantize_shapes(isa, fmt, lead):
    """Arbitrary leading dims (none, 1, primes, several); also a non-contiguous input."""
    K = 96
    x = make_input(fmt, 32, math.prod(lead) * 3, torch.float32, seed=7).reshape(*lead, K)
    assert_quant_equal(OPS.mx_quantize_cpp(x, fmt, 32, "rceil", None, None),
                       mx_quantize_ref(x, fmt, 32, "rceil"), f"{isa} {fmt} {lead}")
    xt = torch.randn(K, 5).t()  # [5, K], not contiguous
    assert_quant_equal(OPS.mx_quantize_cpp(xt, fmt, 32, "rceil", None, None),
                       mx_quantize_ref(xt.contiguous(), fmt, 32, "rceil"), f"{isa} {fmt} transposed")


def test_quantize_empty(isa):
    for fmt in ("mxfp4", "nvfp4"):
        x = torch.zeros(0, 64)
        assert_quant_equal(OPS.mx_quantize_cpp(x, fmt, 32, "rceil", None, None),
                           mx_quantize_ref(x, fmt, 32, "rceil"), f"{isa} {fmt} empty")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_quantize_all_16bit_patterns(isa, dtype):
    """Every bf16 / fp16 bit pattern, in blocks of 32, for one FP and one INT format per family."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype).reshape(64, 1024)
    x = x[:, torch.randperm(1024, generator=torch.Generator().manual_seed(0))]  # mix the blocks
    for fmt in ("mxfp8_e4m3", "mxfp4", "mxint8", "mxfp6_e3m2", "nvfp4", "nvint4"):
        bs = get_format(fmt).default_block_size
        for mode in ("rceil", "floor"):
            assert_quant_equal(OPS.mx_quantize_cpp(x, fmt, bs, mode, None, None),
                               mx_quantize_ref(x, fmt, bs, mode), f"{isa} {fmt} {dtype} {mode}")


def test_reused_output_buffers(isa):
    """Outputs >= 1 MiB come from a buffer cache: a freed output's memory is handed to the next
    call, live outputs are never shared, and the tensors stay ordinary (resizable) CPU tensors."""
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(1024, 1024, generator=gen) * s for s in (1.0, 1e-3, 50.0)]
    first = OPS.mx_quantize_cpp(xs[0], "mxfp8_e4m3", 32, "rceil", None, None)
    ptr = first[0].data_ptr()
    del first
    again = OPS.mx_quantize_cpp(xs[1], "mxfp8_e4m3", 32, "rceil", None, None)  # may reuse ptr
    live = OPS.mx_quantize_cpp(xs[2], "mxfp8_e4m3", 32, "rceil", None, None)  # must not share with `again`
    assert live[0].data_ptr() != again[0].data_ptr()
    assert_quant_equal(again, mx_quantize_ref(xs[1], "mxfp8_e4m3", 32), f"{isa} reused (ptr {ptr:#x})")
    assert_quant_equal(live, mx_quantize_ref(xs[2], "mxfp8_e4m3", 32), f"{isa} live")
    codes = again[0].view(torch.uint8).clone()
    grown = again[0].view(torch.uint8).resize_(2 * codes.numel())
    assert torch.equal(grown[: codes.numel()], codes.view(-1))
    y = OPS.mx_dequantize_cpp(live[0], live[1], live[2], "mxfp8_e4m3", 32, torch.float32)
    assert_bits_equal(y, mx_dequantize_ref(*live, "mxfp8_e4m3", 32, torch.float32), f"{isa} dequantize")


# ------------------------------------------------------------------------------------------------
# Dequantize
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_dequantize_bitexact(isa, fmt):
    for bs in (2, 8, 16, 32, 1024):
        nblocks = 37 if bs <= 64 else 5
        x = make_input(fmt, bs, 3 * nblocks, torch.float32, seed=bs).reshape(3, nblocks * bs)
        q = mx_quantize_ref(x, fmt, bs, "rceil")
        # plus arbitrary stored bytes: FP8 NaN / Inf codes, every scale byte (0, 254, 0xFF ...)
        gen = torch.Generator().manual_seed(bs)
        raw_codes = torch.randint(0, 256, tuple(q[0].shape), generator=gen, dtype=torch.int64).to(torch.uint8)
        raw_scales = torch.randint(0, 256, tuple(q[1].shape), generator=gen, dtype=torch.int64).to(torch.uint8)
        raw_scales.view(-1)[:3] = torch.tensor([0, 254, 255], dtype=torch.uint8)
        raw = (raw_codes.view(q[0].dtype), raw_scales.view(q[1].dtype), torch.tensor(0.03125))
        for codes, scales, g in (q, raw):
            for od in DTYPES:
                what = f"{isa} {fmt} bs={bs} -> {od}"
                ref = mx_dequantize_ref(codes, scales, g, fmt, bs, od)
                ours = OPS.mx_dequantize_cpp(codes, scales, g, fmt, bs, od)
                assert_bits_equal(ours, ref, what)


# ------------------------------------------------------------------------------------------------
# Hadamard
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("chunk", [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 32768])
def test_hadamard_bitexact(isa, chunk, dtype):
    gen = torch.Generator().manual_seed(chunk)
    rows = 3 if chunk <= 4096 else 1
    x = (torch.randn(rows, 2 * chunk, generator=gen) * 2.0 ** torch.randint(-8, 8, (2 * chunk,), generator=gen)).to(dtype)
    signs = torch.randint(0, 2, (chunk,), generator=gen).float() * 2 - 1
    for scale, sg in ((1.0 / math.sqrt(chunk), signs), (1.0, None), (0.3, signs)):
        ref = hadamard_transform_ref(x, chunk, scale, sg)
        ours = OPS.hadamard_transform_cpp(x, chunk, scale, sg)
        assert_bits_equal(ours, ref, f"{isa} chunk={chunk} {dtype} scale={scale} signs={sg is not None}")


def test_hadamard_special_values(isa):
    x = torch.tensor([[0.0, -0.0, 1e-45, -1e-40, 3e38, 3e38, -3e38, 1.0] * 4])  # overflow -> Inf too
    for chunk in (2, 8, 32):
        assert_bits_equal(OPS.hadamard_transform_cpp(x, chunk, 1.0, None), hadamard_transform_ref(x, chunk, 1.0),
                          f"{isa} chunk={chunk}")


# ------------------------------------------------------------------------------------------------
# ISA switch, format table, argument checks
# ------------------------------------------------------------------------------------------------
def test_set_cpu_isa_rejects_unknown_name():
    prev = EXT.cpu_isa()
    with pytest.raises(ValueError, match=r"expected one of 'avx512', 'avx2', 'scalar', 'auto', got 'sse9'"):
        EXT.set_cpu_isa("sse9")
    assert EXT.cpu_isa() == prev


def test_set_cpu_isa_rejects_unsupported_isa():
    missing = [name for name in ISAS if name not in EXT.supported_isas()]
    if not missing:
        pytest.skip(f"this CPU supports every ISA ({EXT.cpu_features()}): nothing unsupported to reject")
    prev = EXT.cpu_isa()
    with pytest.raises(RuntimeError, match=f"does not support '{missing[0]}'"):
        EXT.set_cpu_isa(missing[0])
    assert EXT.cpu_isa() == prev


def test_isa_roundtrip_and_features():
    prev = EXT.cpu_isa()
    supported = EXT.supported_isas()
    assert supported[-1] == "scalar" and prev in supported
    for name in supported:
        EXT.set_cpu_isa(name)
        assert EXT.cpu_isa() == name
    EXT.set_cpu_isa("auto")
    assert EXT.cpu_isa() == supported[0]
    EXT.set_cpu_isa(prev)
    feats = EXT.cpu_features().split()
    if "avx512" in supported:
        assert {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(feats)
    if "avx2" in supported:
        assert {"avx2", "f16c"} <= set(feats)


def test_format_table_mirrors_python():
    table = {row["name"]: row for row in EXT.format_table()}
    assert set(table) == set(FORMATS)
    for name, f in FORMATS.items():
        row, el = table[name], f.element
        assert (row["element"], row["bits"], row["is_int"], row["mbits"], row["bias"], row["max_code"],
                row["sign_bit"], row["default_block_size"], row["scale_kind"]) == (
            el.name, el.bits, el.is_int, el.mbits, el.bias, el.max_code, el.sign_bit, f.default_block_size,
            f.scale_kind), name


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: OPS.mx_quantize_cpp(x, "mxfp5", 32, "rceil", None, None), r"fmt: expected one of .* got 'mxfp5'"),
        (lambda x: OPS.mx_quantize_cpp(x, "mxfp4", 24, "rceil", None, None), r"block_size: expected a power of two .* got 24"),
        (lambda x: OPS.mx_quantize_cpp(x, "mxfp4", 2048, "rceil", None, None), r"block_size: .* got 2048"),
        (lambda x: OPS.mx_quantize_cpp(x[:, :48], "mxfp4", 32, "rceil", None, None), r"x: expected the last dim \(48\)"),
        (lambda x: OPS.mx_quantize_cpp(x, "mxfp4", 32, "ceil", None, None), r"scale_mode: expected 'rceil' or 'floor', got 'ceil'"),
        (lambda x: OPS.mx_quantize_cpp(x.double(), "mxfp4", 32, "rceil", None, None), r"x: expected dtype float32, bfloat16 or float16, got Double"),
        (lambda x: OPS.mx_quantize_cpp(x, "mxfp4", 32, "rceil", x, None), r"rand_bits: expected dtype int32, got Float"),
        (lambda x: OPS.mx_quantize_cpp(x, "mxfp4", 32, "rceil", torch.zeros(3, dtype=torch.int32), None), r"rand_bits: expected 128 elements"),
        (lambda x: OPS.mx_quantize_cpp(x, "nvfp4", 16, "rceil", None, torch.ones(2)), r"global_scale: expected a tensor with one element"),
        (lambda x: OPS.mx_dequantize_cpp(torch.zeros(2, 64, dtype=torch.int16), torch.zeros(2, 2, dtype=torch.uint8), torch.ones(()), "mxint8", 32, torch.float32), r"codes: expected dtype Char \(or uint8\) for mxint8, got Short"),
        (lambda x: OPS.mx_dequantize_cpp(torch.zeros(2, 64, dtype=torch.int8), torch.zeros(2, 3, dtype=torch.uint8), torch.ones(()), "mxint8", 32, torch.float32), r"scales: expected shape \[2, 2\]"),
        (lambda x: OPS.mx_dequantize_cpp(torch.zeros(2, 64, dtype=torch.int8), torch.zeros(2, 2, dtype=torch.uint8), torch.ones(()), "mxint8", 32, torch.float64), r"out_dtype: expected dtype float32, bfloat16 or float16"),
        (lambda x: OPS.hadamard_transform_cpp(x, 48, 1.0, None), r"chunk_size: expected a power of two in \[2, 32768\], got 48"),
        (lambda x: OPS.hadamard_transform_cpp(x, 32, 1.0, torch.ones(16)), r"signs: expected shape \[32\]"),
        (lambda x: OPS.hadamard_transform_cpp(x[:, :48], 32, 1.0, None), r"x: expected the last dim \(48\) to be a multiple of chunk_size \(32\)"),
    ],
)
def test_argument_checks(call, match):
    x = torch.randn(2, 64)
    with pytest.raises(RuntimeError, match=match):
        call(x)
