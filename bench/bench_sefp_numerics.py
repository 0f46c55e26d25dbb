"""SEFP numerics (QSNR per mantissa width next to the MX formats) and end to end on a Hugging Face
model (decode tok/s, top-1 / KL vs bf16 per width):
``python bench/bench_sefp_numerics.py [--quick | --full] [--part qsnr|e2e|all] [--size N] [--csv PATH]``.

Thin wrapper around :mod:`leankern.benchmarks.sefp_numerics` (also ``leankern bench --family sefp_numerics``).
"""
import os
import sys

try:
    import leankern  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from leankern.benchmarks.sefp_numerics import main

if __name__ == "__main__":
    raise SystemExit(main())
