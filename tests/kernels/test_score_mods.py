"""score_mods in the kernels: outputs and gradients against the float64 reference, counters against the simulator.

One ScoreMod feeds all three: the kernels compile it (and its derivative) as device functions,
the reference and the simulator evaluate it on the CPU. Every kind that takes a score_mod, forward
and (where it has one) backward, every dtype, causal or not, with and without a mask, over the
built-ins and a plain function of (score, b, h, q_idx, kv_idx) with its grad.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.builds import SCORE_MOD_REFUSAL, choose_build
from sandbox import Problem, Schedule, masks, reference_attention, reference_attention_backward, score_mods
from sandbox import attention, attention_backward, simulate
from sandbox.vocabulary import kinds
from tests.strategies import BACKWARD_KINDS, SIMULATED, make_inputs, magnitudes, problems, schedules, seeds
from kernels.backward_tc import chunks
from tests.tolerances import gradient_tolerances, gradient_tolerances_tc, tolerances

KINDS = tuple(k for k in kinds.with_trait("score_mods"))
MOD_BACKWARD_KINDS = tuple(k for k in BACKWARD_KINDS if k in KINDS)


def _user_mod(period, weight):
    """A plain function of every argument, with its derivative."""

    def tilt(score, b, h, q_idx, kv_idx):
        return weight * score + 0.25 * ((q_idx + 2 * kv_idx + h + b) % period)

    def tilt_grad(score, b, h, q_idx, kv_idx):
        return weight

    return score_mods.ScoreMod(tilt, name=f"tilt{period}", grad=tilt_grad)


@st.composite
def score_mod_for(draw, problem):
    kind = draw(st.sampled_from(["softcap", "alibi", "relbias", "relbias_heads", "user"]))
    if kind == "softcap":
        return score_mods.soft_cap(draw(st.sampled_from([0.5, 2.0, 30.0])))
    if kind == "alibi":
        rng = np.random.default_rng(draw(seeds))
        slopes = score_mods.alibi_slopes(problem.heads) if draw(st.booleans()) else rng.uniform(-1, 1, problem.heads)
        return score_mods.alibi(slopes)
    if kind in ("relbias", "relbias_heads"):
        radius = draw(st.integers(0, 6))
        shape = (problem.heads, 2 * radius + 1) if kind == "relbias_heads" else (2 * radius + 1,)
        return score_mods.relative_bias(np.random.default_rng(draw(seeds)).standard_normal(shape))
    return _user_mod(draw(st.integers(2, 5)), draw(st.sampled_from([0.5, 1.0, 1.5])))


@st.composite
def mask_or_none(draw, problem):
    n = max(problem.n_q, problem.n_kv)
    kind = draw(st.sampled_from(["none", "window", "document"]))
    if kind == "window":
        return masks.sliding_window(draw(st.integers(0, max(1, n // 3))))
    if kind == "document":
        return masks.document(draw(st.lists(st.integers(1, max(1, n // 2)), min_size=1, max_size=4)))
    return None


def _allowed(mask, problem):
    return None if mask is None else masks.dense(mask, problem.batch, problem.heads, problem.n_q, problem.n_kv)


def check_forward(schedule, problem, score_mod, mask, seed, magnitude=1.0):
    q, k, v = make_inputs(problem, seed, magnitude)
    kw = dict(schedule=schedule, causal=problem.causal, scale=problem.scale, mask=mask, score_mod=score_mod,
              return_lse=True)
    out, lse, measured = attention(q, k, v, count_io=True, **kw)
    ref_out, ref_lse = reference_attention(q, k, v, causal=problem.causal, scale=problem.scale, return_lse=True,
                                           mask=mask, score_mod=score_mod)
    empty = ~np.isfinite(ref_lse)  # rows that see no key: O = 0 and L = -inf, exactly
    assert (lse[empty] == -np.inf).all() and (out[empty] == 0).all()
    o_stores = 1 if schedule.kind != "flash1" else -(-problem.n_kv // schedule.block_kv) + 1
    atol_out, atol_lse = tolerances(q, k, v, ref_out, ref_lse, problem.causal, problem.scale, problem.dtype, o_stores,
                                    allowed=_allowed(mask, problem), score_mod=score_mod)
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(lse[~empty], ref_lse[~empty], rtol=0, atol=atol_lse)
    modelled = simulate(schedule, problem, mask=mask, score_mod=score_mod)
    assert measured == modelled, f"{schedule.describe()} {problem} {score_mod} {mask}: {measured.diff(modelled)}"
    if not SIMULATED:  # the plain build (counters compiled away) holds to the same tolerance (as in
        # tests/kernels/test_head_dim_v.py: the two builds may fuse multiply-adds differently)
        plain_out, plain_lse = attention(q, k, v, **kw)
        np.testing.assert_allclose(plain_out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
        np.testing.assert_allclose(plain_lse[~empty], ref_lse[~empty], rtol=0, atol=atol_lse)


def check_backward(schedule, problem, score_mod, mask, seed):
    """Gradients with ``score_mod`` against the float64 gradients of the same saved forward, and the
    backward's counters against the simulator's."""
    q, k, v = make_inputs(problem, seed)
    dout = np.random.default_rng(seed + 1).standard_normal(q.shape).astype(problem.dtype)
    kw = dict(schedule=schedule, causal=problem.causal, scale=problem.scale, mask=mask, score_mod=score_mod)
    out, lse = attention(q, k, v, return_lse=True, **kw)
    *grads, measured = attention_backward(q, k, v, out, lse, dout, count_io=True, **kw)
    refs = reference_attention_backward(q, k, v, dout, causal=problem.causal, scale=problem.scale, out=out, lse=lse,
                                        mask=mask, score_mod=score_mod)
    atols = gradient_tolerances(q, k, v, dout, refs, problem.causal, problem.scale, problem.dtype, out, lse,
                                allowed=_allowed(mask, problem), score_mod=score_mod)
    for name, g, ref, atol in zip(("dq", "dk", "dv"), grads, refs, atols):
        assert np.isfinite(g.astype(np.float64)).all(), name
        np.testing.assert_allclose(g.astype(np.float64), ref, rtol=0, atol=atol, err_msg=name)
    modelled = simulate(schedule, problem, mask=mask, score_mod=score_mod, backward=True)
    assert measured == modelled, f"{schedule.describe()} {problem} {score_mod} {mask}: {measured.diff(modelled)}"
    again = attention_backward(q, k, v, out, lse, dout, **kw)  # deterministic: bit for bit
    for a, b in zip(grads, again):
        np.testing.assert_array_equal(a, b)


SIZES = [pytest.param(dict(max_n=16, max_d=8), id="small"),
         pytest.param(dict(max_n=600, max_d=128), id="large", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=5 if SIMULATED else 6)
@given(data=st.data(), seed=seeds, magnitude=magnitudes)
def test_score_mod_forward_matches_reference_and_simulator(kind, size, data, seed, magnitude):
    """Every kind, every dtype, causal or not, ragged Nq != Nk, with or without a mask."""
    problem = data.draw(problems(**size))
    check_forward(data.draw(schedules(kinds=(kind,))), problem, data.draw(score_mod_for(problem)),
                  data.draw(mask_or_none(problem)), seed, magnitude)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", MOD_BACKWARD_KINDS)
@settings(max_examples=4 if SIMULATED else 6)
@given(data=st.data(), seed=seeds)
def test_score_mod_backward_matches_reference_and_simulator(kind, size, data, seed):
    """Every kind with a backward, every dtype, causal or not, with or without a mask: dS carries the
    score_mod's derivative, and the captured arrays (and, standard, score_mod'(S)) are counted."""
    problem = data.draw(problems(**size))
    check_backward(data.draw(schedules(kinds=(kind,))), problem, data.draw(score_mod_for(problem)),
                   data.draw(mask_or_none(problem)), seed)


@pytest.mark.parametrize("kind", KINDS)
def test_every_builtin_with_causal_and_a_mask(kind):
    """Each built-in on one small problem with causal and a document mask (empty tiles and rows):
    outputs, lse and counts; the captured arrays are read once per visited tile."""
    problem = Problem(batch=1, heads=2, n_q=11, n_kv=13, head_dim=4, causal=True)
    schedule = Schedule(kind, block_q=4, block_kv=4, thread_q=2, thread_kv=2,
                        **({"kv_splits": 2} if kinds.get(kind).kv_splits else {}))
    mask = masks.document([5, 3])
    for mod in (score_mods.soft_cap(1.5), score_mods.alibi(score_mods.alibi_slopes(2)),
                score_mods.relative_bias(np.arange(-3.0, 4.0) / 4)):
        check_forward(schedule, problem, mod, mask, seed=3)
    bias = score_mods.relative_bias(np.zeros(5))
    assert bias.captured_words() == 5
    visited = masks.tile_classes(mask, schedule, problem)
    tiles = visited[1] + visited[2]  # partial and full tiles: the visited ones
    assert simulate(schedule, problem, mask=mask, score_mod=bias).hbm_reads["mod"] == 5 * tiles


@pytest.mark.parametrize("kind", MOD_BACKWARD_KINDS)
def test_every_builtin_backward_with_causal_and_a_mask(kind):
    problem = Problem(batch=1, heads=2, n_q=11, n_kv=9, head_dim=4, causal=True)
    schedule = Schedule(kind, block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    for mod in (score_mods.soft_cap(1.5), score_mods.alibi(score_mods.alibi_slopes(2)),
                score_mods.relative_bias(np.arange(-3.0, 4.0) / 4)):
        check_backward(schedule, problem, mod, masks.sliding_window(3), seed=5)


def test_an_identity_score_mod_changes_nothing_but_the_count():
    """score_mod = score: the same outputs bit for bit; no captured array, so the same counts."""
    problem = Problem(batch=1, heads=1, n_q=9, n_kv=7, head_dim=4)
    q, k, v = make_inputs(problem, 1)
    s = Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    ident = score_mods.ScoreMod(lambda score, b, h, q_idx, kv_idx: score, name="ident",
                                grad=lambda score, b, h, q_idx, kv_idx: 1.0)
    plain, plain_report = attention(q, k, v, schedule=s, count_io=True)
    modded, modded_report = attention(q, k, v, schedule=s, count_io=True, score_mod=ident)
    np.testing.assert_array_equal(plain, modded)
    assert plain_report == modded_report


FORWARD_FAST_CASES = [pytest.param(("fma", 16, 16, 19, 21, 16, "float32", True), id="fma-causal"),
                      pytest.param(("fma", 16, 32, 23, 37, 16, "bfloat16", False), id="fma-bf16"),
                      pytest.param(("f16", 16, 16, 19, 21, 16, "float16", True), id="f16-causal"),
                      pytest.param(("f16", 32, 16, 37, 45, 16, "bfloat16", False), id="f16-bf16"),
                      pytest.param(("fma", 64, 64, 301, 333, 64, "float32", True), id="fma-gpu",
                                   marks=pytest.mark.gpu),
                      pytest.param(("f16", 128, 64, 301, 333, 128, "float16", True), id="f16-gpu",
                                   marks=pytest.mark.gpu)]


@pytest.mark.parametrize("case", FORWARD_FAST_CASES)
def test_the_other_fast_forwards_apply_a_score_mod(case):
    """flash2's FMA build (math="fma") and 16-bit tensor-core build (math="f16") take a score_mod
    (fast=True runs them) and stay within their tolerances of the float64 reference: the FMA
    build's is the fp32 one, the 16-bit build's adds P's rounding (tests/tolerances.py)."""
    from kernels.flash2_tc16 import tc16_schedule
    from tests.tolerances import tolerances_tc16

    math_, br, bc, n_q, n_kv, d, dtype, causal = case
    schedule = (tc16_schedule(br, bc) if math_ == "f16"
                else Schedule("flash2", block_q=br, block_kv=bc, thread_q=2, thread_kv=2))
    problem = Problem(1, 2, n_q, n_kv, d, dtype=dtype, causal=causal)
    q, k, v = make_inputs(problem, seed=n_q + d)
    check = tolerances_tc16 if math_ == "f16" else tolerances
    for mod in (score_mods.soft_cap(1.5), score_mods.alibi(score_mods.alibi_slopes(2)),
                score_mods.relative_bias(np.arange(-3.0, 4.0) / 4), _user_mod(3, 1.5)):
        out, lse, chosen = attention(q, k, v, schedule=schedule, causal=causal, score_mod=mod, return_lse=True,
                                     fast=True, return_build=True)
        assert chosen.name == f"fast-{math_}"
        ref_out, ref_lse = reference_attention(q, k, v, causal=causal, return_lse=True, score_mod=mod)
        atol_out, atol_lse = check(q, k, v, ref_out, ref_lse, causal, problem.scale, problem.dtype, score_mod=mod)
        np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out, err_msg=mod.name)
        np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=atol_lse, err_msg=mod.name)


def test_a_fast_build_without_a_score_mod_is_refused(monkeypatch):
    """A fast build whose module does not say TAKES_SCORE_MOD (a kind's own, registered by a user)
    applies none: the chooser runs the plain build and says why; fast=True raises it."""
    from kernels import flash2_fast

    s = Schedule("flash2", block_q=16, block_kv=16, thread_q=1, thread_kv=1)
    mod = score_mods.soft_cap(5.0)
    monkeypatch.setattr(flash2_fast, "TAKES_SCORE_MOD", False)
    chosen = choose_build(s, 16, score_mod=mod, fast=None)
    assert not chosen.fast and chosen.reason == SCORE_MOD_REFUSAL
    assert choose_build(s, 16, fast=None).name == "fast-fma"
    with pytest.raises(ValueError, match="score_mod"):
        choose_build(s, 16, score_mod=mod, fast=True)


def test_backward_refuses_a_score_mod_without_grad():
    problem = Problem(batch=1, heads=1, n_q=4, n_kv=4, head_dim=4)
    q, k, v = make_inputs(problem, 0)
    s = Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    mod = lambda score, b, h, q_idx, kv_idx: 2.0 * score  # noqa: E731
    out, lse = attention(q, k, v, schedule=s, score_mod=mod, return_lse=True)
    with pytest.raises(TypeError, match="grad="):
        attention_backward(q, k, v, out, lse, q, schedule=s, score_mod=mod)


@pytest.mark.parametrize("kind", MOD_BACKWARD_KINDS)
def test_grouped_heads_pass_the_query_head(kind):
    """Grouped K/V heads: the score_mod sees the query head h (ALiBi's slope per query head)."""
    problem = Problem(batch=1, heads=4, heads_kv=2, n_q=7, n_kv=9, head_dim=4, causal=True)
    schedule = Schedule(kind, block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    mod = score_mods.alibi(score_mods.alibi_slopes(4))
    check_forward(schedule, problem, mod, None, seed=7)
    check_backward(schedule, problem, mod, None, seed=8)


@pytest.mark.parametrize("kind", KINDS)
def test_a_score_mod_may_exclude_entries_with_minus_inf(kind):
    """score_mod = -inf removes an entry as a mask does, even every entry of a row (O = 0, L = -inf,
    no gradient): forward and backward agree with the reference, and the counts with the simulator."""
    problem = Problem(batch=1, heads=2, n_q=9, n_kv=7, head_dim=4)
    schedule = Schedule(kind, block_q=4, block_kv=4, thread_q=2, thread_kv=2,
                        **({"kv_splits": 2} if kinds.get(kind).kv_splits else {}))

    def drop(score, b, h, q_idx, kv_idx):
        if q_idx == 4 or (q_idx + kv_idx + h) % 3 == 0:
            return -np.inf
        return score

    mod = score_mods.ScoreMod(drop, name="drop", grad=lambda score, b, h, q_idx, kv_idx: 1.0)
    check_forward(schedule, problem, mod, None, seed=9)
    if kind in MOD_BACKWARD_KINDS:
        check_backward(schedule, problem, mod, None, seed=10)


TC_CASES = [pytest.param((16, 16, 19, 21, 16, "float32", True), id="1warp-causal"),
            pytest.param((32, 16, 37, 21, 16, "bfloat16", False), id="2warps-bf16"),
            pytest.param((128, 64, 301, 333, 128, "float32", True), id="gpu-causal", marks=pytest.mark.gpu),
            pytest.param((64, 16, 301, 333, 64, "bfloat16", False), id="gpu-bf16", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("case", TC_CASES)
def test_the_tensor_core_forward_applies_a_score_mod(case):
    """flash2's tensor-core build (math="tf32x3") takes a score_mod: it runs (fast=True), applies it
    to S, and stays within the fp32 tolerance of the float64 reference; so does its fast backward."""
    from kernels.flash2_tc import tc_schedule

    br, bc, n_q, n_kv, d, dtype, causal = case
    schedule = tc_schedule(br, bc)
    problem = Problem(1, 2, n_q, n_kv, d, dtype=dtype, causal=causal)
    q, k, v = make_inputs(problem, seed=n_q)
    for mod in (score_mods.soft_cap(1.5), score_mods.alibi(score_mods.alibi_slopes(2)),
                score_mods.relative_bias(np.arange(-3.0, 4.0) / 4)):
        out, lse, chosen = attention(q, k, v, schedule=schedule, causal=causal, score_mod=mod, return_lse=True,
                                     fast=True, return_build=True)
        assert chosen.name == "fast-tf32x3"
        ref_out, ref_lse = reference_attention(q, k, v, causal=causal, return_lse=True, score_mod=mod)
        atol_out, atol_lse = tolerances(q, k, v, ref_out, ref_lse, causal, problem.scale, problem.dtype,
                                        score_mod=mod)
        np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
        np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=atol_lse)
        dout = np.random.default_rng(n_kv).standard_normal(q.shape).astype(dtype)
        *grads, chosen = attention_backward(q, k, v, out, lse, dout, schedule=schedule, causal=causal, score_mod=mod,
                                            fast=True, return_build=True)
        assert chosen.name == "fast-tf32x3"
        refs = reference_attention_backward(q, k, v, dout, causal=causal, out=out, lse=lse, score_mod=mod)
        atols = gradient_tolerances_tc(q, k, v, dout, refs, causal, problem.scale, dtype, out, lse,
                                       chunks(schedule, q.shape[3]), score_mod=mod)
        for name, g, ref, atol in zip(("dq", "dk", "dv"), grads, refs, atols):
            np.testing.assert_allclose(g.astype(np.float64), ref, rtol=0, atol=atol, err_msg=name)
