"""Schedule and Problem: defaults, validation, the SRAM rule."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox import Problem, Schedule
from sandbox.vocabulary.schedule import MAX_HEAD_DIM, sram_buffers


def test_defaults_make_a_complete_schedule():
    s = Schedule("flash2", block_q=16, block_kv=16)
    assert (s.thread_q, s.thread_kv, s.threads_q, s.threads_kv, s.threads) == (1, 1, 16, 16, 256)
    assert s.sram_bytes == 227 * 1024
    assert hash(s) == hash(Schedule("flash2", block_q=16, block_kv=16))
    with pytest.raises(AttributeError):
        s.block_q = 32


def test_default_thread_tile_keeps_blocks_at_most_256_threads():
    s = Schedule("flash2", block_q=64, block_kv=128)
    assert s.threads <= 256 and (s.thread_q, s.thread_kv) == (8, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="flash3", block_q=16, block_kv=16), "unknown schedule kind 'flash3'"),
        (dict(kind="flash2", block_q=0, block_kv=16), "block_q: expected a positive int, got 0"),
        (dict(kind="flash2", block_q=16, block_kv=-4), "block_kv: expected a positive int, got -4"),
        (dict(kind="flash2", block_q=16, block_kv=16, thread_q=32), "thread_q=32 is larger than its block"),
        (dict(kind="flash2", block_q=64, block_kv=64, thread_q=1, thread_kv=1), "4096 threads exceeds 1024"),
        (dict(kind="flash2", block_q=512, block_kv=512), r"needs 1054720 bytes .* sram_bytes=232448"),
        (dict(kind="standard", block_q=8, block_kv=8, sram_bytes=0), "sram_bytes: expected a positive int"),
    ],
)
def test_bad_schedules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)


def test_block_size_must_be_an_int():
    with pytest.raises(TypeError, match="block_q: expected a positive int, got 1.5"):
        Schedule("flash2", block_q=1.5, block_kv=4)


def test_check_fits_names_footprint_and_capacity():
    s = Schedule("flash2", block_q=64, block_kv=64, sram_bytes=48 * 1024)
    s.check_fits(32, "float32")
    with pytest.raises(ValueError, match=r"needs 115456 bytes of SRAM at head_dim=128, float32, .* sram_bytes=49152"):
        s.check_fits(128, "float32")
    with pytest.raises(ValueError, match=f"head_dim=300 exceeds the largest supported head_dim \\({MAX_HEAD_DIM}\\)"):
        s.check_fits(300, "float32")


def test_footprint_counts_every_buffer():
    s = Schedule("flash2", block_q=16, block_kv=32)
    d = 64
    # Q, K, V tiles (fp16) + fp32 S tile + fp32 m, l, alpha
    assert s.sram_footprint(d, "float16") == 2 * (16 * d + 2 * 32 * d) + 4 * 16 * 32 + 4 * 3 * 16
    st_ = Schedule("standard", block_q=16, block_kv=32)
    phases = sram_buffers(st_, d, "float32")
    assert set(phases) == {"qk", "softmax", "pv"}
    assert st_.sram_footprint(d, "float32") == max(4 * (16 * d + 32 * d), 4 * 2 * (st_.threads + 1), 4 * (16 * 32 + 32 * d))


@given(
    st.integers(2**12, 2**18),
    st.sampled_from([16, 32, 64, 128, 256]),
    st.sampled_from(["flash1", "flash2", "standard"]),
    st.sampled_from(["float32", "float16"]),
)
def test_from_sram_follows_the_paper_rule_and_fits(m_bytes, d, kind, dtype):
    try:
        s = Schedule.from_sram(m_bytes, head_dim=d, kind=kind, dtype=dtype)
    except ValueError as e:
        assert "cannot hold even 1x1 tiles" in str(e)
        return
    m = m_bytes // np.dtype(dtype).itemsize
    bc_rule = math.ceil(m / (4 * d))
    assert s.block_kv <= bc_rule and s.block_q == min(s.block_kv, d)
    assert s.sram_footprint(d, dtype) <= m_bytes
    if s.block_kv < bc_rule:  # lowered: the rule's own blocks must not have fitted
        with pytest.raises(ValueError):
            Schedule(kind, block_q=min(bc_rule, d), block_kv=bc_rule, sram_bytes=m_bytes).check_fits(d, dtype)


def test_from_sram_keeps_the_rule_when_it_fits():
    # M = 1 MiB fp32 = 262144 elements, d = 64: Bc = 1024, Br = 64; footprint 803584 bytes fits
    s = Schedule.from_sram(2**20, head_dim=64, kind="flash1")
    assert (s.block_q, s.block_kv) == (64, 1024)
    # M = 64 KiB fp32 = 16384 elements, d = 16: Bc = 256, Br = 16; footprint 50368 bytes fits
    s = Schedule.from_sram(64 * 1024, head_dim=16, kind="flash2")
    assert (s.block_q, s.block_kv) == (16, 256)


def test_problem_validates_and_defaults_scale():
    p = Problem(batch=1, heads=2, n_q=3, n_kv=5, head_dim=16, dtype="float16")
    assert p.scale == 0.25 and p.dtype == np.float16 and not p.causal
    with pytest.raises(ValueError, match="n_kv: expected a positive int, got 0"):
        Problem(batch=1, heads=1, n_q=1, n_kv=0, head_dim=4)
    with pytest.raises(TypeError, match="unsupported dtype int8"):
        Problem(batch=1, heads=1, n_q=1, n_kv=1, head_dim=4, dtype="int8")
    with pytest.raises(TypeError, match="expected a NumPy dtype .* got 'bf17'"):
        Problem(batch=1, heads=1, n_q=1, n_kv=1, head_dim=4, dtype="bf17")
    with pytest.raises(ValueError, match="scale"):
        Problem(batch=1, heads=1, n_q=1, n_kv=1, head_dim=4, scale=float("nan"))


def test_tf32x3_takes_only_the_tensor_cores_tiles():
    """math="tf32x3" is flash2's tensor-core build: Br a multiple of 16, Bc of 8, thread tile 2 × Bc/4."""
    s = Schedule("flash2", 64, 32, math="tf32x3")  # unset: the tile the tensor cores need
    assert (s.thread_q, s.thread_kv) == (2, 8)
    assert Schedule("flash2", 128, 64, thread_q=2, thread_kv=16, math="tf32x3").threads == 64 * 4
    with pytest.raises(ValueError, match=r"math='tf32x3' needs the thread tile 2x8 \(thread_q=2, thread_kv=block_kv/4\)"):
        Schedule("flash2", 64, 32, thread_q=4, thread_kv=4, math="tf32x3")
    with pytest.raises(ValueError, match="block_q a multiple of 16 .* got block_q=24"):
        Schedule("flash2", 24, 16, math="tf32x3")
    with pytest.raises(ValueError, match="block_kv a multiple of 8, got block_q=16, block_kv=12"):
        Schedule("flash2", 16, 12, math="tf32x3")
    assert Schedule("flash2", 24, 16, thread_q=4, thread_kv=4).math == "fma"  # any tile for the FMA builds
