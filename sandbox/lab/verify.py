"""Hold one schedule's run against the float64 reference and the simulator (the CLI's ``run`` and the demo)."""

import time

import numpy as np

from kernels.entry import attention
from sandbox.vocabulary.reference import reference_attention
from sandbox.vocabulary.runtime import using_simulator
from simulator.entry import simulate


def check_against_reference(schedule, problem, seed=0, score_mod=None):
    """Run ``schedule`` on random inputs for ``problem``, with counters, and hold it against NumPy and the simulator.

    ``score_mod``: a score_mod (sandbox/vocabulary/score_mods.py) for all three, or None.

    Returns:
        dict with ``max_abs_error`` (vs the float64 reference), ``max_abs_error_lse``,
        ``seconds`` (wall time of the counting run; on a GPU a warm-up call compiles first),
        ``measured`` and ``simulated`` IOReports, and ``counts_agree``.
    """
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((problem.batch, problem.heads, problem.n_q, problem.head_dim)).astype(problem.dtype)
    k, v = (
        rng.standard_normal((problem.batch, problem.heads_kv, problem.n_kv, dim)).astype(problem.dtype)
        for dim in (problem.head_dim, problem.head_dim_v)
    )
    kwargs = dict(schedule=schedule, causal=problem.causal, scale=problem.scale, return_lse=True, count_io=True,
                  score_mod=score_mod)
    if not using_simulator():
        attention(q, k, v, **kwargs)  # compile first: time the run, not the compilation
    start = time.perf_counter()
    out, lse, measured = attention(q, k, v, **kwargs)
    seconds = time.perf_counter() - start
    ref_out, ref_lse = reference_attention(q, k, v, causal=problem.causal, scale=problem.scale, return_lse=True,
                                           score_mod=score_mod)
    simulated = simulate(schedule, problem, score_mod=score_mod)
    return {
        "max_abs_error": float(np.abs(out.astype(np.float64) - ref_out).max()),
        "max_abs_error_lse": float(np.abs(lse - ref_lse).max()),
        "seconds": seconds,
        "measured": measured,
        "simulated": simulated,
        "counts_agree": measured == simulated,
    }
