"""Mask predicates (sandbox/masks.py): the built-ins' semantics, combinators, errors, tile classes."""

import numpy as np
import pytest

from sandbox import Problem, Schedule, masks
from sandbox.reference import causal_mask


def dense(m, n_q=12, n_kv=10, batch=1, heads=2, causal=False):
    return masks.dense(m, batch, heads, n_q, n_kv, causal=causal)


def test_causal_is_the_reference_causal_mask():
    np.testing.assert_array_equal(dense(masks.causal())[0, 0], causal_mask(12, 10))
    np.testing.assert_array_equal(dense(None or masks.prefix_lm(0))[0, 1], causal_mask(12, 10))


def test_sliding_window_prefix_lm_document():
    i, j = np.arange(12)[:, None], np.arange(10)[None, :]
    np.testing.assert_array_equal(dense(masks.sliding_window(2))[0, 0], np.abs(i - j) <= 2)
    np.testing.assert_array_equal(dense(masks.prefix_lm(3))[0, 0], (j < 3) | (j <= i))
    doc = np.repeat([0, 1, 2], [4, 3, 2])  # 9 positions in documents; 10, 11 in none
    want = np.zeros((12, 10), bool)
    want[:9, :9] = doc[:, None] == doc[None, :]
    np.testing.assert_array_equal(dense(masks.document([4, 3, 2]))[0, 1], want)


def test_block_sparse_per_head_and_combinators():
    lay = np.array([[[1, 0], [0, 1]], [[0, 1], [1, 1]]], bool)  # (H, 2, 2), blocks of 6 x 5
    d = dense(masks.block_sparse(lay, 6, 5))
    for h in range(2):
        np.testing.assert_array_equal(d[0, h], np.kron(lay[h], np.ones((6, 5), bool)))
    a, b = masks.sliding_window(1), masks.causal()
    np.testing.assert_array_equal(dense(a & b), dense(a) & dense(b))
    np.testing.assert_array_equal(dense(a | b), dense(a) | dense(b))
    np.testing.assert_array_equal(dense(~a), ~dense(a))
    np.testing.assert_array_equal(dense(a, causal=True), dense(a) & dense(b))
    plain = dense(lambda bb, h, q, k: (q + h) % 2 == 0)  # a plain function works too
    assert plain[0, 0, 0].all() and not plain[0, 1, 0].any()


def test_tile_classes():
    s = Schedule("flash2", block_q=4, block_kv=4)
    p = Problem(1, 1, 8, 8, 16)
    assert masks.tile_classes(masks.causal(), s, p) == (1, 2, 1)  # (empty, partial, full) of a 2 x 2 tiling
    assert masks.tile_classes(masks.sliding_window(0), s, p) == (2, 2, 0)
    a = masks.tile_allowed(masks.causal(), Problem(2, 3, 9, 7, 4), 4, 3)
    assert a.shape == (2, 3, 3, 3) and a.sum() == 6 * dense(masks.causal(), 9, 7)[0, 0].sum()


@pytest.mark.parametrize("fn, err, match", [
    (lambda b, h, q: True, TypeError, r"four arguments mask\(b, h, q_idx, kv_idx\)"),
    (lambda b, h, q, k: q - k, TypeError, "must return a bool, but returns int64"),
    (lambda b, h, q, k: 1 / 0 > 0, ValueError, r"raised ZeroDivisionError at \(b=0, h=0, q_idx=0, kv_idx=0\)"),
    (lambda b, h, q, k: np.arange(4)[q] > 0, ValueError, r"raised IndexError at .*q_idx=5"),
    (lambda b, h, q, k: object() is not None, TypeError, "Numba cannot compile it"),
    (3, TypeError, "expected a function"),
])
def test_bad_predicates_are_refused_before_launch(fn, err, match):
    with pytest.raises(err, match=match):
        masks.as_mask(fn).check(Problem(1, 1, 10, 10, 4))


@pytest.mark.parametrize("make, match", [
    (lambda: masks.sliding_window(-1), "window: expected a non-negative int"),
    (lambda: masks.document([3, 0]), "lengths: expected"),
    (lambda: masks.block_sparse(np.ones((2, 2)), 4, 4), "layout: expected a non-empty bool array"),
    (lambda: masks.block_sparse(np.ones((200, 200), bool), 4, 4), "constant memory"),
    (lambda: masks.random_block_layout(2, 2, 0), "density"),
])
def test_bad_builtin_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_simulate_and_reference_reject_what_the_kernels_would():
    from sandbox.lab import simulate

    s = Schedule("flash2", block_q=4, block_kv=4)
    with pytest.raises(TypeError, match="must return a bool"):
        simulate(s, Problem(1, 1, 8, 8, 4), mask=lambda b, h, q, k: q)
    with pytest.raises(NotImplementedError, match="backward"):
        simulate(s, Problem(1, 1, 8, 8, 4), mask=masks.causal(), backward=True)
