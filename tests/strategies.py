"""Hypothesis strategies every test draws from: problems, schedules and inputs.

Shapes stay small where kernels run under Numba's CUDA simulator, which executes every
CUDA thread as a Python thread (a 16-thread block over a 24x24 problem takes about a
second); on a real GPU (``sandbox.vocabulary.runtime``) they grow.
"""

import math

import numpy as np
from hypothesis import strategies as st

from sandbox import Problem, Schedule, masks

from sandbox.vocabulary import kinds
from sandbox.vocabulary.kinds import get as registered_kind
from sandbox.vocabulary.runtime import using_simulator

SIMULATED = using_simulator()

#: Largest sequence length / head dim drawn for kernel runs, per backend.
MAX_N = 24 if SIMULATED else 600
MAX_D = 20 if SIMULATED else 256
#: Largest block edge drawn for kernel schedules, and the most threads along each block edge
#: (the simulator's cost grows with threads per block: at most 4x4 there).
MAX_BLOCK = 8 if SIMULATED else 64
MAX_THREADS_EDGE = 4 if SIMULATED else 16

#: Target logit magnitudes |scale·q·k|: ordinary, large, and large enough that a naive
#: softmax overflows fp32 (exp(89) is inf).
LOGIT_MAGNITUDES = (1.0, 10.0, 80.0)

DTYPES = ("float32", "float16", "bfloat16")

#: Every registered schedule kind (sandbox/vocabulary/kinds.py): the kernel and agreement properties run
#: over all of them, so a newly registered kind is tested without touching the tests.
KINDS = kinds.names()
BACKWARD_KINDS = tuple(k for k in KINDS if kinds.get(k).backward)
MASK_KINDS = tuple(k for k in KINDS if kinds.get(k).masks)

#: On a GPU every (schedule, head_dim, dtype, causal) is a separate compilation (~1 s): draw
#: head dims and schedules from small palettes there so that compiled kernels are reused.
GPU_HEAD_DIMS = (1, 20, 64, 128, 256)
GPU_BLOCKS = ((16, 16, 1, 1), (64, 64, 4, 4), (48, 40, 3, 5))


@st.composite
def problems(draw, max_n=MAX_N, max_d=MAX_D, dtypes=DTYPES, batch=(1, 2), heads=(1, 2)):
    """Problems with ragged lengths, Nq != Nk, d from 1 up, every dtype, causal, scale."""
    d = draw(st.integers(1, max_d) if SIMULATED else st.sampled_from([x for x in GPU_HEAD_DIMS if x <= max_d]))
    scale = draw(st.one_of(st.none(), st.floats(0.05, 2.0)))
    return Problem(
        batch=draw(st.integers(*batch)),
        heads=draw(st.integers(*heads)),
        n_q=draw(st.integers(1, max_n)),
        n_kv=draw(st.integers(1, max_n)),
        head_dim=d,
        dtype=draw(st.sampled_from(dtypes)),
        causal=draw(st.booleans()),
        scale=scale,
    )


@st.composite
def grouped_problems(draw, heads=(2, 4), **kwargs):
    """:func:`problems` with grouped K/V heads: H from ``heads``, H_kv a proper divisor of H (1: MQA)."""
    problem = draw(problems(heads=(1, 1), **kwargs))
    h = draw(st.sampled_from(heads))
    heads_kv = draw(st.sampled_from([x for x in range(1, h) if h % x == 0]))
    return Problem(**{**problem.__dict__, "heads": h, "heads_kv": heads_kv})


@st.composite
def schedules(draw, kinds=KINDS, max_block=MAX_BLOCK):
    """Schedules with blocks that rarely divide the lengths, and register tiles that may not divide the blocks."""
    kind = draw(st.sampled_from(kinds))
    splits = {}
    if registered_kind(kind).kv_splits:
        splits = {"kv_splits": draw(st.sampled_from((1, 2, 3, 7)))}
    if not SIMULATED:
        br, bc, tq, tk = draw(st.sampled_from(GPU_BLOCKS))
        return Schedule(kind, block_q=br, block_kv=bc, thread_q=tq, thread_kv=tk, **splits)
    br = draw(st.integers(1, max_block))
    bc = draw(st.integers(1, max_block))
    return Schedule(
        kind,
        block_q=br,
        block_kv=bc,
        thread_q=draw(st.integers(-(-br // MAX_THREADS_EDGE), br)),
        thread_kv=draw(st.integers(-(-bc // MAX_THREADS_EDGE), bc)),
        **splits,
    )


def make_inputs(problem, seed, magnitude=1.0):
    """q, k, v for ``problem`` with logits of about ``magnitude`` (scale·|q·k|), in problem.dtype (v of
    ``problem.head_dim_v`` columns)."""
    rng = np.random.default_rng(seed)
    # q·k of two N(0, s²) vectors has std s²·sqrt(d): pick s for the target logit size.
    s = math.sqrt(magnitude / (abs(problem.scale) * math.sqrt(problem.head_dim)))
    shape_q = (problem.batch, problem.heads, problem.n_q, problem.head_dim)
    shape_kv = (problem.batch, problem.heads_kv, problem.n_kv, problem.head_dim)
    q = (s * rng.standard_normal(shape_q)).astype(problem.dtype)
    k = (s * rng.standard_normal(shape_kv)).astype(problem.dtype)
    v = rng.standard_normal(shape_kv[:3] + (problem.head_dim_v,)).astype(problem.dtype)
    return q, k, v


seeds = st.integers(0, 2**32 - 1)
magnitudes = st.sampled_from(LOGIT_MAGNITUDES)


@st.composite
def mask_for(draw, problem):
    """A mask for ``problem``: a built-in (sliding window, prefix LM, document, block-sparse), a
    combination (and, not), or a plain function of (b, h, q, k)."""
    n = max(problem.n_q, problem.n_kv)
    kind = draw(st.sampled_from(["window", "prefix", "document", "block", "and", "not", "function"]))
    if kind == "window":
        return masks.sliding_window(draw(st.integers(0, max(1, n // 3))))
    if kind == "prefix":
        return masks.prefix_lm(draw(st.integers(0, n)))
    if kind == "document":
        lengths = draw(st.lists(st.integers(1, max(1, n // 2)), min_size=1, max_size=6))
        return masks.document(lengths)
    if kind == "block":
        bq, bk = draw(st.integers(1, max(1, problem.n_q // 2))), draw(st.integers(1, max(1, problem.n_kv // 2)))
        tq, tk = -(-problem.n_q // bq), -(-problem.n_kv // bk)
        if tq * tk > 4096:
            bq, bk, tq, tk = problem.n_q, problem.n_kv, 1, 1
        layout = masks.random_block_layout(tq, tk, draw(st.sampled_from([0.25, 0.5, 1.0])), seed=draw(seeds))
        return masks.block_sparse(layout, bq, bk)
    if kind == "and":
        return masks.sliding_window(draw(st.integers(0, n))) & masks.prefix_lm(draw(st.integers(0, n)))
    if kind == "not":
        return ~masks.sliding_window(draw(st.integers(0, n)))
    period = draw(st.integers(2, 5))
    return masks.Mask(lambda b, h, q, k: (3 * q + 7 * k + h + 2 * b) % period != 0, name=f"mod{period}")
