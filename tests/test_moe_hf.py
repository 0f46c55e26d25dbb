"""leankern.moe.hf: the Hugging Face drop-in (patch_model / unpatch_model / skip_stats / set_ablation) on tiny random
Qwen3-MoE, Qwen2-MoE, Mixtral, DeepSeek-V2, DeepSeek-V3, gpt-oss and Qwen3-VL-MoE models built from their configs
(fp32, seeded, no downloads)."""
import copy

import pytest
import torch

tf = pytest.importorskip("transformers")

import leankern  # noqa: E402
from leankern.moe import hf  # noqa: E402
from leankern.moe.config import SkipConfig  # noqa: E402

# Until the C++ kernels land the ops run their reference with a RuntimeWarning
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

V, H = 128, 32
COMMON = dict(vocab_size=V, hidden_size=H, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=8, max_position_embeddings=64, initializer_range=0.1, pad_token_id=0, bos_token_id=1,
              eos_token_id=2)
_DS = dict(num_key_value_heads=4, intermediate_size=48, moe_intermediate_size=16, n_routed_experts=8,
           num_experts_per_tok=2, n_shared_experts=1, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
           v_head_dim=8, routed_scaling_factor=1.5)
# arch -> (config class, model class, overrides, top_k)
ARCHS = {
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(intermediate_size=48, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=4,
                       norm_topk_prob=True), 4),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(intermediate_size=48, moe_intermediate_size=16, shared_expert_intermediate_size=24,
                       num_experts=8, num_experts_per_tok=2, norm_topk_prob=False), 2),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(intermediate_size=16, num_local_experts=8, num_experts_per_tok=2), 2),
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                    dict(_DS, first_k_dense_replace=0, q_lora_rank=None, topk_method="group_limited_greedy",
                         n_group=4, topk_group=2), 2),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                    dict(_DS, num_hidden_layers=3, first_k_dense_replace=1, q_lora_rank=16, n_group=4, topk_group=2,
                         norm_topk_prob=True, routed_scaling_factor=2.5), 2),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM",
                dict(intermediate_size=16, num_local_experts=8, num_experts_per_tok=2, sliding_window=8), 2),
}
AVAILABLE = [a for a, (c, m, _, _) in ARCHS.items() if hasattr(tf, c) and hasattr(tf, m)]


def _randomize_routers(model, seed=1):
    """Random routers (HF initialises some to zero: ties would make the expert choice arbitrary), biases too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in hf.moe_blocks(model):
            gate = b.router if hasattr(b, "router") else b.gate
            gate.weight.copy_(torch.randn(gate.weight.shape, generator=g) * 0.5)
            for name in ("bias", "e_score_correction_bias"):
                t = getattr(gate, name, None)
                if t is not None:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            for name in ("gate_up_proj_bias", "down_proj_bias"):
                t = getattr(b.experts, name, None)
                if t is not None:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model


def build(arch, seed=0, **over):
    cname, mname, kw, _ = ARCHS[arch]
    cfg = getattr(tf, cname)(**{**COMMON, **kw, **over})
    torch.manual_seed(seed)
    return _randomize_routers(getattr(tf, mname)(cfg).eval(), seed + 1)


_MODELS = {}


def base(arch):
    """The unpatched model of ``arch``, built once (tests patch a deep copy)."""
    if arch not in _MODELS:
        _MODELS[arch] = build(arch)
    return _MODELS[arch]


def _prompt(B=2, L=7, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (B, L), generator=g)


def _greedy(model, ids, n=4, **kw):
    with torch.inference_mode():
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, **kw)


def _block_out(block, x):
    out = block(x)
    return out[0] if isinstance(out, tuple) else out


def _shared_out(block, x):
    """What the block returns when every routed slot is skipped: its shared expert (gated), else 0."""
    if hasattr(block, "shared_experts"):
        return block.shared_experts(x)
    if hasattr(block, "shared_expert"):
        return torch.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)
    return torch.zeros_like(x)


# ------------------------------------------------------------------------------------------- equality
@pytest.mark.parametrize("arch", AVAILABLE)
def test_patched_forward_matches_original(arch):
    model = base(arch)
    ids = _prompt()
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding in row 1
    with torch.inference_mode():
        want = model(ids, attention_mask=mask).logits
        p = hf.patch_model(copy.deepcopy(model))
        got = p(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    st = hf.skip_stats(p)
    k = ARCHS[arch][3]
    n_moe = len(hf.moe_blocks(model))
    assert st["overall"] == 0.0 and st["per_layer"] == [0.0] * n_moe
    assert st["total"] == [int(mask.sum()) * k] * n_moe  # padding excluded


@pytest.mark.parametrize("arch", AVAILABLE)
def test_block_level_equality(arch):
    """Each patched block alone (no top-level call: all text, all non-padding) equals the original block."""
    model = base(arch)
    p = hf.patch_model(copy.deepcopy(model))
    x = torch.randn(3, 5, H, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        for b0, b1 in zip(hf.moe_blocks(model), hf.moe_blocks(p)):
            torch.testing.assert_close(_block_out(b1, x), _block_out(b0, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", [a for a in ("qwen3_moe", "mixtral", "deepseek_v3", "gpt_oss") if a in AVAILABLE])
def test_generate_equals_unpatched_greedy(arch):
    model = base(arch)
    ids = _prompt(B=1, L=6, seed=5)
    want = _greedy(model, ids)
    p = hf.patch_model(copy.deepcopy(model))
    got = _greedy(p, ids)
    assert torch.equal(got, want)
    st = hf.skip_stats(p)
    k = ARCHS[arch][3]
    # prefill 6 tokens + 3 decode steps of 1 token (the 4th token needs no forward)
    assert st["total"][0] == (6 + 3) * k and st["overall"] == 0.0


def test_generate_batched_left_padding_qwen3():
    model = base("qwen3_moe")
    ids = _prompt(B=2, L=6, seed=6)
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = 0, 0
    want = _greedy(model, ids, attention_mask=mask)
    p = hf.patch_model(copy.deepcopy(model))
    got = _greedy(p, ids, attention_mask=mask)
    assert torch.equal(got, want)
    assert hf.skip_stats(p)["total"][0] == (10 + 2 * 3) * 4


def test_shared_expert_with_bias_falls_back_to_the_module():
    """DeepSeek-V2 with ``mlp_bias``: the shared MLP has biases the fused shared expert lacks: it is called as is."""
    if "deepseek_v2" not in AVAILABLE:
        pytest.skip("no DeepSeek-V2 in this transformers")
    model = build("deepseek_v2", mlp_bias=True)
    with torch.no_grad():
        for b in hf.moe_blocks(model):
            b.shared_experts.gate_proj.bias.normal_()
    ids = _prompt()
    with torch.inference_mode():
        want = model(ids).logits
        p = hf.patch_model(copy.deepcopy(model))
        got = p(ids).logits
    b = hf.moe_blocks(p)[0]
    assert hf._fused_shared_kwargs(b.__dict__["_leankern_moe"], b, b.shared_experts) is None
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


SHARED_ARCHS = [a for a in ("qwen2_moe", "deepseek_v2", "deepseek_v3") if a in AVAILABLE]
# (arch, how): "after": patch, then quantize_model (mxfp4: the shared MLP's linears whose in_features is a multiple
# of 32 become QuantLinear, the others stay nn.Linear; sefp: every linear becomes SEFPLinear); "gate_before" /
# "gate_after": only Qwen2-MoE's shared_expert_gate is quantized, before / after patching
SHARED_QUANT_CASES = ([(a, "after", f) for a in SHARED_ARCHS for f in ("mxfp4", "sefp")]
                      + [("qwen2_moe", h, "mxint8") for h in ("gate_before", "gate_after") if "qwen2_moe" in AVAILABLE])


@pytest.mark.parametrize("arch,how,fmt", SHARED_QUANT_CASES)
def test_quantized_shared_expert_is_called_as_a_module(arch, how, fmt, monkeypatch):
    """leankern.quantize_model on a patched model (or a model whose shared gate is quantized, then patched): the
    shared expert's linears / gate are QuantLinear / SEFPLinear, not plain tensors the fused op can read; the patched
    block calls the shared module instead (decided at every call) and matches the unpatched quantized model."""
    import leankern
    from leankern.nn import QuantLinear, SEFPLinear

    def quantize(m):
        if how == "after":
            rep = leankern.quantize_model(m, fmt)
        else:  # only the shared gate: every other linear of the model is named *_proj
            rep = leankern.quantize_model(m, fmt, skip=("*_proj",))
            assert sorted(r.name for r in rep.layers if r.skipped is None) == [
                f"model.layers.{i}.mlp.shared_expert_gate" for i in range(len(hf.moe_blocks(m)))]
        return m

    ref = quantize(copy.deepcopy(base(arch)))
    p = copy.deepcopy(base(arch))
    if how == "gate_before":
        quantize(p)
    hf.patch_model(p)
    if how != "gate_before":
        quantize(p)
    qcls = SEFPLinear if fmt == "sefp" else QuantLinear
    for b in hf.moe_blocks(p):
        shared = b.shared_expert if arch == "qwen2_moe" else b.shared_experts
        if how == "after":
            assert isinstance(shared.gate_proj, qcls) and isinstance(shared.up_proj, qcls)
        else:
            assert type(shared.gate_proj) is torch.nn.Linear and isinstance(b.shared_expert_gate, qcls)
    seen = []
    real = hf.experts

    def spy(*a, **kw):
        seen.append("shared_w1" in kw)
        return real(*a, **kw)

    monkeypatch.setattr(hf, "experts", spy)
    ids = _prompt()
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with torch.inference_mode():
        want = ref(ids, attention_mask=mask).logits
        got = p(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert seen == [False] * len(hf.moe_blocks(p))  # the shared module was called, not fused
    gids = _prompt(B=1, L=6, seed=5)
    assert torch.equal(_greedy(p, gids), _greedy(ref, gids))
    assert hf.skip_stats(p)["overall"] == 0.0


def test_output_router_logits_still_recorded():
    model = base("mixtral")
    ids = _prompt()
    with torch.inference_mode():
        want = model(ids, output_router_logits=True)
        p = hf.patch_model(copy.deepcopy(model))
        got = p(ids, output_router_logits=True)
    assert len(got.router_logits) == len(want.router_logits) == 2
    torch.testing.assert_close(got.aux_loss, want.aux_loss)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- skipping
@pytest.mark.parametrize("arch", AVAILABLE)
def test_modes_huge_tau_skips_every_routed_slot(arch):
    model = base(arch)
    n = len(hf.moe_blocks(model))
    cfg = SkipConfig(rule="modes", alpha=[[1.0, 1.0]] * n, tau_text=1e6, tau_vision=1e6)
    p = hf.patch_model(copy.deepcopy(model), cfg)
    x = torch.randn(2, 5, H, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        for b in hf.moe_blocks(p):  # the block returns only its shared expert (or zeros)
            torch.testing.assert_close(_block_out(b, x), _shared_out(b, x), rtol=1e-5, atol=1e-6)
        hf.reset_skip_stats(p)
        p(_prompt())
    st = hf.skip_stats(p)
    assert st["overall"] == 1.0 and st["per_layer"] == [1.0] * n
    assert st["per_modality"]["text"] == 1.0


@pytest.mark.parametrize("arch", AVAILABLE)
def test_top_k_rule_changes_output_and_ratio(arch):
    model = base(arch)
    k = ARCHS[arch][3]
    ids = _prompt()
    with torch.inference_mode():
        want = model(ids).logits
        p = hf.patch_model(copy.deepcopy(model), SkipConfig(rule="top_k", param=1))
        got = p(ids).logits
    assert not torch.allclose(got, want, atol=1e-3)
    st = hf.skip_stats(p)
    assert st["overall"] == pytest.approx(1 - 1 / k)
    assert st["per_layer"] == [pytest.approx(1 - 1 / k)] * len(hf.moe_blocks(model))
    # switching back to no skipping restores the original outputs
    hf.set_skip_config(p, None)
    with torch.inference_mode():
        torch.testing.assert_close(p(ids).logits, want, rtol=1e-4, atol=1e-5)


def test_reset_and_ablation_stats():
    p = hf.patch_model(copy.deepcopy(base("qwen3_moe")))
    ids = _prompt()
    hf.set_ablation(p, 1, "text")
    with torch.inference_mode():
        p(ids)
    st = hf.skip_stats(p)
    assert st["per_layer"] == [0.0, 1.0] and st["overall"] == 0.5
    hf.reset_skip_stats(p)
    assert hf.skip_stats(p)["total"] == [0, 0]
    hf.set_ablation(p, 1, "vision")  # no vision token: nothing skipped there
    hf.set_ablation(p, 1, "text", enabled=False)
    with torch.inference_mode():
        p(ids)
    assert hf.skip_stats(p)["overall"] == 0.0
    hf.clear_ablation(p)
    with pytest.raises(ValueError, match="layer"):
        hf.set_ablation(p, 2, 0)
    with pytest.raises(ValueError, match="modality"):
        hf.set_ablation(p, 0, "audio")


def test_two_threads_each_read_their_own_modality_codes():
    """Two requests on one patched model at once: B (text) runs its whole forward while A (vision) waits inside
    its first MoE block. B's blocks read B's codes (they read A's, shared on the model: B's text tokens had their
    experts ablated as vision), and the skip counts of both calls are all there."""
    import threading

    p = hf.patch_model(copy.deepcopy(base("qwen3_moe")), modality_fn=lambda ids: (ids >= V // 2).to(torch.int32))
    for layer in range(2):
        hf.set_ablation(p, layer, "vision")
    g = torch.Generator().manual_seed(7)
    a_ids = torch.randint(V // 2, V, (1, 6), generator=g)  # all vision: every routed slot ablated
    b_ids = torch.randint(3, V // 2, (1, 6), generator=g)  # all text: nothing skipped
    with torch.inference_mode():
        want_a, want_b = p(a_ids).logits, p(b_ids).logits
    hf.reset_skip_stats(p)
    a_inside, b_done, got = threading.Event(), threading.Event(), {}

    def pause_a(module, args):
        if threading.current_thread().name == "A" and not a_inside.is_set():
            a_inside.set()
            assert b_done.wait(60), "B did not finish"

    handle = hf.moe_blocks(p)[0].register_forward_pre_hook(pause_a)

    def run(name, ids):
        with torch.inference_mode():
            got[name] = p(ids).logits
        if name == "B":
            b_done.set()

    a = threading.Thread(target=run, args=("A", a_ids), name="A")
    a.start()
    assert a_inside.wait(60)
    b = threading.Thread(target=run, args=("B", b_ids), name="B")
    b.start()
    b.join(60)
    a.join(60)
    handle.remove()
    assert torch.equal(got["B"], want_b) and torch.equal(got["A"], want_a)
    st = hf.skip_stats(p)
    assert st["total_slots"] == 2 * 2 * 6 * ARCHS["qwen3_moe"][3]  # 2 calls x 2 layers x 6 tokens x k
    assert st["per_modality"]["vision"] == 1.0 and st["per_modality"]["text"] == 0.0


# ------------------------------------------------------------------------------------------- in place
@pytest.mark.parametrize("arch", AVAILABLE)
def test_parameters_read_in_place(arch, monkeypatch):
    model = copy.deepcopy(base(arch))
    before = {n: (t.data_ptr(), tuple(t.shape)) for n, t in model.state_dict().items()}
    n_params = sum(1 for _ in model.parameters())
    hf.patch_model(model)
    after = {n: (t.data_ptr(), tuple(t.shape)) for n, t in model.state_dict().items()}
    assert after == before and sum(1 for _ in model.parameters()) == n_params  # nothing added or copied
    seen = []
    real = hf.experts

    def spy(x, w13, w2, *args, **kw):
        seen.append((w13.data_ptr(), w2.data_ptr(), w13.shape, {k: v.data_ptr() for k, v in kw.items()
                                                                if isinstance(v, torch.Tensor)}))
        return real(x, w13, w2, *args, **kw)

    monkeypatch.setattr(hf, "experts", spy)
    with torch.inference_mode():
        model(_prompt())
    blocks = hf.moe_blocks(model)
    assert len(seen) == len(blocks)
    for (p13, p2, shape, kw), b in zip(seen, blocks):
        assert p13 == b.experts.gate_up_proj.data_ptr() and p2 == b.experts.down_proj.data_ptr()
        E = b.experts.gate_up_proj.shape[0]
        assert shape[0] == E and shape[2] == H  # [E, 2I, H] (gpt-oss: a transposed view)
        if arch == "gpt_oss":
            assert kw["w13_bias"] == b.experts.gate_up_proj_bias.data_ptr()
            assert kw["w2_bias"] == b.experts.down_proj_bias.data_ptr()
        shared = getattr(b, "shared_experts", None) or getattr(b, "shared_expert", None)
        if shared is not None:
            assert kw["shared_w1"] == shared.gate_proj.weight.data_ptr()
            assert kw["shared_w3"] == shared.up_proj.weight.data_ptr()
            assert kw["shared_w2"] == shared.down_proj.weight.data_ptr()
        if arch == "qwen2_moe":
            assert kw["shared_gate"] == b.shared_expert_gate.weight.data_ptr()


def test_unpatch_restores_everything():
    model = copy.deepcopy(base("deepseek_v3"))
    cls_forward = type(hf.moe_blocks(model)[0]).forward
    pre, post = len(model._forward_pre_hooks), len(model._forward_hooks)
    hf.patch_model(model)
    assert hf.is_patched(model)
    hf.unpatch_model(model)
    assert not hf.is_patched(model)
    assert len(model._forward_pre_hooks) == pre and len(model._forward_hooks) == post
    for b in hf.moe_blocks(model):
        assert "forward" not in b.__dict__ and b.forward.__func__ is cls_forward
    with pytest.raises(ValueError, match="not patched"):
        hf.skip_stats(model)


def test_deepcopy_of_patched_model_is_independent():
    p = hf.patch_model(copy.deepcopy(base("mixtral")))
    q = copy.deepcopy(p)
    with torch.inference_mode():
        q(_prompt())
    assert hf.skip_stats(p)["total"] == [0, 0] and hf.skip_stats(q)["total"][0] > 0


def test_bad_arguments():
    model = copy.deepcopy(base("qwen3_moe"))
    with pytest.raises(ValueError, match="alpha"):
        hf.patch_model(model, SkipConfig(rule="modes", alpha=[[0.5, 0.5]] * 3))
    assert not hf.is_patched(model)
    dense = tf.Qwen3ForCausalLM(tf.Qwen3Config(**COMMON, intermediate_size=32))
    with pytest.raises(ValueError, match="no supported sparse-MoE block"):
        hf.patch_model(dense)
    # patching again updates the config
    hf.patch_model(model)
    hf.patch_model(model, SkipConfig(rule="top_k", param=2))
    assert hf._state(model).config.rule == "top_k"


NAN, INF = float("nan"), float("inf")
# (SkipConfig kwargs, the message): the ops' own rules, raised when the config is built, naming the field
BAD_CONFIGS = [
    (dict(rule="top_k"), r"param: expected top_k's k to be an integer >= 1, got 0.0"),  # the default param
    (dict(rule="top_k", param=1.5), r"param: expected top_k's k to be an integer >= 1, got 1.5"),
    (dict(rule="naee", param=2.0), r"param: expected naee's parameter in \[0, 1\], got 2.0"),
    (dict(rule="top_p", param=-0.5), r"param: expected top_p's parameter in \[0, 1\], got -0.5"),
    (dict(rule="min_p", param=NAN), r"param: expected a finite value, got nan"),
    (dict(rule="modes", alpha=[[0.5, 0.5]] * 2, tau_text=NAN), r"tau_text: expected a finite value, got nan"),
    (dict(rule="modes", alpha=[[0.5, 0.5]] * 2, tau_vision=-INF), r"tau_vision: expected a finite value, got -inf"),
    (dict(rule="modes", alpha=[[0.5, 0.5], [INF, 0.5]]), r"alpha\[1\]\[0\]: expected a finite value, got inf"),
]


@pytest.mark.parametrize("kw,msg", BAD_CONFIGS)
def test_skip_config_parameters_checked_when_built(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SkipConfig(**kw)
    with pytest.raises(TypeError, match="param: expected a number, got str"):
        SkipConfig(rule="top_k", param="2")


@pytest.mark.parametrize("kw,msg", BAD_CONFIGS)
def test_patch_model_and_set_skip_config_check_the_config_fields(kw, msg):
    """A field changed after the config was built is caught by patch_model / set_skip_config, not by the first
    forward (with the op's message, which names skip_params)."""
    fine = {"top_k": {"param": 1}, "modes": {"tau_text": 0.1, "tau_vision": 0.1, "alpha": [[0.5, 0.5]] * 2}}
    good = dict(kw, **fine.get(kw["rule"], {"param": 0.5}))
    cfg = SkipConfig(**good)
    for name in ("param", "tau_text", "tau_vision"):  # the bad fields (the default 0.0 for top_k's param)
        setattr(cfg, name, kw.get(name, 0.0))
    if "alpha" in kw:
        cfg.alpha[1][0] = kw["alpha"][1][0]
    model = copy.deepcopy(base("qwen3_moe"))
    with pytest.raises(ValueError, match=msg):
        hf.patch_model(model, cfg)
    assert not hf.is_patched(model)
    hf.patch_model(model)
    with pytest.raises(ValueError, match=msg):
        hf.set_skip_config(model, cfg)
    with pytest.raises(ValueError, match=msg):
        hf.patch_model(model, cfg)  # re-patching updates the config: checked the same way
    assert hf._state(model).config is None


# ------------------------------------------------------------------------------------------- pickling
@pytest.mark.parametrize("arch", [a for a in ("qwen3_moe", "qwen2_moe", "gpt_oss") if a in AVAILABLE])
def test_patched_model_pickles(arch, tmp_path):
    """torch.save(model) / torch.load(weights_only=False) round-trips a patched model: it still runs patched, on its
    own state (config, statistics, hooks), independent of the original."""
    model = base(arch)
    p = hf.patch_model(copy.deepcopy(model), SkipConfig(rule="top_k", param=1))
    ids = _prompt()
    with torch.inference_mode():
        want = p(ids).logits
    torch.save(p, tmp_path / "model.pt")
    q = torch.load(tmp_path / "model.pt", weights_only=False)
    assert hf.is_patched(q) and hf._state(q).config == SkipConfig(rule="top_k", param=1)
    assert hf.skip_stats(q) == hf.skip_stats(p)
    hf.reset_skip_stats(q)
    with torch.inference_mode():
        got = q(ids).logits
    assert torch.equal(got, want)
    k, n = ARCHS[arch][3], len(hf.moe_blocks(q))
    assert hf.skip_stats(q)["overall"] == pytest.approx(1 - 1 / k)  # the loaded blocks count into q's state
    assert hf.skip_stats(q)["total"] == [ids.numel() * k] * n and hf.skip_stats(p)["total"] == [ids.numel() * k] * n
    hf.unpatch_model(q)
    with torch.inference_mode():
        torch.testing.assert_close(q(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)


def test_default_modality_fn_pickles():
    import pickle
    import types

    fn = hf.default_modality_fn(types.SimpleNamespace(image_token_id=5, vision_start_token_id=6))
    back = pickle.loads(pickle.dumps(fn))
    assert back.vision_ids == [5] and back.special_ids == [6]
    ids = torch.tensor([[4, 5, 6, 7]])
    assert torch.equal(back(ids), fn(ids)) and fn(ids).tolist() == [[0, 1, 2, 0]]


# --------------------------------------------------------------------------------------------- nesting
def test_blocks_patched_through_another_module_are_rejected():
    """One patch state per block: patching the decoder and then the LM around it (or the other way round) is
    rejected, naming the block; the first patch stays whole."""
    model = copy.deepcopy(base("qwen3_moe"))
    hf.patch_model(model.model)
    with pytest.raises(ValueError, match=r"model: MoE block 'model.layers.0.mlp' \(Qwen3MoeSparseMoeBlock, MoE "
                                         r"layer 0\) is already patched through another module \(a Qwen3MoeModel\); "
                                         r"call unpatch_model on that module first"):
        hf.patch_model(model)
    assert not hf.is_patched(model)
    with torch.inference_mode():
        model(_prompt())
    assert hf.skip_stats(model.model)["total"] == [_prompt().numel() * 4] * 2
    hf.unpatch_model(model.model)
    hf.patch_model(model)
    with pytest.raises(ValueError, match=r"model: MoE block 'layers.0.mlp' \(Qwen3MoeSparseMoeBlock, MoE layer 0\) "
                                         r"is already patched through another module \(a Qwen3MoeForCausalLM\)"):
        hf.patch_model(model.model)
    assert not hf.is_patched(model.model)
    hf.unpatch_model(model)
    assert all("forward" not in b.__dict__ for b in hf.moe_blocks(model))


@pytest.mark.parametrize("arch", ["qwen2_moe", "deepseek_v3"])
def test_patched_block_compiles_fullgraph(arch):
    """A patched block (shared expert fused, decided per call) under torch.compile(fullgraph=True): the eager
    result; quantizing the shared expert afterwards recompiles to the module call."""
    model = copy.deepcopy(base(arch))
    hf.patch_model(model)
    block = hf.moe_blocks(model)[0]
    H = model.config.hidden_size
    x = torch.randn(2, 5, H, generator=torch.Generator().manual_seed(8))
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        assert torch.equal(_block_out(compiled, x), _block_out(block, x))
        report = leankern.quantize_model(model, "mxint8")  # the shared expert's linears (and gate) among them
        assert any("shared_expert" in r.name for r in report.replaced)
        assert torch.equal(_block_out(compiled, x), _block_out(block, x))


def test_a_single_block_can_be_the_patched_model():
    """patch_model(block): the block's own state and the model state live under two keys (one overwrote the
    other, and the block's forward failed)."""
    block = copy.deepcopy(hf.moe_blocks(base("qwen3_moe"))[0])
    x = torch.randn(2, 5, block.gate.weight.shape[1], generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        want = _block_out(block, x)
        hf.patch_model(block)
        got = _block_out(block, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert hf.is_patched(block) and hf.skip_stats(block)["total_slots"] == 10 * 4
    hf.unpatch_model(block)
    assert not hf.is_patched(block) and "forward" not in block.__dict__


# ------------------------------------------------------------------------------------------- modality
def test_modality_fn_codes_checked_before_narrowing():
    """int64 codes from a modality_fn are checked as returned: 2^32 + 1 must not read as 1 (vision), with or without a
    skip rule (the statistics index by code)."""
    model = copy.deepcopy(base("qwen3_moe"))
    modes = SkipConfig(rule="modes", alpha=[[1.0, 1.0]] * 2, tau_text=0.0, tau_vision=1e6)
    for cfg in (None, modes):
        hf.patch_model(model, cfg, modality_fn=lambda ids: torch.where(ids < 40, 2**32 + 1, 0))
        with pytest.raises(ValueError, match=r"modality_fn: expected codes 0 \(text\), 1 \(vision\) or 2 \(never "
                                             r"skip\), got min 0, max 4294967297"):
            with torch.inference_mode():
                model(_prompt())
    hf.set_modality_fn(model, lambda ids: (ids < 40).float())
    with pytest.raises(TypeError, match="modality_fn: expected integer codes 0/1/2, got torch.float32"):
        hf.modality_codes(model, _prompt())
    hf.set_modality_fn(model, lambda ids: torch.where(ids < 40, 1, 0))  # int64 codes in range: as before
    hf.reset_skip_stats(model)
    with torch.inference_mode():
        model(_prompt())
    assert hf.skip_stats(model)["per_modality"]["vision"] == 1.0


def test_modality_fn_override_on_text_model(monkeypatch):
    """Tokens the modality_fn marks as vision are skipped by tau_vision only; code 2 never."""
    model = copy.deepcopy(base("qwen3_moe"))
    fn = lambda ids: torch.where(ids < 40, 1, torch.where(ids == 77, 2, 0))  # noqa: E731
    cfg = SkipConfig(rule="modes", alpha=[[1.0, 1.0]] * 2, tau_text=0.0, tau_vision=1e6)
    hf.patch_model(model, cfg, modality_fn=fn)
    ids = _prompt(B=2, L=12, seed=8)
    ids[0, 3] = 77
    seen = []
    real = hf.route
    monkeypatch.setattr(hf, "route", lambda *a, **kw: (seen.append(kw["modality"]), real(*a, **kw))[1])
    with torch.inference_mode():
        model(ids)
    assert torch.equal(seen[0], fn(ids).reshape(-1).to(torch.int32))
    st = hf.skip_stats(model)
    assert st["per_modality"]["vision"] == 1.0 and st["per_modality"]["text"] == 0.0
    assert st["per_modality"]["never"] == 0.0
    assert torch.equal(hf.modality_codes(model, ids), fn(ids).to(torch.int32))


def _vl_model():
    if not hasattr(tf, "Qwen3VLMoeForConditionalGeneration"):
        pytest.skip("no Qwen3-VL-MoE in this transformers")
    cfg = tf.Qwen3VLMoeConfig(
        text_config=dict(vocab_size=V, hidden_size=H, intermediate_size=48, moe_intermediate_size=16,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=8,
                         num_experts_per_tok=2, max_position_embeddings=128, initializer_range=0.1, pad_token_id=0,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1],
                                              mrope_interleaved=True)),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=H, num_position_embeddings=16,
                           deepstack_visual_indexes=[0], initializer_range=0.1),
        image_token_id=120, video_token_id=121, vision_start_token_id=122, vision_end_token_id=123)
    torch.manual_seed(0)
    return _randomize_routers(tf.Qwen3VLMoeForConditionalGeneration(cfg).eval())


def _vl_inputs():
    ids = torch.tensor([[5, 6, 122, 120, 120, 120, 120, 123, 7, 8, 9]])
    g = torch.Generator().manual_seed(9)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(16, 96, generator=g),
                image_grid_thw=torch.tensor([[1, 4, 4]]), mm_token_type_ids=(ids == 120).int())


def test_qwen3_vl_moe_vision_tokens_get_modality_1(monkeypatch):
    model = _vl_model()
    inputs = _vl_inputs()
    with torch.inference_mode():
        want = model(**inputs).logits
    p = hf.patch_model(copy.deepcopy(model))
    seen = []
    real = hf.route

    def spy(*a, **kw):
        seen.append(kw["modality"])
        return real(*a, **kw)

    monkeypatch.setattr(hf, "route", spy)
    hf.patch_model(p, SkipConfig(rule="modes", alpha=[[1.0, 1.0]] * 2, tau_text=0.0, tau_vision=0.0))
    with torch.inference_mode():
        got = p(**inputs).logits  # taus 0: keeps everything
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert seen[0].tolist() == [0, 0, 2, 1, 1, 1, 1, 2, 0, 0, 0]
    # vision tokens skipped by tau_vision only; vision start / end (code 2) never
    hf.set_skip_config(p, SkipConfig(rule="modes", alpha=[[1.0, 1.0]] * 2, tau_text=0.0, tau_vision=1e6))
    hf.reset_skip_stats(p)
    with torch.inference_mode():
        p(**inputs)
    st = hf.skip_stats(p)
    assert st["per_modality"] == {"text": 0.0, "vision": 1.0, "never": 0.0}
    assert st["overall"] == pytest.approx(4 / 11)
    # generate: decode steps are text; greedy equals the unpatched model without skipping
    hf.set_skip_config(p, None)
    with torch.inference_mode():
        g0 = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        g1 = p.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(g0, g1)
