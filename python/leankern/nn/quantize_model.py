"""quantize_model: replace the ``nn.Linear`` layers of any module with :class:`QuantLinear` (or, for
``fmt="sefp"``, :class:`SEFPLinear`), in place."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from ..mx.formats import _ALIASES, FORMATS, get_format
from .quant_linear import QuantLinear, _check_config, linear_bytes
from .sefp_linear import SEFPLinear, _check_build, _check_width

__all__ = ["quantize_model", "QuantizeReport", "LayerReport"]


@dataclass
class LayerReport:
    """One linear layer: its name, shape, bytes before and after, and why it was skipped (if it was)."""

    name: str
    in_features: int
    out_features: int
    bytes_before: int
    bytes_after: int
    skipped: str | None = None  # reason; None = replaced
    also: list[str] = field(default_factory=list)  # the layer's other names (one module used at several places)


@dataclass
class QuantizeReport:
    """What :func:`quantize_model` did. ``bytes_*``: the linear layers (weights + biases);
    ``model_bytes_*``: every parameter and buffer of the model (shared storage counted once)."""

    fmt: str
    act_fmt: str | None
    rotate: int | None
    layers: list[LayerReport] = field(default_factory=list)
    model_bytes_before: int = 0
    model_bytes_after: int = 0
    m_max: int | None = None  # fmt "sefp": planes stored (bytes_after counts them all)

    @property
    def replaced(self) -> list[LayerReport]:
        return [r for r in self.layers if r.skipped is None]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.layers if r.skipped is not None]

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.layers)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.layers)

    def table(self) -> str:
        """Every layer, one line each."""
        w = max([len(r.name) for r in self.layers] + [5])
        lines = [f"{'layer':<{w}}  {'in x out':>13}  {'MB before':>9}  {'MB after':>8}  note"]
        for r in self.layers:
            also = f" (also as {', '.join(r.also)})" if r.also else ""
            lines.append(f"{r.name:<{w}}  {f'{r.in_features}x{r.out_features}':>13}  {r.bytes_before / 1e6:9.2f}  "
                         f"{r.bytes_after / 1e6:8.2f}  {r.skipped or 'quantized'}{also}")
        return "\n".join(lines)

    def __str__(self) -> str:
        what = self.fmt + (f" x act {self.act_fmt}" if self.act_fmt else "") + \
            (f", rotate={self.rotate}" if self.rotate else "") + \
            (f", m_max={self.m_max}" if self.m_max is not None else "")
        ratio = self.bytes_before / max(self.bytes_after, 1)
        lines = [f"quantize_model({what}): {len(self.replaced)} linear layers replaced, {len(self.skipped)} skipped",
                 f"  linear layers: {_mb(self.bytes_before)} -> {_mb(self.bytes_after)} "
                 f"({ratio:.2f}x smaller)",
                 f"  whole model:   {_mb(self.model_bytes_before)} -> {_mb(self.model_bytes_after)}"]
        kinds: dict[str, list[int]] = {}
        for r in self.replaced:  # group by the last name component (q_proj, down_proj, ...)
            k = kinds.setdefault(r.name.rsplit(".", 1)[-1], [0, 0, 0])
            k[0] += 1
            k[1] += r.bytes_before
            k[2] += r.bytes_after
        for kind, (n, before, after) in kinds.items():
            lines.append(f"    {kind}: {n} x, {_mb(before)} -> {_mb(after)}")
        for r in self.skipped:
            lines.append(f"    skipped {r.name}: {r.skipped}")
        for r in self.layers:
            if r.also:
                lines.append(f"    {r.name} is also used as {', '.join(r.also)}: "
                             f"{'replaced at every place' if r.skipped is None else 'left at every place'}")
        return "\n".join(lines)


def _mb(n: int) -> str:
    """Bytes in a readable unit."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _model_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _matches(name: str, patterns: Iterable[str]) -> str | None:
    """The first pattern matching the dotted ``name`` (fnmatch on the full name or its last part)."""
    last = name.rsplit(".", 1)[-1]
    for p in patterns:
        if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(last, p):
            return p
    return None


def _output_embedding(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            return get()
        except (NotImplementedError, AttributeError):
            return None
    return None


def quantize_model(model: nn.Module, fmt: str, *, act_fmt: str | None = None, rotate: int | None = None,
                   rotate_seed: int = 0, block_size: int | None = None, skip: Iterable[str] = (),
                   include_lm_head: bool = False, layout: str | None = None, m_max: int | None = None,
                   m: int | None = None) -> QuantizeReport:
    """Replace every ``nn.Linear`` of ``model`` with a :class:`QuantLinear` in ``fmt``, in place.

    ``fmt="sefp"``: an :class:`SEFPLinear` instead, quantized once at ``m_max`` (default 8) with
    ``block_size`` (default 32) and served at width ``m`` (default ``m_max``; change it later with
    :func:`leankern.set_precision`); ``act_fmt``, ``rotate`` and ``layout`` do not apply.

    Parameters
    ----------
    model : nn.Module
        Any module (a Hugging Face model, an ``nn.Sequential``, ...).
    fmt, act_fmt, rotate, rotate_seed, block_size, layout
        As :meth:`QuantLinear.from_linear`, for every replaced layer.
    m_max, m : int, optional
        ``fmt="sefp"`` only: as :meth:`SEFPLinear.from_linear`.
    skip : str or iterable of str
        fnmatch patterns of layer names to leave alone, matched against the dotted name
        (``"model.layers.0.mlp.down_proj"``) and its last part (``"down_proj"``, ``"*proj"``); a single
        string is one pattern.
    include_lm_head : bool
        Also quantize the output projection: the module returned by
        ``model.get_output_embeddings()`` where the model has that method, else any layer named
        ``lm_head``. Default False: the LM head stays in its dtype (it is the most sensitive layer).

    Layers whose ``in_features`` is not a multiple of the block size (or of ``rotate``) are left
    alone and listed in the report with the reason (SEFP pads the last block instead), as are layers
    whose weight is not fp32 / bf16 / fp16 and the linears of modules that read their weight
    directly (``nn.MultiheadAttention``'s ``out_proj``, the ``nn.Transformer*Layer`` fast path). Every
    layer is checked before any is swapped; bad arguments (unknown ``fmt``, ...) raise. A layer used at
    several places (one module under two names) is replaced at all of them by one quantized module.
    ``model`` itself must not be an ``nn.Linear`` (use ``QuantLinear.from_linear``).

    Returns
    -------
    QuantizeReport
        Layers replaced and skipped, bytes before and after (SEFP: all ``m_max`` planes stored);
        ``print(report)`` summarises.
    """
    is_sefp = fmt == "sefp"
    if is_sefp:
        block_size, m_max = (32 if block_size is None else block_size), (8 if m_max is None else m_max)
        _check_sefp_args(act_fmt, rotate, layout, block_size, m_max, m)
    else:
        if m_max is not None or m is not None:
            raise ValueError(f"m_max, m: only for fmt='sefp', got m_max={m_max!r}, m={m!r} with fmt={fmt!r}")
        try:
            get_format(fmt)
        except ValueError:  # get_format's message, plus the one name only quantize_model takes
            raise ValueError(f"fmt: expected one of {tuple(FORMATS) + ('sefp',)} or an alias {tuple(_ALIASES)}, "
                             f"got {fmt!r}") from None
        _check_config(64 * 1024, 1, fmt, block_size, act_fmt, rotate)  # argument errors before touching the model
    if isinstance(model, nn.Linear):  # the swap is done in the parent module; the root has none
        raise TypeError(f"model: expected a module holding nn.Linear layers, got the {type(model).__name__} layer "
                        f"itself (it cannot be replaced in place); use {'SEFPLinear' if is_sefp else 'QuantLinear'}"
                        f".from_linear(model, ...)")
    skip = (skip,) if isinstance(skip, str) else tuple(skip)  # one pattern, not its characters
    head = None if include_lm_head else _output_embedding(model)
    report = QuantizeReport(fmt=fmt, act_fmt=act_fmt, rotate=rotate, model_bytes_before=_model_bytes(model),
                            m_max=m_max if is_sefp else None)
    # every name of every linear (a module used twice, e.g. one layer applied at two places, has two names: both
    # get the same replacement) and the parent that holds it
    uses: dict[int, tuple[nn.Linear, list[tuple[str, nn.Module]]]] = {}
    for pname, parent in model.named_modules(remove_duplicate=False):
        for cname, child in parent._modules.items():  # (named_children drops a module's second name)
            if isinstance(child, nn.Linear):
                name = f"{pname}.{cname}" if pname else cname
                places = uses.setdefault(id(child), (child, []))[1]
                if all(name != n for n, _ in places):
                    places.append((name, parent))
    # the reasons first, for every layer: no layer is swapped before all are checked
    plan = []
    tailored = _tailored_head(model) if include_lm_head else None
    if tailored is not None:  # its nn.Linear is held outside the module tree: not found above, not quantized
        name, th = tailored
        orig = getattr(th.__dict__.get("_tailor_state"), "head", None)
        nbytes = linear_bytes(orig) if isinstance(orig, nn.Module) else 0
        report.layers.append(LayerReport(name, th.in_features, th.V, nbytes, nbytes,
                                         "LM head tailored by leankern.vocab.tailor: quantize the model before "
                                         "tailoring it (untailor, quantize_model, tailor again)"))
    for lin, places in uses.values():
        names = [n for n, _ in places]
        reason = _skip_reason(lin, places, skip, head, include_lm_head, is_sefp, fmt, block_size, act_fmt, rotate)
        plan.append((lin, names, reason))
    for lin, names, reason in plan:
        before = linear_bytes(lin)
        if reason is not None:
            report.layers.append(LayerReport(names[0], lin.in_features, lin.out_features, before, before, reason,
                                             also=names[1:]))
            continue
        if is_sefp:
            q = SEFPLinear.from_linear(lin, m_max=m_max, block_size=block_size, m=m)
        else:
            q = QuantLinear.from_linear(lin, fmt, block_size=block_size, act_fmt=act_fmt, rotate=rotate,
                                        rotate_seed=rotate_seed, layout=layout)
        for _, parent in uses[id(lin)][1]:
            for cname, child in list(parent._modules.items()):
                if child is lin:
                    setattr(parent, cname, q)
        report.layers.append(LayerReport(names[0], lin.in_features, lin.out_features, before,
                                         q.nbytes(m_max) if is_sefp else q.nbytes, also=names[1:]))
    report.model_bytes_after = _model_bytes(model)
    return report


def _tailored_head(model: nn.Module):
    """``(name, head)`` where ``model``'s output embedding is a leankern.vocab.tailor head, else None."""
    from ..vocab.hf import TailoredHead  # (late: vocab imports this package)

    head = _output_embedding(model)
    if not isinstance(head, TailoredHead):
        return None
    return next((n for n, m in model.named_modules() if m is head), "lm_head"), head


# Modules that read their nn.Linear children's .weight / .bias directly (not by calling them): replacing those
# children would break their forward (nn.MultiheadAttention's out_proj; the Transformer layers' fast path).
_WEIGHT_READERS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _skip_reason(lin, places, skip, head, include_lm_head, is_sefp, fmt, block_size, act_fmt, rotate) -> str | None:
    """Why ``lin`` (known by the names in ``places``) stays as it is, or None: it is replaced."""
    for name, parent in places:
        if (pat := _matches(name, skip)) is not None:
            return f"skip pattern {pat!r}" + (f" (on {name})" if len(places) > 1 else "")
    for name, parent in places:
        if isinstance(parent, _WEIGHT_READERS):
            return f"{type(parent).__name__} reads this layer's weight directly"
    if not include_lm_head and (lin is head or (head is None and any(n.rsplit(".", 1)[-1] == "lm_head"
                                                                      for n, _ in places))):
        return "LM head (include_lm_head=False)"
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    if lin.weight.dtype not in dtypes:
        return f"weight dtype {lin.weight.dtype} (expected one of {[str(d) for d in dtypes]})"
    if is_sefp:
        if lin.weight.device.type != "meta" and not bool(lin.weight.detach().isfinite().all()):  # (meta: no values)
            return "weight holds NaN/Inf (SEFP has no code for them)"
        return None
    try:
        _check_config(lin.in_features, lin.out_features, fmt, block_size, act_fmt, rotate)
    except ValueError as exc:
        return str(exc)
    return None


def _check_sefp_args(act_fmt, rotate, layout, block_size, m_max, m) -> None:
    """fmt="sefp": argument errors before touching the model."""
    for name, v in (("act_fmt", act_fmt), ("rotate", rotate), ("layout", layout)):
        if v is not None:
            raise ValueError(f"{name}: expected None with fmt='sefp' (weight-only, bit-plane layout), got {v!r}")
    _check_build(1, 1, m_max, block_size)
    if m is not None:
        _check_width("m", m, m_max)
