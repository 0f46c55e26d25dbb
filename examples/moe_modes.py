"""MoDES on a Hugging Face MoE model: calibrate alpha, search the thresholds, generate with experts really skipped.

    pip install transformers
    python examples/moe_modes.py [--target 0.5]

A small Qwen3-MoE (random weights, built from a config: nothing is downloaded). Random token batches stand in for
calibration data; on a real model use a few hundred (prompt, answer) pairs with an ``answer_mask``. Steps:

1. ``patch_model``: the sparse-MoE blocks call leankern's route / skip / experts ops on the model's own weights;
   without a skip rule the logits equal the original model's.
2. ``calibrate_alpha``: per layer and modality, the KL caused by dropping that layer's routed experts, normalised.
3. ``search_thresholds``: the (tau_text, tau_vision) of least KL that reaches the target skip ratio, in O(N + M)
   evaluations of the (N x M) grid.
4. The config is saved as JSON and reloaded; ``generate()`` runs with the skip; ``skip_stats`` reports the ratio.
"""
import argparse
import tempfile
import time

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

import leankern
from leankern import moe


def build_model(layers: int = 4, hidden: int = 256, experts: int = 32, top_k: int = 4):
    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(vocab_size=1024, hidden_size=hidden, intermediate_size=4 * hidden,
                         moe_intermediate_size=hidden // 2, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=64, num_experts=experts, num_experts_per_tok=top_k,
                         norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=512)
    return Qwen3MoeForCausalLM(cfg).eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--target", type=float, default=0.5, help="skip ratio to reach (default 0.5)")
    p.add_argument("--grid", type=int, default=8, help="thresholds per modality in the search grid")
    args = p.parse_args(argv)
    model = build_model()
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 1024, (2, 48), generator=g)} for _ in range(2)]
    prompt = torch.randint(0, 1024, (1, 16), generator=g)

    with torch.inference_mode():
        want = model(**batches[0]).logits
        moe.patch_model(model)  # no skip: the same model, run by leankern's ops
        got = model(**batches[0]).logits
        print(f"patched, no skip: max |logit difference| = {(got - want).abs().max():.2e}")

        alpha = moe.calibrate_alpha(model, batches, progress=False)
        print("alpha (text) per MoE layer:", [round(a[0], 3) for a in alpha])

        cfg, result = moe.search_thresholds(model, batches, args.target, alpha, n=args.grid, m=args.grid,
                                            return_result=True)
        print(f"thresholds: tau_text = {cfg.tau_text:.4g} (tau_vision = {cfg.tau_vision:.4g}), calibration KL "
              f"{result.kl:.4g} at skip ratio {result.skip_ratio:.3f}, {result.evaluations} evaluations of a "
              f"{args.grid} x {args.grid} grid")

        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            cfg.to_json(f.name)
        moe.patch_model(model, moe.SkipConfig.from_json(f.name))
        moe.reset_skip_stats(model)
        t0 = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=16, do_sample=False)
        dt = time.perf_counter() - t0
        stats = moe.skip_stats(model)
        print(f"generate with MoDES skip: {out.shape[1] - prompt.shape[1]} tokens in {dt:.2f} s, skip ratio "
              f"{stats['overall']:.3f} (per layer: {[round(r, 2) for r in stats['per_layer']]})")
        print(f"moe_experts runs on: {leankern.backend_for('moe_experts', 'cpu')}; config saved to {f.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
