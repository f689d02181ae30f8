"""The fp32 tolerance model (tests/tolerances.py) admits what an in-order fp32 kernel computes."""

import numpy as np

from sandbox import Problem, reference_attention
from tests.strategies import make_inputs
from tests.tolerances import U32, UNIT_ROUNDOFF, naive_fp32, scores_fp32, tolerances, tolerances_tc16


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
