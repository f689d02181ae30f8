"""Entry points refuse arguments of the wrong type or value, naming the argument, before any work."""

import numpy as np
import pytest

from sandbox import Problem, Schedule
from sandbox import attention, attention_backward, simulate
from sandbox.vocabulary.reference import reference_attention, reference_attention_backward

SCHEDULE = Schedule("flash2", block_q=4, block_kv=4)
X = np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32)


@pytest.mark.parametrize("causal", ["False", "", 0, 1, None, np.array([True])])
def test_causal_must_be_a_bool(causal):
    for call in (lambda: attention(X, X, X, SCHEDULE, causal=causal),
                 lambda: attention_backward(X, X, X, X, X[..., 0], X, SCHEDULE, causal=causal),
                 lambda: reference_attention(X, X, X, causal=causal),
                 lambda: reference_attention_backward(X, X, X, X, causal=causal),
                 lambda: Problem(1, 1, 4, 4, 4, causal=causal)):
        with pytest.raises(TypeError, match="causal: expected True or False"):
            call()


def test_numpy_bools_are_bools():
    assert Problem(1, 1, 4, 4, 4, causal=np.bool_(True)).causal is True
    np.testing.assert_allclose(reference_attention(X, X, X, causal=np.True_), reference_attention(X, X, X, causal=True))


@pytest.mark.parametrize("scale", ["0.5", b"1", 1j, np.array(0.5), [0.5], np.True_])
def test_scale_must_be_a_real_number(scale):
    with pytest.raises(ValueError, match="scale: expected a finite float"):
        attention(X, X, X, SCHEDULE, scale=scale)
    with pytest.raises(ValueError, match="scale: expected a finite float"):
        Problem(1, 1, 4, 4, 4, scale=scale)


@pytest.mark.parametrize("flag", ["return_lse", "count_io", "fast"])
def test_attention_flags_must_be_bools(flag):
    with pytest.raises(TypeError, match=f"{flag}: expected True or False"):
        attention(X, X, X, SCHEDULE, **{flag: "no"})


@pytest.mark.parametrize("dtype", ["U3", np.int32, np.int64, np.complex64, np.float16])
def test_backward_lse_must_be_float(dtype):
    lse = np.zeros((1, 1, 4)).astype(dtype)
    with pytest.raises(TypeError, match="lse: expected float32"):
        attention_backward(X, X, X, X, lse, X, SCHEDULE)


@pytest.mark.parametrize("backward", ["no", 0, None])
def test_simulate_backward_must_be_a_bool(backward):
    with pytest.raises(TypeError, match="backward: expected True or False"):
        simulate(SCHEDULE, Problem(1, 1, 8, 8, 4), backward=backward)


def test_from_sram_names_an_unknown_kind():
    with pytest.raises(ValueError, match="kind: unknown schedule kind 'nope'"):
        Schedule.from_sram(65536, head_dim=64, kind="nope")
    with pytest.raises(TypeError, match="kind: expected a kind name"):
        Schedule.from_sram(65536, head_dim=64, kind=None)
    with pytest.raises(TypeError, match="kind: expected a kind name"):
        Schedule(["flash2"], block_q=4, block_kv=4)


def test_reference_backward_names_dout_out_and_lse():
    with pytest.raises(ValueError, match=r"dout: expected shape \(1, 1, 4, 4\)"):
        reference_attention_backward(X, X, X, X[:, :, :2])
    with pytest.raises(TypeError, match="dout: expected a NumPy array"):
        reference_attention_backward(X, X, X, X.tolist())
    with pytest.raises(ValueError, match="out: expected shape"):
        reference_attention_backward(X, X, X, X, out=X[..., :2])
    with pytest.raises(ValueError, match=r"lse: expected shape \(1, 1, 4\)"):
        reference_attention_backward(X, X, X, X, lse=X)
    with pytest.raises(TypeError, match="dout: unsupported dtype"):
        reference_attention_backward(X, X, X, X.astype(np.complex64))


def test_batch_times_heads_over_the_grid_limit_is_refused():
    x = np.zeros((1, 65536, 1, 1), np.float32)
    schedule = Schedule("flash2", block_q=1, block_kv=1)
    with pytest.raises(ValueError, match="batch, heads: batch × heads = 1 × 65536 = 65536 .* 65535"):
        attention(x, x, x, schedule)
    with pytest.raises(ValueError, match="batch, heads: .* 65535"):
        attention_backward(x, x, x, x, x[..., 0], x, schedule)


def test_q_blocks_over_the_grid_limit_are_refused():
    q, kv = np.zeros((1, 1, 65536, 1), np.float32), np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="'qk' kernel: its grid .* 65535"):
        attention(q, kv, kv, Schedule("standard", block_q=1, block_kv=1))
