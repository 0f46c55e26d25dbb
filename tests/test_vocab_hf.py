"""leankern.vocab.hf: the Hugging Face drop-in (tailor / untailor / vocab_bytes) on tiny random
Llama (untied), Qwen3 (tied) and Gemma-2 (tied, soft-capped) models built from their configs."""
import copy
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from leankern.vocab.hf import TailoredHead, is_prefill, request_vocab, tailor, untailor, vocab_bytes  # noqa: E402
from leankern.vocab.vocab_set import VocabSet  # noqa: E402

# Until the C++ kernels land the ops run their reference with a RuntimeWarning
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

V, H = 1000, 64
ARCHS = ["llama", "qwen3", "gemma2"]


def _config(arch: str, **over):
    import transformers as tf

    common = dict(vocab_size=V, hidden_size=H, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=256, initializer_range=0.1,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=False, **over)
    if arch == "qwen3":
        return tf.Qwen3Config(**common, tie_word_embeddings=True, **over)
    return tf.Gemma2Config(**common, tie_word_embeddings=True, final_logit_softcapping=over.pop("cap", 3.0),
                           attn_implementation="eager", **over)


def _build(arch: str, seed: int = 0, **over):
    import transformers as tf

    cls = {"llama": tf.LlamaForCausalLM, "qwen3": tf.Qwen3ForCausalLM, "gemma2": tf.Gemma2ForCausalLM}[arch]
    torch.manual_seed(seed)
    return cls(_config(arch, **over)).eval()


_MODELS = {}


@pytest.fixture(params=ARCHS)
def base(request):
    """(arch, the full model): built once per arch, never tailored (tests tailor a deep copy)."""
    arch = request.param
    if arch not in _MODELS:
        _MODELS[arch] = _build(arch)
    return arch, _MODELS[arch]


def _greedy(model, ids, n=6, mask=None):
    with torch.inference_mode():
        return model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              pad_token_id=0)


def _prompt(seed=1, L=7, B=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (B, L), generator=g)


def _random_ids(n, seed=2, exclude=()):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(V, generator=g)[:n].tolist()
    return [i for i in ids if i not in set(exclude)]


def _vocab(ids, specials=(1, 2)):
    return VocabSet(ids=list(ids), tokenizer_name="toy", special_ids=list(specials))


def _tailored(model, vocab_set, **kw):
    return tailor(copy.deepcopy(model), vocab_set, **kw)


# ------------------------------------------------------------------------------ (a), (c)
def test_generate_matches_full_model_when_choices_are_in_set(base):
    arch, full = base
    ids = _prompt()
    ref = _greedy(full, ids)
    model = _tailored(full, _vocab(ref[0].tolist() + _random_ids(100)))
    out = _greedy(model, ids)
    assert torch.equal(out, ref), f"{arch}: tailored greedy {out.tolist()} != full {ref.tolist()}"


def test_in_set_logits_equal_full_model_logits(base):
    arch, full = base
    ids = _prompt(L=9)
    model = _tailored(full, _vocab(_random_ids(150)))
    with torch.inference_mode():
        ref = full(ids).logits  # [1, L, V], soft-capped by HF for gemma2
        got = model(ids).logits
    vocab_ids = request_vocab(model).vocab_ids.long()
    assert got.shape == ref.shape
    torch.testing.assert_close(got[..., vocab_ids], ref[..., vocab_ids], rtol=1e-5, atol=1e-5)
    outside = torch.ones(V, dtype=torch.bool)
    outside[vocab_ids] = False
    assert torch.isneginf(got[..., outside]).all(), f"{arch}: ids outside the set must be exactly -inf"
    assert set(ids[0].tolist()) <= set(vocab_ids.tolist()), "the prompt's ids belong to the request"


def test_subset_logits_mode(base):
    arch, full = base
    ids = _prompt(L=5)
    model = _tailored(full, _vocab(_random_ids(80)), full_logits=False)
    with torch.inference_mode():
        ref = full(ids).logits
        sub = model(ids).logits  # [1, L, K]
    head = model.get_output_embeddings()
    assert sub.shape == (1, 5, len(head.request))
    assert torch.equal(head.vocab_ids.cpu(), head.request.vocab_ids)
    torch.testing.assert_close(sub, ref[..., head.vocab_ids.long()], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ (b)
def _manual_subset_greedy(full, ids, vocab_ids, n):
    """Greedy decode by hand: full logits (no cache), argmax over the subset columns only."""
    seq = ids
    with torch.inference_mode():
        for _ in range(n):
            z = full(seq).logits[:, -1, :]  # [1, V]
            nxt = vocab_ids[z[:, vocab_ids].argmax(-1)]  # [1] global ids
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq


def test_outside_choice_never_wins_and_output_is_subset_argmax(base):
    arch, full = base
    ids = _prompt(seed=3)
    ref = _greedy(full, ids)
    banned = set(ref[0, ids.shape[1]:].tolist()) - set(ids[0].tolist())  # full choices not forced in by the prompt
    assert banned, "the full model only repeats prompt tokens; pick another seed"
    model = _tailored(full, _vocab(_random_ids(60, exclude=banned | {2}), specials=(1,)))
    n = 6
    out = _greedy(model, ids, n)
    vocab_ids = request_vocab(model).vocab_ids.long()
    gen = out[0, ids.shape[1]:]
    assert bool(torch.isin(gen, vocab_ids).all()), f"{arch}: generated {gen.tolist()} outside the request's set"
    assert not (set(gen.tolist()) & banned)
    assert torch.equal(out, _manual_subset_greedy(full, ids, vocab_ids, n))


def test_soft_cap_outside_ids_stay_minus_inf():
    """A tiny cap saturates every in-set logit to +-cap; HF's cap after the head would turn -inf into -cap (a tie)."""
    full = _build("gemma2", seed=5, cap=1e-4)
    ids = _prompt(seed=4)
    model = _tailored(full, _vocab(_random_ids(40, seed=9)))
    head = model.get_output_embeddings()
    assert head.soft_cap == pytest.approx(1e-4) and model.config.final_logit_softcapping is None
    with torch.inference_mode():
        z = model(ids).logits  # [1, L, V]
        torch.manual_seed(0)
        sampled = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=True, top_k=0, top_p=1.0,
                                 temperature=1.0, pad_token_id=0)
    vocab_ids = head.vocab_ids.long()
    inside = torch.zeros(V, dtype=torch.bool)
    inside[vocab_ids] = True
    assert torch.isneginf(z[..., ~inside]).all()
    assert (z[..., inside].abs() <= 1e-4 * (1 + 1e-6)).all()
    assert bool(inside[z.argmax(-1)].all())
    assert bool(inside[sampled[0, ids.shape[1]:]].all())
    untailor(model)
    assert model.config.final_logit_softcapping == pytest.approx(1e-4)


# ------------------------------------------------------------------------------------ (d)
def test_untailor_restores_original_head_bit_for_bit(base):
    arch, full = base
    model = copy.deepcopy(full)
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    weight, saved = head.weight, {k: v.clone() for k, v in model.state_dict().items()}
    cap = getattr(model.config, "final_logit_softcapping", None)
    tailor(model, _vocab(_random_ids(50)), offload_embedding=True)
    assert isinstance(model.get_output_embeddings(), TailoredHead)
    assert model.get_output_embeddings().weight is weight  # read in place, no copy
    _greedy(model, _prompt(), 3)
    untailor(model)
    assert model.get_output_embeddings() is head and head.weight is weight
    assert model.get_input_embeddings() is emb
    assert getattr(model.config, "final_logit_softcapping", None) == cap
    assert len(model._forward_pre_hooks) == 0
    now = model.state_dict()
    assert now.keys() == saved.keys()
    for k, v in saved.items():
        assert torch.equal(now[k], v) and now[k].dtype == v.dtype, k
    ids = _prompt()
    assert torch.equal(_greedy(model, ids), _greedy(full, ids))
    with pytest.raises(ValueError, match="not tailored"):
        untailor(model)


@pytest.mark.parametrize("arch,kw", [("llama", {}), ("qwen3", dict(offload_embedding=True, compact_head=True))],
                         ids=["llama", "qwen3-tied-compact"])
def test_deepcopy_of_a_tailored_model_is_independent(arch, kw):
    """The prefill hook closed over the head (and the tied decode embedding): a deep copy's hook kept updating the
    original's request, and the copy decoded over the set of whatever request the original saw last."""
    full = _build(arch)
    vs = _vocab(range(100, 130))
    model = tailor(copy.deepcopy(full), vs, **kw)
    p1, p2 = torch.tensor([[5, 17, 42]]), torch.tensor([[950, 951, 952]])
    with torch.inference_mode():
        model(p1)
        twin = copy.deepcopy(model)
        twin(p2)
    assert {950, 951, 952} <= set(request_vocab(twin).vocab_ids.tolist())
    assert not {950, 951, 952} & set(request_vocab(model).vocab_ids.tolist()), "the original's request is its own"
    assert {5, 17, 42} <= set(request_vocab(model).vocab_ids.tolist())
    fresh = tailor(copy.deepcopy(full), vs, **kw)
    assert torch.equal(_greedy(twin, p2, 4), _greedy(fresh, p2, 4))
    assert {950, 951, 952} <= set(request_vocab(twin).vocab_ids.tolist())
    assert not {950, 951, 952} & set(request_vocab(model).vocab_ids.tolist())
    if kw:  # the copy's decode steps arm the copy's embedding (head rows), never the original's
        e_twin, e_model = twin.get_input_embeddings(), model.get_input_embeddings()
        assert e_twin.head is twin.get_output_embeddings() and e_twin.head_row_calls == 3
        assert e_model.head_row_calls == 0 and not e_model._decode_step and not e_twin._decode_step
    untailor(twin)  # removes the copy's hooks only
    assert len(twin._forward_pre_hooks) == 0 and len(model._forward_pre_hooks) == 1
    assert torch.equal(_greedy(model, p1, 4), _greedy(tailor(copy.deepcopy(full), vs, **kw), p1, 4))


def test_tailor_twice_is_refused():
    model = _tailored(_build("llama"), _vocab(range(10)))
    with pytest.raises(ValueError, match="already tailored"):
        tailor(model, _vocab(range(10)))


# ------------------------------------------------------------------------------------ (e)
@pytest.mark.parametrize("compact", [False, True])
def test_offloaded_embedding_same_outputs_and_bytes(base, compact):
    arch, full = base
    ids = _prompt(seed=6)
    vs = _vocab(_greedy(full, ids)[0].tolist() + _random_ids(100))
    plain = _tailored(full, vs)
    off = _tailored(full, vs, offload_embedding=True, compact_head=compact)
    assert type(off.get_input_embeddings()).__name__.endswith("OffloadedEmbedding")
    assert torch.equal(_greedy(off, ids), _greedy(plain, ids))
    with torch.inference_mode():
        torch.testing.assert_close(off(ids).logits, plain(ids).logits, rtol=1e-6, atol=1e-6)

    table = V * H * 4  # fp32 [V, H]
    K = len(request_vocab(off))
    b = vocab_bytes(off)
    tied = arch != "llama"
    assert b["tailored"] and b["K"] == K
    assert b["before"] == {"device": "cpu", "embedding": table, "head": table, "total": table if tied else 2 * table,
                           "host": 0}
    assert b["embedding"] == 0
    if compact:  # only the request's rows stay on the device: the VocabTailor claim
        assert b["head"] == b["total"] == K * H * 4
    else:  # the head reads the full weight in place
        assert b["head"] == b["total"] == table
    # host: the embedding's table, plus the head's own table when compact; a tied (shared) table counts once
    assert b["host"] == (2 * table if compact and not tied else table)
    assert vocab_bytes(plain)["total"] == b["before"]["total"]


# ------------------------------------------------------------------------------------ (f)
def test_batch_with_left_padding(base):
    arch, full = base
    short, long_ = _prompt(seed=7, L=4), _prompt(seed=8, L=9)
    ids = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1), long_])  # [2, 9], left padded
    mask = (ids != 0).long()
    mask[1] = 1
    ref = _greedy(full, ids, mask=mask)
    gen = ref[:, ids.shape[1]:].reshape(-1).tolist()
    model = _tailored(full, _vocab([i for i in gen + _random_ids(100) if i != 0]))
    out = _greedy(model, ids, mask=mask)
    assert torch.equal(out, ref), f"{arch}: {out.tolist()} != {ref.tolist()}"
    vocab_ids = set(request_vocab(model).vocab_ids.tolist())
    assert 0 not in vocab_ids, "left padding must not enter the request's vocabulary"
    assert set(short[0].tolist()) | set(long_[0].tolist()) <= vocab_ids, "one union set for the batch"


# --------------------------------------------------------------------------------- prefill rule
def test_each_generate_call_gets_its_own_request():
    full = _build("qwen3")
    model = _tailored(full, _vocab(range(3, 20)))
    a, b = _prompt(seed=10, L=5), _prompt(seed=11, L=5)
    _greedy(model, a, 3)
    set_a = set(request_vocab(model).vocab_ids.tolist())
    _greedy(model, b, 3)
    set_b = set(request_vocab(model).vocab_ids.tolist())
    assert set(a[0].tolist()) <= set_a and set(b[0].tolist()) <= set_b
    assert not (set(a[0].tolist()) - set(b[0].tolist()) - set(range(3, 20))) & set_b
    with torch.inference_mode():  # no cache: every generate step re-sends prompt + generated ids
        out = model.generate(b, max_new_tokens=3, min_new_tokens=3, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(out, _greedy(model, b, 3))


def test_is_prefill_rule():
    from transformers import DynamicCache

    assert is_prefill(None)
    assert is_prefill(DynamicCache())
    assert is_prefill(None, torch.tensor([0, 1, 2]))
    assert not is_prefill(None, torch.tensor([5]))
    full = _build("llama")
    with torch.inference_mode():
        out = full(_prompt(L=4), use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    assert not is_prefill(cache)


def test_rejects_wrong_arguments():
    full = _build("llama")
    with pytest.raises(TypeError, match="vocab_set"):
        tailor(copy.deepcopy(full), [1, 2, 3])
    model = _tailored(full, VocabSet(ids=[], tokenizer_name="toy"))
    with warnings.catch_warnings(), pytest.raises(ValueError, match="empty"):
        warnings.simplefilter("ignore")
        model(inputs_embeds=torch.zeros(1, 2, H))


# -------------------------------------------------------------- tied decode embeddings from the head rows
TIED = ["qwen3", "gemma2"]


@pytest.fixture(params=TIED)
def tied(request):
    """(arch, the full tied model), shared with ``base``'s cache."""
    arch = request.param
    if arch not in _MODELS:
        _MODELS[arch] = _build(arch)
    return arch, _MODELS[arch]


def _step(model, ids, cache=None):
    """One forward with a cache (a new one when None); returns (logits, cache). Handles the cache kwarg's name."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(ids, use_cache=True, **({} if cache is None else {name: cache}))
    return out.logits, getattr(out, "cache", None) or out.past_key_values


def _spy_host_gather(emb):
    """Record every host gather of ``emb`` (its OffloadedEmbedding path): (ids, armed for a decode step?)."""
    calls, real = [], emb._gather_to_device

    def spy(unique_ids):
        calls.append((unique_ids.clone(), emb._decode_step))
        return real(unique_ids)

    emb._gather_to_device = spy
    return calls


def test_tied_compact_decode_reads_head_rows(tied):
    from leankern.vocab.hf import _TiedOffloadedEmbedding

    arch, full = tied
    ids = _prompt(seed=12)
    n = 6
    ref = _greedy(full, ids, n)
    vs = _vocab(ref[0].tolist() + _random_ids(100))
    model = _tailored(full, vs, offload_embedding=True, compact_head=True)
    plain_off = _tailored(full, vs, offload_embedding=True, compact_head=False)
    emb = model.get_input_embeddings()
    assert isinstance(emb, _TiedOffloadedEmbedding) and emb.mode == "checked"
    assert type(plain_off.get_input_embeddings()) is not _TiedOffloadedEmbedding  # only with the compact head
    calls = _spy_host_gather(emb)
    out = _greedy(model, ids, n)
    assert torch.equal(out, ref), f"{arch}: {out.tolist()} != full {ref.tolist()}"
    assert torch.equal(out, _greedy(plain_off, ids, n))
    # the prefill gathers the prompt's rows from the host table; the n - 1 decode steps never touch it
    assert len(calls) == 1 and not calls[0][1]
    assert torch.equal(calls[0][0], torch.unique(ids))
    assert emb.host_calls == 1 and emb.head_row_calls == n - 1
    assert not emb._decode_step, "disarmed after each top-level call"
    # nothing extra resident: the rows read at decode are the head's, counted there
    b, K = vocab_bytes(model), len(request_vocab(model))
    assert b["embedding"] == 0 and b["head"] == b["total"] == K * H * 4 and b["host"] == V * H * 4
    sync_free = _tailored(full, vs, offload_embedding=True, compact_head=True, tied_decode="assert")
    assert torch.equal(_greedy(sync_free, ids, n), ref)
    assert sync_free.get_input_embeddings().head_row_calls == n - 1


def test_tied_decode_embedding_equals_host_gather(tied):
    """A decode step's embedding from the head rows equals the host gather bit for bit (incl. Gemma's embed_scale)."""
    arch, full = tied
    ids = _prompt(seed=13, L=6)
    model = _tailored(full, _vocab(_random_ids(80)), offload_embedding=True, compact_head=True)
    emb, orig = model.get_input_embeddings(), full.get_input_embeddings()
    seen = []
    emb.register_forward_hook(lambda m, a, o: seen.append((a[0].clone(), o.clone(), m._decode_step)))
    with torch.inference_mode():
        _, cache = _step(model, ids)
        tok = request_vocab(model).vocab_ids[5:7].long().reshape(1, 2)  # two in-set ids at once
        _step(model, tok, cache)
        for got_ids, got, armed in seen:
            assert torch.equal(got, orig(got_ids)), arch
    assert [s[2] for s in seen] == [False, True]
    assert emb.host_calls == 1 and emb.head_row_calls == 1


def test_tied_decode_outside_set_falls_back_or_raises(tied):
    arch, full = tied
    ids = _prompt(seed=14, L=6)
    vs = _vocab([i for i in _random_ids(80) if i != 0])
    checked = _tailored(full, vs, offload_embedding=True, compact_head=True)
    asserting = _tailored(full, vs, offload_embedding=True, compact_head=True, tied_decode="assert")
    plain = _tailored(full, vs, offload_embedding=True, compact_head=False)
    outside = torch.tensor([[0]])  # the pad id: not in the set, nor in the prompt
    with torch.inference_mode():
        logits = {}
        for name, m in (("checked", checked), ("plain", plain)):
            _, cache = _step(m, ids)
            logits[name], _ = _step(m, outside, cache)
        assert 0 not in set(request_vocab(checked).vocab_ids.tolist())
        torch.testing.assert_close(logits["checked"], logits["plain"], rtol=1e-6, atol=1e-6)
        emb = checked.get_input_embeddings()
        assert emb.host_calls == 2 and emb.head_row_calls == 0  # the outside id took the host gather

        _, cache = _step(asserting, ids)
        with pytest.raises(ValueError, match="outside the request's vocabulary"):
            _step(asserting, outside, cache)
        emb = asserting.get_input_embeddings()
        assert not emb._decode_step, "the forward hook disarms the embedding even when the call raises"
        emb(outside)  # not armed (no top-level decode call): the host gather, no error


def test_tied_decode_batch_with_a_finished_row(tied):
    """generate feeds pad_token_id (outside the set) to a finished row: 'checked' falls back, output unchanged."""
    arch, full = tied
    ids, n = _prompt(seed=15, L=6, B=2), 8
    ref = _greedy(full, ids, n)
    L = ids.shape[1]
    gen0, gen1 = ref[0, L:].tolist(), ref[1, L:].tolist()
    cands = [(p, t) for p, t in enumerate(gen0[:-2]) if t not in gen1 and t not in gen0[:p] and t > 2]
    assert cands and 0 not in gen0 + gen1, "pick another seed"
    p, eos = cands[0]
    expected = ref.clone()
    expected[0, L + p + 1:] = 0  # row 0 stops at its eos, then gets pad
    vs = _vocab([i for i in gen0 + gen1 + _random_ids(100) if i != 0])
    model = _tailored(full, vs, offload_embedding=True, compact_head=True)
    plain = _tailored(full, vs, offload_embedding=True, compact_head=False)
    emb = model.get_input_embeddings()
    kw = dict(max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=0)
    with torch.inference_mode():
        out = model.generate(ids, **kw)
        assert torch.equal(out, plain.generate(ids, **kw))
    assert torch.equal(out, expected), f"{arch}: {out.tolist()} != {expected.tolist()}"
    # prefill + the steps after row 0 finished (pad in the batch) took the host gather; the others the head rows
    assert emb.host_calls == 1 + (n - 2 - p) and emb.head_row_calls == p + 1


def test_tied_decode_modes_and_untailor(tied):
    from leankern.vocab.hf import _TiedOffloadedEmbedding
    from leankern.vocab.embedding import OffloadedEmbedding

    arch, full = tied
    vs = _vocab(_random_ids(60))
    with pytest.raises(ValueError, match="tied_decode"):
        tailor(copy.deepcopy(full), vs, offload_embedding=True, compact_head=True, tied_decode="sometimes")
    off = _tailored(full, vs, offload_embedding=True, compact_head=True, tied_decode="off")
    e = off.get_input_embeddings()
    assert isinstance(e, OffloadedEmbedding) and not isinstance(e, _TiedOffloadedEmbedding)
    assert not isinstance(_tailored(_build("llama"), vs, offload_embedding=True, compact_head=True)
                          .get_input_embeddings(), _TiedOffloadedEmbedding), "untied: the head rows are not the table"

    model = copy.deepcopy(full)
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    weight = head.weight
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    tailor(model, vs, offload_embedding=True, compact_head=True)
    assert isinstance(model.get_input_embeddings(), _TiedOffloadedEmbedding)
    assert len(model._forward_pre_hooks) == 1 and len(model._forward_hooks) == 1
    _greedy(model, _prompt(), 3)
    untailor(model)
    assert model.get_input_embeddings() is emb and model.get_output_embeddings() is head and head.weight is weight
    assert emb.weight is weight, "still tied"
    assert len(model._forward_pre_hooks) == 0 and len(model._forward_hooks) == 0
    now = model.state_dict()
    assert now.keys() == saved.keys() and all(torch.equal(now[k], v) for k, v in saved.items())
    ids = _prompt()
    assert torch.equal(_greedy(model, ids), _greedy(full, ids))


# ------------------------------------------------------------------ quantized (MX / NV) heads
def _quantized(full, fmt="mxfp4", **kw):
    import leankern

    model = copy.deepcopy(full)
    leankern.quantize_model(model, fmt, include_lm_head=True, **kw)
    return model


@pytest.mark.parametrize("fmt,kw", [("mxfp4", {}), ("nvfp4", {}), ("mxint4", dict(rotate=32)),
                                    ("mxint8", dict(act_fmt="mxint8"))], ids=["mxfp4", "nvfp4", "mxint4-rot", "dual"])
def test_quantized_head_is_tailored_with_its_own_logits(base, fmt, kw):
    """A QuantLinear head (quantize_model(include_lm_head=True)): the in-set logits are the quantized head's bit for
    bit (the same kernel over the K rows read out of its prepacked codes), outside ids -inf, greedy unchanged."""
    from leankern.nn import QuantLinear

    arch, full = base
    qfull = _quantized(full, fmt, **kw)
    assert isinstance(qfull.get_output_embeddings(), QuantLinear)
    ids = _prompt(L=9, seed=12)
    ref_g = _greedy(qfull, ids)
    model = _tailored(qfull, _vocab(ref_g[0].tolist() + _random_ids(100)))
    head = model.get_output_embeddings()
    assert isinstance(head, TailoredHead) and head.quantized
    assert torch.equal(_greedy(model, ids), ref_g), arch
    with torch.inference_mode():
        ref, got = qfull(ids).logits, model(ids).logits
    vocab_ids = request_vocab(model).vocab_ids.long()
    assert torch.equal(got[..., vocab_ids], ref[..., vocab_ids]), arch
    outside = torch.ones(V, dtype=torch.bool)
    outside[vocab_ids] = False
    assert torch.isneginf(got[..., outside]).all()


@pytest.mark.parametrize("compact", [False, True])
def test_quantized_head_bytes_and_untailor(compact):
    full = _build("llama")
    qfull = _quantized(full)
    model = copy.deepcopy(qfull)
    q = model.get_output_embeddings()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    qbytes = q.codes.numel() + q.scales.numel()  # uint8 buffers (prepacked: scales inside the codes)
    tailor(model, _vocab(_random_ids(60)), compact_head=compact)
    ids = _prompt(seed=13)
    _greedy(model, ids, 3)
    head = model.get_output_embeddings()
    K = len(head.request)
    rows = head._rows  # the request's rows, prepacked: K padded to a multiple of 16 rows
    assert rows.layout == "prepacked16" and rows.shape == (K, H)
    assert rows.codes.numel() == -(-K // 16) * 16 * (H // 32) * (1 + 16)  # mxfp4: 16 B codes + 1 scale per block
    b = vocab_bytes(model)
    assert b["before"]["head"] == qbytes
    if compact:  # only the K rows count on the device; the full quantized head is host memory
        assert b["head"] == rows.codes.numel() and b["host"] == qbytes
    else:
        assert b["head"] == qbytes + rows.codes.numel() and b["host"] == 0
    untailor(model)
    assert model.get_output_embeddings() is q
    now = model.state_dict()
    assert now.keys() == saved.keys() and all(torch.equal(now[k], v) for k, v in saved.items())
    assert torch.equal(_greedy(model, ids), _greedy(qfull, ids))


def test_sefp_head_is_tailored_and_follows_set_precision():
    """An SEFPLinear head: the K rows keep every plane, so set_precision(model, m) (which finds the head under its
    own name through TailoredHead.wrapped_layer) switches the tailored head too; in-set logits equal the full
    SEFP head's at each width."""
    import leankern

    full = copy.deepcopy(_build("gemma2"))  # soft-capped
    leankern.quantize_model(full, "sefp", include_lm_head=True)
    ids = _prompt(L=9, seed=14)
    model = _tailored(full, _vocab(_greedy(full, ids)[0].tolist() + _random_ids(100)), compact_head=True)
    head = model.get_output_embeddings()
    assert head.quantized and isinstance(head.wrapped_layer, leankern.SEFPLinear)
    for m in (8, 5, 3):
        assert leankern.set_precision(full, m)["lm_head"] == m and leankern.set_precision(model, m)["lm_head"] == m
        assert head.wrapped_layer.m == m
        if m == 8:  # the set holds the full model's greedy ids at m = 8 (other widths may choose ids outside it)
            assert torch.equal(_greedy(model, ids), _greedy(full, ids))
        with torch.inference_mode():
            ref, got = full(ids).logits, model(ids).logits
        vocab_ids = request_vocab(model).vocab_ids.long()
        assert torch.equal(got[..., vocab_ids], ref[..., vocab_ids]), m
    rows = head._rows  # all 1 + m_max planes of the K rows
    assert rows.planes.shape[:2] == (9, len(head.request))
    assert vocab_bytes(model)["head"] == rows.planes.numel() * 4 + rows.exponents.numel()
    untailor(model)
    assert isinstance(model.get_output_embeddings(), leankern.SEFPLinear)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bench/gpu_check.sh runs the ids naming cuda)")
@pytest.mark.parametrize("compact", [False, True])
def test_quantized_head_tailored_on_cuda(compact):
    """On a GPU the quantized head is row-major and multiplied by the Triton kernels; compact_head moves the full
    quantized head to host memory and back on untailor. Another N may split K otherwise there: in-set logits within
    fp32 summation noise of the full head's, greedy unchanged."""
    qfull = _quantized(_build("llama")).to("cuda")
    ids = _prompt(L=9, seed=15).cuda()
    ref_g = _greedy(qfull, ids)
    model = _tailored(qfull, _vocab(ref_g[0].tolist() + _random_ids(100)), compact_head=compact)
    q = model.get_output_embeddings().wrapped_layer
    assert q.codes.device.type == ("cpu" if compact else "cuda")
    assert torch.equal(_greedy(model, ids), ref_g)
    with torch.inference_mode():
        ref, got = qfull(ids).logits, model(ids).logits
    vocab_ids = request_vocab(model).vocab_ids.long().cuda()
    torch.testing.assert_close(got[..., vocab_ids], ref[..., vocab_ids], rtol=1e-5, atol=1e-5)
    assert vocab_bytes(model)["head"] > 0
    untailor(model)
    assert model.get_output_embeddings().codes.device.type == "cuda"


def test_other_heads_are_refused():
    model = copy.deepcopy(_build("llama"))
    model.set_output_embeddings(torch.nn.Identity())
    with pytest.raises(TypeError, match=r"^model.get_output_embeddings\(\): expected an nn.Linear, a leankern "
                                        r"QuantLinear or SEFPLinear head, got Identity$"):
        tailor(model, _vocab(range(10)))


# ------------------------------------------------------------- explicit requests, assisted generation
def test_explicit_request_is_kept_by_the_next_call_only():
    """TailoredHead.set_request: the model's next top-level call keeps that set even when it is a prefill (no
    cache), the call after it follows the prefill rule again."""
    model = _tailored(_build("llama"), _vocab(range(100, 130)))
    head = model.get_output_embeddings()
    prompt, extra, other = [5, 17, 42], [900, 901], [950, 951]
    head.set_request(torch.tensor([prompt]))
    with torch.inference_mode():
        model(torch.tensor([prompt + extra]))  # a cache-less call over prompt + more ids: the set stays
        assert {5, 17, 42} <= set(request_vocab(model).vocab_ids.tolist())
        assert not {900, 901} & set(request_vocab(model).vocab_ids.tolist())
        model(torch.tensor([other]))  # the next prefill builds its own set
    assert {950, 951} <= set(request_vocab(model).vocab_ids.tolist())
    assert not {5, 17, 42} & set(request_vocab(model).vocab_ids.tolist())


def test_hf_assisted_generation_with_an_explicit_request():
    """Hugging Face generate(assistant_model=...): the target's first forward is prompt + candidates with an empty
    cache (a prefill by the rule); with a draft that proposes the full model's picks, those ids joined the set and
    won. set_request(prompt) right before generate keeps the prompt's set: greedy equals the tailored model's own."""
    full = _build("llama")
    ids = _prompt(seed=21)
    n = 8
    picks = _greedy(full, ids, n)[0, ids.shape[1]:].tolist()
    static = [i for i in range(3, 300) if i not in picks and i not in ids[0].tolist()]
    allowed = set(static) | set(ids[0].tolist()) | {1, 2}
    model = _tailored(full, _vocab(static))
    ref = _greedy(model, ids, n)
    draft = copy.deepcopy(full)
    model.get_output_embeddings().set_request(ids)
    with torch.inference_mode():
        got = model.generate(ids, assistant_model=draft, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    assert torch.equal(got, ref)
    assert set(got[0, ids.shape[1]:].tolist()) <= allowed
    assert set(request_vocab(model).vocab_ids.tolist()) == allowed


# ---------------------------------------------------------------- state_dict, casts, pickling
_HEADS = {"plain-compact": (None, True), "mxfp4": ("mxfp4", False), "mxfp4-compact": ("mxfp4", True),
          "sefp": ("sefp", False)}


def _head_model(kind, seed, arch="llama"):
    import leankern

    fmt, compact = _HEADS[kind]
    model = _build(arch, seed)
    if fmt is not None:
        leankern.quantize_model(model, fmt, include_lm_head=True)
    return model, compact


@pytest.mark.parametrize("kind", list(_HEADS))
def test_state_dict_of_a_tailored_model_holds_the_head_and_round_trips(kind):
    """A quantized or compact head is held outside the module tree: state_dict() had no lm_head entries and a strict
    load into another tailored model matched all keys and kept that model's old head. Now the tailored model's
    state_dict equals the untailored one's (keys and values); a strict load writes into the held head and takes the
    request's rows again; untailored and tailored checkpoints load into each other."""
    ua, compact = _head_model(kind, 0)
    ub, _ = _head_model(kind, 1)
    vs = _vocab(_random_ids(200))
    a, b = tailor(copy.deepcopy(ua), vs, compact_head=compact), tailor(copy.deepcopy(ub), vs, compact_head=compact)
    ids = _prompt(seed=22)
    with torch.inference_mode():
        b(ids)  # b holds the request's rows of its own (old) head
    sa, su = a.state_dict(), ua.state_dict()
    assert any(k.startswith("lm_head.") for k in sa)
    assert sa.keys() == su.keys() and all(torch.equal(sa[k], su[k]) for k in su)
    b.load_state_dict(sa, strict=True)
    with torch.inference_mode():
        assert torch.equal(b(ids).logits, a(ids).logits)
    c = tailor(copy.deepcopy(ub), vs, compact_head=compact)  # an untailored checkpoint into a tailored model
    c.load_state_dict(su, strict=True)
    uc = copy.deepcopy(ub)  # a tailored checkpoint into an untailored model
    uc.load_state_dict(sa, strict=True)
    with torch.inference_mode():
        assert torch.equal(c(ids).logits, a(ids).logits)
        assert torch.equal(uc(ids).logits, ua(ids).logits)
    untailor(b)
    now = b.state_dict()
    assert all(torch.equal(now[k], v) for k, v in su.items())
    with torch.inference_mode():
        assert torch.equal(b(ids).logits, ua(ids).logits)


def test_load_state_dict_into_a_tailored_quantized_head_checks_its_configuration():
    """The load goes through the held QuantLinear's own checks: another format's checkpoint is refused, not kept."""
    a, _ = _head_model("mxfp4", 0)
    b, _ = _head_model("sefp", 1)
    sa = a.state_dict()
    model = tailor(copy.deepcopy(_quantized(_build("llama", 1), "nvfp4")), _vocab(range(50)))
    with pytest.raises(RuntimeError, match="lm_head.meta"):
        model.load_state_dict(sa, strict=True)
    with pytest.raises(RuntimeError, match="lm_head"):
        tailor(copy.deepcopy(b), _vocab(range(50))).load_state_dict(sa, strict=True)


@pytest.mark.parametrize("cast", ["half", "bf16"])
@pytest.mark.parametrize("arch,kind", [("llama", "plain-compact"), ("qwen3", "plain-compact"),
                                       ("llama", "plain"), ("llama", "mxfp4-compact")])
def test_cast_then_untailor_gives_a_head_matching_the_model(arch, kind, cast):
    """tailor(compact_head=True) -> model.half() / .to(bf16) -> untailor gave back an fp32 head (the compact head
    held it outside the module tree) and every forward raised. Casts now reach the held head: while tailored the
    rows follow the cast; after untailor the model equals the full model cast the same way, bit for bit."""
    if kind == "plain":
        full, compact = _build(arch), False
    else:
        full, compact = _head_model(kind, 0, arch)
    model = tailor(copy.deepcopy(full), _vocab(_random_ids(300)), compact_head=compact)
    ids = _prompt(seed=23)
    with torch.inference_mode():
        model(ids)  # a request with rows of the fp32 head
    do = (lambda m: m.half()) if cast == "half" else (lambda m: m.to(torch.bfloat16))
    dtype = torch.float16 if cast == "half" else torch.bfloat16
    model, ref = do(model), do(copy.deepcopy(full))
    head = model.get_output_embeddings()
    if not head.quantized:
        assert head._rows is None or head._rows.dtype == dtype
        assert head.weight.dtype == dtype
    with torch.inference_mode():
        got = model(ids).logits
        want = ref(ids).logits
    assert got.dtype == dtype
    vocab_ids = request_vocab(model).vocab_ids.long()
    torch.testing.assert_close(got[..., vocab_ids].float(), want[..., vocab_ids].float(), rtol=2e-2, atol=2e-2)
    untailor(model)
    restored = model.get_output_embeddings()
    if not head.quantized:
        assert restored.weight.dtype == dtype == model.get_input_embeddings().weight.dtype
    now, saved = model.state_dict(), ref.state_dict()
    assert now.keys() == saved.keys()
    assert all(torch.equal(now[k], v) and now[k].dtype == v.dtype for k, v in saved.items())
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, want)


@pytest.mark.parametrize("arch,kind,kw", [("llama", "plain", {}), ("llama", "mxfp4-compact", {}),
                                          ("qwen3", "plain", dict(compact_head=True, offload_embedding=True))],
                         ids=["llama", "llama-mxfp4-compact", "qwen3-tied-compact-offloaded"])
def test_torch_save_of_a_tailored_model_round_trips(arch, kind, kw):
    """The prefill hook was a local closure: torch.save(model) raised "Can't pickle local object". The hooks are
    module-level callable objects holding names: the loaded model runs tailored (its own head's requests), equals
    the original's greedy output, and untailor on it removes its own hooks only."""
    import io

    if kind == "plain":
        full, compact = _build(arch), kw.get("compact_head", False)
    else:
        full, compact = _head_model(kind, 0, arch)
    model = tailor(copy.deepcopy(full), _vocab(_random_ids(200)), **dict(kw, compact_head=compact))
    ids = _prompt(seed=24)
    ref = _greedy(model, ids)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    head = loaded.get_output_embeddings()
    assert isinstance(head, TailoredHead) and head is not model.get_output_embeddings()
    p2 = _prompt(seed=25)
    assert torch.equal(_greedy(loaded, p2), _greedy(tailor(copy.deepcopy(full), _vocab(_random_ids(200)),
                                                         **dict(kw, compact_head=compact)), p2))
    assert set(p2[0].tolist()) <= set(request_vocab(loaded).vocab_ids.tolist())
    assert not set(p2[0].tolist()) <= set(request_vocab(model).vocab_ids.tolist())
    assert torch.equal(_greedy(loaded, ids), ref)
    untailor(loaded)
    assert len(loaded._forward_pre_hooks) == 0 and len(model._forward_pre_hooks) == 1
    assert not isinstance(loaded.get_output_embeddings(), TailoredHead)
    assert torch.equal(_greedy(loaded, ids), _greedy(full, ids))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bench/gpu_check.sh runs the ids naming cuda)")
@pytest.mark.parametrize("kind", ["plain-compact", "mxfp4", "mxfp4-compact"])
def test_tailored_on_cpu_then_moved_to_cuda(kind):
    """model.to("cuda") after tailor reaches the held head: a quantized head moves with the model (compact: its
    full table stays in host memory) and the request's rows follow the compute device; untailor gives back a head
    on the model's device."""
    full, compact = _head_model(kind, 0)
    ids = _prompt(L=9, seed=26)
    ref_g = _greedy(full, ids)
    model = tailor(copy.deepcopy(full), _vocab(ref_g[0].tolist() + _random_ids(100)), compact_head=compact)
    _greedy(model, ids, 2)  # a request with CPU rows
    model, full = model.to("cuda"), copy.deepcopy(full).to("cuda")
    head = model.get_output_embeddings()
    assert head.device.type == "cuda" and head.vocab_ids.device.type == "cuda"
    held = head.original.codes if head.quantized else head.original.weight
    assert held.device.type == ("cpu" if compact else "cuda")
    assert torch.equal(_greedy(model, ids.cuda()), ref_g.cuda())
    untailor(model)
    restored = model.get_output_embeddings()
    assert (restored.codes if head.quantized else restored.weight).device.type == "cuda"
    assert torch.equal(_greedy(model, ids.cuda()), _greedy(full, ids.cuda()))
