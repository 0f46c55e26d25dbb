"""QuantLinear: an ``nn.Linear`` whose weight is stored in an MX/NV block format.

The weight lives in registered buffers (``codes``, ``scales``, ``global_scale``, and ``meta``: the
JSON metadata of :meth:`leankern.MXTensor.state_dict`, plus ``act_fmt``), so ``state_dict()`` is
plain tensors (safetensors-friendly) and its ``prefix + codes/scales/global_scale/meta`` entries
load with :meth:`leankern.MXTensor.from_state_dict` too. On CPU the codes are kept in the
prepacked layout the CPU kernels read fastest (:func:`leankern.mx.prepack`); on a GPU row-major.
"""
from __future__ import annotations

import json

import torch
from torch import nn

from .. import mx
from ..core import check_choice, check_power_of_two
from ..mx.formats import get_format
from ..mx.ops import SCALE_MODES
from ..mx.tensor import MXTensor

__all__ = ["QuantLinear"]

_LAYOUTS = ("prepacked16", "row_major")


def bias_for(bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """The bias as the quantized linears pass it on: fp32 or x's dtype as it is, any other dtype cast to x's."""
    if bias is not None and bias.dtype != x.dtype and bias.dtype != torch.float32:
        return bias.to(x.dtype)
    return bias


def _check_config(in_features, out_features, fmt, block_size, act_fmt, rotate) -> tuple[str, int, str | None]:
    """Validate the constructor arguments; returns (fmt name, block size, act_fmt name)."""
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    f = get_format(fmt)  # ValueError naming fmt
    bs = f.default_block_size if block_size is None else block_size
    check_power_of_two("block_size", bs, 2, 1024)
    if in_features % bs:
        raise ValueError(f"in_features: expected a multiple of block_size={bs} (blocks run along in_features), "
                         f"got {in_features}")
    act = None
    if act_fmt is not None:
        try:
            act = get_format(act_fmt).name
        except ValueError as exc:  # same text, naming act_fmt
            raise ValueError(f"act_{exc}") from None
    if rotate is not None:
        mx._check_rotation(rotate, in_features)  # the check quantize(..., rotate=) runs
    return f.name, bs, act


def _empty_weight(out_features, in_features, fmt, block_size, dtype, layout, rotation, device,
                  scale_mode="rceil") -> MXTensor:
    """An all-zero MXTensor with the buffers' shapes (filled by load_state_dict)."""
    from ..mx.packed_layout import TILE_ROWS, packed_block_bytes

    f = get_format(fmt)
    g = torch.ones((), dtype=torch.float32, device=device)
    if layout == "prepacked16":
        codes = torch.zeros((-(-out_features // TILE_ROWS), in_features // block_size,
                             packed_block_bytes(fmt, block_size)), dtype=torch.uint8, device=device)
        scales = torch.zeros((0,), dtype=torch.uint8, device=device)
    else:
        kc = in_features // 2 if f.element.packed else in_features
        codes = torch.zeros((out_features, kc), dtype=torch.uint8, device=device).view(f.code_dtype)
        scales = torch.zeros((out_features, in_features // block_size), dtype=torch.uint8,
                             device=device).view(f.scale_dtype)
    return MXTensor(codes, scales, g, fmt, block_size, (out_features, in_features), dtype, scale_mode, layout=layout,
                    rotation=rotation)


def _own(t: torch.Tensor) -> torch.Tensor:
    """A buffer for the module: out of autograd (a weight quantized from an ``nn.Parameter`` carries a grad_fn) and
    with storage of its own where ``t`` is a view into a larger tensor (an expert of ``[E, N, K]`` codes): a
    state_dict whose tensors share storage is refused by safetensors, and loading into one module would write into
    the others."""
    t = t.detach()
    if t.device.type != "meta" and t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def _default_layout(device) -> str:
    # the meta device as the CPU: a model built on meta is materialised (to_empty) and loaded on the CPU far more
    # often than on a GPU, and a move to a GPU switches the layout as for any CPU module
    kind = torch.device(device if device is not None else "cpu").type
    return "prepacked16" if kind in ("cpu", "meta") else "row_major"



def _differing_meta(meta: torch.Tensor | None, mine_bytes: bytes):
    """A checkpoint's JSON ``meta`` record where it differs from ``mine_bytes`` (a dict, or ``"unreadable"``); None
    when it is absent or equal."""
    if meta is None or (meta.device.type != "meta" and bytes(meta.cpu().tolist()) == mine_bytes):
        return None
    try:
        return json.loads(bytes(meta.cpu().tolist()).decode())
    except (ValueError, UnicodeDecodeError, NotImplementedError):
        return "unreadable"


def meta_mismatch(module: nn.Module, state_dict: dict, prefix: str, hint: str) -> str | None:
    """The load error when ``state_dict``'s JSON ``meta`` record differs from the module's configuration
    (``module._meta_bytes()``, from its attributes: its own ``meta`` buffer may be uninitialised, after ``to_empty``,
    or on the meta device; None if equal or absent): both configurations named, so the user knows which module to
    build."""
    mine_bytes = module._meta_bytes()
    theirs = _differing_meta(state_dict.get(prefix + "meta"), mine_bytes)
    if theirs is None:
        return None
    mine = json.loads(mine_bytes.decode())
    return (f"{prefix}meta: this {type(module).__name__} is {mine}, the checkpoint holds {theirs}; build the "
            f"module with the checkpoint's configuration{hint}")


class QuantLinear(nn.Module):
    """``y = x @ W^T + b`` with ``W`` quantized to an MX/NV block format (:func:`leankern.mx.linear`).

    Parameters
    ----------
    in_features, out_features : int
        As ``nn.Linear``; ``in_features`` must be a multiple of ``block_size`` (and of ``rotate``).
    bias : bool
        Whether the module has a bias (kept unquantized, in ``dtype``).
    fmt : str
        Weight format (one of :data:`leankern.mx.formats.FORMATS`).
    block_size : int, optional
        Default: the format's (32 MX, 16 NV).
    act_fmt : str, optional
        Quantize x on the fly to this format (dual product); None: weight-only.
    rotate, rotate_seed : int, optional
        Random Hadamard rotation chunk size and seed (see :func:`leankern.mx.quantize`): the weight
        is stored rotated, x is rotated on the fly.
    dtype : torch.dtype
        The dtype the weight was quantized from (recorded in the metadata) and of the bias.
    device : optional
        Where the buffers live; the layout is ``"prepacked16"`` on CPU, ``"row_major"`` elsewhere.
    scale_mode : str
        How the weight's scales were chosen (``"rceil"``, ``"floor"``, ``"reciprocal"``; recorded in the
        metadata, no effect on decoding). ``load_state_dict`` takes the checkpoint's where only this differs.

    The constructor makes zero buffers to be filled by ``load_state_dict``; build from a trained
    layer with :meth:`from_linear` (or :meth:`from_mxtensor`).

    Shape:
        x ``[..., in_features]`` (fp32 / bf16 / fp16) -> ``[..., out_features]`` in x's dtype.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, fmt: str = "mxfp8_e4m3", *,
                 block_size: int | None = None, act_fmt: str | None = None, rotate: int | None = None,
                 rotate_seed: int = 0, dtype: torch.dtype = torch.bfloat16, device=None, layout: str | None = None,
                 scale_mode: str = "rceil"):
        super().__init__()
        fmt, bs, act = _check_config(in_features, out_features, fmt, block_size, act_fmt, rotate)
        check_choice("scale_mode", scale_mode, SCALE_MODES)
        layout = _default_layout(device) if layout is None else layout
        if layout not in _LAYOUTS:
            raise ValueError(f"layout: expected one of {_LAYOUTS}, got {layout!r}")
        rotation = None if rotate is None else (rotate, int(rotate_seed))
        w = _empty_weight(out_features, in_features, fmt, bs, dtype, layout, rotation, device, scale_mode)
        b = torch.zeros(out_features, dtype=dtype, device=device) if bias else None
        self._set_weight(w, b, act)

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str, *, block_size: int | None = None, act_fmt: str | None = None,
                    rotate: int | None = None, rotate_seed: int = 0, layout: str | None = None) -> "QuantLinear":
        """Quantize ``linear.weight`` (RCEIL scales for MX, dynamic per-tensor scale for NV).

        The bias is copied unquantized. ``layout``: default ``"prepacked16"`` for a CPU weight,
        ``"row_major"`` otherwise.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        fmt, bs, act = _check_config(linear.in_features, linear.out_features, fmt, block_size, act_fmt, rotate)
        qt = mx.quantize(weight, fmt, block_size=bs, rotate=rotate, rotate_seed=rotate_seed)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls.from_mxtensor(qt, bias, act_fmt=act, layout=layout)

    @classmethod
    def from_mxtensor(cls, weight: MXTensor, bias: torch.Tensor | None = None, *, act_fmt: str | None = None,
                      layout: str | None = None) -> "QuantLinear":
        """Wrap an already quantized ``[out_features, in_features]`` MXTensor (no requantization)."""
        if not isinstance(weight, MXTensor):
            raise TypeError(f"weight: expected an MXTensor, got {type(weight).__name__}")
        if len(weight.shape) != 2:
            raise ValueError(f"weight: expected a 2-D [out_features, in_features] MXTensor, got shape {weight.shape}")
        n, k = weight.shape
        rot = weight.rotation
        _, _, act = _check_config(k, n, weight.fmt, weight.block_size, act_fmt, None if rot is None else rot[0])
        layout = _default_layout(weight.device) if layout is None else layout
        if layout not in _LAYOUTS:
            raise ValueError(f"layout: expected one of {_LAYOUTS}, got {layout!r}")
        weight = weight.prepacked() if layout == "prepacked16" else weight.unpacked()
        if weight.scale_layout != "row_major" and layout == "row_major":
            weight = MXTensor(weight.codes, weight.row_major_scales(), weight.global_scale, weight.fmt,
                              weight.block_size, weight.shape, weight.dtype, weight.scale_mode, rotation=rot)
        if bias is not None and tuple(bias.shape) != (n,):
            raise ValueError(f"bias: expected shape ({n},), got {tuple(bias.shape)}")
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod._set_weight(weight, bias, act)
        return mod

    def _set_weight(self, w: MXTensor, bias: torch.Tensor | None, act_fmt: str | None) -> None:
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.fmt, self.block_size, self.act_fmt = w.fmt, w.block_size, act_fmt
        self.rotation, self.layout, self.weight_dtype, self.scale_mode = w.rotation, w.layout, w.dtype, w.scale_mode
        self.register_buffer("codes", _own(w.codes))
        self.register_buffer("scales", _own(w.scales))
        self.register_buffer("global_scale", w.global_scale.detach().reshape(()).to(torch.float32).clone())
        self.register_buffer("meta", self._meta_tensor(w))
        self.register_buffer("bias", bias)

    def _meta_tensor(self, w: MXTensor) -> torch.Tensor:
        return torch.tensor(list(self._meta_bytes(w)), dtype=torch.uint8, device=w.device)

    def _meta_bytes(self, w: MXTensor | None = None) -> bytes:
        """The JSON ``meta`` record of this configuration (of ``w``, default this module's weight)."""
        meta = dict((self.weight if w is None else w)._meta(), act_fmt=self.act_fmt)
        return json.dumps(meta, sort_keys=True).encode()

    def _apply(self, fn, recurse=True):
        kept = {k: self._buffers[k] for k in ("codes", "scales", "global_scale")}
        super()._apply(fn, recurse)
        for k, t in kept.items():  # a dtype cast (model.half(), .to(bf16)) leaves the quantized weight's bytes alone
            if self._buffers[k].dtype != t.dtype:
                self._buffers[k] = t.to(self._buffers[k].device)
        if self.layout == "prepacked16" and self._buffers["codes"].device.type != "cpu":
            # moved off the CPU: the GPU kernels read the row-major layout (an exact permutation)
            self._set_weight(self.weight.unpacked(), self._buffers["bias"], self.act_fmt)
        return self

    # ------------------------------------------------------------------------------- use
    @property
    def weight(self) -> MXTensor:
        """The quantized weight as an :class:`MXTensor` sharing this module's buffers."""
        return MXTensor(self.codes, self.scales, self.global_scale, self.fmt, self.block_size,
                        (self.out_features, self.in_features), self.weight_dtype, self.scale_mode,
                        layout=self.layout, rotation=self.rotation, _trusted=True)  # its own buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_with(x, self.weight, self.bias)

    def linear_with(self, x: torch.Tensor, weight: MXTensor, bias: torch.Tensor | None) -> torch.Tensor:
        """This layer's product (its ``act_fmt``, its bias handling) with another weight of its kind, e.g. some of
        its rows (``weight.select_rows``: leankern.vocab.tailor's head)."""
        return mx.linear(x, weight, bias_for(bias, x), act_fmt=self.act_fmt)

    @property
    def nbytes(self) -> int:
        """Bytes held: quantized weight (codes + scales + per-tensor scale) + bias."""
        b = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size() \
            + 4 + b

    def extra_repr(self) -> str:
        bits = 8.0 * self.weight.nbytes / (self.in_features * self.out_features)
        s = (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
             f"fmt={self.fmt}, block_size={self.block_size}")
        if self.act_fmt is not None:
            s += f", act_fmt={self.act_fmt}"
        if self.rotation is not None:
            s += f", rotate={self.rotation[0]}, rotate_seed={self.rotation[1]}"
        return s + f", layout={self.layout}, {bits:.2f} bits/weight"

    # ------------------------------------------------------------------------ checkpoints
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        self._adopt_scale_mode(state_dict.get(prefix + "meta"))
        err = meta_mismatch(self, state_dict, prefix, "")
        if err is not None:
            error_msgs.append(err)
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _adopt_scale_mode(self, meta: torch.Tensor | None) -> None:
        """The checkpoint's ``scale_mode`` where its metadata differs from this module's in nothing else: how the
        scales were chosen does not change how the codes decode, so a module built with the default loads a
        weight quantized with ``scale_mode="floor"`` / ``"reciprocal"``."""
        mine_bytes = self._meta_bytes()
        theirs = _differing_meta(meta, mine_bytes)
        if theirs is None or meta.device.type == "meta":
            return
        mine = json.loads(mine_bytes.decode())
        if not isinstance(theirs, dict) or theirs.get("scale_mode") not in SCALE_MODES or \
                dict(theirs, scale_mode=None) != dict(mine, scale_mode=None):
            return
        self.scale_mode = theirs["scale_mode"]
        self._buffers["meta"] = meta.detach().to(device=self.meta.device, dtype=torch.uint8).clone()

    @classmethod
    def from_state_dict(cls, state: dict, prefix: str = "") -> "QuantLinear":
        """Rebuild a module from its ``state_dict`` entries (``prefix + codes/scales/global_scale/meta[/bias]``)."""
        meta = json.loads(bytes(state[prefix + "meta"].cpu().tolist()).decode())
        w = MXTensor.from_state_dict(state, prefix)
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod._set_weight(w, state.get(prefix + "bias"), meta.get("act_fmt"))
        return mod


def linear_bytes(module: nn.Module) -> int:
    """Bytes of a linear layer's weight and bias (``nn.Linear``) or of a :class:`QuantLinear`."""
    if isinstance(module, QuantLinear):
        return module.nbytes
    return sum(t.numel() * t.element_size() for t in (module.weight, module.bias) if t is not None)

