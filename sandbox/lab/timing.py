"""Timing on a GPU: CUDA events on the default stream, and the rotation of input sets out of L2.

Every timed measurement of the lab goes through here: the bench's rows (:func:`time_calls`), the
autotuner's candidates and the sweeps' and decoding study's kernel times (:func:`time_attention`).

- a call is timed by a pair of CUDA events on the default stream around it, waited for
  (:func:`time_calls`), or, to rank schedules of one kernel, as a batch of calls enqueued back to
  back (:func:`time_back_to_back`), which leaves the host's launch work out;
- calls rotate through several input sets so that no call finds its inputs in L2, left there by
  the call before: as many sets as make 2× the L2 size, at most :data:`MAX_SETS`, and never more
  than a quarter of the free device memory holds (:func:`rotation_sets`). The L2 size is the
  device's, read from it (``sandbox.lab.info.device_facts``).
"""

import math
import statistics

import numpy as np
from numba import cuda

# the launcher's device copy (bfloat16 as its uint16 bits), under its present private name
from kernels.launch import run, run_backward, to_device
from sandbox.lab import info
from sandbox.vocabulary.runtime import using_simulator

#: Repeats timed after warm-up; the median is reported.
REPEATS = 10
#: Untimed calls before them (which also compile our kernels).
WARMUP = 2
#: Most input sets rotated through.
MAX_SETS = 8


def rotation_sets(bytes_per_set, l2_bytes, free_bytes=None, lo=1, hi=MAX_SETS):
    """How many input sets to cycle through: ⌈2·L2 / bytes_per_set⌉ clamped to [lo, hi], and no more
    than a quarter of ``free_bytes`` (device memory free) holds, but at least one."""
    n = min(hi, max(lo, -(-2 * int(l2_bytes) // int(bytes_per_set))))
    if free_bytes is not None and math.isfinite(free_bytes):
        n = min(n, max(1, int(free_bytes // 4 // bytes_per_set)))
    return int(n)


def device_free_bytes():
    """Free device memory in bytes (after caches are emptied), or None where it cannot be read."""
    try:
        return cuda.current_context().get_memory_info()[0]
    except Exception:
        return None


def warm_up(calls, warmup):
    """``warmup`` untimed calls, rotating through ``calls``, then wait for the device."""
    for i in range(warmup):
        calls[i % len(calls)]()
    cuda.synchronize()


def event_ms(work):
    """Milliseconds between two CUDA events on the default stream around ``work()``, waited for."""
    start, end = cuda.event(), cuda.event()
    start.record()
    work()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def time_calls(calls, repeats=REPEATS, warmup=0):
    """Milliseconds of each of ``repeats`` calls; call i runs ``calls[i % len(calls)]`` (input rotation).

    Each call is bracketed by two CUDA events on the default stream and waited for, so that one
    call's time holds only its own work (and the host's launch overhead, as for any library).
    """
    warm_up(calls, warmup)
    return [event_ms(calls[i % len(calls)]) for i in range(repeats)]


def time_back_to_back(calls, repeats=REPEATS, batches=3, warmup=0):
    """Milliseconds per call of ``batches`` batches, each of ``repeats`` calls enqueued back to back
    between two CUDA events (call i runs ``calls[i % len(calls)]``).

    While the GPU works on one call the host prepares the next, so a batch measures the kernels'
    throughput without the host's launch work, which :func:`time_calls` keeps in: the way to rank
    schedules of one kernel, whose launch work is the same (on the H100 it moved waited-for calls
    by up to 0.3 ms at N = 4096, more than the gaps between close schedules).
    """

    def batch():
        for i in range(repeats):
            calls[i % len(calls)]()

    warm_up(calls, warmup)
    return [event_ms(batch) / repeats for _ in range(batches)]


def time_attention(schedule, problem, repeats=REPEATS, seed=0, back_to_back=False, backward=False, fast=True,
                   deterministic=True):
    """Median milliseconds of one forward call of ``schedule`` on ``problem`` (device arrays, fast build):
    each call waited for (:func:`time_calls`, the bench's way), or, with ``back_to_back``, the median
    of 3 batches of ``repeats`` calls (:func:`time_back_to_back`). With ``backward``: one backward
    call (:func:`kernels.launch.run_backward` with ``fast``: True, the fast backward, which is
    opt-in and raises where there is none; None, the build a default call runs; ``deterministic``
    as run_backward takes it) from a forward run once per input set.

    Raises:
        RuntimeError: under the CUDA simulator, where timings mean nothing.
    """
    if using_simulator():
        raise RuntimeError("kernel timing needs a GPU; the CUDA simulator's timings mean nothing")
    rng = np.random.default_rng(seed)
    shape_q = (problem.batch, problem.heads, problem.n_q, problem.head_dim)
    shape_kv = (problem.batch, problem.heads, problem.n_kv, problem.head_dim)
    per_set = (np.prod(shape_q) + 2 * np.prod(shape_kv)) * problem.dtype.itemsize
    n_sets = rotation_sets(per_set, info.resolve_gpu().l2_bytes, lo=2)
    sets = [  # through the launcher's copy: bfloat16 travels as its uint16 bits
        tuple(to_device([rng.standard_normal(s).astype(problem.dtype) for s in (shape_q, shape_kv, shape_kv)], "qkv"))
        for _ in range(n_sets)
    ]
    if backward:
        saved = []
        for q, k, v in sets:
            out, lse, _, _ = run(schedule, problem, q, k, v)
            dout = to_device([rng.standard_normal(shape_q).astype(problem.dtype)], "d")[0]
            saved.append((q, k, v, out, lse, dout))
        calls = [lambda s=s: run_backward(schedule, problem, *s, fast=fast, deterministic=deterministic)
                 for s in saved]
    else:
        calls = [lambda s=s: run(schedule, problem, *s) for s in sets]
    if back_to_back:
        return statistics.median(time_back_to_back(calls, repeats, warmup=WARMUP))
    return statistics.median(time_calls(calls, repeats, warmup=WARMUP))
