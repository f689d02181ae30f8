"""What fp32 can hold: inputs whose logits or unnormalised P·V sums would overflow it are refused.

The kernels compute in fp32, whatever the input dtype, and the fast builds fold the scale into Q
(Q·scale·log2 e, so that S comes out in log2 units). Two sums can leave fp32's range
(about 3.4e38) although every input is finite:

- the logits: S_ij = scale · Σ_c q_ic k_jc. ``scale=1e38`` with ordinary inputs is finite in
  float64 and in the reference, but not in the kernels (all-NaN output). Bound:
  |scale|·log2 e · max_i Σ_c |q_ic| · max |k| (and |scale|·log2 e · max |q|, the scaled Q).
- the flash kinds' unnormalised output Σ_j P_ij V_j, P_ij ≤ 1 relative to the running row
  maximum, so at most Nk · max |v| (normalised only at the end); with |v| near fp32's maximum
  it overflows where the normalised result would not. One rule for every kind:
  max |v| · Nk below 2^127 (half of fp32's range, which also covers the tensor-core build's
  rounding of V to TF32 parts).

NaN and ±inf entries are left out of the bounds: what they do is their own (README, Numerics at
the edges). The bounds are checked for NumPy inputs, from one pass over each (its largest finite
magnitude; the exact logit bound only where the cheap one d·max|q|·max|k| trips) before the copy
to the device; CUDA arrays stay on the device unread (no host synchronization is added to a launch), so
only the scale alone is checked for them.
"""

import functools

import numpy as np

from kernels.tiles import LOG2E

FP32_MAX = float(np.finfo(np.float32).max)
#: The largest max |v| · Nk the P·V sum takes: 2^127, half of fp32's range.
PV_LIMIT = 2.0**127


class HostFacts(dict):
    """NumPy inputs' facts, ``{name: (all finite, max |x| over the finite entries)}`` for q, k and v
    (one pass over each), and :meth:`v_has_tiny`, read only when asked (the tensor-core build)."""

    def __init__(self, facts, v):
        super().__init__(facts)
        self._v = v

    @functools.cached_property
    def v_has_tiny(self):
        """Whether V holds a nonzero value below :data:`TC_TINY` in magnitude."""
        a = np.abs(self._v.astype(np.float32, copy=False))
        return bool(((a < TC_TINY) & (a > 0)).any())


def host_facts(q, k, v):
    """For NumPy inputs, the facts the checks below read (:class:`HostFacts`); None for CUDA
    arrays (left unread)."""
    if not all(isinstance(x, np.ndarray) for x in (q, k, v)):
        return None
    facts = {}
    for name, x in (("q", q), ("k", k), ("v", v)):
        x = x if x.dtype.kind == "f" and x.dtype.itemsize >= 4 else x.astype(np.float32)  # (bfloat16)
        peak = max(float(x.max(initial=0.0)), -float(x.min(initial=0.0)))  # (no temporary array)
        finite = bool(np.isfinite(peak)) and not np.isnan(x.sum(dtype=np.float64))  # NaN or inf: not finite
        if not finite:
            a = np.abs(x)
            peak = float(np.max(a, where=np.isfinite(a), initial=0.0))
        facts[name] = (finite, peak)
    return HostFacts(facts, v)


def check_fp32_range(problem, q, k, v, facts=None):
    """Refuse inputs whose fp32 logits or P·V sums can overflow (the module docstring).

    Args:
        problem: the :class:`sandbox.Problem` of the call (its scale and Nk).
        q, k, v: the call's inputs; bounds on their values are checked for NumPy arrays only.
        facts: :func:`host_facts` of the inputs, if the caller has them.

    Raises:
        ValueError: naming ``scale`` (logits) or ``v`` (the P·V sum), and what to do instead.
    """
    s2 = abs(problem.scale) * float(LOG2E)
    if s2 >= FP32_MAX:
        raise ValueError(f"scale: {problem.scale!r} times log2 e overflows fp32, in which the kernels compute "
                         f"the logits; use a smaller scale (and scale q or k up)")
    facts = host_facts(q, k, v) if facts is None else facts
    if facts is None:
        return
    q_max, k_max = facts["q"][1], facts["k"][1]
    scaled = max(s2, 1.0)
    if scaled * q_max * problem.head_dim * k_max >= FP32_MAX or s2 * q_max >= FP32_MAX:
        # the cheap bound (d · max|q| · max|k|) trips: the exact one, max_i Σ_c |q_ic| · max|k|
        qa = np.abs(q.astype(np.float64))
        row_sums = np.where(np.isfinite(qa), qa, 0.0).sum(-1).max(initial=0.0)
        bound = scaled * row_sums * k_max
        if max(bound, s2 * q_max) >= FP32_MAX:
            raise ValueError(f"scale: the logits scale·q·kᵀ can overflow fp32, in which the kernels compute them "
                             f"(max(|scale|·log2 e, 1)·max_i Σ|q_i|·max|k| = {bound:.3g} > {FP32_MAX:.3g}); "
                             f"use a smaller scale or scale q or k down")
    v_sum = facts["v"][1] * problem.n_kv
    if v_sum >= PV_LIMIT:
        raise ValueError(f"v: max |v| · Nk = {v_sum:.3g} reaches 2^127 = {PV_LIMIT:.3g}: the kernels' "
                         f"unnormalised sum Σ_j P_ij V_j can overflow fp32; scale v down by a power of two "
                         f"and the output up by the same")


#: V values below this magnitude (and not 0) lose accuracy in the tensor-core build's 3xTF32 split,
#: which keeps nothing below 2^-136 (kernels/mma.py): such inputs take the plain build.
TC_TINY = 2.0**-100


def fast_build_refusal(schedule, facts):
    """Why NumPy inputs must not take flash2's fast builds, or None.

    The fast builds keep their inner loops free of per-entry tests, so a NaN or ±inf in Q, K or V
    would spread where the plain builds and the reference keep it out: 0·NaN from a key a row does
    not see (causal), and, in the tensor-core build, the TF32 split of ±inf (inf - inf). V values of
    magnitude below :data:`TC_TINY` lose accuracy in the tensor-core build's split. Such NumPy
    inputs run the plain build of the same schedule (same tiles, same HBM traffic). CUDA arrays stay
    unread on the device, so they are not checked (README, Numerics at the edges).

    Args:
        facts: :func:`host_facts` of the inputs; None (CUDA arrays) refuses nothing.
    """
    if facts is None:
        return None
    for name, (finite, _) in facts.items():  # q, k, v (and the backward's out, dout)
        if not finite:
            return f"{name} holds NaN or inf, which the fast builds would let reach rows that do not see it"
    if schedule.math == "tf32x3" and facts.v_has_tiny:
        return f"v holds values below {TC_TINY:.3g} in magnitude, which the tensor-core split cannot hold"
    return None
