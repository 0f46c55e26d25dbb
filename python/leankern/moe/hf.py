"""Hugging Face drop-in for MoDES (arXiv 2511.15690): sparse-MoE blocks that really skip routed experts.

>>> patch_model(model, SkipConfig(rule="modes", alpha=alpha, tau_text=0.05, tau_vision=0.1))   # in place
>>> out = model.generate(**inputs, max_new_tokens=32)          # the calling code does not change
>>> skip_stats(model)["overall"]                               # skipped slots / (non-padding tokens x k)
>>> unpatch_model(model)                                       # the original forwards, nothing else left

:func:`patch_model` gives every sparse-MoE block of the model (transformers 5.x classes, model order = MoE layer
index ``l`` of ``config.skip_params(l)``) a forward that maps the model's own router onto
:func:`leankern.moe.route` (fused with the skip rule), marks ablated slots, and runs :func:`leankern.moe.experts`
on the model's own Parameters (read in place: nothing is copied, no Parameter or buffer is added). Routers:

* ``Qwen3MoeSparseMoeBlock``, ``Qwen2MoeSparseMoeBlock``: softmax, top-k, renormalise iff ``norm_topk_prob``;
  Qwen2-MoE's gated shared expert: ``shared_expert`` weights + ``shared_expert_gate`` as ``shared_gate``.
* ``Qwen3VLMoeTextSparseMoeBlock``, ``MixtralSparseMoeBlock``: softmax, top-k, renormalise (always, as the models do).
* ``DeepseekV2Moe``: fp32 logits, softmax, no renormalisation (the model has none), ``topk_method="greedy"`` (one
  group) or ``"group_limited_greedy"`` (``n_group`` / ``topk_group``, group score = its best expert),
  ``routed_scaling_factor``; ``shared_experts`` MLP.
* ``DeepseekV3MoE``: fp32 logits, sigmoid, ``e_score_correction_bias`` for selection only, groups (score = sum of
  the two best), renormalise iff ``norm_topk_prob``, ``routed_scaling_factor``; ``shared_experts`` MLP.
* ``GptOssMLP``: logits with the router bias, top-k of the logits, softmax over the k chosen logits. That equals
  ``scoring="softmax"`` + top-k + renormalise exactly in real arithmetic (softmax is monotone and
  ``exp(z_i) / sum_topk exp(z_j)`` is the same ratio either way), so gpt-oss goes through :func:`route` too.
  Experts: ``gate_up_proj.transpose(1, 2)`` (interleaved gate/up), ``down_proj.transpose(1, 2)``, both biases,
  ``activation="swiglu_oai"`` with the config's alpha / limit. The block returns ``(out, routing weights)`` as the
  original does.

Shared experts are passed as ``shared_w1/w3/w2`` (``gate_proj``/``up_proj``/``down_proj`` weights) when they are a
bias-free SiLU MLP, else the shared module is called and its output added; they are never skipped. This is decided
at every call, not at patch time: the three linears (and Qwen2-MoE's ``shared_expert_gate``) must be bias-free
``nn.Linear`` modules holding plain fp32 / bf16 / fp16 weights, so a shared expert (or gate) quantized before or after
patching (``leankern.quantize_model``: ``QuantLinear`` / ``SEFPLinear``) is called as the module it now is. The numerics
of routing follow :mod:`leankern.moe.ref` (stable sort: ties go to the lowest expert id where ``torch.topk``
leaves them unspecified; weights in fp32 where HF rounds them to the logits' dtype); without skipping a patched
block equals the original within rounding.

**Modality of each token.** A forward pre-hook on the top-level model (the module given to :func:`patch_model`)
reads each call's ``input_ids`` (keyword or positional) and ``attention_mask`` and computes the codes ``[B, S]``
(0 text, 1 vision, 2 never skip) once per call; a forward hook (``always_call``) drops them when the call ends.
Default codes: ``config.image_token_id`` / ``video_token_id`` (or ``*_token_index``) -> 1,
``vision_start_token_id`` / ``vision_end_token_id`` / ``boi_token_index`` / ``eoi_token_index`` -> 2, the rest 0 (a
text-only model: all 0). Decode steps carry no image token: text. ``modality_fn(input_ids) -> [B, S]`` overrides
this. A block called outside such a call (``model.model(...)`` by hand), with ``inputs_embeds`` only, or with a
token count that is not the call's ``B x S`` sees every token as text and every token as non-padding.

**Statistics.** Each block accumulates, on the device and without a host synchronisation, kept slots and total
slots (non-padding tokens, from the last ``S`` columns of a 2-D ``attention_mask``, times k) per modality;
:func:`skip_stats` reports the skip ratio per layer, per modality and overall; :func:`reset_skip_stats` zeroes them.

**Ablation** (for :func:`leankern.moe.calibration.calibrate_alpha`): :func:`set_ablation` makes one layer keep no
routed slot for the tokens of one modality code (its shared expert still runs).

Inference only: the ops have no autograd formula; the patched forward ignores Mixtral's training-time jitter.
``output_router_logits`` keeps working: when the router module carries hooks (HF's output recorder installs them
on request) the patched forward calls it for its logits, else it computes the same logits itself.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..core import check_ids_in_range
from . import experts, route
from .config import SkipConfig

__all__ = ["patch_model", "unpatch_model", "is_patched", "moe_blocks", "set_skip_config", "set_modality_fn",
           "skip_stats", "reset_skip_stats", "set_ablation", "clear_ablation", "modality_codes",
           "default_modality_fn", "SUPPORTED_BLOCKS"]

#: class name of the sparse-MoE block -> kind
SUPPORTED_BLOCKS = {
    "Qwen3MoeSparseMoeBlock": "qwen3_moe",
    "Qwen3VLMoeTextSparseMoeBlock": "qwen3_vl_moe",
    "Qwen2MoeSparseMoeBlock": "qwen2_moe",
    "MixtralSparseMoeBlock": "mixtral",
    "DeepseekV2Moe": "deepseek_v2",
    "DeepseekV3MoE": "deepseek_v3",
    "GptOssMLP": "gpt_oss",
}
_SILU = ("silu", "swish")
_STATE = "_leankern_moe"  # a patched block's _BlockState (in its __dict__)
_MODEL_STATE = "_leankern_moe_model"  # the patched module's _ModelState: another key, so a block can be the model
MODALITIES = ("text", "vision", "never")


# ------------------------------------------------------------------------------------ per-block routing
@dataclasses.dataclass
class _Routing:
    top_k: int
    scoring: str = "softmax"
    renormalize: bool = True
    n_group: int = 1
    topk_group: int = 1
    scaling: float = 1.0
    fp32_logits: bool = False  # DeepSeek: logits from fp32 hidden and fp32 router weight
    correction_bias: bool = False  # DeepSeek-V3: gate.e_score_correction_bias


def _block_kind(module: nn.Module) -> Optional[str]:
    for cls in type(module).__mro__:
        if cls.__name__ in SUPPORTED_BLOCKS:
            return SUPPORTED_BLOCKS[cls.__name__]
    return None


def _act_name(module: nn.Module, default: str = "silu") -> str:
    cfg = getattr(module, "config", None)
    if cfg is not None and getattr(cfg, "hidden_act", None):
        return str(cfg.hidden_act)
    act = getattr(module, "act_fn", None)
    if act is None:
        return default
    return "silu" if type(act).__name__ in ("SiLU", "SiLUActivation") else type(act).__name__


def _routing_for(kind: str, block: nn.Module) -> _Routing:
    if kind == "gpt_oss":
        return _Routing(top_k=int(block.router.top_k))
    gate = block.gate
    k = int(gate.top_k)
    if kind in ("qwen3_moe", "qwen2_moe"):
        return _Routing(k, renormalize=bool(gate.norm_topk_prob))
    if kind in ("qwen3_vl_moe", "mixtral"):
        return _Routing(k, renormalize=True)
    if kind == "deepseek_v2":
        method = getattr(gate, "topk_method", "greedy")
        if method == "greedy":
            groups = (1, 1)
        elif method == "group_limited_greedy":
            groups = (int(gate.num_group), int(gate.topk_group))
        else:
            raise ValueError(f"DeepseekV2Moe: topk_method {method!r} is not supported (greedy, group_limited_greedy)")
        return _Routing(k, renormalize=False, n_group=groups[0], topk_group=groups[1],
                        scaling=float(gate.routed_scaling_factor), fp32_logits=True)
    if kind == "deepseek_v3":
        return _Routing(k, scoring="sigmoid", renormalize=bool(gate.norm_topk_prob), n_group=int(gate.num_group),
                        topk_group=int(gate.topk_group), scaling=float(gate.routed_scaling_factor),
                        fp32_logits=True, correction_bias=True)
    raise AssertionError(kind)


_FUSABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what moe_experts takes for shared weights


def _plain_weight(m) -> Optional[torch.Tensor]:
    """``m.weight`` when ``m`` is a bias-free ``nn.Linear`` whose weight is a plain tensor the op can read (not an
    ``MXTensor`` / ``SEFPTensor`` or another tensor subclass, not an integer dtype), else None. Cheap enough per call;
    under ``torch.compile`` it is evaluated while tracing and guarded."""
    if not isinstance(m, nn.Linear) or m.bias is not None:
        return None
    w = m.weight
    if type(w) is not nn.Parameter and type(w) is not torch.Tensor:
        return None
    return w if w.dtype in _FUSABLE_DTYPES else None


def _shared_module(block: nn.Module) -> Optional[nn.Module]:
    """The block's shared expert as it is now (DeepSeek: ``shared_experts``, Qwen2-MoE: ``shared_expert``)."""
    shared = getattr(block, "shared_experts", None)
    return getattr(block, "shared_expert", None) if shared is None else shared


def _fused_shared_kwargs(st: "_BlockState", block: nn.Module, sh: Optional[nn.Module]) -> Optional[dict]:
    """The ``shared_*`` arguments of :func:`experts` when the shared expert ``sh`` (and Qwen2-MoE's gate) can be
    fused at this call, else None (the caller then calls the shared module, whatever it now is)."""
    if sh is None or _act_name(sh) not in _SILU:
        return None
    w1, w3, w2 = (_plain_weight(getattr(sh, n, None)) for n in ("gate_proj", "up_proj", "down_proj"))
    if w1 is None or w3 is None or w2 is None:
        return None
    kw = dict(shared_w1=w1, shared_w3=w3, shared_w2=w2)
    if st.kind == "qwen2_moe":
        g = _plain_weight(getattr(block, "shared_expert_gate", None))
        if g is None or g.dim() != 2 or g.shape[0] != 1:
            return None
        kw["shared_gate"] = g[0]
    return kw


# ------------------------------------------------------------------------------------------- state
class _BlockState:
    """Per patched block: its MoE layer index, routing, statistics; ``model`` is the shared :class:`_ModelState`."""

    def __init__(self, layer: int, kind: str, block: nn.Module, model_state: "_ModelState"):
        self.layer, self.kind, self.model = layer, kind, model_state
        self.routing = _routing_for(kind, block)
        if kind != "gpt_oss":
            act = _act_name(block.experts, "silu")
            if act not in _SILU:
                raise ValueError(f"{type(block).__name__} (MoE layer {layer}): experts' activation {act!r} is not "
                                 "supported (silu only)")
        # the shared expert is looked up, and whether it can be fused decided, at each call (_fused_shared_kwargs):
        # its linears may be quantized or replaced after patching
        self.kept: Optional[torch.Tensor] = None  # [3] int64: kept slots per modality code
        self.total: Optional[torch.Tensor] = None  # [3] int64: slots of non-padding tokens per modality code

    def count(self, ids: torch.Tensor, codes: Optional[torch.Tensor], valid: Optional[torch.Tensor]) -> None:
        T, k = ids.shape
        dev = ids.device
        kept_tok = (ids >= 0).sum(dim=1)  # [T]
        c = torch.zeros(T, dtype=torch.long, device=dev) if codes is None else codes.long()
        tot_tok = torch.full((T,), k, dtype=torch.long, device=dev)
        if valid is not None:
            kept_tok = kept_tok * valid
            tot_tok = tot_tok * valid
        kept = torch.zeros(3, dtype=torch.long, device=dev).scatter_add_(0, c, kept_tok.long())
        total = torch.zeros(3, dtype=torch.long, device=dev).scatter_add_(0, c, tot_tok)
        # under a lock: two threads serving one model would otherwise lose each other's counts (the add releases
        # the GIL); not while torch.compile traces (no lock in a graph: the update is part of the compiled call)
        if torch.compiler.is_compiling():
            self._add(kept, total)
        else:
            with _STATS_LOCK:
                self._add(kept, total)

    def _add(self, kept: torch.Tensor, total: torch.Tensor) -> None:
        # out of place: works inside and outside inference_mode, no host synchronisation
        self.kept = kept if self.kept is None else self.kept + kept.to(self.kept.device)
        self.total = total if self.total is None else self.total + total.to(self.total.device)


_STATS_LOCK = threading.Lock()


class _CallState(threading.local):
    """The current top-level call's inputs, per thread: two threads running one patched model at once each see
    their own tokens' modality codes (shared, a text request read a concurrent vision request's codes)."""
    codes: Optional[torch.Tensor] = None  # [B, S] int32
    valid: Optional[torch.Tensor] = None  # [B, S] bool (non-padding)
    depth: int = 0


class _ModelState:
    """Shared by the blocks of one patched model (stored in the top model's ``__dict__``)."""

    def __init__(self, model: nn.Module, config: Optional[SkipConfig], modality_fn):
        self.config = config
        self.modality_fn = modality_fn
        self.owner_name = type(model).__name__  # the module patched (named in errors)
        self.default_fn = default_modality_fn(getattr(model, "config", None))
        self.param_names = list(inspect.signature(model.forward).parameters)
        self.blocks: List[nn.Module] = []
        self.ablation: Dict[int, set] = {}
        self.call = _CallState()  # codes / valid / depth of the current top-level call, per thread
        self.hook_ids: List[int] = []

    def __getstate__(self):  # pickle / deepcopy: a thread-local does not pickle, and a copy starts with no call
        state = dict(self.__dict__)
        del state["call"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.call = _CallState()

    # bound methods (not closures): a deep copy of the model gets hooks bound to its own copy of this state
    def _arg(self, name, args, kwargs):
        if name in kwargs:
            return kwargs[name]
        i = self.param_names.index(name) if name in self.param_names else -1
        return args[i] if 0 <= i < len(args) else None

    def pre_hook(self, module, args, kwargs):
        call = self.call
        call.depth += 1
        if call.depth == 1:
            ids = self._arg("input_ids", args, kwargs)
            mask = self._arg("attention_mask", args, kwargs)
            self.set_inputs(ids if isinstance(ids, torch.Tensor) else None,
                            mask if isinstance(mask, torch.Tensor) else None)
        return None

    def post_hook(self, module, args, output):
        call = self.call
        call.depth = max(0, call.depth - 1)
        if call.depth == 0:
            call.codes = call.valid = None
        return None

    def codes_for(self, input_ids: torch.Tensor) -> torch.Tensor:
        fn = self.modality_fn or self.default_fn
        codes = fn(input_ids)
        if not isinstance(codes, torch.Tensor) or tuple(codes.shape) != tuple(input_ids.shape):
            raise ValueError(f"modality_fn: expected a tensor of codes shaped like input_ids {tuple(input_ids.shape)}, "
                             f"got {getattr(codes, 'shape', type(codes).__name__)}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex:
            raise TypeError(f"modality_fn: expected integer codes 0/1/2, got {codes.dtype}")
        # checked as returned, before narrowing to int32 (an int64 2^32 + 1 would read as 1); once per model call,
        # one aminmax: a ValueError on CPU, a device-side assert elsewhere (no host synchronisation)
        if codes.dtype != torch.bool:
            check_ids_in_range(codes, 0, 3, "modality_fn: expected codes 0 (text), 1 (vision) or 2 (never skip)")
        return codes.to(device=input_ids.device, dtype=torch.int32)

    def set_inputs(self, input_ids: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor]) -> None:
        call = self.call
        call.codes = call.valid = None
        if input_ids is None or input_ids.dim() != 2:
            return
        call.codes = self.codes_for(input_ids)
        B, S = input_ids.shape
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[0] == B \
                and attention_mask.shape[1] >= S:
            call.valid = attention_mask[:, attention_mask.shape[1] - S:].to(input_ids.device).bool()

    def for_tokens(self, lead_shape) -> tuple:
        """(codes [T] or None, valid [T] or None) for a block input of leading shape ``lead_shape``."""
        call = self.call
        if call.codes is None or tuple(call.codes.shape) != tuple(lead_shape):
            return None, None
        valid = None if call.valid is None else call.valid.reshape(-1)
        return call.codes.reshape(-1), valid


class _DefaultModalityFn:
    """``input_ids -> codes`` int32: ``vision_ids`` -> 1, ``special_ids`` -> 2, the rest 0. A module-level class
    holding plain lists (not a closure), so that a patched model pickles (``torch.save(model)``)."""

    def __init__(self, vision_ids: List[int], special_ids: List[int]):
        self.vision_ids, self.special_ids = list(vision_ids), list(special_ids)

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        codes = torch.zeros(input_ids.shape, dtype=torch.int32, device=input_ids.device)
        if self.vision_ids:
            codes.masked_fill_(torch.isin(input_ids, torch.tensor(self.vision_ids, device=input_ids.device)), 1)
        if self.special_ids:
            codes.masked_fill_(torch.isin(input_ids, torch.tensor(self.special_ids, device=input_ids.device)), 2)
        return codes

    def __repr__(self) -> str:
        return f"default_modality_fn(vision_ids={self.vision_ids}, special_ids={self.special_ids})"


def default_modality_fn(config) -> Callable[[torch.Tensor], torch.Tensor]:
    """Codes from a model config: image / video placeholder ids -> 1, vision start / end ids -> 2, the rest 0.

    The callable returned has ``vision_ids`` and ``special_ids`` (lists of token ids)."""
    def ids_of(names):
        out = []
        for c in (config, getattr(config, "text_config", None)):
            for n in names:
                v = getattr(c, n, None) if c is not None else None
                if isinstance(v, int) and v >= 0 and v not in out:
                    out.append(v)
        return out

    vision = ids_of(("image_token_id", "video_token_id", "image_token_index", "video_token_index"))
    special = [i for i in ids_of(("vision_start_token_id", "vision_end_token_id", "boi_token_index",
                                  "eoi_token_index")) if i not in vision]
    return _DefaultModalityFn(vision, special)


# ----------------------------------------------------------------------------------- patched forward
def _router_logits(st: _BlockState, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    gate = block.router if st.kind == "gpt_oss" else block.gate
    if gate._forward_hooks or gate._forward_pre_hooks:  # e.g. HF's router-logits recorder: let it see the call
        return gate(x)[0]
    if st.kind == "gpt_oss":
        return F.linear(x, gate.weight, gate.bias)
    if st.routing.fp32_logits:
        return F.linear(x.float(), gate.weight.float())
    return F.linear(x, gate.weight)


def _patched_forward(self: nn.Module, hidden_states: torch.Tensor, *args, **kwargs):
    st: _BlockState = self.__dict__[_STATE]
    ms = st.model
    lead = hidden_states.shape[:-1]
    H = hidden_states.shape[-1]
    x = hidden_states.reshape(-1, H)
    codes, valid = ms.for_tokens(lead)
    if codes is not None and codes.device != x.device:  # a model split over devices
        codes = codes.to(x.device)
        valid = None if valid is None else valid.to(x.device)
    r = st.routing
    logits = _router_logits(st, self, x)
    cfg = ms.config
    rule = "none" if cfg is None else cfg.rule
    bias = self.gate.e_score_correction_bias if r.correction_bias else None
    ids, w = route(logits, r.top_k, scoring=r.scoring, renormalize=r.renormalize, n_group=r.n_group,
                   topk_group=r.topk_group, correction_bias=bias, routed_scaling_factor=r.scaling,
                   skip_rule=rule, skip_params=[] if cfg is None else cfg.skip_params(st.layer),
                   modality=None if rule == "none" else codes,
                   skip_renormalize=None if cfg is None else cfg.skip_renormalize())
    off = ms.ablation.get(st.layer)
    if off:
        c = codes if codes is not None else torch.zeros(x.shape[0], dtype=torch.int32, device=x.device)
        drop = torch.isin(c, torch.tensor(sorted(off), dtype=c.dtype, device=c.device))[:, None]
        ids = ids.masked_fill(drop, -1)
        w = w.masked_fill(drop, 0.0)
    st.count(ids, codes, valid)
    if st.kind == "gpt_oss":
        ex = self.experts
        out = experts(x, ex.gate_up_proj.transpose(1, 2), ex.down_proj.transpose(1, 2), ids, w,
                      w13_bias=ex.gate_up_proj_bias, w2_bias=ex.down_proj_bias, activation="swiglu_oai",
                      swiglu_alpha=float(ex.alpha), swiglu_limit=float(ex.limit), interleaved=True)
        return out.reshape(hidden_states.shape), w.to(hidden_states.dtype)
    ex = self.experts
    sh = _shared_module(self)
    shared_kw = _fused_shared_kwargs(st, self, sh)
    out = experts(x, ex.gate_up_proj, ex.down_proj, ids, w, **(shared_kw or {}))
    if sh is not None and shared_kw is None:  # not fusable now (biases, activation, quantized linears): call it
        s = sh(x)
        if st.kind == "qwen2_moe":
            s = torch.sigmoid(self.shared_expert_gate(x)) * s
        out = out + s.to(out.dtype)
    return out.reshape(hidden_states.shape)


# ----------------------------------------------------------------------------------------- public API
def _state(model: nn.Module) -> _ModelState:
    st = model.__dict__.get(_MODEL_STATE)
    if not isinstance(st, _ModelState):
        raise ValueError("model: not patched (call leankern.moe.hf.patch_model first)")
    return st


def is_patched(model: nn.Module) -> bool:
    return isinstance(model.__dict__.get(_MODEL_STATE), _ModelState)


def moe_blocks(model: nn.Module) -> List[nn.Module]:
    """The supported sparse-MoE blocks of ``model`` in model order (index = MoE layer index)."""
    return [m for m in model.modules() if _block_kind(m) is not None]


def _check_config(config: Optional[SkipConfig], n_layers: int) -> None:
    if config is None:
        return
    if not isinstance(config, SkipConfig):
        raise TypeError(f"config: expected a SkipConfig or None, got {type(config).__name__}")
    if config.rule == "modes" and len(config.alpha) != n_layers:
        raise ValueError(f"config.alpha: expected one (alpha_text, alpha_vision) pair per MoE layer ({n_layers}), "
                         f"got {len(config.alpha)}")
    config.check()  # the ops' rules on every layer's parameters, naming the field (param, tau_text, ...)


def _check_already_patched(model: nn.Module, blocks: List[nn.Module]) -> None:
    """A block carries one patch state: patching it again through another module (``patch_model(model.model)``,
    then ``patch_model(model)``, or the other way round) would overwrite the first module's state."""
    for b in blocks:
        st = b.__dict__.get(_STATE)
        if isinstance(st, _BlockState):
            name = next((n for n, m in model.named_modules() if m is b), "") or "(the model itself)"
            owner = getattr(st.model, "owner_name", "module")
            raise ValueError(f"model: MoE block {name!r} ({type(b).__name__}, MoE layer {st.layer}) is already patched "
                             f"through another module (a {owner}); call unpatch_model on that module first")


def patch_model(model: nn.Module, config: Optional[SkipConfig] = None, *,
                modality_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> nn.Module:
    """Make every supported sparse-MoE block of ``model`` run through leankern's MoE ops (in place; returns it).

    ``config``: the skip rule (None or rule ``"none"``: no skipping, the original outputs within rounding).
    ``modality_fn(input_ids [B, S]) -> codes [B, S]`` (0 text, 1 vision, 2 never skip) replaces the codes read from
    the config. Patching a patched model updates its config (and ``modality_fn`` when given), keeping statistics.
    A block already patched through another module (``patch_model(model.model)`` then ``patch_model(model)``, or the
    other way round) is a ``ValueError`` naming it: :func:`unpatch_model` that module first. A patched model pickles
    (``torch.save(model)``) when its ``modality_fn`` does. ``config`` is checked by :meth:`SkipConfig.check`.
    See the module docstring for the routers, the modality hook and the statistics.
    """
    if is_patched(model):
        ms = _state(model)
        _check_config(config, len(ms.blocks))
        ms.config = config
        if modality_fn is not None:
            ms.modality_fn = modality_fn
        return model
    blocks = moe_blocks(model)
    if not blocks:
        raise ValueError(f"model: no supported sparse-MoE block in {type(model).__name__} "
                         f"(supported: {', '.join(SUPPORTED_BLOCKS)})")
    _check_already_patched(model, blocks)
    _check_config(config, len(blocks))
    ms = _ModelState(model, config, modality_fn)
    states = [_BlockState(i, _block_kind(b), b, ms) for i, b in enumerate(blocks)]  # validate all before patching
    for b, st in zip(blocks, states):
        b.__dict__[_STATE] = st
        b.forward = functools.partial(_patched_forward, b)  # pickles (a MethodType of b would not: torch.save)
    ms.blocks = blocks
    h1 = model.register_forward_pre_hook(ms.pre_hook, with_kwargs=True)
    h2 = model.register_forward_hook(ms.post_hook, always_call=True)
    ms.hook_ids = [h1.id, h2.id]
    model.__dict__[_MODEL_STATE] = ms
    return model


def unpatch_model(model: nn.Module) -> nn.Module:
    """The original block forwards, hooks removed, nothing of the patch left. Returns the model."""
    ms = _state(model)
    for hid in ms.hook_ids:
        for d in (model._forward_pre_hooks, model._forward_hooks):
            d.pop(hid, None)
        for name in ("_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_hooks_with_kwargs"):
            getattr(model, name, {}).pop(hid, None)
    for b in ms.blocks:
        b.__dict__.pop("forward", None)
        b.__dict__.pop(_STATE, None)
    del model.__dict__[_MODEL_STATE]
    return model


def set_skip_config(model: nn.Module, config: Optional[SkipConfig]) -> None:
    """Change the skip rule of a patched model (statistics are kept; see :func:`reset_skip_stats`)."""
    ms = _state(model)
    _check_config(config, len(ms.blocks))
    ms.config = config


def set_modality_fn(model: nn.Module, modality_fn: Optional[Callable]) -> None:
    """Replace the modality function (None: back to the config's image / video / special ids)."""
    _state(model).modality_fn = modality_fn


def modality_codes(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The codes ``[B, S]`` int32 the patched model uses for ``input_ids``."""
    return _state(model).codes_for(input_ids)


def _modality_code(modality) -> int:
    if isinstance(modality, str):
        if modality not in MODALITIES:
            raise ValueError(f"modality: expected one of {MODALITIES} or a code 0/1/2, got {modality!r}")
        return MODALITIES.index(modality)
    if int(modality) not in (0, 1, 2):
        raise ValueError(f"modality: expected a code 0 (text), 1 (vision) or 2 (never skip), got {modality}")
    return int(modality)


def set_ablation(model: nn.Module, layer: int, modality, enabled: bool = True) -> None:
    """MoE layer ``layer`` keeps no routed slot for tokens of ``modality`` (0 / "text", 1 / "vision", 2 / "never")
    while ``enabled``; its shared expert still runs. Applied after the skip rule; counted in the statistics."""
    ms = _state(model)
    if not 0 <= int(layer) < len(ms.blocks):
        raise ValueError(f"layer: expected 0 <= layer < {len(ms.blocks)} (MoE layers), got {layer}")
    code = _modality_code(modality)
    s = ms.ablation.setdefault(int(layer), set())
    if enabled:
        s.add(code)
    else:
        s.discard(code)
        if not s:
            del ms.ablation[int(layer)]


def clear_ablation(model: nn.Module) -> None:
    """Undo every :func:`set_ablation` on ``model``: each MoE layer again keeps the slots its skip rule keeps, for
    every modality. ``ValueError`` if ``model`` is not patched (:func:`patch_model`)."""
    _state(model).ablation.clear()


def reset_skip_stats(model: nn.Module) -> None:
    """Zero the kept / total slot counts every patched MoE block accumulates, so that :func:`skip_stats` reports the
    calls made after this one (all ratios read 0.0 until a block runs again). Needs no host synchronisation.
    ``ValueError`` if ``model`` is not patched (:func:`patch_model`)."""
    for b in _state(model).blocks:
        st = b.__dict__[_STATE]
        st.kept = st.total = None


def _ratio(kept: int, total: int) -> float:
    return 0.0 if total == 0 else 1.0 - kept / total


def skip_stats(model: nn.Module) -> dict:
    """Skip ratios since the last :func:`reset_skip_stats`: skipped slots / (non-padding tokens x k).

    Returns ``{"overall": float, "skip_ratio": float (the same), "skipped_slots": int, "total_slots": int (all
    layers), "per_layer": [float] (MoE layer order), "per_modality": {"text", "vision", "never"}: float,
    "kept": [int], "total": [int] (slots per layer), "per_layer_modality": [[text, vision, never]]}``;
    a ratio over zero slots is 0.0. Reading them synchronises with the device once.
    """
    ms = _state(model)
    kept, total = [], []
    for b in ms.blocks:
        st = b.__dict__[_STATE]
        kept.append([0, 0, 0] if st.kept is None else [int(v) for v in st.kept.cpu()])
        total.append([0, 0, 0] if st.total is None else [int(v) for v in st.total.cpu()])
    per_layer = [_ratio(sum(k), sum(t)) for k, t in zip(kept, total)]
    per_mod = {name: _ratio(sum(k[i] for k in kept), sum(t[i] for t in total)) for i, name in enumerate(MODALITIES)}
    k_all, t_all = sum(map(sum, kept)), sum(map(sum, total))
    return {"overall": _ratio(k_all, t_all), "skip_ratio": _ratio(k_all, t_all), "skipped_slots": t_all - k_all,
            "total_slots": t_all, "per_layer": per_layer,
            "per_modality": per_mod, "kept": [sum(k) for k in kept], "total": [sum(t) for t in total],
            "per_layer_modality": [[_ratio(k[i], t[i]) for i in range(3)] for k, t in zip(kept, total)]}
