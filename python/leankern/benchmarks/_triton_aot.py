"""Registers and shared memory of the Triton kernels compiled ahead of time for a GPU target.

Printed under the MX section of ``leankern bench`` (no GPU needed: AOT compilation only).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from .harness import format_table

__all__ = ["triton_aot_report", "format_aot_report"]

_AOT_SNIPPET = (
    "import json, sys\n"
    "from leankern.triton_kernels.aot import aot_report\n"
    "try:\n"
    "    r = aot_report(targets=(sys.argv[1],), quick=sys.argv[2] == '1')\n"
    "except TypeError:  # an aot_report without these keywords\n"
    "    r = aot_report()\n"
    "sys.stdout.write('@@AOT@@' + json.dumps(r, default=str))\n"
)


def triton_aot_report(arch: int = 90, quick: bool = False, timeout: int = 900) -> str:
    """Registers / shared memory per Triton kernel compiled ahead of time for ``sm_<arch>``.

    Runs ``leankern.triton_kernels.aot.aot_report()`` in a subprocess without TRITON_INTERPRET
    (AOT compilation needs the real compiler path); returns text, or a note when unavailable.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-c", _AOT_SNIPPET, f"sm_{arch}", "1" if quick else "0"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"Triton AOT report: timed out after {timeout}s"
    if proc.returncode != 0 or "@@AOT@@" not in proc.stdout:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"Triton AOT report: not available ({last})"
    report = json.loads(proc.stdout.split("@@AOT@@", 1)[1])
    return format_aot_report(report, arch)


_ARCH_KEYS = ("arch", "target", "sm", "cc", "capability", "gpu")
_NAME_KEYS = ("kernel", "name", "fn")


def format_aot_report(report, arch: int = 90) -> str:
    """Text for whatever ``aot_report()`` returned: a str, a list of dicts (one per kernel/target), or a dict."""
    head = f"Triton AOT report (sm_{arch}):"
    if isinstance(report, str):
        return f"{head}\n{report}"
    if isinstance(report, dict):
        if all(isinstance(v, dict) for v in report.values()):  # {kernel: {field: value}}
            report = [{"kernel": k, **v} for k, v in report.items()]
        else:
            return head + "\n" + "\n".join(f"  {k}: {v}" for k, v in report.items())
    if not isinstance(report, list) or not all(isinstance(r, dict) for r in report):
        return f"{head}\n{report}"
    arch_key = next((k for r in report for k in r if k.lower() in _ARCH_KEYS), None)
    rows = [r for r in report if arch_key is None or str(arch) in str(r.get(arch_key, ""))]
    if not rows:
        return f"{head} no kernels for this target in the report"
    keys = list(dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], (list, dict))))
    keys.sort(key=lambda k: (k.lower() not in _NAME_KEYS, 0))
    return head + "\n" + format_table(rows, [(k, k, "<" if k.lower() in _NAME_KEYS else "") for k in keys])
