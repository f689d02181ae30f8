"""The simulator's counts equal the kernels' own counters, count for count and level for level."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox import Problem, Schedule
from sandbox import attention, simulate
from tests.strategies import BACKWARD_KINDS, KINDS, SIMULATED, grouped_problems, make_inputs, problems, schedules



def assert_agree(schedule, problem):
    q, k, v = make_inputs(problem, seed=0)
    _, measured = attention(q, k, v, schedule=schedule, causal=problem.causal, scale=problem.scale, count_io=True)
    modelled = simulate(schedule, problem)
    assert measured == modelled, f"{schedule.describe()} {problem}: (field, tensor, measured, simulated) {measured.diff(modelled)}"
    assert measured.hbm_bytes == modelled.hbm_bytes and measured.sram_bytes == modelled.sram_bytes


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=6 if SIMULATED else 10)
@given(data=st.data())
def test_simulator_equals_kernel_counters(kind, data):
    assert_agree(data.draw(schedules(kinds=(kind,))), data.draw(problems()))


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", KINDS)
def test_agreement_at_gpu_sizes(kind, dtype, causal):
    for n_q, n_kv, d, br, bc, tq, tk in [(1000, 1500, 128, 64, 32, 4, 2), (777, 333, 80, 48, 40, 3, 5)]:
        problem = Problem(batch=2, heads=3, n_q=n_q, n_kv=n_kv, head_dim=d, dtype=dtype, causal=causal)
        assert_agree(Schedule(kind, block_q=br, block_kv=bc, thread_q=tq, thread_kv=tk), problem)


@pytest.mark.parametrize("kind", BACKWARD_KINDS)
@settings(max_examples=4 if SIMULATED else 10)
@given(data=st.data())
def test_backward_simulator_equals_kernel_counters(kind, data):
    assert_agree_backward(data.draw(schedules(kinds=(kind,))), data.draw(problems(max_n=16, max_d=10)))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=3 if SIMULATED else 10)
@given(data=st.data())
def test_grouped_simulator_equals_kernel_counters(kind, data):
    """Grouped K/V heads (H_kv < H): each query head's blocks read its K/V head's tiles."""
    assert_agree(data.draw(schedules(kinds=(kind,))), data.draw(grouped_problems(max_n=16, max_d=8)))


@pytest.mark.parametrize("kind", BACKWARD_KINDS)
@settings(max_examples=3 if SIMULATED else 10)
@given(data=st.data())
def test_grouped_backward_simulator_equals_kernel_counters(kind, data):
    """Grouped K/V heads: the dK, dV partials and their group sum are counted too."""
    assert_agree_backward(data.draw(schedules(kinds=(kind,))), data.draw(grouped_problems(max_n=12, max_d=8)))


def assert_agree_backward(schedule, problem):
    from sandbox import attention_backward

    q, k, v = make_inputs(problem, seed=0)
    kw = dict(schedule=schedule, causal=problem.causal, scale=problem.scale)
    out, lse = attention(q, k, v, return_lse=True, **kw)
    *_, measured = attention_backward(q, k, v, out, lse, q, count_io=True, **kw)
    modelled = simulate(schedule, problem, backward=True)
    assert measured == modelled, f"{schedule.describe()} {problem}: {measured.diff(modelled)}"


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", BACKWARD_KINDS)
def test_backward_agreement_at_gpu_sizes(kind, causal):
    for n_q, n_kv, d, br, bc, tq, tk in [(1000, 1500, 64, 64, 32, 4, 2), (333, 777, 80, 48, 40, 3, 5)]:
        problem = Problem(batch=2, heads=2, n_q=n_q, n_kv=n_kv, head_dim=d, causal=causal)
        assert_agree_backward(Schedule(kind, block_q=br, block_kv=bc, thread_q=tq, thread_kv=tk), problem)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", BACKWARD_KINDS)
def test_backward_stream_equals_the_counting_build(kind, causal):
    """The L2 model's backward stream requests, tensor by tensor, the HBM bytes the counting build counts."""
    from sandbox import attention_backward
    from simulator.l2 import simulate_dram

    schedule = Schedule(kind, block_q=8, block_kv=16, thread_q=2, thread_kv=4)
    problem = Problem(batch=1, heads=2, n_q=21, n_kv=35, head_dim=6, causal=causal)
    q, k, v = make_inputs(problem, seed=1)
    kw = dict(schedule=schedule, causal=causal, scale=problem.scale)
    out, lse = attention(q, k, v, return_lse=True, **kw)
    *_, measured = attention_backward(q, k, v, out, lse, q, count_io=True, **kw)
    streamed = simulate_dram(schedule, problem, gpu="h200", backward=True)
    assert streamed.requested_bytes == measured.hbm_bytes
    for t in set(measured.hbm_reads) | set(measured.hbm_writes):
        got = streamed.per_tensor[t]
        assert got["requested_read_bytes"] == measured.hbm_reads.get(t, 0) * measured.itemsize[t], t
        assert got["requested_write_bytes"] == measured.hbm_writes.get(t, 0) * measured.itemsize[t], t
