"""Test helpers for block-format kernels: comparators and hypothesis strategies.

leankern's own tests use these; they are public so you can property-test your kernels against
leankern's references (:mod:`leankern.ref`).

* :func:`assert_bitexact` -- equal bit patterns, with a first-mismatch report (index, both
  values in hex and decoded, number of mismatches); accepts tuples like ``(codes, scales, g)``.
* :func:`qsnr_db` -- quantization SNR in dB.
* :func:`assert_close` -- closeness from a named tolerance-table entry (:data:`TOLERANCES`).
* :mod:`leankern.testing.strategies` -- shapes, raw bit patterns, special values, heavy-tailed
  data, block sizes, format names (needs ``hypothesis``).

Example: check your own MXFP4 quantizer against the reference on raw fp32 bit patterns::

    from hypothesis import given
    from leankern.mx.ref import mx_quantize_ref
    from leankern.testing import assert_bitexact, strategies as lst

    @given(x=lst.bit_pattern_tensors(lst.shapes(block_size=32)))
    def test_my_mxfp4(x):
        expected = mx_quantize_ref(x, "mxfp4", 32, "rceil")  # (codes, scales, global_scale)
        assert_bitexact(my_mxfp4_quantize(x), expected, name="mxfp4")

and quantization quality::

    qt = leankern.mx.quantize(x, "nvfp4")
    print(qsnr_db(x, qt.dequantize(torch.float32)))   # ~20.4 dB on Gaussian data
"""
from __future__ import annotations

import importlib

from .compare import TOLERANCES, Tolerance, assert_bitexact, assert_close, bit_view, get_tolerance, qsnr_db

__all__ = ["assert_bitexact", "assert_close", "qsnr_db", "bit_view", "Tolerance", "TOLERANCES", "get_tolerance",
           "strategies"]


def __getattr__(name):
    # Imported on first use so that leankern.testing works without hypothesis installed.
    if name == "strategies":
        return importlib.import_module(f"{__name__}.strategies")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
