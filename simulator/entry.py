"""The simulator's entry point: check the arguments (with the vocabulary's checks), then count.

``sandbox.simulate`` is this function.
"""

from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.validation import check_flags, check_mask, check_schedule, check_score_mod
from simulator.counts import check_mask_affordable, simulate_backward_counts, simulate_counts


def simulate(schedule, problem, backward=False, mask=None, score_mod=None):
    """Count what ``schedule`` moves between HBM and SRAM on ``problem``, with the IO model.

    Args:
        schedule: the :class:`Schedule` the kernels would be specialized from.
        problem: a :class:`Problem`.
        backward: count the backward pass (``attention_backward``) instead of the forward.
        mask: a mask predicate, as for :func:`attention` (forward or backward) and checked the same
            way; the simulator evaluates it over every entry, O(B·H·Nq·Nk), to find the tiles
            the kernel skips (one evaluation with the check's, up to ``masks.DENSE_CHECK_ENTRIES``).
        score_mod: a score_mod, as for :func:`attention` (checked the same way, but a backward
            count needs no ``grad``): every tile that evaluates it reads its captured arrays
            from HBM, the tensor "mod" (sandbox/vocabulary/score_mods.py); the standard backward
            also moves score_mod'(S), "dmod", through HBM.

    Returns:
        IOReport: elements per level and tensor (the very counts ``attention(..., count_io=True)``
        measures), and the matmul FLOPs.

    Raises:
        TypeError: arguments of the wrong type.
        ValueError: a run the schedule cannot do (tiles over its SRAM, head_dim or head_dim_v over 256).

    Example:
        >>> from sandbox import Problem, Schedule, simulate
        >>> r = simulate(Schedule("flash2", block_q=64, block_kv=64), Problem(1, 1, 1024, 1024, 64))
        >>> r.hbm_reads["Q"] == 1024 * 64
        True
    """
    check_schedule(schedule)
    if not isinstance(problem, Problem):
        raise TypeError(f"problem: expected a sandbox.Problem, got {type(problem).__name__}")
    check_flags(backward=backward)
    schedule.check_fits(problem.head_dim, problem.dtype, backward=backward, head_dim_v=problem.head_dim_v)
    count = simulate_backward_counts if backward else simulate_counts
    extra = {}
    if score_mod is not None:
        extra["score_mod"] = check_score_mod(score_mod, problem, schedule)
    if mask is not None:
        check_mask_affordable(problem)  # before the mask is checked over the problem
        return count(schedule, problem, mask=check_mask(mask, problem, schedule), **extra)
    return count(schedule, problem, **extra)
