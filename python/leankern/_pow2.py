"""``x * 2^e`` that is exact on every device, for the pure-PyTorch references.

``torch.ldexp(x, e)`` is ``x * torch.pow(2, e)``: exact on CPU (the C library's pow), but a device's pow
need not return an exact power of two, and the references' bit-exact scaling relies on it. Here ``2^e`` is
built from its float64 bit pattern (biased exponent ``e + 1023``, zero mantissa) and the product is formed
in float64, where it is exact, then rounded once to ``x``'s dtype: the correctly rounded ``x * 2^e``.
"""
import torch

__all__ = ["ldexp_exact"]


def ldexp_exact(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``x * 2^e`` correctly rounded to ``x``'s dtype, on every device.

    ``x``: float32 or float64, any shape; ``e``: integral values (any dtype) in [-1022, 1023], broadcastable
    to ``x`` (float64 ``x`` with a subnormal result rounds once, like ``math.ldexp``). Shape: the broadcast of
    the two; dtype: ``x``'s.
    """
    pow2 = ((e.to(torch.int64) + 1023) << 52).view(torch.float64)
    return (x.to(torch.float64) * pow2).to(x.dtype)
