"""Quantize every linear layer of a Hugging Face causal LM to a block format and generate.

    pip install transformers
    python examples/quantize_hf_model.py [mxint4] [--rotate 32] [--model Qwen/Qwen3-0.6B]

Without --model a small random-weight Qwen3 is built from a config (nothing is downloaded).
"""
import argparse
import time

import torch

import leankern

p = argparse.ArgumentParser()
p.add_argument("fmt", nargs="?", default="mxfp4")
p.add_argument("--rotate", type=int, default=None, help="random Hadamard rotation chunk (e.g. 32 for mxint4)")
p.add_argument("--model", default=None, help="a hub id or local path (default: random weights from a config)")
args = p.parse_args()

from transformers import AutoModelForCausalLM, Qwen3Config  # noqa: E402

if args.model:
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
else:
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=64)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)

report = leankern.quantize_model(model.eval(), args.fmt, rotate=args.rotate, include_lm_head=True)
print(report)  # layers replaced, bytes before / after

ids = torch.randint(0, model.config.vocab_size, (1, 8))
with torch.inference_mode():
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
print(f"generated {out.shape[1] - 8} tokens in {time.perf_counter() - t0:.2f} s: {out[0, 8:].tolist()}")
