"""leankern.specdec.generate: speculative decoding with tiny random Hugging Face Llama models.

Greedy speculative decoding must reproduce ``target.generate(do_sample=False)`` token for token,
whatever the draft; a draft equal to the target is accepted in full at every step.
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from leankern.specdec.generate import GenerateResult, generate  # noqa: E402

VOCAB = 96


def _tiny_llama(seed: int, hidden: int, layers: int):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                                   num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256, initializer_range=0.3, tie_word_embeddings=False,
                                   bos_token_id=1, eos_token_id=None, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None  # generate() runs to max_new_tokens unless told otherwise
    model.generation_config.pad_token_id = 0
    return model


@pytest.fixture(scope="module")
def models():
    return _tiny_llama(0, hidden=64, layers=2), _tiny_llama(1, hidden=32, layers=1)


def _prompt(seed=0, length=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (1, length), generator=g)


def _hf_greedy(model, ids, n, **kw):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n, **kw)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_equals_target_generate_with_unrelated_draft(models, k):
    target, draft = models
    ids = _prompt(k)
    res = generate(target, draft, ids, k=k, max_new_tokens=20)
    assert isinstance(res, GenerateResult)
    assert torch.equal(res.sequences, _hf_greedy(target, ids, 20))
    assert len(res.acceptance_lengths) == res.num_target_calls
    assert all(0 <= n <= k for n in res.acceptance_lengths)
    assert res.wall_seconds > 0 and res.tokens_per_second > 0


@pytest.mark.parametrize("k,n_new", [(4, 20), (3, 9), (5, 1)])
def test_self_draft_accepts_every_draft(models, k, n_new):
    target, _ = models
    ids = _prompt(1)
    res = generate(target, target, ids, k=k, max_new_tokens=n_new)
    assert torch.equal(res.sequences, _hf_greedy(target, ids, n_new))
    # each step emits k_step + 1 tokens with k_step = min(k, remaining - 1)
    expected, left = [], n_new
    while left > 0:
        expected.append(min(k, left - 1))
        left -= expected[-1] + 1
    assert res.acceptance_lengths == expected
    assert res.num_target_calls == len(expected)
    assert res.num_draft_calls == sum(expected)
    assert res.mean_acceptance_length == pytest.approx(sum(expected) / len(expected))


def test_eos_stops_like_generate(models):
    target, draft = models
    ids = _prompt(2)
    ref = _hf_greedy(target, ids, 16)
    eos = int(ref[0, ids.shape[1] + 5])  # a token greedy decoding emits
    res = generate(target, draft, ids, k=3, max_new_tokens=16, eos_token_id=eos)
    assert torch.equal(res.sequences, _hf_greedy(target, ids, 16, eos_token_id=eos, pad_token_id=0))
    assert res.sequences.shape[1] <= ids.shape[1] + 6 and int(res.sequences[0, -1]) == eos


def test_eos_list_stops_at_any_of_its_ids_like_generate(models):
    """A list / tuple (as Hugging Face configs hold eos_token_id, e.g. Llama-3) was silently never matched."""
    target, draft = models
    ids = _prompt(2)
    ref = _hf_greedy(target, ids, 16)
    L = ids.shape[1]
    first, later = int(ref[0, L + 5]), int(ref[0, L + 9])
    never = next(t for t in range(3, VOCAB) if t not in ref[0, L:].tolist())  # emitted nowhere
    assert first not in ref[0, L:L + 5].tolist() and later not in ref[0, L:L + 9].tolist(), "pick another prompt"
    for eos in ([first], (never, later), [later, first], [never]):
        res = generate(target, draft, ids, k=3, max_new_tokens=16, eos_token_id=eos)
        want = _hf_greedy(target, ids, 16, eos_token_id=list(eos), pad_token_id=0)
        assert torch.equal(res.sequences, want), eos
    assert generate(target, draft, ids, k=3, max_new_tokens=16, eos_token_id=[later]).sequences.shape[1] == L + 10
    assert generate(target, draft, ids, k=3, max_new_tokens=16, eos_token_id=[]).sequences.shape[1] == L + 16


@pytest.mark.parametrize("bad", [torch.tensor([5]), 5.0, True, [5, "6"], {5}, "5"])
def test_eos_of_another_type_is_a_type_error(models, bad):
    target, draft = models
    with pytest.raises(TypeError, match=r"^eos_token_id: expected None, an int or a list / tuple of ints"):
        generate(target, draft, _prompt(), max_new_tokens=4, eos_token_id=bad)


def test_readme_call_form_specdec_generate():
    """README: ``from leankern import specdec; res = specdec.generate(target, draft, input_ids, k=4)``; the package
    attribute was the submodule (AttributeError before anything imported it, 'module' is not callable after)."""
    import importlib
    import sys

    from leankern import specdec

    assert specdec.generate is generate and specdec.GenerateResult is GenerateResult
    assert importlib.import_module("leankern.specdec.generate") is sys.modules["leankern.specdec.generate"]
    torch.manual_seed(0)
    target = _tiny_llama(0, hidden=32, layers=1)
    input_ids = _prompt(6)
    res = specdec.generate(target, target, input_ids, k=4, max_new_tokens=5)
    assert isinstance(res, GenerateResult) and torch.equal(res.sequences, _hf_greedy(target, input_ids, 5))


def test_subset_logits_of_a_tailored_model_are_refused(models):
    """leankern.vocab.tailor(..., full_logits=False) makes the head return [.., K] subset logits, whose columns are
    not token ids: verifying them returned local column indices as tokens. generate refuses them."""
    import copy

    from leankern.vocab import VocabSet
    from leankern.vocab.hf import tailor

    target, draft = models
    ids = _prompt(7)
    vs = VocabSet(ids=list(range(3, 40)), tokenizer_name="toy", special_ids=[0, 1])
    sub = tailor(copy.deepcopy(target), vs, full_logits=False)
    with pytest.raises(ValueError, match=r"^target: expected logits over the whole vocabulary \(V=96 columns\)"):
        generate(sub, draft, ids, k=3, max_new_tokens=6)
    with pytest.raises(ValueError, match=r"^draft: expected logits over the whole vocabulary .*full_logits=True"):
        generate(target, sub, ids, k=3, max_new_tokens=6)
    full = tailor(copy.deepcopy(target), vs, full_logits=True)  # full rows, -inf outside the set: works
    res = generate(full, draft, ids, k=3, max_new_tokens=6)
    assert set(res.sequences[0, ids.shape[1]:].tolist()) <= set(vs.ids) | set(ids[0].tolist()) | {0, 1}


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_with_a_tailored_target_equals_its_generate(models, k):
    """A target tailored by leankern.vocab.tailor: its first forward is prompt + drafts with no cache, which the
    tailor hook took for the prompt, so the drafts joined the request's set and, with a good draft (a copy of the
    full target), ids outside the set won. generate sets the request from the prompt alone: greedy equals the
    tailored target's own generate, every id lies in static ∪ prompt, the set is not widened. A tailored draft (the
    target itself, sharing its head) keeps the same set."""
    import copy

    from leankern.vocab import VocabSet
    from leankern.vocab.hf import request_vocab, tailor

    target, _ = models
    ids = _prompt(11)
    n = 10
    full = _hf_greedy(target, ids, n)[0, ids.shape[1]:].tolist()
    static = [i for i in range(3, 60) if i not in full and i not in ids[0].tolist()]  # without the full model's picks
    allowed = set(static) | set(ids[0].tolist())
    tailored = tailor(copy.deepcopy(target), VocabSet(ids=static, tokenizer_name="toy", special_ids=[]))
    ref = _hf_greedy(tailored, ids, n)
    assert set(ref[0, ids.shape[1]:].tolist()) <= allowed
    good_draft = copy.deepcopy(target)  # proposes exactly the full model's (outside) picks
    for draft in (good_draft, tailored):
        res = generate(tailored, draft, ids, k=k, max_new_tokens=n)
        assert torch.equal(res.sequences, ref)
        assert set(res.sequences[0, ids.shape[1]:].tolist()) <= allowed
        assert set(request_vocab(tailored).vocab_ids.tolist()) == allowed


def test_zero_new_tokens(models):
    target, draft = models
    ids = _prompt(3)
    res = generate(target, draft, ids, k=4, max_new_tokens=0)
    assert torch.equal(res.sequences, ids)
    assert res.num_target_calls == res.num_draft_calls == 0 and res.acceptance_lengths == []


def test_relaxed(models):
    target, draft = models
    ids = _prompt(4)
    # radius 0 is greedy
    res0 = generate(target, draft, ids, k=4, mode="relaxed", relax_radius=0, action_range=(0, VOCAB - 1),
                    max_new_tokens=12)
    assert torch.equal(res0.sequences, _hf_greedy(target, ids, 12))
    # a radius covering the whole vocabulary accepts every draft: the draft's own greedy tokens plus bonuses
    res = generate(target, draft, ids, k=4, mode="relaxed", relax_radius=VOCAB, action_range=(0, VOCAB - 1),
                   max_new_tokens=15)
    assert res.acceptance_lengths == [4, 4, 4]
    assert res.sequences.shape == (1, ids.shape[1] + 15)


def test_rejection(models):
    target, draft = models
    ids = _prompt(5)
    # temperature 0 verifies greedily: the target's greedy output whatever the (sampled) drafts
    res = generate(target, draft, ids, k=3, mode="rejection", temperature=0.0, max_new_tokens=12, seed=7)
    assert torch.equal(res.sequences, _hf_greedy(target, ids, 12))
    # sampling: reproducible from the seed, tokens in the vocabulary, full length
    a = generate(target, draft, ids, k=3, mode="rejection", temperature=1.0, max_new_tokens=12, seed=7)
    b = generate(target, draft, ids, k=3, mode="rejection", temperature=1.0, max_new_tokens=12, seed=7)
    assert torch.equal(a.sequences, b.sequences) and a.acceptance_lengths == b.acceptance_lengths
    assert a.sequences.shape == (1, ids.shape[1] + 12)
    assert bool(((a.sequences >= 0) & (a.sequences < VOCAB)).all())
    # q = p (draft is the target): p/q = 1 up to rounding, so every draft is accepted
    s = generate(target, target, ids, k=3, mode="rejection", temperature=0.8, max_new_tokens=12, seed=3)
    assert s.acceptance_lengths == [3, 3, 3]


def test_bad_arguments(models):
    target, draft = models
    with pytest.raises(ValueError, match="input_ids"):
        generate(target, draft, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="mode"):
        generate(target, draft, _prompt(), mode="beam")
    with pytest.raises(ValueError, match="k:"):
        generate(target, draft, _prompt(), k=0)
