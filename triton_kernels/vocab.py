"""Triton kernels of the vocabulary-subset ops (VocabTailor), within the bounds of tests/tolerances.py.

The definitions are those of :mod:`leankern.vocab.ref`; every launcher takes exactly its op's arguments
(``leankern.vocab.ops`` has checked shapes, dtypes and the id range before a launcher runs).

* ``gather_lm_head``: one program per (tile of ``BLOCK_K`` ids, tile of ``BLOCK_B`` rows). The tile's
  ids are loaded once; the weight rows are read in place by pointer arithmetic (``w + id * stride``,
  never a gathered copy); the H loop multiplies the gathered rows ``[BLOCK_K, BLOCK_H]`` by the
  transposed hidden tile ``[BLOCK_H, BLOCK_B]`` with ``tl.dot`` into an fp32 ``[BLOCK_K, BLOCK_B]``
  accumulator. Why ids on the M side: decode batches are tiny; 64 ids fill an MMA's M (wgmma on
  sm_90) while the batch only has to pad N to 16 (masked rows). Per-row ids (``[B, K]``) run one
  row per program (N padded from 1 to 16: memory-bound, the MMA work is free). Epilogue in fp32:
  ``+ bias[id]``, ``c * tanh(z / c)`` (IEEE division), ``* scale``, padding -> ``-inf``, RNE cast
  to ``out_dtype``. ``log_softmax``: fp32 logits, then :func:`leankern.vocab.ref.log_softmax_rows`
  (torch ops on the device, no host sync).
* ``gather_lm_head_topk``: the same tile, then each logit becomes a unique int64 sort key
  ``(order-preserving int32 of the value) << 32 | (2^32 - 1 - position)``; each program keeps its
  tile's top ``min(k, BLOCK_K)`` keys per row (``tl.topk``, ``tl.max`` for k = 1) in a small
  workspace ``[B, n_tiles * kk]``, and the launcher merges with ``torch.topk`` on the keys. The keys
  are unique, so "ties -> lowest position" (the stable descending sort of the reference) holds by
  construction; -0.0 ranks as +0.0 and every NaN as the largest value (torch.sort's order). The
  ``[B, K]`` logits are not written (for ``k >= BLOCK_K`` the workspace holds every key).
* ``scatter_to_full``: ``torch.full`` of the output; a per-(ids row, column) int32 workspace
  ``last`` (``-1``) receives ``atomic_max(position)`` from every non-padding id (pass 1), then each
  position whose ``last`` entry is itself copies its value bits (pass 2): a repeated id keeps its
  last position, deterministically (no racing stores). Values move as integer bits (exact).
* ``logit_stats``: grid ``(B, SPLIT)``; each program streams its chunk of a row in blocks of
  ``BLOCK`` with per-lane online state (running max, ``sum e^(z-m)``, ``sum e^(z-m) (z-m)``,
  ``sum z``, max / lowest argmax, lowest NaN index, +inf flag); the lanes, then the chunks (a second
  kernel per row) are merged with max rescaling. ``z = x / t`` as torch computes it on the device:
  IEEE division on CPU (the interpreter), ``x * fl32(1 / fl32(t))`` on CUDA (torch's
  scalar-divisor kernel), so max / argmax are bit-exact with ``torch.max`` of the same ``z``.

Transcendentals: libdevice ``tanh`` / ``log`` when compiled (accurate to ~1-2 ulp); under the
interpreter (no libdevice) ``tanh`` comes from ``exp`` (absolute error < 4 ulp of 1, what the bound
allows) and ``log`` is NumPy's. Streaming ``exp`` is ``tl.exp`` (ex2.approx; its error is covered
by the gamma_V term of the logit-stats bounds).

Launchers create no tensor from host values and never synchronise (CUDA-graph capturable).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..vocab.ref import log_softmax_rows
from .mx import _store_f32, bf16_nan_bits, compile_options, output_kind

__all__ = ["gather_lm_head_triton", "gather_lm_head_topk_triton", "scatter_to_full_triton", "logit_stats_triton",
           "gather_config", "stats_config", "FORCE_CONFIG", "NUM_WARPS", "STATS_WARPS", "DOT_FP32", "DOT_NATIVE"]

NUM_WARPS = 4
STATS_WARPS = 8  # logit_stats chunk pass: 1024-id blocks at 4 per thread (8 state vectors per lane stay in registers)
DOT_FP32, DOT_NATIVE = 0, 1  # fp32 ieee dot (tiles widened, exact products) / the inputs' own MMA (bf16, fp16)
_IDX_NONE = tl.constexpr(2**31 - 1)  # "no index" in min-index reductions
_KEY_NONE = tl.constexpr(-(2**63))  # below every real sort key (tile rows past K)
# Tests / benches override tiles: {"block_k", "block_h", "block_b", "num_warps", "num_stages", "dot",
# "scatter_block", "stats_block", "stats_split"} (any subset)
FORCE_CONFIG: dict | None = None


# ------------------------------------------------------------------------------------ jit helpers
@triton.jit
def _tanh(x, LIBM: tl.constexpr):
    """tanh(x): libdevice when compiled; ``1 - 2 / (e^(2|x|) + 1)`` with the sign under the interpreter."""
    if LIBM:
        return libdevice.tanh(x)
    else:
        e = tl.exp(2.0 * tl.abs(x))  # inf for large |x|: 2 / inf = 0, t = 1
        t = 1.0 - tl.math.div_rn(tl.full(x.shape, 2.0, tl.float32), e + 1.0)
        return tl.where(x < 0, -t, t)


@triton.jit
def _log(x, LIBM: tl.constexpr):
    if LIBM:
        return libdevice.log(x)
    else:
        return tl.log(x)


@triton.jit
def _subset_logits(h_ptr, w_ptr, ids_ptr, bias_ptr, B, K, H, stride_h, stride_w, stride_ids, soft_cap, scale,
                   BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, PER_ROW: tl.constexpr,
                   HAS_BIAS: tl.constexpr, HAS_CAP: tl.constexpr, DOT: tl.constexpr, LIBM: tl.constexpr):
    """fp32 logits of this program's tile: ``(z [BLOCK_K, BLOCK_B], k [BLOCK_K], rows [BLOCK_B], row_ok [BLOCK_B])``.

    Column j of ``z`` is batch row ``rows[j]`` (valid where ``row_ok``), row i is position ``k[i]``;
    padding ids and positions past K hold ``-inf``.
    """
    kk = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    jb = tl.arange(0, BLOCK_B)
    if PER_ROW:  # one batch row per program: column 0 is real, the others pad the MMA's N
        rows = tl.program_id(1) + jb
        row_ok = jb == 0
        ids_row = ids_ptr + tl.program_id(1).to(tl.int64) * stride_ids
    else:
        rows = tl.program_id(1) * BLOCK_B + jb
        row_ok = rows < B
        ids_row = ids_ptr
    ids = tl.load(ids_row + kk, mask=kk < K, other=-1)
    valid = ids >= 0
    safe = tl.where(valid, ids, 0).to(tl.int64)
    w_rows = w_ptr + safe * stride_w  # [BLOCK_K] row starts: the gather is in the addresses
    h_rows = h_ptr + rows.to(tl.int64) * stride_h  # [BLOCK_B]
    acc = tl.zeros([BLOCK_K, BLOCK_B], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hh = h0 + tl.arange(0, BLOCK_H)
        hmask = hh < H
        w = tl.load(w_rows[:, None] + hh[None, :], mask=valid[:, None] & hmask[None, :], other=0.0)  # [BK, BH]
        x = tl.load(h_rows[:, None] + hh[None, :], mask=row_ok[:, None] & hmask[None, :], other=0.0)  # [BB, BH]
        if DOT == 1:
            acc = tl.dot(w, tl.trans(x), acc)
        else:
            acc = tl.dot(w.to(tl.float32), tl.trans(x.to(tl.float32)), acc, input_precision="ieee")
    z = acc
    if HAS_BIAS:
        z = z + tl.load(bias_ptr + safe, mask=valid, other=0.0).to(tl.float32)[:, None]
    if HAS_CAP:
        z = _tanh(tl.math.div_rn(z, soft_cap), LIBM) * soft_cap
    z = z * scale
    z = tl.where(valid[:, None], z, float("-inf"))
    return z, kk, rows, row_ok


@triton.jit
def _gather_kernel(h_ptr, w_ptr, ids_ptr, bias_ptr, out_ptr, B, K, H, stride_h, stride_w, stride_ids, stride_o,
                   soft_cap, scale, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                   PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CAP: tl.constexpr, DOT: tl.constexpr,
                   LIBM: tl.constexpr, OUT_KIND: tl.constexpr, BF16_NAN: tl.constexpr):
    """``out[b, k]`` (fp32 / bf16 bits / fp16) of this program's tile."""
    z, kk, rows, row_ok = _subset_logits(h_ptr, w_ptr, ids_ptr, bias_ptr, B, K, H, stride_h, stride_w, stride_ids,
                                         soft_cap, scale, BLOCK_K, BLOCK_B, BLOCK_H, PER_ROW, HAS_BIAS, HAS_CAP, DOT,
                                         LIBM)
    offs = rows.to(tl.int64)[None, :] * stride_o + kk[:, None]
    _store_f32(out_ptr, offs, z, (kk < K)[:, None] & row_ok[None, :], OUT_KIND, BF16_NAN)


@triton.jit
def _sort_keys(z, kk, K):
    """Unique int64 keys ordering (value desc, position asc): an order-preserving int32 of fp32 ``z`` (-0 -> +0,
    NaN -> the largest) above ``2^32 - 1 - k``; positions past K get the smallest key."""
    z = tl.where(z == 0.0, 0.0, z)
    b = z.to(tl.int32, bitcast=True)
    b = tl.where(z != z, 0x7FC00000, b)
    ordered = tl.where(b >= 0, b, b ^ 0x7FFFFFFF)
    key = (ordered.to(tl.int64) << 32) | (4294967295 - kk.to(tl.int64))[:, None]
    return tl.where((kk < K)[:, None], key, _KEY_NONE)


@triton.jit
def _topk_tile_kernel(h_ptr, w_ptr, ids_ptr, bias_ptr, cand_ptr, B, K, H, stride_h, stride_w, stride_ids, stride_c,
                      soft_cap, scale, KK, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                      KK_P2: tl.constexpr, PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CAP: tl.constexpr,
                      DOT: tl.constexpr, LIBM: tl.constexpr):
    """The tile's ``KK`` largest sort keys per row -> ``cand[b, tile * KK + j]`` (descending)."""
    z, kk, rows, row_ok = _subset_logits(h_ptr, w_ptr, ids_ptr, bias_ptr, B, K, H, stride_h, stride_w, stride_ids,
                                         soft_cap, scale, BLOCK_K, BLOCK_B, BLOCK_H, PER_ROW, HAS_BIAS, HAS_CAP, DOT,
                                         LIBM)
    keys = tl.trans(_sort_keys(z, kk, K))  # [BLOCK_B, BLOCK_K]
    base = cand_ptr + rows.to(tl.int64) * stride_c + tl.program_id(0) * KK  # [BLOCK_B]
    if KK_P2 == 1:
        tl.store(base, tl.max(keys, axis=1), mask=row_ok)
    else:
        if KK_P2 < BLOCK_K:
            top = tl.topk(keys, KK_P2)  # [BLOCK_B, KK_P2], largest first
        else:
            top = keys  # the whole tile is a candidate (KK == BLOCK_K)
        j = tl.arange(0, KK_P2)
        tl.store(base[:, None] + j[None, :], top, mask=row_ok[:, None] & (j < KK)[None, :])


@triton.jit
def _scatter_last_kernel(ids_ptr, stride_ids, last_ptr, stride_last, K, BLOCK: tl.constexpr):
    """Pass 1: ``last[r, id] = max position of id`` over row r of the ids (``stride_ids = 0``: one row)."""
    kk = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    r = tl.program_id(1).to(tl.int64)
    ids = tl.load(ids_ptr + r * stride_ids + kk, mask=kk < K, other=-1)
    ok = ids >= 0
    # relaxed: pass 2 is a later launch on the same stream, which orders it after every update here
    tl.atomic_max(last_ptr + r * stride_last + tl.where(ok, ids, 0), kk, mask=ok, sem="relaxed")


@triton.jit
def _scatter_write_kernel(src_ptr, stride_s, ids_ptr, stride_ids, last_ptr, stride_last, out_ptr, stride_o, K,
                          PER_ROW: tl.constexpr, BLOCK: tl.constexpr):
    """Pass 2: each position that is its id's last one copies its value bits into ``out[b, id]``."""
    kk = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    b = tl.program_id(1).to(tl.int64)
    if PER_ROW:
        r = b
    else:
        r = b * 0
    ids = tl.load(ids_ptr + r * stride_ids + kk, mask=kk < K, other=-1)
    ok = ids >= 0
    safe = tl.where(ok, ids, 0)
    win = ok & (tl.load(last_ptr + r * stride_last + safe, mask=ok, other=-1) == kk)
    v = tl.load(src_ptr + b * stride_s + kk, mask=win, other=0)
    tl.store(out_ptr + b * stride_o + safe, v, mask=win)


@triton.jit
def _scaled(x, t, inv_t, TEMP: tl.constexpr):
    """``z = x / t`` as torch computes it on the device: TEMP 0 none, 1 IEEE division (CPU), 2 ``x * inv_t`` (CUDA)."""
    x = x.to(tl.float32)
    if TEMP == 1:
        x = tl.math.div_rn(x, t)
    elif TEMP == 2:
        x = x * inv_t
    return x


@triton.jit
def _merge_sums(m, s, q):
    """Max-rescaled merge of online partials (``m`` max, ``s = sum e^(z-m)``, ``q = sum e^(z-m) (z-m)``) along
    axis 0 -> scalars ``(M, S, Q)``; partials with ``m = -inf`` hold nothing."""
    M = tl.max(m, axis=0)
    live = m > float("-inf")
    shift = tl.where(live, m - M, 0.0)
    a = tl.where(live, tl.exp(shift), 0.0)
    return M, tl.sum(a * s, axis=0), tl.sum(a * (q + s * shift), axis=0)


@triton.jit
def _stats_partial_kernel(x_ptr, stride_x, V, CH, t, inv_t, pf_ptr, pi_ptr, R, TEMP: tl.constexpr,
                          BLOCK: tl.constexpr):
    """One (row, chunk): online partials -> ``pf[0..4, p]`` (M, S, Q, sum z, best non-NaN value) and
    ``pi[0..2, p]`` (its lowest index, lowest NaN index, any +inf), ``p = row * SPLIT + chunk``."""
    row = tl.program_id(0).to(tl.int64)
    sp = tl.program_id(1)
    base = x_ptr + row * stride_x
    lm = tl.full([BLOCK], float("-inf"), tl.float32)  # lane max of the finite / -inf values
    ls = tl.zeros([BLOCK], dtype=tl.float32)
    lq = tl.zeros([BLOCK], dtype=tl.float32)
    lsum = tl.zeros([BLOCK], dtype=tl.float32)
    bv = tl.full([BLOCK], float("-inf"), tl.float32)
    bi = tl.full([BLOCK], _IDX_NONE, tl.int32)
    nan_i = tl.full([BLOCK], _IDX_NONE, tl.int32)
    pinf = tl.zeros([BLOCK], dtype=tl.int32)
    for k in range(sp * CH, sp * CH + CH, BLOCK):  # CH is a multiple of BLOCK; the row's tail is masked
        offs = k + tl.arange(0, BLOCK)
        mask = offs < V
        z = _scaled(tl.load(base + offs, mask=mask, other=float("-inf")), t, inv_t, TEMP)
        isnan = z != z
        nan_i = tl.minimum(nan_i, tl.where(isnan & mask, offs, _IDX_NONE))
        pinf = pinf | (z == float("inf")).to(tl.int32)
        lsum += tl.where(mask, z, 0.0)
        zn = tl.where(isnan, float("-inf"), z)
        upd = mask & ((zn > bv) | (bi == _IDX_NONE))  # strict: the lane keeps its first (lowest) index
        bv = tl.where(upd, zn, bv)
        bi = tl.where(upd, offs, bi)
        zf = tl.where(zn == float("inf"), float("-inf"), zn)  # +inf / NaN rows are flagged, not summed
        m_new = tl.maximum(lm, zf)
        old = lm > float("-inf")
        shift = tl.where(old, lm - m_new, 0.0)
        alpha = tl.where(old, tl.exp(shift), 0.0)
        d = zf - m_new
        e = tl.where(zf > float("-inf"), tl.exp(d), 0.0)
        lq = alpha * (lq + ls * shift) + tl.where(e > 0.0, e * d, 0.0)
        ls = alpha * ls + e
        lm = m_new
    M, S, Q = _merge_sums(lm, ls, lq)
    best = tl.max(bv, axis=0)
    p = row * tl.num_programs(1) + sp
    tl.store(pf_ptr + p, M)
    tl.store(pf_ptr + R + p, S)
    tl.store(pf_ptr + 2 * R + p, Q)
    tl.store(pf_ptr + 3 * R + p, tl.sum(lsum, axis=0))
    tl.store(pf_ptr + 4 * R + p, best)
    tl.store(pi_ptr + p, tl.min(tl.where(bv == best, bi, _IDX_NONE), axis=0))
    tl.store(pi_ptr + R + p, tl.min(nan_i, axis=0))
    tl.store(pi_ptr + 2 * R + p, tl.max(pinf, axis=0))


@triton.jit
def _stats_final_kernel(x_ptr, stride_x, v_f, t, inv_t, log_v, pf_ptr, pi_ptr, R, SPLIT, mx_ptr, am_ptr, lse_ptr,
                        ent_ptr, cert_ptr, TEMP: tl.constexpr, SPLIT_P2: tl.constexpr, LIBM: tl.constexpr):
    """One row: merge its SPLIT partials; ``max`` is re-read at the argmax (the exact bits torch reports)."""
    row = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, SPLIT_P2)
    live = i < SPLIT
    p = row * SPLIT + i
    M, S, Q = _merge_sums(tl.load(pf_ptr + p, mask=live, other=float("-inf")),
                          tl.load(pf_ptr + R + p, mask=live, other=0.0),
                          tl.load(pf_ptr + 2 * R + p, mask=live, other=0.0))
    sum_z = tl.sum(tl.load(pf_ptr + 3 * R + p, mask=live, other=0.0), axis=0)
    bv = tl.load(pf_ptr + 4 * R + p, mask=live, other=float("-inf"))
    best = tl.max(bv, axis=0)
    idx = tl.min(tl.where(live & (bv == best), tl.load(pi_ptr + p, mask=live, other=_IDX_NONE), _IDX_NONE), axis=0)
    nan_idx = tl.min(tl.load(pi_ptr + R + p, mask=live, other=_IDX_NONE), axis=0)
    has_nan = nan_idx < _IDX_NONE
    pos_inf = tl.max(tl.load(pi_ptr + 2 * R + p, mask=live, other=0), axis=0)  # 1: some z = +inf
    valid = (nan_idx == _IDX_NONE) & (pos_inf == 0) & (M > float("-inf"))
    am = tl.where(has_nan, nan_idx, idx)
    mx = _scaled(tl.load(x_ptr + row * stride_x + am), t, inv_t, TEMP)
    ln_s = _log(tl.where(valid, S, 1.0), LIBM)
    lse = tl.where(valid, M + ln_s, tl.where(has_nan, float("nan"), tl.where(pos_inf > 0, float("inf"), float("-inf"))))
    ent = ln_s - tl.math.div_rn(Q, tl.where(valid, S, 1.0))
    cert = lse - tl.math.div_rn(sum_z, v_f) - log_v
    tl.store(mx_ptr + row, mx)
    tl.store(am_ptr + row, am.to(tl.int64))
    tl.store(lse_ptr + row, lse)
    tl.store(ent_ptr + row, tl.where(valid, ent, float("nan")))
    tl.store(cert_ptr + row, tl.where(valid, cert, float("nan")))


# ------------------------------------------------------------------------------------ launch configs
@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sms(device: torch.device) -> int:
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def _dot_kind(h_dtype: torch.dtype, w_dtype: torch.dtype, device_type: str) -> int:
    """The inputs' own MMA when both are fp16, or both bf16 on a GPU (the interpreter's bf16 dot multiplies raw
    bit patterns); otherwise fp32 ieee (mixed dtypes, fp32)."""
    if h_dtype == w_dtype == torch.float16 or (h_dtype == w_dtype == torch.bfloat16 and device_type != "cpu"):
        return DOT_NATIVE
    return DOT_FP32


def gather_config(B: int, K: int, H: int, h_dtype: torch.dtype, w_dtype: torch.dtype, per_row: bool,
                  device: torch.device) -> dict:
    """Tiles and launch options of the gather / top-k kernels (constexprs + ``num_warps`` / ``num_stages``).

    GPU: 64 ids x 16..64 rows per program (ids on the MMA's M side), H in steps of 64 (native dot) or 32
    (fp32 ieee dot: its operands live in registers); 32-id tiles when 64-id tiles would leave SMs idle.
    Interpreter: 16 x 16 x <= 32.
    """
    dot = _dot_kind(h_dtype, w_dtype, device.type)  # h_dtype: as passed to the kernel
    block_b = 16 if per_row else min(64, max(16, triton.next_power_of_2(max(B, 1))))
    if device.type == "cuda":
        block_k, block_h = 64, 64 if dot == DOT_NATIVE else 32
        tiles_b = B if per_row else triton.cdiv(B, block_b)
        if triton.cdiv(K, block_k) * tiles_b < _sms(device):
            block_k = 32
        cfg = dict(block_k=block_k, block_h=block_h, block_b=block_b, num_warps=NUM_WARPS, num_stages=3, dot=dot)
    else:
        cfg = dict(block_k=16, block_h=min(32, max(16, triton.next_power_of_2(max(H, 1)))), block_b=block_b,
                   num_warps=NUM_WARPS, num_stages=1, dot=dot)
    if FORCE_CONFIG:
        cfg.update({k: v for k, v in FORCE_CONFIG.items() if k in cfg})
    return cfg


def stats_config(B: int, V: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK, CH, SPLIT) of logit_stats: rows split into chunks until about 4 programs per SM run (GPU)."""
    if device.type == "cuda":
        block = 1024  # 4 per thread at 8 warps: a 128-bit load (fp32) / 64-bit (bf16, fp16)
        split = max(1, min(triton.cdiv(4 * _sms(device), max(B, 1)), triton.cdiv(V, 2 * block)))  # chunks >= 2 blocks
    else:
        block, split = min(1024, max(16, triton.next_power_of_2(V))), 1
    if FORCE_CONFIG:
        block, split = FORCE_CONFIG.get("stats_block", block), FORCE_CONFIG.get("stats_split", split)
    ch = triton.cdiv(triton.cdiv(V, split), block) * block
    return block, ch, triton.cdiv(V, ch)


# ------------------------------------------------------------------------------------ launchers
def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.shape[-1] <= 1 or x.stride(-1) == 1 else x.contiguous()


def _head_args(hidden, weight, vocab_ids, bias, soft_cap, scale):
    """Common kernel arguments ``(tensors, ints, scalars, constexprs, B, K, per_row)`` of the gather kernels."""
    B, H = hidden.shape
    per_row = vocab_ids.dim() == 2
    K = vocab_ids.shape[-1]
    if _dot_kind(hidden.dtype, weight.dtype, hidden.device.type) == DOT_FP32 and hidden.dtype != torch.float32:
        hidden = hidden.float()  # exact and tiny ([B, H]); widened in-kernel next to fp32 rows it costs 4x registers
    hidden, ids = _rows_contiguous(hidden), vocab_ids.contiguous()
    bias_t = bias.contiguous() if bias is not None else ids  # dummy pointer when HAS_BIAS is False
    tensors = (hidden, weight, ids, bias_t)
    ints = (B, K, H, hidden.stride(0), weight.stride(0), K if per_row else 0)
    scalars = (float(soft_cap) if soft_cap is not None else 1.0, float(scale))
    ce = dict(PER_ROW=per_row, HAS_BIAS=bias is not None, HAS_CAP=soft_cap is not None,
              LIBM=hidden.device.type == "cuda")
    return tensors, ints, scalars, ce, B, K, per_row


def _launch_opts(cfg: dict, device: torch.device) -> dict:
    opts = dict(num_warps=cfg["num_warps"], **compile_options(device))
    if device.type == "cuda":
        opts["num_stages"] = cfg["num_stages"]
    return opts


_GRID_Y_MAX = 65535  # CUDA's limit on grid axes 1 and 2 (axis 0 allows 2^31 - 1)


def _row_chunks(B: int, rows_per_program: int) -> list:
    """``[r0, r1)`` row ranges, one launch each, whose programs fit grid axis 1 (the row axis of the gather, top-k
    and scatter kernels): B = 65,536 rows with per-row ids would otherwise fail to launch."""
    step = _GRID_Y_MAX * rows_per_program
    return [(r0, min(B, r0 + step)) for r0 in range(0, B, step)]


def _sl(t: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Rows ``[r0, r1)`` of ``t``; ``t`` itself when that is all of it (the one-launch case: a slice costs ~1 us)."""
    return t if r0 == 0 and r1 == t.shape[0] else t[r0:r1]


def _rows_of(tensors, ints, r0: int, r1: int, per_row: bool):
    """The gather kernels' ``tensors`` / ``ints`` (of :func:`_head_args`) for rows ``[r0, r1)``."""
    hidden, weight, ids, bias_t = tensors
    if r0 == 0 and r1 == hidden.shape[0]:
        return tensors, ints
    return (hidden[r0:r1], weight, ids[r0:r1] if per_row else ids, bias_t), (r1 - r0,) + tuple(ints[1:])


def gather_lm_head_triton(hidden, weight, vocab_ids, bias, soft_cap, scale, out_dtype, log_softmax):
    """Triton ``vocab_gather_lm_head``: the arguments and result of :func:`leankern.vocab.ref.gather_lm_head_ref`.

    Shape: hidden [B, H], weight [V, H] (rows contiguous), vocab_ids [K] or [B, K] int32 (-1 = padding),
    bias [V] or None -> [B, K] in out_dtype (fp32 when None).
    """
    dev = hidden.device
    tensors, ints, scalars, ce, B, K, per_row = _head_args(hidden, weight, vocab_ids, bias, soft_cap, scale)
    final = torch.float32 if out_dtype is None else out_dtype
    store = torch.float32 if log_softmax else final  # log-softmax: fp32 logits first
    out = torch.empty((B, K), dtype=store, device=dev)
    if B and K:
        cfg = gather_config(B, K, tensors[0].shape[1], tensors[0].dtype, weight.dtype, per_row, dev)
        out_arg = out.view(torch.int16) if store == torch.bfloat16 else out
        for r0, r1 in _row_chunks(B, 1 if per_row else cfg["block_b"]):
            t, i = _rows_of(tensors, ints, r0, r1, per_row)
            grid = (triton.cdiv(K, cfg["block_k"]), r1 - r0 if per_row else triton.cdiv(r1 - r0, cfg["block_b"]))
            _gather_kernel[grid](*t, _sl(out_arg, r0, r1), *i, K, *scalars, BLOCK_K=cfg["block_k"],
                                 BLOCK_B=cfg["block_b"], BLOCK_H=cfg["block_h"], DOT=cfg["dot"],
                                 OUT_KIND=output_kind(store), BF16_NAN=bf16_nan_bits(dev.type), **ce,
                                 **_launch_opts(cfg, dev))
    if log_softmax:
        out = log_softmax_rows(out).to(final)
    return out


def _decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort keys (int64) -> (fp32 values, int64 positions): the inverse of the kernel's ``_sort_keys``."""
    hi = (keys >> 32).to(torch.int32)
    bits = torch.where(hi >= 0, hi, hi ^ 0x7FFFFFFF)
    return bits.view(torch.float32), 0xFFFFFFFF - (keys & 0xFFFFFFFF)


def gather_lm_head_topk_triton(hidden, weight, vocab_ids, bias, soft_cap, scale, k):
    """Triton ``vocab_gather_lm_head_topk``: the arguments and results of
    :func:`leankern.vocab.ref.gather_lm_head_topk_ref`.

    Shape: as :func:`gather_lm_head_triton`, ``1 <= k <= K`` -> (values fp32 [B, k], global ids int64 [B, k]).
    """
    dev = hidden.device
    tensors, ints, scalars, ce, B, K, per_row = _head_args(hidden, weight, vocab_ids, bias, soft_cap, scale)
    if B == 0:
        return torch.empty((0, k), dtype=torch.float32, device=dev), torch.empty((0, k), dtype=torch.int64, device=dev)
    cfg = gather_config(B, K, tensors[0].shape[1], tensors[0].dtype, weight.dtype, per_row, dev)
    tiles = triton.cdiv(K, cfg["block_k"])
    # a power of two, so that a tile keeps its kk largest keys through tl.topk (kk < block_k) or is kept whole
    # (kk == block_k): with k = 50 and 64-id tiles, a kk of 50 stored the tile's first 50 keys, not its largest
    kk = min(triton.next_power_of_2(k), cfg["block_k"])
    cand = torch.empty((B, tiles * kk), dtype=torch.int64, device=dev)  # [B, tiles * kk] per-tile top keys
    for r0, r1 in _row_chunks(B, 1 if per_row else cfg["block_b"]):
        t, i = _rows_of(tensors, ints, r0, r1, per_row)
        grid = (tiles, r1 - r0 if per_row else triton.cdiv(r1 - r0, cfg["block_b"]))
        _topk_tile_kernel[grid](*t, _sl(cand, r0, r1), *i, cand.stride(0), *scalars, kk, BLOCK_K=cfg["block_k"],
                                BLOCK_B=cfg["block_b"], BLOCK_H=cfg["block_h"], KK_P2=kk, DOT=cfg["dot"], **ce,
                                **_launch_opts(cfg, dev))
    keys = torch.topk(cand, k, dim=1).values  # [B, k] descending; the keys are unique: no tie to break
    values, pos = _decode_keys(keys)
    ids = vocab_ids.long()
    gids = ids[pos] if ids.dim() == 1 else ids.gather(1, pos)
    return values.contiguous(), gids.contiguous()


_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_SCATTER_BLOCK = 1024


def scatter_to_full_triton(logits, vocab_ids, V, fill):
    """Triton ``vocab_scatter_to_full``: the arguments and result of :func:`leankern.vocab.ref.scatter_to_full_ref`.

    Shape: logits [B, K], vocab_ids [K] or [B, K] int32 (-1 writes nothing; a repeated id keeps its last
    position's value) -> [B, V] in logits' dtype.
    """
    B, K = logits.shape
    dev = logits.device
    out = torch.full((B, V), fill, dtype=logits.dtype, device=dev)
    if B == 0 or K == 0:
        return out
    per_row = vocab_ids.dim() == 2
    ids = vocab_ids.contiguous()
    src = _rows_contiguous(logits)
    bits = _BITS[logits.element_size()]
    last = torch.full((B if per_row else 1, V), -1, dtype=torch.int32, device=dev)  # [rows of ids, V] positions
    block = min(_SCATTER_BLOCK, max(16, triton.next_power_of_2(K)))
    if FORCE_CONFIG and "scatter_block" in FORCE_CONFIG:
        block = FORCE_CONFIG["scatter_block"]
    tiles = triton.cdiv(K, block)
    opts = dict(num_warps=NUM_WARPS, **compile_options(dev))
    for r0, r1 in _row_chunks(last.shape[0], 1):  # last: [B, V] with per-row ids, else [1, V]
        _scatter_last_kernel[(tiles, r1 - r0)](_sl(ids, r0, r1) if per_row else ids, K if per_row else 0,
                                               _sl(last, r0, r1), V, K, BLOCK=block, **opts)
    src_bits, out_bits = src.view(bits), out.view(bits)
    for r0, r1 in _row_chunks(B, 1):  # ids / last: per-row, or the one shared row
        ids_c, last_c = (_sl(ids, r0, r1), _sl(last, r0, r1)) if per_row else (ids, last)
        _scatter_write_kernel[(tiles, r1 - r0)](_sl(src_bits, r0, r1), src.stride(0), ids_c, K if per_row else 0,
                                                last_c, V, _sl(out_bits, r0, r1), V, K, PER_ROW=per_row,
                                                BLOCK=block, **opts)
    return out


def logit_stats_triton(logits, temperature):
    """Triton ``vocab_logit_stats``: the arguments and results of :func:`leankern.vocab.ref.logit_stats_ref`.

    Shape: logits [B, V] -> (max fp32 [B], argmax int64 [B], logsumexp fp32 [B], entropy fp32 [B],
    self_certainty fp32 [B]).
    """
    B, V = logits.shape
    dev = logits.device
    f32 = dict(dtype=torch.float32, device=dev)
    outs = (torch.empty(B, **f32), torch.empty(B, dtype=torch.int64, device=dev), torch.empty(B, **f32),
            torch.empty(B, **f32), torch.empty(B, **f32))
    if B == 0:
        return outs
    x = _rows_contiguous(logits)
    block, ch, split = stats_config(B, V, dev)
    R = B * split
    pf = torch.empty(5 * R, **f32)  # M, S, Q, sum z, best value per (row, chunk)
    pi = torch.empty(3 * R, dtype=torch.int32, device=dev)  # argmax, first NaN, any +inf
    t32 = np.float32(temperature)
    temp = 0 if temperature == 1.0 else (2 if dev.type == "cuda" else 1)
    inv_t = float(np.float32(1.0) / t32)  # torch's CUDA x / t is x * fl32(1 / fl32(t))
    opts = dict(num_warps=NUM_WARPS, **compile_options(dev))
    _stats_partial_kernel[(B, split)](x, x.stride(0), V, ch, float(t32), inv_t, pf, pi, R, TEMP=temp, BLOCK=block,
                                      **dict(opts, num_warps=STATS_WARPS))
    log_v = float(np.float32(np.log(V)))
    _stats_final_kernel[(B,)](x, x.stride(0), float(V), float(t32), inv_t, log_v, pf, pi, R, split, *outs, TEMP=temp,
                              SPLIT_P2=triton.next_power_of_2(split), LIBM=dev.type == "cuda", **opts)
    return outs
