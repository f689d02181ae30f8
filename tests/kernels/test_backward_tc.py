"""flash2's fast backward (kernels/backward_tc.py) against float64 analytic gradients, its
determinism, and which calls it takes or leaves to the plain backward.

Tolerances are :func:`tests.tolerances.gradient_tolerances_tc`: the counting backward's, plus
what the tensor cores' sums add. The 3xTF32 products are fp32-accurate (kernels/mma.py: each
product within 2^-21 of its operands' magnitudes) and P = exp2(·) is ``ex2.approx`` (2 ulp), both
inside the fp32 rounding budget of (d + Nq + Nk + 8) units per gradient; but a tensor core adds
its products cut short, not rounded to nearest, so S, dP and each chunk's sum err by a few units
per product of the largest magnitude in the sum (a row that sees one key has dQ = dK = 0 exactly,
and the kernel's dP - D is that error alone). fp16/bf16 inputs are TF32 already: fewer products.
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.builds import BACKWARD_OPT_IN
from kernels.flash2_tc import tc_schedule
from sandbox import Problem, Schedule, attention, attention_backward, reference_attention, reference_attention_backward
from sandbox.vocabulary import masks
from sandbox.vocabulary.runtime import using_simulator
from tests.strategies import DTYPES, make_inputs, mask_for, seeds
from kernels import backward_tc, launch
from kernels.backward_tc import chunks, eligible, smem_bytes, stages
from tests.tolerances import gradient_tolerances_tc

SIMULATED = using_simulator()
SIZES = [pytest.param(dict(n=(1, 40), d=(8, 16), blocks=(16, 32)), id="small"),
         pytest.param(dict(n=(1, 700), d=(64, 128), blocks=(64, 128)), id="large", marks=pytest.mark.gpu)]


def gradients(schedule, problem, seed, fast=True, mask=None, dout=None, out=None, runs=1):
    """The saved forward's (q, k, v, dout, out, lse), the gradients and the backward's build; with
    ``runs`` > 1 the backward runs again on the same inputs and each run's bytes must be the first's."""
    q, k, v = make_inputs(problem, seed)
    if dout is None:
        dout = np.random.default_rng(seed + 1).standard_normal(q.shape).astype(problem.dtype)
    kw = dict(schedule=schedule, causal=problem.causal, scale=problem.scale, mask=mask)
    forward_out, lse = attention(q, k, v, return_lse=True, **kw)
    out = forward_out if out is None else out
    *grads, build = attention_backward(q, k, v, out, lse, dout, fast=fast, return_build=True, **kw)
    for _ in range(runs - 1):
        again = attention_backward(q, k, v, out, lse, dout, fast=fast, **kw)
        for name, a, b in zip(("dq", "dk", "dv"), grads, again):
            assert a.tobytes() == b.tobytes(), f"{name} differs between runs"
    return (q, k, v, dout, out, lse), grads, build


def saved_forward(schedule, problem, seed):
    """(q, k, v, dout, out, lse): fp32 inputs from ``seed``, dout from ``seed + 1``, and the forward's O and L."""
    q, k, v = make_inputs(problem, seed)
    dout = np.random.default_rng(seed + 1).standard_normal(q.shape).astype(np.float32)
    out, lse = attention(q, k, v, schedule=schedule, causal=problem.causal, return_lse=True)
    return q, k, v, dout, out, lse


def check_against_float64(schedule, problem, mask, inputs, grads):
    """Each gradient within :func:`gradient_tolerances_tc` of the float64 gradients of the same saved
    forward, under the same mask (and finite: a row or key the mask leaves alone gets zeros)."""
    q, k, v, dout, out, lse = inputs
    refs = reference_attention_backward(q, k, v, dout, causal=problem.causal, scale=problem.scale, out=out, lse=lse,
                                        mask=mask)
    allowed = None if mask is None else masks.dense(mask, problem.batch, problem.heads, problem.n_q, problem.n_kv)
    atols = gradient_tolerances_tc(q, k, v, dout, refs, problem.causal, problem.scale, problem.dtype, out, lse,
                                   chunks(schedule, q.shape[3], mask is not None), allowed=allowed)
    for name, g, ref, atol, like in zip(("dq", "dk", "dv"), grads, refs, atols, (q, k, v)):
        assert g.dtype == like.dtype and g.shape == like.shape, name
        assert np.isfinite(g.astype(np.float64)).all(), name
        np.testing.assert_allclose(g.astype(np.float64), ref, rtol=0, atol=atol, err_msg=name)


def draw_case(data, size, causal, dtype):
    """A (schedule, problem) of ``size``: ragged Nq, Nk, d, and blocks (Br, Bc) the fast backward
    takes at that d (128×128 at d = 128 needs 271 KB of SRAM: refused, and tested as refused, in
    test_fast_true_says_why_the_fast_backward_cannot_run)."""
    n_q, n_kv = (data.draw(st.integers(*size["n"]), label=name) for name in ("n_q", "n_kv"))
    d = data.draw(st.sampled_from(size["d"]), label="d")
    br = data.draw(st.sampled_from(size["blocks"]), label="Br")
    bc = data.draw(st.sampled_from([b for b in size["blocks"] if eligible(tc_schedule(br, b), d) is None]),
                   label="Bc")
    problem = Problem(batch=data.draw(st.integers(1, 2)), heads=data.draw(st.integers(1, 2)), n_q=n_q, n_kv=n_kv,
                      head_dim=d, dtype=dtype, causal=causal)
    return tc_schedule(br, bc), problem


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@settings(max_examples=1 if SIMULATED else 4, deadline=None)
@given(data=st.data(), seed=seeds)
def test_fast_backward_matches_float64_gradients(causal, dtype, size, data, seed):
    schedule, problem = draw_case(data, size, causal, dtype)
    inputs, grads, build = gradients(schedule, problem, seed)
    assert build.name == "fast-tf32x3", build.reason
    check_against_float64(schedule, problem, None, inputs, grads)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@settings(max_examples=1 if SIMULATED else 4, deadline=None)
@given(data=st.data(), seed=seeds)
def test_masked_fast_backward_matches_float64_gradients(causal, size, data, seed):
    """Any dtype, ragged Nq != Nk, a mask from the built-ins, their combinations or a plain function
    of (b, h, q, k) (tests/strategies.py, ``mask_for``), causal or not; the gradients bit-identical
    across two runs."""
    schedule, problem = draw_case(data, size, causal, data.draw(st.sampled_from(DTYPES), label="dtype"))
    mask = data.draw(mask_for(problem), label="mask")
    inputs, grads, build = gradients(schedule, problem, seed, mask=mask, runs=2)
    assert build.name == "fast-tf32x3", build.reason
    check_against_float64(schedule, problem, mask, inputs, grads)


def test_masked_fast_backward_with_empty_rows_and_tiles():
    """A document layout shorter than the sequences and a plain function of (b, h, q, k): rows that see
    no key (L = -inf) get dQ = 0, keys no row sees dK = dV = 0, and whole tiles are skipped in both
    kernels (the last K/V block's dkdv visits none and stores zeros)."""
    problem = Problem(batch=2, heads=1, n_q=40, n_kv=35, head_dim=8)
    mask = masks.document([6, 11]) & masks.Mask(lambda b, h, q, k: (q + k + b) % 3 != 0, name="mod3b")
    schedule = tc_schedule(16, 16)
    assert masks.tile_classes(mask, schedule, problem)[0] > 0
    inputs, grads, build = gradients(schedule, problem, seed=6, mask=mask)
    assert build.name == "fast-tf32x3", build.reason
    check_against_float64(schedule, problem, mask, inputs, grads)
    assert not grads[0][:, :, 17:].any() and not grads[1][:, :, 17:].any() and not grads[2][:, :, 17:].any()


@pytest.mark.parametrize("shape", [
    pytest.param((37, 21, 16, 16, 32, 1, 1, True), id="small"),
    pytest.param((1000, 777, 128, 64, 128, 1, 1, True), id="large", marks=pytest.mark.gpu),
    # dQ by atomics in a fixed order (backward_tc.ORDERED_DQ): 16 heads of 33 K blocks, several blocks an SM
    pytest.param((2100, 2100, 128, 64, 64, 2, 8, False), id="ordered-dq", marks=pytest.mark.gpu),
    pytest.param((2100, 2049, 128, 64, 64, 2, 8, True), id="ordered-dq-causal", marks=pytest.mark.gpu)])
def test_fast_backward_is_bit_identical_across_runs(shape):
    n_q, n_kv, d, br, bc, batch, heads, causal = shape
    problem = Problem(batch=batch, heads=heads, n_q=n_q, n_kv=n_kv, head_dim=d, causal=causal)
    schedule = tc_schedule(br, bc)
    _, _, build = gradients(schedule, problem, seed=9, runs=3)  # (it compares the runs' bytes)
    assert build.name == "fast-tf32x3"
    if d == 128 and br == bc == 64:
        assert backward_tc.atomic_dq(schedule, d, np.float32) and backward_tc.ORDERED_DQ


@pytest.mark.parametrize("shape", [pytest.param((20, 40, 8, 16, 32, 1, None), id="small"),
                                   pytest.param((20, 40, 16, 16, 32, 1, 0), id="small-paired"),
                                   pytest.param((700, 555, 64, 128, 128, 2, None), id="large", marks=pytest.mark.gpu),
                                   pytest.param((700, 555, 128, 64, 64, 2, None), id="large-paired",
                                                marks=pytest.mark.gpu)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_two_stages_give_the_one_stage_gradients(shape, causal, monkeypatch):
    """With fp32 inputs and no mask each kernel copies the next streamed block by cp.async into a
    second stage of SRAM while this one's products run, where two stages fit the schedule
    (``stages``), and above d = 64 each kernel gives each 16 resident rows two warps (``paired``:
    the "paired" cases; at d = 16 by lowering ``PAIRED_ABOVE``); the arithmetic and its order are the one-stage
    kernel's, so the gradients are bit-identical to those of the same blocks under an SRAM that
    holds one stage. dQ comes from the dq kernel in both: dQ added in a fixed order inside dkdv
    (ORDERED_DQ, at d = 128) needs two stages, and sums in an order of its own
    (test_atomic_dq_matches_the_deterministic_gradients)."""
    n_q, n_kv, d, br, bc, heads, paired_above = shape  # (small: two ragged streamed blocks in each kernel)
    monkeypatch.setattr(backward_tc, "ORDERED_DQ", False)
    if paired_above is not None:
        monkeypatch.setattr(backward_tc, "PAIRED_ABOVE", paired_above)
        launch.build.cache_clear()  # (kernels built under the other rule; and again after the test, below)
    two = tc_schedule(br, bc)
    one = dataclasses.replace(two, sram_bytes=smem_bytes(two, d))
    assert [stages(two, d, ph, np.float32) for ph in ("dkdv", "dq")] == [2, 2]
    assert [stages(one, d, ph, np.float32) for ph in ("dkdv", "dq")] == [1, 1]
    assert stages(two, d, "dkdv", np.float16) == stages(two, d, "dq", np.float32, masked=True) == 1
    pair = d > backward_tc.PAIRED_ABOVE
    for phase, resident in (("dkdv", bc), ("dq", br)):
        assert backward_tc.paired(two, d, phase, np.float32) == pair and not backward_tc.paired(one, d, phase, np.float32)
        assert backward_tc.threads(two, phase, d) == (4 if pair else 2) * resident
    problem = Problem(batch=1, heads=heads, n_q=n_q, n_kv=n_kv, head_dim=d, causal=causal)
    q, k, v, dout, out, lse = saved_forward(two, problem, 11)
    runs = []
    try:
        for schedule in (two, one):
            *grads, build = attention_backward(q, k, v, out, lse, dout, schedule=schedule, causal=causal, fast=True,
                                               return_build=True)
            assert build.name == "fast-tf32x3", build.reason
            runs.append(grads)
    finally:
        if paired_above is not None:
            launch.build.cache_clear()
    for name, a, b in zip(("dq", "dk", "dv"), *runs):
        assert a.tobytes() == b.tobytes(), f"{name}: two stages differ from one"
    check_against_float64(two, problem, None, (q, k, v, dout, out, lse), runs[0])


@pytest.mark.parametrize("shape", [pytest.param((37, 33, 16, 16, 16, 1, 0), id="small"),
                                   pytest.param((700, 555, 128, 64, 64, 2, None), id="large", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_atomic_dq_matches_the_deterministic_gradients(shape, causal, monkeypatch):
    """Where the paired dkdv can add dQ by atomics (``atomic_dq``; at d = 16 by lowering
    ``PAIRED_ABOVE``) no dq kernel runs, deterministic (in a fixed order, ``ORDERED_DQ``: non-causal
    with "dq_sum" after dkdv) or not: dK and dV are the dq kernel's build's bit for bit (the same
    products in the same order; non-causal and ordered, each block's walk starts at its own Q block,
    so they hold the float64 gradients instead), and dQ holds the float64 gradient to the tolerance of its sums: each
    atomic adds a tensor-core sum over the block's Bc keys, so dQ's chunk is Bc. (Small: Tr = Tc = 3,
    ragged, so non-causal blocks 1 and 2 start past Q block 0 and add to the second sum.)"""
    n_q, n_kv, d, br, bc, heads, paired_above = shape  # (small: a chunk's 16-row tile of dQ, one a warp)
    if paired_above is not None:
        monkeypatch.setattr(backward_tc, "PAIRED_ABOVE", paired_above)
        launch.build.cache_clear()
    schedule = tc_schedule(br, bc)
    assert backward_tc.atomic_dq(schedule, d, np.float32)
    assert not backward_tc.atomic_dq(schedule, d, np.float32, masked=True)
    assert not backward_tc.atomic_dq(schedule, d, np.float16)
    problem = Problem(batch=1, heads=heads, n_q=n_q, n_kv=n_kv, head_dim=d, causal=causal)
    q, k, v, dout, out, lse = saved_forward(schedule, problem, 13)
    runs = []
    try:
        for ordered, deterministic in ((False, True), (True, True), (True, False)):  # dq kernel, ordered, GPU's order
            monkeypatch.setattr(backward_tc, "ORDERED_DQ", ordered)
            runs.append(attention_backward(q, k, v, out, lse, dout, schedule=schedule, causal=causal, fast=True,
                                           deterministic=deterministic))
        chosen = launch.choose_backward_build(schedule, d, fast=True, dtype=problem.dtype)
        assert launch.atomic_dq_runs(schedule, problem, chosen, None) and launch.ordered_dq_runs(chosen)
        phases = launch.build(schedule, d, "float32", causal, chosen, backward=True, atomic_dq=True)
        assert list(phases) == ["d", "dkdv"]
        phases = launch.build(schedule, d, "float32", causal, chosen, backward=True, atomic_dq=True, ordered_dq=True)
        assert list(phases) == ["d", "dkdv", "dq_sum"]
        with pytest.raises(TypeError, match="deterministic"):
            attention_backward(q, k, v, out, lse, dout, schedule=schedule, causal=causal, deterministic="no")
        with pytest.raises(ValueError, match="dq_kernel=True is the deterministic dQ"):  # (before any array is read)
            launch.run_backward(schedule, problem, *[None] * 6, fast=True, deterministic=False, dq_kernel=True)
    finally:
        if paired_above is not None:
            launch.build.cache_clear()
    refs = reference_attention_backward(q, k, v, dout, causal=causal, scale=problem.scale, out=out, lse=lse)
    atols = gradient_tolerances_tc(q, k, v, dout, refs, causal, problem.scale, problem.dtype, out, lse,
                                   (bc, chunks(schedule, d)[1]))
    for run, way in zip(runs[1:], ("ordered", "GPU-order")):
        assert run[0].any()
        np.testing.assert_allclose(run[0].astype(np.float64), refs[0], rtol=0, atol=atols[0], err_msg=f"dq, {way}")
        # non-causal, an ordered block walks the Q blocks from its own round to it: dK, dV sum in that order
        rotated = way == "ordered" and not causal
        for name, a, b, ref, atol in zip(("dk", "dv"), runs[0][1:], run[1:], refs[1:], atols[1:]):
            if rotated:
                np.testing.assert_allclose(b.astype(np.float64), ref, rtol=0, atol=atol, err_msg=f"{name}, {way}")
            else:
                assert a.tobytes() == b.tobytes(), f"{name}: the {way} atomic-dQ kernel's differs from the dq kernel build's"


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_ordered_dq_with_a_score_mod(causal, monkeypatch):
    """A score_mod leaves the paired dkdv's atomic dQ in place (it is no mask): in the fixed order
    (ORDERED_DQ), each chunk's dSᵀ carries score_mod'(S) into dQ as into dK, and the three gradients
    hold the float64 gradients of the modded scores (d = 16 by lowering ``PAIRED_ABOVE``; Tr = Tc = 3,
    ragged, so the non-causal walk wraps and adds to the second sum)."""
    from sandbox.vocabulary import score_mods

    monkeypatch.setattr(backward_tc, "PAIRED_ABOVE", 0)
    launch.build.cache_clear()
    schedule = tc_schedule(16, 16)
    problem = Problem(batch=1, heads=2, n_q=37, n_kv=33, head_dim=16, causal=causal)
    mod = score_mods.soft_cap(1.5)
    q, k, v = make_inputs(problem, 17)
    dout = np.random.default_rng(18).standard_normal(q.shape).astype(np.float32)
    try:
        out, lse = attention(q, k, v, schedule=schedule, causal=causal, score_mod=mod, return_lse=True)
        chosen = launch.choose_backward_build(schedule, 16, fast=True, dtype=problem.dtype, score_mod=mod)
        assert launch.dq_build(schedule, problem, chosen) == {"atomic_dq": True, "ordered_dq": True}
        *grads, build = attention_backward(q, k, v, out, lse, dout, schedule=schedule, causal=causal, score_mod=mod,
                                           fast=True, return_build=True)
        assert build.name == "fast-tf32x3"
    finally:
        launch.build.cache_clear()
    refs = reference_attention_backward(q, k, v, dout, causal=causal, out=out, lse=lse, score_mod=mod)
    atols = gradient_tolerances_tc(q, k, v, dout, refs, causal, problem.scale, problem.dtype, out, lse,
                                   (16, chunks(schedule, 16)[1]), score_mod=mod)
    for name, g, ref, atol in zip(("dq", "dk", "dv"), grads, refs, atols):
        assert g.any()
        np.testing.assert_allclose(g.astype(np.float64), ref, rtol=0, atol=atol, err_msg=name)


def _ordered_runs(n_q, n_kv, block_q, block_kv, causal, in_step):
    """Run the blocks of one head by :data:`backward_tc.ORDERED_DQ`'s order, by its own functions:
    ``in_step`` False, one block at a time in ticket order (the CUDA simulator's way, and the fewest
    SMs there can be); True, every block at once, a tile a step, a block that finds its turn not yet
    come waiting a step. Returns ({(chain, Q block): blocks in the order they added}, steps waited),
    after asserting that a block run alone always finds its turn (a wait there never ends)."""
    n_kb = -(-n_kv // block_kv)
    walks = {}
    for jb in range(n_kb - 1, -1, -1):  # ticket order: the last K block first
        first, end = backward_tc.ordered_walk(jb, n_q, block_q, block_kv, causal)
        n_qb = -(-n_q // block_q)
        walks[jb] = [(i % n_qb, *backward_tc.ordered_turn(jb, i % n_qb, first, n_kb, n_q, block_q, block_kv, causal))
                     for i in range(first, end)]
    added, waited = {}, 0
    if not in_step:
        for jb, walk in walks.items():
            for iq, chain, ahead in walk:
                line = added.setdefault((chain, iq), [])
                assert len(line) == ahead, f"block {jb} at Q block {iq} would wait for ever"
                line.append(jb)
        return added, waited
    at = {jb: 0 for jb in walks}
    while any(at[jb] < len(walk) for jb, walk in walks.items()):
        done = []
        for jb, walk in walks.items():
            if at[jb] < len(walk):
                iq, chain, ahead = walk[at[jb]]
                if len(added.get((chain, iq), [])) == ahead:
                    done.append((jb, chain, iq))
                else:
                    waited += 1
        assert done, "every block waits"
        for jb, chain, iq in done:  # (counted done at the step's end)
            added.setdefault((chain, iq), []).append(jb)
            at[jb] += 1
    return added, waited


@pytest.mark.parametrize("n_q, n_kv, block_q, block_kv", [
    (256, 256, 64, 64), (4096, 4096, 64, 64), (200, 330, 64, 64), (330, 200, 64, 64), (37, 33, 16, 16),
    (256, 512, 128, 64), (512, 256, 64, 128), (100, 700, 32, 64), (1, 1, 16, 16), (700, 555, 64, 64)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_ordered_dq_order(n_q, n_kv, block_q, block_kv, causal):
    """backward_tc.ORDERED_DQ's order, by the kernel's own functions (ordered_walk, ordered_turn):
    blocks run one at a time in ticket order each find their turn at every tile (no wait can
    deadlock, on any number of SMs); each Q block is added to by exactly the blocks that see it
    (causal: whose first key is at most its last query), once each, every chain from its last block
    down, and the same order in step; with square blocks over equal lengths no block waits in step."""
    alone, _ = _ordered_runs(n_q, n_kv, block_q, block_kv, causal, in_step=False)
    together, waited = _ordered_runs(n_q, n_kv, block_q, block_kv, causal, in_step=True)
    assert together == alone
    n_qb, n_kb = -(-n_q // block_q), -(-n_kv // block_kv)
    for iq in range(n_qb):
        last_query = min(n_q, (iq + 1) * block_q) - 1
        sees = [jb for jb in range(n_kb) if not causal or jb * block_kv <= last_query]
        chains = [alone.get((chain, iq), []) for chain in (0, 1)]
        assert sorted(chains[0] + chains[1]) == sees
        assert all(line == sorted(line, reverse=True) for line in chains)
        assert not causal or not chains[1]
    if block_q == block_kv and n_q == n_kv:
        assert waited == 0


@pytest.mark.parametrize("blocks, n_q, n_kv", [((16, 64), 20, 70), ((48, 48), 50, 13)],
                         ids=["two key chunks, keys past every query", "three chunks of 16"])
def test_fast_backward_over_several_chunks(blocks, n_q, n_kv):
    """Streamed blocks of more than one chunk (dq: Bc = 64 in two chunks of 32; Br = Bc = 48 in three
    of 16), causal, with K/V blocks no query sees (Nk > Nq + Bc: dkdv stores zeros there)."""
    problem = Problem(batch=1, heads=1, n_q=n_q, n_kv=n_kv, head_dim=8, causal=True)
    schedule = tc_schedule(*blocks)
    inputs, grads, build = gradients(schedule, problem, seed=6)
    assert build.name == "fast-tf32x3"
    check_against_float64(schedule, problem, None, inputs, grads)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fast_backward_where_each_row_sees_one_key(dtype):
    """Nq = Nk = 1: dQ and dK are 0 in exact arithmetic (dP = D; exactly 0 in the reference where O = V
    held in fp16), and the kernel's dP (tensor cores) and D (FMAs, in order) cancel to a few
    rounding units, which the tolerance's in-order D accounts for."""
    problem = Problem(batch=1, heads=2, n_q=1, n_kv=1, head_dim=64, dtype=dtype)
    schedule = tc_schedule(16, 16)
    inputs, grads, build = gradients(schedule, problem, seed=0)
    assert build.name == "fast-tf32x3"
    if dtype == "float16":
        q, k, v, dout, out, lse = inputs
        refs = reference_attention_backward(q, k, v, dout, scale=problem.scale, out=out, lse=lse)
        assert not refs[0].any() and not refs[1].any()
    check_against_float64(schedule, problem, None, inputs, grads)


def test_fast_backward_agrees_with_the_plain_backward_of_its_schedule():
    problem = Problem(batch=1, heads=2, n_q=24, n_kv=40, head_dim=8, causal=True)
    schedule = tc_schedule(16, 32)
    (q, k, v, dout, out, lse), fast, build = gradients(schedule, problem, seed=4)
    _, plain, plain_build = gradients(schedule, problem, seed=4, fast=None)
    assert (build.name, plain_build.name) == ("fast-tf32x3", "plain")
    refs = reference_attention_backward(q, k, v, dout, causal=True, scale=problem.scale, out=out, lse=lse)
    for f, p, ref in zip(fast, plain, refs):
        scale = np.abs(ref).max()
        assert np.abs(f - p).max() <= 1e-5 * scale  # both fp32-accurate (the tolerances above)
        assert not np.array_equal(f, p)  # and not the same arithmetic: the fast one ran


def test_the_fast_backward_is_opt_in():
    problem = Problem(batch=1, heads=1, n_q=16, n_kv=16, head_dim=8)
    _, _, build = gradients(tc_schedule(16, 16), problem, seed=1, fast=None)
    assert (build.name, build.reason) == ("plain", BACKWARD_OPT_IN)


@pytest.mark.parametrize("case, why", [
    ("nan dout", "dout holds NaN or inf"),
    ("inf out", "out holds NaN or inf"),
    ("blocks", "needs both multiples of 16"),
    ("threads", "1056 threads, over CUDA's 1024 per block"),
    ("sram", "3204 bytes of SRAM at d=8, the schedule.s sram_bytes=3000"),
    ("fma", "has no fast backward for math='fma'"),
])
def test_fast_true_says_why_the_fast_backward_cannot_run(case, why):
    """Refused before any launch, with the reason (the saved forward is the float64 reference's: no
    forward kernel runs either)."""
    problem = Problem(batch=1, heads=1, n_q=16, n_kv=16, head_dim=8)
    q, k, v = make_inputs(problem, 1)
    out, lse = (x.astype(np.float32) for x in reference_attention(q, k, v, return_lse=True))
    dout = np.ones_like(q)
    schedule = tc_schedule(16, 16)
    if case == "nan dout":
        dout = np.full((1, 1, 16, 8), np.nan, np.float32)
    elif case == "inf out":
        out = np.full((1, 1, 16, 8), np.inf, np.float32)
    elif case == "blocks":
        schedule = tc_schedule(16, 8)
    elif case == "threads":
        schedule = tc_schedule(16, 528)
    elif case == "sram":
        schedule = tc_schedule(16, 16, sram_bytes=3000)
    else:
        schedule = Schedule("flash2", block_q=16, block_kv=16)
    with pytest.raises(ValueError, match=why):
        attention_backward(q, k, v, out, lse, dout, schedule=schedule, fast=True)
