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
from kernels.builds import choose_build
from kernels.flash2_tc import eligible, smem_bytes, tc_schedule
from kernels.mma import XCH_PER_THREAD, mma, split
from sandbox import Problem, Schedule, reference_attention
from sandbox import attention
from tests.strategies import make_inputs
from tests.tolerances import tolerances


def check(schedule, problem, seed=0, magnitude=1.0):
    q, k, v = make_inputs(problem, seed=seed, magnitude=magnitude)
    assert choose_build(schedule, problem.head_dim).name == "fast-tf32x3", eligible(schedule, problem.head_dim)
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
    # 64 threads, Bc = d = 24: an item's key (column) and group are neither per-thread constants nor
    # per-item ones (item_of's general case), and the last item is partial
    "items-general": (32, 24, 30, 50, 24, "float32", False),
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


def test_one_accumulator_for_s(monkeypatch):
    """From TWO_ACCUMULATORS_BELOW key groups on (8: Bc = 64 on the GPU) S's three products share
    one accumulator: the same results."""
    monkeypatch.setattr(flash2_tc, "TWO_ACCUMULATORS_BELOW", 1)
    check(tc_schedule(16, 16), Problem(1, 2, 23, 29, 16, causal=True), seed=3, magnitude=4.0)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES.values(), ids=GPU_CASES.keys())
def test_tensor_core_build_on_the_gpu(case):
    br, bc, nq, nk, d, dtype, causal = case
    check(tc_schedule(br, bc), Problem(2, 3, nq, nk, d, dtype=dtype, causal=causal), seed=d, magnitude=4.0)


def test_nan_propagates():
    problem = Problem(batch=1, heads=1, n_q=6, n_kv=7, head_dim=8)
    q, k, v = make_inputs(problem, seed=1)
    k[0, 0, 5, 2] = np.nan  # every row sees key 5
    # device arrays: the launcher does not read them, so the fast build itself runs (NumPy inputs with
    # NaN take the plain build: tests/kernels/test_numerics.py)
    out, lse = attention(*(cuda.to_device(x) for x in (q, k, v)), schedule=tc_schedule(16, 8), return_lse=True,
                         fast=True)
    assert np.isnan(out.copy_to_host()).all() and np.isnan(lse.copy_to_host()).all()


def test_eligibility_and_schedule_checks():
    assert eligible(tc_schedule(64, 32), 64) is None
    assert "multiple of 8" in eligible(tc_schedule(64, 32), 12)
    assert eligible(tc_schedule(64, 32), 64, count_io=True).startswith("count_io")
    with pytest.raises(ValueError, match="fast=True"):
        choose_build(tc_schedule(64, 32), 12, fast=True)
    assert "math='fma'" in eligible(Schedule("flash2", 64, 32, thread_q=2, thread_kv=8), 64)  # the FMA build's schedule
    # tiles the tensor cores cannot take are refused by the Schedule itself (tests/sandbox/test_schedule.py)
    with pytest.raises(ValueError, match="thread tile 2x8"):
        Schedule("flash2", 64, 32, thread_q=4, thread_kv=8, math="tf32x3")
    with pytest.raises(ValueError, match="multiple of 16"):
        Schedule("flash2", 24, 16, thread_q=2, thread_kv=4, math="tf32x3")
    with pytest.raises(ValueError, match="math"):
        Schedule("flash2", 64, 64, math="tf32")
    with pytest.raises(ValueError, match="kind .flash1. has no build with that arithmetic"):
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


@cuda.jit
def _split_kernel(x, big, small):
    i = cuda.grid(1)
    if i < x.size:
        big[i], small[i] = split(x[i])


def _split(x):
    x = np.ascontiguousarray(x, np.float32)
    big, small = cuda.device_array_like(x), cuda.device_array_like(x)
    _split_kernel[1, x.size](cuda.to_device(x), big, small)
    return big.copy_to_host(), small.copy_to_host()


def _split_check():
    """split(x) = (x rounded to TF32, to nearest with ties away from zero; the exact remainder)."""
    one, half, ulp = np.float32(1.0), np.float32(2.0 ** -11), np.float32(2.0 ** -23)  # half a TF32 ulp at 1
    x = np.array([one + half, -(one + half), one + half - ulp, np.inf, -np.inf, np.nan], np.float32)
    big, small = _split(x)
    assert big[0] == np.float32(1 + 2.0 ** -10) and big[1] == -big[0]  # ties: away from zero
    assert big[2] == one and small[2] == half - ulp  # below the tie: down
    assert np.isposinf(big[3]) and np.isneginf(big[4]) and np.isnan(big[5])
    assert np.isnan(small[3:]).all()  # inf - inf: the products that use them are NaN
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * np.float32(1e3)
    big, small = _split(x)
    assert not (big.view(np.uint32) & 0x1FFF).any()  # 10 explicit mantissa bits
    assert (np.abs(x - big) <= np.abs(x) * 2.0 ** -11).all()
    assert (big.astype(np.float64) + small == x).all()  # the remainder is exact
    # small as the tensor cores read it (low 13 bits ignored): the 3xTF32 split, within 2^-21·|x|
    small_tc = (small.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
    assert (np.abs(x.astype(np.float64) - big - small_tc) <= np.abs(x) * 2.0 ** -21).all()


def test_split():
    _split_check()


@pytest.mark.gpu
def test_split_on_the_gpu():
    _split_check()


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


def _truncation_check():
    """The tensor cores read A and B as TF32 by ignoring their low 13 bits (truncation), which
    split relies on for the raw small parts; the simulator's fallback does the same."""

    @cuda.jit
    def kernel(a, b, d):
        xch = cuda.shared.array(XCH, float32)
        tid = cuda.threadIdx.x
        z = float32(0)
        d[tid, 0], d[tid, 1], d[tid, 2], d[tid, 3] = mma(xch, tid, a[0], a[1], a[2], a[3], b[0], b[1], z, z, z, z)

    x = np.float32(1 + 0.75 * 2.0 ** -10)  # 1 and three quarters of a TF32 ulp: rounds to 1 + ulp, truncates to 1
    d = cuda.to_device(np.zeros((32, 4), np.float32))
    ones = np.ones(4, np.float32)
    kernel[1, 32](cuda.to_device(ones * x), cuda.to_device(ones[:2]), d)
    np.testing.assert_array_equal(d.copy_to_host(), 8.0)  # A, B all ones after truncation: 8 terms of 1
    kernel[1, 32](cuda.to_device(ones), cuda.to_device(ones[:2] * -x), d)
    np.testing.assert_array_equal(d.copy_to_host(), -8.0)  # toward zero for negative values too


def test_mma_truncates_operands():
    _truncation_check()


@pytest.mark.gpu
def test_mma_truncates_operands_on_the_gpu():
    _truncation_check()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("exponent", [-115, -130], ids=["tiny", "subnormal"])
def test_tiny_and_subnormal_values_keep_fp32_accuracy(exponent, dtype):
    """V of magnitude 2^-115 (TF32 small parts subnormal) and 2^-130 (subnormal itself): as accurate as
    fp32 arithmetic, relative to the output, down to a few subnormal ulps (2^-149) absolute. The
    3xTF32 split keeps nothing of V below 2^-136, so NumPy inputs this small take the plain build."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 1, 16, 8)).astype(np.float32) for _ in range(3))
    v = (v * np.float32(2.0**exponent)).astype(dtype)
    with pytest.raises(ValueError, match="fast=True, but v holds values below"):  # the split cannot hold them
        attention(q.astype(dtype), k.astype(dtype), v, schedule=tc_schedule(16, 8), fast=True)
    out = attention(q.astype(dtype), k.astype(dtype), v, schedule=tc_schedule(16, 8))  # the plain build
    ref = reference_attention(q.astype(dtype), k.astype(dtype), v)
    atol = max(2e-6 * np.abs(ref).max(), 8 * 2.0**-149)
    if dtype == "bfloat16":  # the output's rounding to bfloat16 (its subnormals are 2^-133 apart)
        atol = max(atol, 2.0**-8 * np.abs(ref).max(), 2.0**-134)
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=0, atol=atol)
