"""MX/NV numerics study (QSNR table, INT theory vs crest factor):
``python bench/bench_mx_numerics.py [--size N] [--plot PATH] [--csv PATH]``.

Thin wrapper around :mod:`leankern.mx.numerics` (same as ``leankern numerics``).
"""
import os
import sys

try:
    import leankern  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from leankern.mx.numerics import main

if __name__ == "__main__":
    raise SystemExit(main())
