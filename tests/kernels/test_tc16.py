"""flash2's 16-bit tensor-core build (kernels/flash2_tc16.py, ``Schedule(math="f16")``) and its
warp product and packing (kernels/mma16.py) against NumPy and the float64 reference.

Under the simulator the warp product is the fallback in kernels/mma16.py (lanes swap fragments
through shared memory), slow: the shapes are tiny. On a GPU (``-m gpu``) the same checks run the
tensor cores' ``mma.sync`` and ``cvt``, so the fragment layout the fallback documents is the
hardware's. Tolerances: tests/tolerances.py's ``tolerances_tc16`` (P rounded to the inputs' type).
"""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import cuda, uint32

from kernels.builds import choose_build
from kernels.flash2_tc16 import dtype_refusal, eligible, smem_bytes, tc16_schedule, tile_stride
from kernels.mma16 import XCH16_PER_THREAD, products
from sandbox import Problem, Schedule, attention, reference_attention
from sandbox.vocabulary.masks import causal as causal_mask
from tests.strategies import SIMULATED, magnitudes, make_inputs, seeds
from tests.tolerances import tolerances, tolerances_tc16

DTYPES16 = ("float16", "bfloat16")


def check(schedule, problem, q, k, v):
    assert choose_build(schedule, problem.head_dim, dtype=problem.dtype).name == "fast-f16", (
        eligible(schedule, problem.head_dim))
    out, lse, build = attention(q, k, v, schedule=schedule, causal=problem.causal, scale=problem.scale,
                                return_lse=True, fast=True, return_build=True)
    assert build.name == "fast-f16" and build.reason is None
    assert out.dtype == problem.dtype and out.shape == q.shape and lse.dtype == np.float32
    ref_out, ref_lse = reference_attention(q, k, v, causal=problem.causal, scale=problem.scale, return_lse=True)
    atol_out, atol_lse = tolerances_tc16(q, k, v, ref_out, ref_lse, problem.causal, problem.scale, problem.dtype)
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=atol_lse)
    return out, lse


@st.composite
def tc16_cases(draw, blocks, head_dims, max_n, heads):
    """(schedule, problem): blocks (Br, Bc, a warp's rows) and d the build takes, ragged Nq != Nk, fp16
    or bf16, causal or not."""
    br, bc, rows = draw(st.sampled_from(blocks))
    problem = Problem(
        batch=1, heads=draw(st.integers(1, heads)), n_q=draw(st.integers(1, max_n)), n_kv=draw(st.integers(1, max_n)),
        head_dim=draw(st.sampled_from(head_dims)), dtype=draw(st.sampled_from(DTYPES16)),
        causal=draw(st.booleans()), scale=draw(st.one_of(st.none(), st.floats(0.05, 2.0))),
    )
    return tc16_schedule(br, bc, rows), problem


# (Br, Bc, rows per warp): a warp per 16 rows (Q's fragments in registers) or per 32 (Q_i in SRAM)
SIM_BLOCKS = ((16, 16, 16), (16, 32, 16), (32, 16, 16), (32, 32, 16), (32, 16, 32), (64, 32, 32))
GPU_BLOCKS = ((64, 64, 16), (64, 128, 16), (128, 64, 16), (128, 128, 16), (128, 32, 16), (64, 64, 32),
              (128, 64, 32), (128, 128, 32))


@settings(max_examples=12, deadline=None)
@given(data=st.data(), seed=seeds, magnitude=magnitudes)
def test_matches_reference(data, seed, magnitude):
    schedule, problem = data.draw(tc16_cases(SIM_BLOCKS, (16, 32), 64, 2) if SIMULATED
                                  else tc16_cases(GPU_BLOCKS, (64, 128), 700, 2))
    check(schedule, problem, *make_inputs(problem, seed, magnitude))


@pytest.mark.gpu
@settings(max_examples=8, deadline=None)
@given(data=st.data(), seed=seeds, magnitude=magnitudes)
def test_matches_reference_at_large_shapes(data, seed, magnitude):
    schedule, problem = data.draw(tc16_cases(GPU_BLOCKS, (64, 128), 4096, 1))
    check(schedule, problem, *make_inputs(problem, seed, magnitude))


# (Br, Bc, Nq, Nk, d, rows per warp): one key, one query, a ragged pair count (odd Nk: V's last key
# pair half empty), Nq > Nk and Nq < Nk (causal: key blocks past a query block's last row skipped);
# a warp per 32 rows with Q_i's last rows past Nq, and with both m16 tiles of a warp partly past it
FIXED = {"one key": (16, 16, 9, 1, 16, 16), "one query": (16, 16, 1, 9, 16, 16), "odd Nk": (32, 16, 20, 33, 32, 16),
         "Nq > Nk": (32, 32, 45, 13, 16, 16), "Nq < Nk": (16, 32, 13, 50, 16, 16),
         "32 rows, Nq > Nk": (64, 16, 75, 21, 16, 32), "32 rows, one query": (32, 16, 1, 20, 32, 32)}


@pytest.mark.parametrize("dtype", DTYPES16)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", FIXED.values(), ids=FIXED.keys())
def test_fixed_shapes(case, causal, dtype):
    br, bc, nq, nk, d, rows = case
    problem = Problem(1, 1, nq, nk, d, dtype=dtype, causal=causal)
    check(tc16_schedule(br, bc, rows), problem, *make_inputs(problem, seed=nq * 100 + nk, magnitude=10.0))


# (Br, Bc, Nq, Nk, d, dtype, rows per warp): the loaders' general cases: d/2 = 24 words a row, which
# 32 threads' items do not divide into per-thread constants (Bc = 48: 6 key groups, 3 k16 steps of
# P·V); 96 threads with d = 80, whose items of K and V leave the last round partial; and 32 threads
# a warp per 32 rows, whose copies of Q_i (d = 48) leave the last round partial
LAYOUTS = {"d48-Bc48": (16, 48, 20, 53, 48, "float16", 16), "partial-items": (48, 16, 50, 37, 80, "bfloat16", 16),
           "partial-Q-items": (32, 16, 40, 23, 48, "float16", 32)}


@pytest.mark.parametrize("case", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_loader_layouts(case):
    br, bc, nq, nk, d, dtype, rows = case
    problem = Problem(1, 1, nq, nk, d, dtype=dtype, causal=True)
    check(tc16_schedule(br, bc, rows), problem, *make_inputs(problem, seed=7, magnitude=10.0))


def test_fp32_inputs_take_another_build():
    """fp32 inputs are refused with the reason: the plain build runs them, fast=True raises."""
    s = tc16_schedule(16, 16)
    problem = Problem(1, 1, 10, 12, 16)
    q, k, v = make_inputs(problem, seed=2)
    assert "float32 inputs" in dtype_refusal("float32") and dtype_refusal("bfloat16") is None
    chosen = choose_build(s, 16, dtype="float32")
    assert chosen.name == "plain" and "float32 inputs" in chosen.reason
    out, build = attention(q, k, v, schedule=s, return_build=True)
    assert build.name == "plain" and "math='tf32x3'" in build.reason
    np.testing.assert_allclose(out, reference_attention(q, k, v), rtol=0, atol=1e-5)  # (fp32 FMAs, values of ~1)
    with pytest.raises(ValueError, match="fast=True, but the fast build cannot run .*float32 inputs"):
        attention(q, k, v, schedule=s, fast=True)


def test_masks_and_counting_take_the_counting_kernels():
    """A mask runs the plain build (fast=True raises); count_io the counting build, with the HBM
    traffic of flash2's other schedules."""
    problem = Problem(1, 1, 20, 20, 16, dtype="float16")
    q, k, v = make_inputs(problem, seed=4)
    s = tc16_schedule(16, 16)
    assert choose_build(s, 16, mask=causal_mask(), dtype="float16").name == "plain"
    with pytest.raises(ValueError, match="a mask"):
        choose_build(s, 16, mask=causal_mask(), fast=True)
    out, report = attention(q, k, v, schedule=s, count_io=True)
    ref, ref_lse = reference_attention(q, k, v, return_lse=True)
    atol_out, _ = tolerances(q, k, v, ref, ref_lse, False, problem.scale, problem.dtype)
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=0, atol=atol_out)
    plain = attention(q, k, v, schedule=Schedule("flash2", 16, 16, thread_q=2, thread_kv=4), count_io=True)[1]
    assert report.bytes("hbm_reads") == plain.bytes("hbm_reads") > 0
    assert report.bytes("hbm_writes") == plain.bytes("hbm_writes") > 0


def test_eligibility_and_schedule_checks():
    assert eligible(tc16_schedule(64, 64), 64) is None
    assert "multiple of 16" in eligible(tc16_schedule(64, 64), 40)
    assert eligible(tc16_schedule(64, 64), 64, count_io=True).startswith("count_io")
    assert "math='tf32x3'" in eligible(Schedule("flash2", 64, 32, thread_q=2, thread_kv=8, math="tf32x3"), 64)
    with pytest.raises(ValueError, match="fast=True"):
        choose_build(tc16_schedule(64, 64), 40, fast=True)
    with pytest.raises(ValueError, match="math='f16' needs block_q a multiple of 16 and block_kv a multiple of 16"):
        Schedule("flash2", 64, 24, thread_q=2, thread_kv=6, math="f16")
    with pytest.raises(ValueError, match=r"math='f16' needs the thread tile 2x16 or 4x16 \(thread_q=2 or 4"):
        Schedule("flash2", 64, 64, thread_q=8, thread_kv=16, math="f16")
    with pytest.raises(ValueError, match="math='f16' needs block_q a multiple of 32"):
        Schedule("flash2", 48, 64, thread_q=4, thread_kv=16, math="f16")  # a warp per 32 rows
    s = Schedule("flash2", 128, 64, math="f16")  # the tile by default
    assert (s.thread_q, s.thread_kv, s.threads) == (2, 16, 256) and s == tc16_schedule(128, 64)
    assert "math=f16" in s.describe()
    s32 = tc16_schedule(128, 64, 32)
    assert (s32.thread_q, s32.thread_kv, s32.threads) == (4, 16, 128) and eligible(s32, 64) is None
    # two stages of K_j and V_j, [Bc][d/2 + 4] uint32: 16 bytes of padding a row (the module docstring);
    # a warp per 32 rows adds Q_i, [Br][d/2 + 4]
    assert smem_bytes(s, 128) == 4 * 2 * 2 * 64 * (64 + 4)
    assert smem_bytes(s32, 128) == 4 * (2 * 2 * 64 + 128) * (64 + 4)
    assert [tile_stride(w) for w in (8, 16, 24, 32, 64)] == [12, 20, 28, 36, 68]


def test_nan_propagates():
    problem = Problem(batch=1, heads=1, n_q=6, n_kv=7, head_dim=16, dtype="float16")
    q, k, v = make_inputs(problem, seed=1)
    k[0, 0, 5, 2] = np.nan  # every row sees key 5
    # device arrays: the launcher does not read them, so the fast build itself runs (NumPy inputs with
    # NaN take the plain build: tests/kernels/test_numerics.py)
    out, lse = attention(*(cuda.to_device(x) for x in (q, k, v)), schedule=tc16_schedule(16, 16), return_lse=True,
                         fast=True)
    assert np.isnan(out.copy_to_host()).all() and np.isnan(lse.copy_to_host()).all()


XCH = 32 * XCH16_PER_THREAD  # (a constant: Numba sizes shared arrays at compile time)


def _mma_check(dtype):
    """One warp's m16n8k16 product D = C + A·B, its fragments placed as kernels/mma16.py's module
    docstring says (A and B as uint32 pairs: A's rows and Bᵀ's rows viewed as uint32), against NumPy."""
    mma, _ = products(dtype)

    @cuda.jit
    def kernel(a, bt, c, d):
        xch = cuda.shared.array(XCH, uint32)
        tid = cuda.threadIdx.x
        g = tid // 4
        t = tid - 4 * g
        d[g, 2 * t], d[g, 2 * t + 1], d[g + 8, 2 * t], d[g + 8, 2 * t + 1] = mma(
            xch, tid, a[g, t], a[g + 8, t], a[g, t + 4], a[g + 8, t + 4], bt[g, t], bt[g, t + 4],
            c[g, 2 * t], c[g, 2 * t + 1], c[g + 8, 2 * t], c[g + 8, 2 * t + 1])

    rng = np.random.default_rng(1)
    # distinct small integers: every product and sum exact, a misplaced fragment cannot cancel out
    a = rng.integers(-8, 9, (16, 16)).astype(dtype)
    b = rng.integers(-8, 9, (16, 8)).astype(dtype)
    c = rng.integers(-64, 65, (16, 8)).astype(np.float32)
    d = cuda.to_device(np.zeros((16, 8), np.float32))
    bt = np.ascontiguousarray(b.T)
    kernel[1, 32](cuda.to_device(a.view(np.uint32)), cuda.to_device(bt.view(np.uint32)), cuda.to_device(c), d)
    np.testing.assert_array_equal(d.copy_to_host(), c + a.astype(np.float64) @ b.astype(np.float64))


def _pack_check(dtype):
    """pack(lo, hi): two fp32 rounded to the 16-bit type (to nearest, ties to even), lo in the low half."""
    _, pack = products(dtype)

    @cuda.jit
    def kernel(x, out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = pack(x[2 * i], x[2 * i + 1])

    rng = np.random.default_rng(2)
    x = rng.standard_normal(64).astype(np.float32)
    one = np.float32(1.0)
    ulp = np.float32(2.0**-10 if dtype == np.float16 else 2.0**-7)  # the 16-bit ulp at 1
    x[:4] = [one + ulp / 2, one + 3 * ulp / 2, -(one + ulp / 2), np.float32(65520.0)]  # ties; fp16 overflow
    out = cuda.to_device(np.zeros(32, np.uint32))
    kernel[1, 32](cuda.to_device(x), out)
    with np.errstate(over="ignore"):  # (65520 overflows fp16: inf, as on the GPU)
        expected = x.astype(dtype).view(np.uint32)  # (NumPy and ml_dtypes: to nearest even; pairs in memory order)
    np.testing.assert_array_equal(out.copy_to_host(), expected)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=DTYPES16)
def test_mma_fragment_layout(dtype):
    _mma_check(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=DTYPES16)
def test_mma_fragment_layout_on_the_tensor_cores(dtype):
    _mma_check(dtype)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=DTYPES16)
def test_pack_rounds_to_nearest_even(dtype):
    _pack_check(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=DTYPES16)
def test_pack_rounds_to_nearest_even_on_the_gpu(dtype):
    _pack_check(dtype)


def test_products_refuse_other_dtypes():
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        products(np.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES16)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_a_candidate_compiles_without_spills(head_dim, dtype):
    """The tuner's 16-bit tensor-core candidates include one whose kernels (causal or not) use no
    local memory at this head_dim: the tuner, which refuses candidates that spill, has one to time."""
    from sandbox.lab import autotune

    f16 = [s for s in autotune.candidates(head_dim, dtype) if s.math == "f16"]
    assert f16 and any(autotune._local_memory(s, head_dim, dtype) == 0 for s in f16)


def test_an_input_off_a_16_byte_boundary_is_refused():
    """The 16-bit builds copy their tiles by cp.async in 16-byte words: a C-contiguous device view that
    starts 2 bytes into its allocation is refused with the reason before any launch (on a GPU the copy
    would fault), forward and backward; arrays allocated on their own pass the check."""
    from kernels import launch

    schedule = tc16_schedule(16, 16)
    problem = Problem(1, 1, 16, 16, 16, dtype="float16")
    x = np.random.default_rng(0).standard_normal(16 * 16 + 1).astype(np.float16)
    off = cuda.to_device(x)[1:].reshape(1, 1, 16, 16)
    good = cuda.to_device(np.ascontiguousarray(x[1:].reshape(1, 1, 16, 16)))
    lse = cuda.to_device(np.zeros((1, 1, 16), np.float32))
    assert off.is_c_contiguous() and launch.device_address(off) % 16 == 2
    with pytest.raises(ValueError, match="k: its first element is 2 bytes past a 16-byte boundary; the fast-f16 "
                                         "build copies whole 16-byte words with cp.async: pass a copy"):
        launch.run(schedule, problem, good, off, good, fast=True)
    with pytest.raises(ValueError, match="dout: its first element is 2 bytes past a 16-byte boundary"):
        launch.run_backward(schedule, problem, good, good, good, good, lse, off, fast=True)
    forward = choose_build(schedule, 16, dtype=problem.dtype, fast=True)
    assert forward.module.ALIGNMENT == 16
    launch.check_alignment(forward, (good, good, good), "qkv")  # no error
