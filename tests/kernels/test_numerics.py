"""Numerics at the edges, in every kind and for flash2's fast FMA and tensor-core schedules, against the
float64 reference (NumPy inputs holding NaN or inf take the plain build of a fast schedule:
kernels/limits.py):

- a -inf logit is weight 0;
- an entry a row does not see (masked, causal, beyond Nk, or of weight exactly 0) adds nothing to
  that row even where its K or V hold NaN or inf, while a NaN or inf a row does see reaches it;
- inputs whose logits or unnormalised P·V sums would overflow fp32 are refused, naming the argument.

Shapes are tiny: under the simulator every thread is a Python thread.
"""

import numpy as np
import pytest

from kernels.flash2_tc import tc_schedule
from sandbox import Schedule, masks, reference_attention, reference_attention_backward
from sandbox import attention, attention_backward
from tests.strategies import BACKWARD_KINDS, KINDS, MASK_KINDS

# NaN and inf are the point here: the simulator's NumPy scalars warn where they arise
pytestmark = pytest.mark.filterwarnings("ignore:.*invalid value encountered:RuntimeWarning")

#: (schedule, fast) for every build: the kinds' counting builds; flash2's FMA and tensor-core schedules
#: with the build chosen by the launcher (fast=None: the fast build where the inputs allow it).
BUILDS = {kind: (Schedule(kind, block_q=4, block_kv=4, thread_q=2, thread_kv=2), False) for kind in KINDS}
BUILDS["flash2-fast"] = (Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2), None)
BUILDS["flash2-tc"] = (tc_schedule(16, 8), None)


def inputs(n_q=12, n_kv=12, d=8, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((1, 1, n, d)).astype(dtype) for n in (n_q, n_kv, n_kv))


def assert_matches(out, ref, atol=2e-6):
    """Equal up to fp32 rounding, with NaN and ±inf in the very same places."""
    out = out.astype(np.float64)
    assert np.array_equal(np.isnan(out), np.isnan(ref)), (np.isnan(out), np.isnan(ref))
    assert np.array_equal(np.isinf(out), np.isinf(ref)) and np.array_equal(out[np.isinf(out)], ref[np.isinf(ref)])
    fin = np.isfinite(ref)
    np.testing.assert_allclose(out[fin], ref[fin], rtol=0, atol=atol)


def run(build, q, k, v, **kw):
    schedule, fast = BUILDS[build]
    return attention(q, k, v, schedule=schedule, fast=fast, return_lse=True, **kw)


@pytest.mark.parametrize("build", BUILDS)
def test_minus_inf_logit_is_weight_zero(build):
    q, k, v = inputs(n_q=16, n_kv=16)
    q = np.abs(q)  # every logit of key 3 is -inf
    k[0, 0, 3, 0] = -np.inf
    out, lse = run(build, q, k, v)
    ref, ref_lse = reference_attention(q, k, v, return_lse=True)
    keep = np.arange(16) != 3
    np.testing.assert_allclose(ref, reference_attention(q, k[:, :, keep], v[:, :, keep]), atol=1e-12)
    assert_matches(out, ref)
    np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=2e-6)


@pytest.mark.parametrize("build", BUILDS)
def test_a_masked_nan_stays_behind_the_causal_mask(build):
    """NaN in K[5] and V[5]: rows 0-4 never see key 5 and stay exact; rows from 5 on see it: NaN."""
    q, k, v = inputs(n_q=16, n_kv=16)
    k[0, 0, 5, 1] = np.nan
    v[0, 0, 5] = np.nan
    out, lse = run(build, q, k, v, causal=True)
    ref = reference_attention(q, k, v, causal=True)
    assert np.isfinite(ref[0, 0, :5]).all() and np.isnan(ref[0, 0, 5:]).all()
    assert_matches(out, ref)


@pytest.mark.parametrize("build", ["flash2-fast", "flash2-tc"])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_non_finite_inputs_take_the_plain_build(build, where):
    """NaN in one input: the plain build runs, and says why; fast=True is refused, naming the input;
    finite inputs take the fast build."""
    schedule, _ = BUILDS[build]
    q, k, v = inputs(n_q=16, n_kv=16)
    _, first = attention(q, k, v, schedule=schedule, return_build=True)
    x = {"q": q, "k": k, "v": v}[where]
    x[0, 0, 3, 1] = np.nan
    _, second = attention(q, k, v, schedule=schedule, return_build=True)
    assert first.name == f"fast-{schedule.math}" and first.reason is None
    assert second.name == "plain" and second.reason.startswith(f"{where} holds NaN or inf")
    with pytest.raises(ValueError, match=f"fast=True, but {where} holds NaN or inf"):
        attention(q, k, v, schedule=schedule, fast=True)


@pytest.mark.parametrize("build", BUILDS)
def test_a_masked_inf_stays_behind_the_causal_mask_and_a_seen_one_reaches_its_rows(build):
    q, k, v = inputs(n_q=16, n_kv=16)
    v[0, 0, 6, 0] = np.inf
    v[0, 0, 6, 1] = -np.inf
    v[0, 0, 9, 1] = np.inf  # rows from 9 on: -inf + inf = NaN in column 1
    out, _ = run(build, q, k, v, causal=True)
    ref = reference_attention(q, k, v, causal=True)
    assert np.isfinite(ref[0, 0, :6]).all() and (ref[0, 0, 6:, 0] == np.inf).all()
    assert (ref[0, 0, 6:9, 1] == -np.inf).all() and np.isnan(ref[0, 0, 9:, 1]).all()
    assert_matches(out, ref)


@pytest.mark.parametrize("build", BUILDS)
def test_a_weight_of_exactly_zero_adds_nothing(build):
    """Key 7's logits are about -2800: exp underflows to 0 in fp32 and in float64, and its NaN value
    adds nothing, in a block without masked entries."""
    q, k, v = inputs(n_q=16, n_kv=16)
    q = np.abs(q) + 1
    k[0, 0, 7] = -1000.0
    v[0, 0, 7] = np.nan
    out, _ = run(build, q, k, v)
    ref = reference_attention(q, k, v)
    assert np.isfinite(ref).all()
    assert_matches(out, ref)


@pytest.mark.parametrize("build", BUILDS)
def test_ragged_nan_free_rows_with_garbage_past_the_block(build):
    """Nk not a multiple of Bc, NaN in the last key: every row sees it (NaN), none beyond it."""
    q, k, v = inputs(n_q=5, n_kv=11)
    v[0, 0, 10, 2] = np.nan
    out, _ = run(build, q, k, v)
    ref = reference_attention(q, k, v)
    assert np.isnan(ref[..., 2]).all() and np.isfinite(np.delete(ref, 2, axis=-1)).all()
    assert_matches(out, ref)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_document_padding_garbage_reaches_no_valid_row(kind):
    """Packed documents of 4 and 6 tokens, then 2 tokens of padding holding NaN and inf."""
    q, k, v = inputs()
    clean = reference_attention(q, k, v, mask=masks.document([4, 6]))
    q[0, 0, 10:], k[0, 0, 10:], v[0, 0, 10:] = np.nan, np.nan, np.inf
    mask = masks.document([4, 6])
    out, lse = attention(q, k, v, schedule=BUILDS[kind][0], mask=mask, return_lse=True, fast=False)
    ref = reference_attention(q, k, v, mask=mask)
    np.testing.assert_array_equal(ref, clean)  # padding rows see nothing: zeros
    assert_matches(out, ref)
    assert np.isfinite(lse[0, 0, :10]).all() and (lse[0, 0, 10:] == -np.inf).all()


@pytest.mark.parametrize("kind", BACKWARD_KINDS)
def test_backward_masked_nan_reaches_no_gradient_of_rows_that_do_not_see_it(kind):
    q, k, v = inputs(n_q=12, n_kv=12)
    k[0, 0, 5, 1] = np.nan
    v[0, 0, 5] = np.nan
    dout = np.random.default_rng(1).standard_normal(q.shape).astype(np.float32)
    schedule, fast = BUILDS[kind]
    out, lse = attention(q, k, v, schedule=schedule, causal=True, return_lse=True, fast=fast)
    dq, dk, dv = attention_backward(q, k, v, out, lse, dout, schedule=schedule, causal=True)
    rq, rk, rv = reference_attention_backward(q, k, v, dout, causal=True, out=out, lse=lse)
    assert np.isfinite(rq[0, 0, :5]).all() and np.isnan(rq[0, 0, 5:]).all()
    for g, r in ((dq, rq), (dk, rk), (dv, rv)):
        assert_matches(g, r, atol=1e-5)


# -- what fp32 can hold (kernels/limits.py)


@pytest.mark.parametrize("scale", [1e38, -1e38, 1e39])
def test_a_scale_whose_logits_overflow_fp32_is_refused(scale):
    q, k, v = inputs(n_q=4, n_kv=4)
    with pytest.raises(ValueError, match=r"^scale: .*overflow.*fp32"):
        attention(q, k, v, schedule=BUILDS["flash2"][0], scale=scale)


def test_large_scale_with_small_inputs_is_taken():
    """The bound is on scale·q·k, not on scale: 1e30 with |q|, |k| ~ 1e-20 gives ordinary logits."""
    q, k, v = inputs(n_q=8, n_kv=8)
    q, k = q * np.float32(1e-20), k * np.float32(1e-20)
    for build in ("flash2", "flash2-fast"):
        out, _ = run(build, q, k, v, scale=1e30)
        assert_matches(out, reference_attention(q, k, v, scale=1e30))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_values_whose_pv_sum_can_overflow_fp32_are_refused(dtype):
    q, k, v = inputs(n_q=4, n_kv=4, dtype=dtype)
    v[0, 0, 2, 1] = 1.7e38
    with pytest.raises(ValueError, match=r"^v: max \|v\| · Nk .* overflow fp32"):
        attention(q, k, v, schedule=BUILDS["flash2"][0])


@pytest.mark.parametrize("build", BUILDS)
def test_values_just_inside_the_pv_limit_are_exact(build):
    """max |v| · Nk = 2^126, below the limit of 2^127: every build stays finite and accurate."""
    q, k, v = inputs(n_q=16, n_kv=8)
    v = (v / np.abs(v).max() * np.float32(2.0**123)).astype(np.float32)
    out, _ = run(build, q, k, v)
    ref = reference_attention(q, k, v)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=0, atol=2e-6 * 2.0**123)
