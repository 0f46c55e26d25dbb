"""MX / NV block-format descriptions: element types and named formats.

This module is the single Python source of truth for format parameters. The C++ kernels
(``csrc/mx/``) keep a mirrored table; ``tests/test_mx_cpu_isa.py::test_format_table_mirrors_python`` checks the two agree.

Element grid
------------
FP elements (``is_int=False``) are sign-magnitude with ``mbits`` mantissa bits, exponent bias
``bias`` and minimum normal exponent ``emin = 1 - bias``. A magnitude code ``c`` (the code
without its sign bit) is ordered like its value, so saturation is ``min(c, max_code)``.
INT elements are symmetric two's-complement integers in ``[-max_int, max_int]``; ``-2^(b-1)``
is never produced.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["ElementType", "BlockFormat", "ELEMENTS", "FORMATS", "PAPER_FORMATS", "get_format", "format_names"]


@dataclass(frozen=True)
class ElementType:
    name: str
    bits: int
    is_int: bool
    mbits: int = 0  # FP: stored mantissa bits
    bias: int = 0  # FP: exponent bias
    max_code: int = 0  # FP: largest finite magnitude code; INT: max |code|
    sign_bit: int = 0  # FP: bit index of the sign in the code

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal FP value (1 - bias)."""
        return 1 - self.bias

    def code_value(self, mag_code: int) -> float:
        """Value of a non-negative magnitude code (exact)."""
        if self.is_int:
            return float(mag_code)
        e_field, m_field = mag_code >> self.mbits, mag_code & ((1 << self.mbits) - 1)
        if e_field == 0:
            return math.ldexp(m_field, self.emin - self.mbits)
        return math.ldexp((1 << self.mbits) + m_field, e_field - self.bias - self.mbits)

    @property
    def max_value(self) -> float:
        return self.code_value(self.max_code)

    @property
    def emax(self) -> int:
        """floor(log2(max_value)): the element's largest exponent (OCP emax; b-2 for INTb)."""
        return math.frexp(self.max_value)[1] - 1

    @property
    def packed(self) -> bool:
        """4-bit codes are stored two per byte (element 2i in the low nibble)."""
        return self.bits == 4


ELEMENTS = {
    "fp8_e4m3": ElementType("fp8_e4m3", 8, False, mbits=3, bias=7, max_code=0x7E, sign_bit=7),
    "fp8_e5m2": ElementType("fp8_e5m2", 8, False, mbits=2, bias=15, max_code=0x7B, sign_bit=7),
    "fp6_e2m3": ElementType("fp6_e2m3", 6, False, mbits=3, bias=1, max_code=0x1F, sign_bit=5),
    "fp6_e3m2": ElementType("fp6_e3m2", 6, False, mbits=2, bias=3, max_code=0x1F, sign_bit=5),
    "fp4_e2m1": ElementType("fp4_e2m1", 4, False, mbits=1, bias=1, max_code=0x7, sign_bit=3),
    "int8": ElementType("int8", 8, True, max_code=127),
    "int6": ElementType("int6", 6, True, max_code=31),
    "int4": ElementType("int4", 4, True, max_code=7),
}


@dataclass(frozen=True)
class BlockFormat:
    """A named block format: element type, default block size and scale kind.

    ``scale_kind`` is ``"e8m0"`` (MX: one power-of-two byte per block, bias 127, 0xFF = NaN) or
    ``"e4m3"`` (NV: FP8 E4M3 block scale times an FP32 per-tensor scale).
    """

    name: str
    element: ElementType
    default_block_size: int
    scale_kind: str

    @property
    def is_nv(self) -> bool:
        return self.scale_kind == "e4m3"

    @property
    def code_dtype(self) -> torch.dtype:
        el = self.element
        if el.name == "fp8_e4m3":
            return torch.float8_e4m3fn
        if el.name == "fp8_e5m2":
            return torch.float8_e5m2
        if el.is_int and el.bits in (8, 6):
            return torch.int8
        return torch.uint8  # fp6 (one code per byte), fp4/int4 (two codes per byte)

    @property
    def scale_dtype(self) -> torch.dtype:
        return torch.float8_e4m3fn if self.is_nv else torch.uint8

    def bits_per_element(self, block_size: int | None = None) -> float:
        """Storage cost in bits per element, block scale included (FP6/INT6 stored unpacked)."""
        bs = block_size or self.default_block_size
        stored = 4 if self.element.packed else 8
        return stored + 8 / bs


FORMATS = {
    "mxfp8_e4m3": BlockFormat("mxfp8_e4m3", ELEMENTS["fp8_e4m3"], 32, "e8m0"),
    "mxfp8_e5m2": BlockFormat("mxfp8_e5m2", ELEMENTS["fp8_e5m2"], 32, "e8m0"),
    "mxfp6_e2m3": BlockFormat("mxfp6_e2m3", ELEMENTS["fp6_e2m3"], 32, "e8m0"),
    "mxfp6_e3m2": BlockFormat("mxfp6_e3m2", ELEMENTS["fp6_e3m2"], 32, "e8m0"),
    "mxfp4": BlockFormat("mxfp4", ELEMENTS["fp4_e2m1"], 32, "e8m0"),
    "mxint8": BlockFormat("mxint8", ELEMENTS["int8"], 32, "e8m0"),
    "mxint6": BlockFormat("mxint6", ELEMENTS["int6"], 32, "e8m0"),
    "mxint4": BlockFormat("mxint4", ELEMENTS["int4"], 32, "e8m0"),
    "nvfp4": BlockFormat("nvfp4", ELEMENTS["fp4_e2m1"], 16, "e4m3"),
    "nvint4": BlockFormat("nvint4", ELEMENTS["int4"], 16, "e4m3"),
}
_ALIASES = {"mxfp8": "mxfp8_e4m3", "mxfp6": "mxfp6_e2m3"}

# The eight formats of the paper's tables (MXFP8/MXFP6 in their default element types).
PAPER_FORMATS = ("mxint8", "mxfp8_e4m3", "mxint6", "mxfp6_e2m3", "mxint4", "mxfp4", "nvint4", "nvfp4")


def format_names() -> list[str]:
    """The canonical names of the ten formats, in :data:`FORMATS` order (a new list each call): ``mxfp8_e4m3``,
    ``mxfp8_e5m2``, ``mxfp6_e2m3``, ``mxfp6_e3m2``, ``mxfp4``, ``mxint8``, ``mxint6``, ``mxint4``, ``nvfp4``,
    ``nvint4``. Aliases (``mxfp8``, ``mxfp6``) are not listed; :func:`get_format` accepts them too."""
    return list(FORMATS)


def get_format(name: str) -> BlockFormat:
    """Look up a format by name (case-insensitive; ``mxfp8`` = ``mxfp8_e4m3``, ``mxfp6`` = ``mxfp6_e2m3``)."""
    f = FORMATS.get(name) if isinstance(name, str) else None
    if f is not None:  # fast path: a canonical name (the per-call overhead of every front-end counts)
        return f
    if isinstance(name, BlockFormat):
        return name
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in FORMATS:
        raise ValueError(f"fmt: expected one of {tuple(FORMATS)} or an alias {tuple(_ALIASES)}, got {name!r}")
    return FORMATS[key]
