"""Build for leankern: the Python package plus one C++ extension, ``leankern._C``.

Sources are discovered, so a new family needs no edit here (layout: docs/architecture.md):
  CPU (always):  csrc/bindings.cpp, csrc/common/*.cpp, csrc/<family>/*.cpp
  CUDA (only when torch is a CUDA build and nvcc is found): csrc/<family>/*.cu and
                 csrc/<family>/*_cuda_binding.cpp (the torch side of the CUDA kernels)
Environment switches:
  LEANKERN_NO_EXT=1        build no extension (pure reference backend)
  LEANKERN_CUDA=0 / =1     force the CUDA sources off / on
  LEANKERN_DEBUG_INFO=1    keep debug info (-g); by default -g0 overrides the -g that Python's own CFLAGS add:
                           debug info was ~40% of each file's compile time (specdec/verify_cpu.cpp 35 s -> 20 s)
No native-arch compiler flag: SIMD paths are compiled per function with target attributes and chosen at run
time (csrc/common/cpu_features.h), so one binary runs on any x86-64.

Python packages: everything under python/leankern, plus triton_kernels/ shipped as the subpackage
leankern.triton_kernels. It must never be importable as a top-level ``triton_kernels``: that name
belongs to the Triton project's own kernel library.
"""
import glob
import os

from setuptools import find_packages, setup

PACKAGES = find_packages("python", include=["leankern", "leankern.*"]) + ["leankern.triton_kernels"]
PACKAGE_DIR = {"leankern": "python/leankern", "leankern.triton_kernels": "triton_kernels"}
CUDA_BINDING_SUFFIX = "_cuda_binding.cpp"


def _sources(with_cuda: bool) -> list:
    """The extension's sources, sorted and without duplicates (csrc/common/*.cpp matches both globs)."""
    cpp = glob.glob("csrc/common/*.cpp") + glob.glob("csrc/*/*.cpp")
    cpu = sorted({p for p in cpp if not p.endswith(CUDA_BINDING_SUFFIX)})
    sources = ["csrc/bindings.cpp"] + cpu
    if with_cuda:
        sources += sorted(glob.glob("csrc/*/*.cu")) + sorted(glob.glob("csrc/*/*" + CUDA_BINDING_SUFFIX))
    return sources


def _extensions():
    if os.environ.get("LEANKERN_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
    if os.environ.get("LEANKERN_DEBUG_INFO") != "1":
        cxx_flags.append("-g0")  # after Python's CFLAGS (which carry -g) on the command line, so it wins
    force = os.environ.get("LEANKERN_CUDA")
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if force is not None:
        with_cuda = force == "1"
    kwargs = dict(
        name="leankern._C",
        sources=_sources(with_cuda),
        include_dirs=[os.path.abspath("csrc")],
        extra_link_args=["-fopenmp"],
    )
    if with_cuda:
        ext = CUDAExtension(
            define_macros=[("LEANKERN_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--fmad=false", "-std=c++17"]},
            **kwargs,
        )
    else:
        ext = CppExtension(extra_compile_args={"cxx": cxx_flags}, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(
    package_dir=PACKAGE_DIR,
    packages=PACKAGES,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
