"""SEFP format and storage: the reference against an independent integer oracle (exhaustive over
bf16), the nesting property, special values, the bit-plane storage (views, bytes, reading only
1 + m planes), the packed single-width copy, state_dict / safetensors, argument errors.

Every backend that can run CPU tensors (``backend_params``) must agree bit for bit."""
import math
import re

import pytest
import torch
from hypothesis import given, strategies as st

import leankern
from leankern import sefp
from leankern.sefp.ref import EMPTY, quantize_ref
from conftest import available_backends

OPS = torch.ops.leankern
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _cpu_backend_params():
    have = available_backends("cpu")  # triton: only under TRITON_INTERPRET=1
    return [pytest.param(be, id=be, marks=[] if be in have else [pytest.mark.skip(reason=f"{be} cannot run CPU "
                                                                                         "tensors here")])
            for be in ("ref", "cpp", "triton")]


@pytest.fixture(params=_cpu_backend_params())
def backend(request):
    with leankern.use_backend(request.param):
        yield request.param


# ----------------------------------------------------------------------------- independent oracle
def _oracle(bits16: torch.Tensor, m: int, block: int):
    """From raw bf16 patterns ``int64 [N, K]`` (K a multiple of ``block``), with integer arithmetic
    on the bf16 fields only: (sign, q, E) per specs/sefp.md. Significand M (8 bits, the implicit
    one for normals) with value M 2^(e - 7), e = max(field, 1) - 127."""
    sign = (bits16 >> 15) & 1
    field = (bits16 >> 7) & 0xFF
    frac = bits16 & 0x7F
    M = torch.where(field > 0, frac | 0x80, frac)
    e = field.clamp(min=1) - 127
    e = torch.where(M == 0, torch.full_like(e, EMPTY), e)
    N, K = bits16.shape
    E = e.reshape(N, K // block, block).amax(-1)  # [N, nb]
    Ek = E.repeat_interleave(block, dim=1)
    shift = 8 - m + Ek - e  # q = floor(M 2^(e - 7) 2^(m - 1 - E)) = M >> shift
    q = torch.where(shift >= 0, M >> shift.clamp(min=0, max=62), M << (-shift).clamp(min=0))
    q = torch.where(M == 0, torch.zeros_like(q), q)
    return sign, q, E


def _planes_to_q(planes: torch.Tensor, m: int):
    """Bits read back from the stored words, independently of the reference's unpacking."""
    words = planes.to(torch.int64) & 0xFFFFFFFF  # [P, N, Kw]
    j = torch.arange(32)
    bits = ((words.unsqueeze(-1) >> j) & 1).flatten(-2)  # [P, N, Kw * 32]
    q = torch.zeros_like(bits[0])
    for i in range(1, m + 1):
        q = q * 2 + bits[i]
    return bits[0], q


def _all_finite_bf16() -> torch.Tensor:
    b = torch.arange(65536, dtype=torch.int64)
    field = (b >> 7) & 0xFF
    return b[field != 0xFF]  # 65280 patterns: every finite bf16 value, +-0 and subnormals included


@pytest.mark.parametrize("arrangement", ["sorted", "shuffled"])
@pytest.mark.parametrize("m", [1, 3, 8, 12])
def test_exhaustive_bf16_matches_the_integer_oracle(backend, arrangement, m):
    """Every finite bf16 pattern, in blocks of neighbours (sorted) and of mixed magnitudes (shuffled)."""
    b = _all_finite_bf16()
    if arrangement == "shuffled":
        b = b[torch.randperm(b.numel(), generator=torch.Generator().manual_seed(m))]
    b = b[: b.numel() // 32 * 32].reshape(-1, 256)  # 255 rows x 8 blocks of 32
    w = b.to(torch.int16).view(torch.bfloat16)
    planes, exps = OPS.sefp_quantize(w, m, 32)
    sign, q, E = _oracle(b, m, 32)
    got_sign, got_q = _planes_to_q(planes, m)
    assert torch.equal(exps.to(torch.int64), E)
    assert torch.equal(got_q, q)
    assert torch.equal(got_sign, sign)
    # dequantize: (-1)^s q 2^(E - (m - 1)), exact in fp32 (0 for empty blocks)
    scale = torch.ldexp(torch.ones_like(E, dtype=torch.float64), (E.clamp(min=-126) - (m - 1)).double())
    want = (q.double() * scale.repeat_interleave(32, dim=1)).to(torch.float32)
    want = torch.where(sign == 1, -want, want)
    got = OPS.sefp_dequantize(planes, exps, m, 32, w.shape[1], torch.float32)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


# ---------------------------------------------------------------------------------------- nesting
@given(n=st.integers(1, 4), k=st.integers(1, 300), block=st.sampled_from([32, 64, 128, 256]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), m_max=st.sampled_from([8, 16]),
       seed=st.integers(0, 2**16), heavy=st.booleans())
def test_nesting_truncating_equals_quantizing_at_the_lower_width(n, k, block, dtype, m_max, seed, heavy):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    if heavy:  # heavy tails + exact zeros: blocks whose members are far below the block max
        w = w * torch.exp(3 * torch.randn(n, k, generator=g))
        w[torch.rand(n, k, generator=g) < 0.2] = 0
    big = torch.finfo(dtype).max
    w = w.clamp(-big, big).to(dtype)  # heavy tails would overflow fp16 to inf (a rejected weight)
    full = sefp.quantize(w, m_max=m_max, block_size=block)
    for m in range(1, m_max + 1, 1 if m_max == 8 else 5):
        direct = sefp.quantize(w, m_max=m, block_size=block)
        assert torch.equal(full.at(m).planes, direct.planes), m
        assert torch.equal(full.exponents, direct.exponents)
        assert torch.equal(full.at(m).dequantize(dtype=torch.float32), direct.dequantize(dtype=torch.float32))


def test_nesting_on_every_backend(backend):
    w = torch.randn(7, 200, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    planes, exps = OPS.sefp_quantize(w, 8, 64)
    for m in range(1, 9):
        p, e = OPS.sefp_quantize(w, m, 64)
        assert torch.equal(planes[: 1 + m], p) and torch.equal(exps, e)


# ----------------------------------------------------------------------------------- special values
def _q(w, m=8, block=32):
    t = sefp.quantize(w, m_max=m, block_size=block)
    return t, t.dequantize(dtype=torch.float32)


def test_special_values(backend):
    fmax = torch.finfo(torch.float32).max
    tiny = torch.finfo(torch.float32).tiny  # 2^-126
    sub = 2.0**-149
    w = torch.zeros(6, 32)
    w[0, 0] = -0.0
    w[1, 3] = fmax  # E = 127, q = 255: truncation never overflows
    w[1, 4] = -fmax
    w[2, :] = sub * torch.arange(32)  # subnormals only: e = -126 for all, E = -126
    w[3, 5] = 1.0  # a single nonzero
    w[4, 0], w[4, 1] = 2.0**20, 2.0**5  # 2^5 is below the LSB 2^(20 - 7): flushed to zero
    w[5, 0], w[5, 1] = tiny, -sub
    t, d = _q(w)
    E = t.exponents.to(torch.int64)
    assert E[0].tolist() == [EMPTY] and E[1].tolist() == [127] and E[2].tolist() == [-126]
    assert E[3].tolist() == [0] and E[4].tolist() == [20] and E[5].tolist() == [-126]
    assert torch.all(t.planes[1:, 0] == 0) and t.planes[0, 0].tolist() == [1]  # -0.0: its sign bit only
    assert d[0].abs().sum() == 0 and d[0, 0].view(torch.int32) == torch.tensor(-0.0).view(torch.int32)
    assert d[1, 3] == math.ldexp(255, 127 - 7) and d[1, 4] == -d[1, 3]
    assert torch.equal(d[2], torch.ldexp(torch.floor(torch.arange(32.0) * 2.0**-16), torch.tensor(-126.0 + 16 - 7)))
    assert d[3, 5] == 1.0 and d[4, 0] == 2.0**20 and d[4, 1] == 0
    assert d[5, 0] == tiny and d[5, 1] == 0  # -2^-149 is below the LSB 2^-133
    assert d[5, 1].view(torch.int32) == torch.tensor(-0.0).view(torch.int32)  # the sign survives: -0.0


def test_truncation_bounds(backend):
    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(1)) * 10
    for m in (2, 5, 8):
        t, d = _q(w, m)
        lsb = torch.ldexp(torch.ones(16, 3), t.exponents.float() - (m - 1)).repeat_interleave(32, dim=1)
        assert torch.all(d.abs() <= w.abs()) and torch.all(w.abs() - d.abs() < lsb)
        assert torch.all((d == 0) | (torch.sign(d) == torch.sign(w)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_inf_weights_are_rejected(backend, bad):
    w = torch.randn(2, 40)
    w[1, 33] = bad
    want = f"w: expected finite values (SEFP has no NaN/Inf code), got {bad} at index (1, 33)"
    with pytest.raises(ValueError, match=re.escape(want)):
        OPS.sefp_quantize(w, 8, 32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_quantize_like_their_fp32_values(backend, dtype):
    w = (torch.randn(5, 100, generator=torch.Generator().manual_seed(2)) * 1e-3).to(dtype)
    a, b = OPS.sefp_quantize(w, 8, 32), OPS.sefp_quantize(w.float(), 8, 32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_rounds_once_to_the_output_dtype(backend, out_dtype):
    w = torch.randn(3, 70, generator=torch.Generator().manual_seed(4)) * 300
    t = sefp.quantize(w, m_max=12)
    got = t.dequantize(12, out_dtype)
    assert got.dtype == out_dtype and got.shape == (3, 70)
    assert torch.equal(got, t.dequantize(12, torch.float32).to(out_dtype))


# ---------------------------------------------------------------------------------------- storage
def test_at_is_a_view_and_bytes_scale_with_m():
    w = torch.randn(64, 4096 + 32)
    t = sefp.quantize(w, m_max=8)
    Kw, nb = (4096 + 32) // 32, (4096 + 32) // 32
    for m in range(1, 9):
        v = t.at(m)
        assert v.planes.data_ptr() == t.planes.data_ptr() and v.planes.untyped_storage() is not None
        assert v.planes.untyped_storage().data_ptr() == t.planes.untyped_storage().data_ptr()
        assert v.m == m and t.nbytes(m) == (1 + m) * 64 * Kw * 4 + 64 * nb
        assert t.bits_per_weight(m) == pytest.approx(8 * t.nbytes(m) / (64 * 4128))
    assert t.bits_per_weight(8) == pytest.approx(9 + 8 / 32)


def test_select_rows_keeps_every_plane():
    t = sefp.quantize(torch.randn(40, 96, generator=torch.Generator().manual_seed(8)), m_max=7)
    ids = torch.tensor([39, 0, 7, 7, 21], dtype=torch.int32)
    for idx in (ids, ids.long(), ids[:0]):
        r = t.select_rows(idx)
        assert r.shape == (len(idx), 96) and r.m == 7 and r.block_size == t.block_size and r.dtype == t.dtype
        for m in (7, 3):
            assert torch.equal(r.dequantize(m), t.dequantize(m)[idx.long()])
    with pytest.raises(ValueError, match=r"^ids: expected row ids in \[0, N=40\), got min 0, max 40$"):
        t.select_rows(torch.tensor([0, 40]))
    with pytest.raises(TypeError, match=r"^ids: expected dtype in"):
        t.select_rows(torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"^ids: expected shape \[R\], got \(1, 1\)$"):
        t.select_rows(torch.tensor([[0]]))


def test_ops_read_only_the_first_1_plus_m_planes(backend):
    """Planes beyond m hold garbage: the m-bit results do not change."""
    w = torch.randn(9, 130, generator=torch.Generator().manual_seed(5))
    x = torch.randn(3, 130, generator=torch.Generator().manual_seed(6))
    planes, exps = OPS.sefp_quantize(w, 8, 32)
    for m in (2, 5):
        junk = planes.clone()
        junk[1 + m:] = 0x5A5A5A5A
        for p in (planes, junk):
            assert torch.equal(OPS.sefp_dequantize(p, exps, m, 32, 130, torch.float32),
                               OPS.sefp_dequantize(planes[: 1 + m], exps, m, 32, 130, torch.float32))
            assert torch.equal(OPS.sefp_linear(x, p, exps, m, 32, None), OPS.sefp_linear(x, planes[: 1 + m], exps,
                                                                                         m, 32, None))


def test_state_dict_round_trip(tmp_path):
    w = torch.randn(20, 77, dtype=torch.bfloat16)
    t = sefp.quantize(w, m_max=6, block_size=64)
    sd = t.state_dict("layer.")
    back = sefp.SEFPTensor.from_state_dict(sd, "layer.")
    assert back.shape == t.shape and back.dtype == t.dtype and back.block_size == 64 and back.m == 6
    assert torch.equal(back.dequantize(4), t.dequantize(4))
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "w.safetensors"
    safetensors.save_file(sd, str(path))
    loaded = sefp.SEFPTensor.from_state_dict(safetensors.load_file(str(path)), "layer.")
    assert torch.equal(loaded.planes, t.planes) and torch.equal(loaded.exponents, t.exponents)
    with pytest.raises(KeyError, match="missing key"):
        sefp.SEFPTensor.from_state_dict({}, "layer.")


@pytest.mark.parametrize("m", [1, 2, 3, 4, 6, 7])
def test_packed_mx_copy_is_the_same_weight(m):
    w = torch.randn(24, 128, generator=torch.Generator().manual_seed(m)) * 0.05
    t = sefp.quantize(w, m_max=8)
    p = t.packed(m, layout="mx")
    assert p.fmt == ("mxint4" if m <= 3 else "mxint8")
    assert torch.equal(p.dequantize(torch.float32), t.dequantize(m, torch.float32))
    x = torch.randn(2, 128)
    from tolerances import assert_sefp_linear

    assert_sefp_linear((x, t.planes, t.exponents, m, 32, None), leankern.mx.linear(x, p))


def test_packed_copy_errors():
    t = sefp.quantize(torch.randn(4, 40), m_max=8)
    with pytest.raises(ValueError, match=r"m: expected m <= 7 for a packed copy"):
        t.packed(8)
    with pytest.raises(ValueError, match=r"packed: expected K a multiple of block_size=32, got K=40"):
        t.packed(4, layout="mx")


# ----------------------------------------------------------------------------------------- errors
def test_argument_errors(backend):
    w = torch.randn(4, 64)
    planes, exps = OPS.sefp_quantize(w, 4, 32)
    x = torch.randn(2, 64)
    cases = [
        (lambda: OPS.sefp_quantize(w, 0, 32), ValueError, "m_max: expected an int in [1, 16], got 0"),
        (lambda: OPS.sefp_quantize(w, 8, 48), ValueError, "block_size: expected one of (32, 64, 128, 256), got 48"),
        (lambda: OPS.sefp_quantize(w.double(), 8, 32), TypeError, "w: expected dtype in"),
        (lambda: OPS.sefp_quantize(w[0], 8, 32), ValueError, "w: expected shape [N, K] with K >= 1, got (64,)"),
        (lambda: OPS.sefp_dequantize(planes, exps, 5, 32, 64, torch.float32), ValueError,
         "m: expected an int in [1, 4] (planes holds 4 mantissa planes), got 5"),
        (lambda: OPS.sefp_dequantize(planes, exps, 2, 32, 20, torch.float32), ValueError,
         "K: expected K with K rounded up to block_size=32 equal to the stored width 64, got K=20"),
        (lambda: OPS.sefp_dequantize(planes.float(), exps, 2, 32, 64, torch.float32), TypeError,
         "planes: expected dtype in ['torch.int32'], got torch.float32"),
        (lambda: OPS.sefp_linear(x, planes, exps[:, :1], 2, 32, None), ValueError,
         "exponents: expected shape (N=4, Kp/block_size=2), got (4, 1)"),
        (lambda: OPS.sefp_linear(torch.randn(2, 65), planes, exps, 2, 32, None), ValueError,
         "x: expected K with K rounded up to block_size=32 equal to the stored width 64, got K=65"),
        (lambda: OPS.sefp_linear(x, planes, exps, 2, 32, torch.zeros(5)), ValueError,
         "bias: expected shape (N=4,), got (5,)"),
        (lambda: OPS.sefp_linear(x, planes, exps, 2, 64, None), ValueError,
         "exponents: expected shape (N=4, Kp/block_size=1), got (4, 2)"),
    ]
    for fn, exc, text in cases:
        with pytest.raises(exc, match=re.escape(text)):
            fn()


def test_api_errors():
    t = sefp.quantize(torch.randn(4, 64), m_max=4)
    with pytest.raises(ValueError, match=re.escape("m: expected an int in [1, 4] (mantissa planes held), got 6")):
        t.at(6)
    with pytest.raises(TypeError, match="w: expected an SEFPTensor"):
        sefp.linear(torch.randn(1, 64), torch.randn(4, 64), 4)
    with pytest.raises(ValueError, match="m: expected an int in"):
        sefp.sefp_fake_quant(torch.randn(4, 64), 0)
