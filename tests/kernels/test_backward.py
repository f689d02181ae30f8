"""Backward kernels against float64 analytic gradients (themselves checked by finite differences)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox import Problem, Schedule, reference_attention, reference_attention_backward
from sandbox import attention, attention_backward
from tests.strategies import BACKWARD_KINDS, magnitudes, make_inputs, problems, schedules, seeds
from tests.tolerances import gradient_tolerances

KINDS = BACKWARD_KINDS
SIZES = [pytest.param(dict(max_n=20, max_d=12), id="small"),
         pytest.param(dict(max_n=400, max_d=128), id="large", marks=pytest.mark.gpu)]


def run_backward(schedule, problem, seed, magnitude=1.0):
    q, k, v = make_inputs(problem, seed, magnitude)
    dout = np.random.default_rng(seed + 1).standard_normal(q.shape).astype(problem.dtype)
    kw = dict(schedule=schedule, causal=problem.causal, scale=problem.scale)
    out, lse = attention(q, k, v, return_lse=True, **kw)
    grads = attention_backward(q, k, v, out, lse, dout, **kw)
    return (q, k, v, dout, out, lse), grads


def check_gradients(schedule, problem, seed, magnitude=1.0):
    """The kernel's gradients against float64 gradients of the same saved forward (out, lse)."""
    (q, k, v, dout, out, lse), grads = run_backward(schedule, problem, seed, magnitude)
    refs = reference_attention_backward(q, k, v, dout, causal=problem.causal, scale=problem.scale, out=out, lse=lse)
    atols = gradient_tolerances(q, k, v, dout, refs, problem.causal, problem.scale, problem.dtype, out, lse)
    for name, g, ref, atol, like in zip(("dq", "dk", "dv"), grads, refs, atols, (q, k, v)):
        assert g.dtype == problem.dtype and g.shape == like.shape, name
        np.testing.assert_allclose(g.astype(np.float64), ref, rtol=0, atol=atol, err_msg=name)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=3)
@given(data=st.data(), seed=seeds, magnitude=magnitudes)
def test_gradients_match_reference(kind, causal, dtype, size, data, seed, magnitude):
    problem = data.draw(problems(dtypes=(dtype,), **size).map(lambda p: Problem(**{**p.__dict__, "causal": causal})))
    schedule = data.draw(schedules(kinds=(kind,)))
    check_gradients(schedule, problem, seed, magnitude)


@pytest.mark.parametrize("shape", [dict(n_q=1, n_kv=7), dict(n_q=7, n_kv=1), dict(n_q=11, n_kv=4), dict(n_q=4, n_kv=11)],
                         ids=["single query", "single key", "Nq > Nk", "Nq < Nk"])
@pytest.mark.parametrize("kind", KINDS)
def test_fixed_shapes_causal(kind, shape):
    problem = Problem(batch=1, heads=2, head_dim=5, causal=True, **shape)
    check_gradients(Schedule(kind, block_q=4, block_kv=3, thread_q=2, thread_kv=2), problem, seed=3)


def test_saved_forward_gives_the_exact_gradient_when_exact():
    rng = np.random.default_rng(1)
    q, k, v, dout = (rng.standard_normal((1, 2, 6, 4)) for _ in range(4))
    out, lse = reference_attention(q, k, v, causal=True, return_lse=True)
    for a, b in zip(reference_attention_backward(q, k, v, dout, causal=True),
                    reference_attention_backward(q, k, v, dout, causal=True, out=out, lse=lse)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_fp32_gradients_match_the_exact_gradient():
    """End to end (no saved-forward shortcut): fp32 forward + backward against the exact float64 gradient."""
    problem = Problem(batch=1, heads=2, n_q=13, n_kv=10, head_dim=6, causal=True)
    for kind in KINDS:
        (q, k, v, dout, _, _), grads = run_backward(Schedule(kind, block_q=4, block_kv=4, thread_q=2, thread_kv=2), problem, 2)
        for g, ref in zip(grads, reference_attention_backward(q, k, v, dout, causal=True)):
            assert np.abs(g - ref).max() < 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("causal", [False, True])
def test_reference_gradients_match_finite_differences(causal):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 1, n, 3)) for n in (4, 5, 5))
    dout = rng.standard_normal((1, 1, 4, 3))
    grads = reference_attention_backward(q, k, v, dout, causal=causal)
    loss = lambda q, k, v: float((reference_attention(q, k, v, causal=causal) * dout).sum())  # noqa: E731
    eps = 1e-6
    for which, g in enumerate(grads):
        args = [q, k, v]
        for idx in np.ndindex(args[which].shape):
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[which][idx] += eps
            minus[which][idx] -= eps
            fd = (loss(*plus) - loss(*minus)) / (2 * eps)
            assert abs(fd - g[idx]) < 1e-8, (which, idx, fd, g[idx])


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_are_bit_identical_across_runs(kind):
    problem = Problem(batch=1, heads=1, n_q=13, n_kv=9, head_dim=6, causal=True)
    schedule = Schedule(kind, block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    _, first = run_backward(schedule, problem, seed=5)
    _, second = run_backward(schedule, problem, seed=5)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_bad_backward_inputs():
    problem = Problem(batch=1, heads=1, n_q=4, n_kv=4, head_dim=2)
    q, k, v = make_inputs(problem, 0)
    s = Schedule("flash2", block_q=2, block_kv=2)
    out, lse = attention(q, k, v, schedule=s, return_lse=True)
    with pytest.raises(ValueError, match=r"dout: expected shape \(1, 1, 4, 2\), got \(1, 1, 3, 2\)"):
        attention_backward(q, k, v, out, lse, q[:, :, :3], schedule=s)
    with pytest.raises(ValueError, match=r"lse: expected shape \(1, 1, 4\)"):
        attention_backward(q, k, v, out, lse[..., :2], q, schedule=s)
    with pytest.raises(TypeError, match="dout: expected dtype float32"):
        attention_backward(q, k, v, out, lse, q.astype(np.float16), schedule=s)
    # a schedule whose SRAM holds the forward's tiles but not the backward's (dO and L, D too)
    big = Schedule("flash2", block_q=64, block_kv=64)
    tight = Schedule("flash2", block_q=64, block_kv=64, sram_bytes=big.sram_footprint(2, "float32"))
    assert tight.sram_footprint(2, "float32", backward=True) > tight.sram_bytes
    with pytest.raises(ValueError, match="needs .* bytes of SRAM for the backward pass"):
        attention_backward(q, k, v, out, lse, q, schedule=tight)
