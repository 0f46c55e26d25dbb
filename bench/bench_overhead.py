"""Per-call overhead of every leankern op on a tiny input, next to plain torch ops:
``python bench/bench_overhead.py [--quick] [--csv PATH] [--device cpu|cuda]``.

Thin wrapper around :mod:`leankern.benchmarks.overhead` (same as ``leankern bench --family overhead``).
"""
import os
import sys

try:
    import leankern  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from leankern.benchmarks.overhead import main

if __name__ == "__main__":
    raise SystemExit(main())
