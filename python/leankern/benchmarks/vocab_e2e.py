"""End to end: a Hugging Face causal LM tailored by :func:`leankern.vocab.hf.tailor` (VocabTailor) against
the same model with its full LM head.

Models (random weights from a config, bf16, nothing downloaded): a Qwen3 config shaped like
Qwen3-0.6B (vocab 151,936, hidden 1024, 28 layers, tied; ``--quick``: 2 layers, the full
vocabulary) and, with ``--full`` only, one shaped like Llama-3.2-1B (128,256 x 2048, 16 layers, tied).
Static sets: K in {4096, 16384, 32768} random ids; the request adds its prompt ids and specials
(``--size S``, used by the tests: K = S on a 2-layer toy with an 8192-token vocabulary).
Per (model, K):

* **decode ms/token**: ``model.generate`` at batch 1, greedy, ``min_new_tokens = max_new_tokens``,
  from an 8-token prompt; ms/token = (time(T new) - time(1 new)) / (T - 1) (the prefill is not
  counted), for the full model and the tailored one (head in place + offloaded embedding).
* **LM head ms**: one decode position ``[1, H]``: ``F.linear`` over the full vocabulary, the
  tailored head module (``gather_lm_head`` + ``scatter_to_full`` to ``[1, V]``: what generate runs),
  ``gather_lm_head`` alone, and the two-pass baseline ``F.linear(h, weight[vocab_ids])``.
* **resident MB**: vocabulary bytes (embedding + head) on the compute device from
  :func:`leankern.vocab.hf.vocab_bytes`: full model; tailored in place + offloaded embedding (the
  tied head still reads the full table there); tailored with ``compact_head`` + offloaded embedding
  (only the request's K rows stay: the VocabTailor claim).

Then the same with an MXFP4-quantized head (``QuantLinear``; the rest of the model as it is): decode ms/token
and one position through the full quantized head vs the tailored one (the request's rows read out of the
quantized codes), and the head's resident MB (quantized full head; ``compact_head`` rows).

Correctness first: subset logits of the tailored head equal ``F.linear``'s at the same ids
(bf16 rounding), and every generated id lies in the request's set.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .harness import BenchResult, busy_note, format_table, measure_copy_bandwidth, section_header, time_fn, write_csv

FAMILY = "vocab_e2e"
KS = (4096, 16384, 32768)
COLUMNS = [
    ("model", "model", "<"), ("K", "K", ""), ("full_ms", "decode full ms/tok", ".2f"),
    ("tailored_ms", "tailored ms/tok", ".2f"), ("x_decode", "x full", ".2f"),
    ("head_full_ms", "head F.linear ms", ".3f"),
    ("head_tailored_ms", "tailored head ms", ".3f"), ("head_gather_ms", "gather_lm_head ms", ".3f"),
    ("head_two_pass_ms", "w[ids]+F.linear ms", ".3f"), ("x_head", "head x full", ".2f"),
    ("res_full_mb", "resident MB full", ".1f"), ("res_offload_mb", "tailored+offload MB", ".1f"),
    ("res_compact_mb", "compact+offload MB", ".2f"),
]


def model_configs(quick: bool, full: bool, tiny: bool = False) -> list:
    """(label, config) pairs: Qwen3-0.6B's shape (quick: 2 layers), plus Llama-3.2-1B's with ``full``;
    ``tiny`` (``--size``, for tests): a 2-layer toy with an 8192-token vocabulary."""
    from transformers import LlamaConfig, Qwen3Config

    if tiny:
        return [("toy Qwen3", Qwen3Config(vocab_size=8192, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                          tie_word_embeddings=True, max_position_embeddings=512))]
    qwen = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=2 if quick else 28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, tie_word_embeddings=True, max_position_embeddings=4096)
    out = [("Qwen3-0.6B shape" + (" (2 layers)" if quick else ""), qwen)]
    if full:
        out.append(("Llama-3.2-1B shape", LlamaConfig(
            vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
            num_key_value_heads=8, head_dim=64, tie_word_embeddings=True, max_position_embeddings=4096)))
    return out


def _plan(quick: bool, full: bool) -> dict:
    if quick:
        return dict(new_tokens=8, reps=2, head_repeats=5)
    if full:
        return dict(new_tokens=32, reps=3, head_repeats=20)
    return dict(new_tokens=16, reps=1, head_repeats=10)


def _generate(model, ids, n: int):
    return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)


def _decode_ms(model, ids, plan, device) -> tuple:
    """(ms per decode step, the T-token output): (time(T) - time(1)) / (T - 1), best of ``reps``."""
    def timed(n):
        _sync(device)
        t0 = time.perf_counter()
        out = _generate(model, ids, n)
        _sync(device)
        return time.perf_counter() - t0, out

    # Warm-up of both lengths: the first calls pay page faults and first-call paths (a cold time(1) makes the
    # difference, and so the rate, meaningless); then short and long runs alternate, best of each.
    timed(plan["new_tokens"]), timed(1)
    t1s, tns = [], []
    for _ in range(plan["reps"]):
        t1s.append(timed(1)[0])
        tns.append(timed(plan["new_tokens"]))
    t1 = min(t1s)
    tn, out = min(tns, key=lambda r: r[0])
    return 1e3 * (tn - t1) / (plan["new_tokens"] - 1), out


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _ms(fn, device, repeats) -> float:
    ts = sorted(time_fn(fn, device=device, warmup=2, repeats=repeats, min_time=0.2))
    return 1e3 * ts[len(ts) // 2]


def _head_times(head, weight, hidden, device, repeats) -> dict:
    """Median ms of one decode position through each LM-head variant; checks the subset logits first."""
    from .. import vocab

    ids = head.vocab_ids
    ref = F.linear(hidden.float(), weight.float())[:, ids.long()]  # [1, K] fp32
    got = vocab.gather_lm_head(hidden, weight, ids)  # [1, K] fp32 sums of bf16 products
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)
    full = head(hidden)  # [1, V]
    assert torch.isneginf(full).sum() == weight.shape[0] - ids.numel(), "outside ids must be -inf"
    idx = ids.long()
    return {"head_full_ms": _ms(lambda: F.linear(hidden, weight), device, repeats),
            "head_tailored_ms": _ms(lambda: head(hidden), device, repeats),
            "head_gather_ms": _ms(lambda: vocab.gather_lm_head(hidden, weight, ids), device, repeats),
            "head_two_pass_ms": _ms(lambda: F.linear(hidden, weight[idx]), device, repeats)}


def _bench_k(model, K, prompt, plan, device, full_ms, gen) -> dict:
    """One row: tailor with a random static set of K ids, time decode and head, count resident bytes."""
    from ..vocab.hf import request_vocab, tailor, untailor, vocab_bytes
    from ..vocab.vocab_set import VocabSet

    V = model.config.vocab_size
    vs = VocabSet(ids=torch.randperm(V, generator=gen)[:K].tolist(), tokenizer_name="random", special_ids=[0])
    weight = model.get_output_embeddings().weight
    res_full = vocab_bytes(model)["total"]
    tailor(model, vs, offload_embedding=True)
    try:
        ms, out = _decode_ms(model, prompt, plan, device)
        req = request_vocab(model)
        assert bool(req.contains(out[0, prompt.shape[1]:].cpu()).all()), "a generated id outside the request's set"
        hidden = torch.randn(1, weight.shape[1], generator=gen).to(device, weight.dtype)
        row = _head_times(model.get_output_embeddings(), weight, hidden, device, plan["head_repeats"])
        res_offload = vocab_bytes(model)["total"]
    finally:
        untailor(model)
    tailor(model, vs, offload_embedding=True, compact_head=True)
    try:
        with torch.inference_mode():
            model(prompt, logits_to_keep=1)  # a prefill: the compact head gathers the request's rows
        res_compact = vocab_bytes(model)["total"]
    finally:
        untailor(model)
    row.update(K=len(req), tailored_ms=ms, full_ms=full_ms, x_decode=full_ms / ms,
               x_head=row["head_full_ms"] / row["head_tailored_ms"], res_full_mb=res_full / 2**20,
               res_offload_mb=res_offload / 2**20, res_compact_mb=res_compact / 2**20)
    return row


Q_FMT = "mxfp4"
Q_COLUMNS = [
    ("model", "model", "<"), ("fmt", "head", "<"), ("K", "K", ""), ("full_ms", "decode q-head ms/tok", ".2f"),
    ("tailored_ms", "tailored ms/tok", ".2f"), ("x_decode", "x full", ".2f"), ("head_full_ms", "q-head ms", ".3f"),
    ("head_tailored_ms", "tailored head ms", ".3f"), ("x_head", "head x full", ".2f"),
    ("head_mb", "q-head MB", ".1f"), ("compact_mb", "compact rows MB", ".2f"),
]


def _bench_quantized_head(model, ks, prompt, plan, device, gen) -> list:
    """Rows with the LM head MXFP4-quantized (a QuantLinear; restored afterwards): the full quantized head vs the
    tailored one, which reads the request's K rows out of the quantized codes once per request."""
    from ..nn import QuantLinear
    from ..vocab.hf import request_vocab, tailor, untailor, vocab_bytes
    from ..vocab.vocab_set import VocabSet

    linear = model.get_output_embeddings()
    q = QuantLinear.from_linear(linear, Q_FMT)
    model.set_output_embeddings(q)
    rows = []
    try:
        full_ms, _ = _decode_ms(model, prompt, plan, device)
        V, H = q.out_features, q.in_features
        hidden = torch.randn(1, H, generator=gen).to(device, torch.bfloat16)
        head_full = _ms(lambda: q(hidden), device, plan["head_repeats"])
        for K in ks:
            vs = VocabSet(ids=torch.randperm(V, generator=gen)[:K].tolist(), tokenizer_name="random", special_ids=[0])
            tailor(model, vs, compact_head=True)
            try:
                ms, out = _decode_ms(model, prompt, plan, device)
                req = request_vocab(model)
                assert bool(req.contains(out[0, prompt.shape[1]:].cpu()).all()), "a generated id outside the set"
                head = model.get_output_embeddings()
                ids = head.vocab_ids.long()
                torch.testing.assert_close(head(hidden)[:, ids], q(hidden)[:, ids], rtol=0, atol=0)  # same kernel
                head_ms = _ms(lambda: head(hidden), device, plan["head_repeats"])
                b = vocab_bytes(model)
            finally:
                untailor(model)
            rows.append(dict(fmt=Q_FMT, K=len(req), full_ms=full_ms, tailored_ms=ms, x_decode=full_ms / ms,
                             head_full_ms=head_full, head_tailored_ms=head_ms, x_head=head_full / head_ms,
                             head_mb=q.nbytes / 2**20, compact_mb=b["head"] / 2**20))
    finally:
        model.set_output_embeddings(linear)
    return rows


def run(quick: bool = False, full: bool = False, device: str = "cpu", sizes=None, csv_path=None, plot_path=None,
        aot: bool = True, bw_gbps: float | None = None, output_cache_mb: int = 0, out=print) -> BenchResult:
    mode = "quick" if quick else "full" if full else "default"
    try:
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError:
        out(f"== {FAMILY} == skipped: transformers is not installed (pip install transformers)")
        return BenchResult([], bw_gbps or 0.0, device)
    bw = bw_gbps or measure_copy_bandwidth(device)
    out(section_header(FAMILY, device, bw, mode, output_cache_mb))
    if busy_note(device):
        out(busy_note(device))
    plan = _plan(quick, full)
    ks = tuple(sizes) if sizes else KS  # --size S (tests): K = S on a toy model
    rows, qrows, t_start = [], [], time.perf_counter()
    gen = torch.Generator().manual_seed(1)
    for label, cfg in model_configs(quick, full, tiny=bool(sizes)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).to(device, torch.bfloat16).eval()
        out(f"model: {label}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, "
            f"random weights, bf16 (transformers {transformers.__version__}); decode: {plan['new_tokens']} new tokens "
            f"at batch 1 from an 8-token prompt")
        prompt = torch.randint(1, cfg.vocab_size, (1, 8), generator=gen).to(device)
        with torch.inference_mode():
            full_ms, _ = _decode_ms(model, prompt, plan, device)
            for K in ks:
                row = _bench_k(model, K, prompt, plan, device, full_ms, gen)
                rows.append({"model": label, **row})
                out(f"  K={row['K']}: decode {full_ms:.2f} -> {row['tailored_ms']:.2f} ms/token, head "
                    f"{row['head_full_ms']:.3f} -> {row['head_tailored_ms']:.3f} ms "
                    f"({time.perf_counter() - t_start:.0f} s)")
            for row in _bench_quantized_head(model, ks, prompt, plan, device, gen):
                qrows.append({"model": label, **row})
                out(f"  {Q_FMT} head, K={row['K']}: decode {row['full_ms']:.2f} -> {row['tailored_ms']:.2f} ms/token, "
                    f"head {row['head_full_ms']:.3f} -> {row['head_tailored_ms']:.3f} ms "
                    f"({time.perf_counter() - t_start:.0f} s)")
        del model
    out(format_table(rows, COLUMNS))
    out("K = the request's set (static + prompt + specials); tailored = head in place + offloaded embedding; "
        "x full = full / tailored; head times: one position [1, H], bf16; resident = embedding + head bytes on the "
        "compute device (vocab_bytes; a tied table counted once); compact = compact_head=True, only K rows resident")
    out("")
    out(format_table(qrows, Q_COLUMNS))
    out(f"The LM head quantized to {Q_FMT} (QuantLinear, prepacked; embedding and layers bf16): decode with the full "
        "quantized head vs tailored (compact_head: the request's K rows read out of the codes at prefill); head times: "
        "one position [1, H]; q-head MB: the quantized head; compact rows MB: the K rows kept (prepacked)")
    if csv_path:
        write_csv(csv_path, rows + qrows, {"family": FAMILY, "bw_gbps": bw, "device": device})
        out(f"wrote {csv_path}")
    return BenchResult(rows, bw, device)


def tiny_calls(device: str = "cpu") -> list:
    """None: the vocab ops' per-call overhead rows belong to the vocab family's own bench."""
    return []


def main(argv=None) -> int:
    from . import bench_main

    return bench_main(argv, families=(FAMILY,), prog="bench_vocab_e2e")


if __name__ == "__main__":
    raise SystemExit(main())
