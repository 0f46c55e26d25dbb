"""Hypothesis strategies for property-testing block-format kernels (needs ``hypothesis``).

* :func:`shapes` / :func:`blocked_shapes`: ``(*leading, K)`` with leading dims that include 1
  and primes and ``K`` a multiple of the block size (or, with ``multiple=False``, never one:
  for error tests).
* :func:`bit_pattern_tensors`: fp32 / bf16 / fp16 tensors built from raw bit patterns: any
  pattern, NaN payloads, +-Inf, subnormals and -0 included.
* :func:`special_value_tensors` (with the plain builder :func:`special_value_tensor`): per
  format, +-0, min/max normal, min subnormal, every RNE tie between adjacent grid points (and
  its fp32 neighbours) at a given power-of-two scale, just-above-max overflow, NaN/Inf.
* :func:`heavy_tailed_tensors`: Student-t and outlier-channel data at random magnitudes.
* :func:`binade_tensor`: values of random sign in the few binades below a power of two (near fp32's ends).
* :func:`block_sizes`, :func:`format_names`, :func:`scale_modes`.
"""
from __future__ import annotations

import math
import operator

import torch
from hypothesis import strategies as st

from ..mx.formats import FORMATS, PAPER_FORMATS, get_format

__all__ = [
    "PRIMES", "block_sizes", "format_names", "scale_modes", "leading_dims", "shapes", "blocked_shapes",
    "special_bit_patterns", "bit_pattern_tensors", "special_values", "special_value_tensor",
    "special_value_tensors", "heavy_tailed_tensors", "binade_tensor",
]

PRIMES = (2, 3, 5, 7, 11, 13, 17, 31, 61, 127, 257)
# dtype -> (exponent bits, mantissa bits, same-width int dtype)
_LAYOUT = {torch.float32: (8, 23, torch.int32), torch.bfloat16: (8, 7, torch.int16), torch.float16: (5, 10, torch.int16)}


# ----------------------------------------------------------------------------- small things
def block_sizes(min_size: int = 2, max_size: int = 1024) -> st.SearchStrategy[int]:
    """Powers of two in ``[min_size, max_size]`` (the legal block sizes are 2..1024)."""
    return st.sampled_from([1 << i for i in range(1, 11) if min_size <= (1 << i) <= max_size])


def format_names(kind: str = "all") -> st.SearchStrategy[str]:
    """Format names; ``kind`` is ``all``, ``mx``, ``nv``, ``int``, ``fp`` or ``paper`` (the eight paper formats)."""
    names = {
        "all": list(FORMATS), "paper": list(PAPER_FORMATS),
        "mx": [n for n, f in FORMATS.items() if not f.is_nv], "nv": [n for n, f in FORMATS.items() if f.is_nv],
        "int": [n for n, f in FORMATS.items() if f.element.is_int],
        "fp": [n for n, f in FORMATS.items() if not f.element.is_int],
    }
    if kind not in names:
        raise ValueError(f"kind: expected one of {sorted(names)}, got {kind!r}")
    return st.sampled_from(names[kind])


def scale_modes() -> st.SearchStrategy[str]:
    return st.sampled_from(("rceil", "floor"))


def _dim(max_size: int) -> st.SearchStrategy[int]:
    """1, a prime, or anything up to ``max_size``."""
    return st.one_of(st.just(1), st.sampled_from([p for p in PRIMES if p <= max_size] or [1]),
                     st.integers(1, max_size))


def leading_dims(max_dims: int = 2, max_size: int = 64) -> st.SearchStrategy[tuple]:
    """0..``max_dims`` leading dimensions, each 1, a prime or up to ``max_size``."""
    return st.lists(_dim(max_size), min_size=0, max_size=max_dims).map(tuple)


@st.composite
def shapes(draw, block_size: int = 32, max_leading_dims: int = 2, max_leading: int = 64, max_blocks: int = 8,
           multiple: bool = True) -> tuple:
    """``(*leading, K)`` with ``K = n * block_size`` (n: 1, a prime, or up to ``max_blocks``).

    ``multiple=False`` gives a ``K`` that is never a multiple of ``block_size`` (for error tests).
    """
    lead = draw(leading_dims(max_leading_dims, max_leading))
    n = draw(_dim(max_blocks))
    K = n * block_size
    if not multiple:
        if block_size < 2:
            raise ValueError("multiple=False needs block_size >= 2")
        K = draw(st.integers(0, max_blocks - 1)) * block_size + draw(st.integers(1, block_size - 1))
    return (*lead, K)


@st.composite
def blocked_shapes(draw, block_size=None, **kwargs) -> tuple:
    """``(shape, block_size)``: a block size (default :func:`block_sizes` up to 128) and a shape for it."""
    bs = draw(block_size if block_size is not None else block_sizes(2, 128))
    return draw(shapes(bs, **kwargs)), bs


# ----------------------------------------------------------------------------- raw bit patterns
def special_bit_patterns(dtype=torch.float32) -> dict:
    """Named bit patterns (as Python ints of the same-width signed int) of ``dtype``'s special values."""
    eb, mb, _ = _LAYOUT[dtype]
    nbits = 1 + eb + mb
    sign, exp_all = 1 << (nbits - 1), ((1 << eb) - 1) << mb
    pats = {
        "zero": 0, "neg_zero": sign, "min_subnormal": 1, "max_subnormal": (1 << mb) - 1,
        "min_normal": 1 << mb, "max_normal": exp_all - 1, "one": ((1 << (eb - 1)) - 1) << mb,
        "inf": exp_all, "neg_inf": exp_all | sign, "qnan": exp_all | (1 << (mb - 1)),
        "snan": exp_all | 1, "neg_qnan": exp_all | sign | (1 << (mb - 1)), "nan_all_ones": (1 << nbits) - 1,
        "neg_min_subnormal": sign | 1, "neg_max_normal": sign | (exp_all - 1),
    }
    return {k: v - (1 << nbits) if v >= 1 << (nbits - 1) else v for k, v in pats.items()}


def _random_bits(n: int, dtype, seed: int, mode: str, centre: int, spread: int) -> torch.Tensor:
    """``n`` random bit patterns (int tensor): uniform over all patterns, or exponents near ``centre``."""
    eb, mb, int_dtype = _LAYOUT[dtype]
    nbits = 1 + eb + mb
    g = torch.Generator().manual_seed(seed)
    if mode == "uniform":
        bits = torch.randint(-(1 << (nbits - 1)), 1 << (nbits - 1), (n,), generator=g, dtype=torch.int64)
        return bits.to(int_dtype)
    exp = (centre + torch.randint(-spread, spread + 1, (n,), generator=g)).clamp(0, (1 << eb) - 2)
    mant = torch.randint(0, 1 << mb, (n,), generator=g)
    sign = torch.randint(0, 2, (n,), generator=g)
    bits = (sign << (nbits - 1)) | (exp << mb) | mant
    return torch.where(bits >= 1 << (nbits - 1), bits - (1 << nbits), bits).to(int_dtype)


def _restrict(bits: torch.Tensor, dtype, allow_nan: bool, allow_inf: bool, allow_subnormal: bool) -> torch.Tensor:
    eb, mb, int_dtype = _LAYOUT[dtype]
    b = bits.to(torch.int64)
    exp, mant = (b >> mb) & ((1 << eb) - 1), b & ((1 << mb) - 1)
    top = (1 << eb) - 1
    if not allow_nan:
        b = torch.where((exp == top) & (mant != 0), b - (1 << mb), b)  # NaN -> a large finite value
    if not allow_inf:
        b = torch.where((exp == top) & (mant == 0), b - 1, b)  # +-Inf -> +-max finite
    if not allow_subnormal:
        b = torch.where((exp == 0) & (mant != 0), b | (1 << mb), b)  # into the min normal binade
    return b.to(int_dtype)


@st.composite
def bit_pattern_tensors(draw, shape=None, dtype=torch.float32, allow_nan: bool = True, allow_inf: bool = True,
                        allow_subnormal: bool = True, max_specials: int = 8) -> torch.Tensor:
    """A ``dtype`` tensor (fp32/bf16/fp16) built from raw bit patterns.

    The bulk comes from a drawn seed, either uniform over all bit patterns (so about 1/256 of
    fp32 elements are NaN/Inf and 1/256 subnormal) or with exponents clustered around a drawn
    centre (exercising rounding within a few binades, subnormals included when the centre is
    low); then up to ``max_specials`` positions are overwritten with named specials
    (:func:`special_bit_patterns`). ``shape``: a tuple, a strategy, or None (:func:`shapes`).
    """
    if dtype not in _LAYOUT:
        raise ValueError(f"dtype: expected one of {list(_LAYOUT)}, got {dtype}")
    shp = draw(shape) if isinstance(shape, st.SearchStrategy) else (shape or draw(shapes()))
    n = math.prod(shp)
    eb = _LAYOUT[dtype][0]
    mode = draw(st.sampled_from(["uniform", "clustered"]))
    centre = draw(st.integers(0, (1 << eb) - 2))
    spread = draw(st.sampled_from([0, 1, 3, 8, 30]))
    bits = _random_bits(n, dtype, draw(st.integers(0, 2**32 - 1)), mode, centre, spread)
    if n:
        specials = list(special_bit_patterns(dtype).values())
        for idx, pat in draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(specials)), max_size=max_specials)):
            bits[idx] = pat
    bits = _restrict(bits, dtype, allow_nan, allow_inf, allow_subnormal)
    return bits.view(dtype).reshape(shp)


# ----------------------------------------------------------------------------- special values
def special_values(fmt: str, scale_exp: int = 0) -> list:
    """``(label, value)`` pairs of awkward inputs for ``fmt`` at block scale ``2**scale_exp``.

    Finite in-range values: +-0, min subnormal, min normal, +-max, every midpoint (RNE tie)
    between adjacent grid magnitudes and the fp32 neighbours of each midpoint. Overflow: max
    plus half the top quantum (a tie past the end of the grid) and the next fp32 above max.
    Non-finite: NaN, +-Inf.
    """
    el = get_format(fmt).element
    s = 2.0**scale_exp
    grid = [el.code_value(c) for c in range(el.max_code + 1)]
    out = [("zero", 0.0), ("neg_zero", -0.0), ("min_subnormal", grid[1] * s), ("max", grid[-1] * s),
           ("neg_max", -grid[-1] * s)]
    if not el.is_int:
        out.append(("min_normal", math.ldexp(1.0, el.emin) * s))
    for c in range(el.max_code):
        tie = (grid[c] + grid[c + 1]) / 2 * s
        t32 = torch.tensor(tie, dtype=torch.float32)
        out += [(f"tie_{c}_{c + 1}", tie), (f"neg_tie_{c}_{c + 1}", -tie),
                (f"below_tie_{c}_{c + 1}", float(torch.nextafter(t32, torch.tensor(0.0)))),
                (f"above_tie_{c}_{c + 1}", float(torch.nextafter(t32, torch.tensor(math.inf))))]
    top_quantum = grid[-1] - grid[-2]
    out += [("overflow_tie", (grid[-1] + top_quantum / 2) * s),
            ("overflow_next_fp32", float(torch.nextafter(torch.tensor(grid[-1] * s), torch.tensor(math.inf)))),
            ("nan", math.nan), ("inf", math.inf), ("neg_inf", -math.inf)]
    return out


def special_value_tensor(fmt: str, block_size: int | None = None, scale_exp: int = 0, dtype=torch.float32,
                         with_labels: bool = False):
    """:func:`special_values` laid out in blocks whose scale is ``2**scale_exp``.

    Every row is one block and starts with an anchor ``max * 2**scale_exp``, so an MX block's
    RCEIL and FLOOR scale is exactly ``2**scale_exp`` and the ties are exact ties. In-range
    values share rows (zero-padded); each overflow and non-finite value gets its own row (an
    overflow row saturates under FLOOR and moves the scale up under RCEIL; a NaN/Inf row is a
    NaN block). For NV formats pass ``global_scale=torch.tensor(1.0)`` when quantizing: the
    block scale is then exactly ``2**scale_exp`` for ``-9 <= scale_exp <= 8``. bf16/fp16 round
    the values (ties may stop being ties). Shape: ``[rows, block_size]``; with ``with_labels``
    also the row-major list of labels (``"anchor"``, ``"pad"``, ...).
    """
    f = get_format(fmt)
    bs = block_size or f.default_block_size
    vals = special_values(fmt, scale_exp)
    anchor = ("anchor", f.element.max_value * 2.0**scale_exp)
    alone = [v for v in vals if v[0].startswith("overflow") or not math.isfinite(v[1])]
    shared = [v for v in vals if v not in alone]
    rows, cur = [], [anchor]
    for item in shared:
        if len(cur) == bs:
            rows.append(cur)
            cur = [anchor]
        cur.append(item)
    rows.append(cur)
    rows += [[anchor, item] for item in alone]
    rows = [r + [("pad", 0.0)] * (bs - len(r)) for r in rows]
    x = torch.tensor([[v for _, v in r] for r in rows], dtype=torch.float64).to(torch.float32).to(dtype)
    if with_labels:
        return x, [lab for r in rows for lab, _ in r]
    return x


@st.composite
def special_value_tensors(draw, fmt: str, block_size: int | None = None, dtype=torch.float32,
                          min_scale_exp: int = -9, max_scale_exp: int = 8) -> torch.Tensor:
    """:func:`special_value_tensor` at a drawn scale exponent, columns shuffled per row, random signs.

    For several formats: ``format_names().flatmap(lambda f: special_value_tensors(f).map(lambda x: (f, x)))``.
    """
    e = draw(st.integers(min_scale_exp, max_scale_exp))
    x = special_value_tensor(fmt, block_size, e, torch.float32)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    order = torch.argsort(torch.rand(x.shape, generator=g), dim=-1)  # [rows, bs]
    x = torch.gather(x, -1, order)
    if draw(st.booleans()):
        flip = torch.rand(x.shape, generator=g) < 0.5
        x = torch.where(flip, -x, x)
    return x.to(dtype)


# ----------------------------------------------------------------------------- heavy tails
@st.composite
def heavy_tailed_tensors(draw, shape=None, dtype=torch.float32) -> torch.Tensor:
    """Student-t (df 1, 2, 3 or 5) or outlier-channel data (magnitude 4..1000), times a random power of two.

    fp16 results are kept finite (the power of two is lowered if needed). ``shape``: tuple,
    strategy or None (:func:`shapes`).
    """
    from ..mx.numerics import outlier_channels, student_t  # lazy: numerics imports leankern.testing

    shp = draw(shape) if isinstance(shape, st.SearchStrategy) else (shape or draw(shapes()))
    seed = draw(st.integers(0, 2**31 - 1))
    if draw(st.sampled_from(["student_t", "outlier_channels"])) == "student_t":
        x = student_t(shp, draw(st.sampled_from([1, 2, 3, 5])), seed)
    else:
        x = outlier_channels(shp, seed, fraction=draw(st.sampled_from([1 / 64, 1 / 16])),
                             magnitude=draw(st.sampled_from([4.0, 16.0, 100.0, 1000.0])))
    k = draw(st.integers(-20, 20))
    amax = float(x.abs().max()) if x.numel() else 0.0
    if dtype == torch.float16 and amax > 0:
        k = min(k, math.floor(math.log2(60000.0 / amax)))
    return (x * 2.0**k).to(dtype)


def binade_tensor(shape, top_exp: int, generator: torch.Generator, binades: int = 4) -> torch.Tensor:
    """fp32 ``shape`` of random sign whose magnitudes lie in ``[2^(top_exp - binades), 2^top_exp)`` (log-uniform): x
    near the ends of fp32's range for property checks of GEMMs. Accepts integers ``binades >= 1`` and
    ``-126 + binades <= top_exp <= 127`` (ValueError otherwise): then every value is an fp32 normal, and normal after
    a cast to bf16, and every fp32 value of the range can occur, whatever ``top_exp``. Draws the magnitudes, then the
    signs, from ``generator`` (one fp32 ``torch.rand`` of ``shape`` each)."""
    try:
        top_exp, binades = operator.index(top_exp), operator.index(binades)
    except TypeError:
        raise TypeError(f"top_exp, binades: expected integers, got {top_exp!r}, {binades!r}") from None
    if binades < 1:
        raise ValueError(f"binades: expected an integer >= 1, got {binades}")
    if not -126 + binades <= top_exp <= 127:
        raise ValueError(f"top_exp: expected {-126 + binades} <= top_exp <= 127 (all values fp32 normals below "
                         f"2^128 with binades={binades}), got {top_exp}")
    u_mag = torch.rand(shape, generator=generator)  # [shape] fp32: 24 random bits, k 2^-24
    u_sign = torch.rand(shape, generator=generator)  # [shape] fp32: the sign is its top bit (< 0.5) ...
    # ... and its 23 lower bits refine the magnitude's draw, so u is uniform on a 2^-47 grid in [0, 1) while the
    # generator is used exactly as by fp32 draws of magnitudes and signs (callers' later draws stay the same).
    # In float64 the exponent top_exp - binades u keeps all those bits (fp32 rounded it to 2^-17 at |top_exp| >= 64).
    k = torch.floor(u_mag.double() * 2.0**24)
    j = torch.remainder(torch.floor(u_sign.double() * 2.0**24), 2.0**23)
    u = (k + j * 2.0**-23) * 2.0**-24
    mag = torch.exp2(top_exp - binades * u).to(torch.float32)
    # rounding to fp32 may reach 2^top_exp (for u < ~2^-25 / binades): the largest fp32 below it instead
    mag = mag.clamp(min=math.ldexp(1.0, top_exp - binades), max=math.ldexp(1.0 - 2.0**-24, top_exp))
    return torch.where(u_sign < 0.5, -mag, mag)
