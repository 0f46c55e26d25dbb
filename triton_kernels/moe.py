"""Triton kernels of the MoE ops: routing (+ skip rules), skip, align, grouped SwiGLU experts.

The definitions are those of :mod:`leankern.moe.ref`; every launcher takes exactly its op's arguments
(``leankern.moe.ops`` has checked shapes, dtypes and id ranges before a launcher runs) and returns the
reference's structure.

* ``route`` (:func:`_route_kernel`): one row per program. The row's logits are loaded as a
  ``[n_group, E / n_group]`` tile (padded to powers of two); scores in fp32 (softmax
  ``e^(z - max) / sum`` or sigmoid ``1 / (1 + e^-z)``, IEEE division; ``exp`` is libdevice's when compiled,
  NumPy's under the interpreter), ``+ correction_bias`` for selection, NaN -> -inf, group selection
  (group score: best, or the sum of the two best with a bias; ``topk_group`` rounds of argmax over groups,
  ties to the lowest group), then ``top_k`` rounds of argmax, ties to the lowest expert id (= the stable
  descending sort of the reference). Weights: the unbiased scores of the winners, ``/ sum`` (IEEE division;
  a tree sum, not torch's order: weights agree within a few ulp, ids exactly), ``* routed_scaling_factor``
  (fp32), then the skip rule of :func:`_skip_rows` on the row in registers.
* ``skip`` (:func:`_skip_kernel`): :func:`_skip_rows` alone, one row per program. The rules rank slots by
  weight (an all-pairs comparison of the row's ``<= 64`` slots: highest first, ties to the lowest slot,
  invalid slots last); ``top_p``'s cumulative mass is an fp64 sequential sum in rank order with
  ``before = cum - w`` exactly as the reference's ``cumsum`` computes it, ``p`` passed as fp64 bits;
  ``renormalize`` uses sequential fp32 sums in slot order and an IEEE division: bit-exact with the
  reference (ids and weights).
* ``align``: two launches, no host synchronisation, bit-exact with :func:`leankern.moe.ref.align_ref`.
  :func:`_align_count_kernel` (one program) walks the slots in chunks of ``BLOCK``: each slot's rank among
  the earlier slots of its (mapped) expert is the expert's running count (a gather from a global ``[E]``
  array) plus its rank inside the chunk (all-pairs comparison); the last slot of each expert in the chunk
  stores the new count (barriers order the gather and the store). Then the padded prefix sum over experts
  (``tl.cumsum`` per chunk of experts) -> ``expert_offsets``, ``num_kept``. :func:`_align_scatter_kernel`
  (grid over chunks) writes ``sorted_slot_ids[offsets[e] + rank] = slot`` (the rest is -1 from
  ``torch.full``) and ``block_expert_ids[b]`` by a binary search of ``b * block_m`` in the offsets
  (empty experts are skipped by taking the last expert whose offset is <= the block's start).
* ``experts``: fused_moe-style grouped GEMM over the aligned blocks (align with ``BM`` rows per block).
  Grid ``(B_max, N tiles)``, static; a program whose ``block_expert_ids`` entry is -1 returns at once, so
  experts without kept slots are never read.

  - :func:`_gate_up_kernel`: rows = the block's slots (``-1`` rows masked: never loaded, never stored),
    ``x[slot // k]`` gathered by address; two fp32 accumulators ``[BM, BN]`` (gate and up columns of the
    same ``BN`` intermediate columns: strided views of w13, so interleaved (gpt-oss) and split halves are the
    same kernel), ``+ w13_bias``, the activation in fp32 (silu ``g / (1 + e^-g)``; swiglu_oai with clamps),
    then the intermediate row ``[S_max, I]`` is stored **rounded to w2's dtype** (RNE; fp32 weights: kept
    fp32) so the down projection can run on the tensor cores.
  - :func:`_down_kernel`: ``inter @ w2[e]^T`` (fp32 accumulation), ``+ w2_bias``, ``* topk_weight`` (fp32)
    in the epilogue, stored as the slot's fp32 row ``[T * k, H]``.
  - :func:`_combine_kernel`: per token, the kept slots' rows summed in slot order (a skipped slot's row is
    never read: a token without kept slots gets exactly 0), plus the shared expert's row, rounded once to
    hidden's dtype.
  - Shared expert: the same two kernels in ``DENSE`` mode (rows = tokens, w1 / w3 as gate / up, shared_w2),
    the gate logit ``x . shared_gate`` accumulated in the gate/up kernel's H loop (fp32) and
    ``sigmoid`` applied in the down kernel's epilogue.

  Dots: both operands in the same 16-bit dtype on a GPU -> the native MMA (wgmma on sm_90 for 64-row
  blocks, tcgen05 on sm_100, mma.sync for 16-row decode blocks); otherwise (mixed dtypes, fp32, and always
  under the interpreter, whose bf16 dot is wrong) the operands are widened exactly to fp32 and
  ``input_precision="ieee"`` is used: the same products, a different accumulation order.

Launchers create no tensor from host values and never synchronise (CUDA-graph capturable).
"""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..moe.ref import SKIP_RULES, align_sizes
from .mx import _store_f32, bf16_nan_bits, compile_options, output_kind

__all__ = ["route_triton", "skip_triton", "align_triton", "experts_triton", "experts_config", "align_config",
           "FORCE_CONFIG", "RULE_CODES", "DOT_FP32", "DOT_NATIVE"]

RULE_CODES = {r: i for i, r in enumerate(SKIP_RULES)}  # none 0, modes 1, naee 2, top_p 3, min_p 4, top_k 5
DOT_FP32, DOT_NATIVE = 0, 1
NUM_WARPS = 4
_BIG = tl.constexpr(2**30)
# Tests / benches override tiles: {"block_m", "block_n", "block_k", "num_warps", "num_stages", "align_block",
# "combine_block"} (any subset)
FORCE_CONFIG: dict | None = None


# ------------------------------------------------------------------------------------ jit helpers
@triton.jit
def _exp(x, LIBM: tl.constexpr):
    if LIBM:
        return libdevice.exp(x)
    else:
        return tl.exp(x)


@triton.jit
def _sigmoid(x, LIBM: tl.constexpr):
    """``1 / (1 + e^-x)`` as torch.sigmoid, IEEE division."""
    return tl.math.div_rn(tl.full(x.shape, 1.0, tl.float32), 1.0 + _exp(-x, LIBM))


@triton.jit
def _gt_nan_first(a, b):
    """``a`` before ``b`` in a descending sort that puts NaN first (torch.sort's order)."""
    return (a > b) | ((a != a) & (b == b))


@triton.jit
def _eq_nan(a, b):
    return (a == b) | ((a != a) & (b != b))


@triton.jit
def _skip_rows(ids, w, kk, K, mod, p0, p1, p2, p3, p_bits, RULE: tl.constexpr, RENORM: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """The skip rule on one row in registers: ``ids [BLOCK_K] int32``, ``w [BLOCK_K] fp32`` (lanes ``>= K``
    are padding) -> (ids with -1 where skipped, weights with 0 there), as :func:`leankern.moe.ref.skip_ref`."""
    real = kk < K
    valid = real & (ids >= 0)
    w = tl.where(valid, w, 0.0)
    if RULE == 0:
        keep = valid
    elif RULE == 1:  # modes: alpha[m] * w >= tau[m], m = 2 never skips
        alpha = tl.where(mod == 0, p0, tl.where(mod == 1, p1, 1.0))
        tau = tl.where(mod == 0, p2, tl.where(mod == 1, p3, 0.0))
        keep = valid & ((mod == 2) | (alpha * w >= tau))
    else:
        key = tl.where(valid, w, float("-inf"))
        ki = key[:, None]
        kj = tl.reshape(key, (1, BLOCK_K))
        ii = kk[:, None]
        jj = tl.reshape(kk, (1, BLOCK_K))
        ahead = (_gt_nan_first(kj, ki) | (_eq_nan(kj, ki) & (jj < ii))) & (jj < K)
        rank = tl.sum(ahead.to(tl.int32), axis=1)  # [BLOCK_K]: slots ranked before this one
        if RULE == 5:  # top_k
            rank_keep = rank.to(tl.float32) < p0
        elif RULE == 3:  # top_p: fp64 cumsum in rank order, before = cum - w (as the reference)
            p64 = p_bits.to(tl.int64).to(tl.float64, bitcast=True)
            acc = tl.zeros([1], dtype=tl.float64)
            before = tl.zeros([BLOCK_K], dtype=tl.float64)
            for r in range(K):
                wr = tl.sum(tl.where(real & (rank == r), w, 0.0), axis=0).to(tl.float64)
                cum = acc + wr
                before = tl.where(rank == r, cum - wr, before)
                acc = cum
            rank_keep = (before < p64 * acc) | (rank == 0)
        else:  # naee / min_p: a ratio to the rank-0 weight
            top1 = tl.sum(tl.where(real & (rank == 0), w, 0.0), axis=0)
            rank_keep = (w >= p0 * top1) | (rank == 0)
        keep = valid & rank_keep
    out_w = tl.where(keep, w, 0.0)
    if RENORM:  # sequential fp32 sums in slot order, IEEE division
        total = tl.zeros([1], dtype=tl.float32)
        kept = tl.zeros([1], dtype=tl.float32)
        for j in range(K):
            total = total + tl.sum(tl.where(kk == j, w, 0.0), axis=0)
            kept = kept + tl.sum(tl.where(kk == j, out_w, 0.0), axis=0)
        scale = tl.where(kept > 0, tl.math.div_rn(total, tl.where(kept > 0, kept, 1.0)), 0.0)
        out_w = out_w * scale
    return tl.where(keep, ids, -1), out_w


@triton.jit
def _route_kernel(logits_ptr, stride_l, bias_ptr, mod_ptr, ids_ptr, w_ptr, E, GS, NG, TOPK_GROUP, K, rsf,
                  p0, p1, p2, p3, p_bits, SOFTMAX: tl.constexpr, HAS_BIAS: tl.constexpr, GROUPED: tl.constexpr,
                  RENORMALIZE: tl.constexpr, HAS_MOD: tl.constexpr, RULE: tl.constexpr, SKIP_RENORM: tl.constexpr,
                  BLOCK_G: tl.constexpr, BLOCK_GS: tl.constexpr, BLOCK_K: tl.constexpr, LIBM: tl.constexpr):
    """One token: scores, (grouped) top-k by rounds of argmax, renormalisation, scaling, the skip rule."""
    t = tl.program_id(0).to(tl.int64)
    g = tl.arange(0, BLOCK_G)[:, None]
    j = tl.arange(0, BLOCK_GS)[None, :]
    mask = (g < NG) & (j < GS)
    eid = g * GS + j  # [BLOCK_G, BLOCK_GS] expert ids
    z = tl.load(logits_ptr + t * stride_l + eid, mask=mask, other=float("-inf")).to(tl.float32)
    if SOFTMAX:
        mx = tl.max(tl.max(z, axis=1), axis=0)
        e = tl.where(mask, _exp(z - mx, LIBM), 0.0)
        s = tl.sum(tl.sum(e, axis=1), axis=0)
        score = tl.math.div_rn(e, s + tl.zeros(e.shape, tl.float32))
    else:
        score = tl.where(mask, _sigmoid(z, LIBM), 0.0)
    sel = score
    if HAS_BIAS:
        sel = sel + tl.load(bias_ptr + eid, mask=mask, other=0.0).to(tl.float32)
    sel = tl.where(sel != sel, float("-inf"), sel)
    sel = tl.where(mask, sel, float("-inf"))
    if GROUPED:
        m1 = tl.max(sel, axis=1)  # [BLOCK_G]
        if HAS_BIAS:  # the sum of the group's two best
            j1 = tl.min(tl.where(sel == m1[:, None], j, _BIG), axis=1)
            m2 = tl.max(tl.where(j == j1[:, None], float("-inf"), sel), axis=1)
            gs = tl.where(GS >= 2, m1 + m2, m1)
        else:
            gs = m1
        gi = tl.arange(0, BLOCK_G)
        avail = gi < NG
        chosen = gi < 0
        for _ in range(TOPK_GROUP):
            v = tl.where(avail, gs, float("-inf"))
            best = tl.max(v, axis=0)
            idx = tl.min(tl.where(avail & (v == best), gi, _BIG), axis=0)
            chosen = chosen | (gi == idx)
            avail = avail & (gi != idx)
        sel = tl.where(chosen[:, None], sel, float("-inf"))
    kk = tl.arange(0, BLOCK_K)
    ids = tl.full([BLOCK_K], -1, tl.int32)
    w = tl.zeros([BLOCK_K], dtype=tl.float32)
    avail2 = mask
    for r in range(K):  # rounds of argmax, ties to the lowest id
        v = tl.where(avail2, sel, float("-inf"))
        best = tl.max(tl.max(v, axis=1), axis=0)
        idx = tl.min(tl.min(tl.where(avail2 & (v == best), eid, _BIG), axis=1), axis=0)
        hit = eid == idx
        wr = tl.sum(tl.sum(tl.where(hit, score, 0.0), axis=1), axis=0)
        ids = tl.where(kk == r, idx, ids)
        w = tl.where(kk == r, wr, w)
        avail2 = avail2 & (eid != idx)
    if RENORMALIZE:
        tot = tl.sum(tl.where(kk < K, w, 0.0), axis=0)
        w = tl.math.div_rn(w, tot + tl.zeros(w.shape, tl.float32))
    w = w * rsf
    if HAS_MOD:
        mod = tl.load(mod_ptr + t)
    else:
        mod = 0
    ids, w = _skip_rows(ids, w, kk, K, mod, p0, p1, p2, p3, p_bits, RULE, SKIP_RENORM, BLOCK_K)
    tl.store(ids_ptr + t * K + kk, ids, mask=kk < K)
    tl.store(w_ptr + t * K + kk, w, mask=kk < K)


@triton.jit
def _skip_kernel(ids_in, w_in, mod_ptr, ids_out, w_out, K, p0, p1, p2, p3, p_bits, HAS_MOD: tl.constexpr,
                 RULE: tl.constexpr, RENORM: tl.constexpr, BLOCK_K: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    kk = tl.arange(0, BLOCK_K)
    m = kk < K
    ids = tl.load(ids_in + t * K + kk, mask=m, other=-1)
    w = tl.load(w_in + t * K + kk, mask=m, other=0.0)
    if HAS_MOD:
        mod = tl.load(mod_ptr + t)
    else:
        mod = 0
    ids, w = _skip_rows(ids, w, kk, K, mod, p0, p1, p2, p3, p_bits, RULE, RENORM, BLOCK_K)
    tl.store(ids_out + t * K + kk, ids, mask=m)
    tl.store(w_out + t * K + kk, w, mask=m)


# ------------------------------------------------------------------------------------ align
@triton.jit
def _align_count_kernel(ids_ptr, map_ptr, mapped_ptr, rank_ptr, counts_ptr, offsets_ptr, kept_ptr, S, E, block_m,
                        HAS_MAP: tl.constexpr, BLOCK: tl.constexpr, BLOCK_E: tl.constexpr):
    """One program. Pass 1: mapped ids and each kept slot's rank within its expert (ascending slot order);
    ``counts`` (zeros) ends as the histogram. Pass 2: padded prefix sum -> offsets [E + 1], num_kept."""
    lane = tl.arange(0, BLOCK)
    ii = lane[:, None]
    jj = tl.reshape(lane, (1, BLOCK))
    for c in range(0, S, BLOCK):
        s = c + lane
        e = tl.load(ids_ptr + s, mask=s < S, other=-1)
        if HAS_MAP:
            e = tl.where(e >= 0, tl.load(map_ptr + tl.where(e >= 0, e, 0), mask=e >= 0, other=-1), e)
        kept = e >= 0
        safe = tl.where(kept, e, 0)
        ej = tl.reshape(e, (1, BLOCK))
        same = (ej == e[:, None]) & (jj < ii) & (ej >= 0)
        r_in = tl.sum(same.to(tl.int32), axis=1)  # earlier slots of the same expert in this chunk
        later = (ej == e[:, None]) & (jj > ii)
        is_last = tl.sum(later.to(tl.int32), axis=1) == 0
        base = tl.load(counts_ptr + safe, mask=kept, other=0)
        tl.debug_barrier()  # every lane has read the counts before any is updated
        rank = base + r_in
        tl.store(mapped_ptr + s, e, mask=s < S)
        tl.store(rank_ptr + s, rank, mask=kept)
        tl.store(counts_ptr + safe, rank + 1, mask=kept & is_last)
        tl.debug_barrier()  # the updates are visible to the next chunk
    le = tl.arange(0, BLOCK_E)
    run = tl.zeros([1], dtype=tl.int32)
    total = tl.zeros([1], dtype=tl.int32)
    tl.store(offsets_ptr + le, tl.zeros([BLOCK_E], dtype=tl.int32), mask=le == 0)
    for e0 in range(0, E, BLOCK_E):
        ee = e0 + le
        cnt = tl.load(counts_ptr + ee, mask=ee < E, other=0)
        padded = (cnt + block_m - 1) // block_m * block_m
        cs = tl.cumsum(padded, axis=0)
        tl.store(offsets_ptr + ee + 1, run + cs, mask=ee < E)
        run = run + tl.sum(padded, axis=0)
        total = total + tl.sum(cnt, axis=0)
    tl.store(kept_ptr + tl.arange(0, 1), total)


@triton.jit
def _align_scatter_kernel(mapped_ptr, rank_ptr, offsets_ptr, sorted_ptr, blocks_ptr, S, E, B_MAX, block_m, n_iter,
                          BLOCK: tl.constexpr):
    """Chunk ``pid``: ``sorted[offsets[e] + rank] = slot`` for its slots; ``block_expert_ids`` for its blocks."""
    pid = tl.program_id(0)
    lane = tl.arange(0, BLOCK)
    s = pid * BLOCK + lane
    e = tl.load(mapped_ptr + s, mask=s < S, other=-1)
    kept = e >= 0
    pos = tl.load(offsets_ptr + tl.where(kept, e, 0), mask=kept, other=0) + tl.load(rank_ptr + s, mask=kept, other=0)
    tl.store(sorted_ptr + pos, s, mask=kept)
    b = pid * BLOCK + lane
    start = b * block_m
    end = tl.load(offsets_ptr + E)
    lo = tl.zeros([BLOCK], dtype=tl.int32)
    hi = tl.zeros([BLOCK], dtype=tl.int32) + E
    for _ in range(n_iter):  # the last expert whose offset is <= start (offsets[lo] <= start < offsets[hi])
        mid = (lo + hi) // 2
        go = hi - lo > 1
        up = tl.load(offsets_ptr + mid, mask=go, other=0) <= start
        lo = tl.where(go & up, mid, lo)
        hi = tl.where(go & ~up, mid, hi)
    tl.store(blocks_ptr + b, tl.where(start < end, lo, -1), mask=b < B_MAX)


# ------------------------------------------------------------------------------------ experts
@triton.jit
def _dot(a, b, acc, DOT: tl.constexpr):
    if DOT == 1:
        return tl.dot(a, b, acc)
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")


@triton.jit
def _block_rows(sorted_ptr, bexp_ptr, pid_m, M, K_TOPK, BM: tl.constexpr, DENSE: tl.constexpr):
    """(expert, source row of x, destination row (slot / token), valid) of this block; expert -1: no work."""
    m = pid_m * BM + tl.arange(0, BM)
    if DENSE:
        e = pid_m * 0
        valid = m < M
        src = m
        dst = m
    else:
        e = tl.load(bexp_ptr + pid_m)
        # a block with an expert lies inside sorted_ids (its S_max entries); the trailing -1 blocks can reach past
        # its end (B_max * BM > S_max): they read no slot
        slot = tl.load(sorted_ptr + m, mask=(m * 0 + e) >= 0, other=-1)
        valid = slot >= 0
        dst = tl.where(valid, slot, 0)
        src = dst // K_TOPK
    return e, src.to(tl.int64), dst.to(tl.int64), valid


@triton.jit
def _gate_up_kernel(x_ptr, g_ptr, u_ptr, gb_ptr, ub_ptr, sg_ptr, sorted_ptr, bexp_ptr, inter_ptr, glog_ptr,
                    M, H, I, K_TOPK, stride_x, stride_ge, stride_gn, stride_gk, stride_ue, stride_un, stride_uk,
                    stride_gbe, stride_gbn, stride_ube, stride_ubn, stride_i, alpha, limit,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DENSE: tl.constexpr, ACT: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr, DOT: tl.constexpr, OUT_KIND: tl.constexpr,
                    BF16_NAN: tl.constexpr, LIBM: tl.constexpr):
    """``inter[row, n] = act(x[src] . gate[e, n] + gb, x[src] . up[e, n] + ub)`` for the block's rows."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e, src, dst, valid = _block_rows(sorted_ptr, bexp_ptr, pid_m, M, K_TOPK, BM, DENSE)
    if e < 0:
        return
    e64 = e.to(tl.int64)
    n = pid_n * BN + tl.arange(0, BN)
    nmask = n < I
    kb = tl.arange(0, BK)
    x_rows = x_ptr + src * stride_x
    g_base = g_ptr + e64 * stride_ge + n.to(tl.int64) * stride_gn
    u_base = u_ptr + e64 * stride_ue + n.to(tl.int64) * stride_un
    acc_g = tl.zeros([BM, BN], dtype=tl.float32)
    acc_u = tl.zeros([BM, BN], dtype=tl.float32)
    glog = tl.zeros([BM], dtype=tl.float32)
    for k0 in range(0, H, BK):
        kk = k0 + kb
        kmask = kk < H
        x = tl.load(x_rows[:, None] + kk[None, :], mask=valid[:, None] & kmask[None, :], other=0.0)
        wg = tl.load(g_base[None, :] + kk[:, None] * stride_gk, mask=kmask[:, None] & nmask[None, :], other=0.0)
        wu = tl.load(u_base[None, :] + kk[:, None] * stride_uk, mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc_g = _dot(x, wg, acc_g, DOT)
        acc_u = _dot(x, wu, acc_u, DOT)
        if HAS_GATE:
            sg = tl.load(sg_ptr + kk, mask=kmask, other=0.0).to(tl.float32)
            glog += tl.sum(x.to(tl.float32) * sg[None, :], axis=1)
    if HAS_BIAS:
        acc_g += tl.load(gb_ptr + e64 * stride_gbe + n * stride_gbn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        acc_u += tl.load(ub_ptr + e64 * stride_ube + n * stride_ubn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    if ACT == 0:  # silu(g) * up
        a = tl.math.div_rn(acc_g, 1.0 + _exp(-acc_g, LIBM)) * acc_u
    else:  # gpt-oss: clamp(g, max=limit) * sigmoid(alpha * g) * (clamp(u, -limit, limit) + 1); NaN propagates
        gc = tl.where(acc_g > limit, limit, acc_g)
        uc = tl.where(acc_u > limit, limit, tl.where(acc_u < -limit, -limit, acc_u))
        a = gc * _sigmoid(gc * alpha, LIBM) * (uc + 1.0)
    rows = pid_m * BM + tl.arange(0, BM)
    offs = rows.to(tl.int64)[:, None] * stride_i + n[None, :]
    _store_f32(inter_ptr, offs, a, valid[:, None] & nmask[None, :], OUT_KIND, BF16_NAN)
    if HAS_GATE:
        if pid_n == 0:
            tl.store(glog_ptr + dst, glog, mask=valid)


@triton.jit
def _down_kernel(a_ptr, w_ptr, b_ptr, sorted_ptr, bexp_ptr, tw_ptr, glog_ptr, out_ptr, M, N, I, K_TOPK, stride_a,
                 stride_we, stride_wn, stride_wk, stride_be, stride_o, BM: tl.constexpr, BN: tl.constexpr,
                 BK: tl.constexpr, DENSE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr,
                 DOT: tl.constexpr, LIBM: tl.constexpr):
    """``out[dst, n] = (inter[row] . w2[e, n] + b2[e, n]) * weight`` (routing weight, or the shared gate)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e, src, dst, valid = _block_rows(sorted_ptr, bexp_ptr, pid_m, M, K_TOPK, BM, DENSE)
    if e < 0:
        return
    e64 = e.to(tl.int64)
    n = pid_n * BN + tl.arange(0, BN)
    nmask = n < N
    kb = tl.arange(0, BK)
    rows = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    a_rows = a_ptr + rows * stride_a
    w_base = w_ptr + e64 * stride_we + n.to(tl.int64) * stride_wn
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, I, BK):
        kk = k0 + kb
        kmask = kk < I
        a = tl.load(a_rows[:, None] + kk[None, :], mask=valid[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_base[None, :] + kk[:, None] * stride_wk, mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc = _dot(a, w, acc, DOT)
    if HAS_BIAS:
        acc += tl.load(b_ptr + e64 * stride_be + n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    if DENSE:
        if HAS_GATE:
            acc = acc * _sigmoid(tl.load(glog_ptr + dst, mask=valid, other=0.0), LIBM)[:, None]
    else:
        acc = acc * tl.load(tw_ptr + dst, mask=valid, other=0.0)[:, None]
    tl.store(out_ptr + dst[:, None] * stride_o + n[None, :], acc, mask=valid[:, None] & nmask[None, :])


@triton.jit
def _combine_kernel(ids_ptr, slot_ptr, shared_ptr, out_ptr, H, K_TOPK, HAS_SHARED: tl.constexpr,
                    OUT_KIND: tl.constexpr, BF16_NAN: tl.constexpr, BLOCK: tl.constexpr):
    """``out[t] = sum of kept slots' rows (slot order) + shared[t]``; skipped slots are never read."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    hmask = h < H
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(K_TOPK):
        kept = (tl.load(ids_ptr + t * K_TOPK + j) + tl.zeros([BLOCK], dtype=tl.int32)) >= 0
        acc += tl.load(slot_ptr + (t * K_TOPK + j) * H + h, mask=hmask & kept, other=0.0)
    if HAS_SHARED:
        acc += tl.load(shared_ptr + t * H + h, mask=hmask, other=0.0)
    _store_f32(out_ptr, t * H + h, acc, hmask, OUT_KIND, BF16_NAN)


# ------------------------------------------------------------------------------------ launchers
def _f64_bits(v: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


def _skip_scalars(rule: str, skip_params) -> tuple:
    p = [float(v) for v in skip_params] + [0.0] * (4 - len(skip_params))
    return (p[0], p[1], p[2], p[3], _f64_bits(p[0]))


def _opts(device: torch.device, num_warps: int = NUM_WARPS, num_stages: int | None = None) -> dict:
    opts = dict(num_warps=num_warps, **compile_options(device))
    if device.type == "cuda" and num_stages is not None:
        opts["num_stages"] = num_stages
    return opts


def route_triton(router_logits, top_k, scoring, renormalize, n_group, topk_group, correction_bias,
                 routed_scaling_factor, skip_rule, skip_params, modality, skip_renormalize):
    """Triton ``moe_route``: the arguments and results of ``route_ref`` followed by ``skip_ref``.

    Shape: router_logits [T, E] -> (topk_ids [T, k] int32, topk_weights [T, k] fp32).
    """
    T, E = router_logits.shape
    dev = router_logits.device
    ids = torch.empty((T, top_k), dtype=torch.int32, device=dev)
    w = torch.empty((T, top_k), dtype=torch.float32, device=dev)
    if T == 0:
        return ids, w
    logits = router_logits if router_logits.stride(-1) == 1 else router_logits.contiguous()
    gs = E // n_group
    bias = correction_bias.contiguous() if correction_bias is not None else logits
    mod = modality.contiguous() if modality is not None else ids
    _route_kernel[(T,)](logits, logits.stride(0), bias, mod, ids, w, E, gs, n_group, topk_group, top_k,
                        float(routed_scaling_factor), *_skip_scalars(skip_rule, skip_params),
                        SOFTMAX=scoring == "softmax", HAS_BIAS=correction_bias is not None, GROUPED=n_group > 1,
                        RENORMALIZE=bool(renormalize), HAS_MOD=modality is not None, RULE=RULE_CODES[skip_rule],
                        SKIP_RENORM=bool(skip_renormalize), BLOCK_G=triton.next_power_of_2(n_group),
                        BLOCK_GS=triton.next_power_of_2(gs), BLOCK_K=max(2, triton.next_power_of_2(top_k)),
                        LIBM=dev.type == "cuda", **_opts(dev))
    return ids, w


def skip_triton(topk_ids, topk_weights, rule, skip_params, modality, renormalize):
    """Triton ``moe_skip``: the arguments and results of :func:`leankern.moe.ref.skip_ref`.

    Shape: topk_ids [T, k] int32, topk_weights [T, k] fp32 -> the same shapes.
    """
    T, K = topk_ids.shape
    dev = topk_ids.device
    ids = torch.empty((T, K), dtype=torch.int32, device=dev)
    w = torch.empty((T, K), dtype=torch.float32, device=dev)
    if T == 0:
        return ids, w
    ids_in, w_in = topk_ids.contiguous(), topk_weights.contiguous()
    mod = modality.contiguous() if modality is not None else ids
    _skip_kernel[(T,)](ids_in, w_in, mod, ids, w, K, *_skip_scalars(rule, skip_params), HAS_MOD=modality is not None,
                       RULE=RULE_CODES[rule], RENORM=bool(renormalize), BLOCK_K=max(2, triton.next_power_of_2(K)),
                       **_opts(dev))
    return ids, w


def align_config(device: torch.device) -> tuple[int, int]:
    """(slot chunk, expert chunk) of the align kernels."""
    block, block_e = (64, 1024) if device.type == "cuda" else (32, 64)  # 64 x 64 comparisons: no spills
    if FORCE_CONFIG and "align_block" in FORCE_CONFIG:
        block = FORCE_CONFIG["align_block"]
    return block, block_e


def align_triton(topk_ids, num_experts, block_m, expert_map):
    """Triton ``moe_align``: the arguments and results of :func:`leankern.moe.ref.align_ref` (bit-exact).

    Shape: topk_ids [T, k] int32 -> (sorted_slot_ids [S_max], expert_offsets [E + 1], block_expert_ids [B_max],
    num_kept [1]), int32, ``S_max, B_max = align_sizes(T * k, E, block_m)``.
    """
    dev = topk_ids.device
    S = topk_ids.numel()
    E = int(num_experts)
    s_max, b_max = align_sizes(S, E, block_m)
    i32 = dict(dtype=torch.int32, device=dev)
    sorted_ids = torch.full((s_max,), -1, **i32)
    offsets = torch.empty((E + 1,), **i32)
    blocks = torch.empty((b_max,), **i32)
    num_kept = torch.empty((1,), **i32)
    ids = topk_ids.contiguous().view(-1)
    mapped = torch.empty((max(S, 1),), **i32)  # workspaces: mapped ids, rank within the expert, counts
    rank = torch.empty((max(S, 1),), **i32)
    counts = torch.zeros((E,), **i32)
    block, block_e = align_config(dev)
    emap = expert_map.contiguous() if expert_map is not None else ids
    _align_count_kernel[(1,)](ids if S else mapped, emap if S else mapped, mapped, rank, counts, offsets, num_kept,
                              S, E, block_m, HAS_MAP=expert_map is not None, BLOCK=block,
                              BLOCK_E=min(block_e, max(16, triton.next_power_of_2(E))), **_opts(dev))
    grid = max(triton.cdiv(S, block), triton.cdiv(b_max, block))
    if grid:
        _align_scatter_kernel[(grid,)](mapped, rank, offsets, sorted_ids, blocks, S, E, b_max, block_m,
                                       max(1, E.bit_length()), BLOCK=block, **_opts(dev))
    return sorted_ids, offsets, blocks, num_kept


def _dot_kind(a: torch.dtype, b: torch.dtype, device: torch.device) -> int:
    """The native MMA when both operands are the same 16-bit dtype on a GPU; otherwise exact fp32 widening and
    the ieee fp32 dot (the interpreter's bf16 dot multiplies raw bit patterns)."""
    if device.type == "cuda" and a == b and a in (torch.bfloat16, torch.float16):
        return DOT_NATIVE
    return DOT_FP32


def _inter_dtype(w_down: torch.dtype) -> torch.dtype:
    """The intermediate is stored in the down projection's weight dtype (fp32 weights: fp32)."""
    return w_down if w_down in (torch.bfloat16, torch.float16) else torch.float32


def experts_config(T: int, k: int, E: int, dot: int, device: torch.device) -> dict:
    """Tiles of the grouped GEMMs. GPU: 64-row blocks (wgmma / tcgen05) once experts average >= 32 kept rows
    (prefill), 16-row blocks (mma.sync) below (decode: less padding, one weight pass per touched expert);
    BN = BK = 64 for the native MMA, BN 32 x BK 16 for the fp32 ieee dot (operands in registers: no spills).
    Interpreter: 16 x 16 x 16."""
    if device.type == "cuda":
        bm = 64 if T * k >= 32 * E else 16
        bn, bk = (64, 64) if dot == DOT_NATIVE else (32, 16)
        cfg = dict(block_m=bm, block_n=bn, block_k=bk, num_warps=4, num_stages=3, combine_block=256)
    else:
        cfg = dict(block_m=16, block_n=16, block_k=16, num_warps=4, num_stages=1, combine_block=32)
    if FORCE_CONFIG:
        cfg.update({key: v for key, v in FORCE_CONFIG.items() if key in cfg})
    return cfg


def _store_view(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def _split_gate_up(w13, b13, interleaved):
    """Strided views (no copy) of the gate and up rows of w13 [E, 2I, H] and of its bias."""
    I = w13.shape[1] // 2
    if interleaved:
        g, u = w13[:, 0::2, :], w13[:, 1::2, :]
        gb, ub = (b13[:, 0::2], b13[:, 1::2]) if b13 is not None else (None, None)
    else:
        g, u = w13[:, :I, :], w13[:, I:, :]
        gb, ub = (b13[:, :I], b13[:, I:]) if b13 is not None else (None, None)
    return g, u, gb, ub


def _run_expert_gemms(x, g, u, gb, ub, w2, b2, tw, sg, sorted_ids, block_ids, n_blocks, M, K_TOPK, out_rows,
                      act, alpha, limit, dense, cfg, dev, glog):
    """Gate/up (+ activation) then down (+ weight) over ``n_blocks`` row blocks; fills ``out_rows`` [*, H] fp32."""
    H = x.shape[1]
    I = g.shape[-2]
    bm, bn, bk = cfg["block_m"], cfg["block_n"], cfg["block_k"]
    dot1 = DOT_NATIVE if (_dot_kind(x.dtype, g.dtype, dev) == DOT_NATIVE and g.dtype == u.dtype) else DOT_FP32
    it = _inter_dtype(w2.dtype)
    inter = torch.empty((n_blocks * bm, I), dtype=it, device=dev)  # rows of the blocks (S_max rounded up)
    dot2 = _dot_kind(it, w2.dtype, dev)
    opts = _opts(dev, cfg["num_warps"], cfg["num_stages"])
    nan = bf16_nan_bits(dev.type)
    g3 = g if g.dim() == 3 else g.unsqueeze(0)
    u3 = u if u.dim() == 3 else u.unsqueeze(0)
    w23 = w2 if w2.dim() == 3 else w2.unsqueeze(0)
    has_bias = gb is not None
    gb2 = gb if gb is not None else x
    ub2 = ub if ub is not None else x
    _gate_up_kernel[(n_blocks, triton.cdiv(I, bn))](
        x, g3, u3, gb2, ub2, sg if sg is not None else x, sorted_ids, block_ids, _store_view(inter), glog,
        M, H, I, K_TOPK, x.stride(0), g3.stride(0), g3.stride(1), g3.stride(2), u3.stride(0), u3.stride(1),
        u3.stride(2), gb2.stride(0) if has_bias else 0, gb2.stride(1) if has_bias else 0,
        ub2.stride(0) if has_bias else 0, ub2.stride(1) if has_bias else 0, I, float(alpha), float(limit),
        BM=bm, BN=bn, BK=bk, DENSE=dense, ACT=act, HAS_BIAS=has_bias, HAS_GATE=sg is not None, DOT=dot1,
        OUT_KIND=output_kind(it), BF16_NAN=nan, LIBM=dev.type == "cuda", **opts)
    b2_ = b2 if b2 is not None else x
    _down_kernel[(n_blocks, triton.cdiv(H, bn))](
        inter, w23, b2_, sorted_ids, block_ids, tw, glog, out_rows, M, H, I, K_TOPK, I, w23.stride(0),
        w23.stride(1), w23.stride(2), b2_.stride(0) if b2 is not None else 0, out_rows.stride(0),
        BM=bm, BN=bn, BK=bk, DENSE=dense, HAS_BIAS=b2 is not None, HAS_GATE=sg is not None, DOT=dot2,
        LIBM=dev.type == "cuda", **opts)


def experts_triton(hidden, w13, w2, topk_ids, topk_weights, w13_bias=None, w2_bias=None, activation="silu",
                   swiglu_alpha=1.702, swiglu_limit=7.0, interleaved=False, shared_w1=None, shared_w3=None,
                   shared_w2=None, shared_gate=None):
    """Triton ``moe_experts``: the arguments and result of :func:`leankern.moe.ref.experts_ref`.

    Shape: hidden [T, H], w13 [E, 2I, H], w2 [E, H, I] (rows or columns contiguous), topk_ids / topk_weights
    [T, k] -> [T, H] in hidden's dtype.
    """
    T, H = hidden.shape
    E = w13.shape[0]
    K = topk_ids.shape[1]
    dev = hidden.device
    out = torch.empty((T, H), dtype=hidden.dtype, device=dev)
    if T == 0 or H == 0:
        return out
    x = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    act = 0 if activation == "silu" else 1
    dot = _dot_kind(x.dtype, w13.dtype, dev)
    cfg = experts_config(T, K, E, dot, dev)
    bm = cfg["block_m"]
    ids = topk_ids.contiguous()
    tw = topk_weights.contiguous()
    sorted_ids, _, block_ids, _ = align_triton(ids, E, bm, None)
    b_max = block_ids.shape[0]
    slot_rows = torch.empty((T * K, H), dtype=torch.float32, device=dev)  # written for kept slots only
    g, u, gb, ub = _split_gate_up(w13, w13_bias, interleaved)
    if b_max:
        _run_expert_gemms(x, g, u, gb, ub, w2, w2_bias, tw, None, sorted_ids, block_ids, b_max, T * K, K, slot_rows,
                          act, swiglu_alpha, swiglu_limit, False, cfg, dev, tw)
    shared = None
    if shared_w1 is not None:
        shared = torch.empty((T, H), dtype=torch.float32, device=dev)
        glog = torch.empty((T,), dtype=torch.float32, device=dev)
        sg = shared_gate.reshape(-1).contiguous() if shared_gate is not None else None
        w1 = shared_w1 if shared_w1.stride(-1) == 1 or shared_w1.stride(0) == 1 else shared_w1.contiguous()
        w3 = shared_w3 if shared_w3.stride(-1) == 1 or shared_w3.stride(0) == 1 else shared_w3.contiguous()
        ws2 = shared_w2 if shared_w2.stride(-1) == 1 or shared_w2.stride(0) == 1 else shared_w2.contiguous()
        scfg = experts_config(T, 1, 1, _dot_kind(x.dtype, w1.dtype, dev), dev)
        scfg["block_m"] = cfg["block_m"] if dev.type != "cuda" else (64 if T >= 64 else 16)
        _run_expert_gemms(x, w1, w3, None, None, ws2, None, tw, sg, sorted_ids, block_ids,
                          triton.cdiv(T, scfg["block_m"]), T, 1, shared, 0, 1.0, 1.0, True, scfg, dev, glog)
    _combine_kernel[(T, triton.cdiv(H, cfg["combine_block"]))](
        ids, slot_rows, shared if shared is not None else slot_rows, _store_view(out), H, K,
        HAS_SHARED=shared is not None, OUT_KIND=output_kind(out.dtype), BF16_NAN=bf16_nan_bits(dev.type),
        BLOCK=cfg["combine_block"], **_opts(dev))
    return out
