"""The single-width packed SEFP copy (leankern.sefp.packed, csrc/sefp/packed*.cpp): sign + m bits per weight.

* layout: the fields against an independent bit-by-bit oracle built from the planes; the copy dequantizes to the
  planes' m-bit weight bit for bit (every m, block size, K padded or not); bytes per weight.
* sefp_packed_linear: C++ under every ISA this CPU runs (the VBMI GEMV for bf16 x up to 16 rows on avx512bf16, the
  AVX2 GEMV up to 64 rows on the avx2 ISA, 32 above it, and its decoder for the panels beyond otherwise, the
  portable decode on scalar) within the shared derived bound of the exact product; the reference
  likewise; the last unit of a row never reads past the row (codes placed against a guard page); bad arguments.
* sefp.linear over the copy: gradients, torch.compile, the layout / width errors.
* The Triton kernel (triton_kernels/sefp_packed.py; the interpreter without a GPU) within the same bound.
"""
from __future__ import annotations

import ctypes
import mmap

import pytest
import torch
from hypothesis import given, settings, strategies as st

import leankern
from leankern import sefp
from leankern.sefp.packed import SEFPPacked, pack_fields, packed_linear_ref, unpack_fields
from leankern.testing.strategies import binade_tensor
from isa_cases import on_isa
from mx_cases import skip_unless_cpp
from tolerances import assert_linear_within_bound, linear_error_bound

OPS = torch.ops.leankern
EXT = leankern.extension()
BLOCK_SIZES = (32, 64, 128, 256)


@pytest.fixture(params=("avx512bf16", "avx512", "avx2", "scalar"))
def isa(request):
    skip_unless_cpp()
    with on_isa(request.param):
        yield request.param


def _oracle_fields(t: sefp.SEFPTensor, m: int) -> list[list[int]]:
    """Per row, the Kp fields (s << m) | q' read bit by bit from the plane words (plain Python ints)."""
    planes = (t.planes.to(torch.int64) & 0xFFFFFFFF).tolist()
    N, Kw = t.planes.shape[1:]
    rows = []
    for n in range(N):
        fields = []
        for k in range(Kw * 32):
            bit = lambda p: (planes[p][n][k // 32] >> (k % 32)) & 1  # noqa: E731
            q = 0
            for p in range(1, m + 1):
                q = (q << 1) | bit(p)
            fields.append((bit(0) << m) | q)
        rows.append(fields)
    return rows


def _oracle_bytes(fields: list[int], B: int) -> list[int]:
    """Little-endian bit packing: field k at bits [k B, k B + B), bit i of byte j = bit 8 j + i."""
    acc = 0
    for k, f in enumerate(fields):
        acc |= f << (k * B)
    return [(acc >> (8 * j)) & 0xFF for j in range(len(fields) * B // 8)]


@pytest.mark.parametrize("m", range(1, 8))
def test_layout_matches_the_bitwise_oracle(m):
    gen = torch.Generator().manual_seed(m)
    w = torch.randn(3, 70, generator=gen)  # K = 70: the last block zero padded
    w[1, :32] = -0.0  # an empty block with sign bits
    t = sefp.quantize(w, m_max=8)
    p = t.packed(m)
    assert p.codes.dtype == torch.uint8 and p.codes.shape == (3, 96 * (1 + m) // 8)
    assert p.exponents is t.exponents  # shared, not copied
    for n, fields in enumerate(_oracle_fields(t, m)):
        assert p.codes[n].tolist() == _oracle_bytes(fields, 1 + m)
        assert unpack_fields(p.codes, m)[n].tolist() == fields


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16), ids=("f32", "bf16", "f16"))
def test_dequantize_equals_the_planes_at_m(block_size, dtype):
    gen = torch.Generator().manual_seed(block_size)
    lo, hi = (-12, 8) if dtype == torch.float16 else (-30, 30)  # fp16: stay finite
    w = (torch.randn(9, 300, generator=gen) * 2.0 ** torch.randint(lo, hi, (9, 1), generator=gen).float()).to(dtype)
    w[0] = 0.0
    t = sefp.quantize(w, m_max=8, block_size=block_size)
    for m in range(1, 8):
        p = t.packed(m)
        assert p.shape == t.shape and p.dtype == dtype and p.m == m
        got, want = p.dequantize(torch.float32), t.dequantize(m, torch.float32)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # bit for bit, signs of zeros included
        assert p.dequantize().dtype == dtype
        assert p.nbytes() == t.nbytes(m)  # 1 + m bits per weight and the exponents: the planes' own count at m
        assert p.bits_per_weight() == pytest.approx(t.bits_per_weight(m))


def test_pack_unpack_round_trip_in_row_steps():
    """pack_fields / unpack_fields convert in steps of rows: more rows than one step."""
    t = sefp.quantize(torch.randn(600, 64, generator=torch.Generator().manual_seed(1)), m_max=8)
    for m in (2, 5, 7):
        codes = pack_fields(t.planes, m)
        f = unpack_fields(codes, m)
        assert torch.equal(pack_fields(t.at(m).planes, m), codes)  # only the first 1 + m planes matter
        q = torch.zeros_like(f)
        from leankern.sefp.ref import _unpack_bits

        for i in range(1, m + 1):
            q = (q << 1) | _unpack_bits(t.planes[i]).to(torch.int32)
        assert torch.equal(f, q | (_unpack_bits(t.planes[0]).to(torch.int32) << m))


def _check(y, x, p: SEFPPacked, bias):
    w_hat = p.dequantize(torch.float32)
    exact, bound = linear_error_bound(x.float().reshape(-1, x.shape[-1]), w_hat, bias, x.dtype)
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], p.shape[0])
    assert_linear_within_bound(y, exact, bound)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16), ids=("f32", "bf16", "f16"))
def test_linear_matches_the_exact_product(isa, dtype):
    gen = torch.Generator().manual_seed(3)
    N, K = 67, 300  # K: a partial last block and a partial last 128-weight unit
    w = torch.randn(N, K, generator=gen) * 2.0 ** torch.randint(-8, 8, (N, 1), generator=gen).float()
    t = sefp.quantize(w, m_max=8)
    bias = torch.randn(N, generator=gen).to(dtype)
    for m in range(1, 8):
        p = t.packed(m)
        # the GEMVs' row groups (4, 2, 1), their limits (16 VBMI; 32 / 64 AVX2, by ISA), the panels
        for M in (1, 2, 3, 4, 5, 7, 16, 17, 32, 33, 40, 65):
            x = torch.randn(M, K, generator=gen).to(dtype)
            b = bias if (M + m) % 2 else None
            with leankern.use_backend("cpp"):
                y = OPS.sefp_packed_linear(x, p.codes, p.exponents, m, 32, b)
            _check(y, x, p, b)


@pytest.mark.parametrize("decoded_rows", (16, 1, 1 << 30), ids=("default", "always", "never"))
def test_bf16_decode_once_tile(isa, decoded_rows):
    """bf16 x with 16+ rows on avx512bf16 (VBMI): the GEMV decodes 4 weight rows at a time once to bf16 (scales
    applied) span by span (512 weights) and runs 4 x 4 register tiles over every x row (the tuning hook
    sefp_set_decoded_rows(rows, packed=True) moves its threshold: "always" from one x row, "never" the re-decoding
    row groups).
    N = 39: groups of 4 and a tail of 3; K = 1,120: spans of 512, 512 and 128 (x padded to whole 128-weight units);
    M = 70: two slabs of x rows (at most 64 per pass); rows 4..7 scaled by 2^-124 next to normal rows: with
    x ~ N(0, 1) their products could fall below 2^-126 (where vdpbf16ps flushes), with x ~ 2^40 N(0, 1) their smallest
    step is no bf16 normal at m >= 5 (either way that group must take the row groups); with and without a bias;
    m 1..7. Other ISAs run the same cases through their own kernels."""
    gen = torch.Generator().manual_seed(13)
    N, K = 39, 1120
    w = torch.randn(N, K, generator=gen)
    w[4:8] *= 2.0**-124
    t = sefp.quantize(w, m_max=8)
    bias = torch.randn(N, generator=gen).to(torch.bfloat16)
    before = EXT.sefp_set_decoded_rows(decoded_rows, packed=True)
    panels = EXT.sefp_set_panel_rows(1 << 30, packed=True)  # 70 rows on the GEMV too (the panels start at 40)
    try:
        for M, scale in ((1, 1.0), (8, 1.0), (17, 2.0**40), (70, 1.0), (70, 2.0**40)):
            x = (torch.randn(M, K, generator=gen) * scale).to(torch.bfloat16)
            for m in range(1, 8):
                p = t.packed(m)
                b = bias if (M + m) % 2 else None
                with leankern.use_backend("cpp"):
                    y = OPS.sefp_packed_linear(x, p.codes, p.exponents, m, 32, b)
                _check(y, x, p, b)
    finally:
        assert EXT.sefp_set_decoded_rows(before, packed=True) == decoded_rows
        assert EXT.sefp_set_panel_rows(panels, packed=True) == 1 << 30


def test_every_field_in_every_unit_position(isa):
    """Codes built field by field (not by a quantizer): at every width each field value (2^(1 + m) of them, both
    signed zeros included) lands in every position of the row across the rows, the granule of the AVX2 kernel's
    fronts (packed_gemv_avx2.cpp: one table for m = 1 and 3, the sign-byte form for m = 7, the shift-multiply form
    for the others). Exponents -6..6 and empty blocks; K = 96 (three units: the two-unit step and its odd tail), one
    to five x rows (the row groups), 33 (decode-once) and 65 (its decoder and the panels)."""
    gen = torch.Generator().manual_seed(21)
    N, K = 256, 96
    for m in range(1, 8):
        B = 1 + m
        # field (n + 37 k + random) mod 2^B: every value in every position k over the 2^B consecutive rows
        fields = (torch.arange(N)[:, None] + 37 * torch.arange(K) + torch.randint(0, 256, (1, K), generator=gen)) % 2**B
        bits = (fields[:, :, None] >> torch.arange(B)) & 1  # [N, K, B], little-endian
        codes = (bits.reshape(N, -1, 8) << torch.arange(8)).sum(-1).to(torch.uint8)
        exps = torch.randint(-6, 7, (N, K // 32), generator=gen).to(torch.int8)
        exps[::7, 1] = -128
        p = SEFPPacked(codes, exps, m, (N, K), torch.float32, 32)
        assert torch.equal(unpack_fields(codes, m).long(), fields)  # the packing above is the layout's
        for M in (1, 2, 3, 4, 5, 33, 65):
            x = torch.randn(M, K, generator=gen)
            with leankern.use_backend("cpp"):
                y = OPS.sefp_packed_linear(x, p.codes, p.exponents, m, 32, None)
            _check(y, x, p, None)


def _tiny_blocks_weights(seed: int, N: int, K: int = 2080):
    """(generator, SEFP weights [N, K], fp32 bias [N]) with blocks scaled by 2^-124 (rows 4..7, first 256 columns)
    next to normal ones: the scales applied as two factors (folded into the decoded weights from 5 x rows)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=gen)
    w[4:8, :256] *= 2.0**-124
    return gen, sefp.quantize(w, m_max=8), torch.randn(N, generator=gen)


def test_decode_once_slabs(isa):
    """5-32 x rows on the AVX2 kernel (other ISAs: their own paths): each weight decoded once per K slab (x rows of
    a slab <= 192 KB) into 4-row blocks swept by 3-row tiles. K = 2,080 (65 units) with 32 rows: two slabs (48 and
    17 units); N = 39: row blocks of 4 and a tail of 3; 5 / 7 rows: tiles of 3 + 2 and 3 + 3 + 1; with and without a
    bias; blocks scaled by 2^-124 next to normal ones (the two-factor scales folded into the decoded weights)."""
    gen, t, bias = _tiny_blocks_weights(23, 39)
    K = t.shape[1]
    for m in (1, 3, 4, 7):
        p = t.packed(m)
        for M in (5, 7, 32):
            x = torch.randn(M, K, generator=gen)
            b = bias if M % 2 else None
            with leankern.use_backend("cpp"):
                y = OPS.sefp_packed_linear(x, p.codes, p.exponents, m, 32, b)
            _check(y, x, p, b)


@pytest.mark.parametrize("gemv_rows, decode_once_rows", ((0, 5), (0, 1), (0, 1 << 30), (4, 5)),
                         ids=("defaults", "decode-once-always", "decode-once-never", "panels-from-5"))
def test_avx2_row_limits(isa, gemv_rows, decode_once_rows):
    """The AVX2 kernel's two row limits as set by their tuning hook (sefp_set_packed_avx2_rows): every x row count on
    each side of them matches the exact product. "defaults": the GEMV up to 64 rows on the avx2 ISA (32 on the
    others), each weight decoded once per K slab from 5; "always": decode-once from one x row; "never": the 4-row
    groups up to the GEMV's limit; "panels-from-5": the fp32 panels from 5 rows. K = 2,080: two or more x slabs
    from 33 rows. Other ISAs: the hook changes nothing where the kernel does not run."""
    gen, t, bias = _tiny_blocks_weights(29, 21)
    K = t.shape[1]
    before = EXT.sefp_set_packed_avx2_rows(gemv_rows, decode_once_rows)
    try:
        assert EXT.sefp_set_packed_avx2_rows() == (gemv_rows, decode_once_rows)
        for m in (2, 3, 7):
            p = t.packed(m)
            for M in (1, 3, 4, 5, 9, 33, 64, 70):
                x = torch.randn(M, K, generator=gen)
                b = bias if (M + m) % 2 else None
                with leankern.use_backend("cpp"):
                    y = OPS.sefp_packed_linear(x, p.codes, p.exponents, m, 32, b)
                _check(y, x, p, b)
    finally:
        assert EXT.sefp_set_packed_avx2_rows(*before) == (gemv_rows, decode_once_rows)


def test_reference_matches_the_exact_product():
    gen = torch.Generator().manual_seed(4)
    t = sefp.quantize(torch.randn(20, 96, generator=gen), m_max=8)
    for m in (1, 4, 7):
        p = t.packed(m)
        x = torch.randn(3, 96, generator=gen)
        _check(packed_linear_ref(x, p.codes, p.exponents, m, 32, None), x, p, None)


def test_linear_bound_is_not_vacuous(isa):
    """The bound rejects the neighbouring width's weights: a kernel decoding one bit too few fails it."""
    gen = torch.Generator().manual_seed(5)
    t = sefp.quantize(torch.randn(40, 256, generator=gen), m_max=8)
    x = torch.randn(3, 256, generator=gen).bfloat16()
    for m in (2, 5, 7):
        with pytest.raises(AssertionError):
            _check(sefp.linear(x, t.packed(m - 1)), x, t.packed(m), None)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_linear_shapes_and_blocks(isa, block_size):
    gen = torch.Generator().manual_seed(block_size)
    for N, K, lead in ((1, 1, (1,)), (5, block_size, (2, 3)), (37, 8 * 128 + block_size + 5, (4,)), (3, 700, (2, 9))):
        t = sefp.quantize(torch.randn(N, K, generator=gen), m_max=8, block_size=block_size)
        x = torch.randn(*lead, K, generator=gen).to(torch.bfloat16)
        for m in (1, 3, 6, 7):
            p = t.packed(m)
            y = sefp.linear(x, p)
            assert y.shape == (*lead, N)
            _check(y, x, p, None)


def test_linear_extreme_exponents(isa):
    """Blocks near the top and bottom of fp32's range (subnormal scales 2^(E - (m - 1))), an empty block."""
    gen = torch.Generator().manual_seed(9)
    K = 256
    w = torch.randn(5, K, generator=gen)
    w[0] *= 2.0**110
    w[1] *= 2.0**-100
    w[2, :128] *= 2.0**120
    w[2, 128:] *= 2.0**-120
    w[3, :64] = 0.0
    w[4, ::3] *= 2.0**100
    t = sefp.quantize(w, m_max=8)
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(20, K, generator=gen) * 2.0**-20).to(dtype)
        for m in (1, 4, 7):
            for M in (1, 3, 16):  # the GEMV: exact bf16 products of q and x, the scale applied to their fp32 sums
                _check(sefp.linear(x[:M], t.packed(m)), x[:M], t.packed(m), None)
            # 48 bf16 rows (the bf16 panels from 40 without AMX, 17 with): the panels' scaled weights times this x
            # could give products below 2^-126, which torch's bf16 GEMM flushes, so these weights keep the GEMV
            xs = (torch.randn(48, K, generator=gen) * 2.0**-20).to(dtype)
            _check(sefp.linear(xs, t.packed(m)), xs, t.packed(m), None)


def test_linear_x_near_the_top_of_fp32(isa):
    """|x| up to 2^124 (products near fp32's top): as sefp_linear, the op computes such x as ((x 2^-k) W^T) 2^k, so
    no partial sum passes 2^128 unless the result does. Within the bound for 1, 3 and 40 rows, fp32 and bf16 x."""
    gen = torch.Generator().manual_seed(19)
    t = sefp.quantize(torch.randn(40, 256, generator=gen), m_max=8)
    for top in (118, 124):
        for M in (1, 3, 40):
            x = binade_tensor((M, 256), top, gen)
            for dtype in (torch.float32, torch.bfloat16):
                b = (torch.randn(40, generator=gen) * 2.0**top).to(dtype) if M == 3 else None
                for m in (2, 5, 7):
                    _check(sefp.linear(x.to(dtype), t.packed(m), bias=b), x.to(dtype), t.packed(m), b)


def test_linear_row_near_the_top_leaves_the_other_rows_alone(isa):
    """The x shift is per row (common/x_shift.h): a row of |x| ~ 2^100 next to an ordinary row and a row of ~1e-36
    leaves each within its own bound (before: the 1e-36 row came out 0), for the packed layout and the planes."""
    gen = torch.Generator().manual_seed(23)
    t = sefp.quantize(torch.randn(40, 256, generator=gen), m_max=8)
    x = torch.randn(3, 256, generator=gen) * torch.tensor([[2.0**100], [1.0], [1e-36]])
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype)
        for m in (3, 7):
            _check(sefp.linear(xd, t.packed(m)), xd, t.packed(m), None)
            y = sefp.linear(xd, t, m)
            exact, bound = linear_error_bound(xd.float(), t.dequantize(m).float(), None, dtype)
            assert_linear_within_bound(y, exact, bound)


def test_linear_tiny_bf16_x(isa):
    """bf16 x of ~2^-122 (every value normal): the VBMI GEMV's sums of unscaled codes times x are multiples of
    2^(ex - 7), below 2^-126 where vdpbf16ps flushes them, so such x takes the fp32 path (before: 5 failing cases
    at 2^-120 / 2^-122). Within the bound for 1, 3 and 20 rows."""
    gen = torch.Generator().manual_seed(17)
    t = sefp.quantize(torch.randn(40, 256, generator=gen), m_max=8)
    for M in (1, 3, 20):
        x = binade_tensor((M, 256), -122, gen).to(torch.bfloat16)
        for m in (2, 5, 7):
            with leankern.use_backend("cpp"):
                _check(sefp.linear(x, t.packed(m)), x, t.packed(m), None)


def test_rows_do_not_read_their_neighbours(isa):
    """A row's result depends on its own codes and exponents only (K = 80: every unit is a row's last, partial)."""
    gen = torch.Generator().manual_seed(12)
    t = sefp.quantize(torch.randn(40, 80, generator=gen), m_max=8)
    for m in (1, 5, 7):
        p = t.packed(m)
        x = torch.randn(3, 80, generator=gen).bfloat16()
        y = sefp.linear(x, p)
        codes, exps = p.codes.clone(), p.exponents.clone()
        codes[1::2] = 0xFF
        exps[1::2] = 127
        y2 = OPS.sefp_packed_linear(x, codes, exps, m, 32, None)
        assert torch.equal(y2[:, 0::2], y[:, 0::2])


def _guarded(nbytes: int):
    """A uint8 tensor of ``nbytes`` ending exactly at a PROT_NONE page: any read past it faults."""
    page = mmap.PAGESIZE
    size = -(-nbytes // page) * page + page
    buf = mmap.mmap(-1, size, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.mprotect(ctypes.c_void_p(addr + size - page), page, 0) != 0:
        pytest.skip("mprotect is not available")
    t = torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=size - page - nbytes)
    return t, buf


def test_last_unit_never_reads_past_the_codes(isa):
    """Codes and exponents placed against a guard page: the last unit's loads stay inside the row (a read past the
    end would crash the test process)."""
    gen = torch.Generator().manual_seed(13)
    for K in (32, 96, 128, 160):
        t = sefp.quantize(torch.randn(3, K, generator=gen), m_max=8)
        for m in range(1, 8):
            p = t.packed(m)
            codes, keep_c = _guarded(p.codes.numel())
            codes.copy_(p.codes.flatten())
            exps, keep_e = _guarded(p.exponents.numel())
            exps.copy_(p.exponents.flatten().view(torch.uint8))
            for M in (1, 3, 33, 65):  # (65: the panels' decoder on avx2 and above; 33 there too but on the avx2 ISA)
                x = torch.randn(M, K, generator=gen).bfloat16()
                y = OPS.sefp_packed_linear(x, codes.view(p.codes.shape), exps.view(torch.int8).view(p.exponents.shape),
                                           m, 32, None)
                assert torch.equal(y, sefp.linear(x, p))
            del codes, exps, keep_c, keep_e  # the mappings go with the last tensor on them


def test_linear_equals_the_planes_at_the_same_width():
    """sefp.linear over the copy and over the planes: both within the bound of one exact product."""
    gen = torch.Generator().manual_seed(6)
    t = sefp.quantize(torch.randn(64, 512, generator=gen), m_max=8)
    x = torch.randn(2, 512, generator=gen).bfloat16()
    for m in range(1, 8):
        p = t.packed(m)
        _check(sefp.linear(x, p), x, p, None)
        _check(sefp.linear(x, t, m), x, p, None)


def test_gradients_and_compile():
    gen = torch.Generator().manual_seed(7)
    t = sefp.quantize(torch.randn(16, 64, generator=gen), m_max=8)
    p = t.packed(4)
    x = torch.randn(3, 64, generator=gen, requires_grad=True)
    bias = torch.randn(16, generator=gen, requires_grad=True)
    y = sefp.linear(x, p, bias=bias)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g @ p.dequantize(torch.float32))
    torch.testing.assert_close(bias.grad, g.sum(0))
    f = torch.compile(lambda x: sefp.linear(x, p), fullgraph=True)
    xb = torch.randn(2, 64, generator=gen).bfloat16()
    assert torch.equal(f(xb), sefp.linear(xb, p))


def test_errors():
    t = sefp.quantize(torch.randn(4, 64), m_max=8)
    p = t.packed(3)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match=r"layout: expected 'bits' or 'mx', got 'planes'"):
        t.packed(3, layout="planes")
    with pytest.raises(ValueError, match=r"m: expected m <= 7 for a packed copy"):
        t.packed(8)
    with pytest.raises(ValueError, match=r"m: this packed copy holds width m=3 only, got 4"):
        sefp.linear(x, p, 4)
    assert torch.equal(sefp.linear(x, p, 3), sefp.linear(x, p))
    with pytest.raises(ValueError, match=r"x: expected shape \[\.\.\., K=64\]"):
        sefp.linear(torch.randn(2, 63), p)
    with pytest.raises(TypeError, match=r"w: expected an SEFPTensor .* or an SEFPPacked"):
        sefp.linear(x, p.codes)
    for backend in ("ref", "cpp"):
        if backend == "cpp":
            skip_unless_cpp()
        with leankern.use_backend(backend):
            with pytest.raises(TypeError, match=r"codes: expected dtype in \['torch.uint8'\], got torch.int8"):
                OPS.sefp_packed_linear(x, p.codes.view(torch.int8), p.exponents, 3, 32, None)
            with pytest.raises(ValueError, match=r"m: expected an int in \[1, 7\], got 8"):
                OPS.sefp_packed_linear(x, p.codes, p.exponents, 8, 32, None)
            with pytest.raises(ValueError, match=r"codes: expected rows of Kp \* \(1 \+ m\) / 8 bytes with Kp a "
                                                 r"positive multiple of block_size=32 \(m=4\), got 32 bytes"):
                OPS.sefp_packed_linear(x, p.codes, p.exponents, 4, 32, None)
            with pytest.raises(ValueError, match=r"exponents: expected shape \(N=4, Kp/block_size=2\), got \(4, 1\)"):
                OPS.sefp_packed_linear(x, p.codes, p.exponents[:, :1].contiguous(), 3, 32, None)
            with pytest.raises(ValueError, match=r"x: expected K with K rounded up to block_size=32 equal to the "
                                                 r"stored width 64, got K=96"):
                OPS.sefp_packed_linear(torch.randn(2, 96), p.codes, p.exponents, 3, 32, None)
            with pytest.raises(ValueError, match=r"bias: expected shape \(N=4,\), got \(5,\)"):
                OPS.sefp_packed_linear(x, p.codes, p.exponents, 3, 32, torch.zeros(5))
            with pytest.raises(ValueError, match=r"block_size: expected one of \(32, 64, 128, 256\), got 16"):
                OPS.sefp_packed_linear(x, p.codes, p.exponents, 3, 16, None)
            with pytest.raises(ValueError, match=r"codes: expected a contiguous tensor"):
                OPS.sefp_packed_linear(x, p.codes.t().contiguous().t(), p.exponents, 3, 32, None)


def test_bf16_paths_flush_subnormal_x(isa):
    """Under avx512bf16 on a CPU with AVX512-VBMI (AMX off), bf16 x runs the VBMI GEMV (below 40 rows, with or without
    a bias; from 16 rows its decode-once tile) or the bf16 panels (from 40 rows, no bias), whose vdpbf16ps / bf16 GEMM
    treat bf16 subnormal x as zero: x = 2^-130 gives 0 where the portable path (fp32 x, other ISAs, a bias from 40
    rows) keeps 64 * 2^-130 (the documented exception to the bound, docs/sefp.md). Also proves which path ran, at
    every width."""
    p_all = sefp.quantize(torch.ones(16, 64), m_max=8)  # w_hat = 1 at every width
    x = torch.full((100, 64), 2.0**-130).to(torch.bfloat16)
    tiny = 64 * 2.0**-130
    features = leankern.extension().cpu_features().split()
    vbmi = isa == "avx512bf16" and "avx512vbmi" in features
    for m in range(1, 8):
        p = p_all.packed(m)
        assert sefp.linear(x.float(), p)[0, 0].item() == tiny
        for M, bias, fast in ((1, None, vbmi), (4, None, vbmi), (16, None, vbmi), (24, None, vbmi),
                              (24, torch.zeros(16).bfloat16(), vbmi), (100, None, vbmi),
                              (100, torch.zeros(16).bfloat16(), False)):
            y = sefp.linear(x[:M], p, bias=bias).float()
            assert torch.equal(y, torch.full((M, 16), 0.0 if fast else tiny).bfloat16().float()), (m, M)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 40), K=st.integers(1, 600), M=st.integers(1, 20), m=st.integers(1, 7),
       block_size=st.sampled_from(BLOCK_SIZES), bf16=st.booleans(), seed=st.integers(0, 2**16))
def test_hypothesis_shapes(N, K, M, m, block_size, bf16, seed):
    """Any shape: the copy dequantizes to the planes' m-bit weight bit for bit, the product lies within the bound."""
    gen = torch.Generator().manual_seed(seed)
    t = sefp.quantize(torch.randn(N, K, generator=gen), m_max=8, block_size=block_size)
    p = t.packed(m)
    assert torch.equal(p.dequantize(torch.float32), t.dequantize(m, torch.float32))
    x = torch.randn(M, K, generator=gen).to(torch.bfloat16 if bf16 else torch.float32)
    _check(sefp.linear(x, p), x, p, None)


def test_state_dict_and_safetensors_round_trip(tmp_path):
    """A packed copy saved alone (codes, exponents, meta) loads back and serves the same product."""
    t = sefp.quantize(torch.randn(12, 100, generator=torch.Generator().manual_seed(8)).bfloat16(), m_max=8)
    p = t.packed(5)
    sd = p.state_dict("layer.")
    assert set(sd) == {"layer.codes", "layer.exponents", "layer.meta"}
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "p.safetensors"
    safetensors.save_file(sd, str(path))
    q = SEFPPacked.from_state_dict(safetensors.load_file(str(path)), "layer.")
    assert (q.m, q.shape, q.dtype, q.block_size) == (5, (12, 100), torch.bfloat16, 32)
    assert torch.equal(q.codes, p.codes) and torch.equal(q.exponents, p.exponents)
    x = torch.randn(2, 100).bfloat16()
    assert torch.equal(sefp.linear(x, q), sefp.linear(x, p))
    with pytest.raises(KeyError, match="missing key"):
        SEFPPacked.from_state_dict({}, "layer.")
    with pytest.raises(ValueError, match="expected an SEFP packed-copy version 1 record"):
        SEFPPacked.from_state_dict(t.state_dict("layer.") | {"layer.codes": p.codes}, "layer.")


# ------------------------------------------------------------------------------------------- Triton
def _triton_dev(device):
    from leankern.core import triton_interpreting

    pytest.importorskip("triton")
    if device == "cpu" and not triton_interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (conftest sets it only without a GPU)")
    return device


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16), ids=("f32", "bf16", "f16"))
def test_triton_matches_the_exact_product(device, dtype):
    """triton_kernels/sefp_packed.py (the interpreter without a GPU): within the shared bound, every m, split-K,
    bias, K not a multiple of the block or of the tile, N not a multiple of the row tile."""
    dev = _triton_dev(device)
    from leankern.triton_kernels.sefp_packed import packed_linear_triton

    gen = torch.Generator().manual_seed(21)
    for N, K, G in ((37, 100, 32), (20, 256, 64)):
        t = sefp.quantize(torch.randn(N, K, generator=gen), m_max=8, block_size=G)
        for m in range(1, 8):
            p = t.packed(m)
            for M, split in ((1, None), (5, 2)):
                x = torch.randn(M, K, generator=gen).to(dtype)
                bias = torch.randn(N, generator=gen).to(dtype) if M > 1 else None
                y = packed_linear_triton(x.to(dev), p.codes.to(dev), p.exponents.to(dev), m, G,
                                         None if bias is None else bias.to(dev), split_k=split)
                _check(y.cpu(), x, p, bias)


def test_triton_is_the_ops_cuda_backend(device):
    """The op reaches the Triton launcher through use_backend("triton") (on a GPU: by default)."""
    dev = _triton_dev(device)
    t = sefp.quantize(torch.randn(8, 64, generator=torch.Generator().manual_seed(22)), m_max=8)
    p = t.packed(4)
    x = torch.randn(2, 64).bfloat16()
    with leankern.use_backend("triton"):
        y = OPS.sefp_packed_linear(x.to(dev), p.codes.to(dev), p.exponents.to(dev), 4, 32, None)
    _check(y.cpu(), x, p, None)
