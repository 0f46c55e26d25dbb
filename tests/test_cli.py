"""The ``leankern`` command: info, bench (tiny size), numerics (small size), via subprocess."""
import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import leankern
from leankern.benchmarks.mx import format_aot_report, plan
from leankern.mx.formats import FORMATS

REPO = Path(__file__).resolve().parents[1]


def _proc(*args, timeout=600, env=None):
    full = dict(os.environ, **(env or {}))
    # The subprocess imports the same leankern as this test process.
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(leankern.__file__).parents[1]), full.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=full, cwd=REPO)


def _run(*args, timeout=600, env=None):
    proc = _proc(*args, timeout=timeout, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout


HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def test_info():
    out = _run("-m", "leankern", "info")
    for key in ("leankern", "torch", "triton", "numpy", "cpu flags", "C++ ext", "Triton", "nvcc", "backends"):
        assert any(line.startswith(key) for line in out.splitlines()), key
    assert "ref" in out.split("backends", 1)[1]


def test_bench_quick_tiny(tmp_path):
    path = tmp_path / "mx.csv"
    png = tmp_path / "mx.png"
    out = _run("-m", "leankern", "bench", "--quick", "--family", "mx", "--size", "128", "--no-aot", "--csv", str(path),
               "--plot", str(png))
    assert png.exists() or importlib.util.find_spec("matplotlib") is None
    assert "measured copy bandwidth" in out
    assert "fresh tensors on 2 MiB pages" in out  # reran itself with THP_MEM_ALLOC_ENABLE=1
    assert "GB/s" in out and "x ref" in out and "x torch" in out
    assert "CHECK FAILED" not in out
    rows = list(csv.DictReader(path.open()))
    planned = plan("quick", "cpu", sizes=(128,))  # (op, n, dtype, fmt or chunk, static g, time ref, scale mode)
    assert len(rows) == len(planned)
    nv = {n for n, f in FORMATS.items() if f.is_nv}  # NV quantize is also timed with a static g ("+g")
    recip = {n + g + ":recip" for n in nv for g in ("", "+g")}  # and, at bf16, in "reciprocal" scale mode
    assert {r["format"] for r in rows} == set(FORMATS) | {n + "+g" for n in nv} | recip | {
        f"n={what}" for op, _, _, what, *_ in planned if op == "hadamard"}
    assert {(r["op"], r["format"]) for r in rows} >= {("quantize", f) for f in FORMATS} | {("dequantize", f) for f in FORMATS}
    # every row of our kernel checked against the reference (subprocess: same extension as this process)
    want_checks = {"bitexact", "bitexact*"} if leankern.extension() is not None else {"no kernel"}
    assert {r["check"] for r in rows} <= want_checks, {r["check"] for r in rows}
    assert all(float(r["bandwidth_gbps"]) > 0 for r in rows)
    # %bw divides by the copy bandwidth measured just before and after each row, not by the header's figure
    assert all(float(r["row_bw_gbps"]) > 0 for r in rows) and {r["bw_beaten"] for r in rows} <= {"True", "False"}
    assert all(abs(float(r["frac_bw"]) * float(r["row_bw_gbps"]) - float(r["gbps"])) <= 1e-6 * float(r["gbps"])
               for r in rows if r["frac_bw"])
    assert "copy bandwidth next to the rows" in out
    assert all(float(r["torch_ms"]) > 0 for r in rows)
    if leankern.extension() is not None:
        assert all(float(r["ours_ms"]) > 0 for r in rows)


def test_bench_no_thp(tmp_path):
    env_thp = os.environ.pop("THP_MEM_ALLOC_ENABLE", None)
    try:
        out = _run("-m", "leankern", "bench", "--size", "64", "--quick", "--no-aot", "--no-thp")
    finally:
        if env_thp is not None:
            os.environ["THP_MEM_ALLOC_ENABLE"] = env_thp
    assert "fresh tensors on 4 KiB pages" in out
    assert "no tiny call" not in out  # the overhead section has a row for every registered op
    assert re.search(r"^mx_linear_packed +x\[1,32\] @ prepacked", out, re.M)


def test_bench_rejects_bad_size():
    env = dict(os.environ, PYTHONPATH=str(Path(leankern.__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-m", "leankern", "bench", "--size", "100", "--no-aot"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "--size" in proc.stderr


def test_numerics_small(tmp_path):
    path = tmp_path / "numerics.csv"
    plot = ("--plot", str(tmp_path / "n.png")) if HAS_MATPLOTLIB else ()  # without it --plot is an error (below)
    out = _run("-m", "leankern", "numerics", "--size", "256", "--csv", str(path), *plot)
    assert "QSNR (dB), 256x256" in out
    for fmt in ("mxint8", "mxfp8_e4m3", "nvfp4", "nvint4"):
        assert any(line.startswith(fmt) for line in out.splitlines()), fmt
    assert "Paper claims" in out and "crest factor" in out
    assert (tmp_path / "n.png").exists() or not HAS_MATPLOTLIB
    rows = [r for r in csv.reader(path.open()) if r and r[0] == "qsnr"]
    assert len(rows) == 8 * 3 * 2  # formats x datasets x rotations


@pytest.mark.parametrize("script", ["bench/bench_mx.py", "bench/bench_mx_numerics.py"])
def test_bench_scripts_help(script):
    assert "--csv" in _run(str(REPO / script), "--help")


def test_aot_report_formatting():
    fake = [{"kernel": "mx_quantize", "arch": "sm_90", "registers": 40, "shared_bytes": 0},
            {"kernel": "mx_quantize", "arch": "sm_100", "registers": 38, "shared_bytes": 0}]
    text = format_aot_report(fake, 90)
    assert "mx_quantize" in text and "40" in text and "sm_100" not in text
    assert "hello" in format_aot_report("hello")
    assert "regs: 3" in format_aot_report({"regs": 3})


def test_gpu_check_dry_run_plans_every_stage(tmp_path):
    """bench/gpu_check.sh (the one script a lent GPU machine runs): valid bash, and --dry-run plans each stage."""
    stages = "env build info linear splitk bench vocab sefp moe specdec overhead tests".split()
    env = dict(os.environ, OUT=str(tmp_path))
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                          timeout=60, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    planned = [line.split(":")[0] for line in (tmp_path / "summary.txt").read_text().splitlines() if "dry-run" in line]
    assert planned == stages[:9] + ["specdec", "specdec_graph"] + stages[10:]
    bad = subprocess.run(["bash", str(REPO / "bench/gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                         timeout=60, env=dict(env, STAGES="env nosuchstage"), cwd=REPO)
    assert bad.returncode != 0 and "unknown stage 'nosuchstage'" in bad.stdout


# ------------------------------------------------- numerics: outputs checked before the (long) study
@pytest.fixture
def no_study(monkeypatch):
    """The study itself must not start: the output checks come first."""
    from leankern.mx import numerics

    def _raise(*args, **kwargs):
        raise AssertionError("the study ran before the outputs were checked")

    monkeypatch.setattr(numerics, "qsnr_table", _raise)
    monkeypatch.setattr(numerics, "crest_factor_study", _raise)
    return numerics


@pytest.mark.parametrize("flag", ["--csv", "--plot"])
def test_numerics_unwritable_output_fails_before_the_run(no_study, flag, tmp_path, capsys):
    bad = tmp_path / "missing_dir" / "out.file"
    assert no_study.main([flag, str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"leankern numerics: {flag}: cannot write {bad}" in err and "No such file or directory" in err, err
    assert no_study.main(["--csv", str(tmp_path)]) == 2  # a directory
    assert "Is a directory" in capsys.readouterr().err


def test_numerics_output_check_leaves_files_as_they_were(no_study, tmp_path):
    """The writability probe neither truncates an existing file nor leaves a new one behind."""
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    old.write_text("keep me\n")
    assert no_study.check_outputs(str(old), None) is None and no_study.check_outputs(str(new), None) is None
    assert old.read_text() == "keep me\n" and not new.exists()


def test_numerics_plot_without_matplotlib_fails_before_the_run(no_study, monkeypatch, tmp_path, capsys):
    for mod in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, mod, None)  # import matplotlib -> ImportError, as if not installed
    png, path = tmp_path / "n.png", tmp_path / "n.csv"
    assert no_study.main(["--csv", str(path), "--plot", str(png)]) == 2
    err = capsys.readouterr().err
    assert "--plot: matplotlib is not installed" in err and "nothing computed" in err, err
    assert not png.exists() and not path.exists()


def test_numerics_cli_unwritable_csv_exits_nonzero_without_traceback(tmp_path):
    bad = tmp_path / "missing_dir" / "q.csv"
    # the default size (4096) would take minutes if the study ran first
    proc = _proc("-m", "leankern", "numerics", "--csv", str(bad), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"leankern numerics: --csv: cannot write {bad}" in proc.stderr and "Traceback" not in proc.stderr
    assert "QSNR" not in proc.stdout


# ------------------------------------------------------ LEANKERN_BENCH_SIZE: read only when a bench runs
@pytest.mark.parametrize("cmd", [["--help"], ["info"], ["bench", "--help"]])
def test_bad_bench_size_env_leaves_other_commands_alone(cmd):
    out = _run("-m", "leankern", *cmd, env={"LEANKERN_BENCH_SIZE": "abc"})
    assert out.strip()


@pytest.mark.parametrize("value", ["abc", "100", "-64", "1e3"])
def test_bad_bench_size_env_is_a_clear_bench_error(value):
    proc = _proc("-m", "leankern", "bench", "--quick", "--no-aot", "--no-thp", env={"LEANKERN_BENCH_SIZE": value},
                 timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (f"leankern bench: LEANKERN_BENCH_SIZE: expected a positive multiple of 64, "
                                   f"got {value!r}"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_size_env_is_read_lazily(monkeypatch):
    import argparse

    from leankern.benchmarks import add_bench_args, bench_size, check_bench_args

    monkeypatch.setenv("LEANKERN_BENCH_SIZE", "oops")
    p = argparse.ArgumentParser()
    add_bench_args(p)  # building the parser does not read it
    args = p.parse_args([])
    assert args.size is None
    assert "LEANKERN_BENCH_SIZE" in check_bench_args(args)
    with pytest.raises(ValueError, match=r"LEANKERN_BENCH_SIZE: expected a positive multiple of 64, got 'oops'"):
        bench_size(args)
    assert bench_size(p.parse_args(["--size", "128"])) == 128  # --size wins over the variable
    monkeypatch.setenv("LEANKERN_BENCH_SIZE", "192")
    assert check_bench_args(args) is None and bench_size(args) == 192
    for unset in ("", "0"):
        monkeypatch.setenv("LEANKERN_BENCH_SIZE", unset)
        assert bench_size(args) is None  # the families' default sizes
