"""Mask predicates (sandbox/vocabulary/masks.py): the built-ins' semantics, combinators, errors, tile classes."""

import random

import numba
import numpy as np
import pytest

from sandbox import Problem, Schedule, masks
from sandbox.vocabulary.reference import causal_mask


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
    from sandbox import simulate

    s = Schedule("flash2", block_q=4, block_kv=4)
    with pytest.raises(TypeError, match="must return a bool"):
        simulate(s, Problem(1, 1, 8, 8, 4), mask=lambda b, h, q, k: q)
    with pytest.raises(TypeError, match="must return a bool"):
        simulate(s, Problem(1, 1, 8, 8, 4), mask=lambda b, h, q, k: q, backward=True)
    with pytest.raises(ValueError, match="has no backward pass"):
        simulate(Schedule("splitkv", block_q=4, block_kv=4), Problem(1, 1, 8, 8, 4), mask=masks.causal(), backward=True)


@pytest.mark.parametrize("value", [True, False])
def test_constant_masks_are_accepted(value):
    m = masks.as_mask(lambda b, h, q, k: value)
    m.check(Problem(1, 2, 5, 3, 4))
    assert (dense(m) == value).all()
    assert (dense(~m) != value).all()


LAYOUT = np.arange(12)


def reads_past_layout(b, h, q_idx, kv_idx):
    return LAYOUT[(7 * q_idx + kv_idx) % 13] >= 0  # index 12 at (q_idx=1, kv_idx=5), not at the box's corners


def raises_at_row_3(b, h, q_idx, kv_idx):
    return 1 // (q_idx - 3) >= 0


def coin(b, h, q_idx, kv_idx):
    return random.random() < 0.5


@pytest.mark.parametrize("fn, match", [
    (reads_past_layout, r"mask reads_past_layout raised IndexError at \(b=0, h=0, q_idx=1, kv_idx=5\)"),
    (raises_at_row_3, r"mask raises_at_row_3 raised ZeroDivisionError at \(b=0, h=0, q_idx=3, kv_idx=0\)"),
    (coin, r"mask coin is not deterministic: at \(b=0, h=0, q_idx=\d+, kv_idx=\d+\) it returned"),
])
def test_predicate_is_checked_over_the_whole_box(fn, match):
    """Away from the corners: an index past a captured array, an exception, a coin toss."""
    with pytest.raises(ValueError, match=match):
        masks.as_mask(fn).check(Problem(1, 1, 10, 10, 4))


@pytest.mark.parametrize("fn, match", [
    (reads_past_layout, r"mask reads_past_layout raised IndexError at \(b=0, h=0, q_idx=1, kv_idx=5\)"),
    (raises_at_row_3, r"mask raises_at_row_3 raised ZeroDivisionError at \(b=0, h=0, q_idx=3"),
])
def test_simulator_and_reference_name_a_predicate_that_raises(fn, match):
    from sandbox import simulate

    with pytest.raises(ValueError, match=match):
        masks.dense(fn, 1, 1, 10, 10)
    with pytest.raises(ValueError, match=match):
        simulate(Schedule("flash2", block_q=4, block_kv=4), Problem(1, 1, 10, 10, 4), mask=fn)


def test_large_boxes_are_sampled(monkeypatch):
    """Above DENSE_CHECK_ENTRIES the check samples, and the simulator's tiles come from a loop over them."""
    monkeypatch.setattr(masks, "DENSE_CHECK_ENTRIES", 50)
    monkeypatch.setattr(masks, "SAMPLED_POINTS", 400)
    p = Problem(2, 2, 10, 10, 4, causal=True)
    with pytest.raises(ValueError, match=r"raised IndexError at \(b=\d, h=\d, q_idx=\d, kv_idx=\d\)"):
        masks.as_mask(lambda b, h, q, k: LAYOUT[q + k] >= 0).check(p)
    with pytest.raises(ValueError, match="not deterministic"):
        masks.as_mask(coin).check(p)
    masks.document([3, 4]).check(p)
    sampled = masks.tile_allowed(masks.document([3, 4]) & masks.sliding_window(2), p, 4, 3)
    monkeypatch.setattr(masks, "DENSE_CHECK_ENTRIES", 1 << 24)
    dense_tiles = masks.tile_allowed(masks.document([3, 4]) & masks.sliding_window(2), p, 4, 3)
    np.testing.assert_array_equal(sampled, dense_tiles)


def test_check_simulator_and_reference_share_one_evaluation(monkeypatch):
    from sandbox import simulate

    calls = []
    evaluate_box = masks.Mask._evaluate_box
    monkeypatch.setattr(masks.Mask, "_evaluate_box", lambda self, box: calls.append(box) or evaluate_box(self, box))
    m, p = masks.sliding_window(2), Problem(1, 2, 9, 7, 4, causal=True)
    simulate(Schedule("flash2", block_q=4, block_kv=4), p, mask=m)
    assert calls == [(1, 2, 9, 7)] * 2  # the check evaluates twice (determinism); the simulator reuses the first
    simulate(Schedule("flash1", block_q=2, block_kv=4), p, mask=m)
    a = masks.dense(m, 1, 2, 9, 7, causal=True)
    assert len(calls) == 2
    a[:] = False  # the caller's copy: the kept evaluation is untouched
    assert masks.dense(m, 1, 2, 9, 7).any()


BIG = np.zeros(40_000, np.uint8)


def reads_big(b, h, q_idx, kv_idx):
    return BIG[q_idx] == 0


READS_BIG = numba.njit(reads_big)  # a compiled helper the predicate calls

@pytest.mark.parametrize("make, match", [
    (lambda: masks.Mask(reads_big), r"mask reads_big: captures an array of 40000 bytes"),
    (lambda: masks.causal() & masks.Mask(lambda b, h, q, k: BIG[q] == 0, name="big"),
     r"mask \(causal & big\): captures an array of 40000 bytes"),
    (lambda: masks.Mask(lambda b, h, q, k: READS_BIG(b, h, q, k), name="calls"), "mask calls: captures"),
])
def test_every_mask_s_captured_arrays_fit_constant_memory(make, match):
    with pytest.raises(ValueError, match=match + ".*constant memory"):
        make().check(Problem(1, 1, 4, 4, 4))


def test_captured_arrays_together_fit_constant_memory():
    a, b, c = (np.zeros(30_000, np.uint8) for _ in range(3))
    m = masks.Mask(lambda bb, h, q, k: a[q] == b[k] and c[q] == 0, name="three")
    assert len(m.captured_arrays()) == 3
    with pytest.raises(ValueError, match="mask three: captures 90000 bytes of arrays in all"):
        m.check(Problem(1, 1, 4, 4, 4))


def test_cuda_compilation_is_tried_before_launch():
    """On a GPU the device function is compiled by the check; a failure names the mask. (Under the
    simulator the device function is Python: nothing to compile, and the check passes.)"""
    from numba.core.errors import TypingError

    class Unsupported:
        def compile_device(self, args):
            raise TypingError("Failed in cuda mode pipeline\nUse of unsupported NumPy function 'numpy.zeros'")

    m = masks.Mask(lambda b, h, q, k: q >= k, name="on_cpu_only")
    m.check(Problem(1, 1, 4, 4, 4))
    m.__dict__["_device"] = Unsupported()
    with pytest.raises(TypeError, match="mask on_cpu_only: Numba cannot compile it for CUDA .*: Failed in cuda mode"):
        m.check(Problem(1, 1, 4, 4, 4))


@pytest.mark.gpu
def test_cuda_only_failure_is_refused_on_a_gpu():
    m = masks.Mask(lambda b, h, q, k: np.zeros(4)[q % 4] == 0, name="allocates")
    m.cpu()  # fine for the CPU
    with pytest.raises(TypeError, match="mask allocates: Numba cannot compile it for CUDA"):
        m.check(Problem(1, 1, 4, 4, 4))


def test_masks_by_spec():
    """from_spec builds the built-in each spec names; block_sparse's random layout is over the blocks given."""
    n = 40
    entries = lambda m: [[bool(m(0, 0, q, k)) for k in range(n)] for q in range(n)]  # noqa: E731 (Python: no compiling)
    layout = masks.random_block_layout(5, 3, 0.5, 7)
    for spec, want in [("sliding_window:3", masks.sliding_window(3)), ("prefix_lm:8", masks.prefix_lm(8)),
                       ("document:10,25", masks.document([10, 25])), (" document: 10, 25 ", masks.document([10, 25])),
                       ("block_sparse:0.5:7", masks.block_sparse(layout, 8, 16))]:
        assert entries(masks.from_spec(spec, n, n, 8, 16)) == entries(want), spec
    assert masks.parse_spec("block_sparse:0.25") == ("block_sparse", (0.25, 0))
    assert masks.parse_spec("document:1000,3096") == ("document", (1000, 3096))
    assert masks.parse_spec("sliding_window:0") == ("sliding_window", 0)


@pytest.mark.parametrize("spec, why", [
    ("", "unknown mask ''"),
    ("window:3", "unknown mask 'window'"),
    ("causal", "unknown mask 'causal'"),
    ("sliding_window", "sliding_window takes arguments"),
    ("sliding_window:-1", "W -1 is under 0"),
    ("prefix_lm:1.5", "P '1.5' is not an integer"),
    ("document:10,,5", "a length '' is not an integer"),
    ("document:10,0", "a length 0 is under 1"),
    ("block_sparse:0", "DENSITY 0.0 is outside 0 < DENSITY <= 1"),
    ("block_sparse:half", "DENSITY 'half' is not a number"),
    ("block_sparse:0.5:x", "SEED 'x' is not an integer"),
])
def test_a_bad_mask_spec_says_which_forms_there_are(spec, why):
    with pytest.raises(ValueError) as e:
        masks.from_spec(spec, 64, 64, 16, 16)
    assert str(e.value) == (f"mask spec {spec!r}: {why}; expected one of sliding_window:W, prefix_lm:P, "
                            "document:L1,L2,..., block_sparse:DENSITY[:SEED]")
