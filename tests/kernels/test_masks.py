"""Mask predicates in the kernels: outputs against the masked float64 reference, counters against the simulator.

One predicate feeds all three: the kernel compiles it as a device function, the simulator and
the reference evaluate it on the CPU. Every kind, with and without causal, over a palette of
built-in masks, combinations and a plain function that depends on (b, h).
"""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import cuda, float32, int64

from kernels.tiles import make_tile_ops
from sandbox import Problem, Schedule, masks, reference_attention, reference_attention_backward
from sandbox import attention, attention_backward, simulate
from tests.strategies import BACKWARD_KINDS, MASK_KINDS, SIMULATED, make_inputs, mask_for, problems, schedules, seeds
from tests.tolerances import gradient_tolerances, tolerances

KINDS = MASK_KINDS


def check_masked(schedule, problem, mask, seed):
    q, k, v = make_inputs(problem, seed)
    kw = dict(schedule=schedule, causal=problem.causal, scale=problem.scale, mask=mask, return_lse=True)
    out, lse, measured = attention(q, k, v, count_io=True, **kw)
    ref_out, ref_lse = reference_attention(q, k, v, causal=problem.causal, scale=problem.scale, return_lse=True,
                                           mask=mask)
    empty = ~np.isfinite(ref_lse)  # rows that see no key: O = 0 and L = -inf, exactly
    assert (lse[empty] == -np.inf).all() and (out[empty] == 0).all()
    allowed = masks.dense(mask, problem.batch, problem.heads, problem.n_q, problem.n_kv)
    o_stores = 1 if schedule.kind != "flash1" else -(-problem.n_kv // schedule.block_kv) + 1
    atol_out, atol_lse = tolerances(q, k, v, ref_out, ref_lse, problem.causal, problem.scale, problem.dtype, o_stores,
                                    allowed=allowed)
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(lse[~empty], ref_lse[~empty], rtol=0, atol=atol_lse)
    modelled = simulate(schedule, problem, mask=mask)
    assert measured == modelled, f"{schedule.describe()} {problem} {mask}: {measured.diff(modelled)}"
    if not SIMULATED:  # the fast build (counters compiled away) gives the same output
        fast_out, fast_lse = attention(q, k, v, **kw)
        np.testing.assert_array_equal(fast_out, out)
        np.testing.assert_array_equal(fast_lse, lse)


SIZES = [pytest.param(dict(max_n=20, max_d=8), id="small"),
         pytest.param(dict(max_n=600, max_d=128), id="large", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=6 if SIMULATED else 5)
@given(data=st.data(), seed=seeds)
def test_masked_attention_matches_reference_and_simulator(kind, size, data, seed):
    problem = data.draw(problems(dtypes=("float32",), **size))
    check_masked(data.draw(schedules(kinds=(kind,))), problem, data.draw(mask_for(problem)), seed)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=4 if SIMULATED else 5)
@given(data=st.data(), seed=seeds)
def test_masked_16_bit_attention_matches_reference_and_simulator(kind, size, data, seed):
    """fp16 and bf16 inputs under a mask (the plain build: the 16-bit tensor-core build takes no
    mask), held to the 16-bit tolerances (tests/tolerances.py) and the simulator's counts."""
    problem = data.draw(problems(dtypes=("float16", "bfloat16"), **size))
    check_masked(data.draw(schedules(kinds=(kind,))), problem, data.draw(mask_for(problem)), seed)


def check_masked_backward(schedule, problem, mask, seed):
    """Gradients under ``mask`` against the float64 gradients of the same saved forward (masked
    the same way), and the backward's own counters against the simulator's."""
    q, k, v = make_inputs(problem, seed)
    dout = np.random.default_rng(seed + 1).standard_normal(q.shape).astype(problem.dtype)
    kw = dict(schedule=schedule, causal=problem.causal, scale=problem.scale, mask=mask)
    out, lse = attention(q, k, v, return_lse=True, **kw)
    *grads, measured = attention_backward(q, k, v, out, lse, dout, count_io=True, **kw)
    refs = reference_attention_backward(q, k, v, dout, causal=problem.causal, scale=problem.scale, out=out, lse=lse,
                                        mask=mask)
    allowed = masks.dense(mask, problem.batch, problem.heads, problem.n_q, problem.n_kv)
    atols = gradient_tolerances(q, k, v, dout, refs, problem.causal, problem.scale, problem.dtype, out, lse,
                                allowed=allowed)
    for name, g, ref, atol in zip(("dq", "dk", "dv"), grads, refs, atols):
        assert np.isfinite(g.astype(np.float64)).all(), name
        np.testing.assert_allclose(g.astype(np.float64), ref, rtol=0, atol=atol, err_msg=name)
    modelled = simulate(schedule, problem, mask=mask, backward=True)
    assert measured == modelled, f"{schedule.describe()} {problem} {mask}: {measured.diff(modelled)}"
    again = attention_backward(q, k, v, out, lse, dout, **kw)  # deterministic: bit for bit
    for a, b in zip(grads, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", BACKWARD_KINDS)
@settings(max_examples=4 if SIMULATED else 5)
@given(data=st.data(), seed=seeds)
def test_masked_backward_matches_reference_and_simulator(kind, size, data, seed):
    """Every kind with a backward, every dtype, causal or not, ragged Nq != Nk, the built-in masks,
    their combinations and a plain function of (b, h, q, k)."""
    problem = data.draw(problems(**size))
    check_masked_backward(data.draw(schedules(kinds=(kind,))), problem, data.draw(mask_for(problem)), seed)


@pytest.mark.parametrize("kind", BACKWARD_KINDS)
def test_masked_backward_with_empty_rows_and_tiles(kind):
    """A document layout shorter than the sequence: rows that see nothing (L = -inf) get zero dQ, keys
    no row sees get zero dK and dV, and whole tiles are skipped in every backward kernel."""
    problem = Problem(batch=2, heads=1, n_q=13, n_kv=11, head_dim=4)
    mask = masks.document([3, 4]) & masks.Mask(lambda b, h, q, k: (q + k + b) % 3 != 0, name="mod3b")
    schedule = Schedule(kind, block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    assert masks.tile_classes(mask, schedule, problem)[0] > 0
    check_masked_backward(schedule, problem, mask, seed=6)


@pytest.mark.parametrize("kind", KINDS)
def test_fully_masked_rows_and_tiles(kind):
    """A document layout shorter than the sequence: the last rows see nothing, whole tiles are empty."""
    problem = Problem(batch=1, heads=2, n_q=13, n_kv=11, head_dim=4)
    mask = masks.document([3, 4])
    schedule = Schedule(kind, block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    assert masks.tile_classes(mask, schedule, problem)[0] > 0
    check_masked(schedule, problem, mask, seed=2)


@pytest.mark.parametrize("kind", ["standard", "flash2"])
def test_causal_predicate_equals_causal_flag(kind):
    """mask=causal() skips the tiles causal=True skips and moves the same elements (flash1 differs
    by design: under a mask it rewrites L at every visited tile)."""
    problem = Problem(batch=1, heads=1, n_q=19, n_kv=14, head_dim=6, causal=True)
    q, k, v = make_inputs(problem, 4)
    s = Schedule(kind, block_q=4, block_kv=3, thread_q=2, thread_kv=3)
    flag_out, flag_report = attention(q, k, v, schedule=s, causal=True, count_io=True)
    pred_out, pred_report = attention(q, k, v, schedule=s, mask=masks.causal(), count_io=True)
    np.testing.assert_array_equal(flag_out, pred_out)
    assert flag_report == pred_report


def test_bad_mask_is_refused_before_launch(monkeypatch):
    import kernels.launch as launch

    def no_launch(*a, **kw):
        raise AssertionError("launched")

    monkeypatch.setattr(launch, "run", no_launch)
    x = np.zeros((1, 1, 6, 4), np.float32)
    with pytest.raises(ValueError, match=r"mask .* raised IndexError at \(b=0, h=0, q_idx=5"):
        attention(x, x, x, mask=lambda b, h, q, k: np.arange(5)[q] >= 0)
    with pytest.raises(ValueError, match=r"mask .* raised ZeroDivisionError at \(b=0, h=0, q_idx=2, kv_idx=0\)"):
        attention(x, x, x, mask=lambda b, h, q, k: 1 // (q - 2) >= 0)  # raises away from the box's corners
    with pytest.raises(ValueError, match=r"mask .* is not deterministic"):
        attention(x, x, x, mask=lambda b, h, q, k: random.random() < 0.5)
    with pytest.raises(TypeError, match="four arguments"):
        attention(x, x, x, mask=lambda q, k: True)


@pytest.mark.parametrize("batch_index", [0, 1])
def test_ptx_tile_passes_the_batch_index_to_the_mask(batch_index):
    """Mᵀ X on one tile (the backward's dV += Pᵀ dO) under a mask that depends on b: M is read where
    mask(b, h, q, k) allows, for the batch index the caller passes."""
    mask = masks.Mask(lambda b, h, q, k: (q + 2 * k + b) % 3 != 0, name="by_batch")
    t = make_tile_ops(Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2), 4, False, False,
                      np.dtype(np.float32), mask)
    BR, BC, D, NT, TX, TY, TN, DCQ, ptx_tile = t.BR, t.BC, t.D, t.NT, t.TX, t.TY, t.TN, t.DCQ, t.ptx_tile

    @cuda.jit
    def mt_x(m, x, out, b):
        tid = cuda.threadIdx.x
        ty = tid // TX
        tx = tid - ty * TX
        smm = cuda.shared.array(BR * BC, float32)
        smx = cuda.shared.array(BR * D, float32)
        for e in range(tid, BR * BC, NT):
            smm[e] = m[e // BC, e % BC]
        for e in range(tid, BR * D, NT):
            smx[e] = x[e // D, e % D]
        cuda.syncthreads()
        cnt = cuda.local.array(1, int64)
        acc = cuda.local.array((TN, DCQ), float32)
        for bb in range(TN):
            for c in range(DCQ):
                acc[bb, c] = 0
        ptx_tile(smm, 0, smx, 0, ty, tx, b, 0, 0, 0, BR, BC, acc, cnt, 0, 0)
        for bb in range(TN):
            for c in range(DCQ):
                out[tx + bb * TX, ty + c * TY] = acc[bb, c]

    rng = np.random.default_rng(0)
    m = rng.standard_normal((4, 4)).astype(np.float32)
    x = rng.standard_normal((4, 4)).astype(np.float32)
    out = np.zeros((4, 4), np.float32)
    mt_x[1, NT](m, x, out, batch_index)
    allowed = masks.dense(mask, 2, 1, 4, 4)[batch_index, 0]
    np.testing.assert_allclose(out, np.where(allowed, m, 0).T @ x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["standard", "flash2"])
def test_a_mask_that_depends_on_the_batch_index_sees_each_batch_index(kind):
    """B = 2 under a mask that differs between the two batch indices, against the float64 reference:
    every device function that passes b on to the mask (the S-tile stores, the softmax, the P·V
    tiles; standard's pv phase is kernels/matmul.py's product) must pass the batch index itself, not
    a loop variable that shadows it. (ptx_tile, the backward's Mᵀ·X tile, takes no user mask on any
    public path: test_ptx_tile_passes_the_batch_index_to_the_mask runs it directly.)"""
    mask = masks.Mask(lambda b, h, q, k: (q + k + b) % 3 != 0, name="by_batch")
    problem = Problem(2, 1, 8, 8, 4)
    q, k, v = make_inputs(problem, seed=3)
    schedule = Schedule(kind, block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    out, lse = attention(q, k, v, schedule=schedule, mask=mask, return_lse=True)
    ref_out, ref_lse = reference_attention(q, k, v, return_lse=True, mask=mask)
    allowed = masks.dense(mask, 2, 1, 8, 8)
    assert (allowed[0] != allowed[1]).any()
    atol_out, atol_lse = tolerances(q, k, v, ref_out, ref_lse, False, problem.scale, problem.dtype, allowed=allowed)
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=atol_lse)
