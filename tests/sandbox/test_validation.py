"""Every bad input gets an error that names the argument, what it got and what it expected."""

import numpy as np
import pytest

from sandbox import reference_attention
from sandbox.vocabulary.validation import check_qkv

Q = np.zeros((1, 2, 5, 4), np.float32)
KV = np.zeros((1, 2, 7, 4), np.float32)


@pytest.mark.parametrize(
    "q, k, v, err, match",
    [
        (Q[0], KV, KV, ValueError, r"q: expected shape \(B, H, Nq, d\), got \(2, 5, 4\) \(3 dims\)"),
        (Q, KV[0], KV, ValueError, r"k: expected shape \(B, H, Nk, d\), got \(2, 7, 4\)"),
        (Q, KV, KV[None], ValueError, r"v: expected shape \(B, H, Nk, d_v\), got \(1, 1, 2, 7, 4\)"),
        (Q, np.zeros((2, 2, 7, 4), np.float32), KV, ValueError, r"k: expected shape \(1, 2, Nk, 4\)"),
        (Q, np.zeros((1, 3, 7, 4), np.float32), KV, ValueError, r"k: expected shape \(1, 2, Nk, 4\)"),
        (Q, np.zeros((1, 2, 7, 3), np.float32), KV, ValueError, r"k: expected shape \(1, 2, Nk, 4\)"),
        (Q, KV, np.zeros((1, 2, 6, 4), np.float32), ValueError, r"v: expected shape \(1, 2, 7, 4\)"),
        (Q[:, :, :0], KV, KV, ValueError, r"q: every dimension must be non-empty, got shape \(1, 2, 0, 4\)"),
        (Q, KV[:, :, :0], KV[:, :, :0], ValueError, r"k: every dimension must be non-empty"),
        (Q.astype(np.int32), KV, KV, TypeError, r"q: unsupported dtype int32"),
        (Q, KV.astype(np.complex64), KV, TypeError, r"k: unsupported dtype complex64"),
        (Q, KV, KV.astype(np.float16), TypeError, r"q, k, v: expected one dtype"),
        (Q.tolist(), KV, KV, TypeError, r"q: expected a NumPy array or a CUDA array .* got list"),
        (Q, "k", KV, TypeError, r"k: expected a NumPy array .* got str"),
    ],
)
def test_bad_inputs(q, k, v, err, match):
    with pytest.raises(err, match=match):
        check_qkv(q, k, v)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), "big", True])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale: expected a finite float or None"):
        check_qkv(Q, KV, KV, scale=scale)


def test_float64_is_for_the_reference_only():
    q64, kv64 = Q.astype(np.float64), KV.astype(np.float64)
    with pytest.raises(TypeError, match="q: unsupported dtype float64; expected one of float32, float16, bfloat16"):
        check_qkv(q64, kv64, kv64)
    assert reference_attention(q64, kv64, kv64).shape == Q.shape


def test_reference_rejects_device_like_objects():
    class FakeDevice:
        __cuda_array_interface__ = {"shape": (1, 2, 5, 4), "typestr": "<f4", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match="q: the reference takes NumPy arrays, got FakeDevice"):
        reference_attention(FakeDevice(), KV, KV)


def test_mixed_host_and_device_inputs():
    class FakeDevice:
        __cuda_array_interface__ = {"shape": (1, 2, 7, 4), "typestr": "<f4", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match="all on the host .* or all on the GPU"):
        check_qkv(Q, FakeDevice(), KV)


def test_good_inputs_give_the_problem():
    p = check_qkv(Q, KV, KV, causal=True, scale=0.5)
    assert (p.batch, p.heads, p.n_q, p.n_kv, p.head_dim, p.dtype.name, p.causal, p.scale) == (
        1, 2, 5, 7, 4, "float32", True, 0.5,
    )
