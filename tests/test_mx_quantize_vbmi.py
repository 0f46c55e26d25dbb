"""mx_quantize's code kernels for AVX512-VBMI CPUs (csrc/mx/quant_fp4_vbmi.cpp, quant_fp8_vbmi.cpp), bit-exact.

MXFP4 / NVFP4 (every input dtype) and MXFP8 / MXFP6 (bf16 x) with block_size >= 16 take them on CPUs with
AVX512-VBMI (32 elements per op, vpermb table lookups) instead of the generic AVX-512 kernels;
``leankern._C.mx_set_quantize_vbmi`` switches them off, so both run here on the same inputs against the
reference:

* every bf16 / fp16 pattern (and fp32 patterns built from them), sorted and shuffled, with NaN / Inf blocks;
* every finite pattern next to controlled block maxima (several scale exponents per pattern);
* MX bf16 blocks at the edge of the bit-pattern routes (E2M1: e = -124 takes it, e = -125 and below go
  through fp32; FP8 / FP6: below their limit the generic kernel), alone and mixed in one group of 16
  blocks, bf16 subnormals included;
* every element value and RNE tie (and one ulp either side) at many block scales, every input dtype,
  subnormal ranges and the floor mode's saturation included;
* NV: dynamic and static global scales (1.0 saturates / underflows block scales: the clamped table
  index), exact division and the reciprocal.
"""
from __future__ import annotations

import math

import pytest
import torch

import leankern
from leankern.mx.formats import get_format
from leankern.mx.ref import element_values, mx_quantize_ref
from leankern.testing import assert_bitexact
from mx_cases import skip_unless_cpp
from test_mx_cpu_isa import cpp_quantize, scaled_cases, sweep_input

EXT = leankern.extension()
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (format, scale_mode, static global scale or None)
CASES = [("mxfp4", "rceil", None), ("mxfp4", "floor", None), ("nvfp4", "rceil", None), ("nvfp4", "rceil", 1.0),
         ("nvfp4", "reciprocal", None), ("nvfp4", "reciprocal", 1.0)]
CASES += [(f, m, None) for f in ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2") for m in ("rceil", "floor")]
CASE_IDS = [f"{f}-{m}-{'dynamic' if g is None else 'g=1'}" for f, m, g in CASES]


def _has_vbmi() -> bool:
    return "avx512vbmi" in EXT.cpu_features().split()


@pytest.fixture(params=["vbmi", "generic"])
def code_kernel(request):
    """The AVX-512 kernels with the VBMI code kernels on (where the CPU has VBMI) or off."""
    skip_unless_cpp()
    if "avx512" not in EXT.supported_isas():
        pytest.skip(f"no AVX-512 here (it has: {EXT.cpu_features()})")
    if request.param == "vbmi" and not _has_vbmi():
        pytest.skip("this CPU has no AVX512-VBMI")
    EXT.set_cpu_isa("avx512")
    was = EXT.mx_set_quantize_vbmi(request.param == "vbmi")
    try:
        yield request.param
    finally:
        EXT.mx_set_quantize_vbmi(was)
        EXT.set_cpu_isa("auto")


def _check(x, fmt, bs, mode, g, what):
    gt = None if g is None else torch.tensor(g)
    want = mx_quantize_ref(x, fmt, bs, mode, None, gt)
    assert_bitexact(cpp_quantize(x, fmt, bs, mode, None, gt), want, name=what)


@pytest.mark.parametrize("bs", [16, 32, 64, 1024])
@pytest.mark.parametrize("src", list(DTYPES))
@pytest.mark.parametrize("fmt,mode,g", CASES, ids=CASE_IDS)
def test_every_16bit_pattern(code_kernel, fmt, mode, g, src, bs):
    if fmt.startswith("nv") and bs != 16:
        pytest.skip("NV formats: block size 16 is the one models use; the MX rows cover the others")
    for order in ("sorted", "shuffled"):
        _check(sweep_input(src, order, bs), fmt, bs, mode, g, f"{code_kernel} {fmt} {mode} g={g} {src} bs={bs} {order}")


@pytest.mark.parametrize("bs", [16, 32])
@pytest.mark.parametrize("src", list(DTYPES))
@pytest.mark.parametrize("fmt,mode,g", CASES, ids=CASE_IDS)
def test_every_pattern_at_several_block_scales(code_kernel, fmt, mode, g, src, bs):
    if fmt.startswith("nv") and bs != 16:
        pytest.skip("NV formats: block size 16")
    for i, x in enumerate(scaled_cases(src, bs, fmt.startswith("nv") and g is None)):
        _check(x, fmt, bs, mode, g, f"{code_kernel} {fmt} {mode} g={g} {src} bs={bs} part {i}")


def _grid_points(fmt: str) -> torch.Tensor:
    """Every element value and every midpoint between neighbours (the RNE ties), and two past the max."""
    vals = element_values(get_format(fmt).element)
    mids = (vals[1:] + vals[:-1]) / 2
    top = vals[-1]
    return torch.cat([vals, mids, torch.stack([top * 1.06, top * 1.14])]).float()


FP_FORMATS = ["mxfp4", "nvfp4", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2"]
GRIDS = {f: _grid_points(f) for f in FP_FORMATS}
MAXES = {f: float(element_values(get_format(f).element)[-1]) for f in FP_FORMATS}


def _boundary_blocks(fmt: str, dtype: torch.dtype, exps, bs: int) -> torch.Tensor:
    """One row per block exponent e: the block max (element max * 2^e), then every element value and
    midpoint times 2^e, one ulp below and above each, both signs (as many as fit; the rest of the row
    repeats them)."""
    grid = GRIDS[fmt]
    rows = []
    for e in exps:
        v = (grid * 2.0**e).to(dtype)
        vals = torch.cat([v, torch.nextafter(v, torch.zeros_like(v)), torch.nextafter(v, torch.full_like(v, torch.finfo(dtype).max))])
        vals = torch.cat([vals, -vals])
        row = vals.repeat(bs * 16 // vals.numel() + 1)[: bs * 16].reshape(16, bs)
        row[:, 0] = MAXES[fmt] * 2.0**e  # the block max: scale exponent e under rceil
        rows.append(row.reshape(-1))
    return torch.stack(rows).to(dtype)


@pytest.mark.parametrize("bs", [16, 32, 128])
@pytest.mark.parametrize("src", list(DTYPES))
@pytest.mark.parametrize("fmt,mode,g", CASES, ids=CASE_IDS)
def test_rounding_boundaries(code_kernel, fmt, mode, g, src, bs):
    if fmt.startswith("nv") and bs != 16:
        pytest.skip("NV formats: block size 16")
    dtype = DTYPES[src]
    lo = -14 if dtype == torch.float16 else -120
    hi = min(13 if dtype == torch.float16 else 120, math.floor(math.log2(torch.finfo(dtype).max / MAXES[fmt])) - 1)
    exps = list(range(lo, hi + 1, 7)) + [0, 1, -1]
    x = _boundary_blocks(fmt, dtype, exps, bs)
    if fmt.startswith("nv") and g is None:  # one tensor per exponent: in-range E4M3 block scales
        for e, row in zip(exps, x):
            _check(row.unsqueeze(0), fmt, bs, mode, g, f"{code_kernel} {fmt} {mode} {src} bs={bs} e={e}")
    else:
        _check(x, fmt, bs, mode, g, f"{code_kernel} {fmt} {mode} g={g} {src} bs={bs}")


@pytest.mark.parametrize("mode", ["rceil", "floor"])
@pytest.mark.parametrize("bs", [16, 32, 64])
@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2"])
def test_mx_bf16_tiny_blocks(code_kernel, fmt, mode, bs):
    """MX bf16: block exponents around the bit-pattern route's limit (1 - (127 + emin - mbits - 1): E2M1 -124,
    E4M3 -116, E5M2 -109, E2M3 -122, E3M2 -121), every block of a
    16-block group at one exponent (the group takes one route) and then mixed (one tiny block sends its
    group the other way), with bf16 subnormals and the smallest normals inside the blocks."""
    gen = torch.Generator().manual_seed(bs)
    top = MAXES[fmt]
    el = get_format(fmt).element
    limit = 1 - (127 + (1 - el.bias) - el.mbits - 1)
    groups = []
    for e in range(limit - 4, limit + 5):
        blk = torch.randn(16, bs, generator=gen) * 2.0 ** (e + 1)
        blk[:, 1] = 2.0**-133 * torch.randint(1, 128, (16,), generator=gen)  # bf16 subnormals
        blk[:, 2] = -(2.0**-126)
        blk[:, 3] = 2.0**-127 * 1.5
        blk[:, 0] = top * 2.0**e
        groups.append(blk.reshape(-1))
    uniform = torch.stack(groups).to(torch.bfloat16)  # [9, 16 * bs]
    _check(uniform, fmt, bs, mode, None, f"{code_kernel} uniform groups {fmt} {mode} bs={bs}")
    mixed = uniform.reshape(9, 16, bs).transpose(0, 1).reshape(9, 16 * bs)  # each row: every exponent
    _check(mixed.contiguous(), fmt, bs, mode, None, f"{code_kernel} mixed groups {fmt} {mode} bs={bs}")


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mxfp8_e4m3", "mxfp6_e3m2"])
@pytest.mark.parametrize("src", list(DTYPES))
def test_two_threads_many_groups(code_kernel, fmt, src):
    """A tensor of many parallel chunks, rows at magnitudes 2^-20..2^20, NaN / Inf blocks."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(257, 4096, generator=gen) * torch.pow(2.0, torch.randint(-20, 21, (257, 1), generator=gen))
    x[7, 40], x[100, 1000] = float("nan"), float("-inf")
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        bs = 16 if fmt.startswith("nv") else 32
        for mode in (("rceil", "reciprocal") if fmt.startswith("nv") else ("rceil",)):
            _check(x.to(DTYPES[src]), fmt, bs, mode, None, f"{code_kernel} {fmt} {src} {mode}")
    finally:
        torch.set_num_threads(prev)


def test_switch_returns_the_previous_setting():
    skip_unless_cpp()
    was = EXT.mx_set_quantize_vbmi(False)
    try:
        assert EXT.mx_set_quantize_vbmi(True) is False
        assert EXT.mx_set_quantize_vbmi(True) is True
    finally:
        EXT.mx_set_quantize_vbmi(was)
