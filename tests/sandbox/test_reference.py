"""Properties of the float64 NumPy reference."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox import reference_attention
from tests.strategies import magnitudes, make_inputs, problems, seeds

# The reference is plain NumPy: shapes can be larger than kernel tests use.
ref_problems = problems(max_n=40, max_d=64, dtypes=("float32",))


def direct_row(q_row, k, v, scale, n_visible):
    """softmax for one query row written out term by term with math.exp."""
    logits = [scale * float(np.dot(q_row, k[j])) for j in range(n_visible)]
    m = max(logits)
    w = [math.exp(x - m) for x in logits]
    z = sum(w)
    return sum(w[j] / z * v[j] for j in range(n_visible)), m + math.log(z)


@given(ref_problems, seeds, magnitudes)
def test_matches_direct_per_row_formula(problem, seed, magnitude):
    q, k, v = (x.astype(np.float64) for x in make_inputs(problem, seed, magnitude))
    out, lse = reference_attention(q, k, v, causal=problem.causal, scale=problem.scale, return_lse=True)
    for b in range(problem.batch):
        for h in range(problem.heads):
            for i in range(problem.n_q):
                n_vis = min(i + 1, problem.n_kv) if problem.causal else problem.n_kv
                row, row_lse = direct_row(q[b, h, i], k[b, h], v[b, h], problem.scale, n_vis)
                np.testing.assert_allclose(out[b, h, i], row, rtol=1e-12, atol=1e-12)
                assert abs(lse[b, h, i] - row_lse) <= 1e-12 * max(1.0, abs(row_lse))


@given(ref_problems, seeds, magnitudes)
def test_weights_sum_to_one(problem, seed, magnitude):
    q, k, _ = make_inputs(problem, seed, magnitude)
    ones = np.ones_like(k)
    out = reference_attention(q, k, ones, causal=problem.causal, scale=problem.scale)
    np.testing.assert_allclose(out, 1.0, rtol=0, atol=1e-12)


@given(ref_problems, seeds, st.randoms(use_true_random=False))
def test_permuting_keys_and_values_together_changes_nothing(problem, seed, rnd):
    q, k, v = make_inputs(problem, seed)
    perm = list(range(problem.n_kv))
    rnd.shuffle(perm)
    out = reference_attention(q, k, v, scale=problem.scale)
    out_perm = reference_attention(q, k[:, :, perm], v[:, :, perm], scale=problem.scale)
    np.testing.assert_allclose(out_perm, out, rtol=1e-12, atol=1e-12)


@given(ref_problems, seeds)
def test_causal_rows_ignore_later_keys(problem, seed):
    q, k, v = make_inputs(problem, seed)
    out = reference_attention(q, k, v, causal=True, scale=problem.scale)
    rng = np.random.default_rng(seed + 1)
    for i in range(problem.n_q):
        k2, v2 = k.copy(), v.copy()
        k2[:, :, i + 1 :] = rng.standard_normal(k2[:, :, i + 1 :].shape)
        v2[:, :, i + 1 :] = rng.standard_normal(v2[:, :, i + 1 :].shape)
        out2 = reference_attention(q, k2, v2, causal=True, scale=problem.scale)
        np.testing.assert_array_equal(out2[:, :, i], out[:, :, i])


def test_huge_logits_stay_finite():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, 5, 4)) * 1e3
    k = rng.standard_normal((1, 1, 7, 4)) * 1e3
    v = rng.standard_normal((1, 1, 7, 4))
    out, lse = reference_attention(q, k, v, return_lse=True)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    # with logits ~1e6 apart the softmax is one-hot on the argmax key
    s = np.einsum("id,jd->ij", q[0, 0], k[0, 0])
    np.testing.assert_allclose(out[0, 0], v[0, 0, s.argmax(axis=1)], atol=1e-12)


def test_cross_attention_shapes():
    q, k, v = np.zeros((2, 3, 5, 4)), np.zeros((2, 3, 9, 4)), np.ones((2, 3, 9, 4))
    out, lse = reference_attention(q, k, v, causal=True, return_lse=True)
    assert out.shape == (2, 3, 5, 4) and lse.shape == (2, 3, 5)
    # causal row i sees i+1 equal logits of 0
    np.testing.assert_allclose(lse[0, 0], np.log(np.arange(1, 6)), rtol=1e-15)


def test_nan_propagates():
    q, k, v = np.ones((1, 1, 3, 2)), np.ones((1, 1, 3, 2)), np.ones((1, 1, 3, 2))
    k[0, 0, 1, 0] = np.nan
    out = reference_attention(q, k, v)
    assert np.isnan(out).all()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_returns_float64(dtype):
    x = np.ones((1, 1, 2, 2), dtype=dtype)
    assert reference_attention(x, x, x).dtype == np.float64


# -- Numerics at the edges: what a row does not see adds nothing to it, even NaN or inf


def test_weighted_sum_skips_zero_weights_and_keeps_plain_arithmetic_elsewhere():
    from sandbox.vocabulary.reference import weighted_sum

    w = np.array([[0.0, 0.5, 0.5, 0.0], [0.25, 0.25, 0.0, 0.5], [0.0, -1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    x = np.array([[np.nan, 1.0], [2.0, np.inf], [4.0, -np.inf], [np.inf, 3.0]])
    expected = np.array([
        [3.0, np.nan],  # inf + -inf
        [np.nan, np.inf],  # 0.25·NaN; 0.25·inf (and x[3]'s inf through 0.5 on column 0: NaN already)
        [2.0, -np.inf],  # -1·inf + 1·-inf = -inf
        [0.0, 0.0],  # no weight: nothing, not 0·NaN
    ])
    np.testing.assert_array_equal(weighted_sum(w, x), expected)
    finite = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    np.testing.assert_array_equal(weighted_sum(w, finite), w @ finite)


def test_minus_inf_logit_is_weight_zero():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 6, 4)) for _ in range(3))
    q = np.abs(q)
    k[:, :, 2, 0] = -np.inf
    keep = np.arange(6) != 2
    out, lse = reference_attention(q, k, v, return_lse=True)
    ref, ref_lse = reference_attention(q, k[:, :, keep], v[:, :, keep], return_lse=True)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-12)


def test_document_padding_garbage_reaches_no_valid_row():
    from sandbox import masks

    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 1, 9, 4)) for _ in range(3))
    mask = masks.document([3, 4])
    clean = reference_attention(q, k, v, mask=mask)
    q[..., 7:, :], k[..., 7:, :], v[..., 7:, :] = np.nan, np.inf, np.nan
    out = reference_attention(q, k, v, mask=mask)
    np.testing.assert_array_equal(out, clean)
    assert np.isfinite(out).all() and (out[..., 7:, :] == 0).all()


def test_causal_nan_reaches_only_the_rows_that_see_it():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 1, 8, 4)) for _ in range(3))
    clean = reference_attention(q, k, v, causal=True)
    v[..., 5, :] = np.nan
    k[..., 5, 0] = np.nan
    out = reference_attention(q, k, v, causal=True)
    np.testing.assert_array_equal(out[..., :5, :], clean[..., :5, :])
    assert np.isnan(out[..., 5:, :]).all()


def test_backward_masked_nan_reaches_no_gradient_of_rows_that_do_not_see_it():
    from sandbox import reference_attention_backward

    rng = np.random.default_rng(3)
    q, k, v, dout = (rng.standard_normal((1, 1, 8, 4)) for _ in range(4))
    clean = reference_attention_backward(q[..., :5, :], k[..., :5, :], v[..., :5, :], dout[..., :5, :], causal=True)
    k[..., 5, :], v[..., 5, :] = np.nan, np.inf
    dq, dk, dv = reference_attention_backward(q, k, v, dout, causal=True)
    np.testing.assert_allclose(dq[..., :5, :], clean[0], rtol=1e-12, atol=1e-15)
    assert np.isnan(dq[..., 5:, :]).all()
