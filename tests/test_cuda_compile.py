"""Compile-check every csrc/<family>/*.cu with nvcc on this (GPU-less) machine, for sm_90 and sm_100.

The .cu files include only CUDA headers and our own (the torch bindings live in .cpp files), so
`nvcc -c -std=c++17 -I csrc` needs neither a GPU nor a CUDA build of torch. Besides "it compiles",
the generated code is checked for the kernel entry points, for IEEE division (div.rn.f32, the NV
scale needs it), for no flush-to-zero and for no fused multiply-add (bit-exactness with the
reference relies on both). Skipped when nvcc is not on PATH.
"""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CU_FILES = sorted((ROOT / "csrc").glob("**/*.cu"))  # csrc/<family>/*.cu (csrc/mx/mx.cu, ...)
NVCC = shutil.which("nvcc")
# kernels each file must define (other .cu files: at least one kernel)
EXPECTED_KERNELS = {"mx.cu": ("mx_quantize_kernel", "nv_amax_kernel", "nv_scale_kernel")}

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: cannot compile-check csrc/**/*.cu")


def _nvcc(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([NVCC, "-std=c++17", "-I", str(ROOT / "csrc"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _archs() -> list[str]:
    listed = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True, timeout=30).stdout
    return ["90"] + (["100"] if "compute_100" in listed else [])


@pytest.fixture(scope="module")
def archs():
    return _archs()


def test_there_are_cuda_sources():
    assert CU_FILES, "csrc/**/*.cu: no CUDA sources found"


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: str(p.relative_to(ROOT / "csrc")))
def test_cu_includes_no_torch_headers(cu):
    includes = re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', cu.read_text(), flags=re.M)
    torchy = [h for h in includes if h.split("/")[0] in ("torch", "ATen", "c10", "pybind11")]
    assert not torchy, f"{cu.name} includes torch headers {torchy}: keep the binding in a .cpp"


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: str(p.relative_to(ROOT / "csrc")))
def test_cu_compiles(cu, archs, tmp_path):
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    res = _nvcc("-c", *gencode, str(cu), "-o", str(tmp_path / "out.o"))
    assert res.returncode == 0, f"nvcc -c {cu.name} failed for sm_{archs}:\n{res.stderr[-4000:]}"
    assert (tmp_path / "out.o").stat().st_size > 0


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: str(p.relative_to(ROOT / "csrc")))
def test_cu_kernels_and_numerics_flags(cu, archs, tmp_path):
    kernels = EXPECTED_KERNELS.get(cu.name, ())
    for arch in archs:
        cubin, ptx = tmp_path / f"sm{arch}.cubin", tmp_path / f"sm{arch}.ptx"
        res = _nvcc("-cubin", f"-arch=sm_{arch}", str(cu), "-o", str(cubin))
        assert res.returncode == 0, f"nvcc -cubin sm_{arch} {cu.name}:\n{res.stderr[-4000:]}"
        res = _nvcc("-ptx", f"-arch=sm_{arch}", str(cu), "-o", str(ptx))
        assert res.returncode == 0, f"nvcc -ptx sm_{arch} {cu.name}:\n{res.stderr[-4000:]}"
        entries = re.findall(r"\.entry\s+(\S+)\(", ptx.read_text())
        assert entries, f"{cu.name}: no kernel entry points in the sm_{arch} PTX"
        blob = cubin.read_bytes()
        for k in kernels:
            assert any(k in e for e in entries), f"{cu.name}: kernel {k} missing from the sm_{arch} PTX ({entries})"
            assert k.encode() in blob, f"{cu.name}: kernel {k} missing from the sm_{arch} cubin"
        text = ptx.read_text()
        assert ".ftz" not in text, f"{cu.name}: flush-to-zero instructions in the sm_{arch} PTX"
        assert "fma.rn.f32" not in text, f"{cu.name}: fp32 FMA contraction in the sm_{arch} PTX"
        if cu.name == "mx.cu":
            assert "div.rn.f32" in text, f"{cu.name}: the NV scale needs IEEE fp32 division (div.rn.f32)"
