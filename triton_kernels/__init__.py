"""Triton GPU kernels for leankern, shipped as ``leankern.triton_kernels``.

Never import this directory as a top-level ``triton_kernels`` package: that name belongs to the
Triton project's own kernel library. The kernels run on CUDA tensors, and on CPU tensors under
``TRITON_INTERPRET=1`` (set it before this package is imported).

Modules: :mod:`.mx` (MX/NV quantize + dequantize), :mod:`.mx_hadamard` (fast Walsh-Hadamard),
:mod:`.specdec` (speculative verification; imported on first use by ``leankern.specdec.ops``),
:mod:`.vocab` (vocabulary-subset LM head, top-k, scatter, logit statistics; on first use by ``leankern.vocab.ops``),
:mod:`.aot` (ahead-of-time compilation for sm_90 / sm_100 and a resource report).
"""
from .mx_hadamard import hadamard_transform_triton
from .mx import mx_dequantize_triton, mx_quantize_triton

__all__ = ["mx_quantize_triton", "mx_dequantize_triton", "hadamard_transform_triton"]
