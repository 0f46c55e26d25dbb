"""The C++ CPU kernels, under every ISA this CPU supports, are bit-exact with leankern.mx.ref.

The C++ kernels are what ``torch.ops.leankern.mx_quantize / mx_dequantize / hadamard_transform``
run on CPU tensors (here forced with ``leankern.use_backend("cpp")``, so a missing kernel is an
error, not a silent reference run). Each test forces one ISA with ``leankern._C.set_cpu_isa``
("avx512" / "avx2" / "scalar"; "auto" again afterwards) and compares codes, scale bytes, global
scales, dequantized outputs and Hadamard outputs bit for bit (``leankern.testing.assert_bitexact``)
with the reference.

Besides mixed inputs (Gaussian blocks, +-0, fp32 subnormals, max normals, RNE ties, values just
above the element max, NaN / Inf blocks, raw random bit patterns), the tests cover what the SIMD
kernels branch on (csrc/mx/mx_simd_impl.h):

* block size: groups of N / bs blocks per vector (bs < N lanes: 2, 4, 8), one block per vector
  (bs == N: 16 for AVX-512, 8 for AVX2, 16-bit inputs take a two-blocks-per-load path), whole
  vectors inside a block (bs >= 2N), several vectors per block (64, 1024); NV's 16 among them;
* fast vs general path per group of N blocks (tiny blocks, saturating scales, NV scale underflow);
* the block scale: every bf16 / fp16 bit pattern (and fp32 patterns derived from them) is
  quantized next to several controlled block maxima, so it is rounded at several scale exponents;
* threads: tensors of many ~64K-element parallel chunks, with the NV tensor amax merged across
  chunks (the largest value in the first or the last chunk).
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

import leankern
from leankern.mx.formats import FORMATS, get_format
from leankern.mx.ref import element_values, hadamard_transform_ref, mx_dequantize_ref, mx_quantize_ref
from leankern.testing import assert_bitexact
from mx_cases import skip_unless_cpp

EXT = leankern.extension()
ISAS = ("avx512", "avx2", "scalar")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_SIZES = (2, 8, 16, 32, 64, 1024)
OPS = torch.ops.leankern


@pytest.fixture(autouse=True)
def _needs_cpp():
    skip_unless_cpp()


@pytest.fixture(params=ISAS)
def isa(request):
    """Force the C++ kernels onto one ISA for the test; back to "auto" afterwards."""
    skip_unless_cpp()
    name = request.param
    if name not in EXT.supported_isas():
        pytest.skip(f"this CPU does not support {name} (it has: {EXT.cpu_features()})")
    EXT.set_cpu_isa(name)
    try:
        yield name
    finally:
        EXT.set_cpu_isa("auto")


# The C++ kernels, through the torch ops. use_backend("cpp") raises if no C++ kernel is registered.
def cpp_quantize(x, fmt, bs, mode="rceil", rand_bits=None, global_scale=None, strict=False):
    with leankern.use_backend("cpp"):
        return OPS.mx_quantize(x, fmt, bs, mode, rand_bits, global_scale, strict)


def cpp_dequantize(codes, scales, g, fmt, bs, out_dtype):
    with leankern.use_backend("cpp"):
        return OPS.mx_dequantize(codes, scales, g, fmt, bs, out_dtype)


def cpp_hadamard(x, chunk, scale, signs=None):
    with leankern.use_backend("cpp"):
        return OPS.hadamard_transform(x, chunk, scale, signs)


# ------------------------------------------------------------------------------------------------
# Mixed test data
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


# ------------------------------------------------------------------------------------------------
# Quantize: mixed inputs
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
                assert_bitexact(cpp_quantize(x, fmt, bs, mode, rb), mx_quantize_ref(x, fmt, bs, mode, rb, None),
                                name=what)


NV_INVALID_G = {1e-44, 0.0, -2.0, math.inf, math.nan}  # not finite or below 2^-126: rejected


@pytest.mark.parametrize("fmt", ["nvfp4", "nvint4"])
@pytest.mark.parametrize("g", [1.0, 0.37, 1e-30, 2.0**-126, 3e38, 1e-44, 0.0, -2.0, math.inf, math.nan])
def test_nv_given_global_scale(isa, fmt, g):
    """Static tensor scale; g = 1 with amax = 6 * 2^k blocks makes d a power of two (exact ties);
    tiny / huge g saturate the E4M3 scale (g = 2^-126: g * s is an fp32 subnormal); a g that is not
    finite or below 2^-126 is rejected with the reference's message."""
    for dtype in DTYPES:
        x = make_input(fmt, 16, 40, dtype, seed=3).reshape(4, 160)
        gs = torch.tensor(g, dtype=torch.float32)
        for rb in (None, torch.randint(-(2**31), 2**31 - 1, x.shape, dtype=torch.int32)):
            if g in NV_INVALID_G or math.isnan(g):
                with pytest.raises(ValueError, match=r"^global_scale: expected a finite value >= 2\^-126"):
                    cpp_quantize(x, fmt, 16, "rceil", rb, gs)
                continue
            assert_bitexact(cpp_quantize(x, fmt, 16, "rceil", rb, gs), mx_quantize_ref(x, fmt, 16, "rceil", rb, gs),
                            name=f"{isa} {fmt} {dtype} g={g}")


@pytest.mark.parametrize("fmt", ["nvfp4", "nvint4"])
def test_nv_tiny_tensor_amax(isa, fmt):
    """Tensor amax ~1e-40: g = amax / (448 * max) is below 2^-126 and gets floored there."""
    x = torch.zeros(3, 64)
    x[0, 0], x[0, 16], x[0, 17], x[1, 33], x[2, 5] = 1e-40, -0.0, 1e-45, -3e-41, 2e-44
    for rb in (None, torch.randint(-(2**31), 2**31 - 1, x.shape, dtype=torch.int32)):
        assert_bitexact(cpp_quantize(x, fmt, 16, "rceil", rb), mx_quantize_ref(x, fmt, 16, "rceil", rb, None),
                        name=f"{isa} {fmt}")


@pytest.mark.parametrize("lead", [(), (1,), (13,), (2, 3), (1, 5, 1)], ids=str)
@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4"])
def test_quantize_shapes(isa, fmt, lead):
    """Arbitrary leading dims (none, 1, primes, several); also a non-contiguous input."""
    K = 96
    x = make_input(fmt, 32, math.prod(lead) * 3, torch.float32, seed=7).reshape(*lead, K)
    assert_bitexact(cpp_quantize(x, fmt, 32), mx_quantize_ref(x, fmt, 32, "rceil"), name=f"{isa} {fmt} {lead}")
    xt = torch.randn(K, 5).t()  # [5, K], not contiguous
    assert_bitexact(cpp_quantize(xt, fmt, 32), mx_quantize_ref(xt.contiguous(), fmt, 32, "rceil"),
                    name=f"{isa} {fmt} transposed")


def test_quantize_empty(isa):
    for fmt in ("mxfp4", "nvfp4"):
        x = torch.zeros(0, 64)
        assert_bitexact(cpp_quantize(x, fmt, 32), mx_quantize_ref(x, fmt, 32, "rceil"), name=f"{isa} {fmt} empty")


# ------------------------------------------------------------------------------------------------
# Every 16-bit pattern, at every block size the SIMD code specialises
# ------------------------------------------------------------------------------------------------
# 2, 4, 8: N / bs blocks per vector (segmented reductions); 8 (AVX2) / 16 (AVX-512, NV's default):
# one block per vector, two per 16-bit load; 32: AVX-512's first bs >= 2N size; 64, 1024: several
# vectors per block (1024: the largest block).
SWEEP_BLOCK_SIZES = (2, 4, 8, 16, 32, 64, 1024)
SOURCES = ("bf16", "fp16", "fp32")
# (fmt, scale_mode, static global scale or None): both MX scale rules; NV with the dynamic tensor
# scale (its amax pass parks block maxima for the quantize pass) and with a static one.
SWEEP_CASES = [pytest.param(fmt, mode, None, id=f"{fmt}-{mode}")
               for fmt, f in FORMATS.items() if not f.is_nv for mode in ("rceil", "floor")]
SWEEP_CASES += [pytest.param(fmt, "rceil", g, id=f"{fmt}-{'dynamic_g' if g is None else 'g=1'}")
                for fmt, f in FORMATS.items() if f.is_nv for g in (None, 1.0)]
_SRC_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@functools.lru_cache(maxsize=None)
def pattern_values(src: str) -> torch.Tensor:
    """All 65,536 patterns of ``src`` in pattern order ([65536]). "fp32": each bf16 pattern in the
    high half; every odd entry also gets pseudo-random low bits (full fp32 mantissas, fp32
    subnormals, NaN payloads), every even one is the bf16 value exactly (incl. +-Inf)."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int64)
    if src != "fp32":
        return bits.to(torch.int16).view(_SRC_DTYPE[src])
    i = torch.arange(bits.numel(), dtype=torch.int64)
    h = (i * 2654435761) & 0xFFFFFFFF
    low = ((h ^ (h >> 15)) & 0xFFFF) * (i & 1)
    v = ((bits & 0xFFFF) << 16) | low
    return torch.where(v >= 2**31, v - 2**32, v).to(torch.int32).view(torch.float32)


def _finite_twin(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the top exponent bit cleared: NaN / Inf patterns become finite ones."""
    bits = x.view(torch.int32 if x.element_size() == 4 else torch.int16)
    return (bits & ~(1 << (8 * x.element_size() - 2))).view(x.dtype)


@functools.lru_cache(maxsize=4)
def sweep_input(src: str, order: str, bs: int) -> torch.Tensor:
    """[64, 1024]: every pattern of ``src`` once. "sorted": pattern order (block-mates of similar
    size, whole NaN / Inf blocks); "shuffled": a random order (mixed magnitudes in a block), NaN /
    Inf kept in every 8th block only (elsewhere their finite twin) so most blocks are finite."""
    x = pattern_values(src)
    if order == "shuffled":
        blocks = x[torch.randperm(x.numel(), generator=_gen(1))].reshape(-1, bs)
        keep = (torch.arange(blocks.shape[0]) % 8 == 0).unsqueeze(-1)
        x = torch.where(torch.isfinite(blocks) | keep, blocks, _finite_twin(blocks))
    return x.reshape(64, 1024)


def _g_tensor(g):
    return None if g is None else torch.tensor(g, dtype=torch.float32)


@functools.lru_cache(maxsize=2)  # the tests vary the ISA fastest: one reference serves every ISA
def sweep_reference(fmt, mode, g, src, bs):
    out = {}
    for order in ("sorted", "shuffled"):
        q = mx_quantize_ref(sweep_input(src, order, bs), fmt, bs, mode, None, _g_tensor(g))
        out[order] = (q, {od: mx_dequantize_ref(*q, fmt, bs, od) for od in DTYPES})
    return out


@pytest.mark.parametrize("isa", ISAS, indirect=True)  # the last-listed parameter varies fastest
@pytest.mark.parametrize("bs", SWEEP_BLOCK_SIZES)
@pytest.mark.parametrize("src", SOURCES)
@pytest.mark.parametrize("fmt,mode,g", SWEEP_CASES)
def test_all_16bit_patterns_every_block_size(fmt, mode, g, src, bs, isa):
    """Every bf16 / fp16 pattern (and fp32 patterns built from them), sorted and shuffled: codes,
    scales and global scale, then the dequantized codes in every output dtype."""
    ref = sweep_reference(fmt, mode, g, src, bs)
    for order in ("sorted", "shuffled"):
        what = f"{isa} {fmt} {mode} g={g} {src} bs={bs} {order}"
        want_q, want_d = ref[order]
        got = cpp_quantize(sweep_input(src, order, bs), fmt, bs, mode, None, _g_tensor(g))
        assert_bitexact(got, want_q, name=what)
        for od in DTYPES:
            assert_bitexact(cpp_dequantize(*got, fmt, bs, od), want_d[od], name=f"{what} dequantize->{od}")


# ------------------------------------------------------------------------------------------------
# Every pattern at several scale exponents: blocks with a controlled maximum
# ------------------------------------------------------------------------------------------------
# bs < N (grouped, general path), bs == N for AVX2 (8) and AVX-512 (16), bs >= 2N (32).
SCALED_BLOCK_SIZES = (2, 8, 16, 32)
NV_WINDOW_BINADES = 12  # NV: blocks whose maxima lie within 2^12 share one tensor (and one dynamic g)


def _shifts(nblocks: int, gen: torch.Generator) -> list:
    """Per round, the block maximum as |largest pattern in the block| * 2^k: k = 0 (the pattern is
    the maximum), k in [1, 8] (inside most element grids), k in [9, 40] (element subnormals and
    zeros), and None: the dtype's largest finite value (everything else rounds to 0 or a subnormal)."""
    return [torch.zeros(nblocks, dtype=torch.int64), torch.randint(1, 9, (nblocks,), generator=gen),
            torch.randint(9, 41, (nblocks,), generator=gen), None]


@functools.lru_cache(maxsize=2)
def scaled_blocks(src: str, bs: int) -> tuple:
    """(blocks [R, bs] in ``src``'s dtype, log2 of each block's max [R]): every finite pattern, bs - 1
    to a block (in pattern order), next to a block maximum of either sign at a rotating position,
    once per round of :func:`_shifts`."""
    dtype = _SRC_DTYPE[src]
    p = pattern_values(src)
    p = p[torch.isfinite(p)]
    n = bs - 1
    pad = (-p.numel()) % n
    pats = torch.cat([p, torch.zeros(pad, dtype=dtype)]).reshape(-1, n)  # [B, n]
    nb = pats.shape[0]
    pmax = pats.double().abs().amax(-1)  # [B]
    big = torch.finfo(dtype).max
    gen = _gen(bs)
    sign = torch.where(torch.arange(nb) % 2 == 0, 1.0, -1.0).double()
    out, logs = [], []
    for k in _shifts(nb, gen):
        anchor = torch.full_like(pmax, big) if k is None else torch.clamp(pmax * torch.pow(2.0, k.double()), max=big)
        blk = torch.cat([(anchor * sign).to(dtype).unsqueeze(-1), pats], -1)  # [B, bs], max in column 0
        col = (torch.arange(bs) - torch.arange(nb).unsqueeze(-1)) % bs  # rotate row b by b places
        out.append(torch.gather(blk, 1, col))
        logs.append(torch.where(anchor > 0, torch.log2(anchor), torch.zeros_like(anchor)))
    return torch.cat(out), torch.cat(logs)


@functools.lru_cache(maxsize=2)
def scaled_cases(src: str, bs: int, nv_dynamic: bool) -> list:
    """Tensors to quantize: all blocks at once, or (NV with a dynamic global scale) one tensor per
    window of NV_WINDOW_BINADES binades of block maxima, so each has in-range E4M3 block scales."""
    blocks, logs = scaled_blocks(src, bs)
    if not nv_dynamic:
        return [_as_rows(blocks)]
    window = torch.floor(logs / NV_WINDOW_BINADES).to(torch.int64)
    return [_as_rows(blocks[window == w]) for w in torch.unique(window).tolist()]


def _as_rows(blocks: torch.Tensor) -> torch.Tensor:
    """[R, bs] -> [rows, 1024] (zero blocks appended to fill the last row)."""
    bs = blocks.shape[1]
    per_row = 1024 // bs
    pad = (-blocks.shape[0]) % per_row
    return torch.cat([blocks, blocks.new_zeros(pad, bs)]).reshape(-1, 1024)


@functools.lru_cache(maxsize=2)
def scaled_reference(fmt, mode, g, src, bs):
    out = []
    for x in scaled_cases(src, bs, get_format(fmt).is_nv and g is None):
        q = mx_quantize_ref(x, fmt, bs, mode, None, _g_tensor(g))
        out.append((q, mx_dequantize_ref(*q, fmt, bs, torch.float32)))
    return out


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("bs", SCALED_BLOCK_SIZES)
@pytest.mark.parametrize("src", SOURCES)
@pytest.mark.parametrize("fmt,mode,g", SWEEP_CASES)
def test_every_pattern_at_several_block_scales(fmt, mode, g, src, bs, isa):
    """Each finite pattern is rounded under four block maxima (itself, 2^1..2^8 and 2^9..2^40 above it,
    the dtype's max): several scale exponents, element-subnormal and zero results included."""
    cases = scaled_cases(src, bs, get_format(fmt).is_nv and g is None)
    for i, (x, (want_q, want_d)) in enumerate(zip(cases, scaled_reference(fmt, mode, g, src, bs))):
        what = f"{isa} {fmt} {mode} g={g} {src} bs={bs} part {i}"
        got = cpp_quantize(x, fmt, bs, mode, None, _g_tensor(g))
        assert_bitexact(got, want_q, name=what)
        assert_bitexact(cpp_dequantize(*got, fmt, bs, torch.float32), want_d, name=f"{what} dequantize")


# ------------------------------------------------------------------------------------------------
# Threads: many parallel chunks (~64K elements each), NV tensor amax merged across them
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def two_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


MT_SHAPE = (513, 4096)  # 2.1M elements: 32 full chunks of 65,536 and a short last one
# (fmt, dtype, block size, where the tensor's largest |value| sits: "first" / "last" chunk, static g)
MT_CASES = [
    ("mxfp8_e4m3", torch.bfloat16, 32, "last"), ("mxfp4", torch.float32, 32, "first"),
    ("mxint8", torch.float16, 64, "last"), ("mxfp6_e3m2", torch.float32, 8, "last"),
    ("nvfp4", torch.bfloat16, 16, "last"), ("nvfp4", torch.float32, 16, "first"),
    ("nvint4", torch.float16, 16, "last"), ("nvint4", torch.bfloat16, 16, "first"),
    ("nvfp4", torch.float32, 16, "static_g"),
]


@functools.lru_cache(maxsize=1)
def mt_input(dtype: torch.dtype, where: str) -> torch.Tensor:
    """Gaussian rows at magnitudes 2^-8..2^8, a NaN and an Inf block mid-tensor (NV amax must skip
    them), and one largest value, 1e4, in the first or the last chunk."""
    gen = _gen(5)
    x = torch.randn(MT_SHAPE, generator=gen) * torch.pow(2.0, torch.randint(-8, 9, (MT_SHAPE[0], 1), generator=gen))
    x = x.clamp(-1e3, 1e3)
    x[256, 100], x[300, 7] = math.nan, -math.inf
    flat = x.view(-1)
    if where == "first":
        flat[5] = -1e4
    else:
        flat[-3] = 1e4  # the short last chunk
    return x.to(dtype)


@functools.lru_cache(maxsize=1)
def mt_reference(fmt, dtype, bs, where):
    g = torch.tensor(0.01) if where == "static_g" else None
    q = mx_quantize_ref(mt_input(dtype, where), fmt, bs, "rceil", None, g)
    return q, mx_dequantize_ref(*q, fmt, bs, dtype)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("fmt,dtype,bs,where", MT_CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_multithreaded_chunks(two_threads, fmt, dtype, bs, where, isa):
    x = mt_input(dtype, where)
    want_q, want_d = mt_reference(fmt, dtype, bs, where)
    g = torch.tensor(0.01) if where == "static_g" else None
    what = f"{isa} {fmt} {dtype} bs={bs} max in {where} chunk, 2 threads"
    got = cpp_quantize(x, fmt, bs, "rceil", None, g)
    assert_bitexact(got, want_q, name=what)
    assert_bitexact(cpp_dequantize(*got, fmt, bs, dtype), want_d, name=f"{what} dequantize")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("chunk", [32, 4096])
def test_multithreaded_hadamard(two_threads, chunk, isa):
    x = torch.randn(MT_SHAPE, generator=_gen(chunk)).to(torch.bfloat16)
    signs = leankern.mx.random_hadamard_signs(chunk, seed=3)
    assert_bitexact(cpp_hadamard(x, chunk, 1 / math.sqrt(chunk), signs),
                    hadamard_transform_ref(x, chunk, 1 / math.sqrt(chunk), signs), name=f"{isa} chunk={chunk}")


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
                assert_bitexact(cpp_dequantize(codes, scales, g, fmt, bs, od),
                                mx_dequantize_ref(codes, scales, g, fmt, bs, od), name=f"{isa} {fmt} bs={bs} -> {od}")


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
        assert_bitexact(cpp_hadamard(x, chunk, scale, sg), hadamard_transform_ref(x, chunk, scale, sg),
                        name=f"{isa} chunk={chunk} {dtype} scale={scale} signs={sg is not None}")


def test_hadamard_special_values(isa):
    x = torch.tensor([[0.0, -0.0, 1e-45, -1e-40, 3e38, 3e38, -3e38, 1.0] * 4])  # overflow -> Inf too
    for chunk in (2, 8, 32):
        assert_bitexact(cpp_hadamard(x, chunk, 1.0), hadamard_transform_ref(x, chunk, 1.0), name=f"{isa} chunk={chunk}")


# ------------------------------------------------------------------------------------------------
# ISA switch, format table
# ------------------------------------------------------------------------------------------------
def test_set_cpu_isa_rejects_unknown_name():
    prev = EXT.cpu_isa()
    with pytest.raises(ValueError, match=r"expected one of 'avx512bf16', 'avx512', 'avx2', 'scalar', 'auto', got 'sse9'"):
        EXT.set_cpu_isa("sse9")
    assert EXT.cpu_isa() == prev


def test_set_cpu_isa_rejects_unsupported_isa():
    missing = [name for name in ("avx512bf16",) + ISAS if name not in EXT.supported_isas()]
    if not missing:
        pytest.skip(f"this CPU supports every ISA ({EXT.cpu_features()}): nothing unsupported to reject")
    prev = EXT.cpu_isa()
    with pytest.raises(RuntimeError, match=f"does not support '{missing[0]}'"):
        EXT.set_cpu_isa(missing[0])
    assert EXT.cpu_isa() == prev


def test_isa_roundtrip_and_features():
    supported = EXT.supported_isas()
    assert supported[-1] == "scalar"
    try:
        for name in supported:
            EXT.set_cpu_isa(name)
            assert EXT.cpu_isa() == name
    finally:
        EXT.set_cpu_isa("auto")
    assert EXT.cpu_isa() == supported[0]
    feats = EXT.cpu_features().split()
    if "avx512" in supported:
        assert {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(feats)
    assert ("avx512bf16" in supported) == ({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni",
                                            "avx512bf16"} <= set(feats))
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
