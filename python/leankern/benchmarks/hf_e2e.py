"""End to end: a Hugging Face causal LM (random weights, built from a config) quantized by
``leankern.quantize_model``, against the same model in bf16, on CPU.

Model: a Qwen3 config shaped like Qwen3-0.6B (28 layers, hidden 1024, MLP 3072, GQA 16/8 heads,
vocab 151936, tied embeddings: 0.6 B parameters; ``--quick``: a 4-layer toy). Weights are
random (HF init), so nothing is downloaded; every linear layer is quantized, the LM head included
(the embedding table it is tied to stays bf16). Formats: all ten, the rotated mxint4 and one dual variant
(MXINT8 x MXINT8) by default and with ``--full``; ``--quick`` a smoke subset. Per format:

* **decode tok/s**: ``model.generate`` at batch 1, greedy, ``min_new_tokens = max_new_tokens``
  (never stops early), from an 8-token prompt; rate = (T - 1) / (time(T new) - time(1 new)), so
  the prompt's prefill is not counted. **x bf16** = that rate over the bf16 model's (target: >=
  2.5 for 4-bit formats).
* **prefill s**: one forward of a 512-token prompt, last-token logits only (what generate does).
* **KL / top-1**: mean KL(bf16 || quantized) of the next-token distributions and the fraction of
  positions whose argmax agrees, over a 128-token random prompt. With random weights the logits
  are flat (HF init), so KL is small in absolute terms: compare formats, not against trained models.

Samples: by default (and ``--quick``) ``reps = 1`` and ``prefill_reps = 1``: each decode time (1 and T new
tokens) and the prefill time is ONE call after one warm-up ``generate``, not a median, so a single slow
stretch of a shared machine moves a row (the ``bf16, again`` row at the end shows the drift); ``--full``
takes the best of 3 of each.
"""
from __future__ import annotations

import copy
import time

import torch

from .harness import BenchResult, format_table, measure_copy_bandwidth, section_header, write_csv

FAMILY = "hf_e2e"
COLUMNS = [
    ("variant", "weights", "<"), ("linear_mb", "linears MB", ".0f"), ("quant_s", "quantize s", ".1f"),
    ("decode_tps", "decode tok/s", ".2f"), ("x_bf16", "x bf16", ".2f"), ("prefill_s", "prefill s", ".2f"),
    ("x_prefill", "prefill x bf16", ".2f"), ("kl", "KL vs bf16", ".2e"), ("top1", "top-1 agree", ".1%"),
]
# (label, fmt, quantize_model kwargs); fmt None = the bf16 model itself
VARIANTS = [
    ("bf16", None, {}), ("mxfp8_e4m3", "mxfp8_e4m3", {}), ("mxint8", "mxint8", {}), ("mxfp4", "mxfp4", {}),
    ("nvfp4", "nvfp4", {}), ("mxint4", "mxint4", {}), ("mxint4+rotate32", "mxint4", {"rotate": 32}),
]
# the default and --full runs: every format (the issue asks bf16 against each), and one dual variant
ALL_VARIANTS = VARIANTS + [
    ("mxfp8_e5m2", "mxfp8_e5m2", {}), ("mxfp6_e2m3", "mxfp6_e2m3", {}), ("mxfp6_e3m2", "mxfp6_e3m2", {}),
    ("mxint6", "mxint6", {}), ("nvint4", "nvint4", {}), ("mxint8 x mxint8", "mxint8", {"act_fmt": "mxint8"}),
    ("bf16, again", None, {}),  # the baseline once more at the end: how far the machine drifted during the run
]


def model_config(quick: bool):
    """Qwen3-0.6B's shape (default) or a 4-layer toy (quick)."""
    from transformers import Qwen3Config

    if quick:
        return Qwen3Config(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True,
                           max_position_embeddings=1024)
    return Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                       max_position_embeddings=4096)


def build_model(quick: bool, seed: int = 0):
    """A bf16 Qwen3ForCausalLM with random weights (no download), in eval mode."""
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(model_config(quick)).to(torch.bfloat16).eval()


def _generate_s(model, ids, new_tokens: int) -> float:
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return time.perf_counter() - t0


def _measure(model, plan, prompts, ref_logits):
    """decode tok/s, prefill seconds, logits of the agreement prompt (all positions)."""
    short, long_, agree = prompts
    _generate_s(model, short, 2)  # warm-up (allocations, first-call paths)
    t1 = min(_generate_s(model, short, 1) for _ in range(plan["reps"]))
    tn = min(_generate_s(model, short, plan["new_tokens"]) for _ in range(plan["reps"]))
    decode_tps = (plan["new_tokens"] - 1) / max(tn - t1, 1e-9)
    prefill = []
    for _ in range(plan["prefill_reps"]):
        t0 = time.perf_counter()
        model(long_, logits_to_keep=1)
        prefill.append(time.perf_counter() - t0)
    logits = model(agree).logits.float()  # [1, T, V]
    return decode_tps, min(prefill), logits


def _agreement(logits, ref):
    if ref is None:
        return 0.0, 1.0
    lp, lq = ref.log_softmax(-1), logits.log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean()
    top1 = (logits.argmax(-1) == ref.argmax(-1)).float().mean()
    return float(kl), float(top1)


def _plan(quick: bool, full: bool) -> dict:
    if quick:
        return dict(new_tokens=8, prompt=64, agree=64, reps=1, prefill_reps=1, variants=VARIANTS)
    if full:
        return dict(new_tokens=64, prompt=512, agree=256, reps=3, prefill_reps=3, variants=ALL_VARIANTS)
    return dict(new_tokens=16, prompt=512, agree=128, reps=1, prefill_reps=1, variants=ALL_VARIANTS)


def run(quick: bool = False, full: bool = False, device: str = "cpu", sizes=None, csv_path=None, plot_path=None,
        aot: bool = True, bw_gbps: float | None = None, output_cache_mb: int = 0, out=print) -> BenchResult:
    import leankern

    mode = "quick" if quick else "full" if full else "default"
    if device != "cpu":
        out(f"== {FAMILY} == skipped on {device}: the end-to-end bench is CPU only for now")
        return BenchResult([], bw_gbps or 0.0, device)
    try:
        import transformers
    except ImportError:
        out(f"== {FAMILY} == skipped: transformers is not installed (pip install transformers)")
        return BenchResult([], bw_gbps or 0.0, device)
    bw = bw_gbps or measure_copy_bandwidth(device)
    out(section_header(FAMILY, device, bw, mode, output_cache_mb))
    plan = _plan(quick, full)
    t_start = time.perf_counter()
    base = build_model(quick)
    n_params = sum(p.numel() for p in base.parameters())
    cfg = base.config
    out(f"model: Qwen3 config, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, "
        f"{n_params / 1e9:.2f} B parameters, random weights, bf16 (transformers {transformers.__version__}); "
        f"decode: {plan['new_tokens']} new tokens at batch 1; prefill: {plan['prompt']} tokens; "
        f"agreement: {plan['agree']} positions")
    gen = torch.Generator().manual_seed(1)
    prompts = tuple(torch.randint(0, cfg.vocab_size, (1, n), generator=gen) for n in (8, plan["prompt"], plan["agree"]))
    rows, ref_logits, base_row = [], None, None
    with torch.inference_mode():
        for label, fmt, kw in plan["variants"]:
            model, report, quant_s = base, None, 0.0
            if fmt is not None:
                model = copy.deepcopy(base)
                t0 = time.perf_counter()
                report = leankern.quantize_model(model, fmt, include_lm_head=True, **kw)
                quant_s = time.perf_counter() - t0
            decode_tps, prefill_s, logits = _measure(model, plan, prompts, ref_logits)
            kl, top1 = _agreement(logits, ref_logits)
            if fmt is None:
                ref_logits = logits
            lin_bytes = report.bytes_after if report else sum(
                m.weight.numel() * 2 for m in model.modules() if isinstance(m, torch.nn.Linear))
            row = dict(variant=label, linear_mb=lin_bytes / 1e6, quant_s=quant_s, decode_tps=decode_tps,
                       prefill_s=prefill_s, kl=kl, top1=top1,
                       layers=len(report.replaced) if report else 0)
            base_row = base_row or row
            row["x_bf16"] = decode_tps / base_row["decode_tps"]
            row["x_prefill"] = base_row["prefill_s"] / prefill_s
            rows.append(row)
            out(f"  {label}: {decode_tps:.2f} tok/s decode, prefill {prefill_s:.2f} s, KL {kl:.2e}, "
                f"top-1 {top1:.1%} ({time.perf_counter() - t_start:.0f} s)")
            del model
    out(format_table(rows, COLUMNS))
    out("every linear quantized (LM head included; the tied embedding stays bf16); x bf16 = decode tok/s / bf16's; "
        "prefill x bf16 = bf16 time / ours; KL(bf16 || quantized) and top-1 agreement of next-token logits")
    if csv_path:
        write_csv(csv_path, rows, {"family": FAMILY, "bw_gbps": bw})
        out(f"wrote {csv_path}")
    return BenchResult(rows, bw, device, {"params": n_params})
