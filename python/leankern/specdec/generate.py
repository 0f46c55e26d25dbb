"""Speculative decoding loop for Hugging Face causal LMs on top of :func:`leankern.specdec.verify`.

A small draft model proposes ``k`` tokens with its own KV cache; the target scores them in one
forward over the new tokens with its KV cache; :func:`~leankern.specdec.verify` decides how many
are kept; both caches are cropped back to the kept prefix. Batch 1 only (one sequence, no padding):
this is a driver for tests, studies and demos, not a serving engine.

Invariant of the loop: each model's KV cache holds a prefix of the current sequence that stops
before its last token, so the next forward feeds ``sequence[cache_len:]`` (at least one token) and
its last logits row predicts the next token.
"""
from __future__ import annotations

import dataclasses
import inspect
import time

import torch

__all__ = ["GenerateResult", "generate"]


@dataclasses.dataclass
class GenerateResult:
    """What :func:`generate` returns.

    Attributes
    ----------
    sequences : torch.LongTensor
        Prompt followed by the generated tokens (like ``model.generate``).
        Shape: [1, prompt_len + num_new_tokens].
    num_target_calls, num_draft_calls : int
        Forward passes of each model (the first target call also prefills the prompt).
    acceptance_lengths : list of int
        Accepted drafts per verify step (not counting the correction/bonus token).
    mean_acceptance_length : float
        Mean of ``acceptance_lengths`` (0.0 when there were no steps).
    tokens_per_second, wall_seconds : float
        New tokens per second of wall time, and that wall time.
    """

    sequences: torch.Tensor
    num_target_calls: int
    num_draft_calls: int
    acceptance_lengths: list
    mean_acceptance_length: float
    tokens_per_second: float
    wall_seconds: float


class _CachedLM:
    """A causal LM plus its KV cache; ``cache_len`` tokens of the sequence are cached.

    ``prompt`` (``[1, L]``): a model tailored by :func:`leankern.vocab.tailor` gets its request's vocabulary from the
    prompt alone, set just before its first (cache-less) forward. The target's first forward is prompt + drafts,
    which the tailor hook would otherwise take for the prompt, letting the draft's tokens into the set."""

    def __init__(self, model, prompt=None):
        self.model = model
        self.cache = None
        self.cache_len = 0
        self.calls = 0
        self._tailored_head = _tailored_head(model) if prompt is not None else None
        self._prompt = prompt
        params = inspect.signature(model.forward).parameters
        self._keep_arg = "logits_to_keep" in params
        # transformers >= 5.x (late) renamed past_key_values to cache, in the forward and its output
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def forward(self, tokens: list, num_rows: int) -> torch.Tensor:
        """Feed ``tokens`` after the cached prefix; fp32 logits of the last ``num_rows`` positions.

        Shape: returns [num_rows, V].
        """
        device = self.model.device
        ids = torch.tensor([tokens], dtype=torch.long, device=device)  # [1, n]
        kwargs = {"logits_to_keep": num_rows} if self._keep_arg else {}
        kwargs[self._cache_arg] = self.cache
        if self.cache is None and self._tailored_head is not None:  # kept by this call (TailoredHead.set_request)
            self._tailored_head.set_request(self._prompt)
        out = self.model(input_ids=ids, use_cache=True, **kwargs)
        self.cache = out[self._cache_arg]
        self.cache_len += len(tokens)
        self.calls += 1
        return out.logits[0, -num_rows:].float()

    def crop(self, keep: int) -> None:
        """Drop cached positions ``keep`` and later (``crop(-n)`` removes n tokens in transformers 4.x and 5.x)."""
        remove = self.cache_len - keep
        if remove > 0:
            self.cache.crop(-remove)
            self.cache_len = keep


def _propose(draft: _CachedLM, sequence: list, k: int, sample: bool, temperature: float, gen, V):
    """``k`` draft tokens (argmax, or sampled from softmax(logits / temperature) with ``gen``); ``V``: the draft
    head's rows (its logits' expected width), or None.

    Returns (tokens list of k ints, draft_probs [k, V] fp32 or None).
    """
    tokens, probs = [], []
    feed = sequence[draft.cache_len:]
    for _ in range(k):
        row = draft.forward(feed, 1)  # [1, V]
        _check_full_logits("draft", row, V)
        logits = row[0]  # [V]
        if sample:
            p = torch.softmax(logits / temperature, dim=-1)
            tok = int(torch.multinomial(p.cpu(), 1, generator=gen))
            probs.append(p)
        else:
            tok = int(torch.argmax(logits))
        tokens.append(tok)
        feed = [tok]
    q = torch.stack(probs) if sample and probs else None
    return tokens, q


def _tailored_head(model):
    """The model's :class:`leankern.vocab.hf.TailoredHead` (``leankern.vocab.tailor``), else None."""
    from ..vocab.hf import TailoredHead  # late: the package's __init__ imports this module's siblings

    head = model.get_output_embeddings()
    return head if isinstance(head, TailoredHead) else None


def _head_rows(model):
    """Rows of the output head (the logits' width), None when the model exposes no head."""
    head = model.get_output_embeddings()
    if head is None:
        return None
    V = getattr(head, "V", None)  # a leankern.vocab.tailor head (its quantized kind holds no .weight)
    return int(V) if isinstance(V, int) else int(head.weight.shape[0])


def _vocab_size(model) -> int:
    rows = _head_rows(model)
    return rows if rows is not None else model.config.get_text_config().vocab_size


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _eos_ids(eos_token_id) -> frozenset:
    """The stop ids: an int, or a list / tuple of ints (as ``model.generate`` and HF configs hold them)."""
    if eos_token_id is None:
        return frozenset()
    if _is_int(eos_token_id):
        return frozenset((eos_token_id,))
    if isinstance(eos_token_id, (list, tuple)) and all(_is_int(v) for v in eos_token_id):
        return frozenset(eos_token_id)
    raise TypeError(f"eos_token_id: expected None, an int or a list / tuple of ints, got {eos_token_id!r} "
                    f"({type(eos_token_id).__name__})")


def _check_full_logits(name: str, logits: torch.Tensor, V) -> None:
    """``logits [n, V]`` (V: the head's rows; None: unknown, not checked). A head over a vocabulary subset
    (``leankern.vocab.tailor(..., full_logits=False)``) returns ``[n, K]`` columns that are not token ids."""
    if V is not None and logits.shape[-1] != V:
        raise ValueError(f"{name}: expected logits over the whole vocabulary (V={V} columns), got "
                         f"{logits.shape[-1]} columns (a model tailored with leankern.vocab.tailor(..., "
                         f"full_logits=False) returns subset logits: tailor it with full_logits=True)")


def _check_args(target, draft, input_ids, k, mode, max_new_tokens, temperature) -> None:
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids: expected shape [1, L] with L >= 1 (batch 1 only), got {tuple(input_ids.shape)}")
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected >= 0, got {max_new_tokens}")
    if mode not in ("greedy", "relaxed", "rejection", "typical"):
        raise ValueError(f"mode: expected 'greedy', 'relaxed', 'rejection' or 'typical', got {mode!r}")
    if temperature < 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature}")
    vt, vd = _vocab_size(target), _vocab_size(draft)
    if vt != vd:
        raise ValueError(f"draft: expected the target's vocabulary size {vt}, got {vd}")


@torch.inference_mode()
def generate(target, draft, input_ids, *, k=4, mode="greedy", max_new_tokens=32, relax_radius=0,
             action_range=None, temperature=0.0, seed=0, eos_token_id=None) -> GenerateResult:
    """Speculative decoding of one sequence with a draft model and :func:`leankern.specdec.verify`.

    Parameters
    ----------
    target, draft : transformers PreTrainedModel
        Causal LMs with the same vocabulary (``draft`` may be ``target`` itself). A model tailored by
        :func:`leankern.vocab.tailor` (``full_logits=True``) gets its request's vocabulary from the prompt alone
        (never from the drafts), so greedy mode reproduces the tailored target's own ``generate``.
    input_ids : torch.LongTensor
        The prompt, batch 1. Shape: [1, L].
    k : int
        Drafts per step (fewer near ``max_new_tokens``, so no forward is wasted).
    mode : {"greedy", "relaxed", "rejection", "typical"}
        Verification rule. ``greedy`` reproduces ``target.generate(do_sample=False)`` exactly;
        ``relaxed`` is Spec-VLA's (``relax_radius``, ``action_range``); ``rejection`` is lossless
        sampling from the target at ``temperature``; ``typical`` is Medusa's.
    max_new_tokens : int
        Tokens to generate (fewer if ``eos_token_id`` is emitted).
    relax_radius, action_range :
        Passed to ``verify`` in relaxed mode.
    temperature : float
        Used by ``rejection`` and ``typical``: the target is verified at this temperature and, in
        rejection mode, the draft samples its tokens from ``softmax(draft_logits / temperature)``
        (passed as ``draft_probs``). 0 means greedy verification (output = target greedy) with
        drafts sampled at temperature 1.
    seed : int
        Seeds the draft sampler (a ``torch.Generator``) and verify's uniforms (``seed=``, with a
        running ``offset=`` of T + B uniforms per call).
    eos_token_id : int, list / tuple of ints, or None
        Stop after one of these tokens is emitted (it is kept, like ``model.generate``, which takes the same
        forms: Hugging Face configs often hold a list); None never stops early. Anything else is a TypeError.

    Returns
    -------
    GenerateResult
        ``sequences`` Shape: [1, L + num_new_tokens] int64, on ``input_ids``' device.
    """
    from . import verify  # late: the package's __init__ imports this module's siblings

    _check_args(target, draft, input_ids, k, mode, max_new_tokens, temperature)
    eos_ids = _eos_ids(eos_token_id)
    t_rows, d_rows = _head_rows(target), _head_rows(draft)
    sample = mode == "rejection"
    gen = torch.Generator().manual_seed(seed)
    verify_kwargs = {"mode": mode}
    if mode == "relaxed":
        verify_kwargs.update(relax_radius=relax_radius, action_range=action_range)
    if mode in ("rejection", "typical"):
        verify_kwargs["temperature"] = torch.tensor([float(temperature)], device=target.device)
    draft_temperature = temperature if temperature > 0 else 1.0
    t_lm, d_lm = _CachedLM(target, input_ids), _CachedLM(draft, input_ids)
    sequence = input_ids[0].tolist()
    prompt_len, offset, acceptance = len(sequence), 0, []
    start = time.perf_counter()
    while len(sequence) - prompt_len < max_new_tokens:
        k_step = min(k, max_new_tokens - (len(sequence) - prompt_len) - 1)
        drafts, q = _propose(d_lm, sequence, k_step, sample, draft_temperature, gen, d_rows)
        base = len(sequence)
        logits = t_lm.forward(sequence[t_lm.cache_len:] + drafts, k_step + 1)  # [k_step + 1, V]
        _check_full_logits("target", logits, t_rows)
        dev = logits.device
        out, num_accepted = verify(
            torch.tensor(drafts, dtype=torch.int32, device=dev), torch.tensor([k_step], dtype=torch.int32, device=dev),
            logits[:k_step], logits[k_step:], draft_probs=q, max_drafts=k_step, **verify_kwargs,
            **({"seed": seed, "offset": offset} if sample else {}))
        offset += k_step + 1  # verify consumed T + B uniforms
        n = int(num_accepted[0])
        emitted = out[0, :n + 1].tolist()
        if -1 in emitted:
            raise RuntimeError("verify emitted -1: the target produced an invalid logits row (NaN or all -inf)")
        acceptance.append(n)
        matched = next((i for i, (a, b) in enumerate(zip(emitted, drafts)) if a != b), min(len(emitted), k_step))
        t_lm.crop(base + matched)  # cached drafts that are not in the sequence are dropped
        d_lm.crop(base + matched)
        sequence += emitted
        stop = next((i for i in range(base, len(sequence)) if sequence[i] in eos_ids), None)  # earlier steps had none
        if stop is not None:
            del sequence[stop + 1:]
            break
    del sequence[prompt_len + max_new_tokens:]
    wall = time.perf_counter() - start
    new_tokens = len(sequence) - prompt_len
    return GenerateResult(
        sequences=torch.tensor([sequence], dtype=torch.long, device=input_ids.device),
        num_target_calls=t_lm.calls, num_draft_calls=d_lm.calls, acceptance_lengths=acceptance,
        mean_acceptance_length=sum(acceptance) / len(acceptance) if acceptance else 0.0,
        tokens_per_second=new_tokens / wall if wall > 0 else float("inf"), wall_seconds=wall)
