"""The benchmark harness and the benches' correctness-before-timing checks, on tiny inputs (no timing asserted)."""
import pytest
import torch

import leankern
from leankern.benchmarks.harness import Case, Impl, beaten, format_table, run_cases


def test_beaten_and_flag_column():
    assert beaten(1.2) and beaten(roof=0.8) and beaten(0.5, 0.9)
    assert not beaten(0.99) and not beaten(roof=1.0) and not beaten() and not beaten(None, None)
    table = format_table([{"x": 1.0, "f": True}, {"x": 2.0, "f": False}], [("x", "x", ".1f"), ("f", "rd<ours", "flag")])
    lines = table.splitlines()
    assert lines[2].rstrip().endswith("yes") and not lines[3].rstrip().endswith("yes")


def test_run_cases_bandwidth_around_each_row():
    measures = iter([10.0, 20.0, 40.0])
    cases = [Case({"name": n}, [Impl("ours", lambda: torch.zeros(4), repeats=2)], nbytes=10**6) for n in "ab"]
    rows = run_cases(cases, bw_fn=lambda: next(measures), bw_gbps=999.0)
    assert [r["row_bw_gbps"] for r in rows] == [15.0, 30.0]  # the mean of the measures just before and after
    for r in rows:
        assert r["frac_bw"] == pytest.approx(r["gbps"] / r["row_bw_gbps"])
        assert r["bw_beaten"] == (r["frac_bw"] > 1)
    fixed = run_cases(cases[:1], bw_gbps=1e9)  # without bw_fn: the one figure passed in
    assert fixed[0]["frac_bw"] == pytest.approx(fixed[0]["gbps"] / 1e9) and "row_bw_gbps" not in fixed[0]


@pytest.mark.parametrize("fmt,act", [("mxint8", None), ("mxfp4", None), ("nvfp4", None), ("mxint8", "mxint8")])
def test_mx_linear_check(fmt, act):
    from leankern.benchmarks.mx_linear import check_linear

    g = torch.Generator().manual_seed(0)
    q = leankern.mx.quantize(torch.randn(32, 256, generator=g), fmt)
    x = torch.randn(4, 256, generator=g).to(torch.bfloat16)
    assert check_linear(x, q, leankern.mx.linear(x, leankern.mx.prepack(q), act_fmt=act), act) < 1e-2
    wrong = q.dequantize(torch.float32)
    wrong[:, :32] = 0  # one block of every row dropped
    with pytest.raises(AssertionError):
        check_linear(x, q, (x.float() @ wrong.T).to(torch.bfloat16), act)


def test_specdec_check_compares_emitted_tokens():
    from leankern.benchmarks import specdec

    B, K, V = 4, 3, 256
    drafts, cu, logits, bonus, q = specdec._inputs(B, K, V, torch.float32)
    got = specdec._ours_fn("greedy", drafts, cu, logits, bonus, q, K)()
    want = specdec._baseline_fn("greedy", drafts, cu, logits, bonus, q, B, K)()
    specdec._check_greedy("greedy", torch.float32, B, K, V, got, want)
    out = got[0].clone()
    rows = torch.arange(B)
    out[rows, got[1].long()] = (out[rows, got[1].long()] + 1) % V  # same accepted counts, other emitted tokens
    with pytest.raises(AssertionError, match="emitted tokens"):
        specdec._check_greedy("greedy", torch.float32, B, K, V, (out, got[1]), want)


def test_vocab_check_head():
    from leankern.benchmarks import vocab

    g = torch.Generator().manual_seed(0)
    w = (torch.randn(512, 64, generator=g) * 0.02).to(torch.bfloat16)
    h = torch.randn(2, 64, generator=g).to(torch.bfloat16)
    ids = torch.randperm(512, generator=g)[:64].sort().values.to(torch.int32)
    vocab._check_head(h, w, ids, ids.long(), "tiny", 64, 2)
    with pytest.raises(AssertionError):
        vocab._check_head(h, w, ids, ids.long().roll(1), "tiny", 64, 2)  # the reference on other rows


def test_sefp_check_raises():
    from leankern import sefp
    from leankern.benchmarks.sefp import _check

    g = torch.Generator().manual_seed(0)
    wq = sefp.quantize(torch.randn(32, 128, generator=g), m_max=8)
    x = torch.randn(2, 128, generator=g).to(torch.bfloat16)
    assert _check(x, wq, 4, sefp.linear(x, wq, 4)) == "ok"
    with pytest.raises(AssertionError):
        _check(x, wq, 4, sefp.linear(x, wq, 8) * 1.5)
