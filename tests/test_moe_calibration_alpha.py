"""leankern.moe.calibration.calibrate_alpha: MoDES's per-layer, per-modality importance by KL of ablations, on tiny
random Qwen3-MoE / DeepSeek-V3 models (fp32, seeded, no downloads)."""
import copy
import math

import pytest
import torch

tf = pytest.importorskip("transformers")

from leankern.moe import hf  # noqa: E402
from leankern.moe.calibration import answer_positions, calibrate_alpha, kl_per_position  # noqa: E402
from leankern.moe.config import SkipConfig  # noqa: E402
from leankern.moe.search import kl_per_token  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

V, H, L = 128, 32, 3


def _model(arch="qwen3_moe", seed=0):
    common = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=8, max_position_embeddings=64, initializer_range=0.1, pad_token_id=0)
    if arch == "qwen3_moe":
        cfg = tf.Qwen3MoeConfig(**common, intermediate_size=48, moe_intermediate_size=16, num_experts=8,
                                num_experts_per_tok=2, norm_topk_prob=True)
        cls = tf.Qwen3MoeForCausalLM
    else:
        cfg = tf.DeepseekV3Config(**{**common, "num_key_value_heads": 4}, intermediate_size=48,
                                  moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2,
                                  n_shared_experts=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
                                  qk_nope_head_dim=8, v_head_dim=8, first_k_dense_replace=0, n_group=1, topk_group=1)
        cls = tf.DeepseekV3ForCausalLM
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for b in hf.moe_blocks(model):
            b.gate.weight.copy_(torch.randn(b.gate.weight.shape, generator=g) * 0.5)
    return model


_BASE = {}


def base(arch="qwen3_moe"):
    if arch not in _BASE:
        _BASE[arch] = _model(arch)
    return _BASE[arch]


def _batches(n=2, B=2, S=10, seed=2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, V, (B, S), generator=g)
        mask = torch.ones_like(ids)
        mask[1, :3] = 0  # left padding
        ids[1, :3] = 0
        out.append(dict(input_ids=ids, attention_mask=mask))
    return out


def _col_sums(alpha):
    return [sum(row[m] for row in alpha) for m in (0, 1)]


def test_shape_normalised_and_uniform_vision_on_text_model():
    model = copy.deepcopy(base())
    alpha, kl = calibrate_alpha(model, _batches(), progress=False, return_kl=True)
    assert len(alpha) == L and all(len(row) == 2 for row in alpha)
    assert _col_sums(alpha) == [pytest.approx(1.0), pytest.approx(1.0)]
    assert all(row[0] > 0 for row in alpha) and all(row[1] == pytest.approx(1 / L) for row in alpha)
    assert all(k[0] > 0 and k[1] == 0.0 for k in kl)
    # usable as a SkipConfig, and the model is left unpatched
    SkipConfig(rule="modes", alpha=alpha, tau_text=0.01, tau_vision=0.01)
    assert not hf.is_patched(model)


@pytest.mark.parametrize("layer", [0, 2])
def test_layer_whose_ablation_matters_more_gets_more_weight(layer):
    model = copy.deepcopy(base())
    with torch.no_grad():
        hf.moe_blocks(model)[layer].experts.down_proj.mul_(10.0)
    alpha = calibrate_alpha(model, _batches(), progress=False)
    col = [row[0] for row in alpha]
    assert max(range(L), key=col.__getitem__) == layer
    assert col[layer] > 0.5


def test_vision_column_from_modality_fn_and_state_restored():
    """On a patched model: the patch's modality_fn decides which tokens are vision; config, ablations and stats
    of the model come back as they were."""
    model = copy.deepcopy(base())
    with torch.no_grad():
        hf.moe_blocks(model)[1].experts.down_proj.mul_(10.0)
    fn = lambda ids: (ids < 50).int()  # noqa: E731
    cfg = SkipConfig(rule="top_k", param=1)
    hf.patch_model(model, cfg, modality_fn=fn)
    with torch.inference_mode():
        model(**_batches(1)[0])
    stats = hf.skip_stats(model)
    alpha = calibrate_alpha(model, _batches(), progress=True)
    assert _col_sums(alpha) == [pytest.approx(1.0), pytest.approx(1.0)]
    assert max(range(L), key=lambda i: alpha[i][1]) == 1
    assert alpha[0][1] != pytest.approx(1 / L)
    assert hf.is_patched(model) and hf._state(model).config is cfg and not hf._state(model).ablation
    assert hf.skip_stats(model) == stats


def test_vision_ablation_only_touches_vision_tokens():
    """A vision ablation changes nothing (up to GEMM rounding) when the measured answers are text tokens before any
    vision token (causal attention), while text ablations do."""
    model = copy.deepcopy(base())
    hf.patch_model(model, modality_fn=lambda ids: (torch.arange(ids.shape[1]) >= 8).int().expand_as(ids))
    b = _batches(1)[0]
    answer = torch.zeros_like(b["input_ids"], dtype=torch.bool)
    answer[:, 4:8] = True  # answer tokens 4..7 are predicted at positions 3..6, all before position 8
    alpha, kl = calibrate_alpha(model, [dict(b, answer_mask=answer)], progress=False, return_kl=True)
    assert all(k[1] < 1e-6 for k in kl) and all(k[0] > 1e-4 for k in kl)
    assert _col_sums(alpha) == [pytest.approx(1.0), pytest.approx(1.0)]


def test_answer_mask_fn_and_positions():
    am = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    attn = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    pos = answer_positions(am, attn, am.shape)
    assert pos.tolist() == [[False, True, True, False, False], [False, True, True, True, False]]
    assert answer_positions(None, attn, am.shape).tolist() == attn.bool().tolist()
    assert answer_positions(None, None, (2, 3)).all()
    with pytest.raises(ValueError, match="answer_mask"):
        answer_positions(am[:, :3], attn, am.shape)
    model = copy.deepcopy(base())
    batches = _batches()
    fn_calls = []

    def fn(batch):
        fn_calls.append(1)
        m = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        m[:, -4:] = True
        return m

    alpha = calibrate_alpha(model, batches, answer_mask_fn=fn, progress=False)
    assert len(fn_calls) == len(batches) and _col_sums(alpha)[0] == pytest.approx(1.0)


def test_kl_per_position():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g)
    lp = torch.log_softmax(a, -1)
    want = torch.nn.functional.kl_div(torch.log_softmax(b, -1), lp, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(kl_per_position(lp, b), want)
    assert torch.all(kl_per_position(lp, a) < 1e-6)


def test_kl_per_position_over_the_support():
    """An entry masked to -inf in both distributions (p = q = 0) contributes 0, not NaN: the search's KL."""
    logp = torch.log_softmax(torch.tensor([[2.0, 1.0, float("-inf")], [0.5, 0.5, float("-inf")]]), -1)
    q = torch.tensor([[1.0, 2.0, float("-inf")], [3.0, -1.0, float("-inf")]])
    got = kl_per_position(logp, q)
    torch.testing.assert_close(got, kl_per_position(logp[:, :2], q[:, :2]))  # the same KL without the entry
    torch.testing.assert_close(got, kl_per_token(logp, q))
    assert torch.isfinite(got).all() and got[0] == pytest.approx(0.4621, abs=1e-4)


def test_masked_vocabulary_entry_leaves_alpha_unchanged():
    """A model whose logits mask an unused vocabulary entry (-inf) calibrates as the model without that entry, not
    to the uniform fallback with NaN KL."""
    batches = _batches()
    results = []
    for mask in (lambda out: out[..., :-1], lambda out: out.index_fill(-1, torch.tensor([V - 1]), float("-inf"))):
        model = copy.deepcopy(base())
        model.lm_head.register_forward_hook(lambda m, i, out, mask=mask: mask(out))
        results.append(calibrate_alpha(model, batches, progress=False, return_kl=True))
    (alpha_cut, kl_cut), (alpha, kl) = results
    assert all(math.isfinite(r[0]) and r[0] > 0 for r in kl)
    assert alpha != [[1 / L, 1 / L]] * L
    for got, want in zip(alpha + kl, alpha_cut + kl_cut):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-9)


def test_deepseek_v3_shared_experts_kept_under_ablation():
    """DeepSeek-V3 (sigmoid router, shared expert): calibration runs and is normalised; an ablated layer still runs
    its shared expert (the logits under ablation differ from those with the whole MoE block zeroed)."""
    model = copy.deepcopy(base("deepseek_v3"))
    alpha = calibrate_alpha(model, _batches(1), progress=False)
    assert _col_sums(alpha)[0] == pytest.approx(1.0) and all(r[0] > 0 for r in alpha)
    hf.patch_model(model)
    b = _batches(1)[0]
    hf.set_ablation(model, 0, 0)
    with torch.inference_mode():
        abl = model(**b).logits
        blk = hf.moe_blocks(model)[0]
        x = torch.randn(1, 3, H)
        torch.testing.assert_close(blk(x), blk.shared_experts(x), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(abl).all()


def test_labels_act_as_answer_mask():
    model = copy.deepcopy(base())
    batches = _batches(1)
    ids = batches[0]["input_ids"]
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, 6:] = True
    labels = torch.where(answer, ids, torch.full_like(ids, -100))
    a1, kl1 = calibrate_alpha(model, [dict(batches[0], answer_mask=answer)], progress=False, return_kl=True)
    a2, kl2 = calibrate_alpha(model, [dict(batches[0], labels=labels)], progress=False, return_kl=True)
    flat = lambda rows: [v for row in rows for v in row]  # noqa: E731
    assert flat(a1) == pytest.approx(flat(a2)) and flat(kl1) == pytest.approx(flat(kl2))
    a3 = calibrate_alpha(model, batches, progress=False)
    assert flat(a3) != pytest.approx(flat(a1))


def test_alpha_drives_the_threshold_search_evaluator():
    """The alpha goes into SkipConfig(rule="modes") through patch_model: the frontier search's evaluator sees a skip
    ratio of 0 at tau 0 and 1 at a huge tau (leankern.moe.search, when present)."""
    search = pytest.importorskip("leankern.moe.search")
    if not hasattr(search, "threshold_evaluator"):
        pytest.skip("leankern.moe.search has no threshold_evaluator")
    model = copy.deepcopy(base())
    alpha = calibrate_alpha(model, _batches(1), progress=False)
    evaluate = search.threshold_evaluator(model, _batches(1), alpha)
    kl0, r0 = evaluate(0.0, 0.0)
    kl1, r1 = evaluate(1e6, 1e6)
    assert r0 == 0.0 and kl0 == pytest.approx(0.0, abs=1e-6)
    assert r1 == 1.0 and kl1 > 1e-3
