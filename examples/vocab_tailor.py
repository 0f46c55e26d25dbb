"""VocabTailor on a Hugging Face model: a task vocabulary, a per-request LM head, an offloaded embedding
(and then the same with the model quantized to MXFP4, its LM head included).

    pip install transformers tokenizers
    python examples/vocab_tailor.py

A small Qwen3 (random weights, built from a config: nothing is downloaded) with a 32k-word
vocabulary, a word-level tokenizer built here, and a toy "weather report" task whose outputs use a
few hundred of those words. The static vocabulary comes from the task's (input, output) pairs;
each request adds its own prompt ids and the special tokens.
"""
import random
import time

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import Qwen3Config, Qwen3ForCausalLM

import leankern
from leankern.vocab.hf import tailor, untailor, vocab_bytes
from leankern.vocab.vocab_set import build_static_vocab

V = 32000
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]

# ---------------------------------------------------------------- a tokenizer and a toy task corpus
words = SPECIALS + [f"w{i}" for i in range(V - len(SPECIALS) - 200)]
task_words = ["sunny", "rain", "cloudy", "wind", "snow", "fog", "storm", "mild", "cold", "warm", "hot", "today",
              "tomorrow", "morning", "evening", "night", "north", "south", "east", "west", "degrees", "chance", "of",
              "with", "and", "a", "the", "in", "high", "low", "expected"] + [str(d) for d in range(-20, 45)]
words += task_words + [f"x{i}" for i in range(200 - len(task_words))]
tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
tokenizer.pre_tokenizer = WhitespaceSplit()

rng = random.Random(0)
cities = [f"w{rng.randrange(20000)}" for _ in range(50)]  # city names: ordinary words, only in the inputs


def report(city):
    parts = [rng.choice(["today", "tomorrow"]), "in", city, rng.choice(["sunny", "rain", "cloudy", "snow"]),
             "with", "a", "high", "of", str(rng.randrange(-20, 45)), "degrees"]
    return " ".join(parts), " ".join(rng.choice(task_words) for _ in range(12))


pairs = [report(rng.choice(cities)) for _ in range(400)]
vocab_set = build_static_vocab(pairs, tokenizer, tokenizer_name="toy-word-level", special_ids=[0, 1, 2])
print(f"static vocabulary: {len(vocab_set)} ids (+{len(vocab_set.special_ids)} specials) of {V}")

# ------------------------------------------------------------------------- a small random Qwen3
torch.manual_seed(0)
cfg = Qwen3Config(vocab_size=V, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2)
model = Qwen3ForCausalLM(cfg).eval()
prompt = torch.tensor([tokenizer.encode(report(cities[0])[0]).ids])  # [1, L]


def decode_ms(model, new_tokens=24, reps=3):
    """ms per decode step: (time(T new) - time(1 new)) / (T - 1), so the prefill is not counted."""
    def gen(n):
        t0 = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0, out

    gen(2)  # warm-up
    t1 = min(gen(1)[0] for _ in range(reps))
    tn, out = min((gen(new_tokens) for _ in range(reps)), key=lambda r: r[0])
    return 1e3 * (tn - t1) / (new_tokens - 1), out


def mb(b):
    return f"{b / 2**20:.2f} MiB"


with torch.inference_mode():
    full_ms, full_out = decode_ms(model)
    tailor(model, vocab_set, offload_embedding=True, compact_head=True)
    tail_ms, tail_out = decode_ms(model)
    b = vocab_bytes(model)

words_out = tokenizer.decode(tail_out[0, prompt.shape[1]:].tolist()).split()
print(f"prompt: {report(cities[0])[0]!r}")
print(f"tailored output (random weights, so word salad, but from the task's words): {' '.join(words_out)}")
print(f"request vocabulary K = {b['K']}")
print(f"vocab bytes on the compute device: before {mb(b['before']['total'])} "
      f"(embedding {mb(b['before']['embedding'])}, head {mb(b['before']['head'])}, tied), "
      f"after {mb(b['total'])} (embedding {mb(b['embedding'])}, head {mb(b['head'])}); host {mb(b['host'])}")
print(f"decode step: full {full_ms:.2f} ms/token, tailored {tail_ms:.2f} ms/token")
untailor(model)

# ------------------------------------------- fewer bits as well: every linear layer MXFP4, the LM head included
leankern.quantize_model(model, "mxfp4", include_lm_head=True)
with torch.inference_mode():
    q_ms, _ = decode_ms(model)
    tailor(model, vocab_set, offload_embedding=True, compact_head=True)  # the head's K rows read out of its codes
    qt_ms, _ = decode_ms(model)
    qb = vocab_bytes(model)
print(f"MXFP4 model (head included): full {q_ms:.2f} ms/token, tailored {qt_ms:.2f} ms/token; head bytes on the "
      f"compute device {mb(qb['before']['head'])} -> {mb(qb['head'])}")
untailor(model)
