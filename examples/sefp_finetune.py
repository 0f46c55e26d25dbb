"""Fine-tune one model for several SEFP widths at once, then serve every width from one stored copy.

    python examples/sefp_finetune.py [--steps 800] [--widths 8 6 4 3]

OTARo's setting (arXiv 2511.13147): the loss is summed over several mantissa widths, each computed
with every linear weight fake-quantized at that width (``leankern.sefp.sefp_fake_quant``, a
straight-through gradient), so one set of weights is good at all of them. Afterwards the model is
quantized once (``quantize_model(model, "sefp", m_max=8)``) and each width is served by
``set_precision`` -- a truncation of the same bit planes, no requantization.

Task: a small MLP (64 -> 256 -> 256 -> 8, GELU) regresses a fixed random teacher MLP on Gaussian
inputs; loss = MSE / Var(target) (1.0 = predicting the mean). It is first trained in fp32
(``--pretrain-steps``), then fine-tuned with the summed multi-width loss (``--steps``). Everything
is seeded and runs in well under a minute on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import time
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

import leankern

MENU = leankern.sefp.DEFAULT_MENU  # widths served: 8 .. 2


class FakeQuant(nn.Module):
    """Weight parametrization: ``sefp_fake_quant(w, width)`` while a width is set, ``w`` otherwise."""

    def __init__(self, block_size: int = 32):
        super().__init__()
        self.block_size, self.width = block_size, None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w if self.width is None else leankern.sefp.sefp_fake_quant(w, self.width, self.block_size)


def add_fake_quant(model: nn.Module) -> list[FakeQuant]:
    """Parametrize the weight of every ``nn.Linear`` of ``model``; returns the parametrizations."""
    fqs = []
    for lin in [m for m in model.modules() if isinstance(m, nn.Linear)]:
        fq = FakeQuant()
        parametrize.register_parametrization(lin, "weight", fq)
        fqs.append(fq)
    return fqs


def remove_fake_quant(model: nn.Module) -> None:
    """Back to plain ``nn.Linear`` with the trained (full-precision) weights."""
    for lin in [m for m in model.modules() if isinstance(m, nn.Linear)]:
        parametrize.remove_parametrizations(lin, "weight", leave_parametrized=False)


@contextlib.contextmanager
def at_width(fqs: list[FakeQuant], m: int | None):
    """Run the model with every weight fake-quantized at width ``m`` (None: full precision)."""
    for fq in fqs:
        fq.width = m
    try:
        yield
    finally:
        for fq in fqs:
            fq.width = None


class Task:
    """Teacher-student regression on fresh Gaussian inputs (no overfitting): targets from a fixed random
    tanh MLP, normalised to unit variance per output."""

    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.w1, self.w2 = torch.randn(64, 128, generator=g) / 8, torch.randn(128, 8, generator=g)
        x = torch.randn(4096, 64, generator=g)
        y = torch.tanh(x @ self.w1) @ self.w2
        self.mean, self.std = y.mean(0), y.std(0)
        self.x_test, self.y_test = x, self._target(x)  # fixed test set

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(x @ self.w1) @ self.w2 - self.mean) / self.std

    def batch(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 64, generator=g)
        return x, self._target(x)


def make_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 8))


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((model(x) - y) ** 2).mean()  # targets have unit variance: 1.0 = predicting the mean


def train(model, fqs, task: Task, steps: int, widths, lr: float, seed: int, batch: int = 256) -> None:
    """Adam on the loss summed over ``widths`` (``[None]``: plain fp32 training), fresh data each step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for _ in range(steps):
        x, y = task.batch(batch, g)
        opt.zero_grad(set_to_none=True)
        for m in widths:  # OTARo: one backward per width, gradients summed
            with at_width(fqs, m):
                loss_fn(model, x, y).backward()
        opt.step()
        sched.step()


@torch.no_grad()
def fake_quant_losses(model, fqs, x, y) -> dict:
    """Test loss at every width of the menu (fake quant) and in full precision (key None)."""
    out = {}
    for m in (None,) + MENU:
        with at_width(fqs, m):
            out[m] = float(loss_fn(model, x, y))
    return out


@torch.no_grad()
def served_losses(model, x, y, m_max: int = 8) -> tuple[dict, object]:
    """Quantize a copy once (``quantize_model(..., "sefp")``) and serve each width with ``set_precision``."""
    served = copy.deepcopy(model)
    report = leankern.quantize_model(served, "sefp", m_max=m_max)
    planes = [mod.planes for mod in served.modules() if isinstance(mod, leankern.SEFPLinear)]
    snapshot = [(p.data_ptr(), p.clone()) for p in planes]
    out = {}
    for m in MENU:
        leankern.set_precision(served, m)
        out[m] = float(loss_fn(served, x, y))
    assert all(p.data_ptr() == ptr and torch.equal(p, c) for p, (ptr, c) in zip(planes, snapshot)), \
        "set_precision must never touch the stored planes"
    return out, report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=800, help="multi-width fine-tuning steps")
    p.add_argument("--pretrain-steps", type=int, default=1500, help="fp32 training steps first")
    p.add_argument("--widths", type=int, nargs="+", default=[8, 6, 4, 3], help="widths whose losses are summed")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (Adam, cosine)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    # The SEFP ops have C++ CPU kernels; only a build without leankern._C falls back to the pure-PyTorch reference
    # (same results, slower), and this example need not warn about that.
    warnings.filterwarnings("ignore", message=".*pure-PyTorch reference.*")
    t0 = time.perf_counter()
    task = Task(args.seed)
    x_te, y_te = task.x_test, task.y_test
    model = make_model(args.seed)
    fqs = add_fake_quant(model)
    train(model, fqs, task, args.pretrain_steps, [None], lr=3e-3, seed=args.seed + 1)
    before = fake_quant_losses(model, fqs, x_te, y_te)
    mean_abs = [float(lin.weight.detach().abs().mean()) for lin in model if isinstance(lin, nn.Linear)]
    train(model, fqs, task, args.steps, args.widths, lr=args.lr, seed=args.seed + 2)
    after = fake_quant_losses(model, fqs, x_te, y_te)
    remove_fake_quant(model)
    growth = [float(lin.weight.detach().abs().mean()) / a - 1 for lin, a in
              zip([m for m in model if isinstance(m, nn.Linear)], mean_abs)]
    served, report = served_losses(model, x_te, y_te)

    print(f"MLP 64-256-256-8, teacher-student regression; test loss = MSE / Var(target). fp32 pretraining "
          f"{args.pretrain_steps} steps, then {args.steps} steps on the loss summed over widths {args.widths}")
    print(f"fp32 (no quantization): before {before[None]:.4f}, after {after[None]:.4f}")
    print(f"{'m':>2} {'bits/w':>6} {'trained':>7} {'before (fake quant)':>20} {'after (fake quant)':>19} "
          f"{'after (served)':>15} {'|served - fq|':>13}")
    for m in MENU:
        bits = m + 1 + 8 / 32
        print(f"{m:>2} {bits:>6.2f} {'yes' if m in args.widths else '':>7} {before[m]:>20.4f} {after[m]:>19.4f} "
              f"{served[m]:>15.4f} {abs(served[m] - after[m]):>13.2e}")
    total = lambda losses: sum(losses[m] for m in args.widths)  # noqa: E731
    print(f"summed loss over the trained widths (the objective): before {total(before):.4f}, after "
          f"{total(after):.4f}")
    print("mean |w| per layer changed by " + ", ".join(f"{g:+.1%}" for g in growth) + ": the low widths pull the "
          "shared weights up (truncation toward zero shrinks magnitudes by ~half an LSB, small ones flush to zero), "
          "which costs the widest widths a little")
    print(f"served: {len(report.replaced)} SEFPLinear layers, {report.bytes_after / 1e3:.1f} kB stored at "
          f"m_max=8 (fp32 linears: {report.bytes_before / 1e3:.1f} kB); widths switched with set_precision, "
          f"planes untouched")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return {"before": before, "after": after, "served": served, "widths": args.widths}


if __name__ == "__main__":
    main()
