"""SEFP numerics: QSNR at every mantissa width next to the MX formats, and end to end on a Hugging Face model.

**QSNR** = ``10 log10(||w||^2 / ||w - w_hat||^2)`` [dB] of SEFP (block 32, quantized once at
m_max = 8 and read at m = 8 .. 2: by the nesting property that is exactly quantizing at m) and of
MXINT8/6/4, MXFP8 (E4M3), MXFP6 (E2M3), MXFP4 (block 32, RCEIL scales, :func:`leankern.mx.quantize`),
one row per format with its bits per weight, sorted by bits, so equal-bit rows sit together (SEFP
m = 7, 5, 3 against the 8-, 6-, 4-bit MX formats, all at 8.25 / 6.25 / 4.25 bits). ``bits`` is the
format's cost (SEFP: ``1 + m`` plus 8/32 for the exponent, as stored in bit planes; MX: element bits
plus 8/32 for the scale); ``stored`` is what leankern keeps (``MXTensor.bits_per_element``: the
6-bit MX formats are stored one code per byte, 8.25). Data sets, ``[size, size]``
fp32 weights ``[N, K]`` (blocks along K):

* ``gaussian``: i.i.d. N(0, 1).
* ``student_t3``: i.i.d. Student-t(3) (:func:`leankern.mx.numerics.student_t`).
* ``realish``: a stand-in for trained LLM weights (random-init Hugging Face weights are Gaussian,
  not real-ish): ``W[n, k] = r_n * c_k * z[n, k]`` with ``z`` a Gaussian scale mixture (N(0, 1)
  w.p. 0.9, N(0, 4^2) w.p. 0.1: heavy tails, kurtosis ~ 12.7), per-output-row scales
  ``r_n = exp(N(0, 0.3^2))``, and per-input-channel scales ``c_k = exp(N(0, 0.5^2))`` with 1/128
  of the input channels (columns, along the blocked dim) multiplied by 10 (outlier channels:
  about a fifth of the 32-blocks hold one; whole-tensor kurtosis ~ 550, from those channels).

**End to end**: a Qwen3 config (default 6 layers, hidden 1024, MLP 3072, 16/8 heads, vocab 8192:
75 M linear weights, random init, bf16; ``--quick``: 2 layers, hidden 128; ``--full``: 12 layers,
vocab 32000; without the compiled kernel: 4 layers, hidden 512, MLP 1536),
``quantize_model(model, "sefp", m_max=8)`` once (LM head left bf16, the default), then
``set_precision(model, m)`` for each m of the menu. Per width: decode tok/s of greedy ``generate``
at batch 1 from an 8-token prompt (``(T - 1) / (t(T new) - t(1 new))``: prefill not counted) and
the agreement with the bf16 model, teacher forced on the bf16 model's own greedy continuation:
top-1 agreement and mean KL(bf16 || SEFP) of the next-token distributions over the generated
positions. With random weights the logits are flat, so KL is small in absolute terms: compare widths.
On CPU the widths up to 7 are then served again from their packed copies (``set_precision(model, m,
packed=True)``: rows "sefp m=X packed"; the same weights, another kernel).
Decode speed is the C++ kernel's only when ``backend_for("sefp_linear", "cpu") == "cpp"``; otherwise
a WARNING line says the reference was timed (on the 4-layer model, over 6 tokens: it runs ~1 tok/s).

Run ``python bench/bench_sefp_numerics.py [--quick | --full] [--part qsnr|e2e|all] [--size N] [--csv PATH]``.
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch

from .harness import BenchResult, busy_note, measure_copy_bandwidth, section_header, write_csv

FAMILY = "sefp_numerics"
DATASETS = ("gaussian", "student_t3", "realish")
SEFP_WIDTHS = (8, 7, 6, 5, 4, 3, 2)
MX_FORMATS = ("mxint8", "mxfp8_e4m3", "mxint6", "mxfp6_e2m3", "mxint4", "mxfp4")
BLOCK = 32


# ----------------------------------------------------------------------------------- data
def realish(shape, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed weights with per-row and per-input-channel scales and outlier channels (module doc).

    Shape: ``shape`` = ``[N, K]``, fp32.
    """
    N, K = shape
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(N, K, generator=g)
    wide = torch.rand(N, K, generator=g) < 0.1
    z = torch.where(wide, 4.0 * z, z)  # Gaussian scale mixture
    rows = torch.exp(0.3 * torch.randn(N, 1, generator=g))
    cols = torch.exp(0.5 * torch.randn(1, K, generator=g))
    outliers = torch.randperm(K, generator=g)[: max(1, K // 128)]
    cols[0, outliers] *= 10.0
    return z * rows * cols


def make_weights(name: str, size: int, seed: int = 0) -> torch.Tensor:
    """One of :data:`DATASETS` as ``[size, size]`` fp32."""
    from ..mx.numerics import gaussian, student_t

    if name == "gaussian":
        return gaussian((size, size), seed)
    if name == "student_t3":
        return student_t((size, size), 3, seed)
    if name == "realish":
        return realish((size, size), seed)
    raise ValueError(f"dataset: expected one of {DATASETS}, got {name!r}")


# ----------------------------------------------------------------------------------- QSNR
def qsnr_rows(size: int = 1024, datasets=DATASETS, widths=SEFP_WIDTHS, mx_formats=MX_FORMATS,
              seed: int = 0) -> list[dict]:
    """One row per format: ``{"format", "bits", "stored", <dataset>: QSNR dB, ...}``, sorted by bits (descending)."""
    import leankern
    from ..mx.formats import get_format
    from ..testing.compare import qsnr_db

    rows = {f"sefp m={m}": {"format": f"sefp m={m}", "bits": None} for m in widths}
    rows.update({f: {"format": f, "bits": None} for f in mx_formats})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pure-PyTorch reference.*")
        for i, ds in enumerate(datasets):
            w = make_weights(ds, size, seed + i)
            q = leankern.sefp.quantize(w, m_max=max(widths), block_size=BLOCK)  # once; every m is a truncation
            for m in widths:
                rows[f"sefp m={m}"]["bits"] = rows[f"sefp m={m}"]["stored"] = q.bits_per_weight(m)
                rows[f"sefp m={m}"][ds] = qsnr_db(w, q.dequantize(m, torch.float32))
            for f in mx_formats:
                t = leankern.mx.quantize(w, f, block_size=BLOCK)
                rows[f]["bits"] = get_format(f).element.bits + 8 / BLOCK
                rows[f]["stored"] = t.bits_per_element
                rows[f][ds] = qsnr_db(w, t.dequantize(torch.float32))
    return sorted(rows.values(), key=lambda r: (-r["bits"], not r["format"].startswith("sefp"), r["format"]))


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """``columns``: ``(key, header, format spec)``; missing values print as ``-``."""
    def cell(r, k, spec):
        v = r.get(k)
        return "-" if v is None else format(v, spec) if spec else str(v)

    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" if not spec else "---:" for _, _, spec in columns) + "|"]
    lines += ["| " + " | ".join(cell(r, k, spec) for k, _, spec in columns) + " |" for r in rows]
    return "\n".join(lines)


QSNR_COLUMNS = [("format", "format (block 32)", ""), ("bits", "bits/weight", ".2f"), ("stored", "stored", ".2f")] + \
    [(d, f"QSNR {d} [dB]", ".2f") for d in DATASETS]


# ----------------------------------------------------------------------------------- end to end
def model_config(mode: str):
    from transformers import Qwen3Config

    dims = {"quick": (2, 128, 384, 4, 2, 32, 1024), "small": (4, 512, 1536, 8, 4, 64, 8192),
            "default": (6, 1024, 3072, 16, 8, 64, 8192), "full": (12, 1024, 3072, 16, 8, 64, 32000)}[mode]
    layers, hidden, mlp, heads, kv, head_dim, vocab = dims
    return Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, tie_word_embeddings=False,
                       max_position_embeddings=1024)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _generate(model, prompt, new_tokens: int):
    t0 = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0)
    _sync(prompt.device)
    return out, time.perf_counter() - t0


def _decode_tps(model, prompt, new_tokens: int, reps: int = 2) -> float | None:
    """Decode tokens/s without the prefill: ``(T - 1) / (t(T) - t(1))``, best of ``reps``; None if unmeasurable."""
    _generate(model, prompt, 2)  # warm-up
    t1 = min(_generate(model, prompt, 1)[1] for _ in range(reps))
    tn = min(_generate(model, prompt, new_tokens)[1] for _ in range(reps))
    return (new_tokens - 1) / (tn - t1) if new_tokens > 1 and tn > t1 else None


def _agreement(logits, ref) -> tuple[float, float]:
    """Mean KL(ref || logits) and top-1 agreement over positions. Shape: ``[T, V]`` each."""
    lp, lq = ref.float().log_softmax(-1), logits.float().log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean()
    return float(kl), float((logits.argmax(-1) == ref.argmax(-1)).float().mean())


def e2e_rows(mode: str = "default", device: str = "cpu", new_tokens: int | None = None, out=print,
             timed_tokens: int | None = None, reps: int = 2) -> list[dict]:
    """bf16 row, then one row per width of the menu (module doc). ``timed_tokens``: tokens per timed
    generate (default ``new_tokens``; fewer keeps the reference backend's run short), best of ``reps``."""
    import leankern
    from transformers import Qwen3ForCausalLM

    new_tokens = new_tokens or {"quick": 8, "small": 32, "default": 32, "full": 64}[mode]
    timed_tokens = min(new_tokens, timed_tokens or new_tokens)
    torch.manual_seed(0)
    base = Qwen3ForCausalLM(model_config(mode)).to(device, torch.bfloat16).eval()
    cfg = base.config
    out(f"model: Qwen3 config, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, "
        f"random init, bf16; greedy decode of {new_tokens} tokens at batch 1 from an 8-token prompt (timed: "
        f"{timed_tokens} tokens, each model on its own greedy path)")
    prompt = torch.randint(1, cfg.vocab_size, (1, 8), generator=torch.Generator().manual_seed(1)).to(device)
    rows = []
    with torch.inference_mode():
        seq, _ = _generate(base, prompt, new_tokens)  # the bf16 model's continuation: teacher forcing input
        gen_pos = slice(prompt.shape[1] - 1, seq.shape[1] - 1)  # logits predicting the generated tokens
        ref = base(seq).logits[0, gen_pos]
        lin_bf16 = sum(m.weight.numel() for n, m in base.named_modules()
                       if isinstance(m, torch.nn.Linear) and n != "lm_head")
        rows.append(dict(variant="bf16", bits=16.0, tps=_decode_tps(base, prompt, timed_tokens, reps), kl=0.0,
                         top1=1.0))
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pure-PyTorch reference.*")  # said once, below
            report = leankern.quantize_model(model, "sefp", m_max=8)
            out(f"quantize_model(sefp, m_max=8): {len(report.replaced)} layers in {time.perf_counter() - t0:.1f} s, "
                f"LM head kept bf16; stored {report.bytes_after / 1e6:.1f} MB for every width "
                f"(bf16 linears: {report.bytes_before / 1e6:.1f} MB)")
            layers = [m for m in model.modules() if isinstance(m, leankern.SEFPLinear)]
            for m in SEFP_WIDTHS:
                # each width from the planes, then (CPU, m <= 7) from its packed copy right after: adjacent rows, so
                # the host's drift during the run hits both alike
                variants = [False] + ([True] if str(device) == "cpu" and m <= 7 else [])
                for packed in variants:
                    leankern.set_precision(model, m, packed=packed)
                    kl, top1 = _agreement(model(seq).logits[0, gen_pos], ref)
                    bits = 8.0 * sum(lay.weight.nbytes(m) for lay in layers) / lin_bf16
                    name = f"sefp m={m}" + (" packed" if packed else "")
                    rows.append(dict(variant=name, bits=bits, tps=_decode_tps(model, prompt, timed_tokens, reps),
                                     kl=kl, top1=top1))
                    tps = rows[-1]["tps"]
                    out(f"  {name[5:]}: {'-' if tps is None else f'{tps:.2f}'} tok/s, top-1 {top1:.1%}, KL {kl:.2e}")
                    for lay in layers:
                        lay.unpack()
    for r in rows:
        r["x_bf16"] = None if r["tps"] is None or rows[0]["tps"] is None else r["tps"] / rows[0]["tps"]
    return rows


E2E_COLUMNS = [("variant", "weights", ""), ("bits", "bits/weight (linears)", ".2f"), ("tps", "decode tok/s", ".2f"),
               ("x_bf16", "x bf16", ".2f"), ("top1", "top-1 agree", ".1%"), ("kl", "mean KL vs bf16", ".2e")]


def backend_warning(device: str = "cpu") -> str:
    """A WARNING line when sefp_linear does not run its compiled kernel on ``device``, else ''."""
    from ..core import backend_for

    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    want = "triton" if dev == "cuda" else "cpp"
    got = backend_for("sefp_linear", dev)
    if got == want or (dev == "cuda" and got == "cuda"):
        return ""
    return (f"WARNING: sefp_linear runs on the '{got}' backend on {dev}, not the compiled kernel ('{want}'): the "
            f"SEFP decode tok/s in this section time the pure-PyTorch reference, not leankern's kernel")


# ----------------------------------------------------------------------------------- entry points
def run(quick: bool = False, full: bool = False, device: str = "cpu", sizes=None, csv_path=None, plot_path=None,
        aot: bool = True, bw_gbps: float | None = None, output_cache_mb: int = 0, out=print,
        part: str = "all") -> BenchResult:
    """The family section for ``leankern bench``: the QSNR table, then the end-to-end table."""
    mode = "quick" if quick or sizes else "full" if full else "default"
    bw = bw_gbps or measure_copy_bandwidth(device)
    out(section_header(FAMILY, device, bw, mode, output_cache_mb))
    rows = []
    if part in ("all", "qsnr"):
        size = sizes[0] if sizes else {"quick": 256, "default": 2048, "full": 4096}[mode]
        t0 = time.perf_counter()
        q_rows = qsnr_rows(size)
        out(f"QSNR of [{size}, {size}] fp32 weights, block 32 (SEFP: quantized once at m_max=8, read at m; MX: RCEIL "
            f"scales); {time.perf_counter() - t0:.0f} s")
        out(markdown_table(q_rows, QSNR_COLUMNS))
        rows += [dict(r, table="qsnr") for r in q_rows]
    if part in ("all", "e2e"):
        try:
            import transformers  # noqa: F401
        except ImportError:
            out("end to end: skipped, transformers is not installed (pip install transformers)")
        else:
            warn = backend_warning(device)
            for line in (warn, busy_note(device)):
                if line:
                    out(line)
            # the reference decodes ~1 tok/s on the small model: time it smaller and shorter
            e_mode = "small" if warn and mode == "default" else mode
            e_rows = e2e_rows(e_mode, device, out=out, timed_tokens=6 if warn else None, reps=1 if warn else 2)
            out(markdown_table(e_rows, E2E_COLUMNS))
            out("bits/weight: bytes read per linear weight at m (planes + exponents; LM head excluded); x bf16 = "
                "decode tok/s / bf16's; top-1 / KL: teacher forced on the bf16 model's greedy continuation")
            if warn:
                out(warn)
            rows += [dict(r, table="e2e") for r in e_rows]
    if csv_path:
        write_csv(csv_path, rows, {"family": FAMILY, "bw_gbps": bw, "device": device})
        out(f"wrote {csv_path}")
    return BenchResult(rows, bw, device)


def tiny_calls(device: str = "cpu") -> list:
    """None: the sefp ops' per-call overhead rows belong to the sefp family's own bench."""
    return []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_sefp_numerics", description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="256 x 256 weights, a 2-layer toy model, 8 tokens")
    mode.add_argument("--full", action="store_true", help="4096 x 4096 weights, 8 layers, hidden 1024, 64 tokens")
    p.add_argument("--part", choices=("all", "qsnr", "e2e"), default="all")
    p.add_argument("--size", type=int, default=None, help="QSNR weight size (square; implies the toy model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--csv", metavar="PATH")
    args = p.parse_args(argv)
    if args.size is not None and args.size < BLOCK:
        p.error(f"--size: expected at least {BLOCK}, got {args.size}")
    run(quick=args.quick, full=args.full, device=args.device, sizes=(args.size,) if args.size else None,
        csv_path=args.csv, part=args.part)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
