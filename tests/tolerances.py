"""Tolerances for kernel outputs against the float64 reference, per dtype, with their reasons.

The kernels compute in fp32 whatever the input dtype, and the reference sees the very same
(already rounded) inputs, so input rounding costs nothing. What remains:

- fp32 arithmetic. Its error depends on the conditioning of the problem (logits near ±80 make
  the softmax sensitive to the rounding of S), so it is measured, not guessed: plain fp32 NumPy
  attention on the same inputs gives ``err32``, and the kernel may be at most 4× as far from
  float64 plus (d + Nk + 8) fp32 rounding units of the value scale (the depth of the dot
  products and row sums). For ordinary logits that is ~1e-6 of the value scale, far below 1e-4.
  ``err32`` is the larger of two plain fp32 attentions that differ only in how S is summed:
  NumPy's einsum (blocked partial sums) and one fused multiply-add per k in order, which is what
  every kernel here does. With large logits the second can be several times less accurate
  (|S| ≈ 310, d = 128: 1.02e-4 against 1.7e-5), and a kernel that sums in order errs about as
  much (the GPU's flash1: 1.0216e-4 against the emulation's 1.0230e-4).
- output rounding: O is stored in the input dtype, half an ulp each time: u = 2⁻²⁴ (fp32),
  2⁻¹¹ (fp16, 11-bit significand) or 2⁻⁸ (bfloat16, 8-bit significand) of the value scale per
  store. flash1 stores O in HBM after every K/V block it
  visits (Algorithm 1), so it pays that once per visited block.
"""

import numpy as np

from sandbox.vocabulary.reference import expand_heads, sum_groups

U32 = 2.0**-24
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
#: Half the smallest subnormal of each dtype: the absolute error of storing a value below its normal range.
OUTPUT_UNDERFLOW = {"float32": 2.0**-150, "float16": 2.0**-25, "bfloat16": 2.0**-134}


def scores_fp32(q, k, scale, in_order=False):
    """S = scale · q kᵀ in fp32 (q, k already fp32). ``in_order``: summed over k one fused
    multiply-add at a time, as the kernels do (the product of two fp32 numbers is exact in float64,
    so rounding product + partial sum to fp32 is the FMA, up to double-rounding ties); else einsum."""
    if not in_order:
        return np.float32(scale) * np.einsum("bhid,bhjd->bhij", q, k)
    q64 = np.ascontiguousarray(np.moveaxis(q.astype(np.float64), -1, 0))  # (d, B, H, Nq)
    k64 = np.ascontiguousarray(np.moveaxis(k.astype(np.float64), -1, 0))  # (d, B, H, Nk)
    s = np.zeros(q.shape[:3] + (k.shape[2],), np.float32)
    t = np.empty(s.shape, np.float64)
    for kk in range(q.shape[3]):
        np.multiply(q64[kk, ..., None], k64[kk, ..., None, :], out=t)
        t += s
        s[...] = t  # (rounds to fp32)
    return np.float32(scale) * s


def naive_fp32(q, k, v, causal, scale, rows=None, allowed=None, in_order=False, score_mod=None):
    """Plain fp32 attention, the accuracy any fp32 implementation can be held to.

    ``in_order``: S summed in order (:func:`scores_fp32`). ``rows``: absolute indices of q's rows
    (q may hold a selection of them), for the causal mask.
    ``allowed``: a dense boolean mask (B, H, Nq, Nk) (sandbox.vocabulary.masks.dense) on top of it. Rows that
    see no key give O = 0 and L = -inf, as the reference has them. k, v may have H_kv heads
    (grouped: query head h reads K/V head h // (H / H_kv)). ``score_mod``: applied to the fp32 S
    (evaluated in float64, rounded to fp32, as the kernels store it).
    """
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    k, v = expand_heads(k, q.shape[1]), expand_heads(v, q.shape[1])
    rows = np.arange(q.shape[2]) if rows is None else np.asarray(rows)
    s = scores_fp32(q, k, scale, in_order)
    if score_mod is not None:
        s = score_mod.apply(s).astype(np.float32)
    if causal:
        s = np.where(np.arange(k.shape[2])[None, :] <= rows[:, None], s, -np.inf)
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    m = s.max(-1, keepdims=True)
    empty = m == -np.inf
    p = np.exp(s - np.where(empty, 0, m))
    l = p.sum(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.einsum("bhij,bhjd->bhid", p / np.where(empty, 1, l), v), np.where(empty, -np.inf, m + np.log(l))[..., 0]


def tolerances(q, k, v, ref_out, ref_lse, causal, scale, dtype, o_stores=1, rows=None, allowed=None, score_mod=None):
    """(atol for O, atol for L) as described in the module docstring; ``rows``, ``allowed``, ``score_mod`` as in
    :func:`naive_fp32`. Rows that see no key are left out of L's tolerance (they must be -inf exactly)."""
    n_kv, d = k.shape[2], k.shape[3]
    vmax = float(np.abs(v.astype(np.float64)).max())
    seen = np.isfinite(ref_lse)
    err32 = err32_lse = 0.0
    for in_order in (False, True):
        out32, lse32 = naive_fp32(q, k, v, causal, scale, rows, allowed, in_order, score_mod)
        assert (np.isfinite(lse32) == seen).all(), "the fp32 baseline and the reference disagree on empty rows"
        err32 = max(err32, float(np.abs(out32 - ref_out).max()))
        err32_lse = max(err32_lse, float(np.abs(lse32[seen] - ref_lse[seen]).max(initial=0.0)))
    depth = (d + n_kv + 8) * U32
    atol_out = 4 * err32 + depth * vmax + o_stores * UNIT_ROUNDOFF[np.dtype(dtype).name] * vmax
    atol_lse = 4 * err32_lse + depth * (1 + float(np.abs(ref_lse[seen]).max(initial=0.0)))
    return atol_out, atol_lse


def naive_fp32_backward(q, k, v, dout, causal, scale, out, lse, in_order=False, allowed=None, score_mod=None):
    """Plain fp32 gradients from a saved forward's ``out`` and ``lse``: the accuracy any fp32
    backward can be held to. ``in_order``: S summed in order (:func:`scores_fp32`), and D =
    rowsum(dO ∘ O) too, so that D and dP = dO Vᵀ (einsum's order) are sums in different orders, as
    a kernel's may be: where a row sees one key, dP - D is exactly 0 in exact arithmetic (dQ and dK
    are 0) and the rounding of that difference is all the gradient has. ``allowed``:
    a mask's dense (B, H, Nq, Nk) bool array; an entry it excludes (or a row that sees nothing,
    L = -inf) has P = 0. Grouped K/V heads: dK, dV summed over each group. ``score_mod``: P from
    score_mod(S) and dS times its derivative at S, each rounded to fp32, as the kernels have them."""
    q, k, v, dout, out = (x.astype(np.float32) for x in (q, k, v, dout, out))
    heads_kv = k.shape[1]
    k, v = expand_heads(k, q.shape[1]), expand_heads(v, q.shape[1])
    s = scores_fp32(q, k, scale, in_order)
    grad = np.float32(1)
    if score_mod is not None:
        grad = score_mod.derivative(s).astype(np.float32)
        s = score_mod.apply(s).astype(np.float32)
    if causal:
        s = np.where(np.arange(k.shape[2])[None, :] <= np.arange(q.shape[2])[:, None], s, -np.inf)
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    if in_order:  # D summed element by element, as the kernels' d does; dP by einsum: they cancel unevenly
        d_row = np.zeros(out.shape[:3] + (1,), np.float32)
        for c in range(out.shape[3]):
            d_row += dout[..., c:c + 1] * out[..., c:c + 1]
    else:
        d_row = (dout * out).sum(-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        p = np.where(np.isneginf(s), np.float32(0), np.exp(s - lse.astype(np.float32)[..., None]))
        ds = p * (np.einsum("bhid,bhjd->bhij", dout, v) - d_row) * grad
    ds = np.where(p == 0, np.float32(0), ds)
    dq = np.float32(scale) * np.einsum("bhij,bhjd->bhid", ds, k)
    dk = np.float32(scale) * np.einsum("bhij,bhid->bhjd", ds, q)
    dv = np.einsum("bhij,bhid->bhjd", p, dout)
    return dq, sum_groups(dk, heads_kv), sum_groups(dv, heads_kv)


def gradient_tolerances(q, k, v, dout, refs, causal, scale, dtype, out, lse, allowed=None, score_mod=None):
    """atol for (dq, dk, dv), given the saved forward (out, lse) that the backward and the reference share:
    4x the naive fp32 error (the larger of S summed by einsum and in order, as for the forward),
    plus (max(d, d_v) + Nq + Nk + 8) fp32 rounding units and one rounding to the output dtype, both of the
    gradient's own scale (max |reference gradient|), and that rounding's absolute error below the
    dtype's normal range (:data:`OUTPUT_UNDERFLOW`: a gradient that is 0 in exact arithmetic, where
    a row sees one key, comes out as fp32 rounding noise, which fp16 stores as a subnormal)."""
    # the deepest dot products: S = QKᵀ over d, and dP = dO Vᵀ and D = rowsum(dO ∘ O) over V's head
    # dim d_v, which may be the larger
    n_q, n_kv, d = q.shape[2], k.shape[2], max(q.shape[3], v.shape[3])
    depth = (d + n_q + n_kv + 8) * U32
    atols = []
    naives = [naive_fp32_backward(q, k, v, dout, causal, scale, out, lse, in_order, allowed, score_mod)
              for in_order in (False, True)]
    for i, ref in enumerate(refs):
        gmax = float(np.abs(ref).max())
        err32 = max(float(np.abs(n[i] - ref).max()) for n in naives)
        name = np.dtype(dtype).name
        atols.append(4 * err32 + depth * gmax + UNIT_ROUNDOFF[name] * gmax + OUTPUT_UNDERFLOW[name])
    return atols


#: The 16-bit tensor cores' sums, in fp32 units of rounding per k16 step: an m16n8k16 product
#: computes its 16 fp16/bf16 products exactly but adds them and C aligned to the largest and cut
#: short (truncation, not rounding to nearest: Fasi, Higham, Mikaitis and Pranesh, "Numerical
#: behavior of NVIDIA tensor cores", PeerJ Computer Science, 2021), which errs by a unit or two of
#: the largest magnitude per step; 4 units leave a margin.
TC16_STEP_UNITS = 4
#: Half the smallest subnormal of each 16-bit type: the absolute error of rounding a P entry that
#: small (fp16's subnormals start at 2⁻¹⁴, so P < 2⁻¹⁴ loses relative accuracy; bf16 has fp32's range).
P_UNDERFLOW = {"float16": 2.0**-25, "bfloat16": 2.0**-134}


def tolerances_tc16(q, k, v, ref_out, ref_lse, causal, scale, dtype, rows=None, score_mod=None):
    """(atol for O, atol for L) of flash2's 16-bit tensor-core build (kernels/flash2_tc16.py, fp16
    or bf16 inputs): :func:`tolerances` plus what its arithmetic adds.

    - the inputs' rounding: none. Q, K and V are 16-bit already and the reference sees the same
      values; the scale is applied to S in fp32, not to Q in 16 bits.
    - P's rounding to the input type for P·V: |P̃_j - P_j| ≤ u P_j + η (u = 2⁻¹¹ fp16, 2⁻⁸ bf16;
      η = :data:`P_UNDERFLOW`, for P below the type's normal range), while l_i ≥ 1 sums the
      unrounded P_j, so the output moves by at most Σ_j |P̃_j - P_j| |V_j| / l_i ≤ (u + Nk·η) ·
      max |v|. L does not see it.
    - S's sums on the tensor cores (:data:`TC16_STEP_UNITS` per k16 step, d/16 steps, of
      S_abs = |scale| · max_i Σ_c |q_ic| · max |k|, the largest any partial sum can be): S errs by
      at most δS = (d/16) · TC16_STEP_UNITS · 2⁻²⁴ · S_abs. L moves by at most δS and O, whose
      derivative in S_ij is P_ij (V_j - O_i) / l_i, by at most δS · 2 max |v|.
    - a score_mod: :func:`tolerances` applies it to its fp32 S, and δS reaches score_mod(S) times
      at most max |score_mod'(S)| over the problem's scores.
    """
    atol_out, atol_lse = tolerances(q, k, v, ref_out, ref_lse, causal, scale, dtype, rows=rows, score_mod=score_mod)
    d = q.shape[3]
    q64, k64 = (np.abs(x.astype(np.float64)) for x in (q, k))
    vmax = float(np.abs(v.astype(np.float64)).max())
    s_abs = abs(scale) * float(q64.sum(-1).max(initial=0.0)) * float(k64.max(initial=0.0))
    delta_s = (d // 16) * TC16_STEP_UNITS * U32 * s_abs
    if score_mod is not None:
        qf, kf = q.astype(np.float32), expand_heads(k.astype(np.float32), q.shape[1])
        delta_s *= float(np.abs(score_mod.derivative(scores_fp32(qf, kf, scale))).max(initial=0.0))
    name = np.dtype(dtype).name
    p_rounding = UNIT_ROUNDOFF[name] + k.shape[2] * P_UNDERFLOW[name]
    return atol_out + p_rounding * vmax + 2 * delta_s * vmax, atol_lse + delta_s


def gradient_tolerances_tc(q, k, v, dout, refs, causal, scale, dtype, out, lse, chunk, allowed=None, score_mod=None):
    """atol for (dq, dk, dv) of flash2's fast backward (kernels/backward_tc.py):
    :func:`gradient_tolerances` plus what its tensor cores add, each bound taken per entry and
    summed as the gradient sums it.

    The tensor cores' sums cut short (:data:`TC16_STEP_UNITS` fp32 units of the largest magnitude
    per product, as for the 16-bit build; a product of fp32 values is three TF32 ones, of 16-bit
    inputs one, of an fp32 value and a 16-bit input two):

    - S = QKᵀ and dP = dO Vᵀ over d (d_v) in d/8 steps:
      δS_ij ≤ m·(d/8)·units·2⁻²⁴·scale·Σ_c |q_ic k_jc|, δdP likewise from |dO| and |V|; a
      score_mod carries δS times |score_mod'(S)|.
    - P = exp(S - L) moves by P·δS, dS = P ∘ (dP - D) by δP·|dP - D| + P·δdP (times |score_mod'|).
    - dQ = scale·dS K, dK = scale·dSᵀ Q, dV = Pᵀ dO: the errors above summed through |K|, |Q|, |dO|,
      plus the sums' own: each chunk of ``chunk`` streamed rows is summed on the tensor cores
      (chunk/8 steps) and added to the running sum in fp32, so a gradient errs by at most
      (m·(chunk/8)·units + N/chunk) units of Σ |terms|. ``chunk``: one size, or dq's and dkdv's
      (``kernels.backward_tc.chunks``).
    """
    atols = gradient_tolerances(q, k, v, dout, refs, causal, scale, dtype, out, lse, allowed, score_mod)
    heads_kv = k.shape[1]
    q, k, v, dout, out = (x.astype(np.float64) for x in (q, k, v, dout, out))
    k, v = expand_heads(k, q.shape[1]), expand_heads(v, q.shape[1])
    n_q, n_kv = q.shape[2], k.shape[2]
    exact = np.dtype(dtype).itemsize == 2
    m_in, m_mix = (1, 2) if exact else (3, 3)
    unit = TC16_STEP_UNITS * U32
    s = scale * np.einsum("bhid,bhjd->bhij", q, k)
    delta_s = m_in * (q.shape[3] / 8) * unit * abs(scale) * np.einsum("bhid,bhjd->bhij", np.abs(q), np.abs(k))
    grad = np.ones_like(s)
    if score_mod is not None:
        grad = np.abs(score_mod.derivative(s))
        s = score_mod.apply(s)
    keep = np.ones(s.shape, bool) if allowed is None else np.asarray(allowed, bool)
    if causal:
        keep = keep & (np.arange(n_kv)[None, :] <= np.arange(n_q)[:, None])
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.where(keep & ~np.isneginf(s), np.exp(s - lse.astype(np.float64)[..., None]), 0.0)
    p = np.nan_to_num(p)
    dp = np.einsum("bhid,bhjd->bhij", dout, v)
    delta_dp = m_in * (v.shape[3] / 8) * unit * np.einsum("bhid,bhjd->bhij", np.abs(dout), np.abs(v))
    d_row = (dout * out).sum(-1, keepdims=True)
    delta_p = p * grad * delta_s
    delta_ds = (delta_p * np.abs(dp - d_row) + p * delta_dp) * grad
    ds_abs = p * np.abs(dp - d_row) * grad
    chunk_dq, chunk_dkdv = (chunk, chunk) if np.isscalar(chunk) else chunk
    sums = lambda n, ch: m_mix * (ch / 8) * unit + -(-n // ch) * U32  # noqa: E731
    dq = abs(scale) * (np.einsum("bhij,bhjd->bhid", delta_ds, np.abs(k))
                       + sums(n_kv, chunk_dq) * np.einsum("bhij,bhjd->bhid", ds_abs, np.abs(k)))
    dk = abs(scale) * (np.einsum("bhij,bhid->bhjd", delta_ds, np.abs(q))
                       + sums(n_q, chunk_dkdv) * np.einsum("bhij,bhid->bhjd", ds_abs, np.abs(q)))
    dv = (np.einsum("bhij,bhid->bhjd", delta_p, np.abs(dout))
          + sums(n_q, chunk_dkdv) * np.einsum("bhij,bhid->bhjd", p, np.abs(dout)))
    extra = (dq, sum_groups(dk, heads_kv), sum_groups(dv, heads_kv))
    return [a + float(e.max(initial=0.0)) for a, e in zip(atols, extra)]


def gradient_tolerances_tc16(q, k, v, dout, refs, causal, scale, dtype, out, lse):
    """atol for (dq, dk, dv) of flash2's 16-bit fast backward (kernels/backward_tc16.py, fp16 or
    bf16 inputs): :func:`gradient_tolerances` (fp32 arithmetic, the gradients' rounding to the
    input type) plus what its arithmetic adds, bounded entry by entry from the float64 P =
    exp(S - L) (the saved L), dP = dO Vᵀ and dS = P ∘ (dP - D), D = rowsum(dO ∘ O):

    - the inputs' rounding: none. Q, K, V and dO are 16-bit already and the reference sees the
      same values; the scale is applied in fp32.
    - the tensor cores' sums (:data:`TC16_STEP_UNITS` of 2⁻²⁴ per k16 step of the largest partial
      sum, at most the sum of the magnitudes): S_ij errs by δS_ij = (d/16)·TC16_STEP_UNITS·2⁻²⁴·
      |scale|·Σ_c |Q_ic||K_jc|, so P by a factor within expm1(δS) of 1, and dP_ij by
      δdP_ij = (d/16)·TC16_STEP_UNITS·2⁻²⁴·Σ_c |dO_ic||V_jc|. The second products sum over the
      queries (dV, dK: T_q = ⌈Nq/16⌉·TC16_STEP_UNITS·2⁻²⁴) or the keys (dQ: T_k, over Nk) of
      magnitudes at most (1 + E)·|P| or |dS| plus E (E: the operand's error below).
    - P's rounding to the input type for dV += Pᵀ dO: |P̃ - P| ≤ E_P·P + η with E_P = u + (1 + u)·
      expm1(δS) (u = 2⁻¹¹ fp16, 2⁻⁸ bf16; η = :data:`P_UNDERFLOW`, below the type's normal range,
      on entries that are not masked: a masked P is 0 exactly), so
      |δdV_jc| ≤ Σ_i (E_P P_ij + η)|dO_ic| + T_q Σ_i ((1 + E_P) P_ij + η)|dO_ic|.
    - dS's rounding for dK += dSᵀ Q and dQ += dS K: dS is formed in fp32 from the unrounded P
      (off by expm1(δS)·|dS| + (1 + expm1(δS))·P·δdP) and rounded once:
      |dS̃ - dS| ≤ E_dS = (u + (1 + u)·expm1(δS))·|dS| + (1 + u)(1 + expm1(δS))·P·δdP + η, so
      |δdK_jc| ≤ |scale|·(Σ_i E_dS,ij |Q_ic| + T_q Σ_i (|dS_ij| + E_dS,ij)|Q_ic|), and dQ likewise
      over the keys with K and T_k.
    """
    atols = gradient_tolerances(q, k, v, dout, refs, causal, scale, dtype, out, lse)
    name = np.dtype(dtype).name
    u, eta = UNIT_ROUNDOFF[name], P_UNDERFLOW[name]
    n_q, n_kv, d = q.shape[2], k.shape[2], q.shape[3]
    q64, k64, v64, do64, o64 = (x.astype(np.float64) for x in (q, k, v, dout, out))
    # (products by matmul, BLAS: N runs to the thousands on a GPU machine)
    s = scale * (q64 @ k64.swapaxes(-1, -2))
    allowed = np.ones(s.shape, bool)
    if causal:
        allowed &= np.arange(n_kv)[None, :] <= np.arange(n_q)[:, None]
    lse64 = lse.astype(np.float64)[..., None]
    p = np.where(allowed, np.exp(np.where(allowed, s, 0.0) - lse64), 0.0)
    dp = do64 @ v64.swapaxes(-1, -2)
    ds = p * (dp - (do64 * o64).sum(-1, keepdims=True))
    step = TC16_STEP_UNITS * U32
    abs_q, abs_k, abs_v, abs_do = (np.abs(x) for x in (q64, k64, v64, do64))
    delta_s = (d // 16) * step * abs(scale) * (abs_q @ abs_k.swapaxes(-1, -2))
    delta_dp = (d // 16) * step * (abs_do @ abs_v.swapaxes(-1, -2))
    grow = np.expm1(delta_s)
    t_q, t_k = -(-n_q // 16) * step, -(-n_kv // 16) * step
    e_p = u + (1 + u) * grow
    err_p = np.where(allowed, e_p * p + eta, 0.0)
    e_ds = np.where(allowed, (u + (1 + u) * grow) * np.abs(ds) + (1 + u) * (1 + grow) * p * delta_dp + eta, 0.0)
    mag_p = np.where(allowed, (1 + e_p) * p + eta, 0.0)
    mag_ds = np.abs(ds) + e_ds
    extra_dv = (err_p + t_q * mag_p).swapaxes(-1, -2) @ abs_do  # Σ over the queries
    extra_dk = abs(scale) * ((e_ds + t_q * mag_ds).swapaxes(-1, -2) @ abs_q)
    extra_dq = abs(scale) * ((e_ds + t_k * mag_ds) @ abs_k)  # Σ over the keys
    return [atol + float(extra.max(initial=0.0)) for atol, extra in zip(atols, (extra_dq, extra_dk, extra_dv))]
