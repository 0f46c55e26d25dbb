"""Ahead-of-time compilation of every leankern Triton kernel for real GPUs, without one.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90 | 100, 32))`` produces PTX and a
cubin on a CPU-only machine. :func:`compile_all` builds the representative specialisations
(the same constexprs and options the launchers use), :func:`aot_report` adds registers, shared
memory and spills per kernel (registers from ``cuobjdump --dump-resource-usage`` on the cubin,
spills from ``ptxas -v`` on the same PTX), for the tests and the bench.

Must run with the real ``JITFunction``: ``TRITON_INTERPRET`` unset before import (tests call
it in a subprocess).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch

__all__ = ["KernelSpec", "kernel_specs", "linear_specs", "specdec_specs", "vocab_specs", "sefp_specs", "moe_specs",
           "compile_spec",
           "resource_usage", "loop_sass", "compile_all", "aot_report", "format_report", "TARGETS"]

TARGETS = {"sm_90": 90, "sm_100": 100}
_PTR = {torch.float32: "*i32", torch.bfloat16: "*i16", torch.float16: "*fp16"}  # launchers' views
_OUT_PTR = {torch.float32: "*fp32", torch.bfloat16: "*i16", torch.float16: "*fp16"}


@dataclass
class KernelSpec:
    """One specialisation: a readable name, the JIT kernel, its argument types and constexprs."""

    name: str
    fn: object
    arg_types: dict  # runtime argument name -> Triton type string ("*u8", "i32", ...)
    constexprs: dict
    num_warps: int
    family: str = ""  # quantize | dequantize | hadamard | linear | specdec | vocab | sefp | moe
    targets: tuple = ("sm_90", "sm_100")  # the architectures this specialisation is meant for
    num_stages: int | None = None  # None: Triton's default (as the launchers that pass none)
    div16: tuple = ()  # int arguments the JIT would specialise as multiples of 16 (typical shapes)


def _check_not_interpreting():
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("leankern.triton_kernels.aot needs compiled kernels: unset TRITON_INTERPRET "
                           "before importing triton (run it in a subprocess)")


def _quantize_spec(fmt, bs, mode, dtype, stochastic):
    from .mx import quantize_config

    fn, ce, nw = quantize_config(fmt, bs, mode, dtype, stochastic)
    types = {"x_ptr": _PTR[dtype], "rb_ptr": "*i32" if stochastic else "*u8"}
    if fmt.startswith("nv"):
        types["g_ptr"] = "*fp32"
    types.update(codes_ptr="*u8", scales_ptr="*u8", n_blocks="i32")
    # NV: the mode only matters as "reciprocal" (x * r instead of x / d)
    nv_mode = "_reciprocal" if mode == "reciprocal" else ""
    tag = f"{'sr' if stochastic else 'rne'}_{str(dtype)[6:]}_bs{bs}" + (nv_mode if fmt.startswith("nv") else f"_{mode}")
    return KernelSpec(f"quantize[{fmt},{tag}]", fn, types, ce, nw, "quantize")


def _dequantize_spec(fmt, bs, out_dtype):
    from ..mx.formats import get_format
    from .mx import dequantize_config

    fn, ce, nw = dequantize_config(fmt, bs, out_dtype)
    code_ptr = "*i8" if get_format(fmt).code_dtype == torch.int8 else "*u8"  # launcher's view
    types = dict(codes_ptr=code_ptr, scales_ptr="*u8", g_ptr="*fp32",
                 out_ptr=_OUT_PTR[out_dtype], n_blocks="i32")
    return KernelSpec(f"dequantize[{fmt},{str(out_dtype)[6:]}_bs{bs}]", fn, types, ce, nw, "dequantize")


def _hadamard_spec(n, dtype, has_signs):
    from .mx_hadamard import hadamard_config

    fn, ce, nw = hadamard_config(n, dtype, has_signs)
    types = dict(x_ptr=_PTR[dtype], scale="fp32", signs_ptr="*fp32", out_ptr=_OUT_PTR[dtype],
                 n_rows="i32")
    return KernelSpec(f"hadamard[n{n},{str(dtype)[6:]}{',signs' if has_signs else ''}]", fn, types, ce, nw,
                      "hadamard")


_X_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}  # mx_linear reads x as is


def _code_ptr(fmt):
    from ..mx.formats import get_format

    el = get_format(fmt).element
    return "*i8" if el.is_int and not el.packed else "*u8"  # mx.code_view


_LINEAR_DIV16 = ("N", "K", "k_per_split")  # model shapes: multiples of 16 (the JIT specialises them so)


def _linear_tail(out_dtype):
    return dict(bias_ptr="*fp32", y_ptr=_OUT_PTR[out_dtype], part_ptr="*fp32", M="i32", N="i32", K="i32",
                k_per_split="i32")


def _linear_wo_spec(fmt, bs, dtype, M, split_k=1, bias=True, gemv=False):
    """Weight-only GEMM (M > 16: 64-row tiles, wgmma), split-K tensor-core GEMV (M <= 16) or, ``gemv``, the
    no-``tl.dot`` GEMV of one x row (mx_gemv) of mx_linear."""
    from .mx_linear import weight_only_config

    fn, ce, nw = weight_only_config(fmt, bs, dtype, dtype, bias, M, gemv=gemv)
    types = dict(x_ptr=_X_PTR[dtype], codes_ptr=_code_ptr(fmt), scales_ptr="*u8", g_ptr="*fp32", **_linear_tail(dtype))
    tag = f"{str(dtype)[6:]},M{M},bs{bs}" + (f",splitk{split_k}" if split_k > 1 else "")
    return KernelSpec(f"linear_{'gemv' if gemv else 'wo'}[{fmt},{tag}]", fn, types,
                      dict(ce, SPLIT_K=split_k, EVEN_K=True), nw, "linear", div16=_LINEAR_DIV16)


def _linear_dual_spec(act_fmt, fmt, bs, mode, M, dtype=torch.bfloat16, targets=("sm_90", "sm_100")):
    from .mx_linear import dual_config

    fn, ce, nw = dual_config(act_fmt, fmt, bs, mode, dtype, True, M)
    types = dict(xc_ptr=_code_ptr(act_fmt), xs_ptr="*u8", xg_ptr="*fp32", wc_ptr=_code_ptr(fmt), ws_ptr="*u8",
                 wg_ptr="*fp32", **_linear_tail(dtype))
    return KernelSpec(f"linear_{mode}[{act_fmt}x{fmt},M{M},bs{bs}]", fn, types, dict(ce, SPLIT_K=1), nw, "linear",
                      targets, div16=_LINEAR_DIV16)


def _splitk_reduce_spec(dtype, split_k):
    from .mx import bf16_nan_bits, output_kind
    from .mx_linear import _splitk_reduce_kernel

    ce = dict(BM=32, BN=64, SPLIT_K=split_k, N_G=1, HAS_BIAS=True, OUT_KIND=output_kind(dtype),
              BF16_NAN=bf16_nan_bits("cuda"))
    types = dict(part_ptr="*fp32", g1_ptr="*fp32", g2_ptr="*fp32", bias_ptr="*fp32", y_ptr=_OUT_PTR[dtype],
                 M="i32", N="i32")
    return KernelSpec(f"linear_splitk_reduce[{str(dtype)[6:]},splitk{split_k}]", _splitk_reduce_kernel, types, ce, 4,
                      "linear", div16=("N",))


def linear_specs(quick: bool = False) -> list[KernelSpec]:
    """mx_linear: weight-only GEMM/GEMV per element family, the dual kernels per mode."""
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    specs = [
        _linear_wo_spec("mxfp4", 32, bf16, 64),
        _linear_wo_spec("mxint8", 32, bf16, 1, split_k=8),
        _linear_wo_spec("mxfp4", 32, bf16, 1, split_k=4, gemv=True),
        _linear_dual_spec("mxint8", "mxint8", 32, "int", 64),
        _linear_dual_spec("mxfp8_e4m3", "mxfp8_e4m3", 32, "fp8", 64),
        _linear_dual_spec("mxfp4", "mxfp4", 32, "scaled", 64, targets=("sm_100",)),
        _splitk_reduce_spec(bf16, 8),
    ]
    if not quick:
        specs += [
            _linear_wo_spec("nvfp4", 16, bf16, 64),
            _linear_wo_spec("mxfp8_e4m3", 32, bf16, 64),
            _linear_wo_spec("mxfp6_e2m3", 32, bf16, 1),
            _linear_wo_spec("nvint4", 16, f32, 64),
            _linear_wo_spec("mxint4", 32, f16, 1, split_k=4),
            _linear_wo_spec("nvfp4", 16, f32, 1, split_k=2, gemv=True),
            _linear_wo_spec("mxfp8_e4m3", 32, f16, 1, gemv=True),
            _linear_dual_spec("mxint4", "mxint4", 32, "int", 1),
            _linear_dual_spec("nvfp4", "nvfp4", 16, "fp8", 1),
            _linear_dual_spec("nvint4", "nvint4", 16, "int", 1),
            _linear_dual_spec("mxfp8_e5m2", "mxfp8_e5m2", 32, "fp8", 64, targets=("sm_90",)),
            _linear_dual_spec("mxfp8_e4m3", "mxfp8_e4m3", 32, "scaled", 64, targets=("sm_100",)),
        ]
    return specs


# ---------------------------------------------------------------------------------------- specdec
_LOGIT_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}  # read as is
_SPECDEC_DIV16 = ("stride_t", "stride_b", "stride_q", "stride_n", "V", "CH")  # vocabularies: multiples of 16
_STATS = dict(pmax_ptr="*fp32", pidx_ptr="*i32", psum_ptr="*i64")


def _specdec_spec(name, kernel, types, constexprs):
    from . import specdec as sd

    return KernelSpec(f"specdec_{name}", kernel, types, dict(constexprs), sd.NUM_WARPS, "specdec",
                      div16=_SPECDEC_DIV16)


def _specdec_rows(dtype):
    ptr = _LOGIT_PTR[dtype]
    return dict(tgt_ptr=ptr, bonus_ptr=ptr, stride_t="i32", stride_b="i32", T="i32", V="i32", CH="i32", SPLIT="i32",
                **_STATS)


def _specdec_max_spec(dtype):
    from . import specdec as sd

    return _specdec_spec(f"row_max[{str(dtype)[6:]}]", sd._row_max_kernel, _specdec_rows(dtype),
                         dict(BLOCK=sd.BLOCK))


def _specdec_sums_spec(dtype, temp=True, w_min=False, entropy=False, store_w=False):
    """The exp-polynomial pass: ``[..,temp]`` has both loops (t == 1 without, t != 1 with the division)."""
    from . import specdec as sd

    types = dict(_specdec_rows(dtype), NSUB="i32", cu_ptr="*i32", B="i32", temp_ptr="*fp32", wmin_ptr="*i64",
                 w_ptr="*i64", pent_ptr="*fp64")
    tag = ",".join([str(dtype)[6:]] + [k for k, on in (("temp", temp), ("wmin", w_min), ("entropy", entropy),
                                                       ("store_w", store_w)) if on])
    ce = dict(BLOCK=sd.BLOCK, SUB=sd.BLOCK * sd.SUB_BLOCKS, SPLIT_P2=1, HAS_TEMP=temp, HAS_WMIN=w_min,
              ENTROPY=entropy, STORE_W=store_w)
    return _specdec_spec(f"row_sums[{tag}]", sd._row_sums_kernel, types, ce)


def _specdec_tiles(split_p2, nsub_p2):
    from . import specdec as sd

    return dict(SPLIT_P2=split_p2, NSUB_P2=nsub_p2, SUB=sd.BLOCK * sd.SUB_BLOCKS, BLOCK=sd.BLOCK)


def _specdec_scan_spec(mode, dtype, has_q=False, temp=True, w_min=False, split_p2=1, nsub_p2=64):
    from . import specdec as sd

    types = dict(_specdec_rows(dtype), NSUB="i32", draft_ptr="*i32", cu_ptr="*i32", q_ptr=_LOGIT_PTR[dtype],
                 stride_q="i32",
                 u_ptr="*fp32", temp_ptr="*fp32", wmin_ptr="*i64", pent_ptr="*fp64", out_ptr="*i32", nacc_ptr="*i32",
                 plan_ptr="*i32", out_stride="i32", relax_radius="i32", action_lo="i32", action_hi="i32",
                 eps_bits="i64", delta_bits="i64")
    ce = dict(MODE=sd.MODES[mode], HAS_Q=has_q, HAS_TEMP=temp, HAS_WMIN=w_min, **_specdec_tiles(split_p2, nsub_p2))
    tag = f"{mode},{str(dtype)[6:]}" + (",q" if has_q else "") + (",wmin" if w_min else "") + f",split{split_p2}"
    return _specdec_spec(f"verify_scan[{tag}]", sd._verify_scan_kernel, types, ce)


def _specdec_residual_specs(dtype, split_p2=1, nsub_p2=64):
    from . import specdec as sd

    ptr = _LOGIT_PTR[dtype]
    common = dict(tgt_ptr=ptr, stride_t="i32", q_ptr=ptr, stride_q="i32", temp_ptr="*fp32", wmin_ptr="*i64",
                  plan_ptr="*i32", pres_ptr="*i64", V="i32", SPLIT="i32", NSUB="i32", **_STATS)
    ce = dict(HAS_TEMP=True, HAS_WMIN=False, **_specdec_tiles(split_p2, nsub_p2))
    tag = f"{str(dtype)[6:]},split{split_p2}"
    return [_specdec_spec(f"residual_sums[{tag}]", sd._residual_sums_kernel, dict(common, CH="i32"), ce),
            _specdec_spec(f"residual_sample[{tag}]", sd._residual_sample_kernel,
                          dict(common, cu_ptr="*i32", u_ptr="*fp32", out_ptr="*i32", T="i32", out_stride="i32"), ce)]


def _specdec_tree_spec(mode, dtype):
    from . import specdec as sd

    types = dict(tok_ptr="*i32", cu_ptr="*i32", node_ptr=_LOGIT_PTR[dtype], stride_n="i32", ri_ptr="*i32",
                 temp_ptr="*fp32", pent_ptr="*fp64", out_ptr="*i32", nacc_ptr="*i32", best_ptr="*i32", P="i32",
                 D1="i32", SPLIT="i32", NSUB="i32", relax_radius="i32", action_lo="i32", action_hi="i32",
                 eps_bits="i64", delta_bits="i64", **_STATS)
    ce = dict(MODE=sd.MODES[mode], HAS_TEMP=True, SPLIT_P2=1, NSUB_P2=64)
    return _specdec_spec(f"tree_scan[{mode},{str(dtype)[6:]}]", sd._tree_scan_kernel, types, ce)


def specdec_specs(quick: bool = False) -> list[KernelSpec]:
    """specdec: the row passes (max; weight sums with temperature / top-k-top-p threshold / entropy / raw
    weights), the per-request scans of every mode, the residual sampling pair, the tree scan."""
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    specs = [
        _specdec_max_spec(f32),
        _specdec_max_spec(bf16),
        _specdec_sums_spec(f32),
        _specdec_sums_spec(bf16, w_min=True, entropy=True),
        _specdec_scan_spec("greedy", bf16, temp=False),
        _specdec_scan_spec("rejection", f32, split_p2=8),
        *_specdec_residual_specs(bf16, split_p2=8),
    ]
    if not quick:
        specs += [
            _specdec_max_spec(f16),
            _specdec_sums_spec(f16),
            _specdec_sums_spec(f32, temp=False, store_w=True),
            _specdec_scan_spec("relaxed", f32, temp=False),
            _specdec_scan_spec("rejection", bf16, has_q=True, w_min=True),
            _specdec_scan_spec("typical", f16),
            _specdec_tree_spec("relaxed", bf16),
            _specdec_tree_spec("typical", f32),
        ]
    return specs


# ---------------------------------------------------------------------------------------- vocab
_VOCAB_DIV16 = ("K", "H", "stride_h", "stride_w", "stride_ids", "stride_o", "stride_c", "stride_x", "stride_last",
                "stride_s", "CH", "V")  # model shapes: multiples of 16


def _vocab_spec(name, kernel, types, constexprs, num_warps=4, num_stages=None):
    return KernelSpec(f"vocab_{name}", kernel, types, dict(constexprs), num_warps, "vocab", num_stages=num_stages,
                      div16=_VOCAB_DIV16)


def _vocab_head_types(h_dtype, w_dtype, bias_dtype):
    return dict(h_ptr=_LOGIT_PTR[h_dtype], w_ptr=_LOGIT_PTR[w_dtype], ids_ptr="*i32", bias_ptr=_LOGIT_PTR[bias_dtype],
                B="i32", K="i32", H="i32", stride_h="i32", stride_w="i32", stride_ids="i32", soft_cap="fp32",
                scale="fp32")


def _vocab_head_ce(B, h_dtype, w_dtype, per_row, bias, cap, block_k=64):
    """The launcher's tiles as gather_config picks them: 64-id tiles (32 when K is too small to fill the SMs)."""
    from . import vocab as tv

    dot = tv._dot_kind(h_dtype, w_dtype, "cuda")
    block_b = 16 if per_row else min(64, max(16, 1 << max(B - 1, 0).bit_length()))
    ce = dict(BLOCK_K=block_k, BLOCK_B=block_b, BLOCK_H=64 if dot == tv.DOT_NATIVE else 32, PER_ROW=per_row,
              HAS_BIAS=bias, HAS_CAP=cap, DOT=dot, LIBM=True)
    return ce


def _vocab_dt_tag(h_dtype, w_dtype):
    return str(h_dtype)[6:] if h_dtype == w_dtype else f"{str(h_dtype)[6:]}x{str(w_dtype)[6:]}"


def _vocab_gather_spec(B, h_dtype, w_dtype=None, per_row=False, bias=False, cap=False, out_dtype=torch.float32,
                       block_k=64):
    from . import vocab as tv
    from .mx import output_kind

    w_dtype = w_dtype or h_dtype
    types = dict(_vocab_head_types(h_dtype, w_dtype, w_dtype), out_ptr=_OUT_PTR[out_dtype], stride_o="i32")
    ce = dict(_vocab_head_ce(B, h_dtype, w_dtype, per_row, bias, cap, block_k), OUT_KIND=output_kind(out_dtype),
              BF16_NAN=0x7FFF)
    tag = ",".join([_vocab_dt_tag(h_dtype, w_dtype), f"B{B}", f"K{block_k}"] + [t for t, on in (
        ("per_row", per_row), ("bias", bias), ("cap", cap)) if on] + [f"out_{str(out_dtype)[6:]}"])
    return _vocab_spec(f"gather[{tag}]", tv._gather_kernel, types, ce, tv.NUM_WARPS, 3)


def _vocab_topk_spec(B, k, h_dtype, per_row=False, cap=False):
    from . import vocab as tv

    types = dict(_vocab_head_types(h_dtype, h_dtype, h_dtype), cand_ptr="*i64", stride_c="i32", KK="i32")
    ce = _vocab_head_ce(B, h_dtype, h_dtype, per_row, False, cap)
    kk = min(k, ce["BLOCK_K"])
    ce["KK_P2"] = 1 << max(kk - 1, 0).bit_length()
    tag = ",".join([str(h_dtype)[6:], f"B{B}", f"k{k}"] + (["per_row"] if per_row else []) + (["cap"] if cap else []))
    return _vocab_spec(f"topk_tile[{tag}]", tv._topk_tile_kernel, types, ce, tv.NUM_WARPS, 3)


def _vocab_scatter_specs(dtype):
    from . import vocab as tv

    bits = {torch.float32: "*i32", torch.bfloat16: "*i16", torch.float16: "*i16"}[dtype]
    last = _vocab_spec("scatter_last", tv._scatter_last_kernel,
                       dict(ids_ptr="*i32", stride_ids="i32", last_ptr="*i32", stride_last="i32", K="i32"),
                       dict(BLOCK=1024), tv.NUM_WARPS)
    write = _vocab_spec(f"scatter_write[{str(dtype)[6:]}]", tv._scatter_write_kernel,
                        dict(src_ptr=bits, stride_s="i32", ids_ptr="*i32", stride_ids="i32", last_ptr="*i32",
                             stride_last="i32", out_ptr=bits, stride_o="i32", K="i32"),
                        dict(PER_ROW=False, BLOCK=1024), tv.NUM_WARPS)
    return [last, write]


def _vocab_stats_specs(dtype, temp):
    """logit_stats: the chunk pass (``temp`` 0: t = 1, 2: x * (1 / t) as on CUDA) and the per-row merge."""
    from . import vocab as tv

    common = dict(x_ptr=_LOGIT_PTR[dtype], stride_x="i32", t="fp32", inv_t="fp32", pf_ptr="*fp32", pi_ptr="*i32",
                  R="i32")
    part = _vocab_spec(f"stats_partial[{str(dtype)[6:]},temp{temp}]", tv._stats_partial_kernel,
                       dict(common, V="i32", CH="i32"), dict(TEMP=temp, BLOCK=1024), tv.STATS_WARPS)
    final = _vocab_spec(f"stats_final[{str(dtype)[6:]},temp{temp}]", tv._stats_final_kernel,
                        dict(common, v_f="fp32", log_v="fp32", SPLIT="i32", mx_ptr="*fp32", am_ptr="*i64",
                             lse_ptr="*fp32", ent_ptr="*fp32", cert_ptr="*fp32"),
                        dict(TEMP=temp, SPLIT_P2=8, LIBM=True), tv.NUM_WARPS)
    return [part, final]


def vocab_specs(quick: bool = False) -> list[KernelSpec]:
    """vocab: the gather GEMM (decode and prefill tiles, native bf16 / fp16 MMA and the fp32 ieee dot), the
    top-k tile kernel (k = 1, a tl.topk selection, the whole tile), scatter's two passes, logit_stats' passes."""
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    specs = [
        _vocab_gather_spec(4, bf16, bias=True, cap=True),
        _vocab_gather_spec(1, bf16, block_k=32),  # small K: 32-id tiles (mma.sync)
        _vocab_gather_spec(256, bf16),
        _vocab_gather_spec(4, f32),
        _vocab_topk_spec(4, 1, bf16),
        _vocab_topk_spec(4, 8, bf16),
        *_vocab_scatter_specs(bf16),
        *_vocab_stats_specs(bf16, 2),
    ]
    if not quick:
        specs += [
            _vocab_gather_spec(1, f16, per_row=True, out_dtype=bf16),
            _vocab_gather_spec(4, f32, bf16, out_dtype=f16),  # mixed dtypes: the launcher widens hidden to fp32
            _vocab_topk_spec(16, 64, f32, cap=True),
            _vocab_topk_spec(1, 4, bf16, per_row=True),
            *_vocab_scatter_specs(f32)[1:],
            *_vocab_stats_specs(f32, 0),
        ]
    return specs


# ---------------------------------------------------------------------------------------- sefp
_SEFP_DIV16 = ("K", "N", "Kw", "NB", "n_blocks", "plane_stride", "k_per_split")  # model shapes: multiples of 16


def _sefp_spec(name, kernel, types, constexprs, num_warps):
    return KernelSpec(f"sefp_{name}", kernel, types, dict(constexprs), num_warps, "sefp", div16=_SEFP_DIV16)


def _sefp_quantize_spec(m_max, bs, dtype):
    from .sefp import quantize_config

    fn, ce, nw = quantize_config(m_max, bs, dtype)
    types = dict(w_ptr=_PTR[dtype], planes_ptr="*i32", exps_ptr="*i8", flags_ptr="*i32", n_blocks="i32", NB="i32",
                 K="i32", plane_stride="i32")
    return _sefp_spec(f"quantize[m{m_max},{str(dtype)[6:]},bs{bs}]", fn, types, ce, nw)


def _sefp_dequantize_spec(m, bs, out_dtype):
    from .sefp import dequantize_config

    fn, ce, nw = dequantize_config(m, bs, out_dtype)
    types = dict(planes_ptr="*i32", exps_ptr="*i8", out_ptr=_OUT_PTR[out_dtype], n_blocks="i32", NB="i32", K="i32",
                 plane_stride="i32")
    return _sefp_spec(f"dequantize[m{m},{str(out_dtype)[6:]},bs{bs}]", fn, types, ce, nw)


def _sefp_linear_spec(m, bs, dtype, M, split_k=1, bias=True):
    """The linear kernel as the launcher configures it for ``M`` rows (split-K > 1: decode partials)."""
    from .sefp import linear_config

    fn, ce, nw = linear_config(m, bs, dtype, bias, M)
    types = dict(x_ptr=_X_PTR[dtype], planes_ptr="*i32", exps_ptr="*i8", bias_ptr=_X_PTR[dtype], y_ptr=_OUT_PTR[dtype],
                 part_ptr="*fp32", M="i32", N="i32", K="i32", Kw="i32", NB="i32", plane_stride="i32",
                 k_per_split="i32")
    tag = f"{str(dtype)[6:]},m{m},M{M},bs{bs}" + (f",splitk{split_k}" if split_k > 1 else "")
    return _sefp_spec(f"linear[{tag}]", fn, types, dict(ce, SPLIT_K=split_k), nw)


def _sefp_packed_linear_spec(m, bs, dtype, M, split_k=1, bias=True):
    """The packed-copy linear kernel (:mod:`.sefp_packed`) as its launcher configures it for ``M`` rows."""
    from .sefp_packed import packed_linear_config

    fn, ce, nw = packed_linear_config(m, bs, dtype, bias, M)
    types = dict(x_ptr=_X_PTR[dtype], codes_ptr="*u8", exps_ptr="*i8", bias_ptr=_X_PTR[dtype], y_ptr=_OUT_PTR[dtype],
                 part_ptr="*fp32", M="i32", N="i32", K="i32", Kp="i32", RB="i32", NB="i32", k_per_split="i32")
    tag = f"{str(dtype)[6:]},m{m},M{M},bs{bs}" + (f",splitk{split_k}" if split_k > 1 else "")
    return KernelSpec(f"sefp_packed_linear[{tag}]", fn, types, dict(ce, SPLIT_K=split_k), nw, "sefp",
                      div16=("K", "N", "Kp", "RB", "NB", "k_per_split"))


def sefp_specs(quick: bool = False) -> list[KernelSpec]:
    """sefp: quantize (bit-plane packing), dequantize (planes 0..m), the linear kernel per dot kind: bf16 (scale
    folded into the weight; wgmma / tcgen05 tiles and mma.sync decode tiles), fp16 (per-block dots), fp32 (ieee)."""
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    specs = [
        _sefp_quantize_spec(8, 32, f32),
        _sefp_dequantize_spec(4, 32, bf16),
        _sefp_linear_spec(8, 32, bf16, 256),
        _sefp_linear_spec(4, 32, bf16, 1, split_k=8),
        _sefp_linear_spec(8, 128, f16, 64),
        _sefp_linear_spec(4, 32, f32, 64),
        _sefp_packed_linear_spec(5, 32, bf16, 256),
        _sefp_packed_linear_spec(3, 32, bf16, 1, split_k=8),
        _sefp_packed_linear_spec(7, 64, f32, 64),
    ]
    if not quick:
        specs += [
            _sefp_quantize_spec(16, 256, bf16),
            _sefp_quantize_spec(4, 64, f16),
            _sefp_dequantize_spec(8, 64, f32),
            _sefp_dequantize_spec(16, 128, f16),
            _sefp_linear_spec(2, 128, bf16, 64),
            _sefp_linear_spec(4, 32, f16, 64),
            _sefp_linear_spec(8, 256, bf16, 16, split_k=4, bias=False),
            _sefp_linear_spec(11, 32, f16, 1, split_k=8),
            _sefp_linear_spec(12, 64, bf16, 1, split_k=8),  # m > 8 with bf16 x: the fp32 ieee dot
        ]
    return specs


# ---------------------------------------------------------------------------------------- moe
_MOE_DIV16 = ("E", "GS", "H", "I", "N", "stride_l", "stride_x", "stride_ge", "stride_gn", "stride_ue", "stride_un",
              "stride_gbe", "stride_ube", "stride_i", "stride_a", "stride_we", "stride_wn", "stride_be",
              "stride_o")  # model shapes: multiples of 16
_MOE_RULES = ("none", "modes", "naee", "top_p", "min_p", "top_k")
_SKIP_ARGS = dict(p0="fp32", p1="fp32", p2="fp32", p3="fp32", p_bits="i64")


def _moe_spec(name, kernel, types, constexprs, num_warps=4, num_stages=None):
    return KernelSpec(f"moe_{name}", kernel, types, dict(constexprs), num_warps, "moe", num_stages=num_stages,
                      div16=_MOE_DIV16)


def _moe_route_spec(dtype, E, k, scoring="softmax", n_group=1, bias=False, rule="none", renorm=False, mod=False):
    from . import moe as tm

    types = dict(logits_ptr=_LOGIT_PTR[dtype], stride_l="i32", bias_ptr="*fp32", mod_ptr="*i32", ids_ptr="*i32",
                 w_ptr="*fp32", E="i32", GS="i32", NG="i32", TOPK_GROUP="i32", K="i32", rsf="fp32", **_SKIP_ARGS)
    ce = dict(SOFTMAX=scoring == "softmax", HAS_BIAS=bias, GROUPED=n_group > 1, RENORMALIZE=True, HAS_MOD=mod,
              RULE=tm.RULE_CODES[rule], SKIP_RENORM=renorm, BLOCK_G=n_group, BLOCK_GS=E // n_group,
              BLOCK_K=max(2, 1 << (k - 1).bit_length()), LIBM=True)
    tag = ",".join([str(dtype)[6:], f"E{E}", f"k{k}", scoring] + ([f"groups{n_group}"] if n_group > 1 else [])
                   + (["bias"] if bias else []) + [rule] + (["renorm"] if renorm else []))
    return _moe_spec(f"route[{tag}]", tm._route_kernel, types, ce)


def _moe_skip_spec(k, rule, renorm=False, mod=False):
    from . import moe as tm

    types = dict(ids_in="*i32", w_in="*fp32", mod_ptr="*i32", ids_out="*i32", w_out="*fp32", K="i32", **_SKIP_ARGS)
    ce = dict(HAS_MOD=mod, RULE=tm.RULE_CODES[rule], RENORM=renorm, BLOCK_K=max(2, 1 << (k - 1).bit_length()))
    return _moe_spec(f"skip[k{k},{rule}{',renorm' if renorm else ''}]", tm._skip_kernel, types, ce)


def _moe_align_specs(has_map=False):
    from . import moe as tm

    block, block_e = 64, 1024  # align_config on a GPU
    count = _moe_spec(f"align_count[{'map' if has_map else 'nomap'}]", tm._align_count_kernel,
                      dict(ids_ptr="*i32", map_ptr="*i32", mapped_ptr="*i32", rank_ptr="*i32", counts_ptr="*i32",
                           offsets_ptr="*i32", kept_ptr="*i32", S="i32", E="i32", block_m="i32"),
                      dict(HAS_MAP=has_map, BLOCK=block, BLOCK_E=block_e))
    scatter = _moe_spec("align_scatter", tm._align_scatter_kernel,
                        dict(mapped_ptr="*i32", rank_ptr="*i32", offsets_ptr="*i32", sorted_ptr="*i32",
                             blocks_ptr="*i32", S="i32", E="i32", B_MAX="i32", block_m="i32", n_iter="i32"),
                        dict(BLOCK=block))
    return [count, scatter]


def _moe_dot(x_dtype, w_dtype):
    return 1 if x_dtype == w_dtype and x_dtype in (torch.bfloat16, torch.float16) else 0


def _moe_gate_up_spec(dtype, bm, w_dtype=None, act="silu", interleaved=False, bias=False, dense=False, gate=False,
                      w_cols=False):
    """The gate/up kernel as experts_config picks it (BN = BK = 64 native, 32 x 16 fp32); ``w_cols``: a transposed
    view of w13 (stride(1) == 1, as gpt-oss's gate_up_proj.transpose(1, 2))."""
    from . import moe as tm
    from .mx import output_kind

    w_dtype = w_dtype or dtype
    dot = _moe_dot(dtype, w_dtype)
    inter = w_dtype if w_dtype in (torch.bfloat16, torch.float16) else torch.float32
    bn, bk = (64, 64) if dot else (32, 16)
    wp = _LOGIT_PTR[w_dtype]
    types = dict(x_ptr=_LOGIT_PTR[dtype], g_ptr=wp, u_ptr=wp, gb_ptr=wp, ub_ptr=wp, sg_ptr=wp, sorted_ptr="*i32",
                 bexp_ptr="*i32", inter_ptr=_OUT_PTR[inter], glog_ptr="*fp32", M="i32", H="i32", I="i32",
                 K_TOPK="i32", stride_x="i32", stride_ge="i32", stride_gn="i32", stride_gk="i32", stride_ue="i32",
                 stride_un="i32", stride_uk="i32", stride_gbe="i32", stride_gbn="i32", stride_ube="i32",
                 stride_ubn="i32", stride_i="i32", alpha="fp32", limit="fp32")
    ce = dict(BM=bm, BN=bn, BK=bk, DENSE=dense, ACT=0 if act == "silu" else 1, HAS_BIAS=bias, HAS_GATE=gate, DOT=dot,
              OUT_KIND=output_kind(inter), BF16_NAN=0x7FFF, LIBM=True)
    for name in ("stride_gk", "stride_uk") if not w_cols else ("stride_gn", "stride_un"):
        del types[name]
        ce[name] = 1
    if bias and not interleaved:
        for name in ("stride_gbn", "stride_ubn"):
            del types[name]
            ce[name] = 1  # the JIT specialises strides equal to 1 as constants
    tag = ",".join([_vocab_dt_tag(dtype, w_dtype), f"BM{bm}", act] + [t for t, on in (
        ("interleaved", interleaved), ("bias", bias), ("dense", dense), ("gate", gate), ("w_cols", w_cols)) if on])
    return _moe_spec(f"gate_up[{tag}]", tm._gate_up_kernel, types, ce, 4, 3)


def _moe_down_spec(dtype, bm, bias=False, dense=False, gate=False, w_cols=False):
    from . import moe as tm

    dot = _moe_dot(dtype, dtype)
    bn, bk = (64, 64) if dot else (32, 16)
    wp = _LOGIT_PTR[dtype]
    types = dict(a_ptr=wp, w_ptr=wp, b_ptr=wp, sorted_ptr="*i32", bexp_ptr="*i32", tw_ptr="*fp32", glog_ptr="*fp32",
                 out_ptr="*fp32", M="i32", N="i32", I="i32", K_TOPK="i32", stride_a="i32", stride_we="i32",
                 stride_wn="i32", stride_wk="i32", stride_be="i32", stride_o="i32")
    ce = dict(BM=bm, BN=bn, BK=bk, DENSE=dense, HAS_BIAS=bias, HAS_GATE=gate, DOT=dot, LIBM=True)
    one = "stride_wn" if w_cols else "stride_wk"
    del types[one]
    ce[one] = 1
    tag = ",".join([str(dtype)[6:], f"BM{bm}"] + [t for t, on in (("bias", bias), ("dense", dense), ("gate", gate),
                                                                   ("w_cols", w_cols)) if on])
    return _moe_spec(f"down[{tag}]", tm._down_kernel, types, ce, 4, 3)


def _moe_combine_spec(dtype, shared=False):
    from . import moe as tm
    from .mx import output_kind

    types = dict(ids_ptr="*i32", slot_ptr="*fp32", shared_ptr="*fp32", out_ptr=_OUT_PTR[dtype], H="i32",
                 K_TOPK="i32")
    ce = dict(HAS_SHARED=shared, OUT_KIND=output_kind(dtype), BF16_NAN=0x7FFF, BLOCK=256)
    return _moe_spec(f"combine[{str(dtype)[6:]}{',shared' if shared else ''}]", tm._combine_kernel, types, ce)


def moe_specs(quick: bool = False) -> list[KernelSpec]:
    """moe: routing (softmax top-k; sigmoid + bias + groups fused with MoDES; top-p with renormalisation: the fp64
    cumsum), the skip kernel per rule family, align's two kernels, the grouped GEMMs (prefill 64-row blocks on the
    native bf16 MMA, decode 16-row blocks, the fp32 ieee dot, the shared expert's dense mode), the combine."""
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    specs = [
        _moe_route_spec(bf16, 128, 8),
        _moe_route_spec(f32, 64, 6, "sigmoid", n_group=8, bias=True, rule="modes", mod=True),
        _moe_skip_spec(8, "top_p", renorm=True),
        *_moe_align_specs(),
        _moe_gate_up_spec(bf16, 64),
        _moe_gate_up_spec(bf16, 16, act="swiglu_oai", interleaved=True, bias=True, w_cols=True),
        _moe_down_spec(bf16, 64),
        _moe_down_spec(bf16, 16, bias=True),
        _moe_combine_spec(bf16),
    ]
    if not quick:
        specs += [
            _moe_route_spec(f32, 64, 8, rule="top_p", renorm=True),
            _moe_skip_spec(8, "modes"),  # no modality: every token text (decode)
            _moe_skip_spec(8, "top_k"),
            _moe_skip_spec(64, "naee", renorm=True),
            *_moe_align_specs(has_map=True)[:1],
            _moe_gate_up_spec(f32, 64),
            _moe_gate_up_spec(f16, 64, act="swiglu_oai", bias=True),
            _moe_gate_up_spec(bf16, 64, dense=True, gate=True),
            _moe_down_spec(f32, 64, bias=True),
            _moe_down_spec(f16, 64, w_cols=True),
            _moe_down_spec(bf16, 64, dense=True, gate=True),
            _moe_combine_spec(f32, shared=True),
        ]
    return specs


def kernel_specs(quick: bool = False) -> list[KernelSpec]:
    """The representative specialisations: every format family, both scale modes, RNE and SR."""
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    specs = [
        _quantize_spec("mxfp8_e4m3", 32, "rceil", f32, False),
        _quantize_spec("mxfp4", 32, "rceil", bf16, False),
        _quantize_spec("mxint8", 32, "floor", f32, False),
        _quantize_spec("nvfp4", 16, "rceil", f32, False),
        _quantize_spec("nvfp4", 16, "reciprocal", bf16, False),
        _dequantize_spec("mxfp8_e4m3", 32, bf16),
        _dequantize_spec("mxfp4", 32, f32),
        _dequantize_spec("nvfp4", 16, bf16),
        _hadamard_spec(32, bf16, True),
    ]
    if not quick:
        specs += [
            _quantize_spec("mxfp6_e3m2", 32, "floor", f16, False),
            _quantize_spec("mxint4", 32, "rceil", bf16, True),
            _quantize_spec("mxfp8_e5m2", 64, "rceil", bf16, True),
            _quantize_spec("nvint4", 16, "rceil", bf16, True),
            _dequantize_spec("mxint8", 32, f16),
            _dequantize_spec("mxint4", 32, bf16),
            _dequantize_spec("nvint4", 16, f32),
            _hadamard_spec(128, f32, False),
            _hadamard_spec(1024, f32, True),
        ]
    return (specs + linear_specs(quick) + specdec_specs(quick) + vocab_specs(quick) + sefp_specs(quick)
            + moe_specs(quick))


def compile_spec(spec: KernelSpec, arch: int):
    """Compile one spec for ``sm_<arch>``; returns the ``CompiledKernel`` (asm: ptx, cubin, ...)."""
    _check_not_interpreting()
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .mx import GPU_COMPILE_OPTIONS

    names = spec.fn.arg_names
    signature = {n: spec.arg_types[n] if n in spec.arg_types else "constexpr" for n in names}
    missing = [n for n in names if n not in spec.arg_types and n not in spec.constexprs]
    if missing:
        raise ValueError(f"{spec.name}: no type or constexpr for {missing}")
    # pointers 16-byte aligned, as torch allocations are and the JIT launcher specialises
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if signature[n].startswith("*") or n in spec.div16}
    src = ASTSource(fn=spec.fn, signature=signature, constexprs=dict(spec.constexprs), attrs=attrs)
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    stages = {} if spec.num_stages is None else dict(num_stages=spec.num_stages)
    opts = backend.parse_options(dict(num_warps=spec.num_warps, **stages, **GPU_COMPILE_OPTIONS))  # as launched
    return triton.compile(src, target=target, options=opts.__dict__)


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _cuobjdump(compiled, flag: str) -> str:
    """``cuobjdump <flag>`` (Triton's bundled one) on the kernel's cubin: its stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        with open(cubin, "wb") as fh:
            fh.write(compiled.asm["cubin"])
        return subprocess.run([_tool("cuobjdump"), flag, cubin], capture_output=True, text=True, check=True).stdout


def resource_usage(compiled, arch: int) -> dict:
    """Registers (cubin), spill bytes and stack (ptxas -v on the same PTX), shared bytes."""
    dump = _cuobjdump(compiled, "--dump-resource-usage")
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as fh:
            fh.write(compiled.asm["ptx"])
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        log = subprocess.run([_tool("ptxas-blackwell" if arch >= 90 else "ptxas"), "-v", "--fmad=false",
                              "--regAllocOptLevel=2", f"--gpu-name={gpu}", ptx, "-o", os.path.join(tmp, "v.o")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"REG:(\d+)", dump)
    spill_st = sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", log))
    spill_ld = sum(int(v) for v in re.findall(r"(\d+) bytes spill loads", log))
    stack = sum(int(v) for v in re.findall(r"(\d+) bytes stack frame", log))
    return dict(registers=int(regs.group(1)) if regs else None, spills=spill_st + spill_ld,
                stack_bytes=stack, shared_bytes=int(compiled.metadata.shared))


def compile_all(targets=("sm_90", "sm_100"), quick: bool = False, families=None):
    """Yield ``(spec, target_name, compiled)`` for every spec and target (``families``: only those)."""
    for spec in kernel_specs(quick):
        if families is not None and spec.family not in families:
            continue
        for t in targets:
            if t in spec.targets:
                yield spec, t, compile_spec(spec, TARGETS[t])


def aot_report(targets=("sm_90", "sm_100"), quick: bool = False) -> list[dict]:
    """One row per (kernel, target): ``{kernel, target, num_warps, registers, shared_bytes, spills}``."""
    rows = []
    for spec, t, compiled in compile_all(targets, quick):
        use = resource_usage(compiled, TARGETS[t])
        rows.append(dict(kernel=spec.name, target=t, num_warps=spec.num_warps, registers=use["registers"],
                         shared_bytes=use["shared_bytes"], spills=use["spills"], stack_bytes=use["stack_bytes"]))
    return rows


def loop_sass(compiled) -> dict:
    """The SASS of the kernel's longest loop (``cuobjdump -sass`` on the cubin; the span from a backward branch's
    target to the branch): ``{"instructions": n, "opcodes": {opcode: count}}``. A static count, for comparing
    kernels' work per element; it says nothing of stalls."""
    sass = _cuobjdump(compiled, "-sass")
    ins = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,6})\*/\s+([^;]*);", sass)]
    best = []
    for addr, text in ins:
        m = re.search(r"\bBRA\s+`?\(?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            body = [t for a, t in ins if int(m.group(1), 16) <= a <= addr]
            best = body if len(body) > len(best) else best
    opcodes: dict = {}
    for t in best:
        op = t.split()[1] if t.startswith("@") else t.split()[0]
        opcodes[op.split(".")[0]] = opcodes.get(op.split(".")[0], 0) + 1
    return {"instructions": len(best), "opcodes": opcodes}


def format_report(rows: list[dict]) -> str:
    head = f"{'kernel':44s} {'target':7s} {'warps':>5s} {'regs':>5s} {'smem B':>7s} {'spills':>6s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['kernel']:44s} {r['target']:7s} {r['num_warps']:5d} {r['registers']!s:>5s} "
                     f"{r['shared_bytes']:7d} {r['spills']:6d}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m leankern.triton_kernels.aot
    print(format_report(aot_report()))
