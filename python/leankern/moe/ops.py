"""MoE ops: schemas, fakes, argument checks, capability table, kernel registration.

Torch ops (opcheck-clean, ``torch.compile(fullgraph=True)``-traceable):

* ``moe_route(router_logits [T, E], top_k, scoring, renormalize, n_group, topk_group, correction_bias [E]?,
  routed_scaling_factor, skip_rule, skip_params, modality [T]?, skip_renormalize) -> (topk_ids [T, k] int32,
  topk_weights [T, k] fp32)``: routing, fused with a skip rule (``skip_rule="none"``: plain routing)
* ``moe_skip(topk_ids, topk_weights, rule, skip_params, modality?, renormalize) -> (topk_ids, topk_weights)``
* ``moe_align(topk_ids, num_experts, block_m, expert_map?) -> (sorted_slot_ids [S_max], expert_offsets [E + 1],
  block_expert_ids [B_max], num_kept [1])``, all int32, static sizes (:func:`ref.align_sizes`)
* ``moe_experts(hidden [T, H], w13 [E, 2I, H], w2 [E, H, I], topk_ids, topk_weights, w13_bias [E, 2I]?,
  w2_bias [E, H]?, activation, swiglu_alpha, swiglu_limit, interleaved, shared_w1 [Is, H]?, shared_w3 [Is, H]?,
  shared_w2 [H, Is]?, shared_gate [H]?) -> out [T, H]``

Kernels: C++ on ``CPU`` (csrc/moe/), Triton on ``CUDA`` (triton_kernels/moe.py), the reference
(:mod:`leankern.moe.ref`) elsewhere. The C++ kernels repeat these checks with the same messages.
Value checks (ids in range, no duplicate expert in a row, modality codes) run before any weight is read:
an exception on CPU, a device-side assert on GPU (no host synchronisation). int64 ids are narrowed to int32 by the
front-ends only after :func:`ids_to_int32` checked them (an id >= 2^31 must not wrap into range).
"""
from __future__ import annotations

import math

import torch

from ..core import (FLOAT_DTYPES, Capability, OpSpec, backend_for, check_choice, check_ids_in_range, check_tensor,
                    check_value_on_device, narrow_to_int32, register_op)
from . import ref

__all__ = ["CAPABILITIES", "ROUTE", "SKIP", "ALIGN", "EXPERTS", "MAX_TOPK", "MAX_BLOCK_M", "ID_BOUND_INT32",
           "check_ids_values", "ids_to_int32", "check_modality_values", "modality_to_int32", "check_skip_params"]

MAX_TOPK = 64  # slots per token: C++ and Triton keep a row's k slots in registers / a small array
MAX_BLOCK_M = 1024
_ANY = ("cpu", "cuda", "meta")
_I32 = (torch.int32,)
_F32 = (torch.float32,)
CAPABILITIES = {
    "moe_route": {
        "ref": Capability(_ANY, FLOAT_DTYPES, {"top_k": (1, MAX_TOPK)}, "stable sort of fp32 scores; the definition"),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, {"top_k": (1, MAX_TOPK)}, "one row per task, partial selection"),
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, {"top_k": (1, MAX_TOPK)}, "one row per program, "
                             "k rounds of argmax (ties: lowest id)"),
    },
    "moe_skip": {
        "ref": Capability(_ANY, _F32, {}, "the definition"),
        "cpp": Capability(("cpu",), _F32, {}, "row loop"),
        "triton": Capability(("cuda", "cpu"), _F32, {}, "one row per program"),
    },
    "moe_align": {
        "ref": Capability(_ANY, _I32, {"block_m": (1, MAX_BLOCK_M)}, "bincount + stable sort"),
        "cpp": Capability(("cpu",), _I32, {"block_m": (1, MAX_BLOCK_M)}, "histogram, prefix sum, ordered scatter"),
        "triton": Capability(("cuda", "cpu"), _I32, {"block_m": (1, MAX_BLOCK_M)}, "one program: histogram, prefix "
                             "sum, ordered scatter; no host sync"),
    },
    "moe_experts": {
        "ref": Capability(_ANY, FLOAT_DTYPES, {}, "fp32 mask-and-loop; the definition"),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, {}, "decode: each touched expert streamed once for its tokens "
                          "(AVX-512 / AVX2 / scalar, both cores); prefill: per-expert GEMMs over compacted tokens"),
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, {}, "grouped GEMM over aligned blocks, activation fused, "
                             "routing weight in the down-projection epilogue"),
    },
}


def _cap(op: str, backend: str) -> Capability:
    return CAPABILITIES[op].get(backend) or CAPABILITIES[op]["ref"]


def _check_2d(name: str, t: torch.Tensor, what: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name}: expected shape {what}, got {tuple(t.shape)}")


# ---------------------------------------------------------------------------------- value checks
ID_BOUND_INT32 = 2**31  # the id bound where E is not known (moe_skip): every id an int32 holds, i.e. only ids >= -1


def check_ids_values(topk_ids: torch.Tensor, num_experts: int, name: str = "topk_ids",
                     no_duplicates: bool = True) -> None:
    """Every id in [-1, num_experts) and (``no_duplicates``) no expert twice in a row (-1 may repeat): before any
    weight is read.

    Any integer dtype: int64 ids are tested as they are (check them before narrowing them to int32, where
    2^32 + 1 would read as 1). ``num_experts = ID_BOUND_INT32``: E not known, only ids >= -1 (and < 2^31)."""
    if not topk_ids.numel() or topk_ids.device.type == "meta":
        return
    bound = "2^31" if num_experts == ID_BOUND_INT32 else num_experts
    # an int32 id is always < 2^31, and 2^31 itself would wrap to -2^31 in an int32 comparison
    hi = num_experts if topk_ids.dtype == torch.int64 or num_experts < ID_BOUND_INT32 else None
    check_ids_in_range(topk_ids, -1, hi, f"{name}: expected expert ids in [-1, {bound}) (-1 = skipped)")
    if no_duplicates and topk_ids.shape[-1] > 1:
        s = topk_ids.sort(dim=-1).values
        dup = ((s[..., 1:] == s[..., :-1]) & (s[..., 1:] >= 0)).any()
        check_value_on_device(~dup, f"{name}: expected distinct expert ids within a row (-1 may repeat), "
                                    "got an expert twice in one row")


def ids_to_int32(topk_ids, num_experts: int = ID_BOUND_INT32, name: str = "topk_ids"):
    """int64 ids narrowed to the ops' int32 after checking them in [-1, num_experts) (so that no id >= 2^31 wraps
    into range: 2^32 + 1 would read as 1); anything else is returned as it is (int32 ids: no pass, no copy).

    On a GPU (and while compiling) the check is an assert on the device / in the graph, as the ops' own."""
    if isinstance(topk_ids, torch.Tensor) and topk_ids.dtype == torch.int64:
        check_ids_values(topk_ids, num_experts, name, no_duplicates=False)
        return topk_ids.to(torch.int32)
    return topk_ids


def check_modality_values(modality: torch.Tensor) -> None:
    if modality.numel() and modality.device.type != "meta":
        ok = (modality.min() >= 0) & (modality.max() <= 2)
        check_value_on_device(ok, "modality: expected codes 0 (text), 1 (vision) or 2 (never skip)")


def modality_to_int32(modality: torch.Tensor) -> torch.Tensor:
    """Integer modality codes as the ops' int32. int64 codes saturate to [-1, 3] first, so that a code outside
    int32 stays invalid (2^32 + 1 must not read as 1) and the ops' 0/1/2 check rejects it: one elementwise pass
    over ``[T]``, no host synchronisation (:func:`leankern.core.narrow_to_int32`). Narrower dtypes widen as they
    are."""
    return narrow_to_int32(modality, lo=-1, hi=3).to(torch.int32)


# ------------------------------------------------------------------------------------------ skip
def check_skip_params(rule: str, skip_params, names=None) -> None:
    """The ops' rules for a skip rule's parameters: the count of ``rule``, finite values, NAEE's beta and top-p /
    min-p's p in [0, 1], top-k's k an integer >= 1.

    ``names``: the argument each value came from, for the messages (e.g. ``("param",)``, or SkipConfig's
    ``("alpha[0][0]", "alpha[0][1]", "tau_text", "tau_vision")``); None: ``skip_params`` (the ops' messages)."""
    check_choice("skip_rule", rule, ref.SKIP_RULES)
    want = ref.skip_param_count(rule)
    if len(skip_params) != want:
        raise ValueError(f"skip_params: expected {want} value(s) for rule {rule!r}, got {len(skip_params)}")
    if names is None:
        if any(not math.isfinite(v) for v in skip_params):
            raise ValueError(f"skip_params: expected finite values, got {list(skip_params)}")
        names = ("skip_params",) * want
    for name, v in zip(names, skip_params):
        if not math.isfinite(v):
            raise ValueError(f"{name}: expected a finite value, got {v}")
    if rule in ("top_p", "min_p", "naee") and not 0.0 <= skip_params[0] <= 1.0:
        raise ValueError(f"{names[0]}: expected {rule}'s parameter in [0, 1], got {skip_params[0]}")
    if rule == "top_k" and (skip_params[0] < 1 or skip_params[0] != int(skip_params[0])):
        raise ValueError(f"{names[0]}: expected top_k's k to be an integer >= 1, got {skip_params[0]}")


def _check_skip_args(rule, skip_params, modality, T, dev) -> None:
    check_skip_params(rule, skip_params)
    if modality is not None:
        check_tensor("modality", modality, _I32, device=dev, device_of="topk_ids")
        if tuple(modality.shape) != (T,):
            raise ValueError(f"modality: expected shape [T={T}], got {tuple(modality.shape)}")


_SKIP_SCHEMA = ("(Tensor topk_ids, Tensor topk_weights, str rule, float[] skip_params, Tensor? modality, "
                "bool renormalize) -> (Tensor, Tensor)")


def _check_skip(backend, topk_ids, topk_weights, rule, skip_params, modality, renormalize):
    check_tensor("topk_ids", topk_ids, _I32)
    _check_2d("topk_ids", topk_ids, "[T, k]")
    T, k = topk_ids.shape
    if not 1 <= k <= MAX_TOPK:
        raise ValueError(f"topk_ids: expected 1 <= k <= {MAX_TOPK} slots per token, got k = {k}")
    check_tensor("topk_weights", topk_weights, _F32, device=topk_ids.device, device_of="topk_ids")
    if tuple(topk_weights.shape) != (T, k):
        raise ValueError(f"topk_weights: expected shape [T={T}, k={k}], got {tuple(topk_weights.shape)}")
    _check_skip_args(rule, skip_params, modality, T, topk_ids.device)
    return T, k


def _skip_values(modality) -> None:
    if modality is not None:
        check_modality_values(modality)


def _skip_ids_values(topk_ids) -> None:
    """moe_skip knows no E: ids < -1 are errors (a skip rule would turn them into skipped slots that experts no
    longer rejects); ids >= E pass through as they are, for experts / align to reject. After the modality check
    (the C++ kernel's order too)."""
    check_ids_values(topk_ids, ID_BOUND_INT32, no_duplicates=False)


def _skip_ref(topk_ids, topk_weights, rule, skip_params, modality, renormalize):
    _skip_values(modality)
    _skip_ids_values(topk_ids)
    return ref.skip_ref(topk_ids, topk_weights, rule, skip_params, modality, renormalize)


def _skip_triton(topk_ids, topk_weights, rule, skip_params, modality, renormalize):
    from ..triton_kernels.moe import skip_triton

    _skip_values(modality)
    _skip_ids_values(topk_ids)
    return skip_triton(topk_ids, topk_weights, rule, skip_params, modality, renormalize)


def _skip_fake(topk_ids, topk_weights, rule, skip_params, modality, renormalize):
    T, k = _check_skip(backend_for("moe_skip", topk_ids.device), topk_ids, topk_weights, rule, skip_params, modality,
                       renormalize)
    return topk_ids.new_empty((T, k)), topk_weights.new_empty((T, k))


# ----------------------------------------------------------------------------------------- route
_ROUTE_SCHEMA = ("(Tensor router_logits, int top_k, str scoring, bool renormalize, int n_group, int topk_group, "
                 "Tensor? correction_bias, float routed_scaling_factor, str skip_rule, float[] skip_params, "
                 "Tensor? modality, bool skip_renormalize) -> (Tensor, Tensor)")


def _check_route(backend, router_logits, top_k, scoring, renormalize, n_group, topk_group, correction_bias,
                 routed_scaling_factor, skip_rule, skip_params, modality, skip_renormalize):
    cap = _cap("moe_route", backend)
    check_tensor("router_logits", router_logits, cap.dtypes)
    _check_2d("router_logits", router_logits, "[T, E]")
    T, E = router_logits.shape
    check_choice("scoring", scoring, ref.SCORINGS)
    if not 1 <= n_group <= E or E % n_group:
        raise ValueError(f"n_group: expected a divisor of E={E} (1 = no groups), got {n_group}")
    if not 1 <= topk_group <= n_group:
        raise ValueError(f"topk_group: expected 1 <= topk_group <= n_group={n_group}, got {topk_group}")
    eligible = topk_group * (E // n_group)
    if not 1 <= top_k <= min(eligible, MAX_TOPK):
        raise ValueError(f"top_k: expected 1 <= top_k <= min(eligible experts={eligible}, {MAX_TOPK}), got {top_k}")
    if correction_bias is not None:
        check_tensor("correction_bias", correction_bias, FLOAT_DTYPES, device=router_logits.device,
                     device_of="router_logits")
        if tuple(correction_bias.shape) != (E,):
            raise ValueError(f"correction_bias: expected shape [E={E}], got {tuple(correction_bias.shape)}")
    if not (routed_scaling_factor > 0 and math.isfinite(routed_scaling_factor)):
        raise ValueError(f"routed_scaling_factor: expected a finite value > 0, got {routed_scaling_factor}")
    _check_skip_args(skip_rule, skip_params, modality, T, router_logits.device)
    return T, top_k


def _route_bias_values(correction_bias) -> None:
    """correction_bias holds finite values: an inf / NaN bias has no ranking the backends share (the reference's
    nan_to_num made +-inf +-FLT_MAX, the C++ kernel kept them and could keep a group of NaN score beyond topk_group).
    Real biases are finite. On a GPU an async device assert (no host sync)."""
    if correction_bias is None:
        return
    ok = torch.isfinite(correction_bias).all()
    message = "correction_bias: expected finite values"
    if correction_bias.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(ok):
        e = int((~torch.isfinite(correction_bias)).nonzero()[0])
        message += f", got {float(correction_bias[e])} at expert {e}"
    check_value_on_device(ok, message)


def _route_ref(router_logits, top_k, scoring, renormalize, n_group, topk_group, correction_bias,
               routed_scaling_factor, skip_rule, skip_params, modality, skip_renormalize):
    _route_bias_values(correction_bias)  # (the C++ kernel's order: check_route, then the modality values)
    _skip_values(modality)
    ids, w = ref.route_ref(router_logits, top_k, scoring, renormalize, n_group, topk_group, correction_bias,
                           routed_scaling_factor)
    return ref.skip_ref(ids, w, skip_rule, skip_params, modality, skip_renormalize)


def _route_triton(*args):
    from ..triton_kernels.moe import route_triton

    _route_bias_values(args[6])
    _skip_values(args[10])
    return route_triton(*args)


def _route_fake(router_logits, top_k, *rest):
    T, k = _check_route(backend_for("moe_route", router_logits.device), router_logits, top_k, *rest)
    return (router_logits.new_empty((T, k), dtype=torch.int32), router_logits.new_empty((T, k), dtype=torch.float32))


# ----------------------------------------------------------------------------------------- align
_ALIGN_SCHEMA = "(Tensor topk_ids, int num_experts, int block_m, Tensor? expert_map) -> (Tensor, Tensor, Tensor, Tensor)"


def _check_align(backend, topk_ids, num_experts, block_m, expert_map):
    check_tensor("topk_ids", topk_ids, _I32)
    _check_2d("topk_ids", topk_ids, "[T, k]")
    if not 1 <= num_experts < 2**20:
        raise ValueError(f"num_experts: expected 1 <= num_experts < 2^20, got {num_experts}")
    if not 1 <= block_m <= MAX_BLOCK_M:
        raise ValueError(f"block_m: expected 1 <= block_m <= {MAX_BLOCK_M}, got {block_m}")
    if topk_ids.numel() + num_experts * (block_m - 1) >= 2**31:
        raise ValueError(f"topk_ids: T * k + num_experts * (block_m - 1) must be < 2^31, got shape "
                         f"{tuple(topk_ids.shape)}")
    if expert_map is not None:
        check_tensor("expert_map", expert_map, _I32, device=topk_ids.device, device_of="topk_ids")
        if expert_map.dim() != 1 or expert_map.shape[0] < 1:
            raise ValueError(f"expert_map: expected shape [E_global] (global -> local id, -1 = not here), "
                             f"got {tuple(expert_map.shape)}")
    return ref.align_sizes(topk_ids.numel(), num_experts, block_m)


def _align_values(topk_ids, num_experts, expert_map) -> None:
    if expert_map is None:
        check_ids_values(topk_ids, num_experts, no_duplicates=False)
        return
    check_ids_values(topk_ids, expert_map.shape[0], no_duplicates=False)
    check_ids_values(expert_map, num_experts, name="expert_map", no_duplicates=False)


def _align_ref(topk_ids, num_experts, block_m, expert_map):
    _align_values(topk_ids, num_experts, expert_map)
    return ref.align_ref(topk_ids, num_experts, block_m, expert_map)


def _align_triton(topk_ids, num_experts, block_m, expert_map):
    from ..triton_kernels.moe import align_triton

    _align_values(topk_ids, num_experts, expert_map)
    return align_triton(topk_ids, num_experts, block_m, expert_map)


def _align_fake(topk_ids, num_experts, block_m, expert_map):
    s_max, b_max = _check_align(backend_for("moe_align", topk_ids.device), topk_ids, num_experts, block_m, expert_map)
    i32 = dict(dtype=torch.int32)
    return (topk_ids.new_empty((s_max,), **i32), topk_ids.new_empty((num_experts + 1,), **i32),
            topk_ids.new_empty((b_max,), **i32), topk_ids.new_empty((1,), **i32))


# --------------------------------------------------------------------------------------- experts
_EXPERTS_SCHEMA = ("(Tensor hidden, Tensor w13, Tensor w2, Tensor topk_ids, Tensor topk_weights, Tensor? w13_bias, "
                   "Tensor? w2_bias, str activation, float swiglu_alpha, float swiglu_limit, bool interleaved, "
                   "Tensor? shared_w1, Tensor? shared_w3, Tensor? shared_w2, Tensor? shared_gate) -> Tensor")


def _check_weight_strides(name: str, w: torch.Tensor) -> None:
    """[E, R, C] with rows (stride(2) == 1) or columns (stride(1) == 1) contiguous: a transposed view is read as is."""
    if w.shape[1] > 1 and w.shape[2] > 1 and w.stride(2) != 1 and w.stride(1) != 1:
        raise ValueError(f"{name}: expected rows or columns contiguous (stride(2) == 1 or stride(1) == 1), got strides "
                         f"{w.stride()}")


def _check_shared(cap, dev, H, shared_w1, shared_w3, shared_w2, shared_gate) -> None:
    given = [t is not None for t in (shared_w1, shared_w3, shared_w2)]
    if any(given) and not all(given):
        raise ValueError("shared_w1, shared_w3, shared_w2: expected all three (a shared SwiGLU expert) or none, got "
                         f"{['shared_w1', 'shared_w3', 'shared_w2'][given.index(False)]} = None")
    if shared_gate is not None and not all(given):
        raise ValueError("shared_gate: expected shared_w1/w3/w2 too (the gate scales the shared expert), got only a gate")
    if not all(given):
        return
    for name, t in (("shared_w1", shared_w1), ("shared_w3", shared_w3), ("shared_w2", shared_w2)):
        check_tensor(name, t, cap.dtypes, device=dev, device_of="hidden")
        _check_2d(name, t, "[Is, H]" if name != "shared_w2" else "[H, Is]")
    Is = shared_w1.shape[0]
    for name, t, want in (("shared_w1", shared_w1, (Is, H)), ("shared_w3", shared_w3, (Is, H)),
                          ("shared_w2", shared_w2, (H, Is))):
        if tuple(t.shape) != want:
            raise ValueError(f"{name}: expected shape [{want[0]}, {want[1]}], got {tuple(t.shape)}")
    if shared_gate is not None:
        check_tensor("shared_gate", shared_gate, cap.dtypes, device=dev, device_of="hidden")
        if shared_gate.numel() != H or shared_gate.dim() not in (1, 2):
            raise ValueError(f"shared_gate: expected shape [H={H}] or [1, H={H}], got {tuple(shared_gate.shape)}")


def _check_experts(backend, hidden, w13, w2, topk_ids, topk_weights, w13_bias, w2_bias, activation, swiglu_alpha,
                   swiglu_limit, interleaved, shared_w1, shared_w3, shared_w2, shared_gate):
    cap = _cap("moe_experts", backend)
    check_tensor("hidden", hidden, cap.dtypes)
    _check_2d("hidden", hidden, "[T, H]")
    T, H = hidden.shape
    dev = hidden.device
    check_tensor("w13", w13, cap.dtypes, device=dev, device_of="hidden")
    if w13.dim() != 3 or w13.shape[2] != H or w13.shape[1] % 2 or w13.shape[1] == 0:
        raise ValueError(f"w13: expected shape [E, 2I, H={H}] (gate and up projections), got {tuple(w13.shape)}")
    E, I = w13.shape[0], w13.shape[1] // 2
    check_tensor("w2", w2, (w13.dtype,), device=dev, device_of="hidden")
    if tuple(w2.shape) != (E, H, I):
        raise ValueError(f"w2: expected shape [E={E}, H={H}, I={I}], got {tuple(w2.shape)}")
    _check_weight_strides("w13", w13)
    _check_weight_strides("w2", w2)
    check_tensor("topk_ids", topk_ids, _I32, device=dev, device_of="hidden")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != T or not 1 <= topk_ids.shape[1] <= MAX_TOPK:
        raise ValueError(f"topk_ids: expected shape [T={T}, k] with 1 <= k <= {MAX_TOPK}, got {tuple(topk_ids.shape)}")
    check_tensor("topk_weights", topk_weights, _F32, device=dev, device_of="hidden")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(f"topk_weights: expected shape {list(topk_ids.shape)} (that of topk_ids), "
                         f"got {list(topk_weights.shape)}")
    for name, b, want in (("w13_bias", w13_bias, (E, 2 * I)), ("w2_bias", w2_bias, (E, H))):
        if b is not None:
            check_tensor(name, b, cap.dtypes, device=dev, device_of="hidden")
            if tuple(b.shape) != want or b.stride(-1) != 1:
                raise ValueError(f"{name}: expected shape [{want[0]}, {want[1]}] with contiguous rows, got "
                                 f"{tuple(b.shape)} strides {b.stride()}")
    check_choice("activation", activation, ref.ACTIVATIONS)
    if not (math.isfinite(swiglu_alpha) and swiglu_limit > 0 and math.isfinite(swiglu_limit)):
        raise ValueError(f"swiglu_alpha, swiglu_limit: expected a finite alpha and a finite limit > 0, got "
                         f"{swiglu_alpha}, {swiglu_limit}")
    _check_shared(cap, dev, H, shared_w1, shared_w3, shared_w2, shared_gate)
    return T, H, E, I


def _experts_ref(hidden, w13, w2, topk_ids, topk_weights, *rest):
    check_ids_values(topk_ids, w13.shape[0])
    return ref.experts_ref(hidden, w13, w2, topk_ids, topk_weights, *rest)


def _experts_triton(hidden, w13, w2, topk_ids, topk_weights, *rest):
    from ..triton_kernels.moe import experts_triton

    check_ids_values(topk_ids, w13.shape[0])
    return experts_triton(hidden, w13, w2, topk_ids, topk_weights, *rest)


def _experts_fake(hidden, *rest):
    T, H, _, _ = _check_experts(backend_for("moe_experts", hidden.device), hidden, *rest)
    return hidden.new_empty((T, H))


ROUTE = register_op(OpSpec("moe_route", _ROUTE_SCHEMA, _route_ref, _route_fake, _check_route,
                           CAPABILITIES["moe_route"], triton=_route_triton))
SKIP = register_op(OpSpec("moe_skip", _SKIP_SCHEMA, _skip_ref, _skip_fake, _check_skip, CAPABILITIES["moe_skip"],
                          triton=_skip_triton))
ALIGN = register_op(OpSpec("moe_align", _ALIGN_SCHEMA, _align_ref, _align_fake, _check_align,
                           CAPABILITIES["moe_align"], triton=_align_triton))
EXPERTS = register_op(OpSpec("moe_experts", _EXPERTS_SCHEMA, _experts_ref, _experts_fake, _check_experts,
                             CAPABILITIES["moe_experts"], triton=_experts_triton))
