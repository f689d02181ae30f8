"""The kernels against the float64 NumPy reference: hypothesis properties and fixed regressions.

Under Numba's CUDA simulator (CI) shapes are small (tests/strategies.py); with a GPU the
same properties run on larger ones, and the ``gpu`` tests add long sequences.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox import Problem, Schedule, reference_attention
from sandbox import attention
from tests.strategies import KINDS, SIMULATED, magnitudes, make_inputs, problems, schedules, seeds
from tests.tolerances import tolerances



def o_stores(schedule, problem):
    """How often each row of O is rounded to the output dtype: once, or per visited K/V block for flash1."""
    if schedule.kind != "flash1":
        return 1
    return -(-problem.n_kv // schedule.block_kv) + 1


def check_against_reference(schedule, problem, q, k, v):
    out, lse = attention(q, k, v, schedule=schedule, causal=problem.causal, scale=problem.scale, return_lse=True)
    assert out.dtype == problem.dtype and out.shape == q.shape and lse.shape == q.shape[:3]
    ref_out, ref_lse = reference_attention(q, k, v, causal=problem.causal, scale=problem.scale, return_lse=True)
    atol_out, atol_lse = tolerances(
        q, k, v, ref_out, ref_lse, problem.causal, problem.scale, problem.dtype, o_stores(schedule, problem)
    )
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=atol_lse)
    return out, lse


# "small" runs everywhere (under the simulator in CI); "large" needs a GPU: sequences up to 600
# and head dims up to 256.
SIZES = [pytest.param(dict(max_n=24, max_d=20), id="small"), pytest.param(dict(max_n=600, max_d=256), id="large", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=4 if SIMULATED else 6)
@given(data=st.data(), seed=seeds, magnitude=magnitudes)
def test_matches_reference(kind, causal, dtype, size, data, seed, magnitude):
    problem = data.draw(problems(dtypes=(dtype,), **size).map(lambda p: Problem(**{**p.__dict__, "causal": causal})))
    schedule = data.draw(schedules(kinds=(kind,)))
    check_against_reference(schedule, problem, *make_inputs(problem, seed, magnitude))


REGRESSIONS = {
    "single query": dict(n_q=1, n_kv=9),
    "single key": dict(n_q=9, n_kv=1),
    "Nq > Nk": dict(n_q=13, n_kv=5),
    "Nq < Nk": dict(n_q=5, n_kv=13),
}


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", REGRESSIONS.values(), ids=REGRESSIONS.keys())
def test_fixed_shapes(shape, kind, causal):
    problem = Problem(batch=1, heads=2, head_dim=6, causal=causal, **shape)
    schedule = Schedule(kind, block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    check_against_reference(schedule, problem, *make_inputs(problem, seed=7))


@pytest.mark.parametrize("kind", KINDS)
def test_logits_near_80_do_not_overflow(kind):
    # logits of ±80 and more: exp(80) is 5.5e34, exp(89) overflows fp32. Online softmax must
    # subtract the running max before exponentiating.
    problem = Problem(batch=1, heads=1, n_q=10, n_kv=11, head_dim=8, causal=False)
    q, k, v = make_inputs(problem, seed=3, magnitude=80.0)
    s = problem.scale * np.einsum("bhid,bhjd->bhij", q.astype(float), k.astype(float))
    assert np.abs(s).max() > 80
    out, lse = check_against_reference(Schedule(kind, block_q=4, block_kv=4), problem, q, k, v)
    assert np.isfinite(out).all() and np.isfinite(lse).all()


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_error_is_far_below_1e4_of_the_value_scale(kind):
    problem = Problem(batch=2, heads=1, n_q=17, n_kv=15, head_dim=12, causal=True)
    q, k, v = make_inputs(problem, seed=11)
    out = attention(q, k, v, schedule=Schedule(kind, block_q=8, block_kv=4), causal=True)
    ref = reference_attention(q, k, v, causal=True)
    assert np.abs(out - ref).max() < 1e-6 * np.abs(v).max()


@pytest.mark.parametrize("kind", KINDS)
def test_nan_propagates(kind):
    problem = Problem(batch=1, heads=1, n_q=6, n_kv=7, head_dim=4)
    q, k, v = make_inputs(problem, seed=1)
    k[0, 0, 5, 2] = np.nan  # every row sees key 5 (non-causal)
    q[0, 0, 1, 0] = np.nan  # row 1 sees NaN in every logit
    out, lse = attention(q, k, v, schedule=Schedule(kind, block_q=4, block_kv=4), return_lse=True)
    assert np.isnan(out).all() and np.isnan(lse).all()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_output_element_is_written(kind, causal, monkeypatch):
    """Output buffers are poisoned with NaN before the call: any element left unwritten shows."""
    import kernels.launch as launch
    from numba import cuda

    def poisoned(shape, dtype, what):
        return cuda.to_device(np.full(shape, np.nan, dtype=dtype))

    monkeypatch.setattr(launch, "device_empty", poisoned)
    problem = Problem(batch=2, heads=1, n_q=11, n_kv=9, head_dim=5, causal=causal)
    out, lse = check_against_reference(
        Schedule(kind, block_q=4, block_kv=8, thread_q=2, thread_kv=4), problem, *make_inputs(problem, 5)
    )
    assert np.isfinite(out).all() and np.isfinite(lse).all()


def test_a_repeated_call_reuses_its_plan(monkeypatch):
    """kernels/launch.py's plan cache: a repeated forward call (no mask, score_mod or counters) reuses
    its build and kernels without choosing again; another problem, a mask or counting chooses anew,
    the oldest plan goes first past MAX_PLANS, and a refused call is never cached."""
    import kernels.launch as launch
    from sandbox.vocabulary.masks import causal as causal_mask

    problem = Problem(batch=1, heads=1, n_q=9, n_kv=7, head_dim=8)
    schedule = Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    q, k, v = launch.to_device(list(make_inputs(problem, 2)), "qkv")
    first = launch.run(schedule, problem, q, k, v)
    assert launch._PLANS[(schedule, problem, None)][0] == first[3]
    chosen = []
    real = launch.choose_build
    monkeypatch.setattr(launch, "choose_build", lambda *a, **kw: chosen.append(kw) or real(*a, **kw))
    again = launch.run(schedule, problem, q, k, v)
    assert chosen == [] and again[3] == first[3]
    np.testing.assert_array_equal(again[0].copy_to_host(), first[0].copy_to_host())
    other = Problem(batch=1, heads=1, n_q=9, n_kv=7, head_dim=8, causal=True)
    launch.run(schedule, other, q, k, v)
    launch.run(schedule, problem, q, k, v, mask=causal_mask())
    launch.run(schedule, problem, q, k, v, count_io=True)
    assert len(chosen) == 3 and (schedule, other, None) in launch._PLANS
    monkeypatch.setattr(launch, "MAX_PLANS", 1)  # the oldest plan goes first
    launch.run(schedule, problem, q, k, v, fast=False)
    assert list(launch._PLANS) == [(schedule, problem, False)]
    wide = Problem(batch=1, heads=70000, n_q=1, n_kv=1, head_dim=8)  # B·H over a grid's 65,535
    x = launch.to_device([np.zeros((1, 70000, 1, 8), np.float32)], "q")[0]
    for _ in range(2):
        with pytest.raises(ValueError, match="over CUDA's limit"):
            launch.run(schedule, wide, x, x, x)
    assert (schedule, wide, None) not in launch._PLANS


def test_oversized_schedule_is_refused_before_launch():
    problem = Problem(batch=1, heads=1, n_q=4, n_kv=4, head_dim=64)
    q, k, v = make_inputs(problem, 0)
    schedule = Schedule("flash2", block_q=16, block_kv=16, sram_bytes=8 * 1024)
    with pytest.raises(ValueError, match=r"needs \d+ bytes of SRAM at head_dim=64, float32, .* sram_bytes=8192"):
        attention(q, k, v, schedule=schedule)


def test_head_dim_over_256_is_refused():
    x = np.zeros((1, 1, 2, 257), np.float32)
    with pytest.raises(ValueError, match="head_dim=257 exceeds the largest supported head_dim"):
        attention(x, x, x, schedule=Schedule("flash2", block_q=1, block_kv=1, sram_bytes=2**22))


def test_bad_schedule_argument():
    x = np.zeros((1, 1, 2, 4), np.float32)
    with pytest.raises(TypeError, match="schedule: expected a sandbox.Schedule"):
        attention(x, x, x, schedule="flash2")


def test_return_conventions():
    problem = Problem(batch=1, heads=1, n_q=3, n_kv=3, head_dim=2)
    q, k, v = make_inputs(problem, 0)
    s = Schedule("flash2", block_q=2, block_kv=2)
    out = attention(q, k, v, schedule=s)
    assert isinstance(out, np.ndarray)
    out2, lse = attention(q, k, v, schedule=s, return_lse=True)
    out3, lse3, report = attention(q, k, v, schedule=s, return_lse=True, count_io=True)
    out4, report4 = attention(q, k, v, schedule=s, count_io=True)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(out3, out4)
    # out, lse: flash2's fast build; out3, lse3: its counting build (count_io), which rounds
    # differently (the fast build pre-scales Q): the same values to fp32 rounding
    np.testing.assert_allclose(out, out3, rtol=0, atol=1e-6 * np.abs(v).max())
    np.testing.assert_allclose(lse, lse3, rtol=0, atol=1e-6 * max(1.0, np.abs(lse3).max()))
    assert report == report4 and report.hbm_reads["Q"] == 6
