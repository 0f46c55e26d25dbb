"""The common bf16 x bf16 -> fp32 GEMM (csrc/common/bf16_gemm.h) through its test hook leankern._C.bf16_gemm_nt:
x[rows] @ w^T with exact products and fp32 sums, on AVX512-BF16 dot products or AMX tiles. On AMX its two forms
(w read in place as A tiles for few rows of x, w packed into B tiles for more) sum the same products in the same
order, so they must agree bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import leankern
from isa_cases import BF16_DOT_ISAS, on_isa
from mx_cases import skip_unless_cpp

EXT = leankern.extension()
U = 2.0**-24  # fp32 unit roundoff

pytestmark = pytest.mark.skipif(EXT is None, reason="leankern._C not loaded")


@pytest.fixture(params=BF16_DOT_ISAS)
def isa(request):
    skip_unless_cpp()
    with on_isa(request.param) as name:
        yield name


@pytest.fixture
def wa_rows():
    """Set the AMX path's in-place-w limit for a test (bf16_gemm_set_wa_rows), restored afterwards."""
    was = EXT.bf16_gemm_set_wa_rows(256)
    yield EXT.bf16_gemm_set_wa_rows
    EXT.bf16_gemm_set_wa_rows(was)


def gemm(x: torch.Tensor, w: torch.Tensor, rows) -> torch.Tensor:
    n, k = w.shape
    out = EXT.bf16_gemm_nt(x.view(torch.int16).numpy().tobytes(), w.view(torch.int16).numpy().tobytes(), n, k,
                           list(rows))
    assert out is not None, "the hook ran nothing under an avx512bf16 ISA"
    return torch.from_numpy(np.frombuffer(out, dtype=np.float32).copy()).view(len(rows), n)


def operands(R, N, K, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(R, K, generator=g).bfloat16()
    w = torch.randn(N, K, generator=g).bfloat16()
    return x, w, g


SHAPES = [(M, N, K) for K in (32, 96, 2080) for N in (16, 17, 40, 80) for M in (1, 15, 16, 17, 33, 64)]
# x's A tiles past 1.5 MB (400 x 2080 bf16): the packed form's short K chunks (256 elements), 8 whole and a partial one
SHAPES += [(400, 40, 2080)]


# the AVX512-BF16 GEMM packs w in chunks of 1024 pairs (K = 2048) with the sums carried across: odd K (a last pair
# alone) in a second and a third chunk; x's rows are packed 16 pairs at a time: K / 2 not a multiple of 16 leaves
# a partial block (K = 70, 2085, 7)
# x's rows in blocks of 384 (16 row groups) per pass over w: M = 800 three blocks, the last of 32 rows
BOUND_SHAPES = SHAPES + [(33, 17, 2081), (64, 40, 4097), (20, 17, 70), (41, 16, 2085), (25, 33, 7), (800, 33, 2081)]


@pytest.mark.parametrize("M,N,K", BOUND_SHAPES, ids=[f"M{m}-N{n}-K{k}" for m, n, k in BOUND_SHAPES])
def test_bf16_gemm_within_fp32_sum_bound(isa, M, N, K):
    """Gathered rows (repeats allowed) against fp64: exact products, so only the fp32 sums err, by at most
    K u sum_k |x_k w_k| (partial last tile of w: N = 17, 40; odd groups of x: M = 15, 17, 33)."""
    x, w, g = operands(max(50, M), N, K, seed=M * 1000 + N * 10 + K)
    rows = torch.randint(0, max(50, M), (M,), generator=g).tolist()
    got = gemm(x, w, rows).double()
    xs, wd = x[rows].double(), w.double()
    bound = K * U * (xs.abs() @ wd.abs().T)
    assert ((got - xs @ wd.T).abs() <= bound).all()


@pytest.mark.parametrize("M,N,K", SHAPES, ids=[f"M{m}-N{n}-K{k}" for m, n, k in SHAPES])
def test_bf16_gemm_amx_forms_agree_bit_for_bit(wa_rows, M, N, K):
    """AMX, w read in place as A tiles (bf16_gemm_set_wa_rows >= M) and w packed into B tiles (limit 0): the same
    bits, and not zeros."""
    skip_unless_cpp()
    with on_isa("amx"):
        x, w, g = operands(max(70, M), N, K, seed=M + N + K)
        rows = torch.randint(0, max(70, M), (M,), generator=g).tolist()
        wa_rows(0)
        packed = gemm(x, w, rows)
        wa_rows(M)
        in_place = gemm(x, w, rows)
        assert torch.equal(packed, in_place) and packed.abs().sum() > 0


def test_bf16_gemm_hook_checks_its_arguments(wa_rows):
    skip_unless_cpp()
    x = torch.zeros(3, 32).bfloat16().view(torch.int16).numpy().tobytes()
    w = torch.zeros(16, 32).bfloat16().view(torch.int16).numpy().tobytes()
    with pytest.raises(ValueError, match=r"rows: expected values in \[0, 3\), got 3"):
        EXT.bf16_gemm_nt(x, w, 16, 32, [0, 3])
    with pytest.raises(ValueError, match="x, w: expected bf16 bytes"):
        EXT.bf16_gemm_nt(x, w, 17, 32, [0])
    assert wa_rows(-5) == 256 and wa_rows(7) == 0  # negative limits clamp to 0; the setter returns the old one
