"""End-to-end VocabTailor benchmark (decode ms/token, LM-head time, resident vocabulary bytes, full vs tailored):
``python bench/bench_vocab_e2e.py [--quick | --full] [--csv PATH]``. Needs ``transformers``.

Thin wrapper around :mod:`leankern.benchmarks.vocab_e2e` (same as ``leankern bench --family vocab_e2e``).
"""
import os
import sys

try:
    import leankern  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from leankern.benchmarks import bench_main

if __name__ == "__main__":
    raise SystemExit(bench_main(families=("vocab_e2e",), prog="bench_vocab_e2e"))
