"""The kernels' entry points: check the arguments (with the vocabulary's checks), then compile and launch.

``sandbox.attention`` and ``sandbox.attention_backward`` are these functions.
"""

import numpy as np

from kernels.launch import attention_any, attention_backward_any
from sandbox.vocabulary.schedule import DEFAULT_SCHEDULE
from sandbox.vocabulary.validation import (array_meta, check_flags, check_mask, check_qkv, check_schedule,
                                          check_score_mod)


def attention(q, k, v, schedule=DEFAULT_SCHEDULE, causal=False, scale=None, return_lse=False, count_io=False,
              mask=None, fast=None, return_build=False, score_mod=None):
    """softmax(scale·QKᵀ)V with the Numba CUDA kernel of ``schedule`` (on the GPU, or Numba's CUDA simulator).

    Args:
        q: (B, H, Nq, d); k: (B, H_kv, Nk, d), v: (B, H_kv, Nk, d_v) with H_kv dividing H (grouped
            K/V heads: query head h reads K/V head h // (H / H_kv); H_kv = 1 is multi-query
            attention, H_kv = H the usual) and d_v V's own head dim (the output's; d_v = d the
            usual; of the fast builds only flash2's tensor-core forward takes d_v ≠ d); float32,
            float16 or bfloat16. NumPy arrays are copied to
            the device and results back; CUDA arrays (CuPy, PyTorch, Numba: anything with
            ``__cuda_array_interface__``, C-contiguous) stay on the GPU and results come back
            as the same kind of array. Under the CUDA simulator: NumPy arrays and Numba's
            (simulated) device arrays.
        schedule: a :class:`Schedule`; its kind picks the kernel.
        causal: top-left causal mask (query i sees keys j <= i).
        scale: softmax scale, default 1/sqrt(d).
        return_lse: also return L, the log-sum-exp per row, (B, H, Nq) fp32.
        count_io: also return the :class:`IOReport` counted by the kernel itself (slower build).
        mask: a predicate ``mask(b, h, q_idx, kv_idx) -> bool`` or a :class:`sandbox.vocabulary.masks.Mask`
            (combined with ``causal`` if both are given). It is compiled into the kernel: tiles
            with no allowed entry are skipped, the rest are masked entry by entry. Checked
            before launch by :meth:`sandbox.vocabulary.masks.Mask.check`: it compiles for the CPU and for
            CUDA, returns a bool, its captured arrays fit constant memory, and over this
            problem's indices (sampled above ``masks.DENSE_CHECK_ENTRIES``) it neither raises
            nor reads past an array, and gives the same answer twice.
        score_mod: a function ``score_mod(score, b, h, q_idx, kv_idx) -> float`` or a
            :class:`sandbox.vocabulary.score_mods.ScoreMod` (FlexAttention's ``score_mod``): it
            receives each scaled score scale·q·k (fp32) and returns the score that enters the
            softmax, before the mask and the causal cut. Compiled into the kernel; checked before
            launch by :meth:`sandbox.vocabulary.score_mods.ScoreMod.check` (it compiles, returns
            a float, its captured arrays fit constant memory, and it neither raises nor reads past
            an array over this problem's indices). Of the fast builds flash2's tensor-core ones
            (``math="tf32x3"``) apply it; with the FMA build the plain build runs.
        fast: run the kind's fast build of the same schedule (flash2's: ``kernels/flash2_fast.py``;
            same tiles and HBM traffic, S in registers). None (default): whenever it can run this
            (no ``count_io``, no mask, a thread layout it takes, and NumPy inputs free of NaN and
            inf: see kernels/limits.py); False: the counting kernel's
            source without counters;
            True: the fast build or a ValueError saying why not. Chosen by
            :func:`kernels.builds.choose_build`.
        return_build: also return the :class:`kernels.builds.Build` that ran: its ``name``
            (``"counting"``, ``"plain"``, ``"fast-fma"``, ``"fast-tf32x3"``) and, for a plain or
            counting run, the ``reason`` the fast build was not taken (None when it was).

    Returns:
        ``out``; ``(out, lse)``; with ``count_io`` the report is appended, and with
        ``return_build`` the Build after it, last. ``out`` (B, H, Nq, d_v) has the input dtype;
        accumulation is fp32.

    Raises:
        TypeError, ValueError: bad inputs (see :func:`sandbox.vocabulary.validation.check_qkv`), a schedule
            whose tiles overflow its SRAM or the GPU's shared memory, a mask that fails its check.
        MemoryError: the GPU cannot hold the buffers (standard attention's S and P grow as Nq·Nk).
    """
    problem = check_qkv(q, k, v, causal=causal, scale=scale)
    check_flags(return_lse=return_lse, count_io=count_io, return_build=return_build)
    if fast is not None:
        check_flags(fast=fast)
    check_schedule(schedule).check_fits(problem.head_dim, problem.dtype, head_dim_v=problem.head_dim_v)
    mask = check_mask(mask, problem, schedule)
    score_mod = check_score_mod(score_mod, problem, schedule)
    out, lse, report, chosen = attention_any(schedule, problem, q, k, v, count_io=count_io, mask=mask, fast=fast,
                                             score_mod=score_mod)
    result = (out, lse) if return_lse else (out,)
    if count_io:
        result += (report,)
    if return_build:
        result += (chosen,)
    return result[0] if len(result) == 1 else result


def attention_backward(q, k, v, out, lse, dout, schedule=DEFAULT_SCHEDULE, causal=False, scale=None, count_io=False,
                       mask=None, fast=None, return_build=False, score_mod=None, deterministic=True):
    """Gradients dQ, dK, dV of ``attention`` for the upstream gradient ``dout``.

    flash1 and flash2 schedules run FlashAttention-2's backward with recomputation (S and P
    rebuilt per tile from Q, K and the saved log-sum-exp; nothing Nq×Nk in HBM); the standard
    schedule materializes P and dS in HBM. Deterministic by default: every gradient element sums
    in a fixed order (the fast backward's dQ by fp32 atomics in a fixed order where it adds dQ by
    atomics), so the same inputs give bit-identical gradients.

    Args:
        q, k, v: as for :func:`attention`.
        out, lse: ``attention``'s output (B, H, Nq, d_v) and log-sum-exp (B, H, Nq) for these inputs.
        dout: gradient of the loss with respect to ``out``, (B, H, Nq, d_v), the dtype of q.
        schedule, causal, scale: as for the forward call that produced ``out`` and ``lse``.
        count_io: also return the measured :class:`IOReport` last.
        mask: the forward call's mask (a predicate or :class:`sandbox.vocabulary.masks.Mask`),
            checked the same way and compiled into every backward kernel: tiles with no allowed
            entry are skipped, the rest masked entry by entry, so that an entry the forward did
            not see gets no gradient.
        score_mod: the forward call's score_mod, which must carry its derivative
            (``ScoreMod(fn, grad=...)``; the built-ins do): P is rebuilt with it and
            dS = P ∘ (dP - D) ∘ score_mod'(S) (the fast backward, ``fast=True``, too).
        deterministic: where the fast backward adds dQ by fp32 atomics (kernels/backward_tc.py,
            ``atomic_dq``: fp32, no mask, the paired dkdv above d = 64; dkdv also forms dQ and no
            dq kernel runs, as FlashAttention-2 does), False adds them in the GPU's order instead
            of a fixed one (``ORDERED_DQ`` there): no waits, faster, but dQ may differ between runs
            by rounding. Elsewhere it changes nothing. dK and dV stay deterministic.

    Returns:
        ``(dq, dk, dv)`` in the input dtype (fp32 accumulation), plus the report with ``count_io``.
        dq is (B, H, Nq, d), dk (B, H_kv, Nk, d) and dv (B, H_kv, Nk, d_v), like q, k and v.
        With grouped K/V heads (H_kv < H) dk and dv each sum the gradients of its
        group's H / H_kv query heads (in a fixed order, through fp32 partials).

    Raises:
        TypeError, ValueError: bad inputs, a schedule whose backward tiles overflow its SRAM, or a
            mask that fails its check.
    """
    problem = check_qkv(q, k, v, causal=causal, scale=scale)
    check_flags(count_io=count_io, return_build=return_build, deterministic=deterministic)
    if fast is not None:
        check_flags(fast=fast)
    check_schedule(schedule)
    if fast is not True:  # (the fast backward's own tiles, head_dim and SRAM are checked when it is chosen)
        schedule.check_fits(problem.head_dim, problem.dtype, backward=True, head_dim_v=problem.head_dim_v)
    mask = check_mask(mask, problem, schedule)
    score_mod = check_score_mod(score_mod, problem, schedule, backward=True)
    o_shape = (problem.batch, problem.heads, problem.n_q, problem.head_dim_v)  # O's and dO's: d_v columns
    on_host = isinstance(q, np.ndarray)
    for name, x, shape, dtype in (
        ("out", out, o_shape, problem.dtype), ("dout", dout, o_shape, problem.dtype), ("lse", lse, o_shape[:3], None)
    ):
        got_shape, got_dtype, on_device = array_meta(x, name)
        if tuple(got_shape) != shape:
            own_dv = len(shape) == 4 and problem.head_dim_v != problem.head_dim
            whence = " (B, H, Nq of q, the head dim d_v of v)" if own_dv else ""
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(got_shape)}{whence}")
        if on_device == on_host:
            raise TypeError(f"{name}: expected it on the same side as q (NumPy arrays or GPU arrays, like q)")
        if dtype is not None and got_dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype.name} (that of q), got {got_dtype.name}")
        if dtype is None and got_dtype != np.float32 and not (on_host and got_dtype.name in ("float32", "float64")):
            raise TypeError(f"lse: expected float32 (as attention(return_lse=True) gives), got {got_dtype.name}")
    if on_host:
        lse = np.asarray(lse, dtype=np.float32)
    dq, dk, dv, report, chosen = attention_backward_any(schedule, problem, q, k, v, out, lse, dout, count_io=count_io,
                                                        mask=mask, fast=fast, score_mod=score_mod,
                                                        deterministic=deterministic)
    result = (dq, dk, dv)
    if count_io:
        result += (report,)
    if return_build:
        result += (chosen,)
    return result
