"""MoE layer benchmark:
``python bench/bench_moe.py [--quick | --full] [--csv PATH] [--plot PATH] [--device cpu|cuda]``.

Thin wrapper around :mod:`leankern.benchmarks.moe` (same as ``leankern bench --family moe``).
"""
import os
import sys

try:
    import leankern  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from leankern.benchmarks.moe import main

if __name__ == "__main__":
    raise SystemExit(main())
