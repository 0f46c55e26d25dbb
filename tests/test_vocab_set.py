"""vocab sets: the static-vocabulary builder (pruning rule on a hand-computed corpus, tolerance
monotonicity, script filter, Hugging Face and plain-callable tokenizers), JSON round trip and bad
files, the per-request union, and local <-> global id mapping."""
import dataclasses
import json

import pytest
import torch
from hypothesis import given, strategies as st

from leankern.vocab.vocab_set import FORMAT, RequestVocab, VocabSet, build_static_vocab, char_script

# A word-level toy tokenizer that needs no library: one id per whitespace-separated word.
WORDS = ["a", "b", "c", "d", "e", "f", "g", "x", "the", "cat", "кот", "猫", "ねこ", "1", "!", "é", "e\u0301"]
WORD_ID = {w: i for i, w in enumerate(WORDS)}


def encode(text):
    return [WORD_ID[w] for w in text.split()]


def decode(i):
    return WORDS[i]


# Hand-computed: per pair, output ids not in the input ids.
#   ("a b", "b c d") -> {c, d};  ("c", "c d e") -> {d, e};  ("x", "d f") -> {d, f};  ("f", "f g c") -> {g, c}
# Document frequencies: c=2 (id 2), d=3 (id 3), e=1 (id 4), f=1 (id 5), g=1 (id 6); 4 documents.
# Pruning order (df ascending, ties larger id first): g(6), f(5), e(4), c(2), d(3).
TOY_PAIRS = [("a b", "b c d"), ("c", "c d e"), ("x", "d f"), ("f", "f g c")]
TOY_EXPECTED = {  # tolerance -> kept ids (budget = tolerance * 4 dropped document occurrences)
    0.0: [2, 3, 4, 5, 6],
    0.2: [2, 3, 4, 5, 6],  # budget 0.8 < df(g) = 1
    0.25: [2, 3, 4, 5],  # budget 1: drop g
    0.3: [2, 3, 4, 5],  # budget 1.2: g fits, g + f = 2 does not
    0.5: [2, 3, 4],  # budget 2: drop g, f
    0.75: [2, 3],  # budget 3: drop g, f, e
    0.99: [2, 3],  # budget 3.96: c (df 2) would make 5
}


@pytest.mark.parametrize("tolerance", sorted(TOY_EXPECTED))
def test_pruning_rule_on_hand_computed_corpus(tolerance):
    vs = build_static_vocab(TOY_PAIRS, encode, tolerance=tolerance, tokenizer_name="toy")
    assert vs.ids == TOY_EXPECTED[tolerance]
    df = {2: 2, 3: 3, 4: 1, 5: 1, 6: 1}
    assert vs.meta["doc_freq"] == [df[i] for i in vs.ids]
    assert vs.meta["documents"] == 4 and vs.meta["candidates"] == 5
    assert vs.meta["pruned"] == 5 - len(vs.ids)
    assert vs.meta["pruned_mass"] == sum(df.values()) - sum(vs.meta["doc_freq"])
    assert vs.tokenizer_name == "toy" and vs.special_ids == [] and vs.meta["vocab_size"] is None


_corpus = st.lists(st.tuples(st.lists(st.sampled_from(WORDS[:8]), max_size=6),
                             st.lists(st.sampled_from(WORDS[:8]), max_size=6)), min_size=1, max_size=12)


@given(_corpus, st.floats(0, 0.999), st.floats(0, 0.999))
def test_larger_tolerance_never_gives_a_larger_set(corpus, t1, t2):
    pairs = [(" ".join(i), " ".join(o)) for i, o in corpus]
    lo, hi = sorted((t1, t2))
    small_tol = build_static_vocab(pairs, encode, tolerance=lo, tokenizer_name="toy")
    large_tol = build_static_vocab(pairs, encode, tolerance=hi, tokenizer_name="toy")
    assert set(large_tol.ids) <= set(small_tol.ids)
    # Invariants of the definition, computed independently of the builder.
    candidates = set().union(*(set(encode(o)) - set(encode(i)) for i, o in pairs))
    assert set(small_tol.ids) <= candidates
    assert small_tol.meta["pruned_mass"] <= lo * len(pairs)
    assert build_static_vocab(pairs, encode, tokenizer_name="toy").ids == sorted(candidates)


# ---------------------------------------------------------------------------------- script filter
@pytest.mark.parametrize("ch,script", [
    ("a", "Latin"), ("é", "Latin"), ("Ａ", "Latin"), ("к", "Cyrillic"), ("α", "Greek"), ("猫", "Han"),
    ("ね", "Hiragana"), ("ネ", "Katakana"), ("한", "Hangul"), ("ا", "Arabic"), ("א", "Hebrew"),
    ("क", "Devanagari"), ("ก", "Thai"), ("1", "Common"), ("٣", "Common"), (" ", "Common"), ("!", "Common"),
    ("€", "Common"), ("\n", "Common"), ("\u0301", "Inherited")])
def test_char_script(ch, script):
    assert char_script(ch) == script


def test_script_filter_keeps_tokens_whose_characters_are_all_in_the_scripts():
    pairs = [("", "the cat кот 猫 ねこ 1 ! é e\u0301")]
    def ids(*words):
        return sorted(WORD_ID[w] for w in words)

    latin = build_static_vocab(pairs, encode, scripts={"Latin", "Common"}, decode=decode, tokenizer_name="t")
    assert latin.ids == ids("the", "cat", "1", "!", "é", "e\u0301")  # the combining accent passes
    assert latin.meta["script_filtered"] == 3 and latin.meta["scripts"] == ["Common", "Latin"]
    only_latin = build_static_vocab(pairs, encode, scripts=["latin"], decode=decode, tokenizer_name="t")
    assert only_latin.ids == ids("the", "cat", "é", "e\u0301")  # case-insensitive; digits are Common
    assert build_static_vocab(pairs, encode, scripts="Cyrillic", decode=decode, tokenizer_name="t").ids == ids("кот")
    cjk = build_static_vocab(pairs, encode, scripts={"Han", "Hiragana"}, decode=decode, tokenizer_name="t")
    assert cjk.ids == ids("猫", "ねこ")


def test_script_filtered_tokens_do_not_use_the_tolerance_budget():
    pairs = [("", "a кот"), ("", "a b"), ("", "a кот")]  # df: a=3, b=1, кот=2
    vs = build_static_vocab(pairs, encode, tolerance=0.34, scripts={"Latin"}, decode=decode, tokenizer_name="t")
    assert vs.ids == [WORD_ID["a"]]  # кот filtered (free), b pruned (1 <= 1.02)
    assert vs.meta["pruned_mass"] == 1 and vs.meta["script_filtered"] == 1


def test_script_filter_with_plain_callable_needs_decode():
    with pytest.raises(ValueError, match="decode="):
        build_static_vocab(TOY_PAIRS, encode, scripts={"Latin"})


# ------------------------------------------------------------------------- Hugging Face tokenizer
def _hf_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {w: i for i, w in enumerate(["[UNK]", "[BOS]", "[EOS]"] + WORDS[:15])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]",
                                                eos_token="[EOS]", name_or_path="toy-wordlevel")


def test_hugging_face_tokenizer():
    hf = _hf_tokenizer()
    shift = 3  # the three special tokens come first in this vocabulary
    vs = build_static_vocab(TOY_PAIRS, hf, tolerance=0.5)
    assert vs.ids == [i + shift for i in TOY_EXPECTED[0.5]]
    assert vs.tokenizer_name == "toy-wordlevel" and vs.special_ids == [0, 1, 2]
    assert vs.meta["vocab_size"] == len(hf) == 18
    latin = build_static_vocab([("", "the cat кот 1")], hf, scripts={"Latin", "Common"}, include_specials=False)
    assert latin.ids == sorted(WORD_ID[w] + shift for w in ("the", "cat", "1")) and latin.special_ids == []
    # the backend `tokenizers.Tokenizer` (encode returns an Encoding) works too
    raw = build_static_vocab(TOY_PAIRS, hf.backend_tokenizer, tolerance=0.5, tokenizer_name="raw")
    assert raw.ids == vs.ids
    req = vs.for_request(hf.encode("x the", add_special_tokens=False))
    assert req.V == 18 and req.vocab_ids.tolist() == sorted({0, 1, 2, 3 + 7, 3 + 8} | set(vs.ids))


# ------------------------------------------------------------------------------ argument checks
@pytest.mark.parametrize("tolerance", [1.0, -0.1, True, "0.1", float("nan")])
def test_bad_tolerance(tolerance):
    with pytest.raises(ValueError, match=r"tolerance: expected a number in \[0, 1\)"):
        build_static_vocab(TOY_PAIRS, encode, tolerance=tolerance)


def test_bad_builder_arguments():
    with pytest.raises(TypeError, match=r"pairs\[1\]: expected a pair"):
        build_static_vocab([("a", "b"), ("a",)], encode)
    with pytest.raises(TypeError, match="pairs: expected an iterable"):
        build_static_vocab("a b", encode)
    with pytest.raises(ValueError, match="at least one"):
        build_static_vocab([], encode)
    with pytest.raises(TypeError, match="tokenizer: expected"):
        build_static_vocab(TOY_PAIRS, 42)
    with pytest.raises(ValueError, match=r"tokenizer\(pairs\[0\]\[0\]\)\[0\]: expected a token id >= 0"):
        build_static_vocab([("a", "b")], lambda s: [-1])
    with pytest.raises(ValueError, match="scripts"):
        build_static_vocab(TOY_PAIRS, encode, scripts=[], decode=decode)


# ----------------------------------------------------------------------------------------- JSON
def test_json_round_trip(tmp_path):
    vs = build_static_vocab(TOY_PAIRS, encode, tolerance=0.25, tokenizer_name="toy", special_ids=[7, 0])
    path = tmp_path / "vocab.json"
    vs.save(path)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text)["format"] == FORMAT and len(text.splitlines()) == 7  # one line per key
    back = VocabSet.load(path)
    assert back == vs and back.special_ids == [0, 7] and len(back) == 4
    assert VocabSet.load(str(path)) == vs


def test_constructor_normalises_ids():
    vs = VocabSet(ids=[5, 1, 5, 3], tokenizer_name="t", special_ids=(2, 2))
    assert vs.ids == [1, 3, 5] and vs.special_ids == [2] and len(vs) == 3


_GOOD = {"format": FORMAT, "tokenizer_name": "t", "ids": [1, 2], "special_ids": [0], "meta": {}}


@pytest.mark.parametrize("content,exc,match", [
    ("not json", ValueError, "not a JSON vocabulary set"),
    ("[1, 2]", ValueError, "JSON object"),
    ({**_GOOD, "format": "other/1"}, ValueError, "field 'format'"),
    ({k: v for k, v in _GOOD.items() if k != "format"}, ValueError, "field 'format'"),
    ({k: v for k, v in _GOOD.items() if k != "ids"}, ValueError, "missing field 'ids'"),
    ({**_GOOD, "ids": "1,2"}, TypeError, "field ids: expected a list"),
    ({**_GOOD, "ids": [1, "2"]}, TypeError, r"field ids\[1\]: expected an int"),
    ({**_GOOD, "ids": [1, True]}, TypeError, r"field ids\[1\]"),
    ({**_GOOD, "ids": [2, 1]}, ValueError, "sorted ascending"),
    ({**_GOOD, "ids": [1, 1]}, ValueError, "without duplicates"),
    ({**_GOOD, "ids": [-1, 1]}, ValueError, r"ids\[0\]: expected a token id >= 0"),
    ({**_GOOD, "tokenizer_name": 3}, TypeError, "field tokenizer_name: expected str"),
    ({**_GOOD, "special_ids": [1.5]}, TypeError, r"field special_ids\[0\]"),
    ({**_GOOD, "meta": []}, TypeError, "field meta: expected dict"),
])
def test_bad_files(tmp_path, content, exc, match):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(exc, match=match) as info:
        VocabSet.load(path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------------- per request
def test_for_request_union_sorted_dedup():
    vs = VocabSet(ids=[10, 20, 30], tokenizer_name="t", special_ids=[0, 1])
    req = vs.for_request([30, 5, 5, 40, 10])
    assert req.vocab_ids.dtype == torch.int32 and req.vocab_ids.tolist() == [0, 1, 5, 10, 20, 30, 40]
    assert len(req) == 7 and req.V is None
    assert vs.for_request([5], include_specials=False).vocab_ids.tolist() == [5, 10, 20, 30]
    assert vs.for_request([]).vocab_ids.tolist() == [0, 1, 10, 20, 30]
    batch = torch.tensor([[7, 3], [3, 99]], dtype=torch.int32)  # one union over all rows
    assert vs.for_request(batch).vocab_ids.tolist() == [0, 1, 3, 7, 10, 20, 30, 99]
    assert vs.for_request([[7], [3, 99, 3]]).vocab_ids.tolist() == [0, 1, 3, 7, 10, 20, 30, 99]
    assert vs.for_request(torch.tensor([2]), device="cpu", V=100).V == 100


@given(st.lists(st.integers(0, 300), max_size=20), st.lists(st.integers(0, 300), max_size=5),
       st.lists(st.integers(0, 300), max_size=30))
def test_for_request_is_the_sorted_union(static, specials, prompt):
    vs = VocabSet(ids=static, tokenizer_name="t", special_ids=specials)
    got = vs.for_request(torch.tensor(prompt, dtype=torch.int64)).vocab_ids.tolist()
    assert got == sorted(set(static) | set(specials) | set(prompt))


def test_for_request_errors():
    vs = VocabSet(ids=[1, 2], tokenizer_name="t", meta={"vocab_size": 10})
    with pytest.raises(ValueError, match=r"prompt_ids\[1\]: expected a token id >= 0"):
        vs.for_request([3, -1])
    with pytest.raises(ValueError, match="prompt_ids: expected token ids >= 0, got min -1"):
        vs.for_request(torch.tensor([[3, -1]]))
    with pytest.raises(ValueError, match="< V = 10"):
        vs.for_request([10])
    with pytest.raises(TypeError, match="prompt_ids: expected an integer tensor"):
        vs.for_request(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"1-D \[L\] or 2-D \[B, L\]"):
        vs.for_request(torch.zeros(1, 1, 1, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"prompt_ids\[1\]"):
        vs.for_request([[1], [2, "x"]])


# ------------------------------------------------------------------------------- id mapping
@given(st.sets(st.integers(0, 500), max_size=40), st.data())
def test_local_global_round_trip(ids, data):
    req = RequestVocab(torch.tensor(sorted(ids), dtype=torch.int64), V=501)
    K = len(req)
    assert req.vocab_ids.dtype == torch.int32 and K == len(ids)
    local = torch.tensor(data.draw(st.lists(st.integers(-1, K - 1), max_size=20)), dtype=torch.int32)
    glob = req.to_global(local)
    assert glob.dtype == torch.int64 and glob.tolist() == [sorted(ids)[i] if i >= 0 else -1 for i in local.tolist()]
    assert torch.equal(req.to_local(glob), local.long())
    queries = torch.tensor(data.draw(st.lists(st.integers(-1, 500), max_size=20)), dtype=torch.int64)
    back = req.to_local(queries)
    assert back.tolist() == [sorted(ids).index(q) if q in ids else -1 for q in queries.tolist()]
    assert req.contains(queries).tolist() == [q in ids for q in queries.tolist()]
    assert torch.equal(req.to_global(back), torch.where(back >= 0, queries, -1))


def test_to_global_keeps_shape_and_padding():
    req = RequestVocab(torch.tensor([3, 8, 11], dtype=torch.int32))
    local = torch.tensor([[0, -1], [2, 1]])
    assert req.to_global(local).tolist() == [[3, -1], [11, 8]]
    assert req.to_local(torch.tensor([[11, 4], [3, -1]])).tolist() == [[2, -1], [0, -1]]


@pytest.mark.parametrize("bad", [[3], [-2], [0, 5]])
def test_to_global_rejects_local_ids_outside_range(bad):
    req = RequestVocab(torch.tensor([3, 8, 11], dtype=torch.int32))
    with pytest.raises(IndexError, match=r"local_ids: expected ids in \[-1, K\) = \[-1, 3\)"):
        req.to_global(torch.tensor(bad))
    with pytest.raises(TypeError, match="local_ids: expected an integer tensor"):
        req.to_global(torch.tensor([0.0]))


def test_empty_request_vocab():
    req = RequestVocab(torch.zeros(0, dtype=torch.int32))
    assert len(req) == 0 and req.to_local(torch.tensor([0, -1])).tolist() == [-1, -1]
    assert req.to_global(torch.tensor([-1])).tolist() == [-1]
    with pytest.raises(IndexError):
        req.to_global(torch.tensor([0]))


@pytest.mark.parametrize("ids,V,match", [
    ([3, 1], None, "sorted ascending"), ([1, 1], None, "without duplicates"), ([-1, 2], None, r"\[0, "),
    ([1, 10], 10, r"\[0, 10\)"), ([[1]], None, "1-D"), ([1.0], None, "integer tensor")])
def test_request_vocab_validation(ids, V, match):
    with pytest.raises((ValueError, TypeError), match=match):
        RequestVocab(torch.tensor(ids), V)


def test_request_vocab_is_frozen():
    req = RequestVocab(torch.tensor([1, 2], dtype=torch.int32))
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.vocab_ids = torch.tensor([3])
    assert req.to("cpu").vocab_ids.tolist() == [1, 2]
