"""Ahead-of-time compile every leankern Triton kernel for sm_90 (Hopper) and sm_100 (Blackwell).

Runs on a CPU-only machine: compilation happens in a subprocess with ``TRITON_INTERPRET`` unset
(this test process may be interpreting). The PTX is checked for the instructions the kernels are
designed around, so a regression in vectorisation, register use or numerics-relevant codegen
(FMA contraction, flush-to-zero, approximate division, native fp8 casts) fails here.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = textwrap.dedent(
    """
    import json, sys
    try:
        import leankern.triton_kernels.aot as aot
    except ImportError:  # uninstalled checkout: map triton_kernels/ to leankern.triton_kernels
        import leankern
        leankern.__path__.append({repo!r})
        import leankern.triton_kernels.aot as aot
    rows = []
    families = tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else None
    for spec, target, compiled in aot.compile_all(("sm_90", "sm_100"), families=families):
        use = aot.resource_usage(compiled, aot.TARGETS[target])
        rows.append(dict(name=spec.name, family=spec.family, target=target, num_warps=spec.num_warps,
                         constexprs=spec.constexprs, arg_types=spec.arg_types, ptx=compiled.asm["ptx"],
                         cubin_bytes=len(compiled.asm["cubin"]),
                         loop=aot.loop_sass(compiled) if spec.family == "linear" else None, **use))
    json.dump(dict(kernels=rows, report=aot.aot_report() if families is None else []), open(sys.argv[1], "w"))
    """
).format(repo=_REPO)


def _compile_in_subprocess(out, *families):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-c", _SCRIPT, str(out)] + ([",".join(families)] if families else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["kernels"], "no kernels compiled"
    return data


@pytest.fixture(scope="module")
def aot_data(tmp_path_factory):
    return _compile_in_subprocess(tmp_path_factory.mktemp("aot") / "kernels.json")


@pytest.fixture(scope="module")
def compiled(aot_data):
    return aot_data["kernels"]


def _count(pattern, ptx):
    return len(re.findall(pattern, ptx))


def _assert_16bit_mma(r, el, dot):
    """A GEMM tile's instruction by its path: no 16-bit dot -> the ieee fp32 dot (FMAs, no tensor-core
    instruction); 16-row tiles -> mma.sync m16n8k16; 64-row tiles -> wgmma (sm_90) / tcgen05.mma kind::f16 (sm_100)."""
    ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
    if not dot:
        assert _count(r"\bfma\.rn\.f32\b", ptx) > 0 and _count(r"\bmma\b|wgmma|tcgen05\.mma", ptx) == 0, where
    elif ce["BM"] < 64:
        assert _count(rf"\bmma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.{el}\.{el}\.f32\b", ptx) > 0, where
    elif r["target"] == "sm_90":
        assert _count(rf"\bwgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.{el}\.{el}\b", ptx) > 0, where
    else:
        assert _count(r"\btcgen05\.mma\.cta_group::1\.kind::f16\b", ptx) > 0, where


def _is_vocab_gemm(row):
    return row["name"].startswith(("vocab_gather[", "vocab_topk_tile["))


def _is_sefp_gemm(row):
    return row["name"].startswith(("sefp_linear[", "sefp_packed_linear["))


def _is_moe_gemm(row):
    return row["name"].startswith(("moe_gate_up[", "moe_down["))


def _elems_per_thread(row):
    ce = row["constexprs"]
    tile = ce["NB"] * ce["BS"] if "NB" in ce else ce["ROWS"] * ce["N"]
    return tile // (32 * row["num_warps"])


_IN_BYTES = {"*i32": 4, "*fp32": 4, "*i16": 2, "*fp16": 2}


def test_every_family_and_target_compiled(compiled):
    seen = {(r["family"], r["target"]) for r in compiled}
    for fam in ("quantize", "dequantize", "hadamard", "linear", "specdec", "vocab", "moe"):
        for tgt in ("sm_90", "sm_100"):
            assert (fam, tgt) in seen
    names = {r["name"].split(",")[0] for r in compiled if r["family"] == "quantize"}
    for fmt in ("mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4"):
        assert f"quantize[{fmt}" in names
    for r in compiled:
        arch = r["target"].split("_")[1]
        assert re.search(rf"\.target sm_{arch}a\b", r["ptx"]), (r["name"], r["target"])
        assert r["cubin_bytes"] > 0


def test_no_spills_no_local_memory(compiled):
    for r in compiled:
        where = (r["name"], r["target"])
        assert r["spills"] == 0 and r["stack_bytes"] == 0, where
        assert _count(r"\.local\b", r["ptx"]) == 0, where
        if _is_sefp_gemm(r):  # test_sefp_resources (GEMM tiles: <= 255 registers, <= 96 KB shared)
            continue
        if _is_moe_gemm(r):  # test_moe_resources (GEMM tiles: <= 255 registers, <= 96 KB shared)
            continue
        if r["family"] == "linear" or _is_vocab_gemm(r):  # GEMM tiles: one or two CTAs per SM, staged operands
            assert 0 < r["registers"] <= 255, where  # in shared memory
            assert r["shared_bytes"] <= 160 * 1024, where
            continue
        assert 0 < r["registers"] <= 128, where  # leaves room for >= 4 CTAs of 128 threads per SM
        assert r["shared_bytes"] <= 48 * 1024, where


def test_exact_ieee_codegen(compiled):
    """No FMA contraction, no flush-to-zero, no approximate division, no native fp8 conversion."""
    for r in compiled:
        ptx, where = r["ptx"], (r["name"], r["target"])
        if r["family"] == "linear":  # test_linear_codegen: the fp32 dot's FMAs are the accumulation
            continue
        if r["family"] == "specdec":  # test_specdec_exact_codegen: libdevice's fp64 log / exp use FMAs
            continue
        if r["family"] == "vocab":  # test_vocab_codegen: fp32 dot FMAs, ex2.approx sums, libdevice tanh / log
            continue
        if r["family"] == "sefp":  # test_sefp_codegen: the fp32 ieee dot's FMAs
            continue
        if r["family"] == "moe":  # test_moe_codegen: the fp32 ieee dot's FMAs, libdevice's expf
            continue
        assert _count(r"\bfma\.", ptx) == 0, where
        assert _count(r"\.ftz\b", ptx) == 0, where
        assert _count(r"div\.(full|approx)|rcp\.approx", ptx) == 0, where
        assert _count(r"cvt\.[a-z.]*(e4m3|e5m2|e2m1|e2m3|e3m2|ue8m0)", ptx) == 0, where


def test_streaming_loads_are_128_bit(compiled):
    for r in compiled:
        if r["family"] in ("sefp", "moe"):  # test_sefp_streaming_loads; moe: gathers and GEMM tiles
            continue
        if r["family"] in ("linear", "specdec", "vocab"):  # GEMM tiles: operands staged through shared memory;
            continue  # specdec / vocab: test_specdec_row_passes_load_128_bit, test_vocab_stats_streams_vector_loads
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        ept = _elems_per_thread(r)
        if r["family"] in ("quantize", "hadamard"):
            want = ept * _IN_BYTES[r["arg_types"]["x_ptr"]] // 16
            if ce.get("STOCHASTIC"):
                want += ept * 4 // 16  # the int32 random words
            assert _count(r"ld\.global(\.[a-z0-9]+)*\.v4\.b32", ptx) >= want, where
        else:
            code_bytes = ept // 2 if ce["PACKED"] else ept
            row_bytes = ce["BS"] // 2 if ce["PACKED"] else ce["BS"]
            width = 16 if row_bytes >= 16 else 8  # NV packed rows are 8 bytes: 64-bit is the widest
            vec = r"\.v4\.b32" if width == 16 else r"\.v[24]\.b32"
            assert _count(rf"ld\.global(\.[a-z0-9]+)*{vec}", ptx) >= code_bytes // width, where
            out_bytes = ept * _IN_BYTES[r["arg_types"]["out_ptr"]]
            assert _count(r"st\.global(\.[a-z0-9]+)*\.v4\.b32", ptx) >= out_bytes // 16, where


def test_quantize_block_max_is_an_integer_warp_reduction(compiled):
    """amax over |x| bit patterns: integer max (NaN-proof) reduced across threads with shuffles."""
    for r in (r for r in compiled if r["family"] == "quantize"):
        ptx, where = r["ptx"], (r["name"], r["target"])
        assert _count(r"max\.[us]32", ptx) >= 1, where
        assert _count(r"max(\.[a-zA-Z]+)*\.f32", ptx) == 0, where
        if r["constexprs"]["BS"] >= 32:
            assert _count(r"shfl\.sync\.bfly\.b32", ptx) >= 1, where
        if r["name"].startswith("quantize[nv"):
            assert _count(r"div\.rn\.f32", ptx) >= 3, where  # amax/max, /g, x/d: all IEEE


def test_hadamard_butterfly_op_count(compiled):
    """Exactly log2(n) add-or-sub per element: every stage done once, nothing fused or dropped."""
    for r in (r for r in compiled if r["family"] == "hadamard"):
        ptx, ce = r["ptx"], r["constexprs"]
        scalar = _count(r"\b(add|sub)\.rn\.f32\s", ptx) + _count(r"\b(add|sub)\.f32\s", ptx)
        paired = _count(r"\b(add|sub)\.rn\.f32x2\b", ptx)
        assert scalar + 2 * paired == ce["LOG_N"] * _elems_per_thread(r), (r["name"], r["target"])


def test_aot_report_rows(aot_data):
    """aot_report(): the bench's table, one row per (kernel, target), same numbers as the compile."""
    keys = {"kernel", "target", "num_warps", "registers", "shared_bytes", "spills"}
    report = aot_data["report"]
    assert all(keys <= set(row) for row in report)
    by_key = {(r["name"], r["target"]): r for r in aot_data["kernels"]}
    assert set(by_key) == {(row["kernel"], row["target"]) for row in report}
    for row in report:
        r = by_key[(row["kernel"], row["target"])]
        assert (row["registers"], row["shared_bytes"], row["spills"]) == (r["registers"], r["shared_bytes"], r["spills"])


# --------------------------------------------------------------------------------- mx_linear
def _linear(compiled, prefix):
    rows = [r for r in compiled if r["family"] == "linear" and r["name"].startswith(prefix)]
    assert rows, f"no {prefix} kernel compiled"
    return rows


def test_linear_weight_only_mma(compiled):
    """bf16 x: 64-row tiles -> wgmma (sm_90) / tcgen05.mma kind::f16 (sm_100); decode tiles (M <= 16)
    -> mma.sync m16n8k16 bf16; fp32 / fp16 x -> the ieee fp32 dot (FMAs, no tensor core)."""
    for r in _linear(compiled, "linear_wo["):
        _assert_16bit_mma(r, "bf16", r["constexprs"]["BF16_DOT"])


def test_linear_gemv_fmas(compiled):
    """The one-row GEMV (mx_gemv): fp32 FMAs (sm_100: paired, fma.rn.f32x2), no tensor-core instruction; its codes
    arrive in vector loads."""
    for r in _linear(compiled, "linear_gemv["):
        ptx, where = r["ptx"], (r["name"], r["target"])
        assert _count(r"\bfma\.rn\.f32(x2)?\b", ptx) >= 16 and _count(r"\bmma\b|wgmma|tcgen05\.mma", ptx) == 0, where
        assert _count(r"\bld\.global(\.\w+)*\.v[24]\.b32\b", ptx) > 0, where


def test_linear_loop_sass(compiled):
    """aot.loop_sass finds each mx_linear kernel's K loop in the cubin: the one-row GEMV's has FFMAs and no
    tensor-core instruction, the tensor-core kernel's its MMA (HMMA on sm_90; sm_100's tcgen05 is issued by one
    thread behind a branch, so only sm_90 is checked)."""
    for r in _linear(compiled, "linear_"):
        if r["target"] != "sm_90" or "reduce" in r["name"]:
            continue
        ops, where = r["loop"]["opcodes"], (r["name"], r["target"])
        assert r["loop"]["instructions"] >= 32, where
        if r["name"].startswith("linear_gemv["):
            assert ops.get("FFMA", 0) >= 16 and not any(k in ops for k in ("HMMA", "HGMMA", "IMMA")), where
        elif r["name"].startswith("linear_wo[") and r["constexprs"]["BF16_DOT"]:
            assert ops.get("HMMA", 0) + ops.get("HGMMA", 0) > 0, where


def test_linear_int8_mma(compiled):
    """INT x INT dual: s8 x s8 -> s32 MMA per scale block."""
    for r in _linear(compiled, "linear_int["):
        ptx, where = r["ptx"], (r["name"], r["target"])
        if r["constexprs"]["BM"] < 64:
            assert _count(r"\bmma\.sync\.aligned\.m16n8k32\.row\.col(\.satfinite)?\.s32\.s8\.s8\.s32", ptx) > 0, where
        elif r["target"] == "sm_90":
            assert _count(r"\bwgmma\.mma_async\.sync\.aligned\.m64n\d+k32\.s32\.s8\.s8", ptx) > 0, where
        else:
            assert _count(r"\btcgen05\.mma\.cta_group::1\.kind::i8\b", ptx) > 0, where


def test_linear_fp8_mma(compiled):
    """FP x FP dual on sm_90: e4m3 (e5m2 for e5m2 pairs) wgmma per scale block (decode tiles: Triton
    widens fp8 to f16 exactly for mma.sync, Hopper's mma.sync has no fp8); sm_100: tcgen05.mma kind::f8f6f4."""
    for r in _linear(compiled, "linear_fp8["):
        ptx, where = r["ptx"], (r["name"], r["target"])
        fp8 = "e5m2" if "e5m2xmxfp8_e5m2" in r["name"] else "e4m3"
        if r["constexprs"]["BM"] < 64:
            assert _count(r"\bmma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.f16\.f16\.f32", ptx) > 0, where
        elif r["target"] == "sm_90":
            assert _count(rf"\bwgmma\.mma_async\.sync\.aligned\.m64n\d+k32\.f32\.{fp8}\.{fp8}", ptx) > 0, where
        else:
            assert _count(r"\btcgen05\.mma\.cta_group::1\.kind::f8f6f4\b", ptx) > 0, where


def test_linear_dot_scaled_is_block_scaled_mma(compiled):
    """tl.dot_scaled on sm_100: the hardware block-scaled MMA with 32-element E8M0 scales."""
    rows = _linear(compiled, "linear_scaled[")
    assert {r["target"] for r in rows} == {"sm_100"}
    for r in rows:
        kind = "mxf4" if "mxfp4xmxfp4" in r["name"] else "mxf8f6f4"
        pat = rf"\btcgen05\.mma\.cta_group::1\.kind::{kind}\.block_scale\.block32\b"
        assert _count(pat, r["ptx"]) > 0, r["name"]


def test_linear_codegen_rounds_only_where_documented(compiled):
    """No flush-to-zero, no approximate division, no conversion *to* an fp8/fp4 type (codes are
    decoded with integer ops; fp8 -> f16 widening for mma.sync is exact), fp32 -> bf16 is RN."""
    for r in _linear(compiled, "linear_"):
        ptx, where = r["ptx"], (r["name"], r["target"])
        assert _count(r"\.ftz\b", ptx) == 0, where
        assert _count(r"div\.(full|approx)|rcp\.approx", ptx) == 0, where
        assert _count(r"cvt\.[a-z.]*satfinite\.(e4m3|e5m2|e2m1|e2m3|e3m2|ue8m0)", ptx) == 0, where
        assert _count(r"cvt\.(rz|rm|rp)[a-z.]*\.bf16", ptx) == 0, where


# --------------------------------------------------------------------------------- specdec
_SPECDEC_KERNELS = ("row_max", "row_sums", "verify_scan", "residual_sums", "residual_sample", "tree_scan")
# fp32 multiplies of one exp-polynomial evaluation (numerics.exp_poly + the 2**40 scale): d * log2e,
# n * ln2_hi, n * ln2_lo, 7 Horner steps, * 2**n, * 2**40
_EXP_POLY_MULS = 12


def _specdec(compiled, kernel=""):
    rows = [r for r in compiled if r["family"] == "specdec" and r["name"].startswith(f"specdec_{kernel}")]
    assert rows, f"no specdec_{kernel} kernel compiled"
    return rows


def _specdec_elems_per_thread(row):
    return row["constexprs"]["BLOCK"] // (32 * row["num_warps"])


def _uses_fp64_libm(row):
    """Kernels that call libdevice's fp64 log / exp (the typical-acceptance entropy)."""
    ce = row["constexprs"]
    return bool(ce.get("ENTROPY")) or ce.get("MODE") == 3


def test_specdec_every_kernel_for_both_targets(compiled):
    names = {(r["name"].split("[")[0], r["target"]) for r in _specdec(compiled)}
    for kernel in _SPECDEC_KERNELS:
        for target in ("sm_90", "sm_100"):
            assert (f"specdec_{kernel}", target) in names


def test_specdec_exact_codegen(compiled):
    """The bit-exactness of the integer softmax weights needs the fp32 ops as written: no FMA contraction
    (compiled with enable_fp_fusion=False), no flush-to-zero, IEEE division (div.rn) for the temperature,
    truncating fp32 -> int64 conversion. fp64 FMAs / an ftz reciprocal seed exist only inside libdevice's
    log / exp of the typical kernels (the entropy, not part of the replayable weights)."""
    for r in _specdec(compiled):
        ptx, where = r["ptx"], (r["name"], r["target"])
        assert _count(r"\bfma\.[a-z.]*f32", ptx) == 0, where  # f32 and packed f32x2 (sm_100)
        assert _count(r"\.ftz\.f32|\.approx\.f32|div\.full", ptx) == 0, where
        if _uses_fp64_libm(r):
            assert _count(r"\.ftz\b", ptx) == _count(r"\brcp\.approx\.ftz\.f64\b", ptx), where
        else:
            assert _count(r"\bfma\.", ptx) == 0 and _count(r"\.ftz\b", ptx) == 0, where
    for r in _specdec(compiled, "row_sums"):
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        loops = 2 if ce["HAS_TEMP"] else 1  # t == 1 (no division) and t != 1
        evals = loops * _specdec_elems_per_thread(r)
        muls = _count(r"\bmul\.rn\.f32\s", ptx) + 2 * _count(r"\bmul\.rn\.f32x2\s", ptx)  # sm_100 pairs them
        assert muls >= _EXP_POLY_MULS * evals, where
        assert _count(r"\bcvt\.rmi\.f32\.f32\b", ptx) == evals, where  # floor(d * log2e + 0.5)
        assert _count(r"\bcvt\.rzi\.s64\.f32\b", ptx) == evals, where  # trunc(e * 2**40)
        if ce["HAS_TEMP"]:
            assert _count(r"\bdiv\.rn\.f32\b", ptx) >= evals // 2, where
    for r in _specdec(compiled, "verify_scan[rejection"):
        assert _count(r"\bmul\.rn\.f64\b", r["ptx"]) >= 2, r["name"]  # u * q * S in fp64
    for r in _specdec(compiled, "verify_scan[typical"):
        assert _count(r"\bdiv\.rn\.f64\b", r["ptx"]) >= 1, r["name"]  # W_x / S in fp64


_LOGIT_BYTES = {"*fp32": 4, "*bf16": 2, "*fp16": 2}


def test_specdec_row_passes_load_128_bit(compiled):
    """The row passes stream the logits with 128-bit loads (8 ids per thread and block step)."""
    for r in _specdec(compiled, "row_"):
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        loops = 2 if ce.get("HAS_TEMP") else 1
        want = loops * _specdec_elems_per_thread(r) * _LOGIT_BYTES[r["arg_types"]["tgt_ptr"]] // 16
        assert _count(r"ld\.global(\.[a-z0-9]+)*\.v4\.b32", ptx) >= want, where


def test_specdec_resources(compiled):
    """No spills, no local memory; the row passes stay small enough for many CTAs per SM."""
    for r in _specdec(compiled):
        where = (r["name"], r["target"], r["registers"], r["shared_bytes"])
        assert r["spills"] == 0 and r["stack_bytes"] == 0 and _count(r"\.local\b", r["ptx"]) == 0, where
        assert 0 < r["registers"] <= (64 if r["name"].startswith("specdec_row_max") else 128), where
        assert r["shared_bytes"] <= 8 * 1024, where


# --------------------------------------------------------------------------------- vocab
_VOCAB_KERNELS = ("gather", "topk_tile", "scatter_last", "scatter_write", "stats_partial", "stats_final")


@pytest.fixture(scope="module")
def vocab_compiled(tmp_path_factory):
    """The vocab kernels only (the family's tests stay quick with ``-k vocab``)."""
    return _compile_in_subprocess(tmp_path_factory.mktemp("aot_vocab") / "kernels.json", "vocab")["kernels"]


def _vocab(compiled, kernel=""):
    rows = [r for r in compiled if r["name"].startswith(f"vocab_{kernel}")]
    assert rows, f"no vocab_{kernel} kernel compiled"
    return rows


def _native_dot(row):
    return row["constexprs"]["DOT"] == 1


def test_vocab_every_kernel_for_both_targets(vocab_compiled):
    names = {(r["name"].split("[")[0], r["target"]) for r in vocab_compiled}
    for kernel in _VOCAB_KERNELS:
        for target in ("sm_90", "sm_100"):
            assert (f"vocab_{kernel}", target) in names


def test_vocab_gather_mma(vocab_compiled):
    """bf16 / fp16 tiles (ids on M = 64, rows on N = 16..64): wgmma on sm_90, tcgen05.mma kind::f16 on sm_100;
    32-id tiles (small K): mma.sync m16n8k16; fp32 (and mixed dtypes, widened to fp32): the ieee fp32 dot, FMAs
    and no tensor-core instruction."""
    for r in _vocab(vocab_compiled, "gather[") + _vocab(vocab_compiled, "topk_tile["):
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        if not _native_dot(r):
            assert _count(r"\bfma\.rn\.f32\b", ptx) >= 64 and _count(r"\bmma\b|wgmma|tcgen05\.mma", ptx) == 0, where
            continue
        el = "bf16" if r["arg_types"]["w_ptr"] == "*bf16" else "f16"
        if ce["BLOCK_K"] < 64:
            assert _count(rf"\bmma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.{el}\.{el}\.f32\b", ptx) > 0, where
        elif r["target"] == "sm_90":
            n = ce["BLOCK_B"]
            pat = rf"\bwgmma\.mma_async\.sync\.aligned\.m64n{n}k16\.f32\.{el}\.{el}\b"
            assert _count(pat, ptx) == ce["BLOCK_H"] // 16, where  # one k16 step per 16 columns of H
        else:
            assert _count(r"\btcgen05\.mma\.cta_group::1\.kind::f16\b", ptx) > 0, where


def test_vocab_gather_reads_rows_in_place(vocab_compiled):
    """The gathered weight rows go straight from their own addresses into shared memory with 16-byte async
    copies (pipelined over H), no gathered copy is written: the only global stores are the output tile's."""
    for r in _vocab(vocab_compiled, "gather[") + _vocab(vocab_compiled, "topk_tile["):
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        w_bytes = 2 if r["arg_types"]["w_ptr"] in ("*bf16", "*fp16") else 4
        per_stage = ce["BLOCK_K"] * ce["BLOCK_H"] * w_bytes // (16 * 32 * r["num_warps"])  # copies per thread
        assert _count(r"\bcp\.async\.cg\.shared\.global\s+\[[^]]+\],\s*\[[^]]+\],\s*0x10\b", ptx) >= per_stage, where
        out_elems = ce["BLOCK_K"] * ce["BLOCK_B"] // (32 * r["num_warps"])
        assert _count(r"\bst\.global\b", ptx) <= max(out_elems, 1), where
        assert _count(r"\bld\.global\.[a-z0-9.]*b(16|32)\b", ptx) >= 1, where  # the tile's ids


def test_vocab_codegen(vocab_compiled):
    """IEEE where it matters: div.rn for z / cap, sum / V and Q / S; no FMA contraction outside the fp32 dot and
    libdevice; no flush-to-zero except inside libdevice's tanhf (ex2 / rcp approx pairs, only with a cap);
    the logit-stats exponentials are ex2.approx.f32 (no ftz); the temperature is one multiply by fl(1/t)
    (torch's CUDA scalar division) per element, never a division."""
    for r in vocab_compiled:
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        assert _count(r"div\.(full|approx)", ptx) == 0 and _count(r"\.local\b", ptx) == 0, where
        if ce.get("HAS_CAP"):
            assert _count(r"\bdiv\.rn\.f32\b", ptx) >= 1, where
            assert _count(r"\brcp\.approx\.ftz\.f32\b", ptx) == _count(r"\bex2\.approx\.ftz\.f32\b", ptx) > 0, where
            assert _count(r"\.ftz\b", ptx) == 2 * _count(r"\bex2\.approx\.ftz\.f32\b", ptx), where
        else:
            assert _count(r"\.ftz\b", ptx) == 0 and _count(r"\bapprox\b", ptx) == _count(r"\bex2\.approx\.f32\b",
                                                                                         ptx), where
        if r["name"].startswith("vocab_gather[") and _native_dot(r) and not ce.get("HAS_CAP"):
            assert _count(r"\bfma\.", ptx) == 0, where
    for r in _vocab(vocab_compiled, "stats_partial"):
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        per_thread = ce["BLOCK"] // (32 * r["num_warps"])
        assert _count(r"\bfma\.", ptx) == 0 and _count(r"\bdiv\.", ptx) == 0, where
        assert _count(r"\bex2\.approx\.f32\b", ptx) >= 2 * per_thread, where  # e^(z - m) and the lane rescale
        if ce["TEMP"] == 2:
            assert _count(r"\bmul\.rn\.f32\b", ptx) >= 4 * per_thread, where
    for r in _vocab(vocab_compiled, "stats_final"):
        assert _count(r"\bdiv\.rn\.f32\b", r["ptx"]) >= 2, r["name"]


def test_vocab_stats_streams_vector_loads(vocab_compiled):
    """The chunk pass reads each row with one vector load per thread and block (16 bytes fp32, 8 bytes bf16)."""
    for r in _vocab(vocab_compiled, "stats_partial"):
        ptx, where = r["ptx"], (r["name"], r["target"])
        vec = r"\.v4\.b32" if r["arg_types"]["x_ptr"] == "*fp32" else r"\.v2\.b32"
        assert _count(rf"\bld\.global(\.[a-z0-9]+)*{vec}", ptx) >= 1, where
        assert _count(r"\bld\.global\.b(16|32)\b", ptx) == 0, where


def test_vocab_scatter_last_position_is_an_atomic_max(vocab_compiled):
    """Pass 1 of scatter_to_full: one atomic max per id and thread; pass 2 plain loads / stores."""
    for r in _vocab(vocab_compiled, "scatter_last"):
        per_thread = r["constexprs"]["BLOCK"] // (32 * r["num_warps"])
        # the result is unused: a fire-and-forget reduction (red), relaxed (pass 2 is ordered by the launch)
        assert _count(r"\b(red|atom)\.global(\.gpu)?\.relaxed\.max\.s32\b", r["ptx"]) == per_thread, r["target"]
    for r in _vocab(vocab_compiled, "scatter_write"):
        assert _count(r"\batom\.|\bred\.global", r["ptx"]) == 0, r["target"]  # pass 2: plain stores


def test_vocab_topk_keeps_int64_keys(vocab_compiled):
    """Per-tile candidates are int64 sort keys (value and position in one word), stored as b64."""
    for r in _vocab(vocab_compiled, "topk_tile["):
        assert _count(r"\bst\.global(\.v2)?\.b64\b", r["ptx"]) >= 1, (r["name"], r["target"])


def test_vocab_resources(vocab_compiled):
    """No spills, no stack; <= 128 registers (4+ CTAs per SM); GEMM tiles' pipelined operands <= 64 KB of shared
    memory, the streaming kernels <= 16 KB."""
    for r in vocab_compiled:
        where = (r["name"], r["target"], r["registers"], r["shared_bytes"])
        assert r["spills"] == 0 and r["stack_bytes"] == 0, where
        assert 0 < r["registers"] <= 128, where
        assert r["shared_bytes"] <= (64 * 1024 if _is_vocab_gemm(r) else 16 * 1024), where


# --------------------------------------------------------------------------------- sefp
_SEFP_KERNELS = ("quantize", "dequantize", "linear", "packed_linear")


@pytest.fixture(scope="module")
def sefp_compiled(tmp_path_factory):
    """The sefp kernels only (the family's tests stay quick with ``-k sefp``)."""
    return _compile_in_subprocess(tmp_path_factory.mktemp("aot_sefp") / "kernels.json", "sefp")["kernels"]


def _sefp(compiled, kernel=""):
    rows = [r for r in compiled if r["name"].startswith(f"sefp_{kernel}")]
    assert rows, f"no sefp_{kernel} kernel compiled"
    return rows


def test_sefp_every_kernel_for_both_targets(sefp_compiled):
    names = {(r["name"].split("[")[0], r["target"]) for r in sefp_compiled}
    for kernel in _SEFP_KERNELS:
        for target in ("sm_90", "sm_100"):
            assert (f"sefp_{kernel}", target) in names
    for r in sefp_compiled:
        arch = r["target"].split("_")[1]
        assert re.search(rf"\.target sm_{arch}a\b", r["ptx"]) and r["cubin_bytes"] > 0, (r["name"], r["target"])


_SEFP_EL = {"*bf16": "bf16", "*fp16": "f16"}


def test_sefp_linear_mma(sefp_compiled):
    """bf16 x (m <= 8, scale folded into the exact bf16 weight) and fp16 x (m <= 11, per-block dots): 64-row tiles
    -> wgmma (sm_90) / tcgen05.mma kind::f16 (sm_100); decode tiles (16 rows) -> mma.sync m16n8k16; fp32 x and
    wider widths -> the ieee fp32 dot (FMAs, no tensor-core instruction)."""
    for r in _sefp(sefp_compiled, "linear["):
        dot = r["constexprs"]["DOT"]
        el = _SEFP_EL[r["arg_types"]["x_ptr"]] if dot else None
        if dot:
            assert dot == (1 if el == "bf16" else 2), (r["name"], r["target"])
        _assert_16bit_mma(r, el, dot)
    kinds = {(r["constexprs"]["DOT"], r["constexprs"]["BM"] >= 64) for r in _sefp(sefp_compiled, "linear[")}
    assert {(1, True), (1, False), (2, True), (2, False), (0, False)} <= kinds  # every path is compiled


def test_sefp_packed_linear_mma(sefp_compiled):
    """The packed copy's kernel (triton_kernels/sefp_packed.py): bf16 x -> the exact bf16 weight tile on the bf16
    MMA (wgmma on sm_90 / tcgen05.mma on sm_100 for 64-row tiles, mma.sync m16n8k16 for decode tiles); fp32 x -> the
    ieee fp32 dot (FMAs, no tensor-core instruction); the fields are byte gathers (ld.global.b8 / .u8)."""
    rows = _sefp(sefp_compiled, "packed_linear[")
    for r in rows:
        assert _count(r"\bld\.global(\.[a-z0-9]+)*\.[ub]8\b", r["ptx"]) >= 2, (r["name"], r["target"])
        _assert_16bit_mma(r, "bf16", r["constexprs"]["DOT"])
    assert {(r["constexprs"]["DOT"], r["constexprs"]["BM"] >= 64) for r in rows} == {(1, True), (1, False), (0, False)}


def test_sefp_codegen(sefp_compiled):
    """Exact by construction: integer bit operations, power-of-two scaling with IEEE subnormals (no flush-to-zero
    anywhere), no approximate division; FMAs only in the fp32 ieee dot (enable_fp_fusion=False elsewhere);
    fp32 -> bf16 / fp16 only as round-to-nearest conversions."""
    for r in sefp_compiled:
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        assert _count(r"\.ftz\b", ptx) == 0, where
        assert _count(r"div\.(full|approx)|rcp\.approx|\bapprox\b", ptx) == 0, where
        assert _count(r"cvt\.(rz|rm|rp)[a-z.]*\.(bf16|f16)", ptx) == 0, where
        if not (_is_sefp_gemm(r) and ce["DOT"] == 0):
            assert _count(r"\bfma\.", ptx) == 0, where
    for r in _sefp(sefp_compiled, "quantize["):  # block exponent: an integer max over the exponent fields
        ptx, where = r["ptx"], (r["name"], r["target"])
        assert _count(r"\bmax\.[us]32\b", ptx) >= 1 and _count(r"\bmax(\.[a-zA-Z]+)*\.f32\b", ptx) == 0, where
        assert _count(r"\bshfl\.sync\.bfly\.b32\b", ptx) >= 1, where  # words: a warp reduction of the bits


_SEFP_IN_BYTES = {"*i32": 4, "*i16": 2, "*fp16": 2, "*fp32": 4}


def test_sefp_streaming_loads(sefp_compiled):
    """quantize reads its TILE of weights with 128-bit loads; dequantize writes its tile with 128-bit stores and
    reads one word per plane per 32 weights (32-bit loads: one per plane and thread, planes 0..m only)."""
    for r in _sefp(sefp_compiled, "quantize["):
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        ept = ce["NBT"] * ce["G"] // (32 * r["num_warps"])
        want = ept * _SEFP_IN_BYTES[r["arg_types"]["w_ptr"]] // 16
        assert _count(r"\bld\.global(\.[a-z0-9]+)*\.v4\.b32", ptx) >= want, where
    for r in _sefp(sefp_compiled, "dequantize["):
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        ept = ce["NBT"] * ce["G"] // (32 * r["num_warps"])
        out_bytes = ept * _SEFP_IN_BYTES[r["arg_types"]["out_ptr"]]
        assert _count(r"\bst\.global(\.[a-z0-9]+)*\.v4\.b32", ptx) >= out_bytes // 16, where
        assert ept % 32 == 0, where  # whole words per thread: no replicated decode
        assert _count(r"\bld\.global\.b32\b", ptx) == (1 + ce["M_BITS"]) * (ept // 32), where


def test_sefp_resources(sefp_compiled):
    """No spills, no stack, no local memory; quantize / dequantize <= 128 registers and 16 KB of shared memory;
    linear tiles <= 255 registers and 96 KB (the 128 x 128 tiles: three stages of x and plane words, the decoded
    weight tile), so two CTAs fit an SM."""
    for r in sefp_compiled:
        where = (r["name"], r["target"], r["registers"], r["shared_bytes"])
        assert r["spills"] == 0 and r["stack_bytes"] == 0 and _count(r"\.local\b", r["ptx"]) == 0, where
        if _is_sefp_gemm(r):
            assert 0 < r["registers"] <= 255 and r["shared_bytes"] <= 96 * 1024, where
        else:
            assert 0 < r["registers"] <= 128 and r["shared_bytes"] <= 16 * 1024, where


def _sefp_loops(ptx):
    """PTX instructions of each loop (label .. backward branch), in order."""
    lines, labels, loops = ptx.splitlines(), {}, []
    for i, line in enumerate(lines):
        if (m := re.match(r"^\s*(\$L__\w+):", line)):
            labels[m.group(1)] = i
        if (m := re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)) and labels.get(m.group(1), i) < i:
            loops.append([s for s in (x.strip() for x in lines[labels[m.group(1)] + 1:i + 1])
                          if s and not s.startswith(("//", "$", ".", "{", "}"))])
    return loops


def test_sefp_decode_loop_instructions_per_weight(sefp_compiled):
    """Decode tiles (bf16 x, m <= 8): the bf16 weights are differences of two integer-built bit patterns (one
    sub.rn.bf16x2 per pair of weights, no per-weight conversion or scale multiply); the K loop of that path stays
    under 11 (m <= 4) / 13 (m = 8) PTX instructions per weight (was 15 / 20)."""
    rows = [r for r in _sefp(sefp_compiled, "linear[") if r["constexprs"]["DOT"] == 1 and r["constexprs"]["BM"] < 64]
    assert rows
    for r in rows:
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        assert _count(r"\bsub\.rn\.bf16x2\b", ptx) > 0, where
        fast = min((lp for lp in _sefp_loops(ptx) if any("mma" in s for s in lp)), key=len)
        per_weight = len(fast) / (ce["BN"] * ce["BK"] / (32 * r["num_warps"]))
        assert per_weight <= (11 if ce["M_BITS"] <= 4 else 13), (where, per_weight)


# --------------------------------------------------------------------------------- moe
_MOE_KERNELS = ("route", "skip", "align_count", "align_scatter", "gate_up", "down", "combine")


@pytest.fixture(scope="module")
def moe_compiled(tmp_path_factory):
    """The moe kernels only (the family's tests stay quick with ``-k moe``)."""
    return _compile_in_subprocess(tmp_path_factory.mktemp("aot_moe") / "kernels.json", "moe")["kernels"]


def _moe(compiled, kernel=""):
    rows = [r for r in compiled if r["name"].startswith(f"moe_{kernel}")]
    assert rows, f"no moe_{kernel} kernel compiled"
    return rows


def test_moe_every_kernel_for_both_targets(moe_compiled):
    names = {(r["name"].split("[")[0], r["target"]) for r in moe_compiled}
    for kernel in _MOE_KERNELS:
        for target in ("sm_90", "sm_100"):
            assert (f"moe_{kernel}", target) in names
    for r in moe_compiled:
        arch = r["target"].split("_")[1]
        assert re.search(rf"\.target sm_{arch}a\b", r["ptx"]) and r["cubin_bytes"] > 0, (r["name"], r["target"])


_MOE_EL = {"*bf16": "bf16", "*fp16": "f16"}


def test_moe_grouped_gemm_mma(moe_compiled):
    """Same-dtype 16-bit operands: 64-row blocks -> wgmma m64n64k16 on sm_90 (gate/up: two dots, one k16 step per
    16 columns of BK each), tcgen05.mma kind::f16 on sm_100; 16-row (decode) blocks -> mma.sync m16n8k16;
    fp32: the ieee fp32 dot (FMAs, no tensor-core instruction)."""
    for r in _moe(moe_compiled, "gate_up[") + _moe(moe_compiled, "down["):
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        if ce["DOT"] == 0:
            assert _count(r"\bfma\.rn\.f32\b", ptx) >= 64 and _count(r"\bmma\b|wgmma|tcgen05\.mma", ptx) == 0, where
            continue
        w_ptr = r["arg_types"].get("g_ptr", r["arg_types"].get("w_ptr"))
        el = _MOE_EL[w_ptr]
        dots = 2 if r["name"].startswith("moe_gate_up[") else 1
        if ce["BM"] < 64:
            assert _count(rf"\bmma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.{el}\.{el}\.f32\b", ptx) > 0, where
        elif r["target"] == "sm_90":
            pat = rf"\bwgmma\.mma_async\.sync\.aligned\.m64n{ce['BN']}k16\.f32\.{el}\.{el}\b"
            assert _count(pat, ptx) == dots * ce["BK"] // 16, where
        else:
            assert _count(r"\btcgen05\.mma\.cta_group::1\.kind::f16\b", ptx) >= dots, where
    kinds = {(r["constexprs"]["DOT"], r["constexprs"]["BM"]) for r in _moe(moe_compiled, "gate_up[")}
    assert {(1, 64), (1, 16), (0, 64)} <= kinds  # every path is compiled


def test_moe_codegen(moe_compiled):
    """IEEE where it matters: no approximate division (div.rn for softmax / renormalisation / sigmoid), no
    flush-to-zero except inside libdevice's expf (one ex2.approx.ftz each, with exactly 4 FMAs: fma.rm + 3 fma.rn),
    no FMA contraction elsewhere (enable_fp_fusion=False) outside the fp32 ieee dot; top-p's cumulative mass in
    fp64; align's kernels without atomics (deterministic), its one-program pass ordered by barriers."""
    for r in moe_compiled:
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        assert _count(r"div\.(full|approx)|rcp\.approx", ptx) == 0 and _count(r"\.local\b", ptx) == 0, where
        exps = _count(r"\bex2\.approx\.ftz\.f32\b", ptx)
        assert _count(r"\.ftz\b", ptx) == exps, where
        assert _count(r"\bapprox\b", ptx) == exps, where
        if not (_is_moe_gemm(r) and ce["DOT"] == 0):
            assert _count(r"\bfma\.rm\.f32\b", ptx) == exps and _count(r"\bfma\.", ptx) == 4 * exps, where
    for r in _moe(moe_compiled, "route["):
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        assert _count(r"\bdiv\.rn\.f32\b", ptx) >= 1 and _count(r"\bex2\.approx\.ftz\.f32\b", ptx) >= 1, where
    for r in _moe(moe_compiled, "route[") + _moe(moe_compiled, "skip["):
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        if ce["RULE"] == 3:  # top_p
            assert _count(r"\badd\.rn\.f64\b", ptx) >= 1 and _count(r"\bmul\.rn\.f64\b", ptx) >= 1, where
        if ce.get("SKIP_RENORM") or ce.get("RENORM"):
            assert _count(r"\bdiv\.rn\.f32\b", ptx) >= 1, where
    for r in _moe(moe_compiled, "align"):
        ptx, where = r["ptx"], (r["name"], r["target"])
        assert _count(r"\batom\.|\bred\.global", ptx) == 0, where
        if r["name"].startswith("moe_align_count"):
            assert _count(r"\bbar\.sync\b|\bbarrier\.sync\b", ptx) >= 2, where
    for r in _moe(moe_compiled, "gate_up["):
        ptx, ce, where = r["ptx"], r["constexprs"], (r["name"], r["target"])
        per_thread = ce["BM"] * ce["BN"] // (32 * r["num_warps"])
        assert _count(r"\bex2\.approx\.ftz\.f32\b", ptx) == per_thread, where  # one exp each
        if ce["ACT"] == 0:
            assert _count(r"\bdiv\.rn\.f32\b", ptx) == per_thread, where  # silu: g / (1 + e^-g)


def test_moe_resources(moe_compiled):
    """No spills, no stack, no local memory; GEMM tiles <= 255 registers and 96 KB of shared memory (gate/up:
    three stages of the x tile and both weight tiles); everything else <= 128 registers and 16 KB."""
    for r in moe_compiled:
        where = (r["name"], r["target"], r["registers"], r["shared_bytes"])
        assert r["spills"] == 0 and r["stack_bytes"] == 0 and _count(r"\.local\b", r["ptx"]) == 0, where
        if _is_moe_gemm(r):
            assert 0 < r["registers"] <= 255 and r["shared_bytes"] <= 96 * 1024, where
        else:
            assert 0 < r["registers"] <= 128 and r["shared_bytes"] <= 16 * 1024, where
