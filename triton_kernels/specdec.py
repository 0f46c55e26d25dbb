"""Triton kernels of batched speculative verification, bit-identical with :mod:`leankern.specdec.ref`.

The numerics are those of :mod:`leankern.specdec.numerics` (integer softmax weights
``W = trunc(exp_poly(x / t - max) * 2**40)``, fp64 decisions, integer prefix sums); the kernels
replay them op for op: every fp32 product and sum of the exp polynomial is rounded on its own
(compiled with ``enable_fp_fusion=False``: no FMA contraction), the temperature division is
``div.rn``; logits are read in their dtype and widened to fp32 exactly.

Passes over ``R = T + B`` rows (the T target rows, then the B bonus rows), each row tiled in
blocks of ``BLOCK`` ids, sub-chunks of ``SUB = BLOCK * SUB_BLOCKS`` ids and chunks of whole
sub-chunks (one program per row and chunk: ``SPLIT`` chunks per row when there are too few rows
to fill the GPU, see :func:`launch_config`):

1. ``_row_max_kernel``, grid ``(R, SPLIT)``: max and lowest argmax per chunk; a chunk holding a
   NaN or +inf reports +inf, so a row is valid iff its combined max is finite. Greedy and
   relaxed read each row exactly once, in this pass only.
2. ``_row_sums_kernel``, same grid, rejection / typical only: per sub-chunk, the sum of the kept
   weights (int64: exact in any order) and, for typical, of ``W ln W`` (fp64). Temperature and
   top-k / top-p are fused (``z = x / t``; weights below the row's threshold ``W_min`` count 0).
3. ``_verify_scan_kernel``, grid ``(B,)``: one program per request scans its drafts in order with
   the accept rules of ref.py, reading the row statistics (the draft's weight is recomputed from
   its one logit: the same op sequence, the same bits), and emits the tokens. A rejection sample
   (the first rejected position without draft_probs, or the bonus row) finds its sub-chunk from
   the prefix sums of the per-sub-chunk sums, then scans at most SUB ids: blocked inclusive int64
   prefix sums with a running carry give the first id whose prefix exceeds
   ``floor(double(u) * double(sum))``.
4. With ``draft_probs`` (rejection) the residual ``max(0, W' - floor(q * S))`` of the first rejected
   row needs its own sums: ``_residual_sums_kernel`` (grid ``(B, SPLIT)``, one pass over that one
   row per request), then ``_residual_sample_kernel`` (grid ``(B,)``, at most SUB ids).

top-k / top-p (rejection / typical): the per-row integer threshold ``W_min`` of
:func:`leankern.specdec.numerics.keep_threshold` needs the sorted weights. The launcher writes the
raw weights ``[R, V]`` int64 with ``_row_sums_kernel`` (``STORE_W``) and computes ``W_min`` with
torch ops on the device (``sort``, ``cumsum``, ``gather``: no host sync), then runs pass 2 with it.
That costs a sort of ``R x V`` int64 and about five temporaries of that size: pass ``top_k`` /
``top_p`` as None when no request uses them.

Deviations from the reference, both where the reference has no sane answer:

* a row whose scaled maximum overflows fp32 (``x / t = inf`` for a tiny temperature) has no
  weights (``S = 0``); it is verified as at temperature 0 (argmax rules). The reference emits the
  id ``V`` there (rejection) or raises (typical: ``log(0)``; top-p: an empty selection).
* typical: the entropy ``H`` is an fp64 sum whose order differs from torch's, and ``exp`` / ``log``
  are libdevice's; a draft whose probability lies within ~1e-16 (relative) of
  ``min(eps, delta * exp(-H))`` may be decided differently. All other decisions are exact.

Launchers create no tensor from host values and never synchronise (CUDA-graph capturable); the
op boundary (``leankern.specdec.ops``) has already checked ids, counts and sampling parameters.
"""
from __future__ import annotations

import functools
import struct

import torch
import triton
import triton.language as tl

from ..specdec import numerics

__all__ = ["verify_triton", "verify_tree_triton", "launch_config", "LaunchConfig", "BLOCK", "SUB_BLOCKS", "NUM_WARPS",
           "PROGRAMS_PER_SM", "MODES", "FORCE_CONFIG"]

BLOCK = 1024  # ids per loop step: 8 per thread at 4 warps (fp32: two 128-bit loads, bf16/fp16: one)
NUM_WARPS = 4
MODES = {"greedy": 0, "relaxed": 1, "rejection": 2, "typical": 3}
# Tests force a small block and several chunks per row on small vocabularies: {"block": .., "split": ..}
FORCE_CONFIG: dict | None = None

_INT32_MAX = 2**31 - 1


def _f32(v: float) -> float:
    """``v`` rounded to fp32 (RNE), as a Python float: the kernels' constants are exact fp32 values."""
    return struct.unpack("<f", struct.pack("<f", v))[0]


_LOG2E = tl.constexpr(_f32(numerics.LOG2E))
_LN2_HI = tl.constexpr(_f32(numerics.LN2_HI))
_LN2_LO = tl.constexpr(_f32(numerics.LN2_LO))
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7 = (tl.constexpr(_f32(c)) for c in numerics.EXP_COEFFS)
_CUTOFF = tl.constexpr(_f32(numerics.EXP_CUTOFF))
_W_SCALE = tl.constexpr(float(2.0**numerics.W_FRAC_BITS))
_IDX_NONE = tl.constexpr(_INT32_MAX)  # "no id" in argmax reductions


# ------------------------------------------------------------------------------------ jit helpers
@triton.jit
def _kept_weights(x, t, mz, w_min, SCALE: tl.constexpr):
    """Kept weights ``W'`` (int64) of logits ``x`` (fp32) of a row with temperature ``t``, scaled max ``mz``.

    ``numerics.exp_weights(x / t - mz)`` op for op: trunc(exp_poly(d) * 2**40), 0 below the
    cutoff; then 0 below the row's threshold ``w_min`` (top-k / top-p; 1 when off).
    ``SCALE=False`` skips the division (t = 1: x / 1 == x, the same bits).
    """
    if SCALE:
        d = tl.math.div_rn(x, t) - mz
    else:
        d = x - mz
    live = d >= _CUTOFF
    d = tl.where(live, d, 0.0)
    n = tl.floor(d * _LOG2E + 0.5)
    r = (d - n * _LN2_HI) - n * _LN2_LO
    p = r * _C0 + _C1  # Horner, multiply then add: two roundings per step (no FMA)
    p = p * r + _C2
    p = p * r + _C3
    p = p * r + _C4
    p = p * r + _C5
    p = p * r + _C6
    p = p * r + _C7
    two_n = ((n.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)
    w = (p * two_n * _W_SCALE).to(tl.int64)
    return tl.where(live & (w >= w_min), w, 0)


@triton.jit
def _row_ptr(tgt_ptr, bonus_ptr, row, T, stride_t, stride_b):
    """Start of row ``row``: target rows ``[0, T)``, then the bonus rows."""
    r = row.to(tl.int64)
    return tl.where(r < T, tgt_ptr + r * stride_t, bonus_ptr + (r - T) * stride_b)


@triton.jit
def _request_of(cu_ptr, B, row):
    """The request owning row ``row`` of the ragged layout: the number of ``cu`` entries <= row."""
    lo = row * 0
    hi = lo + B
    while lo < hi:
        mid = (lo + hi) // 2
        below = tl.load(cu_ptr + mid) <= row
        lo = tl.where(below, mid + 1, lo)
        hi = tl.where(below, hi, mid)
    return lo


@triton.jit
def _combine_max(pmax_ptr, pidx_ptr, row, SPLIT, SPLIT_P2: tl.constexpr):
    """(max, lowest argmax, valid) of a row from its per-chunk partials.

    A chunk with a NaN or +inf stored +inf as its max, so valid <=> -inf < max < +inf.
    """
    i = tl.arange(0, SPLIT_P2)
    base = row.to(tl.int64) * SPLIT
    pm = tl.load(pmax_ptr + base + i, mask=i < SPLIT, other=float("-inf"))
    pi = tl.load(pidx_ptr + base + i, mask=i < SPLIT, other=_IDX_NONE)
    m = tl.max(pm, axis=0)
    idx = tl.min(tl.where(pm == m, pi, _IDX_NONE), axis=0)
    return m, idx, (m > float("-inf")) & (m < float("inf"))


@triton.jit
def _combine_sum(p_ptr, row, NSUB, NSUB_P2: tl.constexpr):
    """A row's total from its per-sub-chunk partial sums."""
    i = tl.arange(0, NSUB_P2)
    return tl.sum(tl.load(p_ptr + row.to(tl.int64) * NSUB + i, mask=i < NSUB, other=0), axis=0)


@triton.jit
def _typical_accepts(w_x, S, ent_sum, eps_bits, delta_bits):
    """Medusa: ``W_x / S > min(eps, delta * exp(-H))``, ``H = ln S - sum W ln W / S`` (fp64).

    eps / delta arrive as their int64 bit patterns (a Python float kernel argument is fp32).
    """
    eps = eps_bits.to(tl.int64).to(tl.float64, bitcast=True)
    delta = delta_bits.to(tl.int64).to(tl.float64, bitcast=True)
    s64 = S.to(tl.float64)
    h = tl.log(s64) - ent_sum / s64
    x = delta * tl.exp(-h)
    tau = tl.where(x < eps, x, eps)  # Python's min(eps, x)
    return w_x.to(tl.float64) / s64 > tau


@triton.jit
def _relaxed_match(x, a, relax_radius, action_lo, action_hi, RELAXED: tl.constexpr):
    """Spec-VLA: x == a, or (RELAXED) both in [lo, hi] and |x - a| <= radius."""
    ok = x == a
    if RELAXED:
        in_range = (x >= action_lo) & (x <= action_hi) & (a >= action_lo) & (a <= action_hi)
        ok = ok | (in_range & (tl.abs(x - a) <= relax_radius))
    return ok


# ------------------------------------------------------------------------------------ row passes
@triton.jit
def _row_max_kernel(tgt_ptr, bonus_ptr, stride_t, stride_b, T, V, CH, pmax_ptr, pidx_ptr, SPLIT, BLOCK: tl.constexpr):
    """Per (row, chunk): max and lowest argmax; the max is +inf when a NaN or +inf was seen (invalid row)."""
    row = tl.program_id(0)
    sp = tl.program_id(1)
    r = row.to(tl.int64)
    base = tl.where(r < T, tgt_ptr + r * stride_t, bonus_ptr + (r - T) * stride_b)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_idx = tl.full([BLOCK], _IDX_NONE, tl.int32)
    for k in range(sp * CH, sp * CH + CH, BLOCK):
        offs = k + tl.arange(0, BLOCK)
        x = tl.load(base + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        x = tl.where(x != x, float("inf"), x)  # NaN counts as +inf: either makes the row invalid
        upd = x > best  # strict: an equal value later in the lane keeps the lower id
        best = tl.where(upd, x, best)
        best_idx = tl.where(upd, offs, best_idx)
    m = tl.max(best, axis=0)
    out = r * SPLIT + sp
    tl.store(pmax_ptr + out, m)
    tl.store(pidx_ptr + out, tl.min(tl.where(best == m, best_idx, _IDX_NONE), axis=0))


@triton.jit
def _sums_loop(base, w_row_ptr, psum_row, pent_row, start, CH, V, t, mz, w_min, BLOCK: tl.constexpr,
               SUB: tl.constexpr, SCALE: tl.constexpr, ENTROPY: tl.constexpr, STORE_W: tl.constexpr):
    """The chunk ``[start, start + CH)`` sub-chunk by sub-chunk: each sub-chunk's sums are stored."""
    for k0 in range(start, start + CH, SUB):
        s_acc = tl.full([BLOCK], 0, tl.int64)
        h_acc = tl.full([BLOCK], 0.0, tl.float64)
        for k in range(k0, k0 + SUB, BLOCK):
            offs = k + tl.arange(0, BLOCK)
            mask = offs < V
            x = tl.load(base + offs, mask=mask, other=float("-inf")).to(tl.float32)
            w = _kept_weights(x, t, mz, w_min, SCALE)
            if STORE_W:
                tl.store(w_row_ptr + offs, w, mask=mask)
            s_acc += w
            if ENTROPY:
                wf = w.to(tl.float64)
                h_acc += wf * tl.log(tl.maximum(wf, 1.0))  # W = 0 adds 0 * ln 1 = 0 (no log(0))
        tl.store(psum_row + k0 // SUB, tl.sum(s_acc, axis=0), mask=k0 < V)
        if ENTROPY:
            tl.store(pent_row + k0 // SUB, tl.sum(h_acc, axis=0), mask=k0 < V)


@triton.jit
def _row_sums_kernel(tgt_ptr, bonus_ptr, stride_t, stride_b, T, V, CH, NSUB, cu_ptr, B, temp_ptr, wmin_ptr, w_ptr,
                     pmax_ptr, pidx_ptr, psum_ptr, pent_ptr, SPLIT, BLOCK: tl.constexpr, SUB: tl.constexpr,
                     SPLIT_P2: tl.constexpr, HAS_TEMP: tl.constexpr, HAS_WMIN: tl.constexpr, ENTROPY: tl.constexpr,
                     STORE_W: tl.constexpr):
    """Per (row, chunk): per sub-chunk of SUB ids, the sum of the kept weights and (ENTROPY) of ``W ln W``.

    STORE_W: also the raw weights [R, V] (for the top-k / top-p thresholds). Rows that need no weights
    (invalid, or temperature 0) store nothing: no reader uses their sums.
    """
    row = tl.program_id(0)
    sp = tl.program_id(1)
    t = 1.0
    if HAS_TEMP:
        t = tl.load(temp_ptr + tl.where(row >= T, row - T, _request_of(cu_ptr, B, row)))
    w_min = 1
    if HAS_WMIN:
        w_min = tl.load(wmin_ptr + row)
    m, _, valid = _combine_max(pmax_ptr, pidx_ptr, row, SPLIT, SPLIT_P2)
    if valid & (t != 0.0):  # temperature-0 requests are verified greedily: no weights needed
        r = row.to(tl.int64)
        base = tl.where(r < T, tgt_ptr + r * stride_t, bonus_ptr + (r - T) * stride_b)
        w_row, psum_row, pent_row = w_ptr + r * V, psum_ptr + r * NSUB, pent_ptr + r * NSUB
        if t == 1.0:  # x / 1 == x: skip the divisions
            _sums_loop(base, w_row, psum_row, pent_row, sp * CH, CH, V, t, m, w_min, BLOCK, SUB, False, ENTROPY,
                       STORE_W)
        else:  # fl(x / t) is monotone, so fl(max x / t) = max fl(x / t)
            _sums_loop(base, w_row, psum_row, pent_row, sp * CH, CH, V, t, tl.math.div_rn(m, t), w_min, BLOCK, SUB,
                       True, ENTROPY, STORE_W)


# ------------------------------------------------------------------------------------ sampling
@triton.jit
def _clamp_q(q):
    """ref.clamp_q: q in [0, 1] as is, > 1 -> 1, negative or NaN -> 0."""
    return tl.where(q >= 0, tl.where(q <= 1, q, 1.0), 0.0)


@triton.jit
def _sample_search(base, q_row_ptr, csum, total, u, t, mz, w_min, S, x, kind, V, NSUB_P2: tl.constexpr,
                   SUB: tl.constexpr, BLOCK: tl.constexpr, IS_Q: tl.constexpr):
    """Inverse CDF: the first id whose inclusive prefix sum exceeds ``floor(double(u) * double(total))``.

    Sampled weights: W' (kind 0), W' without the draft x (kind 1), ``max(0, W' - floor(q S))``
    (kind 2, IS_Q). ``csum`` [NSUB_P2] int64 holds their per-sub-chunk sums (``total`` = their sum):
    the sub-chunk holding the target is found from their prefix sums, then scanned block by block
    with a running carry (early exit): at most SUB ids are read. -1 only if nothing is found
    (impossible for consistent sums): never an id >= V.
    """
    target = tl.floor(u.to(tl.float64) * total.to(tl.float64)).to(tl.int64)
    i = tl.arange(0, NSUB_P2)
    c = tl.min(tl.where(tl.cumsum(csum, axis=0) > target, i, NSUB_P2), axis=0)
    local = target - tl.sum(tl.where(i < c, csum, 0), axis=0)
    k = c * SUB
    k_end = k + SUB
    carry = tl.full([], 0, tl.int64)
    found = tl.full([], -1, tl.int32)
    while (k < k_end) & (found < 0):
        offs = k + tl.arange(0, BLOCK)
        mask = offs < V
        w = _kept_weights(tl.load(base + offs, mask=mask, other=float("-inf")).to(tl.float32), t, mz, w_min, True)
        kind_v = offs * 0 + kind  # a vector: the interpreter's (vector & scalar) is not boolean
        r = tl.where((kind_v == 1) & (offs == x), 0, w)
        if IS_Q:
            q = _clamp_q(tl.load(q_row_ptr + offs, mask=mask & (kind_v == 2), other=0.0).to(tl.float32))
            q_w = tl.floor(q.to(tl.float64) * S.to(tl.float64)).to(tl.int64)
            r = tl.where(kind_v == 2, tl.maximum(w - q_w, 0), r)
        r = tl.where(mask, r, 0)
        hit = ((tl.cumsum(r, axis=0) + carry) > local) & mask
        first = tl.min(tl.where(hit, offs, _IDX_NONE), axis=0)
        found = tl.where(first < _IDX_NONE, first, -1)
        carry += tl.sum(r, axis=0)
        k += BLOCK
    return found


@triton.jit(do_not_specialize=["eps_bits", "delta_bits"])  # bit patterns: never a constexpr 1
def _verify_scan_kernel(draft_ptr, cu_ptr, tgt_ptr, bonus_ptr, stride_t, stride_b, q_ptr, stride_q, u_ptr, temp_ptr,
                        wmin_ptr, pmax_ptr, pidx_ptr, psum_ptr, pent_ptr, out_ptr, nacc_ptr, plan_ptr, T, V, SPLIT,
                        NSUB, out_stride, relax_radius, action_lo, action_hi, eps_bits, delta_bits,
                        MODE: tl.constexpr, HAS_Q: tl.constexpr, HAS_TEMP: tl.constexpr, HAS_WMIN: tl.constexpr,
                        SPLIT_P2: tl.constexpr, NSUB_P2: tl.constexpr, SUB: tl.constexpr, BLOCK: tl.constexpr):
    """One request: accept a prefix of its drafts, then emit the correction / bonus token (ref.py's rules).

    Rejection samples of kind 0 / 1 (W' of the bonus row, W' without the draft) happen here; kind 2
    (a residual of draft_probs) is left to the residual kernels through ``plan`` (the row, or -1).
    """
    b = tl.program_id(0)
    start = tl.load(cu_ptr + b - 1, mask=b > 0, other=0)
    n = tl.load(cu_ptr + b) - start
    t = 1.0
    if HAS_TEMP:
        t = tl.load(temp_ptr + b)
    sampled = (MODE >= 2) & (t != 0.0)
    out_row = out_ptr + b.to(tl.int64) * out_stride
    j = n * 0
    stop = n * 0
    extra = n * 0 - 1  # the token after the accepted prefix
    kind = n * 0 - 1  # rejection sample: -1 none, 0 W', 1 W' without the draft, 2 residual of q
    s_row = n * 0 - 1  # the row it samples
    while (j < n) & (stop == 0):
        row = start + j
        x = tl.load(draft_ptr + row)
        m, a, valid = _combine_max(pmax_ptr, pidx_ptr, row, SPLIT, SPLIT_P2)
        ok = _relaxed_match(x, a, relax_radius, action_lo, action_hi, MODE == 1)
        k_rej = n * 0 - 1
        if MODE >= 2:
            S = _combine_sum(psum_ptr, row, NSUB, NSUB_P2)
            use = sampled & (S > 0)  # S == 0: x / t overflowed fp32; verified as at temperature 0
            w_min = 1
            if HAS_WMIN:
                w_min = tl.load(wmin_ptr + row)
            x_logit = tl.load(_row_ptr(tgt_ptr, bonus_ptr, row, T, stride_t, stride_b) + x).to(tl.float32)
            w_x = _kept_weights(x_logit, t, tl.math.div_rn(m, t), w_min, True)  # the row passes' bits
            if MODE == 2:
                q = tl.full([], 1.0, tl.float32)
                if HAS_Q:
                    q = _clamp_q(tl.load(q_ptr + row.to(tl.int64) * stride_q + x).to(tl.float32))
                u = tl.load(u_ptr + row).to(tl.float64)
                acc = u * q.to(tl.float64) * S.to(tl.float64) < w_x.to(tl.float64)
                k_rej = tl.where(use & ~acc, 2 if HAS_Q else 1, -1)
            else:
                acc = _typical_accepts(w_x, S, _combine_sum(pent_ptr, row, NSUB, NSUB_P2), eps_bits, delta_bits)
            ok = tl.where(use, acc, ok)
        ok = ok & valid
        tl.store(out_row + j, x, mask=ok)
        j += ok.to(tl.int32)
        stop = (~ok).to(tl.int32)
        extra = tl.where(ok, extra, tl.where(valid, a, -1))
        kind = tl.where(ok | ~valid, kind, k_rej)
        s_row = tl.where(ok, s_row, row)
    bonus = T + b  # every draft accepted: the bonus row
    _, a_b, valid_b = _combine_max(pmax_ptr, pidx_ptr, bonus, SPLIT, SPLIT_P2)
    extra = tl.where(stop == 0, tl.where(valid_b, a_b, -1), extra)
    if MODE == 2:
        S_b = _combine_sum(psum_ptr, bonus, NSUB, NSUB_P2)
        kind = tl.where((stop == 0) & valid_b & sampled & (S_b > 0), 0, kind)
        s_row = tl.where(stop == 0, bonus, s_row)
        if (kind == 0) | (kind == 1):
            extra = _sample_row(tgt_ptr, bonus_ptr, stride_t, stride_b, draft_ptr, u_ptr, wmin_ptr, pmax_ptr,
                                pidx_ptr, psum_ptr, s_row, kind, t, T, V, SPLIT, NSUB, b, HAS_WMIN, SPLIT_P2, NSUB_P2,
                                SUB, BLOCK)
        if HAS_Q:
            tl.store(plan_ptr + b, tl.where(kind == 2, s_row, -1))
    tl.store(out_row + j, extra, mask=kind != 2)  # kind 2: _residual_sample_kernel writes it
    tl.store(nacc_ptr + b, j)


@triton.jit
def _sample_row(tgt_ptr, bonus_ptr, stride_t, stride_b, draft_ptr, u_ptr, wmin_ptr, pmax_ptr, pidx_ptr, psum_ptr,
                row, kind, t, T, V, SPLIT, NSUB, b, HAS_WMIN: tl.constexpr, SPLIT_P2: tl.constexpr,
                NSUB_P2: tl.constexpr, SUB: tl.constexpr, BLOCK: tl.constexpr):
    """Sample W' of ``row`` (kind 0) or W' without the row's draft (kind 1) with ``u[T + b]``."""
    m, _, _ = _combine_max(pmax_ptr, pidx_ptr, row, SPLIT, SPLIT_P2)
    mz = tl.math.div_rn(m, t)
    w_min = 1
    if HAS_WMIN:
        w_min = tl.load(wmin_ptr + row)
    base = _row_ptr(tgt_ptr, bonus_ptr, row, T, stride_t, stride_b)
    x = tl.load(draft_ptr + row, mask=kind == 1, other=-1)
    i = tl.arange(0, NSUB_P2)
    csum = tl.load(psum_ptr + row.to(tl.int64) * NSUB + i, mask=i < NSUB, other=0)  # sub-chunk sums of W'
    S = tl.sum(csum, axis=0)
    w_x = _kept_weights(tl.load(base + x, mask=x >= 0, other=float("-inf")).to(tl.float32), t, mz, w_min, True)
    rest = S - w_x
    kind = tl.where((kind == 1) & (rest == 0), 0, kind)  # an all-zero residual falls back to W'
    x_sub = i * 0 + tl.where(kind == 1, x // SUB, -1)  # a vector (see _sample_search)
    csum = tl.where(i == x_sub, csum - w_x, csum)
    u = tl.load(u_ptr + T + b)
    return _sample_search(base, base, csum, tl.where(kind == 1, rest, S), u, t, mz, w_min, S, x, kind, V, NSUB_P2,
                          SUB, BLOCK, False)


@triton.jit
def _residual_sums_kernel(tgt_ptr, stride_t, q_ptr, stride_q, temp_ptr, wmin_ptr, pmax_ptr, pidx_ptr, psum_ptr,
                          plan_ptr, pres_ptr, V, CH, SPLIT, NSUB, HAS_TEMP: tl.constexpr, HAS_WMIN: tl.constexpr,
                          SPLIT_P2: tl.constexpr, NSUB_P2: tl.constexpr, SUB: tl.constexpr, BLOCK: tl.constexpr):
    """Per (request, chunk): per sub-chunk, the sum of ``max(0, W' - floor(q * S))`` over the rejected row."""
    b = tl.program_id(0)
    sp = tl.program_id(1)
    row = tl.load(plan_ptr + b)
    if row >= 0:
        t = 1.0
        if HAS_TEMP:
            t = tl.load(temp_ptr + b)
        w_min = 1
        if HAS_WMIN:
            w_min = tl.load(wmin_ptr + row)
        m, _, _ = _combine_max(pmax_ptr, pidx_ptr, row, SPLIT, SPLIT_P2)
        mz = tl.math.div_rn(m, t)
        s64 = _combine_sum(psum_ptr, row, NSUB, NSUB_P2).to(tl.float64)
        base = tgt_ptr + row.to(tl.int64) * stride_t
        q_row = q_ptr + row.to(tl.int64) * stride_q
        for k0 in range(sp * CH, sp * CH + CH, SUB):
            acc = tl.full([BLOCK], 0, tl.int64)
            for k in range(k0, k0 + SUB, BLOCK):
                offs = k + tl.arange(0, BLOCK)
                mask = offs < V
                x = tl.load(base + offs, mask=mask, other=float("-inf")).to(tl.float32)
                w = _kept_weights(x, t, mz, w_min, True)
                q = _clamp_q(tl.load(q_row + offs, mask=mask, other=0.0).to(tl.float32))
                q_w = tl.floor(q.to(tl.float64) * s64).to(tl.int64)
                acc += tl.where(mask, tl.maximum(w - q_w, 0), 0)
            tl.store(pres_ptr + b.to(tl.int64) * NSUB + k0 // SUB, tl.sum(acc, axis=0), mask=k0 < V)


@triton.jit
def _residual_sample_kernel(cu_ptr, tgt_ptr, stride_t, q_ptr, stride_q, u_ptr, temp_ptr, wmin_ptr, pmax_ptr,
                            pidx_ptr, psum_ptr, plan_ptr, pres_ptr, out_ptr, T, V, SPLIT, NSUB, out_stride,
                            HAS_TEMP: tl.constexpr, HAS_WMIN: tl.constexpr, SPLIT_P2: tl.constexpr,
                            NSUB_P2: tl.constexpr, SUB: tl.constexpr, BLOCK: tl.constexpr):
    """Sample the residual of the request's rejected row (W' when the residual is all zero)."""
    b = tl.program_id(0)
    row = tl.load(plan_ptr + b)
    if row >= 0:
        start = tl.load(cu_ptr + b - 1, mask=b > 0, other=0)
        t = 1.0
        if HAS_TEMP:
            t = tl.load(temp_ptr + b)
        w_min = 1
        if HAS_WMIN:
            w_min = tl.load(wmin_ptr + row)
        m, _, _ = _combine_max(pmax_ptr, pidx_ptr, row, SPLIT, SPLIT_P2)
        i = tl.arange(0, NSUB_P2)
        csum_w = tl.load(psum_ptr + row.to(tl.int64) * NSUB + i, mask=i < NSUB, other=0)
        csum_r = tl.load(pres_ptr + b.to(tl.int64) * NSUB + i, mask=i < NSUB, other=0)
        S = tl.sum(csum_w, axis=0)
        total_r = tl.sum(csum_r, axis=0)
        some = total_r > 0
        tok = _sample_search(tgt_ptr + row.to(tl.int64) * stride_t, q_ptr + row.to(tl.int64) * stride_q,
                             tl.where(some, csum_r, csum_w), tl.where(some, total_r, S), tl.load(u_ptr + T + b), t,
                             tl.math.div_rn(m, t), w_min, S, -1, tl.where(some, 2, 0), V, NSUB_P2, SUB, BLOCK, True)
        tl.store(out_ptr + b.to(tl.int64) * out_stride + (row - start), tok)


# ------------------------------------------------------------------------------------ tree
@triton.jit(do_not_specialize=["eps_bits", "delta_bits"])  # bit patterns: never a constexpr 1
def _tree_scan_kernel(tok_ptr, cu_ptr, node_ptr, stride_n, ri_ptr, temp_ptr, pmax_ptr, pidx_ptr, psum_ptr, pent_ptr,
                      out_ptr, nacc_ptr, best_ptr, P, D1, SPLIT, NSUB, relax_radius, action_lo, action_hi, eps_bits,
                      delta_bits, MODE: tl.constexpr, HAS_TEMP: tl.constexpr, SPLIT_P2: tl.constexpr,
                      NSUB_P2: tl.constexpr):
    """One request of the tree op: the longest accepted root-to-leaf prefix (ties: the lowest path)."""
    b = tl.program_id(0)
    base = tl.load(cu_ptr + b - 1, mask=b > 0, other=0)
    t = 1.0
    if HAS_TEMP:
        t = tl.load(temp_ptr + b)
    sampled = (MODE == 3) & (t != 0.0)
    best = base * 0 - 1
    best_len = base * 0 - 1
    for p in range(0, P):
        path = ri_ptr + (b.to(tl.int64) * P + p) * D1
        used = tl.load(path) >= 0  # column 0 = -1: an unused path slot
        n = base * 0
        go = used
        j = 1
        while (j < D1) & go:
            child = tl.load(path + j)
            prow = base + tl.load(path + j - 1)  # the parent's row verifies the child's token
            tok = tl.load(tok_ptr + base + child, mask=child >= 0, other=-1)
            m, a, valid = _combine_max(pmax_ptr, pidx_ptr, prow, SPLIT, SPLIT_P2)
            ok = _relaxed_match(tok, a, relax_radius, action_lo, action_hi, MODE == 1)
            if MODE == 3:
                S = _combine_sum(psum_ptr, prow, NSUB, NSUB_P2)
                tok_logit = tl.load(node_ptr + prow.to(tl.int64) * stride_n + tok, mask=tok >= 0, other=0.0)
                w_x = _kept_weights(tok_logit.to(tl.float32), t, tl.math.div_rn(m, t), 1, True)
                typ = _typical_accepts(w_x, S, _combine_sum(pent_ptr, prow, NSUB, NSUB_P2), eps_bits, delta_bits)
                ok = tl.where(sampled & (S > 0), typ, ok)
            ok = (child >= 0) & valid & ok
            n += ok.to(tl.int32)
            go = ok
            j += 1
        better = used & (n > best_len)
        best = tl.where(better, p, best)
        best_len = tl.where(better, n, best_len)
    n_acc = tl.maximum(best_len, 0)
    path = ri_ptr + (b.to(tl.int64) * P + tl.maximum(best, 0)) * D1
    out_row = out_ptr + b.to(tl.int64) * D1
    for j in range(0, n_acc):
        tl.store(out_row + j, tl.load(tok_ptr + base + tl.load(path + j + 1)))
    last = base + tl.load(path + n_acc, mask=best >= 0, other=0)  # no path: the root
    _, a, valid = _combine_max(pmax_ptr, pidx_ptr, last, SPLIT, SPLIT_P2)
    tl.store(out_row + n_acc, tl.where(valid, a, -1))
    tl.store(nacc_ptr + b, n_acc)
    tl.store(best_ptr + b, best)


# ------------------------------------------------------------------------------------ launch configs
SUB_BLOCKS = 4  # blocks per sub-chunk: the granularity of the weight sums, and the most a sample scans
PROGRAMS_PER_SM = 8  # row-pass programs per SM to aim for (4 KB of loads in flight each); to tune on a GPU


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


class LaunchConfig:
    """Tiling of a row: ``BLOCK`` ids per loop step, sub-chunks of ``SUB = BLOCK * sub_blocks`` ids (``NSUB``
    per row: the weight sums are kept per sub-chunk, a sample reads one), chunks of ``CH`` ids (a multiple of
    SUB; ``SPLIT`` per row: one program per row and chunk)."""

    def __init__(self, V: int, block: int, sub_blocks: int, split: int):
        self.block, self.sub = block, block * sub_blocks
        self.nsub = triton.cdiv(V, self.sub)
        self.ch = triton.cdiv(self.nsub, max(1, min(split, self.nsub))) * self.sub
        self.split = triton.cdiv(V, self.ch)
        self.split_p2, self.nsub_p2 = triton.next_power_of_2(self.split), triton.next_power_of_2(self.nsub)


def launch_config(rows: int, V: int, device: torch.device) -> LaunchConfig:
    """On a GPU, rows are split into chunks (of whole sub-chunks) until about :data:`PROGRAMS_PER_SM` programs
    per SM run: the loops are not software-pipelined, so the loads in flight per SM come from resident
    programs. Under the interpreter: one small block per row unless :data:`FORCE_CONFIG`
    (``{"block", "sub_blocks", "split"}``) says otherwise."""
    if FORCE_CONFIG:
        return LaunchConfig(V, FORCE_CONFIG["block"], FORCE_CONFIG.get("sub_blocks", 1), FORCE_CONFIG["split"])
    if device.type == "cuda":
        target = PROGRAMS_PER_SM * _num_sms(device.index if device.index is not None else torch.cuda.current_device())
        return LaunchConfig(V, BLOCK, SUB_BLOCKS, triton.cdiv(target, max(rows, 1)))
    return LaunchConfig(V, min(BLOCK, max(16, triton.next_power_of_2(V))), 1, 1)  # interpreter: small V


def compile_options(device: torch.device) -> dict:
    """Exact IEEE op order on GPUs (no FMA contraction, no flush-to-zero); nothing under the interpreter."""
    from .mx import compile_options as mx_compile_options

    return mx_compile_options(device)


def _f64_bits(v: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


def _int32(v: int) -> int:
    """Clamp a host int into int32: ids lie in [0, V), so a bound beyond int32 acts like int32's end."""
    return max(-(2**31), min(_INT32_MAX, int(v)))


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rows with unit column stride (a copy only if needed) and their row stride in elements."""
    if x.shape[1] > 1 and x.stride(1) != 1:
        x = x.contiguous()
    return x, (x.stride(0) if x.shape[0] > 1 else x.shape[1])


def _same_dtype(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target and bonus rows in one dtype (one kernel reads both): mixed dtypes widen to fp32 (exact)."""
    if a.dtype == b.dtype:
        return a, b
    return a.float(), b.float()


class _Stats:
    """Partials of the row passes (``torch.empty``: no host values): per (row, chunk) max / argmax, per
    (row, sub-chunk) weight sums and entropy terms."""

    def __init__(self, rows: int, cfg: LaunchConfig, device, entropy: bool):
        self.pmax = torch.empty(rows * cfg.split, dtype=torch.float32, device=device)  # +inf: NaN / +inf seen
        self.pidx = torch.empty(rows * cfg.split, dtype=torch.int32, device=device)
        self.psum = torch.empty(rows * cfg.nsub, dtype=torch.int64, device=device)
        self.pent = torch.empty(rows * cfg.nsub if entropy else 1, dtype=torch.float64, device=device)


def _keep_thresholds(w: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None) -> torch.Tensor:
    """``numerics.keep_threshold`` of every row at once, with device ops only (no host sync).

    Shape: w [R, V] int64 raw weights; top_k [R] int32 / top_p [R] fp32 per row -> [R] int64.
    """
    R, V = w.shape
    sw = torch.sort(w, dim=1, descending=True).values  # [R, V]
    w_min = torch.ones(R, dtype=torch.int64, device=w.device)
    if top_k is not None:
        k = top_k.long()
        kth = sw.gather(1, (k - 1).clamp(0, V - 1).unsqueeze(1)).squeeze(1)  # the k-th largest weight
        w_min = torch.where((k > 0) & (k < V), kth.clamp_min(1), w_min)
    if top_p is not None:
        kept = sw >= w_min.unsqueeze(1)  # a prefix of the sorted row
        s_k = torch.where(kept, sw, 0).sum(1)  # [R] exact
        above = torch.cumsum(sw, 1) - sw  # mass strictly before each sorted position
        first = torch.ones_like(kept)
        first[:, 1:] = sw[:, 1:] != sw[:, :-1]  # first occurrence of each value: mass strictly above it
        ok = first & kept & (above.double() / s_k.double().unsqueeze(1) < top_p.double().unsqueeze(1))
        smallest_ok = torch.where(ok, sw, torch.iinfo(torch.int64).max).amin(1)  # ok is a prefix of the values
        w_min = torch.where(top_p < 1, torch.maximum(w_min, smallest_ok), w_min)
    return w_min


def _per_row(values: torch.Tensor | None, cu: torch.Tensor, T: int) -> torch.Tensor | None:
    """Per-request values [B] -> per row [T + B] (target rows by their request, then the bonus rows)."""
    if values is None:
        return None
    req = torch.searchsorted(cu, torch.arange(T, dtype=cu.dtype, device=cu.device), right=True)
    return torch.cat([values[req], values])


# ------------------------------------------------------------------------------------ launchers
def _launch_max(rows, tgt, bon, stride_t, stride_b, T, V, cfg, stats):
    """Pass 1 over ``rows`` rows (target rows ``[0, T)``, then bonus rows)."""
    _row_max_kernel[(rows, cfg.split)](tgt, bon, stride_t, stride_b, T, V, cfg.ch, stats.pmax, stats.pidx, cfg.split,
                                       BLOCK=cfg.block, num_warps=NUM_WARPS, **compile_options(tgt.device))


def _launch_sums(rows, tgt, bon, stride_t, stride_b, T, V, cu, temp, cfg, stats, entropy, w_min=None, w_out=None):
    """Pass 2: per-sub-chunk weight sums (with ``w_min``: kept weights only); ``w_out`` [rows, V]: raw weights."""
    dummy = stats.psum
    _row_sums_kernel[(rows, cfg.split)](
        tgt, bon, stride_t, stride_b, T, V, cfg.ch, cfg.nsub, cu, cu.numel(), temp if temp is not None else stats.pmax,
        w_min if w_min is not None else dummy, w_out if w_out is not None else dummy, stats.pmax, stats.pidx,
        stats.psum, stats.pent, cfg.split, BLOCK=cfg.block, SUB=cfg.sub, SPLIT_P2=cfg.split_p2,
        HAS_TEMP=temp is not None, HAS_WMIN=w_min is not None, ENTROPY=entropy and w_out is None,
        STORE_W=w_out is not None, num_warps=NUM_WARPS, **compile_options(tgt.device))


def _row_thresholds(rows, tgt, bon, stride_t, stride_b, T, V, cu, temp, cfg, stats, top_k, top_p):
    """Per-row ``W_min`` [rows] int64 for top-k / top-p: raw weights [rows, V] from pass 2, then device sorts."""
    w = torch.empty((rows, V), dtype=torch.int64, device=tgt.device)
    _launch_sums(rows, tgt, bon, stride_t, stride_b, T, V, cu, temp, cfg, stats, False, w_out=w)
    return _keep_thresholds(w, _per_row(top_k, cu, T), _per_row(top_p, cu, T))


def verify_triton(draft_token_ids, cu_num_draft_tokens, target_logits, bonus_logits, draft_probs, uniforms, temperature,
                  top_k, top_p, mode, max_drafts, relax_radius, action_lo, action_hi, typical_eps, typical_delta):
    """Triton ``specdec_verify``: the arguments and results of :func:`leankern.specdec.ref.verify_ref`.

    Shape: draft_token_ids [T] int32, cu_num_draft_tokens [B] int32, target_logits [T, V], bonus_logits [B, V],
    draft_probs [T, V] or None, uniforms [T + B] fp32 or None, temperature / top_k / top_p [B] or None ->
    (output [B, max_drafts + 1] int32, num_accepted [B] int32).
    """
    dev = target_logits.device
    B = cu_num_draft_tokens.numel()
    T, V = target_logits.shape
    out = torch.full((B, max_drafts + 1), -1, dtype=torch.int32, device=dev)
    num_accepted = torch.zeros(B, dtype=torch.int32, device=dev)
    if B == 0:
        return out, num_accepted
    code = MODES[mode]
    tgt, stride_t = _rows(target_logits)
    bon, stride_b = _rows(bonus_logits)
    tgt, bon = _same_dtype(tgt, bon)
    cu, draft_token_ids = cu_num_draft_tokens.contiguous(), draft_token_ids.contiguous()
    uniforms = uniforms.contiguous() if uniforms is not None else None
    temp = temperature.contiguous() if temperature is not None else None
    R = T + B
    cfg = launch_config(R, V, dev)
    stats = _Stats(R, cfg, dev, entropy=code == 3)
    rows = (R, tgt, bon, stride_t, stride_b, T, V)
    _launch_max(*rows, cfg, stats)
    w_min = None
    if code >= 2:
        if top_k is not None or top_p is not None:
            w_min = _row_thresholds(*rows, cu, temp, cfg, stats, top_k, top_p)
        _launch_sums(*rows, cu, temp, cfg, stats, code == 3, w_min=w_min)
    has_q = code == 2 and draft_probs is not None
    q, stride_q = _rows(draft_probs) if has_q else (tgt, stride_t)
    dummy = stats.pmax
    u = uniforms if uniforms is not None else dummy
    temp_arg = temp if temp is not None else dummy
    wmin_arg = w_min if w_min is not None else stats.psum
    plan = torch.empty(B if has_q else 1, dtype=torch.int32, device=dev)  # kind-2 rows, written by the scan
    opts = dict(num_warps=NUM_WARPS, **compile_options(dev))
    tiles = dict(SPLIT_P2=cfg.split_p2, NSUB_P2=cfg.nsub_p2, SUB=cfg.sub, BLOCK=cfg.block)
    _verify_scan_kernel[(B,)](
        draft_token_ids, cu, tgt, bon, stride_t, stride_b, q, stride_q, u, temp_arg, wmin_arg, stats.pmax, stats.pidx,
        stats.psum, stats.pent, out, num_accepted, plan, T, V, cfg.split, cfg.nsub, max_drafts + 1,
        _int32(relax_radius), _int32(action_lo), _int32(action_hi), _f64_bits(typical_eps), _f64_bits(typical_delta),
        MODE=code, HAS_Q=has_q, HAS_TEMP=temp is not None, HAS_WMIN=w_min is not None, **tiles, **opts)
    if has_q:  # the rejected rows' residuals max(0, W' - floor(q S)): sub-chunk sums, then the sample
        pres = torch.empty(B * cfg.nsub, dtype=torch.int64, device=dev)
        ce = dict(HAS_TEMP=temp is not None, HAS_WMIN=w_min is not None, **tiles)
        _residual_sums_kernel[(B, cfg.split)](tgt, stride_t, q, stride_q, temp_arg, wmin_arg, stats.pmax, stats.pidx,
                                              stats.psum, plan, pres, V, cfg.ch, cfg.split, cfg.nsub, **ce, **opts)
        _residual_sample_kernel[(B,)](cu, tgt, stride_t, q, stride_q, u, temp_arg, wmin_arg, stats.pmax, stats.pidx,
                                      stats.psum, plan, pres, out, T, V, cfg.split, cfg.nsub, max_drafts + 1, **ce,
                                      **opts)
    return out, num_accepted


def verify_tree_triton(tree_token_ids, cu_num_nodes, node_logits, retrieve_indices, temperature, mode, relax_radius,
                       action_lo, action_hi, typical_eps, typical_delta):
    """Triton ``specdec_verify_tree``: the arguments and results of :func:`leankern.specdec.ref.verify_tree_ref`.

    Shape: tree_token_ids [N] int32, cu_num_nodes [B] int32, node_logits [N, V], retrieve_indices [B, P, D+1] int32,
    temperature [B] fp32 or None -> (output [B, D+1] int32, num_accepted [B] int32, best_path [B] int32).
    """
    dev = node_logits.device
    B, P, D1 = retrieve_indices.shape
    N, V = node_logits.shape
    out = torch.full((B, D1), -1, dtype=torch.int32, device=dev)
    num_accepted = torch.zeros(B, dtype=torch.int32, device=dev)
    best_path = torch.full((B,), -1, dtype=torch.int32, device=dev)
    if B == 0:
        return out, num_accepted, best_path
    code = MODES[mode]
    nodes, stride_n = _rows(node_logits)
    cu_num_nodes = cu_num_nodes.contiguous()
    temp = temperature.contiguous() if temperature is not None else None
    cfg = launch_config(N, V, dev)
    stats = _Stats(N, cfg, dev, entropy=code == 3)
    rows = (N, nodes, nodes, stride_n, stride_n, N, V)  # no bonus rows: every row is a node row
    _launch_max(*rows, cfg, stats)
    if code == 3:
        _launch_sums(*rows, cu_num_nodes, temp, cfg, stats, True)
    _tree_scan_kernel[(B,)](
        tree_token_ids.contiguous(), cu_num_nodes, nodes, stride_n, retrieve_indices.contiguous(),
        temp if temp is not None else stats.pmax, stats.pmax, stats.pidx, stats.psum, stats.pent, out, num_accepted,
        best_path, P, D1, cfg.split, cfg.nsub, _int32(relax_radius), _int32(action_lo), _int32(action_hi),
        _f64_bits(typical_eps), _f64_bits(typical_delta), MODE=code, HAS_TEMP=temp is not None,
        SPLIT_P2=cfg.split_p2, NSUB_P2=cfg.nsub_p2, num_warps=NUM_WARPS, **compile_options(dev))
    return out, num_accepted, best_path
