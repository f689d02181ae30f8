"""flash2's 16-bit fast backward (kernels/backward_tc16.py, ``Schedule(math="f16")``, fp16 and bf16
inputs) against float64 analytic gradients, its determinism, and which calls it refuses.

Under the simulator the warp products are kernels/mma16.py's fallback (slow): tiny shapes and few
examples. On a GPU (``-m gpu``) the same properties run the tensor cores at large shapes.
Tolerances: tests/tolerances.py's ``gradient_tolerances_tc16`` (P and dS rounded to the inputs'
type where they become operands, the tensor cores' truncated sums).
"""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.backward_tc16 import dtype_refusal, eligible, smem_bytes, threads
from kernels.builds import BACKWARD_OPT_IN, SCORE_MOD_REFUSAL, choose_backward_build
from kernels.flash2_tc16 import tc16_schedule
from sandbox import Problem, attention, attention_backward, reference_attention_backward, score_mods
from sandbox.vocabulary import masks
from tests.strategies import SIMULATED, make_inputs, seeds
from tests.kernels.test_tc16 import DTYPES16, GPU_BLOCKS, SIM_BLOCKS
from tests.kernels.test_tc16 import tc16_cases as cases
from tests.tolerances import gradient_tolerances_tc16


def gradients(schedule, problem, seed, fast=True, magnitude=1.0, **kw):
    """(inputs, (dq, dk, dv), build): the 16-bit forward's O and L, then the backward of ``schedule``."""
    q, k, v = make_inputs(problem, seed, magnitude)
    dout = np.random.default_rng(seed + 1).standard_normal(q.shape).astype(problem.dtype)
    opts = dict(schedule=schedule, causal=problem.causal, scale=problem.scale)
    out, lse = attention(q, k, v, return_lse=True, **opts)
    *grads, build = attention_backward(q, k, v, out, lse, dout, fast=fast, return_build=True, **opts, **kw)
    return (q, k, v, dout, out, lse), grads, build


def check(schedule, problem, seed, magnitude=1.0):
    """The fast backward runs, and its gradients are within the 16-bit tolerance of float64's."""
    (q, k, v, dout, out, lse), grads, build = gradients(schedule, problem, seed, magnitude=magnitude)
    assert build.name == "fast-f16", build.reason
    refs = reference_attention_backward(q, k, v, dout, causal=problem.causal, scale=problem.scale, out=out, lse=lse)
    atols = gradient_tolerances_tc16(q, k, v, dout, refs, problem.causal, problem.scale, problem.dtype, out, lse)
    for name, g, ref, atol, like in zip(("dq", "dk", "dv"), grads, refs, atols, (q, k, v)):
        assert g.dtype == like.dtype and g.shape == like.shape, name
        np.testing.assert_allclose(g.astype(np.float64), ref, rtol=0, atol=atol, err_msg=name)


@settings(max_examples=5 if SIMULATED else 12, deadline=None)
@given(data=st.data(), seed=seeds, magnitude=st.sampled_from((1.0, 10.0)))
def test_matches_float64_gradients(data, seed, magnitude):
    schedule, problem = data.draw(cases(SIM_BLOCKS, (16, 32), 40, 2) if SIMULATED
                                  else cases(GPU_BLOCKS, (64, 128), 700, 2))
    check(schedule, problem, seed, magnitude)


@pytest.mark.gpu
@settings(max_examples=4, deadline=None)
@given(data=st.data(), seed=seeds, magnitude=st.sampled_from((1.0, 10.0)))
def test_matches_float64_gradients_at_large_shapes(data, seed, magnitude):
    schedule, problem = data.draw(cases(GPU_BLOCKS, (64, 128), 4096, 1))
    check(schedule, problem, seed, magnitude)


# (Br, Bc, Nq, Nk, d, dtype), causal: a streamed block of two chunks of 32 (dkdv: Br = 64, whose
# first chunk the K/V block from key 32 on skips; dq: Bc = 64, whose second chunk the Q blocks skip),
# three chunks of 16 (48), keys past every query (Nk > Nq + Bc: dkdv stores zeros there), one key,
# one query
FIXED = {
    "dkdv two chunks": (64, 16, 40, 40, 16, "float16"),
    "dq two chunks, keys past every query": (16, 64, 20, 90, 16, "bfloat16"),
    "three chunks of 16": (48, 48, 40, 13, 16, "float16"),
    "one key": (16, 16, 9, 1, 32, "bfloat16"),
    "one query": (32, 16, 1, 9, 32, "float16"),
}


@pytest.mark.parametrize("case", FIXED.values(), ids=FIXED.keys())
def test_fixed_shapes(case):
    br, bc, nq, nk, d, dtype = case
    check(tc16_schedule(br, bc), Problem(1, 1, nq, nk, d, dtype=dtype, causal=True), seed=nq * 100 + nk)


@pytest.mark.parametrize("shape", [pytest.param((37, 21, 16, 16, 32), id="small"),
                                   pytest.param((1000, 777, 128, 64, 128), id="large", marks=pytest.mark.gpu)])
def test_bit_identical_across_runs(shape):
    n_q, n_kv, d, br, bc = shape
    problem = Problem(batch=1, heads=1, n_q=n_q, n_kv=n_kv, head_dim=d, dtype="bfloat16", causal=True)
    _, first, build = gradients(tc16_schedule(br, bc), problem, seed=9)
    _, second, _ = gradients(tc16_schedule(br, bc), problem, seed=9)
    assert build.name == "fast-f16"
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()


def test_the_fast_backward_is_opt_in():
    problem = Problem(batch=1, heads=1, n_q=16, n_kv=16, head_dim=16, dtype="float16")
    _, _, build = gradients(tc16_schedule(16, 16), problem, seed=1, fast=None)
    assert (build.name, build.reason) == ("plain", BACKWARD_OPT_IN)


REFUSALS = {
    "fp32": "fast backward cannot run .*float32 inputs .*math='tf32x3'",
    "mask": "fast backward cannot run .*: a mask",
    "score_mod": "fast backward cannot run .*" + re.escape(SCORE_MOD_REFUSAL),
    "head_dim": re.escape("head_dim=24 (needs a multiple of 16)"),
}


@pytest.mark.parametrize("case, why", REFUSALS.items(), ids=REFUSALS.keys())
def test_fast_true_says_why_the_fast_backward_cannot_run(case, why):
    d = 24 if case == "head_dim" else 16
    problem = Problem(batch=1, heads=1, n_q=16, n_kv=16, head_dim=d, dtype="float32" if case == "fp32" else "float16")
    kw = {"mask": masks.sliding_window(4)} if case == "mask" else {}
    if case == "score_mod":
        kw["score_mod"] = score_mods.soft_cap(2.0)
    with pytest.raises(ValueError, match=why):
        gradients(tc16_schedule(16, 16), problem, seed=1, **kw)


def test_refusals_and_layout():
    s = tc16_schedule(64, 128)
    assert eligible(s, 128) is None and eligible(s, 64, count_io=True).startswith("count_io")
    assert dtype_refusal("float16") is None and dtype_refusal("bfloat16") is None
    assert "float32 inputs" in dtype_refusal("float32")
    assert choose_backward_build(s, 128, fast=True).name == "fast-f16"
    assert (threads(s, "dkdv"), threads(s, "dq")) == (256, 128)
    # rows of d/2 + 4 words: dkdv K_j, V_j (Bc rows) and two stages of Q_i, dO_i (Br rows), L_i and
    # D_i; dq two stages of K_j, V_j (Bc rows)
    assert smem_bytes(s, 128, "dkdv") == 4 * (2 * 128 * 68 + 2 * (2 * 64 * 68 + 2 * 64))
    assert smem_bytes(s, 128, "dq") == 4 * 2 * 2 * 128 * 68
    assert smem_bytes(tc16_schedule(128, 128), 128) <= tc16_schedule(128, 128).sram_bytes
    assert "bytes of SRAM" in eligible(tc16_schedule(128, 128), 256)


@pytest.mark.gpu
@pytest.mark.parametrize("blocks", [(64, 64), (128, 128)], ids=["64x64", "128x128"])
@pytest.mark.parametrize("dtype", DTYPES16)
def test_compiles_without_spills_at_d128(blocks, dtype):
    """dkdv (dK's and dV's accumulators in registers) and dq (Q's and dO's fragments too) fit the
    255 registers at d = 128: no local memory, causal or not."""
    from kernels.launch import build

    s = tc16_schedule(*blocks)
    for causal in (False, True):
        kernels = build(s, 128, dtype, causal, choose_backward_build(s, 128, fast=True), backward=True)
        for phase in ("dkdv", "dq"):
            (compiled,) = kernels[phase][0].overloads.values()
            assert compiled.local_mem_per_thread == 0, (phase, causal, compiled.regs_per_thread)
