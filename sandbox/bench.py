"""Kernel timing on a GPU: CUDA events, warm-up, median of repeats, inputs rotated out of L2."""

import statistics

import numpy as np

#: Repeats timed after warm-up; the median is reported.
REPEATS = 10
WARMUP = 2
#: Input sets cycled through so that consecutive launches do not find their inputs in L2
#: (an H100 has 50 MiB of L2).
L2_BYTES = 50 * 2**20


def time_attention(schedule, problem, repeats=REPEATS, seed=0):
    """Median milliseconds of one forward call of ``schedule`` on ``problem`` (device arrays, fast build).

    Raises:
        RuntimeError: under the CUDA simulator, where timings mean nothing.
    """
    from numba import cuda

    from kernels.launch import run
    from sandbox.runtime import using_simulator

    if using_simulator():
        raise RuntimeError("kernel timing needs a GPU; the CUDA simulator's timings mean nothing")
    rng = np.random.default_rng(seed)
    shape_q = (problem.batch, problem.heads, problem.n_q, problem.head_dim)
    shape_kv = (problem.batch, problem.heads, problem.n_kv, problem.head_dim)
    per_set = (np.prod(shape_q) + 2 * np.prod(shape_kv)) * problem.dtype.itemsize
    n_sets = int(min(8, max(2, -(-2 * L2_BYTES // per_set))))
    sets = [
        tuple(cuda.to_device(rng.standard_normal(s).astype(problem.dtype)) for s in (shape_q, shape_kv, shape_kv))
        for _ in range(n_sets)
    ]
    for i in range(WARMUP):
        run(schedule, problem, *sets[i % n_sets])
    times = []
    for i in range(repeats):
        start, end = cuda.event(), cuda.event()
        start.record()
        run(schedule, problem, *sets[i % n_sets])
        end.record()
        end.synchronize()
        times.append(cuda.event_elapsed_time(start, end))
    return statistics.median(times)
