"""The simulator against the closed forms: exact counts, log-log slopes, bounded ratios."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox import Problem, Schedule
from sandbox import simulate
from simulator import theory


def hbm(schedule, problem, backward=False):
    r = simulate(schedule, problem, backward=backward)
    return r.total("hbm_reads") + r.total("hbm_writes")


EXACT = {
    "standard": theory.standard_hbm_exact,
    "flash1": theory.flash1_hbm_exact,
    "flash2": theory.flash2_hbm_exact,
}


@pytest.mark.parametrize("kind", EXACT)
@given(n_q=st.integers(1, 5000), n_kv=st.integers(1, 5000), d=st.integers(1, 128),
       br=st.integers(1, 64), bc=st.integers(1, 64), bh=st.integers(1, 6))
def test_closed_forms_are_exact_for_our_algorithms(kind, n_q, n_kv, d, br, bc, bh):
    schedule = Schedule(kind, block_q=br, block_kv=bc, sram_bytes=2**24)
    problem = Problem(batch=bh, heads=1, n_q=n_q, n_kv=n_kv, head_dim=d)
    assert hbm(schedule, problem) == bh * EXACT[kind](n_q, n_kv, d, br, bc)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["standard", "flash1", "flash2"])
def test_hbm_grows_as_n_squared_at_fixed_m(kind, causal):
    schedule = Schedule(kind, block_q=64, block_kv=64)
    ns = [2**k for k in range(13, 18)]
    traffic = [hbm(schedule, Problem(1, 1, n, n, 64, causal=causal)) for n in ns]
    assert abs(theory.loglog_slope(ns, traffic) - 2) < 0.05


def test_flash1_hbm_falls_as_one_over_m_with_the_paper_rule():
    # M from 128 KiB to 2 MiB of fp32: where the rule's tiles (plus our S tile) fit
    n, d = 2**15, 64
    ms = [2**k for k in range(17, 22)]
    traffic = []
    for m in ms:
        schedule = Schedule.from_sram(m, head_dim=d, kind="flash1")
        assert (schedule.block_q, schedule.block_kv) == theory.paper_blocks(theory.sram_elements(m, "float32"), d)
        traffic.append(hbm(schedule, Problem(1, 1, n, n, d)))
    assert abs(theory.loglog_slope(ms, traffic) - (-1)) < 0.1


def test_flash1_over_theta_stays_within_constant_bounds():
    # Theorem 2: Θ(N²d²/M). With the paper's blocks our kernel moves Q, O in, O out once per
    # K/V block (Tc = 4dN/M): about 12·N²d²/M, plus O(Nd) terms.
    ratios = []
    for n in (2**12, 2**14, 2**16):
        for d in (32, 64, 128):
            for m_bytes in (2**16, 2**17, 2**18):
                m = theory.sram_elements(m_bytes, "float32")
                if not d * d <= m <= n * d:
                    continue
                schedule = Schedule.from_sram(m_bytes, head_dim=d, kind="flash1")
                ratios.append(hbm(schedule, Problem(1, 1, n, n, d)) / theory.flash_hbm_theta(n, d, m))
                assert hbm(schedule, Problem(1, 1, n, n, d)) >= theory.prop3_lower_bound(n, d, m)
    assert len(ratios) >= 15
    assert 8 <= min(ratios) and max(ratios) <= 16, (min(ratios), max(ratios))


def test_standard_over_theta_stays_within_constant_bounds():
    # Θ(Nd + N²) with blocks of the order of d: reads of Q and K per tile are N²d/B ~ N².
    ratios = []
    for n in (2**10, 2**12, 2**14):
        for d in (32, 64, 128):
            schedule = Schedule("standard", block_q=d, block_kv=d, sram_bytes=2**20)
            ratios.append(hbm(schedule, Problem(1, 1, n, n, d)) / theory.standard_hbm_theta(n, d))
    assert 5 <= min(ratios) and max(ratios) <= 9, (min(ratios), max(ratios))


def test_flash_beats_standard_and_respects_the_lower_bounds():
    n, d, m_bytes = 4096, 64, 96 * 1024
    m = theory.sram_elements(m_bytes, "float32")
    flash = hbm(Schedule.from_sram(m_bytes, head_dim=d, kind="flash1"), Problem(1, 1, n, n, d))
    standard = hbm(Schedule("standard", block_q=64, block_kv=64), Problem(1, 1, n, n, d))
    assert flash < standard / 3
    assert flash >= theory.io_lower_bound_trivial(n, d)
    assert flash >= theory.saha_ye_bound(n, d, m)


def test_saha_ye_crossover_at_m_equals_d_squared():
    n, d = 4096, 64
    m = theory.saha_ye_crossover(d)
    assert theory.saha_ye_bound(n, d, m) == pytest.approx(n * n)
    below, above = m // 4, m * 4
    assert theory.saha_ye_bound(n, d, below) == pytest.approx(n * n * d / below**0.5)  # √M term rules
    assert theory.saha_ye_bound(n, d, above) == pytest.approx(n * n * d * d / above)  # FlashAttention's term
    assert theory.saha_ye_bound(n, d, below) < theory.flash_hbm_theta(n, d, below)


def test_prop3_and_prop4_domains():
    with pytest.raises(ValueError, match=r"M in \[d, Nd\]"):
        theory.prop3_lower_bound(100, 64, 10)
    assert theory.block_sparse_hbm_theta(1024, 64, 2**14, 0.0) == 1024 * 64
    assert theory.block_sparse_hbm_theta(1024, 64, 2**14, 1.0) == pytest.approx(1024 * 64 + theory.flash_hbm_theta(1024, 64, 2**14))
    with pytest.raises(ValueError, match="fraction of nonzero blocks"):
        theory.block_sparse_hbm_theta(1024, 64, 2**14, 1.5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["standard", "flash2"])
def test_backward_hbm_grows_as_n_squared(kind, causal):
    schedule = Schedule(kind, block_q=64, block_kv=64)
    ns = [2**k for k in range(13, 18)]
    traffic = [hbm(schedule, Problem(1, 1, n, n, 64, causal=causal), backward=True) for n in ns]
    assert abs(theory.loglog_slope(ns, traffic) - 2) < 0.05


def test_flash_backward_hbm_falls_as_one_over_m():
    # Theorem 5: the backward also does Θ(N²d²/M). Our FA-2 backward re-reads Q, dO once per K/V
    # block and K, V once per Q block, so both blocks must grow with M: square blocks B = Br = Bc,
    # with M the footprint they need (Q, dO, K, V tiles ~ 16·B·d bytes dominate while B <= d).
    n, d = 2**14, 128
    blocks = (8, 16, 32, 64)
    ms, traffic = [], []
    for b in blocks:
        probe = Schedule("flash2", block_q=b, block_kv=b, sram_bytes=2**22)
        m = probe.sram_footprint(d, "float32", backward=True)
        schedule = Schedule("flash2", block_q=b, block_kv=b, sram_bytes=m)
        ms.append(m)
        traffic.append(hbm(schedule, Problem(1, 1, n, n, d), backward=True))
    assert abs(theory.loglog_slope(ms, traffic) - (-1)) < 0.1


def test_backward_lower_bound_terms_and_crossover():
    n, d = 4096, 64
    m = theory.saha_ye_crossover(d)
    both = n * d * (n + d)  # Nd(N + d): the two terms meet at M = d²
    assert theory.backward_lower_bound(n, d, m) == pytest.approx(both / d)
    assert theory.backward_lower_bound(n, d, m // 4) == pytest.approx((n * n * d + n * d * d) / (m // 4) ** 0.5)
    assert theory.backward_lower_bound(n, d, m * 4) == pytest.approx((n * n * d * d + n * d**3) / (m * 4))


def test_flash_backward_meets_the_backward_lower_bound_for_m_at_least_d_squared():
    """Our FlashAttention-2 backward never beats the bound, and where FlashAttention's term is the
    bound's (M >= d²) it stays within a constant factor of it (here 17-25x, within 1.5x of each
    other), for square blocks up to 2d, where the Q, dO, K and V tiles dominate the footprint M
    (the Br×Bc dS tile grows as B² and would take over past that)."""
    n, d = 2**14, 64
    ratios = []
    for b in (8, 16, 32, 64, 128):
        probe = Schedule("flash2", block_q=b, block_kv=b, sram_bytes=2**24)
        m_bytes = probe.sram_footprint(d, "float32", backward=True)
        schedule = Schedule("flash2", block_q=b, block_kv=b, sram_bytes=m_bytes)
        m = theory.sram_elements(m_bytes, "float32")
        traffic = hbm(schedule, Problem(1, 1, n, n, d), backward=True)
        bound = theory.backward_lower_bound(n, d, m)
        assert traffic >= bound, (b, traffic, bound)
        if m >= theory.saha_ye_crossover(d):
            ratios.append(traffic / bound)
    assert len(ratios) >= 3 and max(ratios) / min(ratios) < 1.5, ratios
