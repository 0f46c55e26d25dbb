"""Input builders shared by the MX tests (not a test module)."""
import contextlib

import pytest
import torch

import leankern
from leankern.core import extension, extension_error, triton_available, triton_interpreting
from leankern.mx.formats import FORMATS

ALL_FORMATS = list(FORMATS)
HEADLINE_FORMATS = ["mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4"]
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Backends that can run CPU tensors: the reference, the C++ kernels (if built), Triton (interpreter).
CPU_BACKENDS = ["ref", "cpp", "triton"]


def skip_unless_runs_on_cpu(backend: str) -> None:
    """``pytest.skip`` unless ``backend`` can run CPU tensors in this process."""
    if backend == "cpp" and extension() is None:
        pytest.skip(f"backend 'cpp': leankern._C is not available ({extension_error()})")
    if backend == "triton" and not triton_available():
        pytest.skip("backend 'triton': triton is not installed")
    if backend == "triton" and not triton_interpreting():
        pytest.skip("backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 (set by conftest when there is no GPU)")


def skip_unless_cpp() -> None:
    """``pytest.skip`` unless the C++ kernels are registered (torch.ops.leankern.* on CPU runs C++)."""
    skip_unless_runs_on_cpu("cpp")


def forcing(backend: str, op: str):
    """``use_backend(backend)``, or, where that backend has no kernel for ``op`` (the CUDA C++ backend
    has only mx_quantize), the device's default kernel: its quantize is then checked through it."""
    if backend in leankern.mx.CAPABILITIES[op]:
        return leankern.use_backend(backend)
    return contextlib.nullcontext()


def quantize_with(backend, x, fmt, block_size=None, scale_mode="rceil", rand_bits=None, global_scale=None):
    f = FORMATS[fmt]
    bs = block_size or f.default_block_size
    with forcing(backend, "mx_quantize"):
        return torch.ops.leankern.mx_quantize(x, fmt, bs, scale_mode, rand_bits, global_scale, False)


def dequantize_with(backend, q, fmt, block_size=None, out_dtype=torch.float32):
    bs = block_size or FORMATS[fmt].default_block_size
    with forcing(backend, "mx_dequantize"):
        return torch.ops.leankern.mx_dequantize(q[0], q[1], q[2], fmt, bs, out_dtype)


def all_bit_patterns(dtype, shuffle_seed=None):
    """Every 16-bit pattern of ``dtype`` (bf16 or fp16), as a ``[2048, 32]`` tensor."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    if shuffle_seed is not None:
        gen = torch.Generator().manual_seed(shuffle_seed)
        bits = bits[torch.randperm(bits.numel(), generator=gen)]
    return bits.view(dtype).reshape(2048, 32)


def special_values_fp32():
    """Blocks of awkward fp32 values: zeros, subnormals, extremes, ties, NaN/Inf. Shape [8, 64]."""
    sub = torch.tensor([1, 2, 3, 0x7FFFFF, 0x400000, 0x200001], dtype=torch.int32).view(torch.float32)
    rows = [
        torch.zeros(64),
        torch.full((64,), -0.0),
        torch.cat([sub, -sub]).repeat(6)[:64],  # all fp32 subnormals
        torch.tensor([3.4028235e38, -3.4028235e38, 1.1754944e-38, 1e-45] * 16),
        torch.tensor([0.5, 1.5, 2.5, -2.5, 0.25, 0.75, 1.0625, 1.1875, 5.0, 3.5, 6.0, 448.0, 480.0, 127.5,
                      -0.0, 2.0**-10] * 4),
        torch.cat([torch.full((32,), float("nan")), torch.linspace(-3, 3, 32)]),
        torch.cat([torch.linspace(-3, 3, 32), torch.full((32,), float("inf"))]),
        torch.cat([torch.full((16,), float("-inf")), torch.randn(48, generator=torch.Generator().manual_seed(1))]),
    ]
    return torch.stack(rows)
