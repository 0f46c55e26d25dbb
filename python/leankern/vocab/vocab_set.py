"""Vocabulary sets (VocabTailor, arXiv 2508.15229): a static task vocabulary built offline from a
corpus of (input, output) pairs, and the per-request set = static ∪ specials ∪ the prompt's ids.

``build_static_vocab`` -> :class:`VocabSet` (saved as JSON) -> ``VocabSet.for_request(prompt_ids)``
-> :class:`RequestVocab`, whose sorted ``vocab_ids`` [K] select the LM-head rows; a local id
``k`` in [0, K) (an index into the subset logits) maps back to the global id ``vocab_ids[k]``.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import numbers
import os
import unicodedata
from typing import Callable, Iterable

import torch

__all__ = ["FORMAT", "RequestVocab", "VocabSet", "build_static_vocab", "char_script"]

FORMAT = "leankern.vocab_set/1"


# ------------------------------------------------------------------------------------ validation
def _check_id(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):  # Integral: numpy ints pass too
        raise TypeError(f"{name}: expected an int token id, got {type(v).__name__} {v!r}")
    if v < 0:
        raise ValueError(f"{name}: expected a token id >= 0, got {v}")


def _check_id_list(name: str, value, *, sorted_unique: bool) -> list:
    """``value`` as a list of non-negative Python ints (bool is rejected: JSON true is not an id)."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name}: expected a list of int token ids, got {type(value).__name__}")
    for i, v in enumerate(value):
        _check_id(f"{name}[{i}]", v)
    if sorted_unique:
        for i in range(1, len(value)):
            if value[i] <= value[i - 1]:
                raise ValueError(f"{name}: expected ids sorted ascending without duplicates, "
                                 f"got {value[i - 1]} then {value[i]} at index {i}")
    return [int(v) for v in value]


def _prompt_ids_tensor(prompt_ids) -> torch.Tensor:
    """Flatten ``prompt_ids`` (list of int, list of lists, 1-D or 2-D integer tensor) to int64 CPU [N]."""
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dtype.is_floating_point or prompt_ids.dtype.is_complex or prompt_ids.dtype == torch.bool:
            raise TypeError(f"prompt_ids: expected an integer tensor, got dtype {prompt_ids.dtype}")
        if prompt_ids.dim() not in (1, 2):
            raise ValueError("prompt_ids: expected a 1-D [L] or 2-D [B, L] tensor, "
                             f"got shape {tuple(prompt_ids.shape)}")
        return prompt_ids.detach().reshape(-1).to("cpu", torch.int64)
    if not isinstance(prompt_ids, (list, tuple)):
        raise TypeError(f"prompt_ids: expected a list of int or a tensor, got {type(prompt_ids).__name__}")
    flat = []
    for i, v in enumerate(prompt_ids):
        if isinstance(v, (list, tuple)):  # one row of a batch (rows may differ in length)
            flat.extend(_check_id_list(f"prompt_ids[{i}]", v, sorted_unique=False))
        else:
            _check_id(f"prompt_ids[{i}]", v)
            flat.append(int(v))
    return torch.tensor(flat, dtype=torch.int64)


def _check_integer_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor (int32 or int64), got dtype {t.dtype}")


# ---------------------------------------------------------------------------------- RequestVocab
@dataclasses.dataclass(frozen=True)
class RequestVocab:
    """The vocabulary of one request, frozen for its decode.

    Attributes
    ----------
    vocab_ids : torch.Tensor
        int32 global token ids, sorted ascending, no duplicates (sortedness makes ``to_local`` a
        binary search and gives a deterministic row order). Shape: [K].
    V : int or None
        Size of the full vocabulary when known; ids are then checked to be < V.

    The tensor itself is not copied on access: do not modify it in place.
    """

    vocab_ids: torch.Tensor
    V: int | None = None

    def __post_init__(self):
        ids = self.vocab_ids
        _check_integer_tensor("vocab_ids", ids)
        if ids.dim() != 1:
            raise ValueError(f"vocab_ids: expected a 1-D tensor [K], got shape {tuple(ids.shape)}")
        if self.V is not None and (isinstance(self.V, bool) or not isinstance(self.V, int) or self.V < 1):
            raise ValueError(f"V: expected None or an int >= 1, got {self.V!r}")
        if ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            limit = self.V if self.V is not None else 2**31
            if lo < 0 or hi >= limit:
                raise ValueError(f"vocab_ids: expected ids in [0, {limit}), got min {lo}, max {hi}")
            if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
                raise ValueError("vocab_ids: expected ids sorted ascending without duplicates")
        object.__setattr__(self, "vocab_ids", ids.to(torch.int32))

    def __len__(self) -> int:
        return self.vocab_ids.numel()

    def to(self, device) -> "RequestVocab":
        """The same vocabulary with ``vocab_ids`` on ``device``."""
        return RequestVocab(self.vocab_ids.to(device), self.V)

    def to_global(self, local_ids: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Global ids of local ids (indices into the K subset logits): ``vocab_ids[local_ids]``.

        ``-1`` (padding / no token) stays ``-1``; any other id outside [0, K) is an IndexError.
        ``check=False`` skips the range check (it reads the ids' min/max, a device sync on CUDA);
        the gather is then still bounds-checked by torch.

        Shape: local_ids [...] (int32 / int64, any device) -> int64 [...] on local_ids' device.
        """
        _check_integer_tensor("local_ids", local_ids)
        K = len(self)
        if check and local_ids.numel():
            lo, hi = int(local_ids.min()), int(local_ids.max())
            if lo < -1 or hi >= K:
                raise IndexError(f"local_ids: expected ids in [-1, K) = [-1, {K}) (-1 = padding), "
                                 f"got min {lo}, max {hi}")
        table = self.vocab_ids.to(local_ids.device, torch.int64)
        local = local_ids.long()
        pad = local == -1
        if K == 0:  # only -1 can be valid here; keep the gather in bounds
            return torch.full_like(local, -1)
        return torch.where(pad, -1, table[local.clamp_min(0)])

    def to_local(self, global_ids: torch.Tensor) -> torch.Tensor:
        """Positions of global ids in ``vocab_ids``; ids not in the set (including -1) give -1.

        Shape: global_ids [...] (int32 / int64, any device) -> int64 [...] on global_ids' device.
        """
        _check_integer_tensor("global_ids", global_ids)
        g = global_ids.long()
        K = len(self)
        if K == 0:
            return torch.full_like(g, -1)
        table = self.vocab_ids.to(g.device, torch.int64)
        pos = torch.searchsorted(table, g).clamp_max(K - 1)  # [...], in [0, K)
        return torch.where(table[pos] == g, pos, -1)

    def contains(self, global_ids: torch.Tensor) -> torch.Tensor:
        """Whether each global id is in the set. Shape: [...] -> bool [...]."""
        return self.to_local(global_ids) >= 0


# -------------------------------------------------------------------------------------- VocabSet
@dataclasses.dataclass
class VocabSet:
    """A static task vocabulary.

    Attributes
    ----------
    ids : list of int
        Global token ids, sorted ascending, unique (normalised on construction).
    tokenizer_name : str
        The tokenizer the ids belong to (``name_or_path`` of a Hugging Face tokenizer).
    special_ids : list of int
        The tokenizer's special tokens (BOS/EOS/PAD...), added to every request when asked.
    meta : dict
        JSON-serialisable provenance: ``documents``, ``tolerance``, ``scripts``, ``candidates``,
        ``script_filtered``, ``pruned``, ``pruned_mass``, ``doc_freq`` (aligned with ``ids``),
        ``vocab_size`` (when the tokenizer reports it), ... (see :func:`build_static_vocab`).
    """

    ids: list
    tokenizer_name: str
    special_ids: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.ids = sorted(set(_check_id_list("ids", self.ids, sorted_unique=False)))
        self.special_ids = sorted(set(_check_id_list("special_ids", self.special_ids, sorted_unique=False)))
        if not isinstance(self.tokenizer_name, str):
            raise TypeError(f"tokenizer_name: expected str, got {type(self.tokenizer_name).__name__}")
        if not isinstance(self.meta, dict):
            raise TypeError(f"meta: expected dict, got {type(self.meta).__name__}")

    def __len__(self) -> int:
        return len(self.ids)

    # ---------------------------------------------------------------------------- serialisation
    def save(self, path) -> None:
        """Write the set as JSON (one key per line; written to a temporary file, then renamed)."""
        payload = {"format": FORMAT, "tokenizer_name": self.tokenizer_name, "ids": self.ids,
                   "special_ids": self.special_ids, "meta": self.meta}
        lines = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in payload.items()]
        text = "{\n" + ",\n".join(lines) + "\n}\n"
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path) -> "VocabSet":
        """Read a file written by :meth:`save`; errors name the file and the offending field."""
        path = os.fspath(path)
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a JSON vocabulary set file ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: field 'format': expected {FORMAT!r}, got {data.get('format')!r}")
        for key in ("ids", "tokenizer_name"):
            if key not in data:
                raise ValueError(f"{path}: missing field {key!r}")
        try:
            ids = _check_id_list("ids", data["ids"], sorted_unique=True)
            return cls(ids=ids, tokenizer_name=data["tokenizer_name"],
                       special_ids=data.get("special_ids", []), meta=data.get("meta", {}))
        except (TypeError, ValueError) as e:
            raise type(e)(f"{path}: field {e}") from None

    # ------------------------------------------------------------------------------ per request
    def for_request(self, prompt_ids, *, include_specials: bool = True, device=None,
                    V: int | None = None) -> RequestVocab:
        """The request's vocabulary: ``ids ∪ special_ids ∪ unique(prompt_ids)``, sorted ascending.

        Build it once before prefill and keep it for the whole decode (the LM-head subset must
        not change between steps). For a batch ``prompt_ids`` [B, L] (or a list of rows) this is
        ONE union over all rows: every request of the batch shares the same K columns.
        ``V`` (default ``meta["vocab_size"]`` when recorded) bounds the ids.

        Shape: prompt_ids [L] or [B, L] (list or integer tensor) -> RequestVocab with vocab_ids [K].
        """
        prompt = _prompt_ids_tensor(prompt_ids)  # [N] int64 cpu
        if prompt.numel() and int(prompt.min()) < 0:
            raise ValueError(f"prompt_ids: expected token ids >= 0, got min {int(prompt.min())} "
                             "(strip padding like -1 before building the request vocabulary)")
        V = self.meta.get("vocab_size") if V is None else V
        parts = [torch.tensor(self.ids, dtype=torch.int64), prompt]
        if include_specials:
            parts.append(torch.tensor(self.special_ids, dtype=torch.int64))
        union = torch.unique(torch.cat(parts), sorted=True)  # [K]
        if union.numel():  # checked before the int32 narrowing: 2^32 + 5 must not become 5 (or 2^31 negative)
            top = int(union[-1])
            if V is not None and top >= V:
                raise ValueError(f"prompt_ids / ids: expected token ids < V = {V}, got {top}")
            if top >= 2**31:
                raise ValueError(f"prompt_ids / ids: expected token ids < 2^31 (int32 ids), got {top}")
        return RequestVocab(union.to(device=device or "cpu", dtype=torch.int32), V)


# --------------------------------------------------------------------------------- script filter
# unicodedata has no Script property; a character's script is approximated from the first word of
# its Unicode name ("LATIN SMALL LETTER A" -> Latin). Only letters and marks get a script this way;
# numbers, punctuation, symbols, separators and controls are "Common", combining marks named
# "COMBINING ..." are "Inherited" (they take the script of their base letter and always pass).
_NAME_ALIASES = {"CJK": "Han", "IDEOGRAPHIC": "Han", "KANGXI": "Han", "MATHEMATICAL": "Common",
                 "COMBINING": "Inherited", "MODIFIER": "Common"}


def char_script(ch: str) -> str:
    """Approximate Unicode script of one character, e.g. ``"Latin"``, ``"Cyrillic"``, ``"Han"``,
    ``"Hiragana"``, ``"Common"``, ``"Inherited"`` (``"Unknown"`` for an unnamed letter)."""
    if unicodedata.category(ch)[0] not in "LM":
        return "Common"
    try:
        words = unicodedata.name(ch).split()
    except ValueError:
        return "Unknown"
    if words[0] in ("FULLWIDTH", "HALFWIDTH") and len(words) > 1:  # "FULLWIDTH LATIN ..."
        words = words[1:]
    return _NAME_ALIASES.get(words[0], words[0].title())


def _text_in_scripts(text: str, allowed: frozenset) -> bool:
    """Every character's script (case-insensitive) is allowed; Inherited always passes."""
    for ch in text:
        s = char_script(ch).casefold()
        if s != "inherited" and s not in allowed:
            return False
    return True


# --------------------------------------------------------------------------------------- builder
def _tokenizer_functions(tokenizer, decode):
    """(encode: str -> list[int], decode: int -> str or None, specials, name, vocab_size)."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode"):  # Hugging Face (or `tokenizers`)
        def encode(text):
            out = tokenizer.encode(text, add_special_tokens=False)
            return list(getattr(out, "ids", out))  # tokenizers.Tokenizer returns an Encoding

        dec = decode or (lambda i: tokenizer.decode([i]))
        size = len(tokenizer) if hasattr(tokenizer, "__len__") else getattr(tokenizer, "get_vocab_size", lambda: None)()
        return (encode, dec, list(getattr(tokenizer, "all_special_ids", []) or []),
                getattr(tokenizer, "name_or_path", None), size)
    if callable(tokenizer):
        return (lambda text: list(tokenizer(text)), decode, [],
                getattr(tokenizer, "__qualname__", type(tokenizer).__name__), None)
    raise TypeError("tokenizer: expected a Hugging Face tokenizer (with .encode/.decode) or a callable "
                    f"str -> list[int], got {type(tokenizer).__name__}")


def _document_sets(pairs, encode, vocab_size) -> tuple:
    """Per pair, the set of output ids absent from its input; returns (list of sets, documents)."""
    if isinstance(pairs, (str, bytes)):
        raise TypeError("pairs: expected an iterable of (input_text, output_text) pairs, got a string")
    sets, n = [], 0
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise TypeError(f"pairs[{i}]: expected a pair (input_text: str, output_text: str), got {pair!r:.80}")
        ids_in = _check_id_list(f"tokenizer(pairs[{i}][0])", encode(pair[0]), sorted_unique=False)
        ids_out = _check_id_list(f"tokenizer(pairs[{i}][1])", encode(pair[1]), sorted_unique=False)
        if vocab_size is not None and max(ids_in + ids_out, default=-1) >= vocab_size:
            raise ValueError(f"tokenizer(pairs[{i}]): token id {max(ids_in + ids_out)} >= vocab size {vocab_size}")
        sets.append(set(ids_out) - set(ids_in))
        n += 1
    return sets, n


def _prune(doc_freq: dict, budget: float) -> tuple:
    """Drop (in place) the rarest ids of ``doc_freq`` (ascending df, ties larger id first) while
    the dropped df total stays <= ``budget``; returns (number dropped, dropped df total)."""
    pruned, dropped_mass = 0, 0
    for i, c in sorted(doc_freq.items(), key=lambda ic: (ic[1], -ic[0])):
        if dropped_mass + c > budget:
            break  # the rest are at least as frequent: none of them fits either
        dropped_mass += c
        pruned += 1
        del doc_freq[i]
    return pruned, dropped_mass


def build_static_vocab(pairs: Iterable, tokenizer, *, tolerance: float = 0.0, scripts: Iterable[str] | None = None,
                       include_specials: bool = True, tokenizer_name: str | None = None,
                       decode: Callable[[int], str] | None = None,
                       special_ids: Iterable[int] | None = None) -> VocabSet:
    """Static task vocabulary from (input_text, output_text) pairs (VocabTailor's recipe).

    1. For each pair (a "document"), the set of output token ids that do not occur in its input
       (tokens the model must generate, not copy from the prompt, which the request set adds).
    2. Document frequency ``df[id]`` = number of documents whose set contains ``id``.
    3. Optional script filter: keep a token only if every character of ``decode(id)`` has a
       script in ``scripts`` (e.g. ``{"Latin", "Common"}``, case-insensitive; see
       :func:`char_script` for the approximation; combining marks always pass, an empty decoded
       text passes). Filtered tokens do not count against the tolerance budget.
    4. Prune: visit tokens by ascending df, ties by larger id first (later BPE merges are the
       rarer, longer pieces), dropping each while the total dropped df stays
       <= ``tolerance * documents``; stop at the first that does not fit. So ``tolerance=0``
       drops nothing, and a larger tolerance never gives a larger set.

    Parameters
    ----------
    pairs : iterable of (str, str)
    tokenizer : Hugging Face tokenizer, or callable str -> list[int]
        HF: ``encode(text, add_special_tokens=False)``, ``decode([id])`` for the script filter,
        ``all_special_ids``, ``name_or_path``, ``len()`` (recorded as ``meta["vocab_size"]``).
        A plain callable needs ``decode=`` for the script filter and ``tokenizer_name=``.
    tolerance : float in [0, 1)
    include_specials : bool
        Record the tokenizer's special ids (or ``special_ids=``) in ``VocabSet.special_ids``
        (they are kept out of ``ids`` and added per request by ``for_request``).
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (0.0 <= tolerance < 1.0):
        raise ValueError(f"tolerance: expected a number in [0, 1), got {tolerance!r}")
    encode, dec, specials, name, vocab_size = _tokenizer_functions(tokenizer, decode)
    allowed = None
    if scripts is not None:
        scripts = [scripts] if isinstance(scripts, str) else list(scripts)
        if not scripts or not all(isinstance(s, str) for s in scripts):
            raise ValueError(f"scripts: expected None or a non-empty collection of script names, got {scripts!r}")
        if dec is None:
            raise ValueError("scripts: the script filter needs token texts: pass decode=(id -> str) "
                             "with a plain callable tokenizer")
        allowed = frozenset(s.casefold() for s in scripts)
    name = tokenizer_name if tokenizer_name is not None else name
    if not isinstance(name, str):
        raise TypeError(f"tokenizer_name: expected str, got {type(name).__name__}")

    sets, documents = _document_sets(pairs, encode, vocab_size)
    if documents == 0:
        raise ValueError("pairs: expected at least one (input_text, output_text) pair, got none")
    df = collections.Counter(i for s in sets for i in s)
    kept = {i: c for i, c in df.items() if allowed is None or _text_in_scripts(dec(i), allowed)}
    pruned, dropped_mass = _prune(kept, tolerance * documents)
    ids = sorted(kept)
    meta = {"documents": documents, "tolerance": float(tolerance),
            "scripts": sorted(scripts) if scripts is not None else None,
            "candidates": len(df), "script_filtered": len(df) - len(kept) - pruned, "pruned": pruned,
            "pruned_mass": dropped_mass, "kept": len(ids), "doc_freq": [kept[i] for i in ids],
            "vocab_size": vocab_size}
    if special_ids is not None:
        specials = list(special_ids)
    return VocabSet(ids=ids, tokenizer_name=name, special_ids=specials if include_specials else [], meta=meta)
