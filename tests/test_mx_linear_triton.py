"""Triton kernels of ``mx_linear`` against the reference's operands, within the derived fp32 bound.

Without a GPU the kernels run under ``TRITON_INTERPRET=1`` (conftest) on small shapes; with one
they run compiled on CUDA tensors. Every result is checked with ``tolerances.assert_linear_result``
(|y - exact| <= gamma_(K+1) * sum|x_hat w_hat| + output rounding), except where a path has more
roundings than "exact operands, fp32 sums" -- those get the same bound with more terms, derived here:

* NV weights with the bf16 tensor-core dot (GPU only): the weight enters the dot as q * s (exact)
  and g multiplies the fp32 accumulator. Against the reference's w_hat = fl(q * fl(g * s)) that is
  2 roundings in w_hat plus 1 for ``acc * g``: 3 more terms.
* Dual with an NV operand: x_hat and w_hat each carry 2 roundings (fl(q * fl(g * s))), each block's
  exact partial is rescaled once (fl(P * s_x s_w)), and the epilogue rounds fl(g_x g_w) and
  fl(acc * g): 7 more terms. (MX scales are powers of two: those products are exact.)

``gamma_n`` grows by ``u`` per extra rounding, so "n more terms" is the sum of the extra relative
errors, each at most u, over the same sum of magnitudes.

* Dual fp8 on an sm_90 GPU: Hopper's fp8 tensor-core MMA does not sum in fp32. It aligns the 32
  products of one K step to the largest and keeps about 14 significant bits (DeepSeek-V3 report,
  sec. 3.3.2: "around 14 bits"); each per-block dot is one such step (the kernel rescales and adds
  the blocks in fp32). Each product then errs by less than 2^-12 of the block's largest |x w|
  (one bit of slack on "about"), so the bound grows by 32 * 2^-12 * max_block |x w| per block.
"""
import pytest
import torch

pytest.importorskip("triton")

import leankern  # noqa: E402
from leankern.core import triton_interpreting  # noqa: E402
from leankern.mx.formats import FORMATS, get_format  # noqa: E402
from leankern.mx.ref import mx_dequantize_ref, mx_linear_ref, mx_quantize_ref  # noqa: E402
from leankern.triton_kernels import mx_linear as tml  # noqa: E402
from leankern.testing.strategies import binade_tensor  # noqa: E402
from tolerances import (assert_linear_result, assert_linear_within_bound, linear_error_bound,  # noqa: E402
                        output_unit_roundoff)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy overflow notes (interpreter)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DUAL_PAIRS = [("mxint8", "mxint8"), ("mxfp8_e4m3", "mxfp8_e4m3"), ("mxfp4", "mxfp4"), ("nvfp4", "nvfp4"),
              ("mxint4", "mxint4"), ("nvint4", "nvint4")]
N_ODD, K_ODD = 37, 96  # N not a multiple of the 64-wide tile; K = 1.5 tiles of 64 (CPU) / 3 of 32


@pytest.fixture
def dev(device):
    if device == "cpu" and not triton_interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (conftest sets it only without a GPU)")
    return device


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _bs(fmt):
    return get_format(fmt).default_block_size


def _args(fmt, M, N=N_ODD, K=K_ODD, bs=None, dtype=torch.float32, bias=True, act_fmt=None, seed=0, device="cpu"):
    bs = bs or _bs(fmt)
    g = _gen(seed)
    w = torch.randn(N, K, generator=g) * torch.pow(2.0, torch.randint(-3, 4, (N, 1), generator=g).float())
    codes, scales, gs = mx_quantize_ref(w, fmt, bs)
    x = (torch.randn(M, K, generator=g) * 2).to(dtype)
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    args = (x, codes, scales, gs, fmt, bs, b, act_fmt)
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def _extra_roundings(fmt, act_fmt, mode, bf16_dot):
    """More roundings than the reference's fp32 sums (module docstring)."""
    nv = get_format(fmt).is_nv or (act_fmt is not None and get_format(act_fmt).is_nv)
    if act_fmt is None:
        return 3 if (get_format(fmt).is_nv and bf16_dot) else 0
    return 7 if (mode is not None and nv) else 0


def _fp8_mma_sm90(dev, mode) -> bool:
    """The dual fp8 path on Hopper, whose fp8 MMA sums with ~14 significant bits (module docstring)."""
    return mode == "fp8" and dev == "cuda" and torch.cuda.get_device_capability()[0] == 9


def _fp8_mma_term(x_hat, w_hat, step=32):
    """[M, N] float64: sum over K steps of 32 * 2^-12 * max_step |x w| (module docstring)."""
    K = x_hat.shape[-1]
    pad = (-K) % step
    xs = torch.nn.functional.pad(x_hat.double(), (0, pad)).reshape(x_hat.shape[0], 1, -1, step)
    ws = torch.nn.functional.pad(w_hat.double(), (0, pad)).reshape(1, w_hat.shape[0], -1, step)
    return (xs * ws).abs().amax(-1).sum(-1) * (step * 2.0**-12)


def check(args, y, extra=0, fp8_mma=False):
    """assert_linear_result, with ``extra`` more rounding terms (zero columns add terms, not magnitude)
    and, with ``fp8_mma``, the Hopper fp8 MMA's alignment error."""
    if extra == 0 and not fp8_mma:
        return assert_linear_result(tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args), y.cpu())
    x, codes, scales, gs, fmt, bs, bias, act_fmt = (a.cpu() if isinstance(a, torch.Tensor) else a for a in args)
    w_hat = mx_dequantize_ref(codes, scales, gs, fmt, bs, torch.float32)
    x_hat = x.float() if act_fmt is None else mx_dequantize_ref(
        *mx_quantize_ref(x.contiguous(), act_fmt, bs, "rceil"), act_fmt, bs, torch.float32)
    x_hat = x_hat.reshape(-1, x.shape[-1])
    pad = torch.nn.functional.pad
    exact, bound = linear_error_bound(pad(x_hat, (0, extra)), pad(w_hat, (0, extra)), bias, x.dtype)
    if fp8_mma:
        bound = bound + _fp8_mma_term(x_hat, w_hat) * (1 + output_unit_roundoff(x.dtype))
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], codes.shape[0])
    assert_linear_within_bound(y.cpu(), exact, bound)


# ----------------------------------------------------------------------------- weight-only
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_weight_only_every_format(dev, fmt, dtype):
    """M in {1, 3, 17}, K and N not multiples of the tile, with and without bias."""
    for M in (1, 3, 17):
        args = _args(fmt, M, dtype=dtype, bias=M != 3, seed=M, device=dev)
        check(args, tml.mx_linear_triton(*args), _extra_roundings(fmt, None, None, dev == "cuda" and
                                                                    dtype == torch.bfloat16))


@pytest.mark.parametrize("fmt,bs,K", [("mxint8", 2, 70), ("mxfp4", 16, 48), ("nvint4", 64, 192),
                                      ("mxfp6_e3m2", 128, 256), ("mxfp8_e5m2", 1024, 1024)])
def test_weight_only_block_sizes(dev, fmt, bs, K):
    """Blocks smaller than, equal to and larger than the K tile."""
    args = _args(fmt, 3, N=19, K=K, bs=bs, seed=bs, device=dev)
    check(args, tml.mx_linear_triton(*args))


@pytest.mark.parametrize("split_k", [2, 3, 5])
@pytest.mark.parametrize("fmt", ["mxint4", "nvfp4", "mxfp8_e4m3"])
def test_split_k(dev, fmt, split_k):
    """Fixed-order split-K (partials, then the reduction kernel with g, bias and the cast)."""
    for dtype in (torch.float32, torch.float16):
        args = _args(fmt, 2, N=40, K=320, dtype=dtype, seed=split_k, device=dev)
        check(args, tml.mx_linear_triton(*args, split_k=split_k))


def test_split_k_rules(monkeypatch):
    """The launcher's SPLIT_K choice on a 132-SM GPU (what bench/gpu_linear_splitk.py measured on an H200):
    decode with the bf16 dot asks for >= 4 waves (power of two, <= 8); everything else keeps <= 2 waves."""
    monkeypatch.setattr(tml, "_sm_count", lambda index: 132)
    gpu = torch.device("cuda", 0)
    decode = {N: tml._split_k(1, N, 4096, 16, 64, 64, gpu, waves=4) for N in (4096, 14336)}
    assert decode == {4096: (8, 512), 14336: (4, 1024)}
    two_waves = {N: tml._split_k(1, N, 4096, 16, 64, 64, gpu)[0] for N in (4096, 14336)}
    assert two_waves == {4096: 4, 14336: 1}
    assert tml._split_k(1, 64, 96, 16, 64, 64, gpu, waves=4)[0] == 2  # never more slices than K steps
    assert tml._split_k(1, 4096, 4096, 16, 64, 64, gpu, split_k=3, waves=4) == (3, 1408)  # explicit wins


_BF16_DOT_GAP = pytest.mark.xfail(
    triton_interpreting(), strict=True,
    reason="interpreter gap: tl.dot on bf16 multiplies the raw uint16 bit patterns (numpy has no bf16)")


@_BF16_DOT_GAP
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_bf16_tensor_core_path(dev, fmt):
    """The GPU's bf16-x path (decoded weights exact in bf16, NV g in the epilogue), forced."""
    args = _args(fmt, 17, dtype=torch.bfloat16, device=dev)
    check(args, tml.mx_linear_triton(*args, bf16_dot=True), _extra_roundings(fmt, None, None, True))


def test_bf16_x_takes_the_fp32_dot_under_the_interpreter():
    _, ce, _ = tml.weight_only_config("mxfp4", 32, torch.bfloat16, torch.bfloat16, False, 2, "cpu")
    assert not ce["BF16_DOT"]
    _, ce, _ = tml.weight_only_config("mxfp4", 32, torch.bfloat16, torch.bfloat16, False, 2, "cuda")
    assert ce["BF16_DOT"] and ce["BK"] == 64


def test_one_row_takes_the_gemv():
    """M = 1 runs the no-tl.dot GEMV (mx_gemv) on every device unless a tensor-core knob is given; more rows
    the tensor-core kernel; the GEMV refuses more than GEMV_MAX_M rows."""
    from leankern.triton_kernels.mx_gemv import GEMV_MAX_M, _gemv_wo_kernel

    for dev in ("cpu", "cuda"):
        assert tml.weight_only_config("mxfp4", 32, torch.bfloat16, torch.bfloat16, False, 1, dev)[0] is _gemv_wo_kernel
        assert tml.weight_only_config("mxfp4", 32, torch.bfloat16, torch.bfloat16, False, 2, dev)[0] is \
            tml._linear_wo_kernel
    assert tml.weight_only_config("mxfp4", 32, torch.bfloat16, torch.bfloat16, False, 1, "cuda",
                                  bf16_dot=True)[0] is tml._linear_wo_kernel
    assert tml.weight_only_config("mxfp4", 32, torch.float32, torch.float32, False, 1, "cuda",
                                  gemv=False)[0] is tml._linear_wo_kernel
    with pytest.raises(ValueError, match=r"gemv: the GEMV takes at most GEMV_MAX_M=1 row\(s\) of x, got M=2"):
        tml.weight_only_config("mxfp4", 32, torch.float32, torch.float32, False, GEMV_MAX_M + 1, "cuda", gemv=True)


@pytest.mark.parametrize("gemv", [True, False], ids=["gemv", "tensor_core"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_code_one_row(dev, fmt, dtype, gemv):
    """Both weight-only kernels at M = 1 (the GEMV and, forced, the tensor-core kernel), whose shift-and-multiply
    decode is shared, against the reference on every code of the format (each weight row holds all of them:
    zeros of both signs, subnormals, the largest values, e4m3 NaN and e5m2 +-Inf / NaN), with a bias, split-K
    forced and not, K = 3 GEMV steps of 512 (4-bit) / 256 plus a tail."""
    bs = _bs(fmt)
    f = get_format(fmt)
    codes_per_byte = 2 if f.element.packed else 1
    N, K = 21, 3 * (512 if codes_per_byte == 2 else 256) + 4 * bs
    g = _gen(len(fmt))
    w = torch.randn(N, K, generator=g)
    codes, scales, gs = mx_quantize_ref(w, fmt, bs)
    n_codes = 1 << f.element.bits
    every = torch.arange(K, dtype=torch.int64) % n_codes  # every code value along each row, rotated per row
    vals = (every[None, :] + torch.arange(N)[:, None] * 3) % n_codes
    if not f.element.is_int:  # odd rows without the specials (NaN / Inf), so they have finite sums to check
        sb = f.element.sign_bit
        finite_codes = (vals >> sb << sb) | (vals & ((1 << sb) - 1)).clamp(max=f.element.max_code)
        vals = torch.where(torch.arange(N)[:, None] % 2 == 1, finite_codes, vals)
    if codes_per_byte == 2:
        vals = vals[:, 0::2] | (vals[:, 1::2] << 4)
    codes = vals.to(codes.dtype) if codes.dtype == torch.uint8 else (vals - ((vals >= 128) * 256)).to(codes.dtype)
    x = (torch.randn(1, K, generator=g) * 2).to(dtype)
    b = torch.randn(N, generator=g).to(dtype)
    for split_k in (None, 3):
        args = tuple(a.to(dev) if isinstance(a, torch.Tensor) else a for a in (x, codes, scales, gs, fmt, bs, b, None))
        y = tml.mx_linear_triton(*args, split_k=split_k, gemv=gemv)
        want = mx_linear_ref(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
        nan = torch.isnan(want)
        assert torch.equal(torch.isnan(y.cpu()), nan)
        assert torch.equal(torch.isinf(y.cpu()), torch.isinf(want))
        finite = torch.isfinite(want)[0]
        assert finite.sum() >= N // 2
        check((x, codes[finite], scales[finite], gs, fmt, bs, b[finite], None), y.cpu()[:, finite])


@pytest.mark.parametrize("fmt,bs,K", [("mxint8", 2, 70), ("mxfp4", 16, 48), ("nvint4", 64, 192),
                                      ("mxfp6_e3m2", 128, 256), ("mxfp8_e5m2", 1024, 2048), ("nvfp4", 16, 1040)])
def test_gemv_block_sizes(dev, fmt, bs, K):
    """Blocks smaller than, equal to and larger than the GEMV's K step (512 codes for 4-bit, 256 otherwise)."""
    for split_k in (None, 2):
        args = _args(fmt, 1, N=19, K=K, bs=bs, seed=bs, device=dev)
        check(args, tml.mx_linear_triton(*args, split_k=split_k, gemv=True))


def test_leading_dims_and_empty(dev):
    x, codes, scales, gs, fmt, bs, bias, _ = _args("mxint8", 6, device=dev)
    args = (x.reshape(2, 3, K_ODD), codes, scales, gs, fmt, bs, bias, None)
    y = tml.mx_linear_triton(*args)
    assert y.shape == (2, 3, N_ODD)
    check(args, y)
    y0 = tml.mx_linear_triton(x[:0], codes, scales, gs, fmt, bs, bias, None)
    assert y0.shape == (0, N_ODD)


def test_nan_scale_propagates(dev):
    """A NaN block scale (E8M0 0xFF) makes that weight row's outputs NaN, as in the reference."""
    x, codes, scales, gs, fmt, bs, bias, _ = _args("mxfp4", 3, bias=False)
    scales = scales.clone()
    scales[5, 1] = 255
    want = mx_linear_ref(x, codes, scales, gs, fmt, bs)
    got = tml.mx_linear_triton(x.to(dev), codes.to(dev), scales.to(dev), gs.to(dev), fmt, bs).cpu()
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(got[:, 5]).all()


def test_tensor_on_another_device_is_rejected():
    if not triton_interpreting():
        pytest.skip("needs CPU tensors under the interpreter")
    x, codes, scales, gs, fmt, bs, bias, _ = _args("mxint8", 1)
    with pytest.raises(ValueError, match="bias: expected a tensor on cpu"):
        tml.mx_linear_triton(x, codes, scales, gs, fmt, bs, bias.to("meta"))


def _normal(m, k, top_exp, seed):
    """[m, k] fp32 of random sign, magnitudes in [2^(top_exp - 4), 2^top_exp), each a bf16 value."""
    return binade_tensor((m, k), top_exp, _gen(seed)).bfloat16().float()


def _small_scales(fmt, N=20, K=128, byte=90):
    """Weights of every block scale byte ``byte`` (2^-37; NV: as quantized, E4M3 scales up to 448)."""
    codes, scales, gs = mx_quantize_ref(torch.randn(N, K, generator=_gen(1)) * 4, fmt, _bs(fmt))
    if not get_format(fmt).is_nv:
        scales = torch.full_like(scales.view(torch.uint8), byte).view(scales.dtype)
    return codes, scales, gs


# Known gaps of the GPU kernels at the ends of fp32's range (docs/numerics.md, "The GPU kernels at the ends of
# fp32's range"), found by the property checks below and pinned as strict xfails under the interpreter. Fixes
# were tried and not kept untimed: they cost registers in the hot kernels (sm_90 / sm_100 AOT: a second pass
# over K for non-finite tiles, weight-only 64-row tiles 96 -> 128 / 70 -> 142, the split-K reduction 68 -> 219;
# a pre-pass over x's scale bytes, dual 64-row tiles 153-166 -> 157-197 on sm_90).
_GPU_GAP = "known gap of the GPU kernels at the ends of fp32 (docs/numerics.md)"


def _gap(*values):
    return pytest.param(*values, marks=pytest.mark.xfail(strict=triton_interpreting(), reason=_GPU_GAP))


@pytest.mark.parametrize("fmt", ["mxfp4", "mxint8", _gap("nvfp4"), _gap("nvint4")])
def test_weight_only_x_near_the_top_of_fp32(dev, fmt):
    """|x| up to 2^124 times weights of small block scales (MX byte 90: 2^-37; NV as quantized): the products with
    w_hat are finite, and so must be the results wherever the exact one is (within the bound; inf only where the
    exact result reaches fp32's overflow threshold). One K slice and several. MX passes; NV does not (gap): its
    K slices' partial sums of x * (q * s) * g pass 2^128 at M = 17 (inf / NaN where the exact result is
    ~4e37-2.4e38). The CPU kernels compute such x as ((x 2^-k) W^T) 2^k (test_mx_prepack.py)."""
    codes, scales, gs = _small_scales(fmt)
    for top in (118, 124):
        for M in (1, 17):
            for dtype in (torch.float32, torch.bfloat16):
                x = _normal(M, 128, top, seed=M + top).to(dtype)
                b = torch.randn(20, generator=_gen(top)).to(dtype) if M == 17 else None
                args = tuple(a.to(dev) if isinstance(a, torch.Tensor) else a
                             for a in (x, codes, scales, gs, fmt, _bs(fmt), b, None))
                for split_k in (None, 1, 4):
                    check(args, tml.mx_linear_triton(*args, split_k=split_k),
                          _extra_roundings(fmt, None, None, dev == "cuda" and dtype == torch.bfloat16))


# ----------------------------------------------------------------------------- dual
@pytest.mark.parametrize("act_fmt,fmt", DUAL_PAIRS)
def test_dual_pairs(dev, act_fmt, fmt):
    """The six native pairs: int8-dot or fp8-dot per block (dot_scaled on sm_100 for MX FP pairs)."""
    bs = _bs(fmt)
    mode = tml.dual_mode(act_fmt, fmt, bs, dev)
    assert mode in ("int", "fp8", "scaled")
    for M in (1, 3, 17):
        for dtype in (torch.float32, torch.bfloat16):
            args = _args(fmt, M, dtype=dtype, bias=M != 3, act_fmt=act_fmt, seed=M, device=dev)
            check(args, tml.mx_linear_triton(*args), _extra_roundings(fmt, act_fmt, mode, False),
                  _fp8_mma_sm90(dev, mode))


@pytest.mark.parametrize("act_fmt,fmt", [("mxfp8_e4m3", "mxfp8_e4m3"), ("mxfp4", "mxfp4"), ("mxfp8_e5m2", "mxfp4"),
                                         ("mxfp4", "mxfp8_e4m3")])
def test_dual_dot_scaled(dev, act_fmt, fmt):
    """The sm_100 path (tl.dot_scaled with E8M0 scales), forced; K = 1.5 tiles, N = 37."""
    if dev == "cuda" and torch.cuda.get_device_capability()[0] < 10:
        pytest.skip("tl.dot_scaled is emulated before sm_100; the launcher never picks it there")
    for M in (1, 17):
        args = _args(fmt, M, act_fmt=act_fmt, seed=M, device=dev)
        check(args, tml.mx_linear_triton(*args, dual="scaled"))


@pytest.mark.parametrize("act_fmt,fmt,bs,want", [
    ("mxfp6_e2m3", "mxfp4", 32, "fp8"),  # FP6/FP4 values are exact e4m3
    ("mxfp8_e5m2", "mxfp8_e5m2", 32, "fp8"),  # e5m2 x e5m2
    ("mxint8", "mxint6", 64, "int"),  # 64-wide blocks, mixed INT widths
    ("nvint4", "mxint8", 16, "int"),  # NV x MX scales, 16-wide blocks (two blocks per 32-wide dot)
    ("mxint8", "mxfp4", 32, None),  # INT x FP: dequantize x, then the fp32 weight-only kernel
    ("mxfp8_e5m2", "mxfp4", 32, None),  # e5m2 x e4m3 values on the fp8 path: no common fp8 type
    ("mxint8", "mxint8", 512, None),  # blocks beyond the per-block kernels' range
])
def test_dual_modes_and_fallback(dev, act_fmt, fmt, bs, want):
    mode = tml.dual_mode(act_fmt, fmt, bs, "cpu")
    assert mode == want
    K = max(2 * bs, 96)
    for M in (1, 17):
        args = _args(fmt, M, K=K, bs=bs, act_fmt=act_fmt, seed=M, device=dev)
        check(args, tml.mx_linear_triton(*args, dual=mode), _extra_roundings(fmt, act_fmt, mode, False),
              _fp8_mma_sm90(dev, mode))


def test_dual_mode_per_gpu_generation(monkeypatch):
    """The launcher's choice per compute capability (no GPU needed: the capability is what it reads): fp8 dots
    from sm_89 (Triton compiles none for an A100, whose FP pairs take the dequantize-x path), dot_scaled for MX FP
    pairs from sm_100, int8 dots everywhere."""
    for cap, fp8_pair, mx_fp4_pair in (((8, 0), None, None), ((8, 6), None, None), ((8, 9), "fp8", "fp8"),
                                       ((9, 0), "fp8", "fp8"), ((10, 0), "fp8", "scaled")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cap=cap: cap)
        assert tml.dual_mode("nvfp4", "nvfp4", 16, "cuda") == fp8_pair, cap
        assert tml.dual_mode("mxfp4", "mxfp4", 32, "cuda") == mx_fp4_pair, cap
        assert tml.dual_mode("mxint8", "mxint8", 32, "cuda") == "int", cap


def test_dual_split_k(dev):
    for act_fmt, fmt in (("mxint8", "mxint8"), ("nvfp4", "nvfp4")):
        args = _args(fmt, 3, K=256, act_fmt=act_fmt, device=dev)
        mode = tml.dual_mode(act_fmt, fmt, _bs(fmt), dev)
        check(args, tml.mx_linear_triton(*args, split_k=4), _extra_roundings(fmt, act_fmt, mode, False),
              _fp8_mma_sm90(dev, mode))


@pytest.mark.parametrize("act_fmt,fmt", [("mxint8", "mxint8"), ("mxfp8_e4m3", "mxfp8_e4m3"), ("nvfp4", "nvfp4")])
def test_dual_tail_block_reads_no_scale_past_the_row(dev, act_fmt, fmt):
    """16-wide blocks, K = 48: the last 32-wide step's second block lies past the row. Its scales must not be read:
    with row 1 of x infinite in its first block (NaN scale byte; MX activations), row 0 stays within the bound
    (it was all NaN: 0 * the next row's NaN scale), and with a NaN byte just past x's scale buffer the last row
    too."""
    M, K, N, bs = 2, 48, 8, 16
    g = _gen(5)
    codes, scales, gs = mx_quantize_ref(torch.randn(N, K, generator=g), fmt, bs)
    mode = tml.dual_mode(act_fmt, fmt, bs, dev)
    assert mode in ("int", "fp8")
    tol = (_extra_roundings(fmt, act_fmt, mode, False), _fp8_mma_sm90(dev, mode))
    x = torch.randn(M, K, generator=g)
    x[1, 0] = float("inf")  # NV: x's per-tensor scale would be infinite too, every row NaN
    args = tuple(a.to(dev) if isinstance(a, torch.Tensor) else a for a in (x, codes, scales, gs, fmt, bs, None,
                                                                            act_fmt))
    if not get_format(act_fmt).is_nv:
        y = tml.mx_linear_triton(*args)
        check((args[0][:1],) + args[1:], y[:1], *tol)  # row 0: finite, within the bound
        assert torch.isnan(y[1]).all()  # row 1: as the reference's
    # x quantized by hand, its scales followed by a 0xFF byte (as allocator slack may be)
    x = torch.randn(M, K, generator=g)
    xc, xs, xg = mx_quantize_ref(x, act_fmt, bs, "rceil")
    buf = torch.full((xs.numel() + 1,), 0xFF, dtype=torch.uint8)
    buf[:-1] = xs.view(torch.uint8).reshape(-1)
    xs_tail = buf.to(dev)[:-1].view(M, K // bs).view(xs.dtype)
    out = torch.empty(M, N, device=dev)
    tml._dual((xc.to(dev), xs_tail, xg.to(dev)), *args[1:4], act_fmt, fmt, bs, mode, None, out)
    check((x.to(dev),) + args[1:], out, *tol)


@pytest.mark.parametrize("fmt,mode", [_gap("mxfp8_e5m2", "fp8"), ("mxfp8_e4m3", "fp8"), ("mxint8", "int")])
def test_dual_block_scales_beyond_fp32_range(dev, fmt, mode):
    """x ~ 2^-100 .. 2^-122 (x_hat's block scales down to 2^-127) times weight blocks scaled by 2^-37, dual per
    block: INT and e4m3 pass; e5m2 does not (gap): the kernel forms each block's factor s_x * s_w first, 2^-152 at
    x ~ 2^-100 (e5m2's largest value is 57344, so its x scales sit 7 binades below e4m3's), which fp32 holds as
    zero, while the block's sum times it is a normal number."""
    if dev == "cuda" and mode == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 dots need sm_89+")
    codes, scales, gs = _small_scales(fmt)
    for top in (-100, -118, -122):
        for M in (1, 17):
            x = _normal(M, 128, top, seed=M - top)
            args = tuple(a.to(dev) if isinstance(a, torch.Tensor) else a
                         for a in (x, codes, scales, gs, fmt, 32, None, fmt))
            check(args, tml.mx_linear_triton(*args, dual=mode), fp8_mma=_fp8_mma_sm90(dev, mode))


# ----------------------------------------------------------------------------- the op
def test_op_dispatches_to_triton(dev):
    """torch.ops.leankern.mx_linear with the Triton backend forced: checks, then the kernels."""
    for act_fmt, fmt in ((None, "nvint4"), ("mxint8", "mxint8")):
        args = _args(fmt, 5, dtype=torch.float16, act_fmt=act_fmt, device=dev)
        with leankern.use_backend("triton"):
            y = torch.ops.leankern.mx_linear(*args)
        check(args, y)
    with pytest.raises(ValueError, match="x.shape"), leankern.use_backend("triton"):
        torch.ops.leankern.mx_linear(args[0][:, :32], *args[1:])


def test_launcher_is_graph_safe(monkeypatch):
    """No host-value tensors, host reads or cross-device copies in the launcher (launches recorded)."""
    if not triton_interpreting():
        pytest.skip("the recording stand-ins replace interpreter launches only")
    from test_launchers_graph_safe import GraphSafetyChecker, _RecordingKernel
    from leankern.triton_kernels import mx as tmx

    recorded = []
    for mod, name in ((tml, "weight_only_config"), (tml, "dual_config"), (tmx, "quantize_config"),
                      (tmx, "dequantize_config")):
        config = getattr(mod, name)

        def stubbed(*a, _config=config, **k):
            kernel, ce, nw = _config(*a, **k)
            return _RecordingKernel(kernel, recorded), ce, nw

        monkeypatch.setattr(mod, name, stubbed)
    monkeypatch.setattr(tml, "_splitk_reduce_kernel", _RecordingKernel(tml._splitk_reduce_kernel, recorded))
    cases = [_args("nvfp4", 3), _args("mxint8", 2, act_fmt="mxint8"), _args("mxint8", 2, act_fmt="nvfp4")]
    for args in cases:
        with GraphSafetyChecker() as checker:
            tml.mx_linear_triton(*args, split_k=2)
        assert checker.violations == []
    kernels = {r["kernel"] for r in recorded}
    assert {"_linear_wo_kernel", "_linear_dual_kernel", "_splitk_reduce_kernel", "_mx_quantize_kernel"} <= kernels
