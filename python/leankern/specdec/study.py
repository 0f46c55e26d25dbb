"""Spec-VLA relaxed acceptance study: acceptance length and action error vs the relaxation radius r.

Synthetic OpenVLA-like setting (Spec-VLA, arXiv 2507.22424): a 32,000-token vocabulary whose last 256 ids
(31744..31999) are the action bins, so id distance is bin distance. Each draft position has a
latent "true" bin; the target's logits are a discretised Gaussian bump around it (width
``target_sigma`` bins, plus logit jitter so its argmax may sit a bin away, plus a little mass on
every non-action token); the draft's greedy token is the true bin shifted by Gaussian noise of std
``disagreement`` bins. For each r, one batched :func:`leankern.specdec.verify` call in relaxed mode
gives the acceptance length and the price of relaxing: how far the emitted bins are from the
target's argmax.

Run ``python -m leankern.specdec.study --plot docs/specdec_relaxed.png --csv docs/specdec_relaxed.csv``.
Spec-VLA (arXiv 2507.22424) reports +44% acceptance length at r = 9 with unchanged task success.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses

import torch

__all__ = ["SyntheticBatch", "synthetic_batch", "relaxed_acceptance_study", "format_table", "write_csv", "plot",
           "main"]

PAPER_RADIUS = 9
PAPER_GAIN = 0.44


@dataclasses.dataclass
class SyntheticBatch:
    """One batch of verify inputs (every request has ``num_drafts`` drafts).

    Shape: true_bins [T + B] int64 (drafts, then one bonus position per request);
    target_logits [T, V] fp32; bonus_logits [B, V] fp32; target_argmax [T + B] int64 token ids;
    cu_num_draft_tokens [B] int32.
    """

    true_bins: torch.Tensor
    target_logits: torch.Tensor
    bonus_logits: torch.Tensor
    target_argmax: torch.Tensor
    cu_num_draft_tokens: torch.Tensor
    action_lo: int
    num_bins: int

    def drafts(self, disagreement: float, seed: int = 0, outlier_rate: float = 0.0) -> torch.Tensor:
        """Greedy draft ids: true bin + round(N(0, disagreement)), clamped to the bins; with probability
        ``outlier_rate`` a uniformly random bin instead (a wild miss no radius repairs). Shape: [T] int32."""
        g = torch.Generator().manual_seed(seed)
        T = self.target_logits.shape[0]
        noise = torch.round(torch.randn(T, generator=g, dtype=torch.float64) * disagreement).long()
        bins = (self.true_bins[:T] + noise).clamp(0, self.num_bins - 1)
        wild = torch.rand(T, generator=g) < outlier_rate
        bins = torch.where(wild, torch.randint(0, self.num_bins, (T,), generator=g), bins)
        return (self.action_lo + bins).to(torch.int32)


def synthetic_batch(num_requests: int, num_drafts: int, vocab_size: int = 32000, num_bins: int = 256, *,
                    target_sigma: float = 2.0, logit_jitter: float = 0.3, non_action_logit: float = -8.0,
                    seed: int = 0) -> SyntheticBatch:
    """Target logits for ``num_requests`` requests with ``num_drafts`` drafts each (see the module doc).

    Action logits ``-(bin - true_bin)^2 / (2 target_sigma^2) + N(0, logit_jitter)`` on the last
    ``num_bins`` ids; every other id has ``non_action_logit`` (a little mass, never the argmax).

    Shape: target_logits [num_requests * num_drafts, vocab_size] fp32, bonus_logits [num_requests, vocab_size]
    fp32 (see :class:`SyntheticBatch`).
    """
    if not 0 < num_bins <= vocab_size:
        raise ValueError(f"num_bins: expected 1..vocab_size ({vocab_size}), got {num_bins}")
    g = torch.Generator().manual_seed(seed)
    T, B = num_requests * num_drafts, num_requests
    lo = vocab_size - num_bins
    true_bins = torch.randint(0, num_bins, (T + B,), generator=g)  # [T + B]
    dist = torch.arange(num_bins, dtype=torch.float32)[None, :] - true_bins[:, None].float()  # [T + B, bins]
    bump = -dist.square() / (2 * target_sigma**2) + torch.randn(T + B, num_bins, generator=g) * logit_jitter
    logits = torch.full((T + B, vocab_size), non_action_logit, dtype=torch.float32)  # [T + B, V]
    logits[:, lo:] = bump
    target_argmax = lo + torch.argmax(bump, dim=1)  # [T + B] ids (bump max > non-action floor)
    cu = torch.arange(1, B + 1, dtype=torch.int32) * num_drafts
    return SyntheticBatch(true_bins, logits[:T], logits[T:], target_argmax, cu, lo, num_bins)


def _measure(batch: SyntheticBatch, drafts: torch.Tensor, radius: int):
    """One relaxed verify call: (output [B, D+1], num_accepted [B], abs bin error of emitted tokens [B, D+1])."""
    from . import verify

    B = batch.cu_num_draft_tokens.numel()
    D = drafts.numel() // B
    out, num_accepted = verify(drafts, batch.cu_num_draft_tokens, batch.target_logits, batch.bonus_logits,
                               mode="relaxed", relax_radius=radius,
                               action_range=(batch.action_lo, batch.action_lo + batch.num_bins - 1), max_drafts=D)
    T = drafts.numel()
    ref = torch.cat([batch.target_argmax[:T].view(B, D), batch.target_argmax[T:].view(B, 1)], dim=1)  # [B, D+1]
    err = (out.long() - ref).abs()
    return out, num_accepted, err


def relaxed_acceptance_study(radii=range(0, 17), *, num_requests: int = 2000, num_drafts: int = 8,
                             vocab_size: int = 32000, num_bins: int = 256, disagreement=(2.0, 4.0, 8.0),
                             target_sigma: float = 2.0, outlier_rate: float = 0.0, seed: int = 0) -> list:
    """Acceptance length and bin error of relaxed verification for each radius and disagreement level.

    Returns one dict per (disagreement, radius): ``accepted`` (mean accepted drafts per request),
    ``tokens_per_step`` (accepted + the correction/bonus token), their relative gains over r = 0
    (``gain_accepted``, ``gain_tokens``), ``bin_error`` (mean |emitted bin - target argmax bin| over
    all emitted tokens), ``bin_error_accepted`` (the same over accepted drafts only) and
    ``max_bin_error``. The target logits are shared by all levels; the drafts differ. ``outlier_rate``:
    the fraction of drafts replaced by a uniformly random bin (see :meth:`SyntheticBatch.drafts`).

    Shape: one verify call per row on target_logits [num_requests * num_drafts, vocab_size] fp32.
    """
    radii = list(radii)
    batch = synthetic_batch(num_requests, num_drafts, vocab_size, num_bins, target_sigma=target_sigma, seed=seed)
    rows = []
    for level, s in enumerate(disagreement):
        drafts = batch.drafts(float(s), seed=seed + 1 + level, outlier_rate=outlier_rate)
        base = None
        for r in radii:
            out, num_accepted, err = _measure(batch, drafts, int(r))
            emitted = out >= 0  # [B, D+1]
            acc_mask = torch.arange(out.shape[1])[None, :] < num_accepted.long()[:, None]
            accepted = float(num_accepted.double().mean())
            row = {"disagreement": float(s), "radius": int(r), "accepted": accepted, "tokens_per_step": accepted + 1,
                   "bin_error": float(err[emitted].double().mean()),
                   "bin_error_accepted": float(err[acc_mask].double().mean()) if acc_mask.any() else 0.0,
                   "max_bin_error": int(err[emitted].max())}
            if base is None:  # the first radius is the baseline (r = 0 by default)
                base = row
            row["gain_accepted"] = accepted / base["accepted"] - 1 if base["accepted"] > 0 else float("nan")
            row["gain_tokens"] = row["tokens_per_step"] / base["tokens_per_step"] - 1
            rows.append(row)
    return rows


_COLUMNS = ["disagreement", "radius", "accepted", "tokens_per_step", "gain_accepted", "gain_tokens", "bin_error",
            "bin_error_accepted", "max_bin_error"]


def format_table(rows) -> str:
    """The study as a fixed-width text table."""
    head = f"{'std':>5} {'r':>3} {'accepted':>9} {'tok/step':>9} {'gain acc':>9} {'gain tok':>9} " \
           f"{'bin err':>8} {'err acc':>8} {'max err':>8}"
    lines = [head, "-" * len(head)]
    for x in rows:
        lines.append(f"{x['disagreement']:>5g} {x['radius']:>3d} {x['accepted']:>9.3f} {x['tokens_per_step']:>9.3f} "
                     f"{x['gain_accepted']:>+9.1%} {x['gain_tokens']:>+9.1%} {x['bin_error']:>8.3f} "
                     f"{x['bin_error_accepted']:>8.3f} {x['max_bin_error']:>8d}")
    return "\n".join(lines)


def write_csv(path, rows) -> None:
    """One line per (disagreement, radius), columns as in :func:`relaxed_acceptance_study`."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_COLUMNS)
        w.writeheader()
        for x in rows:
            w.writerow({k: f"{x[k]:.6f}" if isinstance(x[k], float) else x[k] for k in _COLUMNS})


def plot(path, rows) -> bool:
    """PNG: tokens per step and mean bin error vs r, one line per disagreement. False without matplotlib."""
    from ..benchmarks.harness import import_pyplot

    plt = import_pyplot(path)
    if plt is None:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for s in dict.fromkeys(x["disagreement"] for x in rows):
        sel = [x for x in rows if x["disagreement"] == s]
        rs = [x["radius"] for x in sel]
        ax1.plot(rs, [x["tokens_per_step"] for x in sel], "o-", label=f"draft noise std {s:g} bins")
        ax2.plot(rs, [x["bin_error"] for x in sel], "o-", label=f"all emitted, std {s:g}")
        ax2.plot(rs, [x["bin_error_accepted"] for x in sel], "x--", color=ax2.lines[-1].get_color(),
                 label=f"accepted drafts, std {s:g}")
    ax1.axvline(PAPER_RADIUS, color="gray", lw=0.8, ls=":")
    ax1.set(xlabel="relaxation radius r (bins)", ylabel="acceptance length (tokens per verify step)",
            title="Relaxed acceptance (Spec-VLA): acceptance length")
    ax2.set(xlabel="relaxation radius r (bins)", ylabel="mean |emitted bin - target argmax bin|",
            title="Price of relaxing: action bin error")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m leankern.specdec.study",
                                description="Spec-VLA relaxed acceptance: acceptance length and bin error vs radius.")
    p.add_argument("--max-radius", type=int, default=16)
    p.add_argument("--num-requests", type=int, default=2000)
    p.add_argument("--num-drafts", type=int, default=8)
    p.add_argument("--disagreement", type=float, nargs="+", default=[2.0, 4.0, 8.0],
                   help="draft bin-noise std levels (bins)")
    p.add_argument("--outlier-rate", type=float, default=0.0,
                   help="fraction of drafts replaced by a uniformly random bin (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib)")
    p.add_argument("--csv", metavar="PATH", help="write the numbers as CSV")
    args = p.parse_args(argv)
    rows = relaxed_acceptance_study(range(args.max_radius + 1), num_requests=args.num_requests,
                                    num_drafts=args.num_drafts, disagreement=args.disagreement,
                                    outlier_rate=args.outlier_rate, seed=args.seed)
    print(f"Relaxed acceptance, {args.num_requests} requests x {args.num_drafts} drafts, vocabulary 32000, "
          "action ids 31744..31999; target: Gaussian bump (sigma 2 bins); draft: true bin + N(0, std) bins"
          + (f", {args.outlier_rate:.0%} uniformly random" if args.outlier_rate else ""))
    print(format_table(rows))
    print(f"\nSpec-VLA reports +{PAPER_GAIN:.0%} acceptance length at r = {PAPER_RADIUS} vs r = 0. Here:")
    for x in rows:
        if x["radius"] == PAPER_RADIUS:
            print(f"  draft noise std {x['disagreement']:g} bins: tokens per step {x['gain_tokens']:+.1%}, "
                  f"accepted drafts {x['gain_accepted']:+.1%}, mean bin error {x['bin_error']:.2f}")
    if args.csv:
        write_csv(args.csv, rows)
        print(f"wrote {args.csv}")
    if args.plot and plot(args.plot, rows):
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
