"""SEFPLinear: an ``nn.Linear`` stored once in SEFP bit planes, served at any mantissa width.

One quantization at ``m_max`` (:func:`leankern.sefp.quantize`) keeps every narrower width as a
truncation of the same planes (OTARo, arXiv 2511.13147; docs/sefp.md), so :func:`set_precision`
changes a Python int per layer and never touches the stored weight.

The weight lives in registered buffers (``planes``, ``exponents``, ``meta``: the JSON metadata of
:meth:`leankern.sefp.SEFPTensor.state_dict`), so ``state_dict()`` is plain tensors (safetensors
friendly) and its ``prefix + planes/exponents/meta`` entries load with
:meth:`leankern.sefp.SEFPTensor.from_state_dict` too. ``width`` (int32 scalar buffer) records the
current width so a checkpoint restores it.
"""
from __future__ import annotations

import fnmatch
import json
from typing import Callable, Mapping

import torch
from torch import nn

from .. import sefp
from ..core import extension
from ..sefp.packed import PACKED_MAX_M
from ..sefp.ref import BLOCK_SIZES, MAX_M, WORD, padded_k
from ..sefp.tensor import SEFPTensor
from .quant_linear import bias_for, meta_mismatch

__all__ = ["SEFPLinear", "set_precision"]


def _check_width(name: str, m, m_max: int) -> int:
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= m_max:
        raise ValueError(f"{name}: expected an int in [1, {m_max}] (the stored m_max), got {m!r}")
    return m


def _check_build(in_features, out_features, m_max, block_size) -> None:
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if isinstance(m_max, bool) or not isinstance(m_max, int) or not 1 <= m_max <= MAX_M:
        raise ValueError(f"m_max: expected an int in [1, {MAX_M}], got {m_max!r}")
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block_size: expected one of {BLOCK_SIZES}, got {block_size!r}")


class SEFPLinear(nn.Module):
    """``y = x @ W_m^T + b`` with ``W`` stored in SEFP bit planes and read at width ``m``.

    Parameters
    ----------
    in_features, out_features : int
        As ``nn.Linear`` (any ``in_features``: the last block is zero padded).
    bias : bool
        Whether the module has a bias (kept unquantized, in ``dtype``).
    m_max : int
        Mantissa planes stored (1..16); every width ``m <= m_max`` is served from them.
    block_size : int
        Elements sharing one exponent along ``in_features``: 32, 64, 128 or 256.
    m : int, optional
        Initial width (default ``m_max``); change it with :attr:`m` or :func:`set_precision`.
    dtype : torch.dtype
        The dtype the weight was quantized from (recorded in the metadata) and of the bias.
    device : optional
        Where the buffers live.

    The constructor makes zero buffers to be filled by ``load_state_dict``; build from a trained
    layer with :meth:`from_linear` (or :meth:`from_sefp_tensor`, :meth:`from_state_dict`).

    Shape:
        x ``[..., in_features]`` (fp32 / bf16 / fp16) -> ``[..., out_features]`` in x's dtype;
        planes ``[1 + m_max, out_features, Kp / 32]`` int32, exponents ``[out_features, Kp / block_size]``
        int8 (``Kp`` = ``in_features`` rounded up to ``block_size``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, m_max: int = 8,
                 block_size: int = 32, m: int | None = None, dtype: torch.dtype = torch.bfloat16, device=None):
        super().__init__()
        _check_build(in_features, out_features, m_max, block_size)
        kp = padded_k(in_features, block_size)
        planes = torch.zeros((1 + m_max, out_features, kp // WORD), dtype=torch.int32, device=device)
        exponents = torch.full((out_features, kp // block_size), -128, dtype=torch.int8, device=device)
        w = SEFPTensor(planes, exponents, (out_features, in_features), dtype, block_size)
        b = torch.zeros(out_features, dtype=dtype, device=device) if bias else None
        self._set_weight(w, b, m)

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_linear(cls, linear: nn.Linear, m_max: int = 8, block_size: int = 32, m: int | None = None
                    ) -> "SEFPLinear":
        """Quantize ``linear.weight`` once at ``m_max`` (the bias is copied unquantized); serve at ``m``."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        _check_build(linear.in_features, linear.out_features, m_max, block_size)
        w = sefp.quantize(linear.weight.detach(), m_max=m_max, block_size=block_size)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls.from_sefp_tensor(w, bias, m)

    @classmethod
    def from_sefp_tensor(cls, weight: SEFPTensor, bias: torch.Tensor | None = None, m: int | None = None
                         ) -> "SEFPLinear":
        """Wrap an already quantized ``[out_features, in_features]`` SEFPTensor (its buffers, no copy)."""
        if not isinstance(weight, SEFPTensor):
            raise TypeError(f"weight: expected an SEFPTensor (leankern.sefp.quantize), got {type(weight).__name__}")
        n = weight.shape[0]
        if bias is not None and tuple(bias.shape) != (n,):
            raise ValueError(f"bias: expected shape ({n},), got {tuple(bias.shape)}")
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod._set_weight(weight, bias, m)
        return mod

    @classmethod
    def from_state_dict(cls, state: dict, prefix: str = "") -> "SEFPLinear":
        """Rebuild from ``state_dict`` entries (``prefix + planes/exponents/meta[/bias][/width]``)."""
        w = SEFPTensor.from_state_dict(state, prefix)
        width = state.get(prefix + "width")
        return cls.from_sefp_tensor(w, state.get(prefix + "bias"), None if width is None else int(width))

    def _set_weight(self, w: SEFPTensor, bias: torch.Tensor | None, m: int | None) -> None:
        self.out_features, self.in_features = w.shape
        self.block_size, self.weight_dtype = w.block_size, w.dtype
        self.register_buffer("planes", w.planes)
        self.register_buffer("exponents", w.exponents)
        self.register_buffer("meta", self._meta_tensor(w))
        self.register_buffer("bias", bias)
        self.m = w.m if m is None else m

    @staticmethod
    def _meta_tensor(w: SEFPTensor) -> torch.Tensor:
        return torch.tensor(list(SEFPLinear._meta_bytes_of(w)), dtype=torch.uint8, device=w.device)

    @staticmethod
    def _meta_bytes_of(w: SEFPTensor) -> bytes:
        return json.dumps(w._meta()).encode()  # same bytes as SEFPTensor.state_dict()'s "meta"

    def _meta_bytes(self) -> bytes:
        """The JSON ``meta`` record of this module's configuration (its attributes, not its ``meta`` buffer)."""
        return self._meta_bytes_of(self.weight)

    # ------------------------------------------------------------------------------- width
    @property
    def m_max(self) -> int:
        """Mantissa planes stored: the widest width this layer serves."""
        return self.planes.shape[0] - 1

    @property
    def m(self) -> int:
        """Current width (mantissa bits read per weight, leading bit included)."""
        return self._m

    @m.setter
    def m(self, value: int) -> None:
        self._m = _check_width("m", value, self.m_max)
        # recorded for checkpoints; a fresh tensor (no in-place write: safe under inference_mode)
        self.register_buffer("width", torch.tensor(value, dtype=torch.int32, device=self.planes.device))

    # ------------------------------------------------------------------------- packed copy
    @property
    def packed(self) -> "sefp.SEFPPacked | None":
        """The single-width packed copy built by :meth:`pack` (None if none); forward serves from it while
        ``m`` equals its width (on CPU where the packed op is the faster one for x, see :meth:`serves_packed`), and
        from the planes otherwise."""
        return getattr(self, "_packed", None)

    def serves_packed(self, x: torch.Tensor) -> bool:
        """Whether forward(x) reads the packed copy. On CPU: bf16 x where ``sefp_packed_linear`` has its bf16
        kernels (AVX512-BF16 + VBMI, ``leankern._C.sefp_packed_bf16_kernel()``), and 2 rows of x or more of any dtype
        where it has its AVX2 kernels (``leankern._C.sefp_packed_avx2_kernel()``; both asked once when the copy is
        built): there the packed copy ran 1.07-1.44x the planes' speed at 2-4 rows, 0.91-1.21x at 16, 1.03-1.27x at
        33-64 (both GEMVs), 0.95-1.17x at 128 and 512 (both as decoded panels and torch's GEMM), but 0.76-1.10x at one
        row (AVX2 Zen 3, docs/results/sefp.md), so single rows read the planes."""
        p = self.packed
        if p is None or p.m != self._m:
            return False
        if x.device.type != "cpu" or (x.dtype == torch.bfloat16 and getattr(self, "_cpu_packed_bf16", False)):
            return True
        rows = x.numel() // max(1, x.shape[-1])
        return getattr(self, "_cpu_packed_avx2", False) and rows >= 2

    def pack(self, m: int | None = None) -> "SEFPLinear":
        """Build the single-width packed copy at width ``m`` (default: the current one; 1..7) and serve from it
        while ``self.m == m``: ``1 + m`` bits per weight in one stream per row
        (:meth:`leankern.sefp.SEFPTensor.packed`), held beside the planes (``1 + m`` bits per weight more memory; not in
        ``state_dict``: a freshly built module needs ``pack`` again after loading; ``load_state_dict`` into a module
        holding a copy rebuilds it from the loaded planes). Returns self."""
        m = self._m if m is None else _check_width("m", m, self.m_max)
        self._packed = self.weight.packed(m)
        ext = extension()
        self._cpu_packed_bf16 = bool(ext is not None and ext.sefp_packed_bf16_kernel())
        self._cpu_packed_avx2 = bool(ext is not None and ext.sefp_packed_avx2_kernel())
        return self

    def unpack(self) -> "SEFPLinear":
        """Drop the packed copy (forward reads the planes again). Returns self."""
        self._packed = None
        return self

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.packed is not None:  # .to(device) / .cuda(): the copy follows the planes (it shares their exponents)
            p = self._packed
            self._packed = sefp.SEFPPacked(fn(p.codes), self.exponents, p.m, p.shape, p.dtype, p.block_size)
        return out

    # ------------------------------------------------------------------------------- use
    @property
    def weight(self) -> SEFPTensor:
        """The stored weight (all ``m_max`` planes) as an :class:`SEFPTensor` sharing this module's buffers."""
        return SEFPTensor(self.planes, self.exponents, (self.out_features, self.in_features), self.weight_dtype,
                          self.block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.serves_packed(x):
            return sefp.linear(x, self.packed, bias=bias_for(self.bias, x))
        return self.linear_with(x, self.weight, self.bias)

    def linear_with(self, x: torch.Tensor, weight: SEFPTensor, bias: torch.Tensor | None) -> torch.Tensor:
        """This layer's product at its current width (reads planes 0 .. m only) with another weight of its kind, e.g.
        some of its rows (``weight.select_rows``: leankern.vocab.tailor's head)."""
        return sefp.linear(x, weight, self._m, bias_for(bias, x))

    def nbytes(self, m: int | None = None) -> int:
        """Bytes read per forward at width ``m`` (default: the current one): sign + ``m`` mantissa planes,
        exponents, bias. ``nbytes(self.m_max)`` is what the layer stores."""
        m = self._m if m is None else _check_width("m", m, self.m_max)
        b = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.weight.nbytes(m) + b

    def extra_repr(self) -> str:
        bits = self.weight.bits_per_weight(self._m)
        packed = "" if self.packed is None else f", packed copy at m={self.packed.m}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"m={self._m}, m_max={self.m_max}, block_size={self.block_size}, {bits:.2f} bits/weight at m{packed}")

    # ------------------------------------------------------------------------ checkpoints
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        err = meta_mismatch(self, state_dict, prefix, " (or use SEFPLinear.from_state_dict)")
        if err is not None:
            error_msgs.append(err)
            return
        n_missing, n_errors = len(missing_keys), len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if prefix + "width" in missing_keys[n_missing:]:  # a bare SEFPTensor.state_dict(): keep the current width
            missing_keys.remove(prefix + "width")
        try:
            self._m = _check_width(f"{prefix}width", int(self.width), self.m_max)
        except ValueError as exc:
            error_msgs.append(str(exc))
        self._repack(loaded=len(error_msgs) == n_errors)

    def _repack(self, loaded: bool) -> None:
        """After a load: a packed copy holds the old planes' codes (it shares only the exponents), so it is rebuilt
        from the loaded planes at its width (the ``pack`` choice persists), or dropped when the load failed."""
        p = self.packed
        if p is None:
            return
        self._packed = None
        if loaded:
            self.pack(p.m)


# ------------------------------------------------------------------------------- set_precision
Widths = int | Mapping[str, int] | Callable[[str, nn.Module], "int | None"]


def _layer_widths(layers: dict[str, SEFPLinear], m: Widths) -> dict[str, int]:
    """``{name: width}`` for the layers ``m`` selects (validated by the caller)."""
    if callable(m) and not isinstance(m, (int, Mapping)):
        plan = {name: m(name, mod) for name, mod in layers.items()}
        return {name: w for name, w in plan.items() if w is not None}
    if isinstance(m, Mapping):
        plan, used = {}, set()
        for name in layers:  # an exact name beats a pattern; among patterns the first listed wins
            key = name if name in m else next((p for p in m if fnmatch.fnmatchcase(name, p)
                                              or fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], p)), None)
            if key is not None:
                plan[name] = m[key]
                used.add(key)
        unused = [k for k in m if k not in used]
        if unused:
            some = ", ".join(list(layers)[:4]) + (", ..." if len(layers) > 4 else "")
            raise ValueError(f"m: expected every key to name or match an SEFPLinear layer, got {unused} "
                             f"(layers: {some})")
        return plan
    return {name: m for name in layers}


def set_precision(model: nn.Module, m: Widths, *, packed: bool = False) -> dict[str, int]:
    """Set the width served by every :class:`SEFPLinear` in ``model`` (the stored planes are untouched).

    Parameters
    ----------
    model : nn.Module
        A model quantized with ``quantize_model(model, "sefp")`` (or any module holding SEFPLinear).
    m : int, dict or callable
        An int for every layer; a dict ``{layer name or fnmatch pattern: width}`` (patterns match the
        dotted name or its last part, like ``quantize_model``'s ``skip``; an exact name beats a
        pattern, the first matching pattern wins; layers not matched keep their width); or a callable
        ``(name, module) -> width or None`` (None: leave that layer alone).
    packed : bool
        Also build each set layer's single-width packed copy at its new width (:meth:`SEFPLinear.pack`: one shift
        pass, ``1 + m`` bits per weight more memory, widths up to 7) and serve from it; without it, set layers keep
        any copy they had, which serves again only when their width returns to it.

    Returns
    -------
    dict
        ``{layer name: width}`` of the layers set (also readable afterwards as each layer's ``.m``).

    Raises ValueError (and changes nothing) if a width is not an int in ``[1, m_max]`` of its layer,
    naming the layer, or if a dict key matches no layer.
    """
    layers = {}
    for name, mod in model.named_modules():  # a wrapper holding its layer unregistered (vocab.tailor's head) exposes
        held = mod if isinstance(mod, SEFPLinear) else getattr(mod, "wrapped_layer", None)  # it as .wrapped_layer
        if isinstance(held, SEFPLinear):
            layers[name] = held
    if not layers:
        raise ValueError("model: expected a module holding SEFPLinear layers (run leankern.quantize_model(model, "
                         "'sefp') first), found none")
    plan = _layer_widths(layers, m)
    for name, w in plan.items():
        _check_width(f"m for layer {name or '<model>'!r}", w, layers[name].m_max)
        if packed and w > PACKED_MAX_M:
            raise ValueError(f"m for layer {name or '<model>'!r}: expected m <= {PACKED_MAX_M} with packed=True (a "
                             f"packed copy holds sign + m bits in a byte), got {w}")
    for name, w in plan.items():
        layers[name].m = w
        if packed:
            layers[name].pack(w)
    return plan
