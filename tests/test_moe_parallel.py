"""leankern.moe.parallel: expert maps, and expert-parallel forward on 2 CPU processes (gloo) against one process.

The distributed test spawns 2 processes once (file:// rendezvous in a tmp dir) and runs every scenario in them;
each rank saves its findings and the assertions run here, in the test process.
"""
import datetime
import os

import pytest
import torch
import torch.multiprocessing as mp

from leankern import moe
from leankern.moe.parallel import EXCHANGES, PLACEMENTS, ep_moe_forward, expert_map, expert_owner

U32 = 2.0 ** -24  # unit roundoff of fp32


def gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


# ------------------------------------------------------------------------------------------ maps
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("E,W", [(8, 2), (7, 2), (6, 4), (3, 5), (128, 8), (1, 1)])
def test_expert_map_partitions_experts(E, W, placement):
    owner, local = expert_owner(E, W, placement)
    maps = torch.stack([expert_map(E, r, W, placement) for r in range(W)])
    assert maps.dtype == torch.int32 and maps.shape == (W, E)
    assert ((maps >= 0).sum(0) == 1).all()  # every expert on exactly one rank
    for r in range(W):
        m = maps[r]
        held = m[m >= 0]
        assert sorted(held.tolist()) == list(range(held.numel()))  # local ids 0 .. E_local-1
        assert (owner[m >= 0] == r).all() and (local[m >= 0] == m[m >= 0]).all()
        assert held.tolist() == sorted(held.tolist())  # local order follows the global order: w13[m >= 0]
    sizes = (maps >= 0).sum(1)
    assert int(sizes.max() - sizes.min()) <= 1
    if placement == "contiguous":
        assert (owner.diff() >= 0).all() and sizes.tolist() == sorted(sizes.tolist(), reverse=True)
    else:
        assert (owner == torch.arange(E) % W).all()


def test_expert_map_errors():
    with pytest.raises(ValueError, match="placement"):
        expert_map(8, 0, 2, "random")
    with pytest.raises(ValueError, match="rank"):
        expert_map(8, 2, 2)
    with pytest.raises(ValueError, match="num_experts"):
        expert_map(0, 0, 2)
    with pytest.raises(ValueError, match="world_size"):
        expert_owner(4, 0)


# --------------------------------------------------------------------------------- distributed
H, I, E, K = 16, 12, 6, 3
SCENARIOS = [  # (name, tokens per rank, placement, exchange, skip probability, extras)
    ("contig_a2a", (9, 5), "contiguous", "all_to_all", 0.3, False),
    ("rr_p2p", (7, 11), "round_robin", "p2p", 0.3, False),
    ("empty_rank_a2a", (8, 0), "contiguous", "all_to_all", 0.4, False),
    ("empty_rank_p2p", (0, 6), "round_robin", "p2p", 0.4, False),
    ("all_skipped", (4, 3), "contiguous", "auto", 1.0, False),
    ("bias_shared_module", (10, 6), "round_robin", "auto", 0.25, True),
]


def make_case(seed: int, T: int, skip_p: float, gen_extras: bool):
    """Full weights (shared by every rank: same seed) and this rank's tokens and routing."""
    g = torch.Generator().manual_seed(1000)
    w13 = torch.randn(E, 2 * I, H, generator=g) / H ** 0.5
    w2 = torch.randn(E, H, I, generator=g) / I ** 0.5
    extras = {}
    if gen_extras:
        extras = dict(w13_bias=torch.randn(E, 2 * I, generator=g) * 0.1, w2_bias=torch.randn(E, H, generator=g) * 0.1,
                      shared_w1=torch.randn(5, H, generator=g) / H ** 0.5,
                      shared_w3=torch.randn(5, H, generator=g) / H ** 0.5,
                      shared_w2=torch.randn(H, 5, generator=g) / 5 ** 0.5, shared_gate=torch.randn(H, generator=g))
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=g)
    ids = torch.argsort(torch.rand(T, E, generator=g), dim=1)[:, :K].to(torch.int32)  # K distinct experts per row
    weights = torch.rand(T, K, generator=g)
    skipped = torch.rand(T, K, generator=g) < skip_p
    ids = ids.masked_fill(skipped, -1)
    weights = weights.masked_fill(skipped, 0.0)
    return hidden, ids, weights, w13, w2, extras


def exact_and_bound(hidden, ids, weights, w13, w2, extras, shared):
    """Reference value and an fp32 forward-error bound per element (fp64 arithmetic).

    Per pair (x, expert e, weight w): g, u = W13 x (+ b) with |err| <= gamma_{H+1} (|W13||x| + |b|); the activation
    a = silu(g) * u has |err| <= 1.1 |dg||u| + |silu g||du| + |dg||du| + 4u|a| (|silu'| <= 1.1, a few roundings);
    the down projection adds gamma_{I+1} (|W2||a| + |b2|) + |W2||da|; times w (one rounding); the slot terms summed
    in any order add gamma_{k-1} * sum |w y|. ``shared`` (the shared expert's fp32 output, [T, H]) is bitwise the
    same on both sides (same op, same inputs) and only adds the final rounding of ``routed + shared``. Any fp32
    evaluation order stays within the bound of the reference, so two (distributed / single process) differ by at
    most twice the bound."""
    x = hidden.double()
    T = x.shape[0]
    exact = torch.zeros(T, H, dtype=torch.float64)
    bound = torch.zeros(T, H, dtype=torch.float64)
    b13, b2 = extras.get("w13_bias"), extras.get("w2_bias")
    for t in range(T):
        terms = 0
        absum = torch.zeros(H, dtype=torch.float64)
        for j in range(K):
            e = int(ids[t, j])
            if e < 0:
                continue
            terms += 1
            W13, W2 = w13[e].double(), w2[e].double()
            bb13 = b13[e].double() if b13 is not None else torch.zeros(2 * I, dtype=torch.float64)
            bb2 = b2[e].double() if b2 is not None else torch.zeros(H, dtype=torch.float64)
            gu = W13 @ x[t] + bb13
            dgu = gamma(H + 1) * (W13.abs() @ x[t].abs() + bb13.abs())
            g, u, dg, du = gu[:I], gu[I:], dgu[:I], dgu[I:]
            sg = torch.nn.functional.silu(g)
            a = sg * u
            da = 1.1 * dg * u.abs() + sg.abs() * du + dg * du + 4 * U32 * a.abs()
            y = W2 @ a + bb2
            dy = gamma(I + 1) * (W2.abs() @ a.abs() + bb2.abs()) + W2.abs() @ da
            wt = float(weights[t, j])
            exact[t] += wt * y
            bound[t] += abs(wt) * (dy + U32 * (y.abs() + dy))
            absum += abs(wt) * (y.abs() + dy)
        bound[t] += gamma(max(terms - 1, 0)) * absum
    total = exact + shared.double()
    bound += U32 * (total.abs() + bound)
    return total, 2 * bound


def _worker(rank, world, init_file, out_dir):
    import warnings
    import torch.distributed as dist
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # the moe ops run their reference on CPU for now
    import leankern.moe as moe
    from leankern.moe.parallel import EPMoE, ep_moe_forward, expert_map as emap_fn, gather_expert_owner

    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    # spies on what really goes over the wire (payload bytes to the other rank)
    wire = {"bytes": 0}
    a2a, batch = dist.all_to_all_single, dist.batch_isend_irecv

    def spy_a2a(output, input, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False):
        if input_split_sizes is not None and input.dim() == 2:  # payloads (the count vectors are not counted)
            wire["bytes"] += input_split_sizes[1 - rank] * input.shape[1] * input.element_size()
        return a2a(output, input, output_split_sizes, input_split_sizes, group=group, async_op=async_op)

    def spy_batch(ops):
        wire["bytes"] += sum(op.tensor.numel() * op.tensor.element_size() for op in ops if op.op is dist.isend)
        return batch(ops)

    dist.all_to_all_single, dist.batch_isend_irecv = spy_a2a, spy_batch
    results = {}
    for s, (name, tokens, placement, exchange, skip_p, extras_on) in enumerate(SCENARIOS):
        hidden, ids, weights, w13, w2, extras = make_case(100 * s + rank, tokens[rank], skip_p, extras_on)
        m = emap_fn(E, rank, world, placement)
        held = m >= 0
        local_w13, local_w2 = w13[held].contiguous(), w2[held].contiguous()
        kw = dict(extras)
        if "w13_bias" in kw:
            kw["w13_bias"], kw["w2_bias"] = kw["w13_bias"][held], kw["w2_bias"][held]
        wire["bytes"] = 0
        if extras_on:
            layer = EPMoE(local_w13, local_w2, m, exchange=exchange, **kw)
            out = layer(hidden, ids, weights)
            out2 = layer(hidden, ids.long(), weights)  # owner cached now; int64 ids accepted
            assert torch.equal(out, out2)
            wire["bytes"] //= 2  # two forwards
            stats = layer.last_dispatch_stats
        else:
            owner = gather_expert_owner(m)
            out, stats = ep_moe_forward(hidden, ids, weights, local_w13, local_w2, m, owner=owner, exchange=exchange,
                                        return_stats=True)
        single = moe.experts(hidden, w13, w2, ids, weights, **extras)
        shared = torch.zeros(hidden.shape[0], H)
        if extras_on:
            shared_kw = {k: v for k, v in extras.items() if k.startswith("shared")}
            none = torch.full((hidden.shape[0], 1), -1, dtype=torch.int32)
            shared = moe.experts(hidden, w13, w2, none, torch.zeros(hidden.shape[0], 1), **shared_kw)
        exact, bound = exact_and_bound(hidden, ids, weights, w13, w2, extras, shared)
        owner_full, _ = expert_owner(E, world, placement)
        kept = ids >= 0
        dest = owner_full[ids.clamp_min(0).long()]
        results[name] = dict(
            out=out, single=single, exact=exact, bound=bound, stats=stats,
            want_to=[int((kept & (dest == d)).sum()) for d in range(world)], skipped=int((~kept).sum()),
            T=hidden.shape[0], dtype=out.dtype, wire_bytes=wire["bytes"])
    dist.all_to_all_single, dist.batch_isend_irecv = a2a, batch
    # argument errors are raised before any collective
    try:
        ep_moe_forward(torch.zeros(2, H), torch.tensor([[0, 0, 1], [1, 2, 3]], dtype=torch.int32), torch.ones(2, 3),
                       w13[:3], w2[:3], emap_fn(E, rank, world))
        results["dup_error"] = None
    except ValueError as e:
        results["dup_error"] = str(e)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("ep")
    mp.spawn(_worker, args=(2, str(d / "init"), str(d)), nprocs=2, join=True)
    return [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("name", [s[0] for s in SCENARIOS])
def test_ep_matches_single_process(dist_results, name):
    for rank in range(2):
        r = dist_results[rank][name]
        assert r["out"].shape == (r["T"], H) and r["dtype"] == torch.float32
        if r["T"] == 0:
            continue
        err_ep = (r["out"].double() - r["exact"]).abs()
        err_single = (r["single"].double() - r["exact"]).abs()
        half = r["bound"] / 2
        assert (err_single <= half).all(), f"rank {rank}: single process off the bound: {float(err_single.max()):.3g}"
        assert (err_ep <= half).all(), f"rank {rank}: expert parallel off the bound: {float(err_ep.max()):.3g}"
        diff = (r["out"].double() - r["single"].double()).abs()
        assert (diff <= r["bound"]).all(), \
            f"rank {rank}: max |ep - single| {float(diff.max()):.3g}, bound {float(r['bound'].max()):.3g}"
        if name == "all_skipped":
            assert torch.equal(r["out"], torch.zeros_like(r["out"]))


@pytest.mark.parametrize("name", [s[0] for s in SCENARIOS])
def test_skipped_slots_are_never_sent(dist_results, name):
    exchange = dict((s[0], s[3]) for s in SCENARIOS)[name]
    for rank in range(2):
        r = dist_results[rank][name]
        st = r["stats"]
        other = 1 - rank
        assert st.pairs_to == r["want_to"]  # kept pairs per destination: -1 slots are not among them
        assert st.kept_pairs == sum(r["want_to"]) and st.skipped_slots == r["skipped"]
        assert st.kept_pairs + st.skipped_slots == r["T"] * K
        assert st.remote_pairs_sent == r["want_to"][other]
        assert st.dispatch_bytes_sent == st.remote_pairs_sent * (H * 4 + 8)
        assert st.combine_bytes_received == st.remote_pairs_sent * H * 4
        assert r["wire_bytes"] == st.dispatch_bytes_sent + st.combine_bytes_sent  # measured on the collectives
        # what this rank received is what the other one sent, and it returns as many results
        peer = dist_results[other][name]["stats"]
        assert st.pairs_from[other] == peer.pairs_to[rank] and st.remote_pairs_received == peer.remote_pairs_sent
        assert st.combine_bytes_sent == st.remote_pairs_received * H * 4
        assert st.method == ("all_to_all" if exchange == "auto" else exchange)
    if name == "all_skipped":
        assert all(dist_results[rk][name]["stats"].kept_pairs == 0 for rk in range(2))


def test_argument_error_before_collectives(dist_results):
    for rank in range(2):
        assert "duplicate" in (dist_results[rank]["dup_error"] or "").lower() or \
            "twice" in (dist_results[rank]["dup_error"] or "").lower(), dist_results[rank]["dup_error"]


# ------------------------------------------------------------------------------ one rank, in this process
@pytest.fixture
def world_of_one(tmp_path, monkeypatch):
    """A Gloo group of one rank in the test process; yields the names of the collectives called since (spied)."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    dist.init_process_group("gloo", init_method="file://" + str(tmp_path / "init"), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    calls = []
    for name in ("all_to_all_single", "all_gather", "batch_isend_irecv", "all_reduce", "broadcast"):
        real = getattr(dist, name)
        monkeypatch.setattr(dist, name, lambda *a, _real=real, _name=name, **kw: (calls.append(_name),
                                                                                 _real(*a, **kw))[1])
    try:
        yield calls
    finally:
        dist.destroy_process_group()


def _local_case(T=5):
    hidden, ids, weights, w13, w2, _ = make_case(7, T, 0.3, False)
    return hidden, ids, weights, w13, w2


# case -> (local_w13, local_w2, kwargs) from the full w13 / w2, the error and its message
BAD_EXPERT_ARGS = {
    "activation": (lambda a, b: (a, b, dict(activation="bogus")), ValueError,
                   r"activation: expected one of \('silu', 'swiglu_oai'\), got 'bogus'"),
    "w2_as_E_I_H": (lambda a, b: (a, b.transpose(1, 2).contiguous(), {}), ValueError,
                    rf"local_w2: expected shape \[E={E}, H={H}, I={I}\], got \({E}, {I}, {H}\)"),
    "w2_dtype": (lambda a, b: (a, b.half(), {}), TypeError, r"local_w2: expected dtype in \['torch.float32'\]"),
    "w2_bias_shape": (lambda a, b: (a, b, dict(w2_bias=torch.zeros(E, I))), ValueError,
                      rf"w2_bias: expected shape \[{E}, {H}\]"),
    "w13_bias_dtype": (lambda a, b: (a, b, dict(w13_bias=torch.zeros(E, 2 * I, dtype=torch.int32))), TypeError,
                       r"w13_bias: expected dtype"),
    "swiglu_limit": (lambda a, b: (a, b, dict(activation="swiglu_oai", swiglu_limit=-1.0)), ValueError,
                     r"swiglu_alpha, swiglu_limit: expected a finite alpha and a finite limit > 0"),
    "shared_incomplete": (lambda a, b: (a, b, dict(shared_w1=torch.zeros(5, H))), ValueError,
                          r"shared_w1, shared_w3, shared_w2: expected all three"),
    "shared_gate_shape": (lambda a, b: (a, b, dict(shared_w1=torch.zeros(5, H), shared_w3=torch.zeros(5, H),
                                                   shared_w2=torch.zeros(H, 5), shared_gate=torch.zeros(H + 1))),
                          ValueError, rf"shared_gate: expected shape \[H={H}\]"),
    "map_beyond_local": (lambda a, b: (a[:E - 1], b[:E - 1], {}), ValueError,
                         rf"expert_map: expected local ids in \[-1, E_local={E - 1}\) .*got min 0, max {E - 1}"),
}


@pytest.mark.parametrize("exchange", ["all_to_all", "p2p"])
@pytest.mark.parametrize("via", ["owner_given", "owner_gathered", "EPMoE"])
@pytest.mark.parametrize("case", list(BAD_EXPERT_ARGS))
def test_expert_argument_errors_before_any_collective(world_of_one, case, exchange, via):
    """The module docstring's promise: a bad argument of the expert compute (raised by moe.experts on the received
    pairs) is raised before the counts exchange, the payloads and the owner gather (EPMoE's first forward too)."""
    from leankern.moe.parallel import EPMoE

    make, err, msg = BAD_EXPERT_ARGS[case]
    hidden, ids, weights, w13, w2 = _local_case()
    local_w13, local_w2, kw = make(w13, w2)
    owner = torch.zeros(E, dtype=torch.int32) if via == "owner_given" else None
    with pytest.raises(err, match=msg):
        if via == "EPMoE":
            EPMoE(local_w13, local_w2, expert_map(E, 0, 1), exchange=exchange, **kw)(hidden, ids, weights)
        else:
            ep_moe_forward(hidden, ids, weights, local_w13, local_w2, expert_map(E, 0, 1), owner=owner,
                           exchange=exchange, **kw)
    assert world_of_one == []
    out = ep_moe_forward(hidden, ids, weights, w13, w2, expert_map(E, 0, 1), owner=owner, exchange=exchange)
    assert world_of_one and torch.equal(out, moe.experts(hidden, w13, w2, ids, weights))  # the spies see them


# owner -> (expert_map on rank 0, the error and its message)
BAD_OWNERS = {
    "rank_beyond_world": (torch.tensor([0, 0, 1, 0, 0, 0]), expert_map(E, 0, 1), ValueError,
                          r"owner: expected ranks in \[0, world_size=1\), got min 0, max 1"),
    "negative": (torch.tensor([0, 0, -1, 0, 0, 0]), expert_map(E, 0, 1), ValueError,
                 r"owner: expected ranks in \[0, world_size=1\), got min -1, max 0"),
    "other_world_size": (expert_owner(E, 2)[0], expert_map(E, 0, 1), ValueError,
                         r"owner: expected ranks in \[0, world_size=1\), got min 0, max 1"),
    "disagrees_with_map": (torch.zeros(E, dtype=torch.int32), expert_map(E, 0, 2), ValueError,
                           r"owner: expected owner\[e\] == rank 0 exactly for the experts this rank's expert_map "
                           r"holds \(expert_map\[e\] >= 0\), got 3 expert\(s\) that disagree, first e = 3: owner 0, "
                           r"expert_map -1"),
    "float": (torch.zeros(E), expert_map(E, 0, 1), TypeError, r"owner: expected an int32 tensor \[E=6\]"),
    "shape": (torch.zeros(E + 1, dtype=torch.int32), expert_map(E, 0, 1), ValueError,
              r"owner: expected shape \[E=6\], got \(7,\)"),
}


@pytest.mark.parametrize("exchange", ["all_to_all", "p2p"])
@pytest.mark.parametrize("case", list(BAD_OWNERS))
def test_owner_values_checked_before_any_collective(world_of_one, case, exchange):
    owner, emap, err, msg = BAD_OWNERS[case]
    hidden, ids, weights, w13, w2 = _local_case()
    held = emap >= 0
    with pytest.raises(err, match=msg):
        ep_moe_forward(hidden, ids, weights, w13[held], w2[held], emap, owner=owner, exchange=exchange)
    assert world_of_one == []


def test_bf16_pairs_rounded_before_the_combine_as_documented(world_of_one):
    """fp32: moe.experts' result up to summation order (here, one rank: equal). bf16: each kept pair's output and the
    shared expert's come back rounded to bf16 before the fp32 sum (the documented k + 1 more roundings), so the
    result differs from moe.experts' by at most one bf16 rounding of each term and of both results."""
    g = torch.Generator().manual_seed(5)
    T, k = 64, 4
    hidden = torch.randn(T, H, generator=g)
    w13 = torch.randn(E, 2 * I, H, generator=g) / H ** 0.5
    w2 = torch.randn(E, H, I, generator=g) / I ** 0.5
    shared = dict(shared_w1=torch.randn(5, H, generator=g) / H ** 0.5,
                  shared_w3=torch.randn(5, H, generator=g) / H ** 0.5, shared_w2=torch.randn(H, 5, generator=g))
    ids = torch.argsort(torch.rand(T, E, generator=g), dim=1)[:, :k].to(torch.int32)
    weights = torch.rand(T, k, generator=g)
    m = expert_map(E, 0, 1)
    out = ep_moe_forward(hidden, ids, weights, w13, w2, m, **shared)
    torch.testing.assert_close(out, moe.experts(hidden, w13, w2, ids, weights, **shared), rtol=1e-6, atol=1e-6)

    bf = {key: v.bfloat16() for key, v in dict(hidden=hidden, w13=w13, w2=w2, **shared).items()}
    ep = ep_moe_forward(bf["hidden"], ids, weights, bf["w13"], bf["w2"], m,
                        **{key: v for key, v in bf.items() if key.startswith("shared")}).float()
    single = moe.experts(bf["hidden"], bf["w13"], bf["w2"], ids, weights,
                         **{key: v for key, v in bf.items() if key.startswith("shared")}).float()
    f32 = {key: v.float() for key, v in bf.items()}
    none = torch.full((T, 1), -1, dtype=torch.int32)
    terms = sum(moe.ref.experts_ref(f32["hidden"], f32["w13"], f32["w2"], ids[:, j:j + 1], weights[:, j:j + 1]).abs()
                for j in range(k))
    terms = terms + moe.ref.experts_ref(f32["hidden"], f32["w13"], f32["w2"], none, torch.zeros(T, 1), None, None,
                                        "silu", 1.702, 7.0, False, f32["shared_w1"], f32["shared_w3"],
                                        f32["shared_w2"], None).abs()
    u = 2.0 ** -8  # unit roundoff of bf16
    assert not torch.equal(ep, single)  # the per-pair rounding is real: moe.experts rounds the fp32 sum once
    assert ((ep - single).abs() <= u * (terms + ep.abs() + single.abs())).all()
    assert "k + 1" in ep_moe_forward.__doc__ and "up to summation order" in ep_moe_forward.__doc__


def test_exchange_names():
    assert EXCHANGES == ("auto", "all_to_all", "p2p")
