"""The lab: run a schedule on the kernels (``attention``) or count it with the simulator (``simulate``)."""

from sandbox.runtime import ensure_backend

ensure_backend()  # before kernels import numba.cuda

from sandbox.schedule import Schedule  # noqa: E402
from sandbox.validation import check_qkv  # noqa: E402

#: Schedule used when none is given.
DEFAULT_SCHEDULE = Schedule("flash2", block_q=64, block_kv=64)


def _check_schedule(schedule):
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"schedule: expected a sandbox.Schedule, e.g. Schedule('flash2', block_q=64, block_kv=64), "
            f"got {type(schedule).__name__}"
        )
    return schedule


def attention(q, k, v, schedule=DEFAULT_SCHEDULE, causal=False, scale=None, return_lse=False, count_io=False):
    """softmax(scale·QKᵀ)V with the Numba CUDA kernel of ``schedule`` (on the GPU, or Numba's CUDA simulator).

    Args:
        q: (B, H, Nq, d); k, v: (B, H, Nk, d); float32 or float16. NumPy arrays are copied to
            the device and results back; CUDA arrays (CuPy, PyTorch, Numba: anything with
            ``__cuda_array_interface__``, C-contiguous) stay on the GPU and results come back
            as the same kind of array.
        schedule: a :class:`Schedule`; its kind picks the kernel.
        causal: top-left causal mask (query i sees keys j <= i).
        scale: softmax scale, default 1/sqrt(d).
        return_lse: also return L, the log-sum-exp per row, (B, H, Nq) fp32.
        count_io: also return the :class:`IOReport` counted by the kernel itself (slower build).

    Returns:
        ``out``; ``(out, lse)``; with ``count_io`` the report is appended last. ``out`` has the
        input dtype; accumulation is fp32.

    Raises:
        TypeError, ValueError: bad inputs (see :func:`sandbox.validation.check_qkv`), a schedule
            whose tiles overflow its SRAM or the GPU's shared memory.
        MemoryError: the GPU cannot hold the buffers (standard attention's S and P grow as Nq·Nk).
    """
    problem = check_qkv(q, k, v, causal=causal, scale=scale)
    _check_schedule(schedule).check_fits(problem.head_dim, problem.dtype)
    from kernels.launch import attention_any

    out, lse, report = attention_any(schedule, problem, q, k, v, count_io=count_io)
    result = (out, lse) if return_lse else (out,)
    if count_io:
        result += (report,)
    return result[0] if len(result) == 1 else result


def simulate(schedule, problem):
    """Count what ``schedule`` moves between HBM and SRAM on ``problem``, with the IO model.

    Args:
        schedule: the :class:`Schedule` the kernels would be specialized from.
        problem: a :class:`Problem`.

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
    schedule.check_fits(problem.head_dim, problem.dtype)
    from simulator import simulate_counts

    return simulate_counts(schedule, problem)


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
