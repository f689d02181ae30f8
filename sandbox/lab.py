"""The lab: run a schedule on the kernels (``attention``) or count it with the simulator (``simulate``)."""

from sandbox.runtime import ensure_backend

ensure_backend()  # before kernels import numba.cuda

from sandbox.schedule import Schedule  # noqa: E402
from sandbox.validation import check_flags, check_qkv  # noqa: E402

#: Schedule used when none is given.
DEFAULT_SCHEDULE = Schedule("flash2", block_q=64, block_kv=64)


def _check_schedule(schedule):
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"schedule: expected a sandbox.Schedule, e.g. Schedule('flash2', block_q=64, block_kv=64), "
            f"got {type(schedule).__name__}"
        )
    return schedule


def attention(q, k, v, schedule=DEFAULT_SCHEDULE, causal=False, scale=None, return_lse=False, count_io=False,
              mask=None, fast=None):
    """softmax(scale·QKᵀ)V with the Numba CUDA kernel of ``schedule`` (on the GPU, or Numba's CUDA simulator).

    Args:
        q: (B, H, Nq, d); k, v: (B, H, Nk, d); float32, float16 or bfloat16. NumPy arrays are copied to
            the device and results back; CUDA arrays (CuPy, PyTorch, Numba: anything with
            ``__cuda_array_interface__``, C-contiguous) stay on the GPU and results come back
            as the same kind of array. Under the CUDA simulator: NumPy arrays and Numba's
            (simulated) device arrays.
        schedule: a :class:`Schedule`; its kind picks the kernel.
        causal: top-left causal mask (query i sees keys j <= i).
        scale: softmax scale, default 1/sqrt(d).
        return_lse: also return L, the log-sum-exp per row, (B, H, Nq) fp32.
        count_io: also return the :class:`IOReport` counted by the kernel itself (slower build).
        mask: a predicate ``mask(b, h, q_idx, kv_idx) -> bool`` or a :class:`sandbox.masks.Mask`
            (combined with ``causal`` if both are given). It is compiled into the kernel: tiles
            with no allowed entry are skipped, the rest are masked entry by entry. Checked
            before launch by :meth:`sandbox.masks.Mask.check`: it compiles for the CPU and for
            CUDA, returns a bool, its captured arrays fit constant memory, and over this
            problem's indices (sampled above ``masks.DENSE_CHECK_ENTRIES``) it neither raises
            nor reads past an array, and gives the same answer twice.
        fast: run the kind's fast build of the same schedule (flash2's: ``kernels/flash2_fast.py``;
            same tiles and HBM traffic, S in registers). None (default): whenever it can run this
            (no ``count_io``, no mask, a thread layout it takes, and NumPy inputs free of NaN and
            inf: see kernels/limits.py); False: the counting kernel's source without counters;
            True: the fast build or a ValueError saying why not.

    Returns:
        ``out``; ``(out, lse)``; with ``count_io`` the report is appended last. ``out`` has the
        input dtype; accumulation is fp32.

    Raises:
        TypeError, ValueError: bad inputs (see :func:`sandbox.validation.check_qkv`), a schedule
            whose tiles overflow its SRAM or the GPU's shared memory, a mask that fails its check.
        MemoryError: the GPU cannot hold the buffers (standard attention's S and P grow as Nq·Nk).
    """
    problem = check_qkv(q, k, v, causal=causal, scale=scale)
    check_flags(return_lse=return_lse, count_io=count_io)
    if fast is not None:
        check_flags(fast=fast)
    _check_schedule(schedule).check_fits(problem.head_dim, problem.dtype)
    mask = _check_mask(mask, problem, schedule)
    from kernels.launch import attention_any

    out, lse, report = attention_any(schedule, problem, q, k, v, count_io=count_io, mask=mask, fast=fast)
    result = (out, lse) if return_lse else (out,)
    if count_io:
        result += (report,)
    return result[0] if len(result) == 1 else result


def _check_mask(mask, problem, schedule):
    from sandbox import kinds
    from sandbox.masks import as_mask

    mask = as_mask(mask)
    if mask is None:
        return None
    if not kinds.get(schedule.kind).masks:
        with_masks = ", ".join(k for k in kinds.names() if kinds.get(k).masks)
        raise ValueError(f"schedule kind {schedule.kind!r} does not take a mask (kinds that do: {with_masks})")
    return mask.check(problem)


def simulate(schedule, problem, backward=False, mask=None):
    """Count what ``schedule`` moves between HBM and SRAM on ``problem``, with the IO model.

    Args:
        schedule: the :class:`Schedule` the kernels would be specialized from.
        problem: a :class:`Problem`.
        backward: count the backward pass (``attention_backward``) instead of the forward.
        mask: a mask predicate, as for :func:`attention` (forward only) and checked the same
            way; the simulator evaluates it over every entry, O(B·H·Nq·Nk), to find the tiles
            the kernel skips (one evaluation with the check's, up to ``masks.DENSE_CHECK_ENTRIES``).

    Returns:
        IOReport: elements per level and tensor (the very counts ``attention(..., count_io=True)``
        measures), and the matmul FLOPs.

    Raises:
        TypeError: arguments of the wrong type.
        ValueError: a run the schedule cannot do (tiles over its SRAM, head_dim over 256).

    Example:
        >>> from sandbox import Problem, Schedule, simulate
        >>> r = simulate(Schedule("flash2", block_q=64, block_kv=64), Problem(1, 1, 1024, 1024, 64))
        >>> r.hbm_reads["Q"] == 1024 * 64
        True
    """
    from sandbox.problem import Problem

    _check_schedule(schedule)
    if not isinstance(problem, Problem):
        raise TypeError(f"problem: expected a sandbox.Problem, got {type(problem).__name__}")
    check_flags(backward=backward)
    schedule.check_fits(problem.head_dim, problem.dtype, backward=backward)
    from simulator import simulate_backward_counts, simulate_counts
    from simulator.counts import check_mask_affordable

    if mask is not None:
        if backward:
            raise NotImplementedError("masks: the backward pass takes causal=True only, not mask= (yet)")
        check_mask_affordable(problem)  # before the mask is checked over the problem
        return simulate_counts(schedule, problem, mask=_check_mask(mask, problem, schedule))
    return (simulate_backward_counts if backward else simulate_counts)(schedule, problem)


def check_against_reference(schedule, problem, seed=0):
    """Run ``schedule`` on random inputs for ``problem``, with counters, and hold it against NumPy and the simulator.

    Returns:
        dict with ``max_abs_error`` (vs the float64 reference), ``max_abs_error_lse``,
        ``seconds`` (wall time of the counting run; on a GPU a warm-up call compiles first),
        ``measured`` and ``simulated`` IOReports, and ``counts_agree``.
    """
    import time

    import numpy as np

    from sandbox.reference import reference_attention

    rng = np.random.default_rng(seed)
    q = rng.standard_normal((problem.batch, problem.heads, problem.n_q, problem.head_dim)).astype(problem.dtype)
    k, v = (
        rng.standard_normal((problem.batch, problem.heads, problem.n_kv, problem.head_dim)).astype(problem.dtype)
        for _ in range(2)
    )
    kwargs = dict(schedule=schedule, causal=problem.causal, scale=problem.scale, return_lse=True, count_io=True)
    from sandbox.runtime import using_simulator

    if not using_simulator():
        attention(q, k, v, **kwargs)  # compile first: time the run, not the compilation
    start = time.perf_counter()
    out, lse, measured = attention(q, k, v, **kwargs)
    seconds = time.perf_counter() - start
    ref_out, ref_lse = reference_attention(q, k, v, causal=problem.causal, scale=problem.scale, return_lse=True)
    simulated = simulate(schedule, problem)
    return {
        "max_abs_error": float(np.abs(out.astype(np.float64) - ref_out).max()),
        "max_abs_error_lse": float(np.abs(lse - ref_lse).max()),
        "seconds": seconds,
        "measured": measured,
        "simulated": simulated,
        "counts_agree": measured == simulated,
    }


def attention_backward(q, k, v, out, lse, dout, schedule=DEFAULT_SCHEDULE, causal=False, scale=None, count_io=False):
    """Gradients dQ, dK, dV of ``attention`` for the upstream gradient ``dout``.

    flash1 and flash2 schedules run FlashAttention-2's backward with recomputation (S and P
    rebuilt per tile from Q, K and the saved log-sum-exp; nothing Nq×Nk in HBM); the standard
    schedule materializes P and dS in HBM. Deterministic: no floating-point atomics, so the same
    inputs give bit-identical gradients.

    Args:
        q, k, v: as for :func:`attention`.
        out, lse: ``attention``'s output (B, H, Nq, d) and log-sum-exp (B, H, Nq) for these inputs.
        dout: gradient of the loss with respect to ``out``, (B, H, Nq, d), the dtype of q.
        schedule, causal, scale: as for the forward call that produced ``out`` and ``lse``.
        count_io: also return the measured :class:`IOReport` last.

    Returns:
        ``(dq, dk, dv)`` in the input dtype (fp32 accumulation), plus the report with ``count_io``.

    Raises:
        TypeError, ValueError: bad inputs, or a schedule whose backward tiles overflow its SRAM.
    """
    import numpy as np

    from sandbox.validation import array_meta

    problem = check_qkv(q, k, v, causal=causal, scale=scale)
    check_flags(count_io=count_io)
    _check_schedule(schedule).check_fits(problem.head_dim, problem.dtype, backward=True)
    q_shape = (problem.batch, problem.heads, problem.n_q, problem.head_dim)
    on_host = isinstance(q, np.ndarray)
    for name, x, shape, dtype in (
        ("out", out, q_shape, problem.dtype), ("dout", dout, q_shape, problem.dtype), ("lse", lse, q_shape[:3], None)
    ):
        got_shape, got_dtype, on_device = array_meta(x, name)
        if tuple(got_shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(got_shape)}")
        if on_device == on_host:
            raise TypeError(f"{name}: expected it on the same side as q (NumPy arrays or GPU arrays, like q)")
        if dtype is not None and got_dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype.name} (that of q), got {got_dtype.name}")
        if dtype is None and got_dtype != np.float32 and not (on_host and got_dtype.name in ("float32", "float64")):
            raise TypeError(f"lse: expected float32 (as attention(return_lse=True) gives), got {got_dtype.name}")
    if on_host:
        lse = np.asarray(lse, dtype=np.float32)
    from kernels.launch import attention_backward_any

    dq, dk, dv, report = attention_backward_any(schedule, problem, q, k, v, out, lse, dout, count_io=count_io)
    return (dq, dk, dv, report) if count_io else (dq, dk, dv)
