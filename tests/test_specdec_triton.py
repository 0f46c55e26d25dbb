"""Triton specdec kernels against the reference: token ids and counts bit for bit, every mode.

Without a GPU, conftest sets ``TRITON_INTERPRET=1`` and the kernels run on CPU tensors under the
interpreter (small shapes: the interpreter is slow); with one they run compiled on CUDA tensors.
``FORCE_CONFIG`` tiles even small vocabularies into several chunks (programs) of several sub-chunks
of several blocks, so the per-chunk max combine, the per-sub-chunk sums and the sampler's
sub-chunk search are all exercised.

The random modes replay exactly because the uniforms are inputs and the probabilities integer
weights (numerics.py). One known exception, not hit by these inputs: ``typical`` compares against
``exp(-H)`` with the entropy H summed in fp64, whose summation order (torch's vs. the kernel's)
can differ in the last bits; a draft whose probability lies within ~1e-16 of the threshold could
be decided differently.
"""
import pytest
import torch

pytest.importorskip("triton")

import leankern  # noqa: E402
from leankern.core import triton_interpreting  # noqa: E402
from leankern.specdec import numerics, verify, verify_tree  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow notes (interpreter)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SPLIT = {"block": 32, "sub_blocks": 2, "split": 3}  # V ~ 100: 2 chunks (programs) per row, sub-chunks of 2 blocks


@pytest.fixture
def dev(device):
    if device == "cpu" and not triton_interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (conftest sets it only without a GPU)")
    return device


@pytest.fixture
def force_config(monkeypatch):
    from leankern.triton_kernels import specdec as tsd

    def force(cfg):
        monkeypatch.setattr(tsd, "FORCE_CONFIG", cfg)

    return force


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _both(fn, *args, **kwargs):
    """(reference result, Triton result) of ``fn`` on the same inputs."""
    with leankern.use_backend("ref"):
        want = fn(*args, **kwargs)
    with leankern.use_backend("triton"):
        got = fn(*args, **kwargs)
    return want, got


def assert_same(want, got, what=""):
    for w, g in zip(want, got):
        assert g.dtype == w.dtype and g.shape == w.shape, (what, g.dtype, w.dtype, g.shape, w.shape)
        assert torch.equal(g.cpu(), w.cpu()), f"{what}\nref:\n{w}\ntriton:\n{g}"


def _softmax_draws(logits, n_per_row, gen):
    p = torch.softmax(logits.float().nan_to_num(0.0, 0.0, 0.0), -1)
    return torch.multinomial(p, n_per_row, replacement=True, generator=gen)[:, 0]


def chain_case(counts, V, dtype=torch.float32, seed=0, scale=3.0, p_argmax=0.6, ties=False, draft_probs=False,
               temperature=None, top_k=None, top_p=None, uniforms=True, device="cpu"):
    """Inputs of ``verify`` with drafts that are often accepted (argmax or sampled from the target)."""
    g = _gen(seed)
    B, T = len(counts), sum(counts)
    cu = torch.tensor(counts, dtype=torch.int64).cumsum(0).to(torch.int32)
    tgt = torch.randn(T, V, generator=g) * scale
    bonus = torch.randn(B, V, generator=g) * scale
    if ties:  # many equal logits: argmax tie-breaks, top-k ties, equal weights
        tgt, bonus = (tgt * 2).round() / 2, (bonus * 2).round() / 2
    tgt, bonus = tgt.to(dtype), bonus.to(dtype)
    drafts = torch.randint(0, V, (T,), generator=g, dtype=torch.int32)
    if T:
        pick = torch.rand(T, generator=g) < p_argmax
        sampled = _softmax_draws(tgt, 1, g).to(torch.int32)
        drafts = torch.where(pick, tgt.float().argmax(-1).to(torch.int32), torch.where(
            torch.rand(T, generator=g) < 0.5, sampled, drafts))
    kw = {}
    if draft_probs:
        q = torch.softmax(tgt.float() + torch.randn(T, V, generator=g), -1)
        kw["draft_probs"] = q.to(dtype).to(device)
    if uniforms:
        kw["uniforms"] = torch.rand(T + B, generator=g).to(device)
    if temperature is not None:
        kw["temperature"] = torch.tensor(temperature, dtype=torch.float32, device=device)
    if top_k is not None:
        kw["top_k"] = torch.tensor(top_k, dtype=torch.int32, device=device)
    if top_p is not None:
        kw["top_p"] = torch.tensor(top_p, dtype=torch.float32, device=device)
    return (drafts.to(device), cu.to(device), tgt.to(device), bonus.to(device)), kw


def check_chain(args, kw, mode, max_drafts=None, what="", **extra):
    want, got = _both(verify, *args, mode=mode, max_drafts=max_drafts, **kw, **extra)
    assert_same(want, got, f"{mode} {what}")
    V = args[2].shape[1]
    assert int(got[0].max()) < V
    return want


# ------------------------------------------------------------------------------------- chain modes
COUNTS = [3, 0, 1, 2]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["greedy", "relaxed", "rejection", "typical"])
def test_chain_modes_match_reference(dev, force_config, mode, dtype):
    if dtype == torch.float32:
        force_config(SPLIT)
    temperature = [1.0, 0.7, 0.0, 1.3] if mode in ("rejection", "typical") else None
    args, kw = chain_case(COUNTS, 103, dtype, seed=1, temperature=temperature, ties=dtype != torch.float32,
                          device=dev)
    extra = dict(relax_radius=9, action_range=(40, 90)) if mode == "relaxed" else {}
    check_chain(args, kw, mode, what=str(dtype), **extra)


REJECTION_CASES = [  # (filters, draft_probs, split rows into chunks)
    ("temp", False, False), ("temp", True, True), ("topk", False, True), ("topk", True, False),
    ("topp", False, False), ("topp", True, True), ("topk+topp", False, True), ("topk+topp", True, True),
]


@pytest.mark.parametrize("filters,q,split", REJECTION_CASES,
                         ids=[f"{f}-{'q' if q else 'q-none'}-{'split' if s else 'one-chunk'}" for f, q, s in
                              REJECTION_CASES])
def test_rejection_sampling_filters(dev, force_config, filters, q, split):
    """Temperature, top-k, top-p (fused thresholds), draft probabilities on/off, one or several chunks."""
    if split:
        force_config(SPLIT)
    kw_case = dict(temperature=[0.8, 1.0, 1.7, 0.5])
    if "topk" in filters:
        kw_case["top_k"] = [5, 0, 1, 200]
    if "topp" in filters:
        kw_case["top_p"] = [0.9, 0.5, 1.0, 0.05]
    args, kw = chain_case(COUNTS, 97, torch.bfloat16, seed=2 + q + 2 * split, ties=True, draft_probs=q, **kw_case,
                          device=dev)
    check_chain(args, kw, "rejection", what=filters)


@pytest.mark.parametrize("filters", ["topk", "topp"])
def test_typical_with_filters(dev, force_config, filters):
    force_config(SPLIT)
    kw_case = dict(temperature=[0.9, 1.0, 0.0, 1.2])
    kw_case["top_k" if filters == "topk" else "top_p"] = [3, 50, 0, 1] if filters == "topk" else [0.6, 1.0, 0.3, 0.95]
    args, kw = chain_case(COUNTS, 90, torch.float16, seed=5, **kw_case, device=dev)
    check_chain(args, kw, "typical", what=filters)


@pytest.mark.parametrize("V", [1, 7, 1003])
@pytest.mark.parametrize("mode", ["greedy", "rejection", "typical"])
def test_vocab_not_a_multiple_of_the_block(dev, force_config, mode, V):
    """V = 1, 7, 1000 + 3 (three chunks of three 128-id sub-chunks): masked tails, never an id >= V."""
    if V == 1003:
        force_config({"block": 128, "split": 3})
    args, kw = chain_case([2, 3, 1], V, torch.float32, seed=V, draft_probs=mode == "rejection", device=dev)
    check_chain(args, kw, mode, what=f"V={V}")


def test_tail_with_zero_mass_never_emits_out_of_range(dev, force_config):
    """Mass only in the last ids before a ragged tail; u close to 1 samples the last positive id."""
    force_config({"block": 16, "split": 2})
    V = 37
    g = _gen(3)
    tgt = torch.full((2, V), -float("inf"))
    tgt[:, V - 3:] = torch.randn(2, 3, generator=g)
    bonus = torch.full((2, V), -1e4)
    bonus[:, V - 1] = 0.0
    args = (torch.tensor([0, V - 1], dtype=torch.int32), torch.tensor([1, 2], dtype=torch.int32), tgt, bonus)
    u = torch.tensor([0.9999999, 0.9999999, 0.9999999, 0.9999999])
    for q in (None, torch.softmax(torch.randn(2, V, generator=g), -1)):
        kw = dict(uniforms=u.to(dev), draft_probs=None if q is None else q.to(dev))
        check_chain(tuple(a.to(dev) for a in args), kw, "rejection")


# ------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("mode", ["greedy", "relaxed", "rejection", "typical"])
def test_invalid_rows_emit_minus_one(dev, mode):
    """NaN, +inf and all -inf rows (target and bonus): accept nothing there, emit -1."""
    args, kw = chain_case([2, 1, 0, 3], 50, torch.float32, seed=7, p_argmax=1.0, device=dev)
    drafts, cu, tgt, bonus = (a.clone() for a in args)
    tgt[1, 7] = float("nan")  # request 0, position 1
    tgt[2, 3] = float("inf")  # request 1, position 0
    tgt[5, :] = -float("inf")  # request 3, position 2
    bonus[2, 11] = float("nan")  # request 2: zero drafts, invalid bonus
    tgt[3, 0] = -float("inf")  # a -inf entry in a valid row changes nothing
    want = check_chain((drafts, cu, tgt, bonus), kw, mode)
    assert want[0][2, 0] == -1 and want[0][1, 0] == -1


@pytest.mark.parametrize("mode", ["greedy", "rejection", "typical"])
def test_zero_drafts(dev, mode):
    """T = 0 (no request has drafts): only the bonus rows."""
    args, kw = chain_case([0, 0, 0], 40, torch.bfloat16, seed=8, device=dev)
    check_chain(args, kw, mode, max_drafts=0)
    check_chain(args, kw, mode, max_drafts=3)  # a wider output than needed: -1 padded


def test_perfect_match_and_mismatch_at_zero(dev):
    g = _gen(9)
    tgt, bonus = torch.randn(6, 64, generator=g), torch.randn(2, 64, generator=g)
    am = tgt.argmax(-1).to(torch.int32)
    cu = torch.tensor([3, 6], dtype=torch.int32)
    drafts = am.clone()
    drafts[3] = (am[3] + 1) % 64  # request 1 mismatches at position 0
    for mode in ("greedy", "relaxed", "typical"):
        want = check_chain(tuple(a.to(dev) for a in (drafts, cu, tgt, bonus)), {}, mode)
        assert want[1].tolist() == [3, 0]


def test_relaxed_radius_and_action_range(dev):
    """Spec-VLA bins: relaxation only inside the action range; r = 0 is greedy."""
    V = 120
    g = _gen(10)
    tgt = torch.randn(8, V, generator=g) * 4
    bonus = torch.randn(2, V, generator=g)
    am = tgt.argmax(-1).to(torch.int32)
    drafts = (am + torch.tensor([2, -3, 1, 5, 0, -1, 4, 2], dtype=torch.int32)).clamp(0, V - 1)
    args = tuple(a.to(dev) for a in (drafts, torch.tensor([5, 8], dtype=torch.int32), tgt, bonus))
    for radius, rng in ((0, None), (3, (0, V - 1)), (9, (30, 100)), (9, (0, 20)), (0, (0, V - 1))):
        check_chain(args, {}, "relaxed", relax_radius=radius, action_range=rng, what=f"r={radius} {rng}")
    want_g = check_chain(args, {}, "greedy")
    want_r0 = check_chain(args, {}, "relaxed", relax_radius=0)
    assert_same(want_g, want_r0)


def test_rejection_special_values(dev, force_config):
    """u exactly 0, a draft with zero target probability, a one-entry residual, q = p, disjoint supports."""
    force_config({"block": 16, "split": 2})
    V = 40
    g = _gen(11)
    tgt = torch.randn(5, V, generator=g) * 2
    tgt[1, :] = -float("inf")
    tgt[1, [4, 9]] = torch.tensor([0.0, 0.5])  # two ids: the residual after removing one has one entry
    tgt[2, 17] = -1e4  # draft id 17 has zero target probability
    tgt[3, 20:] = -float("inf")  # support of p: ids < 20 ...
    bonus = torch.randn(2, V, generator=g)
    drafts = torch.tensor([int(tgt[0].argmax()), 9, 17, 30, 3], dtype=torch.int32)
    cu = torch.tensor([3, 5], dtype=torch.int32)
    u = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.3, 0.0, 0.999])
    w = numerics.exp_weights(tgt - tgt.max(-1, keepdim=True).values)
    p = w.double() / w.sum(-1, keepdim=True).double()
    for q_kind in ("none", "equal", "disjoint", "above"):
        u_all = u
        if q_kind == "none":
            q = None
        elif q_kind == "equal":
            q = p.float()  # q = p (no NaN, accept all)
        elif q_kind == "disjoint":
            q = torch.zeros(5, V)
            q[:, 25:] = 1.0 / 15  # ... q lives on ids >= 25 (the draft at row 3: p = 0, reject)
        else:  # q >= p everywhere, twice p at the drafts: rejected, all-zero residual -> resample from p
            q = (p * (1 + 1e-6)).float()
            q[torch.arange(5), drafts.long()] *= 2
            u_all = torch.full((7,), 0.9)
        kw = dict(uniforms=u_all.to(dev), draft_probs=None if q is None else q.to(dev))
        args = tuple(a.to(dev) for a in (drafts, cu, tgt, bonus))
        check_chain(args, kw, "rejection", what=q_kind)
        if q_kind != "above":
            check_chain(args, dict(kw, uniforms=torch.zeros(7).to(dev)), "rejection", what=q_kind + " u=0")


def test_argmax_ties_resolve_to_the_lowest_id(dev, force_config):
    """Equal maxima in one lane (ids a block apart), in different chunks, and at the row's ends."""
    force_config({"block": 16, "sub_blocks": 1, "split": 2})
    V = 64
    tgt = torch.randn(4, V, generator=_gen(16))
    for r, ids in enumerate(([37, 5, 21], [40, 9], [63, 0], [47, 31, 15])):
        tgt[r, ids] = 9.0
    bonus = tgt[:1].clone()
    drafts = torch.full((4,), 62, dtype=torch.int32)
    cu = torch.tensor([1, 2, 3, 4], dtype=torch.int32)
    args = tuple(a.to(dev) for a in (drafts, cu, tgt, bonus.expand(4, V).contiguous()))
    want = check_chain(args, {}, "greedy")
    assert want[0][:, 0].tolist() == [5, 9, 0, 15]


def test_mixed_dtypes_and_strided_rows(dev):
    """fp32 target rows with bf16 bonus rows; target rows with a row stride > V."""
    args, kw = chain_case([2, 3], 60, torch.float32, seed=12, draft_probs=True, device=dev)
    drafts, cu, tgt, bonus = args
    wide = torch.zeros(tgt.shape[0], 80, device=dev)
    wide[:, :60] = tgt
    strided = (drafts, cu, wide[:, :60], bonus.to(torch.bfloat16))
    check_chain(strided, kw, "rejection", what="mixed")
    check_chain(strided, kw, "greedy", what="mixed")


def test_overflowing_temperature_is_greedy(dev):
    """x / t overflows fp32 for a tiny t: no weights (S = 0). The kernel verifies such rows as at t = 0
    and never emits an id >= V (the reference emits V for rejection and raises for typical there)."""
    args, kw = chain_case([2, 2], 30, torch.float32, seed=13, scale=30.0, p_argmax=1.0, device=dev)
    kw["temperature"] = torch.tensor([1e-38, 0.0], device=dev)
    with leankern.use_backend("triton"):
        got = verify(*args, mode="rejection", **kw)
        got_typ = verify(*args, mode="typical", **kw)
    with leankern.use_backend("ref"):
        greedy = verify(*args, mode="greedy")
    assert_same(greedy, got)
    assert_same(greedy, got_typ)


def test_many_uniforms_sample_like_the_reference(dev, force_config):
    """One request, 8 uniforms over [0, 1): every sampled correction / bonus token agrees."""
    force_config({"block": 8, "sub_blocks": 2, "split": 2})
    args, kw = chain_case([1], 50, torch.float32, seed=14, scale=1.0, p_argmax=0.0, device=dev)
    for u0 in torch.linspace(0, 0.999, 8).tolist():
        u = torch.tensor([u0, (u0 * 7.3) % 1.0], device=dev)
        check_chain(args, dict(kw, uniforms=u), "rejection", what=f"u={u0}")


def test_seeded_uniforms(dev):
    args, kw = chain_case([3, 1], 64, torch.bfloat16, seed=15, draft_probs=True, uniforms=False, device=dev)
    for seed in (0, 123):
        check_chain(args, kw, "rejection", seed=seed, offset=17)


# ------------------------------------------------------------------------------------- tree
def tree_case(node_counts, V, dtype=torch.float32, seed=0, p_match=0.7, extra_paths=1, device="cpu"):
    """Random trees per request: node 0 is the root, each other node hangs below an earlier one."""
    g = _gen(seed)
    N = sum(node_counts)
    logits = (torch.randn(N, V, generator=g) * 3).to(dtype)
    tokens = torch.randint(0, V, (N,), generator=g, dtype=torch.int32)
    paths_all, base = [], 0
    for n in node_counts:
        parent = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
        for i in range(1, n):
            if float(torch.rand(1, generator=g)) < p_match:
                tokens[base + i] = int(logits[base + parent[i]].float().argmax())
        leaves = [i for i in range(n) if i not in parent]
        paths = []
        for leaf in leaves:
            path, i = [], leaf
            while i >= 0:
                path.append(i)
                i = parent[i]
            paths.append(path[::-1])
        paths_all.append(paths)
        base += n
    P = max(len(p) for p in paths_all) + extra_paths
    D1 = max(len(p) for ps in paths_all for p in ps)
    ri = torch.full((len(node_counts), P, D1), -1, dtype=torch.int32)
    for b, paths in enumerate(paths_all):
        for p, path in enumerate(paths):
            slot = p + 1 if p >= 1 and extra_paths else p  # an unused slot (-1 row) between used paths
            if slot < P:
                ri[b, slot, :len(path)] = torch.tensor(path, dtype=torch.int32)
    cu = torch.tensor(node_counts, dtype=torch.int64).cumsum(0).to(torch.int32)
    return tuple(a.to(device) for a in (tokens, cu, logits, ri))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["greedy", "relaxed", "typical"])
def test_tree_matches_reference(dev, force_config, mode, dtype):
    if dtype == torch.bfloat16:
        force_config(SPLIT)
    args = tree_case([7, 1, 5, 9], 70, dtype, seed=20, device=dev)
    kw = dict(relax_radius=4, action_range=(10, 60)) if mode == "relaxed" else {}
    if mode == "typical":
        kw["temperature"] = torch.tensor([1.0, 0.8, 0.0, 1.5], device=dev)
    want, got = _both(verify_tree, *args, mode=mode, **kw)
    assert_same(want, got, f"tree {mode} {dtype}")


def test_tree_invalid_rows_and_no_paths(dev):
    tokens, cu, logits, ri = tree_case([6, 4, 3], 33, torch.float32, seed=21, p_match=1.0, device=dev)
    logits = logits.clone()
    logits[1, 3] = float("nan")
    logits[6, :] = -float("inf")  # the root of request 1
    ri = ri.clone()
    ri[2] = -1  # request 2: no path at all
    for mode in ("greedy", "typical"):
        want, got = _both(verify_tree, tokens, cu, logits, ri, mode=mode)
        assert_same(want, got, mode)
    empty = ri[:, :0]  # P = 0
    want, got = _both(verify_tree, tokens, cu, logits, empty, mode="greedy")
    assert_same(want, got, "P = 0")


# ------------------------------------------------------------------------------------- hypothesis
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=6)
@hypothesis.given(counts=st.lists(st.integers(0, 3), min_size=1, max_size=3), V=st.integers(1, 150),
                  mode=st.sampled_from(["greedy", "relaxed", "rejection", "typical"]),
                  dtype=st.sampled_from(DTYPES), q=st.booleans(), seed=st.integers(0, 2**16))
def test_random_shapes(counts, V, mode, dtype, q, seed):
    if not triton_interpreting() and not torch.cuda.is_available():
        pytest.skip("no Triton device")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    args, kw = chain_case(counts, V, dtype, seed=seed, draft_probs=q and mode == "rejection",
                          temperature=[0.9] * len(counts) if mode in ("rejection", "typical") else None, device=dev)
    relax = dict(relax_radius=2, action_range=(0, V - 1)) if mode == "relaxed" else {}
    check_chain(args, kw, mode, **relax)


# ------------------------------------------------------------------------------------- graph safety
class _RecordingKernel:
    def __init__(self, name, launches):
        self.name, self.launches = name, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((self.name, grid, args))

        return launch


@pytest.mark.parametrize("op", ["chain", "tree"])
def test_launchers_are_graph_safe(dev, monkeypatch, op):
    """No tensor from host data, no host read, no cross-device copy: CUDA-graph capturable."""
    from test_launchers_graph_safe import GraphSafetyChecker

    from leankern.triton_kernels import specdec as tsd

    launches = []
    if triton_interpreting():  # the interpreter copies tensors to host and back: record the launches instead
        for name in ("_row_max_kernel", "_row_sums_kernel", "_verify_scan_kernel", "_residual_sums_kernel",
                     "_residual_sample_kernel", "_tree_scan_kernel"):
            monkeypatch.setattr(tsd, name, _RecordingKernel(name, launches))
    if op == "chain":
        args, kw = chain_case([2, 0, 3], 50, torch.bfloat16, seed=30, draft_probs=True, temperature=[0.7, 1.0, 0.0],
                              top_k=[3, 0, 5], top_p=[0.9, 0.5, 1.0], device=dev)
        call_args = (*args, kw["draft_probs"], kw["uniforms"], kw["temperature"], kw["top_k"], kw["top_p"],
                     "rejection", 3, 0, 0, -1, 0.09, 0.3)
        call = tsd.verify_triton
    else:
        tokens, cu, logits, ri = tree_case([5, 3], 40, seed=31, device=dev)
        call_args = (tokens, cu, logits, ri, torch.tensor([1.0, 0.5], device=dev), "typical", 0, 0, -1, 0.09, 0.3)
        call = tsd.verify_tree_triton
    checker = GraphSafetyChecker()
    with checker:
        call(*call_args)
    assert checker.violations == []
    if triton_interpreting():
        assert launches and all(a.device == torch.device(dev) for _, _, args in launches for a in args
                                if isinstance(a, torch.Tensor))


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs the whole benchmark")
def test_gpu_bench_script_without_a_gpu():
    """bench/gpu_specdec.py (the GPU timing script) says there is no GPU and exits 0."""
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "gpu_specdec.py")
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "no CUDA GPU" in proc.stdout, proc.stderr[-2000:]
