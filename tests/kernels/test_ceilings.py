"""The roofline's ceiling kernels (kernels/ceilings.py) compute what their FLOP counts assume: every
chain advanced the number of steps counted, each step one FMA or one m16n8k8 (TF32) or m16n8k16 (fp16) product."""

import numpy as np
import pytest

from sandbox.vocabulary.runtime import ensure_backend

ensure_backend()

from numba import cuda  # noqa: E402

from kernels.ceilings import CHAINS, UNROLL, fma_chains, make_mma16_chains, make_mma_chains  # noqa: E402
from sandbox.lab.ceilings import pairs  # noqa: E402


def _fma_check(blocks, threads, rows, trips, a, b):
    rng = np.random.default_rng(0)
    x0 = rng.integers(-100, 100, (rows, CHAINS)).astype(np.float32)
    x = cuda.to_device(x0)
    fma_chains[blocks, threads](x, np.float32(a), np.float32(b), trips)
    steps = trips * UNROLL
    # after T steps of x <- a x + b: a^T x0 + b (1 + a + ... + a^(T-1))
    expect = a**steps * x0.astype(np.float64) + b * sum(a**i for i in range(steps))
    return x.copy_to_host(), expect


@pytest.mark.parametrize("blocks, threads, rows", [(1, 32, 32), (3, 32, 70)])
def test_fma_chains_add_b_once_per_step(blocks, threads, rows):
    """a = 1, b = 1: every chain of every row (threads past the rows do nothing) gains exactly UNROLL·trips."""
    got, expect = _fma_check(blocks, threads, rows, trips=5, a=1.0, b=1.0)
    np.testing.assert_array_equal(got, expect)


def test_fma_chains_follow_the_closed_form():
    got, expect = _fma_check(1, 32, 32, trips=3, a=0.5, b=0.75)
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6)


def _mma_check(blocks, threads, trips):
    """Every warp's CHAINS accumulators end at C + trips·A·B (small integers: every sum exact)."""
    rng = np.random.default_rng(1)
    a = rng.integers(-4, 5, (16, 8)).astype(np.float32)
    b = rng.integers(-4, 5, (8, 8)).astype(np.float32)
    c0 = rng.integers(-50, 51, (blocks * threads // 32, CHAINS, 16, 8)).astype(np.float32)
    c = cuda.to_device(c0)
    make_mma_chains(threads)[blocks, threads](cuda.to_device(a), cuda.to_device(b), c, trips)
    np.testing.assert_array_equal(c.copy_to_host(), c0 + trips * (a @ b))


def _mma16_check(blocks, threads, trips):
    """The 16-bit chains: every warp's accumulators end at C + trips·A·B, A 16×16 and B 16×8 in fp16."""
    rng = np.random.default_rng(2)
    a = rng.integers(-4, 5, (16, 16)).astype(np.float16)
    b = rng.integers(-4, 5, (16, 8)).astype(np.float16)
    c0 = rng.integers(-50, 51, (blocks * threads // 32, CHAINS, 16, 8)).astype(np.float32)
    c = cuda.to_device(c0)
    words_a, words_b = pairs(a), pairs(b.T)  # b[n, j]: B[2j, n] and B[2j + 1, n]
    make_mma16_chains(threads)[blocks, threads](cuda.to_device(words_a), cuda.to_device(words_b), c, trips)
    expect = c0 + trips * (a.astype(np.float32) @ b.astype(np.float32))
    np.testing.assert_array_equal(c.copy_to_host(), expect)


def test_mma_chains_add_one_product_per_step():
    _mma_check(blocks=2, threads=64, trips=3)


def test_mma16_chains_add_one_product_per_step():
    _mma16_check(blocks=1, threads=64, trips=2)


def test_pairs_put_the_lower_column_in_the_low_half():
    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float16)
    words = pairs(x)
    assert words.shape == (1, 2) and words.dtype == np.uint32
    assert int(words[0, 0]) & 0xFFFF == int(x[0, :1].view(np.uint16)[0])
    assert int(words[0, 1]) >> 16 == int(x[0, 3:].view(np.uint16)[0])


@pytest.mark.parametrize("make", [make_mma_chains, make_mma16_chains])
def test_mma_chains_need_whole_warps(make):
    with pytest.raises(ValueError, match="multiple of 32"):
        make(48)


@pytest.mark.gpu
def test_fma_and_mma_chains_on_the_gpu():
    got, expect = _fma_check(4, 128, 500, trips=1000, a=1.0, b=1.0)
    np.testing.assert_array_equal(got, expect)
    _mma_check(blocks=132, threads=256, trips=1000)
    _mma16_check(blocks=132, threads=256, trips=1000)
