"""Speculative verification: op schemas, fakes, argument checks, capability table, kernel registration.

Torch ops (opcheck-clean, ``torch.compile(fullgraph=True)``-traceable):

* ``specdec_verify(draft_token_ids, cu_num_draft_tokens, target_logits, bonus_logits, draft_probs, uniforms,
  temperature, top_k, top_p, mode, max_drafts, relax_radius, action_lo, action_hi, typical_eps,
  typical_delta) -> (output_token_ids [B, max_drafts + 1], num_accepted [B])``
* ``specdec_verify_tree(tree_token_ids, cu_num_nodes, node_logits, retrieve_indices, temperature, mode,
  relax_radius, action_lo, action_hi, typical_eps, typical_delta) -> (output [B, D+1], num_accepted [B],
  best_path [B])``

Kernels: C++ on ``CPU`` (csrc/specdec/), Triton on ``CUDA`` (triton_kernels/specdec.py), the
reference (:mod:`leankern.specdec.ref`) where none exists. Shape/dtype checks run here for the
Python paths and fakes; value checks (ids in range, counts that add up) run before any kernel
reads a row: on CPU tensors as exceptions, on GPU tensors as device-side asserts (no host sync).
"""
from __future__ import annotations

import math

import torch

from ..core import (FLOAT_DTYPES, Capability, OpSpec, backend_for, check_choice, check_shape, check_tensor,
                    check_ids_in_range, check_value_on_device, register_op)
from . import ref
from .ref import CHAIN_MODES, TREE_MODES, Rules

__all__ = ["CAPABILITIES", "MAX_VOCAB", "VERIFY", "VERIFY_TREE"]

# Exact int64 sums of the 2^40-scaled softmax weights need V * 2^40 < 2^63.
MAX_VOCAB = (1 << 23) - 1
_ANY = ("cpu", "cuda", "meta")
_V = {"V": (1, MAX_VOCAB)}
CAPABILITIES = {
    "specdec_verify": {
        "ref": Capability(_ANY, FLOAT_DTYPES, _V, "host loops; the definition"),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, _V, "AVX-512 / AVX2 / scalar row passes, both cores; reads only "
                          "the rows a request reaches"),
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, _V,
                             "row-chunk programs + a per-request scan; top-k/top-p thresholds by device sorts"),
    },
    "specdec_verify_tree": {
        "ref": Capability(_ANY, FLOAT_DTYPES, _V, "host loops; the definition"),
        "cpp": Capability(("cpu",), FLOAT_DTYPES, _V, "node rows once each, paths scanned per request"),
        "triton": Capability(("cuda", "cpu"), FLOAT_DTYPES, _V, "node-row programs + a per-request path scan"),
    },
}


def _check_logits(name: str, logits: torch.Tensor, cap: Capability, rows: str) -> tuple:
    """``logits`` is ``[rows, V]`` of a supported dtype with V within the capability; returns (rows, V)."""
    check_tensor(name, logits, cap.dtypes, min_dim=2)
    if logits.dim() != 2:
        raise ValueError(f"{name}: expected shape [{rows}, V], got {tuple(logits.shape)}")
    n, V = logits.shape
    lo, hi = cap.limit("V")
    if not lo <= V <= hi:
        raise ValueError(f"{name}: expected a vocabulary size V in [{lo}, {hi}], got {V}")
    return n, V


def _check_ids(name: str, ids: torch.Tensor, V: int) -> None:
    check_ids_in_range(ids, 0, V, f"{name}: expected token ids in [0, V={V})")


def _check_cumulative(name: str, cu: torch.Tensor, total: int, total_name: str, min_count: int = 0) -> torch.Tensor:
    """``cu`` is an inclusive cumulative count ending at ``total``; returns the per-request counts."""
    cu = cu.long()  # int32 differences would wrap (e.g. [2^31 - 1, -2])
    counts = torch.diff(cu, prepend=cu.new_zeros(1)) if cu.numel() else cu
    if cu.device.type == "meta" or not cu.numel():
        if not cu.numel() and total != 0:
            raise ValueError(f"{name}: no requests (B = 0) but {total_name} = {total}")
        return counts
    check_value_on_device(counts.min() >= min_count,
                 f"{name}: expected non-decreasing cumulative counts with each request >= {min_count}, got "
                 + (str(cu.tolist()[:8]) if cu.device.type == "cpu" else "a decreasing entry"))
    check_value_on_device(cu[-1] == total, f"{name}: expected the last entry to equal {total_name} = {total}, got "
                 + (str(int(cu[-1])) if cu.device.type == "cpu" else "another value"))
    return counts


def _check_rules(mode, modes, relax_radius, typical_eps, typical_delta) -> None:
    check_choice("mode", mode, modes)
    if relax_radius < 0:
        raise ValueError(f"relax_radius: expected >= 0, got {relax_radius}")
    if not (typical_eps > 0 and math.isfinite(typical_eps)) or not (typical_delta > 0 and math.isfinite(typical_delta)):
        raise ValueError(f"typical: expected finite (eps, delta) > 0, got ({typical_eps}, {typical_delta})")


def _check_per_request(name: str, t, dtype, B: int, device) -> None:
    if t is not None:
        check_tensor(name, t, (dtype,), device=device, device_of="target_logits")
        check_shape(name, t, (B,))


def _check_sampling_values(temperature, top_k, top_p, uniforms) -> None:
    if temperature is not None and temperature.numel():
        check_value_on_device(((temperature >= 0) & torch.isfinite(temperature)).all(),
                     "temperature: expected finite values >= 0 (0 = greedy for that request)")
    if top_k is not None and top_k.numel():
        check_value_on_device((top_k >= 0).all(), "top_k: expected values >= 0 (0 = off)")
    if top_p is not None and top_p.numel():
        check_value_on_device(((top_p > 0) & (top_p <= 1)).all(), "top_p: expected values in (0, 1] (1 = off)")
    if uniforms is not None and uniforms.numel():
        check_value_on_device(((uniforms >= 0) & (uniforms < 1)).all(), "uniforms: expected values in [0, 1)")


# --------------------------------------------------------------------------------- specdec_verify
_VERIFY_SCHEMA = ("(Tensor draft_token_ids, Tensor cu_num_draft_tokens, Tensor target_logits, Tensor bonus_logits, "
                  "Tensor? draft_probs, Tensor? uniforms, Tensor? temperature, Tensor? top_k, Tensor? top_p, str mode, "
                  "int max_drafts, int relax_radius, int action_lo, int action_hi, float typical_eps, "
                  "float typical_delta) -> (Tensor, Tensor)")


def _check_verify(backend, draft_token_ids, cu_num_draft_tokens, target_logits, bonus_logits, draft_probs, uniforms,
                  temperature, top_k, top_p, mode, max_drafts, relax_radius, action_lo, action_hi, typical_eps,
                  typical_delta):
    """Shapes, dtypes, devices and scalar arguments (no tensor values: fakes run this too)."""
    cap = CAPABILITIES["specdec_verify"].get(backend) or CAPABILITIES["specdec_verify"]["ref"]
    _check_rules(mode, CHAIN_MODES, relax_radius, typical_eps, typical_delta)
    T, V = _check_logits("target_logits", target_logits, cap, "T")
    dev = target_logits.device
    check_tensor("draft_token_ids", draft_token_ids, (torch.int32,), device=dev, device_of="target_logits")
    check_shape("draft_token_ids", draft_token_ids, (T,))
    check_tensor("cu_num_draft_tokens", cu_num_draft_tokens, (torch.int32,), device=dev, device_of="target_logits")
    if cu_num_draft_tokens.dim() != 1:
        raise ValueError(f"cu_num_draft_tokens: expected shape [B], got {tuple(cu_num_draft_tokens.shape)}")
    B = cu_num_draft_tokens.shape[0]
    check_tensor("bonus_logits", bonus_logits, cap.dtypes, device=dev, device_of="target_logits")
    check_shape("bonus_logits", bonus_logits, (B, V))
    if draft_probs is not None:
        check_tensor("draft_probs", draft_probs, cap.dtypes, device=dev, device_of="target_logits")
        check_shape("draft_probs", draft_probs, (T, V))
    if uniforms is not None:
        check_tensor("uniforms", uniforms, (torch.float32,), device=dev, device_of="target_logits")
        check_shape("uniforms", uniforms, (T + B,))
    elif mode == "rejection":
        raise ValueError("uniforms: mode='rejection' needs random numbers: pass uniforms [T + B] (or seed= to "
                         "leankern.specdec.verify), got None")
    _check_per_request("temperature", temperature, torch.float32, B, dev)
    _check_per_request("top_k", top_k, torch.int32, B, dev)
    _check_per_request("top_p", top_p, torch.float32, B, dev)
    if max_drafts < 0:
        raise ValueError(f"max_drafts: expected >= 0, got {max_drafts}")
    return B, T, V


def check_verify_values(draft_token_ids, cu_num_draft_tokens, target_logits, max_drafts, temperature, top_k, top_p,
                        uniforms) -> None:
    """The value checks every kernel relies on (run before any row is read)."""
    T, V = target_logits.shape
    _check_ids("draft_token_ids", draft_token_ids, V)
    counts = _check_cumulative("cu_num_draft_tokens", cu_num_draft_tokens, T, "T (draft_token_ids.numel())")
    if counts.numel() and counts.device.type != "meta":
        check_value_on_device(counts.max() <= max_drafts, f"max_drafts: expected >= the largest per-request draft count, got "
                     f"{max_drafts} < " + (str(int(counts.max())) if counts.device.type == "cpu" else "it"))
    _check_sampling_values(temperature, top_k, top_p, uniforms)


def _verify_ref(draft_token_ids, cu_num_draft_tokens, target_logits, bonus_logits, draft_probs, uniforms, temperature,
                top_k, top_p, mode, max_drafts, relax_radius, action_lo, action_hi, typical_eps, typical_delta):
    check_verify_values(draft_token_ids, cu_num_draft_tokens, target_logits, max_drafts, temperature, top_k, top_p,
                        uniforms)
    rules = Rules(mode, relax_radius, action_lo, action_hi, typical_eps, typical_delta)
    return ref.verify_ref(draft_token_ids, cu_num_draft_tokens, target_logits, bonus_logits, draft_probs, uniforms,
                          temperature, top_k, top_p, rules, max_drafts)


def _verify_triton(*args):
    from ..triton_kernels.specdec import verify_triton

    check_verify_values(args[0], args[1], args[2], args[10], args[6], args[7], args[8], args[5])
    return verify_triton(*args)


def _verify_fake(draft_token_ids, cu_num_draft_tokens, target_logits, bonus_logits, draft_probs, uniforms, temperature,
                 top_k, top_p, mode, max_drafts, relax_radius, action_lo, action_hi, typical_eps, typical_delta):
    B, _, _ = _check_verify(backend_for("specdec_verify", target_logits.device), draft_token_ids, cu_num_draft_tokens,
                            target_logits, bonus_logits, draft_probs, uniforms, temperature, top_k, top_p, mode,
                            max_drafts, relax_radius, action_lo, action_hi, typical_eps, typical_delta)
    out = target_logits.new_empty((B, max_drafts + 1), dtype=torch.int32)
    return out, target_logits.new_empty((B,), dtype=torch.int32)


# ---------------------------------------------------------------------------- specdec_verify_tree
_TREE_SCHEMA = ("(Tensor tree_token_ids, Tensor cu_num_nodes, Tensor node_logits, Tensor retrieve_indices, "
                "Tensor? temperature, str mode, int relax_radius, int action_lo, int action_hi, float typical_eps, "
                "float typical_delta) -> (Tensor, Tensor, Tensor)")


def _check_tree(backend, tree_token_ids, cu_num_nodes, node_logits, retrieve_indices, temperature, mode, relax_radius,
                action_lo, action_hi, typical_eps, typical_delta):
    cap = CAPABILITIES["specdec_verify_tree"].get(backend) or CAPABILITIES["specdec_verify_tree"]["ref"]
    _check_rules(mode, TREE_MODES, relax_radius, typical_eps, typical_delta)
    N, V = _check_logits("node_logits", node_logits, cap, "N")
    dev = node_logits.device
    check_tensor("tree_token_ids", tree_token_ids, (torch.int32,), device=dev, device_of="node_logits")
    check_shape("tree_token_ids", tree_token_ids, (N,))
    check_tensor("cu_num_nodes", cu_num_nodes, (torch.int32,), device=dev, device_of="node_logits")
    if cu_num_nodes.dim() != 1:
        raise ValueError(f"cu_num_nodes: expected shape [B], got {tuple(cu_num_nodes.shape)}")
    B = cu_num_nodes.shape[0]
    check_tensor("retrieve_indices", retrieve_indices, (torch.int32,), device=dev, device_of="node_logits")
    if retrieve_indices.dim() != 3 or retrieve_indices.shape[0] != B or retrieve_indices.shape[2] < 1:
        raise ValueError(f"retrieve_indices: expected shape [B={B}, P, D+1] with D+1 >= 1, got "
                         f"{tuple(retrieve_indices.shape)}")
    _check_per_request("temperature", temperature, torch.float32, B, dev)
    return B, retrieve_indices.shape[2]


def check_tree_values(tree_token_ids, cu_num_nodes, node_logits, retrieve_indices, temperature) -> None:
    N, V = node_logits.shape
    _check_ids("tree_token_ids", tree_token_ids, V)
    counts = _check_cumulative("cu_num_nodes", cu_num_nodes, N, "N (tree_token_ids.numel())", min_count=1)
    _check_sampling_values(temperature, None, None, None)
    if retrieve_indices.numel() == 0 or retrieve_indices.device.type == "meta":
        return
    ri = retrieve_indices
    in_range = (ri >= -1) & (ri < counts.view(-1, 1, 1))
    root_ok = (ri[:, :, 0] == 0) | (ri[:, :, 0] == -1)
    # -1 only as padding: once a path has a -1, everything after it is -1
    padded = torch.cummax((ri < 0).to(torch.int32), dim=2).values.bool()
    suffix_ok = (~padded) | (ri == -1)
    check_value_on_device(in_range.all() & root_ok.all() & suffix_ok.all(),
                 "retrieve_indices: expected local node indices in [-1, nodes of the request), column 0 equal to 0 "
                 "(the root) or -1 (unused path), and -1 only as trailing padding")


def _tree_ref(tree_token_ids, cu_num_nodes, node_logits, retrieve_indices, temperature, mode, relax_radius, action_lo,
              action_hi, typical_eps, typical_delta):
    check_tree_values(tree_token_ids, cu_num_nodes, node_logits, retrieve_indices, temperature)
    rules = Rules(mode, relax_radius, action_lo, action_hi, typical_eps, typical_delta)
    return ref.verify_tree_ref(tree_token_ids, cu_num_nodes, node_logits, retrieve_indices, temperature, rules)


def _tree_triton(*args):
    from ..triton_kernels.specdec import verify_tree_triton

    check_tree_values(args[0], args[1], args[2], args[3], args[4])
    return verify_tree_triton(*args)


def _tree_fake(tree_token_ids, cu_num_nodes, node_logits, retrieve_indices, temperature, mode, relax_radius, action_lo,
               action_hi, typical_eps, typical_delta):
    B, D1 = _check_tree(backend_for("specdec_verify_tree", node_logits.device), tree_token_ids, cu_num_nodes,
                        node_logits, retrieve_indices, temperature, mode, relax_radius, action_lo, action_hi,
                        typical_eps, typical_delta)
    i32 = dict(dtype=torch.int32)
    return (node_logits.new_empty((B, D1), **i32), node_logits.new_empty((B,), **i32),
            node_logits.new_empty((B,), **i32))


VERIFY = register_op(OpSpec("specdec_verify", _VERIFY_SCHEMA, _verify_ref, _verify_fake, _check_verify,
                            CAPABILITIES["specdec_verify"], triton=_verify_triton))
VERIFY_TREE = register_op(OpSpec("specdec_verify_tree", _TREE_SCHEMA, _tree_ref, _tree_fake, _check_tree,
                                 CAPABILITIES["specdec_verify_tree"], triton=_tree_triton))
