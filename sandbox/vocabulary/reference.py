"""NumPy float64 reference attention: the ground truth every kernel is tested against."""

import numpy as np

from sandbox.vocabulary.masks import dense
from sandbox.vocabulary.problem import resolve_scale
from sandbox.vocabulary.score_mods import as_score_mod
from sandbox.vocabulary.validation import REFERENCE_DTYPES, check_flags, check_qkv, check_same_shape


def causal_mask(n_q, n_kv):
    """Boolean (Nq, Nk) mask, True where query i may see key j: top-left aligned, j <= i."""
    return np.arange(n_kv)[None, :] <= np.arange(n_q)[:, None]


def weighted_sum(w, x):
    """Σ_j w_ij x_j (batched over the leading axes, ``w @ x``) where a weight of exactly 0 adds nothing.

    Plain ``w @ x`` turns 0·NaN and 0·inf into NaN, so a masked key (weight 0) holding NaN or inf
    would reach rows that never see it. Here the finite part is one product, ``w @ x`` with the
    non-finite entries of x zeroed, and the non-finite entries reach a row only through a nonzero
    weight, as plain arithmetic has it: w·NaN = NaN, w·(±inf) = ±inf with the sign of w, and
    +inf + -inf = NaN. The indicator products run only when x holds a non-finite value.

    Args:
        w: (..., M, N) float64 weights. x: (..., N, d) float64.

    Returns:
        (..., M, d) float64.
    """
    finite = np.isfinite(x)
    if finite.all():
        return w @ x
    out = w @ np.where(finite, x, 0.0)
    pos_w, neg_w = (w > 0).astype(np.float64), (w < 0).astype(np.float64)
    any_w = ((w != 0) & ~np.isnan(w)).astype(np.float64)  # (a NaN weight makes the row NaN already)
    pos_x, neg_x = np.isposinf(x).astype(np.float64), np.isneginf(x).astype(np.float64)
    nan = (any_w @ np.isnan(x).astype(np.float64)) > 0
    to_pos = (pos_w @ pos_x + neg_w @ neg_x) > 0
    to_neg = (pos_w @ neg_x + neg_w @ pos_x) > 0
    out = np.where(to_pos, np.inf, out)
    out = np.where(to_neg, -np.inf, out)
    return np.where(nan | (to_pos & to_neg), np.nan, out)


def _check_inputs(q, k, v, causal, scale):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name}: the reference takes NumPy arrays, got {type(x).__name__}")
    check_qkv(q, k, v, dtypes=REFERENCE_DTYPES, causal=causal, scale=scale)


def expand_heads(x, heads):
    """K (B, H_kv, Nk, d) or V (B, H_kv, Nk, d_v) with H heads: query head h reads K/V head h // (H / H_kv)."""
    return np.repeat(x, heads // x.shape[1], axis=1)


def sum_groups(dx, heads_kv):
    """dK or dV (B, H, Nk, d or d_v) of the expanded K/V summed over each group of H / H_kv query heads: (B, H_kv, Nk, ·)."""
    b, h, n, d = dx.shape
    return dx.reshape(b, heads_kv, h // heads_kv, n, d).sum(axis=2)


def reference_attention(q, k, v, causal=False, scale=None, return_lse=False, mask=None, score_mod=None):
    """softmax(scale·QKᵀ)V in float64 (softmax(score_mod(scale·QKᵀ))V with a ``score_mod``).

    Args:
        q: (B, H, Nq, d) NumPy array. k: (B, H_kv, Nk, d), v: (B, H_kv, Nk, d_v), H_kv dividing H
            (query head h reads K/V head h // (H / H_kv)); Nq != Nk and d_v != d are allowed.
        causal: top-left causal mask (query i sees keys j <= i), as PyTorch SDPA's ``is_causal``.
        scale: softmax scale, default 1/sqrt(d).
        return_lse: also return L = log Σ_j exp(S_ij), shape (B, H, Nq).
        mask: a predicate ``mask(b, h, q_idx, kv_idx) -> bool`` (see :mod:`sandbox.vocabulary.masks`);
            entries where it is False are excluded, as are causal ones.
        score_mod: a function ``score_mod(score, b, h, q_idx, kv_idx) -> float`` or a
            :class:`sandbox.vocabulary.score_mods.ScoreMod`, applied in float64 to every scaled score
            before the mask and the causal cut.

    Returns:
        out (B, H, Nq, d_v) float64, or (out, lse). A row that attends to nothing (no key allowed)
        gives zeros and lse = -inf. Stable for logits of any size: the row max is subtracted
        before exponentiating. A -inf logit is weight 0. O_i sums P_ij V_j over the keys with
        P_ij > 0 only (:func:`weighted_sum`): a key a row does not see (masked, or of weight 0)
        adds nothing to it even where K or V hold NaN or inf; one it sees passes its NaN or inf on.

    Raises:
        TypeError, ValueError: see :func:`sandbox.vocabulary.validation.check_qkv`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> q = rng.standard_normal((1, 1, 4, 8)); out = reference_attention(q, q, q, causal=True)
        >>> np.allclose(out[0, 0, 0], q[0, 0, 0])
        True
    """
    _check_inputs(q, k, v, causal, scale)
    check_flags(return_lse=return_lse)
    scale = resolve_scale(scale, q.shape[-1])
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    k, v = expand_heads(k, q.shape[1]), expand_heads(v, q.shape[1])
    s = scale * np.einsum("bhid,bhjd->bhij", q, k)
    score_mod = as_score_mod(score_mod)
    if score_mod is not None:
        s = score_mod.apply(s)
    if causal:
        s = np.where(causal_mask(q.shape[2], k.shape[2]), s, -np.inf)
    if mask is not None:
        s = np.where(dense(mask, *s.shape), s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    empty = ~np.isfinite(m) & (m < 0)  # rows where every key is masked
    m = np.where(empty, 0.0, m)
    with np.errstate(invalid="ignore"):  # a +inf or NaN logit: a NaN row, as plain arithmetic has it
        p = np.exp(s - m)
        l = p.sum(axis=-1, keepdims=True)
        out = weighted_sum(p / np.where(empty, 1.0, l), v)
    if not return_lse:
        return out
    with np.errstate(divide="ignore"):
        lse = np.where(empty, -np.inf, m + np.log(l))[..., 0]
    return out, lse


def reference_attention_backward(q, k, v, dout, causal=False, scale=None, out=None, lse=None, mask=None,
                                 score_mod=None):
    """Analytic float64 gradients (dq, dk, dv) of ``reference_attention`` for upstream gradient ``dout``.

    With S = scale·QKᵀ (masked entries -inf), P = softmax(S), O = PV:
    dV = Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP - rowsum(dO ∘ O)), dQ = scale·dS K, dK = scale·dSᵀ Q.
    With grouped K/V heads (k, v of H_kv heads) dK and dV of a K/V head sum the gradients of its
    H / H_kv query heads: shapes (B, H_kv, Nk, d) and (B, H_kv, Nk, d_v). dQ is (B, H, Nq, d); dout
    and out are (B, H, Nq, d_v) (V's head dim). Rows that attend to nothing contribute nothing, and an entry with P_ij = 0 (masked, or of
    weight 0) contributes nothing to any gradient, even where Q, K or V hold NaN or inf
    (:func:`weighted_sum`; dS_ij = 0 there).

    ``out`` and ``lse``, if given, are a saved forward's O and L, used as a backward kernel uses
    them: P = exp(S - L) and D = rowsum(dO ∘ O) (so that a kernel's backward can be checked apart
    from the rounding of the forward it was handed). By default both are exact.

    ``mask``: the forward's predicate (as for :func:`reference_attention`); an entry it excludes
    has P = 0 and so no gradient, and a row it excludes entirely (L = -inf) contributes nothing.

    ``score_mod``: the forward's (as for :func:`reference_attention`): S' = score_mod(S) takes S's
    place in P, and dS = P ∘ (dP - D) ∘ score_mod'(S), with the derivative of
    :meth:`sandbox.vocabulary.score_mods.ScoreMod.derivative` (its ``grad``, or a float64 central
    difference held exact; else it raises ValueError asking for ``grad=``).

    Raises:
        TypeError, ValueError: see :func:`sandbox.vocabulary.validation.check_qkv`; a ``dout`` or ``out``
            not of shape (B, H, Nq, d_v), an ``lse`` not of shape (B, H, Nq), or any of them not a NumPy array.
    """
    _check_inputs(q, k, v, causal, scale)
    o_shape = q.shape[:3] + v.shape[3:]  # (B, H, Nq, d_v)
    like = "q and v" if v.shape[3] != q.shape[3] else "q"
    check_same_shape(dout, "dout", o_shape, like)
    if out is not None:
        check_same_shape(out, "out", o_shape, like)
    if lse is not None:
        check_same_shape(lse, "lse", q.shape[:3])
    scale = resolve_scale(scale, q.shape[-1])
    q, k, v, dout = (np.asarray(x, dtype=np.float64) for x in (q, k, v, dout))
    heads_kv = k.shape[1]
    k, v = expand_heads(k, q.shape[1]), expand_heads(v, q.shape[1])
    s = scale * np.einsum("bhid,bhjd->bhij", q, k)
    score_mod = as_score_mod(score_mod)
    s_raw = s
    if score_mod is not None:
        s = score_mod.apply(s)
    if causal:
        s = np.where(causal_mask(q.shape[2], k.shape[2]), s, -np.inf)
    if mask is not None:
        s = np.where(dense(mask, *s.shape), s, -np.inf)
    if lse is None:
        m = s.max(axis=-1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        p = np.exp(s - m)
        l = p.sum(axis=-1, keepdims=True)
        p = p / np.where(l == 0, 1.0, l)
    else:
        with np.errstate(invalid="ignore"):  # -inf - (-inf) in a row that sees nothing: weight 0 below
            p = np.exp(s - np.asarray(lse, dtype=np.float64)[..., None])
        p = np.where(np.isneginf(s), 0.0, p)
    out = weighted_sum(p, v) if out is None else np.asarray(out, dtype=np.float64)
    dv = weighted_sum(np.swapaxes(p, -1, -2), dout)
    with np.errstate(invalid="ignore"):
        dp = np.einsum("bhid,bhjd->bhij", dout, v)
        ds = np.where(p == 0, 0.0, p * (dp - (dout * out).sum(-1, keepdims=True)))
    if score_mod is not None:
        with np.errstate(invalid="ignore"):
            ds = np.where(p == 0, 0.0, ds * score_mod.derivative(s_raw, where=(p != 0) & np.isfinite(s_raw)))
    dq = scale * weighted_sum(ds, k)
    dk = scale * weighted_sum(np.swapaxes(ds, -1, -2), q)
    return dq, sum_groups(dk, heads_kv), sum_groups(dv, heads_kv)
