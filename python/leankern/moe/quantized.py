"""MoE experts with MX / NV block-quantized weights, computed through :func:`leankern.mx.linear`.

>>> q = leankern.moe.quantize_experts(w13, w2, "mxfp4")           # w13 [E, 2I, H], w2 [E, H, I]
>>> out = leankern.moe.quantized_experts(hidden, q, topk_ids, topk_weights)   # [T, H]

Semantics are those of :func:`leankern.moe.experts` (:func:`leankern.moe.ref.experts_ref`) on the dequantized
weights: only kept (token, expert) pairs are computed (id -1 = skipped), the routing weight multiplies the
expert's output after ``w2_bias``, a token whose every slot is -1 gets exactly the shared expert's output (0
without one), and an expert with no kept pair has none of its codes, scales or biases read.

Numerics. Every projection is ``leankern.mx.linear`` on fp32 inputs (``hidden`` is converted to fp32 once,
exactly), so its result is the fp32-accumulated product with the decoded weight and is never rounded to a
half type in between; the activation (:func:`leankern.moe.ref.activation_ref`) runs in fp32 and feeds the down
projection in fp32. The routed outputs are accumulated into an fp32 ``[T, H]`` buffer expert by expert in
ascending expert id (tokens of one expert are distinct rows): deterministic. The result is rounded once to
hidden's dtype. The only rounding beyond the fp32 sums of :func:`leankern.moe.ref.experts_ref` on the
dequantized weights is the optional activation quantization (``act_fmt``): ``mx.linear`` then rounds its input
x (hidden for gate/up, the activation for down) to ``act_fmt`` per ``block_size`` block.

Host synchronisation: the expert ids are validated on the host (like the CPU op) and the per-expert counts of
kept slots (``moe_align``'s ``expert_offsets``) are copied to the host once per call to learn which experts are
touched; fine on CPU, one device->host sync per call on a GPU (this path is not CUDA-graph capturable).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..core import FLOAT_DTYPES, check_choice, check_tensor
from .. import mx as _mx
from ..mx.formats import get_format
from ..mx.tensor import MXTensor
from . import ref
from .ops import MAX_TOPK, _cap, _check_shared, check_ids_values

__all__ = ["QuantizedExperts", "quantize_experts", "quantized_experts"]


class QuantizedExperts:
    """Per-expert block-quantized SwiGLU expert weights.

    Attributes
    ----------
    w13 : list of MXTensor
        ``E`` gate/up weights ``[2I, H]`` quantized along H (gate first, or alternating with ``interleaved``).
    w2 : list of MXTensor
        ``E`` down weights ``[H, I]`` quantized along I.
    w13_bias, w2_bias : Tensor, optional
        fp32 ``[E, 2I]`` and ``[E, H]`` (converted exactly from the given dtype).
    E, H, I, fmt, block_size, interleaved, dtype, device
        Sizes, format name, block size, gate/up ordering, dtype the weights were quantized from, their device.
    """

    def __init__(self, w13, w2, w13_bias, w2_bias, E, H, I, fmt, block_size, interleaved, dtype, device=None):
        self.w13 = list(w13)
        self.w2 = list(w2)
        self.w13_bias = w13_bias
        self.w2_bias = w2_bias
        self.E, self.H, self.I = int(E), int(H), int(I)
        self.fmt = get_format(fmt).name
        self.block_size = int(block_size)
        self.interleaved = bool(interleaved)
        self.dtype = dtype
        # recorded once, so that checks never touch a weight
        self.device = torch.device(device) if device is not None else self.w13[0].device

    @property
    def layout(self) -> str:
        """``"prepacked16"`` when every weight is prepacked, ``"row_major"`` when none is, else ``"mixed"``."""
        kinds = {w.layout for w in self.w13 + self.w2}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def nbytes(self) -> int:
        """Bytes held: every expert's codes + scales (+ NV per-tensor scales) + the fp32 biases."""
        n = sum(w.nbytes for w in self.w13) + sum(w.nbytes for w in self.w2)
        for b in (self.w13_bias, self.w2_bias):
            if b is not None:
                n += b.numel() * b.element_size()
        return n

    def dense_nbytes(self, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes of the same weights (and biases) held densely in ``dtype`` (default bf16), for comparison."""
        el = torch.empty((), dtype=dtype).element_size()
        n = self.E * 3 * self.I * self.H
        if self.w13_bias is not None:
            n += self.E * 2 * self.I
        if self.w2_bias is not None:
            n += self.E * self.H
        return n * el

    def dequantize(self, dtype: torch.dtype = torch.float32):
        """``(w13 [E, 2I, H], w2 [E, H, I])`` decoded to ``dtype`` (exact in fp32): the weights the kernels use."""
        return (torch.stack([w.dequantize(dtype) for w in self.w13]),
                torch.stack([w.dequantize(dtype) for w in self.w2]))

    def to(self, device) -> "QuantizedExperts":
        """A copy on ``device``, layouts kept. A CPU-prepacked weight moved to a GPU runs mx_linear_packed's
        reference there (unpacks per call): for a GPU, call :func:`quantize_experts` on the GPU weights instead
        (prepack is a no-op there)."""
        mv = (lambda b: None if b is None else b.to(device))
        return QuantizedExperts([w.to(device) for w in self.w13], [w.to(device) for w in self.w2],
                                mv(self.w13_bias), mv(self.w2_bias), self.E, self.H, self.I, self.fmt,
                                self.block_size, self.interleaved, self.dtype, device)

    def __repr__(self) -> str:
        dense = self.dense_nbytes()
        return (f"QuantizedExperts(fmt={self.fmt}, block_size={self.block_size}, E={self.E}, H={self.H}, "
                f"I={self.I}, interleaved={self.interleaved}, layout={self.layout}, "
                f"bias={self.w13_bias is not None or self.w2_bias is not None}, nbytes={self.nbytes()} "
                f"({self.nbytes() / dense:.3f} of bf16's {dense}), device={self.device})")


def _quantize_one(w: torch.Tensor, fmt: str, block_size: int, scale_mode: str, prepack: bool) -> MXTensor:
    q = _mx.quantize(w.contiguous(), fmt, block_size=block_size, scale_mode=scale_mode)
    if prepack:
        try:
            q = _mx.prepack(q)  # CPU: the 16-row interleaved layout; elsewhere returned as it is
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # not packable here: mx.linear reads the row-major layout
    return q


def quantize_experts(w13: torch.Tensor, w2: torch.Tensor, fmt: str = "mxfp4", *, block_size: Optional[int] = None,
                     prepack: bool = True, w13_bias: Optional[torch.Tensor] = None,
                     w2_bias: Optional[torch.Tensor] = None, interleaved: bool = False,
                     scale_mode: str = "rceil") -> QuantizedExperts:
    """Quantize MoE expert weights, one :class:`~leankern.mx.MXTensor` per expert and projection.

    Parameters
    ----------
    w13 : ``[E, 2I, H]`` fp32/bf16/fp16 gate and up projections (a transposed view is accepted; copied per expert).
    w2 : ``[E, H, I]`` down projections.
    fmt : any format of :data:`leankern.mx.FORMATS` (or an alias such as ``"mxfp8"``).
    block_size : default: the format's (32 MX, 16 NV). ``H`` and ``I`` must be multiples of it (``ValueError``).
    prepack : store each weight in :func:`leankern.mx.prepack`'s layout (faster CPU kernels); a weight that
        cannot be prepacked (not on CPU) stays row-major.
    w13_bias, w2_bias : ``[E, 2I]``, ``[E, H]``; stored in fp32 (exact).
    interleaved : gate and up rows alternate along 2I (gpt-oss), else gate is the first half.
    scale_mode : MX scale rule, passed to :func:`leankern.mx.quantize`.

    NV formats get one per-tensor scale per expert and projection (dynamic, as ModelOpt checkpoints store one
    ``weight_scale_2`` per expert weight).

    Shape: w13 ``[E, 2I, H]``, w2 ``[E, H, I]`` -> E gate/up ``[2I, H]`` and E down ``[H, I]`` MXTensors.
    """
    f = get_format(fmt)
    bs = f.default_block_size if block_size is None else int(block_size)
    check_tensor("w13", w13, FLOAT_DTYPES)
    if w13.dim() != 3 or w13.shape[1] % 2 or w13.shape[1] == 0 or w13.shape[0] == 0:
        raise ValueError(f"w13: expected shape [E, 2I, H] (gate and up projections), got {tuple(w13.shape)}")
    E, I, H = w13.shape[0], w13.shape[1] // 2, w13.shape[2]
    check_tensor("w2", w2, FLOAT_DTYPES, device=w13.device, device_of="w13")
    if tuple(w2.shape) != (E, H, I):
        raise ValueError(f"w2: expected shape [E={E}, H={H}, I={I}], got {tuple(w2.shape)}")
    for name, size in (("H", H), ("I", I)):
        if size % bs:
            raise ValueError(f"{name}: expected a multiple of block_size={bs} (blocks run along it), got {size} "
                             f"(pad the weights with zeros to a multiple of {bs}, or pick a smaller block_size)")
    biases = []
    for name, b, want in (("w13_bias", w13_bias, (E, 2 * I)), ("w2_bias", w2_bias, (E, H))):
        if b is not None:
            check_tensor(name, b, FLOAT_DTYPES, device=w13.device, device_of="w13")
            if tuple(b.shape) != want:
                raise ValueError(f"{name}: expected shape [{want[0]}, {want[1]}], got {tuple(b.shape)}")
            b = b.float().contiguous()
        biases.append(b)
    q13 = [_quantize_one(w13[e], f.name, bs, scale_mode, prepack) for e in range(E)]
    q2 = [_quantize_one(w2[e], f.name, bs, scale_mode, prepack) for e in range(E)]
    return QuantizedExperts(q13, q2, biases[0], biases[1], E, H, I, f.name, bs, interleaved, w13.dtype, w13.device)


_EAGER_ONLY = ("leankern.moe.quantized_experts reads which experts are touched on the host (one sync per call) to "
               "skip the others: it runs eagerly; torch.compile graph-breaks around it (with fullgraph=True this is an "
               "error: call it outside the compiled region)")


def __getattr__(name: str):
    """``quantized_experts`` is built on first access: ``torch.compiler.disable`` imports torch._dynamo (~2.5 s), which
    ``import leankern`` should not pay (PEP 562 module attribute)."""
    if name == "quantized_experts":
        _quantized_experts.__name__ = _quantized_experts.__qualname__ = name  # what wraps copies to the public one
        fn = torch.compiler.disable(_quantized_experts, reason=_EAGER_ONLY)
        globals()[name] = fn
        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _quantized_experts(hidden: torch.Tensor, qexperts: QuantizedExperts, topk_ids: torch.Tensor,
                      topk_weights: torch.Tensor, *, activation: str = "silu", swiglu_alpha: float = 1.702,
                      swiglu_limit: float = 7.0, shared_w1=None, shared_w3=None, shared_w2=None, shared_gate=None,
                      act_fmt: Optional[str] = None) -> torch.Tensor:
    """Routed SwiGLU experts with block-quantized weights over kept (token, expert) pairs, plus a shared expert.

    Parameters
    ----------
    hidden : ``[T, H]`` fp32/bf16/fp16.
    qexperts : :class:`QuantizedExperts` (from :func:`quantize_experts`); its ``interleaved`` flag and biases apply.
    topk_ids, topk_weights : ``[T, k]`` int32 (int64 accepted; -1 = skipped) and fp32 (other float dtypes are
        cast): the routing weight multiplies the expert's output (after ``w2_bias``).
    activation, swiglu_alpha, swiglu_limit : as :func:`leankern.moe.experts` (``"silu"`` or ``"swiglu_oai"``).
    shared_w1, shared_w3, shared_w2, shared_gate : an unquantized shared SwiGLU expert, as
        :func:`leankern.moe.experts` (computed in fp32 with torch matmuls).
    act_fmt : optional activation format for dual quantization: passed to :func:`leankern.mx.linear`, which
        quantizes its input (hidden for gate/up, the activation for down) per ``block_size`` block to it.

    The ids are validated (range ``[-1, E)``, no expert twice in a row) before any weight is read, with the
    messages of :func:`leankern.moe.experts`. One host sync per call learns the touched experts (module doc), so
    the function is excluded from ``torch.compile`` (``torch.compiler.disable``: a graph break, an error under
    ``fullgraph=True``); the bf16 / fp16 / fp32 :func:`leankern.moe.experts` op compiles with static shapes.

    Returns
    -------
    ``[T, H]`` in hidden's dtype; fp32 accumulation. An expert with no kept slot is never read.
    """
    if not isinstance(qexperts, QuantizedExperts):
        raise TypeError(f"qexperts: expected a QuantizedExperts (see quantize_experts), got {type(qexperts).__name__}")
    E, H, I = qexperts.E, qexperts.H, qexperts.I
    dev = qexperts.device
    check_tensor("hidden", hidden, FLOAT_DTYPES)
    if hidden.dim() != 2 or hidden.shape[1] != H:
        raise ValueError(f"hidden: expected shape [T, H={H}], got {tuple(hidden.shape)}")
    if hidden.device != dev:
        raise ValueError(f"hidden: expected a tensor on {dev} (the device of qexperts), got {hidden.device}")
    T = hidden.shape[0]
    w = topk_weights.float() if isinstance(topk_weights, torch.Tensor) and topk_weights.dtype in FLOAT_DTYPES \
        and topk_weights.dtype != torch.float32 else topk_weights
    # int64 ids are checked as they are (below) and narrowed to int32 only then: an id >= 2^31 must not wrap
    check_tensor("topk_ids", topk_ids, (torch.int32, torch.int64), device=dev, device_of="hidden")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != T or not 1 <= topk_ids.shape[1] <= MAX_TOPK:
        raise ValueError(f"topk_ids: expected shape [T={T}, k] with 1 <= k <= {MAX_TOPK}, got "
                         f"{tuple(topk_ids.shape)}")
    check_tensor("topk_weights", w, (torch.float32,), device=dev, device_of="hidden")
    if w.shape != topk_ids.shape:
        raise ValueError(f"topk_weights: expected shape {list(topk_ids.shape)} (that of topk_ids), got "
                         f"{list(w.shape)}")
    check_choice("activation", activation, ref.ACTIVATIONS)
    if not (math.isfinite(swiglu_alpha) and swiglu_limit > 0 and math.isfinite(swiglu_limit)):
        raise ValueError(f"swiglu_alpha, swiglu_limit: expected a finite alpha and a finite limit > 0, got "
                         f"{swiglu_alpha}, {swiglu_limit}")
    _check_shared(_cap("moe_experts", "ref"), dev, H, shared_w1, shared_w3, shared_w2, shared_gate)
    if act_fmt is not None:
        try:
            get_format(act_fmt)
        except ValueError as exc:
            raise ValueError(f"act_{exc}") from None
    check_ids_values(topk_ids, E)  # before any weight is read; on the ids as given (int64: before narrowing)
    ids = topk_ids.to(torch.int32)  # int32: the tensor itself

    k = ids.shape[1]
    x = hidden.float()  # exact; mx.linear on fp32 x returns its fp32 sums unrounded
    out = torch.zeros(T, H, dtype=torch.float32, device=dev)
    if T:
        # kept slots grouped by expert, ascending slot (= token) order within an expert
        sorted_slots, offsets, _, _ = torch.ops.leankern.moe_align(ids, E, 1, None)
        off = offsets.tolist()  # the one host sync: which experts are touched
        wflat = w.reshape(-1)
        for e in range(E):
            lo, hi = off[e], off[e + 1]
            if lo == hi:
                continue  # untouched: none of its codes, scales or biases are read
            slots = sorted_slots[lo:hi].long()
            tok = slots // k
            xe = x.index_select(0, tok)
            b13 = None if qexperts.w13_bias is None else qexperts.w13_bias[e]
            b2 = None if qexperts.w2_bias is None else qexperts.w2_bias[e]
            gu = _mx.linear(xe, qexperts.w13[e], b13, act_fmt=act_fmt)  # [n, 2I] fp32
            a = ref.activation_ref(gu, activation, qexperts.interleaved, swiglu_alpha, swiglu_limit)
            y = _mx.linear(a, qexperts.w2[e], b2, act_fmt=act_fmt)  # [n, H] fp32
            out.index_add_(0, tok, y * wflat.index_select(0, slots)[:, None])
    if shared_w1 is not None:
        s = (torch.nn.functional.silu(x @ shared_w1.float().T) * (x @ shared_w3.float().T)) @ shared_w2.float().T
        if shared_gate is not None:
            s = s * torch.sigmoid(x @ shared_gate.float().reshape(H, 1))
        out += s
    return out.to(hidden.dtype)
