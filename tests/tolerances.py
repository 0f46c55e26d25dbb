"""Tolerance table for the test suite: the library's defaults plus test-only entries.

``leankern.testing.compare.TOLERANCES`` is the public default table (dtype keys ``fp32`` /
``bf16`` / ``fp16`` / ``fp64`` and one entry per format for "block-quantized matmul vs
dequantize-then-fp32-matmul"). Tests look entries up with :func:`tol` or pass
``table=TOLERANCES`` to ``assert_close``. Add family entries here as families land.
"""
from leankern.testing.compare import TOLERANCES as LIBRARY_TOLERANCES
from leankern.testing.compare import Tolerance, get_tolerance

TOLERANCES = dict(LIBRARY_TOLERANCES)
TOLERANCES.update({
    # Hadamard transform in another butterfly order: fp32 sums of n terms, |x| ~ rms.
    "hadamard_fp32": Tolerance(atol=0.0, rtol=1e-6, atol_rms=2e-6),
})


def tol(key) -> Tolerance:
    """Tolerance for ``key`` (a name above or a torch dtype)."""
    return get_tolerance(key, TOLERANCES)


__all__ = ["TOLERANCES", "Tolerance", "tol"]
