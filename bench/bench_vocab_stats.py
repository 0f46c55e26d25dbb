"""The ``logit_stats`` rows of the vocab bench alone: ``python bench/bench_vocab_stats.py [REPEATS]`` (default 11).

fp32 / bf16 logits, V = 151,936, B = 1 / 4 / 16; cold (each call on its own DRAM copy) and hot; the read bandwidth of
``torch.sum`` taken before and after each row; torch's max / logsumexp / softmax entropy as the baseline. The same
code as ``leankern bench --family vocab`` (:func:`leankern.benchmarks.vocab._stats_rows`), without the LM-head rows.
"""
import os
import sys

import torch

try:
    import leankern  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from leankern.benchmarks import rerun_with_thp
from leankern.benchmarks.harness import cpu_model, format_table
from leankern.benchmarks.vocab import STATS_COLUMNS, _stats_rows


def main(argv) -> int:
    repeats = int(argv[0]) if argv else 11
    rows = _stats_rows(False, repeats)
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads; logit_stats, repeats {repeats}")
    print(format_table(rows, STATS_COLUMNS))
    return 0


if __name__ == "__main__":
    rc = rerun_with_thp(no_thp=False)
    raise SystemExit(main(sys.argv[1:]) if rc is None else rc)
