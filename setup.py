"""Build for leankern: the Python package plus one C++ extension, ``leankern._C``.

CPU sources (csrc/bindings.cpp, csrc/cpu/*.cpp) are always built; csrc/cuda/*.cu only when torch
is a CUDA build and nvcc is found. Environment switches:
  LEANKERN_NO_EXT=1        build no extension (pure reference backend)
  LEANKERN_CUDA=0 / =1     force the CUDA sources off / on
No native-arch compiler flag: SIMD paths are compiled per function with target attributes and chosen at run
time (csrc/cpu/cpu_features.h), so one binary runs on any x86-64.
"""
import glob
import os

from setuptools import setup

PACKAGE_DIR = {"leankern": "python/leankern", "leankern.triton_kernels": "triton_kernels"}
PACKAGES = ["leankern", "leankern.ref", "leankern.ops", "leankern.testing", "leankern.benchmarks", "leankern.triton_kernels"]


def _extensions():
    if os.environ.get("LEANKERN_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
    sources = ["csrc/bindings.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    force = os.environ.get("LEANKERN_CUDA")
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if force is not None:
        with_cuda = force == "1"
    kwargs = dict(
        name="leankern._C",
        include_dirs=[os.path.abspath("csrc")],
        extra_link_args=["-fopenmp"],
    )
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        ext = CUDAExtension(
            sources=sources,
            define_macros=[("LEANKERN_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--fmad=false", "-std=c++17"]},
            **kwargs,
        )
    else:
        ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx_flags}, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(
    package_dir=PACKAGE_DIR,
    packages=PACKAGES,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
