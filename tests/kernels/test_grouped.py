"""Grouped K/V heads (GQA, and MQA at H_kv = 1): every kind against the float64 reference, forward and backward.

Query head h reads K/V head h // (H / H_kv); dK and dV of a K/V head sum its group's query heads.
"""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.builds import GROUPED_REFUSAL, choose_backward_build, choose_build
from sandbox import Problem, Schedule, attention, attention_backward, masks, simulate
from sandbox.vocabulary.reference import (expand_heads, reference_attention, reference_attention_backward,
                                          sum_groups)
from sandbox.vocabulary.validation import check_qkv
from tests.strategies import BACKWARD_KINDS, KINDS, MASK_KINDS, make_inputs
from tests.tolerances import gradient_tolerances, tolerances

HEADS = 4
SHAPE = dict(batch=1, heads=HEADS, n_q=7, n_kv=9, head_dim=4)


def schedule_of(kind):
    splits = {"kv_splits": 2} if kind == "splitkv" else {}
    return Schedule(kind, block_q=4, block_kv=4, thread_q=2, thread_kv=2, **splits)


def grouped_inputs(problem, seed=0):
    """q (B, H, Nq, d), k and v (B, H_kv, Nk, d) for ``problem``, and dout like q."""
    full = Problem(**{**problem.__dict__, "heads": problem.heads_kv})
    _, k, v = make_inputs(full, seed)
    q, _, _ = make_inputs(Problem(**{**problem.__dict__, "heads_kv": None}), seed + 1)
    dout = np.random.default_rng(seed + 2).standard_normal(q.shape).astype(problem.dtype)
    return q, k, v, dout


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("heads_kv", [1, 2], ids=["mqa", "gqa"])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_reference(kind, heads_kv, causal, dtype):
    problem = Problem(**SHAPE, heads_kv=heads_kv, causal=causal, dtype=dtype)
    q, k, v, _ = grouped_inputs(problem)
    out, lse = attention(q, k, v, schedule=schedule_of(kind), causal=causal, return_lse=True)
    ref_out, ref_lse = reference_attention(q, k, v, causal=causal, return_lse=True)
    # the tolerances of the same call on K/V expanded to H heads (the very same arithmetic per query head)
    kx, vx = expand_heads(k, HEADS), expand_heads(v, HEADS)
    stores = -(-problem.n_kv // 4) if kind == "flash1" else 1
    atol_out, atol_lse = tolerances(q, kx, vx, ref_out, ref_lse, causal, problem.scale, dtype, o_stores=stores)
    assert out.shape == q.shape and out.dtype == q.dtype
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=atol_lse)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("heads_kv", [1, 2], ids=["mqa", "gqa"])
@pytest.mark.parametrize("kind", BACKWARD_KINDS)
def test_backward_matches_reference(kind, heads_kv, causal, dtype):
    problem = Problem(**SHAPE, heads_kv=heads_kv, causal=causal, dtype=dtype)
    q, k, v, dout = grouped_inputs(problem)
    kw = dict(schedule=schedule_of(kind), causal=causal)
    out, lse = attention(q, k, v, return_lse=True, **kw)
    grads = attention_backward(q, k, v, out, lse, dout, **kw)
    refs = reference_attention_backward(q, k, v, dout, causal=causal, out=out, lse=lse)
    # per query head as on K/V expanded to H heads; dK, dV sum H / H_kv of those
    kx, vx = expand_heads(k, HEADS), expand_heads(v, HEADS)
    refs_x = reference_attention_backward(q, kx, vx, dout, causal=causal, out=out, lse=lse)
    atols = gradient_tolerances(q, kx, vx, dout, refs_x, causal, problem.scale, dtype, out, lse)
    group = problem.group
    for name, g, ref, atol, like, summed in zip(("dq", "dk", "dv"), grads, refs, atols, (q, k, v), (1, group, group)):
        assert g.dtype == problem.dtype and g.shape == like.shape, name
        np.testing.assert_allclose(g.astype(np.float64), ref, rtol=0, atol=summed * atol, err_msg=name)


@pytest.mark.parametrize("kind", BACKWARD_KINDS)
def test_grouped_gradients_are_bit_identical_across_runs(kind):
    problem = Problem(**SHAPE, heads_kv=2, causal=True)
    q, k, v, dout = grouped_inputs(problem, seed=5)
    kw = dict(schedule=schedule_of(kind), causal=True)
    out, lse = attention(q, k, v, return_lse=True, **kw)
    first = attention_backward(q, k, v, out, lse, dout, **kw)
    second = attention_backward(q, k, v, out, lse, dout, **kw)
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()


def test_ungrouped_heads_kv_is_the_usual_call():
    """heads_kv = H is today's call: the same Problem, and the same bits."""
    assert Problem(**SHAPE, heads_kv=HEADS) == Problem(**SHAPE)
    problem = Problem(**SHAPE, causal=True)
    q, k, v = make_inputs(problem, 3)
    s = schedule_of("flash2")
    out, lse = attention(q, k, v, schedule=s, causal=True, return_lse=True, fast=False)
    assert check_qkv(q, k, v, causal=True).heads_kv == HEADS
    ref = reference_attention(q, k, v, causal=True)
    assert np.abs(out - ref).max() < 1e-5


FAST_FORWARDS = [pytest.param(("fma", 8, 8, 8, "float32", True), id="fma"),
                 pytest.param(("tf32x3", 16, 16, 16, "float32", False), id="tf32x3"),
                 pytest.param(("f16", 16, 16, 16, "bfloat16", True), id="f16")]


@pytest.mark.parametrize("case", FAST_FORWARDS)
def test_the_fast_forwards_take_grouped_heads(case):
    """flash2's fast forwards read K/V head h // (H / H_kv) for query head h: within their
    tolerances of the float64 reference (the 16-bit build's adds P's rounding)."""
    from kernels.flash2_tc import tc_schedule
    from kernels.flash2_tc16 import tc16_schedule
    from tests.tolerances import tolerances_tc16

    math_, br, bc, d, dtype, causal = case
    s = {"fma": lambda: Schedule("flash2", block_q=br, block_kv=bc, thread_q=2, thread_kv=2),
         "tf32x3": lambda: tc_schedule(br, bc), "f16": lambda: tc16_schedule(br, bc)}[math_]()
    problem = Problem(batch=2, heads=HEADS, heads_kv=2, n_q=19, n_kv=21, head_dim=d, dtype=dtype, causal=causal)
    q, k, v, _ = grouped_inputs(problem, seed=5)
    out, lse, ran = attention(q, k, v, schedule=s, causal=causal, return_lse=True, return_build=True, fast=True)
    assert ran.name == f"fast-{math_}"
    ref_out, ref_lse = reference_attention(q, k, v, causal=causal, return_lse=True)
    check = tolerances_tc16 if math_ == "f16" else tolerances
    atol_out, atol_lse = check(q, k, v, ref_out, ref_lse, causal, problem.scale, problem.dtype)
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=atol_lse)


def test_the_fast_backward_refuses_grouped_heads():
    """The fast backwards read K and V, and write dK and dV, at the query head: grouped calls run
    the plain backward, and fast=True says why."""
    s = Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    assert choose_build(s, 4, grouped=True).fast  # the fast forward takes them
    tc = Schedule("flash2", block_q=16, block_kv=16, thread_q=2, thread_kv=4, math="tf32x3")
    assert choose_backward_build(tc, 16, fast=True).fast  # the fast backward takes this schedule ...
    chosen = choose_backward_build(tc, 16, fast=None, grouped=True)  # ... but not grouped K/V heads
    assert not chosen.fast
    with pytest.raises(ValueError, match=re.escape(GROUPED_REFUSAL)):
        choose_backward_build(tc, 16, fast=True, grouped=True)
    problem = Problem(batch=1, heads=HEADS, heads_kv=2, n_q=7, n_kv=9, head_dim=16)
    q, k, v, dout = grouped_inputs(problem)
    out, lse = attention(q, k, v, schedule=tc, return_lse=True)
    with pytest.raises(ValueError, match="grouped K/V heads"):
        attention_backward(q, k, v, out, lse, dout, schedule=tc, fast=True)


def test_validation_names_the_heads():
    q = np.zeros((1, 8, 4, 4), np.float32)
    k = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="k: 3 heads do not divide q's 8 heads"):
        attention(q, k, k)
    with pytest.raises(ValueError, match="k: expected shape"):
        attention(q, np.zeros((2, 2, 4, 4), np.float32), np.zeros((2, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="v: expected shape"):
        attention(q, np.zeros((1, 2, 4, 4), np.float32), np.zeros((1, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="heads_kv: 3 K/V heads do not divide the 8 query heads"):
        Problem(1, 8, 4, 4, 4, heads_kv=3)
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="heads_kv: expected a positive int"):
            Problem(1, 8, 4, 4, 4, heads_kv=bad)
    assert Problem(1, 8, 4, 4, 4, heads_kv=2).group == 4


def test_reference_sums_the_group():
    """The reference's grouped call is the ungrouped call on expanded K/V, dK and dV summed per group."""
    rng = np.random.default_rng(0)
    q, dout = rng.standard_normal((2, 6, 5, 3)), rng.standard_normal((2, 6, 5, 3))
    k, v = rng.standard_normal((2, 3, 4, 3)), rng.standard_normal((2, 3, 4, 3))
    kx, vx = expand_heads(k, 6), expand_heads(v, 6)
    assert np.array_equal(reference_attention(q, k, v, causal=True), reference_attention(q, kx, vx, causal=True))
    dq, dk, dv = reference_attention_backward(q, k, v, dout)
    dqx, dkx, dvx = reference_attention_backward(q, kx, vx, dout)
    assert np.array_equal(dq, dqx)
    np.testing.assert_allclose(dk, sum_groups(dkx, 3), rtol=1e-13)
    np.testing.assert_allclose(dv, sum_groups(dvx, 3), rtol=1e-13)
    assert dk.shape == k.shape and dv.shape == v.shape


# -- masks with grouped heads: the predicate sees the query head h ----------------------------

def head_mask():
    """A user predicate of the query head: heads of one group see different keys."""
    return masks.Mask(lambda b, h, q, k: (q + 2 * k + 3 * h) % 4 != 0, name="by_head")


GROUPED_MASKS = {
    "sliding_window": lambda: masks.sliding_window(2),
    "document": lambda: masks.document([3, 4]),
    "by_head": head_mask,
}


def check_grouped_masked(kind, problem, mask, seed=0, backward=False):
    """Forward (and with ``backward`` the gradients) under ``mask`` with grouped K/V heads, against
    float64 attention on K/V expanded to H heads, masked per query head; the kernels' counters
    equal the simulator's for the same mask."""
    q, k, v, dout = grouped_inputs(problem, seed)
    s = schedule_of(kind)
    kw = dict(schedule=s, causal=problem.causal, mask=mask)
    out, lse, measured = attention(q, k, v, return_lse=True, count_io=True, **kw)
    assert measured == simulate(s, problem, mask=mask), measured.diff(simulate(s, problem, mask=mask))
    kx, vx = expand_heads(k, problem.heads), expand_heads(v, problem.heads)
    allowed = masks.dense(mask, problem.batch, problem.heads, problem.n_q, problem.n_kv)
    ref_out, ref_lse = reference_attention(q, k, v, causal=problem.causal, return_lse=True, mask=mask)
    ref_x = reference_attention(q, kx, vx, causal=problem.causal, mask=mask)
    np.testing.assert_array_equal(ref_out, ref_x)  # the reference masks each query head as the expanded call
    empty = ~np.isfinite(ref_lse)  # rows that see no key: O = 0 and L = -inf
    assert (lse[empty] == -np.inf).all() and (out[empty] == 0).all()
    stores = -(-problem.n_kv // s.block_kv) + 1 if kind == "flash1" else 1
    atol_out, atol_lse = tolerances(q, kx, vx, ref_out, ref_lse, problem.causal, problem.scale, problem.dtype,
                                    o_stores=stores, allowed=allowed)
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(lse[~empty], ref_lse[~empty], rtol=0, atol=atol_lse)
    if not backward:
        return
    *grads, measured = attention_backward(q, k, v, out, lse, dout, count_io=True, **kw)
    assert measured == simulate(s, problem, mask=mask, backward=True)
    refs = reference_attention_backward(q, k, v, dout, causal=problem.causal, out=out, lse=lse, mask=mask)
    refs_x = reference_attention_backward(q, kx, vx, dout, causal=problem.causal, out=out, lse=lse, mask=mask)
    atols = gradient_tolerances(q, kx, vx, dout, refs_x, problem.causal, problem.scale, problem.dtype, out, lse,
                                allowed=allowed)
    group = problem.group
    for name, g, ref, atol, like, summed in zip(("dq", "dk", "dv"), grads, refs, atols, (q, k, v), (1, group, group)):
        assert g.shape == like.shape and np.isfinite(g.astype(np.float64)).all(), name
        np.testing.assert_allclose(g.astype(np.float64), ref, rtol=0, atol=summed * atol, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mask", list(GROUPED_MASKS))
@pytest.mark.parametrize("heads_kv", [1, 2], ids=["mqa", "gqa"])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_masked_forward_with_grouped_heads(kind, heads_kv, mask, dtype):
    problem = Problem(**SHAPE, heads_kv=heads_kv, dtype=dtype)
    check_grouped_masked(kind, problem, GROUPED_MASKS[mask]())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mask", list(GROUPED_MASKS))
@pytest.mark.parametrize("heads_kv", [1, 2], ids=["mqa", "gqa"])
@pytest.mark.parametrize("kind", [k for k in BACKWARD_KINDS if k in MASK_KINDS])
def test_masked_backward_with_grouped_heads(kind, heads_kv, mask, dtype):
    problem = Problem(**SHAPE, heads_kv=heads_kv, dtype=dtype, causal=mask == "document")
    check_grouped_masked(kind, problem, GROUPED_MASKS[mask](), seed=1, backward=True)


@pytest.mark.parametrize("kind", [k for k in BACKWARD_KINDS if k in MASK_KINDS])
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_masked_grouped_heads_property(kind, data):
    """Random grouping, shape, mask (built-in or of the query head) and dtype, forward and backward."""
    heads_kv = data.draw(st.sampled_from([1, 2, 4]))
    problem = Problem(batch=1, heads=4, n_q=data.draw(st.integers(1, 12)), n_kv=data.draw(st.integers(1, 12)),
                      head_dim=4, heads_kv=heads_kv, dtype=data.draw(st.sampled_from(["float32", "float16"])),
                      causal=data.draw(st.booleans()))
    mask = data.draw(st.sampled_from([masks.sliding_window(data.draw(st.integers(0, 6))),
                                      masks.document(data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))),
                                      head_mask()]))
    check_grouped_masked(kind, problem, mask, seed=data.draw(st.integers(0, 99)), backward=True)
