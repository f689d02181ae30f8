"""The fp32 tolerance model (tests/tolerances.py) admits what an in-order fp32 kernel computes."""

import numpy as np

from sandbox import Problem, reference_attention, reference_attention_backward
from tests.strategies import make_inputs
from tests.tolerances import (U32, UNIT_ROUNDOFF, gradient_tolerances, gradient_tolerances_tc16, naive_fp32,
                              scores_fp32, tolerances, tolerances_tc16)


def test_in_order_scores_are_one_fma_per_k():
    # the emulation against a float64 loop that rounds to fp32 after each multiply-add
    rng = np.random.default_rng(0)
    q, k = (rng.standard_normal((1, 1, 3, 37)).astype(np.float32) for _ in range(2))
    s = scores_fp32(q, k, 1.0, in_order=True)
    for i in range(3):
        for j in range(3):
            acc = np.float32(0)
            for kk in range(37):
                acc = np.float32(float(q[0, 0, i, kk]) * float(k[0, 0, j, kk]) + float(acc))
            assert s[0, 0, i, j] == acc


def test_large_logits_in_order_sum_is_within_tolerance():
    # The GPU failure that led to the in-order baseline: flash1, |S| up to 310, d = 128.
    # The kernel erred 1.02e-4; einsum's fp32 attention 1.7e-5, so "4x einsum's error" (9.8e-5)
    # refused it, while an fp32 attention that sums S in order, as every kernel does, errs 1.02e-4.
    p = Problem(batch=1, heads=2, n_q=256, n_kv=8, head_dim=128, scale=0.08838834764831843)
    q, k, v = make_inputs(p, 3668, 80.0)
    ref, ref_lse = reference_attention(q, k, v, scale=p.scale, return_lse=True)
    err_einsum = np.abs(naive_fp32(q, k, v, False, p.scale)[0] - ref).max()
    err_in_order = np.abs(naive_fp32(q, k, v, False, p.scale, in_order=True)[0] - ref).max()
    vmax = np.abs(v).max()
    einsum_only = 4 * err_einsum + (128 + 8 + 8) * U32 * vmax + 2 * UNIT_ROUNDOFF["float32"] * vmax
    atol_out, _ = tolerances(q, k, v, ref, ref_lse, False, p.scale, "float32", o_stores=2)
    assert err_in_order > einsum_only  # the old model refused an honest in-order fp32 result
    assert err_in_order <= atol_out


def test_the_16_bit_tolerance_admits_p_rounded_to_the_input_type():
    """An emulation of flash2_tc16's arithmetic (S and l_i in fp32, P rounded to the input type for
    P·V, O stored in it) is within tolerances_tc16, with many P entries in fp16's subnormal range
    (long rows of large logits)."""
    for dtype in ("float16", "bfloat16"):
        p = Problem(batch=1, heads=1, n_q=8, n_kv=4096, head_dim=16, dtype=dtype)
        q, k, v = make_inputs(p, 5, 10.0)
        ref, ref_lse = reference_attention(q, k, v, scale=p.scale, return_lse=True)
        s = scores_fp32(q.astype(np.float32), k.astype(np.float32), p.scale)
        pr = np.exp(s - s.max(-1, keepdims=True))  # fp32
        l = pr.sum(-1, keepdims=True, dtype=np.float32)
        p16 = pr.astype(dtype).astype(np.float64)
        assert dtype == "bfloat16" or ((p16 > 0) & (p16 < 2.0**-14)).any()  # fp16 subnormals in P
        out = ((p16 @ v.astype(np.float64)) / l).astype(dtype).astype(np.float64)
        atol_out, _ = tolerances_tc16(q, k, v, ref, ref_lse, False, p.scale, dtype)
        assert np.abs(out - ref).max() <= atol_out


def test_the_16_bit_gradient_tolerance_admits_p_and_ds_rounded_to_the_input_type():
    """An emulation of backward_tc16's arithmetic (P, dP and dS in fp32, P and dS rounded to the
    input type for the second products, exact sums, gradients stored in it) is within
    gradient_tolerances_tc16, and beyond the fp32 backward's gradient_tolerances for some gradient:
    the 16-bit rounding of P and dS is what the larger tolerance is for."""
    beyond_fp32 = []
    for dtype, n, magnitude in (("float16", 256, 1.0), ("bfloat16", 1024, 10.0)):
        p = Problem(batch=1, heads=1, n_q=n, n_kv=n, head_dim=16, dtype=dtype, causal=True)
        q, k, v = make_inputs(p, 5, magnitude)
        dout = np.random.default_rng(6).standard_normal(q.shape).astype(dtype)
        out, lse = reference_attention(q, k, v, causal=True, scale=p.scale, return_lse=True)
        out, lse = out.astype(dtype), lse.astype(np.float32)
        refs = reference_attention_backward(q, k, v, dout, causal=True, scale=p.scale, out=out, lse=lse)
        q32, k32, v32, do32, o32 = (x.astype(np.float32) for x in (q, k, v, dout, out))
        s = scores_fp32(q32, k32, p.scale)
        pr = np.where(np.tri(n, dtype=bool), np.exp(s - lse[..., None]), np.float32(0))
        ds = pr * (np.einsum("bhid,bhjd->bhij", do32, v32) - (do32 * o32).sum(-1, keepdims=True))
        p16, ds16 = (x.astype(dtype).astype(np.float64) for x in (pr, ds))
        grads = (p.scale * np.einsum("bhij,bhjc->bhic", ds16, k.astype(np.float64)),
                 p.scale * np.einsum("bhij,bhic->bhjc", ds16, q.astype(np.float64)),
                 np.einsum("bhij,bhic->bhjc", p16, dout.astype(np.float64)))
        fp32_atols = gradient_tolerances(q, k, v, dout, refs, True, p.scale, dtype, out, lse)
        atols = gradient_tolerances_tc16(q, k, v, dout, refs, True, p.scale, dtype, out, lse)
        for g, ref, fp32_atol, atol in zip(grads, refs, fp32_atols, atols):
            err = np.abs(g.astype(dtype).astype(np.float64) - ref).max()
            assert err <= atol
            beyond_fp32.append(err > fp32_atol)
    assert any(beyond_fp32)
