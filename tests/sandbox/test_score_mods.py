"""score_mods (sandbox/vocabulary/score_mods.py): the built-ins' semantics and derivatives, the float64
reference with a score_mod, refusals before any launch, and the simulator's count of captured arrays."""

import math
import random

import numpy as np
import pytest

from sandbox import (Problem, Schedule, attention, attention_backward, masks, reference_attention,
                     reference_attention_backward, score_mods, simulate)
from sandbox.vocabulary.reference import causal_mask

PROBLEM = Problem(batch=1, heads=2, n_q=6, n_kv=7, head_dim=4)


def _s(seed=0, shape=(1, 2, 6, 7), spread=3.0):
    return spread * np.random.default_rng(seed).standard_normal(shape)


def _grid(shape=(1, 2, 6, 7)):
    b, h, i, j = np.indices(shape)
    return b, h, i, j


def test_alibi_adds_the_slope_times_the_distance():
    slopes = np.array([0.5, -0.25])
    s = _s()
    _, h, i, j = _grid()
    np.testing.assert_allclose(score_mods.alibi(slopes).apply(s), s + slopes[h] * (j - i), rtol=0, atol=1e-15)
    np.testing.assert_allclose(score_mods.alibi_slopes(8), 2.0 ** (-np.arange(1, 9)), rtol=1e-7)


def test_relative_bias_clips_the_distance_to_the_table():
    table = np.arange(-2.0, 3.0) * 0.5  # R = 2: distances -2..2
    s = _s(1)
    _, h, i, j = _grid()
    want = s + table[np.clip(j - i, -2, 2) + 2]
    np.testing.assert_allclose(score_mods.relative_bias(table).apply(s), want, rtol=0, atol=1e-15)
    per_head = np.stack([table, -table])
    want = s + np.where(h == 0, 1, -1) * table[np.clip(j - i, -2, 2) + 2]
    np.testing.assert_allclose(score_mods.relative_bias(per_head).apply(s), want, rtol=0, atol=1e-15)


def test_soft_cap_keeps_scores_within_the_cap_and_its_grad_is_its_derivative():
    m = score_mods.soft_cap(2.0)
    s = _s(2, spread=10.0)
    np.testing.assert_allclose(m.apply(s), 2.0 * np.tanh(s / 2.0), rtol=1e-15)
    assert np.abs(m.apply(s)).max() <= 2.0
    np.testing.assert_allclose(m.derivative(s), 1 - np.tanh(s / 2.0) ** 2, rtol=0, atol=1e-15)  # 1 - t²: absolute


@pytest.mark.parametrize("mod", [score_mods.soft_cap(1.5), score_mods.alibi([0.3, 0.7]),
                                 score_mods.relative_bias(np.linspace(-1, 1, 5))], ids=repr)
def test_builtin_grads_equal_the_central_difference(mod):
    s = _s(3)
    fd = score_mods.ScoreMod(mod.fn, name="no grad").derivative(s)  # the same function, differentiated numerically
    np.testing.assert_allclose(mod.derivative(s), fd, rtol=0, atol=1e-8)


def test_a_plain_function_works_and_none_stays_none():
    assert score_mods.as_score_mod(None) is None
    m = score_mods.as_score_mod(lambda score, b, h, q_idx, kv_idx: score * 2.0 + h)
    assert isinstance(m, score_mods.ScoreMod) and m.grad is None
    assert m(1.5, 0, 1, 0, 0) == 4.0
    assert m.check(PROBLEM) is m


def test_captured_arrays_are_found_and_counted_in_words():
    assert score_mods.soft_cap(3.0).captured_arrays() == []
    assert score_mods.alibi(np.ones(3)).captured_words() == 3  # fp32 slopes
    assert score_mods.relative_bias(np.ones((2, 9))).captured_words() == 18
    tab = np.ones(5, np.int8)  # 5 bytes: 2 words
    m = score_mods.ScoreMod(lambda score, b, h, q_idx, kv_idx: score + tab[kv_idx % 5])
    assert m.captured_words() == 2


@pytest.mark.parametrize("fn, grad, err, match", [
    (lambda score, b, h, q: score, None, TypeError,
     r"five arguments score_mod\(score, b, h, q_idx, kv_idx\)"),
    (lambda score, b, h, q, k: q - k, None, TypeError, "must return a float .* returns int64"),
    (lambda score, b, h, q, k: score > 0, None, TypeError, "must return a float .* returns bool"),
    (lambda score, b, h, q, k: (score, score), None, TypeError, "must return a float .* returns UniTuple"),
    (lambda score, b, h, q, k: score + len(object.__name__), None, TypeError, "Numba cannot compile its score_mod"),
    (lambda score, b, h, q, k: score + np.arange(4.0)[q], None, ValueError,
     r"raised IndexError at \(score=.*q_idx=5"),
    (lambda score, b, h, q, k: score, lambda score, b, h, q, k: 1, TypeError, "its grad must return a float"),
    (lambda score, b, h, q, k: score, lambda score, b, h: 1.0, TypeError, "grad: expected a function of five"),
    (3, None, TypeError, "expected a function"),
])
def test_bad_score_mods_are_refused_before_launch(fn, grad, err, match):
    with pytest.raises(err, match=match):
        score_mods.ScoreMod(fn, grad=grad).check(Problem(1, 1, 10, 10, 4))


def test_a_score_mod_that_is_not_deterministic_is_refused():
    m = score_mods.ScoreMod(lambda score, b, h, q, k: score + random.random(), name="noisy")
    with pytest.raises(ValueError, match="noisy is not deterministic"):
        m.check(PROBLEM)


def test_an_index_past_the_slopes_is_refused():
    with pytest.raises(ValueError, match=r"IndexError at .*h=2"):
        score_mods.alibi([0.5, 0.25]).check(Problem(1, 3, 4, 4, 4))


@pytest.mark.parametrize("make, match", [
    (lambda: score_mods.alibi([]), "slopes: expected a non-empty 1-D array"),
    (lambda: score_mods.alibi([1.0, np.inf]), "slopes: expected finite"),
    (lambda: score_mods.relative_bias(np.ones(4)), "odd length"),
    (lambda: score_mods.relative_bias(np.ones(9001)), "constant memory"),
    (lambda: score_mods.soft_cap(0), "cap: expected a positive finite number"),
    (lambda: score_mods.soft_cap(True), "cap: expected a positive finite number"),
])
def test_bad_builtin_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_the_backward_needs_a_grad():
    m = score_mods.ScoreMod(lambda score, b, h, q, k: 2.0 * score, name="twice")
    with pytest.raises(TypeError, match=r"twice: the backward needs its derivative .* grad="):
        m.check(PROBLEM, backward=True)


def test_entry_points_refuse_before_launch():
    """attention, attention_backward and simulate check the score_mod first (here: wrong arity)."""
    q = np.zeros((1, 1, 4, 4), np.float32)
    s = Schedule("flash2", block_q=4, block_kv=4)
    bad = lambda score, b, h: score  # noqa: E731
    for call in (lambda: attention(q, q, q, schedule=s, score_mod=bad),
                 lambda: attention_backward(q, q, q, q, q[..., 0], q, schedule=s, score_mod=bad),
                 lambda: simulate(s, Problem(1, 1, 4, 4, 4), score_mod=bad),
                 lambda: reference_attention(q, q, q, score_mod=bad)):
        with pytest.raises(TypeError, match="five arguments"):
            call()


def _inputs(seed=0, n_q=6, n_kv=7, d=4, heads=2):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, heads, n_q, d))
    k = rng.standard_normal((1, heads, n_kv, d))
    v = rng.standard_normal((1, heads, n_kv, d))
    return q, k, v


def test_reference_applies_the_score_mod_before_the_mask_and_the_softmax():
    q, k, v = _inputs()
    scale = 0.5
    m = score_mods.soft_cap(1.0)
    window = masks.sliding_window(2)
    s = m.apply(scale * np.einsum("bhid,bhjd->bhij", q, k))
    keep = masks.dense(window, 1, 2, 6, 7) & causal_mask(6, 7)
    s = np.where(keep, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ v
    got = reference_attention(q, k, v, causal=True, scale=scale, mask=window, score_mod=m)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("mod", [score_mods.soft_cap(1.5), score_mods.alibi([0.3, -0.2]),
                                 score_mods.relative_bias(np.linspace(-1, 1, 5)),
                                 score_mods.ScoreMod(lambda score, b, h, q, k: score * score * 0.3 + 0.1 * k,
                                                     name="square")], ids=repr)
def test_reference_backward_is_the_gradient_of_the_reference(mod):
    """dQ, dK, dV of the reference equal central differences of ⟨dO, O⟩ through the reference forward
    (a user function without grad takes the checked central difference for score_mod')."""
    q, k, v = _inputs(4)
    dout = np.random.default_rng(5).standard_normal(q.shape)
    kw = dict(causal=True, scale=0.7, score_mod=mod, mask=masks.sliding_window(3))
    grads = reference_attention_backward(q, k, v, dout, **kw)
    loss = lambda q_, k_, v_: float((reference_attention(q_, k_, v_, **kw) * dout).sum())  # noqa: E731
    eps = 1e-6
    for which, g in enumerate(grads):
        for idx in [(0, 0, 1, 2), (0, 1, 4, 0), (0, 1, 5, 3)]:
            args = [q, k, v]
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[which][idx] += eps
            minus[which][idx] -= eps
            fd = (loss(*plus) - loss(*minus)) / (2 * eps)
            assert math.isclose(g[idx], fd, rel_tol=1e-6, abs_tol=1e-8), (which, idx, g[idx], fd)


def test_reference_backward_refuses_a_derivative_it_cannot_take_exactly():
    """A function that is not smooth at the central difference's step: the reference asks for grad=."""
    stairs = score_mods.ScoreMod(lambda score, b, h, q, k: math.floor(score * 1e6) / 1e6, name="stairs")
    q, k, v = _inputs(6)
    with pytest.raises(ValueError, match=r"stairs has no grad.*pass ScoreMod\(fn, grad=...\)"):
        reference_attention_backward(q, k, v, np.ones_like(q), score_mod=stairs)


@pytest.mark.parametrize("kind", ["standard", "flash1", "flash2", "splitkv"])
def test_simulator_counts_captured_words_per_visited_tile(kind):
    """Forward: one read of the captured arrays per visited tile; nothing for a score_mod without arrays;
    everything else as without a score_mod."""
    schedule = Schedule(kind, block_q=4, block_kv=8)
    problem = Problem(batch=2, heads=2, n_q=30, n_kv=40, head_dim=8, causal=True)
    plain = simulate(schedule, problem)
    cap = simulate(schedule, problem, score_mod=score_mods.soft_cap(5.0))
    assert cap == plain
    bias = simulate(schedule, problem, score_mod=score_mods.relative_bias(np.ones((2, 7))))
    visited = problem.bh * sum(min(-(-40 // 8), (min(4 * i + 4, 30) - 1) // 8 + 1) for i in range(-(-30 // 4)))
    assert bias.hbm_reads["mod"] == 14 * visited
    assert bias.hbm_bytes - plain.hbm_bytes == 4 * 14 * visited


def test_simulator_backward_counts():
    """Backward: flash kinds read the captured arrays in dkdv and dq; standard in p, and moves
    score_mod'(S) through HBM once each way."""
    problem = Problem(batch=1, heads=2, n_q=16, n_kv=16, head_dim=8)
    mod = score_mods.alibi([0.5, 0.25])
    for kind, reads in (("flash2", 2), ("flash1", 2), ("standard", 1)):
        s = Schedule(kind, block_q=4, block_kv=8)
        plain, modded = simulate(s, problem, backward=True), simulate(s, problem, backward=True, score_mod=mod)
        assert modded.hbm_reads["mod"] == reads * 2 * problem.bh * 4 * 2
        extra = ("mod", "dmod")  # everything else moves as without a score_mod
        assert {t: n for t, n in modded.hbm_reads.items() if t not in extra} == dict(plain.hbm_reads)
        assert {t: n for t, n in modded.hbm_writes.items() if t not in extra} == dict(plain.hbm_writes)
        assert modded.sram_reads == plain.sram_reads and modded.sram_writes == plain.sram_writes
        if kind == "standard":
            assert modded.hbm_writes["dmod"] == modded.hbm_reads["dmod"] == problem.bh * 16 * 16
        else:
            assert "dmod" not in modded.hbm_writes


def test_cli_simulate_and_run_take_a_builtin(capsys):
    from sandbox.cli import main

    assert main(["simulate", "--kind", "flash2", "--n", "64", "--d", "16", "--heads", "2", "--block-q", "16",
                 "--block-kv", "16", "--score-mod", "alibi"]) == 0
    out = capsys.readouterr().out
    mod_row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["mod"])
    assert "score_mod=alibi2" in out and mod_row[1] == str(2 * 2 * 16)  # 2 slopes, 2 heads, 16 tiles each
    assert main(["run", "--kind", "standard", "--n", "10", "--d", "4", "--causal", "--score-mod", "softcap:3"]) == 0
    out = capsys.readouterr().out
    assert "score_mod=softcap3" in out and "measured == simulated" in out


@pytest.mark.parametrize("argv, message", [
    (["simulate", "--score-mod", "cosine"], "argument --score-mod: unknown score_mod 'cosine'; expected one of alibi"),
    (["simulate", "--score-mod", "softcap"], "score_mod softcap takes a parameter: the cap"),
    (["simulate", "--score-mod", "softcap:-1"], "cap: expected a positive finite number"),
    (["simulate", "--score-mod", "alibi:2"], "score_mod alibi takes no parameter"),
    (["run", "--kind", "flash2", "--score-mod", "relbias:x"], "score_mod 'relbias:x'"),
])
def test_cli_bad_score_mod_is_one_line_and_exit_2(argv, message, capsys):
    from sandbox.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
