"""Vocabulary-subset ops: schemas, fakes, argument checks, capability table, kernel registration.

Torch ops (opcheck-clean, ``torch.compile(fullgraph=True)``-traceable):

* ``vocab_gather_lm_head(hidden [B, H], weight [V, H], vocab_ids [K] | [B, K] int32, bias [V]?, soft_cap?,
  scale, out_dtype?, log_softmax) -> logits [B, K]``
* ``vocab_gather_lm_head_topk(hidden, weight, vocab_ids, bias?, soft_cap?, scale, k) -> (values fp32 [B, k],
  global ids int64 [B, k])`` (argmax: k = 1), no ``[B, K]`` logits written
* ``vocab_scatter_to_full(logits [B, K], vocab_ids, V, fill) -> [B, V]``
* ``vocab_logit_stats(logits [B, V], temperature) -> (max, argmax, logsumexp, entropy, self_certainty)``, each ``[B]``

Kernels: C++ on ``CPU`` (csrc/vocab/), Triton on ``CUDA`` (triton_kernels/vocab.py), the reference
(:mod:`leankern.vocab.ref`) where none exists. Shape/dtype checks here (fakes run them too); the id
range check runs before any kernel reads a row: an exception on CPU, a device-side assert on GPU.
"""
from __future__ import annotations

import math
import numbers

import torch

from ..core import (FLOAT_DTYPES, Capability, OpSpec, backend_for, check_ids_in_range, check_tensor,
                    check_value_on_device, register_op)
from ..mx.tensor import MXTensor
from . import ref

__all__ = ["CAPABILITIES", "GATHER", "TOPK", "SCATTER", "STATS", "MAX_TOPK", "check_ids_values", "check_k_type"]

MAX_TOPK = 1024  # fused top-k keeps k candidates per worker in registers / a small heap
_ANY = ("cpu", "cuda", "meta")
_GATHER_NOTE = "weight bf16/fp16/fp32 (rows read in place by id), hidden any float dtype, fp32 sums"
CAPABILITIES = {
    "vocab_gather_lm_head": {
        "ref": Capability(_ANY, FLOAT_DTYPES, {}, "gathered copy + fp32 matmul; the definition"),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, {}, _GATHER_NOTE + "; AVX-512 / AVX2 / scalar, both cores over K"),
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, {}, _GATHER_NOTE + "; tl.dot over gathered row tiles"),
    },
    "vocab_gather_lm_head_topk": {
        "ref": Capability(_ANY, FLOAT_DTYPES, {}, "logits then a stable sort"),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, {},
                          f"k <= {MAX_TOPK}; k > 1, B * K <= 4M: logits in a <= 16 MB scratch, ranked behind a "
                          "group-max bar; else per-thread candidates streamed and merged"),
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, {}, "per-tile top-k partials, then a merge"),
    },
    "vocab_scatter_to_full": {
        "ref": Capability(_ANY, FLOAT_DTYPES, {}, "scatter_reduce for last-position-wins"),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, {}, "fill + scatter, rows over both cores"),
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, {}, "fill + ordered scatter per row"),
    },
    "vocab_logit_stats": {
        "ref": Capability(_ANY, FLOAT_DTYPES, {}, "fp64 reductions; the definition"),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, {}, "one pass per row, online max rescaling, vector exp"),
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, {}, "row-chunk partials merged per row"),
    },
}


def _cap(op: str, backend: str) -> Capability:
    return CAPABILITIES[op].get(backend) or CAPABILITIES[op]["ref"]


def _check_head(op, backend, hidden, weight, vocab_ids, bias, soft_cap, scale) -> tuple:
    """Shapes, dtypes, devices and scalars of the gather ops; returns (B, K, V).

    ``weight`` may also be an ``MXTensor`` (the public functions' quantized-head path runs these checks through
    ``GATHER.check`` / ``TOPK.check``): its codes replace the dtype and stride checks."""
    cap = _cap(op, backend)
    check_tensor("hidden", hidden, cap.dtypes)
    if hidden.dim() != 2:
        raise ValueError(f"hidden: expected shape [B, H], got {tuple(hidden.shape)}")
    B, H = hidden.shape
    dev = hidden.device
    mx = isinstance(weight, MXTensor)  # the front-end's quantized head (never an op argument): same checks otherwise
    if mx:
        if weight.codes.device != dev:
            raise ValueError(f"weight: expected an MXTensor on {dev} (the device of hidden), got {weight.codes.device}")
    else:
        check_tensor("weight", weight, cap.dtypes, device=dev, device_of="hidden")
    if len(weight.shape) != 2 or weight.shape[1] != H:
        raise ValueError(f"weight: expected shape [V, H={H}] (H from hidden), got {tuple(weight.shape)}")
    if weight.shape[0] < 1:
        raise ValueError("weight: expected at least one vocabulary row, got V = 0")
    if not mx and H > 1 and weight.stride(1) != 1:
        # Why not .contiguous(): that would silently copy the whole [V, H] head on every call
        raise ValueError(f"weight: expected rows contiguous in memory (stride(1) == 1), got strides {weight.stride()}")
    V = weight.shape[0]
    check_tensor("vocab_ids", vocab_ids, (torch.int32,), device=dev, device_of="hidden")
    if vocab_ids.dim() == 1:
        K = vocab_ids.shape[0]
    elif vocab_ids.dim() == 2 and vocab_ids.shape[0] == B:
        K = vocab_ids.shape[1]
    else:
        raise ValueError(f"vocab_ids: expected shape [K] or [B={B}, K], got {tuple(vocab_ids.shape)}")
    if bias is not None:
        check_tensor("bias", bias, cap.dtypes, device=dev, device_of="hidden")
        if tuple(bias.shape) != (V,):
            raise ValueError(f"bias: expected shape [V={V}], got {tuple(bias.shape)}")
    if soft_cap is not None and not (soft_cap > 0 and math.isfinite(soft_cap)):
        raise ValueError(f"soft_cap: expected a finite value > 0 (or None for no cap), got {soft_cap}")
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite value, got {scale}")
    return B, K, V


def check_ids_values(vocab_ids: torch.Tensor, V: int) -> None:
    """Every id in [-1, V) (-1 = padding): before any row is read."""
    check_ids_in_range(vocab_ids, -1, V, f"vocab_ids: expected ids in [-1, V={V}) (-1 = padding)")


# --------------------------------------------------------------------------------- gather_lm_head
_GATHER_SCHEMA = ("(Tensor hidden, Tensor weight, Tensor vocab_ids, Tensor? bias, float? soft_cap, float scale, "
                  "ScalarType? out_dtype, bool log_softmax) -> Tensor")


def _check_gather(backend, hidden, weight, vocab_ids, bias, soft_cap, scale, out_dtype, log_softmax):
    out = _check_head("vocab_gather_lm_head", backend, hidden, weight, vocab_ids, bias, soft_cap, scale)
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype: expected one of {[str(d) for d in FLOAT_DTYPES]} or None, got {out_dtype}")
    return out


def _gather_ref(hidden, weight, vocab_ids, bias, soft_cap, scale, out_dtype, log_softmax):
    check_ids_values(vocab_ids, weight.shape[0])
    return ref.gather_lm_head_ref(hidden, weight, vocab_ids, bias, soft_cap, scale, out_dtype, log_softmax)


def _gather_triton(hidden, weight, vocab_ids, bias, soft_cap, scale, out_dtype, log_softmax):
    from ..triton_kernels.vocab import gather_lm_head_triton

    check_ids_values(vocab_ids, weight.shape[0])
    return gather_lm_head_triton(hidden, weight, vocab_ids, bias, soft_cap, scale, out_dtype, log_softmax)


def _gather_fake(hidden, weight, vocab_ids, bias, soft_cap, scale, out_dtype, log_softmax):
    B, K, _ = _check_gather(backend_for("vocab_gather_lm_head", hidden.device), hidden, weight, vocab_ids, bias,
                            soft_cap, scale, out_dtype, log_softmax)
    return hidden.new_empty((B, K), dtype=torch.float32 if out_dtype is None else out_dtype)


# ---------------------------------------------------------------------------- gather_lm_head_topk
_TOPK_SCHEMA = ("(Tensor hidden, Tensor weight, Tensor vocab_ids, Tensor? bias, float? soft_cap, float scale, int k) "
                "-> (Tensor, Tensor)")


def check_k_type(k) -> None:
    """``k`` is an int (a numpy integer too); a bool, a float or a tensor is refused, not converted by ``int(k)``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k: expected an int, got {type(k).__name__} {k!r}")


def _check_topk(backend, hidden, weight, vocab_ids, bias, soft_cap, scale, k):
    B, K, V = _check_head("vocab_gather_lm_head_topk", backend, hidden, weight, vocab_ids, bias, soft_cap, scale)
    check_k_type(k)
    if not 1 <= k <= min(K, MAX_TOPK):
        raise ValueError(f"k: expected 1 <= k <= min(K={K}, {MAX_TOPK}), got {k}")
    return B, K, V


def _topk_ref(hidden, weight, vocab_ids, bias, soft_cap, scale, k):
    check_ids_values(vocab_ids, weight.shape[0])
    return ref.gather_lm_head_topk_ref(hidden, weight, vocab_ids, bias, soft_cap, scale, k)


def _topk_triton(hidden, weight, vocab_ids, bias, soft_cap, scale, k):
    from ..triton_kernels.vocab import gather_lm_head_topk_triton

    check_ids_values(vocab_ids, weight.shape[0])
    return gather_lm_head_topk_triton(hidden, weight, vocab_ids, bias, soft_cap, scale, k)


def _topk_fake(hidden, weight, vocab_ids, bias, soft_cap, scale, k):
    B, _, _ = _check_topk(backend_for("vocab_gather_lm_head_topk", hidden.device), hidden, weight, vocab_ids, bias,
                          soft_cap, scale, k)
    return hidden.new_empty((B, k), dtype=torch.float32), hidden.new_empty((B, k), dtype=torch.int64)


# -------------------------------------------------------------------------------- scatter_to_full
_SCATTER_SCHEMA = "(Tensor logits, Tensor vocab_ids, int V, float fill) -> Tensor"


def _check_scatter(backend, logits, vocab_ids, V, fill):
    cap = _cap("vocab_scatter_to_full", backend)
    check_tensor("logits", logits, cap.dtypes)
    if logits.dim() != 2:
        raise ValueError(f"logits: expected shape [B, K], got {tuple(logits.shape)}")
    B, K = logits.shape
    check_tensor("vocab_ids", vocab_ids, (torch.int32,), device=logits.device, device_of="logits")
    if tuple(vocab_ids.shape) not in ((K,), (B, K)):
        raise ValueError(f"vocab_ids: expected shape [K={K}] or [B={B}, K={K}], got {tuple(vocab_ids.shape)}")
    if not 1 <= V < 2**31:
        raise ValueError(f"V: expected a vocabulary size in [1, 2^31), got {V}")
    return B, K


def _scatter_ref(logits, vocab_ids, V, fill):
    check_ids_values(vocab_ids, V)
    return ref.scatter_to_full_ref(logits, vocab_ids, V, fill)


def _scatter_triton(logits, vocab_ids, V, fill):
    from ..triton_kernels.vocab import scatter_to_full_triton

    check_ids_values(vocab_ids, V)
    return scatter_to_full_triton(logits, vocab_ids, V, fill)


def _scatter_fake(logits, vocab_ids, V, fill):
    B, _ = _check_scatter(backend_for("vocab_scatter_to_full", logits.device), logits, vocab_ids, V, fill)
    return logits.new_empty((B, V))


# ------------------------------------------------------------------------------------ logit_stats
_STATS_SCHEMA = "(Tensor logits, float temperature) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"


def _check_stats(backend, logits, temperature):
    cap = _cap("vocab_logit_stats", backend)
    check_tensor("logits", logits, cap.dtypes)
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits: expected shape [B, V] with V >= 1, got {tuple(logits.shape)}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature: expected a finite value > 0, got {temperature}")
    return logits.shape[0]


def _stats_triton(logits, temperature):
    from ..triton_kernels.vocab import logit_stats_triton

    return logit_stats_triton(logits, temperature)


def _stats_fake(logits, temperature):
    B = _check_stats(backend_for("vocab_logit_stats", logits.device), logits, temperature)
    f = logits.new_empty((B,), dtype=torch.float32)
    return f, logits.new_empty((B,), dtype=torch.int64), f.clone(), f.clone(), f.clone()


GATHER = register_op(OpSpec("vocab_gather_lm_head", _GATHER_SCHEMA, _gather_ref, _gather_fake, _check_gather,
                            CAPABILITIES["vocab_gather_lm_head"], triton=_gather_triton))
TOPK = register_op(OpSpec("vocab_gather_lm_head_topk", _TOPK_SCHEMA, _topk_ref, _topk_fake, _check_topk,
                          CAPABILITIES["vocab_gather_lm_head_topk"], triton=_topk_triton))
SCATTER = register_op(OpSpec("vocab_scatter_to_full", _SCATTER_SCHEMA, _scatter_ref, _scatter_fake, _check_scatter,
                             CAPABILITIES["vocab_scatter_to_full"], triton=_scatter_triton))
STATS = register_op(OpSpec("vocab_logit_stats", _STATS_SCHEMA, ref.logit_stats_ref, _stats_fake, _check_stats,
                           CAPABILITIES["vocab_logit_stats"], triton=_stats_triton))
