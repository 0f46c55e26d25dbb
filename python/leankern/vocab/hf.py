"""Hugging Face drop-in for VocabTailor (arXiv 2508.15229): per-request vocabulary LM head.

>>> tailor(model, vocab_set)              # in place; model.generate() works unchanged
>>> out = model.generate(input_ids, max_new_tokens=32)   # global token ids, only from the request's set
>>> untailor(model)                       # the original head (same module and Parameter objects)

:func:`tailor` replaces the causal LM's output head (``model.get_output_embeddings()``) by a
:class:`TailoredHead` that computes logits only over the request's vocabulary
``vocab_set.ids ∪ vocab_set.special_ids ∪ unique(prompt ids)`` with
:func:`leankern.vocab.gather_lm_head`, reading the original ``[V, H]`` weight Parameter in place.

**How the prompt reaches the head (the prefill rule).** A forward pre-hook on the top model sees
every call's ``input_ids`` (keyword or positional) and its cache. A call is a *prefill* — the start
of a new request — when it has no cache (``cache`` / ``past_key_values`` is None: a plain forward,
or ``generate(use_cache=False)``, whose every step re-sends prompt + generated ids, all already in
the set), when the cache is empty (``cache.get_seq_length() == 0``: transformers 5 ``generate``
creates an empty ``DynamicCache`` before the first forward), or, on older versions, when
``cache_position[0] == 0``. At a prefill the head builds the request's vocabulary once from the
ids the attention mask keeps (left/right padding excluded; ``inputs_embeds`` only: static ∪
specials) and keeps it frozen for every later call with a non-empty cache (the decode steps).
Continuing from a filled cache therefore keeps the previous request's set; call
:meth:`TailoredHead.set_request` to choose one explicitly: the model's next top-level call keeps that set even
when the rule calls it a prefill (later calls follow the rule again). A batch of B prompts gets ONE union set
(every row shares the same K columns; an id in another row's prompt may win in this row). The hook holds no
objects: it looks the head (and a tied decode embedding) up on the model it is called on, so ``copy.deepcopy`` of a
tailored model is an independent tailored model.

**Speculative / assisted decoding.** A verifier's first forward is the prompt *and* the draft tokens with no
cache; by the rule above the drafts would join the request's set (ids outside the task set could then win, exactly
what a good draft proposes). :func:`leankern.specdec.generate` sets a tailored target's (and draft's) request from
the prompt alone before that call. Hugging Face ``model.generate(..., assistant_model=draft)`` makes the same first
call and cannot be told apart from a prefill: call ``model.get_output_embeddings().set_request(input_ids,
attention_mask)`` right before it (tested: greedy output then equals the tailored model's own ``generate``).

**Saving, casting, moving.** ``state_dict()`` holds the original head's entries under the original keys
(``lm_head.weight`` / ``lm_head.bias``, or a quantized head's ``codes`` / ``scales`` / ``planes`` ... buffers) also
when the head is kept outside the module tree (quantized, ``compact_head``): a tailored model's state_dict has the
untailored one's keys and values, and loads (strictly) into a tailored or an untailored model; a load into a
tailored model writes into the held original head and takes the current request's rows again. Exception: an
offloaded input embedding's table is not in ``state_dict()`` (as for :class:`OffloadedEmbedding`): save / load the
untailored model there. ``model.to(...)``, ``.half()``, ``.cuda()`` reach the held head (with ``compact_head`` only
dtype casts: its full table stays in host memory, and :func:`untailor` moves it to the model's device), so
:func:`untailor` gives back a head matching the model. The hooks are module-level callable objects holding names,
so ``torch.save(model)`` / ``torch.load(..., weights_only=False)`` round-trip a tailored model (it runs tailored).

**Logits.** ``full_logits=True`` (default): ``[B, L, V]`` rows filled with ``-inf`` outside the set
(:func:`leankern.vocab.scatter_to_full`), so ``generate``, every logits processor and sampler keep
working and return global ids. ``full_logits=False``: ``[B, L, K]`` subset logits, column ``k`` =
global id ``head.vocab_ids[k]`` (``head.request.to_global(local)``); ``generate`` needs
``full_logits=True`` (it indexes logits by token id). Logits come in the hidden states' dtype (what
``nn.Linear`` returns); sums are fp32. ``logits_to_keep`` needs nothing: the model slices the
hidden states before the head, which only sees ``[B, L', H]``.

**Soft caps** (Gemma-2/3 ``final_logit_softcapping``): HF applies ``cap * tanh(logits / cap)``
in the model's forward *after* the head; on a ``-inf`` it gives ``-cap``, a finite logit that
can tie with or beat saturated in-set logits and gets probability mass when sampling. While
tailored, the config's ``final_logit_softcapping`` is set to None (restored by :func:`untailor`)
and the head applies the cap itself inside ``gather_lm_head`` (``soft_cap=``), before the scatter:
outside ids stay exactly ``-inf``. Scales applied after the head (``logit_scale``, ``logits_scaling``)
keep ``-inf`` as is and need nothing.

**Quantized heads.** A head made an MX/NV :class:`leankern.nn.QuantLinear` or an
:class:`leankern.nn.SEFPLinear` by ``leankern.quantize_model(model, fmt, include_lm_head=True)`` is
tailored too: fewer bits per weight and fewer rows per step. At each prefill the request's ``K`` rows
are read out of the head (MX codes and scales from any stored layout, prepacked on CPU; every SEFP
plane) and kept for the request; every call runs :func:`leankern.mx.linear` over them (the head's
``act_fmt`` and Hadamard rotation included) or :func:`leankern.sefp.linear` at the head's current
width (``set_precision`` switches it), so the in-set logits are the quantized head's own.

**Offloading.** ``offload_embedding=True`` replaces the input embedding by an
:class:`~leankern.vocab.embedding.OffloadedEmbedding` (table in host memory, rows gathered per
call). For tied models (``config.tie_word_embeddings``) the head still reads the same weight on
the compute device, so the device still holds ``V x H``; ``compact_head=True`` makes the head keep
only the request's ``K`` rows there (gathered at prefill from the host copy of the weight, which is
moved off an accelerator when nothing else there needs it): the VocabTailor memory claim.
:func:`vocab_bytes` reports what stays resident, before and after.

**Tied decode embeddings from the head rows.** In a tied model with both ``offload_embedding=True`` and
``compact_head=True`` the input embedding is a :class:`_TiedOffloadedEmbedding`: every token the head
can emit is one of the request's ``K`` rows it already keeps on the compute device, so at a decode
step (a top-level call the prefill rule does not classify as a prefill; the model's hooks arm the
embedding for the duration of that call only) the input embedding of the generated ids is read from
those rows (``RequestVocab.to_local`` on the device, then a row gather; the model's embed scale, e.g. Gemma's
``embed_scale``, applied the same way), not fetched from the host table: no device -> host copy of
the ids, no host gather, no host -> device copy of rows. Prefill calls, calls without a cache, and
calls that do not come through the top model use the host gather as before. Nothing extra is
resident (the rows are counted by the head in :func:`vocab_bytes`). ``tied_decode`` chooses what
happens to a decode-step id outside the set (legitimate with ``generate``: a finished row of a
batch is fed ``pad_token_id``; assisted-generation candidates; new tokens appended to a filled cache).
Membership is known only on the device, so checking it is what costs a sync:

* ``"checked"`` (default): exact. One bool ("all ids inside?") is read back per decode call: free for
  CPU tensors, one scalar device -> host read on a GPU (``generate`` already synchronises every step
  on its stopping check, so the queue is drained then and the read costs microseconds); when some id
  is outside, the whole call takes the host gather.
* ``"assert"``: sync-free, nothing read back (for CUDA graphs / callers that guarantee decode ids lie
  in the set: no batch padding of finished rows, no assistant). An id outside the set is an error:
  ``ValueError`` for CPU tensors, an asynchronous device-side assert on a GPU (fatal to the CUDA
  context, like the package's other on-device value checks); the gather itself is clamped in bounds.
  On a CPU it behaves like ``"checked"`` but raises instead of falling back.
* ``"off"``: always the host gather (the plain :class:`OffloadedEmbedding` behaviour).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Optional

import torch
from torch import nn

from .. import mx
from ..core import check_choice, check_value_on_device
from ..nn.quant_linear import QuantLinear
from ..nn.sefp_linear import SEFPLinear
from . import gather_lm_head, scatter_to_full
from .ref import apply_cap
from .embedding import OffloadedEmbedding
from .vocab_set import RequestVocab, VocabSet

__all__ = ["tailor", "untailor", "vocab_bytes", "is_tailored", "request_vocab", "TailoredHead", "is_prefill"]


# --------------------------------------------------------------------------------- the head
class TailoredHead(nn.Module):
    """LM head over the current request's vocabulary (built by :func:`tailor`; see the module docstring).

    Attributes
    ----------
    weight, bias : the original head's Parameters (in place; not registered with ``compact_head``); absent for a
        quantized head
    original : the head :func:`untailor` puts back (``nn.Linear``, ``QuantLinear`` or ``SEFPLinear``; unregistered):
        ``state_dict`` / ``load_state_dict`` read and write its entries under its own keys, ``model.to(...)`` casts
        it (and moves it, unless ``compact``)
    quantized : bool, the original head is a :class:`leankern.nn.QuantLinear` (MX/NV block-quantized) or a
        :class:`leankern.nn.SEFPLinear`, kept unregistered as ``qlinear``: at each prefill the request's K rows are
        read out of it (``select_rows``: a few bytes per weight; any MX layout; every SEFP plane) and every call
        multiplies them as the full head does: :func:`leankern.mx.linear` with the head's ``act_fmt`` and rotation
        (rows prepacked on CPU), or :func:`leankern.sefp.linear` at the head's current width (``set_precision``
        keeps working). The K rows stay on the compute device for the request (K/V of the head's bytes); with
        ``compact_head`` the full quantized head is moved to host memory like a plain one
    request : RequestVocab or None, the current request's set (CPU ids)
    vocab_ids : int32 ``[K]`` on the compute device, sorted global ids of the current request
    request_device : RequestVocab or None, compact mode: ``request`` over ``vocab_ids`` (the same device tensor),
        whose ``to_local`` maps device ids to rows of the compact ``[K, H]`` table without a host round trip
    V : full vocabulary size (rows of the weight)
    soft_cap : float or None, applied inside the head (the model's own cap is off while tailored)

    Shape: hidden ``[..., H]`` -> logits ``[..., V]`` (``full_logits``) or ``[..., K]``.
    """

    def __init__(self, linear: nn.Linear, vocab_set: VocabSet, *, soft_cap: Optional[float], full_logits: bool,
                 compact: bool, device: torch.device, include_specials: bool = True):
        super().__init__()
        self.V, self.in_features = (int(s) for s in linear.weight.shape)
        self.vocab_set, self.soft_cap, self.full_logits = vocab_set, soft_cap, bool(full_logits)
        self.compact, self.include_specials, self.device = bool(compact), include_specials, torch.device(device)
        self.quantized = isinstance(linear, (QuantLinear, SEFPLinear))
        self.__dict__["original"] = linear  # plain attribute: the head untailor puts back (see _save_to_state_dict)
        if self.quantized:  # plain attributes: the rows are read once per request from wherever the module is
            self.__dict__["qlinear"] = linear
        elif self.compact:  # plain attributes: model.to(...) must not pull the full table back onto the device
            self.__dict__["weight"], self.__dict__["bias"] = linear.weight, linear.bias
        else:  # the same Parameter objects: state_dict keys and tying stay as they were
            self.weight, self.bias = linear.weight, linear.bias
        self.request: Optional[RequestVocab] = None
        self.vocab_ids: Optional[torch.Tensor] = None
        self.request_device: Optional[RequestVocab] = None
        self._rows = self._bias_rows = self._local_ids = None  # compact mode: [K, H], [K], arange(K)
        self._explicit = False  # set_request was called: the model's next top-level call keeps that request

    def set_request(self, prompt_ids=None, attention_mask=None) -> RequestVocab:
        """Build and freeze the request's vocabulary from ``prompt_ids`` ``[L]`` / ``[B, L]`` (None: static ∪
        specials only); positions where a same-shaped ``attention_mask`` is 0 are padding and left out.

        The model's next top-level call keeps this request even when the prefill rule calls it a prefill (no cache
        or an empty one), e.g. speculative decoding's first target call over prompt + draft tokens, or Hugging
        Face ``generate(assistant_model=...)``; later calls follow the prefill rule again."""
        req = self._build_request(prompt_ids, attention_mask)
        self._explicit = True
        return req

    def _build_request(self, prompt_ids=None, attention_mask=None) -> RequestVocab:
        """:meth:`set_request` without keeping it for the next call (what the prefill hook calls)."""
        ids = _kept_prompt_ids(prompt_ids, attention_mask)  # [N] int64 cpu
        req = self.vocab_set.for_request(ids, include_specials=self.include_specials, V=self.V)
        if len(req) == 0:
            raise ValueError("vocab_set: the request's vocabulary is empty (no static ids, specials or prompt ids)")
        self.request = req
        self._take_rows()
        return req

    def _take_rows(self) -> None:
        """Everything derived from the current request and the held head: the device ids and the K rows (at each
        request, and again after a load or a ``model.to(...)`` changed the head or the compute device)."""
        req = self.request
        self.vocab_ids = req.vocab_ids.to(self.device)  # [K] int32
        if self.quantized:  # the K rows' codes and scales (or planes and exponents), once per request
            q = self.qlinear
            gids = req.vocab_ids.to(q.weight.device, torch.int64)
            rows = q.weight.select_rows(gids).to(self.device)  # MXTensor (row-major) / SEFPTensor [K, H]
            if isinstance(q, QuantLinear) and self.device.type == "cpu":
                rows = rows.prepacked()  # the CPU kernels' fast layout
            self._rows = rows
            self._bias_rows = None if q.bias is None else q.bias.detach()[gids].to(self.device)
        elif self.compact:  # the K rows this request can emit, copied once onto the compute device
            gids = req.vocab_ids.to(self.weight.device, torch.int64)
            self._rows = self.weight.detach().index_select(0, gids).to(self.device)  # [K, H]
            self._bias_rows = None if self.bias is None else self.bias.detach()[gids].to(self.device)
            self._local_ids = torch.arange(len(req), dtype=torch.int32, device=self.device)
            # validated again on the device (a few syncs, once per request, at prefill); shares vocab_ids' storage
            self.request_device = RequestVocab(self.vocab_ids, req.V)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.request is None:  # head called without a prefill through the model (e.g. lm_head(h) by hand)
            self._build_request(None)
        if self.quantized:
            logits = self._quantized_logits(hidden)
        else:
            logits = self._plain_logits(hidden)
        if not self.full_logits:
            return logits
        lead, K = logits.shape[:-1], logits.shape[-1]
        full = scatter_to_full(logits.reshape(-1, K), self.vocab_ids, self.V)  # [N, V], -inf outside the set
        return full.reshape(*lead, self.V)

    @property
    def wrapped_layer(self) -> Optional[nn.Module]:
        """The quantized head this one reads (``QuantLinear`` / ``SEFPLinear``), else None: what
        :func:`leankern.set_precision` switches under this module's name."""
        return self.__dict__.get("qlinear")

    def _quantized_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., K]`` in hidden's dtype: the head's own product over the K rows, then the cap in fp32."""
        z = self.qlinear.linear_with(hidden, self._rows, self._bias_rows)  # [..., K]
        return z if self.soft_cap is None else apply_cap(z.float(), self.soft_cap, 1.0).to(hidden.dtype)

    def _plain_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.compact:
            w, ids, bias = self._rows, self._local_ids, self._bias_rows
        else:
            if self.vocab_ids.device != self.weight.device:  # the weight was moved by hand: follow it
                self.device, self.vocab_ids = self.weight.device, self.vocab_ids.to(self.weight.device)
            w, ids, bias = self.weight, self.vocab_ids, self.bias
        return gather_lm_head(hidden, w, ids, bias=bias, soft_cap=self.soft_cap, out_dtype=hidden.dtype)  # [..., K]

    # ------------------------------------------------------------- the held head: state_dict, casts, moves
    def _sync_original(self) -> None:
        """Keep the held head and this module's view of it the same objects (a load with ``assign=True``, or
        casts under ``torch.__future__.set_overwrite_module_params_on_conversion(True)``, replace Parameters)."""
        lin = self.original
        if self.quantized:
            return
        if self.compact:
            self.__dict__["weight"], self.__dict__["bias"] = lin.weight, lin.bias
        else:
            for k in ("weight", "bias"):
                if lin._parameters.get(k) is not self._parameters.get(k):
                    lin._parameters[k] = self._parameters.get(k)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """The original head's entries under the original keys (``weight`` / ``bias`` of an ``nn.Linear``; the
        buffers of a ``QuantLinear`` / ``SEFPLinear``): a tailored model's ``state_dict`` has the keys and values of
        the untailored one, whatever the head is kept as."""
        if self.quantized or self.compact:
            self.original._save_to_state_dict(destination, prefix, keep_vars)
        else:  # the registered Parameters are the original's
            super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Load into the held original head (its own checks: a quantized head's ``meta``, shapes), then take the
        current request's rows again from the loaded weights."""
        if self.quantized or self.compact:
            self.original._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                                unexpected_keys, error_msgs)
        else:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)
        self._sync_original()
        if self.request is not None:
            self._take_rows()

    def _apply(self, fn, recurse=True):
        """``model.to(...)``, ``.half()``, ``.cuda()`` ... reach the held head: dtype casts always; device moves too
        unless ``compact`` (its full table stays in host memory; :func:`untailor` moves it to the model's device).
        The compute device follows the model, and the current request's rows are taken again."""
        super()._apply(fn, recurse)
        lin = self.original
        if self.compact:
            lin._apply(_dtype_only(fn), recurse)
        elif self.quantized:
            lin._apply(fn, recurse)
        self._sync_original()
        self.device = fn(torch.empty(0, device=self.device)).device
        if self.request is not None:
            self._take_rows()
        return self

    def resident_tensors(self) -> list:
        """Tensors this head keeps on the compute device between calls (the in-place weight, or the K rows)."""
        if self.quantized:  # the K rows, plus the full quantized head unless compact (then host memory by convention)
            q = self.qlinear
            ts = [] if self._rows is None else [*_held_tensors(self._rows), self._bias_rows]
            if not self.compact:
                ts += [*_held_tensors(q.weight), q.bias]
        elif self.compact:
            ts = [self._rows, self._bias_rows]
        else:
            ts = [self.weight, self.bias]
        return [t for t in ts if t is not None and t.device == self.device]

    def extra_repr(self) -> str:
        K = None if self.request is None else len(self.request)
        return (f"V={self.V}, H={self.in_features}, K={K}, static={len(self.vocab_set)}, soft_cap={self.soft_cap}, "
                f"full_logits={self.full_logits}, compact={self.compact}")


def _dtype_only(fn):
    """``fn`` (a ``Module._apply`` function) reduced to its dtype cast: each tensor keeps its device. The new dtype
    is what ``fn`` makes of an empty tensor of the same dtype (and device)."""

    def cast(t: torch.Tensor) -> torch.Tensor:
        dtype = fn(torch.empty(0, dtype=t.dtype, device=t.device)).dtype
        return t if dtype == t.dtype else t.to(dtype)

    return cast


def _held_tensors(w) -> tuple:
    """The tensors of an MXTensor (codes, scales) or an SEFPTensor (planes, exponents)."""
    return (w.codes, w.scales) if isinstance(w, mx.MXTensor) else (w.planes, w.exponents)


def _kept_prompt_ids(prompt_ids, attention_mask) -> torch.Tensor:
    """The non-padding prompt ids as a flat int64 CPU tensor. Shape: [L] / [B, L] -> [N]."""
    if prompt_ids is None:
        return torch.zeros(0, dtype=torch.int64)
    if not isinstance(prompt_ids, torch.Tensor):
        prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.int64)
    ids = prompt_ids
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == ids.dim() == 2 \
            and attention_mask.shape[0] == ids.shape[0] and attention_mask.shape[1] >= ids.shape[1]:
        ids = ids[attention_mask[:, -ids.shape[1]:].to(ids.device) != 0]  # one sync per request, at prefill
    return ids.reshape(-1).to("cpu", torch.int64)


# ------------------------------------------------------------------------------- prefill rule
def _cache_length(cache) -> Optional[int]:
    """Tokens already in ``cache`` (a transformers Cache or a legacy tuple); None when unknown."""
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)):
        return 0 if len(cache) == 0 else int(cache[0][0].shape[-2])
    return None


def is_prefill(cache=None, cache_position: Optional[torch.Tensor] = None) -> bool:
    """The prefill rule: no cache, an empty cache, or (older transformers) ``cache_position[0] == 0``."""
    if cache_position is not None and isinstance(cache_position, torch.Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0]) == 0
    if cache is None:
        return True
    return _cache_length(cache) == 0


def _module_path(model: nn.Module, target: Optional[nn.Module]) -> Optional[str]:
    """The dotted name under which ``target`` is registered in ``model`` (None if it is not)."""
    if target is None:
        return None
    return next((name for name, mod in model.named_modules(remove_duplicate=False) if mod is target), None)


def _child(model: nn.Module, path: Optional[str], getter) -> Optional[nn.Module]:
    """``model.get_submodule(path)`` without its overhead (~0.3 us against ~2-4: this runs on every forward);
    ``getter(model)`` when the path is unknown (None)."""
    if path is None:
        return getter(model)
    mod = model
    for part in path.split("."):
        mod = mod._modules.get(part)
        if mod is None:
            return None
    return mod


def _output_embeddings(model):
    return model.get_output_embeddings()


def _input_embeddings(model):
    return model.get_input_embeddings()


class _PrefillHook:
    """Forward pre-hook of the top model: sets the head's request at each prefill (see the module docstring) and,
    for a tied model's :class:`_TiedOffloadedEmbedding`, arms its head-row path for a decode call.

    A module-level class holding only names (the forward's parameters, the head's and the embedding's dotted
    paths), so a tailored model pickles (``torch.save(model)``). The head and the embedding are looked up on the
    module it is called on, so a ``copy.deepcopy`` (or a pickled copy) of a tailored model sets its own head's
    request, never the original's. A request chosen by :meth:`TailoredHead.set_request` is kept by the next call,
    prefill or not."""

    def __init__(self, param_names, head_path: Optional[str], tied: bool, emb_path: Optional[str]):
        self.param_names, self.head_path = tuple(param_names), head_path
        self.tied, self.emb_path = bool(tied), emb_path

    def _arg(self, name, args, kwargs):
        if name in kwargs:
            return kwargs[name]
        i = self.param_names.index(name) if name in self.param_names else -1
        return args[i] if 0 <= i < len(args) else None

    def __call__(self, module, args, kwargs):
        head = _child(module, self.head_path, _output_embeddings)
        if not isinstance(head, TailoredHead):  # the head was swapped out by hand: nothing to set
            return None
        cache = self._arg("cache", args, kwargs)
        if cache is None:
            cache = self._arg("past_key_values", args, kwargs)
        prefill = is_prefill(cache, kwargs.get("cache_position"))
        explicit, head._explicit = head._explicit, False  # an explicit set_request holds for this one call
        if (prefill and not explicit) or head.request is None:
            head._build_request(self._arg("input_ids", args, kwargs), self._arg("attention_mask", args, kwargs))
        emb = _child(module, self.emb_path, _input_embeddings) if self.tied else None
        if isinstance(emb, _TiedOffloadedEmbedding):
            emb._decode_step = not prefill
        return None


class _DisarmHook:
    """Forward hook of the top model (``always_call``): disarms the head-row path when the call ends, so calls
    that do not come through the top model (``model.model(...)`` by hand) always take the host gather. Like the
    pre-hook it holds a name and finds the embedding on the module it is called on: deepcopy- and pickle-safe."""

    def __init__(self, emb_path: Optional[str]):
        self.emb_path = emb_path

    def __call__(self, module, args, output):
        emb = _child(module, self.emb_path, _input_embeddings)
        if isinstance(emb, _TiedOffloadedEmbedding):
            emb._decode_step = False
        return None


# -------------------------------------------------------------------------------- tailoring
@dataclasses.dataclass
class _TailorState:
    """What :func:`untailor` needs to put back (kept on the head, outside the module tree)."""

    head: nn.Module
    embedding: Optional[nn.Module]  # the original input embedding when it was offloaded
    hooks: list  # RemovableHandles: the pre-hook (and the tied decode embedding's post hook)
    softcap_configs: list  # configs whose final_logit_softcapping was set to None
    moved_from: Optional[torch.device]  # compact_head: the weight's device before it went to host memory
    before: dict


def _softcap_configs(model) -> tuple:
    """(configs holding a final_logit_softcapping, the cap): the top config and its text config."""
    cfgs, cap = [], None
    top = getattr(model, "config", None)
    cands = [top] + ([top.get_text_config()] if hasattr(top, "get_text_config") else [])
    for c in cands:
        if c is not None and getattr(c, "final_logit_softcapping", None) is not None and all(c is not d for d in cfgs):
            cfgs.append(c)
            cap = float(c.final_logit_softcapping)
    if getattr(model, "final_logit_softcapping", None) is not None:  # read at init into the module: cannot switch off
        raise ValueError(f"{type(model).__name__}.final_logit_softcapping: the soft cap is a module attribute, "
                         "not read from the config; tailoring it is not supported")
    return cfgs, cap


def _offloaded(emb: nn.Module, device, head: Optional[TailoredHead] = None, mode: str = "checked") -> nn.Module:
    """An OffloadedEmbedding equal to ``emb`` (scaled embeddings such as Gemma's keep their scale); with ``head``
    (a tied model's compact head) a :class:`_TiedOffloadedEmbedding` reading decode steps from its rows."""
    if not isinstance(emb, nn.Embedding):
        raise TypeError("offload_embedding: expected the input embedding to be an nn.Embedding, "
                        f"got {type(emb).__name__}")
    plain = type(emb).forward is nn.Embedding.forward
    scale = getattr(emb, "embed_scale", None)
    if head is not None and (plain or isinstance(scale, torch.Tensor)):
        return _TiedOffloadedEmbedding(emb.weight, head, embed_scale=None if plain else scale, mode=mode,
                                       device=device, padding_idx=emb.padding_idx)
    if plain:
        return OffloadedEmbedding(emb.weight, device=device, padding_idx=emb.padding_idx)
    if isinstance(scale, torch.Tensor):
        return _ScaledOffloadedEmbedding(emb.weight, emb.embed_scale, device=device, padding_idx=emb.padding_idx)
    raise ValueError(f"offload_embedding: {type(emb).__name__} overrides nn.Embedding.forward in a way this drop-in "
                     "does not know; refusing to drop it silently")


class _ScaledOffloadedEmbedding(OffloadedEmbedding):
    """OffloadedEmbedding times ``embed_scale`` (Gemma's ``*TextScaledWordEmbedding``: rows * scale, table dtype)."""

    def __init__(self, weight, embed_scale: torch.Tensor, **kw):
        super().__init__(weight, **kw)
        self.register_buffer("embed_scale", embed_scale.detach().to(self.device), persistent=False)

    def forward(self, input_ids):
        return super().forward(input_ids) * self.embed_scale.to(self.dtype)


class _TiedOffloadedEmbedding(OffloadedEmbedding):
    """OffloadedEmbedding of a tied model tailored with ``compact_head=True``: decode steps read the compact head's
    ``[K, H]`` device rows (see "Tied decode embeddings from the head rows" in the module docstring).

    Outputs equal the host gather's bit for bit (same table values, same dtype conversion, same ``embed_scale``
    product). ``head_row_calls`` / ``host_calls`` count the forward calls served by each path.

    Shape: input_ids [...] -> [..., H] on ``device``.
    """

    MODES = ("checked", "assert", "off")

    def __init__(self, weight, head: TailoredHead, *, embed_scale: Optional[torch.Tensor] = None,
                 mode: str = "checked", **kw):
        super().__init__(weight, **kw)
        check_choice("tied_decode", mode, self.MODES)
        if embed_scale is not None:
            self.register_buffer("embed_scale", embed_scale.detach().to(self.device), persistent=False)
        else:
            self.embed_scale = None
        self.__dict__["head"] = head  # plain attribute: the head is registered once, as the model's output embedding
        self.mode = mode
        self._decode_step = False  # set by tailor's pre-hook for the duration of one top-level decode call
        self.head_row_calls = self.host_calls = 0

    def _scaled(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.embed_scale is None else rows * self.embed_scale.to(self.dtype)

    def forward(self, input_ids):
        head = self.head
        if (self._decode_step and self.mode != "off" and head.request_device is not None
                and isinstance(input_ids, torch.Tensor) and not input_ids.dtype.is_floating_point
                and not input_ids.dtype.is_complex and input_ids.dtype != torch.bool):
            out = self._from_head_rows(input_ids, head)
            if out is not None:
                self.head_row_calls += 1
                return out
        self.host_calls += 1
        return self._scaled(super().forward(input_ids))

    def _from_head_rows(self, input_ids: torch.Tensor, head: TailoredHead) -> Optional[torch.Tensor]:
        """Rows of the compact head for ids inside the request's set; None -> take the host gather."""
        local = head.request_device.to_local(input_ids.to(head.device, non_blocking=True))  # [...] int64, -1 outside
        inside = (local >= 0).all()
        if self.mode == "checked":
            if not bool(inside):  # free on CPU; one scalar read back on a GPU
                return None
        else:  # "assert": nothing read back on a GPU
            check_value_on_device(inside, "input_ids: a decode step of a model tailored with tied_decode='assert' "
                                  "got token ids outside the request's vocabulary (e.g. a finished row's pad token); "
                                  "use tied_decode='checked'")
            local = local.clamp_min(0)  # keeps the gather in bounds until the device assert fires
        rows = torch.nn.functional.embedding(local, head._rows)  # [..., H], table dtype
        return self._scaled(rows.to(self.device).to(self.dtype))


def is_tailored(model) -> bool:
    return isinstance(model.get_output_embeddings(), TailoredHead)


def request_vocab(model) -> Optional[RequestVocab]:
    """The tailored model's current request vocabulary (None before the first prefill)."""
    head = model.get_output_embeddings()
    if not isinstance(head, TailoredHead):
        raise ValueError(f"model: expected a model tailored by leankern.vocab.tailor, got head {type(head).__name__}")
    return head.request


def tailor(model, vocab_set: VocabSet, *, offload_embedding: bool = False, full_logits: bool = True,
           compact_head: bool = False, include_specials: bool = True, tied_decode: str = "checked"):
    """Make ``model`` (a transformers causal LM) compute logits over each request's vocabulary only. In place.

    Parameters
    ----------
    model : a ``*ForCausalLM`` whose ``get_output_embeddings()`` is an ``nn.Linear`` ``[V, H]``, an MX/NV
        :class:`leankern.nn.QuantLinear` or an :class:`leankern.nn.SEFPLinear` (``quantize_model(...,
        include_lm_head=True)``: the request's rows are read out of it once per request, see :class:`TailoredHead`)
    vocab_set : VocabSet, the static task vocabulary (+ its special ids)
    offload_embedding : keep the input embedding's table in host memory (:class:`OffloadedEmbedding`)
    full_logits : return ``[.., V]`` rows with -inf outside the set (default; needed by ``generate``),
        else ``[.., K]`` subset logits (global ids: ``model.get_output_embeddings().vocab_ids``)
    compact_head : keep only the request's K head rows on the compute device (see the module docstring)
    include_specials : add ``vocab_set.special_ids`` to every request
    tied_decode : tied models with ``offload_embedding`` and ``compact_head``: decode steps read their input
        embeddings from the head's K device rows; ``"checked"`` (exact, one bool read per decode call),
        ``"assert"`` (sync-free; ids outside the set are an error) or ``"off"`` (always the host gather).
        See the module docstring. Ignored otherwise.

    Returns the same ``model``. :func:`untailor` undoes it.

    Speculative decoding: :func:`leankern.specdec.generate` takes a tailored target (``full_logits=True``) as is.
    For Hugging Face ``model.generate(input_ids, assistant_model=draft)``, call
    ``model.get_output_embeddings().set_request(input_ids, attention_mask)`` first: its first forward is prompt +
    candidates with an empty cache, which the prefill rule would take for the prompt (the candidates would join
    the set). See the module docstring.

    One request at a time: the tailored head (and a tied decode embedding) holds the vocabulary of the last
    prefill or :meth:`TailoredHead.set_request`. Requests interleaved on one model (two threads, or two ``generate``
    loops stepped in turn) read each other's vocabulary and can emit ids outside their own set. Serve concurrent
    requests from one tailored copy each (``copy.deepcopy``), or hold a lock for a whole request (its prefill and
    every decode step); steps of one request may run on different threads.
    """
    if not isinstance(vocab_set, VocabSet):
        raise TypeError(f"vocab_set: expected a leankern.vocab.VocabSet, got {type(vocab_set).__name__}")
    check_choice("tied_decode", tied_decode, _TiedOffloadedEmbedding.MODES)
    linear = model.get_output_embeddings()
    if isinstance(linear, TailoredHead):
        raise ValueError("model: already tailored; call untailor(model) first")
    quantized = isinstance(linear, (QuantLinear, SEFPLinear))
    if not (quantized or isinstance(linear, nn.Linear)):
        raise TypeError("model.get_output_embeddings(): expected an nn.Linear, a leankern QuantLinear or SEFPLinear "
                        f"head, got {type(linear).__name__}")
    before = vocab_bytes(model)
    emb = model.get_input_embeddings()
    device = linear.weight.device  # (an MXTensor / SEFPTensor has .device too)
    tied = not quantized and isinstance(emb, nn.Embedding) and emb.weight.data_ptr() == linear.weight.data_ptr()
    cfgs, cap = _softcap_configs(model)
    moved_from = None
    if compact_head and device.type != "cpu" and (not tied or offload_embedding):
        moved_from = device  # nothing else on the device reads the full table: move it to host memory
        if quantized:
            linear.to("cpu")
        else:
            linear.weight.data = linear.weight.data.to("cpu")
    head = TailoredHead(linear, vocab_set, soft_cap=cap, full_logits=full_logits, compact=compact_head, device=device,
                        include_specials=include_specials)
    emb_device = emb.weight.device if moved_from is None or not tied else moved_from
    new_emb = None
    if offload_embedding and tied and compact_head and tied_decode != "off":
        new_emb = _offloaded(emb, emb_device, head=head, mode=tied_decode)
    elif offload_embedding:
        new_emb = _offloaded(emb, emb_device)
    for c in cfgs:  # the head applies the cap (before the -inf scatter); the model must not apply it again
        c.final_logit_softcapping = None
    if new_emb is not None:
        model.set_input_embeddings(new_emb)
    model.set_output_embeddings(head)
    names = [n for n in inspect.signature(model.forward).parameters]
    tied_emb = new_emb if isinstance(new_emb, _TiedOffloadedEmbedding) else None
    # the hooks name the head and the embedding by path, looked up per call: a deepcopy of the model uses its own
    head_path, emb_path = _module_path(model, head), _module_path(model, tied_emb)
    pre_hook = _PrefillHook(names, head_path, tied_emb is not None, emb_path)
    hooks = [model.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    if tied_emb is not None:
        hooks.append(model.register_forward_hook(_DisarmHook(emb_path), always_call=True))
    head.__dict__["_tailor_state"] = _TailorState(linear, emb if new_emb is not None else None, hooks,
                                                  [(c, cap) for c in cfgs], moved_from, before)
    return model


def untailor(model):
    """Put back the original head (the same module and Parameter objects, bit for bit, with whatever casts, moves
    and loads the tailored model went through since), the input embedding and the soft cap; remove the hook.
    Returns the model."""
    head = model.get_output_embeddings()
    if not isinstance(head, TailoredHead):
        raise ValueError(f"model: not tailored (its head is {type(head).__name__})")
    st: _TailorState = head.__dict__["_tailor_state"]
    for h in st.hooks:
        h.remove()
    if head.compact:  # the full table went to host memory (tailor) or stayed there (model.to(...)): follow the model
        dev = head.device
        if isinstance(st.head, (QuantLinear, SEFPLinear)):
            if st.head.weight.device != dev:
                st.head.to(dev)
        else:
            for p in (st.head.weight, st.head.bias):
                if p is not None and p.device != dev:
                    p.data = p.data.to(dev)
    if st.embedding is not None:
        model.set_input_embeddings(st.embedding)
    model.set_output_embeddings(st.head)
    for c, cap in st.softcap_configs:
        c.final_logit_softcapping = cap
    return model


# ----------------------------------------------------------------------------- accounting
def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _current_bytes(model) -> dict:
    """Bytes of the input embedding and the head kept on the compute device (shared storage counted once in
    ``total``), and the offloaded tables' bytes in host memory / files (``host``)."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    device = head.device if isinstance(head, TailoredHead) else head.weight.device  # (an MXTensor has .device)
    parts = {"embedding": [], "head": []}
    host = {}
    if isinstance(emb, OffloadedEmbedding):  # what the module reports: 0 on the device, its table on the host
        parts["embedding"].append((("emb", id(emb)), emb.resident_bytes()))
        host[("t", emb.weight.data_ptr())] = emb.table_bytes()
    elif emb is not None and emb.weight.device == device:
        parts["embedding"].append((("t", emb.weight.data_ptr()), _nbytes(emb.weight)))
    if isinstance(head, TailoredHead):
        ts = head.resident_tensors()
        if head.quantized and head.compact:  # the QuantLinear's buffers: host memory, as the plain compact head's table
            q = head.qlinear
            host.update({("t", t.data_ptr()): _nbytes(t) for t in (*_held_tensors(q.weight), q.bias) if t is not None})
        elif head.compact:  # the full table is host memory by the same convention as OffloadedEmbedding's
            host[("t", head.weight.data_ptr())] = _nbytes(head.weight)
    else:
        held = ((*_held_tensors(head.weight), head.bias) if isinstance(head, (QuantLinear, SEFPLinear))
                else (head.weight, head.bias))
        ts = [t for t in held if t is not None and t.device == device]
    parts["head"] += [(("t", t.data_ptr()), _nbytes(t)) for t in ts]
    unique = dict(kv for p in parts.values() for kv in p)
    return {"device": str(device), "embedding": sum(b for _, b in parts["embedding"]),
            "head": sum(b for _, b in parts["head"]), "total": sum(unique.values()), "host": sum(host.values())}


def vocab_bytes(model) -> dict:
    """Vocabulary bytes resident on the compute device: ``{"device", "embedding", "head", "total", "host",
    "tailored", "K", "before": {...}}``.

    ``embedding`` / ``head``: bytes each module keeps on the compute device between calls
    (``OffloadedEmbedding.resident_bytes()``; the in-place tailored head keeps the full ``[V, H]``
    weight there, the compact one its ``[K, H]`` rows; a tied model's decode-time embedding reads
    those same rows, so the embedding stays 0); ``total`` counts a tied table once;
    ``host``: offloaded tables (host memory or a mapped file: by OffloadedEmbedding's convention
    they count here even when the compute device is the CPU). ``before``: the same numbers recorded
    when :func:`tailor` ran (the current ones when not tailored). ``K``: current request's set size.
    """
    now = _current_bytes(model)
    head = model.get_output_embeddings()
    tailored = isinstance(head, TailoredHead)
    before = head.__dict__["_tailor_state"].before if tailored else {k: v for k, v in now.items()}
    K = len(head.request) if tailored and head.request is not None else None
    return {**now, "tailored": tailored, "K": K, "before": {k: before[k] for k in now}}
