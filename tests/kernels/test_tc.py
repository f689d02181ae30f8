"""flash2's tensor-core build (kernels/flash2_tc.py, ``Schedule(math="tf32x3")``) and its warp
product (kernels/mma.py) against the float64 reference.

Under the simulator the warp product is the fallback in kernels/mma.py (lanes swap fragments
through shared memory), slow: the shapes are tiny. On a GPU (``-m gpu``) the same checks run the
tensor cores' ``mma.sync``, so the fragment layout the fallback documents is the hardware's.
"""

import numpy as np
import pytest
from numba import cuda, float32

from kernels import flash2_tc
from kernels.flash2_tc import eligible, smem_bytes, tc_schedule
from kernels.launch import use_fast
from kernels.mma import XCH_PER_THREAD, mma, tf32
from sandbox import Problem, Schedule, reference_attention
from sandbox.lab import attention
from tests.strategies import SIMULATED, make_inputs
from tests.tolerances import tolerances


def check(schedule, problem, seed=0, magnitude=1.0):
    q, k, v = make_inputs(problem, seed=seed, magnitude=magnitude)
    assert use_fast(schedule, problem.head_dim), eligible(schedule, problem.head_dim)
    out, lse = attention(q, k, v, schedule=schedule, causal=problem.causal, scale=problem.scale, return_lse=True,
                         fast=True)
    assert out.dtype == problem.dtype and out.shape == q.shape
    ref_out, ref_lse = reference_attention(q, k, v, causal=problem.causal, scale=problem.scale, return_lse=True)
    atol_out, atol_lse = tolerances(q, k, v, ref_out, ref_lse, problem.causal, problem.scale, problem.dtype)
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=atol_lse)
    return out, lse


# (Br, Bc, Nq, Nk, d, dtype, causal): one warp and two; ragged last blocks; causal with Nq != Nk;
# fp16 and bf16 (their K, V small parts are zero: two products per step)
SIM_CASES = {
    "1warp-full": (16, 8, 19, 21, 16, "float32", False),
    "2warps-causal-ragged": (32, 16, 37, 45, 16, "float32", True),
    "fp16-causal": (16, 8, 20, 20, 8, "float16", True),
    "bf16": (16, 16, 18, 30, 8, "bfloat16", False),
}
GPU_CASES = {
    f"{br}x{bc}-d{d}-{dt}-{'causal' if c else 'full'}": (br, bc, 301, 333, d, dt, c)
    for br, bc in ((128, 64), (128, 32), (64, 16)) for d in (64, 128)
    for dt in ("float32", "bfloat16") for c in (False, True)
}


@pytest.mark.parametrize("case", SIM_CASES.values(), ids=SIM_CASES.keys())
def test_tensor_core_build_matches_reference(case):
    br, bc, nq, nk, d, dtype, causal = case
    check(tc_schedule(br, bc), Problem(1, 2, nq, nk, d, dtype=dtype, causal=causal), seed=nq)


def test_q_fragments_in_shared_memory(monkeypatch):
    """Above Q_REGISTERS_MAX_D Q's fragments live in SRAM (d = 128 on the GPU): the same results."""
    monkeypatch.setattr(flash2_tc, "Q_REGISTERS_MAX_D", 8)
    s = tc_schedule(32, 16)
    assert smem_bytes(s, 16) == 16 * 16 * 16 + 4 * 32 * 16
    check(s, Problem(1, 1, 35, 40, 16, causal=True), seed=5, magnitude=4.0)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES.values(), ids=GPU_CASES.keys())
def test_tensor_core_build_on_the_gpu(case):
    br, bc, nq, nk, d, dtype, causal = case
    check(tc_schedule(br, bc), Problem(2, 3, nq, nk, d, dtype=dtype, causal=causal), seed=d, magnitude=4.0)


def test_nan_propagates():
    problem = Problem(batch=1, heads=1, n_q=6, n_kv=7, head_dim=8)
    q, k, v = make_inputs(problem, seed=1)
    k[0, 0, 5, 2] = np.nan  # every row sees key 5
    out, lse = attention(q, k, v, schedule=tc_schedule(16, 8), return_lse=True, fast=True)
    assert np.isnan(out).all() and np.isnan(lse).all()


def test_eligibility_and_schedule_checks():
    assert eligible(tc_schedule(64, 32), 64) is None
    assert "thread tile" in eligible(Schedule("flash2", 64, 32, thread_q=4, thread_kv=8, math="tf32x3"), 64)
    assert "multiple of 8" in eligible(tc_schedule(64, 32), 12)
    assert "multiple of 16" in eligible(Schedule("flash2", 24, 16, thread_q=2, thread_kv=4, math="tf32x3"), 64)
    assert eligible(tc_schedule(64, 32), 64, count_io=True).startswith("count_io")
    with pytest.raises(ValueError, match="fast=True"):
        use_fast(Schedule("flash2", 64, 32, thread_q=4, thread_kv=8, math="tf32x3"), 64, fast=True)
    with pytest.raises(ValueError, match="math"):
        Schedule("flash2", 64, 64, math="tf32")
    with pytest.raises(ValueError, match="only flash2"):
        Schedule("flash1", 64, 64, math="tf32x3")
    assert "math=tf32x3" in tc_schedule(64, 32).describe()


def test_counting_runs_take_the_counting_build():
    """count_io with math="tf32x3": the counting build (same HBM traffic), not the tensor cores."""
    problem = Problem(1, 1, 20, 20, 8)
    q, k, v = make_inputs(problem, seed=4)
    s = tc_schedule(16, 8)
    out, report = attention(q, k, v, schedule=s, count_io=True)
    ref = reference_attention(q, k, v)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)  # (fp32 FMAs on values of about 1)
    plain = attention(q, k, v, schedule=Schedule("flash2", 16, 8, thread_q=2, thread_kv=2), count_io=True)[1]
    assert report.bytes("hbm_reads") == plain.bytes("hbm_reads") > 0
    assert report.bytes("hbm_writes") == plain.bytes("hbm_writes") > 0


@pytest.mark.skipif(not SIMULATED, reason="the simulator's TF32 rounding (the GPU's is cvt.rna)")
def test_tf32_rounds_to_nearest_ties_away():
    one = np.float32(1.0)
    half = np.float32(2.0 ** -11)  # half a TF32 ulp at 1
    assert tf32(one + half) == np.float32(1 + 2.0 ** -10)  # a tie: away from zero
    assert tf32(-(one + half)) == -np.float32(1 + 2.0 ** -10)
    assert tf32(one + half - np.float32(2.0 ** -23)) == one  # below the tie: down
    assert np.isinf(tf32(np.float32(np.inf))) and np.isnan(tf32(np.float32(np.nan)))
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    big = np.array([tf32(v) for v in x], np.float32)
    assert not (big.view(np.uint32) & 0x1FFF).any()  # 10 explicit mantissa bits
    assert (np.abs(x - big) <= np.abs(x) * 2.0 ** -11).all()
    small = np.array([tf32(v - b) for v, b in zip(x, big)], np.float32)
    assert (np.abs(x.astype(np.float64) - big - small) <= np.abs(x) * 2.0 ** -21).all()  # the 3xTF32 split


XCH = 32 * XCH_PER_THREAD  # (a constant: Numba sizes shared arrays at compile time)


def _mma_check():
    """One warp's m16n8k8 product D = C + A·B through ``mma``, its fragments placed as the module
    docstring of kernels/mma.py says, against NumPy (TF32 inputs: the products are exact)."""

    @cuda.jit
    def kernel(a, b, c, d):
        xch = cuda.shared.array(XCH, float32)
        tid = cuda.threadIdx.x
        g = tid // 4
        t = tid - 4 * g
        d[g, 2 * t], d[g, 2 * t + 1], d[g + 8, 2 * t], d[g + 8, 2 * t + 1] = mma(
            xch, tid, a[g, t], a[g + 8, t], a[g, t + 4], a[g + 8, t + 4], b[t, g], b[t + 4, g],
            c[g, 2 * t], c[g, 2 * t + 1], c[g + 8, 2 * t], c[g + 8, 2 * t + 1])

    rng = np.random.default_rng(1)
    # distinct small integers: every product and sum exact, a misplaced fragment cannot cancel out
    a = rng.integers(-8, 9, (16, 8)).astype(np.float32)
    b = rng.integers(-8, 9, (8, 8)).astype(np.float32)
    c = rng.integers(-64, 65, (16, 8)).astype(np.float32)
    d = cuda.to_device(np.zeros((16, 8), np.float32))
    kernel[1, 32](cuda.to_device(a), cuda.to_device(b), cuda.to_device(c), d)
    np.testing.assert_array_equal(d.copy_to_host(), c + a @ b)


def test_mma_fragment_layout():
    _mma_check()


@pytest.mark.gpu
def test_mma_fragment_layout_on_the_tensor_cores():
    _mma_check()
