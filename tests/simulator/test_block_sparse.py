"""Proposition 4 of the FlashAttention paper: block-sparse FlashAttention moves Θ(Nd + N²d²M⁻¹s) HBM elements.

With a block layout of density s aligned to the schedule's tiles, the tiles a schedule visits are
exactly the layout's non-zero blocks, so the s-dependent traffic (K and V reloaded per visited
tile) is proportional to s and the rest (Q read once, O and L written once) does not depend on it.
"""

import numpy as np
import pytest

from sandbox import Problem, Schedule, masks
from sandbox import attention, simulate
from tests.strategies import SIMULATED, make_inputs

DENSITIES = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


def hbm(report):
    return report.total("hbm_reads") + report.total("hbm_writes")


def simulate_block_sparse(schedule, problem, density, seed=0):
    """HBM elements of ``schedule`` under a random block layout of ``density`` on its own tiles."""
    br, bc = schedule.block_q, schedule.block_kv
    layout = masks.random_block_layout(-(-problem.n_q // br), -(-problem.n_kv // bc), density, seed=seed)
    return layout.mean(), hbm(simulate(schedule, problem, mask=masks.block_sparse(layout, br, bc)))


@pytest.mark.parametrize("kind", ["flash2", "flash1"])
def test_block_sparse_hbm_is_nd_plus_a_term_linear_in_density(kind):
    n, d, block = 8192, 64, 128
    problem = Problem(1, 1, n, n, d)
    schedule = Schedule(kind, block_q=block, block_kv=block)
    s, h = np.array([simulate_block_sparse(schedule, problem, x) for x in DENSITIES]).T
    np.testing.assert_array_equal(s, DENSITIES)  # 64 x 64 tiles: every density is exact
    # affine in s: h = a + b·s; exactly for flash2. flash1 loads a K/V block once if any tile of
    # its column is visited: at low density a few random columns are empty, a small term that
    # is not linear in s (0.4% of the total at s = 1/16 here)
    b, a = np.polyfit(s, h, 1)
    np.testing.assert_allclose(a + b * s, h, rtol=1e-9 if kind == "flash2" else 5e-3)
    # the intercept is Θ(Nd) (Q, O, L once; flash1 also K, V once and its O/ℓ/m init), the slope's
    # term dominates: at s = 1/16 the s-term is still 3x the rest
    assert 1 <= a / (n * d) <= 4, a / (n * d)
    assert b / 16 > 3 * a
    # log-log slope of the s-term is 1
    assert np.polyfit(np.log(s), np.log(h - a), 1)[0] == pytest.approx(1.0, abs=1e-6 if kind == "flash2" else 0.02)


def test_block_sparse_s_term_falls_as_one_over_m():
    """At fixed density, flash1 with the paper's block rule (Bc = M/4d): the s-term goes as M⁻¹."""
    n, d, density = 4096, 64, 0.25
    problem = Problem(1, 1, n, n, d)
    sram = np.array([32, 64, 128]) * 1024
    terms = []
    for m in sram:
        schedule = Schedule.from_sram(int(m), head_dim=d, kind="flash1")
        s, h = np.array([simulate_block_sparse(schedule, problem, x) for x in (density, 2 * density)]).T
        terms.append((h[1] - h[0]) / (s[1] - s[0]) * density)  # the s-term at s = density
    slope = np.polyfit(np.log(sram), np.log(terms), 1)[0]
    assert -1.1 <= slope <= -0.9, slope


def test_block_sparse_counts_are_measured_by_the_kernel():
    """The kernel's own counters show the same traffic for the same layouts (count_io)."""
    n, d, block = (24, 4, 4) if SIMULATED else (1024, 64, 64)
    problem = Problem(1, 1, n, n, d)
    schedule = Schedule("flash2", block_q=block, block_kv=block, thread_q=2 if SIMULATED else 4,
                        thread_kv=2 if SIMULATED else 4)
    q, k, v = make_inputs(problem, 0)
    previous = None
    for s in (0.25, 0.5, 1.0):
        layout = masks.random_block_layout(n // block, n // block, s, seed=1)
        mask = masks.block_sparse(layout, block, block)
        _, measured = attention(q, k, v, schedule=schedule, mask=mask, count_io=True)
        assert measured == simulate(schedule, problem, mask=mask)
        assert measured.hbm_reads["K"] == layout.sum() * block * d
        if previous is not None:
            assert hbm(measured) > previous
        previous = hbm(measured)
