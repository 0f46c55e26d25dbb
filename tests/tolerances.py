"""Tolerance table for the test suite: the library's defaults plus test-only entries.

``leankern.testing.compare.TOLERANCES`` is the public default table (dtype keys ``fp32`` /
``bf16`` / ``fp16`` / ``fp64`` and one entry per format for "block-quantized matmul vs
dequantize-then-fp32-matmul"). Tests look entries up with :func:`tol` or pass
``table=TOLERANCES`` to ``assert_close``. Add family entries here as families land.
"""
import math

import torch

from leankern.testing.compare import TOLERANCES as LIBRARY_TOLERANCES
from leankern.testing.compare import Tolerance, get_tolerance

TOLERANCES = dict(LIBRARY_TOLERANCES)
TOLERANCES.update({
    # Hadamard transform in another butterfly order: fp32 sums of n terms, |x| ~ rms.
    "hadamard_fp32": Tolerance(atol=0.0, rtol=1e-6, atol_rms=2e-6),
})


def tol(key) -> Tolerance:
    """Tolerance for ``key`` (a name above or a torch dtype)."""
    return get_tolerance(key, TOLERANCES)


__all__ = ["TOLERANCES", "Tolerance", "tol", "linear_error_bound", "assert_linear_within_bound",
           "assert_linear_result", "output_unit_roundoff"]


def linear_error_bound(x_hat, w_hat, bias, out_dtype, extra_terms: int = 0, x_parts: bool = False):
    """Largest |kernel - exact| for ``y = x_hat @ w_hat^T + bias`` with fp32 accumulation, any order.

    Derivation: every kernel computes the fp32 products and sums of exactly representable fp32
    operands (x_hat: x itself, or its dequantized act_fmt codes; w_hat: decoded weights, exact in
    fp32). Any summation order of K terms, with or without FMA, errs by at most
    gamma_K * sum_k |x_k w_k| with gamma_K = K u / (1 - K u), u = 2^-24 (Higham, Thm 3.1; FMA only
    removes product roundings); adding the bias is one more term (K + 1). Rounding the fp32 result
    to ``out_dtype`` adds at most half an ulp of the output: u_out * |y| (u_out = 2^-8 bf16,
    2^-11 fp16, 0 for fp32), plus the fp32 error carried into it. Returns the bound [M, N] in
    float64 and the exact result; a kernel that drops a block, mis-scales one or decodes one code
    wrongly exceeds it (a wrong decode changes a term by >= its own magnitude).

    ``extra_terms``: roundings beyond the sum. NV formats pass 3: a kernel may multiply the sums
    by the tensor scale g in its epilogue (one rounding of y) instead of decoding each weight as
    the reference does, rnd(rnd(g * s) * v) (two roundings per weight, relative): <= 3 u more,
    relative to sum |x w|.

    ``x_parts``: the kernel carried fp32 x as three bf16 parts x = hi + mid + lo (csrc/mx/linear_packed_cpu.cpp,
    split_linear: AMX, fp32 / fp16 x from 32 rows). Each part's sum errs by gamma_K * sum |part w|, and
    sum over parts of |part| <= (1 + 2^-8 + 2^-16) |x| <= (1 + 2^-7) |x|; the two adds of the part sums are two
    more roundings: gamma_K (1 + 2^-7) + 2u <= gamma_{K + K / 128 + 3}. AMX tiles flush a part below bf16's
    normal range: <= 3 * 2^-126 |w| per element, an absolute 2^-124 sum_k |w_k|.
    """
    x64, w64 = x_hat.double(), w_hat.double()
    exact = x64 @ w64.T
    mags = x64.abs() @ w64.abs().T
    terms = x_hat.shape[-1] + extra_terms
    if x_parts:
        terms += x_hat.shape[-1] // 128 + 3
    if bias is not None:
        exact = exact + bias.double()
        mags = mags + bias.double().abs()
        terms += 1
    u = 2.0**-24
    gamma = terms * u / (1 - terms * u)
    u_out = output_unit_roundoff(out_dtype)
    # + terms * 2^-150: a product that underflows into fp32's subnormal range rounds with an absolute
    # error <= 2^-150 instead of a relative one (Higham's model with underflow, eta term)
    fp32_err = gamma * mags + terms * 2.0**-150
    if x_parts:
        fp32_err = fp32_err + 2.0**-124 * w64.abs().sum(1)
    bound = fp32_err * (1 + u_out) + u_out * exact.abs() + _min_subnormal(out_dtype)
    return exact, bound


def _min_subnormal(dtype) -> float:
    return {torch.float32: 2.0**-149, torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}[dtype]


def overflow_threshold(dtype) -> float:
    """The smallest magnitude that rounds (RNE) to infinity in ``dtype``: its largest finite value plus half an ulp."""
    fi = torch.finfo(dtype)
    try:
        return math.ldexp(1 - fi.eps / 4, math.ceil(math.log2(fi.max)))
    except OverflowError:  # fp64 (a result already widened): its threshold is not a double
        return math.inf


def assert_linear_within_bound(y, exact, bound):
    """``y`` (any float dtype) within ``bound`` of ``exact`` elementwise; where the exact result
    overflows y's dtype even after the allowed error, y must be the infinity of its sign, and where the
    allowed error reaches the overflow threshold, that infinity is accepted too."""
    y64 = y.double().reshape(exact.shape)
    top = overflow_threshold(y.dtype)
    overflow = (exact.abs() - bound) >= top
    assert torch.equal(y64[overflow], torch.sign(exact[overflow]) * float("inf")), "overflowed outputs must be +-inf"
    may = ~overflow & ((exact.abs() + bound) >= top) & (y64 == torch.sign(exact) * float("inf"))
    keep = ~overflow & ~may
    err = (y64 - exact).abs()[keep]
    worst = (err - bound[keep]).max() if err.numel() else torch.tensor(-1.0)
    assert worst <= 0, f"error exceeds the derived bound by {float(worst):.3g} (max err {float(err.max()):.3g})"


def carries_x_in_parts(x, act_fmt) -> bool:
    """Whether the C++ packed op carries this x as three bf16 parts on AMX tiles (split_linear in
    csrc/mx/linear_packed_cpu.cpp): AMX on, weight-only, fp32 / fp16 x of >= 32 rows, K % 32 == 0. Other
    backends in that state only meet a looser bound than they could."""
    import leankern

    ext = leankern.extension()
    rows = x.numel() // max(1, x.shape[-1])
    return (ext is not None and ext.amx_enabled() and act_fmt is None and x.dtype != torch.bfloat16 and rows >= 32
            and x.shape[-1] % 32 == 0)


def assert_linear_result(args: tuple, y) -> None:
    """``y``, a result of ``mx_linear(*args)``, has the right shape and dtype and lies within
    :func:`linear_error_bound` of the exact product of the operands the reference defines."""
    from leankern.mx.formats import get_format
    from leankern.mx.ref import mx_dequantize_ref, mx_quantize_ref

    x, codes, scales, g_scale, fmt, block_size, bias, act_fmt = args
    w_hat = mx_dequantize_ref(codes, scales, g_scale, fmt, block_size, torch.float32)
    x_hat = x.float() if act_fmt is None else mx_dequantize_ref(
        *mx_quantize_ref(x.contiguous(), act_fmt, block_size, "rceil", None, None), act_fmt, block_size,
        torch.float32)
    nv = get_format(fmt).is_nv
    exact, bound = linear_error_bound(x_hat.reshape(-1, x.shape[-1]), w_hat, bias, x.dtype, 3 if nv else 0,
                                      x_parts=carries_x_in_parts(x, act_fmt))
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], codes.shape[0])
    assert_linear_within_bound(y, exact, bound)


# --------------------------------------------------------------------------------------- vocab
_U = 2.0**-24


def _gamma(n: int) -> float:
    return n * _U / (1 - n * _U)


def output_unit_roundoff(dtype) -> float:
    """Half an ulp at 1 of the output dtype: the relative error of one rounding into it (0 for fp32 output)."""
    return {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]


def vocab_logits_bound(hidden, weight, vocab_ids, bias, soft_cap, scale):
    """``(exact fp64 [B, K], bound [B, K])`` of fp32 subset logits ``scale * cap(h . w + b)``, any summation order.

    Derivation: the dot of H exact fp32 products plus the bias errs by gamma_{H+1} sum|h w| + |b|
    (Higham, Thm 3.1), with or without FMA. The cap ``c tanh(z / c)`` has slope <= 1, so that error
    carries over, plus the division (u |z|), tanh itself (a vector tanh within 4 ulp: 4u c) and the
    multiply by c (u |cap|). ``scale``: |scale| times all of it plus one rounding (u |y|).
    Padding (-1) must be exactly -inf.
    """
    h = hidden.double()
    ids = vocab_ids.long()
    ids2 = ids.expand(h.shape[0], -1) if ids.dim() == 1 else ids
    w = weight.double()[ids2.clamp_min(0)]  # [B, K, H]
    z = torch.einsum("bh,bkh->bk", h, w)
    mags = torch.einsum("bh,bkh->bk", h.abs(), w.abs())
    terms = h.shape[1]
    if bias is not None:
        b = bias.double()[ids2.clamp_min(0)]
        z, mags, terms = z + b, mags + b.abs(), terms + 1
    # + terms * 2^-150: products that underflow into fp32's subnormal range round with an absolute error
    # (Higham's model with underflow, as in linear_error_bound)
    err = _gamma(terms) * mags + terms * 2.0**-150
    if soft_cap is not None:
        capped = soft_cap * torch.tanh(z / soft_cap)
        err = err + _U * z.abs() + 4 * _U * soft_cap + _U * capped.abs()
        z = capped
    y = z * scale
    err = err * abs(scale) + _U * y.abs() + 2.0**-149
    pad = ids2 < 0
    return y.masked_fill(pad, float("-inf")), err.masked_fill(pad, 0.0)


def _assert_within(name, got, exact, bound):
    g = got.double()
    inf = torch.isinf(exact)
    assert torch.equal(g[inf], exact[inf]), f"{name}: infinite entries differ"
    # finite exact values past got's overflow threshold (within the allowed error): the infinity of their sign
    top = overflow_threshold(got.dtype)
    must = ~inf & ((exact.abs() - bound) >= top)
    assert torch.equal(g[must], torch.sign(exact[must]) * float("inf")), f"{name}: overflowed entries must be +-inf"
    keep = ~inf & ~must & ~(((exact.abs() + bound) >= top) & (g == torch.sign(exact) * float("inf")))
    err = (g - exact).abs()[keep]
    over = (err - bound[keep]).max() if err.numel() else torch.tensor(-1.0)
    assert over <= 0, f"{name}: error exceeds the derived bound by {float(over):.3g} (max err {float(err.max()):.3g})"


def assert_vocab_logits(y, args_head, out_dtype=None, log_softmax=False):
    """``y`` ([B, K] gather_lm_head result) lies within :func:`vocab_logits_bound` (plus the log-softmax and
    output-rounding terms) of the fp64 evaluation."""
    hidden, weight, ids, bias, soft_cap, scale = args_head
    exact, bound = vocab_logits_bound(hidden, weight, ids, bias, soft_cap, scale)
    if log_softmax:
        # lse of K terms: each exp within 4 ulp, sums gamma_K, log u |lse|; errors of z_k shift it by <= max err
        lse = torch.logsumexp(exact, -1, keepdim=True)
        fin = torch.isfinite(lse)
        worst = bound.amax(-1, keepdim=True)
        lse_err = worst + _gamma(exact.shape[-1]) + 4 * _U + _U * lse.abs()
        out = torch.where(fin, exact - lse, exact)
        bound = torch.where(fin, bound + lse_err + _U * out.abs(), bound)
        exact = out
    dt = torch.float32 if out_dtype is None else out_dtype
    assert y.dtype == dt and y.shape == exact.shape, (y.dtype, y.shape, exact.shape)
    u = output_unit_roundoff(dt)
    bound = bound * (1 + u) + u * exact.abs() + {torch.float32: 0.0, torch.bfloat16: 2.0**-133,
                                                 torch.float16: 2.0**-24}[dt]
    _assert_within("logits", y, exact, bound)


def assert_vocab_topk(values, gids, args_head, k):
    """Top-k: the values are the k largest exact logits (within bound), each reported id's exact logit matches its
    value, ids come from vocab_ids, and values descend."""
    hidden, weight, ids, bias, soft_cap, scale = args_head
    exact, bound = vocab_logits_bound(hidden, weight, ids, bias, soft_cap, scale)
    B = exact.shape[0]
    assert values.dtype == torch.float32 and gids.dtype == torch.int64
    assert values.shape == (B, k) and gids.shape == (B, k)
    assert torch.all(values[:, :-1] >= values[:, 1:]) or torch.isnan(values).any()
    srt, order = torch.sort(exact, dim=-1, descending=True, stable=True)
    _assert_within("top-k values", values, srt[:, :k], 2 * bound.amax(-1, keepdim=True).expand(B, k))
    ids2 = ids.long().expand(B, -1) if ids.dim() == 1 else ids.long()
    for b in range(B):  # each reported id is in row b's set with (one of) its positions holding that value
        for j in range(k):
            gid = int(gids[b, j])
            pos = (ids2[b] == gid).nonzero().flatten()
            assert pos.numel(), f"row {b}: id {gid} is not in vocab_ids"
            ex, v, tol = exact[b, pos].max(), float(values[b, j]), 2 * float(bound[b].max())
            # (an infinity of ex's sign where ex, within the bound, reaches fp32's overflow threshold)
            over = math.isinf(v) and (v > 0) == (float(ex) > 0) and abs(float(ex)) + tol >= overflow_threshold(
                torch.float32)
            assert ex == v or abs(float(ex) - v) <= tol or over, (b, j)


def assert_logit_stats(outs, logits, temperature):
    """max / argmax bit for bit with torch; logsumexp, entropy, self-certainty within derived bounds of fp64.

    Derivation (V terms, fp32, each exp within E = 116 ulp: the C++ pass evaluates 2^f by a degree-4
    polynomial, relative error <= 2.95e-6 = 50u, and its argument y = x log2 e - c (one FMA, c the block
    reference times log2 e rounded; the rounding of c only moves the reference, corrected in fp64) with log2 e
    rounded to fp32, 0.25u |r| for |r| <= 87, the clamp: at most 22u; rounding y, u/2 |y|: at most 44u; with a
    temperature, y = x (log2 e / t) - c, the factor rounded once: u/2 |r|, at most 44u, so E = 138 ulp):
    s = sum e^(z - m) errs by (gamma_V + E) s, so ln s by gamma_V + E + u (+ u |lse| for the final add). Entropy ln s - t / s with t = sum e_i d_i, d_i = z_i - m: t errs by
    (gamma_V + E + 2u) sum e |d|, so t / s by (2 gamma_V + 2E + 3u) E|d| (E|d| under p).
    Self-certainty ln s - mean(z - m) - ln V (centred on the max m): the sum of z - m_ref (m_ref a block
    reference at most 60 below m) errs by (gamma_V + u)(mean|z - m| + 60); plus u (ln V + |result|).
    """
    mx, am, lse, ent, cert = outs
    z = logits.float() / temperature if temperature != 1.0 else logits.float()
    wmx, wam = torch.max(z, -1)
    assert torch.equal(mx, wmx) or torch.equal(torch.isnan(mx), torch.isnan(wmx)), "max differs from torch.max"
    assert torch.equal(am, wam), f"argmax differs: {am.tolist()} vs {wam.tolist()}"
    V = z.shape[-1]
    zd = z.double()
    lse_ref = torch.logsumexp(zd, -1)
    g = _gamma(V)
    valid = ~(torch.isnan(z).any(-1) | torch.isposinf(z).any(-1) | torch.isneginf(wmx))
    assert torch.equal(torch.isnan(ent), ~valid) and torch.equal(torch.isnan(cert), ~valid), "NaN rows differ"
    v = valid
    if not v.any():
        return
    zv, lv = zd[v], lse_ref[v]
    zc = zv - zv.amax(-1, keepdim=True)  # centred: rows near -FLT_MAX keep their ln V
    lc = torch.logsumexp(zc, -1)
    ex = (116 if temperature == 1.0 else 138) * _U  # one exp (docstring)
    _assert_within("logsumexp", lse[v], lv, g + ex + _U + _U * lv.abs())
    p = torch.exp(zc - lc[:, None])
    ed = torch.where(p > 0, p * zc.abs(), p.new_zeros(())).sum(-1)
    eent = lc - torch.where(p > 0, p * zc, p.new_zeros(())).sum(-1)
    _assert_within("entropy", ent[v], eent, g + ex + _U + _U * lc.abs() + (2 * g + 2 * ex + 3 * _U) * ed + _U * eent.abs())
    ecert = lc - zc.mean(-1) - math.log(V)
    # the kernel sums x - m_ref, m_ref a block's reference within 60 below the final max (kernels_impl.h)
    cb = g + ex + _U + _U * lc.abs() + (g + _U) * (zc.abs().mean(-1) + 60) + _U * (math.log(V) + ecert.abs())
    _assert_within("self_certainty", cert[v], ecert, cb.nan_to_num(posinf=0.0))


def assert_vocab_result(op, args, got, want):
    """A backend's result of a vocab op (list of outputs) against the derived bounds; ``want`` (the reference's)
    must satisfy them too."""
    for out in (got, want):
        if op == "vocab_gather_lm_head":
            assert_vocab_logits(out[0], args[:6], args[6], args[7])
        elif op == "vocab_gather_lm_head_topk":
            assert_vocab_topk(out[0], out[1], args[:6], args[6])
        elif op == "vocab_scatter_to_full":
            assert len(out) == 1 and torch.equal(out[0], want[0]), "scatter_to_full is exact"
        elif op == "vocab_logit_stats":
            assert_logit_stats(out, *args)
        else:
            raise KeyError(op)


# ---------------------------------------------------------------------------------------- sefp
def assert_sefp_linear(args: tuple, y) -> None:
    """``y``, a result of ``sefp_linear(*args)``, has x's dtype and shape [..., N] and lies within
    :func:`linear_error_bound` of the exact product of x and the m-bit weight (the decoded SEFP
    weight is exact in fp32, so the same derivation holds: fp32 sums in any order, one rounding to
    x's dtype)."""
    from leankern.sefp.ref import dequantize_ref

    x, planes, exponents, m, block_size, bias = args
    w_hat = dequantize_ref(planes, exponents, m, block_size, x.shape[-1], torch.float32)
    exact, bound = linear_error_bound(x.float().reshape(-1, x.shape[-1]), w_hat, bias, x.dtype)
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], planes.shape[1])
    assert_linear_within_bound(y, exact, bound)


def assert_sefp_packed_linear(args: tuple, y) -> None:
    """As :func:`assert_sefp_linear` for ``sefp_packed_linear(*args)`` (the packed copy's weight is the planes' at m,
    exact in fp32)."""
    from leankern.sefp.packed import packed_values

    x, codes, exponents, m, block_size, bias = args
    w_hat = packed_values(codes, exponents, m, block_size)[:, : x.shape[-1]].float()
    exact, bound = linear_error_bound(x.float().reshape(-1, x.shape[-1]), w_hat, bias, x.dtype)
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], codes.shape[0])
    assert_linear_within_bound(y, exact, bound)


# --------------------------------------------------------------------------------------------- moe
def _act64(gu, activation, interleaved, alpha, limit):
    """fp64 activation and per-element slopes (|d act / d gate|, |d act / d up|) bounds."""
    if interleaved:
        g, u = gu[:, 0::2], gu[:, 1::2]
    else:
        g, u = gu.chunk(2, dim=-1)
    if activation == "silu":
        a = g * torch.sigmoid(g) * u
        # d/dg [g sigma(g)] = sigma + g sigma (1 - sigma) <= 1 + |g| / 4
        return a, (1 + g.abs() / 4) * u.abs(), (g * torch.sigmoid(g)).abs()
    gc, uc = g.clamp(max=limit), u.clamp(-limit, limit)  # clamps are 1-Lipschitz
    glu = gc * torch.sigmoid(alpha * gc)
    return glu * (uc + 1), (1 + abs(alpha) * gc.abs() / 4) * (uc + 1).abs(), glu.abs()


def _expert_bound(x, w13, w2, b13, b2, activation, interleaved, alpha, limit, round_a):
    """fp64 ``(y [n, H], err [n, H])`` of one SwiGLU expert on rows x, for fp32 accumulation in any order."""
    H, I = x.shape[1], w2.shape[1]
    gu = x @ w13.T + (0 if b13 is None else b13)
    gu_err = _gamma(H + 1) * (x.abs() @ w13.abs().T + (0 if b13 is None else b13.abs()))
    a, slope_g, slope_u = _act64(gu, activation, interleaved, alpha, limit)
    eg, eu = (gu_err[:, 0::2], gu_err[:, 1::2]) if interleaved else gu_err.chunk(2, dim=-1)
    # first order through the slopes, plus the second-order cross term, plus the activation's own rounding
    # (sigmoid / exp within 8 ulp of fp32), plus rounding a to the weight dtype when a kernel does (round_a)
    a_err = slope_g * eg + slope_u * eu + eg * eu * (1 + abs(alpha)) + (8 * _U + round_a) * a.abs() + 2.0**-140
    y = a @ w2.T + (0 if b2 is None else b2)
    y_err = w2.abs() @ a_err.T
    y_err = y_err.T + _gamma(I + 1) * (a.abs() @ w2.abs().T + (0 if b2 is None else b2.abs()))
    return y, y_err


def moe_experts_bound(args):
    """``(exact fp64 [T, H], bound [T, H])`` of ``moe_experts(*args)``.

    Derivation (fp32 accumulation, any summation order, Higham Thm 3.1): each projection's dot of n products
    errs by gamma_n of the sum of |products|; the gate/up errors pass through the activation with its slopes
    (|d/dg (g sigmoid(alpha g))| <= 1 + alpha |g| / 4, times |up| (+1 for gpt-oss); |d/du| = |silu(g)|); a
    kernel may round the activation to the weight dtype before the down projection (u_w |a|, as every
    half-precision grouped GEMM does); the down projection adds gamma_{I+1}; the sum over a token's k slots
    and the shared expert adds gamma_{k+1} of the sum of |terms|; the output dtype rounds once (u_out |y|).
    """
    (hidden, w13, w2, ids, wts, b13, b2, activation, alpha, limit, interleaved, s1, s3, s2, sg) = args
    x = hidden.double()
    round_a = output_unit_roundoff(w13.dtype)
    T, H = x.shape
    y = torch.zeros(T, H, dtype=torch.float64)
    err = torch.zeros(T, H, dtype=torch.float64)
    mag = torch.zeros(T, H, dtype=torch.float64)
    k = ids.shape[1]
    idl = ids.long()
    for e in torch.unique(idl[idl >= 0]).tolist():
        tok, slot = torch.nonzero(idl == e, as_tuple=True)
        ye, ee = _expert_bound(x[tok], w13[e].double(), w2[e].double(), None if b13 is None else b13[e].double(),
                               None if b2 is None else b2[e].double(), activation, interleaved, alpha, limit, round_a)
        wv = wts[tok, slot].double()[:, None]
        y.index_add_(0, tok, wv * ye)
        err.index_add_(0, tok, wv.abs() * ee + _U * (wv * ye).abs())
        mag.index_add_(0, tok, (wv * ye).abs())
    if s1 is not None:
        w13s = torch.cat([s1, s3]).double()
        ys, es = _expert_bound(x, w13s, s2.double(), None, None, "silu", False, 1.0, 1.0, output_unit_roundoff(s2.dtype))
        if sg is not None:
            z = x @ sg.double().reshape(H, 1)
            gz = torch.sigmoid(z)
            z_err = _gamma(H) * (x.abs() @ sg.double().abs().reshape(H, 1))
            es = gz * es + 0.25 * z_err * ys.abs() + 8 * _U * (gz * ys).abs()
            ys = gz * ys
        y, err, mag = y + ys, err + es, mag + ys.abs()
    err = err + _gamma(k + 1) * mag + output_unit_roundoff(hidden.dtype) * y.abs() + 2.0**-140
    return y, err


def assert_moe_experts(args, out, name="moe_experts"):
    exact, bound = moe_experts_bound(args)
    assert out.dtype == args[0].dtype and tuple(out.shape) == tuple(exact.shape)
    _assert_within(name, out.float(), exact, bound)
