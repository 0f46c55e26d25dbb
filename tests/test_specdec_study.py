"""leankern.specdec.study: the Spec-VLA relaxed acceptance study on small synthetic batches."""
import csv
import importlib.util

import pytest
import torch

import leankern.specdec as specdec
from leankern.specdec import study

SMALL = dict(num_requests=40, num_drafts=5, vocab_size=1024, num_bins=256)


@pytest.fixture(scope="module")
def rows():
    return study.relaxed_acceptance_study(range(0, 12), disagreement=(1.0, 4.0), seed=3, **SMALL)


def test_synthetic_batch_layout():
    b = study.synthetic_batch(6, 3, vocab_size=600, num_bins=256, seed=1)
    assert b.target_logits.shape == (18, 600) and b.bonus_logits.shape == (6, 600)
    assert b.cu_num_draft_tokens.tolist() == [3, 6, 9, 12, 15, 18]
    assert b.action_lo == 344
    full = torch.cat([b.target_logits, b.bonus_logits])
    assert torch.equal(torch.argmax(full, dim=1), b.target_argmax)  # the argmax is always an action id
    assert bool((b.target_argmax >= 344).all())
    d = b.drafts(3.0, seed=2)
    assert d.dtype == torch.int32 and d.shape == (18,) and bool(((d >= 344) & (d < 600)).all())
    assert torch.equal(d, b.drafts(3.0, seed=2))


def test_acceptance_monotone_in_radius(rows):
    for s in (1.0, 4.0):
        acc = [x["accepted"] for x in rows if x["disagreement"] == s]
        assert len(acc) == 12
        assert all(a <= b for a, b in zip(acc, acc[1:])), acc
        assert acc[-1] > acc[0]  # relaxing helps at all
    # more draft noise, fewer accepted drafts (same target, same radius)
    for r in range(12):
        lo, hi = (next(x["accepted"] for x in rows if x["disagreement"] == s and x["radius"] == r) for s in (1.0, 4.0))
        assert lo >= hi


def test_bin_error_bounded_by_radius(rows):
    for x in rows:
        assert x["max_bin_error"] <= x["radius"]  # accepted drafts are within r; corrections are the argmax
        assert x["bin_error"] <= x["bin_error_accepted"] + 1e-12
        assert x["tokens_per_step"] == pytest.approx(x["accepted"] + 1)
    assert all(x["bin_error"] == 0 for x in rows if x["radius"] == 0)


@pytest.mark.parametrize("disagreement", [0.0, 2.0, 6.0])
def test_radius_zero_equals_greedy(disagreement):
    b = study.synthetic_batch(30, 6, vocab_size=700, num_bins=256, seed=4)
    drafts = b.drafts(disagreement, seed=5)
    args = (drafts, b.cu_num_draft_tokens, b.target_logits, b.bonus_logits)
    out_g, n_g = specdec.verify(*args, mode="greedy")
    out_r, n_r = specdec.verify(*args, mode="relaxed", relax_radius=0, action_range=(b.action_lo, 699))
    assert torch.equal(out_g, out_r) and torch.equal(n_g, n_r)
    # and the study's own r = 0 row is greedy's acceptance
    out, n, err = study._measure(b, drafts, 0)
    assert torch.equal(out, out_g) and int(err[out >= 0].max()) == 0


def test_relaxed_emits_drafts_then_argmax():
    b = study.synthetic_batch(20, 4, vocab_size=512, num_bins=256, seed=6)
    drafts = b.drafts(3.0, seed=7)
    out, n, _ = study._measure(b, drafts, 5)
    D = 4
    for i in range(20):
        k = int(n[i])
        assert out[i, :k].tolist() == drafts[i * D:i * D + k].tolist()
        nxt = int(b.target_argmax[i * D + k]) if k < D else int(b.target_argmax[20 * D + i])
        assert int(out[i, k]) == nxt
        assert (out[i, k + 1:] == -1).all()


def test_csv_and_plot(tmp_path, rows):
    path = tmp_path / "relaxed.csv"
    study.write_csv(path, rows)
    with open(path) as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows) and int(got[-1]["radius"]) == 11
    png = tmp_path / "relaxed.png"
    wrote = study.plot(png, rows)
    assert wrote == (importlib.util.find_spec("matplotlib") is not None) and png.exists() == wrote


def test_cli(tmp_path, capsys):
    csv_path = tmp_path / "s.csv"
    assert study.main(["--num-requests", "10", "--num-drafts", "3", "--max-radius", "9", "--disagreement", "4",
                       "--csv", str(csv_path)]) == 0
    text = capsys.readouterr().out
    assert "r = 9" in text and "+44%" in text and csv_path.exists()
