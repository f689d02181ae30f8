"""V's own head dim d_v: every kind against the float64 reference, forward and backward, and its counters
against the simulator.

q and k are (B, H, Nq|Nk, d), v is (B, H_kv, Nk, d_v) and O (B, H, Nq, d_v): S = QKᵀ contracts over d,
O = PV and dP = dO Vᵀ over d_v. d_v is drawn around d (about d/2 and 2d), with grouped K/V heads, causal
or not, and with or without a built-in mask.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import flash2 as flash2_kernels
from kernels import flash2_tc
from kernels.builds import HEAD_DIM_V_REFUSAL, choose_backward_build, choose_build
from kernels.flash2_tc import smem_bytes, tc_schedule
from kernels.tiles import make_tile_ops, value_ops
from sandbox import Problem, Schedule, attention, attention_backward, masks, register_kind, simulate
from sandbox.cli import main
from sandbox.vocabulary.footprints import flash2_sram
from sandbox.vocabulary.reference import expand_heads, reference_attention, reference_attention_backward
from sandbox.vocabulary.validation import check_qkv
from simulator.counts import flash2_counts, simulate_backward_counts, simulate_counts
from simulator.l2 import simulate_dram
from simulator.streams import tile_requests
from tests.strategies import BACKWARD_KINDS, KINDS, MASK_KINDS, SIMULATED, make_inputs, problems, schedules, seeds
from tests.tolerances import gradient_tolerances, tolerances

# "small" runs everywhere (under the simulator in CI); "large" needs a GPU.
SIZES = [pytest.param(dict(max_n=12, max_d=6), id="small"),
         pytest.param(dict(max_n=400, max_d=128), id="large", marks=pytest.mark.gpu)]


@st.composite
def problems_dv(draw, dtype, max_n, max_d):
    """A problem with a d_v of its own (about d/2 or 2d, never d), grouped K/V heads or not, causal or not."""
    base = draw(problems(max_n=max_n, max_d=max_d, dtypes=(dtype,), heads=(1, 1)))
    d = base.head_dim
    d_v = draw(st.sampled_from(sorted({max(1, d // 2), 2 * d, d + 1} - {d})))
    heads, heads_kv = draw(st.sampled_from([(1, 1), (2, 2), (2, 1), (4, 2)]))
    return Problem(**{**base.__dict__, "heads": heads, "heads_kv": heads_kv, "head_dim_v": d_v})


@st.composite
def built_in_mask(draw, problem):
    """None, or one of the built-in masks over ``problem``'s lengths."""
    n = max(problem.n_q, problem.n_kv)
    which = draw(st.sampled_from(["none", "window", "prefix", "document"]))
    if which == "window":
        return masks.sliding_window(draw(st.integers(0, max(1, n // 3))))
    if which == "prefix":
        return masks.prefix_lm(draw(st.integers(0, n)))
    if which == "document":
        return masks.document(draw(st.lists(st.integers(1, max(1, n // 2)), min_size=1, max_size=4)))
    return None


def dense_mask(mask, problem):
    return None if mask is None else masks.dense(mask, problem.batch, problem.heads, problem.n_q, problem.n_kv)


def o_stores(schedule, problem):
    """How often each row of O is rounded to the output dtype: once, or per visited K/V block for flash1."""
    return 1 if schedule.kind != "flash1" else -(-problem.n_kv // schedule.block_kv) + 1


def check_forward(schedule, problem, mask, seed):
    """O (B, H, Nq, d_v) and L against the float64 reference; the kernel's counters against the simulator."""
    q, k, v = make_inputs(problem, seed)
    assert v.shape[3] == problem.head_dim_v != q.shape[3]
    kw = dict(schedule=schedule, causal=problem.causal, scale=problem.scale, mask=mask, return_lse=True)
    out, lse, measured = attention(q, k, v, count_io=True, **kw)
    assert out.shape == q.shape[:3] + (problem.head_dim_v,) and out.dtype == q.dtype
    ref_out, ref_lse = reference_attention(q, k, v, causal=problem.causal, scale=problem.scale, return_lse=True,
                                           mask=mask)
    seen = np.isfinite(ref_lse)
    assert (lse[~seen] == -np.inf).all() and (out[~seen] == 0).all()  # rows that see no key
    atol_out, atol_lse = tolerances(q, k, v, ref_out, ref_lse, problem.causal, problem.scale, problem.dtype,
                                    o_stores(schedule, problem), allowed=dense_mask(mask, problem))
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(lse[seen], ref_lse[seen], rtol=0, atol=atol_lse)
    modelled = simulate(schedule, problem, mask=mask)
    assert measured == modelled, f"{schedule.describe()} {problem} {mask}: {measured.diff(modelled)}"
    # the counters compiled away: held to the same tolerance, not to the same bits (the counters'
    # branches cut the code into other basic blocks, and NVVM fuses a multiply and an add into one
    # FMA only inside one, so the two builds may round differently: on the H200, flash1's bf16 O
    # once differed in 1 element of 6880 by one bf16 ulp)
    plain_out, plain_lse = attention(q, k, v, **kw)
    np.testing.assert_allclose(plain_out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(plain_lse[seen], ref_lse[seen], rtol=0, atol=atol_lse)


def check_backward(schedule, problem, mask, seed):
    """dQ (d), dK (d) and dV (d_v) against the float64 gradients of the same saved forward; the backward's
    counters against the simulator; bit-identical across runs."""
    q, k, v = make_inputs(problem, seed)
    kw = dict(schedule=schedule, causal=problem.causal, scale=problem.scale, mask=mask)
    out, lse = attention(q, k, v, return_lse=True, **kw)
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape).astype(problem.dtype)
    *grads, measured = attention_backward(q, k, v, out, lse, dout, count_io=True, **kw)
    refs = reference_attention_backward(q, k, v, dout, causal=problem.causal, scale=problem.scale, out=out, lse=lse,
                                        mask=mask)
    # per query head as on K/V expanded to H heads; a K/V head's dK, dV sum H / H_kv of those
    kx, vx = expand_heads(k, problem.heads), expand_heads(v, problem.heads)
    refs_x = reference_attention_backward(q, kx, vx, dout, causal=problem.causal, scale=problem.scale, out=out,
                                          lse=lse, mask=mask)
    atols = gradient_tolerances(q, kx, vx, dout, refs_x, problem.causal, problem.scale, problem.dtype, out, lse,
                                allowed=dense_mask(mask, problem))
    group = problem.group
    for name, g, ref, atol, like, summed in zip(("dq", "dk", "dv"), grads, refs, atols, (q, k, v), (1, group, group)):
        assert g.shape == like.shape and g.dtype == like.dtype, name
        np.testing.assert_allclose(g.astype(np.float64), ref, rtol=0, atol=summed * atol, err_msg=name)
    modelled = simulate(schedule, problem, mask=mask, backward=True)
    assert measured == modelled, f"{schedule.describe()} {problem} {mask}: {measured.diff(modelled)}"
    again = attention_backward(q, k, v, out, lse, dout, **kw)
    for a, b in zip(grads, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=3 if SIMULATED else 5)
@given(data=st.data(), seed=seeds)
def test_forward_matches_reference_and_simulator(kind, dtype, size, data, seed):
    problem = data.draw(problems_dv(dtype, **size))
    mask = data.draw(built_in_mask(problem)) if kind in MASK_KINDS else None
    check_forward(data.draw(schedules(kinds=(kind,))), problem, mask, seed)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", BACKWARD_KINDS)
@settings(max_examples=2 if SIMULATED else 5)
@given(data=st.data(), seed=seeds)
def test_backward_matches_reference_and_simulator(kind, dtype, size, data, seed):
    problem = data.draw(problems_dv(dtype, **size))
    mask = data.draw(built_in_mask(problem)) if kind in MASK_KINDS else None
    check_backward(data.draw(schedules(kinds=(kind,))), problem, mask, seed)


@pytest.mark.parametrize("d_v", [2, 8])
@pytest.mark.parametrize("kind", KINDS)
def test_fixed_shapes_causal_grouped(kind, d_v):
    """d = 4 and d_v = 2 or 8, causal, H = 4 query heads on H_kv = 2, ragged Nq != Nk."""
    problem = Problem(1, 4, 7, 9, 4, causal=True, heads_kv=2, head_dim_v=d_v)
    splits = {"kv_splits": 2} if kind == "splitkv" else {}
    schedule = Schedule(kind, block_q=4, block_kv=4, thread_q=2, thread_kv=2, **splits)
    check_forward(schedule, problem, None, seed=1)
    if kind in BACKWARD_KINDS:
        check_backward(schedule, problem, None, seed=2)


@pytest.mark.gpu
@pytest.mark.parametrize("d, d_v", [(64, 128), (128, 64), (192, 128)])
@pytest.mark.parametrize("kind", KINDS)
def test_large_head_dims_on_the_gpu(kind, d, d_v):
    """d_v != d at head dims of models (d = 192, d_v = 128: MLA's prefill), fp16, causal, ragged N = 300."""
    problem = Problem(1, 2, 300, 300, d, dtype="float16", causal=True, head_dim_v=d_v)
    splits = {"kv_splits": 3} if kind == "splitkv" else {}
    schedule = Schedule(kind, block_q=32, block_kv=32, **splits)
    check_forward(schedule, problem, None, seed=3)
    if kind in BACKWARD_KINDS:
        check_backward(schedule, problem, None, seed=4)


# -- the fast builds: the FMA build and the backward refuse d_v != d, the tensor-core forward takes it--------------------------------------------------------
def test_the_fast_builds_refuse_a_head_dim_v_of_its_own():
    s = Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    assert choose_build(s, 4).fast and choose_build(s, 4, head_dim_v=4).fast  # d_v = d: taken
    chosen = choose_build(s, 4, head_dim_v=8)
    assert chosen.name == "plain" and chosen.reason == HEAD_DIM_V_REFUSAL
    with pytest.raises(ValueError, match="head_dim_v != head_dim"):
        choose_build(s, 4, fast=True, head_dim_v=2)
    tc = Schedule("flash2", block_q=16, block_kv=16, thread_q=2, thread_kv=4, math="tf32x3")
    assert choose_build(tc, 16).fast
    assert choose_build(tc, 16, head_dim_v=8).name == "fast-tf32x3"  # the tensor-core forward takes d_v ...
    assert choose_build(tc, 16, head_dim_v=12).reason == "head_dim_v=12 (needs a multiple of 8)"
    with pytest.raises(ValueError, match="head_dim_v != head_dim"):  # ... its backward does not
        choose_backward_build(tc, 16, fast=True, head_dim_v=32)
    # through the public calls: the plain build runs, with the reason; fast=True says why not
    problem = Problem(1, 1, 6, 6, 4, head_dim_v=8)
    q, k, v = make_inputs(problem, 0)
    out, lse, ran = attention(q, k, v, schedule=s, return_lse=True, return_build=True)
    assert ran.name == "plain" and ran.reason == HEAD_DIM_V_REFUSAL
    with pytest.raises(ValueError, match="head_dim_v != head_dim"):
        attention(q, k, v, schedule=s, fast=True)
    # the tensor-core backward (d a multiple of 8): refused before anything is launched
    q16, k16, v8 = make_inputs(Problem(1, 1, 16, 16, 16, head_dim_v=8), 0)
    out8, lse16 = np.zeros((1, 1, 16, 8), np.float32), np.zeros((1, 1, 16), np.float32)
    with pytest.raises(ValueError, match="head_dim_v != head_dim"):
        attention_backward(q16, k16, v8, out8, lse16, out8, schedule=tc, fast=True)


TC_CASES = {
    "d16-dv8-causal": (16, 8, 19, 21, 16, 8, "float32", True),
    "d8-dv24-ragged": (32, 16, 37, 45, 8, 24, "float32", False),
    "d8-dv16-bf16-causal": (16, 16, 18, 30, 8, 16, "bfloat16", True),
}


def check_tc(schedule, problem, seed=0, magnitude=1.0):
    """The tensor-core forward at d_v != d against the float64 reference (tests/kernels/test_tc.py's check)."""
    q, k, v = make_inputs(problem, seed=seed, magnitude=magnitude)
    out, lse, ran = attention(q, k, v, schedule=schedule, causal=problem.causal, scale=problem.scale, return_lse=True,
                              fast=True, return_build=True)
    assert ran.name == "fast-tf32x3" and out.shape == q.shape[:3] + (problem.head_dim_v,)
    ref_out, ref_lse = reference_attention(q, k, v, causal=problem.causal, scale=problem.scale, return_lse=True)
    atol_out, atol_lse = tolerances(q, k, v, ref_out, ref_lse, problem.causal, problem.scale, problem.dtype)
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=0, atol=atol_out)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=atol_lse)


@pytest.mark.parametrize("case", TC_CASES.values(), ids=TC_CASES.keys())
def test_tensor_core_forward_takes_d_v(case):
    br, bc, nq, nk, d, d_v, dtype, causal = case
    check_tc(tc_schedule(br, bc), Problem(1, 2, nq, nk, d, dtype=dtype, causal=causal, head_dim_v=d_v), seed=nq)
    assert smem_bytes(tc_schedule(br, bc), d, d_v) == 8 * bc * (d + d_v)


@pytest.mark.parametrize("d, d_v", [(16, 8), (8, 24)])
def test_tensor_core_forward_takes_d_v_with_q_in_shared_memory(monkeypatch, d, d_v):
    """Above Q_REGISTERS_MAX_D Q's fragments live in SRAM after K_j and V_j (d = 128 on the GPU)."""
    monkeypatch.setattr(flash2_tc, "Q_REGISTERS_MAX_D", 4)
    s = tc_schedule(16, 8)
    assert smem_bytes(s, d, d_v) == 8 * 8 * (d + d_v) + 4 * 16 * d
    check_tc(s, Problem(1, 1, 21, 27, d, causal=True, head_dim_v=d_v), seed=5, magnitude=4.0)


@pytest.mark.gpu
@pytest.mark.parametrize("d, d_v", [(64, 128), (128, 64), (192, 128)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_tensor_core_forward_takes_d_v_on_the_gpu(d, d_v, dtype, causal):
    check_tc(tc_schedule(64, 32), Problem(2, 3, 301, 333, d, dtype=dtype, causal=causal, head_dim_v=d_v), seed=d,
             magnitude=4.0)


# -- the vocabulary: Problem, validation, footprints, the reference -----------------------------
def test_problem_head_dim_v():
    assert Problem(1, 2, 4, 4, 8).head_dim_v == 8
    assert Problem(1, 2, 4, 4, 8, head_dim_v=8) == Problem(1, 2, 4, 4, 8)  # d_v = d is the usual problem
    assert Problem(1, 2, 4, 4, 8, head_dim_v=np.int64(16)).head_dim_v == 16
    for bad in (0, -2, 2.0, True, "8"):
        with pytest.raises(ValueError, match="head_dim_v: expected a positive int"):
            Problem(1, 2, 4, 4, 8, head_dim_v=bad)
    assert Problem(1, 1, 4, 4, 8, head_dim_v=3).scale == 1 / math.sqrt(8)  # the scale follows d, not d_v


def test_check_qkv_takes_v_with_its_own_head_dim():
    q, k = np.zeros((2, 4, 5, 8), np.float32), np.zeros((2, 2, 7, 8), np.float32)
    problem = check_qkv(q, k, np.zeros((2, 2, 7, 3), np.float32))
    assert (problem.head_dim, problem.head_dim_v, problem.heads_kv) == (8, 3, 2)
    assert check_qkv(q, k, k).head_dim_v == 8
    for bad in ((2, 2, 6, 3), (2, 1, 7, 3), (1, 2, 7, 3)):
        with pytest.raises(ValueError, match=r"v: expected shape \(2, 2, 7, 8\) \(that of k\) or \(2, 2, 7, d_v\)"):
            check_qkv(q, k, np.zeros(bad, np.float32))


def test_backward_inputs_are_d_v_wide():
    """out and dout are (B, H, Nq, d_v); one of q's shape is refused, naming the shape expected."""
    problem = Problem(1, 1, 6, 6, 4, head_dim_v=2)
    q, k, v = make_inputs(problem, 0)
    s = Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    out, lse = attention(q, k, v, schedule=s, return_lse=True)
    with pytest.raises(ValueError, match=r"dout: expected shape \(1, 1, 6, 2\), got \(1, 1, 6, 4\)"):
        attention_backward(q, k, v, out, lse, np.ones_like(q), schedule=s)
    with pytest.raises(ValueError, match=r"dout: expected shape \(1, 1, 6, 2\) \(from q and v\)"):
        reference_attention_backward(q, k, v, np.ones_like(q))


def test_reference_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((1, 1, 6, 4)), rng.standard_normal((1, 1, 6, 3))
    dout = rng.standard_normal((1, 2, 5, 3))
    grads = reference_attention_backward(q, k, v, dout, causal=True)
    eps = 1e-6
    for x, g in zip((q, k, v), grads):
        assert g.shape == x.shape
        for idx in ((0, 0, 2, 1), (0, 0, 4, 2)):
            up, down = x.copy(), x.copy()
            up[idx] += eps
            down[idx] -= eps
            args_up = [up if y is x else y for y in (q, k, v)]
            args_down = [down if y is x else y for y in (q, k, v)]
            fd = ((reference_attention(*args_up, causal=True) - reference_attention(*args_down, causal=True))
                  * dout).sum() / (2 * eps)
            assert abs(fd - g[idx]) < 1e-6


def test_footprints_and_fit_follow_d_v():
    s = Schedule("flash2", block_q=16, block_kv=16)
    same = s.sram_footprint(64, "float32")
    assert s.sram_footprint(64, "float32", head_dim_v=64) == same
    assert s.sram_footprint(64, "float32", head_dim_v=128) == same + 16 * 64 * 4  # V_j grows by Bc·(d_v - d)
    for kind in BACKWARD_KINDS:
        k = Schedule(kind, block_q=16, block_kv=16)
        assert k.sram_footprint(64, "float32", backward=True, head_dim_v=128) > k.sram_footprint(64, "float32",
                                                                                              backward=True)
    with pytest.raises(ValueError, match="head_dim_v=300 exceeds"):
        s.check_fits(64, "float32", head_dim_v=300)
    small = Schedule("flash2", block_q=16, block_kv=16, sram_bytes=s.sram_footprint(64, "float32"))
    small.check_fits(64, "float32", head_dim_v=32)
    with pytest.raises(ValueError, match="head_dim=64, head_dim_v=128"):
        small.check_fits(64, "float32", head_dim_v=128)


def test_from_sram_budgets_v_and_o_at_d_v():
    """Bc = ⌈M/(2d + 2d_v)⌉ where that fits: the paper's ⌈M/4d⌉ at d_v = d, fewer K/V rows for a wider V."""
    m = 96 * 1024
    same = Schedule.from_sram(m, head_dim=64)
    assert Schedule.from_sram(m, head_dim=64, head_dim_v=64) == same
    wide = Schedule.from_sram(m, head_dim=64, head_dim_v=256, backward=True)
    assert wide.block_kv < same.block_kv
    assert wide.sram_footprint(64, "float32", head_dim_v=256) <= m
    assert wide.sram_footprint(64, "float32", backward=True, head_dim_v=256) <= m


def test_d_v_equal_to_d_takes_the_tile_ops_of_d():
    """value_ops at d_v = d is the ops of d themselves: the kernels compile to the code they have without d_v."""
    s = Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    t = make_tile_ops(s, 8, False, False, np.dtype(np.float32))
    assert value_ops(t, s, None, False, False, np.dtype(np.float32)) is t
    assert value_ops(t, s, 8, False, False, np.dtype(np.float32)) is t
    tv = value_ops(t, s, 3, False, False, np.dtype(np.float32))
    assert (tv.D, tv.DC, tv.DCQ) == (3, 2, 2) and t.D == 8


def test_a_registered_kind_takes_d_v_where_its_footprint_does(isolated_kinds):
    """A kind says it takes d_v != d by a head_dim_v argument of its footprint; one without is refused
    with the reason before anything runs, and still takes d_v = d."""
    register_kind("flash2dv", "flash2 under another name", sram=flash2_sram, kernels=flash2_kernels,
                  counts=flash2_counts)
    register_kind("flash2d", "flash2 without d_v", sram=lambda s, d, dtype: flash2_sram(s, d, dtype),
                  kernels=flash2_kernels, counts=flash2_counts)
    problem = Problem(1, 2, 20, 30, 8, causal=True, head_dim_v=4)
    assert simulate(Schedule("flash2dv", block_q=8, block_kv=8), problem) == simulate(
        Schedule("flash2", block_q=8, block_kv=8), problem)
    with pytest.raises(ValueError, match="head_dim_v=4: kind 'flash2d' takes no V head dim of its own"):
        simulate(Schedule("flash2d", block_q=8, block_kv=8), problem)
    q, k, v = make_inputs(problem, 0)
    with pytest.raises(ValueError, match="takes no V head dim of its own"):
        attention(q, k, v, schedule=Schedule("flash2d", block_q=8, block_kv=8))
    assert simulate(Schedule("flash2d", block_q=8, block_kv=8), Problem(1, 2, 20, 30, 8)).hbm_writes["O"] == 2 * 20 * 8


# -- the simulator: counts and the L2 model's request stream -------------------------------------
def test_counts_scale_v_and_o_with_d_v():
    s = Schedule("flash2", block_q=64, block_kv=64)
    r = simulate_counts(s, Problem(1, 1, 1024, 1024, 64, head_dim_v=128))
    assert r.hbm_reads["Q"] == 1024 * 64 and r.hbm_reads["K"] == 16 * 1024 * 64  # K_j, V_j once per Q block
    assert r.hbm_reads["V"] == 16 * 1024 * 128 and r.hbm_writes["O"] == 1024 * 128
    assert r.flops == 2 * (64 + 128) * 1024 * 1024
    b = simulate_backward_counts(s, Problem(1, 1, 1024, 1024, 64, head_dim_v=128))
    assert b.hbm_writes["dQ"] == b.hbm_writes["dK"] == 1024 * 64 and b.hbm_writes["dV"] == 1024 * 128
    assert b.flops == 2 * (4 * 64 + 3 * 128) * 1024 * 1024 + 2 * 1024 * 128


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), br=st.integers(1, 12), bc=st.integers(1, 12), b=st.integers(1, 2),
       hk=st.sampled_from([(1, 1), (2, 2), (2, 1), (4, 2)]), n_q=st.integers(1, 30), n_kv=st.integers(1, 30),
       d=st.integers(1, 12), d_v=st.integers(1, 12), dtype=st.sampled_from(["float32", "float16"]),
       causal=st.booleans(), splits=st.integers(1, 4))
def test_l2_requests_equal_counts(kind, br, bc, b, hk, n_q, n_kv, d, d_v, dtype, causal, splits):
    """The L2 model requests, tensor by tensor, the HBM bytes the counts have, forward and backward (its
    group sum over max(d, d_v) columns included), one block per grid entry."""
    problem = Problem(b, hk[0], n_q, n_kv, d, dtype=dtype, causal=causal, heads_kv=hk[1], head_dim_v=d_v)
    schedule = Schedule(kind, block_q=br, block_kv=bc, kv_splits=splits if kind == "splitkv" else 1)
    for backward in (False, True) if kind in BACKWARD_KINDS else (False,):
        counts = (simulate_backward_counts if backward else simulate_counts)(schedule, problem)
        r = simulate_dram(schedule, problem, gpu="h200", backward=backward)
        assert r.requested_bytes == counts.hbm_bytes
        for t in set(counts.hbm_reads) | set(counts.hbm_writes):
            got = r.per_tensor.get(t, {})
            assert got.get("requested_read_bytes", 0) == counts.hbm_reads.get(t, 0) * counts.itemsize[t], t
            assert got.get("requested_write_bytes", 0) == counts.hbm_writes.get(t, 0) * counts.itemsize[t], t
        for launch in tile_requests(schedule, problem, backward):
            assert len(launch.block_ptr) - 1 == math.prod(launch.grid), launch.phase


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_simulate_and_run_take_d_v(capsys):
    assert main(["simulate", "--kind", "flash2", "--n", "256", "--d", "16", "--d-v", "32"]) == 0
    out = capsys.readouterr().out
    assert "d=16 d_v=32" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert int(rows["V"][1]) == 2 * int(rows["K"][1]) and rows["O"][2] == str(256 * 32)
    assert main(["run", "--kind", "flash1", "--n", "10", "--d", "4", "--d-v", "6", "--causal"]) == 0
    out = capsys.readouterr().out
    assert "d=4 d_v=6" in out and "measured == simulated" in out
    assert main(["simulate", "--d", "8", "--d-v", "0"]) == 2
    assert "head_dim_v: expected a positive int, got 0" in capsys.readouterr().err
