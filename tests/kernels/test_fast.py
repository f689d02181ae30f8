"""flash2's fast build (kernels/flash2_fast.py) against the float64 reference, and when it is taken.

The fast build runs the same schedule as the counting build with S in registers, shuffles for the
row statistics (a shared-memory butterfly under the simulator) and vector shared loads. These
properties hold it to the same tolerances as every kernel (tests/tolerances.py).
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numba import cuda

from kernels.builds import choose_build
from kernels.flash2_fast import eligible, lane_layout, layout, smem_bytes, thread_coords
from sandbox import Problem, Schedule, reference_attention
from sandbox import attention
from sandbox.vocabulary.masks import causal as causal_mask
from tests.strategies import SIMULATED, magnitudes, make_inputs, seeds
from tests.tolerances import tolerances

# threads_kv (the shuffle group) and the register tile edges drawn; head_dim = threads_kv·m, so a
# thread's O columns come in vectors of 1, 2 or 4 (and its rows and S columns, from the tile edges).
GROUPS = (1, 2, 4, 8) if SIMULATED else (4, 8, 16, 32)
MAX_TILE = 2 if SIMULATED else 8
MAX_ROW_THREADS = 4 if SIMULATED else 16


@st.composite
def fast_cases(draw, max_n):
    """(schedule, problem) pairs the fast build takes: exact thread layouts, ragged lengths."""
    tx = draw(st.sampled_from(GROUPS))
    tn = draw(st.integers(1, max(MAX_TILE, 4)))
    ty = draw(st.integers(1, MAX_ROW_THREADS))
    tm = draw(st.integers(1, max(MAX_TILE, 4)))
    d_choices = [tx * m for m in (1, 2, 3, 4, 8) if 4 <= tx * m <= (32 if SIMULATED else 256)]
    d = draw(st.sampled_from(d_choices))
    schedule = Schedule("flash2", block_q=ty * tm, block_kv=tx * tn, thread_q=tm, thread_kv=tn)
    problem = Problem(
        batch=draw(st.integers(1, 2)), heads=draw(st.integers(1, 2)), n_q=draw(st.integers(1, max_n)),
        n_kv=draw(st.integers(1, max_n)), head_dim=d, dtype=draw(st.sampled_from(("float32", "float16", "bfloat16"))),
        causal=draw(st.booleans()), scale=draw(st.one_of(st.none(), st.floats(0.05, 2.0))),
    )
    return schedule, problem


def check(schedule, problem, q, k, v):
    assert choose_build(schedule, problem.head_dim).fast, eligible(schedule, problem.head_dim)
    out, lse, build = attention(q, k, v, schedule=schedule, causal=problem.causal, scale=problem.scale,
                                return_lse=True, fast=True, return_build=True)
    assert build.name == "fast-fma" and build.reason is None
    assert out.dtype == problem.dtype and out.shape == q.shape and lse.shape == q.shape[:3]
    ref_out, ref_lse = reference_attention(q, k, v, causal=problem.causal, scale=problem.scale, return_lse=True)
    atol_out, atol_lse = tolerances(q, k, v, ref_out, ref_lse, problem.causal, problem.scale, problem.dtype)
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=atol_lse)
    return out, lse


SIZES = [pytest.param(20, id="small"), pytest.param(700, id="large", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("max_n", SIZES)
@settings(max_examples=12 if SIMULATED else 40, deadline=None)
@given(data=st.data(), seed=seeds, magnitude=magnitudes)
def test_fast_build_matches_reference(max_n, data, seed, magnitude):
    schedule, problem = data.draw(fast_cases(max_n))
    assume(choose_build(schedule, problem.head_dim).fast)  # the GPU's shared memory takes it
    check(schedule, problem, *make_inputs(problem, seed, magnitude))


REGRESSIONS = {"single query": (1, 9), "single key": (9, 1), "Nq > Nk": (13, 5), "Nq < Nk": (5, 13)}


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", REGRESSIONS.values(), ids=REGRESSIONS.keys())
def test_fixed_shapes(shape, causal):
    # Br != Bc: with causal, some rows of a block see no key of a tile (alpha = 1, P = 0 there)
    problem = Problem(batch=1, heads=2, n_q=shape[0], n_kv=shape[1], head_dim=8, causal=causal)
    check(Schedule("flash2", block_q=4, block_kv=8, thread_q=2, thread_kv=4), problem, *make_inputs(problem, 7))


# Schedules that take each branch of the kernel's compile-time layout choices (kernels/flash2_fast.py):
# the loaders' thread mappings, prefetching or not.
LAYOUTS = {
    # 64 threads, d=8: transposed loads with a 4-row band per warp, V with NT % d == 0
    "band per warp": (Schedule("flash2", block_q=32, block_kv=32, thread_q=4, thread_kv=4), 8),
    # 64 threads, d=32: a band per 2 iterations (PB % W == 0)
    "band per iterations": (Schedule("flash2", block_q=16, block_kv=16, thread_q=2, thread_kv=2), 32),
    # 32 threads, d=64: V with d % NT == 0; K and V fetched into 64 registers: too many, no prefetch
    "row split, no prefetch": (Schedule("flash2", block_q=32, block_kv=32, thread_q=4, thread_kv=8), 64),
    # 128 threads of 4x4 tiles, threads_kv = 8: paired lanes (tx from lane bits 1-3), K and V prefetched
    "paired lanes": (Schedule("flash2", block_q=64, block_kv=32, thread_q=4, thread_kv=4), 16),
}


@pytest.mark.parametrize("schedule", [
    Schedule("flash2", block_q=64, block_kv=32, thread_q=4, thread_kv=4),  # 8 x 16 threads: paired
    Schedule("flash2", block_q=16, block_kv=32, thread_q=2, thread_kv=2),  # 16 x 8: paired
    Schedule("flash2", block_q=32, block_kv=8, thread_q=2, thread_kv=2),  # 4 x 16: paired
    Schedule("flash2", block_q=32, block_kv=4, thread_q=2, thread_kv=2),  # 2 x 16: paired
    Schedule("flash2", block_q=8, block_kv=64, thread_q=2, thread_kv=2),  # 32 x 4: plain
    Schedule("flash2", block_q=12, block_kv=16, thread_q=4, thread_kv=2),  # 8 x 3: a partial warp, plain
], ids=lambda s: f"{s.threads_kv}x{s.threads_q}")
def test_lane_layout(schedule):
    # each (ty, tx) exactly once; a row's threads are in one warp and the xor offsets reach all of them
    paired, offsets = lane_layout(schedule)
    assert paired == (schedule.threads_kv in (2, 4, 8, 16) and schedule.threads % 32 == 0)
    coords = [thread_coords(t, schedule.threads_kv, paired) for t in range(schedule.threads)]
    assert sorted(coords) == [(y, x) for y in range(schedule.threads_q) for x in range(schedule.threads_kv)]
    for t, (ty, _) in enumerate(coords):
        group = {t}
        for o in offsets:
            group |= {u ^ o for u in group}
        assert {u for u in group if u < schedule.threads} == {u for u, (y, _) in enumerate(coords) if y == ty}
        assert len({u // 32 for u in group}) == 1 and len(group) == schedule.threads_kv
    if paired:  # every quad of lanes has 2 rows and 2 columns (2 wavefronts per vector load on the H100)
        for quad in range(0, schedule.threads, 4):
            c = coords[quad:quad + 4]
            assert len({y for y, _ in c}) == 2 and len({x for _, x in c}) == 2


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_layout_branches(case, causal):
    schedule, d = case
    problem = Problem(batch=1, heads=1, n_q=37, n_kv=45, head_dim=d, causal=causal)
    check(schedule, problem, *make_inputs(problem, 11))


def test_logits_near_80_do_not_overflow():
    problem = Problem(batch=1, heads=1, n_q=10, n_kv=11, head_dim=8)
    q, k, v = make_inputs(problem, seed=3, magnitude=80.0)
    out, lse = check(Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2), problem, q, k, v)
    assert np.isfinite(out).all() and np.isfinite(lse).all()


def test_nan_propagates():
    problem = Problem(batch=1, heads=1, n_q=6, n_kv=7, head_dim=8)
    q, k, v = make_inputs(problem, seed=1)
    k[0, 0, 5, 2] = np.nan  # every row sees key 5
    q[0, 0, 1, 0] = np.nan  # row 1 sees NaN in every logit
    # device arrays: the launcher does not read them, so the fast build itself runs (NumPy inputs with
    # NaN take the plain build: tests/kernels/test_numerics.py)
    out, lse = attention(*(cuda.to_device(x) for x in (q, k, v)),
                         schedule=Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2),
                         return_lse=True, fast=True)
    assert np.isnan(out.copy_to_host()).all() and np.isnan(lse.copy_to_host()).all()


def test_nan_in_a_rows_only_visible_key_propagates():
    """Causal row 0 sees key 0 alone: its running max ignores the NaN logit (fmax drops NaN) and
    stays -inf, yet P = exp2(NaN - 0) = NaN must still reach O and L (every later row sees key 0
    too)."""
    problem = Problem(batch=1, heads=1, n_q=9, n_kv=9, head_dim=8, causal=True)
    q, k, v = make_inputs(problem, seed=2)
    k[0, 0, 0, 3] = np.nan
    for schedule in (Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2),
                     Schedule("flash2", block_q=8, block_kv=4, thread_q=2, thread_kv=2)):
        out, lse = attention(*(cuda.to_device(x) for x in (q, k, v)), schedule=schedule, causal=True,
                             return_lse=True, fast=True)
        assert np.isnan(out.copy_to_host()).all() and np.isnan(lse.copy_to_host()).all()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_every_output_element_is_written(causal, monkeypatch):
    """Output buffers are poisoned with NaN before the call: any element left unwritten shows."""
    import kernels.launch as launch
    from numba import cuda

    monkeypatch.setattr(launch, "device_empty", lambda shape, dtype, what: cuda.to_device(np.full(shape, np.nan, dtype)))
    problem = Problem(batch=2, heads=1, n_q=11, n_kv=9, head_dim=16, causal=causal)
    out, lse = check(Schedule("flash2", block_q=4, block_kv=8, thread_q=2, thread_kv=2), problem,
                     *make_inputs(problem, 5))
    assert np.isfinite(out).all() and np.isfinite(lse).all()


def test_fast_and_plain_builds_agree():
    """Both builds of one schedule give the same answer to fp32 rounding (a different summation order)."""
    problem = Problem(batch=1, heads=2, n_q=19, n_kv=23, head_dim=16, causal=True)
    q, k, v = make_inputs(problem, seed=9)
    s = Schedule("flash2", block_q=8, block_kv=8, thread_q=2, thread_kv=2)
    fast = attention(q, k, v, schedule=s, causal=True, fast=True)
    plain = attention(q, k, v, schedule=s, causal=True, fast=False)
    assert np.abs(fast - plain).max() < 1e-6 * np.abs(v).max()


def test_which_build_runs():
    s = Schedule("flash2", block_q=64, block_kv=64)  # 16x16 threads of 4x4
    name = lambda *a, **kw: choose_build(*a, **kw).name  # noqa: E731
    reason = lambda *a, **kw: choose_build(*a, **kw).reason  # noqa: E731
    assert name(s, 64) == name(s, 128) == "fast-fma" and reason(s, 64) is None
    assert name(s, 64, count_io=True) == "counting"  # counters come from the counting build
    assert reason(s, 64, count_io=True).startswith("count_io")
    assert name(s, 64, mask=causal_mask()) == "plain" and reason(s, 64, mask=causal_mask()) == "a mask"
    assert name(s, 24) == "plain" and "threads_kv=16" in reason(s, 24)  # 16 threads per row need head_dim % 16 == 0
    assert name(s, 64, fast=False) == "plain" and reason(s, 64, fast=False) == "fast=False"
    assert name(s, 64, count_io=True, fast=False) == "counting"
    assert reason(Schedule("flash1", block_q=64, block_kv=64), 64) == "kind 'flash1' has no fast build"
    assert name(Schedule("flash2", block_q=60, block_kv=64, thread_q=8, thread_kv=4), 64) == "plain"  # 8 rows don't tile 60
    # the launcher's compile cache keys on the build, not on why it was chosen
    assert choose_build(s, 64, fast=False) == choose_build(s, 24)
    with pytest.raises(ValueError, match=r"fast=True, but the fast build cannot run .* head_dim=24 \(needs a multiple of threads_kv=16\)"):
        choose_build(s, 24, fast=True)
    with pytest.raises(ValueError, match="count_io"):
        choose_build(s, 64, count_io=True, fast=True)
    with pytest.raises(TypeError, match="fast: expected None, True or False"):
        choose_build(s, 64, fast="yes")


def test_the_caller_sees_the_build_that_ran():
    """attention(return_build=True) appends the Build last, after lse and the IO report."""
    s = Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32)
    out, build = attention(x, x, x, schedule=s, return_build=True)
    assert out.shape == x.shape and build.name == "fast-fma" and build.reason is None
    out, lse, report, build = attention(x, x, x, schedule=s, return_lse=True, count_io=True, return_build=True)
    assert report.hbm_reads and build.name == "counting" and build.reason.startswith("count_io")
    _, build = attention(x, x, x, schedule=s, mask=causal_mask(), return_build=True)
    assert (build.name, build.reason) == ("plain", "a mask")
    with pytest.raises(TypeError, match="return_build"):
        attention(x, x, x, schedule=s, return_build="yes")


def test_fast_true_with_a_mask_is_refused():
    x = np.zeros((1, 1, 4, 16), np.float32)
    s = Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    with pytest.raises(ValueError, match="a mask"):
        attention(x, x, x, schedule=s, mask=causal_mask(), fast=True)


def test_shared_memory_layout():
    # Qᵀ: d rows of Br + 4 floats; Kᵀ: d rows of Bc + 4; V: Bc rows of d; Pᵀ: Bc rows of Br + 4
    s = Schedule("flash2", block_q=64, block_kv=32, thread_q=4, thread_kv=2)
    off, nbytes = layout(s, 128)
    assert smem_bytes(s, 128) == nbytes == 4 * (128 * 68 + 128 * 36 + 32 * 128 + 32 * 68)
    assert off == {"Q": 0, "K": 128 * 68, "V": 128 * 68 + 128 * 36, "P": 128 * 68 + 128 * 36 + 32 * 128}
    # rows stay 16-byte aligned when an edge is not a multiple of 4 (V's rows of d = 6: 8 floats)
    off, nbytes = layout(Schedule("flash2", block_q=6, block_kv=3, thread_q=3, thread_kv=3), 6)
    assert off == {"Q": 0, "K": 6 * 12, "V": 6 * 12 + 6 * 8, "P": 6 * 12 + 6 * 8 + 3 * 8}
    assert all(x % 4 == 0 for x in off.values())


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [64, 128])
def test_the_tuner_refuses_candidates_that_spill(head_dim, tmp_path):
    """The tuner compiles each candidate and refuses any that uses local memory (register spills),
    even one it would time fastest; its choice runs without local memory."""
    from sandbox.lab import autotune

    dtype = "float32"
    spilling = [s for s in autotune.candidates(head_dim) if autotune._local_memory(s, head_dim, dtype)]
    clean = [s for s in autotune.candidates(head_dim) if s not in spilling]
    assert clean, "every candidate spills"
    fastest_first = spilling + clean  # a stand-in timer that ranks the spilling ones fastest
    best, entry = autotune.tune(head_dim, dtype, path=tmp_path / "a.json", device_name="test",
                                timer=lambda s, p: float(fastest_first.index(s)), progress=None)
    assert best == clean[0] and autotune._local_memory(best, head_dim, dtype) == 0
    assert sorted(entry["errors"]) == sorted(s.describe() for s in spilling)
    assert all("spills" in e for e in entry["errors"].values())
    # the default schedule does not spill either, in any dtype
    default = Schedule("flash2", block_q=64, block_kv=64)
    assert all(autotune._local_memory(default, head_dim, dt) == 0 for dt in ("float32", "float16", "bfloat16"))


def test_register_cap_counts_the_busiest_scheduler_partition():
    """The cap lets the block launch: 15 warps put 4 on one of an H100 SM's four 16K-register
    partitions, so 128 registers per thread, not 65536 / 480 = 136 (which failed to launch)."""
    from kernels.launch import max_registers

    assert max_registers(480) == 128
    assert max_registers(256, blocks=2) == 128 and max_registers(512) == 128
    assert max_registers(256) == 255 and max_registers(96) == 255  # the ISA's limit
    assert max_registers(128, blocks=3) == 168  # 12 warps, 3 per partition: 16384 / 96, rounded down to 8
    assert max_registers(1024) == 64
