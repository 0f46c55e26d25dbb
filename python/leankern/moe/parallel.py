"""Expert parallelism over ``torch.distributed``: each rank holds some experts; kept (token, expert) pairs travel.

Every rank of a process group holds ``E_local`` of the ``E`` routed experts (:func:`expert_map`: global id ->
local id, -1 = not on this rank) and its own tokens. :func:`ep_moe_forward` runs one MoE layer's routed experts:

1. **dispatch**: each *kept* slot (id >= 0) of this rank's ``topk_ids`` becomes a pair (hidden row, global id,
   routing weight) sent to the rank owning the expert; a skipped slot (-1, MoDES) is never sent. Pairs are
   ordered by destination rank, then by slot ``t * k + j`` ascending.
2. **expert compute**: the receiving rank maps the global ids through its ``expert_map`` and runs
   :func:`leankern.moe.experts` on the received pairs (one slot per row, local ids): only its own experts'
   weights are read, the routing weight is applied there (the kernels' down-projection epilogue).
3. **combine**: the results go back the same way, in hidden's dtype (each pair's weighted expert output is rounded
   to it once, on the expert's rank); the origin sums a token's slots in slot order ``j = 0 .. k-1``
   (fp32, one ``index_add_`` per slot index, each token at most once per call: deterministic on CPU and CUDA, and
   independent of the placement and the world size), adds the shared expert (computed locally, never
   dispatched, also returned in hidden's dtype) and casts to hidden's dtype.

Communication. The exchange needs the split sizes on the host: counts are exchanged first (one small collective),
then ``(hidden rows, [id, weight])`` out and the results back, so a forward synchronises with the host (not
CUDA-graph capturable; a static-buffer design such as DeepEP's is out of scope). Two methods:

* ``"all_to_all"``: ``torch.distributed.all_to_all_single`` with uneven splits, for counts and payloads. This is
  what **NCCL** runs (the production choice on GPUs: one fused collective per exchange, tensors on the GPU);
  Gloo supports it too in current PyTorch (checked on 2.13, CPU tensors, uneven and empty splits).
* ``"p2p"``: ``all_gather`` of the count vectors, then one ``isend`` / ``irecv`` pair per peer with a non-empty
  segment (``batch_isend_irecv``) and a local copy for this rank's own segment: for backends or older PyTorch
  versions whose Gloo lacks all-to-all.

``"auto"`` picks ``"all_to_all"`` for the nccl, gloo, mpi, ucc and xccl backends, ``"p2p"`` otherwise.

Every rank of the group must call :func:`ep_moe_forward` the same number of times (each call is a sequence of
collectives), even with zero tokens. Argument errors (tokens, ids, weights, the local experts and every expert
keyword argument, ``expert_map``, ``owner`` and its agreement with this rank's ``expert_map``) are raised before any
collective, on the rank that has them; the other ranks then block until the group's timeout
(``init_process_group(timeout=...)``).

Numerics: with fp32 ``hidden`` the result is :func:`leankern.moe.experts`'s up to summation order. With bf16 / fp16
``hidden`` it is not that close: the combine payload is in hidden's dtype (see below), so each kept pair's output is
rounded to it before the fp32 sum, and so is the shared expert's output before it is added: up to ``k + 1``
roundings to hidden's dtype more than :func:`leankern.moe.experts` (which rounds the fp32 sum once).

Payload per remote pair: dispatch ``H * hidden.element_size() + 8`` bytes (row, int32 id, fp32 weight), combine
``H * hidden.element_size()`` bytes; :class:`DispatchStats` counts them. A token routed to several experts of the
same rank is sent once per pair (no per-rank de-duplication yet).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional

import torch
import torch.distributed as dist

__all__ = ["expert_map", "expert_owner", "gather_expert_owner", "ep_moe_forward", "DispatchStats", "EPMoE",
           "PLACEMENTS", "EXCHANGES"]

PLACEMENTS = ("contiguous", "round_robin")
EXCHANGES = ("auto", "all_to_all", "p2p")
_A2A_BACKENDS = ("nccl", "gloo", "mpi", "ucc", "xccl")
_ROUTED_KWARGS = ("w13_bias", "w2_bias", "activation", "swiglu_alpha", "swiglu_limit", "interleaved")
_SHARED_KWARGS = ("shared_w1", "shared_w3", "shared_w2", "shared_gate")


# --------------------------------------------------------------------------------------- placement
def _check_placement(num_experts: int, world_size: int, placement: str) -> None:
    if int(num_experts) != num_experts or num_experts < 1:
        raise ValueError(f"num_experts: expected an integer >= 1, got {num_experts!r}")
    if int(world_size) != world_size or world_size < 1:
        raise ValueError(f"world_size: expected an integer >= 1, got {world_size!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement: expected one of {PLACEMENTS}, got {placement!r}")


def expert_owner(num_experts: int, world_size: int, placement: str = "contiguous"):
    """``(owner [E] int32, local_id [E] int32)``: the rank holding each global expert and its id there.

    ``"contiguous"``: rank r holds a contiguous range, the first ``E % W`` ranks one expert more than the others
    (``E // W`` each otherwise); ``"round_robin"``: expert e on rank ``e % W`` with local id ``e // W``.
    A rank may hold no expert (``W > E``).
    """
    _check_placement(num_experts, world_size, placement)
    e = torch.arange(int(num_experts))
    if placement == "round_robin":
        return (e % world_size).to(torch.int32), (e // world_size).to(torch.int32)
    base, extra = divmod(int(num_experts), int(world_size))
    sizes = torch.tensor([base + (1 if r < extra else 0) for r in range(world_size)])
    owner = torch.repeat_interleave(torch.arange(world_size), sizes)
    starts = torch.cumsum(sizes, 0) - sizes
    return owner.to(torch.int32), (e - starts[owner]).to(torch.int32)


def expert_map(num_experts: int, rank: int, world_size: int, placement: str = "contiguous") -> torch.Tensor:
    """``[E]`` int32: global expert id -> local id on ``rank`` (-1: held by another rank). See :func:`expert_owner`.

    Rank r's local weights are ``w13[global ids with map >= 0]`` in local-id order, e.g.
    ``w13[(m >= 0).nonzero()[m[m >= 0].argsort()]]``; for both placements local ids follow the global order, so
    ``w13[m >= 0]`` is it.
    """
    _check_placement(num_experts, world_size, placement)
    if int(rank) != rank or not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size = {world_size}, got {rank!r}")
    owner, local = expert_owner(num_experts, world_size, placement)
    return torch.where(owner == rank, local, torch.full_like(local, -1))


def _validate_map(emap: torch.Tensor, name: str = "expert_map") -> None:
    if not isinstance(emap, torch.Tensor) or emap.dim() != 1 or emap.dtype != torch.int32:
        got = f"{tuple(emap.shape)} {emap.dtype}" if isinstance(emap, torch.Tensor) else type(emap).__name__
        raise ValueError(f"{name}: expected a 1-D int32 tensor [E] (global -> local id, -1 = elsewhere), got {got}")


def gather_expert_owner(expert_map: torch.Tensor, group=None) -> torch.Tensor:
    """``owner [E]`` int32 from every rank's ``expert_map`` (one ``all_gather``; collective: all ranks call it).

    Raises ``ValueError`` unless every expert is held by exactly one rank and each rank's local ids are distinct.
    """
    _validate_map(expert_map)
    W = dist.get_world_size(group)
    maps = [torch.empty_like(expert_map) for _ in range(W)]
    dist.all_gather(maps, expert_map.contiguous(), group=group)
    m = torch.stack(maps).cpu()  # [W, E]
    held = (m >= 0).sum(0)
    if (held != 1).any():
        e = int(torch.nonzero(held != 1)[0])
        raise ValueError(f"expert_map: expert {e} is held by {int(held[e])} ranks; every expert must be held by "
                         f"exactly one rank of the group")
    for r in range(W):
        ids = m[r][m[r] >= 0]
        if ids.unique().numel() != ids.numel():
            raise ValueError(f"expert_map: rank {r} maps two global experts to the same local id")
    return (m >= 0).int().argmax(0).to(torch.int32).to(expert_map.device)


# ----------------------------------------------------------------------------------------- stats
@dataclasses.dataclass
class DispatchStats:
    """What one :func:`ep_moe_forward` call moved, seen from this rank.

    kept_pairs, skipped_slots : this rank's slots with id >= 0 / id -1 (``kept + skipped = T * k``).
    pairs_to[d], pairs_from[d] : pairs this rank dispatched to / received from rank d (index ``rank``: its own,
        not communicated).
    remote_pairs_sent, remote_pairs_received : sums over the other ranks.
    dispatch_bytes_sent / _received, combine_bytes_sent / _received : payload bytes to / from other ranks.
    method : the exchange used (``"all_to_all"`` or ``"p2p"``).
    """

    rank: int
    world_size: int
    kept_pairs: int
    skipped_slots: int
    pairs_to: List[int]
    pairs_from: List[int]
    remote_pairs_sent: int
    remote_pairs_received: int
    dispatch_bytes_sent: int
    dispatch_bytes_received: int
    combine_bytes_sent: int
    combine_bytes_received: int
    method: str


# -------------------------------------------------------------------------------------- exchange
def _offsets(counts: List[int]) -> List[int]:
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return out


def _exchange(send: torch.Tensor, send_counts: List[int], recv_counts: List[int], group, method: str, rank: int,
              tag: int) -> torch.Tensor:
    """Rows ``send[segment d]`` go to rank d; returns the rows received, grouped by source rank."""
    send = send.contiguous()
    out = send.new_empty((sum(recv_counts),) + tuple(send.shape[1:]))
    if method == "all_to_all":
        dist.all_to_all_single(out, send, recv_counts, send_counts, group=group)
        return out
    so, ro = _offsets(send_counts), _offsets(recv_counts)
    ops = []
    for d in range(len(send_counts)):
        if d == rank:
            out[ro[d]:ro[d + 1]] = send[so[d]:so[d + 1]]
            continue
        peer = d if group is None else dist.get_global_rank(group, d)
        if send_counts[d]:
            ops.append(dist.P2POp(dist.isend, send[so[d]:so[d + 1]], peer, group, tag))
        if recv_counts[d]:
            ops.append(dist.P2POp(dist.irecv, out[ro[d]:ro[d + 1]], peer, group, tag))
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    return out


def _exchange_counts(send_counts: torch.Tensor, group, method: str, rank: int, W: int) -> List[int]:
    """``recv_counts[s]`` = pairs rank s sends here, from every rank's ``send_counts [W]`` int64."""
    if method == "all_to_all":
        recv = torch.empty_like(send_counts)
        dist.all_to_all_single(recv, send_counts, group=group)
        return recv.tolist()
    allc = [torch.empty_like(send_counts) for _ in range(W)]
    dist.all_gather(allc, send_counts, group=group)
    return [int(c[rank]) for c in allc]


def _resolve_method(exchange: str, group) -> str:
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange: expected one of {EXCHANGES}, got {exchange!r}")
    if exchange != "auto":
        return exchange
    backend = str(dist.get_backend(group)).lower()
    return "all_to_all" if any(b in backend for b in _A2A_BACKENDS) else "p2p"


# --------------------------------------------------------------------------------------- checks
def _check_placement_values(emap: torch.Tensor, owner: Optional[torch.Tensor], e_local: int, rank: int,
                            W: int) -> None:
    """``expert_map``'s local ids in [-1, E_local); a given ``owner``: shape [E], ranks in [0, W), and owner == rank
    exactly where this rank's ``expert_map`` holds the expert. One host read of a few numbers (the forward
    synchronises with the host anyway, for the split sizes), before any collective."""
    E = emap.numel()
    if owner is not None:
        if not isinstance(owner, torch.Tensor) or owner.dtype not in (torch.int32, torch.int64):
            got = owner.dtype if isinstance(owner, torch.Tensor) else type(owner).__name__
            raise TypeError(f"owner: expected an int32 tensor [E={E}] of ranks (expert_owner), got {got}")
        if tuple(owner.shape) != (E,):
            raise ValueError(f"owner: expected shape [E={E}], got {tuple(owner.shape)}")
    if E == 0:
        return
    vals = list(emap.aminmax())
    if owner is not None:
        own = owner.to(emap.device)
        vals += list(own.aminmax()) + [((emap >= 0) != (own == rank)).sum()]
    v = torch.stack([x.long() for x in vals]).tolist()
    if v[0] < -1 or v[1] >= e_local:
        raise ValueError(f"expert_map: expected local ids in [-1, E_local={e_local}) (-1 = elsewhere; E_local: "
                         f"local_w13.shape[0]), got min {v[0]}, max {v[1]}")
    if owner is None:
        return
    if v[2] < 0 or v[3] >= W:
        raise ValueError(f"owner: expected ranks in [0, world_size={W}), got min {v[2]}, max {v[3]}")
    if v[4]:
        e = int(torch.nonzero((emap >= 0) != (own == rank))[0])
        raise ValueError(f"owner: expected owner[e] == rank {rank} exactly for the experts this rank's expert_map "
                         f"holds (expert_map[e] >= 0), got {v[4]} expert(s) that disagree, first e = {e}: owner "
                         f"{int(own[e])}, expert_map {int(emap[e])}")


def _checked_args(hidden, topk_ids, topk_weights, local_w13, local_w2, expert_map, group, owner, exchange,
                  expert_kwargs) -> tuple:
    """Every check of :func:`ep_moe_forward`, before any collective (the module docstring's promise): returns
    ``(ids int32, weights fp32, routed kwargs, shared kwargs, method, rank, world size)``."""
    from . import experts as _experts
    from ..core import check_tensor
    from .ops import check_ids_values

    unknown = set(expert_kwargs) - set(_ROUTED_KWARGS) - set(_SHARED_KWARGS)
    if unknown:
        raise TypeError(f"ep_moe_forward: unexpected keyword arguments {sorted(unknown)}")
    for name, t in (("hidden", hidden), ("topk_ids", topk_ids), ("topk_weights", topk_weights),
                    ("local_w13", local_w13), ("local_w2", local_w2)):
        check_tensor(name, t)
    if hidden.dim() != 2:
        raise ValueError(f"hidden: expected shape [T, H], got {tuple(hidden.shape)}")
    T, H = hidden.shape
    if topk_ids.dim() != 2 or topk_ids.shape[0] != T or topk_ids.shape[1] < 1:
        raise ValueError(f"topk_ids: expected shape [T={T}, k] with k >= 1, got {tuple(topk_ids.shape)}")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(f"topk_weights: expected shape {tuple(topk_ids.shape)} (as topk_ids), "
                         f"got {tuple(topk_weights.shape)}")
    _validate_map(expert_map)
    e_local = local_w13.shape[0] if local_w13.dim() else -1
    if local_w13.dim() != 3 or local_w2.dim() != 3 or local_w2.shape[0] != e_local or local_w13.shape[2] != H:
        raise ValueError(f"local_w13, local_w2: expected [E_local, 2I, H={H}] and [E_local, H, I], got "
                         f"{tuple(local_w13.shape)} and {tuple(local_w2.shape)}")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"topk_ids: expected int32 (or int64), got {topk_ids.dtype}")
    check_ids_values(topk_ids, expert_map.numel())  # on the ids as given: an int64 id >= 2^31 must not wrap
    routed = {key: v for key, v in expert_kwargs.items() if key in _ROUTED_KWARGS}
    shared = {key: v for key, v in expert_kwargs.items() if key in _SHARED_KWARGS}
    # the local weights, activation, biases, swiglu_* and the shared expert, by the op's own checks on a 0-row call:
    # the expert calls on the received pairs and for the shared expert can then raise no argument error
    try:
        _experts(hidden[:0], local_w13, local_w2, torch.empty(0, 1, dtype=torch.int32, device=hidden.device),
                 torch.empty(0, 1, dtype=torch.float32, device=hidden.device), **routed, **shared)
    except (TypeError, ValueError) as e:  # the op names its w13 / w2: here they are local_w13 / local_w2
        msg = str(e)
        msg = "local_" + msg if msg.startswith(("w13:", "w2:")) else msg
        raise (TypeError if isinstance(e, TypeError) else ValueError)(msg) from None
    method = _resolve_method(exchange, group)
    rank, W = dist.get_rank(group), dist.get_world_size(group)  # not collectives
    _check_placement_values(expert_map, owner, e_local, rank, W)
    ids = topk_ids.to(torch.int32)  # int32: the tensor itself
    return ids, topk_weights.float(), routed, shared, method, rank, W


# --------------------------------------------------------------------------------------- forward
def ep_moe_forward(hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                   local_w13: torch.Tensor, local_w2: torch.Tensor, expert_map: torch.Tensor, group=None, *,
                   owner: Optional[torch.Tensor] = None, exchange: str = "auto", return_stats: bool = False,
                   **expert_kwargs):
    """One MoE layer's experts with the experts spread over the ranks of ``group`` (collective: every rank calls).

    Parameters
    ----------
    hidden : ``[T, H]`` this rank's tokens (T may differ between ranks, 0 included).
    topk_ids : ``[T, k]`` int32 (int64 accepted) **global** expert ids, -1 = skipped (never sent).
    topk_weights : ``[T, k]`` routing weights (cast to fp32).
    local_w13, local_w2 : ``[E_local, 2I, H]`` and ``[E_local, H, I]``: this rank's experts in local-id order.
    expert_map : ``[E]`` int32 global -> local id on this rank, -1 elsewhere (:func:`expert_map`).
    group : the process group (None: the default group).
    owner : ``[E]`` int32 rank of each expert (:func:`expert_owner`); None: gathered from every rank's
        ``expert_map`` with one more collective (:func:`gather_expert_owner`; :class:`EPMoE` caches it).
    exchange : ``"auto"``, ``"all_to_all"`` or ``"p2p"`` (module docstring).
    return_stats : also return the :class:`DispatchStats` of the call.
    expert_kwargs : as :func:`leankern.moe.experts`: ``w13_bias [E_local, 2I]``, ``w2_bias [E_local, H]`` (local
        ids), ``activation``, ``swiglu_alpha``, ``swiglu_limit``, ``interleaved`` are applied on the expert's rank;
        ``shared_w1 / shared_w3 / shared_w2 / shared_gate`` (the shared expert, replicated) on the token's rank.

    Returns
    -------
    ``out [T, H]`` in hidden's dtype (and the stats). fp32 hidden: what :func:`leankern.moe.experts` returns on the
    full weights, up to summation order (slots summed in slot order here, fp32). bf16 / fp16 hidden: each kept pair's
    weighted output comes back rounded to hidden's dtype (the combine payload) and the shared expert's output too,
    then they are summed in fp32 and rounded again: up to ``k + 1`` roundings to hidden's dtype more than
    :func:`leankern.moe.experts` makes (a token's error grows with the sum of its slots' magnitudes, not the
    magnitude of the result).

    Raises
    ------
    TypeError, ValueError : on a bad argument, before any collective (so on this rank only).
    """
    from . import experts as _experts

    ids, w, routed, shared, method, rank, W = _checked_args(hidden, topk_ids, topk_weights, local_w13, local_w2,
                                                            expert_map, group, owner, exchange, expert_kwargs)
    if owner is None:
        owner = gather_expert_owner(expert_map, group)  # the first collective
    T, H = hidden.shape
    dev = hidden.device
    k = ids.shape[1]

    # ---- dispatch: kept slots only, grouped by destination rank (stable: slot order within a rank)
    flat = ids.reshape(-1)
    slots = torch.nonzero(flat >= 0).flatten()  # ascending slot ids t * k + j
    gid = flat[slots]
    dest = owner.to(dev).long()[gid.long()]
    order = torch.sort(dest, stable=True).indices
    slots, gid, dest = slots[order], gid[order], dest[order]
    send_counts_t = torch.bincount(dest, minlength=W)[:W].to(torch.int64)
    send_counts = send_counts_t.tolist()
    recv_counts = _exchange_counts(send_counts_t, group, method, rank, W)
    tok = slots // k
    x_send = hidden[tok]
    meta_send = torch.stack([gid.contiguous().view(torch.float32), w.reshape(-1)[slots]], dim=1)  # [n, 2] fp32
    x_recv = _exchange(x_send, send_counts, recv_counts, group, method, rank, tag=1)
    meta_recv = _exchange(meta_send, send_counts, recv_counts, group, method, rank, tag=2)

    # ---- expert compute on this rank's experts (local ids), one slot per received row
    gid_recv = meta_recv[:, 0].contiguous().view(torch.int32)
    local = expert_map.to(dev)[gid_recv.long()]
    if local.numel() and bool((local < 0).any()):
        raise RuntimeError(f"ep_moe_forward: rank {rank} received pairs for experts it does not hold "
                           f"(global ids {gid_recv[local < 0].unique().tolist()}): owner and expert_map disagree")
    y = _experts(x_recv, local_w13, local_w2, local[:, None], meta_recv[:, 1:2].contiguous(), **routed)

    # ---- combine: results back to their origin, summed per token in slot order
    y_back = _exchange(y, recv_counts, send_counts, group, method, rank, tag=3)
    out = torch.zeros(T, H, dtype=torch.float32, device=dev)
    slot_j = slots % k
    for j in range(k):
        sel = torch.nonzero(slot_j == j).flatten()
        if sel.numel():
            out.index_add_(0, tok[sel], y_back[sel].float())
    if shared.get("shared_w1") is not None:
        none_ids = torch.full((T, 1), -1, dtype=torch.int32, device=dev)
        out = out + _experts(hidden, local_w13, local_w2, none_ids, torch.zeros(T, 1, device=dev), **shared).float()
    out = out.to(hidden.dtype)
    if not return_stats:
        return out
    remote_sent = sum(c for d, c in enumerate(send_counts) if d != rank)
    remote_recv = sum(c for d, c in enumerate(recv_counts) if d != rank)
    row = H * hidden.element_size()
    stats = DispatchStats(rank, W, int(slots.numel()), int(flat.numel() - slots.numel()), send_counts, recv_counts,
                          remote_sent, remote_recv, remote_sent * (row + 8), remote_recv * (row + 8),
                          remote_recv * H * y.element_size(), remote_sent * H * y.element_size(), method)
    return out, stats


class EPMoE(torch.nn.Module):
    """This rank's share of an MoE layer's routed experts; ``forward`` is :func:`ep_moe_forward`.

    Parameters
    ----------
    local_w13, local_w2 : ``[E_local, 2I, H]``, ``[E_local, H, I]`` (made parameters).
    expert_map : ``[E]`` int32 (a buffer), e.g. :func:`expert_map`.
    group, exchange : as :func:`ep_moe_forward`.
    owner : ``[E]`` int32, or None: gathered on the first forward (collective) and kept.
    expert_kwargs : routed and shared expert options (as :func:`ep_moe_forward`).

    ``last_dispatch_stats``: the :class:`DispatchStats` of the latest forward.
    """

    def __init__(self, local_w13: torch.Tensor, local_w2: torch.Tensor, expert_map: torch.Tensor, group=None, *,
                 owner: Optional[torch.Tensor] = None, exchange: str = "auto", **expert_kwargs):
        super().__init__()
        _validate_map(expert_map)
        self.local_w13 = torch.nn.Parameter(local_w13, requires_grad=False)
        self.local_w2 = torch.nn.Parameter(local_w2, requires_grad=False)
        self.register_buffer("expert_map", expert_map)
        self.group = group
        self.exchange = exchange
        self.owner = owner
        self.expert_kwargs = expert_kwargs
        self.last_dispatch_stats: Optional[DispatchStats] = None

    def forward(self, hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        if self.owner is None:  # checked first: the gather is a collective
            _checked_args(hidden, topk_ids, topk_weights, self.local_w13, self.local_w2, self.expert_map, self.group,
                          None, self.exchange, self.expert_kwargs)
            self.owner = gather_expert_owner(self.expert_map, self.group)
        out, self.last_dispatch_stats = ep_moe_forward(
            hidden, topk_ids, topk_weights, self.local_w13, self.local_w2, self.expert_map, self.group,
            owner=self.owner, exchange=self.exchange, return_stats=True, **self.expert_kwargs)
        return out
