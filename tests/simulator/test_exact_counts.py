"""Counts are exact Python integers at any N: closed-form tile sums against a per-tile loop and the theory."""

import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox import Problem, Schedule
from sandbox.vocabulary.ioreport import IOReport, itemsizes
from sandbox import simulate
from simulator import theory
from simulator.counts import MAX_MASK_ENTRIES
from simulator.tile_sums import TileSums, floor_sum

BIG_N = (2**33, 2**40)  # 64x64 tiles: int64 counts wrap from N ≈ 2^32
EXACT = {"standard": theory.standard_hbm_exact, "flash1": theory.flash1_hbm_exact, "flash2": theory.flash2_hbm_exact}


def tile_sums_by_loop(schedule, problem):
    """TileSums' fields from a loop over every tile, in Python ints (independent of the closed forms)."""
    br, bc, n_q, n_kv = schedule.block_q, schedule.block_kv, problem.n_q, problem.n_kv
    ty, tx = schedule.threads_q, schedule.threads_kv
    out = dict.fromkeys(("q_rows", "visited", "q_rows_visits", "kv_rows", "area", "q_col_groups",
                         "kv_row_groups", "allowed"), 0)
    loaded = set()
    for q0 in range(0, n_q, br):
        q_len = min(br, n_q - q0)
        out["q_rows"] += q_len
        for k0 in range(0, n_kv, bc):
            kv_len = min(bc, n_kv - k0)
            if problem.causal and k0 > q0 + q_len - 1:
                continue
            loaded.add(k0)
            out["visited"] += 1
            out["q_rows_visits"] += q_len
            out["kv_rows"] += kv_len
            out["area"] += q_len * kv_len
            out["q_col_groups"] += q_len * min(tx, kv_len)
            out["kv_row_groups"] += min(ty, q_len) * kv_len
            out["allowed"] += sum(
                min(kv_len, max(0, r + 1 - k0)) if problem.causal else kv_len for r in range(q0, q0 + q_len))
    out["kv_rows_loaded"] = sum(min(bc, n_kv - k0) for k0 in loaded)
    return out


@given(n_q=st.integers(1, 300), n_kv=st.integers(1, 300), br=st.integers(1, 40), bc=st.integers(1, 40),
       tq=st.integers(1, 8), tkv=st.integers(1, 8), causal=st.booleans())
def test_tile_sums_equal_a_loop_over_tiles(n_q, n_kv, br, bc, tq, tkv, causal):
    schedule = Schedule("flash2", block_q=br, block_kv=bc, thread_q=min(tq, br), thread_kv=min(tkv, bc),
                        sram_bytes=2**24)
    problem = Problem(1, 1, n_q, n_kv, 16, causal=causal)
    assert vars(TileSums(schedule, problem)) == tile_sums_by_loop(schedule, problem)


@given(n=st.integers(0, 60), m=st.integers(1, 60), a=st.integers(0, 200), b=st.integers(0, 200))
def test_floor_sum(n, m, a, b):
    assert floor_sum(n, m, a, b) == sum((a * i + b) // m for i in range(n))


def _simulate_quietly(schedule, problem, backward=False):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # int64 overflow announced itself as a RuntimeWarning only
        report = simulate(schedule, problem, backward=backward)
    for field in report.counts().values():
        assert all(type(n) is int for n in field.values())
    assert type(report.flops) is int
    return report


@pytest.mark.parametrize("n", BIG_N)
@pytest.mark.parametrize("kind", EXACT)
def test_hbm_counts_are_exact_at_huge_n(kind, n):
    schedule, d, bh = Schedule(kind, block_q=64, block_kv=64), 64, 6
    report = _simulate_quietly(schedule, Problem(2, 3, n, n, d))
    assert report.total("hbm_reads") + report.total("hbm_writes") == bh * EXACT[kind](n, n, d, 64, 64)


@pytest.mark.parametrize("n", BIG_N)
def test_causal_counts_are_exact_at_huge_n(n):
    d, b = 64, 64
    report = _simulate_quietly(Schedule("flash2", block_q=b, block_kv=b), Problem(1, 1, n, n, d, causal=True))
    tr = n // b
    assert report.hbm_reads["K"] == report.hbm_reads["V"] == d * b * tr * (tr + 1) // 2  # block i: i + 1 K/V blocks
    assert report.sram_writes["S"] == n * (n + 1) // 2
    assert report.flops == 4 * d * b * b * tr * (tr + 1) // 2
    assert report.hbm_bytes == 4 * (2 * n * d + 2 * d * b * tr * (tr + 1) // 2 + n)


def test_backward_counts_are_exact_at_huge_n():
    n, d, b = 2**40, 64, 64
    report = _simulate_quietly(Schedule("flash2", block_q=b, block_kv=b), Problem(1, 1, n, n, d), backward=True)
    # dkdv loads K once; dq loads K once per Q block
    assert report.hbm_reads["K"] == d * n + d * (n // b) * n
    assert report.flops == 7 * 2 * d * n * n + 2 * n * d


def test_a_mask_too_large_to_evaluate_is_refused():
    problem = Problem(1, 1, 2**20, 2**20, 64)
    with pytest.raises(ValueError, match="mask: .*exceeds") as err:
        simulate(Schedule("flash2", block_q=64, block_kv=64), problem, mask=lambda b, h, q, k: k <= q)
    assert str(MAX_MASK_ENTRIES) in str(err.value)


@pytest.mark.parametrize("count", [1.5, "3", True, None])
def test_report_counts_are_integers(count):
    with pytest.raises(TypeError, match=r"hbm_reads\['Q'\]"):
        IOReport(hbm_reads={"Q": count}, itemsize=itemsizes("float32"))
