"""The ``leankern`` command (also ``python -m leankern``).

Subcommands:
  info       versions, CPU features, the active C++ ISA, backends, GPU and nvcc
  bench      benchmarks: ``[--quick | --full] [--family F|overhead] [--csv PATH] [--plot PATH] [--device cpu|cuda]``
  numerics   the MX/NV QSNR study: ``[--size N] [--plot PATH] [--csv PATH]``
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys

__all__ = ["main", "info_lines"]

_CPU_FLAGS = (("avx2", "AVX2"), ("fma", "FMA"), ("f16c", "F16C"), ("avx512f", "AVX-512F"), ("avx512bw", "AVX-512BW"),
              ("avx512vl", "AVX-512VL"), ("avx512_vnni", "AVX-512VNNI"), ("avx512_bf16", "AVX-512BF16"),
              ("avx512_fp16", "AVX-512FP16"), ("amx_tile", "AMX"))


def _cpuinfo() -> tuple[str, set]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = val.strip()
                elif key == "flags" and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    return model, flags


def _version(modname: str) -> str:
    try:
        mod = __import__(modname)
    except Exception as exc:  # noqa: BLE001  (report whatever stops the import)
        return f"not importable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return getattr(mod, "__version__", "installed")


def _nvcc() -> str:
    path = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                   if os.environ.get("CUDA_HOME") else None)
    if not path or not os.path.exists(path):
        return "not found"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
        rel = next((ln.strip() for ln in out.splitlines() if "release" in ln), "")
    except (OSError, subprocess.TimeoutExpired):
        rel = ""
    return f"{path} {rel}".strip()


def info_lines() -> list[str]:
    """What ``leankern info`` prints, as lines."""
    import torch

    import leankern
    from leankern.core import backend_for, extension, extension_error, triton_available, triton_interpreting

    model, flags = _cpuinfo()
    lines = [f"leankern   {leankern.__version__} ({os.path.dirname(leankern.__file__)})",
             f"python     {platform.python_version()}",
             f"torch      {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}), {torch.get_num_threads()} threads",
             f"triton     {_version('triton')}",
             f"numpy      {_version('numpy')}",
             f"cpu        {model}, {os.cpu_count()} logical cores",
             "cpu flags  " + (" ".join(name for flag, name in _CPU_FLAGS if flag in flags) or "(none of interest found)")]
    ext = extension()
    if ext is not None:
        lines.append(f"C++ ext    loaded ({getattr(ext, '__file__', '?')})")
        for fn, label in (("cpu_features", "C++ sees"), ("cpu_isa", "C++ ISA")):
            if hasattr(ext, fn):
                lines.append(f"{label:<10} {getattr(ext, fn)()}")
        if hasattr(ext, "amx_enabled"):
            state = "on" if ext.amx_enabled() else "off" if ext.amx_supported() else "not on this CPU / OS"
            lines.append(f"AMX        {state} (tile kernels: mx.linear and vocab dots from 8 rows, moe's bf16 GEMM; LEANKERN_AMX=0)")
        if hasattr(ext, "mx_set_few_rows_fma"):
            fma = ext.mx_set_few_rows_fma(True)
            ext.mx_set_few_rows_fma(fma)
            lines.append(f"few-rows   mx.linear {'fp32 FMA form' if fma else 'vdpbf16ps form'} (4-bit, 6 / 8-bit weights "
                         "below 8 or 32 rows; LEANKERN_MX_FMA=0/1)")
    else:
        lines.append(f"C++ ext    NOT loaded: {extension_error()} -> reference backend on CPU")
    tri = "importable" if triton_available() else "not importable"
    lines.append(f"Triton     {tri}; interpreter {'ON' if triton_interpreting() else 'off'} (TRITON_INTERPRET)")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            lines.append(f"cuda:{i}     {torch.cuda.get_device_name(i)} (sm_{cap[0]}{cap[1]})")
    else:
        lines.append("CUDA       no device")
    lines.append(f"nvcc       {_nvcc()}")
    backends = ["ref"] + (["cpp"] if ext is not None else [])
    if triton_available() and (torch.cuda.is_available() or triton_interpreting()):
        backends.append("triton" + ("" if torch.cuda.is_available() else " (interpreter)"))
    lines.append("backends   " + ", ".join(backends))
    cache = leankern.output_cache.stats()
    lines.append(f"out cache  {'off' if not cache['limit_bytes'] else str(cache['limit_bytes'] >> 20) + ' MB'}"
                 " (leankern.output_cache)")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    lines.append("op -> kernel that torch.ops.leankern.<op> runs (" + ", ".join(devices) + "):")
    for name in leankern.registered_ops():
        picks = [f"{dev}: {_backend_label(backend_for(name, dev))}" for dev in devices]
        lines.append(f"  {name:<22} " + ", ".join(picks))
    return lines


def _backend_label(backend: str) -> str:
    """'ref' is flagged: a user must never be 100x slower without being told."""
    return "REFERENCE (slow: no compiled kernel)" if backend == "ref" else backend


def _cmd_info(args) -> int:
    print("\n".join(info_lines()))
    return 0


def _cmd_bench(args, as_command: bool) -> int:
    from leankern.benchmarks import check_bench_args, rerun_with_thp, run_bench

    err = check_bench_args(args)
    if err:
        print(f"leankern bench: {err}", file=sys.stderr)
        return 2
    if as_command and (rc := rerun_with_thp(args.no_thp)) is not None:
        return rc
    return run_bench(args)


def _cmd_numerics(args, rest) -> int:
    from leankern.mx import numerics

    return numerics.main(rest)


def main(argv=None) -> int:
    from leankern.benchmarks import add_bench_args

    p = argparse.ArgumentParser(prog="leankern", description="leankern: kernels for lean LLM inference")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, CPU features, backends, GPU")
    add_bench_args(sub.add_parser("bench", help="run the benchmarks: one section (header line + table) per family, "
                                              "then the per-call overhead section"))
    sub.add_parser("numerics", help="MX/NV QSNR study (--size N --plot PATH --csv PATH)", add_help=False)
    args, rest = p.parse_known_args(argv)
    if args.cmd == "numerics":
        return _cmd_numerics(args, rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    return _cmd_info(args) if args.cmd == "info" else _cmd_bench(args, as_command=argv is None)


if __name__ == "__main__":
    raise SystemExit(main())
